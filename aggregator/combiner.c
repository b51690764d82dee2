/* combiner.c -- in-memory folding of counter deltas (see combiner.h).
 *
 * Cells live in uthash tables keyed by their full store key and hashed with
 * XXH3. Every cell is carved, with its key bytes and its counters, out of
 * an arena of large blocks, so a batch costs a handful of mallocs and is
 * freed in one sweep at drain time.
 *
 *   cell = { uthash handle | key length | counters[width] | key bytes }
 */
#include "aggregator/combiner.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "aggregator/cells.h"

#undef HASH_FUNCTION
#define HASH_FUNCTION(keyptr, keylen, hashv) \
    ((hashv) = (unsigned)XXH3_64bits((keyptr), (size_t)(keylen)))
#include <uthash.h>

typedef struct cell {
    UT_hash_handle hh;
    size_t klen;
    int64_t *vec;
    unsigned char *key;
} cell;

typedef struct marker {
    UT_hash_handle hh;
    unsigned char key[IQP_MARKER_KEY_LEN];
    int64_t ts;
} marker;

/* A bump allocator: blocks chained through their first word. */
typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_block;

struct iqp_combiner {
    size_t width;
    cell *counts;
    cell *contexts;
    marker *markers;
    arena_block *arena;
};

#define ARENA_BLOCK (1u << 20)

static void *arena_alloc(iqp_combiner *c, size_t n) {
    n = (n + 15) & ~(size_t)15;
    arena_block *b = c->arena;
    if (!b || b->used + n > b->cap) {
        size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
        b = malloc(sizeof(arena_block) + cap);
        if (!b) abort();
        b->next = c->arena;
        b->used = 0;
        b->cap = cap;
        c->arena = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

static void arena_free_all(iqp_combiner *c) {
    while (c->arena) {
        arena_block *next = c->arena->next;
        free(c->arena);
        c->arena = next;
    }
}

iqp_combiner *iqp_combiner_new(size_t width) {
    iqp_combiner *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->width = width;
    return c;
}

void iqp_combiner_free(iqp_combiner *c) {
    if (!c) return;
    HASH_CLEAR(hh, c->counts);
    HASH_CLEAR(hh, c->contexts);
    HASH_CLEAR(hh, c->markers);
    arena_free_all(c);
    free(c);
}

/* Finds or creates the cell for key in *table with `width` counters. */
static cell *find_cell(iqp_combiner *c, cell **table, const unsigned char *key, size_t klen,
                       size_t width) {
    cell *e;
    HASH_FIND(hh, *table, key, klen, e);
    if (e) return e;
    e = arena_alloc(c, sizeof(cell) + width * sizeof(int64_t) + klen);
    e->klen = klen;
    e->vec = (int64_t *)(e + 1);
    memset(e->vec, 0, width * sizeof(int64_t));
    e->key = (unsigned char *)(e->vec + width);
    memcpy(e->key, key, klen);
    HASH_ADD_KEYPTR(hh, *table, e->key, klen, e);
    return e;
}

void iqp_combiner_add_count(iqp_combiner *c, const unsigned char *key, size_t klen, size_t idx,
                            int64_t delta) {
    find_cell(c, &c->counts, key, klen, c->width)->vec[idx] += delta;
}

void iqp_combiner_add_context(iqp_combiner *c, const unsigned char *key, size_t klen,
                              int64_t delta) {
    find_cell(c, &c->contexts, key, klen, 1)->vec[0] += delta;
}

int iqp_combiner_get_marker(const iqp_combiner *c, const unsigned char *key, int64_t *ts) {
    marker *m;
    HASH_FIND(hh, c->markers, key, IQP_MARKER_KEY_LEN, m);
    if (!m) return 0;
    *ts = m->ts;
    return 1;
}

void iqp_combiner_set_marker(iqp_combiner *c, const unsigned char *key, int64_t ts) {
    marker *m;
    HASH_FIND(hh, c->markers, key, IQP_MARKER_KEY_LEN, m);
    if (!m) {
        m = arena_alloc(c, sizeof *m);
        memcpy(m->key, key, IQP_MARKER_KEY_LEN);
        HASH_ADD(hh, c->markers, key, IQP_MARKER_KEY_LEN, m);
    }
    m->ts = ts;
}

size_t iqp_combiner_cells(const iqp_combiner *c) {
    return HASH_COUNT(c->counts) + HASH_COUNT(c->contexts);
}

size_t iqp_combiner_markers(const iqp_combiner *c) { return HASH_COUNT(c->markers); }

/* RocksDB's default (bytewise) order. */
static int cmp_cells(const void *a, const void *b) {
    const cell *x = *(cell *const *)a, *y = *(cell *const *)b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int r = memcmp(x->key, y->key, n);
    if (r) return r;
    return (x->klen > y->klen) - (x->klen < y->klen);
}

static int all_zero(const int64_t *vec, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (vec[i]) return 0;
    return 1;
}

/* Writes one table's non-zero cells, sorted, as merges into cf. */
static size_t drain_table(cell **table, size_t width, iqp_cf cf, iqp_store_batch *b) {
    size_t n = HASH_COUNT(*table), i = 0, written = 0;
    if (n == 0) return 0;
    cell **sorted = malloc(n * sizeof *sorted);
    if (!sorted) abort();
    for (cell *e = *table; e; e = e->hh.next) sorted[i++] = e;
    qsort(sorted, n, sizeof *sorted, cmp_cells);
    for (i = 0; i < n; i++) {
        if (all_zero(sorted[i]->vec, width)) continue;
        iqp_store_batch_merge(b, cf, sorted[i]->key, sorted[i]->klen, sorted[i]->vec, width);
        written++;
    }
    free(sorted);
    HASH_CLEAR(hh, *table);
    return written;
}

size_t iqp_combiner_drain(iqp_combiner *c, iqp_store_batch *b) {
    size_t written = drain_table(&c->counts, c->width, IQP_CF_COUNTS, b);
    written += drain_table(&c->contexts, 1, IQP_CF_CONTEXTS, b);
    for (marker *m = c->markers; m; m = m->hh.next)
        iqp_store_batch_put(b, IQP_CF_DEDUP, m->key, IQP_MARKER_KEY_LEN, &m->ts, sizeof m->ts);
    HASH_CLEAR(hh, c->markers);
    arena_free_all(c);
    return written;
}

/* combiner.c -- in-memory folding of counter deltas (see combiner.h).
 *
 * Every delta of a micro-batch lands here first, ~100 per impression, so
 * this is the hottest code in iqp. Design, from measurement: a chained hash
 * (uthash) spent ~700 ns per lookup on a batch of a million cells, nearly
 * all of it cache misses walking bucket chains. So each table here is a flat
 * open-addressing array of {hash, cell} slots with linear probing, grown at
 * 50% load: a lookup touches one slot line and, on a hash match, the cell.
 * Hashes are XXH3-64 of the full store key and are kept in the slot, so
 * growing never rehashes keys and mismatches rarely touch the cell.
 *
 * Cells are carved, with their counters and key bytes, out of an arena of
 * 2 MiB blocks, rewound in one sweep at drain time; blocks and slot arrays
 * are kept for the next batch (a batch's memory is reused, not re-faulted).
 *
 *   cell = { key length | counters[width] | key bytes }
 *   marker cells use the same tables with two "counters": ts, written_wm
 */
#include "aggregator/combiner.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>

#include "aggregator/cells.h"

typedef struct cell {
    size_t klen;
    unsigned char *key;
    int64_t vec[];
} cell;

typedef struct slot {
    uint64_t hash;
    cell *c;            /* NULL: empty */
} slot;

/* One open-addressing table. */
typedef struct cell_table {
    slot *slots;
    size_t mask;        /* capacity - 1, capacity a power of two */
    size_t count;
    size_t width;       /* counters per cell */
} cell_table;

/* A bump allocator: blocks chained through their first word. */
typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_block;

struct iqp_combiner {
    cell_table counts, contexts, markers;
    arena_block *arena;     /* blocks in use, newest first */
    arena_block *spare;     /* rewound blocks kept for the next batch */
};

#define HUGE_PAGE (2u << 20)
#define ARENA_BLOCK HUGE_PAGE
#define INITIAL_SLOTS 4096

/* Zeroed memory; large requests come 2 MiB aligned and advised as huge
 * pages, since a batch's tables are probed at random and on 4 KiB pages
 * most of a probe's time is TLB misses (measured: 60% on one load). */
static void *alloc_zeroed(size_t n) {
    void *p;
    if (n < HUGE_PAGE) {
        p = calloc(1, n);
    } else {
        n = (n + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
        p = aligned_alloc(HUGE_PAGE, n);
        if (p) {
            madvise(p, n, MADV_HUGEPAGE);
            memset(p, 0, n);
        }
    }
    if (!p) abort();
    return p;
}

static void *arena_alloc(iqp_combiner *c, size_t n) {
    n = (n + 15) & ~(size_t)15;
    arena_block *b = c->arena;
    if (!b || b->used + n > b->cap) {
        if (c->spare && c->spare->cap >= n) {
            b = c->spare;             /* already faulted in: reuse it */
            c->spare = b->next;
        } else {
            size_t cap = (n > ARENA_BLOCK ? n : ARENA_BLOCK) - sizeof(arena_block);
            if (cap < n) cap = n;
            b = alloc_zeroed(sizeof(arena_block) + cap);
            b->cap = cap;
        }
        b->next = c->arena;
        b->used = 0;
        c->arena = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

/* Moves every block to the spare list: the next batch reuses memory that is
 * already mapped instead of faulting in fresh pages. */
static void arena_rewind(iqp_combiner *c) {
    while (c->arena) {
        arena_block *next = c->arena->next;
        c->arena->next = c->spare;
        c->spare = c->arena;
        c->arena = next;
    }
}

static void arena_free_all(iqp_combiner *c) {
    arena_rewind(c);
    while (c->spare) {
        arena_block *next = c->spare->next;
        free(c->spare);
        c->spare = next;
    }
}

/* ---- tables -------------------------------------------------------------- */

static void table_init(cell_table *t, size_t width) {
    t->slots = alloc_zeroed(INITIAL_SLOTS * sizeof(slot));
    t->mask = INITIAL_SLOTS - 1;
    t->count = 0;
    t->width = width;
}

/* Empties the table but keeps its capacity (and its mapped pages). */
static void table_reset(cell_table *t) {
    if (t->count == 0) return;
    memset(t->slots, 0, (t->mask + 1) * sizeof(slot));
    t->count = 0;
}

static void table_grow(cell_table *t) {
    size_t cap = (t->mask + 1) * 2;
    slot *ns = alloc_zeroed(cap * sizeof(slot));
    for (size_t i = 0; i <= t->mask; i++) {
        if (!t->slots[i].c) continue;
        size_t j = t->slots[i].hash & (cap - 1);
        while (ns[j].c) j = (j + 1) & (cap - 1);
        ns[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = ns;
    t->mask = cap - 1;
}

/* The slot holding key, or the empty slot where it would go. */
static slot *table_probe(const cell_table *t, const unsigned char *key, size_t klen, uint64_t h) {
    size_t i = h & t->mask;
    for (;;) {
        slot *s = &t->slots[i];
        if (!s->c || (s->hash == h && s->c->klen == klen && memcmp(s->c->key, key, klen) == 0))
            return s;
        i = (i + 1) & t->mask;
    }
}

/* Finds or creates the cell for key. */
static cell *table_get(iqp_combiner *c, cell_table *t, const unsigned char *key, size_t klen) {
    uint64_t h = XXH3_64bits(key, klen);
    slot *s = table_probe(t, key, klen, h);
    if (s->c) return s->c;
    if (2 * (t->count + 1) > t->mask + 1) {
        table_grow(t);
        s = table_probe(t, key, klen, h);
    }
    cell *e = arena_alloc(c, sizeof(cell) + t->width * sizeof(int64_t) + klen);
    e->klen = klen;
    memset(e->vec, 0, t->width * sizeof(int64_t));
    e->key = (unsigned char *)(e->vec + t->width);
    memcpy(e->key, key, klen);
    s->hash = h;
    s->c = e;
    t->count++;
    return e;
}

/* ---- public -------------------------------------------------------------- */

iqp_combiner *iqp_combiner_new(size_t width) {
    iqp_combiner *c = calloc(1, sizeof *c);
    if (!c) abort();
    table_init(&c->counts, width);
    table_init(&c->contexts, 1);
    table_init(&c->markers, 2);
    return c;
}

void iqp_combiner_free(iqp_combiner *c) {
    if (!c) return;
    free(c->counts.slots);
    free(c->contexts.slots);
    free(c->markers.slots);
    arena_free_all(c);
    free(c);
}

void iqp_combiner_add_count(iqp_combiner *c, const unsigned char *key, size_t klen, size_t idx,
                            int64_t delta) {
    table_get(c, &c->counts, key, klen)->vec[idx] += delta;
}

void iqp_combiner_add_context(iqp_combiner *c, const unsigned char *key, size_t klen,
                              int64_t delta) {
    table_get(c, &c->contexts, key, klen)->vec[0] += delta;
}

int iqp_combiner_get_marker(const iqp_combiner *c, const unsigned char *key, iqp_marker *m) {
    if (c->markers.count == 0) return 0;
    uint64_t h = XXH3_64bits(key, IQP_MARKER_KEY_LEN);
    slot *s = table_probe(&c->markers, key, IQP_MARKER_KEY_LEN, h);
    if (!s->c) return 0;
    m->ts = s->c->vec[0];
    m->written_wm = s->c->vec[1];
    return 1;
}

void iqp_combiner_set_marker(iqp_combiner *c, const unsigned char *key, const iqp_marker *m) {
    cell *e = table_get(c, &c->markers, key, IQP_MARKER_KEY_LEN);
    e->vec[0] = m->ts;
    e->vec[1] = m->written_wm;
}

const int64_t *iqp_combiner_peek(const iqp_combiner *c, iqp_cf cf, const unsigned char *key,
                                 size_t klen) {
    const cell_table *t = cf == IQP_CF_CONTEXTS ? &c->contexts : &c->counts;
    if (t->count == 0) return NULL;
    slot *s = table_probe(t, key, klen, XXH3_64bits(key, klen));
    return s->c ? s->c->vec : NULL;
}

size_t iqp_combiner_cells(const iqp_combiner *c) { return c->counts.count + c->contexts.count; }

size_t iqp_combiner_markers(const iqp_combiner *c) { return c->markers.count; }

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

/* The table's cells in key order (caller frees the array). */
static cell **sorted_cells(const cell_table *t) {
    cell **sorted = malloc((t->count ? t->count : 1) * sizeof *sorted);
    size_t n = 0;
    if (!sorted) abort();
    for (size_t i = 0; i <= t->mask; i++)
        if (t->slots[i].c) sorted[n++] = t->slots[i].c;
    qsort(sorted, n, sizeof *sorted, cmp_cells);
    return sorted;
}

/* Writes one table's non-zero cells, sorted, as merges into cf, telling
 * on_cell (when set) about each. */
static size_t drain_counters(cell_table *t, iqp_cf cf, iqp_store_batch *b,
                             iqp_combiner_cell_fn on_cell, void *ud) {
    size_t written = 0;
    cell **sorted = sorted_cells(t);
    for (size_t i = 0; i < t->count; i++) {
        if (all_zero(sorted[i]->vec, t->width)) continue;
        iqp_store_batch_merge(b, cf, sorted[i]->key, sorted[i]->klen, sorted[i]->vec, t->width);
        if (on_cell) on_cell(ud, b, cf, sorted[i]->key, sorted[i]->klen);
        written++;
    }
    free(sorted);
    table_reset(t);
    return written;
}

size_t iqp_combiner_drain(iqp_combiner *c, iqp_store_batch *b) {
    return iqp_combiner_drain_with(c, b, NULL, NULL);
}

size_t iqp_combiner_drain_with(iqp_combiner *c, iqp_store_batch *b, iqp_combiner_cell_fn on_cell,
                               void *ud) {
    size_t written = drain_counters(&c->counts, IQP_CF_COUNTS, b, on_cell, ud);
    written += drain_counters(&c->contexts, IQP_CF_CONTEXTS, b, on_cell, ud);
    cell **markers = sorted_cells(&c->markers);
    for (size_t i = 0; i < c->markers.count; i++) {
        iqp_marker m = {markers[i]->vec[0], markers[i]->vec[1]};
        iqp_store_batch_put_marker(b, markers[i]->key, IQP_MARKER_KEY_LEN, &m);
    }
    free(markers);
    table_reset(&c->markers);
    arena_rewind(c);
    return written;
}

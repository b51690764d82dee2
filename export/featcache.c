/* featcache.c -- the export's mirror of its store's bucket cells (see featcache.h).
 *
 * One entry per (column family, prefix): its buckets as records of 2 + n
 * int64 (granularity, bucket, n counters), sorted by (granularity,
 * bucket). Entries are found through a keymap from a 128-bit digest of
 * (cf, prefix) to their index in an array. Deltas of a flush almost always
 * land in the newest bucket, so the place of a record is searched from the
 * end.
 */
#include "export/featcache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cells.h"
#include "model/window.h"
#include "export/keymap.h"

typedef struct fc_entry {
    size_t n;          /* counters per record */
    size_t len, cap;   /* records */
    int64_t *rec;      /* len * (2 + n): gi, bucket, counters */
    uint64_t epoch;    /* c->epoch when last pruned */
} fc_entry;

struct iqp_featcache {
    iqp_store *st;
    const iqp_config *cfg;
    size_t budget;
    iqp_featcache_delta_fn delta;
    const void *delta_ud;
    iqp_keymap *index;          /* digest of (cf, prefix) -> entries[i] */
    fc_entry **entries;
    size_t n_entries, cap_entries;
    int64_t oldest[IQP_MAX_GRANS]; /* per granularity: no read asks for an older bucket */
    uint64_t epoch;             /* bumped whenever oldest moves */
    iqp_key128 last_key;        /* the entry read last (a read asks for each granularity */
    fc_entry *last;             /* of one prefix in turn); NULL: none */
    iqp_featcache_stats stats;
};

#define ENTRY_OVERHEAD (sizeof(fc_entry) + sizeof(fc_entry *) + 64) /* + its keymap slots */

iqp_featcache *iqp_featcache_new(iqp_store *st, size_t budget_bytes,
                                 iqp_featcache_delta_fn delta, const void *delta_ud) {
    iqp_featcache *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->st = st;
    c->cfg = iqp_store_config(st);
    c->budget = budget_bytes;
    c->delta = delta;
    c->delta_ud = delta_ud;
    c->index = iqp_keymap_new();
    return c;
}

static void clear_entries(iqp_featcache *c) {
    for (size_t i = 0; i < c->n_entries; i++) {
        free(c->entries[i]->rec);
        free(c->entries[i]);
    }
    c->n_entries = 0;
    c->stats.bytes = 0;
    c->last = NULL;
    iqp_keymap_free(c->index);
    c->index = iqp_keymap_new();
}

void iqp_featcache_free(iqp_featcache *c) {
    if (!c) return;
    clear_entries(c);
    iqp_keymap_free(c->index);
    free(c->entries);
    free(c);
}

void iqp_featcache_advance(iqp_featcache *c, int64_t as_of_ms) {
    int64_t oldest[IQP_MAX_GRANS];
    for (size_t g = 0; g < c->cfg->n_grans; g++) oldest[g] = INT64_MAX;
    for (size_t w = 0; w < c->cfg->n_windows; w++) {
        int64_t first, last;
        int g = c->cfg->windows[w].gran_index;
        iqp_window_buckets(&c->cfg->windows[w], as_of_ms, &first, &last);
        if (first < oldest[g]) oldest[g] = first;
    }
    if (memcmp(oldest, c->oldest, c->cfg->n_grans * sizeof *oldest) == 0) return;
    memcpy(c->oldest, oldest, c->cfg->n_grans * sizeof *oldest);
    c->epoch++;
}

static iqp_key128 entry_key(iqp_cf cf, const unsigned char *prefix, size_t plen) {
    iqp_key128 k = iqp_key128_of(prefix, plen);
    k.hi ^= 0x9e3779b97f4a7c15ULL * (uint64_t)(cf + 1);
    if (k.lo == 0 && k.hi == 0) k.lo = 1;
    return k;
}

/* ---- records ------------------------------------------------------------------- */

static int64_t *record(const fc_entry *e, size_t i) { return e->rec + i * (2 + e->n); }

/* Index of the first record at or after (gi, bucket). */
static size_t find_record(const fc_entry *e, int gi, int64_t bucket) {
    size_t i = e->len;
    while (i > 0) {
        const int64_t *r = record(e, i - 1);
        if (r[0] < gi || (r[0] == gi && r[1] < bucket)) break;
        i--;
    }
    return i;
}

/* Adds vec into the record (gi, bucket), inserting it when absent. */
static void add_record(iqp_featcache *c, fc_entry *e, int gi, int64_t bucket, const int64_t *vec) {
    size_t i = find_record(e, gi, bucket), width = 2 + e->n;
    int64_t *r = i < e->len ? record(e, i) : NULL;
    if (!r || r[0] != gi || r[1] != bucket) {
        if (e->len == e->cap) {
            size_t cap = e->cap ? 2 * e->cap : 4;
            e->rec = realloc(e->rec, cap * width * sizeof *e->rec);
            if (!e->rec) abort();
            c->stats.bytes += (cap - e->cap) * width * sizeof *e->rec;
            e->cap = cap;
        }
        r = record(e, i);
        memmove(r + width, r, (e->len - i) * width * sizeof *r);
        e->len++;
        memset(r, 0, width * sizeof *r);
        r[0] = gi;
        r[1] = bucket;
    }
    for (size_t k = 0; k < e->n; k++) r[2 + k] += vec[k];
}

/* Drops the records no read will ask for again (once per move of oldest). */
static void prune(const iqp_featcache *c, fc_entry *e) {
    size_t kept = 0, width = 2 + e->n;
    if (e->epoch == c->epoch) return;
    e->epoch = c->epoch;
    for (size_t i = 0; i < e->len; i++) {
        const int64_t *r = record(e, i);
        if (r[1] < c->oldest[r[0]]) continue;
        if (kept != i) memcpy(record(e, kept), r, width * sizeof *r);
        kept++;
    }
    e->len = kept;
}

/* ---- filling from the store ------------------------------------------------------ */

/* One pass over the prefix's keys, every granularity: one seek, where a
 * scan per granularity (iqp_store_scan_buckets) takes one each. Keys are
 * prefix + slot suffix, each value packing the slot's cells of every
 * granularity (cells.h); a longer key sharing the prefix belongs to
 * another prefix and is skipped, as that scan does. */
typedef struct fill_target {
    iqp_featcache *c;
    fc_entry *e;
    const unsigned char *prefix;
    size_t plen;
    int bad;
} fill_target;

static void fill_cell(void *ud, int gi, int64_t bucket, const int64_t *vec, size_t n) {
    fill_target *t = ud;
    (void)n;
    if (gi < 0 || (size_t)gi >= t->c->cfg->n_grans || bucket < t->c->oldest[gi]) return;
    add_record(t->c, t->e, gi, bucket, vec);
}

static int fill_key(void *ud, const unsigned char *key, size_t klen, const char *val, size_t vlen) {
    fill_target *t = ud;
    if (klen < t->plen || memcmp(key, t->prefix, t->plen) != 0) return 1; /* past the prefix */
    if (klen != t->plen + IQP_BUCKET_SUFFIX_LEN) return 0;
    t->bad = iqp_store_value_cells(val, vlen, t->e->n, fill_cell, t) < 0;
    return t->bad;
}

/* The first slot holding a bucket some read can still ask for. */
static int64_t oldest_slot(const iqp_featcache *c) {
    int64_t slot = INT64_MAX;
    for (size_t g = 0; g < c->cfg->n_grans; g++) {
        if (c->oldest[g] == INT64_MAX) continue;
        int64_t s = iqp_cells_slot(c->cfg, (int)g, c->oldest[g] > 0 ? c->oldest[g] : 0);
        if (s < slot) slot = s;
    }
    return slot == INT64_MAX ? 0 : slot;
}

static fc_entry *fill(iqp_featcache *c, iqp_cf cf, const unsigned char *prefix, size_t plen,
                      size_t n, iqp_key128 key, char *err, size_t errlen) {
    if (c->stats.bytes > c->budget) {
        clear_entries(c);
        c->stats.clears++;
    }
    fc_entry *e = calloc(1, sizeof *e);
    if (!e) abort();
    e->n = n;
    e->epoch = c->epoch;
    iqp_keybuf from;
    iqp_keybuf_init(&from);
    iqp_keybuf_append(&from, prefix, plen);
    iqp_cells_append_slot(&from, c->cfg, oldest_slot(c));
    fill_target t = {c, e, prefix, plen, 0};
    int rc = iqp_store_scan_keys(c->st, NULL, cf, from.buf, from.len, fill_key, &t, err, errlen);
    iqp_keybuf_free(&from);
    if (t.bad) {
        snprintf(err, errlen, "a counter value of the store does not decode (damaged store?)");
        rc = -1;
    }
    if (rc < 0) {
        free(e->rec);
        free(e);
        return NULL;
    }
    if (c->n_entries == c->cap_entries) {
        c->cap_entries = c->cap_entries ? 2 * c->cap_entries : 1024;
        c->entries = realloc(c->entries, c->cap_entries * sizeof *c->entries);
        if (!c->entries) abort();
    }
    iqp_keymap_put(c->index, key, c->n_entries);
    c->entries[c->n_entries++] = e;
    c->stats.bytes += ENTRY_OVERHEAD;
    if (c->stats.bytes > c->stats.bytes_peak) c->stats.bytes_peak = c->stats.bytes;
    return e;
}

/* ---- reads and flushes ------------------------------------------------------------ */

int iqp_featcache_scan(iqp_featcache *c, iqp_cf cf, const unsigned char *prefix, size_t plen,
                       int g, int64_t first, int64_t last, size_t n, iqp_store_bucket_fn fn,
                       void *ud, char *err, size_t errlen) {
    iqp_key128 key = entry_key(cf, prefix, plen);
    uint64_t i;
    fc_entry *e;
    if (c->last && c->last_key.lo == key.lo && c->last_key.hi == key.hi) {
        e = c->last;
        c->stats.hits++;
    } else if (iqp_keymap_get(c->index, key, &i)) {
        e = c->entries[i];
        c->stats.hits++;
        prune(c, e);
    } else {
        c->stats.misses++;
        if (!(e = fill(c, cf, prefix, plen, n, key, err, errlen))) return -1;
    }
    c->last = e;
    c->last_key = key;
    for (size_t k = find_record(e, g, first); k < e->len; k++) {
        const int64_t *r = record(e, k);
        if (r[0] != g || r[1] > last) break;
        fn(ud, r[1], r + 2, n < e->n ? n : e->n);
    }
    return 0;
}

void iqp_featcache_on_flush_cell(iqp_featcache *c, iqp_cf cf, const unsigned char *key, size_t klen) {
    int gi;
    int64_t bucket, vec[IQP_MAX_COUNTERS];
    uint64_t i;
    if (iqp_cells_key_bucket(key, klen, &gi, &bucket) < 0 || gi < 0 || gi >= IQP_MAX_GRANS) return;
    if (bucket < c->oldest[gi]) return;
    if (!iqp_keymap_get(c->index, entry_key(cf, key, klen - IQP_BUCKET_SUFFIX_LEN), &i)) return;
    fc_entry *e = c->entries[i];
    memset(vec, 0, sizeof vec);
    if (c->delta(c->delta_ud, cf, key, klen, vec, e->n)) add_record(c, e, gi, bucket, vec);
}

const iqp_featcache_stats *iqp_featcache_get_stats(const iqp_featcache *c) { return &c->stats; }

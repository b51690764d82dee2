/* featcache.c -- the export's mirror of its store's bucket cells (see featcache.h).
 *
 * One entry per (column family, prefix): one allocation holding its
 * buckets as records of 2 + n int64 (granularity, bucket, n counters),
 * sorted by (granularity, bucket). Entries are found through a keymap from
 * a 128-bit digest of (cf, prefix) to the entry's address, in front of
 * which a small direct-mapped memo of recently used entries stays in the
 * CPU caches: a prefix is used in bursts (a read asks for it once per
 * granularity, the impression's own APPLY right after adds one delta per
 * granularity), and with hundreds of thousands of entries every step from
 * digest to records is a cache miss, so there are as few steps as can be
 * (keymap slot, then the entry). An entry that grows moves, and its
 * keymap value, memo slot and place in the entries array (kept to free
 * them) follow it. Records are found by binary search (an entry holds
 * up to a year of daily records besides a day of hourly ones).
 *
 * Records older than the oldest bucket a read can ask for (c->oldest) are
 * never visited by a read (they sort before its range), so they are
 * dropped only when an entry is about to grow, not on every use.
 */
#include "export/featcache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cells.h"
#include "model/window.h"
#include "export/keymap.h"

#define MEMO_SLOTS 1024 /* a power of two */
#define DELTA_MEMO_SLOTS 64 /* a power of two */

/* Read plans: the prefixes the last iqp_featcache_prefetch of a cf
 * named, in the order given, with the entry each was held as then.
 * features.c reads an impression's prefixes in exactly that order (per
 * cf), each once per granularity, so a scan finds its entry at the plan's
 * cursor or the next one after comparing the prefix's bytes -- no digest
 * and no index probe, where each prefix otherwise took one digest per
 * granularity on top of the prefetch's. A plan only points at entries
 * while the set of entries stands still: anything that moves, frees or
 * adds an entry (entry_grow, clear_entries, hold) drops both plans, and a
 * scan whose prefix is not at the cursor falls back to the digest. */
typedef struct read_plan {
    const iqp_keybuf *prefixes; /* the caller's, valid until its next prefetch */
    struct fc_entry **held;     /* n: each prefix's entry, NULL when not held */
    size_t n, cap, at;          /* at: the prefix the reads are on */
} read_plan;

typedef struct fc_entry {
    iqp_key128 key;    /* entry_key of (cf, prefix) */
    size_t slot;       /* index in c->entries; NOT_HELD while being filled */
    uint32_t n;        /* counters per record */
    uint32_t len, cap; /* records */
    uint64_t epoch;    /* c->epoch when last pruned */
    int64_t rec[];     /* cap * (2 + n): gi, bucket, counters */
} fc_entry;

#define NOT_HELD SIZE_MAX
#define FIRST_CAP 4

struct iqp_featcache {
    iqp_store *st;
    const iqp_config *cfg;
    size_t budget;
    int complete;               /* every prefix with a record a read can ask for is held */
    iqp_features_pending unflushed;
    iqp_keybuf key;             /* on_delta's scratch */
    iqp_keymap *index;          /* digest of (cf, prefix) -> its fc_entry's address */
    fc_entry **entries;
    size_t n_entries, cap_entries;
    int64_t oldest[IQP_MAX_GRANS]; /* per granularity: no read asks for an older bucket */
    uint64_t epoch;             /* bumped whenever oldest moves */
    struct {
        iqp_key128 key;
        fc_entry *e;            /* NULL: empty */
    } memo[MEMO_SLOTS];
    read_plan plan[2];          /* per cf, counts and contexts ("Read plans") */
    struct {                    /* "Delta memo" */
        const unsigned char *prefix;
        const char *item;
        size_t plen, ilen;
        iqp_cf cf;
        uint64_t event;
        fc_entry *e;
    } delta_memo[DELTA_MEMO_SLOTS];
    uint64_t event;             /* iqp_featcache_event_begin's count */
    iqp_featcache_stats stats;
};

#define ENTRY_OVERHEAD (sizeof(fc_entry *) + 64) /* entries[] and its keymap slots */

iqp_featcache *iqp_featcache_new(iqp_store *st, size_t budget_bytes,
                                 const iqp_features_pending *unflushed, int empty) {
    iqp_featcache *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->st = st;
    c->cfg = iqp_store_config(st);
    c->budget = budget_bytes;
    c->complete = empty;
    c->unflushed = *unflushed;
    iqp_keybuf_init(&c->key);
    c->index = iqp_keymap_new();
    return c;
}

/* What points at entries besides the index, the memo and entries[]:
 * forgotten when an entry moves or is freed. */
static void drop_pointers(iqp_featcache *c) {
    c->plan[0].n = c->plan[1].n = 0;
    c->event++; /* every delta memo slot is of an older event */
}

static void clear_entries(iqp_featcache *c) {
    for (size_t i = 0; i < c->n_entries; i++) free(c->entries[i]);
    c->n_entries = 0;
    c->stats.bytes = 0;
    memset(c->memo, 0, sizeof c->memo);
    drop_pointers(c);
    iqp_keymap_free(c->index);
    c->index = iqp_keymap_new();
}

void iqp_featcache_free(iqp_featcache *c) {
    if (!c) return;
    clear_entries(c);
    iqp_keymap_free(c->index);
    iqp_keybuf_free(&c->key);
    free(c->entries);
    free(c->plan[0].held);
    free(c->plan[1].held);
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

static int64_t *record(fc_entry *e, size_t i) { return e->rec + i * (2 + e->n); }

static size_t entry_bytes(size_t n, size_t cap) {
    return sizeof(fc_entry) + cap * (2 + n) * sizeof(int64_t);
}

static fc_entry *entry_new(iqp_key128 key, size_t n, uint64_t epoch) {
    fc_entry *e = malloc(entry_bytes(n, FIRST_CAP));
    if (!e) abort();
    *e = (fc_entry){
        .key = key, .slot = NOT_HELD, .n = (uint32_t)n, .cap = FIRST_CAP, .epoch = epoch};
    return e;
}

/* Doubles e's room for records; what pointed at e (the keymap, the memo,
 * entries[]) points at the copy. */
static fc_entry *entry_grow(iqp_featcache *c, fc_entry *e) {
    size_t n = e->n, cap = e->cap;
    fc_entry *g = realloc(e, entry_bytes(n, 2 * cap));
    if (!g) abort();
    g->cap = (uint32_t)(2 * cap);
    c->stats.bytes += entry_bytes(n, 2 * cap) - entry_bytes(n, cap);
    if (g->slot == NOT_HELD) return g;
    c->entries[g->slot] = g;
    drop_pointers(c);
    iqp_keymap_put(c->index, g->key, (uint64_t)(uintptr_t)g);
    size_t m = g->key.lo & (MEMO_SLOTS - 1);
    if (c->memo[m].e && c->memo[m].key.lo == g->key.lo && c->memo[m].key.hi == g->key.hi)
        c->memo[m].e = g;
    return g;
}

/* Index of the first record at or after (gi, bucket). */
static size_t find_record(fc_entry *e, int gi, int64_t bucket) {
    size_t lo = 0, hi = e->len; /* binary: an entry can hold a year of daily records */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const int64_t *r = record(e, mid);
        if (r[0] < gi || (r[0] == gi && r[1] < bucket)) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Drops the records no read will ask for again; 1 when it dropped any. */
static int prune(const iqp_featcache *c, fc_entry *e) {
    size_t kept = 0, width = 2 + e->n;
    if (e->epoch == c->epoch) return 0;
    e->epoch = c->epoch;
    for (size_t i = 0; i < e->len; i++) {
        const int64_t *r = record(e, i);
        if (r[1] < c->oldest[r[0]]) continue;
        if (kept != i) memcpy(record(e, kept), r, width * sizeof *r);
        kept++;
    }
    int dropped = kept < e->len;
    e->len = kept;
    return dropped;
}

/* The record (gi, bucket) of *ep, inserted (all zero) when absent; a
 * full entry is pruned before it grows (and *ep moves). */
static int64_t *get_record(iqp_featcache *c, fc_entry **ep, int gi, int64_t bucket) {
    fc_entry *e = *ep;
    size_t i = find_record(e, gi, bucket), width = 2 + e->n;
    int64_t *r = i < e->len ? record(e, i) : NULL;
    if (r && r[0] == gi && r[1] == bucket) return r;
    if (e->len == e->cap && prune(c, e)) i = find_record(e, gi, bucket);
    if (e->len == e->cap) *ep = e = entry_grow(c, e);
    r = record(e, i);
    memmove(r + width, r, (e->len - i) * width * sizeof *r);
    e->len++;
    memset(r, 0, width * sizeof *r);
    r[0] = gi;
    r[1] = bucket;
    return r;
}

/* Adds vec into the record (gi, bucket). */
static void add_record(iqp_featcache *c, fc_entry **ep, int gi, int64_t bucket,
                       const int64_t *vec) {
    int64_t *r = get_record(c, ep, gi, bucket);
    for (size_t k = 0; k < (*ep)->n; k++) r[2 + k] += vec[k];
}

/* ---- filling from the store and the batch ---------------------------------------- */

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
    add_record(t->c, &t->e, gi, bucket, vec);
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

/* Adds the batch's deltas of the prefix, bucket by bucket of the range
 * each granularity's deltas touch (from the oldest bucket a read can ask
 * for): what the next flush will add to the store. */
static void fill_unflushed(iqp_featcache *c, fc_entry **ep, iqp_cf cf,
                           const unsigned char *prefix, size_t plen) {
    const iqp_features_pending *u = &c->unflushed;
    int64_t first, last, vec[IQP_MAX_COUNTERS];
    for (size_t g = 0; g < c->cfg->n_grans; g++) {
        if (!u->buckets(u->ud, (int)g, &first, &last)) continue;
        if (first < c->oldest[g]) first = c->oldest[g];
        for (int64_t b = first; b <= last; b++) {
            iqp_keybuf_truncate(&c->key, 0);
            iqp_keybuf_append(&c->key, prefix, plen);
            iqp_cells_append_bucket(&c->key, (int)g, b);
            memset(vec, 0, sizeof vec);
            if (u->cell(u->ud, cf, c->key.buf, c->key.len, vec, (*ep)->n))
                add_record(c, ep, (int)g, b, vec);
        }
    }
}

static void remember(iqp_featcache *c, iqp_key128 key, fc_entry *e) {
    size_t m = key.lo & (MEMO_SLOTS - 1);
    c->memo[m].key = key;
    c->memo[m].e = e;
}

/* Drops everything when past the budget: from then on a prefix not held
 * is filled when read (the cache is no longer complete). */
static void keep_budget(iqp_featcache *c) {
    if (c->stats.bytes <= c->budget) return;
    clear_entries(c);
    c->complete = 0;
    c->stats.clears++;
}

/* Holds e (its records final) under key. */
static void hold(iqp_featcache *c, fc_entry *e, iqp_key128 key) {
    if (c->n_entries == c->cap_entries) {
        c->cap_entries = c->cap_entries ? 2 * c->cap_entries : 1024;
        c->entries = realloc(c->entries, c->cap_entries * sizeof *c->entries);
        if (!c->entries) abort();
    }
    iqp_keymap_put(c->index, key, (uint64_t)(uintptr_t)e);
    c->plan[0].n = c->plan[1].n = 0; /* a plan's "not held" may no longer be true */
    e->slot = c->n_entries;
    c->entries[c->n_entries++] = e;
    c->stats.bytes += ENTRY_OVERHEAD;
    if (c->stats.bytes > c->stats.bytes_peak) c->stats.bytes_peak = c->stats.bytes;
    remember(c, key, e);
}

static fc_entry *fill(iqp_featcache *c, iqp_cf cf, const unsigned char *prefix, size_t plen,
                      size_t n, iqp_key128 key, char *err, size_t errlen) {
    keep_budget(c);
    c->stats.bytes += entry_bytes(n, FIRST_CAP);
    fc_entry *e = entry_new(key, n, c->epoch);
    iqp_keybuf from;
    iqp_keybuf_init(&from);
    iqp_keybuf_append(&from, prefix, plen);
    iqp_cells_append_slot(&from, c->cfg, oldest_slot(c));
    fill_target t = {c, e, prefix, plen, 0};
    int rc = iqp_store_scan_keys(c->st, NULL, cf, from.buf, from.len, fill_key, &t, err, errlen);
    iqp_keybuf_free(&from);
    e = t.e;
    if (t.bad) {
        snprintf(err, errlen, "a counter value of the store does not decode (damaged store?)");
        rc = -1;
    }
    if (rc < 0) {
        c->stats.bytes -= entry_bytes(e->n, e->cap);
        free(e);
        return NULL;
    }
    fill_unflushed(c, &e, cf, prefix, plen);
    hold(c, e, key);
    return e;
}

/* ---- reads and deltas ------------------------------------------------------------- */

/* The entry held for key, or NULL. */
static fc_entry *find_entry(iqp_featcache *c, iqp_key128 key) {
    size_t m = key.lo & (MEMO_SLOTS - 1);
    uint64_t i;
    if (c->memo[m].e && c->memo[m].key.lo == key.lo && c->memo[m].key.hi == key.hi)
        return c->memo[m].e;
    if (!iqp_keymap_get(c->index, key, &i)) return NULL;
    fc_entry *e = (fc_entry *)(uintptr_t)i;
    remember(c, key, e);
    return e;
}

#define PREFETCH_BATCH 64

/* Starts plan cf over the n prefixes (see "Read plans"). */
static read_plan *plan_begin(iqp_featcache *c, iqp_cf cf, const iqp_keybuf *prefixes, size_t n) {
    read_plan *p = &c->plan[cf == IQP_CF_CONTEXTS];
    if (n > p->cap) {
        p->cap = n;
        free(p->held);
        if (!(p->held = malloc(n * sizeof *p->held))) abort();
    }
    p->prefixes = prefixes;
    p->n = n;
    p->at = 0;
    return p;
}

void iqp_featcache_prefetch(iqp_featcache *c, iqp_cf cf, const iqp_keybuf *prefixes, size_t n) {
    iqp_key128 keys[PREFETCH_BATCH];
    read_plan *p = plan_begin(c, cf, prefixes, n);
    /* three passes, each touching only what the one before asked for */
    for (size_t at = 0; at < n; at += PREFETCH_BATCH) {
        size_t k = n - at < PREFETCH_BATCH ? n - at : PREFETCH_BATCH;
        fc_entry **held = p->held + at;
        for (size_t i = 0; i < k; i++) {
            keys[i] = entry_key(cf, prefixes[at + i].buf, prefixes[at + i].len);
            iqp_keymap_prefetch(c->index, keys[i]);
        }
        for (size_t i = 0; i < k; i++) {
            held[i] = find_entry(c, keys[i]); /* into the plan, for the read */
            if (held[i]) __builtin_prefetch(held[i]);
        }
        for (size_t i = 0; i < k; i++) {
            if (!held[i] || !held[i]->len) continue;
            __builtin_prefetch(record(held[i], held[i]->len / 2)); /* where a search starts */
            __builtin_prefetch(record(held[i], held[i]->len - 1)); /* the newest buckets */
        }
    }
}

static int same_bytes(const iqp_keybuf *k, const unsigned char *prefix, size_t plen) {
    return k->len == plen && memcmp(k->buf, prefix, plen) == 0;
}

/* The plan's slot for prefix (the one at the cursor, or the next: the
 * cursor moves on), or NULL when prefix is not where the plan expects it. */
static fc_entry **planned(iqp_featcache *c, iqp_cf cf, const unsigned char *prefix, size_t plen) {
    read_plan *p = &c->plan[cf == IQP_CF_CONTEXTS];
    if (p->at < p->n && same_bytes(&p->prefixes[p->at], prefix, plen)) return &p->held[p->at];
    if (p->at + 1 < p->n && same_bytes(&p->prefixes[p->at + 1], prefix, plen))
        return &p->held[++p->at];
    return NULL;
}

int iqp_featcache_scan(iqp_featcache *c, iqp_cf cf, const unsigned char *prefix, size_t plen,
                       int g, int64_t first, int64_t last, size_t n, iqp_store_bucket_fn fn,
                       void *ud, char *err, size_t errlen) {
    fc_entry **slot = planned(c, cf, prefix, plen), *e;
    iqp_key128 key = {0, 0};
    if (slot) {
        e = *slot;
    } else {
        key = entry_key(cf, prefix, plen);
        e = find_entry(c, key);
    }
    if (e) {
        c->stats.hits++;
    } else if (c->complete) {
        c->stats.empty++; /* nothing counted for it yet */
        return 0;
    } else {
        c->stats.misses++;
        if (slot) key = entry_key(cf, prefix, plen);
        if (!(e = fill(c, cf, prefix, plen, n, key, err, errlen))) return -1;
        slot = planned(c, cf, prefix, plen); /* NULL if fill dropped the plans */
        if (slot) *slot = e;
    }
    for (size_t k = find_record(e, g, first); k < e->len; k++) {
        const int64_t *r = record(e, k);
        if (r[0] != g || r[1] > last) break;
        fn(ud, r[1], r + 2, n < e->n ? n : e->n);
    }
    return 0;
}

void iqp_featcache_event_begin(iqp_featcache *c) { c->event++; }

/* Delta memo: the aggregator tells one event's deltas per granularity
 * (and an action's per counter it moves), each time with the same
 * prefix and item bytes at the same addresses (its scratch prefix of the
 * feature, the event's item id). Within one event (between two
 * iqp_featcache_event_begin) an address pair therefore names one cell
 * prefix, and its entry is found again without building the key, its
 * digest or an index probe. A slot is valid only for the event that
 * filled it; drop_pointers ends every slot at once. */
static size_t delta_slot(const unsigned char *prefix, const char *item) {
    uintptr_t h = (uintptr_t)prefix * 0x9e3779b97f4a7c15ULL ^ (uintptr_t)item;
    return (size_t)(h >> 7 ^ h) & (DELTA_MEMO_SLOTS - 1);
}

static fc_entry *delta_entry(iqp_featcache *c, iqp_cf cf, const unsigned char *prefix,
                             size_t plen, const char *item, size_t ilen) {
    iqp_keybuf_truncate(&c->key, 0);
    iqp_keybuf_append(&c->key, prefix, plen);
    if (item) iqp_cells_append_entity(&c->key, item, ilen);
    iqp_key128 key = entry_key(cf, c->key.buf, c->key.len);
    fc_entry *e = find_entry(c, key);
    if (!e && c->complete) { /* its first delta a read can see: hold it */
        keep_budget(c);
        if (!c->complete) return NULL; /* dropped everything: filled when read */
        size_t n = cf == IQP_CF_COUNTS ? IQP_COUNTERS(c->cfg) : 1;
        c->stats.bytes += entry_bytes(n, FIRST_CAP);
        hold(c, e = entry_new(key, n, c->epoch), key);
    }
    return e;
}

void iqp_featcache_on_delta(iqp_featcache *c, iqp_cf cf, const unsigned char *prefix, size_t plen,
                            const char *item, size_t ilen, int gran_index, int64_t bucket,
                            size_t counter, int64_t delta) {
    if (gran_index < 0 || gran_index >= IQP_MAX_GRANS || bucket < c->oldest[gran_index]) return;
    size_t m = delta_slot(prefix, item);
    fc_entry *e;
    if (c->delta_memo[m].event == c->event && c->delta_memo[m].prefix == prefix &&
        c->delta_memo[m].item == item && c->delta_memo[m].plen == plen &&
        c->delta_memo[m].ilen == ilen && c->delta_memo[m].cf == cf) {
        e = c->delta_memo[m].e;
    } else {
        e = delta_entry(c, cf, prefix, plen, item, ilen);
        if (!e) return;
    }
    if (counter < e->n) get_record(c, &e, gran_index, bucket)[2 + counter] += delta;
    c->delta_memo[m].prefix = prefix; /* after get_record: e may have moved (a new event) */
    c->delta_memo[m].item = item;
    c->delta_memo[m].plen = plen;
    c->delta_memo[m].ilen = ilen;
    c->delta_memo[m].cf = cf;
    c->delta_memo[m].event = c->event;
    c->delta_memo[m].e = e;
}

const iqp_featcache_stats *iqp_featcache_get_stats(const iqp_featcache *c) { return &c->stats; }

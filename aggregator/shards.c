/* shards.c -- count orders and the pool of counting threads (see shards.h).
 *
 * The pool is a ring of RING_DEPTH work items, each a run of orders plus an
 * optional release callback, filled by the deciding thread and read by all
 * n counting threads in order. One mutex and two condition variables guard
 * the ring indices: `published` (items handed out) and each shard's `done`
 * (items it has applied). The producer waits for room while the slowest
 * shard is RING_DEPTH items behind, so memory is bounded by the ring
 * (and the events it refers to) whatever the speed of either side. Orders
 * are read without the lock: an item is written before it is published and
 * rewritten only after every shard is past it.
 *
 * The last shard to finish an item (an atomic countdown) runs its release
 * callback; shards apply items in order, so by then every earlier item is
 * applied by every shard too.
 */
#include "aggregator/shards.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "model/window.h"

#define RING_DEPTH 4
#define ITEM_ORDERS 2048  /* orders per work item before it is handed out */

/* ---- applying one order --------------------------------------------------- */

void iqp_count_scratch_init(iqp_count_scratch *s, const iqp_config *cfg) {
    memset(s, 0, sizeof *s);
    for (size_t f = 0; f < cfg->n_features; f++) iqp_keybuf_init(&s->prefix[f]);
}

void iqp_count_scratch_free(iqp_count_scratch *s, const iqp_config *cfg) {
    for (size_t f = 0; f < cfg->n_features; f++) iqp_keybuf_free(&s->prefix[f]);
}

unsigned iqp_count_shard_of(const unsigned char *prefix, size_t len, unsigned n) {
    return n <= 1 ? 0 : (unsigned)(XXH3_64bits(prefix, len) % n);
}

unsigned iqp_count_slices_of(const iqp_config *cfg, iqp_count_scratch *s, const iqp_event *ev,
                             unsigned n, unsigned *out) {
    iqp_context ctx;
    unsigned k = 0;
    iqp_event_context(cfg, ev, &ctx);
    for (size_t f = 0; f < cfg->n_features; f++) {
        iqp_cells_context_prefix(&s->prefix[f], &cfg->features[f], &ctx);
        unsigned shard = iqp_count_shard_of(s->prefix[f].buf, s->prefix[f].len, n), i = k;
        while (i > 0 && out[i - 1] > shard) i--;
        if (i > 0 && out[i - 1] == shard) continue;
        memmove(out + i + 1, out + i, (k - i) * sizeof *out);
        out[i] = shard;
        k++;
    }
    return k;
}

/* Builds every feature's context prefix, marks the ones this shard owns
 * and interns those in c; returns how many it owns. */
static size_t own_prefixes(const iqp_config *cfg, iqp_combiner *c, iqp_count_scratch *s,
                           const iqp_event *ev, unsigned shard, unsigned n) {
    iqp_context ctx;
    iqp_event_context(cfg, ev, &ctx);
    size_t owned = 0;
    for (size_t f = 0; f < cfg->n_features; f++) {
        iqp_cells_context_prefix(&s->prefix[f], &cfg->features[f], &ctx);
        s->mine[f] = iqp_count_shard_of(s->prefix[f].buf, s->prefix[f].len, n) == shard;
        if (!s->mine[f]) continue;
        s->prefix_id[f] = iqp_combiner_prefix_id(c, s->prefix[f].buf, s->prefix[f].len);
        owned++;
    }
    return owned;
}

/* ---- derived granularities ------------------------------------------------
 * Only the finest granularity is combined per event; the coarser ones are
 * derived from its cells at drain (combiner.h, iqp_derive), which halves
 * the combiner probes of the default hourly + daily config. Decided once,
 * when a counting combiner is made (iqp_count_derive_plan):
 *   - granularity g > 0 is derived when gran_ms[g] is a multiple of
 *     gran_ms[0]. Buckets are floor(ts / gran) from the epoch, so g's
 *     bucket is then exactly the union of ratio whole fine buckets, and
 *     floor(fine bucket / ratio) is g's bucket of every ts in it. Any other
 *     granularity (5h over 2h) is combined per event, as before.
 *   - Retention is per granularity, so one event may be late for the
 *     finest granularity and still count in a coarser one (or, with a
 *     short coarse retention, the reverse). A fine cell may only hold
 *     deltas that every derived granularity also takes, so per delta
 *     (plan_ts): when the finest granularity and every derived one retain
 *     ts's buckets, the delta goes to the source cell (counted once, in
 *     all of them at drain) plus, directly, to the retained granularities
 *     that are not derived; otherwise it goes directly to each granularity
 *     that retains it, exactly as without derivation. The drain sums a
 *     cell's direct and derived parts, so every cell written is the sum of
 *     the same deltas either way: the store's bytes do not change.
 * The count observer (export's mirror) is still told every delta per
 * granularity, and iqp_combiner_peek sums a coarse bucket's source cells,
 * so readers of the unflushed batch see the same values as before. */

void iqp_count_derive_plan(const iqp_config *cfg, iqp_derive *d) {
    memset(d, 0, sizeof *d);
    d->n_grans = cfg->n_grans;
    if (cfg->n_grans < 2 || cfg->gran_ms[0] <= 0) return;
    for (size_t g = 1; g < cfg->n_grans; g++)
        if (cfg->gran_ms[g] % cfg->gran_ms[0] == 0) {
            d->mask |= 1u << g;
            d->ratio[g] = cfg->gran_ms[g] / cfg->gran_ms[0];
        }
}

iqp_combiner *iqp_count_combiner_new(const iqp_config *cfg, int derive) {
    iqp_combiner *c = iqp_combiner_new(IQP_COUNTERS(cfg));
    iqp_derive d;
    iqp_count_derive_plan(cfg, &d);
    if (!derive) d.mask = 0;
    iqp_combiner_set_derive(c, &d);
    return c;
}

/* Where the deltas at one ts go (see above). */
typedef struct ts_plan {
    int64_t bucket[IQP_MAX_GRANS];
    unsigned retained;  /* bit g: g's bucket of ts is retained under wm (the observer's) */
    unsigned direct;    /* bit g: add to g's cell */
    int source;         /* add to the source cell (bucket[0]) */
} ts_plan;

static void plan_ts(const iqp_config *cfg, const iqp_derive *d, int64_t ts, int64_t wm, ts_plan *p) {
    p->retained = 0;
    for (size_t g = 0; g < cfg->n_grans; g++) {
        p->bucket[g] = iqp_bucket_of(ts, cfg->gran_ms[g]);
        if (p->bucket[g] >= iqp_retention_first_bucket(cfg, (int)g, wm)) p->retained |= 1u << g;
    }
    unsigned needed = d->mask | 1u;
    p->source = d->mask && (p->retained & needed) == needed;
    p->direct = p->source ? p->retained & ~needed : p->retained;
}

#define CONTEXT_CELL UINT32_MAX /* bump's item for the context cells */

/* One order being applied: where its deltas go. */
typedef struct apply_ctx {
    const iqp_config *cfg;
    iqp_combiner *c;
    const iqp_count_scratch *s;
    const iqp_count_observer *obs; /* NULL: none */
} apply_ctx;

/* Tells the observer of one delta of feature f. */
static void observe(const apply_ctx *x, size_t f, const iqp_item_ref *ref, int g, int64_t b,
                    size_t idx, int64_t delta) {
    const iqp_keybuf *p = &x->s->prefix[f];
    x->obs->on_delta(x->obs->ud, ref ? IQP_CF_COUNTS : IQP_CF_CONTEXTS, p->buf, p->len,
                     ref ? ref->id : NULL, ref ? ref->len : 0, g, b, idx, delta);
}

/* delta to counter idx of item's cells (item CONTEXT_CELL: to the
 * context_count cells; ref is the item's raw id, NULL for those) at the
 * planned ts, in every owned feature and every granularity that retains
 * ts's bucket. */
static uint64_t bump(const apply_ctx *x, uint32_t item, const iqp_item_ref *ref, size_t idx,
                     const ts_plan *p, int64_t delta) {
    const iqp_config *cfg = x->cfg;
    uint64_t updates = 0;
    for (size_t f = 0; p->source && f < cfg->n_features; f++) {
        if (!x->s->mine[f]) continue;
        uint32_t pid = x->s->prefix_id[f];
        if (item == CONTEXT_CELL) iqp_combiner_add_context_source(x->c, pid, p->bucket[0], delta);
        else iqp_combiner_add_count_source(x->c, pid, item, p->bucket[0], idx, delta);
        updates++;
    }
    for (size_t g = 0; g < cfg->n_grans; g++) {
        int direct = p->direct >> g & 1;
        if (!(p->retained >> g & 1) || (!direct && !x->obs)) continue;
        for (size_t f = 0; f < cfg->n_features; f++) {
            if (!x->s->mine[f]) continue;
            if (direct && item == CONTEXT_CELL)
                iqp_combiner_add_context(x->c, x->s->prefix_id[f], (int)g, p->bucket[g], delta);
            else if (direct)
                iqp_combiner_add_count(x->c, x->s->prefix_id[f], item, (int)g, p->bucket[g], idx, delta);
            if (x->obs) observe(x, f, ref, (int)g, p->bucket[g], idx, delta);
            updates += direct;
        }
    }
    return updates;
}

static int cmp_item_refs(const void *x, const void *y) {
    const iqp_item_ref *a = x, *b = y;
    size_t n = a->len < b->len ? a->len : b->len;
    int r = memcmp(a->id, b->id, n);
    return r ? r : (a->len > b->len) - (a->len < b->len);
}

/* The combiner slots of item's source cells (one per owned feature) are
 * asked for PREFETCH_ITEMS items ahead of their adds: a batch's counts
 * table is tens of MB, so nearly every add is a cache miss, and these
 * overlap. */
#define PREFETCH_ITEMS 2

static void prefetch_item(const apply_ctx *x, uint32_t item, const ts_plan *p) {
    if (!p->source) return;
    for (size_t f = 0; f < x->cfg->n_features; f++)
        if (x->s->mine[f]) iqp_combiner_prefetch_count_source(x->c, x->s->prefix_id[f], item, p->bucket[0]);
}

/* +1 impression for every distinct item of ev (an item listed twice
 * counts once). */
static uint64_t bump_impressions(const apply_ctx *x, const iqp_event *ev, const ts_plan *p) {
    uint64_t updates = 0;
    if (ev->n_items <= 64) {
        /* equal items intern to equal ids: a repeat is an id seen before
         * (linear over the usual tens of integers) */
        uint32_t ids[64];
        unsigned char first[64];
        size_t n = ev->n_items;
        for (size_t i = 0; i < n; i++) {
            ids[i] = iqp_combiner_item_id(x->c, ev->items[i].id, ev->items[i].len);
            size_t j = 0;
            while (j < i && ids[j] != ids[i]) j++;
            first[i] = j == i;
        }
        for (size_t i = 0; i < n && i < PREFETCH_ITEMS; i++) prefetch_item(x, ids[i], p);
        for (size_t i = 0; i < n; i++) {
            if (i + PREFETCH_ITEMS < n) prefetch_item(x, ids[i + PREFETCH_ITEMS], p);
            if (first[i]) updates += bump(x, ids[i], &ev->items[i], IQP_COUNTER_IMPRESSION, p, 1);
        }
        return updates;
    }
    /* Large impressions: sort a copy so duplicates are adjacent. */
    iqp_item_ref *sorted = malloc(ev->n_items * sizeof *sorted);
    if (!sorted) abort();
    memcpy(sorted, ev->items, ev->n_items * sizeof *sorted);
    qsort(sorted, ev->n_items, sizeof *sorted, cmp_item_refs);
    for (size_t i = 0; i < ev->n_items; i++) {
        if (i > 0 && cmp_item_refs(&sorted[i - 1], &sorted[i]) == 0) continue;
        uint32_t id = iqp_combiner_item_id(x->c, sorted[i].id, sorted[i].len);
        updates += bump(x, id, &sorted[i], IQP_COUNTER_IMPRESSION, p, 1);
    }
    free(sorted);
    return updates;
}

uint64_t iqp_count_apply(const iqp_config *cfg, iqp_combiner *c, iqp_count_scratch *s,
                         const iqp_count_order *o, unsigned shard, unsigned n,
                         const iqp_count_observer *obs) {
    const iqp_event *ev = o->ev;
    if (own_prefixes(cfg, c, s, ev, shard, n) == 0) return 0;
    apply_ctx x = {cfg, c, s, obs};
    const iqp_derive *d = iqp_combiner_derive(c);
    ts_plan p;
    if (ev->kind == IQP_EVENT_IMPRESSION) {
        plan_ts(cfg, d, ev->ts, o->wm, &p);
        return bump(&x, CONTEXT_CELL, NULL, 0, &p, 1) + bump_impressions(&x, ev, &p);
    }
    uint64_t updates = 0;
    uint32_t item = iqp_combiner_item_id(c, ev->item.id, ev->item.len);
    for (unsigned m = 0; m < o->n_moves; m++) {
        plan_ts(cfg, d, o->moves[m].ts, o->wm, &p);
        updates += bump(&x, item, &ev->item, o->moves[m].idx, &p, o->moves[m].delta);
    }
    return updates;
}

/* ---- the pool ------------------------------------------------------------- */

typedef struct work_item {
    iqp_count_order *orders;
    size_t n, cap;
    void (*release)(void *ud);
    void *ud;
    atomic_uint remaining;  /* shards yet to apply it */
} work_item;

typedef struct shard {
    iqp_shards *pool;
    unsigned index;
    pthread_t thread;
    uint64_t done;          /* items applied (under pool->mu) */
    iqp_combiner *comb, *spare;
    iqp_count_scratch scratch;
    atomic_size_t cells;    /* iqp_combiner_cells(comb) after the last item */
    atomic_uint_fast64_t updates;
} shard;

struct iqp_shards {
    const iqp_config *cfg;
    unsigned n;
    int derive;             /* combiners derive coarse granularities (iqp_count_combiner_new) */
    pthread_mutex_t mu;
    pthread_cond_t work;    /* published moved, or stopping */
    pthread_cond_t room;    /* a shard's done moved */
    work_item ring[RING_DEPTH];
    uint64_t published;     /* items handed out (under mu) */
    int filling;            /* ring[published % RING_DEPTH] is being filled */
    int stopping;
    shard *shards;
};

static uint64_t slowest_done(const iqp_shards *s) {
    uint64_t m = UINT64_MAX;
    for (unsigned k = 0; k < s->n; k++)
        if (s->shards[k].done < m) m = s->shards[k].done;
    return m;
}

/* Applies one item; the last shard through runs its release. */
static void apply_item(shard *sh, work_item *it) {
    const iqp_config *cfg = sh->pool->cfg;
    uint64_t updates = 0;
    for (size_t i = 0; i < it->n; i++)
        updates += iqp_count_apply(cfg, sh->comb, &sh->scratch, &it->orders[i], sh->index, sh->pool->n, NULL);
    atomic_fetch_add_explicit(&sh->updates, updates, memory_order_relaxed);
    atomic_store_explicit(&sh->cells, iqp_combiner_cells(sh->comb), memory_order_relaxed);
    if (atomic_fetch_sub(&it->remaining, 1) == 1 && it->release) it->release(it->ud);
}

static void *shard_main(void *arg) {
    shard *sh = arg;
    iqp_shards *s = sh->pool;
    pthread_setname_np(pthread_self(), "iqp-count");
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (sh->done == s->published && !s->stopping) pthread_cond_wait(&s->work, &s->mu);
        if (sh->done == s->published) break; /* stopping, nothing left */
        work_item *it = &s->ring[sh->done % RING_DEPTH];
        pthread_mutex_unlock(&s->mu);
        apply_item(sh, it);
        pthread_mutex_lock(&s->mu);
        sh->done++;
        pthread_cond_broadcast(&s->room);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

iqp_shards *iqp_shards_new(const iqp_config *cfg, unsigned n, int derive) {
    iqp_shards *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->cfg = cfg;
    s->n = n;
    s->derive = derive;
    s->shards = calloc(n, sizeof *s->shards);
    if (!s->shards) abort();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->room, NULL);
    for (unsigned k = 0; k < n; k++) {
        shard *sh = &s->shards[k];
        sh->pool = s;
        sh->index = k;
        sh->comb = iqp_count_combiner_new(cfg, derive);
        iqp_count_scratch_init(&sh->scratch, cfg);
        if (pthread_create(&sh->thread, NULL, shard_main, sh) != 0) abort();
    }
    return s;
}

/* Hands out the item being filled, if any. */
static void publish(iqp_shards *s) {
    if (!s->filling) return;
    work_item *it = &s->ring[s->published % RING_DEPTH];
    atomic_store(&it->remaining, s->n);
    pthread_mutex_lock(&s->mu);
    s->published++;
    s->filling = 0;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->mu);
}

/* The item being filled, after waiting for its slot to be free. */
static work_item *filling_item(iqp_shards *s) {
    work_item *it = &s->ring[s->published % RING_DEPTH];
    if (s->filling) return it;
    pthread_mutex_lock(&s->mu);
    while (s->published - slowest_done(s) >= RING_DEPTH) pthread_cond_wait(&s->room, &s->mu);
    pthread_mutex_unlock(&s->mu);
    it->n = 0;
    it->release = NULL;
    it->ud = NULL;
    s->filling = 1;
    return it;
}

void iqp_shards_push(iqp_shards *s, const iqp_count_order *o) {
    work_item *it = filling_item(s);
    if (it->n == it->cap) {
        it->cap = it->cap ? it->cap * 2 : 256;
        it->orders = realloc(it->orders, it->cap * sizeof *it->orders);
        if (!it->orders) abort();
    }
    it->orders[it->n++] = *o;
    if (it->n >= ITEM_ORDERS) publish(s);
}

void iqp_shards_after(iqp_shards *s, void (*fn)(void *ud), void *ud) {
    work_item *it = filling_item(s);
    it->release = fn;
    it->ud = ud;
    publish(s);
}

void iqp_shards_quiesce(iqp_shards *s) {
    publish(s);
    pthread_mutex_lock(&s->mu);
    while (slowest_done(s) != s->published) pthread_cond_wait(&s->room, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

unsigned iqp_shards_n(const iqp_shards *s) { return s->n; }

size_t iqp_shards_cells(const iqp_shards *s) {
    size_t cells = 0;
    for (unsigned k = 0; k < s->n; k++)
        cells += atomic_load_explicit(&s->shards[k].cells, memory_order_relaxed);
    return cells;
}

uint64_t iqp_shards_take_updates(iqp_shards *s) {
    uint64_t u = 0;
    for (unsigned k = 0; k < s->n; k++) u += atomic_exchange(&s->shards[k].updates, 0);
    return u;
}

void iqp_shards_take(iqp_shards *s, iqp_combiner **out) {
    for (unsigned k = 0; k < s->n; k++) {
        shard *sh = &s->shards[k];
        out[k] = sh->comb;
        sh->comb = sh->spare ? sh->spare : iqp_count_combiner_new(s->cfg, s->derive);
        sh->spare = NULL;
        atomic_store(&sh->cells, 0);
    }
}

void iqp_shards_give_back(iqp_shards *s, iqp_combiner **combs) {
    for (unsigned k = 0; k < s->n; k++) {
        iqp_combiner_clear(combs[k]);
        iqp_combiner_free(s->shards[k].spare);
        s->shards[k].spare = combs[k];
        combs[k] = NULL;
    }
}

void iqp_shards_clear(iqp_shards *s) {
    for (unsigned k = 0; k < s->n; k++) {
        iqp_combiner_clear(s->shards[k].comb);
        atomic_store(&s->shards[k].cells, 0);
    }
}

void iqp_shards_free(iqp_shards *s) {
    if (!s) return;
    iqp_shards_quiesce(s);
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->mu);
    for (unsigned k = 0; k < s->n; k++) {
        shard *sh = &s->shards[k];
        pthread_join(sh->thread, NULL);
        iqp_combiner_free(sh->comb);
        iqp_combiner_free(sh->spare);
        iqp_count_scratch_free(&sh->scratch, s->cfg);
    }
    for (size_t i = 0; i < RING_DEPTH; i++) free(s->ring[i].orders);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->room);
    free(s->shards);
    free(s);
}

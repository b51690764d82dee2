/* aggregator.c -- the counting rules (see aggregator.h and the README).
 *
 * For one event the aggregator:
 *   1. rejects it as future (ts > now + skew) or late (every granularity's
 *      bucket for ts is older than the retention that ends at the
 *      watermark, counting this event's own ts);
 *   2. drops a redelivered event_id (marker 'E');
 *   3. impression: +1 context_count in every feature's context, +1
 *      impression for every distinct listed item;
 *      action: applies the keyed min-ts rule twice, for the action itself
 *      (marker 'A') and for engaged (marker 'G'): a key counts once, in
 *      the bucket of the earliest ts seen; an earlier repeat moves the
 *      count (-1 at the old bucket, +1 at the new one).
 * Every delta goes to the combiner for the granularities whose bucket is
 * still retained (once, at the finest granularity, when the coarser ones
 * can be derived from it at drain: shards.c); markers are looked up first
 * in the batch, then in the store (a backfill into a store it created
 * skips the store read for markers it never set: the sole writer's filter,
 * "markers" below). Nothing is read-modify-written in the store.
 *
 * Steps 1, 2 and the markers of 3 are decided here, in event order; what
 * the event then adds is an order (shards.h) that is applied here or, with
 * counting threads, by the shards that own its contexts. A flush waits for
 * the shards (iqp_shards_quiesce) and writes their combiners with this
 * one's markers in the same batch.
 *
 * Markers are forgotten by processing progress only (README rule 7): a
 * marker records the watermark just after the event that wrote it counted
 * (written_wm); an event looking it up forgets it when the watermark before
 * that event (seen_wm) is past written_wm + dedup_horizon
 * (iqp_marker_forgotten). Both watermarks advance per counted event, not
 * per flush, so the outcome depends on the sequence of events only, never
 * on where micro-batches end.
 */
#include "aggregator/aggregator.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cells.h"
#include "aggregator/combiner.h"
#include "aggregator/shards.h"
#include "model/window.h"

/* The sole writer's marker filter (see "markers" below). */
#define MARKER_FILTER_BYTES ((size_t)16 << 20)

/* A staged meta record (source positions); a short list. */
typedef struct staged_meta {
    struct staged_meta *next;
    char *key;
    void *val;
    size_t vlen;
} staged_meta;

/* A micro-batch being written by the writer thread (flush_begin): its
 * combiner is only read until the counting thread joins the writer. */
typedef struct flush_job {
    iqp_aggregator *a;
    iqp_combiner *comb;           /* markers, and the counts when unsharded */
    iqp_combiner **shard_combs;   /* the counting threads' combiners (sharded) */
    staged_meta *meta;
    int64_t watermark_ms;
    pthread_t thread;
    int running;                  /* thread started, not joined yet */
    atomic_int written;           /* the writer is done: joining does not wait */
    int rc;
    size_t cells_written, batch_bytes;
    char err[512];
} flush_job;

struct iqp_aggregator {
    iqp_store *st;
    const iqp_config *cfg;
    iqp_combiner *comb;
    iqp_store_batch *batch;       /* reused by every flush (keeps its pages) */
    iqp_store_batch *last_batch;  /* a final flush's, filled beside the writer (NULL: none yet) */
    iqp_combiner *spare;          /* the other combiner, for flush_begin */
    flush_job job;                /* at most one flush in flight */
    int64_t watermark_ms;         /* includes unflushed events */
    size_t pending;
    int failed;                   /* a flush failed: the batch is lost, refuse work */
    int restoring;                /* markers only: no counter deltas (iqp_aggregator_restore) */
    int derive;                   /* combiners derive coarse granularities (shards.c) */
    iqp_agg_stats stats;
    staged_meta *meta;
    iqp_agg_flush_hook hook;      /* on_cell NULL: none */
    iqp_agg_delta_hook delta_hook; /* on_delta NULL: none */
    iqp_shards *shards;           /* counting threads; NULL: count on this one */
    unsigned slice, n_slices;     /* count only contexts of shard slice of n_slices (n_slices <= 1: all) */
    /* Buckets the unflushed deltas touch, per granularity (first > last:
     * none), so a reader of the batch (iqp_aggregator_pending_cell) only
     * probes buckets that can hold something. */
    int64_t pending_first[IQP_MAX_GRANS], pending_last[IQP_MAX_GRANS];
    uint64_t *marker_filter;      /* markers set, when the sole writer (NULL: off) */
    /* per-event scratch */
    iqp_count_order order;        /* what the event being decided adds */
    iqp_count_scratch scratch;    /* for applying it on this thread */
};

/* Forgets the bucket range of the unflushed deltas (after a flush or discard). */
static void reset_pending_buckets(iqp_aggregator *a) {
    for (size_t g = 0; g < IQP_MAX_GRANS; g++) {
        a->pending_first[g] = INT64_MAX;
        a->pending_last[g] = INT64_MIN;
    }
}

static void note_pending_bucket(iqp_aggregator *a, size_t g, int64_t b) {
    if (b < a->pending_first[g]) a->pending_first[g] = b;
    if (b > a->pending_last[g]) a->pending_last[g] = b;
}

iqp_aggregator *iqp_aggregator_new(iqp_store *st) {
    iqp_aggregator *a = calloc(1, sizeof *a);
    if (!a) abort();
    a->st = st;
    a->cfg = iqp_store_config(st);
    a->derive = 1;
    a->comb = iqp_count_combiner_new(a->cfg, a->derive);
    a->batch = iqp_store_batch_new(st);
    a->watermark_ms = iqp_store_watermark(st);
    reset_pending_buckets(a);
    iqp_count_scratch_init(&a->scratch, a->cfg);
    return a;
}

static void free_staged(iqp_aggregator *a) {
    while (a->meta) {
        staged_meta *next = a->meta->next;
        free(a->meta->key);
        free(a->meta->val);
        free(a->meta);
        a->meta = next;
    }
}

static int join_flush(iqp_aggregator *a, char *err, size_t errlen);

void iqp_aggregator_free(iqp_aggregator *a) {
    if (!a) return;
    char err[512];
    join_flush(a, err, sizeof err); /* a failure was reported by the caller's last flush */
    iqp_shards_free(a->shards);
    free(a->job.shard_combs);
    iqp_combiner_free(a->spare);
    iqp_combiner_free(a->comb);
    iqp_store_batch_free(a->batch);
    iqp_store_batch_free(a->last_batch);
    iqp_count_scratch_free(&a->scratch, a->cfg);
    if (a->marker_filter) munmap(a->marker_filter, MARKER_FILTER_BYTES);
    free_staged(a);
    free(a);
}

/* ---- time rules ---------------------------------------------------------- */

/* How many granularities still retain ts's bucket under watermark wm. */
static int retained_granularities(const iqp_aggregator *a, int64_t ts, int64_t wm) {
    int n = 0;
    for (size_t g = 0; g < a->cfg->n_grans; g++)
        n += iqp_bucket_of(ts, a->cfg->gran_ms[g]) >= iqp_retention_first_bucket(a->cfg, (int)g, wm);
    return n;
}

/* ---- markers ------------------------------------------------------------- */

/* The sole writer's marker filter (iqp_aggregator_set_sole_marker_writer):
 * a blocked Bloom filter of 512-bit blocks (one cache line each), 4 bits a
 * marker. A marker key is its kind and a 128-bit XXH3 digest (cells.h), so
 * its bytes are the hash: the first 8 digest bytes pick the block, the last
 * 8 (with the kind) the bits. Fixed size, so memory stays bounded however
 * long the backfill: at 600k markers (a 300k-line log) nearly no false
 * "maybe", at 20M (10M events) ~4%, each costing the store read that every
 * lookup cost before. */
#define MARKER_FILTER_BLOCKS (MARKER_FILTER_BYTES / 64)

static uint64_t load_u64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The block of key and its 4 bits (block-relative positions 0..511). */
static uint64_t *filter_block(const iqp_aggregator *a, const unsigned char *key, unsigned pos[4]) {
    uint64_t h = load_u64(key + 9) ^ (uint64_t)key[0] * 0x9E3779B97F4A7C15ULL;
    for (int k = 0; k < 4; k++) pos[k] = (unsigned)(h >> (9 * k)) & 511;
    return a->marker_filter + (load_u64(key + 1) & (MARKER_FILTER_BLOCKS - 1)) * 8;
}

static void filter_add(iqp_aggregator *a, const unsigned char *key) {
    if (!a->marker_filter) return;
    unsigned pos[4];
    uint64_t *b = filter_block(a, key, pos);
    for (int k = 0; k < 4; k++) b[pos[k] >> 6] |= 1ULL << (pos[k] & 63);
}

/* 0 only when key was never set by this aggregator (so, as the sole
 * writer, it is not in the store); 1 when the store must be read. */
static int filter_maybe(const iqp_aggregator *a, const unsigned char *key) {
    if (!a->marker_filter) return 1;
    unsigned pos[4];
    const uint64_t *b = filter_block(a, key, pos);
    for (int k = 0; k < 4; k++)
        if (!(b[pos[k] >> 6] >> (pos[k] & 63) & 1)) return 0;
    return 1;
}

int iqp_aggregator_set_sole_marker_writer(iqp_aggregator *a) {
    if (a->marker_filter) return 1;
    if (!iqp_store_is_fresh(a->st) || a->pending || a->job.running) return 0;
    void *p = mmap(NULL, MARKER_FILTER_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 0; /* no memory: every lookup reads the store, as before */
    /* Written now, on huge pages where the kernel has them: markers land
     * in blocks at random, so a backfill touches nearly every page anyway,
     * and a page first read (the zero page) and then written faults twice
     * and flushes the other cores' TLBs (measured: ~4% of the counting
     * thread). */
    madvise(p, MARKER_FILTER_BYTES, MADV_HUGEPAGE);
    memset(p, 0, MARKER_FILTER_BYTES);
    a->marker_filter = p;
    return 1;
}

/* Sets a marker in the batch (and in the filter). */
static void set_marker(iqp_aggregator *a, const unsigned char *key, const iqp_marker *m) {
    iqp_combiner_set_marker(a->comb, key, m);
    filter_add(a, key);
}

/* 1 and *m when the marker is remembered under watermark wm, 0 when not,
 * -1 on a store error. The unflushed batch and the store hold markers of
 * the same kind under the same rule (iqp_marker_forgotten, README rule 7):
 * a marker is forgotten by processing progress only, so neither a flush
 * nor a compaction changes what is a duplicate. */
static int find_marker(iqp_aggregator *a, const unsigned char *key, int64_t wm, iqp_marker *m) {
    int rc = iqp_combiner_get_marker(a->comb, key, m);
    if (!rc && a->job.running) rc = iqp_combiner_get_marker(a->job.comb, key, m);
    if (!rc && filter_maybe(a, key)) rc = iqp_store_get_marker(a->st, key, IQP_MARKER_KEY_LEN, m);
    if (rc == 1 && iqp_marker_forgotten(m, wm, a->cfg->dedup_horizon_ms)) return 0;
    return rc;
}

/* ---- cell deltas --------------------------------------------------------- */

static void note_ts_buckets(iqp_aggregator *a, int64_t ts, int64_t wm) {
    for (size_t g = 0; g < a->cfg->n_grans; g++) {
        int64_t b = iqp_bucket_of(ts, a->cfg->gran_ms[g]);
        if (b >= iqp_retention_first_bucket(a->cfg, (int)g, wm)) note_pending_bucket(a, g, b);
    }
}

/* Adds a move of the keyed min-ts rule to the event's order. */
static void order_move(iqp_aggregator *a, size_t idx, int64_t ts, int delta) {
    iqp_count_order *o = &a->order;
    o->moves[o->n_moves++] = (iqp_count_move){ts, (uint32_t)idx, delta};
}

/* Counts the decided event's order: here, or on the counting threads
 * (shards.h), which apply orders in the order they were decided. */
static void dispatch_order(iqp_aggregator *a) {
    const iqp_count_order *o = &a->order;
    if (a->shards) {
        iqp_shards_push(a->shards, o);
        return;
    }
    if (o->ev->kind == IQP_EVENT_IMPRESSION) note_ts_buckets(a, o->ev->ts, o->wm);
    for (unsigned m = 0; m < o->n_moves; m++) note_ts_buckets(a, o->moves[m].ts, o->wm);
    const iqp_count_observer *obs = a->delta_hook.on_delta ? &a->delta_hook : NULL;
    a->stats.cell_updates += iqp_count_apply(a->cfg, a->comb, &a->scratch, o, a->slice, a->n_slices, obs);
}

/* The keyed min-ts rule for one marker: returns 1 when counters changed,
 * 0 when this occurrence is a repeat, -1 on a store error. */
static int count_keyed(iqp_aggregator *a, const iqp_event *ev, const iqp_context *ctx, char kind,
                       int action, size_t idx, int64_t seen_wm) {
    unsigned char mk[IQP_MARKER_KEY_LEN];
    iqp_marker old, now = {ev->ts, a->watermark_ms};
    iqp_cells_action_marker(mk, kind, ev->request_id, ev->request_id_len, ev->item.id,
                            ev->item.len, action, a->cfg->n_segments, ctx);
    int found = find_marker(a, mk, seen_wm, &old);
    if (found < 0) return -1;
    if (found && old.ts <= ev->ts) return 0;
    if (found) order_move(a, idx, old.ts, -1);
    order_move(a, idx, ev->ts, 1);
    set_marker(a, mk, &now);
    return 1;
}

static int count_action(iqp_aggregator *a, const iqp_event *ev, const iqp_context *ctx,
                        int64_t seen_wm) {
    int acted = count_keyed(a, ev, ctx, 'A', ev->action, IQP_COUNTER_ACTION0 + (size_t)ev->action,
                            seen_wm);
    if (acted < 0) return -1;
    int engaged = count_keyed(a, ev, ctx, 'G', -1, IQP_COUNTER_ENGAGED, seen_wm);
    if (engaged < 0) return -1;
    return acted || engaged;
}

iqp_agg_outcome iqp_aggregator_add(iqp_aggregator *a, const iqp_event *ev, int64_t now_ms,
                                   char *err, size_t errlen) {
    if (a->failed) {
        snprintf(err, errlen, "an earlier store write failed; this batch cannot continue");
        return IQP_AGG_ERROR;
    }
    if (ev->ts - now_ms > a->cfg->max_future_skew_ms) return a->stats.future++, IQP_AGG_FUTURE;
    int64_t wm = ev->ts > a->watermark_ms ? ev->ts : a->watermark_ms;
    if (retained_granularities(a, ev->ts, wm) == 0) return a->stats.late++, IQP_AGG_LATE;
    unsigned char mk[IQP_MARKER_KEY_LEN];
    iqp_marker seen, now = {ev->ts, wm};
    iqp_cells_event_marker(mk, ev->event_id, ev->event_id_len);
    int found = find_marker(a, mk, a->watermark_ms, &seen);
    if (found < 0) goto store_error;
    if (found) return a->stats.duplicate++, IQP_AGG_DUPLICATE;
    /* Count under the watermark this event would set; keep it (and the
     * event-id marker) only if the event changed a counter: the watermark is
     * the newest *counted* event (README rule 6), and a repeat that counted
     * nothing must not expire anyone's buckets. */
    int64_t previous_wm = a->watermark_ms;
    a->watermark_ms = wm;
    iqp_context ctx;
    iqp_event_context(a->cfg, ev, &ctx);
    a->order = (iqp_count_order){.ev = ev, .wm = wm};
    int changed = 1;
    if (ev->kind != IQP_EVENT_IMPRESSION && (changed = count_action(a, ev, &ctx, previous_wm)) < 0)
        goto store_error;
    if (!changed || a->restoring) a->watermark_ms = previous_wm;
    if (!changed) return a->stats.duplicate++, IQP_AGG_DUPLICATE;
    if (!a->restoring) dispatch_order(a);
    set_marker(a, mk, &now);
    a->pending++;
    if (a->restoring) return a->stats.restored++, IQP_AGG_COUNTED;
    return a->stats.counted++, IQP_AGG_COUNTED;
store_error:
    snprintf(err, errlen, "cannot read dedup markers from the store");
    return IQP_AGG_ERROR;
}

iqp_agg_outcome iqp_aggregator_restore(iqp_aggregator *a, const iqp_event *ev, int64_t now_ms,
                                       char *err, size_t errlen) {
    a->restoring = 1;
    iqp_agg_outcome out = iqp_aggregator_add(a, ev, now_ms, err, errlen);
    a->restoring = 0;
    return out;
}

/* ---- flushing ------------------------------------------------------------ */

void iqp_aggregator_stage_meta(iqp_aggregator *a, const char *key, const void *val, size_t vlen) {
    staged_meta *m = a->meta;
    while (m && strcmp(m->key, key) != 0) m = m->next;
    if (!m) {
        m = calloc(1, sizeof *m);
        if (!m) abort();
        m->key = strdup(key);
        m->next = a->meta;
        a->meta = m;
    }
    free(m->val);
    m->val = malloc(vlen ? vlen : 1);
    if (!m->key || !m->val) abort();
    memcpy(m->val, val, vlen);
    m->vlen = vlen;
}

size_t iqp_aggregator_pending(const iqp_aggregator *a) { return a->pending; }

void iqp_aggregator_discard(iqp_aggregator *a) {
    char err[512];
    join_flush(a, err, sizeof err); /* the batch before this one stays committed */
    if (a->shards) {
        iqp_shards_quiesce(a->shards);
        iqp_shards_clear(a->shards);
    }
    iqp_combiner_clear(a->comb);
    free_staged(a);
    a->pending = 0;
    a->watermark_ms = iqp_store_watermark(a->st);
    reset_pending_buckets(a);
}

int iqp_aggregator_should_flush(const iqp_aggregator *a) {
    size_t cells = iqp_combiner_cells(a->comb) + (a->shards ? iqp_shards_cells(a->shards) : 0);
    return a->pending >= a->cfg->flush_events || cells >= IQP_AGG_MAX_CELLS;
}

/* Fills b with a micro-batch: counter merges and markers of comb and of
 * the n_shards shard combiners (on_cell told of each cell), staged meta and
 * the watermark. The shards hold disjoint contexts, so every stored key
 * comes from one combiner, in key order, as one merge. Returns the merges
 * (stored keys written: one per (context, entity, slot)). */
static size_t fill_batch(iqp_store_batch *b, const iqp_combiner *comb, iqp_combiner *const *shard_combs,
                         size_t n_shards, const staged_meta *meta, int64_t watermark_ms,
                         const iqp_agg_flush_hook *hook) {
    iqp_store_batch_clear(b);
    iqp_combiner_write(comb, b, hook ? hook->on_cell : NULL, hook ? hook->ud : NULL);
    for (size_t k = 0; k < n_shards; k++)
        iqp_combiner_write(shard_combs[k], b, hook ? hook->on_cell : NULL, hook ? hook->ud : NULL);
    size_t merges = iqp_store_batch_merges(b);
    for (const staged_meta *m = meta; m; m = m->next)
        iqp_store_batch_put(b, IQP_CF_META, m->key, strlen(m->key), m->val, m->vlen);
    if (watermark_ms != INT64_MIN) iqp_store_batch_set_watermark(b, watermark_ms);
    return merges;
}

/* Forgets the micro-batch just committed (or handed to the writer). */
static void batch_done(iqp_aggregator *a) {
    a->pending = 0;
    reset_pending_buckets(a);
    a->stats.flushes++;
}

static size_t n_shards(const iqp_aggregator *a) { return a->shards ? iqp_shards_n(a->shards) : 0; }

/* Waits for the counting threads and moves their combiners into the flush
 * job (a->job.shard_combs); with no counting threads, nothing. */
static void take_shards(iqp_aggregator *a) {
    if (!a->shards) return;
    iqp_shards_quiesce(a->shards);
    a->stats.cell_updates += iqp_shards_take_updates(a->shards);
    iqp_shards_take(a->shards, a->job.shard_combs);
}

static void give_back_shards(iqp_aggregator *a) {
    if (a->shards) iqp_shards_give_back(a->shards, a->job.shard_combs);
}

/* Writes one micro-batch (comb and the n shard combiners) through b, with
 * the flush hook's records when hook is not NULL; sets *cells and *bytes.
 * 0, or -1 with err. */
static int write_batch(iqp_aggregator *a, iqp_store_batch *b, const iqp_combiner *comb,
                       iqp_combiner *const *shard_combs, size_t n, const staged_meta *meta,
                       int64_t watermark_ms, const iqp_agg_flush_hook *hook, size_t *cells,
                       size_t *bytes, char *err, size_t errlen) {
    *cells = fill_batch(b, comb, shard_combs, n, meta, watermark_ms, hook);
    if (hook && hook->before_commit) hook->before_commit(hook->ud, b);
    *bytes = iqp_store_batch_bytes(b);
    int rc = iqp_store_batch_commit(a->st, b, err, errlen);
    iqp_store_batch_clear(b);
    if (hook && hook->after_commit) hook->after_commit(hook->ud, rc == 0);
    return rc;
}

/* The writer thread runs the hook only when it allows that (on_writer). */
static const iqp_agg_flush_hook *writer_hook(const iqp_aggregator *a) {
    return a->hook.on_writer ? &a->hook : NULL;
}

static void *writer_main(void *arg) {
    flush_job *j = arg;
    pthread_setname_np(pthread_self(), "iqp-writer");
    j->rc = write_batch(j->a, j->a->batch, j->comb, j->shard_combs, n_shards(j->a), j->meta,
                        j->watermark_ms, writer_hook(j->a), &j->cells_written, &j->batch_bytes, j->err,
                        sizeof j->err);
    atomic_store(&j->written, 1);
    return NULL;
}

/* Takes back what the finished writer held; 0, or -1 with its error (and
 * the aggregator refuses further work). */
static int collect_flush(iqp_aggregator *a, char *err, size_t errlen) {
    flush_job *j = &a->job;
    j->running = 0;
    iqp_combiner_clear(j->comb);
    a->spare = j->comb;
    give_back_shards(a);
    staged_meta *keep = a->meta;
    a->meta = j->meta;
    free_staged(a);
    a->meta = keep;
    a->stats.cells_written += j->cells_written;
    a->stats.batch_bytes += j->batch_bytes;
    if (j->rc < 0) {
        a->failed = 1;
        snprintf(err, errlen, "%s", j->err);
        return -1;
    }
    return 0;
}

/* Waits for the flush in flight, if any; as collect_flush. */
static int join_flush(iqp_aggregator *a, char *err, size_t errlen) {
    if (!a->job.running) return 0;
    pthread_join(a->job.thread, NULL);
    return collect_flush(a, err, errlen);
}

/* ---- a final flush beside the writer --------------------------------------
 * A synchronous flush that finds a flush in flight waited for it and then
 * drained its own combiner; at the end of a backfill that wait was the
 * run's tail, one core idle (measured: ~0.35 s of a 2 s backfill with one
 * core busy). Where nothing else can notice (no counting threads, whose
 * combiners the writer's job holds; no flush hooks; a store whose batches
 * fill locally, iqp_store_fills_locally), this batch is drained into a
 * second store batch while the writer commits the one before, and
 * committed once that one is: the order of commits is unchanged, and a
 * failed commit before it still fails this flush unwritten. */
static int may_drain_beside_writer(const iqp_aggregator *a) {
    return a->job.running && !a->shards && !a->hook.on_cell && !a->hook.before_commit &&
           !a->hook.after_commit && iqp_store_fills_locally(a->st);
}

/* -1 with err once an earlier write failed (the aggregator refuses work). */
static int refuse_after_failure(const iqp_aggregator *a, char *err, size_t errlen) {
    if (!a->failed) return 0;
    snprintf(err, errlen, "an earlier store write failed; this batch cannot be written");
    return -1;
}

/* After a synchronous write of a->comb's batch (rc): the batch is done, or
 * the aggregator has failed. */
static int finish_sync_flush(iqp_aggregator *a, int rc, size_t cells, size_t bytes) {
    iqp_combiner_clear(a->comb);
    a->stats.cells_written += cells;
    a->stats.batch_bytes += bytes;
    if (rc < 0) {
        a->failed = 1;
        return -1;
    }
    free_staged(a);
    batch_done(a);
    return 0;
}

static int flush_beside_writer(iqp_aggregator *a, char *err, size_t errlen) {
    if (!a->last_batch) a->last_batch = iqp_store_batch_new(a->st);
    iqp_store_batch *b = a->last_batch;
    size_t cells = fill_batch(b, a->comb, NULL, 0, a->meta, a->watermark_ms, NULL);
    int rc = join_flush(a, err, errlen);
    if (rc == 0) rc = refuse_after_failure(a, err, errlen);
    size_t bytes = iqp_store_batch_bytes(b);
    if (rc == 0) rc = iqp_store_batch_commit(a->st, b, err, errlen);
    iqp_store_batch_clear(b);
    return finish_sync_flush(a, rc, cells, bytes);
}

int iqp_aggregator_flush(iqp_aggregator *a, char *err, size_t errlen) {
    if (may_drain_beside_writer(a) && !a->failed && (a->pending || a->meta))
        return flush_beside_writer(a, err, errlen);
    if (join_flush(a, err, errlen) < 0 || refuse_after_failure(a, err, errlen) < 0) return -1;
    if (a->pending == 0 && !a->meta) return 0;
    size_t cells, bytes;
    take_shards(a);
    int rc = write_batch(a, a->batch, a->comb, a->job.shard_combs, n_shards(a), a->meta, a->watermark_ms,
                         &a->hook, &cells, &bytes, err, errlen);
    give_back_shards(a);
    return finish_sync_flush(a, rc, cells, bytes);
}

int iqp_aggregator_flush_begin(iqp_aggregator *a, char *err, size_t errlen) {
    if ((a->hook.on_cell || a->hook.before_commit || a->hook.after_commit) && !a->hook.on_writer)
        return iqp_aggregator_flush(a, err, errlen); /* hooks run on the caller's thread */
    if (join_flush(a, err, errlen) < 0 || refuse_after_failure(a, err, errlen) < 0) return -1;
    if (a->pending == 0 && !a->meta) return 0;
    flush_job *j = &a->job;
    if (!a->spare) a->spare = iqp_count_combiner_new(a->cfg, a->derive);
    j->a = a;
    take_shards(a);
    j->comb = a->comb;
    j->meta = a->meta;
    j->watermark_ms = a->watermark_ms;
    a->comb = a->spare;
    a->spare = NULL;
    a->meta = NULL;
    j->running = 1;
    atomic_store(&j->written, 0);
    batch_done(a);
    if (pthread_create(&j->thread, NULL, writer_main, j) != 0) {
        writer_main(j); /* no thread to be had: write on this one */
        return collect_flush(a, err, errlen);
    }
    return 0;
}

void iqp_aggregator_set_threads(iqp_aggregator *a, unsigned n) {
    if (a->shards || n < 2 || a->delta_hook.on_delta || a->n_slices > 1) return;
    if (n > IQP_MAX_COUNT_THREADS) n = IQP_MAX_COUNT_THREADS;
    a->job.shard_combs = calloc(n, sizeof *a->job.shard_combs);
    if (!a->job.shard_combs) abort();
    a->shards = iqp_shards_new(a->cfg, n, a->derive);
}

void iqp_aggregator_set_slice(iqp_aggregator *a, unsigned slice, unsigned n) {
    if (a->shards || a->pending || n <= 1 || slice >= n) return;
    a->slice = slice;
    a->n_slices = n;
}

void iqp_aggregator_set_derive(iqp_aggregator *a, int on) {
    if (a->shards || a->pending || iqp_combiner_cells(a->comb) || a->job.running) return;
    a->derive = on != 0;
    iqp_combiner_free(a->comb);
    iqp_combiner_free(a->spare);
    a->spare = NULL;
    a->comb = iqp_count_combiner_new(a->cfg, a->derive);
}

void iqp_aggregator_after_counted(iqp_aggregator *a, void (*fn)(void *ud), void *ud) {
    if (a->shards) iqp_shards_after(a->shards, fn, ud);
    else fn(ud);
}

int iqp_aggregator_flush_in_flight(const iqp_aggregator *a) { return a->job.running; }

int iqp_aggregator_flush_written(iqp_aggregator *a) {
    return !a->job.running || atomic_load(&a->job.written);
}

int iqp_aggregator_flush_collect(iqp_aggregator *a, char *err, size_t errlen) {
    return join_flush(a, err, errlen);
}

void iqp_aggregator_set_flush_hook(iqp_aggregator *a, const iqp_agg_flush_hook *hook) {
    if (hook) a->hook = *hook;
    else memset(&a->hook, 0, sizeof a->hook);
}

void iqp_aggregator_set_delta_hook(iqp_aggregator *a, const iqp_agg_delta_hook *hook) {
    if (hook) a->delta_hook = *hook;
    else memset(&a->delta_hook, 0, sizeof a->delta_hook);
}

const iqp_agg_stats *iqp_aggregator_stats(const iqp_aggregator *a) { return &a->stats; }

/* ---- reading the unflushed batch (iqp export) ----------------------------- */

int iqp_aggregator_pending_cell(const iqp_aggregator *a, iqp_cf cf, const unsigned char *key,
                                size_t klen, int64_t *vec, size_t n) {
    int gran;
    int64_t bucket;
    if (iqp_cells_key_bucket(key, klen, &gran, &bucket) < 0) return 0;
    size_t body = klen - IQP_BUCKET_SUFFIX_LEN;
    if (cf == IQP_CF_CONTEXTS) return iqp_combiner_peek(a->comb, key, body, NULL, 0, gran, bucket, vec, n);
    iqp_parsed_key pk;
    if (iqp_cells_parse_key(a->cfg, key, body, &pk) < 0 || !pk.item) return 0;
    return iqp_combiner_peek(a->comb, key, pk.prefix_len, pk.item, pk.item_len, gran, bucket, vec, n);
}

int iqp_aggregator_pending_buckets(const iqp_aggregator *a, int gran_index, int64_t *first,
                                   int64_t *last) {
    if (gran_index < 0 || gran_index >= IQP_MAX_GRANS) return 0;
    *first = a->pending_first[gran_index];
    *last = a->pending_last[gran_index];
    return *first <= *last;
}

int iqp_aggregator_event_seen(iqp_aggregator *a, const iqp_event *ev) {
    unsigned char mk[IQP_MARKER_KEY_LEN];
    iqp_marker m;
    iqp_cells_event_marker(mk, ev->event_id, ev->event_id_len);
    return find_marker(a, mk, a->watermark_ms, &m);
}

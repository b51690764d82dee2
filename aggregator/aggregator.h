/* aggregator.h -- the counting rules (README "Exact counting rules").
 *
 * Owns: deciding, for each decoded event, whether it counts (future, late,
 * duplicate), which counter cells it changes and by how much, the dedup
 * markers it leaves, the running watermark, and when a micro-batch is
 * written: every flush is one store batch holding the combined counter
 * merges, the markers, the watermark and whatever source positions the
 * caller staged (file lines, Kafka offsets), so counts and positions
 * commit together.
 *
 * Applying a decided event's deltas to the combiner is shards.h's
 * (iqp_count_apply), on this thread or, with iqp_aggregator_set_threads, on
 * counting threads sharded by context key.
 *
 * May not touch: decoding (it receives validated, normalized events), I/O
 * other than through the store, dead letters (the caller routes events the
 * aggregator rejects as future).
 *
 * Used by backfill now, and by the stream processor and export later, so
 * every path counts the same way.
 */
#ifndef IQP_AGGREGATOR_H
#define IQP_AGGREGATOR_H

#include <stddef.h>
#include <stdint.h>
#include "aggregator/shards.h"
#include "schemas/event.h"
#include "store/store.h"

typedef enum {
    IQP_AGG_COUNTED = 0, /* changed at least one counter */
    IQP_AGG_DUPLICATE,   /* redelivered event id, or an action already counted */
    IQP_AGG_LATE,        /* older than every granularity's retention */
    IQP_AGG_FUTURE,      /* ts beyond now + max_future_skew_ms: caller dead-letters it */
    IQP_AGG_ERROR,       /* the store could not be read; err says why */
} iqp_agg_outcome;

typedef struct iqp_agg_stats {
    uint64_t counted, duplicate, late, future;
    uint64_t restored;      /* events whose markers were restored (no counts) */
    uint64_t cell_updates;  /* deltas folded into the combiner */
    uint64_t cells_written; /* merges written after folding */
    uint64_t flushes;
    uint64_t batch_bytes;   /* bytes of WriteBatch committed */
} iqp_agg_stats;

typedef struct iqp_aggregator iqp_aggregator;

/* Counts into st under st's config. */
iqp_aggregator *iqp_aggregator_new(iqp_store *st);
void iqp_aggregator_free(iqp_aggregator *a);

iqp_agg_outcome iqp_aggregator_add(iqp_aggregator *a, const iqp_event *ev, int64_t now_ms,
                                   char *err, size_t errlen);

/* Restore mode, for a Kafka partition that another instance counted up to
 * here: applies the event's dedup markers exactly as iqp_aggregator_add
 * would (event id, action and engaged keys at their earliest ts) but
 * changes no counter and leaves the watermark alone. Events counted
 * elsewhere thereby become duplicates here, so two instances' stores add
 * up to what one would have counted (README "Kafka: exactly once").
 * Returns COUNTED when markers changed (stats.restored), else as add. */
iqp_agg_outcome iqp_aggregator_restore(iqp_aggregator *a, const iqp_event *ev, int64_t now_ms,
                                       char *err, size_t errlen);

/* Stages a meta key/value to be written with the next flush (the latest
 * value per key wins). */
void iqp_aggregator_stage_meta(iqp_aggregator *a, const char *key, const void *val, size_t vlen);

/* Drops the micro-batch (counts, markers, staged meta, watermark) as if
 * its events had never been added: for a consumer that lost its partitions
 * and must leave them to their new owner. */
void iqp_aggregator_discard(iqp_aggregator *a);

/* Events added since the last flush. */
size_t iqp_aggregator_pending(const iqp_aggregator *a);

/* True when the micro-batch should be written now: flush_events events, or
 * IQP_AGG_MAX_CELLS distinct cells (huge impressions must not grow memory
 * without bound: one 10,000-item impression makes ~100,000 cells). */
#define IQP_AGG_MAX_CELLS (1u << 20)
int iqp_aggregator_should_flush(const iqp_aggregator *a);

/* Writes the micro-batch; 0, or -1 with err (nothing of it is written).
 * A flush in flight (flush_begin) is committed first; without counting
 * threads and hooks, on a bulk-loading store, this batch is drained while
 * that one commits. After a failed write the aggregator refuses further
 * work: its batch is gone, so retrying could commit positions without
 * their counts. */
int iqp_aggregator_flush(iqp_aggregator *a, char *err, size_t errlen);

/* The same, written by a writer thread while the caller goes on counting
 * into a second micro-batch (backfill: decode, count and store write then
 * run side by side). Returns 0 once the batch is handed over, after
 * collecting the previous one; a write error surfaces here or at the next
 * flush / flush_begin (-1 with err), and the aggregator then refuses work.
 * Dedup lookups see the batch in flight. With a flush hook installed this
 * is iqp_aggregator_flush (hooks run on the caller's thread) unless the
 * hook allows the writer thread (on_writer). */
int iqp_aggregator_flush_begin(iqp_aggregator *a, char *err, size_t errlen);

/* Counts on n threads (n >= 2; at most IQP_MAX_COUNT_THREADS), sharded
 * by context key (aggregator/shards.h): this thread still decides every
 * event in order (future, late, duplicate, the watermark and the dedup
 * markers, so outcomes and counts are the same for any n), and the
 * counting threads apply the cell deltas. Events passed to add must then
 * stay valid until iqp_aggregator_after_counted says so. Call before the
 * first add; n <= 1 keeps counting on the caller's thread. Not for an
 * aggregator with a flush hook or whose batch is read (pending_cell,
 * pending_buckets): backfill only. */
void iqp_aggregator_set_threads(iqp_aggregator *a, unsigned n);

/* Counts only the contexts that shard `slice` of n owns
 * (iqp_count_shard_of on the context prefix): the partition store of
 * repartition partition `slice` (consumers/repartition.h), which receives
 * every event with a context of that slice and must count those contexts
 * and no other. Everything else (dedup markers, the watermark, outcomes)
 * is decided as without a slice. n <= 1: every context (the default).
 * Call before the first add; not with set_threads. */
void iqp_aggregator_set_slice(iqp_aggregator *a, unsigned slice, unsigned n);

/* Declares that st held no dedup markers when a was made (a fresh store:
 * iqp_store_is_fresh) and that, while a lives, no one but a writes markers
 * to it (one backfill: its aggregator is the store's only writer). a then
 * remembers, in a fixed 16 MiB filter, every marker it sets, and looks up
 * in the store only markers the filter may hold: for most events of a
 * backfill the store read (RocksDB's Get path, ~4% of a backfill's CPU)
 * is skipped. Outcomes are unchanged: a filter answers "maybe" for every
 * marker it was given. Returns 1 when the filter is on, 0 when st is not
 * fresh (then nothing changes). Call before the first add. */
int iqp_aggregator_set_sole_marker_writer(iqp_aggregator *a);

/* on 0: every granularity is combined per event, none derived from the
 * finest at drain (shards.c); the store's bytes are the same either way.
 * For tests and measurements that compare the two; call before the first
 * add and before set_threads (ignored otherwise). Default: on. */
void iqp_aggregator_set_derive(iqp_aggregator *a, int on);

/* fn(ud) runs once every event added so far is counted: at once when
 * counting on the caller's thread, else on a counting thread, later. The
 * cue to free the events (a decoded batch). Every flush waits for it. */
void iqp_aggregator_after_counted(iqp_aggregator *a, void (*fn)(void *ud), void *ud);

/* For a caller that acts on each write as soon as it is done (the stream
 * publishes a batch's offsets to Kafka right after its store write):
 * in_flight is 1 while a flush_begin batch has not been collected yet;
 * written is 1 when none is in flight or its write has finished, so that
 * collect returns at once; collect waits for the batch in flight, if any,
 * and takes it back: 0, or -1 with its write error (as flush_begin). */
int iqp_aggregator_flush_in_flight(const iqp_aggregator *a);
int iqp_aggregator_flush_written(iqp_aggregator *a);
int iqp_aggregator_flush_collect(iqp_aggregator *a, char *err, size_t errlen);

/* A flush hook sees what each flush writes, and adds to its batch: the
 * publisher's queue (publisher/pending.h) records the cells that changed
 * in the same atomic write as the counts. on_cell is called for every
 * counter merge (counts, then contexts, each in key order);
 * before_commit after the last cell; after_commit with the outcome.
 * on_writer 1: the hook may run on flush_begin's writer thread (one flush
 * at a time, never two at once), so flush_begin stays asynchronous. */
typedef struct iqp_agg_flush_hook {
    void (*on_cell)(void *ud, iqp_store_batch *b, iqp_cf cf, const unsigned char *key,
                    size_t klen);
    void (*before_commit)(void *ud, iqp_store_batch *b);
    void (*after_commit)(void *ud, int ok);
    void *ud;
    int on_writer;
} iqp_agg_flush_hook;

/* Installs (or, with NULL, removes) the flush hook. */
void iqp_aggregator_set_flush_hook(iqp_aggregator *a, const iqp_agg_flush_hook *hook);

/* A delta hook sees every counter delta as the micro-batch takes it, while
 * iqp_aggregator_add runs: the cell is the context prefix (cells.h bytes)
 * of cf contexts (item NULL, counter 0) or, in cf counts, that prefix and
 * the raw item id; granularity, bucket, counter index, delta. Summed, the
 * deltas since the hook was installed are what every later flush adds to
 * the store (iqp export keeps its mirror of store + batch exact with it:
 * export/featcache.h). A hook user must not call iqp_aggregator_discard,
 * nor count on threads (iqp_aggregator_set_threads ignores n then). */
typedef iqp_count_observer iqp_agg_delta_hook; /* shards.h */

/* Installs (or, with NULL, removes) the delta hook. */
void iqp_aggregator_set_delta_hook(iqp_aggregator *a, const iqp_agg_delta_hook *hook);

const iqp_agg_stats *iqp_aggregator_stats(const iqp_aggregator *a);

/* ---- reading the micro-batch before it is written --------------------------
 * iqp export reads features after nearly every event, far more often than
 * it can afford to flush. These let features.c add the unflushed deltas to
 * what the store holds (iqp_features_read_pending), which is exactly what
 * the store will hold after the next flush (merges are sums). */

/* Adds the unflushed delta of one counts or contexts cell (cells.h key,
 * with its bucket suffix) into vec (n wide); 1 when the batch holds it. */
int iqp_aggregator_pending_cell(const iqp_aggregator *a, iqp_cf cf, const unsigned char *key,
                                size_t klen, int64_t *vec, size_t n);

/* The inclusive range of buckets of granularity gran_index that unflushed
 * deltas touch: 1 with *first, *last set, or 0 when there are none. */
int iqp_aggregator_pending_buckets(const iqp_aggregator *a, int gran_index, int64_t *first,
                                   int64_t *last);

/* 1 when ev's event_id is already counted (a copy of it now would be a
 * duplicate: rule 3, with the dedup horizon of rule 7), 0 when not, -1 on
 * a store read error. Changes nothing. */
int iqp_aggregator_event_seen(iqp_aggregator *a, const iqp_event *ev);

#endif

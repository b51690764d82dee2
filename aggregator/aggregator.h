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
 * After a failed write the aggregator refuses further work: its batch is
 * gone, so retrying could commit positions without their counts. */
int iqp_aggregator_flush(iqp_aggregator *a, char *err, size_t errlen);

const iqp_agg_stats *iqp_aggregator_stats(const iqp_aggregator *a);

#endif

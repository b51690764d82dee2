/* export.h -- `iqp export`: point-in-time training rows from event logs.
 *
 * Owns: the replay. Log files are read (consumers/logfile + decode_queue:
 * the same reader and decoder as iqp backfill) and merged by event time
 * (k-way, by each file's next event), rejected lines go to the dead-letter
 * sink, and accepted events pass through the bounded reorder buffer
 * (reorder.h) into event-time order. In that order:
 *
 *   READ  at ts - lag, for an impression with ts in [from, until): its
 *         features for every distinct item it showed are read through
 *         iqp_features_read_pending -- the store plus the aggregator's
 *         unflushed batch, i.e. exactly the events with ts < ts - lag,
 *         windows as of ts - lag; the cells come from featcache.h, a
 *         mirror of store + batch kept equal to them by the aggregator's
 *         delta hook -- and one row per item is written
 *         (rows.h), labels 0;
 *   APPLY at ts, for every event: an action sets the labels of the open
 *         rows of its (request_id, item) (rows.h), then the event is
 *         counted by the aggregator into a temporary store, exactly as
 *         iqp backfill counts it.
 *
 * So training features come from the same aggregator, store and feature
 * reader as serving (iqp stream / backfill + iqp lookup), and the
 * impression's own actions (ts >= its ts) can reach its labels but never
 * its features. README "Training data: iqp export" states the rules.
 *
 * May not touch: counting rules (aggregator/), decoding (schemas/), the
 * reading of features (features.c); the temporary store is its own and is
 * removed at the end.
 */
#ifndef IQP_EXPORT_EXPORT_H
#define IQP_EXPORT_EXPORT_H

#include <stddef.h>
#include <stdint.h>
#include "model/config.h"
#include "consumers/deadletter.h"
#include "export/rows.h"

typedef struct iqp_export_options {
    const char *const *inputs;   /* log files ("-": stdin) */
    size_t n_inputs;
    const char *out;             /* a regular file */
    iqp_rows_format format;
    int rates;                   /* also write the iqp_* rate columns */
    int64_t from_ms, until_ms;   /* rows for impressions with from <= ts < until */
    int64_t lag_ms;              /* features as of ts - lag */
    int64_t label_horizon_ms;    /* actions with ts <= action ts < ts + horizon label a row */
    int64_t max_disorder_ms;     /* the reorder buffer's span (reorder.h) */
    const char *work_dir;        /* parent of the temporary store; NULL: $TMPDIR or /tmp */
    size_t cache_bytes;          /* memory for store cells held for reads (featcache.h) */
    iqp_deadletter *dl;          /* the caller's sink */
    int progress;                /* a progress line on stderr about twice a second */
} iqp_export_options;

/* Every line read lands in exactly one of: counted_impressions,
 * counted_actions, duplicate, late, bad, skipped_after_until, unprocessed.
 * These are iqp backfill's categories (counted = impressions + actions,
 * duplicate, late, bad) plus the two only an export has, so for the same
 * file without --until and without out-of-order lines the numbers equal
 * backfill's (tests/check_export.c summary_adds_up). */
typedef struct iqp_export_stats {
    uint64_t files, lines, bytes_in;
    uint64_t bad;                /* dead-lettered, all reasons */
    uint64_t out_of_order;       /* of which: beyond the reorder buffer */
    uint64_t future;             /* of which: future_event */
    uint64_t copies;             /* of duplicate: a copy of an event id still in the buffer */
    uint64_t counted, duplicate, late; /* counted = counted_impressions + counted_actions;
                                          duplicate includes copies */
    uint64_t counted_impressions, counted_actions;
    uint64_t unprocessed;        /* read but still in the buffer when stopped by a signal */
    uint64_t impressions_read;   /* impressions that gave rows */
    uint64_t impressions_seen;   /* impressions in [from, until) skipped: already counted */
    uint64_t not_counted;        /* rows whose impression the aggregator then did not count (0) */
    uint64_t skipped_after_until;/* events not counted: no read comes after them */
    iqp_rows_stats rows;
    size_t buffer_peak;          /* most events in the reorder buffer at once */
    int stopped_early;           /* every later event was past until + horizon */
} iqp_export_stats;

/* Runs the export. 0 done; 1 stopped by iqp_stop_request (util/stop.h: the
 * rows written so far are complete, their labels may not be); -1 with
 * err on an operational failure (a file that cannot be read or written). */
int iqp_export_run(const iqp_config *cfg, const iqp_export_options *o, iqp_export_stats *stats,
                   char *err, size_t errlen);

#endif

/* stream.h -- the Kafka stream processor behind `iqp stream`.
 *
 * Owns: one librdkafka consumer-group member reading the impressions and
 * actions topics; per-partition positions and where each partition starts
 * when it is assigned; the micro-batch loop poll -> decode -> aggregate ->
 * flush every flush_ms or flush_events (each batch written on the
 * aggregator's writer thread while the next is counted, stream.c
 * "Pipeline"; a batch grows while the previous write is in flight,
 * "Cut rule"); committing consumed offsets in the
 * same store WriteBatch as the counts they produced, then to Kafka; the
 * rebalance protocol (flush before a partition is released, restore dedup
 * markers before counting a partition another instance counted); with a
 * state dir, the per-partition stores (opened on assignment, waiting for
 * the previous owner's lock, closed on revoke: stream.c "Partition-owned
 * state"), checkpointed to and restored from a shared checkpoint dir
 * (partition_checkpoint.h, stream.c "Empty-disk takeover"); routing
 * rejected events to the dead-letter sink; the stream's metrics.
 *
 * May not touch: counting rules (aggregator/), decoding rules (schemas/),
 * the dead-letter record format (deadletter.h), how metrics are served
 * (metrics.h), command-line parsing (cli/stream.c).
 *
 * Exactly once, per store (README "Kafka: exactly once"):
 *   - a flush writes counts, dedup markers and the next offset of every
 *     partition it consumed from in one RocksDB WriteBatch; the offsets are
 *     committed to Kafka only after that write succeeds, so lag tools work;
 *   - on assignment a partition starts at the offset in the store; when
 *     the newer of the group's committed offset and the partition's
 *     checkpoint is further (another instance counted
 *     the span in between), the span is read again in restore mode:
 *     markers only, no counts, so repeats of events counted elsewhere stay
 *     duplicates; with neither, auto.offset.reset decides (earliest,
 *     latest or error; librdkafka's own reset is always "error");
 *   - a stored offset the broker no longer keeps stops the stream (or,
 *     with skip_lost_offsets, skips to the earliest kept offset), always
 *     counted in iqp_kafka_offset_resets_total and logged with the range;
 *   - dead letters are made durable (iqp_deadletter_flush) before the
 *     offsets that produced them are written;
 *   - with a state dir, partition p's counts and offsets live in one store
 *     that moves with p, so no batch is counted by two owners; with a
 *     checkpoint dir too, p's next owner starts from p's best checkpoint
 *     (or its own store when that has more progress), never from the
 *     group's committed offset;
 *   - a batch is written only after the group coordinator confirmed that
 *     this member still holds its generation (an ownership probe, see
 *     stream.c "Zombie writes"); otherwise it is dropped unwritten, never
 *     counted in a store whose partitions another member has taken.
 */
#ifndef IQP_STREAM_H
#define IQP_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "consumers/checkpoint.h"
#include "consumers/deadletter.h"
#include "consumers/metrics.h"
#include "store/store.h"

struct iqp_aggregator; /* aggregator/aggregator.h */

typedef struct iqp_stream_options {
    const char *impressions_topic; /* default "impressions" */
    const char *actions_topic;     /* default "actions" */
    int64_t flush_ms;              /* cut a batch this often (default 500), or when the write
                                      before it ends if that takes longer */
    /* librdkafka properties, name/value pairs, NULL-terminated; applied over
     * the stream's defaults (group.id iqp-stream, auto.offset.reset
     * earliest). enable.auto.commit / enable.auto.offset.store must not be
     * turned on: offsets are committed by the stream after each flush. */
    const char *const *kafka_props;
    iqp_deadletter *dl;            /* rejected events; owned by the caller */
    iqp_metrics *metrics;          /* may be NULL; owned by the caller */
    iqp_checkpoints *checkpoints;  /* may be NULL (group offsets only); owned by the caller */
    int progress;                  /* a progress line on stderr every ~2 s */
    /* A supervisor's heartbeat (systemd's watchdog): called on every turn
     * of the main loop, at least every 100 ms, with stopping 0, and once
     * with stopping 1 when the loop ends (a stop request or a fatal
     * error), before the last flush.
     * May be NULL. */
    void (*on_tick)(void *arg, int stopping);
    void *tick_arg;
    int watch_redis;               /* /healthz follows the publisher's iqp_redis_connected */
    /* A stored offset the broker no longer has (out of range): counted in
     * iqp_kafka_offset_resets_total and logged with the lost range, then
     * 0: stop (iqp_stream_run fails, nothing skipped), 1: go on from the
     * earliest offset the broker keeps. */
    int skip_lost_offsets;
    /* Partition-owned state (README "Running more than one instance"):
     * NULL counts every partition into the store given to iqp_stream_new;
     * a directory keeps one store per input partition number p at
     * state_dir/partition-<p>, holding exactly the counts and offsets of
     * partition p of both topics (co-partitioned: same partition count,
     * assignor "range"), opened on assignment and closed on revoke; its
     * stored offsets decide where p resumes. cfg: the config those stores
     * are opened with (required then; iqp_stream_new's st is NULL). */
    const char *state_dir;
    const iqp_config *cfg;
    /* With state_dir: a directory the group's instances share
     * (partition_checkpoint.h), so that state_dir can be local to each.
     * Every checkpoint_interval_ms (0: IQP_STREAM_DEFAULT_CHECKPOINT_MS),
     * and when a partition is released, its store is checkpointed there;
     * an instance that gains a partition whose local store is missing or
     * has less progress restores the best checkpoint first. The group's
     * committed offsets then never decide a start (stream.c "Empty-disk
     * takeover"). NULL: none. */
    const char *checkpoint_dir;
    int64_t checkpoint_interval_ms;
    /* Repartitioned input (stream.c "Repartitioned input"; the stage that
     * feeds it is consumers/repartition.h): the topics above are then the
     * repartition topics, whose records forward input messages with the
     * header IQP_REPARTITION_ORIGIN_HEADER ("<partition>/<offset>" of the input
     * message), and origin_topics name the input topics they come from
     * (impressions, actions). Needs state_dir: partition store r counts
     * only the contexts of slice r of R (R: the repartition topics'
     * partition count) and drops a record whose origin offset is not above
     * the highest it counted from that input partition. {NULL}: plain input. */
    const char *origin_topics[2];
    /* With state_dir: the caller's own work on each owned partition store
     * (cli/stream.c publishes it to Redis: publisher/publisher.h's slice
     * mode). on_partition_open runs on the consuming thread once
     * partition p's store is open (restored) and its aggregator made,
     * before anything is counted into it; it returns 0 and its handle, or
     * -1 with err, which stops the stream (fatal). on_partition_close
     * runs when p is released (revoke, shutdown, a failure), after p's
     * last batch is written and before its store is checkpointed and
     * closed. NULL: none. */
    int (*on_partition_open)(void *ud, int32_t partition, iqp_store *st, struct iqp_aggregator *agg,
                             void **handle, char *err, size_t errlen);
    void (*on_partition_close)(void *ud, int32_t partition, void *handle);
    void *partition_ud;
} iqp_stream_options;

typedef struct iqp_stream_stats {
    uint64_t messages;             /* messages consumed */
    uint64_t counted, duplicate, late, dead_lettered, restored;
    uint64_t resent;               /* repartitioned records dropped: their origin was counted already */
    uint64_t flushes, commit_failures, rebalances;
    uint64_t latency_n;            /* events whose produce->store latency was measured */
    double latency_p50_ms, latency_p99_ms;
} iqp_stream_stats;

typedef struct iqp_stream iqp_stream;

/* Creates the consumer and subscribes; NULL with err on a bad property or
 * a client that cannot be created, or, with state_dir, on topics whose
 * partition counts cannot be read or differ. st: the single store (NULL
 * with state_dir). */
iqp_stream *iqp_stream_new(iqp_store *st, const iqp_stream_options *o, char *err, size_t errlen);

/* Runs until iqp_stop_request (util/stop.h): then flushes, commits, leaves the
 * group and returns 0. Returns -1 with err on an operational failure (a
 * store or dead-letter write failed: nothing more is committed). */
int iqp_stream_run(iqp_stream *s, char *err, size_t errlen);

/* Counters so far; latency percentiles are computed on each call. */
iqp_stream_stats iqp_stream_get_stats(iqp_stream *s);

/* The aggregator the stream counts with (to attach a flush hook, such as
 * the publish queue, before iqp_stream_run); NULL with state_dir (one
 * aggregator per owned partition, made on assignment). */
struct iqp_aggregator *iqp_stream_aggregator(iqp_stream *s);

/* Closes the consumer (if run did not) and frees s. */
void iqp_stream_free(iqp_stream *s);

/* The librdkafka properties the stream sets under the caller's (defaults)
 * and the ones the caller may not change (forced), as NULL-terminated
 * name/value pairs: for `iqp config show`, and the consumer of
 * `--repartition`'s forwarding stage (consumers/repartition.h). */
const char *const *iqp_stream_kafka_defaults(void);
const char *const *iqp_stream_kafka_forced(void);

/* True for a librdkafka property only a consumer takes (group.*,
 * fetch.*, ...): the producers beside the consumer (dead letters, the
 * forwarding stage) get every other one without a warning per property. */
int iqp_stream_kafka_consumer_only(const char *name);

/* Flush interval when the options give none. */
#define IQP_STREAM_DEFAULT_FLUSH_MS 500
#define IQP_STREAM_DEFAULT_CHECKPOINT_MS 60000

#endif

/* publisher.h -- keeps Redis equal to the store: the features the stream
 * changed, written in the Redis layout (schemas/redis_value.h).
 *
 * Owns: the Redis side of serving on the writer's side: the publisher
 * thread, its connection (a publisher/redis_pipe.h pipe, which also holds
 * the lease), the generation pointer and meta key it creates
 * when Redis has none, the layout check against what Redis holds,
 * draining the publish queue (pending.h) and the full resync.
 *
 * Design:
 *   - Counting never waits for Redis. The stream's flushes append dirty
 *     keys to the queue in the store (same WriteBatch as the counts); this
 *     thread drains it: read up to batch_keys records, take a store
 *     snapshot, recompute every window of every dirty (feature, context,
 *     item) and its context as of the store's watermark, write them with
 *     HSET + PEXPIRE through a pipeline, and only when Redis acknowledged
 *     everything delete the records. A crash anywhere re-publishes, never
 *     skips.
 *   - One HSET per (feature, context) chunk carries the context field and
 *     the item fields together, so a ranker's HMGET never pairs a new count
 *     with an old context_count of the same flush.
 *   - Redis lost data (restarted, flushed, failed over) when its run_id is
 *     not the one recorded in the store after the last full publish, or
 *     when the generation pointer is gone: the publisher then republishes
 *     every key of a store snapshot (resync) and drops the queue records
 *     that snapshot covers.
 *   - Errors: reconnect with exponential backoff (100 ms to 5 s). A Redis
 *     holding another layout (fingerprint) is refused, never overwritten.
 *   - One writer per prefix: the thread holds the lease <prefix>:lease
 *     (renewed every 5 s, lives 30 s); while another process holds it
 *     (an `iqp refresh --redis`), changes stay queued.
 *   - Windows slide: when the watermark enters a new bucket of the finest
 *     granularity, the thread itself refreshes: a snapshot recomputed by
 *     refresher/ and published as a new generation, then the pointer flip
 *     (publisher/generation.h). The queue is not drained meanwhile, so
 *     every change after the snapshot is published into the new
 *     generation after the flip; records before it are dropped.
 *   - Slice mode (slice >= 0: `iqp stream --state-dir --repartition
 *     --redis`, one publisher per owned partition store, whose contexts
 *     are slice r's and no other store's): the thread holds slice r's
 *     lease (publisher/redis_pipe.h) instead of <prefix>:lease, so R
 *     writers share a prefix, one per slice, and none while a
 *     whole-prefix writer (`iqp refresh --redis`) holds it. It publishes
 *     into the generation served and never flips the pointer (it creates
 *     one only when Redis has none, as any writer does). Its full
 *     publishes replace each hash whole (written under a temporary name,
 *     then RENAME), and that is how its windows slide: when the
 *     watermark enters a new finest bucket, every hash of the slice is
 *     replaced in place, so a reader sees each hash either before or
 *     after the slide. A store whose last full publish went into another
 *     generation than the one served publishes everything again. Its
 *     metrics carry partition="<r>".
 *
 * May not touch: counting, the Kafka consumer, the store beyond reading
 * snapshots, deleting queue records and its "publish/..." meta keys.
 */
#ifndef IQP_PUBLISHER_H
#define IQP_PUBLISHER_H

#include <stddef.h>
#include <stdint.h>
#include "consumers/metrics.h"
#include "model/status.h"
#include "publisher/pending.h"
#include "store/store.h"

typedef struct iqp_publisher_config {
    const char *url;          /* redis://... or unix://... */
    const char *prefix;       /* key prefix, default "iqp" */
    int connect_timeout_ms;   /* default 1000 */
    int command_timeout_ms;   /* default 2000 */
    int64_t ttl_ms;           /* every written key's TTL, default 8 days */
    size_t batch_keys;        /* queue records per round, default 20000 */
    int pipeline_depth;       /* commands in flight, default 256 (>= 64) */
    /* iqp stream only: when the store's watermark enters a new bucket of
     * the finest granularity (windows slid), recompute everything from a
     * snapshot and publish it as a new generation (refresher/,
     * publisher/generation.h), at most once per refresh_min_interval_ms. */
    int refresh_on_slide;              /* default 1 */
    int refresh_threads;               /* default 1: counting keeps the other cores */
    int64_t refresh_min_interval_ms;   /* default 10000 */
    int64_t refresh_grace_ms;          /* old generation's keys live this long, default 60000 */
    int slice;                         /* >= 0: slice mode for this partition (above); default -1 */
} iqp_publisher_config;

void iqp_publisher_config_defaults(iqp_publisher_config *pc);

/* values = item_fields + context_fields: the (hash, field) pairs written,
 * each counted once per round or full publish (a context split over
 * several HSETs counts its context field once), so after a full publish
 * into an empty Redis, values is the sum of HLEN over the value hashes
 * and context_fields the number of those hashes. A key rewritten by a
 * later round counts again. */
typedef struct iqp_publisher_stats {
    uint64_t rounds, values, errors, resyncs, refreshes;
    uint64_t item_fields, context_fields;
    int connected;
} iqp_publisher_stats;

typedef struct iqp_publisher iqp_publisher;

/* Declares the publisher's metrics in m (m may be NULL). */
void iqp_publisher_declare_metrics(iqp_metrics *m);

/* Starts the publisher thread. It first tries Redis once, in the caller's
 * thread: a Redis that holds another layout is an error (NULL, err); one
 * that cannot be reached is reported on stderr and retried. */
iqp_publisher *iqp_publisher_start(iqp_store *st, iqp_pending *q, const iqp_publisher_config *pc,
                                   iqp_metrics *m, char *err, size_t errlen);

/* Wakes the thread: the queue grew (the pending.h notify callback). */
void iqp_publisher_notify(void *publisher);

/* Stops the thread after draining the queue for at most drain_ms (while
 * Redis answers); what is left stays queued in the store. */
void iqp_publisher_stop(iqp_publisher *p, int drain_ms, iqp_publisher_stats *stats);

/* One-shot, in the caller's thread (iqp publish): drains the queue, and
 * with full != 0 republishes every key first. IQP_RC_OK, or
 * IQP_RC_FAILED with err. */
iqp_rc iqp_publisher_run_once(iqp_store *st, iqp_pending *q, const iqp_publisher_config *pc, int full,
                           iqp_publisher_stats *stats, char *err, size_t errlen);

#endif

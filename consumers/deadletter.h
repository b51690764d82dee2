/* deadletter.h -- where rejected events go, with their reason.
 *
 * Owns: the dead-letter sinks and their record formats. There are three:
 *
 *   file (iqp_deadletter_open_file): JSON lines, one record per line:
 *     {"reason": "<code>: <field>: <detail>", "code": "<code>",
 *      "source": "<file or topic>", ["partition": N,] "position": <line or offset>,
 *      "raw": "<the original bytes>"}
 *   "partition" is present only for a Kafka origin (partition >= 0).
 *   When the original bytes are not valid UTF-8, "raw_base64" replaces "raw".
 *   Oversized events keep only their first 4 KiB under "raw" / "raw_base64"
 *   and say so with "truncated": true and "size": <full length>.
 *
 *   count-only (iqp_deadletter_open_file(NULL, ...)): keeps nothing, counts.
 *
 *   Kafka topic (iqp_deadletter_open_kafka): one message per record, produced
 *   by an idempotent producer (acks=all) that this sink owns. Value = the
 *   original bytes as the caller passed them, complete (never truncated here);
 *   key = NULL; headers:
 *     iqp.reason     the full reason text
 *     iqp.code       the stable code name
 *     iqp.source     the source topic or file
 *     iqp.partition  decimal, only when the origin has a partition (>= 0)
 *     iqp.position   decimal offset (Kafka) or 1-based line (file)
 *     iqp.size       decimal full length, only when the value is not the whole
 *                    event: the caller passed fewer bytes (full_len > rawlen),
 *                    or the event is longer than the producer's
 *                    message.max.bytes less 64 KiB and was cut to that
 *
 * Durability: records are buffered (stdio buffer / producer queue). Only
 * iqp_deadletter_flush() (or close) says they are durable; a consumer must
 * flush before it commits the source offsets of the events it rejected.
 * A failure to write or deliver a record is sticky: every later write,
 * flush and close of that sink reports it.
 *
 * Threads: a sink belongs to one thread at a time. The Kafka sink serves
 * its delivery reports only inside write/flush/close, on the caller's thread.
 *
 * May not touch: counting and metrics (the caller's), the caller's Kafka
 * consumer and its offsets (the sink has its own producer and never commits
 * anything); it never fails the caller's run for a bad event, only for a sink
 * that cannot be written or delivered to (an operational failure).
 */
#ifndef IQP_DEADLETTER_H
#define IQP_DEADLETTER_H

#include <stddef.h>
#include <stdint.h>

typedef struct iqp_deadletter iqp_deadletter;

/* Where a rejected event came from. Files: source = path, partition = -1,
 * position = 1-based line. Kafka: source = topic, partition >= 0,
 * position = offset. */
typedef struct iqp_dl_origin {
    const char *source;
    int32_t partition;
    uint64_t position;
} iqp_dl_origin;

/* Opens (appends to) path. NULL path = a sink that only counts. */
iqp_deadletter *iqp_deadletter_open_file(const char *path, char *err, size_t errlen);

/* Opens a Kafka sink producing to topic. props is a NULL-terminated list of
 * librdkafka property name/value pairs (name, value, name, value, ..., NULL),
 * e.g. {"bootstrap.servers", "127.0.0.1:9092", NULL}; may be NULL. Any
 * property librdkafka rejects fails the open with its message. The producer
 * is idempotent: enable.idempotence=true and acks=all are always set (after
 * props, so props cannot turn them off). Returns NULL with err on failure. */
iqp_deadletter *iqp_deadletter_open_kafka(const char *const *props, const char *topic, char *err,
                                          size_t errlen);

/* Writes one record. code is the stable code name, reason the full text.
 * full_len is the event's real size (>= rawlen when truncated).
 * Returns 0, or -1 with a message in err on a write failure. Same as
 * iqp_deadletter_write_from with origin {source, -1, position}. */
int iqp_deadletter_write(iqp_deadletter *dl, const char *code, const char *reason,
                         const char *source, uint64_t position, const char *raw,
                         size_t rawlen, uint64_t full_len, char *err, size_t errlen);

/* Like iqp_deadletter_write, with a partition-aware origin. The file sink adds
 * "partition": N to the record when partition >= 0.
 * The Kafka sink enqueues the record and returns; when the producer's local
 * queue is full it polls and retries for up to ~10 s, then fails. It also
 * fails once the sink is sticky-failed (see iqp_deadletter_flush). */
int iqp_deadletter_write_from(iqp_deadletter *dl, const char *code, const char *reason,
                              const iqp_dl_origin *origin, const char *raw, size_t rawlen,
                              uint64_t full_len, char *err, size_t errlen);

/* Makes every record written so far durable: the file sink fflush()es (and
 * reports a failed write), the Kafka sink waits up to timeout_ms (< 0: no
 * limit) for every delivery report. Returns 0, or -1 with err when a record
 * could not be delivered or written (a sticky failure: the caller must not
 * commit the source offsets of those records), or when timeout_ms passed
 * with records still undelivered (not sticky: a later flush may succeed;
 * meanwhile the caller must not commit either). The count-only sink
 * always returns 0. */
int iqp_deadletter_flush(iqp_deadletter *dl, int timeout_ms, char *err, size_t errlen);

/* Records accepted by write (for Kafka: enqueued, not necessarily delivered). */
uint64_t iqp_deadletter_count(const iqp_deadletter *dl);

/* Flushes and closes; returns -1 with err if the final flush failed. The
 * Kafka sink waits up to 10 s for outstanding deliveries, then drops what is
 * left, destroys the producer and reports the undelivered records. */
int iqp_deadletter_close(iqp_deadletter *dl, char *err, size_t errlen);

#endif

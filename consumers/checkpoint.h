/* checkpoint.h -- where each store stopped, published for the next owner
 * of a partition.
 *
 * Owns: the checkpoint topic (default "iqp-checkpoints"; in production a
 * compacted topic): one message per (group, topic, partition) and flush,
 * key "<group>/<topic>/<partition>", value the decimal next offset that the
 * writing instance's store holds; a producer that publishes them after the
 * store write, and a reader that finds the newest offset per partition.
 *
 * Why not only the consumer group's committed offset: a commit made while
 * the group is rebalancing can be refused (the librdkafka mock refuses every
 * commit in its JOINING state, which is exactly when a member revokes), and
 * then the next owner would start behind what this store counted. A
 * message on a topic does not depend on the group's state. Readers take
 * the largest offset seen per key, so a late checkpoint from a stale
 * member cannot move a partition back.
 *
 * May not touch: the store, counting, the consumer group.
 */
#ifndef IQP_CHECKPOINT_H
#define IQP_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

typedef struct iqp_checkpoints iqp_checkpoints;

/* props: librdkafka properties (name, value, ..., NULL) for the producer
 * and the reader (bootstrap.servers, security). NULL with err on a bad
 * property. */
iqp_checkpoints *iqp_checkpoints_new(const char *const *props, const char *topic,
                                     const char *group, char *err, size_t errlen);
void iqp_checkpoints_free(iqp_checkpoints *c);

/* Queues one checkpoint (asynchronous); 0, or -1 with err. */
int iqp_checkpoints_put(iqp_checkpoints *c, const char *topic, int32_t partition,
                        int64_t next_offset, char *err, size_t errlen);

/* Waits up to timeout_ms until every queued checkpoint is acknowledged;
 * 0, or -1 with err (some were not delivered). */
int iqp_checkpoints_sync(iqp_checkpoints *c, int timeout_ms, char *err, size_t errlen);

/* Reads the checkpoint topic up to its end as of this call (at most
 * timeout_ms): every checkpoint acknowledged before the call is then known.
 * 0, or -1 with err when the topic could not be read. */
int iqp_checkpoints_refresh(iqp_checkpoints *c, int timeout_ms, char *err, size_t errlen);

/* The largest offset read so far for (topic, partition) of this group, or
 * -1 when there is none. */
int64_t iqp_checkpoints_get(iqp_checkpoints *c, const char *topic, int32_t partition);

#endif

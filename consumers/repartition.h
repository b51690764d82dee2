/* repartition.h -- stage 1 of `iqp stream --repartition`: route every
 * input event to the partitions of the repartition topics whose slices own
 * its feature contexts.
 *
 * Owns: a consumer (in the consumer group, subscribed to the impressions
 * and actions topics), a producer (idempotent, gapless) and the thread that
 * moves messages between them. Each input message is decoded only to learn
 * its contexts' slices (iqp_count_slices_of with R = the repartition
 * topics' partition count) and is produced, bytes unchanged and without a
 * key, to each of those partitions of the repartition topic of its kind
 * (impressions -> out_topics[0], actions -> out_topics[1]) with the header
 * IQP_REPARTITION_ORIGIN_HEADER = "<input partition>/<input offset>"
 * (decimal ASCII). A message that does not decode goes once to partition
 * (input partition % R) of the same-kind topic, where stage 2 dead-letters
 * it. The group's committed offsets of the input topics: an offset is
 * committed only after every record of the messages before it was
 * acknowledged by the broker (repartition.c explains why stage 2's
 * "count iff origin offset > max applied" is then exact).
 *
 * May not touch: counting, stores, dead letters (stage 2's, in
 * consumers/stream.c), the topics' creation (the repartition topics must
 * exist, with one partition count).
 */
#ifndef IQP_REPARTITION_H
#define IQP_REPARTITION_H

#include <stddef.h>
#include <stdint.h>

#include "consumers/metrics.h"
#include "model/config.h"

/* The record header naming a repartitioned record's origin. */
#define IQP_REPARTITION_ORIGIN_HEADER "iqp.origin"

typedef struct iqp_repartition_options {
    const char *in_topics[2];        /* impressions, actions */
    const char *out_topics[2];       /* repartition topics: must exist with the same
                                        partition count R (checked at start) */
    const char *const *kafka_props;  /* name/value pairs, NULL-terminated: bootstrap.servers,
                                        group.id, ...; applied to the consumer and the
                                        producer (consumer-only ones to the consumer only) */
    const iqp_config *cfg;           /* decides each event's contexts; must outlive the
                                        repartitioner */
    int64_t commit_ms;               /* 0: IQP_REPARTITION_COMMIT_MS */
    iqp_metrics *metrics;            /* may be NULL: iqp_repartition_records_total{topic}
                                        (records acknowledged, by out topic),
                                        iqp_repartition_commits_total */
} iqp_repartition_options;

#define IQP_REPARTITION_COMMIT_MS 200

typedef struct iqp_repartitioner iqp_repartitioner;

/* Creates the consumer and producer, checks the repartition topics
 * (metadata), subscribes and starts the thread. NULL with a message in
 * err, naming the topic, when one does not exist or their partition counts
 * differ, or when a property is refused. */
iqp_repartitioner *iqp_repartition_start(const iqp_repartition_options *o, char *err, size_t errlen);

/* R: the partition count of the repartition topics. */
int32_t iqp_repartition_partitions(const iqp_repartitioner *r);

/* 1 with the reason in err once the thread stopped on an error (a
 * delivery failure, a fatal Kafka error: nothing consumed after the last
 * commit is committed); 0 while it runs. */
int iqp_repartition_failed(iqp_repartitioner *r, char *err, size_t errlen);

/* Stops the thread: delivers everything consumed, commits it, closes the
 * consumer (leaves the group) and joins. 0, or -1 with err when it had
 * failed or the last delivery did not succeed. A refused last commit
 * (say, a rebalance in progress as this member leaves) after everything
 * was acknowledged is said on stderr and is not a failure: nothing is
 * lost, the next owner sends those messages again and the counting stage
 * drops the repeats. Call once. */
int iqp_repartition_stop(iqp_repartitioner *r, char *err, size_t errlen);

/* Frees r (stopping it first when iqp_repartition_stop was not called). */
void iqp_repartition_free(iqp_repartitioner *r);

#endif

/* kafka_assign.h -- what the Kafka bench baselines share: setting client
 * properties and reading whole topics from the beginning without a group.
 *
 * Owns: nothing beyond these two helpers. May not touch: what the
 * baselines measure. */
#ifndef IQP_BENCH_KAFKA_ASSIGN_H
#define IQP_BENCH_KAFKA_ASSIGN_H

#include <librdkafka/rdkafka.h>

/* A group-less consumer of brokers that reads every partition of the
 * topics from the beginning (auto.offset.reset=error: an evicted offset
 * fails loudly); NULL after printing why. */
rd_kafka_t *bench_consumer_new(const char *prog, const char *brokers, char **topics, int n_topics);

/* The same for one share of the partitions: those whose number p has
 * p % of == share (share 0 of 1 is every partition), as `of` consumers of
 * a group would split them, without the group. */
rd_kafka_t *bench_consumer_new_share(const char *prog, const char *brokers, char **topics, int n_topics,
                                     int share, int of);

/* The consumer alone, nothing assigned yet; NULL after printing why. */
rd_kafka_t *bench_consumer_connect(const char *prog, const char *brokers);

/* Messages in the partitions assigned to rk now (end minus start offset,
 * summed); -1 after printing why. For reading a log produced beforehand. */
long long bench_assigned_messages(const char *prog, rd_kafka_t *rk);

/* Sets one property; -1 after printing "<prog>: name=value: why". */
int bench_conf_set(const char *prog, rd_kafka_conf_t *conf, const char *name, const char *value);

/* Assigns every partition of every topic at the beginning; -1 after
 * printing why. */
int bench_assign_all(const char *prog, rd_kafka_t *rk, char **topics, int n_topics);
int bench_assign_share(const char *prog, rd_kafka_t *rk, char **topics, int n_topics, int share, int of);

/* Wall-clock and monotonic time in seconds. */
double bench_wall_seconds(void);
double bench_mono_seconds(void);

#endif

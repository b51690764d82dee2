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

/* Sets one property; -1 after printing "<prog>: name=value: why". */
int bench_conf_set(const char *prog, rd_kafka_conf_t *conf, const char *name, const char *value);

/* Assigns every partition of every topic at the beginning; -1 after
 * printing why. */
int bench_assign_all(const char *prog, rd_kafka_t *rk, char **topics, int n_topics);

/* Wall-clock and monotonic time in seconds. */
double bench_wall_seconds(void);
double bench_mono_seconds(void);

#endif

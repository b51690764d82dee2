/* kafka_assign.c -- see kafka_assign.h. */
#include "bench/kafka_assign.h"

#include <stdio.h>
#include <time.h>

int bench_conf_set(const char *prog, rd_kafka_conf_t *conf, const char *name, const char *value) {
    char err[256];
    if (rd_kafka_conf_set(conf, name, value, err, sizeof err) == RD_KAFKA_CONF_OK) return 0;
    fprintf(stderr, "%s: %s=%s: %s\n", prog, name, value, err);
    return -1;
}

/* Partitions of topic, from the cluster's metadata; -1 on failure. */
static int partition_count(rd_kafka_t *rk, const char *topic) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    int n = -1;
    if (rkt && rd_kafka_metadata(rk, 0, rkt, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (md->topic_cnt == 1 && !md->topics[0].err) n = md->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(md);
    }
    if (rkt) rd_kafka_topic_destroy(rkt);
    return n;
}

int bench_assign_all(const char *prog, rd_kafka_t *rk, char **topics, int n_topics) {
    return bench_assign_share(prog, rk, topics, n_topics, 0, 1);
}

int bench_assign_share(const char *prog, rd_kafka_t *rk, char **topics, int n_topics, int share, int of) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(64);
    for (int t = 0; t < n_topics; t++) {
        int n = partition_count(rk, topics[t]);
        if (n <= 0) {
            fprintf(stderr, "%s: no metadata for topic %s\n", prog, topics[t]);
            rd_kafka_topic_partition_list_destroy(l);
            return -1;
        }
        for (int p = 0; p < n; p++)
            if (p % of == share)
                rd_kafka_topic_partition_list_add(l, topics[t], p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    }
    rd_kafka_resp_err_t err = rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err) fprintf(stderr, "%s: assign: %s\n", prog, rd_kafka_err2str(err));
    return err ? -1 : 0;
}

rd_kafka_t *bench_consumer_new(const char *prog, const char *brokers, char **topics, int n_topics) {
    return bench_consumer_new_share(prog, brokers, topics, n_topics, 0, 1);
}

long long bench_assigned_messages(const char *prog, rd_kafka_t *rk) {
    rd_kafka_topic_partition_list_t *l = NULL;
    long long n = 0;
    if (rd_kafka_assignment(rk, &l)) return fprintf(stderr, "%s: no assignment\n", prog), -1;
    for (int i = 0; i < l->cnt && n >= 0; i++) {
        int64_t lo, hi;
        rd_kafka_resp_err_t e =
            rd_kafka_query_watermark_offsets(rk, l->elems[i].topic, l->elems[i].partition, &lo, &hi, 10000);
        if (e) {
            fprintf(stderr, "%s: %s/%d: %s\n", prog, l->elems[i].topic, (int)l->elems[i].partition,
                    rd_kafka_err2str(e));
            n = -1;
        } else {
            n += hi - lo;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    return n;
}

rd_kafka_t *bench_consumer_new_share(const char *prog, const char *brokers, char **topics, int n_topics,
                                     int share, int of) {
    rd_kafka_t *rk = bench_consumer_connect(prog, brokers);
    if (rk && bench_assign_share(prog, rk, topics, n_topics, share, of) < 0) {
        rd_kafka_destroy(rk);
        return NULL;
    }
    return rk;
}

rd_kafka_t *bench_consumer_connect(const char *prog, const char *brokers) {
    const char *props[] = {"bootstrap.servers", brokers, "enable.partition.eof", "false",
                           "enable.auto.commit", "false", "log_level", "3",
                           "auto.offset.reset", "error",
                           "group.id", prog, /* assign needs one; never joined */
                           NULL};
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (const char **kv = props; *kv; kv += 2)
        if (bench_conf_set(prog, conf, kv[0], kv[1]) < 0) {
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "%s: %s\n", prog, err);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

double bench_wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

double bench_mono_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

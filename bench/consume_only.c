/* consume_only.c -- the ceiling for bench/stream: librdkafka consume plus a
 * jansson decode (json_loadb + json_decref) of every message, nothing else
 * (no validation, no normalization, no counting, no store).
 *
 *   consume_only --brokers LIST --topics T1,T2 --expect N [--timeout S]
 *
 * Assigns every partition of the topics from the beginning (no group join,
 * so no join delay), prints "ready" on stdout once assigned, then consumes
 * until it has seen N messages or S seconds (default 600) have passed, and
 * prints one line:
 *   consume_only: <n> messages, <bad> unparsable, first <t> done <t> (wall clock s),
 *   <rate> messages/s from the first message
 * auto.offset.reset=error: when the devbroker has evicted messages before
 * they were read (it keeps ~5 MiB per partition), it stops at once with an
 * error instead of waiting for messages that are gone.
 * Exit 0 when N messages were seen, 1 otherwise, 2 on bad usage.
 */
#include <getopt.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_TOPICS 8

static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double mono_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int usage(void) {
    fprintf(stderr, "usage: consume_only --brokers LIST --topics T1,T2 --expect N [--timeout S]\n");
    return 2;
}

static int set(rd_kafka_conf_t *conf, const char *name, const char *value) {
    char err[256];
    if (rd_kafka_conf_set(conf, name, value, err, sizeof err) == RD_KAFKA_CONF_OK) return 0;
    fprintf(stderr, "consume_only: %s=%s: %s\n", name, value, err);
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

/* Assigns every partition of every topic at the beginning. */
static int assign_all(rd_kafka_t *rk, char **topics, int n_topics) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(64);
    for (int t = 0; t < n_topics; t++) {
        int n = partition_count(rk, topics[t]);
        if (n <= 0) {
            fprintf(stderr, "consume_only: no metadata for topic %s\n", topics[t]);
            rd_kafka_topic_partition_list_destroy(l);
            return -1;
        }
        for (int p = 0; p < n; p++)
            rd_kafka_topic_partition_list_add(l, topics[t], p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    }
    rd_kafka_resp_err_t err = rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err) fprintf(stderr, "consume_only: assign: %s\n", rd_kafka_err2str(err));
    return err ? -1 : 0;
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {{"brokers", required_argument, 0, 'b'},
                                              {"topics", required_argument, 0, 't'},
                                              {"expect", required_argument, 0, 'n'},
                                              {"timeout", required_argument, 0, 'T'},
                                              {0, 0, 0, 0}};
    const char *brokers = NULL;
    char *topics_arg = NULL, *topics[MAX_TOPICS];
    int n_topics = 0, c;
    long long expect = -1;
    double timeout = 600;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'b': brokers = optarg; break;
        case 't': topics_arg = optarg; break;
        case 'n': expect = atoll(optarg); break;
        case 'T': timeout = atof(optarg); break;
        default: return usage();
        }
    }
    if (!brokers || !topics_arg || expect < 1 || timeout <= 0 || optind != argc) return usage();
    for (char *t = strtok(topics_arg, ","); t && n_topics < MAX_TOPICS; t = strtok(NULL, ","))
        topics[n_topics++] = t;

    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (set(conf, "bootstrap.servers", brokers) || set(conf, "enable.partition.eof", "false") ||
        set(conf, "enable.auto.commit", "false") || set(conf, "log_level", "3") ||
        set(conf, "auto.offset.reset", "error") ||
        set(conf, "group.id", "consume-only") /* assign needs one; never joined */) {
        rd_kafka_conf_destroy(conf);
        return 2;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "consume_only: %s\n", err);
        return 1;
    }
    rd_kafka_poll_set_consumer(rk);
    if (assign_all(rk, topics, n_topics) < 0) {
        rd_kafka_destroy(rk);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);

    long long seen = 0, bad = 0;
    int lost = 0;
    double first = 0, done = 0, deadline = mono_seconds() + timeout;
    while (seen < expect && !lost && mono_seconds() < deadline) {
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 100);
        if (!msg) continue;
        if (msg->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET) {
            fprintf(stderr, "consume_only: messages were evicted before they were read: %s\n",
                    rd_kafka_message_errstr(msg));
            lost = 1;
        } else if (msg->err) {
            if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "consume_only: %s\n", rd_kafka_message_errstr(msg));
        } else {
            json_t *root = json_loadb(msg->payload ? msg->payload : "", msg->len, JSON_DECODE_ANY, NULL);
            if (!root) bad++;
            json_decref(root);
            if (seen++ == 0) first = wall_seconds();
            if (seen == expect) done = wall_seconds();
        }
        rd_kafka_message_destroy(msg);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    if (seen < expect) {
        if (!lost)
            fprintf(stderr, "consume_only: timed out after %.0f s with %lld of %lld messages\n",
                    timeout, seen, expect);
        return 1;
    }
    printf("consume_only: %lld messages, %lld unparsable, first %.6f done %.6f (wall clock s), "
           "%.0f messages/s from the first message\n",
           seen, bad, first, done, done > first ? (seen - 1) / (done - first) : 0.0);
    return 0;
}

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

#include "bench/kafka_assign.h"

#define MAX_TOPICS 8

static int usage(void) {
    fprintf(stderr, "usage: consume_only --brokers LIST --topics T1,T2 --expect N [--timeout S]\n");
    return 2;
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

    rd_kafka_t *rk = bench_consumer_new("consume_only", brokers, topics, n_topics);
    if (!rk) {
        return 1;
    }
    printf("ready\n");
    fflush(stdout);

    long long seen = 0, bad = 0;
    int lost = 0;
    double first = 0, done = 0, deadline = bench_mono_seconds() + timeout;
    while (seen < expect && !lost && bench_mono_seconds() < deadline) {
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
            if (seen++ == 0) first = bench_wall_seconds();
            if (seen == expect) done = bench_wall_seconds();
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

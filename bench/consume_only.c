/* consume_only.c -- the ceiling for bench/stream: librdkafka consume plus a
 * jansson decode (json_loadb + json_decref) of every message, nothing else
 * (no validation, no normalization, no counting, no store).
 *
 *   consume_only --brokers LIST --topics T1,T2 --expect N|end [--share I/K] [--timeout S]
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
 * --share I/K takes only the partitions p with p % K == I (K processes
 * split the topics as K members of a group would; bench/scale); --expect
 * end reads what the assigned partitions hold when it starts (a log
 * produced beforehand); --wait-stdin connects, then waits for a line on
 * standard input before it assigns, so that K processes start together.
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
    fprintf(stderr, "usage: consume_only --brokers LIST --topics T1,T2 --expect N|end [--share I/K] "
                    "[--wait-stdin] [--timeout S]\n");
    return 2;
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {{"brokers", required_argument, 0, 'b'},
                                              {"topics", required_argument, 0, 't'},
                                              {"expect", required_argument, 0, 'n'},
                                              {"timeout", required_argument, 0, 'T'},
                                              {"share", required_argument, 0, 's'},
                                              {"wait-stdin", no_argument, 0, 'w'},
                                              {0, 0, 0, 0}};
    const char *brokers = NULL;
    char *topics_arg = NULL, *topics[MAX_TOPICS];
    int n_topics = 0, c;
    long long expect = -1;
    int share = 0, of = 1, to_end = 0, wait_stdin = 0;
    double timeout = 600;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'b': brokers = optarg; break;
        case 't': topics_arg = optarg; break;
        case 'n': to_end = strcmp(optarg, "end") == 0, expect = to_end ? 1 : atoll(optarg); break;
        case 's':
            if (sscanf(optarg, "%d/%d", &share, &of) != 2 || of < 1 || share < 0 || share >= of) return usage();
            break;
        case 'T': timeout = atof(optarg); break;
        case 'w': wait_stdin = 1; break;
        default: return usage();
        }
    }
    if (!brokers || !topics_arg || expect < 1 || timeout <= 0 || optind != argc) return usage();
    for (char *t = strtok(topics_arg, ","); t && n_topics < MAX_TOPICS; t = strtok(NULL, ","))
        topics[n_topics++] = t;

    /* connected (metadata read) before the start line, assigned after it */
    char go[16];
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_t *rk = bench_consumer_connect("consume_only", brokers);
    if (!rk) return 1;
    if (wait_stdin && rd_kafka_metadata(rk, 1, NULL, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_metadata_destroy(md);
    if ((wait_stdin && !fgets(go, sizeof go, stdin)) ||
        bench_assign_share("consume_only", rk, topics, n_topics, share, of) < 0) {
        if (wait_stdin) fprintf(stderr, "consume_only: no start line, or the assignment failed\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    if (to_end && (expect = bench_assigned_messages("consume_only", rk)) < 1) {
        if (expect == 0) fprintf(stderr, "consume_only: the assigned partitions are empty\n");
        rd_kafka_destroy(rk);
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

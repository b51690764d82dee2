/* redis_naive.c -- the naive baseline for bench/stream: the same counter
 * cells the aggregator touches, counted in Redis with pipelined HINCRBY.
 *
 *   redis_naive --brokers LIST --topics T1,T2 --expect N --redis-port P [--timeout S]
 *
 * Consumes like consume_only (every partition of the topics assigned from
 * the beginning, no group; "ready" on stdout once assigned and Redis
 * answered FLUSHALL), decodes every message with iqp_event_decode (default
 * config) and, per decoded event, for each of the config's features and
 * granularities (default: 5 features x 1h, 1d):
 *   impression: HINCRBY "<feature>|<context>|<gran>|<bucket>" context_count 1
 *               and, for every listed item (no dedup: naive),
 *               HINCRBY "<feature>|<context>|<item>|<gran>|<bucket>" impression 1
 *   action:     HINCRBY "<feature>|<context>|<item>|<gran>|<bucket>" <action> 1
 *               HINCRBY (same key) engaged 1
 * where <context> is the feature's normalized context values joined by '|'
 * and <bucket> = ts / granularity. No redelivery dedup, no expiry. Commands
 * are appended with redisAppendCommandArgv and the replies read every 64
 * commands (pipeline depth 64). Prints one line:
 *   redis_naive: <n> messages, <bad> undecodable, <cmds> HINCRBY, first <t> done <t>
 *   (wall clock s), <rate> messages/s from the first message
 * "done" is when the last reply of the last message was read. Like
 * consume_only it stops at once when the devbroker evicted messages before
 * they were read (auto.offset.reset=error). Exit 0 when N messages were
 * seen, 1 otherwise, 2 on bad usage.
 */
#include <getopt.h>
#include <hiredis.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/kafka_assign.h"
#include <unistd.h>

#include "model/config.h"
#include "model/normalize.h"
#include "schemas/event.h"

#define MAX_TOPICS 8
#define DEPTH 64
#define KEY_MAX 16384

static int usage(void) {
    fprintf(stderr, "usage: redis_naive --brokers LIST --topics T1,T2 --expect N --redis-port P "
                    "[--timeout S]\n");
    return 2;
}

/* ---- Redis: a depth-64 pipeline ------------------------------------------- */

typedef struct pipeline {
    redisContext *rc;
    int pending;                /* commands appended, replies not yet read */
    unsigned long long commands, errors;
    int failed;
} pipeline;

static void drain(pipeline *p) {
    while (p->pending > 0 && !p->failed) {
        redisReply *r = NULL;
        if (redisGetReply(p->rc, (void **)&r) != REDIS_OK || !r) {
            fprintf(stderr, "redis_naive: redis: %s\n", p->rc->errstr);
            p->failed = 1;
            return;
        }
        if (r->type == REDIS_REPLY_ERROR && p->errors++ == 0)
            fprintf(stderr, "redis_naive: redis replied: %s\n", r->str);
        freeReplyObject(r);
        p->pending--;
    }
}

static void hincrby(pipeline *p, const char *key, size_t klen, const char *field) {
    const char *argv[4] = {"HINCRBY", key, field, "1"};
    size_t lens[4] = {7, klen, strlen(field), 1};
    if (p->failed) return;
    if (redisAppendCommandArgv(p->rc, 4, argv, lens) != REDIS_OK) {
        fprintf(stderr, "redis_naive: redis: %s\n", p->rc->errstr);
        p->failed = 1;
        return;
    }
    p->commands++;
    if (++p->pending == DEPTH) drain(p);
}

static redisContext *connect_redis(int port) {
    struct timeval tv = {5, 0};
    for (int attempt = 0; attempt < 50; attempt++) { /* redis-server may still be starting: 5 s */
        redisContext *rc = redisConnectWithTimeout("127.0.0.1", port, tv);
        if (rc && !rc->err) {
            redisReply *r = redisCommand(rc, "FLUSHALL");
            int ok = r && r->type != REDIS_REPLY_ERROR;
            if (r) freeReplyObject(r);
            if (ok) return rc;
        }
        if (rc) redisFree(rc);
        usleep(100000);
    }
    fprintf(stderr, "redis_naive: cannot reach redis on 127.0.0.1:%d\n", port);
    return NULL;
}

/* ---- cells ------------------------------------------------------------------ */

/* "1h", "1d", ... for a granularity in ms. */
static void gran_name(int64_t ms, char *out, size_t len) {
    if (ms % 86400000 == 0) snprintf(out, len, "%lldd", (long long)(ms / 86400000));
    else if (ms % 3600000 == 0) snprintf(out, len, "%lldh", (long long)(ms / 3600000));
    else if (ms % 60000 == 0) snprintf(out, len, "%lldm", (long long)(ms / 60000));
    else snprintf(out, len, "%lldms", (long long)ms);
}

/* "<feature>|<context values>|" into out; its length. */
static size_t context_prefix(const iqp_feature_spec *f, const iqp_event *ev, char *out, size_t len) {
    int n = snprintf(out, len, "%s|", f->name);
    if (f->dims & IQP_DIM_QUERY) n += snprintf(out + n, len - (size_t)n, "%.*s|", (int)ev->query_len, ev->query);
    if (f->dims & IQP_DIM_COUNTRY) n += snprintf(out + n, len - (size_t)n, "%s|", ev->seg_text[1]);
    if (f->dims & IQP_DIM_GENDER) n += snprintf(out + n, len - (size_t)n, "%s|", ev->seg_text[2]);
    return (size_t)n < len ? (size_t)n : len - 1;
}

/* Appends "<item>|" (may be empty) and "<gran>|<bucket>" to the prefix. */
static size_t cell_key(char *key, size_t prefix_len, const iqp_item_ref *item, const char *gran,
                       int64_t bucket) {
    int n;
    if (item)
        n = snprintf(key + prefix_len, KEY_MAX - prefix_len, "%.*s|%s|%lld", (int)item->len, item->id, gran,
                     (long long)bucket);
    else
        n = snprintf(key + prefix_len, KEY_MAX - prefix_len, "%s|%lld", gran, (long long)bucket);
    size_t total = prefix_len + (size_t)n;
    return total < KEY_MAX ? total : KEY_MAX - 1;
}

static void count_event(pipeline *p, const iqp_config *cfg, const iqp_event *ev, char grans[][24]) {
    static char key[KEY_MAX];
    for (size_t f = 0; f < cfg->n_features; f++) {
        size_t plen = context_prefix(&cfg->features[f], ev, key, KEY_MAX);
        for (size_t g = 0; g < cfg->n_grans; g++) {
            int64_t bucket = ev->ts / cfg->gran_ms[g];
            if (ev->kind == IQP_EVENT_IMPRESSION) {
                hincrby(p, key, cell_key(key, plen, NULL, grans[g], bucket), "context_count");
                for (size_t i = 0; i < ev->n_items; i++)
                    hincrby(p, key, cell_key(key, plen, &ev->items[i], grans[g], bucket), "impression");
            } else {
                size_t klen = cell_key(key, plen, &ev->item, grans[g], bucket);
                hincrby(p, key, klen, cfg->actions[ev->action]);
                hincrby(p, key, klen, "engaged");
            }
        }
    }
}

/* ---- Kafka ------------------------------------------------------------------- */

int main(int argc, char **argv) {
    static const struct option longopts[] = {{"brokers", required_argument, 0, 'b'},
                                              {"topics", required_argument, 0, 't'},
                                              {"expect", required_argument, 0, 'n'},
                                              {"redis-port", required_argument, 0, 'p'},
                                              {"timeout", required_argument, 0, 'T'},
                                              {0, 0, 0, 0}};
    const char *brokers = NULL;
    char *topics_arg = NULL, *topics[MAX_TOPICS];
    int n_topics = 0, c, port = 0;
    long long expect = -1;
    double timeout = 600;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'b': brokers = optarg; break;
        case 't': topics_arg = optarg; break;
        case 'n': expect = atoll(optarg); break;
        case 'p': port = atoi(optarg); break;
        case 'T': timeout = atof(optarg); break;
        default: return usage();
        }
    }
    if (!brokers || !topics_arg || expect < 1 || port < 1 || port > 65535 || timeout <= 0 ||
        optind != argc)
        return usage();
    for (char *t = strtok(topics_arg, ","); t && n_topics < MAX_TOPICS; t = strtok(NULL, ","))
        topics[n_topics++] = t;

    iqp_config cfg;
    iqp_config_defaults(&cfg);
    char grans[IQP_MAX_GRANS][24];
    for (size_t g = 0; g < cfg.n_grans; g++) gran_name(cfg.gran_ms[g], grans[g], sizeof grans[g]);

    pipeline p = {0};
    if (!(p.rc = connect_redis(port))) return 1;

    rd_kafka_t *rk = bench_consumer_new("redis_naive", brokers, topics, n_topics);
    if (!rk) {
        redisFree(p.rc);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);

    long long seen = 0, bad = 0;
    int lost = 0;
    double first = 0, done = 0, deadline = bench_mono_seconds() + timeout;
    while (seen < expect && !p.failed && !lost && bench_mono_seconds() < deadline) {
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 100);
        if (!msg) continue;
        if (msg->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET) {
            fprintf(stderr, "redis_naive: messages were evicted before they were read: %s\n",
                    rd_kafka_message_errstr(msg));
            lost = 1;
        } else if (msg->err) {
            if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "redis_naive: %s\n", rd_kafka_message_errstr(msg));
        } else {
            iqp_event ev;
            iqp_decode_error derr;
            if (seen++ == 0) first = bench_wall_seconds();
            if (iqp_event_decode(&cfg, msg->payload ? msg->payload : "", msg->len, &ev, &derr) < 0) {
                bad++;
            } else {
                count_event(&p, &cfg, &ev, grans);
                iqp_event_clear(&ev);
            }
            if (seen == expect) {
                drain(&p);
                done = bench_wall_seconds();
            }
        }
        rd_kafka_message_destroy(msg);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    redisFree(p.rc);
    if (p.failed || lost) return 1;
    if (seen < expect) {
        fprintf(stderr, "redis_naive: timed out after %.0f s with %lld of %lld messages\n", timeout,
                seen, expect);
        return 1;
    }
    printf("redis_naive: %lld messages, %lld undecodable, %llu HINCRBY (%llu errors), first %.6f "
           "done %.6f (wall clock s), %.0f messages/s from the first message\n",
           seen, bad, p.commands, p.errors, first, done,
           done > first ? (seen - 1) / (done - first) : 0.0);
    return p.errors ? 1 : 0;
}

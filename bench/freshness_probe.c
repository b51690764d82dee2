/* freshness_probe.c -- how long from producing an event until its count is
 * visible in Redis.
 *
 * usage: freshness_probe BROKERS TOPIC REDIS_URL PROBES INTERVAL_MS TIMEOUT_MS
 *
 * Each probe is one valid impression.v1 event with its own query
 * ("freshprobe <run> <k>", already normalized) showing one item, with ts =
 * now. The clock starts when the event is handed to librdkafka (flushed at
 * once: linger 0) and stops when a pipelined GET iqp:gen + HEXISTS
 * iqp:<gen>:q_item:<query> <item>, repeated every millisecond, finds the
 * item's field. Probes are sequential, INTERVAL_MS apart, so they measure
 * the pipeline, not a queue of probes; the load comes from elsewhere (an
 * `iqp produce --rate` beside it). Prints one line: probes, p50, p99, max
 * in milliseconds; exits 1 when a probe is not visible within TIMEOUT_MS.
 */
#include <hiredis/hiredis.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/redis_conn.h"
#include "util/clock.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static rd_kafka_t *producer_new(const char *brokers) {
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "linger.ms", "0", err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "freshness_probe: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) fprintf(stderr, "freshness_probe: %s\n", err);
    return rk;
}

/* 1 when the probe's field is in the generation being served, 0 when not
 * yet, -1 on a Redis error. */
static int probe_visible(redisContext *r, const char *query, const char *item) {
    redisReply *gen = redisCommand(r, "GET iqp:gen");
    if (!gen) return -1;
    int seen = 0;
    if (gen->type == REDIS_REPLY_STRING) {
        redisReply *h = redisCommand(r, "HEXISTS iqp:%s:q_item:%s %s", gen->str, query, item);
        if (!h) seen = -1;
        else seen = h->type == REDIS_REPLY_INTEGER && h->integer == 1;
        if (h) freeReplyObject(h);
    }
    freeReplyObject(gen);
    return seen;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s BROKERS TOPIC REDIS_URL PROBES INTERVAL_MS TIMEOUT_MS\n", argv[0]);
        return 2;
    }
    int probes = atoi(argv[4]), interval_ms = atoi(argv[5]), timeout_ms = atoi(argv[6]);
    if (probes <= 0 || interval_ms < 0 || timeout_ms <= 0) return 2;
    iqp_redis_url u;
    char err[512];
    if (iqp_redis_url_parse(argv[3], &u, err, sizeof err) < 0) {
        fprintf(stderr, "freshness_probe: %s\n", err);
        return 2;
    }
    redisContext *r = iqp_redis_connect(&u, 1000, 2000, err, sizeof err);
    rd_kafka_t *rk = producer_new(argv[1]);
    if (!r || !rk) {
        if (!r) fprintf(stderr, "freshness_probe: %s\n", err);
        return 1;
    }
    double *ms = calloc((size_t)probes, sizeof *ms);
    long run = (long)iqp_wall_ms();
    int rc = 0;
    for (int k = 0; k < probes && rc == 0; k++) {
        char query[64], event[512];
        snprintf(query, sizeof query, "freshprobe %ld %d", run, k);
        int n = snprintf(event, sizeof event,
                         "{\"schema\":\"impression.v1\",\"event_id\":\"probe-%ld-%d\",\"ts\":%lld,"
                         "\"request_id\":\"probe-req-%ld-%d\",\"query\":\"%s\",\"user\":{\"country\":\"US\","
                         "\"gender\":\"female\"},\"items\":[\"probe-item\"]}",
                         run, k, (long long)iqp_wall_ms(), run, k, query);
        double t0 = iqp_mono_seconds();
        if (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(argv[2]), RD_KAFKA_V_KEY(query, strlen(query)),
                              RD_KAFKA_V_VALUE(event, (size_t)n), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_END) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "freshness_probe: produce failed\n");
            rc = 1;
            break;
        }
        rd_kafka_flush(rk, 5000);
        int seen = 0;
        while (!seen && (iqp_mono_seconds() - t0) * 1000 < timeout_ms) {
            if ((seen = probe_visible(r, query, "probe-item")) < 0) {
                fprintf(stderr, "freshness_probe: Redis: %s\n", r->errstr);
                rc = 1;
                break;
            }
            if (!seen) usleep(1000);
        }
        ms[k] = (iqp_mono_seconds() - t0) * 1000;
        if (rc == 0 && !seen) {
            fprintf(stderr, "freshness_probe: probe %d not visible after %d ms\n", k, timeout_ms);
            rc = 1;
        }
        usleep((useconds_t)interval_ms * 1000);
    }
    if (rc == 0) {
        qsort(ms, (size_t)probes, sizeof *ms, cmp_double);
        printf("probes=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f\n", probes, ms[(probes - 1) / 2],
               ms[(int)(0.99 * (probes - 1) + 0.5)], ms[probes - 1]);
    }
    free(ms);
    rd_kafka_destroy(rk);
    redisFree(r);
    return rc;
}

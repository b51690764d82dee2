/* lookup_latency.c -- libiqp lookup latency next to its ceiling: the same
 * Redis commands issued raw with hiredis on one connection.
 *
 * usage: lookup_latency URL QUERY COUNTRY GENDER ITEMS_FILE N_ITEMS CALLS MAX_SECONDS
 *
 * Both sides answer one ranker request: one (already normalized) query in
 * one user context, the first N_ITEMS item ids of ITEMS_FILE (one per
 * line), every feature. libiqp does it with iqp_client_lookup (pipelined
 * GET of the generation pointer + one HMGET per feature, decoding every
 * value into the caller's array). The ceiling sends the very same
 * commands, built once up front, through one hiredis connection and only
 * waits for the replies (no key building, no normalization, no decoding);
 * for a redis-cluster:// URL it sends them through the same cluster layer
 * (client/redis_cluster.h), with the cluster key names.
 * Interleaving: calls alternate one by one between the two sides (a
 * pair of calls, one each, back to back; which side goes first alternates
 * from pair to pair), so both sample the same moments of a shared
 * machine's noise, and neither is always the one right after the other
 * (whose connection, caches or Redis state the first may have warmed);
 * each side makes CALLS calls or both stop at MAX_SECONDS.
 * Prints one line per side with p50/p99/p999 in microseconds, then the
 * ratios, then each side's median client CPU time per call (this
 * thread's CPU clock: what the client itself spends, formatting, parsing
 * and decoding, without the wait for Redis; less sensitive to a loaded
 * machine than the latencies). Loopback only (the URL is the caller's).
 */
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/config.h"
#include "client/client_internal.h"
#include "client/iqp.h"
#include "client/redis_cluster.h"
#include "client/redis_conn.h"
#include "schemas/redis_value.h"
#include "util/clock.h"

#define MAX_FEATURES 16

typedef struct raw_request {
    int n_cmds;
    int argc[1 + MAX_FEATURES];
    const char **argv[1 + MAX_FEATURES];
    size_t *lens[1 + MAX_FEATURES];
} raw_request;

static char **read_items(const char *path, size_t want, size_t *got) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char **items = calloc(want, sizeof *items), line[4096];
    *got = 0;
    while (*got < want && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0]) items[(*got)++] = strdup(line);
    }
    fclose(f);
    return items;
}

/* Builds GET iqp:gen and one HMGET per feature of the served layout, for
 * the generation the client reads. */
static int build_raw(raw_request *r, iqp_client *c, const char *prefix, const char *query, const char *country,
                     const char *gender, char **items, size_t n) {
    static const char *get_argv[2] = {"GET", NULL};
    static size_t get_lens[2] = {3, 0};
    static char gen_key[200];
    snprintf(gen_key, sizeof gen_key, "%s:gen", prefix);
    get_argv[1] = gen_key;
    get_lens[1] = strlen(gen_key);
    const iqp_config *cfg = iqp_client_config(c);
    r->argc[0] = 2;
    r->argv[0] = get_argv;
    r->lens[0] = get_lens;
    r->n_cmds = 1;
    if (cfg->n_features > MAX_FEATURES) return -1;
    const char *names[2] = {"country", "gender"}, *values[2] = {country, gender};
    iqp_context_buf cb;
    char err[256];
    if (iqp_context_build(cfg, query, names, values, 2, &cb, err, sizeof err) < 0) return -1;
    for (size_t f = 0; f < cfg->n_features; f++) {
        char key[1024];
        size_t klen = iqp_rv_hash_key(key, sizeof key, prefix, iqp_client_generation(c), cfg->features[f].name,
                                      cfg, cfg->features[f].dims, &cb.ctx);
        if (klen >= sizeof key) { iqp_context_buf_free(&cb); return -1; }
        const char **argv = malloc((n + 3) * sizeof *argv);
        size_t *lens = malloc((n + 3) * sizeof *lens);
        argv[0] = "HMGET", lens[0] = 5;
        argv[1] = strdup(key), lens[1] = klen;
        argv[2] = "", lens[2] = 0;
        for (size_t i = 0; i < n; i++) argv[3 + i] = items[i], lens[3 + i] = strlen(items[i]);
        r->argc[r->n_cmds] = (int)(n + 3);
        r->argv[r->n_cmds] = argv;
        r->lens[r->n_cmds] = lens;
        r->n_cmds++;
    }
    iqp_context_buf_free(&cb);
    return 0;
}

static int raw_call(iqp_rconn *ctx, const raw_request *r) {
    for (int k = 0; k < r->n_cmds; k++) iqp_rconn_append_argv(ctx, r->argc[k], r->argv[k], r->lens[k]);
    for (int k = 0; k < r->n_cmds; k++) {
        redisReply *reply;
        if (iqp_rconn_get_reply(ctx, &reply) != REDIS_OK) return -1;
        int bad = reply->type == REDIS_REPLY_ERROR || (k > 0 && reply->type != REDIS_REPLY_ARRAY);
        freeReplyObject(reply);
        if (bad) return -1;
    }
    return 0;
}

static double thread_cpu_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *sorted, size_t n, double p) {
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s URL QUERY COUNTRY GENDER ITEMS_FILE N_ITEMS CALLS MAX_SECONDS\n", argv[0]);
        return 2;
    }
    const char *url = argv[1], *query = argv[2], *country = argv[3], *gender = argv[4];
    size_t want = strtoul(argv[6], NULL, 10), calls = strtoul(argv[7], NULL, 10), n;
    double max_s = atof(argv[8]);
    char **items = read_items(argv[5], want, &n);
    if (!items || n < want) {
        fprintf(stderr, "lookup_latency: %s has fewer than %zu items\n", argv[5], want);
        return 1;
    }
    iqp_client_options o;
    iqp_client_options_init(&o);
    o.timeout_ms = 1000;
    iqp_client *c = iqp_client_open(url, &o);
    if (!c || iqp_client_status(c) != IQP_OK) {
        fprintf(stderr, "lookup_latency: %s\n", c ? iqp_client_errstr(c) : "out of memory");
        return 1;
    }
    iqp_redis_url u;
    char err[512], prefix[160];
    if (iqp_redis_url_parse(url, &u, err, sizeof err) < 0) return 1;
    if (iqp_redis_key_prefix(&u, "iqp", prefix, sizeof prefix, err, sizeof err) < 0) return 1;
    iqp_rconn *ctx = iqp_rconn_connect(&u, 1000, 1000, err, sizeof err);
    if (!ctx) {
        fprintf(stderr, "lookup_latency: %s\n", err);
        return 1;
    }
    raw_request raw;
    if (build_raw(&raw, c, prefix, query, country, gender, items, n) < 0) return 1;
    size_t len = iqp_client_result_len(c, n);
    double *out = malloc(len * sizeof *out);
    double *lib_us = malloc(calls * sizeof *lib_us), *raw_us = malloc(calls * sizeof *raw_us);
    double *lib_cpu = malloc(calls * sizeof *lib_cpu), *raw_cpu = malloc(calls * sizeof *raw_cpu);
    size_t n_lib = 0, n_raw = 0;
    double t_end = iqp_mono_seconds() + max_s;
    /* call by call, the two sides in turn, which goes first alternating
     * from one pair to the next ("Interleaving" above) */
    for (size_t pair = 0; n_lib < calls && iqp_mono_seconds() < t_end; pair++) {
        for (int turn = 0; turn < 2; turn++) {
            if ((turn == 0) == (pair % 2 == 0)) {
                double t0 = iqp_mono_seconds(), c0 = thread_cpu_us();
                if (iqp_client_lookup(c, query, country, gender, (const char *const *)items, n, out, len) != IQP_OK) {
                    fprintf(stderr, "lookup_latency: libiqp: %s\n", iqp_client_errstr(c));
                    return 1;
                }
                lib_cpu[n_lib] = thread_cpu_us() - c0;
                lib_us[n_lib++] = (iqp_mono_seconds() - t0) * 1e6;
            } else {
                double t0 = iqp_mono_seconds(), c0 = thread_cpu_us();
                if (raw_call(ctx, &raw) < 0) {
                    fprintf(stderr, "lookup_latency: raw hiredis call failed: %s\n", iqp_rconn_errstr(ctx));
                    return 1;
                }
                raw_cpu[n_raw] = thread_cpu_us() - c0;
                raw_us[n_raw++] = (iqp_mono_seconds() - t0) * 1e6;
            }
        }
    }
    /* the values are real: count the items with a non-zero q_item impression */
    size_t nf = iqp_client_n_features(c), nw = iqp_client_n_windows(c), nm = iqp_client_n_measures(c), seen = 0;
    for (size_t i = 0; i < n; i++) seen += out[((i * nf + 0) * nw + 0) * nm + 1] > 0;
    qsort(lib_us, n_lib, sizeof *lib_us, cmp_double);
    qsort(raw_us, n_raw, sizeof *raw_us, cmp_double);
    qsort(lib_cpu, n_lib, sizeof *lib_cpu, cmp_double);
    qsort(raw_cpu, n_raw, sizeof *raw_cpu, cmp_double);
    printf("items=%zu features=%zu calls=%zu libiqp_us p50=%.1f p99=%.1f p999=%.1f | raw_hiredis_us p50=%.1f "
           "p99=%.1f p999=%.1f | ratio p50=%.2f p99=%.2f | cpu_us libiqp=%.1f raw=%.1f | items_with_counts=%zu\n",
           n, nf, n_lib, pct(lib_us, n_lib, .5), pct(lib_us, n_lib, .99), pct(lib_us, n_lib, .999),
           pct(raw_us, n_raw, .5), pct(raw_us, n_raw, .99), pct(raw_us, n_raw, .999),
           pct(lib_us, n_lib, .5) / pct(raw_us, n_raw, .5), pct(lib_us, n_lib, .99) / pct(raw_us, n_raw, .99),
           pct(lib_cpu, n_lib, .5), pct(raw_cpu, n_raw, .5), seen);
    iqp_client_close(c);
    iqp_rconn_free(ctx);
    free(lib_us), free(raw_us), free(lib_cpu), free(raw_cpu), free(out);
    return 0;
}

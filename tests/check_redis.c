/* check_redis.c -- serving: the Redis value layout, Redis URLs, `iqp
 * publish`, libiqp and `iqp lookup --redis`, against a real redis-server.
 *
 * Design
 * ------
 * Unit tests first: the value encoding against bytes worked out by hand
 * from schemas/redis-layout.md, round trips over random vectors, the
 * decoder's refusals, and Redis URL parsing.
 *
 * Then an unchecked fixture, run once: `iqp gen` traffic (6 h, so no
 * bucket leaves a window while it is published), backfilled into a store,
 * read by the independent brute-force model (tests/oracle.c), and a
 * redis-server child on a free loopback port that `iqp publish --all`
 * fills. Each test then reads Redis one way and compares:
 *   - libiqp (iqp_client_lookup) against the oracle, every measure of every
 *     feature, window and item, rates included (count / context_count,
 *     computed by the oracle's side in the same double expression);
 *   - `iqp lookup --redis` against `iqp lookup --store --as-of <the
 *     generation's as_of_ms>`, byte for byte;
 *   - the README's libiqp example, compiled against the installed
 *     libiqp.pc (make install into a temporary DESTDIR), against libiqp;
 *   - a Redis holding an unknown layout version is refused by the reader
 *     and by the publisher, with messages that say so;
 *   - a Redis that stops answering (SIGSTOP) gives IQP_ETIMEOUT within the
 *     call's timeout, and the next call after it answers again works.
 * Every test that changes Redis restores it (republishes) before it ends.
 * The redis-server is stopped by pid in the fixture's teardown.
 */
#include <check.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "model/config.h"
#include "model/normalize.h"
#include "client/iqp.h"
#include "aggregator/aggregator.h"
#include "model/cells.h"
#include "client/redis_conn.h"
#include "publisher/pending.h"
#include "publisher/publisher.h"
#include "schemas/event.h"
#include "store/store.h"
#include "util/clock.h"
#include "schemas/redis_value.h"
#include "tests/oracle.h"
#include "tests/testutil.h"

#define START_MS 1717996834567LL
#define N_CONTEXTS 12
#define MAX_ITEMS 30

/* ---- the value layout ---------------------------------------------------------- */

/* One window of counters {0, 3, 0, -1}: mask 0b1010 = 0x0a, then zigzag(3)
 * = 6 and zigzag(-1) = 1; a second window of all zeros is one 0x00 byte.
 * A context_count of 300 is zigzag 600 = LEB128 0xd8 0x04. */
START_TEST(value_bytes_match_the_document) {
    int64_t counts[8] = {0, 3, 0, -1, 0, 0, 0, 0};
    unsigned char buf[64];
    size_t n = iqp_rv_encode_item(counts, 2, 4, buf);
    static const unsigned char want[] = {0x0a, 0x06, 0x01, 0x00};
    ck_assert_uint_eq(n, sizeof want);
    ck_assert_mem_eq(buf, want, sizeof want);
    int64_t cc[2] = {300, 0};
    n = iqp_rv_encode_context(cc, 2, buf);
    static const unsigned char want_cc[] = {0xd8, 0x04, 0x00};
    ck_assert_uint_eq(n, sizeof want_cc);
    ck_assert_mem_eq(buf, want_cc, sizeof want_cc);
}
END_TEST

START_TEST(value_round_trips) {
    srand(7);
    for (int iter = 0; iter < 2000; iter++) {
        size_t nw = 1 + (size_t)(rand() % 5), width = 1 + (size_t)(rand() % 12);
        int64_t in[5 * 12], out[5 * 12], cc[5], cc_out[5];
        for (size_t i = 0; i < nw * width; i++) {
            int r = rand() % 6;
            in[i] = r < 3 ? 0 : r == 3 ? rand() % 1000 : r == 4 ? INT64_MAX - rand() % 3 : INT64_MIN + rand() % 3;
        }
        for (size_t w = 0; w < nw; w++) cc[w] = rand() % 2 ? (int64_t)rand() * 4096 : 0;
        unsigned char buf[IQP_RV_ITEM_MAX(5, 12)];
        size_t n = iqp_rv_encode_item(in, nw, width, buf);
        ck_assert_uint_le(n, IQP_RV_ITEM_MAX(nw, width));
        ck_assert_int_eq(iqp_rv_decode_item(buf, n, nw, width, out), 0);
        ck_assert_mem_eq(in, out, nw * width * sizeof *in);
        /* every strict prefix is truncated, a trailing byte is junk */
        for (size_t cut = 0; cut < n; cut++) ck_assert_int_eq(iqp_rv_decode_item(buf, cut, nw, width, out), -1);
        buf[n] = 0;
        ck_assert_int_eq(iqp_rv_decode_item(buf, n + 1, nw, width, out), -1);
        n = iqp_rv_encode_context(cc, nw, buf);
        ck_assert_int_eq(iqp_rv_decode_context(buf, n, nw, cc_out), 0);
        ck_assert_mem_eq(cc, cc_out, nw * sizeof *cc);
    }
}
END_TEST

START_TEST(value_decoder_refuses_bad_bytes) {
    int64_t out[8];
    static const unsigned char beyond_width[] = {0x10, 0x02};           /* bit 4 of width 4 */
    static const unsigned char long_varint[] = {0x01, 0xff, 0xff, 0xff, 0xff, 0xff,
                                                0xff, 0xff, 0xff, 0xff, 0xff, 0x01}; /* > 64 bits */
    ck_assert_int_eq(iqp_rv_decode_item(beyond_width, sizeof beyond_width, 1, 4, out), -1);
    ck_assert_int_eq(iqp_rv_decode_item(long_varint, sizeof long_varint, 1, 4, out), -1);
    ck_assert_int_eq(iqp_rv_decode_item((const unsigned char *)"", 0, 1, 4, out), -1);
}
END_TEST

START_TEST(hash_keys_follow_the_document) {
    char key[256];
    size_t n = tu_hash_key(key, sizeof key, "iqp", 7, "qc_item", IQP_DIM_QUERY | IQP_DIM_COUNTRY, "DE",
                               "female", "red dress", 9);
    ck_assert_str_eq(key, "iqp:7:qc_item:DE:red dress");
    ck_assert_uint_eq(n, strlen(key));
    tu_hash_key(key, sizeof key, "p", 1, "g_item", IQP_DIM_GENDER, "DE", "male", NULL, 0);
    ck_assert_str_eq(key, "p:1:g_item:male");
    n = tu_hash_key(key, 4, "iqp", 7, "q_item", IQP_DIM_QUERY, NULL, NULL, "shoes", 5);
    ck_assert_uint_eq(n, strlen("iqp:7:q_item:shoes"));
}
END_TEST

/* The document's list of country codes is the one the pipeline keeps:
 * every two-letter code is kept iff the document lists it. */
START_TEST(layout_doc_lists_the_country_codes) {
    char *path = tu_fmt("%s/schemas/redis-layout.md", IQP_SRCDIR), *doc = tu_read_file(path, NULL);
    ck_assert_ptr_nonnull(doc);
    char *block = strstr(doc, "officially assigned ISO 3166-1 alpha-2 codes below");
    ck_assert_ptr_nonnull(block);
    block = strstr(block, "```text\n");
    ck_assert_ptr_nonnull(block);
    block += 8;
    char *end = strstr(block, "```");
    ck_assert_ptr_nonnull(end);
    *end = 0;
    size_t listed = 0;
    for (char a = 'A'; a <= 'Z'; a++)
        for (char b = 'A'; b <= 'Z'; b++) {
            char code[3] = {a, b, 0}, out[3], word[4] = {a, b, 0, 0};
            int in_doc = 0;
            for (const char *p = block; (p = strstr(p, word)); p++)
                if ((p == block || p[-1] == ' ' || p[-1] == '\n') && (p[2] == ' ' || p[2] == '\n' || !p[2])) in_doc = 1;
            iqp_normalize_country(code, 2, out);
            int kept = strcmp(out, code) == 0 && strcmp(code, "ZZ") != 0;
            ck_assert_msg(in_doc == kept, "%s: listed %d, kept by the pipeline %d", code, in_doc, kept);
            listed += in_doc;
        }
    ck_assert_uint_eq(listed, 249);
    free(doc), free(path);
}
END_TEST

/* ---- Redis URLs -------------------------------------------------------------------- */

START_TEST(urls_parse) {
    iqp_redis_url u;
    char err[256];
    ck_assert_int_eq(iqp_redis_url_parse("redis://127.0.0.1:6380/2", &u, err, sizeof err), 0);
    ck_assert_str_eq(u.host, "127.0.0.1");
    ck_assert_int_eq(u.port, 6380);
    ck_assert_int_eq(u.db, 2);
    ck_assert_int_eq(iqp_redis_url_parse("redis://:s3cret@localhost", &u, err, sizeof err), 0);
    ck_assert_str_eq(u.password, "s3cret");
    ck_assert_str_eq(u.user, "");
    ck_assert_int_eq(u.port, 6379);
    ck_assert_int_eq(u.db, 0);
    ck_assert_int_eq(iqp_redis_url_parse("redis://ranker:pw@[::1]:7000/1", &u, err, sizeof err), 0);
    ck_assert_str_eq(u.user, "ranker");
    ck_assert_str_eq(u.host, "::1");
    ck_assert_int_eq(u.port, 7000);
    ck_assert_int_eq(iqp_redis_url_parse("unix:///run/redis.sock?db=3", &u, err, sizeof err), 0);
    ck_assert_int_eq(u.is_unix, 1);
    ck_assert_str_eq(u.host, "/run/redis.sock");
    ck_assert_int_eq(u.db, 3);
    char desc[300];
    ck_assert_int_eq(iqp_redis_url_parse("redis://:hidden@127.0.0.1:1/0", &u, err, sizeof err), 0);
    iqp_redis_url_describe(&u, desc, sizeof desc);
    ck_assert_ptr_null(strstr(desc, "hidden"));
    static const char *const bad[] = {"http://127.0.0.1", "redis://127.0.0.1:0", "redis://127.0.0.1:70000",
                                      "redis://127.0.0.1/x", "redis://127.0.0.1:12ab", "unix://",
                                      "redis://", "redis://[::1", "", NULL};
    for (const char *const *b = bad; *b; b++) {
        err[0] = 0;
        ck_assert_msg(iqp_redis_url_parse(*b, &u, err, sizeof err) == -1, "'%s' accepted", *b);
        ck_assert_msg(err[0] != 0, "'%s' refused without a message", *b);
    }
}
END_TEST

/* A password never appears in a message: URL errors show it as ***. */
START_TEST(passwords_are_masked) {
    iqp_redis_url u;
    char err[512], shown[256];
    static const char *const bad[] = {"redis://:s3cret@127.0.0.1:70000", "redis://ranker:s3cret@[::1",
                                      "redis://:s3/cret@127.0.0.1", "http://:s3cret@x", "redis://s3cret@h:1/x",
                                      NULL};
    for (const char *const *b = bad; *b; b++) {
        ck_assert_int_eq(iqp_redis_url_parse(*b, &u, err, sizeof err), -1);
        ck_assert_msg(!strstr(err, "s3") && !strstr(err, "cret") && strstr(err, "***"), "%s -> %s", *b, err);
    }
    iqp_redis_url_mask("redis://ranker:pw@127.0.0.1:1/0", shown, sizeof shown);
    ck_assert_str_eq(shown, "redis://ranker:***@127.0.0.1:1/0");
    iqp_redis_url_mask("redis://pw@127.0.0.1", shown, sizeof shown);
    ck_assert_str_eq(shown, "redis://***@127.0.0.1");
    iqp_redis_url_mask("unix:///run/redis.sock?db=1", shown, sizeof shown);
    ck_assert_str_eq(shown, "unix:///run/redis.sock?db=1");
    /* every command that takes a URL: a bad one is a usage error that
     * does not echo the password */
    static const char *const cmds[] = {
        "lookup --redis 'redis://:s3cret@127.0.0.1:0' --query q -- a",
        "publish --store /nonexistent --redis 'redis://:s3cret@127.0.0.1:0'",
        "refresh --store /nonexistent --redis 'redis://u:s3cret@127.0.0.1:99999'",
        "stream --store /nonexistent --brokers 127.0.0.1:1 --redis 'redis://:s3cret@[::1'", NULL};
    for (const char *const *c = cmds; *c; c++) {
        char *out = NULL, *cmd = tu_fmt("'%s' %s 2>&1", tu_iqp(), *c);
        int rc = tu_run(cmd, &out);
        ck_assert_msg(rc == 2 && !strstr(out, "s3cret") && strstr(out, "***"), "%s: exit %d: %s", *c, rc, out);
        free(out), free(cmd);
    }
}
END_TEST

/* ---- the published store ------------------------------------------------------------ */

typedef struct context {
    const char *query, *country, *gender;
    const char *items[MAX_ITEMS];
    size_t n_items;
} context;

static char *setup_error, *dir, *store, *traffic, *redis_url;
static char *lookup_cmd(const char *source, const context *c);
static oracle *orc;
static int redis_port;
static pid_t redis_pid;
static context contexts[N_CONTEXTS];
static size_t n_contexts;

static void fail_setup(const char *what) {
    if (!setup_error) setup_error = tu_fmt("redis setup: %s", what);
}

/* Republishes everything (after a test changed Redis). */
static int publish_all(void) {
    return tu_run_ok(tu_fmt("'%s' publish --store '%s' --redis %s --all --quiet", tu_iqp(), store, redis_url));
}

static void choose_contexts(void) {
    static const char *const genders[3] = {"female", "male", "unknown"};
    const char *country = oracle_n_countries(orc) ? oracle_country(orc, 0, NULL) : "ZZ";
    for (size_t q = 0; q < oracle_n_queries(orc) && n_contexts < N_CONTEXTS; q += 1 + q / 3) {
        context *c = &contexts[n_contexts];
        size_t n;
        c->query = oracle_query(orc, q, NULL);
        const char *const *items = oracle_query_items(orc, c->query, &n);
        c->country = n_contexts % 4 == 3 ? "ZZ" : country;
        c->gender = genders[n_contexts % 3];
        for (c->n_items = 0; c->n_items < n && c->n_items < MAX_ITEMS - 1; c->n_items++)
            c->items[c->n_items] = items[c->n_items];
        c->items[c->n_items++] = "never-shown-item";
        n_contexts++;
    }
}

static void redis_setup(void) {
    if (!(dir = tu_mkdtemp("redis"))) return fail_setup("no temp dir");
    store = tu_fmt("%s/store", dir);
    traffic = tu_fmt("%s/traffic.jsonl", dir);
    if (!tu_run_ok(tu_fmt("'%s' gen --seed 5 --impressions 3000 --start %lld --span 6h --out '%s'", tu_iqp(),
                       START_MS, traffic)))
        return fail_setup("iqp gen failed");
    if (!tu_run_ok(tu_fmt("'%s' backfill --store '%s' --dead-letter '%s/dl.jsonl' '%s' 2>/dev/null", tu_iqp(),
                       store, dir, traffic)))
        return fail_setup("iqp backfill failed");
    orc = oracle_new((int64_t)time(NULL) * 1000);
    if (oracle_load_file(orc, traffic) < 0) return fail_setup("the oracle cannot read the traffic");
    choose_contexts();
    redis_port = tu_free_port();
    redis_url = tu_fmt("redis://127.0.0.1:%d/0", redis_port);
    char *log = tu_fmt("%s/redis.log", dir);
    redis_pid = tu_redis_start(redis_port, log);
    free(log);
    if (redis_pid <= 0) return fail_setup("redis-server did not start");
    if (!publish_all()) fail_setup("iqp publish --all failed");
}

static void redis_teardown(void) {
    if (redis_pid > 0) {
        kill(redis_pid, SIGCONT);
        tu_stop_pid(redis_pid, SIGKILL, 5000);
    }
    if (dir) tu_rmrf(dir);
    oracle_free(orc);
    free(dir);
    free(store);
    free(traffic);
    free(redis_url);
    free(setup_error);
}

static void require_setup(void) { ck_assert_msg(setup_error == NULL, "%s", setup_error); }

/* A Redis reply, trailing newline removed (malloc'd). */
static char *redis_get(const char *args) {
    char *out = tu_redis_cli(redis_port, args);
    ck_assert_msg(out != NULL, "redis-cli %s failed", args);
    out[strcspn(out, "\n")] = 0;
    return out;
}

static iqp_client *open_client(int timeout_ms) {
    iqp_client_options o;
    iqp_client_options_init(&o);
    o.timeout_ms = timeout_ms;
    iqp_client *c = iqp_client_open(redis_url, &o);
    ck_assert_ptr_nonnull(c);
    ck_assert_msg(iqp_client_status(c) == IQP_OK, "open: %s", iqp_client_errstr(c));
    return c;
}

/* Compares one context's libiqp answer with the oracle; returns the
 * number of values compared. */
static uint64_t compare_context(iqp_client *cl, const context *c) {
    size_t nf = iqp_client_n_features(cl), nw = iqp_client_n_windows(cl), nm = iqp_client_n_measures(cl);
    ck_assert_uint_eq(nf, ORACLE_N_FEATURES);
    ck_assert_uint_eq(nw, ORACLE_N_WINDOWS);
    ck_assert_uint_eq(nm, 1 + 2 * ORACLE_N_COUNTERS);
    size_t len = iqp_client_result_len(cl, c->n_items);
    double *got = malloc(len * sizeof *got);
    oracle_counts *want = calloc(nf * nw * c->n_items, sizeof *want);
    int applicable[ORACLE_N_FEATURES];
    oracle_lookup(orc, c->query, c->country, c->gender, oracle_watermark(orc), c->items, c->n_items, applicable,
                  want);
    iqp_status s = iqp_client_lookup(cl, c->query, c->country, c->gender, c->items, c->n_items, got, len);
    ck_assert_msg(s == IQP_OK, "lookup '%s': %s", c->query, iqp_client_errstr(cl));
    uint64_t compared = 0;
    for (size_t i = 0; i < c->n_items; i++)
        for (size_t f = 0; f < nf; f++)
            for (size_t w = 0; w < nw; w++) {
                const double *g = &got[((i * nf + f) * nw + w) * nm];
                const oracle_counts *o = applicable[f] ? &want[(f * nw + w) * c->n_items + i] : NULL;
                int m = oracle_measures_differ(o, g);
                ck_assert_msg(m < 0, "'%s' %s f%zu w%zu: measure %s is %.17g, not the oracle's", c->query,
                              c->items[i], f, w, iqp_client_measure_name(cl, (size_t)(m < 0 ? 0 : m)), g[m < 0 ? 0 : m]);
                compared += applicable[f] ? nm : 0;
            }
    free(got);
    free(want);
    return compared;
}

START_TEST(libiqp_equals_the_oracle) {
    require_setup();
    iqp_client *cl = open_client(2000);
    uint64_t compared = 0, nonzero_engaged = 0;
    for (size_t ci = 0; ci < n_contexts; ci++) compared += compare_context(cl, &contexts[ci]);
    /* the comparison is not vacuous: the chosen contexts have engagement */
    int applicable[ORACLE_N_FEATURES];
    for (size_t ci = 0; ci < n_contexts; ci++) {
        const context *c = &contexts[ci];
        oracle_counts *want = calloc(ORACLE_N_FEATURES * ORACLE_N_WINDOWS * c->n_items, sizeof *want);
        oracle_lookup(orc, c->query, c->country, c->gender, oracle_watermark(orc), c->items, c->n_items,
                      applicable, want);
        for (size_t k = 0; k < c->n_items; k++) nonzero_engaged += want[k].c[1] > 0;
        free(want);
    }
    fprintf(stderr, "redis: %" PRIu64 " libiqp values equal the oracle (%" PRIu64 " engaged items)\n",
            compared, nonzero_engaged);
    ck_assert_uint_gt(nonzero_engaged, 0);
    /* raw query text is normalized like events */
    double *a = malloc(iqp_client_result_len(cl, 1) * sizeof *a), *b = malloc(iqp_client_result_len(cl, 1) * sizeof *b);
    char shouted[512];
    snprintf(shouted, sizeof shouted, "  %s  ", contexts[0].query);
    for (char *p = shouted; *p; p++)
        if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 'a' + 'A');
    ck_assert_int_eq(iqp_client_lookup(cl, contexts[0].query, "ZZ", NULL, contexts[0].items, 1, a,
                                       iqp_client_result_len(cl, 1)), IQP_OK);
    ck_assert_int_eq(iqp_client_lookup(cl, shouted, "zz", NULL, contexts[0].items, 1, b,
                                       iqp_client_result_len(cl, 1)), IQP_OK);
    for (size_t k = 0; k < iqp_client_result_len(cl, 1); k++)
        ck_assert(memcmp(&a[k], &b[k], sizeof a[k]) == 0);
    ck_assert_int_eq(iqp_client_lookup(cl, "x", NULL, NULL, contexts[0].items, 1, a, 3), IQP_EINVAL);
    free(a);
    free(b);
    iqp_client_close(cl);
}
END_TEST

/* A bad call between good calls (issue 13, item 4): every argument is
 * checked before anything is queued on the connection, and a call that
 * fails with replies still owed drops them, so the good calls after a bad
 * one still equal the oracle. */
START_TEST(bad_call_between_good_calls) {
    require_setup();
    iqp_client *cl = open_client(2000);
    const context *c = &contexts[0];
    size_t len = iqp_client_result_len(cl, c->n_items);
    double *v = malloc(len * sizeof *v);
    char *long_query = malloc(9001);
    memset(long_query, 'a', 9000);
    long_query[9000] = 0;
    const char *null_item[2] = {c->items[0], NULL};
    compare_context(cl, c);
    /* each bad call returns its own error; the next good call is right */
    ck_assert_int_eq(iqp_client_lookup(cl, long_query, c->country, c->gender, c->items, c->n_items, v, len),
                     IQP_EINVAL);
    ck_assert_msg(strstr(iqp_client_errstr(cl), "too long"), "%s", iqp_client_errstr(cl));
    compare_context(cl, c);
    ck_assert_int_eq(iqp_client_lookup(cl, "\xff\xfe", c->country, c->gender, c->items, c->n_items, v, len),
                     IQP_EINVAL);
    compare_context(cl, &contexts[1]);
    ck_assert_int_eq(iqp_client_lookup(cl, c->query, c->country, c->gender, null_item, 2, v, len), IQP_EINVAL);
    compare_context(cl, c);
    ck_assert_int_eq(iqp_client_lookup(cl, c->query, c->country, c->gender, c->items, c->n_items, v, len - 1),
                     IQP_EINVAL);
    compare_context(cl, &contexts[2]);
    /* a value that is not the layout's: the call fails after its whole
     * pipeline was sent; its other replies must not reach the next call */
    redisContext *rc = redisConnect("127.0.0.1", redis_port);
    ck_assert(rc && !rc->err);
    redisReply *r = redisCommand(rc, "GET iqp:gen");
    ck_assert(r && r->type == REDIS_REPLY_STRING);
    char *key = tu_fmt("iqp:%s:q_item:%s", r->str, c->query);
    freeReplyObject(r);
    /* a mask of 512: a bit far beyond the counters */
    freeReplyObject(redisCommand(rc, "HSET %s planted-item %b", key, "\x80\x04", (size_t)2));
    const char *planted[2] = {c->items[0], "planted-item"};
    ck_assert_int_eq(iqp_client_lookup(cl, c->query, c->country, c->gender, planted, 2, v, len), IQP_EPROTOCOL);
    compare_context(cl, c);
    ck_assert_int_eq(iqp_client_lookup(cl, long_query, NULL, NULL, c->items, 1, v, len), IQP_EINVAL);
    compare_context(cl, &contexts[3]);
    freeReplyObject(redisCommand(rc, "HDEL %s planted-item", key));
    redisFree(rc);
    free(key);
    free(long_query);
    free(v);
    iqp_client_close(cl);
}
END_TEST

/* The URL from $IQP_REDIS_URL or --redis-url-file reads what --redis
 * reads; a password in it is never printed, even when Redis refuses it. */
START_TEST(url_from_env_and_file) {
    require_setup();
    const context *c = &contexts[0];
    char *file = tu_fmt("%s/redis.url", dir), *direct = tu_fmt("--redis %s", redis_url);
    char *write = tu_fmt("printf '%%s\\n' '%s' > '%s'", redis_url, file);
    ck_assert(tu_run_ok(write));
    char *via_file = tu_fmt("--redis-url-file '%s'", file);
    char *c1 = lookup_cmd(direct, c), *c2 = lookup_cmd(via_file, c), *c3 = lookup_cmd("", c);
    char *c3env = tu_fmt("IQP_REDIS_URL='%s' %s", redis_url, c3);
    char *o1 = NULL, *o2 = NULL, *o3 = NULL;
    ck_assert(tu_run(c1, &o1) == 0 && tu_run(c2, &o2) == 0 && tu_run(c3env, &o3) == 0);
    ck_assert_msg(strlen(o1) > 100 && strcmp(o1, o2) == 0 && strcmp(o1, o3) == 0,
                  "--redis printed\n%s\n--redis-url-file printed\n%s\n$IQP_REDIS_URL printed\n%s", o1, o2, o3);
    /* iqp publish from the environment */
    char *pub = tu_fmt("IQP_REDIS_URL='%s' '%s' publish --store '%s' --quiet", redis_url, tu_iqp(), store);
    ck_assert(tu_run_ok(pub));
    /* a missing file and an empty one are usage errors naming the file */
    char *out = NULL, *cmd = tu_fmt("'%s' lookup --redis-url-file '%s/none' --query q -- a 2>&1", tu_iqp(), dir);
    ck_assert_int_eq(tu_run(cmd, &out), 2);
    ck_assert_msg(strstr(out, "/none"), "%s", out);
    free(out), free(cmd);
    /* a wrong password: the failure names the server, never the password */
    char *bad = tu_fmt("printf 'redis://:s3cret@127.0.0.1:%d/0\\n' > '%s'", redis_port, file);
    ck_assert(tu_run_ok(bad));
    cmd = tu_fmt("'%s' lookup --redis-url-file '%s' --query q -- a 2>&1", tu_iqp(), file);
    int rc = tu_run(cmd, &out);
    ck_assert_msg(rc == 1 && !strstr(out, "s3cret") && strstr(out, "AUTH"), "exit %d: %s", rc, out);
    free(out), free(cmd);
    free(o1), free(o2), free(o3), free(c1), free(c2), free(c3), free(c3env);
    free(via_file), free(file), free(direct);
}
END_TEST

/* ---- hostile replies (issue 13, item 5) ------------------------------------------ */

/* A fake Redis on loopback: answers the client's open like the real one
 * (GET gen, HMGET meta with the real layout), then answers a lookup's
 * pipeline with a huge array or a huge string, and counts what it
 * managed to send before the client hung up. */
typedef struct fake_redis {
    int listen_fd, port;
    int huge_array;          /* else a huge bulk string; 2: a small array nesting an array */
    char *meta_reply;        /* RESP of HMGET meta */
    atomic_int stop;
    atomic_size_t sent;      /* bytes of the hostile reply sent */
    pthread_t thread;
} fake_redis;

#define HOSTILE_CAP ((size_t)96 << 20)

static int send_all(int fd, const char *b, size_t n) {
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        b += w, n -= (size_t)w;
    }
    return 0;
}

static void send_hostile(fake_redis *f, int fd) {
    char chunk[65536];
    if (f->huge_array == 2) {
        const char *nested = "$1\r\n1\r\n*3\r\n$0\r\n\r\n*1\r\n:1\r\n$1\r\nx\r\n";
        send_all(fd, nested, strlen(nested));
        return;
    }
    const char *head = f->huge_array ? "$1\r\n1\r\n*4000000\r\n" : "$1\r\n1\r\n$100000000\r\n";
    if (send_all(fd, head, strlen(head)) < 0) return;
    for (size_t i = 0; i < sizeof chunk; i += 4) memcpy(chunk + i, f->huge_array ? ":1\r\n" : "xxxx", 4);
    size_t total = f->huge_array ? 16000000 : 100000000;
    for (size_t done = 0; done < total && done < HOSTILE_CAP && !atomic_load(&f->stop); done += sizeof chunk) {
        if (send_all(fd, chunk, sizeof chunk) < 0) return;
        atomic_fetch_add(&f->sent, sizeof chunk);
    }
}

static void serve_one(fake_redis *f, int fd) {
    char buf[65536];
    ssize_t n;
    while (!atomic_load(&f->stop) && (n = recv(fd, buf, sizeof buf - 1, 0)) > 0) {
        buf[n] = 0;
        if (strstr(buf, "meta")) {
            if (send_all(fd, f->meta_reply, strlen(f->meta_reply)) < 0) return;
        } else if (strstr(buf, "HMGET")) {
            send_hostile(f, fd);
            return;
        } else if (strstr(buf, "GET")) {
            if (send_all(fd, "$1\r\n1\r\n", 7) < 0) return;
        }
    }
}

static void *fake_main(void *arg) {
    fake_redis *f = arg;
    while (!atomic_load(&f->stop)) {
        struct pollfd p = {.fd = f->listen_fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        int fd = accept(f->listen_fd, NULL, NULL);
        if (fd < 0) continue;
        serve_one(f, fd);
        close(fd);
    }
    return NULL;
}

static void fake_start(fake_redis *f, int huge_array) {
    memset(f, 0, sizeof *f);
    f->huge_array = huge_array;
    redisContext *rc = redisConnect("127.0.0.1", redis_port);
    ck_assert(rc && !rc->err);
    redisReply *g = redisCommand(rc, "GET iqp:gen");
    redisReply *m = redisCommand(rc, "HMGET iqp:%s:meta layout_version fingerprint layout", g->str);
    ck_assert(m && m->type == REDIS_REPLY_ARRAY && m->elements == 3);
    f->meta_reply = tu_fmt("*3\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n", m->element[0]->len,
                           m->element[0]->str, m->element[1]->len, m->element[1]->str, m->element[2]->len,
                           m->element[2]->str);
    freeReplyObject(m), freeReplyObject(g), redisFree(rc);
    f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(f->listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(f->listen_fd, 4), 0);
    socklen_t alen = sizeof a;
    getsockname(f->listen_fd, (struct sockaddr *)&a, &alen);
    f->port = ntohs(a.sin_port);
    ck_assert_int_eq(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static void fake_stop(fake_redis *f) {
    atomic_store(&f->stop, 1);
    pthread_join(f->thread, NULL);
    close(f->listen_fd);
    free(f->meta_reply);
}

/* Opens a client on url (which must open) and looks up contexts[0] once;
 * the status, and the client's message in err. */
static iqp_status lookup_once(const char *url, char *err, size_t cap) {
    iqp_client_options o;
    iqp_client_options_init(&o);
    o.timeout_ms = 5000;
    iqp_client *cl = iqp_client_open(url, &o);
    ck_assert_msg(iqp_client_status(cl) == IQP_OK, "open on %s: %s", url, iqp_client_errstr(cl));
    const context *c = &contexts[0];
    size_t len = iqp_client_result_len(cl, c->n_items);
    double *v = malloc(len * sizeof *v);
    iqp_status s = iqp_client_lookup(cl, c->query, c->country, c->gender, c->items, c->n_items, v, len);
    snprintf(err, cap, "%s", iqp_client_errstr(cl));
    free(v);
    iqp_client_close(cl);
    return s;
}

/* Both shapes of hostile reply fail the call with a message saying what
 * was refused, after reading a bounded amount; `iqp lookup --redis`
 * exits 1 saying so. */
START_TEST(hostile_replies_are_bounded) {
    require_setup();
    for (int huge_array = 0; huge_array < 2; huge_array++) {
        fake_redis f;
        fake_start(&f, huge_array);
        char *url = tu_fmt("redis://127.0.0.1:%d/0", f.port), err[600];
        iqp_status s = lookup_once(url, err, sizeof err);
        size_t sent = atomic_load(&f.sent);
        fprintf(stderr, "redis: a huge %s: %s after the fake sent %zu bytes: %s\n", huge_array ? "array" : "string",
                iqp_status_name(s), sent, err);
        ck_assert_int_eq(s, IQP_EPROTOCOL);
        ck_assert_ptr_nonnull(strstr(err, huge_array ? "elements" : "string"));
        ck_assert_uint_lt(sent, (size_t)32 << 20);
        char *out = NULL, *cmd = tu_fmt("'%s' lookup --redis %s --query %s -- a 2>&1", tu_iqp(), url,
                                        huge_array ? "x" : "y");
        int rc = tu_run(cmd, &out);
        ck_assert_msg(rc == 1 && strstr(out, "refused"), "lookup --redis on a hostile server: exit %d: %s", rc, out);
        free(out), free(cmd), free(url);
        fake_stop(&f);
    }
}
END_TEST

/* An HMGET answered with an array inside the array (libiqp reads the
 * lookup's replies flat, client/redis_conn.h): the call fails naming it,
 * and the next call on a real server is right. */
START_TEST(nested_array_reply_is_refused) {
    require_setup();
    fake_redis f;
    fake_start(&f, 2);
    char *url = tu_fmt("redis://127.0.0.1:%d/0", f.port), err[600];
    iqp_status s = lookup_once(url, err, sizeof err);
    ck_assert_msg(s == IQP_EPROTOCOL && strstr(err, "nests an array"), "%s: %s", iqp_status_name(s), err);
    fake_stop(&f);
    free(url);
    url = tu_fmt("redis://127.0.0.1:%d/0", redis_port);
    s = lookup_once(url, err, sizeof err);
    ck_assert_msg(s == IQP_OK, "%s: %s", iqp_status_name(s), err);
    free(url);
}
END_TEST

/* A huge value planted in the real Redis: that call fails, bounded; the
 * next call (without it) is right. */
START_TEST(huge_value_in_redis_is_refused) {
    require_setup();
    const context *c = &contexts[0];
    redisContext *rc = redisConnect("127.0.0.1", redis_port);
    ck_assert(rc && !rc->err);
    redisReply *r = redisCommand(rc, "GET iqp:gen");
    char *key = tu_fmt("iqp:%s:q_item:%s", r->str, c->query);
    freeReplyObject(r);
    size_t big = (size_t)24 << 20;
    char *junk = malloc(big);
    memset(junk, 0x7f, big);
    freeReplyObject(redisCommand(rc, "HSET %s huge-item %b", key, junk, big));
    free(junk);
    iqp_client *cl = open_client(5000);
    const char *items[2] = {c->items[0], "huge-item"};
    size_t len = iqp_client_result_len(cl, 2);
    double *v = malloc(len * sizeof *v);
    ck_assert_int_eq(iqp_client_lookup(cl, c->query, c->country, c->gender, items, 2, v, len), IQP_EPROTOCOL);
    ck_assert_msg(strstr(iqp_client_errstr(cl), "string"), "%s", iqp_client_errstr(cl));
    compare_context(cl, c);
    freeReplyObject(redisCommand(rc, "HDEL %s huge-item", key));
    redisFree(rc);
    free(key), free(v);
    iqp_client_close(cl);
}
END_TEST

static char *lookup_cmd(const char *source, const context *c) {
    return tu_lookup_cmd(source, c->query, c->country, c->gender, c->items, c->n_items);
}

START_TEST(lookup_redis_equals_lookup_store) {
    require_setup();
    char *gen = redis_get("GET iqp:gen"), *args = tu_fmt("HGET iqp:%s:meta as_of_ms", gen), *as_of = redis_get(args);
    char *redis_src = tu_fmt("--redis %s", redis_url), *store_src = tu_fmt("--store '%s' --as-of %s", store, as_of);
    size_t lines = 0;
    for (size_t ci = 0; ci < n_contexts; ci++) {
        char *c1 = lookup_cmd(redis_src, &contexts[ci]), *c2 = lookup_cmd(store_src, &contexts[ci]);
        char *o1 = NULL, *o2 = NULL;
        ck_assert_msg(tu_run(c1, &o1) == 0, "failed: %s", c1);
        ck_assert_msg(tu_run(c2, &o2) == 0, "failed: %s", c2);
        ck_assert_msg(strcmp(o1, o2) == 0, "%s\nprinted\n%s\nbut %s printed\n%s", c1, o1, c2, o2);
        for (const char *p = o1; (p = strchr(p, '\n')); p++) lines++;
        free(o1);
        free(o2);
        free(c1);
        free(c2);
    }
    fprintf(stderr, "redis: %zu lookup --redis lines equal lookup --store --as-of %s\n", lines, as_of);
    ck_assert_uint_gt(lines, n_contexts);
    free(redis_src);
    free(store_src);
    free(as_of);
    free(args);
    free(gen);
}
END_TEST

/* The README's example, between its markers, compiled against the
 * installed libiqp.pc, prints what libiqp returns. */
START_TEST(readme_example_compiles_and_runs) {
    require_setup();
    char *inst = tu_fmt("%s/inst", dir), *src = tu_fmt("%s/ranker.c", dir), *exe = tu_fmt("%s/ranker", dir);
    ck_assert_msg(tu_run_ok(tu_fmt("make -s -C '%s' install-libLTLIBRARIES install-includeHEADERS "
                                "install-pkgconfigDATA DESTDIR='%s' >'%s/install.log' 2>&1",
                                IQP_BUILDDIR, inst, dir)),
                  "make install into %s failed (see %s/install.log)", inst, dir);
    ck_assert_msg(tu_run_ok(tu_fmt("sed -n '/<!-- libiqp example begin -->/,/<!-- libiqp example end -->/p' "
                                "'%s/README.md' | sed '1,/^```c$/d; /^```$/,$d' > '%s'", IQP_SRCDIR, src)),
                  "cannot extract the example");
    size_t len = 0;
    free(tu_read_file(src, &len));
    ck_assert_msg(len > 200, "the README example between its markers is missing or empty");
    /* the libdir under DESTDIR is whatever configure chose */
    char *pc_dir = NULL;
    char *find_pc = tu_fmt("dirname \"$(find '%s' -name libiqp.pc | head -n 1)\"", inst);
    ck_assert(tu_run(find_pc, &pc_dir) == 0);
    free(find_pc);
    pc_dir[strcspn(pc_dir, "\n")] = 0;
    char *env = tu_fmt("PKG_CONFIG_PATH='%s' PKG_CONFIG_SYSROOT_DIR='%s'", pc_dir, inst);
    ck_assert_msg(tu_run_ok(tu_fmt("%s sh -c 'cc %s -std=c11 -Wall -Wextra -Werror -o \"%s\" \"%s\" "
                                "$(pkg-config --cflags --libs libiqp) -lm' 2>'%s/cc.log'",
                                env, IQP_BUILD_CFLAGS, exe, src, dir)),
                  "the README example does not compile against libiqp.pc (see %s/cc.log)", dir);
    const context *c = &contexts[0];
    char *q = tu_shell_quote(c->query), *i0 = tu_shell_quote(c->items[0]), *i1 = tu_shell_quote(c->items[1]);
    char *out = NULL, *cmd = tu_fmt("LD_LIBRARY_PATH=\"$(dirname '%s')\" '%s' %s %s %s %s %s %s", pc_dir, exe,
                                    redis_url, q, c->country, c->gender, i0, i1);
    ck_assert_msg(tu_run(cmd, &out) == 0, "the README example failed: %s", cmd);
    /* expected: libiqp's own answer, printed the way the example prints */
    iqp_client *cl = open_client(2000);
    size_t nf = iqp_client_n_features(cl), nw = iqp_client_n_windows(cl), nm = iqp_client_n_measures(cl);
    double *v = malloc(iqp_client_result_len(cl, 2) * sizeof *v);
    ck_assert_int_eq(iqp_client_lookup(cl, c->query, c->country, c->gender, c->items, 2, v,
                                       iqp_client_result_len(cl, 2)), IQP_OK);
    char *want = NULL;
    size_t wlen = 0;
    FILE *f = open_memstream(&want, &wlen);
    for (size_t i = 0; i < 2; i++)
        for (size_t fi = 0; fi < nf; fi++)
            for (size_t w = 0; w < nw; w++) {
                const double *m = &v[((i * nf + fi) * nw + w) * nm];
                fprintf(f, "%s %s %s impressions=%.0f engaged=%.0f iqp_engaged=%.6f\n", c->items[i],
                        iqp_client_feature_name(cl, fi), iqp_client_window_name(cl, w), m[1], m[2],
                        m[1 + ORACLE_N_COUNTERS + 1]);
            }
    fclose(f);
    ck_assert_msg(strcmp(out, want) == 0, "the README example printed\n%s\nlibiqp says\n%s", out, want);
    /* the Python reader of schemas/redis-layout.md (Debian's python3 and
     * python3-redis, which ops/setup installs), written from the
     * document alone, prints the same */
    char *py = tu_fmt("%s/read_iqp.py", dir), *py_out = NULL;
    ck_assert(tu_run_ok(tu_fmt("sed -n '/<!-- python reader begin -->/,/<!-- python reader end -->/p' "
                            "'%s/schemas/redis-layout.md' | sed '1,/^```python$/d; /^```$/,$d' > '%s'",
                            IQP_SRCDIR, py)));
    char *py_cmd = tu_fmt("/usr/bin/python3 '%s' %s %s %s %s %s %s", py, redis_url, q, c->country, c->gender, i0, i1);
    ck_assert_msg(tu_run(py_cmd, &py_out) == 0, "the Python reader failed: %s", py_cmd);
    ck_assert_msg(strcmp(py_out, want) == 0, "the Python reader printed\n%s\nlibiqp says\n%s", py_out, want);
    free(py_out);
    free(py_cmd);
    /* with --json it prints what `iqp lookup --redis` prints, byte for byte
     * (the document's formatting rules) */
    char *lk_out = NULL, *lk_cmd = tu_fmt("'%s' lookup --redis %s --query %s --country %s --gender %s -- %s %s",
                                          tu_iqp(), redis_url, q, c->country, c->gender, i0, i1);
    py_cmd = tu_fmt("/usr/bin/python3 '%s' --json %s %s %s %s %s %s", py, redis_url, q, c->country, c->gender, i0, i1);
    ck_assert(tu_run(lk_cmd, &lk_out) == 0);
    ck_assert_msg(tu_run(py_cmd, &py_out) == 0, "the Python reader failed: %s", py_cmd);
    ck_assert_msg(strlen(lk_out) > 100 && strcmp(py_out, lk_out) == 0,
                  "the Python reader --json printed\n%s\niqp lookup --redis printed\n%s", py_out, lk_out);
    free(py_out), free(py_cmd), free(lk_out), free(lk_cmd);
    /* an empty field value is a broken value, not zeros: both refuse it */
    redisContext *rc = redisConnect("127.0.0.1", redis_port);
    ck_assert(rc && !rc->err);
    redisReply *g = redisCommand(rc, "GET iqp:gen");
    char *key = tu_fmt("iqp:%s:q_item:%s", g->str, c->query);
    freeReplyObject(g);
    freeReplyObject(redisCommand(rc, "HSET %s empty-item %b", key, "", (size_t)0));
    py_cmd = tu_fmt("/usr/bin/python3 '%s' %s %s %s %s empty-item 2>/dev/null", py, redis_url, q, c->country, c->gender);
    ck_assert_msg(tu_run(py_cmd, NULL) != 0, "the Python reader took an empty value");
    const char *empty_item[1] = {"empty-item"};
    ck_assert_int_eq(iqp_client_lookup(cl, c->query, c->country, c->gender, empty_item, 1, v,
                                       iqp_client_result_len(cl, 1)), IQP_EPROTOCOL);
    freeReplyObject(redisCommand(rc, "HDEL %s empty-item", key));
    redisFree(rc);
    free(key), free(py_cmd);
    free(py);
    free(want);
    free(v);
    iqp_client_close(cl);
    free(out);
    free(cmd);
    free(q);
    free(i0);
    free(i1);
    free(env);
    free(pc_dir);
    free(inst);
    free(src);
    free(exe);
}
END_TEST

/* An unknown layout version is refused by readers and the publisher. */
START_TEST(unknown_layout_is_refused) {
    require_setup();
    char *gen = redis_get("GET iqp:gen"), *meta = tu_fmt("iqp:%s:meta", gen);
    char *set = tu_fmt("HSET %s layout_version 99", meta);
    free(redis_get(set));
    iqp_client_options o;
    iqp_client_options_init(&o);
    iqp_client *cl = iqp_client_open(redis_url, &o);
    ck_assert_int_eq(iqp_client_status(cl), IQP_ELAYOUT);
    ck_assert_msg(strstr(iqp_client_errstr(cl), "99"), "message does not name the version: %s",
                  iqp_client_errstr(cl));
    iqp_client_close(cl);
    char *out = NULL, *cmd = tu_fmt("'%s' lookup --redis %s --query x -- a 2>&1", tu_iqp(), redis_url);
    int rc = tu_run(cmd, &out);
    ck_assert_msg(rc != 0 && strstr(out, "layout"), "lookup --redis on layout 99: exit %d: %s", rc, out);
    free(out);
    free(cmd);
    cmd = tu_fmt("'%s' publish --store '%s' --redis %s 2>&1", tu_iqp(), store, redis_url);
    rc = tu_run(cmd, &out);
    ck_assert_msg(rc == 1 && strstr(out, "another layout"), "publish over layout 99: exit %d: %s", rc, out);
    free(out);
    free(cmd);
    /* restore: a Redis without iqp keys is filled again by --all */
    free(redis_get("FLUSHDB"));
    ck_assert(publish_all());
    free(set);
    free(meta);
    free(gen);
}
END_TEST

/* A Redis that stops answering: the call returns IQP_ETIMEOUT within its
 * bound; once Redis answers again the next call reconnects and works. */
START_TEST(client_times_out_and_recovers) {
    require_setup();
    iqp_client *cl = open_client(200);
    const context *c = &contexts[0];
    size_t len = iqp_client_result_len(cl, c->n_items);
    double *v = malloc(len * sizeof *v);
    ck_assert_int_eq(kill(redis_pid, SIGSTOP), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    iqp_status s = iqp_client_lookup(cl, c->query, c->country, c->gender, c->items, c->n_items, v, len);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_int_eq(kill(redis_pid, SIGCONT), 0);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    fprintf(stderr, "redis: lookup against a stopped Redis returned %s after %.0f ms: %s\n", iqp_status_name(s),
            ms, iqp_client_errstr(cl));
    ck_assert_int_eq(s, IQP_ETIMEOUT);
    ck_assert_msg(ms >= 150 && ms < 5000, "timed out after %.0f ms, bound 200 ms", ms);
    s = iqp_client_lookup(cl, c->query, c->country, c->gender, c->items, c->n_items, v, len);
    ck_assert_msg(s == IQP_OK, "after Redis answers again: %s", iqp_client_errstr(cl));
    free(v);
    iqp_client_close(cl);
}
END_TEST

/* ---- generations: `iqp refresh --redis` ------------------------------------------ */

typedef struct reader_state {
    const context *c;
    atomic_int stop;
    atomic_uint_fast64_t calls;
    uint64_t want[2];   /* digests of the old and the new generation's answer */
    uint64_t seen[2], other, errors;
} reader_state;

/* One libiqp answer for c, digested (XXH64 of the doubles' bytes). */
static int answer_digest(iqp_client *cl, const context *c, uint64_t *digest) {
    size_t len = iqp_client_result_len(cl, c->n_items);
    double *v = malloc(len * sizeof *v);
    iqp_status s = iqp_client_lookup(cl, c->query, c->country, c->gender, c->items, c->n_items, v, len);
    if (s == IQP_OK) *digest = XXH64(v, len * sizeof *v, 0);
    free(v);
    return s == IQP_OK ? 0 : -1;
}

/* A ranker: lookups in a loop until told to stop; every answer must be
 * one generation's answer, whole. */
static void *reader_main(void *arg) {
    reader_state *rs = arg;
    iqp_client_options o;
    iqp_client_options_init(&o);
    o.timeout_ms = 2000;
    iqp_client *cl = iqp_client_open(redis_url, &o);
    while (!atomic_load(&rs->stop)) {
        uint64_t d;
        rs->calls++;
        if (answer_digest(cl, rs->c, &d) < 0) rs->errors++;
        else if (d == rs->want[0]) rs->seen[0]++;
        else if (d == rs->want[1]) rs->seen[1]++;
        else rs->other++;
    }
    iqp_client_close(cl);
    return NULL;
}

/* Decodes the q_item top-K value of query q in generation gen, as the
 * lines `iqp refresh --dump` prints for it (schemas/redis-layout.md). */
static char *topk_lines(const char *gen, const char *q) {
    redisContext *rc = redisConnect("127.0.0.1", redis_port);
    ck_assert(rc && !rc->err);
    redisReply *r = redisCommand(rc, "GET iqp:%s:@top:q_item:%s", gen, q);
    ck_assert_msg(r && r->type == REDIS_REPLY_STRING, "no top-K key for '%s' in generation %s", q, gen);
    static const char *const windows[ORACLE_N_WINDOWS] = {"1d", "7d", "90d", "365d"};
    char *text = NULL;
    size_t tlen = 0, pos = 0;
    FILE *f = open_memstream(&text, &tlen);
    const unsigned char *b = (const unsigned char *)r->str;
    for (int w = 0; w < ORACLE_N_WINDOWS; w++) {
        uint64_t n = 0;
        for (int shift = 0; pos < r->len; shift += 7) {
            n |= (uint64_t)(b[pos] & 0x7f) << shift;
            if (!(b[pos++] & 0x80)) break;
        }
        fprintf(f, "topk q_item {query=\"%s\"} %s n=%" PRIu64, q, windows[w], n);
        for (uint64_t i = 0; i < n; i++) {
            uint64_t len = 0, bits = 0;
            for (int shift = 0; pos < r->len; shift += 7) {
                len |= (uint64_t)(b[pos] & 0x7f) << shift;
                if (!(b[pos++] & 0x80)) break;
            }
            ck_assert_uint_le(pos + len + 8, r->len);
            fprintf(f, " \"%.*s\"=", (int)len, (const char *)b + pos);
            pos += len;
            for (int k = 0; k < 8; k++) bits = bits << 8 | b[pos++];
            double v;
            memcpy(&v, &bits, 8);
            fprintf(f, "%.17g", v);
        }
        fputc('\n', f);
    }
    ck_assert_uint_eq(pos, r->len);
    fclose(f);
    freeReplyObject(r);
    redisFree(rc);
    return text;
}

/* Windows slide: as of a day and two hours after the traffic began, its
 * first hours leave the 1d window. `iqp refresh --redis` publishes that
 * as a new generation while a reader loops lookups; the reader sees the
 * old answer or the new one, never a mix; afterwards Redis equals the
 * store read as of that time, and the old generation's keys expire. */
START_TEST(refresh_swaps_generations_whole) {
    require_setup();
    const context *c = &contexts[0];
    int64_t t2 = START_MS + 26LL * 3600 * 1000;
    char *gen1 = redis_get("GET iqp:gen");
    /* the new generation's answer, computed apart: publish the store as of
     * t2 into another database and read it there */
    char *url2 = tu_fmt("redis://127.0.0.1:%d/1", redis_port);
    ck_assert(tu_run_ok(tu_fmt("'%s' refresh --store '%s' --as-of %lld --redis %s --quiet", tu_iqp(), store,
                            (long long)t2, url2)));
    iqp_client_options o;
    iqp_client_options_init(&o);
    iqp_client *cl = open_client(2000), *cl2 = iqp_client_open(url2, &o);
    ck_assert_msg(iqp_client_status(cl2) == IQP_OK, "%s", iqp_client_errstr(cl2));
    reader_state rs = {.c = c};
    ck_assert_int_eq(answer_digest(cl, c, &rs.want[0]), 0);
    ck_assert_int_eq(answer_digest(cl2, c, &rs.want[1]), 0);
    ck_assert_msg(rs.want[0] != rs.want[1], "the slide changed nothing for '%s': a vacuous test", c->query);
    iqp_client_close(cl2);
    pthread_t reader;
    ck_assert_int_eq(pthread_create(&reader, NULL, reader_main, &rs), 0);
    for (int i = 0; i < 10000 && atomic_load(&rs.calls) < 20; i++) usleep(1000);
    int rc = tu_run_ok(tu_fmt("'%s' refresh --store '%s' --as-of %lld --redis %s --grace-ms 300 --quiet", tu_iqp(),
                           store, (long long)t2, redis_url));
    uint64_t at_flip = atomic_load(&rs.calls);
    for (int i = 0; i < 10000 && atomic_load(&rs.calls) < at_flip + 20; i++) usleep(1000);
    atomic_store(&rs.stop, 1);
    pthread_join(reader, NULL);
    ck_assert_msg(rc, "iqp refresh --redis failed");
    fprintf(stderr, "redis: during the refresh %" PRIu64 " lookups: %" PRIu64 " old, %" PRIu64 " new, %" PRIu64
            " mixed, %" PRIu64 " errors\n", (uint64_t)atomic_load(&rs.calls), rs.seen[0], rs.seen[1], rs.other, rs.errors);
    ck_assert_uint_eq(rs.other, 0);
    ck_assert_uint_eq(rs.errors, 0);
    ck_assert_uint_gt(rs.seen[0], 0);
    ck_assert_uint_gt(rs.seen[1], 0);
    /* the served generation now equals the store as of t2, byte for byte */
    char *gen2 = redis_get("GET iqp:gen"), *args = tu_fmt("HGET iqp:%s:meta as_of_ms", gen2);
    char *as_of = redis_get(args);
    ck_assert_msg(strcmp(gen1, gen2) != 0, "the pointer did not move from %s", gen1);
    ck_assert_int_eq(strtoll(as_of, NULL, 10), t2);
    char *redis_src = tu_fmt("--redis %s", redis_url), *store_src = tu_fmt("--store '%s' --as-of %lld", store,
                                                                           (long long)t2);
    for (size_t ci = 0; ci < n_contexts; ci++) {
        char *c1 = lookup_cmd(redis_src, &contexts[ci]), *c2 = lookup_cmd(store_src, &contexts[ci]);
        char *o1 = NULL, *o2 = NULL;
        ck_assert(tu_run(c1, &o1) == 0 && tu_run(c2, &o2) == 0);
        ck_assert_msg(strcmp(o1, o2) == 0, "after the refresh %s\nprinted\n%s\nbut %s printed\n%s", c1, o1, c2, o2);
        free(o1), free(o2), free(c1), free(c2);
    }
    /* the old generation expires after its grace (bounded wait) */
    char *pattern = tu_fmt("KEYS 'iqp:%s:*'", gen1), *left = NULL;
    for (int waited = 0; waited < 10000; waited += 100) {
        free(left);
        left = tu_redis_cli(redis_port, pattern);
        if (left && !left[strspn(left, "\n")]) break;
        usleep(100000);
    }
    ck_assert_msg(left && !left[strspn(left, "\n")], "keys of generation %s still there: %.200s", gen1, left);
    /* the top-K lists in Redis are what the refresher computed (its dump) */
    char *dump_path = tu_fmt("%s/refresh.dump", dir);
    ck_assert(tu_run_ok(tu_fmt("'%s' refresh --store '%s' --as-of %lld --dump '%s' --quiet 2>/dev/null", tu_iqp(),
                            store, (long long)t2, dump_path)));
    char *dump = tu_read_file(dump_path, NULL), *lines = topk_lines(gen2, c->query);
    for (char *l = lines, *nl; *l; l = nl + 1) {
        nl = strchr(l, '\n');
        *nl = 0;
        char *want = tu_fmt("\n%s\n", l);
        ck_assert_msg(strstr(dump, want), "Redis top-K line not in the refresh dump: %s", l);
        free(want);
    }
    free(lines), free(dump), free(dump_path);
    free(left), free(pattern), free(redis_src), free(store_src), free(as_of), free(args), free(gen2);
    free(gen1);
    free(url2);
    iqp_client_close(cl);
    /* restore what the other tests expect: the store as of its watermark */
    free(redis_get("FLUSHALL"));
    ck_assert(publish_all());
}
END_TEST

/* ---- TTLs: the pointer and its generation live and die together (issue 18, item 3) ---- */

/* redis-cli on database db, trailing newline removed. */
static char *db_get(int db, const char *args) {
    char *a = tu_fmt("-n %d %s", db, args), *out = redis_get(a);
    free(a);
    return out;
}

static long long db_int(int db, const char *fmt, const char *arg) {
    char *args = tu_fmt(fmt, arg), *out = db_get(db, args);
    long long v = strtoll(out, NULL, 10);
    free(out), free(args);
    return v;
}

/* Waits (bounded) until the pointer of database db is gone. */
static int wait_pointer_gone(int db, int max_ms) {
    for (int waited = 0; waited <= max_ms; waited += 50) {
        char *g = db_get(db, "EXISTS iqp:gen");
        int gone = strcmp(g, "0") == 0;
        free(g);
        if (gone) return 1;
        usleep(50000);
    }
    return 0;
}

/* A TTL long enough for a full publish on a loaded machine (the
 * sanitizer build stretches it like Check's timeouts), short enough to
 * wait for. */
static int ttl_seconds(void) {
    int k = tu_timeout_multiplier();
    return 10 * (k <= 10 ? k : 1);
}

START_TEST(pointer_and_generation_expire_together) {
    require_setup();
    const int db = 2;
    int ttl = ttl_seconds(), published = 0;
    char *url = tu_fmt("redis://127.0.0.1:%d/%d", redis_port, db);
    /* a loaded machine can make the publish take half the TTL, which the
     * publisher refuses (tested below): then the TTL doubles, at most twice */
    for (int attempt = 0; attempt < 3 && !published; attempt++, ttl *= 2) {
        free(db_get(db, "FLUSHDB"));
        published = tu_run_ok(tu_fmt("'%s' publish --store '%s' --redis %s --all --redis-ttl %ds --quiet 2>/dev/null",
                                  tu_iqp(), store, url, ttl));
    }
    ttl /= 2;
    ck_assert_msg(published, "publish --all with a TTL up to %d s failed", ttl);
    /* publish --all hands out its generation number with INCR, as the
     * layout document says */
    char *gen = db_get(db, "GET iqp:gen"), *next = db_get(db, "GET iqp:gen:next");
    ck_assert_msg(strcmp(gen, next) == 0 && atoi(gen) >= 1, "iqp:gen %s, iqp:gen:next %s", gen, next);
    char *meta = tu_fmt("iqp:%s:meta", gen);
    long long t_gen = db_int(db, "PEXPIRETIME %s", "iqp:gen"), t_meta = db_int(db, "PEXPIRETIME %s", meta);
    ck_assert_msg(t_gen > 0 && t_gen == t_meta, "PEXPIRETIME of the pointer %lld, of its meta %lld", t_gen, t_meta);
    iqp_client_options o;
    iqp_client_options_init(&o);
    o.timeout_ms = 2000;
    iqp_client *cl = iqp_client_open(url, &o);
    ck_assert_msg(iqp_client_status(cl) == IQP_OK, "%s", iqp_client_errstr(cl));
    const context *c = &contexts[0];
    size_t len = iqp_client_result_len(cl, c->n_items);
    double *v = malloc(len * sizeof *v);
    ck_assert_int_eq(iqp_client_lookup(cl, c->query, c->country, c->gender, c->items, c->n_items, v, len), IQP_OK);
    /* after the TTL: no live generation, a distinct status, and the CLI says so */
    ck_assert_msg(wait_pointer_gone(db, 3000 * ttl), "iqp:gen still there %d s after a %d s TTL", 3 * ttl, ttl);
    ck_assert_int_eq(iqp_client_lookup(cl, c->query, c->country, c->gender, c->items, c->n_items, v, len),
                     IQP_NO_GENERATION);
    ck_assert_msg(strstr(iqp_client_errstr(cl), "no features published"), "%s", iqp_client_errstr(cl));
    iqp_client_close(cl);
    cl = iqp_client_open(url, &o);
    ck_assert_int_eq(iqp_client_status(cl), IQP_NO_GENERATION);
    iqp_client_close(cl);
    char *out = NULL, *cmd = tu_fmt("'%s' lookup --redis %s --query x -- a 2>&1", tu_iqp(), url);
    int rc = tu_run(cmd, &out);
    ck_assert_msg(rc == 1 && strstr(out, "no features published"), "exit %d: %s", rc, out);
    free(out), free(cmd);
    /* a refresh: every key of the new generation, its meta and the
     * pointer share one expiry instant */
    ck_assert(tu_run_ok(tu_fmt("'%s' refresh --store '%s' --as-of %lld --redis %s --redis-ttl %ds --quiet 2>/dev/null",
                            tu_iqp(), store, START_MS + 6LL * 3600 * 1000, url, 3 * ttl)));
    free(gen), free(meta);
    gen = db_get(db, "GET iqp:gen");
    meta = tu_fmt("iqp:%s:meta", gen);
    char *value_key = tu_fmt("'iqp:%s:q_item:%s'", gen, c->query), *top_key = tu_fmt("'iqp:%s:@top:q_item:%s'", gen,
                                                                                   c->query);
    t_gen = db_int(db, "PEXPIRETIME %s", "iqp:gen");
    ck_assert(t_gen > 0);
    ck_assert_int_eq(db_int(db, "PEXPIRETIME %s", meta), t_gen);
    ck_assert_int_eq(db_int(db, "PEXPIRETIME %s", value_key), t_gen);
    ck_assert_int_eq(db_int(db, "PEXPIRETIME %s", top_key), t_gen);
    /* a TTL shorter than twice the publish: refused, the old generation stays served */
    cmd = tu_fmt("IQP_FAILPOINT=generation.values=sleep:1200 '%s' refresh --store '%s' --as-of %lld --redis %s "
                 "--redis-ttl 2s --quiet 2>&1", tu_iqp(), store, START_MS + 6LL * 3600 * 1000, url);
    rc = tu_run(cmd, &out);
    ck_assert_msg(rc == 1 && strstr(out, "half the TTL"), "exit %d: %s", rc, out);
    char *after = db_get(db, "GET iqp:gen");
    ck_assert_str_eq(after, gen);
    free(out), free(cmd), free(after);
    /* the same for a full publish */
    free(db_get(db, "FLUSHDB"));
    cmd = tu_fmt("IQP_FAILPOINT=publish.resync=sleep:1200 '%s' publish --store '%s' --redis %s --all "
                 "--redis-ttl 2s 2>&1", tu_iqp(), store, url);
    rc = tu_run(cmd, &out);
    ck_assert_msg(rc == 1 && strstr(out, "shorter than twice"), "exit %d: %s", rc, out);
    free(out), free(cmd);
    free(db_get(db, "FLUSHDB"));
    free(value_key), free(top_key), free(v), free(meta), free(gen), free(next), free(url);
}
END_TEST

/* ---- a killed refresh (issue 13, item 10) ---------------------------------------- */

static pid_t spawn_sh(const char *cmd) {
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Keys of database db that belong to a generation other than the served one. */
static long long stale_keys(int db) {
    char *n = db_get(db, "EVAL \"local g = redis.call('GET', 'iqp:gen') local n = 0 "
                         "for _, k in ipairs(redis.call('KEYS', 'iqp:*')) do "
                         "local x = string.match(k, '^iqp:(%d+):') if x and x ~= g then n = n + 1 end end "
                         "return n\" 0");
    long long v = strtoll(n, NULL, 10);
    free(n);
    return v;
}

static uint64_t served_digest(const char *url, const context *c) {
    iqp_client_options o;
    iqp_client_options_init(&o);
    o.timeout_ms = 2000;
    iqp_client *cl = iqp_client_open(url, &o);
    ck_assert_msg(iqp_client_status(cl) == IQP_OK, "%s", iqp_client_errstr(cl));
    uint64_t d = 0;
    ck_assert_int_eq(answer_digest(cl, c, &d), 0);
    iqp_client_close(cl);
    return d;
}

/* kill -9 of `iqp refresh --redis` at each point of its publish: before
 * the flip readers keep the old generation whole, after it the new one
 * whole; the next refresh takes over the dead holder's lease at once,
 * and every key of the abandoned (or replaced) generation is collected. */
START_TEST(killed_refresh_leaves_nothing_half_done) {
    require_setup();
    const int db = 3;
    const context *c = &contexts[0];
    long long t2 = START_MS + 26LL * 3600 * 1000;
    char *url = tu_fmt("redis://127.0.0.1:%d/%d", redis_port, db), *url4 = tu_fmt("redis://127.0.0.1:%d/4", redis_port);
    free(db_get(4, "FLUSHDB"));
    ck_assert(tu_run_ok(tu_fmt("'%s' refresh --store '%s' --as-of %lld --redis %s --quiet 2>/dev/null", tu_iqp(), store,
                            t2, url4)));
    uint64_t d_new = served_digest(url4, c);
    free(db_get(4, "FLUSHDB"));
    static const char *const points[] = {"generation.meta", "generation.values", "generation.before_flip",
                                         "generation.after_flip"};
    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++) {
        free(db_get(db, "FLUSHDB"));
        ck_assert(tu_run_ok(tu_fmt("'%s' publish --store '%s' --redis %s --all --quiet", tu_iqp(), store, url)));
        uint64_t d_old = served_digest(url, c);
        ck_assert_msg(d_old != d_new, "the refresh changes nothing: a vacuous test");
        char *g0 = db_get(db, "GET iqp:gen");
        char *cmd = tu_fmt("IQP_FAILPOINT=%s=kill '%s' refresh --store '%s' --as-of %lld --redis %s --grace-ms 300 "
                           "--quiet 2>/dev/null", points[i], tu_iqp(), store, t2, url);
        int rc = tu_run(cmd, NULL);
        ck_assert_msg(rc == 128 + SIGKILL, "%s: the refresh was not killed (exit %d)", points[i], rc);
        char *g1 = db_get(db, "GET iqp:gen"), *lease = db_get(db, "EXISTS iqp:lease");
        ck_assert_msg(strcmp(lease, "1") == 0, "%s: the killed writer's lease is not there", points[i]);
        int flipped = strcmp(points[i], "generation.after_flip") == 0;
        ck_assert_msg(flipped ? strcmp(g0, g1) != 0 : strcmp(g0, g1) == 0, "%s: pointer %s -> %s", points[i], g0, g1);
        ck_assert_msg(served_digest(url, c) == (flipped ? d_new : d_old), "%s: readers see a mixed answer",
                      points[i]);
        /* the next refresh is not refused by the dead holder's lease */
        ck_assert_msg(tu_run_ok(tu_fmt("'%s' refresh --store '%s' --as-of %lld --redis %s --grace-ms 300 --quiet "
                                    "2>/dev/null", tu_iqp(), store, t2, url)),
                      "%s: the next refresh failed", points[i]);
        ck_assert(served_digest(url, c) == d_new);
        long long stale = -1;
        for (int waited = 0; waited < 10000 && (stale = stale_keys(db)) != 0; waited += 100) usleep(100000);
        ck_assert_msg(stale == 0, "%s: %lld keys of other generations left", points[i], stale);
        fprintf(stderr, "redis: refresh killed at %s: pointer %s -> %s, readers whole, next refresh took over, "
                "nothing left\n", points[i], g0, g1);
        free(cmd), free(g0), free(g1), free(lease);
    }
    /* a live writer is never overtaken: a second refresh is refused */
    char *slow = tu_fmt("IQP_FAILPOINT=generation.values=sleep:3000 '%s' refresh --store '%s' --as-of %lld "
                        "--redis %s --quiet 2>/dev/null", tu_iqp(), store, t2, url);
    pid_t pid = spawn_sh(slow);
    ck_assert_int_gt(pid, 0);
    char *g_before = db_get(db, "GET iqp:gen"), *meta_count = NULL;
    /* wait until the slow writer holds the lease and has written its meta */
    int waited = 0;
    for (; waited < 10000; waited += 50) {
        char *lease = db_get(db, "GET iqp:lease");
        int held = strstr(lease, "iqp refresh") != NULL;
        free(lease);
        if (held) break;
        usleep(50000);
    }
    ck_assert_msg(waited < 10000, "the slow refresh never took the lease");
    char *out = NULL, *cmd = tu_fmt("'%s' refresh --store '%s' --as-of %lld --redis %s --quiet 2>&1", tu_iqp(), store,
                                    t2, url);
    int rc = tu_run(cmd, &out);
    ck_assert_msg(rc == 1 && strstr(out, "being written by"), "a second writer: exit %d: %s", rc, out);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the slow refresh failed");
    char *g_after = db_get(db, "GET iqp:gen");
    ck_assert_msg(strcmp(g_before, g_after) != 0, "the slow refresh did not flip");
    free(db_get(db, "FLUSHDB"));
    free(out), free(cmd), free(slow), free(g_before), free(g_after), free(meta_count), free(url), free(url4);
}
END_TEST

/* A Redis that may evict keys without a TTL is reported (README, Redis settings). */
START_TEST(eviction_policy_is_reported) {
    require_setup();
    const int db = 6;
    char *url = tu_fmt("redis://127.0.0.1:%d/%d", redis_port, db), *out = NULL;
    free(redis_get("CONFIG SET maxmemory-policy allkeys-lru"));
    char *cmd = tu_fmt("'%s' publish --store '%s' --redis %s --all --quiet 2>&1", tu_iqp(), store, url);
    int rc = tu_run(cmd, &out);
    free(redis_get("CONFIG SET maxmemory-policy noeviction"));
    ck_assert_msg(rc == 0 && strstr(out, "maxmemory-policy allkeys-lru"), "exit %d: %s", rc, out);
    free(out);
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    ck_assert_msg(!strstr(out, "maxmemory-policy"), "warned under noeviction: %s", out);
    free(db_get(db, "FLUSHDB"));
    free(out), free(cmd), free(url);
}
END_TEST

/* ---- summaries that add up, a queue that coalesces (issue 18, items 4 and 6) ---- */

/* `iqp publish --all` into an empty Redis: the fields and hashes it
 * reports are the fields and hashes Redis holds. */
START_TEST(publish_summary_adds_up) {
    require_setup();
    const int db = 5;
    char *url = tu_fmt("redis://127.0.0.1:%d/%d", redis_port, db), *out = NULL;
    free(db_get(db, "FLUSHDB"));
    char *cmd = tu_fmt("'%s' publish --store '%s' --redis %s --all 2>&1", tu_iqp(), store, url);
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    unsigned long long fields = 0, items = 0, ctx_fields = 0, hashes = 0;
    ck_assert_msg(sscanf(out, "iqp publish: %llu fields (%llu item fields + %llu context fields) in %llu hashes",
                         &fields, &items, &ctx_fields, &hashes) == 4, "summary: %s", out);
    char *held = db_get(db, "EVAL \"local n, h = 0, 0 for _, k in ipairs(redis.call('KEYS', 'iqp:*')) do "
                            "if string.match(k, '^iqp:%d+:') and redis.call('TYPE', k).ok == 'hash' "
                            "and not string.match(k, ':meta$') then n = n + redis.call('HLEN', k) h = h + 1 end end "
                            "return n .. ' ' .. h\" 0");
    unsigned long long held_fields = 0, held_hashes = 0;
    ck_assert(sscanf(held, "%llu %llu", &held_fields, &held_hashes) == 2);
    fprintf(stderr, "redis: publish --all reported %llu fields in %llu hashes; Redis holds %llu fields in %llu hashes\n",
            fields, hashes, held_fields, held_hashes);
    ck_assert_uint_eq(items + ctx_fields, fields);
    ck_assert_uint_eq(fields, held_fields);
    ck_assert_uint_eq(hashes, held_hashes);
    ck_assert_uint_gt(fields, hashes);
    free(db_get(db, "FLUSHDB"));
    free(held), free(out), free(cmd), free(url);
}
END_TEST

typedef struct distinct_count {
    iqp_keybuf last;
    uint64_t n;
} distinct_count;

/* Counts distinct keys without their bucket suffix (in key order). */
static int count_distinct(void *ud, const unsigned char *key, size_t klen, const char *val, size_t vlen) {
    distinct_count *d = ud;
    (void)val, (void)vlen;
    size_t n = klen - IQP_BUCKET_SUFFIX_LEN;
    if (d->last.len != n || memcmp(d->last.buf, key, n) != 0) d->n++;
    iqp_keybuf_truncate(&d->last, 0);
    iqp_keybuf_append(&d->last, key, n);
    return 0;
}

static uint64_t distinct_prefixes(iqp_store *st, iqp_cf cf) {
    char err[256];
    distinct_count d = {.n = 0};
    iqp_keybuf_init(&d.last);
    ck_assert_int_eq(iqp_store_scan_keys(st, NULL, cf, NULL, 0, count_distinct, &d, err, sizeof err), 0);
    iqp_keybuf_free(&d.last);
    return d.n;
}

/* The traffic counted in flushes of 25 events, as a stream would: the
 * publish queue holds one record per distinct changed key, however many
 * flushes changed it; draining it publishes what the oracle says. */
START_TEST(publish_queue_coalesces) {
    require_setup();
    char err[512], *qdir = tu_fmt("%s/qstore", dir);
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    iqp_store *st = iqp_store_open(qdir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    iqp_pending *q = iqp_pending_open(st, err, sizeof err);
    iqp_aggregator *a = iqp_aggregator_new(st);
    iqp_pending_attach(q, a, NULL, NULL);
    char *text = tu_read_file(traffic, NULL);
    uint64_t flushes = 0, events = 0;
    for (char *line = text, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        iqp_event ev;
        iqp_decode_error derr;
        if (iqp_event_decode(iqp_store_config(st), line, (size_t)(nl - line), &ev, &derr) < 0) continue;
        iqp_aggregator_add(a, &ev, iqp_wall_ms(), err, sizeof err);
        iqp_event_clear(&ev);
        if (++events % 25 == 0) {
            ck_assert_msg(iqp_aggregator_flush(a, err, sizeof err) == 0, "%s", err);
            flushes++;
        }
    }
    ck_assert_msg(iqp_aggregator_flush(a, err, sizeof err) == 0, "%s", err);
    uint64_t records = iqp_store_count_keys(st, IQP_CF_PENDING), written = iqp_pending_count(q);
    uint64_t ctx_keys = distinct_prefixes(st, IQP_CF_CONTEXTS), entities = distinct_prefixes(st, IQP_CF_COUNTS);
    fprintf(stderr, "redis: %" PRIu64 " flushes wrote %" PRIu64 " queue records for %" PRIu64 " distinct keys; the "
            "queue holds %" PRIu64 "\n", flushes, written, ctx_keys + entities, records);
    ck_assert_uint_eq(records, ctx_keys + entities);
    ck_assert_uint_gt(written, 2 * records); /* keys did change in many flushes */
    /* drain it into database 5: exactly those fields, values equal the oracle */
    const int db = 5;
    char *url = tu_fmt("redis://127.0.0.1:%d/%d", redis_port, db);
    free(db_get(db, "FLUSHDB"));
    iqp_publisher_config pc;
    iqp_publisher_config_defaults(&pc);
    pc.url = url;
    iqp_publisher_stats stats;
    ck_assert_msg(iqp_publisher_run_once(st, q, &pc, 0, &stats, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(iqp_store_count_keys(st, IQP_CF_PENDING), 0);
    ck_assert_uint_eq(iqp_pending_count(q), 0);
    ck_assert_uint_eq(stats.item_fields, entities);
    ck_assert_uint_eq(stats.context_fields, ctx_keys);
    ck_assert_uint_eq(stats.values, entities + ctx_keys);
    iqp_client_options o;
    iqp_client_options_init(&o);
    o.timeout_ms = 2000;
    iqp_client *cl = iqp_client_open(url, &o);
    ck_assert_msg(iqp_client_status(cl) == IQP_OK, "%s", iqp_client_errstr(cl));
    for (size_t ci = 0; ci < n_contexts; ci++) compare_context(cl, &contexts[ci]);
    iqp_client_close(cl);
    free(db_get(db, "FLUSHDB"));
    iqp_aggregator_free(a);
    iqp_pending_free(q);
    iqp_store_close(st);
    free(text), free(url), free(qdir);
}
END_TEST

/* Bad usage of `iqp publish` exits 2 and names the problem. */
START_TEST(publish_rejects_bad_usage) {
    static const struct {
        const char *args, *needle;
    } cases[] = {
        {"--redis redis://127.0.0.1:1", "--store"},
        {"--store /nonexistent", "--redis"},
        {"--store /nonexistent --redis http://x", "redis://"},
        {"--store /nonexistent --redis redis://127.0.0.1:1 --redis-ttl 0", "--redis-ttl"},
        {"--store /nonexistent --redis redis://127.0.0.1:1 --bogus", "unknown option"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL, *cmd = tu_fmt("'%s' publish %s 2>&1", tu_iqp(), cases[i].args);
        int rc = tu_run(cmd, &out);
        ck_assert_msg(rc == 2 && out && strstr(out, cases[i].needle), "%s: exit %d: %s", cases[i].args, rc, out);
        free(out);
        free(cmd);
    }
    char *out = NULL, *cmd = tu_fmt("'%s' publish --help", tu_iqp());
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    ck_assert_ptr_nonnull(strstr(out, "usage: iqp publish"));
    free(out);
    free(cmd);
}
END_TEST

int main(void) {
    Suite *s = suite_create("redis");
    TCase *unit = tcase_create("layout");
    tcase_add_test(unit, value_bytes_match_the_document);
    tcase_add_test(unit, value_round_trips);
    tcase_add_test(unit, value_decoder_refuses_bad_bytes);
    tcase_add_test(unit, hash_keys_follow_the_document);
    tcase_add_test(unit, urls_parse);
    tcase_add_test(unit, passwords_are_masked);
    tcase_add_test(unit, layout_doc_lists_the_country_codes);
    tcase_add_test(unit, publish_rejects_bad_usage);
    suite_add_tcase(s, unit);
    TCase *srv = tcase_create("redis-server");
    tcase_set_timeout(srv, 120);
    tcase_add_unchecked_fixture(srv, redis_setup, redis_teardown);
    tcase_add_test(srv, libiqp_equals_the_oracle);
    tcase_add_test(srv, bad_call_between_good_calls);
    tcase_add_test(srv, hostile_replies_are_bounded);
    tcase_add_test(srv, nested_array_reply_is_refused);
    tcase_add_test(srv, url_from_env_and_file);
    tcase_add_test(srv, huge_value_in_redis_is_refused);
    tcase_add_test(srv, lookup_redis_equals_lookup_store);
    tcase_add_test(srv, readme_example_compiles_and_runs);
    tcase_add_test(srv, unknown_layout_is_refused);
    tcase_add_test(srv, client_times_out_and_recovers);
    tcase_add_test(srv, refresh_swaps_generations_whole);
    tcase_add_test(srv, pointer_and_generation_expire_together);
    tcase_add_test(srv, killed_refresh_leaves_nothing_half_done);
    tcase_add_test(srv, publish_summary_adds_up);
    tcase_add_test(srv, eviction_policy_is_reported);
    tcase_add_test(srv, publish_queue_coalesces);
    suite_add_tcase(s, srv);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* check_cluster.c -- iqp against a real 3-master Redis Cluster.
 *
 * The fixture starts three `redis-server --cluster-enabled yes` children
 * on free loopback ports, joins them with `redis-cli --cluster create`,
 * waits (bounded) for cluster_state:ok on every node, backfills a small
 * generated log and publishes it with `iqp publish --all --redis
 * redis-cluster://...` (one seed given: the rest comes from CLUSTER SLOTS).
 *
 * What is checked, always against something computed apart:
 *   - iqp_cluster_slot equals the server's CLUSTER KEYSLOT (hash tags
 *     included), and the keys of one lookup fall in the slots the layout
 *     document promises;
 *   - the published keys lie on all three masters, and `iqp lookup
 *     --redis redis-cluster://...` prints byte for byte what `iqp lookup
 *     --store --as-of <as_of_ms>` prints;
 *   - a slot being migrated (MIGRATING / IMPORTING, keys MIGRATEd: the
 *     old owner answers ASK) and then moved (SETSLOT NODE: MOVED) still
 *     serves the same answers, to a fresh `iqp lookup` and to a libiqp
 *     client whose slot map predates the move;
 *   - `iqp refresh --redis redis-cluster://...` switches generations and
 *     the new one equals the store as of the refresh time;
 *   - two `iqp stream --state-dir --repartition` instances on a devbroker,
 *     each publishing the partitions it owns into the cluster, serve what
 *     the backfill of the same log holds.
 * The servers are stopped by pid in the teardown.
 */
#include <check.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "model/config.h"
#include "client/iqp.h"
#include "client/redis_cluster.h"
#include "client/redis_conn.h"
#include "schemas/redis_value.h"
#include "tests/testutil.h"

#define START_MS 1717996834567LL
#define N_NODES 3
#define N_CONTEXTS 6
#define MAX_ITEMS 8

static char *dir, *store, *url, *setup_error;
static int ports[N_NODES];
static pid_t pids[N_NODES];

typedef struct context {
    char country[3];
    char query[256];
    char *items[MAX_ITEMS];
    size_t n_items;
} context;
static context contexts[N_CONTEXTS];
static size_t n_contexts;

/* ---- talking to one node, without the code under test ----------------------------- */

static redisReply *node_argv(int port, int argc, const char **argv, const size_t *lens) {
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    redisReply *r = c && !c->err ? redisCommandArgv(c, argc, argv, lens) : NULL;
    if (c) redisFree(c);
    return r;
}

static redisReply *node_cmd(int port, const char *fmt, ...) {
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    redisReply *r = NULL;
    if (c && !c->err) {
        va_list ap;
        va_start(ap, fmt);
        r = redisvCommand(c, fmt, ap);
        va_end(ap);
    }
    if (c) redisFree(c);
    return r;
}

/* The reply of the node that owns the command's key (the others answer
 * MOVED); NULL when none does. */
static redisReply *owner_cmd(const char *fmt, const char *key) {
    for (int i = 0; i < N_NODES; i++) {
        redisReply *r = node_cmd(ports[i], fmt, key);
        if (r && !(r->type == REDIS_REPLY_ERROR && strncmp(r->str, "MOVED", 5) == 0)) return r;
        if (r) freeReplyObject(r);
    }
    return NULL;
}

/* malloc'd string reply of fmt(key) at the key's owner. */
static char *owner_string(const char *fmt, const char *key) {
    redisReply *r = owner_cmd(fmt, key);
    ck_assert_msg(r && r->type == REDIS_REPLY_STRING, "%s %s: no string reply", fmt, key);
    char *s = strdup(r->str);
    freeReplyObject(r);
    return s;
}

static char *node_id(int port) {
    redisReply *r = node_cmd(port, "CLUSTER MYID");
    ck_assert_msg(r && r->type == REDIS_REPLY_STRING, "CLUSTER MYID on %d", port);
    char *s = strdup(r->str);
    freeReplyObject(r);
    return s;
}

static int cluster_ok(int port) {
    redisReply *r = node_cmd(port, "CLUSTER INFO");
    int ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok");
    if (r) freeReplyObject(r);
    return ok;
}

/* ---- fixture ---------------------------------------------------------------------------- */

static void fail_setup(const char *what) {
    if (!setup_error) setup_error = strdup(what);
}

static pid_t start_node(int i) {
    int bus = tu_free_port();
    char *log = tu_fmt("%s/node%d.log", dir, i), *conf = tu_fmt("node%d.conf", i);
    char port_s[16], bus_s[16];
    snprintf(port_s, sizeof port_s, "%d", ports[i]);
    snprintf(bus_s, sizeof bus_s, "%d", bus);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "a", stdout) || chdir(dir) != 0) _exit(126);
        execlp("redis-server", "redis-server", "--port", port_s, "--bind", "127.0.0.1", "--cluster-enabled", "yes",
               "--cluster-port", bus_s, "--cluster-config-file", conf, "--save", "", "--appendonly", "no",
               (char *)NULL);
        _exit(127);
    }
    free(log);
    free(conf);
    for (int waited = 0; pid > 0 && waited < 10000; waited += 20) {
        redisReply *r = node_cmd(ports[i], "PING");
        int up = r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
        if (up) return pid;
        usleep(20000);
    }
    if (pid > 0) tu_stop_pid(pid, SIGKILL, 5000);
    return -1;
}

/* A few (country, query) contexts with their items, from the qc_item
 * keys the publish wrote (SCAN of each node). */
static void choose_contexts(void) {
    for (int i = 0; i < N_NODES && n_contexts < N_CONTEXTS; i++) {
        redisReply *r = node_cmd(ports[i], "SCAN 0 MATCH iqp:*:qc_item:* COUNT 1000");
        if (!r || r->type != REDIS_REPLY_ARRAY) return;
        for (size_t k = 0; k < r->element[1]->elements && n_contexts < N_CONTEXTS; k++) {
            const char *key = r->element[1]->element[k]->str, *cc = strstr(key, ":qc_item:") + 9;
            context *c = &contexts[n_contexts];
            size_t qlen = strlen(cc + 4) - 1; /* "CC:{query}" */
            if (qlen >= sizeof c->query || qlen == 0) continue;
            memcpy(c->country, cc, 2);
            memcpy(c->query, cc + 4, qlen);
            redisReply *h = node_cmd(ports[i], "HKEYS %s", key);
            for (size_t f = 0; h && f < h->elements && c->n_items < MAX_ITEMS - 1; f++)
                if (h->element[f]->len) c->items[c->n_items++] = strdup(h->element[f]->str);
            if (h) freeReplyObject(h);
            c->items[c->n_items++] = strdup("never-shown-item");
            n_contexts++;
        }
        freeReplyObject(r);
    }
}

static void cluster_setup(void) {
    if (!(dir = tu_mkdtemp("cluster"))) return fail_setup("no temp dir");
    store = tu_fmt("%s/store", dir);
    char *traffic = tu_fmt("%s/traffic.jsonl", dir);
    int ok = tu_run_ok(tu_fmt("'%s' gen --seed 7 --impressions 1500 --start %lld --span 6h --out '%s' 2>/dev/null",
                           tu_iqp(), START_MS, traffic)) &&
             tu_run_ok(tu_fmt("'%s' backfill --store '%s' --dead-letter '%s/dl.jsonl' '%s' 2>/dev/null", tu_iqp(),
                           store, dir, traffic));
    free(traffic);
    if (!ok) return fail_setup("iqp gen / backfill failed");
    char *create = tu_fmt("redis-cli --cluster create");
    for (int i = 0; i < N_NODES; i++) {
        ports[i] = tu_free_port();
        if ((pids[i] = start_node(i)) <= 0) return free(create), fail_setup("a cluster redis-server did not start");
        char *next = tu_fmt("%s 127.0.0.1:%d", create, ports[i]);
        free(create);
        create = next;
    }
    ok = tu_run_ok(tu_fmt("%s --cluster-replicas 0 --cluster-yes >/dev/null 2>&1", create));
    free(create);
    if (!ok) return fail_setup("redis-cli --cluster create failed");
    int all_ok = 0;
    for (int waited = 0; !all_ok && waited < 20000; waited += 50) {
        all_ok = 1;
        for (int i = 0; i < N_NODES; i++) all_ok = all_ok && cluster_ok(ports[i]);
        if (!all_ok) usleep(50000);
    }
    if (!all_ok) return fail_setup("the cluster did not reach cluster_state:ok in 20 s");
    url = tu_fmt("redis-cluster://127.0.0.1:%d", ports[1]);
    if (!tu_run_ok(tu_fmt("'%s' publish --store '%s' --redis %s --all --quiet", tu_iqp(), store, url)))
        return fail_setup("iqp publish --all to the cluster failed");
    choose_contexts();
    if (n_contexts < 2) fail_setup("the publish wrote too few qc_item keys");
}

static void cluster_teardown(void) {
    for (int i = 0; i < N_NODES; i++)
        if (pids[i] > 0) tu_stop_pid(pids[i], SIGKILL, 5000);
    if (dir) tu_rmrf(dir);
    for (size_t c = 0; c < n_contexts; c++)
        for (size_t i = 0; i < contexts[c].n_items; i++) free(contexts[c].items[i]);
    free(dir);
    free(store);
    free(url);
    free(setup_error);
}

static void require_setup(void) { ck_assert_msg(setup_error == NULL, "%s", setup_error); }

/* ---- lookups ------------------------------------------------------------------------------ */

static char *lookup_cmd(const char *source, const context *c) {
    return tu_lookup_cmd(source, c->query, c->country, "female", (const char *const *)c->items, c->n_items);
}

/* `iqp lookup --redis <cluster> --redis-prefix P` equals `iqp lookup
 * --store --as-of` of the served generation's as_of_ms for context c;
 * returns the lines compared. */
static size_t compare_lookup_in(const context *c, const char *prefix) {
    char *gen_key = tu_fmt("{%s}:gen", prefix), *gen = owner_string("GET %s", gen_key);
    char *meta = tu_fmt("{%s}:%s:meta", prefix, gen);
    redisReply *r = owner_cmd("HGET %s as_of_ms", meta);
    ck_assert_msg(r && r->type == REDIS_REPLY_STRING, "no as_of_ms in %s", meta);
    char *redis_src = tu_fmt("--redis %s --redis-prefix %s", url, prefix);
    char *store_src = tu_fmt("--store '%s' --as-of %s", store, r->str);
    char *c1 = lookup_cmd(redis_src, c), *c2 = lookup_cmd(store_src, c), *o1 = NULL, *o2 = NULL;
    ck_assert_msg(tu_run(c1, &o1) == 0, "failed: %s", c1);
    ck_assert_msg(tu_run(c2, &o2) == 0, "failed: %s", c2);
    ck_assert_msg(strcmp(o1, o2) == 0, "%s\nprinted\n%s\nbut %s printed\n%s", c1, o1, c2, o2);
    size_t lines = 0;
    int counted = 0;
    for (const char *p = o1; (p = strstr(p, "\"context_count\":")); p += 16) counted |= p[16] != '0';
    for (const char *p = o1; (p = strchr(p, '\n')); p++) lines++;
    ck_assert_msg(counted, "every context_count of '%s' is 0: a vacuous comparison", c->query);
    freeReplyObject(r);
    free(o1), free(o2), free(c1), free(c2), free(redis_src), free(store_src), free(gen), free(meta), free(gen_key);
    return lines;
}

static size_t compare_lookup(const context *c) { return compare_lookup_in(c, "iqp"); }

/* libiqp's answer for c (malloc'd, *len doubles). */
static double *client_answer(iqp_client *cl, const context *c, size_t *len) {
    *len = iqp_client_result_len(cl, c->n_items);
    double *out = malloc(*len * sizeof *out);
    iqp_status s = iqp_client_lookup(cl, c->query, c->country, "female", (const char *const *)c->items,
                                     c->n_items, out, *len);
    ck_assert_msg(s == IQP_OK, "lookup '%s': %s", c->query, iqp_client_errstr(cl));
    return out;
}

/* Equal doubles, NaN equal to NaN (features the call cannot address). */
static int same_answer(const double *a, const double *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(a[i] == b[i] || (a[i] != a[i] && b[i] != b[i]))) return 0;
    return 1;
}

/* ---- tests ------------------------------------------------------------------------------- */

START_TEST(slots_match_the_server) {
    require_setup();
    static const char *keys[] = {"123456789", "iqp:gen", "{iqp}:gen", "{iqp}:7:meta", "a{}b", "{}{x}",
                                 "x{y}z{w}", "iqp:1:qc_item:US:{red dress}", "{", "}{", "\xe2\x82\xac{\xc3\xa9}"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        redisReply *r = node_cmd(ports[0], "CLUSTER KEYSLOT %s", keys[i]);
        ck_assert_msg(r && r->type == REDIS_REPLY_INTEGER, "CLUSTER KEYSLOT %s", keys[i]);
        ck_assert_msg(iqp_cluster_slot(keys[i], strlen(keys[i])) == (unsigned)r->integer, "slot of '%s': %u, server %lld",
                      keys[i], iqp_cluster_slot(keys[i], strlen(keys[i])), r->integer);
        freeReplyObject(r);
    }
    /* one lookup's keys: the query's features share the query's slot;
     * pointer, meta and lease share the prefix's */
    char k1[128], k2[128], k3[128], k4[128];
    tu_hash_key(k1, sizeof k1, "{iqp}", 3, "q_item", IQP_DIM_QUERY, "US", "female", "red dress", 9);
    tu_hash_key(k2, sizeof k2, "{iqp}", 3, "qc_item", IQP_DIM_QUERY | IQP_DIM_COUNTRY, "US", "female",
                    "red dress", 9);
    tu_hash_key(k3, sizeof k3, "{iqp}", 3, "qg_item", IQP_DIM_QUERY | IQP_DIM_GENDER, "US", "female",
                    "red dress", 9);
    tu_hash_key(k4, sizeof k4, "{iqp}", 3, "c_item", IQP_DIM_COUNTRY, "US", "female", NULL, 0);
    ck_assert_str_eq(k1, "iqp:3:q_item:{red dress}");
    ck_assert_str_eq(k2, "iqp:3:qc_item:US:{red dress}");
    ck_assert_str_eq(k3, "iqp:3:qg_item:female:{red dress}");
    ck_assert_str_eq(k4, "iqp:3:c_item:{US}");
    ck_assert_uint_eq(iqp_cluster_slot(k1, strlen(k1)), iqp_cluster_slot("red dress", 9));
    ck_assert_uint_eq(iqp_cluster_slot(k2, strlen(k2)), iqp_cluster_slot("red dress", 9));
    ck_assert_uint_eq(iqp_cluster_slot(k3, strlen(k3)), iqp_cluster_slot("red dress", 9));
    ck_assert_uint_eq(iqp_cluster_slot("{iqp}:gen", 9), iqp_cluster_slot("{iqp}:3:meta", 12));
    ck_assert_uint_eq(iqp_cluster_slot("{iqp}:gen", 9), iqp_cluster_slot("{iqp}:lease", 11));
    /* the single-server form is unchanged */
    tu_hash_key(k1, sizeof k1, "iqp", 3, "qc_item", IQP_DIM_QUERY | IQP_DIM_COUNTRY, "US", "female", "red dress",
                    9);
    ck_assert_str_eq(k1, "iqp:3:qc_item:US:red dress");
}
END_TEST

START_TEST(cluster_urls_parse) {
    iqp_redis_url u;
    char err[300], buf[600];
    ck_assert_int_eq(iqp_redis_url_parse("redis-cluster://:pw@127.0.0.1:7000,[::1]:7001,h", &u, err, sizeof err), 0);
    ck_assert_int_eq(u.is_cluster, 1);
    ck_assert_int_eq(u.n_seeds, 3);
    ck_assert_str_eq(u.password, "pw");
    ck_assert_str_eq(u.seeds[1].host, "::1");
    ck_assert_int_eq(u.seeds[1].port, 7001);
    ck_assert_int_eq(u.seeds[2].port, 6379);
    iqp_redis_url_describe(&u, buf, sizeof buf);
    ck_assert_str_eq(buf, "redis-cluster://127.0.0.1:7000,[::1]:7001,h:6379");
    ck_assert_int_eq(iqp_redis_url_parse("redis-cluster://h:1/2", &u, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "only database 0"));
    ck_assert_int_eq(iqp_redis_url_parse("redis-cluster://", &u, err, sizeof err), -1);
    ck_assert_int_eq(iqp_redis_url_parse("redis-cluster://h:99999", &u, err, sizeof err), -1);
    ck_assert_int_eq(iqp_redis_url_parse("redis-cluster://h:1,", &u, err, sizeof err), 0);
    ck_assert_int_eq(u.n_seeds, 1);
    /* a cluster refuses a prefix with braces; a single server keeps it */
    iqp_redis_url_parse("redis-cluster://h:1", &u, err, sizeof err);
    ck_assert_int_eq(iqp_redis_key_prefix(&u, "a{b}", buf, sizeof buf, err, sizeof err), -1);
    ck_assert_int_eq(iqp_redis_key_prefix(&u, "ab", buf, sizeof buf, err, sizeof err), 0);
    ck_assert_str_eq(buf, "{ab}");
    iqp_redis_url_parse("redis://h:1", &u, err, sizeof err);
    ck_assert_int_eq(iqp_redis_key_prefix(&u, "a{b}", buf, sizeof buf, err, sizeof err), 0);
    ck_assert_str_eq(buf, "a{b}");
    /* "iqp:7:..." would read as generation 7 of prefix "iqp", whose
     * garbage collection would expire it: an all-digit part is refused */
    static const char *const refused[] = {"iqp:7", "7", "a:12:b", ""};
    static const char *const kept[] = {"iqp:v7", "team:iqp", "a7", "a::b"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        ck_assert_msg(iqp_redis_key_prefix(&u, refused[i], buf, sizeof buf, err, sizeof err) == -1,
                      "prefix '%s' accepted", refused[i]);
    for (size_t i = 0; i < sizeof kept / sizeof *kept; i++)
        ck_assert_msg(iqp_redis_key_prefix(&u, kept[i], buf, sizeof buf, err, sizeof err) == 0,
                      "prefix '%s' refused: %s", kept[i], err);
    char longest[IQP_REDIS_PREFIX_MAX + 2];
    memset(longest, 'p', sizeof longest - 1);
    longest[sizeof longest - 1] = 0;
    ck_assert_int_eq(iqp_redis_key_prefix(&u, longest, buf, sizeof buf, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "1..100 bytes"));
    /* bad cluster flags are usage errors (exit 2), named in the message */
    static const char *bad[] = {"publish --store /nonexistent --all --redis redis-cluster://127.0.0.1:1 "
                                "--redis-prefix 'a{b'",
                                "lookup --redis redis-cluster://127.0.0.1:1 --redis-prefix 'x}' --query q i1",
                                "lookup --redis redis-cluster://127.0.0.1:1/3 --query q i1",
                                "refresh --store /nonexistent --redis redis-cluster://127.0.0.1:1 --redis-prefix '{p}'"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *cmd = tu_fmt("'%s' %s 2>&1", tu_iqp(), bad[i]), *out = NULL;
        int rc = tu_run(cmd, &out);
        ck_assert_msg(rc == 2, "%s: exit %d, want 2\n%s", cmd, rc, out);
        ck_assert_msg(strstr(out, "brace") || strstr(out, "only database 0"), "%s printed\n%s", cmd, out);
        free(out);
        free(cmd);
    }
    /* a single server is not a cluster: a clear error */
    int port = tu_free_port();
    char *log = tu_fmt("/dev/null");
    pid_t pid = tu_redis_start(port, log);
    free(log);
    ck_assert_int_gt(pid, 0);
    char *u2 = tu_fmt("redis-cluster://127.0.0.1:%d", port);
    iqp_client *cl = iqp_client_open(u2, NULL);
    tu_stop_pid(pid, SIGKILL, 5000);
    ck_assert_int_eq(iqp_client_status(cl), IQP_ECONNECT);
    ck_assert_msg(strstr(iqp_client_errstr(cl), "cluster support disabled"), "%s", iqp_client_errstr(cl));
    iqp_client_close(cl);
    free(u2);
}
END_TEST

START_TEST(publish_spreads_and_lookups_match_the_store) {
    require_setup();
    for (int i = 0; i < N_NODES; i++) {
        redisReply *r = node_cmd(ports[i], "DBSIZE");
        ck_assert_msg(r && r->type == REDIS_REPLY_INTEGER && r->integer > 20, "node %d holds %lld keys", ports[i],
                      r ? r->integer : -1);
        freeReplyObject(r);
    }
    size_t lines = 0;
    for (size_t c = 0; c < n_contexts; c++) lines += compare_lookup(&contexts[c]);
    fprintf(stderr, "cluster: %zu lookup --redis lines over %zu contexts equal lookup --store\n", lines, n_contexts);
    ck_assert_uint_gt(lines, n_contexts);
}
END_TEST

/* Moves the slot of contexts[0]'s query from its master to another: first
 * MIGRATING/IMPORTING with every key MIGRATEd (the old owner answers
 * ASK), then SETSLOT NODE everywhere (it answers MOVED). */
START_TEST(lookups_follow_ask_and_moved) {
    require_setup();
    const context *c = &contexts[0];
    unsigned slot = iqp_cluster_slot(c->query, strlen(c->query));
    int src = -1, dst;
    for (int i = 0; i < N_NODES && src < 0; i++) {
        redisReply *r = node_cmd(ports[i], "CLUSTER COUNTKEYSINSLOT %u", slot);
        if (r && r->type == REDIS_REPLY_INTEGER && r->integer > 0) src = i;
        if (r) freeReplyObject(r);
    }
    ck_assert_msg(src >= 0, "no node holds the keys of slot %u", slot);
    dst = (src + 1) % N_NODES;
    char *src_id = node_id(ports[src]), *dst_id = node_id(ports[dst]);
    iqp_client *cl = iqp_client_open(url, NULL); /* its slot map: slot -> src */
    ck_assert_msg(iqp_client_status(cl) == IQP_OK, "%s", iqp_client_errstr(cl));
    size_t n;
    double *before = client_answer(cl, c, &n);

    redisReply *r = node_cmd(ports[dst], "CLUSTER SETSLOT %u IMPORTING %s", slot, src_id);
    ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "IMPORTING: %s", r ? r->str : "no reply");
    freeReplyObject(r);
    r = node_cmd(ports[src], "CLUSTER SETSLOT %u MIGRATING %s", slot, dst_id);
    ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "MIGRATING: %s", r ? r->str : "no reply");
    freeReplyObject(r);
    redisReply *keys = node_cmd(ports[src], "CLUSTER GETKEYSINSLOT %u 100000", slot);
    ck_assert(keys && keys->type == REDIS_REPLY_ARRAY && keys->elements > 0);
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", ports[dst]);
    for (size_t k = 0; k < keys->elements; k++) {
        const char *argv[6] = {"MIGRATE", "127.0.0.1", port_s, keys->element[k]->str, "0", "5000"};
        size_t lens[6] = {7, 9, strlen(port_s), keys->element[k]->len, 1, 4};
        r = node_argv(ports[src], 6, argv, lens);
        ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "MIGRATE: %s", r ? r->str : "no reply");
        freeReplyObject(r);
    }
    /* the old owner now redirects the keys with ASK */
    const char *hl[2] = {"HLEN", keys->element[0]->str};
    size_t hll[2] = {4, keys->element[0]->len};
    r = node_argv(ports[src], 2, hl, hll);
    ck_assert_msg(r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "ASK ", 4) == 0, "not ASK: %s",
                  r ? r->str : "no reply");
    freeReplyObject(r);
    compare_lookup(c);
    double *asked = client_answer(cl, c, &n);
    ck_assert_msg(same_answer(before, asked, n), "libiqp's answer changed while the slot migrated");

    for (int i = 0; i < N_NODES; i++) {
        r = node_cmd(ports[(dst + i) % N_NODES], "CLUSTER SETSLOT %u NODE %s", slot, dst_id);
        ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "SETSLOT NODE: %s", r ? r->str : "no reply");
        freeReplyObject(r);
    }
    r = node_argv(ports[src], 2, hl, hll);
    ck_assert_msg(r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "MOVED ", 6) == 0, "not MOVED: %s",
                  r ? r->str : "no reply");
    freeReplyObject(r);
    double *moved = client_answer(cl, c, &n);
    ck_assert_msg(same_answer(before, moved, n), "libiqp's answer changed after the slot moved");
    double *again = client_answer(cl, c, &n); /* with the refreshed map */
    ck_assert_msg(same_answer(before, again, n), "libiqp's answer changed after the slot map refresh");
    compare_lookup(c);
    /* the publisher follows the move too: a new full publish, then compare */
    ck_assert(tu_run_ok(tu_fmt("'%s' publish --store '%s' --redis %s --all --quiet", tu_iqp(), store, url)));
    compare_lookup(c);
    free(before), free(asked), free(moved), free(again);
    freeReplyObject(keys);
    iqp_client_close(cl);
    free(src_id);
    free(dst_id);
}
END_TEST

/* `iqp refresh` writes a new generation across the masters, flips the
 * pointer with its lease script on the prefix's slot, and expires the old
 * generation's keys on every master. */
START_TEST(refresh_switches_generations) {
    require_setup();
    char *gen1 = owner_string("GET %s", "{iqp}:gen");
    long long t2 = START_MS + 26LL * 3600 * 1000;
    ck_assert(tu_run_ok(tu_fmt("'%s' refresh --store '%s' --as-of %lld --redis %s --grace-ms 300 --quiet", tu_iqp(),
                            store, t2, url)));
    char *gen2 = owner_string("GET %s", "{iqp}:gen");
    ck_assert_msg(strcmp(gen1, gen2) != 0, "the pointer did not move from %s", gen1);
    for (size_t c = 0; c < n_contexts; c++) compare_lookup(&contexts[c]);
    /* the old generation's keys expire after the grace, on every master */
    char *pattern = tu_fmt("iqp:%s:*", gen1);
    long long left = -1;
    for (int waited = 0; waited < 10000 && left != 0; waited += 50) {
        left = 0;
        for (int i = 0; i < N_NODES; i++) {
            redisReply *r = node_cmd(ports[i], "SCAN 0 MATCH %s COUNT 100000", pattern);
            left += r && r->type == REDIS_REPLY_ARRAY ? (long long)r->element[1]->elements : 1;
            if (r) freeReplyObject(r);
        }
        if (left) usleep(50000);
    }
    ck_assert_msg(left == 0, "%lld keys of generation %s are left", left, gen1);
    free(pattern);
    free(gen1);
    free(gen2);
}
END_TEST

/* ---- publishing per partition from iqp stream ------------------------------------------ */

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One `iqp stream --state-dir --repartition --redis <cluster>` instance
 * on the test's devbroker, its stderr in dir/stream<i>.log. */
static pid_t start_partition_stream(const char *bootstrap, int i) {
    char *sd = tu_fmt("%s/state", dir), *dl = tu_fmt("%s/stream-dl%d.jsonl", dir, i), *log = tu_fmt("%s/stream%d.log", dir, i);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "a", stderr) || !freopen("/dev/null", "w", stdout)) _exit(126);
        execl(tu_iqp(), "iqp", "stream", "--state-dir", sd, "--repartition", "--repartition-prefix", "rp",
              "--brokers", bootstrap, "--group", "cluster", "--impressions-topic", "imp", "--actions-topic", "act",
              "--redis", url, "--redis-prefix", "part", "--dead-letter-file", dl, "--metrics-listen", "off",
              "--flush-ms", "200", "--property", "session.timeout.ms=6000", "--property",
              "heartbeat.interval.ms=500", (char *)NULL);
        _exit(127);
    }
    free(sd), free(dl), free(log);
    ck_assert_int_gt(pid, 0);
    return pid;
}

/* The sum over the partitions of topic of their end offsets (kcat). */
static int64_t topic_end(const char *bootstrap, const char *topic, int partitions) {
    int64_t sum = 0;
    for (int p = 0; p < partitions; p++) {
        char *cmd = tu_fmt("kcat -C -b '%s' -t %s -p %d -o -1 -c 1 -e -q -f '%%o\\n'", bootstrap, topic, p), *out = NULL;
        if (tu_run(cmd, &out) == 0 && out && *out) sum += strtoll(out, NULL, 10) + 1;
        free(out), free(cmd);
    }
    return sum;
}

/* 1 when the partition stores counted every input message (the highest
 * input offset counted per input partition, +1, summed: lines), read the
 * repartition topics to their ends, and left nothing to publish. */
static int partitions_done(const char *bootstrap, int64_t lines, int partitions) {
    char *sd = tu_fmt("%s/state", dir), *cmd = tu_fmt("'%s' stats --state-dir '%s' 2>/dev/null", tu_iqp(), sd), *out = NULL;
    int done = tu_run(cmd, &out) == 0 && out;
    int64_t origins = 0, offsets = 0;
    json_t *j = done ? json_loads(out, 0, NULL) : NULL, *v;
    const char *key;
    json_object_foreach(json_object_get(j, "repartition_origins"), key, v) origins += json_integer_value(v) + 1;
    json_object_foreach(json_object_get(j, "kafka_offsets"), key, v) offsets += json_integer_value(v);
    done = done && origins >= lines && json_integer_value(json_object_get(j, "publish_pending")) == 0 &&
           offsets == topic_end(bootstrap, "rp-impressions", partitions) + topic_end(bootstrap, "rp-actions", partitions);
    json_decref(j);
    free(out), free(cmd), free(sd);
    return done;
}

/* The lookup lines of context c as the partition stores hold them, each
 * store read as of its own watermark (what its publisher computes
 * windows as of): line k is the line of the one store whose line k is
 * not all zero (the owner of that (feature, context): a second one fails
 * the test), else the zero line every store prints. NULL when a store
 * cannot be read yet. *nonzero: some line had counts. */
static char *expected_from_partitions(const context *c, int partitions, int *nonzero) {
    char *lines[partitions], *saves[partitions], *outs[partitions];
    for (int p = 0; p < partitions; p++) {
        char *st = tu_fmt("%s/state/partition-%d", dir, p), *cmd = tu_fmt("'%s' stats --store '%s'", tu_iqp(), st);
        char *out = NULL, *src = NULL;
        ck_assert_msg(tu_run(cmd, &out) == 0, "%s failed", cmd);
        json_t *j = json_loads(out, 0, NULL);
        src = tu_fmt("--store '%s' --as-of %lld", st, (long long)json_integer_value(json_object_get(j, "watermark_ms")));
        json_decref(j);
        free(out), free(cmd);
        char *lc = lookup_cmd(src, c);
        outs[p] = NULL;
        ck_assert_msg(tu_run(lc, &outs[p]) == 0, "failed: %s", lc);
        free(lc), free(src), free(st);
        saves[p] = NULL;
        lines[p] = strtok_r(outs[p], "\n", &saves[p]);
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    for (; lines[0]; ) {
        const char *pick = lines[0];
        int owners = 0;
        for (int p = 0; p < partitions; p++) {
            ck_assert_msg(lines[p] != NULL, "partition stores printed different line counts for '%s'", c->query);
            int counted = 0;
            for (const char *q = lines[p]; (q = strchr(q, ':')); q++) counted |= q[1] >= '1' && q[1] <= '9';
            if (counted) pick = lines[p], owners++;
        }
        ck_assert_msg(owners <= 1, "a line of '%s' is counted in %d partition stores: %s", c->query, owners, pick);
        *nonzero |= owners;
        fprintf(f, "%s\n", pick);
        for (int p = 0; p < partitions; p++) lines[p] = strtok_r(NULL, "\n", &saves[p]);
    }
    fclose(f);
    for (int p = 0; p < partitions; p++) free(outs[p]);
    return buf;
}

/* Two `iqp stream` instances count a 2-day log, produced without keys
 * over ~15 s (so the stores' watermarks cross many hours while keys are
 * published), through repartition topics into 12 partition stores, each
 * instance publishing the partitions it owns into the cluster (prefix
 * "part"). The slice leases lie in {part}:lease:slices, one per
 * partition, and once the stores caught up, Redis serves, for every
 * context checked, what the owning partition store holds as of its
 * watermark: the 1d window of a key published a day earlier in event
 * time is right only because its publisher replaced the slice's hashes
 * when windows slid (with the replacement never renamed over the keys,
 * this test fails). Polled (bounded): a slide comes at most 10 s after
 * its hour began. */
START_TEST(stream_partitions_publish_to_the_cluster) {
    require_setup();
    const char *const args[] = {"--brokers", "3", "--partitions", "12", "--topics", "imp,act,rp-impressions,rp-actions", NULL};
    tu_broker broker;
    ck_assert_int_eq(tu_broker_start(&broker, args), 0);
    char *log2 = tu_fmt("%s/two-days.jsonl", dir);
    ck_assert(tu_run_ok(tu_fmt("'%s' gen --seed 9 --impressions 1500 --start %lld --span 2d --out '%s' 2>/dev/null",
                               tu_iqp(), START_MS, log2)));
    char *text = tu_read_file(log2, NULL);
    int64_t lines = 0;
    for (const char *p = text; p && (p = strchr(p, '\n')); p++) lines++;
    free(text);
    pid_t pids2[2] = {start_partition_stream(broker.bootstrap, 0), start_partition_stream(broker.bootstrap, 1)};
    ck_assert(tu_run_ok(tu_fmt("'%s' produce --brokers '%s' --impressions-topic imp --actions-topic act --key none "
                               "--rate %lld '%s' 2>/dev/null", tu_iqp(), broker.bootstrap, (long long)(lines / 15), log2)));
    int streak = 0;
    for (int64_t waited = 0; streak < 2; waited += 1000) {
        ck_assert_msg(waited < tu_wait_limit_ms(120000), "the partition stores did not catch up and publish (logs %s)",
                      dir);
        streak = partitions_done(broker.bootstrap, lines, 12) ? streak + 1 : 0;
        sleep(1);
    }
    redisReply *r = owner_cmd("HLEN %s", "{part}:lease:slices");
    ck_assert_msg(r && r->type == REDIS_REPLY_INTEGER && r->integer == 12, "%lld slice leases, want 12",
                  r ? r->integer : -1);
    freeReplyObject(r);
    char *redis_src = tu_fmt("--redis %s --redis-prefix part", url), *last_diff = NULL;
    size_t equal = 0, compared = 0;
    int nonzero = 0;
    for (int64_t t0 = mono_ms(); equal < n_contexts && mono_ms() - t0 < tu_wait_limit_ms(60000); sleep(1)) {
        equal = compared = 0;
        for (size_t k = 0; k < n_contexts; k++) {
            char *want = expected_from_partitions(&contexts[k], 12, &nonzero), *cmd = lookup_cmd(redis_src, &contexts[k]);
            char *got = NULL;
            ck_assert_msg(tu_run(cmd, &got) == 0, "failed: %s", cmd);
            if (strcmp(got, want) == 0) equal++;
            else free(last_diff), last_diff = tu_fmt("%s\nprinted\n%s\nthe partition stores hold\n%s", cmd, got, want);
            for (const char *p = want; (p = strchr(p, '\n')); p++) compared++;
            free(want), free(got), free(cmd);
        }
    }
    for (int i = 0; i < 2; i++) {
        int rc = tu_stop_pid(pids2[i], SIGTERM, 15000);
        /* a sanitizer report of the child (ops/test --sanitize) goes to this test's log */
        char *log = tu_fmt("%s/stream%d.log", dir, i), *logged = tu_read_file(log, NULL);
        const char *hit = logged ? strstr(logged, "ERROR: AddressSanitizer") : NULL;
        if (!hit && logged) hit = strstr(logged, "ERROR: LeakSanitizer");
        if (!hit && logged) hit = strstr(logged, "runtime error:");
        if (hit) fprintf(stderr, "cluster: sanitizer report in %s:\n%.4000s\n", log, hit);
        free(logged), free(log);
        ck_assert_msg(rc == 0, "iqp stream %d exited %d after SIGTERM", i, rc);
    }
    tu_broker_stop(&broker);
    ck_assert_msg(equal == n_contexts, "%zu of %zu contexts differ: %.2500s", n_contexts - equal, n_contexts,
                  last_diff ? last_diff : "");
    ck_assert_msg(nonzero, "no context of the test is counted in the partition stores: a vacuous comparison");
    char *slides = tu_fmt("grep -h 'stream: partition [0-9]*: published' '%s'/stream*.log | grep -o '([0-9]* slides' | tr -dc '0-9\\n' | "
                          "awk '{n += $1} END {print n + 0}'", dir), *out = NULL;
    tu_run(slides, &out);
    if (out) out[strcspn(out, "\n")] = '\0';
    fprintf(stderr, "cluster: %zu lookup lines published per partition by two instances equal the partition stores "
                    "(as of their watermarks); %s window slides published in place\n", compared, out ? out : "?");
    free(out), free(slides), free(last_diff), free(redis_src), free(log2);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cluster");
    TCase *unit = tcase_create("cluster-units");
    tcase_set_timeout(unit, 30);
    tcase_add_test(unit, cluster_urls_parse);
    suite_add_tcase(s, unit);
    TCase *srv = tcase_create("redis-cluster");
    tcase_set_timeout(srv, 120);
    tcase_add_unchecked_fixture(srv, cluster_setup, cluster_teardown);
    tcase_add_test(srv, slots_match_the_server);
    tcase_add_test(srv, publish_spreads_and_lookups_match_the_store);
    tcase_add_test(srv, lookups_follow_ask_and_moved);
    tcase_add_test(srv, refresh_switches_generations);
    tcase_add_test(srv, stream_partitions_publish_to_the_cluster);
    suite_add_tcase(s, srv);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* check_segments.c -- segments are data (issue 14 item 2): a `device`
 * segment and two features on it added by config alone, end to end, against
 * the brute-force oracle (tests/oracle.c, oracle_count_devices).
 *
 * Design
 * ------
 * Unit tests first: the segments table of the config (defaults, a device
 * enum and an age bucket segment, the errors), the normalizers, and the
 * layout fingerprint (a store of one segment set refuses another).
 *
 * Then an unchecked fixture, run once: `iqp gen --devices` traffic (6 h),
 * backfilled with a config that adds
 *   segments: query, country, gender (the defaults), device (user.device,
 *             enum web | ios | android, fallback unknown)
 *   features: the five defaults, qd_item (query, device), d_item (device)
 * into a store; the same lines fed to the oracle (devices counted); a
 * redis-server child on a free loopback port that `iqp publish --all`
 * fills from the store (the store's own layout: no config given). Tests:
 *   - `iqp lookup --store --segment device=...` (raw spellings: "WEB",
 *     " ios", "Android", "tv") equals the oracle for every feature, window,
 *     measure and item, the default features included;
 *   - the store refuses the default config (segments differ), for lookup
 *     and backfill alike;
 *   - libiqp iqp_client_lookup_ctx (query + {country, gender, device})
 *     equals the oracle, counts and rates; the positional
 *     iqp_client_lookup reads NaN for the device features and the same
 *     values for the others; an unknown segment name is IQP_EINVAL;
 *     `iqp lookup --redis --segment` prints what `iqp lookup --store` does;
 *   - `iqp refresh --redis` publishes the device contexts (a new
 *     generation) that libiqp reads back as the oracle's; its dump names
 *     them by segment;
 *   - `iqp stream` with the config, over the same traffic on a devbroker,
 *     counts what backfill counted (every lookup line equal);
 *   - `iqp export` with the config writes a device column (the event's
 *     normalized device) and qd_item / d_item columns equal to the oracle
 *     as of each impression.
 * The redis-server is stopped by pid in the fixture's teardown.
 */
#include <check.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "client/iqp.h"
#include "model/config.h"
#include "model/segments.h"
#include "tests/oracle.h"
#include "tests/testutil.h"

#define START_MS 1717996834567LL /* 2024-06-10, not on a bucket edge */
#define N_QUERIES 6
#define MAX_ITEMS 24
#define N_FEATURES (ORACLE_N_FEATURES + 2) /* the defaults, qd_item, d_item */
#define F_QD ORACLE_N_FEATURES
#define F_D (ORACLE_N_FEATURES + 1)

static const char *const DEVICE_CONFIG =
    "{\"segments\": ["
    " {\"name\": \"query\", \"field\": \"query\", \"normalizer\": \"query\"},"
    " {\"name\": \"country\", \"field\": \"user.country\", \"normalizer\": \"country\"},"
    " {\"name\": \"gender\", \"field\": \"user.gender\", \"normalizer\": \"gender\"},"
    " {\"name\": \"device\", \"field\": \"user.device\", \"normalizer\": \"enum\","
    "  \"values\": [\"web\", \"ios\", \"android\"], \"fallback\": \"unknown\"}],"
    " \"features\": ["
    " {\"name\": \"q_item\", \"context\": [\"query\"]},"
    " {\"name\": \"qc_item\", \"context\": [\"query\", \"country\"]},"
    " {\"name\": \"qg_item\", \"context\": [\"query\", \"gender\"]},"
    " {\"name\": \"c_item\", \"context\": [\"country\"]},"
    " {\"name\": \"g_item\", \"context\": [\"gender\"]},"
    " {\"name\": \"qd_item\", \"context\": [\"query\", \"device\"]},"
    " {\"name\": \"d_item\", \"context\": [\"device\"]}]}";

/* A device as passed to iqp, and what it normalizes to. */
static const struct { const char *raw, *norm; } DEVICES[] = {
    {"WEB", "web"}, {" ios", "ios"}, {"Android", "android"}, {"tv", "unknown"}};
#define N_DEVICES (sizeof DEVICES / sizeof DEVICES[0])

static char err[1024];

/* ---- config ------------------------------------------------------------------------ */

START_TEST(default_segments) {
    iqp_config c;
    iqp_config_defaults(&c);
    ck_assert_uint_eq(c.n_segments, 3);
    ck_assert_str_eq(c.segments[1].name, "country");
    ck_assert_str_eq(c.segments[1].field, "user.country");
    ck_assert_int_eq(c.segments[2].normalizer, IQP_NORM_GENDER);
    /* features name segments: qc_item is segments 0 and 1 */
    ck_assert_uint_eq(c.features[1].dims, 3u);
    char *layout = iqp_config_layout_json(&c);
    ck_assert_ptr_nonnull(strstr(layout, "\"segments\":[{\"name\":\"query\",\"field\":\"query\","
                                         "\"normalizer\":\"query\"}"));
    /* a layout written before segments were data reads as the defaults */
    json_t *old = json_loads(layout, 0, NULL);
    json_object_del(old, "segments");
    char *old_text = json_dumps(old, JSON_COMPACT | JSON_PRESERVE_ORDER);
    char msg[1024];
    ck_assert_int_eq(iqp_config_layout_diff(old_text, &c, msg, sizeof msg), 0);
    iqp_config d;
    iqp_config_defaults(&d);
    ck_assert_msg(iqp_config_parse(&d, DEVICE_CONFIG, "t", err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(iqp_config_layout_diff(old_text, &d, msg, sizeof msg), 1);
    ck_assert_msg(strstr(msg, "segments differ") && strstr(msg, "\"device\""), "%s", msg);
    free(old_text);
    json_decref(old);
    free(layout);
}
END_TEST

START_TEST(device_and_age_segments) {
    iqp_config c;
    iqp_config_defaults(&c);
    ck_assert_msg(iqp_config_parse(&c, DEVICE_CONFIG, "t", err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(c.n_segments, 4);
    ck_assert_uint_eq(c.n_features, 7);
    ck_assert_uint_eq(c.features[F_QD].dims, 1u | 8u);
    ck_assert_uint_eq(c.features[F_D].dims, 8u);
    char out[IQP_SEGMENT_VALUE_MAX];
    for (size_t i = 0; i < N_DEVICES; i++) {
        size_t n = iqp_segment_normalize(&c.segments[3], DEVICES[i].raw, strlen(DEVICES[i].raw), out);
        ck_assert_str_eq(out, DEVICES[i].norm);
        ck_assert_uint_eq(n, strlen(DEVICES[i].norm));
    }
    iqp_segment_normalize(&c.segments[3], NULL, 0, out);
    ck_assert_str_eq(out, "unknown");
    /* segments alone: the default features are resolved against them */
    iqp_config a;
    iqp_config_defaults(&a);
    ck_assert_msg(iqp_config_parse(&a, "{\"segments\": [{\"name\": \"gender\", \"field\": \"user.gender\", "
                                       "\"normalizer\": \"gender\"}, {\"name\": \"age\", \"field\": \"user.age\", "
                                       "\"normalizer\": \"bucket\", \"bounds\": [18, 25, 35, 65]}, "
                                       "{\"name\": \"query\", \"field\": \"query\", \"normalizer\": \"query\"}, "
                                       "{\"name\": \"country\", \"field\": \"user.country\", "
                                       "\"normalizer\": \"country\"}]}",
                                  "t", err, sizeof err) == 0,
                  "%s", err);
    ck_assert_uint_eq(a.features[1].dims, 4u | 8u); /* qc_item: query (2), country (3) */
    static const struct { const char *raw, *want; } ages[] = {
        {"17", "<18"}, {"18", "18-24"}, {" 24 ", "18-24"}, {"25", "25-34"}, {"64", "35-64"},
        {"65", "65+"}, {"120", "65+"}, {"-3", "<18"}, {"x", "unknown"}, {"", "unknown"}, {"18.5", "unknown"}};
    for (size_t i = 0; i < sizeof ages / sizeof ages[0]; i++) {
        iqp_segment_normalize(&a.segments[1], ages[i].raw, strlen(ages[i].raw), out);
        ck_assert_msg(strcmp(out, ages[i].want) == 0, "age '%s' -> '%s', want '%s'", ages[i].raw, out, ages[i].want);
    }
    /* a context built from lookup arguments, by name */
    iqp_context_buf cb;
    const char *names[] = {"age", "country"}, *values[] = {"30", "de"};
    ck_assert_msg(iqp_context_build(&a, "  Red  DRESS ", names, values, 2, &cb, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(cb.ctx.v[1].s, "25-34");
    ck_assert_str_eq(cb.ctx.v[2].s, "red dress");
    ck_assert_str_eq(cb.ctx.v[3].s, "DE");
    ck_assert_ptr_null(cb.ctx.v[0].s);
    ck_assert_uint_eq(iqp_context_mask(&a, &cb.ctx), 14u);
    iqp_context_buf_free(&cb);
    const char *bad[] = {"planet"};
    ck_assert_int_eq(iqp_context_build(&a, NULL, bad, values, 1, &cb, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "unknown segment 'planet'") && strstr(err, "age"), "%s", err);
}
END_TEST

START_TEST(segment_errors_name_the_problem) {
    static const struct { const char *json, *want; } cases[] = {
        {"{\"segments\": []}", "\"segments\" must be an array of 1..8 objects"},
        {"{\"segments\": [{\"name\": \"device\", \"field\": \"user.device\", \"normalizer\": \"enum\"}]}",
         "segments[0].values must be an array"},
        {"{\"segments\": [{\"name\": \"q\", \"field\": \"text\", \"normalizer\": \"query\"}]}",
         "reads the event's \"query\" field only"},
        {"{\"segments\": [{\"name\": \"x\", \"field\": \"user..x\", \"normalizer\": \"country\"}]}",
         "segments[0].field must be"},
        {"{\"segments\": [{\"name\": \"x\", \"field\": \"user.x\", \"normalizer\": \"colour\"}]}",
         "segments[0].normalizer must be one of"},
        {"{\"segments\": [{\"name\": \"age\", \"field\": \"user.age\", \"normalizer\": \"bucket\", "
         "\"bounds\": [30, 20]}]}",
         "segments[0].bounds[1] must be an integer"},
        {"{\"segments\": [{\"name\": \"ts\", \"field\": \"user.ts\", \"normalizer\": \"gender\"}]}",
         "segments[0].name is missing or invalid"},
        {"{\"segments\": [{\"name\": \"g\", \"field\": \"user.gender\", \"normalizer\": \"gender\", "
         "\"fallback\": \"x\"}]}",
         "only an enum or bucket segment has one"},
        {"{\"segments\": [{\"name\": \"query\", \"field\": \"query\", \"normalizer\": \"query\"}]}",
         "the default features use segment \"country\""},
        {"{\"features\": [{\"name\": \"d_item\", \"context\": [\"device\"]}]}",
         "features[0].context must be a non-empty array of distinct segment names (\"query\", \"country\", "
         "\"gender\")"},
        {"{\"segments\": [{\"name\": \"a\", \"field\": \"user.a\", \"normalizer\": \"country\"}, "
         "{\"name\": \"a\", \"field\": \"user.b\", \"normalizer\": \"country\"}]}",
         "segments[1] \"a\" is listed twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        iqp_config c;
        iqp_config_defaults(&c);
        ck_assert_msg(iqp_config_parse(&c, cases[i].json, "t.json", err, sizeof err) == -1, "accepted: %s",
                      cases[i].json);
        ck_assert_msg(strstr(err, cases[i].want) && strncmp(err, "t.json: ", 8) == 0, "%s\ngave: %s\nwant: %s",
                      cases[i].json, err, cases[i].want);
    }
}
END_TEST

/* ---- the fixture ---------------------------------------------------------------------- */

typedef struct context {
    const char *query;
    const char *items[MAX_ITEMS];
    size_t n_items;
} context;

static char *setup_error, *dir, *store, *traffic, *config_path, *default_config, *redis_url;
static oracle *orc;
static int redis_port;
static pid_t redis_pid;
static context contexts[N_QUERIES];
static size_t n_contexts;

static void fail_setup(const char *what) {
    if (!setup_error) setup_error = tu_fmt("segments setup: %s", what);
}

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int rc = fputs(text, f) < 0;
    return fclose(f) || rc ? -1 : 0;
}

static void choose_contexts(void) {
    for (size_t q = 0; q < oracle_n_queries(orc) && n_contexts < N_QUERIES; q += 1 + q) {
        context *c = &contexts[n_contexts++];
        size_t n;
        c->query = oracle_query(orc, q, NULL);
        const char *const *items = oracle_query_items(orc, c->query, &n);
        for (c->n_items = 0; c->n_items < n && c->n_items < MAX_ITEMS - 1; c->n_items++)
            c->items[c->n_items] = items[c->n_items];
        c->items[c->n_items++] = "never-shown-item";
    }
}

static void segments_setup(void) {
    if (!(dir = tu_mkdtemp("segments"))) return fail_setup("no temp dir");
    store = tu_fmt("%s/store", dir);
    traffic = tu_fmt("%s/traffic.jsonl", dir);
    config_path = tu_fmt("%s/device.json", dir);
    default_config = tu_fmt("%s/default.json", dir);
    if (write_file(config_path, DEVICE_CONFIG) < 0 || write_file(default_config, "{}") < 0)
        return fail_setup("cannot write the configs");
    if (!tu_run_ok(tu_fmt("'%s' gen --devices --seed 11 --impressions 3000 --start %lld --span 6h --out '%s'",
                       tu_iqp(), START_MS, traffic)))
        return fail_setup("iqp gen --devices failed");
    if (!tu_run_ok(tu_fmt("'%s' backfill --config '%s' --store '%s' --dead-letter '%s/dl.jsonl' '%s' 2>/dev/null",
                       tu_iqp(), config_path, store, dir, traffic)))
        return fail_setup("iqp backfill failed");
    orc = oracle_new((int64_t)time(NULL) * 1000);
    oracle_count_devices(orc);
    oracle_keep_events(orc);
    if (oracle_load_file(orc, traffic) < 0) return fail_setup("the oracle cannot read the traffic");
    choose_contexts();
    redis_port = tu_free_port();
    redis_url = tu_fmt("redis://127.0.0.1:%d/0", redis_port);
    char *log = tu_fmt("%s/redis.log", dir);
    redis_pid = tu_redis_start(redis_port, log);
    free(log);
    if (redis_pid <= 0) return fail_setup("redis-server did not start");
    if (!tu_run_ok(tu_fmt("'%s' publish --store '%s' --redis %s --all --quiet", tu_iqp(), store, redis_url)))
        fail_setup("iqp publish --all failed");
}

static void segments_teardown(void) {
    if (redis_pid > 0) tu_stop_pid(redis_pid, SIGKILL, 5000);
    if (dir) tu_rmrf(dir);
    oracle_free(orc);
    free(dir), free(store), free(traffic), free(config_path), free(default_config), free(redis_url);
    free(setup_error);
}

static void require_setup(void) { ck_assert_msg(setup_error == NULL, "%s", setup_error); }

/* The oracle's counts of feature f for c and device (normalized) as of
 * as_of, counting things with ts < before: [w * n_items + i]. */
static oracle_counts *expected(int f, const char *query, const char *const *items, size_t n_items,
                               const char *device, int64_t as_of, int64_t before) {
    oracle_counts *out = calloc(ORACLE_N_WINDOWS * n_items + 1, sizeof *out);
    if (f == F_QD || f == F_D) {
        oracle_lookup_device(orc, f == F_QD ? query : NULL, device, as_of, before, items, n_items, out);
        return out;
    }
    int applicable[ORACLE_N_FEATURES];
    oracle_counts *all = calloc((size_t)ORACLE_N_FEATURES * ORACLE_N_WINDOWS * n_items + 1, sizeof *all);
    oracle_lookup_before(orc, query, "US", "female", as_of, before, items, n_items, applicable, all);
    memcpy(out, all + (size_t)f * ORACLE_N_WINDOWS * n_items, ORACLE_N_WINDOWS * n_items * sizeof *out);
    free(all);
    return out;
}

static const char *const COUNTER_KEYS[ORACLE_N_COUNTERS] = {
    "impression", "engaged", "click", "save", "closeup", "long_click", "download", "screenshot"};

static int feature_index(const char *name) {
    static const char *const names[N_FEATURES] = {"q_item", "qc_item", "qg_item", "c_item",
                                                   "g_item", "qd_item", "d_item"};
    for (int f = 0; f < N_FEATURES; f++)
        if (strcmp(names[f], name) == 0) return f;
    return -1;
}

static int window_index(const char *name) {
    for (int w = 0; w < ORACLE_N_WINDOWS; w++)
        if (strcmp(oracle_window_names[w], name) == 0) return w;
    return -1;
}

static int item_index(const context *c, const char *item) {
    for (size_t i = 0; i < c->n_items; i++)
        if (strcmp(c->items[i], item) == 0) return (int)i;
    return -1;
}

/* `iqp lookup SOURCE` of context c with device raw (and US / female). */
static char *lookup_cmd(const char *source, const context *c, const char *raw_device) {
    char *q = tu_shell_quote(c->query), *d = tu_shell_quote(raw_device), *list = tu_fmt("%s", "");
    for (size_t i = 0; i < c->n_items; i++) {
        char *next = tu_fmt("%s '%s'", list, c->items[i]);
        free(list);
        list = next;
    }
    char *cmd = tu_fmt("'%s' lookup %s --query %s --country us --gender F --segment device=%s --%s", tu_iqp(),
                       source, q, d, list);
    free(q), free(d), free(list);
    return cmd;
}

/* Checks every line of one lookup's output against the oracle; returns
 * the number of values compared. */
static uint64_t check_lookup_output(const context *c, const char *device, const char *out, int64_t as_of,
                                    int *seen_features) {
    oracle_counts *want[N_FEATURES];
    for (int f = 0; f < N_FEATURES; f++) want[f] = expected(f, c->query, c->items, c->n_items, device, as_of, INT64_MAX);
    uint64_t compared = 0;
    for (const char *line = out; *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        json_t *row = json_loadb(line, len, 0, NULL);
        ck_assert_msg(row != NULL, "not JSON: %.*s", (int)len, line);
        int f = feature_index(json_string_value(json_object_get(row, "feature")));
        int w = window_index(json_string_value(json_object_get(row, "window")));
        int i = item_index(c, json_string_value(json_object_get(row, "item")));
        ck_assert_msg(f >= 0 && w >= 0 && i >= 0, "unexpected row %.*s", (int)len, line);
        seen_features[f] = 1;
        const oracle_counts *o = &want[f][(size_t)w * c->n_items + (size_t)i];
        json_t *ctx = json_object_get(row, "context");
        if (f == F_QD || f == F_D) {
            ck_assert_str_eq(json_string_value(json_object_get(ctx, "device")), device);
            ck_assert_uint_eq(json_object_size(ctx), f == F_QD ? 2 : 1);
        }
        ck_assert_msg(json_integer_value(json_object_get(row, "context_count")) == o->context_count,
                      "%.*s: context_count, oracle %" PRId64, (int)len, line, o->context_count);
        for (int k = 0; k < ORACLE_N_COUNTERS; k++)
            ck_assert_msg(json_integer_value(json_object_get(row, COUNTER_KEYS[k])) == o->c[k],
                          "%.*s: %s, oracle %" PRId64, (int)len, line, COUNTER_KEYS[k], o->c[k]);
        compared += 1 + ORACLE_N_COUNTERS;
        json_decref(row);
        line += len + (nl != NULL);
    }
    for (int f = 0; f < N_FEATURES; f++) free(want[f]);
    return compared;
}

START_TEST(lookup_store_equals_the_oracle) {
    require_setup();
    int64_t as_of = oracle_watermark(orc);
    char *source = tu_fmt("--store '%s' --as-of %" PRId64, store, as_of);
    uint64_t compared = 0, engaged = 0;
    for (size_t ci = 0; ci < n_contexts; ci++)
        for (size_t d = 0; d < N_DEVICES; d++) {
            int seen[N_FEATURES] = {0};
            char *cmd = lookup_cmd(source, &contexts[ci], DEVICES[d].raw), *out = NULL;
            ck_assert_msg(tu_run(cmd, &out) == 0, "failed: %s", cmd);
            compared += check_lookup_output(&contexts[ci], DEVICES[d].norm, out, as_of, seen);
            for (int f = 0; f < N_FEATURES; f++) ck_assert_msg(seen[f], "%s: no rows of feature %d", cmd, f);
            oracle_counts *qd = expected(F_QD, contexts[ci].query, contexts[ci].items, contexts[ci].n_items,
                                         DEVICES[d].norm, as_of, INT64_MAX);
            for (size_t i = 0; i < contexts[ci].n_items; i++) engaged += qd[i].c[1] > 0;
            free(qd), free(out), free(cmd);
        }
    fprintf(stderr, "segments: %" PRIu64 " lookup --store values equal the oracle (%" PRIu64
            " engaged query x item x device cells)\n", compared, engaged);
    ck_assert_uint_gt(engaged, 10); /* not vacuous */
    /* without a device, the device features are skipped */
    char *cmd = tu_fmt("'%s' lookup --store '%s' --query '%s' --feature qd_item --feature q_item i1", tu_iqp(),
                       store, contexts[0].query), *out = NULL;
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    ck_assert_msg(strstr(out, "\"q_item\"") && !strstr(out, "qd_item"), "%s", out);
    free(cmd), free(out), free(source);
    /* a segment the layout lacks, and a malformed --segment, are usage errors */
    cmd = tu_fmt("'%s' lookup --store '%s' --segment planet=mars i1 2>&1", tu_iqp(), store);
    ck_assert_int_eq(tu_run(cmd, &out), 2);
    ck_assert_msg(strstr(out, "unknown segment 'planet'") && strstr(out, "device"), "%s", out);
    free(cmd), free(out);
    cmd = tu_fmt("'%s' lookup --store '%s' --segment device i1 2>&1", tu_iqp(), store);
    ck_assert_int_eq(tu_run(cmd, &out), 2);
    ck_assert_msg(strstr(out, "--segment takes NAME=VALUE"), "%s", out);
    free(cmd), free(out);
}
END_TEST

START_TEST(store_refuses_other_segments) {
    require_setup();
    char *out = NULL, *cmd = tu_fmt("'%s' lookup --store '%s' --config '%s' --query x i1 2>&1", tu_iqp(), store,
                                    default_config);
    ck_assert_int_eq(tu_run(cmd, &out), 1);
    ck_assert_msg(strstr(out, "segments differ") && strstr(out, "device"), "%s", out);
    free(cmd), free(out);
    cmd = tu_fmt("'%s' backfill --store '%s' --dead-letter '%s/dl2.jsonl' '%s' 2>&1", tu_iqp(), store, dir, traffic);
    ck_assert_int_eq(tu_run(cmd, &out), 1);
    ck_assert_msg(strstr(out, "segments differ"), "%s", out);
    free(cmd), free(out);
}
END_TEST

/* libiqp's answer for c under ctx against the oracle; the device features
 * read NaN when device is NULL. Returns the values compared. */
static uint64_t compare_client(iqp_client *cl, const context *c, const iqp_ctx *ctx, const char *device,
                               int positional) {
    size_t nf = iqp_client_n_features(cl), nw = iqp_client_n_windows(cl), nm = iqp_client_n_measures(cl);
    ck_assert_uint_eq(nf, N_FEATURES);
    size_t len = iqp_client_result_len(cl, c->n_items);
    double *got = malloc(len * sizeof *got);
    iqp_status s = positional ? iqp_client_lookup(cl, c->query, "us", "F", c->items, c->n_items, got, len)
                              : iqp_client_lookup_ctx(cl, c->query, ctx, c->items, c->n_items, got, len);
    ck_assert_msg(s == IQP_OK, "lookup '%s': %s", c->query, iqp_client_errstr(cl));
    uint64_t compared = 0;
    int64_t as_of = oracle_watermark(orc);
    for (size_t f = 0; f < nf; f++) {
        int device_feature = f == F_QD || f == F_D;
        oracle_counts *want = device_feature && !device ? NULL
                                                        : expected((int)f, c->query, c->items, c->n_items, device,
                                                                   as_of, INT64_MAX);
        for (size_t i = 0; i < c->n_items; i++)
            for (size_t w = 0; w < nw; w++) {
                const double *g = &got[((i * nf + f) * nw + w) * nm];
                int m = oracle_measures_differ(want ? &want[w * c->n_items + i] : NULL, g);
                ck_assert_msg(m < 0, "'%s' %s device %s f%zu w%zu: measure %s is %.17g, not the oracle's", c->query,
                              c->items[i], device ? device : "-", f, w,
                              iqp_client_measure_name(cl, (size_t)(m < 0 ? 0 : m)), g[m < 0 ? 0 : m]);
                compared += want ? nm : 0;
            }
        free(want);
    }
    free(got);
    return compared;
}

START_TEST(libiqp_by_name_equals_the_oracle) {
    require_setup();
    iqp_client_options o;
    iqp_client_options_init(&o);
    o.timeout_ms = 2000;
    iqp_client *cl = iqp_client_open(redis_url, &o);
    ck_assert_ptr_nonnull(cl);
    ck_assert_msg(iqp_client_status(cl) == IQP_OK, "open: %s", iqp_client_errstr(cl));
    iqp_ctx *ctx = iqp_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_int_eq(iqp_ctx_set(ctx, "country", "us"), IQP_OK);
    ck_assert_int_eq(iqp_ctx_set(ctx, "gender", "F"), IQP_OK);
    uint64_t compared = 0;
    for (size_t ci = 0; ci < n_contexts; ci++) {
        for (size_t d = 0; d < N_DEVICES; d++) {
            ck_assert_int_eq(iqp_ctx_set(ctx, "device", DEVICES[d].raw), IQP_OK); /* replaces */
            compared += compare_client(cl, &contexts[ci], ctx, DEVICES[d].norm, 0);
        }
        compared += compare_client(cl, &contexts[ci], NULL, NULL, 1); /* positional: no device */
    }
    fprintf(stderr, "segments: %" PRIu64 " libiqp values equal the oracle\n", compared);
    /* an unset device is not given: the same as the positional call */
    ck_assert_int_eq(iqp_ctx_set(ctx, "device", NULL), IQP_OK);
    compare_client(cl, &contexts[0], ctx, NULL, 0);
    /* a name the layout has no segment of fails the call, naming it */
    double v[1024];
    ck_assert_int_eq(iqp_ctx_set(ctx, "planet", "mars"), IQP_OK);
    ck_assert_int_eq(iqp_client_lookup_ctx(cl, "x", ctx, contexts[0].items, 1, v, 1024), IQP_EINVAL);
    ck_assert_msg(strstr(iqp_client_errstr(cl), "unknown segment 'planet'"), "%s", iqp_client_errstr(cl));
    ck_assert_int_eq(iqp_ctx_set(ctx, "", "x"), IQP_EINVAL);
    ck_assert_int_eq(iqp_ctx_set(NULL, "device", "x"), IQP_EINVAL);
    iqp_ctx_clear(ctx);
    ck_assert_int_eq(iqp_client_lookup_ctx(cl, "x", ctx, contexts[0].items, 1, v, 1024), IQP_OK);
    iqp_ctx_free(ctx);
    iqp_client_close(cl);
}
END_TEST

START_TEST(lookup_redis_equals_lookup_store) {
    require_setup();
    char *gen = tu_redis_cli(redis_port, "GET iqp:gen");
    ck_assert_ptr_nonnull(gen);
    gen[strcspn(gen, "\n")] = 0;
    char *args = tu_fmt("HGET iqp:%s:meta as_of_ms", gen), *as_of = tu_redis_cli(redis_port, args);
    ck_assert_ptr_nonnull(as_of);
    as_of[strcspn(as_of, "\n")] = 0;
    char *redis_src = tu_fmt("--redis %s", redis_url), *store_src = tu_fmt("--store '%s' --as-of %s", store, as_of);
    size_t lines = 0;
    for (size_t ci = 0; ci < n_contexts; ci++) {
        char *c1 = lookup_cmd(redis_src, &contexts[ci], "ios"), *c2 = lookup_cmd(store_src, &contexts[ci], "ios");
        char *o1 = NULL, *o2 = NULL;
        ck_assert_msg(tu_run(c1, &o1) == 0, "failed: %s", c1);
        ck_assert_msg(tu_run(c2, &o2) == 0, "failed: %s", c2);
        ck_assert_msg(strcmp(o1, o2) == 0, "%s\nprinted\n%s\nbut %s printed\n%s", c1, o1, c2, o2);
        for (const char *p = o1; (p = strchr(p, '\n')); p++) lines++;
        free(o1), free(o2), free(c1), free(c2);
    }
    ck_assert_uint_gt(lines, n_contexts * N_FEATURES);
    free(redis_src), free(store_src), free(as_of), free(args), free(gen);
}
END_TEST

/* `iqp refresh --redis` publishes every (feature, context) of the store as
 * a new generation: the device contexts read back as the oracle's, and the
 * dump names them by segment. */
START_TEST(refresh_publishes_device_contexts) {
    require_setup();
    char *dump = tu_fmt("%s/refresh.dump", dir);
    ck_assert(tu_run_ok(tu_fmt("'%s' refresh --store '%s' --as-of %" PRId64 " --redis %s --dump '%s' --quiet",
                               tu_iqp(), store, oracle_watermark(orc), redis_url, dump)));
    char *text = tu_read_file(dump, NULL);
    ck_assert_ptr_nonnull(text);
    char *want = tu_fmt("context qd_item {query=\"%s\",device=ios}", contexts[0].query);
    ck_assert_msg(strstr(text, want), "the dump lacks '%s'", want);
    ck_assert_ptr_nonnull(strstr(text, "context d_item {device=unknown}"));
    iqp_client *cl = iqp_client_open(redis_url, NULL);
    ck_assert_msg(cl && iqp_client_status(cl) == IQP_OK, "open: %s", cl ? iqp_client_errstr(cl) : "no memory");
    iqp_ctx *ctx = iqp_ctx_new();
    ck_assert(iqp_ctx_set(ctx, "country", "us") == IQP_OK && iqp_ctx_set(ctx, "gender", "F") == IQP_OK);
    uint64_t compared = 0;
    for (size_t ci = 0; ci < n_contexts; ci++)
        for (size_t d = 0; d < N_DEVICES; d++) {
            ck_assert_int_eq(iqp_ctx_set(ctx, "device", DEVICES[d].raw), IQP_OK);
            compared += compare_client(cl, &contexts[ci], ctx, DEVICES[d].norm, 0);
        }
    fprintf(stderr, "segments: %" PRIu64 " values of the refreshed generation equal the oracle\n", compared);
    iqp_ctx_free(ctx);
    iqp_client_close(cl);
    free(want), free(text), free(dump);
}
END_TEST

/* ---- stream ------------------------------------------------------------------------- */

/* The lookup lines of every chosen context (device ios, US, female) from
 * a store, as of the oracle's watermark; malloc'd. */
static char *store_lines(const char *dir_) {
    char *source = tu_fmt("--store '%s' --as-of %" PRId64, dir_, oracle_watermark(orc)), *all = tu_fmt("%s", "");
    for (size_t ci = 0; ci < n_contexts; ci++) {
        char *cmd = lookup_cmd(source, &contexts[ci], "ios"), *out = NULL;
        int rc = tu_run(cmd, &out);
        char *next = tu_fmt("%s%s", all, rc == 0 && out ? out : "(failed)\n");
        free(all), free(out), free(cmd);
        all = next;
    }
    free(source);
    return all;
}

static pid_t spawn_logged(const char *const *argv, const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        if (!freopen("/dev/null", "w", stdout)) _exit(126);
        execv(tu_iqp(), (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* `iqp stream` with the device config over the same traffic on a
 * devbroker counts what backfill counted: every lookup line of the device
 * features (and the others) equal, byte for byte, once it has caught up
 * (polled, bounded). */
START_TEST(stream_counts_devices_as_backfill) {
    require_setup();
    static const char *const args[] = {"--brokers", "1", "--partitions", "4", "--topics", "imp,act", NULL};
    tu_broker broker;
    memset(&broker, 0, sizeof broker);
    ck_assert_int_eq(tu_broker_start(&broker, args), 0);
    ck_assert(tu_run_ok(tu_fmt("'%s' produce --brokers '%s' --impressions-topic imp --actions-topic act '%s' "
                               "2>/dev/null", tu_iqp(), broker.bootstrap, traffic)));
    char *sstore = tu_fmt("%s/stream-store", dir), *log = tu_fmt("%s/stream.log", dir);
    char *dl = tu_fmt("%s/stream-dl.jsonl", dir);
    const char *argv[] = {"iqp", "stream", "--config", config_path, "--store", sstore, "--brokers",
                          broker.bootstrap, "--group", "check-segments", "--impressions-topic", "imp",
                          "--actions-topic", "act", "--flush-ms", "200", "--dead-letter-file", dl,
                          "--checkpoint-topic", "off", "--metrics-listen", "off", NULL};
    pid_t pid = spawn_logged(argv, log);
    ck_assert_int_gt(pid, 0);
    char *want = store_lines(store), *got = NULL;
    int same = 0;
    for (int64_t t0 = (int64_t)time(NULL); !same && (int64_t)time(NULL) - t0 < tu_wait_limit_ms(60000) / 1000;) {
        free(got);
        got = access(sstore, F_OK) == 0 ? store_lines(sstore) : tu_fmt("%s", "");
        same = strcmp(got, want) == 0;
        if (!same) usleep(500000);
    }
    int rc = tu_stop_pid(pid, SIGTERM, 10000);
    tu_broker_stop(&broker);
    char *text = tu_read_file(log, NULL);
    ck_assert_msg(same, "the stream store's lookups never equalled the backfilled store's; stream log:\n%.2000s",
                  text ? text : "");
    ck_assert_msg(rc == 0, "iqp stream exited %d after SIGTERM:\n%.2000s", rc, text ? text : "");
    ck_assert_ptr_nonnull(strstr(got, "\"feature\":\"qd_item\""));
    fprintf(stderr, "segments: iqp stream counted the device features as backfill did (%zu bytes of lookups)\n",
            strlen(got));
    free(text), free(want), free(got), free(sstore), free(log), free(dl);
}
END_TEST

/* ---- export ------------------------------------------------------------------------- */

/* The first counted impression of every request id, by request id. */
static json_t *impressions_by_request(void) {
    json_t *map = json_object();
    for (size_t i = 0; i < oracle_n_events(orc); i++) {
        const oracle_event *e = oracle_get_event(orc, i);
        if (!e->is_action && e->counted && !json_object_get(map, e->request_id))
            json_object_set_new(map, e->request_id, json_integer((json_int_t)i));
    }
    return map;
}

START_TEST(export_has_device_columns) {
    require_setup();
    char *out = tu_fmt("%s/rows.jsonl", dir), *work = tu_fmt("%s/work", dir);
    ck_assert(mkdir(work, 0700) == 0);
    ck_assert(tu_run_ok(tu_fmt("'%s' export --quiet --config '%s' --events '%s' --out '%s' --work-dir '%s'", tu_iqp(),
                            config_path, traffic, out, work)));
    json_t *by_request = impressions_by_request();
    FILE *f = fopen(out, "r");
    ck_assert_ptr_nonnull(f);
    char *line = NULL, key[128];
    size_t cap = 0;
    uint64_t rows = 0, compared = 0, nonzero = 0;
    const oracle_event *cached = NULL;
    oracle_counts *want[2] = {NULL, NULL};
    while (getline(&line, &cap, f) > 0) {
        json_t *row = json_loads(line, 0, NULL);
        ck_assert_ptr_nonnull(row);
        json_t *idx = json_object_get(by_request, json_string_value(json_object_get(row, "request_id")));
        ck_assert_ptr_nonnull(idx);
        const oracle_event *e = oracle_get_event(orc, (size_t)json_integer_value(idx));
        ck_assert_str_eq(json_string_value(json_object_get(row, "device")), e->device);
        ck_assert_str_eq(json_string_value(json_object_get(row, "country")), e->country);
        if (e != cached) { /* every item of the impression, once */
            for (int k = 0; k < 2; k++) {
                free(want[k]);
                want[k] = expected(k ? F_D : F_QD, e->query, (const char *const *)e->items, e->n_items, e->device,
                                   e->ts, e->ts);
            }
            cached = e;
        }
        const char *item = json_string_value(json_object_get(row, "item"));
        size_t i = 0;
        while (i < e->n_items && strcmp(e->items[i], item) != 0) i++;
        ck_assert_uint_lt(i, e->n_items);
        for (int k = 0; k < 2; k++)
            for (int w = 0; w < ORACLE_N_WINDOWS; w++) {
                const oracle_counts *o = &want[k][(size_t)w * e->n_items + i];
                const char *fname = k ? "d_item" : "qd_item";
                snprintf(key, sizeof key, "%s.%s.context_count", fname, oracle_window_names[w]);
                ck_assert_msg(json_integer_value(json_object_get(row, key)) == o->context_count, "row %" PRIu64
                              " %s: %" PRId64 " want %" PRId64, rows, key,
                              (int64_t)json_integer_value(json_object_get(row, key)), o->context_count);
                for (int c = 0; c < ORACLE_N_COUNTERS; c++) {
                    snprintf(key, sizeof key, "%s.%s.%s", fname, oracle_window_names[w], COUNTER_KEYS[c]);
                    ck_assert_msg(json_integer_value(json_object_get(row, key)) == o->c[c],
                                  "row %" PRIu64 " %s: %" PRId64 " want %" PRId64, rows, key,
                                  (int64_t)json_integer_value(json_object_get(row, key)), o->c[c]);
                    nonzero += o->c[c] != 0;
                }
                compared += 1 + ORACLE_N_COUNTERS;
            }
        rows++;
        json_decref(row);
    }
    fprintf(stderr, "segments: %" PRIu64 " export rows, %" PRIu64 " device feature values equal the oracle "
            "(%" PRIu64 " non-zero)\n", rows, compared, nonzero);
    ck_assert_uint_gt(rows, 1000);
    ck_assert_uint_gt(nonzero, 100);
    free(want[0]), free(want[1]), free(line);
    fclose(f);
    json_decref(by_request);
    tu_rmrf(work);
    free(out), free(work);
}
END_TEST

int main(void) {
    Suite *s = suite_create("segments");
    TCase *unit = tcase_create("config");
    tcase_add_test(unit, default_segments);
    tcase_add_test(unit, device_and_age_segments);
    tcase_add_test(unit, segment_errors_name_the_problem);
    suite_add_tcase(s, unit);
    TCase *e2e = tcase_create("device");
    tcase_add_unchecked_fixture(e2e, segments_setup, segments_teardown);
    tcase_set_timeout(e2e, 300);
    tcase_add_test(e2e, lookup_store_equals_the_oracle);
    tcase_add_test(e2e, store_refuses_other_segments);
    tcase_add_test(e2e, libiqp_by_name_equals_the_oracle);
    tcase_add_test(e2e, lookup_redis_equals_lookup_store);
    tcase_add_test(e2e, refresh_publishes_device_contexts);
    tcase_add_test(e2e, stream_counts_devices_as_backfill);
    tcase_add_test(e2e, export_has_device_columns);
    suite_add_tcase(s, e2e);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

/* check_stream.c -- `iqp stream` against a real Kafka protocol broker
 * (`iqp devbroker`), checked value by value against the independent
 * brute-force model (tests/oracle.c).
 *
 * Design
 * ------
 * An unchecked fixture, run once, writes the traffic: `iqp gen` output
 * (with its malformed lines, redeliveries and repeated actions) plus a
 * small hand-written file of bad input (oversized, unknown schema, not
 * JSON, future-dated). The oracle reads both, in that order, with the
 * wall clock as "now"; it also picks the lookup contexts (top queries with
 * a country and a gender, and the items seen under each).
 *
 * Every test starts its own broker (3 brokers, 8 partitions) and its own
 * stores, puts the traffic on Kafka with `iqp produce` (keyed by
 * normalized query), runs one or two `iqp stream` processes through a
 * scenario, waits until the stores have counted every message (the sum of
 * each partition's next offset, read with `iqp stats` beside the running
 * writer, equals what was produced to the topic), stops them with SIGTERM,
 * and compares.
 *
 * Comparing: for each context, `iqp lookup` runs against every store and
 * the test sums the integer counts (context_count, impression, engaged,
 * each action) line by line, then compares the sums with the oracle. Two
 * instances of one group keep separate stores; the oracle's counts are
 * sums over events, and every event is counted in exactly one store, so
 * summing is the merge (rates are ratios of sums, so they are not summed:
 * the single-store tests leave them to check_e2e's exact rate checks).
 *
 * Order: the stream sees partitions interleaved, not file order. The
 * counting rules make the result independent of order as long as no
 * event is older than the 1 h granularity's retention behind the running
 * watermark (24 h); the traffic spans 6 h.
 *
 * Every process a test starts is a child stopped by pid in teardown.
 */
#include <check.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "consumers/partition_checkpoint.h"
#include "tests/oracle.h"
#include "tests/testutil.h"

#define START_MS 1717996834567LL
#ifndef IMPRESSIONS
#define IMPRESSIONS 6000
#endif
#define MAX_CONTEXTS 24
#define MAX_ITEMS 40
#define CATCH_UP_MS 120000
#define MAX_STREAMS 4
#define MAX_PARTITIONS 12
/* partitions of every topic the test's broker creates: 8, or 12 for the
 * repartition tests (the matrix: >= 12 partitions) */
static int n_partitions = 8;
#define N_ACTIONS ORACLE_N_ACTIONS

static const char *const counter_keys[ORACLE_N_COUNTERS] = {
    "impression", "engaged", "click", "save", "closeup", "long_click", "download", "screenshot"};

typedef struct context {
    const char *query, *country, *gender;
    const char *items[MAX_ITEMS + 1];
    size_t n_items;
} context;

/* ---- fixture: traffic and the oracle -------------------------------------- */

static char *setup_error, *data_dir, *traffic, *bad_input;
static oracle *orc;
static context contexts[MAX_CONTEXTS];
static size_t n_contexts;
static uint64_t expected_msgs[2]; /* per topic: impressions (and everything else), actions */

static void fail_setup(const char *what) {
    if (!setup_error) setup_error = tu_fmt("stream setup: %s", what);
}

/* Hand-written bad input: each line must be dead-lettered with its code. */
static int write_bad_input(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int64_t future = (int64_t)time(NULL) * 1000 + 3600 * 1000;
    fprintf(f, "{\"schema\":\"click.v9\",\"event_id\":\"u1\",\"ts\":%lld}\n", START_MS);
    fprintf(f, "this is not json\n");
    fprintf(f, "{\"schema\":\"impression.v1\",\"event_id\":\"fut1\",\"request_id\":\"rf\","
               "\"ts\":%lld,\"query\":\"red shoes\",\"user\":{\"country\":\"US\",\"gender\":\"f\"},"
               "\"items\":[\"i1\",\"i2\"]}\n",
            (long long)future);
    fprintf(f, "{\"schema\":\"impression.v1\",\"event_id\":\"big1\",\"request_id\":\"rb\",\"ts\":%lld,"
               "\"query\":\"red shoes\",\"user\":{\"country\":\"US\"},\"items\":[\"i1\"],\"pad\":\"",
            START_MS);
    for (int i = 0; i < (1 << 20) + 100; i++) fputc('x', f);
    fprintf(f, "\"}\n");
    fprintf(f, "{\"schema\":\"action.v1\",\"event_id\":\"a-bad\",\"ts\":%lld}\n", START_MS);
    return fclose(f);
}

/* Topic totals computed here, from the files, by produce's routing rule:
 * action.v1 lines go to the actions topic, every other line to impressions. */
static void count_expected(const char *path) {
    size_t len;
    char *text = tu_read_file(path, &len), *line = text, *nl;
    for (; line && *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl) nl = line + strlen(line);
        if (nl > line) {
            json_t *j = json_loadb(line, (size_t)(nl - line), 0, NULL);
            json_t *s = json_object_get(j, "schema");
            expected_msgs[json_is_string(s) && !strcmp(json_string_value(s), "action.v1")]++;
            json_decref(j);
        }
        if (!*nl) break;
    }
    free(text);
}

static void choose_contexts(void) {
    static const char *const genders[3] = {"female", "male", "unknown"};
    const char *countries[2] = {"ZZ", "ZZ"};
    for (size_t i = 0, j = 0; i < oracle_n_countries(orc) && j < 2; i++)
        countries[j++] = oracle_country(orc, i, NULL);
    size_t nq = oracle_n_queries(orc);
    for (size_t q = 0; q < nq && n_contexts < MAX_CONTEXTS; q += 1 + q / 4) {
        context *c = &contexts[n_contexts];
        size_t n;
        const char *const *items = oracle_query_items(orc, oracle_query(orc, q, NULL), &n);
        c->query = oracle_query(orc, q, NULL);
        c->country = countries[n_contexts % 2];
        c->gender = genders[n_contexts % 3];
        for (c->n_items = 0; c->n_items < n && c->n_items < MAX_ITEMS - 1; c->n_items++)
            c->items[c->n_items] = items[c->n_items];
        c->items[c->n_items++] = "never-shown-item";
        n_contexts++;
    }
}

static void stream_setup(void) {
    if (!(data_dir = tu_mkdtemp("stream-data"))) return fail_setup("no temp dir");
    traffic = tu_fmt("%s/traffic.jsonl", data_dir);
    bad_input = tu_fmt("%s/bad.jsonl", data_dir);
    /* ops/test --sanitize makes this smaller: the sanitized stream is slow */
    const char *env = getenv("IQP_STREAM_TEST_IMPRESSIONS");
    int impressions = env && atoi(env) > 0 ? atoi(env) : IMPRESSIONS;
    char *cmd = tu_fmt("'%s' gen --seed 31 --impressions %d --start %lld --span 6h --out '%s'",
                       tu_iqp(), impressions, START_MS, traffic);
    int rc = tu_run(cmd, NULL);
    free(cmd);
    if (rc != 0) return fail_setup("iqp gen failed");
    if (write_bad_input(bad_input) < 0) return fail_setup("cannot write bad input");
    orc = oracle_new((int64_t)time(NULL) * 1000);
    if (oracle_load_file(orc, traffic) < 0 || oracle_load_file(orc, bad_input) < 0)
        return fail_setup("oracle cannot read the traffic");
    count_expected(traffic);
    count_expected(bad_input);
    choose_contexts();
    if (n_contexts < 10) fail_setup("too few contexts");
}

static void stream_teardown(void) {
    if (data_dir) tu_rmrf(data_dir);
    oracle_free(orc);
    free(data_dir);
    free(traffic);
    free(bad_input);
    free(setup_error);
}

/* ---- per test: broker, producer, stream processes ------------------------- */

typedef struct stream_proc {
    pid_t pid;
    char *store, *log;
    int metrics_port;
} stream_proc;

static char *tmp;
static tu_broker broker;
static pid_t producer;
static stream_proc streams[MAX_STREAMS];
static const char *stream_extra_arg; /* one more argument for start_stream (NULL: none) */
static char *state_dir;              /* start_stream's --state-dir, shared by the instances (NULL: --store) */
/* --checkpoint-dir tests: instance i's own --state-dir (over state_dir),
 * and the checkpoint dir they share */
static char *instance_state[MAX_STREAMS], *checkpoint_dir;
static const char *stream_env;       /* NAME=VALUE put in the next started instance's environment */
static int produce_unkeyed;          /* produce() sends every line without a key (iqp produce --key none) */

/* The Redis tests' server: a real redis-server child on a free port
 * (redis_port 0: the stream runs without --redis). */
static int redis_port;
static pid_t redis_pid;
static char redis_url[64];

static void start_test_env(const char *topics) {
    char parts[16];
    snprintf(parts, sizeof parts, "%d", n_partitions);
    const char *const args[] = {"--brokers", "3", "--partitions", parts, "--topics", topics, NULL};
    ck_assert_msg(setup_error == NULL, "%s", setup_error);
    tmp = tu_mkdtemp("stream");
    ck_assert_ptr_nonnull(tmp);
    ck_assert_int_eq(tu_broker_start(&broker, args), 0);
    for (int i = 0; i < MAX_STREAMS; i++) {
        streams[i].store = tu_fmt("%s/store%d", tmp, i);
        streams[i].log = tu_fmt("%s/stream%d.log", tmp, i);
    }
}

static void test_setup(void) { start_test_env("imp,act,dl,iqp-checkpoints,rp-impressions,rp-actions"); }

/* the repartition tests: every topic with 12 partitions */
static void repartition_setup(void) {
    n_partitions = MAX_PARTITIONS;
    test_setup();
}

/* repartition topics of one partition (every context is slice 0) */
static void resend_setup(void) { start_test_env("imp,act,dl,iqp-checkpoints,rp1-impressions:1,rp1-actions:1"); }

/* A sanitizer report in a child's log (ops/test --sanitize) is copied to
 * this test's output, where ops/test finds it and fails the run: a child
 * killed with SIGKILL, or one whose exit status is not checked, would
 * otherwise hide it. */
static void copy_sanitizer_reports(const char *log) {
    char *text = log ? tu_read_file(log, NULL) : NULL;
    const char *hit = NULL;
    static const char *const marks[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"};
    for (size_t k = 0; text && k < sizeof marks / sizeof marks[0] && !hit; k++) hit = strstr(text, marks[k]);
    if (hit) fprintf(stderr, "stream: sanitizer report in %s:\n%.4000s\n", log, hit);
    free(text);
}

static void test_teardown(void) {
    for (int i = 0; i < MAX_STREAMS; i++) {
        if (streams[i].pid > 0) tu_stop_pid(streams[i].pid, SIGKILL, 5000);
        copy_sanitizer_reports(streams[i].log);
        free(streams[i].store);
        free(streams[i].log);
        memset(&streams[i], 0, sizeof streams[i]);
    }
    if (producer > 0) tu_stop_pid(producer, SIGKILL, 5000);
    producer = 0;
    if (tmp) {
        char *log = tu_fmt("%s/produce.log", tmp);
        copy_sanitizer_reports(log);
        free(log);
    }
    if (redis_pid > 0) {
        kill(redis_pid, SIGCONT);
        tu_stop_pid(redis_pid, SIGKILL, 5000);
    }
    redis_pid = 0;
    redis_port = 0;
    stream_extra_arg = NULL;
    stream_env = NULL;
    produce_unkeyed = 0;
    n_partitions = 8;
    free(state_dir);
    state_dir = NULL;
    for (int i = 0; i < MAX_STREAMS; i++) free(instance_state[i]), instance_state[i] = NULL;
    free(checkpoint_dir);
    checkpoint_dir = NULL;
    tu_broker_stop(&broker);
    if (tmp && !getenv("IQP_KEEP_TMP")) tu_rmrf(tmp);
    free(tmp);
    tmp = NULL;
}

static pid_t spawn(const char *const *argv, const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = log ? freopen(log, "a", stderr) : NULL;
        (void)f;
        if (!freopen("/dev/null", "w", stdout)) _exit(126);
        if (stream_env) putenv((char *)stream_env);
        execv(tu_iqp(), (char *const *)argv);
        _exit(127);
    }
    ck_assert_int_gt(pid, 0);
    return pid;
}

/* Puts the traffic and the bad input on Kafka; rate 0 = as fast as it goes.
 * wait: return when done (asserting success); else run in the background. */
static void produce(int rate, int wait) {
    char rate_s[32];
    snprintf(rate_s, sizeof rate_s, "%d", rate);
    const char *argv[] = {"iqp", "produce", "--brokers", broker.bootstrap, "--impressions-topic",
                          "imp", "--actions-topic", "act", "--rate", rate_s, "--property",
                          "message.max.bytes=4000000", "--key", produce_unkeyed ? "none" : "query",
                          traffic, bad_input, NULL};
    char *log = tu_fmt("%s/produce.log", tmp);
    producer = spawn(argv, log);
    free(log);
    if (wait) {
        int status;
        ck_assert_int_eq(waitpid(producer, &status, 0), producer);
        producer = 0;
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "iqp produce failed");
    }
}

static void wait_producer(void) {
    int status;
    if (producer <= 0) return;
    ck_assert_int_eq(waitpid(producer, &status, 0), producer);
    producer = 0;
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "iqp produce failed");
}

/* Starts instance i; dl_topic selects the Kafka dead-letter sink, else a
 * file next to the store. */
static void start_stream(int i, int dl_topic) {
    stream_proc *s = &streams[i];
    char listen[64], *dl_file = tu_fmt("%s/dead-letter%d.jsonl", tmp, i);
    s->metrics_port = tu_free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", s->metrics_port);
    const char *dir = instance_state[i] ? instance_state[i] : state_dir ? state_dir : s->store;
    const char *argv[40] = {"iqp", "stream", instance_state[i] || state_dir ? "--state-dir" : "--store", dir,
                            "--brokers", broker.bootstrap,
                            "--group", "check-stream", "--impressions-topic", "imp",
                            "--actions-topic", "act", "--flush-ms", "200", "--metrics-listen", listen,
                            "--property", "session.timeout.ms=6000", "--property",
                            "heartbeat.interval.ms=500", "--property",
                            "fetch.message.max.bytes=4000000",
                            dl_topic ? "--dead-letter-topic" : "--dead-letter-file",
                            dl_topic ? "dl" : dl_file};
    size_t n = 24;
    if (redis_port) argv[n++] = "--redis", argv[n++] = redis_url;
    if (checkpoint_dir)
        argv[n++] = "--checkpoint-dir", argv[n++] = checkpoint_dir, argv[n++] = "--checkpoint-interval", argv[n++] = "2s";
    if (stream_extra_arg) argv[n++] = stream_extra_arg;
    /* --repartition forwards the bad input's >1 MiB line: its producer must take it */
    if (produce_unkeyed) argv[n++] = "--property", argv[n++] = "message.max.bytes=4000000";
    ck_assert_uint_lt(n, sizeof argv / sizeof argv[0]);
    argv[n] = NULL;
    s->pid = spawn(argv, s->log);
    free(dl_file);
}

/* SIGTERM and the exit status (asserting a clean exit within 10 s). */
static void stop_stream(int i) {
    int rc = tu_stop_pid(streams[i].pid, SIGTERM, 10000);
    streams[i].pid = 0;
    ck_assert_msg(rc == 0, "iqp stream %d exited %d after SIGTERM (log %s)", i, rc, streams[i].log);
}

static void kill_stream(int i) {
    tu_stop_pid(streams[i].pid, SIGKILL, 5000);
    streams[i].pid = 0;
}

/* ---- waiting for the stores to catch up ------------------------------------ */

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The waits below are bounded by tu_wait_limit_ms (stretched for slow
 * binaries) and measure time on the clock, not by adding up their sleeps:
 * each poll runs `iqp stats` or an HTTP request, which take seconds under
 * ASan. */

/* Runs `iqp stats` on store: 0 with its output in *out, or 1 when the
 * store cannot be read (yet). Anything else (a crash, a sanitizer report:
 * LeakSanitizer exits 23) fails the test at once: polling on would only
 * wait out every bound. */
static int run_stats_of(const char *flag, const char *store, char **out) {
    char *cmd = tu_fmt("'%s' stats %s '%s' 2>/dev/null", tu_iqp(), flag, store), *report = NULL;
    int rc = tu_run(cmd, out);
    if (rc != 0 && rc != 1) {
        char *again = tu_fmt("'%s' stats %s '%s' 2>&1", tu_iqp(), flag, store);
        tu_run(again, &report);
        ck_abort_msg("%s exited %d:\n%.3000s", cmd, rc, report ? report : "");
    }
    free(cmd);
    return rc;
}

static int run_stats(const char *store, char **out) { return run_stats_of("--store", store, out); }

/* Adds the kafka_offsets of `iqp stats FLAG store` into best[topic][partition] (max). */
static void read_offsets_of(const char *flag, const char *store, int64_t best[2][MAX_PARTITIONS]) {
    char *out = NULL;
    if (run_stats_of(flag, store, &out) == 0) {
        json_t *j = json_loads(out, 0, NULL), *v;
        const char *key;
        json_object_foreach(json_object_get(j, "kafka_offsets"), key, v) {
            int t = strncmp(key, "imp/", 4) == 0 ? 0 : strncmp(key, "act/", 4) == 0 ? 1 : -1;
            int p = atoi(key + 4);
            if (t >= 0 && p >= 0 && p < n_partitions && json_integer_value(v) > best[t][p])
                best[t][p] = json_integer_value(v);
        }
        json_decref(j);
    }
    free(out);
}

static void read_offsets(const char *store, int64_t best[2][MAX_PARTITIONS]) { read_offsets_of("--store", store, best); }

/* The stores of instances 0..n-1, or (state_dir) the partition stores. */
static int list_stores(int n, char **out) {
    if (!state_dir) {
        for (int i = 0; i < n; i++) out[i] = tu_fmt("%s", streams[i].store);
        return n;
    }
    for (int p = 0; p < n_partitions; p++) out[p] = tu_fmt("%s/partition-%d", state_dir, p);
    return n_partitions;
}

static void free_stores(char **stores, int n) {
    for (int i = 0; i < n; i++) free(stores[i]);
}

/* Waits until the stores (together) have committed every produced message. */
static void wait_caught_up(int n_instances) {
    uint64_t got[2] = {0, 0};
    char *stores[MAX_PARTITIONS];
    int n_stores = list_stores(n_instances, stores);
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(CATCH_UP_MS);) {
        int64_t best[2][MAX_PARTITIONS] = {{0}};
        if (state_dir) /* every partition store at once (one process: cheaper under ASan) */
            read_offsets_of("--state-dir", state_dir, best);
        for (int i = 0; i < n_stores && !state_dir; i++)
            if (access(stores[i], F_OK) == 0) read_offsets(stores[i], best);
        got[0] = got[1] = 0;
        for (int p = 0; p < n_partitions; p++) got[0] += (uint64_t)best[0][p], got[1] += (uint64_t)best[1][p];
        if (got[0] == expected_msgs[0] && got[1] == expected_msgs[1]) return free_stores(stores, n_stores);
        usleep(300000);
    }
    ck_abort_msg("stores did not catch up: impressions %" PRIu64 "/%" PRIu64 ", actions %" PRIu64
                 "/%" PRIu64, got[0], expected_msgs[0], got[1], expected_msgs[1]);
}

/* ---- comparing with the oracle ------------------------------------------------ */

static void put_quoted(FILE *f, const char *s) {
    fputs(" '", f);
    for (; *s; s++) *s == '\'' ? fputs("'\\''", f) : fputc(*s, f);
    fputc('\'', f);
}

/* The lookup source arguments: a store read as of as_of, or (store NULL)
 * the test's Redis, which serves values as of its generation's as_of_ms. */
static char *source_args(const char *store, int64_t as_of) {
    if (!store) return tu_fmt("--redis %s", redis_url);
    return tu_fmt("--store '%s' --as-of %" PRId64, store, as_of);
}

static char *lookup_cmd(const char *source, const context *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fprintf(f, "'%s' lookup %s --query", tu_iqp(), source);
    put_quoted(f, c->query);
    fprintf(f, " --country %s --gender %s --", c->country, c->gender);
    for (size_t i = 0; i < c->n_items; i++) put_quoted(f, c->items[i]);
    fclose(f);
    return buf;
}

/* Runs one lookup and returns what it printed (asserting success). */
static char *run_lookup(const char *source, const context *c) {
    char *cmd = lookup_cmd(source, c), *out = NULL;
    ck_assert_msg(tu_run(cmd, &out) == 0, "lookup failed: %s", cmd);
    free(cmd);
    return out;
}

/* Adds one source's lookup output into sum (n lines, oracle order). */
static void add_lookup(const char *source, const context *c, oracle_counts *sum, size_t n) {
    char *out = run_lookup(source, c), *line, *save = NULL;
    size_t k = 0;
    for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save), k++) {
        json_t *j = json_loads(line, 0, NULL);
        ck_assert_msg(j && k < n, "lookup line %zu unreadable or extra", k);
        sum[k].context_count += json_integer_value(json_object_get(j, "context_count"));
        for (int x = 0; x < ORACLE_N_COUNTERS; x++)
            sum[k].c[x] += json_integer_value(json_object_get(j, counter_keys[x]));
        json_decref(j);
    }
    ck_assert_msg(k == n, "lookup printed %zu lines, want %zu", k, n);
    free(out);
}

/* Sums every context's lookups over the stores of n_instances instances
 * (or, with state_dir, over every partition store; with n_instances 0,
 * reads the test's Redis) and compares with the oracle; returns the
 * number of values compared. */
static uint64_t compare_with_oracle(int n_instances) {
    char *stores[MAX_PARTITIONS];
    int n_stores = n_instances ? list_stores(n_instances, stores) : 0;
    int64_t as_of = oracle_watermark(orc);
    uint64_t values = 0, bad = 0;
    for (size_t ci = 0; ci < n_contexts; ci++) {
        const context *c = &contexts[ci];
        size_t n = (size_t)ORACLE_N_FEATURES * ORACLE_N_WINDOWS * c->n_items;
        oracle_counts *want = calloc(n, sizeof *want), *got = calloc(n, sizeof *got);
        int applicable[ORACLE_N_FEATURES];
        oracle_lookup(orc, c->query, c->country, c->gender, as_of, c->items, c->n_items, applicable,
                      want);
        for (int i = 0; i < (n_stores ? n_stores : 1); i++) {
            char *src = source_args(n_stores ? stores[i] : NULL, as_of);
            add_lookup(src, c, got, n);
            free(src);
        }
        for (size_t k = 0; k < n; k++) {
            values += 1 + ORACLE_N_COUNTERS;
            int diff = got[k].context_count != want[k].context_count;
            for (int x = 0; x < ORACLE_N_COUNTERS; x++) diff |= got[k].c[x] != want[k].c[x];
            if (diff && bad++ < 10)
                fprintf(stderr, "stream: MISMATCH query='%s' %s/%s line %zu: impression %" PRId64
                                " vs %" PRId64 ", engaged %" PRId64 " vs %" PRId64
                                ", context %" PRId64 " vs %" PRId64 "\n",
                        c->query, c->country, c->gender, k, got[k].c[0], want[k].c[0], got[k].c[1],
                        want[k].c[1], got[k].context_count, want[k].context_count);
        }
        free(want);
        free(got);
    }
    fprintf(stderr, "stream: %" PRIu64 " values from %s compared over %zu contexts, %" PRIu64 " differ\n",
            values, n_stores ? "the store" : "Redis", n_contexts, bad);
    free_stores(stores, n_stores);
    ck_assert_msg(bad == 0, "%" PRIu64 " lookup lines differ from the oracle", bad);
    return values;
}

/* ---- metrics ------------------------------------------------------------------- */

/* Sums the values of every series of family name whose labels contain
 * every string in must (NULL-terminated). */
static double metric_sum(const char *text, const char *name, const char *const *must) {
    double total = 0;
    size_t nlen = strlen(name);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, name, nlen) != 0 || (l[nlen] != '{' && l[nlen] != ' ')) continue;
        const char *end = strchr(l, '\n'), *sp = NULL;
        if (!end) end = l + strlen(l);
        for (const char *c = l; c < end; c++)
            if (*c == ' ') sp = c;
        int ok = sp != NULL;
        for (const char *const *m = must; ok && m && *m; m++) {
            const char *hit = strstr(l, *m);
            ok = hit && hit < end;
        }
        if (ok) total += strtod(sp + 1, NULL);
    }
    return total;
}


/* Reads the per-partition series of family name (labels topic="imp" or
 * "act", partition="N") into v[topic][partition]; returns how many. */
static int partition_series(const char *text, const char *name, int64_t v[2][MAX_PARTITIONS]) {
    int n = 0;
    size_t nlen = strlen(name);
    memset(v, 0, sizeof(int64_t[2][MAX_PARTITIONS]));
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        char topic[8];
        int part;
        long long val;
        if (strncmp(l, name, nlen) != 0 || l[nlen] != '{') continue;
        if (sscanf(l + nlen, "{topic=\"%3[a-z]\",partition=\"%d\"} %lld", topic, &part, &val) != 3) continue;
        int t = strcmp(topic, "imp") == 0 ? 0 : strcmp(topic, "act") == 0 ? 1 : -1;
        ck_assert_msg(t >= 0 && part >= 0 && part < n_partitions, "unexpected series of %s", name);
        v[t][part] = val;
        n++;
    }
    return n;
}

static char *fetch_metrics(int port) {
    char *out = tu_try_fetch_metrics(port);
    ck_assert_msg(out != NULL, "GET /metrics on port %d failed", port);
    return out;
}

/* Waits (bounded) until instance i's metrics hold the text needle;
 * returns them (the last ones fetched when the bound ran out). */
static char *wait_metrics_with(int i, const char *needle) {
    char *m = fetch_metrics(streams[i].metrics_port);
    for (int64_t t0 = mono_ms(); !strstr(m, needle) && mono_ms() - t0 < tu_wait_limit_ms(15000);) {
        free(m);
        usleep(200000);
        m = fetch_metrics(streams[i].metrics_port);
    }
    return m;
}

/* Waits (bounded) until instance i has finished more full publishes
 * (resyncs) than before. */
static void wait_resyncs_above(int i, double before) {
    static const char *const none[] = {NULL};
    double now = before;
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(60000);) {
        char *m = tu_try_fetch_metrics(streams[i].metrics_port);
        if (m) now = metric_sum(m, "iqp_publish_resyncs_total", none);
        free(m);
        if (now > before) return;
        usleep(250000);
    }
    ck_abort_msg("instance %d did not republish after Redis came back empty (resyncs %.0f)", i, now);
}

/* Waits (bounded) until instance i owns partitions; returns its metrics. */
static char *wait_assigned(int i) {
    static const char *const none[] = {NULL};
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(60000);) {
        char *m = tu_try_fetch_metrics(streams[i].metrics_port);
        if (m && metric_sum(m, "iqp_assigned_partitions", none) > 0) return m;
        free(m);
        usleep(250000);
    }
    ck_abort_msg("instance %d got no partitions within %d s", i, tu_wait_limit_ms(60000) / 1000);
    return NULL;
}

/* ---- Redis ------------------------------------------------------------------------ */

static void start_redis(void) {
    if (!redis_port) {
        redis_port = tu_free_port();
        snprintf(redis_url, sizeof redis_url, "redis://127.0.0.1:%d/0", redis_port);
    }
    char *log = tu_fmt("%s/redis.log", tmp);
    redis_pid = tu_redis_start(redis_port, log);
    ck_assert_msg(redis_pid > 0, "redis-server did not start on port %d (log %s)", redis_port, log);
    free(log);
}

static void kill_redis(void) {
    kill(redis_pid, SIGCONT);
    tu_stop_pid(redis_pid, SIGKILL, 5000);
    redis_pid = 0;
}

/* One integer of `iqp stats` on a store (-1 when it cannot be read). */
static int64_t store_stat(const char *store, const char *key) {
    char *out = NULL;
    int64_t v = -1;
    if (run_stats(store, &out) == 0) {
        json_t *j = json_loads(out, 0, NULL);
        if (json_is_integer(json_object_get(j, key))) v = json_integer_value(json_object_get(j, key));
        json_decref(j);
    }
    free(out);
    return v;
}

/* Waits (bounded) until instance i's publish queue is empty: every key its
 * committed flushes changed is in Redis. Call after wait_caught_up. */
static void wait_published(int i) {
    int64_t left = -1;
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(60000);) {
        if ((left = store_stat(streams[i].store, "publish_pending")) == 0) return;
        usleep(250000);
    }
    ck_abort_msg("instance %d still has %" PRId64 " keys to publish (log %s)", i, left, streams[i].log);
}

/* A reply of the test's Redis, trailing newline removed (malloc'd). */
static char *redis_get(const char *args) {
    char *out = tu_redis_cli(redis_port, args);
    ck_assert_msg(out != NULL, "redis-cli %s failed", args);
    out[strcspn(out, "\n")] = 0;
    return out;
}

/* `lookup --redis` prints, byte for byte, what `lookup --store` prints as
 * of the as_of_ms the generation's meta names, which is the store's
 * watermark; and every key but the generation counter has a TTL (the
 * pointer expires with its generation: schemas/redis-layout.md). */
static void compare_redis_with_store(int i) {
    char *gen = redis_get("GET iqp:gen"), *args = tu_fmt("HGET iqp:%s:meta as_of_ms", gen);
    char *as_of_s = redis_get(args);
    int64_t as_of = strtoll(as_of_s, NULL, 10);
    ck_assert_msg(as_of > 0 && as_of == store_stat(streams[i].store, "watermark_ms"),
                  "Redis serves as of %s, the store's watermark is %" PRId64, as_of_s,
                  store_stat(streams[i].store, "watermark_ms"));
    char *redis_src = source_args(NULL, 0), *store_src = source_args(streams[i].store, as_of);
    size_t lines = 0;
    for (size_t ci = 0; ci < n_contexts; ci++) {
        char *r = run_lookup(redis_src, &contexts[ci]), *s = run_lookup(store_src, &contexts[ci]);
        ck_assert_msg(strcmp(r, s) == 0, "query '%s': lookup --redis differs from lookup --store:\n%s\nvs\n%s",
                      contexts[ci].query, r, s);
        for (const char *p = r; (p = strchr(p, '\n')); p++) lines++;
        free(r);
        free(s);
    }
    fprintf(stderr, "stream: %zu lookup lines from Redis equal the store's\n", lines);
    ck_assert_uint_gt(lines, 0);
    char *no_ttl = redis_get("EVAL \"local n = {} for _, k in ipairs(redis.call('KEYS', 'iqp:*')) do "
                             "if redis.call('PTTL', k) < 0 then n[#n + 1] = k end end "
                             "return table.concat(n, ' ')\" 0");
    /* only the generation and lease counters are meant to live (schemas/redis-layout.md;
     * a Redis that restarted empty under a running writer has no lease counter yet) */
    ck_assert_msg(strcmp(no_ttl, "iqp:gen:next iqp:lease:token") == 0 || strcmp(no_ttl, "iqp:lease:token iqp:gen:next") == 0 ||
                      strcmp(no_ttl, "iqp:gen:next") == 0,
                  "keys without a TTL: '%s' (want only iqp:gen:next and iqp:lease:token)", no_ttl);
    free(no_ttl);
    free(redis_src);
    free(store_src);
    free(as_of_s);
    free(args);
    free(gen);
}

/* The whole check after a Redis test: store and Redis equal the oracle,
 * and Redis equals the store byte for byte. */
static void check_redis_outcome(void) {
    compare_with_oracle(1);
    compare_with_oracle(0);
    compare_redis_with_store(0);
}

/* ---- the tests -------------------------------------------------------------------- */

/* One instance, everything produced first; dead letters to a Kafka topic. */
START_TEST(stream_counts_exactly_with_dead_letters) {
    produce(0, 1);
    start_stream(0, 1);
    wait_caught_up(1);
    /* the lag gauges are set by the loop's periodic update: wait for one */
    free(wait_metrics_with(0, "iqp_consumer_lag{topic=\"imp\",partition=\""));
    /* per partition: the published offsets reach the end of each topic
     * (right after the store write that wait_caught_up saw) */
    char *m = NULL;
    int64_t published[2][MAX_PARTITIONS], lag[2][MAX_PARTITIONS], stored[2][MAX_PARTITIONS] = {{0}};
    for (int64_t t0 = mono_ms();; usleep(200000)) {
        free(m);
        m = fetch_metrics(streams[0].metrics_port);
        partition_series(m, "iqp_kafka_committed_offset", published);
        int64_t sum[2] = {0, 0};
        for (int p = 0; p < n_partitions; p++) sum[0] += published[0][p], sum[1] += published[1][p];
        if ((uint64_t)sum[0] == expected_msgs[0] && (uint64_t)sum[1] == expected_msgs[1]) break;
        ck_assert_msg(mono_ms() - t0 < tu_wait_limit_ms(30000), "published offsets sum to %" PRId64 "/%" PRId64
                      ", produced %" PRIu64 "/%" PRIu64, sum[0], sum[1], expected_msgs[0], expected_msgs[1]);
    }
    ck_assert_int_eq(partition_series(m, "iqp_kafka_committed_offset", published), 16);
    ck_assert_int_eq(partition_series(m, "iqp_consumer_lag", lag), 16);
    stop_stream(0);
    compare_with_oracle(1);
    /* iqp stats shows the same offsets per partition as the metrics */
    read_offsets(streams[0].store, stored);
    for (int t = 0; t < 2; t++)
        for (int p = 0; p < n_partitions; p++)
            ck_assert_msg(stored[t][p] == published[t][p], "%s/%d: iqp stats %" PRId64 ", metric %" PRId64,
                          t ? "act" : "imp", p, stored[t][p], published[t][p]);

    /* every rejected line is in the dead-letter topic once, with its code */
    size_t n_invalid = oracle_n_invalid(orc);
    static const char *const dl[] = {"outcome=\"dead_lettered\"", NULL};
    ck_assert_msg(metric_sum(m, "iqp_events_total", dl) == (double)n_invalid,
                  "metrics count %.0f dead letters, oracle %zu", metric_sum(m, "iqp_events_total", dl),
                  n_invalid);
    static const char *const all[] = {NULL};
    oracle_stats os = oracle_get_stats(orc);
    ck_assert_msg(metric_sum(m, "iqp_events_total", all) == (double)os.lines,
                  "metrics count %.0f events, oracle %" PRIu64 " lines",
                  metric_sum(m, "iqp_events_total", all), os.lines);
    ck_assert_ptr_nonnull(strstr(m, "iqp_flush_seconds_bucket"));
    ck_assert_ptr_nonnull(strstr(m, "iqp_consumer_lag{topic=\"imp\",partition=\""));
    free(m);
    char *cmd = tu_fmt("kcat -C -b '%s' -t dl -e -q -f '%%h\\n' | sed 's/.*iqp.code=\\([a-z_]*\\).*/\\1/' "
                       "| sort | uniq -c | sort -k2", broker.bootstrap), *out = NULL;
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    size_t total = 0;
    for (char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) total += strtoul(l, NULL, 10);
    ck_assert_msg(total == n_invalid, "dead-letter topic holds %zu records, oracle rejects %zu:\n%s",
                  total, n_invalid, out);
    static const char *const codes[] = {" too_large", " unknown_schema", " future_event",
                                        " invalid_json", " missing_field", NULL};
    for (const char *const *c = codes; *c; c++)
        ck_assert_msg(strstr(out, *c), "no%s dead letter in the topic:\n%s", *c, out);
    free(out);
    free(cmd);
}
END_TEST

/* Produces 4000 impressions while one instance (with extra_arg, or none)
 * is killed -9 at random moments kills times and restarted each time; the
 * counts must still equal the oracle. */
static void survive_kills(const char *label, const char *extra_arg, int kills) {
    unsigned seed = (unsigned)time(NULL);
    fprintf(stderr, "%s: kill -9 schedule seed %u\n", label, seed);
    srand(seed);
    stream_extra_arg = extra_arg;
    produce(4000, 0);
    start_stream(0, 0);
    for (int k = 0; k < kills; k++) {
        usleep((useconds_t)(500000 + rand() % 2500000));
        kill_stream(0);
        start_stream(0, 0);
    }
    wait_producer();
    wait_caught_up(1);
    stop_stream(0);
    stream_extra_arg = NULL;
    compare_with_oracle(1);
}

/* kill -9 at random moments while consuming, restart each time. */
START_TEST(stream_survives_kill_9) { survive_kills("stream", NULL, 5); }
END_TEST

/* --flush-ms 1: nearly every cut finds the previous write still in flight,
 * so the batch in hand keeps growing until that write ends (the cut rule,
 * consumers/stream.c "Cut rule"), and each flush's checkpoints are waited
 * for only before the next write. kill -9 at random moments, restart each
 * time: the counts still equal the oracle. */
START_TEST(stream_short_flush_interval_survives_kill_9) { survive_kills("stream --flush-ms 1", "--flush-ms=1", 3); }
END_TEST

/* ---- a group of two ------------------------------------------------------------------ */

static const char *const no_labels[] = {NULL};
static const char *const counted_events[] = {"outcome=\"counted\"", NULL};

/* A producer rate (lines/s) that spreads the traffic over about seconds:
 * the group scenarios need events flowing while their steps happen, with
 * the full traffic and with the smaller sanitized one alike. */
static int rate_over(int seconds) {
    uint64_t total = expected_msgs[0] + expected_msgs[1];
    return total / (uint64_t)seconds > 0 ? (int)(total / (uint64_t)seconds) : 1;
}

/* One metric of instance i, summed over its series (see metric_sum). */
static double instance_metric(int i, const char *name, const char *const *must) {
    char *m = fetch_metrics(streams[i].metrics_port);
    double v = metric_sum(m, name, must);
    free(m);
    return v;
}

/* Waits (bounded) until the two instances together own every partition
 * (8 of each topic) and the split no longer changes: a rebalance is over. */
static void wait_group_settled(void) {
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(60000);) {
        double a = instance_metric(0, "iqp_assigned_partitions", no_labels);
        double b = instance_metric(1, "iqp_assigned_partitions", no_labels);
        if (a > 0 && b > 0 && a + b == 2 * n_partitions) return;
        usleep(250000);
    }
    ck_abort_msg("the group of two did not settle on 16 partitions");
}

/* Waits (bounded) until instance i has published a flush after this call
 * (its iqp_kafka_committed_offset went up) and counted events after that,
 * so it holds an unwritten batch; with a long --flush-ms its next store
 * write is then seconds away. Returns when both hold. */
static void wait_published_then_counting(int i) {
    double published = instance_metric(i, "iqp_kafka_committed_offset", no_labels), counted = 0;
    int64_t t0 = mono_ms();
    for (;;) {
        ck_assert_msg(mono_ms() - t0 < tu_wait_limit_ms(60000), "instance %d published nothing new", i);
        double now = instance_metric(i, "iqp_kafka_committed_offset", no_labels);
        if (now > published) break;
        usleep(50000);
    }
    counted = instance_metric(i, "iqp_events_total", counted_events);
    while (instance_metric(i, "iqp_events_total", counted_events) <= counted) {
        ck_assert_msg(mono_ms() - t0 < tu_wait_limit_ms(60000), "instance %d counted nothing new", i);
        usleep(20000);
    }
}

/* Waits (bounded) until instance i counted events while no rebalance
 * began (iqp_rebalances_total rises as a rebalance callback starts): with
 * a long --flush-ms it then holds an unwritten batch and is not writing. */
static void wait_counting_between_rebalances(int i) {
    static const char *const none[] = {NULL};
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(60000);) {
        double rebalances = instance_metric(i, "iqp_rebalances_total", none);
        double counted = instance_metric(i, "iqp_events_total", counted_events);
        usleep(100000);
        if (instance_metric(i, "iqp_events_total", counted_events) > counted &&
            instance_metric(i, "iqp_rebalances_total", none) == rebalances)
            return;
    }
    ck_abort_msg("instance %d counted nothing between rebalances", i);
}

/* Waits (bounded) until instance i owns all 16 partitions. */
static void wait_owns_all(int i) {
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(60000); usleep(250000))
        if (instance_metric(i, "iqp_assigned_partitions", no_labels) == 2 * n_partitions) return;
    ck_abort_msg("instance %d did not take over every partition", i);
}

/* Two instances in one group: the second joins mid-stream, then the first
 * is killed with kill -9 while it holds an unwritten batch, and its
 * partitions move to the second, which restores their dedup markers;
 * later the first comes back with its store and takes partitions back
 * (restoring from its own offsets). The stores are summed: exact.
 *
 * Deterministic: instance 0 flushes every 30 s, so its only store writes
 * are at rebalances (flush before release); the kill comes once the group
 * settled and instance 0 counted more with no rebalance begun. A kill
 * between a store write and its checkpoint reaching the broker (README
 * "Kafka: exactly once", "the one gap") would count that batch in both
 * stores; under load that window grew to 0.3-2.3 s against a 200 ms flush
 * interval, the likely cause of this test over-counting in 2 of ~8 loaded
 * runs when it killed at a fixed 1.5 s. fetch_metrics fails the test if
 * an endpoint does not answer 200, so waiting on it is bounded. */
START_TEST(stream_rebalances_between_two_instances) {
    static const char *const restored[] = {"outcome=\"restored\"", NULL};
    stream_extra_arg = "--flush-ms=30000";
    start_stream(0, 0);
    stream_extra_arg = NULL;
    free(wait_assigned(0));
    produce(rate_over(30), 0);
    for (int64_t t0 = mono_ms(); instance_metric(0, "iqp_events_total", counted_events) == 0; usleep(100000))
        ck_assert_msg(mono_ms() - t0 < tu_wait_limit_ms(30000), "instance 0 counted nothing");
    start_stream(1, 0);
    free(wait_assigned(1));
    wait_group_settled();
    wait_counting_between_rebalances(0);
    kill_stream(0);
    wait_producer();
    wait_caught_up(2);
    start_stream(0, 0);
    free(wait_assigned(0));
    wait_caught_up(2);
    /* per-partition series follow the assignment: each instance shows its
     * own partitions (committed offset and lag) and no released one */
    int owned[2] = {0, 0}, offsets[2] = {0, 0}, lags[2] = {0, 0};
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(30000); usleep(200000)) {
        for (int i = 0; i < 2; i++) {
            int64_t v[2][MAX_PARTITIONS];
            char *m = fetch_metrics(streams[i].metrics_port);
            owned[i] = (int)metric_sum(m, "iqp_assigned_partitions", no_labels);
            offsets[i] = partition_series(m, "iqp_kafka_committed_offset", v);
            lags[i] = partition_series(m, "iqp_consumer_lag", v);
            free(m);
        }
        if (owned[0] + owned[1] == 16 && owned[0] > 0 && offsets[0] == owned[0] && offsets[1] == owned[1] &&
            lags[0] == owned[0] && lags[1] == owned[1])
            break;
    }
    for (int i = 0; i < 2; i++)
        ck_assert_msg(offsets[i] == owned[i] && lags[i] == owned[i] && owned[0] + owned[1] == 16,
                      "instance %d owns %d partitions, shows %d committed offsets and %d lags", i, owned[i],
                      offsets[i], lags[i]);
    char *m1 = fetch_metrics(streams[1].metrics_port);
    stop_stream(0);
    stop_stream(1);
    ck_assert_msg(metric_sum(m1, "iqp_events_total", restored) > 0,
                  "instance 1 restored no markers of partitions instance 0 had counted");
    free(m1);
    compare_with_oracle(2);
}
END_TEST

/* Two instances in one group (0 flushing every 4 s) and a log being
 * produced; instance 0 is stopped (SIGSTOP) right after it published a
 * flush and counted more, seconds before its next store write. */
static void stop_first_of_two_mid_batch(void) {
    stream_extra_arg = "--flush-ms=4000";
    start_stream(0, 0);
    stream_extra_arg = NULL;
    free(wait_assigned(0));
    start_stream(1, 0);
    free(wait_assigned(1));
    wait_group_settled();
    produce(rate_over(20), 0);
    wait_published_then_counting(0);
    ck_assert_int_eq(kill(streams[0].pid, SIGSTOP), 0);
}

/* A stalled instance (SIGSTOP past session.timeout.ms) loses its
 * partitions to the other; when it resumes its flush is overdue (4 s
 * interval, stalled longer), and it must drop the batch it holds rather
 * than write it: the other instance has counted those events from the
 * published offsets (stream.c, "Zombie writes"). Without the ownership
 * probe the resumed instance wrote the batch and the sum over-counted.
 * Deterministic: the stop comes right after instance 0 published a flush
 * and counted more, seconds before its next store write. */
START_TEST(stream_stalled_instance_drops_its_batch) {
    static const char *const dropped[] = {NULL};
    stop_first_of_two_mid_batch();
    wait_owns_all(1); /* session.timeout.ms is 6 s */
    ck_assert_int_eq(kill(streams[0].pid, SIGCONT), 0);
    double drops = 0;
    for (int64_t t0 = mono_ms(); drops == 0 && mono_ms() - t0 < tu_wait_limit_ms(30000); usleep(100000))
        drops = instance_metric(0, "iqp_batches_dropped_total", dropped);
    ck_assert_msg(drops > 0, "the resumed instance dropped no batch (log %s)", streams[0].log);
    wait_producer();
    wait_caught_up(2);
    stop_stream(0);
    stop_stream(1);
    compare_with_oracle(2);
}
END_TEST

/* The coordinator refuses this member (UNKNOWN_MEMBER_ID, as for a member
 * it dropped) when the instance asks before a store write: the batch is
 * dropped unwritten and its partitions read again, so nothing is lost and
 * nothing counted twice. One instance, flushing every 200 ms under
 * traffic; the devbroker refuses the next 3 offset commits. */
START_TEST(stream_refused_member_drops_and_rereads) {
    static const char *const none[] = {NULL};
    start_stream(0, 0);
    free(wait_assigned(0));
    produce(rate_over(15), 0);
    for (int64_t t0 = mono_ms(); instance_metric(0, "iqp_events_total", counted_events) == 0; usleep(100000))
        ck_assert_msg(mono_ms() - t0 < tu_wait_limit_ms(30000), "instance 0 counted nothing");
    ck_assert_str_eq(tu_broker_command(&broker, "refuse-commits 3"), "ok refuse-commits 3");
    double drops = 0;
    for (int64_t t0 = mono_ms(); drops == 0 && mono_ms() - t0 < tu_wait_limit_ms(30000); usleep(100000))
        drops = instance_metric(0, "iqp_batches_dropped_total", none);
    ck_assert_msg(drops > 0, "no batch dropped after the coordinator refused the member (log %s)",
                  streams[0].log);
    wait_producer();
    wait_caught_up(1);
    stop_stream(0);
    compare_with_oracle(1);
}
END_TEST

/* Brokers go down mid-stream and come back; the stream recovers alone. */
START_TEST(stream_recovers_from_broker_outage) {
    produce(4000, 0);
    start_stream(0, 0);
    sleep(4);
    ck_assert_str_eq(tu_broker_command(&broker, "down 2"), "ok down 2");
    ck_assert_str_eq(tu_broker_command(&broker, "down 3"), "ok down 3");
    sleep(4);
    ck_assert_str_eq(tu_broker_command(&broker, "up 2"), "ok up 2");
    ck_assert_str_eq(tu_broker_command(&broker, "up 3"), "ok up 3");
    wait_producer();
    wait_caught_up(1);
    stop_stream(0);
    compare_with_oracle(1);
}
END_TEST

/* SIGTERM mid-stream exits 0 within 10 s; a restart finishes exactly. */
START_TEST(stream_stops_gracefully_and_resumes) {
    produce(4000, 0);
    start_stream(0, 0);
    sleep(5);
    stop_stream(0);
    start_stream(0, 0);
    wait_producer();
    wait_caught_up(1);
    stop_stream(0);
    compare_with_oracle(1);
}
END_TEST

/* Publishing: after the stream ran, Redis serves what the store holds,
 * after refreshes (new generations) on the way as windows slid. */
START_TEST(stream_publishes_to_redis) {
    start_redis();
    start_stream(0, 0);
    free(wait_assigned(0));
    produce(3000, 0); /* paced: the watermark walks through the 6 h */
    wait_producer();
    wait_caught_up(1);
    wait_published(0);
    char *m = fetch_metrics(streams[0].metrics_port);
    static const char *const none[] = {NULL};
    ck_assert_msg(metric_sum(m, "iqp_redis_connected", none) == 1, "iqp_redis_connected is not 1");
    ck_assert_msg(metric_sum(m, "iqp_published_values_total", none) > 0, "nothing counted as published");
    ck_assert_ptr_nonnull(strstr(m, "iqp_publish_lag_seconds"));
    /* the 6 h of traffic cross hour buckets: windows slid, refreshes ran */
    double refreshes = metric_sum(m, "iqp_refreshes_total", none);
    fprintf(stderr, "stream: %.0f refreshes (new generations) while streaming\n", refreshes);
    ck_assert_msg(refreshes > 0, "no refresh ran although the watermark crossed hour buckets");
    free(m);
    stop_stream(0);
    check_redis_outcome();
}
END_TEST

/* Redis is killed (-9) mid-stream and comes back empty: the publisher
 * notices (new run_id, no generation) and republishes everything. */
START_TEST(stream_republishes_after_redis_restarts_empty) {
    start_redis();
    produce(4000, 0);
    start_stream(0, 0);
    free(wait_assigned(0));
    /* the first publish into the empty Redis is a resync too: read the
     * count after it, so the one awaited below is the restart's */
    wait_resyncs_above(0, 0);
    static const char *const none[] = {NULL};
    char *m = fetch_metrics(streams[0].metrics_port);
    double resyncs = metric_sum(m, "iqp_publish_resyncs_total", none);
    free(m);
    kill_redis();
    usleep(2000000);
    start_redis();
    wait_producer();
    wait_caught_up(1);
    /* an idle publisher notices the empty Redis at its next lease renewal
     * (every 5 s): wait for that full publish, then for the queue */
    wait_resyncs_above(0, resyncs);
    wait_published(0);
    stop_stream(0);
    check_redis_outcome();
}
END_TEST

/* Redis stops answering (SIGSTOP: connections hang until the command
 * timeout) while the stream process is killed with kill -9 and restarted.
 * Counting goes on; the keys it could not publish stay queued in the
 * store across the crash; when Redis answers again (same run_id: no full
 * resync) the queue alone brings it up to date. */
START_TEST(stream_publishes_queue_after_crash_during_redis_outage) {
    start_redis();
    start_stream(0, 0);
    free(wait_assigned(0));
    /* the first publish: the empty Redis gets a generation and the store
     * remembers Redis's run_id, so a reconnect later needs no resync */
    wait_resyncs_above(0, 0);
    ck_assert_int_eq(kill(redis_pid, SIGSTOP), 0);
    produce(4000, 1);
    wait_caught_up(1); /* everything counted while Redis does not answer */
    kill_stream(0);
    start_stream(0, 0);
    free(wait_assigned(0));
    int64_t queued = store_stat(streams[0].store, "publish_pending");
    fprintf(stderr, "stream: %" PRId64 " keys queued while Redis was stopped\n", queued);
    ck_assert_msg(queued > 0, "nothing queued while Redis did not answer");
    ck_assert_int_eq(kill(redis_pid, SIGCONT), 0);
    wait_published(0);
    char *m = fetch_metrics(streams[0].metrics_port);
    static const char *const none[] = {NULL};
    ck_assert_msg(metric_sum(m, "iqp_publish_resyncs_total", none) == 0,
                  "the restarted stream resynced instead of draining its queue");
    free(m);
    stop_stream(0);
    check_redis_outcome();
}
END_TEST

/* ---- health ------------------------------------------------------------------------ */

/* GET /healthz: the HTTP status (0 when the endpoint does not answer) and
 * the body in *body (malloc'd, may be NULL). */
static int fetch_health(int port, char **body) {
    char *cmd = tu_fmt("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d && printf \"GET /healthz HTTP/1.0"
                       "\\r\\n\\r\\n\" >&3 && cat <&3' 2>/dev/null", port), *out = NULL;
    int status = 0;
    *body = NULL;
    if (tu_run(cmd, &out) == 0 && out && sscanf(out, "HTTP/1.%*d %d", &status) == 1) {
        const char *b = strstr(out, "\r\n\r\n");
        *body = tu_fmt("%s", b ? b + 4 : "");
    }
    free(out);
    free(cmd);
    return status;
}

/* Waits (bounded by tu_wait_limit_ms(base_ms), a guard against a hang) until
 * instance i's /healthz answers want with needle in its body; returns how
 * long that took in ms. */
static int64_t wait_health(int i, int want, const char *needle, int base_ms) {
    int64_t t0 = mono_ms();
    int status = 0;
    char *body = NULL;
    while (mono_ms() - t0 < tu_wait_limit_ms(base_ms)) {
        free(body);
        status = fetch_health(streams[i].metrics_port, &body);
        if (status == want && body && strstr(body, needle)) {
            free(body);
            return mono_ms() - t0;
        }
        usleep(100000);
    }
    /* the end of the instance's log says what librdkafka was doing */
    size_t len = 0;
    char *log = tu_read_file(streams[i].log, &len);
    const char *tail = log ? log + (len > 2000 ? len - 2000 : 0) : "";
    ck_abort_msg("/healthz of instance %d still answers %d '%s' after %d ms, want %d with '%s' (log %s ends: %s)",
                 i, status, body ? body : "", tu_wait_limit_ms(base_ms), want, needle, streams[i].log, tail);
    return -1;
}

static void all_brokers(const char *verb) {
    for (int b = 1; b <= 3; b++) {
        char cmd[16], want[32];
        snprintf(cmd, sizeof cmd, "%s %d", verb, b);
        snprintf(want, sizeof want, "ok %s", cmd);
        ck_assert_str_eq(tu_broker_command(&broker, cmd), want);
    }
}

/* /healthz follows the brokers and Redis (issue 18 item 5): 503 while no
 * broker is reachable (from the start, and after all go down), 200 again
 * once one is back; 503 while Redis does not answer, 200 when it does. The
 * stated bounds (README "Metrics") are 5 s for brokers and 7 s for Redis;
 * the waits below are guards of 7 s and 15 s (times CK_TIMEOUT_MULTIPLIER)
 * and print what was measured. */
START_TEST(stream_health_follows_brokers_and_redis) {
    start_redis();
    all_brokers("down");
    start_stream(0, 0);
    /* the start waits for the checkpoint topic; health must not say ok */
    int64_t t0 = mono_ms();
    char *body = NULL;
    int status = 0;
    while (status == 0 && mono_ms() - t0 < tu_wait_limit_ms(20000)) {
        usleep(100000);
        free(body);
        status = fetch_health(streams[0].metrics_port, &body);
    }
    ck_assert_msg(status == 503 && strstr(body, "kafka: "), "with no broker up /healthz answered %d '%s'",
                  status, body ? body : "");
    free(body);
    all_brokers("up");
    int64_t ms_start = wait_health(0, 200, "ok", 30000);
    all_brokers("down");
    /* Bounds well above librdkafka's reconnect backoff (1 s max here) plus
     * a statistics interval: on a loaded CI machine the reconnect took over
     * 7 s once. What is checked is that health follows, not how fast. */
    int64_t ms_down = wait_health(0, 503, "kafka: no broker connected", 20000);
    all_brokers("up");
    int64_t ms_up = wait_health(0, 200, "ok", 20000);
    ck_assert_int_eq(kill(redis_pid, SIGSTOP), 0);
    int64_t ms_redis_down = wait_health(0, 503, "redis: not connected", 15000);
    ck_assert_int_eq(kill(redis_pid, SIGCONT), 0);
    int64_t ms_redis_up = wait_health(0, 200, "ok", 15000);
    fprintf(stderr, "stream: /healthz 200 %" PRId64 " ms after the brokers came up at start; 503 %" PRId64
                    " ms after all went down, 200 %" PRId64 " ms after they came back; 503 %" PRId64
                    " ms after Redis stopped, 200 %" PRId64 " ms after it went on\n",
            ms_start, ms_down, ms_up, ms_redis_down, ms_redis_up);
    stop_stream(0);
}
END_TEST

/* ---- offsets the broker no longer has ------------------------------------------- */

/* The first offset partition 0 of topic still holds (from_end 0), or the
 * offset after its last message (from_end 1), read with kcat. */
static int64_t partition_edge_of(const char *topic, int partition, int from_end) {
    char *cmd = tu_fmt("kcat -C -b '%s' -t %s -p %d -o %s -c 1 -e -q -f '%%o\\n'", broker.bootstrap, topic,
                       partition, from_end ? "-1" : "beginning"), *out = NULL;
    ck_assert_msg(tu_run(cmd, &out) == 0 && out && *out, "%s failed", cmd);
    int64_t off = strtoll(out, NULL, 10) + from_end;
    free(out);
    free(cmd);
    return off;
}

static int64_t partition_edge(const char *topic, int from_end) { return partition_edge_of(topic, 0, from_end); }

/* Waits until instance 0's store has counted partition 0 of both topics
 * up to their ends. */
static void wait_partition_0_counted(void) {
    int64_t want[2] = {partition_edge("imp", 1), partition_edge("act", 1)}, best[2][MAX_PARTITIONS] = {{0}};
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(CATCH_UP_MS);) {
        memset(best, 0, sizeof best);
        read_offsets(streams[0].store, best);
        if (best[0][0] == want[0] && best[1][0] == want[1]) return;
        usleep(300000);
    }
    ck_abort_msg("partition 0 not counted: imp %" PRId64 "/%" PRId64 ", act %" PRId64 "/%" PRId64, best[0][0],
                 want[0], best[1][0], want[1]);
}

static void produce_file(const char *path) {
    char *cmd = tu_fmt("'%s' produce --brokers '%s' --impressions-topic imp --actions-topic act '%s' "
                       ">/dev/null 2>&1", tu_iqp(), broker.bootstrap, path);
    ck_assert_msg(tu_run(cmd, NULL) == 0, "%s failed", cmd);
    free(cmd);
}

/* Exit status of instance 0, which must exit by itself within the bound. */
static int wait_stream_exit(int base_ms) {
    int status = 0;
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(base_ms);) {
        pid_t r = waitpid(streams[0].pid, &status, WNOHANG);
        if (r == streams[0].pid) {
            streams[0].pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        usleep(100000);
    }
    ck_abort_msg("iqp stream did not stop by itself within %d ms (log %s)", tu_wait_limit_ms(base_ms),
                 streams[0].log);
    return -1;
}

/* Issue 13 item 11: the devbroker keeps ~5 MiB per partition. Count a
 * little, stop, put ~10 MB on the one partition (the stored offsets leave
 * the broker), start again: the stream must stop with exit 1, naming the
 * lost range, and skip nothing; with --on-offset-lost skip it goes on from
 * the earliest kept offset and counts the reset in
 * iqp_kafka_offset_resets_total{topic,partition}. */
START_TEST(stream_stops_when_its_offsets_were_evicted) {
    static const char *const args[] = {"--brokers", "1", "--partitions", "1", "--topics",
                                       "imp,act,dl,iqp-checkpoints", NULL};
    tu_broker_stop(&broker);
    ck_assert_int_eq(tu_broker_start(&broker, args), 0);
    char *small = tu_fmt("%s/small.jsonl", tmp), *big = tu_fmt("%s/big.jsonl", tmp);
    char *gen = tu_fmt("'%s' gen --seed 5 --impressions 300 --span 1h --out '%s' 2>/dev/null && "
                       "'%s' gen --seed 6 --impressions 24000 --span 1h --out '%s' 2>/dev/null",
                       tu_iqp(), small, tu_iqp(), big);
    ck_assert_int_eq(tu_run(gen, NULL), 0);
    produce_file(small);
    start_stream(0, 0);
    wait_partition_0_counted();
    stop_stream(0);
    int64_t stored[2][MAX_PARTITIONS] = {{0}};
    read_offsets(streams[0].store, stored);
    produce_file(big);
    static const char *const topics[2] = {"imp", "act"};
    int64_t lo[2] = {partition_edge("imp", 0), partition_edge("act", 0)};
    ck_assert_msg(lo[0] > stored[0][0], "the broker still holds imp offset %" PRId64 " (earliest %" PRId64
                  "): nothing was evicted", stored[0][0], lo[0]);

    /* default: stop, exit 1, the lost range named, nothing skipped */
    start_stream(0, 0);
    int rc = wait_stream_exit(90000);
    char *log = tu_read_file(streams[0].log, NULL);
    ck_assert_msg(rc == 1, "iqp stream exited %d, want 1 (log %s)", rc, streams[0].log);
    /* it stops at the first evicted partition it meets: one of them is named */
    int named = 0;
    for (int t = 0; t < 2; t++) {
        char *want = tu_fmt("%s/0: offset %" PRId64 " is no longer on the broker (it keeps %" PRId64 "..",
                            topics[t], stored[t][0], lo[t]);
        char *range = tu_fmt("events at offsets %" PRId64 "..%" PRId64 " were never counted", stored[t][0],
                             lo[t] - 1);
        named |= lo[t] > stored[t][0] && strstr(log, want) && strstr(log, range);
        free(want);
        free(range);
    }
    ck_assert_msg(named, "the log names no lost range:\n%s", log);
    int64_t after[2][MAX_PARTITIONS] = {{0}};
    read_offsets(streams[0].store, after);
    ck_assert_msg(after[0][0] == stored[0][0] && after[1][0] == stored[1][0],
                  "the stopped stream moved its offsets: imp %" PRId64 " -> %" PRId64 ", act %" PRId64
                  " -> %" PRId64, stored[0][0], after[0][0], stored[1][0], after[1][0]);
    free(log);

    /* --on-offset-lost skip: counted in the metric, logged, goes on */
    stream_extra_arg = "--on-offset-lost=skip";
    start_stream(0, 0);
    wait_partition_0_counted();
    char *m = fetch_metrics(streams[0].metrics_port);
    stop_stream(0);
    log = tu_read_file(streams[0].log, NULL);
    for (int t = 0; t < 2; t++) {
        if (lo[t] <= stored[t][0]) continue; /* this topic's offset was not evicted */
        char labels[64];
        snprintf(labels, sizeof labels, "topic=\"%s\",partition=\"0\"", topics[t]);
        const char *const must[] = {labels, NULL};
        ck_assert_msg(metric_sum(m, "iqp_kafka_offset_resets_total", must) == 1,
                      "iqp_kafka_offset_resets_total{%s} is %.0f, want 1", labels,
                      metric_sum(m, "iqp_kafka_offset_resets_total", must));
        char *going = tu_fmt("%s/0: offset %" PRId64 " is no longer on the broker (it keeps %" PRId64 "..%"
                             PRId64 "): the events at offsets %" PRId64 "..%" PRId64 " were never counted and "
                             "are lost (stream.on_offset_lost skip: going on)", topics[t], stored[t][0], lo[t],
                             partition_edge(topics[t], 1) - 1, stored[t][0], lo[t] - 1);
        ck_assert_msg(strstr(log, going), "log lacks '%s'", going);
        fprintf(stderr, "stream: %s/0 offset %" PRId64 " evicted (earliest %" PRId64 "): %" PRId64
                        " events lost, stopped with exit 1; skip mode counted the reset\n",
                topics[t], stored[t][0], lo[t], lo[t] - stored[t][0]);
        free(going);
    }
    free(m);
    free(log);
    free(gen);
    free(small);
    free(big);
}
END_TEST

/* ---- partition-owned state: --state-dir ------------------------------------------------ */

/* Every partition store holds the offsets of its own partition of both
 * topics and nothing else, and they are the topics' end offsets (read
 * from the broker with kcat): each store counted exactly its partition. */
static void check_partition_stores(void) {
    static const char *const topics[2] = {"imp", "act"};
    int64_t summed[2][MAX_PARTITIONS] = {{0}};
    read_offsets_of("--state-dir", state_dir, summed); /* iqp stats --state-dir: the same offsets */
    char *all = NULL;
    ck_assert_int_eq(run_stats_of("--state-dir", state_dir, &all), 0);
    json_t *all_j = json_loads(all, 0, NULL), *per = json_object_get(all_j, "partitions");
    ck_assert_msg((int)json_object_size(per) == n_partitions, "iqp stats --state-dir: %zu partitions, want %d",
                  json_object_size(per), n_partitions);
    for (int p = 0; p < n_partitions; p++) {
        char *store = tu_fmt("%s/partition-%d", state_dir, p), *out = NULL;
        ck_assert_msg(run_stats(store, &out) == 0, "iqp stats cannot read %s", store);
        json_t *j = json_loads(out, 0, NULL), *offs = json_object_get(j, "kafka_offsets");
        char pnum[16];
        snprintf(pnum, sizeof pnum, "%d", p);
        json_t *mine = json_object_get(per, pnum);
        static const char *const figures[] = {"watermark_ms", "count_cells", "context_cells", "publish_pending"};
        for (size_t k = 0; k < sizeof figures / sizeof figures[0]; k++)
            ck_assert_msg(json_equal(json_object_get(mine, figures[k]), json_object_get(j, figures[k])),
                          "iqp stats --state-dir partitions.%d.%s differs from that store's own stats", p,
                          figures[k]);
        ck_assert_msg(json_object_size(offs) == 2, "%s holds %zu offsets, want its own 2: %s", store,
                      json_object_size(offs), out);
        for (int t = 0; t < 2; t++) {
            char key[32];
            snprintf(key, sizeof key, "%s/%d", topics[t], p);
            int64_t end = partition_edge_of(topics[t], p, 1);
            json_t *v = json_object_get(offs, key);
            ck_assert_msg(json_is_integer(v) && json_integer_value(v) == end, "%s: %s at %" PRId64 ", the topic "
                          "ends at %" PRId64 ": %s", store, key, v ? (int64_t)json_integer_value(v) : -1, end, out);
            ck_assert_msg(summed[t][p] == end, "iqp stats --state-dir: %s at %" PRId64 ", want %" PRId64, key,
                          summed[t][p], end);
        }
        json_decref(j);
        free(out);
        free(store);
    }
    json_decref(all_j);
    free(all);
}

static void use_state_dir(void) { state_dir = tu_fmt("%s/state", tmp); }

/* The number of series of metric family name in a /metrics text. */
static int series_count(const char *text, const char *name) {
    int n = 0;
    size_t nlen = strlen(name);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        n += strncmp(l, name, nlen) == 0 && l[nlen] == '{';
    return n;
}

/* Waits (bounded) until each of n instances shows one partition store
 * size series per partition number it owns (half its assigned
 * partitions: both topics of each), and they own all 16 together. */
static void wait_store_series_match(int n) {
    int owned[MAX_STREAMS], stores[MAX_STREAMS], total = 0, ok = 0;
    for (int64_t t0 = mono_ms(); !ok && mono_ms() - t0 < tu_wait_limit_ms(30000); usleep(200000)) {
        ok = 1, total = 0;
        for (int i = 0; i < n; i++) {
            char *m = fetch_metrics(streams[i].metrics_port);
            owned[i] = (int)metric_sum(m, "iqp_assigned_partitions", no_labels);
            stores[i] = series_count(m, "iqp_partition_store_size_bytes");
            free(m);
            ok &= owned[i] == 2 * stores[i];
            total += owned[i];
        }
        ok &= total == 2 * n_partitions;
    }
    for (int i = 0; i < n; i++)
        ck_assert_msg(ok, "instance %d owns %d partitions and shows %d partition store sizes (%d owned in all)", i,
                      owned[i], stores[i], total);
}

/* Instance 0 counts while the log is produced over 30 s; once it has
 * counted something, instances 1 and 2 join (a rebalance mid-stream);
 * returns when the log is on Kafka. */
static void start_three_joining_mid_stream(void) {
    start_stream(0, 0);
    free(wait_assigned(0));
    produce(rate_over(30), 0);
    for (int64_t t0 = mono_ms(); instance_metric(0, "iqp_events_total", counted_events) == 0; usleep(100000))
        ck_assert_msg(mono_ms() - t0 < tu_wait_limit_ms(30000), "instance 0 counted nothing");
    start_stream(1, 0);
    start_stream(2, 0);
    wait_producer();
}

/* Three instances share one --state-dir while the log is produced: the
 * first owns every partition, the second and third join mid-stream and
 * take partitions (with their stores) over. The partition stores together
 * hold what the oracle counts from the whole log (the lookups summed over
 * the 8 stores), and each holds its own partition's end offsets. */
START_TEST(stream_state_dir_three_instances_count_once) {
    use_state_dir();
    start_three_joining_mid_stream();
    wait_caught_up(3);
    wait_store_series_match(3);
    double counted[3];
    for (int i = 0; i < 3; i++) counted[i] = instance_metric(i, "iqp_events_total", counted_events);
    for (int i = 0; i < 3; i++) stop_stream(i);
    fprintf(stderr, "state dir, three instances: counted %.0f, %.0f, %.0f events\n", counted[0], counted[1],
            counted[2]);
    ck_assert_msg(counted[1] > 0 || counted[2] > 0, "no partition moved to a joining instance");
    check_partition_stores();
    compare_with_oracle(3);
}
END_TEST

/* The start of a kill -9 schedule: its random seed (logged, to replay a
 * failure), two instances, and the log produced over `seconds`. */
static void start_two_for_kills(const char *label, int seconds) {
    unsigned seed = (unsigned)time(NULL);
    fprintf(stderr, "%s kill -9 schedule seed %u\n", label, seed);
    srand(seed);
    start_stream(0, 0);
    start_stream(1, 0);
    free(wait_assigned(0));
    produce(rate_over(seconds), 0);
}

/* Two instances share one --state-dir; instance 0 dies again and again
 * while the log is produced: right after a store write (the test hook
 * IQP_TEST_DIE_AT=after-write:N, before that write's offsets reach
 * Kafka, the window in which a --store instance's successor counts the
 * batch again: README "Kafka: exactly once") or by kill -9 at a random
 * moment, and is restarted each time; instance 1 takes its partitions
 * (and their stores, once the dead process's LOCK is gone) meanwhile.
 * The partition stores still equal the oracle: nothing counted twice. */
START_TEST(stream_state_dir_survives_kill_9) {
    use_state_dir();
    start_two_for_kills("state dir", 60);
    char env[64];
    int hook_deaths = 0;
    for (int k = 0; k < 4; k++) {
        if (k % 2 == 0) { /* dies by itself right after its n-th store write (else killed after 30 s) */
            kill_stream(0);
            snprintf(env, sizeof env, "IQP_TEST_DIE_AT=after-write:%d", 2 + rand() % 4);
            stream_env = env;
            start_stream(0, 0);
            stream_env = NULL;
            int rc = tu_stop_pid(streams[0].pid, 0, tu_wait_limit_ms(30000));
            ck_assert_msg(rc == 99 || rc == -1, "instance 0 (%s) exited %d (log %s)", env, rc, streams[0].log);
            hook_deaths += rc == 99;
            streams[0].pid = 0;
            wait_owns_all(1); /* instance 1 takes the dead one's partitions first */
        } else {
            usleep((useconds_t)(500000 + rand() % 2500000));
            kill_stream(0);
        }
        start_stream(0, 0);
    }
    ck_assert_msg(hook_deaths > 0, "instance 0 never died right after a store write (log %s)", streams[0].log);
    wait_producer();
    wait_caught_up(2);
    stop_stream(0);
    stop_stream(1);
    fprintf(stderr, "state dir kill -9: %d deaths right after a store write\n", hook_deaths);
    check_partition_stores();
    compare_with_oracle(2);
}
END_TEST

/* ---- publishing per partition (--state-dir --repartition --redis) ------------- */

/* Waits (bounded) until the partition stores of dir have no key left to
 * publish (iqp stats --state-dir: publish_pending summed). */
static void wait_partitions_published(const char *dir) {
    int64_t left = -1;
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(60000); usleep(250000)) {
        char *out = NULL;
        if (run_stats_of("--state-dir", dir, &out) == 0) {
            json_t *j = json_loads(out, 0, NULL);
            left = json_integer_value(json_object_get(j, "publish_pending"));
            json_decref(j);
        }
        free(out);
        if (left == 0) return;
    }
    ck_abort_msg("the partition stores of %s still have %" PRId64 " keys to publish", dir, left);
}

/* The window slides the instances' partition publishers made, from their
 * logs ("partition P: published ... (N slides, ..."). */
static long logged_slides(void) {
    long slides = 0;
    for (int i = 0; i < MAX_STREAMS; i++) {
        char *text = streams[i].log ? tu_read_file(streams[i].log, NULL) : NULL;
        for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
            const char *r = strstr(l, " rounds ("), *end = strchr(l, '\n');
            if (!strncmp(l, "iqp stream: partition ", 22) && r && (!end || r < end)) slides += strtol(r + 9, NULL, 10);
        }
        free(text);
    }
    return slides;
}

/* Redis after per-partition publishing: what it serves equals the
 * oracle (so the partition stores, compared with the same oracle), and
 * no key lives without a TTL but the two counters. */
static void check_redis_per_partition(void) {
    compare_with_oracle(0);
    char *no_ttl = redis_get("EVAL \"local n = {} for _, k in ipairs(redis.call('KEYS', 'iqp:*')) do "
                             "if redis.call('PTTL', k) < 0 then n[#n + 1] = k end end "
                             "table.sort(n) return table.concat(n, ' ')\" 0");
    ck_assert_msg(strcmp(no_ttl, "iqp:gen:next iqp:lease:token") == 0, "keys without a TTL: '%s'", no_ttl);
    free(no_ttl);
}

/* A refresh into the prefix is refused while partition publishers hold
 * their slices (it would race them on the same keys). */
static void check_refresh_refused(const char *store) {
    char *cmd = tu_fmt("'%s' refresh --store '%s' --redis %s 2>&1", tu_iqp(), store, redis_url), *out = NULL;
    int rc = tu_run(cmd, &out);
    ck_assert_msg(rc != 0 && out && strstr(out, "is being written by iqp stream"),
                  "iqp refresh --redis ran beside the partition publishers (exit %d): %s", rc, out ? out : "");
    free(out);
    free(cmd);
}

/* ---- repartitioned input (--repartition) --------------------------------------- */

/* The log is produced without keys (each line to a random partition), so
 * no context is whole in any input partition; the instances run with
 * --repartition-prefix rp (topics rp-impressions, rp-actions, 8 partitions
 * like the input). */
static void use_repartition(void) {
    use_state_dir();
    produce_unkeyed = 1;
    stream_extra_arg = "--repartition-prefix=rp";
}

/* 1 when the partition stores have counted everything: every input
 * partition's last message was counted somewhere (iqp stats
 * repartition_origins: the highest input offset counted, max over the
 * stores) and every repartition partition is read to its end. */
static int repartition_caught_up(void) {
    static const char *const in[2] = {"imp", "act"}, *const rp[2] = {"rp-impressions", "rp-actions"};
    char *out = NULL;
    int done = run_stats_of("--state-dir", state_dir, &out) == 0;
    json_t *j = done ? json_loads(out, 0, NULL) : NULL;
    json_t *origins = json_object_get(j, "repartition_origins"), *offsets = json_object_get(j, "kafka_offsets");
    for (int t = 0; t < 2 && done; t++)
        for (int p = 0; p < n_partitions && done; p++) {
            char key[64];
            snprintf(key, sizeof key, "%s/%d", in[t], p);
            json_t *v = json_object_get(origins, key);
            int64_t end = partition_edge_of(in[t], p, 1);
            done = end == 0 || (json_is_integer(v) && json_integer_value(v) == end - 1);
            snprintf(key, sizeof key, "%s/%d", rp[t], p);
            v = json_object_get(offsets, key);
            int64_t rend = partition_edge_of(rp[t], p, 1);
            done &= rend == 0 || (json_is_integer(v) && json_integer_value(v) == rend);
        }
    json_decref(j);
    free(out);
    return done;
}

/* Waits until repartition_caught_up holds twice in a row, 1 s apart (a
 * record of an earlier message may still be on its way to another
 * repartition partition when a later one is counted). */
static void wait_repartition_caught_up(void) {
    int streak = 0;
    for (int64_t t0 = mono_ms(); streak < 2; sleep(1)) {
        ck_assert_msg(mono_ms() - t0 < tu_wait_limit_ms(CATCH_UP_MS), "the partition stores did not catch up "
                      "with the input through the repartition topics");
        streak = repartition_caught_up() ? streak + 1 : 0;
    }
}

/* Every context is whole in one partition store: for each chosen context
 * and each (feature, window, item) line of its lookup, at most one of the
 * 8 stores has a non-zero context_count. Returns the lines checked. */
static uint64_t check_contexts_whole(void) {
    int64_t as_of = oracle_watermark(orc);
    uint64_t lines = 0;
    for (size_t ci = 0; ci < n_contexts; ci++) {
        const context *c = &contexts[ci];
        size_t n = (size_t)ORACLE_N_FEATURES * ORACLE_N_WINDOWS * c->n_items;
        int *holders = calloc(n, sizeof *holders);
        for (int p = 0; p < n_partitions; p++) {
            char *store = tu_fmt("%s/partition-%d", state_dir, p), *src = source_args(store, as_of);
            char *out = run_lookup(src, c), *line, *save = NULL;
            size_t k = 0;
            for (line = strtok_r(out, "\n", &save); line && k < n; line = strtok_r(NULL, "\n", &save), k++) {
                json_t *j = json_loads(line, 0, NULL);
                holders[k] += json_integer_value(json_object_get(j, "context_count")) != 0;
                json_decref(j);
            }
            free(out);
            free(src);
            free(store);
        }
        for (size_t k = 0; k < n; k++, lines++)
            ck_assert_msg(holders[k] <= 1, "query='%s' %s/%s line %zu: the context is counted in %d partition "
                          "stores, want one", c->query, c->country, c->gender, k, holders[k]);
        free(holders);
    }
    fprintf(stderr, "repartition: %" PRIu64 " lookup lines, each context in one partition store\n", lines);
    return lines;
}

/* Three instances with --repartition on one shared --state-dir, each
 * publishing the partitions it owns to one Redis, the log produced
 * without keys while the second and third join: the partition stores
 * together equal the oracle, every context (c_item's country, g_item's
 * gender included) is whole in one store, and Redis serves exactly the
 * oracle's values. */
START_TEST(stream_repartition_three_instances_count_once) {
    use_repartition();
    start_redis();
    start_three_joining_mid_stream();
    wait_repartition_caught_up();
    wait_partitions_published(state_dir);
    for (int i = 0; i < 3; i++) stop_stream(i);
    compare_with_oracle(3);
    check_contexts_whole();
    check_redis_per_partition();
}
END_TEST

/* Two instances with --repartition; instance 0 is killed with kill -9 at
 * random moments (both of its stages die: forwarded records whose input
 * offsets were not committed are sent again by the next owner) and
 * restarted, while the log is produced. The stores still equal the oracle
 * and the resent records were dropped (iqp_events_total{outcome="resent"}
 * shows whether any came). */
START_TEST(stream_repartition_survives_kill_9) {
    use_repartition();
    start_two_for_kills("repartition", 40);
    for (int k = 0; k < 4; k++) {
        usleep((useconds_t)(700000 + rand() % 2500000));
        kill_stream(0);
        start_stream(0, 0);
    }
    wait_producer();
    wait_repartition_caught_up();
    static const char *const resent[] = {"outcome=\"resent\"", NULL};
    double dropped = instance_metric(0, "iqp_events_total", resent) + instance_metric(1, "iqp_events_total", resent);
    stop_stream(0);
    stop_stream(1);
    fprintf(stderr, "repartition kill -9: %.0f resent records dropped by the survivors' current runs\n", dropped);
    compare_with_oracle(2);
    check_contexts_whole();
}
END_TEST

/* The failure schedule with --repartition, each instance on its own
 * disk (a local --state-dir) and one shared --checkpoint-dir: three
 * instances count the unkeyed log as it is produced; instance 0 is killed
 * with kill -9, a fourth joins, instance 1 leaves (SIGTERM), and instance
 * 0 comes back on an EMPTY disk. Once the log is produced every instance
 * stops (each checkpoints what it releases), and a last instance on an
 * empty disk restores every partition from the checkpoints and counts
 * what the group left: its stores alone equal the oracle, with every
 * context whole in one store. Every instance publishes the partitions it
 * owns to one Redis (slice leases; a killed owner's taken over, a
 * stopped one's released): while they run a refresh into the prefix is
 * refused, windows slide in place as the 6 h of event time pass, and
 * once the dust settled Redis serves exactly the oracle's values. */
START_TEST(stream_repartition_kill_add_remove_and_empty_disk) {
    use_repartition();
    start_redis();
    free(state_dir);
    state_dir = NULL;
    checkpoint_dir = tu_fmt("%s/checkpoints", tmp);
    for (int i = 0; i < 3; i++) instance_state[i] = tu_fmt("%s/disk%d", tmp, i);
    for (int i = 0; i < 3; i++) start_stream(i, 0);
    free(wait_assigned(0));
    produce(rate_over(40), 0);
    for (int64_t t0 = mono_ms(); instance_metric(0, "iqp_events_total", counted_events) == 0; usleep(100000))
        ck_assert_msg(mono_ms() - t0 < tu_wait_limit_ms(60000), "instance 0 counted nothing");
    usleep(1500000);
    kill_stream(0);
    instance_state[3] = tu_fmt("%s/disk3", tmp);
    start_stream(3, 0);
    usleep(3000000);
    stop_stream(1);
    tu_rmrf(instance_state[0]); /* instance 0's disk is lost */
    start_stream(0, 0);
    wait_producer();
    usleep(2000000);
    /* the group stops wherever it is (each member checkpoints what it
     * releases); the last instance forwards and counts whatever is left */
    for (int i = 0; i < 4; i++)
        if (streams[i].pid > 0) stop_stream(i);
    free(instance_state[1]);
    instance_state[1] = tu_fmt("%s/final", tmp); /* instance 1 again, on an empty disk */
    start_stream(1, 0);
    state_dir = tu_fmt("%s", instance_state[1]);
    wait_repartition_caught_up();
    wait_partitions_published(state_dir);
    char *store = tu_fmt("%s/partition-0", state_dir);
    check_refresh_refused(store);
    free(store);
    char *m = fetch_metrics(streams[1].metrics_port);
    double restores = metric_sum(m, "iqp_partition_restores_total", no_labels);
    double forwarded = metric_sum(m, "iqp_repartition_records_total", no_labels);
    free(m);
    stop_stream(1);
    fprintf(stderr, "repartition schedule: the last instance restored %.0f partitions and forwarded %.0f records "
                    "the group had not\n", restores, forwarded);
    ck_assert_msg(restores == n_partitions, "the last instance restored %.0f partitions, want %d", restores,
                  n_partitions);
    long slides = logged_slides();
    fprintf(stderr, "repartition schedule: %ld window slides published in place\n", slides);
    ck_assert_msg(slides > 0, "no partition publisher slid its windows while 6 h of event time passed");
    compare_with_oracle(1);
    check_contexts_whole();
    check_redis_per_partition();
}
END_TEST

/* Puts one impression on rp1-impressions (partition 0) as the forwarding
 * stage would, with the origin header "0/<origin_offset>". */
static void forward_impression(const char *event_id, const char *query, int64_t ts, int origin_offset) {
    char *line = tu_fmt("{\"schema\":\"impression.v1\",\"event_id\":\"%s\",\"ts\":%" PRId64 ",\"request_id\":"
                        "\"r-%s\",\"query\":\"%s\",\"user\":{\"country\":\"US\",\"gender\":\"f\"},\"items\":[\"i1\"]}",
                        event_id, ts, event_id, query);
    char *cmd = tu_fmt("printf '%%s\\n' '%s' | kcat -P -b '%s' -t rp1-impressions -p 0 -H iqp.origin=0/%d", line,
                       broker.bootstrap, origin_offset);
    ck_assert_msg(tu_run(cmd, NULL) == 0, "%s failed", cmd);
    free(cmd);
    free(line);
}

/* The impression count of item i1 in the 7d window of q_item for query q
 * (country US, gender f) in partition store 0. */
static int64_t alpha_impressions(const char *q) {
    char *cmd = tu_fmt("'%s' lookup --store '%s/partition-0' --query '%s' --country US --gender f i1", tu_iqp(),
                       state_dir, q), *out = NULL, *line, *save = NULL;
    int64_t n = -1;
    ck_assert_msg(tu_run(cmd, &out) == 0, "%s failed", cmd);
    for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(line, 0, NULL);
        if (!strcmp(json_string_value(json_object_get(j, "feature")) ?: "", "q_item") &&
            !strcmp(json_string_value(json_object_get(j, "window")) ?: "", "7d"))
            n = json_integer_value(json_object_get(j, "impression"));
        json_decref(j);
    }
    free(out);
    free(cmd);
    return n;
}

/* The counting stage drops a record whose origin it counted already, even
 * where event-id dedup no longer would: impression A (origin 0/5) is
 * counted, B (0/9) moves the watermark 71 h on, past the 24 h dedup
 * horizon, and A is sent again (a forwarding stage resending after a
 * crash). Without the origin rule A would count twice. */
START_TEST(stream_repartition_drops_resent_records_beyond_the_dedup_horizon) {
    static const char *const resent[] = {"outcome=\"resent\"", NULL};
    int64_t now = (int64_t)time(NULL) * 1000, hour = 3600000;
    use_state_dir();
    stream_extra_arg = "--repartition-prefix=rp1";
    start_stream(0, 0);
    free(wait_assigned(0));
    forward_impression("resend-a", "alpha resend", now - 72 * hour, 5);
    forward_impression("resend-b", "beta resend", now - hour, 9);
    forward_impression("resend-a", "alpha resend", now - 72 * hour, 5);
    for (int64_t t0 = mono_ms(); instance_metric(0, "iqp_events_total", resent) < 1; usleep(100000))
        ck_assert_msg(mono_ms() - t0 < tu_wait_limit_ms(30000), "the resent record was not dropped (log %s)",
                      streams[0].log);
    static const char *const counted[] = {"outcome=\"counted\"", NULL};
    ck_assert_msg(instance_metric(0, "iqp_events_total", counted) == 2, "want A and B counted once each");
    stop_stream(0);
    ck_assert_int_eq(alpha_impressions("alpha resend"), 1);
    ck_assert_int_eq(alpha_impressions("beta resend"), 1);
}
END_TEST

/* Waits (bounded) until instance i's log holds needle. */
static void wait_log(int i, const char *needle, int base_ms) {
    for (int64_t t0 = mono_ms(); mono_ms() - t0 < tu_wait_limit_ms(base_ms); usleep(100000)) {
        char *text = tu_read_file(streams[i].log, NULL);
        int found = text && strstr(text, needle);
        free(text);
        if (found) return;
    }
    ck_abort_msg("instance %d never logged '%s' (log %s)", i, needle, streams[i].log);
}

/* A stalled owner (SIGSTOP past session.timeout.ms) still holds the LOCKs
 * of its partition stores: the instance its partitions go to waits for
 * them (and says so), and opens them once the stalled one resumes, learns
 * that it lost its partitions and closes their stores. Whatever either
 * wrote, the stores stay exact. Deterministic as the --store version
 * (stream_stalled_instance_drops_its_batch): the stop comes right after
 * instance 0 published a flush and counted more. */
START_TEST(stream_state_dir_waits_for_a_stalled_owner) {
    use_state_dir();
    stop_first_of_two_mid_batch();
    wait_log(1, "is locked by another process", 60000); /* session.timeout.ms is 6 s */
    ck_assert_int_eq(kill(streams[0].pid, SIGCONT), 0);
    wait_log(1, "its previous owner released it", 60000);
    /* the open that waited is in the open-time histogram, wait included */
    char *log = tu_read_file(streams[1].log, NULL), *hit = strstr(log, "its previous owner released it; opened after ");
    double waited = strtod(hit + strlen("its previous owner released it; opened after "), NULL);
    free(log);
    char *m = fetch_metrics(streams[1].metrics_port);
    double open_sum = metric_sum(m, "iqp_partition_store_open_seconds_sum", no_labels);
    free(m);
    fprintf(stderr, "state dir: the new owner waited %.1f s for the stalled one's lock\n", waited);
    ck_assert_msg(waited > 0 && open_sum >= waited - 0.05, "waited %.1f s, open-time histogram sums %.3f s", waited,
                  open_sum);
    wait_producer();
    wait_caught_up(2);
    stop_stream(0);
    stop_stream(1);
    check_partition_stores();
    compare_with_oracle(2);
}
END_TEST

/* ---- empty-disk takeover: --checkpoint-dir ------------------------------------------ */

/* The progress (sum of both topics' next offsets) of every partition's
 * best checkpoint, summed; *n_with: how many partitions have one. */
static int64_t best_checkpoints(int *n_with) {
    char path[4400], err[1024];
    int64_t sum = 0, progress = 0;
    *n_with = 0;
    for (int p = 0; p < n_partitions; p++) {
        int rc = iqp_pck_best(checkpoint_dir, p, path, sizeof path, &progress, err, sizeof err);
        ck_assert_msg(rc >= 0, "%s", err);
        if (rc == 1) sum += progress, (*n_with)++;
    }
    return sum;
}

/* Instance 0 counts part of the log into its own state dir, checkpointing
 * into the shared checkpoint dir every 2 s, and is stopped (SIGTERM) or
 * killed (kill -9) mid-stream; instance 1 starts on an EMPTY state dir of
 * its own, restores every partition from the checkpoints and counts the
 * rest. Its 8 partition stores alone equal the oracle and each holds its
 * partition's end offsets; it restored all 8 and read exactly what the
 * checkpoints did not hold (so its counts came from the restores, not from
 * a replay of the whole log). After SIGTERM the checkpoints hold exactly
 * what instance 0 had counted (the revoke's checkpoint); after kill -9
 * they are behind it, and instance 1 replays the difference. */
static void empty_disk_takeover(int kill9) {
    const char *how = kill9 ? "kill -9" : "SIGTERM";
    uint64_t total = expected_msgs[0] + expected_msgs[1];
    int n_with = 0;
    double read_by_0 = 0;
    instance_state[0] = tu_fmt("%s/state0", tmp);
    instance_state[1] = tu_fmt("%s/state1", tmp);
    checkpoint_dir = tu_fmt("%s/checkpoints", tmp);
    start_stream(0, 0);
    free(wait_assigned(0));
    produce(rate_over(20), 0);
    for (int64_t t0 = mono_ms(); read_by_0 < (double)total / 3 || n_with < n_partitions; usleep(200000)) {
        ck_assert_msg(mono_ms() - t0 < tu_wait_limit_ms(60000), "instance 0 read %.0f of %" PRIu64 " messages and "
                      "checkpointed %d partitions (log %s)", read_by_0, total, n_with, streams[0].log);
        read_by_0 = instance_metric(0, "iqp_events_total", no_labels);
        best_checkpoints(&n_with);
    }
    if (kill9) kill_stream(0);
    else stop_stream(0);
    int64_t restored = best_checkpoints(&n_with), final[2][MAX_PARTITIONS] = {{0}}, counted_by_0 = 0;
    read_offsets_of("--state-dir", instance_state[0], final);
    for (int t = 0; t < 2; t++)
        for (int p = 0; p < n_partitions; p++) counted_by_0 += final[t][p];
    ck_assert_msg(restored > 0 && restored <= counted_by_0 && (uint64_t)counted_by_0 < total,
                  "checkpoints hold %" PRId64 " messages, instance 0's stores %" PRId64 " of %" PRIu64, restored,
                  counted_by_0, total);
    if (!kill9)
        ck_assert_msg(restored == counted_by_0, "after SIGTERM the checkpoints hold %" PRId64 " messages, instance "
                      "0's stores %" PRId64, restored, counted_by_0);
    start_stream(1, 0); /* instance_state[1] does not exist: an empty disk */
    wait_producer();
    state_dir = tu_fmt("%s", instance_state[1]);
    wait_caught_up(1);
    char *m = fetch_metrics(streams[1].metrics_port);
    double restores = metric_sum(m, "iqp_partition_restores_total", no_labels);
    double bytes = metric_sum(m, "iqp_partition_restore_bytes_total", no_labels);
    double secs = metric_sum(m, "iqp_partition_restore_seconds_sum", no_labels);
    double read_by_1 = metric_sum(m, "iqp_events_total", no_labels);
    double dropped = metric_sum(m, "iqp_batches_dropped_total", no_labels);
    free(m);
    stop_stream(1);
    fprintf(stderr, "empty-disk takeover (%s): instance 0 counted %" PRId64 " of %" PRIu64 " messages, its "
                    "checkpoints %" PRId64 "; instance 1 restored %.0f partitions (%.0f bytes in %.3f s), then read "
                    "%.0f messages\n", how, counted_by_0, total, restored, restores, bytes, secs, read_by_1);
    ck_assert_msg(restores == n_partitions, "instance 1 restored %.0f partitions, want %d (log %s)", restores,
                  n_partitions, streams[1].log);
    ck_assert_msg(bytes > 0, "restored %.0f bytes", bytes);
    if (dropped == 0) /* (a dropped batch is read again) */
        ck_assert_msg(read_by_1 + (double)restored == (double)total, "instance 1 read %.0f messages, the checkpoints "
                      "held %" PRId64 ", the log %" PRIu64, read_by_1, restored, total);
    check_partition_stores();
    compare_with_oracle(2);
}

START_TEST(stream_checkpoint_dir_empty_disk_takeover_after_sigterm) { empty_disk_takeover(0); }
END_TEST

START_TEST(stream_checkpoint_dir_empty_disk_takeover_after_kill_9) { empty_disk_takeover(1); }
END_TEST

/* Runs `iqp stream ARGS` (no broker is needed: it must stop first) and
 * checks its exit status and that its message names the problem. */
static void expect_rejected_as(const char *args, int want_rc, const char *needle) {
    char *cmd = tu_fmt("'%s' stream --metrics-listen off %s 2>&1", tu_iqp(), args);
    char *out = NULL;
    int rc = tu_run(cmd, &out);
    ck_assert_msg(rc == want_rc, "%s: exit %d, want %d", args, rc, want_rc);
    ck_assert_msg(out && strstr(out, needle), "%s: message lacks '%s': %s", args, needle, out);
    free(out);
    free(cmd);
}

/* The same, with a --store. */
static void expect_rejected(const char *args, int want_rc, const char *needle) {
    char *with_store = tu_fmt("--store '%s/s' %s", tmp, args);
    expect_rejected_as(with_store, want_rc, needle);
    free(with_store);
}

START_TEST(stream_rejects_bad_usage) {
    expect_rejected("", 2, "no brokers");
    expect_rejected("--brokers 127.0.0.1:1 --property enable.auto.commit=true", 2, "enable.auto.commit");
    expect_rejected("--brokers 127.0.0.1:1 --property no.such.thing=1", 2, "no.such.thing");
    expect_rejected("--brokers 127.0.0.1:1 --actions-topic impressions", 2, "must differ");
    expect_rejected("--brokers 127.0.0.1:1 --flush-ms 0", 2, "--flush-ms");
    expect_rejected("--brokers 127.0.0.1:1 --repartition", 2, "--repartition / stream.repartition needs --state-dir");
    char *missing = tu_fmt("--brokers '%s' --state-dir '%s/st' --repartition-prefix nosuch", broker.bootstrap, tmp);
    expect_rejected_as(missing, 1, "repartition topic 'nosuch-impressions' does not exist");
    free(missing);
    expect_rejected("--brokers 127.0.0.1:1 --on-offset-lost maybe", 2, "--on-offset-lost");
    expect_rejected("--brokers 127.0.0.1:1 --property auto.offset.reset=sometimes", 2, "auto.offset.reset=sometimes");
    /* --state-dir: instead of --store, with Redis only when repartitioned, with the range assignor */
    char *sd = tu_fmt("--brokers 127.0.0.1:1 --state-dir '%s/state'", tmp), *args;
    expect_rejected(sd, 2, "give --store or --state-dir, not both");
    args = tu_fmt("%s --redis redis://127.0.0.1:1", sd);
    expect_rejected_as(args, 2, "--state-dir with --redis needs --repartition");
    free(args);
    args = tu_fmt("%s --property partition.assignment.strategy=roundrobin", sd);
    expect_rejected_as(args, 2, "partition.assignment.strategy=roundrobin: --state-dir needs");
    free(args);
    /* --checkpoint-dir: with --state-dir only; a directory it can write */
    expect_rejected("--brokers 127.0.0.1:1 --checkpoint-dir ck", 2, "--checkpoint-dir / stream.checkpoint_dir needs "
                    "--state-dir");
    args = tu_fmt("%s --checkpoint-interval 10ms --checkpoint-dir ck", sd);
    expect_rejected_as(args, 2, "--checkpoint-interval must be a duration from 1s");
    free(args);
    char *file = tu_fmt("%s/a-file", tmp);
    FILE *f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    args = tu_fmt("%s --checkpoint-dir '%s/ck' --dead-letter-file '%s/dl.jsonl'", sd, file, tmp);
    expect_rejected_as(args, 1, "cannot create the checkpoint dir");
    free(args);
    args = tu_fmt("--brokers '%s' --state-dir '%s/state' --checkpoint-dir '%s/ck' --dead-letter-file '%s/dl.jsonl' "
                  "--dry-run", broker.bootstrap, tmp, file, tmp);
    expect_rejected_as(args, 1, "is not a writable directory");
    free(args);
    free(file);
    free(sd);
    /* topics whose partition counts differ (the devbroker creates an unknown
     * topic on first use with 4 partitions; imp has 8): exit 1 at start */
    args = tu_fmt("--brokers '%s' --state-dir '%s/state' --impressions-topic imp --actions-topic made-on-use "
                  "--dead-letter-file '%s/dl.jsonl'", broker.bootstrap, tmp, tmp);
    expect_rejected_as(args, 1, "topic 'imp' has 8 partitions and 'made-on-use' 4: --state-dir keeps partition p");
    free(args);
}
END_TEST

int main(void) {
    stream_setup();
    Suite *s = suite_create("stream");
    TCase *tc = tcase_create("devbroker");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, test_setup, test_teardown);
    tcase_add_test(tc, stream_rejects_bad_usage);
    tcase_add_test(tc, stream_counts_exactly_with_dead_letters);
    tcase_add_test(tc, stream_survives_kill_9);
    tcase_add_test(tc, stream_short_flush_interval_survives_kill_9);
    tcase_add_test(tc, stream_recovers_from_broker_outage);
    tcase_add_test(tc, stream_stops_gracefully_and_resumes);
    suite_add_tcase(s, tc);
    /* a consumer group of two instances; run alone with CK_RUN_CASE=group */
    TCase *grp = tcase_create("group");
    tcase_set_timeout(grp, 300);
    tcase_add_checked_fixture(grp, test_setup, test_teardown);
    tcase_add_test(grp, stream_rebalances_between_two_instances);
    tcase_add_test(grp, stream_stalled_instance_drops_its_batch);
    tcase_add_test(grp, stream_refused_member_drops_and_rereads);
    suite_add_tcase(s, grp);
    /* publishing to Redis; run alone with CK_RUN_CASE=redis */
    TCase *rc = tcase_create("redis");
    tcase_set_timeout(rc, 300);
    tcase_add_checked_fixture(rc, test_setup, test_teardown);
    tcase_add_test(rc, stream_publishes_to_redis);
    tcase_add_test(rc, stream_republishes_after_redis_restarts_empty);
    tcase_add_test(rc, stream_publishes_queue_after_crash_during_redis_outage);
    suite_add_tcase(s, rc);
    /* health and lost offsets (issue 18 item 5, issue 13 item 11); run
     * alone with CK_RUN_CASE=operations */
    TCase *ops = tcase_create("operations");
    tcase_set_timeout(ops, 300);
    tcase_add_checked_fixture(ops, test_setup, test_teardown);
    tcase_add_test(ops, stream_health_follows_brokers_and_redis);
    tcase_add_test(ops, stream_stops_when_its_offsets_were_evicted);
    suite_add_tcase(s, ops);
    /* partition-owned state (--state-dir, issue 16 items 1-2); run alone
     * with CK_RUN_CASE=partitions */
    TCase *parts = tcase_create("partitions");
    tcase_set_timeout(parts, 300);
    tcase_add_checked_fixture(parts, test_setup, test_teardown);
    tcase_add_test(parts, stream_state_dir_three_instances_count_once);
    tcase_add_test(parts, stream_state_dir_survives_kill_9);
    tcase_add_test(parts, stream_state_dir_waits_for_a_stalled_owner);
    tcase_add_test(parts, stream_checkpoint_dir_empty_disk_takeover_after_sigterm);
    tcase_add_test(parts, stream_checkpoint_dir_empty_disk_takeover_after_kill_9);
    suite_add_tcase(s, parts);

    /* repartitioned input (--repartition); run alone with CK_RUN_CASE=repartition */
    TCase *rpt = tcase_create("repartition");
    tcase_add_checked_fixture(rpt, repartition_setup, test_teardown);
    tcase_set_timeout(rpt, 600);
    tcase_add_test(rpt, stream_repartition_three_instances_count_once);
    tcase_add_test(rpt, stream_repartition_survives_kill_9);
    tcase_add_test(rpt, stream_repartition_kill_add_remove_and_empty_disk);
    suite_add_tcase(s, rpt);
    TCase *rps = tcase_create("repartition-resend");
    tcase_add_checked_fixture(rps, resend_setup, test_teardown);
    tcase_set_timeout(rps, 300);
    tcase_add_test(rps, stream_repartition_drops_resent_records_beyond_the_dedup_horizon);
    suite_add_tcase(s, rps);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    stream_teardown();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

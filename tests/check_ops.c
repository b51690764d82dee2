/* check_ops.c -- what an operator relies on (issue 17), tested against the
 * real binary:
 *   - systemd: `iqp stream` sends READY=1, WATCHDOG=1 and STOPPING=1 to
 *     $NOTIFY_SOCKET (a datagram socket this test binds), or nothing when
 *     built without libsystemd;
 *   - `iqp config check` names every planted problem by its JSON path and
 *     is silent on a good file; `iqp config show` fills in every default,
 *     and its output is a config that checks clean and shows the same;
 *   - every metric ops/prometheus/iqp.rules.yml and ops/grafana/iqp.json
 *     use is on the /metrics of a running `iqp stream --redis`, and every
 *     recorded (iqp:...) series they use is defined by a rule;
 *   - `iqp stream --log-format json` writes only JSON objects with time,
 *     level, component and msg on stderr, its own lines and librdkafka's,
 *     failures at level error;
 *   - `iqp backup` + `iqp restore` give back a store with the same
 *     contents (refresh --dump, byte for byte), refuse to overwrite, and a
 *     backup taken beside a running `iqp stream`, restored and streamed on
 *     under a new group, ends exactly where the uninterrupted store ends
 *     (counts and offsets were copied together);
 *   - `iqp stream --dry-run` finds the topics, a missing topic, a store of
 *     another layout and a writable Redis, and changes nothing;
 *
 * Kafka is `iqp devbroker` (a child, stopped by pid); every wait is
 * bounded and stretched by CK_TIMEOUT_MULTIPLIER like Check's timeouts.
 */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "tests/testutil.h"
#include "util/clock.h"

static char *tmp;
static tu_broker broker;
static pid_t child;


static void setup_broker(void) {
    static const char *const args[] = {"--brokers", "1", "--partitions", "2", "--topics",
                                       "impressions,actions,dead-letter,iqp-checkpoints,"
                                       "iqp-repartition-impressions,iqp-repartition-actions,rp3-impressions,"
                                       "rp3-actions:3", NULL};
    tmp = tu_mkdtemp("ops");
    ck_assert_ptr_nonnull(tmp);
    ck_assert_int_eq(tu_broker_start(&broker, args), 0);
}

static void teardown_broker(void) {
    if (child > 0) tu_stop_pid(child, SIGKILL, 5000);
    child = 0;
    tu_broker_stop(&broker);
    if (tmp) tu_rmrf(tmp);
    free(tmp);
    tmp = NULL;
}

/* Runs `iqp ARGV...` in the background with extra environment (NAME=VALUE
 * strings, NULL-terminated); stderr to log. */
static pid_t spawn_env(const char *const *argv, const char *const *env, const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        for (const char *const *e = env; e && *e; e++) putenv((char *)*e);
        if (!freopen(log, "a", stderr) || !freopen("/dev/null", "w", stdout)) _exit(126);
        execv(tu_iqp(), (char *const *)argv);
        _exit(127);
    }
    ck_assert_int_gt(pid, 0);
    return pid;
}

/* ---- systemd notifications ------------------------------------------------ */

/* Reads datagrams from fd for up to ms, appending each (one line) to
 * seen; returns once want is among them (1) or the time is up (0). */
static int wait_for_state(int fd, const char *want, char *seen, size_t seenlen, int ms) {
    int64_t deadline = iqp_mono_ms() + ms;
    while (iqp_mono_ms() < deadline) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
        char buf[512];
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n <= 0) continue;
        buf[n] = '\0';
        size_t used = strlen(seen);
        snprintf(seen + used, seenlen - used, "%s|", buf);
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
            if (strcmp(line, want) == 0) return 1;
    }
    return 0;
}

static int bind_notify_socket(const char *path) {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    ck_assert_int_ge(fd, 0);
    ck_assert_uint_lt(strlen(path), sizeof a.sun_path);
    strcpy(a.sun_path, path);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

START_TEST(stream_notifies_systemd) {
    char *sock = tu_fmt("%s/notify.sock", tmp), *store = tu_fmt("%s/store", tmp);
    char *dl = tu_fmt("%s/dl.jsonl", tmp), *log = tu_fmt("%s/stream.log", tmp);
    char *env_sock = tu_fmt("NOTIFY_SOCKET=%s", sock);
    const char *const env[] = {env_sock, "WATCHDOG_USEC=300000", NULL};
    const char *const argv[] = {"iqp", "stream", "--store", store, "--brokers", broker.bootstrap,
                                "--dead-letter-file", dl, "--metrics-listen", "off",
                                "--checkpoint-topic", "off", "--flush-ms", "100", NULL};
    char seen[8192] = "";
    int fd = bind_notify_socket(sock);
    child = spawn_env(argv, env, log);
#ifdef IQP_HAVE_SYSTEMD
    ck_assert_msg(wait_for_state(fd, "READY=1", seen, sizeof seen, tu_wait_limit_ms(30000)),
                  "no READY=1 (got '%s', log %s)", seen, log);
    /* WatchdogSec=300ms: a ping at least every 100 ms; wait for three. */
    for (int i = 0; i < 3; i++)
        ck_assert_msg(wait_for_state(fd, "WATCHDOG=1", seen, sizeof seen, tu_wait_limit_ms(2000)),
                      "watchdog ping %d missing (got '%s')", i, seen);
    ck_assert_int_eq(kill(child, SIGTERM), 0);
    ck_assert_msg(wait_for_state(fd, "STOPPING=1", seen, sizeof seen, tu_wait_limit_ms(10000)),
                  "no STOPPING=1 (got '%s')", seen);
#else
    /* The no-op build: nothing is ever sent, and the stream runs as usual. */
    ck_assert_msg(!wait_for_state(fd, "READY=1", seen, sizeof seen, 2000), "got '%s'", seen);
    ck_assert_int_eq(kill(child, SIGTERM), 0);
#endif
    int rc = tu_stop_pid(child, 0, tu_wait_limit_ms(15000)); /* 0: wait only (SIGTERM sent) */
    child = 0;
    ck_assert_msg(rc == 0, "iqp stream exited %d (log %s)", rc, log);
    close(fd);
    free(sock), free(store), free(dl), free(log), free(env_sock);
}
END_TEST


/* ---- iqp config ------------------------------------------------------------- */

static char *write_tmp(const char *name, const char *text) {
    char *path = tu_fmt("%s/%s", tmp, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* Runs shell text; *out gets stdout, *err stderr (files in tmp). */
static int run_split(const char *cmd, char **out, char **err) {
    char *errf = tu_fmt("%s/stderr.txt", tmp), *full = tu_fmt("%s 2>'%s'", cmd, errf);
    int rc = tu_run(full, out);
    *err = tu_read_file(errf, NULL);
    ck_assert_ptr_nonnull(*err);
    free(errf), free(full);
    return rc;
}

static void setup_tmp(void) {
    tmp = tu_mkdtemp("ops");
    ck_assert_ptr_nonnull(tmp);
}

START_TEST(config_check_names_every_problem) {
    /* One problem planted per line, each at a known path. */
    char *path = write_tmp("bad.json",
        "{\"actions\": [\"click\", \"iqp_x\", \"click\"],\n"
        " \"windows\": [{\"name\": \"1d\", \"length\": \"1d\", \"granularity\": \"5h\"},\n"
        "             {\"name\": \"7d\", \"length\": \"7d\", \"granularity\": \"1d\"}],\n"
        " \"limits\": {\"max_items\": 0, \"max_event_bytes\": 100, \"nope\": 1},\n"
        " \"stream\": {\"flush_ms\": 0, \"store\": \"/x\"},\n"
        " \"redis\": {\"url\": \"redis://127.0.0.1:6379/0\", \"ttl\": \"1ms\"},\n"
        " \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:9\", \"no.such.property\": \"1\"},\n"
        " \"metrics\": {\"listen\": 5},\n"
        " \"bogus\": 1}\n");
    static const char *const want[] = {"$.actions[1]", "$.actions[2]", "$.windows[0]", "$.limits.max_items",
                                       "$.limits.nope", "$.stream.flush_ms", "$.redis.ttl",
                                       "$.kafka[\"no.such.property\"]", "$.metrics.listen", "$.bogus"};
    size_t n_want = sizeof want / sizeof want[0];
    char *cmd = tu_fmt("'%s' config check '%s'", tu_iqp(), path), *out = NULL, *err = NULL;
    ck_assert_int_eq(run_split(cmd, &out, &err), 2);
    ck_assert_str_eq(out, "");
    /* exactly the planted paths, each once, in file order */
    size_t n = 0;
    for (char *line = strtok(err, "\n"); line; line = strtok(NULL, "\n"), n++) {
        ck_assert_msg(n < n_want, "more problems than planted: %s", line);
        char *prefix = tu_fmt("%s: %s: ", path, want[n]);
        ck_assert_msg(strncmp(line, prefix, strlen(prefix)) == 0, "line %zu is '%s', want path %s", n, line, want[n]);
        free(prefix);
    }
    ck_assert_uint_eq(n, n_want);
    free(cmd), free(out), free(err), free(path);
}
END_TEST

START_TEST(config_check_silent_on_good_files) {
    char *cmd = tu_fmt("'%s' config check --stream '%s/ops/config/stream.json'", tu_iqp(), IQP_SRCDIR);
    char *out = NULL, *err = NULL;
    ck_assert_int_eq(run_split(cmd, &out, &err), 0);
    ck_assert_str_eq(out, "");
    ck_assert_str_eq(err, "");
    free(cmd), free(out), free(err);
    /* --stream demands a store and brokers; without it a partial file is fine */
    char *part = write_tmp("part.json", "{\"redis\": {\"url\": \"redis://127.0.0.1:1/0\"}}");
    cmd = tu_fmt("'%s' config check '%s'", tu_iqp(), part);
    ck_assert_int_eq(run_split(cmd, &out, &err), 0);
    free(cmd), free(out), free(err);
    cmd = tu_fmt("'%s' config check --stream '%s'", tu_iqp(), part);
    ck_assert_int_eq(run_split(cmd, &out, &err), 2);
    ck_assert_msg(strstr(err, ": $: no store") != NULL, "got '%s'", err);
    free(cmd), free(out), free(err), free(part);
    /* not JSON, not an object, not there */
    char *junk = write_tmp("junk.json", "{\"a\": ");
    cmd = tu_fmt("'%s' config check '%s'", tu_iqp(), junk);
    ck_assert_int_eq(run_split(cmd, &out, &err), 2);
    ck_assert_msg(strstr(err, ": $: invalid JSON at line 1") != NULL, "got '%s'", err);
    free(cmd), free(out), free(err), free(junk);
    cmd = tu_fmt("'%s' config check '%s/none.json'", tu_iqp(), tmp);
    ck_assert_int_eq(run_split(cmd, &out, &err), 1);
    free(cmd), free(out), free(err);
}
END_TEST

static json_t *show(const char *path) {
    char *cmd = tu_fmt("'%s' config show %s", tu_iqp(), path ? path : ""), *out = NULL;
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    json_t *j = json_loads(out, 0, NULL);
    ck_assert_msg(j != NULL, "config show printed no JSON: %s", out);
    free(cmd), free(out);
    return j;
}

static const char *str_at(json_t *j, const char *section, const char *key) {
    return json_string_value(json_object_get(json_object_get(j, section), key));
}

START_TEST(config_show_fills_defaults) {
    char *path = write_tmp("svc.json",
        "{\"actions\": [\"click\", \"buy\"], \"flush_events\": 5000,\n"
        " \"stream\": {\"store\": \"/var/lib/iqp/main/store\", \"flush_ms\": 250,\n"
        "            \"dead_letter_file\": \"/var/lib/iqp/main/dl.jsonl\"},\n"
        " \"kafka\": {\"bootstrap.servers\": \"k1:9092\", \"group.id\": \"g1\", \"fetch.wait.max.ms\": 50},\n"
        " \"redis\": {\"url\": \"redis://127.0.0.1:6379/0\", \"ttl\": \"2h\"}}\n");
    json_t *j = show(path);
    /* what the file says */
    ck_assert_uint_eq(json_array_size(json_object_get(j, "actions")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "flush_events")), 5000);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "stream"), "flush_ms")), 250);
    ck_assert_str_eq(str_at(j, "stream", "dead_letter_file"), "/var/lib/iqp/main/dl.jsonl");
    ck_assert_ptr_null(json_object_get(json_object_get(j, "stream"), "dead_letter_topic"));
    ck_assert_str_eq(str_at(j, "kafka", "group.id"), "g1");
    ck_assert_str_eq(str_at(j, "kafka", "fetch.wait.max.ms"), "50");
    ck_assert_str_eq(str_at(j, "redis", "ttl"), "2h");
    /* the defaults (DESIGN.md, README, iqp stream --help) */
    ck_assert_uint_eq(json_array_size(json_object_get(j, "features")), 5);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "windows")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "limits"), "max_items")), 10000);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "dedup_horizon")), 24 * 3600 * 1000);
    ck_assert_str_eq(str_at(j, "stream", "impressions_topic"), "impressions");
    ck_assert_str_eq(str_at(j, "stream", "checkpoint_topic"), "iqp-checkpoints");
    ck_assert_str_eq(str_at(j, "kafka", "auto.offset.reset"), "earliest");
    ck_assert_str_eq(str_at(j, "kafka", "enable.auto.commit"), "false");
    ck_assert_str_eq(str_at(j, "redis", "prefix"), "iqp");
    ck_assert_str_eq(str_at(j, "metrics", "listen"), "127.0.0.1:9464");
    ck_assert_str_eq(str_at(j, "store", "counts_compaction"), "universal");
    /* its output is a valid config that shows the same */
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    char *again_path = write_tmp("shown.json", text);
    char *cmd = tu_fmt("'%s' config check --stream '%s'", tu_iqp(), again_path), *out = NULL, *err = NULL;
    ck_assert_int_eq(run_split(cmd, &out, &err), 0);
    json_t *again = show(again_path);
    ck_assert_msg(json_equal(j, again), "show(show(FILE)) differs from show(FILE)");
    /* no file: the defaults alone, no store and Redis off */
    json_t *d = show(NULL);
    ck_assert_str_eq(str_at(d, "redis", "url"), "off");
    /* the stream's own librdkafka default (consumers/stream.c: an empty
     * fetch waits 25 ms, not librdkafka's 500), which a file overrides (above) */
    ck_assert_str_eq(str_at(d, "kafka", "fetch.wait.max.ms"), "25");
    ck_assert_ptr_null(json_object_get(json_object_get(d, "stream"), "store"));
    json_decref(d), json_decref(again), json_decref(j);
    free(text), free(again_path), free(cmd), free(out), free(err), free(path);
}
END_TEST

/* ---- iqp stream --dry-run ------------------------------------------------------ */

static int dry_run(const char *extra, char **out) {
    char *err = NULL;
    char *cmd = tu_fmt("'%s' stream --dry-run --brokers '%s' --store '%s/store' --dead-letter-file '%s/dl.jsonl' "
                       "--metrics-listen 127.0.0.1:0 %s", tu_iqp(), broker.bootstrap, tmp, tmp, extra);
    int rc = run_split(cmd, out, &err);
    free(cmd), free(err);
    return rc;
}

START_TEST(stream_dry_run_checks_and_changes_nothing) {
    char *out = NULL, *store = tu_fmt("%s/store", tmp);
    ck_assert_int_eq(dry_run("", &out), 0);
    ck_assert_msg(strstr(out, "ok   kafka     impressions topic 'impressions': 2 partitions"), "%s", out);
    ck_assert_msg(strstr(out, "ok   kafka     checkpoint topic 'iqp-checkpoints': 2 partitions"), "%s", out);
    ck_assert_msg(strstr(out, "does not exist yet: would create it"), "%s", out);
    ck_assert_msg(strstr(out, "dry run ok: would count topics 'impressions' and 'actions'"), "%s", out);
    ck_assert_msg(access(store, F_OK) != 0, "the dry run created the store");
    char *dl = tu_fmt("%s/dl.jsonl", tmp);
    ck_assert_msg(access(dl, F_OK) != 0, "the dry run created the dead-letter file");
    free(dl);
    free(out);
    /* an empty directory (made by an operator or a package) is no store yet */
    ck_assert_int_eq(mkdir(store, 0755), 0);
    ck_assert_int_eq(dry_run("", &out), 0);
    ck_assert_msg(strstr(out, "ok   store") && strstr(out, "holds no store yet: would create it"), "%s", out);
    ck_assert_int_eq(rmdir(store), 0); /* still empty: the dry run wrote nothing into it */
    free(out);
    /* a topic that is not there */
    ck_assert_int_eq(dry_run("--actions-topic missing", &out), 1);
    ck_assert_msg(strstr(out, "FAIL kafka     actions topic 'missing' does not exist"), "%s", out);
    free(out);
    /* a store of another layout (backfilled with two actions only) */
    char *cfg = write_tmp("other.json", "{\"actions\": [\"click\", \"buy\"]}");
    char *events = write_tmp("none.jsonl", "");
    char *cmd = tu_fmt("'%s' backfill --store '%s' --config '%s' '%s' 2>/dev/null", tu_iqp(), store, cfg, events);
    ck_assert_int_eq(tu_run(cmd, NULL), 0);
    ck_assert_int_eq(dry_run("", &out), 1);
    ck_assert_msg(strstr(out, "FAIL store"), "%s", out);
    free(out), free(cmd);
    char *with_cfg = tu_fmt("--config '%s'", cfg);
    ck_assert_int_eq(dry_run(with_cfg, &out), 0);
    ck_assert_msg(strstr(out, "layout matches the config"), "%s", out);
    free(out), free(with_cfg);
    /* Redis: reachable and writable */
    int port = tu_free_port();
    char *rlog = tu_fmt("%s/redis.log", tmp);
    char *redis = tu_fmt("--config '%s' --redis redis://127.0.0.1:%d/0", cfg, port);
    child = tu_redis_start(port, rlog);
    ck_assert_int_gt(child, 0);
    ck_assert_int_eq(dry_run(redis, &out), 0);
    ck_assert_msg(strstr(out, "accepts writes under prefix 'iqp'"), "%s", out);
    ck_assert_msg(strstr(out, "nothing published under 'iqp' yet"), "%s", out);
    free(out);
    tu_stop_pid(child, SIGTERM, 5000);
    child = 0;
    ck_assert_int_eq(dry_run(redis, &out), 1);
    ck_assert_msg(strstr(out, "FAIL redis"), "%s", out);
    free(out), free(rlog), free(redis), free(cfg), free(events), free(store);
}
END_TEST

/* --repartition: the dry run checks the repartition topics too. */
static int dry_run_repartition(const char *prefix, char **out) {
    char *err = NULL;
    char *cmd = tu_fmt("'%s' stream --dry-run --brokers '%s' --state-dir '%s/state' --dead-letter-file "
                       "'%s/dl.jsonl' --metrics-listen off --repartition-prefix %s", tu_iqp(), broker.bootstrap, tmp,
                       tmp, prefix);
    int rc = run_split(cmd, out, &err);
    free(cmd), free(err);
    return rc;
}

START_TEST(stream_dry_run_checks_repartition_topics) {
    char *out = NULL;
    ck_assert_int_eq(dry_run_repartition("iqp-repartition", &out), 0);
    ck_assert_msg(strstr(out, "ok   kafka     repartition topic 'iqp-repartition-actions': 2 partitions"), "%s", out);
    ck_assert_msg(strstr(out, "count them as group 'iqp-stream-counting'"), "%s", out);
    free(out);
    ck_assert_int_eq(dry_run_repartition("missing", &out), 1);
    ck_assert_msg(strstr(out, "FAIL kafka     repartition topic 'missing-impressions' does not exist"), "%s", out);
    free(out);
    ck_assert_int_eq(dry_run_repartition("rp3", &out), 1);
    ck_assert_msg(strstr(out, "rp3-impressions has 2 partitions, rp3-actions 3: --repartition needs the same count"),
                  "%s", out);
    free(out);
}
END_TEST


/* ---- dashboards and rules use only exported metrics ----------------------------- */


/* Whether the exposition declares name: its own family, or a histogram's
 * _bucket/_count/_sum series. */
static int exported(const char *metrics, const char *name) {
    char *want = tu_fmt("# TYPE %s ", name);
    int found = strstr(metrics, want) != NULL;
    free(want);
    static const char *const suffixes[] = {"_bucket", "_count", "_sum"};
    for (size_t i = 0; !found && i < 3; i++) {
        size_t n = strlen(name), k = strlen(suffixes[i]);
        if (n > k && strcmp(name + n - k, suffixes[i]) == 0) {
            char *h = tu_fmt("# TYPE %.*s histogram", (int)(n - k), name);
            found = strstr(metrics, h) != NULL;
            free(h);
        }
    }
    return found;
}

static int name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == ':';
}

/* Every iqp_... and iqp:... name in text must be exported (iqp_) or
 * recorded by rules (iqp:...). Returns how many names were checked. */
static int check_names(const char *file, const char *text, const char *metrics, const char *rules) {
    int n = 0;
    for (const char *p = text; (p = strstr(p, "iqp")) != NULL;) {
        if ((p > text && name_char(p[-1])) || (p[3] != '_' && p[3] != ':')) {
            p += 3;
            continue;
        }
        size_t len = 3;
        while (name_char(p[len])) len++;
        char *name = tu_fmt("%.*s", (int)len, p);
        p += len;
        if (strchr(name, ':')) {
            char *rec = tu_fmt("record: %s\n", name);
            ck_assert_msg(strstr(rules, rec) != NULL, "%s uses %s, which no rule records", file, name);
            free(rec);
        } else if (strcmp(name, "iqp_") != 0) {
            ck_assert_msg(exported(metrics, name), "%s uses %s, which iqp stream does not export", file, name);
        }
        free(name);
        n++;
    }
    return n;
}

START_TEST(rules_and_dashboard_use_exported_metrics) {
    int redis_port = tu_free_port(), metrics_port = tu_free_port();
    char *rlog = tu_fmt("%s/redis.log", tmp), *log = tu_fmt("%s/stream.log", tmp);
    char *store = tu_fmt("%s/store", tmp), *dl = tu_fmt("%s/dl.jsonl", tmp);
    char *url = tu_fmt("redis://127.0.0.1:%d/0", redis_port), *listen = tu_fmt("127.0.0.1:%d", metrics_port);
    pid_t redis = tu_redis_start(redis_port, rlog);
    ck_assert_int_gt(redis, 0);
    const char *const argv[] = {"iqp", "stream", "--store", store, "--brokers", broker.bootstrap,
                                "--dead-letter-file", dl, "--metrics-listen", listen,
                                "--checkpoint-topic", "off", "--redis", url, NULL};
    child = spawn_env(argv, NULL, log);
    char *metrics = NULL;
    int64_t deadline = iqp_mono_ms() + tu_wait_limit_ms(30000);
    while (iqp_mono_ms() < deadline) {
        free(metrics);
        metrics = tu_try_fetch_metrics(metrics_port);
        if (metrics && strstr(metrics, "# TYPE iqp_redis_connected ") && strstr(metrics, "# TYPE iqp_events_total ")) break;
        usleep(100000);
    }
    ck_assert_msg(metrics != NULL, "no /metrics on %s (log %s)", listen, log);
    char *rules_path = tu_fmt("%s/ops/prometheus/iqp.rules.yml", IQP_SRCDIR);
    char *dash_path = tu_fmt("%s/ops/grafana/iqp.json", IQP_SRCDIR);
    char *rules = tu_read_file(rules_path, NULL), *dash = tu_read_file(dash_path, NULL);
    ck_assert_ptr_nonnull(rules);
    ck_assert_ptr_nonnull(dash);
    json_t *dash_json = json_loads(dash, 0, NULL);
    ck_assert_msg(dash_json != NULL, "%s is not JSON", dash_path);
    json_decref(dash_json);
    /* and enough of them that the scan cannot pass by finding nothing */
    ck_assert_int_ge(check_names(rules_path, rules, metrics, rules), 20);
    ck_assert_int_ge(check_names(dash_path, dash, metrics, rules), 25);
    ck_assert_int_eq(tu_stop_pid(child, SIGTERM, tu_wait_limit_ms(15000)), 0);
    child = 0;
    tu_stop_pid(redis, SIGTERM, 5000);
    free(rlog), free(log), free(store), free(dl), free(url), free(listen), free(metrics);
    free(rules_path), free(dash_path), free(rules), free(dash);
}
END_TEST



/* ---- --log-format json ------------------------------------------------------------- */

/* Every line of path is a JSON object with time, level, component, msg;
 * returns how many lines have msg starting with want_msg at want_level. */
static int json_log_lines(const char *path, const char *want_level, const char *want_msg, int *lines) {
    char *text = tu_read_file(path, NULL);
    int hits = 0;
    *lines = 0;
    ck_assert_ptr_nonnull(text);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), (*lines)++) {
        json_t *j = json_loads(line, 0, NULL);
        ck_assert_msg(json_is_object(j), "not a JSON object: %s", line);
        const char *time = json_string_value(json_object_get(j, "time"));
        const char *level = json_string_value(json_object_get(j, "level"));
        const char *msg = json_string_value(json_object_get(j, "msg"));
        ck_assert_msg(time && strlen(time) == 24 && time[10] == 'T' && time[23] == 'Z', "bad time in %s", line);
        ck_assert_msg(level && msg, "no level or msg in %s", line);
        ck_assert_str_eq(json_string_value(json_object_get(j, "component")), "stream");
        if (strcmp(level, want_level) == 0 && strncmp(msg, want_msg, strlen(want_msg)) == 0) hits++;
        json_decref(j);
    }
    free(text);
    return hits;
}

START_TEST(stream_logs_json) {
    char *store = tu_fmt("%s/store", tmp), *dl = tu_fmt("%s/dl.jsonl", tmp), *log = tu_fmt("%s/stream.log", tmp);
    const char *const argv[] = {"iqp", "stream", "--log-format", "json", "--store", store, "--brokers",
                                broker.bootstrap, "--dead-letter-file", dl, "--metrics-listen", "127.0.0.1:0",
                                "--checkpoint-topic", "off", "--property", "debug=cgrp", NULL};
    int lines = 0;
    child = spawn_env(argv, NULL, log);
    int64_t deadline = iqp_mono_ms() + tu_wait_limit_ms(20000);
    for (;;) {
        char *text = tu_read_file(log, NULL);
        int joined = text && strstr(text, "\"source\":\"librdkafka\"") && strstr(text, "metrics on port");
        free(text);
        if (joined || iqp_mono_ms() > deadline) break;
        usleep(100000);
    }
    ck_assert_int_eq(tu_stop_pid(child, SIGTERM, tu_wait_limit_ms(15000)), 0);
    child = 0;
    ck_assert_int_eq(json_log_lines(log, "info", "metrics on port", &lines), 1);
    ck_assert_int_eq(json_log_lines(log, "info", "0 messages: 0 counted", &lines), 1);
    ck_assert_int_eq(json_log_lines(log, "debug", "[thrd:", &lines) > 0, 1); /* librdkafka's, by syslog level */
    /* a failure: level error, and nothing but JSON */
    char *bad = tu_fmt("%s/file", tmp), *bad_store = tu_fmt("%s/file/store", tmp), *log2 = tu_fmt("%s/bad.log", tmp);
    char *cmd = tu_fmt("touch '%s' && '%s' stream --log-format json --store '%s' --brokers '%s' --dead-letter-file '%s' "
                       "--metrics-listen off 2>'%s'", bad, tu_iqp(), bad_store, broker.bootstrap, dl, log2);
    ck_assert_int_eq(tu_run(cmd, NULL), 1);
    ck_assert_int_eq(json_log_lines(log2, "error", "cannot open store", &lines), 1);
    ck_assert_int_eq(lines, 1);
    free(store), free(dl), free(log), free(bad), free(bad_store), free(log2), free(cmd);
}
END_TEST

/* ---- iqp backup / iqp restore --------------------------------------------------- */

static int run_quiet(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run_quiet(const char *fmt, ...) {
    va_list ap;
    char cmd[8192];
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char *full = tu_fmt("%s >>'%s/cmd.log' 2>&1", cmd, tmp);
    int rc = tu_run(full, NULL);
    free(full);
    return rc;
}

/* refresh --dump of a store as of a fixed time: every value it serves. */
static char *dump(const char *store) {
    char *path = tu_fmt("%s/%s.dump", tmp, strrchr(store, '/') + 1);
    ck_assert_int_eq(run_quiet("'%s' refresh --store '%s' --as-of 1700100000000 --threads 1 --quiet --dump '%s'",
                               tu_iqp(), store, path), 0);
    char *text = tu_read_file(path, NULL);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_gt(strlen(text), 1000);
    free(path);
    return text;
}

static char *gen_events(int impressions) {
    char *events = tu_fmt("%s/events.jsonl", tmp);
    ck_assert_int_eq(run_quiet("'%s' gen --seed 7 --impressions %d --queries 30 --items 300 --start 1700000000000 "
                               "--span 1h --out '%s'", tu_iqp(), impressions, events), 0);
    return events;
}

START_TEST(backup_restore_roundtrip) {
    char *events = gen_events(400);
    char *a = tu_fmt("%s/A", tmp), *b = tu_fmt("%s/B", tmp), *c = tu_fmt("%s/C", tmp);
    ck_assert_int_eq(run_quiet("'%s' backfill --store '%s' '%s'", tu_iqp(), a, events), 0);
    ck_assert_int_eq(run_quiet("'%s' backup --store '%s' --to '%s'", tu_iqp(), a, b), 0);
    ck_assert_int_eq(run_quiet("'%s' restore --from '%s' --store '%s'", tu_iqp(), b, c), 0);
    char *da = dump(a), *db = dump(b), *dc = dump(c);
    ck_assert_msg(strcmp(da, db) == 0, "the backup serves other values than the store");
    ck_assert_msg(strcmp(da, dc) == 0, "the restored store serves other values than the store");
    /* refusals: an existing backup directory, an existing store, a non-backup */
    ck_assert_int_eq(run_quiet("'%s' backup --store '%s' --to '%s'", tu_iqp(), a, b), 1);
    ck_assert_int_eq(run_quiet("'%s' restore --from '%s' --store '%s'", tu_iqp(), b, c), 1);
    ck_assert_int_eq(run_quiet("'%s' restore --from '%s' --store '%s/D'", tu_iqp(), tmp, tmp), 1);
    ck_assert_int_eq(run_quiet("'%s' restore --from '%s' --store '%s'", tu_iqp(), b, b), 2);
    ck_assert_int_eq(run_quiet("'%s' backup --store '%s'", tu_iqp(), a), 2);
    /* --force keeps the old store, moved aside */
    ck_assert_int_eq(run_quiet("'%s' restore --from '%s' --store '%s' --force", tu_iqp(), b, c), 0);
    char *out = NULL, *cmd = tu_fmt("ls -d '%s'.before-restore-* | wc -l", c);
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    ck_assert_int_eq(atoi(out), 1);
    free(da), free(db), free(dc), free(events), free(a), free(b), free(c), free(out), free(cmd);
}
END_TEST

/* Sum of a store's stored Kafka offsets (-1 when stats fails). */
static long long offsets_sum(const char *store) {
    char *cmd = tu_fmt("'%s' stats --store '%s' 2>/dev/null", tu_iqp(), store), *out = NULL;
    long long sum = -1;
    if (tu_run(cmd, &out) == 0) {
        json_t *j = json_loads(out, 0, NULL), *v;
        const char *k;
        if (j) sum = 0;
        json_object_foreach(json_object_get(j, "kafka_offsets"), k, v) sum += json_integer_value(v);
        json_decref(j);
    }
    free(cmd), free(out);
    return sum;
}

static int wait_offsets(const char *store, long long want, int ms) {
    int64_t deadline = iqp_mono_ms() + tu_wait_limit_ms(ms);
    while (iqp_mono_ms() < deadline) {
        if (offsets_sum(store) == want) return 1;
        usleep(200000);
    }
    return 0;
}

static pid_t start_stream(const char *store, const char *group, const char *log) {
    char *dl = tu_fmt("%s.dl.jsonl", store);
    const char *const argv[] = {"iqp", "stream", "--store", store, "--brokers", broker.bootstrap, "--group", group,
                                "--dead-letter-file", dl, "--metrics-listen", "off", "--checkpoint-topic", "off",
                                "--flush-ms", "100", "--property", "session.timeout.ms=6000", NULL};
    pid_t pid = spawn_env(argv, NULL, log);
    free(dl);
    return pid;
}

START_TEST(backup_beside_running_stream) {
    char *events = gen_events(1500), *lines = NULL;
    char *cmd = tu_fmt("wc -l <'%s'", events);
    ck_assert_int_eq(tu_run(cmd, &lines), 0);
    long long total = atoll(lines);
    char *a = tu_fmt("%s/A", tmp), *b = tu_fmt("%s/B", tmp), *c = tu_fmt("%s/C", tmp);
    char *log1 = tu_fmt("%s/stream1.log", tmp), *log2 = tu_fmt("%s/stream2.log", tmp);
    /* One event first, so the stream has joined and counted; then the rest
     * slowly (about 3 s), and the backup is taken while it streams. */
    char *first = tu_fmt("%s/first.jsonl", tmp), *rest = tu_fmt("%s/rest.jsonl", tmp);
    char *split = tu_fmt("head -n 1 '%s' >'%s' && tail -n +2 '%s' >'%s'", events, first, events, rest);
    ck_assert_int_eq(tu_run(split, NULL), 0);
    ck_assert_int_eq(run_quiet("'%s' produce --brokers '%s' '%s'", tu_iqp(), broker.bootstrap, first), 0);
    child = start_stream(a, "g1", log1);
    ck_assert_msg(wait_offsets(a, 1, 30000), "the stream counted nothing (log %s)", log1);
    const char *const produce[] = {"iqp", "produce", "--brokers", broker.bootstrap, "--rate", "1000", rest, NULL};
    pid_t producer = spawn_env(produce, NULL, log1);
    int64_t deadline = iqp_mono_ms() + tu_wait_limit_ms(30000);
    while (offsets_sum(a) <= 1 && iqp_mono_ms() < deadline) usleep(50000);
    ck_assert_int_eq(run_quiet("'%s' backup --store '%s' --to '%s'", tu_iqp(), a, b), 0);
    long long at_backup = offsets_sum(b);
    ck_assert_msg(at_backup > 1 && at_backup < total, "backup at %lld of %lld messages: not mid-stream", at_backup,
                  total);
    /* a running writer's store is not replaced */
    ck_assert_int_eq(run_quiet("'%s' restore --from '%s' --store '%s' --force", tu_iqp(), b, a), 1);
    ck_assert_int_eq(tu_stop_pid(producer, 0, tu_wait_limit_ms(60000)), 0);
    ck_assert_msg(wait_offsets(a, total, 60000), "store A stopped at %lld of %lld messages", offsets_sum(a), total);
    ck_assert_int_eq(tu_stop_pid(child, SIGTERM, tu_wait_limit_ms(15000)), 0);
    child = 0;
    /* the backup, restored and streamed on under a new group, ends where A ends */
    ck_assert_int_eq(run_quiet("'%s' restore --from '%s' --store '%s'", tu_iqp(), b, c), 0);
    child = start_stream(c, "g2", log2);
    ck_assert_msg(wait_offsets(c, total, 60000), "store C stopped at %lld of %lld messages", offsets_sum(c), total);
    ck_assert_int_eq(tu_stop_pid(child, SIGTERM, tu_wait_limit_ms(15000)), 0);
    child = 0;
    fprintf(stderr, "backup beside the stream: taken at %lld of %lld messages\n", at_backup, total);
    char *da = dump(a), *dc = dump(c);
    ck_assert_msg(strcmp(da, dc) == 0, "restored + continued store differs from the uninterrupted one");
    free(da), free(dc), free(events), free(lines), free(cmd), free(a), free(b), free(c), free(log1), free(log2);
    free(first), free(rest), free(split);
}
END_TEST

static void teardown_tmp(void) {
    if (tmp) tu_rmrf(tmp);
    free(tmp);
    tmp = NULL;
}

static Suite *ops_suite(void) {
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("systemd");
    tcase_add_checked_fixture(tc, setup_broker, teardown_broker);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, stream_notifies_systemd);
    tcase_add_test(tc, stream_dry_run_checks_and_changes_nothing);
    tcase_add_test(tc, stream_dry_run_checks_repartition_topics);
    tcase_add_test(tc, rules_and_dashboard_use_exported_metrics);
    tcase_add_test(tc, backup_beside_running_stream);
    tcase_add_test(tc, stream_logs_json);
    suite_add_tcase(s, tc);
    tc = tcase_create("config");
    tcase_add_checked_fixture(tc, setup_tmp, teardown_tmp);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, config_check_names_every_problem);
    tcase_add_test(tc, config_check_silent_on_good_files);
    tcase_add_test(tc, config_show_fills_defaults);
    tcase_add_test(tc, backup_restore_roundtrip);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(ops_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

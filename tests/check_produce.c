/* check_produce.c -- `iqp produce` against `iqp devbroker`, read back with
 * a client that is not ours (kcat).
 *
 * Expectations are computed here from the input file, not from what the
 * command reports: every non-empty line arrives exactly once (multiset
 * equality of values), on the topic its "schema" names (anything else on
 * the impressions topic), keyed by its normalized query (or keyless), and
 * every key sits on the partition the Java client's murmur2 partitioner
 * gives it (so one query, one partition). Hand-written lines pin the
 * normalization itself. Also: .zst input, --config's "kafka" object,
 * --rate, SIGTERM while stdin is blocked, bad flags and missing files.
 *
 * Each broker is a child of this test, stopped by pid in the checked
 * teardown, whatever path the test took. */
#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "model/normalize.h"
#include "tests/testutil.h"

#define PARTITIONS 4
#define MAX_RECORDS 20000 /* bound on what one test parses */
#define GEN_START "1717996834567"

enum { TOPIC_IMP = 0, TOPIC_ACT = 1 };
static const char *const topic_names[] = {"ev.imp", "ev.act"};

static tu_broker b;
static char *dir;

static void setup(void) {
    memset(&b, 0, sizeof b);
    dir = tu_mkdtemp("produce");
    ck_assert_ptr_nonnull(dir);
}

static void teardown(void) {
    tu_broker_stop(&b);
    tu_rmrf(dir);
    free(dir);
    dir = NULL;
}

static void start_broker(void) {
    static const char *const args[] = {"--brokers", "2", "--partitions", "4", "--topics",
                                       "ev.imp,ev.act", NULL};
    ck_assert_int_eq(tu_broker_start(&b, args), 0);
    ck_assert_msg(strncmp(b.bootstrap, "127.0.0.1:", 10) == 0, "bootstrap '%s'", b.bootstrap);
}

/* ---- Java-compatible murmur2 (org.apache.kafka.common.utils.Utils) -------- */

static int32_t murmur2(const unsigned char *d, size_t len) {
    const uint32_t m = 0x5bd1e995;
    uint32_t h = 0x9747b28c ^ (uint32_t)len;
    size_t n4 = len / 4;
    for (size_t i = 0; i < n4; i++) {
        uint32_t k = (uint32_t)d[4 * i] | (uint32_t)d[4 * i + 1] << 8 |
                     (uint32_t)d[4 * i + 2] << 16 | (uint32_t)d[4 * i + 3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    const unsigned char *t = d + (len & ~(size_t)3);
    switch (len % 4) {
    case 3: h ^= (uint32_t)t[2] << 16; /* fall through */
    case 2: h ^= (uint32_t)t[1] << 8;  /* fall through */
    case 1: h ^= t[0]; h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}

static int java_partition(const char *key, size_t len) {
    return (int)(((uint32_t)murmur2((const unsigned char *)key, len) & 0x7fffffffu) % PARTITIONS);
}

/* ---- records ------------------------------------------------------------- */

typedef struct rec {
    int topic, partition;          /* partition -1 for expected records */
    const char *key;               /* NULL: no key */
    size_t keylen;
    const char *value;
    size_t vlen;
} rec;

typedef struct recs {
    rec *v;
    size_t n;
    char **owned;                  /* buffers and keys to free */
    size_t n_owned;
} recs;

static void recs_own(recs *r, char *p) {
    r->owned = realloc(r->owned, (r->n_owned + 1) * sizeof *r->owned);
    ck_assert_ptr_nonnull(r->owned);
    r->owned[r->n_owned++] = p;
}

static rec *recs_add(recs *r) {
    ck_assert_msg(r->n < MAX_RECORDS, "more than %d records", MAX_RECORDS);
    r->v = realloc(r->v, (r->n + 1) * sizeof *r->v);
    ck_assert_ptr_nonnull(r->v);
    memset(&r->v[r->n], 0, sizeof r->v[r->n]);
    return &r->v[r->n++];
}

static void recs_free(recs *r) {
    for (size_t i = 0; i < r->n_owned; i++) free(r->owned[i]);
    free(r->owned);
    free(r->v);
    memset(r, 0, sizeof *r);
}

static int bytes_cmp(const char *a, size_t al, const char *b2, size_t bl) {
    int c = memcmp(a, b2, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

static int key_cmp(const rec *x, const rec *y) {
    if (!x->key || !y->key) return (x->key != NULL) - (y->key != NULL);
    return bytes_cmp(x->key, x->keylen, y->key, y->keylen);
}

static int rec_cmp(const void *a, const void *b2) {
    const rec *x = a, *y = b2;
    if (x->topic != y->topic) return x->topic - y->topic;
    int c = bytes_cmp(x->value, x->vlen, y->value, y->vlen);
    return c ? c : key_cmp(x, y);
}

static int rec_key_cmp(const void *a, const void *b2) { return key_cmp(a, b2); }

/* ---- expectations from the input file -------------------------------------- */

typedef struct expect_counts {
    unsigned long imp, act, other;
} expect_counts;

/* The topic and key one line should get, by the rules in produce --help. */
static void expect_line(recs *r, const char *line, size_t len, expect_counts *cnt) {
    rec *e = recs_add(r);
    e->partition = -1;
    e->value = line;
    e->vlen = len;
    e->topic = TOPIC_IMP;
    json_t *root = json_loadb(line, len, JSON_ALLOW_NUL, NULL);
    json_t *schema = json_is_object(root) ? json_object_get(root, "schema") : NULL;
    json_t *q = json_is_object(root) ? json_object_get(root, "query") : NULL;
    const char *s = json_is_string(schema) ? json_string_value(schema) : "";
    if (strcmp(s, "action.v1") == 0) e->topic = TOPIC_ACT;
    if (strcmp(s, "action.v1") == 0) cnt->act++;
    else if (strcmp(s, "impression.v1") == 0) cnt->imp++;
    else cnt->other++;
    char *key;
    size_t keylen;
    if (json_is_string(q) &&
        iqp_normalize_query(json_string_value(q), json_string_length(q), &key, &keylen) == 0) {
        recs_own(r, key);
        if (keylen > 0) {
            e->key = key;
            e->keylen = keylen;
        }
    }
    json_decref(root);
}

/* Every non-empty line of a plain file (a trailing '\r' stripped). */
static void expect_file(recs *r, const char *path, expect_counts *cnt) {
    size_t len;
    char *buf = tu_read_file(path, &len);
    ck_assert_msg(buf != NULL, "cannot read %s", path);
    recs_own(r, buf);
    memset(cnt, 0, sizeof *cnt);
    for (char *p = buf, *end = buf + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n > 0 && p[n - 1] == '\r') n--;
        if (n > 0) expect_line(r, p, n, cnt);
        p += (nl ? (size_t)(nl - p) + 1 : n);
    }
}

/* ---- what the broker holds (kcat) ------------------------------------------- */

/* Parses "%p\t%K\t%S\t" then key and value by their lengths, "\t"/"\n"
 * between; lengths make tabs and odd bytes in values harmless. */
static void consume_topic(recs *r, int topic) {
    char *out = NULL;
    char *cmd = tu_fmt("kcat -C -b '%s' -t %s -e -q -f '%%p\\t%%K\\t%%S\\t%%k\\t%%s\\n'",
                       b.bootstrap, topic_names[topic]);
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    free(cmd);
    recs_own(r, out);
    char *p = out, *end = out + strlen(out);
    while (p < end) {
        rec *x = recs_add(r);
        long klen, vlen;
        char *q;
        x->topic = topic;
        x->partition = (int)strtol(p, &q, 10);
        ck_assert_msg(*q == '\t', "bad kcat output near '%.40s'", p);
        klen = strtol(q + 1, &q, 10);
        ck_assert_msg(*q == '\t', "bad kcat output near '%.40s'", p);
        vlen = strtol(q + 1, &q, 10);
        ck_assert_msg(*q == '\t' && vlen >= 0, "bad kcat output near '%.40s'", p);
        q++;
        if (klen >= 0) {
            x->key = q;
            x->keylen = (size_t)klen;
            q += klen;
        }
        ck_assert_msg(q < end && *q == '\t', "bad key in kcat output near '%.40s'", p);
        x->value = q + 1;
        x->vlen = (size_t)vlen;
        p = q + 1 + vlen;
        ck_assert_msg(p < end && *p == '\n', "bad value in kcat output near '%.40s'", x->value);
        p++;
    }
}

static void consume_all(recs *r) {
    consume_topic(r, TOPIC_IMP);
    consume_topic(r, TOPIC_ACT);
}

/* ---- running produce -------------------------------------------------------- */

/* Runs `iqp produce --brokers B ARGS` (B: 127.0.0.1:1 without a broker);
 * its stderr goes to *err. */
static int produce_args(const char *args, char **err) {
    char *errpath = tu_fmt("%s/produce.err", dir);
    char *cmd = tu_fmt("%s produce --brokers '%s' %s 2>'%s' </dev/null", tu_iqp(),
                       b.bootstrap[0] ? b.bootstrap : "127.0.0.1:1", args, errpath);
    int rc = tu_run(cmd, NULL);
    *err = tu_read_file(errpath, NULL);
    ck_assert_ptr_nonnull(*err);
    free(cmd);
    free(errpath);
    return rc;
}

/* The same, to this test's topics. */
static int produce(const char *extra, char **err) {
    char *args = tu_fmt("--impressions-topic ev.imp --actions-topic ev.act %s", extra);
    int rc = produce_args(args, err);
    free(args);
    return rc;
}

/* Runs a produce that must fail with rc; stderr must contain want. */
static void produce_fails(const char *extra, int rc, const char *want) {
    char *err;
    int got = produce(extra, &err);
    ck_assert_msg(got == rc, "exit %d, want %d; stderr: %s", got, rc, err);
    ck_assert_msg(strstr(err, want) != NULL, "stderr lacks '%s': %s", want, err);
    ck_assert_msg(strncmp(err, "iqp produce: ", 13) == 0, "stderr: %s", err);
    free(err);
}

static void gen(const char *out, int impressions) {
    char *cmd = tu_fmt("%s gen --seed 7 --impressions %d --start " GEN_START " --out '%s' 2>/dev/null",
                       tu_iqp(), impressions, out);
    ck_assert_int_eq(tu_run(cmd, NULL), 0);
    free(cmd);
}

/* The summary line names the counts computed from the input. */
static void check_summary(const char *err, size_t n, const expect_counts *c) {
    char *want = tu_fmt("iqp produce: %zu lines (impressions %lu, actions %lu, other %lu) to %s in ",
                        n, c->imp, c->act, c->other, b.bootstrap);
    ck_assert_msg(strstr(err, want) != NULL, "want '%s' in stderr: %s", want, err);
    ck_assert_msg(strstr(err, " s, 0 failed\n") != NULL, "stderr: %s", err);
    free(want);
}

/* Multiset equality of (topic, value, key); partitions by murmur2; one
 * partition per key. */
static void check_delivery(recs *want, recs *got) {
    ck_assert_uint_eq(got->n, want->n);
    qsort(want->v, want->n, sizeof *want->v, rec_cmp);
    qsort(got->v, got->n, sizeof *got->v, rec_cmp);
    for (size_t i = 0; i < want->n; i++) {
        const rec *w = &want->v[i], *g = &got->v[i];
        ck_assert_msg(w->topic == g->topic && bytes_cmp(w->value, w->vlen, g->value, g->vlen) == 0,
                      "message %zu: want %s '%.*s', got %s '%.*s'", i, topic_names[w->topic],
                      (int)w->vlen, w->value, topic_names[g->topic], (int)g->vlen, g->value);
        ck_assert_msg(key_cmp(w, g) == 0, "'%.*s': key '%.*s', want '%.*s'", (int)g->vlen, g->value,
                      (int)g->keylen, g->key ? g->key : "", (int)w->keylen, w->key ? w->key : "");
        if (g->key)
            ck_assert_msg(g->partition == java_partition(g->key, g->keylen),
                          "key '%.*s' on partition %d, murmur2 says %d", (int)g->keylen, g->key,
                          g->partition, java_partition(g->key, g->keylen));
        ck_assert(g->partition >= 0 && g->partition < PARTITIONS);
    }
    qsort(got->v, got->n, sizeof *got->v, rec_key_cmp);
    for (size_t i = 1; i < got->n; i++)
        if (got->v[i].key && key_cmp(&got->v[i - 1], &got->v[i]) == 0)
            ck_assert_int_eq(got->v[i - 1].partition, got->v[i].partition);
}

/* Finds the one message with this value; returns it. */
static const rec *find_value(const recs *r, const char *value) {
    const rec *hit = NULL;
    for (size_t i = 0; i < r->n; i++)
        if (bytes_cmp(r->v[i].value, r->v[i].vlen, value, strlen(value)) == 0) {
            ck_assert_msg(hit == NULL, "'%s' arrived twice", value);
            hit = &r->v[i];
        }
    ck_assert_msg(hit != NULL, "'%s' did not arrive", value);
    return hit;
}

static void assert_key(const rec *x, const char *key) {
    if (!key) {
        ck_assert_msg(x->key == NULL, "'%.*s' has key '%.*s'", (int)x->vlen, x->value,
                      (int)x->keylen, x->key);
        return;
    }
    ck_assert_msg(x->key && x->keylen == strlen(key) && memcmp(x->key, key, x->keylen) == 0,
                  "'%.*s': key '%.*s', want '%s'", (int)x->vlen, x->value, (int)x->keylen,
                  x->key ? x->key : "(none)", key);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

/* ---- tests ------------------------------------------------------------------ */

START_TEST(murmur2_matches_kafka_vectors) {
    /* org.apache.kafka.common.utils.UtilsTest#testMurmur2 */
    static const struct { const char *s; int32_t h; } v[] = {
        {"21", -973932308},
        {"foobar", -790332482},
        {"a-little-bit-long-string", -985981536},
        {"a-little-bit-longer-string", -1486304829},
        {"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
        {"abc", 479470107},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        ck_assert_int_eq(murmur2((const unsigned char *)v[i].s, strlen(v[i].s)), v[i].h);
}
END_TEST

START_TEST(generated_traffic_arrives_exactly_once_on_its_topic) {
    start_broker();
    char *path = tu_fmt("%s/traffic.jsonl", dir), *arg = tu_fmt("'%s'", path), *err;
    gen(path, 2000);
    recs want = {0}, got = {0};
    expect_counts c;
    expect_file(&want, path, &c);
    ck_assert_uint_gt(want.n, 4000);
    ck_assert_uint_gt(c.other, 0); /* gen plants malformed lines */
    ck_assert_int_eq(produce(arg, &err), 0);
    check_summary(err, want.n, &c);
    consume_all(&got);
    check_delivery(&want, &got);
    free(err);
    free(arg);
    free(path);
    recs_free(&want);
    recs_free(&got);
    ck_assert_int_eq(tu_broker_stop(&b), 0);
}
END_TEST

START_TEST(zstd_input) {
    start_broker();
    char *plain = tu_fmt("%s/t.jsonl", dir), *zst = tu_fmt("%s/t.jsonl.zst", dir);
    char *arg = tu_fmt("'%s'", zst), *err;
    gen(plain, 300); /* same flags: byte-identical content */
    gen(zst, 300);
    size_t zlen;
    char *z = tu_read_file(zst, &zlen);
    ck_assert_msg(z && zlen > 4 && memcmp(z, "\x28\xb5\x2f\xfd", 4) == 0, "%s is not zstd", zst);
    free(z);
    recs want = {0}, got = {0};
    expect_counts c;
    expect_file(&want, plain, &c);
    ck_assert_int_eq(produce(arg, &err), 0);
    check_summary(err, want.n, &c);
    consume_all(&got);
    check_delivery(&want, &got);
    free(err);
    free(arg);
    free(plain);
    free(zst);
    recs_free(&want);
    recs_free(&got);
    ck_assert_int_eq(tu_broker_stop(&b), 0);
}
END_TEST

/* Hand-checked keys, topics for odd lines, and --config's "kafka" object. */
START_TEST(keys_are_normalized_queries) {
    static const char *const lines[] = {
        "{\"schema\":\"impression.v1\",\"event_id\":\"a\",\"query\":\"  Red  SHOES \"}",
        "{\"schema\":\"action.v1\",\"event_id\":\"b\",\"query\":\"red shoes\"}",
        "{\"schema\":\"impression.v1\",\"event_id\":\"c\",\"query\":\"\\uff23\\uff21\\uff26\\u00c9\\tAu \\u3000Lait\"}",
        "{\"schema\":\"impression.v9\",\"event_id\":\"d\",\"query\":\"Lamp\"}",
        "{\"schema\":\"action.v1\",\"event_id\":\"e\",\"query\":\" \\t \"}",
        "{\"schema\":\"action.v1\",\"event_id\":\"f\",\"query\":5}",
        "[{\"schema\":\"action.v1\",\"query\":\"red shoes\"}]",
        "GET /search?q=red+shoes HTTP/1.1",
        "{\"schema\":\"action.v1\",\"event_id\":\"g\",\"query\":\"RED SHOES\"",
    };
    static const struct { int topic; const char *key; } want[] = {
        {TOPIC_IMP, "red shoes"}, {TOPIC_ACT, "red shoes"}, {TOPIC_IMP, "caf\xc3\xa9 au lait"},
        {TOPIC_IMP, "lamp"},      {TOPIC_ACT, NULL},        {TOPIC_ACT, NULL},
        {TOPIC_IMP, NULL},        {TOPIC_IMP, NULL},        {TOPIC_IMP, NULL},
    };
    const size_t n = sizeof lines / sizeof lines[0];
    start_broker();
    char *path = tu_fmt("%s/hand.jsonl", dir), *cfg = tu_fmt("%s/iqp.json", dir), *err;
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (size_t i = 0; i < n; i++) fprintf(f, "%s\n%s", lines[i], i == 3 ? "\n\r\n" : "");
    ck_assert_int_eq(fclose(f), 0);
    /* flags win over the config's topics; integer kafka values are taken */
    write_file(cfg, "{\"stream\": {\"impressions_topic\": \"nope.imp\", \"actions_topic\": \"nope.act\"},\n"
                    " \"kafka\": {\"client.id\": \"check-produce\", \"linger.ms\": 0}}\n");
    char *arg = tu_fmt("--config '%s' '%s'", cfg, path);
    ck_assert_int_eq(produce(arg, &err), 0);
    ck_assert_ptr_nonnull(strstr(err, "9 lines (impressions 2, actions 3, other 4)"));
    recs got = {0};
    consume_all(&got);
    ck_assert_uint_eq(got.n, n);
    for (size_t i = 0; i < n; i++) {
        const rec *x = find_value(&got, lines[i]);
        ck_assert_msg(x->topic == want[i].topic, "'%s' on %s", lines[i], topic_names[x->topic]);
        assert_key(x, want[i].key);
    }
    const rec *a = find_value(&got, lines[0]), *b2 = find_value(&got, lines[1]);
    ck_assert_int_eq(a->partition, b2->partition);
    ck_assert_int_eq(a->partition, java_partition("red shoes", 9));
    recs_free(&got);
    free(err);
    free(arg);
    free(cfg);
    free(path);
    ck_assert_int_eq(tu_broker_stop(&b), 0);
}
END_TEST

/* SIGTERM while the command waits on an open, silent stdin: what it read is
 * delivered, the summary is printed, exit 130. */
START_TEST(sigterm_stops_a_blocked_stdin_read) {
    static const char input[] = "{\"schema\":\"impression.v1\",\"query\":\"one\"}\n"
                                "{\"schema\":\"action.v1\",\"query\":\"two\"}\n"
                                "not json\n";
    start_broker();
    char *errpath = tu_fmt("%s/sig.err", dir);
    int fds[2];
    ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int efd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fds[0], STDIN_FILENO);
        dup2(efd, STDERR_FILENO);
        execl(tu_iqp(), "iqp", "produce", "--brokers", b.bootstrap, "--impressions-topic", "ev.imp",
              "--actions-topic", "ev.act", (char *)NULL);
        _exit(127);
    }
    ck_assert_int_gt(pid, 0);
    close(fds[0]);
    ck_assert_int_eq(write(fds[1], input, sizeof input - 1), (ssize_t)(sizeof input - 1));
    /* wait (bounded) until all three are readable from the broker */
    recs got = {0};
    for (int tries = 0; tries < 50 && got.n < 3; tries++) {
        recs_free(&got);
        consume_all(&got);
        if (got.n < 3) usleep(200000);
    }
    int rc = tu_stop_pid(pid, SIGTERM, 15000);
    close(fds[1]);
    ck_assert_int_eq(rc, 130);
    ck_assert_uint_eq(got.n, 3);
    assert_key(find_value(&got, "{\"schema\":\"action.v1\",\"query\":\"two\"}"), "two");
    ck_assert_int_eq(find_value(&got, "not json")->topic, TOPIC_IMP);
    char *err = tu_read_file(errpath, NULL);
    ck_assert_ptr_nonnull(err);
    ck_assert_msg(strstr(err, "iqp produce: 3 lines (impressions 1, actions 1, other 1)") &&
                      strstr(err, ", 0 failed\n"),
                  "stderr: %s", err);
    free(err);
    free(errpath);
    recs_free(&got);
    ck_assert_int_eq(tu_broker_stop(&b), 0);
}
END_TEST

/* --rate 40 over 20 lines: the last one may not leave before 19/40 s.
 * Topics and properties from a config shaped like the stream processor's. */
START_TEST(rate_paces_lines) {
    start_broker();
    char *path = tu_fmt("%s/rate.jsonl", dir), *cfg = tu_fmt("%s/stream.json", dir), *err;
    char *arg = tu_fmt("--rate 40 --config '%s' '%s'", cfg, path);
    /* the stream processor's config: its topics, consumer properties (ignored
     * by a producer), a bootstrap.servers that --brokers overrides */
    write_file(cfg, "{\"stream\": {\"store\": \"s\", \"impressions_topic\": \"ev.imp\",\n"
                    "             \"actions_topic\": \"ev.act\", \"flush_ms\": 500},\n"
                    " \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:1\", \"group.id\": \"g\",\n"
                    "           \"session.timeout.ms\": 10000, \"enable.auto.commit\": false},\n"
                    " \"flush_events\": 1000}\n");
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 20; i++) fprintf(f, "{\"schema\":\"action.v1\",\"query\":\"q%d\"}\n", i);
    ck_assert_int_eq(fclose(f), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(produce_args(arg, &err), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    ck_assert_msg(secs >= 0.47, "20 lines at 40/s took %.3f s", secs);
    const char *in = strstr(err, " in ");
    ck_assert_msg(in && strtod(in + 4, NULL) >= 0.47, "stderr: %s", err);
    recs got = {0};
    consume_all(&got);
    ck_assert_uint_eq(got.n, 20);
    for (size_t i = 0; i < got.n; i++) ck_assert_int_eq(got.v[i].topic, TOPIC_ACT);
    recs_free(&got);
    free(err);
    free(arg);
    free(cfg);
    free(path);
    ck_assert_int_eq(tu_broker_stop(&b), 0);
}
END_TEST

START_TEST(bad_usage_exits_2) {
    char *cmd = tu_fmt("%s produce x.jsonl 2>&1", tu_iqp()), *out;
    ck_assert_int_eq(tu_run(cmd, &out), 2);
    ck_assert_msg(strstr(out, "iqp produce: --brokers") != NULL, "%s", out);
    free(cmd);
    free(out);
    produce_fails("--rate fast", 2, "--rate");
    produce_fails("--rate -3", 2, "--rate");
    produce_fails("--property linger.ms", 2, "NAME=VALUE");
    produce_fails("--property =5", 2, "NAME=VALUE");
    produce_fails("--property no.such.property=1", 2, "no.such.property");
    produce_fails("--property linger.ms=soon", 2, "linger.ms");
    produce_fails("--no-such-flag", 2, "iqp produce:");
    char *cfg = tu_fmt("%s/bad.json", dir), *arg = tu_fmt("--config '%s'", cfg);
    write_file(cfg, "{\"kafka\": {\"not.a.kafka.property\": \"1\"}}");
    produce_fails(arg, 2, "not.a.kafka.property");
    write_file(cfg, "{\"kafka\": {\"linger.ms\": [5]}}");
    produce_fails(arg, 2, "linger.ms");
    write_file(cfg, "{\"stream\": {\"impressions_topic\": 7}}");
    produce_fails(arg, 2, "impressions_topic");
    write_file(cfg, "{\"kafak\": {}}");
    produce_fails(arg, 2, "kafak");
    free(arg);
    free(cfg);
    cmd = tu_fmt("%s produce --help", tu_iqp());
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    ck_assert_ptr_nonnull(strstr(out, "murmur2_random"));
    free(cmd);
    free(out);
}
END_TEST

/* Checked before anything is produced: no broker is needed to see it. */
START_TEST(missing_input_exits_1_naming_it) {
    char *ok = tu_fmt("%s/ok.jsonl", dir), *missing = tu_fmt("%s/missing.jsonl", dir);
    write_file(ok, "{\"schema\":\"impression.v1\",\"query\":\"q\"}\n");
    char *arg = tu_fmt("'%s' '%s'", ok, missing);
    produce_fails(arg, 1, missing);
    free(arg);
    free(ok);
    free(missing);
}
END_TEST

int main(void) {
    Suite *s = suite_create("produce");
    TCase *tc = tcase_create("kcat");
    tcase_set_timeout(tc, 90);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, murmur2_matches_kafka_vectors);
    tcase_add_test(tc, generated_traffic_arrives_exactly_once_on_its_topic);
    tcase_add_test(tc, zstd_input);
    tcase_add_test(tc, keys_are_normalized_queries);
    tcase_add_test(tc, sigterm_stops_a_blocked_stdin_read);
    tcase_add_test(tc, rate_paces_lines);
    tcase_add_test(tc, bad_usage_exits_2);
    tcase_add_test(tc, missing_input_exits_1_naming_it);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

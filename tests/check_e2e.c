/* check_e2e.c -- end to end: iqp gen -> iqp backfill -> iqp lookup, checked
 * value by value against an independent brute-force count (tests/oracle.c).
 *
 * Design
 * ------
 * An unchecked fixture (run once, in the parent process) generates two logs
 * for consecutive 36 h spans with different seeds, the second one also as
 * .zst (gen is deterministic, so the plain twin holds the same bytes),
 * backfills the plain first file and the .zst second file into a store,
 * feeds the plain twins to the oracle in the same order, and picks the
 * lookup contexts. It records a failure in setup_error instead of asserting,
 * so that every test reports it.
 *
 * The tests, in the order they run:
 *   gen_deterministic   same flags give identical bytes; the logs hold
 *                       malformed lines, redeliveries and repeated actions.
 *   lookup_vs_oracle    every value of ~150 contexts x 3 as-of times
 *                       (the watermark, the next hour, the next day) equals
 *                       the oracle's; outputs are saved for later tests.
 *                       A context asks for the items seen under its query
 *                       (at most MAX_CALL_ITEMS: the most frequent and the
 *                       RARE_ITEMS rarest) plus two never seen.
 *   deadletter          one record per line the oracle rejects, at the same
 *                       (source, line), each with a non-empty reason.
 *   feature_filter      --feature, and skipping features whose context
 *                       needs a country or gender that was not given.
 *   rule_cases          small hand-written logs, each in its own store,
 *                       aimed at one rule each (watermark, retention and
 *                       moves, normalization and decoding), compared with
 *                       the oracle like lookup_vs_oracle.
 *   stdin_input         gen | backfill - gives byte-identical lookups.
 *   backfill_again      a second backfill of the same files changes no
 *                       lookup output, byte for byte (every context as of
 *                       the watermark, every fifth at the later times);
 *                       nor does the same events' file under another
 *                       content identity (dedup markers, not file skip).
 *   backfill_killed_and_resumed
 *                       SIGINT, then kill -9 twice, mid-backfill; run again:
 *                       byte-identical outputs to the uninterrupted store.
 *   flush_size_invariance
 *                       a 30-day log, time-ordered and shuffled (repeats
 *                       far behind the watermark, dedup markers forgotten
 *                       under rule 7), backfilled with flush sizes 1, 997
 *                       and 200000: byte-identical lookups, `iqp refresh
 *                       --dump` output and dead letters, equal `iqp stats
 *                       --compact` cell counts, and the oracle's values.
 *   thread_count_invariance
 *                       the same checks for --threads 1, 2, 3 and 4
 *                       (counting sharded by context key), at flush sizes
 *                       that end batches mid-way, every event, and never,
 *                       on a larger shuffled log.
 *
 * Every command goes through /bin/sh, so each argument is single-quoted.
 */
#include <check.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "tests/oracle.h"
#include "tests/testutil.h"

#define HOUR_MS 3600000LL
#define DAY_MS 86400000LL

#ifndef IMPRESSIONS
#define IMPRESSIONS 15000
#endif
#define SEED1 20250101
#define SEED2 20250102
#define START_MS 1717996834567LL            /* 2024-06-10, not on a bucket edge */
#define SPAN_MS (36 * HOUR_MS)
#define GEN_FLAGS "--span 36h --disorder 2m"

#define N_AS_OF 3
#define MAX_CONTEXTS 160
#ifndef TOP_QUERIES
#define TOP_QUERIES 12
#endif
#define MAX_CALL_ITEMS 150                  /* items per lookup call, cap */
#define RARE_ITEMS 30                       /* of which the rarest */
#define N_KEYS (4 + 2 * ORACLE_N_COUNTERS + 1)

static const char *const counter_names[ORACLE_N_COUNTERS] = {
    "impression", "engaged", "click", "save", "closeup", "long_click", "download",
    "screenshot"};

/* One lookup context: normalized values, and the spellings passed to iqp. */
typedef struct context {
    char *query, *query_arg;
    const char *country, *country_arg;  /* NULL: not given */
    char *own;                          /* country_arg when malloc'd */
    const char *gender, *gender_arg;    /* NULL: not given */
    const char **items;                 /* known items, then unknown ones */
    size_t n_items;
} context;

static char *setup_error;
static char *tmp, *store, *plain1, *plain2, *zst2, *deadletter;
static oracle *orc;
static int64_t as_of[N_AS_OF];
static context contexts[MAX_CONTEXTS];
static size_t n_contexts;

/* ------------------------------------------------------------------------ */
/* Small helpers.                                                           */
/* ------------------------------------------------------------------------ */

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...) {
    va_list ap;
    char *s;
    va_start(ap, f);
    if (vasprintf(&s, f, ap) < 0) abort();
    va_end(ap);
    return s;
}

/* Appends s to the stream, single-quoted for /bin/sh. */
static void put_arg(FILE *cmd, const char *s) {
    fputs(" '", cmd);
    for (; *s; s++) {
        if (*s == '\'') fputs("'\\''", cmd);
        else fputc(*s, cmd);
    }
    fputc('\'', cmd);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t floor_to(int64_t t, int64_t g) { return t / g * g; }

static int run_ok(const char *cmd) {
    int rc = tu_run(cmd, NULL);
    if (rc != 0) fprintf(stderr, "e2e: exit %d: %s\n", rc, cmd);
    return rc == 0;
}

static int same_file(const char *a, const char *b) {
    size_t la, lb;
    char *x = tu_read_file(a, &la), *y = tu_read_file(b, &lb);
    int same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

/* ------------------------------------------------------------------------ */
/* Running iqp.                                                             */
/* ------------------------------------------------------------------------ */

static char *gen_cmd(int seed, int64_t start, const char *out) {
    char *s = fmt("%s gen --seed %d --impressions %d --start %" PRId64 " " GEN_FLAGS, tu_iqp(),
                  seed, IMPRESSIONS, start);
    if (!out) return s;
    char *t = fmt("%s --out '%s'", s, out);
    free(s);
    return t;
}

static int gen(int seed, int64_t start, const char *out) {
    char *cmd = gen_cmd(seed, start, out);
    int ok = run_ok(cmd);
    free(cmd);
    return ok;
}

static int backfill(const char *dir, const char *dl) {
    char *cmd = fmt("%s backfill --store '%s'%s%s%s '%s' '%s'", tu_iqp(), dir,
                    dl ? " --dead-letter '" : "", dl ? dl : "", dl ? "'" : "", plain1, zst2);
    int ok = run_ok(cmd);
    free(cmd);
    return ok;
}

/* Flags of a lookup; features: NULL-terminated --feature list, or NULL. */
typedef struct lookup_req {
    const char *dir;
    const context *ctx;
    int64_t as_of;
    const char *const *features;
    const oracle *model;            /* NULL: the fixture's oracle */
} lookup_req;

static char *lookup_cmd(const lookup_req *r) {
    char *buf = NULL;
    size_t len = 0;
    FILE *cmd = open_memstream(&buf, &len);
    int dash = 0;

    fprintf(cmd, "%s lookup --store", tu_iqp());
    put_arg(cmd, r->dir);
    fputs(" --query", cmd);
    put_arg(cmd, r->ctx->query_arg);
    if (r->ctx->country_arg) { fputs(" --country", cmd); put_arg(cmd, r->ctx->country_arg); }
    if (r->ctx->gender_arg) { fputs(" --gender", cmd); put_arg(cmd, r->ctx->gender_arg); }
    fprintf(cmd, " --as-of %" PRId64, r->as_of);
    for (size_t i = 0; r->features && r->features[i]; i++) {
        fputs(" --feature", cmd);
        put_arg(cmd, r->features[i]);
    }
    for (size_t i = 0; i < r->ctx->n_items; i++) dash |= r->ctx->items[i][0] == '-';
    if (dash) fputs(" --", cmd);
    for (size_t i = 0; i < r->ctx->n_items; i++) put_arg(cmd, r->ctx->items[i]);
    fclose(cmd);
    return buf;
}

/* Runs a lookup; returns its output (malloc'd) or NULL when it failed. */
static char *lookup(const lookup_req *r) {
    char *cmd = lookup_cmd(r), *out = NULL;
    int rc = tu_run(cmd, &out);
    if (rc != 0) {
        fprintf(stderr, "e2e: lookup exit %d: %.300s\n", rc, cmd);
        free(out);
        out = NULL;
    }
    free(cmd);
    return out;
}

/* ------------------------------------------------------------------------ */
/* Comparing one lookup output with the oracle.                             */
/* ------------------------------------------------------------------------ */

typedef struct tally {
    uint64_t lines, values, mismatches;
} tally;

static void mismatch(tally *t, const lookup_req *r, size_t line, const char *what, ...)
    __attribute__((format(printf, 4, 5)));
static void mismatch(tally *t, const lookup_req *r, size_t line, const char *what, ...) {
    va_list ap;
    if (t->mismatches++ >= 20) return;
    fprintf(stderr, "e2e: MISMATCH query='%s' country=%s gender=%s as_of=%" PRId64
                    " line %zu: ",
            r->ctx->query, r->ctx->country ? r->ctx->country : "-",
            r->ctx->gender ? r->ctx->gender : "-", r->as_of, line);
    va_start(ap, what);
    vfprintf(stderr, what, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int feature_wanted(const lookup_req *r, int f) {
    if (!r->features) return 1;
    for (size_t i = 0; r->features[i]; i++)
        if (strcmp(r->features[i], oracle_feature_names[f]) == 0) return 1;
    return 0;
}

static const char *dim_value(const context *c, const char *dim) {
    if (strcmp(dim, "query") == 0) return c->query;
    return strcmp(dim, "country") == 0 ? c->country : c->gender;
}

static void check_context(tally *t, const lookup_req *r, size_t ln, json_t *ctx, int f) {
    static const char *const dims[3] = {"query", "country", "gender"};
    size_t want = 0;
    if (!json_is_object(ctx)) { mismatch(t, r, ln, "context is not an object"); return; }
    for (int d = 0; d < 3; d++) {
        json_t *v = json_object_get(ctx, dims[d]);
        if (!(oracle_feature_dims[f] & (1u << d))) {
            if (v) mismatch(t, r, ln, "context has %s", dims[d]);
            continue;
        }
        want++;
        t->values++;
        if (!json_is_string(v) || strcmp(json_string_value(v), dim_value(r->ctx, dims[d])))
            mismatch(t, r, ln, "context.%s is not '%s'", dims[d], dim_value(r->ctx, dims[d]));
    }
    if (json_object_size(ctx) != want) mismatch(t, r, ln, "context has extra keys");
}

static void check_int(tally *t, const lookup_req *r, size_t ln, json_t *obj, const char *key,
                      int64_t want) {
    json_t *v = json_object_get(obj, key);
    t->values++;
    if (!json_is_integer(v)) mismatch(t, r, ln, "%s is not an integer", key);
    else if (json_integer_value(v) != want)
        mismatch(t, r, ln, "%s = %" JSON_INTEGER_FORMAT ", oracle %" PRId64, key,
                 json_integer_value(v), want);
}

static void check_rate(tally *t, const lookup_req *r, size_t ln, json_t *obj, const char *key,
                       int64_t count, int64_t context_count) {
    json_t *v = json_object_get(obj, key);
    double want = context_count ? (double)count / (double)context_count : 0.0;
    t->values++;
    if (!json_is_real(v)) mismatch(t, r, ln, "%s is not a real", key);
    else if (json_real_value(v) != want)
        mismatch(t, r, ln, "%s = %.17g, oracle %.17g", key, json_real_value(v), want);
}

static void check_line(tally *t, const lookup_req *r, size_t ln, json_t *obj, int f, int w,
                       size_t i, const oracle_counts *c) {
    json_t *v;
    char key[64];
    if (!json_is_object(obj)) { mismatch(t, r, ln, "not a JSON object"); return; }
    if (json_object_size(obj) != N_KEYS)
        mismatch(t, r, ln, "%zu keys, want %d", json_object_size(obj), N_KEYS);
    v = json_object_get(obj, "feature");
    if (!json_is_string(v) || strcmp(json_string_value(v), oracle_feature_names[f]))
        mismatch(t, r, ln, "feature is not %s", oracle_feature_names[f]);
    v = json_object_get(obj, "window");
    if (!json_is_string(v) || strcmp(json_string_value(v), oracle_window_names[w]))
        mismatch(t, r, ln, "window is not %s", oracle_window_names[w]);
    v = json_object_get(obj, "item");
    if (!json_is_string(v) || strcmp(json_string_value(v), r->ctx->items[i]))
        mismatch(t, r, ln, "item is not '%s'", r->ctx->items[i]);
    check_context(t, r, ln, json_object_get(obj, "context"), f);
    check_int(t, r, ln, obj, "context_count", c->context_count);
    for (int k = 0; k < ORACLE_N_COUNTERS; k++) {
        check_int(t, r, ln, obj, counter_names[k], c->c[k]);
        snprintf(key, sizeof key, "iqp_%s", counter_names[k]);
        check_rate(t, r, ln, obj, key, c->c[k], c->context_count);
    }
    t->values += 3;
    t->lines++;
}

/* Compares an output with the oracle: lines in (feature, window, item)
 * order, for the applicable and requested features only. */
static void compare(tally *t, const lookup_req *r, const char *output) {
    const context *c = r->ctx;
    size_t n = (size_t)ORACLE_N_FEATURES * ORACLE_N_WINDOWS * c->n_items, ln = 0;
    oracle_counts *want = malloc((n + 1) * sizeof *want);
    int applicable[ORACLE_N_FEATURES];
    const char *p = output;

    oracle_lookup(r->model ? r->model : orc, c->query, c->country, c->gender, r->as_of,
                  c->items, c->n_items, applicable, want);
    for (int f = 0; f < ORACLE_N_FEATURES; f++) {
        if (!applicable[f] || !feature_wanted(r, f)) continue;
        for (int w = 0; w < ORACLE_N_WINDOWS; w++)
            for (size_t i = 0; i < c->n_items; i++) {
                const char *nl = strchr(p, '\n');
                json_error_t err;
                json_t *obj;
                ln++;
                if (!*p) { mismatch(t, r, ln, "output ends early"); goto done; }
                obj = json_loadb(p, nl ? (size_t)(nl - p) : strlen(p), 0, &err);
                if (!obj) mismatch(t, r, ln, "bad JSON: %s", err.text);
                else check_line(t, r, ln, obj, f, w, i, &want[(size_t)(f * ORACLE_N_WINDOWS + w) * c->n_items + i]);
                json_decref(obj);
                p = nl ? nl + 1 : p + strlen(p);
            }
    }
    if (*p) mismatch(t, r, ln + 1, "more lines than the %zu expected", ln);
done:
    free(want);
}

/* ------------------------------------------------------------------------ */
/* Choosing contexts.                                                       */
/* ------------------------------------------------------------------------ */

/* A spelling variant of a normalized query: ASCII upper case and doubled,
 * padded spaces. Falls back to the query itself when the variant would not
 * normalize back to it. */
static char *query_variant(const char *q) {
    size_t n = strlen(q);
    char *v = malloc(3 * n + 8), *p = v, *back;
    p += sprintf(p, "  ");
    for (const char *s = q; *s; s++) {
        if (*s == ' ') *p++ = '\t';
        *p++ = (*s >= 'a' && *s <= 'z') ? (char)(*s - 32) : *s;
    }
    sprintf(p, " \t");
    back = oracle_norm_query(v, strlen(v));
    if (!back || strcmp(back, q) != 0) { free(v); v = strdup(q); }
    free(back);
    return v;
}

static const char *gender_spelling(const char *g, size_t k) {
    static const char *const female[] = {"female", "F", " Woman "};
    static const char *const male[] = {"male", "M", "MAN"};
    static const char *const unknown[] = {"unknown", "x", "Unknown"};
    if (strcmp(g, "female") == 0) return female[k % 3];
    if (strcmp(g, "male") == 0) return male[k % 3];
    return unknown[k % 3];
}

static char *lower_dup(const char *s) {
    char *d = strdup(s);
    for (char *p = d; *p; p++)
        if (*p >= 'A' && *p <= 'Z') *p = (char)(*p + 32);
    return d;
}

/* The items seen under q (when there are more than MAX_CALL_ITEMS, the most
 * frequent ones and the RARE_ITEMS rarest), then two never seen. */
static void context_items(context *c, size_t k) {
    size_t n, all;
    const char *const *known = oracle_query_items(orc, c->query, &all);
    n = all > MAX_CALL_ITEMS ? MAX_CALL_ITEMS : all;
    c->items = malloc((n + 2) * sizeof *c->items);
    for (size_t i = 0; i < n; i++)
        c->items[i] = n == all || i < n - RARE_ITEMS ? known[i] : known[all - (n - i)];
    c->items[n] = fmt("e2e-unknown-item-%zu", k);
    c->items[n + 1] = fmt("%zu", (size_t)987654321000 + k);
    c->n_items = n + 2;
}

static void add_context(const char *query, const char *country, const char *gender) {
    size_t k = n_contexts;
    context *c = &contexts[n_contexts++];
    c->query = strdup(query);
    c->query_arg = k % 3 == 1 ? query_variant(query) : strdup(query);
    c->country = country;
    if (country && strcmp(country, "ZZ") == 0) c->country_arg = k % 2 ? "zz" : "Atlantis";
    else c->country_arg = c->own = country ? lower_dup(country) : NULL;
    c->gender = gender;
    c->gender_arg = gender ? gender_spelling(gender, k) : NULL;
    context_items(c, k);
}

static void choose_contexts(void) {
    static const char *const genders[3] = {"female", "male", "unknown"};
    const char *countries[3] = {NULL, NULL, "ZZ"};
    size_t nq = oracle_n_queries(orc), top = nq < TOP_QUERIES ? nq : TOP_QUERIES;

    for (size_t i = 0, j = 0; i < oracle_n_countries(orc) && j < 2; i++) {
        const char *cc = oracle_country(orc, i, NULL);
        if (strcmp(cc, "ZZ") != 0) countries[j++] = cc;
    }
    for (size_t q = 0; q < top; q++)
        for (int c = 0; c < 3; c++)
            for (int g = 0; g < 3; g++)
                if (countries[c]) add_context(oracle_query(orc, q, NULL), countries[c], genders[g]);
    /* The long tail: evenly spread, some without a country or a gender. */
    for (size_t k = 0; nq > top && n_contexts < MAX_CONTEXTS - 10 && k < 40; k++) {
        size_t q = top + (nq - top - 1) * k / 39;
        const char *cc = k % 5 == 4 ? NULL : countries[k % 3] ? countries[k % 3] : "ZZ";
        const char *g = k % 7 == 6 ? NULL : genders[k % 3];
        add_context(oracle_query(orc, q, NULL), cc, g);
    }
}

/* ------------------------------------------------------------------------ */
/* The fixture.                                                             */
/* ------------------------------------------------------------------------ */

static void fail_setup(const char *what) {
    if (!setup_error) setup_error = fmt("e2e setup: %s", what);
}

static void print_stats(void) {
    oracle_stats s = oracle_get_stats(orc);
    fprintf(stderr,
            "e2e: oracle: %" PRIu64 " lines, %" PRIu64 " invalid, %" PRIu64 " duplicate, %" PRIu64
            " late, %" PRIu64 " impressions, %" PRIu64 " actions (%" PRIu64 " moves), "
            "%zu queries, watermark %" PRId64 ", %zu contexts\n",
            s.lines, s.invalid, s.duplicate, s.late, s.impressions, s.actions, s.moved,
            oracle_n_queries(orc), oracle_watermark(orc), n_contexts);
}

static void e2e_setup(void) {
    int64_t t0 = now_ms();
    if (!(tmp = tu_mkdtemp("e2e"))) { fail_setup("cannot create a temp dir"); return; }
    store = fmt("%s/store", tmp);
    plain1 = fmt("%s/a.jsonl", tmp);
    plain2 = fmt("%s/b.jsonl", tmp);
    zst2 = fmt("%s/b.jsonl.zst", tmp);
    deadletter = fmt("%s/dead.jsonl", tmp);
    if (!gen(SEED1, START_MS, plain1) || !gen(SEED2, START_MS + SPAN_MS, plain2) ||
        !gen(SEED2, START_MS + SPAN_MS, zst2)) {
        fail_setup("iqp gen failed");
        return;
    }
    if (!backfill(store, deadletter)) { fail_setup("iqp backfill failed"); return; }
    orc = oracle_new(now_ms());
    if (oracle_load_file(orc, plain1) < 0 || oracle_load_file(orc, plain2) < 0) {
        fail_setup("the oracle cannot read the logs");
        return;
    }
    if (oracle_watermark(orc) < 0) { fail_setup("no event was counted"); return; }
    as_of[0] = oracle_watermark(orc);
    as_of[1] = floor_to(as_of[0], HOUR_MS) + HOUR_MS;
    as_of[2] = floor_to(as_of[0], DAY_MS) + DAY_MS;
    choose_contexts();
    print_stats();
    fprintf(stderr, "e2e: setup took %.1f s\n", (double)(now_ms() - t0) / 1000);
}

static void e2e_teardown(void) {
    for (size_t i = 0; i < n_contexts; i++) {
        context *c = &contexts[i];
        free(c->query);
        free(c->query_arg);
        free(c->own);
        free((char *)c->items[c->n_items - 2]);
        free((char *)c->items[c->n_items - 1]);
        free(c->items);
    }
    n_contexts = 0;
    oracle_free(orc);
    orc = NULL;
    if (tmp) tu_rmrf(tmp);
    free(tmp); free(store); free(plain1); free(plain2); free(zst2); free(deadletter);
    tmp = store = plain1 = plain2 = zst2 = deadletter = NULL;
}

#define REQUIRE_SETUP() ck_assert_msg(!setup_error, "%s", setup_error)

/* ------------------------------------------------------------------------ */
/* Tests.                                                                   */
/* ------------------------------------------------------------------------ */

START_TEST(gen_deterministic) {
    REQUIRE_SETUP();
    char *again = fmt("%s/a-again.jsonl", tmp);
    ck_assert(gen(SEED1, START_MS, again));
    ck_assert_msg(same_file(plain1, again), "iqp gen gave different bytes for the same flags");
    unlink(again);
    free(again);
    oracle_stats s = oracle_get_stats(orc);
    ck_assert_msg(s.invalid > 0, "the logs hold no malformed line");
    ck_assert_msg(s.duplicate > 0, "the logs hold no redelivery or repeated action");
    ck_assert_msg(s.impressions > IMPRESSIONS, "too few impressions counted");
    ck_assert_msg(s.actions > 0, "no action counted");
}
END_TEST

/* Saved output of lookup (context k, as-of a) on the main store. */
static char *saved_path(size_t k, int a) { return fmt("%s/out-%zu-%d.jsonl", tmp, k, a); }

static void save(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

START_TEST(lookup_vs_oracle) {
    tally t = {0, 0, 0};
    size_t calls = 0;
    int64_t in_iqp = 0, t0 = now_ms();
    REQUIRE_SETUP();
    ck_assert_msg(n_contexts >= 50, "only %zu contexts", n_contexts);
    for (int a = 0; a < N_AS_OF; a++)
        for (size_t k = 0; k < n_contexts; k++) {
            lookup_req r = {store, &contexts[k], as_of[a], NULL, NULL};
            int64_t t1 = now_ms();
            char *out = lookup(&r), *path = saved_path(k, a);
            in_iqp += now_ms() - t1;
            ck_assert_msg(out != NULL, "iqp lookup failed");
            compare(&t, &r, out);
            save(path, out);
            calls++;
            free(path);
            free(out);
        }
    fprintf(stderr, "e2e: %zu lookups, %" PRIu64 " lines, %" PRIu64 " values compared, %" PRIu64
                    " mismatches (%.1f s in iqp lookup, %.1f s in all)\n",
            calls, t.lines, t.values, t.mismatches, (double)in_iqp / 1000,
            (double)(now_ms() - t0) / 1000);
    ck_assert_msg(t.mismatches == 0, "%" PRIu64 " values differ from the oracle (see stderr)",
                  t.mismatches);
}
END_TEST

/* (source, line) of a dead-letter record, as an oracle source path. */
static const char *oracle_source(const char *source) {
    const char *base = strrchr(source, '/');
    base = base ? base + 1 : source;
    if (strcmp(source, plain1) == 0 || strcmp(base, "a.jsonl") == 0) return plain1;
    if (strcmp(source, zst2) == 0 || strcmp(base, "b.jsonl.zst") == 0) return plain2;
    return NULL;
}

/* Finds and consumes the oracle's record for (source, line); its code. */
static const char *take_invalid(char *taken, const char *source, uint64_t line) {
    for (size_t i = 0; i < oracle_n_invalid(orc); i++) {
        const oracle_invalid *v = oracle_get_invalid(orc, i);
        if (!taken[i] && v->line_no == line && strcmp(v->source, source) == 0) {
            taken[i] = 1;
            return v->code;
        }
    }
    return NULL;
}

static void check_record(json_t *rec, char *taken, size_t *unmatched, size_t *code_diff) {
    json_t *reason = json_object_get(rec, "reason"), *code = json_object_get(rec, "code");
    json_t *source = json_object_get(rec, "source"), *pos = json_object_get(rec, "position");
    const char *src, *want;

    ck_assert_msg(json_is_string(reason) && json_string_length(reason) > 0, "empty reason");
    ck_assert_msg(json_is_string(code) && json_string_length(code) > 0, "no code");
    ck_assert_msg(json_is_string(source), "no source");
    ck_assert_msg(json_is_integer(pos), "no position");
    ck_assert_msg(json_object_get(rec, "raw") || json_object_get(rec, "raw_base64"), "no raw");
    src = oracle_source(json_string_value(source));
    want = src ? take_invalid(taken, src, (uint64_t)json_integer_value(pos)) : NULL;
    if (!want) {
        if ((*unmatched)++ < 10)
            fprintf(stderr, "e2e: dead letter the oracle accepts: %s:%" JSON_INTEGER_FORMAT " %s\n",
                    json_string_value(source), json_integer_value(pos), json_string_value(reason));
    } else if (strcmp(want, json_string_value(code)) != 0 && (*code_diff)++ < 10) {
        fprintf(stderr, "e2e: note: %s:%" JSON_INTEGER_FORMAT " code %s, oracle says %s\n",
                json_string_value(source), json_integer_value(pos), json_string_value(code), want);
    }
}

START_TEST(deadletter_matches) {
    size_t len, n = 0, unmatched = 0, code_diff = 0;
    char *text, *line, *save_ptr = NULL, *taken;
    REQUIRE_SETUP();
    text = tu_read_file(deadletter, &len);
    ck_assert_msg(text != NULL, "no dead-letter file %s", deadletter);
    taken = calloc(oracle_n_invalid(orc) + 1, 1);
    for (line = strtok_r(text, "\n", &save_ptr); line; line = strtok_r(NULL, "\n", &save_ptr)) {
        json_error_t err;
        json_t *rec = json_loads(line, 0, &err);
        ck_assert_msg(json_is_object(rec), "dead-letter line %zu is not an object", n + 1);
        check_record(rec, taken, &unmatched, &code_diff);
        json_decref(rec);
        n++;
    }
    for (size_t i = 0, shown = 0; i < oracle_n_invalid(orc) && shown < 10; i++)
        if (!taken[i] && ++shown)
            fprintf(stderr, "e2e: oracle rejects, no dead letter: %s:%" PRIu64 " (%s)\n",
                    oracle_get_invalid(orc, i)->source, oracle_get_invalid(orc, i)->line_no,
                    oracle_get_invalid(orc, i)->code);
    fprintf(stderr, "e2e: %zu dead letters, oracle %zu, %zu codes differ\n", n,
            oracle_n_invalid(orc), code_diff);
    ck_assert_msg(n == oracle_n_invalid(orc), "%zu dead letters, oracle rejects %zu", n,
                  oracle_n_invalid(orc));
    ck_assert_msg(unmatched == 0, "%zu dead letters at lines the oracle accepts", unmatched);
    free(taken);
    free(text);
}
END_TEST

/* Runs a lookup and compares it with the oracle; returns the line count. */
static uint64_t lookup_and_compare(const context *c, const char *const *features) {
    lookup_req r = {store, c, as_of[0], features, NULL};
    tally t = {0, 0, 0};
    char *out = lookup(&r);
    ck_assert_msg(out != NULL, "iqp lookup failed");
    compare(&t, &r, out);
    free(out);
    ck_assert_msg(t.mismatches == 0, "%" PRIu64 " mismatches (see stderr)", t.mismatches);
    return t.lines;
}

START_TEST(feature_filter) {
    static const char *const qc[] = {"qc_item", NULL};
    static const char *const reversed[] = {"qc_item", "q_item", NULL};
    static const char *const c_only[] = {"c_item", NULL};
    REQUIRE_SETUP();
    context c = contexts[0];
    size_t n = c.n_items;

    c.country = NULL; c.country_arg = NULL;       /* no country: qc_item skipped */
    ck_assert_uint_eq(lookup_and_compare(&c, qc), 0);
    c.gender = "male"; c.gender_arg = "M";        /* only a gender */
    ck_assert_uint_eq(lookup_and_compare(&c, NULL), 3 * ORACLE_N_WINDOWS * n);
    c = contexts[0];                              /* config order, not flag order */
    ck_assert_uint_eq(lookup_and_compare(&c, reversed), 2 * ORACLE_N_WINDOWS * n);
    c.country = "ZZ"; c.country_arg = "not a country";
    ck_assert_uint_eq(lookup_and_compare(&c, c_only), ORACLE_N_WINDOWS * n);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Hand-written cases, one rule each.                                       */
/* ------------------------------------------------------------------------ */

/* One line of a case: 'i' impression, 'a' action (rest holds "item" and
 * "action"), 'r' a raw line, a format taking the ts. dt is the ts relative
 * to CASE_T0. */
typedef struct case_line {
    char kind;
    const char *event_id;
    int64_t dt;
    const char *request_id, *query, *user, *rest;
} case_line;

typedef struct rule_case {
    const char *name;
    const case_line *lines;
    const char *const *countries, *const *genders; /* contexts to read */
    int n_as_of;                                    /* 1: the watermark only */
} rule_case;

#define CASE_T0 (1718000000000LL / DAY_MS * DAY_MS + 10 * HOUR_MS + 123)
#define US_F "{\"country\":\"US\",\"gender\":\"f\"}"
#define US_M "{\"country\":\"US\",\"gender\":\"m\"}"

/* Rule 6: a repeated action (a duplicate) is not a counted event, so its
 * later ts must not move the watermark and expire the hour of i2. */
static const case_line watermark_lines[] = {
    {'i', "i1", 0, "r1", "\"cats\"", US_F, "\"items\":[\"a\",\"b\"]"},
    {'a', "a1", 1000, "r1", "\"cats\"", US_F, "\"item\":\"a\",\"action\":\"click\""},
    {'a', "a2", 30 * HOUR_MS, "r1", "\"cats\"", US_F, "\"item\":\"a\",\"action\":\"click\""},
    {'i', "i2", 2 * HOUR_MS, "r2", "\"cats\"", US_F, "\"items\":[\"a\"]"},
    {0, NULL, 0, NULL, NULL, NULL, NULL}};

/* Rules 3, 5, 6: retention per granularity, moves into expired buckets,
 * late events (not remembered), an event_id reused by another event. */
static const case_line retention_lines[] = {
    {'i', "i1", 0, "r1", "\"dogs\"", US_M, "\"items\":[\"a\",\"b\"]"},
    {'a', "a1", 1000, "r1", "\"dogs\"", US_M, "\"item\":\"a\",\"action\":\"save\""},
    {'i', "i2", -2 * DAY_MS, "r2", "\"dogs\"", US_M, "\"items\":[\"a\"]"},
    {'a', "a2", -2 * DAY_MS + 5, "r1", "\"dogs\"", US_M, "\"item\":\"a\",\"action\":\"save\""},
    {'i', "i3", -400 * DAY_MS, "r3", "\"dogs\"", US_M, "\"items\":[\"a\"]"},
    {'i', "i4", -23 * HOUR_MS, "r4", "\"dogs\"", US_M, "\"items\":[\"b\"]"},
    {'i', "i5", -24 * HOUR_MS, "r5", "\"dogs\"", US_M, "\"items\":[\"b\"]"},
    {'a', "a3", HOUR_MS, "r9", "\"dogs\"", US_M, "\"item\":\"b\",\"action\":\"click\""},
    {'a', "a4", -23 * HOUR_MS, "r9", "\"dogs\"", US_M, "\"item\":\"b\",\"action\":\"click\""},
    {'a', "i1", 10, "r1", "\"dogs\"", US_M, "\"item\":\"a\",\"action\":\"click\""},
    {'a', "a5", -400 * DAY_MS, "r1", "\"dogs\"", US_M, "\"item\":\"b\",\"action\":\"download\""},
    {'a', "a6", 30, "r1", "\"dogs\"", US_M, "\"item\":\"b\",\"action\":\"download\""},
    {'i', "i6", -2 * DAY_MS, "r6", "\"dogs\"", US_M, "\"items\":[\"b\"]"},
    {'a', "a7", -2 * DAY_MS + 9, "r6", "\"dogs\"", US_M, "\"item\":\"b\",\"action\":\"closeup\""},
    {'a', "a8", -2 * DAY_MS + 3, "r6", "\"dogs\"", US_M, "\"item\":\"b\",\"action\":\"closeup\""},
    {0, NULL, 0, NULL, NULL, NULL, NULL}};

/* Rules 1, 2, 4: normalization of query, country and gender; item ids;
 * decoding corners. */
static const case_line normalize_lines[] = {
    {'i', "n1", 0, "q1", "\"\\uff23\\uff41\\uff54\\u3000Toys\"",
     "{\"country\":\"us\\t\",\"gender\":\"FEMALE \"}", "\"items\":[\"x\"]"},
    {'i', "n2", 0, "q2", "\"cat toys\"", "{\"country\":\"US\",\"gender\":\"\\uff26\"}", "\"items\":[\"x\"]"},
    {'i', "n3", 0, "q3", "\"cat\\u0085toys\"", "{\"country\":\"US\",\"gender\":\"woman\"}", "\"items\":[\"x\"]"},
    {'i', "n4", 0, "q4", "\"cat\\u200btoys\"", US_F, "\"items\":[\"x\"]"},
    {'i', "n5", 0, "q5", "\"Stra\\u00dfe\"", "{\"country\":\"de\",\"gender\":\"M\"}",
     "\"items\":[\"17\",17,{\"id\":17,\"pos\":0},-5]"},
    {'i', "n6", 0, "q6", "\"STRASSE\"", "{\"country\":\"DE\",\"gender\":\"male\"}", "\"items\":[]"},
    {'i', "n7", 0, "q7", "\"\\u01c5emo\"", "{\"country\":\"XK\",\"gender\":\"man\"}", "\"items\":[\"y\"]"},
    {'i', "n8", 0, "q8", "\"\\ufb01sh  \\u2028 tank\"", "{\"country\":\"EU\",\"gender\":null}", "\"items\":[\"y\"]"},
    {'i', "n9", 0, "q9", "\"\\u1e9e \\u03a3\\u038a\\u03a3\\u03a5\\u03a6\\u039f\\u03a3\"",
     "{\"country\":null,\"gender\":\"m\"}", "\"items\":[\"y\"]"},
    {'i', "n10", 0, "q10", "\"\\u216b \\u338f\"", US_F, "\"items\":[\"y\"]"},
    {'i', "n11", 0, "q11", "\"I\\u0307stanbul\"", US_F, "\"items\":[\"y\"]"},
    {'i', "n12", 0, "q12", "\"\\u00a0\\u00a0x\\u00a0\\u00a0y \"", US_F, "\"items\":[\"y\"]"},
    {'a', "n13", 5, "q5", "\"strasse\"", "{\"country\":\"DE\",\"gender\":\"m\"}",
     "\"item\":17,\"action\":\"click\""},
    {'a', "n14", 6, "q5", "\"strasse\"", "{\"country\":\"DE\",\"gender\":\"m\"}",
     "\"item\":{\"id\":\"-5\"},\"action\":\"closeup\""},
    {'r', NULL, 0, NULL, NULL, NULL,
     "{\"schema\":\"impression.v1\",\"event_id\":\"r1\",\"ts\":%" PRId64 ",\"request_id\":\"r\","
     "\"query\":\"crlf\",\"user\":{\"country\":\"US\",\"gender\":\"f\"},\"items\":[\"z\"]}\r"},
    {'r', NULL, 0, NULL, NULL, NULL,
     "{\"schema\":\"impression.v1\",\"event_id\":\"r2\",\"ts\":%" PRId64 ",\"request_id\":\"r\","
     "\"query\":\"extra\",\"user\":{\"country\":\"US\",\"gender\":\"f\"},\"items\":[\"a\"],"
     "\"extra\":{\"deep\":[1,{\"x\":null}]}}"},
    {'r', NULL, 0, NULL, NULL, NULL,
     "{\"schema\":\"impression.v1\",\"event_id\":\"r3\",\"ts\":%" PRId64 ".0,\"request_id\":\"r\","
     "\"query\":\"real ts\",\"user\":{\"country\":\"US\",\"gender\":\"f\"},\"items\":[\"a\"]}"},
    {'r', NULL, 0, NULL, NULL, NULL,
     "{\"schema\":\"impression.v1\",\"event_id\":\"r4\",\"ts\":%" PRId64 ",\"request_id\":\"r\","
     "\"query\":\"pos null\",\"user\":{\"country\":\"US\",\"gender\":\"f\"},"
     "\"items\":[{\"id\":\"a\",\"pos\":null}]}"},
    {'r', NULL, 0, NULL, NULL, NULL,
     "{\"schema\":\"impression.v1\",\"event_id\":\"r5\",\"ts\":%" PRId64 ",\"request_id\":\"r\","
     "\"query\":\" \\t \",\"user\":{\"country\":\"US\",\"gender\":\"f\"},\"items\":[]}"},
    {'r', NULL, 0, NULL, NULL, NULL,
     "{\"schema\":\"impression.v1\",\"event_id\":\"r6\",\"ts\":%" PRId64 ",\"request_id\":\"r\","
     "\"query\":\"no gender\",\"user\":{\"country\":\"US\"},\"items\":[]}"},
    {'r', NULL, 0, NULL, NULL, NULL, "   "},
    {'r', NULL, 0, NULL, NULL, NULL,
     "{\"schema\":\"impression.v1\",\"event_id\":\"r7\",\"ts\":%" PRId64 ",\"request_id\":\"r\","
     "\"query\":\"max int\",\"user\":{\"country\":\"US\",\"gender\":\"f\"},"
     "\"items\":[9223372036854775807,-9223372036854775808]}"},
    {0, NULL, 0, NULL, NULL, NULL, NULL}};

static const char *const us_zz[] = {"US", "ZZ", NULL};
static const char *const three_genders[] = {"female", "male", "unknown", NULL};
static const char *const us_de_zz[] = {"US", "DE", "ZZ", NULL};
static const char *const two_genders[] = {"female", "male", NULL};

static const rule_case rule_cases_table[] = {
    {"watermark", watermark_lines, us_zz, three_genders, N_AS_OF},
    {"retention", retention_lines, us_zz, three_genders, N_AS_OF},
    {"normalize", normalize_lines, us_de_zz, two_genders, 1},
};

static void write_case(const rule_case *rc, const char *path) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    for (const case_line *l = rc->lines; l->kind; l++) {
        int64_t ts = CASE_T0 + l->dt;
        if (l->kind == 'r') {
            fprintf(f, l->rest, ts);
            fputc('\n', f);
            continue;
        }
        fprintf(f,
                "{\"schema\":\"%s\",\"event_id\":\"%s\",\"ts\":%" PRId64 ",\"request_id\":\"%s\","
                "\"query\":%s,\"user\":%s,%s}\n",
                l->kind == 'i' ? "impression.v1" : "action.v1", l->event_id, ts, l->request_id,
                l->query, l->user, l->rest);
    }
    fclose(f);
}

static size_t count_lines(const char *path) {
    size_t n = 0;
    char *text = tu_read_file(path, NULL);
    for (char *p = text; p && *p; p++) n += *p == '\n';
    free(text);
    return n;
}

/* Reads every query x country x gender of the case as of the watermark
 * (and the next hour and day) and compares with the oracle. */
static void compare_case(const rule_case *rc, const oracle *model, const char *dir,
                         tally *t) {
    int64_t w = oracle_watermark(model);
    int64_t times[N_AS_OF] = {w, floor_to(w, HOUR_MS) + HOUR_MS, floor_to(w, DAY_MS) + DAY_MS};
    for (size_t q = 0; q < oracle_n_queries(model); q++)
        for (const char *const *cc = rc->countries; *cc; cc++)
            for (const char *const *g = rc->genders; *g; g++)
                for (int a = 0; a < rc->n_as_of; a++) {
                    size_t n;
                    const char *const *known;
                    context c = {0};
                    c.query = c.query_arg = (char *)oracle_query(model, q, NULL);
                    c.country = c.country_arg = *cc;
                    c.gender = c.gender_arg = *g;
                    known = oracle_query_items(model, c.query, &n);
                    c.items = malloc((n + 1) * sizeof *c.items);
                    memcpy(c.items, known, n * sizeof *known);
                    c.items[n] = "e2e-unknown-item";
                    c.n_items = n + 1;
                    lookup_req r = {dir, &c, times[a], NULL, model};
                    char *out = lookup(&r);
                    ck_assert_msg(out != NULL, "%s: iqp lookup failed", rc->name);
                    compare(t, &r, out);
                    free(out);
                    free(c.items);
                }
}

/* Returns the number of mismatches of one case. */
static uint64_t run_case(const rule_case *rc) {
    char *log = fmt("%s/case-%s.jsonl", tmp, rc->name), *dir = fmt("%s/store-%s", tmp, rc->name);
    char *dl = fmt("%s/dead-%s.jsonl", tmp, rc->name);
    char *cmd = fmt("%s backfill --store '%s' --dead-letter '%s' '%s'", tu_iqp(), dir, dl, log);
    oracle *model = oracle_new(now_ms());
    tally t = {0, 0, 0};

    write_case(rc, log);
    ck_assert_msg(run_ok(cmd), "%s: iqp backfill failed", rc->name);
    ck_assert_msg(oracle_load_file(model, log) == 0, "%s: oracle cannot read", rc->name);
    compare_case(rc, model, dir, &t);
    if (count_lines(dl) != oracle_n_invalid(model)) {
        fprintf(stderr, "e2e: case %s: %zu dead letters, oracle rejects %zu\n", rc->name,
                count_lines(dl), oracle_n_invalid(model));
        t.mismatches++;
    }
    fprintf(stderr, "e2e: case %s: %" PRIu64 " values compared, %" PRIu64 " mismatches\n",
            rc->name, t.values, t.mismatches);
    oracle_free(model);
    free(log); free(dir); free(dl); free(cmd);
    return t.mismatches;
}

START_TEST(rule_cases) {
    const char *failed[8];
    size_t n_failed = 0;
    REQUIRE_SETUP();
    for (size_t i = 0; i < sizeof rule_cases_table / sizeof *rule_cases_table; i++)
        if (run_case(&rule_cases_table[i]) && n_failed < 8)
            failed[n_failed++] = rule_cases_table[i].name;
    ck_assert_msg(n_failed == 0, "%zu rule case(s) differ from the oracle, first: %s", n_failed,
                  n_failed ? failed[0] : "");
}
END_TEST

/* The (context, as-of) pairs re-read after the store was built again:
 * every context as of the watermark, every fifth one at the later times. */
static int resampled(size_t k, int a) { return a == 0 || k % 5 == 0; }

/* Compares lookups on dir with the saved outputs of the main store (or with
 * fresh ones when none was saved), for the resampled pairs of contexts
 * [0, n). */
static void compare_with_saved(const char *dir, size_t n, const char *what) {
    size_t differ = 0;
    for (int a = 0; a < N_AS_OF; a++)
        for (size_t k = 0; k < n && k < n_contexts; k++) {
            lookup_req r = {dir, &contexts[k], as_of[a], NULL, NULL};
            if (!resampled(k, a)) continue;
            char *path = saved_path(k, a), *before = tu_read_file(path, NULL), *now;
            if (!before) {
                lookup_req m = {store, &contexts[k], as_of[a], NULL, NULL};
                before = lookup(&m);
                ck_assert_msg(before != NULL, "iqp lookup failed");
            }
            now = lookup(&r);
            ck_assert_msg(now != NULL, "iqp lookup failed");
            if (strcmp(before, now) != 0 && differ++ < 5)
                fprintf(stderr, "e2e: %s: output differs for query '%s' as of %" PRId64 "\n",
                        what, contexts[k].query, as_of[a]);
            free(path); free(before); free(now);
        }
    ck_assert_msg(differ == 0, "%s: %zu lookup outputs differ", what, differ);
}

START_TEST(stdin_input) {
    REQUIRE_SETUP();
    char *dir = fmt("%s/store-stdin", tmp);
    char *g = gen_cmd(SEED1, START_MS, NULL);
    char *cmd1 = fmt("%s | %s backfill --store '%s' -", g, tu_iqp(), dir);
    char *cmd2 = fmt("%s backfill --store '%s' - < '%s'", tu_iqp(), dir, zst2);
    ck_assert(run_ok(cmd1));
    ck_assert(run_ok(cmd2));
    compare_with_saved(dir, 20, "stdin");
    tu_rmrf(dir);
    free(dir); free(g); free(cmd1); free(cmd2);
}
END_TEST

START_TEST(backfill_again) {
    REQUIRE_SETUP();
    for (int a = 0; a < N_AS_OF; a++)   /* make sure every output was saved */
        for (size_t k = 0; k < n_contexts; k++) {
            char *path = saved_path(k, a);
            struct stat st;
            if (resampled(k, a) && stat(path, &st) != 0) {
                lookup_req r = {store, &contexts[k], as_of[a], NULL, NULL};
                char *out = lookup(&r);
                ck_assert_msg(out != NULL, "iqp lookup failed");
                save(path, out);
                free(out);
            }
            free(path);
        }
    ck_assert(backfill(store, NULL));
    compare_with_saved(store, n_contexts, "second backfill");
    /* The same events as the second half of b.jsonl.zst (its last ~18 h,
     * within the 24 h dedup horizon of the watermark), through a file with
     * another content identity: the per-event dedup markers must hold them.
     * (Older duplicates are counted again by design: README rule 7.) */
    char *tail = fmt("%s/b-tail.jsonl", tmp);
    char *cmd = fmt("tail -n $(( $(wc -l < '%s') / 2 )) '%s' > '%s' && %s backfill --store '%s' '%s'",
                    plain2, plain2, tail, tu_iqp(), store, tail);
    ck_assert(run_ok(cmd));
    free(cmd);
    free(tail);
    compare_with_saved(store, n_contexts, "same events, other file");
}
END_TEST

/* kill -9 a backfill part way through, run it again: the counts equal an
 * uninterrupted run's exactly. Whenever the kill lands (before the first
 * flush, mid-file, between files, after the end) the assertion is the same;
 * the second run's summary says how many lines it found already counted. */
START_TEST(backfill_killed_and_resumed) {
    REQUIRE_SETUP();
    char *dir = fmt("%s/store-killed", tmp);
    /* first a graceful stop (SIGINT: commit, exit 130), then two kill -9s */
    static const char *const signals[] = {"INT", "KILL", "KILL"};
    for (int attempt = 0; attempt < 3; attempt++) {
        char *errlog = fmt("%s/store-killed-%d.err", tmp, attempt);
        char *kill_cmd = fmt("timeout -s %s %.1f %s backfill --quiet --flush-events 500 --store '%s' "
                             "'%s' '%s' 2>'%s'", signals[attempt], 0.5 + 0.7 * attempt, tu_iqp(),
                             dir, plain1, zst2, errlog);
        int rc = tu_run(kill_cmd, NULL);
        free(kill_cmd);
        /* timeout exits 124 when it had to signal; 137 = killed; 130 = stopped */
        if (!(rc == 0 || rc == 124 || rc == 130 || rc == 137)) {
            char *show = fmt("tail -n 20 '%s' >&2", errlog);
            if (system(show) != 0) fprintf(stderr, "(no stderr of attempt %d)\n", attempt);
            free(show);
        }
        ck_assert_msg(rc == 0 || rc == 124 || rc == 130 || rc == 137, "interrupted backfill (attempt %d, %s) exited %d",
                      attempt, signals[attempt], rc);
        free(errlog);
    }
    char *again = fmt("%s backfill --store '%s' '%s' '%s'", tu_iqp(), dir, plain1, zst2);
    ck_assert(run_ok(again));
    free(again);
    compare_with_saved(dir, n_contexts, "killed and resumed");
    tu_rmrf(dir);
    free(dir);
}
END_TEST

/* ---- flush-size invariance (README rule 7) ------------------------------ */

#define INV_IMPRESSIONS 1500
static const char *const inv_flush_flags[] = {"--flush-events 1", "--flush-events 997",
                                              "--flush-events 200000"};
#define THREAD_INV_IMPRESSIONS 6000
static const char *const inv_thread_flags[] = {
    "--threads 1 --flush-events 997", "--threads 2 --flush-events 997",
    "--threads 4 --flush-events 997", "--threads 4 --flush-events 1",
    "--threads 3 --flush-events 200000", "--threads 2 --flush-events 200000"};
#define N_FLAGS(a) (sizeof(a) / sizeof *(a))

/* Writes the lines of src to dst in a fixed pseudo-random order
 * (Fisher-Yates with a xorshift generator). */
static void shuffle_lines(const char *src, const char *dst) {
    char *text = tu_read_file(src, NULL);
    ck_assert_msg(text != NULL, "cannot read %s", src);
    size_t n = 0, cap = 1024;
    char **lines = malloc(cap * sizeof *lines);
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (n == cap) lines = realloc(lines, (cap *= 2) * sizeof *lines);
        lines[n++] = l;
    }
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = n; i > 1; i--) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t j = (size_t)(x % i);
        char *t = lines[i - 1];
        lines[i - 1] = lines[j];
        lines[j] = t;
    }
    FILE *f = fopen(dst, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", dst);
    for (size_t i = 0; i < n; i++) fprintf(f, "%s\n", lines[i]);
    fclose(f);
    free(lines);
    free(text);
}

/* `iqp stats --compact` of dir without disk_bytes / bytes_per_cell (file
 * sizes depend on how the data was batched, the cells do not). */
static char *settled_stats(const char *dir) {
    char *cmd = fmt("%s stats --compact --store '%s'", tu_iqp(), dir), *out = NULL;
    ck_assert_msg(tu_run(cmd, &out) == 0, "iqp stats failed: %s", cmd);
    json_t *o = json_loads(out, 0, NULL);
    ck_assert_msg(o != NULL, "iqp stats printed no JSON: %s", out);
    json_object_del(o, "disk_bytes");
    json_object_del(o, "bytes_per_cell");
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    free(out);
    free(cmd);
    return text;
}

/* Every lookup of the model's top queries x 2 countries x 3 genders, as of
 * the watermark and the next day, appended to out; compared with model. */
static void invariance_lookups(const oracle *model, const char *dir, FILE *out, tally *t) {
    static const char *const genders[] = {"female", "male", "unknown"};
    int64_t w = oracle_watermark(model), times[2] = {w, floor_to(w, DAY_MS) + DAY_MS};
    size_t nq = oracle_n_queries(model) < 6 ? oracle_n_queries(model) : 6;
    for (size_t q = 0; q < nq; q++)
        for (size_t cc = 0; cc < 2 && cc < oracle_n_countries(model); cc++)
            for (int g = 0; g < 3; g++)
                for (int a = 0; a < 2; a++) {
                    size_t n;
                    context c = {0};
                    c.query = c.query_arg = (char *)oracle_query(model, q, NULL);
                    c.country = c.country_arg = oracle_country(model, cc, NULL);
                    c.gender = c.gender_arg = genders[g];
                    c.items = (const char **)oracle_query_items(model, c.query, &n);
                    c.n_items = n;
                    lookup_req r = {dir, &c, times[a], NULL, model};
                    char *res = lookup(&r);
                    ck_assert_msg(res != NULL, "iqp lookup failed on %s", dir);
                    compare(t, &r, res);
                    fputs(res, out);
                    free(res);
                }
}

/* What one backfill gives: every invariance lookup, `iqp refresh --dump`
 * as of the watermark, and the dead letters, as one text; lookups are
 * compared with model into t. */
static char *invariance_output(const oracle *model, const char *dir, tally *t) {
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    invariance_lookups(model, dir, out, t);
    char *cmd = fmt("%s refresh --quiet --store '%s' --as-of %" PRId64 " --dump '%s/dump.txt'",
                    tu_iqp(), dir, oracle_watermark(model), dir);
    ck_assert_msg(run_ok(cmd), "iqp refresh --dump failed: %s", cmd);
    char *dump = fmt("%s/dump.txt", dir), *dl = fmt("%s/dead-letter.jsonl", dir);
    char *dump_text = tu_read_file(dump, NULL), *dl_text = tu_read_file(dl, NULL);
    ck_assert_msg(dump_text && dl_text, "cannot read %s or %s", dump, dl);
    ck_assert_msg(strlen(dump_text) > 1000, "the dump of %s is nearly empty", dir);
    fprintf(out, "---- dump\n%s---- dead letters\n%s", dump_text, dl_text);
    fclose(out);
    free(dump_text);
    free(dl_text);
    free(dump);
    free(dl);
    free(cmd);
    return text;
}

/* One log backfilled with each of the flag sets: returns the number of
 * differences between them and with the oracle. */
static size_t check_invariance(const char *log, const char *what, const char *const *flags,
                               size_t n_flags) {
    oracle *model = oracle_new(now_ms());
    ck_assert_msg(oracle_load_file(model, log) == 0, "oracle cannot read %s", log);
    char *first_out = NULL, *first_stats = NULL;
    size_t differ = 0;
    tally t = {0, 0, 0};
    for (size_t k = 0; k < n_flags; k++) {
        char *dir = fmt("%s/inv-%s-%zu", tmp, what, k);
        char *cmd = fmt("%s backfill --quiet %s --store '%s' '%s' 2>/dev/null", tu_iqp(), flags[k],
                        dir, log);
        ck_assert_msg(run_ok(cmd), "backfill failed: %s", cmd);
        char *text = invariance_output(model, dir, &t);
        char *stats = settled_stats(dir);
        if (!first_out) {
            first_out = text;
            first_stats = stats;
        } else {
            if (strcmp(first_out, text) != 0) {
                fprintf(stderr, "e2e: %s: lookups, dump or dead letters with %s differ from %s\n",
                        what, flags[k], flags[0]);
                differ++;
            }
            if (strcmp(first_stats, stats) != 0) {
                fprintf(stderr, "e2e: %s: stats with %s: %s, with %s: %s\n", what, flags[k], stats,
                        flags[0], first_stats);
                differ++;
            }
            free(text);
            free(stats);
        }
        tu_rmrf(dir);
        free(dir);
        free(cmd);
    }
    oracle_stats s = oracle_get_stats(model);
    fprintf(stderr, "e2e: invariance %s: %" PRIu64 " lines, %" PRIu64 " duplicate, %" PRIu64
            " late; stats %s; %" PRIu64 " values vs oracle, %" PRIu64 " mismatches\n",
            what, s.lines, s.duplicate, s.late, first_stats, t.values, t.mismatches);
    free(first_out);
    free(first_stats);
    oracle_free(model);
    return differ + t.mismatches;
}

/* A generated 30-day log (repeats and redeliveries far behind the
 * watermark) in time order at ordered, shuffled at shuffled. */
static void invariance_logs(int impressions, const char *ordered, const char *shuffled) {
    char *cmd = fmt("%s gen --seed 7 --impressions %d --start %" PRId64 " --span 30d "
                    "--redeliver-rate 0.1 --repeat-rate 0.3 --queries 20 --items 200 --out '%s'",
                    tu_iqp(), impressions, (int64_t)START_MS, ordered);
    ck_assert(run_ok(cmd));
    shuffle_lines(ordered, shuffled);
    free(cmd);
}

START_TEST(flush_size_invariance) {
    REQUIRE_SETUP();
    char *ordered = fmt("%s/inv-ordered.jsonl", tmp), *shuffled = fmt("%s/inv-shuffled.jsonl", tmp);
    invariance_logs(INV_IMPRESSIONS, ordered, shuffled);
    size_t differ = check_invariance(ordered, "ordered", inv_flush_flags, N_FLAGS(inv_flush_flags)) +
                    check_invariance(shuffled, "shuffled", inv_flush_flags, N_FLAGS(inv_flush_flags));
    ck_assert_msg(differ == 0, "%zu differences between flush sizes or with the oracle", differ);
    free(ordered);
    free(shuffled);
}
END_TEST

/* Counting sharded over threads by context key: the same store, dumps,
 * dead letters and oracle values for any thread count. */
START_TEST(thread_count_invariance) {
    REQUIRE_SETUP();
    char *ordered = fmt("%s/tinv-ordered.jsonl", tmp), *shuffled = fmt("%s/tinv-shuffled.jsonl", tmp);
    invariance_logs(THREAD_INV_IMPRESSIONS, ordered, shuffled);
    size_t differ = check_invariance(shuffled, "threads", inv_thread_flags, N_FLAGS(inv_thread_flags));
    ck_assert_msg(differ == 0, "%zu differences between thread counts or with the oracle", differ);
    free(ordered);
    free(shuffled);
}
END_TEST

static Suite *e2e_suite(void) {
    Suite *s = suite_create("e2e");
    TCase *tc = tcase_create("gen-backfill-lookup");
    tcase_add_unchecked_fixture(tc, e2e_setup, e2e_teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, gen_deterministic);
    tcase_add_test(tc, lookup_vs_oracle);
    tcase_add_test(tc, deadletter_matches);
    tcase_add_test(tc, feature_filter);
    tcase_add_test(tc, rule_cases);
    tcase_add_test(tc, stdin_input);
    tcase_add_test(tc, backfill_again);
    tcase_add_test(tc, backfill_killed_and_resumed);
    tcase_add_test(tc, flush_size_invariance);
    tcase_add_test(tc, thread_count_invariance);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(e2e_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

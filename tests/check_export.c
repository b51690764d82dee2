/* check_export.c -- `iqp export` against brute force, leakage and serving.
 *
 * Design
 * ------
 * An unchecked fixture generates one log (iqp gen: redeliveries, repeated
 * actions, spelling variants, malformed lines, 2 min disorder), splits it
 * into an impressions-only and an actions-only file, and feeds it to the
 * oracle (tests/oracle.c), which keeps every valid event. The expected
 * values never come from iqp: features are oracle_lookup_before (a scan
 * over every counted thing with ts < ts - lag), labels a scan over the
 * oracle's valid actions.
 *
 * The tests:
 *   features_and_labels   every value of every row of a full export with the
 *                         default flags (lag 0, 24 h horizon) equals the
 *                         brute force; every label (engaged and each
 *                         action) is 1 on some rows and 0 on others; exactly
 *                         one row per (counted impression, distinct item);
 *                         dead letters one per line the oracle rejects.
 *   lag_and_range         the same with --lag-ms 90000 and a --from/--until
 *                         slice in the middle (events before --from warm
 *                         the counters; no rows outside the slice).
 *   cache_budget_invariance  the lag_and_range export with --cache-mb 0
 *                         (the store read again on every cache miss) equals
 *                         the brute force and, byte for byte, the export
 *                         with the default cache.
 *   csv_matches_jsonl     --format csv holds the same values, column by
 *                         column, as the JSONL export.
 *   files_merged_by_time  impressions and actions in two files give the
 *                         same rows as the one mixed file.
 *   leakage               hand-written: an impression's own click is in
 *                         its label, not its features; a second impression
 *                         of the query an hour later has it in its
 *                         features; with a 2 h lag it does not yet; the
 *                         default horizon is [ts, ts + 24 h) (actions at ts
 *                         and ts + 24 h - 1 ms label, at ts + 24 h and
 *                         ts - 1 ms do not; the latter is a feature).
 *   parity_with_lookup    for impressions of the lag export: a store
 *                         backfilled with exactly the events before
 *                         ts - lag, read with `iqp lookup --as-of ts - lag`,
 *                         prints the exported values.
 *   bad_input             malformed, out-of-order and future lines are
 *                         dead-lettered with their reasons; the run goes on.
 *   progress_and_summary  on a terminal a progress line, then the summary;
 *                         with --quiet or on a pipe the summary only.
 *   summary_adds_up       the summary's categories add up to the lines of the
 *                         file (bad = dead-letter records); they equal
 *                         backfill's and the brute force's for a log in
 *                         time order, and for a disordered one the totals
 *                         do (counted + duplicate, bad, late); --until
 *                         adds a "past --until" category.
 *   failed_run_leaves_nothing  a run that fails (an input cut short after
 *                         rows were written, a missing input) leaves no
 *                         --out, partial file or dead-letter file it
 *                         created, and leaves an --out and a dead-letter
 *                         file that existed before as they were; a bad
 *                         --out directory is named as --out.
 *   usage                 --help describes the flags; bad flags exit 2
 *                         naming the problem; a missing input or unusable
 *                         --out exits 1 naming the file.
 *
 * Every export runs with its temporary store in a directory of its own,
 * which must be empty afterwards; all files live under one temp dir
 * (also $TMPDIR for the children), removed by the fixture's teardown.
 */
#include <check.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <pty.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <uthash.h>

#include "tests/oracle.h"
#include "tests/testutil.h"

#define HOUR_MS 3600000LL
#define DAY_MS 86400000LL
#ifndef IMPRESSIONS
#define IMPRESSIONS 1500
#endif
#define SEED 20250606
#define START_MS 1717996834567LL /* 2024-06-10, not on a bucket edge */
#define SPAN_MS (36 * HOUR_MS)
#define LAG_MS 90000LL
#define RANGE_FROM (START_MS + 12 * HOUR_MS)
#define RANGE_UNTIL (START_MS + 20 * HOUR_MS)
#define N_MEASURES (1 + 2 * ORACLE_N_COUNTERS)

static const char *const counter_names[ORACLE_N_COUNTERS] = {
    "impression", "engaged", "click", "save", "closeup", "long_click", "download", "screenshot"};

static char *setup_error;
static char *tmp, *log_all, *log_imps, *log_acts;
static oracle *orc;

/* Valid actions by (request_id, item), for the label brute force. */
typedef struct action_list {
    char *key;                 /* request_id '\x01' item */
    int64_t *ts;
    int *action;
    size_t n;
    UT_hash_handle hh;
} action_list;
static action_list *actions;

/* Counted impressions by request_id. */
typedef struct impression_ref {
    const char *request_id;
    const oracle_event *ev;
    int rows_seen;             /* rows found in the export under test */
    UT_hash_handle hh;
} impression_ref;
static impression_ref *impressions;

/* ------------------------------------------------------------------------ */
/* Helpers.                                                                 */
/* ------------------------------------------------------------------------ */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int run_ok(const char *cmd) {
    int rc = tu_run(cmd, NULL);
    if (rc != 0) fprintf(stderr, "export test: exit %d: %s\n", rc, cmd);
    return rc == 0;
}

static char *pair_key(const char *a, const char *b) { return tu_fmt("%s\x01%s", a, b); }

/* The distinct items of an impression, first occurrence first. */
static size_t distinct(const oracle_event *ev, const char **items, int64_t *positions) {
    size_t n = 0;
    for (size_t i = 0; i < ev->n_items; i++) {
        int dup = 0;
        for (size_t j = 0; j < n && !dup; j++) dup = strcmp(items[j], ev->items[i]) == 0;
        if (dup) continue;
        positions[n] = ev->positions[i];
        items[n++] = ev->items[i];
    }
    return n;
}

/* Brute-force label: a valid action of that kind (-1: any) on item in the
 * request with ts in [t, t + horizon). */
static int expected_label(const char *request_id, const char *item, int64_t t, int64_t horizon,
                          int action) {
    char *key = pair_key(request_id, item);
    action_list *l;
    int hit = 0;
    HASH_FIND_STR(actions, key, l);
    free(key);
    for (size_t i = 0; l && i < l->n && !hit; i++)
        hit = l->ts[i] >= t && l->ts[i] < t + horizon && (action < 0 || l->action[i] == action);
    return hit;
}

static char *column(int f, int w, int m) {
    const char *measure;
    char buf[64];
    if (m == 0) measure = "context_count";
    else if (m <= ORACLE_N_COUNTERS) measure = counter_names[m - 1];
    else {
        snprintf(buf, sizeof buf, "iqp_%s", counter_names[m - 1 - ORACLE_N_COUNTERS]);
        measure = buf;
    }
    return tu_fmt("%s.%s.%s", oracle_feature_names[f], oracle_window_names[w], measure);
}

/* ------------------------------------------------------------------------ */
/* The fixture.                                                             */
/* ------------------------------------------------------------------------ */

static void fail_setup(const char *what) {
    if (!setup_error) setup_error = tu_fmt("export setup: %s", what);
}

static void index_events(void) {
    for (size_t i = 0; i < oracle_n_events(orc); i++) {
        const oracle_event *e = oracle_get_event(orc, i);
        if (e->is_action) {
            char *key = pair_key(e->request_id, e->items[0]);
            action_list *l;
            HASH_FIND_STR(actions, key, l);
            if (!l) {
                l = calloc(1, sizeof *l);
                l->key = key;
                HASH_ADD_KEYPTR(hh, actions, l->key, strlen(l->key), l);
            } else {
                free(key);
            }
            l->ts = realloc(l->ts, (l->n + 1) * sizeof *l->ts);
            l->action = realloc(l->action, (l->n + 1) * sizeof *l->action);
            l->ts[l->n] = e->ts;
            l->action[l->n++] = e->action;
        } else if (e->counted) {
            impression_ref *r;
            HASH_FIND_STR(impressions, e->request_id, r);
            if (r) { fail_setup("two counted impressions share a request_id"); continue; }
            r = calloc(1, sizeof *r);
            r->request_id = e->request_id;
            r->ev = e;
            HASH_ADD_KEYPTR(hh, impressions, r->request_id, strlen(r->request_id), r);
        }
    }
}

static void export_setup(void) {
    if (!(tmp = tu_mkdtemp("export"))) { fail_setup("cannot create a temp dir"); return; }
    setenv("TMPDIR", tmp, 1); /* whatever a child leaves behind goes with tmp */
    log_all = tu_fmt("%s/all.jsonl", tmp);
    log_imps = tu_fmt("%s/imps.jsonl", tmp);
    log_acts = tu_fmt("%s/acts.jsonl", tmp);
    char *cmd = tu_fmt("%s gen --seed %d --impressions %d --start %lld --span 36h --disorder 2m "
                       "--out '%s' && grep -v '\"schema\":\"action.v1\"' '%s' > '%s'; "
                       "grep '\"schema\":\"action.v1\"' '%s' > '%s'",
                       tu_iqp(), SEED, IMPRESSIONS, (long long)START_MS, log_all, log_all, log_imps,
                       log_all, log_acts);
    int ok = run_ok(cmd);
    free(cmd);
    if (!ok) { fail_setup("iqp gen failed"); return; }
    orc = oracle_new(now_ms());
    oracle_keep_events(orc);
    if (oracle_load_file(orc, log_all) < 0) { fail_setup("the oracle cannot read the log"); return; }
    index_events();
}

static void export_teardown(void) {
    action_list *l, *lt;
    HASH_ITER(hh, actions, l, lt) {
        HASH_DEL(actions, l);
        free(l->key); free(l->ts); free(l->action); free(l);
    }
    impression_ref *r, *rt;
    HASH_ITER(hh, impressions, r, rt) { HASH_DEL(impressions, r); free(r); }
    oracle_free(orc);
    orc = NULL;
    if (tmp) tu_rmrf(tmp);
    free(tmp); free(log_all); free(log_imps); free(log_acts);
    tmp = log_all = log_imps = log_acts = NULL;
}

#define REQUIRE_SETUP() ck_assert_msg(!setup_error, "%s", setup_error)

/* ------------------------------------------------------------------------ */
/* Checking an export against the brute force.                              */
/* ------------------------------------------------------------------------ */

typedef struct export_req {
    int64_t lag, from, until, horizon;
    const char *extra;         /* more flags, or "" */
    int defaults;              /* pass none of --lag-ms, --from, --until, --label-horizon-ms:
                                  the fields then hold the defaults (0, all, all, 24 h) */
} export_req;

typedef struct tally {
    uint64_t rows, values, mismatches;
    uint64_t label_ones[1 + ORACLE_N_ACTIONS]; /* rows whose label is 1 (engaged, each action) */
} tally;

static void mismatch(tally *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mismatch(tally *t, const char *fmt, ...) {
    va_list ap;
    if (t->mismatches++ >= 20) return;
    fputs("export test: MISMATCH ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Entries of dir other than . and .. (-1: cannot open it). */
static int dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d) return -1;
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* Runs an export with its temporary store under tmp/work, which must be
 * empty again afterwards (the store is removed at the end). */
static char *run_export(const export_req *r, const char *inputs, const char *name) {
    char *out = tu_fmt("%s/%s", tmp, name), *work = tu_fmt("%s/work-%s", tmp, name), *flags;
    if (r->defaults) flags = tu_fmt("%s", "");
    else flags = tu_fmt("--lag-ms %lld --from %lld --until %lld --label-horizon-ms %lld",
                        (long long)r->lag, (long long)r->from, (long long)r->until,
                        (long long)r->horizon);
    ck_assert_msg(mkdir(work, 0700) == 0, "cannot create %s", work);
    char *cmd = tu_fmt("%s export --quiet --events %s --out '%s' --work-dir '%s' %s %s", tu_iqp(),
                       inputs, out, work, flags, r->extra);
    int ok = run_ok(cmd);
    ck_assert_msg(dir_entries(work) == 0, "the temporary store under %s was not removed", work);
    rmdir(work);
    free(cmd); free(flags); free(work);
    if (!ok) { free(out); return NULL; }
    return out;
}

/* The brute force for one impression, cached across its rows. */
typedef struct expected {
    const impression_ref *imp;
    const char *items[1024];
    int64_t positions[1024];
    size_t n;
    oracle_counts *counts;     /* (f * W + w) * n + i */
} expected;

static void expect_impression(expected *x, const impression_ref *imp, int64_t lag) {
    int applicable[ORACLE_N_FEATURES];
    const oracle_event *e = imp->ev;
    x->imp = imp;
    x->n = distinct(e, x->items, x->positions);
    free(x->counts);
    x->counts = malloc((size_t)ORACLE_N_FEATURES * ORACLE_N_WINDOWS * (x->n + 1) * sizeof *x->counts);
    oracle_lookup_before(orc, e->query, e->country, e->gender, e->ts - lag, e->ts - lag, x->items,
                         x->n, applicable, x->counts);
}

static void check_int(tally *t, json_t *row, const char *key, int64_t want, const char *where) {
    json_t *v = json_object_get(row, key);
    t->values++;
    if (!json_is_integer(v) || json_integer_value(v) != want)
        mismatch(t, "%s: %s = %s, brute force %" PRId64, where, key,
                 v ? (json_is_integer(v) ? "other integer" : "not an integer") : "missing", want);
}

static void check_row_values(tally *t, json_t *row, const expected *x, size_t i, const char *where) {
    for (int f = 0; f < ORACLE_N_FEATURES; f++)
        for (int w = 0; w < ORACLE_N_WINDOWS; w++) {
            const oracle_counts *c = &x->counts[(size_t)(f * ORACLE_N_WINDOWS + w) * x->n + i];
            for (int m = 0; m < N_MEASURES; m++) {
                char *key = column(f, w, m);
                if (m == 0) check_int(t, row, key, c->context_count, where);
                else if (m <= ORACLE_N_COUNTERS) check_int(t, row, key, c->c[m - 1], where);
                else {
                    int64_t n = c->c[m - 1 - ORACLE_N_COUNTERS];
                    double want = c->context_count ? (double)n / (double)c->context_count : 0.0;
                    json_t *v = json_object_get(row, key);
                    t->values++;
                    if (!json_is_real(v) || json_real_value(v) != want)
                        mismatch(t, "%s: %s is not %.17g", where, key, want);
                }
                free(key);
            }
        }
}

static void check_row_labels(tally *t, json_t *row, const char *rid, const char *item, int64_t ts,
                             int64_t horizon, const char *where) {
    for (int a = -1; a < ORACLE_N_ACTIONS; a++) {
        char key[64];
        snprintf(key, sizeof key, "label_%s", a < 0 ? "engaged" : oracle_action_names[a]);
        int want = expected_label(rid, item, ts, horizon, a);
        check_int(t, row, key, want, where);
        t->label_ones[a + 1] += want && json_integer_value(json_object_get(row, key)) == 1;
    }
}

static void check_row(tally *t, json_t *row, expected *x, const export_req *r) {
    const char *rid = json_string_value(json_object_get(row, "request_id"));
    const char *item = json_string_value(json_object_get(row, "item"));
    impression_ref *imp = NULL;
    char where[256];
    if (rid) HASH_FIND_STR(impressions, rid, imp);
    if (!imp || !item) { mismatch(t, "row of no counted impression (%s)", rid ? rid : "?"); return; }
    if (x->imp != imp) expect_impression(x, imp, r->lag);
    const oracle_event *e = imp->ev;
    snprintf(where, sizeof where, "%s/%s", rid, item);
    size_t i = 0;
    while (i < x->n && strcmp(x->items[i], item) != 0) i++;
    if (i == x->n) { mismatch(t, "%s: item not shown by the impression", where); return; }
    imp->rows_seen++;
    t->rows++;
    if (e->ts < r->from || e->ts >= r->until) mismatch(t, "%s: ts outside [from, until)", where);
    check_int(t, row, "position", x->positions[i], where);
    check_int(t, row, "ts", e->ts, where);
    const char *q = json_string_value(json_object_get(row, "query"));
    const char *cc = json_string_value(json_object_get(row, "country"));
    const char *g = json_string_value(json_object_get(row, "gender"));
    if (!q || strcmp(q, e->query) || !cc || strcmp(cc, e->country) || !g || strcmp(g, e->gender))
        mismatch(t, "%s: query, country or gender differ", where);
    if (json_object_size(row) != 7 + (size_t)ORACLE_N_FEATURES * ORACLE_N_WINDOWS * N_MEASURES +
                                     1 + ORACLE_N_ACTIONS)
        mismatch(t, "%s: %zu columns", where, json_object_size(row));
    check_row_values(t, row, x, i, where);
    check_row_labels(t, row, rid, item, e->ts, r->horizon, where);
}

/* Every row against the brute force, then coverage: each counted
 * impression in range has exactly its distinct items as rows. */
static tally check_export(const char *path, const export_req *r) {
    tally t = {0};
    expected x = {0};
    FILE *f = fopen(path, "rb");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    impression_ref *imp, *it;
    ck_assert_msg(f != NULL, "cannot read %s", path);
    HASH_ITER(hh, impressions, imp, it) imp->rows_seen = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        json_error_t jerr;
        json_t *row = json_loadb(line, (size_t)n, 0, &jerr);
        if (!row) mismatch(&t, "row is not JSON: %s", jerr.text);
        else check_row(&t, row, &x, r);
        json_decref(row);
    }
    free(line);
    fclose(f);
    free(x.counts);
    HASH_ITER(hh, impressions, imp, it) {
        const char *items[1024];
        int64_t pos[1024];
        int in_range = imp->ev->ts >= r->from && imp->ev->ts < r->until;
        size_t want = in_range ? distinct(imp->ev, items, pos) : 0;
        if ((size_t)imp->rows_seen != want)
            mismatch(&t, "impression %s: %d rows, want %zu", imp->request_id, imp->rows_seen, want);
    }
    fprintf(stderr, "export test: %s: %" PRIu64 " rows, %" PRIu64 " values, %" PRIu64 " mismatches\n",
            path, t.rows, t.values, t.mismatches);
    return t;
}

static size_t count_lines(const char *path) {
    size_t n = 0, got;
    char chunk[65536];
    FILE *f = fopen(path, "rb");
    while (f && (got = fread(chunk, 1, sizeof chunk, f)) > 0)
        for (size_t i = 0; i < got; i++) n += chunk[i] == '\n';
    if (f) fclose(f);
    return n;
}

static const export_req FULL = {0, INT64_MIN, INT64_MAX, DAY_MS, "", 1};
static const export_req SLICE = {LAG_MS, RANGE_FROM, RANGE_UNTIL, 2 * HOUR_MS, "", 0};

/* ------------------------------------------------------------------------ */
/* Tests on generated data.                                                 */
/* ------------------------------------------------------------------------ */

START_TEST(features_and_labels) {
    REQUIRE_SETUP();
    char *in = tu_fmt("'%s'", log_all);
    char *out = run_export(&FULL, in, "full.jsonl");
    ck_assert_msg(out != NULL, "iqp export failed");
    tally t = check_export(out, &FULL);
    ck_assert_msg(t.rows > (uint64_t)IMPRESSIONS * 5, "only %" PRIu64 " rows", t.rows);
    ck_assert_msg(t.mismatches == 0, "%" PRIu64 " values differ from the brute force", t.mismatches);
    /* not vacuous: every label, engaged and each action, is 1 on some rows and 0 on others */
    for (int a = 0; a <= ORACLE_N_ACTIONS; a++)
        ck_assert_msg(t.label_ones[a] > 0 && t.label_ones[a] < t.rows, "label_%s is 1 on %" PRIu64
                      " of %" PRIu64 " rows", a ? oracle_action_names[a - 1] : "engaged",
                      t.label_ones[a], t.rows);
    char *dl = tu_fmt("%s.dead-letter.jsonl", out);
    ck_assert_msg(oracle_n_invalid(orc) > 0, "the log holds no malformed line");
    ck_assert_msg(count_lines(dl) == oracle_n_invalid(orc), "%zu dead letters, oracle rejects %zu",
                  count_lines(dl), oracle_n_invalid(orc));
    free(dl); free(out); free(in);
}
END_TEST

/* Without room for the cached store cells (--cache-mb 0: every read that
 * misses drops what was held) the rows are the brute force's, and the same
 * bytes as with the default cache. */
START_TEST(cache_budget_invariance) {
    REQUIRE_SETUP();
    char *in = tu_fmt("'%s'", log_all);
    export_req none = SLICE;
    none.extra = "--cache-mb 0";
    char *out = run_export(&none, in, "no-cache.jsonl"), *ref = run_export(&SLICE, in, "cache.jsonl");
    ck_assert_msg(out && ref, "iqp export failed");
    tally t = check_export(out, &none);
    ck_assert_msg(t.rows > 0 && t.mismatches == 0, "--cache-mb 0: %" PRIu64 " of %" PRIu64
                  " values differ from the brute force", t.mismatches, t.values);
    size_t n1, n2;
    char *a = tu_read_file(out, &n1), *b = tu_read_file(ref, &n2);
    ck_assert_msg(a && b && n1 == n2 && memcmp(a, b, n1) == 0,
                  "--cache-mb 0 and the default cache wrote different rows");
    free(a); free(b); free(out); free(ref); free(in);
}
END_TEST

/* The export's reads see its store plus the unflushed batch (featcache.h
 * mirrors both, kept exact by the aggregator's delta hook): where batches
 * end must not matter. Flushing after every event, and every 97 events
 * with every cached prefix dropped at each miss (--cache-mb 0: each fill
 * reads store and batch again), gives the brute force's rows and the same
 * bytes as one batch for the whole log (the default flush_events is
 * larger than the log). */
START_TEST(flush_size_invariance) {
    REQUIRE_SETUP();
    char *in = tu_fmt("'%s'", log_all);
    char *ref = run_export(&SLICE, in, "flush-default.jsonl");
    ck_assert_msg(ref != NULL, "iqp export failed");
    size_t nref;
    char *want = tu_read_file(ref, &nref);
    static const struct { int events; const char *cache; } runs[] = {{1, ""}, {97, "--cache-mb 0"}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        char *cfg = tu_fmt("%s/flush-%d.json", tmp, runs[i].events);
        FILE *f = fopen(cfg, "w");
        ck_assert_msg(f != NULL, "cannot write %s", cfg);
        fprintf(f, "{\"flush_events\": %d}\n", runs[i].events);
        fclose(f);
        export_req r = SLICE;
        r.extra = tu_fmt("--config '%s' %s", cfg, runs[i].cache);
        char *name = tu_fmt("flush-%d.jsonl", runs[i].events);
        char *out = run_export(&r, in, name);
        ck_assert_msg(out != NULL, "iqp export failed with flush_events %d", runs[i].events);
        tally t = check_export(out, &r);
        ck_assert_msg(t.rows > 0 && t.mismatches == 0, "flush_events %d: %" PRIu64 " of %" PRIu64
                      " values differ from the brute force", runs[i].events, t.mismatches, t.values);
        size_t n;
        char *got = tu_read_file(out, &n);
        ck_assert_msg(got && want && n == nref && memcmp(got, want, n) == 0,
                      "flush_events %d wrote other rows than one batch", runs[i].events);
        free(got); free(out); free(name); free((char *)r.extra); free(cfg);
    }
    free(want); free(ref); free(in);
}
END_TEST

START_TEST(lag_and_range) {
    REQUIRE_SETUP();
    char *in = tu_fmt("'%s'", log_all);
    char *out = run_export(&SLICE, in, "slice.jsonl");
    ck_assert_msg(out != NULL, "iqp export failed");
    tally t = check_export(out, &SLICE);
    ck_assert_msg(t.rows > 0, "no rows in the slice");
    ck_assert_msg(t.mismatches == 0, "%" PRIu64 " values differ from the brute force", t.mismatches);
    free(out); free(in);
}
END_TEST

/* Splits a CSV line into fields (RFC 4180 quoting); returns the count. */
static size_t csv_fields(char *line, char **fields, size_t max) {
    size_t n = 0;
    char *p = line, *w;
    while (n < max) {
        fields[n++] = w = p;
        if (*p == '"') {
            for (p++;; p++) {
                if (*p == '"' && p[1] == '"') { *w++ = '"'; p++; }
                else if (*p == '"') { p++; break; }
                else if (!*p) break;
                else *w++ = *p;
            }
        } else {
            while (*p && *p != ',' && *p != '\n') *w++ = *p++;
        }
        char sep = *p;
        *w = '\0';
        if (sep != ',') break;
        p++;
    }
    return n;
}

/* The JSON value as CSV would print it. */
static char *as_text(json_t *v) {
    if (json_is_string(v)) return strdup(json_string_value(v));
    if (json_is_integer(v)) return tu_fmt("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    return tu_fmt("%.17g", json_real_value(v));
}

START_TEST(csv_matches_jsonl) {
    REQUIRE_SETUP();
    char *in = tu_fmt("'%s'", log_all);
    export_req csv = SLICE;
    csv.extra = "--format csv";
    char *json_out = run_export(&SLICE, in, "slice2.jsonl");
    char *csv_out = run_export(&csv, in, "slice.csv");
    ck_assert(json_out && csv_out);
    FILE *fj = fopen(json_out, "rb"), *fc = fopen(csv_out, "rb");
    char *lj = NULL, *lc = NULL, *header[512], *fields[512];
    size_t cj = 0, cc = 0, n_header, rows = 0, differ = 0;
    ck_assert(getline(&lc, &cc, fc) > 0);
    char *header_line = strdup(lc);
    n_header = csv_fields(header_line, header, 512);
    ck_assert_msg(n_header > 300, "CSV header has %zu columns", n_header);
    while (getline(&lj, &cj, fj) > 0) {
        ck_assert_msg(getline(&lc, &cc, fc) > 0, "CSV has fewer rows");
        json_t *row = json_loads(lj, 0, NULL);
        ck_assert(row != NULL);
        ck_assert_msg(csv_fields(lc, fields, 512) == n_header, "CSV row width differs");
        ck_assert_msg(json_object_size(row) == n_header, "JSONL and CSV columns differ");
        for (size_t k = 0; k < n_header; k++) {
            json_t *v = json_object_get(row, header[k]);
            ck_assert_msg(v != NULL, "JSONL lacks column %s", header[k]);
            char *text = as_text(v);
            int same = strcmp(text, fields[k]) == 0 ||
                       (json_is_real(v) && strtod(fields[k], NULL) == json_real_value(v));
            if (!same && differ++ < 5)
                fprintf(stderr, "export test: csv %s = '%s', jsonl '%s'\n", header[k], fields[k], text);
            free(text);
        }
        json_decref(row);
        rows++;
    }
    ck_assert_msg(getline(&lc, &cc, fc) < 0, "CSV has more rows");
    ck_assert_msg(rows > 0 && differ == 0, "%zu CSV values differ over %zu rows", differ, rows);
    fclose(fj); fclose(fc);
    free(lj); free(lc); free(header_line); free(json_out); free(csv_out); free(in);
}
END_TEST

static char *sorted_copy(const char *path) {
    char *out = tu_fmt("%s.sorted", path);
    char *cmd = tu_fmt("LC_ALL=C sort '%s' > '%s'", path, out);
    ck_assert(run_ok(cmd));
    free(cmd);
    return out;
}

START_TEST(files_merged_by_time) {
    REQUIRE_SETUP();
    export_req r = FULL;
    r.extra = "--no-rates"; /* the values are checked elsewhere; this is about order */
    char *one = tu_fmt("'%s'", log_all), *two = tu_fmt("'%s' --events '%s'", log_imps, log_acts);
    char *a = run_export(&r, one, "one.jsonl"), *b = run_export(&r, two, "two.jsonl");
    ck_assert(a && b);
    ck_assert_msg(count_lines(a) > (size_t)IMPRESSIONS * 5, "too few rows");
    char *sa = sorted_copy(a), *sb = sorted_copy(b), *cmp = tu_fmt("cmp -s '%s' '%s'", sa, sb);
    ck_assert_msg(tu_run(cmp, NULL) == 0,
                  "two files (impressions, actions) give other rows than one mixed file");
    free(cmp); free(sa); free(sb); free(a); free(b); free(one); free(two);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Hand-written cases.                                                      */
/* ------------------------------------------------------------------------ */

#define T0 1718000000000LL

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static char *impression(const char *id, int64_t ts, const char *rid, const char *items) {
    return tu_fmt("{\"schema\":\"impression.v1\",\"event_id\":\"%s\",\"ts\":%" PRId64 ",\"request_id\":"
                  "\"%s\",\"query\":\"Red  Dress\",\"user\":{\"country\":\"us\",\"gender\":\"F\"},"
                  "\"items\":%s}\n", id, ts, rid, items);
}

static char *action(const char *id, int64_t ts, const char *rid, const char *item, const char *act) {
    return tu_fmt("{\"schema\":\"action.v1\",\"event_id\":\"%s\",\"ts\":%" PRId64 ",\"request_id\":"
                  "\"%s\",\"query\":\"red dress\",\"user\":{\"country\":\"US\",\"gender\":\"female\"},"
                  "\"item\":\"%s\",\"action\":\"%s\"}\n", id, ts, rid, item, act);
}

/* The rows of an export, by "request_id/item". */
typedef struct row_ref {
    char *key;
    json_t *row;
    UT_hash_handle hh;
} row_ref;

static row_ref *load_rows(const char *path) {
    row_ref *rows = NULL;
    FILE *f = fopen(path, "rb");
    char *line = NULL;
    size_t cap = 0;
    ck_assert(f != NULL);
    while (getline(&line, &cap, f) > 0) {
        row_ref *r = calloc(1, sizeof *r);
        r->row = json_loads(line, 0, NULL);
        ck_assert(r->row != NULL);
        r->key = tu_fmt("%s/%s", json_string_value(json_object_get(r->row, "request_id")),
                        json_string_value(json_object_get(r->row, "item")));
        HASH_ADD_KEYPTR(hh, rows, r->key, strlen(r->key), r);
    }
    free(line);
    fclose(f);
    return rows;
}

static void free_rows(row_ref *rows) {
    row_ref *r, *t;
    HASH_ITER(hh, rows, r, t) { HASH_DEL(rows, r); free(r->key); json_decref(r->row); free(r); }
}

static int64_t value(row_ref *rows, const char *key, const char *col) {
    row_ref *r;
    HASH_FIND_STR(rows, key, r);
    ck_assert_msg(r != NULL, "no row %s", key);
    json_t *v = json_object_get(r->row, col);
    ck_assert_msg(json_is_number(v), "row %s has no number %s", key, col);
    return json_is_integer(v) ? json_integer_value(v) : (int64_t)json_real_value(v);
}

START_TEST(leakage) {
    REQUIRE_SETUP();
    char *log = tu_fmt("%s/leak.jsonl", tmp), *out = tu_fmt("%s/leak-rows.jsonl", tmp);
    /* in file (and time) order; r1/b gets actions at the edges of its label horizon
     * [T0, T0 + 24 h), the default */
    char *lines[9] = {action("actb0", T0 - 1, "r1", "b", "screenshot"),
                      impression("imp1", T0, "r1", "[\"a\",\"b\",\"a\"]"),
                      action("actb1", T0, "r1", "b", "closeup"),
                      action("act1", T0 + 10000, "r1", "a", "click"),
                      impression("imp2", T0 + HOUR_MS, "r2", "[{\"id\":\"a\",\"pos\":4}]"),
                      action("actb2", T0 + DAY_MS - 1, "r1", "b", "long_click"),
                      action("actb3", T0 + DAY_MS, "r1", "b", "download"),
                      impression("imp3", T0 + 24 * HOUR_MS + HOUR_MS / 2, "r3", "[\"c\"]"),
                      action("act2", T0 + 25 * HOUR_MS, "r1", "a", "save")};
    char *text = tu_fmt("%s%s%s%s%s%s%s%s%s", lines[0], lines[1], lines[2], lines[3], lines[4],
                        lines[5], lines[6], lines[7], lines[8]);
    write_text(log, text);
    char *cmd = tu_fmt("%s export --quiet --events '%s' --out '%s'", tu_iqp(), log, out);
    ck_assert(run_ok(cmd));
    row_ref *rows = load_rows(out);
    ck_assert_int_eq(HASH_COUNT(rows), 4); /* a listed twice is one row */
    /* the impression's own click: in its label, not in its features */
    ck_assert_int_eq(value(rows, "r1/a", "label_click"), 1);
    ck_assert_int_eq(value(rows, "r1/a", "label_engaged"), 1);
    ck_assert_int_eq(value(rows, "r1/a", "label_save"), 0);  /* 25 h later: past the horizon */
    ck_assert_int_eq(value(rows, "r1/a", "q_item.1d.click"), 0);
    ck_assert_int_eq(value(rows, "r1/a", "q_item.1d.impression"), 0);
    ck_assert_int_eq(value(rows, "r1/a", "q_item.1d.context_count"), 0);
    ck_assert_int_eq(value(rows, "r1/a", "position"), 0);
    /* the default horizon is [ts, ts + 24 h): an action at ts labels and is not a feature;
     * one 1 ms before ts is a feature and no label; 24 h - 1 ms labels, 24 h does not */
    ck_assert_int_eq(value(rows, "r1/b", "position"), 1);
    ck_assert_int_eq(value(rows, "r1/b", "label_closeup"), 1);
    ck_assert_int_eq(value(rows, "r1/b", "q_item.1d.closeup"), 0);
    ck_assert_int_eq(value(rows, "r1/b", "label_screenshot"), 0);
    ck_assert_int_eq(value(rows, "r1/b", "q_item.1d.screenshot"), 1);
    ck_assert_int_eq(value(rows, "r1/b", "q_item.1d.engaged"), 1);
    ck_assert_int_eq(value(rows, "r1/b", "label_long_click"), 1);
    ck_assert_int_eq(value(rows, "r1/b", "label_download"), 0);
    ck_assert_int_eq(value(rows, "r1/b", "label_engaged"), 1);
    ck_assert_int_eq(value(rows, "r1/b", "label_click"), 0);
    /* an hour later, the same query: the click is a feature now */
    ck_assert_int_eq(value(rows, "r2/a", "q_item.1d.click"), 1);
    ck_assert_int_eq(value(rows, "r2/a", "qc_item.1d.engaged"), 1);
    ck_assert_int_eq(value(rows, "r2/a", "q_item.1d.impression"), 1);
    ck_assert_int_eq(value(rows, "r2/a", "q_item.1d.context_count"), 1);
    ck_assert_int_eq(value(rows, "r2/a", "q_item.1d.iqp_click"), 1);
    ck_assert_int_eq(value(rows, "r2/a", "label_click"), 0);
    ck_assert_int_eq(value(rows, "r2/a", "position"), 4);
    /* 24.5 h later the 1d window has let the first hour go, 7d has not */
    ck_assert_int_eq(value(rows, "r3/c", "q_item.1d.context_count"), 1);
    ck_assert_int_eq(value(rows, "r3/c", "q_item.7d.context_count"), 2);
    free_rows(rows);
    free(cmd);
    /* with features as of two hours before: the click is not yet there */
    cmd = tu_fmt("%s export --quiet --events '%s' --out '%s' --lag-ms %lld", tu_iqp(), log, out,
                 2 * HOUR_MS);
    ck_assert(run_ok(cmd));
    rows = load_rows(out);
    ck_assert_int_eq(value(rows, "r2/a", "q_item.1d.click"), 0);
    ck_assert_int_eq(value(rows, "r2/a", "q_item.1d.context_count"), 0);
    ck_assert_int_eq(value(rows, "r1/a", "label_click"), 1);
    free_rows(rows);
    for (int i = 0; i < 9; i++) free(lines[i]);
    free(text); free(cmd); free(log); free(out);
}
END_TEST

/* Lines of the log whose ts is an integer below before. */
static void write_events_before(const char *path, int64_t before) {
    FILE *in = fopen(log_all, "rb"), *out = fopen(path, "wb");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    ck_assert(in && out);
    while ((n = getline(&line, &cap, in)) > 0) {
        json_t *j = json_loadb(line, (size_t)n, 0, NULL);
        json_t *ts = json_object_get(j, "ts");
        if (json_is_integer(ts) && json_integer_value(ts) < before) fwrite(line, 1, (size_t)n, out);
        json_decref(j);
    }
    free(line);
    fclose(in);
    fclose(out);
}

/* Compares every line of a lookup with the exported row of the item. */
static void compare_lookup(const char *output, json_t *const *rows, const char *const *items,
                           size_t n_items, tally *t) {
    const char *p = output;
    size_t lines = 0;
    while (*p) {
        const char *nl = strchr(p, '\n');
        json_t *o = json_loadb(p, nl ? (size_t)(nl - p) : strlen(p), 0, NULL);
        ck_assert(o != NULL);
        const char *item = json_string_value(json_object_get(o, "item"));
        size_t i = 0;
        while (i < n_items && strcmp(items[i], item)) i++;
        ck_assert_msg(i < n_items, "lookup printed an item not asked for");
        const char *key;
        json_t *v;
        json_object_foreach(o, key, v) {
            if (!json_is_number(v)) continue;
            char *col = tu_fmt("%s.%s.%s", json_string_value(json_object_get(o, "feature")),
                               json_string_value(json_object_get(o, "window")), key);
            json_t *e = json_object_get(rows[i], col);
            t->values++;
            if (!e || json_number_value(e) != json_number_value(v))
                mismatch(t, "lookup %s = %.17g, export %.17g", col, json_number_value(v),
                         e ? json_number_value(e) : -1.0);
            free(col);
        }
        json_decref(o);
        lines++;
        p = nl ? nl + 1 : p + strlen(p);
    }
    if (lines != (size_t)ORACLE_N_FEATURES * ORACLE_N_WINDOWS * n_items)
        mismatch(t, "lookup printed %zu lines", lines);
}

/* One impression of the slice export: its rows, back-to-back. */
static size_t impression_rows(const char *path, size_t skip_impressions, json_t **rows,
                              const char **items, size_t max) {
    FILE *f = fopen(path, "rb");
    char *line = NULL, *rid = NULL;
    size_t cap = 0, n = 0, seen = 0;
    ck_assert(f != NULL);
    while (getline(&line, &cap, f) > 0 && n < max) {
        json_t *row = json_loads(line, 0, NULL);
        const char *r = json_string_value(json_object_get(row, "request_id"));
        if (!rid || strcmp(rid, r)) {
            if (n) { json_decref(row); break; }
            free(rid);
            rid = strdup(r);
            seen++;
        }
        if (seen <= skip_impressions) { json_decref(row); continue; }
        rows[n] = row;
        items[n++] = json_string_value(json_object_get(row, "item"));
    }
    free(line);
    free(rid);
    fclose(f);
    return n;
}

START_TEST(parity_with_lookup) {
    REQUIRE_SETUP();
    char *in = tu_fmt("'%s'", log_all);
    char *out = run_export(&SLICE, in, "parity.jsonl");
    ck_assert(out != NULL);
    size_t total = count_lines(out);
    tally t = {0};
    for (size_t k = 0; k < 3; k++) {
        json_t *rows[1024];
        const char *items[1024];
        size_t n = impression_rows(out, k * total / 30, rows, items, 1024);
        ck_assert_msg(n > 0, "no impression %zu", k);
        int64_t as_of = json_integer_value(json_object_get(rows[0], "ts")) - LAG_MS;
        char *before = tu_fmt("%s/before-%zu.jsonl", tmp, k), *store = tu_fmt("%s/store-%zu", tmp, k);
        write_events_before(before, as_of);
        char *cmd = tu_fmt("%s backfill --quiet --store '%s' --dead-letter /dev/null '%s' 2>/dev/null",
                           tu_iqp(), store, before);
        ck_assert(run_ok(cmd));
        free(cmd);
        char *q = tu_fmt("%s", json_string_value(json_object_get(rows[0], "query")));
        cmd = tu_fmt("%s lookup --store '%s' --as-of %lld --query '%s' --country %s "
                     "--gender %s --", tu_iqp(), store, (long long)as_of, q,
                     json_string_value(json_object_get(rows[0], "country")),
                     json_string_value(json_object_get(rows[0], "gender")));
        for (size_t i = 0; i < n; i++) {
            char *more = tu_fmt("%s '%s'", cmd, items[i]);
            free(cmd);
            cmd = more;
        }
        char *output = NULL;
        ck_assert_msg(tu_run(cmd, &output) == 0, "iqp lookup failed: %s", cmd);
        compare_lookup(output, rows, items, n, &t);
        for (size_t i = 0; i < n; i++) json_decref(rows[i]);
        free(output); free(cmd); free(q); free(before);
        tu_rmrf(store);
        free(store);
    }
    fprintf(stderr, "export test: parity: %" PRIu64 " values, %" PRIu64 " mismatches\n", t.values,
            t.mismatches);
    ck_assert_msg(t.values > 0 && t.mismatches == 0, "%" PRIu64 " exported values differ from iqp lookup",
                  t.mismatches);
    free(out); free(in);
}
END_TEST

START_TEST(bad_input) {
    REQUIRE_SETUP();
    char *log = tu_fmt("%s/bad.jsonl", tmp), *out = tu_fmt("%s/bad-rows.jsonl", tmp);
    char *dl = tu_fmt("%s/bad-dl.jsonl", tmp);
    char *l1 = impression("b1", T0 + HOUR_MS, "r1", "[\"a\"]");
    char *l3 = impression("b3", T0, "r3", "[\"a\"]");
    char *l4 = impression("b4", now_ms() + DAY_MS, "r4", "[\"a\"]");
    char *l5 = action("b5", T0 + HOUR_MS + 5, "r1", "a", "save");
    char *text = tu_fmt("%s{\"schema\": oops\n%s%s%s", l1, l3, l4, l5);
    write_text(log, text);
    char *cmd = tu_fmt("%s export --quiet --max-disorder-ms 60000 --dead-letter '%s' --events '%s' "
                       "--out '%s'", tu_iqp(), dl, log, out);
    ck_assert(run_ok(cmd));
    row_ref *rows = load_rows(out);
    ck_assert_int_eq(HASH_COUNT(rows), 1);
    ck_assert_int_eq(value(rows, "r1/a", "label_save"), 1);
    free_rows(rows);
    char *records = tu_read_file(dl, NULL);
    ck_assert(records != NULL);
    ck_assert_int_eq(count_lines(dl), 3);
    const char *codes[3] = {"invalid_json", "out_of_order", "future_event"};
    const int positions[3] = {2, 3, 4};
    const char *p = records;
    for (int i = 0; i < 3; i++) {
        json_t *r = json_loadb(p, strcspn(p, "\n"), 0, NULL);
        ck_assert(r != NULL);
        ck_assert_str_eq(json_string_value(json_object_get(r, "code")), codes[i]);
        ck_assert_int_eq(json_integer_value(json_object_get(r, "position")), positions[i]);
        ck_assert_str_eq(json_string_value(json_object_get(r, "source")), log);
        ck_assert(strlen(json_string_value(json_object_get(r, "reason"))) > strlen(codes[i]));
        ck_assert(json_is_string(json_object_get(r, "raw")));
        json_decref(r);
        p += strcspn(p, "\n") + 1;
    }
    free(records); free(text); free(l1); free(l3); free(l4); free(l5);
    free(cmd); free(log); free(out); free(dl);
}
END_TEST

/* The categories of an export summary line (cli/export.c print_summary). */
typedef struct export_summary {
    unsigned long long files, lines, impressions, actions, duplicate, late, bad, out_of_order,
        future, past_until, unprocessed;
} export_summary;

static int parse_export_summary(const char *text, export_summary *s) {
    const char *p = text ? strstr(text, "export: ") : NULL;
    if (!p) return -1;
    return sscanf(p, "export: %llu files, %llu lines = %llu impressions + %llu actions counted + "
                     "%llu duplicate + %llu late + %llu bad -> %*s (%llu out of order, %llu future) "
                     "+ %llu past --until (not counted) + %llu unprocessed (stopped);",
                  &s->files, &s->lines, &s->impressions, &s->actions, &s->duplicate, &s->late,
                  &s->bad, &s->out_of_order, &s->future, &s->past_until, &s->unprocessed) == 11
               ? 0 : -1;
}

typedef struct backfill_summary {
    unsigned long long lines, counted, duplicate, late, bad;
} backfill_summary;

/* Backfills log into a fresh store; its summary's categories. */
static void backfill_categories(const char *log, const char *name, backfill_summary *b) {
    char *store = tu_fmt("%s/%s-store", tmp, name), *out = NULL;
    char *cmd = tu_fmt("%s backfill --quiet --store '%s' --dead-letter '%s/%s-dl.jsonl' '%s' 2>&1",
                       tu_iqp(), store, tmp, name, log);
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    const char *p = out ? strstr(out, "backfill: ") : NULL;
    unsigned long long files, skipped, resumed;
    ck_assert_msg(p && sscanf(p, "backfill: %llu files (%llu skipped), %llu lines (%llu already "
                                 "counted), %llu counted, %llu duplicate, %llu late, %llu bad",
                              &files, &skipped, &b->lines, &resumed, &b->counted, &b->duplicate,
                              &b->late, &b->bad) == 8,
                  "unexpected backfill summary: '%s'", out ? out : "");
    tu_rmrf(store);
    free(store); free(out); free(cmd);
}

/* Exports log with extra flags; the summary, checked to add up to the
 * lines of the file and the dead letters to the records written. */
static export_summary export_categories(const char *log, const char *name, const char *extra) {
    char *out = tu_fmt("%s/%s-rows.csv", tmp, name), *dl = tu_fmt("%s/%s-edl.jsonl", tmp, name);
    char *cmd = tu_fmt("%s export --quiet --format csv --no-rates --events '%s' --out '%s' "
                       "--dead-letter '%s' %s 2>&1", tu_iqp(), log, out, dl, extra);
    char *text = NULL;
    export_summary s;
    ck_assert_int_eq(tu_run(cmd, &text), 0);
    ck_assert_msg(parse_export_summary(text, &s) == 0, "unexpected export summary: '%s'", text);
    ck_assert_msg(s.lines == s.impressions + s.actions + s.duplicate + s.late + s.bad +
                                 s.past_until + s.unprocessed,
                  "the summary does not add up: '%s'", text);
    ck_assert_msg(s.lines == count_lines(log), "%llu lines in the summary, %zu in %s", s.lines,
                  count_lines(log), log);
    ck_assert_msg(s.bad == count_lines(dl), "%llu bad in the summary, %zu dead letters", s.bad,
                  count_lines(dl));
    ck_assert(s.unprocessed == 0);
    free(out); free(dl); free(cmd); free(text);
    return s;
}

START_TEST(summary_adds_up) {
    REQUIRE_SETUP();
    oracle_stats o = oracle_get_stats(orc);
    backfill_summary b;
    /* The fixture's log, 2 min out of time order: what a line became can
     * depend on the order (a repeated action's earlier copy read second is
     * "counted" in file order, moving the count; in time order the later
     * copy is the duplicate), never the totals. */
    export_summary s = export_categories(log_all, "sum-all", "");
    backfill_categories(log_all, "sum-all", &b);
    ck_assert_uint_eq(s.lines, b.lines);
    ck_assert_uint_eq(s.bad, b.bad);
    ck_assert_uint_eq(s.bad, o.invalid);
    ck_assert_uint_eq(s.late, b.late);
    ck_assert_uint_eq(s.impressions, o.impressions);
    ck_assert_uint_eq(s.impressions + s.actions + s.duplicate, b.counted + b.duplicate);
    ck_assert(s.past_until == 0 && s.duplicate > 0);
    /* In time order every category equals backfill's and the brute force's. */
    char *sorted = tu_fmt("%s/sorted.jsonl", tmp);
    char *cmd = tu_fmt("%s gen --seed %d --impressions %d --start %lld --span 36h --disorder 0 "
                       "--out '%s' 2>/dev/null", tu_iqp(), SEED + 1, IMPRESSIONS / 2,
                       (long long)START_MS, sorted);
    ck_assert(run_ok(cmd));
    oracle *ordered = oracle_new(now_ms());
    ck_assert_int_eq(oracle_load_file(ordered, sorted), 0);
    oracle_stats os = oracle_get_stats(ordered);
    oracle_free(ordered);
    s = export_categories(sorted, "sum-sorted", "");
    backfill_categories(sorted, "sum-sorted", &b);
    ck_assert_uint_eq(s.impressions + s.actions, b.counted);
    ck_assert_uint_eq(s.duplicate, b.duplicate);
    ck_assert_uint_eq(s.late, b.late);
    ck_assert_uint_eq(s.bad, b.bad);
    ck_assert_uint_eq(s.impressions, os.impressions);
    ck_assert_uint_eq(s.actions, os.actions);
    ck_assert_uint_eq(s.duplicate, os.duplicate);
    /* --until: what is read past until - lag is its own category. */
    char *until = tu_fmt("--until %lld", (long long)(START_MS + 20 * HOUR_MS));
    s = export_categories(sorted, "sum-until", until);
    ck_assert_msg(s.past_until > 0, "no events past --until in the summary");
    ck_assert(s.impressions + s.actions < b.counted);
    free(until); free(cmd); free(sorted);
}
END_TEST

/* Runs iqp export with args; its exit status, stderr in *err. */
static int export_status(const char *args, char **err) {
    char *cmd = tu_fmt("%s export %s 2>&1 >/dev/null", tu_iqp(), args);
    int rc = tu_run(cmd, err);
    free(cmd);
    return rc;
}

static void expect_status(const char *args, int want, const char *mention) {
    char *err = NULL;
    int rc = export_status(args, &err);
    ck_assert_msg(rc == want, "iqp export %s: exit %d, want %d", args, rc, want);
    ck_assert_msg(err && strstr(err, mention), "iqp export %s: message '%s' does not name '%s'",
                  args, err ? err : "", mention);
    free(err);
}

/* Runs iqp export with args and its stderr (and stdout) on a terminal;
 * everything it wrote there, once it has exited with status 0. */
static char *export_on_tty(const char *const *args) {
    const char *argv[16] = {tu_iqp(), "export"};
    size_t n = 2;
    for (; *args && n < 15; args++) argv[n++] = *args;
    argv[n] = NULL;
    int master;
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    ck_assert_msg(pid >= 0, "forkpty failed");
    if (pid == 0) {
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    char *text = NULL, chunk[4096];
    size_t len = 0;
    ssize_t got;
    /* until the child's side is closed: EIO on Linux once it has exited */
    while ((got = read(master, chunk, sizeof chunk)) > 0) {
        text = realloc(text, len + (size_t)got + 1);
        memcpy(text + len, chunk, (size_t)got);
        len += (size_t)got;
        text[len] = '\0';
    }
    close(master);
    int status;
    ck_assert(waitpid(pid, &status, 0) == pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "iqp export on a tty failed");
    return text ? text : strdup("");
}

START_TEST(progress_and_summary) {
    REQUIRE_SETUP();
    char *log = tu_fmt("%s/tty.jsonl", tmp), *out = tu_fmt("%s/tty-rows.jsonl", tmp);
    char *l1 = impression("t1", T0, "r1", "[\"a\"]"), *l2 = action("t2", T0 + 5, "r1", "a", "click");
    char *text = tu_fmt("%s%s", l1, l2);
    write_text(log, text);
    /* a terminal: a progress line (\r-led, rewritten in place), then the summary */
    const char *loud[] = {"--events", log, "--out", out, NULL};
    char *tty = export_on_tty(loud);
    ck_assert_msg(strstr(tty, "\rexport: 2 lines, 1 rows, "), "no progress line on a tty: '%s'", tty);
    ck_assert_msg(strstr(tty, "export: 1 files, 2 lines = 1 impressions + 1 actions counted + 0 duplicate + 0 late + 0 bad -> "), "no summary line: '%s'", tty);
    ck_assert_msg(strstr(tty, "1 impressions -> 1 rows -> "), "summary lacks the rows: '%s'", tty);
    free(tty);
    /* --quiet: the summary only */
    const char *quiet[] = {"--quiet", "--events", log, "--out", out, NULL};
    tty = export_on_tty(quiet);
    ck_assert_msg(!strstr(tty, "\rexport: "), "--quiet printed progress: '%s'", tty);
    ck_assert_msg(strstr(tty, "export: 1 files, 2 lines = 1 impressions + 1 actions counted + 0 duplicate + 0 late + 0 bad -> "), "--quiet: no summary: '%s'", tty);
    free(tty);
    /* not a terminal: the summary only */
    char *cmd = tu_fmt("%s export --events '%s' --out '%s' 2>&1", tu_iqp(), log, out), *piped = NULL;
    ck_assert_int_eq(tu_run(cmd, &piped), 0);
    ck_assert_msg(piped && !strchr(piped, '\r'), "progress on a pipe: '%s'", piped ? piped : "");
    ck_assert_msg(strstr(piped, "export: 1 files, 2 lines = 1 impressions + 1 actions counted + 0 duplicate + 0 late + 0 bad -> "), "no summary: '%s'", piped);
    free(piped); free(cmd); free(text); free(l1); free(l2); free(log); free(out);
}
END_TEST

START_TEST(usage) {
    REQUIRE_SETUP();
    char *out = tu_fmt("%s/u.jsonl", tmp), *args;
    char *help = NULL, *cmd = tu_fmt("%s export --help", tu_iqp());
    ck_assert_int_eq(tu_run(cmd, &help), 0); /* on stdout, exit 0 */
    const char *flags[] = {"--events FILE", "--out FILE", "--from MS", "--until MS",
                           "--format jsonl|csv", "--lag-ms N", "--label-horizon-ms N",
                           "--max-disorder-ms N", "--dead-letter FILE", "--quiet"};
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++)
        ck_assert_msg(help && strstr(help, flags[i]), "--help does not describe %s", flags[i]);
    free(help); free(cmd);
    args = tu_fmt("--events '%s' --out '%s' --bogus", log_all, out);
    expect_status(args, 2, "unknown option");
    free(args);
    args = tu_fmt("--events '%s'", log_all);
    expect_status(args, 2, "--out");
    free(args);
    args = tu_fmt("--events '%s' --out '%s' --from 10 --until 5", log_all, out);
    expect_status(args, 2, "--from");
    free(args);
    args = tu_fmt("--events '%s' --out '%s' --format xml", log_all, out);
    expect_status(args, 2, "--format");
    free(args);
    args = tu_fmt("--events '%s' --out '%s' --lag-ms -5", log_all, out);
    expect_status(args, 2, "--lag-ms");
    free(args);
    args = tu_fmt("--events '%s' --out '%s' --lag-ms 1h", log_all, out);
    expect_status(args, 2, "--lag-ms");
    free(args);
    args = tu_fmt("--events '%s' --out '%s' --label-horizon-ms 0", log_all, out);
    expect_status(args, 2, "--label-horizon-ms");
    free(args);
    args = tu_fmt("--events '%s' --out '%s' --until yesterday", log_all, out);
    expect_status(args, 2, "--until");
    free(args);
    args = tu_fmt("--events '%s' --out '%s' --max-disorder-ms -1", log_all, out);
    expect_status(args, 2, "--max-disorder-ms");
    free(args);
    args = tu_fmt("--events '%s' --out", log_all);
    expect_status(args, 2, "--out");
    free(args);
    args = tu_fmt("--out '%s'", out);
    expect_status(args, 2, "input");
    free(args);
    args = tu_fmt("--events '%s/missing.jsonl' --out '%s'", tmp, out);
    expect_status(args, 1, "missing.jsonl");
    free(args);
    args = tu_fmt("--events '%s' --out '%s/no-such-dir/rows.jsonl' --dead-letter /dev/null", log_all, tmp);
    expect_status(args, 1, "no-such-dir");
    free(args);
    /* a directory (not a regular file) as --out: exit 1 before anything is created */
    char *dir = tu_fmt("%s/a-dir", tmp), *dl = tu_fmt("%s.dead-letter.jsonl", dir);
    ck_assert(mkdir(dir, 0700) == 0);
    args = tu_fmt("--events '%s' --out '%s'", log_all, dir);
    expect_status(args, 1, "not a regular file");
    ck_assert_msg(access(dl, F_OK) != 0, "a bad --out left %s", dl);
    rmdir(dir);
    free(args); free(dir); free(dl);
    free(out);
}
END_TEST

/* Entries of dir whose name starts with prefix. */
static int entries_starting(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d))) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    if (d) closedir(d);
    return n;
}

START_TEST(failed_run_leaves_nothing) {
    REQUIRE_SETUP();
    char *dir = tu_fmt("%s/failed", tmp), *out = tu_fmt("%s/rows.csv", dir);
    char *dl = tu_fmt("%s.dead-letter.jsonl", out), *gz = tu_fmt("%s/cut.jsonl.gz", dir), *args;
    ck_assert(mkdir(dir, 0700) == 0);
    /* A gzip file cut short: the run fails after rows and dead letters of
     * the first (good) file were written. */
    char *cmd = tu_fmt("gzip -c '%s' | head -c 20000 > '%s'", log_all, gz);
    ck_assert(run_ok(cmd));
    args = tu_fmt("--events '%s' '%s' --out '%s'", log_all, gz, out);
    expect_status(args, 1, "cut.jsonl.gz");
    ck_assert_msg(access(out, F_OK) != 0, "a failed run left %s", out);
    ck_assert_msg(access(dl, F_OK) != 0, "a failed run left %s", dl);
    ck_assert_msg(entries_starting(dir, "rows.csv") == 0, "a failed run left a partial file");
    /* What existed before stays as it was: --out untouched, the dead-letter
     * file without the records the failed run appended. */
    write_text(out, "earlier rows\n");
    write_text(dl, "{\"earlier\":1}\n");
    expect_status(args, 1, "cut.jsonl.gz");
    char *kept = tu_read_file(out, NULL), *kept_dl = tu_read_file(dl, NULL);
    ck_assert_str_eq(kept, "earlier rows\n");
    ck_assert_str_eq(kept_dl, "{\"earlier\":1}\n");
    free(kept); free(kept_dl); free(args);
    /* A missing input: nothing created either. */
    unlink(out), unlink(dl);
    args = tu_fmt("--events '%s' '%s/missing.jsonl' --out '%s'", log_all, dir, out);
    expect_status(args, 1, "missing.jsonl");
    ck_assert(access(out, F_OK) != 0 && access(dl, F_OK) != 0);
    ck_assert_int_eq(entries_starting(dir, "rows.csv"), 0);
    free(args);
    /* --out in a directory that does not exist: the message names --out,
     * not the dead-letter file that would go next to it. */
    char *err = NULL;
    args = tu_fmt("--events '%s' --out /nonexistent/x.csv", log_all);
    ck_assert_int_eq(export_status(args, &err), 1);
    ck_assert_msg(err && strstr(err, "/nonexistent/x.csv") && !strstr(err, "dead-letter"),
                  "--out /nonexistent/x.csv: '%s'", err ? err : "");
    free(err); free(args);
    /* A run that succeeds replaces --out whole and leaves no partial file. */
    write_text(out, "earlier rows\n");
    args = tu_fmt("--events '%s' --out '%s' --format csv --no-rates", log_all, out);
    char *ok = tu_fmt("%s export --quiet %s", tu_iqp(), args);
    ck_assert(run_ok(ok));
    ck_assert_uint_gt(count_lines(out), HASH_COUNT(impressions)); /* a header and rows */
    char *head = tu_read_file(out, NULL);
    ck_assert_msg(head && strncmp(head, "request_id,", 11) == 0, "--out was not replaced");
    ck_assert_int_eq(entries_starting(dir, "rows.csv.partial"), 0);
    free(head); free(ok); free(args);
    tu_rmrf(dir);
    free(cmd); free(dir); free(out); free(dl); free(gz);
}
END_TEST

static Suite *export_suite(void) {
    Suite *s = suite_create("export");
    TCase *tc = tcase_create("export");
    tcase_add_unchecked_fixture(tc, export_setup, export_teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, features_and_labels);
    tcase_add_test(tc, lag_and_range);
    tcase_add_test(tc, cache_budget_invariance);
    tcase_add_test(tc, flush_size_invariance);
    tcase_add_test(tc, csv_matches_jsonl);
    tcase_add_test(tc, files_merged_by_time);
    tcase_add_test(tc, leakage);
    tcase_add_test(tc, parity_with_lookup);
    tcase_add_test(tc, bad_input);
    tcase_add_test(tc, progress_and_summary);
    tcase_add_test(tc, summary_adds_up);
    tcase_add_test(tc, usage);
    tcase_add_test(tc, failed_run_leaves_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(export_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

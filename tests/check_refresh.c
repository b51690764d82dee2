/* check_refresh.c -- the batch refresher (refresher/, `iqp refresh`)
 * against an independent brute force.
 *
 * Design
 * ------
 * An unchecked fixture (run once, in the parent) generates a 30 h log with
 * `iqp gen` (so hourly windows slide over data) and a sparse 2 h log six
 * days before it (the day just outside 7d, inside 90d), backfills both
 * into a store with `iqp backfill`, and feeds the same files to the oracle
 * (tests/oracle.c), which shares no code with the product.
 *
 * The brute force: every context of every feature is enumerated from the
 * oracle's decoded events (queries x countries x genders), and
 * oracle_lookup gives its context_count and every item's counters per
 * window. From those counts alone this file computes what refresh.h
 * specifies -- priors (feature-wide sums), rates, smoothed rates, top-K
 * lists (value descending, then item id bytes ascending) -- with its own
 * code, and compares every number with the refresher's result, exactly
 * (doubles bit for bit), at two as-of times one hourly bucket apart:
 * the watermark and the start of the next hour (the 1d window drops its
 * oldest hour; the test asserts that some count changed).
 *
 * Tests, in order:
 *   refresh_vs_oracle   contexts, entities, counts, rates, priors,
 *                       smoothed rates and top-K lists, for three parameter
 *                       sets (smoothing, K, ranking measure, threads) per
 *                       as-of, recomputed on one scan
 *   matches_lookup      counts equal iqp_features_read_at (what `iqp
 *                       lookup` prints) on the same snapshot
 *   threads_same_dump   `iqp refresh --dump` with 1 and 4 threads: same bytes
 *   cli_errors          --help, missing/bad flags, --backend cuda without
 *                       CUDA (or, in a CUDA build, the CUDA dump equals the
 *                       CPU dump; "SKIP" when no device answers)
 *   state_dir_is_the_summed_store
 *                       both logs split by request_id into 3 parts (so every
 *                       dedup and min-ts key -- event id, action, engaged --
 *                       stays within one part, while contexts and items are
 *                       split over all of them), each part backfilled into
 *                       DIR/partition-<p>: `iqp refresh --state-dir DIR
 *                       --dump` (1 and 2 threads) and a repeated --store
 *                       print exactly the whole store's dump at both as-of
 *                       times, and no single part's
 *   state_dir_refuses_mixed_layouts
 *                       a partition store of another config is refused,
 *                       naming it
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uthash.h>

#include "aggregator/features.h"
#include "refresher/dump.h"
#include "refresher/refresh.h"
#include "store/store.h"
#include "tests/oracle.h"
#include "tests/testutil.h"

#define HOUR_MS 3600000LL
#define START_MS 1717996834567LL /* 2024-06-10, not on a bucket edge */
#define DAY_MS 86400000LL
#define GEN_FLAGS "--impressions 2500 --span 30h --queries 30 --items 250 --disorder 2m"
/* An older, sparse log 6 days earlier: in the day just before the 7d window
 * (age 7 days as of the watermark), so inside 90d and 365d only. */
#define OLD_FLAGS "--impressions 300 --span 2h --queries 30 --items 250 --disorder 2m"
#define NW ORACLE_N_WINDOWS
#define NF ORACLE_N_FEATURES
#define NC ORACLE_N_COUNTERS
#define N_AS_OF 2

static char *setup_error;
static char *tmp, *store, *log_path, *old_path;
static oracle *orc;
static int64_t as_of[N_AS_OF];

/* ---- the enumeration: every query, country, item of a decoded event ----------- */

typedef struct name_set {
    struct name_entry {
        char *s;
        size_t index;
        UT_hash_handle hh;
    } *table;
    char **names;
    size_t n, cap;
} name_set;

static size_t name_add(name_set *ns, const char *s) {
    struct name_entry *e;
    HASH_FIND_STR(ns->table, s, e);
    if (e) return e->index;
    if (ns->n == ns->cap) {
        ns->cap = ns->cap ? 2 * ns->cap : 64;
        ns->names = realloc(ns->names, ns->cap * sizeof *ns->names);
    }
    e = calloc(1, sizeof *e);
    e->s = strdup(s);
    e->index = ns->n;
    ns->names[ns->n++] = e->s;
    HASH_ADD_KEYPTR(hh, ns->table, e->s, strlen(e->s), e);
    return e->index;
}

static long name_find(const name_set *ns, const char *s, size_t len) {
    struct name_entry *e;
    HASH_FIND(hh, ns->table, s, len, e);
    return e ? (long)e->index : -1;
}

static void name_set_free(name_set *ns) {
    struct name_entry *e, *t;
    HASH_ITER(hh, ns->table, e, t) {
        HASH_DEL(ns->table, e);
        free(e->s);
        free(e);
    }
    free(ns->names);
    memset(ns, 0, sizeof *ns);
}

static name_set queries, countries, items;
static const char *const genders[3] = {"female", "male", "unknown"};

static void enumerate(void) {
    for (size_t i = 0; i < oracle_n_events(orc); i++) {
        const oracle_event *ev = oracle_get_event(orc, i);
        name_add(&queries, ev->query);
        name_add(&countries, ev->country);
        for (size_t k = 0; k < ev->n_items; k++) name_add(&items, ev->items[k]);
    }
}

/* ---- the brute force ------------------------------------------------------------ */

/* One expected context: its values for every item of `items` (zeros for
 * items never seen under it), and which of them are entities. */
typedef struct exp_context {
    int f;
    const char *query, *country, *gender; /* NULL where the feature lacks the dimension */
    int64_t cc[NW];
    oracle_counts *per_item;              /* [items.n][NW] */
    int *is_entity;                       /* [items.n] */
    size_t n_entities;
} exp_context;

typedef struct expected {
    exp_context *ctx;
    size_t n;
    int64_t num[NF][NW][NC], den[NF][NW];
} expected;

static int counts_nonzero(const oracle_counts *c) {
    for (int k = 0; k < NC; k++)
        if (c->c[k]) return 1;
    return 0;
}

/* Looks up one context of feature f; keeps it when anything is nonzero. */
static void expect_context(expected *x, int f, const char *q, const char *c, const char *g, int64_t t) {
    size_t ni = items.n;
    oracle_counts *out = malloc(NF * NW * ni * sizeof *out);
    int applicable[NF];
    oracle_lookup(orc, q ? q : "", c, g, t, (const char *const *)items.names, ni, applicable, out);
    exp_context e = {.f = f, .query = q, .country = c, .gender = g};
    e.per_item = calloc(ni * NW + 1, sizeof *e.per_item);
    e.is_entity = calloc(ni + 1, sizeof *e.is_entity);
    int keep = 0;
    for (int w = 0; w < NW; w++) {
        e.cc[w] = out[(size_t)(f * NW + w) * ni].context_count;
        keep |= e.cc[w] != 0;
    }
    for (size_t i = 0; i < ni; i++)
        for (int w = 0; w < NW; w++) {
            oracle_counts *oc = &out[(size_t)(f * NW + w) * ni + i];
            e.per_item[i * NW + w] = *oc;
            if (counts_nonzero(oc) && !e.is_entity[i]) e.is_entity[i] = 1, e.n_entities++;
        }
    free(out);
    if (!keep && e.n_entities == 0) {
        free(e.per_item);
        free(e.is_entity);
        return;
    }
    x->ctx = realloc(x->ctx, (x->n + 1) * sizeof *x->ctx);
    x->ctx[x->n++] = e;
}

/* Every context of every feature, then the feature-wide sums. */
static void build_expected(expected *x, int64_t t) {
    memset(x, 0, sizeof *x);
    for (size_t q = 0; q < queries.n; q++) {
        const char *qs = queries.names[q];
        expect_context(x, 0, qs, NULL, NULL, t);
        for (size_t c = 0; c < countries.n; c++) expect_context(x, 1, qs, countries.names[c], NULL, t);
        for (int g = 0; g < 3; g++) expect_context(x, 2, qs, NULL, genders[g], t);
    }
    for (size_t c = 0; c < countries.n; c++) expect_context(x, 3, NULL, countries.names[c], NULL, t);
    for (int g = 0; g < 3; g++) expect_context(x, 4, NULL, NULL, genders[g], t);
    for (size_t i = 0; i < x->n; i++) {
        const exp_context *e = &x->ctx[i];
        for (int w = 0; w < NW; w++) {
            x->den[e->f][w] += e->cc[w];
            for (size_t it = 0; it < items.n; it++)
                for (int k = 0; k < NC; k++) x->num[e->f][w][k] += e->per_item[it * NW + w].c[k];
        }
    }
}

static void free_expected(expected *x) {
    for (size_t i = 0; i < x->n; i++) {
        free(x->ctx[i].per_item);
        free(x->ctx[i].is_entity);
    }
    free(x->ctx);
}

/* refresh.h's formulas, written out here on their own. */
static double want_rate(int64_t n, int64_t d) { return d == 0 ? 0.0 : (double)n / (double)d; }

static double want_smoothed(int64_t n, int64_t cc, double a, double prior) {
    double t = a * prior;
    double num = (double)n + t;
    double den = (double)cc + a;
    return den == 0.0 ? 0.0 : num / den;
}

static int same_double(double x, double y) { return memcmp(&x, &y, sizeof x) == 0; }

/* Check's ck_assert records every passing assertion through a pipe; the
 * comparisons below make millions, so they reach Check only on failure. */
#define REQUIRE(cond, ...) do { if (!(cond)) ck_abort_msg(__VA_ARGS__); } while (0)
#define REQUIRE_EQ(x, y) REQUIRE((x) == (y), "%s == %s: %lld != %lld", #x, #y, (long long)(x), (long long)(y))

/* ---- matching refresher contexts to expected ones ---------------------------------- */

typedef struct ctx_key {
    char *key;
    size_t index;
    UT_hash_handle hh;
} ctx_key;

static char *key_of(int f, const char *q, size_t qlen, const char *c, const char *g) {
    return tu_fmt("%d|%.*s|%s|%s", f, (int)qlen, q ? q : "", c ? c : "", g ? g : "");
}

static char *refresh_key(const iqp_refresh_result *r, const iqp_refresh_context *c) {
    unsigned dims = iqp_refresh_config(r)->features[c->feature].dims;
    char country[3] = "", gender[IQP_SEGMENT_VALUE_MAX] = "";
    if (dims & IQP_DIM_COUNTRY) snprintf(country, sizeof country, "%.*s", (int)c->ctx.v[1].len, c->ctx.v[1].s);
    if (dims & IQP_DIM_GENDER) snprintf(gender, sizeof gender, "%.*s", (int)c->ctx.v[2].len, c->ctx.v[2].s);
    return key_of((int)c->feature, (dims & IQP_DIM_QUERY) ? c->ctx.v[0].s : NULL,
                  (dims & IQP_DIM_QUERY) ? c->ctx.v[0].len : 0,
                  (dims & IQP_DIM_COUNTRY) ? country : NULL,
                  (dims & IQP_DIM_GENDER) ? gender : NULL);
}

/* ---- the comparison ------------------------------------------------------------------- */

typedef struct params_case {
    double a;
    size_t k;
    const char *measure;
    int threads;
} params_case;

typedef struct want_slot {
    double v;
    const char *item;
} want_slot;

static int want_cmp(const void *pa, const void *pb) {
    const want_slot *x = pa, *y = pb;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    size_t lx = strlen(x->item), ly = strlen(y->item);
    int c = memcmp(x->item, y->item, lx < ly ? lx : ly);
    return c ? c : (lx < ly ? -1 : lx > ly);
}

static void check_priors(const iqp_refresh_result *r, const expected *x) {
    for (int f = 0; f < NF; f++)
        for (int w = 0; w < NW; w++)
            for (int k = 0; k < NC; k++) {
                int64_t num, den;
                iqp_refresh_prior_parts(r, (size_t)f, (size_t)w, (size_t)k, &num, &den);
                REQUIRE_EQ(num, x->num[f][w][k]);
                REQUIRE_EQ(den, x->den[f][w]);
                double want = want_rate(x->num[f][w][k], x->den[f][w]);
                REQUIRE(same_double(iqp_refresh_prior(r, (size_t)f, (size_t)w, (size_t)k), want),
                              "prior f%d w%d k%d", f, w, k);
            }
}

/* The expected top-K of (e, w) against the refresher's list of context c. */
static void check_topk(const iqp_refresh_result *r, size_t c, const exp_context *e, const expected *x,
                       int w, const params_case *pc, int measure) {
    want_slot *s = malloc((items.n + 1) * sizeof *s);
    size_t n = 0;
    for (size_t it = 0; it < items.n; it++) {
        const oracle_counts *oc = &e->per_item[it * NW + w];
        if (!counts_nonzero(oc)) continue;
        double prior = want_rate(x->num[e->f][w][measure], x->den[e->f][w]);
        s[n].v = want_smoothed(oc->c[measure], e->cc[w], pc->a, prior);
        s[n].item = items.names[it];
        n++;
    }
    qsort(s, n, sizeof *s, want_cmp);
    if (n > pc->k) n = pc->k;
    const uint32_t *list;
    size_t got = iqp_refresh_topk(r, c, (size_t)w, &list);
    REQUIRE_EQ(got, n);
    for (size_t i = 0; i < n; i++) {
        iqp_refresh_entity ent;
        iqp_refresh_get_entity(r, list[i], &ent);
        REQUIRE(ent.item_len == strlen(s[i].item) && memcmp(ent.item, s[i].item, ent.item_len) == 0,
                "top-K #%zu of context %zu window %d: got %.*s, want %s", i, c, w,
                (int)ent.item_len, ent.item, s[i].item);
        REQUIRE(same_double(iqp_refresh_topk_value(r, list[i], (size_t)w), s[i].v),
                "top-K #%zu value of context %zu window %d", i, c, w);
    }
    free(s);
}

/* Every entity of refresher context c against expected context e. */
static void check_entities(const iqp_refresh_result *r, const iqp_refresh_context *c,
                           const exp_context *e, const expected *x, double a) {
    REQUIRE_EQ(c->n_entities, e->n_entities);
    for (size_t en = c->first_entity; en < c->first_entity + c->n_entities; en++) {
        iqp_refresh_entity ent;
        iqp_refresh_get_entity(r, en, &ent);
        long it = name_find(&items, ent.item, ent.item_len);
        REQUIRE(it >= 0 && e->is_entity[it], "unexpected entity %.*s", (int)ent.item_len, ent.item);
        for (int w = 0; w < NW; w++)
            for (int k = 0; k < NC; k++) {
                int64_t want = e->per_item[(size_t)it * NW + w].c[k];
                size_t i = (size_t)w * NC + (size_t)k;
                REQUIRE_EQ(ent.counts[i], want);
                REQUIRE(same_double(ent.rates[i], want_rate(want, e->cc[w])), "rate %.*s w%d k%d",
                        (int)ent.item_len, ent.item, w, k);
                double prior = want_rate(x->num[e->f][w][k], x->den[e->f][w]);
                REQUIRE(same_double(ent.smoothed[i], want_smoothed(want, e->cc[w], a, prior)),
                        "smoothed %.*s w%d k%d: %.17g vs %.17g", (int)ent.item_len, ent.item, w, k,
                        ent.smoothed[i], want_smoothed(want, e->cc[w], a, prior));
            }
    }
}

static void compare(const iqp_refresh_result *r, const expected *x, const params_case *pc) {
    const iqp_config *cfg = iqp_refresh_config(r);
    int measure = iqp_refresh_measure_index(cfg, pc->measure);
    ctx_key *table = NULL, *ck, *tmpk;
    REQUIRE_EQ(iqp_refresh_n_contexts(r), x->n);
    for (size_t c = 0; c < iqp_refresh_n_contexts(r); c++) {
        iqp_refresh_context rc;
        iqp_refresh_get_context(r, c, &rc);
        ck = calloc(1, sizeof *ck);
        ck->key = refresh_key(r, &rc);
        ck->index = c;
        HASH_ADD_KEYPTR(hh, table, ck->key, strlen(ck->key), ck);
    }
    check_priors(r, x);
    for (size_t i = 0; i < x->n; i++) {
        const exp_context *e = &x->ctx[i];
        char *k = key_of(e->f, e->query, e->query ? strlen(e->query) : 0, e->country, e->gender);
        HASH_FIND_STR(table, k, ck);
        REQUIRE(ck != NULL, "context %s missing from the refresh", k);
        free(k);
        iqp_refresh_context rc;
        iqp_refresh_get_context(r, ck->index, &rc);
        for (int w = 0; w < NW; w++) REQUIRE_EQ(rc.context_count[w], e->cc[w]);
        check_entities(r, &rc, e, x, pc->a);
        for (int w = 0; w < NW; w++) check_topk(r, ck->index, e, x, w, pc, measure);
    }
    HASH_ITER(hh, table, ck, tmpk) {
        HASH_DEL(table, ck);
        free(ck->key);
        free(ck);
    }
}

static iqp_store *open_store(void) {
    char err[512];
    iqp_store *st = iqp_store_open(store, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    return st;
}

static int64_t sum_1d_impressions(const expected *x) {
    int64_t s = 0;
    for (int f = 0; f < NF; f++) s += x->num[f][0][0];
    return s;
}

START_TEST(refresh_vs_oracle) {
    ck_assert_msg(!setup_error, "%s", setup_error);
    static const params_case cases[] = {{20.0, 5, "engaged", 2}, {0.0, 3, "click", 1}, {7.5, 1000, "impression", 3}};
    iqp_store *st = open_store();
    const iqp_config *cfg = iqp_store_config(st);
    ck_assert_uint_eq(cfg->n_features, NF);
    ck_assert_uint_eq(cfg->n_windows, NW);
    for (int f = 0; f < NF; f++) ck_assert_str_eq(cfg->features[f].name, oracle_feature_names[f]);
    for (int w = 0; w < NW; w++) ck_assert_str_eq(cfg->windows[w].name, oracle_window_names[w]);
    int64_t impressions_1d[N_AS_OF];
    for (int t = 0; t < N_AS_OF; t++) {
        expected x;
        build_expected(&x, as_of[t]);
        impressions_1d[t] = sum_1d_impressions(&x);
        ck_assert_msg(x.den[0][1] != x.den[0][2], "the 7d and 90d windows hold the same data");
        iqp_refresh_params p;
        iqp_refresh_params_defaults(&p, as_of[t]);
        char err[512];
        iqp_refresh_result *r = NULL;
        ck_assert_msg(iqp_refresh_scan(st, NULL, &p, &r, err, sizeof err) == 0, "%s", err);
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            p.smoothing = cases[i].a;
            p.top_k = cases[i].k;
            p.rank_measure = iqp_refresh_measure_index(cfg, cases[i].measure);
            p.n_threads = cases[i].threads;
            ck_assert_msg(iqp_refresh_compute(r, &p, err, sizeof err) == 0, "%s", err);
            compare(r, &x, &cases[i]);
        }
        fprintf(stderr, "refresh: as_of %" PRId64 ": %zu contexts, %zu entities match the oracle\n", as_of[t],
                iqp_refresh_n_contexts(r), iqp_refresh_n_entities(r));
        iqp_refresh_free(r);
        free_expected(&x);
    }
    ck_assert_msg(impressions_1d[0] != impressions_1d[1], "the 1d window did not slide between the as-of times");
    iqp_store_close(st);
}
END_TEST

/* Counts equal what `iqp lookup` reads (iqp_features_read_at), same snapshot. */
START_TEST(matches_lookup) {
    ck_assert_msg(!setup_error, "%s", setup_error);
    iqp_store *st = open_store();
    iqp_store_snapshot *snap = iqp_store_snapshot_new(st);
    iqp_refresh_params p;
    iqp_refresh_params_defaults(&p, as_of[1]);
    char err[512];
    iqp_refresh_result *r = NULL;
    ck_assert_msg(iqp_refresh_run(st, snap, &p, &r, err, sizeof err) == 0, "%s", err);
    size_t nw = iqp_refresh_config(r)->n_windows;
    for (size_t c = 0; c < iqp_refresh_n_contexts(r); c += 7) {
        iqp_refresh_context rc;
        iqp_refresh_get_context(r, c, &rc);
        size_t n = rc.n_entities;
        const char **names = malloc((n + 1) * sizeof *names);
        size_t *lens = malloc((n + 1) * sizeof *lens);
        iqp_feature_row *rows = malloc((n * nw + 1) * sizeof *rows);
        for (size_t i = 0; i < n; i++) {
            iqp_refresh_entity ent;
            iqp_refresh_get_entity(r, rc.first_entity + i, &ent);
            names[i] = ent.item;
            lens[i] = ent.item_len;
        }
        REQUIRE(iqp_features_read_at(st, snap, rc.feature, &rc.ctx, names, lens, n, as_of[1], rows, err,
                                     sizeof err) == 0, "%s", err);
        for (size_t i = 0; i < n; i++)
            for (size_t w = 0; w < nw; w++) {
                iqp_feature_row mine;
                iqp_refresh_entity_row(r, rc.first_entity + i, w, &mine);
                REQUIRE_EQ(mine.context_count, rows[i * nw + w].context_count);
                REQUIRE(memcmp(mine.counters, rows[i * nw + w].counters, NC * sizeof(int64_t)) == 0,
                        "counters of context %zu entity %zu window %zu differ from lookup's", c, i, w);
            }
        free(names);
        free(lens);
        free(rows);
    }
    iqp_refresh_free(r);
    iqp_store_snapshot_free(st, snap);
    iqp_store_close(st);
}
END_TEST

/* The dump of `iqp refresh SOURCE` (--store DIR, --state-dir DIR, ...). */
static char *dump_of(const char *source, const char *extra, int64_t t) {
    char *path = tu_fmt("%s/dump-%d.txt", tmp, rand());
    char *cmd = tu_fmt("%s refresh %s --as-of %" PRId64 " --quiet --top-k 7 --dump '%s' %s 2>/dev/null", tu_iqp(),
                       source, t, path, extra);
    int rc = tu_run(cmd, NULL);
    ck_assert_msg(rc == 0, "exit %d: %s", rc, cmd);
    free(cmd);
    size_t len;
    char *text = tu_read_file(path, &len);
    ck_assert(text != NULL && len > 0);
    remove(path);
    free(path);
    return text;
}

static char *dump_with(const char *extra, int64_t t) {
    char *source = tu_fmt("--store '%s'", store);
    char *text = dump_of(source, extra, t);
    free(source);
    return text;
}

START_TEST(threads_same_dump) {
    ck_assert_msg(!setup_error, "%s", setup_error);
    for (int t = 0; t < N_AS_OF; t++) {
        char *one = dump_with("--threads 1", as_of[t]), *four = dump_with("--threads 4", as_of[t]);
        ck_assert_msg(strcmp(one, four) == 0, "dumps differ between 1 and 4 threads");
        ck_assert(strncmp(one, "iqp-refresh-dump 1\n", 19) == 0);
        ck_assert(strstr(one, "\ntopk q_item {query=") != NULL);
        free(one);
        free(four);
    }
}
END_TEST

static int run_rc(const char *args, char **out) {
    char *cmd = tu_fmt("%s refresh %s 2>&1", tu_iqp(), args);
    int rc = tu_run(cmd, out);
    free(cmd);
    return rc;
}

START_TEST(cli_errors) {
    ck_assert_msg(!setup_error, "%s", setup_error);
    char *out = NULL, *args;
    ck_assert_int_eq(run_rc("--help", &out), 0);
    ck_assert(strstr(out, "--rank-measure") != NULL);
    free(out);
    ck_assert_int_eq(run_rc("--as-of 1", NULL), 2);
    args = tu_fmt("--store '%s' --backend gpu", store);
    ck_assert_int_eq(run_rc(args, NULL), 2);
    free(args);
    args = tu_fmt("--store '%s' --rank-measure like", store);
    ck_assert_int_eq(run_rc(args, NULL), 2);
    free(args);
    args = tu_fmt("--store '%s' --smoothing -1", store);
    ck_assert_int_eq(run_rc(args, NULL), 2);
    free(args);
    ck_assert_int_eq(run_rc("--store /nonexistent/iqp-store", NULL), 1);
    char err[512];
    if (!iqp_refresh_cuda_available(err, sizeof err)) {
        args = tu_fmt("--store '%s' --backend cuda", store);
        ck_assert_int_eq(run_rc(args, &out), 1);
        ck_assert_msg(strstr(out, err) != NULL, "got: %s", out);
        fprintf(stderr, "refresh: SKIP cuda_matches_cpu: %s\n", err);
        free(out);
        free(args);
        return;
    }
    char *cpu = dump_with("--threads 2", as_of[0]), *gpu = dump_with("--backend cuda", as_of[0]);
    ck_assert_msg(strcmp(cpu, gpu) == 0, "the CUDA dump differs from the CPU dump");
    free(cpu);
    free(gpu);
}
END_TEST

/* ---- several stores --------------------------------------------------------------------- */

#define N_PARTS 3

/* Part of a log line: FNV-1a of its request_id % N_PARTS (0 without one:
 * a malformed line, dead-lettered wherever it goes). */
static unsigned part_of(const char *line) {
    const char *at = strstr(line, "\"request_id\":\"");
    if (!at) return 0;
    uint32_t h = 2166136261u;
    for (at += 14; *at && *at != '"'; at++) h = (h ^ (unsigned char)*at) * 16777619u;
    return h % N_PARTS;
}

/* Writes the lines of log into dir/<tag>-<p>.jsonl by part_of. */
static void split_log(const char *log, const char *dir, const char *tag) {
    FILE *in = fopen(log, "r"), *out[N_PARTS];
    ck_assert(in != NULL);
    for (int p = 0; p < N_PARTS; p++) {
        char *path = tu_fmt("%s/%s-%d.jsonl", dir, tag, p);
        ck_assert(out[p] = fopen(path, "w"));
        free(path);
    }
    char line[1 << 16];
    while (fgets(line, sizeof line, in)) fputs(line, out[part_of(line)]);
    fclose(in);
    for (int p = 0; p < N_PARTS; p++) ck_assert_int_eq(fclose(out[p]), 0);
}

START_TEST(state_dir_is_the_summed_store) {
    ck_assert_msg(!setup_error, "%s", setup_error);
    char *parts = tu_fmt("%s/parts", tmp), *state = tu_fmt("%s/state", tmp);
    ck_assert(tu_run_ok(tu_fmt("mkdir -p '%s' '%s'", parts, state)));
    split_log(old_path, parts, "old");
    split_log(log_path, parts, "new");
    for (int p = 0; p < N_PARTS; p++)
        ck_assert(tu_run_ok(tu_fmt("%s backfill --store '%s/partition-%d' '%s/old-%d.jsonl' '%s/new-%d.jsonl' "
                                   "2>/dev/null", tu_iqp(), state, p, parts, p, parts, p)));
    char *by_dir = tu_fmt("--state-dir '%s'", state);
    char *by_stores = tu_fmt("--store '%s/partition-2' --store '%s/partition-0' --store '%s/partition-1'", state,
                             state, state);
    char *part0 = tu_fmt("--store '%s/partition-0'", state);
    for (int t = 0; t < N_AS_OF; t++) {
        char *whole = dump_with("--threads 1", as_of[t]);
        char *dir1 = dump_of(by_dir, "--threads 1", as_of[t]), *dir2 = dump_of(by_dir, "--threads 2", as_of[t]);
        char *listed = dump_of(by_stores, "--threads 2", as_of[t]), *one = dump_of(part0, "", as_of[t]);
        ck_assert_msg(strcmp(whole, dir1) == 0, "--state-dir (1 thread) differs from the whole store at %" PRId64,
                      as_of[t]);
        ck_assert_msg(strcmp(whole, dir2) == 0, "--state-dir (2 threads) differs from the whole store");
        ck_assert_msg(strcmp(whole, listed) == 0, "three --store differ from the whole store");
        ck_assert_msg(strcmp(whole, one) != 0, "one part alone gives the whole store's dump: the split is void");
        ck_assert(strstr(whole, "\ntopk q_item {query=") != NULL);
        free(whole), free(dir1), free(dir2), free(listed), free(one);
    }
    free(by_dir), free(by_stores), free(part0), free(parts), free(state);
}
END_TEST

START_TEST(state_dir_refuses_mixed_layouts) {
    ck_assert_msg(!setup_error, "%s", setup_error);
    char *mixed = tu_fmt("%s/mixed", tmp), *cfg = tu_fmt("%s/other.json", tmp);
    FILE *f = fopen(cfg, "w");
    ck_assert(f != NULL);
    fputs("{\"actions\": [\"click\", \"buy\"]}\n", f);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert(tu_run_ok(tu_fmt("mkdir -p '%s' && %s backfill --store '%s/partition-0' '%s' 2>/dev/null && "
                               "%s backfill --config '%s' --store '%s/partition-1' '%s' 2>/dev/null",
                               mixed, tu_iqp(), mixed, old_path, tu_iqp(), cfg, mixed, old_path)));
    char *out = NULL, *args = tu_fmt("--state-dir '%s' --as-of %" PRId64 " --dump -", mixed, as_of[0]);
    ck_assert_int_eq(run_rc(args, &out), 1);
    char *named = tu_fmt("%s/partition-1", mixed);
    ck_assert_msg(strstr(out, "one layout") && strstr(out, named), "got: %s", out);
    ck_assert_msg(!strstr(out, "iqp-refresh-dump"), "a dump was printed: %s", out);
    free(out), free(args), free(named);
    args = tu_fmt("--state-dir '%s' --store '%s/partition-0'", mixed, mixed);
    ck_assert_int_eq(run_rc(args, NULL), 2);
    free(args);
    args = tu_fmt("--state-dir '%s'", tmp); /* no partition-<p> in it */
    ck_assert_int_eq(run_rc(args, &out), 1);
    ck_assert_msg(strstr(out, "no partition store"), "got: %s", out);
    free(out), free(args), free(mixed), free(cfg);
}
END_TEST

/* ---- fixture ---------------------------------------------------------------------------- */

static void fail_setup(const char *what) {
    if (!setup_error) setup_error = tu_fmt("refresh setup: %s", what);
}

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void refresh_setup(void) {
    if (!(tmp = tu_mkdtemp("refresh"))) { fail_setup("cannot create a temp dir"); return; }
    store = tu_fmt("%s/store", tmp);
    log_path = tu_fmt("%s/a.jsonl", tmp);
    old_path = tu_fmt("%s/old.jsonl", tmp);
    char *gen_old = tu_fmt("%s gen --seed 6 --start %lld " OLD_FLAGS " --out '%s' 2>/dev/null", tu_iqp(),
                           START_MS - 6 * DAY_MS, old_path);
    char *gen = tu_fmt("%s gen --seed 5 --start %lld " GEN_FLAGS " --out '%s' 2>/dev/null", tu_iqp(),
                       START_MS, log_path);
    char *backfill = tu_fmt("%s backfill --store '%s' '%s' '%s' 2>/dev/null", tu_iqp(), store, old_path,
                            log_path);
    int ok = tu_run(gen_old, NULL) == 0 && tu_run(gen, NULL) == 0 && tu_run(backfill, NULL) == 0;
    free(gen_old);
    free(gen);
    free(backfill);
    if (!ok) { fail_setup("iqp gen or iqp backfill failed"); return; }
    orc = oracle_new(wall_ms());
    oracle_keep_events(orc);
    if (oracle_load_file(orc, old_path) < 0 || oracle_load_file(orc, log_path) < 0 ||
        oracle_watermark(orc) < 0) {
        fail_setup("the oracle cannot read the log");
        return;
    }
    as_of[0] = oracle_watermark(orc);
    as_of[1] = as_of[0] / HOUR_MS * HOUR_MS + HOUR_MS;
    enumerate();
}

static void refresh_teardown(void) {
    name_set_free(&queries);
    name_set_free(&countries);
    name_set_free(&items);
    oracle_free(orc);
    orc = NULL;
    if (tmp) tu_rmrf(tmp);
    free(tmp);
    free(store);
    free(log_path);
    free(old_path);
    free(setup_error);
}

static Suite *refresh_suite(void) {
    Suite *s = suite_create("refresh");
    TCase *tc = tcase_create("refresh");
    tcase_add_unchecked_fixture(tc, refresh_setup, refresh_teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, refresh_vs_oracle);
    tcase_add_test(tc, matches_lookup);
    tcase_add_test(tc, threads_same_dump);
    tcase_add_test(tc, cli_errors);
    tcase_add_test(tc, state_dir_is_the_summed_store);
    tcase_add_test(tc, state_dir_refuses_mixed_layouts);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(refresh_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

/* check_store.c -- the RocksDB store: merge operator, reopen, layout
 * mismatch, read-only opening, bucket scans and compaction expiry. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregator/cells.h"
#include "aggregator/config.h"
#include "aggregator/window.h"
#include "store/counters.h"
#include "store/store.h"
#include "tests/testutil.h"

#define H 3600000LL
static char err[1024];

/* ---- merge operator core ------------------------------------------------- */

START_TEST(counter_sum_is_elementwise) {
    int64_t a[3] = {1, -2, 3}, b[3] = {10, 20, 30}, c[2] = {100, 100};
    unsigned char ea[24], eb[24], ec[16];
    iqp_counters_encode(a, 3, ea);
    iqp_counters_encode(b, 3, eb);
    iqp_counters_encode(c, 2, ec);
    const char *vals[] = {(char *)ea, NULL, (char *)eb, (char *)ec};
    size_t lens[] = {24, 0, 24, 16}, outlen;
    char *sum = iqp_counters_sum(vals, lens, 4, &outlen);
    ck_assert_uint_eq(outlen, 24);
    int64_t got[3] = {0, 0, 0};
    iqp_counters_add_encoded(got, 3, sum, outlen);
    ck_assert_int_eq(got[0], 111);
    ck_assert_int_eq(got[1], 118);
    ck_assert_int_eq(got[2], 33);
    free(sum);
}
END_TEST

/* ---- helpers ------------------------------------------------------------- */

typedef struct seen { int n; int64_t buckets[64]; int64_t first[64]; } seen;

static void collect(void *ud, int64_t bucket, const int64_t *vec, size_t n) {
    seen *s = ud;
    (void)n;
    s->buckets[s->n] = bucket;
    s->first[s->n++] = vec[0];
}

/* A count key for feature 0, query q, item it, at (gran, bucket). */
static void count_key(iqp_keybuf *kb, const iqp_config *cfg, const char *q, const char *it, int g,
                      int64_t bucket) {
    iqp_context ctx = {q, strlen(q), "US", IQP_GENDER_FEMALE};
    iqp_cells_context_prefix(kb, &cfg->features[0], &ctx);
    iqp_cells_append_entity(kb, it, strlen(it));
    iqp_cells_append_bucket(kb, g, bucket);
}

static void merge_one(iqp_store *st, const iqp_config *cfg, const char *q, const char *it, int g,
                      int64_t bucket, int64_t v, int64_t watermark) {
    iqp_keybuf kb;
    int64_t vec[IQP_MAX_COUNTERS] = {0};
    iqp_keybuf_init(&kb);
    count_key(&kb, cfg, q, it, g, bucket);
    vec[0] = v;
    vec[IQP_COUNTERS(cfg) - 1] = 2 * v;
    iqp_store_batch *b = iqp_store_batch_new(st);
    iqp_store_batch_merge(b, IQP_CF_COUNTS, kb.buf, kb.len, vec, IQP_COUNTERS(cfg));
    iqp_store_batch_set_watermark(b, watermark);
    ck_assert_msg(iqp_store_batch_commit(st, b, err, sizeof err) == 0, "%s", err);
    iqp_store_batch_free(b);
    iqp_keybuf_free(&kb);
}

static seen scan(iqp_store *st, const iqp_config *cfg, const char *q, const char *it, int g,
                 int64_t lo, int64_t hi) {
    iqp_keybuf kb;
    iqp_context ctx = {q, strlen(q), "US", IQP_GENDER_FEMALE};
    seen s;
    memset(&s, 0, sizeof s);
    iqp_keybuf_init(&kb);
    iqp_cells_context_prefix(&kb, &cfg->features[0], &ctx);
    iqp_cells_append_entity(&kb, it, strlen(it));
    ck_assert_int_eq(iqp_store_scan_buckets(st, IQP_CF_COUNTS, kb.buf, kb.len, g, lo, hi,
                                            IQP_COUNTERS(cfg), collect, &s, err, sizeof err), 0);
    iqp_keybuf_free(&kb);
    return s;
}

/* ---- tests --------------------------------------------------------------- */

START_TEST(merges_sum_and_survive_reopen) {
    char *dir = tu_mkdtemp("store");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    ck_assert_int_eq(iqp_store_watermark(st), INT64_MIN);
    for (int i = 1; i <= 5; i++) merge_one(st, &cfg, "red dress", "i1", 0, 7, i, 7 * H);
    merge_one(st, &cfg, "red dress", "i1", 0, 8, 100, 8 * H);
    merge_one(st, &cfg, "red dress", "i10", 0, 7, 1000, 8 * H); /* other item, same prefix start */
    seen s = scan(st, &cfg, "red dress", "i1", 0, 0, 100);
    ck_assert_int_eq(s.n, 2);
    ck_assert_int_eq(s.buckets[0], 7);
    ck_assert_int_eq(s.first[0], 15);
    ck_assert_int_eq(s.first[1], 100);
    s = scan(st, &cfg, "red dress", "i1", 0, 8, 8);  /* range is inclusive and exact */
    ck_assert_int_eq(s.n, 1);
    ck_assert_int_eq(s.first[0], 100);
    iqp_store_close(st);

    st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    ck_assert_int_eq(iqp_store_watermark(st), 8 * H);
    s = scan(st, &cfg, "red dress", "i1", 0, 0, 100);
    ck_assert_int_eq(s.n, 2);
    ck_assert_int_eq(s.first[0], 15);
    /* the last counter of the vector merged too */
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(layout_mismatch_is_refused) {
    char *dir = tu_mkdtemp("store");
    iqp_config cfg, other;
    iqp_config_defaults(&cfg);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_ptr_nonnull(st);
    iqp_store_close(st);
    iqp_config_defaults(&other);
    ck_assert_int_eq(iqp_config_parse(&other, "{\"actions\": [\"click\", \"buy\"]}", "t", err, sizeof err), 0);
    st = iqp_store_open(dir, &other, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err, "actions differ") && strstr(err, "buy") && strstr(err, dir), "%s", err);
    st = iqp_store_open(dir, &other, IQP_STORE_READ_ONLY, err, sizeof err);
    ck_assert_ptr_null(st);
    /* tuning differences are fine */
    other = cfg;
    other.dedup_horizon_ms = 5;
    st = iqp_store_open(dir, &other, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(read_only_uses_store_layout) {
    char *dir = tu_mkdtemp("store");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_int_eq(iqp_config_parse(&cfg, "{\"windows\": [{\"name\": \"3h\", \"length\": \"3h\", "
                                            "\"granularity\": \"1h\"}]}", "t", err, sizeof err), 0);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_ptr_nonnull(st);
    merge_one(st, &cfg, "q", "i", 0, 3, 9, 3 * H);
    iqp_store_close(st);
    iqp_store *ro = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    ck_assert_msg(ro != NULL, "%s", err);
    const iqp_config *rc = iqp_store_config(ro);
    ck_assert_int_eq(rc->n_windows, 1);
    ck_assert_str_eq(rc->windows[0].name, "3h");
    ck_assert_int_eq(rc->windows[0].n_buckets, 3);
    seen s = scan(ro, rc, "q", "i", 0, 0, 10);
    ck_assert_int_eq(s.n, 1);
    ck_assert_int_eq(s.first[0], 9);
    char *bogus = tu_mkdtemp("nostore");
    ck_assert_ptr_null(iqp_store_open(bogus, NULL, IQP_STORE_READ_ONLY, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "no iqp store"));
    iqp_store_close(ro);
    tu_rmrf(dir);
    tu_rmrf(bogus);
    free(dir);
    free(bogus);
}
END_TEST

START_TEST(compaction_expires_old_buckets_and_markers) {
    char *dir = tu_mkdtemp("store");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_int_eq(iqp_config_parse(&cfg, "{\"windows\": [{\"name\": \"3h\", \"length\": \"3h\", "
                                            "\"granularity\": \"1h\"}], \"dedup_horizon\": \"2h\"}",
                                      "t", err, sizeof err), 0);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_ptr_nonnull(st);
    for (int64_t b = 0; b <= 10; b++) merge_one(st, &cfg, "q", "i", 0, b, 1, b * H);
    /* a retained cell whose merges sum to zero (an action count moved away
     * in a later batch) is dropped too: it reads as absent anyway */
    merge_one(st, &cfg, "q", "moved", 0, 9, 1, 10 * H);
    merge_one(st, &cfg, "q", "moved", 0, 9, -1, 10 * H);
    /* dedup markers at hours 1..10 */
    iqp_store_batch *bt = iqp_store_batch_new(st);
    for (int64_t h = 1; h <= 10; h++) {
        unsigned char mk[IQP_MARKER_KEY_LEN];
        char id[32];
        /* written at hour h + 1, counted at ts h (rule 7 reads written_wm) */
        iqp_marker m = {h * H, (h + 1) * H};
        snprintf(id, sizeof id, "e%lld", (long long)h);
        iqp_cells_event_marker(mk, id, strlen(id));
        iqp_store_batch_put_marker(bt, mk, sizeof mk, &m);
    }
    ck_assert_int_eq(iqp_store_batch_commit(st, bt, err, sizeof err), 0);
    iqp_store_batch_free(bt);
    ck_assert_int_eq(iqp_store_count_keys(st, IQP_CF_COUNTS), 12);
    ck_assert_int_eq(iqp_store_compact(st, err, sizeof err), 0);
    /* watermark hour 10, retention 3 buckets: 8, 9, 10 remain */
    seen s = scan(st, &cfg, "q", "i", 0, 0, 100);
    ck_assert_int_eq(s.n, 3);
    ck_assert_int_eq(s.buckets[0], 8);
    ck_assert_int_eq(iqp_store_count_keys(st, IQP_CF_COUNTS), 3);
    /* markers written at >= 10h - 2h remain: written at hours 8..11 (e7..e10) */
    ck_assert_int_eq(iqp_store_count_keys(st, IQP_CF_DEDUP), 4);
    unsigned char mk[IQP_MARKER_KEY_LEN];
    iqp_marker m;
    iqp_cells_event_marker(mk, "e7", 2);
    ck_assert_int_eq(iqp_store_get_marker(st, mk, sizeof mk, &m), 1);
    ck_assert_int_eq(m.ts, 7 * H);
    ck_assert_int_eq(m.written_wm, 8 * H);
    iqp_cells_event_marker(mk, "e6", 2);
    ck_assert_int_eq(iqp_store_get_marker(st, mk, sizeof mk, &m), 0);
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, counter_sum_is_elementwise);
    tcase_add_test(tc, merges_sum_and_survive_reopen);
    tcase_add_test(tc, layout_mismatch_is_refused);
    tcase_add_test(tc, read_only_uses_store_layout);
    tcase_add_test(tc, compaction_expires_old_buckets_and_markers);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

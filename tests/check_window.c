/* check_window.c -- bucket and window arithmetic at its edges. */
#include <check.h>
#include <stdlib.h>

#include "model/config.h"
#include "model/window.h"

#define H 3600000LL
#define D (24 * H)

START_TEST(bucket_edges) {
    ck_assert_int_eq(iqp_bucket_of(0, H), 0);
    ck_assert_int_eq(iqp_bucket_of(H - 1, H), 0);          /* last ms of bucket 0 */
    ck_assert_int_eq(iqp_bucket_of(H, H), 1);              /* first ms of bucket 1 */
    ck_assert_int_eq(iqp_bucket_of(5 * H + 1, H), 5);
    ck_assert_int_eq(iqp_bucket_of(-1, H), -1);            /* floor, not truncation */
    ck_assert_int_eq(iqp_bucket_of(-H, H), -1);
    ck_assert_int_eq(iqp_bucket_of(-H - 1, H), -2);
    ck_assert_int_eq(iqp_bucket_of(1764374400000LL, D), 20421); /* 2025-11-29T00:00Z */
    ck_assert_int_eq(iqp_bucket_of(1764374399999LL, D), 20420);
}
END_TEST

START_TEST(window_ranges) {
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    int64_t first, last;
    /* 1d = 24 hourly buckets ending with the one holding as_of (partial included) */
    iqp_window_buckets(&cfg.windows[0], 100 * H, &first, &last);
    ck_assert_int_eq(last, 100);
    ck_assert_int_eq(first, 77);
    iqp_window_buckets(&cfg.windows[0], 101 * H - 1, &first, &last); /* last ms of hour 100 */
    ck_assert_int_eq(last, 100);
    ck_assert_int_eq(first, 77);
    iqp_window_buckets(&cfg.windows[0], 101 * H, &first, &last);     /* first ms of hour 101 */
    ck_assert_int_eq(last, 101);
    ck_assert_int_eq(first, 78);
    /* 7d: 7 daily buckets */
    iqp_window_buckets(&cfg.windows[1], 30 * D + 5, &first, &last);
    ck_assert_int_eq(last, 30);
    ck_assert_int_eq(first, 24);
    /* 365d */
    iqp_window_buckets(&cfg.windows[3], 1000 * D, &first, &last);
    ck_assert_int_eq(first, 636);
}
END_TEST

START_TEST(retention) {
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_int_eq(cfg.n_grans, 2);
    ck_assert_int_eq(cfg.gran_ms[0], H);
    ck_assert_int_eq(cfg.gran_retention[0], 24);
    ck_assert_int_eq(cfg.gran_ms[1], D);
    ck_assert_int_eq(cfg.gran_retention[1], 365);
    ck_assert_int_eq(iqp_retention_first_bucket(&cfg, 0, 100 * H + 7), 77);
    ck_assert_int_eq(iqp_retention_first_bucket(&cfg, 1, 400 * D), 36);
}
END_TEST

int main(void) {
    Suite *s = suite_create("window");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, bucket_edges);
    tcase_add_test(tc, window_ranges);
    tcase_add_test(tc, retention);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* check_batch_plan.c -- the extra cut near a file's end
 * (consumers/batch_plan.h), driven the way the backfill loop drives it: a
 * simulated file of fixed-size decoded batches, the aggregator cutting
 * every `full` bytes, and the plan asked after every decoded batch. The
 * expected batch sizes are worked out by hand in each test. That no count
 * depends on where the cuts fall is check_e2e's (flush-size invariance). */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#include "consumers/batch_plan.h"

#define MAX_BATCHES 64

/* Runs a file of `size` bytes read `step` bytes per decoded batch; the
 * aggregator cuts a batch once it holds `full` bytes. Writes the bytes of
 * every batch, the last one (the final flush) included, to sizes[];
 * returns their number. */
static int simulate(uint64_t size, uint64_t step, uint64_t full, uint64_t *sizes) {
    iqp_batch_plan p;
    iqp_batch_plan_init(&p, size);
    int n = 0;
    uint64_t start = 0;
    for (uint64_t at = step; at <= size; at += step) {
        if (at - start >= full || iqp_batch_plan_split_now(&p, at)) {
            if (at - start >= full) iqp_batch_plan_cut(&p, at);
            ck_assert_int_lt(n, MAX_BATCHES);
            sizes[n++] = at - start;
            start = at;
        }
    }
    ck_assert_int_lt(n, MAX_BATCHES);
    if (start < size) sizes[n++] = size - start;
    return n;
}

/* simulate(size, step, full) cuts the file into exactly want[0..n). */
static void expect_batches(uint64_t size, uint64_t step, uint64_t full, const uint64_t *want, int n) {
    uint64_t got[MAX_BATCHES];
    ck_assert_int_eq(simulate(size, step, full, got), n);
    for (int i = 0; i < n; i++) ck_assert_uint_eq(got[i], want[i]);
}

/* 70 units read 1 at a time, full batches of 14: after the fourth cut
 * (56) 14 are left, under two batches and over half of one, so the fifth
 * batch is cut at 2/3 of them, 9: 14 14 14 14 9 5, not 14 14 14 14 14. */
START_TEST(last_two_batches_share_the_rest) {
    const uint64_t want[] = {14, 14, 14, 14, 9, 5};
    expect_batches(70, 1, 14, want, 6);
}
END_TEST

/* 72 units, full batches of 14: after the fourth cut 16 are left, over a
 * batch: the fifth is cut at 10 (not full at 14 with 2 left over). */
START_TEST(a_full_batch_and_a_sliver_are_shared) {
    const uint64_t want[] = {14, 14, 14, 14, 10, 6};
    expect_batches(72, 1, 14, want, 6);
}
END_TEST

/* One extra cut per file: 60 units, full batches of 20 -> after the first
 * cut 40 are left (not under two batches), after the second 20: cut at 13,
 * and the last 7 are not split again. Then directly, where the aggregator
 * cuts again after the extra cut (a batch of 10 with 10 left would plan
 * a second one): no second extra cut. */
START_TEST(only_one_extra_cut) {
    const uint64_t want[] = {20, 20, 13, 7};
    expect_batches(60, 1, 20, want, 4);
    iqp_batch_plan p;
    iqp_batch_plan_init(&p, 100);
    iqp_batch_plan_cut(&p, 40);                         /* 60 left: target 40 */
    ck_assert_int_eq(iqp_batch_plan_split_now(&p, 79), 0);
    ck_assert_int_eq(iqp_batch_plan_split_now(&p, 80), 1); /* the extra cut */
    iqp_batch_plan_cut(&p, 90);                         /* 10 of 10: would plan 6 */
    for (uint64_t at = 91; at <= 100; at++) ck_assert_int_eq(iqp_batch_plan_split_now(&p, at), 0);
}
END_TEST

/* No extra cut: a file smaller than a batch (the aggregator never cut, so
 * no batch size is known), a remainder under half of the batch before it
 * (splitting it would not shorten that batch's write, which is the
 * tail), and a file of unknown size (a pipe). */
START_TEST(no_extra_cut_without_a_reason) {
    const uint64_t whole[] = {10};
    expect_batches(10, 1, 14, whole, 1);
    iqp_batch_plan p;
    iqp_batch_plan_init(&p, 100);
    iqp_batch_plan_cut(&p, 90); /* a batch of 90, 10 left */
    for (uint64_t at = 91; at <= 100; at++) ck_assert_int_eq(iqp_batch_plan_split_now(&p, at), 0);
    iqp_batch_plan_init(&p, 0);
    iqp_batch_plan_cut(&p, 20);
    for (uint64_t at = 21; at < 1000; at++) ck_assert_int_eq(iqp_batch_plan_split_now(&p, at), 0);
}
END_TEST

/* Coarse positions (a compressed file's reader advances in chunks): the
 * cut comes at the first position past the target. 100 units read 5 at a
 * time, full batches of 25: cuts at 25, 50, 75; 25 left -> target 16, so
 * the cut is at 95 (20 bytes in) and the last batch holds 5. */
START_TEST(coarse_positions_cut_past_the_target) {
    const uint64_t want[] = {25, 25, 25, 20, 5};
    expect_batches(100, 5, 25, want, 5);
}
END_TEST

int main(void) {
    Suite *s = suite_create("batch_plan");
    TCase *tc = tcase_create("batch_plan");
    tcase_add_test(tc, last_two_batches_share_the_rest);
    tcase_add_test(tc, a_full_batch_and_a_sliver_are_shared);
    tcase_add_test(tc, only_one_extra_cut);
    tcase_add_test(tc, no_extra_cut_without_a_reason);
    tcase_add_test(tc, coarse_positions_cut_past_the_target);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* check_buf.c -- the one growable byte buffer (model/buf.h): growth keeps
 * every byte, a zeroed buffer works, numbers match printf, text is
 * terminated on request. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/buf.h"

/* 10,000 appends of varied lengths through many doublings: the contents
 * equal the same bytes laid out by hand in a plain array. */
START_TEST(growth_keeps_every_byte) {
    iqp_buf b;
    iqp_buf_init(&b);
    ck_assert_ptr_nonnull(b.buf);
    ck_assert_uint_eq(b.len, 0);
    size_t total = 0;
    for (size_t i = 0; i < 10000; i++) total += i % 37;
    unsigned char *want = malloc(total), chunk[37];
    ck_assert_ptr_nonnull(want);
    size_t at = 0;
    for (size_t i = 0; i < 10000; i++) {
        size_t n = i % 37;
        for (size_t k = 0; k < n; k++) chunk[k] = (unsigned char)(i * 31 + k);
        iqp_buf_append(&b, chunk, n);
        memcpy(want + at, chunk, n);
        at += n;
        ck_assert_uint_ge(b.cap, b.len);
    }
    ck_assert_uint_eq(b.len, total);
    ck_assert_int_eq(memcmp(b.buf, want, total), 0);
    iqp_buf_truncate(&b, 5);
    ck_assert_uint_eq(b.len, 5);
    iqp_buf_truncate(&b, 50); /* not shorter: no-op */
    ck_assert_uint_eq(b.len, 5);
    ck_assert_int_eq(memcmp(b.buf, want, 5), 0);
    free(want);
    iqp_buf_free(&b);
    ck_assert_ptr_null(b.buf);
    ck_assert_uint_eq(b.len + b.cap, 0);
}
END_TEST

/* A zeroed buffer allocates on first use; an empty append or copy leaves
 * it unallocated (no memcpy from NULL: UBSan would say so). */
START_TEST(zeroed_buffer_and_copy) {
    iqp_buf b = {0}, c = {0};
    iqp_buf_append(&b, NULL, 0);
    iqp_buf_copy(&c, &b);
    ck_assert_ptr_null(b.buf);
    ck_assert_ptr_null(c.buf);
    iqp_buf_puts(&b, "abc");
    iqp_buf_putc(&b, 'd');
    ck_assert_uint_eq(b.len, 4);
    ck_assert_str_eq(iqp_buf_cstr(&b), "abcd");
    ck_assert_uint_eq(b.len, 4); /* the NUL is not counted */
    iqp_buf_puts(&c, "something longer than abcd");
    iqp_buf_copy(&c, &b);
    ck_assert_uint_eq(c.len, 4);
    ck_assert_str_eq(iqp_buf_cstr(&c), "abcd");
    iqp_buf_free(&b);
    iqp_buf_free(&c);
}
END_TEST

/* Decimal formatting against snprintf, at the edges of both types. */
START_TEST(numbers_match_printf) {
    const int64_t ints[] = {0, 1, -1, 9, 10, -10, 123456789, INT64_MAX, INT64_MIN, INT64_MIN + 1};
    const uint64_t uints[] = {0, 1, 10, 99, 100, 18446744073709551615ULL, 1ULL << 63};
    iqp_buf b = {0};
    char want[32];
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        b.len = 0;
        iqp_buf_i64(&b, ints[i]);
        snprintf(want, sizeof want, "%" PRId64, ints[i]);
        ck_assert_str_eq(iqp_buf_cstr(&b), want);
    }
    for (size_t i = 0; i < sizeof uints / sizeof *uints; i++) {
        b.len = 0;
        iqp_buf_u64(&b, uints[i]);
        snprintf(want, sizeof want, "%" PRIu64, uints[i]);
        ck_assert_str_eq(iqp_buf_cstr(&b), want);
    }
    iqp_buf_free(&b);
}
END_TEST

int main(void) {
    Suite *s = suite_create("buf");
    TCase *tc = tcase_create("buf");
    tcase_add_test(tc, growth_keeps_every_byte);
    tcase_add_test(tc, zeroed_buffer_and_copy);
    tcase_add_test(tc, numbers_match_printf);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

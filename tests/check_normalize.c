/* check_normalize.c -- unit tests for model/normalize.c.
 *
 * Every expected value is written out literally here (as UTF-8 byte
 * escapes where it is not ASCII), never computed by the code under test,
 * so a change in utf8proc's behaviour or in our rules shows up as a
 * failure rather than silently moving the expectation.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "model/normalize.h"

/* Normalizes in[0..len) and checks the result against want. */
static void expect_query_n(const char *in, size_t len, const char *want) {
    char *out = NULL;
    size_t outlen = 12345;
    int rc = iqp_normalize_query(in, len, &out, &outlen);
    ck_assert_msg(rc == 0, "query rejected: \"%s\"", in);
    ck_assert_ptr_nonnull(out);
    ck_assert_uint_eq(outlen, strlen(want));
    ck_assert_uint_eq(strlen(out), outlen);    /* NUL-terminated, no inner NUL */
    ck_assert_str_eq(out, want);
    free(out);
}

static void expect_query(const char *in, const char *want) {
    expect_query_n(in, strlen(in), want);
}

static void expect_invalid_n(const char *in, size_t len) {
    char *out = (char *)"untouched";
    size_t outlen = 7;
    ck_assert_int_eq(iqp_normalize_query(in, len, &out, &outlen), -1);
    ck_assert_str_eq(out, "untouched");
    ck_assert_uint_eq(outlen, 7);
}

static void expect_invalid(const char *in) {
    expect_invalid_n(in, strlen(in));
}

static void expect_country(const char *in, const char *want) {
    char out[3] = {'?', '?', '?'};
    iqp_normalize_country(in, in ? strlen(in) : 0, out);
    ck_assert_msg(out[2] == '\0', "country not NUL-terminated");
    ck_assert_str_eq(out, want);
}

/* ----------------------------------------------------------------- query */

START_TEST(query_ascii_case) {
    expect_query("Red Dress", "red dress");
    expect_query("RED DRESS", "red dress");
    expect_query("red dress", "red dress");
    expect_query("iPhone 15 PRO max", "iphone 15 pro max");
    expect_query("a", "a");
}
END_TEST

START_TEST(query_whitespace) {
    expect_query("  red dress  ", "red dress");
    expect_query("red    dress", "red dress");
    expect_query("\tred\t\n dress\r\n", "red dress");
    expect_query("\v\fred\f\vdress\v", "red dress");
    expect_query("a\xc2\xa0" "b", "a b");             /* U+00A0 no-break space */
    expect_query("a\xc2\x85" "b", "a b");             /* U+0085 next line */
    expect_query("a\xe1\x9a\x80" "b", "a b");         /* U+1680 ogham space mark */
    expect_query("a\xe2\x80\x83" "b", "a b");         /* U+2003 em space */
    expect_query("a\xe2\x80\xa8" "b", "a b");         /* U+2028 line separator */
    expect_query("a\xe2\x80\xa9" "b", "a b");         /* U+2029 paragraph separator */
    expect_query("a\xe2\x80\xaf" "b", "a b");         /* U+202F narrow no-break space */
    expect_query("a\xe3\x80\x80" "b", "a b");         /* U+3000 ideographic space */
    expect_query("\xe3\x80\x80 a \t\xe1\x9a\x80 b \xe2\x80\xa8", "a b");
    /* U+200B zero width space is a format character (Cf), not white space */
    expect_query("a\xe2\x80\x8b" "b", "a\xe2\x80\x8b" "b");
}
END_TEST

START_TEST(query_empty) {
    expect_query("", "");
    expect_query_n(NULL, 0, "");
    expect_query(" ", "");
    expect_query(" \t\r\n\v\f ", "");
    expect_query("\xe3\x80\x80\xc2\xa0\xe2\x80\xa8", "");
}
END_TEST

START_TEST(query_fullwidth) {
    /* "ＲＥＤ　Ｄｒｅｓｓ": full-width letters and an ideographic space */
    expect_query("\xef\xbc\xb2\xef\xbc\xa5\xef\xbc\xa4\xe3\x80\x80"
                 "\xef\xbc\xa4\xef\xbd\x92\xef\xbd\x85\xef\xbd\x93\xef\xbd\x93",
                 "red dress");
    expect_query("\xef\xbc\x91\xef\xbc\x92\xef\xbc\x93", "123");       /* "１２３" */
    /* half-width katakana "ｶﾀｶﾅ" -> "カタカナ" */
    expect_query("\xef\xbd\xb6\xef\xbe\x80\xef\xbd\xb6\xef\xbe\x85",
                 "\xe3\x82\xab\xe3\x82\xbf\xe3\x82\xab\xe3\x83\x8a");
}
END_TEST

START_TEST(query_compat) {
    expect_query("\xef\xac\x81sh", "fish");                    /* U+FB01 "ﬁ" */
    expect_query("\xef\xac\x80", "ff");                        /* U+FB00 "ﬀ" */
    expect_query("\xe2\x91\xa0", "1");                         /* U+2460 "①" */
    expect_query("\xe3\x8e\x8f", "kg");                        /* U+338F "㎏" */
    expect_query("x\xc2\xb2", "x2");                           /* U+00B2 superscript two */
    expect_query("\xe2\x85\xa0\xe2\x85\xa1", "iii");           /* "ⅠⅡ" -> "i" "ii" */
}
END_TEST

START_TEST(query_casefold_sharp_s) {
    expect_query("STRASSE", "strasse");
    expect_query("stra\xc3\x9f" "e", "strasse");              /* "straße" */
    expect_query("STRA\xc3\x9f" "E", "strasse");              /* "STRAßE" */
    expect_query("\xe1\xba\x9e", "ss");                       /* U+1E9E capital sharp s */
    /* Greek: "ΣΑΣ" -> "σασ" (full case folding maps every sigma to σ) */
    expect_query("\xce\xa3\xce\x91\xce\xa3", "\xcf\x83\xce\xb1\xcf\x83");
}
END_TEST

START_TEST(query_compose) {
    /* "cafe" + U+0301 combining acute -> "café" with U+00E9 */
    expect_query("cafe\xcc\x81", "caf\xc3\xa9");
    expect_query("caf\xc3\xa9", "caf\xc3\xa9");
    expect_query("CAF\xc3\x89", "caf\xc3\xa9");               /* U+00C9 */
    expect_query("CAFE\xcc\x81", "caf\xc3\xa9");
    /* Hangul jamo compose to a syllable: U+1100 U+1161 -> U+AC00 */
    expect_query("\xe1\x84\x80\xe1\x85\xa1", "\xea\xb0\x80");
    /* CJK stays as it is */
    expect_query("\xe6\x9d\xb1\xe4\xba\xac  \xe3\x83\xa9\xe3\x83\xbc\xe3\x83\xa1\xe3\x83\xb3",
                 "\xe6\x9d\xb1\xe4\xba\xac \xe3\x83\xa9\xe3\x83\xbc\xe3\x83\xa1\xe3\x83\xb3");
}
END_TEST

START_TEST(query_length_not_nul_terminated) {
    expect_query_n("Red DressXYZ", 9, "red dress");
    expect_query_n("  a  ", 3, "a");
}
END_TEST

START_TEST(query_invalid_utf8) {
    expect_invalid("\xff");
    expect_invalid("caf\xe9");                     /* Latin-1 */
    expect_invalid("\xc0\xaf");                    /* overlong "/" */
    expect_invalid("\xe0\x80\xaf");                /* overlong, 3 bytes */
    expect_invalid("a\xed\xa0\x80" "b");           /* UTF-16 surrogate U+D800 */
    expect_invalid("\xe3\x81");                    /* truncated sequence */
    expect_invalid("\x80");                        /* lone continuation byte */
    expect_invalid("\xf4\x90\x80\x80");            /* past U+10FFFF */
    expect_invalid_n("ab\xe3\x81\x82", 4);         /* cut inside a character */
    expect_invalid_n("a\0b", 3);                   /* U+0000 is refused too */
}
END_TEST

START_TEST(query_idempotent) {
    static const char *inputs[] = {
        "  Red   Dress ", "stra\xc3\x9f" "e", "cafe\xcc\x81", "\xef\xac\x81sh",
        "a\xe1\x9a\x80\xcc\x81" "b", "\xe3\x80\x80\xcc\x81x", "\xe1\xba\x9e\xce\xa3",
    };
    size_t i;
    for (i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        char *a, *b;
        size_t alen, blen;
        ck_assert_int_eq(iqp_normalize_query(inputs[i], strlen(inputs[i]), &a, &alen), 0);
        ck_assert_int_eq(iqp_normalize_query(a, alen, &b, &blen), 0);
        ck_assert_uint_eq(alen, blen);
        ck_assert_mem_eq(a, b, alen);
        free(a);
        free(b);
    }
}
END_TEST

/* All-ASCII queries take a shortcut (no utf8proc); its bytes must be what
 * utf8proc's NFKC + case folding gives, with the white space rule applied
 * here on its own: every 1- and 2-byte ASCII string, and random longer
 * ones over a mix of letters, digits, punctuation and white space. */
static void expect_as_utf8proc(const char *in, size_t len) {
    utf8proc_uint8_t *mapped = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)len, &mapped,
                                      UTF8PROC_STABLE | UTF8PROC_COMPAT | UTF8PROC_COMPOSE |
                                          UTF8PROC_CASEFOLD);
    ck_assert_int_ge(n, 0);
    int has_nul = memchr(in, 0, len) != NULL;
    char want[64];
    size_t w = 0;
    for (utf8proc_ssize_t r = 0; r < n; r++) {
        char c = (char)mapped[r];
        if (c == ' ' || (c >= '\t' && c <= '\r')) {
            if (w > 0 && want[w - 1] != ' ') want[w++] = ' ';
        } else {
            want[w++] = c;
        }
    }
    while (w > 0 && want[w - 1] == ' ') w--;
    free(mapped);
    char *out = NULL;
    size_t outlen = 0;
    int rc = iqp_normalize_query(in, len, &out, &outlen);
    if (has_nul) {
        ck_assert_int_eq(rc, -1);
        return;
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_uint_eq(outlen, w);
    ck_assert_mem_eq(out, want, w);
    ck_assert_int_eq(out[outlen], '\0');
    free(out);
}

START_TEST(query_ascii_matches_utf8proc) {
    char in[40];
    for (int a = 0; a < 128; a++) {
        in[0] = (char)a;
        expect_as_utf8proc(in, 1);
        for (int b = 0; b < 128; b++) {
            in[1] = (char)b;
            expect_as_utf8proc(in, 2);
        }
    }
    static const char pool[] = "aZ09 \t\n\v\f\r!~_-.Qq";
    unsigned seed = 12345;
    for (int k = 0; k < 20000; k++) {
        size_t len = 3 + k % 37;
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            in[i] = pool[(seed >> 16) % (sizeof pool - 1)];
        }
        expect_as_utf8proc(in, len);
    }
}
END_TEST

/* --------------------------------------------------------------- country */

START_TEST(country_codes) {
    expect_country("us", "US");
    expect_country("US", "US");
    expect_country("uS", "US");
    expect_country(" de ", "DE");
    expect_country("\tfr\n", "FR");
    expect_country("gb", "GB");
    expect_country("AD", "AD");   /* first in the table */
    expect_country("zw", "ZW");   /* last in the table */
    expect_country("SS", "SS");   /* South Sudan, 2011 */
    expect_country("BQ", "BQ");
}
END_TEST

START_TEST(country_unknown) {
    expect_country("UK", "ZZ");   /* exceptionally reserved, not assigned */
    expect_country("EU", "ZZ");   /* exceptionally reserved */
    expect_country("XX", "ZZ");   /* user-assigned */
    expect_country("XK", "ZZ");   /* Kosovo: user-assigned, not ISO */
    expect_country("ZZ", "ZZ");
    expect_country("AA", "ZZ");
    expect_country("AN", "ZZ");   /* withdrawn (Netherlands Antilles) */
    expect_country("USA", "ZZ");
    expect_country("U", "ZZ");
    expect_country("", "ZZ");
    expect_country("  ", "ZZ");
    expect_country("U S", "ZZ");
    expect_country("1A", "ZZ");
    expect_country("\xef\xbc\xb5\xef\xbc\xb3", "ZZ");   /* full-width "ＵＳ" */
    expect_country(NULL, "ZZ");
}
END_TEST

START_TEST(country_length_and_count) {
    char out[3];
    char code[2];
    int a, b, n = 0;

    iqp_normalize_country("USA", 2, out);
    ck_assert_str_eq(out, "US");
    iqp_normalize_country("d", 1, out);
    ck_assert_str_eq(out, "ZZ");
    /* exactly 249 assigned codes among the 676 pairs of letters */
    for (a = 'A'; a <= 'Z'; a++) {
        for (b = 'a'; b <= 'z'; b++) {
            code[0] = (char)a;
            code[1] = (char)b;
            iqp_normalize_country(code, 2, out);
            if (strcmp(out, "ZZ") != 0) {
                ck_assert_int_eq(out[0], a);
                ck_assert_int_eq(out[1], b - 'a' + 'A');
                n++;
            }
        }
    }
    ck_assert_int_eq(n, 249);
}
END_TEST

/* ---------------------------------------------------------------- gender */

static iqp_gender g(const char *s) {
    return iqp_normalize_gender(s, s ? strlen(s) : 0);
}

START_TEST(gender_variants) {
    ck_assert_int_eq(g("female"), IQP_GENDER_FEMALE);
    ck_assert_int_eq(g("FEMALE"), IQP_GENDER_FEMALE);
    ck_assert_int_eq(g("f"), IQP_GENDER_FEMALE);
    ck_assert_int_eq(g("F"), IQP_GENDER_FEMALE);
    ck_assert_int_eq(g("Woman"), IQP_GENDER_FEMALE);
    ck_assert_int_eq(g("  woman\t"), IQP_GENDER_FEMALE);
    ck_assert_int_eq(g("male"), IQP_GENDER_MALE);
    ck_assert_int_eq(g("Male "), IQP_GENDER_MALE);
    ck_assert_int_eq(g("m"), IQP_GENDER_MALE);
    ck_assert_int_eq(g("M"), IQP_GENDER_MALE);
    ck_assert_int_eq(g("MAN"), IQP_GENDER_MALE);
    ck_assert_int_eq(g(NULL), IQP_GENDER_UNKNOWN);
    ck_assert_int_eq(g(""), IQP_GENDER_UNKNOWN);
    ck_assert_int_eq(g("unknown"), IQP_GENDER_UNKNOWN);
    ck_assert_int_eq(g("other"), IQP_GENDER_UNKNOWN);
    ck_assert_int_eq(g("fem"), IQP_GENDER_UNKNOWN);
    ck_assert_int_eq(g("females"), IQP_GENDER_UNKNOWN);
    ck_assert_int_eq(g("men"), IQP_GENDER_UNKNOWN);
    ck_assert_int_eq(g("wo man"), IQP_GENDER_UNKNOWN);
    ck_assert_int_eq(g("\xe5\xa5\xb3"), IQP_GENDER_UNKNOWN);   /* "女" */
    ck_assert_int_eq(iqp_normalize_gender("fx", 1), IQP_GENDER_FEMALE);
    ck_assert_int_eq(iqp_normalize_gender("manly", 3), IQP_GENDER_MALE);
}
END_TEST

START_TEST(gender_names) {
    ck_assert_str_eq(iqp_gender_name(IQP_GENDER_FEMALE), "female");
    ck_assert_str_eq(iqp_gender_name(IQP_GENDER_MALE), "male");
    ck_assert_str_eq(iqp_gender_name(IQP_GENDER_UNKNOWN), "unknown");
}
END_TEST

static Suite *normalize_suite(void) {
    Suite *s = suite_create("normalize");
    TCase *q = tcase_create("query"), *c = tcase_create("country"),
          *gt = tcase_create("gender");

    tcase_add_test(q, query_ascii_case);
    tcase_add_test(q, query_whitespace);
    tcase_add_test(q, query_empty);
    tcase_add_test(q, query_fullwidth);
    tcase_add_test(q, query_compat);
    tcase_add_test(q, query_casefold_sharp_s);
    tcase_add_test(q, query_compose);
    tcase_add_test(q, query_length_not_nul_terminated);
    tcase_add_test(q, query_invalid_utf8);
    tcase_add_test(q, query_idempotent);
    tcase_add_test(q, query_ascii_matches_utf8proc);
    tcase_add_test(c, country_codes);
    tcase_add_test(c, country_unknown);
    tcase_add_test(c, country_length_and_count);
    tcase_add_test(gt, gender_variants);
    tcase_add_test(gt, gender_names);
    suite_add_tcase(s, q);
    suite_add_tcase(s, c);
    suite_add_tcase(s, gt);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(normalize_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

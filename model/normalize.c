/* normalize.c -- the one normalization of query, country and gender.
 *
 * Every path that turns text into a counter key (stream, backfill, lookup,
 * export, libiqp) calls these functions, so a query typed by a ranker and
 * the same query logged by the front end land on the same cell.
 *
 * Query
 * -----
 * 1. utf8proc_map() with STABLE|COMPAT|COMPOSE|CASEFOLD: NFKC plus Unicode
 *    case folding in one pass ("ＲＥＤ" -> "red", "ﬁ" -> "fi", "ß" -> "ss",
 *    "e" U+0301 -> U+00E9). utf8proc rejects malformed UTF-8 (overlong
 *    forms, surrogates, code points past U+10FFFF, truncated sequences) and
 *    we return -1 for those. U+0000 is also refused: the result is handed
 *    around as a C string, and a NUL inside it would make two different
 *    queries compare equal in some paths and not in others.
 * 2. White space is trimmed at both ends and every inner run becomes one
 *    U+0020. White space is: any code point of category Zs, the ASCII
 *    controls \t \n \v \f \r, U+0085, U+2028 and U+2029. Step 2 only ever
 *    shrinks the text, so it is done in place in utf8proc's buffer, which is
 *    the string we hand back (one allocation in all).
 * An all-ASCII query (most of them) skips utf8proc: for ASCII, step 1 is
 * only a lower-casing of A-Z, done in the same pass as step 2.
 *
 * Country
 * -------
 * ASCII white space trimmed, ASCII upper-cased, then looked up (bsearch) in
 * the table of the 249 officially assigned ISO 3166-1 alpha-2 codes.
 * Anything else -- reserved codes such as "UK" or "EU", user-assigned ones
 * such as "XX" or "ZZ", alpha-3 codes, non-ASCII text, NULL -- is "ZZ".
 *
 * Gender
 * ------
 * ASCII white space trimmed, compared case-insensitively (ASCII) with the
 * spellings listed in normalize.h.
 */
#include "model/normalize.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define QUERY_OPTIONS                                                        \
    (UTF8PROC_STABLE | UTF8PROC_COMPAT | UTF8PROC_COMPOSE | UTF8PROC_CASEFOLD)

/* ---------------------------------------------------------------- ASCII -- */

static int is_ascii_space(char c) {
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static char ascii_upper(char c) {
    return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
}

static char ascii_lower(char c) {
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* ---------------------------------------------------------------- query -- */

static int is_query_space(utf8proc_int32_t cp) {
    if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cp == 0x2028 || cp == 0x2029)
        return 1;
    return utf8proc_category(cp) == UTF8PROC_CATEGORY_ZS;
}

/* Trims and collapses white space of the valid UTF-8 text s[0..len) in
 * place; returns the new length. Returns -1 if s holds U+0000. */
static long collapse_space(utf8proc_uint8_t *s, size_t len) {
    size_t r = 0, w = 0;
    int pending = 0;    /* a space run was seen after some kept text */

    while (r < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(s + r, (utf8proc_ssize_t)(len - r), &cp);
        if (n <= 0 || cp == 0) return -1;
        if (is_query_space(cp)) {
            pending = (w > 0);
        } else {
            if (pending) s[w++] = ' ';
            pending = 0;
            memmove(s + w, s + r, (size_t)n);
            w += (size_t)n;
        }
        r += (size_t)n;
    }
    s[w] = '\0';
    return (long)w;
}

/* The whole normalization of an all-ASCII query: no ASCII code point has a
 * compatibility mapping or composes with another, and case folding maps
 * only A-Z, so step 1 is a lower-casing; the white space of step 2 is
 * then ' ' and \t..\r. The same bytes as the general path (tests/
 * check_normalize.c compares the two), without utf8proc's decomposition
 * into code points and back: most logged queries are ASCII. */
static int normalize_ascii_query(const char *in, size_t len, char **out, size_t *outlen) {
    char *s = malloc(len + 1);
    size_t w = 0;
    int pending = 0;
    if (!s) return -1;
    for (size_t r = 0; r < len; r++) {
        char c = in[r];
        if (c == '\0') {
            free(s);
            return -1;
        }
        if (is_ascii_space(c)) {
            pending = w > 0;
            continue;
        }
        if (pending) s[w++] = ' ';
        pending = 0;
        s[w++] = ascii_lower(c);
    }
    s[w] = '\0';
    *out = s;
    *outlen = w;
    return 0;
}

static int is_ascii(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] >= 0x80) return 0;
    return 1;
}

int iqp_normalize_query(const char *in, size_t len, char **out, size_t *outlen) {
    utf8proc_uint8_t *mapped = NULL;
    utf8proc_ssize_t n;
    long w;

    if (len > (size_t)(SIZE_MAX / 8) || (in == NULL && len > 0)) return -1;
    if (in && is_ascii(in, len)) return normalize_ascii_query(in, len, out, outlen);
    n = utf8proc_map((const utf8proc_uint8_t *)(in ? in : ""), (utf8proc_ssize_t)len,
                     &mapped, QUERY_OPTIONS);
    if (n < 0) return -1;   /* utf8proc leaves nothing allocated */
    w = collapse_space(mapped, (size_t)n);
    if (w < 0) {
        free(mapped);
        return -1;
    }
    *out = (char *)mapped;
    *outlen = (size_t)w;
    return 0;
}

/* -------------------------------------------------------------- country -- */

/* Officially assigned ISO 3166-1 alpha-2 codes (249), sorted. */
static const char iso3166_alpha2[][3] = {
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU",
    "AW", "AX", "AZ", "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL",
    "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV", "BW", "BY", "BZ", "CA", "CC",
    "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV",
    "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG",
    "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD",
    "GE", "GF", "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT",
    "GU", "GW", "GY", "HK", "HM", "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM",
    "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP", "KE", "KG", "KH",
    "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK",
    "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH",
    "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW",
    "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR",
    "NU", "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR",
    "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW", "SA", "SB", "SC",
    "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL",
    "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY",
    "UZ", "VA", "VC", "VE", "VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "ZA",
    "ZM", "ZW",
};

#define N_ISO3166 (sizeof(iso3166_alpha2) / sizeof(iso3166_alpha2[0]))

/* Narrows s[0..*len) to its part without leading/trailing ASCII space. */
static const char *trim_ascii(const char *s, size_t *len) {
    size_t n = *len;
    while (n > 0 && is_ascii_space(*s)) s++, n--;
    while (n > 0 && is_ascii_space(s[n - 1])) n--;
    *len = n;
    return s;
}

static int cmp_code(const void *a, const void *b) {
    return memcmp(a, b, 2);
}

void iqp_normalize_country(const char *in, size_t len, char out[3]) {
    char code[3];

    memcpy(out, "ZZ", 3);
    if (in == NULL) return;
    in = trim_ascii(in, &len);
    if (len != 2) return;
    code[0] = ascii_upper(in[0]);
    code[1] = ascii_upper(in[1]);
    code[2] = '\0';
    if (bsearch(code, iso3166_alpha2, N_ISO3166, sizeof(iso3166_alpha2[0]), cmp_code))
        memcpy(out, code, 3);
}

/* --------------------------------------------------------------- gender -- */

/* 1 when s[0..len) equals the lower-case word w, ignoring ASCII case. */
static int word_eq(const char *s, size_t len, const char *w) {
    size_t i;
    if (strlen(w) != len) return 0;
    for (i = 0; i < len; i++)
        if (ascii_lower(s[i]) != w[i]) return 0;
    return 1;
}

iqp_gender iqp_normalize_gender(const char *in, size_t len) {
    if (in == NULL) return IQP_GENDER_UNKNOWN;
    in = trim_ascii(in, &len);
    if (word_eq(in, len, "female") || word_eq(in, len, "f") || word_eq(in, len, "woman"))
        return IQP_GENDER_FEMALE;
    if (word_eq(in, len, "male") || word_eq(in, len, "m") || word_eq(in, len, "man"))
        return IQP_GENDER_MALE;
    return IQP_GENDER_UNKNOWN;
}

const char *iqp_gender_name(iqp_gender g) {
    switch (g) {
    case IQP_GENDER_FEMALE: return "female";
    case IQP_GENDER_MALE: return "male";
    default: return "unknown";
    }
}

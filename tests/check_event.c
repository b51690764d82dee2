/* check_event.c -- unit tests for schemas/event.c.
 *
 * The example files under schemas/examples/ are the contract: every good
 * example must decode, every bad one must yield exactly the code and field
 * that schemas/examples/bad/manifest.tsv names, and every file in bad/ must
 * be listed there. Limits are exercised in memory with small values. The
 * expected values are literals, not computed by the code under test.
 */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schemas/event.h"

/* The default segments are query, country, gender (model/config.c): the
 * decoder keeps the normalized country and gender at their indexes. */
#define EV_COUNTRY(ev) ((ev).seg_text[1])
#define EV_GENDER(ev) ((ev).seg_text[2])

#ifndef IQP_SRCDIR
#error "IQP_SRCDIR must name the source directory"
#endif

#define GOOD_DIR IQP_SRCDIR "/schemas/examples/good"
#define BAD_DIR IQP_SRCDIR "/schemas/examples/bad"

/* ---------------------------------------------------------------- helpers */

/* Reads a whole file; aborts the test when it cannot. */
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    ck_assert_msg(f != NULL, "cannot open %s", path);
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    ck_assert_int_ge(n, 0);
    rewind(f);
    buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

/* An example file is one line: exactly one '\n', at the end. Returns the
 * line without it. */
static char *read_example(const char *dir, const char *name, size_t *len) {
    char path[1024];
    char *buf;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    buf = slurp(path, len);
    ck_assert_msg(*len > 0 && buf[*len - 1] == '\n', "%s: no final newline", name);
    ck_assert_msg(memchr(buf, '\n', *len - 1) == NULL, "%s: more than one line", name);
    buf[--*len] = '\0';
    return buf;
}

static iqp_config default_cfg(void) {
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    return cfg;
}

/* Decodes a good example into ev (caller clears it). */
static void decode_good(const char *name, iqp_event *ev) {
    iqp_config cfg = default_cfg();
    iqp_decode_error err;
    char msg[256];
    size_t len;
    char *line = read_example(GOOD_DIR, name, &len);
    int rc = iqp_event_decode(&cfg, line, len, ev, &err);

    iqp_decode_error_format(&err, msg, sizeof(msg));
    free(line);
    ck_assert_msg(rc == 0, "%s: %s", name, msg);
}

/* Decodes a string; returns the return code, err filled. */
static int decode_str(const iqp_config *cfg, const char *s, iqp_event *ev,
                      iqp_decode_error *err) {
    return iqp_event_decode(cfg, s, strlen(s), ev, err);
}

static void expect_error(const iqp_config *cfg, const char *s, iqp_decode_code code,
                         const char *field) {
    iqp_event ev;
    iqp_decode_error err;
    ck_assert_int_eq(decode_str(cfg, s, &ev, &err), -1);
    ck_assert_msg(err.code == code, "got %s, want %s: %s", iqp_decode_code_name(err.code),
                  iqp_decode_code_name(code), err.detail);
    ck_assert_str_eq(err.field, field);
}

static void expect_id(const iqp_item_ref *it, const char *id, long long pos) {
    ck_assert_uint_eq(it->len, strlen(id));
    ck_assert_mem_eq(it->id, id, it->len);
    ck_assert_int_eq(it->pos, pos);
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* ----------------------------------------------------------- good files */

START_TEST(good_examples_decode) {
    DIR *dir = opendir(GOOD_DIR);
    struct dirent *de;
    int n = 0, kinds[2] = {0, 0}, actions_seen = 0;

    ck_assert_ptr_nonnull(dir);
    while ((de = readdir(dir)) != NULL) {
        iqp_event ev;
        if (!has_suffix(de->d_name, ".json")) continue;
        decode_good(de->d_name, &ev);
        kinds[ev.kind]++;
        if (ev.kind == IQP_EVENT_ACTION) actions_seen |= 1 << ev.action;
        ck_assert_ptr_nonnull(ev.query);
        ck_assert_uint_gt(ev.query_len, 0);
        iqp_event_clear(&ev);
        n++;
    }
    closedir(dir);
    ck_assert_int_ge(n, 6);
    ck_assert_int_ge(kinds[IQP_EVENT_IMPRESSION], 1);
    ck_assert_int_eq(actions_seen, 0x3f);  /* each of the six default actions */
}
END_TEST

START_TEST(good_plain_ids) {
    iqp_event ev;
    decode_good("impression_plain_ids.json", &ev);
    ck_assert_int_eq(ev.kind, IQP_EVENT_IMPRESSION);
    ck_assert_uint_eq(ev.event_id_len, 8);
    ck_assert_mem_eq(ev.event_id, "imp-0001", 8);
    ck_assert_uint_eq(ev.request_id_len, 8);
    ck_assert_mem_eq(ev.request_id, "req-0001", 8);
    ck_assert_int_eq(ev.ts, 1718000000000LL);
    ck_assert_str_eq(ev.query, "red dress");
    ck_assert_uint_eq(ev.query_len, 9);
    ck_assert_str_eq(EV_COUNTRY(ev), "US");
    ck_assert_str_eq(EV_GENDER(ev), "female");
    ck_assert_uint_eq(ev.n_items, 3);
    expect_id(&ev.items[0], "pin-1", 0);
    expect_id(&ev.items[1], "pin-2", 1);
    expect_id(&ev.items[2], "pin-3", 2);
    iqp_event_clear(&ev);
}
END_TEST

START_TEST(good_objects_keep_duplicates) {
    iqp_event ev;
    decode_good("impression_objects.json", &ev);
    ck_assert_str_eq(ev.query, "summer outfit");
    ck_assert_str_eq(EV_COUNTRY(ev), "DE");
    ck_assert_str_eq(EV_GENDER(ev), "male");
    ck_assert_uint_eq(ev.n_items, 4);
    expect_id(&ev.items[0], "pin-7", 3);
    expect_id(&ev.items[1], "pin-8", 1);
    expect_id(&ev.items[2], "pin-7", 5);
    expect_id(&ev.items[3], "pin-9", 3);   /* no pos: its array index */
    iqp_event_clear(&ev);
}
END_TEST

START_TEST(good_integer_ids) {
    iqp_event ev;
    decode_good("impression_integer_ids.json", &ev);
    ck_assert_int_eq(ev.ts, 0);
    ck_assert_str_eq(EV_COUNTRY(ev), "GB");
    ck_assert_str_eq(EV_GENDER(ev), "unknown");
    ck_assert_uint_eq(ev.n_items, 5);
    expect_id(&ev.items[0], "101", 0);
    expect_id(&ev.items[1], "202", 1);
    expect_id(&ev.items[2], "303", 9);
    expect_id(&ev.items[3], "404", 3);
    expect_id(&ev.items[4], "-5", 4);
    iqp_event_clear(&ev);
}
END_TEST

START_TEST(good_null_country_and_unicode) {
    iqp_event ev;
    decode_good("impression_null_country.json", &ev);
    ck_assert_str_eq(EV_COUNTRY(ev), "ZZ");
    ck_assert_str_eq(EV_GENDER(ev), "unknown");
    iqp_event_clear(&ev);

    decode_good("impression_unicode_query.json", &ev);
    ck_assert_str_eq(ev.query, "red dress strasse caf\xc3\xa9 fish");
    ck_assert_str_eq(EV_COUNTRY(ev), "JP");
    ck_assert_str_eq(EV_GENDER(ev), "female");
    ck_assert_uint_eq(ev.n_items, 2);
    expect_id(&ev.items[0], "\xe3\x83\x94\xe3\x83\xb3-1", 0);   /* "ピン-1" */
    iqp_event_clear(&ev);

    decode_good("impression_empty_items.json", &ev);
    ck_assert_uint_eq(ev.n_items, 0);
    ck_assert_str_eq(EV_COUNTRY(ev), "ZZ");    /* "UK" is not an assigned code */
    ck_assert_str_eq(EV_GENDER(ev), "male");
    iqp_event_clear(&ev);
}
END_TEST

START_TEST(good_actions) {
    iqp_event ev;
    decode_good("action_click.json", &ev);
    ck_assert_int_eq(ev.kind, IQP_EVENT_ACTION);
    ck_assert_int_eq(ev.action, 0);
    expect_id(&ev.item, "pin-2", -1);
    ck_assert_uint_eq(ev.n_items, 0);
    iqp_event_clear(&ev);

    decode_good("action_save.json", &ev);
    ck_assert_int_eq(ev.action, 1);
    expect_id(&ev.item, "pin-8", 1);
    ck_assert_str_eq(ev.query, "summer outfit");
    ck_assert_mem_eq(ev.request_id, "req-0002", 8);
    iqp_event_clear(&ev);

    decode_good("action_closeup.json", &ev);
    ck_assert_int_eq(ev.action, 2);
    expect_id(&ev.item, "101", -1);
    ck_assert_str_eq(EV_COUNTRY(ev), "GB");
    iqp_event_clear(&ev);

    decode_good("action_long_click.json", &ev);
    ck_assert_int_eq(ev.action, 3);
    expect_id(&ev.item, "303", -1);
    iqp_event_clear(&ev);

    decode_good("action_screenshot.json", &ev);
    ck_assert_int_eq(ev.action, 5);
    ck_assert_str_eq(ev.query, "red dress strasse caf\xc3\xa9 fish");
    iqp_event_clear(&ev);
}
END_TEST

/* ------------------------------------------------------------ bad files */

/* Splits a manifest line "file\tcode\tfield" in place. */
static void split_manifest(char *line, char **file, char **code, char **field) {
    char *t1 = strchr(line, '\t'), *t2;
    ck_assert_msg(t1 != NULL, "manifest line without tab: %s", line);
    *t1 = '\0';
    t2 = strchr(t1 + 1, '\t');
    ck_assert_msg(t2 != NULL, "manifest line without field: %s", line);
    *t2 = '\0';
    *file = line;
    *code = t1 + 1;
    *field = t2 + 1;
}

/* The event after a failed decode holds nothing. */
static void expect_empty(const iqp_event *ev) {
    ck_assert_ptr_null(ev->root);
    ck_assert_ptr_null(ev->query);
    ck_assert_ptr_null(ev->items);
    ck_assert_ptr_null(ev->scratch);
    ck_assert_uint_eq(ev->n_items, 0);
}

static void check_bad_file(const char *file, const char *code, const char *field) {
    iqp_config cfg = default_cfg();
    iqp_event ev;
    iqp_decode_error err;
    size_t len;
    char *line = read_example(BAD_DIR, file, &len);
    int rc = iqp_event_decode(&cfg, line, len, &ev, &err);

    free(line);
    ck_assert_msg(rc == -1, "%s decoded", file);
    expect_empty(&ev);
    ck_assert_msg(strcmp(iqp_decode_code_name(err.code), code) == 0 &&
                      strcmp(err.field, field) == 0,
                  "%s: got %s \"%s\" (%s), want %s \"%s\"", file,
                  iqp_decode_code_name(err.code), err.field, err.detail, code, field);
    ck_assert_msg(err.detail[0] != '\0', "%s: no detail", file);
}

START_TEST(bad_examples_match_manifest) {
    char *text, *line, *save = NULL;
    size_t len;
    int n = 0, seen[IQP_DECODE__COUNT] = {0}, c;

    text = slurp(BAD_DIR "/manifest.tsv", &len);
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *file, *code, *field;
        split_manifest(line, &file, &code, &field);
        check_bad_file(file, code, field);
        for (c = 0; c < IQP_DECODE__COUNT; c++)
            if (strcmp(code, iqp_decode_code_name((iqp_decode_code)c)) == 0) seen[c]++;
        n++;
    }
    free(text);
    ck_assert_int_ge(n, 20);
    /* one bad file per error code, except too_large (tested in memory) */
    for (c = IQP_DECODE_INVALID_JSON; c < IQP_DECODE__COUNT; c++)
        if (c != IQP_DECODE_TOO_LARGE)
            ck_assert_msg(seen[c] > 0, "no bad example for %s",
                          iqp_decode_code_name((iqp_decode_code)c));
}
END_TEST

START_TEST(bad_files_all_listed) {
    char *text;
    size_t len;
    DIR *dir = opendir(BAD_DIR);
    struct dirent *de;
    int n = 0;

    ck_assert_ptr_nonnull(dir);
    text = slurp(BAD_DIR "/manifest.tsv", &len);
    while ((de = readdir(dir)) != NULL) {
        char key[300];
        if (!has_suffix(de->d_name, ".json")) continue;
        snprintf(key, sizeof(key), "%s\t", de->d_name);
        ck_assert_msg(strncmp(text, key, strlen(key)) == 0 || strstr(text, key) != NULL,
                      "%s is not in manifest.tsv", de->d_name);
        n++;
    }
    closedir(dir);
    free(text);
    ck_assert_int_ge(n, 20);
}
END_TEST

/* ---------------------------------------------------------- in memory */

#define EV_HEAD "{\"schema\":\"impression.v1\",\"event_id\":\"e1\",\"ts\":5,\"request_id\":\"r1\"," \
                "\"query\":\"q\",\"user\":{\"country\":\"us\",\"gender\":\"f\"},"
#define ACT_HEAD "{\"schema\":\"action.v1\",\"event_id\":\"a1\",\"ts\":5,\"request_id\":\"r1\"," \
                 "\"query\":\"q\",\"user\":{\"country\":\"us\",\"gender\":\"f\"},"

START_TEST(too_large) {
    iqp_config cfg = default_cfg();
    const char *ok = EV_HEAD "\"items\":[\"a\"]}";
    size_t n = strlen(ok);
    iqp_event ev;
    iqp_decode_error err;

    cfg.limits.max_event_bytes = n;
    ck_assert_int_eq(decode_str(&cfg, ok, &ev, &err), 0);
    iqp_event_clear(&ev);
    cfg.limits.max_event_bytes = n - 1;
    expect_error(&cfg, ok, IQP_DECODE_TOO_LARGE, "");
    /* checked before parsing: garbage over the limit is too_large too */
    cfg.limits.max_event_bytes = 4;
    expect_error(&cfg, "not json", IQP_DECODE_TOO_LARGE, "");
}
END_TEST

START_TEST(too_many_items) {
    iqp_config cfg = default_cfg();
    iqp_event ev;
    iqp_decode_error err;

    cfg.limits.max_items = 3;
    ck_assert_int_eq(decode_str(&cfg, EV_HEAD "\"items\":[\"a\",\"b\",3]}", &ev, &err), 0);
    ck_assert_uint_eq(ev.n_items, 3);
    iqp_event_clear(&ev);
    expect_error(&cfg, EV_HEAD "\"items\":[\"a\",\"b\",3,{\"id\":\"d\"}]}",
                 IQP_DECODE_TOO_MANY_ITEMS, "items");
    cfg.limits.max_items = 0;
    ck_assert_int_eq(decode_str(&cfg, EV_HEAD "\"items\":[]}", &ev, &err), 0);
    iqp_event_clear(&ev);
    expect_error(&cfg, EV_HEAD "\"items\":[1]}", IQP_DECODE_TOO_MANY_ITEMS, "items");
}
END_TEST

START_TEST(string_limit_is_bytes) {
    iqp_config cfg = default_cfg();
    iqp_event ev;
    iqp_decode_error err;

    cfg.limits.max_string_bytes = 8;
    ck_assert_int_eq(decode_str(&cfg, EV_HEAD "\"items\":[\"12345678\"]}", &ev, &err), 0);
    iqp_event_clear(&ev);
    expect_error(&cfg, EV_HEAD "\"items\":[\"a\",\"123456789\"]}", IQP_DECODE_STRING_TOO_LONG,
                 "items[1]");
    expect_error(&cfg, EV_HEAD "\"items\":[{\"id\":\"123456789\"}]}",
                 IQP_DECODE_STRING_TOO_LONG, "items[0].id");
    /* "ＲＥＤ" is 9 bytes of raw text, though it normalizes to "red" */
    expect_error(&cfg,
                 "{\"schema\":\"impression.v1\",\"event_id\":\"e\",\"ts\":1,\"request_id\":\"r\","
                 "\"query\":\"\xef\xbc\xb2\xef\xbc\xa5\xef\xbc\xa4\",\"user\":{\"country\":null,"
                 "\"gender\":null},\"items\":[]}",
                 IQP_DECODE_STRING_TOO_LONG, "query");
    /* \u escapes count as the bytes they decode to: 6 x U+00E9 = 12 bytes */
    expect_error(&cfg, ACT_HEAD "\"item\":\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\","
                 "\"action\":\"click\"}", IQP_DECODE_STRING_TOO_LONG, "item");
}
END_TEST

START_TEST(duplicate_and_integer_ids) {
    iqp_config cfg = default_cfg();
    iqp_event ev;
    iqp_decode_error err;
    const char *s = EV_HEAD "\"items\":[\"a\",\"b\",\"a\",7,\"7\",{\"id\":7,\"pos\":0},"
                    "9223372036854775807,-9223372036854775808,0]}";

    ck_assert_int_eq(decode_str(&cfg, s, &ev, &err), 0);
    ck_assert_uint_eq(ev.n_items, 9);
    expect_id(&ev.items[0], "a", 0);
    expect_id(&ev.items[1], "b", 1);
    expect_id(&ev.items[2], "a", 2);
    expect_id(&ev.items[3], "7", 3);
    expect_id(&ev.items[4], "7", 4);
    expect_id(&ev.items[5], "7", 0);
    expect_id(&ev.items[6], "9223372036854775807", 6);
    expect_id(&ev.items[7], "-9223372036854775808", 7);
    expect_id(&ev.items[8], "0", 8);
    iqp_event_clear(&ev);
    iqp_event_clear(&ev);   /* clearing twice is harmless */
}
END_TEST

START_TEST(line_framing) {
    iqp_config cfg = default_cfg();
    iqp_event ev;
    iqp_decode_error err;
    const char *s = EV_HEAD "\"items\":[]}";
    char buf[512];

    /* trailing newline / CRLF are white space */
    snprintf(buf, sizeof(buf), "%s\r\n", s);
    ck_assert_int_eq(decode_str(&cfg, buf, &ev, &err), 0);
    iqp_event_clear(&ev);
    /* buf need not be NUL-terminated: len bounds it */
    snprintf(buf, sizeof(buf), "%sGARBAGE", s);
    ck_assert_int_eq(iqp_event_decode(&cfg, buf, strlen(s), &ev, &err), 0);
    iqp_event_clear(&ev);
    expect_error(&cfg, buf, IQP_DECODE_INVALID_JSON, "");
    expect_error(&cfg, "", IQP_DECODE_INVALID_JSON, "");
    expect_error(&cfg, "null", IQP_DECODE_NOT_OBJECT, "");
}
END_TEST

START_TEST(field_rules) {
    iqp_config cfg = default_cfg();
    iqp_event ev;
    iqp_decode_error err;

    /* user.country and user.gender: empty strings are unknown, not errors */
    ck_assert_int_eq(
        decode_str(&cfg,
                   "{\"schema\":\"action.v1\",\"event_id\":\"a\",\"ts\":1,\"request_id\":\"r\","
                   "\"query\":\" Q \",\"user\":{\"country\":\"\",\"gender\":\"\"},"
                   "\"item\":{\"id\":\"x\",\"pos\":4},\"action\":\"download\",\"extra\":[1]}",
                   &ev, &err),
        0);
    ck_assert_str_eq(EV_COUNTRY(ev), "ZZ");
    ck_assert_str_eq(EV_GENDER(ev), "unknown");
    ck_assert_str_eq(ev.query, "q");
    ck_assert_int_eq(ev.action, 4);
    expect_id(&ev.item, "x", 4);
    iqp_event_clear(&ev);
    /* the first problem in field order wins */
    expect_error(&cfg, "{\"schema\":\"action.v1\",\"ts\":-1}", IQP_DECODE_MISSING_FIELD,
                 "event_id");
    expect_error(&cfg, "{\"ts\":-1}", IQP_DECODE_MISSING_FIELD, "schema");
    expect_error(&cfg, EV_HEAD "\"items\":[{\"id\":1,\"pos\":1.0}]}", IQP_DECODE_WRONG_TYPE,
                 "items[0].pos");
    expect_error(&cfg, EV_HEAD "\"items\":[[\"a\"]]}", IQP_DECODE_WRONG_TYPE, "items[0]");
    expect_error(&cfg, EV_HEAD "\"items\":[\"a\",{\"id\":\"\"}]}", IQP_DECODE_INVALID_VALUE,
                 "items[1].id");
    expect_error(&cfg, ACT_HEAD "\"item\":\"x\",\"action\":null}", IQP_DECODE_WRONG_TYPE,
                 "action");
    expect_error(&cfg, ACT_HEAD "\"item\":true,\"action\":\"click\"}", IQP_DECODE_WRONG_TYPE,
                 "item");
    expect_error(&cfg, ACT_HEAD "\"item\":{\"id\":\"x\",\"pos\":-2},\"action\":\"click\"}",
                 IQP_DECODE_INVALID_VALUE, "item.pos");
}
END_TEST

START_TEST(invalid_utf8_names_field) {
    iqp_config cfg = default_cfg();
    /* bad bytes in an unknown field still make the line invalid */
    expect_error(&cfg, EV_HEAD "\"items\":[],\"note\":{\"x\":[\"ok\",\"\xff\"]}}",
                 IQP_DECODE_INVALID_UTF8, "note.x[1]");
    expect_error(&cfg,
                 "{\"schema\":\"impression.v1\",\"event_id\":\"e1\",\"ts\":5,\"request_id\":\"r1\","
                 "\"query\":\"q\",\"user\":{\"country\":\"\xc3\",\"gender\":null},\"items\":[]}",
                 IQP_DECODE_INVALID_UTF8, "user.country");
    expect_error(&cfg, EV_HEAD "\"items\":[{\"id\":\"\xe9t\xe9\"}]}", IQP_DECODE_INVALID_UTF8,
                 "items[0].id");
    /* not JSON apart from the encoding either: invalid_json */
    expect_error(&cfg, EV_HEAD "\"items\":[\"\xff\"", IQP_DECODE_INVALID_JSON, "");
}
END_TEST

START_TEST(configured_actions) {
    iqp_config cfg = default_cfg();
    iqp_event ev;
    iqp_decode_error err;

    cfg.n_actions = 2;
    strcpy(cfg.actions[0], "like");
    strcpy(cfg.actions[1], "share");
    ck_assert_int_eq(decode_str(&cfg, ACT_HEAD "\"item\":\"x\",\"action\":\"share\"}", &ev, &err),
                     0);
    ck_assert_int_eq(ev.action, 1);
    iqp_event_clear(&ev);
    expect_error(&cfg, ACT_HEAD "\"item\":\"x\",\"action\":\"click\"}", IQP_DECODE_UNKNOWN_ACTION,
                 "action");
    expect_error(&cfg, ACT_HEAD "\"item\":\"x\",\"action\":\"lik\"}", IQP_DECODE_UNKNOWN_ACTION,
                 "action");
    expect_error(&cfg, ACT_HEAD "\"item\":\"x\",\"action\":\"likes\"}", IQP_DECODE_UNKNOWN_ACTION,
                 "action");
}
END_TEST

/* -------------------------------------------------------------- errors */

START_TEST(error_format) {
    iqp_decode_error err;
    char buf[256];
    char small[8];

    memset(&err, 0, sizeof(err));
    err.code = IQP_DECODE_WRONG_TYPE;
    strcpy(err.field, "items[3].id");
    strcpy(err.detail, "expected a string");
    iqp_decode_error_format(&err, buf, sizeof(buf));
    ck_assert_str_eq(buf, "wrong_type: items[3].id: expected a string");
    iqp_decode_error_format(&err, small, sizeof(small));
    ck_assert_str_eq(small, "wrong_t");
    err.field[0] = '\0';
    iqp_decode_error_format(&err, buf, sizeof(buf));
    ck_assert_str_eq(buf, "wrong_type: expected a string");
    err.detail[0] = '\0';
    iqp_decode_error_format(&err, buf, sizeof(buf));
    ck_assert_str_eq(buf, "wrong_type");
    iqp_decode_error_format(&err, buf, 0);   /* writes nothing */
}
END_TEST

START_TEST(error_format_from_decode) {
    iqp_config cfg = default_cfg();
    iqp_event ev;
    iqp_decode_error err;
    char buf[256];

    ck_assert_int_eq(decode_str(&cfg, "{\"schema\":\"impression.v1\",\"event_id\":\"e\","
                                      "\"ts\":\"5\"}", &ev, &err), -1);
    iqp_decode_error_format(&err, buf, sizeof(buf));
    ck_assert_str_eq(buf, "wrong_type: ts: expected an integer (ms since epoch), got a string");
    ck_assert_int_eq(decode_str(&cfg, "{\"schema\":\"action.v1\"", &ev, &err), -1);
    iqp_decode_error_format(&err, buf, sizeof(buf));
    ck_assert_msg(strncmp(buf, "invalid_json: line 1 column ", 28) == 0, "%s", buf);
}
END_TEST

START_TEST(code_names) {
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_OK), "ok");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_INVALID_JSON), "invalid_json");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_NOT_OBJECT), "not_object");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_TOO_LARGE), "too_large");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_UNKNOWN_SCHEMA), "unknown_schema");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_MISSING_FIELD), "missing_field");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_WRONG_TYPE), "wrong_type");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_INVALID_VALUE), "invalid_value");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_STRING_TOO_LONG), "string_too_long");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_TOO_MANY_ITEMS), "too_many_items");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_INVALID_UTF8), "invalid_utf8");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE_UNKNOWN_ACTION), "unknown_action");
    ck_assert_str_eq(iqp_decode_code_name(IQP_DECODE__COUNT), "unknown_code");
}
END_TEST

static Suite *event_suite(void) {
    Suite *s = suite_create("event");
    TCase *files = tcase_create("examples"), *mem = tcase_create("in_memory"),
          *errs = tcase_create("errors");

    tcase_add_test(files, good_examples_decode);
    tcase_add_test(files, good_plain_ids);
    tcase_add_test(files, good_objects_keep_duplicates);
    tcase_add_test(files, good_integer_ids);
    tcase_add_test(files, good_null_country_and_unicode);
    tcase_add_test(files, good_actions);
    tcase_add_test(files, bad_examples_match_manifest);
    tcase_add_test(files, bad_files_all_listed);
    tcase_add_test(mem, too_large);
    tcase_add_test(mem, too_many_items);
    tcase_add_test(mem, string_limit_is_bytes);
    tcase_add_test(mem, duplicate_and_integer_ids);
    tcase_add_test(mem, line_framing);
    tcase_add_test(mem, field_rules);
    tcase_add_test(mem, invalid_utf8_names_field);
    tcase_add_test(mem, configured_actions);
    tcase_add_test(errs, error_format);
    tcase_add_test(errs, error_format_from_decode);
    tcase_add_test(errs, code_names);
    suite_add_tcase(s, files);
    suite_add_tcase(s, mem);
    suite_add_tcase(s, errs);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(event_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

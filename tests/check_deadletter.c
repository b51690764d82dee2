/* check_deadletter.c -- the dead-letter sinks (consumers/deadletter.c).
 *
 * File sink: records with and without a Kafka partition, truncation and
 * "raw_base64", flush reporting a failed write; all read back as JSON.
 * Kafka sink: records produced to `iqp devbroker` (librdkafka's mock
 * cluster) read back with a client that is not ours (kcat), byte for byte,
 * with their headers; a property librdkafka rejects; a delivery failure
 * (broker taken down, short message.timeout.ms) and a queue that stays full,
 * both bounded in time. The broker is a child of the test, stopped by pid in
 * the checked teardown (a failing assertion in fork mode ends the test
 * process, and Check then kills its process group, broker included). */
#include <check.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "consumers/deadletter.h"
#include "tests/testutil.h"

static tu_broker b;
static char *tmp;

static void teardown(void) {
    tu_broker_stop(&b);
    if (tmp != NULL) tu_rmrf(tmp);
    free(tmp);
    tmp = NULL;
}

static char *tmp_path(const char *name) {
    if (tmp == NULL) tmp = tu_mkdtemp("deadletter");
    ck_assert_ptr_nonnull(tmp);
    return tu_fmt("%s/%s", tmp, name);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- file sink ---------------------------------------------------------- */

/* The file's lines, parsed: a JSON array of objects. */
static json_t *read_records(const char *path) {
    size_t len;
    char *text = tu_read_file(path, &len);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    json_t *all = json_array();
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        ck_assert_msg(nl != NULL, "last line not terminated");
        json_error_t jerr;
        json_t *rec = json_loadb(line, (size_t)(nl - line), 0, &jerr);
        ck_assert_msg(json_is_object(rec), "line %zu: %s", json_array_size(all) + 1, jerr.text);
        json_array_append_new(all, rec);
        line = nl + 1;
    }
    free(text);
    return all;
}

static const char *str_field(json_t *rec, const char *key) {
    json_t *v = json_object_get(rec, key);
    ck_assert_msg(json_is_string(v), "\"%s\" is not a string", key);
    return json_string_value(v);
}

static json_int_t int_field(json_t *rec, const char *key) {
    json_t *v = json_object_get(rec, key);
    ck_assert_msg(json_is_integer(v), "\"%s\" is not an integer", key);
    return json_integer_value(v);
}

/* The keys of rec, in order, comma-separated. */
static void key_order(json_t *rec, char *out, size_t outlen) {
    out[0] = '\0';
    for (void *it = json_object_iter(rec); it; it = json_object_iter_next(rec, it)) {
        if (out[0]) strncat(out, ",", outlen - strlen(out) - 1);
        strncat(out, json_object_iter_key(it), outlen - strlen(out) - 1);
    }
}

START_TEST(file_records_with_and_without_partition) {
    char *path = tmp_path("dead.jsonl"), err[512];
    iqp_deadletter *dl = iqp_deadletter_open_file(path, err, sizeof err);
    ck_assert_msg(dl != NULL, "%s", err);
    iqp_dl_origin kafka = {"events.in", 3, 9876543210ULL};
    iqp_dl_origin file = {"/data/a.jsonl", -1, 7};
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "bad_json", "bad_json: -: unexpected end",
                                               &kafka, "{\"q\":", 5, 5, err, sizeof err), 0);
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "missing_field", "missing_field: q: absent",
                                               &file, "{}", 2, 2, err, sizeof err), 0);
    ck_assert_int_eq(iqp_deadletter_write(dl, "bad_json", "bad_json: -: x", "/data/b.jsonl", 8,
                                          "x", 1, 1, err, sizeof err), 0);
    /* partition 0 is a partition */
    iqp_dl_origin p0 = {"events.in", 0, 0};
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "bad_json", "bad_json: -: y", &p0, "y", 1, 1,
                                               err, sizeof err), 0);
    ck_assert_uint_eq(iqp_deadletter_count(dl), 4);
    /* flush makes them readable before close */
    ck_assert_int_eq(iqp_deadletter_flush(dl, 1000, err, sizeof err), 0);
    json_t *recs = read_records(path);
    ck_assert_uint_eq(json_array_size(recs), 4);

    json_t *r = json_array_get(recs, 0);
    char keys[256];
    key_order(r, keys, sizeof keys);
    ck_assert_str_eq(keys, "reason,code,source,partition,position,raw");
    ck_assert_str_eq(str_field(r, "reason"), "bad_json: -: unexpected end");
    ck_assert_str_eq(str_field(r, "code"), "bad_json");
    ck_assert_str_eq(str_field(r, "source"), "events.in");
    ck_assert_int_eq(int_field(r, "partition"), 3);
    ck_assert_int_eq(int_field(r, "position"), 9876543210LL);
    ck_assert_str_eq(str_field(r, "raw"), "{\"q\":");

    r = json_array_get(recs, 1);
    key_order(r, keys, sizeof keys);
    ck_assert_str_eq(keys, "reason,code,source,position,raw");
    ck_assert_str_eq(str_field(r, "source"), "/data/a.jsonl");
    ck_assert_int_eq(int_field(r, "position"), 7);
    ck_assert_str_eq(str_field(r, "raw"), "{}");

    r = json_array_get(recs, 2);
    ck_assert_ptr_null(json_object_get(r, "partition"));
    ck_assert_str_eq(str_field(r, "source"), "/data/b.jsonl");
    ck_assert_int_eq(int_field(r, "position"), 8);

    r = json_array_get(recs, 3);
    ck_assert_int_eq(int_field(r, "partition"), 0);
    json_decref(recs);
    ck_assert_int_eq(iqp_deadletter_close(dl, err, sizeof err), 0);
    free(path);
}
END_TEST

START_TEST(file_truncation_and_base64_still_hold) {
    char *path = tmp_path("dead.jsonl"), err[512];
    iqp_deadletter *dl = iqp_deadletter_open_file(path, err, sizeof err);
    ck_assert_msg(dl != NULL, "%s", err);
    iqp_dl_origin o = {"events.in", 1, 42};
    char *big = malloc(10000);
    ck_assert_ptr_nonnull(big);
    for (int i = 0; i < 10000; i++) big[i] = (char)('a' + i % 26);
    /* 0: oversized text: first 4096 bytes, truncated, size */
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "too_large", "too_large: -: 10000 bytes", &o,
                                               big, 10000, 10000, err, sizeof err), 0);
    /* 1: cut by the caller (kept 100 of 5000) */
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "too_large", "too_large: -: 5000 bytes", &o,
                                               big, 100, 5000, err, sizeof err), 0);
    /* 2: not UTF-8 (with a NUL): raw_base64 */
    static const char bad[] = "\xff\xfe\x00" "bad\x80\n";
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "bad_utf8", "bad_utf8: q: not UTF-8", &o, bad,
                                               sizeof bad - 1, sizeof bad - 1, err, sizeof err), 0);
    /* 3: the 4096-byte cut splits a character: dropped, raw stays text */
    memset(big, 'x', 4095);
    memcpy(big + 4095, "\xc3\xa9zz", 4);
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "too_large", "too_large: -: 4099 bytes", &o,
                                               big, 4099, 4099, err, sizeof err), 0);
    /* 4: invalid and oversized: base64 of the first 4096 bytes */
    big[0] = (char)0xff;
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "too_large", "too_large: -: 4099 bytes", &o,
                                               big, 4099, 4099, err, sizeof err), 0);
    /* 5: invalid UTF-8 in the text fields is replaced */
    iqp_dl_origin weird = {"f\xfe.jsonl", -1, 1};
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "missing_field", "missing_field: \xff: absent",
                                               &weird, NULL, 0, 0, err, sizeof err), 0);
    ck_assert_int_eq(iqp_deadletter_close(dl, err, sizeof err), 0);

    json_t *recs = read_records(path);
    ck_assert_uint_eq(json_array_size(recs), 6);
    json_t *r = json_array_get(recs, 0);
    char keys[256];
    key_order(r, keys, sizeof keys);
    ck_assert_str_eq(keys, "reason,code,source,partition,position,truncated,size,raw");
    ck_assert(json_is_true(json_object_get(r, "truncated")));
    ck_assert_int_eq(int_field(r, "size"), 10000);
    ck_assert_uint_eq(strlen(str_field(r, "raw")), 4096);
    ck_assert_int_eq(strncmp(str_field(r, "raw"), "abcdefghijklmnopqrstuvwxyzabc", 29), 0);

    r = json_array_get(recs, 1);
    ck_assert(json_is_true(json_object_get(r, "truncated")));
    ck_assert_int_eq(int_field(r, "size"), 5000);
    ck_assert_uint_eq(strlen(str_field(r, "raw")), 100);

    r = json_array_get(recs, 2);
    ck_assert_ptr_null(json_object_get(r, "raw"));
    ck_assert_ptr_null(json_object_get(r, "truncated"));
    ck_assert_str_eq(str_field(r, "raw_base64"), "//4AYmFkgAo=");

    r = json_array_get(recs, 3);
    ck_assert(json_is_true(json_object_get(r, "truncated")));
    ck_assert_int_eq(int_field(r, "size"), 4099);
    ck_assert_uint_eq(strlen(str_field(r, "raw")), 4095);

    r = json_array_get(recs, 4);
    ck_assert_ptr_null(json_object_get(r, "raw"));
    ck_assert_uint_eq(strlen(str_field(r, "raw_base64")), 4096 / 3 * 4 + 4);
    ck_assert_int_eq(strncmp(str_field(r, "raw_base64"), "/3h4", 4), 0);

    r = json_array_get(recs, 5);
    ck_assert_str_eq(str_field(r, "reason"), "missing_field: \xef\xbf\xbd: absent");
    ck_assert_str_eq(str_field(r, "source"), "f\xef\xbf\xbd.jsonl");
    ck_assert_str_eq(str_field(r, "raw"), "");
    ck_assert_ptr_null(json_object_get(r, "partition"));
    json_decref(recs);
    free(big);
    free(path);
}
END_TEST

START_TEST(file_flush_reports_a_failed_write) {
    char err[512] = "";
    iqp_deadletter *dl = iqp_deadletter_open_file("/dev/full", err, sizeof err);
    ck_assert_msg(dl != NULL, "%s", err);
    iqp_dl_origin o = {"events.in", 0, 1};
    /* buffered: the write itself succeeds, flush finds the failure */
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "bad_json", "bad_json: -: x", &o, "x", 1, 1,
                                               err, sizeof err), 0);
    ck_assert_int_eq(iqp_deadletter_flush(dl, 1000, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "/dev/full") && strstr(err, "No space left"), "err: %s", err);
    /* sticky */
    err[0] = '\0';
    ck_assert_int_eq(iqp_deadletter_write_from(dl, "bad_json", "bad_json: -: x", &o, "x", 1, 1,
                                               err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "No space left"));
    ck_assert_int_eq(iqp_deadletter_flush(dl, 1000, err, sizeof err), -1);
    ck_assert_int_eq(iqp_deadletter_close(dl, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "No space left"));
}
END_TEST

START_TEST(count_only_sink_counts) {
    char err[512];
    iqp_deadletter *dl = iqp_deadletter_open_file(NULL, err, sizeof err);
    ck_assert_ptr_nonnull(dl);
    iqp_dl_origin o = {"events.in", 0, 1};
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(iqp_deadletter_write_from(dl, "c", "c: r", &o, "x", 1, 1, err, sizeof err),
                         0);
    ck_assert_int_eq(iqp_deadletter_write(dl, "c", "c: r", "f", 1, "x", 1, 1, err, sizeof err), 0);
    ck_assert_uint_eq(iqp_deadletter_count(dl), 4);
    ck_assert_int_eq(iqp_deadletter_flush(dl, 0, err, sizeof err), 0);
    ck_assert_int_eq(iqp_deadletter_close(dl, err, sizeof err), 0);
    /* an unopenable file fails the open with its path */
    ck_assert_ptr_null(iqp_deadletter_open_file("/nonexistent-dir/dead.jsonl", err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent-dir/dead.jsonl"));
}
END_TEST

/* ---- Kafka sink ----------------------------------------------------------- */

#define N_RECORDS 50
#define BIG_LEN (100 * 1024)
#define BIG_AT 13
#define BINARY_AT 7
#define EMPTY_AT 21

static const char BINARY[] = "\xff\xfe\x00" "bad\x80\n,=";

/* Record i: what is written, and how kcat must show it. File origins every
 * tenth record (written with the old iqp_deadletter_write); positions are
 * 1000 + i so the position identifies the record. */
typedef struct want {
    char *payload;
    size_t len;
    char reason[96], code[32];
    iqp_dl_origin origin;
} want;

static void make_want(int i, want *w) {
    memset(w, 0, sizeof *w);
    if (i == BIG_AT) {
        w->len = BIG_LEN;
        w->payload = malloc(BIG_LEN);
        ck_assert_ptr_nonnull(w->payload);
        for (size_t j = 0; j < BIG_LEN; j++) w->payload[j] = (char)((j * 31 + 7) % 251);
    } else if (i == BINARY_AT) {
        w->len = sizeof BINARY - 1;
        w->payload = malloc(w->len);
        ck_assert_ptr_nonnull(w->payload);
        memcpy(w->payload, BINARY, w->len);
    } else if (i == EMPTY_AT) {
        w->payload = tu_fmt("%s", "");
        w->len = 0;
    } else {
        w->payload = tu_fmt("{\"q\":\"event %d\"}", i);
        w->len = strlen(w->payload);
    }
    const char *code = i % 2 ? "bad_json" : "future_event";
    snprintf(w->code, sizeof w->code, "%s", code);
    snprintf(w->reason, sizeof w->reason, "%s: q: event %d, caf\xc3\xa9 = bad", code, i);
    w->origin.position = 1000 + (uint64_t)i;
    w->origin.partition = i % 10 == 4 ? -1 : i % 3;
    w->origin.source = i % 10 == 4 ? "/data/in 1.jsonl" : "events.in";
}

/* The header line kcat's %h prints for record w. */
static char *want_headers(const want *w) {
    char part[48] = "";
    if (w->origin.partition >= 0)
        snprintf(part, sizeof part, ",iqp.partition=%d", (int)w->origin.partition);
    return tu_fmt("iqp.reason=%s,iqp.code=%s,iqp.source=%s%s,iqp.position=%llu", w->reason,
                  w->code, w->origin.source, part, (unsigned long long)w->origin.position);
}

static int write_want(iqp_deadletter *dl, const want *w, char *err, size_t errlen) {
    if (w->origin.partition < 0)
        return iqp_deadletter_write(dl, w->code, w->reason, w->origin.source, w->origin.position,
                                    w->payload, w->len, w->len, err, errlen);
    return iqp_deadletter_write_from(dl, w->code, w->reason, &w->origin, w->payload, w->len,
                                     w->len, err, errlen);
}

static void start_broker(const char *brokers, const char *partitions) {
    const char *args[] = {"--brokers", brokers, "--partitions", partitions, "--topics", "dl.test",
                          NULL};
    ck_assert_int_eq(tu_broker_start(&b, args), 0);
    ck_assert_msg(strncmp(b.bootstrap, "127.0.0.1:", 10) == 0, "bootstrap '%s'", b.bootstrap);
}

/* Checks one kcat record "R <partition> <keylen> <len> <headers>\n<payload>\n"
 * at *off against the wanted records; marks it seen. */
static void check_one(const char *buf, size_t len, size_t *off, want *wants, int *seen) {
    const char *line = buf + *off;
    const char *nl = memchr(line, '\n', len - *off);
    ck_assert_msg(nl != NULL, "unterminated record header at %zu", *off);
    int part, keylen, hoff = 0;
    long vlen;
    ck_assert_msg(sscanf(line, "R %d %d %ld %n", &part, &keylen, &vlen, &hoff) == 3 && hoff > 0,
                  "bad record header '%.80s'", line);
    ck_assert_int_eq(keylen, -1); /* NULL key */
    const char *pos = strstr(line, "iqp.position=");
    ck_assert_msg(pos != NULL && pos < nl, "no iqp.position in '%.200s'", line);
    int i = atoi(pos + strlen("iqp.position=")) - 1000;
    ck_assert_msg(i >= 0 && i < N_RECORDS, "unexpected position in '%.200s'", line);
    ck_assert_msg(!seen[i], "record %d arrived twice", i);
    seen[i] = 1;
    char *hw = want_headers(&wants[i]);
    size_t hlen = (size_t)(nl - (line + hoff));
    ck_assert_msg(hlen == strlen(hw) && memcmp(line + hoff, hw, hlen) == 0,
                  "record %d headers:\n got '%.*s'\nwant '%s'", i, (int)hlen, line + hoff, hw);
    free(hw);
    size_t start = (size_t)(nl + 1 - buf);
    ck_assert_msg(vlen >= 0, "record %d: NULL value", i); /* an empty one stays empty */
    ck_assert_msg(start + (size_t)vlen + 1 <= len, "record %d: payload runs past the end", i);
    ck_assert_msg((size_t)vlen == wants[i].len, "record %d: %ld bytes, want %zu", i, vlen,
                  wants[i].len);
    ck_assert_msg(memcmp(buf + start, wants[i].payload, wants[i].len) == 0,
                  "record %d: payload differs", i);
    ck_assert_int_eq(buf[start + (size_t)vlen], '\n');
    *off = start + (size_t)vlen + 1;
}

START_TEST(kafka_records_round_trip_through_kcat) {
    start_broker("1", "2");
    char err[512];
    /* a tiny local queue: writes run into QUEUE_FULL and must poll and retry */
    const char *props[] = {"bootstrap.servers", b.bootstrap, "queue.buffering.max.messages", "8",
                           NULL};
    iqp_deadletter *dl = iqp_deadletter_open_kafka(props, "dl.test", err, sizeof err);
    ck_assert_msg(dl != NULL, "%s", err);
    want wants[N_RECORDS];
    for (int i = 0; i < N_RECORDS; i++) {
        make_want(i, &wants[i]);
        ck_assert_msg(write_want(dl, &wants[i], err, sizeof err) == 0, "record %d: %s", i, err);
    }
    ck_assert_uint_eq(iqp_deadletter_count(dl), N_RECORDS);
    ck_assert_msg(iqp_deadletter_flush(dl, 10000, err, sizeof err) == 0, "flush: %s", err);

    char *out = tmp_path("kcat.out");
    char *cmd = tu_fmt("kcat -C -b '%s' -t dl.test -e -q -f 'R %%p %%K %%S %%h\\n%%s\\n' > '%s'",
                       b.bootstrap, out);
    ck_assert_int_eq(tu_run(cmd, NULL), 0);
    size_t len;
    char *buf = tu_read_file(out, &len);
    ck_assert_ptr_nonnull(buf);
    int seen[N_RECORDS] = {0}, n = 0;
    for (size_t off = 0; off < len; n++) check_one(buf, len, &off, wants, seen);
    ck_assert_int_eq(n, N_RECORDS); /* every record, each once (check_one) */
    free(buf);
    free(cmd);
    free(out);
    for (int i = 0; i < N_RECORDS; i++) free(wants[i].payload);
    ck_assert_msg(iqp_deadletter_close(dl, err, sizeof err) == 0, "close: %s", err);
    ck_assert_int_eq(tu_broker_stop(&b), 0);
}
END_TEST

START_TEST(kafka_bad_property_fails_open) {
    char err[512] = "";
    const char *bad[] = {"bootstrap.servers", "127.0.0.1:1", "no.such.property", "1", NULL};
    ck_assert_ptr_null(iqp_deadletter_open_kafka(bad, "dl.test", err, sizeof err));
    ck_assert_msg(strstr(err, "no.such.property") != NULL, "err: %s", err);
    ck_assert_msg(strstr(err, "dl.test") != NULL, "err: %s", err);
    const char *bad_value[] = {"message.timeout.ms", "soon", NULL};
    err[0] = '\0';
    ck_assert_ptr_null(iqp_deadletter_open_kafka(bad_value, "dl.test", err, sizeof err));
    ck_assert_msg(strstr(err, "message.timeout.ms") != NULL, "err: %s", err);
    const char *no_value[] = {"bootstrap.servers", NULL};
    err[0] = '\0';
    ck_assert_ptr_null(iqp_deadletter_open_kafka(no_value, "dl.test", err, sizeof err));
    ck_assert_msg(strstr(err, "bootstrap.servers") != NULL, "err: %s", err);
    const char *ok[] = {"bootstrap.servers", "127.0.0.1:1", NULL};
    ck_assert_ptr_null(iqp_deadletter_open_kafka(ok, "", err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "topic"));
}
END_TEST

static int write_one(iqp_deadletter *dl, int i, char *err, size_t errlen) {
    iqp_dl_origin o = {"events.in", 0, (uint64_t)i};
    return iqp_deadletter_write_from(dl, "bad_json", "bad_json: -: x", &o, "{", 1, 1, err, errlen);
}

START_TEST(kafka_delivery_failure_is_reported) {
    double t0 = now_s();
    start_broker("1", "1");
    char err[512];
    const char *props[] = {"bootstrap.servers", b.bootstrap, "message.timeout.ms", "1500",
                           "log_level", "2", NULL}; /* no connection-refused noise */
    iqp_deadletter *dl = iqp_deadletter_open_kafka(props, "dl.test", err, sizeof err);
    ck_assert_msg(dl != NULL, "%s", err);
    /* healthy first */
    ck_assert_int_eq(write_one(dl, 0, err, sizeof err), 0);
    ck_assert_msg(iqp_deadletter_flush(dl, 5000, err, sizeof err) == 0, "flush: %s", err);
    ck_assert_str_eq(tu_broker_command(&b, "down 1"), "ok down 1");
    for (int i = 1; i <= 5; i++) ck_assert_int_eq(write_one(dl, i, err, sizeof err), 0);
    ck_assert_int_eq(iqp_deadletter_flush(dl, 8000, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "dl.test") && strstr(err, "5 record(s) not delivered") &&
                      strstr(err, "timed out"),
                  "err: %s", err);
    /* sticky: no more writes, and close says so too */
    err[0] = '\0';
    ck_assert_int_eq(write_one(dl, 6, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "not delivered") != NULL, "err: %s", err);
    ck_assert_int_eq(iqp_deadletter_flush(dl, 1000, err, sizeof err), -1);
    ck_assert_int_eq(iqp_deadletter_close(dl, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "not delivered") != NULL, "err: %s", err);
    ck_assert_msg(now_s() - t0 < 20, "took %.1f s", now_s() - t0);
}
END_TEST

START_TEST(kafka_full_queue_fails_write_in_bounded_time) {
    start_broker("1", "1");
    ck_assert_str_eq(tu_broker_command(&b, "down 1"), "ok down 1");
    char err[512];
    const char *props[] = {"bootstrap.servers", b.bootstrap, "queue.buffering.max.messages", "1",
                           "message.timeout.ms", "12000", "log_level", "2", NULL};
    iqp_deadletter *dl = iqp_deadletter_open_kafka(props, "dl.test", err, sizeof err);
    ck_assert_msg(dl != NULL, "%s", err);
    ck_assert_int_eq(write_one(dl, 0, err, sizeof err), 0);
    double t0 = now_s();
    ck_assert_int_eq(write_one(dl, 1, err, sizeof err), -1);
    double waited = now_s() - t0;
    ck_assert_msg(waited > 9 && waited < 12, "write blocked %.1f s", waited);
    ck_assert_msg(strstr(err, "dl.test") && strstr(err, "queue still full"), "err: %s", err);
    ck_assert_uint_eq(iqp_deadletter_count(dl), 1);
    /* close: record 0 times out (12 s after its write) within close's 10 s */
    t0 = now_s();
    ck_assert_int_eq(iqp_deadletter_close(dl, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "1 record(s) not delivered") != NULL, "err: %s", err);
    ck_assert_msg(now_s() - t0 < 5, "close took %.1f s", now_s() - t0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("deadletter");
    TCase *file = tcase_create("file");
    tcase_add_checked_fixture(file, NULL, teardown);
    tcase_add_test(file, file_records_with_and_without_partition);
    tcase_add_test(file, file_truncation_and_base64_still_hold);
    tcase_add_test(file, file_flush_reports_a_failed_write);
    tcase_add_test(file, count_only_sink_counts);
    suite_add_tcase(s, file);
    TCase *kafka = tcase_create("kafka");
    tcase_set_timeout(kafka, 60);
    tcase_add_checked_fixture(kafka, NULL, teardown);
    tcase_add_test(kafka, kafka_records_round_trip_through_kcat);
    tcase_add_test(kafka, kafka_bad_property_fails_open);
    tcase_add_test(kafka, kafka_delivery_failure_is_reported);
    tcase_add_test(kafka, kafka_full_queue_fails_write_in_bounded_time);
    suite_add_tcase(s, kafka);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

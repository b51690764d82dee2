/* deadletter.c -- the dead-letter sinks: a JSON-lines file, a Kafka topic,
 * or nothing but a count.
 *
 * Design. An iqp_deadletter is a tagged struct: a pointer to the sink's
 * operations (sink_ops: write / flush / close) and a union with the state of
 * that one sink. The public functions only turn their arguments into a
 * dl_record, dispatch, and keep the count. Each sink owns everything in its
 * state (the FILE, the producer) and releases it in its close.
 *
 * File sink. Every record is built as a jansson object with a fixed key order
 *
 *   {"reason":...,"code":...,"source":...,["partition":N,]"position":N,
 *    ["truncated":true,"size":N,] "raw":... | "raw_base64":...}
 *
 * ("partition" only when the origin has one, i.e. a Kafka origin) and dumped
 * compact (JSON_COMPACT | JSON_PRESERVE_ORDER) followed by '\n' into a fully
 * buffered stdio stream, so a burst of bad events costs one write(2) per
 * 64 KiB, not one per event. The stream is flushed by flush and at close.
 *
 * The original bytes go under "raw" when they are valid UTF-8 (checked here,
 * strictly: no overlongs, no surrogates, nothing above U+10FFFF) and under
 * "raw_base64" otherwise. Only the first 4096 bytes are kept; a record whose
 * bytes were cut (here, or by the caller: full_len > rawlen) carries
 * "truncated": true and "size": <full length>. When the cut splits a UTF-8
 * character of otherwise valid text, the partial character is dropped so
 * the record stays readable as "raw".
 *
 * The text fields (reason, code, source) must be JSON strings; any invalid
 * UTF-8 in them (a file name, a quoted bad field) is replaced with U+FFFD.
 * A write failure is sticky: once the stream has failed every later write,
 * flush and the close report it.
 *
 * Kafka sink. One idempotent producer (enable.idempotence, acks=all) per
 * sink. A record is one message: value = the caller's bytes, complete and
 * untouched (no UTF-8 check, no truncation), key = NULL (the partitioner
 * spreads them), the metadata in headers (iqp.reason, iqp.code, iqp.source,
 * iqp.partition when >= 0, iqp.position, iqp.size when the caller truncated).
 * Write copies the bytes into the producer queue; on QUEUE_FULL it polls
 * (serving delivery reports, which frees queue space) and retries for up
 * to QUEUE_FULL_WAIT_MS, then fails. Delivery reports (dr_msg_cb) and
 * errors (error_cb) are served only from rd_kafka_poll / rd_kafka_flush,
 * which only write/flush/close call, so they run on the caller's thread and
 * the state needs no lock. A failed delivery or a fatal producer error makes
 * the sink sticky-failed; flush is rd_kafka_flush plus that check. Close
 * flushes for up to CLOSE_FLUSH_MS, purges what is still queued (so
 * destroying the producer never waits on an unreachable broker) and reports
 * the records that were not delivered.
 *
 * Count-only sink: every operation succeeds; only the count changes.
 */
#include "consumers/deadletter.h"
#include "util/clock.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RAW_KEEP 4096                 /* bytes of the original event kept (file) */
#define STREAM_BUFFER (64u * 1024)    /* stdio buffer for the file */
#define QUEUE_FULL_WAIT_MS 10000      /* write: how long a full producer queue may block */
#define QUEUE_FULL_POLL_MS 100        /* ... polling this long between retries */
#define CLOSE_FLUSH_MS 10000          /* close: how long to wait for deliveries */
#define PURGE_DRAIN_MS 2000           /* close: serving the reports of purged records */

/* One rejected event, as the public functions received it. */
typedef struct dl_record {
    const char *code, *reason;
    iqp_dl_origin origin;
    const char *raw; /* never NULL ("" when the caller passed NULL) */
    size_t rawlen;
    uint64_t full_len;
} dl_record;

typedef struct file_sink {
    FILE *fp;
    char *path;
    int write_errno; /* first write failure, 0 while healthy */
} file_sink;

typedef struct kafka_sink {
    rd_kafka_t *rk;
    char *topic;
    uint64_t undelivered;   /* delivery reports with an error */
    char failure[512];      /* first delivery or fatal error; "" while healthy */
    char last_error[256];   /* latest error_cb text, for context; may be "" */
    size_t max_value;       /* longest value sent whole: message.max.bytes less headroom */
} kafka_sink;

typedef struct sink_ops {
    int (*write)(iqp_deadletter *dl, const dl_record *r, char *err, size_t errlen);
    int (*flush)(iqp_deadletter *dl, int timeout_ms, char *err, size_t errlen);
    int (*close)(iqp_deadletter *dl, char *err, size_t errlen); /* frees the state, not dl */
} sink_ops;

struct iqp_deadletter {
    const sink_ops *ops;
    uint64_t count; /* records accepted */
    union {
        file_sink file;
        kafka_sink kafka;
    } u;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- UTF-8 --------------------------------------------------------------- */

/* Length of the UTF-8 sequence starting at s[0] (1..4), with the allowed
 * range of its second byte; 0 when s[0] cannot start a sequence. */
static int utf8_lead(unsigned char c, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c == 0xE0) *lo = 0xA0;
    if (c == 0xED) *hi = 0x9F; /* no surrogates */
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c == 0xF0) *lo = 0x90;
    if (c == 0xF4) *hi = 0x8F; /* nothing above U+10FFFF */
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

/* Length of the longest valid UTF-8 prefix of s[0..n). *cut is set when
 * what follows that prefix is a valid sequence that n merely cut short. */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n, int *cut) {
    size_t i = 0;
    *cut = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        unsigned char lo, hi;
        int len = utf8_lead(s[i], &lo, &hi);
        if (len == 0) return i;
        for (int k = 1; k < len; k++) {
            if (i + (size_t)k >= n) {
                *cut = 1;
                return i;
            }
            unsigned char c = s[i + (size_t)k];
            if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) return i;
        }
        i += (size_t)len;
    }
    return n;
}

/* A JSON string for text that should be UTF-8; invalid bytes become U+FFFD. */
static json_t *json_text(const char *text) {
    const unsigned char *s = (const unsigned char *)(text ? text : "");
    size_t n = strlen((const char *)s);
    int cut;
    size_t ok = utf8_valid_prefix(s, n, &cut);
    if (ok == n) return json_stringn((const char *)s, n);
    char *clean = malloc(n * 3 + 1); /* each bad byte -> 3 bytes */
    if (clean == NULL) return NULL;
    size_t out = 0, i = 0;
    while (i < n) {
        ok = utf8_valid_prefix(s + i, n - i, &cut);
        memcpy(clean + out, s + i, ok);
        out += ok;
        i += ok;
        if (i < n) {
            memcpy(clean + out, "\xEF\xBF\xBD", 3);
            out += 3;
            i++;
        }
    }
    json_t *str = json_stringn(clean, out);
    free(clean);
    return str;
}

/* ---- base64 -------------------------------------------------------------- */

static char *base64_encode(const unsigned char *p, size_t n, size_t *outlen) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1);
    if (out == NULL) return NULL;
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

/* ---- building a JSON record (file sink) ------------------------------------ */

/* Sets "raw" (valid UTF-8) or "raw_base64" from the kept bytes. */
static int set_raw(json_t *rec, const unsigned char *raw, size_t keep, int truncated) {
    int cut;
    size_t ok = utf8_valid_prefix(raw, keep, &cut);
    if (ok == keep || (cut && truncated)) {
        json_t *s = json_stringn((const char *)raw, ok);
        if (s != NULL) return json_object_set_new(rec, "raw", s);
    }
    size_t b64len;
    char *b64 = base64_encode(raw, keep, &b64len);
    if (b64 == NULL) return -1;
    int rc = json_object_set_new(rec, "raw_base64", json_stringn(b64, b64len));
    free(b64);
    return rc;
}

static json_t *build_record(const dl_record *r) {
    size_t keep = r->rawlen > RAW_KEEP ? RAW_KEEP : r->rawlen;
    int truncated = r->rawlen > RAW_KEEP || r->full_len > r->rawlen;
    uint64_t size = r->full_len > r->rawlen ? r->full_len : r->rawlen;

    json_t *rec = json_object();
    if (rec == NULL) return NULL;
    int rc = json_object_set_new(rec, "reason", json_text(r->reason));
    rc |= json_object_set_new(rec, "code", json_text(r->code));
    rc |= json_object_set_new(rec, "source", json_text(r->origin.source));
    if (r->origin.partition >= 0)
        rc |= json_object_set_new(rec, "partition", json_integer(r->origin.partition));
    rc |= json_object_set_new(rec, "position", json_integer((json_int_t)r->origin.position));
    if (truncated) {
        rc |= json_object_set_new(rec, "truncated", json_true());
        rc |= json_object_set_new(rec, "size", json_integer((json_int_t)size));
    }
    rc |= set_raw(rec, (const unsigned char *)r->raw, keep, truncated);
    if (rc != 0) {
        json_decref(rec);
        return NULL;
    }
    return rec;
}

/* ---- the file sink --------------------------------------------------------- */

static int file_failed(file_sink *f, char *err, size_t errlen) {
    if (f->write_errno == 0) f->write_errno = errno ? errno : EIO;
    set_err(err, errlen, "cannot write dead-letter file %s: %s", f->path,
            strerror(f->write_errno));
    return -1;
}

static int file_write(iqp_deadletter *dl, const dl_record *r, char *err, size_t errlen) {
    file_sink *f = &dl->u.file;
    if (f->write_errno != 0) return file_failed(f, err, errlen);
    json_t *rec = build_record(r);
    if (rec == NULL) {
        set_err(err, errlen, "dead-letter file %s: out of memory", f->path);
        return -1;
    }
    errno = 0;
    int rc = json_dumpf(rec, f->fp, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(rec);
    if (rc != 0 || fputc('\n', f->fp) == EOF || ferror(f->fp)) return file_failed(f, err, errlen);
    return 0;
}

static int file_flush(iqp_deadletter *dl, int timeout_ms, char *err, size_t errlen) {
    file_sink *f = &dl->u.file;
    (void)timeout_ms;
    if (f->write_errno != 0) return file_failed(f, err, errlen);
    errno = 0;
    if (fflush(f->fp) != 0 || ferror(f->fp)) return file_failed(f, err, errlen);
    return 0;
}

static int file_close(iqp_deadletter *dl, char *err, size_t errlen) {
    file_sink *f = &dl->u.file;
    int rc = file_flush(dl, 0, err, errlen);
    errno = 0;
    if (fclose(f->fp) != 0 && rc == 0) rc = file_failed(f, err, errlen);
    free(f->path);
    return rc;
}

static const sink_ops FILE_OPS = {file_write, file_flush, file_close};

/* ---- the count-only sink ----------------------------------------------------- */

static int none_write(iqp_deadletter *dl, const dl_record *r, char *err, size_t errlen) {
    (void)dl, (void)r, (void)err, (void)errlen;
    return 0;
}

static int none_flush(iqp_deadletter *dl, int timeout_ms, char *err, size_t errlen) {
    (void)dl, (void)timeout_ms, (void)err, (void)errlen;
    return 0;
}

static int none_close(iqp_deadletter *dl, char *err, size_t errlen) {
    (void)dl, (void)err, (void)errlen;
    return 0;
}

static const sink_ops NONE_OPS = {none_write, none_flush, none_close};

/* ---- the Kafka sink ------------------------------------------------------------ */

/* Context for an error message: "; last error: ..." or "". */
static const char *last_error_sep(const kafka_sink *k) {
    return k->last_error[0] ? "; last error: " : "";
}

/* -1 with the sticky failure in err when the sink has failed, else 0. */
static int kafka_failed(const kafka_sink *k, char *err, size_t errlen) {
    if (k->failure[0] == '\0') return 0;
    if (k->undelivered > 0)
        set_err(err, errlen, "dead-letter topic %s: %" PRIu64 " record(s) not delivered: %s",
                k->topic, k->undelivered, k->failure);
    else
        set_err(err, errlen, "dead-letter topic %s: %s", k->topic, k->failure);
    return -1;
}

/* dr_msg_cb: runs inside rd_kafka_poll/flush, on the caller's thread. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    kafka_sink *k = &((iqp_deadletter *)opaque)->u.kafka;
    (void)rk;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) return;
    k->undelivered++;
    if (k->failure[0] == '\0')
        /* not rd_kafka_message_errstr(): for a producer, payload is the record */
        snprintf(k->failure, sizeof k->failure, "%s", rd_kafka_err2str(m->err));
}

/* Makes a fatal producer error (idempotence can no longer be guaranteed)
 * the sink's sticky failure. */
static void note_fatal(kafka_sink *k) {
    char fatal[256];
    if (k->failure[0] != '\0') return;
    rd_kafka_fatal_error(k->rk, fatal, sizeof fatal);
    snprintf(k->failure, sizeof k->failure, "fatal producer error: %s", fatal);
}

/* error_cb: fatal errors fail the sink; the others (brokers down, ...) are
 * transient, librdkafka retries; they are kept to explain a later timeout. */
static void on_error(rd_kafka_t *rk, int code, const char *reason, void *opaque) {
    kafka_sink *k = &((iqp_deadletter *)opaque)->u.kafka;
    (void)rk;
    if (code == RD_KAFKA_RESP_ERR__FATAL)
        note_fatal(k);
    else
        snprintf(k->last_error, sizeof k->last_error, "%s",
                 reason ? reason : rd_kafka_err2str(code));
}

static void add_header_u64(rd_kafka_headers_t *h, const char *name, uint64_t v) {
    char num[24];
    snprintf(num, sizeof num, "%" PRIu64, v);
    rd_kafka_header_add(h, name, -1, num, -1);
}

static rd_kafka_headers_t *kafka_headers(const dl_record *r) {
    rd_kafka_headers_t *h = rd_kafka_headers_new(6);
    rd_kafka_header_add(h, "iqp.reason", -1, r->reason ? r->reason : "", -1);
    rd_kafka_header_add(h, "iqp.code", -1, r->code ? r->code : "", -1);
    rd_kafka_header_add(h, "iqp.source", -1, r->origin.source ? r->origin.source : "", -1);
    if (r->origin.partition >= 0) add_header_u64(h, "iqp.partition", (uint64_t)r->origin.partition);
    add_header_u64(h, "iqp.position", r->origin.position);
    if (r->full_len > r->rawlen) add_header_u64(h, "iqp.size", r->full_len);
    return h;
}

/* Enqueues one message (headers owned by librdkafka on success), retrying
 * for up to QUEUE_FULL_WAIT_MS while the local queue is full. */
static rd_kafka_resp_err_t kafka_produce(kafka_sink *k, const dl_record *r,
                                         rd_kafka_headers_t *h) {
    int64_t deadline = iqp_mono_ms() + QUEUE_FULL_WAIT_MS;
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            k->rk, RD_KAFKA_V_TOPIC(k->topic), RD_KAFKA_V_VALUE((void *)r->raw, r->rawlen),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL || k->failure[0] || iqp_mono_ms() >= deadline) return e;
        rd_kafka_poll(k->rk, QUEUE_FULL_POLL_MS);
    }
}

/* An event longer than the producer may send (it came from a topic with a
 * larger limit) is cut to max_value bytes and marked with iqp.size, rather
 * than stopping the stream over one bad event. */
static int kafka_write(iqp_deadletter *dl, const dl_record *whole, char *err, size_t errlen) {
    kafka_sink *k = &dl->u.kafka;
    dl_record cut = *whole;
    const dl_record *r = whole;
    if (kafka_failed(k, err, errlen)) return -1;
    if (whole->rawlen > k->max_value) {
        cut.rawlen = k->max_value;
        if (cut.full_len < whole->rawlen) cut.full_len = whole->rawlen;
        r = &cut;
    }
    rd_kafka_headers_t *h = kafka_headers(r);
    rd_kafka_resp_err_t e = kafka_produce(k, r, h);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(h);
        if (e == RD_KAFKA_RESP_ERR__FATAL) note_fatal(k);
        if (kafka_failed(k, err, errlen)) return -1;
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            set_err(err, errlen,
                    "dead-letter topic %s: producer queue still full after %d s "
                    "(records are not being delivered)%s%s",
                    k->topic, QUEUE_FULL_WAIT_MS / 1000, last_error_sep(k), k->last_error);
        else
            set_err(err, errlen, "dead-letter topic %s: cannot produce a %zu-byte record: %s",
                    k->topic, r->rawlen, rd_kafka_err2str(e));
        return -1;
    }
    rd_kafka_poll(k->rk, 0); /* serve delivery reports as we go */
    return 0;
}

static int kafka_flush(iqp_deadletter *dl, int timeout_ms, char *err, size_t errlen) {
    kafka_sink *k = &dl->u.kafka;
    rd_kafka_resp_err_t e = rd_kafka_flush(k->rk, timeout_ms);
    if (kafka_failed(k, err, errlen)) return -1;
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        set_err(err, errlen,
                "dead-letter topic %s: %d record(s) still not delivered after %d ms%s%s", k->topic,
                rd_kafka_outq_len(k->rk), timeout_ms, last_error_sep(k), k->last_error);
        return -1;
    }
    return 0;
}

/* Drops whatever is still queued or in flight and serves the reports of the
 * dropped records, so that rd_kafka_destroy does not wait for a broker. */
static void kafka_purge(kafka_sink *k) {
    rd_kafka_purge(k->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(k->rk, PURGE_DRAIN_MS);
}

static int kafka_close(iqp_deadletter *dl, char *err, size_t errlen) {
    kafka_sink *k = &dl->u.kafka;
    int rc = kafka_flush(dl, CLOSE_FLUSH_MS, err, errlen);
    if (rc != 0) {
        int pending = rd_kafka_outq_len(k->rk);
        int timed_out = k->failure[0] == '\0';
        kafka_purge(k);
        if (timed_out)
            set_err(err, errlen,
                    "dead-letter topic %s: %d record(s) not delivered within %d s, dropped at "
                    "close%s%s",
                    k->topic, pending, CLOSE_FLUSH_MS / 1000, last_error_sep(k), k->last_error);
        else
            kafka_failed(k, err, errlen); /* now counting the dropped records too */
    }
    rd_kafka_destroy(k->rk);
    free(k->topic);
    return rc;
}

static const sink_ops KAFKA_OPS = {kafka_write, kafka_flush, kafka_close};

/* The producer configuration: props, then the forced settings and callbacks. */
static rd_kafka_conf_t *kafka_conf(iqp_deadletter *dl, const char *const *props, const char *topic,
                                   char *err, size_t errlen) {
    static const char *const forced[] = {"enable.idempotence", "true", "acks", "all", NULL};
    const char *const *lists[] = {props, forced};
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char errstr[512];
    for (size_t l = 0; l < 2; l++) {
        for (const char *const *p = lists[l]; p != NULL && p[0] != NULL; p += 2) {
            rd_kafka_conf_res_t res = RD_KAFKA_CONF_INVALID;
            if (p[1] == NULL)
                snprintf(errstr, sizeof errstr, "no value given");
            else
                res = rd_kafka_conf_set(conf, p[0], p[1], errstr, sizeof errstr);
            if (res != RD_KAFKA_CONF_OK) {
                set_err(err, errlen, "dead-letter topic %s: Kafka property %s: %s", topic, p[0],
                        errstr);
                rd_kafka_conf_destroy(conf);
                return NULL;
            }
        }
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_opaque(conf, dl);
    return conf;
}

/* message.max.bytes less 64 KiB for headers and framing (at least 1 KiB). */
static size_t max_value_of(rd_kafka_conf_t *conf) {
    char buf[32];
    size_t len = sizeof buf;
    long max = 1000000;
    if (rd_kafka_conf_get(conf, "message.max.bytes", buf, &len) == RD_KAFKA_CONF_OK) max = atol(buf);
    return max > 66 * 1024 ? (size_t)max - 64 * 1024 : 1024;
}

/* ---- the public functions ----------------------------------------------------- */

static iqp_deadletter *new_sink(const sink_ops *ops, char *err, size_t errlen) {
    iqp_deadletter *dl = calloc(1, sizeof(*dl));
    if (dl == NULL) set_err(err, errlen, "dead-letter sink: out of memory");
    else dl->ops = ops;
    return dl;
}

iqp_deadletter *iqp_deadletter_open_file(const char *path, char *err, size_t errlen) {
    iqp_deadletter *dl = new_sink(path == NULL ? &NONE_OPS : &FILE_OPS, err, errlen);
    if (dl == NULL || path == NULL) return dl;
    file_sink *f = &dl->u.file;
    f->path = strdup(path);
    if (f->path == NULL) {
        set_err(err, errlen, "dead-letter sink: out of memory");
        free(dl);
        return NULL;
    }
    f->fp = fopen(path, "ae");
    if (f->fp == NULL) {
        set_err(err, errlen, "cannot open dead-letter file %s: %s", path, strerror(errno));
        free(f->path);
        free(dl);
        return NULL;
    }
    setvbuf(f->fp, NULL, _IOFBF, STREAM_BUFFER);
    return dl;
}

iqp_deadletter *iqp_deadletter_open_kafka(const char *const *props, const char *topic, char *err,
                                          size_t errlen) {
    if (topic == NULL || topic[0] == '\0') {
        set_err(err, errlen, "dead-letter topic: no topic name given");
        return NULL;
    }
    iqp_deadletter *dl = new_sink(&KAFKA_OPS, err, errlen);
    if (dl == NULL) return NULL;
    kafka_sink *k = &dl->u.kafka;
    k->topic = strdup(topic);
    rd_kafka_conf_t *conf = k->topic ? kafka_conf(dl, props, topic, err, errlen) : NULL;
    if (k->topic == NULL) set_err(err, errlen, "dead-letter sink: out of memory");
    if (conf != NULL) {
        char errstr[512];
        k->max_value = max_value_of(conf);
        k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
        if (k->rk == NULL) { /* conf is still ours */
            set_err(err, errlen, "dead-letter topic %s: cannot create the producer: %s", topic,
                    errstr);
            rd_kafka_conf_destroy(conf);
        }
    }
    if (k->rk == NULL) {
        free(k->topic);
        free(dl);
        return NULL;
    }
    return dl;
}

int iqp_deadletter_write_from(iqp_deadletter *dl, const char *code, const char *reason,
                              const iqp_dl_origin *origin, const char *raw, size_t rawlen,
                              uint64_t full_len, char *err, size_t errlen) {
    dl_record r = {code, reason, {"", -1, 0}, raw ? raw : "", raw ? rawlen : 0, full_len};
    if (origin != NULL) r.origin = *origin;
    if (dl->ops->write(dl, &r, err, errlen) != 0) return -1;
    dl->count++;
    return 0;
}

int iqp_deadletter_write(iqp_deadletter *dl, const char *code, const char *reason,
                         const char *source, uint64_t position, const char *raw,
                         size_t rawlen, uint64_t full_len, char *err, size_t errlen) {
    iqp_dl_origin o = {source, -1, position};
    return iqp_deadletter_write_from(dl, code, reason, &o, raw, rawlen, full_len, err, errlen);
}

int iqp_deadletter_flush(iqp_deadletter *dl, int timeout_ms, char *err, size_t errlen) {
    return dl->ops->flush(dl, timeout_ms, err, errlen);
}

uint64_t iqp_deadletter_count(const iqp_deadletter *dl) { return dl->count; }

int iqp_deadletter_close(iqp_deadletter *dl, char *err, size_t errlen) {
    if (dl == NULL) return 0;
    int rc = dl->ops->close(dl, err, errlen);
    free(dl);
    return rc;
}

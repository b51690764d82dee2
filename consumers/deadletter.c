/* deadletter.c -- the dead-letter file sink: one JSON object per line.
 *
 * Every record is built as a jansson object with a fixed key order
 *
 *   {"reason":...,"code":...,"source":...,"position":N,
 *    ["truncated":true,"size":N,] "raw":... | "raw_base64":...}
 *
 * and dumped compact (JSON_COMPACT | JSON_PRESERVE_ORDER) followed by '\n'
 * into a fully buffered stdio stream, so a burst of bad events costs one
 * write(2) per 64 KiB, not one per event. The stream is flushed at close.
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
 *
 * A NULL path gives a sink that only counts. A write failure is sticky:
 * once the stream has failed every later write and the close report it.
 */
#include "consumers/deadletter.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RAW_KEEP 4096                 /* bytes of the original event kept */
#define STREAM_BUFFER (64u * 1024)    /* stdio buffer for the file */

struct iqp_deadletter {
    FILE *fp;       /* NULL: counting-only sink */
    char *path;
    uint64_t count; /* records accepted */
    int write_errno; /* first write failure, 0 while healthy */
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

/* ---- building a record --------------------------------------------------- */

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

static json_t *build_record(const char *code, const char *reason, const char *source,
                            uint64_t position, const char *raw, size_t rawlen,
                            uint64_t full_len) {
    const unsigned char *bytes = (const unsigned char *)(raw ? raw : "");
    if (raw == NULL) rawlen = 0;
    size_t keep = rawlen > RAW_KEEP ? RAW_KEEP : rawlen;
    int truncated = rawlen > RAW_KEEP || full_len > rawlen;
    uint64_t size = full_len > rawlen ? full_len : rawlen;

    json_t *rec = json_object();
    if (rec == NULL) return NULL;
    int rc = json_object_set_new(rec, "reason", json_text(reason));
    rc |= json_object_set_new(rec, "code", json_text(code));
    rc |= json_object_set_new(rec, "source", json_text(source));
    rc |= json_object_set_new(rec, "position", json_integer((json_int_t)position));
    if (truncated) {
        rc |= json_object_set_new(rec, "truncated", json_true());
        rc |= json_object_set_new(rec, "size", json_integer((json_int_t)size));
    }
    rc |= set_raw(rec, bytes, keep, truncated);
    if (rc != 0) {
        json_decref(rec);
        return NULL;
    }
    return rec;
}

/* ---- the sink ------------------------------------------------------------ */

iqp_deadletter *iqp_deadletter_open_file(const char *path, char *err, size_t errlen) {
    iqp_deadletter *dl = calloc(1, sizeof(*dl));
    if (dl == NULL) {
        set_err(err, errlen, "dead-letter sink: out of memory");
        return NULL;
    }
    if (path == NULL) return dl;
    dl->path = strdup(path);
    if (dl->path == NULL) {
        set_err(err, errlen, "dead-letter sink: out of memory");
        free(dl);
        return NULL;
    }
    dl->fp = fopen(path, "ae");
    if (dl->fp == NULL) {
        set_err(err, errlen, "cannot open dead-letter file %s: %s", path, strerror(errno));
        free(dl->path);
        free(dl);
        return NULL;
    }
    setvbuf(dl->fp, NULL, _IOFBF, STREAM_BUFFER);
    return dl;
}

static int write_failed(iqp_deadletter *dl, char *err, size_t errlen) {
    if (dl->write_errno == 0) dl->write_errno = errno ? errno : EIO;
    set_err(err, errlen, "cannot write dead-letter file %s: %s", dl->path,
            strerror(dl->write_errno));
    return -1;
}

int iqp_deadletter_write(iqp_deadletter *dl, const char *code, const char *reason,
                         const char *source, uint64_t position, const char *raw,
                         size_t rawlen, uint64_t full_len, char *err, size_t errlen) {
    if (dl->fp == NULL) {
        dl->count++;
        return 0;
    }
    if (dl->write_errno != 0) return write_failed(dl, err, errlen);
    json_t *rec = build_record(code, reason, source, position, raw, rawlen, full_len);
    if (rec == NULL) {
        set_err(err, errlen, "dead-letter file %s: out of memory", dl->path);
        return -1;
    }
    errno = 0;
    int rc = json_dumpf(rec, dl->fp, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(rec);
    if (rc != 0 || fputc('\n', dl->fp) == EOF || ferror(dl->fp))
        return write_failed(dl, err, errlen);
    dl->count++;
    return 0;
}

uint64_t iqp_deadletter_count(const iqp_deadletter *dl) { return dl->count; }

int iqp_deadletter_close(iqp_deadletter *dl, char *err, size_t errlen) {
    if (dl == NULL) return 0;
    int rc = 0;
    if (dl->fp != NULL) {
        errno = 0;
        if (fflush(dl->fp) != 0 || ferror(dl->fp)) rc = write_failed(dl, err, errlen);
        if (fclose(dl->fp) != 0 && rc == 0) rc = write_failed(dl, err, errlen);
        if (dl->write_errno != 0 && rc == 0) rc = write_failed(dl, err, errlen);
    }
    free(dl->path);
    free(dl);
    return rc;
}

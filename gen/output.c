/* output.c -- iqp gen's line buffer, pending-line heap and compressed
 * writer (output.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "gen/output.h"

/* ---- Output: plain, gzip or zstd, by file name ------------------------------ */

enum { OUT_PLAIN, OUT_GZ, OUT_ZST };
#define OUT_BUF (256 * 1024)

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int gen_out_open(gen_out *w, const char *path) {
    *w = (gen_out){.path = path, .kind = OUT_PLAIN};
    int is_stdout = strcmp(path, "-") == 0;
    if (!is_stdout && ends_with(path, ".gz")) w->kind = OUT_GZ;
    else if (!is_stdout && ends_with(path, ".zst")) w->kind = OUT_ZST;
    if (!(w->buf = malloc(OUT_BUF))) return -1;
    if (w->kind == OUT_GZ) return (w->gz = gzopen(path, "wb6")) ? 0 : -1;
    w->fp = is_stdout ? stdout : fopen(path, "wb");
    if (!w->fp) return -1;
    if (w->kind != OUT_ZST) return 0;
    w->zcap = ZSTD_CStreamOutSize();
    if (!(w->zc = ZSTD_createCCtx()) || !(w->zbuf = malloc(w->zcap))) return -1;
    ZSTD_CCtx_setParameter(w->zc, ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(w->zc, ZSTD_c_checksumFlag, 1);
    return 0;
}

static int out_zstd(gen_out *w, const char *p, size_t n, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in = {p, n, 0};
    for (;;) {
        ZSTD_outBuffer ob = {w->zbuf, w->zcap, 0};
        size_t left = ZSTD_compressStream2(w->zc, &ob, &in, mode);
        if (ZSTD_isError(left)) { errno = EIO; return -1; }
        if (ob.pos && fwrite(w->zbuf, 1, ob.pos, w->fp) != ob.pos) return -1;
        if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) return 0;
    }
}

static int out_flush(gen_out *w) {
    if (w->failed) return -1;
    int rc = 0;
    if (w->len == 0) return 0;
    errno = 0;
    if (w->kind == OUT_GZ) rc = gzwrite(w->gz, w->buf, (unsigned)w->len) == (int)w->len ? 0 : -1;
    else if (w->kind == OUT_ZST) rc = out_zstd(w, w->buf, w->len, ZSTD_e_continue);
    else rc = fwrite(w->buf, 1, w->len, w->fp) == w->len ? 0 : -1;
    w->len = 0;
    if (rc) w->failed = errno ? errno : EIO;
    return rc;
}

int gen_out_write(gen_out *w, const char *p, size_t n) {
    if (w->len + n > OUT_BUF && out_flush(w)) return -1;
    if (n > OUT_BUF) {                  /* never for our lines; kept correct anyway */
        while (n) {
            size_t k = n < OUT_BUF ? n : OUT_BUF;
            memcpy(w->buf, p, k);
            w->len = k;
            if (out_flush(w)) return -1;
            p += k; n -= k;
        }
        return 0;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
    return 0;
}

int gen_out_close(gen_out *w) {
    int rc = out_flush(w);
    if (w->kind == OUT_ZST && w->zc && w->zbuf && rc == 0 && out_zstd(w, NULL, 0, ZSTD_e_end))
        rc = -1;
    if (w->gz && gzclose(w->gz) != Z_OK) rc = -1;
    if (w->fp == stdout) { if (fflush(stdout)) rc = -1; }
    else if (w->fp && fclose(w->fp)) rc = -1;
    if (rc && !w->failed) w->failed = errno ? errno : EIO;
    ZSTD_freeCCtx(w->zc);
    free(w->zbuf);
    free(w->buf);
    w->fp = NULL; w->gz = NULL; w->zc = NULL; w->zbuf = w->buf = NULL;
    return rc;
}

/* ---- Pending lines: a min-heap on (key, seq) --------------------------------- */

static int pend_less(const pending *a, const pending *b) {
    return a->key < b->key || (a->key == b->key && a->seq < b->seq);
}

int pheap_push(pheap *h, pending e) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 4096;
        pending *v = realloc(h->v, cap * sizeof *v);
        if (!v) return -1;
        h->v = v; h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && pend_less(&e, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = e;
    return 0;
}

pending pheap_pop(pheap *h) {
    pending top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && pend_less(&h->v[c + 1], &h->v[c])) c++;
        if (!pend_less(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* ---- Line buffer ------------------------------------------------------------- */

void sb_str(sbuf *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    if (!s) { SB_LIT(b, "null"); return; }
    SB_LIT(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
        if (*p == '"' || *p == '\\') { e[1] = (char)*p; sb_raw(b, e, 2); }
        else if (*p == '\t') sb_raw(b, "\\t", 2);
        else if (*p == '\n') sb_raw(b, "\\n", 2);
        else if (*p == '\r') sb_raw(b, "\\r", 2);
        else if (*p == '\b') sb_raw(b, "\\b", 2);
        else if (*p == '\f') sb_raw(b, "\\f", 2);
        else if (*p < 0x20) sb_raw(b, e, 6);
        else sb_raw(b, (const char *)p, 1);
    }
    SB_LIT(b, "\"");
}

void sb_id(sbuf *b, const char *prefix, int64_t seed, uint64_t n) {
    SB_LIT(b, "\"");
    sb_raw(b, prefix, strlen(prefix));
    sb_i64(b, seed);
    SB_LIT(b, "-");
    sb_u64(b, n);
    SB_LIT(b, "\"");
}

void sb_item(sbuf *b, uint32_t item) {
    SB_LIT(b, "\"i");
    sb_u64(b, item);
    SB_LIT(b, "\"");
}

char *sb_take(sbuf *b) {
    char *s = malloc(b->len + 1);
    if (s) {
        memcpy(s, b->buf, b->len);
        s[b->len] = '\0';
    }
    b->len = 0;
    return s;
}

char *json_line(json_t *e) {
    char *s = e ? json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(e);
    return s;
}

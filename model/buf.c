/* buf.c -- the one growable byte buffer (buf.h). */
#include "model/buf.h"

#include <stdlib.h>
#include <string.h>

#define INITIAL_CAP 256

void iqp_buf_init(iqp_buf *b) {
    b->len = 0;
    b->cap = INITIAL_CAP;
    b->buf = malloc(b->cap);
    if (!b->buf) abort();
}

void iqp_buf_free(iqp_buf *b) {
    free(b->buf);
    b->buf = NULL;
    b->len = b->cap = 0;
}

void iqp_buf_grow(iqp_buf *b, size_t more) {
    size_t cap = b->cap ? b->cap : INITIAL_CAP;
    while (cap < b->len + more) cap *= 2;
    unsigned char *p = realloc(b->buf, cap);
    if (!p) abort();
    b->buf = p;
    b->cap = cap;
}

void iqp_buf_truncate(iqp_buf *b, size_t len) {
    if (len < b->len) b->len = len;
}

void iqp_buf_u64(iqp_buf *b, uint64_t v) {
    char t[20];
    size_t n = sizeof t;
    do t[--n] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    iqp_buf_append(b, t + n, sizeof t - n);
}

void iqp_buf_i64(iqp_buf *b, int64_t v) {
    if (v < 0) {
        iqp_buf_putc(b, '-');
        iqp_buf_u64(b, 0 - (uint64_t)v);
    } else {
        iqp_buf_u64(b, (uint64_t)v);
    }
}

void iqp_buf_copy(iqp_buf *b, const iqp_buf *src) {
    b->len = 0;
    iqp_buf_append(b, src->buf, src->len);
}

char *iqp_buf_cstr(iqp_buf *b) {
    iqp_buf_reserve(b, 1);
    b->buf[b->len] = '\0';
    return (char *)b->buf;
}

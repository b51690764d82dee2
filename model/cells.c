/* cells.c -- key encoding for counter cells and dedup markers (cells.h). */
#include "model/cells.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* The key builders below write bytes in place after making room. */
static void reserve(iqp_keybuf *kb, size_t more) { iqp_buf_reserve(kb, more); }

static void put_u16_string(iqp_keybuf *kb, const char *s, size_t len) {
    if (len > 65535) len = 65535; /* decoder limits strings far below this */
    reserve(kb, 2 + len);
    kb->buf[kb->len++] = (unsigned char)(len >> 8);
    kb->buf[kb->len++] = (unsigned char)len;
    memcpy(kb->buf + kb->len, s, len);
    kb->len += len;
}

void iqp_cells_context_prefix(iqp_keybuf *kb, const iqp_feature_spec *f, const iqp_context *ctx) {
    size_t nlen = strlen(f->name);
    kb->len = 0;
    reserve(kb, 1 + nlen);
    kb->buf[kb->len++] = (unsigned char)nlen;
    memcpy(kb->buf + kb->len, f->name, nlen);
    kb->len += nlen;
    for (unsigned s = 0, d = f->dims; d; s++, d >>= 1)
        if (d & 1u) put_u16_string(kb, ctx->v[s].s, ctx->v[s].len);
}

void iqp_cells_append_entity(iqp_keybuf *kb, const char *item, size_t len) {
    put_u16_string(kb, item, len);
}

void iqp_cells_append_bucket(iqp_keybuf *kb, int gran_index, int64_t bucket) {
    reserve(kb, IQP_BUCKET_SUFFIX_LEN);
    kb->buf[kb->len++] = (unsigned char)gran_index;
    uint64_t b = (uint64_t)bucket;
    for (int i = 7; i >= 0; i--) kb->buf[kb->len++] = (unsigned char)(b >> (8 * i));
}

int iqp_cells_key_bucket(const unsigned char *key, size_t len, int *gran_index, int64_t *bucket) {
    if (len < IQP_BUCKET_SUFFIX_LEN) return -1;
    const unsigned char *p = key + len - IQP_BUCKET_SUFFIX_LEN;
    *gran_index = p[0];
    uint64_t b = 0;
    for (int i = 1; i <= 8; i++) b = (b << 8) | p[i];
    *bucket = (int64_t)b;
    return 0;
}

int64_t iqp_cells_slot(const iqp_config *cfg, int gran_index, int64_t bucket) {
    if (gran_index < 0 || (size_t)gran_index >= cfg->n_grans) return bucket;
    int64_t g = cfg->gran_ms[gran_index], s = cfg->gran_ms[cfg->n_grans - 1], num = bucket, den;
    if (s % g == 0) {
        den = s / g; /* the usual case (1h in 1d): no multiplication */
    } else if (!__builtin_mul_overflow(bucket, g, &num)) {
        den = s;     /* floor(start / S) */
    } else {
        num = bucket; /* a bucket no event time gives: any fixed slot will do */
        den = s / g > 0 ? s / g : 1;
    }
    int64_t q = num / den;
    return num % den < 0 ? q - 1 : q; /* floor */
}

void iqp_cells_append_slot(iqp_keybuf *kb, const iqp_config *cfg, int64_t slot) {
    iqp_cells_append_bucket(kb, cfg->n_grans ? (int)cfg->n_grans - 1 : 0, slot);
}

/* Marker keys hash the length-prefixed fields as one byte string, built in
 * a small buffer (fields are bounded by the decoder's string limit). */
static void put_field(iqp_keybuf *kb, const void *p, size_t len) {
    uint32_t n = (uint32_t)len;
    reserve(kb, sizeof n + len);
    memcpy(kb->buf + kb->len, &n, sizeof n);
    kb->len += sizeof n;
    memcpy(kb->buf + kb->len, p, len);
    kb->len += len;
}

static void finish_marker(unsigned char *out, char kind, iqp_keybuf *kb) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(kb->buf, kb->len));
    out[0] = (unsigned char)kind;
    memcpy(out + 1, c.digest, 16);
    iqp_keybuf_free(kb);
}

void iqp_cells_event_marker(unsigned char *out, const char *event_id, size_t len) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(event_id, len));
    out[0] = 'E';
    memcpy(out + 1, c.digest, 16);
}

void iqp_cells_action_marker(unsigned char *out, char kind, const char *request_id, size_t rlen,
                             const char *item, size_t ilen, int action, size_t n_segments,
                             const iqp_context *ctx) {
    iqp_keybuf kb;
    int32_t a = action;
    iqp_keybuf_init(&kb);
    put_field(&kb, request_id, rlen);
    put_field(&kb, item, ilen);
    put_field(&kb, &a, sizeof a);
    for (size_t s = 0; s < n_segments; s++) put_field(&kb, ctx->v[s].s, ctx->v[s].len);
    finish_marker(out, kind, &kb);
}

/* ---- parsing keys back (publisher, refresher) ----------------------------- */

/* Reads a u16-length-prefixed string at key[*pos]; -1 when it runs past len. */
static int get_u16_string(const unsigned char *key, size_t len, size_t *pos, const char **s,
                          size_t *slen) {
    if (*pos + 2 > len) return -1;
    size_t n = ((size_t)key[*pos] << 8) | key[*pos + 1];
    if (*pos + 2 + n > len) return -1;
    *s = (const char *)key + *pos + 2;
    *slen = n;
    *pos += 2 + n;
    return 0;
}

int iqp_cells_parse_key(const iqp_config *cfg, const unsigned char *key, size_t len,
                        iqp_parsed_key *out) {
    memset(out, 0, sizeof *out);
    if (len < 1 || 1 + (size_t)key[0] > len || key[0] >= IQP_NAME_MAX) return -1;
    char name[IQP_NAME_MAX];
    memcpy(name, key + 1, key[0]);
    name[key[0]] = '\0';
    int f = iqp_config_feature_index(cfg, name);
    if (f < 0) return -1;
    size_t pos = 1 + (size_t)key[0];
    for (unsigned s = 0, d = cfg->features[f].dims; d; s++, d >>= 1)
        if ((d & 1u) && get_u16_string(key, len, &pos, &out->ctx.v[s].s, &out->ctx.v[s].len) < 0)
            return -1;
    out->feature = (size_t)f;
    out->prefix_len = pos;
    if (pos == len) return 0; /* a context key */
    if (get_u16_string(key, len, &pos, &out->item, &out->item_len) < 0 || pos != len) return -1;
    return 0;
}

/* redis_value.c -- version 1 of the Redis layout (see redis_value.h and
 * schemas/redis-layout.md).
 *
 * Values are LEB128 varints: 7 bits per byte, least significant group
 * first, high bit set on every byte but the last. Signed counters are
 * zigzag-mapped first (0,-1,1,-2,... -> 0,1,2,3,...): a store's counts are
 * normally >= 0, but a stream instance that restored another's markers can
 * hold a -1 where a count moved to an earlier bucket (README "Kafka").
 * Most counters of most items are zero, so an item's window is a mask plus
 * only its non-zero counters: a typical value is 8 to 16 bytes, which keeps
 * small hashes in Redis's compact listpack encoding.
 */
#include "schemas/redis_value.h"

#include <stdio.h>
#include <string.h>


size_t iqp_rv_put_uvarint(unsigned char *out, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (unsigned char)v;
    return n;
}

static uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static int64_t unzigzag(uint64_t u) { return (int64_t)(u >> 1) ^ -(int64_t)(u & 1); }

/* Reads one varint at in[*pos]; -1 when truncated or longer than 64 bits. */
static inline int get_uvarint(const unsigned char *in, size_t len, size_t *pos, uint64_t *v) {
    uint64_t r = 0;
    if (*pos < len && in[*pos] < 0x80) { /* most values are one byte: counts below 64, masks */
        *v = in[(*pos)++];
        return 0;
    }
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*pos >= len) return -1;
        unsigned char b = in[(*pos)++];
        if (shift == 63 && b > 1) return -1;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return -1;
}

size_t iqp_rv_encode_item(const int64_t *counts, size_t n_windows, size_t width,
                          unsigned char *out) {
    size_t n = 0;
    for (size_t w = 0; w < n_windows; w++) {
        const int64_t *c = counts + w * width;
        uint64_t mask = 0;
        for (size_t k = 0; k < width; k++)
            if (c[k]) mask |= 1ull << k;
        n += iqp_rv_put_uvarint(out + n, mask);
        for (size_t k = 0; k < width; k++)
            if (c[k]) n += iqp_rv_put_uvarint(out + n, zigzag(c[k]));
    }
    return n;
}

size_t iqp_rv_encode_context(const int64_t *context_count, size_t n_windows, unsigned char *out) {
    size_t n = 0;
    for (size_t w = 0; w < n_windows; w++) n += iqp_rv_put_uvarint(out + n, zigzag(context_count[w]));
    return n;
}

int iqp_rv_decode_item_sparse(const unsigned char *in, size_t len, size_t n_windows, size_t width,
                              uint64_t *masks, int64_t *counts) {
    size_t pos = 0;
    if (width > 63) return -1;
    for (size_t w = 0; w < n_windows; w++) {
        uint64_t mask, v;
        if (get_uvarint(in, len, &pos, &mask) < 0 || (mask >> width) != 0) return -1;
        masks[w] = mask;
        for (uint64_t m = mask; m; m &= m - 1) {
            if (get_uvarint(in, len, &pos, &v) < 0) return -1;
            counts[w * width + (size_t)__builtin_ctzll(m)] = unzigzag(v);
        }
    }
    return pos == len ? 0 : -1;
}

int iqp_rv_decode_item(const unsigned char *in, size_t len, size_t n_windows, size_t width,
                       int64_t *counts) {
    uint64_t masks[64];
    memset(counts, 0, n_windows * width * sizeof *counts);
    if (n_windows > 64) return -1;
    return iqp_rv_decode_item_sparse(in, len, n_windows, width, masks, counts);
}

int iqp_rv_decode_context(const unsigned char *in, size_t len, size_t n_windows,
                          int64_t *context_count) {
    size_t pos = 0;
    for (size_t w = 0; w < n_windows; w++) {
        uint64_t v;
        if (get_uvarint(in, len, &pos, &v) < 0) return -1;
        context_count[w] = unzigzag(v);
    }
    return pos == len ? 0 : -1;
}

/* Appends s[0..n) at out[*len] as far as it fits; *len counts it all. */
static void append(char *out, size_t cap, size_t *len, const char *s, size_t n) {
    if (*len < cap) memcpy(out + *len, s, *len + n <= cap ? n : cap - *len);
    *len += n;
}

/* Appends ":" and one context part; the last part of a cluster key is
 * wrapped in braces, its hash tag. */
static void append_part(char *out, size_t cap, size_t *len, const char *s, size_t n, int tag) {
    append(out, cap, len, tag ? ":{" : ":", tag ? 2 : 1);
    append(out, cap, len, s, n);
    if (tag) append(out, cap, len, "}", 1);
}

/* Appends the feature's context parts: every segment but query text in
 * segment order, then the query text ones (a query may hold ':'). The
 * last part is the cluster hash tag. */
static void append_context(char *out, size_t cap, size_t *len, const iqp_config *cfg, unsigned dims,
                           const iqp_context *ctx, int cluster) {
    size_t order[IQP_MAX_SEGMENTS], n = 0;
    for (int query = 0; query < 2; query++)
        for (size_t s = 0; s < cfg->n_segments; s++)
            if ((dims & (1u << s)) && (cfg->segments[s].normalizer == IQP_NORM_QUERY) == query)
                order[n++] = s;
    for (size_t i = 0; i < n; i++)
        append_part(out, cap, len, ctx->v[order[i]].s, ctx->v[order[i]].len, cluster && i + 1 == n);
}

size_t iqp_rv_hash_key(char *out, size_t cap, const char *prefix, uint64_t generation,
                       const char *feature, const iqp_config *cfg, unsigned dims,
                       const iqp_context *ctx) {
    char gen[24];
    size_t len = 0, plen = strlen(prefix);
    int cluster = plen >= 3 && prefix[0] == '{' && prefix[plen - 1] == '}';
    int gl = snprintf(gen, sizeof gen, ":%llu:", (unsigned long long)generation);
    append(out, cap, &len, prefix + cluster, plen - 2 * (size_t)cluster);
    append(out, cap, &len, gen, (size_t)gl);
    append(out, cap, &len, feature, strlen(feature));
    append_context(out, cap, &len, cfg, dims, ctx, cluster);
    if (len < cap) out[len] = '\0';
    return len;
}

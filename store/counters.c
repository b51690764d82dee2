/* counters.c -- fixed-width counter vectors and their merge operator.
 *
 * Values are little-endian int64 arrays. Sums wrap (computed in uint64_t)
 * rather than invoke undefined behaviour; no realistic count comes near
 * 2^63. The merge operator keeps no state; full and partial merges are the
 * same element-wise sum, the existing value (if any) being one more operand.
 */
#include "store/counters.h"

#include <stdlib.h>
#include <string.h>

static uint64_t load_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void store_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

void iqp_counters_encode(const int64_t *vec, size_t n, unsigned char *out) {
    for (size_t i = 0; i < n; i++) store_le64(out + 8 * i, (uint64_t)vec[i]);
}

void iqp_counters_add_encoded(int64_t *vec, size_t n, const char *val, size_t vlen) {
    size_t m = vlen / 8;
    if (m > n) m = n;
    for (size_t i = 0; i < m; i++)
        vec[i] = (int64_t)((uint64_t)vec[i] + load_le64((const unsigned char *)val + 8 * i));
}

int iqp_counters_all_zero(const char *val, size_t vlen) {
    for (size_t i = 0; i < vlen; i++)
        if (val[i]) return 0;
    return 1;
}

char *iqp_counters_sum(const char *const *vals, const size_t *lens, int nvals, size_t *outlen) {
    size_t width = 0;
    for (int i = 0; i < nvals; i++)
        if (vals[i] && lens[i] / 8 > width) width = lens[i] / 8;
    unsigned char *out = calloc(width ? width : 1, 8);
    if (!out) return NULL;
    for (int i = 0; i < nvals; i++) {
        if (!vals[i]) continue;
        const unsigned char *p = (const unsigned char *)vals[i];
        for (size_t k = 0; k < lens[i] / 8; k++)
            store_le64(out + 8 * k, load_le64(out + 8 * k) + load_le64(p + 8 * k));
    }
    *outlen = width * 8;
    return (char *)out;
}

static char *full_merge(void *state, const char *key, size_t klen, const char *existing,
                        size_t existing_len, const char *const *ops, const size_t *op_lens,
                        int nops, unsigned char *success, size_t *new_len) {
    (void)state, (void)key, (void)klen;
    const char **vals = malloc(sizeof(char *) * (size_t)(nops + 1));
    size_t *lens = malloc(sizeof(size_t) * (size_t)(nops + 1));
    char *out = NULL;
    if (vals && lens) {
        vals[0] = existing;
        lens[0] = existing ? existing_len : 0;
        memcpy(vals + 1, ops, sizeof(char *) * (size_t)nops);
        memcpy(lens + 1, op_lens, sizeof(size_t) * (size_t)nops);
        out = iqp_counters_sum(vals, lens, nops + 1, new_len);
    }
    free(vals);
    free(lens);
    *success = out != NULL;
    return out;
}

static char *partial_merge(void *state, const char *key, size_t klen, const char *const *ops,
                           const size_t *op_lens, int nops, unsigned char *success,
                           size_t *new_len) {
    (void)state, (void)key, (void)klen;
    char *out = iqp_counters_sum(ops, op_lens, nops, new_len);
    *success = out != NULL;
    return out;
}

static void delete_value(void *state, const char *value, size_t len) {
    (void)state, (void)len;
    free((void *)value);
}

static const char *merge_name(void *state) {
    (void)state;
    return "iqp.counters.v1";
}

static void no_destructor(void *state) { (void)state; }

rocksdb_mergeoperator_t *iqp_counters_merge_operator(void) {
    return rocksdb_mergeoperator_create(NULL, no_destructor, full_merge, partial_merge,
                                        delete_value, merge_name);
}

/* fuzz_redis_value.c -- libFuzzer target: the Redis value codec
 * (schemas/redis_value.c), which libiqp runs on whatever a Redis server
 * (or something posing as one) hands back.
 *
 * Input: byte 0 picks the number of windows (0..IQP_MAX_WINDOWS), byte 1
 * the counter width (0..70, so widths past the 63 a mask can hold are
 * tried too), byte 2 the capacity of the hash-key buffer; the rest is the
 * value. The value is decoded both as an item value and as a context
 * value, and the bytes are also used as the query of a hash key.
 *
 * Checked beyond "no crash, no leak, no UB":
 *   - a decoded value re-encodes within IQP_RV_ITEM_MAX / IQP_RV_CONTEXT_MAX
 *     (for widths the config allows) and decodes back to the same counts;
 *     the re-encoding is never longer than the input (it is canonical);
 *   - iqp_rv_hash_key() returns the full key length whatever the capacity,
 *     writes only inside it (the buffer is malloc'd to exactly cap bytes,
 *     so ASan sees any overrun), and agrees with a roomy call on the prefix.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "schemas/redis_value.h"
#include "fuzz/fuzz.h"

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "fuzz_redis_value: check failed: %s\n", #cond);   \
            abort();                                                          \
        }                                                                     \
    } while (0)

static void item_roundtrip(const unsigned char *in, size_t len, size_t nw, size_t width) {
    int64_t *counts = malloc((nw * width + 1) * sizeof *counts);
    int64_t *again = malloc((nw * width + 1) * sizeof *again);
    unsigned char *out = malloc(IQP_RV_ITEM_MAX(nw, width) + 1);
    if (!counts || !again || !out) abort();
    if (iqp_rv_decode_item(in, len, nw, width, counts) == 0 && width <= IQP_MAX_COUNTERS) {
        size_t n = iqp_rv_encode_item(counts, nw, width, out);
        CHECK(n <= IQP_RV_ITEM_MAX(nw, width) && n <= len);
        CHECK(iqp_rv_decode_item(out, n, nw, width, again) == 0);
        CHECK(memcmp(counts, again, nw * width * sizeof *counts) == 0);
    }
    free(counts);
    free(again);
    free(out);
}

static void context_roundtrip(const unsigned char *in, size_t len, size_t nw) {
    int64_t counts[IQP_MAX_WINDOWS], again[IQP_MAX_WINDOWS];
    unsigned char out[IQP_RV_CONTEXT_MAX(IQP_MAX_WINDOWS)];
    if (iqp_rv_decode_context(in, len, nw, counts) == 0) {
        size_t n = iqp_rv_encode_context(counts, nw, out);
        CHECK(n <= IQP_RV_CONTEXT_MAX(nw) && n <= len);
        CHECK(iqp_rv_decode_context(out, n, nw, again) == 0);
        CHECK(memcmp(counts, again, nw * sizeof *counts) == 0);
    }
}

static void hash_key(const char *query, size_t qlen, size_t cap) {
    static const unsigned dims[] = {IQP_DIM_QUERY, IQP_DIM_QUERY | IQP_DIM_COUNTRY | IQP_DIM_GENDER,
                                    IQP_DIM_GENDER};
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    iqp_context ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.v[0].s = query, ctx.v[0].len = qlen;
    ctx.v[1].s = "US", ctx.v[1].len = 2;
    ctx.v[2].s = "female", ctx.v[2].len = 6;
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        char roomy[512];
        size_t full = iqp_rv_hash_key(roomy, sizeof roomy, "iqp", 18446744073709551615ull,
                                      "qcg_item", &cfg, dims[d], &ctx);
        char *tight = malloc(cap ? cap : 1);
        if (!tight) abort();
        size_t n = iqp_rv_hash_key(tight, cap, "iqp", 18446744073709551615ull, "qcg_item", &cfg,
                                   dims[d], &ctx);
        CHECK(n == full);
        size_t shown = n < cap ? n : cap;
        if (full < sizeof roomy) CHECK(memcmp(tight, roomy, shown) == 0);
        if (n < cap) CHECK(tight[n] == '\0');
        free(tight);
    }
}

int fuzz_redis_value_init(void) { return 0; }

int fuzz_redis_value_one(const uint8_t *data, size_t size) {
    if (size < 3) return 0;
    size_t nw = data[0] % (IQP_MAX_WINDOWS + 1);
    size_t width = data[1] % 71;
    size_t cap = data[2];
    const unsigned char *value = data + 3;
    size_t len = size - 3;
    item_roundtrip(value, len, nw, width);
    context_roundtrip(value, len, nw);
    hash_key((const char *)value, len < 400 ? len : 400, cap);
    return 0;
}

IQP_FUZZ_ENTRY(fuzz_redis_value_init, fuzz_redis_value_one)

/* redis_value.h -- the Redis layout of published features, version 1.
 *
 * Owns: the bytes iqp writes to Redis and libiqp reads back: key names,
 * the packed value of an item field and of the context field, and the
 * layout version. schemas/redis-layout.md is the normative description
 * (enough to write a reader in any language); this file implements it.
 *
 *   <prefix>:gen                       string: the generation G being served
 *   <prefix>:<G>:meta                  hash: layout_version, fingerprint,
 *                                      layout (JSON), created_ms
 *   <prefix>:<G>:<feature>[:<segment value>]...[:<query>]
 *                                      hash per (feature, context): the
 *                                      context's segment values in segment
 *                                      order, query text last (defaults:
 *                                      [:<country>][:<gender>][:<query>])
 *     field ""        per window: zigzag varint context_count
 *     field <item>    per window: uvarint mask of non-zero counters, then
 *                     each non-zero counter (ascending index) as a zigzag
 *                     varint. Counter index: 0 impression, 1 engaged,
 *                     2 + a action a (layout order).
 *
 * Windows are in layout order. Integers only: readers compute rates as
 * count / context_count in IEEE double (0 when context_count is 0), which
 * is what `iqp lookup --store` prints.
 *
 * May not touch: Redis connections, the store; it only formats bytes. It
 * is compiled into libiqp, so it depends on nothing but libc and model/'s
 * config and segment types.
 */
#ifndef IQP_REDIS_VALUE_H
#define IQP_REDIS_VALUE_H

#include <stddef.h>
#include <stdint.h>
#include "model/segments.h"

#define IQP_RV_LAYOUT_VERSION 1

/* The hash field that holds a context's context_count vector. Item ids are
 * never empty (the decoder rejects them), so it cannot collide. */
#define IQP_RV_CONTEXT_FIELD ""

/* Upper bound of an encoded item value (n_windows windows of width
 * counters) and of a context value. */
#define IQP_RV_ITEM_MAX(n_windows, width) ((n_windows) * (3 + 10 * (width)))
#define IQP_RV_CONTEXT_MAX(n_windows) ((n_windows) * 10)

/* One LEB128 varint (at most 10 bytes) into out; returns bytes written. */
size_t iqp_rv_put_uvarint(unsigned char *out, uint64_t v);

/* counts[w * width + k]: counter k of window w. Returns bytes written. */
size_t iqp_rv_encode_item(const int64_t *counts, size_t n_windows, size_t width,
                          unsigned char *out);
size_t iqp_rv_encode_context(const int64_t *context_count, size_t n_windows, unsigned char *out);

/* Decoders fill every slot (zeros where absent); 0, or -1 when the bytes
 * are not a value of this shape (truncated, trailing bytes, a mask bit
 * beyond width, a varint over 64 bits). */
int iqp_rv_decode_item(const unsigned char *in, size_t len, size_t n_windows, size_t width,
                       int64_t *counts);
int iqp_rv_decode_context(const unsigned char *in, size_t len, size_t n_windows,
                          int64_t *context_count);

/* iqp_rv_decode_item for readers that skip zeros: masks[w] gets window
 * w's mask (bit k: counter k is non-zero) and counts[w * width + k] only
 * the counters whose bit is set (the others are left as they are). Same
 * refusals. */
int iqp_rv_decode_item_sparse(const unsigned char *in, size_t len, size_t n_windows, size_t width,
                              uint64_t *masks, int64_t *counts);

/* Writes the hash key of one (feature, context) into out (NUL-terminated
 * when it fits) and returns its length; the caller retries with a larger
 * buffer when the result is >= cap. The values of ctx are used only for
 * the segments in dims (the feature's context, config.h).
 * A prefix of the form `{P}` (what a Redis Cluster connection uses, see
 * client/redis_cluster.h) writes the cluster form of the key:
 * `P:<G>:<feature>[:...]:{<last context part>}`, so that the keys of one
 * context share its hash slot, and the query's keys of every feature too. */
size_t iqp_rv_hash_key(char *out, size_t cap, const char *prefix, uint64_t generation,
                       const char *feature, const iqp_config *cfg, unsigned dims,
                       const iqp_context *ctx);

#endif

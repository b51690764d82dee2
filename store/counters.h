/* counters.h -- the value format of counter cells and its merge operator.
 *
 * Owns: encoding of counter vectors (n signed 64-bit little-endian
 * integers, fixed width) and the RocksDB merge operator that adds them
 * element-wise. Addition is associative and commutative, so partial merges
 * are exact and writers never read before writing. Vectors of different
 * lengths (never produced under one layout) merge to the longer length.
 *
 * May not touch: keys, expiry or anything else in the store.
 */
#ifndef IQP_COUNTERS_H
#define IQP_COUNTERS_H

#include <stddef.h>
#include <stdint.h>
#include <rocksdb/c.h>

/* Writes n counters into out (8n bytes). */
void iqp_counters_encode(const int64_t *vec, size_t n, unsigned char *out);

/* Adds the counters encoded in val (vlen bytes) into vec[0..n). Extra
 * encoded counters beyond n are ignored; missing ones count as 0. */
void iqp_counters_add_encoded(int64_t *vec, size_t n, const char *val, size_t vlen);

/* 1 when every counter encoded in val is zero (an empty value too). */
int iqp_counters_all_zero(const char *val, size_t vlen);

/* Element-wise sum of encoded vectors (the merge operator's core): returns a
 * malloc'd vector of the longest operand's length in *outlen. */
char *iqp_counters_sum(const char *const *vals, const size_t *lens, int nvals, size_t *outlen);

/* A new RocksDB merge operator named "iqp.counters.v1". */
rocksdb_mergeoperator_t *iqp_counters_merge_operator(void);

#endif

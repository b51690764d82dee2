/* counters.h -- the value format of counter cells and its merge operator.
 *
 * Owns: the packed value format of the counts and contexts column families
 * (layout 3), its reader and writer, the RocksDB merge operator that sums
 * packed values.
 *
 * A stored value holds the cells of one slot (cells.h: one key per
 * (context, entity, coarsest bucket)): a list of cells sorted by
 * (granularity index, bucket), each
 *
 *   u8      granularity index
 *   varint  bucket: zigzag(bucket) for the first cell and whenever the
 *           granularity changes, else bucket - previous bucket - 1
 *   varint  mask: bit i set when counter i is not zero
 *   varint  zigzag(counter i), for each set bit, ascending
 *
 * (varint: LEB128, 7 bits a byte, low bits first). A cell whose counters
 * are all zero is kept by merges (mask 0, it reads as zeros, as a summed
 * fixed-width vector did) and dropped by the expiry compaction filter.
 * The encoding of a list is canonical: equal lists are equal bytes.
 *
 * The merge operator merges the operands' sorted lists, summing the
 * counters of equal (granularity, bucket) cells (in uint64_t, wrapping
 * rather than invoking undefined behaviour; no count comes near 2^63).
 * Summing is associative and commutative, so partial merges are exact and
 * writers never read before writing.
 *
 * May not touch: keys, expiry rules or anything else in the store.
 */
#ifndef IQP_COUNTERS_H
#define IQP_COUNTERS_H

#include <stddef.h>
#include <stdint.h>
#include <rocksdb/c.h>

/* ---- packed values ----------------------------------------------------- */

#define IQP_PACKED_MAX_COUNTERS 32

/* One cell read from a packed value: vec[0..n) holds its counters (n: one
 * past the highest non-zero one; counters from n on are zero). */
typedef struct iqp_packed_cell {
    int gran;
    int64_t bucket;
    size_t n;
    int64_t vec[IQP_PACKED_MAX_COUNTERS];
} iqp_packed_cell;

typedef struct iqp_packed_reader {
    const unsigned char *p, *end;
    int gran;
    int64_t bucket;
    int started;
} iqp_packed_reader;

void iqp_packed_reader_init(iqp_packed_reader *r, const char *val, size_t vlen);
/* 1 and the next cell, 0 at the end, -1 when the value is malformed. */
int iqp_packed_next(iqp_packed_reader *r, iqp_packed_cell *c);

/* Builds a packed value, one cell at a time, in ascending order. */
typedef struct iqp_packed_writer {
    unsigned char *buf;
    size_t len, cap;
    size_t cells;
    int gran;
    int64_t bucket;
} iqp_packed_writer;

void iqp_packed_writer_init(iqp_packed_writer *w);
void iqp_packed_writer_reset(iqp_packed_writer *w);
void iqp_packed_writer_free(iqp_packed_writer *w);
/* 1 when (gran, bucket) may come next (after every cell put so far). */
int iqp_packed_can_put(const iqp_packed_writer *w, int gran, int64_t bucket);
/* Appends the cell (gran 0..255, n <= IQP_PACKED_MAX_COUNTERS counters);
 * the caller checked iqp_packed_can_put. */
void iqp_packed_put(iqp_packed_writer *w, int gran, int64_t bucket, const int64_t *vec, size_t n);

/* Sum of packed values (the merge operator's core; NULL operands are
 * skipped): a malloc'd value in *outlen bytes, or NULL when an operand is
 * malformed. */
char *iqp_packed_sum(const char *const *vals, const size_t *lens, int nvals, size_t *outlen);

/* Expiry: writes into w (reset first) the cells of val that are kept: not
 * all zero, and not older than first[gran] (granularities >= n_first are
 * kept). Returns the cells dropped, or -1 when val is malformed. */
long iqp_packed_retain(const char *val, size_t vlen, const int64_t *first, size_t n_first,
                       iqp_packed_writer *w);

/* A new RocksDB merge operator named "iqp.packed.v3". */
rocksdb_mergeoperator_t *iqp_counters_merge_operator(void);

#endif

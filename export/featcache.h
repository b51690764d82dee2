/* featcache.h -- the export's mirror of its temporary store's bucket cells.
 *
 * Owns: an in-memory copy of the cells of the (feature, context) and
 * (feature, context, item) prefixes the export has read, kept equal to the
 * store, and the memory it takes (bounded).
 *
 * Why: every row reads, per feature, the context and each item over every
 * granularity: ~110 RocksDB range scans per 10-item impression, each an
 * iterator and a seek into a large memtable of merge operands (perf: 53%
 * of the export's time). The same (context, item) is read again and again
 * (popular queries, a catalog of items), and the store changes only when
 * the export's own aggregator flushes. So a prefix is scanned once (all its
 * buckets of every granularity still inside some window), and each flush
 * adds its deltas to the prefixes held here (iqp_featcache_on_flush_cell,
 * called from the aggregator's flush hook with the cell being written):
 * what is held is exactly what a scan of the store would give, for every
 * bucket a later read can ask for.
 *
 * Reads go forward in event time (the reorder buffer releases READs in
 * time order), so buckets older than the oldest window start at the latest
 * read (iqp_featcache_advance) are dropped and never needed again; a delta
 * for such a bucket is ignored.
 *
 * Memory: ~80 bytes per held (prefix, bucket) plus ~100 per prefix. When
 * the total passes the budget, everything is dropped and refilled from the
 * store on demand (correct, only slower).
 *
 * May not touch: the store (it reads only through iqp_store_scan_buckets),
 * counting, window sums (features.c calls iqp_featcache_scan as its source
 * of flushed buckets).
 */
#ifndef IQP_EXPORT_FEATCACHE_H
#define IQP_EXPORT_FEATCACHE_H

#include <stddef.h>
#include <stdint.h>
#include "model/config.h"
#include "store/store.h"

typedef struct iqp_featcache iqp_featcache;

/* The delta a flush writes for one cell: adds it into vec (n wide), 1 when
 * there is one (iqp_aggregator_pending_cell fits). */
typedef int (*iqp_featcache_delta_fn)(const void *ud, iqp_cf cf, const unsigned char *key,
                                      size_t klen, int64_t *vec, size_t n);

iqp_featcache *iqp_featcache_new(iqp_store *st, size_t budget_bytes,
                                 iqp_featcache_delta_fn delta, const void *delta_ud);
void iqp_featcache_free(iqp_featcache *c);

/* Reads are about to be made as of as_of_ms (never smaller than before):
 * buckets older than every window's start are dropped from now on. */
void iqp_featcache_advance(iqp_featcache *c, int64_t as_of_ms);

/* iqp_store_scan_buckets over the cache: fn gets prefix's buckets of
 * granularity g in [first, last], ascending. A prefix not held is scanned
 * from the store first. 0, or -1 with err. */
int iqp_featcache_scan(iqp_featcache *c, iqp_cf cf, const unsigned char *prefix, size_t plen,
                       int g, int64_t first, int64_t last, size_t n, iqp_store_bucket_fn fn,
                       void *ud, char *err, size_t errlen);

/* A flush is writing the cell key (prefix + bucket suffix) of cf: its
 * delta is added to the prefix when held. */
void iqp_featcache_on_flush_cell(iqp_featcache *c, iqp_cf cf, const unsigned char *key, size_t klen);

typedef struct iqp_featcache_stats {
    uint64_t hits, misses, clears;
    size_t bytes, bytes_peak;
} iqp_featcache_stats;

const iqp_featcache_stats *iqp_featcache_get_stats(const iqp_featcache *c);

#endif

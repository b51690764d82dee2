/* featcache.h -- the export's mirror of its temporary store's bucket cells.
 *
 * Owns: an in-memory copy of the cells of the (feature, context) and
 * (feature, context, item) prefixes the export reads, kept equal to the
 * store plus the aggregator's unflushed batch, and the memory it takes
 * (bounded).
 *
 * Why: every row reads, per feature, the context and each item over every
 * granularity: ~110 RocksDB range scans per 10-item impression, each an
 * iterator and a seek into a large memtable of merge operands (perf: 53%
 * of the export's time). The same (context, item) is read again and again
 * (popular queries, a catalog of items), and store + batch change only
 * when the export's own aggregator counts an event. So a prefix is filled
 * once -- one scan of the store (all its buckets of every granularity
 * still inside some window) plus the batch's deltas of those buckets
 * (iqp_features_pending's buckets / cell) -- and from then on every delta
 * the aggregator takes is added to the prefixes held here as it is taken
 * (iqp_featcache_on_delta, called from the aggregator's delta hook). A
 * flush moves deltas from the batch to the store and changes no sum, so
 * it needs nothing here. What is held is exactly what a scan of the store
 * after the next flush would give, for every bucket a later read can ask
 * for, and a read needs no probes of the batch (which, per bucket and
 * prefix, once took more than half of the export's time).
 *
 * Reads go forward in event time (the reorder buffer releases READs in
 * time order), so buckets older than the oldest window start at the latest
 * read (iqp_featcache_advance) are dropped and never needed again; a delta
 * for such a bucket is ignored.
 *
 * Complete: the export's store starts empty, so at first every cell that
 * will ever be in store or batch passes through on_delta. While nothing
 * has been dropped the cache holds a prefix from its first delta on
 * (instead of only once read), and a read of a prefix not held is a read
 * of a prefix nothing was counted for: no scan, no probes, all zero.
 *
 * Memory: ~80 bytes per held (prefix, bucket) plus ~100 per prefix. When
 * the total passes the budget, everything is dropped, the cache is no
 * longer complete, and prefixes are filled from store and batch when read
 * (correct, only slower).
 *
 * May not touch: the store (it reads only through iqp_store_scan_keys),
 * counting, window sums (features.c calls iqp_featcache_scan as its source
 * of buckets, flushed or not).
 */
#ifndef IQP_EXPORT_FEATCACHE_H
#define IQP_EXPORT_FEATCACHE_H

#include <stddef.h>
#include <stdint.h>
#include "model/config.h"
#include "aggregator/features.h"
#include "store/store.h"

typedef struct iqp_featcache iqp_featcache;

/* unflushed: the batch's buckets and cell (aggregator pending_buckets /
 * pending_cell), read when a prefix is filled; its scan is not used.
 * empty: st and the batch hold no cells yet, so every cell that will ever
 * be there passes through iqp_featcache_on_delta (see "Complete"). */
iqp_featcache *iqp_featcache_new(iqp_store *st, size_t budget_bytes,
                                 const iqp_features_pending *unflushed, int empty);
void iqp_featcache_free(iqp_featcache *c);

/* Reads are about to be made as of as_of_ms (never smaller than before):
 * buckets older than every window's start are dropped from now on. */
void iqp_featcache_advance(iqp_featcache *c, int64_t as_of_ms);

/* iqp_store_scan_buckets over the cache (store + batch): fn gets prefix's
 * buckets of granularity g in [first, last], ascending. A prefix not held
 * is filled first. 0, or -1 with err. */
int iqp_featcache_scan(iqp_featcache *c, iqp_cf cf, const unsigned char *prefix, size_t plen,
                       int g, int64_t first, int64_t last, size_t n, iqp_store_bucket_fn fn,
                       void *ud, char *err, size_t errlen);

/* Reads of the n prefixes (cells.h bytes, all of cf) are about to be
 * made: starts loading what they will touch into the CPU caches, all at
 * once, so the reads wait for memory about once rather than once per
 * prefix (each is a few cache misses: the index slot, the entry, its
 * records). Changes nothing held; prefixes not held are left to the read. */
void iqp_featcache_prefetch(iqp_featcache *c, iqp_cf cf, const iqp_keybuf *prefixes, size_t n);

/* The next deltas are of another event: call before every
 * iqp_aggregator_add whose deltas reach the cache. on_delta remembers,
 * for one event, which entry each (prefix, item) address pair it was
 * handed names (the aggregator hands the same scratch addresses over for
 * different events), so the addresses must not be reused within one. */
void iqp_featcache_event_begin(iqp_featcache *c);

/* The aggregator took delta for counter of the cell (prefix, item,
 * gran_index, bucket) of cf (item NULL in contexts): iqp_agg_delta_hook's
 * on_delta. Added to the prefix when held (a prefix filled later reads it
 * from the batch). */
void iqp_featcache_on_delta(iqp_featcache *c, iqp_cf cf, const unsigned char *prefix, size_t plen,
                            const char *item, size_t ilen, int gran_index, int64_t bucket,
                            size_t counter, int64_t delta);

typedef struct iqp_featcache_stats {
    uint64_t hits, misses, clears;
    uint64_t empty;   /* reads of a prefix nothing was counted for (complete cache) */
    size_t bytes, bytes_peak;
} iqp_featcache_stats;

const iqp_featcache_stats *iqp_featcache_get_stats(const iqp_featcache *c);

#endif

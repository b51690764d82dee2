/* combiner.h -- folds a micro-batch's counter deltas in memory.
 *
 * Owns: the per-batch tables of counter cells (counts and contexts column
 * families), of the strings that name them (context prefixes and item
 * entities, interned to integer ids), of pending dedup markers, and turning
 * them into one store batch, sorted by key (sorted inserts are cheaper for
 * RocksDB's memtable). Search traffic is dominated by hot query x item
 * cells, so a batch of many events usually shrinks to far fewer merges.
 *
 * Cells are named by integers: (context prefix id, item id, granularity,
 * bucket). The aggregator interns a prefix once per feature per event and
 * an item once per event, so the ~60 cell updates of an impression (one
 * per feature and item at the finest granularity, the coarser ones
 * derived at drain: below) hash and compare fixed-width integers, and the
 * store keys (cells.h) are written once per distinct cell, at drain.
 *
 * Coarse granularities derived at drain (iqp_derive): with a plan set,
 * most events add only their finest granularity's cells ("source" cells,
 * iqp_combiner_add_*_source), and the drain writes each source cell both as
 * its finest cell and summed into the cells of the plan's coarser
 * granularities (bucket floor(fine bucket / ratio)), plus whatever the
 * caller added to those granularities directly. Which events may take
 * that path is the caller's rule (shards.c: retention); the combiner only
 * sums. Readers of the unflushed batch (iqp_combiner_peek) see the same
 * sums the drain writes.
 *
 * May not touch: event semantics (which cells to bump is the aggregator's
 * decision) and the store beyond appending to the batch it is given.
 */
#ifndef IQP_COMBINER_H
#define IQP_COMBINER_H

#include <stddef.h>
#include <stdint.h>
#include "store/store.h"

typedef struct iqp_combiner iqp_combiner;

/* width: counters per cell in the counts column family. */
iqp_combiner *iqp_combiner_new(size_t width);
void iqp_combiner_free(iqp_combiner *c);

/* Granularities derived from the finest one (index 0) at drain: bit g of
 * mask set when granularity g's buckets are unions of whole buckets of
 * granularity 0 (gran_ms[g] a multiple of gran_ms[0]; buckets are floors
 * of epoch time, so they are aligned too): bucket_g = floor(bucket_0 /
 * ratio[g]). n_grans: the config's (the coarsest, n_grans - 1, names the
 * stored key's slot, cells.h). mask 0: nothing is derived. */
typedef struct iqp_derive {
    unsigned mask;
    size_t n_grans;
    int64_t ratio[IQP_MAX_GRANS];
} iqp_derive;

/* Sets c's plan (copied; call while c is empty), and reads it back. */
void iqp_combiner_set_derive(iqp_combiner *c, const iqp_derive *d);
const iqp_derive *iqp_combiner_derive(const iqp_combiner *c);

/* Integer ids of a context prefix (cells.h bytes) and of an item id
 * (raw bytes; the entity encoding is the combiner's), valid until the next
 * drain. */
uint32_t iqp_combiner_prefix_id(iqp_combiner *c, const unsigned char *prefix, size_t len);
uint32_t iqp_combiner_item_id(iqp_combiner *c, const char *item, size_t len);

/* Adds delta to counter idx of the counts cell (prefix, item, gran, bucket). */
void iqp_combiner_add_count(iqp_combiner *c, uint32_t prefix, uint32_t item, int gran,
                            int64_t bucket, size_t idx, int64_t delta);
/* Adds delta to the context cell (prefix, gran, bucket). */
void iqp_combiner_add_context(iqp_combiner *c, uint32_t prefix, int gran, int64_t bucket,
                              int64_t delta);

/* The same for a source cell: bucket of granularity 0, counted there and,
 * at drain, in every granularity of the plan (iqp_combiner_set_derive). */
void iqp_combiner_add_count_source(iqp_combiner *c, uint32_t prefix, uint32_t item, int64_t bucket,
                                   size_t idx, int64_t delta);
void iqp_combiner_add_context_source(iqp_combiner *c, uint32_t prefix, int64_t bucket,
                                     int64_t delta);

/* A hint, no effect on what is counted: asks the CPU for the table slot
 * where iqp_combiner_add_count_source(c, prefix, item, bucket, ...) will
 * look, so that the cache misses of an event's cells overlap. */
void iqp_combiner_prefetch_count_source(const iqp_combiner *c, uint32_t prefix, uint32_t item,
                                        int64_t bucket);

/* Pending dedup markers (IQP_MARKER_KEY_LEN-byte keys). get returns 1 and
 * the marker when it is pending in this batch, else 0; whether it is
 * forgotten is the caller's rule (iqp_marker_forgotten), as for stored
 * ones. */
int iqp_combiner_get_marker(const iqp_combiner *c, const unsigned char *key, iqp_marker *m);
void iqp_combiner_set_marker(iqp_combiner *c, const unsigned char *key, const iqp_marker *m);

/* Adds the pending counters of one cell named by its strings into vec
 * (n wide): a counts cell (item non-NULL, width counters) or a context
 * cell (item NULL, one counter), as the drain would write it (direct
 * deltas plus, for a derived granularity, the source cells of its
 * bucket); returns 1 when this batch holds any of it, else 0. For readers
 * that must see a batch before it is written (iqp export). */
int iqp_combiner_peek(const iqp_combiner *c, const unsigned char *prefix, size_t plen,
                      const char *item, size_t ilen, int gran, int64_t bucket, int64_t *vec,
                      size_t n);

/* Distinct cells (counts + contexts) and markers held. */
size_t iqp_combiner_cells(const iqp_combiner *c);
size_t iqp_combiner_markers(const iqp_combiner *c);

/* Appends every non-zero cell as a merge and every marker as a put to b,
 * in key order, then empties the combiner. Returns the cells written (b
 * packs the cells of one stored key into one merge:
 * iqp_store_batch_merges). */
size_t iqp_combiner_drain(iqp_combiner *c, iqp_store_batch *b);

/* The same, calling on_cell for every merge written (key order within
 * each column family: counts first, then contexts). */
typedef void (*iqp_combiner_cell_fn)(void *ud, iqp_store_batch *b, iqp_cf cf,
                                     const unsigned char *key, size_t klen);
size_t iqp_combiner_drain_with(iqp_combiner *c, iqp_store_batch *b, iqp_combiner_cell_fn on_cell,
                               void *ud);

/* drain_with without emptying: reads c only, so another thread may look
 * up markers (iqp_combiner_get_marker) meanwhile. */
size_t iqp_combiner_write(const iqp_combiner *c, iqp_store_batch *b, iqp_combiner_cell_fn on_cell,
                          void *ud);

/* Empties the combiner without writing anything. */
void iqp_combiner_clear(iqp_combiner *c);

#endif

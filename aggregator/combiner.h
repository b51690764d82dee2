/* combiner.h -- folds a micro-batch's counter deltas in memory.
 *
 * Owns: the per-batch hash tables of counter cells (counts and contexts
 * column families) and of pending dedup markers, and turning them into one
 * store batch, sorted by key (sorted inserts are cheaper for RocksDB's
 * memtable). Search traffic is dominated by hot query x item cells, so a
 * batch of many events usually shrinks to far fewer merges.
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

/* Adds delta to counter idx of the counts cell key. */
void iqp_combiner_add_count(iqp_combiner *c, const unsigned char *key, size_t klen, size_t idx,
                            int64_t delta);
/* Adds delta to the context cell key. */
void iqp_combiner_add_context(iqp_combiner *c, const unsigned char *key, size_t klen,
                              int64_t delta);

/* Pending dedup markers (IQP_MARKER_KEY_LEN-byte keys). get returns 1 and
 * the marker when it is pending in this batch, else 0; whether it is
 * forgotten is the caller's rule (iqp_marker_forgotten), as for stored
 * ones. */
int iqp_combiner_get_marker(const iqp_combiner *c, const unsigned char *key, iqp_marker *m);
void iqp_combiner_set_marker(iqp_combiner *c, const unsigned char *key, const iqp_marker *m);

/* The pending counters of one cell: a counts key (cf IQP_CF_COUNTS, width
 * counters) or a context key (IQP_CF_CONTEXTS, one counter); NULL when this
 * batch does not hold it. Valid until the next add or drain. For readers
 * that must see a batch before it is written (iqp export). */
const int64_t *iqp_combiner_peek(const iqp_combiner *c, iqp_cf cf, const unsigned char *key,
                                 size_t klen);

/* Distinct cells (counts + contexts) and markers held. */
size_t iqp_combiner_cells(const iqp_combiner *c);
size_t iqp_combiner_markers(const iqp_combiner *c);

/* Appends every non-zero cell as a merge and every marker as a put to b,
 * in key order, then empties the combiner. Returns the merges written. */
size_t iqp_combiner_drain(iqp_combiner *c, iqp_store_batch *b);

/* The same, calling on_cell for every merge written (key order within
 * each column family: counts first, then contexts). */
typedef void (*iqp_combiner_cell_fn)(void *ud, iqp_store_batch *b, iqp_cf cf,
                                     const unsigned char *key, size_t klen);
size_t iqp_combiner_drain_with(iqp_combiner *c, iqp_store_batch *b, iqp_combiner_cell_fn on_cell,
                               void *ud);

#endif

/* features.h -- reading feature values back: window sums and rates.
 *
 * Owns: turning stored bucket cells into what rankers see, for one
 * feature, one context and a list of items: per window, context_count and
 * every counter summed over the window's buckets, and the iqp_* rates.
 * Every reader (iqp lookup now; the publisher, refresher and export later)
 * goes through here so they agree to the bit.
 *
 * May not touch: writing; the store is only scanned.
 */
#ifndef IQP_FEATURES_H
#define IQP_FEATURES_H

#include <stddef.h>
#include <stdint.h>
#include "model/cells.h"
#include "store/store.h"

typedef struct iqp_feature_row {
    int64_t context_count;
    int64_t counters[IQP_MAX_COUNTERS]; /* IQP_COUNTERS(cfg) used */
} iqp_feature_row;

/* Reads feature f for ctx as of as_of_ms: rows[i * n_windows + w] gets item
 * i's values in window w. Returns 0, or -1 with err. */
int iqp_features_read(iqp_store *st, size_t f, const iqp_context *ctx, const char *const *items,
                      const size_t *item_lens, size_t n_items, int64_t as_of_ms,
                      iqp_feature_row *rows, char *err, size_t errlen);

/* The same, read from a store snapshot (NULL: the latest state), so that
 * a context and its items are read as of one instant. */
int iqp_features_read_at(iqp_store *st, const iqp_store_snapshot *snap, size_t f,
                         const iqp_context *ctx, const char *const *items,
                         const size_t *item_lens, size_t n_items, int64_t as_of_ms,
                         iqp_feature_row *rows, char *err, size_t errlen);

/* Counter deltas a writer holds in memory and has not yet written (an
 * aggregator's micro-batch: iqp_aggregator_pending_buckets / _cell fit
 * these slots). buckets: 1 and the inclusive range of granularity g's
 * buckets that may hold deltas, or 0 for none; cell: adds the delta of one
 * full cells.h key (bucket suffix included) into vec (n wide), 1 when held. */
typedef struct iqp_features_pending {
    int (*buckets)(const void *ud, int gran_index, int64_t *first, int64_t *last);
    int (*cell)(const void *ud, iqp_cf cf, const unsigned char *key, size_t klen, int64_t *vec,
                size_t n);
    const void *ud;
    /* Where the buckets come from: NULL, the store, plus the deltas that
     * buckets / cell give; else a scan with iqp_store_scan_buckets's
     * contract over the reader's exact mirror of the store *and* the
     * unflushed deltas (iqp export's export/featcache.h), called with
     * scan_ud, and buckets / cell are not used. */
    int (*scan)(void *scan_ud, iqp_cf cf, const unsigned char *prefix, size_t plen, int gran_index,
                int64_t first, int64_t last, size_t n, iqp_store_bucket_fn fn, void *ud, char *err,
                size_t errlen);
    void *scan_ud;
} iqp_features_pending;

/* iqp_features_read over the latest store state plus pending: what a
 * read after the writer's next flush would give. iqp export reads this way
 * after every event without flushing; lookup's reads are the same code
 * with no pending deltas. */
int iqp_features_read_pending(iqp_store *st, const iqp_features_pending *pending, size_t f,
                              const iqp_context *ctx, const char *const *items,
                              const size_t *item_lens, size_t n_items, int64_t as_of_ms,
                              iqp_feature_row *rows, char *err, size_t errlen);

/* Only the context: context_count[w] for every window. */
int iqp_features_read_context_at(iqp_store *st, const iqp_store_snapshot *snap, size_t f,
                                 const iqp_context *ctx, int64_t as_of_ms, int64_t *context_count,
                                 char *err, size_t errlen);

/* count / context_count as a double; 0 when context_count is 0. */
double iqp_features_rate(int64_t count, int64_t context_count);

/* True when the caller gave every segment feature f's context needs
 * (given: bit i for segment i, as iqp_context_mask). */
int iqp_features_applicable(const iqp_feature_spec *f, unsigned given);

#endif

/* window.h -- bucket and window arithmetic in event time.
 *
 * Owns: which bucket an instant falls in and which buckets a window covers.
 * A window of length L and granularity g, read as of T, covers the L/g
 * buckets ending with the one that holds T (the partial bucket included).
 * Buckets are floor(ts / g), so the first and last millisecond of a bucket
 * belong to it and ts = k*g starts bucket k.
 *
 * May not touch: anything else; pure functions.
 * model/ is the ground floor: this file includes nothing of the project
 * but model/ itself, so every module (store/ and schemas/ too) may use it.
 */
#ifndef IQP_WINDOW_H
#define IQP_WINDOW_H

#include <stdint.h>
#include "model/config.h"

/* floor(ts_ms / gran_ms), correct for negative ts too. */
int64_t iqp_bucket_of(int64_t ts_ms, int64_t gran_ms);

/* Inclusive bucket range [*first, *last] that window w covers as of as_of_ms. */
void iqp_window_buckets(const iqp_window_spec *w, int64_t as_of_ms, int64_t *first,
                        int64_t *last);

/* Oldest bucket of granularity index gi the store keeps while its watermark
 * (newest event time counted) is watermark_ms. */
int64_t iqp_retention_first_bucket(const iqp_config *cfg, int gi, int64_t watermark_ms);

#endif

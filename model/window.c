/* window.c -- bucket and window arithmetic (see window.h for the rules).
 *
 * Everything is integer arithmetic on milliseconds; the only subtlety is
 * that C's division truncates toward zero, so floor division is spelled out
 * for negative instants (not produced by valid events, but --as-of and
 * tests may ask).
 */
#include "model/window.h"

int64_t iqp_bucket_of(int64_t ts_ms, int64_t gran_ms) {
    int64_t q = ts_ms / gran_ms;
    if ((ts_ms % gran_ms != 0) && ((ts_ms < 0) != (gran_ms < 0))) q--;
    return q;
}

void iqp_window_buckets(const iqp_window_spec *w, int64_t as_of_ms, int64_t *first, int64_t *last) {
    *last = iqp_bucket_of(as_of_ms, w->gran_ms);
    *first = *last - w->n_buckets + 1;
}

int64_t iqp_retention_first_bucket(const iqp_config *cfg, int gi, int64_t watermark_ms) {
    return iqp_bucket_of(watermark_ms, cfg->gran_ms[gi]) - cfg->gran_retention[gi] + 1;
}

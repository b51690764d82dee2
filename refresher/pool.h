/* pool.h -- the refresher's parallel for: chunks of an index range handed
 * to a few pthreads, the calling thread reporting progress meanwhile.
 *
 * Owns: worker threads for the span of one call (created and joined
 * inside). Chunks go to whichever worker asks next, so which thread does
 * which chunk varies from run to run: callers write every result to a slot
 * of its own index (or to per-worker partials they combine exactly, as
 * integer sums), so results never depend on the thread count.
 *
 * May not touch: anything but what fn touches.
 */
#ifndef IQP_REFRESH_POOL_H
#define IQP_REFRESH_POOL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "refresher/refresh.h"

/* Work on items [begin, end); worker is in [0, n_threads). */
typedef void (*iqp_pool_fn)(void *ud, size_t begin, size_t end, int worker);

/* Progress the calling thread reports while workers run (all optional). */
typedef struct iqp_pool_progress {
    iqp_refresh_progress_fn fn;
    void *ud;
    const char *stage;
    _Atomic uint64_t *done;     /* advanced by fn's workers */
    uint64_t total;
} iqp_pool_progress;

/* Runs fn over [0, n) in chunks of `chunk` items on n_threads threads
 * (inline when 1 and there is no progress to report). Returns when all
 * chunks are done. */
void iqp_pool_run(int n_threads, size_t n, size_t chunk, iqp_pool_fn fn, void *ud,
                  const iqp_pool_progress *progress);

#endif

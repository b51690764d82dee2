/* refresh.h -- the batch refresher's compute half: every published value,
 * recomputed from one store snapshot as of one instant.
 *
 * Owns: reading a whole snapshot's counts and contexts column families
 * (snapshot_scan.c; or several stores' snapshots as their sum), the window sums, rates, smoothed rates, priors and
 * top-K lists computed from them, on the CPU (refresh_cpu.c, the default)
 * or on a CUDA device (refresh_cuda.cu), and the result those produce,
 * which the publisher walks with the accessors below (and `iqp refresh
 * --dump` prints, dump.h).
 *
 * May not touch: writing the store (it only scans a snapshot), Redis (the
 * publisher's job), counting rules (the aggregator's).
 *
 * What is computed, as of T = as_of_ms, for every feature f, every context
 * c of f and every entity (item) e seen under c, and every window W:
 *
 *   context_count(c, W)   sum of c's context cells whose bucket is in W
 *   count_k(c, e, W)      sum of counter k (impression, engaged, actions in
 *                         config order) of e's cells in W
 *   rate_k                count_k / context_count, 0 when context_count is 0
 *                         (iqp_features_rate: what `iqp lookup` prints)
 *   prior_k(f, W)         N / D, 0 when D is 0, with N = sum of count_k over
 *                         every entity of every context of f and D = sum of
 *                         context_count over every context of f
 *   smoothed_k            (count_k + a * prior_k) / (context_count + a),
 *                         0 when context_count + a is 0
 *
 * Windows are model/window.h's: W covers the L/g buckets ending with
 * the one holding T, exactly what aggregator/features.c sums, so counts and
 * rates equal `iqp lookup --as-of T` bit for bit.
 *
 * The smoothing strength a (default 20) is a pseudo-count of context
 * occurrences: a context seen n times gets n/(n+a) of its own rate and
 * a/(n+a) of the feature-wide rate. 20 trusts a query's own rate once it
 * has been issued a few dozen times in the window and pulls rarer ones
 * towards the prior, which is what ranks rare contexts sensibly; a = 0 turns
 * smoothing off (smoothed = rate).
 *
 * Float evaluation order (both backends, so their results are bit-identical):
 * every sum is an exact int64 sum; then, in IEEE 754 binary64,
 * round-to-nearest, with no fused multiply-add (refresh_cpu.c is compiled
 * with FP contraction off, the CUDA file with nvcc --fmad=false and explicit
 * _rn intrinsics):
 *   rate     = (double)count / (double)context_count
 *   prior    = (double)N / (double)D
 *   t        = a * prior
 *   num      = (double)count + t
 *   den      = (double)context_count + a
 *   smoothed = num / den
 * (refresh_math.h holds these, shared by both backends.)
 *
 * Top-K: for each (feature, context, window), the K entities with the
 * highest smoothed value of the ranking measure (default engaged), among
 * the entities of the context with a nonzero counter in that window. Order:
 * value descending, ties (bitwise-equal values) by item id bytes ascending
 * (memcmp; a proper prefix first). Fewer than K candidates: all of them.
 *
 * Which entities and contexts the result holds: an entity appears when at
 * least one of its cells lies in at least one window (so, with positive
 * counters, some window has a nonzero count); a context appears when it has
 * such an entity or a context cell in some window. Everything else reads as
 * zero anyway. Order: features in config order; within a feature, contexts
 * in store key order (cells.h); within a context, entities in store key
 * order (item id length, then bytes).
 *
 * Results never depend on the number of threads or on the backend.
 */
#ifndef IQP_REFRESH_H
#define IQP_REFRESH_H

#include <stddef.h>
#include <stdint.h>

#include "model/cells.h"
#include "model/config.h"
#include "aggregator/features.h"
#include "store/store.h"

#define IQP_REFRESH_DEFAULT_SMOOTHING 20.0
#define IQP_REFRESH_DEFAULT_TOP_K 100

typedef enum { IQP_REFRESH_CPU = 0, IQP_REFRESH_CUDA = 1 } iqp_refresh_backend;

/* Called from the calling thread only, a few times a second while a long
 * stage runs: stage is "scan" or "compute", done out of total (total 0 when
 * unknown). */
typedef void (*iqp_refresh_progress_fn)(void *ud, const char *stage, uint64_t done,
                                        uint64_t total);

typedef struct iqp_refresh_params {
    int64_t as_of_ms;              /* T; iqp_refresh_scan reads it */
    double smoothing;              /* a >= 0, finite */
    size_t top_k;                  /* K; 0: no top-K lists */
    int rank_measure;              /* counter index (config.h order) */
    int n_threads;                 /* CPU threads for scan and compute, >= 1 */
    iqp_refresh_backend backend;
    iqp_refresh_progress_fn progress; /* may be NULL */
    void *progress_ud;
} iqp_refresh_params;

/* Fills p with the defaults: a = 20, K = 100, engaged, 1 thread, CPU. */
void iqp_refresh_params_defaults(iqp_refresh_params *p, int64_t as_of_ms);

/* Counter index of "impression", "engaged" or an action name of cfg; -1. */
int iqp_refresh_measure_index(const iqp_config *cfg, const char *name);
/* The name of counter k ("impression", "engaged", an action). */
const char *iqp_refresh_measure_name(const iqp_config *cfg, int k);

/* Counts and timings of one refresh. Cells are counter cells (one
 * (feature, context, entity, bucket) key of the counts column family). */
typedef struct iqp_refresh_stats {
    uint64_t keys_scanned;         /* counts CF keys read */
    uint64_t ctx_keys_scanned;     /* contexts CF keys read */
    uint64_t cells;                /* counter cells inside some window */
    uint64_t ctx_cells;            /* context cells inside some window */
    uint64_t bad_keys;             /* keys that are no cell of this layout (skipped) */
    uint64_t contexts, entities;
    uint64_t topk_entries;
    double scan_s;                 /* snapshot scan + indexing */
    double compute_s;              /* sums, priors, smoothing, top-K */
    double upload_s, kernel_s, download_s; /* CUDA compute's parts */
} iqp_refresh_stats;

typedef struct iqp_refresh_result iqp_refresh_result;

/* ---- running --------------------------------------------------------- */

/* Stage 1: scans snap (NULL: a snapshot is taken and released inside) of
 * st for p->as_of_ms with p->n_threads threads. *out gets the structure
 * (contexts, entities, their in-window cells) and no values yet. 0, or -1
 * with err. */
int iqp_refresh_scan(iqp_store *st, const iqp_store_snapshot *snap, const iqp_refresh_params *p,
                     iqp_refresh_result **out, char *err, size_t errlen);

/* Stage 2: computes every value of r (as of the scan's as_of_ms) with
 * p's smoothing, K, measure, backend and threads. May be called again on
 * the same r (the values are replaced). 0, or -1 with err (a CUDA backend
 * that is not built in or finds no device says so here). */
int iqp_refresh_compute(iqp_refresh_result *r, const iqp_refresh_params *p, char *err,
                        size_t errlen);

/* Frees the scanned cells (the compute stage's input; the result's values
 * stay). Later iqp_refresh_compute calls fail. */
void iqp_refresh_drop_cells(iqp_refresh_result *r);

/* Both stages, then iqp_refresh_drop_cells: what `iqp refresh` runs. */
int iqp_refresh_run(iqp_store *st, const iqp_store_snapshot *snap, const iqp_refresh_params *p,
                    iqp_refresh_result **out, char *err, size_t errlen);

/* Several stores read as one: the result is exactly that of one store
 * holding the sum of their counts (the partition stores of `iqp stream
 * --state-dir`; a context split over stores gets its cells summed).
 * snaps may be NULL, and any snaps[i] NULL (a snapshot of st[i] is taken
 * and released inside). Every store must have st[0]'s layout, else -1
 * with err naming the store's position. n = 1 is iqp_refresh_scan / _run. */
int iqp_refresh_scan_many(iqp_store *const *st, const iqp_store_snapshot *const *snaps, size_t n,
                          const iqp_refresh_params *p, iqp_refresh_result **out, char *err,
                          size_t errlen);
int iqp_refresh_run_many(iqp_store *const *st, const iqp_store_snapshot *const *snaps, size_t n,
                         const iqp_refresh_params *p, iqp_refresh_result **out, char *err,
                         size_t errlen);

void iqp_refresh_free(iqp_refresh_result *r);

/* True when the CUDA backend is built in and a device answers; else 0 with
 * the reason in err ("iqp was built without CUDA (./configure
 * --with-cuda)", or cudaGetDeviceCount's result). */
int iqp_refresh_cuda_available(char *err, size_t errlen);

/* ---- reading a result ---------------------------------------------------- */

const iqp_config *iqp_refresh_config(const iqp_refresh_result *r);
int64_t iqp_refresh_as_of(const iqp_refresh_result *r);
const iqp_refresh_stats *iqp_refresh_get_stats(const iqp_refresh_result *r);
/* The parameters the values were computed with. */
double iqp_refresh_smoothing(const iqp_refresh_result *r);
size_t iqp_refresh_top_k(const iqp_refresh_result *r);
int iqp_refresh_rank_measure(const iqp_refresh_result *r);

size_t iqp_refresh_n_contexts(const iqp_refresh_result *r);
size_t iqp_refresh_n_entities(const iqp_refresh_result *r);
/* Contexts of feature f are [*first, *first + *n). */
void iqp_refresh_feature_contexts(const iqp_refresh_result *r, size_t f, size_t *first, size_t *n);

/* One context. Pointers stay valid until iqp_refresh_free. */
typedef struct iqp_refresh_context {
    size_t feature;                /* index into cfg->features */
    const unsigned char *key;      /* the context prefix (cells.h) */
    size_t key_len;
    iqp_context ctx;               /* parsed; strings point into the result */
    const int64_t *context_count;  /* [n_windows] */
    size_t first_entity, n_entities;
} iqp_refresh_context;

void iqp_refresh_get_context(const iqp_refresh_result *r, size_t c, iqp_refresh_context *out);

/* One entity; arrays are [n_windows * n_counters], index w * n_counters + k. */
typedef struct iqp_refresh_entity {
    size_t context;
    const char *item;              /* not NUL-terminated */
    size_t item_len;
    const int64_t *counts;
    const double *rates;
    const double *smoothed;
} iqp_refresh_entity;

void iqp_refresh_get_entity(const iqp_refresh_result *r, size_t e, iqp_refresh_entity *out);

/* Entity e in window w as `iqp lookup` sees it (context_count + counters). */
void iqp_refresh_entity_row(const iqp_refresh_result *r, size_t e, size_t w,
                            iqp_feature_row *row);

/* prior_k(f, w), and its numerator N and denominator D. */
double iqp_refresh_prior(const iqp_refresh_result *r, size_t f, size_t w, size_t k);
void iqp_refresh_prior_parts(const iqp_refresh_result *r, size_t f, size_t w, size_t k,
                             int64_t *num, int64_t *den);

/* Top-K of context c in window w, best first: *entities gets entity
 * indexes (iqp_refresh_get_entity); returns how many. The value of each is
 * smoothed[w * n_counters + rank_measure]. */
size_t iqp_refresh_topk(const iqp_refresh_result *r, size_t c, size_t w, const uint32_t **entities);
double iqp_refresh_topk_value(const iqp_refresh_result *r, uint32_t entity, size_t w);

#endif

/* refresh_internal.h -- the layout of a refresh result, shared by the
 * refresher's own files (scan, CPU and CUDA backends, dump) and nobody else.
 *
 * Owns: struct iqp_refresh_result. Everything is CSR-style flat arrays
 * (offsets into one array per kind), so that a backend can upload them to
 * a device as they are and a 10-million-cell snapshot fits in well under
 * a GB of structure:
 *
 *   contexts  c in [0, n_contexts)      feature, key bytes, their entities
 *                                       ctx_ent[c] .. ctx_ent[c+1] and
 *                                       context cells ctx_cell[c] .. [c+1]
 *   entities  e in [0, n_entities)      owning context, item bytes, cells
 *                                       ent_cell[e] .. ent_cell[e+1], and
 *                                       rank: its position among its
 *                                       context's items in memcmp order
 *   cells     (counter cells, context cells)  granularity index, age in
 *                                       buckets (gran_last[g] - bucket,
 *                                       < gran_span[g]) and the counter
 *                                       vector (n_counters int64 for a
 *                                       counter cell, 1 for a context cell)
 *
 * Cells are numbered globally (ent_cell, ctx_cell hold global indexes) but
 * stored in one part per feature, exactly as that feature's scan job
 * filled them: the largest arrays are never copied on the host (part f
 * holds cells [first, first + n)). A device backend uploads the parts
 * back to back into one flat array.
 *
 * A refresh over several stores (iqp_refresh_scan_many) gives an entity or
 * context one cell per store that holds its (granularity, bucket): a
 * backend adds cells, so they sum as the summed store's one cell would.
 *
 * Only cells inside some window are kept (age < the longest window of its
 * granularity): the window test is then "gran == window's gran && age <
 * window's n_buckets", the same for every window of one granularity since
 * they all end at the bucket holding as_of.
 *
 * Values (filled by a backend): ctx_count[c * nw + w]; sums, rates and
 * smoothed[(e * nw + w) * nc + k]; feat_num/prior[(f * nw + w) * nc + k];
 * feat_den[f * nw + w]; top-K segment s = c * nw + w holds
 * topk_ent[topk_off[s] .. topk_off[s+1]).
 *
 * May not touch: anything outside refresher/. Plain C, also read by the
 * CUDA file (C++).
 */
#ifndef IQP_REFRESH_INTERNAL_H
#define IQP_REFRESH_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "model/config.h"
#include "refresher/refresh.h"

/* A run of cells with global indexes [first, first + n). */
typedef struct iqp_cell_part {
    uint64_t first, n;
    uint32_t *age;                          /* [n] */
    uint8_t *gran;                          /* [n] */
    int64_t *val;                           /* [n * width] */
} iqp_cell_part;

struct iqp_refresh_result {
    iqp_config cfg;
    int64_t as_of_ms;
    size_t nw, nc, nf;                      /* windows, counters, features */
    int64_t gran_last[IQP_MAX_GRANS];       /* bucket holding as_of, per granularity */
    uint32_t gran_span[IQP_MAX_GRANS];      /* buckets of its longest window (0: none) */
    uint32_t win_gran[IQP_MAX_WINDOWS];     /* cfg.windows[w].gran_index */
    uint32_t win_nb[IQP_MAX_WINDOWS];       /* cfg.windows[w].n_buckets */

    /* ---- structure (the scan) ---- */
    size_t n_contexts, n_entities, n_cells, n_ctx_cells, n_bytes;
    size_t feat_ctx[IQP_MAX_FEATURES + 1];  /* contexts of feature f */
    uint32_t *ctx_feature;                  /* [C] */
    uint64_t *ctx_key_off;                  /* [C] into bytes */
    uint32_t *ctx_key_len;                  /* [C] */
    uint64_t *ctx_ent;                      /* [C+1] */
    uint64_t *ctx_cell;                     /* [C+1] */
    uint32_t *ent_ctx;                      /* [E] */
    uint64_t *ent_item_off;                 /* [E] into bytes */
    uint32_t *ent_item_len;                 /* [E] */
    uint32_t *ent_rank;                     /* [E] */
    uint64_t *ent_cell;                     /* [E+1] */
    iqp_cell_part cells[IQP_MAX_FEATURES];  /* counter cells of feature f, width nc */
    iqp_cell_part ctx_cells[IQP_MAX_FEATURES]; /* context cells of feature f, width 1 */
    unsigned char *bytes;                   /* context keys and item ids */
    int has_cells;                          /* 0 after iqp_refresh_drop_cells */

    /* ---- values (a backend) ---- */
    int computed;
    double smoothing;
    size_t top_k;
    int rank_measure;
    int64_t *ctx_count;                     /* [C * nw] */
    int64_t *sums;                          /* [E * nw * nc] */
    double *rates, *smoothed;               /* [E * nw * nc] */
    int64_t *feat_num;                      /* [F * nw * nc] */
    int64_t *feat_den;                      /* [F * nw] */
    double *prior;                          /* [F * nw * nc] */
    uint64_t *topk_off;                     /* [C * nw + 1] */
    uint32_t *topk_ent;                     /* [topk_off[C * nw]] */

    iqp_refresh_stats stats;
};

/* Allocates the value arrays of r (sized by its structure) unless an
 * earlier compute did; top-K arrays are left to the backend (which frees
 * old ones). Every value array is overwritten in full by a backend. 0, or
 * -1 when out of memory. */
int iqp_refresh_alloc_values(iqp_refresh_result *r);

/* The CPU backend (refresh_cpu.c). */
int iqp_refresh_compute_cpu(iqp_refresh_result *r, const iqp_refresh_params *p, char *err,
                            size_t errlen);

/* CPU top-K of one (context, window) segment (topk.c): writes at most K
 * entity indexes, best first, into out and returns how many. scratch must
 * hold n_entities of c slots. */
typedef struct iqp_topk_slot {
    uint64_t key;      /* iqp_rm_order_key of the value */
    uint32_t rank;     /* ent_rank */
    uint32_t entity;
} iqp_topk_slot;
size_t iqp_refresh_topk_segment(const iqp_refresh_result *r, size_t c, size_t w, size_t k_max,
                                iqp_topk_slot *scratch, uint32_t *out);

/* Fills ent_rank for the entities of contexts [c0, c1) (topk.c). */
void iqp_refresh_rank_items(iqp_refresh_result *r, size_t c0, size_t c1);

#endif

/* refresh.c -- the refresher's front door (see refresh.h): parameters,
 * running the stages, choosing the backend, and reading a result.
 *
 * The scan (snapshot_scan.c) builds the structure; a backend
 * (refresh_cpu.c or refresh_cuda.cu, chosen per call) fills the values;
 * the accessors below are the only way the publisher and the dump see the
 * arrays of refresh_internal.h.
 */
#include "refresher/refresh.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "refresher/refresh_cuda.h"
#include "refresher/refresh_internal.h"
#include "util/clock.h"

void iqp_refresh_params_defaults(iqp_refresh_params *p, int64_t as_of_ms) {
    memset(p, 0, sizeof *p);
    p->as_of_ms = as_of_ms;
    p->smoothing = IQP_REFRESH_DEFAULT_SMOOTHING;
    p->top_k = IQP_REFRESH_DEFAULT_TOP_K;
    p->rank_measure = IQP_COUNTER_ENGAGED;
    p->n_threads = 1;
    p->backend = IQP_REFRESH_CPU;
}

int iqp_refresh_measure_index(const iqp_config *cfg, const char *name) {
    if (strcmp(name, "impression") == 0) return IQP_COUNTER_IMPRESSION;
    if (strcmp(name, "engaged") == 0) return IQP_COUNTER_ENGAGED;
    int a = iqp_config_action_index(cfg, name, strlen(name));
    return a < 0 ? -1 : IQP_COUNTER_ACTION0 + a;
}

const char *iqp_refresh_measure_name(const iqp_config *cfg, int k) {
    if (k == IQP_COUNTER_IMPRESSION) return "impression";
    if (k == IQP_COUNTER_ENGAGED) return "engaged";
    return cfg->actions[k - IQP_COUNTER_ACTION0];
}

/* ---- values ------------------------------------------------------------------- */

static void free_values(iqp_refresh_result *r) {
    free(r->ctx_count);
    free(r->sums);
    free(r->rates);
    free(r->smoothed);
    free(r->feat_num);
    free(r->feat_den);
    free(r->prior);
    free(r->topk_off);
    free(r->topk_ent);
    r->ctx_count = r->sums = r->feat_num = r->feat_den = NULL;
    r->rates = r->smoothed = r->prior = NULL;
    r->topk_off = NULL;
    r->topk_ent = NULL;
    r->computed = 0;
}

int iqp_refresh_alloc_values(iqp_refresh_result *r) {
    r->computed = 0;
    if (r->sums) return 0; /* the structure never changes after the scan: reuse */
    size_t C = r->n_contexts, E = r->n_entities, wk = r->nw * r->nc, F = r->nf;
    r->ctx_count = calloc(C * r->nw + 1, sizeof *r->ctx_count);
    r->sums = malloc((E * wk + 1) * sizeof *r->sums);
    r->rates = malloc((E * wk + 1) * sizeof *r->rates);
    r->smoothed = malloc((E * wk + 1) * sizeof *r->smoothed);
    r->feat_num = calloc(F * wk + 1, sizeof *r->feat_num);
    r->feat_den = calloc(F * r->nw + 1, sizeof *r->feat_den);
    r->prior = calloc(F * wk + 1, sizeof *r->prior);
    if (r->ctx_count && r->sums && r->rates && r->smoothed && r->feat_num && r->feat_den && r->prior)
        return 0;
    free_values(r);
    return -1;
}

static int check_params(const iqp_refresh_result *r, const iqp_refresh_params *p, char *err,
                        size_t errlen) {
    if (!r->has_cells) {
        snprintf(err, errlen, "refresh: the scanned cells were dropped; scan again");
        return -1;
    }
    if (!isfinite(p->smoothing) || p->smoothing < 0) {
        snprintf(err, errlen, "refresh: smoothing must be a finite number >= 0");
        return -1;
    }
    if (p->rank_measure < 0 || (size_t)p->rank_measure >= r->nc) {
        snprintf(err, errlen, "refresh: rank measure %d is not a counter of this store", p->rank_measure);
        return -1;
    }
    if (p->top_k > UINT32_MAX) {
        snprintf(err, errlen, "refresh: top-K too large");
        return -1;
    }
    return 0;
}

int iqp_refresh_compute(iqp_refresh_result *r, const iqp_refresh_params *p, char *err,
                        size_t errlen) {
    if (check_params(r, p, err, errlen) < 0) return -1;
    if (p->backend == IQP_REFRESH_CUDA && !iqp_refresh_cuda_probe(err, errlen)) return -1;
    double t0 = iqp_mono_seconds();
    if (iqp_refresh_alloc_values(r) < 0) {
        snprintf(err, errlen, "refresh: out of memory for %zu entities", r->n_entities);
        return -1;
    }
    r->smoothing = p->smoothing;
    r->top_k = p->top_k;
    r->rank_measure = p->rank_measure;
    r->stats.upload_s = r->stats.kernel_s = r->stats.download_s = 0;
    int rc = p->backend == IQP_REFRESH_CUDA ? iqp_refresh_compute_cuda(r, p, err, errlen)
                                            : iqp_refresh_compute_cpu(r, p, err, errlen);
    if (rc < 0) {
        free_values(r);
        return -1;
    }
    r->computed = 1;
    r->stats.compute_s = iqp_mono_seconds() - t0;
    return 0;
}

int iqp_refresh_run(iqp_store *st, const iqp_store_snapshot *snap, const iqp_refresh_params *p,
                    iqp_refresh_result **out, char *err, size_t errlen) {
    return iqp_refresh_run_many(&st, &snap, 1, p, out, err, errlen);
}

int iqp_refresh_run_many(iqp_store *const *st, const iqp_store_snapshot *const *snaps, size_t n,
                         const iqp_refresh_params *p, iqp_refresh_result **out, char *err,
                         size_t errlen) {
    if (p->backend == IQP_REFRESH_CUDA && !iqp_refresh_cuda_probe(err, errlen)) return -1;
    if (iqp_refresh_scan_many(st, snaps, n, p, out, err, errlen) < 0) return -1;
    if (iqp_refresh_compute(*out, p, err, errlen) < 0) {
        iqp_refresh_free(*out);
        *out = NULL;
        return -1;
    }
    iqp_refresh_drop_cells(*out);
    return 0;
}

int iqp_refresh_cuda_available(char *err, size_t errlen) { return iqp_refresh_cuda_probe(err, errlen); }

static void free_part(iqp_cell_part *p) {
    free(p->age);
    free(p->gran);
    free(p->val);
    p->age = NULL;
    p->gran = NULL;
    p->val = NULL;
}

void iqp_refresh_drop_cells(iqp_refresh_result *r) {
    for (size_t f = 0; f < IQP_MAX_FEATURES; f++) {
        free_part(&r->cells[f]);
        free_part(&r->ctx_cells[f]);
    }
    r->has_cells = 0;
}

void iqp_refresh_free(iqp_refresh_result *r) {
    if (!r) return;
    iqp_refresh_drop_cells(r);
    free_values(r);
    free(r->ctx_feature);
    free(r->ctx_key_off);
    free(r->ctx_key_len);
    free(r->ctx_ent);
    free(r->ctx_cell);
    free(r->ent_ctx);
    free(r->ent_item_off);
    free(r->ent_item_len);
    free(r->ent_rank);
    free(r->ent_cell);
    free(r->bytes);
    free(r);
}

/* ---- reading ------------------------------------------------------------------------ */

const iqp_config *iqp_refresh_config(const iqp_refresh_result *r) { return &r->cfg; }
int64_t iqp_refresh_as_of(const iqp_refresh_result *r) { return r->as_of_ms; }
const iqp_refresh_stats *iqp_refresh_get_stats(const iqp_refresh_result *r) { return &r->stats; }
double iqp_refresh_smoothing(const iqp_refresh_result *r) { return r->smoothing; }
size_t iqp_refresh_top_k(const iqp_refresh_result *r) { return r->top_k; }
int iqp_refresh_rank_measure(const iqp_refresh_result *r) { return r->rank_measure; }
size_t iqp_refresh_n_contexts(const iqp_refresh_result *r) { return r->n_contexts; }
size_t iqp_refresh_n_entities(const iqp_refresh_result *r) { return r->n_entities; }

void iqp_refresh_feature_contexts(const iqp_refresh_result *r, size_t f, size_t *first, size_t *n) {
    *first = r->feat_ctx[f];
    *n = r->feat_ctx[f + 1] - r->feat_ctx[f];
}

void iqp_refresh_get_context(const iqp_refresh_result *r, size_t c, iqp_refresh_context *out) {
    iqp_parsed_key pk;
    memset(out, 0, sizeof *out);
    out->feature = r->ctx_feature[c];
    out->key = r->bytes + r->ctx_key_off[c];
    out->key_len = r->ctx_key_len[c];
    if (iqp_cells_parse_key(&r->cfg, out->key, out->key_len, &pk) == 0) out->ctx = pk.ctx;
    /* else: the scan kept only keys that parse; ctx stays empty */
    out->context_count = r->ctx_count ? r->ctx_count + c * r->nw : NULL;
    out->first_entity = r->ctx_ent[c];
    out->n_entities = r->ctx_ent[c + 1] - r->ctx_ent[c];
}

void iqp_refresh_get_entity(const iqp_refresh_result *r, size_t e, iqp_refresh_entity *out) {
    size_t off = e * r->nw * r->nc;
    out->context = r->ent_ctx[e];
    out->item = (const char *)r->bytes + r->ent_item_off[e];
    out->item_len = r->ent_item_len[e];
    out->counts = r->sums ? r->sums + off : NULL;
    out->rates = r->rates ? r->rates + off : NULL;
    out->smoothed = r->smoothed ? r->smoothed + off : NULL;
}

void iqp_refresh_entity_row(const iqp_refresh_result *r, size_t e, size_t w, iqp_feature_row *row) {
    memset(row, 0, sizeof *row);
    row->context_count = r->ctx_count[(size_t)r->ent_ctx[e] * r->nw + w];
    memcpy(row->counters, r->sums + (e * r->nw + w) * r->nc, r->nc * sizeof *row->counters);
}

double iqp_refresh_prior(const iqp_refresh_result *r, size_t f, size_t w, size_t k) {
    return r->prior[(f * r->nw + w) * r->nc + k];
}

void iqp_refresh_prior_parts(const iqp_refresh_result *r, size_t f, size_t w, size_t k,
                             int64_t *num, int64_t *den) {
    *num = r->feat_num[(f * r->nw + w) * r->nc + k];
    *den = r->feat_den[f * r->nw + w];
}

size_t iqp_refresh_topk(const iqp_refresh_result *r, size_t c, size_t w, const uint32_t **entities) {
    size_t s = c * r->nw + w;
    *entities = r->topk_ent + r->topk_off[s];
    return r->topk_off[s + 1] - r->topk_off[s];
}

double iqp_refresh_topk_value(const iqp_refresh_result *r, uint32_t entity, size_t w) {
    return r->smoothed[((size_t)entity * r->nw + w) * r->nc + (size_t)r->rank_measure];
}

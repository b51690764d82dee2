/* refresh_cpu.c -- the CPU backend: window sums, priors, smoothing and
 * top-K over a scanned snapshot, on the pool's threads.
 *
 * Design
 * ------
 * Three passes over contexts (chunks of 64 to any free thread):
 *
 *   1. sums     per context: context_count of every window from its
 *               context cells; per entity: every counter of every window
 *               from its cells (cell in window w iff gran == w's and age <
 *               w's bucket count). Each worker also adds what it summed
 *               into its own per-feature totals (N per (f, w, k), D per
 *               (f, w)); integer addition, so the per-worker split does
 *               not change the totals.
 *   -           totals combined, priors N / D (refresh_math.h).
 *   2. values   per entity: rate and smoothed rate of every (w, k); then
 *               per (c, w): top-K (topk.c) into a scratch area with room
 *               for min(K, entities of c) per segment, laid out by a
 *               prefix sum over contexts computed before the pass.
 *   3. compact  the scratch lists packed into topk_ent behind topk_off
 *               (serial: one memmove per segment).
 *
 * Every value is written to its own slot and computed from the same
 * operands in the same order whatever the thread, so results do not depend
 * on the thread count. FP contraction is off for this file (refresh.h).
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "refresher/pool.h"
#include "refresher/refresh_internal.h"
#include "refresher/refresh_math.h"
#include "util/clock.h"

#define CTX_CHUNK 64

/* Shared state of one CPU compute. */
typedef struct cpu_run {
    iqp_refresh_result *r;
    double a;
    size_t k_max;
    int64_t *num;               /* [n_workers][F * nw * nc] */
    int64_t *den;               /* [n_workers][F * nw] */
    uint64_t *scratch_off;      /* [C * nw + 1]: room min(K, entities of c) per segment */
    uint32_t *scratch;
    uint32_t *seg_n;            /* [C * nw]: entities selected */
    iqp_topk_slot **slots;      /* per worker, max entities of one context */
    _Atomic uint64_t done;      /* contexts finished (progress) */
} cpu_run;

/* ---- pass 1: sums ------------------------------------------------------------ */

static void sum_context(const iqp_refresh_result *r, size_t c, int64_t *den) {
    size_t nw = r->nw, f = r->ctx_feature[c];
    const iqp_cell_part *p = &r->ctx_cells[f];
    int64_t *cc = r->ctx_count + c * nw;
    memset(cc, 0, nw * sizeof *cc);
    for (size_t i = r->ctx_cell[c] - p->first; i < r->ctx_cell[c + 1] - p->first; i++)
        for (size_t w = 0; w < nw; w++)
            if (p->gran[i] == r->win_gran[w] && p->age[i] < r->win_nb[w]) cc[w] += p->val[i];
    for (size_t w = 0; w < nw; w++) den[f * nw + w] += cc[w];
}

static void sum_entity(const iqp_refresh_result *r, size_t e, int64_t *num) {
    size_t nw = r->nw, nc = r->nc, f = r->ctx_feature[r->ent_ctx[e]];
    const iqp_cell_part *p = &r->cells[f];
    int64_t *s = r->sums + e * nw * nc;
    memset(s, 0, nw * nc * sizeof *s);
    for (size_t i = r->ent_cell[e] - p->first; i < r->ent_cell[e + 1] - p->first; i++) {
        const int64_t *v = p->val + i * nc;
        for (size_t w = 0; w < nw; w++) {
            if (p->gran[i] != r->win_gran[w] || p->age[i] >= r->win_nb[w]) continue;
            for (size_t k = 0; k < nc; k++) s[w * nc + k] += v[k];
        }
    }
    int64_t *fn = num + f * nw * nc;
    for (size_t j = 0; j < nw * nc; j++) fn[j] += s[j];
}

static void sums_worker(void *ud, size_t begin, size_t end, int worker) {
    cpu_run *run = ud;
    iqp_refresh_result *r = run->r;
    int64_t *num = run->num + (size_t)worker * r->nf * r->nw * r->nc;
    int64_t *den = run->den + (size_t)worker * r->nf * r->nw;
    for (size_t c = begin; c < end; c++) {
        sum_context(r, c, den);
        for (size_t e = r->ctx_ent[c]; e < r->ctx_ent[c + 1]; e++) sum_entity(r, e, num);
    }
    atomic_fetch_add(&run->done, end - begin);
}

/* Combines the workers' totals and computes the priors. */
static void priors(cpu_run *run, int n_workers) {
    iqp_refresh_result *r = run->r;
    size_t nfw = r->nf * r->nw, nfwk = nfw * r->nc;
    memset(r->feat_num, 0, nfwk * sizeof *r->feat_num);
    memset(r->feat_den, 0, nfw * sizeof *r->feat_den);
    for (int t = 0; t < n_workers; t++) {
        for (size_t i = 0; i < nfwk; i++) r->feat_num[i] += run->num[(size_t)t * nfwk + i];
        for (size_t i = 0; i < nfw; i++) r->feat_den[i] += run->den[(size_t)t * nfw + i];
    }
    for (size_t i = 0; i < nfwk; i++)
        r->prior[i] = iqp_rm_rate(r->feat_num[i], r->feat_den[i / r->nc]);
}

/* ---- pass 2: rates, smoothing, top-K --------------------------------------------- */

static void values_entity(const iqp_refresh_result *r, size_t e, double a) {
    size_t nw = r->nw, nc = r->nc, c = r->ent_ctx[e], f = r->ctx_feature[c];
    for (size_t w = 0; w < nw; w++) {
        int64_t cc = r->ctx_count[c * nw + w];
        for (size_t k = 0; k < nc; k++) {
            size_t i = (e * nw + w) * nc + k;
            r->rates[i] = iqp_rm_rate(r->sums[i], cc);
            r->smoothed[i] = iqp_rm_smooth(r->sums[i], cc, a, r->prior[(f * nw + w) * nc + k]);
        }
    }
}

static void values_worker(void *ud, size_t begin, size_t end, int worker) {
    cpu_run *run = ud;
    iqp_refresh_result *r = run->r;
    for (size_t c = begin; c < end; c++) {
        for (size_t e = r->ctx_ent[c]; e < r->ctx_ent[c + 1]; e++) values_entity(r, e, run->a);
        for (size_t w = 0; w < r->nw; w++) {
            size_t s = c * r->nw + w;
            run->seg_n[s] = (uint32_t)iqp_refresh_topk_segment(
                r, c, w, run->k_max, run->slots[worker], run->scratch + run->scratch_off[s]);
        }
    }
    atomic_fetch_add(&run->done, end - begin);
}

/* ---- setup and the three passes ---------------------------------------------------- */

static void run_free(cpu_run *run, int n_workers) {
    free(run->num);
    free(run->den);
    free(run->scratch_off);
    free(run->scratch);
    free(run->seg_n);
    if (run->slots)
        for (int t = 0; t < n_workers; t++) free(run->slots[t]);
    free(run->slots);
}

static int run_alloc(cpu_run *run, int n_workers) {
    iqp_refresh_result *r = run->r;
    size_t C = r->n_contexts, S = C * r->nw, max_ent = 0;
    run->num = calloc((size_t)n_workers * r->nf * r->nw * r->nc + 1, sizeof *run->num);
    run->den = calloc((size_t)n_workers * r->nf * r->nw + 1, sizeof *run->den);
    run->scratch_off = malloc((S + 1) * sizeof *run->scratch_off);
    run->seg_n = malloc((S + 1) * sizeof *run->seg_n);
    run->slots = calloc((size_t)n_workers, sizeof *run->slots);
    if (!run->num || !run->den || !run->scratch_off || !run->seg_n || !run->slots) return -1;
    run->scratch_off[0] = 0;
    for (size_t c = 0; c < C; c++) {
        size_t n = r->ctx_ent[c + 1] - r->ctx_ent[c];
        if (n > max_ent) max_ent = n;
        size_t room = n < run->k_max ? n : run->k_max;
        for (size_t w = 0; w < r->nw; w++) run->scratch_off[c * r->nw + w + 1] = run->scratch_off[c * r->nw + w] + room;
    }
    run->scratch = malloc((run->scratch_off[S] + 1) * sizeof *run->scratch);
    if (!run->scratch) return -1;
    for (int t = 0; t < n_workers; t++)
        if (!(run->slots[t] = malloc((max_ent + 1) * sizeof **run->slots))) return -1;
    return 0;
}

/* Pass 3: packs the per-segment lists into r->topk_off / topk_ent. */
static int pack_topk(cpu_run *run) {
    iqp_refresh_result *r = run->r;
    size_t S = r->n_contexts * r->nw;
    free(r->topk_off);
    free(r->topk_ent);
    r->topk_ent = NULL;
    r->topk_off = malloc((S + 1) * sizeof *r->topk_off);
    if (!r->topk_off) return -1;
    r->topk_off[0] = 0;
    for (size_t s = 0; s < S; s++) r->topk_off[s + 1] = r->topk_off[s] + run->seg_n[s];
    r->topk_ent = malloc((r->topk_off[S] + 1) * sizeof *r->topk_ent);
    if (!r->topk_ent) return -1;
    for (size_t s = 0; s < S; s++)
        memcpy(r->topk_ent + r->topk_off[s], run->scratch + run->scratch_off[s],
               run->seg_n[s] * sizeof *r->topk_ent);
    r->stats.topk_entries = r->topk_off[S];
    return 0;
}

int iqp_refresh_compute_cpu(iqp_refresh_result *r, const iqp_refresh_params *p, char *err,
                            size_t errlen) {
    int n_workers = p->n_threads < 1 ? 1 : p->n_threads;
    cpu_run run = {.r = r, .a = p->smoothing, .k_max = p->top_k};
    atomic_init(&run.done, 0);
    if (run_alloc(&run, n_workers) < 0) {
        run_free(&run, n_workers);
        snprintf(err, errlen, "refresh: out of memory (CPU compute)");
        return -1;
    }
    uint64_t total = 2 * (uint64_t)r->n_contexts;
    iqp_pool_progress prog = {p->progress, p->progress_ud, "compute", &run.done, total};
    iqp_pool_run(n_workers, r->n_contexts, CTX_CHUNK, sums_worker, &run, &prog);
    priors(&run, n_workers);
    iqp_pool_run(n_workers, r->n_contexts, CTX_CHUNK, values_worker, &run, &prog);
    int rc = pack_topk(&run);
    run_free(&run, n_workers);
    if (rc < 0) snprintf(err, errlen, "refresh: out of memory (top-K lists)");
    return rc;
}

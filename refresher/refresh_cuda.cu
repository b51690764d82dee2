/* refresh_cuda.cu -- the CUDA backend: the same values as refresh_cpu.c,
 * bit for bit, computed on the device (see refresh.h for the arithmetic).
 *
 * Design
 * ------
 * The scan's flat arrays (refresh_internal.h) go to the device as they
 * are; every step is a data-parallel kernel over one index space:
 *
 *   entity sums     thread per (entity, counter): a segmented sum over the
 *                   entity's cells (CSR ent_cell), each cell added into the
 *                   windows it lies in (gran match, age < bucket count)
 *   context sums    thread per context, over its context cells
 *   feature totals  thread per (chunk of 256 entities, window x counter):
 *                   a partial sum, flushed with a 64-bit atomicAdd into
 *                   N(f, w, k) at each feature boundary; likewise D(f, w)
 *                   over chunks of contexts. Integer atomics: exact, so
 *                   the order they land in does not matter.
 *   priors          thread per (f, w, k)
 *   rates, smoothed thread per (entity, window, counter), refresh_math.h
 *   top-K keys      thread per (entity, window): key = order key of the
 *                   smoothed ranking value (0 when the entity has no count
 *                   in the window), placed at window-major position
 *                   w * E + ctx_ent[c] + rank, so each (window, context)
 *                   segment starts out in item-id order
 *   segmented sort  cub::DeviceSegmentedSort::StableSortPairsDescending over
 *                   the (window, context) segments: stable, so equal keys
 *                   keep item-id order -- exactly the CPU's tie rule
 *   top-K pick      thread per segment: the leading min(K, n) nonzero keys;
 *                   an exclusive scan (cub::DeviceScan) lays the lists out
 *                   in (context, window) order; a copy kernel fills them.
 *
 * Float code uses the _rn intrinsics (never contracted) and the file is
 * compiled with --fmad=false.
 *
 * IQP_CUDA_EMULATE (./configure --with-cuda=emulate, for development on a
 * machine without a GPU) runs the very same per-thread bodies in host
 * loops, device memory as host memory and a std::stable_sort per segment
 * in place of CUB: it checks this file's indexing and arithmetic against
 * the CPU backend, not the CUDA runtime or CUB.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

extern "C" {
#include "refresher/refresh_internal.h"
#include "util/clock.h"
}
#include "refresher/refresh_cuda.h"
#include "refresher/refresh_math.h"

#ifndef IQP_CUDA_EMULATE
#include <cuda_runtime.h>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>
#endif

#define IQP_HD __host__ __device__

/* ---- device memory and launches ----------------------------------------------- */

/* Owns every device buffer of one compute; frees them when it goes away.
 * The first failure is kept in err; later calls do nothing. */
class device_mem {
  public:
    device_mem(char *err, size_t errlen) : err_(err), errlen_(errlen) {}
    ~device_mem() {
        for (void *p : bufs_) release(p);
    }
    bool failed() const { return failed_; }

#ifdef IQP_CUDA_EMULATE
    bool check(int ok, const char *what) {
        if (!ok && !failed_) fail(what, "failed");
        return ok && !failed_;
    }
#else
    bool check(cudaError_t e, const char *what) {
        if (e != cudaSuccess && !failed_) fail(what, cudaGetErrorString(e));
        return e == cudaSuccess && !failed_;
    }
#endif

    /* Host-side failures (malloc). */
    bool require(bool ok, const char *what) {
        if (!ok && !failed_) fail(what, "out of memory");
        return ok && !failed_;
    }

    template <class T> T *alloc(size_t n) {
        if (failed_) return nullptr;
        void *p = nullptr;
        size_t bytes = (n ? n : 1) * sizeof(T);
#ifdef IQP_CUDA_EMULATE
        p = malloc(bytes);
        if (!check(p != nullptr, "malloc")) return nullptr;
#else
        if (!check(cudaMalloc(&p, bytes), "cudaMalloc")) return nullptr;
#endif
        bufs_.push_back(p);
        return static_cast<T *>(p);
    }

    template <class T> T *upload(const T *host, size_t n) {
        T *d = alloc<T>(n);
        if (d) copy_in(d, host, n);
        return failed_ ? nullptr : d;
    }

    template <class T> bool copy_in(T *dev, const T *host, size_t n) {
        if (failed_ || n == 0) return !failed_;
#ifdef IQP_CUDA_EMULATE
        memcpy(dev, host, n * sizeof(T));
        return true;
#else
        return check(cudaMemcpy(dev, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy (upload)");
#endif
    }

    template <class T> bool download(T *host, const T *dev, size_t n) {
        if (failed_ || n == 0) return !failed_;
#ifdef IQP_CUDA_EMULATE
        memcpy(host, dev, n * sizeof(T));
        return true;
#else
        return check(cudaMemcpy(host, dev, n * sizeof(T), cudaMemcpyDeviceToHost),
                     "cudaMemcpy (download)");
#endif
    }

    template <class T> bool zero(T *dev, size_t n) {
        if (failed_) return false;
#ifdef IQP_CUDA_EMULATE
        memset(dev, 0, n * sizeof(T));
        return true;
#else
        return check(cudaMemset(dev, 0, n * sizeof(T)), "cudaMemset");
#endif
    }

    bool sync(const char *what) {
        if (failed_) return false;
#ifdef IQP_CUDA_EMULATE
        (void)what;
        return true;
#else
        return check(cudaDeviceSynchronize(), what);
#endif
    }

  private:
    void fail(const char *what, const char *why) {
        failed_ = true;
        snprintf(err_, errlen_, "refresh (cuda): %s: %s", what, why);
    }
    static void release(void *p) {
#ifdef IQP_CUDA_EMULATE
        free(p);
#else
        cudaFree(p);
#endif
    }
    char *err_;
    size_t errlen_;
    bool failed_ = false;
    std::vector<void *> bufs_;
};

#ifndef IQP_CUDA_EMULATE
/* One thread per index, grid-stride. */
template <class Op> __global__ void for_each_kernel(uint64_t n, Op op) {
    uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) op(i);
}
#endif

/* Runs op(i) for every i in [0, n): a kernel launch, or a host loop when
 * emulating. */
template <class Op> static bool for_each(device_mem &dm, uint64_t n, const Op &op, const char *what) {
    if (dm.failed()) return false;
    if (n == 0) return true;
#ifdef IQP_CUDA_EMULATE
    (void)what;
    for (uint64_t i = 0; i < n; i++) op(i);
    return true;
#else
    const unsigned threads = 256;
    uint64_t blocks = (n + threads - 1) / threads;
    if (blocks > (1u << 22)) blocks = 1u << 22;
    for_each_kernel<<<(unsigned)blocks, threads>>>(n, op);
    return dm.check(cudaGetLastError(), what);
#endif
}

/* 64-bit integer add into global memory; exact in any order. */
static inline IQP_HD void add_i64(int64_t *p, int64_t v) {
#if defined(__CUDA_ARCH__)
    atomicAdd(reinterpret_cast<unsigned long long *>(p), static_cast<unsigned long long>(v));
#else
    *p += v;
#endif
}

/* ---- the per-thread bodies ---------------------------------------------------------- */

/* Which windows a cell (granularity, age) lies in. */
struct window_geom {
    uint32_t nw;
    uint32_t gran[IQP_MAX_WINDOWS];
    uint32_t nb[IQP_MAX_WINDOWS];
    IQP_HD bool holds(uint32_t w, uint32_t g, uint32_t age) const { return gran[w] == g && age < nb[w]; }
};

/* sums[(e * nw + w) * nc + k] for thread i = e * nc + k. */
struct entity_sums_op {
    window_geom g;
    uint64_t nc;
    const uint64_t *ent_cell;
    const uint32_t *cell_age;
    const uint8_t *cell_gran;
    const int64_t *cell_val;
    int64_t *sums;
    IQP_HD void operator()(uint64_t i) const {
        uint64_t e = i / nc, k = i % nc;
        int64_t acc[IQP_MAX_WINDOWS];
        for (uint32_t w = 0; w < g.nw; w++) acc[w] = 0;
        for (uint64_t c = ent_cell[e]; c < ent_cell[e + 1]; c++) {
            uint32_t gr = cell_gran[c], age = cell_age[c];
            int64_t v = cell_val[c * nc + k];
            for (uint32_t w = 0; w < g.nw; w++)
                if (g.holds(w, gr, age)) acc[w] += v;
        }
        for (uint32_t w = 0; w < g.nw; w++) sums[(e * g.nw + w) * nc + k] = acc[w];
    }
};

/* ctx_count[c * nw + w] for thread c. */
struct context_sums_op {
    window_geom g;
    const uint64_t *ctx_cell;
    const uint32_t *cc_age;
    const uint8_t *cc_gran;
    const int64_t *cc_val;
    int64_t *ctx_count;
    IQP_HD void operator()(uint64_t c) const {
        int64_t acc[IQP_MAX_WINDOWS];
        for (uint32_t w = 0; w < g.nw; w++) acc[w] = 0;
        for (uint64_t i = ctx_cell[c]; i < ctx_cell[c + 1]; i++)
            for (uint32_t w = 0; w < g.nw; w++)
                if (g.holds(w, cc_gran[i], cc_age[i])) acc[w] += cc_val[i];
        for (uint32_t w = 0; w < g.nw; w++) ctx_count[c * g.nw + w] = acc[w];
    }
};

#define TOTALS_CHUNK 256

/* N(f, w, k) += sums of a chunk of entities, thread i = chunk * wk + j. */
struct feature_totals_op {
    uint64_t n_entities, wk;
    const uint32_t *ent_ctx;
    const uint32_t *ctx_feature;
    const int64_t *sums;
    int64_t *num;
    IQP_HD void operator()(uint64_t i) const {
        uint64_t chunk = i / wk, j = i % wk;
        uint64_t e0 = chunk * TOTALS_CHUNK, e1 = e0 + TOTALS_CHUNK;
        if (e1 > n_entities) e1 = n_entities;
        uint32_t f = ctx_feature[ent_ctx[e0]];
        int64_t acc = 0;
        for (uint64_t e = e0; e < e1; e++) {
            uint32_t fe = ctx_feature[ent_ctx[e]];
            if (fe != f) {
                add_i64(&num[f * wk + j], acc);
                acc = 0;
                f = fe;
            }
            acc += sums[e * wk + j];
        }
        add_i64(&num[f * wk + j], acc);
    }
};

/* D(f, w) += context counts of a chunk of contexts, thread i = chunk * nw + w. */
struct context_totals_op {
    uint64_t n_contexts, nw;
    const uint32_t *ctx_feature;
    const int64_t *ctx_count;
    int64_t *den;
    IQP_HD void operator()(uint64_t i) const {
        uint64_t chunk = i / nw, w = i % nw;
        uint64_t c0 = chunk * TOTALS_CHUNK, c1 = c0 + TOTALS_CHUNK;
        if (c1 > n_contexts) c1 = n_contexts;
        uint32_t f = ctx_feature[c0];
        int64_t acc = 0;
        for (uint64_t c = c0; c < c1; c++) {
            if (ctx_feature[c] != f) {
                add_i64(&den[f * nw + w], acc);
                acc = 0;
                f = ctx_feature[c];
            }
            acc += ctx_count[c * nw + w];
        }
        add_i64(&den[f * nw + w], acc);
    }
};

/* prior[(f * nw + w) * nc + k] for thread i = that index. */
struct priors_op {
    uint64_t nc;
    const int64_t *num, *den;
    double *prior;
    IQP_HD void operator()(uint64_t i) const { prior[i] = iqp_rm_rate(num[i], den[i / nc]); }
};

/* rates and smoothed for thread i = (e * nw + w) * nc + k. */
struct values_op {
    uint64_t nw, nc;
    double a;
    const uint32_t *ent_ctx;
    const uint32_t *ctx_feature;
    const int64_t *ctx_count, *sums;
    const double *prior;
    double *rates, *smoothed;
    IQP_HD void operator()(uint64_t i) const {
        uint64_t e = i / (nw * nc), w = (i / nc) % nw, k = i % nc;
        uint64_t c = ent_ctx[e], f = ctx_feature[c];
        int64_t cc = ctx_count[c * nw + w];
        rates[i] = iqp_rm_rate(sums[i], cc);
        smoothed[i] = iqp_rm_smooth(sums[i], cc, a, prior[(f * nw + w) * nc + k]);
    }
};

/* Sort input for thread i = e * nw + w, at w * E + ctx_ent[c] + rank. */
struct topk_keys_op {
    uint64_t n_entities, nw, nc, measure;
    const uint32_t *ent_ctx, *ent_rank;
    const uint64_t *ctx_ent;
    const int64_t *sums;
    const double *smoothed;
    uint64_t *keys;
    uint32_t *vals;
    IQP_HD void operator()(uint64_t i) const {
        uint64_t e = i / nw, w = i % nw;
        bool any = false;
        for (uint64_t k = 0; k < nc; k++) any = any || sums[i * nc + k] != 0;
        uint64_t pos = w * n_entities + ctx_ent[ent_ctx[e]] + ent_rank[e];
        keys[pos] = any ? iqp_rm_order_key(smoothed[i * nc + measure]) : 0;
        vals[pos] = (uint32_t)e;
    }
};

/* Segment s = w * C + c of the sort: [begin, end). */
struct segments_op {
    uint64_t n_contexts, n_entities;
    const uint64_t *ctx_ent;
    int64_t *begin, *end;
    IQP_HD void operator()(uint64_t s) const {
        uint64_t w = s / n_contexts, c = s % n_contexts;
        begin[s] = (int64_t)(w * n_entities + ctx_ent[c]);
        end[s] = (int64_t)(w * n_entities + ctx_ent[c + 1]);
    }
};

/* How many of output segment i = c * nw + w make its top-K. */
struct topk_count_op {
    uint64_t n_entities, nw, k_max;
    const uint64_t *ctx_ent;
    const uint64_t *keys;        /* sorted */
    uint64_t *count;
    IQP_HD void operator()(uint64_t i) const {
        uint64_t c = i / nw, w = i % nw;
        uint64_t base = w * n_entities + ctx_ent[c], len = ctx_ent[c + 1] - ctx_ent[c];
        uint64_t n = len < k_max ? len : k_max, j = 0;
        while (j < n && keys[base + j] != 0) j++;
        count[i] = j;
    }
};

/* Copies output segment i's list to topk_ent[off[i]...]. */
struct topk_copy_op {
    uint64_t n_entities, nw;
    const uint64_t *ctx_ent, *count, *off;
    const uint32_t *vals;        /* sorted */
    uint32_t *topk_ent;
    IQP_HD void operator()(uint64_t i) const {
        uint64_t c = i / nw, w = i % nw;
        uint64_t base = w * n_entities + ctx_ent[c];
        for (uint64_t j = 0; j < count[i]; j++) topk_ent[off[i] + j] = vals[base + j];
    }
};

/* ---- sort and scan: CUB, or host stand-ins when emulating ------------------------------ */

static bool segmented_sort(device_mem &dm, const uint64_t *keys_in, uint64_t *keys_out,
                           const uint32_t *vals_in, uint32_t *vals_out, uint64_t n,
                           uint64_t n_segments, const int64_t *begin, const int64_t *end) {
    if (dm.failed()) return false;
#ifdef IQP_CUDA_EMULATE
    std::vector<std::pair<uint64_t, uint32_t>> seg;
    for (uint64_t s = 0; s < n_segments; s++) {
        seg.clear();
        for (int64_t i = begin[s]; i < end[s]; i++) seg.emplace_back(keys_in[i], vals_in[i]);
        std::stable_sort(seg.begin(), seg.end(),
                         [](const std::pair<uint64_t, uint32_t> &x,
                            const std::pair<uint64_t, uint32_t> &y) { return x.first > y.first; });
        for (size_t i = 0; i < seg.size(); i++) {
            keys_out[begin[s] + (int64_t)i] = seg[i].first;
            vals_out[begin[s] + (int64_t)i] = seg[i].second;
        }
    }
    (void)n;
    return true;
#else
    size_t temp_bytes = 0;
    if (!dm.check(cub::DeviceSegmentedSort::StableSortPairsDescending(
                      nullptr, temp_bytes, keys_in, keys_out, vals_in, vals_out, (int64_t)n,
                      (int64_t)n_segments, begin, end),
                  "cub::DeviceSegmentedSort (sizing)"))
        return false;
    void *temp = dm.alloc<unsigned char>(temp_bytes);
    if (!temp) return false;
    return dm.check(cub::DeviceSegmentedSort::StableSortPairsDescending(
                        temp, temp_bytes, keys_in, keys_out, vals_in, vals_out, (int64_t)n,
                        (int64_t)n_segments, begin, end),
                    "cub::DeviceSegmentedSort::StableSortPairsDescending");
#endif
}

/* out[i] = in[0] + ... + in[i-1] for i in [0, n]. */
static bool exclusive_sum(device_mem &dm, const uint64_t *in, uint64_t *out, uint64_t n) {
    if (dm.failed()) return false;
#ifdef IQP_CUDA_EMULATE
    uint64_t acc = 0;
    for (uint64_t i = 0; i < n; i++) {
        out[i] = acc;
        acc += in[i];
    }
    return true;
#else
    size_t temp_bytes = 0;
    if (!dm.check(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, in, out, (int64_t)n),
                  "cub::DeviceScan (sizing)"))
        return false;
    void *temp = dm.alloc<unsigned char>(temp_bytes);
    if (!temp) return false;
    return dm.check(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, in, out, (int64_t)n),
                    "cub::DeviceScan::ExclusiveSum");
#endif
}

/* ---- the compute --------------------------------------------------------------------------- */

/* The scan's arrays on the device. */
struct dev_input {
    const uint32_t *ctx_feature, *ent_ctx, *ent_rank, *cell_age, *cc_age;
    const uint64_t *ctx_ent, *ctx_cell, *ent_cell;
    const uint8_t *cell_gran, *cc_gran;
    const int64_t *cell_val, *cc_val;
};

/* The values on the device. */
struct dev_output {
    int64_t *ctx_count, *sums, *num, *den;
    double *prior, *rates, *smoothed;
};

/* One field of the per-feature cell parts, uploaded back to back into one
 * flat device array of n cells (width values each). */
template <class T>
static T *upload_parts(device_mem &dm, const iqp_refresh_result *r, const iqp_cell_part *parts, uint64_t n,
                       uint64_t width, T *iqp_cell_part::*field) {
    T *d = dm.alloc<T>(n * width);
    for (size_t f = 0; d && f < r->nf; f++) {
        const iqp_cell_part &p = parts[f];
        if (p.n) dm.copy_in(d + p.first * width, p.*field, p.n * width);
    }
    return dm.failed() ? nullptr : d;
}

static bool upload_input(device_mem &dm, const iqp_refresh_result *r, dev_input *in) {
    size_t C = r->n_contexts, E = r->n_entities;
    in->ctx_feature = dm.upload(r->ctx_feature, C);
    in->ctx_ent = dm.upload(r->ctx_ent, C + 1);
    in->ctx_cell = dm.upload(r->ctx_cell, C + 1);
    in->cc_age = upload_parts(dm, r, r->ctx_cells, r->n_ctx_cells, 1, &iqp_cell_part::age);
    in->cc_gran = upload_parts(dm, r, r->ctx_cells, r->n_ctx_cells, 1, &iqp_cell_part::gran);
    in->cc_val = upload_parts(dm, r, r->ctx_cells, r->n_ctx_cells, 1, &iqp_cell_part::val);
    in->ent_ctx = dm.upload(r->ent_ctx, E);
    in->ent_rank = dm.upload(r->ent_rank, E);
    in->ent_cell = dm.upload(r->ent_cell, E + 1);
    in->cell_age = upload_parts(dm, r, r->cells, r->n_cells, 1, &iqp_cell_part::age);
    in->cell_gran = upload_parts(dm, r, r->cells, r->n_cells, 1, &iqp_cell_part::gran);
    in->cell_val = upload_parts(dm, r, r->cells, r->n_cells, r->nc, &iqp_cell_part::val);
    return !dm.failed();
}

static window_geom geometry(const iqp_refresh_result *r) {
    window_geom g;
    memset(&g, 0, sizeof g);
    g.nw = (uint32_t)r->nw;
    for (size_t w = 0; w < r->nw; w++) g.gran[w] = r->win_gran[w], g.nb[w] = r->win_nb[w];
    return g;
}

/* Window sums, totals, priors, rates and smoothed values. */
static bool compute_values(device_mem &dm, const iqp_refresh_result *r, double a,
                           const dev_input &in, dev_output *out) {
    uint64_t C = r->n_contexts, E = r->n_entities, nw = r->nw, nc = r->nc, wk = nw * nc;
    window_geom g = geometry(r);
    out->ctx_count = dm.alloc<int64_t>(C * nw);
    out->sums = dm.alloc<int64_t>(E * wk);
    out->num = dm.alloc<int64_t>(r->nf * wk);
    out->den = dm.alloc<int64_t>(r->nf * nw);
    out->prior = dm.alloc<double>(r->nf * wk);
    out->rates = dm.alloc<double>(E * wk);
    out->smoothed = dm.alloc<double>(E * wk);
    dm.zero(out->num, r->nf * wk);
    dm.zero(out->den, r->nf * nw);
    if (dm.failed()) return false;
    for_each(dm, E * nc, entity_sums_op{g, nc, in.ent_cell, in.cell_age, in.cell_gran, in.cell_val, out->sums},
             "entity sums kernel");
    for_each(dm, C, context_sums_op{g, in.ctx_cell, in.cc_age, in.cc_gran, in.cc_val, out->ctx_count},
             "context sums kernel");
    uint64_t e_chunks = (E + TOTALS_CHUNK - 1) / TOTALS_CHUNK, c_chunks = (C + TOTALS_CHUNK - 1) / TOTALS_CHUNK;
    for_each(dm, e_chunks * wk, feature_totals_op{E, wk, in.ent_ctx, in.ctx_feature, out->sums, out->num},
             "feature totals kernel");
    for_each(dm, c_chunks * nw, context_totals_op{C, nw, in.ctx_feature, out->ctx_count, out->den},
             "context totals kernel");
    for_each(dm, r->nf * wk, priors_op{nc, out->num, out->den, out->prior}, "priors kernel");
    for_each(dm, E * wk,
             values_op{nw, nc, a, in.ent_ctx, in.ctx_feature, out->ctx_count, out->sums, out->prior,
                       out->rates, out->smoothed},
             "values kernel");
    return !dm.failed();
}

/* Top-K lists into r->topk_off / topk_ent (allocated here, on the host). */
static bool compute_topk(device_mem &dm, iqp_refresh_result *r, size_t k_max, int measure,
                         const dev_input &in, const dev_output &out, double *t_download) {
    uint64_t C = r->n_contexts, E = r->n_entities, nw = r->nw, S = C * nw, NI = E * nw;
    uint64_t *keys_in = dm.alloc<uint64_t>(NI), *keys_out = dm.alloc<uint64_t>(NI);
    uint32_t *vals_in = dm.alloc<uint32_t>(NI), *vals_out = dm.alloc<uint32_t>(NI);
    int64_t *seg_begin = dm.alloc<int64_t>(S), *seg_end = dm.alloc<int64_t>(S);
    uint64_t *count = dm.alloc<uint64_t>(S + 1), *off = dm.alloc<uint64_t>(S + 1);
    dm.zero(count, S + 1);
    if (dm.failed()) return false;
    if (k_max > 0) {
        for_each(dm, NI,
                 topk_keys_op{E, nw, r->nc, (uint64_t)measure, in.ent_ctx, in.ent_rank, in.ctx_ent,
                              out.sums, out.smoothed, keys_in, vals_in},
                 "top-K keys kernel");
        for_each(dm, S, segments_op{C, E, in.ctx_ent, seg_begin, seg_end}, "segments kernel");
        segmented_sort(dm, keys_in, keys_out, vals_in, vals_out, NI, S, seg_begin, seg_end);
        for_each(dm, S, topk_count_op{E, nw, (uint64_t)k_max, in.ctx_ent, keys_out, count},
                 "top-K count kernel");
    }
    exclusive_sum(dm, count, off, S + 1);
    if (!dm.sync("top-K")) return false;
    double t0 = iqp_mono_seconds();
    free(r->topk_off);
    free(r->topk_ent);
    r->topk_ent = nullptr;
    r->topk_off = (uint64_t *)malloc((S + 1) * sizeof *r->topk_off);
    if (!dm.require(r->topk_off != nullptr, "malloc (top-K offsets)")) return false;
    if (!dm.download(r->topk_off, off, S + 1)) return false;
    uint64_t total = r->topk_off[S];
    uint32_t *topk_ent = dm.alloc<uint32_t>(total);
    double t1 = iqp_mono_seconds();
    for_each(dm, S, topk_copy_op{E, nw, in.ctx_ent, count, off, vals_out, topk_ent}, "top-K copy kernel");
    if (!dm.sync("top-K copy")) return false;
    double t2 = iqp_mono_seconds();
    r->topk_ent = (uint32_t *)malloc((total + 1) * sizeof *r->topk_ent);
    if (!dm.require(r->topk_ent != nullptr, "malloc (top-K lists)")) return false;
    if (!dm.download(r->topk_ent, topk_ent, total)) return false;
    r->stats.topk_entries = total;
    *t_download += (t1 - t0) + (iqp_mono_seconds() - t2);
    return true;
}

static bool download_values(device_mem &dm, iqp_refresh_result *r, const dev_output &out) {
    size_t C = r->n_contexts, E = r->n_entities, wk = r->nw * r->nc;
    dm.download(r->ctx_count, out.ctx_count, C * r->nw);
    dm.download(r->sums, out.sums, E * wk);
    dm.download(r->rates, out.rates, E * wk);
    dm.download(r->smoothed, out.smoothed, E * wk);
    dm.download(r->feat_num, out.num, r->nf * wk);
    dm.download(r->feat_den, out.den, r->nf * r->nw);
    dm.download(r->prior, out.prior, r->nf * wk);
    return !dm.failed();
}

extern "C" int iqp_refresh_compute_cuda(iqp_refresh_result *r, const iqp_refresh_params *p,
                                        char *err, size_t errlen) {
    device_mem dm(err, errlen);
    dev_input in;
    dev_output out;
    double t0 = iqp_mono_seconds();
    if (!upload_input(dm, r, &in)) return -1;
    if (!dm.sync("upload")) return -1;
    double t1 = iqp_mono_seconds();
    if (!compute_values(dm, r, p->smoothing, in, &out)) return -1;
    double t_download = 0;
    if (!compute_topk(dm, r, p->top_k, p->rank_measure, in, out, &t_download)) return -1;
    double t2 = iqp_mono_seconds();
    if (!download_values(dm, r, out)) return -1;
    double t3 = iqp_mono_seconds();
    r->stats.upload_s = t1 - t0;
    r->stats.kernel_s = (t2 - t1) - t_download;
    r->stats.download_s = (t3 - t2) + t_download;
    return 0;
}

extern "C" int iqp_refresh_cuda_probe(char *err, size_t errlen) {
#ifdef IQP_CUDA_EMULATE
    (void)err, (void)errlen;
    return 1;
#else
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "no usable CUDA device: cudaGetDeviceCount returned %s (%d): %s",
                 cudaGetErrorName(e), (int)e, cudaGetErrorString(e));
        return 0;
    }
    if (n == 0) {
        snprintf(err, errlen, "no CUDA device: cudaGetDeviceCount found 0 devices");
        return 0;
    }
    e = cudaFree(0); /* creates the context now, so that compute timings exclude it */
    if (e != cudaSuccess) {
        snprintf(err, errlen, "CUDA device 0 cannot be used: %s (%d): %s", cudaGetErrorName(e), (int)e,
                 cudaGetErrorString(e));
        return 0;
    }
    return 1;
#endif
}

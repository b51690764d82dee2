/* refresh_bench.c -- the stages of `iqp refresh` on a large store, timed
 * one by one (driven by bench/refresh).
 *
 *   refresh_bench fill  --store DIR --cells N [--as-of MS] [--seed S]
 *   refresh_bench run   --store DIR [--as-of MS] [--runs R] [--threads T]
 *
 * fill writes a synthetic store directly through the store API (a merge
 * per cell in large batches, key order, default config): contexts of all five
 * default features over Zipf-like query popularity, every entity with a
 * few hourly cells in the last 24 h and a few daily cells in the last
 * 30 days (all inside the windows as of --as-of), context cells for every
 * hour and day. It is far faster than iqp gen + backfill and gives the
 * same key layout; N counts counter cells (the counts column family).
 *
 * run opens the store read-only, takes one snapshot and measures, R times
 * each (median reported):
 *   iterate   a bare walk of both column families (every key and value,
 *             nothing decoded): the ceiling of the scan stage
 *   scan      iqp_refresh_scan with T threads
 *   cpu-1     iqp_refresh_compute on the CPU, 1 thread
 *   cpu-T     the same with T threads
 *   cuda      iqp_refresh_compute on the GPU, when one answers
 * and prints one line per stage (cells/s = counter cells in windows per
 * second) and the ratios. Not a test: it checks only that the CPU and CUDA
 * results agree in their top-K entry counts.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cells.h"
#include "model/config.h"
#include "model/window.h"
#include "refresher/refresh.h"
#include "store/store.h"
#include "util/clock.h"

#define HOUR_MS 3600000LL
#define DAY_MS 86400000LL
#define DEFAULT_AS_OF 1767226200000LL /* 2026-01-01T00:10Z */
#define MAX_RUNS 15

/* ---- a deterministic PRNG (splitmix64) ---------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rnd_below(uint64_t n) { return n ? rnd() % n : 0; }

/* ---- fill ------------------------------------------------------------------------ */

static const char *const bench_countries[] = {"US", "DE", "FR", "GB", "BR", "IN", "JP", "MX",
                                              "ES", "IT", "CA", "AU", "NL", "SE", "PL", "TR",
                                              "KR", "AR", "ZA", "ZZ"};
#define N_COUNTRIES 20
#define N_ITEMS 500000

/* The writer: one batch, committed every `flush` cells. */
typedef struct filler {
    iqp_store *st;
    iqp_store_batch *b;
    const iqp_config *cfg;
    int64_t as_of;
    uint64_t cells, ctx_cells, in_batch;
    iqp_keybuf key;
} filler;

static void put_cell(filler *fl, iqp_cf cf, const int64_t *vec, size_t n) {
    /* a cell key: the batch packs consecutive cells of one slot (cells.h) */
    iqp_store_batch_merge(fl->b, cf, fl->key.buf, fl->key.len, vec, n);
    if (++fl->in_batch == 200000) {
        char err[512];
        if (iqp_store_batch_commit(fl->st, fl->b, err, sizeof err) < 0) {
            fprintf(stderr, "refresh_bench: %s\n", err);
            exit(1);
        }
        iqp_store_batch_free(fl->b);
        fl->b = iqp_store_batch_new(fl->st);
        fl->in_batch = 0;
    }
}

/* Context cells of the prefix in fl->key: every hour and every day. */
static void fill_context(filler *fl, size_t plen, int64_t scale) {
    int64_t h_last = iqp_bucket_of(fl->as_of, HOUR_MS), d_last = iqp_bucket_of(fl->as_of, DAY_MS);
    for (int g = 0; g < 2; g++) {
        int n = g == 0 ? 24 : 30;
        for (int i = n - 1; i >= 0; i--) {
            int64_t v = 1 + (int64_t)rnd_below((uint64_t)scale * (g == 0 ? 1 : 24));
            iqp_keybuf_truncate(&fl->key, plen);
            iqp_cells_append_bucket(&fl->key, g, (g == 0 ? h_last : d_last) - i);
            put_cell(fl, IQP_CF_CONTEXTS, &v, 1);
            fl->ctx_cells++;
        }
    }
}

/* One entity: 1..6 distinct hours, 1..8 distinct days, ascending. */
static void fill_entity(filler *fl, size_t elen) {
    size_t nc = IQP_COUNTERS(fl->cfg);
    int64_t h_last = iqp_bucket_of(fl->as_of, HOUR_MS), d_last = iqp_bucket_of(fl->as_of, DAY_MS);
    for (int g = 0; g < 2; g++) {
        int span = g == 0 ? 24 : 30, want = 1 + (int)rnd_below(g == 0 ? 6 : 8);
        int start = (int)rnd_below((uint64_t)(span - want + 1));
        for (int i = span - 1 - start; i > span - 1 - start - want; i--) {
            int64_t vec[IQP_MAX_COUNTERS] = {0};
            vec[0] = 1 + (int64_t)rnd_below(20);
            vec[1] = (int64_t)rnd_below((uint64_t)vec[0] / 3 + 1);
            for (size_t k = 2; k < nc; k++) vec[k] = (int64_t)rnd_below((uint64_t)vec[1] + 1);
            iqp_keybuf_truncate(&fl->key, elen);
            iqp_cells_append_bucket(&fl->key, g, (g == 0 ? h_last : d_last) - i);
            put_cell(fl, IQP_CF_COUNTS, vec, nc);
            fl->cells++;
        }
    }
}

/* A context with n entities: consecutive item ids from a random start. */
static void fill_one_context(filler *fl, size_t f, const iqp_context *ctx, uint64_t n) {
    iqp_cells_context_prefix(&fl->key, &fl->cfg->features[f], ctx);
    size_t plen = fl->key.len;
    fill_context(fl, plen, (int64_t)(n / 4 + 2));
    uint64_t first = rnd_below(N_ITEMS);
    for (uint64_t j = 0; j < n; j++) {
        char item[24];
        int len = snprintf(item, sizeof item, "i%" PRIu64, (first + j) % N_ITEMS);
        iqp_keybuf_truncate(&fl->key, plen);
        iqp_cells_append_entity(&fl->key, item, (size_t)len);
        fill_entity(fl, fl->key.len);
    }
}

/* Contexts of a feature: queries x (its countries) x (genders), as many
 * as the feature's dimensions ask for. A query has QUERY_COUNTRIES
 * countries (a sparse query x country matrix, as real traffic has). */
#define N_QUERIES 5000
#define QUERY_COUNTRIES 4

static uint64_t n_contexts_of(unsigned dims) {
    uint64_t n = (dims & IQP_DIM_QUERY) ? N_QUERIES : 1;
    if (dims & IQP_DIM_COUNTRY) n *= (dims & IQP_DIM_QUERY) ? QUERY_COUNTRIES : N_COUNTRIES;
    if (dims & IQP_DIM_GENDER) n *= 3;
    return n;
}

/* Context i (0-based, also its popularity rank - 1) of a feature. */
static void context_of(unsigned dims, uint64_t i, char *query, size_t qcap, iqp_context *ctx) {
    static const char *const genders[3] = {"female", "male", "unknown"};
    uint64_t g = 0, c = 0, q = 0, nc = (dims & IQP_DIM_QUERY) ? QUERY_COUNTRIES : N_COUNTRIES;
    if (dims & IQP_DIM_GENDER) g = i % 3, i /= 3;
    if (dims & IQP_DIM_COUNTRY) c = i % nc, i /= nc;
    q = i;
    memset(ctx, 0, sizeof *ctx);
    int ql = snprintf(query, qcap, "query %" PRIu64, q);
    ctx->v[0].s = query; /* the default segments: query, country, gender */
    ctx->v[0].len = (size_t)ql;
    if (dims & IQP_DIM_QUERY) c = (q + 7 * c) % N_COUNTRIES;
    ctx->v[1].s = bench_countries[c];
    ctx->v[1].len = 2;
    ctx->v[2].s = genders[g];
    ctx->v[2].len = strlen(genders[g]);
}

/* Zipf-like (s = 0.9) share of `budget` entities for popularity rank r. */
static uint64_t entities_for(uint64_t rank, double harmonic, uint64_t budget) {
    double share = 1.0 / pow((double)rank, 0.9) / harmonic;
    uint64_t n = (uint64_t)ceil(share * (double)budget);
    return n > N_ITEMS / 2 ? N_ITEMS / 2 : n;
}

static int cmd_fill(const char *dir, uint64_t cells, int64_t as_of) {
    char err[512];
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    if (!st) { fprintf(stderr, "refresh_bench: %s\n", err); return 1; }
    filler fl = {.st = st, .b = iqp_store_batch_new(st), .cfg = iqp_store_config(st), .as_of = as_of};
    iqp_keybuf_init(&fl.key);
    /* ~8 cells per entity (a little more: some contexts hit the item cap);
     * shares of the entities per feature (config order) */
    uint64_t entities = cells / 8 + cells / 200 + 1;
    const double share[5] = {0.25, 0.35, 0.25, 0.10, 0.05};
    double t0 = iqp_mono_seconds();
    for (size_t f = 0; f < cfg.n_features && f < 5; f++) {
        unsigned dims = cfg.features[f].dims;
        uint64_t n_ctx = n_contexts_of(dims), budget = (uint64_t)(share[f] * (double)entities);
        double harmonic = 0;
        for (uint64_t i = 1; i <= n_ctx; i++) harmonic += 1.0 / pow((double)i, 0.9);
        for (uint64_t i = 0; i < n_ctx; i++) {
            char query[32];
            iqp_context ctx;
            context_of(dims, i, query, sizeof query, &ctx);
            fill_one_context(&fl, f, &ctx, entities_for(i + 1, harmonic, budget));
        }
    }
    iqp_store_batch_set_watermark(fl.b, as_of);
    if (iqp_store_batch_commit(st, fl.b, err, sizeof err) < 0) { fprintf(stderr, "refresh_bench: %s\n", err); return 1; }
    iqp_store_batch_free(fl.b);
    double t1 = iqp_mono_seconds();
    if (iqp_store_compact(st, err, sizeof err) < 0) { fprintf(stderr, "refresh_bench: %s\n", err); return 1; }
    double t2 = iqp_mono_seconds();
    printf("fill: %" PRIu64 " counter cells, %" PRIu64 " context cells in %.1f s (%.0f cells/s), compaction %.1f s\n",
           fl.cells, fl.ctx_cells, t1 - t0, (double)(fl.cells + fl.ctx_cells) / (t1 - t0), t2 - t1);
    iqp_keybuf_free(&fl.key);
    iqp_store_close(st);
    return 0;
}

/* ---- run ------------------------------------------------------------------------- */

static int count_key(void *ud, const unsigned char *key, size_t klen, const char *val, size_t vlen) {
    uint64_t *n = ud;
    *n += 1 + (klen + vlen == 0); /* touch both, decode nothing */
    (void)key, (void)val;
    return 0;
}

static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, dbl_cmp);
    return v[n / 2];
}

static void line(const char *stage, double s, uint64_t cells, const char *note) {
    printf("  %-10s %9.3f s  %12.0f cells/s   %s\n", stage, s, s > 0 ? (double)cells / s : 0, note);
}

/* Median seconds of R computes of r with p (the first one also in *cold
 * when cold is not NULL). */
static double time_compute(iqp_refresh_result *r, iqp_refresh_params *p, int runs, uint64_t *topk,
                           double *cold) {
    double t[MAX_RUNS];
    char err[512];
    for (int i = 0; i < runs; i++) {
        double t0 = iqp_mono_seconds();
        if (iqp_refresh_compute(r, p, err, sizeof err) < 0) {
            fprintf(stderr, "refresh_bench: %s\n", err);
            exit(1);
        }
        t[i] = iqp_mono_seconds() - t0;
        if (i == 0 && cold) *cold = t[0];
    }
    *topk = iqp_refresh_get_stats(r)->topk_entries;
    return median(t, runs);
}

static int cmd_run(const char *dir, int64_t as_of, int runs, int threads) {
    char err[512];
    iqp_store *st = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    if (!st) { fprintf(stderr, "refresh_bench: %s\n", err); return 1; }
    iqp_store_snapshot *snap = iqp_store_snapshot_new(st);
    double t_iter[MAX_RUNS], t_scan[MAX_RUNS];
    uint64_t keys = 0;
    for (int i = 0; i < runs; i++) {
        keys = 0;
        double t0 = iqp_mono_seconds();
        iqp_store_scan_keys(st, snap, IQP_CF_COUNTS, NULL, 0, count_key, &keys, err, sizeof err);
        iqp_store_scan_keys(st, snap, IQP_CF_CONTEXTS, NULL, 0, count_key, &keys, err, sizeof err);
        t_iter[i] = iqp_mono_seconds() - t0;
    }
    iqp_refresh_params p;
    iqp_refresh_params_defaults(&p, as_of);
    p.n_threads = threads;
    iqp_refresh_result *r = NULL;
    for (int i = 0; i < runs; i++) {
        iqp_refresh_free(r);
        r = NULL;
        if (iqp_refresh_scan(st, snap, &p, &r, err, sizeof err) < 0) { fprintf(stderr, "refresh_bench: %s\n", err); return 1; }
        t_scan[i] = iqp_refresh_get_stats(r)->scan_s;
    }
    const iqp_refresh_stats *s = iqp_refresh_get_stats(r);
    uint64_t cells = s->cells, topk_cpu = 0, topk_cuda = 0;
    printf("bench/refresh: %" PRIu64 " keys (%" PRIu64 " counter cells in windows, %" PRIu64
           " context cells), %" PRIu64 " contexts, %" PRIu64 " entities; median of %d runs, %d threads\n",
           keys, cells, s->ctx_cells, s->contexts, s->entities, runs, threads);
    double it = median(t_iter, runs), sc = median(t_scan, runs);
    line("iterate", it, cells, "(ceiling of scan: bare RocksDB walk, nothing decoded)");
    line("scan", sc, cells, "");
    p.n_threads = threads;
    double cold = 0;
    time_compute(r, &p, 1, &topk_cpu, &cold);
    line("cpu-cold", cold, cells, "(first compute: value arrays fresh, page faults included)");
    p.n_threads = 1;
    double c1 = time_compute(r, &p, runs, &topk_cpu, NULL);
    line("cpu-1", c1, cells, "(compute, 1 thread, arrays reused)");
    p.n_threads = threads;
    double ct = time_compute(r, &p, runs, &topk_cpu, NULL);
    char note[160];
    snprintf(note, sizeof note, "(compute, %d threads, arrays reused)", threads);
    line("cpu-T", ct, cells, note);
    printf("  ratio      scan/iterate %.2f   cpu-T/cpu-1 speedup %.2f   compute/scan time %.2f\n", it / sc,
           c1 / ct, ct / sc);
    double bound_s = ct;
    const char *bound = "compute (cpu)";
    if (iqp_refresh_cuda_available(err, sizeof err)) {
        p.backend = IQP_REFRESH_CUDA;
        double cu = time_compute(r, &p, runs, &topk_cuda, NULL);
        const iqp_refresh_stats *cs = iqp_refresh_get_stats(r);
        snprintf(note, sizeof note, "(compute on GPU: upload %.3f s, kernels %.3f s, download %.3f s)", cs->upload_s,
                 cs->kernel_s, cs->download_s);
        line("cuda", cu, cells, note);
        printf("  ratio      cuda/cpu-T speedup %.2f   top-K entries cpu %" PRIu64 " cuda %" PRIu64 "%s\n", ct / cu,
               topk_cpu, topk_cuda, topk_cpu == topk_cuda ? "" : "  MISMATCH");
        if (cu < bound_s) bound_s = cu, bound = "compute (cuda)";
    } else {
        printf("  cuda       not measured: %s\n", err);
    }
    printf("  bound      %s: scan %.3f s vs best compute %.3f s (%s)\n", sc >= bound_s ? "scan" : bound, sc,
           bound_s, bound);
    iqp_refresh_free(r);
    iqp_store_snapshot_free(st, snap);
    iqp_store_close(st);
    return 0;
}

/* ---- main ------------------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr, "usage: refresh_bench fill --store DIR --cells N [--as-of MS] [--seed S]\n"
                    "       refresh_bench run --store DIR [--as-of MS] [--runs R] [--threads T]\n");
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    uint64_t cells = 10000000;
    int64_t as_of = DEFAULT_AS_OF;
    int runs = 3, threads = 2;
    rng_state = 42;
    if (argc < 2) { usage(); return 2; }
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--store")) dir = v;
        else if (!strcmp(k, "--cells")) cells = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--as-of")) as_of = strtoll(v, NULL, 10);
        else if (!strcmp(k, "--seed")) rng_state = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--runs")) runs = atoi(v);
        else if (!strcmp(k, "--threads")) threads = atoi(v);
        else { usage(); return 2; }
    }
    if (!dir || runs < 1 || runs > MAX_RUNS || threads < 1) { usage(); return 2; }
    if (!strcmp(argv[1], "fill")) return cmd_fill(dir, cells, as_of);
    if (!strcmp(argv[1], "run")) return cmd_run(dir, as_of, runs, threads);
    usage();
    return 2;
}

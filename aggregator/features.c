/* features.c -- window sums over stored buckets (see features.h).
 *
 * For each granularity, one range scan per (context) and per (context,
 * item) covers the union of the windows of that granularity (they all end
 * at the bucket holding as_of, so the union is the longest one); each
 * bucket found is added into every window whose range holds it.
 *
 * A reader may pass deltas a writer holds in memory (iqp_features_pending,
 * iqp export's aggregator batch): after each store scan, the pending
 * buckets of that granularity inside the scanned range are added through
 * the same add_bucket, so the sums equal what a read after the writer's
 * next flush would give -- unless the reader's own scan (pending->scan)
 * already covers them.
 */
#include "aggregator/features.h"

#include <string.h>

#include "model/window.h"

/* Scan target: add each bucket into the rows of the windows holding it. */
typedef struct window_sum {
    const iqp_config *cfg;
    int gran_index;
    int64_t first[IQP_MAX_WINDOWS], last[IQP_MAX_WINDOWS];
    iqp_feature_row *rows;  /* n_windows rows of one item */
    int context;            /* summing context_count rather than counters */
} window_sum;

static void add_bucket(void *ud, int64_t bucket, const int64_t *vec, size_t n) {
    window_sum *ws = ud;
    for (size_t w = 0; w < ws->cfg->n_windows; w++) {
        if (ws->cfg->windows[w].gran_index != ws->gran_index) continue;
        if (bucket < ws->first[w] || bucket > ws->last[w]) continue;
        if (ws->context) {
            ws->rows[w].context_count += vec[0];
        } else {
            for (size_t i = 0; i < n; i++) ws->rows[w].counters[i] += vec[i];
        }
    }
}

/* Adds the pending deltas of prefix's buckets of granularity g in [lo, hi]. */
static void add_pending(const iqp_features_pending *pending, iqp_cf cf, const iqp_keybuf *prefix,
                        int g, int64_t lo, int64_t hi, window_sum *ws, size_t n) {
    int64_t first, last, vec[IQP_MAX_COUNTERS];
    if (!pending || !pending->buckets(pending->ud, g, &first, &last)) return;
    if (first < lo) first = lo;
    if (last > hi) last = hi;
    iqp_keybuf key;
    iqp_keybuf_init(&key);
    for (int64_t b = first; b <= last; b++) {
        iqp_keybuf_copy(&key, prefix);
        iqp_cells_append_bucket(&key, g, b);
        memset(vec, 0, sizeof vec);
        if (pending->cell(pending->ud, cf, key.buf, key.len, vec, n)) add_bucket(ws, b, vec, n);
    }
    iqp_keybuf_free(&key);
}

/* Scans prefix in cf for every granularity into ws->rows, plus the
 * pending deltas when there are any. */
static int scan_all_grans(iqp_store *st, const iqp_store_snapshot *snap,
                          const iqp_features_pending *pending, iqp_cf cf,
                          const iqp_keybuf *prefix, window_sum *ws, size_t n, char *err,
                          size_t errlen) {
    for (size_t g = 0; g < ws->cfg->n_grans; g++) {
        int64_t lo = INT64_MAX, hi = INT64_MIN;
        for (size_t w = 0; w < ws->cfg->n_windows; w++) {
            if (ws->cfg->windows[w].gran_index != (int)g) continue;
            if (ws->first[w] < lo) lo = ws->first[w];
            if (ws->last[w] > hi) hi = ws->last[w];
        }
        if (lo > hi) continue;
        ws->gran_index = (int)g;
        int rc = pending && pending->scan
                     ? pending->scan(pending->scan_ud, cf, prefix->buf, prefix->len, (int)g, lo, hi,
                                     n, add_bucket, ws, err, errlen)
                     : iqp_store_scan_buckets_at(st, snap, cf, prefix->buf, prefix->len, (int)g, lo,
                                                 hi, n, add_bucket, ws, err, errlen);
        if (rc < 0) return -1;
        if (!pending || !pending->scan) add_pending(pending, cf, prefix, (int)g, lo, hi, ws, n);
    }
    return 0;
}

static int read_rows(iqp_store *st, const iqp_store_snapshot *snap,
                     const iqp_features_pending *pending, size_t f, const iqp_context *ctx,
                     const char *const *items, const size_t *item_lens, size_t n_items,
                     int64_t as_of_ms, iqp_feature_row *rows, char *err, size_t errlen);

int iqp_features_read(iqp_store *st, size_t f, const iqp_context *ctx, const char *const *items,
                      const size_t *item_lens, size_t n_items, int64_t as_of_ms,
                      iqp_feature_row *rows, char *err, size_t errlen) {
    return iqp_features_read_at(st, NULL, f, ctx, items, item_lens, n_items, as_of_ms, rows, err,
                                errlen);
}

int iqp_features_read_at(iqp_store *st, const iqp_store_snapshot *snap, size_t f,
                         const iqp_context *ctx, const char *const *items,
                         const size_t *item_lens, size_t n_items, int64_t as_of_ms,
                         iqp_feature_row *rows, char *err, size_t errlen) {
    return read_rows(st, snap, NULL, f, ctx, items, item_lens, n_items, as_of_ms, rows, err,
                     errlen);
}

int iqp_features_read_pending(iqp_store *st, const iqp_features_pending *pending, size_t f,
                              const iqp_context *ctx, const char *const *items,
                              const size_t *item_lens, size_t n_items, int64_t as_of_ms,
                              iqp_feature_row *rows, char *err, size_t errlen) {
    return read_rows(st, NULL, pending, f, ctx, items, item_lens, n_items, as_of_ms, rows, err,
                     errlen);
}

/* The one implementation behind every items read (lookup, publisher, export). */
static int read_rows(iqp_store *st, const iqp_store_snapshot *snap,
                     const iqp_features_pending *pending, size_t f, const iqp_context *ctx,
                     const char *const *items, const size_t *item_lens, size_t n_items,
                     int64_t as_of_ms, iqp_feature_row *rows, char *err, size_t errlen) {
    const iqp_config *cfg = iqp_store_config(st);
    size_t nw = cfg->n_windows, width = IQP_COUNTERS(cfg);
    window_sum ws = {.cfg = cfg};
    iqp_feature_row ctx_rows[IQP_MAX_WINDOWS];
    iqp_keybuf prefix, key;
    int rc = -1;

    for (size_t w = 0; w < nw; w++) iqp_window_buckets(&cfg->windows[w], as_of_ms, &ws.first[w], &ws.last[w]);
    memset(ctx_rows, 0, sizeof ctx_rows);
    memset(rows, 0, n_items * nw * sizeof *rows);
    iqp_keybuf_init(&prefix);
    iqp_keybuf_init(&key);
    iqp_cells_context_prefix(&prefix, &cfg->features[f], ctx);

    ws.rows = ctx_rows;
    ws.context = 1;
    if (scan_all_grans(st, snap, pending, IQP_CF_CONTEXTS, &prefix, &ws, 1, err, errlen) < 0) goto out;
    ws.context = 0;
    for (size_t i = 0; i < n_items; i++) {
        iqp_keybuf_copy(&key, &prefix);
        iqp_cells_append_entity(&key, items[i], item_lens[i]);
        ws.rows = rows + i * nw;
        if (scan_all_grans(st, snap, pending, IQP_CF_COUNTS, &key, &ws, width, err, errlen) < 0) goto out;
        for (size_t w = 0; w < nw; w++) ws.rows[w].context_count = ctx_rows[w].context_count;
    }
    rc = 0;
out:
    iqp_keybuf_free(&prefix);
    iqp_keybuf_free(&key);
    return rc;
}

int iqp_features_read_context_at(iqp_store *st, const iqp_store_snapshot *snap, size_t f,
                                 const iqp_context *ctx, int64_t as_of_ms, int64_t *context_count,
                                 char *err, size_t errlen) {
    const iqp_config *cfg = iqp_store_config(st);
    window_sum ws = {.cfg = cfg, .context = 1};
    iqp_feature_row ctx_rows[IQP_MAX_WINDOWS];
    iqp_keybuf prefix;
    for (size_t w = 0; w < cfg->n_windows; w++)
        iqp_window_buckets(&cfg->windows[w], as_of_ms, &ws.first[w], &ws.last[w]);
    memset(ctx_rows, 0, sizeof ctx_rows);
    ws.rows = ctx_rows;
    iqp_keybuf_init(&prefix);
    iqp_cells_context_prefix(&prefix, &cfg->features[f], ctx);
    int rc = scan_all_grans(st, snap, NULL, IQP_CF_CONTEXTS, &prefix, &ws, 1, err, errlen);
    iqp_keybuf_free(&prefix);
    for (size_t w = 0; w < cfg->n_windows; w++) context_count[w] = ctx_rows[w].context_count;
    return rc;
}

double iqp_features_rate(int64_t count, int64_t context_count) {
    return context_count == 0 ? 0.0 : (double)count / (double)context_count;
}

int iqp_features_applicable(const iqp_feature_spec *f, unsigned given) {
    return (f->dims & ~given) == 0;
}

/* features.c -- window sums over stored buckets (see features.h).
 *
 * For each granularity, one range scan per (context) and per (context,
 * item) covers the union of the windows of that granularity (they all end
 * at the bucket holding as_of, so the union is the longest one); each
 * bucket found is added into every window whose range holds it.
 */
#include "aggregator/features.h"

#include <string.h>

#include "aggregator/window.h"

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

/* Scans prefix in cf for every granularity into ws->rows. */
static int scan_all_grans(iqp_store *st, iqp_cf cf, const iqp_keybuf *prefix, window_sum *ws,
                          size_t n, char *err, size_t errlen) {
    for (size_t g = 0; g < ws->cfg->n_grans; g++) {
        int64_t lo = INT64_MAX, hi = INT64_MIN;
        for (size_t w = 0; w < ws->cfg->n_windows; w++) {
            if (ws->cfg->windows[w].gran_index != (int)g) continue;
            if (ws->first[w] < lo) lo = ws->first[w];
            if (ws->last[w] > hi) hi = ws->last[w];
        }
        if (lo > hi) continue;
        ws->gran_index = (int)g;
        if (iqp_store_scan_buckets(st, cf, prefix->buf, prefix->len, (int)g, lo, hi, n, add_bucket,
                                   ws, err, errlen) < 0)
            return -1;
    }
    return 0;
}

int iqp_features_read(iqp_store *st, size_t f, const iqp_context *ctx, const char *const *items,
                      const size_t *item_lens, size_t n_items, int64_t as_of_ms,
                      iqp_feature_row *rows, char *err, size_t errlen) {
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
    if (scan_all_grans(st, IQP_CF_CONTEXTS, &prefix, &ws, 1, err, errlen) < 0) goto out;
    ws.context = 0;
    for (size_t i = 0; i < n_items; i++) {
        iqp_keybuf_copy(&key, &prefix);
        iqp_cells_append_entity(&key, items[i], item_lens[i]);
        ws.rows = rows + i * nw;
        if (scan_all_grans(st, IQP_CF_COUNTS, &key, &ws, width, err, errlen) < 0) goto out;
        for (size_t w = 0; w < nw; w++) ws.rows[w].context_count = ctx_rows[w].context_count;
    }
    rc = 0;
out:
    iqp_keybuf_free(&prefix);
    iqp_keybuf_free(&key);
    return rc;
}

double iqp_features_rate(int64_t count, int64_t context_count) {
    return context_count == 0 ? 0.0 : (double)count / (double)context_count;
}

int iqp_features_applicable(const iqp_feature_spec *f, int has_query, int has_country,
                            int has_gender) {
    if ((f->dims & IQP_DIM_QUERY) && !has_query) return 0;
    if ((f->dims & IQP_DIM_COUNTRY) && !has_country) return 0;
    if ((f->dims & IQP_DIM_GENDER) && !has_gender) return 0;
    return 1;
}

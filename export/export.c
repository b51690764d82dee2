/* export.c -- the point-in-time replay behind `iqp export` (see export.h).
 *
 * Data flow, per accepted event e:
 *
 *   file -> decode thread -> [k-way merge by ts] -> reorder buffer
 *        -> READ (impression, at e.ts - lag): features -> rows
 *        -> APPLY (at e.ts): labels of open rows; aggregator -> store
 *
 * The aggregator flushes to the temporary store as iqp backfill does
 * (flush_events or IQP_AGG_MAX_CELLS). A READ goes through
 * iqp_features_read_pending with featcache.h as its source of buckets: a
 * mirror of store + unflushed batch, kept exact by the aggregator's delta
 * hook, so no read forces a flush or probes the batch per bucket.
 *
 * Redelivered copies: a copy of an event id that is still in the reorder
 * buffer is dropped when it arrives (the first copy read wins, as in
 * backfill); a copy that arrives after the first was counted gives no
 * rows (iqp_aggregator_event_seen) and is a duplicate to the aggregator.
 * So each impression gives rows once.
 */
#include "export/export.h"

#include <errno.h>
#include <ftw.h>
#include <sys/stat.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aggregator/aggregator.h"
#include "aggregator/features.h"
#include "model/normalize.h"
#include "consumers/decode_queue.h"
#include "consumers/logfile.h"
#include "export/featcache.h"
#include "export/keymap.h"
#include "export/reorder.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/stop.h"

/* One log file being read: its decode thread and the batch in hand. */
typedef struct input {
    const char *path;
    iqp_logfile *lf;
    iqp_decode_queue *q;
    iqp_decoded_batch *batch; /* NULL: take the next one */
    size_t next;              /* index of the head line in batch */
    int done;
} input;

/* Per-impression scratch: its distinct items, and the features read. */
typedef struct impression_scratch {
    const char **items;
    size_t *lens;
    int64_t *positions;
    size_t cap;
    iqp_feature_row *by_feature; /* feature f: cap * n_windows rows, as features.c fills them */
    iqp_feature_row *by_item;    /* one item: n_features * n_windows rows, as rows.h wants */
    iqp_keymap *seen;            /* distinct test for very large impressions */
    iqp_keybuf *keys;            /* prefixes to prefetch: n_features contexts, then items */
    size_t keys_cap;
} impression_scratch;

typedef struct exporter {
    const iqp_config *cfg;
    const iqp_export_options *o;
    iqp_export_stats *stats;
    char *store_dir;
    iqp_store *st;
    iqp_aggregator *agg;
    iqp_features_pending pending;
    iqp_featcache *cache;      /* the store's cells the reads need (featcache.h) */
    iqp_reorder *buffer;
    iqp_keymap *buffered_ids;  /* event ids in the reorder buffer */
    iqp_rows *rows;
    char *rows_tmp;            /* the rows until the end: renamed to o->out on success */
    input *inputs;
    impression_scratch imp;
    double started, last_progress;
} exporter;

/* ---- the temporary store ------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *dir) { nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

static int open_store(exporter *x, char *err, size_t errlen) {
    const char *parent = x->o->work_dir ? x->o->work_dir : getenv("TMPDIR");
    if (!parent || !*parent) parent = "/tmp";
    size_t n = strlen(parent) + 32;
    x->store_dir = malloc(n);
    if (!x->store_dir) abort();
    snprintf(x->store_dir, n, "%s/iqp-export-XXXXXX", parent);
    if (!mkdtemp(x->store_dir)) {
        snprintf(err, errlen, "cannot create a temporary store under %s: %s", parent,
                 strerror(errno));
        free(x->store_dir);
        x->store_dir = NULL;
        return -1;
    }
    x->st = iqp_store_open(x->store_dir, x->cfg, IQP_STORE_SCRATCH, err, errlen);
    return x->st ? 0 : -1;
}

/* ---- reading the aggregator's unflushed batch ---------------------------------- */

static int pending_buckets(const void *ud, int g, int64_t *first, int64_t *last) {
    return iqp_aggregator_pending_buckets(ud, g, first, last);
}

static int pending_cell(const void *ud, iqp_cf cf, const unsigned char *key, size_t klen,
                        int64_t *vec, size_t n) {
    return iqp_aggregator_pending_cell(ud, cf, key, klen, vec, n);
}

/* ---- the feature cache (featcache.h) --------------------------------------------- */

static int cache_scan(void *ud, iqp_cf cf, const unsigned char *prefix, size_t plen, int g,
                      int64_t first, int64_t last, size_t n, iqp_store_bucket_fn fn, void *fn_ud,
                      char *err, size_t errlen) {
    return iqp_featcache_scan(ud, cf, prefix, plen, g, first, last, n, fn, fn_ud, err, errlen);
}

/* The aggregator's delta hook: the cache stays equal to store + batch. */
static void cache_on_delta(void *ud, iqp_cf cf, const unsigned char *prefix, size_t plen,
                           const char *item, size_t ilen, int g, int64_t bucket, size_t counter,
                           int64_t delta) {
    iqp_featcache_on_delta(ud, cf, prefix, plen, item, ilen, g, bucket, counter, delta);
}

/* ---- dead letters ---------------------------------------------------------------- */

static int dead_letter(exporter *x, const input *in, const iqp_decoded_line *d, const char *code,
                       const char *reason, const char *raw, size_t raw_len, char *err,
                       size_t errlen) {
    x->stats->bad++;
    return iqp_deadletter_write(x->o->dl, code, reason, in->path, d->line_no, raw, raw_len,
                                d->full_len > raw_len ? d->full_len : raw_len, err, errlen);
}

/* A line the decoder rejected, or a future event. */
static int reject_line(exporter *x, const input *in, const iqp_decoded_line *d, char *err,
                       size_t errlen) {
    char reason[300];
    if (d->ok) {
        x->stats->future++;
        snprintf(reason, sizeof reason, "future_event: ts: %lld is more than %lld ms ahead of the clock",
                 (long long)d->ev.ts, (long long)x->cfg->max_future_skew_ms);
        return dead_letter(x, in, d, "future_event", reason, d->raw, d->raw_len, err, errlen);
    }
    iqp_decode_error_format(&d->err, reason, sizeof reason);
    return dead_letter(x, in, d, iqp_decode_code_name(d->err.code), reason, d->raw, d->raw_len,
                       err, errlen);
}

/* An event older than the reorder buffer still holds. Its bytes were not
 * kept (the decoder keeps only rejected lines), so the record carries the
 * event re-encoded from its JSON, keys in their original order. */
static int reject_out_of_order(exporter *x, const input *in, const iqp_decoded_line *d,
                               char *err, size_t errlen) {
    char reason[300];
    x->stats->out_of_order++;
    snprintf(reason, sizeof reason,
             "out_of_order: ts: %lld is more than %lld ms behind the newest event read before "
             "it (%lld); raise --max-disorder-ms",
             (long long)d->ev.ts, (long long)x->o->max_disorder_ms,
             (long long)iqp_reorder_newest(x->buffer));
    char *raw = json_dumps(d->ev.root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!raw) abort();
    int rc = dead_letter(x, in, d, "out_of_order", reason, raw, strlen(raw), err, errlen);
    free(raw);
    return rc;
}

/* ---- inputs ---------------------------------------------------------------------- */

/* The input's next countable event (dead-lettering what comes before it),
 * or NULL at its end; 0, or -1 with err. */
static int input_head(exporter *x, input *in, iqp_decoded_line **head, char *err, size_t errlen) {
    *head = NULL;
    while (!in->done) {
        if (in->batch && in->next == in->batch->n) {
            iqp_decode_queue_release(in->batch);
            in->batch = NULL;
        }
        if (!in->batch) {
            in->next = 0;
            if (!(in->batch = iqp_decode_queue_next(in->q))) {
                in->done = 1;
                break;
            }
            continue;
        }
        iqp_decoded_line *d = &in->batch->lines[in->next];
        if (d->ok && !d->raw) {
            *head = d;
            return 0;
        }
        x->stats->lines++;
        in->next++;
        if (reject_line(x, in, d, err, errlen) < 0) return -1;
    }
    return 0;
}

static int open_inputs(exporter *x, char *err, size_t errlen) {
    x->inputs = calloc(x->o->n_inputs, sizeof *x->inputs);
    if (!x->inputs) abort();
    for (size_t i = 0; i < x->o->n_inputs; i++) {
        input *in = &x->inputs[i];
        in->path = x->o->inputs[i];
        in->lf = iqp_logfile_open(in->path, x->cfg->limits.max_event_bytes, err, errlen);
        if (!in->lf) return -1;
        in->q = iqp_decode_queue_start(in->lf, x->cfg, 0);
    }
    return 0;
}

/* Stops and closes every input; 0, or -1 with the first read error. */
static int close_inputs(exporter *x, int stop, char *err, size_t errlen) {
    int rc = 0;
    for (size_t i = 0; x->inputs && i < x->o->n_inputs; i++) {
        input *in = &x->inputs[i];
        uint64_t skipped;
        char read_err[512];
        iqp_decode_queue_release(in->batch);
        if (in->q) {
            if (stop) iqp_decode_queue_stop(in->q);
            if (iqp_decode_queue_finish(in->q, &skipped, read_err, sizeof read_err) < 0 && rc == 0) {
                snprintf(err, errlen, "%s", read_err);
                rc = -1;
            }
        }
        if (in->lf) {
            x->stats->bytes_in += iqp_logfile_bytes_in(in->lf);
            x->stats->files++;
            iqp_logfile_close(in->lf);
        }
    }
    free(x->inputs);
    x->inputs = NULL;
    return rc;
}

/* ---- READ: one impression's rows ------------------------------------------------- */

static void scratch_reserve(exporter *x, size_t n) {
    impression_scratch *s = &x->imp;
    size_t nf = x->cfg->n_features, nw = x->cfg->n_windows;
    if (n <= s->cap) return;
    s->cap = n;
    s->items = realloc(s->items, n * sizeof *s->items);
    s->lens = realloc(s->lens, n * sizeof *s->lens);
    s->positions = realloc(s->positions, n * sizeof *s->positions);
    free(s->by_feature);
    s->by_feature = malloc(nf * n * nw * sizeof *s->by_feature);
    if (!s->by_item) s->by_item = malloc(nf * nw * sizeof *s->by_item);
    if (!s->items || !s->lens || !s->positions || !s->by_feature || !s->by_item) abort();
}

/* The impression's distinct items, each at its first position; returns
 * how many. An item listed twice counts once (rule 4), so it is one row. */
static size_t distinct_items(exporter *x, const iqp_event *ev) {
    impression_scratch *s = &x->imp;
    size_t n = 0;
    scratch_reserve(x, ev->n_items ? ev->n_items : 1);
    if (ev->n_items > 64 && !s->seen) s->seen = iqp_keymap_new();
    for (size_t i = 0; i < ev->n_items; i++) {
        const iqp_item_ref *it = &ev->items[i];
        int dup = 0;
        if (ev->n_items > 64) {
            uint64_t v;
            iqp_key128 k = iqp_key128_of(it->id, it->len);
            dup = iqp_keymap_get(s->seen, k, &v);
            if (!dup) iqp_keymap_put(s->seen, k, 1);
        } else {
            for (size_t j = 0; j < n && !dup; j++)
                dup = s->lens[j] == it->len && memcmp(s->items[j], it->id, it->len) == 0;
        }
        if (dup) continue;
        s->items[n] = it->id;
        s->lens[n] = it->len;
        s->positions[n++] = it->pos;
    }
    if (ev->n_items > 64)
        for (size_t i = 0; i < n; i++) iqp_keymap_delete(s->seen, iqp_key128_of(s->items[i], s->lens[i]));
    return n;
}

static int write_rows(exporter *x, const iqp_event *ev, const iqp_context *ctx, size_t n, char *err,
                      size_t errlen) {
    impression_scratch *s = &x->imp;
    size_t nf = x->cfg->n_features, nw = x->cfg->n_windows;
    iqp_row row = {ev->request_id, ev->request_id_len, 0, ev->query, ev->query_len, ctx,
                   NULL, 0, ev->ts, s->by_item};
    iqp_rows_prefetch(x->rows, ev->request_id, ev->request_id_len, s->items, s->lens, n);
    for (size_t i = 0; i < n; i++) {
        for (size_t f = 0; f < nf; f++)
            memcpy(&s->by_item[f * nw], &s->by_feature[(f * s->cap + i) * nw], nw * sizeof *s->by_item);
        row.position = s->positions[i];
        row.item = s->items[i];
        row.item_len = s->lens[i];
        if (iqp_rows_write(x->rows, &row, err, errlen) < 0) return -1;
    }
    return 0;
}

/* Starts loading the cache entries the impression's reads will use (the
 * keys features.c builds: each feature's context prefix, and it with each
 * item) into the CPU caches at once (featcache.h). */
static void prefetch_impression(exporter *x, const iqp_context *ctx, size_t n) {
    impression_scratch *s = &x->imp;
    size_t nf = x->cfg->n_features, need = nf * (1 + n);
    if (need > s->keys_cap) {
        s->keys = realloc(s->keys, need * sizeof *s->keys);
        if (!s->keys) abort();
        for (size_t k = s->keys_cap; k < need; k++) iqp_keybuf_init(&s->keys[k]);
        s->keys_cap = need;
    }
    for (size_t f = 0; f < nf; f++) {
        iqp_cells_context_prefix(&s->keys[f], &x->cfg->features[f], ctx);
        for (size_t i = 0; i < n; i++) {
            iqp_keybuf *k = &s->keys[nf + f * n + i];
            iqp_keybuf_copy(k, &s->keys[f]);
            iqp_cells_append_entity(k, s->items[i], s->lens[i]);
        }
    }
    iqp_featcache_prefetch(x->cache, IQP_CF_CONTEXTS, s->keys, nf);
    iqp_featcache_prefetch(x->cache, IQP_CF_COUNTS, s->keys + nf, nf * n);
}

/* Rows of impression h, features as of as_of (= ts - lag). */
static int read_impression(exporter *x, iqp_held_event *h, int64_t as_of, char *err, size_t errlen) {
    const iqp_event *ev = &h->ev;
    int seen = iqp_aggregator_event_seen(x->agg, ev);
    if (seen < 0) {
        snprintf(err, errlen, "cannot read dedup markers from the temporary store %s", x->store_dir);
        return -1;
    }
    if (seen) {
        x->stats->impressions_seen++;
        return 0;
    }
    size_t n = distinct_items(x, ev), nw = x->cfg->n_windows;
    iqp_context ctx;
    iqp_event_context(x->cfg, ev, &ctx);
    iqp_featcache_advance(x->cache, as_of);
    prefetch_impression(x, &ctx, n);
    for (size_t f = 0; f < x->cfg->n_features && n > 0; f++)
        if (iqp_features_read_pending(x->st, &x->pending, f, &ctx, x->imp.items, x->imp.lens, n,
                                      as_of, &x->imp.by_feature[f * x->imp.cap * nw], err,
                                      errlen) < 0)
            return -1;
    if (write_rows(x, ev, &ctx, n, err, errlen) < 0) return -1;
    h->row_state = 1;
    x->stats->impressions_read++;
    return 0;
}

/* ---- APPLY: labels, then counting ------------------------------------------------ */

/* A held event the aggregator calls future although the decoder did not
 * (the wall clock stepped back in between). Its bytes are gone, so the
 * dead-letter record carries its event id. */
static int future_after_reading(exporter *x, const iqp_event *ev, char *err, size_t errlen) {
    char reason[300];
    x->stats->bad++;
    x->stats->future++;
    snprintf(reason, sizeof reason,
             "future_event: ts: %lld is more than %lld ms ahead of the clock (event id only: the "
             "wall clock stepped back after the line was read)",
             (long long)ev->ts, (long long)x->cfg->max_future_skew_ms);
    return iqp_deadletter_write(x->o->dl, "future_event", reason, "(reorder buffer)", 0,
                                ev->event_id, ev->event_id_len, ev->event_id_len, err, errlen);
}

static int apply_event(exporter *x, iqp_held_event *h, int64_t time, char *err, size_t errlen) {
    const iqp_event *ev = &h->ev;
    iqp_rows_expire(x->rows, time);
    if (ev->kind == IQP_EVENT_ACTION &&
        iqp_rows_label(x->rows, ev->request_id, ev->request_id_len, ev->item.id, ev->item.len,
                       ev->action, ev->ts, err, errlen) < 0)
        return -1;
    iqp_keymap_delete(x->buffered_ids, iqp_key128_of(ev->event_id, ev->event_id_len));
    if (x->o->until_ms != INT64_MAX && ev->ts >= x->o->until_ms - x->o->lag_ms) {
        x->stats->skipped_after_until++; /* every READ is behind it */
        return 0;
    }
    iqp_featcache_event_begin(x->cache);
    iqp_agg_outcome out = iqp_aggregator_add(x->agg, ev, iqp_wall_ms(), err, errlen);
    switch (out) {
    case IQP_AGG_COUNTED:
        x->stats->counted++;
        if (ev->kind == IQP_EVENT_IMPRESSION) x->stats->counted_impressions++;
        else x->stats->counted_actions++;
        break;
    case IQP_AGG_DUPLICATE: x->stats->duplicate++; break;
    case IQP_AGG_LATE: x->stats->late++; break;
    case IQP_AGG_FUTURE: /* screened at reading; only a wall clock stepped back gets here */
        if (future_after_reading(x, ev, err, errlen) < 0) return -1;
        break;
    case IQP_AGG_ERROR: default: return -1;
    }
    if (h->row_state && out != IQP_AGG_COUNTED) x->stats->not_counted++;
    if (iqp_aggregator_should_flush(x->agg)) return iqp_aggregator_flush(x->agg, err, errlen);
    return 0;
}

/* Processes every entry the reorder buffer releases (all when drain). */
static int release(exporter *x, int drain, char *err, size_t errlen) {
    iqp_reorder_kind kind;
    int64_t time;
    iqp_held_event *h;
    while (iqp_reorder_pop(x->buffer, drain, &kind, &time, &h)) {
        if (kind == IQP_REORDER_READ) {
            if (read_impression(x, h, time, err, errlen) < 0) return -1;
            continue;
        }
        int rc = apply_event(x, h, time, err, errlen);
        iqp_held_event_free(h);
        if (rc < 0) return -1;
    }
    return 0;
}

/* ---- the merge loop -------------------------------------------------------------- */

static void report_progress(exporter *x, int final) {
    double t = iqp_mono_seconds();
    if (!x->o->progress || (!final && t - x->last_progress < 0.5)) return;
    x->last_progress = t;
    double secs = t - x->started;
    const iqp_rows_stats *r = iqp_rows_get_stats(x->rows);
    fprintf(stderr, "\rexport: %llu lines, %llu rows, %.0f rows/s, %llu bad, %zu events buffered%s",
            (unsigned long long)x->stats->lines, (unsigned long long)r->rows,
            secs > 0 ? r->rows / secs : 0.0, (unsigned long long)x->stats->bad,
            iqp_reorder_held(x->buffer), final ? "\n" : "   ");
    fflush(stderr);
}

/* Takes one accepted or rejected event off in's head. */
static int take(exporter *x, input *in, iqp_decoded_line *d, char *err, size_t errlen) {
    const iqp_event *ev = &d->ev;
    x->stats->lines++;
    in->next++;
    if (iqp_reorder_too_late(x->buffer, ev->ts)) return reject_out_of_order(x, in, d, err, errlen);
    iqp_key128 id = iqp_key128_of(ev->event_id, ev->event_id_len);
    uint64_t v;
    if (iqp_keymap_swap(x->buffered_ids, id, 1, &v)) {
        x->stats->copies++; /* backfill's dedup would call it a duplicate */
        x->stats->duplicate++;
        return 0;
    }
    int read = ev->kind == IQP_EVENT_IMPRESSION && ev->ts >= x->o->from_ms && ev->ts < x->o->until_ms;
    iqp_reorder_push(x->buffer, ev, read);
    return 0;
}

/* True once nothing read later can matter: every later event is past
 * until + horizon (labels) and so past until - lag (features). */
static int past_until(const exporter *x) {
    if (x->o->until_ms == INT64_MAX || iqp_reorder_newest(x->buffer) == INT64_MIN) return 0;
    return iqp_reorder_newest(x->buffer) - x->o->max_disorder_ms >=
           x->o->until_ms + x->o->label_horizon_ms;
}

/* Merges the inputs by ts into the buffer; 0 at the end, 1 when stopped. */
static int merge_inputs(exporter *x, char *err, size_t errlen) {
    for (;;) {
        if (iqp_stop_requested()) return 1;
        if (past_until(x)) {
            x->stats->stopped_early = 1;
            return 0;
        }
        input *best = NULL;
        iqp_decoded_line *best_line = NULL;
        for (size_t i = 0; i < x->o->n_inputs; i++) {
            iqp_decoded_line *d;
            if (input_head(x, &x->inputs[i], &d, err, errlen) < 0) return -1;
            if (d && (!best_line || d->ev.ts < best_line->ev.ts)) best = &x->inputs[i], best_line = d;
        }
        if (!best) return 0;
        if (take(x, best, best_line, err, errlen) < 0) return -1;
        if (release(x, 0, err, errlen) < 0) return -1;
        size_t held = iqp_reorder_held(x->buffer);
        if (held > x->stats->buffer_peak) x->stats->buffer_peak = held;
        report_progress(x, 0);
    }
}

/* ---- setup and teardown ----------------------------------------------------------- */

static int create_rows_tmp(exporter *x, char *err, size_t errlen);

static int setup(exporter *x, char *err, size_t errlen) {
    if (open_store(x, err, errlen) < 0) return -1;
    x->agg = iqp_aggregator_new(x->st);
    iqp_features_pending batch = {pending_buckets, pending_cell, x->agg, NULL, NULL};
    x->cache = iqp_featcache_new(x->st, x->o->cache_bytes, &batch, 1 /* a new store */);
    x->pending = (iqp_features_pending){.scan = cache_scan, .scan_ud = x->cache};
    iqp_aggregator_set_delta_hook(x->agg, &(iqp_agg_delta_hook){cache_on_delta, x->cache});
    x->buffer = iqp_reorder_new(x->o->max_disorder_ms, x->o->lag_ms);
    x->buffered_ids = iqp_keymap_new();
    if (create_rows_tmp(x, err, errlen) < 0) return -1;
    x->rows = iqp_rows_open(x->rows_tmp, x->cfg, x->o->format, x->o->rates,
                            x->o->label_horizon_ms, err, errlen);
    if (!x->rows) return -1;
    return open_inputs(x, err, errlen);
}

/* ---- the output file ---------------------------------------------------------------
 *
 * Rows go to a temporary file next to --out ("OUT.partial-XXXXXX", same
 * directory, so same file system) that replaces --out by rename(2) only
 * when the run ends without a failure (done, or stopped by a signal: the
 * rows written are whole). A failed run removes it, so it never leaves a
 * half or empty --out behind, and an --out that existed before is left as
 * it was. */

static int create_rows_tmp(exporter *x, char *err, size_t errlen) {
    if (asprintf(&x->rows_tmp, "%s.partial-XXXXXX", x->o->out) < 0) abort();
    int fd = mkstemp(x->rows_tmp);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", x->o->out, strerror(errno));
        free(x->rows_tmp);
        x->rows_tmp = NULL;
        return -1;
    }
    mode_t mask = umask(0); /* the mode a plain creat(2) of --out would give */
    umask(mask);
    if (fchmod(fd, 0666 & ~mask) < 0) {
        snprintf(err, errlen, "cannot create %s: %s", x->o->out, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* After the rows are closed: --out gets them (rc >= 0), or they go. */
static int finish_rows_tmp(exporter *x, int rc, char *err, size_t errlen) {
    if (!x->rows_tmp) return rc;
    if (rc >= 0 && rename(x->rows_tmp, x->o->out) < 0) {
        snprintf(err, errlen, "cannot write %s: rename from %s: %s", x->o->out, x->rows_tmp,
                 strerror(errno));
        rc = -1;
    }
    if (rc < 0) unlink(x->rows_tmp);
    free(x->rows_tmp);
    x->rows_tmp = NULL;
    return rc;
}

static int teardown(exporter *x, int rc, char *err, size_t errlen) {
    char e2[512];
    if (close_inputs(x, rc != 0, e2, sizeof e2) < 0 && rc == 0) {
        snprintf(err, errlen, "%s", e2);
        rc = -1;
    }
    if (x->rows) {
        x->stats->rows = *iqp_rows_get_stats(x->rows);
        if (iqp_rows_close(x->rows, e2, sizeof e2) < 0 && rc == 0) {
            snprintf(err, errlen, "%s", e2);
            rc = -1;
        }
    }
    rc = finish_rows_tmp(x, rc, err, errlen);
    if (x->buffer) x->stats->unprocessed = iqp_reorder_held(x->buffer);
    iqp_reorder_free(x->buffer);
    iqp_keymap_free(x->buffered_ids);
    iqp_aggregator_free(x->agg);
    iqp_featcache_free(x->cache);
    if (x->st) iqp_store_close(x->st);
    if (x->store_dir) remove_tree(x->store_dir);
    free(x->store_dir);
    impression_scratch *s = &x->imp;
    free(s->items), free(s->lens), free(s->positions), free(s->by_feature), free(s->by_item);
    iqp_keymap_free(s->seen);
    for (size_t k = 0; k < s->keys_cap; k++) iqp_keybuf_free(&s->keys[k]);
    free(s->keys);
    return rc;
}

int iqp_export_run(const iqp_config *cfg, const iqp_export_options *o, iqp_export_stats *stats,
                   char *err, size_t errlen) {
    exporter x = {.cfg = cfg, .o = o, .stats = stats};
    memset(stats, 0, sizeof *stats);
    x.started = x.last_progress = iqp_mono_seconds();
    int rc = setup(&x, err, errlen);
    if (rc == 0) rc = merge_inputs(&x, err, errlen);
    if (rc == 0) rc = release(&x, 1, err, errlen);
    if (rc >= 0 && x.rows) report_progress(&x, 1);
    return teardown(&x, rc, err, errlen);
}

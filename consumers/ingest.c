/* ingest.c -- the backfill loop (see ingest.h).
 *
 * Position record, meta key "src/file/<identity>", value JSON:
 *   {"path": "<name when last seen>", "lines": N, "done": true|false}
 * "lines" counts every line of the file that is fully handled (counted,
 * duplicate, late, or dead-lettered). It is staged before every flush and
 * once more, with done=true, for the final flush of the file.
 *
 * Threads: the decode queue parses lines on one thread, this loop decides
 * every event on the caller's (future, late, duplicate: the order-dependent
 * rules, and the dead letters, in file order), the deltas are counted here
 * or, with iqp_ingest_set_threads(n >= 2), on n counting threads sharded by
 * context key, and full micro-batches are written by the aggregator's
 * writer thread (iqp_aggregator_flush_begin) while counting goes on; near
 * a file's end, one more cut makes the last two batches share what is left
 * (consumers/batch_plan.h: the writer's last batch runs alone). A
 * decoded batch is freed once its events are counted
 * (iqp_aggregator_after_counted). The final flush of a file, a stop and a
 * read error flush synchronously, so what this function returns is
 * committed.
 */
#include "consumers/ingest.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aggregator/aggregator.h"
#include "consumers/batch_plan.h"
#include "consumers/decode_queue.h"
#include "consumers/logfile.h"
#include "schemas/event.h"
#include "util/clock.h"
#include "util/stop.h"

struct iqp_ingest {
    iqp_store *st;
    const iqp_config *cfg;
    iqp_aggregator *agg;
    iqp_deadletter *dl;
    int progress;
    double started, last_progress;
    iqp_ingest_stats stats;
};

iqp_ingest *iqp_ingest_new(iqp_store *st, iqp_deadletter *dl, int progress) {
    iqp_ingest *ing = calloc(1, sizeof *ing);
    if (!ing) abort();
    ing->st = st;
    ing->cfg = iqp_store_config(st);
    ing->agg = iqp_aggregator_new(st);
    /* a store this run created holds only the markers this ingest writes */
    iqp_aggregator_set_sole_marker_writer(ing->agg);
    ing->dl = dl;
    ing->progress = progress;
    ing->started = ing->last_progress = iqp_mono_seconds();
    return ing;
}

void iqp_ingest_free(iqp_ingest *ing) {
    if (!ing) return;
    iqp_aggregator_free(ing->agg);
    free(ing);
}

void iqp_ingest_set_threads(iqp_ingest *ing, unsigned n) { iqp_aggregator_set_threads(ing->agg, n); }

const iqp_ingest_stats *iqp_ingest_get_stats(const iqp_ingest *ing) { return &ing->stats; }

const struct iqp_agg_stats *iqp_ingest_agg_stats(const iqp_ingest *ing) {
    return iqp_aggregator_stats(ing->agg);
}

/* ---- positions ----------------------------------------------------------- */

typedef struct file_position {
    char meta_key[96];  /* "" for stdin: no position kept */
    uint64_t lines;
    int done;
} file_position;

static int load_position(iqp_ingest *ing, const char *path, file_position *pos, char *err,
                         size_t errlen) {
    char ident[64], *val = NULL;
    size_t vlen = 0;
    memset(pos, 0, sizeof *pos);
    if (strcmp(path, "-") == 0) return 0;
    if (iqp_logfile_identity(path, ident, sizeof ident, err, errlen) < 0) return -1;
    snprintf(pos->meta_key, sizeof pos->meta_key, "src/file/%s", ident);
    int rc = iqp_store_get_meta(ing->st, pos->meta_key, &val, &vlen);
    if (rc < 0) {
        snprintf(err, errlen, "cannot read the position of %s from the store", path);
        return -1;
    }
    if (rc == 1) {
        json_t *j = json_loadb(val, vlen, 0, NULL);
        pos->lines = (uint64_t)json_integer_value(json_object_get(j, "lines"));
        pos->done = json_is_true(json_object_get(j, "done"));
        json_decref(j);
    }
    free(val);
    return 0;
}

static void stage_position(iqp_ingest *ing, const file_position *pos, const char *path,
                           uint64_t lines, int done) {
    if (!pos->meta_key[0]) return;
    json_t *j = json_pack("{s:I, s:b}", "lines", (json_int_t)lines, "done", done);
    json_t *name = json_string(path); /* informational; NULL when not UTF-8 */
    if (name) json_object_set_new(j, "path", name);
    char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) abort(); /* only out of memory */
    iqp_aggregator_stage_meta(ing->agg, pos->meta_key, text, strlen(text));
    free(text);
    json_decref(j);
}

/* ---- progress ------------------------------------------------------------ */

static void report_progress(iqp_ingest *ing, const char *path, uint64_t file_bytes, int final) {
    double t = iqp_mono_seconds();
    if (!ing->progress || (!final && t - ing->last_progress < 0.5)) return;
    ing->last_progress = t;
    double secs = t - ing->started;
    fprintf(stderr, "\r%s: %llu lines, %.0f lines/s, %.1f MB, %llu bad%s", path,
            (unsigned long long)ing->stats.lines, secs > 0 ? ing->stats.lines / secs : 0.0,
            (ing->stats.bytes_in + file_bytes) / 1e6, (unsigned long long)ing->stats.bad, final ? "\n" : "   ");
    fflush(stderr);
}

/* ---- one line ------------------------------------------------------------ */

static int dead_letter(iqp_ingest *ing, const char *code, const char *reason, const char *path,
                       const iqp_decoded_line *d, size_t len, char *err, size_t errlen) {
    ing->stats.bad++;
    return iqp_deadletter_write(ing->dl, code, reason, path, d->line_no, d->raw, len, d->full_len,
                                err, errlen);
}

/* Counts one decoded line (or dead-letters it); -1 only on an operational
 * failure. */
static int ingest_line(iqp_ingest *ing, const char *path, iqp_decoded_line *d, char *err,
                       size_t errlen) {
    char reason[300];
    ing->stats.lines++;
    if (!d->ok) {
        iqp_decode_error_format(&d->err, reason, sizeof reason);
        return dead_letter(ing, iqp_decode_code_name(d->err.code), reason, path, d, d->raw_len,
                           err, errlen);
    }
    iqp_agg_outcome out = iqp_aggregator_add(ing->agg, &d->ev, iqp_wall_ms(), err, errlen);
    switch (out) {
    case IQP_AGG_COUNTED: ing->stats.counted++; return 0;
    case IQP_AGG_DUPLICATE: ing->stats.duplicate++; return 0;
    case IQP_AGG_LATE: ing->stats.late++; return 0;
    case IQP_AGG_FUTURE: {
        snprintf(reason, sizeof reason, "future_event: ts: %lld is more than %lld ms ahead of the clock",
                 (long long)d->ev.ts, (long long)ing->cfg->max_future_skew_ms);
        ing->stats.future++;
        return dead_letter(ing, "future_event", reason, path, d, d->raw_len, err, errlen);
    }
    case IQP_AGG_ERROR: default: return -1;
    }
}

/* ---- one file ------------------------------------------------------------ */

static int flush_at(iqp_ingest *ing, const file_position *pos, const char *path, uint64_t lines,
                    int done, char *err, size_t errlen) {
    stage_position(ing, pos, path, lines, done);
    return iqp_aggregator_flush(ing->agg, err, errlen);
}

/* Cuts the batch after line (staged as the file's position) and hands it
 * to the writer thread while counting goes on. */
static int cut_at(iqp_ingest *ing, const file_position *pos, const char *path, uint64_t line, char *err,
                  size_t errlen) {
    stage_position(ing, pos, path, line, 0);
    return iqp_aggregator_flush_begin(ing->agg, err, errlen);
}

static void release_batch(void *b) { iqp_decode_queue_release(b); }

/* Consumes the decoded batches of one file; returns -1 on a failure, 1
 * when a stop was requested (after committing up to *last_line). */
static int count_batches(iqp_ingest *ing, iqp_decode_queue *q, iqp_batch_plan *plan,
                         const file_position *pos, const char *path, uint64_t *handled,
                         char *err, size_t errlen) {
    iqp_decoded_batch *b;
    int rc = 0;
    uint64_t last_line = pos->lines;
    while (rc == 0 && (b = iqp_decode_queue_next(q))) {
        for (size_t i = 0; i < b->n && rc == 0; i++) {
            rc = ingest_line(ing, path, &b->lines[i], err, errlen);
            if (rc == 0 && iqp_aggregator_should_flush(ing->agg)) {
                rc = cut_at(ing, pos, path, b->lines[i].line_no, err, errlen);
                iqp_batch_plan_cut(plan, b->bytes_in);
            }
        }
        if (rc == 0 && b->n > 0) last_line = *handled = b->lines[b->n - 1].line_no;
        if (rc == 0 && b->n > 0 && iqp_batch_plan_split_now(plan, b->bytes_in))
            rc = cut_at(ing, pos, path, last_line, err, errlen); /* the file's last batches share the rest */
        uint64_t bytes_in = b->bytes_in; /* the reader thread owns lf */
        iqp_aggregator_after_counted(ing->agg, release_batch, b);
        report_progress(ing, path, bytes_in, 0);
        if (rc == 0 && iqp_stop_requested()) {
            rc = flush_at(ing, pos, path, last_line, 0, err, errlen);
            return rc < 0 ? -1 : 1;
        }
    }
    return rc;
}

int iqp_ingest_file(iqp_ingest *ing, const char *path, char *err, size_t errlen) {
    file_position pos;
    if (load_position(ing, path, &pos, err, errlen) < 0) return -1;
    if (pos.done) {
        ing->stats.files_skipped++;
        fprintf(stderr, "iqp backfill: skipping %s: already ingested into this store\n", path);
        return 0;
    }
    iqp_logfile *lf = iqp_logfile_open(path, ing->cfg->limits.max_event_bytes, err, errlen);
    if (!lf) return -1;
    iqp_batch_plan plan;
    /* before the reader thread owns lf; a compressed file's positions are
     * too coarse to plan with (batch_plan.h) */
    iqp_batch_plan_init(&plan, iqp_logfile_format(lf) == IQP_LOG_PLAIN ? iqp_logfile_size(lf) : 0);
    iqp_decode_queue *q = iqp_decode_queue_start_yielding(lf, ing->cfg, pos.lines);
    uint64_t handled = pos.lines;
    int rc = count_batches(ing, q, &plan, &pos, path, &handled, err, errlen);
    uint64_t resumed = 0;
    char read_err[512];
    if (iqp_decode_queue_finish(q, &resumed, read_err, sizeof read_err) < 0 && rc == 0) {
        /* Commit the lines read before the error, so that they count and a
         * re-run of a repaired file resumes after them; then fail. */
        char flush_err[512];
        if (flush_at(ing, &pos, path, handled, 0, flush_err, sizeof flush_err) < 0)
            snprintf(err, errlen, "%s (and the lines before it could not be committed: %s)",
                     read_err, flush_err);
        else
            snprintf(err, errlen, "%s (the %llu lines before it are committed)", read_err,
                     (unsigned long long)handled);
        rc = -1;
    }
    ing->stats.lines_resumed += resumed;
    if (rc == 0) rc = flush_at(ing, &pos, path, iqp_logfile_line_no(lf), 1, err, errlen);
    ing->stats.bytes_in += iqp_logfile_bytes_in(lf);
    iqp_logfile_close(lf);
    if (rc < 0) return -1;
    if (rc == 1) {
        fprintf(stderr, "\niqp backfill: stopped in %s; what was counted is committed, "
                        "run the same command again to resume\n", path);
        return 1;
    }
    ing->stats.files_done++;
    report_progress(ing, path, 0, 1);
    return 0;
}

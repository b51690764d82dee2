/* rows.h -- the export's output: training rows, and labels set after the fact.
 *
 * Owns: the output file, its two formats (JSONL and CSV, same columns in
 * the same order), the column names, and the labels of rows whose label
 * horizon is still open.
 *
 * Columns (README "Training data: iqp export"): request_id, position,
 * query, every segment other than query text in segment order (by default
 * country, gender), item, ts; then for every feature, window and
 * measure, in config order, "<feature>.<window>.<measure>" with measures
 * context_count, impression, engaged, one per action and (unless rates
 * are off) iqp_impression, iqp_engaged, iqp_<action>; then label_engaged
 * and label_<action>, each 0 or 1.
 *
 * Labels come from actions that arrive after the row is written (up to
 * label_horizon_ms of event time later), so a row is written at once
 * with every label 0 and a label is set by overwriting its one digit in
 * place: the file is written through a buffer whose file offset is known,
 * and a digit is patched in the buffer or, once flushed, with pwrite(2).
 * Full buffers are written by a writer thread of their own while rows go
 * on into a second buffer (rows.c "The file").
 * The output must therefore be a regular file. Open rows are kept as
 * small records (key, ts, file offset: ~48 bytes) in a ring in row order,
 * indexed by a keymap from (request_id, item) to the newest record, each
 * record linking to the previous one of the same key; records leave the
 * ring once event time passes ts + horizon (iqp_rows_expire). Memory is
 * the rows of one label horizon, not of the file.
 *
 * May not touch: counting, features (it formats the values it is given).
 */
#ifndef IQP_EXPORT_ROWS_H
#define IQP_EXPORT_ROWS_H

#include <stddef.h>
#include <stdint.h>
#include "model/config.h"
#include "aggregator/features.h"

typedef enum { IQP_ROWS_JSONL = 0, IQP_ROWS_CSV = 1 } iqp_rows_format;

/* One row: an impression and one distinct item it showed. */
typedef struct iqp_row {
    const char *request_id;
    size_t request_id_len;
    int64_t position;
    const char *query;        /* normalized */
    size_t query_len;
    const iqp_context *ctx;   /* the event's segment values */
    const char *item;
    size_t item_len;
    int64_t ts;
    const iqp_feature_row *features; /* [f * n_windows + w], as of ts - lag */
} iqp_row;

typedef struct iqp_rows_stats {
    uint64_t rows;
    uint64_t labels_set;      /* label digits turned to 1 */
    uint64_t rows_engaged;    /* rows whose label_engaged became 1 */
    size_t open_peak;         /* most rows with an open label horizon at once */
    uint64_t bytes;
} iqp_rows_stats;

typedef struct iqp_rows iqp_rows;

/* Creates (truncates) path and writes the CSV header when fmt is CSV.
 * NULL with err naming the file when it cannot be created or is not a
 * regular file. */
iqp_rows *iqp_rows_open(const char *path, const iqp_config *cfg, iqp_rows_format fmt, int rates,
                        int64_t label_horizon_ms, char *err, size_t errlen);

/* Appends a row with every label 0 and opens its label horizon. 0, or -1
 * with err on a write failure. */
int iqp_rows_write(iqp_rows *w, const iqp_row *row, char *err, size_t errlen);

/* An action (index into cfg->actions) at ts on item in request: sets
 * label_<action> and label_engaged of every open row of (request_id,
 * item) with row ts <= ts < row ts + horizon. 0, or -1 with err. */
int iqp_rows_label(iqp_rows *w, const char *request_id, size_t rlen, const char *item,
                   size_t ilen, int action, int64_t ts, char *err, size_t errlen);

/* The n rows of one impression (request_id; items[i] of item_lens[i]
 * bytes) are about to be written, in this order: makes their keys and
 * starts loading their open-rows index slots into the CPU caches (with
 * every row open for a label horizon, each is a cache miss). The bytes
 * must stay where they are until those rows are written; a row written
 * out of this order gets its key made on the spot. */
void iqp_rows_prefetch(iqp_rows *w, const char *request_id, size_t rlen, const char *const *items,
                       const size_t *item_lens, size_t n);

/* Event time has reached t: rows with ts + horizon <= t are final. */
void iqp_rows_expire(iqp_rows *w, int64_t t);

/* Rows with an open horizon now. */
size_t iqp_rows_open_count(const iqp_rows *w);

const iqp_rows_stats *iqp_rows_get_stats(const iqp_rows *w);

/* Writes what is buffered and closes; frees w. 0, or -1 with err. */
int iqp_rows_close(iqp_rows *w, char *err, size_t errlen);

#endif

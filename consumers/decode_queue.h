/* decode_queue.h -- decode events on a second thread.
 *
 * Owns: a decode thread and its bounded queues. Two sources:
 *   log mode  (backfill): the thread pulls lines from an open log file,
 *             decodes them into events (schemas/event.h), and hands them
 *             to the consuming thread in batches;
 *   fed mode  (stream): the consuming thread puts raw messages in (bytes
 *             it keeps alive plus a tag, e.g. the Kafka message), the
 *             thread decodes each batch, and next() hands the batches back
 *             in the order they were put.
 * Parsing JSON costs about as much as counting, so on two cores the two
 * halves run side by side.
 *
 * May not touch: counting, the store, dead letters: a rejected line comes
 * through as a batch entry with its error and a copy of its bytes, and the
 * consumer decides what to do with it, in file order.
 */
#ifndef IQP_DECODE_QUEUE_H
#define IQP_DECODE_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include "consumers/logfile.h"
#include "schemas/event.h"

typedef struct iqp_decoded_line {
    uint64_t line_no;        /* log mode: the line's number; fed mode: 0 */
    void *tag;               /* fed mode: the tag given to put */
    const char *in;          /* fed mode: the bytes given to put (not owned) */
    size_t in_len;
    int ok;                  /* 1: ev holds the event; 0: rejected (err, raw) */
    iqp_event ev;
    iqp_decode_error err;
    char *raw;               /* log mode: the line (or its 4 KiB prefix) when
                                rejected, or when ok but ts is already beyond the
                                future skew; fed mode: NULL (in holds the bytes) */
    size_t raw_len;
    uint64_t full_len;       /* the line's real length */
} iqp_decoded_line;

typedef struct iqp_decoded_batch {
    uint64_t bytes_in;       /* iqp_logfile_bytes_in when the batch was full */
    size_t n, cap;           /* lines used, lines held */
    iqp_event_slab slab;     /* the events' first arena blocks (schemas/event.h) */
    iqp_decoded_line lines[];
} iqp_decoded_batch;

typedef struct iqp_decode_queue iqp_decode_queue;

/* Batches out at most (handed to the thread and not yet returned by next). */
#define IQP_DECODE_QUEUE_DEPTH 8

/* Starts the reader on lf (owned by the caller, not closed here); lines
 * numbered <= skip_lines are read but not decoded (a resumed file). */
iqp_decode_queue *iqp_decode_queue_start(iqp_logfile *lf, const iqp_config *cfg,
                                         uint64_t skip_lines);

/* The same, with the decode thread at a lower priority (nice +5 over the
 * process): for a reader that runs ahead of a pipeline it must not crowd
 * out on a busy machine (backfill: decode_queue.c, LOG_QUEUE_DEPTH). */
iqp_decode_queue *iqp_decode_queue_start_yielding(iqp_logfile *lf, const iqp_config *cfg,
                                                  uint64_t skip_lines);

/* Log mode: the next batch in file order, or NULL at the end of input (or
 * after a read error or stop: iqp_decode_queue_finish tells). Fed mode:
 * the oldest batch handed over, decoded (waiting for the thread if need
 * be), or NULL when none is out; a partly filled batch is not sent by
 * this (send it first). */
iqp_decoded_batch *iqp_decode_queue_next(iqp_decode_queue *q);

/* ---- fed mode (the caller's thread is the only one that calls these) ---- */

/* Starts a decode thread fed by put; no file. */
iqp_decode_queue *iqp_decode_queue_start_fed(const iqp_config *cfg);

/* Appends one raw input (bytes stay valid until the batch holding it is
 * released) to the batch being filled; a full batch is handed to the
 * thread first. -1, nothing added, when IQP_DECODE_QUEUE_DEPTH batches are
 * already out (handed over and not yet returned by next): take one with
 * next and count it, then put again. */
int iqp_decode_queue_put(iqp_decode_queue *q, const char *bytes, size_t len, void *tag);

/* Hands the partly filled batch to the thread now (latency: the caller
 * has nothing more to put at the moment). -1 when no room, as put. */
int iqp_decode_queue_send(iqp_decode_queue *q);

/* Inputs put and not yet returned by next (filling batch included). */
size_t iqp_decode_queue_pending(const iqp_decode_queue *q);

/* Fed mode: like next, but NULL at once when the oldest batch is not
 * decoded yet. */
iqp_decoded_batch *iqp_decode_queue_try_next(iqp_decode_queue *q);

/* Frees a batch returned by next. */
void iqp_decode_queue_release(iqp_decoded_batch *b);

/* Stops the reader early (the consumer failed); next then returns NULL. */
void iqp_decode_queue_stop(iqp_decode_queue *q);

/* Joins the thread and frees the queue and every batch still in it (fed
 * mode: take them with send and next first when their tags own
 * something). Returns 0, or -1 with the read error in err. *skipped gets
 * the number of lines skipped for resume. */
int iqp_decode_queue_finish(iqp_decode_queue *q, uint64_t *skipped, char *err, size_t errlen);

#endif

/* decode_queue.h -- read and decode log lines on a second thread.
 *
 * Owns: a reader thread that pulls lines from an open log file, decodes
 * them into events (schemas/event.h), and hands them to the consuming
 * thread in batches through a small bounded queue. Parsing JSON costs about
 * as much as counting, so on two cores the two halves run side by side.
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
    uint64_t line_no;
    int ok;                  /* 1: ev holds the event; 0: rejected (err, raw) */
    iqp_event ev;
    iqp_decode_error err;
    char *raw;               /* the line (or its 4 KiB prefix) when rejected, or
                                when ok but ts is already beyond the future skew */
    size_t raw_len;
    uint64_t full_len;       /* the line's real length */
} iqp_decoded_line;

typedef struct iqp_decoded_batch {
    uint64_t bytes_in;       /* iqp_logfile_bytes_in when the batch was full */
    size_t n;
    iqp_decoded_line lines[];
} iqp_decoded_batch;

typedef struct iqp_decode_queue iqp_decode_queue;

/* Starts the reader on lf (owned by the caller, not closed here); lines
 * numbered <= skip_lines are read but not decoded (a resumed file). */
iqp_decode_queue *iqp_decode_queue_start(iqp_logfile *lf, const iqp_config *cfg,
                                         uint64_t skip_lines);

/* The next batch in file order, or NULL at the end of input (or after a
 * read error or stop: iqp_decode_queue_finish tells). */
iqp_decoded_batch *iqp_decode_queue_next(iqp_decode_queue *q);

/* Frees a batch returned by next. */
void iqp_decode_queue_release(iqp_decoded_batch *b);

/* Stops the reader early (the consumer failed); next then returns NULL. */
void iqp_decode_queue_stop(iqp_decode_queue *q);

/* Joins the reader and frees the queue. Returns 0, or -1 with the read
 * error in err. *skipped gets the number of lines skipped for resume. */
int iqp_decode_queue_finish(iqp_decode_queue *q, uint64_t *skipped, char *err, size_t errlen);

#endif

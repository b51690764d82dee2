/* decode_queue.c -- the reader thread and its bounded batch queue.
 *
 * The queue is a ring of QUEUE_DEPTH batch pointers guarded by one mutex
 * and two condition variables (not empty, not full). Batches hold
 * BATCH_LINES lines, so synchronization costs a few hundred nanoseconds per
 * thousand events. The reader sets `done` (and `failed` with a message on a
 * read error) and wakes the consumer; the consumer may set `stop`.
 */
#include "consumers/decode_queue.h"
#include "util/clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH_LINES 1024
#define QUEUE_DEPTH 8

struct iqp_decode_queue {
    iqp_logfile *lf;
    const iqp_config *cfg;
    uint64_t skip_lines, skipped;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    iqp_decoded_batch *ring[QUEUE_DEPTH];
    size_t head, count;
    int done, stop, failed;
    char err[512];
};

static iqp_decoded_batch *batch_new(void) {
    iqp_decoded_batch *b = malloc(sizeof *b + BATCH_LINES * sizeof(iqp_decoded_line));
    if (!b) abort();
    b->n = 0;
    return b;
}

void iqp_decode_queue_release(iqp_decoded_batch *b) {
    if (!b) return;
    for (size_t i = 0; i < b->n; i++) {
        if (b->lines[i].ok) iqp_event_clear(&b->lines[i].ev);
        free(b->lines[i].raw);
    }
    free(b);
}

/* Blocks while the ring is full; returns 0 when the consumer stopped. */
static int push(iqp_decode_queue *q, iqp_decoded_batch *b) {
    b->bytes_in = iqp_logfile_bytes_in(q->lf); /* the consumer's progress, read here */
    pthread_mutex_lock(&q->mu);
    while (q->count == QUEUE_DEPTH && !q->stop) pthread_cond_wait(&q->not_full, &q->mu);
    int accepted = !q->stop;
    if (accepted) {
        q->ring[(q->head + q->count) % QUEUE_DEPTH] = b;
        q->count++;
        pthread_cond_signal(&q->not_empty);
    }
    pthread_mutex_unlock(&q->mu);
    if (!accepted) iqp_decode_queue_release(b);
    return accepted;
}

/* Fills one entry from a raw line. */
static void decode_line(iqp_decode_queue *q, iqp_decoded_line *d, uint64_t line_no,
                        const char *line, size_t len, int oversized, uint64_t full_len) {
    memset(d, 0, sizeof *d);
    d->line_no = line_no;
    d->full_len = oversized ? full_len : len;
    if (oversized) {
        d->err.code = IQP_DECODE_TOO_LARGE;
        snprintf(d->err.detail, sizeof d->err.detail, "event is %llu bytes, limit %zu",
                 (unsigned long long)full_len, q->cfg->limits.max_event_bytes);
    } else if (iqp_event_decode(q->cfg, line, len, &d->ev, &d->err) == 0) {
        d->ok = 1;
        /* Keep the bytes of an event the aggregator will call future (its
         * clock only advances), so the dead letter holds the original. */
        if (d->ev.ts - iqp_wall_ms() <= q->cfg->max_future_skew_ms) return;
    }
    d->raw_len = len > 4096 ? 4096 : len; /* the dead-letter sink keeps 4 KiB at most */
    d->raw = malloc(d->raw_len ? d->raw_len : 1);
    if (!d->raw) abort();
    memcpy(d->raw, line, d->raw_len);
}

static void *reader_main(void *arg) {
    iqp_decode_queue *q = arg;
    iqp_decoded_batch *b = batch_new();
    const char *line;
    size_t len;
    int oversized, rc;
    uint64_t full_len;
    char err[512];
    pthread_setname_np(pthread_self(), "iqp-decode");
    while ((rc = iqp_logfile_next(q->lf, &line, &len, &oversized, &full_len, err, sizeof err)) == 1) {
        uint64_t line_no = iqp_logfile_line_no(q->lf);
        if (line_no <= q->skip_lines) { q->skipped++; continue; }
        decode_line(q, &b->lines[b->n++], line_no, line, len, oversized, full_len);
        if (b->n == BATCH_LINES) {
            if (!push(q, b)) { b = NULL; break; }
            b = batch_new();
        }
    }
    if (b && b->n > 0) push(q, b);
    else iqp_decode_queue_release(b);
    pthread_mutex_lock(&q->mu);
    if (rc < 0) {
        q->failed = 1;
        snprintf(q->err, sizeof q->err, "%s", err);
    }
    q->done = 1;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

iqp_decode_queue *iqp_decode_queue_start(iqp_logfile *lf, const iqp_config *cfg,
                                         uint64_t skip_lines) {
    iqp_decode_queue *q = calloc(1, sizeof *q);
    if (!q) abort();
    q->lf = lf;
    q->cfg = cfg;
    q->skip_lines = skip_lines;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
    if (pthread_create(&q->thread, NULL, reader_main, q) != 0) abort();
    return q;
}

iqp_decoded_batch *iqp_decode_queue_next(iqp_decode_queue *q) {
    iqp_decoded_batch *b = NULL;
    pthread_mutex_lock(&q->mu);
    while (q->count == 0 && !q->done && !q->stop) pthread_cond_wait(&q->not_empty, &q->mu);
    if (q->count > 0 && !q->stop) {
        b = q->ring[q->head];
        q->head = (q->head + 1) % QUEUE_DEPTH;
        q->count--;
        pthread_cond_signal(&q->not_full);
    }
    pthread_mutex_unlock(&q->mu);
    return b;
}

void iqp_decode_queue_stop(iqp_decode_queue *q) {
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_broadcast(&q->not_full);
    pthread_cond_broadcast(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
}

int iqp_decode_queue_finish(iqp_decode_queue *q, uint64_t *skipped, char *err, size_t errlen) {
    iqp_decode_queue_stop(q);
    pthread_join(q->thread, NULL);
    while (q->count > 0) {
        iqp_decode_queue_release(q->ring[q->head]);
        q->head = (q->head + 1) % QUEUE_DEPTH;
        q->count--;
    }
    int failed = q->failed;
    if (failed) snprintf(err, errlen, "%s", q->err);
    if (skipped) *skipped = q->skipped;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
    free(q);
    return failed ? -1 : 0;
}

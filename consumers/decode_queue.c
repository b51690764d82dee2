/* decode_queue.c -- the decode thread and its bounded batch queues.
 *
 * The output queue is a ring of batch pointers (LOG_QUEUE_DEPTH in log
 * mode, IQP_DECODE_QUEUE_DEPTH in fed mode) guarded by one mutex and two
 * condition variables (not empty, not full).
 * Batches hold BATCH_LINES lines (FED_BATCH_LINES in fed mode), so
 * synchronization costs a few hundred nanoseconds per thousand events. The
 * reader sets `done` (and `failed` with a message on a read error) and
 * wakes the consumer; the consumer may set `stop`.
 *
 * Fed mode adds an input ring of the same depth (and a condition variable,
 * input): the consumer fills a batch with raw inputs and hands it over;
 * the thread decodes its lines in place and pushes the same batch to the
 * output ring, so batches come back in the order they went in. The
 * consumer keeps at most DEPTH batches out (`out`, counted on its side
 * only), so neither ring can fill up and neither side ever blocks on a
 * full ring: the consumer blocks only in next, waiting for a batch it
 * handed over.
 */
#include "consumers/decode_queue.h"
#include "util/clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BATCH_LINES 1024
#define FED_BATCH_LINES 256      /* a stream hands partly filled ones over when idle */
#define QUEUE_DEPTH IQP_DECODE_QUEUE_DEPTH
/* Log mode reads ahead deeper: backfill's counting and writer threads take
 * turns being the slowest (a batch drains in bursts), and with 8 batches
 * ahead the decode thread blocked on a full ring while a core sat idle
 * (measured: 1.87-2.35 s against 1.75-1.90 s for a 297k-line backfill on
 * 2 cores). 32 batches of 1024 events hold ~100 MB (an event's arena is
 * sized from its line: schemas/event.c). */
#define LOG_QUEUE_DEPTH 32
/* ... and backfill's decode thread (iqp_decode_queue_start_yielding) runs
 * at a lower priority, nice +DECODE_NICE over the process's: it has that
 * slack, while the counting thread and the writer are the chain a
 * backfill waits for. With three busy threads on two cores the scheduler
 * shared them evenly: the decoder ran its 32 batches ahead (~100 MB of slabs faulted in) while a full batch waited
 * for the writer, and the counting thread then waited in its flush, the
 * decoder on its full ring, a core idle. At a lower priority the two go
 * first and the decoder takes the rest; it never starves, as a consumer
 * waiting on an empty ring leaves it a core, and an idle core runs it at
 * full speed (README "Benchmark": measured on a 297k-line 30-day log).
 * Best effort: a refusal changes only scheduling. */
#define DECODE_NICE 5

struct iqp_decode_queue {
    iqp_logfile *lf;             /* log mode; NULL in fed mode */
    const iqp_config *cfg;
    uint64_t skip_lines, skipped;
    int yielding;                /* log mode: decode at a lower priority (start_yielding) */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    iqp_decoded_batch *ring[LOG_QUEUE_DEPTH];
    size_t depth;                /* of ring: LOG_QUEUE_DEPTH, or QUEUE_DEPTH in fed mode */
    size_t head, count;
    int done, stop, failed;
    char err[512];
    /* fed mode */
    pthread_cond_t input;
    iqp_decoded_batch *in_ring[QUEUE_DEPTH];
    size_t in_head, in_count;
    iqp_decoded_batch *filling;  /* the consumer's, not handed over yet */
    size_t out;                  /* consumer side: handed over, not returned by next */
    size_t out_inputs;           /* ... and the inputs in them */
};

/* ---- batch memory ----------------------------------------------------------
 * A batch holds its lines and a slab that its events' first arena blocks
 * are carved from (schemas/event.h), so decoding a usual line allocates
 * nothing and releasing a batch frees nothing per event: before, each
 * event's block was a malloc on this thread and a free on the counting
 * one, whose cross-thread frees were ~10% of it. Released batches go to a
 * small process-wide pool that batch_new takes from, so their pages stay
 * faulted in; process-wide, because a batch may be released after its
 * queue is gone (a counting thread's last work item). The pool keeps at
 * most as many batches of each size as a queue can hold out at once, so
 * it never holds more than the peak in use. */
#define SLAB_PER_LINE 3072   /* a 10-item impression's tree is ~2.7 KB (event.c) */
#define POOL_KINDS 2         /* BATCH_LINES, FED_BATCH_LINES */

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static iqp_decoded_batch *pool[POOL_KINDS][LOG_QUEUE_DEPTH + 4];
static size_t pool_n[POOL_KINDS];

static int pool_kind(size_t lines) { return lines == BATCH_LINES ? 0 : 1; }
static size_t pool_max(int kind) { return kind == 0 ? LOG_QUEUE_DEPTH + 4 : QUEUE_DEPTH + 4; }

static iqp_decoded_batch *batch_new(size_t lines) {
    int k = pool_kind(lines);
    iqp_decoded_batch *b = NULL;
    pthread_mutex_lock(&pool_mu);
    if (pool_n[k] > 0) b = pool[k][--pool_n[k]];
    pthread_mutex_unlock(&pool_mu);
    if (!b) {
        b = malloc(sizeof *b + lines * sizeof(iqp_decoded_line));
        if (!b) abort();
        b->cap = lines;
        b->slab.cap = lines * SLAB_PER_LINE;
        b->slab.base = malloc(b->slab.cap);
        if (!b->slab.base) abort();
    }
    b->n = 0;
    b->bytes_in = 0;
    b->slab.used = 0;
    return b;
}

void iqp_decode_queue_release(iqp_decoded_batch *b) {
    if (!b) return;
    for (size_t i = 0; i < b->n; i++) {
        if (b->lines[i].ok) iqp_event_clear(&b->lines[i].ev);
        free(b->lines[i].raw);
    }
    int k = pool_kind(b->cap);
    pthread_mutex_lock(&pool_mu);
    if (pool_n[k] < pool_max(k)) pool[k][pool_n[k]++] = b, b = NULL;
    pthread_mutex_unlock(&pool_mu);
    if (b) {
        free(b->slab.base);
        free(b);
    }
}

/* Blocks while the ring is full; returns 0 when the consumer stopped. */
static int push(iqp_decode_queue *q, iqp_decoded_batch *b) {
    if (q->lf) b->bytes_in = iqp_logfile_bytes_in(q->lf); /* the consumer's progress, read here */
    pthread_mutex_lock(&q->mu);
    while (q->count == q->depth && !q->stop) pthread_cond_wait(&q->not_full, &q->mu);
    int accepted = !q->stop;
    if (accepted) {
        q->ring[(q->head + q->count) % q->depth] = b;
        q->count++;
        pthread_cond_signal(&q->not_empty);
    }
    pthread_mutex_unlock(&q->mu);
    if (!accepted) iqp_decode_queue_release(b);
    return accepted;
}

/* Fills one entry from a raw line; now_ms is the wall clock read when its
 * batch began (older than the aggregator's, which only advances, so an
 * event it will call future is always kept whole). */
static void decode_line(iqp_decode_queue *q, iqp_decoded_line *d, uint64_t line_no,
                        const char *line, size_t len, int oversized, uint64_t full_len, int64_t now_ms) {
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
        if (d->ev.ts - now_ms <= q->cfg->max_future_skew_ms) return;
    }
    d->raw_len = len > 4096 ? 4096 : len; /* the dead-letter sink keeps 4 KiB at most */
    d->raw = malloc(d->raw_len ? d->raw_len : 1);
    if (!d->raw) abort();
    memcpy(d->raw, line, d->raw_len);
}

static void lower_decode_priority(void) {
    id_t self = (id_t)gettid();
    errno = 0;
    int nice_now = getpriority(PRIO_PROCESS, self);
    if (nice_now == -1 && errno) return;
    (void)setpriority(PRIO_PROCESS, self, nice_now + DECODE_NICE > 19 ? 19 : nice_now + DECODE_NICE);
}

static void *reader_main(void *arg) {
    iqp_decode_queue *q = arg;
    iqp_decoded_batch *b = batch_new(BATCH_LINES);
    const char *line;
    size_t len;
    int oversized, rc;
    uint64_t full_len;
    int64_t now_ms = 0;
    char err[512];
    pthread_setname_np(pthread_self(), "iqp-decode");
    if (q->yielding) lower_decode_priority();
    while ((rc = iqp_logfile_next(q->lf, &line, &len, &oversized, &full_len, err, sizeof err)) == 1) {
        uint64_t line_no = iqp_logfile_line_no(q->lf);
        if (line_no <= q->skip_lines) { q->skipped++; continue; }
        if (b->n == 0) {
            now_ms = iqp_wall_ms(); /* once a batch: per line, it was ~2% of decoding */
            iqp_event_use_slab(&b->slab);
        }
        decode_line(q, &b->lines[b->n++], line_no, line, len, oversized, full_len, now_ms);
        if (b->n == BATCH_LINES) {
            if (!push(q, b)) { b = NULL; break; }
            b = batch_new(BATCH_LINES);
        }
    }
    iqp_event_use_slab(NULL);
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

/* Fed mode: decodes one raw input in place (no copy of its bytes: the
 * consumer holds them, in; iqp_event_decode checks the size limit). */
static void decode_input(iqp_decode_queue *q, iqp_decoded_line *d) {
    d->ok = iqp_event_decode(q->cfg, d->in ? d->in : "", d->in_len, &d->ev, &d->err) == 0;
}

static void *fed_main(void *arg) {
    iqp_decode_queue *q = arg;
    pthread_setname_np(pthread_self(), "iqp-decode");
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (q->in_count == 0 && !q->stop) pthread_cond_wait(&q->input, &q->mu);
        iqp_decoded_batch *b = NULL;
        if (q->in_count > 0 && !q->stop) {
            b = q->in_ring[q->in_head];
            q->in_head = (q->in_head + 1) % QUEUE_DEPTH;
            q->in_count--;
        }
        pthread_mutex_unlock(&q->mu);
        if (!b) return NULL; /* stopped: finish frees what is left */
        iqp_event_use_slab(&b->slab);
        for (size_t i = 0; i < b->n; i++) decode_input(q, &b->lines[i]);
        iqp_event_use_slab(NULL);
        if (!push(q, b)) return NULL;
    }
}

static iqp_decode_queue *queue_new(iqp_logfile *lf, const iqp_config *cfg, uint64_t skip_lines,
                                   int yielding) {
    iqp_decode_queue *q = calloc(1, sizeof *q);
    if (!q) abort();
    q->lf = lf;
    q->yielding = yielding;
    q->cfg = cfg;
    q->skip_lines = skip_lines;
    q->depth = lf ? LOG_QUEUE_DEPTH : QUEUE_DEPTH;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
    pthread_cond_init(&q->input, NULL);
    if (pthread_create(&q->thread, NULL, lf ? reader_main : fed_main, q) != 0) abort();
    return q;
}

iqp_decode_queue *iqp_decode_queue_start(iqp_logfile *lf, const iqp_config *cfg,
                                         uint64_t skip_lines) {
    return queue_new(lf, cfg, skip_lines, 0);
}

iqp_decode_queue *iqp_decode_queue_start_yielding(iqp_logfile *lf, const iqp_config *cfg,
                                                  uint64_t skip_lines) {
    return queue_new(lf, cfg, skip_lines, 1);
}

iqp_decode_queue *iqp_decode_queue_start_fed(const iqp_config *cfg) {
    return queue_new(NULL, cfg, 0, 0);
}

int iqp_decode_queue_send(iqp_decode_queue *q) {
    iqp_decoded_batch *b = q->filling;
    if (!b) return 0;
    if (q->out == QUEUE_DEPTH) return -1;
    q->filling = NULL;
    q->out++;
    q->out_inputs += b->n;
    pthread_mutex_lock(&q->mu);
    q->in_ring[(q->in_head + q->in_count) % QUEUE_DEPTH] = b;
    q->in_count++;
    pthread_cond_signal(&q->input);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

int iqp_decode_queue_put(iqp_decode_queue *q, const char *bytes, size_t len, void *tag) {
    if (q->filling && q->filling->n == FED_BATCH_LINES && iqp_decode_queue_send(q) < 0) return -1;
    if (!q->filling) q->filling = batch_new(FED_BATCH_LINES);
    iqp_decoded_line *d = &q->filling->lines[q->filling->n++];
    memset(d, 0, sizeof *d);
    d->tag = tag;
    d->in = bytes;
    d->in_len = len;
    d->full_len = len;
    return 0;
}

size_t iqp_decode_queue_pending(const iqp_decode_queue *q) {
    return q->out_inputs + (q->filling ? q->filling->n : 0);
}

/* The oldest batch of the output ring; wait: until there is one (or the
 * end, in log mode). */
static iqp_decoded_batch *take(iqp_decode_queue *q, int wait) {
    iqp_decoded_batch *b = NULL;
    if (!q->lf && q->out == 0) return NULL; /* fed: nothing handed over */
    pthread_mutex_lock(&q->mu);
    while (wait && q->count == 0 && !q->done && !q->stop) pthread_cond_wait(&q->not_empty, &q->mu);
    if (q->count > 0 && !q->stop) {
        b = q->ring[q->head];
        q->head = (q->head + 1) % q->depth;
        q->count--;
        pthread_cond_signal(&q->not_full);
    }
    pthread_mutex_unlock(&q->mu);
    if (b && !q->lf) q->out--, q->out_inputs -= b->n;
    return b;
}

iqp_decoded_batch *iqp_decode_queue_next(iqp_decode_queue *q) { return take(q, 1); }

iqp_decoded_batch *iqp_decode_queue_try_next(iqp_decode_queue *q) { return take(q, 0); }

void iqp_decode_queue_stop(iqp_decode_queue *q) {
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_broadcast(&q->not_full);
    pthread_cond_broadcast(&q->not_empty);
    pthread_cond_broadcast(&q->input);
    pthread_mutex_unlock(&q->mu);
}

int iqp_decode_queue_finish(iqp_decode_queue *q, uint64_t *skipped, char *err, size_t errlen) {
    iqp_decode_queue_stop(q);
    pthread_join(q->thread, NULL);
    while (q->count > 0) {
        iqp_decode_queue_release(q->ring[q->head]);
        q->head = (q->head + 1) % q->depth;
        q->count--;
    }
    while (q->in_count > 0) {
        iqp_decode_queue_release(q->in_ring[q->in_head]);
        q->in_head = (q->in_head + 1) % QUEUE_DEPTH;
        q->in_count--;
    }
    iqp_decode_queue_release(q->filling);
    int failed = q->failed;
    if (failed) snprintf(err, errlen, "%s", q->err);
    if (skipped) *skipped = q->skipped;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
    pthread_cond_destroy(&q->input);
    free(q);
    return failed ? -1 : 0;
}

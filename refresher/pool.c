/* pool.c -- parallel for over chunks (see pool.h).
 *
 * A shared atomic cursor hands out chunk starts; each worker loops taking
 * the next chunk until the range is exhausted. The calling thread only
 * waits: on a condition variable the last worker signals, waking every
 * 100 ms to report progress when there is a callback (so a progress
 * callback never runs on a worker), else simply joining.
 * When a thread cannot be created, the workers that exist take its share
 * (the cursor is shared); with none at all the caller does the work.
 */
#include "refresher/pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#define MAX_WORKERS 256

typedef struct pool_state {
    iqp_pool_fn fn;
    void *ud;
    size_t n, chunk;
    _Atomic size_t cursor;
    pthread_mutex_t lock;       /* guards finished */
    pthread_cond_t done;        /* signalled as each worker finishes */
    int finished;
} pool_state;

typedef struct worker_arg {
    pool_state *ps;
    int index;
} worker_arg;

static void drain(pool_state *ps, int worker) {
    for (;;) {
        size_t begin = atomic_fetch_add(&ps->cursor, ps->chunk);
        if (begin >= ps->n) break;
        size_t end = begin + ps->chunk < ps->n ? begin + ps->chunk : ps->n;
        ps->fn(ps->ud, begin, end, worker);
    }
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    drain(wa->ps, wa->index);
    pthread_mutex_lock(&wa->ps->lock);
    wa->ps->finished++;
    pthread_cond_signal(&wa->ps->done);
    pthread_mutex_unlock(&wa->ps->lock);
    return NULL;
}

static void report(const iqp_pool_progress *p) {
    if (p && p->fn) p->fn(p->ud, p->stage, p->done ? atomic_load(p->done) : 0, p->total);
}

/* Waits for n_started workers, reporting progress every 100 ms. */
static void wait_workers(pool_state *ps, int n_started, const iqp_pool_progress *progress) {
    pthread_mutex_lock(&ps->lock);
    while (ps->finished < n_started) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 100 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
        if (pthread_cond_timedwait(&ps->done, &ps->lock, &until) != 0 && ps->finished < n_started) {
            pthread_mutex_unlock(&ps->lock);
            report(progress);
            pthread_mutex_lock(&ps->lock);
        }
    }
    pthread_mutex_unlock(&ps->lock);
}

void iqp_pool_run(int n_threads, size_t n, size_t chunk, iqp_pool_fn fn, void *ud,
                  const iqp_pool_progress *progress) {
    pool_state ps = {.fn = fn, .ud = ud, .n = n, .chunk = chunk ? chunk : 1};
    atomic_init(&ps.cursor, 0);
    if (n_threads < 1) n_threads = 1;
    if (n_threads > MAX_WORKERS) n_threads = MAX_WORKERS;
    int has_progress = progress && progress->fn;
    if (n == 0) return;
    if (n_threads == 1 && !has_progress) {
        drain(&ps, 0);
        return;
    }
    pthread_mutex_init(&ps.lock, NULL);
    pthread_cond_init(&ps.done, NULL);
    pthread_t tids[MAX_WORKERS];
    worker_arg args[MAX_WORKERS];
    int started = 0;
    for (int i = 0; i < n_threads; i++) {
        args[started].ps = &ps;
        args[started].index = started;
        if (pthread_create(&tids[started], NULL, worker_main, &args[started]) == 0) started++;
    }
    if (started == 0) drain(&ps, 0);
    else if (has_progress) wait_workers(&ps, started, progress);
    for (int i = 0; i < started; i++) pthread_join(tids[i], NULL);
    pthread_cond_destroy(&ps.done);
    pthread_mutex_destroy(&ps.lock);
    report(progress);
}

/* check_decode_queue.c -- tests for consumers/decode_queue.c: fed mode
 * (the stream's decode thread), and log mode's lower priority.
 *
 * The expectations are computed here, independently of the queue: every
 * input is also decoded directly with iqp_event_decode on this thread,
 * and each decoded line that comes back must carry its own tag, in the
 * order the inputs were put, exactly once, with the same outcome (event id
 * or error code) as the direct decode.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "consumers/decode_queue.h"
#include "schemas/event.h"

#define N_INPUTS 5000

/* Input i: an impression with event id "e<i>", or (every 7th) not JSON,
 * or (every 11th) JSON without the required fields. */
static char *make_input(size_t i) {
    char *s = malloc(400);
    ck_assert_ptr_nonnull(s);
    if (i % 7 == 3) snprintf(s, 400, "{not json %zu", i);
    else if (i % 11 == 5) snprintf(s, 400, "{\"schema\":\"impression.v1\",\"event_id\":\"e%zu\"}", i);
    else
        snprintf(s, 400, "{\"schema\":\"impression.v1\",\"event_id\":\"e%zu\",\"ts\":1767225600000,"
                         "\"request_id\":\"r%zu\",\"query\":\"Red  Dress %zu\",\"user\":{\"country\":\"us\","
                         "\"gender\":\"f\"},\"items\":[\"i1\",\"i%zu\"]}", i, i, i % 13, i);
    return s;
}

typedef struct {
    iqp_config cfg;
    char *inputs[N_INPUTS];
    size_t next_expected;   /* tag of the next line that must come back */
} fixture;

static void fixture_init(fixture *f) {
    iqp_config_defaults(&f->cfg);
    for (size_t i = 0; i < N_INPUTS; i++) f->inputs[i] = make_input(i);
    f->next_expected = 0;
}

static void fixture_free(fixture *f) {
    for (size_t i = 0; i < N_INPUTS; i++) free(f->inputs[i]);
}

/* Checks one returned batch against the direct decode, in order. */
static void check_batch(fixture *f, iqp_decoded_batch *b) {
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_gt(b->n, 0);
    for (size_t k = 0; k < b->n; k++) {
        const iqp_decoded_line *d = &b->lines[k];
        size_t i = (size_t)(uintptr_t)d->tag;
        ck_assert_uint_eq(i, f->next_expected);
        f->next_expected++;
        ck_assert_ptr_eq(d->in, f->inputs[i]);
        ck_assert_uint_eq(d->in_len, strlen(f->inputs[i]));
        iqp_event ev;
        iqp_decode_error err;
        int ok = iqp_event_decode(&f->cfg, f->inputs[i], strlen(f->inputs[i]), &ev, &err) == 0;
        ck_assert_int_eq(d->ok, ok);
        if (ok) {
            ck_assert_uint_eq(d->ev.event_id_len, ev.event_id_len);
            ck_assert(memcmp(d->ev.event_id, ev.event_id, ev.event_id_len) == 0);
            ck_assert_str_eq(d->ev.query, ev.query);
            ck_assert_uint_eq(d->ev.n_items, ev.n_items);
            iqp_event_clear(&ev);
        } else {
            ck_assert_int_eq(d->err.code, err.code);
            ck_assert_str_eq(d->err.field, err.field);
        }
    }
    iqp_decode_queue_release(b);
}

/* Puts every input, taking a batch back only when put refuses (the queue
 * is full) and, every 300 inputs, sending the partly filled batch and, in
 * the second half, taking whatever is decoded already (as the stream does
 * when it has caught up). Every line must come back once, in order. In
 * the first half nothing is taken back unasked, so the bound is reached
 * whatever the decode thread's speed (taking decoded batches back all
 * along, it was reached only when decoding lagged: a timing, and a fast
 * enough decoder never hit it). */
START_TEST(fed_returns_every_input_in_order) {
    fixture f;
    fixture_init(&f);
    iqp_decode_queue *q = iqp_decode_queue_start_fed(&f.cfg);
    size_t refused = 0;
    iqp_decoded_batch *b;
    for (size_t i = 0; i < N_INPUTS; i++) {
        while (iqp_decode_queue_put(q, f.inputs[i], strlen(f.inputs[i]), (void *)(uintptr_t)i) < 0) {
            refused++;
            check_batch(&f, iqp_decode_queue_next(q));
        }
        ck_assert_uint_eq(iqp_decode_queue_pending(q), i + 1 - f.next_expected);
        if (i % 300 == 299) {
            while (iqp_decode_queue_send(q) < 0) check_batch(&f, iqp_decode_queue_next(q));
            if (i >= N_INPUTS / 2)
                while ((b = iqp_decode_queue_try_next(q))) check_batch(&f, b);
        }
    }
    while (iqp_decode_queue_send(q) < 0) check_batch(&f, iqp_decode_queue_next(q));
    while ((b = iqp_decode_queue_next(q))) check_batch(&f, b);
    ck_assert_uint_eq(f.next_expected, N_INPUTS);
    ck_assert_uint_eq(iqp_decode_queue_pending(q), 0);
    ck_assert_ptr_null(iqp_decode_queue_try_next(q));
    ck_assert_uint_gt(refused, 0); /* the bound was reached at least once */
    ck_assert_int_eq(iqp_decode_queue_finish(q, NULL, NULL, 0), 0);
    fixture_free(&f);
}
END_TEST

/* Without taking anything back, put refuses once IQP_DECODE_QUEUE_DEPTH
 * batches are out: what it holds is bounded. Then everything put so far
 * comes back in order. */
START_TEST(fed_is_bounded) {
    fixture f;
    fixture_init(&f);
    iqp_decode_queue *q = iqp_decode_queue_start_fed(&f.cfg);
    size_t accepted = 0;
    while (accepted < N_INPUTS &&
           iqp_decode_queue_put(q, f.inputs[accepted], strlen(f.inputs[accepted]),
                                (void *)(uintptr_t)accepted) == 0)
        accepted++;
    ck_assert_uint_lt(accepted, N_INPUTS);
    ck_assert_uint_ge(accepted, IQP_DECODE_QUEUE_DEPTH);
    ck_assert_uint_eq(iqp_decode_queue_pending(q), accepted);
    ck_assert_int_eq(iqp_decode_queue_send(q), -1); /* the full batch has no room either */
    iqp_decoded_batch *b;
    while ((b = iqp_decode_queue_next(q))) check_batch(&f, b);
    ck_assert_int_eq(iqp_decode_queue_send(q), 0);
    while ((b = iqp_decode_queue_next(q))) check_batch(&f, b);
    ck_assert_uint_eq(f.next_expected, accepted);
    ck_assert_int_eq(iqp_decode_queue_finish(q, NULL, NULL, 0), 0);
    fixture_free(&f);
}
END_TEST

/* finish with batches still out, handed over or not (a stream that
 * failed): it frees them (ASan: no leak, no use after free). */
START_TEST(fed_finish_frees_what_is_out) {
    fixture f;
    fixture_init(&f);
    iqp_decode_queue *q = iqp_decode_queue_start_fed(&f.cfg);
    for (size_t i = 0; i < 1000; i++)
        ck_assert_int_eq(iqp_decode_queue_put(q, f.inputs[i], strlen(f.inputs[i]), (void *)(uintptr_t)i), 0);
    ck_assert_uint_eq(iqp_decode_queue_pending(q), 1000);
    ck_assert_int_eq(iqp_decode_queue_finish(q, NULL, NULL, 0), 0);
    fixture_free(&f);
}
END_TEST

/* The nice value of this process's thread named iqp-decode (there must be
 * exactly one), read by the scheduler's own getpriority(2). */
static int decode_thread_nice(void) {
    DIR *d = opendir("/proc/self/task");
    ck_assert_ptr_nonnull(d);
    int found = 0, nice_value = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.') continue;
        char path[300], comm[64] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue; /* a thread that just ended */
        if (!fgets(comm, sizeof comm, f)) comm[0] = 0;
        fclose(f);
        if (strcmp(comm, "iqp-decode\n") != 0) continue;
        errno = 0;
        nice_value = getpriority(PRIO_PROCESS, (id_t)atoi(e->d_name));
        ck_assert_int_eq(errno, 0);
        found++;
    }
    closedir(d);
    ck_assert_int_eq(found, 1);
    return nice_value;
}

/* Enough lines that the reader is still alive, blocked on its full ring
 * (32 batches of 1024), while a test holds the first batch. */
#define LOG_LINES (36 * 1024)

/* A log file of LOG_LINES lines (the fixture's inputs, in turn); its path
 * in path (a mkstemp template). */
static void write_log(const fixture *f, char *path) {
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *out = fdopen(fd, "w");
    ck_assert_ptr_nonnull(out);
    for (size_t i = 0; i < LOG_LINES; i++) fprintf(out, "%s\n", f->inputs[i % N_INPUTS]);
    ck_assert_int_eq(fclose(out), 0);
}

/* Starts a log-mode queue on path (yielding or not), takes its first
 * batch, and returns the decode thread's nice value read then; every
 * line must come back, in file order, and the caller's own priority must
 * be untouched. */
static int log_mode_decode_nice(const fixture *f, const char *path, int yielding) {
    errno = 0;
    int process_nice = getpriority(PRIO_PROCESS, 0);
    ck_assert_int_eq(errno, 0);
    char err[512];
    iqp_logfile *lf = iqp_logfile_open(path, 0, err, sizeof err);
    ck_assert_msg(lf != NULL, "%s", err);
    iqp_decode_queue *q = yielding ? iqp_decode_queue_start_yielding(lf, &f->cfg, 0)
                                   : iqp_decode_queue_start(lf, &f->cfg, 0);
    iqp_decoded_batch *b = iqp_decode_queue_next(q);
    ck_assert_ptr_nonnull(b);
    int nice_value = decode_thread_nice();
    ck_assert_int_eq(getpriority(PRIO_PROCESS, 0), process_nice);
    uint64_t next_line = 1;
    do {
        for (size_t k = 0; k < b->n; k++) ck_assert_uint_eq(b->lines[k].line_no, next_line++);
        iqp_decode_queue_release(b);
    } while ((b = iqp_decode_queue_next(q)));
    ck_assert_uint_eq(next_line, LOG_LINES + 1);
    ck_assert_int_eq(iqp_decode_queue_finish(q, NULL, err, sizeof err), 0);
    iqp_logfile_close(lf);
    return nice_value;
}

/* Backfill's queue (start_yielding): the decode thread runs 5 nice levels
 * below the process (capped at 19). Export's (start) and the stream's
 * (fed mode) keep the process's priority. */
START_TEST(only_a_yielding_queue_decodes_at_a_lower_priority) {
    fixture f;
    fixture_init(&f);
    errno = 0;
    int process_nice = getpriority(PRIO_PROCESS, 0);
    ck_assert_int_eq(errno, 0);
    char path[] = "/tmp/iqp-decode-queue-XXXXXX";
    write_log(&f, path);
    int want_nice = process_nice + 5 > 19 ? 19 : process_nice + 5;
    ck_assert_int_eq(log_mode_decode_nice(&f, path, 1), want_nice);
    ck_assert_int_eq(log_mode_decode_nice(&f, path, 0), process_nice);
    unlink(path);

    iqp_decode_queue *q = iqp_decode_queue_start_fed(&f.cfg);
    ck_assert_int_eq(iqp_decode_queue_put(q, f.inputs[0], strlen(f.inputs[0]), NULL), 0);
    ck_assert_int_eq(iqp_decode_queue_send(q), 0);
    iqp_decoded_batch *b = iqp_decode_queue_next(q);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(decode_thread_nice(), process_nice);
    iqp_decode_queue_release(b);
    ck_assert_int_eq(iqp_decode_queue_finish(q, NULL, NULL, 0), 0);
    fixture_free(&f);
}
END_TEST

static Suite *decode_queue_suite(void) {
    Suite *s = suite_create("decode_queue");
    TCase *fed = tcase_create("fed");
    tcase_add_test(fed, fed_returns_every_input_in_order);
    tcase_add_test(fed, fed_is_bounded);
    tcase_add_test(fed, fed_finish_frees_what_is_out);
    suite_add_tcase(s, fed);
    TCase *log = tcase_create("log");
    tcase_set_timeout(log, 120); /* 73k lines decoded, under ASan too */
    tcase_add_test(log, only_a_yielding_queue_decodes_at_a_lower_priority);
    suite_add_tcase(s, log);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(decode_queue_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

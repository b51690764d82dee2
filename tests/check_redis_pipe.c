/* check_redis_pipe.c -- the writers' pipelined Redis connection
 * (publisher/redis_pipe.h) against a real redis-server.
 *
 * The fixture starts one `redis-server` child on a free loopback port and
 * stops it by pid in the teardown. What is checked, always by reading
 * Redis back with plain hiredis and the layout decoders of
 * schemas/redis_value.h, never through the pipe itself:
 *   - a hash of more items than one HSET carries, written through a pipe
 *     shallower than its commands, holds every item with exactly the
 *     counts given (a formula), the context field, and the TTL; a hash
 *     without items holds its context field alone;
 *   - a command Redis refuses in the middle of a pipeline fails the
 *     flush, once, with a message naming the server and Redis's reason,
 *     and the commands around it still land;
 *   - the lease: taken, refused to a second holder (named), renewed only
 *     while ours, lost to a takeover, taken over from a holder whose
 *     process is gone, released only by its holder;
 *   - slice leases: one holder per slice (named to a second), several
 *     slices at once, none while the whole-prefix lease is held and that
 *     one refused while any slice is held; an expired slice (by Redis's
 *     clock) is free, a dead local holder's cleared at once, and a slice
 *     is released only by its holder;
 *   - the layout check of a generation's meta: absent, the same, another
 *     fingerprint, another layout version.
 */
#include <check.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "publisher/redis_pipe.h"
#include "schemas/redis_value.h"
#include "tests/testutil.h"

#define NW 2    /* windows */
#define WIDTH 3 /* counters per window */

static int port;
static pid_t server;
static char *dir, *url;

static void setup(void) {
    dir = tu_mkdtemp("redis_pipe");
    port = tu_free_port();
    char *log = tu_fmt("%s/redis.log", dir);
    server = tu_redis_start(port, log);
    free(log);
    url = tu_fmt("redis://127.0.0.1:%d/0", port);
}

static void teardown(void) {
    if (server > 0) tu_stop_pid(server, SIGTERM, 10000);
    tu_rmrf(dir);
    free(dir);
    free(url);
}

/* A command on a fresh connection of our own (not the code under test). */
static redisReply *cmd(const char *fmt, ...) {
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    ck_assert_msg(c && !c->err, "connect to redis-server on %d", port);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    ck_assert_ptr_nonnull(r);
    return r;
}

static void run(const char *fmt, const char *arg) {
    redisReply *r = cmd(fmt, arg);
    ck_assert_msg(r->type != REDIS_REPLY_ERROR, "%s: %s", fmt, r->str);
    freeReplyObject(r);
}

/* The errors a pipe reported, in order. */
typedef struct errors {
    int n;
    char last[600];
} errors;

static void keep(void *ud, const char *msg) {
    errors *e = ud;
    e->n++;
    snprintf(e->last, sizeof e->last, "%s", msg);
}

static iqp_rpipe *open_pipe(int depth, errors *e) {
    char err[300];
    iqp_rpipe *p = iqp_rpipe_new(url, "pipetest", 1000, 2000, depth, err, sizeof err);
    ck_assert_msg(p != NULL, "%s", err);
    if (e) iqp_rpipe_on_error(p, keep, e);
    ck_assert_int_eq(iqp_rpipe_connect(p), IQP_RC_OK);
    return p;
}

/* Item i's counter k of window w: a formula the test can recompute. */
static int64_t expected(size_t i, size_t w, size_t k) {
    return (int64_t)((i * 7 + w * 3 + k) % 11) - (k == 2 && i % 5 == 0 ? 1 : 0);
}

typedef struct fill_state {
    char (*names)[16];
} fill_state;

static iqp_rc fill(void *ud, iqp_rpipe *p, size_t from, size_t n) {
    fill_state *f = ud;
    int64_t counts[NW * WIDTH];
    for (size_t i = from; i < from + n; i++) {
        for (size_t w = 0; w < NW; w++)
            for (size_t k = 0; k < WIDTH; k++) counts[w * WIDTH + k] = expected(i, w, k);
        iqp_rpipe_hset_item(p, f->names[i], strlen(f->names[i]), counts);
    }
    return IQP_RC_OK;
}

START_TEST(hash_over_several_hsets_round_trips) {
    enum { N = 2 * IQP_RPIPE_HSET_ITEMS + 37 };
    static char names[N][16];
    for (size_t i = 0; i < N; i++) snprintf(names[i], sizeof names[i], "item%zu", i);
    errors e = {0};
    iqp_rpipe *p = open_pipe(2, &e); /* every third command waits for replies */
    const int64_t cc[NW] = {123456, 7};
    fill_state f = {names};
    ck_assert_int_eq(iqp_rpipe_put_hash(p, "pipetest:h", 10, cc, NW, WIDTH, N, fill, &f, "PEXPIRE", "60000"),
                     IQP_RC_OK);
    const int64_t cc0[NW] = {5, 0};
    ck_assert_int_eq(iqp_rpipe_put_hash(p, "pipetest:empty", 14, cc0, NW, WIDTH, 0, fill, &f, "PEXPIRE", "60000"),
                     IQP_RC_OK);
    ck_assert_int_eq(iqp_rpipe_flush(p), IQP_RC_OK);
    ck_assert_int_eq(e.n, 0);
    iqp_rpipe_free(p);

    redisReply *r = cmd("HGETALL pipetest:h");
    ck_assert_int_eq(r->type, REDIS_REPLY_ARRAY);
    ck_assert_uint_eq(r->elements, 2 * (N + 1));
    size_t seen = 0;
    for (size_t j = 0; j + 1 < r->elements; j += 2) {
        const redisReply *field = r->element[j], *val = r->element[j + 1];
        if (field->len == 0) {
            int64_t got[NW];
            ck_assert_int_eq(iqp_rv_decode_context((const unsigned char *)val->str, val->len, NW, got), 0);
            ck_assert(got[0] == cc[0] && got[1] == cc[1]);
            continue;
        }
        size_t i = strtoul(field->str + 4, NULL, 10);
        int64_t got[NW * WIDTH];
        ck_assert_int_eq(iqp_rv_decode_item((const unsigned char *)val->str, val->len, NW, WIDTH, got), 0);
        for (size_t w = 0; w < NW; w++)
            for (size_t k = 0; k < WIDTH; k++)
                ck_assert_msg(got[w * WIDTH + k] == expected(i, w, k), "item %zu window %zu counter %zu", i, w, k);
        seen++;
    }
    ck_assert_uint_eq(seen, N);
    freeReplyObject(r);
    r = cmd("PTTL pipetest:h");
    ck_assert_msg(r->integer > 0 && r->integer <= 60000, "PTTL %lld", r->integer);
    freeReplyObject(r);
    r = cmd("HLEN pipetest:empty");
    ck_assert_int_eq(r->integer, 1);
    freeReplyObject(r);
}
END_TEST

START_TEST(refused_command_fails_the_flush_once) {
    run("SET %s not-a-hash", "pipetest:str");
    errors e = {0};
    iqp_rpipe *p = open_pipe(64, &e);
    const char *a1[3] = {"SET", "pipetest:before", "1"}, *a2[4] = {"HSET", "pipetest:str", "f", "v"},
               *a3[3] = {"SET", "pipetest:after", "1"};
    size_t l1[3] = {3, 15, 1}, l2[4] = {4, 12, 1, 1}, l3[3] = {3, 14, 1};
    ck_assert_int_eq(iqp_rpipe_send(p, 3, a1, l1), IQP_RC_OK);
    ck_assert_int_eq(iqp_rpipe_send(p, 4, a2, l2), IQP_RC_OK);
    ck_assert_int_eq(iqp_rpipe_send(p, 3, a3, l3), IQP_RC_OK);
    ck_assert_int_eq(e.n, 0); /* nothing read yet */
    ck_assert_int_eq(iqp_rpipe_flush(p), IQP_RC_FAILED);
    ck_assert_int_eq(e.n, 1);
    char where[64];
    snprintf(where, sizeof where, "127.0.0.1:%d", port);
    ck_assert_msg(strstr(e.last, "refused a write") && strstr(e.last, "WRONGTYPE") && strstr(e.last, where), "%s",
                  e.last);
    ck_assert_str_eq(iqp_rpipe_error(p), e.last);
    /* a synchronous command reads what is still owed first */
    redisReply *r = iqp_rpipe_command(p, "GET after", "GET pipetest:after");
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->str, "1");
    freeReplyObject(r);
    ck_assert_ptr_null(iqp_rpipe_command(p, "HGET str", "HGET pipetest:str f"));
    ck_assert_int_eq(e.n, 2);
    ck_assert_msg(strstr(e.last, "HGET str on Redis at") && strstr(e.last, "WRONGTYPE"), "%s", e.last);
    iqp_rpipe_free(p);
    r = cmd("GET pipetest:before");
    ck_assert_str_eq(r->str, "1");
    freeReplyObject(r);
}
END_TEST

static char *lease_in_redis(void) {
    redisReply *r = cmd("GET pipetest:lease");
    char *v = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

/* p's lease value with the pid of a child that has exited (a holder of
 * this host that is provably gone), after lead. */
static void dead_holder(iqp_rpipe *p, const char *lead, char *out, size_t cap) {
    pid_t child = fork();
    if (child == 0) _exit(0);
    ck_assert_int_gt(child, 0);
    ck_assert_int_eq(waitpid(child, NULL, 0), child);
    char mine[32];
    const char *own = iqp_rpipe_lease_value(p);
    snprintf(mine, sizeof mine, " pid %ld ", (long)getpid());
    const char *at = strstr(own, mine);
    ck_assert_ptr_nonnull(at);
    snprintf(out, cap, "%s%.*s pid %ld %s", lead, (int)(at - own), own, (long)child, at + strlen(mine));
}

START_TEST(lease_is_one_holders) {
    run("DEL %s", "pipetest:lease");
    errors ea = {0}, eb = {0};
    char holder[IQP_LEASE_VALUE_MAX];
    iqp_rpipe *a = open_pipe(16, &ea), *b = open_pipe(16, &eb);
    ck_assert_int_eq(iqp_rpipe_lease_value_new(a, "test a", NULL), IQP_RC_OK);
    ck_assert_int_eq(iqp_rpipe_lease_value_new(b, "test b", NULL), IQP_RC_OK);
    ck_assert_str_ne(iqp_rpipe_lease_value(a), iqp_rpipe_lease_value(b)); /* tokens differ */
    ck_assert_int_eq(iqp_rpipe_lease_acquire(a, holder, sizeof holder), IQP_RC_OK);
    char *v = lease_in_redis();
    ck_assert_str_eq(v, iqp_rpipe_lease_value(a));
    free(v);
    ck_assert_int_eq(iqp_rpipe_lease_acquire(b, holder, sizeof holder), IQP_RC_REFUSED);
    ck_assert_str_eq(holder, iqp_rpipe_lease_value(a));
    ck_assert_int_eq(iqp_rpipe_lease_extend(a), IQP_RC_OK);
    redisReply *r = cmd("PTTL pipetest:lease");
    ck_assert_msg(r->integer > IQP_LEASE_MS - 5000 && r->integer <= IQP_LEASE_MS, "PTTL %lld", r->integer);
    freeReplyObject(r);
    /* b's release does not free a's lease */
    iqp_rpipe_lease_release(b);
    v = lease_in_redis();
    ck_assert_str_eq(v, iqp_rpipe_lease_value(a));
    free(v);

    /* taken over (say, after a pause longer than the lease): a's renewal is refused */
    run("SET pipetest:lease %s", "someone else on another host pid 1 in ? since 0 token 0");
    ck_assert_int_eq(iqp_rpipe_lease_extend(a), IQP_RC_REFUSED);
    ck_assert_msg(strstr(ea.last, "lost the lease pipetest:lease"), "%s", ea.last);
    ck_assert_int_eq(iqp_rpipe_lease_acquire(b, holder, sizeof holder), IQP_RC_REFUSED);
    ck_assert_str_eq(holder, "someone else on another host pid 1 in ? since 0 token 0");

    /* a holder of this host whose process is gone is taken over at once */
    char dead[IQP_LEASE_VALUE_MAX + 32];
    dead_holder(a, "", dead, sizeof dead);
    run("SET pipetest:lease %s", dead);
    ck_assert_int_eq(iqp_rpipe_lease_acquire(b, holder, sizeof holder), IQP_RC_OK);
    v = lease_in_redis();
    ck_assert_str_eq(v, iqp_rpipe_lease_value(b));
    free(v);
    iqp_rpipe_lease_release(b);
    v = lease_in_redis();
    ck_assert_ptr_null(v);
    iqp_rpipe_free(a);
    iqp_rpipe_free(b);
}
END_TEST

START_TEST(layout_check_of_a_generation) {
    errors e = {0};
    int absent = -1;
    iqp_rpipe *p = open_pipe(16, &e);
    run("DEL %s", "pipetest:7:meta");
    ck_assert_int_eq(iqp_rpipe_check_layout(p, 7, "00000000000000aa", &absent), IQP_RC_OK);
    ck_assert_int_eq(absent, 1);
    redisReply *r = cmd("HSET pipetest:7:meta layout_version %d fingerprint 00000000000000aa", IQP_RV_LAYOUT_VERSION);
    freeReplyObject(r);
    ck_assert_int_eq(iqp_rpipe_check_layout(p, 7, "00000000000000aa", &absent), IQP_RC_OK);
    ck_assert_int_eq(absent, 0);
    ck_assert_int_eq(e.n, 0);
    ck_assert_int_eq(iqp_rpipe_check_layout(p, 7, "00000000000000bb", &absent), IQP_RC_REFUSED);
    ck_assert_msg(strstr(e.last, "another layout") && strstr(e.last, "00000000000000aa") &&
                      strstr(e.last, "00000000000000bb"),
                  "%s", e.last);
    run("HSET pipetest:7:meta layout_version %s", "99");
    ck_assert_int_eq(iqp_rpipe_check_layout(p, 7, "00000000000000aa", &absent), IQP_RC_REFUSED);
    ck_assert_msg(strstr(e.last, "layout_version 99"), "%s", e.last);
    ck_assert_int_eq(e.n, 2);
    iqp_rpipe_free(p);
}
END_TEST

START_TEST(bad_url_and_prefix_are_refused) {
    char err[300];
    ck_assert_ptr_null(iqp_rpipe_new("http://127.0.0.1", "iqp", 1000, 1000, 16, err, sizeof err));
    ck_assert_msg(err[0], "no message");
    ck_assert_ptr_null(iqp_rpipe_new("redis://127.0.0.1", "a:123:b", 1000, 1000, 16, err, sizeof err));
    ck_assert_msg(strstr(err, "123") || strstr(err, "digit"), "%s", err);
}
END_TEST
/* Slice r's record in Redis: "<expiry ms> <holder>" (NULL: none). */
static char *slice_in_redis(int r) {
    char field[16];
    snprintf(field, sizeof field, "%d", r);
    redisReply *rep = cmd("HGET pipetest:lease:slices %s", field);
    char *v = rep->type == REDIS_REPLY_STRING ? strdup(rep->str) : NULL;
    freeReplyObject(rep);
    return v;
}

/* The holder part of slice r's record ("" when none). */
static void slice_holder(int r, char *out, size_t cap) {
    char *v = slice_in_redis(r);
    const char *sp = v ? strchr(v, ' ') : NULL;
    snprintf(out, cap, "%s", sp ? sp + 1 : "");
    free(v);
}

static iqp_rpipe *slice_pipe(int slice, const char *role, errors *e) {
    iqp_rpipe *p = open_pipe(16, e);
    ck_assert_int_eq(iqp_rpipe_lease_value_new(p, role, NULL), IQP_RC_OK);
    iqp_rpipe_lease_use_slice(p, slice);
    return p;
}

START_TEST(slice_leases_exclude_each_other_and_the_prefix) {
    run("DEL %s", "pipetest:lease");
    run("DEL %s", "pipetest:lease:slices");
    errors ea = {0}, eb = {0}, ec = {0};
    char holder[IQP_LEASE_VALUE_MAX], seen[IQP_LEASE_VALUE_MAX];
    iqp_rpipe *a0 = slice_pipe(0, "slice a", &ea), *b0 = slice_pipe(0, "slice b", &eb);
    iqp_rpipe *b1 = slice_pipe(1, "slice b", &eb), *whole = open_pipe(16, &ec);
    ck_assert_int_eq(iqp_rpipe_lease_value_new(whole, "test refresh", NULL), IQP_RC_OK);
    /* one holder per slice, several slices at once */
    ck_assert_int_eq(iqp_rpipe_lease_acquire(a0, holder, sizeof holder), IQP_RC_OK);
    slice_holder(0, seen, sizeof seen);
    ck_assert_str_eq(seen, iqp_rpipe_lease_value(a0));
    ck_assert_int_eq(iqp_rpipe_lease_acquire(b0, holder, sizeof holder), IQP_RC_REFUSED);
    ck_assert_str_eq(holder, iqp_rpipe_lease_value(a0));
    ck_assert_int_eq(iqp_rpipe_lease_acquire(b1, holder, sizeof holder), IQP_RC_OK);
    /* the whole-prefix writer waits for every slice */
    ck_assert_int_eq(iqp_rpipe_lease_acquire(whole, holder, sizeof holder), IQP_RC_REFUSED);
    ck_assert_msg(!strcmp(holder, iqp_rpipe_lease_value(a0)) || !strcmp(holder, iqp_rpipe_lease_value(b1)),
                  "refused, naming '%s'", holder);
    ck_assert_ptr_null(lease_in_redis());
    /* renewal keeps the record ours and moves its expiry; the hash lives as long */
    char *before = slice_in_redis(0);
    usleep(20000);
    ck_assert_int_eq(iqp_rpipe_lease_extend(a0), IQP_RC_OK);
    char *after = slice_in_redis(0);
    ck_assert_msg(strtoll(after, NULL, 10) > strtoll(before, NULL, 10), "%s -> %s", before, after);
    free(before);
    free(after);
    redisReply *r = cmd("PTTL pipetest:lease:slices");
    ck_assert_msg(r->integer > IQP_LEASE_MS - 5000 && r->integer <= IQP_LEASE_MS, "PTTL %lld", r->integer);
    freeReplyObject(r);
    /* released only by its holder */
    iqp_rpipe_lease_release(b0);
    slice_holder(0, seen, sizeof seen);
    ck_assert_str_eq(seen, iqp_rpipe_lease_value(a0));
    iqp_rpipe_lease_release(a0);
    iqp_rpipe_lease_release(b1);
    ck_assert_ptr_null(slice_in_redis(0));
    ck_assert_ptr_null(slice_in_redis(1));
    /* with every slice free the whole-prefix lease is taken; then no slice is */
    ck_assert_int_eq(iqp_rpipe_lease_acquire(whole, holder, sizeof holder), IQP_RC_OK);
    ck_assert_int_eq(iqp_rpipe_lease_acquire(a0, holder, sizeof holder), IQP_RC_REFUSED);
    ck_assert_str_eq(holder, iqp_rpipe_lease_value(whole));
    iqp_rpipe_lease_release(whole);
    /* an expired record (by Redis's clock) is free; a lost slice's renewal is refused */
    char rec[IQP_LEASE_VALUE_MAX + 32];
    snprintf(rec, sizeof rec, "1000 %s", iqp_rpipe_lease_value(a0));
    r = cmd("HSET pipetest:lease:slices 0 %s", rec);
    freeReplyObject(r);
    ck_assert_int_eq(iqp_rpipe_lease_acquire(b0, holder, sizeof holder), IQP_RC_OK);
    ck_assert_int_eq(iqp_rpipe_lease_extend(a0), IQP_RC_REFUSED);
    ck_assert_msg(strstr(ea.last, "lost the lease pipetest:lease:slices field 0"), "%s", ea.last);
    /* a holder of this host whose process is gone is cleared at once */
    char dead[IQP_LEASE_VALUE_MAX + 32];
    dead_holder(b0, "99999999999999 ", dead, sizeof dead);
    r = cmd("HSET pipetest:lease:slices 0 %s", dead);
    freeReplyObject(r);
    ck_assert_int_eq(iqp_rpipe_lease_acquire(a0, holder, sizeof holder), IQP_RC_OK);
    slice_holder(0, seen, sizeof seen);
    ck_assert_str_eq(seen, iqp_rpipe_lease_value(a0));
    iqp_rpipe_lease_release(a0);
    iqp_rpipe_free(a0);
    iqp_rpipe_free(b0);
    iqp_rpipe_free(b1);
    iqp_rpipe_free(whole);
}
END_TEST


int main(void) {
    Suite *s = suite_create("redis_pipe");
    TCase *unit = tcase_create("unit");
    tcase_add_test(unit, bad_url_and_prefix_are_refused);
    suite_add_tcase(s, unit);
    TCase *srv = tcase_create("redis-server");
    tcase_set_timeout(srv, 60);
    tcase_add_unchecked_fixture(srv, setup, teardown);
    tcase_add_test(srv, hash_over_several_hsets_round_trips);
    tcase_add_test(srv, refused_command_fails_the_flush_once);
    tcase_add_test(srv, lease_is_one_holders);
    tcase_add_test(srv, slice_leases_exclude_each_other_and_the_prefix);
    tcase_add_test(srv, layout_check_of_a_generation);
    suite_add_tcase(s, srv);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* check_packed.c -- layout 3's packed counter values (store/counters.h):
 * the merge operator's sum against a naive dense sum, for any grouping of
 * its operands into partial merges; malformed values refused; a batch
 * packing one slot's cells into one merge; the expiry compaction filter
 * rewriting a value without its expired and zero cells (and removing a
 * key with none left); the combiner's drain writing every cell in key
 * order, one merge per stored key, whichever sort it takes; and a store of
 * layout 2 refused with a message saying how to rebuild it. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cells.h"
#include "model/config.h"
#include "aggregator/combiner.h"
#include "store/counters.h"
#include "store/store.h"
#include "tests/testutil.h"

#define H 3600000LL
#define D (24 * H)
static char err[1024];
static iqp_store *g_store; /* the store of the drain test */

/* ---- a naive model of a packed value: dense [gran][bucket][counter] ------- */

#define NG 3
#define B_LO (-5)
#define B_HI 40
#define NB (B_HI - B_LO + 1)
#define NC 5

typedef struct dense {
    int present[NG][NB];  /* the cell appears in some operand */
    uint64_t sum[NG][NB][NC];
} dense;

static uint64_t rng = 88172645463325252ULL;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int64_t random_counter(void) {
    switch (next_rand() % 8) {
    case 0: return (int64_t)(next_rand() >> 2);            /* large */
    case 1: return -(int64_t)(next_rand() >> 2);           /* large negative */
    case 2: case 3: case 4: return 0;
    default: return (int64_t)(next_rand() % 7) - 3;
    }
}

/* A random operand: a sorted subset of the cells, random counters; added
 * into d. Returns the packed value (malloc'd) in *len. */
static char *random_operand(dense *d, size_t *len) {
    iqp_packed_writer w;
    iqp_packed_writer_init(&w);
    for (int g = 0; g < NG; g++)
        for (int b = 0; b < NB; b++) {
            if (next_rand() % 4) continue;
            int64_t vec[NC];
            size_t n = 1 + next_rand() % NC;
            for (size_t k = 0; k < n; k++) vec[k] = random_counter();
            ck_assert(iqp_packed_can_put(&w, g, B_LO + b));
            iqp_packed_put(&w, g, B_LO + b, vec, n);
            d->present[g][b] = 1;
            for (size_t k = 0; k < n; k++) d->sum[g][b][k] += (uint64_t)vec[k];
        }
    char *out = malloc(w.len ? w.len : 1);
    memcpy(out, w.buf, w.len);
    *len = w.len;
    iqp_packed_writer_free(&w);
    return out;
}

/* Checks that val decodes to exactly d's cells and sums. */
static void expect_dense(const char *val, size_t len, const dense *d) {
    iqp_packed_reader r;
    iqp_packed_cell c;
    int g = 0, b = 0, rc;
    iqp_packed_reader_init(&r, val, len);
    while ((rc = iqp_packed_next(&r, &c)) > 0) {
        while (g < NG && !d->present[g][b]) {
            if (++b == NB) b = 0, g++;
        }
        ck_assert_int_lt(g, NG);
        ck_assert_int_eq(c.gran, g);
        ck_assert_int_eq(c.bucket, B_LO + b);
        for (size_t k = 0; k < NC; k++)
            ck_assert_int_eq(k < c.n ? c.vec[k] : 0, (int64_t)d->sum[g][b][k]);
        if (++b == NB) b = 0, g++;
    }
    ck_assert_int_eq(rc, 0);
    while (g < NG && !d->present[g][b]) {
        if (++b == NB) b = 0, g++;
    }
    ck_assert_int_eq(g, NG); /* no cell missing */
}

/* Sums ops[from..to) into a malloc'd value. */
static char *sum_range(char **ops, size_t *lens, int from, int to, size_t *len) {
    char *out = iqp_packed_sum((const char *const *)ops + from, lens + from, to - from, len);
    ck_assert_ptr_nonnull(out);
    return out;
}

START_TEST(sum_matches_naive_for_any_grouping) {
    enum { K = 7 };
    for (int trial = 0; trial < 300; trial++) {
        dense d;
        memset(&d, 0, sizeof d);
        char *ops[K + 1];
        size_t lens[K + 1], len_all, len_a, len_b, len_ab, len_c;
        for (int i = 0; i < K; i++) ops[i] = random_operand(&d, &lens[i]);
        ops[K] = NULL; /* an absent existing value is skipped */
        lens[K] = 0;
        char *all = sum_range(ops, lens, 0, K + 1, &len_all);
        expect_dense(all, len_all, &d);
        /* partial merges: ((0..s) + (s..K)), and (0 + (1 + ... )) one by one */
        int s = 1 + (int)(next_rand() % (K - 1));
        char *a = sum_range(ops, lens, 0, s, &len_a), *b = sum_range(ops, lens, s, K, &len_b);
        char *pair[2] = {b, a};
        size_t pair_len[2] = {len_b, len_a};
        char *ab = sum_range(pair, pair_len, 0, 2, &len_ab);
        ck_assert_uint_eq(len_ab, len_all); /* canonical: the same bytes */
        ck_assert(memcmp(ab, all, len_all) == 0);
        char *acc = sum_range(ops, lens, K - 1, K, &len_c);
        for (int i = K - 2; i >= 0; i--) {
            char *two[2] = {ops[i], acc};
            size_t two_len[2] = {lens[i], len_c};
            char *next = sum_range(two, two_len, 0, 2, &len_c);
            free(acc);
            acc = next;
        }
        ck_assert_uint_eq(len_c, len_all);
        ck_assert(memcmp(acc, all, len_all) == 0);
        free(acc), free(ab), free(a), free(b), free(all);
        for (int i = 0; i < K; i++) free(ops[i]);
    }
}
END_TEST

START_TEST(malformed_values_are_refused) {
    iqp_packed_writer w;
    int64_t vec[2] = {300, -7};
    size_t len;
    iqp_packed_writer_init(&w);
    iqp_packed_put(&w, 0, 1000, vec, 2);
    size_t boundary = w.len; /* a cut here leaves a whole, shorter value */
    iqp_packed_put(&w, 1, 5, vec, 2);
    const char *ok = (const char *)w.buf;
    for (size_t cut = 1; cut < w.len; cut++) { /* every truncation */
        const char *v[1] = {ok};
        size_t l[1] = {cut};
        char *s = iqp_packed_sum(v, l, 1, &len);
        ck_assert_msg((s != NULL) == (cut == boundary), "a value cut at %zu bytes: %s", cut,
                      s ? "decoded" : "refused");
        free(s);
    }
    /* granularities out of order */
    unsigned char bad[] = {1, 2, 1, 2, 0, 2, 1, 2};
    const char *v[2] = {ok, (const char *)bad};
    size_t l[2] = {w.len, sizeof bad};
    ck_assert_ptr_null(iqp_packed_sum(v, l, 2, &len));
    /* a counter bit past IQP_PACKED_MAX_COUNTERS */
    unsigned char wide[] = {0, 2, 0x80, 0x80, 0x80, 0x80, 0x10, 2};
    l[1] = sizeof wide;
    v[1] = (const char *)wide;
    ck_assert_ptr_null(iqp_packed_sum(v, l, 2, &len));
    iqp_packed_writer_free(&w);
}
END_TEST

/* ---- through the store --------------------------------------------------- */

/* windows 3h/1h and 2d/1d: grans 1h (3 kept) and 1d (2 kept); slot = 1 day */
static const char *TWO_GRANS = "{\"windows\": [{\"name\": \"3h\", \"length\": \"3h\", \"granularity\": \"1h\"},"
                               " {\"name\": \"2d\", \"length\": \"2d\", \"granularity\": \"1d\"}]}";

static void cell_key(iqp_keybuf *kb, const iqp_config *cfg, const char *item, int g, int64_t bucket) {
    iqp_context ctx = tu_ctx("q", "US", "female");
    iqp_cells_context_prefix(kb, &cfg->features[0], &ctx);
    iqp_cells_append_entity(kb, item, strlen(item));
    iqp_cells_append_bucket(kb, g, bucket);
}

/* Merges value v at (g, b) for b in [lo, hi] of item into batch bt. */
static void merge_run(iqp_store_batch *bt, const iqp_config *cfg, const char *item, int g,
                      int64_t lo, int64_t hi, int64_t v) {
    iqp_keybuf kb;
    iqp_keybuf_init(&kb);
    for (int64_t b = lo; b <= hi; b++) {
        int64_t vec[IQP_MAX_COUNTERS] = {0};
        vec[0] = v;
        vec[IQP_COUNTERS(cfg) - 1] = v * b;
        cell_key(&kb, cfg, item, g, b);
        iqp_store_batch_merge(bt, IQP_CF_COUNTS, kb.buf, kb.len, vec, IQP_COUNTERS(cfg));
    }
    iqp_keybuf_free(&kb);
}

static void commit(iqp_store *st, iqp_store_batch *bt, int64_t wm) {
    iqp_store_batch_set_watermark(bt, wm);
    ck_assert_msg(iqp_store_batch_commit(st, bt, err, sizeof err) == 0, "%s", err);
    iqp_store_batch_clear(bt);
}

typedef struct got {
    int n;
    int64_t bucket[128], first[128], last[128];
} got;

static size_t g_width;
static void collect(void *ud, int64_t bucket, const int64_t *vec, size_t n) {
    got *s = ud;
    ck_assert_uint_eq(n, g_width);
    s->bucket[s->n] = bucket;
    s->first[s->n] = vec[0];
    s->last[s->n++] = vec[n - 1];
}

static got scan(iqp_store *st, const iqp_config *cfg, const char *item, int g) {
    iqp_keybuf kb;
    iqp_context ctx = tu_ctx("q", "US", "female");
    got s;
    memset(&s, 0, sizeof s);
    g_width = IQP_COUNTERS(cfg);
    iqp_keybuf_init(&kb);
    iqp_cells_context_prefix(&kb, &cfg->features[0], &ctx);
    iqp_cells_append_entity(&kb, item, strlen(item));
    ck_assert_int_eq(iqp_store_scan_buckets(st, IQP_CF_COUNTS, kb.buf, kb.len, g, 0, 1000,
                                            IQP_COUNTERS(cfg), collect, &s, err, sizeof err), 0);
    iqp_keybuf_free(&kb);
    return s;
}

/* Buckets [lo, hi] with counters (v, ..., v * bucket), in order. */
static void expect_run(const got *s, int at, int64_t lo, int64_t hi, int64_t v) {
    for (int64_t b = lo; b <= hi; b++, at++) {
        ck_assert_int_lt(at, s->n);
        ck_assert_int_eq(s->bucket[at], b);
        ck_assert_int_eq(s->first[at], v);
        ck_assert_int_eq(s->last[at], v * b);
    }
}

START_TEST(one_merge_per_slot_and_expiry_rewrites_values) {
    char *dir = tu_mkdtemp("packed");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_int_eq(iqp_config_parse(&cfg, TWO_GRANS, "t", err, sizeof err), 0);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    iqp_store_batch *bt = iqp_store_batch_new(st);
    /* in the combiner's order (slot, granularity, bucket): one merge a slot */
    for (int day = 0; day < 3; day++) {
        merge_run(bt, &cfg, "i", 0, 24 * day, 24 * day + 23, 1);
        merge_run(bt, &cfg, "i", 1, day, day, 10);
    }
    ck_assert_uint_eq(iqp_store_batch_merges(bt), 3);
    commit(st, bt, 2 * D + 5 * H);
    /* in another order: more merges, the same sums */
    merge_run(bt, &cfg, "i", 1, 0, 2, 10);
    merge_run(bt, &cfg, "i", 0, 0, 71, 1);
    ck_assert_uint_eq(iqp_store_batch_merges(bt), 6);
    merge_run(bt, &cfg, "gone", 0, 2, 2, 1); /* its only slot expires */
    merge_run(bt, &cfg, "gone", 1, 0, 0, 1);
    commit(st, bt, 2 * D + 5 * H);
    merge_run(bt, &cfg, "z", 0, 30, 30, 1); /* sums to zero across batches */
    commit(st, bt, 2 * D + 5 * H);
    merge_run(bt, &cfg, "z", 0, 30, 30, -1);
    commit(st, bt, 2 * D + 5 * H);
    iqp_store_batch_free(bt);

    got s = scan(st, &cfg, "i", 0); /* reads never depend on expiry */
    ck_assert_int_eq(s.n, 72);
    expect_run(&s, 0, 0, 71, 2);
    s = scan(st, &cfg, "i", 1);
    ck_assert_int_eq(s.n, 3);
    expect_run(&s, 0, 0, 2, 20);
    ck_assert_uint_eq(iqp_store_count_keys(st, IQP_CF_COUNTS), 3 + 1 + 1);
    ck_assert_uint_eq(iqp_store_count_cells(st, IQP_CF_COUNTS), 75 + 2 + 1);

    /* watermark day 2, 05:00: hours >= 51 and days >= 1 are kept */
    ck_assert_int_eq(iqp_store_compact(st, err, sizeof err), 0);
    s = scan(st, &cfg, "i", 0);
    ck_assert_int_eq(s.n, 21);
    expect_run(&s, 0, 51, 71, 2);
    s = scan(st, &cfg, "i", 1);
    ck_assert_int_eq(s.n, 2);
    expect_run(&s, 0, 1, 2, 20);
    ck_assert_int_eq(scan(st, &cfg, "z", 0).n, 0);
    ck_assert_int_eq(scan(st, &cfg, "gone", 0).n + scan(st, &cfg, "gone", 1).n, 0);
    /* day 0 of "i", "gone" and "z" removed; days 1 and 2 of "i" rewritten */
    ck_assert_uint_eq(iqp_store_count_keys(st, IQP_CF_COUNTS), 2);
    ck_assert_uint_eq(iqp_store_count_cells(st, IQP_CF_COUNTS), 21 + 2);
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

/* A slot is the coarsest bucket holding a cell's start, also when the
 * granularities do not divide (5h cells in days), and a scan finds every
 * cell of a range across slots. */
START_TEST(slots_of_any_granularity) {
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_int_eq(iqp_cells_slot(&cfg, 0, 23), 0); /* hours in days */
    ck_assert_int_eq(iqp_cells_slot(&cfg, 0, 24), 1);
    ck_assert_int_eq(iqp_cells_slot(&cfg, 0, -1), -1);
    ck_assert_int_eq(iqp_cells_slot(&cfg, 1, 17), 17);
    ck_assert_int_eq(iqp_config_parse(&cfg, "{\"windows\": [{\"name\": \"10h\", \"length\": \"10h\", "
                                            "\"granularity\": \"5h\"}, {\"name\": \"2d\", \"length\": "
                                            "\"2d\", \"granularity\": \"1d\"}]}", "t", err, sizeof err), 0);
    ck_assert_int_eq(iqp_cells_slot(&cfg, 0, 4), 0);  /* 20h-25h starts on day 0 */
    ck_assert_int_eq(iqp_cells_slot(&cfg, 0, 5), 1);  /* 25h */
    ck_assert_int_eq(iqp_cells_slot(&cfg, 0, -1), -1); /* -5h */
    char *dir = tu_mkdtemp("packed");
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    iqp_store_batch *bt = iqp_store_batch_new(st);
    merge_run(bt, &cfg, "i", 0, 3, 10, 1);
    commit(st, bt, 2 * D);
    merge_run(bt, &cfg, "i", 0, 3, 10, 1);
    commit(st, bt, 2 * D);
    iqp_store_batch_free(bt);
    got s = scan(st, &cfg, "i", 0);
    ck_assert_int_eq(s.n, 8);
    expect_run(&s, 0, 3, 10, 2);
    ck_assert_uint_eq(iqp_store_count_keys(st, IQP_CF_COUNTS), 3); /* days 0, 1, 2 */
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

/* ---- the combiner's drain ------------------------------------------------- */

/* What a drain wrote, seen through its on_cell calls. */
typedef struct drained {
    size_t cells, groups, out_of_order;
    iqp_cf cf;
    iqp_keybuf last;     /* the stored key (cells.h) of the previous cell */
    int last_gran;
    int64_t last_bucket;
} drained;

/* Compares byte strings as RocksDB's default comparator does. */
static int bytewise(const iqp_keybuf *a, const iqp_keybuf *b) {
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->buf, b->buf, n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

static void on_drained(void *ud, iqp_store_batch *b, iqp_cf cf, const unsigned char *key,
                       size_t klen) {
    drained *d = ud;
    int g;
    int64_t bucket;
    (void)b;
    ck_assert_int_eq(iqp_cells_key_bucket(key, klen, &g, &bucket), 0);
    const iqp_config *cfg = iqp_store_config(g_store);
    iqp_keybuf stored;
    iqp_keybuf_init(&stored);
    iqp_keybuf_append(&stored, key, klen - IQP_BUCKET_SUFFIX_LEN);
    iqp_cells_append_slot(&stored, cfg, iqp_cells_slot(cfg, g, bucket));
    int c = d->cells > 0 && cf == d->cf ? bytewise(&d->last, &stored) : -1;
    /* stored keys ascending; one stored key's cells by (granularity, bucket) */
    if (c > 0 || (c == 0 && (d->last_gran > g || (d->last_gran == g && d->last_bucket >= bucket))))
        d->out_of_order++;
    if (c != 0) d->groups++;
    iqp_keybuf_copy(&d->last, &stored);
    iqp_keybuf_free(&stored);
    d->cf = cf;
    d->last_gran = g;
    d->last_bucket = bucket;
    d->cells++;
}

/* Adds n distinct cells (bucket i * stride of granularity i % 2, under one
 * of 7 contexts and 613 items, named so that interning order differs from
 * byte order), drains them into a batch and checks: every cell comes out,
 * in store key order, one merge per stored key, and the batch commits. A small
 * stride sorts by a packed 64-bit key; a huge one (2^30 hours between
 * cells) needs more bits and takes the general sort. */
static void check_drain(int64_t stride) {
    char *dir = tu_mkdtemp("packed");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_int_eq(iqp_config_parse(&cfg, TWO_GRANS, "t", err, sizeof err), 0);
    g_store = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(g_store != NULL, "%s", err);
    iqp_store_batch *bt = iqp_store_batch_new(g_store);
    iqp_combiner *c = iqp_combiner_new(IQP_COUNTERS(&cfg));
    const size_t n = 5000;
    iqp_keybuf prefix;
    iqp_keybuf_init(&prefix);
    for (size_t i = 0; i < n; i++) {
        char q[32], item[32];
        snprintf(q, sizeof q, "%.*s", (int)(1 + (i * 5) % 7), "zyxwvut");
        snprintf(item, sizeof item, "it%zu", (i * 7919) % 613);
        iqp_context ctx = tu_ctx(q, "US", "female");
        iqp_cells_context_prefix(&prefix, &cfg.features[i % cfg.n_features], &ctx);
        uint32_t pid = iqp_combiner_prefix_id(c, prefix.buf, prefix.len);
        uint32_t iid = iqp_combiner_item_id(c, item, strlen(item));
        int64_t bucket = (int64_t)i * stride;
        int g = (int)(i % 2);
        iqp_combiner_add_count(c, pid, iid, g, g ? bucket / 24 : bucket, i % IQP_COUNTERS(&cfg), 1);
    }
    drained d;
    memset(&d, 0, sizeof d);
    iqp_keybuf_init(&d.last);
    ck_assert_uint_eq(iqp_combiner_drain_with(c, bt, on_drained, &d), n);
    ck_assert_uint_eq(d.cells, n);
    ck_assert_uint_eq(d.out_of_order, 0);
    ck_assert_uint_eq(iqp_store_batch_merges(bt), d.groups);
    ck_assert_int_eq(iqp_store_batch_commit(g_store, bt, err, sizeof err), 0);
    ck_assert_uint_eq(iqp_store_count_cells(g_store, IQP_CF_COUNTS), n);
    iqp_keybuf_free(&d.last);
    iqp_keybuf_free(&prefix);
    iqp_combiner_free(c);
    iqp_store_batch_free(bt);
    iqp_store_close(g_store);
    tu_rmrf(dir);
    free(dir);
}

START_TEST(drain_writes_key_order_one_merge_per_stored_key) {
    check_drain(1);
    check_drain((int64_t)1 << 30);
}
END_TEST

/* The combiner's counter table keeps a slot's bucket word in 32 bits while
 * every cell shares the word's high bits: cells whose buckets differ only
 * there (bucket, bucket + 2^24, + 2^25: the same low 32 bits) must stay
 * apart, before and after the table mixes them, across in-place growth
 * (24,000 cells from 4,096 slots) and after a clear. Every cell's sum is
 * checked by peeking it back. */
static void add_cells(iqp_combiner *c, size_t width, int round, size_t m, const int *order) {
    for (size_t pass = 0; pass < 2; pass++) /* twice: the second finds every cell */
        for (int o = 0; o < 3; o++)
            for (size_t j = 0; j < m; j++) {
                char item[32];
                int k = order[o];
                snprintf(item, sizeof item, "it%zu", j);
                uint32_t pid = iqp_combiner_prefix_id(c, (const unsigned char *)"ctx", 3);
                uint32_t iid = iqp_combiner_item_id(c, item, strlen(item));
                int64_t bucket = (int64_t)(j % 50) + ((int64_t)k << 24);
                iqp_combiner_add_count(c, pid, iid, 0, bucket, (j + (size_t)k) % width,
                                       (int64_t)(3 * j + (size_t)k + 1 + (size_t)round));
            }
}

static void check_cells(const iqp_combiner *c, size_t width, int round, size_t m) {
    for (size_t j = 0; j < m; j++)
        for (int k = 0; k < 3; k++) {
            char item[32];
            int64_t vec[IQP_MAX_COUNTERS] = {0}, want = 2 * (int64_t)(3 * j + (size_t)k + 1 + (size_t)round);
            snprintf(item, sizeof item, "it%zu", j);
            int64_t bucket = (int64_t)(j % 50) + ((int64_t)k << 24);
            ck_assert_int_eq(iqp_combiner_peek(c, (const unsigned char *)"ctx", 3, item, strlen(item), 0,
                                               bucket, vec, width), 1);
            for (size_t x = 0; x < width; x++)
                ck_assert_int_eq(vec[x], x == (j + (size_t)k) % width ? want : 0);
        }
}

START_TEST(counter_table_keeps_high_bucket_bits_apart) {
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    size_t width = IQP_COUNTERS(&cfg), m = 8000;
    iqp_combiner *c = iqp_combiner_new(width);
    const int orders[2][3] = {{0, 1, 2}, {2, 0, 1}};
    for (int round = 0; round < 2; round++) {
        /* only the first bucket word's cells: a probe for another one's
         * must not find them (the table is not mixed yet) */
        const int *order = orders[round];
        add_cells(c, width, round, m, (const int[]){order[0], order[0], order[0]});
        int64_t vec[IQP_MAX_COUNTERS] = {0};
        int64_t other = 7 + ((int64_t)order[1] << 24);
        ck_assert_int_eq(iqp_combiner_peek(c, (const unsigned char *)"ctx", 3, "it7", 3, 0, other, vec,
                                           width), 0);
        iqp_combiner_clear(c);
        add_cells(c, width, round, m, order);
        ck_assert_uint_eq(iqp_combiner_cells(c), 3 * m);
        check_cells(c, width, round, m);
        iqp_combiner_clear(c);
        ck_assert_uint_eq(iqp_combiner_cells(c), 0);
    }
    iqp_combiner_free(c);
}
END_TEST

START_TEST(layout_2_store_is_refused) {
    char *dir = tu_mkdtemp("packed");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    /* what a layout-2 iqp recorded: the same layout, version 2 */
    char *layout = iqp_config_layout_json(&cfg), *at = strstr(layout, "\"layout_version\":3");
    ck_assert_ptr_nonnull(at);
    at[strlen("\"layout_version\":")] = '2';
    iqp_store_batch *bt = iqp_store_batch_new(st);
    iqp_store_batch_put(bt, IQP_CF_META, "layout", 6, layout, strlen(layout));
    ck_assert_int_eq(iqp_store_batch_commit(st, bt, err, sizeof err), 0);
    iqp_store_batch_free(bt);
    iqp_store_close(st);
    free(layout);
    ck_assert_ptr_null(iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err));
    ck_assert_msg(strstr(err, dir) && strstr(err, "layout_version 2") && strstr(err, "iqp backfill"),
                  "%s", err);
    ck_assert_ptr_null(iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, sizeof err));
    ck_assert_msg(strstr(err, dir) && strstr(err, "iqp backfill"), "%s", err);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("packed");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, sum_matches_naive_for_any_grouping);
    tcase_add_test(tc, malformed_values_are_refused);
    tcase_add_test(tc, one_merge_per_slot_and_expiry_rewrites_values);
    tcase_add_test(tc, slots_of_any_granularity);
    tcase_add_test(tc, drain_writes_key_order_one_merge_per_stored_key);
    tcase_add_test(tc, counter_table_keeps_high_bucket_bits_apart);
    tcase_add_test(tc, layout_2_store_is_refused);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

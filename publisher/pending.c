/* pending.c -- the publish queue (see pending.h).
 *
 * The hook sees a flush's cells in key order, counts first: the cells of
 * one (context, entity) -- one per granularity and bucket -- are adjacent,
 * so dropping a dirty key equal to the previous one dedups a flush's
 * records without a hash table.
 */
#include "publisher/pending.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aggregator/cells.h"
#include "util/clock.h"

struct iqp_pending {
    iqp_store *st;
    _Atomic uint64_t next_seq;
    _Atomic uint64_t count;
    void (*notify)(void *ud);
    void *notify_ud;
    /* the flush being built */
    iqp_keybuf record, last;  /* current record; previous record's kind + dirty key */
    uint64_t added;
    int64_t flush_ms;
};

static void put_u64_be(unsigned char *out, uint64_t v) {
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)(v >> (8 * (7 - i)));
}

uint64_t iqp_pending_key_seq(const unsigned char *key, size_t klen) {
    uint64_t v = 0;
    if (klen < 8) return 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | key[i];
    return v;
}

static int count_record(void *ud, const unsigned char *key, size_t klen, const char *val, size_t vlen) {
    (void)key, (void)klen, (void)val, (void)vlen;
    (*(uint64_t *)ud)++;
    return 0;
}

iqp_pending *iqp_pending_open(iqp_store *st, char *err, size_t errlen) {
    iqp_pending *q = calloc(1, sizeof *q);
    if (!q) abort();
    q->st = st;
    iqp_keybuf_init(&q->record);
    iqp_keybuf_init(&q->last);
    char *val = NULL;
    size_t vlen = 0;
    uint64_t seq = 1, n = 0;
    int rc = iqp_store_get_meta(st, "publish/next_seq", &val, &vlen);
    if (rc == 1 && vlen == 8) memcpy(&seq, val, 8);
    free(val);
    if (rc < 0 || iqp_store_scan_keys(st, NULL, IQP_CF_PENDING, NULL, 0, count_record, &n, err, errlen) < 0) {
        if (rc < 0) snprintf(err, errlen, "cannot read the publish sequence of the store");
        iqp_pending_free(q);
        return NULL;
    }
    atomic_store(&q->next_seq, seq);
    atomic_store(&q->count, n);
    return q;
}

void iqp_pending_free(iqp_pending *q) {
    if (!q) return;
    iqp_keybuf_free(&q->record);
    iqp_keybuf_free(&q->last);
    free(q);
}

static void on_cell(void *ud, iqp_store_batch *b, iqp_cf cf, const unsigned char *key, size_t klen) {
    iqp_pending *q = ud;
    if (klen <= IQP_BUCKET_SUFFIX_LEN) return;
    size_t dlen = klen - IQP_BUCKET_SUFFIX_LEN;
    unsigned char kind = cf == IQP_CF_COUNTS ? IQP_PENDING_KIND_ENTITY : IQP_PENDING_KIND_CONTEXT;
    if (q->last.len == dlen + 1 && q->last.buf[0] == kind && memcmp(q->last.buf + 1, key, dlen) == 0)
        return;
    if (q->added == 0) q->flush_ms = iqp_wall_ms();
    /* record = seq || kind || dirty key; last = kind || dirty key */
    iqp_keybuf_truncate(&q->record, 0);
    unsigned char head[IQP_PENDING_HEADER];
    put_u64_be(head, atomic_load(&q->next_seq));
    head[8] = kind;
    iqp_keybuf_append(&q->record, head, sizeof head);
    iqp_keybuf_append(&q->record, key, dlen);
    iqp_store_batch_put(b, IQP_CF_PENDING, q->record.buf, q->record.len, &q->flush_ms, 8);
    iqp_keybuf_truncate(&q->last, 0);
    iqp_keybuf_append(&q->last, q->record.buf + 8, q->record.len - 8);
    q->added++;
}

static void before_commit(void *ud, iqp_store_batch *b) {
    iqp_pending *q = ud;
    if (q->added == 0) return;
    uint64_t next = atomic_load(&q->next_seq) + 1;
    iqp_store_batch_put(b, IQP_CF_META, "publish/next_seq", 16, &next, 8);
}

static void after_commit(void *ud, int ok) {
    iqp_pending *q = ud;
    uint64_t added = q->added;
    q->added = 0;
    iqp_keybuf_truncate(&q->last, 0);
    if (!ok || added == 0) return;
    atomic_fetch_add(&q->next_seq, 1);
    atomic_fetch_add(&q->count, added);
    if (q->notify) q->notify(q->notify_ud);
}

void iqp_pending_attach(iqp_pending *q, iqp_aggregator *a, void (*notify)(void *ud), void *ud) {
    q->notify = notify;
    q->notify_ud = ud;
    iqp_agg_flush_hook hook = {.on_cell = on_cell, .before_commit = before_commit,
                               .after_commit = after_commit, .ud = q};
    iqp_aggregator_set_flush_hook(a, &hook);
}

uint64_t iqp_pending_count(const iqp_pending *q) { return atomic_load(&q->count); }
uint64_t iqp_pending_next_seq(const iqp_pending *q) { return atomic_load(&q->next_seq); }

void iqp_pending_consumed(iqp_pending *q, uint64_t n) {
    uint64_t cur = atomic_load(&q->count);
    while (!atomic_compare_exchange_weak(&q->count, &cur, cur >= n ? cur - n : 0)) {
    }
}

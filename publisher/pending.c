/* pending.c -- the publish queue (see pending.h).
 *
 * The hook sees a flush's cells in key order, counts first: the cells of
 * one (context, entity) -- one per granularity and bucket -- are adjacent,
 * so dropping a dirty key equal to the previous one dedups a flush's
 * records without a hash table; across flushes the record key itself
 * coalesces (a put over the same key).
 */
#include "publisher/pending.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/cells.h"
#include "util/clock.h"

struct iqp_pending {
    iqp_store *st;
    _Atomic uint64_t next_seq;
    _Atomic uint64_t count;
    pthread_mutex_t mu;       /* a flush's commit vs the publisher's check-and-delete */
    int locked;               /* the flush being built holds mu */
    void (*notify)(void *ud);
    void *notify_ud;
    /* the flush being built */
    iqp_keybuf last;          /* previous record key (kind + dirty key) */
    unsigned char value[IQP_PENDING_VALUE];
    uint64_t added;
};

int iqp_pending_parse(const unsigned char *key, size_t klen, const char *val, size_t vlen,
                      iqp_pending_record *out) {
    memset(out, 0, sizeof *out);
    if (klen > 1 && (key[0] == IQP_PENDING_KIND_CONTEXT || key[0] == IQP_PENDING_KIND_ENTITY) &&
        vlen == IQP_PENDING_VALUE) {
        out->dirty = key + 1;
        out->dirty_len = klen - 1;
        memcpy(&out->seq, val, 8);
        memcpy(&out->flush_ms, val + 8, 8);
        return 0;
    }
    /* before coalescing: u64 BE sequence || kind || dirty key, value = ms */
    if (klen > 9 && (key[8] == IQP_PENDING_KIND_CONTEXT || key[8] == IQP_PENDING_KIND_ENTITY) && vlen == 8) {
        out->dirty = key + 9;
        out->dirty_len = klen - 9;
        memcpy(&out->flush_ms, val, 8);
        return 0;
    }
    return -1;
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
    pthread_mutex_init(&q->mu, NULL);
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
    iqp_keybuf_free(&q->last);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

static void on_cell(void *ud, iqp_store_batch *b, iqp_cf cf, const unsigned char *key, size_t klen) {
    iqp_pending *q = ud;
    if (klen <= IQP_BUCKET_SUFFIX_LEN) return;
    size_t dlen = klen - IQP_BUCKET_SUFFIX_LEN;
    unsigned char kind = cf == IQP_CF_COUNTS ? IQP_PENDING_KIND_ENTITY : IQP_PENDING_KIND_CONTEXT;
    if (q->last.len == dlen + 1 && q->last.buf[0] == kind && memcmp(q->last.buf + 1, key, dlen) == 0)
        return;
    if (q->added == 0) {
        uint64_t seq = atomic_load(&q->next_seq);
        int64_t now = iqp_wall_ms();
        memcpy(q->value, &seq, 8);
        memcpy(q->value + 8, &now, 8);
    }
    /* record key = kind || dirty key: a later flush overwrites it */
    iqp_keybuf_truncate(&q->last, 0);
    iqp_keybuf_append(&q->last, &kind, 1);
    iqp_keybuf_append(&q->last, key, dlen);
    iqp_store_batch_put(b, IQP_CF_PENDING, q->last.buf, q->last.len, q->value, sizeof q->value);
    q->added++;
}

static void before_commit(void *ud, iqp_store_batch *b) {
    iqp_pending *q = ud;
    if (q->added == 0) return;
    uint64_t next = atomic_load(&q->next_seq) + 1;
    iqp_store_batch_put(b, IQP_CF_META, "publish/next_seq", 16, &next, 8);
    pthread_mutex_lock(&q->mu);
    q->locked = 1;
}

static void after_commit(void *ud, int ok) {
    iqp_pending *q = ud;
    uint64_t added = q->added;
    q->added = 0;
    iqp_keybuf_truncate(&q->last, 0);
    if (ok && added) {
        atomic_fetch_add(&q->next_seq, 1);
        atomic_fetch_add(&q->count, added);
    }
    if (q->locked) {
        q->locked = 0;
        pthread_mutex_unlock(&q->mu);
    }
    if (ok && added && q->notify) q->notify(q->notify_ud);
}

void iqp_pending_attach(iqp_pending *q, iqp_aggregator *a, void (*notify)(void *ud), void *ud) {
    q->notify = notify;
    q->notify_ud = ud;
    /* one flush at a time, on whichever thread writes it: the hook's
     * state (last, added, value) is the flush's; the counts shared with
     * the publisher are atomic or under mu */
    iqp_agg_flush_hook hook = {.on_cell = on_cell, .before_commit = before_commit,
                               .after_commit = after_commit, .ud = q, .on_writer = 1};
    iqp_aggregator_set_flush_hook(a, &hook);
}

uint64_t iqp_pending_count(const iqp_pending *q) { return atomic_load(&q->count); }
void iqp_pending_set_count(iqp_pending *q, uint64_t n) { atomic_store(&q->count, n); }
void iqp_pending_lock(iqp_pending *q) { pthread_mutex_lock(&q->mu); }
void iqp_pending_unlock(iqp_pending *q) { pthread_mutex_unlock(&q->mu); }
uint64_t iqp_pending_next_seq(const iqp_pending *q) { return atomic_load(&q->next_seq); }

void iqp_pending_consumed(iqp_pending *q, uint64_t n) {
    uint64_t cur = atomic_load(&q->count);
    while (!atomic_compare_exchange_weak(&q->count, &cur, cur >= n ? cur - n : 0)) {
    }
}

/* merged_iter.c -- a k-way merge of RocksDB iterators with disjoint keys
 * (see merged_iter.h). `cur` is the child whose key is the least of the
 * valid children's, -1 when none is valid; `next` is the one with the
 * least key of the others, -1 when none. A walk often takes several keys
 * in a row from one child (one entity's slots of one period), so a step
 * compares cur's new key with next's alone, and only when cur is no
 * longer the least does it pass over all children again. With one child
 * this is that iterator.
 */
#include "store/merged_iter.h"

#include <stdlib.h>
#include <string.h>

struct iqp_merged_iter {
    rocksdb_iterator_t **its;
    size_t n;
    long cur, next;
};

iqp_merged_iter *iqp_merged_iter_new(rocksdb_iterator_t **its, size_t n) {
    iqp_merged_iter *m = calloc(1, sizeof *m);
    rocksdb_iterator_t **own = malloc((n ? n : 1) * sizeof *own);
    if (!m || !own) {
        for (size_t i = 0; i < n; i++)
            if (its[i]) rocksdb_iter_destroy(its[i]);
        free(m), free(own);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (its[i]) own[m->n++] = its[i];
    m->its = own;
    m->cur = m->next = -1;
    return m;
}

static int key_cmp(const char *a, size_t al, const char *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

/* Sets cur and next with one pass over the children. */
static void pick(iqp_merged_iter *m) {
    const char *best = NULL, *second = NULL;
    size_t best_len = 0, second_len = 0;
    m->cur = m->next = -1;
    for (size_t i = 0; i < m->n; i++) {
        if (!rocksdb_iter_valid(m->its[i])) continue;
        size_t kl;
        const char *k = rocksdb_iter_key(m->its[i], &kl);
        if (!best || key_cmp(k, kl, best, best_len) < 0) {
            second = best, second_len = best_len, m->next = m->cur;
            best = k, best_len = kl, m->cur = (long)i;
        } else if (!second || key_cmp(k, kl, second, second_len) < 0) {
            second = k, second_len = kl, m->next = (long)i;
        }
    }
}

void iqp_merged_iter_seek(iqp_merged_iter *m, const char *key, size_t klen) {
    for (size_t i = 0; i < m->n; i++) rocksdb_iter_seek(m->its[i], key, klen);
    pick(m);
}

void iqp_merged_iter_seek_to_first(iqp_merged_iter *m) {
    for (size_t i = 0; i < m->n; i++) rocksdb_iter_seek_to_first(m->its[i]);
    pick(m);
}

int iqp_merged_iter_valid(const iqp_merged_iter *m) { return m->cur >= 0; }

const char *iqp_merged_iter_key(const iqp_merged_iter *m, size_t *klen) {
    return rocksdb_iter_key(m->its[m->cur], klen);
}

const char *iqp_merged_iter_value(const iqp_merged_iter *m, size_t *vlen) {
    return rocksdb_iter_value(m->its[m->cur], vlen);
}

void iqp_merged_iter_next(iqp_merged_iter *m) {
    rocksdb_iterator_t *it = m->its[m->cur];
    rocksdb_iter_next(it);
    if (!rocksdb_iter_valid(it)) {
        pick(m);
        return;
    }
    if (m->next < 0) return; /* the only valid child */
    size_t kl, nl;
    const char *k = rocksdb_iter_key(it, &kl), *nk = rocksdb_iter_key(m->its[m->next], &nl);
    if (key_cmp(k, kl, nk, nl) > 0) pick(m); /* keys are disjoint: never equal */
}

char *iqp_merged_iter_error(const iqp_merged_iter *m) {
    for (size_t i = 0; i < m->n; i++) {
        char *rerr = NULL;
        rocksdb_iter_get_error(m->its[i], &rerr);
        if (rerr) return rerr;
    }
    return NULL;
}

void iqp_merged_iter_free(iqp_merged_iter *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n; i++) rocksdb_iter_destroy(m->its[i]);
    free(m->its);
    free(m);
}

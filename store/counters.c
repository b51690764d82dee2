/* counters.c -- counter vectors, packed values and their merge operator
 * (the format is described in counters.h).
 *
 * Sums wrap (computed in uint64_t) rather than invoke undefined behaviour;
 * no realistic count comes near 2^63. The merge operator keeps no state;
 * full and partial merges are the same sum, the existing value (if any)
 * being one more operand. Operands are summed pairwise, in rounds (a
 * tournament), each pair by one linear merge of two sorted lists: a merge
 * of k operands of m cells costs O(k m log k), and needs no heap.
 */
#include "store/counters.h"

#include <stdlib.h>
#include <string.h>

/* ---- varints ----------------------------------------------------------------- */

static uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }

static int64_t unzigzag(uint64_t u) { return (int64_t)(u >> 1) ^ -(int64_t)(u & 1); }

/* Reads a LEB128 varint at *p (before end); -1 when truncated or too long. */
static int get_varint(const unsigned char **p, const unsigned char *end, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        unsigned char b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

static void writer_reserve(iqp_packed_writer *w, size_t more) {
    if (w->len + more <= w->cap) return;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < w->len + more) cap *= 2;
    w->buf = realloc(w->buf, cap);
    if (!w->buf) abort();
    w->cap = cap;
}

/* Appends v; the caller reserved the 10 bytes it may take. */
static void put_varint(iqp_packed_writer *w, uint64_t v) {
    while (v >= 0x80) {
        w->buf[w->len++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    w->buf[w->len++] = (unsigned char)v;
}

/* ---- reading ------------------------------------------------------------------ */

void iqp_packed_reader_init(iqp_packed_reader *r, const char *val, size_t vlen) {
    r->p = (const unsigned char *)val;
    r->end = r->p + (val ? vlen : 0);
    r->gran = 0;
    r->bucket = 0;
    r->started = 0;
}

int iqp_packed_next(iqp_packed_reader *r, iqp_packed_cell *c) {
    uint64_t code, mask, v;
    if (r->p == r->end) return 0;
    int gran = *r->p++;
    if (get_varint(&r->p, r->end, &code) < 0) return -1;
    if (!r->started || gran != r->gran) {
        if (r->started && gran < r->gran) return -1; /* not sorted */
        c->bucket = unzigzag(code);
    } else {
        uint64_t next = (uint64_t)r->bucket + code + 1;
        if ((int64_t)next <= r->bucket) return -1; /* overflow: not ascending */
        c->bucket = (int64_t)next;
    }
    if (get_varint(&r->p, r->end, &mask) < 0 || mask >> IQP_PACKED_MAX_COUNTERS) return -1;
    c->gran = gran;
    c->n = 0;
    for (size_t i = 0; mask >> i; i++) {
        c->vec[i] = 0;
        if (!((mask >> i) & 1)) continue;
        if (get_varint(&r->p, r->end, &v) < 0) return -1;
        c->vec[i] = unzigzag(v);
        c->n = i + 1;
    }
    r->started = 1;
    r->gran = gran;
    r->bucket = c->bucket;
    return 1;
}

/* ---- writing ------------------------------------------------------------------ */

void iqp_packed_writer_init(iqp_packed_writer *w) { memset(w, 0, sizeof *w); }

void iqp_packed_writer_reset(iqp_packed_writer *w) {
    w->len = 0;
    w->cells = 0;
}

void iqp_packed_writer_free(iqp_packed_writer *w) {
    free(w->buf);
    memset(w, 0, sizeof *w);
}

int iqp_packed_can_put(const iqp_packed_writer *w, int gran, int64_t bucket) {
    return w->cells == 0 || gran > w->gran || (gran == w->gran && bucket > w->bucket);
}

void iqp_packed_put(iqp_packed_writer *w, int gran, int64_t bucket, const int64_t *vec, size_t n) {
    uint64_t mask = 0;
    if (n > IQP_PACKED_MAX_COUNTERS) abort(); /* a caller's bug, not data */
    for (size_t i = 0; i < n; i++)
        if (vec[i]) mask |= (uint64_t)1 << i;
    writer_reserve(w, 1 + 10 * (2 + n)); /* the most one cell takes: no check per byte */
    w->buf[w->len++] = (unsigned char)gran;
    if (w->cells == 0 || gran != w->gran) put_varint(w, zigzag(bucket));
    else put_varint(w, (uint64_t)bucket - (uint64_t)w->bucket - 1);
    put_varint(w, mask);
    for (size_t i = 0; i < n; i++)
        if (vec[i]) put_varint(w, zigzag(vec[i]));
    w->gran = gran;
    w->bucket = bucket;
    w->cells++;
}

/* ---- summing ------------------------------------------------------------------ */

static int cell_cmp(const iqp_packed_cell *x, const iqp_packed_cell *y) {
    if (x->gran != y->gran) return x->gran < y->gran ? -1 : 1;
    return (x->bucket > y->bucket) - (x->bucket < y->bucket);
}

/* Adds y's counters into x's. */
static void cell_add(iqp_packed_cell *x, const iqp_packed_cell *y) {
    for (size_t i = x->n; i < y->n; i++) x->vec[i] = 0;
    if (y->n > x->n) x->n = y->n;
    for (size_t i = 0; i < y->n; i++) x->vec[i] = (int64_t)((uint64_t)x->vec[i] + (uint64_t)y->vec[i]);
}

/* Writes the sum of packed values a and b into w; -1 when one is malformed. */
static int sum_two(const char *a, size_t alen, const char *b, size_t blen, iqp_packed_writer *w) {
    iqp_packed_reader ra, rb;
    iqp_packed_cell ca, cb;
    iqp_packed_reader_init(&ra, a, alen);
    iqp_packed_reader_init(&rb, b, blen);
    int ha = iqp_packed_next(&ra, &ca), hb = iqp_packed_next(&rb, &cb);
    while (ha > 0 || hb > 0) {
        if (ha < 0 || hb < 0) return -1;
        int c = ha == 0 ? 1 : hb == 0 ? -1 : cell_cmp(&ca, &cb);
        if (c > 0) {
            iqp_packed_put(w, cb.gran, cb.bucket, cb.vec, cb.n);
            hb = iqp_packed_next(&rb, &cb);
            continue;
        }
        if (c == 0) {
            cell_add(&ca, &cb);
            hb = iqp_packed_next(&rb, &cb);
        }
        iqp_packed_put(w, ca.gran, ca.bucket, ca.vec, ca.n);
        ha = iqp_packed_next(&ra, &ca);
    }
    return ha < 0 || hb < 0 ? -1 : 0;
}

/* An operand of a summing round; owned: malloc'd by an earlier round. */
typedef struct operand {
    const char *p;
    size_t len;
    char *owned;
} operand;

char *iqp_packed_sum(const char *const *vals, const size_t *lens, int nvals, size_t *outlen) {
    operand *ops = malloc(sizeof *ops * (size_t)(nvals > 0 ? nvals + 2 : 2));
    size_t n = 0;
    int ok = 1;
    if (!ops) return NULL;
    for (int i = 0; i < nvals; i++)
        if (vals[i]) ops[n++] = (operand){vals[i], lens[i], NULL};
    if (n == 0) ops[n++] = (operand){"", 0, NULL};
    /* one operand is summed with nothing: checked and copied */
    if (n == 1) ops[n++] = (operand){"", 0, NULL};
    while (n > 1) {
        size_t m = 0;
        for (size_t i = 0; i + 1 < n; i += 2) {
            iqp_packed_writer w;
            iqp_packed_writer_init(&w);
            writer_reserve(&w, 1);
            if (ok && sum_two(ops[i].p, ops[i].len, ops[i + 1].p, ops[i + 1].len, &w) < 0) ok = 0;
            free(ops[i].owned);
            free(ops[i + 1].owned);
            ops[m++] = (operand){(char *)w.buf, w.len, (char *)w.buf};
        }
        if (n % 2) ops[m++] = ops[n - 1];
        n = m;
    }
    char *out = ops[0].owned;
    *outlen = ops[0].len;
    free(ops);
    if (!ok) {
        free(out);
        return NULL;
    }
    return out;
}

long iqp_packed_retain(const char *val, size_t vlen, const int64_t *first, size_t n_first,
                       iqp_packed_writer *w) {
    iqp_packed_reader r;
    iqp_packed_cell c;
    long dropped = 0;
    int rc;
    iqp_packed_writer_reset(w);
    iqp_packed_reader_init(&r, val, vlen);
    while ((rc = iqp_packed_next(&r, &c)) > 0) {
        if (c.n == 0 || ((size_t)c.gran < n_first && c.bucket < first[c.gran])) dropped++;
        else iqp_packed_put(w, c.gran, c.bucket, c.vec, c.n);
    }
    return rc < 0 ? -1 : dropped;
}

/* ---- the merge operator ----------------------------------------------------------- */

static char *full_merge(void *state, const char *key, size_t klen, const char *existing,
                        size_t existing_len, const char *const *ops, const size_t *op_lens,
                        int nops, unsigned char *success, size_t *new_len) {
    (void)state, (void)key, (void)klen;
    const char **vals = malloc(sizeof(char *) * (size_t)(nops + 1));
    size_t *lens = malloc(sizeof(size_t) * (size_t)(nops + 1));
    char *out = NULL;
    if (vals && lens) {
        vals[0] = existing;
        lens[0] = existing ? existing_len : 0;
        memcpy(vals + 1, ops, sizeof(char *) * (size_t)nops);
        memcpy(lens + 1, op_lens, sizeof(size_t) * (size_t)nops);
        out = iqp_packed_sum(vals, lens, nops + 1, new_len);
    }
    free(vals);
    free(lens);
    *success = out != NULL;
    if (!out) *new_len = 0;
    return out;
}

static char *partial_merge(void *state, const char *key, size_t klen, const char *const *ops,
                           const size_t *op_lens, int nops, unsigned char *success,
                           size_t *new_len) {
    (void)state, (void)key, (void)klen;
    char *out = iqp_packed_sum(ops, op_lens, nops, new_len);
    *success = out != NULL;
    if (!out) *new_len = 0;
    return out;
}

static void delete_value(void *state, const char *value, size_t len) {
    (void)state, (void)len;
    free((void *)value);
}

static const char *merge_name(void *state) {
    (void)state;
    return "iqp.packed.v3";
}

static void no_destructor(void *state) { (void)state; }

rocksdb_mergeoperator_t *iqp_counters_merge_operator(void) {
    return rocksdb_mergeoperator_create(NULL, no_destructor, full_merge, partial_merge,
                                        delete_value, merge_name);
}

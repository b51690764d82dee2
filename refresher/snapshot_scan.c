/* snapshot_scan.c -- stage 1 of a refresh: one pass over a store snapshot
 * (or over the snapshots of several stores, summed: `iqp refresh
 * --state-dir`) into the flat arrays of refresh_internal.h.
 *
 * Design
 * ------
 * Keys are feature-major (cells.h: every key starts with u8 len + feature
 * name), so each feature is one contiguous key range in both the counts
 * and the contexts column families. A feature is one job; jobs run on the
 * pool's threads, each over its own two iterators on the same snapshot:
 *
 *   contexts CF  -> list A: distinct context prefixes, each with its
 *                   in-window context cells
 *   counts CF    -> list B: distinct context prefixes, each with its
 *                   entities (items), each with its in-window cells.
 *                   A key is one slot of one entity (cells.h), its value
 *                   the slot's cells of every granularity; consecutive
 *                   keys of one entity differ only in the 9-byte slot
 *                   suffix, so a key is parsed (iqp_cells_parse_key) only
 *                   when that part changes.
 *   merge A, B   -> the feature's contexts in key order: a context prefix
 *                   is self-delimiting (length-prefixed fields), so both
 *                   lists are sorted by memcmp of the prefix and merge like
 *                   two sorted runs.
 *
 * Several stores (partition stores of one config) are read as the one
 * store holding their sum: each job walks one iterator per store in one
 * key order (walk_stores, a k-way merge), so the keys of one context or
 * entity arrive together whichever store holds them, and an equal key of
 * two stores twice in a row. The key handlers treat a repeated key as the
 * same run (enter_key), so the second store's cells join the same context
 * or entity; a (granularity, bucket) both stores hold is pushed twice, and
 * the window sums of both backends add those cells like any others. Only
 * the cell counts of the stats differ from the summed store's.
 *
 * Cells outside every window are dropped here (they add to no window), and
 * an entity or context is created with its first in-window cell, so one
 * with none never appears. The jobs' arrays are then concatenated in
 * config order into the result (offsets shifted), each job's memory freed
 * as soon as it is copied, and the items of every context ranked in memcmp
 * order (topk.c) for top-K ties.
 *
 * Values decode through iqp_store_value_cells (store/counters.h's packed
 * cells): missing counters 0, extra ones ignored.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cells.h"
#include "model/window.h"
#include "refresher/pool.h"
#include "refresher/refresh_internal.h"
#include "util/clock.h"

/* A growable array: v holds n elements of elem bytes, room for cap. */
typedef struct gvec {
    void *v;
    size_t n, cap, elem;
} gvec;

static void gvec_init(gvec *g, size_t elem) {
    g->v = NULL;
    g->n = g->cap = 0;
    g->elem = elem;
}

static void gvec_free(gvec *g) {
    free(g->v);
    g->v = NULL;
    g->n = g->cap = 0;
}

/* Room for k more elements; pointer to the first, or NULL when out of memory. */
static void *gvec_extend(gvec *g, size_t k) {
    if (g->n + k > g->cap) {
        size_t cap = g->cap ? g->cap : 64;
        while (cap < g->n + k) cap *= 2;
        void *nv = realloc(g->v, cap * g->elem);
        if (!nv) return NULL;
        g->v = nv;
        g->cap = cap;
    }
    void *at = (char *)g->v + g->n * g->elem;
    g->n += k;
    return at;
}

#define GVEC_AT(g, T, i) (((T *)(g).v)[i])

/* One context list (A or B, or the merged one): key bytes in the job's
 * arena, and the start of its run of cells (A) or entities (B). */
typedef struct ctx_list {
    gvec key_off, key_len, first; /* uint64_t, uint32_t, uint64_t */
} ctx_list;

/* A run of cells: granularity, age, and `width` counters each. */
typedef struct cell_run {
    gvec age, gran, val;          /* uint32_t, uint8_t, int64_t */
} cell_run;

/* One feature's scan (see the design comment). */
typedef struct scan_job {
    const iqp_refresh_result *r;
    iqp_store *const *st;         /* the stores summed, n_stores of them */
    const iqp_store_snapshot *const *snap;
    size_t n_stores;
    size_t f;
    unsigned char fprefix[1 + IQP_NAME_MAX];
    size_t fplen;
    gvec bytes;                   /* unsigned char: keys and item ids */
    ctx_list a, b, merged;        /* merged.first: A's cell run start; see merge */
    gvec merged_ent;              /* uint64_t: entity run start per merged context */
    gvec merged_cells;            /* uint64_t: ctx cell run start per merged context */
    cell_run ccells;              /* context cells, width 1 */
    gvec ent_item_off, ent_item_len, ent_cell; /* uint64_t, uint32_t, uint64_t */
    cell_run cells;               /* counter cells, width nc */
    /* the key (without suffix) of the current run of cells, and what it parsed to */
    unsigned char *cur;
    size_t cur_len, cur_cap, cur_prefix_len, cur_item_at, cur_item_len;
    int cur_ok, cur_created;
    uint64_t keys, ctx_keys, n_cells, n_ctx_cells, bad;
    _Atomic uint64_t *progress;
    uint64_t unreported;
    int oom;
    char err[256];
    int failed;
} scan_job;

static void ctx_list_init(ctx_list *l) {
    gvec_init(&l->key_off, sizeof(uint64_t));
    gvec_init(&l->key_len, sizeof(uint32_t));
    gvec_init(&l->first, sizeof(uint64_t));
}

static void ctx_list_free(ctx_list *l) {
    gvec_free(&l->key_off);
    gvec_free(&l->key_len);
    gvec_free(&l->first);
}

static void cell_run_init(cell_run *c) {
    gvec_init(&c->age, sizeof(uint32_t));
    gvec_init(&c->gran, sizeof(uint8_t));
    gvec_init(&c->val, sizeof(int64_t));
}

static void cell_run_free(cell_run *c) {
    gvec_free(&c->age);
    gvec_free(&c->gran);
    gvec_free(&c->val);
}

static void job_init(scan_job *j) {
    gvec_init(&j->bytes, 1);
    ctx_list_init(&j->a);
    ctx_list_init(&j->b);
    ctx_list_init(&j->merged);
    gvec_init(&j->merged_ent, sizeof(uint64_t));
    gvec_init(&j->merged_cells, sizeof(uint64_t));
    cell_run_init(&j->ccells);
    gvec_init(&j->ent_item_off, sizeof(uint64_t));
    gvec_init(&j->ent_item_len, sizeof(uint32_t));
    gvec_init(&j->ent_cell, sizeof(uint64_t));
    cell_run_init(&j->cells);
}

static void job_free(scan_job *j) {
    gvec_free(&j->bytes);
    ctx_list_free(&j->a);
    ctx_list_free(&j->b);
    ctx_list_free(&j->merged);
    gvec_free(&j->merged_ent);
    gvec_free(&j->merged_cells);
    cell_run_free(&j->ccells);
    gvec_free(&j->ent_item_off);
    gvec_free(&j->ent_item_len);
    gvec_free(&j->ent_cell);
    cell_run_free(&j->cells);
    free(j->cur);
    j->cur = NULL;
}

/* ---- small pieces ------------------------------------------------------ */

/* Copies len bytes into the arena; their offset, or UINT64_MAX when out of memory. */
static uint64_t put_bytes(scan_job *j, const void *p, size_t len) {
    size_t at = j->bytes.n;
    unsigned char *dst = gvec_extend(&j->bytes, len);
    if (!dst && len) { j->oom = 1; return UINT64_MAX; }
    if (len) memcpy(dst, p, len);
    return at;
}

static const unsigned char *arena_at(const scan_job *j, uint64_t off) {
    return (const unsigned char *)j->bytes.v + off;
}

/* Appends a context (key bytes) with its run starting at first. */
static void push_context(scan_job *j, ctx_list *l, const unsigned char *key, size_t len,
                         uint64_t first) {
    uint64_t off = put_bytes(j, key, len);
    uint64_t *o = gvec_extend(&l->key_off, 1);
    uint32_t *n = gvec_extend(&l->key_len, 1);
    uint64_t *s = gvec_extend(&l->first, 1);
    if (off == UINT64_MAX || !o || !n || !s) { j->oom = 1; return; }
    *o = off;
    *n = (uint32_t)len;
    *s = first;
}

/* True when l's last context has exactly these key bytes. */
static int last_context_is(const scan_job *j, const ctx_list *l, const unsigned char *key,
                           size_t len) {
    if (l->key_off.n == 0) return 0;
    size_t i = l->key_off.n - 1;
    return GVEC_AT(l->key_len, uint32_t, i) == len &&
           memcmp(arena_at(j, GVEC_AT(l->key_off, uint64_t, i)), key, len) == 0;
}

/* Whether a bucket of granularity gi lies in some window; its age if so. */
static int in_window(const iqp_refresh_result *r, int gi, int64_t bucket, uint32_t *age) {
    if (gi < 0 || (size_t)gi >= r->cfg.n_grans || r->gran_span[gi] == 0) return 0;
    int64_t last = r->gran_last[gi];
    if (bucket > last || bucket <= last - (int64_t)r->gran_span[gi]) return 0;
    *age = (uint32_t)(last - bucket);
    return 1;
}

/* Appends one cell of `width` counters. */
static void push_cell(scan_job *j, cell_run *c, int gi, uint32_t age, const int64_t *vec,
                      size_t width) {
    uint32_t *a = gvec_extend(&c->age, 1);
    uint8_t *g = gvec_extend(&c->gran, 1);
    int64_t *v = gvec_extend(&c->val, width);
    if (!a || !g || !v) { j->oom = 1; return; }
    *a = age;
    *g = (uint8_t)gi;
    memcpy(v, vec, width * sizeof *v);
}

static void count_progress(scan_job *j) {
    if (++j->unreported == 4096) {
        atomic_fetch_add(j->progress, j->unreported);
        j->unreported = 0;
    }
}

/* Makes key[0, len) the current run's key and parses it; want_item: a
 * count key (context prefix + item) rather than a context prefix. */
static void set_current(scan_job *j, const unsigned char *key, size_t len, int want_item) {
    if (len > j->cur_cap) {
        size_t cap = len * 2;
        unsigned char *nb = realloc(j->cur, cap);
        if (!nb) { j->oom = 1; j->cur_ok = 0; return; }
        j->cur = nb;
        j->cur_cap = cap;
    }
    memcpy(j->cur, key, len);
    j->cur_len = len;
    j->cur_created = 0;
    iqp_parsed_key pk;
    j->cur_ok = iqp_cells_parse_key(&j->r->cfg, j->cur, len, &pk) == 0 && pk.feature == j->f &&
                (want_item ? pk.item != NULL : pk.item == NULL);
    if (!j->cur_ok) return;
    j->cur_prefix_len = pk.prefix_len;
    j->cur_item_at = want_item ? (size_t)((const unsigned char *)pk.item - j->cur) : len;
    j->cur_item_len = want_item ? pk.item_len : 0;
}

/* ---- the two column families ------------------------------------------------ */

/* The part both callbacks share: checks that key is still in the job's
 * feature, counts it and makes its entity (want_item) or context current.
 * Returns 1 when its cells are to be read, else 0 with *stop set to what
 * the callback must return (non-zero: stop the scan). */
static int enter_key(scan_job *j, const unsigned char *key, size_t klen, int want_item, uint64_t *counter,
                     int *stop) {
    *stop = 0;
    if (klen < j->fplen || memcmp(key, j->fprefix, j->fplen) != 0) {
        *stop = 1;
        return 0;
    }
    (*counter)++;
    count_progress(j);
    if (klen <= IQP_BUCKET_SUFFIX_LEN) {
        j->bad++;
        return 0;
    }
    size_t len = klen - IQP_BUCKET_SUFFIX_LEN;
    if (!(j->cur_len == len && memcmp(j->cur, key, len) == 0)) set_current(j, key, len, want_item);
    if (!j->cur_ok) {
        j->bad++;
        *stop = j->oom;
        return 0;
    }
    return 1;
}

/* One counter cell of the current entity: kept when in some window. */
static void on_count_cell(void *ud, int gi, int64_t bucket, const int64_t *vec, size_t n) {
    scan_job *j = ud;
    uint32_t age;
    if (j->oom || !in_window(j->r, gi, bucket, &age)) return;
    if (!j->cur_created) {
        if (!last_context_is(j, &j->b, j->cur, j->cur_prefix_len))
            push_context(j, &j->b, j->cur, j->cur_prefix_len, j->ent_item_off.n);
        uint64_t off = put_bytes(j, j->cur + j->cur_item_at, j->cur_item_len);
        uint64_t *io = gvec_extend(&j->ent_item_off, 1);
        uint32_t *il = gvec_extend(&j->ent_item_len, 1);
        uint64_t *ic = gvec_extend(&j->ent_cell, 1);
        if (off == UINT64_MAX || !io || !il || !ic) { j->oom = 1; return; }
        *io = off;
        *il = (uint32_t)j->cur_item_len;
        *ic = j->cells.age.n;
        j->cur_created = 1;
    }
    push_cell(j, &j->cells, gi, age, vec, n);
    j->n_cells++;
}

/* Counts CF: one key = one slot of one entity, its value the slot's
 * counter cells. Returns non-zero to stop (the feature's range ended, or
 * out of memory). */
static int on_count_key(void *ud, const unsigned char *key, size_t klen, const char *val,
                        size_t vlen) {
    scan_job *j = ud;
    int stop;
    if (!enter_key(j, key, klen, 1, &j->keys, &stop)) return stop;
    if (iqp_store_value_cells(val, vlen, j->r->nc, on_count_cell, j) < 0) j->bad++;
    return j->oom;
}

/* One context cell (context_count of a bucket) of the current context. */
static void on_context_cell(void *ud, int gi, int64_t bucket, const int64_t *vec, size_t n) {
    scan_job *j = ud;
    uint32_t age;
    if (j->oom || !in_window(j->r, gi, bucket, &age)) return;
    if (!j->cur_created) {
        push_context(j, &j->a, j->cur, j->cur_len, j->ccells.age.n);
        j->cur_created = 1;
    }
    push_cell(j, &j->ccells, gi, age, vec, n);
    j->n_ctx_cells++;
}

/* Contexts CF: one key = one slot of one context. */
static int on_context_key(void *ud, const unsigned char *key, size_t klen, const char *val,
                          size_t vlen) {
    scan_job *j = ud;
    int stop;
    if (!enter_key(j, key, klen, 0, &j->ctx_keys, &stop)) return stop;
    if (iqp_store_value_cells(val, vlen, 1, on_context_cell, j) < 0) j->bad++;
    return j->oom;
}

/* ---- merging A and B ------------------------------------------------------ */

static int key_cmp(const scan_job *j, const ctx_list *x, size_t i, const ctx_list *y, size_t k) {
    uint32_t lx = GVEC_AT(x->key_len, uint32_t, i), ly = GVEC_AT(y->key_len, uint32_t, k);
    int c = memcmp(arena_at(j, GVEC_AT(x->key_off, uint64_t, i)),
                   arena_at(j, GVEC_AT(y->key_off, uint64_t, k)), lx < ly ? lx : ly);
    if (c) return c;
    return lx < ly ? -1 : lx > ly;
}

/* Appends one merged context: key from list l's entry i; cell run
 * [c0, c1) of A and entity run [e0, e1) of B (both as starts: the ends are
 * the next context's starts, with sentinels appended after the merge). */
static void push_merged(scan_job *j, const ctx_list *l, size_t i, uint64_t c0, uint64_t e0) {
    uint64_t *o = gvec_extend(&j->merged.key_off, 1);
    uint32_t *n = gvec_extend(&j->merged.key_len, 1);
    uint64_t *c = gvec_extend(&j->merged_cells, 1);
    uint64_t *e = gvec_extend(&j->merged_ent, 1);
    if (!o || !n || !c || !e) { j->oom = 1; return; }
    *o = GVEC_AT(l->key_off, uint64_t, i);
    *n = GVEC_AT(l->key_len, uint32_t, i);
    *c = c0;
    *e = e0;
}

static void merge_lists(scan_job *j) {
    size_t na = j->a.key_off.n, nb = j->b.key_off.n, i = 0, k = 0;
    uint64_t n_cc = j->ccells.age.n, n_ent = j->ent_item_off.n;
    while ((i < na || k < nb) && !j->oom) {
        int c = i == na ? 1 : k == nb ? -1 : key_cmp(j, &j->a, i, &j->b, k);
        uint64_t cpos = i < na ? GVEC_AT(j->a.first, uint64_t, i) : n_cc;
        uint64_t epos = k < nb ? GVEC_AT(j->b.first, uint64_t, k) : n_ent;
        if (c < 0) {        /* context cells only */
            push_merged(j, &j->a, i, cpos, epos);
            i++;
        } else if (c > 0) { /* entities only */
            push_merged(j, &j->b, k, cpos, epos);
            k++;
        } else {
            push_merged(j, &j->a, i, cpos, epos);
            i++, k++;
        }
    }
}

/* ---- walking several stores ---------------------------------------------------- */

/* Bytewise key order (RocksDB's default comparator). */
static int raw_key_cmp(const unsigned char *x, size_t lx, const unsigned char *y, size_t ly) {
    int c = memcmp(x, y, lx < ly ? lx : ly);
    if (c) return c;
    return lx < ly ? -1 : lx > ly;
}

/* Index of the iterator at the smallest key (the lowest store on a tie),
 * or -1 when all are done; keys[i]/lens[i] cache iterator i's key. */
static long smallest(const unsigned char **keys, const size_t *lens, size_t n) {
    long best = -1;
    for (size_t i = 0; i < n; i++) {
        if (!keys[i]) continue;
        if (best < 0 || raw_key_cmp(keys[i], lens[i], keys[best], lens[best]) < 0) best = (long)i;
    }
    return best;
}

static void cache_key(iqp_store_iter *it, const unsigned char **key, size_t *len) {
    *key = iqp_store_iter_valid(it) ? iqp_store_iter_key(it, len) : NULL;
}

/* Calls fn for every key of cf from the job's feature prefix on, over all
 * of its stores in one key order (a k-way merge of one iterator per
 * store), until fn returns non-zero: equal keys of several stores come one
 * after another, and the key handlers sum them (their cells add up in the
 * window sums). One store: exactly iqp_store_scan_keys. 0, or -1 with err. */
static int walk_stores(scan_job *j, iqp_cf cf, iqp_store_key_fn fn, char *err, size_t errlen) {
    size_t n = j->n_stores;
    iqp_store_iter **its = calloc(n, sizeof *its);
    const unsigned char **keys = calloc(n, sizeof *keys);
    size_t *lens = calloc(n, sizeof *lens);
    int rc = its && keys && lens ? 0 : -1;
    if (rc < 0) snprintf(err, errlen, "out of memory");
    for (size_t i = 0; i < n && rc == 0; i++) {
        its[i] = iqp_store_iter_new(j->st[i], j->snap[i], cf, j->fprefix, j->fplen, err, errlen);
        if (!its[i]) rc = -1;
        else cache_key(its[i], &keys[i], &lens[i]);
    }
    for (long b; rc == 0 && (b = smallest(keys, lens, n)) >= 0;) {
        size_t vlen;
        const char *val = iqp_store_iter_value(its[b], &vlen);
        if (fn(j, keys[b], lens[b], val, vlen)) break;
        iqp_store_iter_next(its[b]);
        cache_key(its[b], &keys[b], &lens[b]);
    }
    for (size_t i = 0; its && i < n; i++)
        if (iqp_store_iter_free(its[i], err, errlen) < 0) rc = -1;
    free(its);
    free(keys);
    free(lens);
    return rc;
}

/* ---- one job ----------------------------------------------------------------- */

static void run_job(scan_job *j) {
    char err[256];
    const char *name = j->r->cfg.features[j->f].name;
    size_t nlen = strlen(name);
    j->fprefix[0] = (unsigned char)nlen;
    memcpy(j->fprefix + 1, name, nlen);
    j->fplen = 1 + nlen;
    if (walk_stores(j, IQP_CF_CONTEXTS, on_context_key, err, sizeof err) < 0) {
        snprintf(j->err, sizeof j->err, "%s", err);
        j->failed = 1;
        return;
    }
    j->cur_len = 0;
    if (!j->oom && walk_stores(j, IQP_CF_COUNTS, on_count_key, err, sizeof err) < 0) {
        snprintf(j->err, sizeof j->err, "%s", err);
        j->failed = 1;
        return;
    }
    atomic_fetch_add(j->progress, j->unreported);
    j->unreported = 0;
    if (!j->oom) merge_lists(j);
    if (j->oom) {
        snprintf(j->err, sizeof j->err, "out of memory scanning feature %s", name);
        j->failed = 1;
    }
}

static void job_worker(void *ud, size_t begin, size_t end, int worker) {
    (void)worker;
    scan_job *jobs = ud;
    for (size_t f = begin; f < end; f++) run_job(&jobs[f]);
}

/* ---- the result ------------------------------------------------------------------ */

/* Window geometry of r for as_of. */
static void set_geometry(iqp_refresh_result *r, int64_t as_of_ms) {
    const iqp_config *cfg = &r->cfg;
    r->as_of_ms = as_of_ms;
    r->nw = cfg->n_windows;
    r->nc = IQP_COUNTERS(cfg);
    r->nf = cfg->n_features;
    memset(r->gran_span, 0, sizeof r->gran_span);
    for (size_t g = 0; g < cfg->n_grans; g++) r->gran_last[g] = iqp_bucket_of(as_of_ms, cfg->gran_ms[g]);
    for (size_t w = 0; w < cfg->n_windows; w++) {
        const iqp_window_spec *ws = &cfg->windows[w];
        int64_t first, last;
        iqp_window_buckets(ws, as_of_ms, &first, &last);
        r->win_gran[w] = (uint32_t)ws->gran_index;
        r->win_nb[w] = (uint32_t)(last - first + 1);
        if (r->win_nb[w] > r->gran_span[ws->gran_index]) r->gran_span[ws->gran_index] = r->win_nb[w];
    }
}

/* Allocates the structure arrays for the jobs' totals (cells stay where
 * the jobs put them). */
static int alloc_structure(iqp_refresh_result *r) {
    size_t C = r->n_contexts, E = r->n_entities;
    r->ctx_feature = malloc((C + 1) * sizeof *r->ctx_feature);
    r->ctx_key_off = malloc((C + 1) * sizeof *r->ctx_key_off);
    r->ctx_key_len = malloc((C + 1) * sizeof *r->ctx_key_len);
    r->ctx_ent = malloc((C + 1) * sizeof *r->ctx_ent);
    r->ctx_cell = malloc((C + 1) * sizeof *r->ctx_cell);
    r->ent_ctx = malloc((E + 1) * sizeof *r->ent_ctx);
    r->ent_item_off = malloc((E + 1) * sizeof *r->ent_item_off);
    r->ent_item_len = malloc((E + 1) * sizeof *r->ent_item_len);
    r->ent_rank = malloc((E + 1) * sizeof *r->ent_rank);
    r->ent_cell = malloc((E + 1) * sizeof *r->ent_cell);
    r->bytes = malloc(r->n_bytes + 1);
    r->has_cells = 1;
    return r->ctx_feature && r->ctx_key_off && r->ctx_key_len && r->ctx_ent && r->ctx_cell &&
                   r->ent_ctx && r->ent_item_off && r->ent_item_len && r->ent_rank && r->ent_cell &&
                   r->bytes
               ? 0
               : -1;
}

/* Running totals while jobs are appended. */
typedef struct append_pos {
    size_t c, e, n, m, bytes;
} append_pos;

/* Moves a job's run of n cells into part p (no copy: the buffers change
 * owner, shrunk to size). */
static void take_run(iqp_cell_part *p, cell_run *run, uint64_t first, size_t n, size_t width) {
    p->first = first;
    p->n = n;
    p->age = run->age.v ? realloc(run->age.v, (n + 1) * sizeof *p->age) : calloc(1, sizeof *p->age);
    p->gran = run->gran.v ? realloc(run->gran.v, n + 1) : calloc(1, 1);
    p->val = run->val.v ? realloc(run->val.v, (n * width + 1) * sizeof *p->val) : calloc(1, sizeof *p->val);
    if (!p->age) p->age = run->age.v; /* a failed shrink keeps the old block */
    if (!p->gran) p->gran = run->gran.v;
    if (!p->val) p->val = run->val.v;
    run->age.v = run->gran.v = run->val.v = NULL;
    run->age.n = run->gran.n = run->val.n = 0;
}

/* Copies job j (feature f) into r at pos, shifting offsets, takes its
 * cells, and frees the rest. */
static void append_job(iqp_refresh_result *r, scan_job *j, append_pos *pos) {
    size_t nc = r->nc, C = j->merged.key_off.n, E = j->ent_item_off.n;
    size_t N = j->cells.age.n, M = j->ccells.age.n;
    if (j->bytes.n) memcpy(r->bytes + pos->bytes, j->bytes.v, j->bytes.n); /* an empty feature has no buffer */
    for (size_t i = 0; i < C; i++) {
        size_t c = pos->c + i;
        r->ctx_feature[c] = (uint32_t)j->f;
        r->ctx_key_off[c] = pos->bytes + GVEC_AT(j->merged.key_off, uint64_t, i);
        r->ctx_key_len[c] = GVEC_AT(j->merged.key_len, uint32_t, i);
        r->ctx_ent[c] = pos->e + GVEC_AT(j->merged_ent, uint64_t, i);
        r->ctx_cell[c] = pos->m + GVEC_AT(j->merged_cells, uint64_t, i);
        size_t e_end = i + 1 < C ? GVEC_AT(j->merged_ent, uint64_t, i + 1) : E;
        for (size_t e = GVEC_AT(j->merged_ent, uint64_t, i); e < e_end; e++)
            r->ent_ctx[pos->e + e] = (uint32_t)c;
    }
    for (size_t e = 0; e < E; e++) {
        r->ent_item_off[pos->e + e] = pos->bytes + GVEC_AT(j->ent_item_off, uint64_t, e);
        r->ent_item_len[pos->e + e] = GVEC_AT(j->ent_item_len, uint32_t, e);
        r->ent_cell[pos->e + e] = pos->n + GVEC_AT(j->ent_cell, uint64_t, e);
    }
    take_run(&r->cells[j->f], &j->cells, pos->n, N, nc);
    take_run(&r->ctx_cells[j->f], &j->ccells, pos->m, M, 1);
    pos->c += C, pos->e += E, pos->n += N, pos->m += M, pos->bytes += j->bytes.n;
    job_free(j);
}

static void rank_worker(void *ud, size_t begin, size_t end, int worker) {
    (void)worker;
    iqp_refresh_rank_items(ud, begin, end);
}

/* Sums the jobs' sizes and stats into r; -1 with err when a job failed or
 * an index would not fit its 32-bit field. */
static int total_jobs(iqp_refresh_result *r, scan_job *jobs, char *err, size_t errlen) {
    for (size_t f = 0; f < r->nf; f++) {
        scan_job *j = &jobs[f];
        if (j->failed) { snprintf(err, errlen, "%s", j->err); return -1; }
        r->feat_ctx[f] = r->n_contexts;
        r->n_contexts += j->merged.key_off.n;
        r->n_entities += j->ent_item_off.n;
        r->n_cells += j->cells.age.n;
        r->n_ctx_cells += j->ccells.age.n;
        r->n_bytes += j->bytes.n;
        r->stats.keys_scanned += j->keys;
        r->stats.ctx_keys_scanned += j->ctx_keys;
        r->stats.bad_keys += j->bad;
    }
    r->feat_ctx[r->nf] = r->n_contexts;
    if (r->n_contexts >= UINT32_MAX || r->n_entities >= UINT32_MAX) {
        snprintf(err, errlen, "refresh: more than 2^32 contexts or entities in one snapshot");
        return -1;
    }
    return 0;
}

/* -1 with err unless every store has the layout of the first (their
 * keys and counters would not mean the same). */
static int same_layouts(iqp_store *const *st, size_t n, char *err, size_t errlen) {
    char *first = iqp_config_layout_json(iqp_store_config(st[0]));
    int rc = first ? 0 : -1;
    if (!first) snprintf(err, errlen, "out of memory");
    for (size_t i = 1; i < n && rc == 0; i++) {
        char *other = iqp_config_layout_json(iqp_store_config(st[i]));
        if (!other || strcmp(first, other) != 0) {
            snprintf(err, errlen, "refresh: store %zu of %zu has another layout than store 1: "
                     "stores are summed only under one config", i + 1, n);
            rc = -1;
        }
        free(other);
    }
    free(first);
    return rc;
}

/* The snapshots to read: snaps[i], or one taken here into own[i]. */
static const iqp_store_snapshot **take_snapshots(iqp_store *const *st, const iqp_store_snapshot *const *snaps,
                                                 size_t n, iqp_store_snapshot **own) {
    const iqp_store_snapshot **use = calloc(n, sizeof *use);
    if (!use) return NULL;
    for (size_t i = 0; i < n; i++) {
        own[i] = snaps && snaps[i] ? NULL : iqp_store_snapshot_new(st[i]);
        use[i] = own[i] ? own[i] : snaps ? snaps[i] : NULL;
    }
    return use;
}

static void release_snapshots(iqp_store *const *st, size_t n, iqp_store_snapshot **own) {
    for (size_t i = 0; own && i < n; i++)
        if (own[i]) iqp_store_snapshot_free(st[i], own[i]);
    free(own);
}

int iqp_refresh_scan_many(iqp_store *const *st, const iqp_store_snapshot *const *snaps, size_t n,
                          const iqp_refresh_params *p, iqp_refresh_result **out, char *err,
                          size_t errlen) {
    double t0 = iqp_mono_seconds();
    *out = NULL;
    if (n == 0) { snprintf(err, errlen, "refresh: no store"); return -1; }
    if (same_layouts(st, n, err, errlen) < 0) return -1;
    iqp_refresh_result *r = calloc(1, sizeof *r);
    if (!r) { snprintf(err, errlen, "out of memory"); return -1; }
    r->cfg = *iqp_store_config(st[0]);
    set_geometry(r, p->as_of_ms);
    iqp_store_snapshot **own = calloc(n, sizeof *own);
    const iqp_store_snapshot **use = own ? take_snapshots(st, snaps, n, own) : NULL;
    scan_job *jobs = calloc(r->nf + 1, sizeof *jobs);
    _Atomic uint64_t progress;
    atomic_init(&progress, 0);
    if (!jobs || !use) { snprintf(err, errlen, "out of memory"); goto fail; }
    for (size_t f = 0; f < r->nf; f++) {
        job_init(&jobs[f]);
        jobs[f].r = r, jobs[f].st = st, jobs[f].snap = use, jobs[f].n_stores = n, jobs[f].f = f;
        jobs[f].progress = &progress;
    }
    iqp_pool_progress prog = {p->progress, p->progress_ud, "scan", &progress, 0};
    iqp_pool_run(p->n_threads, r->nf, 1, job_worker, jobs, &prog);
    if (total_jobs(r, jobs, err, errlen) < 0) goto fail;
    if (alloc_structure(r) < 0) { snprintf(err, errlen, "out of memory for %zu cells", r->n_cells); goto fail; }
    append_pos pos = {0, 0, 0, 0, 0};
    for (size_t f = 0; f < r->nf; f++) append_job(r, &jobs[f], &pos);
    r->ctx_ent[r->n_contexts] = r->n_entities;
    r->ctx_cell[r->n_contexts] = r->n_ctx_cells;
    r->ent_cell[r->n_entities] = r->n_cells;
    iqp_pool_run(p->n_threads, r->n_contexts, 256, rank_worker, r, NULL);
    r->stats.cells = r->n_cells;
    r->stats.ctx_cells = r->n_ctx_cells;
    r->stats.contexts = r->n_contexts;
    r->stats.entities = r->n_entities;
    r->stats.scan_s = iqp_mono_seconds() - t0;
    free(jobs);
    free(use);
    release_snapshots(st, n, own);
    *out = r;
    return 0;
fail:
    if (jobs)
        for (size_t f = 0; f < r->nf; f++) job_free(&jobs[f]);
    free(jobs);
    free(use);
    release_snapshots(st, n, own);
    iqp_refresh_free(r);
    return -1;
}

int iqp_refresh_scan(iqp_store *st, const iqp_store_snapshot *snap, const iqp_refresh_params *p,
                     iqp_refresh_result **out, char *err, size_t errlen) {
    return iqp_refresh_scan_many(&st, &snap, 1, p, out, err, errlen);
}

/* store.c -- RocksDB wiring for iqp (see store.h for what lives where).
 *
 * Open: the five column families (RocksDB's mandatory "default" is kept
 * empty) get their own options: counts and contexts carry the counter merge
 * operator and the bucket-expiry compaction filter; dedup carries a bloom
 * filter (most lookups are misses) and the marker-expiry filter; meta is
 * plain. A new store records the layout JSON in meta; an existing one must
 * match the running config's layout.
 *
 * The compaction filters read the watermark from this struct (an atomic,
 * advanced by every committed batch), so expiry follows event time. They
 * also drop counter cells that sum to zero (a move of an action count
 * within one batch folds away, across batches it leaves a zero cell), so a
 * compacted store holds the same keys whatever the flush sizes were.
 */
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "aggregator/cells.h"
#include "aggregator/window.h"
#include "store/counters.h"

static const char *cf_names[] = {"default", "counts", "contexts", "dedup", "meta", "pending"};
#define N_CF_HANDLES 6 /* default + IQP_CF__COUNT */

/* One compaction filter's context: which kind of cell it expires. */
typedef struct expiry_filter {
    struct iqp_store *st;
    int is_dedup;
} expiry_filter;

struct iqp_store {
    rocksdb_t *db;
    rocksdb_options_t *db_opts;
    rocksdb_options_t *cf_opts[N_CF_HANDLES];
    rocksdb_column_family_handle_t *cf[N_CF_HANDLES];
    rocksdb_compactionfilter_t *filters[2];
    expiry_filter filter_state[2];
    rocksdb_block_based_table_options_t *dedup_table;
    rocksdb_filterpolicy_t *bloom; /* owned by dedup_table once set */
    rocksdb_readoptions_t *ro;
    rocksdb_writeoptions_t *wo;
    iqp_config cfg;
    _Atomic int64_t watermark_ms;
    int read_only;
    char *dir;
};

struct iqp_store_batch {
    iqp_store *st;                /* whose column family handles it uses */
    rocksdb_writebatch_t *wb;
    int64_t watermark_ms;
    int has_watermark;
    unsigned char vec_buf[8 * IQP_MAX_COUNTERS];
};

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto fail; } while (0)

static rocksdb_column_family_handle_t *cf_handle(const iqp_store *st, iqp_cf cf) {
    return st->cf[cf + 1];
}

/* ---- compaction filters -------------------------------------------------- */

static unsigned char expiry_filter_fn(void *state, int level, const char *key, size_t klen,
                                      const char *val, size_t vlen, char **new_val,
                                      size_t *new_len, unsigned char *changed) {
    (void)level, (void)new_val, (void)new_len, (void)changed;
    expiry_filter *f = state;
    int64_t wm = atomic_load(&f->st->watermark_ms);
    if (wm == INT64_MIN) return 0;
    if (f->is_dedup) {
        iqp_marker m;
        return iqp_marker_decode(val, vlen, &m) == 0 &&
               iqp_marker_forgotten(&m, wm, f->st->cfg.dedup_horizon_ms);
    }
    if (iqp_counters_all_zero(val, vlen)) return 1; /* reads as absent anyway */
    int gi;
    int64_t bucket;
    if (iqp_cells_key_bucket((const unsigned char *)key, klen, &gi, &bucket) < 0) return 0;
    if (gi < 0 || (size_t)gi >= f->st->cfg.n_grans) return 0;
    return bucket < iqp_retention_first_bucket(&f->st->cfg, gi, wm);
}

static const char *expiry_filter_name(void *state) {
    return ((expiry_filter *)state)->is_dedup ? "iqp.dedup_expiry" : "iqp.bucket_expiry";
}

static void no_destructor(void *state) { (void)state; }

/* ---- options ------------------------------------------------------------- */

static void configure_cf_options(iqp_store *st) {
    rocksdb_mergeoperator_t *merge = NULL;
    for (int i = 0; i < N_CF_HANDLES; i++) {
        st->cf_opts[i] = rocksdb_options_create();
        rocksdb_options_set_compression(st->cf_opts[i], rocksdb_lz4_compression);
        rocksdb_options_set_write_buffer_size(st->cf_opts[i], 64u << 20);
    }
    for (int k = 0; k < 2; k++) {
        st->filter_state[k].st = st;
        st->filter_state[k].is_dedup = k;
        st->filters[k] = rocksdb_compactionfilter_create(&st->filter_state[k], no_destructor,
                                                         expiry_filter_fn, expiry_filter_name);
    }
    for (int cf = IQP_CF_COUNTS; cf <= IQP_CF_CONTEXTS; cf++) {
        merge = iqp_counters_merge_operator();
        rocksdb_options_set_merge_operator(st->cf_opts[cf + 1], merge);
        rocksdb_options_set_compaction_filter(st->cf_opts[cf + 1], st->filters[0]);
    }
    rocksdb_options_set_compaction_filter(st->cf_opts[IQP_CF_DEDUP + 1], st->filters[1]);
    st->dedup_table = rocksdb_block_based_options_create();
    st->bloom = rocksdb_filterpolicy_create_bloom_full(10);
    rocksdb_block_based_options_set_filter_policy(st->dedup_table, st->bloom);
    rocksdb_options_set_block_based_table_factory(st->cf_opts[IQP_CF_DEDUP + 1], st->dedup_table);
}

static int store_exists(const char *dir) {
    char path[PATH_MAX];
    struct stat sb;
    snprintf(path, sizeof path, "%s/CURRENT", dir);
    return stat(path, &sb) == 0;
}

/* ---- layout and watermark ------------------------------------------------ */

static int put_meta_now(iqp_store *st, const char *key, const void *val, size_t vlen, char *err,
                        size_t errlen) {
    char *rerr = NULL;
    rocksdb_put_cf(st->db, st->wo, cf_handle(st, IQP_CF_META), key, strlen(key), val, vlen, &rerr);
    if (rerr) {
        snprintf(err, errlen, "cannot write to store %s: %s", st->dir, rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

/* Checks (or, for a new store, records) the layout. */
static int check_layout(iqp_store *st, const iqp_config *cfg, int is_new, char *err, size_t errlen) {
    char *stored = NULL;
    size_t slen = 0;
    int rc = iqp_store_get_meta(st, "layout", &stored, &slen);
    if (rc < 0) { snprintf(err, errlen, "cannot read store %s", st->dir); return -1; }
    if (rc == 0) {
        if (!is_new || st->read_only) {
            snprintf(err, errlen, "%s is not an iqp store (no layout record)", st->dir);
            return -1;
        }
        char *layout = iqp_config_layout_json(cfg);
        int prc = put_meta_now(st, "layout", layout, strlen(layout), err, errlen);
        free(layout);
        st->cfg = *cfg;
        return prc;
    }
    char *text = strndup(stored, slen);
    free(stored);
    int result = 0;
    if (cfg) {
        char diff[1024];
        int d = iqp_config_layout_diff(text, cfg, diff, sizeof diff);
        if (d != 0) {
            snprintf(err, errlen, "config does not match the store %s: %s", st->dir, diff);
            result = -1;
        }
        st->cfg = *cfg;
    } else {
        iqp_config_defaults(&st->cfg);
        result = iqp_config_parse(&st->cfg, text, "store layout", err, errlen);
    }
    free(text);
    return result;
}

static int load_watermark(iqp_store *st) {
    char *val = NULL;
    size_t vlen = 0;
    int rc = iqp_store_get_meta(st, "watermark", &val, &vlen);
    int64_t wm = INT64_MIN;
    if (rc == 1 && vlen == 8) memcpy(&wm, val, 8);
    free(val);
    atomic_store(&st->watermark_ms, wm);
    return rc < 0 ? -1 : 0;
}

/* ---- open / close -------------------------------------------------------- */

/* Read-only open of the column families that exist: a store written by an
 * older iqp may lack "pending" (added with the publisher); its handle stays
 * NULL and reads of it find nothing. */
static rocksdb_t *open_read_only(iqp_store *st, char **rerr) {
    size_t n_have = 0;
    char **have = rocksdb_list_column_families(st->db_opts, st->dir, &n_have, rerr);
    if (!have) return NULL;
    const char *names[N_CF_HANDLES];
    const rocksdb_options_t *opts[N_CF_HANDLES];
    rocksdb_column_family_handle_t *handles[N_CF_HANDLES];
    int slot[N_CF_HANDLES], n = 0;
    for (int i = 0; i < N_CF_HANDLES; i++)
        for (size_t j = 0; j < n_have; j++)
            if (strcmp(have[j], cf_names[i]) == 0) {
                slot[n] = i;
                names[n] = cf_names[i];
                opts[n++] = st->cf_opts[i];
                break;
            }
    rocksdb_list_column_families_destroy(have, n_have);
    rocksdb_t *db = rocksdb_open_for_read_only_column_families(st->db_opts, st->dir, n, names,
                                                               opts, handles, 0, rerr);
    if (db)
        for (int k = 0; k < n; k++) st->cf[slot[k]] = handles[k];
    return db;
}

static int open_db(iqp_store *st, int is_new, char *err, size_t errlen) {
    char *rerr = NULL;
    st->db_opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(st->db_opts, !st->read_only);
    (void)is_new;
    rocksdb_options_set_create_missing_column_families(st->db_opts, !st->read_only);
    rocksdb_options_increase_parallelism(st->db_opts, 2);
    rocksdb_options_set_keep_log_file_num(st->db_opts, 3);
    configure_cf_options(st);
    if (st->read_only)
        st->db = open_read_only(st, &rerr);
    else
        st->db = rocksdb_open_column_families(st->db_opts, st->dir, N_CF_HANDLES, cf_names,
                                              (const rocksdb_options_t *const *)st->cf_opts,
                                              st->cf, &rerr);
    if (!st->db) {
        snprintf(err, errlen, "cannot open store %s: %s%s", st->dir, rerr ? rerr : "unknown error",
                 rerr && strstr(rerr, "lock") ? " (is another iqp process writing to it?)" : "");
        free(rerr);
        return -1;
    }
    return 0;
}

iqp_store *iqp_store_open(const char *dir, const iqp_config *cfg, iqp_store_mode mode, char *err,
                          size_t errlen) {
    iqp_store *st = calloc(1, sizeof *st);
    if (!st) { snprintf(err, errlen, "out of memory"); return NULL; }
    st->dir = strdup(dir);
    st->read_only = mode == IQP_STORE_READ_ONLY;
    st->ro = rocksdb_readoptions_create();
    st->wo = rocksdb_writeoptions_create();
    atomic_store(&st->watermark_ms, INT64_MIN);
    int is_new = !store_exists(dir);
    if (is_new && st->read_only) FAIL("no iqp store at %s", dir);
    if (!cfg && !st->read_only) FAIL("internal: a writable store needs a config");
    if (open_db(st, is_new, err, errlen) < 0) goto fail;
    if (check_layout(st, cfg, is_new, err, errlen) < 0) goto fail;
    if (load_watermark(st) < 0) FAIL("cannot read the watermark of store %s", dir);
    return st;
fail:
    iqp_store_close(st);
    return NULL;
}

/* Writes the memtables to SST files, so that the next open (often a
 * read-only lookup) does not replay the write-ahead log. */
static void flush_memtables(iqp_store *st) {
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    for (int cf = 0; cf < IQP_CF__COUNT; cf++) {
        char *rerr = NULL;
        rocksdb_flush_cf(st->db, fo, cf_handle(st, cf), &rerr);
        free(rerr); /* the WAL still holds the data: a failed flush loses nothing */
    }
    rocksdb_flushoptions_destroy(fo);
}

void iqp_store_close(iqp_store *st) {
    if (!st) return;
    if (st->db && !st->read_only && st->cf[IQP_CF__COUNT]) flush_memtables(st);
    if (st->db) {
        for (int i = 0; i < N_CF_HANDLES; i++)
            if (st->cf[i]) rocksdb_column_family_handle_destroy(st->cf[i]);
        rocksdb_close(st->db);
    }
    for (int i = 0; i < N_CF_HANDLES; i++)
        if (st->cf_opts[i]) rocksdb_options_destroy(st->cf_opts[i]);
    if (st->db_opts) rocksdb_options_destroy(st->db_opts);
    for (int k = 0; k < 2; k++)
        if (st->filters[k]) rocksdb_compactionfilter_destroy(st->filters[k]);
    if (st->dedup_table) rocksdb_block_based_options_destroy(st->dedup_table);
    rocksdb_readoptions_destroy(st->ro);
    rocksdb_writeoptions_destroy(st->wo);
    free(st->dir);
    free(st);
}

const iqp_config *iqp_store_config(const iqp_store *st) { return &st->cfg; }

int64_t iqp_store_watermark(const iqp_store *st) { return atomic_load(&st->watermark_ms); }

/* ---- dedup markers -------------------------------------------------------- */

int iqp_marker_forgotten(const iqp_marker *m, int64_t wm, int64_t horizon_ms) {
    if (wm == INT64_MIN || wm < INT64_MIN + horizon_ms) return 0;
    return m->written_wm < wm - horizon_ms;
}

static void put_i64le(unsigned char *out, int64_t v) {
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)((uint64_t)v >> (8 * i));
}

static int64_t get_i64le(const unsigned char *in) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)in[i] << (8 * i);
    return (int64_t)v;
}

void iqp_marker_encode(const iqp_marker *m, unsigned char out[IQP_MARKER_VALUE_LEN]) {
    put_i64le(out, m->ts);
    put_i64le(out + 8, m->written_wm);
}

int iqp_marker_decode(const void *val, size_t vlen, iqp_marker *m) {
    const unsigned char *v = val;
    if (vlen != IQP_MARKER_VALUE_LEN && vlen != 8) return -1;
    m->ts = get_i64le(v);
    m->written_wm = vlen == 8 ? m->ts : get_i64le(v + 8);
    return 0;
}

/* ---- batches ------------------------------------------------------------- */

iqp_store_batch *iqp_store_batch_new(iqp_store *st) {
    iqp_store_batch *b = calloc(1, sizeof *b);
    if (!b) abort();
    b->st = st;
    b->wb = rocksdb_writebatch_create();
    return b;
}

void iqp_store_batch_free(iqp_store_batch *b) {
    if (!b) return;
    rocksdb_writebatch_destroy(b->wb);
    free(b);
}

void iqp_store_batch_clear(iqp_store_batch *b) {
    rocksdb_writebatch_clear(b->wb);
    b->has_watermark = 0;
}

void iqp_store_batch_merge(iqp_store_batch *b, iqp_cf cf, const void *key, size_t klen,
                           const int64_t *vec, size_t n) {
    iqp_counters_encode(vec, n, b->vec_buf);
    rocksdb_writebatch_merge_cf(b->wb, cf_handle(b->st, cf), key, klen, (const char *)b->vec_buf,
                                8 * n);
}

void iqp_store_batch_put(iqp_store_batch *b, iqp_cf cf, const void *key, size_t klen,
                         const void *val, size_t vlen) {
    rocksdb_writebatch_put_cf(b->wb, cf_handle(b->st, cf), key, klen, val, vlen);
}

void iqp_store_batch_put_marker(iqp_store_batch *b, const unsigned char *key, size_t klen,
                                const iqp_marker *m) {
    unsigned char v[IQP_MARKER_VALUE_LEN];
    iqp_marker_encode(m, v);
    iqp_store_batch_put(b, IQP_CF_DEDUP, key, klen, v, sizeof v);
}

void iqp_store_batch_delete(iqp_store_batch *b, iqp_cf cf, const void *key, size_t klen) {
    rocksdb_writebatch_delete_cf(b->wb, cf_handle(b->st, cf), key, klen);
}

void iqp_store_batch_set_watermark(iqp_store_batch *b, int64_t watermark_ms) {
    b->watermark_ms = watermark_ms;
    b->has_watermark = 1;
}

size_t iqp_store_batch_bytes(const iqp_store_batch *b) {
    size_t n = 0;
    rocksdb_writebatch_data(b->wb, &n);
    return n;
}

int iqp_store_batch_commit(iqp_store *st, iqp_store_batch *b, char *err, size_t errlen) {
    char *rerr = NULL;
    if (st->read_only) {
        snprintf(err, errlen, "store %s is open read-only", st->dir);
        return -1;
    }
    if (b->has_watermark && b->watermark_ms > atomic_load(&st->watermark_ms))
        rocksdb_writebatch_put_cf(b->wb, cf_handle(st, IQP_CF_META), "watermark", 9,
                                  (const char *)&b->watermark_ms, 8);
    rocksdb_write(st->db, st->wo, b->wb, &rerr);
    if (rerr) {
        snprintf(err, errlen, "write to store %s failed: %s", st->dir, rerr);
        free(rerr);
        return -1;
    }
    if (b->has_watermark && b->watermark_ms > atomic_load(&st->watermark_ms))
        atomic_store(&st->watermark_ms, b->watermark_ms);
    return 0;
}

/* ---- reads --------------------------------------------------------------- */

int iqp_store_get_marker(iqp_store *st, const unsigned char *key, size_t klen, iqp_marker *m) {
    char *rerr = NULL;
    size_t vlen = 0;
    /* pinned: the value is read in place, not copied into a malloc'd buffer */
    rocksdb_pinnableslice_t *ps = rocksdb_get_pinned_cf(st->db, st->ro, cf_handle(st, IQP_CF_DEDUP),
                                                        (const char *)key, klen, &rerr);
    if (rerr) { free(rerr); return -1; }
    if (!ps) return 0;
    const char *val = rocksdb_pinnableslice_value(ps, &vlen);
    int found = val && iqp_marker_decode(val, vlen, m) == 0;
    rocksdb_pinnableslice_destroy(ps);
    return found ? 1 : 0;
}

int iqp_store_get_meta(iqp_store *st, const char *key, char **val, size_t *vlen) {
    char *rerr = NULL;
    *val = rocksdb_get_cf(st->db, st->ro, cf_handle(st, IQP_CF_META), key, strlen(key), vlen, &rerr);
    if (rerr) { free(rerr); return -1; }
    return *val ? 1 : 0;
}

/* Writes prefix || gran || bucket into buf; returns its length. */
static size_t bucket_key(unsigned char *buf, const unsigned char *prefix, size_t plen, int gi,
                         int64_t bucket) {
    memcpy(buf, prefix, plen);
    buf[plen] = (unsigned char)gi;
    uint64_t b = (uint64_t)bucket;
    for (int i = 0; i < 8; i++) buf[plen + 1 + i] = (unsigned char)(b >> (8 * (7 - i)));
    return plen + IQP_BUCKET_SUFFIX_LEN;
}

int iqp_store_scan_buckets(iqp_store *st, iqp_cf cf, const unsigned char *prefix, size_t plen,
                           int gran_index, int64_t first, int64_t last, size_t n,
                           iqp_store_bucket_fn fn, void *ud, char *err, size_t errlen) {
    return iqp_store_scan_buckets_at(st, NULL, cf, prefix, plen, gran_index, first, last, n, fn, ud,
                                     err, errlen);
}

int iqp_store_scan_buckets_at(iqp_store *st, const iqp_store_snapshot *snap, iqp_cf cf,
                              const unsigned char *prefix, size_t plen, int gran_index,
                              int64_t first, int64_t last, size_t n, iqp_store_bucket_fn fn,
                              void *ud, char *err, size_t errlen) {
    if (first < 0) first = 0;
    if (last > INT64_MAX - 1) last = INT64_MAX - 1; /* last + 1 below must not overflow */
    if (last < first) return 0;
    unsigned char *lo = malloc(2 * (plen + IQP_BUCKET_SUFFIX_LEN));
    if (!lo) abort();
    unsigned char *hi = lo + plen + IQP_BUCKET_SUFFIX_LEN;
    size_t klen = bucket_key(lo, prefix, plen, gran_index, first);
    bucket_key(hi, prefix, plen, gran_index, last + 1);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(ro, (const char *)hi, klen);
    if (snap) rocksdb_readoptions_set_snapshot(ro, (const rocksdb_snapshot_t *)snap);
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(st->db, ro, cf_handle(st, cf));
    int64_t vec[IQP_MAX_COUNTERS];
    for (rocksdb_iter_seek(it, (const char *)lo, klen); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        const char *v = rocksdb_iter_value(it, &vl);
        int gi;
        int64_t bucket;
        if (kl != klen || iqp_cells_key_bucket((const unsigned char *)k, kl, &gi, &bucket) < 0)
            continue;
        memset(vec, 0, sizeof vec);
        iqp_counters_add_encoded(vec, n, v, vl);
        fn(ud, bucket, vec, n);
    }
    char *rerr = NULL;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    free(lo);
    if (rerr) {
        snprintf(err, errlen, "read from store %s failed: %s", st->dir, rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

/* ---- snapshots and key scans ---------------------------------------------- */

iqp_store_snapshot *iqp_store_snapshot_new(iqp_store *st) {
    return (iqp_store_snapshot *)rocksdb_create_snapshot(st->db);
}

void iqp_store_snapshot_free(iqp_store *st, iqp_store_snapshot *snap) {
    if (snap) rocksdb_release_snapshot(st->db, (const rocksdb_snapshot_t *)snap);
}

int iqp_store_scan_keys(iqp_store *st, const iqp_store_snapshot *snap, iqp_cf cf,
                        const void *from, size_t flen, iqp_store_key_fn fn, void *ud, char *err,
                        size_t errlen) {
    if (!cf_handle(st, cf)) return 0; /* an older store without this column family */
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    if (snap) rocksdb_readoptions_set_snapshot(ro, (const rocksdb_snapshot_t *)snap);
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(st->db, ro, cf_handle(st, cf));
    if (from) rocksdb_iter_seek(it, from, flen);
    else rocksdb_iter_seek_to_first(it);
    for (; rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        const char *v = rocksdb_iter_value(it, &vl);
        if (fn(ud, (const unsigned char *)k, kl, v, vl)) break;
    }
    char *rerr = NULL;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    if (rerr) {
        snprintf(err, errlen, "read from store %s failed: %s", st->dir, rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

int iqp_store_scan_meta(iqp_store *st, const char *prefix, iqp_store_meta_fn fn, void *ud) {
    size_t plen = strlen(prefix);
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(st->db, st->ro, cf_handle(st, IQP_CF_META));
    for (rocksdb_iter_seek(it, prefix, plen); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl < plen || memcmp(k, prefix, plen) != 0) break;
        const char *v = rocksdb_iter_value(it, &vl);
        fn(ud, k, kl, v, vl);
    }
    char *rerr = NULL;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    if (rerr) { free(rerr); return -1; }
    return 0;
}

/* ---- maintenance --------------------------------------------------------- */

int iqp_store_compact(iqp_store *st, char *err, size_t errlen) {
    char *rerr = NULL;
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    rocksdb_compactoptions_t *co = rocksdb_compactoptions_create();
    rocksdb_compactoptions_set_bottommost_level_compaction(co, 2 /* kForce */);
    /* RocksDB's C filter sees plain values only, not merge operands: the
     * first pass folds operands into values at the bottom level, the
     * second lets the expiry filter see them. Background compactions do
     * the same over time. */
    for (int cf = 0; cf < IQP_CF__COUNT && !rerr; cf++) {
        rocksdb_flush_cf(st->db, fo, cf_handle(st, cf), &rerr);
        for (int pass = 0; pass < 2 && !rerr; pass++)
            rocksdb_compact_range_cf_opt(st->db, cf_handle(st, cf), co, NULL, 0, NULL, 0);
    }
    rocksdb_compactoptions_destroy(co);
    rocksdb_flushoptions_destroy(fo);
    if (rerr) {
        snprintf(err, errlen, "compaction of store %s failed: %s", st->dir, rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

uint64_t iqp_store_count_keys(iqp_store *st, iqp_cf cf) {
    uint64_t n = 0;
    if (!cf_handle(st, cf)) return 0;
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(st->db, st->ro, cf_handle(st, cf));
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) n++;
    rocksdb_iter_destroy(it);
    return n;
}

uint64_t iqp_store_disk_bytes(iqp_store *st) {
    DIR *d = opendir(st->dir);
    uint64_t total = 0;
    struct dirent *e;
    char path[PATH_MAX];
    struct stat sb;
    if (!d) return 0;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 4 || (strcmp(e->d_name + n - 4, ".sst") && strcmp(e->d_name + n - 4, ".log")))
            continue;
        snprintf(path, sizeof path, "%s/%s", st->dir, e->d_name);
        if (stat(path, &sb) == 0) total += (uint64_t)sb.st_size;
    }
    closedir(d);
    return total;
}

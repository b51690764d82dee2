/* store.c -- RocksDB wiring for iqp (see store.h for what lives where).
 *
 * Open: the five column families (RocksDB's mandatory "default" is kept
 * empty) get their own options: counts and contexts carry the counter merge
 * operator and the bucket-expiry compaction filter and compact universally
 * (tune_counter_cf); dedup carries a bloom filter (most lookups are
 * misses), the marker-expiry filter and its own level-0 trigger; meta is
 * plain. A new store records the layout JSON in meta; an existing one must
 * match the running config's layout.
 *
 * Creation and half-stores: a directory that holds any file RocksDB names
 * (CURRENT, MANIFEST-*, *.sst, *.log, ...) is an existing store, whole or
 * damaged, and is only ever opened, never created over: a store that lost
 * its CURRENT is refused with RocksDB's error instead of being silently
 * replaced by an empty one (RocksDB's create_if_missing would do that, and
 * later delete the orphaned SSTs). A store that lacks one of the four
 * column families iqp needs is refused before anything reads it, so no
 * read ever goes to a missing handle. Only an absent directory, or one
 * without RocksDB files, gets a new store, built complete (column
 * families and layout record) in a hidden sibling directory and renamed
 * into place: a reader sees no store or a whole one, never one without its
 * layout. Where the rename cannot be done (the directory is a mount point
 * or a symlink, holds other files, or its parent is read-only) the store
 * is built in place; a reader that comes in between is told the layout is
 * missing, and does not crash.
 *
 * RocksDB's info LOG is kept empty (level HEADER): librocksdb 7.8 as Debian
 * builds it has assertions on, and its info logger aborts the process
 * (WritableFileWriter::Append, "sync_without_flush_called_") on the first
 * line written after a line that failed, which is what a full disk does.
 * With the LOG silent, a full disk is an ordinary write error: the batch
 * fails, iqp exits 1, and every batch committed before it stays.
 *
 * The compaction filters read the watermark from this struct (an atomic,
 * advanced by every committed batch), so expiry follows event time. A
 * counts or contexts value packs the cells of one slot (cells.h,
 * counters.h); the filter rewrites it without the cells older than their
 * granularity's retention and those that sum to zero (a move of an action
 * count within one batch folds away, across batches it leaves a zero
 * cell), and removes the key when no cell is left, so a compacted store
 * holds the same keys and values whatever the flush sizes were. RocksDB's
 * C API copies a rewritten value after the filter returns and does not
 * free it, so the filter writes it into a buffer of its thread's own
 * (pthread key: freed when the thread exits), valid until its next call.
 *
 * Writes: a batch takes counter merges cell by cell (cell keys, cells.h)
 * and packs consecutive cells of one stored key into one merge operand;
 * the combiner sorts its drain by (stored key, granularity, bucket), so a
 * micro-batch writes one merge per (context, entity, slot).
 *
 * Counts by period: a new store keeps its counts in one column family per
 * period of 32 slots (periods.h; meta "layout/period_slots" records the
 * length), made when a batch first writes into it. The keys are the same
 * bytes as in one family, and a key's slot names its family, so:
 *   - a write goes to the family of its key's slot (batch_merge_routed; a
 *     bulk batch writes one table file per period it touches);
 *   - a read merges the families' iterators in key order (family_view,
 *     merged_iter.h), as of one snapshot: a window scan reads only the
 *     periods its slots cover, a walk reads all of them, and no value is
 *     ever in two families;
 *   - a period whose every granularity's retention has passed is dropped
 *     whole after a commit (drop_expired_periods), instead of waiting for
 *     compactions to filter its cells away.
 * Why: in one family a backfill's new days were rewritten as they moved
 * down through levels (or sorted runs) that held every older day, so each
 * 1M lines cost more as the store grew; a period's family holds only its
 * own days (README "Seventh round: what flattens the growth"). A store
 * made before keeps everything in "counts" (periods.slots 0), which every
 * read includes, so old stores read and write as they did.
 */
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/cells.h"
#include "model/window.h"
#include "store/counters.h"
#include "store/merged_iter.h"
#include "store/periods.h"

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
    rocksdb_block_based_table_options_t *counts_table; /* counts + contexts */
    rocksdb_cache_t *block_cache;  /* one LRU cache shared by every family */
    iqp_store_tuning tuning;       /* the config's "store" section (defaults when none) */
    rocksdb_readoptions_t *ro;
    rocksdb_writeoptions_t *wo;
    rocksdb_writeoptions_t *wo_sync; /* wo, and the WAL synced: an ingesting batch's commit */
    iqp_config cfg;
    _Atomic int64_t watermark_ms;
    int read_only;
    int made;             /* what this open created (made_kind), 0 when it existed */
    uint64_t commits;     /* batches committed since open */
    int scratch;          /* IQP_STORE_SCRATCH: nothing outlives the process */
    char *dir;
    /* bulk load (iqp_store_set_ingest; see "table-file ingestion" below) */
    size_t ingest_min_merges; /* 0: off; else counts merges of a batch this many or more are ingested */
    uint64_t ingest_seq;      /* the last batch ingested: the sentinel's value (0: none yet) */
    uint64_t ingests;         /* batches ingested by this open (the test hook counts them) */
    uint64_t ingested_bytes;  /* their table files' bytes */
    int ingest_failed;        /* a committed batch's file is not ingested: no more commits */
    /* The ingest gate ("table-file ingestion"): held by a writer from an
     * ingesting batch's commit to the end of its ingestion, and by every
     * snapshot, iterator without a snapshot and checkpoint this process
     * takes, only while taking it; torn (under the gate): an ingestion
     * failed after its commit, so no consistent view can be given. */
    pthread_mutex_t gate;
    int torn;
    const char *die_at;       /* IQP_TEST_DIE_AT (test hook), NULL when unset */
    /* Counts by period ("counts by period" below): the families
     * "counts@<period>" (periods.slots 0: the store keeps its counts in
     * "counts", as stores made before this layout do). */
    iqp_periods periods;
};

/* What creating a store made, so a failed run can take exactly that back. */
typedef enum { MADE_NOTHING = 0, MADE_DIR, MADE_FILES } made_kind;

/* What a store directory held when it was looked at. */
typedef enum { DIR_ABSENT, DIR_NO_STORE, DIR_HAS_STORE } dir_state;

/* One counts merge held for a table file: key at bulk.buf + off, then
 * its value. */
typedef struct bulk_entry {
    size_t off;
    uint32_t klen, vlen;
} bulk_entry;

struct iqp_store_batch {
    iqp_store *st;                /* whose column family handles it uses */
    rocksdb_writebatch_t *wb;
    int64_t watermark_ms;
    int has_watermark;
    /* the open group: consecutive cells of one stored key, one merge */
    int group_open;
    iqp_cf group_cf;
    int64_t group_slot;
    iqp_keybuf group_key;         /* the stored key */
    iqp_packed_writer group;      /* its packed value so far */
    size_t merges;                /* counter merges, open group included */
    /* bulk load: the counts merges held for a table file, in arrival order */
    iqp_buf bulk;                 /* key, value, key, value, ... */
    bulk_entry *bulk_e;
    size_t bulk_n, bulk_cap;
    char *route_err;              /* a period family could not be made: the commit fails with it */
};

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto fail; } while (0)

/* Formats a RocksDB error as "<what> <dir>: <rocksdb's text>", led by "no
 * space left on device: " when that is the cause. */
static void rocks_error(char *err, size_t errlen, const char *what, const char *dir,
                        const char *rerr) {
    int no_space = rerr && strstr(rerr, "No space left on device");
    snprintf(err, errlen, "%s%s %s: %s", no_space ? "no space left on device: " : "", what, dir,
             rerr ? rerr : "unknown error");
}

static rocksdb_column_family_handle_t *cf_handle(const iqp_store *st, iqp_cf cf) {
    return st->cf[cf + 1];
}

/* The counts family's reserved key of table-file ingestion (see
 * "table-file ingestion" below): it sorts after every count key, and no
 * reader sees it. */
static const char INGEST_SENTINEL[] = "\xff" "iqp.ingested";
#define INGEST_SENTINEL_LEN (sizeof INGEST_SENTINEL - 1)
#define INGEST_PENDING "ingest/pending"
#define PERIOD_SLOTS_KEY "layout/period_slots"

static int is_ingest_sentinel(const char *key, size_t klen) {
    return klen == INGEST_SENTINEL_LEN && memcmp(key, INGEST_SENTINEL, klen) == 0;
}

/* Read options for iterating cf (snap may be NULL): over counts, an upper
 * bound below the sentinel (a single 0xff byte: real keys start lower). */
static rocksdb_readoptions_t *iter_options(iqp_cf cf, const iqp_store_snapshot *snap) {
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    if (cf == IQP_CF_COUNTS) rocksdb_readoptions_set_iterate_upper_bound(ro, INGEST_SENTINEL, 1);
    if (snap) rocksdb_readoptions_set_snapshot(ro, (const rocksdb_snapshot_t *)snap);
    return ro;
}

/* ---- compaction filters -------------------------------------------------- */

static pthread_key_t filter_buf_key;
static pthread_once_t filter_buf_once = PTHREAD_ONCE_INIT;

static void free_filter_buf(void *p) {
    iqp_packed_writer_free(p);
    free(p);
}

static void make_filter_buf_key(void) {
    if (pthread_key_create(&filter_buf_key, free_filter_buf) != 0) abort();
}

/* This thread's buffer for rewritten values (see the top of this file). */
static iqp_packed_writer *filter_buf(void) {
    pthread_once(&filter_buf_once, make_filter_buf_key);
    iqp_packed_writer *w = pthread_getspecific(filter_buf_key);
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w || pthread_setspecific(filter_buf_key, w) != 0) abort();
    }
    return w;
}

/* Counts and contexts: keeps the value, rewrites it without its expired
 * and zero cells, or (returns 1) removes it when none is left. A value
 * that does not decode is kept as it is. */
static unsigned char expire_cells(const iqp_config *cfg, int64_t wm, const char *val, size_t vlen,
                                  char **new_val, size_t *new_len, unsigned char *changed) {
    int64_t first[IQP_MAX_GRANS];
    for (size_t g = 0; g < cfg->n_grans; g++) first[g] = iqp_retention_first_bucket(cfg, (int)g, wm);
    iqp_packed_writer *w = filter_buf();
    long dropped = iqp_packed_retain(val, vlen, first, cfg->n_grans, w);
    if (dropped <= 0) return 0;
    if (w->cells == 0) return 1;
    *new_val = (char *)w->buf;
    *new_len = w->len;
    *changed = 1;
    return 0;
}

static unsigned char expiry_filter_fn(void *state, int level, const char *key, size_t klen,
                                      const char *val, size_t vlen, char **new_val,
                                      size_t *new_len, unsigned char *changed) {
    (void)level;
    expiry_filter *f = state;
    if (is_ingest_sentinel(key, klen)) return 0;
    int64_t wm = atomic_load(&f->st->watermark_ms);
    if (wm == INT64_MIN) return 0;
    if (f->is_dedup) {
        iqp_marker m;
        return iqp_marker_decode(val, vlen, &m) == 0 &&
               iqp_marker_forgotten(&m, wm, f->st->cfg.dedup_horizon_ms);
    }
    return expire_cells(&f->st->cfg, wm, val, vlen, new_val, new_len, changed);
}

static const char *expiry_filter_name(void *state) {
    return ((expiry_filter *)state)->is_dedup ? "iqp.dedup_expiry" : "iqp.bucket_expiry";
}

static void no_destructor(void *state) { (void)state; }

/* ---- options ------------------------------------------------------------- */

/* Per-family options from the config's "store" section. The L0 trigger is
 * the lever that mattered (README "Tuning the store"): RocksDB's default of
 * 4 rewrote every counter cell into L1 about twice during a backfill; at 8
 * the CPU of a 30-day backfill fell by a fifth, and a higher trigger gained
 * nothing more. Slowdown and stop triggers keep their distance above it.
 * Under universal compaction (the counter families' default, below) the
 * trigger counts sorted runs, of which each L0 file is one. */
static void set_l0_triggers(rocksdb_options_t *o, size_t trigger) {
    int l0 = (int)trigger;
    rocksdb_options_set_level0_file_num_compaction_trigger(o, l0);
    rocksdb_options_set_level0_slowdown_writes_trigger(o, l0 + 20);
    rocksdb_options_set_level0_stop_writes_trigger(o, l0 + 36);
}

static void tune_cf(rocksdb_options_t *o, const iqp_store_tuning *t) {
    rocksdb_options_set_compression(o, rocksdb_lz4_compression);
    rocksdb_options_set_write_buffer_size(o, t->write_buffer_mb << 20);
    set_l0_triggers(o, t->l0_compaction_trigger);
}

/* Compaction of the counter families (counts, contexts) as the store grows
 * (README "Tuning the store"; issue 15 item 7). Keys are context-major with
 * the slot last, so every flushed memtable and every ingested table file
 * of a backfill spans the whole key space: under level compaction each
 * L0 -> L1 compaction rewrote all of L1, and a backfill's CPU per line
 * rose with the store (0.61 of the first part's rate per CPU-second at the
 * fourth of 1M lines each). Universal (tiered) compaction merges sorted
 * runs of similar size instead, so a byte is rewritten a few times on its
 * way to the largest run, not once per L0 compaction. Size ratio 1 and
 * size amplification 200% are RocksDB's defaults, written down: the
 * expiry filter drops old cells when a run is rewritten, and the full
 * compaction that size amplification asks for applies it to the oldest
 * run. A store written under level compaction opens under universal (each
 * level is one sorted run) and back. Measured and not kept (README
 * "Benchmark", bench/backfill_growth): size amplification 400%, the
 * similar-size stop style, incremental compaction, no compression, and
 * waiting for compactions at close (or for the running ones only, starting
 * no new one) -- none changed how a part's CPU grows
 * with the store. Nor did a key led by its 32-day period (time-major, in
 * this one family): new data is still rewritten as it moves down through
 * levels or runs that hold every older period. One column family per
 * period did flatten it: "counts by period" (top of this file). */
static void tune_counter_cf(rocksdb_options_t *o, const iqp_store_tuning *t) {
    if (!t->counts_universal) return;
    rocksdb_options_set_compaction_style(o, rocksdb_universal_compaction);
    rocksdb_universal_compaction_options_t *u = rocksdb_universal_compaction_options_create();
    rocksdb_universal_compaction_options_set_size_ratio(u, 1);
    rocksdb_universal_compaction_options_set_max_size_amplification_percent(u, 200);
    rocksdb_options_set_universal_compaction_options(o, u);
    rocksdb_universal_compaction_options_destroy(u);
}

static void configure_cf_options(iqp_store *st) {
    rocksdb_mergeoperator_t *merge = NULL;
    st->block_cache = rocksdb_cache_create_lru(st->tuning.block_cache_mb << 20);
    for (int i = 0; i < N_CF_HANDLES; i++) {
        st->cf_opts[i] = rocksdb_options_create();
        tune_cf(st->cf_opts[i], &st->tuning);
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
        tune_counter_cf(st->cf_opts[cf + 1], &st->tuning);
    }
    rocksdb_options_set_compaction_filter(st->cf_opts[IQP_CF_DEDUP + 1], st->filters[1]);
    /* The dedup family has its own L0 trigger (default 2, not 8): a marker is
     * a hash, so every flush spans the whole key space, and every marker Get
     * probes one bloom filter per L0 file -- with 8 files of random hashes
     * those probes were cache misses that grew with the store. Markers older
     * than dedup_horizon are dropped by the marker filter at compaction, so
     * compacting level 0 early rewrites little (a backfill's L1 holds about
     * one horizon of markers) and keeps the files a Get probes few. */
    set_l0_triggers(st->cf_opts[IQP_CF_DEDUP + 1], st->tuning.dedup_l0_compaction_trigger);
    /* Its own memtable size too (default 8 MiB, not 64): a batch's markers
     * go in sorted, but they are random hashes, so each insert walks the
     * skiplist to a node far from the last one's. A 64 MiB memtable of
     * markers (~1M of them) outgrows the L3 cache and every step of that
     * walk is a cache miss (measured: the WriteBatch's memtable inserts
     * were 14% of a 30-day backfill's CPU; at 8 MiB, a third of that). */
    rocksdb_options_set_write_buffer_size(st->cf_opts[IQP_CF_DEDUP + 1],
                                          st->tuning.dedup_write_buffer_mb << 20);
    st->counts_table = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(st->counts_table, st->block_cache);
    for (int i = 0; i < N_CF_HANDLES; i++)
        if (i != IQP_CF_DEDUP + 1)
            rocksdb_options_set_block_based_table_factory(st->cf_opts[i], st->counts_table);
    st->dedup_table = rocksdb_block_based_options_create();
    st->bloom = rocksdb_filterpolicy_create_bloom_full(10);
    rocksdb_block_based_options_set_filter_policy(st->dedup_table, st->bloom);
    rocksdb_block_based_options_set_block_cache(st->dedup_table, st->block_cache);
    rocksdb_options_set_block_based_table_factory(st->cf_opts[IQP_CF_DEDUP + 1], st->dedup_table);
    /* Most events have no marker yet: a bloom filter over the memtable's
     * whole keys answers those Gets without a skiplist search (measured:
     * -6% CPU of a 30-day backfill; the table files have theirs above). */
    rocksdb_options_set_memtable_prefix_bloom_size_ratio(st->cf_opts[IQP_CF_DEDUP + 1], 0.1);
    rocksdb_options_set_memtable_whole_key_filtering(st->cf_opts[IQP_CF_DEDUP + 1], 1);
}

/* ---- the store directory ------------------------------------------------ */

/* A name RocksDB gives one of its files. */
static int is_rocksdb_file(const char *name) {
    static const char *const exact[] = {"CURRENT", "IDENTITY", "LOCK", "LOG"};
    static const char *const prefix[] = {"MANIFEST-", "OPTIONS-", "LOG.old."};
    static const char *const numbered[] = {".sst", ".log", ".blob", ".ldb", ".dbtmp"};
    for (size_t i = 0; i < sizeof exact / sizeof *exact; i++)
        if (strcmp(name, exact[i]) == 0) return 1;
    for (size_t i = 0; i < sizeof prefix / sizeof *prefix; i++)
        if (strncmp(name, prefix[i], strlen(prefix[i])) == 0) return 1;
    size_t digits = strspn(name, "0123456789");
    for (size_t i = 0; digits && i < sizeof numbered / sizeof *numbered; i++)
        if (strcmp(name + digits, numbered[i]) == 0) return 1;
    return 0;
}

static int inspect_dir(const char *dir, dir_state *state, char *err, size_t errlen) {
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) {
            *state = DIR_ABSENT;
            return 0;
        }
        snprintf(err, errlen, "cannot open store %s: %s", dir, strerror(errno));
        return -1;
    }
    struct dirent *e;
    *state = DIR_NO_STORE;
    while ((e = readdir(d)))
        if (is_rocksdb_file(e->d_name)) {
            *state = DIR_HAS_STORE;
            break;
        }
    closedir(d);
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *dir) { nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* Removes the RocksDB files of dir, nothing else. */
static void remove_rocksdb_files(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[PATH_MAX];
    if (!d) return;
    while ((e = readdir(d)))
        if (is_rocksdb_file(e->d_name)) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
}

static void unmake_store(const char *dir, int made) {
    char ingest[PATH_MAX];
    if (made == MADE_DIR) remove_tree(dir);
    if (made != MADE_FILES) return;
    remove_rocksdb_files(dir);
    snprintf(ingest, sizeof ingest, "%s/ingest", dir);
    rmdir(ingest); /* table-file ingestion's folder, empty before a commit */
}

/* Makes "<parent>/.<name>.iqp-new-<pid>-<n>", a new directory beside dir
 * (same file system, so rename works) with dir's mode when dir exists, else
 * the mode RocksDB would give it (0777 less the umask). 0, or -1. */
static int make_sibling(const char *dir, char *out, size_t outlen) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t base = n;
    while (base > 0 && dir[base - 1] != '/') base--;
    if (n == base) return -1;
    for (int attempt = 0; attempt < 100; attempt++) {
        int w = snprintf(out, outlen, "%.*s.%.*s.iqp-new-%ld-%d", (int)base, dir,
                         (int)(n - base), dir + base, (long)getpid(), attempt);
        if (w < 0 || (size_t)w >= outlen) return -1;
        if (mkdir(out, 0777) == 0) {
            struct stat sb;
            if (stat(dir, &sb) == 0) chmod(out, sb.st_mode & 07777);
            return 0;
        }
        if (errno != EEXIST) return -1;
    }
    return -1;
}

/* Makes the rename of a new store durable (path: a file in the parent). */
static void sync_parent(const char *path) {
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", path);
    char *slash = strrchr(parent, '/');
    if (slash) *slash = '\0';
    int fd = open(slash ? parent : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* ---- layout and watermark ------------------------------------------------ */

static int put_meta_now(iqp_store *st, const char *key, const void *val, size_t vlen, char *err,
                        size_t errlen) {
    char *rerr = NULL;
    rocksdb_put_cf(st->db, st->wo, cf_handle(st, IQP_CF_META), key, strlen(key), val, vlen, &rerr);
    if (rerr) {
        rocks_error(err, errlen, "cannot write to store", st->dir, rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

/* Checks the stored layout against cfg, or (cfg NULL) adopts it. */
static int check_layout(iqp_store *st, const iqp_config *cfg, char *err, size_t errlen) {
    char *stored = NULL;
    size_t slen = 0;
    int rc = iqp_store_get_meta(st, "layout", &stored, &slen);
    if (rc < 0) { snprintf(err, errlen, "cannot read store %s", st->dir); return -1; }
    if (rc == 0) {
        snprintf(err, errlen, "%s is not an iqp store (no layout record)", st->dir);
        return -1;
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
        char src[PATH_MAX + 32];
        snprintf(src, sizeof src, "the layout of store %s", st->dir);
        iqp_config_defaults(&st->cfg);
        result = iqp_config_parse(&st->cfg, text, src, err, errlen);
        size_t n = result < 0 ? strlen(err) : errlen;
        if (n + 1 < errlen && strstr(err, "layout_version"))
            snprintf(err + n, errlen - n, "; it was written by another iqp version: rebuild it, "
                                          "counting the event logs into a new store with `iqp backfill`");
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

static int recover_ingest(iqp_store *st, char *err, size_t errlen);
static int ingest_pending(iqp_store *st);

static iqp_store *store_alloc(const char *dir, int read_only, const iqp_config *cfg) {
    iqp_store *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    if (cfg) {
        st->tuning = cfg->store;
    } else {
        iqp_config defaults;
        iqp_config_defaults(&defaults);
        st->tuning = defaults.store;
    }
    st->dir = strdup(dir);
    st->read_only = read_only;
    st->ro = rocksdb_readoptions_create();
    st->wo = rocksdb_writeoptions_create();
    st->wo_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(st->wo_sync, 1);
    atomic_store(&st->watermark_ms, INT64_MIN);
    pthread_mutex_init(&st->gate, NULL);
    iqp_periods_init(&st->periods);
    return st;
}

static void set_db_options(iqp_store *st, int create) {
    st->db_opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(st->db_opts, create);
    rocksdb_options_set_error_if_exists(st->db_opts, create);
    rocksdb_options_set_create_missing_column_families(st->db_opts, !st->read_only);
    rocksdb_options_increase_parallelism(st->db_opts, (int)st->tuning.background_jobs);
    rocksdb_options_set_max_background_jobs(st->db_opts, (int)st->tuning.background_jobs);
    rocksdb_options_set_keep_log_file_num(st->db_opts, 3);
    if (!st->read_only) rocksdb_options_enable_statistics(st->db_opts);
    rocksdb_options_set_info_log_level(st->db_opts, 5 /* HEADER: see the top of this file */);
    configure_cf_options(st);
}

/* The period families an existing store holds (their periods), found by
 * list_families for open_db. */
typedef struct period_list {
    int64_t *v;
    size_t n;
} period_list;

/* Marks in have[] the column families the existing store at st->dir holds,
 * and lists its period families in *pl (malloc'd); -1 with err when
 * RocksDB cannot read it (CURRENT or the MANIFEST is missing or damaged)
 * or one that iqp needs is missing. Reads only. */
static int list_families(iqp_store *st, int have[N_CF_HANDLES], period_list *pl, char *err, size_t errlen) {
    char *rerr = NULL;
    size_t n_have = 0;
    char **names = rocksdb_list_column_families(st->db_opts, st->dir, &n_have, &rerr);
    if (rerr || !names) {
        if (names) rocksdb_list_column_families_destroy(names, n_have);
        rocks_error(err, errlen, "cannot open store", st->dir, rerr);
        size_t len = strlen(err);
        snprintf(err + len, errlen - len, " (the directory holds RocksDB files but not a whole "
                                          "store; it was left as it is)");
        free(rerr);
        return -1;
    }
    for (int i = 0; i < N_CF_HANDLES; i++) {
        have[i] = 0;
        for (size_t j = 0; j < n_have; j++) have[i] |= strcmp(names[j], cf_names[i]) == 0;
    }
    pl->v = malloc(n_have * sizeof *pl->v);
    if (!pl->v) abort();
    pl->n = 0;
    for (size_t j = 0; j < n_have; j++)
        if (iqp_periods_parse_name(names[j], &pl->v[pl->n])) pl->n++;
    rocksdb_list_column_families_destroy(names, n_have);
    for (int cf = IQP_CF_COUNTS; cf <= IQP_CF_META; cf++)
        if (!have[cf + 1]) {
            snprintf(err, errlen, "%s is not a complete iqp store: it has no column family '%s' "
                                  "(it was left as it is)", st->dir, cf_names[cf + 1]);
            return -1;
        }
    return 0;
}

/* Opens the column families that exist (read-only, or read-write, which
 * then has all of N_CF_HANDLES: missing ones are made) and the period
 * families of pl: a store written by an older iqp may lack "pending"
 * (added with the publisher); read-only, its handle stays NULL and reads
 * of it find nothing. */
static rocksdb_t *open_families(iqp_store *st, const int have[N_CF_HANDLES], const period_list *pl,
                                char **rerr) {
    size_t cap = N_CF_HANDLES + pl->n, n = 0;
    const char **names = malloc(cap * sizeof *names);
    const rocksdb_options_t **opts = malloc(cap * sizeof *opts);
    rocksdb_column_family_handle_t **handles = calloc(cap, sizeof *handles);
    char (*pnames)[64] = malloc((pl->n ? pl->n : 1) * sizeof *pnames);
    int slot[N_CF_HANDLES];
    if (!names || !opts || !handles || !pnames) abort();
    for (int i = 0; i < N_CF_HANDLES; i++)
        if (have[i] || !st->read_only) {
            slot[n] = i;
            names[n] = cf_names[i];
            opts[n++] = st->cf_opts[i];
        }
    size_t fixed = n;
    for (size_t k = 0; k < pl->n; k++) {
        iqp_periods_name(pl->v[k], pnames[k], sizeof pnames[k]);
        names[n] = pnames[k];
        opts[n++] = st->cf_opts[IQP_CF_COUNTS + 1];
    }
    rocksdb_t *db = st->read_only
        ? rocksdb_open_for_read_only_column_families(st->db_opts, st->dir, (int)n, names, opts, handles, 0, rerr)
        : rocksdb_open_column_families(st->db_opts, st->dir, (int)n, names, opts, handles, rerr);
    if (db) {
        for (size_t k = 0; k < fixed; k++) st->cf[slot[k]] = handles[k];
        for (size_t k = 0; k < pl->n; k++) iqp_periods_add(&st->periods, pl->v[k], handles[fixed + k]);
    }
    free(names), free(opts), free(handles), free(pnames);
    return db;
}

/* A read-only open beside a live writer reads the MANIFEST's list of
 * table files and then opens them; a compaction or an ingestion of the
 * writer can delete one of them in between ("No such file or directory").
 * Nothing is wrong with the store: the open is tried again, a few times,
 * on the newer list. */
static rocksdb_t *open_read_only_retrying(iqp_store *st, const int have[N_CF_HANDLES], const period_list *pl,
                                          char **rerr) {
    for (int attempt = 0;; attempt++) {
        rocksdb_t *db = open_families(st, have, pl, rerr);
        if (db || attempt == 9 || !strstr(*rerr, "No such file or directory")) return db;
        free(*rerr);
        *rerr = NULL;
        usleep(10000);
    }
}

static int same_periods(const period_list *a, const period_list *b) {
    return a->n == b->n && (a->n == 0 || memcmp(a->v, b->v, a->n * sizeof *a->v) == 0);
}

/* Closes a read-only open again (its handles, period families included). */
static void close_read_only_db(iqp_store *st) {
    for (int i = 0; i < N_CF_HANDLES; i++)
        if (st->cf[i]) rocksdb_column_family_handle_destroy(st->cf[i]), st->cf[i] = NULL;
    iqp_periods_free(&st->periods);
    iqp_periods_init(&st->periods);
    rocksdb_close(st->db);
    st->db = NULL;
}

/* A read-only open of the families listed in have and *pl, beside a writer
 * that may make or drop a period family in between the listing and the
 * open: a dropped one fails the open ("Column family not found"), a new
 * one would be left out (its counts unseen beside the contexts and
 * markers of their batch). So the families are listed again after the
 * open, and the open is tried again, up to 10 times, until the two lists
 * agree. *pl and have are updated to the last listing. */
static rocksdb_t *open_read_only_agreeing(iqp_store *st, int have[N_CF_HANDLES], period_list *pl, char **rerr) {
    for (int attempt = 0;; attempt++) {
        rocksdb_t *db = open_read_only_retrying(st, have, pl, rerr);
        if (!db && (attempt == 9 || !strstr(*rerr, "Column family not found"))) return NULL;
        st->db = db;
        period_list again = {NULL, 0};
        int have2[N_CF_HANDLES];
        char why[256];
        int listed = list_families(st, have2, &again, why, sizeof why) == 0;
        if (db && (!listed || same_periods(pl, &again) || attempt == 9)) {
            free(again.v);
            st->db = NULL;
            return db;
        }
        if (db) close_read_only_db(st);
        free(*rerr);
        *rerr = NULL;
        if (listed) {
            free(pl->v);
            *pl = again;
            memcpy(have, have2, sizeof have2);
        } else {
            free(again.v);
        }
        usleep(10000);
    }
}

/* Opens the RocksDB database: create makes a new one (and fails if one is
 * there); otherwise an existing one with every column family iqp needs. */
static int open_db(iqp_store *st, int create, char *err, size_t errlen) {
    char *rerr = NULL;
    int have[N_CF_HANDLES] = {0};
    period_list pl = {NULL, 0};
    set_db_options(st, create);
    if (!create && list_families(st, have, &pl, err, errlen) < 0) {
        free(pl.v);
        return -1;
    }
    if (st->read_only)
        st->db = open_read_only_agreeing(st, have, &pl, &rerr);
    else
        st->db = open_families(st, have, &pl, &rerr);
    free(pl.v);
    if (!st->db) {
        rocks_error(err, errlen, "cannot open store", st->dir, rerr);
        if (rerr && strstr(rerr, "lock")) {
            size_t len = strlen(err);
            snprintf(err + len, errlen - len, "%s", IQP_STORE_LOCKED_HINT);
        }
        free(rerr);
        return -1;
    }
    return 0;
}

/* Builds a complete new store at path (which holds no RocksDB file): its
 * column families and layout record; closed again (memtables flushed). */
static int build_store(const char *path, const iqp_config *cfg, char *err, size_t errlen) {
    iqp_store *st = store_alloc(path, 0, cfg);
    if (!st) { snprintf(err, errlen, "out of memory"); return -1; }
    int rc = open_db(st, 1, err, errlen);
    if (rc == 0) {
        char *layout = iqp_config_layout_json(cfg);
        rc = put_meta_now(st, "layout", layout, strlen(layout), err, errlen);
        free(layout);
    }
    /* Test hook: IQP_TEST_COUNTS_ONE_FAMILY=1 makes a store as iqp did
     * before counts by period (tests/check_store.c reads and writes one). */
    const char *one = getenv("IQP_TEST_COUNTS_ONE_FAMILY");
    if (rc == 0 && !(one && *one == '1')) {
        char v[32];
        snprintf(v, sizeof v, "%d", IQP_PERIOD_SLOTS_DEFAULT);
        rc = put_meta_now(st, PERIOD_SLOTS_KEY, v, strlen(v), err, errlen);
    }
    iqp_store_close(st);
    return rc;
}

/* Reads the store's period length (PERIOD_SLOTS_KEY; absent: a store made
 * before counts by period, which keeps its one counts family). */
static int load_period_slots(iqp_store *st, char *err, size_t errlen) {
    char *val = NULL;
    size_t vlen = 0;
    int rc = iqp_store_get_meta(st, PERIOD_SLOTS_KEY, &val, &vlen);
    long long slots = 0;
    if (rc == 1) {
        char text[32] = "";
        memcpy(text, val, vlen < sizeof text - 1 ? vlen : sizeof text - 1);
        char *end = NULL;
        slots = strtoll(text, &end, 10);
        if (*end || slots < 1) rc = -1;
    }
    free(val);
    if (rc < 0) {
        snprintf(err, errlen, "cannot read the period length (meta %s) of store %s", PERIOD_SLOTS_KEY, st->dir);
        return -1;
    }
    st->periods.slots = slots;
    return 0;
}

/* Creates the store at dir (state: absent, or without RocksDB files) and
 * sets *made to what was created. Built in a hidden sibling directory and
 * renamed into place (rename(2) replaces an empty directory), else in
 * place (see the top of this file). */
static int create_store(const char *dir, dir_state state, const iqp_config *cfg, int *made,
                        char *err, size_t errlen) {
    char tmp[PATH_MAX];
    *made = MADE_NOTHING;
    if (make_sibling(dir, tmp, sizeof tmp) == 0) {
        char why[768];
        int rc = build_store(tmp, cfg, why, sizeof why);
        if (rc == 0 && rename(tmp, dir) == 0) {
            sync_parent(tmp);
            *made = state == DIR_ABSENT ? MADE_DIR : MADE_FILES;
            return 0;
        }
        int rename_errno = errno;
        remove_tree(tmp);
        if (rc < 0) {
            snprintf(err, errlen, "cannot create store %s: %s", dir, why);
            return -1;
        }
        dir_state now;
        if ((rename_errno == ENOTEMPTY || rename_errno == EEXIST) &&
            inspect_dir(dir, &now, err, errlen) == 0 && now == DIR_HAS_STORE)
            return 0; /* another process created it meanwhile: open theirs */
    }
    if (state == DIR_ABSENT) {
        if (mkdir(dir, 0777) < 0) {
            snprintf(err, errlen, "cannot create store %s: %s", dir, strerror(errno));
            return -1;
        }
        *made = MADE_DIR;
    } else {
        *made = MADE_FILES;
    }
    if (build_store(dir, cfg, err, errlen) < 0) {
        unmake_store(dir, *made);
        *made = MADE_NOTHING;
        return -1;
    }
    return 0;
}

/* Opens the existing store at dir. */
static iqp_store *open_existing(const char *dir, const iqp_config *cfg, int read_only, char *err,
                                size_t errlen) {
    iqp_store *st = store_alloc(dir, read_only, cfg);
    if (!st) { snprintf(err, errlen, "out of memory"); return NULL; }
    if (open_db(st, 0, err, errlen) < 0) goto fail;
    if (check_layout(st, cfg, err, errlen) < 0) goto fail;
    if (load_period_slots(st, err, errlen) < 0) goto fail;
    if (load_watermark(st) < 0) FAIL("cannot read the watermark of store %s", dir);
    return st;
fail:
    iqp_store_close(st);
    return NULL;
}

/* A read-only open sees the store as of that moment; one that finds a
 * batch between its commit and its ingestion ("table-file ingestion":
 * markers and contexts without their counts) opens again, every
 * SETTLE_STEP_MS for up to SETTLE_MS, for the writer to finish it (it
 * takes milliseconds). A writer that died in between leaves it so until
 * the next read-write open; the store is then used as it is. */
#define SETTLE_MS 5000
#define SETTLE_STEP_MS 20
static iqp_store *read_only_settle(iqp_store *st, const char *dir, const iqp_config *cfg, char *err,
                                   size_t errlen) {
    for (int waited = 0; st && waited < SETTLE_MS && ingest_pending(st) == 1; waited += SETTLE_STEP_MS) {
        iqp_store_close(st);
        usleep(SETTLE_STEP_MS * 1000);
        st = open_existing(dir, cfg, 1, err, errlen);
    }
    return st;
}

iqp_store *iqp_store_open(const char *dir, const iqp_config *cfg, iqp_store_mode mode, char *err,
                          size_t errlen) {
    int read_only = mode == IQP_STORE_READ_ONLY, made = MADE_NOTHING;
    dir_state state;
    if (!cfg && !read_only) {
        snprintf(err, errlen, "internal: a writable store needs a config");
        return NULL;
    }
    if (inspect_dir(dir, &state, err, errlen) < 0) return NULL;
    if (state != DIR_HAS_STORE) {
        if (read_only) {
            snprintf(err, errlen, "no iqp store at %s", dir);
            return NULL;
        }
        if (create_store(dir, state, cfg, &made, err, errlen) < 0) return NULL;
    }
    /* A store this call just created is complete (layout included) once
     * create_store returned, and visible: another process may have opened
     * it in between (then this open fails on RocksDB's lock). So a failed
     * open leaves it in place rather than removing a store someone else is
     * writing; only a store this process opened and never committed to is
     * taken back (iqp_store_close_discarding). */
    iqp_store *st = open_existing(dir, cfg, read_only, err, errlen);
    if (read_only && st) st = read_only_settle(st, dir, cfg, err, errlen);
    if (!st) return NULL;
    st->made = made;
    st->scratch = mode == IQP_STORE_SCRATCH;
    if (!read_only && recover_ingest(st, err, errlen) < 0) {
        iqp_store_close(st);
        return NULL;
    }
    st->die_at = getenv("IQP_TEST_DIE_AT");
    if (st->scratch) rocksdb_writeoptions_disable_WAL(st->wo, 1);
    return st;
}

int iqp_store_present(const char *dir, char *err, size_t errlen) {
    dir_state state;
    if (inspect_dir(dir, &state, err, errlen) < 0) return -1;
    return state == DIR_HAS_STORE;
}

int iqp_store_is_fresh(const iqp_store *st) { return st->made != MADE_NOTHING && st->commits == 0; }

int iqp_store_close_discarding(iqp_store *st) {
    if (!st) return 0;
    int fresh = iqp_store_is_fresh(st);
    int made = st->made;
    char *dir = strdup(st->dir);
    iqp_store_close(st);
    if (fresh && dir) unmake_store(dir, made);
    free(dir);
    return fresh;
}

/* Writes the memtables to SST files, so that the next open (often a
 * read-only lookup) does not replay the write-ahead log. */
/* Every family iqp writes: the fixed ones, then the live period families
 * (malloc'd, *n of them). */
static rocksdb_column_family_handle_t **all_families(iqp_store *st, size_t *n) {
    size_t np = 0;
    rocksdb_column_family_handle_t **ph = iqp_periods_live(&st->periods, INT64_MIN, INT64_MAX, &np);
    rocksdb_column_family_handle_t **h = malloc((IQP_CF__COUNT + np) * sizeof *h);
    if (!h) abort();
    *n = 0;
    for (int cf = 0; cf < IQP_CF__COUNT; cf++)
        if (cf_handle(st, cf)) h[(*n)++] = cf_handle(st, cf);
    for (size_t i = 0; i < np; i++) h[(*n)++] = ph[i];
    free(ph);
    return h;
}

static void flush_memtables(iqp_store *st) {
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    size_t n;
    rocksdb_column_family_handle_t **h = all_families(st, &n);
    for (size_t i = 0; i < n; i++) {
        char *rerr = NULL;
        rocksdb_flush_cf(st->db, fo, h[i], &rerr);
        free(rerr); /* the WAL still holds the data: a failed flush loses nothing */
    }
    free(h);
    rocksdb_flushoptions_destroy(fo);
}

void iqp_store_close(iqp_store *st) {
    if (!st) return;
    if (st->db && !st->read_only && !st->scratch && st->cf[IQP_CF__COUNT]) flush_memtables(st);
    if (st->db) {
        for (int i = 0; i < N_CF_HANDLES; i++)
            if (st->cf[i]) rocksdb_column_family_handle_destroy(st->cf[i]);
        iqp_periods_free(&st->periods);
        rocksdb_close(st->db);
    }
    for (int i = 0; i < N_CF_HANDLES; i++)
        if (st->cf_opts[i]) rocksdb_options_destroy(st->cf_opts[i]);
    if (st->db_opts) rocksdb_options_destroy(st->db_opts);
    for (int k = 0; k < 2; k++)
        if (st->filters[k]) rocksdb_compactionfilter_destroy(st->filters[k]);
    if (st->dedup_table) rocksdb_block_based_options_destroy(st->dedup_table);
    if (st->counts_table) rocksdb_block_based_options_destroy(st->counts_table);
    if (st->block_cache) rocksdb_cache_destroy(st->block_cache);
    rocksdb_readoptions_destroy(st->ro);
    rocksdb_writeoptions_destroy(st->wo);
    rocksdb_writeoptions_destroy(st->wo_sync);
    pthread_mutex_destroy(&st->gate);
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
    iqp_keybuf_init(&b->group_key);
    iqp_packed_writer_init(&b->group);
    iqp_buf_init(&b->bulk);
    return b;
}

void iqp_store_batch_free(iqp_store_batch *b) {
    if (!b) return;
    rocksdb_writebatch_destroy(b->wb);
    iqp_keybuf_free(&b->group_key);
    iqp_packed_writer_free(&b->group);
    iqp_buf_free(&b->bulk);
    free(b->bulk_e);
    free(b->route_err);
    free(b);
}

void iqp_store_batch_clear(iqp_store_batch *b) {
    rocksdb_writebatch_clear(b->wb);
    b->has_watermark = 0;
    b->group_open = 0;
    b->merges = 0;
    iqp_buf_truncate(&b->bulk, 0);
    b->bulk_n = 0;
    free(b->route_err);
    b->route_err = NULL;
}

/* Holds a counts merge for the batch's table file (bulk load). */
static void bulk_add(iqp_store_batch *b, const void *key, size_t klen, const void *val, size_t vlen) {
    if (b->bulk_n == b->bulk_cap) {
        b->bulk_cap = b->bulk_cap ? 2 * b->bulk_cap : 4096;
        b->bulk_e = realloc(b->bulk_e, b->bulk_cap * sizeof *b->bulk_e);
        if (!b->bulk_e) abort();
    }
    b->bulk_e[b->bulk_n++] = (bulk_entry){b->bulk.len, (uint32_t)klen, (uint32_t)vlen};
    iqp_buf_append(&b->bulk, key, klen);
    iqp_buf_append(&b->bulk, val, vlen);
}

/* Period families hold the slots that start in [1970, 2200). A slot
 * outside (a clock far off: the aggregator dead-letters such events, but
 * the store takes any key) stays in "counts", which every read includes,
 * so wild keys cannot make a family each. A function of the slot alone,
 * so one key always goes to one family. */
#define PERIOD_TIME_LIMIT_MS 7258118400000LL /* 2200-01-01T00:00Z */
#define NO_PERIOD INT64_MIN                  /* the "counts" family */

static int64_t period_of_slot(const iqp_store *st, int64_t slot) {
    int64_t slot_ms = st->cfg.gran_ms[st->cfg.n_grans - 1];
    if (!st->periods.slots || slot < 0 || slot_ms <= 0 || slot >= PERIOD_TIME_LIMIT_MS / slot_ms) return NO_PERIOD;
    return iqp_periods_of_slot(&st->periods, slot);
}

/* The period of a stored count key (its bucket suffix is its slot). */
static int64_t period_of_key(const iqp_store *st, const char *key, size_t klen) {
    int gi;
    int64_t slot;
    if (iqp_cells_key_bucket((const unsigned char *)key, klen, &gi, &slot) < 0) abort(); /* a caller's bug */
    return period_of_slot(st, slot);
}

/* The family of period (NO_PERIOD: "counts"), made when missing and
 * create; NULL (with *rerr when RocksDB cannot make it) otherwise. */
static rocksdb_column_family_handle_t *family_of_period(iqp_store *st, int64_t period, int create, char **rerr) {
    if (period == NO_PERIOD) return cf_handle(st, IQP_CF_COUNTS);
    if (!create) return iqp_periods_find(&st->periods, period);
    return iqp_periods_get(&st->periods, st->db, st->cf_opts[IQP_CF_COUNTS + 1], period, rerr);
}

/* The family that holds count key (klen >= the bucket suffix), made when
 * missing; NULL with *rerr when RocksDB cannot make it. */
static rocksdb_column_family_handle_t *counts_family_of(iqp_store *st, const char *key, size_t klen,
                                                        char **rerr) {
    return family_of_period(st, period_of_key(st, key, klen), 1, rerr);
}

/* A merge into the WriteBatch: counts go to their key's family. A family
 * that cannot be made fails the batch's commit (route_err). */
static void batch_merge_routed(iqp_store_batch *b, iqp_cf cf, const char *key, size_t klen,
                               const char *val, size_t vlen) {
    rocksdb_column_family_handle_t *h = cf_handle(b->st, cf);
    if (cf == IQP_CF_COUNTS) {
        char *rerr = NULL;
        h = counts_family_of(b->st, key, klen, &rerr);
        if (!h) {
            if (!b->route_err) b->route_err = rerr;
            else free(rerr);
            return;
        }
    }
    rocksdb_writebatch_merge_cf(b->wb, h, key, klen, val, vlen);
}

/* Writes the open group as one merge: into the WriteBatch, or, for the
 * counts of a bulk-loading store, held for the batch's table file. */
static void close_group(iqp_store_batch *b) {
    if (!b->group_open) return;
    b->group_open = 0;
    if (b->st->ingest_min_merges && b->group_cf == IQP_CF_COUNTS) {
        bulk_add(b, b->group_key.buf, b->group_key.len, b->group.buf, b->group.len);
        return;
    }
    batch_merge_routed(b, b->group_cf, (const char *)b->group_key.buf, b->group_key.len,
                       (const char *)b->group.buf, b->group.len);
}

int64_t iqp_store_batch_slot(const iqp_store_batch *b, int gran_index, int64_t bucket) {
    return iqp_cells_slot(&b->st->cfg, gran_index, bucket);
}

size_t iqp_store_batch_merges(const iqp_store_batch *b) { return b->merges; }

/* Opens a new group: the stored key of (body, slot) in cf. */
static void open_group(iqp_store_batch *b, iqp_cf cf, const void *body, size_t blen, int64_t slot) {
    close_group(b);
    iqp_keybuf_truncate(&b->group_key, 0);
    iqp_keybuf_append(&b->group_key, body, blen);
    iqp_cells_append_slot(&b->group_key, &b->st->cfg, slot);
    iqp_packed_writer_reset(&b->group);
    b->group_cf = cf;
    b->group_slot = slot;
    b->group_open = 1;
    b->merges++;
}

void iqp_store_batch_merge(iqp_store_batch *b, iqp_cf cf, const void *key, size_t klen,
                           const int64_t *vec, size_t n) {
    int gi;
    int64_t bucket;
    if (iqp_cells_key_bucket(key, klen, &gi, &bucket) < 0) abort(); /* a caller's bug */
    size_t body = klen - IQP_BUCKET_SUFFIX_LEN;
    int64_t slot = iqp_cells_slot(&b->st->cfg, gi, bucket);
    if (!(b->group_open && b->group_cf == cf && b->group_slot == slot &&
          b->group_key.len == klen && memcmp(b->group_key.buf, key, body) == 0 &&
          iqp_packed_can_put(&b->group, gi, bucket)))
        open_group(b, cf, key, body, slot);
    iqp_packed_put(&b->group, gi, bucket, vec, n);
}

void iqp_store_batch_merge_cell(iqp_store_batch *b, iqp_cf cf, const void *body, size_t blen,
                                int gran_index, int64_t bucket, const int64_t *vec, size_t n) {
    open_group(b, cf, body, blen, iqp_cells_slot(&b->st->cfg, gran_index, bucket));
    iqp_packed_put(&b->group, gran_index, bucket, vec, n);
}

void iqp_store_batch_merge_more(iqp_store_batch *b, int gran_index, int64_t bucket,
                                const int64_t *vec, size_t n) {
    if (!b->group_open || !iqp_packed_can_put(&b->group, gran_index, bucket)) abort();
    iqp_packed_put(&b->group, gran_index, bucket, vec, n);
}

void iqp_store_batch_put(iqp_store_batch *b, iqp_cf cf, const void *key, size_t klen,
                         const void *val, size_t vlen) {
    if (cf == b->group_cf) close_group(b); /* other column families: order is no matter */
    rocksdb_writebatch_put_cf(b->wb, cf_handle(b->st, cf), key, klen, val, vlen);
}

void iqp_store_batch_put_marker(iqp_store_batch *b, const unsigned char *key, size_t klen,
                                const iqp_marker *m) {
    unsigned char v[IQP_MARKER_VALUE_LEN];
    iqp_marker_encode(m, v);
    iqp_store_batch_put(b, IQP_CF_DEDUP, key, klen, v, sizeof v);
}

void iqp_store_batch_delete(iqp_store_batch *b, iqp_cf cf, const void *key, size_t klen) {
    if (cf == b->group_cf) close_group(b);
    rocksdb_writebatch_delete_cf(b->wb, cf_handle(b->st, cf), key, klen);
}

void iqp_store_batch_set_watermark(iqp_store_batch *b, int64_t watermark_ms) {
    b->watermark_ms = watermark_ms;
    b->has_watermark = 1;
}

size_t iqp_store_batch_bytes(const iqp_store_batch *b) {
    size_t n = 0;
    rocksdb_writebatch_data(b->wb, &n);
    return n + b->bulk.len + (b->group_open ? b->group_key.len + b->group.len : 0);
}

/* Writes b's WriteBatch (the watermark added) as one atomic write. */
static int write_batch(iqp_store *st, iqp_store_batch *b, rocksdb_writeoptions_t *wo, char *err,
                       size_t errlen) {
    char *rerr = NULL;
    if (b->has_watermark && b->watermark_ms > atomic_load(&st->watermark_ms))
        rocksdb_writebatch_put_cf(b->wb, cf_handle(st, IQP_CF_META), "watermark", 9,
                                  (const char *)&b->watermark_ms, 8);
    rocksdb_write(st->db, wo, b->wb, &rerr);
    if (rerr) {
        rocks_error(err, errlen, "write failed in store", st->dir, rerr);
        free(rerr);
        return -1;
    }
    st->commits++;
    if (b->has_watermark && b->watermark_ms > atomic_load(&st->watermark_ms))
        atomic_store(&st->watermark_ms, b->watermark_ms);
    return 0;
}

/* ---- table-file ingestion (bulk load) -------------------------------------
 *
 * A bulk-loading store (iqp_store_set_ingest: `iqp backfill`) writes the
 * counts merges of a large batch into an SST file and ingests it into the
 * counts column family, instead of inserting them into the memtable (and
 * the WAL) and flushing that later: measured, the skiplist inserts and the
 * flush were a quarter of a backfill's CPU. Everything else of the batch
 * (contexts, dedup markers, meta, the watermark) still commits as one
 * WriteBatch. RocksDB's C API has no atomic ingest across column families,
 * so the two are tied together by a small redo protocol, for batch B:
 *
 *   1. the counts merges, sorted, go into one table file per family they
 *      go to (DIR/ingest/B@<period>.sst; B.sst in a store of one counts
 *      family), each with the sentinel (INGEST_SENTINEL -> u64 LE B, a Put);
 *   2. the WriteBatch commits with meta "ingest/pending" = B and the
 *      files' periods (WAL synced);
 *   3. each file is ingested into its family (one call each, atomic;
 *      copied: see ingest_table_file), then removed;
 *   4. "ingest/pending" is deleted.
 *
 * Every read-write open finishes a batch a crash left between 2 and 4:
 * a file whose family's sentinel already reads B was ingested; every
 * other one is ingested now, and then the record goes. A crash before 2 leaves an
 * unreferenced file, removed at the next open, and no trace in the store:
 * the batch is counted again from its source positions, which committed
 * in the same WriteBatch. So a batch is applied whole or not at all, and
 * never twice.
 *
 * Readers in this process (`iqp stream --redis`: the publisher and the
 * refresher) never see a batch between steps 2 and 3, i.e. its markers,
 * contexts and publish queue records without its counts: the writer holds
 * the ingest gate (st->gate) from before step 2 to the end of step 3, and
 * every snapshot, iterator without a snapshot and checkpoint is taken
 * under it (each fixes its view when taken, so the gate is held only that
 * long, never while reading). The publisher reads queue records and then
 * takes its snapshot: a record it read in the gap is published from a
 * snapshot taken after the ingestion, with its counts. Ingesting before
 * the commit instead would show counts before their contexts, and a crash
 * in between would count the batch twice (its source positions are not
 * committed yet). When step 3 fails the store is torn until it is opened
 * again (which finishes the batch): commits are refused, and so are
 * snapshots (NULL) and unsnapshotted scans of counts and contexts, so
 * nothing is published from it. A process that opens the store read-only
 * in between sees the batch's markers and contexts without its counts: a
 * read-only open that finds a batch pending waits for the writer to
 * finish it (read_only_settle), and a backup is checked (checkpoint_whole).
 *
 * The sentinel key starts with 0xff: every real count key starts with the
 * length of a feature name (at most IQP_NAME_MAX, cells.h), so it sorts
 * after all of them. Iterators over counts stop before it (iter_options),
 * and the compaction filter keeps it. Batches below ingest_min_merges
 * counts merges take the WriteBatch path: a file and an ingestion (a
 * MANIFEST write) per tiny batch cost more than the memtable inserts
 * (measured, 44k-line 30-day log, one counting thread, CPU s ingesting
 * every batch vs none: ~400 merges a batch 25.6 vs 22.2, ~1,400 10.9 vs
 * 10.4, ~4,000 4.7 vs 7.5, ~13,000 2.6 vs 3.4). */

/* Test hook: IQP_TEST_INGEST_MIN_MERGES=N replaces a non-zero threshold,
 * so that the small batches of a test's stream take the ingestion path
 * too (tests/check_stream.c's kill -9 cases, run with it set to 1). */
void iqp_store_set_ingest(iqp_store *st, size_t min_merges) {
    const char *test = getenv("IQP_TEST_INGEST_MIN_MERGES");
    if (min_merges && test && *test) min_merges = strtoul(test, NULL, 10);
    st->ingest_min_merges = st->read_only || st->scratch ? 0 : min_merges;
}

int iqp_store_fills_locally(const iqp_store *st) { return st->ingest_min_merges != 0; }

/* The held counts merges as WriteBatch merges (a batch below the
 * threshold). */
static void bulk_to_writebatch(iqp_store_batch *b) {
    for (size_t i = 0; i < b->bulk_n; i++) {
        const bulk_entry *e = &b->bulk_e[i];
        const char *key = (const char *)b->bulk.buf + e->off;
        batch_merge_routed(b, IQP_CF_COUNTS, key, e->klen, key + e->klen, e->vlen);
    }
}

static int bulk_cmp(const iqp_store_batch *b, size_t i, size_t j) {
    const bulk_entry *x = &b->bulk_e[i], *y = &b->bulk_e[j];
    int c = memcmp(b->bulk.buf + x->off, b->bulk.buf + y->off, x->klen < y->klen ? x->klen : y->klen);
    return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

/* The end of the ascending run of a[] that starts at i. */
static size_t run_end(const iqp_store_batch *b, const size_t *a, size_t i, size_t n) {
    while (++i < n && bulk_cmp(b, a[i - 1], a[i]) <= 0) {}
    return i;
}

/* The held merges' indexes in key order (malloc'd): a natural merge sort,
 * as the drain hands over one ascending run per combiner (per counting
 * thread), so it takes a pass or two. */
static size_t *bulk_sort(const iqp_store_batch *b) {
    size_t n = b->bulk_n, *a = malloc(n * sizeof *a), *t = malloc(n * sizeof *t), runs;
    if (!a || !t) abort();
    for (size_t i = 0; i < n; i++) a[i] = i;
    do {
        runs = 0;
        for (size_t i = 0; i < n; runs++) {
            size_t m = run_end(b, a, i, n), e = m < n ? run_end(b, a, m, n) : n, x = i, y = m, o = i;
            while (x < m && y < e) t[o++] = bulk_cmp(b, a[y], a[x]) < 0 ? a[y++] : a[x++];
            while (x < m) t[o++] = a[x++];
            while (y < e) t[o++] = a[y++];
            i = e;
        }
        size_t *s = a;
        a = t, t = s;
    } while (runs > 1);
    free(t);
    return a;
}

/* One table file of an ingesting batch: the counts merges that go to one
 * family, "counts" (NO_PERIOD: every file of a store of one family) or
 * one period's. */
typedef struct table_file {
    int64_t period;
    rocksdb_column_family_handle_t *cf;
    rocksdb_sstfilewriter_t *w;
    char path[PATH_MAX];
} table_file;

/* The table files of one batch: as many as the periods it touches. */
typedef struct table_files {
    table_file *f;
    size_t n, cap;
} table_files;

static void table_file_path(const iqp_store *st, uint64_t seq, int64_t period, char *out, size_t outlen) {
    if (period != NO_PERIOD)
        snprintf(out, outlen, "%s/ingest/%llu@%lld.sst", st->dir, (unsigned long long)seq, (long long)period);
    else
        snprintf(out, outlen, "%s/ingest/%llu.sst", st->dir, (unsigned long long)seq);
}

static void table_files_free(table_files *tf, int unlink_them) {
    for (size_t i = 0; i < tf->n; i++) {
        if (tf->f[i].w) rocksdb_sstfilewriter_destroy(tf->f[i].w);
        if (unlink_them) unlink(tf->f[i].path);
    }
    free(tf->f);
    memset(tf, 0, sizeof *tf);
}

/* The open file of key's family (opened when the batch has none yet);
 * NULL with *rerr. *last caches the previous answer's index. */
static table_file *file_of_key(iqp_store *st, table_files *tf, rocksdb_envoptions_t *eo, uint64_t seq,
                               const char *key, size_t klen, size_t *last, char **rerr) {
    int64_t period = period_of_key(st, key, klen);
    if (*last < tf->n && tf->f[*last].period == period) return &tf->f[*last];
    for (size_t i = 0; i < tf->n; i++)
        if (tf->f[i].period == period) return &tf->f[*last = i];
    rocksdb_column_family_handle_t *cf = family_of_period(st, period, 1, rerr);
    if (!cf) return NULL;
    if (tf->n == tf->cap) {
        tf->cap = tf->cap ? 2 * tf->cap : 4;
        tf->f = realloc(tf->f, tf->cap * sizeof *tf->f);
        if (!tf->f) abort();
    }
    table_file *f = &tf->f[tf->n++];
    f->period = period;
    f->cf = cf;
    table_file_path(st, seq, period, f->path, sizeof f->path);
    f->w = rocksdb_sstfilewriter_create(eo, st->cf_opts[IQP_CF_COUNTS + 1]);
    rocksdb_sstfilewriter_open(f->w, f->path, rerr);
    *last = tf->n - 1;
    return *rerr ? NULL : f;
}

/* Writes batch seq's table files (one per family its counts go to): b's
 * counts merges in key order (a key held twice, which only an unsorted
 * writer makes, goes into the WriteBatch the second time: merges add up
 * in any order), then in each file the sentinel. 0, or -1 with err and no
 * file left. */
static int write_table_files(iqp_store *st, iqp_store_batch *b, uint64_t seq, table_files *tf, char *err,
                             size_t errlen) {
    char *rerr = NULL;
    size_t *order = bulk_sort(b), last = 0;
    rocksdb_envoptions_t *eo = rocksdb_envoptions_create();
    memset(tf, 0, sizeof *tf);
    for (size_t k = 0; k < b->bulk_n && !rerr; k++) {
        const bulk_entry *e = &b->bulk_e[order[k]];
        const char *key = (const char *)b->bulk.buf + e->off;
        if (k > 0 && bulk_cmp(b, order[k - 1], order[k]) == 0) {
            batch_merge_routed(b, IQP_CF_COUNTS, key, e->klen, key + e->klen, e->vlen);
            continue;
        }
        table_file *f = file_of_key(st, tf, eo, seq, key, e->klen, &last, &rerr);
        if (f) rocksdb_sstfilewriter_merge(f->w, key, e->klen, key + e->klen, e->vlen, &rerr);
    }
    unsigned char v[8];
    put_i64le(v, (int64_t)seq);
    for (size_t i = 0; i < tf->n && !rerr; i++) {
        rocksdb_sstfilewriter_put(tf->f[i].w, INGEST_SENTINEL, INGEST_SENTINEL_LEN, (const char *)v, 8, &rerr);
        if (!rerr) rocksdb_sstfilewriter_finish(tf->f[i].w, &rerr);
        uint64_t size = 0;
        if (!rerr) rocksdb_sstfilewriter_file_size(tf->f[i].w, &size);
        st->ingested_bytes += size;
    }
    for (size_t i = 0; i < tf->n; i++) {
        if (tf->f[i].w) rocksdb_sstfilewriter_destroy(tf->f[i].w);
        tf->f[i].w = NULL;
    }
    rocksdb_envoptions_destroy(eo);
    free(order);
    if (!rerr && !b->route_err) return 0;
    rocks_error(err, errlen, "cannot write a table file for store", st->dir, rerr ? rerr : b->route_err);
    free(rerr);
    table_files_free(tf, 1);
    return -1;
}

/* Ingests the table file at path into counts. Copied, not moved: RocksDB
 * writes the ingested file's global sequence number into the file it
 * ingests, and a hard link (move_files) is the same inode as ours, so a
 * kill -9 inside the ingestion could leave the kept file stamped without
 * the ingestion committed -- and RocksDB refuses to ingest a stamped file
 * again, so the redo at the next open failed ("Corruption: An external
 * sst file with version 2 have global seqno property", seen once in
 * check_e2e's kill -9 test). The copy costs one sequential write of the
 * file; ours is removed once the ingestion returned. */
static int ingest_table_file(iqp_store *st, rocksdb_column_family_handle_t *cf, const char *path, char **rerr) {
    rocksdb_ingestexternalfileoptions_t *io = rocksdb_ingestexternalfileoptions_create();
    rocksdb_ingestexternalfileoptions_set_move_files(io, 0);
    rocksdb_ingest_external_file_cf(st->db, cf, &path, 1, io, rerr);
    rocksdb_ingestexternalfileoptions_destroy(io);
    return *rerr ? -1 : 0;
}

/* Test hook (tests/check_e2e.c): IQP_TEST_DIE_AT=STEP[:N] ends the
 * process at once (_exit(99), no cleanup) at STEP -- after-file,
 * after-commit, after-ingest -- of the N-th batch this open ingests
 * (default the first): a crash between the protocol's steps. STEP
 * after-write counts every batch this open commits instead: a crash right
 * after a store write, before its writer acts on it (tests/check_stream.c:
 * iqp stream dies before publishing that write's offsets). */
static void test_die_at(const iqp_store *st, const char *step) {
    size_t n = strlen(step);
    if (!st->die_at || strncmp(st->die_at, step, n) != 0) return;
    unsigned long nth = st->die_at[n] == ':' ? strtoul(st->die_at + n + 1, NULL, 10) : 1;
    if ((strcmp(step, "after-write") == 0 ? st->commits : st->ingests) == nth) _exit(99);
}

/* Step 4, and the end of a recovery: the pending record goes. A failure
 * is harmless (the next open finds the sentinel at the record's batch). */
static void clear_pending(iqp_store *st) {
    char *rerr = NULL;
    rocksdb_delete_cf(st->db, st->wo, cf_handle(st, IQP_CF_META), INGEST_PENDING,
                      strlen(INGEST_PENDING), &rerr);
    free(rerr);
}

/* The pending record of batch seq: u64 LE seq, then, in a store of
 * period families, i64 LE per table file: the periods whose families
 * the batch's files go to (a store of one family writes the seq alone, as
 * before periods). */
static void put_pending_record(iqp_store *st, iqp_store_batch *b, uint64_t seq, const table_files *tf) {
    int by_period = st->periods.slots != 0;
    size_t len = 8 + (by_period ? 8 * tf->n : 0);
    unsigned char *v = malloc(len);
    if (!v) abort();
    put_i64le(v, (int64_t)seq);
    for (size_t i = 0; by_period && i < tf->n; i++) put_i64le(v + 8 + 8 * i, tf->f[i].period);
    rocksdb_writebatch_put_cf(b->wb, cf_handle(st, IQP_CF_META), INGEST_PENDING, strlen(INGEST_PENDING),
                              (const char *)v, len);
    free(v);
}

/* Step 3 for every file of the batch; the first failure's error. */
static int ingest_table_files(iqp_store *st, const table_files *tf, char *err, size_t errlen) {
    for (size_t i = 0; i < tf->n; i++) {
        char *rerr = NULL;
        if (ingest_table_file(st, tf->f[i].cf, tf->f[i].path, &rerr) == 0) continue;
        rocks_error(err, errlen, "cannot ingest a table file into store", st->dir, rerr);
        size_t len = strlen(err);
        snprintf(err + len, errlen - len, " (the batch's counts are kept in %s/ingest: the next run on "
                 "this store ingests them)", st->dir);
        free(rerr);
        return -1;
    }
    return 0;
}

/* The protocol above, for one batch. */
static int commit_ingesting(iqp_store *st, iqp_store_batch *b, char *err, size_t errlen) {
    uint64_t seq = st->ingest_seq + 1;
    char dir[PATH_MAX];
    table_files tf;
    snprintf(dir, sizeof dir, "%s/ingest", st->dir);
    if (mkdir(dir, 0777) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "%scannot create %s for store %s: %s", errno == ENOSPC ? "no space left on device: " : "",
                 dir, st->dir, strerror(errno));
        return -1;
    }
    st->ingests++;
    if (write_table_files(st, b, seq, &tf, err, errlen) < 0) return -1;
    test_die_at(st, "after-file");
    put_pending_record(st, b, seq, &tf);
    /* synced: the ingestion's MANIFEST write is, and a power loss must not
     * keep the counts of step 3 while losing this step's markers and
     * positions from an unsynced WAL tail (one fsync per large batch) */
    pthread_mutex_lock(&st->gate);
    if (write_batch(st, b, st->wo_sync, err, errlen) < 0) {
        pthread_mutex_unlock(&st->gate);
        table_files_free(&tf, 1);
        return -1;
    }
    test_die_at(st, "after-commit");
    if (ingest_table_files(st, &tf, err, errlen) < 0) {
        st->ingest_failed = 1; /* the next batch would reuse seq: only a reopen finishes this one */
        st->torn = 1;
        pthread_mutex_unlock(&st->gate);
        table_files_free(&tf, 0);
        return -1;
    }
    pthread_mutex_unlock(&st->gate);
    st->ingest_seq = seq;
    test_die_at(st, "after-ingest");
    table_files_free(&tf, 1); /* a crash before this: the next open removes them (the sentinels read seq) */
    clear_pending(st);
    test_die_at(st, "after-write");
    return 0;
}

/* Removes the files of DIR/ingest: batches that never committed (a crash
 * before step 2), or an ingested batch's file (a crash right after step 3). */
static void remove_ingest_files(const iqp_store *st) {
    char dir[PATH_MAX], path[PATH_MAX + 256];
    snprintf(dir, sizeof dir, "%s/ingest", st->dir);
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d) return;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
}

/* The u64 LE value of key in family h into *out (0 when absent): 1
 * found, 0 absent, -1 error. */
static int get_u64(iqp_store *st, rocksdb_column_family_handle_t *h, const char *key, size_t klen, uint64_t *out) {
    char *rerr = NULL;
    size_t vlen = 0;
    char *val = rocksdb_get_cf(st->db, st->ro, h, key, klen, &vlen, &rerr);
    *out = 0;
    if (rerr) { free(rerr); return -1; }
    if (val && vlen >= 8) *out = (uint64_t)get_i64le((const unsigned char *)val);
    free(val);
    return val ? 1 : 0;
}

/* The pending record (put_pending_record): 1 with its seq and periods
 * (malloc'd, *n of them; none in a store of one family), 0 when there is
 * none, -1 when it cannot be read. */
static int read_pending(iqp_store *st, uint64_t *seq, int64_t **periods, size_t *n) {
    char *rerr = NULL;
    size_t vlen = 0;
    char *val = rocksdb_get_cf(st->db, st->ro, cf_handle(st, IQP_CF_META), INGEST_PENDING,
                               strlen(INGEST_PENDING), &vlen, &rerr);
    *periods = NULL;
    *n = 0;
    if (rerr) { free(rerr); return -1; }
    if (!val) return 0;
    if (vlen < 8 || (vlen - 8) % 8) { free(val); return -1; }
    *seq = (uint64_t)get_i64le((const unsigned char *)val);
    *n = (vlen - 8) / 8;
    *periods = malloc((*n ? *n : 1) * sizeof **periods);
    if (!*periods) abort();
    for (size_t i = 0; i < *n; i++) (*periods)[i] = get_i64le((const unsigned char *)val + 8 + 8 * i);
    free(val);
    return 1;
}

/* The family of a pending record's file i: "counts" (a store of one
 * family, or NO_PERIOD), else its period's (made when create, else NULL
 * when missing). */
static rocksdb_column_family_handle_t *pending_family(iqp_store *st, const int64_t *periods, size_t n, size_t i,
                                                      int create, char **rerr) {
    return family_of_period(st, n ? periods[i] : NO_PERIOD, create, rerr);
}

/* 1 when st's view holds a batch committed but not ingested yet (between
 * steps 2 and 3: some file's family does not hold its sentinel), 0 when
 * not, -1 when it cannot be read. */
static int ingest_pending(iqp_store *st) {
    uint64_t seq = 0, done;
    int64_t *periods;
    size_t n;
    int has = read_pending(st, &seq, &periods, &n), pending = 0;
    for (size_t i = 0; has == 1 && !pending && i < (n ? n : 1); i++) {
        rocksdb_column_family_handle_t *h = pending_family(st, periods, n, i, 0, NULL);
        if (!h) continue; /* dropped as expired, after this batch was ingested (recover_ingest) */
        if (get_u64(st, h, INGEST_SENTINEL, INGEST_SENTINEL_LEN, &done) < 0) has = -1;
        else pending = done != seq;
    }
    free(periods);
    return has < 0 ? -1 : pending;
}

/* The last batch seq this store ingested: the highest sentinel of its
 * families. A family dropped as expired takes its sentinel with it, so a
 * later seq may repeat one it held; no live family holds that seq, and a
 * period's family made again starts without a sentinel, so a repeated seq
 * is never mistaken for an ingested file. */
static int load_ingest_seq(iqp_store *st) {
    uint64_t v = 0;
    if (get_u64(st, cf_handle(st, IQP_CF_COUNTS), INGEST_SENTINEL, INGEST_SENTINEL_LEN, &v) < 0) return -1;
    st->ingest_seq = v;
    size_t n = 0;
    rocksdb_column_family_handle_t **h = iqp_periods_live(&st->periods, INT64_MIN, INT64_MAX, &n);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = get_u64(st, h[i], INGEST_SENTINEL, INGEST_SENTINEL_LEN, &v) < 0 ? -1 : 0;
        if (v > st->ingest_seq) st->ingest_seq = v;
    }
    free(h);
    return rc;
}

/* On a read-write open: finishes a batch that a crash left between steps
 * 2 and 4 (ingests each of its files whose family's sentinel is not the
 * batch's), and removes files of batches that never committed. 0, or -1
 * with err (the store cannot be completed: refuse to open it). */
static int recover_ingest(iqp_store *st, char *err, size_t errlen) {
    uint64_t seq = 0, done;
    int64_t *periods;
    size_t n;
    int has = read_pending(st, &seq, &periods, &n);
    if (has < 0 || load_ingest_seq(st) < 0) {
        free(periods);
        snprintf(err, errlen, "cannot read store %s", st->dir);
        return -1;
    }
    for (size_t i = 0; has == 1 && i < (n ? n : 1); i++) {
        char path[PATH_MAX], *rerr = NULL;
        /* a period family the record names exists unless it was dropped
         * as expired, which only ever follows this batch's ingestion (a
         * family is made, durably, before the record commits): done */
        rocksdb_column_family_handle_t *h = pending_family(st, periods, n, i, 0, &rerr);
        if (!h && n && periods[i] != NO_PERIOD) continue;
        if (h && get_u64(st, h, INGEST_SENTINEL, INGEST_SENTINEL_LEN, &done) < 0) {
            snprintf(err, errlen, "cannot read store %s", st->dir);
            free(periods);
            return -1;
        }
        if (h && done == seq) continue;
        table_file_path(st, seq, n ? periods[i] : NO_PERIOD, path, sizeof path);
        if (h && access(path, F_OK) != 0) {
            snprintf(err, errlen, "store %s is incomplete: batch %llu committed but its counts were not "
                     "ingested, and their table file %s is missing (rebuild the store: count the event "
                     "logs into a new one with `iqp backfill`)", st->dir, (unsigned long long)seq, path);
            free(periods);
            return -1;
        }
        if (!h || ingest_table_file(st, h, path, &rerr) < 0) {
            rocks_error(err, errlen, "cannot finish an interrupted ingestion in store", st->dir, rerr);
            free(rerr);
            free(periods);
            return -1;
        }
    }
    free(periods);
    if (has == 1 && seq > st->ingest_seq) st->ingest_seq = seq;
    remove_ingest_files(st);
    if (has == 1) clear_pending(st);
    return 0;
}

/* Drops the period families every granularity's retention has passed
 * (as of the watermark): the cells the expiry filter would drop, all of
 * them, with no rewrite. A failed drop leaves the family (its cells
 * expired: no window reads them) for a later commit to drop. */
static void drop_expired_periods(iqp_store *st) {
    int64_t wm = atomic_load(&st->watermark_ms), cutoff = INT64_MAX;
    if (!st->periods.slots || wm == INT64_MIN) return;
    for (size_t g = 0; g < st->cfg.n_grans; g++) {
        int64_t first = iqp_cells_slot(&st->cfg, (int)g, iqp_retention_first_bucket(&st->cfg, (int)g, wm));
        if (first < cutoff) cutoff = first;
    }
    /* the periods that end before the first slot any granularity keeps,
     * less one: a reader of this process whose snapshot (or as-of) is a
     * little older than this watermark still finds every period its
     * windows reach (the families are listed when read, not when the
     * snapshot was taken); event time would have to jump a whole period
     * between its snapshot and its read to miss one */
    int64_t last = iqp_periods_of_slot(&st->periods, cutoff) - 2;
    char *rerr = NULL;
    iqp_periods_drop_through(&st->periods, st->db, last, &rerr);
    free(rerr);
}

int iqp_store_batch_commit(iqp_store *st, iqp_store_batch *b, char *err, size_t errlen) {
    if (st->read_only || st->ingest_failed) {
        snprintf(err, errlen, st->read_only ? "store %s is open read-only"
                                            : "store %s: an ingestion failed; reopen the store to finish it",
                 st->dir);
        return -1;
    }
    close_group(b);
    /* RocksDB counts key comparisons per thread by default (perf level
     * "count"): thread-local accesses on every memtable compare, measured at
     * a quarter of this call's CPU on a 30-day backfill. Nothing reads the
     * counts; the level is the calling thread's, so each call sets it. */
    rocksdb_set_perf_level(rocksdb_disable);
    if (b->bulk_n && b->bulk_n >= st->ingest_min_merges) {
        if (commit_ingesting(st, b, err, errlen) < 0) return -1;
        drop_expired_periods(st);
        return 0;
    }
    bulk_to_writebatch(b);
    if (b->route_err) {
        rocks_error(err, errlen, "cannot make a period family in store", st->dir, b->route_err);
        return -1;
    }
    if (write_batch(st, b, st->wo, err, errlen) < 0) return -1;
    test_die_at(st, "after-write");
    drop_expired_periods(st);
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

/* Sets kb to the stored key of prefix's slot. */
static void slot_key(iqp_keybuf *kb, const iqp_config *cfg, const unsigned char *prefix,
                     size_t plen, int64_t slot) {
    iqp_keybuf_truncate(kb, 0);
    iqp_keybuf_append(kb, prefix, plen);
    iqp_cells_append_slot(kb, cfg, slot);
}

/* Copies a packed cell's counters into vec (n wide, missing ones 0). */
static void cell_counters(const iqp_packed_cell *c, int64_t *vec, size_t n) {
    size_t k = c->n < n ? c->n : n;
    memcpy(vec, c->vec, k * sizeof *vec);
    if (n > k) memset(vec + k, 0, (n - k) * sizeof *vec);
}

int iqp_store_value_cells(const char *val, size_t vlen, size_t n, iqp_store_cell_fn fn, void *ud) {
    iqp_packed_reader r;
    iqp_packed_cell c;
    int64_t vec[IQP_PACKED_MAX_COUNTERS];
    int rc;
    if (n > IQP_PACKED_MAX_COUNTERS) n = IQP_PACKED_MAX_COUNTERS;
    iqp_packed_reader_init(&r, val, vlen);
    while ((rc = iqp_packed_next(&r, &c)) > 0) {
        cell_counters(&c, vec, n);
        fn(ud, c.gran, c.bucket, vec, n);
    }
    return rc;
}

/* A read of one family through ro: of counts, every family that holds
 * counts ("counts" and the period families of [lo, hi]) merged in key
 * order (merged_iter.h); of any other family, its one iterator. The view
 * owns ro, and, when the caller gave no snapshot, a snapshot of its own,
 * so that the families are read as of one moment. */
typedef struct family_view {
    iqp_store *st;
    iqp_merged_iter *m;
    rocksdb_readoptions_t *ro;
    const rocksdb_snapshot_t *own_snap;
} family_view;

/* The iterators of v's families, under the gate (see below): cf's own,
 * but for counts in a store by period only when own (the slots it reads
 * may lie outside the periods' years), and the periods of [lo, hi]. */
static rocksdb_iterator_t **view_iterators(iqp_store *st, family_view *v, iqp_cf cf, int64_t lo, int64_t hi,
                                           int own, size_t *n) {
    size_t np = 0;
    int several = cf == IQP_CF_COUNTS && st->periods.slots;
    rocksdb_column_family_handle_t **ph = several ? iqp_periods_live(&st->periods, lo, hi, &np) : NULL;
    rocksdb_iterator_t **its = malloc((np + 1) * sizeof *its);
    if (!its) abort();
    *n = 0;
    if (!several || own) its[(*n)++] = rocksdb_create_iterator_cf(st->db, v->ro, cf_handle(st, cf));
    for (size_t i = 0; i < np; i++) its[(*n)++] = rocksdb_create_iterator_cf(st->db, v->ro, ph[i]);
    free(ph);
    return its;
}

/* Opens v over cf (taking ro; when cf is counts, periods [lo, hi] and,
 * when own, the "counts" family). Without a snapshot its view is fixed
 * here, so it is created under the ingest gate. -1 with err (ro freed)
 * when the store is torn and cf holds counts or contexts, or out of
 * memory. */
static int view_open(iqp_store *st, family_view *v, rocksdb_readoptions_t *ro, iqp_cf cf,
                     const iqp_store_snapshot *snap, int64_t lo, int64_t hi, int own, char *err, size_t errlen) {
    memset(v, 0, sizeof *v);
    v->st = st;
    v->ro = ro;
    int several = cf == IQP_CF_COUNTS && st->periods.slots;
    if (!snap) pthread_mutex_lock(&st->gate);
    if (!snap && st->torn && (cf == IQP_CF_COUNTS || cf == IQP_CF_CONTEXTS)) {
        pthread_mutex_unlock(&st->gate);
        snprintf(err, errlen, "store %s: an ingestion failed; reopen the store to finish it", st->dir);
        rocksdb_readoptions_destroy(ro);
        v->ro = NULL;
        return -1;
    }
    if (!snap && several) {
        v->own_snap = rocksdb_create_snapshot(st->db);
        rocksdb_readoptions_set_snapshot(ro, v->own_snap);
    }
    size_t n;
    rocksdb_iterator_t **its = view_iterators(st, v, cf, lo, hi, own, &n);
    if (!snap) pthread_mutex_unlock(&st->gate);
    v->m = iqp_merged_iter_new(its, n);
    free(its);
    if (!v->m) {
        snprintf(err, errlen, "out of memory reading store %s", st->dir);
        if (v->own_snap) rocksdb_release_snapshot(st->db, v->own_snap);
        rocksdb_readoptions_destroy(ro);
        v->ro = NULL;
        return -1;
    }
    return 0;
}

/* Closes v; its read error (malloc'd), NULL when none. */
static char *view_close(family_view *v) {
    if (!v->m) return NULL;
    char *rerr = iqp_merged_iter_error(v->m);
    iqp_merged_iter_free(v->m);
    if (v->own_snap) rocksdb_release_snapshot(v->st->db, v->own_snap);
    rocksdb_readoptions_destroy(v->ro);
    memset(v, 0, sizeof *v);
    return rerr;
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
    if (n > IQP_PACKED_MAX_COUNTERS) n = IQP_PACKED_MAX_COUNTERS;
    /* the slots holding [first, last]; each value holds every granularity */
    iqp_keybuf lo, hi;
    iqp_keybuf_init(&lo);
    iqp_keybuf_init(&hi);
    slot_key(&lo, &st->cfg, prefix, plen, iqp_cells_slot(&st->cfg, gran_index, first));
    slot_key(&hi, &st->cfg, prefix, plen, iqp_cells_slot(&st->cfg, gran_index, last) + 1);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(ro, (const char *)hi.buf, hi.len);
    if (snap) rocksdb_readoptions_set_snapshot(ro, (const rocksdb_snapshot_t *)snap);
    family_view view;
    int64_t first_slot = iqp_cells_slot(&st->cfg, gran_index, first), last_slot = iqp_cells_slot(&st->cfg, gran_index, last);
    int64_t lo_p = st->periods.slots ? iqp_periods_of_slot(&st->periods, first_slot) : 0;
    int64_t hi_p = st->periods.slots ? iqp_periods_of_slot(&st->periods, last_slot) : 0;
    int own = period_of_slot(st, first_slot) == NO_PERIOD || period_of_slot(st, last_slot) == NO_PERIOD;
    if (view_open(st, &view, ro, cf, snap, lo_p, hi_p, own, err, errlen) < 0) {
        iqp_keybuf_free(&lo);
        iqp_keybuf_free(&hi);
        return -1;
    }
    iqp_merged_iter *it = view.m;
    int64_t vec[IQP_PACKED_MAX_COUNTERS];
    int bad = 0;
    for (iqp_merged_iter_seek(it, (const char *)lo.buf, lo.len); iqp_merged_iter_valid(it) && !bad;
         iqp_merged_iter_next(it)) {
        size_t kl, vl;
        iqp_merged_iter_key(it, &kl);
        if (kl != lo.len) continue; /* a longer key: another entity of this prefix */
        const char *v = iqp_merged_iter_value(it, &vl);
        iqp_packed_reader r;
        iqp_packed_cell c;
        int rc;
        iqp_packed_reader_init(&r, v, vl);
        while ((rc = iqp_packed_next(&r, &c)) > 0) {
            if (c.gran != gran_index || c.bucket < first || c.bucket > last) continue;
            cell_counters(&c, vec, n);
            fn(ud, c.bucket, vec, n);
        }
        bad = rc < 0;
    }
    char *rerr = view_close(&view);
    iqp_keybuf_free(&lo);
    iqp_keybuf_free(&hi);
    if (rerr || bad) {
        snprintf(err, errlen, "read from store %s failed: %s", st->dir,
                 rerr ? rerr : "a counter value does not decode (damaged store?)");
        free(rerr);
        return -1;
    }
    return 0;
}

/* ---- snapshots and key scans ---------------------------------------------- */

iqp_store_snapshot *iqp_store_snapshot_new(iqp_store *st) {
    pthread_mutex_lock(&st->gate); /* never between an ingesting batch's commit and its ingestion */
    const rocksdb_snapshot_t *snap = st->torn ? NULL : rocksdb_create_snapshot(st->db);
    pthread_mutex_unlock(&st->gate);
    return (iqp_store_snapshot *)snap;
}

void iqp_store_snapshot_free(iqp_store *st, iqp_store_snapshot *snap) {
    if (snap) rocksdb_release_snapshot(st->db, (const rocksdb_snapshot_t *)snap);
}

int iqp_store_scan_keys(iqp_store *st, const iqp_store_snapshot *snap, iqp_cf cf,
                        const void *from, size_t flen, iqp_store_key_fn fn, void *ud, char *err,
                        size_t errlen) {
    if (!cf_handle(st, cf)) return 0; /* an older store without this column family */
    family_view view;
    if (view_open(st, &view, iter_options(cf, snap), cf, snap, INT64_MIN, INT64_MAX, 1, err, errlen) < 0) return -1;
    iqp_merged_iter *it = view.m;
    if (from) iqp_merged_iter_seek(it, from, flen);
    else iqp_merged_iter_seek_to_first(it);
    for (; iqp_merged_iter_valid(it); iqp_merged_iter_next(it)) {
        size_t kl, vl;
        const char *k = iqp_merged_iter_key(it, &kl);
        const char *v = iqp_merged_iter_value(it, &vl);
        if (fn(ud, (const unsigned char *)k, kl, v, vl)) break;
    }
    char *rerr = view_close(&view);
    if (rerr) {
        snprintf(err, errlen, "read from store %s failed: %s", st->dir, rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

/* An iterator of iqp_store_iter_new: view.m NULL when the family is absent. */
struct iqp_store_iter {
    iqp_store *st;
    family_view view;
};

iqp_store_iter *iqp_store_iter_new(iqp_store *st, const iqp_store_snapshot *snap, iqp_cf cf,
                                   const void *from, size_t flen, char *err, size_t errlen) {
    iqp_store_iter *i = calloc(1, sizeof *i);
    if (!i) { snprintf(err, errlen, "out of memory"); return NULL; }
    i->st = st;
    if (!cf_handle(st, cf)) return i; /* an older store without this column family */
    if (view_open(st, &i->view, iter_options(cf, snap), cf, snap, INT64_MIN, INT64_MAX, 1, err, errlen) < 0) {
        free(i);
        return NULL;
    }
    if (from) iqp_merged_iter_seek(i->view.m, from, flen);
    else iqp_merged_iter_seek_to_first(i->view.m);
    return i;
}

int iqp_store_iter_valid(const iqp_store_iter *it) { return it->view.m && iqp_merged_iter_valid(it->view.m); }

const unsigned char *iqp_store_iter_key(const iqp_store_iter *it, size_t *klen) {
    return (const unsigned char *)iqp_merged_iter_key(it->view.m, klen);
}

const char *iqp_store_iter_value(const iqp_store_iter *it, size_t *vlen) {
    return iqp_merged_iter_value(it->view.m, vlen);
}

void iqp_store_iter_next(iqp_store_iter *it) { iqp_merged_iter_next(it->view.m); }

int iqp_store_iter_free(iqp_store_iter *it, char *err, size_t errlen) {
    if (!it) return 0;
    char *rerr = view_close(&it->view);
    int rc = 0;
    if (rerr) {
        snprintf(err, errlen, "read from store %s failed: %s", it->st->dir, rerr);
        free(rerr);
        rc = -1;
    }
    free(it);
    return rc;
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
    size_t n;
    rocksdb_column_family_handle_t **h = all_families(st, &n);
    for (size_t i = 0; i < n && !rerr; i++) {
        rocksdb_flush_cf(st->db, fo, h[i], &rerr);
        for (int pass = 0; pass < 2 && !rerr; pass++)
            rocksdb_compact_range_cf_opt(st->db, h[i], co, NULL, 0, NULL, 0);
    }
    free(h);
    rocksdb_compactoptions_destroy(co);
    rocksdb_flushoptions_destroy(fo);
    if (rerr) {
        rocks_error(err, errlen, "compaction failed in store", st->dir, rerr);
        free(rerr);
        return -1;
    }
    return 0;
}

/* Keys of cf (cells: 0) or cells of its packed values (cells: 1). */
static uint64_t count_in(iqp_store *st, iqp_cf cf, int cells) {
    uint64_t n = 0;
    char err[256];
    family_view view;
    if (!cf_handle(st, cf) ||
        view_open(st, &view, iter_options(cf, NULL), cf, NULL, INT64_MIN, INT64_MAX, 1, err, sizeof err) < 0)
        return 0;
    for (iqp_merged_iter_seek_to_first(view.m); iqp_merged_iter_valid(view.m); iqp_merged_iter_next(view.m)) {
        if (!cells) {
            n++;
            continue;
        }
        size_t vl;
        const char *v = iqp_merged_iter_value(view.m, &vl);
        iqp_packed_reader r;
        iqp_packed_cell c;
        iqp_packed_reader_init(&r, v, vl);
        while (iqp_packed_next(&r, &c) > 0) n++;
    }
    free(view_close(&view));
    return n;
}

uint64_t iqp_store_count_keys(iqp_store *st, iqp_cf cf) { return count_in(st, cf, 0); }

uint64_t iqp_store_count_cells(iqp_store *st, iqp_cf cf) { return count_in(st, cf, 1); }

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

/* ---- backups ---------------------------------------------------------------- */

/* 0 when the checkpoint in dir holds no batch between its commit and its
 * ingestion ("table-file ingestion"), else -1 with err. A checkpoint of a
 * read-only open copies the write-ahead log as it is then, so it may end
 * in a writer's ingesting commit whose table file it does not carry (its
 * DIR/ingest/ is not part of a checkpoint): such a copy could not be
 * completed, so it is refused (iqp backup tries again). */
static int checkpoint_whole(const iqp_store *st, const char *dir, char *err, size_t errlen) {
    iqp_store *ck = open_existing(dir, NULL, 1, err, errlen);
    int pending = ck ? ingest_pending(ck) : -1;
    iqp_store_close(ck);
    if (pending == 0) return 0;
    if (pending == 1)
        snprintf(err, errlen, "checkpoint of %s into %s caught a batch between its commit and the ingestion "
                              "of its counts (a writer was ingesting)", st->dir, dir);
    return -1;
}

int iqp_store_checkpoint(iqp_store *st, const char *dir, char *err, size_t errlen) {
    char *rerr = NULL;
    /* in this process, the gate keeps the checkpoint out of an ingestion */
    pthread_mutex_lock(&st->gate);
    if (st->torn) {
        pthread_mutex_unlock(&st->gate);
        snprintf(err, errlen, "checkpoint of %s: an ingestion failed; reopen the store to finish it", st->dir);
        return -1;
    }
    rocksdb_checkpoint_t *ck = rocksdb_checkpoint_object_create(st->db, &rerr);
    if (ck) {
        rocksdb_checkpoint_create(ck, dir, 0, &rerr);
        rocksdb_checkpoint_object_destroy(ck);
    }
    pthread_mutex_unlock(&st->gate);
    if (!rerr) return st->read_only ? checkpoint_whole(st, dir, err, errlen) : 0;
    snprintf(err, errlen, "checkpoint of %s into %s: %s", st->dir, dir, rerr);
    free(rerr);
    return -1;
}

/* ---- write statistics ------------------------------------------------------ */

/* One ticker from RocksDB's statistics text ("rocksdb.NAME COUNT : N"). */
static uint64_t ticker(const char *stats, const char *name) {
    size_t n = strlen(name);
    for (const char *p = stats; (p = strstr(p, name)); p += n) {
        if ((p != stats && p[-1] != '\n') || strncmp(p + n, " COUNT : ", 9) != 0) continue;
        return strtoull(p + n + 9, NULL, 10);
    }
    return 0;
}

int iqp_store_io_stats(iqp_store *st, iqp_store_io *io) {
    memset(io, 0, sizeof *io);
    char *stats = st->db_opts ? rocksdb_options_statistics_get_string(st->db_opts) : NULL;
    if (!stats) return -1;
    io->logical = ticker(stats, "rocksdb.bytes.written");
    io->flushed = ticker(stats, "rocksdb.flush.write.bytes");
    io->compacted = ticker(stats, "rocksdb.compact.write.bytes");
    io->ingested = st->ingested_bytes;
    io->ingested_files = st->ingests;
    rocksdb_free(stats);
    return 0;
}

void iqp_store_flush(iqp_store *st) {
    if (st->db && !st->read_only && !st->scratch && st->cf[IQP_CF__COUNT]) flush_memtables(st);
}

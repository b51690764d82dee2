/* check_store.c -- the RocksDB store: merge operator, reopen, layout
 * mismatch, read-only opening, bucket scans and compaction expiry; and the
 * store directory's guarantees, through the API and the iqp binary: a
 * damaged store (CURRENT lost, column families missing) is refused and left
 * as it is, a new store is never seen without its layout, a failed backfill
 * takes back the store it created, `iqp stats` beside a running backfill
 * never fails, and a full disk is an ordinary error
 * that a re-run recovers from (tmpfs, when the test may mount one).
 * Table-file ingestion (backfill's bulk load): the same store as the
 * memtable path, a crash between its steps recovered by a rerun, and a
 * lost table file refused. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <rocksdb/c.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "model/cells.h"
#include "model/config.h"
#include "model/window.h"
#include "store/store.h"
#include "tests/testutil.h"

#define H 3600000LL
static char err[1024];

/* ---- helpers ------------------------------------------------------------- */

typedef struct seen { int n; int64_t buckets[64]; int64_t first[64]; } seen;

static void collect(void *ud, int64_t bucket, const int64_t *vec, size_t n) {
    seen *s = ud;
    (void)n;
    s->buckets[s->n] = bucket;
    s->first[s->n++] = vec[0];
}

/* A count key for feature 0, query q, item it, at (gran, bucket). */
static void count_key(iqp_keybuf *kb, const iqp_config *cfg, const char *q, const char *it, int g,
                      int64_t bucket) {
    iqp_context ctx = tu_ctx(q, "US", "female");
    iqp_cells_context_prefix(kb, &cfg->features[0], &ctx);
    iqp_cells_append_entity(kb, it, strlen(it));
    iqp_cells_append_bucket(kb, g, bucket);
}

static void merge_one(iqp_store *st, const iqp_config *cfg, const char *q, const char *it, int g,
                      int64_t bucket, int64_t v, int64_t watermark) {
    iqp_keybuf kb;
    int64_t vec[IQP_MAX_COUNTERS] = {0};
    iqp_keybuf_init(&kb);
    count_key(&kb, cfg, q, it, g, bucket);
    vec[0] = v;
    vec[IQP_COUNTERS(cfg) - 1] = 2 * v;
    iqp_store_batch *b = iqp_store_batch_new(st);
    iqp_store_batch_merge(b, IQP_CF_COUNTS, kb.buf, kb.len, vec, IQP_COUNTERS(cfg));
    iqp_store_batch_set_watermark(b, watermark);
    ck_assert_msg(iqp_store_batch_commit(st, b, err, sizeof err) == 0, "%s", err);
    iqp_store_batch_free(b);
    iqp_keybuf_free(&kb);
}

static seen scan(iqp_store *st, const iqp_config *cfg, const char *q, const char *it, int g,
                 int64_t lo, int64_t hi) {
    iqp_keybuf kb;
    iqp_context ctx = tu_ctx(q, "US", "female");
    seen s;
    memset(&s, 0, sizeof s);
    iqp_keybuf_init(&kb);
    iqp_cells_context_prefix(&kb, &cfg->features[0], &ctx);
    iqp_cells_append_entity(&kb, it, strlen(it));
    ck_assert_int_eq(iqp_store_scan_buckets(st, IQP_CF_COUNTS, kb.buf, kb.len, g, lo, hi,
                                            IQP_COUNTERS(cfg), collect, &s, err, sizeof err), 0);
    iqp_keybuf_free(&kb);
    return s;
}

/* ---- tests --------------------------------------------------------------- */

START_TEST(merges_sum_and_survive_reopen) {
    char *dir = tu_mkdtemp("store");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    ck_assert_int_eq(iqp_store_watermark(st), INT64_MIN);
    for (int i = 1; i <= 5; i++) merge_one(st, &cfg, "red dress", "i1", 0, 7, i, 7 * H);
    merge_one(st, &cfg, "red dress", "i1", 0, 8, 100, 8 * H);
    merge_one(st, &cfg, "red dress", "i10", 0, 7, 1000, 8 * H); /* other item, same prefix start */
    seen s = scan(st, &cfg, "red dress", "i1", 0, 0, 100);
    ck_assert_int_eq(s.n, 2);
    ck_assert_int_eq(s.buckets[0], 7);
    ck_assert_int_eq(s.first[0], 15);
    ck_assert_int_eq(s.first[1], 100);
    s = scan(st, &cfg, "red dress", "i1", 0, 8, 8);  /* range is inclusive and exact */
    ck_assert_int_eq(s.n, 1);
    ck_assert_int_eq(s.first[0], 100);
    iqp_store_close(st);

    st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    ck_assert_int_eq(iqp_store_watermark(st), 8 * H);
    s = scan(st, &cfg, "red dress", "i1", 0, 0, 100);
    ck_assert_int_eq(s.n, 2);
    ck_assert_int_eq(s.first[0], 15);
    /* the last counter of the vector merged too */
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

/* The newest OPTIONS-* file RocksDB wrote into dir (it records every
 * option the open used), read whole. */
static char *newest_options_file(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    long best = -1;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "OPTIONS-", 8) == 0 && atol(e->d_name + 8) > best) best = atol(e->d_name + 8);
    closedir(d);
    ck_assert_int_ge(best, 0);
    char *path = tu_fmt("%s/OPTIONS-%06ld", dir, best), *text = tu_read_file(path, NULL);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    free(path);
    return text;
}

/* The config's "store" section reaches RocksDB (its OPTIONS file says what
 * it ran with), and the write statistics count what was written. */
START_TEST(store_tuning_reaches_rocksdb) {
    char *dir = tu_mkdtemp("tuning");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    cfg.store.l0_compaction_trigger = 13;
    cfg.store.write_buffer_mb = 7;
    cfg.store.background_jobs = 3;
    cfg.store.dedup_write_buffer_mb = 5;
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    iqp_store_io io;
    ck_assert_int_eq(iqp_store_io_stats(st, &io), 0);
    uint64_t before = io.logical, key_bytes = 0;
    iqp_keybuf kb;
    iqp_keybuf_init(&kb);
    for (int i = 0; i < 50; i++) {
        count_key(&kb, &cfg, "red dress", "i1", 0, i);
        key_bytes += kb.len + 1; /* + at least one value byte */
        merge_one(st, &cfg, "red dress", "i1", 0, i, 1, i * H);
    }
    iqp_keybuf_free(&kb);
    iqp_store_flush(st);
    ck_assert_int_eq(iqp_store_io_stats(st, &io), 0);
    ck_assert_msg(io.logical - before >= key_bytes, "logical %" PRIu64 " < %" PRIu64 " key bytes",
                  io.logical - before, key_bytes);
    ck_assert_uint_gt(io.flushed, 0);
    ck_assert_uint_eq(io.compacted, 0); /* one L0 file per family: below the trigger */
    char *opts = newest_options_file(dir);
    ck_assert_msg(strstr(opts, "level0_file_num_compaction_trigger=13"), "trigger not applied");
    ck_assert_msg(strstr(opts, "write_buffer_size=7340032"), "write buffer not applied");
    ck_assert_msg(strstr(opts, "max_background_jobs=3"), "background jobs not applied");
    /* the counter families compact universally, the dedup family at its own trigger */
    ck_assert_msg(strstr(opts, "compaction_style=kCompactionStyleUniversal"), "universal not applied");
    ck_assert_msg(strstr(opts, "compaction_style=kCompactionStyleLevel"), "level compaction gone");
    ck_assert_msg(strstr(opts, "level0_file_num_compaction_trigger=2\n"), "dedup trigger not applied");
    ck_assert_msg(strstr(opts, "write_buffer_size=5242880"), "dedup write buffer not applied");
    free(opts);
    iqp_store_close(st);
    st = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    ck_assert_int_eq(iqp_store_io_stats(st, &io), -1); /* readers keep no statistics */
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(layout_mismatch_is_refused) {
    char *dir = tu_mkdtemp("store");
    iqp_config cfg, other;
    iqp_config_defaults(&cfg);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_ptr_nonnull(st);
    iqp_store_close(st);
    iqp_config_defaults(&other);
    ck_assert_int_eq(iqp_config_parse(&other, "{\"actions\": [\"click\", \"buy\"]}", "t", err, sizeof err), 0);
    st = iqp_store_open(dir, &other, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err, "actions differ") && strstr(err, "buy") && strstr(err, dir), "%s", err);
    st = iqp_store_open(dir, &other, IQP_STORE_READ_ONLY, err, sizeof err);
    ck_assert_ptr_null(st);
    /* tuning differences are fine */
    other = cfg;
    other.dedup_horizon_ms = 5;
    st = iqp_store_open(dir, &other, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(read_only_uses_store_layout) {
    char *dir = tu_mkdtemp("store");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_int_eq(iqp_config_parse(&cfg, "{\"windows\": [{\"name\": \"3h\", \"length\": \"3h\", "
                                            "\"granularity\": \"1h\"}]}", "t", err, sizeof err), 0);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_ptr_nonnull(st);
    merge_one(st, &cfg, "q", "i", 0, 3, 9, 3 * H);
    iqp_store_close(st);
    iqp_store *ro = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    ck_assert_msg(ro != NULL, "%s", err);
    const iqp_config *rc = iqp_store_config(ro);
    ck_assert_int_eq(rc->n_windows, 1);
    ck_assert_str_eq(rc->windows[0].name, "3h");
    ck_assert_int_eq(rc->windows[0].n_buckets, 3);
    seen s = scan(ro, rc, "q", "i", 0, 0, 10);
    ck_assert_int_eq(s.n, 1);
    ck_assert_int_eq(s.first[0], 9);
    char *bogus = tu_mkdtemp("nostore");
    ck_assert_ptr_null(iqp_store_open(bogus, NULL, IQP_STORE_READ_ONLY, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "no iqp store"));
    iqp_store_close(ro);
    tu_rmrf(dir);
    tu_rmrf(bogus);
    free(dir);
    free(bogus);
}
END_TEST

START_TEST(compaction_expires_old_buckets_and_markers) {
    char *dir = tu_mkdtemp("store");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_int_eq(iqp_config_parse(&cfg, "{\"windows\": [{\"name\": \"3h\", \"length\": \"3h\", "
                                            "\"granularity\": \"1h\"}], \"dedup_horizon\": \"2h\"}",
                                      "t", err, sizeof err), 0);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_ptr_nonnull(st);
    for (int64_t b = 0; b <= 10; b++) merge_one(st, &cfg, "q", "i", 0, b, 1, b * H);
    /* a retained cell whose merges sum to zero (an action count moved away
     * in a later batch) is dropped too: it reads as absent anyway */
    merge_one(st, &cfg, "q", "moved", 0, 9, 1, 10 * H);
    merge_one(st, &cfg, "q", "moved", 0, 9, -1, 10 * H);
    /* dedup markers at hours 1..10 */
    iqp_store_batch *bt = iqp_store_batch_new(st);
    for (int64_t h = 1; h <= 10; h++) {
        unsigned char mk[IQP_MARKER_KEY_LEN];
        char id[32];
        /* written at hour h + 1, counted at ts h (rule 7 reads written_wm) */
        iqp_marker m = {h * H, (h + 1) * H};
        snprintf(id, sizeof id, "e%lld", (long long)h);
        iqp_cells_event_marker(mk, id, strlen(id));
        iqp_store_batch_put_marker(bt, mk, sizeof mk, &m);
    }
    ck_assert_int_eq(iqp_store_batch_commit(st, bt, err, sizeof err), 0);
    iqp_store_batch_free(bt);
    ck_assert_int_eq(iqp_store_count_keys(st, IQP_CF_COUNTS), 12);
    ck_assert_int_eq(iqp_store_compact(st, err, sizeof err), 0);
    /* watermark hour 10, retention 3 buckets: 8, 9, 10 remain */
    seen s = scan(st, &cfg, "q", "i", 0, 0, 100);
    ck_assert_int_eq(s.n, 3);
    ck_assert_int_eq(s.buckets[0], 8);
    ck_assert_int_eq(iqp_store_count_keys(st, IQP_CF_COUNTS), 3);
    /* markers written at >= 10h - 2h remain: written at hours 8..11 (e7..e10) */
    ck_assert_int_eq(iqp_store_count_keys(st, IQP_CF_DEDUP), 4);
    unsigned char mk[IQP_MARKER_KEY_LEN];
    iqp_marker m;
    iqp_cells_event_marker(mk, "e7", 2);
    ck_assert_int_eq(iqp_store_get_marker(st, mk, sizeof mk, &m), 1);
    ck_assert_int_eq(m.ts, 7 * H);
    ck_assert_int_eq(m.written_wm, 8 * H);
    iqp_cells_event_marker(mk, "e6", 2);
    ck_assert_int_eq(iqp_store_get_marker(st, mk, sizeof mk, &m), 0);
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

/* ---- the store directory ------------------------------------------------- */

#define GEN_START_MS 1717996834567LL /* fixed: gen gives the same bytes every run */
#define GEN_AS_OF_MS (GEN_START_MS + 6 * H)

/* Stretch for the sanitizer build (ops/test --sanitize sets it). */
static double time_multiplier(void) {
    const char *m = getenv("CK_TIMEOUT_MULTIPLIER");
    double v = m ? atof(m) : 1.0;
    return v >= 1.0 ? v : 1.0;
}

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Runs `iqp ARGS` (shell text) with stderr folded into *out. */
static int run_iqp(char **out, const char *args) {
    char *cmd = tu_fmt("%s %s 2>&1", tu_iqp(), args);
    int rc = tu_run(cmd, out);
    free(cmd);
    return rc;
}

/* A deterministic event log of `impressions` impressions (and their actions). */
static void gen_log(const char *path, int impressions) {
    char *q = tu_shell_quote(path);
    char *args = tu_fmt("gen --seed 7 --impressions %d --start %lld --span 6h --out %s",
                        impressions, (long long)GEN_START_MS, q);
    char *out = NULL;
    ck_assert_msg(run_iqp(&out, args) == 0, "%s", out);
    free(out);
    free(args);
    free(q);
}

/* Backfills log into store with batches of flush events; the exit status. */
static int backfill(const char *store, const char *log, int flush, char **out) {
    char *qs = tu_shell_quote(store), *ql = tu_shell_quote(log);
    char *args = tu_fmt("backfill --quiet --flush-events %d --store %s %s", flush, qs, ql);
    int rc = run_iqp(out, args);
    free(args);
    free(qs);
    free(ql);
    return rc;
}

/* One line per entry of dir, sorted by name: name, size and an FNV-1a hash
 * of the bytes, so that any change to any file shows. */
static char *dir_listing(const char *dir) {
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    if (n < 0) return tu_fmt("(cannot read %s: %s)", dir, strerror(errno));
    char *out = strdup("");
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        if (strcmp(name, ".") != 0 && strcmp(name, "..") != 0) {
            char *path = tu_fmt("%s/%s", dir, name), *next;
            size_t len = 0;
            char *data = tu_read_file(path, &len);
            uint64_t h = 1469598103934665603ULL;
            for (size_t k = 0; data && k < len; k++) h = (h ^ (unsigned char)data[k]) * 1099511628211ULL;
            next = tu_fmt("%s%s %zu %016" PRIx64 "\n", out, name, data ? len : 0, h);
            free(out);
            out = next;
            free(data);
            free(path);
        }
        free(names[i]);
    }
    free(names);
    return out;
}

static int count_suffix(const char *listing, const char *suffix) {
    int n = 0;
    for (const char *p = strstr(listing, suffix); p; p = strstr(p + 1, suffix)) n++;
    return n;
}

/* Removes dir/CURRENT and, when with_wal, every dir/NNNNNN.log. */
static void lose_current(const char *dir, int with_wal) {
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    ck_assert_int_ge(n, 0);
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        size_t len = strlen(name);
        if (strcmp(name, "CURRENT") == 0 ||
            (with_wal && len > 4 && strcmp(name + len - 4, ".log") == 0)) {
            char *path = tu_fmt("%s/%s", dir, name);
            ck_assert_int_eq(unlink(path), 0);
            free(path);
        }
        free(names[i]);
    }
    free(names);
}

/* Every command that opens a store refuses dir (exit 1, a message naming
 * dir and containing `why`), through the binary and the API, and leaves
 * every file of it as it was. */
static void assert_refused(const char *dir, const char *log, const char *why) {
    char *before = dir_listing(dir), *qd = tu_shell_quote(dir), *ql = tu_shell_quote(log);
    const char *iqp = tu_iqp();
    char *cmds[] = {
        tu_fmt("%s backfill --quiet --store %s %s", iqp, qd, ql),
        tu_fmt("%s stats --store %s", iqp, qd),
        tu_fmt("%s stats --compact --store %s", iqp, qd),
        tu_fmt("%s lookup --store %s --query q --country US --gender f i1", iqp, qd),
        tu_fmt("%s refresh --quiet --threads 1 --store %s --dump /dev/null", iqp, qd),
        /* bounded: were the store opened, stream would wait for a broker */
        tu_fmt("timeout 60 %s stream --store %s --brokers 127.0.0.1:9 --metrics-listen off", iqp,
               qd),
    };
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        char *out = NULL, *cmd = tu_fmt("%s 2>&1", cmds[i]);
        int rc = tu_run(cmd, &out);
        ck_assert_msg(rc == 1 && strstr(out, dir) && strstr(out, why),
                      "%s: exit %d (want 1, a message naming %s and '%s'):\n%s", cmds[i], rc, dir,
                      why, out);
        free(out);
        free(cmd);
        free(cmds[i]);
    }
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_ptr_null(iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, sizeof err));
    ck_assert_msg(strstr(err, dir) && strstr(err, why), "%s", err);
    ck_assert_ptr_null(iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err));
    ck_assert_msg(strstr(err, dir) && strstr(err, why), "%s", err);
    char *after = dir_listing(dir);
    ck_assert_msg(strcmp(before, after) == 0, "files of %s changed:\nbefore\n%s\nafter\n%s", dir,
                  before, after);
    free(after);
    free(before);
    free(qd);
    free(ql);
}

START_TEST(store_without_current_is_refused_and_left_alone) {
    char *base = tu_mkdtemp("halfstore");
    char *log = tu_fmt("%s/events.jsonl", base);
    gen_log(log, 300);
    for (int with_wal = 0; with_wal <= 1; with_wal++) {
        char *dir = tu_fmt("%s/store%d", base, with_wal), *out = NULL;
        ck_assert_msg(backfill(dir, log, 100, &out) == 0, "%s", out);
        free(out);
        lose_current(dir, with_wal);
        char *files = dir_listing(dir);
        /* the counts are in SST files: what a re-created store would lose */
        ck_assert_msg(count_suffix(files, ".sst ") > 0 && !strstr(files, "CURRENT "), "%s", files);
        free(files);
        assert_refused(dir, log, "CURRENT");
        free(dir);
    }
    tu_rmrf(base);
    free(log);
    free(base);
}
END_TEST

/* A RocksDB database without iqp's column families (what an interrupted
 * creation by an older iqp left): refused, no read of a missing handle. */
START_TEST(store_without_column_families_is_refused) {
    char *base = tu_mkdtemp("bare");
    char *dir = tu_fmt("%s/store", base), *log = tu_fmt("%s/events.jsonl", base);
    gen_log(log, 20);
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(o, 1);
    char *rerr = NULL;
    rocksdb_t *db = rocksdb_open(o, dir, &rerr);
    ck_assert_msg(db != NULL, "%s", rerr);
    rocksdb_close(db);
    rocksdb_options_destroy(o);
    assert_refused(dir, log, "column family");
    tu_rmrf(base);
    free(dir);
    free(log);
    free(base);
}
END_TEST

/* A reader polling the directories a writer creates sees each one absent
 * or whole (layout and all), never in between. */
START_TEST(new_store_is_never_seen_without_layout) {
    enum { N = 25 };
    char *base = tu_mkdtemp("atomic"), *dirs[N];
    for (int i = 0; i < N; i++) dirs[i] = tu_fmt("%s/s%d", base, i);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        iqp_config cfg;
        iqp_config_defaults(&cfg);
        for (int i = 0; i < N; i++) {
            iqp_store *st = iqp_store_open(dirs[i], &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
            if (!st) _exit(1);
            iqp_store_close(st);
        }
        _exit(0);
    }
    double deadline = mono_now() + 60 * time_multiplier();
    int opened = 0;
    long polls = 0;
    char bad[1024] = "";
    while (opened < N && !bad[0] && mono_now() < deadline) {
        iqp_store *ro = iqp_store_open(dirs[opened], NULL, IQP_STORE_READ_ONLY, err, sizeof err);
        polls++;
        if (ro) {
            ck_assert_int_eq(iqp_store_config(ro)->n_features, 5); /* the layout was there */
            iqp_store_close(ro);
            opened++;
        } else if (!strstr(err, "no iqp store at")) {
            snprintf(bad, sizeof bad, "%s", err);
        }
    }
    int status = 0;
    if (bad[0] || opened < N) kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    ck_assert_msg(!bad[0], "a reader saw a store being created: %s", bad);
    ck_assert_msg(opened == N, "only %d of %d stores appeared in time", opened, N);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the writer failed");
    ck_assert_int_gt(polls, N); /* the reader did poll while stores were missing */
    for (int i = 0; i < N; i++) free(dirs[i]);
    char *left = dir_listing(base);
    ck_assert_msg(!strstr(left, "iqp-new"), "a temporary directory was left:\n%s", left);
    free(left);
    tu_rmrf(base);
    free(base);
}
END_TEST

/* `iqp stats` minus disk_bytes and what follows (which depend on files). */
static char *stats_cells(const char *dir) {
    char *qd = tu_shell_quote(dir), *args = tu_fmt("stats --store %s", qd), *out = NULL;
    int rc = run_iqp(&out, args);
    char *cut = strstr(out, ",\"disk_bytes\"");
    if (rc != 0 || !cut) {
        char *e = tu_fmt("(stats exit %d: %s)", rc, out);
        free(out);
        out = e;
    } else {
        *cut = '\0';
    }
    free(args);
    free(qd);
    return out;
}

/* Every value of the store as of GEN_AS_OF_MS, canonical text (or why not). */
static char *dump_values(const char *dir, const char *path) {
    char *qd = tu_shell_quote(dir), *qp = tu_shell_quote(path), *out = NULL;
    char *args = tu_fmt("refresh --quiet --threads 1 --as-of %lld --store %s --dump %s",
                        (long long)GEN_AS_OF_MS, qd, qp);
    int rc = run_iqp(&out, args);
    char *text = rc == 0 ? tu_read_file(path, NULL) : NULL;
    if (!text) text = tu_fmt("(refresh exit %d: %s)", rc, out);
    free(out);
    free(args);
    free(qd);
    free(qp);
    return text;
}

/* `iqp stats`, polled from the moment a backfill starts creating a store
 * until it ends, always either finds no store yet or prints the store's
 * figures: never an error, never a crash. */
START_TEST(stats_beside_a_running_backfill) {
    char *base = tu_mkdtemp("beside");
    char *log = tu_fmt("%s/events.jsonl", base), *store = tu_fmt("%s/store", base);
    gen_log(log, 3000);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char *out = NULL;
        _exit(backfill(store, log, 200, &out) == 0 ? 0 : 1);
    }
    double deadline = mono_now() + 120 * time_multiplier();
    int status = 0, found = 0, polls = 0;
    char *bad = NULL;
    pid_t done = 0;
    while (!bad && !done && mono_now() < deadline) {
        done = waitpid(pid, &status, WNOHANG);
        char *out = stats_cells(store);
        polls++;
        if (strncmp(out, "{\"watermark_ms\":", 16) == 0) found++;
        else if (!strstr(out, "no iqp store at")) bad = tu_fmt("%s", out);
        free(out);
    }
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    ck_assert_msg(!bad, "iqp stats beside a backfill: %s", bad);
    ck_assert_msg(done && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the backfill failed");
    ck_assert_msg(found > 1, "stats saw the store only %d times in %d polls", found, polls);
    tu_rmrf(base);
    free(log);
    free(store);
    free(base);
}
END_TEST

START_TEST(failed_backfill_takes_back_its_store) {
    char *base = tu_mkdtemp("failed");
    char *log = tu_fmt("%s/events.jsonl", base), *missing = tu_fmt("%s/missing.jsonl", base);
    char *fresh = tu_fmt("%s/new", base), *empty = tu_fmt("%s/empty", base);
    char *store = tu_fmt("%s/store", base), *dl = tu_fmt("%s/dl.jsonl", base);
    char *old_dl = tu_fmt("%s/old-dl.jsonl", base), *dump = tu_fmt("%s/dump.txt", base), *out;
    gen_log(log, 200);
    /* into a directory that did not exist, with a dead-letter file of its own */
    char *qf = tu_shell_quote(fresh), *qm = tu_shell_quote(missing), *qdl = tu_shell_quote(dl);
    char *args = tu_fmt("backfill --quiet --store %s --dead-letter %s %s", qf, qdl, qm);
    ck_assert_int_eq(run_iqp(&out, args), 1);
    ck_assert_msg(strstr(out, missing), "%s", out);
    free(out);
    free(args);
    struct stat sb;
    ck_assert_msg(stat(fresh, &sb) < 0 && errno == ENOENT, "%s is left behind", fresh);
    ck_assert_msg(stat(dl, &sb) < 0 && errno == ENOENT, "%s is left behind", dl);
    /* a dead-letter file that was there before stays as it was */
    FILE *f = fopen(old_dl, "w");
    fputs("{\"kept\": true}\n", f);
    fclose(f);
    char *qo = tu_shell_quote(old_dl);
    args = tu_fmt("backfill --quiet --store %s --dead-letter %s %s", qf, qo, qm);
    ck_assert_int_eq(run_iqp(&out, args), 1);
    free(out);
    free(args);
    char *kept = tu_read_file(old_dl, NULL);
    ck_assert_str_eq(kept, "{\"kept\": true}\n");
    free(kept);
    ck_assert_msg(stat(fresh, &sb) < 0 && errno == ENOENT, "%s is left behind", fresh);
    /* into an empty directory: it stays, empty */
    ck_assert_int_eq(mkdir(empty, 0755), 0);
    ck_assert_int_eq(backfill(empty, missing, 100, &out), 1);
    free(out);
    char *listing = dir_listing(empty);
    ck_assert_msg(listing[0] == '\0', "left in %s:\n%s", empty, listing);
    free(listing);
    /* into an existing store: it keeps every count */
    ck_assert_msg(backfill(store, log, 100, &out) == 0, "%s", out);
    free(out);
    char *cells = stats_cells(store), *values = dump_values(store, dump);
    ck_assert_int_eq(backfill(store, missing, 100, &out), 1);
    free(out);
    char *cells2 = stats_cells(store), *values2 = dump_values(store, dump);
    ck_assert_str_eq(cells2, cells);
    ck_assert_msg(strcmp(values, values2) == 0 && strlen(values) > 1000, "values changed");
    listing = dir_listing(base);
    ck_assert_msg(!strstr(listing, "iqp-new"), "a temporary directory was left:\n%s", listing);
    free(listing);
    free(cells);
    free(cells2);
    free(values);
    free(values2);
    free(qf);
    free(qm);
    free(qdl);
    free(qo);
    tu_rmrf(base);
    free(base);
    free(log);
    free(missing);
    free(fresh);
    free(empty);
    free(store);
    free(dl);
    free(old_dl);
    free(dump);
}
END_TEST

/* ---- disk full ------------------------------------------------------------ */

/* Fills the file system holding dir until a write fails; 0 when it did. */
static int fill_disk(const char *dir) {
    char *path = tu_fmt("%s/filler", dir), block[4096];
    FILE *f = fopen(path, "w");
    free(path);
    if (!f) return errno == ENOSPC ? 0 : -1;
    memset(block, 'x', sizeof block);
    setvbuf(f, NULL, _IONBF, 0);
    int rc = -1;
    for (long i = 0; i < 1L << 20; i++)
        if (fwrite(block, 1, sizeof block, f) != sizeof block) {
            rc = errno == ENOSPC ? 0 : -1;
            break;
        }
    fclose(f);
    return rc;
}

/* The first failed expectation, kept until the tmpfs is unmounted. */
static char *disk_failure;
#define EXPECT(cond, ...) \
    do { if (!disk_failure && !(cond)) disk_failure = tu_fmt(__VA_ARGS__); } while (0)

/* Backfill into a tmpfs too small for the store (2 MB: the store is 2.3 MB
 * under universal compaction of the counter families, 2.6 MB under level
 * compaction), mounted at the store
 * directory itself (so the store is built in place, not renamed): exit 1
 * naming the cause and the store, commits so far readable; again while
 * the disk is full: the same; after the disk grows: the same counts, value
 * for value, as a backfill on ample disk. */
static void disk_full_scenario(const char *base, const char *mnt) {
    char *log = tu_fmt("%s/events.jsonl", base), *ref = tu_fmt("%s/ref", base), *out = NULL;
    char *dump = tu_fmt("%s/dump.txt", base);
    gen_log(log, 5000);
    EXPECT(backfill(ref, log, 500, &out) == 0, "reference backfill: %s", out);
    free(out);
    char *want_cells = stats_cells(ref), *want_values = dump_values(ref, dump);

    int rc = backfill(mnt, log, 500, &out);
    EXPECT(rc == 1 && strcasestr(out, "no space left on device") && strstr(out, mnt),
           "backfill on a full disk: exit %d (want 1, naming the cause and %s):\n%s", rc, mnt, out);
    free(out);
    char *cells = stats_cells(mnt);
    EXPECT(strstr(cells, "\"count_cells\":") && !strstr(cells, "\"count_cells\":0,") &&
               strcmp(cells, want_cells) != 0,
           "after the failure the store should hold the batches committed before it: %s", cells);
    free(cells);

    EXPECT(fill_disk(mnt) == 0, "cannot fill %s", mnt);
    rc = backfill(mnt, log, 500, &out);
    EXPECT(rc == 1 && strcasestr(out, "no space left on device"),
           "backfill while the disk is still full: exit %d (want 1):\n%s", rc, out);
    free(out);

    char *filler = tu_fmt("%s/filler", mnt);
    unlink(filler);
    free(filler);
    EXPECT(mount("tmpfs", mnt, "tmpfs", MS_REMOUNT, "size=64m") == 0, "remount: %s",
           strerror(errno));
    rc = backfill(mnt, log, 500, &out);
    EXPECT(rc == 0, "resumed backfill: exit %d:\n%s", rc, out);
    free(out);
    cells = stats_cells(mnt);
    char *values = dump_values(mnt, dump);
    EXPECT(strcmp(cells, want_cells) == 0, "resumed: %s\nample disk: %s", cells, want_cells);
    EXPECT(strcmp(values, want_values) == 0 && strlen(values) > 1000,
           "resumed store's values differ from the ample-disk store's (%zu vs %zu bytes)",
           strlen(values), strlen(want_values));
    free(cells);
    free(values);
    free(want_cells);
    free(want_values);
    free(log);
    free(ref);
    free(dump);
}

START_TEST(disk_full_is_an_error_and_resumes) {
    if (geteuid() != 0) {
        fprintf(stderr, "check_store: disk_full_is_an_error_and_resumes SKIPPED: "
                        "mounting a size-limited tmpfs needs root\n");
        return;
    }
    char *base = tu_mkdtemp("diskfull"), *mnt = tu_fmt("%s/store", base);
    ck_assert_int_eq(mkdir(mnt, 0755), 0);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=2m") != 0) {
        fprintf(stderr, "check_store: disk_full_is_an_error_and_resumes SKIPPED: "
                        "cannot mount a tmpfs at %s: %s\n", mnt, strerror(errno));
        tu_rmrf(base);
        free(mnt);
        free(base);
        return;
    }
    disk_failure = NULL;
    disk_full_scenario(base, mnt);
    int unmounted = umount2(mnt, MNT_DETACH);
    ck_assert_msg(!disk_failure, "%s", disk_failure);
    ck_assert_int_eq(unmounted, 0);
    tu_rmrf(base);
    free(mnt);
    free(base);
}
END_TEST

/* ---- table-file ingestion (iqp_store_set_ingest, `iqp backfill`) ---------- */

#define INGEST_IMPRESSIONS 4000 /* ~8,800 lines over 30 days */

/* A 30-day log for the ingestion tests (batches of 1000 events write
 * well over IQP_STORE_INGEST_MIN_MERGES counts merges). */
static void gen_month_log(const char *path) {
    char *q = tu_shell_quote(path), *out = NULL;
    char *args = tu_fmt("gen --seed 11 --impressions %d --start %lld --span 30d --out %s",
                        INGEST_IMPRESSIONS, (long long)GEN_START_MS, q);
    ck_assert_msg(run_iqp(&out, args) == 0, "%s", out);
    free(out);
    free(args);
    free(q);
}

/* `[ENV] iqp backfill FLAGS --store STORE LOG` with its output (stderr
 * included) in *out; the exit status. */
static int backfill_env(const char *env, const char *store, const char *log, const char *flags,
                        char **out) {
    char *qs = tu_shell_quote(store), *ql = tu_shell_quote(log);
    char *cmd = tu_fmt("%s %s backfill %s --store %s %s 2>&1", env ? env : "", tu_iqp(), flags, qs, ql);
    int rc = tu_run(cmd, out);
    free(cmd);
    free(qs);
    free(ql);
    return rc;
}

/* Table files the backfill's summary says it ingested (-1: no line). */
static long ingested_files(const char *out) {
    const char *p = strstr(out, " table files)");
    if (!p) return -1;
    while (p > out && p[-1] >= '0' && p[-1] <= '9') p--;
    return strtol(p, NULL, 10);
}

typedef struct digest {
    uint64_t keys, hash, reserved; /* reserved: keys starting 0xff (none may be seen) */
} digest;

static int digest_entry(void *ud, const unsigned char *key, size_t klen, const char *val, size_t vlen) {
    digest *d = ud;
    const unsigned char *parts[2] = {key, (const unsigned char *)val};
    size_t lens[2] = {klen, vlen};
    d->keys++;
    d->reserved += klen > 0 && key[0] == 0xff;
    for (int p = 0; p < 2; p++) {
        for (int i = 0; i < 8; i++) d->hash = (d->hash ^ ((lens[p] >> (8 * i)) & 0xff)) * 1099511628211ULL;
        for (size_t i = 0; i < lens[p]; i++) d->hash = (d->hash ^ parts[p][i]) * 1099511628211ULL;
    }
    return 0;
}

/* Every key and value of every column family of the store at dir after a
 * full compaction (expiry run, merges folded) by a store opened with the
 * config text (NULL: the defaults): one line per family with its key
 * count and an FNV-1a hash of the keys and values. */
static char *store_digest_with(const char *dir, const char *config) {
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    if (config) ck_assert_msg(iqp_config_parse(&cfg, config, "t", err, sizeof err) == 0, "%s", err);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    ck_assert_msg(iqp_store_compact(st, err, sizeof err) == 0, "%s", err);
    char *text = strdup("");
    for (int cf = 0; cf < IQP_CF__COUNT; cf++) {
        digest d = {0, 14695981039346656037ULL, 0};
        ck_assert_msg(iqp_store_scan_keys(st, NULL, (iqp_cf)cf, NULL, 0, digest_entry, &d, err,
                                          sizeof err) == 0, "%s", err);
        ck_assert_msg(d.reserved == 0, "a scan of %s returned %" PRIu64 " reserved keys", dir, d.reserved);
        char *next = tu_fmt("%scf %d: %" PRIu64 " keys, hash %016" PRIx64 "\n", text, cf, d.keys, d.hash);
        free(text);
        text = next;
    }
    iqp_store_close(st);
    return text;
}

static char *store_digest(const char *dir) { return store_digest_with(dir, NULL); }

/* The same log at two batch sizes, with and without ingestion (and on two
 * counting threads, whose drain hands the store two sorted runs): every
 * key and value of the compacted stores is the same. */
START_TEST(ingest_matches_memtable_path) {
    char *base = tu_mkdtemp("ingest"), *log = tu_fmt("%s/events.jsonl", base);
    gen_month_log(log);
    static const char *const flags[] = {"--no-ingest --flush-events 1000", "--flush-events 1000",
                                        "--threads 2 --flush-events 1000", "--no-ingest --flush-events 200000",
                                        "--flush-events 200000"};
    char *want = NULL;
    for (size_t k = 0; k < sizeof flags / sizeof *flags; k++) {
        char *store = tu_fmt("%s/store-%zu", base, k), *out = NULL;
        ck_assert_msg(backfill_env(NULL, store, log, flags[k], &out) == 0, "%s: %s", flags[k], out);
        long files = ingested_files(out);
        if (strstr(flags[k], "--no-ingest")) ck_assert_msg(files == 0, "%s ingested files: %s", flags[k], out);
        else ck_assert_msg(files > 0, "%s ingested no table file: %s", flags[k], out);
        char *got = store_digest(store);
        if (!want) want = got;
        else {
            ck_assert_msg(strcmp(got, want) == 0, "%s:\n%swithout ingestion:\n%s", flags[k], got, want);
            free(got);
        }
        free(out);
        free(store);
    }
    fprintf(stderr, "check_store: ingestion vs memtable path:\n%s", want);
    free(want);
    tu_rmrf(base);
    free(log);
    free(base);
}
END_TEST

/* The counter families' compaction style ("counts_compaction") changes
 * how often cells are rewritten, never what they sum to: the same log
 * backfilled under level and under universal compaction, in small batches
 * so that both compact, gives the same keys and values; and each store
 * reopens under the other style (a style change between runs) and
 * compacts fully there. */
START_TEST(compaction_style_changes_no_count) {
    static const char *const level = "{\"store\": {\"counts_compaction\": \"level\", "
                                     "\"l0_compaction_trigger\": 2}}";
    static const char *const universal = "{\"store\": {\"counts_compaction\": \"universal\", "
                                         "\"l0_compaction_trigger\": 2}}";
    char *base = tu_mkdtemp("style"), *log = tu_fmt("%s/events.jsonl", base);
    gen_month_log(log);
    char *digests[2];
    const char *configs[2] = {level, universal};
    for (int k = 0; k < 2; k++) {
        char *store = tu_fmt("%s/store-%d", base, k), *conf = tu_fmt("%s/config-%d.json", base, k);
        char *out = NULL, *flags = tu_fmt("--config %s --flush-events 500", conf);
        FILE *f = fopen(conf, "w");
        ck_assert_ptr_nonnull(f);
        fputs(configs[k], f);
        ck_assert_int_eq(fclose(f), 0);
        ck_assert_msg(backfill_env(NULL, store, log, flags, &out) == 0, "%s: %s", configs[k], out);
        ck_assert_msg(strstr(out, "compactions wrote 0.0 MB") == NULL, "no compaction under %s: %s",
                      configs[k], out);
        digests[k] = store_digest_with(store, configs[1 - k]);
        free(out);
        free(flags);
        free(conf);
        free(store);
    }
    ck_assert_msg(strcmp(digests[0], digests[1]) == 0, "level:\n%suniversal:\n%s", digests[0], digests[1]);
    free(digests[0]);
    free(digests[1]);
    tu_rmrf(base);
    free(log);
    free(base);
}
END_TEST

/* The process dies between the steps of a batch's ingestion (the test
 * hook IQP_TEST_DIE_AT, at the second batch); the same backfill again
 * finishes or redoes that batch: the store equals an uninterrupted
 * backfill's, nothing lost, nothing counted twice. */
START_TEST(ingest_crash_between_steps_recovers) {
    static const char *const steps[] = {"after-file", "after-commit", "after-ingest"};
    char *base = tu_mkdtemp("ingestcrash"), *log = tu_fmt("%s/events.jsonl", base);
    char *ref = tu_fmt("%s/ref", base), *out = NULL;
    gen_month_log(log);
    ck_assert_msg(backfill_env(NULL, ref, log, "--no-ingest --flush-events 1000", &out) == 0, "%s", out);
    free(out);
    char *want = store_digest(ref);
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        char *store = tu_fmt("%s/store-%s", base, steps[k]), *env = tu_fmt("IQP_TEST_DIE_AT=%s:2", steps[k]);
        int rc = backfill_env(env, store, log, "--flush-events 1000", &out);
        ck_assert_msg(rc == 99, "%s: the backfill should have died (exit 99), exit %d: %s", env, rc, out);
        free(out);
        rc = backfill_env(NULL, store, log, "--flush-events 1000", &out);
        ck_assert_msg(rc == 0, "rerun after %s: exit %d: %s", env, rc, out);
        free(out);
        char *got = store_digest(store);
        ck_assert_msg(strcmp(got, want) == 0, "after %s and a rerun:\n%suninterrupted:\n%s", env, got, want);
        free(got);
        free(env);
        free(store);
    }
    free(want);
    tu_rmrf(base);
    free(ref);
    free(log);
    free(base);
}
END_TEST

/* 1 when the table file at path can be ingested into a fresh RocksDB
 * database: RocksDB refuses a file that an earlier ingestion stamped with
 * its global sequence number. */
static int table_file_ingestible(const char *path, const char *scratch) {
    char *rerr = NULL;
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(o, 1);
    rocksdb_t *db = rocksdb_open(o, scratch, &rerr);
    int ok = 0;
    if (db) {
        rocksdb_ingestexternalfileoptions_t *io = rocksdb_ingestexternalfileoptions_create();
        rocksdb_ingest_external_file(db, &path, 1, io, &rerr);
        ok = rerr == NULL;
        rocksdb_ingestexternalfileoptions_destroy(io);
        rocksdb_close(db);
    }
    if (rerr) fprintf(stderr, "check_store: ingesting %s: %s\n", path, rerr);
    free(rerr);
    rocksdb_options_destroy(o);
    return ok;
}

/* The path of one table file of batch 1 in store's ingest directory
 * ("1.sst" in a store of one counts family, "1@<period>.sst" per period
 * family), or of "1.sst" when there is none. */
static char *first_batch_file(const char *store) {
    char *dir = tu_fmt("%s/ingest", store), *found = NULL;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && !found && (e = readdir(d)))
        if (strcmp(e->d_name, "1.sst") == 0 || strncmp(e->d_name, "1@", 2) == 0) found = tu_fmt("%s/%s", dir, e->d_name);
    if (d) closedir(d);
    if (!found) found = tu_fmt("%s/1.sst", dir);
    free(dir);
    return found;
}

/* The store ingests a copy of its kept table file and never writes to the
 * kept one, so that a crash inside an ingestion leaves a file the next
 * open can still ingest (a hard-linked file gets the ingestion's sequence
 * number written into it, and RocksDB then refuses it). Stopped right
 * after the first ingestion, the kept file is still there and still
 * ingestible; the rerun finishes the store, equal to an uninterrupted one. */
START_TEST(ingest_leaves_the_kept_file_untouched) {
    char *base = tu_mkdtemp("ingestkept"), *log = tu_fmt("%s/events.jsonl", base);
    char *store = tu_fmt("%s/store", base), *ref = tu_fmt("%s/ref", base);
    char *kept = NULL, *scratch = tu_fmt("%s/scratch", base), *out = NULL;
    gen_month_log(log);
    int rc = backfill_env("IQP_TEST_DIE_AT=after-ingest", store, log, "--flush-events 1000", &out);
    ck_assert_msg(rc == 99, "the backfill should have died (exit 99), exit %d: %s", rc, out);
    free(out);
    kept = first_batch_file(store);
    ck_assert_msg(access(kept, F_OK) == 0, "%s is gone after its ingestion", kept);
    ck_assert_msg(table_file_ingestible(kept, scratch), "%s was changed by its ingestion", kept);
    ck_assert_msg(backfill_env(NULL, store, log, "--flush-events 1000", &out) == 0, "%s", out);
    free(out);
    ck_assert_msg(access(kept, F_OK) != 0, "%s is left after the rerun", kept);
    ck_assert_msg(backfill_env(NULL, ref, log, "--no-ingest --flush-events 1000", &out) == 0, "%s", out);
    free(out);
    char *got = store_digest(store), *want = store_digest(ref);
    ck_assert_msg(strcmp(got, want) == 0, "after a stop and a rerun:\n%suninterrupted:\n%s", got, want);
    free(got);
    free(want);
    tu_rmrf(base);
    free(scratch);
    free(kept);
    free(ref);
    free(store);
    free(log);
    free(base);
}
END_TEST

/* A batch committed but not ingested whose table file is gone cannot be
 * completed: a read-write open is refused, naming the store and the file. */
START_TEST(ingest_missing_file_is_refused) {
    char *base = tu_mkdtemp("ingestlost"), *log = tu_fmt("%s/events.jsonl", base);
    char *store = tu_fmt("%s/store", base), *out = NULL;
    gen_month_log(log);
    int rc = backfill_env("IQP_TEST_DIE_AT=after-commit", store, log, "--flush-events 1000", &out);
    ck_assert_msg(rc == 99, "the backfill should have died (exit 99), exit %d: %s", rc, out);
    free(out);
    char *rm = tu_fmt("rm %s/ingest/*.sst", store);
    ck_assert_int_eq(tu_run(rm, NULL), 0);
    rc = backfill_env(NULL, store, log, "--flush-events 1000", &out);
    ck_assert_msg(rc == 1 && strstr(out, store) && strstr(out, "is missing") && strstr(out, "incomplete"),
                  "exit %d (want 1, naming the store and the missing file): %s", rc, out);
    free(out);
    tu_rmrf(base);
    free(rm);
    free(store);
    free(log);
    free(base);
}
END_TEST

/* A backfill dies between a batch's commit and its ingestion: a read-only
 * open still opens (after waiting out the writer it cannot know is dead),
 * and a checkpoint of it, which cannot carry the kept table file, is
 * refused (iqp backup tries again); once a read-write open finished the
 * batch, both work. */
START_TEST(checkpoint_of_a_pending_ingestion_is_refused) {
    char *base = tu_mkdtemp("ingestck"), *log = tu_fmt("%s/events.jsonl", base);
    char *store = tu_fmt("%s/store", base), *ck1 = tu_fmt("%s/ck1", base), *ck2 = tu_fmt("%s/ck2", base);
    char *out = NULL;
    gen_month_log(log);
    int rc = backfill_env("IQP_TEST_DIE_AT=after-commit", store, log, "--flush-events 1000", &out);
    ck_assert_msg(rc == 99, "the backfill should have died (exit 99), exit %d: %s", rc, out);
    free(out);
    iqp_store *ro = iqp_store_open(store, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    ck_assert_msg(ro != NULL, "%s", err);
    ck_assert_int_eq(iqp_store_checkpoint(ro, ck1, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "between its commit and the ingestion"), "%s", err);
    iqp_store_close(ro);
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    iqp_store *rw = iqp_store_open(store, &cfg, IQP_STORE_READ_WRITE, err, sizeof err); /* finishes the batch */
    ck_assert_msg(rw != NULL, "%s", err);
    iqp_store_close(rw);
    ro = iqp_store_open(store, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    ck_assert_msg(ro != NULL, "%s", err);
    ck_assert_msg(iqp_store_checkpoint(ro, ck2, err, sizeof err) == 0, "%s", err);
    iqp_store_close(ro);
    tu_rmrf(base);
    free(out = NULL);
    free(ck1);
    free(ck2);
    free(store);
    free(log);
    free(base);
}
END_TEST

/* ---- the ingest gate (`iqp stream --redis`: a publisher beside the writer) -- */

#define GATE_BATCHES 40
#define GATE_ITEMS 3000 /* counts merges a batch: over IQP_STORE_INGEST_MIN_MERGES */

typedef struct gate_writer {
    iqp_store *st;
    const iqp_config *cfg;
    atomic_int done;
    int failed;
    char err[1024];
} gate_writer;

/* Commits GATE_BATCHES batches, each +1 on GATE_ITEMS items' counts
 * (ingested as a table file) and +GATE_ITEMS on their context's count
 * (through the WriteBatch), as a stream's flush does. */
static void *gate_write(void *arg) {
    gate_writer *w = arg;
    iqp_keybuf kb;
    iqp_context ctx = tu_ctx("red dress", "US", "female");
    int64_t vec[IQP_MAX_COUNTERS] = {0};
    char item[32];
    iqp_keybuf_init(&kb);
    for (int k = 0; k < GATE_BATCHES && !w->failed; k++) {
        iqp_store_batch *b = iqp_store_batch_new(w->st);
        vec[0] = 1;
        for (int i = 0; i < GATE_ITEMS; i++) {
            snprintf(item, sizeof item, "i%05d", i);
            iqp_keybuf_truncate(&kb, 0);
            count_key(&kb, w->cfg, "red dress", item, 0, 7);
            iqp_store_batch_merge(b, IQP_CF_COUNTS, kb.buf, kb.len, vec, IQP_COUNTERS(w->cfg));
        }
        iqp_keybuf_truncate(&kb, 0);
        iqp_cells_context_prefix(&kb, &w->cfg->features[0], &ctx);
        iqp_cells_append_bucket(&kb, 0, 7);
        vec[0] = GATE_ITEMS;
        iqp_store_batch_merge(b, IQP_CF_CONTEXTS, kb.buf, kb.len, vec, IQP_COUNTERS(w->cfg));
        iqp_store_batch_set_watermark(b, 8 * H);
        if (iqp_store_batch_commit(w->st, b, w->err, sizeof w->err) < 0) w->failed = 1;
        iqp_store_batch_free(b);
    }
    iqp_keybuf_free(&kb);
    atomic_store(&w->done, 1);
    return NULL;
}

static void add_first_counter(void *ud, int gran_index, int64_t bucket, const int64_t *vec, size_t n) {
    (void)gran_index, (void)bucket, (void)n;
    *(int64_t *)ud += vec[0];
}

static int sum_value(void *ud, const unsigned char *key, size_t klen, const char *val, size_t vlen) {
    (void)key, (void)klen;
    ck_assert_int_eq(iqp_store_value_cells(val, vlen, 1, add_first_counter, ud), 0);
    return 0;
}

/* The sum of the first counter over every cell of cf in snap. */
static int64_t snapshot_sum(iqp_store *st, const iqp_store_snapshot *snap, iqp_cf cf) {
    int64_t sum = 0;
    ck_assert_msg(iqp_store_scan_keys(st, snap, cf, NULL, 0, sum_value, &sum, err, sizeof err) == 0, "%s", err);
    return sum;
}

/* While one thread commits ingesting batches, snapshots taken by another
 * (the publisher's) never fall between a batch's commit and its
 * ingestion: in every one, the items' counts add up to their context's
 * count, whole batches only. */
START_TEST(snapshots_never_see_contexts_without_counts) {
    char *dir = tu_mkdtemp("ingestgate");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    iqp_store_set_ingest(st, IQP_STORE_INGEST_MIN_MERGES);
    gate_writer w = {.st = st, .cfg = &cfg};
    atomic_init(&w.done, 0);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, gate_write, &w), 0);
    long snapshots = 0, mid_run = 0;
    while (!atomic_load(&w.done)) {
        iqp_store_snapshot *snap = iqp_store_snapshot_new(st);
        ck_assert_ptr_nonnull(snap);
        int64_t counts = snapshot_sum(st, snap, IQP_CF_COUNTS), contexts = snapshot_sum(st, snap, IQP_CF_CONTEXTS);
        iqp_store_snapshot_free(st, snap);
        ck_assert_msg(counts == contexts && counts % GATE_ITEMS == 0,
                      "snapshot %ld: counts sum to %lld, their context to %lld", snapshots, (long long)counts,
                      (long long)contexts);
        snapshots++;
        mid_run += counts > 0 && counts < (int64_t)GATE_BATCHES * GATE_ITEMS;
    }
    pthread_join(t, NULL);
    ck_assert_msg(!w.failed, "%s", w.err);
    iqp_store_io io;
    ck_assert_int_eq(iqp_store_io_stats(st, &io), 0);
    ck_assert_int_eq(io.ingested_files, GATE_BATCHES); /* every batch took the ingestion path */
    ck_assert_int_eq(snapshot_sum(st, NULL, IQP_CF_COUNTS), (int64_t)GATE_BATCHES * GATE_ITEMS);
    ck_assert_msg(mid_run > 0, "no snapshot was taken while the batches were written (%ld taken)", snapshots);
    fprintf(stderr, "check_store: ingest gate: %ld snapshots, %ld of them mid-run, all whole\n", snapshots, mid_run);
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

/* ---- counts by period (store.c "counts by period") ------------------------ */

#define DAY (24 * H)

/* The names of dir's period families ("counts@<period>"), space-separated
 * in RocksDB's order (malloc'd; "" when none). */
static char *period_families(const char *dir) {
    char *rerr = NULL, *text = strdup("");
    size_t n = 0;
    rocksdb_options_t *o = rocksdb_options_create();
    char **names = rocksdb_list_column_families(o, dir, &n, &rerr);
    ck_assert_msg(rerr == NULL, "listing the families of %s: %s", dir, rerr);
    for (size_t i = 0; i < n; i++)
        if (strncmp(names[i], "counts@", 7) == 0) {
            char *next = tu_fmt("%s%s%s", text, *text ? " " : "", names[i]);
            free(text);
            text = next;
        }
    rocksdb_list_column_families_destroy(names, n);
    rocksdb_options_destroy(o);
    return text;
}

/* Writes the same cells (default config: hourly and daily) into a store:
 * two items at days 3, 40 and 75 (three 32-day periods), one batch per
 * cell and one batch with all of them again. */
static void write_three_periods(iqp_store *st, const iqp_config *cfg) {
    static const int64_t days[] = {3, 40, 75};
    iqp_store_batch *b = iqp_store_batch_new(st);
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 2; i++) {
            const char *item = i ? "b" : "a";
            merge_one(st, cfg, "q", item, 0, days[k] * 24 + 5, k + 1, days[k] * DAY + 5 * H);
            iqp_keybuf kb;
            int64_t vec[IQP_MAX_COUNTERS] = {0};
            iqp_keybuf_init(&kb);
            count_key(&kb, cfg, "q", item, 0, days[k] * 24 + 6);
            vec[0] = 10 * (k + 1);
            iqp_store_batch_merge(b, IQP_CF_COUNTS, kb.buf, kb.len, vec, IQP_COUNTERS(cfg));
            iqp_keybuf_free(&kb);
        }
    iqp_store_batch_set_watermark(b, 75 * DAY + 6 * H);
    ck_assert_msg(iqp_store_batch_commit(st, b, err, sizeof err) == 0, "%s", err);
    iqp_store_batch_free(b);
}

/* A new store keeps its counts in one family per 32-day period; one made
 * as iqp did before (IQP_TEST_COUNTS_ONE_FAMILY=1) keeps its one "counts"
 * family. The same writes read the same from both: a window scan across
 * three periods in bucket order, every key and value in key order (the
 * families merged), the counts of keys; read-only too. */
START_TEST(counts_by_period_read_as_one_family) {
    char *base = tu_mkdtemp("periods"), *dirs[2] = {tu_fmt("%s/periods", base), tu_fmt("%s/one", base)};
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    for (int k = 0; k < 2; k++) {
        if (k) setenv("IQP_TEST_COUNTS_ONE_FAMILY", "1", 1);
        iqp_store *st = iqp_store_open(dirs[k], &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
        unsetenv("IQP_TEST_COUNTS_ONE_FAMILY");
        ck_assert_msg(st != NULL, "%s", err);
        write_three_periods(st, &cfg);
        seen s = scan(st, &cfg, "q", "a", 0, 0, 100 * 24);
        ck_assert_int_eq(s.n, 6);
        static const int64_t want[] = {3 * 24 + 5, 3 * 24 + 6, 40 * 24 + 5, 40 * 24 + 6, 75 * 24 + 5, 75 * 24 + 6};
        for (int i = 0; i < 6; i++) {
            ck_assert_int_eq(s.buckets[i], want[i]);
            ck_assert_int_eq(s.first[i], i % 2 ? 10 * (i / 2 + 1) : i / 2 + 1);
        }
        ck_assert_int_eq(iqp_store_count_keys(st, IQP_CF_COUNTS), 6); /* 2 items x 3 days */
        iqp_store_close(st);
        iqp_store *ro = iqp_store_open(dirs[k], NULL, IQP_STORE_READ_ONLY, err, sizeof err);
        ck_assert_msg(ro != NULL, "%s", err);
        seen r = scan(ro, &cfg, "q", "b", 0, 40 * 24, 100 * 24);
        ck_assert_int_eq(r.n, 4);
        ck_assert_int_eq(r.buckets[0], 40 * 24 + 5);
        iqp_store_close(ro);
    }
    char *fam = period_families(dirs[0]), *none = period_families(dirs[1]);
    ck_assert_msg(strcmp(fam, "counts@0 counts@1 counts@2") == 0, "period families: '%s'", fam);
    ck_assert_msg(strcmp(none, "") == 0, "a store of one family has period families: '%s'", none);
    /* the counts (the first line: meta differs by the period record) */
    char *a = store_digest(dirs[0]), *b = store_digest(dirs[1]);
    ck_assert_msg(strncmp(a, b, strcspn(a, "\n")) == 0 && strncmp(a, "cf 0: 2 keys", 12) == 0,
                  "by period:\n%sone family:\n%s", a, b);
    free(a), free(b), free(fam), free(none);
    tu_rmrf(base);
    free(dirs[0]), free(dirs[1]), free(base);
}
END_TEST

/* Once the watermark passes every granularity's retention of a period
 * (one 1d granularity kept 7 days here) by one more period (the margin
 * for readers a little behind), its family is dropped whole: its cells
 * read as absent, the newer periods' stay. A late write into the dropped
 * period commits (its family is made again, and dropped again). */
START_TEST(expired_periods_are_dropped_whole) {
    char *dir = tu_mkdtemp("periodsdrop");
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_int_eq(iqp_config_parse(&cfg, "{\"windows\": [{\"name\": \"7d\", \"length\": \"7d\", "
                                            "\"granularity\": \"1d\"}]}", "t", err, sizeof err), 0);
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    merge_one(st, &cfg, "q", "i", 0, 1, 5, 1 * DAY);
    merge_one(st, &cfg, "q", "i", 0, 33, 6, 33 * DAY);
    ck_assert_int_eq(scan(st, &cfg, "q", "i", 0, 0, 200).n, 2); /* day 1 is expired, but period 0 (days 0-31) holds day 27, still kept */
    /* watermark day 100: day 94 is the first kept, in period 2; period 0 goes */
    merge_one(st, &cfg, "q", "i", 0, 100, 7, 100 * DAY);
    seen s = scan(st, &cfg, "q", "i", 0, 0, 200);
    ck_assert_int_eq(s.n, 2);
    ck_assert_int_eq(s.buckets[0], 33);
    ck_assert_int_eq(s.buckets[1], 100);
    ck_assert_int_eq(s.first[1], 7);
    merge_one(st, &cfg, "q", "i", 0, 2, 8, 100 * DAY); /* late, into period 0 */
    ck_assert_int_eq(scan(st, &cfg, "q", "i", 0, 0, 31).n, 0);
    /* watermark day 140: day 134 is the first kept, in period 4; period 1 goes */
    merge_one(st, &cfg, "q", "i", 0, 140, 9, 140 * DAY);
    s = scan(st, &cfg, "q", "i", 0, 0, 200);
    ck_assert_int_eq(s.n, 2);
    ck_assert_int_eq(s.buckets[0], 100);
    ck_assert_int_eq(s.buckets[1], 140);
    iqp_store_close(st);
    char *fam = period_families(dir);
    ck_assert_msg(strcmp(fam, "counts@3 counts@4") == 0, "live period families: '%s'", fam);
    free(fam);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

/* One large batch of a 100-day log spans four periods, so its counts go
 * into four table files, one per period family. The process dies between
 * the protocol's steps of that batch; the same backfill again finishes or
 * redoes it: the store equals an uninterrupted backfill's. */
START_TEST(ingest_crash_across_periods_recovers) {
    static const char *const steps[] = {"after-file", "after-commit", "after-ingest"};
    char *base = tu_mkdtemp("periodscrash"), *log = tu_fmt("%s/events.jsonl", base);
    char *ref = tu_fmt("%s/ref", base), *out = NULL, *q = tu_shell_quote(log);
    char *args = tu_fmt("gen --seed 12 --impressions 3000 --start %lld --span 100d --out %s", (long long)GEN_START_MS, q);
    ck_assert_msg(run_iqp(&out, args) == 0, "%s", out);
    free(out), free(args), free(q);
    ck_assert_msg(backfill_env(NULL, ref, log, "--no-ingest --flush-events 1000", &out) == 0, "%s", out);
    free(out);
    char *want = store_digest(ref);
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        char *store = tu_fmt("%s/store-%s", base, steps[k]), *env = tu_fmt("IQP_TEST_DIE_AT=%s:1", steps[k]);
        int rc = backfill_env(env, store, log, "--flush-events 1000000", &out);
        ck_assert_msg(rc == 99, "%s: the backfill should have died (exit 99), exit %d: %s", env, rc, out);
        free(out);
        if (k == 1) {
            char *ls = tu_fmt("ls %s/ingest | grep -c '^1@'", store), *n = NULL;
            tu_run(ls, &n);
            ck_assert_msg(n && atoi(n) >= 3, "the batch's table files: %s (want one per period, 3 or more)", n ? n : "");
            free(ls), free(n);
        }
        rc = backfill_env(NULL, store, log, "--flush-events 1000000", &out);
        ck_assert_msg(rc == 0, "rerun after %s: exit %d: %s", env, rc, out);
        free(out);
        char *got = store_digest(store);
        ck_assert_msg(strcmp(got, want) == 0, "after %s and a rerun:\n%suninterrupted:\n%s", env, got, want);
        free(got), free(env), free(store);
    }
    free(want);
    tu_rmrf(base);
    free(ref), free(log), free(base);
}
END_TEST


int main(void) {
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, merges_sum_and_survive_reopen);
    tcase_add_test(tc, layout_mismatch_is_refused);
    tcase_add_test(tc, store_tuning_reaches_rocksdb);
    tcase_add_test(tc, read_only_uses_store_layout);
    tcase_add_test(tc, compaction_expires_old_buckets_and_markers);
    tcase_add_test(tc, counts_by_period_read_as_one_family);
    tcase_add_test(tc, expired_periods_are_dropped_whole);
    suite_add_tcase(s, tc);
    TCase *dirs = tcase_create("directory");
    tcase_set_timeout(dirs, 120);
    tcase_add_test(dirs, store_without_current_is_refused_and_left_alone);
    tcase_add_test(dirs, store_without_column_families_is_refused);
    tcase_add_test(dirs, new_store_is_never_seen_without_layout);
    tcase_add_test(dirs, stats_beside_a_running_backfill);
    tcase_add_test(dirs, failed_backfill_takes_back_its_store);
    tcase_add_test(dirs, disk_full_is_an_error_and_resumes);
    suite_add_tcase(s, dirs);
    TCase *ingest = tcase_create("ingest");
    tcase_set_timeout(ingest, 180);
    tcase_add_test(ingest, ingest_matches_memtable_path);
    tcase_add_test(ingest, compaction_style_changes_no_count);
    tcase_add_test(ingest, ingest_crash_between_steps_recovers);
    tcase_add_test(ingest, ingest_missing_file_is_refused);
    tcase_add_test(ingest, ingest_leaves_the_kept_file_untouched);
    tcase_add_test(ingest, snapshots_never_see_contexts_without_counts);
    tcase_add_test(ingest, checkpoint_of_a_pending_ingestion_is_refused);
    tcase_add_test(ingest, ingest_crash_across_periods_recovers);
    suite_add_tcase(s, ingest);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

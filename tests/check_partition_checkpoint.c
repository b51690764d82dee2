/* check_partition_checkpoint.c -- the checkpoint dir of iqp stream
 * --checkpoint-dir (consumers/partition_checkpoint.h), through its API on
 * real stores: the generation with the most progress is the one restored
 * even when one with less was written after it (a stalled former owner's),
 * a half-written .tmp and foreign names are never read, a generation that
 * cannot be copied is skipped for the next best, a local store that is
 * behind is replaced whole (nothing of it left beside), pruning keeps the
 * IQP_PCK_KEEP with the most progress and removes crashed writers' stale
 * .tmp only, and a checkpoint dir that cannot be a directory is refused;
 * the writer that checkpoints off the caller's thread (iqp_pck_writer)
 * while the store goes on counting writes a state the store was in (its
 * counts agree with its offset) and names it by the progress it holds,
 * and a failure comes back with its error, nothing of it published.
 *
 * Each store holds one meta record, the offset of partition 0 of topic
 * "imp" ("src/kafka/imp/0", as iqp stream writes it), and one counter cell
 * whose value equals that offset, so a restored store shows which
 * generation it came from by both.
 */
#include <check.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "consumers/partition_checkpoint.h"
#include "model/cells.h"
#include "model/config.h"
#include "store/store.h"
#include "tests/testutil.h"

#define META_KEY "src/kafka/imp/0"

static char err[1024], *tmp, *ckdir;
static iqp_config cfg;

static void setup(void) {
    tmp = tu_mkdtemp("pck");
    ck_assert_ptr_nonnull(tmp);
    ckdir = tu_fmt("%s/ck", tmp);
    iqp_config_defaults(&cfg);
    ck_assert_msg(iqp_pck_prepare_dir(ckdir, err, sizeof err) == 0, "%s", err);
}

static void teardown(void) {
    tu_rmrf(tmp);
    free(tmp);
    free(ckdir);
}

/* Writes offset into st's meta and adds offset to one counter cell. */
static void count_to(iqp_store *st, int64_t offset, int64_t add) {
    char val[64];
    iqp_keybuf kb;
    int64_t vec[IQP_MAX_COUNTERS] = {0};
    iqp_context ctx = tu_ctx("dress", "US", "female");
    iqp_keybuf_init(&kb);
    iqp_cells_context_prefix(&kb, &cfg.features[0], &ctx);
    iqp_cells_append_entity(&kb, "i1", 2);
    iqp_cells_append_bucket(&kb, 0, 1000);
    vec[0] = add;
    iqp_store_batch *b = iqp_store_batch_new(st);
    iqp_store_batch_merge(b, IQP_CF_COUNTS, kb.buf, kb.len, vec, IQP_COUNTERS(&cfg));
    snprintf(val, sizeof val, "{\"next_offset\":%" PRId64 "}", offset);
    iqp_store_batch_put(b, IQP_CF_META, META_KEY, strlen(META_KEY), val, strlen(val));
    iqp_store_batch_set_watermark(b, 1000 * 3600000LL);
    ck_assert_msg(iqp_store_batch_commit(st, b, err, sizeof err) == 0, "%s", err);
    iqp_store_batch_free(b);
    iqp_keybuf_free(&kb);
}

static iqp_store *open_store(const char *dir) {
    iqp_store *st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    return st;
}

/* The offset a store at dir holds (-1 none). */
static int64_t offset_at(const char *dir) {
    iqp_store *st = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    char *val = NULL;
    size_t vlen = 0;
    int64_t off = -1;
    ck_assert_msg(st != NULL, "%s", err);
    if (iqp_store_get_meta(st, META_KEY, &val, &vlen) == 1) sscanf(val, "{\"next_offset\":%" SCNd64, &off);
    free(val);
    iqp_store_close(st);
    return off;
}

static int64_t progress_of(iqp_store *st, int32_t partition, void *ud);

/* A store whose offset is offset, checkpointed as a generation of
 * partition 0 with that progress; its path in path. */
static void checkpoint_at(const char *name, int64_t offset, char *path, size_t len) {
    char *dir = tu_fmt("%s/%s", tmp, name);
    iqp_store *st = open_store(dir);
    iqp_pck_writer *w = iqp_pck_writer_new(ckdir, progress_of, NULL);
    iqp_pck_result r;
    count_to(st, offset, offset);
    iqp_pck_writer_start(w, st, 0);
    ck_assert_int_eq(iqp_pck_writer_collect(w, 1, &r), 1);
    ck_assert_msg(r.rc == 0, "%s", r.err);
    ck_assert_int_eq(r.progress, offset);
    snprintf(path, len, "%s", r.path);
    iqp_pck_writer_free(w);
    iqp_store_close(st);
    free(dir);
}

/* The entries of ckdir/partition-0, sorted, joined by spaces. */
static char *listing(void) {
    char *pdir = tu_fmt("%s/partition-0", ckdir), *out = calloc(1, 4096);
    struct dirent **names;
    int n = scandir(pdir, &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        if (names[i]->d_name[0] != '.') {
            strcat(out, names[i]->d_name);
            strcat(out, " ");
        }
        free(names[i]);
    }
    free(names);
    free(pdir);
    return out;
}

static void make_dir_with_file(const char *dir) {
    ck_assert_int_eq(mkdir(dir, 0777), 0);
    char *f = tu_fmt("%s/CURRENT", dir);
    FILE *fp = fopen(f, "w");
    ck_assert_ptr_nonnull(fp);
    fputs("MANIFEST-000099\n", fp); /* names a manifest that is not there */
    fclose(fp);
    free(f);
}

START_TEST(most_progress_wins_over_latest_written) {
    char a[4400], b[4400], z[4400], best[4400], from[4400];
    int64_t progress = -1;
    ck_assert_int_eq(iqp_pck_best(ckdir, 0, best, sizeof best, &progress, err, sizeof err), 0);
    checkpoint_at("a", 10, a, sizeof a);
    checkpoint_at("b", 25, b, sizeof b);
    usleep(2000);
    checkpoint_at("zombie", 15, z, sizeof z); /* written last, with less progress */
    ck_assert_int_eq(iqp_pck_best(ckdir, 0, best, sizeof best, &progress, err, sizeof err), 1);
    ck_assert_str_eq(best, b);
    ck_assert_int_eq(progress, 25);
    /* an empty disk: the best is restored and opens with its offsets */
    char *local = tu_fmt("%s/local/partition-0", tmp), *parent = tu_fmt("%s/local", tmp);
    ck_assert_int_eq(mkdir(parent, 0777), 0);
    ck_assert_int_eq(iqp_pck_restore(ckdir, 0, local, from, sizeof from, &progress, err, sizeof err), 1);
    ck_assert_str_eq(from, b);
    ck_assert_int_eq(progress, 25);
    ck_assert_int_eq(offset_at(local), 25);
    /* other partitions have none */
    ck_assert_int_eq(iqp_pck_restore(ckdir, 1, local, from, sizeof from, &progress, err, sizeof err), 0);
    free(local);
    free(parent);
}
END_TEST

START_TEST(half_written_and_foreign_entries_are_ignored) {
    char a[4400], best[4400], from[4400];
    int64_t progress = -1;
    checkpoint_at("a", 10, a, sizeof a);
    /* a writer that died before its rename, with far more progress */
    char *half = tu_fmt("%s/partition-0/00000000000000000099-1-1.tmp", ckdir);
    make_dir_with_file(half);
    char *junk = tu_fmt("%s/partition-0/junk-00000000000000000098", ckdir);
    make_dir_with_file(junk);
    ck_assert_int_eq(iqp_pck_best(ckdir, 0, best, sizeof best, &progress, err, sizeof err), 1);
    ck_assert_str_eq(best, a);
    ck_assert_int_eq(progress, 10);
    /* a complete name whose files are damaged is best by name, but the
     * restore skips it for the next one */
    char *broken = tu_fmt("%s/partition-0/00000000000000000050-1-1", ckdir);
    make_dir_with_file(broken);
    ck_assert_int_eq(iqp_pck_best(ckdir, 0, best, sizeof best, &progress, err, sizeof err), 1);
    ck_assert_int_eq(progress, 50);
    char *local = tu_fmt("%s/partition-0", tmp);
    ck_assert_int_eq(iqp_pck_restore(ckdir, 0, local, from, sizeof from, &progress, err, sizeof err), 1);
    ck_assert_str_eq(from, a);
    ck_assert_int_eq(progress, 10);
    ck_assert_int_eq(offset_at(local), 10);
    /* nothing usable at all: an error naming the partition */
    tu_rmrf(a);
    ck_assert_int_eq(iqp_pck_restore(ckdir, 0, local, from, sizeof from, &progress, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "partition 0") != NULL, "%s", err);
    free(half);
    free(junk);
    free(broken);
    free(local);
}
END_TEST

START_TEST(a_local_store_behind_is_replaced_whole) {
    char a[4400], from[4400];
    int64_t progress = -1;
    checkpoint_at("a", 40, a, sizeof a);
    char *local = tu_fmt("%s/state", tmp), *pdir = tu_fmt("%s/partition-0", local);
    ck_assert_int_eq(mkdir(local, 0777), 0);
    iqp_store *st = open_store(pdir);
    count_to(st, 7, 7);
    iqp_store_close(st);
    ck_assert_int_eq(iqp_pck_restore(ckdir, 0, pdir, from, sizeof from, &progress, err, sizeof err), 1);
    ck_assert_int_eq(offset_at(pdir), 40);
    DIR *d = opendir(local);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) entries += e->d_name[0] != '.';
    closedir(d);
    ck_assert_int_eq(entries, 1); /* no partition-0.before-restore-* left behind */
    free(local);
    free(pdir);
}
END_TEST

START_TEST(pruning_keeps_the_most_progress) {
    char path[4400];
    char *stale = tu_fmt("%s/partition-0/00000000000000000001-1-1.tmp", ckdir);
    char *fresh = tu_fmt("%s/partition-0/00000000000000000002-1-2.tmp", ckdir);
    char *pdir = tu_fmt("%s/partition-0", ckdir);
    ck_assert_int_eq(mkdir(pdir, 0777), 0);
    make_dir_with_file(stale);
    make_dir_with_file(fresh);
    struct timeval old[2] = {{time(NULL) - 7200, 0}, {time(NULL) - 7200, 0}};
    ck_assert_int_eq(utimes(stale, old), 0);
    int64_t offsets[] = {30, 10, 50, 20, 40};
    char name[16];
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "s%d", i);
        checkpoint_at(name, offsets[i], path, sizeof path);
    }
    char *l = listing();
    ck_assert_msg(strncmp(l, "00000000000000000002-1-2.tmp 00000000000000000030-", 49) == 0, "%s", l);
    ck_assert_msg(strstr(l, " 00000000000000000040-") && strstr(l, " 00000000000000000050-") &&
                  !strstr(l, "00000000000000000010-") && !strstr(l, "00000000000000000020-") &&
                  !strstr(l, "00000000000000000001-1-1.tmp"), "%s", l);
    free(l);
    free(stale);
    free(fresh);
    free(pdir);
}
END_TEST

static void add_bucket(void *ud, int64_t bucket, const int64_t *vec, size_t n) {
    (void)bucket, (void)n;
    *(int64_t *)ud += vec[0];
}

/* The counter count_to adds to, in the store at dir. */
static int64_t count_at(const char *dir) {
    iqp_store *st = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    iqp_keybuf kb;
    iqp_context ctx = tu_ctx("dress", "US", "female");
    int64_t sum = 0;
    ck_assert_msg(st != NULL, "%s", err);
    iqp_keybuf_init(&kb);
    iqp_cells_context_prefix(&kb, &cfg.features[0], &ctx);
    iqp_cells_append_entity(&kb, "i1", 2);
    ck_assert_msg(iqp_store_scan_buckets(st, IQP_CF_COUNTS, kb.buf, kb.len, 0, 0, 2000, IQP_COUNTERS(&cfg),
                                         add_bucket, &sum, err, sizeof err) == 0, "%s", err);
    iqp_keybuf_free(&kb);
    iqp_store_close(st);
    return sum;
}

/* The live store's last offset, as the test's counting loop commits them,
 * read by progress_of on the writer's thread. */
static _Atomic int64_t live_offset;

/* iqp_pck_progress_fn: the offset count_to wrote (partition 0 only). With
 * ud "wait", it first waits (up to 5 s) until the live store committed one
 * more batch: a namer that read the live store instead would name the
 * generation by more than it holds. With ud "fail", -1. */
static int64_t progress_of(iqp_store *st, int32_t partition, void *ud) {
    char *val = NULL;
    size_t vlen = 0;
    int64_t off = -1, seen = atomic_load(&live_offset);
    if (ud && strcmp(ud, "fail") == 0) return -1;
    for (int i = 0; ud && strcmp(ud, "wait") == 0 && atomic_load(&live_offset) <= seen && i < 5000; i++)
        usleep(1000);
    if (partition == 0 && iqp_store_get_meta(st, META_KEY, &val, &vlen) == 1)
        sscanf(val, "{\"next_offset\":%" SCNd64, &off);
    free(val);
    return off;
}

START_TEST(the_writer_checkpoints_a_store_that_goes_on_counting) {
    char *dir = tu_fmt("%s/live", tmp), *local = tu_fmt("%s/restored", tmp), from[4400], want[64];
    iqp_store *st = open_store(dir);
    iqp_pck_writer *w = iqp_pck_writer_new(ckdir, progress_of, "wait");
    iqp_pck_result r;
    int64_t offset = 100, progress = -1;
    iqp_store_set_ingest(st, 1); /* every batch ingested: its commit meets the checkpoint at the ingest gate */
    count_to(st, offset, offset);
    atomic_store(&live_offset, offset);
    ck_assert_int_eq(iqp_pck_writer_collect(w, 0, &r), 0); /* nothing in flight */
    iqp_pck_writer_start(w, st, 0);
    ck_assert(iqp_pck_writer_busy(w));
    ck_assert_ptr_eq(iqp_pck_writer_store(w), st);
    /* batches go on while it runs (bounded: it ends well before) */
    int collected = 0;
    for (int i = 0; i < 100000 && !(collected = iqp_pck_writer_collect(w, 0, &r)); i++) {
        count_to(st, ++offset, 1);
        atomic_store(&live_offset, offset);
    }
    if (!collected) ck_assert_int_eq(iqp_pck_writer_collect(w, 1, &r), 1);
    ck_assert_msg(r.rc == 0, "%s", r.err);
    ck_assert_msg(offset > 100, "no batch was committed while the checkpoint was written");
    ck_assert(!iqp_pck_writer_busy(w));
    ck_assert_int_eq(r.partition, 0);
    ck_assert_msg(r.progress >= 100 && r.progress < offset, "progress %" PRId64 ", last offset %" PRId64,
                  r.progress, offset); /* a batch came after the checkpoint and before its naming */
    snprintf(want, sizeof want, "/partition-0/%020" PRId64 "-", r.progress);
    ck_assert_msg(strstr(r.path, want) != NULL, "%s", r.path);
    count_to(st, ++offset, 1);
    iqp_store_close(st);
    /* the generation is a state the store was in, and its name says which:
     * its offset is its progress, and its counts agree with that offset */
    ck_assert_int_eq(iqp_pck_restore(ckdir, 0, local, from, sizeof from, &progress, err, sizeof err), 1);
    ck_assert_str_eq(from, r.path);
    ck_assert_int_eq(progress, r.progress);
    ck_assert_int_eq(offset_at(local), r.progress);
    ck_assert_int_eq(count_at(local), r.progress);
    ck_assert_int_eq(count_at(dir), offset);
    char *l = listing(); /* no .tmp left behind */
    ck_assert_msg(strstr(l, ".tmp") == NULL, "%s", l);
    free(l);
    iqp_pck_writer_free(w);
    free(dir);
    free(local);
}
END_TEST

START_TEST(a_failed_checkpoint_is_collected_with_its_error) {
    char *dir = tu_fmt("%s/live", tmp), *file = tu_fmt("%s/file", tmp);
    iqp_store *st = open_store(dir);
    FILE *f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    iqp_pck_writer *w = iqp_pck_writer_new(file, progress_of, NULL); /* a checkpoint dir that is a file */
    iqp_pck_result r;
    count_to(st, 5, 5);
    iqp_pck_writer_start(w, st, 3);
    ck_assert_int_eq(iqp_pck_writer_collect(w, 1, &r), 1);
    ck_assert_int_eq(r.rc, -1);
    ck_assert_int_eq(r.partition, 3);
    ck_assert_msg(strstr(r.err, "partition-3") != NULL, "%s", r.err);
    ck_assert_int_eq(iqp_pck_writer_collect(w, 1, &r), 0);
    iqp_pck_writer_free(w);
    iqp_store_close(st);
    free(dir);
    free(file);
}
END_TEST

START_TEST(a_checkpoint_whose_progress_cannot_be_read_is_not_published) {
    char *dir = tu_fmt("%s/live", tmp);
    iqp_store *st = open_store(dir);
    iqp_pck_writer *w = iqp_pck_writer_new(ckdir, progress_of, "fail");
    iqp_pck_result r;
    count_to(st, 5, 5);
    iqp_pck_writer_start(w, st, 0);
    ck_assert_int_eq(iqp_pck_writer_collect(w, 1, &r), 1);
    ck_assert_int_eq(r.rc, -1);
    ck_assert_msg(strstr(r.err, "cannot read the offsets") != NULL, "%s", r.err);
    char *l = listing(); /* nothing published, no .tmp left */
    ck_assert_str_eq(l, "");
    free(l);
    iqp_pck_writer_free(w);
    iqp_store_close(st);
    free(dir);
}
END_TEST

START_TEST(a_dir_that_cannot_be_made_is_refused) {
    char *file = tu_fmt("%s/file", tmp), *under = tu_fmt("%s/file/ck", tmp);
    FILE *f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    ck_assert_int_eq(iqp_pck_prepare_dir(under, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "cannot create the checkpoint dir") && strstr(err, under), "%s", err);
    ck_assert_int_eq(iqp_pck_prepare_dir(file, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "is not a directory"), "%s", err);
    free(file);
    free(under);
}
END_TEST

int main(void) {
    Suite *s = suite_create("partition_checkpoint");
    TCase *tc = tcase_create("dir");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, most_progress_wins_over_latest_written);
    tcase_add_test(tc, half_written_and_foreign_entries_are_ignored);
    tcase_add_test(tc, a_local_store_behind_is_replaced_whole);
    tcase_add_test(tc, pruning_keeps_the_most_progress);
    tcase_add_test(tc, a_dir_that_cannot_be_made_is_refused);
    tcase_add_test(tc, the_writer_checkpoints_a_store_that_goes_on_counting);
    tcase_add_test(tc, a_failed_checkpoint_is_collected_with_its_error);
    tcase_add_test(tc, a_checkpoint_whose_progress_cannot_be_read_is_not_published);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* partition_checkpoint.c -- checkpoints of partition stores in a shared
 * directory (partition_checkpoint.h).
 *
 * Writing: store/backup.c's iqp_store_checkpoint_named (RocksDB checkpoint
 * into a .tmp, rename to NAME, parent synced); the name carries the
 * progress, so choosing is one readdir and a sort of names. Pruning keeps
 * the IQP_PCK_KEEP names that sort last; a concurrent restorer whose
 * generation is pruned under it fails its copy and moves on to the next
 * best (iqp_pck_restore), which a pruner never removes before the ones
 * with less progress.
 *
 * Writing off the caller's thread (iqp_pck_writer): one thread per
 * checkpoint, started by iqp_pck_writer_start and joined by
 * iqp_pck_writer_collect (a checkpoint per partition and interval: a
 * thread's start costs nothing next to it); while it runs, the thread
 * owns result and done is the only field both threads touch. The
 * generation is written as DIR/partition-<p>/writing-<ms>-<pid>-<n>.tmp
 * (store/backup.c's iqp_store_checkpoint_named; n counts this process's
 * checkpoints, so two writers of one process never share a name), opened
 * read-only for its progress, and renamed to its name: a .tmp is never
 * restored from, and pruned as any crashed writer's.
 *
 * Restoring: store/backup.c's iqp_store_restore (staged next to the target,
 * table files hard-linked when the file system allows, synced, renamed),
 * with force: a local store that is behind is moved aside, then removed.
 */
#include "consumers/partition_checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store/backup.h"
#include "util/clock.h"
#include "util/fs.h"

#define PROGRESS_DIGITS 20
#define STALE_TMP_S 3600 /* a .tmp this old is a crashed writer's */
#define MAX_GENS 64      /* read per partition; a directory holds IQP_PCK_KEEP plus concurrent writers' */

typedef struct gen {
    char name[256];
    int64_t progress;
} gen;

int iqp_pck_prepare_dir(const char *ckdir, char *err, size_t errlen) {
    struct stat sb;
    if (mkdir(ckdir, 0777) != 0 && errno != EEXIST)
        return snprintf(err, errlen, "cannot create the checkpoint dir %s: %s", ckdir, strerror(errno)), -1;
    if (stat(ckdir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return snprintf(err, errlen, "the checkpoint dir %s is not a directory", ckdir), -1;
    if (access(ckdir, W_OK | X_OK) != 0)
        return snprintf(err, errlen, "the checkpoint dir %s is not writable by this user", ckdir), -1;
    return 0;
}

static void partition_dir(const char *ckdir, int32_t partition, char *out, size_t len) {
    snprintf(out, len, "%s/partition-%d", ckdir, (int)partition);
}

/* 1 when name is a complete generation "<20 digits>-<digits>-<digits>"
 * (its progress in *progress). */
static int parse_gen(const char *name, int64_t *progress) {
    size_t n = strspn(name, "0123456789");
    if (n != PROGRESS_DIGITS || name[n] != '-') return 0;
    const char *p = name + n + 1;
    size_t a = strspn(p, "0123456789");
    if (a == 0 || p[a] != '-') return 0;
    size_t b = strspn(p + a + 1, "0123456789");
    if (b == 0 || p[a + 1 + b] != '\0') return 0;
    *progress = strtoll(name, NULL, 10);
    return 1;
}

static int by_name_desc(const void *a, const void *b) { return -strcmp(((const gen *)a)->name, ((const gen *)b)->name); }

/* The complete generations of partition, most progress first (ties: the
 * later written first). -1 with err when the directory cannot be read;
 * a missing one holds none. */
static int list_gens(const char *pdir, gen *out, size_t cap, char *err, size_t errlen) {
    DIR *d = opendir(pdir);
    if (!d) {
        if (errno == ENOENT) return 0;
        return snprintf(err, errlen, "cannot read %s: %s", pdir, strerror(errno)), -1;
    }
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        int64_t progress;
        size_t len = strlen(e->d_name);
        if (n < cap && len < sizeof out[n].name && parse_gen(e->d_name, &progress)) {
            memcpy(out[n].name, e->d_name, len + 1);
            out[n++].progress = progress;
        }
    }
    closedir(d);
    qsort(out, n, sizeof *out, by_name_desc);
    return (int)n;
}

int iqp_pck_best(const char *ckdir, int32_t partition, char *path, size_t pathlen, int64_t *progress, char *err,
                 size_t errlen) {
    char pdir[4096];
    gen gens[MAX_GENS];
    partition_dir(ckdir, partition, pdir, sizeof pdir);
    int n = list_gens(pdir, gens, MAX_GENS, err, errlen);
    if (n <= 0) return n;
    snprintf(path, pathlen, "%s/%s", pdir, gens[0].name);
    *progress = gens[0].progress;
    return 1;
}

/* Removes the generations past the IQP_PCK_KEEP with the most progress,
 * and .tmp entries older than STALE_TMP_S. Failures are harmless (the next
 * write prunes again). */
static void prune(const char *pdir) {
    char path[4400], err[256];
    gen gens[MAX_GENS];
    int n = list_gens(pdir, gens, MAX_GENS, err, sizeof err);
    for (int i = IQP_PCK_KEEP; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", pdir, gens[i].name);
        iqp_rmrf(path);
    }
    DIR *d = opendir(pdir);
    time_t now = time(NULL);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        size_t len = strlen(e->d_name);
        struct stat sb;
        if (len < 4 || strcmp(e->d_name + len - 4, ".tmp") != 0) continue;
        snprintf(path, sizeof path, "%s/%s", pdir, e->d_name);
        if (lstat(path, &sb) == 0 && now - sb.st_mtime > STALE_TMP_S) iqp_rmrf(path);
    }
    if (d) closedir(d);
}

/* partition's directory in ckdir, made when missing. 0, or -1 with err. */
static int make_partition_dir(const char *ckdir, int32_t partition, char *pdir, size_t len, char *err,
                              size_t errlen) {
    partition_dir(ckdir, partition, pdir, len);
    if (mkdir(pdir, 0777) != 0 && errno != EEXIST)
        return snprintf(err, errlen, "cannot create %s: %s", pdir, strerror(errno)), -1;
    return 0;
}

/* The name of a generation with progress written now by this process. */
static void gen_path(const char *pdir, int64_t progress, char *out, size_t len) {
    snprintf(out, len, "%s/%0*lld-%013lld-%ld", pdir, PROGRESS_DIGITS, (long long)progress,
             (long long)iqp_wall_ms(), (long)getpid());
}

int iqp_pck_restore(const char *ckdir, int32_t partition, const char *dir, char *from, size_t fromlen,
                    int64_t *progress, char *err, size_t errlen) {
    char pdir[4096], aside[4400], last[1024] = "";
    gen gens[MAX_GENS];
    partition_dir(ckdir, partition, pdir, sizeof pdir);
    int n = list_gens(pdir, gens, MAX_GENS, err, errlen);
    if (n <= 0) return n;
    for (int i = 0; i < n; i++) {
        snprintf(from, fromlen, "%s/%s", pdir, gens[i].name);
        if (iqp_store_restore(from, dir, 1, aside, sizeof aside, err, errlen) < 0) {
            fprintf(stderr, "iqp stream: partition %d: cannot restore %s (%s); trying the next checkpoint\n",
                    (int)partition, from, err);
            snprintf(last, sizeof last, "%s", err);
            continue;
        }
        if (*aside) iqp_rmrf(aside); /* the local store it replaced was behind: nothing in it is needed */
        *progress = gens[i].progress;
        return 1;
    }
    snprintf(err, errlen, "none of the %d checkpoints of partition %d in %s could be restored (the last: %s)", n,
             (int)partition, pdir, last);
    return -1;
}

/* ---- writing off the caller's thread ---------------------------------------- */

struct iqp_pck_writer {
    char *ckdir;
    iqp_pck_progress_fn progress_of;
    void *ud;
    iqp_store *st;              /* the store of the checkpoint in flight; NULL when idle */
    pthread_t thread;
    int threaded;               /* thread must be joined */
    atomic_int done;            /* set by the thread when result is final */
    iqp_pck_result result;
};

iqp_pck_writer *iqp_pck_writer_new(const char *ckdir, iqp_pck_progress_fn progress_of, void *ud) {
    iqp_pck_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->ckdir = strdup(ckdir))) abort();
    w->progress_of = progress_of;
    w->ud = ud;
    return w;
}

int iqp_pck_writer_busy(const iqp_pck_writer *w) { return w->st != NULL; }

const iqp_store *iqp_pck_writer_store(const iqp_pck_writer *w) { return w->st; }

/* iqp_checkpoint_namer: the generation's name from the progress it holds. */
static int name_by_progress(const char *path, void *ud, char *to, size_t tolen, char *err, size_t errlen) {
    iqp_pck_writer *w = ud;
    char pdir[4096];
    iqp_store *ck = iqp_store_open(path, NULL, IQP_STORE_READ_ONLY, err, errlen);
    if (!ck) return -1;
    int64_t progress = w->progress_of(ck, w->result.partition, w->ud);
    iqp_store_close(ck);
    if (progress < 0) return snprintf(err, errlen, "cannot read the offsets the checkpoint %s holds", path), -1;
    w->result.progress = progress;
    partition_dir(w->ckdir, w->result.partition, pdir, sizeof pdir);
    gen_path(pdir, progress, to, tolen);
    return 0;
}

static void *write_one(void *arg) {
    iqp_pck_writer *w = arg;
    iqp_pck_result *r = &w->result;
    char pdir[4096], tmp[4400];
    int64_t t0 = iqp_mono_ms();
    r->rc = make_partition_dir(w->ckdir, r->partition, pdir, sizeof pdir, r->err, sizeof r->err);
    static atomic_uint written; /* this process's checkpoints: the tmp name's n */
    snprintf(tmp, sizeof tmp, "%s/writing-%013lld-%ld-%u.tmp", pdir, (long long)iqp_wall_ms(), (long)getpid(),
             atomic_fetch_add(&written, 1));
    if (r->rc == 0)
        r->rc = iqp_store_checkpoint_named(w->st, tmp, name_by_progress, w, r->path, sizeof r->path, r->err,
                                           sizeof r->err);
    if (r->rc == 0) prune(pdir);
    r->ms = iqp_mono_ms() - t0;
    atomic_store(&w->done, 1);
    return NULL;
}

void iqp_pck_writer_start(iqp_pck_writer *w, iqp_store *st, int32_t partition) {
    w->st = st;
    w->result = (iqp_pck_result){.partition = partition, .progress = -1};
    atomic_store(&w->done, 0);
    w->threaded = pthread_create(&w->thread, NULL, write_one, w) == 0;
    if (!w->threaded) write_one(w);
}

int iqp_pck_writer_collect(iqp_pck_writer *w, int wait, iqp_pck_result *r) {
    if (!w->st || (!wait && !atomic_load(&w->done))) return 0;
    if (w->threaded) pthread_join(w->thread, NULL);
    w->threaded = 0;
    w->st = NULL;
    *r = w->result;
    return 1;
}

void iqp_pck_writer_free(iqp_pck_writer *w) {
    if (!w) return;
    iqp_pck_result r;
    iqp_pck_writer_collect(w, 1, &r);
    free(w->ckdir);
    free(w);
}

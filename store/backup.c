/* backup.c -- a consistent copy of a store, and a copy put back as one
 * (backup.h).
 *
 * Backup: a RocksDB checkpoint of a read-only open (iqp_store_checkpoint):
 * the counters, dedup markers, publish queue and the Kafka offsets they
 * were counted up to, all as of one point in time, because every flush
 * commits them in one WriteBatch. The writer may delete a table file
 * (compaction) between our open and the link; that attempt fails, its
 * partial copy (and RocksDB's staging directory, TO.tmp) is removed, and
 * the next one starts from a fresh open.
 *
 * Restore: the files are staged next to the target (DIR.restoring): table
 * files (.sst, never modified once written) hard-linked when the file
 * system allows, every other file copied. Everything is fsynced, then one
 * rename puts the store in place. An existing store is never deleted: with
 * force it is moved aside, and only when no process holds its lock.
 */
#include "store/backup.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail_with(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_with(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- backup -------------------------------------------------------------------- */

/* One attempt: a fresh read-only open, then the checkpoint. -2 when dir
 * is not a store (retrying cannot help). */
static int attempt(const char *dir, const char *to, char *err, size_t errlen) {
    iqp_store *st = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, errlen);
    if (!st) return -2;
    int rc = iqp_store_checkpoint(st, to, err, errlen);
    iqp_store_close(st);
    return rc;
}

int iqp_store_backup(const char *dir, const char *to, int attempts, iqp_backup_retry_fn on_retry, void *ud,
                     char *err, size_t errlen) {
    struct stat sb;
    if (stat(to, &sb) == 0) return fail_with(err, errlen, "%s already exists: a backup goes into a new directory", to);
    int rc = -1;
    for (int i = 1; i <= attempts && rc == -1; i++) {
        rc = attempt(dir, to, err, errlen);
        if (rc == -1) {
            char *tmp = malloc(strlen(to) + 8);
            if (!tmp) abort();
            sprintf(tmp, "%s.tmp", to); /* RocksDB's staging directory */
            iqp_rmrf(tmp);
            iqp_rmrf(to);
            free(tmp);
            if (i < attempts && on_retry) on_retry(ud, i, err);
        }
    }
    return rc < 0 ? -1 : 0;
}

/* ---- a checkpoint of an open store, published by rename ---------------------------- */

static int fsync_path(const char *path, int dir);

int iqp_store_checkpoint_named(iqp_store *st, const char *tmp, iqp_checkpoint_namer name, void *ud, char *to,
                               size_t tolen, char *err, size_t errlen) {
    char *staging = malloc(strlen(tmp) + 5);
    if (!staging) abort();
    sprintf(staging, "%s.tmp", tmp); /* RocksDB's own staging directory for tmp */
    iqp_rmrf(tmp);
    iqp_rmrf(staging);
    int rc = iqp_store_checkpoint(st, tmp, err, errlen);
    if (rc == 0) rc = name(tmp, ud, to, tolen, err, errlen);
    if (rc == 0 && rename(tmp, to) != 0) rc = fail_with(err, errlen, "cannot rename %s to %s: %s", tmp, to, strerror(errno));
    if (rc != 0) {
        iqp_rmrf(tmp);
        iqp_rmrf(staging);
    } else {
        char *parent = iqp_parent_dir(to);
        if (fsync_path(parent, 1) != 0) rc = fail_with(err, errlen, "cannot sync %s: %s", parent, strerror(errno));
        free(parent);
    }
    free(staging);
    return rc;
}

/* ---- restore ------------------------------------------------------------------- */

static int fsync_path(const char *path, int dir) {
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int copy_file(const char *from, const char *to) {
    char buf[1 << 16];
    ssize_t n = 0;
    int in = open(from, O_RDONLY | O_CLOEXEC), out = -1, rc = -1;
    if (in >= 0) out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (in >= 0 && out >= 0) {
        while ((n = read(in, buf, sizeof buf)) > 0)
            if (write(out, buf, (size_t)n) != n) break;
        rc = n == 0 && fsync(out) == 0 ? 0 : -1;
    }
    if (in >= 0) close(in);
    if (out >= 0 && close(out) != 0) rc = -1;
    return rc;
}

static int is_table_file(const char *name) {
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".sst") == 0;
}

/* Every file of the backup into the (new, empty) staging directory. */
static int stage(const char *from, const char *staging, char *err, size_t errlen) {
    DIR *d = opendir(from);
    struct dirent *e;
    int rc = 0;
    if (!d) return snprintf(err, errlen, "cannot read %s: %s", from, strerror(errno)), -1;
    while (rc == 0 && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char src[4400], dst[4400];
        struct stat sb;
        if (strlen(from) >= 4096 || strlen(staging) >= 4096) {
            snprintf(err, errlen, "path too long");
            rc = -1;
            break;
        }
        snprintf(src, sizeof src, "%s/%s", from, e->d_name);
        snprintf(dst, sizeof dst, "%s/%s", staging, e->d_name);
        if (lstat(src, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            snprintf(err, errlen, "%s is not a regular file: not a backup written by iqp backup", src);
            rc = -1;
        } else if (!(is_table_file(e->d_name) && link(src, dst) == 0) && copy_file(src, dst) != 0) {
            snprintf(err, errlen, "cannot copy %s to %s: %s", src, dst, strerror(errno));
            rc = -1;
        }
    }
    closedir(d);
    if (rc == 0 && fsync_path(staging, 1) != 0)
        return snprintf(err, errlen, "cannot sync %s: %s", staging, strerror(errno)), -1;
    return rc;
}

/* 1 when a process holds RocksDB's lock on the store at dir. */
static int store_in_use(const char *dir) {
    char lock[4096];
    snprintf(lock, sizeof lock, "%s/LOCK", dir);
    int fd = open(lock, O_RDWR | O_CLOEXEC);
    if (fd < 0) return 0;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    int held = fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
    close(fd);
    return held;
}

/* An existing store at dir: refused, or moved aside with force (its new
 * name in aside). */
static int clear_target(const char *dir, int force, char *aside, size_t asidelen, char *err, size_t errlen) {
    struct stat sb;
    if (stat(dir, &sb) != 0) return 0;
    if (!force) return fail_with(err, errlen, "%s exists: give --force to move it aside (it is kept)", dir);
    if (store_in_use(dir)) return fail_with(err, errlen, "a process is writing to %s: stop it first", dir);
    snprintf(aside, asidelen, "%s.before-restore-%lld", dir, (long long)iqp_wall_ms());
    if (rename(dir, aside) != 0)
        return fail_with(err, errlen, "cannot move %s to %s: %s", dir, aside, strerror(errno));
    return 0;
}

int iqp_store_restore(const char *from, const char *dir, int force, char *aside, size_t asidelen, char *err,
                      size_t errlen) {
    char staging[4096];
    *aside = '\0';
    iqp_store *st = iqp_store_open(from, NULL, IQP_STORE_READ_ONLY, err, errlen);
    if (!st) {
        char why[1024];
        snprintf(why, sizeof why, "%s", err);
        return fail_with(err, errlen, "%s is not a usable backup: %s", from, why);
    }
    iqp_store_close(st);
    snprintf(staging, sizeof staging, "%s.restoring", dir);
    if (iqp_rmrf(staging) != 0 || mkdir(staging, 0750) != 0)
        return fail_with(err, errlen, "cannot create %s: %s", staging, strerror(errno));
    int rc = stage(from, staging, err, errlen);
    if (rc == 0) rc = clear_target(dir, force, aside, asidelen, err, errlen);
    if (rc == 0 && rename(staging, dir) != 0)
        rc = fail_with(err, errlen, "cannot rename %s to %s: %s", staging, dir, strerror(errno));
    if (rc != 0) return iqp_rmrf(staging), -1;
    char *parent = iqp_parent_dir(dir);
    fsync_path(parent, 1);
    free(parent);
    return 0;
}

/* restore.c -- `iqp restore`: a backup becomes a store again.
 *
 * The backup is checked first (it must open as an iqp store). The files
 * are staged next to the target (DIR.restoring): table files (.sst, never
 * modified once written) hard-linked when the file system allows, every
 * other file copied, since a writer opening the store appends to its WAL
 * and MANIFEST and the backup must stay as it was. Everything is fsynced,
 * then one rename puts the store in place, so a crash leaves either no
 * store or the whole one. An existing store is never deleted: with
 * --force it is moved aside to DIR.before-restore-<ms>, and only when no
 * process holds its lock.
 *
 * After a restore the store is back at the backup's offsets. The Kafka
 * group, though, has committed later offsets, and `iqp stream` treats
 * messages below a group's offsets as counted by another instance (it
 * only rebuilds dedup markers from them). To count the events after the
 * backup again, start the restored store under a new kafka.group.id
 * (README "Operating iqp", "Restore").
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stddef.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/flags.h"

static const char *CMD = "restore";

typedef struct restore_opts {
    const char *from, *store;
    int force;
} restore_opts;

static const iqp_flag FLAGS[] = {
    {"from", IQP_FLAG_STRING, offsetof(restore_opts, from), .arg = "BACKUP",
     .help = "a directory written by iqp backup"},
    {"store", IQP_FLAG_STRING, offsetof(restore_opts, store), .arg = "DIR",
     .help = "where the store goes; must not exist, unless --force"},
    {"force", IQP_FLAG_BOOL, offsetof(restore_opts, force),
     .help = "move an existing DIR aside to DIR.before-restore-<ms> first (refused while a process "
             "writes to it)"},
    {0}};

static const iqp_flag_cmd RESTORE = {
    .name = "restore",
    .usage = "iqp restore --from BACKUP --store DIR [--force]",
    .about = "Puts a backup written by `iqp backup` back as the store DIR: checks that it\n"
             "opens as a store, stages a copy next to DIR (table files hard-linked when\n"
             "possible, the rest copied; the backup stays usable), fsyncs it and renames it\n"
             "into place. Prints the restored store's watermark and Kafka offsets as JSON.\n"
             "\n"
             "Then start `iqp stream` on it under a new kafka.group.id: under the old group\n"
             "the events after the backup would count as counted elsewhere and be skipped.",
    .epilog = "Exit status: 0 restored, 1 the backup or the target cannot be used, 2 bad usage.",
    .flags = FLAGS,
};

/* ---- files --------------------------------------------------------------------- */

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

/* An existing store at dir: refused, or moved aside with --force. */
static int clear_target(const char *dir, int force) {
    struct stat sb;
    if (stat(dir, &sb) != 0) return 0;
    if (!force) return iqp_cli_fail(CMD, "%s exists: give --force to move it aside (it is kept)", dir);
    if (store_in_use(dir)) return iqp_cli_fail(CMD, "a process is writing to %s: stop it first", dir);
    char aside[4096];
    snprintf(aside, sizeof aside, "%s.before-restore-%lld", dir, (long long)iqp_now_ms());
    if (rename(dir, aside) != 0) return iqp_cli_fail(CMD, "cannot move %s to %s: %s", dir, aside, strerror(errno));
    fprintf(stderr, "iqp restore: the store that was at %s is now %s\n", dir, aside);
    return 0;
}

static int restore(const char *from, const char *dir, int force) {
    char err[10240], staging[4096];
    json_t *pos = iqp_cli_store_position(from, err, sizeof err);
    if (!pos) return iqp_cli_fail(CMD, "%s is not a usable backup: %s", from, err);
    json_decref(pos);
    snprintf(staging, sizeof staging, "%s.restoring", dir);
    if (iqp_cli_rmrf(staging) != 0 || mkdir(staging, 0750) != 0)
        return iqp_cli_fail(CMD, "cannot create %s: %s", staging, strerror(errno));
    if (stage(from, staging, err, sizeof err) != 0) return iqp_cli_rmrf(staging), iqp_cli_fail(CMD, "%s", err);
    int rc = clear_target(dir, force);
    if (rc) return iqp_cli_rmrf(staging), rc;
    if (rename(staging, dir) != 0) {
        rc = iqp_cli_fail(CMD, "cannot rename %s to %s: %s", staging, dir, strerror(errno));
        return iqp_cli_rmrf(staging), rc;
    }
    char *parent = iqp_cli_parent_dir(dir);
    fsync_path(parent, 1);
    free(parent);
    if (!(pos = iqp_cli_store_position(dir, err, sizeof err)))
        return iqp_cli_fail(CMD, "the restored store does not open: %s", err);
    json_object_set_new(pos, "store", json_string(dir));
    json_object_set_new(pos, "restored_from", json_string(from));
    char *text = json_dumps(pos, JSON_COMPACT | JSON_SORT_KEYS);
    puts(text);
    free(text);
    json_decref(pos);
    return 0;
}

int iqp_cmd_restore(int argc, char **argv) {
    restore_opts opt = {0};
    int rc = iqp_flags_parse(&RESTORE, &opt, argc, argv);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    const char *from = opt.from, *dir = opt.store;
    if (!from || !dir) return iqp_cli_usage_error(CMD, "give --from BACKUP and --store DIR");
    char *rf = realpath(from, NULL), *rd = realpath(dir, NULL);
    int same = rf && rd && strcmp(rf, rd) == 0;
    free(rf), free(rd);
    if (same) return iqp_cli_usage_error(CMD, "--from and --store are the same directory");
    return restore(from, dir, opt.force);
}

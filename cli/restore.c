/* restore.c -- `iqp restore`: a backup becomes a store again.
 *
 * Thin: parses the flags, calls iqp_store_restore (store/backup.h: the
 * backup is checked, staged next to the target, fsynced and renamed into
 * place; an existing store is only ever moved aside, with --force) and
 * prints the restored store's watermark and offsets.
 *
 * After a restore the store is back at the backup's offsets. The Kafka
 * group, though, has committed later offsets, and `iqp stream` treats
 * messages below a group's offsets as counted by another instance (it
 * only rebuilds dedup markers from them). To count the events after the
 * backup again, start the restored store under a new kafka.group.id
 * (README "Operating iqp", "Restore").
 */
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/flags.h"
#include "store/backup.h"

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

static int restore(const char *from, const char *dir, int force) {
    char err[10240], aside[4096];
    if (iqp_store_restore(from, dir, force, aside, sizeof aside, err, sizeof err) < 0)
        return iqp_cli_fail(CMD, "%s", err);
    if (*aside) fprintf(stderr, "iqp restore: the store that was at %s is now %s\n", dir, aside);
    json_t *pos = iqp_cli_store_position(dir, err, sizeof err);
    if (!pos) return iqp_cli_fail(CMD, "the restored store does not open: %s", err);
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

/* backup.c -- `iqp backup`: a consistent copy of a store, taken beside a
 * running writer.
 *
 * Thin: parses the flags, calls iqp_store_backup (store/backup.h: a RocksDB
 * checkpoint from a read-only open, tried again when a concurrent
 * compaction deletes a file being linked), then opens the copy as a store
 * of its own and prints its watermark and offsets: what `iqp restore`
 * would bring back.
 */
#include <stddef.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/flags.h"
#include "store/backup.h"

static const char *CMD = "backup";

typedef struct backup_opts {
    const char *store, *to;
    int64_t attempts;
} backup_opts;

static const iqp_flag FLAGS[] = {
    {"store", IQP_FLAG_STRING, offsetof(backup_opts, store), .arg = "DIR", .help = "the store to back up"},
    {"to", IQP_FLAG_STRING, offsetof(backup_opts, to), .arg = "DIR",
     .help = "the backup; must not exist yet (its parent must)"},
    {"attempts", IQP_FLAG_INT, offsetof(backup_opts, attempts), .def = "5", .min = 1, .max = 100,
     .must = "an integer 1..100", .help = "tries when a concurrent compaction deletes a file being linked"},
    {0}};

static const iqp_flag_cmd BACKUP = {
    .name = "backup",
    .usage = "iqp backup --store DIR --to DIR [--attempts N]",
    .about = "Writes a consistent copy of the store into a new directory: a RocksDB\n"
             "checkpoint (table files hard-linked when on the same file system, else\n"
             "copied). Safe beside a running `iqp stream`: the store is opened read-only,\n"
             "and the copy holds the counts together with exactly the Kafka offsets they\n"
             "were counted up to. Prints the copy's watermark and offsets as JSON on\n"
             "stdout (what `iqp restore` would bring back).",
    .epilog = "Exit status: 0 backed up, 1 the store cannot be read or the backup written,\n"
              "2 bad usage.",
    .flags = FLAGS,
};

static void on_retry(void *ud, int attempt, const char *err) {
    (void)ud;
    fprintf(stderr, "iqp backup: attempt %d: %s; trying again\n", attempt, err);
}

int iqp_cmd_backup(int argc, char **argv) {
    backup_opts opt = {0};
    int rc = iqp_flags_parse(&BACKUP, &opt, argc, argv);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    const char *store = opt.store, *to = opt.to;
    if (!store || !to) return iqp_cli_usage_error(CMD, "give --store DIR and --to DIR");
    char err[1024];
    if (iqp_store_backup(store, to, (int)opt.attempts, on_retry, NULL, err, sizeof err) < 0)
        return iqp_cli_fail(CMD, "%s", err);
    json_t *o = iqp_cli_store_position(to, err, sizeof err);
    if (!o) return iqp_cli_fail(CMD, "the backup %s does not open as a store: %s", to, err);
    json_object_set_new(o, "store", json_string(store));
    json_object_set_new(o, "backup", json_string(to));
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    puts(text);
    free(text);
    json_decref(o);
    return 0;
}

/* backup.c -- `iqp backup`: a consistent copy of a store, taken beside a
 * running writer.
 *
 * Opens the store read-only (as lookup, stats and refresh do: no lock, no
 * writes) and writes a RocksDB checkpoint of it (iqp_store_checkpoint):
 * the counters, dedup markers, publish queue and the Kafka offsets they
 * were counted up to, all as of one point in time, because every flush
 * commits them in one WriteBatch. The writer may delete a table file
 * (compaction) between our open and the link; that attempt fails, is
 * removed, and the next one starts from a fresh open (--attempts).
 * Finally the copy is opened as a store of its own, and its watermark and
 * offsets are printed: what `iqp restore` would bring back.
 */
#include <errno.h>
#include <stddef.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "cli/flags.h"
#include "store/store.h"

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

/* One attempt: a fresh read-only open, then the checkpoint. */
static int attempt(const char *store, const char *to, char *err, size_t errlen) {
    iqp_store *st = iqp_store_open(store, NULL, IQP_STORE_READ_ONLY, err, errlen);
    if (!st) return -2; /* not a store: retrying cannot help */
    int rc = iqp_store_checkpoint(st, to, err, errlen);
    iqp_store_close(st);
    return rc;
}

int iqp_cmd_backup(int argc, char **argv) {
    backup_opts opt = {0};
    int rc = iqp_flags_parse(&BACKUP, &opt, argc, argv);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    const char *store = opt.store, *to = opt.to;
    int64_t attempts = opt.attempts;
    if (!store || !to) return iqp_cli_usage_error(CMD, "give --store DIR and --to DIR");
    struct stat sb;
    if (stat(to, &sb) == 0) return iqp_cli_fail(CMD, "%s already exists: a backup goes into a new directory", to);
    char err[1024];
    rc = -1;
    for (int64_t i = 1; i <= attempts && rc == -1; i++) {
        rc = attempt(store, to, err, sizeof err);
        if (rc == -1) {
            char *tmp = malloc(strlen(to) + 8);
            if (!tmp) abort();
            sprintf(tmp, "%s.tmp", to); /* RocksDB's staging directory */
            iqp_cli_rmrf(tmp);
            iqp_cli_rmrf(to);
            free(tmp);
            if (i < attempts) fprintf(stderr, "iqp backup: attempt %lld: %s; trying again\n", (long long)i, err);
        }
    }
    if (rc < 0) return iqp_cli_fail(CMD, "%s", err);
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

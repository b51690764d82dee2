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
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "store/store.h"

static const char *CMD = "backup";

static void usage(FILE *out) {
    fprintf(out,
            "usage: iqp backup --store DIR --to DIR [--attempts N]\n"
            "\n"
            "Writes a consistent copy of the store into a new directory: a RocksDB\n"
            "checkpoint (table files hard-linked when on the same file system, else\n"
            "copied). Safe beside a running `iqp stream`: the store is opened read-only,\n"
            "and the copy holds the counts together with exactly the Kafka offsets they\n"
            "were counted up to. Prints the copy's watermark and offsets as JSON on\n"
            "stdout (what `iqp restore` would bring back).\n"
            "\n"
            "options:\n"
            "  --store DIR     the store to back up\n"
            "  --to DIR        the backup; must not exist yet (its parent must)\n"
            "  --attempts N    tries when a concurrent compaction deletes a file being\n"
            "                  linked (default 5)\n"
            "  --help          this text\n"
            "\n"
            "Exit status: 0 backed up, 1 the store cannot be read or the backup written,\n"
            "2 bad usage.\n");
}

/* One attempt: a fresh read-only open, then the checkpoint. */
static int attempt(const char *store, const char *to, char *err, size_t errlen) {
    iqp_store *st = iqp_store_open(store, NULL, IQP_STORE_READ_ONLY, err, errlen);
    if (!st) return -2; /* not a store: retrying cannot help */
    int rc = iqp_store_checkpoint(st, to, err, errlen);
    iqp_store_close(st);
    return rc;
}

int iqp_cmd_backup(int argc, char **argv) {
    static const struct option longopts[] = {{"store", required_argument, 0, 's'}, {"to", required_argument, 0, 't'},
                                              {"attempts", required_argument, 0, 'a'}, {"help", no_argument, 0, 'h'},
                                              {0, 0, 0, 0}};
    const char *store = NULL, *to = NULL;
    int64_t attempts = 5;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (c == 'h') return usage(stdout), 0;
        if (c == 's') store = optarg;
        else if (c == 't') to = optarg;
        else if (c == 'a') {
            if (iqp_cli_parse_i64(optarg, &attempts) < 0 || attempts < 1 || attempts > 100)
                return iqp_cli_usage_error(CMD, "--attempts must be an integer 1..100, not '%s'", optarg);
        } else return iqp_cli_usage_error(CMD, "unknown option (see iqp backup --help)");
    }
    if (optind < argc) return iqp_cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!store || !to) return iqp_cli_usage_error(CMD, "give --store DIR and --to DIR");
    struct stat sb;
    if (stat(to, &sb) == 0) return iqp_cli_fail(CMD, "%s already exists: a backup goes into a new directory", to);
    char err[1024];
    int rc = -1;
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

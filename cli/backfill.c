/* backfill.c -- `iqp backfill`: count event log files into a store.
 *
 * Thin: parses flags, opens the store (checking the config's layout against
 * it), the dead-letter sink, and hands every file to consumers/ingest.c,
 * which is the same aggregation code the stream processor uses. Exit 0
 * when every file was read (malformed events are not failures: they are
 * dead-lettered); 1 on an operational failure, naming the file; 2 on bad
 * usage.
 */
#include <stddef.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aggregator/aggregator.h"
#include "aggregator/shards.h"
#include "model/config.h"
#include "cli/cli.h"
#include "cli/flags.h"
#include "consumers/deadletter.h"
#include "consumers/ingest.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/stop.h"

static const char *CMD = "backfill";

typedef struct backfill_opts {
    const char *store_dir, *config_path, *dead_letter;
    int64_t flush_events;
    int64_t threads;
    int quiet;
    int no_ingest;
    iqp_flag_list files;
} backfill_opts;

static const iqp_flag FLAGS[] = {
    {"store", IQP_FLAG_STRING, offsetof(backfill_opts, store_dir), .arg = "DIR",
     .help = "the RocksDB store (required)"},
    {"config", IQP_FLAG_STRING, offsetof(backfill_opts, config_path), .arg = "FILE",
     .help = "JSON config (features, windows, actions, limits); default: the built-in defaults"},
    {"dead-letter", IQP_FLAG_STRING, offsetof(backfill_opts, dead_letter), .arg = "FILE",
     .help = "where malformed and future-dated events go, one JSON line each with its reason (default: "
             "DIR/dead-letter.jsonl)"},
    {"flush-events", IQP_FLAG_INT, offsetof(backfill_opts, flush_events), .min = 1, .max = INT64_MAX,
     .must = "a positive integer", .help = "events per store write (default: config flush_events)"},
    {"threads", IQP_FLAG_INT, offsetof(backfill_opts, threads), .min = 1, .max = IQP_MAX_COUNT_THREADS,
     .must = "an integer in [1, 256]",
     .help = "counting threads (default: the online CPUs less 2, at least 1); counting is sharded by context key, so the "
             "store, the dead letters and the summary counts are the same for any N; reading and decoding, "
             "and the store write, have a thread each besides"},
    {"no-ingest", IQP_FLAG_BOOL, offsetof(backfill_opts, no_ingest),
     .help = "write every batch's counts through the memtable and the write-ahead log, as `iqp stream` "
             "does, instead of ingesting a batch's counts as one sorted table file (the default for "
             "batches of 2048 or more counter merges); the store's contents are the same either way"},
    {"quiet", IQP_FLAG_BOOL, offsetof(backfill_opts, quiet), .help = "no progress line"},
    {0}};

static const iqp_flag_cmd BACKFILL = {
    .name = "backfill",
    .usage = "iqp backfill --store DIR [options] FILE...",
    .about = "Counts impression.v1 / action.v1 events from log files into the store at DIR\n"
             "(created when missing). FILE is JSONL, gzip or zstd (detected from content),\n"
             "or '-' for standard input. Files already ingested into DIR are skipped, and a\n"
             "file an earlier run did not finish resumes where that run's counts stopped.",
    .epilog = "Prints a progress line on a terminal and a summary line at the end (stderr).\n"
              "SIGINT/SIGTERM stop it after the batch in hand: what was counted is committed\n"
              "with its file position, and running the same command again resumes there.\n"
              "\n"
              "Exit status: 0 done (bad events are dead-lettered, not fatal), 1 operational\n"
              "failure (store or file unusable, disk full), 2 bad usage, 130 stopped by a\n"
              "signal. A run that fails before it commits anything removes the store (and\n"
              "the dead-letter file) it created; what existed before is never removed.",
    .args = "FILE...",
    .args_offset = offsetof(backfill_opts, files),
    .flags = FLAGS,
};

/* --threads default: the online CPUs less the two the decoding and the
 * writer thread keep busy, within [1, IQP_MAX_COUNT_THREADS]. On 2 cores
 * one counting thread (the main thread counts as it decides) beat two:
 * 0.366-0.382 against 0.322-0.336 of a parse-only pass on the 30-day
 * bench log, 3.97-4.02 against 4.50-4.59 CPU s, and even on the dense
 * 6-hour log (0.411 against 0.404): a fifth thread on two cores only adds
 * the hand-off (README "Threads"). */
static int64_t default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN) - 2;
    return n < 1 ? 1 : n > IQP_MAX_COUNT_THREADS ? IQP_MAX_COUNT_THREADS : n;
}

static int parse_opts(int argc, char **argv, backfill_opts *o) {
    memset(o, 0, sizeof *o);
    o->threads = default_threads();
    int rc = iqp_flags_parse(&BACKFILL, o, argc, argv);
    if (rc) return rc;
    if (!o->store_dir) return iqp_cli_usage_error(CMD, "--store DIR is required");
    if (o->files.n == 0) return iqp_cli_usage_error(CMD, "no input files (use '-' for stdin)");
    return 0;
}

static void print_summary(const iqp_ingest *ing, const char *dl_path, double secs) {
    const iqp_ingest_stats *s = iqp_ingest_get_stats(ing);
    const iqp_agg_stats *a = iqp_ingest_agg_stats(ing);
    fprintf(stderr,
            "backfill: %llu files (%llu skipped), %llu lines (%llu already counted), %llu counted, %llu duplicate, "
            "%llu late, %llu bad -> %s; %llu cell updates folded into %llu merges; %.2f s, "
            "%.0f lines/s, %.1f MB read\n",
            (unsigned long long)(s->files_done + s->files_skipped),
            (unsigned long long)s->files_skipped, (unsigned long long)s->lines,
            (unsigned long long)s->lines_resumed,
            (unsigned long long)s->counted, (unsigned long long)s->duplicate,
            (unsigned long long)s->late, (unsigned long long)s->bad, dl_path,
            (unsigned long long)a->cell_updates, (unsigned long long)a->cells_written, secs,
            secs > 0 ? s->lines / secs : 0.0, s->bytes_in / 1e6);
}

/* What the store wrote, after a final memtable flush so that every byte
 * this run handed it is counted in the table files too. */
static void print_store_io(iqp_store *st) {
    iqp_store_io io;
    iqp_store_flush(st);
    if (iqp_store_io_stats(st, &io) < 0 || !(io.flushed + io.ingested)) return;
    fprintf(stderr,
            "backfill: store wrote %.1f MB (write-ahead log), flushed %.1f MB, ingested %.1f MB "
            "(%llu table files), compactions wrote %.1f MB: write amplification %.2f\n",
            io.logical / 1e6, io.flushed / 1e6, io.ingested / 1e6, (unsigned long long)io.ingested_files,
            io.compacted / 1e6, (double)(io.flushed + io.ingested + io.compacted) / (io.flushed + io.ingested));
}

/* A run that fails before it commits anything to a store it created takes
 * back what it created: the store, and the dead-letter file when it made
 * that too (dl_made, NULL when the file was there before). A store or file
 * that existed before the run is kept, and so is anything once a batch is
 * committed (a re-run resumes from it). */
static void close_store(iqp_store *st, int rc, const char *dl_made) {
    if (rc != 0 && iqp_store_is_fresh(st)) {
        if (dl_made) unlink(dl_made);
        iqp_store_close_discarding(st);
        fprintf(stderr, "iqp %s: nothing was counted; removed the store this run created\n", CMD);
        return;
    }
    iqp_store_close(st);
}

/* SIGINT/SIGTERM: finish the batch in hand, commit it with its position,
 * exit 130. A second signal kills at once (SA_RESETHAND): still safe, as
 * every batch commits atomically. */
static void on_stop_signal(int sig) {
    (void)sig;
    iqp_stop_request();
}

int iqp_cmd_backfill(int argc, char **argv) {
    backfill_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    iqp_cli_keep_freed_memory();
    char err[1024], dl_default[PATH_MAX];
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    if (o.config_path && iqp_config_load(&cfg, o.config_path, err, sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    if (o.flush_events) cfg.flush_events = (size_t)o.flush_events;
    iqp_store *st = iqp_store_open(o.store_dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    if (!st) return iqp_cli_fail(CMD, "%s", err);
    if (!o.no_ingest) iqp_store_set_ingest(st, IQP_STORE_INGEST_MIN_MERGES);
    if (!o.dead_letter) {
        snprintf(dl_default, sizeof dl_default, "%s/dead-letter.jsonl", o.store_dir);
        o.dead_letter = dl_default;
    }
    int dl_existed = access(o.dead_letter, F_OK) == 0;
    iqp_deadletter *dl = iqp_deadletter_open_file(o.dead_letter, err, sizeof err);
    if (!dl) {
        iqp_store_close_discarding(st);
        return iqp_cli_fail(CMD, "%s", err);
    }
    double t0 = iqp_mono_seconds();
    iqp_ingest *ing = iqp_ingest_new(st, dl, !o.quiet && isatty(STDERR_FILENO));
    iqp_ingest_set_threads(ing, (unsigned)o.threads);
    iqp_cli_on_stop_signals(on_stop_signal);
    rc = 0;
    for (size_t i = 0; i < o.files.n && rc == 0; i++) {
        int frc = iqp_ingest_file(ing, o.files.v[i], err, sizeof err);
        if (frc < 0) rc = iqp_cli_fail(CMD, "%s", err);
        if (frc == 1) rc = 130; /* stopped by a signal, as shells report SIGINT */
    }
    print_summary(ing, o.dead_letter, iqp_mono_seconds() - t0);
    if (!o.quiet) print_store_io(st);
    iqp_ingest_free(ing);
    if (iqp_deadletter_close(dl, err, sizeof err) < 0 && rc == 0) rc = iqp_cli_fail(CMD, "%s", err);
    close_store(st, rc, dl_existed ? NULL : o.dead_letter);
    return rc;
}

/* export.c -- `iqp export`: point-in-time training rows from event logs.
 *
 * Thin: parses and checks flags, opens the dead-letter sink, and hands the
 * rest to export/export.c (the replay through the same aggregator, store
 * and feature reader as iqp backfill and iqp lookup). Exit 0 when every
 * file was read (bad lines are dead-lettered, not failures); 1 on an
 * operational failure, naming the file; 2 on bad usage; 130 when stopped
 * by a signal. A failed run takes back what it wrote: --out is only
 * replaced at the end (export.c), and the dead-letter file is removed, or
 * cut back to its length before the run when it existed.
 */
#include <errno.h>
#include <stddef.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "model/config.h"
#include "cli/cli.h"
#include "cli/flags.h"
#include "consumers/deadletter.h"
#include "export/export.h"
#include "util/clock.h"
#include "util/stop.h"

static const char *CMD = "export";

#define DAY_MS 86400000LL
#define MAX_SPAN_MS (3650 * DAY_MS) /* bound on lag, horizon, disorder: no overflow */
#define MAX_INPUTS 1024

typedef struct export_cli {
    iqp_export_options o;
    const char *config_path, *dead_letter;
    const char *inputs[MAX_INPUTS];
    iqp_flag_list events, files;  /* --events, then the other arguments: the inputs */
    int format;                   /* index in "jsonl|csv" */
    int64_t cache_mb;
    int no_rates, quiet;
} export_cli;

#define EXPORT_OPT(field) offsetof(export_cli, o.field)
static const iqp_flag FLAGS[] = {
    {"events", IQP_FLAG_REPEATED, offsetof(export_cli, events), .arg = "FILE...", .max = MAX_INPUTS,
     .help = "log files as for iqp backfill (.jsonl, gzip, zstd, or '-' for stdin); repeatable, and further "
             "FILE arguments count too. Several files are merged by event time."},
    {"out", IQP_FLAG_STRING, EXPORT_OPT(out), .arg = "FILE",
     .help = "the rows (a regular file: labels are set in place); written as FILE.partial-XXXXXX and renamed "
             "at the end, so a failed run leaves FILE as it was"},
    {"format", IQP_FLAG_CHOICE, offsetof(export_cli, format), .choices = "jsonl|csv", .def = "jsonl",
     .help = "row format (default jsonl); same columns in both"},
    {"from", IQP_FLAG_INT, EXPORT_OPT(from_ms), .arg = "MS", .max = INT64_MAX / 2,
     .help = "first impression time to export (default: all)"},
    {"until", IQP_FLAG_INT, EXPORT_OPT(until_ms), .arg = "MS", .max = INT64_MAX / 2,
     .help = "export impressions with ts < MS (default: all)"},
    {"lag-ms", IQP_FLAG_INT, EXPORT_OPT(lag_ms), .def = "0", .max = MAX_SPAN_MS,
     .help = "features as of ts - N (default 0: just before the impression)"},
    {"label-horizon-ms", IQP_FLAG_INT, EXPORT_OPT(label_horizon_ms), .def = "86400000", .min = 1,
     .max = MAX_SPAN_MS, .help = "actions up to N ms after the impression label it (default 86400000 = 24 h)"},
    {"max-disorder-ms", IQP_FLAG_INT, EXPORT_OPT(max_disorder_ms), .def = "600000", .max = MAX_SPAN_MS,
     .help = "the reorder buffer: an event more than N ms older than the newest event read before it is "
             "dead-lettered as out_of_order (default 600000 = 10 min)"},
    {"no-rates", IQP_FLAG_BOOL, offsetof(export_cli, no_rates),
     .help = "leave out the iqp_* rate columns (count / context_count)"},
    {"config", IQP_FLAG_STRING, offsetof(export_cli, config_path), .arg = "FILE",
     .help = "JSON config (features, windows, actions, limits)"},
    {"dead-letter", IQP_FLAG_STRING, offsetof(export_cli, dead_letter), .arg = "FILE",
     .help = "bad lines, one JSON record each with its reason (default: OUT.dead-letter.jsonl)"},
    {"work-dir", IQP_FLAG_STRING, EXPORT_OPT(work_dir), .arg = "DIR",
     .help = "where the temporary store goes (default $TMPDIR or /tmp); it is removed at the end"},
    {"cache-mb", IQP_FLAG_INT, offsetof(export_cli, cache_mb), .def = "256", .max = 1 << 20,
     .help = "memory for the store cells kept for reads (default 256); past it they are dropped and read "
             "again"},
    {"quiet", IQP_FLAG_BOOL, offsetof(export_cli, quiet), .help = "no progress line"},
    {0}};

static const iqp_flag_cmd EXPORT = {
    .name = "export",
    .usage = "iqp export --events FILE... --out FILE [options]",
    .about = "Writes one training row per (impression with ts in [from, until), distinct item\n"
             "shown): request_id, position, query, country, gender, item, ts, every feature x\n"
             "window x measure as a perfectly fresh store would have served it at ts - lag\n"
             "(only events with ts < ts - lag counted), and 0/1 labels from the actions on\n"
             "that item in that request within the label horizon after the impression.\n"
             "Counting is iqp backfill's, reading is iqp lookup's; events before --from only\n"
             "warm the counters. Logs need not be sorted (see --max-disorder-ms).",
    .epilog = "Prints a progress line on a terminal and a summary line at the end (stderr).\n"
              "Exit status: 0 done, 1 operational failure (a file unusable), 2 bad usage,\n"
              "130 stopped by a signal (the rows written are whole; later labels may be missing).",
    .args = "FILE...",
    .args_offset = offsetof(export_cli, files),
    .flags = FLAGS,
};

static int add_inputs(export_cli *c, const iqp_flag_list *l) {
    for (size_t i = 0; i < l->n; i++) {
        if (c->o.n_inputs == MAX_INPUTS) return iqp_cli_usage_error(CMD, "more than %d input files", MAX_INPUTS);
        c->inputs[c->o.n_inputs++] = l->v[i];
    }
    return 0;
}

/* 0, -1 after --help, or 2 after a usage message. */
static int parse_opts(int argc, char **argv, export_cli *c) {
    int rc;
    memset(c, 0, sizeof *c);
    c->o.until_ms = INT64_MAX;
    if ((rc = iqp_flags_parse(&EXPORT, c, argc, argv))) return rc;
    if ((rc = add_inputs(c, &c->events)) || (rc = add_inputs(c, &c->files))) return rc;
    c->o.rates = !c->no_rates;
    c->o.cache_bytes = (size_t)c->cache_mb << 20;
    if (c->o.n_inputs == 0) return iqp_cli_usage_error(CMD, "no input files (--events FILE...)");
    if (!c->o.out) return iqp_cli_usage_error(CMD, "--out FILE is required");
    if (c->o.from_ms >= c->o.until_ms)
        return iqp_cli_usage_error(CMD, "--from (%lld) must be below --until (%lld)",
                                   (long long)c->o.from_ms, (long long)c->o.until_ms);
    c->o.format = c->format == 1 ? IQP_ROWS_CSV : IQP_ROWS_JSONL;
    c->o.inputs = c->inputs;
    return 0;
}

/* The summary's first part adds up: lines = impressions counted + actions
 * counted + duplicate + late + bad (iqp backfill's categories for the same
 * file) + events read past --until - lag (never counted: no row reads them)
 * + events still buffered when a signal stopped the run. */
static void print_summary(const export_cli *c, const iqp_export_stats *s, const char *dl, double secs) {
    fprintf(stderr,
            "export: %llu files, %llu lines = %llu impressions + %llu actions counted + %llu "
            "duplicate + %llu late + %llu bad -> %s (%llu out of order, %llu future) + %llu past "
            "--until (not counted) + %llu unprocessed (stopped); %llu impressions -> %llu rows -> "
            "%s (%llu engaged, %llu labels set), features as of ts - %lld ms; peak %zu events "
            "buffered, %zu rows open%s; %.2f s, %.0f rows/s, %.1f MB read\n",
            (unsigned long long)s->files, (unsigned long long)s->lines,
            (unsigned long long)s->counted_impressions, (unsigned long long)s->counted_actions,
            (unsigned long long)s->duplicate, (unsigned long long)s->late,
            (unsigned long long)s->bad, dl, (unsigned long long)s->out_of_order,
            (unsigned long long)s->future, (unsigned long long)s->skipped_after_until,
            (unsigned long long)s->unprocessed, (unsigned long long)s->impressions_read,
            (unsigned long long)s->rows.rows, c->o.out, (unsigned long long)s->rows.rows_engaged,
            (unsigned long long)s->rows.labels_set, (long long)c->o.lag_ms, s->buffer_peak,
            s->rows.open_peak, s->stopped_early ? "; stopped reading past --until + horizon" : "",
            secs, secs > 0 ? s->rows.rows / secs : 0.0, s->bytes_in / 1e6);
    if (s->not_counted)
        fprintf(stderr, "iqp export: warning: %llu impressions gave rows but were then not counted\n",
                (unsigned long long)s->not_counted);
}

/* --out's directory must exist: checked before the dead-letter file (which
 * lives next to --out by default) is opened, so the message names --out.
 * 0, or 1 after the message. */
static int check_out_dir(const char *out) {
    char *copy = strdup(out);
    if (!copy) abort();
    const char *dir = dirname(copy);
    struct stat st;
    int rc = 0;
    if (stat(dir, &st) < 0)
        rc = iqp_cli_fail(CMD, "cannot create --out %s: %s: %s", out, dir, strerror(errno));
    else if (!S_ISDIR(st.st_mode))
        rc = iqp_cli_fail(CMD, "cannot create --out %s: %s is not a directory", out, dir);
    free(copy);
    return rc;
}

/* The dead-letter file as it was before the run, so that a failed run can
 * take back what it added: remove the file it created, or cut one that
 * existed back to its old length (records are only ever appended). */
typedef struct dl_before {
    int existed, regular;
    off_t size;
} dl_before;

static dl_before dl_state(const char *path) {
    struct stat st;
    dl_before b = {0, 0, 0};
    if (stat(path, &st) == 0) b = (dl_before){1, S_ISREG(st.st_mode), st.st_size};
    return b;
}

static void dl_restore(const char *path, const dl_before *b) {
    if (!b->existed) unlink(path);
    else if (b->regular && truncate(path, b->size) < 0)
        fprintf(stderr, "iqp export: warning: cannot cut %s back to %lld bytes: %s\n", path,
                (long long)b->size, strerror(errno));
}

static void on_stop_signal(int sig) {
    (void)sig;
    iqp_stop_request();
}

int iqp_cmd_export(int argc, char **argv) {
    export_cli c;
    int rc = parse_opts(argc, argv, &c);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    char err[1024], *dl_default = NULL;
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    if (c.config_path && iqp_config_load(&cfg, c.config_path, err, sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    /* --out must be (or become) a regular file: labels are set in place. Said
     * before anything is created, so a bad --out leaves no dead-letter file. */
    struct stat st;
    if (stat(c.o.out, &st) == 0 && !S_ISREG(st.st_mode))
        return iqp_cli_fail(CMD, "%s is not a regular file (labels are set in place, so the output "
                                 "must be one)", c.o.out);
    if ((rc = check_out_dir(c.o.out))) return rc;
    if (!c.dead_letter) {
        if (asprintf(&dl_default, "%s.dead-letter.jsonl", c.o.out) < 0) abort();
        c.dead_letter = dl_default;
    }
    dl_before dl_was = dl_state(c.dead_letter);
    c.o.dl = iqp_deadletter_open_file(c.dead_letter, err, sizeof err);
    if (!c.o.dl) {
        rc = iqp_cli_fail(CMD, "%s", err);
        free(dl_default);
        return rc;
    }
    c.o.progress = !c.quiet && isatty(STDERR_FILENO);
    iqp_cli_on_stop_signals(on_stop_signal);
    iqp_export_stats stats;
    double t0 = iqp_mono_seconds();
    int erc = iqp_export_run(&cfg, &c.o, &stats, err, sizeof err);
    rc = erc < 0 ? iqp_cli_fail(CMD, "%s", err) : erc == 1 ? 130 : 0;
    if (erc >= 0) print_summary(&c, &stats, c.dead_letter, iqp_mono_seconds() - t0);
    if (iqp_deadletter_close(c.o.dl, err, sizeof err) < 0 && rc == 0) rc = iqp_cli_fail(CMD, "%s", err);
    if (erc < 0) dl_restore(c.dead_letter, &dl_was); /* --out: export.c already did */
    free(dl_default);
    return rc;
}

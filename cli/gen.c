/* gen.c -- `iqp gen`: the flags of the synthetic traffic generator.
 *
 * Parses the flags into an iqp_gen_options, checks what the generator
 * takes for granted (ranges, --items-per-impression <= --items, distinct
 * --actions, --truth not --out, the default --start), calls iqp_gen_run
 * and prints its summary. The traffic model, its truth, faults and output
 * are gen/'s (gen/gen.h states the model).
 */
#include <stddef.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "gen/gen.h"
#include "cli/cli.h"
#include "cli/flags.h"

#define CMD "gen"
#define SEC_MS 1000LL
#define HOUR_MS (3600 * SEC_MS)

static const char *const DEFAULT_ACTIONS = "click,save,closeup,long_click,download,screenshot";

/* The options struct the flag table fills: the generator's own options,
 * and --actions as typed (parsed into o.actions by its check). */
typedef struct gen_cli {
    iqp_gen_options o;
    const char *actions;
} gen_cli;

/* --actions: comma-separated, valid, distinct names into o.actions. */
static int parse_actions(void *opts, const char *list, char *why, size_t whylen) {
    iqp_gen_options *o = &((gen_cli *)opts)->o;
    o->n_actions = 0;
    const char *p = list;
    for (;;) {
        size_t n = strcspn(p, ",");
        if (!iqp_config_valid_name(p, n))
            return snprintf(why, whylen, "--actions: \"%.*s\" is not an action name (1..%d of A-Z a-z 0-9 _ - .)",
                            (int)n, p, IQP_NAME_MAX - 1), -1;
        if (o->n_actions == IQP_MAX_ACTIONS)
            return snprintf(why, whylen, "--actions: more than %d names", IQP_MAX_ACTIONS), -1;
        memcpy(o->actions[o->n_actions], p, n);
        o->actions[o->n_actions][n] = '\0';
        for (size_t i = 0; i < o->n_actions; i++)
            if (strcmp(o->actions[i], o->actions[o->n_actions]) == 0)
                return snprintf(why, whylen, "--actions: \"%s\" is listed twice", o->actions[i]), -1;
        o->n_actions++;
        if (!p[n]) return 0;
        p += n + 1;
    }
}

#define GEN_OPT(field) offsetof(gen_cli, o.field)
static const iqp_flag FLAGS[] = {
    {"seed", IQP_FLAG_INT, GEN_OPT(seed), .def = "1", .help = "PRNG seed"},
    {"impressions", IQP_FLAG_INT, GEN_OPT(impressions), .def = "10000", .max = 1000000000000LL,
     .help = "impression events"},
    {"start", IQP_FLAG_INT, GEN_OPT(start), .arg = "MS", .max = IQP_GEN_MAX_TS / 2,
     .help = "first impression time, ms since epoch (default: the current hour, floored, minus the span)"},
    {"span", IQP_FLAG_DURATION, GEN_OPT(span_ms), .def = "6h", .min = 1, .max = IQP_GEN_MAX_TS / 4,
     .help = "impressions fall in [start, start+span)"},
    {"queries", IQP_FLAG_INT, GEN_OPT(queries), .def = "200", .min = 1, .max = IQP_GEN_MAX_KEYSPACE,
     .help = "distinct queries, Zipf s=1.1"},
    {"items", IQP_FLAG_INT, GEN_OPT(items), .def = "2000", .min = 1, .max = IQP_GEN_MAX_KEYSPACE,
     .help = "distinct items, \"i0\".."},
    {"items-per-impression", IQP_FLAG_INT, GEN_OPT(per_impression), .def = "10", .min = 1,
     .max = IQP_GEN_MAX_PER_IMPRESSION, .help = "items shown per impression"},
    {"redeliver-rate", IQP_FLAG_NUMBER, GEN_OPT(redeliver), .arg = "F", .def = "0.02", .fmax = 1,
     .help = "share of lines written twice"},
    {"repeat-rate", IQP_FLAG_NUMBER, GEN_OPT(repeat), .arg = "F", .def = "0.03", .fmax = 1,
     .help = "share of actions repeated with a new event_id and ts moved by up to 60 s either way"},
    {"variant-rate", IQP_FLAG_NUMBER, GEN_OPT(variant), .arg = "F", .def = "0.1", .fmax = 1,
     .help = "share of events whose query is a spelling variant normalizing to the same query"},
    {"bad-rate", IQP_FLAG_NUMBER, GEN_OPT(bad), .arg = "F", .def = "0.01", .fmax = 1,
     .help = "extra malformed lines per valid line"},
    {"disorder", IQP_FLAG_DURATION, GEN_OPT(disorder_ms), .def = "2m", .max = 24 * HOUR_MS - 1,
     .must = "a duration below 24h (like 30s, 2m)", .help = "max ts disorder of the output, < 24h"},
    {"actions", IQP_FLAG_STRING, offsetof(gen_cli, actions), .arg = "LIST", .def = DEFAULT_ACTIONS,
     .check = parse_actions, .help = "comma-separated action names"},
    {"out", IQP_FLAG_STRING, GEN_OPT(out), .arg = "FILE",
     .help = "output, \"-\" for stdout (default); .gz: gzip, .zst: zstd"},
    {"truth", IQP_FLAG_STRING, GEN_OPT(truth), .arg = "FILE",
     .help = "write the planted propensity of every shown (query, item, country, gender) cell as JSONL"},
    {"devices", IQP_FLAG_BOOL, GEN_OPT(devices),
     .help = "also write user.device (web, ios, android, with variants and junk); truth cells are then per device"},
    {0}};

static const iqp_flag_cmd GEN = {
    .name = CMD,
    .usage = "iqp gen [options]",
    .about = "Writes deterministic synthetic search traffic (impression.v1 and action.v1\n"
             "JSONL events, with redeliveries, repeated actions, query spelling variants,\n"
             "junk user values, malformed lines and bounded disorder).",
    .epilog = "Durations: 500ms, 30s, 15m, 6h, 2d. Actions follow their impression by\n"
              "0..120 s; every event ts is in [start-60s, start+span+180s). Each output\n"
              "line's ts is at most --disorder below the largest ts before it.\n"
              "Same flags with an explicit --start give byte-identical output.",
    .flags = FLAGS,
};

/* Fills o from argv: 0 to run, -1 for --help (done), 2 for a usage error. */
static int parse_opts(iqp_gen_options *o, int argc, char **argv) {
    gen_cli c = {.o = {.start = -1, .out = "-"}};
    int rc = iqp_flags_parse(&GEN, &c, argc, argv);
    *o = c.o;
    if (rc) return rc;
    if (o->per_impression > o->items)
        return iqp_cli_usage_error(CMD, "--items-per-impression (%" PRId64 ") exceeds --items "
                                   "(%" PRId64 ")", o->per_impression, o->items);
    if (o->truth && strcmp(o->truth, o->out) == 0)
        return iqp_cli_usage_error(CMD, "--truth and --out name the same file '%s'", o->out);
    if (o->start < 0) {
        o->start = iqp_now_ms() / HOUR_MS * HOUR_MS - o->span_ms;
        if (o->start < 0) o->start = 0;
    }
    if (o->start + o->span_ms > IQP_GEN_MAX_TS / 2)
        return iqp_cli_usage_error(CMD, "--start plus --span is past the year 100000");
    return 0;
}

/* The summary lines, as far as the run got. */
static void print_summary(const iqp_gen_options *o, const iqp_gen_stats *st) {
    if (st->events_done)
        fprintf(stderr, "gen: %" PRIu64 " impressions, %" PRIu64 " actions, %" PRIu64
                " redelivered, %" PRIu64 " repeated, %" PRIu64 " malformed -> %s\n",
                st->impressions, st->actions, st->redelivered, st->repeated, st->malformed,
                o->out);
    if (st->truth_done) fprintf(stderr, "gen: %zu truth cells -> %s\n", st->truth_cells, o->truth);
}

int iqp_cmd_gen(int argc, char **argv) {
    iqp_gen_options o;
    int rc = parse_opts(&o, argc, argv);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc; /* after --help, or a usage error */
    iqp_gen_stats st;
    char err[1024];
    rc = iqp_gen_run(&o, &st, err, sizeof err);
    print_summary(&o, &st);
    return rc ? iqp_cli_fail(CMD, "%s", err) : 0;
}

/* gen.c -- `iqp gen`: the flags of the synthetic traffic generator.
 *
 * Parses the flags into an iqp_gen_options, checks what the generator
 * takes for granted (ranges, --items-per-impression <= --items, distinct
 * --actions, --truth not --out, the default --start), calls iqp_gen_run
 * and prints its summary. The traffic model, its truth, faults and output
 * are gen/'s (gen/gen.h states the model).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "gen/gen.h"
#include "cli/cli.h"

#define CMD "gen"
#define SEC_MS 1000LL
#define HOUR_MS (3600 * SEC_MS)

static const char *const DEFAULT_ACTIONS = "click,save,closeup,long_click,download,screenshot";

static void gen_usage(FILE *f) {
    fputs("usage: iqp gen [options]\n"
          "\n"
          "Writes deterministic synthetic search traffic (impression.v1 and action.v1\n"
          "JSONL events, with redeliveries, repeated actions, query spelling variants,\n"
          "junk user values, malformed lines and bounded disorder).\n"
          "\n"
          "  --seed N                  PRNG seed (default 1)\n"
          "  --impressions N           impression events (default 10000)\n"
          "  --start MS                first impression time, ms since epoch\n"
          "                            (default: the current hour, floored, minus the span)\n"
          "  --span DURATION           impressions fall in [start, start+span) (default 6h)\n"
          "  --queries N               distinct queries, Zipf s=1.1 (default 200)\n"
          "  --items N                 distinct items, \"i0\".. (default 2000)\n"
          "  --items-per-impression N  items shown per impression (default 10)\n"
          "  --redeliver-rate F        share of lines written twice (default 0.02)\n"
          "  --repeat-rate F           share of actions repeated with a new event_id and\n"
          "                            ts moved by up to 60 s either way (default 0.03)\n"
          "  --variant-rate F          share of events whose query is a spelling variant\n"
          "                            normalizing to the same query (default 0.1)\n"
          "  --bad-rate F              extra malformed lines per valid line (default 0.01)\n"
          "  --disorder DURATION       max ts disorder of the output, < 24h (default 2m)\n"
          "  --actions LIST            comma-separated action names\n"
          "                            (default click,save,closeup,long_click,download,screenshot)\n"
          "  --out FILE                output, \"-\" for stdout (default); .gz: gzip,\n"
          "                            .zst: zstd\n"
          "  --truth FILE              write the planted propensity of every shown\n"
          "                            (query, item, country, gender) cell as JSONL\n"
          "  --devices                 also write user.device (web, ios, android, with\n"
          "                            variants and junk); truth cells are then per device\n"
          "  --help                    print this help\n"
          "\n"
          "Durations: 500ms, 30s, 15m, 6h, 2d. Actions follow their impression by\n"
          "0..120 s; every event ts is in [start-60s, start+span+180s). Each output\n"
          "line's ts is at most --disorder below the largest ts before it.\n"
          "Same flags with an explicit --start give byte-identical output.\n",
          f);
}

static int parse_count(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (iqp_cli_parse_i64(s, out) != 0 || *out < lo || *out > hi)
        return iqp_cli_usage_error(CMD, "%s must be an integer in [%" PRId64 ", %" PRId64
                                   "], got \"%s\"", flag, lo, hi, s);
    return 0;
}

static int parse_rate(const char *flag, const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0.0 && v <= 1.0))
        return iqp_cli_usage_error(CMD, "%s must be a number in [0, 1], got \"%s\"", flag, s);
    *out = v;
    return 0;
}

static int parse_dur(const char *flag, const char *s, int64_t lo, int64_t hi, const char *what,
                     int64_t *out) {
    if (iqp_parse_duration(s, out) != 0 || *out < lo || *out > hi)
        return iqp_cli_usage_error(CMD, "%s must be %s (like 30m, 6h, 2d), got \"%s\"", flag,
                                   what, s);
    return 0;
}

static int parse_actions(iqp_gen_options *o, const char *list) {
    o->n_actions = 0;
    const char *p = list;
    for (;;) {
        size_t n = strcspn(p, ",");
        if (!iqp_config_valid_name(p, n))
            return iqp_cli_usage_error(CMD, "--actions: \"%.*s\" is not an action name "
                                       "(1..%d of A-Z a-z 0-9 _ - .)", (int)n, p,
                                       IQP_NAME_MAX - 1);
        if (o->n_actions == IQP_MAX_ACTIONS)
            return iqp_cli_usage_error(CMD, "--actions: more than %d names", IQP_MAX_ACTIONS);
        memcpy(o->actions[o->n_actions], p, n);
        o->actions[o->n_actions][n] = '\0';
        for (size_t i = 0; i < o->n_actions; i++)
            if (strcmp(o->actions[i], o->actions[o->n_actions]) == 0)
                return iqp_cli_usage_error(CMD, "--actions: \"%s\" is listed twice",
                                           o->actions[i]);
        o->n_actions++;
        if (!p[n]) return 0;
        p += n + 1;
    }
}

enum {
    OPT_SEED = 256, OPT_IMPRESSIONS, OPT_START, OPT_SPAN, OPT_QUERIES, OPT_ITEMS, OPT_PER_IMP,
    OPT_REDELIVER, OPT_REPEAT, OPT_VARIANT, OPT_BAD, OPT_DISORDER, OPT_OUT, OPT_TRUTH,
    OPT_ACTIONS, OPT_DEVICES, OPT_HELP
};

static const struct option LONG_OPTS[] = {
    {"seed", required_argument, NULL, OPT_SEED},
    {"impressions", required_argument, NULL, OPT_IMPRESSIONS},
    {"start", required_argument, NULL, OPT_START},
    {"span", required_argument, NULL, OPT_SPAN},
    {"queries", required_argument, NULL, OPT_QUERIES},
    {"items", required_argument, NULL, OPT_ITEMS},
    {"items-per-impression", required_argument, NULL, OPT_PER_IMP},
    {"redeliver-rate", required_argument, NULL, OPT_REDELIVER},
    {"repeat-rate", required_argument, NULL, OPT_REPEAT},
    {"variant-rate", required_argument, NULL, OPT_VARIANT},
    {"bad-rate", required_argument, NULL, OPT_BAD},
    {"disorder", required_argument, NULL, OPT_DISORDER},
    {"out", required_argument, NULL, OPT_OUT},
    {"truth", required_argument, NULL, OPT_TRUTH},
    {"actions", required_argument, NULL, OPT_ACTIONS},
    {"devices", no_argument, NULL, OPT_DEVICES},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/* One option into o: 0, 2 on a bad value. */
static int apply_opt(iqp_gen_options *o, int c, const char *a) {
    switch (c) {
    case OPT_SEED: return parse_count("--seed", a, 0, INT64_MAX, &o->seed);
    case OPT_IMPRESSIONS:
        return parse_count("--impressions", a, 0, 1000000000000LL, &o->impressions);
    case OPT_START: return parse_count("--start", a, 0, IQP_GEN_MAX_TS / 2, &o->start);
    case OPT_SPAN:
        return parse_dur("--span", a, 1, IQP_GEN_MAX_TS / 4, "a positive duration", &o->span_ms);
    case OPT_QUERIES: return parse_count("--queries", a, 1, IQP_GEN_MAX_KEYSPACE, &o->queries);
    case OPT_ITEMS: return parse_count("--items", a, 1, IQP_GEN_MAX_KEYSPACE, &o->items);
    case OPT_PER_IMP:
        return parse_count("--items-per-impression", a, 1, IQP_GEN_MAX_PER_IMPRESSION,
                           &o->per_impression);
    case OPT_REDELIVER: return parse_rate("--redeliver-rate", a, &o->redeliver);
    case OPT_REPEAT: return parse_rate("--repeat-rate", a, &o->repeat);
    case OPT_VARIANT: return parse_rate("--variant-rate", a, &o->variant);
    case OPT_BAD: return parse_rate("--bad-rate", a, &o->bad);
    case OPT_DISORDER:
        return parse_dur("--disorder", a, 0, 24 * HOUR_MS - 1, "a duration below 24h",
                         &o->disorder_ms);
    case OPT_OUT: o->out = a; return 0;
    case OPT_TRUTH: o->truth = a; return 0;
    case OPT_ACTIONS: return parse_actions(o, a);
    case OPT_DEVICES: o->devices = 1; return 0;
    default: return 2;
    }
}

/* Fills o from argv: 0 to run, 1 for --help (done), 2 for a usage error. */
static int parse_opts(iqp_gen_options *o, int argc, char **argv) {
    *o = (iqp_gen_options){.seed = 1, .impressions = 10000, .span_ms = 6 * HOUR_MS,
                           .queries = 200, .items = 2000, .per_impression = 10,
                           .redeliver = 0.02, .repeat = 0.03, .variant = 0.1, .bad = 0.01,
                           .disorder_ms = 120 * SEC_MS, .out = "-"};
    parse_actions(o, DEFAULT_ACTIONS);
    opterr = 0;
    optind = 0;
    int c, start_set = 0;
    while ((c = getopt_long(argc, argv, ":", LONG_OPTS, NULL)) != -1) {
        if (c == OPT_HELP) { gen_usage(stdout); return 1; }
        if (c == '?')
            return iqp_cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
        if (c == ':')
            return iqp_cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
        if (c == OPT_START) start_set = 1;
        if (apply_opt(o, c, optarg)) return 2;
    }
    if (optind < argc) return iqp_cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (o->per_impression > o->items)
        return iqp_cli_usage_error(CMD, "--items-per-impression (%" PRId64 ") exceeds --items "
                                   "(%" PRId64 ")", o->per_impression, o->items);
    if (o->truth && strcmp(o->truth, o->out) == 0)
        return iqp_cli_usage_error(CMD, "--truth and --out name the same file '%s'", o->out);
    if (!start_set) {
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
    if (rc == 1) return 0;              /* --help */
    if (rc) return rc;
    iqp_gen_stats st;
    char err[1024];
    rc = iqp_gen_run(&o, &st, err, sizeof err);
    print_summary(&o, &st);
    return rc ? iqp_cli_fail(CMD, "%s", err) : 0;
}

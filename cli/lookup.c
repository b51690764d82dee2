/* lookup.c -- `iqp lookup`: feature values for one query, one user context
 * and a list of items, one JSON object per (feature, window, item).
 *
 * Inputs go through the same normalization as events, so "RED  Dress" finds
 * "red dress"; segment values (--country, --gender, --segment NAME=VALUE)
 * by the normalizer the layout declares for that segment. Features whose
 * context needs a segment that was not given are skipped. Two sources, one output:
 *   --store DIR   the RocksDB store, opened read-only (safe beside a
 *                 writer); its own layout unless --config is given, in
 *                 which case the two must match;
 *   --redis URL   what the publisher put in Redis, read through libiqp
 *                 (one pipelined round trip), in the published layout.
 * Both fill iqp_feature_rows and print them with the same code, so equal
 * counts print equal lines.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "model/cells.h"
#include "model/config.h"
#include "aggregator/features.h"
#include "model/normalize.h"
#include "cli/cli.h"
#include "client/client_internal.h"
#include "client/redis_conn.h"
#include "store/store.h"

static const char *CMD = "lookup";

static void usage(FILE *out) {
    fprintf(out,
            "usage: iqp lookup (--store DIR | --redis URL | --redis-url-file FILE)\n"
            "                  [--query Q] [--country CC] [--gender G]\n"
            "                  [--segment NAME=VALUE]... [--as-of MS] [--feature NAME]... ITEM...\n"
            "\n"
            "Prints one JSON object per line per (feature, window, item) with the keys\n"
            "feature, window, context, item, context_count, impression, engaged, one per\n"
            "action, and iqp_impression, iqp_engaged, iqp_<action> (count / context_count).\n"
            "\n"
            "options:\n"
            "  --store DIR      the store written by iqp backfill / iqp stream (read-only)\n"
            "  --redis URL      read what iqp stream published instead (redis://host:port/db,\n"
            "                   unix:///path, or redis-cluster://host:port[,host:port...]\n"
            "                   for a Redis Cluster), through libiqp; windows are as of the\n"
            "                   publisher's last write, so --as-of does not apply\n"
            "  --redis-url-file FILE  the Redis URL on the first line of FILE (keeps a\n"
            "                   password off the command line); without --store, --redis\n"
            "                   and this, the URL in $IQP_REDIS_URL is used when set\n"
            "  --redis-prefix P the publisher's key prefix (default iqp)\n"
            "  --query Q        the raw query; normalized like events\n"
            "  --country CC     ISO 3166-1 alpha-2; anything else reads as ZZ\n"
            "  --gender G       female, male or unknown (f, m, ... accepted)\n"
            "  --segment NAME=VALUE  the value of the layout's segment NAME (repeatable;\n"
            "                   --country CC is --segment country=CC), normalized as events\n"
            "  --as-of MS       read windows as of this time, ms since the epoch (default: now)\n"
            "  --feature NAME   only this feature (repeatable; default: all)\n"
            "  --config FILE    check the store against this config\n"
            "  --help           this text\n"
            "\n"
            "Features whose context needs a query or segment that was not given are\n"
            "skipped. An unknown item prints zeros with the real context_count.\n");
}

#define MAX_SEGMENT_ARGS 16

typedef struct lookup_opts {
    const char *store_dir, *config_path, *query, *redis_url, *prefix, *redis_url_file;
    /* segment values by name, in the order given (--country, --gender, --segment) */
    size_t n_segments;
    const char *seg_names[MAX_SEGMENT_ARGS], *seg_values[MAX_SEGMENT_ARGS];
    char seg_name_buf[MAX_SEGMENT_ARGS][IQP_NAME_MAX];
    char redis_url_buf[1024];
    int64_t as_of;
    int as_of_given;
    int n_features;
    const char *features[IQP_MAX_FEATURES];
} lookup_opts;

/* --country V, --gender V, --segment NAME=V: one name/value pair. */
static int add_segment_arg(lookup_opts *o, int opt, const char *arg) {
    const char *name = opt == 'c' ? "country" : opt == 'g' ? "gender" : NULL, *value = arg;
    if (o->n_segments == MAX_SEGMENT_ARGS) return iqp_cli_usage_error(CMD, "too many segment values");
    if (!name) {
        const char *eq = strchr(arg, '=');
        size_t n = eq ? (size_t)(eq - arg) : 0;
        if (!eq || !iqp_config_valid_name(arg, n))
            return iqp_cli_usage_error(CMD, "--segment takes NAME=VALUE (a segment name, '=', its value), "
                                       "not '%s'", arg);
        memcpy(o->seg_name_buf[o->n_segments], arg, n);
        o->seg_name_buf[o->n_segments][n] = '\0';
        name = o->seg_name_buf[o->n_segments];
        value = eq + 1;
    }
    o->seg_names[o->n_segments] = name;
    o->seg_values[o->n_segments++] = value;
    return 0;
}

static int parse_opts(int argc, char **argv, lookup_opts *o) {
    static const struct option longopts[] = {
        {"store", required_argument, 0, 's'},   {"query", required_argument, 0, 'q'},
        {"country", required_argument, 0, 'c'}, {"gender", required_argument, 0, 'g'},
        {"as-of", required_argument, 0, 'a'},   {"feature", required_argument, 0, 'f'},
        {"config", required_argument, 0, 'C'},  {"help", no_argument, 0, 'h'},
        {"redis", required_argument, 0, 'r'},   {"redis-prefix", required_argument, 0, 'p'},
        {"redis-url-file", required_argument, 0, 'F'}, {"segment", required_argument, 0, 'S'},
        {0, 0, 0, 0}};
    int c;
    memset(o, 0, sizeof *o);
    o->as_of = iqp_now_ms();
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 's': o->store_dir = optarg; break;
        case 'q': o->query = optarg; break;
        case 'c':
        case 'g':
        case 'S':
            if (add_segment_arg(o, c, optarg)) return 2;
            break;
        case 'C': o->config_path = optarg; break;
        case 'r': o->redis_url = optarg; break;
        case 'F': o->redis_url_file = optarg; break;
        case 'p': o->prefix = optarg; break;
        case 'a':
            if (iqp_cli_parse_i64(optarg, &o->as_of) < 0 || o->as_of < 0)
                return iqp_cli_usage_error(CMD, "--as-of must be ms since the epoch, not '%s'", optarg);
            o->as_of_given = 1;
            break;
        case 'f':
            if (o->n_features == IQP_MAX_FEATURES) return iqp_cli_usage_error(CMD, "too many --feature");
            o->features[o->n_features++] = optarg;
            break;
        case 'h': usage(stdout); return -1;
        default: return iqp_cli_usage_error(CMD, "unknown option");
        }
    }
    char err[512];
    if (o->store_dir && (o->redis_url || o->redis_url_file))
        return iqp_cli_usage_error(CMD, "give exactly one of --store DIR and --redis URL");
    if (iqp_redis_url_resolve(&o->redis_url, o->redis_url_file, !o->store_dir, o->redis_url_buf,
                              sizeof o->redis_url_buf, err, sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    if (!o->store_dir && !o->redis_url)
        return iqp_cli_usage_error(CMD, "give exactly one of --store DIR and --redis URL (or set $%s)",
                                   IQP_REDIS_URL_ENV);
    if (o->redis_url && (o->as_of_given || o->config_path))
        return iqp_cli_usage_error(CMD, "--as-of and --config apply to --store only");
    if (optind >= argc) return iqp_cli_usage_error(CMD, "no items given");
    for (int i = optind; i < argc; i++) {
        json_t *probe = json_string(argv[i]);
        if (!probe) return iqp_cli_usage_error(CMD, "item '%s' is not valid UTF-8", argv[i]);
        json_decref(probe);
    }
    return 0;
}

/* Builds the normalized context by cfg's segments; 2 on a usage error. */
static int build_context(const iqp_config *cfg, const lookup_opts *o, iqp_context_buf *cb) {
    char err[512];
    if (iqp_context_build(cfg, o->query, o->seg_names, o->seg_values, o->n_segments, cb, err,
                          sizeof err) < 0)
        return strncmp(err, "the query ", 10) == 0 ? iqp_cli_usage_error(CMD, "--%s", err + 4)
                                                   : iqp_cli_usage_error(CMD, "%s", err);
    for (size_t i = 0; i < o->n_segments; i++) {
        int s = iqp_config_segment_index(cfg, o->seg_names[i]);
        if (cfg->segments[s].normalizer == IQP_NORM_COUNTRY && strcmp(cb->ctx.v[s].s, "ZZ") == 0 &&
            strcasecmp(o->seg_values[i], "ZZ") != 0)
            fprintf(stderr, "iqp lookup: note: '%s' is not an ISO 3166-1 alpha-2 code; reading %s ZZ\n",
                    o->seg_values[i], cfg->segments[s].name);
    }
    return 0;
}

static json_t *context_json(const iqp_config *cfg, const iqp_feature_spec *f, const iqp_context *ctx) {
    json_t *c = json_object();
    for (size_t s = 0; s < cfg->n_segments; s++)
        if (f->dims & (1u << s))
            json_object_set_new(c, cfg->segments[s].name, json_stringn(ctx->v[s].s, ctx->v[s].len));
    return c;
}

/* One output line. */
static void print_row(const iqp_config *cfg, size_t f, size_t w, const iqp_context *ctx,
                      const char *item, const iqp_feature_row *r) {
    json_t *o = json_object();
    int64_t cc = r->context_count;
    json_object_set_new(o, "feature", json_string(cfg->features[f].name));
    json_object_set_new(o, "window", json_string(cfg->windows[w].name));
    json_object_set_new(o, "context", context_json(cfg, &cfg->features[f], ctx));
    json_object_set_new(o, "item", json_string(item));
    json_object_set_new(o, "context_count", json_integer(cc));
    json_object_set_new(o, "impression", json_integer(r->counters[IQP_COUNTER_IMPRESSION]));
    json_object_set_new(o, "engaged", json_integer(r->counters[IQP_COUNTER_ENGAGED]));
    for (size_t a = 0; a < cfg->n_actions; a++)
        json_object_set_new(o, cfg->actions[a], json_integer(r->counters[IQP_COUNTER_ACTION0 + a]));
    json_object_set_new(o, "iqp_impression", json_real(iqp_features_rate(r->counters[IQP_COUNTER_IMPRESSION], cc)));
    json_object_set_new(o, "iqp_engaged", json_real(iqp_features_rate(r->counters[IQP_COUNTER_ENGAGED], cc)));
    for (size_t a = 0; a < cfg->n_actions; a++) {
        char key[IQP_NAME_MAX + 8];
        snprintf(key, sizeof key, "iqp_%s", cfg->actions[a]);
        json_object_set_new(o, key, json_real(iqp_features_rate(r->counters[IQP_COUNTER_ACTION0 + a], cc)));
    }
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    puts(line);
    free(line);
    json_decref(o);
}

/* Which features to print: the --feature list (validated) or all. */
static int select_features(const iqp_config *cfg, const lookup_opts *o, int *selected) {
    for (size_t f = 0; f < cfg->n_features; f++) selected[f] = o->n_features == 0;
    for (int i = 0; i < o->n_features; i++) {
        int f = iqp_config_feature_index(cfg, o->features[i]);
        if (f < 0) {
            char known[IQP_MAX_FEATURES * (IQP_NAME_MAX + 2)] = "";
            for (size_t k = 0; k < cfg->n_features; k++) {
                strcat(known, k ? ", " : "");
                strcat(known, cfg->features[k].name);
            }
            return iqp_cli_usage_error(CMD, "unknown feature '%s' (this store has: %s)", o->features[i], known);
        }
        selected[f] = 1;
    }
    return 0;
}

/* Where rows come from: fills rows[i * n_windows + w] for feature f;
 * 0, or an exit status after printing the error. */
typedef struct row_source {
    int (*read)(struct row_source *src, size_t f, const iqp_context *ctx, char **items,
                const size_t *lens, size_t n_items, iqp_feature_row *rows);
    iqp_store *st;
    int64_t as_of;
    const double *values; /* --redis: the client's whole answer */
    size_t n_features, n_windows, n_measures;
} row_source;

static int read_store_rows(row_source *src, size_t f, const iqp_context *ctx, char **items,
                           const size_t *lens, size_t n_items, iqp_feature_row *rows) {
    char err[512];
    if (iqp_features_read(src->st, f, ctx, (const char *const *)items, lens, n_items, src->as_of, rows,
                          err, sizeof err) < 0)
        return iqp_cli_fail(CMD, "%s", err);
    return 0;
}

/* Counts back from the client's doubles (exact below 2^53). */
static int read_client_rows(row_source *src, size_t f, const iqp_context *ctx, char **items,
                            const size_t *lens, size_t n_items, iqp_feature_row *rows) {
    (void)ctx, (void)items, (void)lens;
    size_t nw = src->n_windows, nm = src->n_measures, width = (nm - 1) / 2;
    for (size_t i = 0; i < n_items; i++)
        for (size_t w = 0; w < nw; w++) {
            const double *v = src->values + ((i * src->n_features + f) * nw + w) * nm;
            iqp_feature_row *r = &rows[i * nw + w];
            memset(r, 0, sizeof *r);
            r->context_count = (int64_t)v[0];
            for (size_t k = 0; k < width; k++) r->counters[k] = (int64_t)v[1 + k];
        }
    return 0;
}

static int print_features(const iqp_config *cfg, row_source *src, const lookup_opts *o,
                          const iqp_context *ctx, char **items, size_t n_items) {
    int selected[IQP_MAX_FEATURES];
    int rc = select_features(cfg, o, selected);
    if (rc) return rc;
    size_t *lens = malloc(n_items * sizeof *lens);
    iqp_feature_row *rows = malloc(n_items * cfg->n_windows * sizeof *rows);
    if (!lens || !rows) abort();
    for (size_t i = 0; i < n_items; i++) lens[i] = strlen(items[i]);
    for (size_t f = 0; f < cfg->n_features && rc == 0; f++) {
        if (!selected[f] || !iqp_features_applicable(&cfg->features[f], iqp_context_mask(cfg, ctx)))
            continue;
        if ((rc = src->read(src, f, ctx, items, lens, n_items, rows))) break;
        for (size_t w = 0; w < cfg->n_windows; w++)
            for (size_t i = 0; i < n_items; i++)
                print_row(cfg, f, w, ctx, items[i], &rows[i * cfg->n_windows + w]);
    }
    free(lens);
    free(rows);
    return rc;
}

/* --redis: one libiqp call for every feature, then the shared printer. */
static int lookup_redis(const lookup_opts *o, char **items, size_t n_items) {
    iqp_context_buf cb;
    iqp_ctx *ctx = iqp_ctx_new();
    if (!ctx) return iqp_cli_fail(CMD, "out of memory");
    iqp_client_options co;
    iqp_client_options_init(&co);
    co.timeout_ms = 5000;
    if (o->prefix) co.prefix = o->prefix;
    iqp_client *c = iqp_client_open(o->redis_url, &co);
    if (!c) return iqp_cli_fail(CMD, "out of memory");
    int rc = 0;
    double *values = NULL;
    if (iqp_client_status(c) != IQP_OK) {
        rc = iqp_client_status(c) == IQP_EINVAL ? iqp_cli_usage_error(CMD, "%s", iqp_client_errstr(c))
                                                : iqp_cli_fail(CMD, "%s", iqp_client_errstr(c));
        goto out;
    }
    if ((rc = build_context(iqp_client_config(c), o, &cb))) goto out;
    for (size_t i = 0; i < o->n_segments; i++)
        if (iqp_ctx_set(ctx, o->seg_names[i], o->seg_values[i]) != IQP_OK) abort();
    size_t len = iqp_client_result_len(c, n_items);
    values = malloc((len ? len : 1) * sizeof *values);
    if (!values) abort();
    if (iqp_client_lookup_ctx(c, o->query, ctx, (const char *const *)items, n_items, values, len) != IQP_OK) {
        rc = iqp_cli_fail(CMD, "%s", iqp_client_errstr(c));
    } else {
        row_source src = {.read = read_client_rows, .values = values, .n_features = iqp_client_n_features(c),
                          .n_windows = iqp_client_n_windows(c), .n_measures = iqp_client_n_measures(c)};
        rc = print_features(iqp_client_config(c), &src, o, &cb.ctx, items, n_items);
    }
    iqp_context_buf_free(&cb);
out:
    free(values);
    iqp_ctx_free(ctx);
    iqp_client_close(c);
    return rc;
}

int iqp_cmd_lookup(int argc, char **argv) {
    lookup_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    if (o.redis_url) return lookup_redis(&o, argv + optind, (size_t)(argc - optind));
    char err[1024];
    iqp_config cfg, *cfgp = NULL;
    if (o.config_path) {
        iqp_config_defaults(&cfg);
        if (iqp_config_load(&cfg, o.config_path, err, sizeof err) < 0) return iqp_cli_usage_error(CMD, "%s", err);
        cfgp = &cfg;
    }
    iqp_store *st = iqp_store_open(o.store_dir, cfgp, IQP_STORE_READ_ONLY, err, sizeof err);
    if (!st) return iqp_cli_fail(CMD, "%s", err);
    iqp_context_buf cb;
    if ((rc = build_context(iqp_store_config(st), &o, &cb)) == 0) {
        row_source src = {.read = read_store_rows, .st = st, .as_of = o.as_of};
        rc = print_features(iqp_store_config(st), &src, &o, &cb.ctx, argv + optind, (size_t)(argc - optind));
        iqp_context_buf_free(&cb);
    }
    iqp_store_close(st);
    return rc;
}

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
#include <stddef.h>
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
#include "cli/flags.h"
#include "client/client_internal.h"
#include "client/redis_conn.h"
#include "store/store.h"

static const char *CMD = "lookup";

#define MAX_SEGMENT_ARGS 16

typedef struct lookup_opts {
    const char *store_dir, *config_path, *query, *redis_url, *prefix, *redis_url_file;
    const char *flag_value;       /* where --country/--gender/--segment land; read through seg_* */
    /* segment values by name, in the order given (--country, --gender, --segment) */
    size_t n_segments;
    const char *seg_names[MAX_SEGMENT_ARGS], *seg_values[MAX_SEGMENT_ARGS];
    char seg_name_buf[MAX_SEGMENT_ARGS][IQP_NAME_MAX];
    char redis_url_buf[1024];
    int64_t as_of;                /* -1 until --as-of gives it; then now */
    iqp_flag_list features, items;
} lookup_opts;

/* One name/value pair of a segment, in the order given. */
static int add_segment(lookup_opts *o, const char *name, const char *value, char *why, size_t whylen) {
    if (o->n_segments == MAX_SEGMENT_ARGS) {
        snprintf(why, whylen, "more than %d segment values", MAX_SEGMENT_ARGS);
        return -1;
    }
    o->seg_names[o->n_segments] = name;
    o->seg_values[o->n_segments++] = value;
    return 0;
}

static int check_country(void *opts, const char *value, char *why, size_t whylen) {
    return add_segment(opts, "country", value, why, whylen);
}

static int check_gender(void *opts, const char *value, char *why, size_t whylen) {
    return add_segment(opts, "gender", value, why, whylen);
}

/* --segment NAME=VALUE. */
static int check_segment(void *opts, const char *arg, char *why, size_t whylen) {
    lookup_opts *o = opts;
    const char *eq = strchr(arg, '=');
    size_t n = eq ? (size_t)(eq - arg) : 0;
    if (!eq || !iqp_config_valid_name(arg, n)) {
        snprintf(why, whylen, "--segment takes NAME=VALUE (a segment name, '=', its value), not '%s'", arg);
        return -1;
    }
    if (o->n_segments == MAX_SEGMENT_ARGS) return add_segment(o, arg, eq + 1, why, whylen); /* refused */
    char *name = o->seg_name_buf[o->n_segments]; /* a valid name is below IQP_NAME_MAX bytes */
    memcpy(name, arg, n);
    name[n] = '\0';
    return add_segment(o, name, eq + 1, why, whylen);
}

static const iqp_flag FLAGS[] = {
    {"store", IQP_FLAG_STRING, offsetof(lookup_opts, store_dir), .arg = "DIR",
     .help = "the store written by iqp backfill / iqp stream (read-only)"},
    {"redis", IQP_FLAG_STRING, offsetof(lookup_opts, redis_url), .arg = "URL",
     .help = "read what iqp stream published instead (redis://host:port/db, unix:///path, or "
             "redis-cluster://host:port[,host:port...] for a Redis Cluster), through libiqp; windows are as "
             "of the publisher's last write, so --as-of does not apply"},
    {"redis-url-file", IQP_FLAG_STRING, offsetof(lookup_opts, redis_url_file), .arg = "FILE",
     .help = "the Redis URL on the first line of FILE (keeps a password off the command line); without "
             "--store, --redis and this, the URL in $IQP_REDIS_URL is used when set"},
    {"redis-prefix", IQP_FLAG_STRING, offsetof(lookup_opts, prefix), .arg = "P",
     .help = "the publisher's key prefix (default iqp)"},
    {"query", IQP_FLAG_STRING, offsetof(lookup_opts, query), .arg = "Q",
     .help = "the raw query; normalized like events"},
    {"country", IQP_FLAG_STRING, offsetof(lookup_opts, flag_value), .arg = "CC", .check = check_country,
     .help = "ISO 3166-1 alpha-2; anything else reads as ZZ"},
    {"gender", IQP_FLAG_STRING, offsetof(lookup_opts, flag_value), .arg = "G", .check = check_gender,
     .help = "female, male or unknown (f, m, ... accepted)"},
    {"segment", IQP_FLAG_STRING, offsetof(lookup_opts, flag_value), .arg = "NAME=VALUE",
     .check = check_segment,
     .help = "the value of the layout's segment NAME (repeatable; --country CC is --segment country=CC), "
             "normalized as events"},
    {"as-of", IQP_FLAG_INT, offsetof(lookup_opts, as_of), .arg = "MS", .must = "ms since the epoch",
     .help = "read windows as of this time, ms since the epoch (default: now)"},
    {"feature", IQP_FLAG_REPEATED, offsetof(lookup_opts, features), .arg = "NAME", .max = IQP_MAX_FEATURES,
     .help = "only this feature (repeatable; default: all)"},
    {"config", IQP_FLAG_STRING, offsetof(lookup_opts, config_path), .arg = "FILE",
     .help = "check the store against this config"},
    {0}};

static const iqp_flag_cmd LOOKUP = {
    .name = "lookup",
    .usage = "iqp lookup (--store DIR | --redis URL | --redis-url-file FILE)\n"
             "                  [--query Q] [--country CC] [--gender G]\n"
             "                  [--segment NAME=VALUE]... [--as-of MS] [--feature NAME]... ITEM...",
    .about = "Prints one JSON object per line per (feature, window, item) with the keys\n"
             "feature, window, context, item, context_count, impression, engaged, one per\n"
             "action, and iqp_impression, iqp_engaged, iqp_<action> (count / context_count).",
    .epilog = "Features whose context needs a query or segment that was not given are\n"
              "skipped. An unknown item prints zeros with the real context_count.",
    .args = "ITEM...",
    .args_offset = offsetof(lookup_opts, items),
    .flags = FLAGS,
};

static int parse_opts(int argc, char **argv, lookup_opts *o) {
    memset(o, 0, sizeof *o);
    o->as_of = -1;
    int rc = iqp_flags_parse(&LOOKUP, o, argc, argv);
    if (rc) return rc;
    int as_of_given = o->as_of >= 0;
    if (!as_of_given) o->as_of = iqp_now_ms();
    char err[512];
    if (o->store_dir && (o->redis_url || o->redis_url_file))
        return iqp_cli_usage_error(CMD, "give exactly one of --store DIR and --redis URL");
    if (iqp_redis_url_resolve(&o->redis_url, o->redis_url_file, !o->store_dir, o->redis_url_buf,
                              sizeof o->redis_url_buf, err, sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    if (!o->store_dir && !o->redis_url)
        return iqp_cli_usage_error(CMD, "give exactly one of --store DIR and --redis URL (or set $%s)",
                                   IQP_REDIS_URL_ENV);
    if (o->redis_url && (as_of_given || o->config_path))
        return iqp_cli_usage_error(CMD, "--as-of and --config apply to --store only");
    if (o->items.n == 0) return iqp_cli_usage_error(CMD, "no items given");
    for (size_t i = 0; i < o->items.n; i++) {
        json_t *probe = json_string(o->items.v[i]);
        if (!probe) return iqp_cli_usage_error(CMD, "item '%s' is not valid UTF-8", o->items.v[i]);
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
    for (size_t f = 0; f < cfg->n_features; f++) selected[f] = o->features.n == 0;
    for (size_t i = 0; i < o->features.n; i++) {
        int f = iqp_config_feature_index(cfg, o->features.v[i]);
        if (f < 0) {
            char known[IQP_MAX_FEATURES * (IQP_NAME_MAX + 2)] = "";
            for (size_t k = 0; k < cfg->n_features; k++) {
                strcat(known, k ? ", " : "");
                strcat(known, cfg->features[k].name);
            }
            return iqp_cli_usage_error(CMD, "unknown feature '%s' (this store has: %s)", o->features.v[i], known);
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
    char **items = (char **)o.items.v;
    if (o.redis_url) return lookup_redis(&o, items, o.items.n);
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
        rc = print_features(iqp_store_config(st), &src, &o, &cb.ctx, items, o.items.n);
        iqp_context_buf_free(&cb);
    }
    iqp_store_close(st);
    return rc;
}

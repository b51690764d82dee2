/* publish.c -- `iqp publish`: bring Redis up to date with a store, once.
 *
 * `iqp stream --redis` publishes as it counts. This command is for the
 * other ways a store comes to be: after `iqp backfill` (which queues
 * nothing) `--all` republishes every (feature, context, item) of the
 * store; without `--all` it drains what a stopped stream process left in
 * its publish queue (the keys it could not publish before it stopped) and
 * exits. It is the publisher of the stream (publisher/publisher.c) run in
 * this thread: same layout, same generation, same checks, so a Redis that
 * holds another layout is refused, not overwritten.
 *
 * It opens the store for writing (it deletes the queue records it
 * published), so it cannot run beside an `iqp stream` on the same store.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "cli/cli.h"
#include "cli/flags.h"
#include "client/redis_cluster.h"
#include "client/redis_conn.h"
#include "publisher/pending.h"
#include "publisher/publisher.h"
#include "store/store.h"
#include "util/clock.h"

static const char *CMD = "publish";

typedef struct publish_opts {
    const char *store_dir, *url_file;
    char url_buf[1024];
    int all, quiet;
    iqp_publisher_config redis;
} publish_opts;

static const iqp_flag FLAGS[] = {
    {"store", IQP_FLAG_STRING, offsetof(publish_opts, store_dir), .arg = "DIR", .help = "the store"},
    {"redis", IQP_FLAG_STRING, offsetof(publish_opts, redis.url), .arg = "URL",
     .help = "redis://[[user]:password@]host[:port][/db] or unix:///path/to/socket[?db=N] or, for a Redis "
             "Cluster, redis-cluster://host:port[,host:port...]"},
    {"redis-url-file", IQP_FLAG_STRING, offsetof(publish_opts, url_file), .arg = "FILE",
     .help = "the URL on the first line of FILE (keeps a password off the command line); without either "
             "flag the URL in $IQP_REDIS_URL is used"},
    {"all", IQP_FLAG_BOOL, offsetof(publish_opts, all), .help = "republish every key, not only the queue"},
    {"redis-prefix", IQP_FLAG_STRING, offsetof(publish_opts, redis.prefix), .arg = "P",
     .help = "key prefix (default iqp)"},
    {"redis-ttl", IQP_FLAG_DURATION, offsetof(publish_opts, redis.ttl_ms), .min = 1000, .max = INT64_MAX,
     .must = "a duration of at least 1s (e.g. 8d)", .help = "TTL of every written key (default 8d)"},
    {"quiet", IQP_FLAG_BOOL, offsetof(publish_opts, quiet), .help = "no summary line"},
    {0}};

static const iqp_flag_cmd PUBLISH = {
    .name = "publish",
    .usage = "iqp publish --store DIR (--redis URL | --redis-url-file FILE) [--all]\n"
             "                   [--redis-prefix P]\n"
             "                   [--redis-ttl DURATION] [--quiet]",
    .about = "Writes the store's features to Redis in the published layout\n"
             "(schemas/redis-layout.md), as of the store's watermark, and exits.\n"
             "Without --all: publishes what the store's publish queue holds (keys a\n"
             "stopped `iqp stream --redis` had not published yet). With --all: every\n"
             "key of the store (after `iqp backfill`, or to repair a Redis).\n"
             "The store must not be open in a running `iqp stream`.",
    .epilog = "Exit status: 0 published, 1 Redis or the store failed (the message says\n"
              "which; nothing queued is lost), 2 bad usage.",
    .flags = FLAGS,
};

/* Parses argv into o; -1 after --help, 2 on a usage error, else 0. */
static int parse_args(int argc, char **argv, publish_opts *o) {
    int rc = iqp_flags_parse(&PUBLISH, o, argc, argv);
    if (rc) return rc;
    if (!o->store_dir) return iqp_cli_usage_error(CMD, "--store DIR is required");
    char err[512];
    if (iqp_redis_url_resolve(&o->redis.url, o->url_file, 1, o->url_buf, sizeof o->url_buf, err, sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    if (!o->redis.url)
        return iqp_cli_usage_error(CMD, "--redis URL is required (or --redis-url-file FILE, or $%s)",
                                   IQP_REDIS_URL_ENV);
    iqp_redis_url u;
    if (iqp_redis_url_parse(o->redis.url, &u, err, sizeof err) < 0) return iqp_cli_usage_error(CMD, "%s", err);
    char tagged[128]; /* a cluster prefix may hold no brace */
    if (iqp_redis_key_prefix(&u, o->redis.prefix, tagged, sizeof tagged, err, sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    return 0;
}

/* Opens the store for writing with the layout it records (read first). */
static iqp_store *open_store_writable(const char *dir, char *err, size_t errlen) {
    iqp_store *st = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, errlen);
    if (!st) return NULL;
    iqp_config cfg = *iqp_store_config(st);
    iqp_store_close(st);
    return iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, errlen);
}

int iqp_cmd_publish(int argc, char **argv) {
    publish_opts o = {0};
    iqp_publisher_config_defaults(&o.redis);
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    char err[1024];
    iqp_store *st = open_store_writable(o.store_dir, err, sizeof err);
    if (!st) return iqp_cli_fail(CMD, "%s", err);
    iqp_pending *q = iqp_pending_open(st, err, sizeof err);
    if (!q) {
        iqp_store_close(st);
        return iqp_cli_fail(CMD, "%s", err);
    }
    double t0 = iqp_mono_seconds();
    iqp_publisher_stats stats = {0};
    rc = iqp_publisher_run_once(st, q, &o.redis, o.all, &stats, err, sizeof err);
    uint64_t left = iqp_pending_count(q);
    iqp_pending_free(q);
    iqp_store_close(st);
    if (rc < 0) return iqp_cli_fail(CMD, "%s (%llu keys still queued in the store)", err, (unsigned long long)left);
    if (!o.quiet)
        fprintf(stderr, "iqp publish: %llu fields (%llu item fields + %llu context fields) in %llu hashes in "
                "%.2f s%s, %llu keys left in the queue\n",
                (unsigned long long)stats.values, (unsigned long long)stats.item_fields,
                (unsigned long long)stats.context_fields, (unsigned long long)stats.context_fields,
                iqp_mono_seconds() - t0, o.all ? " (all keys)" : "", (unsigned long long)left);
    return 0;
}

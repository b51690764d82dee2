/* stream.c -- `iqp stream`: count Kafka topics into a store, exactly once.
 *
 * Thin: reads the config file (its counting part through
 * model/config.c, its "stream", "kafka" and "metrics" sections here),
 * lets flags override it, opens the store, the dead-letter sink and the
 * metrics endpoint, and runs consumers/stream.c until SIGINT/SIGTERM.
 *
 * Config sections read here (all optional; flags win):
 *   "stream":  {"store": DIR, "impressions_topic": T, "actions_topic": T,
 *               "flush_ms": 500, "dead_letter_topic": T | "dead_letter_file": F,
 *               "checkpoint_topic": T, "on_offset_lost": "stop" | "skip",
 *               "state_dir": DIR, "checkpoint_dir": DIR, "checkpoint_interval": "60s",
 *               "repartition": false, "repartition_prefix": "iqp-repartition"}
 *   "kafka":   {"<librdkafka property>": value, ...}   passed through as is
 *   "metrics": {"listen": "127.0.0.1:9464"}            "off" disables
 *   "redis":   {"url": "redis://127.0.0.1:6379/0", "prefix": "iqp",
 *               "ttl": "8d", "connect_timeout_ms": 1000,
 *               "command_timeout_ms": 2000, "drain_ms": 3000,
 *               "batch_keys": 20000, "pipeline_depth": 256}
 *              no url (or "off"): no publishing
 *
 * Also here, for operators (issue 17): --dry-run (every connection and
 * check the run would need, nothing consumed, written or published);
 * systemd notifications (READY / WATCHDOG / STOPPING, util/sdnotify.h);
 * --log-format json (util/logfmt.h); and the reading of these sections
 * for `iqp config check|show` (iqp_stream_config_check / _effective), so
 * that a file `iqp config` accepts is one `iqp stream` accepts.
 */
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <hiredis/hiredis.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "cli/cli.h"
#include "cli/flags.h"
#include "consumers/deadletter.h"
#include "consumers/metrics.h"
#include "consumers/partition_checkpoint.h"
#include "consumers/repartition.h"
#include "consumers/stream.h"
#include "client/redis_cluster.h"
#include "client/redis_conn.h"
#include "publisher/pending.h"
#include "publisher/publisher.h"
#include "publisher/redis_pipe.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/fs.h"
#include "util/stop.h"
#include "util/logfmt.h"
#include "util/sdnotify.h"

static const char *CMD = "stream";

#define MAX_PROPS 64

/* The flags as given, before they are laid over the config file's values
 * (apply_flags). kafka: the Kafka properties the flags set, in their order
 * on the command line, as (name, value) pairs; a NULL name: a --property
 * NAME=VALUE, split when applied. */
typedef struct stream_flags {
    const char *config_path, *store_dir, *imp_topic, *act_topic, *dl_topic, *dl_file, *listen, *ckpt_topic;
    const char *state_dir, *checkpoint_dir, *repartition_prefix;
    const char *redis_url, *redis_url_file, *redis_prefix, *kafka_value;
    int64_t flush_ms, flush_events, redis_ttl_ms, checkpoint_ms;
    int redis_refresh, on_lost, log_format; /* indexes of on|off, stop|skip, text|json; -1: not given */
    int progress, dry_run, repartition;
    iqp_flag_list kafka;
} stream_flags;

/* ---- flags whose value goes into the ordered Kafka list ---- */

static int kafka_pair(stream_flags *f, const char *name, const char *value, char *why, size_t whylen) {
    if (iqp_flag_list_add(&f->kafka, name) < 0 || iqp_flag_list_add(&f->kafka, value) < 0)
        return snprintf(why, whylen, "too many Kafka properties"), -1;
    return 0;
}
static int on_brokers(void *opts, const char *v, char *why, size_t len) {
    return kafka_pair(opts, "bootstrap.servers", v, why, len);
}
static int on_group(void *opts, const char *v, char *why, size_t len) {
    return kafka_pair(opts, "group.id", v, why, len);
}
static int on_property(void *opts, const char *v, char *why, size_t len) {
    const char *eq = strchr(v, '=');
    if (!eq || eq == v) return snprintf(why, len, "--property wants NAME=VALUE, not '%s'", v), -1;
    return kafka_pair(opts, NULL, v, why, len);
}
#define FLAG_AT(field) offsetof(stream_flags, field)
static const iqp_flag FLAGS[] = {
    {"config", IQP_FLAG_STRING, FLAG_AT(config_path), .arg = "FILE",
     .help = "JSON config: counting layout and limits, plus \"stream\", \"kafka\" and \"metrics\" sections "
             "(README)"},
    {"store", IQP_FLAG_STRING, FLAG_AT(store_dir), .arg = "DIR", .help = "the RocksDB store (stream.store; this or --state-dir required)"},
    {"state-dir", IQP_FLAG_STRING, FLAG_AT(state_dir), .arg = "DIR",
     .help = "instead of --store: one store per input partition p at DIR/partition-<p>, resumed from its own "
             "offsets and moved with the partition when DIR is shared by the group or through --checkpoint-dir "
             "(stream.state_dir; README "
             "\"Running more than one instance\")"},
    {"checkpoint-dir", IQP_FLAG_STRING, FLAG_AT(checkpoint_dir), .arg = "DIR",
     .help = "with --state-dir local to each instance: a directory the group shares; each partition store is "
             "checkpointed there, and an instance that gains a partition it lacks restores it from there "
             "(stream.checkpoint_dir; README \"Partition-owned state\")"},
    {"checkpoint-interval", IQP_FLAG_DURATION, FLAG_AT(checkpoint_ms), .min = 1000, .max = 86400000,
     .must = "a duration from 1s to 1d (e.g. 60s)",
     .help = "how often each owned partition store is checkpointed into --checkpoint-dir (default 60s; "
             "bounds the replay after a kill -9; stream.checkpoint_interval)"},
    {"repartition", IQP_FLAG_BOOL, FLAG_AT(repartition),
     .help = "with --state-dir, for input not keyed by normalized query: forward every event to the partitions "
             "of the repartition topics that own its contexts, and count those, so that every context is whole "
             "in one partition store (stream.repartition; README \"Repartitioned input\")"},
    {"repartition-prefix", IQP_FLAG_STRING, FLAG_AT(repartition_prefix), .arg = "P",
     .help = "the repartition topics are P-impressions and P-actions, created beforehand with the same partition "
             "count (default iqp-repartition; implies --repartition; stream.repartition_prefix)"},
    {"brokers", IQP_FLAG_STRING, FLAG_AT(kafka_value), .arg = "LIST", .check = on_brokers,
     .help = "bootstrap servers (kafka.bootstrap.servers; required)"},
    {"group", IQP_FLAG_STRING, FLAG_AT(kafka_value), .arg = "ID", .check = on_group,
     .help = "consumer group (kafka.group.id; default iqp-stream)"},
    {"impressions-topic", IQP_FLAG_STRING, FLAG_AT(imp_topic), .arg = "T", .help = "default impressions"},
    {"actions-topic", IQP_FLAG_STRING, FLAG_AT(act_topic), .arg = "T", .help = "default actions"},
    {"flush-ms", IQP_FLAG_INT, FLAG_AT(flush_ms), .min = 1, .max = 3600000, .must = "an integer 1..3600000",
     .help = "store each event within about N ms (default 500): a batch is cut N ms less the last "
             "batch's write time after the previous cut (at least N/2), or when that write ends if later"},
    {"flush-events", IQP_FLAG_INT, FLAG_AT(flush_events), .min = 1, .max = 100000000,
     .must = "an integer 1..100000000", .help = "... or every N events (config flush_events)"},
    {"dead-letter-topic", IQP_FLAG_STRING, FLAG_AT(dl_topic), .arg = "T", .replaces = "dead-letter-file",
     .help = "rejected events go to Kafka topic T, original bytes with the reason in headers (default "
             "dead-letter)"},
    {"dead-letter-file", IQP_FLAG_STRING, FLAG_AT(dl_file), .arg = "F", .replaces = "dead-letter-topic",
     .help = "... or to a JSONL file instead"},
    {"metrics-listen", IQP_FLAG_STRING, FLAG_AT(listen), .arg = "ADDR",
     .help = "Prometheus /metrics and /healthz on HOST:PORT (default 127.0.0.1:9464; 'off' disables)"},
    {"checkpoint-topic", IQP_FLAG_STRING, FLAG_AT(ckpt_topic), .arg = "T",
     .help = "where each store publishes how far it counted, for the next owner of a partition (default "
             "iqp-checkpoints, compacted; 'off': group offsets only)"},
    {"property", IQP_FLAG_STRING, FLAG_AT(kafka_value), .arg = "NAME=VALUE", .check = on_property,
     .help = "any librdkafka property (repeatable)"},
    {"redis", IQP_FLAG_STRING, FLAG_AT(redis_url), .arg = "URL", .replaces = "redis-url-file",
     .help = "publish changed features to Redis (redis://[:password@]host:port/db, unix:///path or "
             "redis-cluster://host:port[,host:port...]; redis.url; default: no publishing); with --state-dir "
             "(and --repartition) each owned partition is published under its own lease (README \"Publishing per "
             "partition\")"},
    {"redis-url-file", IQP_FLAG_STRING, FLAG_AT(redis_url_file), .arg = "FILE", .replaces = "redis",
     .help = "... the URL on the first line of FILE instead, off the command line (redis.url_file)"},
    {"redis-prefix", IQP_FLAG_STRING, FLAG_AT(redis_prefix), .arg = "P",
     .help = "key prefix in Redis (redis.prefix; default iqp)"},
    {"redis-ttl", IQP_FLAG_DURATION, FLAG_AT(redis_ttl_ms), .min = 1000, .max = INT64_MAX,
     .must = "a duration of at least 1s (e.g. 8d)", .help = "TTL every write sets, e.g. 8d (redis.ttl; default 8d)"},
    {"redis-refresh", IQP_FLAG_CHOICE, FLAG_AT(redis_refresh), .choices = "on|off",
     .help = "when windows slide, republish everything as a new generation (redis.refresh; default on)"},
    {"on-offset-lost", IQP_FLAG_CHOICE, FLAG_AT(on_lost), .choices = "stop|skip",
     .help = "when a stored offset is no longer on the broker (evicted before it was counted): stop with exit "
             "1 (default) or skip to the earliest kept offset; both log the lost range and count it in "
             "iqp_kafka_offset_resets_total (stream.on_offset_lost)"},
    {"progress", IQP_FLAG_BOOL, FLAG_AT(progress), .help = "a progress line on stderr every 2 s"},
    {"log-format", IQP_FLAG_CHOICE, FLAG_AT(log_format), .choices = "text|json",
     .help = "stderr as text (default) or one JSON object per line: time, level, msg, and librdkafka's "
             "facility"},
    {"dry-run", IQP_FLAG_BOOL, FLAG_AT(dry_run),
     .help = "connect to Kafka, Redis and the store, check topics, partitions, permissions and the store's "
             "layout, print what would run, and exit (0: all good, 1: a problem)"},
    {0}};

static const iqp_flag_cmd STREAM = {
    .name = "stream",
    .usage = "iqp stream [--config FILE] [options]",
    .about = "Consumes the impressions and actions topics as one consumer-group member and\n"
             "counts them into the store, exactly once: every flush writes the counts and\n"
             "the consumed offsets in one RocksDB batch, then commits the offsets to Kafka.\n"
             "Runs until SIGINT/SIGTERM, then flushes, commits, leaves the group, exits 0.\n"
             "\n"
             "Each flag overrides the config file; Kafka properties set by flags (--brokers,\n"
             "--group, --property) apply in their order on the command line.",
    .epilog = "Under systemd (Type=notify) it reports READY=1 once running, STOPPING=1 at a\n"
              "stop request and WATCHDOG=1 from its main loop when WatchdogSec= is set.\n"
              "\n"
              "Exit status: 0 stopped by a signal after a clean flush, 1 operational failure\n"
              "(store, dead-letter sink or Kafka unusable; nothing more was committed), 2 bad\n"
              "usage or config.",
    .flags = FLAGS,
};

/* Everything the command line and config decide. Strings point into argv
 * or into the config JSON (kept alive in root). */
typedef struct stream_opts {
    const char *config_path, *store_dir, *imp_topic, *act_topic, *dl_topic, *dl_file, *listen;
    const char *ckpt_topic;
    const char *state_dir;                /* partition-owned state instead of store_dir */
    const char *checkpoint_dir;           /* with state_dir: shared checkpoints of the partition stores */
    int64_t checkpoint_ms;
    int repartition;                      /* with state_dir: count through the repartition topics */
    const char *repartition_prefix;       /* their names: <prefix>-impressions, <prefix>-actions */
    iqp_publisher_config redis;           /* redis.url NULL: no publishing */
    const char *redis_url_file;           /* redis.url_file, --redis-url-file */
    char redis_url_buf[1024];
    int64_t drain_ms;
    int64_t flush_ms, flush_events;
    int progress, dry_run, log_json;
    int skip_lost;                        /* --on-offset-lost skip */
    const char *props[2 * MAX_PROPS + 1]; /* config's kafka section, then flags */
    size_t n_props;
    char *owned[MAX_PROPS];               /* strings made here (numbers, NAME=VALUE splits) */
    size_t n_owned;
    json_t *root;
} stream_opts;

static char *keep(stream_opts *o, char *s) {
    if (!s) abort();
    if (o->n_owned < MAX_PROPS) o->owned[o->n_owned++] = s;
    return s;
}

static int add_prop(stream_opts *o, const char *name, const char *value) {
    if (o->n_props >= MAX_PROPS) return iqp_cli_usage_error(CMD, "more than %d kafka properties", MAX_PROPS);
    o->props[2 * o->n_props] = name;
    o->props[2 * o->n_props + 1] = value;
    o->n_props++;
    o->props[2 * o->n_props] = NULL;
    return 0;
}

static int add_prop_arg(stream_opts *o, const char *arg) {
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg) return iqp_cli_usage_error(CMD, "--property wants NAME=VALUE, not '%s'", arg);
    char *name = keep(o, strndup(arg, (size_t)(eq - arg)));
    return add_prop(o, name, eq + 1);
}

/* ---- config file sections ------------------------------------------------- */

static int config_string(json_t *obj, const char *key, const char **out) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    if (!json_is_string(v)) return iqp_cli_usage_error(CMD, "config: \"%s\" must be a string", key);
    *out = json_string_value(v);
    return 0;
}

static int parse_on_offset_lost(stream_opts *o, const char *v) {
    if (strcmp(v, "stop") != 0 && strcmp(v, "skip") != 0)
        return iqp_cli_usage_error(CMD, "--on-offset-lost / stream.on_offset_lost must be stop or skip, not '%s'", v);
    o->skip_lost = strcmp(v, "skip") == 0;
    return 0;
}

static int read_stream_section(stream_opts *o, json_t *sec) {
    static const char *const known[] = {"store", "state_dir", "impressions_topic", "actions_topic", "flush_ms",
                                        "dead_letter_topic", "dead_letter_file", "checkpoint_topic",
                                        "on_offset_lost", "checkpoint_dir", "checkpoint_interval", "repartition",
                                        "repartition_prefix", NULL};
    const char *key;
    json_t *v;
    if (!json_is_object(sec)) return iqp_cli_usage_error(CMD, "config: \"stream\" must be an object");
    json_object_foreach(sec, key, v) {
        const char *const *k = known;
        while (*k && strcmp(*k, key)) k++;
        if (!*k) return iqp_cli_usage_error(CMD, "config: unknown key \"stream.%s\"", key);
    }
    if (config_string(sec, "store", &o->store_dir) || config_string(sec, "state_dir", &o->state_dir) ||
        config_string(sec, "impressions_topic", &o->imp_topic) ||
        config_string(sec, "actions_topic", &o->act_topic) || config_string(sec, "dead_letter_topic", &o->dl_topic) ||
        config_string(sec, "dead_letter_file", &o->dl_file) ||
        config_string(sec, "checkpoint_topic", &o->ckpt_topic) ||
        config_string(sec, "checkpoint_dir", &o->checkpoint_dir))
        return 2;
    if (config_string(sec, "repartition_prefix", &o->repartition_prefix)) return 2;
    if ((v = json_object_get(sec, "repartition")) && !json_is_boolean(v))
        return iqp_cli_usage_error(CMD, "config: \"stream.repartition\" must be true or false");
    if (v) o->repartition = json_is_true(v);
    const char *interval = NULL;
    if (config_string(sec, "checkpoint_interval", &interval)) return 2;
    if (interval && (iqp_parse_duration(interval, &o->checkpoint_ms) < 0 || o->checkpoint_ms < 1000 ||
                     o->checkpoint_ms > 86400000))
        return iqp_cli_usage_error(CMD, "config: \"stream.checkpoint_interval\" must be a duration from 1s to 1d "
                                        "(e.g. \"60s\"), not '%s'", interval);
    const char *lost = NULL;
    if (config_string(sec, "on_offset_lost", &lost) || (lost && parse_on_offset_lost(o, lost))) return 2;
    if ((v = json_object_get(sec, "flush_ms"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 3600000)
            return iqp_cli_usage_error(CMD, "config: \"stream.flush_ms\" must be an integer 1..3600000");
        o->flush_ms = json_integer_value(v);
    }
    return 0;
}

static int read_kafka_section(stream_opts *o, json_t *sec) {
    const char *key;
    json_t *v;
    if (!json_is_object(sec)) return iqp_cli_usage_error(CMD, "config: \"kafka\" must be an object");
    json_object_foreach(sec, key, v) {
        const char *val;
        if (json_is_string(v)) val = json_string_value(v);
        else if (json_is_integer(v)) val = keep(o, json_dumps(v, JSON_ENCODE_ANY));
        else if (json_is_boolean(v)) val = json_is_true(v) ? "true" : "false";
        else return iqp_cli_usage_error(CMD, "config: \"kafka.%s\" must be a string, integer or boolean", key);
        if (add_prop(o, key, val)) return 2;
    }
    return 0;
}

/* A non-negative integer key of the redis section into *out. */
static int redis_int(json_t *sec, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    json_t *v = json_object_get(sec, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return iqp_cli_usage_error(CMD, "config: \"redis.%s\" must be an integer %lld..%lld", key,
                                   (long long)lo, (long long)hi);
    *out = json_integer_value(v);
    return 0;
}

static int parse_ttl(stream_opts *o, const char *text) {
    int64_t ms;
    if (iqp_parse_duration(text, &ms) < 0 || ms < 1000)
        return iqp_cli_usage_error(CMD, "redis TTL must be a duration of at least 1s (e.g. 8d), not '%s'", text);
    o->redis.ttl_ms = ms;
    return 0;
}

static int read_redis_section(stream_opts *o, json_t *sec) {
    static const char *known[] = {"url", "url_file", "prefix", "ttl", "refresh", "connect_timeout_ms", "command_timeout_ms",
                                  "drain_ms", "batch_keys", "pipeline_depth", NULL};
    const char *key;
    json_t *v;
    int64_t n;
    if (!json_is_object(sec)) return iqp_cli_usage_error(CMD, "config: \"redis\" must be an object");
    json_object_foreach(sec, key, v) {
        const char *const *k = known;
        while (*k && strcmp(*k, key) != 0) k++;
        if (!*k) return iqp_cli_usage_error(CMD, "config: unknown key \"redis.%s\"", key);
    }
    if (config_string(sec, "url", &o->redis.url) || config_string(sec, "url_file", &o->redis_url_file) ||
        config_string(sec, "prefix", &o->redis.prefix))
        return 2;
    if (o->redis.url && o->redis_url_file)
        return iqp_cli_usage_error(CMD, "config: give \"redis.url\" or \"redis.url_file\", not both");
    const char *ttl = NULL;
    if (config_string(sec, "ttl", &ttl) || (ttl && parse_ttl(o, ttl))) return 2;
    json_t *refresh = json_object_get(sec, "refresh");
    if (refresh && !json_is_boolean(refresh))
        return iqp_cli_usage_error(CMD, "config: \"redis.refresh\" must be true or false");
    if (refresh) o->redis.refresh_on_slide = json_is_true(refresh);
    if (redis_int(sec, "drain_ms", 0, 600000, &o->drain_ms)) return 2;
    n = o->redis.connect_timeout_ms;
    if (redis_int(sec, "connect_timeout_ms", 1, 600000, &n)) return 2;
    o->redis.connect_timeout_ms = (int)n;
    n = o->redis.command_timeout_ms;
    if (redis_int(sec, "command_timeout_ms", 1, 600000, &n)) return 2;
    o->redis.command_timeout_ms = (int)n;
    n = (int64_t)o->redis.batch_keys;
    if (redis_int(sec, "batch_keys", 1, 10000000, &n)) return 2;
    o->redis.batch_keys = (size_t)n;
    n = o->redis.pipeline_depth;
    if (redis_int(sec, "pipeline_depth", 64, 100000, &n)) return 2;
    o->redis.pipeline_depth = (int)n;
    return 0;
}

/* The stream's sections of a parsed config file (root stays the caller's). */
static int read_sections(stream_opts *o, json_t *root) {
    json_t *v;
    if ((v = json_object_get(root, "stream")) && read_stream_section(o, v)) return 2;
    if ((v = json_object_get(root, "kafka")) && read_kafka_section(o, v)) return 2;
    if ((v = json_object_get(root, "redis")) && read_redis_section(o, v)) return 2;
    if ((v = json_object_get(root, "metrics"))) {
        json_t *l = json_object_get(v, "listen");
        const char *key;
        json_t *x;
        if (!json_is_object(v) || (l && !json_is_string(l)))
            return iqp_cli_usage_error(CMD, "config: \"metrics\" must be {\"listen\": \"HOST:PORT\"}");
        json_object_foreach(v, key, x)
            if (strcmp(key, "listen") != 0) return iqp_cli_usage_error(CMD, "config: unknown key \"metrics.%s\"", key);
        if (l) o->listen = json_string_value(l);
    }
    return 0;
}

static int read_config_sections(stream_opts *o) {
    json_error_t jerr;
    if (!o->config_path) return 0;
    o->root = json_load_file(o->config_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!o->root)
        return iqp_cli_usage_error(CMD, "%s:%d:%d: %s: %s", o->config_path, jerr.line, jerr.column,
                                   json_error_code(&jerr) == json_error_duplicate_key ? "a key is given twice"
                                                                                      : "invalid JSON",
                                   jerr.text);
    if (!json_is_object(o->root)) return iqp_cli_usage_error(CMD, "%s: the config must be a JSON object", o->config_path);
    return read_sections(o, o->root);
}

/* ---- flags ------------------------------------------------------------------ */

/* The flags given, over what the config file set. */
static int apply_flags(stream_opts *o, const stream_flags *f) {
    int rc = 0;
    if (f->store_dir && f->state_dir) return iqp_cli_usage_error(CMD, "give --store or --state-dir, not both");
    if (f->store_dir) o->store_dir = f->store_dir, o->state_dir = NULL;
    if (f->state_dir) o->state_dir = f->state_dir, o->store_dir = NULL;
    for (size_t i = 0; i + 1 < f->kafka.n && rc == 0; i += 2)
        rc = f->kafka.v[i] ? add_prop(o, f->kafka.v[i], f->kafka.v[i + 1]) : add_prop_arg(o, f->kafka.v[i + 1]);
    if (rc) return rc;
    if (f->imp_topic) o->imp_topic = f->imp_topic;
    if (f->act_topic) o->act_topic = f->act_topic;
    if (f->flush_ms) o->flush_ms = f->flush_ms;
    if (f->flush_events) o->flush_events = f->flush_events;
    if (f->dl_topic) o->dl_topic = f->dl_topic, o->dl_file = NULL;
    if (f->dl_file) o->dl_file = f->dl_file, o->dl_topic = NULL;
    if (f->listen) o->listen = f->listen;
    if (f->ckpt_topic) o->ckpt_topic = f->ckpt_topic;
    if (f->checkpoint_dir) o->checkpoint_dir = f->checkpoint_dir;
    if (f->checkpoint_ms) o->checkpoint_ms = f->checkpoint_ms;
    if (f->redis_url) o->redis.url = f->redis_url, o->redis_url_file = NULL;
    if (f->redis_url_file) o->redis_url_file = f->redis_url_file, o->redis.url = NULL;
    if (f->redis_prefix) o->redis.prefix = f->redis_prefix;
    if (f->redis_ttl_ms) o->redis.ttl_ms = f->redis_ttl_ms;
    if (f->redis_refresh >= 0) o->redis.refresh_on_slide = f->redis_refresh == 0;
    if (f->on_lost >= 0) o->skip_lost = f->on_lost == 1;
    o->log_json = f->log_format == 1;
    o->progress = f->progress;
    o->dry_run = f->dry_run;
    if (f->repartition) o->repartition = 1;
    if (f->repartition_prefix) o->repartition_prefix = f->repartition_prefix, o->repartition = 1;
    return 0;
}

static int has_prop(const stream_opts *o, const char *name) {
    for (size_t i = 0; i < o->n_props; i++)
        if (strcmp(o->props[2 * i], name) == 0) return 1;
    return 0;
}

/* Every Kafka property must be one librdkafka accepts, and offsets stay
 * ours to commit: a config error (exit 2), found before anything opens. */
static int validate_props(const stream_opts *o) {
    char kerr[256];
    int rc = 0;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; i < o->n_props && rc == 0; i++) {
        const char *name = o->props[2 * i], *value = o->props[2 * i + 1];
        if ((!strcmp(name, "enable.auto.commit") || !strcmp(name, "enable.auto.offset.store")) &&
            strcmp(value, "false") != 0)
            rc = iqp_cli_usage_error(CMD, "kafka property %s must stay false: iqp stream commits "
                                          "offsets itself, with the counts", name);
        else if (!strcmp(name, "auto.offset.reset") && strcmp(value, "earliest") && strcmp(value, "smallest") &&
                 strcmp(value, "beginning") && strcmp(value, "latest") && strcmp(value, "largest") &&
                 strcmp(value, "end") && strcmp(value, "error"))
            rc = iqp_cli_usage_error(CMD, "kafka property auto.offset.reset=%s: want earliest, latest or error",
                                     value);
        else if (rd_kafka_conf_set(conf, name, value, kerr, sizeof kerr) != RD_KAFKA_CONF_OK)
            rc = iqp_cli_usage_error(CMD, "kafka property %s=%s: %s", name, value, kerr);
    }
    rd_kafka_conf_destroy(conf);
    return rc;
}

/* The metrics address must parse (a config error, exit 2, before anything
 * opens); one that is not loopback is served to other hosts too, which is
 * allowed but said. */
static int check_metrics_listen(const stream_opts *o) {
    char err[512];
    int loopback = 1;
    if (!o->listen || strcmp(o->listen, "off") == 0) return 0;
    if (iqp_metrics_check_listen(o->listen, &loopback, err, sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s (--metrics-listen / metrics.listen)", err);
    if (!loopback)
        fprintf(stderr, "iqp stream: warning: metrics listen on %s, which is not a loopback address: "
                        "/metrics and /healthz are reachable from other hosts\n", o->listen);
    return 0;
}

static int check_opts(stream_opts *o, int require_all);

/* --state-dir: what it cannot do, refused rather than half done. */
static int check_state_dir_opts(const stream_opts *o) {
    if (((o->redis.url && strcmp(o->redis.url, "off") != 0) || o->redis_url_file) && !o->repartition)
        return iqp_cli_usage_error(CMD, "--state-dir with --redis needs --repartition: each instance publishes "
                                        "the contexts of the partitions it owns, and only repartitioned input "
                                        "keeps every context (c_item, g_item too) whole in one partition");
    for (size_t i = 0; i < o->n_props; i++)
        if (!strcmp(o->props[2 * i], "partition.assignment.strategy") && strcmp(o->props[2 * i + 1], "range"))
            return iqp_cli_usage_error(CMD, "kafka property partition.assignment.strategy=%s: --state-dir needs "
                                            "\"range\", which keeps partition p of both topics together",
                                       o->props[2 * i + 1]);
    return 0;
}

/* The flags, then the config file they name, then the flags over it. */
static int parse_opts(int argc, char **argv, stream_opts *o) {
    stream_flags f;
    memset(&f, 0, sizeof f);
    f.redis_refresh = f.on_lost = f.log_format = -1;
    int rc = iqp_flags_parse(&STREAM, &f, argc, argv);
    if (rc) return rc;
    o->config_path = f.config_path;
    if ((rc = read_config_sections(o)) || (rc = apply_flags(o, &f))) return rc;
    return check_opts(o, 1);
}

/* What must hold once the config and the flags are read; require_all:
 * also a store and brokers (a config checked on its own may leave them to
 * flags). */
static int check_opts(stream_opts *o, int require_all) {
    if (require_all && !o->store_dir && !o->state_dir)
        return iqp_cli_usage_error(CMD, "no store: give --store DIR, --state-dir DIR, stream.store or stream.state_dir");
    if (o->store_dir && o->state_dir)
        return iqp_cli_usage_error(CMD, "config: give stream.store or stream.state_dir, not both");
    if (o->state_dir && check_state_dir_opts(o)) return 2;
    if ((o->repartition || o->repartition_prefix) && !o->state_dir)
        return iqp_cli_usage_error(CMD, "--repartition / stream.repartition needs --state-dir (partition store r "
                                        "counts the contexts of repartition partition r)");
    if (o->repartition_prefix && !*o->repartition_prefix)
        return iqp_cli_usage_error(CMD, "--repartition-prefix / stream.repartition_prefix must not be empty");
    if (o->checkpoint_dir && !o->state_dir)
        return iqp_cli_usage_error(CMD, "--checkpoint-dir / stream.checkpoint_dir needs --state-dir (it holds "
                                        "checkpoints of partition stores; a --store is backed up with iqp backup)");
    if (require_all && !has_prop(o, "bootstrap.servers"))
        return iqp_cli_usage_error(CMD, "no brokers: give --brokers LIST or kafka.bootstrap.servers");
    if (o->dl_file && o->dl_topic && o->config_path)
        return iqp_cli_usage_error(CMD, "config: give dead_letter_topic or dead_letter_file, not both");
    if (strcmp(o->imp_topic ? o->imp_topic : "impressions", o->act_topic ? o->act_topic : "actions") == 0)
        return iqp_cli_usage_error(CMD, "the impressions and actions topics must differ");
    if (o->redis.url && strcmp(o->redis.url, "off") == 0) o->redis.url = NULL;
    char err[512];
    if (iqp_redis_url_resolve(&o->redis.url, o->redis_url_file, 0, o->redis_url_buf, sizeof o->redis_url_buf, err,
                              sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    if (o->redis.url) {
        iqp_redis_url u;
        if (iqp_redis_url_parse(o->redis.url, &u, err, sizeof err) < 0) return iqp_cli_usage_error(CMD, "%s", err);
        char tagged[128]; /* a cluster prefix may hold no brace */
        if (iqp_redis_key_prefix(&u, o->redis.prefix, tagged, sizeof tagged, err, sizeof err) < 0)
            return iqp_cli_usage_error(CMD, "%s", err);
    }
    if (check_metrics_listen(o)) return 2;
    return validate_props(o);
}

/* ---- running ------------------------------------------------------------------ */

static void on_stop_signal(int sig) {
    (void)sig;
    iqp_stop_request();
}


/* The properties a producer of ours gets: all but the consumer-only ones. */
static void producer_props(const stream_opts *o, const char **props) {
    size_t n = 0;
    for (size_t i = 0; i < o->n_props; i++)
        if (!iqp_stream_kafka_consumer_only(o->props[2 * i])) {
            props[n++] = o->props[2 * i];
            props[n++] = o->props[2 * i + 1];
        }
    props[n] = NULL;
}

static iqp_deadletter *open_dead_letter(const stream_opts *o, char *err, size_t errlen) {
    const char *props[2 * MAX_PROPS + 1];
    if (o->dl_file) return iqp_deadletter_open_file(o->dl_file, err, errlen);
    producer_props(o, props);
    return iqp_deadletter_open_kafka(props, o->dl_topic ? o->dl_topic : "dead-letter", err, errlen);
}

static const char *group_id(const stream_opts *o) {
    const char *group = "iqp-stream";
    for (size_t i = 0; i < o->n_props; i++)
        if (strcmp(o->props[2 * i], "group.id") == 0) group = o->props[2 * i + 1];
    return group;
}

static int open_checkpoints(const stream_opts *o, iqp_checkpoints **out, char *err, size_t errlen) {
    const char *props[2 * MAX_PROPS + 1];
    const char *topic = o->ckpt_topic ? o->ckpt_topic : "iqp-checkpoints";
    *out = NULL;
    if (strcmp(topic, "off") == 0) return 0;
    producer_props(o, props);
    *out = iqp_checkpoints_new(props, topic, group_id(o), err, errlen);
    /* Read it once now: a missing topic is a start-up error, not a surprise
     * at the first rebalance. */
    if (*out && iqp_checkpoints_refresh(*out, 30000, err, errlen) < 0) return -1;
    return *out ? 0 : -1;
}

static void print_summary(iqp_stream *s) {
    iqp_stream_stats st = iqp_stream_get_stats(s);
    char resent[64] = "";
    if (st.resent) snprintf(resent, sizeof resent, ", %llu resent", (unsigned long long)st.resent);
    fprintf(stderr,
            "iqp stream: %llu messages: %llu counted, %llu duplicate, %llu late, %llu dead-lettered, "
            "%llu restored%s; %llu flushes, %llu rebalances, %llu commit failures; "
            "event-to-store latency p50 %.0f ms, p99 %.0f ms (%llu events)\n",
            (unsigned long long)st.messages, (unsigned long long)st.counted,
            (unsigned long long)st.duplicate, (unsigned long long)st.late,
            (unsigned long long)st.dead_lettered, (unsigned long long)st.restored, resent,
            (unsigned long long)st.flushes, (unsigned long long)st.rebalances,
            (unsigned long long)st.commit_failures, st.latency_p50_ms, st.latency_p99_ms,
            (unsigned long long)st.latency_n);
}

/* systemd (Type=notify): READY=1 once every part is open, WATCHDOG=1 from
 * the main loop when WatchdogSec= is set, STOPPING=1 at a stop request.
 * No-ops outside systemd or without libsystemd (util/sdnotify.h). */
typedef struct sd_state {
    int64_t watchdog_ms, last_ping_ms;
    int stopping_sent;
    iqp_repartitioner *rp;                /* --repartition: its failure stops the stream */
} sd_state;

static void on_tick(void *arg, int stopping) {
    sd_state *sd = arg;
    if (sd->rp && !stopping && iqp_repartition_failed(sd->rp, NULL, 0)) iqp_stop_request();
    if (stopping) {
        if (!sd->stopping_sent) iqp_sd_notify("STOPPING=1");
        sd->stopping_sent = 1;
        return;
    }
    iqp_sd_watchdog_tick(sd->watchdog_ms, iqp_mono_ms(), &sd->last_ping_ms);
}

typedef struct stream_parts {
    sd_state sd;
    iqp_store *st;
    iqp_deadletter *dl;
    iqp_metrics *m;
    iqp_metrics_server *srv;
    iqp_checkpoints *ckpt;
    iqp_stream *s;
    iqp_pending *queue;
    iqp_publisher *pub;
    /* --state-dir --redis: a publisher per owned partition (slice_pub) */
    const iqp_publisher_config *slice_pc;
    int64_t drain_ms;
    iqp_publisher_stats slice_stats;      /* summed over the partitions released */
    uint64_t slice_left;                  /* changed keys they left queued */
    /* --repartition: the first stage, and the second stage's topics and group */
    iqp_repartitioner *rp;
    char rp_topics[2][300], rp_group[300];
    const char *rp_props[2 * MAX_PROPS + 3];
} stream_parts;

/* The publish queue and the publisher thread, when Redis is configured. */
static int open_publisher(const stream_opts *o, stream_parts *p) {
    char err[1024];
    if (!o->redis.url) return 0;
    if (!(p->queue = iqp_pending_open(p->st, err, sizeof err))) return iqp_cli_fail(CMD, "%s", err);
    iqp_publisher_declare_metrics(p->m);
    if (!(p->pub = iqp_publisher_start(p->st, p->queue, &o->redis, p->m, err, sizeof err)))
        return iqp_cli_fail(CMD, "%s", err);
    iqp_pending_attach(p->queue, iqp_stream_aggregator(p->s), iqp_publisher_notify, p->pub);
    return 0;
}

/* With a state dir (and --repartition), each owned partition store r
 * gets its own queue and publisher in slice mode (publisher.h): it
 * publishes exactly the contexts of slice r under slice r's lease, from
 * the assignment until the partition is released (consumers/stream.h's
 * partition hooks). */
typedef struct slice_pub {
    iqp_pending *queue;
    iqp_publisher *pub;
} slice_pub;

static int open_slice_publisher(void *ud, int32_t partition, iqp_store *st, iqp_aggregator *agg, void **handle,
                                char *err, size_t errlen) {
    stream_parts *p = ud;
    iqp_publisher_config pc = *p->slice_pc;
    pc.slice = (int)partition;
    slice_pub *sp = calloc(1, sizeof *sp);
    if (!sp) abort();
    if (!(sp->queue = iqp_pending_open(st, err, errlen))) return free(sp), -1;
    if (!(sp->pub = iqp_publisher_start(st, sp->queue, &pc, p->m, err, errlen))) {
        iqp_pending_free(sp->queue);
        free(sp);
        return -1;
    }
    iqp_pending_attach(sp->queue, agg, iqp_publisher_notify, sp->pub);
    *handle = sp;
    return 0;
}

static void close_slice_publisher(void *ud, int32_t partition, void *handle) {
    stream_parts *p = ud;
    slice_pub *sp = handle;
    iqp_publisher_stats ps;
    iqp_publisher_stop(sp->pub, (int)p->drain_ms, &ps);
    uint64_t left = iqp_pending_count(sp->queue);
    fprintf(stderr, "iqp stream: partition %d: published %llu values in %llu rounds (%llu slides, %llu resyncs, "
                    "%llu Redis errors); %llu changed keys left queued in its store\n", (int)partition,
            (unsigned long long)ps.values, (unsigned long long)ps.rounds, (unsigned long long)ps.refreshes,
            (unsigned long long)ps.resyncs, (unsigned long long)ps.errors, (unsigned long long)left);
    p->slice_stats.values += ps.values, p->slice_stats.rounds += ps.rounds;
    p->slice_stats.refreshes += ps.refreshes, p->slice_stats.resyncs += ps.resyncs;
    p->slice_stats.errors += ps.errors, p->slice_left += left;
    iqp_pending_free(sp->queue);
    free(sp);
}

/* --repartition: starts the first stage on the input topics (the group
 * given), and points the stream (so) at the repartition topics, counting
 * them as the group "<group>-counting" (consumers/repartition.h). */
static int start_repartition(const stream_opts *o, const iqp_config *cfg, stream_parts *p, iqp_stream_options *so) {
    char err[1024];
    const char *prefix = o->repartition_prefix ? o->repartition_prefix : "iqp-repartition", *group = "iqp-stream";
    size_t n = 0;
    for (size_t i = 0; i < o->n_props; i++) {
        if (!strcmp(o->props[2 * i], "group.id")) group = o->props[2 * i + 1];
        p->rp_props[n++] = o->props[2 * i], p->rp_props[n++] = o->props[2 * i + 1];
    }
    snprintf(p->rp_topics[0], sizeof p->rp_topics[0], "%s-impressions", prefix);
    snprintf(p->rp_topics[1], sizeof p->rp_topics[1], "%s-actions", prefix);
    snprintf(p->rp_group, sizeof p->rp_group, "%s-counting", group);
    p->rp_props[n++] = "group.id", p->rp_props[n++] = p->rp_group, p->rp_props[n] = NULL;
    iqp_repartition_options ro = {{so->impressions_topic ? so->impressions_topic : "impressions",
                                   so->actions_topic ? so->actions_topic : "actions"},
                                  {p->rp_topics[0], p->rp_topics[1]}, o->props, cfg, 0, p->m};
    if (!(p->rp = iqp_repartition_start(&ro, err, sizeof err))) return iqp_cli_fail(CMD, "repartition: %s", err);
    p->sd.rp = p->rp;
    so->origin_topics[0] = ro.in_topics[0], so->origin_topics[1] = ro.in_topics[1];
    so->impressions_topic = p->rp_topics[0], so->actions_topic = p->rp_topics[1];
    so->kafka_props = p->rp_props;
    fprintf(stderr, "iqp stream: repartitioning %s, %s (group %s) through %s, %s (%d partitions; group %s)\n",
            ro.in_topics[0], ro.in_topics[1], group, p->rp_topics[0], p->rp_topics[1],
            (int)iqp_repartition_partitions(p->rp), p->rp_group);
    return 0;
}

/* The state dir (created when missing; the partition stores in it are
 * opened by the stream as partitions are assigned). */
static int make_state_dir(const char *dir) {
    struct stat sb;
    if (mkdir(dir, 0777) < 0 && errno != EEXIST)
        return iqp_cli_fail(CMD, "cannot create the state dir %s: %s", dir, strerror(errno));
    if (stat(dir, &sb) < 0 || !S_ISDIR(sb.st_mode))
        return iqp_cli_fail(CMD, "the state dir %s is not a directory", dir);
    if (access(dir, W_OK) != 0) return iqp_cli_fail(CMD, "the state dir %s is not writable by this user", dir);
    return 0;
}

static int open_parts(const stream_opts *o, iqp_config *cfg, stream_parts *p) {
    char err[1024];
    if (o->state_dir ? make_state_dir(o->state_dir) != 0
                     : !(p->st = iqp_store_open(o->store_dir, cfg, IQP_STORE_READ_WRITE, err, sizeof err)))
        return o->state_dir ? 1 : iqp_cli_fail(CMD, "%s", err);
    if (o->checkpoint_dir && iqp_pck_prepare_dir(o->checkpoint_dir, err, sizeof err) < 0)
        return iqp_cli_fail(CMD, "%s", err);
    if (!(p->dl = open_dead_letter(o, err, sizeof err))) return iqp_cli_fail(CMD, "dead-letter sink: %s", err);
    p->m = iqp_metrics_new();
    /* /healthz says 503 until the stream loop sees a broker up (the start
     * can wait up to 30 s on the checkpoint topic) */
    iqp_metrics_set_part(p->m, "kafka", 0, "starting: no broker connected yet", 0);
    const char *listen = o->listen ? o->listen : "127.0.0.1:9464";
    if (strcmp(listen, "off") != 0) {
        if (!(p->srv = iqp_metrics_serve(p->m, listen, err, sizeof err)))
            return iqp_cli_fail(CMD, "metrics: %s", err);
        fprintf(stderr, "iqp stream: metrics on port %d of %s (/metrics, /healthz)\n",
                iqp_metrics_server_port(p->srv), listen);
    }
    /* partition stores are their own truth: no checkpoint topic to read */
    if (!o->state_dir && open_checkpoints(o, &p->ckpt, err, sizeof err) < 0) return iqp_cli_fail(CMD, "%s", err);
    p->sd.watchdog_ms = iqp_sd_watchdog_ms();
    iqp_stream_options so = {o->imp_topic, o->act_topic, o->flush_ms, o->props, p->dl, p->m,
                             p->ckpt, o->progress, on_tick, &p->sd, o->redis.url != NULL, o->skip_lost,
                             o->state_dir, cfg, o->checkpoint_dir, o->checkpoint_ms, {NULL, NULL},
                             NULL, NULL, NULL};
    if (o->repartition && start_repartition(o, cfg, p, &so) != 0) return 1;
    if (o->state_dir && o->redis.url) {
        iqp_publisher_declare_metrics(p->m);
        p->slice_pc = &o->redis, p->drain_ms = o->drain_ms;
        so.on_partition_open = open_slice_publisher, so.on_partition_close = close_slice_publisher;
        so.partition_ud = p;
    }
    if (!(p->s = iqp_stream_new(p->st, &so, err, sizeof err))) return iqp_cli_fail(CMD, "%s", err);
    return o->state_dir ? 0 : open_publisher(o, p);
}

/* The partition publishers' sum, once the stream released every partition. */
static void print_slice_summary(const stream_parts *p) {
    if (p->slice_pc)
        fprintf(stderr, "iqp stream: the partitions released published %llu values in %llu rounds (%llu slides, %llu "
                        "resyncs, %llu Redis errors); %llu changed keys left queued in their stores\n",
                (unsigned long long)p->slice_stats.values, (unsigned long long)p->slice_stats.rounds,
                (unsigned long long)p->slice_stats.refreshes, (unsigned long long)p->slice_stats.resyncs,
                (unsigned long long)p->slice_stats.errors, (unsigned long long)p->slice_left);
}

static void stop_publisher(stream_parts *p, int64_t drain_ms) {
    iqp_publisher_stats ps;
    if (!p->pub) return;
    iqp_publisher_stop(p->pub, (int)drain_ms, &ps);
    fprintf(stderr, "iqp stream: published %llu values in %llu rounds (%llu refreshes, %llu resyncs, %llu Redis "
                    "errors); %llu changed keys left queued in the store\n",
            (unsigned long long)ps.values, (unsigned long long)ps.rounds, (unsigned long long)ps.refreshes,
            (unsigned long long)ps.resyncs, (unsigned long long)ps.errors,
            (unsigned long long)iqp_pending_count(p->queue));
}

/* The first stage after the stream: everything it forwarded is delivered
 * and its offsets committed; a failure (now or earlier) is exit 1. */
static int stop_repartition(stream_parts *p, int rc) {
    char err[1024];
    if (!p->rp) return rc;
    if (iqp_repartition_failed(p->rp, err, sizeof err)) rc = iqp_cli_fail(CMD, "repartition: %s", err);
    else if (iqp_repartition_stop(p->rp, err, sizeof err) < 0 && rc == 0) rc = iqp_cli_fail(CMD, "repartition: %s", err);
    iqp_repartition_free(p->rp);
    p->rp = NULL;
    return rc;
}

static int close_parts(stream_parts *p, int rc, int64_t drain_ms) {
    char err[512];
    if (p->s) print_summary(p->s);
    stop_publisher(p, drain_ms);
    iqp_stream_free(p->s);
    print_slice_summary(p);
    rc = stop_repartition(p, rc);
    iqp_pending_free(p->queue);
    iqp_checkpoints_free(p->ckpt);
    iqp_metrics_server_stop(p->srv);
    iqp_metrics_free(p->m);
    if (p->dl && iqp_deadletter_close(p->dl, err, sizeof err) < 0 && rc == 0)
        rc = iqp_cli_fail(CMD, "dead-letter sink: %s", err);
    if (p->st) iqp_store_close(p->st);
    return rc;
}

static void free_opts(stream_opts *o) {
    for (size_t i = 0; i < o->n_owned; i++) free(o->owned[i]);
    json_decref(o->root);
}

/* ---- --dry-run ------------------------------------------------------------------ */
/* Everything iqp stream would touch, checked without consuming, counting,
 * publishing or joining the group (a join would rebalance the running
 * members). One line per check: "ok", "FAIL" (iqp stream would not start
 * or not work) or "note"; exit 1 when any check failed. */

static int dry_line(int ok, const char *what, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int dry_line(int ok, const char *what, const char *fmt, ...) {
    va_list ap;
    printf("%-4s %-9s ", ok > 0 ? "ok" : ok == 0 ? "FAIL" : "note", what);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    return ok == 0;
}

/* The store: opened read-only when it exists (safe beside a running
 * writer), its layout compared with the config; else its parent must be
 * writable. */
static int dry_store(const stream_opts *o, const iqp_config *cfg) {
    char err[1024];
    struct stat sb;
    if (stat(o->store_dir, &sb) != 0) {
        char *parent = iqp_parent_dir(o->store_dir);
        int ok = access(parent, W_OK) == 0;
        int bad = dry_line(ok, "store", ok ? "%s does not exist yet: would create it with this config's layout"
                                           : "%s does not exist and %s is not writable", o->store_dir, parent);
        free(parent);
        return bad;
    }
    int present = iqp_store_present(o->store_dir, err, sizeof err);
    if (present < 0) return dry_line(0, "store", "%s", err);
    if (!present) {
        int ok = access(o->store_dir, W_OK) == 0;
        return dry_line(ok, "store", ok ? "%s holds no store yet: would create it with this config's layout"
                                        : "%s holds no store and is not writable by this user", o->store_dir);
    }
    iqp_store *st = iqp_store_open(o->store_dir, cfg, IQP_STORE_READ_ONLY, err, sizeof err);
    if (!st) return dry_line(0, "store", "%s", err);
    int64_t wm = iqp_store_watermark(st);
    iqp_store_close(st);
    int bad = dry_line(1, "store", "%s: layout matches the config; watermark %lld", o->store_dir,
                       (long long)(wm == INT64_MIN ? 0 : wm));
    if (access(o->store_dir, W_OK) != 0)
        bad += dry_line(0, "store", "%s is not writable by this user", o->store_dir);
    return bad;
}

/* --state-dir: the directory exists and is writable (or can be made),
 * and every partition store already in it matches the config. */
static int dry_state_dir(const stream_opts *o, const iqp_config *cfg) {
    char err[1024], path[4096];
    struct stat sb;
    if (stat(o->state_dir, &sb) != 0) {
        char *parent = iqp_parent_dir(o->state_dir);
        int ok = access(parent, W_OK) == 0;
        int bad = dry_line(ok, "state", ok ? "%s does not exist yet: would create it" : "%s does not exist and %s is "
                                             "not writable", o->state_dir, parent);
        free(parent);
        return bad;
    }
    if (!S_ISDIR(sb.st_mode) || access(o->state_dir, W_OK) != 0)
        return dry_line(0, "state", "%s is not a writable directory", o->state_dir);
    int bad = 0, found = 0;
    DIR *dir = opendir(o->state_dir);
    for (struct dirent *e; dir && (e = readdir(dir)) != NULL;) {
        if (strncmp(e->d_name, "partition-", 10) != 0) continue;
        snprintf(path, sizeof path, "%s/%s", o->state_dir, e->d_name);
        found++;
        iqp_store *st = iqp_store_open(path, cfg, IQP_STORE_READ_ONLY, err, sizeof err);
        if (!st) bad += dry_line(0, "state", "%s", err);
        iqp_store_close(st);
    }
    if (dir) closedir(dir);
    if (!bad) dry_line(1, "state", "%s: %d partition store%s, layout matches the config", o->state_dir, found,
                       found == 1 ? "" : "s");
    return bad;
}

/* --checkpoint-dir: a writable directory (or one that can be made), and
 * how many partitions have a checkpoint there. */
static int dry_checkpoint_dir(const stream_opts *o) {
    char err[1024], best[4400];
    struct stat sb;
    if (!o->checkpoint_dir) return 0;
    if (stat(o->checkpoint_dir, &sb) != 0) {
        char *parent = iqp_parent_dir(o->checkpoint_dir);
        int ok = stat(parent, &sb) == 0 && S_ISDIR(sb.st_mode) && access(parent, W_OK) == 0;
        int bad = dry_line(ok, "checkpts", ok ? "%s does not exist yet: would create it" : "%s does not exist and %s "
                                                "is not a writable directory", o->checkpoint_dir, parent);
        free(parent);
        return bad;
    }
    if (!S_ISDIR(sb.st_mode) || access(o->checkpoint_dir, W_OK | X_OK) != 0)
        return dry_line(0, "checkpts", "%s is not a writable directory", o->checkpoint_dir);
    int found = 0, bad = 0;
    DIR *dir = opendir(o->checkpoint_dir);
    for (struct dirent *e; dir && (e = readdir(dir)) != NULL;) {
        int64_t progress;
        if (strncmp(e->d_name, "partition-", 10) != 0) continue;
        int rc = iqp_pck_best(o->checkpoint_dir, (int32_t)atoi(e->d_name + 10), best, sizeof best, &progress, err,
                              sizeof err);
        if (rc < 0) bad += dry_line(0, "checkpts", "%s", err);
        found += rc > 0;
    }
    if (dir) closedir(dir);
    if (!bad) dry_line(1, "checkpts", "%s: %d partition%s checkpointed", o->checkpoint_dir, found, found == 1 ? "" : "s");
    return bad;
}

static const rd_kafka_metadata_topic_t *find_topic(const rd_kafka_metadata_t *md, const char *name) {
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, name) == 0) return &md->topics[i];
    return NULL;
}

/* One topic iqp stream needs: present, readable (no error), its partitions. */
static int dry_topic(const rd_kafka_metadata_t *md, const char *role, const char *name, int *parts) {
    const rd_kafka_metadata_topic_t *t = find_topic(md, name);
    *parts = 0;
    if (!t || t->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        return dry_line(0, "kafka", "%s topic '%s' does not exist", role, name);
    if (t->err) return dry_line(0, "kafka", "%s topic '%s': %s", role, name, rd_kafka_err2str(t->err));
    for (int p = 0; p < t->partition_cnt; p++)
        if (t->partitions[p].err && t->partitions[p].err != RD_KAFKA_RESP_ERR_REPLICA_NOT_AVAILABLE)
            return dry_line(0, "kafka", "%s topic '%s' partition %d: %s", role, name, t->partitions[p].id,
                            rd_kafka_err2str(t->partitions[p].err));
    *parts = t->partition_cnt;
    return dry_line(1, "kafka", "%s topic '%s': %d partitions", role, name, t->partition_cnt);
}

/* --repartition: both repartition topics exist with one partition count. */
static int dry_repartition_topics(const stream_opts *o, const rd_kafka_metadata_t *md) {
    char names[2][300];
    int n[2] = {0, 0}, bad = 0;
    const char *prefix = o->repartition_prefix ? o->repartition_prefix : "iqp-repartition";
    snprintf(names[0], sizeof names[0], "%s-impressions", prefix);
    snprintf(names[1], sizeof names[1], "%s-actions", prefix);
    bad += dry_topic(md, "repartition", names[0], &n[0]);
    bad += dry_topic(md, "repartition", names[1], &n[1]);
    if (n[0] && n[1] && n[0] != n[1])
        bad += dry_line(0, "kafka", "%s has %d partitions, %s %d: --repartition needs the same count", names[0], n[0],
                        names[1], n[1]);
    else if (n[0] && n[1])
        dry_line(-1, "kafka", "would forward the input to %s and %s as group '%s' and count them as group "
                              "'%s-counting'", names[0], names[1], group_id(o), group_id(o));
    return bad;
}

static int dry_kafka(const stream_opts *o) {
    const char *props[2 * MAX_PROPS + 1];
    char kerr[512];
    int bad = 0, ni = 0, na = 0, n;
    producer_props(o, props);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; props[i]; i += 2) rd_kafka_conf_set(conf, props[i], props[i + 1], kerr, sizeof kerr);
    rd_kafka_conf_set(conf, "log_level", "0", kerr, sizeof kerr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof kerr);
    if (!rk) return dry_line(0, "kafka", "cannot create a client: %s", kerr);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, NULL, &md, 10000);
    if (err) {
        rd_kafka_destroy(rk);
        return dry_line(0, "kafka", "no metadata from the brokers within 10 s: %s", rd_kafka_err2str(err));
    }
    dry_line(1, "kafka", "%d broker%s answer%s", md->broker_cnt, md->broker_cnt == 1 ? "" : "s",
             md->broker_cnt == 1 ? "s" : "");
    bad += dry_topic(md, "impressions", o->imp_topic ? o->imp_topic : "impressions", &ni);
    bad += dry_topic(md, "actions", o->act_topic ? o->act_topic : "actions", &na);
    if (ni && na && ni != na && o->state_dir && !o->repartition)
        bad += dry_line(0, "kafka", "impressions has %d partitions, actions %d: --state-dir needs the same count", ni,
                        na);
    else if (ni && na && ni != na)
        dry_line(-1, "kafka", "impressions has %d partitions, actions %d: instances scale out by partition, "
                              "so both topics should have the same count", ni, na);
    if (o->repartition) bad += dry_repartition_topics(o, md);
    if (!o->dl_file) bad += dry_topic(md, "dead-letter", o->dl_topic ? o->dl_topic : "dead-letter", &n);
    const char *ckpt = o->ckpt_topic ? o->ckpt_topic : "iqp-checkpoints";
    if (strcmp(ckpt, "off") != 0 && !o->state_dir) bad += dry_topic(md, "checkpoint", ckpt, &n);
    dry_line(-1, "kafka", "would join group '%s' and count the partitions it is given (membership not "
                          "tried: a join would rebalance running members)", group_id(o));
    rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk);
    return bad;
}

static int dry_dead_letter_file(const stream_opts *o) {
    if (!o->dl_file) return 0;
    char *parent = iqp_parent_dir(o->dl_file);
    int ok = access(o->dl_file, F_OK) == 0 ? access(o->dl_file, W_OK) == 0 : access(parent, W_OK) == 0;
    free(parent);
    return dry_line(ok, "deadlettr", ok ? "rejected events would be appended to %s" : "cannot append to %s",
                    o->dl_file);
}

/* Redis: reachable, writable (one probe key that expires in 1 s), who
 * holds the publish lease, and any published layout the same as ours. */
static int dry_redis(const stream_opts *o, const iqp_config *cfg) {
    iqp_redis_url u;
    char err[512], where[512];
    if (!o->redis.url) return dry_line(-1, "redis", "no redis.url: features would not be published"), 0;
    if (iqp_redis_url_parse(o->redis.url, &u, err, sizeof err) < 0) return dry_line(0, "redis", "%s", err);
    iqp_redis_url_describe(&u, where, sizeof where);
    char pf[160];
    if (iqp_redis_key_prefix(&u, o->redis.prefix, pf, sizeof pf, err, sizeof err) < 0)
        return dry_line(0, "redis", "%s", err);
    iqp_rconn *c = iqp_rconn_connect(&u, o->redis.connect_timeout_ms, o->redis.command_timeout_ms, err, sizeof err);
    if (!c) return dry_line(0, "redis", "%s", err);
    int bad = 0;
    redisReply *r = iqp_rconn_command(c, "SET %s:dry-run-probe 1 PX 1000", pf);
    if (!r || r->type == REDIS_REPLY_ERROR)
        bad += dry_line(0, "redis", "%s: cannot write under prefix '%s': %s", where, pf,
                        r ? r->str : iqp_rconn_errstr(c));
    else
        dry_line(1, "redis", "%s answers and accepts writes under prefix '%s'", where, pf);
    freeReplyObject(r);
    /* a held lease is a note, not a failure: iqp stream starts, counts and
     * queues its changes until the lease is free, and the usual holder is
     * the running service this dry run prepares to replace (a restart, new
     * credentials), which releases it when it stops */
    r = iqp_rconn_command(c, "GET %s:lease", pf);
    if (r && r->type == REDIS_REPLY_STRING)
        dry_line(-1, "redis", "another process publishes to prefix '%s' (%s): this one would count and queue its "
                              "changes until that lease is released or expires", pf, r->str);
    freeReplyObject(r);
    char fp[17];
    free(iqp_rpipe_layout(cfg, fp));
    r = iqp_rconn_command(c, "GET %s:gen", pf);
    if (r && r->type == REDIS_REPLY_STRING) {
        redisReply *m = iqp_rconn_command(c, "HGET %s:%s:meta fingerprint", pf, r->str);
        if (m && m->type == REDIS_REPLY_STRING && strcmp(m->str, fp) != 0)
            bad += dry_line(0, "redis", "generation %s under '%s' has layout fingerprint %s, this config %s: "
                                        "publishing would be refused", r->str, pf, m->str, fp);
        else
            dry_line(1, "redis", "serving generation %s under '%s'; layout fingerprint %s matches", r->str, pf, fp);
        freeReplyObject(m);
    } else {
        dry_line(1, "redis", "nothing published under '%s' yet: would publish layout %s", pf, fp);
    }
    freeReplyObject(r);
    iqp_rconn_free(c);
    return bad;
}

static int dry_metrics(const stream_opts *o) {
    char err[512];
    const char *listen = o->listen ? o->listen : "127.0.0.1:9464";
    if (strcmp(listen, "off") == 0) return dry_line(-1, "metrics", "off"), 0;
    iqp_metrics *m = iqp_metrics_new();
    iqp_metrics_server *srv = iqp_metrics_serve(m, listen, err, sizeof err);
    int bad = srv ? dry_line(1, "metrics", "/metrics and /healthz would be served on %s", listen)
                  : dry_line(0, "metrics", "%s", err);
    iqp_metrics_server_stop(srv);
    iqp_metrics_free(m);
    return bad;
}

static int dry_run(const stream_opts *o, const iqp_config *cfg) {
    int bad = (o->state_dir ? dry_state_dir(o, cfg) : dry_store(o, cfg)) + dry_checkpoint_dir(o) + dry_kafka(o) + dry_dead_letter_file(o) + dry_redis(o, cfg) + dry_metrics(o);
    int64_t flush_ms = o->flush_ms ? o->flush_ms : IQP_STREAM_DEFAULT_FLUSH_MS;
    printf("%s: would count topics '%s' and '%s' into %s, flushing every %lld ms or %zu events%s\n",
           bad ? "dry run FAILED" : "dry run ok", o->imp_topic ? o->imp_topic : "impressions",
           o->act_topic ? o->act_topic : "actions", o->state_dir ? o->state_dir : o->store_dir, (long long)flush_ms, cfg->flush_events,
           o->redis.url ? ", publishing to Redis" : "");
    if (bad) fprintf(stderr, "iqp stream: dry run: %d problem%s (above)\n", bad, bad == 1 ? "" : "s");
    return bad ? 1 : 0;
}

/* ---- the stream's config sections, for `iqp config` ------------------------------ */

static void opts_init(stream_opts *o) {
    memset(o, 0, sizeof *o);
    iqp_publisher_config_defaults(&o->redis);
    o->drain_ms = 3000;
}

int iqp_stream_config_check(json_t *root, const char *source, int require_all) {
    stream_opts o;
    opts_init(&o);
    o.config_path = source;
    int rc = read_sections(&o, root);
    if (rc == 0) rc = check_opts(&o, require_all);
    free_opts(&o);
    return rc;
}

/* "8d", "90m", "1500ms": the largest unit that divides ms exactly. */
static json_t *duration_json(int64_t ms) {
    static const struct { const char *unit; int64_t ms; } units[] = {
        {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    char buf[48];
    snprintf(buf, sizeof buf, "%lldms", (long long)ms);
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (ms > 0 && ms % units[i].ms == 0) {
            snprintf(buf, sizeof buf, "%lld%s", (long long)(ms / units[i].ms), units[i].unit);
            break;
        }
    return json_string(buf);
}

static json_t *effective_kafka(const stream_opts *o) {
    json_t *k = json_object();
    for (const char *const *kv = iqp_stream_kafka_defaults(); kv[0]; kv += 2) json_object_set_new(k, kv[0], json_string(kv[1]));
    for (size_t i = 0; i < o->n_props; i++) json_object_set_new(k, o->props[2 * i], json_string(o->props[2 * i + 1]));
    for (const char *const *kv = iqp_stream_kafka_forced(); kv[0]; kv += 2) json_object_set_new(k, kv[0], json_string(kv[1]));
    return k;
}

json_t *iqp_stream_config_effective(json_t *root, const char *source) {
    stream_opts o;
    opts_init(&o);
    o.config_path = source;
    if (read_sections(&o, root) || check_opts(&o, 0)) return free_opts(&o), NULL;
    json_t *st = json_pack("{s:s, s:s, s:I}", "impressions_topic", o.imp_topic ? o.imp_topic : "impressions",
                           "actions_topic", o.act_topic ? o.act_topic : "actions", "flush_ms",
                           (json_int_t)(o.flush_ms ? o.flush_ms : IQP_STREAM_DEFAULT_FLUSH_MS));
    if (o.store_dir) json_object_set_new(st, "store", json_string(o.store_dir));
    if (o.state_dir) json_object_set_new(st, "state_dir", json_string(o.state_dir));
    if (o.checkpoint_dir) {
        json_object_set_new(st, "checkpoint_dir", json_string(o.checkpoint_dir));
        json_object_set_new(st, "checkpoint_interval",
                            duration_json(o.checkpoint_ms ? o.checkpoint_ms : IQP_STREAM_DEFAULT_CHECKPOINT_MS));
    }
    if (o.dl_file) json_object_set_new(st, "dead_letter_file", json_string(o.dl_file));
    else json_object_set_new(st, "dead_letter_topic", json_string(o.dl_topic ? o.dl_topic : "dead-letter"));
    json_object_set_new(st, "checkpoint_topic", json_string(o.ckpt_topic ? o.ckpt_topic : "iqp-checkpoints"));
    /* never a password: a URL read from a file is shown as that file, a
     * URL given inline with its password masked (***) */
    char shown_url[1024];
    iqp_redis_url_mask(o.redis.url ? o.redis.url : "off", shown_url, sizeof shown_url);
    json_t *redis = json_pack("{s:s, s:s, s:o, s:b, s:i, s:i, s:I, s:I, s:i}",
                              o.redis_url_file ? "url_file" : "url", o.redis_url_file ? o.redis_url_file : shown_url,
                              "prefix", o.redis.prefix, "ttl", duration_json(o.redis.ttl_ms), "refresh",
                              o.redis.refresh_on_slide, "connect_timeout_ms", o.redis.connect_timeout_ms,
                              "command_timeout_ms", o.redis.command_timeout_ms, "drain_ms", (json_int_t)o.drain_ms,
                              "batch_keys", (json_int_t)o.redis.batch_keys, "pipeline_depth", o.redis.pipeline_depth);
    json_t *out = json_pack("{s:o, s:o, s:o, s:{s:s}}", "stream", st, "kafka", effective_kafka(&o), "redis", redis,
                            "metrics", "listen", o.listen ? o.listen : "127.0.0.1:9464");
    free_opts(&o);
    return out;
}

/* After the options: the config, then a dry run or the stream itself. */
static int run_stream(stream_opts *o) {
    iqp_config cfg;
    char err[1024];
    int rc;
    iqp_config_defaults(&cfg);
    if (o->config_path && iqp_config_load(&cfg, o->config_path, err, sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    if (o->flush_events) cfg.flush_events = (size_t)o->flush_events;
    if (o->dry_run) return dry_run(o, &cfg);
    stream_parts p = {0};
    iqp_cli_on_stop_signals(on_stop_signal);
    rc = open_parts(o, &cfg, &p);
    if (rc == 0) iqp_sd_notify("READY=1\nSTATUS=counting");
    if (rc == 0 && iqp_stream_run(p.s, err, sizeof err) < 0) rc = iqp_cli_fail(CMD, "%s", err);
    return close_parts(&p, rc, o->drain_ms);
}

int iqp_cmd_stream(int argc, char **argv) {
    stream_opts o;
    opts_init(&o);
    int rc = parse_opts(argc, argv, &o);
    if (rc) return free_opts(&o), rc < 0 ? 0 : rc;
    iqp_cli_keep_freed_memory();
    if (o.log_json && iqp_logfmt_json_start(CMD) < 0)
        return free_opts(&o), iqp_cli_fail(CMD, "cannot start the JSON log formatter");
    rc = run_stream(&o);
    iqp_logfmt_stop();
    free_opts(&o);
    return rc;
}

/* stats.c -- `iqp stats`: what a store holds, as one JSON object.
 *
 * Counts the cells and keys of the counter column families and the keys of
 * the others (exact scans), the bytes of its files, and the watermark. With --compact it first runs a full compaction,
 * which also applies bucket and dedup expiry, so the figures are settled.
 * With --state-dir (iqp stream's partition stores, DIR/partition-<p>) the
 * same object over every partition store: counts summed, the newest
 * watermark, every store's offsets, partition_stores, and each store's
 * own main figures under partitions.<p>.
 */
#include <stddef.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/flags.h"
#include "store/store.h"

#define MAX_PARTITION_STORES 4096

static const char *CMD = "stats";

typedef struct stats_opts {
    const char *store, *state_dir;
    int compact;
} stats_opts;

static const iqp_flag FLAGS[] = {
    {"store", IQP_FLAG_STRING, offsetof(stats_opts, store), .arg = "DIR", .help = "the store"},
    {"state-dir", IQP_FLAG_STRING, offsetof(stats_opts, state_dir), .arg = "DIR",
     .help = "... or every partition store of `iqp stream --state-dir DIR`, summed"},
    {"compact", IQP_FLAG_BOOL, offsetof(stats_opts, compact),
     .help = "compact fully first (applies expiry; needs write access)"},
    {0}};

static const iqp_flag_cmd STATS = {
    .name = "stats",
    .usage = "iqp stats --store DIR | --state-dir DIR [--compact]",
    .about = "Prints one JSON object: watermark_ms, count_cells, context_cells\n"
             "((granularity, bucket) cells), count_keys, context_keys (stored keys:\n"
             "one per slot, each packing that slot's cells), dedup_markers,\n"
             "disk_bytes, bytes_per_cell, publish_pending (keys that\n"
             "`iqp stream --redis` queued for Redis and has not published yet), and\n"
             "kafka_offsets: for every Kafka partition the store has counted,\n"
             "\"TOPIC/PARTITION\": the next offset (what `iqp stream` resumes from).\n"
             "A store of `iqp stream --repartition` adds repartition_origins: for every\n"
             "input partition it counted events of, the highest input offset counted.\n"
             "Safe to run beside a running writer. With --state-dir: the same over every\n"
             "partition store of `iqp stream --state-dir DIR` (figures summed, the newest\n"
             "watermark, every store's offsets) plus partition_stores, their number, and\n"
             "partitions: for each partition number p, that store's watermark_ms,\n"
             "count_cells, context_cells, disk_bytes and publish_pending.",
    .flags = FLAGS,
};

/* A partition store of `iqp stream --repartition`: "TOPIC/PARTITION" of an
 * input partition -> the highest input offset it counted from it. */
static void add_origin(void *ud, const char *key, size_t klen, const char *val, size_t vlen) {
    static const size_t prefix = sizeof "src/origin/" - 1;
    json_t *pos = json_loadb(val, vlen, 0, NULL), *applied = json_object_get(pos, "applied");
    if (klen > prefix && json_is_integer(applied))
        json_object_setn_new(ud, key + prefix, klen - prefix, json_integer(json_integer_value(applied)));
    json_decref(pos);
}

/* The stats object of the store at dir (compacted first when asked), or
 * NULL after printing why. */
static json_t *store_stats(const char *dir, int compact) {
    char err[1024];
    iqp_store *st = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    if (!st) return iqp_cli_fail(CMD, "%s", err), NULL;
    if (compact) {
        iqp_config cfg = *iqp_store_config(st);
        iqp_store_close(st);
        st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
        if (!st) return iqp_cli_fail(CMD, "%s", err), NULL;
        if (iqp_store_compact(st, err, sizeof err) < 0) {
            iqp_store_close(st);
            return iqp_cli_fail(CMD, "%s", err), NULL;
        }
    }
    uint64_t counts = iqp_store_count_cells(st, IQP_CF_COUNTS);
    uint64_t contexts = iqp_store_count_cells(st, IQP_CF_CONTEXTS);
    uint64_t bytes = iqp_store_disk_bytes(st);
    json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "watermark_ms",
                          (json_int_t)iqp_store_watermark(st), "count_cells", (json_int_t)counts,
                          "context_cells", (json_int_t)contexts, "count_keys",
                          (json_int_t)iqp_store_count_keys(st, IQP_CF_COUNTS), "context_keys",
                          (json_int_t)iqp_store_count_keys(st, IQP_CF_CONTEXTS), "dedup_markers",
                          (json_int_t)iqp_store_count_keys(st, IQP_CF_DEDUP), "disk_bytes",
                          (json_int_t)bytes, "bytes_per_cell",
                          counts + contexts ? (double)bytes / (double)(counts + contexts) : 0.0);
    json_object_set_new(o, "publish_pending", json_integer((json_int_t)iqp_store_count_keys(st, IQP_CF_PENDING)));
    json_t *offsets = json_object();
    iqp_store_scan_meta(st, "src/kafka/", iqp_cli_add_kafka_offset, offsets);
    json_object_set_new(o, "kafka_offsets", offsets);
    json_t *origins = json_object();
    iqp_store_scan_meta(st, "src/origin/", add_origin, origins);
    if (json_object_size(origins)) json_object_set(o, "repartition_origins", origins);
    json_decref(origins);
    iqp_store_close(st);
    return o;
}

/* have[k] = max(have[k], v[k]) for every key of v. */
static void max_update(json_t *have, json_t *v) {
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) {
        json_t *h = json_object_get(have, k);
        if (!h || json_integer_value(x) > json_integer_value(h)) json_object_set(have, k, x);
    }
}

/* Adds one partition store's stats into sum (the first one starts it). */
static void add_stats(json_t *sum, json_t *one) {
    const char *key;
    json_t *v;
    json_object_foreach(one, key, v) {
        json_t *have = json_object_get(sum, key);
        if (!have) json_object_set(sum, key, v);
        else if (!strcmp(key, "kafka_offsets")) json_object_update(have, v);
        else if (!strcmp(key, "repartition_origins")) max_update(have, v);
        else if (!strcmp(key, "watermark_ms") && json_integer_value(v) > json_integer_value(have))
            json_object_set(sum, key, v);
        else if (json_is_integer(v) && strcmp(key, "watermark_ms"))
            json_object_set_new(sum, key, json_integer(json_integer_value(have) + json_integer_value(v)));
    }
}

/* The figures `iqp stats --state-dir` shows per partition store. */
static json_t *partition_figures(json_t *one) {
    static const char *const keys[] = {"watermark_ms", "count_cells", "context_cells", "disk_bytes",
                                       "publish_pending"};
    json_t *o = json_object();
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (json_object_get(one, keys[i])) json_object_set(o, keys[i], json_object_get(one, keys[i]));
    return o;
}

/* Every DIR/partition-<p> store, summed, and each one's own figures;
 * NULL after printing why. */
static json_t *state_dir_stats(const char *dir, int compact) {
    char *paths[MAX_PARTITION_STORES];
    char err[1024];
    size_t n;
    if (iqp_cli_partition_stores(dir, paths, MAX_PARTITION_STORES, &n, err, sizeof err) < 0)
        return iqp_cli_fail(CMD, "%s", err), NULL;
    json_t *sum = json_object(), *parts = json_object();
    for (size_t i = 0; i < n && sum; i++) {
        json_t *one = store_stats(paths[i], compact);
        if (one) {
            add_stats(sum, one);
            json_object_set_new(parts, strrchr(paths[i], '-') + 1, partition_figures(one));
            json_decref(one);
        } else {
            json_decref(sum), sum = NULL;
        }
    }
    for (size_t i = 0; i < n; i++) free(paths[i]);
    if (!sum) return json_decref(parts), NULL;
    json_int_t cells = json_integer_value(json_object_get(sum, "count_cells")) +
                       json_integer_value(json_object_get(sum, "context_cells"));
    json_object_set_new(sum, "bytes_per_cell", json_real(cells ? (double)json_integer_value(json_object_get(
                                                                     sum, "disk_bytes")) / (double)cells : 0.0));
    json_object_set_new(sum, "partition_stores", json_integer((json_int_t)n));
    json_object_set_new(sum, "partitions", parts);
    return sum;
}

int iqp_cmd_stats(int argc, char **argv) {
    stats_opts opt = {0};
    int rc = iqp_flags_parse(&STATS, &opt, argc, argv);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    if (!opt.store == !opt.state_dir) return iqp_cli_usage_error(CMD, "give --store DIR or --state-dir DIR");
    json_t *o = opt.store ? store_stats(opt.store, opt.compact) : state_dir_stats(opt.state_dir, opt.compact);
    if (!o) return IQP_EXIT_FAIL;
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    puts(text);
    free(text);
    json_decref(o);
    return 0;
}

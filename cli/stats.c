/* stats.c -- `iqp stats`: what a store holds, as one JSON object.
 *
 * Counts the cells and keys of the counter column families and the keys of
 * the others (exact scans), the bytes of its files, and the watermark. With --compact it first runs a full compaction,
 * which also applies bucket and dedup expiry, so the figures are settled.
 */
#include <stddef.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/flags.h"
#include "store/store.h"

static const char *CMD = "stats";

typedef struct stats_opts {
    const char *store;
    int compact;
} stats_opts;

static const iqp_flag FLAGS[] = {
    {"store", IQP_FLAG_STRING, offsetof(stats_opts, store), .arg = "DIR", .help = "the store"},
    {"compact", IQP_FLAG_BOOL, offsetof(stats_opts, compact),
     .help = "compact fully first (applies expiry; needs write access)"},
    {0}};

static const iqp_flag_cmd STATS = {
    .name = "stats",
    .usage = "iqp stats --store DIR [--compact]",
    .about = "Prints one JSON object: watermark_ms, count_cells, context_cells\n"
             "((granularity, bucket) cells), count_keys, context_keys (stored keys:\n"
             "one per slot, each packing that slot's cells), dedup_markers,\n"
             "disk_bytes, bytes_per_cell, publish_pending (keys that\n"
             "`iqp stream --redis` queued for Redis and has not published yet), and\n"
             "kafka_offsets: for every Kafka partition the store has counted,\n"
             "\"TOPIC/PARTITION\": the next offset (what `iqp stream` resumes from).\n"
             "Safe to run beside a running writer.",
    .flags = FLAGS,
};

int iqp_cmd_stats(int argc, char **argv) {
    stats_opts opt = {0};
    int rc = iqp_flags_parse(&STATS, &opt, argc, argv);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    if (!opt.store) return iqp_cli_usage_error(CMD, "--store DIR is required");
    const char *dir = opt.store;
    int compact = opt.compact;
    char err[1024];
    iqp_store *st = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, sizeof err);
    if (!st) return iqp_cli_fail(CMD, "%s", err);
    if (compact) {
        iqp_config cfg = *iqp_store_config(st);
        iqp_store_close(st);
        st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
        if (!st) return iqp_cli_fail(CMD, "%s", err);
        if (iqp_store_compact(st, err, sizeof err) < 0) {
            iqp_store_close(st);
            return iqp_cli_fail(CMD, "%s", err);
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
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    puts(text);
    free(text);
    json_decref(o);
    iqp_store_close(st);
    return 0;
}

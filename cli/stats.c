/* stats.c -- `iqp stats`: what a store holds, as one JSON object.
 *
 * Counts the cells and keys of the counter column families and the keys of
 * the others (exact scans), the bytes of its files, and the watermark. With --compact it first runs a full compaction,
 * which also applies bucket and dedup expiry, so the figures are settled.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "store/store.h"

static const char *CMD = "stats";

static void usage(FILE *out) {
    fprintf(out,
            "usage: iqp stats --store DIR [--compact]\n"
            "\n"
            "Prints one JSON object: watermark_ms, count_cells, context_cells\n"
            "((granularity, bucket) cells), count_keys, context_keys (stored keys:\n"
            "one per slot, each packing that slot's cells), dedup_markers,\n"
            "disk_bytes, bytes_per_cell, publish_pending (keys that\n"
            "`iqp stream --redis` queued for Redis and has not published yet), and\n"
            "kafka_offsets: for every Kafka partition the store has counted,\n"
            "\"TOPIC/PARTITION\": the next offset (what `iqp stream` resumes from).\n"
            "Safe to run beside a running writer.\n"
            "\n"
            "  --store DIR   the store\n"
            "  --compact     compact fully first (applies expiry; needs write access)\n"
            "  --help        this text\n");
}

int iqp_cmd_stats(int argc, char **argv) {
    static const struct option longopts[] = {{"store", required_argument, 0, 's'},
                                              {"compact", no_argument, 0, 'c'},
                                              {"help", no_argument, 0, 'h'},
                                              {0, 0, 0, 0}};
    const char *dir = NULL;
    int compact = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 's': dir = optarg; break;
        case 'c': compact = 1; break;
        case 'h': usage(stdout); return 0;
        default: return iqp_cli_usage_error(CMD, "unknown option");
        }
    }
    if (!dir) return iqp_cli_usage_error(CMD, "--store DIR is required");
    if (optind < argc) return iqp_cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
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

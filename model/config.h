/* config.h -- what is counted: actions, features, windows, limits.
 *
 * Owns: the in-memory description of the counting configuration, its
 * defaults (DESIGN.md), loading it from a JSON file, and the canonical
 * "layout" JSON whose fingerprint guards a store against being read or
 * written with a different meaning of its counters.
 *
 * May not touch: events, the store, any I/O other than reading the config
 * file it is given.
 * model/ is the ground floor: this file includes nothing of the project
 * but model/ itself, so every module (store/ and schemas/ too) may use it.
 *
 * Counter vectors: every (feature, context, entity, bucket) cell holds
 * IQP_COUNTERS(cfg) signed 64-bit counters, in this order:
 *   [0] impression   [1] engaged   [2 + i] action i (cfg->actions[i])
 * Context cells hold one counter: context_count.
 *
 * The config file is JSON; every key is optional:
 *   { "actions":  ["click", "save", ...],
 *     "segments": [ {"name": "country", "field": "user.country",
 *                    "normalizer": "country"}, ...],
 *     "features": [ {"name": "qc_item", "context": ["query", "country"]}, ...],
 *     "windows":  [ {"name": "1d", "length": "1d", "granularity": "1h"}, ...],
 *     "limits":   {"max_event_bytes": 1048576, "max_items": 10000,
 *                  "max_string_bytes": 4096},
 *     "dedup_horizon": "24h", "max_future_skew_ms": 300000,
 *     "flush_events": 200000,
 *     "store":    {"write_buffer_mb": 64, "l0_compaction_trigger": 8,
 *                  "block_cache_mb": 64, "background_jobs": 2} }
 * Only actions, segments, features and windows (the layout) are part of
 * the store's fingerprint; limits and tuning may change between runs.
 *
 * Segments (the dimensions a context is keyed by) are data: each names the
 * event field its value comes from and the normalizer that makes the value
 * a key part (model/segments.h says how each normalizes). The defaults are
 * query ("query", query text), country ("user.country", ISO country) and
 * gender ("user.gender", gender). A feature's context is a set of segment
 * names; its keys list the values in segment (declaration) order, so with
 * the default segments the keys are byte for byte those of the fixed
 * (query, country, gender) context that came before.
 */
#ifndef IQP_CONFIG_H
#define IQP_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define IQP_MAX_ACTIONS 16
#define IQP_MAX_FEATURES 32
#define IQP_MAX_WINDOWS 16
#define IQP_MAX_GRANS 8
#define IQP_NAME_MAX 32
#define IQP_COUNTERS(cfg) (2 + (cfg)->n_actions)
#define IQP_MAX_COUNTERS (2 + IQP_MAX_ACTIONS)

enum { IQP_COUNTER_IMPRESSION = 0, IQP_COUNTER_ENGAGED = 1, IQP_COUNTER_ACTION0 = 2 };

#define IQP_MAX_SEGMENTS 8
#define IQP_MAX_ENUM_VALUES 16
#define IQP_MAX_BUCKET_BOUNDS 16
#define IQP_FIELD_MAX 64
/* Bound of a normalized segment value other than query text (NUL included):
 * an ISO code, a gender, an enum value or a bucket label. */
#define IQP_SEGMENT_VALUE_MAX IQP_NAME_MAX
/* Bucket bounds stay within +-IQP_BUCKET_BOUND_MAX so labels fit. */
#define IQP_BUCKET_BOUND_MAX 1000000000LL

typedef enum {
    IQP_NORM_QUERY = 0,   /* query text (NFKC, case fold, spaces); only the "query" field */
    IQP_NORM_COUNTRY,     /* ISO 3166-1 alpha-2, else "ZZ" */
    IQP_NORM_GENDER,      /* female | male | unknown */
    IQP_NORM_ENUM,        /* one of values (ASCII case-insensitive, trimmed), else fallback */
    IQP_NORM_BUCKET,      /* an integer, labelled by the bucket of bounds it falls in, else fallback */
    IQP_NORM__COUNT
} iqp_normalizer;

typedef struct iqp_segment_spec {
    char name[IQP_NAME_MAX];
    char field[IQP_FIELD_MAX];  /* dotted path in the event: "query", "user.device" */
    iqp_normalizer normalizer;
    size_t n_values;            /* enum: the allowed values, as written in keys */
    char values[IQP_MAX_ENUM_VALUES][IQP_NAME_MAX];
    char fallback[IQP_NAME_MAX]; /* enum and bucket: the value of anything else */
    size_t n_bounds;            /* bucket: ascending lower bounds */
    int64_t bounds[IQP_MAX_BUCKET_BOUNDS];
} iqp_segment_spec;

/* The bits of the default segments (query, country, gender), for tests
 * and tools written against the defaults; the pipeline itself reads
 * cfg->segments and never assumes them. */
enum { IQP_DIM_QUERY = 1u, IQP_DIM_COUNTRY = 2u, IQP_DIM_GENDER = 4u };

typedef struct iqp_feature_spec {
    char name[IQP_NAME_MAX];
    unsigned dims;              /* bit i: segment i (cfg->segments[i]) is part of the
                                 * context; entity is always the item */
} iqp_feature_spec;

typedef struct iqp_window_spec {
    char name[IQP_NAME_MAX];
    int64_t length_ms;
    int64_t gran_ms;            /* bucket granularity; divides length_ms */
    int gran_index;             /* index into iqp_config.gran_ms */
    int64_t n_buckets;          /* length_ms / gran_ms */
} iqp_window_spec;

typedef struct iqp_limits {
    size_t max_event_bytes;     /* one JSON line, default 1 MiB */
    size_t max_items;           /* items in one impression, default 10000 */
    size_t max_string_bytes;    /* any one string value, default 4 KiB */
} iqp_limits;

/* RocksDB tuning ("store" in the config file): not part of the layout, so
 * it may change between runs. Defaults suit the 2-core machines iqp is
 * measured on (README "Tuning the store" says what each costs). */
typedef struct iqp_store_tuning {
    size_t write_buffer_mb;       /* memtable size per column family, default 64 */
    size_t l0_compaction_trigger; /* L0 files before an L0->L1 compaction, default 8 */
    size_t block_cache_mb;        /* shared LRU block cache for reads, default 64 */
    size_t background_jobs;       /* flush + compaction threads, default 2 */
    int counts_universal;         /* "counts_compaction": "universal" (1, default) or "level" (0) */
    size_t dedup_l0_compaction_trigger; /* the dedup family's own L0 trigger, default 2 */
    size_t dedup_write_buffer_mb; /* the dedup family's own memtable size, default 8 */
} iqp_store_tuning;

typedef struct iqp_config {
    size_t n_actions;
    char actions[IQP_MAX_ACTIONS][IQP_NAME_MAX];
    size_t n_segments;
    iqp_segment_spec segments[IQP_MAX_SEGMENTS];
    size_t n_features;
    iqp_feature_spec features[IQP_MAX_FEATURES];
    size_t n_windows;
    iqp_window_spec windows[IQP_MAX_WINDOWS];
    /* Derived from windows: distinct granularities, ascending, and how many
     * buckets of each the store keeps (the longest window using it). */
    size_t n_grans;
    int64_t gran_ms[IQP_MAX_GRANS];
    int64_t gran_retention[IQP_MAX_GRANS];
    iqp_limits limits;
    int64_t dedup_horizon_ms;   /* event time a dedup marker is kept for */
    int64_t max_future_skew_ms; /* events further ahead of the wall clock are rejected */
    size_t flush_events;        /* events per store flush in backfill */
    iqp_store_tuning store;     /* RocksDB options */
} iqp_config;

/* Fills cfg with DESIGN.md's defaults. */
void iqp_config_defaults(iqp_config *cfg);

/* Loads a JSON config file over the defaults. On error returns -1 and
 * writes a message naming the file and the offending key into err. */
int iqp_config_load(iqp_config *cfg, const char *path, char *err, size_t errlen);

/* Same, from a JSON text already in memory (source names it in errors). */
int iqp_config_parse(iqp_config *cfg, const char *json_text, const char *source,
                     char *err, size_t errlen);

/* The store format the layout JSON records as "layout_version": 1 kept a
 * dedup marker's ts only; 2 adds the watermark it was written at (store.h
 * iqp_marker); 3 packs the cells of one slot into one value (cells.h,
 * store/counters.h). A store of another version is refused. */
#define IQP_LAYOUT_VERSION 3

/* Canonical layout JSON (actions, segments, features, windows): malloc'd,
 * caller frees. A stored layout without "segments" (written before
 * segments were data) reads as the default segments. */
char *iqp_config_layout_json(const iqp_config *cfg);

/* Compares a stored layout JSON with cfg. Returns 0 when they agree; 1 when
 * they differ, with a message saying what differs in msg; -1 when stored is
 * unreadable. */
int iqp_config_layout_diff(const char *stored, const iqp_config *cfg, char *msg,
                           size_t msglen);

/* Index of an action name, or -1. */
int iqp_config_action_index(const iqp_config *cfg, const char *name, size_t len);

/* True when s[0..n) is a valid action, feature or window name: 1 to
 * IQP_NAME_MAX-1 characters of [A-Za-z0-9_.-]. */
int iqp_config_valid_name(const char *s, size_t n);

/* Index of a segment name, or -1. */
int iqp_config_segment_index(const iqp_config *cfg, const char *name);

/* Index of a feature name, or -1. */
int iqp_config_feature_index(const iqp_config *cfg, const char *name);

/* Parses "500ms", "30s", "15m", "1h", "7d", "2w" (or a bare number of ms). */
int iqp_parse_duration(const char *text, int64_t *ms);

#endif

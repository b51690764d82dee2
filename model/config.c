/* config.c -- defaults, JSON loading and the layout fingerprint.
 *
 * The configuration has two parts with different lifetimes:
 *
 *  - the layout (actions, segments, features, windows) fixes what every counter cell
 *    in a store means. It is written into the store when the store is
 *    created, as canonical JSON (iqp_config_layout_json), and every later
 *    open compares it with the running config (iqp_config_layout_diff) and
 *    refuses to go on when they differ, saying what differs.
 *  - limits and tuning (event size limits, dedup horizon, future skew,
 *    flush size) may change from one run to the next.
 *
 * Loading starts from DESIGN.md's defaults and overrides whole sections:
 * a config that lists "windows" replaces the default windows entirely.
 */
#include "model/config.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *default_actions[] = {"click",    "save",     "closeup",
                                        "long_click", "download", "screenshot"};

static const struct {
    const char *name, *field;
    iqp_normalizer normalizer;
} default_segments[] = {
    {"query", "query", IQP_NORM_QUERY},
    {"country", "user.country", IQP_NORM_COUNTRY},
    {"gender", "user.gender", IQP_NORM_GENDER},
};

/* Contexts by segment name: resolved against the config's segments. */
static const struct {
    const char *name;
    const char *context[3];
} default_features[] = {
    {"q_item", {"query"}},
    {"qc_item", {"query", "country"}},
    {"qg_item", {"query", "gender"}},
    {"c_item", {"country"}},
    {"g_item", {"gender"}},
};

static const char *const normalizer_names[IQP_NORM__COUNT] = {
    [IQP_NORM_QUERY] = "query", [IQP_NORM_COUNTRY] = "country", [IQP_NORM_GENDER] = "gender",
    [IQP_NORM_ENUM] = "enum", [IQP_NORM_BUCKET] = "bucket"};

#define HOUR_MS (3600LL * 1000)
#define DAY_MS (24 * HOUR_MS)

static const struct {
    const char *name;
    int64_t length_ms, gran_ms;
} default_windows[] = {
    {"1d", DAY_MS, HOUR_MS},
    {"7d", 7 * DAY_MS, DAY_MS},
    {"90d", 90 * DAY_MS, DAY_MS},
    {"365d", 365 * DAY_MS, DAY_MS},
};

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* ---- derived fields ------------------------------------------------------ */

/* Recomputes the distinct granularities and their retention from windows. */
static void derive_granularities(iqp_config *cfg) {
    cfg->n_grans = 0;
    for (size_t i = 0; i < cfg->n_windows; i++) {
        int64_t g = cfg->windows[i].gran_ms;
        size_t j = 0;
        while (j < cfg->n_grans && cfg->gran_ms[j] != g) j++;
        if (j == cfg->n_grans) cfg->gran_ms[cfg->n_grans++] = g;
    }
    /* ascending order, insertion sort: at most IQP_MAX_GRANS entries */
    for (size_t i = 1; i < cfg->n_grans; i++)
        for (size_t j = i; j > 0 && cfg->gran_ms[j - 1] > cfg->gran_ms[j]; j--) {
            int64_t t = cfg->gran_ms[j];
            cfg->gran_ms[j] = cfg->gran_ms[j - 1];
            cfg->gran_ms[j - 1] = t;
        }
    for (size_t j = 0; j < cfg->n_grans; j++) cfg->gran_retention[j] = 0;
    for (size_t i = 0; i < cfg->n_windows; i++) {
        iqp_window_spec *w = &cfg->windows[i];
        for (size_t j = 0; j < cfg->n_grans; j++)
            if (cfg->gran_ms[j] == w->gran_ms) {
                w->gran_index = (int)j;
                if (w->n_buckets > cfg->gran_retention[j]) cfg->gran_retention[j] = w->n_buckets;
            }
    }
}

/* The default features, their contexts resolved against cfg's segments.
 * -1 (with a message naming src) when a segment they use is not declared. */
static int default_feature_set(iqp_config *cfg, const char *src, char *err, size_t errlen) {
    cfg->n_features = COUNT_OF(default_features);
    for (size_t i = 0; i < cfg->n_features; i++) {
        iqp_feature_spec *f = &cfg->features[i];
        snprintf(f->name, IQP_NAME_MAX, "%s", default_features[i].name);
        f->dims = 0;
        for (size_t k = 0; k < COUNT_OF(default_features[i].context) && default_features[i].context[k]; k++) {
            int s = iqp_config_segment_index(cfg, default_features[i].context[k]);
            if (s < 0) {
                if (err) snprintf(err, errlen, "%s: the default features use segment \"%s\", which "
                                  "\"segments\" does not declare; list \"features\" too", src,
                                  default_features[i].context[k]);
                return -1;
            }
            f->dims |= 1u << s;
        }
    }
    return 0;
}

void iqp_config_defaults(iqp_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->n_actions = COUNT_OF(default_actions);
    for (size_t i = 0; i < cfg->n_actions; i++)
        snprintf(cfg->actions[i], IQP_NAME_MAX, "%s", default_actions[i]);
    cfg->n_segments = COUNT_OF(default_segments);
    for (size_t i = 0; i < cfg->n_segments; i++) {
        iqp_segment_spec *sg = &cfg->segments[i];
        snprintf(sg->name, IQP_NAME_MAX, "%s", default_segments[i].name);
        snprintf(sg->field, IQP_FIELD_MAX, "%s", default_segments[i].field);
        sg->normalizer = default_segments[i].normalizer;
    }
    default_feature_set(cfg, NULL, NULL, 0);
    cfg->n_windows = COUNT_OF(default_windows);
    for (size_t i = 0; i < cfg->n_windows; i++) {
        iqp_window_spec *w = &cfg->windows[i];
        snprintf(w->name, IQP_NAME_MAX, "%s", default_windows[i].name);
        w->length_ms = default_windows[i].length_ms;
        w->gran_ms = default_windows[i].gran_ms;
        w->n_buckets = w->length_ms / w->gran_ms;
    }
    derive_granularities(cfg);
    cfg->limits.max_event_bytes = 1u << 20;
    cfg->limits.max_items = 10000;
    cfg->limits.max_string_bytes = 4096;
    cfg->dedup_horizon_ms = DAY_MS;
    cfg->max_future_skew_ms = 300000;
    cfg->flush_events = 200000;
    cfg->store.write_buffer_mb = 64;
    cfg->store.l0_compaction_trigger = 8;
    cfg->store.block_cache_mb = 64;
    cfg->store.background_jobs = 2;
    cfg->store.counts_universal = 1;
    cfg->store.dedup_l0_compaction_trigger = 2;
    cfg->store.dedup_write_buffer_mb = 8;
}

/* ---- durations ----------------------------------------------------------- */

int iqp_parse_duration(const char *text, int64_t *ms) {
    static const struct {
        const char *suffix;
        int64_t ms;
    } units[] = {{"ms", 1},          {"s", 1000},       {"m", 60000},
                 {"h", HOUR_MS},     {"d", DAY_MS},     {"w", 7 * DAY_MS}};
    if (!text || !*text) return -1;
    char *end;
    errno = 0;
    long long n = strtoll(text, &end, 10);
    if (errno || end == text || n < 0 || text[0] == '-' || text[0] == '+') return -1;
    if (*end == '\0') { *ms = n; return 0; }
    for (size_t i = 0; i < COUNT_OF(units); i++)
        if (strcmp(end, units[i].suffix) == 0) {
            if (n > INT64_MAX / units[i].ms) return -1;
            *ms = n * units[i].ms;
            return 0;
        }
    return -1;
}

/* ---- JSON loading -------------------------------------------------------- */

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

/* s[0..n) is made of [A-Za-z0-9_.-] only. */
static int name_chars(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

int iqp_config_valid_name(const char *s, size_t n) {
    return n > 0 && n < IQP_NAME_MAX && name_chars(s, n);
}

/* Every key of obj must be in known (NULL-terminated): the first that is
 * not fails with its JSON path, e.g. unknown key "windows[1].lenght".
 * path is the object's own path ("" for the root). */
static int check_keys(json_t *obj, const char *const *known, const char *path, const char *src,
                      char *err, size_t errlen) {
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        const char *const *k = known;
        while (*k && strcmp(*k, key) != 0) k++;
        if (!*k) FAIL("%s: unknown key \"%s%s%s\"", src, path, *path ? "." : "", key);
    }
    return 0;
}

/* A section that is an array of 1..max objects ("features", "windows",
 * "segments"). */
static int check_object_array(json_t *arr, const char *key, size_t max, const char *src, char *err,
                              size_t errlen) {
    if (!json_is_array(arr) || json_array_size(arr) == 0 || json_array_size(arr) > max)
        FAIL("%s: \"%s\" must be an array of 1..%zu objects", src, key, max);
    return 0;
}

static int reserved_action_name(const char *name) {
    static const char *reserved[] = {"feature", "window", "context", "item",
                                     "context_count", "impression", "engaged"};
    for (size_t k = 0; k < COUNT_OF(reserved); k++)
        if (strcmp(name, reserved[k]) == 0) return 1;
    return strncmp(name, "iqp_", 4) == 0;
}

static int parse_actions(iqp_config *cfg, json_t *arr, const char *src, char *err, size_t errlen) {
    if (!json_is_array(arr) || json_array_size(arr) == 0 || json_array_size(arr) > IQP_MAX_ACTIONS)
        FAIL("%s: \"actions\" must be an array of 1..%d names", src, IQP_MAX_ACTIONS);
    cfg->n_actions = 0;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        const char *name = json_string_value(v);
        if (!name || !iqp_config_valid_name(name, strlen(name)))
            FAIL("%s: actions[%zu] must be a name of 1..%d characters [A-Za-z0-9_.-]", src, i,
                 IQP_NAME_MAX - 1);
        if (iqp_config_action_index(cfg, name, strlen(name)) >= 0)
            FAIL("%s: actions[%zu] \"%s\" is listed twice", src, i, name);
        if (reserved_action_name(name))
            FAIL("%s: actions[%zu] \"%s\" would clash with a lookup output key (feature, window, "
                 "context, item, context_count, impression, engaged, iqp_*)", src, i, name);
        snprintf(cfg->actions[cfg->n_actions++], IQP_NAME_MAX, "%s", name);
    }
    return 0;
}

/* A feature's context: distinct names of declared segments. */
static int parse_dims(const iqp_config *cfg, json_t *ctx, unsigned *dims) {
    *dims = 0;
    if (!json_is_array(ctx) || json_array_size(ctx) == 0) return -1;
    size_t i;
    json_t *v;
    json_array_foreach(ctx, i, v) {
        const char *s = json_string_value(v);
        int k = s ? iqp_config_segment_index(cfg, s) : -1;
        if (k < 0 || (*dims & (1u << k))) return -1;
        *dims |= 1u << k;
    }
    return 0;
}

/* "seg1", "seg2", ... of cfg's segments, for messages. */
static void segment_list(const iqp_config *cfg, char *out, size_t cap) {
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < cfg->n_segments && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s\"%s\"", i ? ", " : "", cfg->segments[i].name);
}

/* ---- segments ------------------------------------------------------------ */

static int valid_field(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= IQP_FIELD_MAX || s[0] == '.' || s[n - 1] == '.' || strstr(s, "..")) return 0;
    return name_chars(s, n);
}

static int parse_normalizer(const char *s, iqp_normalizer *out) {
    for (int k = 0; s && k < IQP_NORM__COUNT; k++)
        if (strcmp(s, normalizer_names[k]) == 0) return *out = (iqp_normalizer)k, 0;
    return -1;
}

/* An enum segment's "values" and "fallback". */
static int parse_enum(iqp_segment_spec *sg, json_t *v, const char *path, const char *src, char *err,
                      size_t errlen) {
    json_t *vals = json_object_get(v, "values"), *x;
    size_t k;
    if (!json_is_array(vals) || json_array_size(vals) == 0 || json_array_size(vals) > IQP_MAX_ENUM_VALUES)
        FAIL("%s: %s.values must be an array of 1..%d names (an enum segment)", src, path, IQP_MAX_ENUM_VALUES);
    json_array_foreach(vals, k, x) {
        const char *s = json_string_value(x);
        if (!s || !iqp_config_valid_name(s, strlen(s)))
            FAIL("%s: %s.values[%zu] must be a name of 1..%d characters [A-Za-z0-9_.-]", src, path, k,
                 IQP_NAME_MAX - 1);
        for (size_t j = 0; j < k; j++)
            if (strcasecmp(sg->values[j], s) == 0) FAIL("%s: %s.values[%zu] \"%s\" is listed twice", src, path, k, s);
        snprintf(sg->values[sg->n_values++], IQP_NAME_MAX, "%s", s);
    }
    return 0;
}

/* A bucket segment's "bounds": ascending integers. */
static int parse_bounds(iqp_segment_spec *sg, json_t *v, const char *path, const char *src, char *err,
                        size_t errlen) {
    json_t *b = json_object_get(v, "bounds"), *x;
    size_t k;
    if (!json_is_array(b) || json_array_size(b) == 0 || json_array_size(b) > IQP_MAX_BUCKET_BOUNDS)
        FAIL("%s: %s.bounds must be an array of 1..%d ascending integers (a bucket segment)", src, path,
             IQP_MAX_BUCKET_BOUNDS);
    json_array_foreach(b, k, x) {
        json_int_t n = json_is_integer(x) ? json_integer_value(x) : 0;
        if (!json_is_integer(x) || n < -IQP_BUCKET_BOUND_MAX || n > IQP_BUCKET_BOUND_MAX ||
            (k && n <= sg->bounds[k - 1]))
            FAIL("%s: %s.bounds[%zu] must be an integer in [-%lld, %lld], above the one before", src, path,
                 k, IQP_BUCKET_BOUND_MAX, IQP_BUCKET_BOUND_MAX);
        sg->bounds[sg->n_bounds++] = n;
    }
    return 0;
}

/* Export rows name their columns by segment; these are taken. */
static int reserved_segment_name(const char *name) {
    static const char *reserved[] = {"item", "request_id", "position", "ts"};
    for (size_t k = 0; k < COUNT_OF(reserved); k++)
        if (strcmp(name, reserved[k]) == 0) return 1;
    return strncmp(name, "label_", 6) == 0;
}

static int parse_segment(iqp_config *cfg, iqp_segment_spec *sg, json_t *v, size_t i, const char *src,
                         char *err, size_t errlen) {
    static const char *const known[] = {"name", "field", "normalizer", "values", "bounds", "fallback", NULL};
    char path[32];
    snprintf(path, sizeof path, "segments[%zu]", i);
    if (!json_is_object(v)) FAIL("%s: %s must be an object", src, path);
    if (check_keys(v, known, path, src, err, errlen)) return -1;
    const char *name = json_string_value(json_object_get(v, "name"));
    const char *field = json_string_value(json_object_get(v, "field"));
    const char *norm = json_string_value(json_object_get(v, "normalizer"));
    json_t *fb = json_object_get(v, "fallback");
    memset(sg, 0, sizeof *sg);
    if (!name || !iqp_config_valid_name(name, strlen(name)) || reserved_segment_name(name))
        FAIL("%s: %s.name is missing or invalid (1..%d characters [A-Za-z0-9_.-]; not item, request_id, "
             "position, ts, which name export columns)", src, path, IQP_NAME_MAX - 1);
    if (iqp_config_segment_index(cfg, name) >= 0) FAIL("%s: %s \"%s\" is listed twice", src, path, name);
    if (!valid_field(field))
        FAIL("%s: %s.field must be the event field's dotted path, like \"user.device\"", src, path);
    if (parse_normalizer(norm, &sg->normalizer) < 0)
        FAIL("%s: %s.normalizer must be one of \"query\", \"country\", \"gender\", \"enum\", \"bucket\"",
             src, path);
    if (sg->normalizer == IQP_NORM_QUERY && strcmp(field, "query") != 0)
        FAIL("%s: %s: the query normalizer reads the event's \"query\" field only", src, path);
    if (sg->normalizer != IQP_NORM_QUERY && strcmp(name, "query") == 0)
        FAIL("%s: %s: a segment named \"query\" must use the query normalizer", src, path);
    int has_fallback = sg->normalizer == IQP_NORM_ENUM || sg->normalizer == IQP_NORM_BUCKET;
    if (sg->normalizer == IQP_NORM_ENUM && parse_enum(sg, v, path, src, err, errlen)) return -1;
    if (sg->normalizer == IQP_NORM_BUCKET && parse_bounds(sg, v, path, src, err, errlen)) return -1;
    if (sg->normalizer != IQP_NORM_ENUM && json_object_get(v, "values"))
        FAIL("%s: %s.values belongs to an enum segment only", src, path);
    if (sg->normalizer != IQP_NORM_BUCKET && json_object_get(v, "bounds"))
        FAIL("%s: %s.bounds belongs to a bucket segment only", src, path);
    if (fb && (!has_fallback || !json_is_string(fb) ||
               !iqp_config_valid_name(json_string_value(fb), json_string_length(fb))))
        FAIL("%s: %s.fallback must be a name, and only an enum or bucket segment has one", src, path);
    if (has_fallback) snprintf(sg->fallback, IQP_NAME_MAX, "%s", fb ? json_string_value(fb) : "unknown");
    snprintf(sg->name, IQP_NAME_MAX, "%s", name);
    snprintf(sg->field, IQP_FIELD_MAX, "%s", field);
    return 0;
}

static int parse_segments(iqp_config *cfg, json_t *arr, const char *src, char *err, size_t errlen) {
    if (check_object_array(arr, "segments", IQP_MAX_SEGMENTS, src, err, errlen)) return -1;
    cfg->n_segments = 0; /* each segment is checked against the ones before it */
    for (size_t i = 0; i < json_array_size(arr); i++, cfg->n_segments++)
        if (parse_segment(cfg, &cfg->segments[i], json_array_get(arr, i), i, src, err, errlen)) return -1;
    return 0;
}

static int parse_features(iqp_config *cfg, json_t *arr, const char *src, char *err, size_t errlen) {
    if (check_object_array(arr, "features", IQP_MAX_FEATURES, src, err, errlen)) return -1;
    cfg->n_features = 0;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        static const char *const known[] = {"name", "context", "entity", NULL};
        const char *name = json_string_value(json_object_get(v, "name"));
        json_t *entity = json_object_get(v, "entity");
        iqp_feature_spec *f = &cfg->features[cfg->n_features];
        char path[32];
        snprintf(path, sizeof path, "features[%zu]", i);
        if (!json_is_object(v)) FAIL("%s: %s must be an object", src, path);
        if (check_keys(v, known, path, src, err, errlen)) return -1;
        if (!name || !iqp_config_valid_name(name, strlen(name))) FAIL("%s: features[%zu].name is missing or invalid", src, i);
        if (iqp_config_feature_index(cfg, name) >= 0)
            FAIL("%s: features[%zu] \"%s\" is listed twice", src, i, name);
        if (parse_dims(cfg, json_object_get(v, "context"), &f->dims) < 0) {
            char names[IQP_MAX_SEGMENTS * (IQP_NAME_MAX + 4)];
            segment_list(cfg, names, sizeof names);
            FAIL("%s: features[%zu].context must be a non-empty array of distinct segment names (%s)",
                 src, i, names);
        }
        if (entity && !(json_is_string(entity) && strcmp(json_string_value(entity), "item") == 0))
            FAIL("%s: features[%zu].entity must be \"item\" (the only entity supported)", src, i);
        snprintf(f->name, IQP_NAME_MAX, "%s", name);
        cfg->n_features++;
    }
    return 0;
}

/* A window length or granularity: a duration string or integer ms. */
static int window_duration(json_t *v, int64_t *ms) {
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        *ms = json_integer_value(v);
        return 0;
    }
    if (json_is_string(v) && iqp_parse_duration(json_string_value(v), ms) == 0 && *ms > 0) return 0;
    return -1;
}

static int parse_window(iqp_window_spec *w, json_t *v, size_t i, const char *src, char *err,
                        size_t errlen) {
    static const char *const known[] = {"name", "length", "granularity", NULL};
    char path[32];
    snprintf(path, sizeof path, "windows[%zu]", i);
    if (!json_is_object(v)) FAIL("%s: %s must be an object", src, path);
    if (check_keys(v, known, path, src, err, errlen)) return -1;
    const char *name = json_string_value(json_object_get(v, "name"));
    if (!name || !iqp_config_valid_name(name, strlen(name))) FAIL("%s: windows[%zu].name is missing or invalid", src, i);
    if (window_duration(json_object_get(v, "length"), &w->length_ms) < 0)
        FAIL("%s: windows[%zu].length must be a duration like \"7d\"", src, i);
    if (window_duration(json_object_get(v, "granularity"), &w->gran_ms) < 0)
        FAIL("%s: windows[%zu].granularity must be a duration like \"1h\"", src, i);
    if (w->length_ms % w->gran_ms != 0)
        FAIL("%s: windows[%zu] (\"%s\"): length is not a whole number of granularity buckets",
             src, i, name);
    w->n_buckets = w->length_ms / w->gran_ms;
    if (w->n_buckets > 100000) FAIL("%s: windows[%zu] (\"%s\") has more than 100000 buckets", src, i, name);
    snprintf(w->name, IQP_NAME_MAX, "%s", name);
    return 0;
}

static int parse_windows(iqp_config *cfg, json_t *arr, const char *src, char *err, size_t errlen) {
    if (check_object_array(arr, "windows", IQP_MAX_WINDOWS, src, err, errlen)) return -1;
    cfg->n_windows = 0;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (parse_window(&cfg->windows[i], v, i, src, err, errlen) < 0) return -1;
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->windows[j].name, cfg->windows[i].name) == 0)
                FAIL("%s: windows[%zu] \"%s\" is listed twice", src, i, cfg->windows[i].name);
        cfg->n_windows++;
    }
    size_t ngran = 0;
    int64_t seen[IQP_MAX_WINDOWS];
    for (i = 0; i < cfg->n_windows; i++) {
        size_t j = 0;
        while (j < ngran && seen[j] != cfg->windows[i].gran_ms) j++;
        if (j == ngran) seen[ngran++] = cfg->windows[i].gran_ms;
    }
    if (ngran > IQP_MAX_GRANS) FAIL("%s: more than %d distinct granularities", src, IQP_MAX_GRANS);
    derive_granularities(cfg);
    return 0;
}

static int parse_size(json_t *obj, const char *key, size_t lo, size_t hi, size_t *out,
                      const char *src, char *err, size_t errlen) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)lo ||
        (uint64_t)json_integer_value(v) > hi)
        FAIL("%s: \"%s\" must be an integer in [%zu, %zu]", src, key, lo, hi);
    *out = (size_t)json_integer_value(v);
    return 0;
}

static int parse_limits(iqp_config *cfg, json_t *obj, const char *src, char *err, size_t errlen) {
    static const char *const known[] = {"max_event_bytes", "max_items", "max_string_bytes", NULL};
    if (!json_is_object(obj)) FAIL("%s: \"limits\" must be an object", src);
    if (check_keys(obj, known, "limits", src, err, errlen)) return -1;
    if (parse_size(obj, "max_event_bytes", 64, 64u << 20, &cfg->limits.max_event_bytes, src, err, errlen) ||
        parse_size(obj, "max_items", 1, 1000000, &cfg->limits.max_items, src, err, errlen) ||
        parse_size(obj, "max_string_bytes", 16, 16384, &cfg->limits.max_string_bytes, src, err, errlen))
        return -1;
    return 0;
}

static int parse_store_tuning(iqp_config *cfg, json_t *obj, const char *src, char *err,
                              size_t errlen) {
    static const char *const known[] = {"write_buffer_mb", "l0_compaction_trigger", "block_cache_mb",
                                        "background_jobs", "counts_compaction",
                                        "dedup_l0_compaction_trigger", "dedup_write_buffer_mb", NULL};
    iqp_store_tuning *t = &cfg->store;
    if (!json_is_object(obj)) FAIL("%s: \"store\" must be an object", src);
    if (check_keys(obj, known, "store", src, err, errlen)) return -1;
    if (parse_size(obj, "write_buffer_mb", 1, 4096, &t->write_buffer_mb, src, err, errlen) ||
        parse_size(obj, "l0_compaction_trigger", 1, 64, &t->l0_compaction_trigger, src, err, errlen) ||
        parse_size(obj, "block_cache_mb", 0, 65536, &t->block_cache_mb, src, err, errlen) ||
        parse_size(obj, "background_jobs", 1, 64, &t->background_jobs, src, err, errlen) ||
        parse_size(obj, "dedup_l0_compaction_trigger", 1, 64, &t->dedup_l0_compaction_trigger, src,
                   err, errlen) ||
        parse_size(obj, "dedup_write_buffer_mb", 1, 4096, &t->dedup_write_buffer_mb, src, err, errlen))
        return -1;
    json_t *style = json_object_get(obj, "counts_compaction");
    if (style) {
        const char *s = json_is_string(style) ? json_string_value(style) : "";
        if (strcmp(s, "universal") != 0 && strcmp(s, "level") != 0)
            FAIL("%s: \"counts_compaction\" must be \"universal\" or \"level\"", src);
        t->counts_universal = strcmp(s, "universal") == 0;
    }
    return 0;
}

static int parse_duration_key(json_t *root, const char *key, int64_t *out, const char *src,
                              char *err, size_t errlen) {
    json_t *v = json_object_get(root, key);
    if (!v) return 0;
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_string(v) && iqp_parse_duration(json_string_value(v), out) == 0) return 0;
    FAIL("%s: \"%s\" must be a duration like \"24h\" or a number of milliseconds", src, key);
}

static int check_at_most(json_t *root, const char *key, int64_t v, int64_t max, const char *src,
                         char *err, size_t errlen) {
    (void)root;
    if (v > max) FAIL("%s: \"%s\" must be at most %lld ms", src, key, (long long)max);
    return 0;
}

static const char *const known_keys[] = {"layout_version", "actions",       "segments", "features", "windows",
                                         "limits",        "dedup_horizon",      "max_future_skew_ms",
                                         "flush_events",  "kafka",              "stream",
                                         "redis",         "metrics",            "store",
                                         NULL};

static int check_layout_version(json_t *v, const char *src, char *err, size_t errlen) {
    if (!v || (json_is_integer(v) && json_integer_value(v) == IQP_LAYOUT_VERSION)) return 0;
    char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(err, errlen, "%s: \"layout_version\" %.40s is not supported (this iqp reads layout_version %d)",
             src, text ? text : "?", IQP_LAYOUT_VERSION);
    free(text);
    return -1;
}

/* The "metrics" section belongs to `iqp stream` (cli/stream.c reads it),
 * but its shape is checked here so every command refuses a misspelt key. */
static int check_metrics_section(json_t *v, const char *src, char *err, size_t errlen) {
    static const char *const known[] = {"listen", NULL};
    if (!v) return 0;
    if (!json_is_object(v)) FAIL("%s: \"metrics\" must be an object like {\"listen\": \"127.0.0.1:9464\"}", src);
    if (check_keys(v, known, "metrics", src, err, errlen)) return -1;
    json_t *l = json_object_get(v, "listen");
    if (l && !json_is_string(l)) FAIL("%s: \"metrics.listen\" must be a string \"HOST:PORT\" or \"off\"", src);
    return 0;
}

static int parse_root(iqp_config *cfg, json_t *root, const char *src, char *err, size_t errlen) {
    json_t *v;
    if (check_keys(root, known_keys, "", src, err, errlen) ||
        check_layout_version(json_object_get(root, "layout_version"), src, err, errlen) ||
        check_metrics_section(json_object_get(root, "metrics"), src, err, errlen))
        return -1;
    if ((v = json_object_get(root, "actions")) && parse_actions(cfg, v, src, err, errlen)) return -1;
    if ((v = json_object_get(root, "segments")) && parse_segments(cfg, v, src, err, errlen)) return -1;
    if ((v = json_object_get(root, "features")) && parse_features(cfg, v, src, err, errlen)) return -1;
    if (json_object_get(root, "segments") && !v && default_feature_set(cfg, src, err, errlen)) return -1;
    if ((v = json_object_get(root, "windows")) && parse_windows(cfg, v, src, err, errlen)) return -1;
    if ((v = json_object_get(root, "limits")) && parse_limits(cfg, v, src, err, errlen)) return -1;
    if ((v = json_object_get(root, "store")) && parse_store_tuning(cfg, v, src, err, errlen)) return -1;
    if (parse_duration_key(root, "dedup_horizon", &cfg->dedup_horizon_ms, src, err, errlen) ||
        parse_duration_key(root, "max_future_skew_ms", &cfg->max_future_skew_ms, src, err, errlen) ||
        check_at_most(root, "max_future_skew_ms", cfg->max_future_skew_ms, 366 * DAY_MS, src, err, errlen) ||
        check_at_most(root, "dedup_horizon", cfg->dedup_horizon_ms, 3660 * DAY_MS, src, err, errlen) ||
        parse_size(root, "flush_events", 1, 100000000, &cfg->flush_events, src, err, errlen))
        return -1;
    return 0;
}

int iqp_config_parse(iqp_config *cfg, const char *text, const char *src, char *err, size_t errlen) {
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) FAIL("%s:%d:%d: %s: %s", src, jerr.line, jerr.column,
                    json_error_code(&jerr) == json_error_duplicate_key ? "a key is given twice" : "invalid JSON",
                    jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        FAIL("%s: the config must be a JSON object", src);
    }
    iqp_config tmp = *cfg;
    int rc = parse_root(&tmp, root, src, err, errlen);
    json_decref(root);
    if (rc == 0) *cfg = tmp;
    return rc;
}

int iqp_config_load(iqp_config *cfg, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) FAIL("cannot open config %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0, len = 0, n;
    char chunk[8192];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); FAIL("config %s: out of memory", path); }
            buf = nb;
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    int rerr = ferror(f);
    fclose(f);
    if (rerr) { free(buf); FAIL("cannot read config %s", path); }
    if (!buf) FAIL("config %s is empty", path);
    buf[len] = '\0';
    int rc = iqp_config_parse(cfg, buf, path, err, errlen);
    free(buf);
    return rc;
}

/* ---- lookups ------------------------------------------------------------- */

int iqp_config_action_index(const iqp_config *cfg, const char *name, size_t len) {
    for (size_t i = 0; i < cfg->n_actions; i++)
        if (strlen(cfg->actions[i]) == len && memcmp(cfg->actions[i], name, len) == 0) return (int)i;
    return -1;
}

int iqp_config_segment_index(const iqp_config *cfg, const char *name) {
    for (size_t i = 0; i < cfg->n_segments; i++)
        if (strcmp(cfg->segments[i].name, name) == 0) return (int)i;
    return -1;
}

int iqp_config_feature_index(const iqp_config *cfg, const char *name) {
    for (size_t i = 0; i < cfg->n_features; i++)
        if (strcmp(cfg->features[i].name, name) == 0) return (int)i;
    return -1;
}

/* ---- layout fingerprint -------------------------------------------------- */

/* A feature's context: its segment names in segment order. */
static json_t *dims_json(const iqp_config *cfg, unsigned dims) {
    json_t *a = json_array();
    for (size_t s = 0; s < cfg->n_segments; s++)
        if (dims & (1u << s)) json_array_append_new(a, json_string(cfg->segments[s].name));
    return a;
}

static json_t *segment_json(const iqp_segment_spec *sg) {
    json_t *o = json_pack("{s:s, s:s, s:s}", "name", sg->name, "field", sg->field, "normalizer",
                          normalizer_names[sg->normalizer]);
    if (sg->normalizer == IQP_NORM_ENUM) {
        json_t *a = json_array();
        for (size_t k = 0; k < sg->n_values; k++) json_array_append_new(a, json_string(sg->values[k]));
        json_object_set_new(o, "values", a);
    }
    if (sg->normalizer == IQP_NORM_BUCKET) {
        json_t *a = json_array();
        for (size_t k = 0; k < sg->n_bounds; k++) json_array_append_new(a, json_integer(sg->bounds[k]));
        json_object_set_new(o, "bounds", a);
    }
    if (sg->normalizer == IQP_NORM_ENUM || sg->normalizer == IQP_NORM_BUCKET)
        json_object_set_new(o, "fallback", json_string(sg->fallback));
    return o;
}

static json_t *segments_json(const iqp_config *cfg) {
    json_t *a = json_array();
    for (size_t s = 0; s < cfg->n_segments; s++) json_array_append_new(a, segment_json(&cfg->segments[s]));
    return a;
}

char *iqp_config_layout_json(const iqp_config *cfg) {
    json_t *root = json_object(), *acts = json_array(), *feats = json_array(), *wins = json_array();
    json_t *segs = segments_json(cfg);
    for (size_t i = 0; i < cfg->n_actions; i++) json_array_append_new(acts, json_string(cfg->actions[i]));
    for (size_t i = 0; i < cfg->n_features; i++)
        json_array_append_new(feats, json_pack("{s:s, s:o, s:s}", "name", cfg->features[i].name,
                                               "context", dims_json(cfg, cfg->features[i].dims),
                                               "entity", "item"));
    for (size_t i = 0; i < cfg->n_windows; i++)
        json_array_append_new(wins, json_pack("{s:s, s:I, s:I}", "name", cfg->windows[i].name,
                                              "length", (json_int_t)cfg->windows[i].length_ms,
                                              "granularity", (json_int_t)cfg->windows[i].gran_ms));
    json_object_set_new(root, "layout_version", json_integer(IQP_LAYOUT_VERSION));
    json_object_set_new(root, "actions", acts);
    json_object_set_new(root, "segments", segs);
    json_object_set_new(root, "features", feats);
    json_object_set_new(root, "windows", wins);
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    return s;
}

/* Appends "; <text>" (or "<text>" when msg is empty) to msg. */
static void add_diff(char *msg, size_t msglen, const char *text) {
    size_t n = strlen(msg);
    if (n + 3 >= msglen) return;
    snprintf(msg + n, msglen - n, "%s%s", n ? "; " : "", text);
}

/* Compares two JSON arrays of objects keyed by "name" (or of strings). */
static void diff_named(const char *what, json_t *stored, json_t *now, char *msg, size_t msglen) {
    char line[512];
    char *s = json_dumps(stored, JSON_COMPACT | JSON_PRESERVE_ORDER);
    char *c = json_dumps(now, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if ((s == NULL) != (c == NULL) || (s && c && strcmp(s, c) != 0)) {
        snprintf(line, sizeof line, "%s differ (store: %.200s; config: %.200s)", what, s ? s : "(none)",
                 c ? c : "(none)");
        add_diff(msg, msglen, line);
    }
    free(s);
    free(c);
}

int iqp_config_layout_diff(const char *stored, const iqp_config *cfg, char *msg, size_t msglen) {
    msg[0] = '\0';
    json_t *old = json_loads(stored, 0, NULL);
    if (!old) {
        snprintf(msg, msglen, "the store's layout record is not valid JSON");
        return -1;
    }
    char *now_text = iqp_config_layout_json(cfg);
    json_t *now = json_loads(now_text, 0, NULL);
    free(now_text);
    static const char *sections[] = {"layout_version", "actions", "segments", "features", "windows"};
    if (!json_object_get(old, "segments")) { /* written before segments were data */
        iqp_config defaults;
        iqp_config_defaults(&defaults);
        json_object_set_new(old, "segments", segments_json(&defaults));
    }
    json_t *ver = json_object_get(old, "layout_version");
    if (!json_equal(ver, json_object_get(now, "layout_version"))) {
        char *v = ver ? json_dumps(ver, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        char line[512];
        snprintf(line, sizeof line, "the store was written by another iqp version (layout_version %.20s; "
                 "this iqp reads and writes %d: another format of counters and dedup markers); "
                 "rebuild it: count the event logs into a new store with `iqp backfill`",
                 v ? v : "(none)", IQP_LAYOUT_VERSION);
        free(v);
        add_diff(msg, msglen, line);
    }
    for (size_t i = 0; i < COUNT_OF(sections); i++)
        diff_named(sections[i], json_object_get(old, sections[i]), json_object_get(now, sections[i]),
                   msg, msglen);
    json_decref(old);
    json_decref(now);
    return msg[0] ? 1 : 0;
}

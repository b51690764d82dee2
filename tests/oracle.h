/* oracle.h -- an independent, brute-force model of iqp's counting rules.
 *
 * The end-to-end test compares every value `iqp lookup` prints with this
 * model. It is written apart from aggregator/, schemas/ and store/ on
 * purpose: it links none of them, only jansson, utf8proc and uthash, and it
 * follows README.md "Exact counting rules" as literally as it can, with the
 * default configuration hard-coded (see oracle.c for the details).
 *
 * Usage: oracle_new(), oracle_load_file() for every log in the order the
 * product ingested them, then oracle_lookup() for any (context, items,
 * as_of). Plain JSONL only; the test feeds the uncompressed twin of every
 * compressed file.
 */
#ifndef IQP_TEST_ORACLE_H
#define IQP_TEST_ORACLE_H

#include <stddef.h>
#include <stdint.h>

/* The default configuration (DESIGN.md), in config order. */
#define ORACLE_N_ACTIONS 6
#define ORACLE_N_FEATURES 5
#define ORACLE_N_WINDOWS 4
#define ORACLE_N_GRANS 2
#define ORACLE_N_COUNTERS (2 + ORACLE_N_ACTIONS) /* impression, engaged, actions */

enum { ORACLE_DIM_QUERY = 1, ORACLE_DIM_COUNTRY = 2, ORACLE_DIM_GENDER = 4 };

extern const char *const oracle_action_names[ORACLE_N_ACTIONS];
extern const char *const oracle_feature_names[ORACLE_N_FEATURES];
extern const unsigned oracle_feature_dims[ORACLE_N_FEATURES];
extern const char *const oracle_window_names[ORACLE_N_WINDOWS];

typedef struct oracle oracle;

/* Counts of one (feature, window, item) as lookup prints them. */
typedef struct oracle_counts {
    int64_t context_count;
    int64_t c[ORACLE_N_COUNTERS]; /* [0] impression [1] engaged [2+i] action i */
} oracle_counts;

/* One rejected line: where it was and the code the oracle would give. */
typedef struct oracle_invalid {
    char *source;
    uint64_t line_no;
    const char *code;
} oracle_invalid;

/* now_ms is the wall clock the future-event rule is measured against. */
oracle *oracle_new(int64_t now_ms);
void oracle_free(oracle *o);

/* Feeds every line of a plain JSONL file in order. Returns 0, or -1 when the
 * file cannot be read. */
int oracle_load_file(oracle *o, const char *path);

/* Feeds one line (without its '\n'); line_no is 1-based within source. */
void oracle_feed_line(oracle *o, const char *line, size_t len, const char *source,
                      uint64_t line_no);

/* Tallies of what happened to the lines fed so far. */
typedef struct oracle_stats {
    uint64_t lines;         /* non-empty lines */
    uint64_t invalid;       /* dead-lettered (including future events) */
    uint64_t duplicate;     /* redelivered event_id, or an action key repeat */
    uint64_t late;          /* every cell before retention */
    uint64_t impressions;   /* counted */
    uint64_t actions;       /* counted (new key or moved earlier) */
    uint64_t moved;         /* action or engaged keys moved to an earlier ts */
} oracle_stats;

oracle_stats oracle_get_stats(const oracle *o);

/* Largest ts of any counted event; -1 when nothing was counted. */
int64_t oracle_watermark(const oracle *o);

size_t oracle_n_invalid(const oracle *o);
const oracle_invalid *oracle_get_invalid(const oracle *o, size_t i);

/* Normalization, written from the README rules. oracle_norm_query returns a
 * malloc'd string, or NULL when the query is invalid (bad UTF-8 or empty
 * after normalization). */
char *oracle_norm_query(const char *s, size_t len);
void oracle_norm_country(const char *s, size_t len, char out[3]); /* s may be NULL */
const char *oracle_norm_gender(const char *s, size_t len);        /* s may be NULL */

/* Distinct normalized queries of counted impressions, most frequent first
 * (ties by byte order). */
size_t oracle_n_queries(const oracle *o);
const char *oracle_query(const oracle *o, size_t i, uint64_t *impressions);

/* Distinct items seen (in impressions or actions of valid, not late events)
 * under query q, most often seen first (ties in order of first sight); *n
 * gets the count. NULL when q is unknown. Valid until the next feed. */
const char *const *oracle_query_items(const oracle *o, const char *q, size_t *n);

/* Distinct normalized countries of counted impressions, most frequent first. */
size_t oracle_n_countries(const oracle *o);
const char *oracle_country(const oracle *o, size_t i, uint64_t *impressions);

/* The brute-force lookup. query must be normalized; country and gender are
 * normalized values or NULL when not given (features that need them are then
 * skipped: applicable[f] = 0). out has ORACLE_N_FEATURES * ORACLE_N_WINDOWS *
 * n_items entries, index (f * ORACLE_N_WINDOWS + w) * n_items + i. */
void oracle_lookup(const oracle *o, const char *query, const char *country,
                   const char *gender, int64_t as_of, const char *const *items,
                   size_t n_items, int applicable[ORACLE_N_FEATURES], oracle_counts *out);

/* The measures libiqp gives one (item, feature, window) -- context_count,
 * the ORACLE_N_COUNTERS counters, then count / context_count of each (0
 * when context_count is 0) -- compared with o, or with NaN everywhere when
 * o is NULL (a feature the call's context cannot address): the index of
 * the first measure that differs, or -1 when every one is as expected. */
int oracle_measures_differ(const oracle_counts *o, const double *got);

/* ---- point in time (iqp export) ------------------------------------------ */

/* oracle_lookup over only the counted things whose ts is < before (an
 * impression, or an action or engaged key at the earliest ts it was seen
 * with): what a store holding exactly the events before `before` would
 * serve. Exact as long as no event was late or moved out of retention,
 * as in `iqp gen` output. */
void oracle_lookup_before(const oracle *o, const char *query, const char *country,
                          const char *gender, int64_t as_of, int64_t before,
                          const char *const *items, size_t n_items,
                          int applicable[ORACLE_N_FEATURES], oracle_counts *out);

/* One valid event (decoded, not future), kept when oracle_keep_events was
 * called before feeding. */
typedef struct oracle_event {
    int is_action;
    int counted;                /* changed a counter (not a duplicate, not late) */
    char *event_id, *request_id;
    char *query;                /* normalized */
    char country[3];
    const char *gender;
    const char *device;         /* "unknown" unless oracle_count_devices */
    int64_t ts;
    char **items;               /* impression: as listed; action: its one item */
    int64_t *positions;         /* impression: "pos", else the array index */
    size_t n_items;
    int action;                 /* action: index into oracle_action_names */
} oracle_event;

/* ---- the device segment --------------------------------------------------- */

/* Count a `device` segment from now on, as a config that declares
 * {"name": "device", "field": "user.device", "normalizer": "enum",
 *  "values": ["web", "ios", "android"], "fallback": "unknown"} after the
 * default segments does: user.device normalized (trimmed, ASCII case
 * folded; web | ios | android, anything else, null or missing: unknown)
 * and made part of the action and engaged keys. Without it every event's
 * device is "unknown" and keys are as before. Call before feeding. */
void oracle_count_devices(oracle *o);

/* Normalization of a device value (s may be NULL). */
const char *oracle_norm_device(const char *s, size_t len);

/* The brute-force lookup of one device feature: context (query, device)
 * or, with query NULL, (device) alone; counted things with ts < before
 * (INT64_MAX: all). out has ORACLE_N_WINDOWS * n_items entries, index
 * w * n_items + i. */
void oracle_lookup_device(const oracle *o, const char *query, const char *device, int64_t as_of,
                          int64_t before, const char *const *items, size_t n_items,
                          oracle_counts *out);

/* Keep every valid event fed from now on (memory: the whole input). */
void oracle_keep_events(oracle *o);
size_t oracle_n_events(const oracle *o);
const oracle_event *oracle_get_event(const oracle *o, size_t i);

#endif

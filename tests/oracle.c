/* oracle.c -- brute-force model of README.md "Exact counting rules".
 *
 * Design
 * ------
 * This file is the reference the end-to-end test trusts, so it is written to
 * be obviously right rather than fast, and it shares no code with the
 * product (no aggregator/, schemas/, store/, consumers/ or cli/ headers).
 *
 * Lines are processed one by one, in file order, exactly as a sequential
 * reading of the rules says:
 *
 *   1. Validation (rule 1): the line is decoded with jansson and checked
 *      field by field (DESIGN.md "Events", the JSON Schemas in schemas/); any
 *      failure, or a ts more than 5 minutes ahead of now_ms, makes the line
 *      invalid (dead-letter). Unknown extra fields are ignored.
 *   2. Normalization (rule 2) with utf8proc directly.
 *   3. Redelivery (rule 3): a set of the event_ids of counted events.
 *   4. Watermark and lateness (rule 6): the watermark is the largest ts of a
 *      counted event. For each granularity the retained buckets are the last
 *      N (hourly 24, daily 365) ending with the watermark's bucket; an event
 *      whose bucket is older than that for a granularity is not written
 *      there, and one that is too old for every granularity is late (it
 *      changes nothing and is not remembered).
 *   5. Counting (rules 4, 5): every counted thing is a "unit" that remembers,
 *      per granularity, the one bucket it currently counts in (or none):
 *        - an impression: +1 context_count and +1 impression per distinct item;
 *        - an action key (request_id, item, action, query, country, gender);
 *        - an engaged key (request_id, item, query, country, gender).
 *      A key seen again with a smaller ts moves to the bucket of that ts (or
 *      to none where that bucket is no longer retained); with a larger or
 *      equal ts it is a duplicate.
 *
 * A lookup (rules 8, 9) then scans every unit and sums those whose context
 * matches and whose bucket lies in the window [bucket(T) - n + 1, bucket(T)].
 * As long as T is at or after the watermark, every bucket a window reads is
 * still retained, so expiry never has to be modelled after the fact.
 *
 *   6. Dedup memory (rule 7): every remembered event id and key also
 *      remembers the watermark just after the event that (re)wrote it;
 *      an event forgets it when the watermark before that event is more
 *      than 24 h past it. A forgotten key seen again starts a new unit.
 */
#include "tests/oracle.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <utf8proc.h>
#include <uthash.h>

/* ------------------------------------------------------------------------ */
/* The default configuration.                                               */
/* ------------------------------------------------------------------------ */

const char *const oracle_action_names[ORACLE_N_ACTIONS] = {
    "click", "save", "closeup", "long_click", "download", "screenshot"};
const char *const oracle_feature_names[ORACLE_N_FEATURES] = {
    "q_item", "qc_item", "qg_item", "c_item", "g_item"};
const unsigned oracle_feature_dims[ORACLE_N_FEATURES] = {
    ORACLE_DIM_QUERY, ORACLE_DIM_QUERY | ORACLE_DIM_COUNTRY,
    ORACLE_DIM_QUERY | ORACLE_DIM_GENDER, ORACLE_DIM_COUNTRY, ORACLE_DIM_GENDER};
const char *const oracle_window_names[ORACLE_N_WINDOWS] = {"1d", "7d", "90d", "365d"};

#define HOUR_MS 3600000LL
#define DAY_MS 86400000LL
static const int64_t gran_ms[ORACLE_N_GRANS] = {HOUR_MS, DAY_MS};
static const int64_t gran_keep[ORACLE_N_GRANS] = {24, 365};
static const int window_gran[ORACLE_N_WINDOWS] = {0, 1, 1, 1};
static const int64_t window_buckets[ORACLE_N_WINDOWS] = {24, 7, 90, 365};

#define MAX_LINE_BYTES 1048576
#define MAX_ITEMS 10000
#define MAX_STRING_BYTES 4096
#define MAX_FUTURE_SKEW_MS 300000

#define NO_BUCKET INT64_MIN

/* ------------------------------------------------------------------------ */
/* Normalization.                                                           */
/* ------------------------------------------------------------------------ */

/* Officially assigned ISO 3166-1 alpha-2 codes (249). */
static const char *const iso_codes =
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI "
    "BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN "
    "CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK "
    "FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM "
    "HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN "
    "KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK "
    "ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP "
    "NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW "
    "SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF "
    "TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI "
    "VN VU WF WS YE YT ZA ZM ZW";

static int is_query_space(utf8proc_int32_t c) {
    if (c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r') return 1;
    if (c == 0x85 || c == 0x2028 || c == 0x2029) return 1;
    return utf8proc_category(c) == UTF8PROC_CATEGORY_ZS;
}

/* Copies the code points of s to a new string, dropping leading and trailing
 * white space and replacing each inner run with one U+0020. */
static char *collapse_spaces(const utf8proc_uint8_t *s, utf8proc_ssize_t len) {
    char *out = malloc((size_t)len + 1);
    size_t n = 0;
    int pending = 0;
    utf8proc_ssize_t i = 0;
    while (i < len) {
        utf8proc_int32_t c;
        utf8proc_ssize_t step = utf8proc_iterate(s + i, len - i, &c);
        if (step <= 0) { free(out); return NULL; }
        if (is_query_space(c)) {
            pending = n > 0;
        } else {
            if (pending) out[n++] = ' ';
            pending = 0;
            memcpy(out + n, s + i, (size_t)step);
            n += (size_t)step;
        }
        i += step;
    }
    out[n] = '\0';
    return out;
}

char *oracle_norm_query(const char *s, size_t len) {
    utf8proc_uint8_t *mapped = NULL;
    utf8proc_ssize_t m;
    char *out;

    if (len == 0) return NULL;
    m = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &mapped,
                     UTF8PROC_STABLE | UTF8PROC_COMPAT | UTF8PROC_COMPOSE |
                         UTF8PROC_CASEFOLD);
    if (m < 0) return NULL;
    out = collapse_spaces(mapped, m);
    free(mapped);
    if (out && out[0] == '\0') { free(out); out = NULL; }
    return out;
}

static int is_ascii_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Trims ASCII white space from both ends of [*s, *s + *len). */
static void trim_ascii(const char **s, size_t *len) {
    while (*len > 0 && is_ascii_space((*s)[0])) { (*s)++; (*len)--; }
    while (*len > 0 && is_ascii_space((*s)[*len - 1])) (*len)--;
}

static char ascii_upper(char c) { return (c >= 'a' && c <= 'z') ? (char)(c - 32) : c; }
static char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

void oracle_norm_country(const char *s, size_t len, char out[3]) {
    strcpy(out, "ZZ");
    if (s == NULL) return;
    trim_ascii(&s, &len);
    if (len != 2) return;
    char code[3] = {ascii_upper(s[0]), ascii_upper(s[1]), '\0'};
    for (const char *p = iso_codes; p[0] && p[1]; p += (p[2] ? 3 : 2)) {
        if (p[0] == code[0] && p[1] == code[1]) { strcpy(out, code); return; }
    }
}

/* Case-insensitive (ASCII) comparison of [s, s + len) with word. */
static int word_eq(const char *s, size_t len, const char *word) {
    if (strlen(word) != len) return 0;
    for (size_t i = 0; i < len; i++)
        if (ascii_lower(s[i]) != word[i]) return 0;
    return 1;
}

const char *oracle_norm_gender(const char *s, size_t len) {
    if (s == NULL) return "unknown";
    trim_ascii(&s, &len);
    if (word_eq(s, len, "female") || word_eq(s, len, "f") || word_eq(s, len, "woman"))
        return "female";
    if (word_eq(s, len, "male") || word_eq(s, len, "m") || word_eq(s, len, "man"))
        return "male";
    return "unknown";
}

/* ------------------------------------------------------------------------ */
/* State.                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct strid {          /* interned string -> dense id */
    char *s;
    int id;
    UT_hash_handle hh;
} strid;

typedef struct strset {         /* a set of strings (event ids, unit keys) */
    char *s;
    size_t unit;                /* for unit keys: index into o->units */
    int64_t written_wm;         /* watermark after the event that wrote it */
    UT_hash_handle hh;
} strset;

typedef struct pairset {        /* (query id, item id) -> times seen */
    int key[2];
    uint64_t count;
    size_t seq;                 /* order of first sight under the query */
    UT_hash_handle hh;
} pairset;

/* One counted thing; see the comment at the top. */
typedef struct unit {
    int counter;                /* -1 impression, else an oracle_counts.c index */
    int qid;
    char country[3];
    const char *gender;
    const char *device;
    int64_t ts;
    int64_t bucket[ORACLE_N_GRANS];
    int *items;                 /* impression: distinct item ids; key: one */
    size_t n_items;
} unit;

typedef struct query_info {
    uint64_t impressions;
    pairset **items;
    size_t n_items, cap;
    const char **item_names;    /* built on demand for oracle_query_items */
    uint64_t names_lines;       /* o->stats.lines when item_names was built */
} query_info;

struct oracle {
    int64_t now_ms;
    int64_t watermark;          /* -1: nothing counted yet */
    oracle_stats stats;

    strid *queries; char **query_names; query_info *qinfo; size_t n_queries;
    strid *items; char **item_names; size_t n_items;
    strid *countries; char **country_names; uint64_t *country_freq; size_t n_countries;
    pairset *query_items;

    strset *event_ids;
    strset *keys;
    unit *units; size_t n_units, cap_units;

    oracle_invalid *invalid; size_t n_invalid, cap_invalid;

    size_t *query_order, *country_order;   /* sorted views, built lazily */

    int keep_events;                        /* oracle_keep_events was called */
    int devices;                            /* oracle_count_devices was called */
    oracle_event *events; size_t n_events, cap_events;
};

/* A decoded, validated, normalized event. */
typedef struct event {
    int is_action;
    const char *event_id;
    const char *request_id;
    int64_t ts;
    char *query;
    char country[3];
    const char *gender;
    const char *device;
    char **items; size_t n_items;   /* impression: as listed; action: one */
    int action;
} event;

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) { perror("oracle"); abort(); }
    return q;
}

static char *xstrdup(const char *s) {
    char *d = strdup(s);
    if (!d) { perror("oracle"); abort(); }
    return d;
}

/* Returns the id of s in *table, adding it when add is set; -1 if absent. */
static int intern(strid **table, char ***names, size_t *n, const char *s, int add) {
    strid *e;
    HASH_FIND_STR(*table, s, e);
    if (e) return e->id;
    if (!add) return -1;
    e = calloc(1, sizeof *e);
    e->s = xstrdup(s);
    e->id = (int)*n;
    HASH_ADD_KEYPTR(hh, *table, e->s, strlen(e->s), e);
    *names = xrealloc(*names, (*n + 1) * sizeof **names);
    (*names)[(*n)++] = e->s;
    return e->id;
}

oracle *oracle_new(int64_t now_ms) {
    oracle *o = calloc(1, sizeof *o);
    o->now_ms = now_ms;
    o->watermark = -1;
    return o;
}

static void free_strids(strid **table) {
    strid *e, *tmp;
    HASH_ITER(hh, *table, e, tmp) { HASH_DEL(*table, e); free(e->s); free(e); }
}

static void free_strsets(strset **set) {
    strset *e, *tmp;
    HASH_ITER(hh, *set, e, tmp) { HASH_DEL(*set, e); free(e->s); free(e); }
}

void oracle_free(oracle *o) {
    if (!o) return;
    free_strids(&o->queries); free_strids(&o->items); free_strids(&o->countries);
    free(o->query_names); free(o->item_names); free(o->country_names);
    free(o->country_freq);
    for (size_t i = 0; i < o->n_queries; i++) {
        free(o->qinfo[i].items); free(o->qinfo[i].item_names);
    }
    free(o->qinfo);
    pairset *p, *ptmp;
    HASH_ITER(hh, o->query_items, p, ptmp) { HASH_DEL(o->query_items, p); free(p); }
    free_strsets(&o->event_ids); free_strsets(&o->keys);
    for (size_t i = 0; i < o->n_units; i++) free(o->units[i].items);
    free(o->units);
    for (size_t i = 0; i < o->n_invalid; i++) free(o->invalid[i].source);
    free(o->invalid);
    free(o->query_order); free(o->country_order);
    for (size_t i = 0; i < o->n_events; i++) {
        oracle_event *e = &o->events[i];
        free(e->event_id); free(e->request_id); free(e->query); free(e->positions);
        for (size_t k = 0; k < e->n_items; k++) free(e->items[k]);
        free(e->items);
    }
    free(o->events);
    free(o);
}

/* ------------------------------------------------------------------------ */
/* Decoding and validation (rule 1).                                        */
/* ------------------------------------------------------------------------ */

static void event_clear(event *ev) {
    free(ev->query);
    for (size_t i = 0; i < ev->n_items; i++) free(ev->items[i]);
    free(ev->items);
    memset(ev, 0, sizeof *ev);
}

/* A required, non-empty string field of at most MAX_STRING_BYTES. */
static const char *need_string(json_t *obj, const char *key, const char **code) {
    json_t *v = json_object_get(obj, key);
    if (!v) { *code = "missing_field"; return NULL; }
    if (!json_is_string(v)) { *code = "wrong_type"; return NULL; }
    if (json_string_length(v) > MAX_STRING_BYTES) { *code = "string_too_long"; return NULL; }
    if (json_string_length(v) == 0) { *code = "invalid_value"; return NULL; }
    return json_string_value(v);
}

/* An item: a non-empty string, an integer, or {id: string|integer, pos?: integer}.
 * Returns its id as a malloc'd string. */
static char *decode_item(json_t *v, const char **code) {
    char buf[32];
    if (json_is_object(v)) {
        json_t *pos = json_object_get(v, "pos");
        if (pos && !json_is_integer(pos)) { *code = "wrong_type"; return NULL; }
        if (pos && json_integer_value(pos) < 0) { *code = "invalid_value"; return NULL; }
        v = json_object_get(v, "id");
        if (!v) { *code = "missing_field"; return NULL; }
    }
    if (json_is_integer(v)) {
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return xstrdup(buf);
    }
    if (!json_is_string(v)) { *code = "wrong_type"; return NULL; }
    if (json_string_length(v) > MAX_STRING_BYTES) { *code = "string_too_long"; return NULL; }
    if (json_string_length(v) == 0) { *code = "invalid_value"; return NULL; }
    if (strlen(json_string_value(v)) != json_string_length(v)) { *code = "invalid_value"; return NULL; }
    return xstrdup(json_string_value(v));
}

/* user.country / user.gender: required, null or a string. Returns 0 and
 * sets *s (NULL for null), or -1. */
static int nullable_string(json_t *user, const char *key, const char **s, size_t *len,
                           const char **code) {
    json_t *v = json_object_get(user, key);
    *s = NULL; *len = 0;
    if (!v) { *code = "missing_field"; return -1; }
    if (json_is_null(v)) return 0;
    if (!json_is_string(v)) { *code = "wrong_type"; return -1; }
    if (json_string_length(v) > MAX_STRING_BYTES) { *code = "string_too_long"; return -1; }
    *s = json_string_value(v);
    *len = json_string_length(v);
    return 0;
}

const char *oracle_norm_device(const char *s, size_t len) {
    static const char *const devices[] = {"web", "ios", "android"};
    if (s == NULL) return "unknown";
    trim_ascii(&s, &len);
    for (size_t i = 0; i < 3; i++)
        if (word_eq(s, len, devices[i])) return devices[i];
    return "unknown";
}

/* user.device: optional; a string, else (null, missing, a number, ...)
 * unknown. Only read when devices are counted. */
static void decode_device(const oracle *o, json_t *root, event *ev) {
    json_t *v = json_object_get(json_object_get(root, "user"), "device");
    ev->device = "unknown";
    if (o->devices && json_is_string(v)) ev->device = oracle_norm_device(json_string_value(v), json_string_length(v));
}

static int decode_user(json_t *root, event *ev, const char **code) {
    json_t *user = json_object_get(root, "user");
    const char *s; size_t len;
    if (!user) { *code = "missing_field"; return -1; }
    if (!json_is_object(user)) { *code = "wrong_type"; return -1; }
    if (nullable_string(user, "country", &s, &len, code) < 0) return -1;
    oracle_norm_country(s, len, ev->country);
    if (nullable_string(user, "gender", &s, &len, code) < 0) return -1;
    ev->gender = oracle_norm_gender(s, len);
    return 0;
}

static int decode_query(json_t *root, event *ev, const char **code) {
    json_t *v = json_object_get(root, "query");
    if (!v) { *code = "missing_field"; return -1; }
    if (!json_is_string(v)) { *code = "wrong_type"; return -1; }
    if (json_string_length(v) > MAX_STRING_BYTES) { *code = "string_too_long"; return -1; }
    ev->query = oracle_norm_query(json_string_value(v), json_string_length(v));
    if (!ev->query) { *code = "invalid_value"; return -1; }
    return 0;
}

static int decode_items(json_t *root, event *ev, const char **code) {
    json_t *arr = json_object_get(root, "items");
    if (!arr) { *code = "missing_field"; return -1; }
    if (!json_is_array(arr)) { *code = "wrong_type"; return -1; }
    if (json_array_size(arr) > MAX_ITEMS) { *code = "too_many_items"; return -1; }
    ev->items = calloc(json_array_size(arr) + 1, sizeof *ev->items);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        char *id = decode_item(json_array_get(arr, i), code);
        if (!id) return -1;
        ev->items[ev->n_items++] = id;
    }
    return 0;
}

static int decode_action(json_t *root, event *ev, const char **code) {
    json_t *v = json_object_get(root, "item");
    if (!v) { *code = "missing_field"; return -1; }
    ev->items = calloc(1, sizeof *ev->items);
    ev->items[0] = decode_item(v, code);
    if (!ev->items[0]) return -1;
    ev->n_items = 1;
    const char *name = need_string(root, "action", code);
    if (!name) return -1;
    for (int i = 0; i < ORACLE_N_ACTIONS; i++)
        if (strcmp(name, oracle_action_names[i]) == 0) { ev->action = i; return 0; }
    *code = "unknown_action";
    return -1;
}

static int decode_common(json_t *root, event *ev, const char **code) {
    json_t *ts;
    if (!(ev->event_id = need_string(root, "event_id", code))) return -1;
    ts = json_object_get(root, "ts");
    if (!ts) { *code = "missing_field"; return -1; }
    if (!json_is_integer(ts)) { *code = "wrong_type"; return -1; }
    if (json_integer_value(ts) < 0) { *code = "invalid_value"; return -1; }
    ev->ts = json_integer_value(ts);
    if (!(ev->request_id = need_string(root, "request_id", code))) return -1;
    if (decode_query(root, ev, code) < 0) return -1;
    return decode_user(root, ev, code);
}

/* Returns 0 with ev filled (borrowing from root), or -1 with *code. */
static int decode_event(const oracle *o, json_t *root, event *ev, const char **code) {
    json_t *schema = json_object_get(root, "schema");
    if (!schema) { *code = "missing_field"; return -1; }
    if (!json_is_string(schema)) { *code = "wrong_type"; return -1; }
    if (strcmp(json_string_value(schema), "impression.v1") == 0) ev->is_action = 0;
    else if (strcmp(json_string_value(schema), "action.v1") == 0) ev->is_action = 1;
    else { *code = "unknown_schema"; return -1; }
    if (decode_common(root, ev, code) < 0) return -1;
    decode_device(o, root, ev);
    if ((ev->is_action ? decode_action : decode_items)(root, ev, code) < 0) return -1;
    if (ev->ts > o->now_ms + MAX_FUTURE_SKEW_MS) { *code = "future_event"; return -1; }
    return 0;
}

static void add_invalid(oracle *o, const char *source, uint64_t line_no, const char *code) {
    if (o->n_invalid == o->cap_invalid) {
        o->cap_invalid = o->cap_invalid ? 2 * o->cap_invalid : 64;
        o->invalid = xrealloc(o->invalid, o->cap_invalid * sizeof *o->invalid);
    }
    o->invalid[o->n_invalid].source = xstrdup(source);
    o->invalid[o->n_invalid].line_no = line_no;
    o->invalid[o->n_invalid].code = code;
    o->n_invalid++;
    o->stats.invalid++;
}

/* ------------------------------------------------------------------------ */
/* Counting (rules 3-6).                                                    */
/* ------------------------------------------------------------------------ */

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* The bucket ts counts in for granularity g, or NO_BUCKET when it is older
 * than what the store keeps behind the current watermark. */
static int64_t retained_bucket(const oracle *o, int g, int64_t ts) {
    int64_t b = floor_div(ts, gran_ms[g]);
    if (o->watermark < 0) return b;
    int64_t first = floor_div(o->watermark, gran_ms[g]) - gran_keep[g] + 1;
    return b < first ? NO_BUCKET : b;
}

static int is_late(const oracle *o, int64_t ts) {
    for (int g = 0; g < ORACLE_N_GRANS; g++)
        if (retained_bucket(o, g, ts) != NO_BUCKET) return 0;
    return 1;
}

static void set_buckets(const oracle *o, unit *u, int64_t ts) {
    u->ts = ts;
    for (int g = 0; g < ORACLE_N_GRANS; g++) u->bucket[g] = retained_bucket(o, g, ts);
}

static unit *new_unit(oracle *o, int counter, const event *ev, int qid) {
    if (o->n_units == o->cap_units) {
        o->cap_units = o->cap_units ? 2 * o->cap_units : 1024;
        o->units = xrealloc(o->units, o->cap_units * sizeof *o->units);
    }
    unit *u = &o->units[o->n_units++];
    memset(u, 0, sizeof *u);
    u->counter = counter;
    u->qid = qid;
    memcpy(u->country, ev->country, 3);
    u->gender = ev->gender;
    u->device = ev->device;
    set_buckets(o, u, ev->ts);
    return u;
}

static int item_id(oracle *o, const char *s) {
    return intern(&o->items, &o->item_names, &o->n_items, s, 1);
}

static int query_id(oracle *o, const char *q) {
    size_t before = o->n_queries;
    int id = intern(&o->queries, &o->query_names, &o->n_queries, q, 1);
    if (o->n_queries != before) {
        o->qinfo = xrealloc(o->qinfo, o->n_queries * sizeof *o->qinfo);
        memset(&o->qinfo[id], 0, sizeof *o->qinfo);
    }
    return id;
}

/* Counts a sighting of item under query (for choosing lookup items). */
static void note_query_item(oracle *o, int qid, int iid) {
    pairset *p;
    int key[2] = {qid, iid};
    query_info *qi = &o->qinfo[qid];
    HASH_FIND(hh, o->query_items, key, sizeof key, p);
    if (p) { p->count++; return; }
    p = calloc(1, sizeof *p);
    memcpy(p->key, key, sizeof key);
    p->count = 1;
    p->seq = qi->n_items;
    HASH_ADD(hh, o->query_items, key, sizeof p->key, p);
    if (qi->n_items == qi->cap) {
        qi->cap = qi->cap ? 2 * qi->cap : 16;
        qi->items = xrealloc(qi->items, qi->cap * sizeof *qi->items);
    }
    qi->items[qi->n_items++] = p;
}

static void note_country(oracle *o, const char *country) {
    size_t before = o->n_countries;
    int id = intern(&o->countries, &o->country_names, &o->n_countries, country, 1);
    if (o->n_countries != before) {
        o->country_freq = xrealloc(o->country_freq, o->n_countries * sizeof *o->country_freq);
        o->country_freq[id] = 0;
    }
    o->country_freq[id]++;
}

#define DEDUP_HORIZON_MS (24 * 3600000LL)

/* Rule 7, as the README says it: forgotten once the watermark (before the
 * event looking) is more than the horizon past the one it was written at. */
static int forgotten(const oracle *o, const strset *e) {
    return o->watermark >= 0 && e->written_wm < o->watermark - DEDUP_HORIZON_MS;
}

static int64_t watermark_with(const oracle *o, int64_t ts) {
    return ts > o->watermark ? ts : o->watermark;
}

static void remember_event_id(oracle *o, const event *ev) {
    strset *e;
    HASH_FIND_STR(o->event_ids, ev->event_id, e);
    if (!e) {
        e = calloc(1, sizeof *e);
        e->s = xstrdup(ev->event_id);
        HASH_ADD_KEYPTR(hh, o->event_ids, e->s, strlen(e->s), e);
    }
    e->written_wm = watermark_with(o, ev->ts);
}

static void count_impression(oracle *o, const event *ev) {
    int qid = query_id(o, ev->query);
    unit *u = new_unit(o, -1, ev, qid);
    u->items = calloc(ev->n_items + 1, sizeof *u->items);
    for (size_t i = 0; i < ev->n_items; i++) {
        int id = item_id(o, ev->items[i]);
        int seen = 0;
        for (size_t j = 0; j < u->n_items; j++) seen |= u->items[j] == id;
        if (!seen) u->items[u->n_items++] = id;
        note_query_item(o, qid, id);
    }
    o->qinfo[qid].impressions++;
    note_country(o, ev->country);
    o->stats.impressions++;
}

/* Counts the key (first sight, or moved to an earlier ts). Returns 1 when it
 * changed something, 0 when it is a duplicate. */
static int count_key(oracle *o, const event *ev, int counter, int qid, int iid) {
    char *key;
    strset *e;
    const char *act = counter >= 2 ? oracle_action_names[counter - 2] : "*engaged";
    if (asprintf(&key, "%zu:%s|%d|%s|%d|%s|%s%s%s", strlen(ev->request_id), ev->request_id,
                 iid, act, qid, ev->country, ev->gender, o->devices ? "|" : "",
                 o->devices ? ev->device : "") < 0)
        abort();
    HASH_FIND_STR(o->keys, key, e);
    if (!e || forgotten(o, e)) {
        unit *u = new_unit(o, counter, ev, qid);
        u->items = calloc(1, sizeof *u->items);
        u->items[0] = iid;
        u->n_items = 1;
        if (!e) {
            e = calloc(1, sizeof *e);
            e->s = key;
            HASH_ADD_KEYPTR(hh, o->keys, e->s, strlen(e->s), e);
        } else {
            free(key);          /* the old unit keeps its count */
        }
        e->unit = o->n_units - 1;
        e->written_wm = watermark_with(o, ev->ts);
        return 1;
    }
    free(key);
    if (ev->ts >= o->units[e->unit].ts) return 0;
    set_buckets(o, &o->units[e->unit], ev->ts);
    e->written_wm = watermark_with(o, ev->ts);
    o->stats.moved++;
    return 1;
}

static int count_action(oracle *o, const event *ev) {
    int qid = query_id(o, ev->query);
    int iid = item_id(o, ev->items[0]);
    int changed = count_key(o, ev, 2 + ev->action, qid, iid);
    changed |= count_key(o, ev, 1, qid, iid);
    note_query_item(o, qid, iid);
    if (changed) o->stats.actions++;
    else o->stats.duplicate++;
    return changed;
}

/* Returns 1 when the event changed a counter. */
static int count_event(oracle *o, const event *ev) {
    strset *seen;
    int counted;
    HASH_FIND_STR(o->event_ids, ev->event_id, seen);
    if (seen && !forgotten(o, seen)) { o->stats.duplicate++; return 0; }
    if (is_late(o, ev->ts)) { o->stats.late++; return 0; }
    if (ev->is_action) {
        counted = count_action(o, ev);
    } else {
        count_impression(o, ev);
        counted = 1;
    }
    if (!counted) return 0;
    remember_event_id(o, ev);
    if (ev->ts > o->watermark) o->watermark = ev->ts;
    return 1;
}

/* oracle_keep_events: a copy of a valid event; item positions are the
 * "pos" of {id, pos} items, else the index in the array. */
static void keep_event(oracle *o, const event *ev, json_t *root, int counted) {
    if (o->n_events == o->cap_events) {
        o->cap_events = o->cap_events ? 2 * o->cap_events : 1024;
        o->events = xrealloc(o->events, o->cap_events * sizeof *o->events);
    }
    oracle_event *e = &o->events[o->n_events++];
    json_t *arr = json_object_get(root, "items");
    memset(e, 0, sizeof *e);
    e->is_action = ev->is_action;
    e->counted = counted;
    e->event_id = xstrdup(ev->event_id);
    e->request_id = xstrdup(ev->request_id);
    e->query = xstrdup(ev->query);
    memcpy(e->country, ev->country, 3);
    e->gender = ev->gender;
    e->device = ev->device;
    e->ts = ev->ts;
    e->action = ev->action;
    e->n_items = ev->n_items;
    e->items = calloc(ev->n_items + 1, sizeof *e->items);
    e->positions = calloc(ev->n_items + 1, sizeof *e->positions);
    for (size_t i = 0; i < ev->n_items; i++) {
        json_t *pos = ev->is_action ? NULL : json_object_get(json_array_get(arr, i), "pos");
        e->items[i] = xstrdup(ev->items[i]);
        e->positions[i] = pos ? json_integer_value(pos) : ev->is_action ? -1 : (int64_t)i;
    }
}

void oracle_keep_events(oracle *o) { o->keep_events = 1; }
void oracle_count_devices(oracle *o) { o->devices = 1; }
size_t oracle_n_events(const oracle *o) { return o->n_events; }
const oracle_event *oracle_get_event(const oracle *o, size_t i) {
    return i < o->n_events ? &o->events[i] : NULL;
}

/* The code for a line jansson rejects. The product tells bad UTF-8 inside
 * a string apart from broken JSON; the oracle only approximates that (the
 * codes are reported, never asserted). */
static const char *json_error_code_name(const char *line, size_t len) {
    size_t i = 0;
    while (i < len) {
        utf8proc_int32_t c;
        utf8proc_ssize_t step = utf8proc_iterate((const utf8proc_uint8_t *)line + i,
                                                 (utf8proc_ssize_t)(len - i), &c);
        if (step < 0) return "invalid_utf8";
        i += (size_t)step;
    }
    return "invalid_json";
}

void oracle_feed_line(oracle *o, const char *line, size_t len, const char *source,
                      uint64_t line_no) {
    json_error_t jerr;
    json_t *root;
    event ev;
    const char *code = NULL;

    o->stats.lines++;
    free(o->query_order); o->query_order = NULL;
    free(o->country_order); o->country_order = NULL;
    if (len > MAX_LINE_BYTES) { add_invalid(o, source, line_no, "too_large"); return; }
    root = json_loadb(line, len, JSON_DECODE_ANY, &jerr);
    if (!root) { add_invalid(o, source, line_no, json_error_code_name(line, len)); return; }
    if (!json_is_object(root)) {
        add_invalid(o, source, line_no, "not_object");
        json_decref(root);
        return;
    }
    memset(&ev, 0, sizeof ev);
    if (decode_event(o, root, &ev, &code) < 0) {
        add_invalid(o, source, line_no, code);
    } else {
        int counted = count_event(o, &ev);
        if (o->keep_events) keep_event(o, &ev, root, counted);
    }
    event_clear(&ev);
    json_decref(root);
}

int oracle_load_file(oracle *o, const char *path) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n;
    uint64_t line_no = 0;

    if (!f) return -1;
    while ((n = getline(&buf, &cap, f)) >= 0) {
        size_t len = (size_t)n;
        line_no++;
        if (len > 0 && buf[len - 1] == '\n') len--;
        if (len > 0 && buf[len - 1] == '\r') len--;
        if (len == 0) continue;
        oracle_feed_line(o, buf, len, path, line_no);
    }
    free(buf);
    int err = ferror(f);
    fclose(f);
    return err ? -1 : 0;
}

/* ------------------------------------------------------------------------ */
/* Reports.                                                                 */
/* ------------------------------------------------------------------------ */

oracle_stats oracle_get_stats(const oracle *o) { return o->stats; }
int64_t oracle_watermark(const oracle *o) { return o->watermark; }
size_t oracle_n_invalid(const oracle *o) { return o->n_invalid; }

const oracle_invalid *oracle_get_invalid(const oracle *o, size_t i) {
    return i < o->n_invalid ? &o->invalid[i] : NULL;
}

/* qsort has no context argument; the sort below is single-threaded. */
static const uint64_t *sort_freq;
static char *const *sort_names;

static int by_freq_desc(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    if (sort_freq[x] != sort_freq[y]) return sort_freq[x] > sort_freq[y] ? -1 : 1;
    return strcmp(sort_names[x], sort_names[y]);
}

static size_t *sorted_order(const uint64_t *freq, char *const *names, size_t n) {
    size_t *order = malloc((n + 1) * sizeof *order);
    for (size_t i = 0; i < n; i++) order[i] = i;
    sort_freq = freq;
    sort_names = names;
    qsort(order, n, sizeof *order, by_freq_desc);
    return order;
}

size_t oracle_n_queries(const oracle *o) { return o->n_queries; }

const char *oracle_query(const oracle *o, size_t i, uint64_t *impressions) {
    oracle *mo = (oracle *)o;
    if (i >= o->n_queries) return NULL;
    if (!mo->query_order) {
        uint64_t *freq = malloc((o->n_queries + 1) * sizeof *freq);
        for (size_t q = 0; q < o->n_queries; q++) freq[q] = o->qinfo[q].impressions;
        mo->query_order = sorted_order(freq, o->query_names, o->n_queries);
        free(freq);
    }
    size_t q = o->query_order[i];
    if (impressions) *impressions = o->qinfo[q].impressions;
    return o->query_names[q];
}

static int by_count_desc(const void *a, const void *b) {
    const pairset *x = *(pairset *const *)a, *y = *(pairset *const *)b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

const char *const *oracle_query_items(const oracle *o, const char *q, size_t *n) {
    strid *e;
    HASH_FIND_STR(o->queries, q, e);
    if (!e) { *n = 0; return NULL; }
    query_info *qi = &o->qinfo[e->id];
    if (!qi->item_names || qi->names_lines != o->stats.lines) {
        pairset **sorted = malloc((qi->n_items + 1) * sizeof *sorted);
        memcpy(sorted, qi->items, qi->n_items * sizeof *sorted);
        qsort(sorted, qi->n_items, sizeof *sorted, by_count_desc);
        free(qi->item_names);
        qi->item_names = malloc((qi->n_items + 1) * sizeof *qi->item_names);
        for (size_t i = 0; i < qi->n_items; i++) qi->item_names[i] = o->item_names[sorted[i]->key[1]];
        qi->names_lines = o->stats.lines;
        free(sorted);
    }
    *n = qi->n_items;
    return qi->item_names;
}

size_t oracle_n_countries(const oracle *o) { return o->n_countries; }

const char *oracle_country(const oracle *o, size_t i, uint64_t *impressions) {
    oracle *mo = (oracle *)o;
    if (i >= o->n_countries) return NULL;
    if (!mo->country_order)
        mo->country_order = sorted_order(o->country_freq, o->country_names, o->n_countries);
    size_t c = o->country_order[i];
    if (impressions) *impressions = o->country_freq[c];
    return o->country_names[c];
}

/* ------------------------------------------------------------------------ */
/* Lookup (rules 8, 9).                                                     */
/* ------------------------------------------------------------------------ */

typedef struct lookup_ctx {
    int qid;                    /* -1: the query was never counted */
    const char *country, *gender;
    const char *device;         /* device mode: feature 0 is (query, device) or (device) */
    int device_query;           /* device mode: the query is part of the context */
    int applicable[ORACLE_N_FEATURES];
    int64_t first[ORACLE_N_WINDOWS], last[ORACLE_N_WINDOWS];
    int64_t before;             /* only units with ts < before count */
    int *slot;                  /* item id -> index in the request, or -1 */
    size_t n_items;
    int64_t context_count[ORACLE_N_FEATURES][ORACLE_N_WINDOWS];
    oracle_counts *out;
} lookup_ctx;

/* Bit f set when unit u belongs to feature f's context of the request. */
static unsigned unit_features(const lookup_ctx *lc, const unit *u) {
    unsigned mask = 0;
    if (lc->device)
        return strcmp(u->device, lc->device) == 0 && (!lc->device_query || u->qid == lc->qid);
    for (int f = 0; f < ORACLE_N_FEATURES; f++) {
        unsigned d = oracle_feature_dims[f];
        if (!lc->applicable[f]) continue;
        if ((d & ORACLE_DIM_QUERY) && u->qid != lc->qid) continue;
        if ((d & ORACLE_DIM_COUNTRY) && strcmp(u->country, lc->country) != 0) continue;
        if ((d & ORACLE_DIM_GENDER) && strcmp(u->gender, lc->gender) != 0) continue;
        mask |= 1u << f;
    }
    return mask;
}

static void add_unit(lookup_ctx *lc, const unit *u, int f, int w) {
    size_t base = (size_t)(f * ORACLE_N_WINDOWS + w) * lc->n_items;
    if (u->counter < 0) lc->context_count[f][w]++;
    for (size_t i = 0; i < u->n_items; i++) {
        int s = lc->slot[u->items[i]];
        if (s < 0) continue;
        lc->out[base + (size_t)s].c[u->counter < 0 ? 0 : u->counter]++;
    }
}

static void scan_units(const oracle *o, lookup_ctx *lc) {
    for (size_t k = 0; k < o->n_units; k++) {
        const unit *u = &o->units[k];
        if (u->ts >= lc->before) continue;
        unsigned mask = unit_features(lc, u);
        if (!mask) continue;
        for (int w = 0; w < ORACLE_N_WINDOWS; w++) {
            int64_t b = u->bucket[window_gran[w]];
            if (b == NO_BUCKET || b < lc->first[w] || b > lc->last[w]) continue;
            for (int f = 0; f < ORACLE_N_FEATURES; f++)
                if (mask & (1u << f)) add_unit(lc, u, f, w);
        }
    }
}

static void lookup_before(const oracle *o, const char *query, const char *country,
                          const char *gender, const char *device, int64_t as_of, int64_t before,
                          const char *const *items, size_t n_items,
                          int applicable[ORACLE_N_FEATURES], oracle_counts *out);

void oracle_lookup(const oracle *o, const char *query, const char *country,
                   const char *gender, int64_t as_of, const char *const *items,
                   size_t n_items, int applicable[ORACLE_N_FEATURES], oracle_counts *out) {
    lookup_before(o, query, country, gender, NULL, as_of, INT64_MAX, items, n_items, applicable, out);
}

void oracle_lookup_before(const oracle *o, const char *query, const char *country,
                          const char *gender, int64_t as_of, int64_t before,
                          const char *const *items, size_t n_items,
                          int applicable[ORACLE_N_FEATURES], oracle_counts *out) {
    lookup_before(o, query, country, gender, NULL, as_of, before, items, n_items, applicable, out);
}

void oracle_lookup_device(const oracle *o, const char *query, const char *device, int64_t as_of,
                          int64_t before, const char *const *items, size_t n_items,
                          oracle_counts *out) {
    int applicable[ORACLE_N_FEATURES];
    oracle_counts *all = calloc((size_t)ORACLE_N_FEATURES * ORACLE_N_WINDOWS * n_items + 1, sizeof *all);
    lookup_before(o, query, NULL, NULL, device, as_of, before, items, n_items, applicable, all);
    memcpy(out, all, (size_t)ORACLE_N_WINDOWS * n_items * sizeof *out); /* feature 0 */
    free(all);
}

static void lookup_before(const oracle *o, const char *query, const char *country,
                          const char *gender, const char *device, int64_t as_of, int64_t before,
                          const char *const *items, size_t n_items,
                          int applicable[ORACLE_N_FEATURES], oracle_counts *out) {
    lookup_ctx lc;
    strid *e;
    size_t n_out = (size_t)ORACLE_N_FEATURES * ORACLE_N_WINDOWS * n_items;

    memset(&lc, 0, sizeof lc);
    lc.before = before;
    memset(out, 0, n_out * sizeof *out);
    e = NULL;
    if (query) HASH_FIND_STR(o->queries, query, e);
    lc.qid = e ? e->id : -1;
    lc.country = country;
    lc.gender = gender;
    lc.device = device;
    lc.device_query = query != NULL;
    for (int f = 0; f < ORACLE_N_FEATURES; f++) {
        unsigned d = oracle_feature_dims[f];
        lc.applicable[f] = !((d & ORACLE_DIM_COUNTRY) && !country) &&
                           !((d & ORACLE_DIM_GENDER) && !gender);
        applicable[f] = lc.applicable[f];
    }
    for (int w = 0; w < ORACLE_N_WINDOWS; w++) {
        lc.last[w] = floor_div(as_of, gran_ms[window_gran[w]]);
        lc.first[w] = lc.last[w] - window_buckets[w] + 1;
    }
    lc.slot = malloc((o->n_items + 1) * sizeof *lc.slot);
    for (size_t i = 0; i < o->n_items; i++) lc.slot[i] = -1;
    for (size_t i = n_items; i-- > 0;) {     /* first occurrence wins */
        HASH_FIND_STR(o->items, items[i], e);
        if (e) lc.slot[e->id] = (int)i;
    }
    lc.n_items = n_items;
    lc.out = out;
    scan_units(o, &lc);

    for (int f = 0; f < ORACLE_N_FEATURES; f++)
        for (int w = 0; w < ORACLE_N_WINDOWS; w++)
            for (size_t i = 0; i < n_items; i++) {
                oracle_counts *c = &out[(size_t)(f * ORACLE_N_WINDOWS + w) * n_items + i];
                HASH_FIND_STR(o->items, items[i], e);
                if (e && lc.slot[e->id] != (int)i)  /* a repeated argument */
                    *c = out[(size_t)(f * ORACLE_N_WINDOWS + w) * n_items +
                             (size_t)lc.slot[e->id]];
                c->context_count = lc.context_count[f][w];
            }
    free(lc.slot);
}

int oracle_measures_differ(const oracle_counts *o, const double *got) {
    if (!o) {
        for (int m = 0; m < 1 + 2 * ORACLE_N_COUNTERS; m++)
            if (!isnan(got[m])) return m;
        return -1;
    }
    if (got[0] != (double)o->context_count) return 0;
    for (int k = 0; k < ORACLE_N_COUNTERS; k++) {
        double rate = o->context_count ? (double)o->c[k] / (double)o->context_count : 0.0;
        if (got[1 + k] != (double)o->c[k]) return 1 + k;
        if (got[1 + ORACLE_N_COUNTERS + k] != rate) return 1 + ORACLE_N_COUNTERS + k;
    }
    return -1;
}

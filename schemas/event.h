/* event.h -- the decoder for impression.v1 and action.v1 events.
 *
 * Owns: turning one line of bytes into a typed, validated, normalized event,
 * or into an error that names the field and the reason. The JSON Schema
 * files beside this header (impression.v1.schema.json, action.v1.schema.json)
 * and schemas/README.md describe the same rules for people and for other
 * languages; schemas/examples/ holds good and bad events, and
 * schemas/examples/bad/manifest.tsv the error each bad one must yield.
 *
 * May not touch: counters, the store, any I/O. It reads the config only for
 * the limits and the set of action names.
 *
 * Ownership: on success the event owns a jansson tree (root) that the
 * borrowed string pointers point into, plus the normalized query and the
 * items array; iqp_event_clear() frees all of it. On failure nothing is
 * left allocated. An event may be handed to another thread whole. The
 * tree, the items and the query live in the event's own arena (a few
 * blocks, the first maybe in a caller's slab): never json_decref root or
 * keep a reference to any part of it past iqp_event_clear().
 */
#ifndef IQP_EVENT_H
#define IQP_EVENT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "model/config.h"
#include "model/normalize.h"
#include "model/segments.h"

typedef enum { IQP_EVENT_IMPRESSION = 0, IQP_EVENT_ACTION = 1 } iqp_event_kind;

/* Stable error codes: they appear in dead-letter records and metrics. */
typedef enum {
    IQP_DECODE_OK = 0,
    IQP_DECODE_INVALID_JSON,    /* not parseable as one JSON object */
    IQP_DECODE_NOT_OBJECT,      /* valid JSON, but not an object */
    IQP_DECODE_TOO_LARGE,       /* line longer than limits.max_event_bytes */
    IQP_DECODE_UNKNOWN_SCHEMA,  /* "schema" missing from the known set */
    IQP_DECODE_MISSING_FIELD,   /* a required field is absent */
    IQP_DECODE_WRONG_TYPE,      /* a field has the wrong JSON type */
    IQP_DECODE_INVALID_VALUE,   /* right type, unusable value (ts < 0, empty id, ...) */
    IQP_DECODE_STRING_TOO_LONG, /* a string longer than limits.max_string_bytes */
    IQP_DECODE_TOO_MANY_ITEMS,  /* more than limits.max_items items */
    IQP_DECODE_INVALID_UTF8,    /* query is not valid UTF-8 */
    IQP_DECODE_UNKNOWN_ACTION,  /* action name not in the configured list */
    IQP_DECODE__COUNT
} iqp_decode_code;

typedef struct iqp_decode_error {
    iqp_decode_code code;
    char field[64];     /* JSON path of the offending field, e.g. "items[3].id"; "" for the whole event */
    char detail[160];   /* human readable reason */
} iqp_decode_error;

typedef struct iqp_item_ref {
    const char *id;     /* borrowed; not NUL-terminated when it came from an integer id */
    size_t len;
    int64_t pos;        /* position from {id, pos}, or the array index when items are plain ids */
} iqp_item_ref;

typedef struct iqp_event {
    iqp_event_kind kind;
    const char *event_id; size_t event_id_len;
    const char *request_id; size_t request_id_len;
    int64_t ts;                 /* ms since epoch, event time, >= 0 */
    char *query; size_t query_len;  /* normalized, NUL-terminated (in arena) */
    /* normalized values of the segments other than query text, by segment
     * index (iqp_event_context gives all of them) */
    char seg_text[IQP_MAX_SEGMENTS][IQP_SEGMENT_VALUE_MAX];
    unsigned char seg_len[IQP_MAX_SEGMENTS];
    /* impression.v1: items as listed (duplicates kept; the aggregator dedups) */
    iqp_item_ref *items; size_t n_items;
    /* action.v1 */
    iqp_item_ref item;
    int action;                 /* index into cfg->actions */
    /* ownership */
    json_t *root;               /* in arena */
    char *scratch;              /* text of integer item ids (in arena) */
    struct iqp_event_arena *arena; /* the blocks holding root, items and scratch */
} iqp_event;

/* Decodes one event (buf need not be NUL-terminated). Returns 0 and fills
 * ev, or returns -1 and fills err (ev is left empty). */
int iqp_event_decode(const iqp_config *cfg, const char *buf, size_t len, iqp_event *ev,
                     iqp_decode_error *err);

void iqp_event_clear(iqp_event *ev);

/* Memory that events' first arena blocks are carved from, so a batch of
 * events costs one allocation and no free per event (the decode queue
 * gives each batch one). iqp_event_clear never frees slab memory: its
 * owner sets used = 0 once every event carved from it is cleared. */
typedef struct iqp_event_slab {
    unsigned char *base;
    size_t used, cap;
} iqp_event_slab;

/* The events this thread decodes from now on take their first block from
 * slab while it has room (NULL: none; every block malloc'd). */
void iqp_event_use_slab(iqp_event_slab *slab);

/* The event's context: every configured segment's normalized value (query
 * text: ev->query). The strings point into ev; fill it again after ev is
 * moved or copied. */
void iqp_event_context(const iqp_config *cfg, const iqp_event *ev, iqp_context *ctx);

/* "invalid_json", "missing_field", ...: the stable name of a code. */
const char *iqp_decode_code_name(iqp_decode_code code);

/* "<code>: <field>: <detail>" (field omitted when empty) into buf. */
void iqp_decode_error_format(const iqp_decode_error *err, char *buf, size_t len);

#endif

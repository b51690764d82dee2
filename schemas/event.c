/* event.c -- decode and validate one impression.v1 / action.v1 event.
 *
 * A line is checked in a fixed order and the first problem found is the
 * one reported, so a given bad line always yields the same code and field
 * (schemas/examples/bad/manifest.tsv pins them):
 *
 *   1. size            len > limits.max_event_bytes -> too_large (no parse)
 *   2. JSON            jansson with JSON_DECODE_ANY: exactly one value,
 *                      trailing white space only, no "\u0000", no lone
 *                      surrogate escapes, integers within int64 ->
 *                      else invalid_json (or invalid_utf8, below)
 *   3. object          any other JSON value (array, string, ...) -> not_object
 *   4. schema          then the common fields in this order: event_id, ts,
 *                      request_id, query, user (.country, .gender); then
 *                      items (impression) or item, action (action)
 *   5. segments        every configured segment's field is read and
 *                      normalized (model/segments.h); this never fails: a
 *                      missing, null or non-scalar value is the
 *                      normalizer's "unknown" (ZZ, unknown, the fallback)
 *
 * For each field: absent -> missing_field, wrong JSON type -> wrong_type,
 * string longer than limits.max_string_bytes -> string_too_long, unusable
 * value -> invalid_value. Unknown extra fields are ignored.
 *
 * Invalid UTF-8. jansson refuses a document that is not valid UTF-8 as a
 * whole, without saying where. When that happens we re-parse two repaired
 * copies of the line, one with every malformed byte replaced by '?' and one
 * by '*'. If they parse, the JSON was well-formed apart from its encoding,
 * and the first string (or key) that differs between the two trees is the
 * field that held the bad bytes: the error is invalid_utf8 with that path.
 * If they do not parse, the line was not JSON anyway: invalid_json. This
 * costs two extra parses on that error path only.
 *
 * Memory. A decoded event keeps the jansson tree (root); event_id,
 * request_id and string item ids point into it. Integer item ids are
 * printed into one scratch buffer (21 bytes each, NUL-terminated there,
 * though iqp_item_ref does not promise it), and the normalized query is
 * copied beside them. iqp_event_clear() frees the lot and zeroes the
 * event; a failed decode leaves the event zeroed.
 *
 * Arena. jansson allocates every value, key and hashtable of a tree one by
 * one (~40 mallocs for a 10-item impression), and the tree is freed on
 * another thread (backfill decodes on one and counts on another), where
 * glibc's cross-arena frees and consolidation cost more than the parse.
 * So the tree, the items array, the scratch and the query are
 * bump-allocated from the event's own blocks (event->arena; its first
 * block, sized from the line, holds a usual event), and freeing the event
 * frees the blocks. jansson's allocator is global: decode installs
 * arena_malloc / arena_free once, and they bump-allocate only while this
 * thread is decoding an event (a thread-local pointer); otherwise, for
 * every other use of jansson in the process, they are plain malloc and
 * free. Frees jansson makes while parsing (growing buffers, rehashing) of
 * arena memory do nothing; the tree is never json_decref'd.
 *
 * Slabs. Even one block per event was a malloc on the decode thread and a
 * free across threads on the counting one (~10% of the counting thread).
 * A caller that decodes many events whose lives end together (the decode
 * queue's batches) hands this thread a slab (iqp_event_use_slab): first
 * blocks are carved from it while it has room, never freed one by one,
 * and the caller reuses the slab once every event in it is cleared.
 *
 * There is no code for running out of memory: it shows as invalid_json
 * (inside jansson) or too_large (our own arrays), and the event is
 * dead-lettered, not lost.
 */
#include "schemas/event.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define INT_ID_MAX 21   /* "-9223372036854775808" plus NUL */

/* -------------------------------------------------------------- arena --- */

typedef struct iqp_event_arena {
    struct iqp_event_arena *next;
    size_t used, cap;
    int in_slab;        /* carved from a slab (iqp_event_use_slab): not freed here */
    _Alignas(16) unsigned char data[];
} arena_block;

/* An event's first block is sized from its line: a decoded tree takes
 * ~11 bytes per byte of JSON on generated logs (mean 2.7 KB for a 236-byte
 * line; at most 17x), so 12 per byte and 512 more fit nearly every event
 * in one block, between 1 KiB and 8 KiB. A fixed 8 KiB (before) held 3x
 * what an event used, in every event a backfill decodes ahead. Larger
 * events get further blocks, each twice the last. */
#define ARENA_MIN_BLOCK (1024 - sizeof(arena_block))
#define ARENA_MAX_FIRST (8192 - sizeof(arena_block))

static size_t first_block_for(size_t line_len) {
    size_t cap = line_len > ARENA_MAX_FIRST ? ARENA_MAX_FIRST : 12 * line_len + 512;
    return cap < ARENA_MIN_BLOCK ? ARENA_MIN_BLOCK : cap > ARENA_MAX_FIRST ? ARENA_MAX_FIRST : cap;
}

/* The arena of the event this thread is decoding (NULL: none), the size
 * of its first block, and the slab first blocks come from (NULL: none). */
static _Thread_local arena_block **decoding;
static _Thread_local size_t first_block = ARENA_MAX_FIRST;
static _Thread_local iqp_event_slab *slab;

void iqp_event_use_slab(iqp_event_slab *s) { slab = s; }

/* A new block of cap bytes: an event's first one from the slab while it
 * has room, else malloc'd; NULL when out of memory. */
static arena_block *new_block(size_t cap, int first) {
    size_t bytes = (sizeof(arena_block) + cap + 15) & ~(size_t)15;
    if (first && slab && slab->cap - slab->used >= bytes) {
        arena_block *b = (arena_block *)(slab->base + slab->used);
        slab->used += bytes;
        b->in_slab = 1;
        return b;
    }
    arena_block *b = malloc(sizeof *b + cap);
    if (b) b->in_slab = 0;
    return b;
}

static void *arena_alloc(arena_block **arena, size_t n) {
    arena_block *b = *arena;
    n = (n + 15) & ~(size_t)15;
    if (!b || b->cap - b->used < n) {
        size_t cap = b ? 2 * b->cap : first_block;
        if (cap < n) cap = n;
        arena_block *nb = new_block(cap, !b);
        if (!nb) return NULL;
        nb->next = b;
        nb->used = 0;
        nb->cap = cap;
        *arena = b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

static void arena_free_all(arena_block *b) {
    while (b) {
        arena_block *next = b->next;
        if (!b->in_slab) free(b);
        b = next;
    }
}

static void *arena_malloc(size_t n) { return decoding ? arena_alloc(decoding, n) : malloc(n); }

static void arena_free(void *p) {
    if (!p) return;
    if (decoding)
        for (const arena_block *b = *decoding; b; b = b->next)
            if ((unsigned char *)p >= b->data && (unsigned char *)p < b->data + b->cap) return;
    free(p);
}

static pthread_once_t alloc_once = PTHREAD_ONCE_INIT;
static void install_alloc(void) { json_set_alloc_funcs(arena_malloc, arena_free); }

/* ------------------------------------------------------------- errors --- */

static const char *code_names[IQP_DECODE__COUNT] = {
    [IQP_DECODE_OK] = "ok",
    [IQP_DECODE_INVALID_JSON] = "invalid_json",
    [IQP_DECODE_NOT_OBJECT] = "not_object",
    [IQP_DECODE_TOO_LARGE] = "too_large",
    [IQP_DECODE_UNKNOWN_SCHEMA] = "unknown_schema",
    [IQP_DECODE_MISSING_FIELD] = "missing_field",
    [IQP_DECODE_WRONG_TYPE] = "wrong_type",
    [IQP_DECODE_INVALID_VALUE] = "invalid_value",
    [IQP_DECODE_STRING_TOO_LONG] = "string_too_long",
    [IQP_DECODE_TOO_MANY_ITEMS] = "too_many_items",
    [IQP_DECODE_INVALID_UTF8] = "invalid_utf8",
    [IQP_DECODE_UNKNOWN_ACTION] = "unknown_action",
};

const char *iqp_decode_code_name(iqp_decode_code code) {
    if ((int)code < 0 || code >= IQP_DECODE__COUNT) return "unknown_code";
    return code_names[code];
}

void iqp_decode_error_format(const iqp_decode_error *err, char *buf, size_t len) {
    const char *name = iqp_decode_code_name(err->code);
    if (len == 0) return;
    if (err->field[0] && err->detail[0])
        snprintf(buf, len, "%s: %s: %s", name, err->field, err->detail);
    else if (err->field[0])
        snprintf(buf, len, "%s: %s", name, err->field);
    else if (err->detail[0])
        snprintf(buf, len, "%s: %s", name, err->detail);
    else
        snprintf(buf, len, "%s", name);
}

/* Fills err and returns -1, so that checks can `return fail(...)`. */
static int fail(iqp_decode_error *err, iqp_decode_code code, const char *field,
                const char *fmt, ...) {
    va_list ap;
    err->code = code;
    snprintf(err->field, sizeof(err->field), "%s", field);
    va_start(ap, fmt);
    vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
    va_end(ap);
    return -1;
}

/* ------------------------------------------------------- field checks --- */

/* The decoder's working state: config, error slot, event being filled. */
typedef struct dctx {
    const iqp_config *cfg;
    iqp_decode_error *err;
    iqp_event *ev;
    size_t scratch_used;
} dctx;

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static int wrong_type(dctx *d, const char *path, const char *want, const json_t *v) {
    return fail(d->err, IQP_DECODE_WRONG_TYPE, path, "expected %s, got %s", want,
                type_name(v));
}

/* Looks up a required member; missing_field when absent. */
static int require(dctx *d, const json_t *obj, const char *key, const char *path,
                   json_t **out) {
    *out = json_object_get(obj, key);
    if (*out == NULL) return fail(d->err, IQP_DECODE_MISSING_FIELD, path, "required");
    return 0;
}

/* Length limit shared by every string value. */
static int check_len(dctx *d, const char *path, size_t len) {
    size_t max = d->cfg->limits.max_string_bytes;
    if (len > max)
        return fail(d->err, IQP_DECODE_STRING_TOO_LONG, path, "%zu bytes, limit %zu", len,
                    max);
    return 0;
}

/* A required, non-empty string field (event_id, request_id). */
static int get_id_string(dctx *d, const json_t *obj, const char *key, const char **s,
                         size_t *len) {
    json_t *v;
    if (require(d, obj, key, key, &v)) return -1;
    if (!json_is_string(v)) return wrong_type(d, key, "a string", v);
    *s = json_string_value(v);
    *len = json_string_length(v);
    if (check_len(d, key, *len)) return -1;
    if (*len == 0) return fail(d->err, IQP_DECODE_INVALID_VALUE, key, "empty string");
    return 0;
}

static int get_ts(dctx *d, const json_t *obj) {
    json_t *v;
    if (require(d, obj, "ts", "ts", &v)) return -1;
    if (!json_is_integer(v)) return wrong_type(d, "ts", "an integer (ms since epoch)", v);
    d->ev->ts = (int64_t)json_integer_value(v);
    if (d->ev->ts < 0)
        return fail(d->err, IQP_DECODE_INVALID_VALUE, "ts", "negative: %" PRId64, d->ev->ts);
    return 0;
}

static int get_query(dctx *d, const json_t *obj) {
    json_t *v;
    size_t len;
    if (require(d, obj, "query", "query", &v)) return -1;
    if (!json_is_string(v)) return wrong_type(d, "query", "a string", v);
    len = json_string_length(v);
    if (check_len(d, "query", len)) return -1;
    char *q;
    size_t qlen;
    if (iqp_normalize_query(json_string_value(v), len, &q, &qlen))
        return fail(d->err, IQP_DECODE_INVALID_UTF8, "query", "not valid UTF-8 text");
    /* into the arena, so the event is freed with it (on the counting
     * thread: a second free per event there, across threads, cost ~5%) */
    d->ev->query = qlen <= d->cfg->limits.max_string_bytes ? arena_alloc(&d->ev->arena, qlen + 1) : NULL;
    if (d->ev->query) memcpy(d->ev->query, q, qlen + 1);
    free(q);
    d->ev->query_len = qlen;
    if (qlen == 0)
        return fail(d->err, IQP_DECODE_INVALID_VALUE, "query", "empty after normalization");
    /* NFKC can expand text many times over; the limit holds after it too,
     * so store keys (u16 lengths) never truncate a query. */
    if (check_len(d, "query", qlen)) return -1;
    if (!d->ev->query) return fail(d->err, IQP_DECODE_TOO_LARGE, "query", "out of memory");
    return 0;
}

/* user.country / user.gender: a required key whose value is a string or
 * null (null = unknown). Sets *s to NULL for null. */
static int get_user_string(dctx *d, const json_t *user, const char *key, const char *path,
                           const char **s, size_t *len) {
    json_t *v;
    if (require(d, user, key, path, &v)) return -1;
    *s = NULL;
    *len = 0;
    if (json_is_null(v)) return 0;
    if (!json_is_string(v)) return wrong_type(d, path, "a string or null", v);
    *s = json_string_value(v);
    *len = json_string_length(v);
    return check_len(d, path, *len);
}

/* Checks the schema's user fields; the segments that read them normalize
 * them (decode_segments). */
static int get_user(dctx *d, const json_t *obj) {
    json_t *user;
    const char *s;
    size_t len;
    if (require(d, obj, "user", "user", &user)) return -1;
    if (!json_is_object(user)) return wrong_type(d, "user", "an object", user);
    if (get_user_string(d, user, "country", "user.country", &s, &len)) return -1;
    if (get_user_string(d, user, "gender", "user.gender", &s, &len)) return -1;
    return 0;
}

/* ------------------------------------------------------------ segments --- */

/* The value at a dotted path ("user.device"); NULL when a step is missing. */
static const json_t *field_at(const json_t *root, const char *path) {
    char key[IQP_FIELD_MAX];
    while (root && json_is_object(root)) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        memcpy(key, path, n);
        key[n] = '\0';
        root = json_object_get(root, key);
        if (!dot) return root;
        path = dot + 1;
    }
    return NULL;
}

/* Normalizes every segment but query text into ev->seg_text. */
static void decode_segments(dctx *d, const json_t *obj) {
    for (size_t s = 0; s < d->cfg->n_segments; s++) {
        const iqp_segment_spec *sg = &d->cfg->segments[s];
        if (sg->normalizer == IQP_NORM_QUERY) continue;
        const json_t *v = field_at(obj, sg->field);
        char num[INT_ID_MAX];
        const char *raw = NULL;
        size_t len = 0;
        if (json_is_string(v)) {
            raw = json_string_value(v);
            len = json_string_length(v);
        } else if (json_is_integer(v)) {
            len = (size_t)snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            raw = num;
        }
        d->ev->seg_len[s] = (unsigned char)iqp_segment_normalize(sg, raw, len, d->ev->seg_text[s]);
    }
}

void iqp_event_context(const iqp_config *cfg, const iqp_event *ev, iqp_context *ctx) {
    for (size_t s = 0; s < cfg->n_segments; s++) {
        if (cfg->segments[s].normalizer == IQP_NORM_QUERY) {
            ctx->v[s].s = ev->query;
            ctx->v[s].len = ev->query_len;
        } else {
            ctx->v[s].s = ev->seg_text[s];
            ctx->v[s].len = ev->seg_len[s];
        }
    }
    for (size_t s = cfg->n_segments; s < IQP_MAX_SEGMENTS; s++) ctx->v[s].s = NULL, ctx->v[s].len = 0;
}

/* ------------------------------------------------------------ item ids --- */

/* Where an item sits, for error paths: items[idx] (idx >= 0) or the
 * action's item (idx < 0), then part (".id", ".pos" or ""). Built only
 * when an error names it: formatting it per item was ~5% of a decode. */
typedef struct item_at {
    long idx;
    const char *part;
} item_at;

static const char *item_path(item_at at, char *buf, size_t cap) {
    if (at.idx < 0) snprintf(buf, cap, "item%s", at.part);
    else snprintf(buf, cap, "items[%ld]%s", at.idx, at.part);
    return buf;
}

/* An id value: non-empty string or integer. Integers are printed into the
 * scratch buffer, which the caller sized for every integer id. */
static int get_item_id(dctx *d, const json_t *v, item_at at, iqp_item_ref *ref) {
    char path[sizeof(d->err->field)];
    if (json_is_string(v)) {
        ref->id = json_string_value(v);
        ref->len = json_string_length(v);
        if (ref->len > d->cfg->limits.max_string_bytes)
            return check_len(d, item_path(at, path, sizeof path), ref->len);
        if (ref->len == 0)
            return fail(d->err, IQP_DECODE_INVALID_VALUE, item_path(at, path, sizeof path), "empty id");
        return 0;
    }
    if (json_is_integer(v)) {
        char *p = d->ev->scratch + d->scratch_used;
        int n = snprintf(p, INT_ID_MAX, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        ref->id = p;
        ref->len = (size_t)n;
        d->scratch_used += INT_ID_MAX;
        return 0;
    }
    return wrong_type(d, item_path(at, path, sizeof path), "a string or an integer", v);
}

/* One item: a bare id, or {id, pos}. pos defaults to def_pos. */
static int get_item(dctx *d, const json_t *v, long idx, int64_t def_pos, iqp_item_ref *ref) {
    char path[sizeof(d->err->field)];
    item_at bare = {idx, ""}, at_id = {idx, ".id"}, at_pos = {idx, ".pos"};
    json_t *id, *pos;

    ref->pos = def_pos;
    if (!json_is_object(v)) {
        if (json_is_string(v) || json_is_integer(v)) return get_item_id(d, v, bare, ref);
        return wrong_type(d, item_path(bare, path, sizeof path), "a string, an integer or an object", v);
    }
    id = json_object_get(v, "id");
    if (id == NULL) return fail(d->err, IQP_DECODE_MISSING_FIELD, item_path(at_id, path, sizeof path), "required");
    if (get_item_id(d, id, at_id, ref)) return -1;
    pos = json_object_get(v, "pos");
    if (pos == NULL) return 0;
    if (!json_is_integer(pos)) return wrong_type(d, item_path(at_pos, path, sizeof path), "an integer", pos);
    ref->pos = (int64_t)json_integer_value(pos);
    if (ref->pos < 0)
        return fail(d->err, IQP_DECODE_INVALID_VALUE, item_path(at_pos, path, sizeof path), "negative: %" PRId64,
                    ref->pos);
    return 0;
}

/* 1 when v is an integer id, bare or inside {id}: it needs scratch. */
static int needs_scratch(const json_t *v) {
    if (json_is_object(v)) v = json_object_get(v, "id");
    return v != NULL && json_is_integer(v);
}

static int alloc_scratch(dctx *d, size_t n_ints) {
    if (n_ints == 0) return 0;
    d->ev->scratch = arena_alloc(&d->ev->arena, n_ints * INT_ID_MAX);
    if (d->ev->scratch == NULL)
        return fail(d->err, IQP_DECODE_TOO_LARGE, "", "out of memory");
    return 0;
}

static int get_items(dctx *d, const json_t *obj) {
    json_t *arr, *v;
    size_t i, n, n_ints = 0;

    if (require(d, obj, "items", "items", &arr)) return -1;
    if (!json_is_array(arr)) return wrong_type(d, "items", "an array", arr);
    n = json_array_size(arr);
    if (n > d->cfg->limits.max_items)
        return fail(d->err, IQP_DECODE_TOO_MANY_ITEMS, "items", "%zu items, limit %zu", n,
                    d->cfg->limits.max_items);
    if (n == 0) return 0;
    json_array_foreach(arr, i, v) n_ints += (size_t)needs_scratch(v);
    if (alloc_scratch(d, n_ints)) return -1;
    d->ev->items = arena_alloc(&d->ev->arena, n * sizeof(*d->ev->items));
    if (d->ev->items != NULL) memset(d->ev->items, 0, n * sizeof(*d->ev->items));
    if (d->ev->items == NULL)
        return fail(d->err, IQP_DECODE_TOO_LARGE, "items", "out of memory");
    json_array_foreach(arr, i, v) {
        if (get_item(d, v, (long)i, (int64_t)i, &d->ev->items[i])) return -1;
        d->ev->n_items = i + 1;
    }
    return 0;
}

static int get_action_item(dctx *d, const json_t *obj) {
    json_t *v;
    if (require(d, obj, "item", "item", &v)) return -1;
    if (alloc_scratch(d, (size_t)needs_scratch(v))) return -1;
    return get_item(d, v, -1, -1, &d->ev->item);
}

static int find_action(const iqp_config *cfg, const char *s, size_t len) {
    size_t i;
    for (i = 0; i < cfg->n_actions; i++)
        if (strnlen(cfg->actions[i], IQP_NAME_MAX) == len && memcmp(cfg->actions[i], s, len) == 0)
            return (int)i;
    return -1;
}

static int get_action(dctx *d, const json_t *obj) {
    json_t *v;
    size_t len;
    if (require(d, obj, "action", "action", &v)) return -1;
    if (!json_is_string(v)) return wrong_type(d, "action", "a string", v);
    len = json_string_length(v);
    if (check_len(d, "action", len)) return -1;
    d->ev->action = find_action(d->cfg, json_string_value(v), len);
    if (d->ev->action < 0)
        return fail(d->err, IQP_DECODE_UNKNOWN_ACTION, "action", "not a configured action");
    return 0;
}

/* ------------------------------------------------------------- schema --- */

static int get_schema(dctx *d, const json_t *obj) {
    json_t *v;
    const char *s;
    if (require(d, obj, "schema", "schema", &v)) return -1;
    if (!json_is_string(v)) return wrong_type(d, "schema", "a string", v);
    s = json_string_value(v);
    if (strcmp(s, "impression.v1") == 0)
        d->ev->kind = IQP_EVENT_IMPRESSION;
    else if (strcmp(s, "action.v1") == 0)
        d->ev->kind = IQP_EVENT_ACTION;
    else
        return fail(d->err, IQP_DECODE_UNKNOWN_SCHEMA, "schema",
                    "expected impression.v1 or action.v1");
    return 0;
}

static int decode_fields(dctx *d, const json_t *obj) {
    iqp_event *ev = d->ev;
    if (get_schema(d, obj) ||
        get_id_string(d, obj, "event_id", &ev->event_id, &ev->event_id_len) ||
        get_ts(d, obj) ||
        get_id_string(d, obj, "request_id", &ev->request_id, &ev->request_id_len) ||
        get_query(d, obj) || get_user(d, obj))
        return -1;
    decode_segments(d, obj);
    if (ev->kind == IQP_EVENT_IMPRESSION) return get_items(d, obj);
    return get_action_item(d, obj) || get_action(d, obj) ? -1 : 0;
}

/* ------------------------------------------------------- invalid UTF-8 --- */

/* A copy of buf with every byte that is not part of a well-formed UTF-8
 * sequence replaced by c (ASCII, so the JSON structure is unchanged);
 * NULL when out of memory. */
static char *repair_utf8(const char *buf, size_t len, char c) {
    char *copy = malloc(len ? len : 1);
    size_t i = 0;

    if (copy == NULL) return NULL;
    memcpy(copy, buf, len);
    while (i < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)buf + i,
                                              (utf8proc_ssize_t)(len - i), &cp);
        if (n > 0) {
            i += (size_t)n;
        } else {
            copy[i++] = c;
        }
    }
    return copy;
}

static int diff_path(const json_t *a, const json_t *b, char *path, size_t cap);

static void join_key(char *dst, size_t cap, const char *path, const char *key) {
    snprintf(dst, cap, "%s%s%s", path, path[0] ? "." : "", key);
}

/* Finds the first string or key where a and b differ; writes its path.
 * Returns 1 when found. path holds the path of a and b on entry. */
static int diff_object(const json_t *a, const json_t *b, char *path, size_t cap) {
    const char *key;
    json_t *va;
    char sub[128];
    json_object_foreach((json_t *)a, key, va) {
        json_t *vb = json_object_get(b, key);
        join_key(sub, sizeof(sub), path, key);
        if (vb == NULL || diff_path(va, vb, sub, sizeof(sub))) {
            snprintf(path, cap, "%s", sub);
            return 1;
        }
    }
    return 0;
}

static int diff_array(const json_t *a, const json_t *b, char *path, size_t cap) {
    size_t i;
    json_t *va;
    char sub[128];
    json_array_foreach((json_t *)a, i, va) {
        snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
        if (diff_path(va, json_array_get(b, i), sub, sizeof(sub))) {
            snprintf(path, cap, "%s", sub);
            return 1;
        }
    }
    return 0;
}

static int diff_path(const json_t *a, const json_t *b, char *path, size_t cap) {
    if (b == NULL || json_typeof(a) != json_typeof(b)) return 1;
    if (json_is_object(a)) return diff_object(a, b, path, cap);
    if (json_is_array(a)) return diff_array(a, b, path, cap);
    return !json_equal((json_t *)a, (json_t *)b);
}

/* Called when jansson rejected buf for its encoding. Sets err to
 * invalid_utf8 (and the field) when the text is JSON but for that. */
static void classify_bad_utf8(const char *buf, size_t len, iqp_decode_error *err) {
    char *qa = repair_utf8(buf, len, '?'), *qb = repair_utf8(buf, len, '*');
    json_t *a = qa ? json_loadb(qa, len, JSON_DECODE_ANY, NULL) : NULL;
    json_t *b = qb ? json_loadb(qb, len, JSON_DECODE_ANY, NULL) : NULL;
    char path[128] = "";

    if (a && b) {
        if (!diff_path(a, b, path, sizeof(path))) path[0] = '\0';
        fail(err, IQP_DECODE_INVALID_UTF8, path, "not valid UTF-8 text");
    }
    json_decref(a);
    json_decref(b);
    free(qa);
    free(qb);
}

/* ------------------------------------------------------------- decode --- */

static int parse(const char *buf, size_t len, json_t **root, iqp_decode_error *err) {
    json_error_t jerr;
    *root = json_loadb(buf, len, JSON_DECODE_ANY, &jerr);
    if (*root != NULL) return 0;
    fail(err, IQP_DECODE_INVALID_JSON, "", "line %d column %d: %s", jerr.line, jerr.column,
         jerr.text);
    if (json_error_code(&jerr) == json_error_invalid_utf8) classify_bad_utf8(buf, len, err);
    return -1;
}

int iqp_event_decode(const iqp_config *cfg, const char *buf, size_t len, iqp_event *ev,
                     iqp_decode_error *err) {
    dctx d = {cfg, err, ev, 0};

    memset(ev, 0, sizeof(*ev));
    memset(err, 0, sizeof(*err));
    ev->item.pos = -1;
    if (len > cfg->limits.max_event_bytes)
        return fail(err, IQP_DECODE_TOO_LARGE, "", "%zu bytes, limit %zu", len,
                    cfg->limits.max_event_bytes);
    pthread_once(&alloc_once, install_alloc);
    decoding = &ev->arena;
    first_block = first_block_for(len);
    int rc = -1;
    if (parse(buf, len, &ev->root, err) == 0) {
        if (!json_is_object(ev->root))
            fail(err, IQP_DECODE_NOT_OBJECT, "", "top-level value is %s", type_name(ev->root));
        else
            rc = decode_fields(&d, ev->root);
    }
    decoding = NULL;
    if (rc < 0) iqp_event_clear(ev);
    return rc;
}

void iqp_event_clear(iqp_event *ev) {
    arena_free_all(ev->arena); /* root, items, scratch and query */
    memset(ev, 0, sizeof(*ev));
}

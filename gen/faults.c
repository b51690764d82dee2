/* faults.c -- iqp gen's malformed lines (faults.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "gen/event.h"
#include "gen/faults.h"
#include "gen/gen_internal.h"

enum { BAD_TRUNCATED, BAD_ARRAY, BAD_SCHEMA, BAD_NO_ID, BAD_TS_STRING, BAD_ITEMS,
       BAD_ACTION, BAD_QUERY, BAD_TEXT, BAD__COUNT };

static const char *const GARBAGE[] = {
    "<html><body><h1>502 Bad Gateway</h1></body></html>",
    "GET /search?q=red+dress HTTP/1.1",
    "2024-01-01 00:00:00 WARN consumer lag high",
    "event=impression query=\"red dress\" items=i1,i2",
    "}{ not json",
};

/* A template event for a malformed line, from the current impression. */
static char *bad_template(gen *g, int want_action) {
    uint64_t id = g->n_bad_ids++;
    if (want_action) return build_action(g, "bad-", id, g->imp_ts, g->shown[0], 0);
    return build_impression(g, "bad-", id);
}

static char *bad_truncated(gen *g) {
    char *s = bad_template(g, (int)rng_below(&g->r, 2));
    if (!s) return NULL;
    size_t len = strlen(s), cut = 1 + (size_t)rng_below(&g->r, len - 2);
    while (cut > 1 && ((unsigned char)s[cut] & 0xC0) == 0x80) cut--; /* whole characters */
    s[cut] = '\0';
    return s;
}

static char *bad_text(gen *g) {
    const char *t = GARBAGE[rng_below(&g->r, COUNT_OF(GARBAGE))];
    size_t n = strlen(t) + 32;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s #%" PRIu64, t, g->n_bad_ids++);
    return s;
}

static json_t *bad_query_value(gen *g) {
    switch (rng_below(&g->r, 4)) {
    case 0: return json_integer(42);
    case 1: return json_null();
    case 2: return json_pack("[s]", g->qtext);
    default: return json_pack("{s:s}", "text", g->qtext);
    }
}

char *bad_line(gen *g) {
    int kind = (int)rng_below(&g->r, BAD__COUNT), act = (int)rng_below(&g->r, 2);
    if (kind == BAD_TRUNCATED) return bad_truncated(g);
    if (kind == BAD_TEXT) return bad_text(g);
    int want_action = kind == BAD_ACTION || (kind != BAD_ITEMS && kind != BAD_SCHEMA && act);
    char *line = bad_template(g, want_action), ts[32];
    json_t *e = line ? json_loads(line, 0, NULL) : NULL;
    free(line);
    if (!e) return NULL;
    switch (kind) {
    case BAD_ARRAY: return json_line(json_pack("[o]", e));
    case BAD_SCHEMA: json_object_set_new(e, "schema", json_string("impression.v9")); break;
    case BAD_NO_ID: json_object_del(e, "event_id"); break;
    case BAD_TS_STRING:
        snprintf(ts, sizeof ts, "%" PRId64, g->imp_ts);
        json_object_set_new(e, "ts", json_string(ts));
        break;
    case BAD_ITEMS: json_object_set_new(e, "items", json_string("i1,i2,i3")); break;
    case BAD_ACTION: json_object_set_new(e, "action", json_string(g->unknown_action)); break;
    case BAD_QUERY: json_object_set_new(e, "query", bad_query_value(g)); break;
    }
    return json_line(e);
}

void pick_unknown_action(gen *g) {
    snprintf(g->unknown_buf, sizeof g->unknown_buf, "purchase");
    for (int n = 2;; n++) {
        size_t i = 0;
        while (i < g->o.n_actions && strcmp(g->o.actions[i], g->unknown_buf) != 0) i++;
        if (i == g->o.n_actions) break;
        snprintf(g->unknown_buf, sizeof g->unknown_buf, "purchase%d", n);
    }
    g->unknown_action = g->unknown_buf;
}

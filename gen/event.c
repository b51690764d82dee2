/* event.c -- iqp gen's valid impression and action lines (event.h). */
#include "gen/event.h"
#include "gen/gen_internal.h"

/* The query text this event carries: the canonical one or a variant. */
static void sb_query(gen *g) {
    char v[VARIANT_MAX];
    if (!rng_chance(&g->r, g->o.variant)) { sb_str(&g->sb, g->qtext); return; }
    query_variant(g->qtext, &g->r, v);
    sb_str(&g->sb, v);
}

/* Everything up to and including the user object; id is a JSON string. */
static void event_head(gen *g, const char *schema, const char *id_prefix, uint64_t id_no,
                       int64_t ts) {
    sbuf *b = &g->sb;
    SB_LIT(b, "{\"schema\":");
    sb_str(b, schema);
    SB_LIT(b, ",\"event_id\":");
    sb_id(b, id_prefix, g->o.seed, id_no);
    SB_LIT(b, ",\"ts\":");
    sb_i64(b, ts);
    SB_LIT(b, ",\"request_id\":");
    sb_id(b, "req-", g->o.seed, (uint64_t)g->imp_no);
    SB_LIT(b, ",\"query\":");
    sb_query(g);
    SB_LIT(b, ",\"user\":{\"country\":");
    sb_str(b, COUNTRIES[g->country].raw);
    SB_LIT(b, ",\"gender\":");
    sb_str(b, GENDERS[g->gender].raw);
    if (g->o.devices) {
        SB_LIT(b, ",\"device\":");
        sb_str(b, DEVICES[g->device].raw);
    }
    SB_LIT(b, "}");
}

static void event_items(gen *g) {
    sbuf *b = &g->sb;
    int form = (int)rng_below(&g->r, 20); /* 12: strings, 5: objects, 3: mixed */
    SB_LIT(b, ",\"items\":[");
    for (size_t i = 0; i < g->n_listed; i++) {
        int obj = form >= 17 ? (int)rng_below(&g->r, 2) : form >= 12;
        if (i) SB_LIT(b, ",");
        if (obj) SB_LIT(b, "{\"id\":");
        sb_item(b, g->listed[i]);
        if (obj) { SB_LIT(b, ",\"pos\":"); sb_u64(b, i); SB_LIT(b, "}"); }
    }
    SB_LIT(b, "]}");
}

char *build_impression(gen *g, const char *id_prefix, uint64_t id_no) {
    event_head(g, "impression.v1", id_prefix, id_no, g->imp_ts);
    event_items(g);
    return sb_take(&g->sb);
}

char *build_action(gen *g, const char *id_prefix, uint64_t id_no, int64_t ts, uint32_t item,
                   size_t action) {
    event_head(g, "action.v1", id_prefix, id_no, ts);
    SB_LIT(&g->sb, ",\"item\":");
    sb_item(&g->sb, item);
    SB_LIT(&g->sb, ",\"action\":");
    sb_str(&g->sb, g->o.actions[action]);
    SB_LIT(&g->sb, "}");
    return sb_take(&g->sb);
}

/* gen.c -- one `iqp gen` run: impressions in time order, their actions,
 * and every line out through the pending heap (gen.h has the model). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/event.h"
#include "gen/faults.h"
#include "gen/gen.h"
#include "gen/gen_internal.h"

#define SEC_MS 1000LL
#define ACTION_DELAY_MS (120 * SEC_MS)
#define REPEAT_SHIFT_MS (60 * SEC_MS)

/* Puts the message into the caller's buffer; returns -1. */
static int gen_fail(gen *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int gen_fail(gen *g, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err, g->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Writes every pending line whose key is below bound. */
static int drain(gen *g, int64_t bound, int all) {
    while (g->heap.n && (all || g->heap.v[0].key < bound)) {
        pending e = pheap_pop(&g->heap);
        int rc = gen_out_write(&g->out, e.line, e.len);
        if (rc == 0) rc = gen_out_write(&g->out, "\n", 1);
        free(e.line);
        if (rc) return -1;
    }
    return 0;
}

static void push_line(gen *g, char *line, int64_t key) {
    if (!line || pheap_push(&g->heap, (pending){key, g->seq++, line, strlen(line)})) {
        free(line);
        g->oom = 1;
    }
}

/* ---- Emitting: jitter, redelivery, malformed extras --------------------------- */

static void emit(gen *g, char *line, int64_t ts) {
    int64_t d = g->o.disorder_ms, j = rng_range(&g->r, 0, d);
    if (!line) { g->oom = 1; return; }
    push_line(g, line, ts + j);
    if (rng_chance(&g->r, g->o.redeliver)) {
        push_line(g, strdup(line), ts + rng_range(&g->r, j, d));
        g->n_redeliver++;
    }
    if (rng_chance(&g->r, g->o.bad)) {
        push_line(g, bad_line(g), ts + rng_range(&g->r, 0, d));
        g->n_bad++;
    }
}

/* ---- One impression and its actions -------------------------------------------- */

/* The click (or first) action is six times as likely as each other one. */
static size_t pick_action(gen *g, size_t except) {
    size_t n = g->o.n_actions;
    for (;;) {
        uint64_t x = rng_below(&g->r, n + 5);
        size_t a = x >= n ? g->heavy_action : (size_t)x;
        if (a != except) return a;
    }
}

static void emit_action(gen *g, int64_t ts, uint32_t item, size_t action) {
    emit(g, build_action(g, "act-", g->n_action_ids++, ts, item, action), ts);
    g->n_act++;
}

static void engage(gen *g, uint32_t item) {
    int two = g->o.n_actions > 1 && rng_below(&g->r, 4) == 3;
    size_t first = pick_action(g, SIZE_MAX);
    for (int k = 0; k <= two; k++) {
        size_t a = k ? pick_action(g, first) : first;
        int64_t ts = g->imp_ts + rng_range(&g->r, 0, ACTION_DELAY_MS);
        emit_action(g, ts, item, a);
        if (rng_chance(&g->r, g->o.repeat)) {
            int64_t rts = ts + rng_range(&g->r, -REPEAT_SHIFT_MS, REPEAT_SHIFT_MS);
            emit_action(g, rts < 0 ? 0 : rts, item, a);
            g->n_repeat++;
        }
    }
}

static void gen_impression(gen *g) {
    g->q = (uint32_t)zipf_draw(&g->qz, &g->r);
    g->qnorm = query_text(g->q, g->qtext, sizeof g->qtext);
    g->country = draw_weighted(COUNTRIES, COUNT_OF(COUNTRIES), &g->r);
    g->gender = draw_weighted(GENDERS, COUNT_OF(GENDERS), &g->r);
    if (g->o.devices) g->device = draw_weighted(DEVICES, COUNT_OF(DEVICES), &g->r);
    pick_items(g);
    emit(g, build_impression(g, "imp-", (uint64_t)g->imp_no), g->imp_ts);
    g->n_imp++;
    int cn = COUNTRIES[g->country].norm, gn = GENDERS[g->gender].norm;
    int dn = g->o.devices ? DEVICES[g->device].norm : 0;
    for (size_t i = 0; i < g->n_distinct; i++) {
        uint32_t item = g->shown[i];
        int hit = rng_chance(&g->r, propensity((uint64_t)g->o.seed, g->qnorm, item, cn, gn));
        if (hit) engage(g, item);
        if (!g->o.truth) continue;
        cell *c = cellset_get(&g->truth, cell_key(g->q, item, cn, gn, dn));
        if (!c) { g->oom = 1; continue; }
        c->shown++;
        c->engaged += (uint32_t)hit;
    }
}

/* ---- Time: sorted uniform impression times --------------------------------------- */

/* Bentley & Saxe: the maxima of i.i.d. uniforms, descending, one at a time;
 * 1 - max walks upward. *cur starts at 1, remaining counts down from N. */
static int64_t next_ts(gen *g, double *cur, int64_t remaining) {
    double u = ((double)(rng_next(&g->r) >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] */
    *cur *= pow(u, 1.0 / (double)remaining);
    int64_t off = (int64_t)((1.0 - *cur) * (double)g->o.span_ms);
    if (off >= g->o.span_ms) off = g->o.span_ms - 1;
    return g->o.start + (off < 0 ? 0 : off);
}

/* ---- The run ----------------------------------------------------------------------- */

static int gen_setup(gen *g) {
    size_t n = (size_t)g->o.items, pool = n < POOL_SIZE ? n : POOL_SIZE;
    rng_seed(&g->r, (uint64_t)g->o.seed);
    pick_unknown_action(g);
    for (size_t i = 0; i < g->o.n_actions; i++)
        if (strcmp(g->o.actions[i], "click") == 0) g->heavy_action = i;
    if (zipf_init(&g->qz, (size_t)g->o.queries, 1.1) || zipf_init(&g->iz, n, 1.0) ||
        zipf_init(&g->pz, pool, 1.0))
        return -1;
    g->mark = calloc(n, 1);
    g->shown = malloc((size_t)g->o.per_impression * sizeof *g->shown);
    g->listed = malloc(((size_t)g->o.per_impression + 1) * sizeof *g->listed);
    return g->mark && g->shown && g->listed ? 0 : -1;
}

static void gen_free(gen *g) {
    while (g->heap.n) free(pheap_pop(&g->heap).line);
    free(g->heap.v);
    free(g->qz.cdf); free(g->iz.cdf); free(g->pz.cdf);
    free(g->mark); free(g->shown); free(g->listed); iqp_buf_free(&g->sb); free(g->truth.v);
}

/* The main loop: impressions in time order, lines out once they are safe. */
static int gen_run(gen *g) {
    double cur = 1.0;
    for (g->imp_no = 0; g->imp_no < g->o.impressions && !g->oom; g->imp_no++) {
        g->imp_ts = next_ts(g, &cur, g->o.impressions - g->imp_no);
        if (drain(g, g->imp_ts - REPEAT_SHIFT_MS, 0)) return -1;
        gen_impression(g);
    }
    return g->oom ? 0 : drain(g, 0, 1);
}

/* Opens an output or says why not: 0 or -1. */
static int open_or_fail(gen *g, gen_out *w, const char *path) {
    if (gen_out_open(w, path) == 0) return 0;
    int err = errno ? errno : ENOMEM;
    gen_out_close(w);
    return gen_fail(g, "cannot open %s: %s", path, strerror(err));
}

/* Writes the shown cells, sorted, into the opened truth file and closes it. */
static int write_truth(gen *g) {
    if (truth_write(&g->truth, &g->tout, (uint64_t)g->o.seed, g->o.devices, &g->n_truth))
        return gen_fail(g, "cannot write %s: %s", g->o.truth,
                        strerror(g->tout.failed ? g->tout.failed : EIO));
    return 0;
}

static int gen_main(gen *g) {
    if (gen_setup(g)) return gen_fail(g, "out of memory");
    if (open_or_fail(g, &g->out, g->o.out)) return -1;
    if (g->o.truth && open_or_fail(g, &g->tout, g->o.truth)) {
        gen_out_close(&g->out);
        return -1;
    }
    int wrc = gen_run(g);
    if (gen_out_close(&g->out) || wrc) {
        if (g->o.truth) gen_out_close(&g->tout);
        return gen_fail(g, "cannot write %s: %s", g->o.out,
                        strerror(g->out.failed ? g->out.failed : EIO));
    }
    if (g->oom) {
        if (g->o.truth) gen_out_close(&g->tout);
        return gen_fail(g, "out of memory");
    }
    g->events_done = 1;
    return g->o.truth ? write_truth(g) : 0;
}

int iqp_gen_run(const iqp_gen_options *o, iqp_gen_stats *stats, char *err, size_t errlen) {
    *stats = (iqp_gen_stats){0};
    gen *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    g->o = *o;
    g->err = err;
    g->errlen = errlen;
    int rc = gen_main(g);
    *stats = (iqp_gen_stats){.impressions = g->n_imp, .actions = g->n_act,
                             .redelivered = g->n_redeliver, .repeated = g->n_repeat,
                             .malformed = g->n_bad, .events_done = g->events_done,
                             .truth_done = g->events_done && g->o.truth && rc == 0,
                             .truth_cells = g->n_truth};
    gen_free(g);
    free(g);
    return rc;
}

/* dump.c -- the canonical text dump of a refresh result (format: dump.h).
 * Reads the result only through refresh.h's accessors, as the publisher
 * does.
 */
#include "refresher/dump.h"

#include <inttypes.h>
#include <stdio.h>

#include "model/normalize.h"
#include "model/window.h"

static void put_string(FILE *out, const char *s, size_t len) {
    fputc('"', out);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') fprintf(out, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f) fprintf(out, "\\x%02x", ch);
        else fputc(ch, out);
    }
    fputc('"', out);
}

/* "FEATURE {dims}" of a context. */
static void put_context(FILE *out, const iqp_config *cfg, const iqp_refresh_context *c) {
    const iqp_feature_spec *f = &cfg->features[c->feature];
    const char *sep = "";
    fprintf(out, "%s {", f->name);
    for (size_t s = 0; s < cfg->n_segments; s++) {
        if (!(f->dims & (1u << s))) continue;
        const iqp_segval *v = &c->ctx.v[s];
        fprintf(out, "%s%s=", sep, cfg->segments[s].name);
        if (cfg->segments[s].normalizer == IQP_NORM_QUERY) put_string(out, v->s, v->len);
        else fprintf(out, "%.*s", (int)v->len, v->s);
        sep = ",";
    }
    fputc('}', out);
}

static void put_header(FILE *out, const iqp_refresh_result *r) {
    const iqp_config *cfg = iqp_refresh_config(r);
    size_t nc = IQP_COUNTERS(cfg);
    fprintf(out, "iqp-refresh-dump 1\n");
    fprintf(out, "as_of %" PRId64 " smoothing %.17g top_k %zu rank_measure %s\n", iqp_refresh_as_of(r),
            iqp_refresh_smoothing(r), iqp_refresh_top_k(r),
            iqp_refresh_measure_name(cfg, iqp_refresh_rank_measure(r)));
    for (size_t w = 0; w < cfg->n_windows; w++) {
        int64_t first = 0, last = 0;
        iqp_window_buckets(&cfg->windows[w], iqp_refresh_as_of(r), &first, &last);
        fprintf(out, "window %s first=%" PRId64 " last=%" PRId64 "\n", cfg->windows[w].name, first, last);
    }
    for (size_t f = 0; f < cfg->n_features; f++)
        for (size_t w = 0; w < cfg->n_windows; w++)
            for (size_t k = 0; k < nc; k++) {
                int64_t num, den;
                iqp_refresh_prior_parts(r, f, w, k, &num, &den);
                fprintf(out, "prior %s %s %s num=%" PRId64 " den=%" PRId64 " value=%.17g\n",
                        cfg->features[f].name, cfg->windows[w].name,
                        iqp_refresh_measure_name(cfg, (int)k), num, den, iqp_refresh_prior(r, f, w, k));
            }
}

static void put_entity(FILE *out, const iqp_refresh_result *r, const iqp_refresh_context *c,
                       size_t e) {
    const iqp_config *cfg = iqp_refresh_config(r);
    size_t nc = IQP_COUNTERS(cfg);
    iqp_refresh_entity ent;
    iqp_refresh_get_entity(r, e, &ent);
    for (size_t w = 0; w < cfg->n_windows; w++) {
        const size_t b = w * nc;
        fputs("entity ", out);
        put_context(out, cfg, c);
        fputc(' ', out);
        put_string(out, ent.item, ent.item_len);
        fprintf(out, " %s cc=%" PRId64 " counts=", cfg->windows[w].name, c->context_count[w]);
        for (size_t k = 0; k < nc; k++) fprintf(out, "%s%" PRId64, k ? "," : "", ent.counts[b + k]);
        fputs(" rates=", out);
        for (size_t k = 0; k < nc; k++) fprintf(out, "%s%.17g", k ? "," : "", ent.rates[b + k]);
        fputs(" smoothed=", out);
        for (size_t k = 0; k < nc; k++) fprintf(out, "%s%.17g", k ? "," : "", ent.smoothed[b + k]);
        fputc('\n', out);
    }
}

static void put_topk(FILE *out, const iqp_refresh_result *r, const iqp_refresh_context *c, size_t ci) {
    const iqp_config *cfg = iqp_refresh_config(r);
    for (size_t w = 0; w < cfg->n_windows; w++) {
        const uint32_t *list;
        size_t n = iqp_refresh_topk(r, ci, w, &list);
        fputs("topk ", out);
        put_context(out, cfg, c);
        fprintf(out, " %s n=%zu", cfg->windows[w].name, n);
        for (size_t i = 0; i < n; i++) {
            iqp_refresh_entity ent;
            iqp_refresh_get_entity(r, list[i], &ent);
            fputc(' ', out);
            put_string(out, ent.item, ent.item_len);
            fprintf(out, "=%.17g", iqp_refresh_topk_value(r, list[i], w));
        }
        fputc('\n', out);
    }
}

int iqp_refresh_dump(const iqp_refresh_result *r, FILE *out) {
    const iqp_config *cfg = iqp_refresh_config(r);
    put_header(out, r);
    for (size_t ci = 0; ci < iqp_refresh_n_contexts(r); ci++) {
        iqp_refresh_context c;
        iqp_refresh_get_context(r, ci, &c);
        fputs("context ", out);
        put_context(out, cfg, &c);
        fputs(" cc=", out);
        for (size_t w = 0; w < cfg->n_windows; w++)
            fprintf(out, "%s%" PRId64, w ? "," : "", c.context_count[w]);
        fprintf(out, " entities=%zu\n", c.n_entities);
        for (size_t e = c.first_entity; e < c.first_entity + c.n_entities; e++) put_entity(out, r, &c, e);
        put_topk(out, r, &c, ci);
        if (ferror(out)) return -1;
    }
    return ferror(out) ? -1 : 0;
}

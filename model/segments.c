/* segments.c -- segment normalizers (segments.h). */
#include "model/segments.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "model/normalize.h"

static int is_ascii_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static void trim(const char **s, size_t *len) {
    while (*len && is_ascii_space((*s)[0])) (*s)++, (*len)--;
    while (*len && is_ascii_space((*s)[*len - 1])) (*len)--;
}

static size_t put(char *out, const char *s) {
    size_t n = strlen(s);
    if (n >= IQP_SEGMENT_VALUE_MAX) n = IQP_SEGMENT_VALUE_MAX - 1;
    memcpy(out, s, n);
    out[n] = '\0';
    return n;
}

static size_t normalize_enum(const iqp_segment_spec *sg, const char *raw, size_t len, char *out) {
    if (raw) {
        trim(&raw, &len);
        for (size_t k = 0; k < sg->n_values; k++)
            if (strlen(sg->values[k]) == len && strncasecmp(sg->values[k], raw, len) == 0)
                return put(out, sg->values[k]);
    }
    return put(out, sg->fallback);
}

/* A whole decimal integer (optional sign), trimmed; -1 when raw is not one. */
static int parse_integer(const char *raw, size_t len, long long *v) {
    char buf[32];
    trim(&raw, &len);
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, raw, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    *v = strtoll(buf, &end, 10);
    return errno || *end || !((buf[0] >= '0' && buf[0] <= '9') || buf[0] == '-' || buf[0] == '+') ? -1 : 0;
}

static size_t normalize_bucket(const iqp_segment_spec *sg, const char *raw, size_t len, char *out) {
    long long v;
    if (!raw || parse_integer(raw, len, &v) < 0) return put(out, sg->fallback);
    const int64_t *b = sg->bounds;
    size_t n = sg->n_bounds, i = 0;
    if (v < b[0]) return (size_t)snprintf(out, IQP_SEGMENT_VALUE_MAX, "<%" PRId64, b[0]);
    while (i + 1 < n && v >= b[i + 1]) i++;
    if (i + 1 == n) return (size_t)snprintf(out, IQP_SEGMENT_VALUE_MAX, "%" PRId64 "+", b[i]);
    return (size_t)snprintf(out, IQP_SEGMENT_VALUE_MAX, "%" PRId64 "-%" PRId64, b[i], b[i + 1] - 1);
}

size_t iqp_segment_normalize(const iqp_segment_spec *sg, const char *raw, size_t len, char *out) {
    switch (sg->normalizer) {
    case IQP_NORM_COUNTRY:
        iqp_normalize_country(raw, len, out);
        return 2;
    case IQP_NORM_GENDER:
        return put(out, iqp_gender_name(iqp_normalize_gender(raw, len)));
    case IQP_NORM_ENUM:
        return normalize_enum(sg, raw, len, out);
    case IQP_NORM_BUCKET:
        return normalize_bucket(sg, raw, len, out);
    default: /* query text is normalized by iqp_normalize_query */
        out[0] = '\0';
        return 0;
    }
}

unsigned iqp_context_mask(const iqp_config *cfg, const iqp_context *ctx) {
    unsigned m = 0;
    for (size_t s = 0; s < cfg->n_segments; s++)
        if (ctx->v[s].s) m |= 1u << s;
    return m;
}

/* ---- contexts from lookup arguments --------------------------------------- */

void iqp_context_buf_free(iqp_context_buf *b) {
    for (size_t s = 0; s < IQP_MAX_SEGMENTS; s++) free(b->owned[s]);
    memset(b, 0, sizeof *b);
}

/* Sets segment s of out from raw; -1 with err for an unusable query. */
static int set_value(const iqp_segment_spec *sg, size_t s, const char *raw, iqp_context_buf *out,
                     char *err, size_t errlen) {
    iqp_segval *v = &out->ctx.v[s];
    if (sg->normalizer != IQP_NORM_QUERY) {
        v->len = iqp_segment_normalize(sg, raw, strlen(raw), out->text[s]);
        v->s = out->text[s];
        return 0;
    }
    free(out->owned[s]);
    out->owned[s] = NULL;
    if (iqp_normalize_query(raw, strlen(raw), &out->owned[s], &v->len) < 0) {
        snprintf(err, errlen, "the %s is not valid UTF-8", sg->name);
        return -1;
    }
    if (v->len == 0) {
        snprintf(err, errlen, "the %s is empty after normalization", sg->name);
        return -1;
    }
    v->s = out->owned[s];
    return 0;
}

int iqp_context_build(const iqp_config *cfg, const char *query, const char *const *names,
                      const char *const *values, size_t n, iqp_context_buf *out, char *err,
                      size_t errlen) {
    memset(out, 0, sizeof *out);
    for (size_t s = 0; query && s < cfg->n_segments; s++)
        if (cfg->segments[s].normalizer == IQP_NORM_QUERY &&
            set_value(&cfg->segments[s], s, query, out, err, errlen) < 0)
            goto fail;
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !values[i]) continue;
        int s = iqp_config_segment_index(cfg, names[i]);
        if (s < 0) {
            size_t k = (size_t)snprintf(err, errlen, "unknown segment '%s' (the layout has:", names[i]);
            for (size_t j = 0; j < cfg->n_segments && k < errlen; j++)
                k += (size_t)snprintf(err + k, errlen - k, " %s", cfg->segments[j].name);
            if (k < errlen) snprintf(err + k, errlen - k, ")");
            goto fail;
        }
        if (set_value(&cfg->segments[s], (size_t)s, values[i], out, err, errlen) < 0) goto fail;
    }
    return 0;
fail:
    iqp_context_buf_free(out);
    return -1;
}

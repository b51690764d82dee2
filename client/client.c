/* client.c -- libiqp (see iqp.h for the contract).
 *
 * A lookup is one pipeline (client/redis_cluster.h: one hiredis connection,
 * or, in a Redis Cluster, the masters of the keys, written before any is read):
 *
 *   GET   <prefix>:gen
 *   HMGET <prefix>:<G>:<feature>:<context> "" item1 ... itemN   (per feature)
 *
 * G is the generation this client read the layout of. The GET comes back
 * first; when it names another generation (the refresher switched), the
 * answers are dropped, the new generation's meta is read and checked, and
 * the lookup is issued once more. Reading G's keys in the same pipeline as
 * the GET that confirms G means a call never mixes generations: an old
 * generation's keys outlive the switch by their TTL.
 *
 * Values are decoded with schemas/redis_value.c, the same code the
 * publisher encodes with; rates are count / context_count as doubles, as
 * aggregator/features.c computes them for `iqp lookup --store`.
 *
 * The HMGETs of one call differ only in their key: their item part
 * ("" item1 ... itemN, in the Redis protocol) is formatted once per call
 * and appended after each feature's header. Decoding writes each
 * (item, feature) block of out once: zeros, then the non-zero counters
 * the value's masks name, and their rates.
 *
 * The HMGET replies are read flat (client/redis_conn.h): hiredis parses
 * them, but their elements go to buffers the client reuses instead of one
 * redisReply object (two mallocs and two frees) each, which was most of
 * a 1000-item call's client CPU. Decoding then goes item by item, every
 * feature of an item in turn, so that out is written once, front to back.
 *
 * Per-call memory: the query string; everything else lives in the client
 * and is reused.
 */
#include "client/client_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/normalize.h"
#include "model/segments.h"
#include "client/redis_cluster.h"
#include "client/redis_conn.h"
#include "schemas/redis_value.h"

#define KEY_MAX 8192
/* Reply bounds (issue 13): a generation number, the meta's layout JSON,
 * and the shortest bound any string gets (an error reply's text). */
#define GEN_REPLY_MAX 64
#define META_STRING_MAX (1 << 20)
#define STRING_MIN_BOUND 1024

struct iqp_client {
    iqp_redis_url url;
    iqp_client_options opts;
    char prefix[128];
    iqp_rconn *redis;             /* NULL: reconnect on the next call */
    iqp_status status;
    char errstr[512];
    int have_layout;
    iqp_config cfg;               /* the published layout */
    uint64_t generation;
    char fingerprint[64];
    char measure_names[1 + 2 * IQP_MAX_COUNTERS][IQP_NAME_MAX + 8];
    char keys[IQP_MAX_FEATURES][KEY_MAX]; /* this call's hash keys */
    size_t key_lens[IQP_MAX_FEATURES];
    size_t unread;                /* replies queued on the connection and not read yet */
    iqp_reply_limits limits;      /* what the replies being read may hold */
    char *items_cmd;              /* the HMGETs' shared item part, RESP */
    size_t items_cmd_cap;
};

/* One call's normalized context. */
typedef struct lookup_ctx {
    iqp_context_buf b;            /* the segment values given */
    unsigned given;               /* bit i: segment i was given */
} lookup_ctx;

/* A call's raw segment values by name (iqp.h): at most IQP_CTX_MAX names,
 * names and values copied. */
#define IQP_CTX_MAX 16
struct iqp_ctx {
    size_t n;
    char *names[IQP_CTX_MAX];
    char *values[IQP_CTX_MAX];
};

/* ---- errors --------------------------------------------------------------- */

static iqp_status set_error(iqp_client *c, iqp_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static iqp_status set_error(iqp_client *c, iqp_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errstr, sizeof c->errstr, fmt, ap);
    va_end(ap);
    c->status = s;
    return s;
}

static iqp_status set_ok(iqp_client *c) {
    c->status = IQP_OK;
    c->errstr[0] = '\0';
    return IQP_OK;
}

/* Drops the connection; the next call reconnects. Whatever was queued on
 * it (commands not yet sent, replies not yet read) goes with it, so no
 * later call can read an earlier call's replies. */
static void drop_connection(iqp_client *c) {
    iqp_rconn_free(c->redis);
    c->redis = NULL;
    c->unread = 0;
}

/* A failed Redis I/O: the connection is dropped (its state is unknown). */
static iqp_status redis_failed(iqp_client *c, const char *what) {
    char where[400];
    iqp_redis_url_describe(&c->url, where, sizeof where);
    /* hiredis 0.14 reports a read timeout as an I/O error with EAGAIN's text */
    int timeout = c->redis && iqp_rconn_err(c->redis) == REDIS_ERR_IO &&
                  strstr(iqp_rconn_errstr(c->redis), "temporarily unavailable");
    iqp_status s = timeout ? IQP_ETIMEOUT : IQP_ECONNECT;
    if (c->redis && c->limits.exceeded[0])
        s = set_error(c, IQP_EPROTOCOL, "%s from Redis at %s refused: %s; the connection was dropped", what,
                      where, c->limits.exceeded);
    else
        set_error(c, s, "%s from Redis at %s failed: %s", what, where,
                  c->redis ? (timeout ? "timed out" : iqp_rconn_errstr(c->redis)) : "not connected");
    drop_connection(c);
    return s;
}

const char *iqp_status_name(iqp_status s) {
    static const char *names[] = {"ok", "invalid argument", "cannot connect", "timeout",
                                  "protocol error", "unknown layout", "no features published",
                                  "out of memory"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown status";
}

iqp_status iqp_client_status(const iqp_client *c) { return c->status; }
const char *iqp_client_errstr(const iqp_client *c) { return c->errstr; }

/* ---- connection and layout -------------------------------------------------- */

void iqp_client_options_init(iqp_client_options *o) {
    o->connect_timeout_ms = 1000;
    o->timeout_ms = 100;
    o->prefix = "iqp";
}

static iqp_status connect_now(iqp_client *c) {
    char err[600];
    if (c->redis) return IQP_OK;
    c->redis = iqp_rconn_connect(&c->url, c->opts.connect_timeout_ms, c->opts.timeout_ms, err, sizeof err);
    if (!c->redis) return set_error(c, IQP_ECONNECT, "%s", err);
    iqp_rconn_limit_replies(c->redis, &c->limits);
    return IQP_OK;
}

/* Parses a generation number; 0 when reply is not one. */
static uint64_t reply_generation(const redisReply *r) {
    if (!r || r->type != REDIS_REPLY_STRING || r->len == 0 || r->len > 19) return 0;
    uint64_t g = 0;
    for (size_t i = 0; i < r->len; i++) {
        if (r->str[i] < '0' || r->str[i] > '9') return 0;
        g = g * 10 + (uint64_t)(r->str[i] - '0');
    }
    return g;
}

static void name_measures(iqp_client *c) {
    size_t m = 0, na = c->cfg.n_actions;
    snprintf(c->measure_names[m++], sizeof c->measure_names[0], "context_count");
    snprintf(c->measure_names[m++], sizeof c->measure_names[0], "impression");
    snprintf(c->measure_names[m++], sizeof c->measure_names[0], "engaged");
    for (size_t a = 0; a < na; a++) snprintf(c->measure_names[m++], sizeof c->measure_names[0], "%s", c->cfg.actions[a]);
    snprintf(c->measure_names[m++], sizeof c->measure_names[0], "iqp_impression");
    snprintf(c->measure_names[m++], sizeof c->measure_names[0], "iqp_engaged");
    for (size_t a = 0; a < na; a++) snprintf(c->measure_names[m++], sizeof c->measure_names[0], "iqp_%s", c->cfg.actions[a]);
}

/* Element i of an HMGET reply when it is a string, else NULL. */
static const redisReply *hash_field(const redisReply *r, size_t i) {
    return i < r->elements && r->element[i]->type == REDIS_REPLY_STRING ? r->element[i] : NULL;
}

/* Reads one reply within c->limits; redis_failed's status on failure. */
static iqp_status read_reply(iqp_client *c, const char *what, redisReply **r) {
    if (iqp_rconn_get_reply(c->redis, r) != REDIS_OK) return redis_failed(c, what);
    c->unread--;
    return IQP_OK;
}

/* One command and its reply, which may hold at most max_objects objects
 * of at most max_string bytes each. */
static iqp_status bounded_command(iqp_client *c, redisReply **r, const char *what, size_t max_objects,
                                  size_t max_string, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = iqp_rconn_vappend(c->redis, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) return redis_failed(c, what);
    c->unread++;
    iqp_reply_limits_set(&c->limits, max_objects, max_string, max_objects * max_string);
    iqp_reply_limits_flat(&c->limits, 0);
    return read_reply(c, what, r);
}

/* Checks a generation's meta hash and adopts its layout. When the client
 * already has a layout, the new one must have the same fingerprint (the
 * caller sized its arrays by it). */
static iqp_status adopt_meta(iqp_client *c, uint64_t gen, const redisReply *r) {
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3)
        return set_error(c, IQP_EPROTOCOL, "HMGET %s:%llu:meta: unexpected reply", c->prefix,
                         (unsigned long long)gen);
    const redisReply *ver = hash_field(r, 0), *fp = hash_field(r, 1), *layout = hash_field(r, 2);
    if (!ver || !fp || !layout)
        return set_error(c, IQP_EPROTOCOL, "%s:%llu:meta lacks layout_version, fingerprint or layout",
                         c->prefix, (unsigned long long)gen);
    if (strcmp(ver->str, "1") != 0)
        return set_error(c, IQP_ELAYOUT,
                         "%s:%llu:meta has layout_version %s, which this libiqp does not know (it "
                         "reads version %d); upgrade libiqp",
                         c->prefix, (unsigned long long)gen, ver->str, IQP_RV_LAYOUT_VERSION);
    if (c->have_layout && strcmp(fp->str, c->fingerprint) != 0)
        return set_error(c, IQP_ELAYOUT,
                         "the published layout changed (fingerprint %s, was %s); reopen the client",
                         fp->str, c->fingerprint);
    if (!c->have_layout) {
        char err[512];
        iqp_config_defaults(&c->cfg);
        if (iqp_config_parse(&c->cfg, layout->str, "published layout", err, sizeof err) < 0)
            return set_error(c, IQP_EPROTOCOL, "%s:%llu:meta: %s", c->prefix, (unsigned long long)gen, err);
        snprintf(c->fingerprint, sizeof c->fingerprint, "%s", fp->str);
        name_measures(c);
        c->have_layout = 1;
    }
    c->generation = gen;
    return IQP_OK;
}

static iqp_status no_generation(iqp_client *c, const char *why) {
    return set_error(c, IQP_NO_GENERATION, "no features published under prefix '%s' (%.300s); is iqp stream running "
                     "with --redis, or did the last publish's TTL run out?", c->prefix, why);
}

/* Reads the current generation and its meta (two round trips; only on
 * open and after a switch). The pointer and its meta expire at the same
 * instant, but the meta can be gone by the time it is read after the
 * pointer: then the pointer is read once more. */
static iqp_status load_generation(iqp_client *c) {
    iqp_status s = connect_now(c);
    if (s) return s;
    uint64_t gen = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        redisReply *r;
        if ((s = bounded_command(c, &r, "GET", 1, GEN_REPLY_MAX, "GET %s:gen", c->prefix))) return s;
        gen = reply_generation(r);
        int missing = r->type == REDIS_REPLY_NIL;
        freeReplyObject(r);
        if (missing) return no_generation(c, "no :gen key");
        if (gen == 0) return set_error(c, IQP_EPROTOCOL, "%s:gen does not hold a generation number", c->prefix);
        if ((s = bounded_command(c, &r, "HMGET meta", 4, META_STRING_MAX,
                                 "HMGET %s:%llu:meta layout_version fingerprint layout", c->prefix,
                                 (unsigned long long)gen)))
            return s;
        int gone = r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[0]->type == REDIS_REPLY_NIL &&
                   r->element[1]->type == REDIS_REPLY_NIL && r->element[2]->type == REDIS_REPLY_NIL;
        if (!gone) s = adopt_meta(c, gen, r);
        freeReplyObject(r);
        if (!gone) return s;
    }
    char why[320];
    snprintf(why, sizeof why, "generation %llu, named by %s:gen, has no meta: it expired", (unsigned long long)gen,
             c->prefix);
    return no_generation(c, why);
}

iqp_client *iqp_client_open(const char *url, const iqp_client_options *options) {
    iqp_client *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    iqp_client_options_init(&c->opts);
    if (options) c->opts = *options;
    if (!c->opts.prefix) c->opts.prefix = "iqp";
    if (c->opts.connect_timeout_ms <= 0) c->opts.connect_timeout_ms = 1000;
    if (c->opts.timeout_ms <= 0) c->opts.timeout_ms = 100;
    if (strlen(c->opts.prefix) >= sizeof c->prefix) {
        set_error(c, IQP_EINVAL, "prefix longer than %zu bytes", sizeof c->prefix - 1);
        return c;
    }
    char err[512];
    if (iqp_redis_url_parse(url, &c->url, err, sizeof err) < 0 ||
        iqp_redis_key_prefix(&c->url, c->opts.prefix, c->prefix, sizeof c->prefix, err, sizeof err) < 0) {
        set_error(c, IQP_EINVAL, "%s", err);
        return c;
    }
    c->opts.prefix = c->prefix;
    if (load_generation(c) == IQP_OK) set_ok(c);
    return c;
}

void iqp_client_close(iqp_client *c) {
    if (!c) return;
    drop_connection(c);
    iqp_reply_limits_free(&c->limits);
    free(c->items_cmd);
    free(c);
}

size_t iqp_client_n_features(const iqp_client *c) { return c->have_layout ? c->cfg.n_features : 0; }
size_t iqp_client_n_windows(const iqp_client *c) { return c->have_layout ? c->cfg.n_windows : 0; }
size_t iqp_client_n_measures(const iqp_client *c) {
    return c->have_layout ? 1 + 2 * IQP_COUNTERS(&c->cfg) : 0;
}
const char *iqp_client_feature_name(const iqp_client *c, size_t f) {
    return f < iqp_client_n_features(c) ? c->cfg.features[f].name : NULL;
}
const char *iqp_client_window_name(const iqp_client *c, size_t w) {
    return w < iqp_client_n_windows(c) ? c->cfg.windows[w].name : NULL;
}
const char *iqp_client_measure_name(const iqp_client *c, size_t m) {
    return m < iqp_client_n_measures(c) ? c->measure_names[m] : NULL;
}
size_t iqp_client_result_len(const iqp_client *c, size_t n_items) {
    return n_items * iqp_client_n_features(c) * iqp_client_n_windows(c) * iqp_client_n_measures(c);
}
const iqp_config *iqp_client_config(const iqp_client *c) { return &c->cfg; }
uint64_t iqp_client_generation(const iqp_client *c) { return c->generation; }

/* ---- lookups ---------------------------------------------------------------- */

static int feature_applies(const iqp_client *c, size_t f, const lookup_ctx *lc) {
    return (c->cfg.features[f].dims & ~lc->given) == 0;
}

/* Normalizes the call's segment values by the published layout's segments
 * (model/segments.h, as the pipeline normalizes events). */
static iqp_status normalize_call(iqp_client *c, const char *query, const iqp_ctx *ctx, lookup_ctx *lc) {
    char err[256];
    memset(lc, 0, sizeof *lc);
    if (iqp_context_build(&c->cfg, query, ctx ? (const char *const *)ctx->names : NULL,
                          ctx ? (const char *const *)ctx->values : NULL, ctx ? ctx->n : 0, &lc->b, err,
                          sizeof err) < 0)
        return set_error(c, IQP_EINVAL, "%s", err);
    lc->given = iqp_context_mask(&c->cfg, &lc->b.ctx);
    return IQP_OK;
}

/* Writes a bulk string's header "$<n>\r\n" at out; returns its length. */
static size_t put_bulk_header(char *out, size_t n) {
    char digits[24];
    size_t d = 0, len = 0;
    do digits[d++] = (char)('0' + n % 10), n /= 10; while (n);
    out[len++] = '$';
    while (d) out[len++] = digits[--d];
    out[len++] = '\r', out[len++] = '\n';
    return len;
}

/* Formats the item part of the call's HMGETs into c->items_cmd: the
 * context field "" and every item, as RESP bulk strings. */
static iqp_status format_items(iqp_client *c, const char *const *items, size_t n_items, size_t *len) {
    size_t need = 6;
    for (size_t i = 0; i < n_items; i++) need += strlen(items[i]) + 32; /* "$" len "\r\n" item "\r\n" */
    if (need > c->items_cmd_cap) {
        char *b = realloc(c->items_cmd, need);
        if (!b) return set_error(c, IQP_ENOMEM, "out of memory for a %zu-byte request", need);
        c->items_cmd = b;
        c->items_cmd_cap = need;
    }
    char *o = c->items_cmd;
    size_t n = put_bulk_header(o, 0);
    o[n++] = '\r', o[n++] = '\n';
    for (size_t i = 0; i < n_items; i++) {
        size_t il = strlen(items[i]);
        n += put_bulk_header(o + n, il);
        memcpy(o + n, items[i], il);
        n += il;
        o[n++] = '\r', o[n++] = '\n';
    }
    *len = n;
    return IQP_OK;
}

/* Builds every hash key of the call; IQP_EINVAL (nothing sent) when one
 * does not fit. */
static iqp_status build_keys(iqp_client *c, const lookup_ctx *lc) {
    for (size_t f = 0; f < c->cfg.n_features; f++) {
        if (!feature_applies(c, f, lc)) continue;
        size_t klen = iqp_rv_hash_key(c->keys[f], KEY_MAX, c->prefix, c->generation, c->cfg.features[f].name,
                                      &c->cfg, c->cfg.features[f].dims, &lc->b.ctx);
        if (klen >= KEY_MAX)
            return set_error(c, IQP_EINVAL, "the query is too long: feature %s's key would be %zu bytes, "
                             "the limit is %d", c->cfg.features[f].name, klen, KEY_MAX - 1);
        c->key_lens[f] = klen;
    }
    return IQP_OK;
}

/* Appends GET <prefix>:gen and one HMGET per applicable feature. Every
 * argument was checked before (check_args, normalize_call, build_keys):
 * from the first append on, only Redis I/O can fail, and a failure drops
 * the connection with whatever it had queued. */
static iqp_status send_pipeline(iqp_client *c, const lookup_ctx *lc, const char *const *items,
                                size_t n_items) {
    size_t items_len = 0;
    if (build_keys(c, lc) || format_items(c, items, n_items, &items_len)) return c->status;
    if (iqp_rconn_append(c->redis, "GET %s:gen", c->prefix) != REDIS_OK) return redis_failed(c, "GET");
    c->unread++;
    for (size_t f = 0; f < c->cfg.n_features; f++) {
        if (!feature_applies(c, f, lc)) continue;
        char head[KEY_MAX + 64];
        int hl = snprintf(head, sizeof head, "*%zu\r\n$5\r\nHMGET\r\n", n_items + 3);
        hl += (int)put_bulk_header(head + hl, c->key_lens[f]);
        memcpy(head + hl, c->keys[f], c->key_lens[f]);
        hl += (int)c->key_lens[f];
        head[hl++] = '\r', head[hl++] = '\n';
        /* one command from two parts: the bytes are what redisAppendCommandArgv would send */
        if (iqp_rconn_append_formatted2(c->redis, head, (size_t)hl, c->items_cmd, items_len) != REDIS_OK)
            return redis_failed(c, "HMGET");
        c->unread++;
    }
    return IQP_OK;
}

/* Writes one (item, feature)'s windows into out, each double once, in
 * order (the block is 544 bytes for the default layout, and a 1000-item
 * call writes 5000 of them): context_count, the counters (those masks
 * name, the rest 0) and their rates, count / context_count as
 * aggregator/features.c computes them (0 when context_count is 0; for
 * a zero counter 0 / cc, which is -0.0 when cc < 0). */
static void fill_item(const iqp_client *c, double *out, const int64_t *cc, const uint64_t *masks,
                      const int64_t *counts) {
    size_t nw = c->cfg.n_windows, width = IQP_COUNTERS(&c->cfg), nm = 1 + 2 * width;
    for (size_t w = 0; w < nw; w++) {
        double *o = out + w * nm, d = (double)cc[w];
        double zero_rate = cc[w] < 0 ? 0.0 / d : 0.0;
        uint64_t m = masks ? masks[w] : 0;
        const int64_t *cw = counts + w * width;
        o[0] = d;
        for (size_t k = 0; k < width; k++) {
            int set = (m >> k) & 1;
            double v = set ? (double)cw[k] : 0.0;
            o[1 + k] = v;
            o[1 + width + k] = !set ? zero_rate : cc[w] == 0 ? 0.0 : v / d;
        }
    }
}

/* One feature's HMGET reply, its shape checked and its context field
 * decoded. */
typedef struct feature_reply {
    size_t f;
    redisReply *r;
    int64_t cc[IQP_MAX_WINDOWS];
} feature_reply;

static iqp_status check_feature(iqp_client *c, feature_reply *fr, size_t n_items) {
    const redisReply *r = fr->r;
    memset(fr->cc, 0, sizeof fr->cc);
    const iqp_flat_elem *e = iqp_flat_len(r) == n_items + 1 ? iqp_flat_at(&c->limits, r, 0) : NULL;
    if (!e) return set_error(c, IQP_EPROTOCOL, "HMGET %s: unexpected reply", c->keys[fr->f]);
    if (e->type == REDIS_REPLY_STRING &&
        iqp_rv_decode_context((const unsigned char *)iqp_flat_str(&c->limits, e), e->len, c->cfg.n_windows,
                              fr->cc) < 0)
        return set_error(c, IQP_EPROTOCOL, "%s: the context value is not layout version %d",
                         c->keys[fr->f], IQP_RV_LAYOUT_VERSION);
    return IQP_OK;
}

/* Decodes every item of the checked replies into out, item by item and
 * feature by feature within an item: out is written once, front to back
 * (a 1000-item call writes 2.7 MB with the default layout; in order, the
 * stores stream instead of striding). */
static iqp_status decode_items(iqp_client *c, const feature_reply *fr, size_t n_fr,
                               const char *const *items, size_t n_items, double *out) {
    size_t nf = c->cfg.n_features, nw = c->cfg.n_windows, width = IQP_COUNTERS(&c->cfg);
    size_t stride = nw * (1 + 2 * width);
    int64_t counts[IQP_MAX_WINDOWS * IQP_MAX_COUNTERS];
    uint64_t masks[IQP_MAX_WINDOWS];
    for (size_t i = 0; i < n_items; i++)
        for (size_t j = 0; j < n_fr; j++) {
            const iqp_flat_elem *e = iqp_flat_at(&c->limits, fr[j].r, 1 + i);
            if (!e) return set_error(c, IQP_EPROTOCOL, "HMGET %s: unexpected reply", c->keys[fr[j].f]);
            int present = e->type == REDIS_REPLY_STRING;
            if (present && iqp_rv_decode_item_sparse((const unsigned char *)iqp_flat_str(&c->limits, e), e->len, nw,
                                                     width, masks, counts) < 0)
                return set_error(c, IQP_EPROTOCOL, "%s field '%s': not a layout version %d value",
                                 c->keys[fr[j].f], items[i], IQP_RV_LAYOUT_VERSION);
            fill_item(c, out + (i * nf + fr[j].f) * stride, fr[j].cc, present ? masks : NULL, counts);
        }
    return IQP_OK;
}

/* What the pipeline's replies can legitimately hold: the generation
 * number, then per feature an array of n_items + 1 values, each at most
 * one encoded item (or context) value. */
static void set_lookup_limits(iqp_client *c, const lookup_ctx *lc, size_t n_items) {
    size_t nw = c->cfg.n_windows, width = IQP_COUNTERS(&c->cfg), nf = 0;
    size_t max_string = IQP_RV_ITEM_MAX(nw, width);
    if (max_string < IQP_RV_CONTEXT_MAX(nw)) max_string = IQP_RV_CONTEXT_MAX(nw);
    if (max_string < STRING_MIN_BOUND) max_string = STRING_MIN_BOUND;
    for (size_t f = 0; f < c->cfg.n_features; f++) nf += feature_applies(c, f, lc);
    iqp_reply_limits_set(&c->limits, 1 + nf * (n_items + 2), max_string, (1 + nf * (n_items + 1)) * max_string);
    iqp_reply_limits_flat(&c->limits, 1);
}

/* Reads the pipeline's replies; decodes them when the GET named the
 * client's generation (*seen_gen says which it named). */
static iqp_status read_pipeline(iqp_client *c, const lookup_ctx *lc, const char *const *items,
                                size_t n_items, double *out, uint64_t *seen_gen) {
    redisReply *r = NULL;
    feature_reply fr[IQP_MAX_FEATURES];
    size_t n_fr = 0;
    iqp_status s = IQP_OK;
    set_lookup_limits(c, lc, n_items);
    if ((s = read_reply(c, "GET", &r))) return s;
    *seen_gen = reply_generation(r);
    int missing = r->type == REDIS_REPLY_NIL;
    freeReplyObject(r);
    if (missing) s = no_generation(c, "no :gen key");
    for (size_t f = 0; f < c->cfg.n_features; f++) {
        if (!feature_applies(c, f, lc)) continue;
        iqp_status rs = read_reply(c, "HMGET", &r);
        if (rs) {
            s = rs;
            break;
        }
        fr[n_fr].f = f;
        fr[n_fr].r = r;
        if (s == IQP_OK && *seen_gen == c->generation) s = check_feature(c, &fr[n_fr], n_items);
        n_fr++;
    }
    if (s == IQP_OK && *seen_gen == c->generation) s = decode_items(c, fr, n_fr, items, n_items, out);
    for (size_t j = 0; j < n_fr; j++) freeReplyObject(fr[j].r);
    return s;
}

/* NaN for every (item, feature) the call's context cannot address. */
static void fill_not_applicable(const iqp_client *c, const lookup_ctx *lc, size_t n_items, double *out) {
    size_t nf = c->cfg.n_features, stride = c->cfg.n_windows * iqp_client_n_measures(c);
    for (size_t f = 0; f < nf; f++) {
        if (feature_applies(c, f, lc)) continue;
        for (size_t i = 0; i < n_items; i++)
            for (size_t k = 0; k < stride; k++) out[(i * nf + f) * stride + k] = NAN;
    }
}

static iqp_status check_args(iqp_client *c, const char *const *items, size_t n_items, double *out,
                             size_t out_len) {
    if (!c->have_layout) return c->status ? c->status : set_error(c, IQP_NO_GENERATION, "client has no layout");
    if (n_items && (!items || !out)) return set_error(c, IQP_EINVAL, "items and out must not be NULL");
    if (out_len < iqp_client_result_len(c, n_items))
        return set_error(c, IQP_EINVAL, "out holds %zu doubles; %zu items need %zu", out_len, n_items,
                         iqp_client_result_len(c, n_items));
    for (size_t i = 0; i < n_items; i++)
        if (!items[i] || !items[i][0]) return set_error(c, IQP_EINVAL, "item %zu is NULL or empty", i);
    return IQP_OK;
}

iqp_status iqp_client_lookup_ctx(iqp_client *c, const char *query, const iqp_ctx *ctx,
                                 const char *const *items, size_t n_items, double *out,
                                 size_t out_len) {
    lookup_ctx lc;
    if (check_args(c, items, n_items, out, out_len)) return c->status;
    iqp_status s = normalize_call(c, query, ctx, &lc);
    if (s) return s;
    for (int attempt = 0; s == IQP_OK && attempt < 3; attempt++) {
        uint64_t seen = 0;
        if ((s = connect_now(c)) || (s = send_pipeline(c, &lc, items, n_items))) break;
        if ((s = read_pipeline(c, &lc, items, n_items, out, &seen))) break;
        if (seen == c->generation) {
            fill_not_applicable(c, &lc, n_items, out);
            iqp_context_buf_free(&lc.b);
            return set_ok(c);
        }
        s = load_generation(c); /* the publisher switched generations: follow it */
    }
    iqp_context_buf_free(&lc.b);
    if (s == IQP_OK) s = set_error(c, IQP_EPROTOCOL, "the generation kept changing during the call");
    /* a call that failed with replies still owed must not leave them to
     * the next call */
    if (c->unread) drop_connection(c);
    return s;
}

/* The positional form: country and gender are the segments of those names
 * (the defaults), passed by name. */
iqp_status iqp_client_lookup(iqp_client *c, const char *query, const char *country,
                             const char *gender, const char *const *items, size_t n_items,
                             double *out, size_t out_len) {
    iqp_ctx ctx = {2, {(char *)"country", (char *)"gender"}, {(char *)country, (char *)gender}};
    return iqp_client_lookup_ctx(c, query, &ctx, items, n_items, out, out_len);
}

/* ---- contexts ----------------------------------------------------------------- */

iqp_ctx *iqp_ctx_new(void) { return calloc(1, sizeof(iqp_ctx)); }

void iqp_ctx_clear(iqp_ctx *ctx) {
    if (!ctx) return;
    for (size_t i = 0; i < ctx->n; i++) free(ctx->names[i]), free(ctx->values[i]);
    ctx->n = 0;
}

void iqp_ctx_free(iqp_ctx *ctx) {
    iqp_ctx_clear(ctx);
    free(ctx);
}

iqp_status iqp_ctx_set(iqp_ctx *ctx, const char *name, const char *value) {
    if (!ctx || !name || !name[0]) return IQP_EINVAL;
    size_t i = 0;
    while (i < ctx->n && strcmp(ctx->names[i], name) != 0) i++;
    if (!value) { /* unset: move the last pair into the hole */
        if (i == ctx->n) return IQP_OK;
        free(ctx->names[i]), free(ctx->values[i]);
        ctx->n--;
        ctx->names[i] = ctx->names[ctx->n], ctx->values[i] = ctx->values[ctx->n];
        return IQP_OK;
    }
    if (i == IQP_CTX_MAX) return IQP_EINVAL;
    char *v = strdup(value), *n = i < ctx->n ? NULL : strdup(name);
    if (!v || (i == ctx->n && !n)) {
        free(v), free(n);
        return IQP_ENOMEM;
    }
    if (i < ctx->n) {
        free(ctx->values[i]);
    } else {
        ctx->names[i] = n;
        ctx->n++;
    }
    ctx->values[i] = v;
    return IQP_OK;
}

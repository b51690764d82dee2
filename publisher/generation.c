/* generation.c -- a refresh result becomes generation N, then readers
 * switch to it with one SET (see generation.h).
 *
 * Order of writes, all through the writers' pipeline (publisher/
 * redis_pipe.h: up to pipeline_depth commands in flight, every reply
 * checked):
 *   1. take the lease <prefix>:lease (a new fencing token; taken over
 *      when its holder is a dead process of this host), refuse if held;
 *   2. deadline = Redis TIME + ttl: every key of N expires then;
 *   3. read the served generation G and check its layout fingerprint;
 *   4. N = INCR <prefix>:gen:next (kept above G);
 *   5. HSET <prefix>:N:meta (layout, as_of_ms, smoothing, priors, top-K);
 *   6. every (feature, context): HSET <prefix>:N:<feature>[:...] "" <ctx>
 *      item value ... (256 items per HSET), PEXPIREAT deadline; SET
 *      <prefix>:N:@top:<feature>[:...] <top-K value> PXAT deadline;
 *   7. the flip: a script that SETs <prefix>:gen to N (PXAT deadline)
 *      only while the lease still holds our value; refused when the
 *      writes took more than half the TTL;
 *   8. SCAN <prefix>:* and PEXPIRE ... LT grace_ms every key of another
 *      generation (the old one, and any a killed writer abandoned);
 *   9. release the lease.
 * A failure (or kill -9) before 7 leaves G served; N's keys are collected
 * by step 8 of the next refresh. '@' is not allowed in feature names, so
 * "@top" cannot collide.
 */
#include "publisher/generation.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/redis_cluster.h"
#include "model/buf.h"
#include "publisher/redis_pipe.h"
#include "schemas/redis_value.h"
#include "util/clock.h"

typedef struct gen_writer {
    iqp_rpipe *pipe;
    const iqp_publisher_config *pc;
    const iqp_refresh_result *r;
    const iqp_config *cfg;
    const char *prefix;           /* the pipe's key prefix */
    int64_t started_ms;           /* monotonic, when the writes began */
    char deadline[32];            /* Redis time (ms) when every key of the new generation expires */
    iqp_buf topk;                 /* one top-K value */
    iqp_generation_stats *stats;
    char *err;
    size_t errlen;
} gen_writer;

/* The pipe's error hook: every message lands in the caller's err. */
static void keep_error(void *ud, const char *msg) {
    gen_writer *g = ud;
    snprintf(g->err, g->errlen, "%s", msg);
}

#define fail(g, rc, ...) iqp_rpipe_fail((g)->pipe, (rc), __VA_ARGS__)
#define command(g, what, ...) iqp_rpipe_command((g)->pipe, (what), __VA_ARGS__)

/* ---- the lease ------------------------------------------------------------------- */

static const char *FLIP_SCRIPT =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2], 'PXAT', ARGV[3]) return 1 "
    "else return 0 end";

static int lease_take(gen_writer *g, const char *role, const char *held) {
    char holder[IQP_LEASE_VALUE_MAX];
    if (iqp_rpipe_lease_value_new(g->pipe, role, held) != IQP_RC_OK) return -1;
    iqp_rc rc = iqp_rpipe_lease_acquire(g->pipe, holder, sizeof holder);
    if (rc == IQP_RC_FAILED) return fail(g, IQP_RC_FAILED, "lease on Redis at %s failed: %s", iqp_rpipe_where(g->pipe), holder);
    if (rc == IQP_RC_OK) return 0;
    return fail(g, IQP_RC_REFUSED, "prefix '%s' on Redis at %s is being written by %s (key %s:lease, or a partition's "
                "field of %s:lease:slices; renewed every %d ms, lives %d ms); %s", g->prefix,
                iqp_rpipe_where(g->pipe), holder, g->prefix, g->prefix, IQP_LEASE_RENEW_MS, IQP_LEASE_MS,
                "a running `iqp stream --redis` refreshes by itself; run `iqp refresh --redis` only "
                "where no stream publishes to this prefix");
}

/* Renews the lease (at most every IQP_LEASE_RENEW_MS); -2 when it was lost. */
static int lease_renew(gen_writer *g, int force) {
    if (!force && !iqp_rpipe_lease_due(g->pipe)) return 0;
    return iqp_rpipe_lease_extend(g->pipe);
}


/* ---- generations ------------------------------------------------------------------ */

/* The served generation (0: none) and its layout check; -2 on another layout. */
static int read_served(gen_writer *g, const char *fingerprint, uint64_t *served) {
    redisReply *r = command(g, "GET gen", "GET %s:gen", g->prefix);
    if (!r) return -1;
    *served = r->type == REDIS_REPLY_STRING ? strtoull(r->str, NULL, 10) : 0;
    freeReplyObject(r);
    if (!*served) return 0;
    int absent;
    return iqp_rpipe_check_layout(g->pipe, *served, fingerprint, &absent);
}

/* The new generation's keys expire at Redis's TIME + ttl (Redis's clock,
 * not ours: PEXPIREAT is judged by it). */
static int set_deadline(gen_writer *g) {
    redisReply *r = command(g, "TIME", "TIME");
    if (!r) return -1;
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
             r->element[1]->type == REDIS_REPLY_STRING;
    int64_t now_ms = ok ? strtoll(r->element[0]->str, NULL, 10) * 1000 + strtoll(r->element[1]->str, NULL, 10) / 1000 : 0;
    freeReplyObject(r);
    if (!ok) return fail(g, IQP_RC_FAILED, "TIME on Redis at %s: unexpected reply", iqp_rpipe_where(g->pipe));
    snprintf(g->deadline, sizeof g->deadline, "%" PRId64, now_ms + g->pc->ttl_ms);
    g->started_ms = iqp_mono_ms();
    return 0;
}

static int allocate(gen_writer *g, uint64_t served, uint64_t *n) {
    for (int attempt = 0; attempt < 2; attempt++) {
        redisReply *r = command(g, "INCR gen:next", "INCR %s:gen:next", g->prefix);
        if (!r) return -1;
        *n = (uint64_t)r->integer;
        freeReplyObject(r);
        if (*n > served) return 0;
        if (!(r = command(g, "SET gen:next", "SET %s:gen:next %" PRIu64, g->prefix, served))) return -1;
        freeReplyObject(r);
    }
    return fail(g, IQP_RC_FAILED, "%s:gen:next does not move past %" PRIu64, g->prefix, served);
}

/* {"<feature>": {"<window>": [prior per counter]}} with exact doubles. */
static char *priors_json(const iqp_refresh_result *r) {
    const iqp_config *cfg = iqp_refresh_config(r);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fputc('{', f);
    for (size_t fi = 0; fi < cfg->n_features; fi++) {
        fprintf(f, "%s\"%s\":{", fi ? "," : "", cfg->features[fi].name);
        for (size_t w = 0; w < cfg->n_windows; w++) {
            fprintf(f, "%s\"%s\":[", w ? "," : "", cfg->windows[w].name);
            for (size_t k = 0; k < IQP_COUNTERS(cfg); k++)
                fprintf(f, "%s%.17g", k ? "," : "", iqp_refresh_prior(r, fi, w, k));
            fputc(']', f);
        }
        fputc('}', f);
    }
    fputc('}', f);
    fclose(f);
    return buf;
}

static int write_meta(gen_writer *g, uint64_t n, const char *layout, const char *fingerprint) {
    const iqp_refresh_result *r = g->r;
    char *priors = priors_json(r);
    redisReply *rep = command(g, "HSET meta",
                              "HSET %s:%" PRIu64 ":meta layout_version %d fingerprint %s layout %s created_ms %" PRId64
                              " as_of_ms %" PRId64 " published_ms %" PRId64 " smoothing %.17g top_k %llu "
                              "rank_measure %s priors %s",
                              g->prefix, n, IQP_RV_LAYOUT_VERSION, fingerprint, layout, iqp_wall_ms(),
                              iqp_refresh_as_of(r), iqp_wall_ms(), iqp_refresh_smoothing(r), (unsigned long long)iqp_refresh_top_k(r),
                              iqp_refresh_measure_name(g->cfg, iqp_refresh_rank_measure(r)), priors);
    free(priors);
    if (!rep) return -1;
    freeReplyObject(rep);
    rep = command(g, "PEXPIREAT meta", "PEXPIREAT %s:%" PRIu64 ":meta %s", g->prefix, n, g->deadline);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

/* ---- values ------------------------------------------------------------------------ */

/* The hash key of context c in generation n ("@top:" prepended to the
 * feature name for the top-K key). malloc'd; *len its length. */
static char *context_key(gen_writer *g, uint64_t n, const iqp_refresh_context *c, int top, size_t *len) {
    char feature[96];
    snprintf(feature, sizeof feature, "%s%s", top ? "@top:" : "", g->cfg->features[c->feature].name);
    const iqp_feature_spec *f = &g->cfg->features[c->feature];
    *len = iqp_rv_hash_key(NULL, 0, g->prefix, n, feature, g->cfg, f->dims, &c->ctx);
    char *key = malloc(*len + 1);
    if (!key) abort();
    iqp_rv_hash_key(key, *len + 1, g->prefix, n, feature, g->cfg, f->dims, &c->ctx);
    return key;
}

/* Filling one context's HSETs: its entities [from, from + n). */
typedef struct context_fill {
    gen_writer *g;
    const iqp_refresh_context *c;
} context_fill;

static iqp_rc fill_entities(void *ud, iqp_rpipe *pipe, size_t from, size_t n) {
    context_fill *f = ud;
    for (size_t i = 0; i < n; i++) {
        iqp_refresh_entity e;
        iqp_refresh_get_entity(f->g->r, f->c->first_entity + from + i, &e);
        iqp_rpipe_hset_item(pipe, e.item, e.item_len, e.counts);
    }
    f->g->stats->values += n;
    return IQP_RC_OK;
}

static int write_context(gen_writer *g, uint64_t n, size_t ci) {
    iqp_refresh_context c;
    iqp_refresh_get_context(g->r, ci, &c);
    size_t klen;
    char *key = context_key(g, n, &c, 0, &klen);
    context_fill fill = {.g = g, .c = &c};
    int rc = iqp_rpipe_put_hash(g->pipe, key, klen, c.context_count, g->cfg->n_windows, IQP_COUNTERS(g->cfg),
                                c.n_entities, fill_entities, &fill, "PEXPIREAT", g->deadline);
    g->stats->hashes++;
    free(key);
    if (rc == 0 && iqp_refresh_top_k(g->r) > 0) {
        key = context_key(g, n, &c, 1, &klen);
        iqp_buf_truncate(&g->topk, 0);
        iqp_buf_reserve(&g->topk, iqp_generation_topk_size(g->r, ci));
        unsigned char *v = g->topk.buf;
        size_t vlen = iqp_generation_encode_topk(g->r, ci, v);
        const char *argv[5] = {"SET", key, (const char *)v, "PXAT", g->deadline};
        size_t lens[5] = {3, klen, vlen, 4, strlen(g->deadline)};
        rc = iqp_rpipe_send(g->pipe, 5, argv, lens);
        g->stats->topk_keys++;
        free(key);
    }
    return rc;
}

/* ---- top-K encoding ----------------------------------------------------------------- */

size_t iqp_generation_topk_size(const iqp_refresh_result *r, size_t c) {
    const iqp_config *cfg = iqp_refresh_config(r);
    size_t n = 0;
    for (size_t w = 0; w < cfg->n_windows; w++) {
        const uint32_t *ents;
        size_t k = iqp_refresh_topk(r, c, w, &ents);
        n += 10;
        for (size_t i = 0; i < k; i++) {
            iqp_refresh_entity e;
            iqp_refresh_get_entity(r, ents[i], &e);
            n += 10 + e.item_len + 8;
        }
    }
    return n;
}

size_t iqp_generation_encode_topk(const iqp_refresh_result *r, size_t c, unsigned char *out) {
    const iqp_config *cfg = iqp_refresh_config(r);
    size_t n = 0;
    for (size_t w = 0; w < cfg->n_windows; w++) {
        const uint32_t *ents;
        size_t k = iqp_refresh_topk(r, c, w, &ents);
        n += iqp_rv_put_uvarint(out + n, k);
        for (size_t i = 0; i < k; i++) {
            iqp_refresh_entity e;
            iqp_refresh_get_entity(r, ents[i], &e);
            n += iqp_rv_put_uvarint(out + n, e.item_len);
            memcpy(out + n, e.item, e.item_len);
            n += e.item_len;
            double v = iqp_refresh_topk_value(r, ents[i], w);
            uint64_t bits;
            memcpy(&bits, &v, 8);
            for (int b = 7; b >= 0; b--) out[n++] = (unsigned char)(bits >> (8 * b));
        }
    }
    return n;
}

/* ---- flip and expiry ------------------------------------------------------------------- */

/* Switches readers to n, whose keys all expire at g->deadline: the
 * pointer gets the same deadline, so the generation and its pointer die
 * together. A publish that took half the TTL is not served: its keys
 * would live on for less than half the TTL. */
static int flip(gen_writer *g, uint64_t n) {
    if (iqp_rpipe_flush(g->pipe) < 0) return -1;
    int64_t took = iqp_mono_ms() - g->started_ms;
    if (2 * took > g->pc->ttl_ms)
        return fail(g, IQP_RC_FAILED, "the publish took %" PRId64 " ms, more than half the TTL (%" PRId64 " ms): generation %"
                    PRIu64 " would expire too soon after it is served; not served, use a longer TTL (--redis-ttl)",
                    took, g->pc->ttl_ms, n);
    redisReply *r = command(g, "the flip", "EVAL %s 2 %s:lease %s:gen %s %" PRIu64 " %s", FLIP_SCRIPT, g->prefix, g->prefix,
                            iqp_rpipe_lease_value(g->pipe), n, g->deadline);
    if (!r) return -1;
    int ok = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return ok ? 0 : fail(g, IQP_RC_REFUSED, "lost the lease %s:lease before the flip; generation %" PRIu64 " not served",
                         g->prefix, n);
}

/* The generation number of a key <prefix>:<G>:..., or 0 (the pointer,
 * the counter, the lease, or not this prefix's). */
static uint64_t key_generation(const gen_writer *g, const char *key, size_t len) {
    const char *pf = g->prefix;
    size_t pl = strlen(pf);
    if (pl >= 3 && pf[0] == '{' && pf[pl - 1] == '}' && len && key[0] != '{') pf++, pl -= 2; /* cluster form */
    size_t i = pl + 1;
    if (len <= i || memcmp(key, pf, pl) != 0 || key[pl] != ':') return 0;
    uint64_t n = 0;
    for (; i < len && key[i] >= '0' && key[i] <= '9' && n < UINT64_MAX / 10; i++) n = n * 10 + (uint64_t)(key[i] - '0');
    return i < len && key[i] == ':' ? n : 0;
}

/* SCANs master m for pattern and shortens the TTL of every key of a
 * generation other than keep. */
static int gc_scan(gen_writer *g, size_t m, const char *pattern, uint64_t keep, const char *grace) {
    char cursor[32] = "0";
    do {
        redisReply *r = iqp_rpipe_master_command(g->pipe, m, "SCAN", "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        if (!r) return -1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            return fail(g, IQP_RC_FAILED, "SCAN on Redis at %s: unexpected reply", iqp_rpipe_where(g->pipe));
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        int rc = 0;
        for (size_t i = 0; rc == 0 && i < r->element[1]->elements; i++) {
            const redisReply *k = r->element[1]->element[i];
            uint64_t gen = key_generation(g, k->str, k->len);
            if (gen == 0 || gen == keep) continue;
            const char *argv[4] = {"PEXPIRE", k->str, grace, "LT"};
            size_t lens[4] = {7, k->len, strlen(grace), 2};
            rc = iqp_rpipe_send(g->pipe, 4, argv, lens);
            g->stats->expired_keys++;
        }
        freeReplyObject(r);
        if (rc < 0 || iqp_rpipe_flush(g->pipe) < 0) return -1;
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

/* Garbage collection after the flip: every key of every generation but
 * the one served now -- the one just replaced, and any a killed writer
 * abandoned half-written -- gets at most grace_ms to live (PEXPIRE ... LT
 * never lengthens a TTL), so a reader that read the old pointer finishes
 * its call and nothing is left behind. In a Redis Cluster every master is
 * scanned, for the `{P}:` keys and for the feature keys (`P:`). */
static int gc_generations(gen_writer *g, uint64_t keep, int64_t grace_ms) {
    char pattern[2][160], grace[32];
    size_t pl = strlen(g->prefix);
    int cluster = iqp_rconn_is_cluster(iqp_rpipe_conn(g->pipe));
    snprintf(pattern[0], sizeof pattern[0], "%s:*", g->prefix);
    snprintf(pattern[1], sizeof pattern[1], "%.*s:*", (int)(pl > 2 ? pl - 2 : 0), g->prefix + 1);
    snprintf(grace, sizeof grace, "%" PRId64, grace_ms > 0 ? grace_ms : 1);
    size_t masters = iqp_rconn_masters(iqp_rpipe_conn(g->pipe));
    for (size_t m = 0; m < masters; m++)
        for (int p = 0; p <= cluster; p++)
            if (gc_scan(g, m, pattern[p], keep, grace) < 0) return -1;
    return 0;
}

/* ---- the whole publish ----------------------------------------------------------------- */

static int write_generation(gen_writer *g, uint64_t *n_out) {
    char fingerprint[17], *layout = iqp_rpipe_layout(g->cfg, fingerprint);
    uint64_t served = 0, n = 0;
    int rc = set_deadline(g);
    if (rc == 0) rc = read_served(g, fingerprint, &served);
    if (rc == 0) rc = allocate(g, served, &n);
    if (rc == 0) rc = write_meta(g, n, layout, fingerprint);
    if (rc == 0) iqp_failpoint("generation.meta");
    free(layout);
    g->stats->old_generation = served;
    g->stats->new_generation = n;
    for (size_t c = 0; rc == 0 && c < iqp_refresh_n_contexts(g->r); c++) {
        rc = write_context(g, n, c);
        if (rc == 0 && c == 0 && (rc = iqp_rpipe_flush(g->pipe)) == 0) iqp_failpoint("generation.values");
        if (rc == 0) rc = lease_renew(g, 0);
    }
    if (rc == 0) rc = lease_renew(g, 1);
    if (rc == 0) iqp_failpoint("generation.before_flip");
    if (rc == 0) rc = flip(g, n);
    if (rc == 0) iqp_failpoint("generation.after_flip");
    *n_out = n;
    return rc;
}

iqp_rc iqp_generation_publish(const iqp_refresh_result *r, const iqp_publisher_config *pc, const char *role,
                           const char *lease, int64_t grace_ms, iqp_generation_stats *stats, char *err,
                           size_t errlen) {
    iqp_generation_stats local = {0};
    gen_writer g = {.pc = pc, .r = r, .cfg = iqp_refresh_config(r), .stats = stats ? stats : &local,
                    .err = err, .errlen = errlen};
    memset(g.stats, 0, sizeof *g.stats);
    g.pipe = iqp_rpipe_new(pc->url, pc->prefix, pc->connect_timeout_ms, pc->command_timeout_ms, pc->pipeline_depth,
                           err, errlen);
    if (!g.pipe) return IQP_RC_FAILED;
    iqp_rpipe_on_error(g.pipe, keep_error, &g);
    g.prefix = iqp_rpipe_prefix(g.pipe);
    double t0 = iqp_mono_seconds();
    uint64_t n = 0;
    int rc = iqp_rpipe_connect(g.pipe);
    if (rc == 0) rc = lease_take(&g, role, lease);
    if (rc == 0) {
        rc = write_generation(&g, &n);
        if (rc == 0 && gc_generations(&g, n, grace_ms) < 0)
            fprintf(stderr, "iqp: generation %" PRIu64 " is served; expiring older ones failed: %s\n", n, err);
        if (!lease) iqp_rpipe_lease_release(g.pipe);
    }
    g.stats->write_s = iqp_mono_seconds() - t0;
    iqp_rpipe_free(g.pipe);
    iqp_buf_free(&g.topk);
    return rc == 0 ? IQP_RC_OK : rc == -2 ? IQP_RC_REFUSED : IQP_RC_FAILED;
}

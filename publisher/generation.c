/* generation.c -- a refresh result becomes generation N, then readers
 * switch to it with one SET (see generation.h).
 *
 * Order of writes, all pipelined (up to pipeline_depth commands in
 * flight, replies checked):
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
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "client/redis_cluster.h"
#include "client/redis_conn.h"
#include "schemas/redis_value.h"
#include "util/clock.h"

#define HSET_ITEMS 256

typedef struct gen_writer {
    iqp_rconn *redis;
    const iqp_publisher_config *pc;
    const iqp_refresh_result *r;
    const iqp_config *cfg;
    char prefix[128], lease_value[160], where[300];
    int inflight;
    int64_t lease_renewed_ms;
    int64_t started_ms;           /* monotonic, when the writes began */
    char deadline[32];            /* Redis time (ms) when every key of the new generation expires */
    unsigned char *buf;
    size_t buf_cap;
    iqp_generation_stats *stats;
    char *err;
    size_t errlen;
} gen_writer;

static int fail(gen_writer *g, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(gen_writer *g, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err, g->errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static redisReply *command(gen_writer *g, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = iqp_rconn_vcommand(g->redis, fmt, ap);
    va_end(ap);
    if (!r) {
        fail(g, -1, "Redis at %s: %s", g->where, iqp_rconn_errstr(g->redis));
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        fail(g, -1, "Redis at %s refused a command: %s", g->where, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* ---- pipeline ------------------------------------------------------------------ */

static int pipe_drain(gen_writer *g, int keep) {
    while (g->inflight > keep) {
        redisReply *r = NULL;
        if (iqp_rconn_get_reply(g->redis, &r) != REDIS_OK)
            return fail(g, -1, "reply from Redis at %s: %s", g->where, iqp_rconn_errstr(g->redis));
        g->inflight--;
        int bad = r->type == REDIS_REPLY_ERROR;
        if (bad) fail(g, -1, "Redis at %s refused a write: %s", g->where, r->str);
        freeReplyObject(r);
        if (bad) return -1;
    }
    return 0;
}

static int pipe_send(gen_writer *g, int argc, const char **argv, const size_t *lens) {
    if (iqp_rconn_append_argv(g->redis, argc, argv, lens) != REDIS_OK)
        return fail(g, -1, "command to Redis at %s: %s", g->where, iqp_rconn_errstr(g->redis));
    g->inflight++;
    return g->inflight >= g->pc->pipeline_depth ? pipe_drain(g, g->pc->pipeline_depth / 2) : 0;
}

static unsigned char *scratch(gen_writer *g, size_t need) {
    if (need > g->buf_cap) {
        free(g->buf);
        g->buf_cap = need * 2;
        if (!(g->buf = malloc(g->buf_cap))) abort();
    }
    return g->buf;
}

/* ---- test hook -------------------------------------------------------------------- */

void iqp_failpoint(const char *name) {
    const char *spec = getenv("IQP_FAILPOINT");
    size_t n = strlen(name);
    for (const char *p = spec; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
        if (strncmp(p, name, n) != 0 || p[n] != '=') continue;
        const char *action = p + n + 1;
        if (strncmp(action, "kill", 4) == 0) kill(getpid(), SIGKILL);
        if (strncmp(action, "sleep:", 6) == 0) usleep((useconds_t)atoi(action + 6) * 1000);
    }
}

/* ---- the lease ------------------------------------------------------------------- */

static const char *RENEW_SCRIPT =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
    "else return 0 end";
static const char *FLIP_SCRIPT =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2], 'PXAT', ARGV[3]) return 1 "
    "else return 0 end";

/* Takes the lease when free or ours (and renews it), else returns the
 * holder's value. */
static const char *TAKE_SCRIPT =
    "local v = redis.call('GET', KEYS[1]) "
    "if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end "
    "return v";
/* Replaces exactly the value seen (a dead holder's) by ours. */
static const char *TAKEOVER_SCRIPT =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end "
    "return 0";

/* Which processes kill(pid, 0) speaks for: this kernel's boot id and
 * this pid namespace ("?" when unknown: then no holder is provably
 * gone). Containers share a host name but not a pid namespace. */
static void pid_space(char *out, size_t cap) {
    char boot[40] = "", ns[64] = "";
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(boot, sizeof boot, f)) boot[0] = '\0';
        fclose(f);
    }
    boot[strcspn(boot, "\n-")] = '\0';
    ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
    ns[n > 0 ? n : 0] = '\0';
    const char *digits = strchr(ns, '[');
    if (!boot[0] || !digits) snprintf(out, cap, "?");
    else snprintf(out, cap, "%s/%.*s", boot, (int)strspn(digits + 1, "0123456789"), digits + 1);
}

void iqp_lease_value(char *out, size_t cap, const char *role, long long token) {
    char host[64] = "?", space[80];
    gethostname(host, sizeof host - 1);
    pid_space(space, sizeof space);
    snprintf(out, cap, "%s on %s pid %ld in %s since %" PRId64 " token %lld", role, host, (long)getpid(), space,
             iqp_wall_ms(), token);
}

int iqp_lease_new_value(iqp_rconn *redis, const char *prefix, const char *role, char *out, size_t cap) {
    redisReply *r = iqp_rconn_command(redis, "INCR %s:lease:token", prefix);
    int ok = r && r->type == REDIS_REPLY_INTEGER;
    if (ok) iqp_lease_value(out, cap, role, r->integer);
    else snprintf(out, cap, "%s", r && r->type == REDIS_REPLY_ERROR ? r->str : iqp_rconn_errstr(redis));
    if (r) freeReplyObject(r);
    return ok ? 0 : -1;
}

/* 1 when the lease value names a process that no longer exists and that
 * this process can tell about: same host, same kernel boot, same pid
 * namespace (the only holder that is provably gone; any other only by
 * the lease's expiry). */
static int holder_is_gone(const char *value) {
    char host[64] = "?", vhost[64], space[80], vspace[80];
    long pid;
    const char *on = strstr(value, " on ");
    gethostname(host, sizeof host - 1);
    pid_space(space, sizeof space);
    if (!on || sscanf(on, " on %63s pid %ld in %79s", vhost, &pid, vspace) != 3 || pid <= 0) return 0;
    return strcmp(vhost, host) == 0 && strcmp(vspace, space) == 0 && strcmp(space, "?") != 0 &&
           pid != (long)getpid() && kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

int iqp_lease_acquire(iqp_rconn *redis, const char *prefix, const char *value, char *holder,
                      size_t holder_cap) {
    for (int attempt = 0; attempt < 3; attempt++) {
        redisReply *r = iqp_rconn_command(redis, "EVAL %s 1 %s:lease %s %d", TAKE_SCRIPT, prefix, value, IQP_LEASE_MS);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(holder, holder_cap, "%s", r ? r->str : iqp_rconn_errstr(redis));
            if (r) freeReplyObject(r);
            return -1;
        }
        int ours = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
        snprintf(holder, holder_cap, "%s", r->type == REDIS_REPLY_STRING ? r->str : "another process");
        freeReplyObject(r);
        if (ours) return 1;
        if (!holder_is_gone(holder)) return 0;
        r = iqp_rconn_command(redis, "EVAL %s 1 %s:lease %s %s %d", TAKEOVER_SCRIPT, prefix, holder, value, IQP_LEASE_MS);
        ours = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
        if (r) freeReplyObject(r);
        if (ours) {
            fprintf(stderr, "iqp: took over the publish lease %s:lease from %s (that process is gone)\n", prefix,
                    holder);
            return 1;
        }
    }
    return 0;
}

void iqp_lease_release(iqp_rconn *redis, const char *prefix, const char *value) {
    static const char *release =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
    if (!redis || !value[0]) return;
    redisReply *r = iqp_rconn_command(redis, "EVAL %s 1 %s:lease %s", release, prefix, value);
    if (r) freeReplyObject(r);
}

static int lease_take(gen_writer *g, const char *role, const char *held) {
    char holder[256];
    if (held) snprintf(g->lease_value, sizeof g->lease_value, "%s", held);
    else if (iqp_lease_new_value(g->redis, g->prefix, role, g->lease_value, sizeof g->lease_value) < 0)
        return fail(g, -1, "Redis at %s: %s", g->where, g->lease_value);
    int rc = iqp_lease_acquire(g->redis, g->prefix, g->lease_value, holder, sizeof holder);
    if (rc < 0) return fail(g, -1, "Redis at %s: %s", g->where, holder);
    if (rc == 1) {
        g->lease_renewed_ms = iqp_mono_ms();
        return 0;
    }
    return fail(g, -2, "prefix '%s' on Redis at %s is being written by %s (key %s:lease, renewed every %d ms, "
                "lives %d ms); %s", g->prefix, g->where, holder, g->prefix, IQP_LEASE_RENEW_MS, IQP_LEASE_MS,
                "a running `iqp stream --redis` refreshes by itself; run `iqp refresh --redis` only "
                "where no stream publishes to this prefix");
}

/* Renews the lease (at most every IQP_LEASE_RENEW_MS); -2 when it was lost. */
static int lease_renew(gen_writer *g, int force) {
    if (!force && iqp_mono_ms() - g->lease_renewed_ms < IQP_LEASE_RENEW_MS) return 0;
    if (pipe_drain(g, 0) < 0) return -1;
    redisReply *r = command(g, "EVAL %s 1 %s:lease %s %d", RENEW_SCRIPT, g->prefix, g->lease_value, IQP_LEASE_MS);
    if (!r) return -1;
    int ok = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    if (!ok) return fail(g, -2, "lost the lease %s:lease while writing (a pause over %d ms?)", g->prefix, IQP_LEASE_MS);
    g->lease_renewed_ms = iqp_mono_ms();
    return 0;
}


/* ---- generations ------------------------------------------------------------------ */

/* The served generation (0: none) and its layout check; -2 on another layout. */
static int read_served(gen_writer *g, const char *fingerprint, uint64_t *served) {
    redisReply *r = command(g, "GET %s:gen", g->prefix);
    if (!r) return -1;
    *served = r->type == REDIS_REPLY_STRING ? strtoull(r->str, NULL, 10) : 0;
    freeReplyObject(r);
    if (!*served) return 0;
    r = command(g, "HMGET %s:%" PRIu64 ":meta layout_version fingerprint", g->prefix, *served);
    if (!r) return -1;
    int same = r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
               r->element[1]->type == REDIS_REPLY_STRING && atoi(r->element[0]->str) == IQP_RV_LAYOUT_VERSION &&
               strcmp(r->element[1]->str, fingerprint) == 0;
    int gone = r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_NIL;
    freeReplyObject(r);
    if (same || gone) return 0;
    return fail(g, -2, "Redis at %s serves another layout under prefix '%s' (%s:%" PRIu64 ":meta); use another "
                "prefix or database", g->where, g->prefix, g->prefix, *served);
}

/* The new generation's keys expire at Redis's TIME + ttl (Redis's clock,
 * not ours: PEXPIREAT is judged by it). */
static int set_deadline(gen_writer *g) {
    redisReply *r = command(g, "TIME");
    if (!r) return -1;
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
             r->element[1]->type == REDIS_REPLY_STRING;
    int64_t now_ms = ok ? strtoll(r->element[0]->str, NULL, 10) * 1000 + strtoll(r->element[1]->str, NULL, 10) / 1000 : 0;
    freeReplyObject(r);
    if (!ok) return fail(g, -1, "TIME on Redis at %s: unexpected reply", g->where);
    snprintf(g->deadline, sizeof g->deadline, "%" PRId64, now_ms + g->pc->ttl_ms);
    g->started_ms = iqp_mono_ms();
    return 0;
}

static int allocate(gen_writer *g, uint64_t served, uint64_t *n) {
    for (int attempt = 0; attempt < 2; attempt++) {
        redisReply *r = command(g, "INCR %s:gen:next", g->prefix);
        if (!r) return -1;
        *n = (uint64_t)r->integer;
        freeReplyObject(r);
        if (*n > served) return 0;
        if (!(r = command(g, "SET %s:gen:next %" PRIu64, g->prefix, served))) return -1;
        freeReplyObject(r);
    }
    return fail(g, -1, "%s:gen:next does not move past %" PRIu64, g->prefix, served);
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
    redisReply *rep = command(g,
                              "HSET %s:%" PRIu64 ":meta layout_version %d fingerprint %s layout %s created_ms %" PRId64
                              " as_of_ms %" PRId64 " published_ms %" PRId64 " smoothing %.17g top_k %llu "
                              "rank_measure %s priors %s",
                              g->prefix, n, IQP_RV_LAYOUT_VERSION, fingerprint, layout, iqp_wall_ms(),
                              iqp_refresh_as_of(r), iqp_wall_ms(), iqp_refresh_smoothing(r), (unsigned long long)iqp_refresh_top_k(r),
                              iqp_refresh_measure_name(g->cfg, iqp_refresh_rank_measure(r)), priors);
    free(priors);
    if (!rep) return -1;
    freeReplyObject(rep);
    rep = command(g, "PEXPIREAT %s:%" PRIu64 ":meta %s", g->prefix, n, g->deadline);
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

/* HSET key "" <context> item value ... for entities [from, from + count). */
static int write_items(gen_writer *g, const char *key, size_t klen, const iqp_refresh_context *c, size_t from,
                       size_t count) {
    size_t nw = g->cfg->n_windows, width = IQP_COUNTERS(g->cfg);
    const char *argv[4 + 2 * HSET_ITEMS];
    size_t lens[4 + 2 * HSET_ITEMS];
    unsigned char *v = scratch(g, IQP_RV_CONTEXT_MAX(nw) + count * IQP_RV_ITEM_MAX(nw, width));
    int argc = 0;
    argv[argc] = "HSET", lens[argc++] = 4;
    argv[argc] = key, lens[argc++] = klen;
    argv[argc] = IQP_RV_CONTEXT_FIELD, lens[argc++] = 0;
    argv[argc] = (const char *)v, lens[argc++] = iqp_rv_encode_context(c->context_count, nw, v);
    v += lens[argc - 1];
    for (size_t i = 0; i < count; i++) {
        iqp_refresh_entity e;
        iqp_refresh_get_entity(g->r, c->first_entity + from + i, &e);
        argv[argc] = e.item, lens[argc++] = e.item_len;
        argv[argc] = (const char *)v, lens[argc++] = iqp_rv_encode_item(e.counts, nw, width, v);
        v += lens[argc - 1];
    }
    g->stats->values += count;
    return pipe_send(g, argc, argv, lens);
}

static int write_context(gen_writer *g, uint64_t n, size_t ci) {
    iqp_refresh_context c;
    iqp_refresh_get_context(g->r, ci, &c);
    size_t klen;
    char *key = context_key(g, n, &c, 0, &klen);
    int rc = 0;
    for (size_t from = 0; rc == 0 && (from < c.n_entities || from == 0); from += HSET_ITEMS) {
        size_t count = c.n_entities - from < HSET_ITEMS ? c.n_entities - from : HSET_ITEMS;
        rc = write_items(g, key, klen, &c, from, count);
        if (c.n_entities == 0) break;
    }
    const char *exp[3] = {"PEXPIREAT", key, g->deadline};
    size_t elens[3] = {9, klen, strlen(g->deadline)};
    if (rc == 0) rc = pipe_send(g, 3, exp, elens);
    g->stats->hashes++;
    free(key);
    if (rc == 0 && iqp_refresh_top_k(g->r) > 0) {
        key = context_key(g, n, &c, 1, &klen);
        unsigned char *v = scratch(g, iqp_generation_topk_size(g->r, ci));
        size_t vlen = iqp_generation_encode_topk(g->r, ci, v);
        const char *argv[5] = {"SET", key, (const char *)v, "PXAT", g->deadline};
        size_t lens[5] = {3, klen, vlen, 4, strlen(g->deadline)};
        rc = pipe_send(g, 5, argv, lens);
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
    if (pipe_drain(g, 0) < 0) return -1;
    int64_t took = iqp_mono_ms() - g->started_ms;
    if (2 * took > g->pc->ttl_ms)
        return fail(g, -1, "the publish took %" PRId64 " ms, more than half the TTL (%" PRId64 " ms): generation %"
                    PRIu64 " would expire too soon after it is served; not served, use a longer TTL (--redis-ttl)",
                    took, g->pc->ttl_ms, n);
    redisReply *r = command(g, "EVAL %s 2 %s:lease %s:gen %s %" PRIu64 " %s", FLIP_SCRIPT, g->prefix, g->prefix,
                            g->lease_value, n, g->deadline);
    if (!r) return -1;
    int ok = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return ok ? 0 : fail(g, -2, "lost the lease %s:lease before the flip; generation %" PRIu64 " not served",
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
        redisReply *r = iqp_rconn_master_command(g->redis, m, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            if (r) freeReplyObject(r);
            return fail(g, -1, "SCAN on Redis at %s: %s", g->where, r ? "unexpected reply" : iqp_rconn_errstr(g->redis));
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        int rc = 0;
        for (size_t i = 0; rc == 0 && i < r->element[1]->elements; i++) {
            const redisReply *k = r->element[1]->element[i];
            uint64_t gen = key_generation(g, k->str, k->len);
            if (gen == 0 || gen == keep) continue;
            const char *argv[4] = {"PEXPIRE", k->str, grace, "LT"};
            size_t lens[4] = {7, k->len, strlen(grace), 2};
            rc = pipe_send(g, 4, argv, lens);
            g->stats->expired_keys++;
        }
        freeReplyObject(r);
        if (rc < 0 || pipe_drain(g, 0) < 0) return -1;
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
    int cluster = iqp_rconn_is_cluster(g->redis);
    snprintf(pattern[0], sizeof pattern[0], "%s:*", g->prefix);
    snprintf(pattern[1], sizeof pattern[1], "%.*s:*", (int)(pl > 2 ? pl - 2 : 0), g->prefix + 1);
    snprintf(grace, sizeof grace, "%" PRId64, grace_ms > 0 ? grace_ms : 1);
    size_t masters = iqp_rconn_masters(g->redis);
    for (size_t m = 0; m < masters; m++)
        for (int p = 0; p <= cluster; p++)
            if (gc_scan(g, m, pattern[p], keep, grace) < 0) return -1;
    return 0;
}

/* ---- the whole publish ----------------------------------------------------------------- */

static int write_generation(gen_writer *g, uint64_t *n_out) {
    char *layout = iqp_config_layout_json(g->cfg), fingerprint[24];
    snprintf(fingerprint, sizeof fingerprint, "%016llx", (unsigned long long)XXH3_64bits(layout, strlen(layout)));
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
        if (rc == 0 && c == 0 && (rc = pipe_drain(g, 0)) == 0) iqp_failpoint("generation.values");
        if (rc == 0) rc = lease_renew(g, 0);
    }
    if (rc == 0) rc = lease_renew(g, 1);
    if (rc == 0) iqp_failpoint("generation.before_flip");
    if (rc == 0) rc = flip(g, n);
    if (rc == 0) iqp_failpoint("generation.after_flip");
    *n_out = n;
    return rc;
}

int iqp_generation_publish(const iqp_refresh_result *r, const iqp_publisher_config *pc, const char *role,
                           const char *lease, int64_t grace_ms, iqp_generation_stats *stats, char *err,
                           size_t errlen) {
    iqp_generation_stats local = {0};
    gen_writer g = {.pc = pc, .r = r, .cfg = iqp_refresh_config(r), .stats = stats ? stats : &local,
                    .err = err, .errlen = errlen};
    memset(g.stats, 0, sizeof *g.stats);
    iqp_redis_url url;
    if (iqp_redis_url_parse(pc->url, &url, err, errlen) < 0) return -1;
    iqp_redis_url_describe(&url, g.where, sizeof g.where);
    if (iqp_redis_key_prefix(&url, pc->prefix ? pc->prefix : "iqp", g.prefix, sizeof g.prefix, err, errlen) < 0)
        return -1;
    if (!(g.redis = iqp_rconn_connect(&url, pc->connect_timeout_ms, pc->command_timeout_ms, err, errlen))) return -1;
    double t0 = iqp_mono_seconds();
    uint64_t n = 0;
    int rc = lease_take(&g, role, lease);
    if (rc == 0) {
        rc = write_generation(&g, &n);
        if (rc == 0 && gc_generations(&g, n, grace_ms) < 0)
            fprintf(stderr, "iqp: generation %" PRIu64 " is served; expiring older ones failed: %s\n", n, err);
        if (!lease) iqp_lease_release(g.redis, g.prefix, g.lease_value);
    }
    g.stats->write_s = iqp_mono_seconds() - t0;
    iqp_rconn_free(g.redis);
    free(g.buf);
    return rc;
}

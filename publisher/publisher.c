/* publisher.c -- the Redis publisher (see publisher.h for the design).
 *
 * Code map:
 *   keylist            a flat list of byte strings (dirty keys, records)
 *   session_*          one Redis connection (publisher/redis_pipe.h: the
 *                      pipeline, reply checks, the lease): connect, check
 *                      or create the generation and meta, decide whether
 *                      to resync
 *   publish_dirty      sorted dirty keys -> grouped by context -> HSETs
 *   publish_queue_round / resync   the two sources of dirty keys
 *   thread_main        reconnects with backoff, drains, waits for notify
 */
#include "publisher/publisher.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "model/buf.h"
#include "model/cells.h"
#include "aggregator/features.h"
#include "client/redis_cluster.h"
#include "publisher/generation.h"
#include "publisher/redis_pipe.h"
#include "refresher/refresh.h"
#include "schemas/redis_value.h"
#include "util/clock.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

void iqp_publisher_config_defaults(iqp_publisher_config *pc) {
    memset(pc, 0, sizeof *pc);
    pc->prefix = "iqp";
    pc->connect_timeout_ms = 1000;
    pc->command_timeout_ms = 2000;
    pc->ttl_ms = 8LL * 24 * 3600 * 1000;
    pc->batch_keys = 20000;
    pc->pipeline_depth = 256;
    pc->refresh_on_slide = 1;
    pc->refresh_threads = 1;
    pc->refresh_min_interval_ms = 10000;
    pc->refresh_grace_ms = 60000;
    pc->slice = -1;
}

/* ---- keylist: byte strings in one growable buffer ----------------------------- */

typedef struct keylist {
    iqp_buf bytes;        /* the strings, back to back (model/buf.h) */
    size_t *off;          /* n + 1 offsets: string i is bytes[off[i] .. off[i+1]) */
    size_t n, ncap;
} keylist;

static void keylist_clear(keylist *l) {
    iqp_buf_truncate(&l->bytes, 0);
    l->n = 0;
    if (l->off) l->off[0] = 0;
}

static void keylist_push(keylist *l, const void *s, size_t len) {
    if (l->n + 2 > l->ncap) {
        l->ncap = l->ncap * 2 + 1024;
        l->off = realloc(l->off, l->ncap * sizeof *l->off);
        if (!l->off) abort();
    }
    if (l->n == 0) l->off[0] = 0;
    if (!l->bytes.buf) iqp_buf_init(&l->bytes); /* get() never offsets NULL */
    iqp_buf_append(&l->bytes, s, len);
    l->off[++l->n] = l->bytes.len;
}

static const unsigned char *keylist_get(const keylist *l, size_t i, size_t *len) {
    *len = l->off[i + 1] - l->off[i];
    return l->bytes.buf + l->off[i];
}

static void keylist_free(keylist *l) {
    iqp_buf_free(&l->bytes);
    free(l->off);
    memset(l, 0, sizeof *l);
}

/* ---- the publisher ------------------------------------------------------------ */

struct iqp_publisher {
    iqp_store *st;
    iqp_pending *q;
    const iqp_config *cfg;
    iqp_publisher_config pc;
    iqp_rpipe *pipe;              /* the connection, its pipeline and the lease */
    const char *prefix;           /* the pipe's key prefix */
    const char *where;            /* the URL without password, for messages */
    const char *role;             /* "iqp stream" or "iqp publish", in the lease */
    char fingerprint[17];
    char *layout_json;
    iqp_metrics *m;
    /* session */
    uint64_t generation;
    char run_id[64];
    int policy_warned;
    int64_t refresh_bucket;       /* finest-granularity bucket of the last refresh (or start) */
    int64_t refresh_at_ms;        /* monotonic time of the last refresh */
    int64_t resync_started_ms;    /* monotonic */
    int need_resync;
    int slid;                     /* slice mode: the resync due is a window slide's */
    int replace_mode;             /* slice mode's full publish: hashes are replaced (write_name) */
    /* slice mode (pc.slice >= 0, see publisher.h): the hash whose
     * replacement (written as key + TMP_SUFFIX) is not renamed over it yet */
    iqp_keybuf replacing;
    char labels[40];              /* metric labels: partition="<slice>" in slice mode, "" else */
    /* scratch */
    keylist records, dirty;       /* a round's record keys and their dirty keys */
    uint64_t *seqs;               /* the sequence each record held when read */
    size_t n_seqs, seqs_cap;
    iqp_keybuf cursor;            /* where the next round reads from (empty: the start) */
    iqp_keybuf last_ctx;          /* the context prefix whose field was counted last */
    keylist done_ctx;             /* resync: contexts published with their items */
    int tracking;                 /* resync's item pass: fill done_ctx */
    /* thread */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int notified, stopping;
    int64_t drain_deadline_ms;
    iqp_publisher_stats stats;
    char last_error[512];
};

void iqp_publisher_declare_metrics(iqp_metrics *m) {
    static const double round_bounds[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    if (!m) return;
    iqp_metrics_declare(m, "iqp_publish_keys_pending", IQP_METRIC_GAUGE,
                        "Changed (feature, context[, item]) keys waiting in the store's publish queue", NULL, 0);
    iqp_metrics_declare(m, "iqp_publish_lag_seconds", IQP_METRIC_GAUGE,
                        "Age of the oldest queued change (0 when the queue is empty)", NULL, 0);
    iqp_metrics_declare(m, "iqp_published_values_total", IQP_METRIC_COUNTER,
                        "Hash fields written to Redis (items and context counts)", NULL, 0);
    iqp_metrics_declare(m, "iqp_redis_errors_total", IQP_METRIC_COUNTER,
                        "Failed Redis connections, commands and replies", NULL, 0);
    iqp_metrics_declare(m, "iqp_redis_connected", IQP_METRIC_GAUGE,
                        "1 while the publisher holds a working Redis connection", NULL, 0);
    iqp_metrics_declare(m, "iqp_publish_resyncs_total", IQP_METRIC_COUNTER,
                        "Full republishes after Redis lost data", NULL, 0);
    iqp_metrics_declare(m, "iqp_refreshes_total", IQP_METRIC_COUNTER,
                        "Whole-store refreshes published as a new generation (windows slid)", NULL, 0);
    iqp_metrics_declare(m, "iqp_refresh_seconds", IQP_METRIC_GAUGE,
                        "Duration of the last refresh: snapshot, compute, publish, flip", NULL, 0);
    iqp_metrics_declare(m, "iqp_generation", IQP_METRIC_GAUGE, "The generation being served", NULL, 0);
    iqp_metrics_declare(m, "iqp_publish_round_seconds", IQP_METRIC_HISTOGRAM,
                        "Time to publish one round of queued keys", round_bounds,
                        sizeof round_bounds / sizeof round_bounds[0]);
}

/* Every error, the pipe's included (its hook), is kept for the messages
 * and counted. */
static void count_error(void *publisher, const char *msg) {
    iqp_publisher *p = publisher;
    if (msg != p->last_error) snprintf(p->last_error, sizeof p->last_error, "%s", msg);
    p->stats.errors++;
    if (p->m) iqp_metrics_add(p->m, "iqp_redis_errors_total", p->labels, 1);
}

static void note_error(iqp_publisher *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_error(iqp_publisher *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->last_error, sizeof p->last_error, fmt, ap);
    va_end(ap);
    count_error(p, p->last_error);
}

static void drop_session(iqp_publisher *p) {
    iqp_rpipe_disconnect(p->pipe);
    p->stats.connected = 0;
    if (p->m) iqp_metrics_set(p->m, "iqp_redis_connected", p->labels, 0);
}

/* ---- session: connection, generation, meta -------------------------------------- */

#define command(p, what, ...) iqp_rpipe_command((p)->pipe, (what), __VA_ARGS__)

/* Redis's run_id: a restarted server without persistence has a new one.
 * In a Redis Cluster every master's counts, so the run_id kept is an
 * XXH3 of all of them, sorted (a restarted or added master changes it).
 * Also checks what the layout needs of each server (README, "Redis
 * settings"): version 7.0 or later (PEXPIRE ... LT, SET ... PXAT, a fixed
 * clock inside scripts); -2 when older. An eviction policy that may drop
 * keys without a TTL (the generation and lease counters) or the pointer is
 * reported once on stderr. */
static int by_id(const void *a, const void *b) { return strcmp(a, b); }

static void warn_eviction_policy(iqp_publisher *p, size_t master) {
    if (p->policy_warned) return;
    /* unchecked: a Redis that refuses CONFIG is not a failure */
    redisReply *c = iqp_rconn_master_command(iqp_rpipe_conn(p->pipe), master, "CONFIG GET maxmemory-policy");
    if (c && c->type == REDIS_REPLY_ARRAY && c->elements == 2 && c->element[1]->type == REDIS_REPLY_STRING &&
        strcmp(c->element[1]->str, "noeviction") != 0) {
        fprintf(stderr, "iqp: warning: Redis at %s has maxmemory-policy %s: when full it may evict the "
                "generation pointer or its counters; use noeviction (README, Redis settings)\n", p->where,
                c->element[1]->str);
        p->policy_warned = 1;
    }
    if (c) freeReplyObject(c);
}

static int read_run_id(iqp_publisher *p) {
    size_t n = iqp_rconn_masters(iqp_rpipe_conn(p->pipe));
    char (*ids)[64] = calloc(n ? n : 1, sizeof *ids);
    if (!ids) abort();
    for (size_t m = 0; m < n; m++) {
        redisReply *r = iqp_rpipe_master_command(p->pipe, m, "INFO server", "INFO server");
        if (!r) {
            free(ids);
            return -1;
        }
        const char *id = r->type == REDIS_REPLY_STRING ? strstr(r->str, "run_id:") : NULL;
        const char *ver = r->type == REDIS_REPLY_STRING ? strstr(r->str, "redis_version:") : NULL;
        int major = ver ? atoi(ver + 14) : 0;
        if (id) sscanf(id + 7, "%63[0-9a-fA-F]", ids[m]);
        freeReplyObject(r);
        if (major > 0 && major < 7) {
            note_error(p, "Redis at %s is version %d; iqp's layout needs Redis 7.0 or later", p->where, major);
            free(ids);
            return -2;
        }
        warn_eviction_policy(p, m);
    }
    qsort(ids, n, sizeof *ids, by_id);
    p->run_id[0] = '\0';
    if (n == 1) snprintf(p->run_id, sizeof p->run_id, "%s", ids[0]);
    else if (n > 1)
        snprintf(p->run_id, sizeof p->run_id, "%016llx", (unsigned long long)XXH3_64bits(ids, n * sizeof *ids));
    free(ids);
    return 0;
}

/* The generation Redis serves. When there is none (never published, or
 * the last one expired), a new number N = INCR <prefix>:gen:next becomes
 * the pointer, with the TTL its meta will get (stamp_meta renews both),
 * and need_resync is set: the new generation starts empty. */
static int read_generation(iqp_publisher *p) {
    for (int attempt = 0; attempt < 2; attempt++) {
        redisReply *r = command(p, "GET gen", "GET %s:gen", p->prefix);
        if (!r) return -1;
        if (r->type == REDIS_REPLY_STRING) {
            p->generation = strtoull(r->str, NULL, 10);
            freeReplyObject(r);
            if (p->generation == 0) {
                note_error(p, "%s:gen on Redis at %s does not hold a generation number", p->prefix, p->where);
                return -2;
            }
            return 0;
        }
        freeReplyObject(r);
        if (!(r = command(p, "INCR gen:next", "INCR %s:gen:next", p->prefix))) return -1;
        long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
        freeReplyObject(r);
        r = command(p, "SET gen", "SET %s:gen %lld NX PX %lld", p->prefix, n, (long long)p->pc.ttl_ms);
        if (!r) return -1;
        freeReplyObject(r);
        p->need_resync = 1;
    }
    note_error(p, "%s:gen on Redis at %s keeps disappearing", p->prefix, p->where);
    return -1;
}

/* Checks the generation's meta against this store's layout, writing it
 * when absent. -2 when Redis holds another layout. */
static int check_meta(iqp_publisher *p) {
    unsigned long long g = (unsigned long long)p->generation;
    int absent = 0;
    iqp_rc rc = iqp_rpipe_check_layout(p->pipe, p->generation, p->fingerprint, &absent);
    if (rc != IQP_RC_OK || !absent) return rc;
    redisReply *r = command(p, "HSET meta", "HSET %s:%llu:meta layout_version %d fingerprint %s layout %s created_ms %lld",
                            p->prefix, g, IQP_RV_LAYOUT_VERSION, p->fingerprint, p->layout_json,
                            (long long)iqp_wall_ms());
    p->need_resync = 1;
    if (!r) return -1;
    freeReplyObject(r);
    r = command(p, "PEXPIRE meta", "PEXPIRE %s:%llu:meta %lld", p->prefix, g, (long long)p->pc.ttl_ms);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

static void run_id_meta_key(const iqp_publisher *p, char *out, size_t cap) {
    snprintf(out, cap, "publish/redis_run_id/%s", p->prefix);
}

/* Slice mode: the generation this store's last full publish wrote into.
 * A slice writer never flips generations, but the pointer may move under
 * it (it expired and another slice writer started a new one, or an
 * `iqp refresh` flipped it while no slice writer ran): a store whose
 * generation is not the one served publishes everything again. */
static void generation_meta_key(const iqp_publisher *p, char *out, size_t cap) {
    snprintf(out, cap, "publish/redis_generation/%s", p->prefix);
}

/* Slice mode: the finest bucket the last full publish computed windows
 * in, so that a new owner of the partition slides what its former owner
 * published in an older bucket. */
static void bucket_meta_key(const iqp_publisher *p, char *out, size_t cap) {
    snprintf(out, cap, "publish/redis_bucket/%s", p->prefix);
}

/* The store's meta key as a string into out (cap bytes): 1, or 0 when
 * absent, unreadable or too long. */
static int store_meta_string(iqp_publisher *p, const char *key, char *out, size_t cap) {
    char *seen = NULL;
    size_t slen = 0;
    int ok = iqp_store_get_meta(p->st, key, &seen, &slen) == 1 && slen < cap;
    if (ok) memcpy(out, seen, slen), out[slen] = '\0';
    free(seen);
    return ok;
}

/* 1 when the store's meta key holds exactly want. */
static int store_meta_is(iqp_publisher *p, const char *key, const char *want) {
    char seen[128];
    return store_meta_string(p, key, seen, sizeof seen) && strcmp(seen, want) == 0;
}

/* ---- the publish lease ---------------------------------------------------------- */

/* <prefix>:lease names the one process that writes the prefix (see
 * publisher/generation.h). 0 when the lease is ours (taken, renewed or
 * taken over from a dead holder), -1 (retry later) when Redis failed or
 * another process holds it. */
static int lease_hold(iqp_publisher *p) {
    char holder[IQP_LEASE_VALUE_MAX];
    if (!iqp_rpipe_lease_value(p->pipe)[0] && iqp_rpipe_lease_value_new(p->pipe, p->role, NULL) != IQP_RC_OK)
        return -1;
    iqp_rc rc = iqp_rpipe_lease_acquire(p->pipe, holder, sizeof holder);
    if (rc == IQP_RC_FAILED) note_error(p, "lease on Redis at %s failed: %s", p->where, holder);
    if (rc == IQP_RC_REFUSED)
        note_error(p, "prefix '%s' on Redis at %s is being written by %s; changes stay queued until it is done",
                   p->prefix, p->where, holder);
    return rc == IQP_RC_OK ? 0 : -1;
}

/* Renews the lease when IQP_LEASE_RENEW_MS has passed since the last
 * renewal: called between the chunks of every long write (a full publish,
 * the rounds of `iqp publish`), which may take far longer than the lease
 * lives. 0, or -1 when the lease could not be held. */
static int lease_renew_if_due(iqp_publisher *p) {
    if (!iqp_rpipe_lease_due(p->pipe)) return 0;
    if (iqp_rpipe_flush(p->pipe) < 0) return -1; /* replies in order: none owed */
    return lease_hold(p);
}

/* Connects and prepares a session: 0, -1 (try again later) or -2 (refused). */
static int session_open(iqp_publisher *p) {
    if (iqp_rpipe_connected(p->pipe)) return 0;
    if (iqp_rpipe_connect(p->pipe) != IQP_RC_OK) return -1;
    int rc = read_run_id(p);
    if (rc == 0) rc = lease_hold(p);
    if (rc == 0) rc = read_generation(p);
    if (rc == 0) rc = check_meta(p);
    if (rc < 0) {
        drop_session(p);
        return rc;
    }
    char key[200], gen[32];
    run_id_meta_key(p, key, sizeof key);
    if (!store_meta_is(p, key, p->run_id)) p->need_resync = 1;
    snprintf(gen, sizeof gen, "%llu", (unsigned long long)p->generation);
    generation_meta_key(p, key, sizeof key);
    if (p->pc.slice >= 0 && !store_meta_is(p, key, gen)) p->need_resync = 1;
    bucket_meta_key(p, key, sizeof key);
    if (p->pc.slice >= 0 && !p->refresh_bucket && store_meta_string(p, key, gen, sizeof gen))
        p->refresh_bucket = strtoll(gen, NULL, 10); /* where its windows stand in Redis */
    p->stats.connected = 1;
    if (p->m) iqp_metrics_set(p->m, "iqp_redis_connected", p->labels, 1);
    return 0;
}

/* ---- writing one (feature, context) --------------------------------------------- */

/* One group of dirty keys: a context and some of its items. */
typedef struct ctx_group {
    iqp_parsed_key key;             /* context (and first item, unused) */
    const unsigned char *prefix;    /* the context prefix bytes */
    const char **items;
    size_t *item_lens;
    size_t n, cap;
} ctx_group;

static void group_add_item(ctx_group *g, const char *item, size_t len) {
    if (g->n == g->cap) {
        g->cap = g->cap * 2 + 64;
        g->items = realloc(g->items, g->cap * sizeof *g->items);
        g->item_lens = realloc(g->item_lens, g->cap * sizeof *g->item_lens);
        if (!g->items || !g->item_lens) abort();
    }
    g->items[g->n] = item;
    g->item_lens[g->n++] = len;
}

static void count_fields(iqp_publisher *p, uint64_t n) {
    p->stats.values += n;
    if (p->m && n) iqp_metrics_add(p->m, "iqp_published_values_total", p->labels, (double)n);
}

/* Counts the context field of the group starting now, unless it continues
 * the previous group's context (a resync chunk boundary), and notes the
 * context as done for the resync's context pass. */
static void context_written(iqp_publisher *p, const unsigned char *prefix, size_t len) {
    if (p->last_ctx.len == len && memcmp(p->last_ctx.buf, prefix, len) == 0) return;
    iqp_keybuf_truncate(&p->last_ctx, 0);
    iqp_keybuf_append(&p->last_ctx, prefix, len);
    p->stats.context_fields++;
    count_fields(p, 1);
    if (p->tracking) keylist_push(&p->done_ctx, prefix, len);
}

/* Filling one group's HSETs: the items' windowed counts, read from the
 * snapshot one HSET's worth at a time. */
typedef struct group_fill {
    iqp_publisher *p;
    const iqp_store_snapshot *snap;
    int64_t as_of;
    const ctx_group *g;
    iqp_feature_row *rows;
} group_fill;

static iqp_rc fill_items(void *ud, iqp_rpipe *pipe, size_t from, size_t n) {
    group_fill *f = ud;
    iqp_publisher *p = f->p;
    const ctx_group *g = f->g;
    size_t nw = p->cfg->n_windows, width = IQP_COUNTERS(p->cfg);
    int64_t counts[IQP_MAX_WINDOWS * IQP_MAX_COUNTERS];
    char err[512];
    if (iqp_features_read_at(p->st, f->snap, g->key.feature, &g->key.ctx, g->items + from, g->item_lens + from, n,
                             f->as_of, f->rows, err, sizeof err) < 0)
        return iqp_rpipe_fail(pipe, IQP_RC_FAILED, "%s", err);
    for (size_t i = 0; i < n; i++) {
        for (size_t w = 0; w < nw; w++)
            memcpy(counts + w * width, f->rows[i * nw + w].counters, width * sizeof counts[0]);
        iqp_rpipe_hset_item(pipe, g->items[from + i], g->item_lens[from + i], counts);
    }
    p->stats.item_fields += n;
    count_fields(p, n);
    return IQP_RC_OK;
}

/* ---- replacing hashes (slice mode's full publish) ----------------------------------- */

/* A slice writer's full publish goes into the generation being served,
 * so a hash may hold fields the store no longer has (items whose cells
 * all expired). Each hash is therefore written whole under key +
 * TMP_SUFFIX and renamed over the key when its last chunk is written:
 * RENAME is atomic and keeps the TTL just set, so a reader sees the old
 * hash or the new one, never a mix, and nothing stale stays. The
 * temporary name cannot be a hash of the layout (no context value holds
 * U+0000), and in a Redis Cluster it keeps the key's hash tag, so both
 * names are in one slot. */
static const char TMP_SUFFIX[] = "\0~replacing";
#define TMP_SUFFIX_LEN (sizeof TMP_SUFFIX - 1)

/* Renames the pending replacement over its key (none: nothing). */
static int finish_replacing(iqp_publisher *p) {
    if (!p->replacing.len) return 0;
    size_t klen = p->replacing.len - TMP_SUFFIX_LEN;
    const char *argv[3] = {"RENAME", (const char *)p->replacing.buf, (const char *)p->replacing.buf};
    size_t lens[3] = {6, p->replacing.len, klen};
    int rc = iqp_rpipe_send(p->pipe, 3, argv, lens);
    iqp_keybuf_truncate(&p->replacing, 0);
    return rc;
}

/* The name to write key under: key itself (NULL), or (replacing) its
 * temporary name, after renaming the previous hash's replacement when
 * this is another hash. *out points into p->replacing. */
static int write_name(iqp_publisher *p, const char *key, size_t klen, const char **out, size_t *olen) {
    *out = NULL;
    if (!p->replace_mode) return 0;
    size_t plen = p->replacing.len;
    if (plen && !(plen == klen + TMP_SUFFIX_LEN && memcmp(p->replacing.buf, key, klen) == 0) &&
        finish_replacing(p) < 0)
        return -1;
    if (!p->replacing.len) {
        iqp_keybuf_append(&p->replacing, key, klen);
        iqp_keybuf_append(&p->replacing, TMP_SUFFIX, TMP_SUFFIX_LEN);
    }
    *out = (const char *)p->replacing.buf;
    *olen = p->replacing.len;
    return 0;
}

static int publish_group(iqp_publisher *p, const iqp_store_snapshot *snap, int64_t as_of,
                         const ctx_group *g, iqp_feature_row *rows) {
    const iqp_feature_spec *f = &p->cfg->features[g->key.feature];
    const iqp_context *ctx = &g->key.ctx;
    int64_t cc[IQP_MAX_WINDOWS];
    char err[512], ttl[32];
    const char *tmp = NULL;
    size_t klen = iqp_rv_hash_key(NULL, 0, p->prefix, p->generation, f->name, p->cfg, f->dims, ctx), tlen = 0;
    char *key = malloc(klen + 1);
    if (!key) abort();
    iqp_rv_hash_key(key, klen + 1, p->prefix, p->generation, f->name, p->cfg, f->dims, ctx);
    int rc = iqp_features_read_context_at(p->st, snap, g->key.feature, ctx, as_of, cc, err, sizeof err);
    if (rc < 0) note_error(p, "%s", err);
    if (rc == 0) rc = write_name(p, key, klen, &tmp, &tlen);
    if (rc == 0) {
        context_written(p, g->prefix, g->key.prefix_len);
        group_fill fill = {.p = p, .snap = snap, .as_of = as_of, .g = g, .rows = rows};
        snprintf(ttl, sizeof ttl, "%" PRId64, p->pc.ttl_ms);
        rc = iqp_rpipe_put_hash(p->pipe, tmp ? tmp : key, tmp ? tlen : klen, cc, p->cfg->n_windows,
                                IQP_COUNTERS(p->cfg), g->n, fill_items, &fill, "PEXPIRE", ttl);
    }
    free(key);
    return rc;
}

/* ---- from dirty keys to groups ----------------------------------------------------- */

static int cmp_dirty(const void *a, const void *b, void *list) {
    size_t la, lb;
    const unsigned char *ka = keylist_get(list, *(const size_t *)a, &la);
    const unsigned char *kb = keylist_get(list, *(const size_t *)b, &lb);
    int c = memcmp(ka, kb, la < lb ? la : lb);
    return c ? c : (la > lb) - (la < lb);
}

/* Publishes every dirty key of l (any order, duplicates allowed). */
static int publish_dirty(iqp_publisher *p, const iqp_store_snapshot *snap, const keylist *l) {
    size_t *idx = malloc((l->n ? l->n : 1) * sizeof *idx);
    iqp_feature_row *rows = malloc(IQP_RPIPE_HSET_ITEMS * p->cfg->n_windows * sizeof *rows);
    if (!idx || !rows) abort();
    for (size_t i = 0; i < l->n; i++) idx[i] = i;
    qsort_r(idx, l->n, sizeof *idx, cmp_dirty, (void *)l);
    int64_t as_of = iqp_store_watermark(p->st);
    ctx_group g = {0};
    int open = 0, rc = 0;
    const unsigned char *prev = NULL;
    size_t prev_len = 0;
    for (size_t i = 0; i < l->n && rc == 0; i++) {
        size_t len;
        const unsigned char *k = keylist_get(l, idx[i], &len);
        if (prev && len == prev_len && memcmp(k, prev, len) == 0) continue;
        prev = k, prev_len = len;
        iqp_parsed_key pk;
        if (iqp_cells_parse_key(p->cfg, k, len, &pk) < 0) continue; /* not this layout's: nothing to show */
        if (open && (pk.prefix_len != g.key.prefix_len || memcmp(k, g.prefix, pk.prefix_len) != 0)) {
            rc = publish_group(p, snap, as_of, &g, rows);
            open = 0;
        }
        if (!open) {
            g.key = pk, g.prefix = k, g.n = 0;
            open = 1;
        }
        if (pk.item) group_add_item(&g, pk.item, pk.item_len);
    }
    if (rc == 0 && open) rc = publish_group(p, snap, as_of, &g, rows);
    if (rc == 0) rc = iqp_rpipe_flush(p->pipe);
    free(g.items);
    free(g.item_lens);
    free(rows);
    free(idx);
    return rc;
}

/* Records this round's watermark and wall clock in the generation's
 * meta and gives the meta and the pointer the same new TTL, in one script
 * (Redis fixes the time while a script runs, so both expire at the same
 * instant): a reader never finds a pointer to an expired generation for
 * longer than the read between the two. Refused when the pointer no
 * longer names this generation (it expired, or a refresh replaced it
 * under another lease) or when the lease is no longer ours (ARGV[6]: the
 * slice of a slice writer, "" for the whole prefix). A slice writer's
 * as_of_ms only moves forward: each slice's store has its own watermark,
 * and the meta says the newest one any slice computed windows as of. */
static const char *STAMP_SCRIPT =
    IQP_RPIPE_LUA_LEASE_HELD
    "if not lease_held(KEYS[3], ARGV[6], ARGV[5]) then return -1 end "
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
    "local cur = tonumber(redis.call('HGET', KEYS[2], 'as_of_ms')) "
    "if ARGV[6] == '' or not cur or cur < tonumber(ARGV[2]) then redis.call('HSET', KEYS[2], 'as_of_ms', ARGV[2]) end "
    "redis.call('HSET', KEYS[2], 'published_ms', ARGV[3]) "
    "redis.call('PEXPIRE', KEYS[2], ARGV[4]) "
    "redis.call('PEXPIRE', KEYS[1], ARGV[4]) "
    "return 1";

static int stamp_meta(iqp_publisher *p) {
    if (iqp_rpipe_flush(p->pipe) < 0 || lease_renew_if_due(p) < 0) return -1;
    unsigned long long g = (unsigned long long)p->generation;
    char lease_key[200], field[16] = "";
    iqp_rpipe_lease_key(p->pipe, lease_key, sizeof lease_key);
    if (p->pc.slice >= 0) snprintf(field, sizeof field, "%d", p->pc.slice);
    redisReply *r = command(p, "stamp meta", "EVAL %s 3 %s:gen %s:%llu:meta %s %llu %lld %lld %lld %s %s", STAMP_SCRIPT,
                            p->prefix, p->prefix, g, lease_key, g, (long long)iqp_store_watermark(p->st),
                            (long long)iqp_wall_ms(), (long long)p->pc.ttl_ms, iqp_rpipe_lease_value(p->pipe), field);
    if (!r) return -1;
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -2;
    freeReplyObject(r);
    if (v == 1) return 0;
    if (v == -1)
        note_error(p, "lost the lease %s on Redis at %s (another writer took over)", iqp_rpipe_lease_name(p->pipe),
                   p->where);
    else
        note_error(p, "%s:gen on Redis at %s no longer names generation %llu (its TTL ran out, or it was "
                   "replaced); publishing everything into a new generation", p->prefix, p->where, g);
    return -1;
}

/* ---- the queue ---------------------------------------------------------------------- */

/* Reading a round: up to max records from the cursor on. */
typedef struct collect {
    iqp_publisher *p;
    size_t max;
    int64_t oldest_ms;    /* earliest flush time among the records read */
} collect;

static void push_seq(iqp_publisher *p, uint64_t seq) {
    if (p->n_seqs == p->seqs_cap) {
        p->seqs_cap = p->seqs_cap * 2 + 1024;
        if (!(p->seqs = realloc(p->seqs, p->seqs_cap * sizeof *p->seqs))) abort();
    }
    p->seqs[p->n_seqs++] = seq;
}

static int collect_record(void *ud, const unsigned char *key, size_t klen, const char *val, size_t vlen) {
    collect *c = ud;
    iqp_pending_record rec;
    if (iqp_pending_parse(key, klen, val, vlen, &rec) < 0) return 0; /* not a record: left alone */
    if (!c->oldest_ms || (rec.flush_ms && rec.flush_ms < c->oldest_ms)) c->oldest_ms = rec.flush_ms;
    keylist_push(&c->p->records, key, klen);
    keylist_push(&c->p->dirty, rec.dirty, rec.dirty_len);
    push_seq(c->p, rec.seq);
    return c->p->records.n >= c->max;
}

static void set_lag(iqp_publisher *p, int64_t oldest_ms) {
    if (!p->m) return;
    double lag = oldest_ms ? (double)(iqp_wall_ms() - oldest_ms) / 1000.0 : 0.0;
    iqp_metrics_set(p->m, "iqp_publish_lag_seconds", p->labels, lag < 0 ? 0 : lag);
    iqp_metrics_set(p->m, "iqp_publish_keys_pending", p->labels, (double)iqp_pending_count(p->q));
}

/* Deleting after a round, under the queue lock: the records read are
 * compared with what the queue holds now; a record is deleted only while
 * it still holds the sequence that was read (a flush since then rewrote
 * it: that change is not published yet). Counts what stays. */
typedef struct sweep {
    iqp_publisher *p;
    iqp_store_batch *b;
    size_t next;              /* the next record read, in key order */
    const unsigned char *last;/* stop after this key (NULL: scan to the end) */
    size_t last_len;
    uint64_t before_seq;      /* drop_records_before: delete every record below */
    uint64_t seen, deleted;
} sweep;

static int keycmp(const unsigned char *a, size_t al, const unsigned char *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

/* Compares string i of l with key. */
static int keylist_cmp(const keylist *l, size_t i, const unsigned char *key, size_t len) {
    size_t il;
    const unsigned char *ik = keylist_get(l, i, &il);
    return keycmp(ik, il, key, len);
}

static int sweep_record(void *ud, const unsigned char *key, size_t klen, const char *val, size_t vlen) {
    sweep *w = ud;
    iqp_publisher *p = w->p;
    if (w->last && keycmp(key, klen, w->last, w->last_len) > 0) return 1;
    w->seen++;
    iqp_pending_record rec;
    if (iqp_pending_parse(key, klen, val, vlen, &rec) < 0) return 0;
    int del = 0;
    if (w->before_seq) {
        del = rec.seq < w->before_seq;
    } else {
        while (w->next < p->records.n && keylist_cmp(&p->records, w->next, key, klen) < 0) w->next++;
        del = w->next < p->records.n && keylist_cmp(&p->records, w->next, key, klen) == 0 &&
              p->seqs[w->next] == rec.seq;
    }
    if (del) {
        iqp_store_batch_delete(w->b, IQP_CF_PENDING, key, klen);
        w->deleted++;
    }
    return 0;
}

/* Runs a sweep from start (NULL: the first record); whole: the sweep saw
 * the whole queue, so the count of what stays is exact. */
static int run_sweep(iqp_publisher *p, sweep *w, const unsigned char *start, size_t start_len, int whole) {
    char err[512];
    iqp_pending_lock(p->q);
    w->b = iqp_store_batch_new(p->st);
    int rc = iqp_store_scan_keys(p->st, NULL, IQP_CF_PENDING, start, start_len, sweep_record, w, err, sizeof err);
    if (rc == 0 && w->deleted) rc = iqp_store_batch_commit(p->st, w->b, err, sizeof err);
    iqp_store_batch_free(w->b);
    if (rc == 0) {
        if (whole) iqp_pending_set_count(p->q, w->seen - w->deleted);
        else iqp_pending_consumed(p->q, w->deleted);
    }
    iqp_pending_unlock(p->q);
    if (rc < 0) note_error(p, "%s", err);
    return rc;
}

/* Publishes up to batch_keys queued records, from where the last round
 * stopped (so a key that keeps changing cannot starve the others): the
 * count published, 0 when there was nothing, -1 on error (the records
 * stay queued). */
static int publish_queue_round(iqp_publisher *p) {
    char err[512];
    collect c = {.p = p, .max = p->pc.batch_keys};
    int from_start = p->cursor.len == 0;
    keylist_clear(&p->records);
    keylist_clear(&p->dirty);
    p->n_seqs = 0;
    if (iqp_store_scan_keys(p->st, NULL, IQP_CF_PENDING, from_start ? NULL : p->cursor.buf, p->cursor.len,
                            collect_record, &c, err, sizeof err) < 0) {
        note_error(p, "%s", err);
        return -1;
    }
    int full = p->records.n >= c.max;
    set_lag(p, p->records.n ? c.oldest_ms : 0);
    if (p->records.n == 0) {
        iqp_keybuf_truncate(&p->cursor, 0);
        if (from_start) iqp_pending_set_count(p->q, 0);
        return 0;
    }
    double t0 = (double)iqp_mono_ms();
    /* the snapshot is taken after the records were read: it holds their counts */
    iqp_store_snapshot *snap = iqp_store_snapshot_new(p->st);
    iqp_keybuf_truncate(&p->last_ctx, 0);
    int rc = publish_dirty(p, snap, &p->dirty);
    iqp_store_snapshot_free(p->st, snap);
    if (rc == 0) rc = stamp_meta(p);
    size_t first_len, last_len;
    const unsigned char *first = keylist_get(&p->records, 0, &first_len);
    const unsigned char *last = keylist_get(&p->records, p->records.n - 1, &last_len);
    sweep w = {.p = p, .last = full ? last : NULL, .last_len = last_len};
    if (rc == 0) rc = run_sweep(p, &w, from_start ? NULL : first, from_start ? 0 : first_len, from_start && !full);
    if (rc < 0) return -1;
    /* the next round starts right after the last record read, or over */
    iqp_keybuf_truncate(&p->cursor, 0);
    if (full) {
        iqp_keybuf_append(&p->cursor, last, last_len);
        iqp_keybuf_append(&p->cursor, "", 1);
    }
    p->stats.rounds++;
    if (p->m) iqp_metrics_observe(p->m, "iqp_publish_round_seconds", p->labels, ((double)iqp_mono_ms() - t0) / 1000.0);
    set_lag(p, 0);
    return (int)p->records.n;
}

/* ---- resync: every key of a snapshot ---------------------------------------------- */

typedef struct resync_scan {
    keylist *dirty;
    size_t max;
    iqp_keybuf resume;  /* where the next chunk starts */
    int more;
    const keylist *skip; /* contexts pass: contexts the items pass wrote (key order) */
    size_t skip_pos;
} resync_scan;

/* 1 when the context prefix key[0..len) is in rs->skip (walked in order). */
static int skipped(resync_scan *rs, const unsigned char *key, size_t len) {
    if (!rs->skip) return 0;
    while (rs->skip_pos < rs->skip->n && keylist_cmp(rs->skip, rs->skip_pos, key, len) < 0) rs->skip_pos++;
    return rs->skip_pos < rs->skip->n && keylist_cmp(rs->skip, rs->skip_pos, key, len) == 0;
}

static int collect_dirty(void *ud, const unsigned char *key, size_t klen, const char *val, size_t vlen) {
    resync_scan *rs = ud;
    (void)val, (void)vlen;
    if (klen <= IQP_BUCKET_SUFFIX_LEN) return 0;
    size_t dlen = klen - IQP_BUCKET_SUFFIX_LEN, plen;
    if (skipped(rs, key, dlen)) return 0;
    if (rs->dirty->n) {
        const unsigned char *prev = keylist_get(rs->dirty, rs->dirty->n - 1, &plen);
        if (plen == dlen && memcmp(prev, key, dlen) == 0) return 0;
    }
    if (rs->dirty->n >= rs->max) {
        /* resume at this key's first cell next time */
        iqp_keybuf_truncate(&rs->resume, 0);
        iqp_keybuf_append(&rs->resume, key, dlen);
        rs->more = 1;
        return 1;
    }
    keylist_push(rs->dirty, key, dlen);
    return 0;
}

/* A full publish must end while the keys it wrote first still live:
 * one that has taken half the TTL is stopped (the next keys would
 * outlive the first ones by more than the TTL leaves them). */
static int check_ttl_covers(iqp_publisher *p) {
    int64_t took = iqp_mono_ms() - p->resync_started_ms;
    if (2 * took <= p->pc.ttl_ms) return 0;
    note_error(p, "the Redis TTL (%lld ms) is shorter than twice this full publish (%lld ms so far): the keys "
               "written first would expire before it ends; use a longer TTL (--redis-ttl, redis.ttl)",
               (long long)p->pc.ttl_ms, (long long)took);
    return -1;
}

static int resync_cf(iqp_publisher *p, const iqp_store_snapshot *snap, iqp_cf cf) {
    char err[512];
    resync_scan rs = {.dirty = &p->dirty, .max = p->pc.batch_keys, .skip = cf == IQP_CF_CONTEXTS ? &p->done_ctx : NULL};
    iqp_keybuf_init(&rs.resume);
    int rc = 0;
    do {
        keylist_clear(&p->dirty);
        int first = !rs.more;
        rs.more = 0;
        if (iqp_store_scan_keys(p->st, snap, cf, first ? NULL : rs.resume.buf, first ? 0 : rs.resume.len,
                                collect_dirty, &rs, err, sizeof err) < 0) {
            note_error(p, "%s", err);
            rc = -1;
        }
        if (rc == 0) rc = publish_dirty(p, snap, &p->dirty);
        if (rc == 0) iqp_failpoint("publish.resync");
        if (rc == 0) rc = check_ttl_covers(p);
        if (rc == 0) rc = lease_renew_if_due(p);
    } while (rc == 0 && rs.more);
    if (rc == 0) rc = finish_replacing(p);
    if (rc == 0) rc = iqp_rpipe_flush(p->pipe);
    iqp_keybuf_truncate(&p->replacing, 0); /* after a failure: the temporary hash expires */
    iqp_keybuf_free(&rs.resume);
    return rc;
}

/* Drops every queue record older than seq (a resync or a refresh
 * covered them); what a flush wrote since stays. */
static int drop_records_before(iqp_publisher *p, uint64_t seq) {
    sweep w = {.p = p, .before_seq = seq ? seq : 1};
    return run_sweep(p, &w, NULL, 0, 1);
}

static int64_t watermark_bucket(const iqp_publisher *p);

/* Records in the store that Redis now holds all of it: the run_id, and
 * (slice mode) the generation and the finest bucket of the watermark
 * its windows were computed in (bucket). */
static int note_full_publish(iqp_publisher *p, int64_t bucket) {
    char key[200], gen[32], err[512];
    iqp_store_batch *b = iqp_store_batch_new(p->st);
    run_id_meta_key(p, key, sizeof key);
    iqp_store_batch_put(b, IQP_CF_META, key, strlen(key), p->run_id, strlen(p->run_id));
    if (p->pc.slice >= 0) {
        snprintf(gen, sizeof gen, "%llu", (unsigned long long)p->generation);
        generation_meta_key(p, key, sizeof key);
        iqp_store_batch_put(b, IQP_CF_META, key, strlen(key), gen, strlen(gen));
        snprintf(gen, sizeof gen, "%lld", (long long)bucket);
        bucket_meta_key(p, key, sizeof key);
        if (bucket > 0) iqp_store_batch_put(b, IQP_CF_META, key, strlen(key), gen, strlen(gen));
    }
    int rc = iqp_store_batch_commit(p->st, b, err, sizeof err);
    iqp_store_batch_free(b);
    if (rc < 0) note_error(p, "%s", err);
    return rc;
}

/* Publishes every key of a snapshot; a slice writer replaces each hash
 * whole (write_name), which is also how its windows slide. */
static int resync(iqp_publisher *p) {
    uint64_t covered = iqp_pending_next_seq(p->q); /* records below were committed before the snapshot */
    double t0 = iqp_mono_seconds();
    p->resync_started_ms = iqp_mono_ms();
    int64_t bucket = watermark_bucket(p); /* at most the snapshot's: later flushes are queued */
    iqp_store_snapshot *snap = iqp_store_snapshot_new(p->st);
    /* every context with items is written with them; then only the
     * contexts without any, so each hash and field is written once */
    keylist_clear(&p->done_ctx);
    iqp_keybuf_truncate(&p->last_ctx, 0);
    p->tracking = 1;
    p->replace_mode = p->pc.slice >= 0;
    int rc = resync_cf(p, snap, IQP_CF_COUNTS);
    p->tracking = 0;
    if (rc == 0) rc = resync_cf(p, snap, IQP_CF_CONTEXTS);
    p->replace_mode = 0;
    keylist_free(&p->done_ctx);
    iqp_store_snapshot_free(p->st, snap);
    if (rc == 0) rc = stamp_meta(p);
    if (rc == 0) rc = drop_records_before(p, covered);
    if (rc == 0) rc = note_full_publish(p, bucket);
    if (rc < 0) return -1;
    p->need_resync = 0;
    if (p->pc.slice >= 0 && bucket > 0) p->refresh_bucket = bucket; /* its windows are in this bucket now */
    if (p->slid) { /* a window slide, done in place (slice mode) */
        p->slid = 0;
        p->stats.refreshes++;
        if (p->m) {
            iqp_metrics_add(p->m, "iqp_refreshes_total", p->labels, 1);
            iqp_metrics_set(p->m, "iqp_refresh_seconds", p->labels, iqp_mono_seconds() - t0);
        }
        return 0;
    }
    p->stats.resyncs++;
    if (p->m) iqp_metrics_add(p->m, "iqp_publish_resyncs_total", p->labels, 1);
    return 0;
}

/* ---- the thread ------------------------------------------------------------------------ */

/* Sleeps until notified, stopping, or ms passed. */
static void wait_for_work(iqp_publisher *p, int64_t ms) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) deadline.tv_sec++, deadline.tv_nsec -= 1000000000;
    pthread_mutex_lock(&p->mu);
    while (!p->notified && !p->stopping)
        if (pthread_cond_timedwait(&p->cv, &p->mu, &deadline) != 0) break;
    p->notified = 0;
    pthread_mutex_unlock(&p->mu);
}

static int should_exit(iqp_publisher *p) {
    pthread_mutex_lock(&p->mu);
    int stopping = p->stopping;
    int64_t deadline = p->drain_deadline_ms;
    pthread_mutex_unlock(&p->mu);
    if (!stopping) return 0;
    return iqp_pending_count(p->q) == 0 || iqp_mono_ms() >= deadline || !iqp_rpipe_connected(p->pipe);
}

/* ---- refresh when windows slide ----------------------------------------------------- */

static int64_t watermark_bucket(const iqp_publisher *p) {
    int64_t wm = iqp_store_watermark(p->st), g = p->cfg->gran_ms[0];
    return wm < 0 ? -1 : wm / g;
}

/* True when the watermark entered a new finest bucket since the last
 * refresh (the first call only notes where it starts). */
static int windows_slid(iqp_publisher *p) {
    int64_t b = watermark_bucket(p);
    if (!p->pc.refresh_on_slide || b < 0) return 0;
    if (p->refresh_bucket == 0) {
        p->refresh_bucket = b;
        return 0;
    }
    return b != p->refresh_bucket && iqp_mono_ms() - p->refresh_at_ms >= p->pc.refresh_min_interval_ms;
}

/* Recomputes everything as of the watermark and swaps generations. */
static int refresh_generation(iqp_publisher *p) {
    char err[1024];
    double t0 = iqp_mono_seconds();
    uint64_t covered = iqp_pending_next_seq(p->q); /* records below are in the snapshot */
    int64_t bucket = watermark_bucket(p);
    iqp_store_snapshot *snap = iqp_store_snapshot_new(p->st);
    iqp_refresh_params rp;
    iqp_refresh_params_defaults(&rp, iqp_store_watermark(p->st));
    rp.n_threads = p->pc.refresh_threads > 0 ? p->pc.refresh_threads : 1;
    iqp_refresh_result *r = NULL;
    iqp_generation_stats gs;
    int rc = iqp_refresh_run(p->st, snap, &rp, &r, err, sizeof err);
    iqp_store_snapshot_free(p->st, snap);
    if (rc == 0) rc = iqp_generation_publish(r, &p->pc, p->role, iqp_rpipe_lease_value(p->pipe),
                                             p->pc.refresh_grace_ms, &gs, err, sizeof err);
    iqp_refresh_free(r);
    p->refresh_at_ms = iqp_mono_ms();
    if (rc < 0) {
        note_error(p, "refresh: %s", err);
        return -1;
    }
    p->generation = gs.new_generation;
    p->refresh_bucket = bucket;
    iqp_rpipe_lease_touch(p->pipe); /* the refresh renewed it */
    p->stats.refreshes++;
    if (p->m) {
        iqp_metrics_add(p->m, "iqp_refreshes_total", p->labels, 1);
        iqp_metrics_set(p->m, "iqp_refresh_seconds", p->labels, iqp_mono_seconds() - t0);
        iqp_metrics_set(p->m, "iqp_generation", p->labels, (double)p->generation);
    }
    return drop_records_before(p, covered);
}

/* Windows slid: a whole-prefix writer publishes a new generation; a
 * slice writer may not flip the pointer (the other slices' writers
 * publish into it), so it replaces every hash of its slice in place
 * (resync's replace mode). */
static int slide(iqp_publisher *p) {
    if (p->pc.slice < 0) return refresh_generation(p);
    p->refresh_bucket = watermark_bucket(p);
    p->refresh_at_ms = iqp_mono_ms();
    p->slid = p->need_resync = 1; /* a failed one is retried by the next step */
    return resync(p);
}

/* One step of the loop; returns how long to back off (0: none). */
static int64_t publish_step(iqp_publisher *p, int64_t backoff) {
    if (!iqp_rpipe_connected(p->pipe)) {
        int rc = session_open(p);
        if (rc < 0) return rc == -2 ? 30000 : backoff;
        if (p->stats.errors) fprintf(stderr, "iqp stream: Redis at %s answers again; %" PRIu64 " changed keys queued\n",
                                     p->where, iqp_pending_count(p->q));
    }
    if (lease_renew_if_due(p) < 0) return backoff;
    if (p->need_resync && resync(p) < 0) return backoff;
    if (windows_slid(p) && slide(p) < 0) return backoff;
    int n = publish_queue_round(p);
    if (n < 0) return backoff;
    if (n == 0) wait_for_work(p, 1000);
    return 0;
}

static void *thread_main(void *arg) {
    iqp_publisher *p = arg;
    int64_t backoff = BACKOFF_MIN_MS;
    int reported = 0;
    while (!should_exit(p)) {
        int64_t wait = publish_step(p, backoff);
        if (wait == 0) {
            backoff = BACKOFF_MIN_MS;
            reported = 0;
            continue;
        }
        drop_session(p);
        if (!reported)
            fprintf(stderr, "iqp stream: %s; counting goes on, changes stay queued in the store, retrying\n",
                    p->last_error);
        reported = 1;
        set_lag(p, 0);
        wait_for_work(p, wait);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    return NULL;
}

/* ---- life cycle -------------------------------------------------------------------------- */

static iqp_publisher *publisher_new(iqp_store *st, iqp_pending *q, const iqp_publisher_config *pc,
                                    char *err, size_t errlen) {
    iqp_publisher *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->st = st;
    p->q = q;
    p->cfg = iqp_store_config(st);
    p->pc = *pc;
    if (p->pc.pipeline_depth < 64) p->pc.pipeline_depth = 64;
    if (p->pc.batch_keys == 0) p->pc.batch_keys = 20000;
    p->pipe = iqp_rpipe_new(pc->url, pc->prefix, pc->connect_timeout_ms, pc->command_timeout_ms,
                            p->pc.pipeline_depth, err, errlen);
    if (!p->pipe) {
        free(p);
        return NULL;
    }
    iqp_rpipe_on_error(p->pipe, count_error, p);
    if (pc->slice >= 0) {
        iqp_rpipe_lease_use_slice(p->pipe, pc->slice);
        snprintf(p->labels, sizeof p->labels, "partition=\"%d\"", pc->slice);
    }
    iqp_keybuf_init(&p->replacing);
    p->prefix = iqp_rpipe_prefix(p->pipe);
    p->where = iqp_rpipe_where(p->pipe);
    p->layout_json = iqp_rpipe_layout(p->cfg, p->fingerprint);
    iqp_keybuf_init(&p->cursor);
    iqp_keybuf_init(&p->last_ctx);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    return p;
}

static void publisher_free(iqp_publisher *p) {
    iqp_rpipe_lease_release(p->pipe);
    drop_session(p);
    keylist_free(&p->records);
    keylist_free(&p->dirty);
    free(p->seqs);
    iqp_keybuf_free(&p->cursor);
    iqp_keybuf_free(&p->last_ctx);
    iqp_keybuf_free(&p->replacing);
    keylist_free(&p->done_ctx);
    iqp_rpipe_free(p->pipe);
    free(p->layout_json);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

iqp_publisher *iqp_publisher_start(iqp_store *st, iqp_pending *q, const iqp_publisher_config *pc,
                                   iqp_metrics *m, char *err, size_t errlen) {
    iqp_publisher *p = publisher_new(st, q, pc, err, errlen);
    if (!p) return NULL;
    p->m = m;
    p->role = "iqp stream";
    if (m) iqp_metrics_set(m, "iqp_redis_connected", p->labels, 0);
    int rc = session_open(p);
    if (rc == -2) {
        snprintf(err, errlen, "%s", p->last_error);
        publisher_free(p);
        return NULL;
    }
    if (rc < 0)
        fprintf(stderr, "iqp stream: %s; counting goes on, publishing retries\n", p->last_error);
    if (pthread_create(&p->thread, NULL, thread_main, p) != 0) {
        snprintf(err, errlen, "cannot start the publisher thread");
        publisher_free(p);
        return NULL;
    }
    return p;
}

void iqp_publisher_notify(void *publisher) {
    iqp_publisher *p = publisher;
    pthread_mutex_lock(&p->mu);
    p->notified = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void iqp_publisher_stop(iqp_publisher *p, int drain_ms, iqp_publisher_stats *stats) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    p->drain_deadline_ms = iqp_mono_ms() + drain_ms;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    if (stats) *stats = p->stats;
    if (p->m && p->pc.slice >= 0) { /* the partition's gauges leave with it */
        static const char *const gauges[] = {"iqp_redis_connected", "iqp_publish_lag_seconds",
                                             "iqp_publish_keys_pending", "iqp_refresh_seconds"};
        for (size_t i = 0; i < sizeof gauges / sizeof gauges[0]; i++) iqp_metrics_remove(p->m, gauges[i], p->labels);
    }
    publisher_free(p);
}

iqp_rc iqp_publisher_run_once(iqp_store *st, iqp_pending *q, const iqp_publisher_config *pc, int full,
                           iqp_publisher_stats *stats, char *err, size_t errlen) {
    iqp_publisher *p = publisher_new(st, q, pc, err, errlen);
    if (!p) return IQP_RC_FAILED;
    p->role = "iqp publish";
    int rc = session_open(p) < 0 ? -1 : 0;
    if (rc == 0 && full) p->need_resync = 1;
    if (rc == 0 && p->need_resync) rc = resync(p);
    while (rc == 0 && (rc = lease_renew_if_due(p)) == 0) {
        int n = publish_queue_round(p);
        if (n <= 0) {
            rc = n;
            break;
        }
    }
    if (rc < 0) snprintf(err, errlen, "%s", p->last_error);
    if (stats) *stats = p->stats;
    publisher_free(p);
    return rc < 0 ? IQP_RC_FAILED : IQP_RC_OK;
}

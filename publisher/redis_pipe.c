/* redis_pipe.c -- the writers' pipelined Redis connection (see
 * redis_pipe.h).
 *
 * Code map:
 *   report / iqp_rpipe_fail   one error message, kept and handed to the hook
 *   iqp_rpipe_new / connect   URL, prefix, connection
 *   send / flush / command    the pipeline and its reply checks
 *   put_hash / hset_*         one (feature, context) hash, HSETs built in scratch
 *   lease_*                   <prefix>:lease, the slice leases, their scripts
 *   iqp_rpipe_layout, iqp_failpoint
 */
#include "publisher/redis_pipe.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "client/redis_conn.h"
#include "schemas/redis_value.h"
#include "util/clock.h"

#define HSET_ARGS (4 + 2 * IQP_RPIPE_HSET_ITEMS)

struct iqp_rpipe {
    iqp_redis_url url;
    int connect_timeout_ms, command_timeout_ms, depth;
    char prefix[128];
    char where[400];            /* the URL without password */
    iqp_rconn *redis;
    int inflight;
    char error[600];
    void (*on_error)(void *ud, const char *msg);
    void *on_error_ud;
    /* the HSET being built: arguments, and their bytes in values */
    const char *argv[HSET_ARGS];
    size_t lens[HSET_ARGS];
    int argc;
    size_t n_windows, width;
    unsigned char *values, *next_value;
    size_t values_cap;
    /* the lease */
    char lease_value[IQP_LEASE_VALUE_MAX];
    int64_t lease_renewed_ms;
    int slice;                  /* -1: the whole-prefix lease; else this slice's (iqp_rpipe_lease_use_slice) */
    char lease_name[180];       /* for messages */
};

/* ---- errors ------------------------------------------------------------------ */

static void vreport(iqp_rpipe *p, const char *fmt, va_list ap) {
    vsnprintf(p->error, sizeof p->error, fmt, ap);
    if (p->on_error) p->on_error(p->on_error_ud, p->error);
}

iqp_rc iqp_rpipe_fail(iqp_rpipe *p, iqp_rc rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(p, fmt, ap);
    va_end(ap);
    return rc;
}

void iqp_rpipe_on_error(iqp_rpipe *p, void (*fn)(void *ud, const char *msg), void *ud) {
    p->on_error = fn;
    p->on_error_ud = ud;
}

const char *iqp_rpipe_error(const iqp_rpipe *p) { return p->error; }

/* ---- connection ---------------------------------------------------------------- */

iqp_rpipe *iqp_rpipe_new(const char *url, const char *prefix, int connect_timeout_ms, int command_timeout_ms,
                         int depth, char *err, size_t errlen) {
    iqp_rpipe *p = calloc(1, sizeof *p);
    if (!p) abort();
    if (iqp_redis_url_parse(url, &p->url, err, errlen) < 0 ||
        iqp_redis_key_prefix(&p->url, prefix ? prefix : "iqp", p->prefix, sizeof p->prefix, err, errlen) < 0) {
        free(p);
        return NULL;
    }
    iqp_redis_url_describe(&p->url, p->where, sizeof p->where);
    p->connect_timeout_ms = connect_timeout_ms;
    p->command_timeout_ms = command_timeout_ms;
    p->depth = depth < 2 ? 2 : depth;
    iqp_rpipe_lease_use_slice(p, -1);
    return p;
}

void iqp_rpipe_free(iqp_rpipe *p) {
    if (!p) return;
    iqp_rpipe_disconnect(p);
    free(p->values);
    free(p);
}

iqp_rc iqp_rpipe_connect(iqp_rpipe *p) {
    char err[sizeof p->error];
    if (p->redis) return IQP_RC_OK;
    p->redis = iqp_rconn_connect(&p->url, p->connect_timeout_ms, p->command_timeout_ms, err, sizeof err);
    return p->redis ? IQP_RC_OK : iqp_rpipe_fail(p, IQP_RC_FAILED, "%s", err);
}

void iqp_rpipe_disconnect(iqp_rpipe *p) {
    iqp_rconn_free(p->redis);
    p->redis = NULL;
    p->inflight = 0;
}

int iqp_rpipe_connected(const iqp_rpipe *p) { return p->redis != NULL; }
const char *iqp_rpipe_prefix(const iqp_rpipe *p) { return p->prefix; }
const char *iqp_rpipe_where(const iqp_rpipe *p) { return p->where; }
iqp_rconn *iqp_rpipe_conn(iqp_rpipe *p) { return p->redis; }

/* ---- the pipeline ----------------------------------------------------------------- */

/* Reads replies until at most keep commands are in flight. */
static iqp_rc read_replies(iqp_rpipe *p, int keep) {
    while (p->inflight > keep) {
        redisReply *r = NULL;
        if (iqp_rconn_get_reply(p->redis, &r) != REDIS_OK)
            return iqp_rpipe_fail(p, IQP_RC_FAILED, "reply from Redis at %s: %s", p->where,
                                  iqp_rconn_errstr(p->redis));
        p->inflight--;
        int bad = r->type == REDIS_REPLY_ERROR;
        if (bad) iqp_rpipe_fail(p, IQP_RC_FAILED, "Redis at %s refused a write: %s", p->where, r->str);
        freeReplyObject(r);
        if (bad) return IQP_RC_FAILED;
    }
    return IQP_RC_OK;
}

iqp_rc iqp_rpipe_flush(iqp_rpipe *p) { return p->inflight > 0 ? read_replies(p, 0) : IQP_RC_OK; }

iqp_rc iqp_rpipe_send(iqp_rpipe *p, int argc, const char **argv, const size_t *lens) {
    if (!p->redis) return iqp_rpipe_fail(p, IQP_RC_FAILED, "not connected to Redis at %s", p->where);
    if (iqp_rconn_append_argv(p->redis, argc, argv, lens) != REDIS_OK)
        return iqp_rpipe_fail(p, IQP_RC_FAILED, "command to Redis at %s: %s", p->where, iqp_rconn_errstr(p->redis));
    p->inflight++;
    return p->inflight >= p->depth ? read_replies(p, p->depth / 2) : IQP_RC_OK;
}

/* NULL (reported) for no reply or an error reply. */
static redisReply *checked(iqp_rpipe *p, redisReply *r, const char *what) {
    if (!r) {
        iqp_rpipe_fail(p, IQP_RC_FAILED, "%s on Redis at %s failed: %s", what, p->where, iqp_rconn_errstr(p->redis));
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        iqp_rpipe_fail(p, IQP_RC_FAILED, "%s on Redis at %s failed: %s", what, p->where, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Before a synchronous command: connected, and no reply owed. */
static int ready(iqp_rpipe *p, const char *what) {
    if (!p->redis) {
        iqp_rpipe_fail(p, IQP_RC_FAILED, "%s: not connected to Redis at %s", what, p->where);
        return 0;
    }
    return iqp_rpipe_flush(p) == IQP_RC_OK;
}

redisReply *iqp_rpipe_command(iqp_rpipe *p, const char *what, const char *fmt, ...) {
    if (!ready(p, what)) return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = iqp_rconn_vcommand(p->redis, fmt, ap);
    va_end(ap);
    return checked(p, r, what);
}

redisReply *iqp_rpipe_master_command(iqp_rpipe *p, size_t m, const char *what, const char *fmt, ...) {
    if (!ready(p, what)) return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = iqp_rconn_master_vcommand(p->redis, m, fmt, ap);
    va_end(ap);
    return checked(p, r, what);
}

/* ---- one HSET ------------------------------------------------------------------------ */

static void push_arg(iqp_rpipe *p, const char *s, size_t len) {
    p->argv[p->argc] = s;
    p->lens[p->argc++] = len;
}

static void hset_begin(iqp_rpipe *p, const char *key, size_t klen, const int64_t *context_counts,
                       size_t n_windows, size_t width) {
    size_t need = IQP_RV_CONTEXT_MAX(n_windows) + IQP_RPIPE_HSET_ITEMS * IQP_RV_ITEM_MAX(n_windows, width);
    if (need > p->values_cap) {
        free(p->values);
        p->values_cap = need;
        if (!(p->values = malloc(need))) abort();
    }
    p->n_windows = n_windows;
    p->width = width;
    p->argc = 0;
    push_arg(p, "HSET", 4);
    push_arg(p, key, klen);
    push_arg(p, IQP_RV_CONTEXT_FIELD, 0);
    size_t n = iqp_rv_encode_context(context_counts, n_windows, p->values);
    push_arg(p, (const char *)p->values, n);
    p->next_value = p->values + n;
}

void iqp_rpipe_hset_item(iqp_rpipe *p, const char *item, size_t len, const int64_t *counts) {
    if (p->argc + 2 > HSET_ARGS) abort(); /* more than IQP_RPIPE_HSET_ITEMS: a caller's bug */
    size_t n = iqp_rv_encode_item(counts, p->n_windows, p->width, p->next_value);
    push_arg(p, item, len);
    push_arg(p, (const char *)p->next_value, n);
    p->next_value += n;
}

iqp_rc iqp_rpipe_put_hash(iqp_rpipe *p, const char *key, size_t klen, const int64_t *context_counts,
                          size_t n_windows, size_t width, size_t n_items, iqp_rpipe_fill_fn fill, void *ud,
                          const char *expire_cmd, const char *expire_arg) {
    iqp_rc rc = IQP_RC_OK;
    for (size_t from = 0; rc == IQP_RC_OK && (from < n_items || from == 0); from += IQP_RPIPE_HSET_ITEMS) {
        size_t n = n_items - from < IQP_RPIPE_HSET_ITEMS ? n_items - from : IQP_RPIPE_HSET_ITEMS;
        hset_begin(p, key, klen, context_counts, n_windows, width);
        if (n) rc = fill(ud, p, from, n);
        if (rc == IQP_RC_OK) rc = iqp_rpipe_send(p, p->argc, p->argv, p->lens);
        if (n_items == 0) break;
    }
    if (rc != IQP_RC_OK) return rc;
    const char *argv[3] = {expire_cmd, key, expire_arg};
    size_t lens[3] = {strlen(expire_cmd), klen, strlen(expire_arg)};
    return iqp_rpipe_send(p, 3, argv, lens);
}

/* ---- the lease ------------------------------------------------------------------------ */

/* The slice leases live in one hash, <prefix>:lease:slices: field = the
 * slice number, value = "<expiry, ms since the epoch> <lease value>" (a
 * field cannot expire on its own in Redis 7.0, so every script checks
 * the expiry against Redis's clock; the hash itself gets the TTL of its
 * last take or renewal, which no field outlives). LIVE(rec) is the
 * holder of a record, or nil when it is absent or expired. */
#define SLICE_LUA_LIVE                                                                                          \
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "      \
    "local function live(rec) if not rec then return nil end local sp = string.find(rec, ' ', 1, true) "        \
    "if not sp or tonumber(string.sub(rec, 1, sp - 1)) <= now then return nil end "                             \
    "return string.sub(rec, sp + 1) end "

/* Takes the whole-prefix lease when it is free or ours and no slice
 * lease is live (and renews it), else returns the holder's value.
 * KEYS: lease, lease:slices; ARGV: value, ttl. */
static const char *TAKE_SCRIPT =
    SLICE_LUA_LIVE
    "local v = redis.call('GET', KEYS[1]) "
    "if v ~= false and v ~= ARGV[1] then return v end "
    "local all = redis.call('HGETALL', KEYS[2]) "
    "for i = 1, #all, 2 do local who = live(all[i + 1]) if who then return who end end "
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";
/* Takes slice ARGV[1]'s lease when no whole-prefix writer holds the
 * prefix and the slice is free or ours. KEYS: lease, lease:slices; ARGV:
 * slice, value, ttl. */
static const char *SLICE_TAKE_SCRIPT =
    SLICE_LUA_LIVE
    "local g = redis.call('GET', KEYS[1]) if g then return g end "
    "local who = live(redis.call('HGET', KEYS[2], ARGV[1])) "
    "if who and who ~= ARGV[2] then return who end "
    "redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', now + tonumber(ARGV[3])) .. ' ' .. ARGV[2]) "
    "redis.call('PEXPIRE', KEYS[2], ARGV[3]) return 1";
/* Clears exactly the holder seen (a dead process), wherever it holds:
 * the whole-prefix lease or slice leases. KEYS: lease, lease:slices;
 * ARGV: seen. The caller then takes the lease again. */
static const char *CLEAR_SCRIPT =
    "local n = 0 "
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) n = n + 1 end "
    "local all = redis.call('HGETALL', KEYS[2]) "
    "for i = 1, #all, 2 do local sp = string.find(all[i + 1], ' ', 1, true) "
    "if sp and string.sub(all[i + 1], sp + 1) == ARGV[1] then redis.call('HDEL', KEYS[2], all[i]) n = n + 1 end end "
    "return n";
static const char *RENEW_SCRIPT =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
    "else return 0 end";
/* KEYS: lease:slices; ARGV: slice, value, ttl. */
static const char *SLICE_RENEW_SCRIPT =
    SLICE_LUA_LIVE
    "if live(redis.call('HGET', KEYS[1], ARGV[1])) ~= ARGV[2] then return 0 end "
    "redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[3])) .. ' ' .. ARGV[2]) "
    "redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1";
static const char *RELEASE_SCRIPT =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/* KEYS: lease:slices; ARGV: slice, value. */
static const char *SLICE_RELEASE_SCRIPT =
    "local rec = redis.call('HGET', KEYS[1], ARGV[1]) "
    "if not rec then return 0 end local sp = string.find(rec, ' ', 1, true) "
    "if sp and string.sub(rec, sp + 1) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

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

iqp_rc iqp_rpipe_lease_value_new(iqp_rpipe *p, const char *role, const char *held) {
    if (held) {
        snprintf(p->lease_value, sizeof p->lease_value, "%s", held);
        return IQP_RC_OK;
    }
    redisReply *r = iqp_rpipe_command(p, "lease token", "INCR %s:lease:token", p->prefix);
    if (!r) return IQP_RC_FAILED;
    long long token = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);
    char host[64] = "?", space[80];
    gethostname(host, sizeof host - 1);
    pid_space(space, sizeof space);
    int n = snprintf(p->lease_value, sizeof p->lease_value, "%s on %s pid %ld in %s since %" PRId64 " token %lld",
                     role, host, (long)getpid(), space, iqp_wall_ms(), token);
    if (n < 0 || (size_t)n >= sizeof p->lease_value) /* would not compare equal to itself in Redis */
        return iqp_rpipe_fail(p, IQP_RC_FAILED, "lease value for role '%s' on host '%s' is too long", role, host);
    return IQP_RC_OK;
}

const char *iqp_rpipe_lease_value(const iqp_rpipe *p) { return p->lease_value; }

/* One lease script on the connection, unreported: NULL with Redis's
 * error in holder. */
static redisReply *lease_eval(iqp_rpipe *p, char *holder, size_t cap, const char *fmt, ...) {
    if (iqp_rpipe_flush(p) != IQP_RC_OK) {
        snprintf(holder, cap, "%s", p->error);
        return NULL;
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = iqp_rconn_vcommand(p->redis, fmt, ap);
    va_end(ap);
    if (r && r->type != REDIS_REPLY_ERROR) return r;
    snprintf(holder, cap, "%s", r ? r->str : iqp_rconn_errstr(p->redis));
    if (r) freeReplyObject(r);
    return NULL;
}

/* One take: 1 ours, 0 held by another (holder set), -1 Redis failed. */
static int lease_take_once(iqp_rpipe *p, char *holder, size_t holder_cap) {
    redisReply *r = p->slice < 0
        ? lease_eval(p, holder, holder_cap, "EVAL %s 2 %s:lease %s:lease:slices %s %d", TAKE_SCRIPT, p->prefix,
                     p->prefix, p->lease_value, IQP_LEASE_MS)
        : lease_eval(p, holder, holder_cap, "EVAL %s 2 %s:lease %s:lease:slices %d %s %d", SLICE_TAKE_SCRIPT,
                     p->prefix, p->prefix, p->slice, p->lease_value, IQP_LEASE_MS);
    if (!r) return -1;
    int ours = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    snprintf(holder, holder_cap, "%s", r->type == REDIS_REPLY_STRING ? r->str : "another process");
    freeReplyObject(r);
    return ours;
}

iqp_rc iqp_rpipe_lease_acquire(iqp_rpipe *p, char *holder, size_t holder_cap) {
    if (!p->redis) {
        snprintf(holder, holder_cap, "not connected");
        return IQP_RC_FAILED;
    }
    for (int attempt = 0; attempt < 3; attempt++) {
        int ours = lease_take_once(p, holder, holder_cap);
        if (ours < 0) return IQP_RC_FAILED;
        if (ours) {
            p->lease_renewed_ms = iqp_mono_ms();
            return IQP_RC_OK;
        }
        if (!holder_is_gone(holder)) return IQP_RC_REFUSED;
        char seen[IQP_LEASE_VALUE_MAX];
        snprintf(seen, sizeof seen, "%s", holder);
        redisReply *r = lease_eval(p, holder, holder_cap, "EVAL %s 2 %s:lease %s:lease:slices %s", CLEAR_SCRIPT,
                                   p->prefix, p->prefix, seen);
        if (r && r->type == REDIS_REPLY_INTEGER && r->integer > 0)
            fprintf(stderr, "iqp: cleared the publish lease%s of %s on %s (that process is gone)\n",
                    r->integer > 1 ? "s" : "", seen, p->prefix);
        if (r) freeReplyObject(r);
        snprintf(holder, holder_cap, "%s", seen);
    }
    return IQP_RC_REFUSED;
}

iqp_rc iqp_rpipe_lease_extend(iqp_rpipe *p) {
    redisReply *r = p->slice < 0
        ? iqp_rpipe_command(p, "lease renewal", "EVAL %s 1 %s:lease %s %d", RENEW_SCRIPT, p->prefix, p->lease_value,
                            IQP_LEASE_MS)
        : iqp_rpipe_command(p, "lease renewal", "EVAL %s 1 %s:lease:slices %d %s %d", SLICE_RENEW_SCRIPT, p->prefix,
                            p->slice, p->lease_value, IQP_LEASE_MS);
    if (!r) return IQP_RC_FAILED;
    int ok = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    if (!ok)
        return iqp_rpipe_fail(p, IQP_RC_REFUSED, "lost the lease %s while writing (a pause over %d ms?)",
                              iqp_rpipe_lease_name(p), IQP_LEASE_MS);
    p->lease_renewed_ms = iqp_mono_ms();
    return IQP_RC_OK;
}

int iqp_rpipe_lease_due(const iqp_rpipe *p) { return iqp_mono_ms() - p->lease_renewed_ms >= IQP_LEASE_RENEW_MS; }
void iqp_rpipe_lease_touch(iqp_rpipe *p) { p->lease_renewed_ms = iqp_mono_ms(); }

void iqp_rpipe_lease_use_slice(iqp_rpipe *p, int slice) {
    p->slice = slice;
    if (slice < 0) snprintf(p->lease_name, sizeof p->lease_name, "%s:lease", p->prefix);
    else snprintf(p->lease_name, sizeof p->lease_name, "%s:lease:slices field %d", p->prefix, slice);
}

int iqp_rpipe_lease_slice(const iqp_rpipe *p) { return p->slice; }
const char *iqp_rpipe_lease_name(const iqp_rpipe *p) { return p->lease_name; }

void iqp_rpipe_lease_key(const iqp_rpipe *p, char *out, size_t cap) {
    snprintf(out, cap, p->slice < 0 ? "%s:lease" : "%s:lease:slices", p->prefix);
}

void iqp_rpipe_lease_release(iqp_rpipe *p) {
    char ignored[IQP_LEASE_VALUE_MAX];
    if (!p->redis || !p->lease_value[0]) return;
    redisReply *r = p->slice < 0
        ? lease_eval(p, ignored, sizeof ignored, "EVAL %s 1 %s:lease %s", RELEASE_SCRIPT, p->prefix, p->lease_value)
        : lease_eval(p, ignored, sizeof ignored, "EVAL %s 1 %s:lease:slices %d %s", SLICE_RELEASE_SCRIPT, p->prefix,
                     p->slice, p->lease_value);
    if (r) freeReplyObject(r);
}

/* ---- meta, test hook -------------------------------------------------------------------- */

char *iqp_rpipe_layout(const iqp_config *cfg, char fingerprint[17]) {
    char *layout = iqp_config_layout_json(cfg);
    snprintf(fingerprint, 17, "%016llx", (unsigned long long)XXH3_64bits(layout, strlen(layout)));
    return layout;
}

iqp_rc iqp_rpipe_check_layout(iqp_rpipe *p, uint64_t generation, const char *fingerprint, int *absent) {
    redisReply *r = iqp_rpipe_command(p, "HMGET meta", "HMGET %s:%" PRIu64 ":meta layout_version fingerprint",
                                      p->prefix, generation);
    if (!r) return IQP_RC_FAILED;
    const redisReply *ver = r->type == REDIS_REPLY_ARRAY && r->elements == 2 ? r->element[0] : NULL;
    const redisReply *fp = ver ? r->element[1] : NULL;
    char want[16];
    snprintf(want, sizeof want, "%d", IQP_RV_LAYOUT_VERSION);
    *absent = ver && ver->type == REDIS_REPLY_NIL;
    int same = ver && ver->type == REDIS_REPLY_STRING && fp->type == REDIS_REPLY_STRING &&
               strcmp(ver->str, want) == 0 && strcmp(fp->str, fingerprint) == 0;
    iqp_rc rc = IQP_RC_OK;
    if (!same && !*absent)
        rc = iqp_rpipe_fail(p, IQP_RC_REFUSED, "Redis at %s serves another layout under prefix '%s' (%s:%" PRIu64
                            ":meta: layout_version %s, fingerprint %s; this config: layout_version %d, fingerprint "
                            "%s); use another --redis prefix or database, or delete those keys",
                            p->where, p->prefix, p->prefix, generation,
                            ver && ver->type == REDIS_REPLY_STRING ? ver->str : "?",
                            fp && fp->type == REDIS_REPLY_STRING ? fp->str : "?", IQP_RV_LAYOUT_VERSION,
                            fingerprint);
    freeReplyObject(r);
    return rc;
}

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

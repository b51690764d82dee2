/* redis_conn.c -- Redis URLs and connections (see redis_conn.h). */
#include "client/redis_conn.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Copies s[0..n) into dst[cap]; -1 when it does not fit. */
static int copy_part(char *dst, size_t cap, const char *s, size_t n) {
    if (n >= cap) return -1;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return 0;
}

/* Parses a decimal in [lo, hi] from s[0..n); -1 otherwise. */
static int parse_int(const char *s, size_t n, int lo, int hi, int *out) {
    if (n == 0 || n > 9) return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_unix(const char *url, const char *shown, iqp_redis_url *u, char *err, size_t errlen) {
    const char *path = url + strlen("unix://");
    const char *q = strchr(path, '?');
    size_t plen = q ? (size_t)(q - path) : strlen(path);
    if (plen == 0 || path[0] != '/') {
        snprintf(err, errlen, "Redis URL '%s': unix:// needs an absolute socket path", shown);
        return -1;
    }
    if (copy_part(u->host, sizeof u->host, path, plen) < 0) {
        snprintf(err, errlen, "Redis URL '%s': socket path too long", shown);
        return -1;
    }
    if (q && (strncmp(q, "?db=", 4) != 0 || parse_int(q + 4, strlen(q + 4), 0, 1 << 20, &u->db) < 0)) {
        snprintf(err, errlen, "Redis URL '%s': the only query parameter is ?db=N", shown);
        return -1;
    }
    u->is_unix = 1;
    return 0;
}

/* userinfo = [user]:password (a bare word is taken as the password). */
static int parse_userinfo(const char *s, size_t n, iqp_redis_url *u) {
    const char *colon = memchr(s, ':', n);
    if (!colon) return copy_part(u->password, sizeof u->password, s, n);
    if (copy_part(u->user, sizeof u->user, s, (size_t)(colon - s)) < 0) return -1;
    return copy_part(u->password, sizeof u->password, colon + 1, n - (size_t)(colon - s) - 1);
}

/* host[:port] or [v6][:port] in s[0..n). */
static int parse_hostport(const char *s, size_t n, iqp_redis_url *u) {
    const char *port = NULL;
    size_t hlen;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close) return -1;
        if (copy_part(u->host, sizeof u->host, s + 1, (size_t)(close - s - 1)) < 0) return -1;
        if ((size_t)(close - s + 1) < n) {
            if (close[1] != ':') return -1;
            port = close + 2;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        hlen = colon ? (size_t)(colon - s) : n;
        if (copy_part(u->host, sizeof u->host, s, hlen) < 0) return -1;
        if (colon) port = colon + 1;
    }
    if (u->host[0] == '\0') return -1;
    if (port && parse_int(port, (size_t)(s + n - port), 1, 65535, &u->port) < 0) return -1;
    return 0;
}

/* redis-cluster://[[user]:password@]host:port[,host:port...][/0]: the
 * seeds a cluster's slot map is first asked from. A cluster has only
 * database 0. */
static int parse_cluster(const char *url, const char *shown, iqp_redis_url *u, char *err, size_t errlen) {
    const char *p = url + strlen("redis-cluster://"), *end = p + strlen(p);
    const char *slash = memchr(p, '/', (size_t)(end - p)), *stop = slash ? slash : end;
    const char *at = NULL;
    for (const char *c = p; c < stop; c++)
        if (*c == '@') at = c;
    if (at && parse_userinfo(p, (size_t)(at - p), u) < 0) {
        snprintf(err, errlen, "Redis URL: user or password too long");
        return -1;
    }
    if (slash && slash + 1 < end && strcmp(slash + 1, "0") != 0) {
        snprintf(err, errlen, "Redis URL '%s': a Redis Cluster has only database 0", shown);
        return -1;
    }
    for (const char *s = at ? at + 1 : p; s < stop;) {
        const char *comma = memchr(s, ',', (size_t)(stop - s)), *e = comma ? comma : stop;
        if (u->n_seeds == IQP_REDIS_MAX_SEEDS) {
            snprintf(err, errlen, "Redis URL '%s': at most %d cluster seed nodes", shown, IQP_REDIS_MAX_SEEDS);
            return -1;
        }
        u->port = 6379;
        if (parse_hostport(s, (size_t)(e - s), u) < 0) {
            snprintf(err, errlen, "Redis URL '%s': expected host[:port][,host[:port]...] with ports in 1..65535",
                     shown);
            return -1;
        }
        snprintf(u->seeds[u->n_seeds].host, sizeof u->seeds[0].host, "%s", u->host);
        u->seeds[u->n_seeds++].port = u->port;
        s = comma ? comma + 1 : stop;
    }
    if (u->n_seeds == 0) {
        snprintf(err, errlen, "Redis URL '%s': redis-cluster:// needs at least one host:port", shown);
        return -1;
    }
    snprintf(u->host, sizeof u->host, "%s", u->seeds[0].host);
    u->port = u->seeds[0].port;
    u->is_cluster = 1;
    return 0;
}

int iqp_redis_url_parse(const char *url, iqp_redis_url *u, char *err, size_t errlen) {
    memset(u, 0, sizeof *u);
    u->port = 6379;
    if (!url || !*url) {
        snprintf(err, errlen, "empty Redis URL (expected redis://host:port/db or unix:///path)");
        return -1;
    }
    char shown[600];
    iqp_redis_url_mask(url, shown, sizeof shown);
    if (strncmp(url, "unix://", 7) == 0) return parse_unix(url, shown, u, err, errlen);
    if (strncmp(url, "redis-cluster://", 16) == 0) return parse_cluster(url, shown, u, err, errlen);
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "Redis URL '%s' must start with redis://, redis-cluster:// or unix://", shown);
        return -1;
    }
    const char *p = url + 8, *end = p + strlen(p);
    const char *slash = memchr(p, '/', (size_t)(end - p));
    const char *auth_end = NULL;
    for (const char *c = p; c < (slash ? slash : end); c++)
        if (*c == '@') auth_end = c; /* the last '@': passwords may hold '@' */
    if (auth_end && parse_userinfo(p, (size_t)(auth_end - p), u) < 0) {
        snprintf(err, errlen, "Redis URL: user or password too long");
        return -1;
    }
    const char *hp = auth_end ? auth_end + 1 : p;
    if (parse_hostport(hp, (size_t)((slash ? slash : end) - hp), u) < 0) {
        snprintf(err, errlen, "Redis URL '%s': expected host[:port] with a port in 1..65535", shown);
        return -1;
    }
    if (slash && slash + 1 < end && parse_int(slash + 1, (size_t)(end - slash - 1), 0, 1 << 20, &u->db) < 0) {
        snprintf(err, errlen, "Redis URL '%s': the database after '/' must be a number", shown);
        return -1;
    }
    return 0;
}

void iqp_redis_url_mask(const char *url, char *out, size_t cap) {
    if (!url) url = "";
    const char *scheme = strstr(url, "://");
    const char *start = scheme ? scheme + 3 : url;
    /* the last '@' anywhere: a password may hold '/' or '@' (then the
     * URL does not parse, and the message must not show it either) */
    const char *at = strrchr(start, '@');
    if (!at) {
        snprintf(out, cap, "%s", url);
        return;
    }
    const char *colon = memchr(start, ':', (size_t)(at - start));
    size_t keep = colon ? (size_t)(colon - url) + 1 : (size_t)(start - url);
    snprintf(out, cap, "%.*s***%s", (int)keep, url, at);
}

int iqp_redis_url_resolve(const char **url, const char *url_file, int use_env, char *buf, size_t cap,
                          char *err, size_t errlen) {
    if (*url && url_file) {
        snprintf(err, errlen, "give a Redis URL or a Redis URL file (%s), not both", url_file);
        return -1;
    }
    if (url_file) {
        FILE *f = fopen(url_file, "r");
        if (!f) {
            snprintf(err, errlen, "cannot read the Redis URL file %s: %s", url_file, strerror(errno));
            return -1;
        }
        int got = fgets(buf, (int)cap, f) != NULL;
        fclose(f);
        size_t n = got ? strlen(buf) : 0;
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
            buf[--n] = '\0';
        if (n == 0) {
            snprintf(err, errlen, "the Redis URL file %s is empty (it must hold the URL on its first line)", url_file);
            return -1;
        }
        *url = buf;
        return 0;
    }
    const char *env = use_env && !*url ? getenv(IQP_REDIS_URL_ENV) : NULL;
    if (env && *env) {
        snprintf(buf, cap, "%s", env);
        *url = buf;
    }
    return 0;
}

static void describe_cluster(const iqp_redis_url *u, char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, "redis-cluster://");
    for (int i = 0; i < u->n_seeds && n < cap; i++) {
        const char *h = u->seeds[i].host;
        int v6 = strchr(h, ':') != NULL;
        n += (size_t)snprintf(out + n, cap - n, "%s%s%s%s:%d", i ? "," : "", v6 ? "[" : "", h, v6 ? "]" : "",
                              u->seeds[i].port);
    }
}

void iqp_redis_url_describe(const iqp_redis_url *u, char *out, size_t cap) {
    if (u->is_cluster)
        describe_cluster(u, out, cap);
    else if (u->is_unix)
        snprintf(out, cap, "unix://%s?db=%d", u->host, u->db);
    else if (strchr(u->host, ':'))
        snprintf(out, cap, "redis://[%s]:%d/%d", u->host, u->port, u->db);
    else
        snprintf(out, cap, "redis://%s:%d/%d", u->host, u->port, u->db);
}

static struct timeval ms_to_tv(int ms) {
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* Runs a setup command (AUTH, SELECT); 0 or -1 with err. */
static int setup_command(redisContext *c, const char *what, char *err, size_t errlen,
                         const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    int ok = r && r->type != REDIS_REPLY_ERROR;
    if (!ok)
        snprintf(err, errlen, "%s failed: %s", what, r ? r->str : c->errstr);
    if (r) freeReplyObject(r);
    return ok ? 0 : -1;
}

redisContext *iqp_redis_connect(const iqp_redis_url *u, int connect_timeout_ms,
                                int command_timeout_ms, char *err, size_t errlen) {
    char where[400];
    iqp_redis_url_describe(u, where, sizeof where);
    struct timeval ctv = ms_to_tv(connect_timeout_ms);
    redisContext *c = u->is_unix ? redisConnectUnixWithTimeout(u->host, ctv)
                                 : redisConnectWithTimeout(u->host, u->port, ctv);
    if (!c || c->err) {
        snprintf(err, errlen, "cannot connect to Redis at %s: %s", where, c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    if (redisSetTimeout(c, ms_to_tv(command_timeout_ms)) != REDIS_OK) {
        snprintf(err, errlen, "Redis at %s: cannot set the command timeout", where);
        redisFree(c);
        return NULL;
    }
    char msg[512];
    int rc = 0;
    if (u->password[0])
        rc = u->user[0] ? setup_command(c, "AUTH", msg, sizeof msg, "AUTH %s %s", u->user, u->password)
                        : setup_command(c, "AUTH", msg, sizeof msg, "AUTH %s", u->password);
    if (rc == 0 && u->db != 0) rc = setup_command(c, "SELECT", msg, sizeof msg, "SELECT %d", u->db);
    if (rc < 0) {
        snprintf(err, errlen, "Redis at %s: %s", where, msg);
        redisFree(c);
        return NULL;
    }
    return c;
}

/* ---- bounded replies -------------------------------------------------------------- */

/* The reader's object callbacks get only the read task; the limits of the
 * read in progress are found through this (a connection is used by one
 * thread at a time, and only iqp_redis_get_reply sets it). */
static _Thread_local iqp_reply_limits *reading;

/* Counts one object (a string of string_len bytes, or an array that
 * announces `announced` elements); 0 when a bound is exceeded. */
static int admit(iqp_reply_limits *l, size_t string_len, size_t announced) {
    if (!l || l->exceeded[0]) return !l;
    l->objects++;
    l->bytes += string_len;
    if (l->objects > l->max_objects || announced > l->max_objects - l->objects)
        snprintf(l->exceeded, sizeof l->exceeded, "the reply holds more than %zu elements, more than the request "
                 "can get back", l->max_objects);
    else if (string_len > l->max_string)
        snprintf(l->exceeded, sizeof l->exceeded, "the reply holds a string of %zu bytes; the request allows at "
                 "most %zu", string_len, l->max_string);
    else if (l->bytes > l->max_bytes)
        snprintf(l->exceeded, sizeof l->exceeded, "the reply holds more than %zu bytes of strings, more than the "
                 "request can get back", l->max_bytes);
    return l->exceeded[0] == '\0';
}

/* hiredis's own object functions (static in hiredis.c), taken from a
 * reader it creates. */
static redisReplyObjectFunctions base_fns;
static pthread_once_t base_once = PTHREAD_ONCE_INIT;

static void take_base_fns(void) {
    redisReader *r = redisReaderCreate();
    if (!r) abort();
    base_fns = *r->fn;
    redisReaderFree(r);
}

/* ---- flat arrays ----
 * A flat array reply is a real redisReply (type REDIS_REPLY_ARRAY, no
 * element vector, so freeReplyObject frees only it) that carries where its
 * elements are in the reading limits: `integer` is the index of its first
 * element in flat_elems, `len` the element count. Its elements are
 * appended there by the object functions below as hiredis parses them;
 * what they hand back to hiredis for an element is only a non-NULL
 * marker (hiredis keeps child objects nowhere but in their parent, which
 * here does not hold them). */
static char flat_marker;

static int in_flat_array(const redisReadTask *t) { return reading && reading->flat && t->parent; }

/* Appends one element; 0 when out of memory. */
static int flat_push(iqp_reply_limits *l, int type, long long integer, const char *s, size_t len) {
    if (l->n_flat == l->cap_flat) {
        size_t cap = l->cap_flat ? 2 * l->cap_flat : 1024;
        iqp_flat_elem *e = realloc(l->flat_elems, cap * sizeof *e);
        if (!e) return 0;
        l->flat_elems = e, l->cap_flat = cap;
    }
    if (len > l->cap_flat_bytes - l->n_flat_bytes) {
        size_t cap = 2 * (l->n_flat_bytes + len) + 16384;
        char *b = realloc(l->flat_bytes, cap);
        if (!b) return 0;
        l->flat_bytes = b, l->cap_flat_bytes = cap;
    }
    if (len) memcpy(l->flat_bytes + l->n_flat_bytes, s, len);
    l->flat_elems[l->n_flat++] = (iqp_flat_elem){.type = type, .integer = integer, .off = l->n_flat_bytes, .len = len};
    l->n_flat_bytes += len;
    return 1;
}

/* type: the object's (a nil bulk string's task says REDIS_REPLY_STRING). */
static void *flat_element(int type, long long integer, const char *s, size_t len) {
    return flat_push(reading, type, integer, s, len) ? &flat_marker : NULL;
}

static void *flat_array(const redisReadTask *t, int n) {
    if (t->parent) {
        snprintf(reading->exceeded, sizeof reading->exceeded, "the reply nests an array in an array, which "
                 "the request cannot get back");
        return NULL;
    }
    redisReply *r = base_fns.createArray(t, 0);
    if (r) r->integer = (long long)reading->n_flat, r->len = (size_t)n;
    return r;
}

/* NULL makes hiredis fail the read (as out of memory; errstr is fixed
 * up by iqp_redis_get_reply). */
static void *bounded_string(const redisReadTask *t, char *s, size_t len) {
    if (!admit(reading, len, 0)) return NULL;
    return in_flat_array(t) ? flat_element(t->type, 0, s, len) : base_fns.createString(t, s, len);
}
static void *bounded_array(const redisReadTask *t, int n) {
    if (n < 0 || !admit(reading, 0, (size_t)n)) return NULL;
    return reading && reading->flat ? flat_array(t, n) : base_fns.createArray(t, n);
}
static void *bounded_integer(const redisReadTask *t, long long v) {
    if (!admit(reading, 0, 0)) return NULL;
    return in_flat_array(t) ? flat_element(REDIS_REPLY_INTEGER, v, NULL, 0) : base_fns.createInteger(t, v);
}
static void *bounded_nil(const redisReadTask *t) {
    if (!admit(reading, 0, 0)) return NULL;
    return in_flat_array(t) ? flat_element(REDIS_REPLY_NIL, 0, NULL, 0) : base_fns.createNil(t);
}

void iqp_reply_limits_flat(iqp_reply_limits *l, int on) { l->flat = on; }

size_t iqp_flat_len(const redisReply *r) { return r->type == REDIS_REPLY_ARRAY && !r->element ? r->len : 0; }

const iqp_flat_elem *iqp_flat_at(const iqp_reply_limits *l, const redisReply *r, size_t i) {
    if (i >= iqp_flat_len(r) || r->integer < 0) return NULL;
    size_t at = (size_t)r->integer + i;
    return at < l->n_flat ? &l->flat_elems[at] : NULL;
}

void iqp_reply_limits_free(iqp_reply_limits *l) {
    free(l->flat_elems);
    free(l->flat_bytes);
    l->flat_elems = NULL, l->flat_bytes = NULL;
    l->n_flat = l->cap_flat = l->n_flat_bytes = l->cap_flat_bytes = 0;
}

static redisReplyObjectFunctions bounded_fns;

static void make_bounded_fns(void) {
    take_base_fns();
    bounded_fns = base_fns;
    bounded_fns.createString = bounded_string;
    bounded_fns.createArray = bounded_array;
    bounded_fns.createInteger = bounded_integer;
    bounded_fns.createNil = bounded_nil;
}

void iqp_redis_limit_replies(redisContext *c, iqp_reply_limits *l) {
    pthread_once(&base_once, make_bounded_fns);
    c->reader->fn = &bounded_fns;
    iqp_reply_limits_set(l, SIZE_MAX, SIZE_MAX, SIZE_MAX);
}

void iqp_reply_limits_set(iqp_reply_limits *l, size_t max_objects, size_t max_string, size_t max_bytes) {
    l->max_objects = max_objects;
    l->max_string = max_string;
    l->max_bytes = max_bytes;
    l->objects = l->bytes = 0;
    l->exceeded[0] = '\0';
    l->n_flat = l->n_flat_bytes = 0;
}

static int refuse(redisContext *c, iqp_reply_limits *l) {
    snprintf(c->errstr, sizeof c->errstr, "%.*s", (int)sizeof c->errstr - 1, l->exceeded);
    c->err = REDIS_ERR_PROTOCOL;
    return REDIS_ERR;
}

/* What redisGetReply does for a blocking connection, with one more check
 * between reads: a string is parsed only once all of it is buffered, so
 * the buffer itself is bounded here (one read adds at most 16 KiB). */
static int get_reply(redisContext *c, iqp_reply_limits *l, void **reply) {
    *reply = NULL;
    if (redisGetReplyFromReader(c, reply) != REDIS_OK) return REDIS_ERR;
    if (*reply) return REDIS_OK;
    int done = 0;
    do {
        if (redisBufferWrite(c, &done) != REDIS_OK) return REDIS_ERR;
    } while (!done);
    size_t max_buffered = l->max_string > SIZE_MAX - 65536 ? SIZE_MAX : l->max_string + 65536;
    while (!*reply) {
        if (c->reader->len - c->reader->pos > max_buffered) {
            snprintf(l->exceeded, sizeof l->exceeded, "the reply holds a string longer than the %zu bytes the "
                     "request allows", l->max_string);
            return refuse(c, l);
        }
        if (redisBufferRead(c) != REDIS_OK || redisGetReplyFromReader(c, reply) != REDIS_OK) return REDIS_ERR;
    }
    return REDIS_OK;
}

int iqp_redis_get_reply(redisContext *c, iqp_reply_limits *l, redisReply **reply) {
    reading = l;
    void *r = NULL;
    int rc = get_reply(c, l, &r);
    reading = NULL;
    if (rc != REDIS_OK && l->exceeded[0]) refuse(c, l);
    *reply = r;
    return rc;
}

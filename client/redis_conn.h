/* redis_conn.h -- Redis addresses as URLs, and connecting to them.
 *
 * Owns: parsing `redis://[[user]:password@]host[:port][/db]` (host may be
 * a bracketed IPv6 literal), `unix:///path[?db=N]` and
 * `redis-cluster://[[user]:password@]host:port[,host:port...]` (a Redis
 * Cluster's seed nodes; client/redis_cluster.h talks to it), and opening a
 * hiredis connection with a connect timeout, a command timeout, AUTH and
 * SELECT. Shared by the publisher (iqp stream) and libiqp.
 *
 * May not touch: what is stored in Redis (schemas/redis_value.h).
 */
#ifndef IQP_REDIS_CONN_H
#define IQP_REDIS_CONN_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#define IQP_REDIS_MAX_SEEDS 8

typedef struct iqp_redis_seed {
    char host[256];
    int port;
} iqp_redis_seed;

typedef struct iqp_redis_url {
    int is_unix;
    int is_cluster;     /* redis-cluster://: host/port is the first seed */
    int n_seeds;        /* cluster seeds (first one included) */
    iqp_redis_seed seeds[IQP_REDIS_MAX_SEEDS];
    char host[256];     /* TCP host, or the socket path when is_unix */
    int port;           /* default 6379 */
    int db;             /* default 0 */
    char user[128];     /* empty: AUTH with the password only */
    char password[256]; /* empty: no AUTH */
} iqp_redis_url;

/* 0, or -1 with a message naming what is wrong with the URL. */
int iqp_redis_url_parse(const char *url, iqp_redis_url *out, char *err, size_t errlen);

/* url as it may be shown: a password in it replaced by *** (also when
 * url does not parse), for every message that echoes what was given. */
void iqp_redis_url_mask(const char *url, char *out, size_t cap);

/* Where a command's Redis URL comes from, so that a password need not be
 * on a command line (visible in ps): *url (given by --redis or a
 * config's redis.url), else the first line of url_file (--redis-url-file,
 * redis.url_file; trailing white space dropped), else, when use_env, the
 * environment variable IQP_REDIS_URL. *url is left NULL when none is
 * given, and points into buf otherwise. 0, or -1 with err (both a URL and
 * a file given, a file that cannot be read or is empty). */
#define IQP_REDIS_URL_ENV "IQP_REDIS_URL"
int iqp_redis_url_resolve(const char **url, const char *url_file, int use_env, char *buf, size_t cap,
                          char *err, size_t errlen);

/* The URL without its password, for messages ("redis://127.0.0.1:6379/0"). */
void iqp_redis_url_describe(const iqp_redis_url *u, char *out, size_t cap);

/* Connects, authenticates and selects the db; NULL with err on failure.
 * Timeouts in ms; command_timeout_ms bounds every reply wait. */
redisContext *iqp_redis_connect(const iqp_redis_url *u, int connect_timeout_ms,
                                int command_timeout_ms, char *err, size_t errlen);

/* ---- bounded replies ----------------------------------------------------------
 * hiredis reads whatever a server sends: a reply announcing a string of
 * 8 GB, or an array of two billion elements, is buffered or allocated in
 * full. A reader that knows what its request can legitimately get back
 * sets limits on the connection and reads with iqp_redis_get_reply(): it
 * fails, without buffering more, as soon as the replies read since the
 * last iqp_reply_limits_set() hold more objects (array, string, integer,
 * nil, each counted once), a longer string, or more string bytes in all
 * than allowed. The connection must then be dropped (it is mid-reply). */
typedef struct iqp_flat_elem {
    int type;                    /* REDIS_REPLY_STRING, _NIL, _INTEGER, _STATUS or _ERROR */
    long long integer;
    size_t off, len;             /* a string's bytes: flat_bytes[off .. off + len) */
} iqp_flat_elem;

typedef struct iqp_reply_limits {
    size_t max_objects, max_string, max_bytes;
    size_t objects, bytes;       /* counted since the last set */
    char exceeded[200];          /* why a read was refused; "" when none was */
    /* flat arrays (iqp_reply_limits_flat): the elements read since the
     * last set, and their string bytes */
    int flat;
    iqp_flat_elem *flat_elems;
    size_t n_flat, cap_flat;
    char *flat_bytes;
    size_t n_flat_bytes, cap_flat_bytes;
} iqp_reply_limits;

/* Makes c's reply reader count what it reads (for iqp_redis_get_reply;
 * plain hiredis reads stay unbounded) and sets l unbounded. */
void iqp_redis_limit_replies(redisContext *c, iqp_reply_limits *l);

/* New bounds for the next reads; resets the counts. */
void iqp_reply_limits_set(iqp_reply_limits *l, size_t max_objects, size_t max_string, size_t max_bytes);

/* Flat arrays, for a reader of many small values (a lookup's HMGETs): while
 * on, the elements of a top-level array reply are not allocated one by one
 * as redisReply objects (two mallocs and two frees each) but appended to
 * l's own buffers, which iqp_reply_limits_set() empties. The array reply
 * itself comes back as a redisReply of type REDIS_REPLY_ARRAY with no
 * elements of its own: read it with iqp_flat_len() / iqp_flat_at(). An
 * array nested in an array is refused (no reply of such a reader holds
 * one). Off by default; only reads through iqp_redis_get_reply() are
 * affected. */
void iqp_reply_limits_flat(iqp_reply_limits *l, int on);
/* The element count of flat array reply r; element i of it (NULL when i
 * is out of range), and a string element's bytes. */
size_t iqp_flat_len(const redisReply *r);
const iqp_flat_elem *iqp_flat_at(const iqp_reply_limits *l, const redisReply *r, size_t i);
static inline const char *iqp_flat_str(const iqp_reply_limits *l, const iqp_flat_elem *e) {
    /* no bytes yet when every string so far was empty: an empty string */
    return l->flat_bytes ? l->flat_bytes + e->off : "";
}
/* Frees l's flat buffers. */
void iqp_reply_limits_free(iqp_reply_limits *l);

/* redisGetReply() within l's bounds: REDIS_OK with *reply, or REDIS_ERR
 * (c->errstr says why; l->exceeded is set when a bound was hit). */
int iqp_redis_get_reply(redisContext *c, iqp_reply_limits *l, redisReply **reply);

#endif

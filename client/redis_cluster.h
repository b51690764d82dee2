/* redis_cluster.h -- one Redis connection, to a single server or to a Redis
 * Cluster, behind one pipeline API.
 *
 * Owns: routing commands to the node that serves their key's hash slot
 * (CRC16 of the key, or of its `{hash tag}`), the slot map (CLUSTER
 * SLOTS, asked of a seed node, asked again on every MOVED), one hiredis
 * connection per master, and following MOVED / ASK (ASKING first) /
 * TRYAGAIN redirections so that a caller sees only the final reply. For a
 * redis:// or unix:// URL it is a thin wrapper of one hiredis connection
 * and changes nothing.
 *
 * Model: like hiredis, commands are appended and their replies read back
 * in order. In a cluster the first read after appends sends every node
 * its commands before waiting for any reply, so a pipeline that spans
 * several nodes still costs one round trip; all of them are read before
 * any redirection is followed (a redirected command is resent on a
 * connection with nothing else pending, so replies cannot cross).
 *
 * May not touch: what is stored in Redis (key names are the caller's;
 * schemas/redis_value.h decides them), URLs (client/redis_conn.h).
 */
#ifndef IQP_REDIS_CLUSTER_H
#define IQP_REDIS_CLUSTER_H

#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "client/redis_conn.h"

#define IQP_CLUSTER_SLOTS 16384

typedef struct iqp_rconn iqp_rconn;

/* The hash slot of a key (Redis Cluster's CRC16-XMODEM mod 16384; only
 * the part inside the first `{...}` counts when that part is not empty). */
unsigned iqp_cluster_slot(const char *key, size_t len);

/* Connects (for a cluster: to a seed, reading the slot map; the masters
 * are connected on first use). NULL with err on failure. */
iqp_rconn *iqp_rconn_connect(const iqp_redis_url *u, int connect_timeout_ms, int command_timeout_ms, char *err,
                             size_t errlen);
void iqp_rconn_free(iqp_rconn *rc);
int iqp_rconn_is_cluster(const iqp_rconn *rc);

/* After a failed call: hiredis's error code (REDIS_ERR_IO, ...) and text.
 * The connection should then be freed and opened again. */
int iqp_rconn_err(const iqp_rconn *rc);
const char *iqp_rconn_errstr(const iqp_rconn *rc);

/* Queue one command (REDIS_OK / REDIS_ERR, like redisAppendCommand*). */
int iqp_rconn_append(iqp_rconn *rc, const char *fmt, ...);
int iqp_rconn_vappend(iqp_rconn *rc, const char *fmt, va_list ap);
int iqp_rconn_append_argv(iqp_rconn *rc, int argc, const char **argv, const size_t *lens);
/* Appends one command already in RESP, given as two parts (a head that
 * names the key and a tail shared by several commands): on one server they
 * are written as they are, in a cluster they are joined to route the key. */
int iqp_rconn_append_formatted2(iqp_rconn *rc, const char *head, size_t head_len, const char *tail,
                                size_t tail_len);

/* The reply of the oldest queued command (REDIS_OK with *reply, or
 * REDIS_ERR), within the limits given to iqp_rconn_limit_replies if any
 * (a redirection's own error reply is not counted against them). */
int iqp_rconn_get_reply(iqp_rconn *rc, redisReply **reply);

/* Append + get_reply; NULL on a connection failure. */
redisReply *iqp_rconn_command(iqp_rconn *rc, const char *fmt, ...);
redisReply *iqp_rconn_vcommand(iqp_rconn *rc, const char *fmt, va_list ap);

/* Reads replies within l from now on (see iqp_redis_limit_replies). */
void iqp_rconn_limit_replies(iqp_rconn *rc, iqp_reply_limits *l);

/* Commands that go to every master rather than to a key (SCAN): the
 * number of masters that serve slots now (1 for a single server), and one
 * command sent to master i, with nothing queued. */
size_t iqp_rconn_masters(iqp_rconn *rc);
redisReply *iqp_rconn_master_command(iqp_rconn *rc, size_t i, const char *fmt, ...);
redisReply *iqp_rconn_master_vcommand(iqp_rconn *rc, size_t i, const char *fmt, va_list ap);

/* The key prefix a writer or reader uses for prefix on this connection:
 * prefix itself for a single server, `{prefix}` for a cluster (so that
 * the pointer, meta and lease keys share one slot; feature keys take
 * their context as hash tag, see iqp_rv_hash_key). -1 with err when the
 * prefix is empty or longer than IQP_REDIS_PREFIX_MAX, has an all-digit
 * ':' part (it would collide with another prefix's generation keys),
 * holds a brace in cluster mode, or does not fit. */
#define IQP_REDIS_PREFIX_MAX 100
int iqp_redis_key_prefix(const iqp_redis_url *u, const char *prefix, char *out, size_t cap, char *err,
                         size_t errlen);

#endif

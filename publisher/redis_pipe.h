/* redis_pipe.h -- the one pipelined Redis connection both writers of the
 * layout write through: the stream's publisher (publisher.c) and the
 * whole-generation writer (generation.c).
 *
 * Owns: a writer's side of one Redis connection: the URL parsed and shown
 * without its password, the key prefix the connection uses (`{prefix}` in
 * a cluster), connecting through client/redis_cluster.h (which routes
 * every command to the master of its key's slot and follows MOVED / ASK),
 * the pipeline (commands queued; whenever `depth` are in flight, replies
 * are read back until half are; every reply is checked and a refused one
 * is reported with the writer's context), the one HSET of a (feature,
 * context) chunk, the publish lease <prefix>:lease and the slice leases
 * <prefix>:lease:slices with their Lua scripts,
 * the layout fingerprint a writer stamps into meta, and the failpoint
 * test hook of the writers' commit points.
 *
 * Design:
 *   - Errors follow model/status.h: calls return IQP_RC_OK, IQP_RC_FAILED
 *     (Redis failed: drop the connection, retry later) or IQP_RC_REFUSED
 *     (another writer holds the lease, or it was lost), and the message,
 *     one line naming the server, is kept in the pipe
 *     (iqp_rpipe_error()) and handed to the writer's error hook, which is
 *     where the stream's publisher counts errors for its metrics.
 *   - Replies come back in order, so a synchronous command first reads
 *     every queued reply (iqp_rpipe_command does it): a writer can mix
 *     pipelined writes and reads freely.
 *   - The lease value outlives connections: a writer that reconnects
 *     keeps its fencing token and renews what it holds.
 *
 * May not touch: key names and value bytes (schemas/redis_value.h), what
 * is written when (the writers), the store, URL syntax
 * (client/redis_conn.h).
 */
#ifndef IQP_REDIS_PIPE_H
#define IQP_REDIS_PIPE_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#include "client/redis_cluster.h"
#include "model/config.h"
#include "model/status.h"

/* Item fields per HSET. */
#define IQP_RPIPE_HSET_ITEMS 256

typedef struct iqp_rpipe iqp_rpipe;

/* Parses url and derives the key prefix (default "iqp"); does not
 * connect. NULL with err when the URL or the prefix is not usable.
 * depth: commands in flight before replies are read (at least 2). */
iqp_rpipe *iqp_rpipe_new(const char *url, const char *prefix, int connect_timeout_ms, int command_timeout_ms,
                         int depth, char *err, size_t errlen);
/* Disconnects and frees (the lease is left as it is: a writer releases
 * what it took with iqp_rpipe_lease_release). */
void iqp_rpipe_free(iqp_rpipe *p);

/* Called with every error message the pipe reports (NULL: none). */
void iqp_rpipe_on_error(iqp_rpipe *p, void (*fn)(void *ud, const char *msg), void *ud);
/* The last error message ("" when none), and reporting one of the
 * writer's own through the same hook; returns rc. */
const char *iqp_rpipe_error(const iqp_rpipe *p);
iqp_rc iqp_rpipe_fail(iqp_rpipe *p, iqp_rc rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Connects when not connected. */
iqp_rc iqp_rpipe_connect(iqp_rpipe *p);
/* Drops the connection and what was in flight. */
void iqp_rpipe_disconnect(iqp_rpipe *p);
int iqp_rpipe_connected(const iqp_rpipe *p);

/* The key prefix for this connection, and the server without password
 * ("redis://127.0.0.1:6379/0"), for messages. */
const char *iqp_rpipe_prefix(const iqp_rpipe *p);
const char *iqp_rpipe_where(const iqp_rpipe *p);
/* The connection under the pipe, for commands to every master (SCAN);
 * NULL when not connected. Replies in flight must be read first. */
iqp_rconn *iqp_rpipe_conn(iqp_rpipe *p);

/* ---- the pipeline ------------------------------------------------------------- */

/* Queues one command; reads replies back when depth are in flight. */
iqp_rc iqp_rpipe_send(iqp_rpipe *p, int argc, const char **argv, const size_t *lens);
/* Reads every reply still owed; the first refused one fails the call. */
iqp_rc iqp_rpipe_flush(iqp_rpipe *p);
/* Flushes, then runs one command and waits for it; NULL (reported as
 * "<what> on Redis at <where> failed: ...") on a failed connection or an
 * error reply. The reply is the caller's to free. */
redisReply *iqp_rpipe_command(iqp_rpipe *p, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same, sent to master m (iqp_rconn_masters) rather than by key. */
redisReply *iqp_rpipe_master_command(iqp_rpipe *p, size_t m, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Writes one (feature, context) hash, as schemas/redis_value.h encodes
 * it: the context field with its per-window context counts and n_items
 * items with their counter vectors, IQP_RPIPE_HSET_ITEMS items per HSET,
 * each HSET carrying the context field too (so a reader never pairs a new
 * count with an old context_count of the same write; one HSET of the
 * context field alone when n_items is 0); then `<expire_cmd> key
 * <expire_arg>` (PEXPIRE key ms, PEXPIREAT key deadline). fill(ud, p,
 * from, n) adds items [from, from + n) in order with iqp_rpipe_hset_item
 * and reports its own failures (iqp_rpipe_fail). */
typedef iqp_rc (*iqp_rpipe_fill_fn)(void *ud, iqp_rpipe *p, size_t from, size_t n);
iqp_rc iqp_rpipe_put_hash(iqp_rpipe *p, const char *key, size_t klen, const int64_t *context_counts,
                          size_t n_windows, size_t width, size_t n_items, iqp_rpipe_fill_fn fill, void *ud,
                          const char *expire_cmd, const char *expire_arg);
/* One item of the HSET being filled: counts[w * width + k]. */
void iqp_rpipe_hset_item(iqp_rpipe *p, const char *item, size_t len, const int64_t *counts);

/* ---- the publish lease --------------------------------------------------------- */

/* The publish lease <prefix>:lease: IQP_LEASE_MS to live, renewed every
 * IQP_LEASE_RENEW_MS by its holder. One process at a time writes a
 * prefix: `iqp stream`'s publisher holds it while it runs; a refresh or
 * publish by another process is refused while it does.
 *
 * The lease value names its holder: "<role> on <host> pid <pid> in
 * <boot id>/<pid namespace> since <ms> token <T>", T a fencing token from
 * INCR <prefix>:lease:token, so no two holders ever have the same value.
 * Every commit point of a writer (the flip, the meta stamp) runs in a
 * script that checks the lease still holds the writer's exact value
 * (KEYS: <prefix>:lease, ARGV: iqp_rpipe_lease_value()): a writer whose
 * lease was taken over cannot make anything visible. */
#define IQP_LEASE_MS 30000
#define IQP_LEASE_RENEW_MS 5000
/* Room for a lease value (a holder's, too). */
#define IQP_LEASE_VALUE_MAX 320

/* Makes the pipe's lease value: held (the exact value of a lease the
 * caller already holds, e.g. the stream's publisher handing it to a
 * refresh it runs), or a new one for role with a new token. */
iqp_rc iqp_rpipe_lease_value_new(iqp_rpipe *p, const char *role, const char *held);
/* The pipe's lease value ("" before iqp_rpipe_lease_value_new). */
const char *iqp_rpipe_lease_value(const iqp_rpipe *p);

/* Takes or renews <prefix>:lease for the pipe's value: IQP_RC_OK ours,
 * IQP_RC_REFUSED held by another holder (its value in holder), or
 * IQP_RC_FAILED (Redis's error in holder; not reported, the caller says
 * what it was doing). A holder that is provably gone -- a process of this
 * host, kernel boot and pid namespace that no longer exists, e.g. a
 * killed `iqp refresh` -- is taken over at once (compare-and-set on its
 * exact value); one on another host only when its lease expires
 * (IQP_LEASE_MS after its last renewal). */
iqp_rc iqp_rpipe_lease_acquire(iqp_rpipe *p, char *holder, size_t holder_cap);
/* Extends the lease only while it still holds the pipe's value: OK, or
 * REFUSED (reported) when it was lost, FAILED when Redis failed. */
iqp_rc iqp_rpipe_lease_extend(iqp_rpipe *p);
/* 1 when IQP_LEASE_RENEW_MS has passed since the last take or renewal;
 * touch notes one made elsewhere (on another connection). */
int iqp_rpipe_lease_due(const iqp_rpipe *p);
void iqp_rpipe_lease_touch(iqp_rpipe *p);
/* Deletes <prefix>:lease if it still holds the pipe's value (errors
 * ignored; nothing when not connected or no value). */
void iqp_rpipe_lease_release(iqp_rpipe *p);

/* Slice leases: one writer per slice instead of per prefix. Each
 * `iqp stream --state-dir --repartition` instance publishes the contexts
 * of the partitions it owns (slice r = repartition partition r: every
 * context is whole in one), so there are R writers of one prefix, each
 * holding the lease of its slice: field r of the hash
 * <prefix>:lease:slices, "<expiry ms> <lease value>", with the same
 * value, TTL, renewal and dead-holder takeover as <prefix>:lease. A
 * slice lease is refused while <prefix>:lease is held (a refresh or
 * publish by another process), and <prefix>:lease is refused while any
 * slice lease is live: the whole-prefix writer and the slice writers
 * never write at once. After iqp_rpipe_lease_use_slice(p, r) (r >= 0)
 * every lease call of the pipe works on slice r's lease; -1 (the
 * default) goes back to <prefix>:lease. */
void iqp_rpipe_lease_use_slice(iqp_rpipe *p, int slice);
int iqp_rpipe_lease_slice(const iqp_rpipe *p);
/* The lease's name, for messages: "<prefix>:lease" or
 * "<prefix>:lease:slices field <r>". */
const char *iqp_rpipe_lease_name(const iqp_rpipe *p);

/* For a writer's commit script that must check the lease it holds: the
 * Lua function lease_held(key, field, value), true while the lease of
 * key (the pipe's iqp_rpipe_lease_key) and field (decimal slice, or ""
 * for the whole prefix) holds value; and the key, which is one slot with
 * the other lease keys in a Redis Cluster. */
#define IQP_RPIPE_LUA_LEASE_HELD                                                                              \
    "local function lease_held(key, field, value) "                                                           \
    "if field == '' then return redis.call('GET', key) == value end "                                         \
    "local rec = redis.call('HGET', key, field) local sp = rec and string.find(rec, ' ', 1, true) "           \
    "return sp ~= nil and string.sub(rec, sp + 1) == value end "
/* "<prefix>:lease" or "<prefix>:lease:slices" (into out, cap bytes). */
void iqp_rpipe_lease_key(const iqp_rpipe *p, char *out, size_t cap);

/* ---- what both writers stamp into meta ------------------------------------------ */

/* The layout JSON of cfg (malloc'd) and its fingerprint: XXH3-64 of the
 * JSON as 16 lower-case hex digits. */
char *iqp_rpipe_layout(const iqp_config *cfg, char fingerprint[17]);

/* Checks that generation's meta (<prefix>:<generation>:meta) holds this
 * layout: IQP_RC_OK when it does, and also when it has no layout at all
 * (*absent set: never written, or expired), IQP_RC_REFUSED (reported,
 * naming both layouts) when it holds another layout version or
 * fingerprint, IQP_RC_FAILED when Redis failed. */
iqp_rc iqp_rpipe_check_layout(iqp_rpipe *p, uint64_t generation, const char *fingerprint, int *absent);

/* Test hook: when the environment variable IQP_FAILPOINT holds
 * "<name>=kill" the process SIGKILLs itself here, with "<name>=sleep:MS"
 * it sleeps MS ms (several entries separated by ','). The tests use it
 * to stop a writer at an exact point (tests/check_redis.c); unset, it
 * costs one getenv. Names: generation.meta, generation.values,
 * generation.before_flip, generation.after_flip, publish.resync. */
void iqp_failpoint(const char *name);

#endif

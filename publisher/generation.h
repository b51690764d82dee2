/* generation.h -- publishing a whole refresh result as a new generation
 * of the Redis layout, then flipping the pointer readers follow.
 *
 * Owns: generation numbers (allocated with INCR <prefix>:gen:next), the
 * new generation's meta (with the refresh's smoothing strength, priors and
 * top-K parameters), its value hashes and top-K keys, the one SET of
 * <prefix>:gen that switches readers over, and expiring the old
 * generation's keys after a grace period. Also the publish lease
 * (<prefix>:lease) that makes one process at a time the writer of a
 * prefix: `iqp stream`'s publisher holds it while it runs; a refresh by
 * another process is refused while it does.
 *
 * Design: readers (libiqp, `iqp lookup --redis`) read the pointer and the
 * hashes of one generation in one pipeline and re-read when the pointer
 * moved (schemas/redis-layout.md), so nothing of generation N is visible
 * before the flip and all of it is after. Old keys keep their values for
 * grace_ms after the flip (a reader that read the old pointer finishes its
 * call), then expire.
 *
 * May not touch: the store, the stream publisher's queue, computing
 * values (refresher/).
 */
#ifndef IQP_GENERATION_H
#define IQP_GENERATION_H

#include <stddef.h>
#include <stdint.h>
#include "publisher/publisher.h"
#include "refresher/refresh.h"

/* The publish lease <prefix>:lease: IQP_LEASE_MS to live, renewed every
 * IQP_LEASE_RENEW_MS by its holder. */
#define IQP_LEASE_MS 30000
#define IQP_LEASE_RENEW_MS 5000

/* The lease value naming this process: "<role> on <host> pid <pid> in
 * <boot id>/<pid namespace> since <ms> token <T>", T a fencing token from INCR <prefix>:lease:token, so
 * no two holders ever have the same value. Every commit point of a writer
 * (the flip, the meta stamp) runs in a script that checks the lease still
 * holds the writer's exact value: a writer whose lease was taken over
 * cannot make anything visible. */
typedef struct iqp_rconn iqp_rconn;
void iqp_lease_value(char *out, size_t cap, const char *role, long long token);
/* iqp_lease_value with a new token; 0, or -1 with Redis's error in out. */
int iqp_lease_new_value(iqp_rconn *redis, const char *prefix, const char *role, char *out, size_t cap);

/* Takes or renews <prefix>:lease for value: 1 ours, 0 held by another
 * holder (its value in holder), -1 Redis failed (the error in holder).
 * A holder that is provably gone -- a process of this host, kernel boot
 * and pid namespace that no longer exists, e.g. a killed `iqp refresh`
 * -- is taken over at once
 * (compare-and-set on its exact value); one on another host only when
 * its lease expires (IQP_LEASE_MS after its last renewal). */
int iqp_lease_acquire(iqp_rconn *redis, const char *prefix, const char *value, char *holder,
                      size_t holder_cap);

/* Deletes <prefix>:lease if it still holds value (errors ignored). */
void iqp_lease_release(iqp_rconn *redis, const char *prefix, const char *value);

/* Test hook: when the environment variable IQP_FAILPOINT holds
 * "<name>=kill" the process SIGKILLs itself here, with "<name>=sleep:MS"
 * it sleeps MS ms (several entries separated by ','). The tests use it
 * to stop a writer at an exact point (tests/check_redis.c); unset, it
 * costs one getenv. Names: generation.meta, generation.values,
 * generation.before_flip, generation.after_flip, publish.resync. */
void iqp_failpoint(const char *name);

typedef struct iqp_generation_stats {
    uint64_t old_generation, new_generation;
    uint64_t hashes, values, topk_keys, expired_keys;
    double write_s;
} iqp_generation_stats;

/* Writes r as a new generation into the Redis of pc (url, prefix, ttl,
 * timeouts, pipeline depth), flips <prefix>:gen to it and gives the old
 * generation's keys grace_ms to live. Holds the publish lease for the
 * duration: lease is the exact lease value of a caller that already holds
 * it (the stream's publisher; it keeps it afterwards), or NULL to take it
 * as role (e.g. "iqp refresh") and release it at the end. Returns 0; -1 on
 * a Redis failure (nothing flipped); -2 when another process holds the
 * lease or Redis serves another layout (err says who or what). */
int iqp_generation_publish(const iqp_refresh_result *r, const iqp_publisher_config *pc, const char *role,
                           const char *lease, int64_t grace_ms, iqp_generation_stats *stats, char *err,
                           size_t errlen);

/* The top-K value of one (feature, context): for each window in layout
 * order, a uvarint count n, then n entries of (uvarint item length, item
 * bytes, the ranking measure's smoothed value as IEEE-754 binary64,
 * big-endian). Returns the bytes written to out (cap: see
 * iqp_generation_topk_size). */
size_t iqp_generation_topk_size(const iqp_refresh_result *r, size_t c);
size_t iqp_generation_encode_topk(const iqp_refresh_result *r, size_t c, unsigned char *out);

#endif

/* generation.h -- publishing a whole refresh result as a new generation
 * of the Redis layout, then flipping the pointer readers follow.
 *
 * Owns: generation numbers (allocated with INCR <prefix>:gen:next), the
 * new generation's meta (with the refresh's smoothing strength, priors and
 * top-K parameters), its value hashes and top-K keys, the one SET of
 * <prefix>:gen that switches readers over, and expiring the old
 * generation's keys after a grace period. It writes through the
 * writers' pipelined connection (publisher/redis_pipe.h), which also
 * holds the publish lease (<prefix>:lease) that makes one process at a
 * time the writer of a prefix: `iqp stream`'s publisher holds it while it
 * runs; a refresh by another process is refused while it does.
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
#include "publisher/redis_pipe.h"
#include "refresher/refresh.h"

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
 * as role (e.g. "iqp refresh") and release it at the end. Returns
 * IQP_RC_OK; IQP_RC_FAILED on a Redis failure (nothing flipped);
 * IQP_RC_REFUSED when another process holds the lease or Redis serves
 * another layout (err says who or what). */
iqp_rc iqp_generation_publish(const iqp_refresh_result *r, const iqp_publisher_config *pc, const char *role,
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

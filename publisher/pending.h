/* pending.h -- the publish queue: which features changed and are not yet
 * in Redis, kept in the store so that no crash or Redis outage loses them.
 *
 * Owns: the records of the store's "pending" column family and the flush
 * hook that writes them. Every flush of the aggregator appends, in the
 * same atomic WriteBatch as the counts, one record per (feature, context)
 * and per (feature, context, item) whose cells it changed:
 *
 *   key   = u64 BE flush sequence || u8 kind || dirty key
 *           kind 'C': dirty key = context prefix (its context_count changed)
 *           kind 'E': dirty key = context prefix + entity (aggregator/cells.h)
 *   value = int64 LE wall-clock ms of the flush (for the publish lag)
 *   meta "publish/next_seq" = u64 LE, the next flush's sequence
 *
 * Records are immutable: a later change of the same key is a new record
 * with a later sequence, so the publisher deletes exactly what it
 * published and never a change it has not seen. Records sort by sequence,
 * so the queue is drained oldest first.
 *
 * May not touch: Redis (publisher.c reads the queue), counting.
 */
#ifndef IQP_PENDING_H
#define IQP_PENDING_H

#include <stddef.h>
#include <stdint.h>
#include "aggregator/aggregator.h"
#include "store/store.h"

#define IQP_PENDING_KIND_CONTEXT 'C'
#define IQP_PENDING_KIND_ENTITY 'E'
#define IQP_PENDING_HEADER 9 /* sequence + kind */

typedef struct iqp_pending iqp_pending;

/* Opens the queue of st: reads the sequence and counts the records (one
 * scan; done once). NULL with err when the store cannot be read. */
iqp_pending *iqp_pending_open(iqp_store *st, char *err, size_t errlen);
void iqp_pending_free(iqp_pending *q);

/* Makes every flush of a write its records (and call notify after a
 * commit that added some; notify may be NULL). */
void iqp_pending_attach(iqp_pending *q, iqp_aggregator *a, void (*notify)(void *ud), void *ud);

/* Records in the queue (as far as this process knows). Thread-safe. */
uint64_t iqp_pending_count(const iqp_pending *q);
/* The sequence the next flush will use. Thread-safe. */
uint64_t iqp_pending_next_seq(const iqp_pending *q);
/* The publisher deleted n records. */
void iqp_pending_consumed(iqp_pending *q, uint64_t n);

/* Sequence of a record key (0 when the key is too short). */
uint64_t iqp_pending_key_seq(const unsigned char *key, size_t klen);

#endif

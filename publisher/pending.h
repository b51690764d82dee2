/* pending.h -- the publish queue: which features changed and are not yet
 * in Redis, kept in the store so that no crash or Redis outage loses them.
 *
 * Owns: the records of the store's "pending" column family and the flush
 * hook that writes them. Every flush of the aggregator writes, in the
 * same atomic WriteBatch as the counts, one record per (feature, context)
 * and per (feature, context, item) whose cells it changed:
 *
 *   key   = u8 kind || dirty key
 *           kind 'C': dirty key = context prefix (its context_count changed)
 *           kind 'E': dirty key = context prefix + entity (model/cells.h)
 *   value = u64 LE sequence of the flush || int64 LE wall-clock ms of the
 *           flush (the publish lag)
 *   meta "publish/next_seq" = u64 LE, the next flush's sequence
 *
 * Coalescing: the key is the changed key itself, so a key that changes in
 * every flush is one record (its latest flush's sequence), not one per
 * flush: the queue holds at most one record per distinct changed key. The
 * publisher deletes a record only while it still holds the sequence it
 * read (iqp_pending_lock() makes that check and the flush's commit
 * mutually exclusive), so a change that arrives while a key is being
 * published is never dropped.
 *
 * (Stores written before coalescing hold records keyed u64 sequence ||
 * kind || dirty key with an 8-byte value; iqp_pending_parse reads both.)
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
#define IQP_PENDING_VALUE 16 /* sequence + flush ms */

typedef struct iqp_pending iqp_pending;

/* Opens the queue of st: reads the sequence and counts the records (one
 * scan; done once). NULL with err when the store cannot be read. */
iqp_pending *iqp_pending_open(iqp_store *st, char *err, size_t errlen);
void iqp_pending_free(iqp_pending *q);

/* Makes every flush of a write its records (and call notify after a
 * commit that added some; notify may be NULL). */
void iqp_pending_attach(iqp_pending *q, iqp_aggregator *a, void (*notify)(void *ud), void *ud);

/* Records in the queue, as far as this process knows: an upper bound
 * (a flush that rewrites a queued key counts it again), made exact by
 * iqp_pending_set_count whenever the publisher has read the whole queue.
 * Thread-safe. */
uint64_t iqp_pending_count(const iqp_pending *q);
void iqp_pending_set_count(iqp_pending *q, uint64_t n);
/* The sequence the next flush will use. Thread-safe. */
uint64_t iqp_pending_next_seq(const iqp_pending *q);
/* The publisher deleted n records. */
void iqp_pending_consumed(iqp_pending *q, uint64_t n);

/* Held while a flush commits its records, and by the publisher while it
 * checks records and deletes them. */
void iqp_pending_lock(iqp_pending *q);
void iqp_pending_unlock(iqp_pending *q);

/* One record: its dirty key (pointing into key), the sequence and the
 * flush time. 0, or -1 when the record is not one. */
typedef struct iqp_pending_record {
    const unsigned char *dirty;
    size_t dirty_len;
    uint64_t seq;
    int64_t flush_ms;
} iqp_pending_record;
int iqp_pending_parse(const unsigned char *key, size_t klen, const char *val, size_t vlen,
                      iqp_pending_record *out);

#endif

/* shards.h -- applying decided events to combiners, on one thread or on N
 * counting threads sharded by context key.
 *
 * Owns: the count order (what one decided event adds: which cells, at
 * which buckets, by how much), turning an order into combiner deltas
 * (iqp_count_apply), and a pool of counting threads, each with its own
 * combiners, fed in order through a bounded ring of work items.
 *
 * Why the split works: every rule that depends on the order of events
 * (future, late, dedup markers, the watermark) is decided by the
 * aggregator on one thread, before an order exists. An order is then a
 * pure sum of deltas, fixed by the event, the watermark it counted under
 * and, for actions, the buckets the keyed min-ts rule moved. Shard k
 * applies the part of every order whose context prefix (cells.h) hashes to
 * k, so one context's cells all live in one shard's combiner, and the
 * shards' combiners hold disjoint cells whose union is exactly what one
 * combiner would hold, whatever N is and wherever work items end.
 *
 * May not touch: the counting decisions (aggregator.c), the store (the
 * aggregator writes the shards' combiners), event memory (the caller's:
 * it must stay valid until the release callback of iqp_shards_after).
 */
#ifndef IQP_SHARDS_H
#define IQP_SHARDS_H

#include <stddef.h>
#include <stdint.h>

#include "aggregator/combiner.h"
#include "model/cells.h"
#include "schemas/event.h"

/* Most counting threads (--threads). */
#define IQP_MAX_COUNT_THREADS 256

/* One counter move of an action: delta at the buckets of ts. */
typedef struct iqp_count_move {
    int64_t ts;
    uint32_t idx;   /* counter index (IQP_COUNTER_*) */
    int32_t delta;  /* +1, or -1 where the min-ts rule moved a count */
} iqp_count_move;

/* What one counted event adds. An impression: +1 context_count in every
 * feature's context and +1 impression for every distinct listed item, at
 * ev->ts. An action: its moves, on ev->item. Only buckets retained under
 * wm (window.h) are touched. */
typedef struct iqp_count_order {
    const iqp_event *ev;
    int64_t wm;
    unsigned n_moves;
    iqp_count_move moves[4];
} iqp_count_order;

/* Per-thread scratch of iqp_count_apply: the event's context prefixes. */
typedef struct iqp_count_scratch {
    iqp_keybuf prefix[IQP_MAX_FEATURES];
    uint32_t prefix_id[IQP_MAX_FEATURES];
    unsigned char mine[IQP_MAX_FEATURES];
} iqp_count_scratch;

void iqp_count_scratch_init(iqp_count_scratch *s, const iqp_config *cfg);
void iqp_count_scratch_free(iqp_count_scratch *s, const iqp_config *cfg);

/* The shard (0..n-1) that owns a context prefix. */
unsigned iqp_count_shard_of(const unsigned char *prefix, size_t len, unsigned n);

/* The shards of n that own at least one of ev's feature contexts, each
 * once, in ascending order, into out (room for cfg->n_features); returns
 * how many. The repartitioner (consumers/repartition.h) sends an event to
 * exactly these partitions of the repartition topics, and the partition
 * store of slice k counts only the contexts shard k owns
 * (iqp_aggregator_set_slice), so every context is whole in one place. */
unsigned iqp_count_slices_of(const iqp_config *cfg, iqp_count_scratch *s, const iqp_event *ev,
                             unsigned n, unsigned *out);

/* Sees every delta iqp_count_apply makes, as it makes it: the cell is the
 * context prefix (cells.h bytes) of cf contexts (item NULL, counter 0) or,
 * in cf counts, that prefix and the raw item id; then granularity index,
 * bucket, counter index and delta (iqp export's mirror, aggregator.h's
 * delta hook). */
typedef struct iqp_count_observer {
    void (*on_delta)(void *ud, iqp_cf cf, const unsigned char *prefix, size_t plen,
                     const char *item, size_t ilen, int gran_index, int64_t bucket, size_t counter,
                     int64_t delta);
    void *ud;
} iqp_count_observer;

/* Adds to c the part of o whose contexts shard `shard` of n owns (n <= 1:
 * all of it), telling obs (NULL: none) of each delta, per granularity,
 * whether c takes it as a source cell or directly. Returns the cell
 * updates made (combiner adds: one per source cell, not per derived
 * granularity). */
uint64_t iqp_count_apply(const iqp_config *cfg, iqp_combiner *c, iqp_count_scratch *s,
                         const iqp_count_order *o, unsigned shard, unsigned n,
                         const iqp_count_observer *obs);

/* The granularities that counting combiners derive from the finest one
 * (shards.c explains the rule; decided once from the config). */
void iqp_count_derive_plan(const iqp_config *cfg, iqp_derive *d);

/* A combiner for counting under cfg: IQP_COUNTERS(cfg) wide, deriving
 * coarse granularities at drain when derive is 1 (0: every granularity
 * combined per event, the reference path tests compare with).
 * iqp_count_apply follows the combiner's plan. */
iqp_combiner *iqp_count_combiner_new(const iqp_config *cfg, int derive);

/* ---- the pool ------------------------------------------------------------- */

typedef struct iqp_shards iqp_shards;

/* Starts n counting threads (2..IQP_MAX_COUNT_THREADS) with counting
 * combiners (iqp_count_combiner_new(cfg, derive)). */
iqp_shards *iqp_shards_new(const iqp_config *cfg, unsigned n, int derive);

/* Lets every queued order be counted, then stops and joins the threads. */
void iqp_shards_free(iqp_shards *s);

unsigned iqp_shards_n(const iqp_shards *s);

/* Queues a copy of o (blocks while the ring is full). */
void iqp_shards_push(iqp_shards *s, const iqp_count_order *o);

/* fn(ud) runs, on a counting thread, once every order queued so far has
 * been applied by every shard: the caller's cue to free the events. */
void iqp_shards_after(iqp_shards *s, void (*fn)(void *ud), void *ud);

/* Waits until every queued order is applied. The threads are then idle
 * until the next push, so their combiners may be taken. */
void iqp_shards_quiesce(iqp_shards *s);

/* Distinct cells the shards hold (approximate while they run). */
size_t iqp_shards_cells(const iqp_shards *s);

/* Cell updates made since the last call (call when quiesced). */
uint64_t iqp_shards_take_updates(iqp_shards *s);

/* After quiesce: moves the n shard combiners to out[0..n) and gives the
 * shards empty ones (their spares). */
void iqp_shards_take(iqp_shards *s, iqp_combiner **out);

/* Hands back combiners taken earlier (written or not): they are cleared
 * and become the shards' spares. */
void iqp_shards_give_back(iqp_shards *s, iqp_combiner **combs);

/* After quiesce: empties the shards' combiners (iqp_aggregator_discard). */
void iqp_shards_clear(iqp_shards *s);

#endif

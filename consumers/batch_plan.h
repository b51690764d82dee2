/* batch_plan.h -- where `iqp backfill` cuts the last batches of a file.
 *
 * Owns: one decision, from input byte positions alone: an extra cut of a
 * file's next-to-last batch, so that the last two batches share what is
 * left of the file (2/3 and 1/3: batch_plan.c).
 *
 * May not touch: counting, flushing, positions: the backfill loop
 * (consumers/ingest.c) tells it where the aggregator cut a batch, asks it
 * after every decoded batch whether to cut, and cuts.
 *
 * Why: the aggregator cuts a batch when it is full (flush_events, or its
 * cell cap), and the writer thread writes it while the next one is
 * counted. Whatever the writer still has to do when the file's last line
 * is counted runs alone, with the other core idle. With full batches to
 * the end, that is a whole batch's write: a 30-day log of 70 MB is five
 * full batches of ~14 MB and 2 MB more, and the fifth batch's write
 * (~0.3 s) was the backfill's tail. So once what is left after a cut (R)
 * is less than two of the batches before it (B), but at least half of
 * one, the next batch is cut at 2R / 3: the last batch is counted while
 * the writer writes the one before it, and what runs alone at the end is
 * the commit of a batch a third as long. The cut is an ordinary
 * iqp_aggregator_flush_begin after a decoded batch, with the file
 * position staged as for any other: no count depends on where cuts fall
 * (check_e2e's flush-size invariance: a cut after every event, every 997,
 * or none).
 *
 * Positions are the reader's input bytes, which move a read (1 MiB) at a
 * time; for a compressed file a read holds several MiB of lines, too
 * coarse to plan with, so the backfill gives the plan a size only for a
 * plain file. A resumed file's first batch counts the skipped bytes too:
 * that can only make the first plan's target large enough that the
 * aggregator cuts first, and every cut of the aggregator plans again.
 */
#ifndef IQP_BATCH_PLAN_H
#define IQP_BATCH_PLAN_H

#include <stdint.h>

typedef struct iqp_batch_plan {
    uint64_t file_size;   /* input bytes of the file; 0: unknown (a pipe), no extra cut */
    uint64_t batch_start; /* input position of the last cut */
    uint64_t target;      /* cut the batch in hand at batch_start + target; 0: no cut planned */
    int split;            /* the extra cut was made (one per file) */
} iqp_batch_plan;

void iqp_batch_plan_init(iqp_batch_plan *p, uint64_t file_size);

/* The aggregator cut a batch with the input read up to bytes_in. */
void iqp_batch_plan_cut(iqp_batch_plan *p, uint64_t bytes_in);

/* 1 when the batch in hand is to be cut now, the input read up to
 * bytes_in (the plan records the cut); else 0. */
int iqp_batch_plan_split_now(iqp_batch_plan *p, uint64_t bytes_in);

#endif

/* partition_checkpoint.h -- checkpoints of partition stores in a directory
 * the instances of a group share (iqp stream --checkpoint-dir).
 *
 * Owns: the layout of the checkpoint dir, and choosing, writing, pruning
 * and restoring its generations:
 *
 *   CKDIR/partition-<p>/<progress>-<ms>-<pid>     one generation: a RocksDB
 *                                                 checkpoint of partition
 *                                                 p's store
 *   CKDIR/partition-<p>/<...>.tmp                 being written (or left by
 *                                                 a crash): never read
 *
 * progress is the sum of the next offsets the store holds for partition p
 * of both topics (20 digits, so names sort by it), ms the wall clock and
 * pid the writer's process id when it was written. A generation appears
 * only by the rename of a whole, synced checkpoint (store/backup.h,
 * iqp_store_checkpoint_named), so every name without ".tmp" is complete.
 *
 * Which one is restored: the one with the most progress, not the latest
 * written. Every generation is self-consistent (a partition store commits
 * counts, dedup markers and offsets in one WriteBatch), so any of them is
 * a correct point to resume from: replaying Kafka from its offsets counts
 * the rest once. A stalled former owner that writes a generation late
 * (a "zombie") cannot move the partition back: its generation wins only
 * if it holds more progress, and then it is a correct state as well.
 * There is no CURRENT pointer to race on: the listing is the pointer.
 *
 * May not touch: the contents of a store (stream.c reads the offsets and
 * passes progress in), Kafka, the stream's partition table.
 */
#ifndef IQP_PARTITION_CHECKPOINT_H
#define IQP_PARTITION_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* Generations kept per partition (the most progress first). */
#define IQP_PCK_KEEP 3

/* The checkpoint dir must be a writable directory; created (one level)
 * when missing. 0, or -1 with err naming the problem. */
int iqp_pck_prepare_dir(const char *ckdir, char *err, size_t errlen);

/* The generation of partition with the most progress: 1 with its path and
 * progress, 0 when the partition has none, -1 with err when the directory
 * cannot be read. */
int iqp_pck_best(const char *ckdir, int32_t partition, char *path, size_t pathlen, int64_t *progress, char *err,
                 size_t errlen);

/* ---- writing, off the caller's thread ---------------------------------------
 *
 * iqp stream's consuming thread used to wait for every checkpoint (a
 * memtable flush, hard links, a sync: 10-50 ms each, measured). A writer
 * runs one checkpoint at a time on a thread of its own while the store
 * goes on taking batches (an ingesting batch's commit, and a snapshot,
 * wait at the ingest gate while RocksDB takes the checkpoint, memtable
 * flush included): a RocksDB checkpoint of a live store is a state
 * the store was in (counts and offsets commit together; store.c's ingest
 * gate keeps it off the gap between an ingesting batch's commit and its
 * ingestion), but which one is known only once it is written. So the
 * generation is written under a .tmp name, opened read-only, its
 * progress read from it by the caller's function, and then renamed to
 * the name that progress gives: a name always says what its generation
 * holds. After it, the partition's directory is pruned to the
 * IQP_PCK_KEEP generations with the most progress (and .tmp entries
 * older than an hour, crashed writers', are removed). */
typedef struct iqp_pck_writer iqp_pck_writer;

/* The progress of partition's checkpoint st (open read-only): -1 when its
 * offsets cannot be read. Called on the writer's thread. */
typedef int64_t (*iqp_pck_progress_fn)(iqp_store *st, int32_t partition, void *ud);

/* What one checkpoint came to. */
typedef struct iqp_pck_result {
    int32_t partition;
    int64_t progress;           /* read from the generation written (rc 0) */
    int rc;                     /* 0 written, -1 failed (err) */
    int64_t ms;                 /* how long it took */
    char path[4400], err[4600];
} iqp_pck_result;

iqp_pck_writer *iqp_pck_writer_new(const char *ckdir, iqp_pck_progress_fn progress_of, void *ud);

/* A checkpoint was started and not collected yet. */
int iqp_pck_writer_busy(const iqp_pck_writer *w);

/* The store of the checkpoint in flight (NULL: none). */
const iqp_store *iqp_pck_writer_store(const iqp_pck_writer *w);

/* Starts checkpointing st, partition's store, which must stay open until
 * the result is collected; w must not be busy. When no thread can be
 * started the checkpoint is written before this returns, and collected
 * as any other. */
void iqp_pck_writer_start(iqp_pck_writer *w, iqp_store *st, int32_t partition);

/* 1 with *r when the checkpoint in flight is done (waiting for it when
 * wait is set), and w is idle again; 0 when none is in flight or it is
 * still running (wait not set). */
int iqp_pck_writer_collect(iqp_pck_writer *w, int wait, iqp_pck_result *r);

/* Waits for a checkpoint in flight (its result is dropped) and frees w. */
void iqp_pck_writer_free(iqp_pck_writer *w);

/* Puts partition's best generation in place as the store dir (whatever
 * is at dir is replaced; it must not be open): iqp_store_restore, staged
 * and renamed. A generation that cannot be copied (pruned by another
 * writer meanwhile, damaged) is skipped for the next best. 1 restored
 * (from: the generation, *progress its progress), 0 none exists, -1 with
 * err (none could be restored). */
int iqp_pck_restore(const char *ckdir, int32_t partition, const char *dir, char *from, size_t fromlen,
                    int64_t *progress, char *err, size_t errlen);

#endif

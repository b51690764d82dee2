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
 * iqp_store_checkpoint_to), so every name without ".tmp" is complete.
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

/* Writes a checkpoint of st (partition's store, open here, no batch being
 * written) as a new generation with the given progress, then prunes the
 * partition's directory to the IQP_PCK_KEEP generations with the most
 * progress (and removes .tmp entries older than an hour: crashed
 * writers'). Its path in path. 0, or -1 with err (nothing published). */
int iqp_pck_write(iqp_store *st, const char *ckdir, int32_t partition, int64_t progress, char *path,
                  size_t pathlen, char *err, size_t errlen);

/* Puts partition's best generation in place as the store dir (whatever
 * is at dir is replaced; it must not be open): iqp_store_restore, staged
 * and renamed. A generation that cannot be copied (pruned by another
 * writer meanwhile, damaged) is skipped for the next best. 1 restored
 * (from: the generation, *progress its progress), 0 none exists, -1 with
 * err (none could be restored). */
int iqp_pck_restore(const char *ckdir, int32_t partition, const char *dir, char *from, size_t fromlen,
                    int64_t *progress, char *err, size_t errlen);

#endif

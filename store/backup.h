/* backup.h -- a consistent copy of a store, and a copy put back as one.
 *
 * Owns: the files of a backup and of a restore: the RocksDB checkpoint
 * taken from a fresh read-only open (retried when a concurrent compaction
 * deletes a file being linked), and the staged, fsynced, renamed copy that
 * becomes a store again, with RocksDB's lock file telling whether another
 * process still writes to the store it would replace. `iqp backup` and
 * `iqp restore` (cli/) parse the flags and print the result; this is the
 * work. May not touch: the contents of a store (it opens one read-only and
 * copies files; it never writes a batch).
 */
#ifndef IQP_STORE_BACKUP_H
#define IQP_STORE_BACKUP_H

#include <stddef.h>

/* Told about each failed attempt that is tried again (1-based). */
typedef void (*iqp_backup_retry_fn)(void *ud, int attempt, const char *err);

/* Writes a consistent copy of the store at dir into the new directory to
 * (which must not exist; its parent must): a RocksDB checkpoint, tried up
 * to attempts times, each from a fresh read-only open; a failed attempt's
 * partial copy is removed. Safe beside a running writer. 0, or -1 with
 * err (dir not a store, to exists, or every attempt failed). */
int iqp_store_backup(const char *dir, const char *to, int attempts, iqp_backup_retry_fn on_retry, void *ud,
                     char *err, size_t errlen);

struct iqp_store;

/* Names a checkpoint once it is written: given the written one at path
 * (its .tmp name), puts the name it is published under in to. 0, or -1
 * with err (nothing is published). */
typedef int (*iqp_checkpoint_namer)(const char *path, void *ud, char *to, size_t tolen, char *err, size_t errlen);

/* Writes a checkpoint of the store st, open in this process, as a new
 * directory, all or nothing, named from what was written (iqp stream
 * names a partition checkpoint by the offsets it holds, while its store
 * goes on taking batches): RocksDB's checkpoint into tmp (which must end
 * in ".tmp"; its files synced), then name(tmp, ud, to, tolen, ...), one
 * rename to to and its parent synced. A crash leaves no to, or the whole
 * one (and maybe a .tmp, which readers ignore). 0, or -1 with err (tmp
 * removed). */
int iqp_store_checkpoint_named(struct iqp_store *st, const char *tmp, iqp_checkpoint_namer name, void *ud,
                               char *to, size_t tolen, char *err, size_t errlen);

/* Puts the backup from back as the store dir. from must open as a store.
 * Its files are staged in dir.restoring (table files hard-linked when the
 * file system allows, every other file copied: a writer appends to the
 * WAL and MANIFEST, and the backup must stay as it was), fsynced, and
 * renamed into place, so a crash leaves no store or the whole one. An
 * existing dir is refused, or with force moved aside to
 * dir.before-restore-<ms> (its new name in aside; "" when there was none),
 * and refused while a process holds its lock. 0, or -1 with err. */
int iqp_store_restore(const char *from, const char *dir, int force, char *aside, size_t asidelen, char *err,
                      size_t errlen);

#endif

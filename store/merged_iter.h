/* merged_iter.h -- one ordered walk over several RocksDB iterators.
 *
 * Owns: a k-way merge of iterators whose keys are disjoint (no key is in
 * two of them), so the walk gives every key of every child once, in
 * bytewise order. The counts of a store live in one column family per
 * period (store.c, "counts by period"); a key's slot names its one family,
 * so their keys never repeat across children and no value needs merging.
 *
 * Children are few (the periods a store keeps: about a dozen), so the
 * merge picks the least current key by a linear pass over them; a heap
 * would win only past a few dozen.
 *
 * May not touch: anything but the iterators it is given (it does not know
 * which column family or snapshot they read, and it destroys them).
 */
#ifndef IQP_MERGED_ITER_H
#define IQP_MERGED_ITER_H

#include <stddef.h>
#include <rocksdb/c.h>

typedef struct iqp_merged_iter iqp_merged_iter;

/* Takes ownership of its[0..n) (NULL entries are skipped); NULL when out
 * of memory (the iterators are destroyed). Not positioned: seek first. */
iqp_merged_iter *iqp_merged_iter_new(rocksdb_iterator_t **its, size_t n);
void iqp_merged_iter_seek(iqp_merged_iter *m, const char *key, size_t klen);
void iqp_merged_iter_seek_to_first(iqp_merged_iter *m);
int iqp_merged_iter_valid(const iqp_merged_iter *m);
const char *iqp_merged_iter_key(const iqp_merged_iter *m, size_t *klen);
const char *iqp_merged_iter_value(const iqp_merged_iter *m, size_t *vlen);
void iqp_merged_iter_next(iqp_merged_iter *m);
/* The first child's read error (malloc'd, NULL when none), as
 * rocksdb_iter_get_error gives it. */
char *iqp_merged_iter_error(const iqp_merged_iter *m);
void iqp_merged_iter_free(iqp_merged_iter *m);

#endif

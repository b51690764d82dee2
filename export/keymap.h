/* keymap.h -- a hash map from 128-bit keys to 64-bit values, for iqp export.
 *
 * Owns: its own memory only. Keys are XXH3-128 digests the caller makes
 * (of an event id, or of a request id and an item), so they are already
 * uniformly spread and two distinct inputs sharing one is negligible
 * (the same bet the store's dedup markers make, cells.h).
 *
 * Layout: one flat array of {key, value} slots, open addressing with linear
 * probing, grown at 50% load. Deletion shifts the following run back
 * (Knuth's algorithm R), so there are no tombstones and a map whose keys
 * come and go (the export's sliding windows of event time) never fills up
 * with dead slots. An all-zero key marks an empty slot; a real all-zero
 * digest is remapped to 1 on the way in.
 *
 * May not touch: anything else; pure data structure.
 */
#ifndef IQP_EXPORT_KEYMAP_H
#define IQP_EXPORT_KEYMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct iqp_key128 {
    uint64_t lo, hi;
} iqp_key128;

typedef struct iqp_keymap iqp_keymap;

iqp_keymap *iqp_keymap_new(void);
void iqp_keymap_free(iqp_keymap *m);

/* XXH3-128 of the bytes. */
iqp_key128 iqp_key128_of(const void *bytes, size_t len);

/* 1 and *value when key is present, else 0. */
int iqp_keymap_get(const iqp_keymap *m, iqp_key128 key, uint64_t *value);

/* Inserts or replaces. */
void iqp_keymap_put(iqp_keymap *m, iqp_key128 key, uint64_t value);

/* The same in one probe, and 1 with the value replaced in *old when key
 * was present, else 0. */
int iqp_keymap_swap(iqp_keymap *m, iqp_key128 key, uint64_t value, uint64_t *old);

/* Starts loading the slot where key's probe begins into the CPU caches
 * (for a batch of lookups about to be made); changes nothing. */
void iqp_keymap_prefetch(const iqp_keymap *m, iqp_key128 key);

/* Removes key; 1 when it was present. */
int iqp_keymap_delete(iqp_keymap *m, iqp_key128 key);

size_t iqp_keymap_count(const iqp_keymap *m);

#endif

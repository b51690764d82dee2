/* keymap.c -- 128-bit key -> u64 map (see keymap.h). */
#include "export/keymap.h"

#include <stdlib.h>
#include <xxhash.h>

typedef struct km_slot {
    iqp_key128 key; /* {0, 0}: empty */
    uint64_t value;
} km_slot;

struct iqp_keymap {
    km_slot *slots;
    size_t mask; /* capacity - 1, a power of two */
    size_t count;
};

#define KM_INITIAL 1024

static int is_empty(const km_slot *s) { return s->key.lo == 0 && s->key.hi == 0; }

static int same_key(iqp_key128 a, iqp_key128 b) { return a.lo == b.lo && a.hi == b.hi; }

/* The empty key is reserved for empty slots. */
static iqp_key128 fix_key(iqp_key128 k) {
    if (k.lo == 0 && k.hi == 0) k.lo = 1;
    return k;
}

iqp_key128 iqp_key128_of(const void *bytes, size_t len) {
    XXH128_hash_t h = XXH3_128bits(bytes, len);
    iqp_key128 k = {h.low64, h.high64};
    return fix_key(k);
}

static km_slot *alloc_slots(size_t n) {
    km_slot *s = calloc(n, sizeof *s);
    if (!s) abort();
    return s;
}

iqp_keymap *iqp_keymap_new(void) {
    iqp_keymap *m = calloc(1, sizeof *m);
    if (!m) abort();
    m->slots = alloc_slots(KM_INITIAL);
    m->mask = KM_INITIAL - 1;
    return m;
}

void iqp_keymap_free(iqp_keymap *m) {
    if (!m) return;
    free(m->slots);
    free(m);
}

/* The slot holding key, or the empty slot where it would go. */
static size_t probe(const iqp_keymap *m, iqp_key128 key) {
    size_t i = key.lo & m->mask;
    while (!is_empty(&m->slots[i]) && !same_key(m->slots[i].key, key)) i = (i + 1) & m->mask;
    return i;
}

static void grow(iqp_keymap *m) {
    size_t old_cap = m->mask + 1;
    km_slot *old = m->slots;
    m->slots = alloc_slots(2 * old_cap);
    m->mask = 2 * old_cap - 1;
    for (size_t i = 0; i < old_cap; i++)
        if (!is_empty(&old[i])) m->slots[probe(m, old[i].key)] = old[i];
    free(old);
}

int iqp_keymap_get(const iqp_keymap *m, iqp_key128 key, uint64_t *value) {
    key = fix_key(key);
    const km_slot *s = &m->slots[probe(m, key)];
    if (is_empty(s)) return 0;
    *value = s->value;
    return 1;
}

void iqp_keymap_prefetch(const iqp_keymap *m, iqp_key128 key) {
    __builtin_prefetch(&m->slots[fix_key(key).lo & m->mask]);
}

int iqp_keymap_swap(iqp_keymap *m, iqp_key128 key, uint64_t value, uint64_t *old) {
    key = fix_key(key);
    size_t i = probe(m, key);
    int had = !is_empty(&m->slots[i]);
    if (had) {
        *old = m->slots[i].value;
    } else {
        if (2 * (m->count + 1) > m->mask + 1) {
            grow(m);
            i = probe(m, key);
        }
        m->count++;
        m->slots[i].key = key;
    }
    m->slots[i].value = value;
    return had;
}

void iqp_keymap_put(iqp_keymap *m, iqp_key128 key, uint64_t value) {
    uint64_t old;
    iqp_keymap_swap(m, key, value, &old);
}

/* Backward-shift deletion: slides later members of the probe run into the
 * hole whenever their home slot does not lie cyclically in (hole, j]. */
int iqp_keymap_delete(iqp_keymap *m, iqp_key128 key) {
    key = fix_key(key);
    size_t hole = probe(m, key);
    if (is_empty(&m->slots[hole])) return 0;
    for (size_t j = (hole + 1) & m->mask; !is_empty(&m->slots[j]); j = (j + 1) & m->mask) {
        size_t home = m->slots[j].key.lo & m->mask;
        int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (stays) continue;
        m->slots[hole] = m->slots[j];
        hole = j;
    }
    m->slots[hole].key.lo = m->slots[hole].key.hi = 0;
    m->count--;
    return 1;
}

size_t iqp_keymap_count(const iqp_keymap *m) { return m->count; }

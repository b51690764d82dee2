/* combiner.c -- in-memory folding of counter deltas (see combiner.h).
 *
 * Every delta of a micro-batch lands here first, ~100 per impression, so
 * this is the hottest code in iqp. Design, from measurement: a chained hash
 * (uthash) spent ~700 ns per lookup on a batch of a million cells, nearly
 * all of it cache misses walking bucket chains. So each table here is a flat
 * open-addressing array with linear probing, grown at 50% load.
 *
 * Two kinds of table:
 *   - byte tables (strings: context prefixes, item entities, dedup
 *     markers) hold {XXH3-64 hash, cell} slots; the hash is kept in the
 *     slot, so growing never rehashes keys and mismatches rarely touch the
 *     cell. Prefix and item cells hold their interned id.
 *   - counter tables (counts, contexts) name a cell by two integers,
 *     a = prefix id << 32 | item id and b = bucket << 8 | granularity; a
 *     16-byte slot holds a, b's low 32 bits and the cell's index (four
 *     slots to a cache line): a probe compares integers in the slot and
 *     never touches a string (before interning, 37% of the counting
 *     thread went to probing and comparing ~40-byte string keys). The
 *     slots live in a reserved mapping and grow in place ("slot mappings"
 *     below), so a batch's table is faulted in once, not once per
 *     doubling.
 * At drain, prefix and item ids are ranked by their bytes, the cells are
 * sorted by (prefix rank, item rank, slot, granularity, bucket), which is
 * the store's key order (all parts are length-prefixed; cells.h: one
 * stored key per slot) and each stored key's cell order, so the batch
 * packs the cells of one (context, entity, slot) into one merge.
 *
 * Derived granularities (combiner.h, iqp_derive): a source cell is a
 * counter cell whose granularity byte is SOURCE_GRAN, named by its bucket
 * of granularity 0. The drain writes it as granularity 0's cell and adds
 * it into the plan's coarser cells (see "writing a table" below), summed
 * with any cells the caller added to those granularities directly; a
 * batch-wide range of source buckets lets iqp_combiner_peek sum a coarse
 * bucket's source cells without probing buckets no event touched.
 *
 * Cells are carved, with their counters and key bytes, out of an arena of
 * 2 MiB blocks, rewound in one sweep at drain time; blocks and slot arrays
 * are kept for the next batch (a batch's memory is reused, not re-faulted).
 *
 *   cell = { key length | counters[width] | key bytes }
 *   marker cells use the same tables with two "counters": ts, written_wm
 */
#include "aggregator/combiner.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>

#include "model/cells.h"

typedef struct cell {
    size_t klen;
    unsigned char *key;
    int64_t vec[];
} cell;

typedef struct slot {
    uint64_t hash;
    cell *c;            /* NULL: empty */
} slot;

/* One open-addressing table. */
typedef struct cell_table {
    slot *slots;
    size_t mask;        /* capacity - 1, capacity a power of two */
    size_t count;
    size_t width;       /* counters per cell */
} cell_table;

/* A bump allocator: blocks chained through their first word. */
typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_block;

/* Counter cells named by integers. Cells live in insertion order in
 * chunks of CHUNK_CELLS (names: a, b; vals: width counters each), which a
 * drain walks sequentially; a slot holds the name and the cell's index + 1
 * (0: empty), so a probe never leaves the slot array. */
#define CHUNK_SHIFT 16
#define CHUNK_CELLS ((size_t)1 << CHUNK_SHIFT)

typedef struct int_slot {
    uint64_t a;
    uint32_t b_lo;      /* b's low 32 bits (its high bits: int_table.b_hi) */
    uint32_t idx1;
} int_slot;

typedef struct cell_chunk {
    uint64_t *names;    /* 2 per cell: a, b */
    int64_t *vals;      /* width per cell */
} cell_chunk;

typedef struct int_table {
    int_slot *slots;    /* in a reserved mapping of `reserved` bytes */
    size_t reserved;
    size_t mask, count, width;
    uint32_t b_hi;      /* the high 32 bits of b of every cell, unless b_mixed */
    int b_mixed;        /* cells differ there: a match is checked against names */
    cell_chunk *chunks;
    size_t n_chunks;    /* allocated; kept across batches */
    int64_t src_first, src_last; /* buckets of the source cells (first > last: none) */
} int_table;

/* Interned strings: the byte table finds an id, keys[id] its bytes. */
typedef struct intern {
    cell_table table;
    cell **keys;
    size_t cap;
} intern;

struct iqp_combiner {
    int_table counts, contexts;
    iqp_derive derive;      /* mask 0: nothing derived */
    cell_table markers;
    intern prefixes, items;
    unsigned char *entity;  /* scratch: an item's entity encoding */
    size_t entity_cap;
    arena_block *arena;     /* blocks in use, newest first */
    arena_block *spare;     /* rewound blocks kept for the next batch */
};

#define HUGE_PAGE (2u << 20)
#define ARENA_BLOCK HUGE_PAGE
#define INITIAL_SLOTS 4096

/* Zeroed memory; large requests come 2 MiB aligned and advised as huge
 * pages, since a batch's tables are probed at random and on 4 KiB pages
 * most of a probe's time is TLB misses (measured: 60% on one load). */
static void *alloc_zeroed(size_t n) {
    void *p;
    if (n < HUGE_PAGE) {
        p = calloc(1, n);
    } else {
        n = (n + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
        p = aligned_alloc(HUGE_PAGE, n);
        if (p) {
            madvise(p, n, MADV_HUGEPAGE);
            memset(p, 0, n);
        }
    }
    if (!p) abort();
    return p;
}

/* The same, 2 MiB aligned, without zeroing (the caller writes before it
 * reads: a memset of fresh pages would zero them twice). */
static void *alloc_huge(size_t n) {
    n = (n + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
    void *p = aligned_alloc(HUGE_PAGE, n);
    if (!p) abort();
    madvise(p, n, MADV_HUGEPAGE);
    return p;
}

static void *arena_alloc(iqp_combiner *c, size_t n) {
    n = (n + 15) & ~(size_t)15;
    arena_block *b = c->arena;
    if (!b || b->used + n > b->cap) {
        if (c->spare && c->spare->cap >= n) {
            b = c->spare;             /* already faulted in: reuse it */
            c->spare = b->next;
        } else {
            size_t cap = (n > ARENA_BLOCK ? n : ARENA_BLOCK) - sizeof(arena_block);
            if (cap < n) cap = n;
            b = alloc_zeroed(sizeof(arena_block) + cap);
            b->cap = cap;
        }
        b->next = c->arena;
        b->used = 0;
        c->arena = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

/* Moves every block to the spare list: the next batch reuses memory that is
 * already mapped instead of faulting in fresh pages. */
static void arena_rewind(iqp_combiner *c) {
    while (c->arena) {
        arena_block *next = c->arena->next;
        c->arena->next = c->spare;
        c->spare = c->arena;
        c->arena = next;
    }
}

static void arena_free_all(iqp_combiner *c) {
    arena_rewind(c);
    while (c->spare) {
        arena_block *next = c->spare->next;
        free(c->spare);
        c->spare = next;
    }
}

/* ---- tables -------------------------------------------------------------- */

static void table_init(cell_table *t, size_t width) {
    t->slots = alloc_zeroed(INITIAL_SLOTS * sizeof(slot));
    t->mask = INITIAL_SLOTS - 1;
    t->count = 0;
    t->width = width;
}

/* Empties the table but keeps its capacity (and its mapped pages). */
static void table_reset(cell_table *t) {
    if (t->count == 0) return;
    memset(t->slots, 0, (t->mask + 1) * sizeof(slot));
    t->count = 0;
}

static void table_grow(cell_table *t) {
    size_t cap = (t->mask + 1) * 2;
    slot *ns = alloc_zeroed(cap * sizeof(slot));
    for (size_t i = 0; i <= t->mask; i++) {
        if (!t->slots[i].c) continue;
        size_t j = t->slots[i].hash & (cap - 1);
        while (ns[j].c) j = (j + 1) & (cap - 1);
        ns[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = ns;
    t->mask = cap - 1;
}

/* The slot holding key, or the empty slot where it would go. */
static slot *table_probe(const cell_table *t, const unsigned char *key, size_t klen, uint64_t h) {
    size_t i = h & t->mask;
    for (;;) {
        slot *s = &t->slots[i];
        if (!s->c || (s->hash == h && s->c->klen == klen && memcmp(s->c->key, key, klen) == 0))
            return s;
        i = (i + 1) & t->mask;
    }
}

/* Finds or creates the cell for key. */
static cell *table_get(iqp_combiner *c, cell_table *t, const unsigned char *key, size_t klen) {
    uint64_t h = XXH3_64bits(key, klen);
    slot *s = table_probe(t, key, klen, h);
    if (s->c) return s->c;
    if (2 * (t->count + 1) > t->mask + 1) {
        table_grow(t);
        s = table_probe(t, key, klen, h);
    }
    cell *e = arena_alloc(c, sizeof(cell) + t->width * sizeof(int64_t) + klen);
    e->klen = klen;
    memset(e->vec, 0, t->width * sizeof(int64_t));
    e->key = (unsigned char *)(e->vec + t->width);
    memcpy(e->key, key, klen);
    s->hash = h;
    s->c = e;
    t->count++;
    return e;
}

/* ---- counter tables ------------------------------------------------------ */

#define NO_ITEM UINT32_MAX

/* ---- slot mappings ---------------------------------------------------------
 * A counter table's slot array lives in one private anonymous mapping that
 * reserves address space for SLOT_RESERVE bytes of slots (MAP_NORESERVE: no
 * memory is committed until a page is touched). The table grows in place:
 * the slots it used are cleared, the pages above them have never been
 * touched, so they are still the kernel's zero pages-to-be, and every cell
 * is re-inserted from its name in the chunks (which hold all of them). So
 * a batch that grows its table from 4096 slots to millions faults in the
 * final array once, not every intermediate array too (before: the kernel
 * zeroed ~twice the final table's pages per combiner, 6-9% of a backfill's
 * CPU, all of it on the counting thread before the writer had work). Only
 * a table past its reservation moves to a new, larger mapping. */
#define SLOT_RESERVE ((size_t)1 << 30) /* 64M slots: 32M cells */

/* A mapping of at least bytes, 2 MiB aligned (huge pages fit), or NULL. */
static void *map_slots(size_t bytes) {
    size_t len = bytes + HUGE_PAGE;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uintptr_t start = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    size_t head = start - (uintptr_t)p, tail = len - head - bytes;
    if (head) munmap(p, head);
    if (tail) munmap((unsigned char *)start + bytes, tail);
    return (void *)start;
}

/* Gives t a fresh mapping for cap slots (zero: never touched). */
static void remap_slots(int_table *t, size_t cap) {
    size_t need = cap * sizeof(int_slot), bytes = need > SLOT_RESERVE ? 2 * need : SLOT_RESERVE;
    void *p = map_slots(bytes);
    if (!p && bytes > need) p = map_slots(bytes = need); /* address space is short: no reserve */
    if (!p) abort();
    if (t->slots) munmap(t->slots, t->reserved);
    t->slots = p;
    t->reserved = bytes;
}

/* Slot arrays of 2 MiB and more are randomly probed: advise huge pages
 * (small tables stay on 4 KiB pages, so a stream's many idle combiners
 * do not hold 2 MiB each). */
static void advise_slots(const int_table *t) {
    size_t used = (t->mask + 1) * sizeof(int_slot);
    if (used >= HUGE_PAGE) madvise(t->slots, used, MADV_HUGEPAGE);
}

static void int_table_init(int_table *t, size_t width) {
    memset(t, 0, sizeof *t);
    remap_slots(t, INITIAL_SLOTS);
    t->mask = INITIAL_SLOTS - 1;
    t->width = width;
    t->src_first = INT64_MAX;
    t->src_last = INT64_MIN;
}

static void int_table_free(int_table *t) {
    for (size_t i = 0; i < t->n_chunks; i++) {
        free(t->chunks[i].names);
        free(t->chunks[i].vals);
    }
    free(t->chunks);
    munmap(t->slots, t->reserved);
}

static int64_t *cell_vals(const int_table *t, size_t idx) {
    return t->chunks[idx >> CHUNK_SHIFT].vals + (idx & (CHUNK_CELLS - 1)) * t->width;
}

static const uint64_t *cell_names(const int_table *t, size_t idx) {
    return t->chunks[idx >> CHUNK_SHIFT].names + 2 * (idx & (CHUNK_CELLS - 1));
}

static void int_table_reset(int_table *t) {
    t->src_first = INT64_MAX;
    t->src_last = INT64_MIN;
    if (t->count == 0) return;
    memset(t->slots, 0, (t->mask + 1) * sizeof(int_slot));
    t->count = 0;
    t->b_mixed = 0;
}

/* splitmix64's finalizer over both words: cheap, and every input bit
 * reaches the low bits the table indexes with. */
static uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t h = a * 0x9E3779B97F4A7C15ULL ^ (b + 0x632BE59BD9B4E019ULL);
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBULL;
    return h ^ (h >> 31);
}

/* The slot of cell (a, b), or the empty slot where it would go. A slot
 * keeps a and b's low 32 bits (16 bytes, four to a cache line): while
 * every cell shares b's high bits (b_hi; a batch's buckets rarely span
 * 2^24 hours or minutes), a match of those is a match; otherwise (b_mixed,
 * or b's high bits are not b_hi) the cell's name in its chunk decides. */
static int_slot *int_probe(const int_table *t, uint64_t a, uint64_t b) {
    uint32_t lo = (uint32_t)b;
    int exact = !t->b_mixed && (uint32_t)(b >> 32) == t->b_hi;
    size_t i = mix(a, b) & t->mask;
    for (;;) {
        int_slot *s = &t->slots[i];
        if (!s->idx1 || (s->a == a && s->b_lo == lo && (exact || cell_names(t, s->idx1 - 1)[1] == b)))
            return s;
        i = (i + 1) & t->mask;
    }
}

/* Doubles t's slots (in place while the reservation lasts) and re-inserts
 * every cell from its name. The new upper half has never been touched:
 * it is cleared by a write before the re-insertion probes it. A probe's
 * read first would map the kernel's shared zero page and the write after
 * it fault again, copy, and flush the other cores' TLBs (measured: ~6% of
 * the counting thread, do_huge_pmd_wp_page). */
static void int_table_grow(int_table *t) {
    size_t cap = (t->mask + 1) * 2;
    if (cap * sizeof(int_slot) > t->reserved) remap_slots(t, cap);
    t->mask = cap - 1;
    advise_slots(t);
    memset(t->slots, 0, cap * sizeof(int_slot)); /* the old half reused, the new one first-touched */
    for (size_t idx = 0; idx < t->count; idx++) {
        const uint64_t *name = cell_names(t, idx);
        size_t i = mix(name[0], name[1]) & t->mask;
        while (t->slots[i].idx1) i = (i + 1) & t->mask;
        t->slots[i] = (int_slot){name[0], (uint32_t)name[1], (uint32_t)(idx + 1)};
    }
}

/* Appends a zeroed cell named (a, b); returns its index. */
static size_t append_cell(int_table *t, uint64_t a, uint64_t b) {
    size_t idx = t->count++, k = idx >> CHUNK_SHIFT;
    if (k == t->n_chunks) {
        t->chunks = realloc(t->chunks, (k + 1) * sizeof *t->chunks);
        if (!t->chunks) abort();
        t->chunks[k].names = malloc(2 * CHUNK_CELLS * sizeof(uint64_t));
        /* 2 MiB aligned (huge pages): a cell's counters (8 of them, 64
         * bytes, in the default config) then sit in one cache line, not
         * two, for the counting thread's add and the drain's read, both at
         * random */
        t->chunks[k].vals = alloc_huge(CHUNK_CELLS * t->width * sizeof(int64_t)); /* zeroed per cell */
        if (!t->chunks[k].names) abort();
        t->n_chunks++;
    }
    uint64_t *name = t->chunks[k].names + 2 * (idx & (CHUNK_CELLS - 1));
    name[0] = a;
    name[1] = b;
    memset(cell_vals(t, idx), 0, t->width * sizeof(int64_t));
    return idx;
}

static int64_t *int_table_get(int_table *t, uint64_t a, uint64_t b) {
    int_slot *s = int_probe(t, a, b);
    if (s->idx1) return cell_vals(t, s->idx1 - 1);
    if (2 * (t->count + 1) > t->mask + 1) {
        int_table_grow(t);
        s = int_probe(t, a, b);
    }
    if (t->count == 0) t->b_hi = (uint32_t)(b >> 32);
    else if ((uint32_t)(b >> 32) != t->b_hi) t->b_mixed = 1;
    if (t->count + 1 > UINT32_MAX) abort(); /* idx1 is 32 bits: far past any batch's memory */
    s->a = a;
    s->b_lo = (uint32_t)b;
    s->idx1 = (uint32_t)(append_cell(t, a, b) + 1);
    return cell_vals(t, s->idx1 - 1);
}

static uint64_t name_word(uint32_t prefix, uint32_t item) {
    return (uint64_t)prefix << 32 | item;
}

static uint64_t bucket_word(int gran, int64_t bucket) {
    return (uint64_t)bucket << 8 | (uint8_t)gran;
}

/* The granularity byte of a source cell (granularity 0, plus the plan's
 * derived ones at drain): no config has this many granularities. */
#define SOURCE_GRAN 0xff

/* floor(a / b) for b > 0. */
static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b < 0) ? q - 1 : q;
}

static void note_source(int_table *t, int64_t bucket) {
    if (bucket < t->src_first) t->src_first = bucket;
    if (bucket > t->src_last) t->src_last = bucket;
}

/* ---- interning ------------------------------------------------------------ */

static void intern_init(intern *in) {
    table_init(&in->table, 1);
    in->keys = NULL;
    in->cap = 0;
}

static uint32_t intern_id(iqp_combiner *c, intern *in, const unsigned char *key, size_t len) {
    size_t before = in->table.count;
    cell *e = table_get(c, &in->table, key, len);
    if (in->table.count == before) return (uint32_t)e->vec[0];
    size_t id = before;
    if (id == in->cap) {
        in->cap = in->cap ? 2 * in->cap : 1024;
        in->keys = realloc(in->keys, in->cap * sizeof *in->keys);
        if (!in->keys) abort();
    }
    in->keys[id] = e;
    e->vec[0] = (int64_t)id;
    return (uint32_t)id;
}

/* 1 and *id when key is interned. */
static int intern_find(const intern *in, const unsigned char *key, size_t len, uint32_t *id) {
    if (in->table.count == 0) return 0;
    slot *s = table_probe(&in->table, key, len, XXH3_64bits(key, len));
    if (!s->c) return 0;
    *id = (uint32_t)s->c->vec[0];
    return 1;
}

/* Writes the entity encoding (cells.h: u16 BE length, bytes) of item into
 * out (2 + len bytes, len capped like iqp_cells_append_entity). */
static size_t encode_entity(unsigned char *out, const char *item, size_t len) {
    if (len > 65535) len = 65535;
    out[0] = (unsigned char)(len >> 8);
    out[1] = (unsigned char)len;
    memcpy(out + 2, item, len);
    return len + 2;
}

/* ---- public -------------------------------------------------------------- */

iqp_combiner *iqp_combiner_new(size_t width) {
    iqp_combiner *c = calloc(1, sizeof *c);
    if (!c || width > IQP_MAX_COUNTERS) abort();
    int_table_init(&c->counts, width);
    int_table_init(&c->contexts, 1);
    table_init(&c->markers, 2);
    intern_init(&c->prefixes);
    intern_init(&c->items);
    return c;
}

void iqp_combiner_free(iqp_combiner *c) {
    if (!c) return;
    int_table_free(&c->counts);
    int_table_free(&c->contexts);
    free(c->markers.slots);
    free(c->prefixes.table.slots);
    free(c->prefixes.keys);
    free(c->items.table.slots);
    free(c->items.keys);
    free(c->entity);
    arena_free_all(c);
    free(c);
}

uint32_t iqp_combiner_prefix_id(iqp_combiner *c, const unsigned char *prefix, size_t len) {
    return intern_id(c, &c->prefixes, prefix, len);
}

uint32_t iqp_combiner_item_id(iqp_combiner *c, const char *item, size_t len) {
    if (len + 2 > c->entity_cap) {
        c->entity_cap = len + 2 > 256 ? len + 2 : 256;
        c->entity = realloc(c->entity, c->entity_cap);
        if (!c->entity) abort();
    }
    size_t n = encode_entity(c->entity, item, len);
    return intern_id(c, &c->items, c->entity, n);
}

void iqp_combiner_add_count(iqp_combiner *c, uint32_t prefix, uint32_t item, int gran,
                            int64_t bucket, size_t idx, int64_t delta) {
    int_table_get(&c->counts, name_word(prefix, item), bucket_word(gran, bucket))[idx] += delta;
}

void iqp_combiner_add_context(iqp_combiner *c, uint32_t prefix, int gran, int64_t bucket,
                              int64_t delta) {
    int_table_get(&c->contexts, name_word(prefix, NO_ITEM), bucket_word(gran, bucket))[0] += delta;
}

void iqp_combiner_add_count_source(iqp_combiner *c, uint32_t prefix, uint32_t item, int64_t bucket,
                                   size_t idx, int64_t delta) {
    note_source(&c->counts, bucket);
    int_table_get(&c->counts, name_word(prefix, item), bucket_word(SOURCE_GRAN, bucket))[idx] += delta;
}

void iqp_combiner_add_context_source(iqp_combiner *c, uint32_t prefix, int64_t bucket,
                                     int64_t delta) {
    note_source(&c->contexts, bucket);
    int_table_get(&c->contexts, name_word(prefix, NO_ITEM), bucket_word(SOURCE_GRAN, bucket))[0] += delta;
}

void iqp_combiner_prefetch_count_source(const iqp_combiner *c, uint32_t prefix, uint32_t item,
                                        int64_t bucket) {
    const int_table *t = &c->counts;
    uint64_t h = mix(name_word(prefix, item), bucket_word(SOURCE_GRAN, bucket));
    __builtin_prefetch(&t->slots[h & t->mask]);
}

void iqp_combiner_set_derive(iqp_combiner *c, const iqp_derive *d) { c->derive = *d; }

const iqp_derive *iqp_combiner_derive(const iqp_combiner *c) { return &c->derive; }

int iqp_combiner_get_marker(const iqp_combiner *c, const unsigned char *key, iqp_marker *m) {
    if (c->markers.count == 0) return 0;
    uint64_t h = XXH3_64bits(key, IQP_MARKER_KEY_LEN);
    slot *s = table_probe(&c->markers, key, IQP_MARKER_KEY_LEN, h);
    if (!s->c) return 0;
    m->ts = s->c->vec[0];
    m->written_wm = s->c->vec[1];
    return 1;
}

void iqp_combiner_set_marker(iqp_combiner *c, const unsigned char *key, const iqp_marker *m) {
    cell *e = table_get(c, &c->markers, key, IQP_MARKER_KEY_LEN);
    e->vec[0] = m->ts;
    e->vec[1] = m->written_wm;
}

/* Adds the cell (name, gran byte, bucket) of t into vec; 1 when held. */
static int peek_add(const int_table *t, uint64_t name, int gran, int64_t bucket, int64_t *vec,
                    size_t n) {
    const int_slot *s = int_probe(t, name, bucket_word(gran, bucket));
    if (!s->idx1) return 0;
    const int64_t *held = cell_vals(t, s->idx1 - 1);
    for (size_t i = 0; i < n; i++) vec[i] += held[i];
    return 1;
}

/* Adds the source cells that granularity gran's bucket sums at drain:
 * all of them for granularity 0, the fine buckets inside it for a derived
 * one (only those the batch's source cells span are probed). */
static int peek_sources(const iqp_combiner *c, const int_table *t, uint64_t name, int gran,
                        int64_t bucket, int64_t *vec, size_t n) {
    const iqp_derive *d = &c->derive;
    if (!d->mask || t->src_first > t->src_last) return 0;
    if (gran == 0) return peek_add(t, name, SOURCE_GRAN, bucket, vec, n);
    if (gran < 0 || gran >= IQP_MAX_GRANS || !(d->mask >> gran & 1)) return 0;
    int64_t first, last, k = d->ratio[gran];
    if (__builtin_mul_overflow(bucket, k, &first) || __builtin_add_overflow(first, k - 1, &last))
        return 0;
    if (first < t->src_first) first = t->src_first;
    if (last > t->src_last) last = t->src_last;
    int held = 0;
    for (int64_t fb = first; fb <= last; fb++) held |= peek_add(t, name, SOURCE_GRAN, fb, vec, n);
    return held;
}

int iqp_combiner_peek(const iqp_combiner *c, const unsigned char *prefix, size_t plen,
                      const char *item, size_t ilen, int gran, int64_t bucket, int64_t *vec,
                      size_t n) {
    uint32_t pid, iid = NO_ITEM;
    if (!intern_find(&c->prefixes, prefix, plen, &pid)) return 0;
    if (item) {
        unsigned char small[256], *ent = ilen + 2 <= sizeof small ? small : malloc(ilen + 2);
        if (!ent) abort();
        int found = intern_find(&c->items, ent, encode_entity(ent, item, ilen), &iid);
        if (ent != small) free(ent);
        if (!found) return 0;
    }
    const int_table *t = item ? &c->counts : &c->contexts;
    if (t->count == 0) return 0;
    if (n > t->width) n = t->width;
    uint64_t name = name_word(pid, iid);
    int direct = peek_add(t, name, gran, bucket, vec, n);
    return peek_sources(c, t, name, gran, bucket, vec, n) | direct;
}

size_t iqp_combiner_cells(const iqp_combiner *c) { return c->counts.count + c->contexts.count; }

size_t iqp_combiner_markers(const iqp_combiner *c) { return c->markers.count; }

/* ---- drain ----------------------------------------------------------------- */

/* RocksDB's default (bytewise) order. */
static int cmp_cells(const void *a, const void *b) {
    const cell *x = *(cell *const *)a, *y = *(cell *const *)b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int r = memcmp(x->key, y->key, n);
    if (r) return r;
    return (x->klen > y->klen) - (x->klen < y->klen);
}

/* The table's cells in key order (caller frees the array). */
static cell **sorted_cells(const cell_table *t) {
    cell **sorted = malloc((t->count ? t->count : 1) * sizeof *sorted);
    size_t n = 0;
    if (!sorted) abort();
    for (size_t i = 0; i <= t->mask; i++)
        if (t->slots[i].c) sorted[n++] = t->slots[i].c;
    qsort(sorted, n, sizeof *sorted, cmp_cells);
    return sorted;
}

/* rank[id] = position of interned string id in byte order, and
 * *sorted[rank] = its cell (caller frees both). */
static uint32_t *rank_interned(const intern *in, cell ***sorted) {
    size_t n = in->table.count;
    uint32_t *rank = malloc((n ? n : 1) * sizeof *rank);
    if (!rank) abort();
    *sorted = sorted_cells(&in->table);
    for (size_t r = 0; r < n; r++) rank[(*sorted)[r]->vec[0]] = (uint32_t)r;
    return rank;
}

/* One cell of a drain: its sort key and where it lives. */
typedef struct drain_entry {
    uint64_t rank;      /* prefix rank << 32 | item rank */
    uint64_t slot;      /* the stored key's slot, as its u64 BE suffix orders */
    uint64_t suffix;    /* granularity << 56 | bucket bits (cell order in a value) */
    size_t idx;         /* the cell */
} drain_entry;

static int entry_less(const drain_entry *x, const drain_entry *y) {
    if (x->rank != y->rank) return x->rank < y->rank;
    return x->slot != y->slot ? x->slot < y->slot : x->suffix < y->suffix;
}

static void swap_entries(drain_entry *x, drain_entry *y) {
    drain_entry t = *x;
    *x = *y;
    *y = t;
}

/* Sorts e[0..n) by (rank, suffix): a quicksort with the comparison inlined
 * (qsort's indirect calls were 6% of counting on a 30-day log), median of
 * three pivots, insertion sort for short runs, recursion on the smaller
 * side only. */
static void sort_entries(drain_entry *e, size_t n) {
    while (n > 16) {
        size_t mid = n / 2;
        if (entry_less(&e[mid], &e[0])) swap_entries(&e[mid], &e[0]);
        if (entry_less(&e[n - 1], &e[0])) swap_entries(&e[n - 1], &e[0]);
        if (entry_less(&e[n - 1], &e[mid])) swap_entries(&e[n - 1], &e[mid]);
        drain_entry pivot = e[mid];
        size_t i = 0, j = n - 1;
        for (;;) {
            while (entry_less(&e[i], &pivot)) i++;
            while (entry_less(&pivot, &e[j])) j--;
            if (i >= j) break;
            swap_entries(&e[i++], &e[j--]);
        }
        size_t left = j + 1; /* e[0..left) <= pivot <= e[left..n) */
        if (left < n - left) {
            sort_entries(e, left);
            e += left;
            n -= left;
        } else {
            sort_entries(e + left, n - left);
            n = left;
        }
    }
    for (size_t i = 1; i < n; i++) {
        drain_entry x = e[i];
        size_t j = i;
        for (; j > 0 && entry_less(&x, &e[j - 1]); j--) e[j] = e[j - 1];
        e[j] = x;
    }
}

static int all_zero(const int64_t *vec, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (vec[i]) return 0;
    return 1;
}

/* ---- drain sort ------------------------------------------------------------
 * A batch drains ~a million cells, and the quicksort above (three words
 * compared per step) was 6% of a 30-day backfill. Usually the whole sort
 * key fits in 64 bits: prefix rank, item rank, slot, granularity and bucket
 * each need only the bits of their range in this batch. Then the cells are
 * sorted by that one word with an LSD radix sort (11-bit digits, a few
 * linear passes); else by sort_entries. Both give the same order. */

typedef struct packed_entry {
    uint64_t key;
    size_t idx;         /* what the key sorts: an entry's index, or a cell's address */
} packed_entry;

/* Shifts and masks that are defined for every width 0..64. */
static uint64_t shl(uint64_t v, unsigned n) { return n >= 64 ? 0 : v << n; }
static uint64_t shr(uint64_t v, unsigned n) { return n >= 64 ? 0 : v >> n; }
static uint64_t field(uint64_t k, unsigned shift, unsigned width) {
    return width >= 64 ? shr(k, shift) : shr(k, shift) & ((1ULL << width) - 1);
}

/* Bits needed for the values 0..max. */
static unsigned bits_for(uint64_t max) { return max ? 64u - (unsigned)__builtin_clzll(max) : 0; }

#define RADIX_BITS 11
#define RADIX_SIZE (1u << RADIX_BITS)

/* Sorts p[0..n) by key (the low `bits` bits), using tmp (n entries). */
static void radix_sort(packed_entry *p, packed_entry *tmp, size_t n, unsigned bits) {
    for (unsigned shift = 0; shift < bits; shift += RADIX_BITS) {
        size_t count[RADIX_SIZE] = {0};
        for (size_t i = 0; i < n; i++) count[(p[i].key >> shift) & (RADIX_SIZE - 1)]++;
        size_t sum = 0;
        for (size_t d = 0; d < RADIX_SIZE; d++) {
            size_t k = count[d];
            count[d] = sum;
            sum += k;
        }
        for (size_t i = 0; i < n; i++) tmp[count[(p[i].key >> shift) & (RADIX_SIZE - 1)]++] = p[i];
        packed_entry *t = p;
        p = tmp;
        tmp = t;
    }
    if (((bits + RADIX_BITS - 1) / RADIX_BITS) % 2) memcpy(tmp, p, n * sizeof *p); /* back into the caller's p */
}

/* The field widths of a packed sort key: prefix rank | item rank | slot -
 * min | granularity | bucket - min of its granularity. */
typedef struct key_layout {
    unsigned item_shift, slot_shift, gran_shift, total;
    uint64_t min_slot, min_bucket[256], max_bucket[256];
    uint64_t max_prank, max_irank, max_slot;
} key_layout;

static uint64_t entry_bucket56(const drain_entry *e) { return e->suffix & 0x00ffffffffffffffULL; }

/* Sorts e[0..n) by (rank, slot, suffix). */
static void sort_drain(drain_entry *e, size_t n) {
    key_layout L;
    memset(&L, 0, sizeof L);
    L.min_slot = UINT64_MAX;
    for (size_t g = 0; g < 256; g++) L.min_bucket[g] = UINT64_MAX;
    unsigned max_gran = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned g = (unsigned)(e[i].suffix >> 56);
        uint64_t b = entry_bucket56(&e[i]);
        if (e[i].rank >> 32 > L.max_prank) L.max_prank = e[i].rank >> 32;
        if ((uint32_t)e[i].rank > L.max_irank) L.max_irank = (uint32_t)e[i].rank;
        if (e[i].slot < L.min_slot) L.min_slot = e[i].slot;
        if (e[i].slot > L.max_slot) L.max_slot = e[i].slot;
        if (b < L.min_bucket[g]) L.min_bucket[g] = b;
        if (b > L.max_bucket[g]) L.max_bucket[g] = b;
        if (g > max_gran) max_gran = g;
    }
    unsigned bbits = 0;
    for (unsigned g = 0; g <= max_gran; g++)
        if (L.min_bucket[g] != UINT64_MAX && bits_for(L.max_bucket[g] - L.min_bucket[g]) > bbits)
            bbits = bits_for(L.max_bucket[g] - L.min_bucket[g]);
    L.gran_shift = bbits;
    L.slot_shift = L.gran_shift + bits_for(max_gran);
    L.item_shift = L.slot_shift + bits_for(n ? L.max_slot - L.min_slot : 0);
    L.total = L.item_shift + bits_for(L.max_irank) + bits_for(L.max_prank);
    if (n < 64 || L.total > 64) {
        sort_entries(e, n);
        return;
    }
    packed_entry *p = malloc(2 * n * sizeof *p);
    if (!p) abort();
    unsigned ibits = bits_for(L.max_irank), pshift = L.item_shift + ibits;
    for (size_t i = 0; i < n; i++) {
        uint64_t g = e[i].suffix >> 56;
        p[i].key = shl(e[i].rank >> 32, pshift) | shl((uint32_t)e[i].rank, L.item_shift) |
                   shl(e[i].slot - L.min_slot, L.slot_shift) | shl(g, L.gran_shift) |
                   (entry_bucket56(&e[i]) - L.min_bucket[g]);
        p[i].idx = e[i].idx;
    }
    radix_sort(p, p + n, n, L.total);
    /* the entries back from their keys, in order (no gather from e) */
    for (size_t i = 0; i < n; i++) {
        uint64_t k = p[i].key, g = field(k, L.gran_shift, L.slot_shift - L.gran_shift);
        e[i].rank = shr(k, pshift) << 32 | field(k, L.item_shift, ibits);
        e[i].slot = field(k, L.slot_shift, L.item_shift - L.slot_shift) + L.min_slot;
        e[i].suffix = g << 56 | (field(k, 0, L.gran_shift) + L.min_bucket[g]);
        e[i].idx = p[i].idx;
    }
    free(p);
}

/* ---- writing a table ---------------------------------------------------------
 * A drain entry is one cell to write: a cell of the table, or (derived
 * granularities) a copy of a source cell placed at its coarser bucket.
 * Flags in the entry's idx say which: ENTRY_SOURCE, a source cell (written
 * at granularity 0; its counters also go into the inline cell, below);
 * ENTRY_DERIVED, a copy. After the sort, entries naming the same cell are
 * adjacent and are summed into one.
 *
 * The inline granularity: when the coarsest granularity (the one whose
 * bucket is the stored key's slot, cells.h) is derived, its one cell of a
 * stored key is the sum of that key's source cells, which the sort has
 * already made consecutive: it is summed on the way, with no entries of
 * its own (the common 1h/1d config derives its days this way). Other
 * derived granularities (e.g. 5h under 1d, whose buckets may straddle
 * slots) get a copy entry per source cell. */
#define ENTRY_SOURCE ((size_t)1 << 62)
#define ENTRY_DERIVED ((size_t)1 << 63)
#define ENTRY_IDX(i) ((i) & ~(ENTRY_SOURCE | ENTRY_DERIVED))

static void put_entry(drain_entry *e, const iqp_store_batch *b, uint64_t rank, int gran,
                      int64_t bucket, size_t idx) {
    e->rank = rank;
    e->suffix = (uint64_t)gran << 56 | ((uint64_t)bucket & 0x00ffffffffffffffULL);
    e->slot = (uint64_t)iqp_store_batch_slot(b, gran, bucket);
    e->idx = idx;
}

/* The granularity derived inline, or -1. */
static int inline_gran(const iqp_derive *d) {
    if (d->n_grans < 2) return -1;
    int s = (int)d->n_grans - 1;
    return d->mask >> s & 1 ? s : -1;
}

/* Fills e with the entries of t's non-zero cells (unsorted); returns how
 * many. e has room for count * (1 + derived granularities not inline). */
static size_t table_entries(const iqp_combiner *c, const int_table *t, const iqp_store_batch *b,
                            const uint32_t *prank, const uint32_t *irank, drain_entry *e) {
    const iqp_derive *d = &c->derive;
    unsigned copies = d->mask & ~(inline_gran(d) >= 0 ? 1u << inline_gran(d) : 0u);
    size_t n = 0;
    for (size_t idx = 0; idx < t->count; idx++) { /* insertion order: sequential */
        const uint64_t *name = cell_names(t, idx);
        if (all_zero(cell_vals(t, idx), t->width)) continue;
        uint32_t item = (uint32_t)name[0];
        uint64_t rank = (uint64_t)prank[name[0] >> 32] << 32 | (item == NO_ITEM ? 0 : irank[item]);
        int gran = (int)(name[1] & 0xff);
        int64_t bucket = (int64_t)name[1] >> 8;
        if (gran != SOURCE_GRAN) {
            put_entry(&e[n++], b, rank, gran, bucket, idx);
            continue;
        }
        put_entry(&e[n++], b, rank, 0, bucket, idx | ENTRY_SOURCE);
        for (int g = 1; g < (int)d->n_grans; g++)
            if (copies >> g & 1)
                put_entry(&e[n++], b, rank, g, floor_div(bucket, d->ratio[g]), idx | ENTRY_DERIVED);
    }
    return n;
}

/* Writes the cells of one table to a batch, one stored key at a time. */
typedef struct emitter {
    iqp_store_batch *b;
    iqp_cf cf;
    iqp_combiner_cell_fn on_cell;
    void *ud;
    cell **pkeys, **ikeys;  /* interned strings by rank */
    iqp_keybuf key;
    size_t body;            /* bytes of key before its bucket suffix */
    int opened;             /* this stored key's merge is open */
    size_t width, written;
} emitter;

/* Writes one cell of the stored key being written (unless all zero). */
static void emit_cell(emitter *m, uint64_t rank, int gran, int64_t bucket, const int64_t *vals) {
    if (all_zero(vals, m->width)) return;
    if (m->opened) {
        iqp_store_batch_merge_more(m->b, gran, bucket, vals, m->width);
    } else {
        const cell *p = m->pkeys[rank >> 32];
        m->key.len = 0;
        iqp_keybuf_append(&m->key, p->key, p->klen);
        if (m->cf == IQP_CF_COUNTS) { /* the item's entity */
            const cell *it = m->ikeys[(uint32_t)rank];
            iqp_keybuf_append(&m->key, it->key, it->klen);
        }
        m->body = m->key.len;
        iqp_store_batch_merge_cell(m->b, m->cf, m->key.buf, m->body, gran, bucket, vals, m->width);
        m->opened = 1;
    }
    if (m->on_cell) {
        m->key.len = m->body;
        iqp_cells_append_bucket(&m->key, gran, bucket);
        m->on_cell(m->ud, m->b, m->cf, m->key.buf, m->key.len);
    }
    m->written++;
}

static void add_vec(int64_t *dst, const int64_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

/* Writes the stored key of e[0..n) (one rank and slot; sorted): each run
 * of entries naming one cell summed into one, and the inline cell last. */
static void emit_key(emitter *m, const int_table *t, const drain_entry *e, size_t n, int inl) {
    int64_t sum[IQP_MAX_COUNTERS], coarse[IQP_MAX_COUNTERS] = {0};
    int have_coarse = 0;
    m->opened = 0;
    for (size_t j = 0, k; j < n; j = k) {
        for (k = j + 1; k < n && e[k].suffix == e[j].suffix; k++) {}
        int gran = (int)(e[j].suffix >> 56);
        int64_t bucket = (int64_t)(e[j].suffix << 8) >> 8; /* sign-extend 56 bits */
        const int64_t *vals = cell_vals(t, ENTRY_IDX(e[j].idx));
        if (gran == inl) { /* direct deltas of the inline cell */
            for (size_t x = j; x < k; x++) add_vec(coarse, cell_vals(t, ENTRY_IDX(e[x].idx)), m->width);
            have_coarse = 1;
            continue;
        }
        if (k > j + 1 || e[j].idx & ENTRY_DERIVED) {
            memset(sum, 0, m->width * sizeof *sum);
            for (size_t x = j; x < k; x++) add_vec(sum, cell_vals(t, ENTRY_IDX(e[x].idx)), m->width);
            vals = sum;
        }
        if (inl >= 0)
            for (size_t x = j; x < k; x++)
                if (e[x].idx & ENTRY_SOURCE) {
                    add_vec(coarse, cell_vals(t, ENTRY_IDX(e[x].idx)), m->width);
                    have_coarse = 1;
                }
        emit_cell(m, e[j].rank, gran, bucket, vals);
    }
    if (have_coarse) emit_cell(m, e[0].rank, inl, (int64_t)e[0].slot, coarse);
}

/* Writes one counter table's non-zero cells, in store key order, as merges
 * into cf, telling on_cell (when set) about each; returns the cells. The
 * cells of one stored key (same ranks and slot) are consecutive: the first
 * opens its merge (iqp_store_batch_merge_cell), the rest join it
 * (iqp_store_batch_merge_more) without a key being built or compared. */
static size_t drain_counters(const iqp_combiner *c, const int_table *t, iqp_cf cf, iqp_store_batch *b,
                             iqp_combiner_cell_fn on_cell, void *ud) {
    emitter m = {.b = b, .cf = cf, .on_cell = on_cell, .ud = ud, .width = t->width};
    uint32_t *prank = rank_interned(&c->prefixes, &m.pkeys), *irank = rank_interned(&c->items, &m.ikeys);
    int inl = inline_gran(&c->derive);
    size_t per_cell = 1 + (size_t)__builtin_popcount(c->derive.mask) - (inl >= 0);
    drain_entry *e = malloc((t->count ? t->count : 1) * per_cell * sizeof *e);
    if (!e) abort();
    size_t n = table_entries(c, t, b, prank, irank, e);
    sort_drain(e, n);
    iqp_keybuf_init(&m.key);
    for (size_t i = 0, end = 0; i < n; i = end) {
        do { /* one stored key's entries */
            /* cells are visited in key order, i.e. at random in memory: ask
             * for the counters a few cells ahead (a miss per cell was 8% of
             * the writer) */
            if (end + 16 < n) __builtin_prefetch(cell_vals(t, ENTRY_IDX(e[end + 16].idx)));
            end++;
        } while (end < n && e[end].rank == e[i].rank && e[end].slot == e[i].slot);
        emit_key(&m, t, e + i, end - i, inl);
    }
    iqp_keybuf_free(&m.key);
    free(e);
    free(prank);
    free(irank);
    free(m.pkeys);
    free(m.ikeys);
    return m.written;
}

void iqp_combiner_clear(iqp_combiner *c) {
    int_table_reset(&c->counts);
    int_table_reset(&c->contexts);
    table_reset(&c->markers);
    table_reset(&c->prefixes.table);
    table_reset(&c->items.table);
    arena_rewind(c);
}

size_t iqp_combiner_drain(iqp_combiner *c, iqp_store_batch *b) {
    return iqp_combiner_drain_with(c, b, NULL, NULL);
}

/* The marker cells in key order (caller frees the array). A marker key is
 * a kind letter and a 128-bit digest (cells.h), so its first 44 bits, read
 * big-endian, nearly always decide: the cells are radix-sorted by them
 * (four passes), carrying the cell pointer, and a run of equal prefixes
 * (about one in a million pairs of a batch) by the whole key (qsort with
 * memcmp through the cell pointers was ~6% of the writer). */
#define MARKER_SORT_BITS 44

static cell **sorted_markers(const cell_table *t) {
    size_t cap = t->count ? t->count : 1, n = 0;
    cell **out = malloc(cap * sizeof *out);
    packed_entry *p = malloc(cap * sizeof *p), *tmp = malloc(cap * sizeof *tmp);
    if (!out || !p || !tmp) abort();
    for (size_t i = 0; i <= t->mask; i++) {
        cell *c = t->slots[i].c;
        if (!c) continue;
        uint64_t k = 0;
        for (size_t j = 0; j < 8; j++) k = k << 8 | (j < c->klen ? c->key[j] : 0);
        p[n++] = (packed_entry){k >> (64 - MARKER_SORT_BITS), (size_t)(uintptr_t)c};
    }
    radix_sort(p, tmp, n, MARKER_SORT_BITS);
    for (size_t i = 0; i < n; i++) out[i] = (cell *)(uintptr_t)p[i].idx;
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && p[j].key == p[i].key; j++) {}
        if (j - i > 1) qsort(out + i, j - i, sizeof *out, cmp_cells);
    }
    free(p);
    free(tmp);
    return out;
}

size_t iqp_combiner_write(const iqp_combiner *c, iqp_store_batch *b, iqp_combiner_cell_fn on_cell,
                          void *ud) {
    size_t written = drain_counters(c, &c->counts, IQP_CF_COUNTS, b, on_cell, ud);
    written += drain_counters(c, &c->contexts, IQP_CF_CONTEXTS, b, on_cell, ud);
    cell **markers = sorted_markers(&c->markers);
    for (size_t i = 0; i < c->markers.count; i++) {
        /* in key order the cells are at random in the arena: fetch ahead */
        if (i + 8 < c->markers.count) {
            __builtin_prefetch(markers[i + 8]);
            __builtin_prefetch((const char *)markers[i + 8] + 48); /* a cell may span two lines */
        }
        iqp_marker m = {markers[i]->vec[0], markers[i]->vec[1]};
        iqp_store_batch_put_marker(b, markers[i]->key, IQP_MARKER_KEY_LEN, &m);
    }
    free(markers);
    return written;
}

size_t iqp_combiner_drain_with(iqp_combiner *c, iqp_store_batch *b, iqp_combiner_cell_fn on_cell,
                               void *ud) {
    size_t written = iqp_combiner_write(c, b, on_cell, ud);
    iqp_combiner_clear(c);
    return written;
}

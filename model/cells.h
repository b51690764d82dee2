/* cells.h -- how counter cells are named: the store's key encoding.
 *
 * Owns: the byte layout of every key in the counts, context and dedup
 * column families. Writers (the aggregator) and readers (lookup, publisher,
 * refresher) both build keys only through these functions.
 *
 *   context prefix  = u8 len, feature name,
 *                     then per segment of the feature's context, in
 *                     segment (declaration) order: u16 BE len, normalized
 *                     value (the defaults: query, country, gender)
 *   count cell      = context prefix, u16 BE len, item id, u8 granularity
 *                     index, u64 BE bucket
 *   context cell    = context prefix, u8 granularity index, u64 BE bucket
 *   dedup marker    = u8 kind ('E' event id, 'A' action, 'G' engaged),
 *                     XXH3-128 of the length-prefixed fields  (CF "dedup");
 *                     an action marker's fields are the request id, item,
 *                     action and every segment's value, in segment order
 *
 * Cells and stored keys (layout 3): a cell is one (granularity, bucket) of
 * a (context, entity); the counts and contexts column families store one
 * key per slot, where a slot is a bucket of the coarsest granularity S
 * (the largest in the config, 1d by default): the cells of every
 * granularity whose bucket starts inside it are packed into its one value
 * (store/counters.h). The stored key of a slot is the cell key of its
 * coarsest bucket:
 *   count key       = context prefix, u16 BE len, item id,
 *                     u8 (n_grans - 1), u64 BE slot           (CF "counts")
 *   context key     = context prefix, u8 (n_grans - 1), u64 BE slot
 *                                                             (CF "contexts")
 * So cell keys and stored keys both end in a 9-byte suffix
 * (IQP_BUCKET_SUFFIX_LEN), and the (context, entity) part before it is
 * the same: code that names a dirty (context, entity) strips 9 bytes from
 * either. One day of one (context, item) is one key, whatever the number
 * of hourly and daily cells it has: one RocksDB merge per day and item.
 *
 * Context-major: one context's entities are adjacent, and for one entity
 * the slots are adjacent and ascending, so a window is one short range
 * scan. Raw strings, not hashes, name contexts and items, so counts are
 * exact; RocksDB's prefix compression takes the repetition. Dedup markers
 * are hashed: 128 bits make a false "duplicate" negligible.
 *
 * May not touch: the store or counters; it only formats bytes.
 * model/ is the ground floor: this file includes nothing of the project
 * but model/ itself, so every module (store/ and schemas/ too) may use it.
 */
#ifndef IQP_CELLS_H
#define IQP_CELLS_H

#include <stddef.h>
#include <stdint.h>
#include "model/buf.h"
#include "model/config.h"
#include "model/segments.h"

#define IQP_KEY_MAX (1 + IQP_NAME_MAX + IQP_MAX_SEGMENTS * (2 + 65535) + 2 + 65535 + 1 + 8)
#define IQP_MARKER_KEY_LEN 17

/* Keys are built in the one growable byte buffer (buf.h). iqp_keybuf and
 * iqp_keybuf_* are its names where keys are built; they add nothing. */
typedef iqp_buf iqp_keybuf;

static inline void iqp_keybuf_init(iqp_keybuf *kb) { iqp_buf_init(kb); }
static inline void iqp_keybuf_free(iqp_keybuf *kb) { iqp_buf_free(kb); }
static inline void iqp_keybuf_truncate(iqp_keybuf *kb, size_t len) { iqp_buf_truncate(kb, len); }
/* Appends len bytes. */
static inline void iqp_keybuf_append(iqp_keybuf *kb, const void *bytes, size_t len) {
    iqp_buf_append(kb, bytes, len);
}
/* Replaces kb's contents with src's. */
static inline void iqp_keybuf_copy(iqp_keybuf *kb, const iqp_keybuf *src) { iqp_buf_copy(kb, src); }

/* Replaces kb's contents with the context prefix of feature f for ctx. */
void iqp_cells_context_prefix(iqp_keybuf *kb, const iqp_feature_spec *f, const iqp_context *ctx);

/* Appends the entity part (u16 len + id) of a count key. */
void iqp_cells_append_entity(iqp_keybuf *kb, const char *item, size_t len);

/* Appends the u8 granularity + u64 bucket suffix. */
void iqp_cells_append_bucket(iqp_keybuf *kb, int gran_index, int64_t bucket);

/* Length of the (gran, bucket) suffix every count and context key ends with. */
#define IQP_BUCKET_SUFFIX_LEN 9

/* Reads the granularity index and bucket from a key's last 9 bytes;
 * returns -1 when the key is too short. */
int iqp_cells_key_bucket(const unsigned char *key, size_t len, int *gran_index, int64_t *bucket);

/* The slot of bucket `bucket` of granularity gran_index: the bucket of the
 * coarsest granularity holding its start (floor(start / S)). A
 * granularity index the config lacks is its own slot. */
int64_t iqp_cells_slot(const iqp_config *cfg, int gran_index, int64_t bucket);

/* Appends the stored-key suffix of slot: u8 (n_grans - 1), u64 BE slot. */
void iqp_cells_append_slot(iqp_keybuf *kb, const iqp_config *cfg, int64_t slot);

/* A context prefix, or a context prefix plus entity, parsed back. The
 * strings point into the key. */
typedef struct iqp_parsed_key {
    size_t feature;        /* index into cfg->features */
    iqp_context ctx;       /* the segments the feature has; the others NULL */
    size_t prefix_len;     /* bytes of the context prefix */
    const char *item;      /* NULL for a context prefix */
    size_t item_len;
} iqp_parsed_key;

/* Parses key (without a bucket suffix); 0, or -1 when it is not a context
 * prefix or context+entity key of a feature of cfg. */
int iqp_cells_parse_key(const iqp_config *cfg, const unsigned char *key, size_t len,
                        iqp_parsed_key *out);

/* Dedup marker keys (out: IQP_MARKER_KEY_LEN bytes). */
void iqp_cells_event_marker(unsigned char *out, const char *event_id, size_t len);
void iqp_cells_action_marker(unsigned char *out, char kind, const char *request_id, size_t rlen,
                             const char *item, size_t ilen, int action, size_t n_segments,
                             const iqp_context *ctx);

#endif

/* segments.h -- a context's segment values: normalizing them and holding them.
 *
 * Owns: turning the raw value of a segment's event field (or of a lookup
 * argument) into the normalized value that is a key part, by the
 * segment's normalizer (config.h iqp_segment_spec), and iqp_context, the
 * normalized values of one event or lookup, one per declared segment.
 * Every path (stream, backfill, lookup, libiqp, export) normalizes through
 * these functions, so a value means the same everywhere.
 *
 *   query    the query text rules (normalize.h); the only normalizer that
 *            allocates, and the only one that can refuse a value (bad
 *            UTF-8, empty)
 *   country  ISO 3166-1 alpha-2, upper case, else "ZZ" (normalize.h)
 *   gender   female | male | unknown (normalize.h)
 *   enum     trimmed, ASCII case-insensitive match of one of the declared
 *            values, written as declared; anything else (and a missing
 *            value) is the fallback
 *   bucket   an integer (a JSON integer, or a string of one) falls in the
 *            bucket of the last bound at or below it: "<b0" below the
 *            first bound, "b_i-b_j" (b_j = next bound - 1) between, "b_n+"
 *            from the last bound on; anything else is the fallback
 *
 * May not touch: anything but its arguments.
 * model/ is the ground floor: this file includes nothing of the project
 * but model/ itself, so every module (store/ and schemas/ too) may use it.
 */
#ifndef IQP_SEGMENTS_H
#define IQP_SEGMENTS_H

#include <stddef.h>
#include "model/config.h"

/* One normalized value; s is NULL when the context lacks the segment. */
typedef struct iqp_segval {
    const char *s;
    size_t len;
} iqp_segval;

/* A normalized context: v[i] is the value of cfg->segments[i]. The strings
 * are borrowed (from an event, a key, a lookup's own buffers). */
typedef struct iqp_context {
    iqp_segval v[IQP_MAX_SEGMENTS];
} iqp_context;

/* Normalizes raw (NULL: the field is missing or null) by a segment whose
 * normalizer is not query, into out (IQP_SEGMENT_VALUE_MAX bytes, NUL-
 * terminated); returns the length. */
size_t iqp_segment_normalize(const iqp_segment_spec *sg, const char *raw, size_t len, char *out);

/* A context built from raw values by segment name (a lookup's arguments),
 * with the storage its strings point into. */
typedef struct iqp_context_buf {
    iqp_context ctx;
    char text[IQP_MAX_SEGMENTS][IQP_SEGMENT_VALUE_MAX];
    char *owned[IQP_MAX_SEGMENTS];  /* normalized query text, malloc'd */
} iqp_context_buf;

/* Normalizes n raw values by segment name into out: names[i] is a
 * segment of cfg and values[i] its raw value (NULL entries are skipped;
 * a later pair of the same name wins). query, when not NULL, is the raw
 * value of every query-text segment. Segments not given stay NULL in
 * out->ctx. 0; or -1 with a message in err (an unknown segment name, a
 * query that is not valid UTF-8 or empty after normalization), out then
 * holding nothing to free. Free with iqp_context_buf_free. */
int iqp_context_build(const iqp_config *cfg, const char *query, const char *const *names,
                      const char *const *values, size_t n, iqp_context_buf *out, char *err,
                      size_t errlen);
void iqp_context_buf_free(iqp_context_buf *b);

/* The bit set (bit i: segment i) of the segments ctx has a value for. */
unsigned iqp_context_mask(const iqp_config *cfg, const iqp_context *ctx);

#endif

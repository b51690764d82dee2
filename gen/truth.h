/* truth.h -- iqp gen's engagement truth: the planted propensity and the
 * cells it was tried on.
 *
 * Owns: propensity(), the engagement probability of a (query, item,
 * country, gender) cell as a pure hash of the normalized values and the
 * seed (gen.h, "Engagement"), and the truth cell set: one open-addressed
 * hash entry per shown cell with its exact impression and engagement
 * counts, and its --truth output (one JSON line per cell, sorted by key).
 *
 * May not touch: the rng (the propensity draws nothing: gen.c flips the
 * coin), the event lines, the file it writes to beyond writing and
 * closing it.
 */
#ifndef IQP_GEN_TRUTH_H
#define IQP_GEN_TRUTH_H

#include <stddef.h>
#include <stdint.h>

#include "gen/output.h"

/* The planted engagement probability of a cell, in (0, 0.95]; country and
 * gender index COUNTRY_NORM and GENDER_NORM (traffic.h). */
double propensity(uint64_t seed, const char *qnorm, uint32_t item, int country, int gender);

/* ---- Truth: shown cells with their impression and engagement counts ---------- */

typedef struct cell { uint64_t key; uint32_t shown, engaged; } cell;
typedef struct cellset { cell *v; size_t n, cap; } cellset;

/* The key of a cell: query rank and item below 2^24 (IQP_GEN_MAX_KEYSPACE),
 * country below 64, gender below 4, device below 8 (0 without
 * --devices); never 0. */
uint64_t cell_key(uint32_t q, uint32_t item, int country, int gender, int device);

/* The cell of key, added with zero counts when new; NULL out of memory. */
cell *cellset_get(cellset *s, uint64_t key);

/* Writes the cells of s (with their "device" when devices is set), sorted by key (s is left sorted, no longer a hash
 * set), into the opened w and closes it: 0, or -1 (w->failed says why when
 * it can). *n: the number of cells. */
int truth_write(cellset *s, gen_out *w, uint64_t seed, int devices, size_t *n);

#endif

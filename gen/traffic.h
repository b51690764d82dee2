/* traffic.h -- iqp gen's traffic model: what people search, who they are,
 * and what they are shown.
 *
 * Owns: the query vocabulary (query text of a Zipf rank, with the
 * non-ASCII and non-normalized specials and their normalized forms), the
 * spelling variants that normalize to the same query, the weighted user
 * values (country and gender, with junk values, and their normalized
 * index), and the items an impression shows (the query's own pool, the
 * global popularity, the planted duplicate). gen.h, "The model", states
 * the distributions.
 *
 * May not touch: the engagement model (truth.h), the event lines
 * (event.h), the output; every random choice comes from the rng it is
 * handed, in the order the functions below draw it.
 */
#ifndef IQP_GEN_TRAFFIC_H
#define IQP_GEN_TRAFFIC_H

#include <stddef.h>
#include <stdint.h>

#include "gen/rng.h"

typedef struct gen gen;

/* ---- Queries -------------------------------------------------------------- */

#define QUERY_TEXT_MAX 96

/* The canonical text of query rank k into buf; returns its normalized form
 * (buf itself for the generated ASCII phrases, already normalized). */
const char *query_text(uint32_t k, char *buf, size_t cap);

#define VARIANT_MAX (QUERY_TEXT_MAX * 4 + 64)

/* A spelling of text that normalizes to the same query; into out
 * (VARIANT_MAX bytes). */
void query_variant(const char *text, rng *r, char *out);

/* ---- Users ---------------------------------------------------------------- */

/* The normalized values, indexed by user_value.norm. */
extern const char *const COUNTRY_NORM[8];
extern const char *const GENDER_NORM[3];
extern const char *const DEVICE_NORM[4];

typedef struct user_value { const char *raw; int norm; int weight; } user_value;

/* The values as written (raw NULL is written as JSON null), weights per
 * mille; the sizes are checked against the definitions. */
extern const user_value COUNTRIES[12];
extern const user_value GENDERS[6];
extern const user_value DEVICES[8];        /* drawn only with --devices */

/* An index into v[0..n), by weight. */
size_t draw_weighted(const user_value *v, size_t n, rng *r);

/* ---- Items ---------------------------------------------------------------- */

#define POOL_SIZE 64                    /* items of a query's own pool */

/* g's shown (distinct) and listed items of the current impression, for
 * query g->q. */
void pick_items(gen *g);

#endif

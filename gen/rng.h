/* rng.h -- iqp gen's randomness: one xoshiro256** stream and Zipf draws.
 *
 * Owns: the PRNG (xoshiro256**, seeded through splitmix64) and the
 * uniform, range, coin and Zipf (inverse CDF) draws built on it. Every
 * random choice of `iqp gen` goes through one rng, drawn in a fixed order,
 * which is what makes the output a pure function of the flags (gen.h,
 * "The model"). The draws are inline: the generator makes several per
 * output line.
 *
 * May not touch: anything but the rng and zipf values it is handed; no
 * I/O, no global state.
 */
#ifndef IQP_GEN_RNG_H
#define IQP_GEN_RNG_H

#include <stddef.h>
#include <stdint.h>

/* ---- PRNG: splitmix64 seeding xoshiro256** --------------------------------- */

typedef struct rng { uint64_t s[4]; } rng;

void rng_seed(rng *r, uint64_t seed);

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(rng *r) {
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1). */
static inline double rng_unit(rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

__extension__ typedef unsigned __int128 u128;

/* Uniform in [0, n), n > 0 (multiply-shift; every n here is below 2^32, so
 * the bias is below 2^-32). */
static inline uint64_t rng_below(rng *r, uint64_t n) {
    return (uint64_t)(((u128)rng_next(r) * n) >> 64);
}

/* Uniform in [lo, hi], lo <= hi. */
static inline int64_t rng_range(rng *r, int64_t lo, int64_t hi) {
    return lo + (int64_t)rng_below(r, (uint64_t)(hi - lo) + 1);
}

static inline int rng_chance(rng *r, double p) { return p > 0 && rng_unit(r) < p; }

/* ---- Zipf by inverse CDF ----------------------------------------------------- */

typedef struct zipf { double *cdf; size_t n; } zipf;

/* P(k) proportional to (k+1)^-s over [0, n), n > 0: 0, or -1 out of memory.
 * The caller frees z->cdf. */
int zipf_init(zipf *z, size_t n, double s);

/* A rank in [0, n), one rng draw. */
size_t zipf_draw(const zipf *z, rng *r);

#endif

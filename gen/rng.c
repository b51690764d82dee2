/* rng.c -- seeding and Zipf draws for iqp gen (rng.h). */
#include <math.h>
#include <stdlib.h>

#include "gen/rng.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void rng_seed(rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

int zipf_init(zipf *z, size_t n, double s) {
    z->n = n;
    z->cdf = malloc(n * sizeof(double));
    if (!z->cdf) return -1;
    double sum = 0;
    for (size_t k = 0; k < n; k++) z->cdf[k] = (sum += pow((double)(k + 1), -s));
    for (size_t k = 0; k < n; k++) z->cdf[k] /= sum;
    return 0;
}

size_t zipf_draw(const zipf *z, rng *r) {
    double u = rng_unit(r);
    size_t lo = 0, hi = z->n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (z->cdf[mid] > u) hi = mid; else lo = mid + 1;
    }
    return lo;
}

/* truth.c -- the planted propensity and the truth cell set of iqp gen
 * (truth.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "gen/traffic.h"
#include "gen/truth.h"

/* ---- The planted propensity ------------------------------------------------- */

static double hash_unit(uint64_t h) { return (double)(h >> 11) * 0x1.0p-53; }

double propensity(uint64_t seed, const char *qnorm, uint32_t item, int country, int gender) {
    char buf[QUERY_TEXT_MAX + 32];
    int n = snprintf(buf, sizeof buf, "%s\x1fi%" PRIu32, qnorm, item);
    uint64_t h1 = XXH3_64bits_withSeed(buf, (size_t)n, seed);
    const char *c = COUNTRY_NORM[country], *g = GENDER_NORM[gender];
    uint64_t h2 = XXH3_64bits_withSeed(c, strlen(c), h1 ^ 0xC0FFEEULL);
    uint64_t h3 = XXH3_64bits_withSeed(g, strlen(g), h1 ^ 0x6E0DE5ULL);
    double u1 = hash_unit(h1), base = 0.01 + 0.3 * u1 * u1 * u1;
    double p = base * (0.5 + hash_unit(h2)) * (0.7 + 0.6 * hash_unit(h3));
    return p > 0.95 ? 0.95 : p;
}

/* ---- Truth: shown cells with their impression and engagement counts ---------- */

#define CELL_USED (1ULL << 63)

uint64_t cell_key(uint32_t q, uint32_t item, int country, int gender, int device) {
    return CELL_USED | (uint64_t)device << 56 | (uint64_t)q << 32 | (uint64_t)item << 8 |
           (uint64_t)country << 2 | (uint64_t)gender;
}

static int cellset_grow(cellset *s) {
    size_t cap = s->cap ? s->cap * 2 : 1 << 14;
    cell *v = calloc(cap, sizeof *v);
    if (!v) return -1;
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->v[i].key) continue;
        size_t j = XXH3_64bits(&s->v[i].key, 8) & (cap - 1);
        while (v[j].key) j = (j + 1) & (cap - 1);
        v[j] = s->v[i];
    }
    free(s->v);
    s->v = v; s->cap = cap;
    return 0;
}

cell *cellset_get(cellset *s, uint64_t key) {
    if (s->n * 2 >= s->cap && cellset_grow(s)) return NULL;
    size_t j = XXH3_64bits(&key, 8) & (s->cap - 1);
    while (s->v[j].key && s->v[j].key != key) j = (j + 1) & (s->cap - 1);
    if (!s->v[j].key) { s->v[j].key = key; s->n++; }
    return &s->v[j];
}

static int cell_cmp(const void *a, const void *b) {
    uint64_t x = ((const cell *)a)->key, y = ((const cell *)b)->key;
    return x < y ? -1 : x > y;
}

/* ---- Truth file ---------------------------------------------------------------- */

int truth_write(cellset *s, gen_out *w, uint64_t seed, int devices, size_t *n_out) {
    int rc = 0;
    size_t n = 0;
    for (size_t i = 0; i < s->cap; i++)
        if (s->v[i].key) s->v[n++] = s->v[i];
    if (n) qsort(s->v, n, sizeof *s->v, cell_cmp);   /* s->v is NULL when nothing was shown */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char qbuf[QUERY_TEXT_MAX], ibuf[16];
        uint64_t k = s->v[i].key;
        uint32_t q = (uint32_t)((k >> 32) & 0xFFFFFF), item = (uint32_t)((k >> 8) & 0xFFFFFF);
        int c = (int)((k >> 2) & 0x3F), gd = (int)(k & 3);
        const char *qn = query_text(q, qbuf, sizeof qbuf);
        snprintf(ibuf, sizeof ibuf, "i%" PRIu32, item);
        json_t *e = json_pack("{s:s,s:s,s:s,s:s,s:f,s:I,s:I}", "query", qn, "item", ibuf,
                              "country", COUNTRY_NORM[c], "gender", GENDER_NORM[gd],
                              "propensity", propensity(seed, qn, item, c, gd),
                              "impressions", (json_int_t)s->v[i].shown, "engaged",
                              (json_int_t)s->v[i].engaged);
        if (devices) json_object_set_new(e, "device", json_string(DEVICE_NORM[(k >> 56) & 7]));
        char *line = json_line(e);
        rc = line ? gen_out_write(w, line, strlen(line)) : -1;
        if (rc == 0) rc = gen_out_write(w, "\n", 1);
        free(line);
    }
    if (gen_out_close(w)) rc = -1;
    *n_out = n;
    return rc;
}

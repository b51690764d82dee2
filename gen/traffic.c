/* traffic.c -- queries, spelling variants, users and shown items for
 * iqp gen (traffic.h). */
#include <stdio.h>
#include <string.h>

#include <xxhash.h>

#include "gen/gen_internal.h"
#include "gen/traffic.h"

/* ---- Vocabulary: query text from a rank ------------------------------------- */

static const char *const COLORS[] = {"red", "blue", "black", "white", "green", "pink",
                                     "navy", "beige", "yellow", "purple", "grey", "gold"};
static const char *const MODS[] = {"running", "summer", "vintage", "linen", "leather", "wool",
                                   "cotton", "wedding", "kids", "modern", "rustic", "minimalist"};
static const char *const NOUNS[] = {"dress",  "shoes", "jacket",   "sofa",     "lamp",   "rug",
                                    "bag",    "boots", "table",    "chair",    "curtains",
                                    "necklace", "ring", "sweater", "jeans",    "hat",    "scarf",
                                    "mirror", "vase",  "bed",      "desk",     "shelf",  "watch",
                                    "kitchen"};

/* Text as written, and its normalized form (NFKC + case fold). */
static const struct { const char *text, *norm; } SPECIAL_QUERIES[] = {
    {"café au lait", "café au lait"},   {"東京 ラーメン", "東京 ラーメン"},
    {"straße", "strasse"},              {"crème brûlée", "crème brûlée"},
    {"ﬁsh tacos", "fish tacos"},        {"jalapeño salsa", "jalapeño salsa"},
    {"Éclair recipe", "éclair recipe"}, {"smørrebrød", "smørrebrød"},
    {"déjà vu poster", "déjà vu poster"}, {"北京 烤鸭", "北京 烤鸭"},
};

const char *query_text(uint32_t k, char *buf, size_t cap) {
    if (k % 10 == 3 && k / 10 < COUNT_OF(SPECIAL_QUERIES)) {
        snprintf(buf, cap, "%s", SPECIAL_QUERIES[k / 10].text);
        return SPECIAL_QUERIES[k / 10].norm;
    }
    const size_t nc = COUNT_OF(COLORS), nm = COUNT_OF(MODS), nn = COUNT_OF(NOUNS);
    const size_t tiers = nn + nc * nn + nm * nn + nc * nm * nn;
    size_t t = k % tiers, round = k / tiers;
    int len;
    if (t < nn) {
        len = snprintf(buf, cap, "%s", NOUNS[t]);
    } else if ((t -= nn) < nc * nn) {
        len = snprintf(buf, cap, "%s %s", COLORS[t % nc], NOUNS[t / nc]);
    } else if ((t -= nc * nn) < nm * nn) {
        len = snprintf(buf, cap, "%s %s", MODS[t % nm], NOUNS[t / nm]);
    } else {
        t -= nm * nn;
        len = snprintf(buf, cap, "%s %s %s", COLORS[t % nc], MODS[(t / nc) % nm],
                       NOUNS[t / (nc * nm)]);
    }
    if (round) snprintf(buf + len, cap - (size_t)len, " %zu", round + 1);
    return buf;
}

/* ---- Query spelling variants ------------------------------------------------ */

enum { VAR_UPPER = 1, VAR_MIXED = 2, VAR_SPACES = 4, VAR_FULLWIDTH = 8, VAR_IDEO = 16 };

static size_t put_utf8_fw(char *o, unsigned char c) {
    unsigned cp = 0xFF01 + (c - 0x21);  /* full-width form of ASCII 0x21..0x7E */
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

static size_t put_space_run(char *o, rng *r, int ideo) {
    size_t n = 0, run = 1 + (size_t)rng_below(r, 3);
    for (size_t i = 0; i < run; i++) {
        if (ideo && rng_chance(r, 0.5)) { memcpy(o + n, "\xE3\x80\x80", 3); n += 3; }
        else o[n++] = rng_chance(r, 0.5) ? ' ' : '\t';
    }
    return n;
}

static unsigned char recase(unsigned char c, int mode, rng *r) {
    int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!alpha) return c;
    if ((mode & VAR_UPPER) || ((mode & VAR_MIXED) && rng_chance(r, 0.5)))
        return (unsigned char)(c & ~0x20);
    return c;
}

void query_variant(const char *text, rng *r, char *out) {
    static const int modes[] = {VAR_UPPER, VAR_MIXED, VAR_SPACES, VAR_FULLWIDTH, VAR_IDEO};
    int mode = modes[rng_below(r, COUNT_OF(modes))];
    if (rng_chance(r, 0.3)) mode |= modes[rng_below(r, COUNT_OF(modes))];
    int spaces = mode & (VAR_SPACES | VAR_IDEO), all_fw = rng_chance(r, 0.5);
    size_t n = 0;
    if (spaces && rng_chance(r, 0.5)) n += put_space_run(out + n, r, mode & VAR_IDEO);
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        unsigned char c = recase(*p, mode, r);
        int fw_ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (c == ' ' && spaces) n += put_space_run(out + n, r, mode & VAR_IDEO);
        else if (fw_ok && (mode & VAR_FULLWIDTH) && (all_fw || rng_chance(r, 0.5)))
            n += put_utf8_fw(out + n, c);
        else out[n++] = (char)c;
    }
    if (spaces && rng_chance(r, 0.5)) n += put_space_run(out + n, r, mode & VAR_IDEO);
    out[n] = '\0';
    if (strcmp(out, text) == 0) memcpy(out + n, "\t", 2);  /* e.g. case of CJK */
}

/* ---- Users ------------------------------------------------------------------ */

const char *const COUNTRY_NORM[] = {"US", "GB", "DE", "FR", "BR", "IN", "JP", "ZZ"};
const char *const GENDER_NORM[] = {"female", "male", "unknown"};
const char *const DEVICE_NORM[] = {"web", "ios", "android", "unknown"};

const user_value COUNTRIES[] = {
    {"US", 0, 300}, {"IN", 5, 140}, {"DE", 2, 120}, {"FR", 3, 120}, {"GB", 1, 100},
    {"BR", 4, 100}, {"JP", 6, 100}, {"usa", 7, 5},  {"xx", 7, 4},   {"", 7, 4},
    {NULL, 7, 4},   {"de", 2, 3},
};
const user_value GENDERS[] = {
    {"female", 0, 440}, {"male", 1, 440}, {"unknown", 2, 60},
    {"F", 0, 20},       {"Male", 1, 20},  {NULL, 2, 20},
};
const user_value DEVICES[] = {
    {"web", 0, 420}, {"ios", 1, 280}, {"android", 2, 220}, {"IOS", 1, 20},
    {" Android", 2, 20}, {"tv", 3, 15}, {"", 3, 10}, {NULL, 3, 15},
};

size_t draw_weighted(const user_value *v, size_t n, rng *r) {
    int64_t x = (int64_t)rng_below(r, 1000);
    for (size_t i = 0; i < n; i++)
        if ((x -= v[i].weight) < 0) return i;
    return n - 1;
}

/* ---- Items shown ------------------------------------------------------------ */

static uint32_t pick_item(gen *g) {
    uint64_t n = (uint64_t)g->o.items;
    for (int tries = 0; tries < 8; tries++) {
        uint32_t it;
        if (rng_below(&g->r, 4) != 3) {
            uint64_t slot[2] = {g->q, zipf_draw(&g->pz, &g->r)};
            it = (uint32_t)(XXH3_64bits_withSeed(slot, sizeof slot, (uint64_t)g->o.seed) % n);
        } else {
            it = (uint32_t)zipf_draw(&g->iz, &g->r);
        }
        if (!g->mark[it]) return it;
    }
    uint32_t it = (uint32_t)rng_below(&g->r, n);
    while (g->mark[it]) it = (uint32_t)((it + 1) % n);
    return it;
}

void pick_items(gen *g) {
    size_t n = (size_t)g->o.per_impression;
    for (size_t i = 0; i < n; i++) g->mark[g->shown[i] = pick_item(g)] = 1;
    for (size_t i = 0; i < n; i++) g->mark[g->shown[i]] = 0;
    memcpy(g->listed, g->shown, n * sizeof *g->shown);
    g->n_distinct = g->n_listed = n;
    if (rng_chance(&g->r, 0.01)) {      /* one item listed twice */
        size_t at = (size_t)rng_below(&g->r, n + 1);
        uint32_t dup = g->shown[rng_below(&g->r, n)];
        memmove(g->listed + at + 1, g->listed + at, (n - at) * sizeof *g->listed);
        g->listed[at] = dup;
        g->n_listed++;
    }
}

/* gen.c -- `iqp gen`: deterministic synthetic search traffic.
 *
 * Writes impression.v1 / action.v1 events (DESIGN.md, "Events") as JSONL,
 * with the dirt a real log has: redeliveries, repeated actions, spelling
 * variants of queries, junk user values, malformed lines, bounded disorder.
 * The same flags (with an explicit --start) give byte-identical output: all
 * randomness comes from one xoshiro256** stream seeded by --seed, drawn in
 * a fixed order, and the planted model is a pure hash of the normalized
 * values.
 *
 * The model
 * ---------
 * Queries: rank k in [0, --queries) is drawn Zipf(s = 1.1). Its text is
 *   built from k: one to three words ("dress", "red dress", "blue running
 *   shoes"), distinct per k, with a number appended past the vocabulary.
 *   Ranks 3, 13, 23, ... 93 are non-ASCII or non-normalized queries
 *   ("café au lait", "東京 ラーメン", "straße", "ﬁsh tacos", ...), so
 *   NFKC + case folding is exercised; their normalized form is kept beside
 *   the text.
 * Variants: with --variant-rate an event carries a spelling of its query
 *   that normalizes to the same string: upper/mixed ASCII case, full-width
 *   letters and digits (U+FF21...), extra spaces and tabs, U+3000.
 * Items: "i<k>", k in [0, --items). A shown slot takes, 3 times in 4, an
 *   item from the query's own pool (64 items picked by a hash of the query
 *   rank, ranked Zipf(1.0) inside the pool: hot query x item cells), else
 *   a globally Zipf(1.0)-popular item. Items in one impression are
 *   distinct, except that ~1% of impressions list one item twice. Items
 *   are written as "i7" or {"id":"i7","pos":3}, mixed per event.
 * Users: country from a weighted list (US, IN, DE, FR, GB, BR, JP) plus 2%
 *   junk ("usa", "xx", "", null, "de"); gender female / male / unknown plus
 *   variants ("F", "Male", null).
 * Engagement: a shown (distinct) item is engaged with probability
 *   p(query, item, country, gender), a hash of the four normalized values
 *   and the seed:  p = min(0.95, base * cf * gf), base = 0.01 + 0.3 u1^3,
 *   cf = 0.5 + u2, gf = 0.7 + 0.6 u3 (mean ~8.5%). An engagement emits one
 *   action (3 times in 4) or two of distinct kinds; the first configured
 *   action (or "click" when listed) is six times as likely as any other.
 *   Action ts = impression ts + [0, 120 s].
 * Repeats: each action, with --repeat-rate, is repeated with a new
 *   event_id and ts = action ts + [-60 s, +60 s] (clamped at 0).
 * Time: impression ts are i.i.d. uniform in [start, start + span), drawn
 *   already sorted (Bentley & Saxe's descending maxima), so the generator
 *   walks time forward. All event ts lie in
 *   [max(0, start - 60 s), start + span + 180 s).
 * Output order: each line gets key = ts + jitter, jitter uniform in
 *   [0, --disorder]; lines are written in (key, generation order). A min-heap
 *   holds pending lines; before an impression at time T every line with
 *   key < T - 60 s is written (nothing generated later can sort before it).
 *   Memory is the lines of about (disorder + 4 min) of traffic, not the file.
 *   Since output is sorted by ts + jitter, a line's ts is never more than
 *   --disorder below the largest ts written before it.
 * Redelivery: with --redeliver-rate a line is written twice, identical
 *   bytes; the copy's jitter is drawn in [first jitter, disorder], so it
 *   comes later and still within the bound.
 * Malformed: after each valid event, with --bad-rate, one extra malformed
 *   line (event_id "bad-<seed>-<n>" when it has one): truncated JSON, a
 *   JSON array, schema "impression.v9", no event_id, ts as a string, items
 *   not an array, an unknown action, query not a string, or plain text.
 * Truth (--truth): one JSON line per (query, item, country, gender) cell
 *   that was shown, with normalized values, the planted propensity, and the
 *   exact number of impressions showing it and of those that engaged it.
 *   This keeps one hash entry per shown cell in memory.
 * Ids: impression "imp-<seed>-<n>" and request "req-<seed>-<n>" (n the
 *   impression's index, in time order), action "act-<seed>-<n>" (repeats
 *   included). Lines are jansson's compact form with the key order of
 *   DESIGN.md; valid ones are written by hand for speed (see below).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <xxhash.h>
#include <zlib.h>
#include <zstd.h>

#include "model/buf.h"
#include "model/config.h"
#include "cli/cli.h"

#define CMD "gen"
#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))
#define SEC_MS 1000LL
#define HOUR_MS (3600 * SEC_MS)
#define ACTION_DELAY_MS (120 * SEC_MS)
#define REPEAT_SHIFT_MS (60 * SEC_MS)
#define POOL_SIZE 64
#define MAX_KEYSPACE (1u << 24)         /* queries and items: packed in truth keys */
#define MAX_PER_IMPRESSION 1000
#define MAX_TS (1LL << 53)              /* exact in any JSON reader */

/* ---- PRNG: splitmix64 seeding xoshiro256** --------------------------------- */

typedef struct rng { uint64_t s[4]; } rng;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(rng *r) {
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1). */
static double rng_unit(rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

__extension__ typedef unsigned __int128 u128;

/* Uniform in [0, n), n > 0 (multiply-shift; every n here is below 2^32, so
 * the bias is below 2^-32). */
static uint64_t rng_below(rng *r, uint64_t n) {
    return (uint64_t)(((u128)rng_next(r) * n) >> 64);
}

/* Uniform in [lo, hi], lo <= hi. */
static int64_t rng_range(rng *r, int64_t lo, int64_t hi) {
    return lo + (int64_t)rng_below(r, (uint64_t)(hi - lo) + 1);
}

static int rng_chance(rng *r, double p) { return p > 0 && rng_unit(r) < p; }

/* ---- Zipf by inverse CDF ----------------------------------------------------- */

typedef struct zipf { double *cdf; size_t n; } zipf;

static int zipf_init(zipf *z, size_t n, double s) {
    z->n = n;
    z->cdf = malloc(n * sizeof(double));
    if (!z->cdf) return -1;
    double sum = 0;
    for (size_t k = 0; k < n; k++) z->cdf[k] = (sum += pow((double)(k + 1), -s));
    for (size_t k = 0; k < n; k++) z->cdf[k] /= sum;
    return 0;
}

static size_t zipf_draw(const zipf *z, rng *r) {
    double u = rng_unit(r);
    size_t lo = 0, hi = z->n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (z->cdf[mid] > u) hi = mid; else lo = mid + 1;
    }
    return lo;
}

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

#define QUERY_TEXT_MAX 96

/* The canonical text of query rank k into buf; returns its normalized form
 * (buf itself for the generated ASCII phrases, already normalized). */
static const char *query_text(uint32_t k, char *buf, size_t cap) {
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
#define VARIANT_MAX (QUERY_TEXT_MAX * 4 + 64)

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

/* A spelling of text that normalizes to the same query; into out. */
static void query_variant(const char *text, rng *r, char *out) {
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

static const char *const COUNTRY_NORM[] = {"US", "GB", "DE", "FR", "BR", "IN", "JP", "ZZ"};
static const char *const GENDER_NORM[] = {"female", "male", "unknown"};

typedef struct user_value { const char *raw; int norm; int weight; } user_value;

/* Weights per mille; raw NULL is written as JSON null. */
static const user_value COUNTRIES[] = {
    {"US", 0, 300}, {"IN", 5, 140}, {"DE", 2, 120}, {"FR", 3, 120}, {"GB", 1, 100},
    {"BR", 4, 100}, {"JP", 6, 100}, {"usa", 7, 5},  {"xx", 7, 4},   {"", 7, 4},
    {NULL, 7, 4},   {"de", 2, 3},
};
static const user_value GENDERS[] = {
    {"female", 0, 440}, {"male", 1, 440}, {"unknown", 2, 60},
    {"F", 0, 20},       {"Male", 1, 20},  {NULL, 2, 20},
};

static size_t draw_weighted(const user_value *v, size_t n, rng *r) {
    int64_t x = (int64_t)rng_below(r, 1000);
    for (size_t i = 0; i < n; i++)
        if ((x -= v[i].weight) < 0) return i;
    return n - 1;
}

/* ---- The planted propensity ------------------------------------------------- */

static double hash_unit(uint64_t h) { return (double)(h >> 11) * 0x1.0p-53; }

static double propensity(uint64_t seed, const char *qnorm, uint32_t item, int country,
                         int gender) {
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

/* ---- Options ---------------------------------------------------------------- */

typedef struct gen_opts {
    int64_t seed, impressions, start, span_ms, disorder_ms;
    int64_t queries, items, per_impression;
    int start_set;
    double redeliver, repeat, variant, bad;
    const char *out, *truth;
    size_t n_actions;
    char actions[IQP_MAX_ACTIONS][IQP_NAME_MAX];
} gen_opts;

static const char *const DEFAULT_ACTIONS = "click,save,closeup,long_click,download,screenshot";

static void gen_usage(FILE *f) {
    fputs("usage: iqp gen [options]\n"
          "\n"
          "Writes deterministic synthetic search traffic (impression.v1 and action.v1\n"
          "JSONL events, with redeliveries, repeated actions, query spelling variants,\n"
          "junk user values, malformed lines and bounded disorder).\n"
          "\n"
          "  --seed N                  PRNG seed (default 1)\n"
          "  --impressions N           impression events (default 10000)\n"
          "  --start MS                first impression time, ms since epoch\n"
          "                            (default: the current hour, floored, minus the span)\n"
          "  --span DURATION           impressions fall in [start, start+span) (default 6h)\n"
          "  --queries N               distinct queries, Zipf s=1.1 (default 200)\n"
          "  --items N                 distinct items, \"i0\".. (default 2000)\n"
          "  --items-per-impression N  items shown per impression (default 10)\n"
          "  --redeliver-rate F        share of lines written twice (default 0.02)\n"
          "  --repeat-rate F           share of actions repeated with a new event_id and\n"
          "                            ts moved by up to 60 s either way (default 0.03)\n"
          "  --variant-rate F          share of events whose query is a spelling variant\n"
          "                            normalizing to the same query (default 0.1)\n"
          "  --bad-rate F              extra malformed lines per valid line (default 0.01)\n"
          "  --disorder DURATION       max ts disorder of the output, < 24h (default 2m)\n"
          "  --actions LIST            comma-separated action names\n"
          "                            (default click,save,closeup,long_click,download,screenshot)\n"
          "  --out FILE                output, \"-\" for stdout (default); .gz: gzip,\n"
          "                            .zst: zstd\n"
          "  --truth FILE              write the planted propensity of every shown\n"
          "                            (query, item, country, gender) cell as JSONL\n"
          "  --help                    print this help\n"
          "\n"
          "Durations: 500ms, 30s, 15m, 6h, 2d. Actions follow their impression by\n"
          "0..120 s; every event ts is in [start-60s, start+span+180s). Each output\n"
          "line's ts is at most --disorder below the largest ts before it.\n"
          "Same flags with an explicit --start give byte-identical output.\n",
          f);
}

static int parse_count(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (iqp_cli_parse_i64(s, out) != 0 || *out < lo || *out > hi)
        return iqp_cli_usage_error(CMD, "%s must be an integer in [%" PRId64 ", %" PRId64
                                   "], got \"%s\"", flag, lo, hi, s);
    return 0;
}

static int parse_rate(const char *flag, const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0.0 && v <= 1.0))
        return iqp_cli_usage_error(CMD, "%s must be a number in [0, 1], got \"%s\"", flag, s);
    *out = v;
    return 0;
}

static int parse_dur(const char *flag, const char *s, int64_t lo, int64_t hi, const char *what,
                     int64_t *out) {
    if (iqp_parse_duration(s, out) != 0 || *out < lo || *out > hi)
        return iqp_cli_usage_error(CMD, "%s must be %s (like 30m, 6h, 2d), got \"%s\"", flag,
                                   what, s);
    return 0;
}

static int parse_actions(gen_opts *o, const char *list) {
    o->n_actions = 0;
    const char *p = list;
    for (;;) {
        size_t n = strcspn(p, ",");
        if (!iqp_config_valid_name(p, n))
            return iqp_cli_usage_error(CMD, "--actions: \"%.*s\" is not an action name "
                                       "(1..%d of A-Z a-z 0-9 _ - .)", (int)n, p,
                                       IQP_NAME_MAX - 1);
        if (o->n_actions == IQP_MAX_ACTIONS)
            return iqp_cli_usage_error(CMD, "--actions: more than %d names", IQP_MAX_ACTIONS);
        memcpy(o->actions[o->n_actions], p, n);
        o->actions[o->n_actions][n] = '\0';
        for (size_t i = 0; i < o->n_actions; i++)
            if (strcmp(o->actions[i], o->actions[o->n_actions]) == 0)
                return iqp_cli_usage_error(CMD, "--actions: \"%s\" is listed twice",
                                           o->actions[i]);
        o->n_actions++;
        if (!p[n]) return 0;
        p += n + 1;
    }
}

enum {
    OPT_SEED = 256, OPT_IMPRESSIONS, OPT_START, OPT_SPAN, OPT_QUERIES, OPT_ITEMS, OPT_PER_IMP,
    OPT_REDELIVER, OPT_REPEAT, OPT_VARIANT, OPT_BAD, OPT_DISORDER, OPT_OUT, OPT_TRUTH,
    OPT_ACTIONS, OPT_HELP
};

static const struct option LONG_OPTS[] = {
    {"seed", required_argument, NULL, OPT_SEED},
    {"impressions", required_argument, NULL, OPT_IMPRESSIONS},
    {"start", required_argument, NULL, OPT_START},
    {"span", required_argument, NULL, OPT_SPAN},
    {"queries", required_argument, NULL, OPT_QUERIES},
    {"items", required_argument, NULL, OPT_ITEMS},
    {"items-per-impression", required_argument, NULL, OPT_PER_IMP},
    {"redeliver-rate", required_argument, NULL, OPT_REDELIVER},
    {"repeat-rate", required_argument, NULL, OPT_REPEAT},
    {"variant-rate", required_argument, NULL, OPT_VARIANT},
    {"bad-rate", required_argument, NULL, OPT_BAD},
    {"disorder", required_argument, NULL, OPT_DISORDER},
    {"out", required_argument, NULL, OPT_OUT},
    {"truth", required_argument, NULL, OPT_TRUTH},
    {"actions", required_argument, NULL, OPT_ACTIONS},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/* One option into o: 0, 2 on a bad value. */
static int apply_opt(gen_opts *o, int c, const char *a) {
    switch (c) {
    case OPT_SEED: return parse_count("--seed", a, 0, INT64_MAX, &o->seed);
    case OPT_IMPRESSIONS:
        return parse_count("--impressions", a, 0, 1000000000000LL, &o->impressions);
    case OPT_START: o->start_set = 1; return parse_count("--start", a, 0, MAX_TS / 2, &o->start);
    case OPT_SPAN: return parse_dur("--span", a, 1, MAX_TS / 4, "a positive duration", &o->span_ms);
    case OPT_QUERIES: return parse_count("--queries", a, 1, MAX_KEYSPACE, &o->queries);
    case OPT_ITEMS: return parse_count("--items", a, 1, MAX_KEYSPACE, &o->items);
    case OPT_PER_IMP:
        return parse_count("--items-per-impression", a, 1, MAX_PER_IMPRESSION, &o->per_impression);
    case OPT_REDELIVER: return parse_rate("--redeliver-rate", a, &o->redeliver);
    case OPT_REPEAT: return parse_rate("--repeat-rate", a, &o->repeat);
    case OPT_VARIANT: return parse_rate("--variant-rate", a, &o->variant);
    case OPT_BAD: return parse_rate("--bad-rate", a, &o->bad);
    case OPT_DISORDER:
        return parse_dur("--disorder", a, 0, 24 * HOUR_MS - 1, "a duration below 24h",
                         &o->disorder_ms);
    case OPT_OUT: o->out = a; return 0;
    case OPT_TRUTH: o->truth = a; return 0;
    case OPT_ACTIONS: return parse_actions(o, a);
    default: return 2;
    }
}

/* Fills o from argv: 0 to run, 1 for --help (done), 2 for a usage error. */
static int parse_opts(gen_opts *o, int argc, char **argv) {
    *o = (gen_opts){.seed = 1, .impressions = 10000, .span_ms = 6 * HOUR_MS, .queries = 200,
                    .items = 2000, .per_impression = 10, .redeliver = 0.02, .repeat = 0.03,
                    .variant = 0.1, .bad = 0.01, .disorder_ms = 120 * SEC_MS, .out = "-"};
    parse_actions(o, DEFAULT_ACTIONS);
    opterr = 0;
    optind = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", LONG_OPTS, NULL)) != -1) {
        if (c == OPT_HELP) { gen_usage(stdout); return 1; }
        if (c == '?')
            return iqp_cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
        if (c == ':')
            return iqp_cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
        if (apply_opt(o, c, optarg)) return 2;
    }
    if (optind < argc) return iqp_cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (o->per_impression > o->items)
        return iqp_cli_usage_error(CMD, "--items-per-impression (%" PRId64 ") exceeds --items "
                                   "(%" PRId64 ")", o->per_impression, o->items);
    if (o->truth && strcmp(o->truth, o->out) == 0)
        return iqp_cli_usage_error(CMD, "--truth and --out name the same file '%s'", o->out);
    if (!o->start_set) {
        o->start = iqp_now_ms() / HOUR_MS * HOUR_MS - o->span_ms;
        if (o->start < 0) o->start = 0;
    }
    if (o->start + o->span_ms > MAX_TS / 2)
        return iqp_cli_usage_error(CMD, "--start plus --span is past the year 100000");
    return 0;
}

/* ---- Output: plain, gzip or zstd, by file name ------------------------------ */

enum { OUT_PLAIN, OUT_GZ, OUT_ZST };
#define OUT_BUF (256 * 1024)

typedef struct gen_out {
    const char *path;
    int kind, failed;
    FILE *fp;
    gzFile gz;
    ZSTD_CCtx *zc;
    char *buf, *zbuf;
    size_t len, zcap;
} gen_out;

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int out_open(gen_out *w, const char *path) {
    *w = (gen_out){.path = path, .kind = OUT_PLAIN};
    int is_stdout = strcmp(path, "-") == 0;
    if (!is_stdout && ends_with(path, ".gz")) w->kind = OUT_GZ;
    else if (!is_stdout && ends_with(path, ".zst")) w->kind = OUT_ZST;
    if (!(w->buf = malloc(OUT_BUF))) return -1;
    if (w->kind == OUT_GZ) return (w->gz = gzopen(path, "wb6")) ? 0 : -1;
    w->fp = is_stdout ? stdout : fopen(path, "wb");
    if (!w->fp) return -1;
    if (w->kind != OUT_ZST) return 0;
    w->zcap = ZSTD_CStreamOutSize();
    if (!(w->zc = ZSTD_createCCtx()) || !(w->zbuf = malloc(w->zcap))) return -1;
    ZSTD_CCtx_setParameter(w->zc, ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(w->zc, ZSTD_c_checksumFlag, 1);
    return 0;
}

static int out_zstd(gen_out *w, const char *p, size_t n, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in = {p, n, 0};
    for (;;) {
        ZSTD_outBuffer ob = {w->zbuf, w->zcap, 0};
        size_t left = ZSTD_compressStream2(w->zc, &ob, &in, mode);
        if (ZSTD_isError(left)) { errno = EIO; return -1; }
        if (ob.pos && fwrite(w->zbuf, 1, ob.pos, w->fp) != ob.pos) return -1;
        if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) return 0;
    }
}

static int out_flush(gen_out *w) {
    if (w->failed) return -1;
    int rc = 0;
    if (w->len == 0) return 0;
    errno = 0;
    if (w->kind == OUT_GZ) rc = gzwrite(w->gz, w->buf, (unsigned)w->len) == (int)w->len ? 0 : -1;
    else if (w->kind == OUT_ZST) rc = out_zstd(w, w->buf, w->len, ZSTD_e_continue);
    else rc = fwrite(w->buf, 1, w->len, w->fp) == w->len ? 0 : -1;
    w->len = 0;
    if (rc) w->failed = errno ? errno : EIO;
    return rc;
}

static int out_write(gen_out *w, const char *p, size_t n) {
    if (w->len + n > OUT_BUF && out_flush(w)) return -1;
    if (n > OUT_BUF) {                  /* never for our lines; kept correct anyway */
        while (n) {
            size_t k = n < OUT_BUF ? n : OUT_BUF;
            memcpy(w->buf, p, k);
            w->len = k;
            if (out_flush(w)) return -1;
            p += k; n -= k;
        }
        return 0;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
    return 0;
}

/* Finishes and closes; -1 when anything failed along the way. */
static int out_close(gen_out *w) {
    int rc = out_flush(w);
    if (w->kind == OUT_ZST && w->zc && w->zbuf && rc == 0 && out_zstd(w, NULL, 0, ZSTD_e_end))
        rc = -1;
    if (w->gz && gzclose(w->gz) != Z_OK) rc = -1;
    if (w->fp == stdout) { if (fflush(stdout)) rc = -1; }
    else if (w->fp && fclose(w->fp)) rc = -1;
    if (rc && !w->failed) w->failed = errno ? errno : EIO;
    ZSTD_freeCCtx(w->zc);
    free(w->zbuf);
    free(w->buf);
    w->fp = NULL; w->gz = NULL; w->zc = NULL; w->zbuf = w->buf = NULL;
    return rc;
}

/* ---- Pending lines: a min-heap on (key, seq) --------------------------------- */

typedef struct pending { int64_t key; uint64_t seq; char *line; size_t len; } pending;
typedef struct pheap { pending *v; size_t n, cap; } pheap;

static int pend_less(const pending *a, const pending *b) {
    return a->key < b->key || (a->key == b->key && a->seq < b->seq);
}

static int heap_push(pheap *h, pending e) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 4096;
        pending *v = realloc(h->v, cap * sizeof *v);
        if (!v) return -1;
        h->v = v; h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && pend_less(&e, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = e;
    return 0;
}

static pending heap_pop(pheap *h) {
    pending top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && pend_less(&h->v[c + 1], &h->v[c])) c++;
        if (!pend_less(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* ---- Truth: shown cells with their impression and engagement counts ---------- */

typedef struct cell { uint64_t key; uint32_t shown, engaged; } cell;
typedef struct cellset { cell *v; size_t n, cap; } cellset;

#define CELL_USED (1ULL << 63)

static uint64_t cell_key(uint32_t q, uint32_t item, int country, int gender) {
    return CELL_USED | (uint64_t)q << 32 | (uint64_t)item << 8 | (uint64_t)country << 2 |
           (uint64_t)gender;
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

static cell *cellset_get(cellset *s, uint64_t key) {
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

/* ---- Line buffer ------------------------------------------------------------- */

/* Lines are built in the one byte buffer (model/buf.h). */
#define SB_LIT(b, lit) iqp_buf_append((b), (lit), sizeof(lit) - 1)

/* A JSON string (UTF-8 passes through, as jansson writes it), or null. */
static void sb_str(iqp_buf *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    if (!s) { SB_LIT(b, "null"); return; }
    SB_LIT(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
        if (*p == '"' || *p == '\\') { e[1] = (char)*p; iqp_buf_append(b, e, 2); }
        else if (*p == '\t') iqp_buf_append(b, "\\t", 2);
        else if (*p == '\n') iqp_buf_append(b, "\\n", 2);
        else if (*p == '\r') iqp_buf_append(b, "\\r", 2);
        else if (*p == '\b') iqp_buf_append(b, "\\b", 2);
        else if (*p == '\f') iqp_buf_append(b, "\\f", 2);
        else if (*p < 0x20) iqp_buf_append(b, e, 6);
        else iqp_buf_append(b, (const char *)p, 1);
    }
    SB_LIT(b, "\"");
}

/* "<prefix><seed>-<n>" as a JSON string. */
static void sb_id(iqp_buf *b, const char *prefix, int64_t seed, uint64_t n) {
    SB_LIT(b, "\"");
    iqp_buf_append(b, prefix, strlen(prefix));
    iqp_buf_i64(b, seed);
    SB_LIT(b, "-");
    iqp_buf_u64(b, n);
    SB_LIT(b, "\"");
}

static void sb_item(iqp_buf *b, uint32_t item) {
    SB_LIT(b, "\"i");
    iqp_buf_u64(b, item);
    SB_LIT(b, "\"");
}

/* The finished line, malloc'd; NULL when out of memory. Resets b. */
static char *sb_take(iqp_buf *b) {
    char *s = malloc(b->len + 1);
    if (s) {
        memcpy(s, b->buf, b->len);
        s[b->len] = '\0';
    }
    b->len = 0;
    return s;
}

/* ---- Generator state -------------------------------------------------------- */

typedef struct gen {
    gen_opts o;
    rng r;
    zipf qz, iz, pz;
    uint8_t *mark;              /* per item: already in this impression */
    uint32_t *shown;            /* this impression's distinct items */
    uint32_t *listed;           /* the same as written, with the planted duplicate */
    pheap heap;
    uint64_t seq;
    gen_out out, tout;          /* events; the truth file */
    cellset truth;
    iqp_buf sb;                    /* the line being built */
    int oom;
    const char *unknown_action;
    size_t heavy_action;        /* "click" when listed, else the first */
    char unknown_buf[IQP_NAME_MAX + 8];
    /* the impression being generated */
    int64_t imp_no, imp_ts;
    uint32_t q;
    char qtext[QUERY_TEXT_MAX];
    const char *qnorm;
    size_t country, gender;
    size_t n_listed, n_distinct;
    /* counts for the summary */
    uint64_t n_imp, n_act, n_redeliver, n_repeat, n_bad, n_action_ids, n_bad_ids;
} gen;

/* Writes every pending line whose key is below bound. */
static int drain(gen *g, int64_t bound, int all) {
    while (g->heap.n && (all || g->heap.v[0].key < bound)) {
        pending e = heap_pop(&g->heap);
        int rc = out_write(&g->out, e.line, e.len);
        if (rc == 0) rc = out_write(&g->out, "\n", 1);
        free(e.line);
        if (rc) return -1;
    }
    return 0;
}

static void push_line(gen *g, char *line, int64_t key) {
    if (!line || heap_push(&g->heap, (pending){key, g->seq++, line, strlen(line)})) {
        free(line);
        g->oom = 1;
    }
}

/* ---- Building events ----------------------------------------------------------
 * Valid events are written by hand (jansson's compact form, byte for byte:
 * same key order, same escapes), which is several times faster than building
 * and dumping a tree; jansson only rewrites the rare malformed lines. */

/* The query text this event carries: the canonical one or a variant. */
static void sb_query(gen *g) {
    char v[VARIANT_MAX];
    if (!rng_chance(&g->r, g->o.variant)) { sb_str(&g->sb, g->qtext); return; }
    query_variant(g->qtext, &g->r, v);
    sb_str(&g->sb, v);
}

/* Everything up to and including the user object; id is a JSON string. */
static void event_head(gen *g, const char *schema, const char *id_prefix, uint64_t id_no,
                       int64_t ts) {
    iqp_buf *b = &g->sb;
    SB_LIT(b, "{\"schema\":");
    sb_str(b, schema);
    SB_LIT(b, ",\"event_id\":");
    sb_id(b, id_prefix, g->o.seed, id_no);
    SB_LIT(b, ",\"ts\":");
    iqp_buf_i64(b, ts);
    SB_LIT(b, ",\"request_id\":");
    sb_id(b, "req-", g->o.seed, (uint64_t)g->imp_no);
    SB_LIT(b, ",\"query\":");
    sb_query(g);
    SB_LIT(b, ",\"user\":{\"country\":");
    sb_str(b, COUNTRIES[g->country].raw);
    SB_LIT(b, ",\"gender\":");
    sb_str(b, GENDERS[g->gender].raw);
    SB_LIT(b, "}");
}

static void event_items(gen *g) {
    iqp_buf *b = &g->sb;
    int form = (int)rng_below(&g->r, 20); /* 12: strings, 5: objects, 3: mixed */
    SB_LIT(b, ",\"items\":[");
    for (size_t i = 0; i < g->n_listed; i++) {
        int obj = form >= 17 ? (int)rng_below(&g->r, 2) : form >= 12;
        if (i) SB_LIT(b, ",");
        if (obj) SB_LIT(b, "{\"id\":");
        sb_item(b, g->listed[i]);
        if (obj) { SB_LIT(b, ",\"pos\":"); iqp_buf_u64(b, i); SB_LIT(b, "}"); }
    }
    SB_LIT(b, "]}");
}

static char *build_impression(gen *g, const char *id_prefix, uint64_t id_no) {
    event_head(g, "impression.v1", id_prefix, id_no, g->imp_ts);
    event_items(g);
    return sb_take(&g->sb);
}

static char *build_action(gen *g, const char *id_prefix, uint64_t id_no, int64_t ts,
                          uint32_t item, size_t action) {
    event_head(g, "action.v1", id_prefix, id_no, ts);
    SB_LIT(&g->sb, ",\"item\":");
    sb_item(&g->sb, item);
    SB_LIT(&g->sb, ",\"action\":");
    sb_str(&g->sb, g->o.actions[action]);
    SB_LIT(&g->sb, "}");
    return sb_take(&g->sb);
}

static char *dump(json_t *e) {
    char *s = e ? json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(e);
    return s;
}

/* ---- Malformed lines ------------------------------------------------------- */

enum { BAD_TRUNCATED, BAD_ARRAY, BAD_SCHEMA, BAD_NO_ID, BAD_TS_STRING, BAD_ITEMS,
       BAD_ACTION, BAD_QUERY, BAD_TEXT, BAD__COUNT };

static const char *const GARBAGE[] = {
    "<html><body><h1>502 Bad Gateway</h1></body></html>",
    "GET /search?q=red+dress HTTP/1.1",
    "2024-01-01 00:00:00 WARN consumer lag high",
    "event=impression query=\"red dress\" items=i1,i2",
    "}{ not json",
};

/* A template event for a malformed line, from the current impression. */
static char *bad_template(gen *g, int want_action) {
    uint64_t id = g->n_bad_ids++;
    if (want_action) return build_action(g, "bad-", id, g->imp_ts, g->shown[0], 0);
    return build_impression(g, "bad-", id);
}

static char *bad_truncated(gen *g) {
    char *s = bad_template(g, (int)rng_below(&g->r, 2));
    if (!s) return NULL;
    size_t len = strlen(s), cut = 1 + (size_t)rng_below(&g->r, len - 2);
    while (cut > 1 && ((unsigned char)s[cut] & 0xC0) == 0x80) cut--; /* whole characters */
    s[cut] = '\0';
    return s;
}

static char *bad_text(gen *g) {
    const char *t = GARBAGE[rng_below(&g->r, COUNT_OF(GARBAGE))];
    size_t n = strlen(t) + 32;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s #%" PRIu64, t, g->n_bad_ids++);
    return s;
}

static json_t *bad_query_value(gen *g) {
    switch (rng_below(&g->r, 4)) {
    case 0: return json_integer(42);
    case 1: return json_null();
    case 2: return json_pack("[s]", g->qtext);
    default: return json_pack("{s:s}", "text", g->qtext);
    }
}

static char *bad_line(gen *g) {
    int kind = (int)rng_below(&g->r, BAD__COUNT), act = (int)rng_below(&g->r, 2);
    if (kind == BAD_TRUNCATED) return bad_truncated(g);
    if (kind == BAD_TEXT) return bad_text(g);
    int want_action = kind == BAD_ACTION || (kind != BAD_ITEMS && kind != BAD_SCHEMA && act);
    char *line = bad_template(g, want_action), ts[32];
    json_t *e = line ? json_loads(line, 0, NULL) : NULL;
    free(line);
    if (!e) return NULL;
    switch (kind) {
    case BAD_ARRAY: return dump(json_pack("[o]", e));
    case BAD_SCHEMA: json_object_set_new(e, "schema", json_string("impression.v9")); break;
    case BAD_NO_ID: json_object_del(e, "event_id"); break;
    case BAD_TS_STRING:
        snprintf(ts, sizeof ts, "%" PRId64, g->imp_ts);
        json_object_set_new(e, "ts", json_string(ts));
        break;
    case BAD_ITEMS: json_object_set_new(e, "items", json_string("i1,i2,i3")); break;
    case BAD_ACTION: json_object_set_new(e, "action", json_string(g->unknown_action)); break;
    case BAD_QUERY: json_object_set_new(e, "query", bad_query_value(g)); break;
    }
    return dump(e);
}

/* An action name that is not configured: "purchase" unless listed. */
static void pick_unknown_action(gen *g) {
    snprintf(g->unknown_buf, sizeof g->unknown_buf, "purchase");
    for (int n = 2;; n++) {
        size_t i = 0;
        while (i < g->o.n_actions && strcmp(g->o.actions[i], g->unknown_buf) != 0) i++;
        if (i == g->o.n_actions) break;
        snprintf(g->unknown_buf, sizeof g->unknown_buf, "purchase%d", n);
    }
    g->unknown_action = g->unknown_buf;
}

/* ---- Emitting: jitter, redelivery, malformed extras --------------------------- */

static void emit(gen *g, char *line, int64_t ts) {
    int64_t d = g->o.disorder_ms, j = rng_range(&g->r, 0, d);
    if (!line) { g->oom = 1; return; }
    push_line(g, line, ts + j);
    if (rng_chance(&g->r, g->o.redeliver)) {
        push_line(g, strdup(line), ts + rng_range(&g->r, j, d));
        g->n_redeliver++;
    }
    if (rng_chance(&g->r, g->o.bad)) {
        push_line(g, bad_line(g), ts + rng_range(&g->r, 0, d));
        g->n_bad++;
    }
}

/* ---- One impression and its actions -------------------------------------------- */

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

static void pick_items(gen *g) {
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

/* The click (or first) action is six times as likely as each other one. */
static size_t pick_action(gen *g, size_t except) {
    size_t n = g->o.n_actions;
    for (;;) {
        uint64_t x = rng_below(&g->r, n + 5);
        size_t a = x >= n ? g->heavy_action : (size_t)x;
        if (a != except) return a;
    }
}

static void emit_action(gen *g, int64_t ts, uint32_t item, size_t action) {
    emit(g, build_action(g, "act-", g->n_action_ids++, ts, item, action), ts);
    g->n_act++;
}

static void engage(gen *g, uint32_t item) {
    int two = g->o.n_actions > 1 && rng_below(&g->r, 4) == 3;
    size_t first = pick_action(g, SIZE_MAX);
    for (int k = 0; k <= two; k++) {
        size_t a = k ? pick_action(g, first) : first;
        int64_t ts = g->imp_ts + rng_range(&g->r, 0, ACTION_DELAY_MS);
        emit_action(g, ts, item, a);
        if (rng_chance(&g->r, g->o.repeat)) {
            int64_t rts = ts + rng_range(&g->r, -REPEAT_SHIFT_MS, REPEAT_SHIFT_MS);
            emit_action(g, rts < 0 ? 0 : rts, item, a);
            g->n_repeat++;
        }
    }
}

static void gen_impression(gen *g) {
    g->q = (uint32_t)zipf_draw(&g->qz, &g->r);
    g->qnorm = query_text(g->q, g->qtext, sizeof g->qtext);
    g->country = draw_weighted(COUNTRIES, COUNT_OF(COUNTRIES), &g->r);
    g->gender = draw_weighted(GENDERS, COUNT_OF(GENDERS), &g->r);
    pick_items(g);
    emit(g, build_impression(g, "imp-", (uint64_t)g->imp_no), g->imp_ts);
    g->n_imp++;
    int cn = COUNTRIES[g->country].norm, gn = GENDERS[g->gender].norm;
    for (size_t i = 0; i < g->n_distinct; i++) {
        uint32_t item = g->shown[i];
        int hit = rng_chance(&g->r, propensity((uint64_t)g->o.seed, g->qnorm, item, cn, gn));
        if (hit) engage(g, item);
        if (!g->o.truth) continue;
        cell *c = cellset_get(&g->truth, cell_key(g->q, item, cn, gn));
        if (!c) { g->oom = 1; continue; }
        c->shown++;
        c->engaged += (uint32_t)hit;
    }
}

/* ---- Time: sorted uniform impression times --------------------------------------- */

/* Bentley & Saxe: the maxima of i.i.d. uniforms, descending, one at a time;
 * 1 - max walks upward. *cur starts at 1, remaining counts down from N. */
static int64_t next_ts(gen *g, double *cur, int64_t remaining) {
    double u = ((double)(rng_next(&g->r) >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] */
    *cur *= pow(u, 1.0 / (double)remaining);
    int64_t off = (int64_t)((1.0 - *cur) * (double)g->o.span_ms);
    if (off >= g->o.span_ms) off = g->o.span_ms - 1;
    return g->o.start + (off < 0 ? 0 : off);
}

/* ---- Truth file ---------------------------------------------------------------- */

/* Writes the shown cells, sorted, into the opened truth file and closes it. */
static int write_truth(gen *g) {
    gen_out *w = &g->tout;
    int rc = 0;
    cellset *s = &g->truth;
    size_t n = 0;
    for (size_t i = 0; i < s->cap; i++)
        if (s->v[i].key) s->v[n++] = s->v[i];
    qsort(s->v, n, sizeof *s->v, cell_cmp);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char qbuf[QUERY_TEXT_MAX], ibuf[16];
        uint64_t k = s->v[i].key;
        uint32_t q = (uint32_t)((k >> 32) & 0xFFFFFF), item = (uint32_t)((k >> 8) & 0xFFFFFF);
        int c = (int)((k >> 2) & 0x3F), gd = (int)(k & 3);
        const char *qn = query_text(q, qbuf, sizeof qbuf);
        snprintf(ibuf, sizeof ibuf, "i%" PRIu32, item);
        json_t *e = json_pack("{s:s,s:s,s:s,s:s,s:f,s:I,s:I}", "query", qn, "item", ibuf,
                              "country", COUNTRY_NORM[c], "gender", GENDER_NORM[gd],
                              "propensity", propensity((uint64_t)g->o.seed, qn, item, c, gd),
                              "impressions", (json_int_t)s->v[i].shown, "engaged",
                              (json_int_t)s->v[i].engaged);
        char *line = dump(e);
        rc = line ? out_write(w, line, strlen(line)) : -1;
        if (rc == 0) rc = out_write(w, "\n", 1);
        free(line);
    }
    if (out_close(w)) rc = -1;
    if (rc)
        return iqp_cli_fail(CMD, "cannot write %s: %s", g->o.truth,
                            strerror(w->failed ? w->failed : EIO));
    fprintf(stderr, "gen: %zu truth cells -> %s\n", n, g->o.truth);
    return 0;
}

/* ---- Entry point ------------------------------------------------------------------ */

static int gen_setup(gen *g) {
    size_t n = (size_t)g->o.items, pool = n < POOL_SIZE ? n : POOL_SIZE;
    rng_seed(&g->r, (uint64_t)g->o.seed);
    pick_unknown_action(g);
    for (size_t i = 0; i < g->o.n_actions; i++)
        if (strcmp(g->o.actions[i], "click") == 0) g->heavy_action = i;
    if (zipf_init(&g->qz, (size_t)g->o.queries, 1.1) || zipf_init(&g->iz, n, 1.0) ||
        zipf_init(&g->pz, pool, 1.0))
        return -1;
    g->mark = calloc(n, 1);
    g->shown = malloc((size_t)g->o.per_impression * sizeof *g->shown);
    g->listed = malloc(((size_t)g->o.per_impression + 1) * sizeof *g->listed);
    return g->mark && g->shown && g->listed ? 0 : -1;
}

static void gen_free(gen *g) {
    while (g->heap.n) free(heap_pop(&g->heap).line);
    free(g->heap.v);
    free(g->qz.cdf); free(g->iz.cdf); free(g->pz.cdf);
    free(g->mark); free(g->shown); free(g->listed); iqp_buf_free(&g->sb); free(g->truth.v);
}

/* The main loop: impressions in time order, lines out once they are safe. */
static int gen_run(gen *g) {
    double cur = 1.0;
    for (g->imp_no = 0; g->imp_no < g->o.impressions && !g->oom; g->imp_no++) {
        g->imp_ts = next_ts(g, &cur, g->o.impressions - g->imp_no);
        if (drain(g, g->imp_ts - REPEAT_SHIFT_MS, 0)) return -1;
        gen_impression(g);
    }
    return g->oom ? 0 : drain(g, 0, 1);
}

/* Opens an output or says why not: 0 or 1. */
static int open_or_fail(gen_out *w, const char *path) {
    if (out_open(w, path) == 0) return 0;
    int err = errno ? errno : ENOMEM;
    out_close(w);
    return iqp_cli_fail(CMD, "cannot open %s: %s", path, strerror(err));
}

static int gen_main(gen *g) {
    if (gen_setup(g)) return iqp_cli_fail(CMD, "out of memory");
    if (open_or_fail(&g->out, g->o.out)) return 1;
    if (g->o.truth && open_or_fail(&g->tout, g->o.truth)) {
        out_close(&g->out);
        return 1;
    }
    int wrc = gen_run(g);
    if (out_close(&g->out) || wrc) {
        if (g->o.truth) out_close(&g->tout);
        return iqp_cli_fail(CMD, "cannot write %s: %s", g->o.out,
                            strerror(g->out.failed ? g->out.failed : EIO));
    }
    if (g->oom) {
        if (g->o.truth) out_close(&g->tout);
        return iqp_cli_fail(CMD, "out of memory");
    }
    fprintf(stderr, "gen: %" PRIu64 " impressions, %" PRIu64 " actions, %" PRIu64
            " redelivered, %" PRIu64 " repeated, %" PRIu64 " malformed -> %s\n",
            g->n_imp, g->n_act, g->n_redeliver, g->n_repeat, g->n_bad, g->o.out);
    return g->o.truth ? write_truth(g) : 0;
}

int iqp_cmd_gen(int argc, char **argv) {
    gen *g = calloc(1, sizeof *g);
    if (!g) return iqp_cli_fail(CMD, "out of memory");
    int rc = parse_opts(&g->o, argc, argv);
    if (rc == 0) rc = gen_main(g);
    else if (rc == 1) rc = 0;           /* --help */
    gen_free(g);
    free(g);
    return rc;
}

/* gen.h -- `iqp gen`: deterministic synthetic search traffic.
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
 *   variants ("F", "Male", null). With --devices, also user.device: web,
 *   ios, android plus variants and junk ("IOS", " Android", "tv", "",
 *   null; normalized web | ios | android | unknown), drawn after gender;
 *   without it no device is drawn or written, so the output is unchanged.
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
 *   (and device, with --devices: the cells are then per device too)
 *   that was shown, with normalized values, the planted propensity, and the
 *   exact number of impressions showing it and of those that engaged it.
 *   This keeps one hash entry per shown cell in memory.
 * Ids: impression "imp-<seed>-<n>" and request "req-<seed>-<n>" (n the
 *   impression's index, in time order), action "act-<seed>-<n>" (repeats
 *   included). Lines are jansson's compact form with the key order of
 *   DESIGN.md; valid ones are written by hand for speed (event.h).
 *
 * The module
 * ----------
 * gen/ is a producer on the floor of consumers/, export/ and the other
 * top-level modules: it includes model/ (the action-name limits) and its
 * own files only, and cli/gen.c, which parses the flags, is its one user.
 * By concern:
 *   rng.h          the xoshiro256** stream and Zipf draws
 *   traffic.h      queries, spelling variants, users, shown items
 *   truth.h        the planted propensity and the --truth cell set
 *   event.h        valid impression / action lines
 *   faults.h       malformed lines
 *   output.h       line buffer, pending-line heap, gzip / zstd writer
 *   gen.c          the run: impression times, engagement, actions and
 *                  repeats, jitter and redelivery, draining the heap
 *                  (gen_internal.h holds the state they share)
 * Every random draw is made in the same order as when this was one file,
 * so the output did not change when it was split.
 *
 * Owns: one run of the generator, from options to closed files.
 * May not touch: flags and messages to the user (cli/gen.c), anything
 * outside the two files it is told to write.
 */
#ifndef IQP_GEN_GEN_H
#define IQP_GEN_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "model/config.h"

#define IQP_GEN_MAX_KEYSPACE (1u << 24)   /* queries and items: packed in truth keys */
#define IQP_GEN_MAX_PER_IMPRESSION 1000
#define IQP_GEN_MAX_TS (1LL << 53)        /* exact in any JSON reader */

typedef struct iqp_gen_options {
    int64_t seed, impressions;
    int64_t start, span_ms;             /* impressions in [start, start + span) */
    int64_t disorder_ms;                /* < 24 h */
    int64_t queries, items;             /* in [1, IQP_GEN_MAX_KEYSPACE] */
    int64_t per_impression;             /* in [1, items] */
    double redeliver, repeat, variant, bad;     /* rates in [0, 1] */
    const char *out, *truth;            /* "-": stdout; .gz, .zst: compressed; truth NULL: none */
    int devices;                        /* write user.device (and count it in the truth) */
    size_t n_actions;                   /* >= 1, distinct valid names */
    char actions[IQP_MAX_ACTIONS][IQP_NAME_MAX];
} iqp_gen_options;

typedef struct iqp_gen_stats {
    uint64_t impressions, actions;      /* actions: repeats included */
    uint64_t redelivered, repeated, malformed;
    int events_done;                    /* the event output is complete and closed */
    int truth_done;                     /* so is the truth file (when asked for) */
    size_t truth_cells;
} iqp_gen_stats;

/* Writes the traffic of o to o->out, and the truth cells to o->truth when
 * set. The options are valid (the ranges above; cli/gen.c checks them).
 * 0, or -1 with a message in err ("cannot open PATH: ...", "cannot write
 * PATH: ...", "out of memory"). *stats tells how far it got either way. */
int iqp_gen_run(const iqp_gen_options *o, iqp_gen_stats *stats, char *err, size_t errlen);

#endif

/* faults.h -- iqp gen's malformed lines (--bad-rate).
 *
 * Owns: the kinds of bad line a real log carries and how each is made from
 * the current impression: truncated JSON (cut on a character boundary), a
 * JSON array, schema "impression.v9", no event_id, ts as a string, items
 * not an array, an action that is not configured, a query that is not a
 * string, plain text (gen.h, "Malformed"). Those that have an event_id
 * number it "bad-<seed>-<n>", a counter of their own.
 *
 * May not touch: the valid events (it starts from event.h's lines and
 * rewrites a copy with jansson), when or how often a bad line is written
 * (gen.c's emit).
 */
#ifndef IQP_GEN_FAULTS_H
#define IQP_GEN_FAULTS_H

typedef struct gen gen;

/* Sets g->unknown_action: an action name that is not configured,
 * "purchase" unless listed, else "purchase2", ... */
void pick_unknown_action(gen *g);

/* One malformed line of a random kind, malloc'd; NULL out of memory. */
char *bad_line(gen *g);

#endif

/* event.h -- iqp gen's valid event lines: impression.v1 and action.v1.
 *
 * Owns: the bytes of a valid event: jansson's compact form with the key
 * order of DESIGN.md ("Events"), written by hand into the generator's
 * line buffer (same keys, same escapes as json_dumps, several times
 * faster than building and dumping a tree), and the choice that varies
 * per line: the query's spelling (--variant-rate) and the form of the
 * items ("i7" or {"id":"i7","pos":3}).
 *
 * May not touch: what the impression is (traffic.h chose it, gen.c holds
 * it in the state) or where the line goes (the caller pushes it).
 */
#ifndef IQP_GEN_EVENT_H
#define IQP_GEN_EVENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct gen gen;

/* The current impression as a line, event_id "<id_prefix><seed>-<id_no>";
 * malloc'd, NULL when out of memory. */
char *build_impression(gen *g, const char *id_prefix, uint64_t id_no);

/* An action of the current impression's user and query on item, at ts,
 * named g->o.actions[action]; malloc'd, NULL when out of memory. */
char *build_action(gen *g, const char *id_prefix, uint64_t id_no, int64_t ts, uint32_t item,
                   size_t action);

#endif

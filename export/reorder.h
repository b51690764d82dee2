/* reorder.h -- the export's bounded reorder buffer: logs in, event time out.
 *
 * Owns: owned copies of the events it holds, and the order in which they
 * leave. Logs are not sorted by event time (iqp gen writes up to
 * --disorder out of order; real logs are similar), but a point-in-time
 * replay needs them sorted. The buffer holds every event for a bounded
 * span of event time and releases them in order.
 *
 * Rule (README "Training data: iqp export"): let newest be the largest ts
 * accepted so far and D = max_disorder_ms. An event with ts < newest - D is
 * too late: the caller dead-letters it (iqp_reorder_too_late). Each
 * accepted event is scheduled as an APPLY entry at its ts and, when the
 * caller wants a row from it, a READ entry at ts - lag. An entry leaves
 * once its time is < newest - D - lag, or at the end of input. Entries
 * leave in (time, READ before APPLY, arrival) order. That is the true
 * global order: any event accepted later has ts >= newest - D, so its
 * entries sort at or after the release bound, and nothing released can be
 * overtaken. Memory is the events of D + lag of event time, independent
 * of the input's length.
 *
 * May not touch: counting, features, output; it only orders.
 */
#ifndef IQP_EXPORT_REORDER_H
#define IQP_EXPORT_REORDER_H

#include <stddef.h>
#include <stdint.h>
#include "schemas/event.h"

/* An accepted event, copied into one allocation: ev's pointers (ids,
 * query, items) point into mem; ev.root and ev.scratch are NULL. */
typedef struct iqp_held_event {
    iqp_event ev;
    uint64_t seq;            /* arrival order */
    int row_state;           /* the caller's (export: rows written or not) */
    _Alignas(16) unsigned char mem[];
} iqp_held_event;

typedef enum { IQP_REORDER_READ = 0, IQP_REORDER_APPLY = 1 } iqp_reorder_kind;

typedef struct iqp_reorder iqp_reorder;

iqp_reorder *iqp_reorder_new(int64_t max_disorder_ms, int64_t lag_ms);
/* Frees the buffer and every event still held. */
void iqp_reorder_free(iqp_reorder *r);

/* True when an event at ts would arrive after its place was released. */
int iqp_reorder_too_late(const iqp_reorder *r, int64_t ts);

/* Largest ts accepted so far (INT64_MIN before the first). */
int64_t iqp_reorder_newest(const iqp_reorder *r);

/* Accepts a copy of ev (the caller checked iqp_reorder_too_late): an APPLY
 * entry at ev->ts and, when read is set, a READ entry at ev->ts - lag.
 * Returns the held copy (owned by the buffer until its APPLY leaves). */
iqp_held_event *iqp_reorder_push(iqp_reorder *r, const iqp_event *ev, int read);

/* The next entry that is due (all of them when drain is set): 1 with *kind,
 * *time and *held, or 0 when none is due. After an APPLY entry the caller
 * owns *held and frees it with iqp_held_event_free. */
int iqp_reorder_pop(iqp_reorder *r, int drain, iqp_reorder_kind *kind, int64_t *time,
                    iqp_held_event **held);

void iqp_held_event_free(iqp_held_event *h);

/* Events held now, and the most held at once. */
size_t iqp_reorder_held(const iqp_reorder *r);
size_t iqp_reorder_peak(const iqp_reorder *r);

#endif

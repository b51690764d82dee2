/* reorder.c -- bounded reorder buffer (see reorder.h).
 *
 * A binary min-heap of entries {time, kind, seq, event}. A held event
 * carries its strings and item list in the same allocation, so the buffer
 * costs one malloc per event and no jansson tree (a decoded line's tree is
 * several times the line's size).
 */
#include "export/reorder.h"

#include <stdlib.h>
#include <string.h>

typedef struct entry {
    int64_t time;
    iqp_reorder_kind kind;
    uint64_t seq;
    iqp_held_event *held;
} entry;

struct iqp_reorder {
    int64_t max_disorder_ms, lag_ms;
    int64_t newest;          /* largest accepted ts; INT64_MIN: none yet */
    uint64_t next_seq;
    entry *heap;
    size_t n, cap;
    size_t held, peak;
};

iqp_reorder *iqp_reorder_new(int64_t max_disorder_ms, int64_t lag_ms) {
    iqp_reorder *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->max_disorder_ms = max_disorder_ms;
    r->lag_ms = lag_ms;
    r->newest = INT64_MIN;
    return r;
}

void iqp_reorder_free(iqp_reorder *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n; i++)
        if (r->heap[i].kind == IQP_REORDER_APPLY) iqp_held_event_free(r->heap[i].held);
    free(r->heap);
    free(r);
}

void iqp_held_event_free(iqp_held_event *h) { free(h); }

int iqp_reorder_too_late(const iqp_reorder *r, int64_t ts) {
    return r->newest != INT64_MIN && ts < r->newest - r->max_disorder_ms;
}

int64_t iqp_reorder_newest(const iqp_reorder *r) { return r->newest; }
size_t iqp_reorder_held(const iqp_reorder *r) { return r->held; }
size_t iqp_reorder_peak(const iqp_reorder *r) { return r->peak; }

/* ---- the copy -------------------------------------------------------------- */

/* Appends len bytes at *p and returns where they went. */
static char *put(unsigned char **p, const char *s, size_t len) {
    char *at = (char *)*p;
    if (len) memcpy(at, s, len);
    *p += len;
    return at;
}

static iqp_held_event *hold(const iqp_event *ev, uint64_t seq) {
    size_t n_items = ev->kind == IQP_EVENT_IMPRESSION ? ev->n_items : 0;
    size_t bytes = n_items * sizeof(iqp_item_ref) + ev->event_id_len + ev->request_id_len +
                   ev->query_len + 1 + ev->item.len;
    for (size_t i = 0; i < n_items; i++) bytes += ev->items[i].len;
    iqp_held_event *h = malloc(sizeof *h + bytes);
    if (!h) abort();
    h->ev = *ev;
    h->seq = seq;
    h->row_state = 0;
    h->ev.root = NULL;
    h->ev.scratch = NULL;
    h->ev.arena = NULL; /* the copy owns h->mem only: root, items and scratch stay the original's */
    iqp_item_ref *items = (iqp_item_ref *)h->mem;
    unsigned char *p = h->mem + n_items * sizeof(iqp_item_ref);
    h->ev.event_id = put(&p, ev->event_id, ev->event_id_len);
    h->ev.request_id = put(&p, ev->request_id, ev->request_id_len);
    h->ev.query = put(&p, ev->query, ev->query_len);
    *p++ = '\0';
    h->ev.item.id = put(&p, ev->item.id, ev->item.len);
    for (size_t i = 0; i < n_items; i++) {
        items[i] = ev->items[i];
        items[i].id = put(&p, ev->items[i].id, ev->items[i].len);
    }
    h->ev.items = n_items ? items : NULL;
    h->ev.n_items = n_items;
    return h;
}

/* ---- the heap ------------------------------------------------------------- */

static int before(const entry *a, const entry *b) {
    if (a->time != b->time) return a->time < b->time;
    if (a->kind != b->kind) return a->kind < b->kind;
    return a->seq < b->seq;
}

static void heap_push(iqp_reorder *r, entry e) {
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 1024;
        r->heap = realloc(r->heap, r->cap * sizeof *r->heap);
        if (!r->heap) abort();
    }
    size_t i = r->n++;
    while (i > 0 && before(&e, &r->heap[(i - 1) / 2])) {
        r->heap[i] = r->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    r->heap[i] = e;
}

static entry heap_pop(iqp_reorder *r) {
    entry top = r->heap[0], last = r->heap[--r->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= r->n) break;
        if (c + 1 < r->n && before(&r->heap[c + 1], &r->heap[c])) c++;
        if (!before(&r->heap[c], &last)) break;
        r->heap[i] = r->heap[c];
        i = c;
    }
    if (r->n) r->heap[i] = last;
    return top;
}

iqp_held_event *iqp_reorder_push(iqp_reorder *r, const iqp_event *ev, int read) {
    iqp_held_event *h = hold(ev, r->next_seq++);
    if (ev->ts > r->newest) r->newest = ev->ts;
    heap_push(r, (entry){ev->ts, IQP_REORDER_APPLY, h->seq, h});
    if (read) heap_push(r, (entry){ev->ts - r->lag_ms, IQP_REORDER_READ, h->seq, h});
    if (++r->held > r->peak) r->peak = r->held;
    return h;
}

int iqp_reorder_pop(iqp_reorder *r, int drain, iqp_reorder_kind *kind, int64_t *time,
                    iqp_held_event **held) {
    if (r->n == 0) return 0;
    if (!drain && r->heap[0].time >= r->newest - r->max_disorder_ms - r->lag_ms) return 0;
    entry e = heap_pop(r);
    *kind = e.kind;
    *time = e.time;
    *held = e.held;
    if (e.kind == IQP_REORDER_APPLY) r->held--;
    return 1;
}

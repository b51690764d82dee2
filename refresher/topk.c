/* topk.c -- the CPU's top-K selection, and the item ranks both backends
 * break ties with.
 *
 * Ranks: within one context, entity e's rank is its item id's position in
 * memcmp order (a proper prefix first). The store orders items by length
 * first (cells.h: u16 length, then bytes), so ranks are computed once per
 * scan by sorting each context's items; both backends then break ties by
 * rank, which is the documented "item id bytes ascending".
 *
 * Selection: candidates of (c, w) are c's entities with a nonzero counter
 * in w, keyed by (order key of the smoothed ranking value, rank). "Better"
 * is key descending, then rank ascending: a strict total order, so the
 * K best are one well-defined list. A binary heap of the K best seen so
 * far (worst at the root) takes the candidates one by one, O(n log K), and
 * is then heapsorted in place into best-first order.
 */
#include <stdlib.h>
#include <string.h>

#include "refresher/refresh_internal.h"
#include "refresher/refresh_math.h"

/* ---- item ranks ------------------------------------------------------------- */

static int item_cmp(const void *a, const void *b, void *ud) {
    const iqp_refresh_result *r = ud;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    uint32_t lx = r->ent_item_len[x], ly = r->ent_item_len[y];
    int c = memcmp(r->bytes + r->ent_item_off[x], r->bytes + r->ent_item_off[y], lx < ly ? lx : ly);
    if (c) return c;
    return lx < ly ? -1 : lx > ly;
}

void iqp_refresh_rank_items(iqp_refresh_result *r, size_t c0, size_t c1) {
    uint32_t *idx = NULL;
    size_t cap = 0;
    for (size_t c = c0; c < c1; c++) {
        size_t e0 = r->ctx_ent[c], n = r->ctx_ent[c + 1] - e0;
        if (n > cap) {
            free(idx);
            cap = n;
            idx = malloc(cap * sizeof *idx);
            if (!idx) abort();
        }
        for (size_t i = 0; i < n; i++) idx[i] = (uint32_t)(e0 + i);
        qsort_r(idx, n, sizeof *idx, item_cmp, r);
        for (size_t i = 0; i < n; i++) r->ent_rank[idx[i]] = (uint32_t)i;
    }
    free(idx);
}

/* ---- selection ------------------------------------------------------------------ */

/* x ranks before y. */
static int better(const iqp_topk_slot *x, const iqp_topk_slot *y) {
    if (x->key != y->key) return x->key > y->key;
    return x->rank < y->rank;
}

/* Restores the heap (worst at the root) below i. */
static void sift_down(iqp_topk_slot *h, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, worst = i;
        if (l < n && better(&h[worst], &h[l])) worst = l;
        if (l + 1 < n && better(&h[worst], &h[l + 1])) worst = l + 1;
        if (worst == i) return;
        iqp_topk_slot t = h[i];
        h[i] = h[worst];
        h[worst] = t;
        i = worst;
    }
}

/* Gathers the candidates of (c, w) into s; returns how many. */
static size_t gather(const iqp_refresh_result *r, size_t c, size_t w, iqp_topk_slot *s) {
    size_t nw = r->nw, nc = r->nc, n = 0;
    for (size_t e = r->ctx_ent[c]; e < r->ctx_ent[c + 1]; e++) {
        const int64_t *v = r->sums + (e * nw + w) * nc;
        int any = 0;
        for (size_t k = 0; k < nc; k++) any |= v[k] != 0;
        if (!any) continue;
        s[n].key = iqp_rm_order_key(r->smoothed[(e * nw + w) * nc + (size_t)r->rank_measure]);
        s[n].rank = r->ent_rank[e];
        s[n].entity = (uint32_t)e;
        n++;
    }
    return n;
}

size_t iqp_refresh_topk_segment(const iqp_refresh_result *r, size_t c, size_t w, size_t k_max,
                                iqp_topk_slot *s, uint32_t *out) {
    if (k_max == 0) return 0;
    size_t n = gather(r, c, w, s), m = n < k_max ? n : k_max;
    for (size_t i = m / 2 + 1; i-- > 0;) sift_down(s, m, i);
    for (size_t i = m; i < n; i++) {
        if (!better(&s[i], &s[0])) continue;
        s[0] = s[i];
        sift_down(s, m, 0);
    }
    /* heapsort: the worst of s[0, end] goes to end, so s ends best first */
    for (size_t end = m; end-- > 1;) {
        iqp_topk_slot t = s[0];
        s[0] = s[end];
        s[end] = t;
        sift_down(s, end, 0);
    }
    for (size_t i = 0; i < m; i++) out[i] = s[i].entity;
    return m;
}

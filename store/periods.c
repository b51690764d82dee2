/* periods.c -- the registry of a store's period families (periods.h).
 * A sorted array under one mutex: families are few (a dozen or two), added
 * once per period and dropped once, and read by every scan.
 */
#include "store/periods.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void iqp_periods_init(iqp_periods *p) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
}

void iqp_periods_free(iqp_periods *p) {
    for (size_t i = 0; i < p->n; i++) rocksdb_column_family_handle_destroy(p->f[i].handle);
    for (size_t i = 0; i < p->n_old; i++) rocksdb_column_family_handle_destroy(p->old[i]);
    free(p->f);
    free(p->old);
    pthread_mutex_destroy(&p->lock);
    memset(p, 0, sizeof *p);
}

int64_t iqp_periods_of_slot(const iqp_periods *p, int64_t slot) {
    int64_t q = slot / p->slots;
    return slot % p->slots < 0 ? q - 1 : q; /* floor */
}

int iqp_periods_parse_name(const char *name, int64_t *period) {
    size_t plen = strlen(IQP_PERIOD_PREFIX);
    if (strncmp(name, IQP_PERIOD_PREFIX, plen) != 0 || !name[plen]) return 0;
    char *end = NULL;
    long long v = strtoll(name + plen, &end, 10);
    if (*end) return 0;
    *period = v;
    return 1;
}

void iqp_periods_name(int64_t period, char *out, size_t outlen) {
    snprintf(out, outlen, "%s%" PRId64, IQP_PERIOD_PREFIX, period);
}

/* The index of period in p->f, or where it would go; *found set. */
static size_t locate(const iqp_periods *p, int64_t period, int *found) {
    size_t lo = 0, hi = p->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->f[mid].period < period) lo = mid + 1;
        else hi = mid;
    }
    *found = lo < p->n && p->f[lo].period == period;
    return lo;
}

/* Makes the family of period. RocksDB's C API returns a handle even when
 * the creation failed (*rerr set, the handle empty): that one is destroyed
 * here and NULL returned, so an empty handle never reaches a read or a
 * write. */
static rocksdb_column_family_handle_t *create_family(rocksdb_t *db, const rocksdb_options_t *opts, int64_t period,
                                                     char **rerr) {
    char name[64];
    iqp_periods_name(period, name, sizeof name);
    rocksdb_column_family_handle_t *h = rocksdb_create_column_family(db, opts, name, rerr);
    if (*rerr && h) {
        rocksdb_column_family_handle_destroy(h);
        h = NULL;
    } else if (!h && !*rerr) {
        *rerr = strdup("cannot create a column family");
    }
    return h;
}

static void insert_at(iqp_periods *p, size_t at, int64_t period, rocksdb_column_family_handle_t *h) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 16;
        p->f = realloc(p->f, p->cap * sizeof *p->f);
        if (!p->f) abort();
    }
    memmove(p->f + at + 1, p->f + at, (p->n - at) * sizeof *p->f);
    p->f[at] = (iqp_period_family){period, h, 0};
    p->n++;
}

void iqp_periods_add(iqp_periods *p, int64_t period, rocksdb_column_family_handle_t *h) {
    pthread_mutex_lock(&p->lock);
    int found;
    size_t at = locate(p, period, &found);
    if (found) rocksdb_column_family_handle_destroy(h); /* opened twice: cannot happen */
    else insert_at(p, at, period, h);
    pthread_mutex_unlock(&p->lock);
}

rocksdb_column_family_handle_t *iqp_periods_find(iqp_periods *p, int64_t period) {
    pthread_mutex_lock(&p->lock);
    int found;
    size_t at = locate(p, period, &found);
    rocksdb_column_family_handle_t *h = found && !p->f[at].dropped ? p->f[at].handle : NULL;
    pthread_mutex_unlock(&p->lock);
    return h;
}

rocksdb_column_family_handle_t *iqp_periods_get(iqp_periods *p, rocksdb_t *db,
                                                const rocksdb_options_t *opts, int64_t period,
                                                char **rerr) {
    pthread_mutex_lock(&p->lock);
    int found;
    size_t at = locate(p, period, &found);
    rocksdb_column_family_handle_t *h = NULL;
    if (found && !p->f[at].dropped) {
        h = p->f[at].handle;
    } else if (found) {
        /* a period dropped as expired gets a late event: the drop is
         * done in the database, so a new family of that name is made */
        h = create_family(db, opts, period, rerr);
        if (h) { /* the old handle may be in a reader's hands: kept until free */
            if (p->n_old == p->cap_old) {
                p->cap_old = p->cap_old ? 2 * p->cap_old : 4;
                p->old = realloc(p->old, p->cap_old * sizeof *p->old);
                if (!p->old) abort();
            }
            p->old[p->n_old++] = p->f[at].handle;
            p->f[at].handle = h;
            p->f[at].dropped = 0;
        }
    } else {
        h = create_family(db, opts, period, rerr);
        if (h) insert_at(p, at, period, h);
    }
    pthread_mutex_unlock(&p->lock);
    return h;
}

rocksdb_column_family_handle_t **iqp_periods_live(iqp_periods *p, int64_t lo, int64_t hi, size_t *n) {
    pthread_mutex_lock(&p->lock);
    rocksdb_column_family_handle_t **out = p->n ? malloc(p->n * sizeof *out) : NULL;
    *n = 0;
    for (size_t i = 0; out && i < p->n; i++)
        if (!p->f[i].dropped && p->f[i].period >= lo && p->f[i].period <= hi) out[(*n)++] = p->f[i].handle;
    pthread_mutex_unlock(&p->lock);
    if (p->n && !out) abort();
    return out;
}

int iqp_periods_drop_through(iqp_periods *p, rocksdb_t *db, int64_t last, char **rerr) {
    int dropped = 0;
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->n && p->f[i].period <= last && !*rerr; i++) {
        if (p->f[i].dropped) continue;
        rocksdb_drop_column_family(db, p->f[i].handle, rerr);
        if (*rerr) break;
        p->f[i].dropped = 1;
        dropped++;
    }
    pthread_mutex_unlock(&p->lock);
    return *rerr ? -1 : dropped;
}

/* periods.h -- the column families that hold a store's counts, one per
 * period of slots.
 *
 * Owns: the registry of a store's period families "counts@<period>"
 * (period = floor(slot / slots_per_period)): their names, their handles,
 * creating one on first use and dropping the expired ones, under one lock,
 * as the writer adds and drops families while readers (the publisher's
 * threads) list them.
 *
 * Why periods: a backfill's new days used to land in one counts family
 * whose levels or sorted runs held every older day, and moving the new
 * data down through them made every 1M lines cost more as the store grew
 * (README "Seventh round: what flattens the growth"). A period's family
 * holds only its own days, so it is written while they are new, is not
 * compacted again once they are old, and goes whole (a family drop) once
 * they are past every window.
 *
 * A key lives in exactly one family: the one its slot names (the key's
 * bytes are the same in every layout), so readers merge the families
 * without ever merging values (merged_iter.h). A store made before this
 * layout has slots_per_period 0: everything stays in its one "counts"
 * family, and this registry stays empty.
 *
 * Handles are destroyed only by iqp_periods_free (the store's close), never
 * when a family is dropped, so a reader that took one keeps reading what
 * the family held.
 *
 * May not touch: keys, values or anything else in the store (store.c
 * decides what goes where).
 */
#ifndef IQP_PERIODS_H
#define IQP_PERIODS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <rocksdb/c.h>

/* New stores: 32 slots (32 days at the default 1d coarsest granularity),
 * the length measured in the prototype. Recorded in each store's meta, so
 * a later default does not change an existing store. */
#define IQP_PERIOD_SLOTS_DEFAULT 32
#define IQP_PERIOD_PREFIX "counts@"

typedef struct iqp_period_family {
    int64_t period;
    rocksdb_column_family_handle_t *handle;
    int dropped; /* dropped from the database; the handle lives until free */
} iqp_period_family;

typedef struct iqp_periods {
    pthread_mutex_t lock;
    int64_t slots;         /* slots per period; 0: one "counts" family (older stores) */
    iqp_period_family *f;  /* ascending by period */
    size_t n, cap;
    /* handles of families dropped and then made again (a late write into
     * an expired period): kept for the readers that listed them */
    rocksdb_column_family_handle_t **old;
    size_t n_old, cap_old;
} iqp_periods;

void iqp_periods_init(iqp_periods *p);
/* Destroys every handle (before the database is closed). */
void iqp_periods_free(iqp_periods *p);

int64_t iqp_periods_of_slot(const iqp_periods *p, int64_t slot);
/* 1 and *period when name is a period family's name, else 0. */
int iqp_periods_parse_name(const char *name, int64_t *period);
void iqp_periods_name(int64_t period, char *out, size_t outlen);

/* Registers a family opened with the database. */
void iqp_periods_add(iqp_periods *p, int64_t period, rocksdb_column_family_handle_t *h);

/* The live family of period, created (with opts) when there is none;
 * NULL with *rerr (malloc'd) when RocksDB cannot create it. */
rocksdb_column_family_handle_t *iqp_periods_get(iqp_periods *p, rocksdb_t *db,
                                                const rocksdb_options_t *opts, int64_t period,
                                                char **rerr);

/* The live family of period, or NULL (never creates). */
rocksdb_column_family_handle_t *iqp_periods_find(iqp_periods *p, int64_t period);

/* The live families whose periods lie in [lo, hi], ascending: a malloc'd
 * array (NULL when none) of *n handles, valid until iqp_periods_free. */
rocksdb_column_family_handle_t **iqp_periods_live(iqp_periods *p, int64_t lo, int64_t hi, size_t *n);

/* Drops the live families of periods <= last; returns how many, or -1
 * with *rerr when RocksDB refused one (the ones before it are dropped). */
int iqp_periods_drop_through(iqp_periods *p, rocksdb_t *db, int64_t last, char **rerr);

#endif

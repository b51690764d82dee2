/* store.h -- the RocksDB store: counters, context counts, dedup markers and
 * meta, in one directory, written only in atomic batches.
 *
 * Owns: the column families (see below), their options, the merge operator
 * and expiry compaction filters wiring, the layout check on open, the
 * watermark, and every read and write of the database. Nothing else in iqp
 * includes rocksdb/c.h except store/counters.c.
 *
 *   CF "counts@<period>", one per period of 32 slots (periods.h)
 *                  count key   -> the packed cells of one slot (cells.h,
 *                  counters.h), IQP_COUNTERS(cfg) counters each (merge:
 *                  sum); every read of counts merges the period families
 *                  in key order, and a period past every retention is
 *                  dropped whole
 *   CF "counts"    the same, in a store made before periods (meta
 *                  "layout/period_slots" absent); empty in a newer one
 *   CF "contexts"  context key -> the same, 1 counter each: context_count
 *   CF "dedup"     marker key  -> iqp_marker: int64 LE ts the marker counted
 *                  at, int64 LE watermark when it was written (layout 2)
 *   CF "meta"      "layout" -> canonical layout JSON; "watermark" -> int64
 *                  LE; "src/<id>" -> source position (ingest, Kafka
 *                  offsets): whatever a writer stages with its batch;
 *                  "publish/..." -> the publisher's own state;
 *                  "ingest/pending" -> u64 LE batch whose table files may
 *                  not be ingested yet (iqp_store_set_ingest), then i64 LE
 *                  per file the period it goes to; "layout/period_slots"
 *                  -> the period length, decimal text
 *   CF "pending"   publish queue: u64 BE flush sequence || dirty key ->
 *                  int64 LE commit time (publisher/pending.h); written in
 *                  the same batch as the counts it announces
 *
 * Exactly once: a batch carries counter merges, dedup markers, the new
 * watermark and the source positions they came from, and commits as one
 * RocksDB WriteBatch (WAL on, not fsynced per batch; a crash loses a
 * suffix of whole batches, never part of one). A bulk-loading store
 * (iqp_store_set_ingest) moves a large batch's counts into a table file
 * ingested right after that commit, redone at the next open if a crash
 * comes in between; each counts family it ingested into then holds one
 * reserved key (a sentinel after every count key) that no read of the
 * store returns.
 *
 * Expiry: compaction filters drop count and context cells whose bucket is
 * older than the retention of its granularity (cells.h, window.h) and
 * counter cells whose counters are all zero (rewriting the value that
 * packs them; a key with no cell left goes), and dedup markers that
 * iqp_marker_forgotten says are forgotten. Reads never depend on expiry
 * having run.
 *
 * May not touch: event decoding, aggregation rules, Redis.
 */
#ifndef IQP_STORE_H
#define IQP_STORE_H

#include <stddef.h>
#include <stdint.h>
#include "model/config.h"

typedef struct iqp_store iqp_store;
typedef struct iqp_store_batch iqp_store_batch;

typedef enum {
    IQP_CF_COUNTS = 0,
    IQP_CF_CONTEXTS,
    IQP_CF_DEDUP,
    IQP_CF_META,
    IQP_CF_PENDING,
    IQP_CF__COUNT
} iqp_cf;

/* A consistent point-in-time view for reads (a RocksDB snapshot). */
typedef struct iqp_store_snapshot iqp_store_snapshot;

typedef enum {
    IQP_STORE_READ_WRITE = 0, /* create when missing; write the layout on creation */
    IQP_STORE_READ_ONLY = 1,  /* must exist; never writes; may run beside a writer */
    IQP_STORE_SCRATCH = 2,    /* read-write for a store deleted after use (iqp export's):
                                 no write-ahead log, memtables not flushed at close */
} iqp_store_mode;

/* Opens dir. cfg is the running config; in read-write mode a new store
 * records cfg's layout and an existing one must match it (else NULL and a
 * message naming the differences). In read-only mode, when cfg is NULL the
 * store's own layout is used (iqp_store_config tells it).
 *
 * Only an absent directory, or one holding no RocksDB file, gets a new
 * store, and it becomes visible at dir complete with its layout record
 * (see store.c). A directory with RocksDB files that RocksDB cannot open
 * (CURRENT lost, ...) or that lacks a column family iqp needs is refused
 * in both modes, with RocksDB's error and dir in the message, and left as
 * it is. On success every column family handle but "pending" (absent in
 * stores older than the publisher, read-only) is valid. */
iqp_store *iqp_store_open(const char *dir, const iqp_config *cfg, iqp_store_mode mode, char *err,
                          size_t errlen);

/* Ends err when a read-write open failed because another process (or
 * another open in this one) holds the store's RocksDB LOCK: a caller that
 * waits for a previous owner to let go retries on it (iqp stream
 * --state-dir). */
#define IQP_STORE_LOCKED_HINT " (is another iqp process writing to it?)"

void iqp_store_close(iqp_store *st);

/* 1 when this open created the store and no batch has been committed to it
 * since. */
int iqp_store_is_fresh(const iqp_store *st);

/* Closes st and, when it is fresh, removes what its open created: the
 * directory when it did not exist before, else only the RocksDB files in
 * it. For a run that failed before counting anything: it leaves nothing
 * behind, and never removes what existed before. 1 when it removed. */
int iqp_store_close_discarding(iqp_store *st);

/* The layout and limits in force for this store. */
const iqp_config *iqp_store_config(const iqp_store *st);

/* Newest event time counted (INT64_MIN when empty). */
int64_t iqp_store_watermark(const iqp_store *st);

/* ---- writing --------------------------------------------------------------- */
iqp_store_batch *iqp_store_batch_new(iqp_store *st);
void iqp_store_batch_free(iqp_store_batch *b);
/* Empties b for reuse, keeping its memory: a writer that commits large
 * batches one after another does not fault in fresh pages for each. */
void iqp_store_batch_clear(iqp_store_batch *b);
/* Adds the counters vec (n <= 32 wide) to the cell key (cells.h: prefix,
 * granularity, bucket) of cf (counts or contexts). Consecutive merges of
 * cells of one stored key (one slot) in ascending (granularity, bucket)
 * order become one RocksDB merge; any other order is still exact, only
 * more merges. */
void iqp_store_batch_merge(iqp_store_batch *b, iqp_cf cf, const void *key, size_t klen,
                           const int64_t *vec, size_t n);
/* The same, for a writer that already knows the parts of the cell key:
 * body is the (context, entity) part (the cell key without its 9-byte
 * bucket suffix). merge_cell always starts a new merge of the stored key
 * of (body, slot of gran_index/bucket); merge_more adds a cell to the
 * merge that the previous merge / merge_cell / merge_more call opened: the
 * caller guarantees the cell belongs to the same stored key (same cf,
 * body and slot) and comes after the previous cell in (granularity,
 * bucket) order (else abort: a caller's bug). A writer that sorted its
 * cells (the combiner's drain) so saves rebuilding, parsing and comparing
 * a key per cell. */
void iqp_store_batch_merge_cell(iqp_store_batch *b, iqp_cf cf, const void *body, size_t blen,
                                int gran_index, int64_t bucket, const int64_t *vec, size_t n);
void iqp_store_batch_merge_more(iqp_store_batch *b, int gran_index, int64_t bucket,
                                const int64_t *vec, size_t n);
/* The slot (cells.h) the cell (gran_index, bucket) is stored under: a
 * writer sorts by it to make cells of one stored key consecutive. */
int64_t iqp_store_batch_slot(const iqp_store_batch *b, int gran_index, int64_t bucket);
/* Counter merges (stored keys written) in b since it was cleared. */
size_t iqp_store_batch_merges(const iqp_store_batch *b);
void iqp_store_batch_put(iqp_store_batch *b, iqp_cf cf, const void *key, size_t klen,
                         const void *val, size_t vlen);
void iqp_store_batch_delete(iqp_store_batch *b, iqp_cf cf, const void *key, size_t klen);
void iqp_store_batch_set_watermark(iqp_store_batch *b, int64_t watermark_ms);
size_t iqp_store_batch_bytes(const iqp_store_batch *b);
/* Commits atomically; on success the store's watermark advances. */
int iqp_store_batch_commit(iqp_store *st, iqp_store_batch *b, char *err, size_t errlen);

/* Bulk load (`iqp backfill`, `iqp stream`): from now on, a batch with min_merges or
 * more counts merges writes them into a table file (SST) that is ingested
 * into the counts family, instead of through the memtable and the
 * write-ahead log; the rest of the batch commits as before. Exactly once
 * all the same: a crash between the batch's commit and the file's
 * ingestion is finished by the next read-write open (store.c, "table-file
 * ingestion"), and an open that cannot finish it (the file was removed)
 * is refused. Snapshots, scans without a snapshot and checkpoints taken
 * through this handle (other threads of the writer's process: the
 * publisher) never fall between a batch's commit and its ingestion; a
 * read-only open that lands there opens again until the writer finished
 * (up to 5 s; a writer that died there leaves it for the next read-write
 * open), and a checkpoint of a read-only open that caught it fails (iqp
 * backup retries). If the ingestion fails after the commit, the handle
 * is torn until reopened: no more commits, no snapshots (NULL), and scans
 * of counts or contexts without a snapshot fail. 0 turns it off
 * (the default); a read-only or scratch store ignores it. Call before the
 * first commit. IQP_STORE_INGEST_MIN_MERGES is the threshold of both. */
#define IQP_STORE_INGEST_MIN_MERGES 2048
void iqp_store_set_ingest(iqp_store *st, size_t min_merges);

/* 1 when st bulk-loads (iqp_store_set_ingest on): filling a batch then
 * touches nothing of the store but the batch's own buffers (counts are
 * held for the commit, which routes them to their families), so one
 * thread may fill a batch while another commits a different one. */
int iqp_store_fills_locally(const iqp_store *st);

/* ---- dedup markers (README "Exact counting rules", rule 7) ----------------
 * A marker remembers the ts it counted at (the action min-ts rule moves a
 * count when an earlier ts arrives) and the watermark at the moment it was
 * written. It is forgotten by processing progress alone: once the
 * watermark has passed written_wm + dedup_horizon. Where a micro-batch
 * ended never matters, so the aggregator applies this one rule to markers
 * of its unflushed batch and of the store alike, and the compaction filter
 * drops exactly the markers it would ignore. */
typedef struct iqp_marker {
    int64_t ts;         /* event time the marked thing counts at */
    int64_t written_wm; /* watermark (with the marking event) when written */
} iqp_marker;

#define IQP_MARKER_VALUE_LEN 16

/* 1 when m is forgotten under watermark wm (written_wm < wm - horizon). */
int iqp_marker_forgotten(const iqp_marker *m, int64_t wm, int64_t horizon_ms);
void iqp_marker_encode(const iqp_marker *m, unsigned char out[IQP_MARKER_VALUE_LEN]);
/* 0, or -1 when val is not a marker value. An 8-byte value of layout 1
 * (ts only) reads as written at its own ts, the rule layout 1 applied. */
int iqp_marker_decode(const void *val, size_t vlen, iqp_marker *m);

void iqp_store_batch_put_marker(iqp_store_batch *b, const unsigned char *key, size_t klen,
                                const iqp_marker *m);

/* ---- reading ------------------------------------------------------------- */
/* 1 found (value in *m), 0 absent, -1 error. Forgotten markers are returned
 * too: the caller applies iqp_marker_forgotten with its own watermark. */
int iqp_store_get_marker(iqp_store *st, const unsigned char *key, size_t klen, iqp_marker *m);
/* 1 found (*val malloc'd), 0 absent, -1 error. */
int iqp_store_get_meta(iqp_store *st, const char *key, char **val, size_t *vlen);

/* Calls fn for each cell "prefix || gran_index || bucket" of cf with
 * bucket in [first, last], ascending, with its counters decoded into vec
 * (n wide). Returns 0, or -1 with err on an iterator error or a value that
 * does not decode. */
typedef void (*iqp_store_bucket_fn)(void *ud, int64_t bucket, const int64_t *vec, size_t n);
int iqp_store_scan_buckets(iqp_store *st, iqp_cf cf, const unsigned char *prefix, size_t plen,
                           int gran_index, int64_t first, int64_t last, size_t n,
                           iqp_store_bucket_fn fn, void *ud, char *err, size_t errlen);

/* The same, read from snap (NULL: the latest state). */
int iqp_store_scan_buckets_at(iqp_store *st, const iqp_store_snapshot *snap, iqp_cf cf,
                              const unsigned char *prefix, size_t plen, int gran_index,
                              int64_t first, int64_t last, size_t n, iqp_store_bucket_fn fn,
                              void *ud, char *err, size_t errlen);

/* The cells of one counts or contexts value as iqp_store_scan_keys gives
 * it, in (granularity, bucket) order, counters decoded into vec (n wide,
 * missing ones 0). 0, or -1 when the value does not decode. */
typedef void (*iqp_store_cell_fn)(void *ud, int gran_index, int64_t bucket, const int64_t *vec,
                                  size_t n);
int iqp_store_value_cells(const char *val, size_t vlen, size_t n, iqp_store_cell_fn fn, void *ud);

/* Snapshots: reads through one see the store as of its creation, while
 * writers go on. Safe to create from any thread. NULL only when a bulk
 * load's ingestion failed (iqp_store_set_ingest: torn). */
iqp_store_snapshot *iqp_store_snapshot_new(iqp_store *st);
void iqp_store_snapshot_free(iqp_store *st, iqp_store_snapshot *snap);

/* Calls fn for each key of cf from `from` (NULL: the first key) in key
 * order, until fn returns non-zero. snap may be NULL. A column family an
 * older store lacks reads as empty. 0, or -1 with err. */
typedef int (*iqp_store_key_fn)(void *ud, const unsigned char *key, size_t klen, const char *val,
                                size_t vlen);
int iqp_store_scan_keys(iqp_store *st, const iqp_store_snapshot *snap, iqp_cf cf,
                        const void *from, size_t flen, iqp_store_key_fn fn, void *ud, char *err,
                        size_t errlen);

/* An iterator over the keys of cf, for a caller that walks several stores
 * side by side (the refresher's merge over partition stores): created at
 * the first key >= from (NULL: the first key), read from snap (may be
 * NULL), with the same view as iqp_store_scan_keys. Key and value point
 * into the iterator until it moves. A column family an older store lacks
 * reads as empty. iqp_store_iter_free returns 0, or -1 with err when the
 * walk met a read error; NULL from _new with err. */
typedef struct iqp_store_iter iqp_store_iter;
iqp_store_iter *iqp_store_iter_new(iqp_store *st, const iqp_store_snapshot *snap, iqp_cf cf,
                                   const void *from, size_t flen, char *err, size_t errlen);
int iqp_store_iter_valid(const iqp_store_iter *it);
const unsigned char *iqp_store_iter_key(const iqp_store_iter *it, size_t *klen);
const char *iqp_store_iter_value(const iqp_store_iter *it, size_t *vlen);
void iqp_store_iter_next(iqp_store_iter *it);
int iqp_store_iter_free(iqp_store_iter *it, char *err, size_t errlen);

/* Calls fn(key, value) for each meta key starting with prefix. */
typedef void (*iqp_store_meta_fn)(void *ud, const char *key, size_t klen, const char *val,
                                  size_t vlen);
int iqp_store_scan_meta(iqp_store *st, const char *prefix, iqp_store_meta_fn fn, void *ud);

/* ---- maintenance --------------------------------------------------------- */
/* Flushes memtables and compacts every column family fully (runs the
 * expiry filters over everything). */
int iqp_store_compact(iqp_store *st, char *err, size_t errlen);
/* Number of keys in cf (exact, by scanning; for tests and benchmarks). */
uint64_t iqp_store_count_keys(iqp_store *st, iqp_cf cf);
/* 1 when dir holds RocksDB files (a store, whole or damaged: opening it
 * says which), 0 when it is absent or holds none (an open for writing
 * would create the store there), -1 with err when it cannot be read. */
int iqp_store_present(const char *dir, char *err, size_t errlen);

/* Number of cells packed in the values of cf (counts, contexts; exact, by
 * scanning). */
uint64_t iqp_store_count_cells(iqp_store *st, iqp_cf cf);
/* Bytes of SST and WAL files in the store directory. */
uint64_t iqp_store_disk_bytes(iqp_store *st);

/* What a writable store wrote since it was opened, from RocksDB's
 * statistics: logical bytes handed to it (keys + values + batch overhead,
 * what the write-ahead log gets), bytes flushed from memtables into L0
 * files, bytes compactions rewrote, and bytes of table files ingested.
 * Write amplification on the table files is (flushed + ingested +
 * compacted) / (flushed + ingested). -1 for a read-only store. */
typedef struct iqp_store_io {
    uint64_t logical, flushed, compacted;
    uint64_t ingested, ingested_files; /* table files ingested (iqp_store_set_ingest) */
} iqp_store_io;
int iqp_store_io_stats(iqp_store *st, iqp_store_io *io);

/* Writes the memtables into table files now (close does it too). */
void iqp_store_flush(iqp_store *st);

/* ---- backups (iqp backup) -------------------------------------------------- */

/* Writes a RocksDB checkpoint of st into dir, which must not exist: hard
 * links to the immutable table files (copies across file systems) and
 * copies of the MANIFEST and the live WAL. It is one point in time, so the
 * counters come with exactly the Kafka offsets they were counted up to,
 * and opens as a store of its own. Works on a read-only store beside a
 * running writer; a file the writer deletes meanwhile (compaction) fails
 * it with a message, and taking it again from a fresh open succeeds.
 * Returns 0, or -1 with err. */
int iqp_store_checkpoint(iqp_store *st, const char *dir, char *err, size_t errlen);

#endif

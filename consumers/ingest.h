/* ingest.h -- counting event log files into a store, resumably.
 *
 * Owns: the loop line -> decode -> aggregate -> flush for log files, the
 * routing of rejected lines to the dead-letter sink, progress reporting,
 * and each file's committed position. A regular file is identified by its
 * content (logfile.h: iqp_logfile_identity); its position, "how many lines
 * of it are counted", is staged into every flush, so it commits in the
 * same RocksDB batch as the counts it produced. Running a backfill again
 * therefore skips files already ingested whole and resumes a file that a
 * crash interrupted at its last committed line: nothing is counted twice,
 * nothing is lost. Standard input has no identity: a repeat of it relies on
 * the event-id dedup markers alone (README).
 *
 * May not touch: counting rules (aggregator/), decoding rules (schemas/).
 */
#ifndef IQP_INGEST_H
#define IQP_INGEST_H

#include <stdint.h>
#include "consumers/deadletter.h"
#include "store/store.h"

typedef struct iqp_ingest_stats {
    uint64_t lines;          /* non-empty lines read (resumed lines excluded) */
    uint64_t bad;            /* dead-lettered: invalid or future */
    uint64_t counted, duplicate, late, future;
    uint64_t bytes_in;       /* bytes read from files (compressed size) */
    uint64_t files_done, files_skipped, lines_resumed;
} iqp_ingest_stats;

typedef struct iqp_ingest iqp_ingest;

/* progress: print a progress line to stderr about twice a second. */
iqp_ingest *iqp_ingest_new(iqp_store *st, iqp_deadletter *dl, int progress);
void iqp_ingest_free(iqp_ingest *ing);

/* Counts on n threads sharded by context key (aggregator.h:
 * iqp_aggregator_set_threads); n <= 1 counts on the caller's thread. The
 * store, dead letters and positions come out the same for any n. Call
 * before the first file. */
void iqp_ingest_set_threads(iqp_ingest *ing, unsigned n);

/* Counts one file ("-" = stdin) and commits it. Returns 0, 1 when stopped
 * by iqp_stop_request (util/stop.h; what was counted is committed with its
 * position, so the next run resumes there), or -1 with err on an
 * operational failure (unreadable file, store write error). */
int iqp_ingest_file(iqp_ingest *ing, const char *path, char *err, size_t errlen);

const iqp_ingest_stats *iqp_ingest_get_stats(const iqp_ingest *ing);

/* Cells merged per flush etc., for summaries and benchmarks. */
const struct iqp_agg_stats *iqp_ingest_agg_stats(const iqp_ingest *ing);

#endif

/* stream.c -- the Kafka stream processor (see stream.h for the contract).
 *
 * Design
 * ------
 * Three threads. The consuming thread polls: rd_kafka_consumer_poll()
 * hands over one message at a time (librdkafka prefetches in its own
 * threads) and runs the rebalance callbacks, which must stay on the
 * polling thread. It hands each message to the decode thread ("Decode
 * thread") and counts the decoded messages it gets back, in poll order,
 * with the aggregator; the micro-batch is flushed when it is big enough
 * (aggregator's should_flush) or its time is up ("Cut rule"). The store
 * write runs on the aggregator's writer thread ("Pipeline"). A flush is:
 *
 *   1. dead letters made durable (a Kafka sink waits for its acks),
 *   2. one store WriteBatch: counts + markers + watermark + the next offset
 *      of every partition consumed since the last flush
 *      (meta "src/kafka/<topic>/<partition>" = {"next_offset": N}),
 *   3. those offsets committed to Kafka: asynchronously in steady state,
 *      synchronously when partitions are revoked and at shutdown.
 *
 * Decode thread. JSON decoding and normalization (jansson, utf8proc) took
 * about 40% of the consuming thread (perf, bench/stream's log), so they
 * run beside the counting: polled messages go into decode_queue's fed mode
 * (consumers/decode_queue.h) in batches of up to 256, a partly filled one
 * as soon as a poll finds nothing more, and come back decoded in the
 * order they went in; the message stays alive (its payload is decoded in
 * place) until it is counted. At most IQP_DECODE_QUEUE_DEPTH batches are
 * out; when the queue is full the consuming thread counts the oldest
 * first. Everything about a message that is not decoding (its partition,
 * restore mode, offsets, dead letters, latency stamps) happens when it is
 * counted, on the consuming thread, as before. The one rule: every cut,
 * every rebalance callback and every error message first counts all that
 * was polled before it (pipeline_drain), so a batch, a revoke, a dropped
 * batch's rewind or a lost offset always sees exactly the messages polled
 * before it, as when each message was counted as soon as it was polled:
 * no message of a revoked partition is counted after its revoke, and none
 * is left in the queue across a rewind.
 *
 * Pipeline. Step 2 runs on the aggregator's writer thread
 * (iqp_aggregator_flush_begin, as backfill): while batch k is written,
 * batch k+1 is consumed, decoded and counted, and dedup lookups see batch
 * k in flight. The loop checks after every decoded batch whether the write is
 * done (iqp_aggregator_flush_written; polls are cut to WRITE_POLL_MS while
 * one is in flight) and then collects it and does step 3 for the offsets
 * that batch carried (part_state.writing), so a write is published about
 * as soon as it is on disk, as when the loop wrote it itself. At most one
 * batch is in flight: the next flush first collects and publishes it
 * (waiting for it if need be), and only then probes ownership for its own
 * batch ("Zombie writes"), so every probe still comes right before the
 * write of the batch it vouches for. A revoke, an assignment and the
 * shutdown wait for the write in flight first.
 *
 * Cut rule. A batch is cut when its time is up and no write is in
 * flight, or when it is full (should_flush: flush_events or the cell cap;
 * that cut waits for the write in flight). Its time is up cut_interval()
 * after the last cut: flush_ms less the time the last batch took from its
 * cut to the end of its write (probe, dead letters, store write), so
 * that an event waits about flush_ms from its arrival to the end of its
 * batch's write, not flush_ms plus the write (bench/stream at half rate:
 * writes of 0.1-0.5 s made p99 flush_ms + 0.3-0.6 s). At least flush_ms
 * / 2: at most twice the flushes of a plain flush_ms interval, because
 * slow writes (a loaded machine) would otherwise shorten the interval,
 * smaller batches fold less, and writes get slower per event (a floor
 * of flush_ms / 4 used +25% CPU at half rate at load 9). A batch whose time is up while the previous one is still
 * being written keeps taking messages until that write ends and is cut
 * then: the consuming thread never idles waiting for the writer, and
 * under a backlog the batches size themselves to the store's write speed,
 * where hot cells fold (bench/stream's log: ~25 us of write per event in
 * 17k-event batches, ~9 us in 64k-event ones). When the stream keeps up,
 * a write ends well inside the interval.
 *
 * Store writes. Every store the stream writes (the single store, each
 * partition store) bulk-loads large batches (iqp_store_set_ingest at
 * IQP_STORE_INGEST_MIN_MERGES, as `iqp backfill`): a batch with that many
 * counts merges or more -- a backlog's, 17k-64k events -- writes them as
 * one sorted table file ingested into the counts family, instead of
 * memtable inserts, which bound the writer thread (perf). The rest of the
 * batch, the Kafka offsets included, still commits as one WriteBatch, and
 * store.c's redo protocol ("table-file ingestion") keeps counts, markers
 * and offsets exactly once across a crash; a store is reopened on every
 * start and assignment, which finishes an interrupted batch before its
 * offsets are read. The publisher on the same store (--redis) never takes
 * a snapshot between such a batch's commit and its ingestion (store.c's
 * ingest gate), so it cannot publish a context count without the counts
 * of the same batch. Steady-state batches (a few hundred merges) stay on
 * the memtable path.
 *
 * Partition table. Every assigned partition has a part_state: the next
 * offset to commit, and restore_until, the group's committed offset when
 * it was assigned and that is ahead of this store's own offset. Messages
 * below restore_until were counted by another instance: they only rebuild
 * dedup markers (iqp_aggregator_restore). The table is a flat array; an
 * instance owns tens of partitions, so a linear search is cheapest.
 *
 * Rebalance. The rebalance callback runs inside consumer_poll. On revoke
 * it flushes (synchronous commit) before releasing the partitions, so the
 * next owner starts exactly where this store stopped. On assign it reads
 * this store's offsets and the group's committed offsets and seeks each
 * partition to the right start. Both the eager and the cooperative
 * protocol are handled.
 *
 * Partition-owned state (--state-dir, issue 16 items 1-2). Instead of
 * one store for whatever this instance consumed, each input partition
 * number p has a store of its own, state_dir/partition-<p>, with its own
 * aggregator (a "task"): partition p of the impressions topic and
 * partition p of the actions topic count into it (events are keyed by
 * normalized query, so p's query contexts are whole there), and its
 * WriteBatches carry only p's offsets. A cut writes every task's batch,
 * each on its aggregator's writer thread, and collects them all. The
 * consumer is forced to the range assignor and the two topics must have
 * the same partition count, so one member gets partition p of both
 * (checked at start and on every assignment). On assignment the task
 * opens the store and p resumes at its stored offsets; the group's
 * committed offset counts only for a store that holds none yet (its
 * first owner). On revoke the tasks are flushed and closed, which
 * releases the store's RocksDB LOCK. When the instances share the state
 * dir the state moves with its partition, and that LOCK is the fence: a
 * new owner waits (LOCK_WAIT_MS, then fatal) until the previous owner,
 * maybe stalled, let go; whatever the old owner wrote before, counts and
 * offsets together, is what the new one continues from. So the kill -9
 * and stall windows of "Zombie writes" below cannot count twice here:
 * offsets and counts live in one system. No checkpoint topic is read
 * (the stores are the truth). With --redis (only with repartitioned
 * input, where every context is whole in one store) the caller attaches
 * a publisher to each partition store through on_partition_open /
 * on_partition_close (publisher/publisher.h's slice mode): it starts
 * when the partition is assigned and stops, draining, before the store
 * is released, so its slice lease is free when the next owner opens it.
 *
 * Empty-disk takeover (--checkpoint-dir CKDIR, issue 16 item 2). When the
 * state dir is local to each instance, a partition's state reaches its
 * next owner through CKDIR, which the instances share
 * (partition_checkpoint.h). A partition store is self-consistent after
 * every batch (counts, markers and offsets commit together), so any
 * RocksDB checkpoint of it is a correct state to resume from: replaying
 * Kafka from its stored offsets counts the rest exactly once (while the
 * broker still keeps those messages). Its "progress" is the sum of its
 * next offsets of both topics.
 *   - Writing: each owned partition whose store has progressed past the
 *     newest checkpoint known is checkpointed every checkpoint_interval_ms
 *     (the first one within FIRST_CHECKPOINT_CHECK_MS of the partition's
 *     first write, when the partition has none yet), and once more when
 *     it is released (after the revoke's final flush): CKDIR/partition-<p>/
 *     <progress>-<ms>-<pid>, written as .tmp, synced and renamed; the
 *     IQP_PCK_KEEP with the most progress are kept. One checkpoint at a
 *     time, on a thread of its own (partition_checkpoint.h's writer: a
 *     memtable flush, hard links and a sync, 10-50 ms each, that the
 *     consuming thread used to wait for), while batches go on being
 *     written; its progress is read from the generation written, so its
 *     name says what it holds. A store waits for its checkpoint in flight
 *     before it closes, and its final one is waited for. The interval
 *     bounds that cost and the replay after a kill -9.
 *   - Restoring, on assignment: the generation with the most progress
 *     (not the latest written) is restored over the local store when that
 *     is missing or has less progress (staged, synced, renamed:
 *     store/backup.c's restore), else the local store is used as it is.
 *     A stalled former owner that writes a checkpoint late cannot move a
 *     partition back: its generation wins only with more progress, and is
 *     then a correct state too (it wrote only batches it had counted
 *     once). Each restore is logged and measured
 *     (iqp_partition_restore_seconds, _bytes_total, iqp_partition_restores_total).
 *   - The group's committed offsets never decide a start: a partition
 *     with no local store and no checkpoint starts at auto.offset.reset,
 *     because an offset the group published may come from a store on a
 *     disk this instance cannot see (its counts would be lost).
 * Without a shared LOCK two instances may count one partition for a
 * moment (a stalled owner past its session); each writes only its own
 * local store, and only one lineage continues: the next owner's.
 *
 * Repartitioned input (--repartition, issue 16 item 1). When the input
 * topics are not keyed by normalized query, a first stage
 * (consumers/repartition.h) forwards every input message, unchanged, to
 * the partitions of two repartition topics whose slice owns one of its
 * contexts (aggregator/shards.h: iqp_count_slices_of, R = their
 * partition count), with the header iqp.origin "<partition>/<offset>".
 * This stream then reads the repartition topics with a state dir, and
 * partition store r counts only the contexts of slice r
 * (iqp_aggregator_set_slice): every context is whole in one store. The
 * first stage commits an input offset only after the broker acknowledged
 * every record before it, so a crash resends records and loses none.
 * Resent records are dropped here: per origin (input topic, partition)
 * each task keeps the highest origin offset it applied ("applied", this
 * batch included; "staged", as of the batch last handed to the writer),
 * written with the counts and offsets as meta "src/origin/<input
 * topic>/<partition>" = {"applied": N}, and a record whose origin offset
 * is not above it changes nothing (outcome "resent"). That is exact
 * because records of one origin reach a repartition partition in origin
 * order (one idempotent producer at a time) and every sender (a new
 * owner resending from the committed offset, a stalled former owner
 * finishing its queue) sends a contiguous run of the records routed
 * there, starting at most one past what was applied: the next record
 * due is always counted, a copy never. A dropped batch reverts applied
 * to staged, as its messages are read again. The partition count R is
 * kept in each store (meta "src/origin/slices"); a store is refused under
 * another one, since its contexts were sliced by R.
 *
 * Zombie writes: a batch is written only while this member owns its
 * partitions. A member that stalls (SIGSTOP, swap, a starved CPU) past
 * session.timeout.ms is dropped from the group by the broker, and its
 * partitions go to another member, which starts from the published
 * offsets. librdkafka tells the stalled member only later: when its own
 * session timer or a refused heartbeat marks the assignment lost (its
 * timer runs from the last acknowledged heartbeat, so it fires after the
 * broker's), and the rebalance callback runs only inside a later
 * consumer_poll. A member that flushed in between (a flush overdue after
 * the stall, or a member cut off from the coordinator but not from the
 * partition leaders) wrote and published a batch that the new owner,
 * started from the older offsets, counted again. The order now is:
 *
 *   1. probe: commit the offsets already published (a no-op in content)
 *      and wait for the coordinator's answer (PROBE_MS at most). The
 *      coordinator checks the member id and generation of every commit:
 *      UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION (or librdkafka's own
 *      __ASSIGNMENT_LOST) means the partitions may be someone else's now:
 *      the batch is dropped, never written, and every partition is read
 *      again from where the store stopped (rewind), so if it is still
 *      ours nothing is lost and if it is not the coming revoke removes it.
 *      REBALANCE_IN_PROGRESS still proves membership: during a rebalance
 *      no partition moves before its owner's revoke callback returns.
 *      No answer (coordinator unreachable) writes nothing either: the
 *      batch is held and the probe retried at the next flush;
 *   2. the store write (counts + offsets), at once after the answer;
 *   3. publish (checkpoint, acknowledged; group commit).
 *
 * So a write starts only after the coordinator confirmed, a moment
 * before, that the group had not moved on; a stall must now fall inside
 * the few milliseconds between that answer and the end of the write's
 * checkpoint, instead of anywhere in the flush interval, to double count
 * (the same window as a kill -9 there, README "Kafka: exactly once").
 * Closing it needs the offsets and the counts in one system (partition-
 * owned state, issue 16 items 1-2). A lost assignment seen in the
 * revoke callback drops the batch the same way.
 *
 * Health (/healthz). Two parts, renewed by the loop every HEALTH_EVERY_MS
 * and stale (unhealthy) when the loop has not renewed them for
 * HEALTH_STALE_MS, i.e. when it is stuck in a blocking call:
 *   kafka  ok while at least one real broker connection is UP, from
 *          librdkafka's statistics (statistics.interval.ms, default here
 *          1000) and at once on RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN;
 *          "no broker connected" from the start until the first is up;
 *   redis  (when publishing) ok while the publisher holds a working
 *          connection (its iqp_redis_connected gauge, which it checks on
 *          every round and lease renewal, every 5 s at most).
 * A fatal failure (store or dead-letter write) sets a third part, stream,
 * for good. So /healthz turns 503 within about 2 s of the last broker
 * going down (5 s stated), and 200 again within 2 s of one coming back.
 *
 * Latency. Each counted event's Kafka timestamp (producer create time) is
 * kept until its flush commits; the difference to the commit time goes
 * into a 1 ms-resolution histogram (p50/p99 for the summary) and into the
 * iqp_event_to_store_seconds metric.
 */
#include "consumers/stream.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aggregator/aggregator.h"
#include "consumers/decode_queue.h"
#include "consumers/partition_checkpoint.h"
#include "consumers/repartition.h"
#include "schemas/event.h"
#include "util/clock.h"
#include "util/stop.h"

#define POLL_MS 100
#define WRITE_POLL_MS 2           /* ... while a write is in flight (publish it at once) */
#define PROBE_MS 2000             /* ownership probe: the coordinator's answer */
#define CLOSE_PROBE_MS 1000
#define PUBLISH_MS 10000          /* checkpoint acks, per flush and on revoke */
#define CLOSE_PUBLISH_MS 3000
#define CHECKPOINT_READ_MS 60000  /* on assignment: retried until then, then fatal */     /* ... at shutdown (SIGTERM must end within 10 s) */
#define DL_CLOSE_TIMEOUT_MS 3000
#define LAT_BINS 120001         /* 0..120000 ms (1 ms bins); the last holds everything above */
#define DL_FLUSH_TIMEOUT_MS 30000
#define STORE_SIZE_EVERY_MS 5000
#define META_PREFIX "src/kafka/"
#define ORIGIN_PREFIX "src/origin/"
#define SLICES_KEY ORIGIN_PREFIX "slices"
#define HEALTH_EVERY_MS 250
#define HEALTH_STALE_MS 10000
#define LOCK_WAIT_MS 60000        /* a partition store's previous owner must let go by then */
#define LOCK_RETRY_MS 200
#define FIRST_CHECKPOINT_CHECK_MS 1000 /* a partition with no checkpoint yet: looked at this often */

enum { TOPIC_IMPRESSIONS = 0, TOPIC_ACTIONS = 1, N_TOPICS = 2 };

/* Where the counts of some input partitions go: a store and the
 * aggregator that writes it. Single-store mode has one task (partition
 * -1) for every partition, on the caller's store; with a state dir each
 * input partition number p has its own, state_dir/partition-<p>, holding
 * partition p of both topics ("Partition-owned state"). */
/* Repartitioned input: how far a task counted one input partition. */
typedef struct origin_pos {
    int topic;                  /* TOPIC_* of the input */
    int32_t partition;          /* input partition */
    int64_t applied;            /* highest origin offset counted, this batch included; -1 none */
    int64_t staged;             /* ... as of the batch last handed to the writer */
} origin_pos;

typedef struct task {
    int32_t partition;          /* -1: the single store */
    iqp_store *st;
    iqp_aggregator *agg;
    int owned;                  /* the store was opened here and is closed with the task */
    uint64_t bytes_reported;    /* agg's batch_bytes already in iqp_store_bytes_written_total */
    /* --checkpoint-dir ("Empty-disk takeover") */
    int64_t ck_progress;        /* progress of the newest checkpoint known of this partition; -1 none */
    int64_t ck_due_ms;          /* when to look at the store's progress again */
    origin_pos *origins;        /* repartitioned input: per input partition seen */
    size_t n_origins, cap_origins;
    void *hook;                 /* on_partition_open's handle */
    int hooked;                 /* on_partition_open succeeded: on_partition_close is owed */
} task;

/* One assigned partition. */
typedef struct part_state {
    int topic;                  /* TOPIC_* */
    int32_t partition;
    int64_t next_offset;        /* offset after the last message handled; -1 none yet */
    int64_t restore_until;      /* messages below this only restore markers; -1 none */
    int64_t published;          /* offset a new owner would start from (last published); -1 none */
    int64_t rewind;             /* where to read again if the batch is dropped (may be logical) */
    int dirty;                  /* next_offset not yet flushed */
    int writing;                /* the batch in flight holds written_offset (see "Pipeline") */
    int64_t written_offset;
    task *task;                 /* where its events are counted */
} part_state;

struct iqp_stream {
    rd_kafka_t *rk;
    iqp_decode_queue *dq;       /* polled messages, decoded on its thread ("Decode thread") */
    const iqp_config *cfg;
    task **tasks;               /* one (single store), or one per owned partition number */
    size_t n_tasks, cap_tasks;
    char *state_dir;            /* NULL: single store */
    char *ckdir;                /* --checkpoint-dir (with state_dir); NULL: none */
    iqp_pck_writer *ckw;        /* with ckdir: writes one checkpoint at a time off this thread */
    int64_t ckpt_interval_ms;
    iqp_deadletter *dl;
    iqp_metrics *m;
    iqp_checkpoints *ckpt;
    char *topics[N_TOPICS];
    char *topic_labels[N_TOPICS]; /* escaped for metric labels */
    char *origin_topics[N_TOPICS]; /* repartitioned input: the input topics; NULL: plain input */
    int32_t n_slices;           /* repartitioned input: the topics' partition count R */
    int64_t flush_ms;
    int progress;
    void (*on_tick)(void *arg, int stopping);
    void *tick_arg;
    part_state *parts;
    size_t n_parts, cap_parts;
    int fatal;                  /* a flush failed: stop, commit nothing more */
    char fatal_msg[1100];
    int closed;
    int closing;                /* shutting down: shorter waits */
    rd_kafka_queue_t *probe_q;  /* answers to ownership probes (see "Zombie writes") */
    uintptr_t probe_seq;        /* the probe being waited for */
    int held;                   /* the last probe got no answer: the batch waits */
    int ckpt_unacked;           /* checkpoints queued and not yet waited for (commit_offsets) */
    iqp_stream_stats stats;
    uint64_t batch_events;      /* messages handled since the last flush */
    int64_t *batch_ts;          /* Kafka timestamps of counted events in this batch */
    size_t n_batch_ts, cap_batch_ts;
    /* the batch in flight: handed to the aggregator's writer, not collected */
    int writing;
    uint64_t write_events;
    int64_t *write_ts;          /* its batch_ts (the arrays swap at each flush) */
    size_t n_write_ts, cap_write_ts;
    int64_t write_started;
    int64_t write_cut_ms;       /* when the batch in flight was cut */
    int64_t cut_to_stored_ms;   /* the last batch: from its cut to its write collected ("Cut rule") */
    uint64_t lat_hist[LAT_BINS];
    int64_t last_flush_ms, last_store_size_ms, last_progress_ms;
    /* health (see "Health" at the top) */
    int watch_redis;
    int have_broker_stats;      /* a statistics report arrived */
    int brokers_up, brokers_known;
    int64_t last_health_ms;
    /* where partitions start without a stored offset (the user's
     * auto.offset.reset; librdkafka's own is set apart: see "Lost events") */
    int64_t new_start;          /* RD_KAFKA_OFFSET_BEGINNING, _END, or _INVALID for error */
    /* the caller's per-partition hooks (iqp_stream_options) */
    int (*on_partition_open)(void *, int32_t, iqp_store *, struct iqp_aggregator *, void **, char *, size_t);
    void (*on_partition_close)(void *, int32_t, void *);
    void *partition_ud;
    int skip_lost;              /* a stored offset out of range: skip to the earliest (else stop) */
};

/* ---- metrics ------------------------------------------------------------- */

static const double flush_seconds_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                              0.1,   0.25,   0.5,   1,    2.5,   5};
static const double batch_events_bounds[] = {1, 10, 100, 1000, 10000, 100000, 1000000};
static const double latency_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                        0.75, 1,     1.5,  2,   5,    10};
static const double open_seconds_bounds[] = {0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60};
#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

static void declare_metrics(iqp_metrics *m) {
    if (!m) return;
    iqp_metrics_declare(m, "iqp_events_total", IQP_METRIC_COUNTER,
                        "Events consumed, by topic and outcome (counted, duplicate, "
                        "dead_lettered, late, restored, restore_skipped, resent: a repartitioned record whose "
                        "input message was counted already).", NULL, 0);
    iqp_metrics_declare(m, "iqp_dead_letters_total", IQP_METRIC_COUNTER,
                        "Events sent to the dead-letter sink, by topic and code.", NULL, 0);
    iqp_metrics_declare(m, "iqp_consumer_lag", IQP_METRIC_GAUGE,
                        "Messages behind the partition's high watermark, per assigned partition "
                        "(removed when the partition is released).", NULL, 0);
    iqp_metrics_declare(m, "iqp_kafka_committed_offset", IQP_METRIC_GAUGE,
                        "Next offset of each assigned partition whose events are counted in a store "
                        "and published (by this instance, or by the previous owner when assigned); "
                        "removed when the partition is released.", NULL, 0);
    iqp_metrics_declare(m, "iqp_batches_dropped_total", IQP_METRIC_COUNTER,
                        "Micro-batches dropped unwritten because this instance no longer owned "
                        "their partitions (reason: assignment_lost, not_member).", NULL, 0);
    iqp_metrics_declare(m, "iqp_flush_seconds", IQP_METRIC_HISTOGRAM,
                        "Time to write one micro-batch to the store.", flush_seconds_bounds,
                        COUNT_OF(flush_seconds_bounds));
    iqp_metrics_declare(m, "iqp_flush_batch_events", IQP_METRIC_HISTOGRAM,
                        "Messages per flushed micro-batch.", batch_events_bounds,
                        COUNT_OF(batch_events_bounds));
    iqp_metrics_declare(m, "iqp_event_to_store_seconds", IQP_METRIC_HISTOGRAM,
                        "From the event's Kafka timestamp to its counts committed in the store.",
                        latency_bounds, COUNT_OF(latency_bounds));
    iqp_metrics_declare(m, "iqp_store_bytes_written_total", IQP_METRIC_COUNTER,
                        "Bytes of store WriteBatches committed.", NULL, 0);
    iqp_metrics_declare(m, "iqp_store_size_bytes", IQP_METRIC_GAUGE,
                        "Store size on disk (SST and log files).", NULL, 0);
    iqp_metrics_declare(m, "iqp_kafka_commit_failures_total", IQP_METRIC_COUNTER,
                        "Offset commits to Kafka that failed (the store stays authoritative).",
                        NULL, 0);
    iqp_metrics_declare(m, "iqp_rebalances_total", IQP_METRIC_COUNTER,
                        "Partition assignments and revocations.", NULL, 0);
    iqp_metrics_declare(m, "iqp_assigned_partitions", IQP_METRIC_GAUGE,
                        "Partitions this instance owns.", NULL, 0);
    iqp_metrics_declare(m, "iqp_kafka_offset_resets_total", IQP_METRIC_COUNTER,
                        "Partitions whose position was no longer on the broker (offset out of range: "
                        "the broker evicted events before they were counted).", NULL, 0);
    iqp_metrics_declare(m, "iqp_partition_store_size_bytes", IQP_METRIC_GAUGE,
                        "--state-dir: size on disk of each owned partition store (removed when the "
                        "partition is released).", NULL, 0);
    iqp_metrics_declare(m, "iqp_partition_store_open_seconds", IQP_METRIC_HISTOGRAM,
                        "--state-dir: time to open a partition store on assignment, including the wait for "
                        "its previous owner to release it.", open_seconds_bounds, COUNT_OF(open_seconds_bounds));
    iqp_metrics_declare(m, "iqp_kafka_brokers_up", IQP_METRIC_GAUGE,
                        "Broker connections in state UP (librdkafka statistics); /healthz is 503 at 0.",
                        NULL, 0);
}

static const double restore_seconds_bounds[] = {0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300};

static void declare_checkpoint_metrics(iqp_metrics *m) {
    if (!m) return;
    iqp_metrics_declare(m, "iqp_partition_restore_seconds", IQP_METRIC_HISTOGRAM,
                        "--checkpoint-dir: time to restore a partition store from its checkpoint on assignment "
                        "(copy and open).", restore_seconds_bounds, COUNT_OF(restore_seconds_bounds));
    iqp_metrics_declare(m, "iqp_partition_restore_bytes_total", IQP_METRIC_COUNTER,
                        "--checkpoint-dir: bytes of partition stores restored from checkpoints (SST and log "
                        "files).", NULL, 0);
    iqp_metrics_declare(m, "iqp_partition_restores_total", IQP_METRIC_COUNTER,
                        "--checkpoint-dir: partition stores restored from a checkpoint, by reason (missing: no "
                        "local store; behind: the local store had less progress).", NULL, 0);
    iqp_metrics_declare(m, "iqp_partition_checkpoint_seconds", IQP_METRIC_HISTOGRAM,
                        "--checkpoint-dir: time to write one partition checkpoint (the consuming thread waits).",
                        restore_seconds_bounds, COUNT_OF(restore_seconds_bounds));
    iqp_metrics_declare(m, "iqp_partition_checkpoints_total", IQP_METRIC_COUNTER,
                        "--checkpoint-dir: partition checkpoints written, by outcome (written, failed).", NULL, 0);
}

static void count_event(iqp_stream *s, int topic, const char *outcome) {
    if (!s->m) return;
    char labels[300];
    snprintf(labels, sizeof labels, "topic=\"%s\",outcome=\"%s\"", s->topic_labels[topic], outcome);
    iqp_metrics_add(s->m, "iqp_events_total", labels, 1);
}

/* ---- partition table ------------------------------------------------------ */

static int topic_index(const iqp_stream *s, const char *name) {
    for (int t = 0; t < N_TOPICS; t++)
        if (strcmp(s->topics[t], name) == 0) return t;
    return -1;
}

static part_state *find_part(iqp_stream *s, int topic, int32_t partition) {
    for (size_t i = 0; i < s->n_parts; i++)
        if (s->parts[i].topic == topic && s->parts[i].partition == partition) return &s->parts[i];
    return NULL;
}

static part_state *add_part(iqp_stream *s, int topic, int32_t partition) {
    part_state *p = find_part(s, topic, partition);
    if (p) return p;
    if (s->n_parts == s->cap_parts) {
        s->cap_parts = s->cap_parts ? 2 * s->cap_parts : 16;
        s->parts = realloc(s->parts, s->cap_parts * sizeof *s->parts);
        if (!s->parts) abort();
    }
    p = &s->parts[s->n_parts++];
    *p = (part_state){topic, partition, -1, -1, -1, RD_KAFKA_OFFSET_INVALID, 0, 0, -1, NULL};
    return p;
}

static void part_labels(const iqp_stream *s, const part_state *p, char *labels, size_t len) {
    snprintf(labels, len, "topic=\"%s\",partition=\"%d\"", s->topic_labels[p->topic], (int)p->partition);
}

/* Sets (value >= 0) or removes (value < 0) a per-partition gauge. */
static void set_part_gauge(iqp_stream *s, const part_state *p, const char *name, double value) {
    char labels[300];
    if (!s->m) return;
    part_labels(s, p, labels, sizeof labels);
    if (value >= 0) iqp_metrics_set(s->m, name, labels, value);
    else iqp_metrics_remove(s->m, name, labels);
}

static void set_lag(iqp_stream *s, const part_state *p, double lag) {
    set_part_gauge(s, p, "iqp_consumer_lag", lag);
}

static void remove_part(iqp_stream *s, int topic, int32_t partition) {
    part_state *p = find_part(s, topic, partition);
    if (!p) return;
    set_part_gauge(s, p, "iqp_consumer_lag", -1);
    set_part_gauge(s, p, "iqp_kafka_committed_offset", -1);
    *p = s->parts[--s->n_parts];
}

/* ---- tasks (see "Partition-owned state" at the top) -------------------------- */

static void fail(iqp_stream *s, const char *what, const char *why);
static void pipeline_drain(iqp_stream *s);
static int check_slices(iqp_stream *s, task *t);

static void meta_key(const iqp_stream *s, int topic, int32_t partition, char *key, size_t len) {
    snprintf(key, len, META_PREFIX "%s/%d", s->topics[topic], (int)partition);
}

/* The next offset st holds for partition of topic, -1 none, -2 unreadable. */
static int64_t read_offset(iqp_stream *s, iqp_store *st, int topic, int32_t partition) {
    char key[600], *val = NULL;
    size_t vlen = 0;
    int64_t off = -2;
    meta_key(s, topic, partition, key, sizeof key);
    int rc = iqp_store_get_meta(st, key, &val, &vlen);
    if (rc == 0) return -1;
    if (rc < 0) return -2;
    json_t *j = json_loadb(val, vlen, 0, NULL);
    json_t *n = json_object_get(j, "next_offset");
    if (json_is_integer(n) && json_integer_value(n) >= 0) off = json_integer_value(n);
    json_decref(j);
    free(val);
    return off;
}

/* How far partition's store st has counted ("Empty-disk takeover"): the
 * sum of its next offsets of both topics (none: 0); -2 unreadable. */
static int64_t store_progress(iqp_stream *s, iqp_store *st, int32_t partition) {
    int64_t sum = 0;
    for (int t = 0; t < N_TOPICS; t++) {
        int64_t off = read_offset(s, st, t, partition);
        if (off == -2) return -2;
        if (off > 0) sum += off;
    }
    return sum;
}

/* iqp_pck_progress_fn: store_progress of a checkpoint, on the checkpoint
 * writer's thread (it reads only the topic names, fixed at creation). */
static int64_t checkpoint_progress(iqp_store *ck, int32_t partition, void *ud) {
    int64_t progress = store_progress(ud, ck, partition);
    return progress < 0 ? -1 : progress;
}

/* The task counting into store st; NULL when none does. */
static task *task_of_store(iqp_stream *s, const iqp_store *st) {
    for (size_t i = 0; i < s->n_tasks; i++)
        if (s->tasks[i]->st == st) return s->tasks[i];
    return NULL;
}

/* Takes the result of the checkpoint in flight, when it is done (or, with
 * wait, once it is): the task's newest checkpoint, the log, the metrics.
 * A failure is counted and said, not fatal: the local store is whole, only
 * a takeover would replay more. */
static void collect_checkpoint(iqp_stream *s, int wait) {
    char labels[64];
    iqp_pck_result r;
    task *t = task_of_store(s, iqp_pck_writer_store(s->ckw));
    if (!iqp_pck_writer_collect(s->ckw, wait, &r) || !t) return;
    if (r.rc < 0) {
        fprintf(stderr, "iqp stream: partition %d: checkpoint failed (the next is tried in %.0f s): %s\n",
                (int)r.partition, s->ckpt_interval_ms / 1000.0, r.err);
        t->ck_due_ms = iqp_mono_ms() + s->ckpt_interval_ms;
    } else if (r.progress > t->ck_progress) {
        t->ck_progress = r.progress;
    }
    if (!s->m) return;
    snprintf(labels, sizeof labels, "outcome=\"%s\"", r.rc < 0 ? "failed" : "written");
    iqp_metrics_add(s->m, "iqp_partition_checkpoints_total", labels, 1);
    if (r.rc == 0) iqp_metrics_observe(s->m, "iqp_partition_checkpoint_seconds", "", r.ms / 1000.0);
}

/* Starts a checkpoint of t's store when it counted past its newest one
 * (the writer must be idle); the next look is due an interval later. The
 * generation is named by what it holds, which may be more than this. */
static void start_checkpoint(iqp_stream *s, task *t, int64_t now) {
    int64_t progress = store_progress(s, t->st, t->partition);
    t->ck_due_ms = now + (t->ck_progress < 0 ? FIRST_CHECKPOINT_CHECK_MS : s->ckpt_interval_ms);
    if (progress <= 0 || progress <= t->ck_progress) return;
    iqp_pck_writer_start(s->ckw, t->st, t->partition);
}

/* Before t's store closes: waits for the checkpoint in flight (of any
 * store: the writer takes one at a time), then, unless the stream failed,
 * writes t's last state for the partition's next owner and waits for it. */
static void checkpoint_before_close(iqp_stream *s, task *t) {
    if (!s->ckw) return;
    collect_checkpoint(s, 1);
    if (s->fatal) return;
    start_checkpoint(s, t, iqp_mono_ms());
    collect_checkpoint(s, 1);
}

static task *add_task(iqp_stream *s, int32_t partition, iqp_store *st, int owned) {
    if (s->n_tasks == s->cap_tasks) {
        s->cap_tasks = s->cap_tasks ? 2 * s->cap_tasks : 16;
        s->tasks = realloc(s->tasks, s->cap_tasks * sizeof *s->tasks);
        if (!s->tasks) abort();
    }
    task *t = calloc(1, sizeof *t);
    if (!t) abort();
    *t = (task){partition, st, iqp_aggregator_new(st), owned, 0, -1, 0, NULL, 0, 0, NULL, 0};
    if (s->origin_topics[0]) iqp_aggregator_set_slice(t->agg, (unsigned)partition, (unsigned)s->n_slices);
    s->tasks[s->n_tasks++] = t;
    return t;
}

/* Sets (bytes >= 0) or removes a partition store's size gauge. */
static void set_task_size(iqp_stream *s, const task *t, double bytes) {
    char labels[64];
    if (!s->m || !t->owned) return;
    snprintf(labels, sizeof labels, "partition=\"%d\"", (int)t->partition);
    if (bytes >= 0) iqp_metrics_set(s->m, "iqp_partition_store_size_bytes", labels, bytes);
    else iqp_metrics_remove(s->m, "iqp_partition_store_size_bytes", labels);
}

/* Frees task i (its aggregator waits for a write in flight) and closes its
 * store when it opened it: the store's LOCK is released for the next owner. */
static void close_task(iqp_stream *s, size_t i) {
    task *t = s->tasks[i];
    set_task_size(s, t, -1);
    iqp_aggregator_free(t->agg);
    if (t->hooked) s->on_partition_close(s->partition_ud, t->partition, t->hook);
    /* the final state of a released partition, for its next owner */
    if (t->owned) checkpoint_before_close(s, t);
    if (t->owned) iqp_store_close(t->st);
    free(t->origins);
    free(t);
    s->tasks[i] = s->tasks[--s->n_tasks];
}

/* Closes every partition task that no assigned partition counts into. */
static void close_idle_tasks(iqp_stream *s) {
    for (size_t i = s->n_tasks; i-- > 0;) {
        int used = !s->tasks[i]->owned;
        for (size_t k = 0; k < s->n_parts && !used; k++) used = s->parts[k].task == s->tasks[i];
        if (!used) close_task(s, i);
    }
}

static size_t pending_events(const iqp_stream *s) {
    size_t n = 0;
    for (size_t i = 0; i < s->n_tasks; i++) n += iqp_aggregator_pending(s->tasks[i]->agg);
    return n;
}

/* 1 when err says a store open failed on its RocksDB LOCK. */
static int store_locked(const char *err) {
    size_t el = strlen(err), hl = strlen(IQP_STORE_LOCKED_HINT);
    return el >= hl && strcmp(err + el - hl, IQP_STORE_LOCKED_HINT) == 0;
}

/* Opens state_dir/partition-<partition>, waiting up to LOCK_WAIT_MS while
 * another process holds its LOCK (the partition's previous owner, stalled
 * or not yet through its revoke): the lock is the fence that keeps two
 * owners from writing one partition's state. NULL after fail(). */
static iqp_store *open_partition_store(iqp_stream *s, int32_t partition) {
    char dir[600], err[1000], why[1000];
    snprintf(dir, sizeof dir, "%s/partition-%d", s->state_dir, (int)partition);
    for (int64_t t0 = iqp_mono_ms(), waited = 0;; waited = iqp_mono_ms() - t0) {
        iqp_store *st = iqp_store_open(dir, s->cfg, IQP_STORE_READ_WRITE, err, sizeof err);
        if (st) iqp_store_set_ingest(st, IQP_STORE_INGEST_MIN_MERGES); /* "Store writes" */
        if (st && waited)
            fprintf(stderr, "iqp stream: %s: its previous owner released it; opened after %.1f s\n", dir,
                    waited / 1000.0);
        if (st) return st;
        if (!store_locked(err)) return fail(s, "partition state", err), NULL;
        if (waited >= LOCK_WAIT_MS || iqp_stop_requested()) {
            snprintf(why, sizeof why, "%s is still locked after %.0f s: another process holds partition %d's "
                                      "state (a stalled previous owner?); nothing of it was counted here",
                     dir, waited / 1000.0, (int)partition);
            return fail(s, "partition state", why), NULL;
        }
        if (!waited)
            fprintf(stderr, "iqp stream: %s is locked by another process (partition %d's previous owner has "
                            "not released it yet); retrying for up to %d s\n",
                    dir, (int)partition, LOCK_WAIT_MS / 1000);
        usleep(LOCK_RETRY_MS * 1000);
    }
}

/* Restores partition's best checkpoint as its local store and opens it
 * ("Empty-disk takeover"); local_progress: the local store's (-1: none).
 * NULL after fail(). */
static iqp_store *restore_partition(iqp_stream *s, int32_t partition, int64_t local_progress, int64_t *ck_progress) {
    char dir[600], from[4400], err[1000], labels[64];
    int64_t t0 = iqp_mono_ms();
    snprintf(dir, sizeof dir, "%s/partition-%d", s->state_dir, (int)partition);
    int rc = iqp_pck_restore(s->ckdir, partition, dir, from, sizeof from, ck_progress, err, sizeof err);
    if (rc <= 0) return fail(s, "partition checkpoint", rc < 0 ? err : "its checkpoint vanished"), NULL;
    iqp_store *st = open_partition_store(s, partition);
    if (!st) return NULL;
    double secs = (iqp_mono_ms() - t0) / 1000.0;
    uint64_t bytes = iqp_store_disk_bytes(st);
    fprintf(stderr, "iqp stream: partition %d: restored from checkpoint %s: %s at %lld, %s at %lld (progress %lld; "
                    "local store %s); %llu bytes in %.3f s\n", (int)partition, from, s->topics[0],
            (long long)read_offset(s, st, 0, partition), s->topics[1], (long long)read_offset(s, st, 1, partition),
            (long long)*ck_progress, local_progress < 0 ? "missing" : "behind", (unsigned long long)bytes, secs);
    if (s->m) {
        snprintf(labels, sizeof labels, "reason=\"%s\"", local_progress < 0 ? "missing" : "behind");
        iqp_metrics_add(s->m, "iqp_partition_restores_total", labels, 1);
        iqp_metrics_add(s->m, "iqp_partition_restore_bytes_total", "", (double)bytes);
        iqp_metrics_observe(s->m, "iqp_partition_restore_seconds", "", secs);
    }
    return st;
}

/* --checkpoint-dir: opens partition's store from whichever has counted
 * further, the local store or the best checkpoint (restored over it);
 * *ck_progress: the best checkpoint's progress (-1: none). NULL after
 * fail(). */
static iqp_store *open_or_restore(iqp_stream *s, int32_t partition, int64_t *ck_progress) {
    char dir[600], best[4400], err[1000];
    snprintf(dir, sizeof dir, "%s/partition-%d", s->state_dir, (int)partition);
    *ck_progress = -1;
    int found = iqp_pck_best(s->ckdir, partition, best, sizeof best, ck_progress, err, sizeof err);
    if (found < 0) return fail(s, "partition checkpoint", err), NULL;
    int present = found ? iqp_store_present(dir, err, sizeof err) : 1;
    if (present < 0) return fail(s, "partition state", err), NULL;
    if (!present) return restore_partition(s, partition, -1, ck_progress);
    iqp_store *st = open_partition_store(s, partition);
    if (!st || !found) return st;
    int64_t mine = store_progress(s, st, partition);
    if (mine == -2) return iqp_store_close(st), fail(s, "store", "a stored Kafka offset is unreadable"), NULL;
    if (mine >= *ck_progress) return st;
    iqp_store_close(st);
    return restore_partition(s, partition, mine, ck_progress);
}

/* The task partition's events count into: the single store's, or (state
 * dir) the partition's own, opened now if this instance does not hold it
 * yet. NULL after fail(). */
static task *task_for(iqp_stream *s, int32_t partition) {
    if (!s->state_dir) return s->tasks[0];
    for (size_t i = 0; i < s->n_tasks; i++)
        if (s->tasks[i]->partition == partition) return s->tasks[i];
    int64_t t0 = iqp_mono_ms(), ck_progress = -1;
    iqp_store *st = s->ckdir ? open_or_restore(s, partition, &ck_progress) : open_partition_store(s, partition);
    if (!st) return NULL;
    if (s->m) iqp_metrics_observe(s->m, "iqp_partition_store_open_seconds", "", (iqp_mono_ms() - t0) / 1000.0);
    task *t = add_task(s, partition, st, 1);
    if (s->origin_topics[0] && check_slices(s, t) < 0) return close_task(s, s->n_tasks - 1), NULL;
    if (s->on_partition_open) {
        char err[1024];
        if (s->on_partition_open(s->partition_ud, partition, st, t->agg, &t->hook, err, sizeof err) < 0)
            return close_task(s, s->n_tasks - 1), fail(s, "partition", err), NULL;
        t->hooked = 1;
    }
    t->ck_progress = ck_progress;
    t->ck_due_ms = iqp_mono_ms() + (ck_progress < 0 ? FIRST_CHECKPOINT_CHECK_MS : s->ckpt_interval_ms);
    set_task_size(s, t, (double)iqp_store_disk_bytes(st));
    return t;
}

/* Collects the checkpoint in flight when it is done; with the writer idle,
 * starts one of the first partition store whose time has come. */
static void checkpoint_partitions(iqp_stream *s, int64_t now) {
    collect_checkpoint(s, 0);
    if (iqp_pck_writer_busy(s->ckw)) return;
    for (size_t i = 0; i < s->n_tasks && !s->fatal; i++)
        if (s->tasks[i]->owned && now >= s->tasks[i]->ck_due_ms) {
            start_checkpoint(s, s->tasks[i], now);
            return;
        }
}

/* The next offset p's store holds for p, -1 when it holds none, or -2
 * when the record cannot be read (the store is damaged: counting on from
 * a guess could double-count, so the caller stops). */
static int64_t stored_offset(iqp_stream *s, const part_state *p) {
    return read_offset(s, p->task->st, p->topic, p->partition);
}

/* ---- repartitioned input (see "Repartitioned input" at the top) ----------- */

/* A meta value {"<field>": N} with N >= 0: 1 with *out, 0 when absent, -1
 * when unreadable. */
static int read_meta_int(iqp_store *st, const char *key, const char *field, int64_t *out) {
    char *val = NULL;
    size_t vlen = 0;
    int rc = iqp_store_get_meta(st, key, &val, &vlen);
    if (rc <= 0) return rc;
    json_t *j = json_loadb(val, vlen, 0, NULL);
    json_t *n = json_object_get(j, field);
    rc = json_is_integer(n) && json_integer_value(n) >= 0 ? 1 : -1;
    if (rc == 1) *out = json_integer_value(n);
    json_decref(j);
    free(val);
    return rc;
}

/* A partition store counts one slice of R: R is kept in it with its first
 * batch, and a store sliced by another R is refused. 0, or -1 after fail(). */
static int check_slices(iqp_stream *s, task *t) {
    char why[800], val[64];
    int64_t kept = -1;
    int rc = read_meta_int(t->st, SLICES_KEY, "slices", &kept);
    if (rc < 0) return fail(s, "partition state", "its repartition slice count is unreadable"), -1;
    if (rc == 1 && kept != s->n_slices) {
        snprintf(why, sizeof why, "%s/partition-%d counted slice %d of %lld, but the repartition topics now have "
                                  "%d partitions: its contexts were sliced by %lld (use a new --state-dir, or "
                                  "repartition topics with %lld partitions)",
                 s->state_dir, (int)t->partition, (int)t->partition, (long long)kept, (int)s->n_slices,
                 (long long)kept, (long long)kept);
        return fail(s, "partition state", why), -1;
    }
    snprintf(val, sizeof val, "{\"slices\":%d}", (int)s->n_slices);
    if (rc == 0) iqp_aggregator_stage_meta(t->agg, SLICES_KEY, val, strlen(val));
    return 0;
}

/* The origin of a repartitioned record (header IQP_REPARTITION_ORIGIN_HEADER,
 * "<partition>/<offset>"): 1 with *partition and *offset, 0 without one. */
static int record_origin(const rd_kafka_message_t *msg, int32_t *partition, int64_t *offset) {
    rd_kafka_headers_t *h = NULL;
    const void *v = NULL;
    size_t n = 0;
    char buf[48], *end, *o;
    if (rd_kafka_message_headers(msg, &h) || rd_kafka_header_get_last(h, IQP_REPARTITION_ORIGIN_HEADER, &v, &n) || !v ||
        n == 0 || n >= sizeof buf)
        return 0;
    memcpy(buf, v, n);
    buf[n] = 0;
    long long p = strtoll(buf, &end, 10);
    if (end == buf || *end != '/' || p < 0 || p > INT32_MAX) return 0;
    o = end + 1;
    long long off = strtoll(o, &end, 10);
    if (end == o || *end || off < 0) return 0;
    *partition = (int32_t)p;
    *offset = off;
    return 1;
}

/* t's position for input partition `partition` of topic, read from its
 * store the first time. NULL after fail(). */
static origin_pos *origin_of(iqp_stream *s, task *t, int topic, int32_t partition) {
    char key[600];
    int64_t applied = -1;
    for (size_t i = 0; i < t->n_origins; i++)
        if (t->origins[i].topic == topic && t->origins[i].partition == partition) return &t->origins[i];
    snprintf(key, sizeof key, ORIGIN_PREFIX "%s/%d", s->origin_topics[topic], (int)partition);
    if (read_meta_int(t->st, key, "applied", &applied) < 0)
        return fail(s, "partition state", "a repartition origin position is unreadable"), NULL;
    if (t->n_origins == t->cap_origins) {
        t->cap_origins = t->cap_origins ? 2 * t->cap_origins : 16;
        t->origins = realloc(t->origins, t->cap_origins * sizeof *t->origins);
        if (!t->origins) abort();
    }
    origin_pos *o = &t->origins[t->n_origins++];
    *o = (origin_pos){topic, partition, applied, applied};
    return o;
}

/* 1 when msg forwards an input message p's task already counted (drop it),
 * 0 when it is new (now applied) or has no origin, -1 after fail(). */
static int origin_resent(iqp_stream *s, part_state *p, const rd_kafka_message_t *msg) {
    int32_t partition;
    int64_t offset;
    if (!record_origin(msg, &partition, &offset)) return 0;
    origin_pos *o = origin_of(s, p->task, p->topic, partition);
    if (!o) return -1;
    if (offset <= o->applied) return 1;
    o->applied = offset;
    return 0;
}

/* Stages every task's origin positions that moved with its batch. */
static void stage_origins(iqp_stream *s) {
    char key[600], val[64];
    for (size_t i = 0; i < s->n_tasks; i++) {
        task *t = s->tasks[i];
        for (size_t k = 0; k < t->n_origins; k++) {
            origin_pos *o = &t->origins[k];
            if (o->applied == o->staged) continue;
            snprintf(key, sizeof key, ORIGIN_PREFIX "%s/%d", s->origin_topics[o->topic], (int)o->partition);
            snprintf(val, sizeof val, "{\"applied\":%lld}", (long long)o->applied);
            iqp_aggregator_stage_meta(t->agg, key, val, strlen(val));
            o->staged = o->applied;
        }
    }
}

/* A dropped batch: its records will be read again. */
static void unapply_origins(iqp_stream *s) {
    for (size_t i = 0; i < s->n_tasks; i++)
        for (size_t k = 0; k < s->tasks[i]->n_origins; k++)
            s->tasks[i]->origins[k].applied = s->tasks[i]->origins[k].staged;
}

/* ---- flushing ------------------------------------------------------------ */

/* Stages the dirty partitions' offsets with the micro-batch, which then
 * carries them (writing); dirty is cleared for the next batch. */
static void stage_offsets(iqp_stream *s) {
    if (s->origin_topics[0]) stage_origins(s);
    for (size_t i = 0; i < s->n_parts; i++) {
        part_state *p = &s->parts[i];
        if (!p->dirty) continue;
        char key[600], val[64];
        meta_key(s, p->topic, p->partition, key, sizeof key);
        snprintf(val, sizeof val, "{\"next_offset\":%lld}", (long long)p->next_offset);
        iqp_aggregator_stage_meta(p->task->agg, key, val, strlen(val));
        p->writing = 1;
        p->written_offset = p->next_offset;
        p->dirty = 0;
    }
}

/* Commits the dirty partitions' offsets to Kafka and clears dirty. */
static void count_commit_failure(iqp_stream *s, const char *what, const char *why) {
    s->stats.commit_failures++;
    if (s->m) iqp_metrics_add(s->m, "iqp_kafka_commit_failures_total", "", 1);
    fprintf(stderr, "iqp stream: %s: %s\n", what, why);
}

/* Waits up to timeout_ms for the checkpoints queued and not yet waited
 * for (ckpt_unacked) to be acknowledged. */
static void sync_checkpoints(iqp_stream *s, int timeout_ms) {
    char err[512];
    if (!s->ckpt_unacked) return;
    s->ckpt_unacked = 0;
    if (iqp_checkpoints_sync(s->ckpt, timeout_ms, err, sizeof err) < 0) count_commit_failure(s, "checkpoint", err);
}

/* Publishes the offsets the batch just written carried (writing) and
 * clears writing: checkpoints, queued right after the store write, then
 * the group commit, asynchronous (lag tools only; the mock refuses it
 * during rebalances, which is why the checkpoints exist). timeout_ms > 0:
 * the checkpoints' acknowledgements are waited for now (revoke, shutdown);
 * 0: in steady state, they are waited for before the next ownership probe
 * (stream_flush), so the consuming thread does not sit out the round
 * trip (~45 ms per flush on the devbroker, seconds on a loaded machine)
 * and still no batch is written while an older checkpoint is unacknowledged.
 * The window in which a kill -9 leaves the store ahead of what the next
 * owner sees is the same round trip either way: the checkpoints leave at
 * once, only the wait moved. */
static void commit_offsets(iqp_stream *s, int timeout_ms) {
    char err[512];
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)s->n_parts + 1);
    for (size_t i = 0; i < s->n_parts; i++) {
        part_state *p = &s->parts[i];
        if (!p->writing) continue;
        /* Mid-restore, the published offset stays where the other instance
         * left it: publishing the restore position would move it back and
         * the next owner would count that span a second time. */
        int64_t off = p->written_offset > p->restore_until ? p->written_offset : p->restore_until;
        rd_kafka_topic_partition_list_add(l, s->topics[p->topic], p->partition)->offset = off;
        p->published = off;
        if (s->ckpt && iqp_checkpoints_put(s->ckpt, s->topics[p->topic], p->partition, off, err,
                                           sizeof err) < 0)
            count_commit_failure(s, "checkpoint", err);
        p->writing = 0;
    }
    if (s->ckpt && l->cnt > 0) s->ckpt_unacked = 1;
    if (timeout_ms > 0) sync_checkpoints(s, timeout_ms);
    for (int i = 0; i < l->cnt; i++) {
        int t = topic_index(s, l->elems[i].topic);
        part_state *p = t < 0 ? NULL : find_part(s, t, l->elems[i].partition);
        if (p) set_part_gauge(s, p, "iqp_kafka_committed_offset", (double)l->elems[i].offset);
    }
    if (l->cnt > 0) {
        rd_kafka_resp_err_t e = rd_kafka_commit(s->rk, l, 1);
        if (e) count_commit_failure(s, "offset commit", rd_kafka_err2str(e));
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static void record_latencies(iqp_stream *s, int64_t committed_at) {
    for (size_t i = 0; i < s->n_write_ts; i++) {
        int64_t ms = committed_at - s->write_ts[i];
        if (ms < 0) ms = 0;
        s->lat_hist[ms < LAT_BINS ? ms : LAT_BINS - 1]++;
        s->stats.latency_n++;
        if (s->m) iqp_metrics_observe(s->m, "iqp_event_to_store_seconds", "", ms / 1000.0);
    }
    s->n_write_ts = 0;
}

static void observe_flush(iqp_stream *s, int64_t started, int64_t done) {
    s->stats.flushes++;
    if (!s->m) return;
    iqp_metrics_observe(s->m, "iqp_flush_seconds", "", (done - started) / 1000.0);
    iqp_metrics_observe(s->m, "iqp_flush_batch_events", "", (double)s->write_events);
    for (size_t i = 0; i < s->n_tasks; i++) {
        task *t = s->tasks[i];
        uint64_t bytes = iqp_aggregator_stats(t->agg)->batch_bytes;
        iqp_metrics_add(s->m, "iqp_store_bytes_written_total", "", (double)(bytes - t->bytes_reported));
        t->bytes_reported = bytes;
    }
}

static void fail(iqp_stream *s, const char *what, const char *why) {
    s->fatal = 1;
    snprintf(s->fatal_msg, sizeof s->fatal_msg, "%s: %s", what, why);
    if (s->m) iqp_metrics_set_part(s->m, "stream", 0, s->fatal_msg, 0);
}

/* ---- ownership (see "Zombie writes" at the top) ------------------------------ */

typedef enum { OWNED, NOT_OWNED, OWNER_UNKNOWN } ownership;

/* Answers that mean this member is not in the group's current generation:
 * its partitions may be counted by another member already. */
static int not_member(rd_kafka_resp_err_t e) {
    return e == RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID || e == RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION ||
           e == RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID || e == RD_KAFKA_RESP_ERR__ASSIGNMENT_LOST ||
           e == RD_KAFKA_RESP_ERR__FENCED;
}

static ownership ownership_of(rd_kafka_resp_err_t e) {
    if (!e || e == RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS) return OWNED;
    return not_member(e) ? NOT_OWNED : OWNER_UNKNOWN;
}

/* The first error of a commit answer: the request's, else a partition's. */
static rd_kafka_resp_err_t commit_answer(rd_kafka_event_t *ev) {
    rd_kafka_resp_err_t e = rd_kafka_event_error(ev);
    const rd_kafka_topic_partition_list_t *l = rd_kafka_event_topic_partition_list(ev);
    for (int i = 0; !e && l && i < l->cnt; i++) e = l->elems[i].err;
    return e;
}

/* Asks the group coordinator whether this member still holds its
 * generation, by committing the offsets it already published, and waits
 * up to timeout_ms for the answer. */
static ownership probe_ownership(iqp_stream *s, int timeout_ms) {
    if (rd_kafka_assignment_lost(s->rk)) return NOT_OWNED;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)s->n_parts + 1);
    for (size_t i = 0; i < s->n_parts; i++)
        if (s->parts[i].published >= 0)
            rd_kafka_topic_partition_list_add(l, s->topics[s->parts[i].topic], s->parts[i].partition)
                ->offset = s->parts[i].published;
    if (l->cnt == 0) { /* nothing consumed: nothing to write but markers of nothing */
        rd_kafka_topic_partition_list_destroy(l);
        return OWNED;
    }
    uintptr_t seq = ++s->probe_seq;
    rd_kafka_resp_err_t e = rd_kafka_commit_queue(s->rk, l, s->probe_q, NULL, (void *)seq);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) return ownership_of(e);
    for (int64_t deadline = iqp_mono_ms() + timeout_ms, left; (left = deadline - iqp_mono_ms()) > 0;) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(s->probe_q, (int)left);
        if (!ev) continue;
        int mine = rd_kafka_event_type(ev) == RD_KAFKA_EVENT_OFFSET_COMMIT &&
                   (uintptr_t)rd_kafka_event_opaque(ev) == seq;
        if (mine) e = commit_answer(ev);
        rd_kafka_event_destroy(ev); /* else the late answer of an older probe */
        if (mine) {
            if (ownership_of(e) != OWNED)
                fprintf(stderr, "iqp stream: ownership probe: %s\n", rd_kafka_err2str(e));
            return ownership_of(e);
        }
    }
    return OWNER_UNKNOWN;
}

/* Reads every partition again from where the store stopped (after a
 * dropped batch: if a partition is still ours its events count then). */
static void rewind_partitions(iqp_stream *s) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)s->n_parts + 1);
    for (size_t i = 0; i < s->n_parts; i++) {
        part_state *p = &s->parts[i];
        rd_kafka_topic_partition_list_add(l, s->topics[p->topic], p->partition)->offset = p->rewind;
        p->next_offset = p->rewind >= 0 ? p->rewind : -1;
        p->dirty = 0;
    }
    rd_kafka_error_t *e = l->cnt ? rd_kafka_seek_partitions(s->rk, l, 0) : NULL;
    if (e) {
        fprintf(stderr, "iqp stream: rewinding after a dropped batch: %s\n", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* Drops the unwritten micro-batch (counts, markers, offsets): its
 * partitions may be another member's now, who counts those events. */
static void drop_batch(iqp_stream *s, const char *reason) {
    char labels[64];
    size_t pending = pending_events(s);
    uint64_t messages = s->batch_events;
    for (size_t i = 0; i < s->n_tasks; i++) iqp_aggregator_discard(s->tasks[i]->agg);
    s->n_batch_ts = 0;
    s->batch_events = 0;
    s->held = 0;
    for (size_t i = 0; i < s->n_parts; i++) s->parts[i].dirty = 0;
    if (s->origin_topics[0]) unapply_origins(s);
    if (!pending && !messages) return;
    fprintf(stderr, "iqp stream: %s: dropping %zu unwritten events (%llu messages); the partitions' "
                    "owner counts them\n", strcmp(reason, "assignment_lost") == 0 ?
                    "partitions lost (session timed out)" : "not a member of the group's generation",
            pending, (unsigned long long)messages);
    if (!s->m) return;
    snprintf(labels, sizeof labels, "reason=\"%s\"", reason);
    iqp_metrics_add(s->m, "iqp_batches_dropped_total", labels, 1);
}

/* ---- flushing, continued ---------------------------------------------------- */

typedef enum { FLUSH_DONE, FLUSH_DROPPED, FLUSH_HELD, FLUSH_FAILED } flush_result;

/* Collects the batch in flight (waiting for its write when it is not done
 * yet) and publishes its offsets, waiting up to publish_ms for every
 * unacknowledged checkpoint (0: not now, see commit_offsets). 0, or -1
 * after fail() when the write failed. */
static int finish_write(iqp_stream *s, int publish_ms) {
    char err[512];
    if (!s->writing) {
        if (publish_ms > 0) sync_checkpoints(s, publish_ms);
        return 0;
    }
    s->writing = 0;
    for (size_t i = 0; i < s->n_tasks; i++)
        if (iqp_aggregator_flush_collect(s->tasks[i]->agg, err, sizeof err) < 0)
            return fail(s, "store write", err), -1;
    for (size_t i = 0; i < s->n_parts; i++)
        if (s->parts[i].writing) s->parts[i].rewind = s->parts[i].written_offset;
    s->cut_to_stored_ms = iqp_mono_ms() - s->write_cut_ms;
    record_latencies(s, iqp_wall_ms());
    observe_flush(s, s->write_started, iqp_mono_ms());
    commit_offsets(s, publish_ms);
    return 0;
}

/* Hands the micro-batch (counts, markers, offsets) to the aggregator's
 * writer; the stream counts the next one meanwhile. 0, or -1 after fail(). */
static int begin_write(iqp_stream *s) {
    char err[512];
    int64_t *ts = s->write_ts;
    size_t cap = s->cap_write_ts;
    stage_offsets(s);
    s->write_ts = s->batch_ts, s->n_write_ts = s->n_batch_ts, s->cap_write_ts = s->cap_batch_ts;
    s->batch_ts = ts, s->n_batch_ts = 0, s->cap_batch_ts = cap;
    s->write_events = s->batch_events;
    s->batch_events = 0;
    s->write_started = iqp_mono_ms();
    s->write_cut_ms = s->last_flush_ms;
    s->writing = 1;
    for (size_t i = 0; i < s->n_tasks; i++)
        if (iqp_aggregator_flush_begin(s->tasks[i]->agg, err, sizeof err) < 0)
            return fail(s, "store write", err), -1;
    return 0;
}

/* Writes the micro-batch and its offsets when this member still owns its
 * partitions (probe_ownership): first the batch before it is collected
 * and published, so the probe is answered right before this batch's own
 * write starts. wait: the write is collected and published before
 * returning (revoke, shutdown), waiting up to publish_ms for the
 * checkpoints; else that happens as soon as the loop sees the write done.
 * FLUSH_DROPPED: not the owner, nothing written, partitions rewound;
 * FLUSH_HELD: no answer, nothing written, the batch kept for the next try;
 * FLUSH_FAILED after fail() (nothing more may be committed). */
static flush_result stream_flush(iqp_stream *s, int publish_ms, int wait) {
    char err[512];
    int dirty = 0;
    pipeline_drain(s); /* the batch holds every message polled so far */
    if (s->fatal || finish_write(s, publish_ms) < 0) return FLUSH_FAILED;
    for (size_t i = 0; i < s->n_parts; i++) dirty |= s->parts[i].dirty;
    s->last_flush_ms = iqp_mono_ms();
    if (!dirty && pending_events(s) == 0) return FLUSH_DONE;
    switch (probe_ownership(s, s->closing ? CLOSE_PROBE_MS : PROBE_MS)) {
    case NOT_OWNED:
        drop_batch(s, "not_member");
        rewind_partitions(s);
        return FLUSH_DROPPED;
    case OWNER_UNKNOWN:
        if (!s->held) fprintf(stderr, "iqp stream: the group coordinator did not confirm this member; "
                                      "the batch waits (nothing written)\n");
        s->held = 1;
        return FLUSH_HELD;
    case OWNED: s->held = 0; break;
    }
    if (iqp_deadletter_flush(s->dl, s->closing ? DL_CLOSE_TIMEOUT_MS : DL_FLUSH_TIMEOUT_MS, err,
                             sizeof err) < 0)
        return fail(s, "dead-letter sink", err), FLUSH_FAILED;
    if (begin_write(s) < 0 || (wait && finish_write(s, publish_ms) < 0)) return FLUSH_FAILED;
    return FLUSH_DONE;
}

/* ---- rebalance ----------------------------------------------------------- */

/* Decides where each partition of an assignment starts (see the top). */
/* The newest published offset of each partition in parts: the larger of
 * the group's committed offset and the checkpoint topic's; -1 for none. */
/* Returns 0, or -1 after fail(): not knowing where another instance
 * stopped, any start would be a guess that could count a span twice. */
static int published_offsets(iqp_stream *s, rd_kafka_topic_partition_list_t *parts, int64_t *out) {
    char err[512];
    rd_kafka_topic_partition_list_t *committed = rd_kafka_topic_partition_list_copy(parts);
    rd_kafka_resp_err_t e = rd_kafka_committed(s->rk, committed, 10000);
    for (int i = 0; i < parts->cnt; i++)
        out[i] = e || committed->elems[i].err || committed->elems[i].offset < 0 ? -1
                                                                               : committed->elems[i].offset;
    rd_kafka_topic_partition_list_destroy(committed);
    if (e) return fail(s, "reading the group's committed offsets", rd_kafka_err2str(e)), -1;
    if (!s->ckpt) return 0;
    if (iqp_checkpoints_refresh(s->ckpt, CHECKPOINT_READ_MS, err, sizeof err) < 0)
        return fail(s, "reading checkpoints", err), -1;
    for (int i = 0; i < parts->cnt; i++) {
        int64_t ck = iqp_checkpoints_get(s->ckpt, parts->elems[i].topic, parts->elems[i].partition);
        if (ck > out[i]) out[i] = ck;
    }
    return 0;
}

/* State dir: partition p of one topic must come with partition p of the
 * other (the range assignor over topics with equal partition counts does
 * that), or the events of one partition number would be counted in two
 * instances' hands. 0, or -1 after fail(). */
static int check_copartitioned(iqp_stream *s, const rd_kafka_topic_partition_list_t *parts) {
    char why[700];
    for (int i = 0; i < parts->cnt; i++) {
        int t = topic_index(s, parts->elems[i].topic), found = 0;
        if (t < 0) continue;
        for (int k = 0; k < parts->cnt && !found; k++)
            found = parts->elems[k].partition == parts->elems[i].partition &&
                    topic_index(s, parts->elems[k].topic) == 1 - t;
        if (found) continue;
        snprintf(why, sizeof why, "the group assigned %s/%d without %s/%d: with --state-dir both topics "
                                  "need the same partition count and the range assignor",
                 s->topics[t], (int)parts->elems[i].partition, s->topics[1 - t], (int)parts->elems[i].partition);
        return fail(s, "kafka", why), -1;
    }
    return 0;
}

/* Decides where each partition of an assignment starts (see the top).
 * Returns 0, or -1 after fail(). */
static int plan_assignment(iqp_stream *s, rd_kafka_topic_partition_list_t *parts) {
    if (s->state_dir && check_copartitioned(s, parts) < 0) return -1;
    int64_t *published = malloc(((size_t)parts->cnt + 1) * sizeof *published);
    if (!published) abort();
    if (published_offsets(s, parts, published) < 0) return free(published), -1;
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        int t = topic_index(s, tp->topic);
        if (t < 0) continue;
        part_state *p = add_part(s, t, tp->partition);
        if (!p->task && !(p->task = task_for(s, tp->partition))) {
            remove_part(s, t, tp->partition);
            return free(published), -1;
        }
        int64_t mine = stored_offset(s, p);
        /* A partition store is the one truth about its partition: what the
         * group published matters only to one that has counted nothing, and
         * with a checkpoint dir not even then ("Empty-disk takeover"). */
        int64_t group = s->state_dir && (mine >= 0 || s->ckdir) ? -1 : published[i];
        if (mine == -2) {
            free(published);
            return fail(s, "store", "a stored Kafka offset is unreadable"), -1;
        }
        p->restore_until = -1;
        p->next_offset = mine;
        /* A store ahead of what was published (killed between its write and
         * the checkpoint) publishes again at the next flush. */
        p->dirty = mine >= 0 && mine > group;
        if (group >= 0 && group > mine) {
            tp->offset = mine >= 0 ? mine : RD_KAFKA_OFFSET_BEGINNING;
            p->restore_until = group;
        } else {
            tp->offset = mine >= 0 ? mine : s->new_start;
        }
        p->published = mine > group ? mine : group;
        p->rewind = tp->offset;
        if (p->published >= 0) set_part_gauge(s, p, "iqp_kafka_committed_offset", (double)p->published);
    }
    free(published);
    return 0;
}

static void on_revoke(iqp_stream *s, rd_kafka_topic_partition_list_t *parts) {
    /* A lost assignment (session timed out) is already someone else's, who
     * starts from the published offsets: the unwritten micro-batch is
     * dropped, not written, or its events would count in both stores. A
     * batch the coordinator did not let us write (not a member, or no
     * answer) cannot wait either: its partitions are leaving. The
     * partitions that stay (cooperative protocol) are read again. */
    int publish_ms = s->closing ? CLOSE_PUBLISH_MS : PUBLISH_MS;
    if (rd_kafka_assignment_lost(s->rk)) {
        finish_write(s, publish_ms); /* the batch in flight was probed: it is written, as before */
        drop_batch(s, "assignment_lost");
        rewind_partitions(s);
    } else if (stream_flush(s, publish_ms, 1) == FLUSH_HELD) {
        drop_batch(s, "not_member");
        rewind_partitions(s);
    }
    for (int i = 0; i < parts->cnt; i++) {
        int t = topic_index(s, parts->elems[i].topic);
        if (t >= 0) remove_part(s, t, parts->elems[i].partition);
    }
    close_idle_tasks(s); /* state dir: the released partitions' stores, unlocked for their next owner */
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
    iqp_stream *s = opaque;
    const char *protocol = rd_kafka_rebalance_protocol(rk);
    int cooperative = protocol && strcmp(protocol, "COOPERATIVE") == 0;
    rd_kafka_error_t *e = NULL;
    pipeline_drain(s); /* what was polled before the rebalance counts before it, as it was owned */
    s->stats.rebalances++;
    if (s->m) iqp_metrics_add(s->m, "iqp_rebalances_total", "", 1);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        /* the offsets in the store must be the written ones */
        if (finish_write(s, PUBLISH_MS) < 0 || plan_assignment(s, parts) < 0)
            return; /* fatal: the run loop stops */
        if (cooperative) e = rd_kafka_incremental_assign(rk, parts);
        else if (rd_kafka_assign(rk, parts)) fail(s, "kafka", "cannot take the assignment");
    } else {
        on_revoke(s, parts);
        if (cooperative) e = rd_kafka_incremental_unassign(rk, parts);
        else rd_kafka_assign(rk, NULL);
    }
    if (e) {
        fail(s, "kafka: changing the assignment", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    if (s->m) iqp_metrics_set(s->m, "iqp_assigned_partitions", "", (double)s->n_parts);
}

static void offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *offsets, void *opaque) {
    (void)rk, (void)offsets;
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        count_commit_failure(opaque, "offset commit", rd_kafka_err2str(err));
}

/* ---- health ---------------------------------------------------------------- */

static void update_health(iqp_stream *s) {
    char why[128];
    if (!s->m) return;
    s->last_health_ms = iqp_mono_ms();
    if (s->brokers_up > 0) {
        iqp_metrics_set_part(s->m, "kafka", 1, NULL, HEALTH_STALE_MS);
    } else {
        if (s->have_broker_stats)
            snprintf(why, sizeof why, "no broker connected (%d known, none up)", s->brokers_known);
        else
            snprintf(why, sizeof why, "no broker connected yet");
        iqp_metrics_set_part(s->m, "kafka", 0, why, HEALTH_STALE_MS);
    }
    if (s->watch_redis) {
        /* with a state dir: every owned partition's publisher (labelled) */
        int up = s->state_dir || iqp_metrics_value(s->m, "iqp_redis_connected", "") == 1;
        for (size_t i = 0; i < s->n_tasks && s->state_dir; i++) {
            char labels[64];
            snprintf(labels, sizeof labels, "partition=\"%d\"", (int)s->tasks[i]->partition);
            up = up && iqp_metrics_value(s->m, "iqp_redis_connected", labels) == 1;
        }
        iqp_metrics_set_part(s->m, "redis", up, "not connected (changes stay queued in the store)",
                             HEALTH_STALE_MS);
    }
}

/* librdkafka's statistics (served by consumer_poll): how many real broker
 * connections (not the internal or logical ones) are UP. */
static int stats_cb(rd_kafka_t *rk, char *json, size_t json_len, void *opaque) {
    iqp_stream *s = opaque;
    (void)rk;
    json_t *root = json_loadb(json, json_len, 0, NULL), *b;
    const char *name;
    int up = 0, known = 0;
    json_object_foreach(json_object_get(root, "brokers"), name, b) {
        const char *source = json_string_value(json_object_get(b, "source"));
        const char *state = json_string_value(json_object_get(b, "state"));
        if (source && (!strcmp(source, "internal") || !strcmp(source, "logical"))) continue;
        known++;
        up += state && strcmp(state, "UP") == 0;
    }
    if (root) {
        s->have_broker_stats = 1;
        s->brokers_up = up;
        s->brokers_known = known;
        if (s->m) iqp_metrics_set(s->m, "iqp_kafka_brokers_up", "", up);
        update_health(s);
    }
    json_decref(root);
    return 0; /* librdkafka frees json */
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    iqp_stream *s = opaque;
    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        s->brokers_up = 0;
        update_health(s);
    }
    if (err == RD_KAFKA_RESP_ERR__FATAL) fail(s, "kafka", reason);
}

/* ---- one message --------------------------------------------------------- */

static int dead_letter(iqp_stream *s, int topic, const rd_kafka_message_t *msg, const char *code,
                       const char *reason) {
    char err[512];
    iqp_dl_origin o = {s->topics[topic], msg->partition, (uint64_t)msg->offset};
    if (iqp_deadletter_write_from(s->dl, code, reason, &o, msg->payload, msg->len, msg->len, err,
                                  sizeof err) < 0)
        return fail(s, "dead-letter sink", err), -1;
    s->stats.dead_lettered++;
    count_event(s, topic, "dead_lettered");
    if (s->m) {
        char labels[300];
        snprintf(labels, sizeof labels, "topic=\"%s\",code=\"%s\"", s->topic_labels[topic], code);
        iqp_metrics_add(s->m, "iqp_dead_letters_total", labels, 1);
    }
    return 0;
}

static void remember_ts(iqp_stream *s, const rd_kafka_message_t *msg) {
    rd_kafka_timestamp_type_t type;
    int64_t ts = rd_kafka_message_timestamp(msg, &type);
    if (type == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE || ts <= 0) return;
    if (s->n_batch_ts == s->cap_batch_ts) {
        s->cap_batch_ts = s->cap_batch_ts ? 2 * s->cap_batch_ts : 4096;
        s->batch_ts = realloc(s->batch_ts, s->cap_batch_ts * sizeof *s->batch_ts);
        if (!s->batch_ts) abort();
    }
    s->batch_ts[s->n_batch_ts++] = ts;
}

/* Counts (or restores) one decoded event into agg, the aggregator of its
 * partition's task; -1 on an operational failure. */
static int aggregate(iqp_stream *s, iqp_aggregator *agg, int topic, const rd_kafka_message_t *msg,
                     const iqp_event *ev, int restoring) {
    char err[512];
    iqp_agg_outcome out = restoring ? iqp_aggregator_restore(agg, ev, iqp_wall_ms(), err, sizeof err)
                                    : iqp_aggregator_add(agg, ev, iqp_wall_ms(), err, sizeof err);
    switch (out) {
    case IQP_AGG_COUNTED:
        if (restoring) return s->stats.restored++, count_event(s, topic, "restored"), 0;
        s->stats.counted++;
        count_event(s, topic, "counted");
        remember_ts(s, msg);
        return 0;
    case IQP_AGG_DUPLICATE:
    case IQP_AGG_LATE:
        if (restoring) return count_event(s, topic, "restore_skipped"), 0;
        if (out == IQP_AGG_LATE) return s->stats.late++, count_event(s, topic, "late"), 0;
        return s->stats.duplicate++, count_event(s, topic, "duplicate"), 0;
    case IQP_AGG_FUTURE: {
        if (restoring) return count_event(s, topic, "restore_skipped"), 0;
        char reason[200];
        snprintf(reason, sizeof reason,
                 "future_event: ts: %lld is more than %lld ms ahead of the clock",
                 (long long)ev->ts, (long long)s->cfg->max_future_skew_ms);
        return dead_letter(s, topic, msg, "future_event", reason);
    }
    case IQP_AGG_ERROR: default: return fail(s, "store read", err), -1;
    }
}

/* Lost events: a partition's position is no longer on the broker (the
 * broker evicted events before they were counted). Counted in
 * iqp_kafka_offset_resets_total{topic,partition} and logged with the lost
 * range, always. Then, by default, the stream stops (exit 1, nothing
 * skipped): librdkafka's own auto.offset.reset is "error", and its
 * RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET comes here (offset_lost). With
 * skip_lost, librdkafka's reset is "earliest" and the jump shows as a gap:
 * a message whose offset is past the partition's next offset while that
 * next offset is no longer on the broker (skipped_range). A gap that the
 * broker still holds (transaction markers, compaction) is not a loss. */
static void report_lost(iqp_stream *s, int t, int32_t partition, int64_t from, int64_t to, int64_t lo,
                        int64_t hi) {
    char labels[300];
    if (s->m) {
        snprintf(labels, sizeof labels, "topic=\"%s\",partition=\"%d\"", s->topic_labels[t], (int)partition);
        iqp_metrics_add(s->m, "iqp_kafka_offset_resets_total", labels, 1);
    }
    if (lo < 0) {
        fprintf(stderr, "iqp stream: %s/%d: offset %lld is no longer on the broker (its range could not be "
                        "read): the events from offset %lld on that it dropped are lost\n",
                s->topics[t], (int)partition, (long long)from, (long long)from);
        return;
    }
    fprintf(stderr, "iqp stream: %s/%d: offset %lld is no longer on the broker (it keeps %lld..%lld): the "
                    "events at offsets %lld..%lld were never counted and are lost%s\n",
            s->topics[t], (int)partition, (long long)from, (long long)lo, (long long)hi - 1, (long long)from,
            (long long)to, s->skip_lost ? " (stream.on_offset_lost skip: going on)" : "");
}

static void offset_lost(iqp_stream *s, const rd_kafka_message_t *msg) {
    const char *topic = rd_kafka_topic_name(msg->rkt);
    int t = topic_index(s, topic);
    part_state *p = t < 0 ? NULL : find_part(s, t, msg->partition);
    int64_t from = p && p->next_offset >= 0 ? p->next_offset : msg->offset, lo = -1, hi = -1;
    char why[600];
    if (!p) return; /* released meanwhile */
    if (p->next_offset < 0 && p->restore_until < 0 && msg->offset < 0) {
        snprintf(why, sizeof why, "%s/%d has no stored offset and auto.offset.reset is error", topic,
                 (int)msg->partition);
        return fail(s, "kafka", why);
    }
    rd_kafka_query_watermark_offsets(s->rk, topic, msg->partition, &lo, &hi, 5000);
    report_lost(s, t, msg->partition, from, lo - 1, lo, hi);
    snprintf(why, sizeof why, "%s/%d: offset %lld is no longer on the broker (events %lld..%lld are lost); "
                              "stopping (stream.on_offset_lost \"skip\" would go on from offset %lld)",
             topic, (int)msg->partition, (long long)from, (long long)from, (long long)lo - 1, (long long)lo);
    fail(s, "kafka", why);
}

/* skip_lost: msg jumps past p's next offset; a loss when the broker no
 * longer holds that offset. */
static void skipped_range(iqp_stream *s, int t, const part_state *p, const rd_kafka_message_t *msg) {
    int64_t lo = -1, hi = -1;
    if (p->next_offset < 0 || msg->offset <= p->next_offset) return;
    if (rd_kafka_query_watermark_offsets(s->rk, s->topics[t], p->partition, &lo, &hi, 5000) != 0 ||
        p->next_offset >= lo)
        return;
    report_lost(s, t, p->partition, p->next_offset, msg->offset - 1, lo, hi);
}

/* Counts one message, decoded on the decode thread (d; see "Decode
 * thread"), in the order it was polled. */
static int handle_message(iqp_stream *s, const rd_kafka_message_t *msg, iqp_decoded_line *d) {
    int topic = topic_index(s, rd_kafka_topic_name(msg->rkt));
    part_state *p = topic < 0 ? NULL : find_part(s, topic, msg->partition);
    if (!p) return 0; /* a straggler of a partition just released */
    int restoring = p->restore_until >= 0 && msg->offset < p->restore_until;
    if (s->skip_lost) skipped_range(s, topic, p, msg);
    int rc = 0, resent = s->origin_topics[0] ? origin_resent(s, p, msg) : 0;
    if (resent < 0) return -1;
    s->stats.messages++;
    s->batch_events++;
    if (resent) {
        s->stats.resent++;
        count_event(s, topic, "resent");
    } else if (!d->ok) {
        char reason[300];
        iqp_decode_error_format(&d->err, reason, sizeof reason);
        if (restoring) count_event(s, topic, "restore_skipped");
        else rc = dead_letter(s, topic, msg, iqp_decode_code_name(d->err.code), reason);
    } else {
        rc = aggregate(s, p->task->agg, topic, msg, &d->ev, restoring);
    }
    if (p->published < 0) p->published = msg->offset; /* a new owner would start here */
    p->next_offset = msg->offset + 1;
    p->dirty = 1;
    return rc;
}

/* ---- the decode thread (see "Decode thread" at the top) ------------------- */

/* Counts a decoded batch in order (nothing more after a fatal failure)
 * and frees its messages. */
static void count_batch(iqp_stream *s, iqp_decoded_batch *b, int count) {
    for (size_t i = 0; i < b->n; i++) {
        rd_kafka_message_t *msg = b->lines[i].tag;
        if (count && !s->fatal) handle_message(s, msg, &b->lines[i]);
        rd_kafka_message_destroy(msg);
    }
    iqp_decode_queue_release(b);
}

/* Hands a polled message to the decode thread, counting the oldest
 * decoded batch first when the queue has no room. */
static void pipeline_put(iqp_stream *s, rd_kafka_message_t *msg) {
    while (iqp_decode_queue_put(s->dq, msg->payload, msg->len, msg) < 0)
        count_batch(s, iqp_decode_queue_next(s->dq), 1);
}

/* Counts (count = 1) or drops every message polled so far, waiting for
 * the decode thread: afterwards the pipeline is empty, as if each message
 * had been counted when it was polled. Before every cut, rebalance and
 * error message, so a batch, a revoke or a rewind always sees every
 * message polled before it. */
/* Hands the partly filled batch to the decode thread, counting (or
 * dropping) the oldest decoded batch first while every batch is out. */
static void pipeline_send(iqp_stream *s, int count) {
    while (iqp_decode_queue_send(s->dq) < 0) count_batch(s, iqp_decode_queue_next(s->dq), count);
}

static void pipeline_finish(iqp_stream *s, int count) {
    iqp_decoded_batch *b;
    pipeline_send(s, count);
    while ((b = iqp_decode_queue_next(s->dq))) count_batch(s, b, count);
}

static void pipeline_drain(iqp_stream *s) { pipeline_finish(s, 1); }

static void handle_error(iqp_stream *s, const rd_kafka_message_t *msg) {
    if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) return;
    if (msg->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET && msg->rkt) return offset_lost(s, msg);
    fprintf(stderr, "iqp stream: kafka: %s\n", rd_kafka_message_errstr(msg));
    if (msg->err == RD_KAFKA_RESP_ERR__FATAL) fail(s, "kafka", rd_kafka_message_errstr(msg));
}

/* ---- periodic ------------------------------------------------------------ */

static void update_lag(iqp_stream *s) {
    for (size_t i = 0; i < s->n_parts; i++) {
        part_state *p = &s->parts[i];
        int64_t lo, hi;
        if (p->next_offset < 0) continue;
        if (rd_kafka_get_watermark_offsets(s->rk, s->topics[p->topic], p->partition, &lo, &hi))
            continue;
        set_lag(s, p, hi > p->next_offset ? (double)(hi - p->next_offset) : 0);
    }
}

static void periodic(iqp_stream *s, int64_t now) {
    if (s->m) update_lag(s);
    if (s->m && now - s->last_store_size_ms >= STORE_SIZE_EVERY_MS) {
        s->last_store_size_ms = now;
        uint64_t bytes = 0;
        for (size_t i = 0; i < s->n_tasks; i++) {
            uint64_t one = iqp_store_disk_bytes(s->tasks[i]->st);
            set_task_size(s, s->tasks[i], (double)one);
            bytes += one;
        }
        iqp_metrics_set(s->m, "iqp_store_size_bytes", "", (double)bytes);
    }
    if (s->progress && now - s->last_progress_ms >= 2000) {
        s->last_progress_ms = now;
        fprintf(stderr, "iqp stream: %llu messages, %llu counted, %llu dead-lettered, %zu partitions\n",
                (unsigned long long)s->stats.messages, (unsigned long long)s->stats.counted,
                (unsigned long long)s->stats.dead_lettered, s->n_parts);
    }
}

/* ---- life cycle ---------------------------------------------------------- */

static const char *const default_props[] = {
    "group.id", "iqp-stream",          "auto.offset.reset", "earliest",
    "enable.partition.eof", "false",   "statistics.interval.ms", "1000",
    /* as the Java client: retry a lost broker every second at most, so
     * counting (and /healthz) recover within seconds of an outage */
    "reconnect.backoff.max.ms", "1000",
    /* A fetch that finds nothing new waits at most 25 ms for data, not
     * librdkafka's 500 ms: a whole flush interval that the events arriving
     * meanwhile would add to their event-to-store latency wherever the
     * broker does not answer as soon as data comes (the devbroker's mock
     * holds every empty fetch for the full wait: bench/stream measured
     * p50 ~800 -> ~500 ms at half rate). A broker that answers at once
     * (fetch.min.bytes 1) is only polled more often while idle. */
    "fetch.wait.max.ms", "25", NULL};
static const char *const forced_props[] = {
    "enable.auto.commit", "false", "enable.auto.offset.store", "false", NULL};

const char *const *iqp_stream_kafka_defaults(void) { return default_props; }
const char *const *iqp_stream_kafka_forced(void) { return forced_props; }

int iqp_stream_kafka_consumer_only(const char *name) {
    static const char *const prefixes[] = {
        "group.", "session.timeout", "heartbeat.", "partition.assignment", "max.poll.",
        "enable.auto.", "auto.commit", "auto.offset", "queued.", "fetch.", "enable.partition.eof",
        "check.crcs", "isolation.level", "coordinator.query", "consume.callback", "offset.store",
        NULL};
    for (const char *const *p = prefixes; *p; p++)
        if (strncmp(name, *p, strlen(*p)) == 0) return 1;
    return 0;
}

/* The user's auto.offset.reset (the last one given; default earliest)
 * decides where a partition without any stored offset starts; librdkafka's
 * own is set apart ("error", or "earliest" with skip_lost: see "Lost
 * events") so that a stored offset out of range is never skipped silently. */
static int new_partition_start(const char *const *kv, int64_t *start, char *err, size_t errlen) {
    const char *v = "earliest";
    for (; kv && kv[0] && kv[1]; kv += 2)
        if (strcmp(kv[0], "auto.offset.reset") == 0) v = kv[1];
    if (!strcmp(v, "earliest") || !strcmp(v, "smallest") || !strcmp(v, "beginning"))
        *start = RD_KAFKA_OFFSET_BEGINNING;
    else if (!strcmp(v, "latest") || !strcmp(v, "largest") || !strcmp(v, "end"))
        *start = RD_KAFKA_OFFSET_END;
    else if (!strcmp(v, "error"))
        *start = RD_KAFKA_OFFSET_INVALID;
    else
        return snprintf(err, errlen, "kafka property auto.offset.reset=%s: want earliest, latest or error", v), -1;
    return 0;
}

static int set_props(rd_kafka_conf_t *conf, const char *const *kv, char *err, size_t errlen) {
    char kerr[256];
    for (; kv && kv[0] && kv[1]; kv += 2)
        if (rd_kafka_conf_set(conf, kv[0], kv[1], kerr, sizeof kerr) != RD_KAFKA_CONF_OK) {
            snprintf(err, errlen, "kafka property %s=%s: %s", kv[0], kv[1], kerr);
            return -1;
        }
    return 0;
}

static int check_user_props(const char *const *kv, char *err, size_t errlen) {
    for (; kv && kv[0] && kv[1]; kv += 2)
        for (const char *const *f = forced_props; *f; f += 2)
            if (strcmp(kv[0], f[0]) == 0 && strcmp(kv[1], f[1]) != 0) {
                snprintf(err, errlen,
                         "kafka property %s must stay %s: iqp stream commits offsets itself, "
                         "with the counts", f[0], f[1]);
                return -1;
            }
    return 0;
}

/* With a state dir the assignor must be range (see create_consumer). */
static int check_assignor(const char *const *kv, char *err, size_t errlen) {
    for (; kv && kv[0] && kv[1]; kv += 2)
        if (strcmp(kv[0], "partition.assignment.strategy") == 0 && strcmp(kv[1], "range") != 0) {
            snprintf(err, errlen, "kafka property partition.assignment.strategy=%s: --state-dir needs "
                                  "\"range\", which keeps partition p of both topics together", kv[1]);
            return -1;
        }
    return 0;
}

/* The partition count of topic t from the brokers' metadata; -1 with err. */
static int partition_count(iqp_stream *s, int t, char *err, size_t errlen) {
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(s->rk, s->topics[t], NULL);
    rd_kafka_resp_err_t e = rkt ? rd_kafka_metadata(s->rk, 0, rkt, &md, 10000) : rd_kafka_last_error();
    int n = -1;
    if (!e && (md->topic_cnt != 1 || md->topics[0].err)) e = md->topic_cnt ? md->topics[0].err
                                                                            : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
    if (e) snprintf(err, errlen, "cannot read the partitions of topic '%s': %s", s->topics[t], rd_kafka_err2str(e));
    else n = md->topics[0].partition_cnt;
    if (md) rd_kafka_metadata_destroy(md);
    if (rkt) rd_kafka_topic_destroy(rkt);
    return n;
}

/* State dir: both topics must have the same partition count (partition
 * p of each is one task's). 0, or -1 with err. */
static int check_partition_counts(iqp_stream *s, char *err, size_t errlen) {
    int n[N_TOPICS];
    for (int t = 0; t < N_TOPICS; t++)
        if ((n[t] = partition_count(s, t, err, errlen)) < 0) return -1;
    s->n_slices = n[0];
    if (n[0] == n[1]) return 0;
    snprintf(err, errlen, "topic '%s' has %d partitions and '%s' %d: --state-dir keeps partition p of both "
                          "in one store, so both topics need the same partition count",
             s->topics[0], n[0], s->topics[1], n[1]);
    return -1;
}

static rd_kafka_t *create_consumer(iqp_stream *s, const iqp_stream_options *o, char *err,
                                   size_t errlen) {
    char kerr[512];
    if (check_user_props(o->kafka_props, err, errlen) < 0 ||
        new_partition_start(o->kafka_props, &s->new_start, err, errlen) < 0)
        return NULL;
    /* a state dir needs partition p of both topics in one member's hands:
     * the range assignor gives each member the same partition numbers of
     * every topic when the partition counts are equal (checked at start) */
    const char *const reset[] = {"auto.offset.reset", o->skip_lost_offsets ? "earliest" : "error",
                                 o->state_dir ? "partition.assignment.strategy" : NULL, "range", NULL};
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if ((o->state_dir && check_assignor(o->kafka_props, err, errlen) < 0) ||
        set_props(conf, default_props, err, errlen) < 0 ||
        set_props(conf, o->kafka_props, err, errlen) < 0 ||
        set_props(conf, forced_props, err, errlen) < 0 || set_props(conf, reset, err, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, s);
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_stats_cb(conf, stats_cb);
    rd_kafka_conf_set_offset_commit_cb(conf, offset_commit_cb);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof kerr);
    if (!rk) {
        rd_kafka_conf_destroy(conf); /* still ours when rd_kafka_new fails */
        snprintf(err, errlen, "cannot create the Kafka consumer: %s", kerr);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

static int subscribe(iqp_stream *s, char *err, size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(N_TOPICS);
    for (int t = 0; t < N_TOPICS; t++)
        rd_kafka_topic_partition_list_add(l, s->topics[t], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(s->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) snprintf(err, errlen, "cannot subscribe to %s, %s: %s", s->topics[0], s->topics[1],
                    rd_kafka_err2str(e));
    return e ? -1 : 0;
}

static void set_topics(iqp_stream *s, const iqp_stream_options *o) {
    const char *names[N_TOPICS] = {o->impressions_topic ? o->impressions_topic : "impressions",
                                   o->actions_topic ? o->actions_topic : "actions"};
    for (int t = 0; t < N_TOPICS; t++) {
        char label[256];
        s->topics[t] = strdup(names[t]);
        iqp_metrics_label_value(names[t], label, sizeof label);
        s->topic_labels[t] = strdup(label);
        if (!s->topics[t] || !s->topic_labels[t]) abort();
    }
}

iqp_stream *iqp_stream_new(iqp_store *st, const iqp_stream_options *o, char *err, size_t errlen) {
    iqp_stream *s = calloc(1, sizeof *s);
    if (!s) abort();
    if (o->state_dir && (s->state_dir = strdup(o->state_dir)) == NULL) abort();
    if (o->state_dir && o->checkpoint_dir && (s->ckdir = strdup(o->checkpoint_dir)) == NULL) abort();
    if (s->ckdir) s->ckw = iqp_pck_writer_new(s->ckdir, checkpoint_progress, s);
    s->ckpt_interval_ms = o->checkpoint_interval_ms > 0 ? o->checkpoint_interval_ms : IQP_STREAM_DEFAULT_CHECKPOINT_MS;
    s->cfg = o->state_dir ? o->cfg : iqp_store_config(st);
    s->dq = iqp_decode_queue_start_fed(s->cfg);
    s->dl = o->dl;
    s->m = o->metrics;
    s->ckpt = o->checkpoints;
    s->flush_ms = o->flush_ms > 0 ? o->flush_ms : IQP_STREAM_DEFAULT_FLUSH_MS;
    s->progress = o->progress;
    s->on_tick = o->on_tick;
    s->tick_arg = o->tick_arg;
    if (o->state_dir) {
        s->on_partition_open = o->on_partition_open;
        s->on_partition_close = o->on_partition_close;
        s->partition_ud = o->partition_ud;
    }
    set_topics(s, o);
    for (int t = 0; t < N_TOPICS && o->state_dir && o->origin_topics[0]; t++)
        if ((s->origin_topics[t] = strdup(o->origin_topics[t] ? o->origin_topics[t] : "")) == NULL) abort();
    if (strcmp(s->topics[0], s->topics[1]) == 0) {
        snprintf(err, errlen, "the impressions and actions topics must differ (both '%s')", s->topics[0]);
        iqp_stream_free(s);
        return NULL;
    }
    declare_metrics(s->m);
    if (s->ckdir) declare_checkpoint_metrics(s->m);
    if (!s->state_dir) iqp_store_set_ingest(st, IQP_STORE_INGEST_MIN_MERGES); /* "Store writes" */
    if (!s->state_dir) add_task(s, -1, st, 0);
    s->rk = create_consumer(s, o, err, errlen);
    if (s->rk) s->probe_q = rd_kafka_queue_new(s->rk);
    if (!s->rk || (s->state_dir && check_partition_counts(s, err, errlen) < 0) || subscribe(s, err, errlen) < 0) {
        iqp_stream_free(s);
        return NULL;
    }
    s->watch_redis = o->watch_redis;
    s->skip_lost = o->skip_lost_offsets;
    update_health(s);
    return s;
}

/* How long after a cut the next one is due: flush_ms less the time the
 * last batch took from its cut to its write's end, so that a batch's
 * events are in the store about flush_ms after the first of them came
 * ("Cut rule"); at least half of flush_ms. */
static int64_t cut_interval(const iqp_stream *s) {
    int64_t lead = s->cut_to_stored_ms, most = s->flush_ms / 2;
    return s->flush_ms - (lead < 0 ? 0 : lead > most ? most : lead);
}

static int64_t poll_timeout(const iqp_stream *s, int64_t now) {
    int64_t left = s->last_flush_ms + cut_interval(s) - now, most = s->writing ? WRITE_POLL_MS : POLL_MS;
    if (s->writing && left < 0) return WRITE_POLL_MS; /* the cut waits for the write ("Cut rule") */
    return left < 0 ? 0 : left < most ? left : most;
}

/* The batch in hand is cut now ("Cut rule"). */
static int cut_due(iqp_stream *s, int64_t now) {
    for (size_t i = 0; i < s->n_tasks; i++)
        if (iqp_aggregator_should_flush(s->tasks[i]->agg)) return 1;
    return !s->writing && now - s->last_flush_ms >= cut_interval(s);
}

/* Flushes, commits synchronously and leaves the group. */
static void close_consumer(iqp_stream *s) {
    if (s->closed || !s->rk) return;
    s->closed = 1;
    s->closing = 1;
    stream_flush(s, CLOSE_PUBLISH_MS, 1);
    rd_kafka_consumer_close(s->rk);
}

struct iqp_aggregator *iqp_stream_aggregator(iqp_stream *s) {
    return s->state_dir || s->n_tasks == 0 ? NULL : s->tasks[0]->agg;
}

/* Every task's write of the batch in flight is done. */
static int writes_done(iqp_stream *s) {
    for (size_t i = 0; i < s->n_tasks; i++)
        if (!iqp_aggregator_flush_written(s->tasks[i]->agg)) return 0;
    return 1;
}

int iqp_stream_run(iqp_stream *s, char *err, size_t errlen) {
    s->last_flush_ms = s->last_store_size_ms = s->last_progress_ms = iqp_mono_ms();
    while (!iqp_stop_requested() && !s->fatal) {
        int64_t now = iqp_mono_ms();
        int busy = iqp_decode_queue_pending(s->dq) > 0;
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(s->rk, busy ? 0 : (int)poll_timeout(s, now));
        iqp_decoded_batch *b;
        if (msg && msg->err) {
            pipeline_drain(s); /* in order: the messages before it first */
            handle_error(s, msg);
            rd_kafka_message_destroy(msg);
        } else if (msg) {
            pipeline_put(s, msg);
        } else if (busy) { /* caught up with librdkafka: count what is in the queue */
            pipeline_send(s, 1);
            if ((b = iqp_decode_queue_next(s->dq))) count_batch(s, b, 1);
        }
        while ((b = iqp_decode_queue_try_next(s->dq))) count_batch(s, b, 1);
        now = iqp_mono_ms();
        if (now - s->last_health_ms >= HEALTH_EVERY_MS) update_health(s);
        if (s->writing && writes_done(s)) finish_write(s, 0);
        if (s->ckw) checkpoint_partitions(s, now);
        if (cut_due(s, now)) {
            stream_flush(s, PUBLISH_MS, 0);
            periodic(s, now);
        }
        if (s->on_tick) s->on_tick(s->tick_arg, 0);
    }
    if (s->on_tick) s->on_tick(s->tick_arg, 1);
    if (!s->fatal) close_consumer(s);
    pipeline_finish(s, 0); /* after a failure: polled, never counted */
    if (s->fatal) {
        snprintf(err, errlen, "%s", s->fatal_msg);
        return -1;
    }
    return 0;
}

/* p-th percentile (0..1) of the latency histogram, in ms. */
static double lat_percentile(const iqp_stream *s, double q) {
    uint64_t n = 0, want;
    for (size_t i = 0; i < LAT_BINS; i++) n += s->lat_hist[i];
    if (n == 0) return 0;
    want = (uint64_t)ceil(q * (double)n);
    if (want == 0) want = 1;
    for (size_t i = 0, seen = 0; i < LAT_BINS; i++)
        if ((seen += s->lat_hist[i]) >= want) return (double)i;
    return LAT_BINS - 1;
}

iqp_stream_stats iqp_stream_get_stats(iqp_stream *s) {
    iqp_stream_stats st = s->stats;
    st.latency_p50_ms = lat_percentile(s, 0.50);
    st.latency_p99_ms = lat_percentile(s, 0.99);
    return st;
}

void iqp_stream_free(iqp_stream *s) {
    if (!s) return;
    if (s->rk) {
        if (!s->fatal) close_consumer(s);
        pipeline_finish(s, 0); /* the messages go back before their consumer */
        if (s->probe_q) rd_kafka_queue_destroy(s->probe_q);
        rd_kafka_destroy(s->rk);
    }
    iqp_decode_queue_finish(s->dq, NULL, NULL, 0);
    while (s->n_tasks) close_task(s, s->n_tasks - 1);
    iqp_pck_writer_free(s->ckw);
    free(s->tasks);
    free(s->state_dir);
    free(s->ckdir);
    for (int t = 0; t < N_TOPICS; t++) {
        free(s->topics[t]);
        free(s->topic_labels[t]);
        free(s->origin_topics[t]);
    }
    free(s->parts);
    free(s->batch_ts);
    free(s->write_ts);
    free(s);
}

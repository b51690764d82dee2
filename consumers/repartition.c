/* repartition.c -- stage 1 of `iqp stream --repartition` (see repartition.h
 * for the contract).
 *
 * Design
 * ------
 * Why: a partition store (--state-dir) counts the contexts of the events in
 * its input partition. Input not keyed by normalized query splits a context
 * (country "US" of c_item, a query of q_item) over partitions. Stage 1
 * sends each event to the partitions r of the repartition topics whose
 * slice owns one of its contexts (iqp_count_slices_of, R = their partition
 * count); stage 2 is an ordinary --state-dir stream on those topics in
 * which store r counts only slice r's contexts. So every context is whole
 * in one store.
 *
 * One thread does everything Kafka needs on one thread: it polls the
 * consumer (the rebalance callback runs inside that poll), decodes each
 * message (schemas/event.h; the decoding the stream does, but here only to
 * find the slices: the bytes go on unchanged), produces the copies
 * (RD_KAFKA_MSG_F_COPY; no key; header iqp.origin = "<partition>/<offset>"
 * of the input message) and serves the producer's delivery reports
 * (rd_kafka_poll, rd_kafka_flush). A message that does not decode goes
 * once to partition (p % R) of the same-kind topic: stage 2 decodes it
 * again and dead-letters it there, so this thread has no dead-letter sink.
 *
 * Commit protocol. Every commit_ms: rd_kafka_flush the producer until
 * every record produced so far is acknowledged (a delivery error stops the
 * thread as failed: nothing is committed after it), then commit, synchronously,
 * the position (last consumed offset + 1) of every partition consumed
 * since the last commit. On revoke the same runs for the revoked
 * partitions before they are let go, so the next owner starts where this
 * one stopped; at stop, for all of them, before the consumer is closed.
 * An offset is therefore committed only when every record of every message
 * before it is on the broker (at least once: nothing is lost). A flush that
 * does not finish within FLUSH_WAIT_MS (brokers down) skips that commit: it
 * is tried again at the next interval.
 *
 * Producer. enable.idempotence=true keeps the records of one producer in
 * order per partition, without duplicates from its own retries (the
 * devbroker, librdkafka 2.0.2's mock cluster, accepts it: `iqp produce`
 * uses it too). enable.gapless.guarantee=true turns any error that could
 * leave a gap (a batch lost while a later one was written) into a fatal
 * error, and message.timeout.ms=0 keeps a record from timing out (the one
 * failure gapless does not cover): a record is retried until it is
 * written or the producer dies. These three are forced.
 *
 * Why stage 2's rule is exact. Stage 2's store r keeps, per origin
 * partition (the topic is the out topic's kind), the highest origin offset
 * it applied, and counts a record iff its origin offset is above it. Fix
 * one origin partition P and one out partition r, and call S the offsets
 * of P's messages routed to r, ascending (the "per-destination
 * subsequence"). Every sender of P (an owner between its assignment and
 * its revoke, or its death) starts at a committed offset c (or the
 * partition's beginning) and sends, in order and without gaps, the
 * elements of S from c on, up to some point: a contiguous run of S
 * (idempotence: in order; gapless and no timeout: a failure ends the run,
 * it does not skip inside it). Everything of S below c was acknowledged
 * before c was committed, so it is in r's log before the run's first
 * record. By induction over r's log, the records applied so far are always
 * a prefix s_1..s_m of S: a record s_j with j <= m is dropped (a repeat);
 * j = m + 1 extends the prefix; j > m + 1 cannot come, because its run
 * either sent s_{m+1} before it (in order, no gaps) or started above
 * s_{m+1}, which was then already in the log. So every element of S is
 * applied exactly once, whatever the senders. That covers a stalled former
 * owner: its records may land after the new owner's, but they are a
 * contiguous run from its own start, so they are all repeats of a prefix
 * the new owner's run or an earlier one already brought; and a commit of
 * a stalled member is refused by the coordinator (generation), or, if it
 * passed, vouches only for records that were acknowledged.
 *
 * Bounded memory: when the producer holds more than MAX_QUEUED records
 * the thread serves delivery reports until it is down to half of that;
 * a full queue (QUEUE_FULL) is waited out the same way.
 */
#include "consumers/repartition.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "aggregator/shards.h"
#include "consumers/stream.h"
#include "schemas/event.h"
#include "util/clock.h"

#define POLL_MS 100
#define FLUSH_WAIT_MS 10000      /* a periodic or revoke flush: then skip the commit */
#define STOP_FLUSH_MS 30000      /* the final flush at stop */
#define METADATA_MS 10000
#define MAX_QUEUED 20000         /* records in the producer before waiting */
#define N_KINDS 2

typedef struct part_pos {
    int kind;                    /* 0 impressions, 1 actions */
    int32_t partition;
    int64_t next;                /* last consumed offset + 1; -1: none yet */
    int64_t committed;           /* what this member last committed; -1: none */
} part_pos;

struct iqp_repartitioner {
    char *in_topics[N_KINDS], *out_topics[N_KINDS];
    char out_labels[N_KINDS][300];   /* topic="..." of iqp_repartition_records_total */
    const iqp_config *cfg;
    int64_t commit_ms;
    iqp_metrics *metrics;
    rd_kafka_t *consumer, *producer;
    rd_kafka_topic_t *out[N_KINDS];
    int32_t n_out;                   /* R */
    iqp_count_scratch scratch;
    unsigned *slices;                /* room for cfg->n_features */
    part_pos *parts;
    size_t n_parts, cap_parts;
    /* the thread's own */
    uint64_t delivered[N_KINDS];     /* acknowledged, not yet added to the metric */
    uint64_t dr_failed;
    char dr_err[256];
    char fatal[300];                 /* a fatal Kafka error, from error_cb */
    int failing;                     /* set on the thread: no commit any more */
    char fail_msg[512];
    int final_rc;                    /* the stop's outcome (set by the thread) */
    char final_err[512];
    /* shared */
    pthread_t thread;
    int started, stopped;
    atomic_int stop_req;
    pthread_mutex_t mu;
    int failed;                      /* published when the thread ended on an error */
    char err[512];
};

/* The consumer takes the stream's librdkafka defaults and forced
 * properties (iqp_stream_kafka_defaults, _forced): one group default,
 * fetch wait and offset rules for both stages. */
static const char *const producer_defaults[] = {"linger.ms", "5", "reconnect.backoff.max.ms", "1000", NULL};
static const char *const producer_forced[] = {
    "enable.idempotence", "true", "enable.gapless.guarantee", "true", "acks", "all",
    "message.timeout.ms", "0", NULL};

static int set_props(rd_kafka_conf_t *conf, const char *const *kv, int for_producer, char *err,
                     size_t errlen) {
    char kerr[256];
    for (; kv && kv[0] && kv[1]; kv += 2) {
        if (for_producer && iqp_stream_kafka_consumer_only(kv[0])) continue;
        if (rd_kafka_conf_set(conf, kv[0], kv[1], kerr, sizeof kerr) != RD_KAFKA_CONF_OK) {
            snprintf(err, errlen, "kafka property %s=%s: %s", kv[0], kv[1], kerr);
            return -1;
        }
    }
    return 0;
}

/* Marks the thread failed ("what: detail"; the first reason wins): it
 * commits nothing more. */
static void fail(iqp_repartitioner *r, const char *what, const char *detail) {
    if (r->failing) return;
    r->failing = 1;
    snprintf(r->fail_msg, sizeof r->fail_msg, "%s: %s", what, detail);
}

/* ---- callbacks (all served on the thread) ------------------------------------ */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    iqp_repartitioner *r = opaque;
    int kind = (int)(intptr_t)m->_private;
    if (!m->err) {
        r->delivered[kind]++;
        return;
    }
    if (!r->dr_failed++)
        snprintf(r->dr_err, sizeof r->dr_err, "%s [%d]: %s", r->out_topics[kind], (int)m->partition,
                 rd_kafka_err2str(m->err));
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    iqp_repartitioner *r = opaque;
    if (err != RD_KAFKA_RESP_ERR__FATAL || r->fatal[0]) return;
    char why[256];
    rd_kafka_fatal_error(rk, why, sizeof why);
    snprintf(r->fatal, sizeof r->fatal, "%s (%s)", why, reason);
}

/* ---- the partition table ---------------------------------------------------- */

static int kind_of(const iqp_repartitioner *r, const char *topic) {
    for (int k = 0; k < N_KINDS; k++)
        if (strcmp(topic, r->in_topics[k]) == 0) return k;
    return -1;
}

static part_pos *find_part(iqp_repartitioner *r, int kind, int32_t partition, int add) {
    for (size_t i = 0; i < r->n_parts; i++)
        if (r->parts[i].kind == kind && r->parts[i].partition == partition) return &r->parts[i];
    if (!add) return NULL;
    if (r->n_parts == r->cap_parts) {
        r->cap_parts = r->cap_parts ? 2 * r->cap_parts : 32;
        r->parts = realloc(r->parts, r->cap_parts * sizeof *r->parts);
        if (!r->parts) abort();
    }
    part_pos *p = &r->parts[r->n_parts++];
    *p = (part_pos){kind, partition, -1, -1};
    return p;
}

static void drop_part(iqp_repartitioner *r, int kind, int32_t partition) {
    part_pos *p = find_part(r, kind, partition, 0);
    if (p) *p = r->parts[--r->n_parts];
}

/* ---- deliver and commit ----------------------------------------------------- */

static void publish_delivered(iqp_repartitioner *r) {
    for (int k = 0; k < N_KINDS; k++) {
        if (r->metrics && r->delivered[k])
            iqp_metrics_add(r->metrics, "iqp_repartition_records_total", r->out_labels[k],
                            (double)r->delivered[k]);
        r->delivered[k] = 0;
    }
}

/* Serves delivery reports until the producer is empty, for at most
 * wait_ms. 1: everything delivered; 0: not yet (time up); -1: a delivery
 * failed or the producer died (the thread is failing). */
static int deliver_all(iqp_repartitioner *r, int64_t wait_ms) {
    int64_t deadline = iqp_mono_ms() + wait_ms;
    for (;;) {
        rd_kafka_flush(r->producer, 100);
        if (r->dr_failed) fail(r, "a record was not delivered", r->dr_err);
        if (r->fatal[0]) fail(r, "the producer failed", r->fatal);
        if (r->failing) return -1;
        if (rd_kafka_outq_len(r->producer) == 0) return 1;
        if (iqp_mono_ms() >= deadline) return 0;
    }
}

/* Commits the positions of the partitions consumed since their last commit
 * (only those in `only` when not NULL). 0, or -1 when the commit failed
 * (not fatal: a later owner sends those messages again, stage 2 drops the
 * repeats); the reason in err. */
static int commit_positions(iqp_repartitioner *r, const rd_kafka_topic_partition_list_t *only, char *err,
                            size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)r->n_parts + 1);
    for (size_t i = 0; i < r->n_parts; i++) {
        part_pos *p = &r->parts[i];
        if (p->next < 0 || p->next == p->committed) continue;
        if (only && !rd_kafka_topic_partition_list_find(only, r->in_topics[p->kind], p->partition)) continue;
        rd_kafka_topic_partition_list_add(l, r->in_topics[p->kind], p->partition)->offset = p->next;
    }
    int rc = 0;
    if (l->cnt > 0) {
        rd_kafka_resp_err_t e = rd_kafka_commit(r->consumer, l, 0);
        for (int i = 0; !e && i < l->cnt; i++)
            if (l->elems[i].err) e = l->elems[i].err;
        if (e) {
            snprintf(err, errlen, "cannot commit the input offsets: %s", rd_kafka_err2str(e));
            rc = -1;
        } else {
            for (int i = 0; i < l->cnt; i++) {
                part_pos *p = find_part(r, kind_of(r, l->elems[i].topic), l->elems[i].partition, 0);
                if (p) p->committed = l->elems[i].offset;
            }
            if (r->metrics) iqp_metrics_add(r->metrics, "iqp_repartition_commits_total", "", 1);
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

/* The commit protocol: everything produced is delivered, then the
 * positions are committed. 0 when committed (or nothing to commit), -1
 * otherwise (err says why; r->failing when it was a delivery failure). */
static int deliver_and_commit(iqp_repartitioner *r, const rd_kafka_topic_partition_list_t *only,
                              int64_t wait_ms, char *err, size_t errlen) {
    if (r->failing) return snprintf(err, errlen, "%s", r->fail_msg), -1;
    int d = deliver_all(r, wait_ms);
    publish_delivered(r);
    if (d < 0) return snprintf(err, errlen, "%s", r->fail_msg), -1;
    if (d == 0)
        return snprintf(err, errlen, "%d records not acknowledged within %lld ms: offsets not committed",
                        rd_kafka_outq_len(r->producer), (long long)wait_ms), -1;
    return commit_positions(r, only, err, errlen);
}

/* ---- rebalance ---------------------------------------------------------------- */

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *parts,
                         void *opaque) {
    iqp_repartitioner *r = opaque;
    int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    char err[512];
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        for (int i = 0; i < parts->cnt; i++) {
            int kind = kind_of(r, parts->elems[i].topic);
            if (kind >= 0) find_part(r, kind, parts->elems[i].partition, 1);
        }
        if (cooperative) rd_kafka_error_destroy(rd_kafka_incremental_assign(rk, parts));
        else rd_kafka_assign(rk, parts);
        return;
    }
    if (e == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS && !r->failing && !rd_kafka_assignment_lost(rk) &&
        deliver_and_commit(r, parts, FLUSH_WAIT_MS, err, sizeof err) < 0 && !r->failing)
        fprintf(stderr, "iqp repartition: on revoke: %s (the next owner sends them again; stage 2 drops "
                "the repeats)\n", err);
    for (int i = 0; i < parts->cnt; i++) {
        int kind = kind_of(r, parts->elems[i].topic);
        if (kind >= 0) drop_part(r, kind, parts->elems[i].partition);
    }
    if (cooperative) rd_kafka_error_destroy(rd_kafka_incremental_unassign(rk, parts));
    else rd_kafka_assign(rk, NULL);
}

/* ---- one message --------------------------------------------------------------- */

/* Produces one copy; waits out a full queue. 0, 1 when a stop came while
 * waiting (the message stays unconsumed), -1 failing. */
static int produce_copy(iqp_repartitioner *r, int kind, int32_t partition, const rd_kafka_message_t *m,
                        const char *origin, size_t origin_len) {
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            r->producer, RD_KAFKA_V_RKT(r->out[kind]), RD_KAFKA_V_PARTITION(partition),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE(m->payload, m->len),
            RD_KAFKA_V_HEADER(IQP_REPARTITION_ORIGIN_HEADER, origin, (ssize_t)origin_len),
            RD_KAFKA_V_OPAQUE((void *)(intptr_t)kind), RD_KAFKA_V_END);
        if (!e) return 0;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            char what[400];
            snprintf(what, sizeof what, "cannot produce the copy of %s [%d] offset %lld", r->in_topics[kind],
                     (int)m->partition, (long long)m->offset);
            fail(r, what, rd_kafka_err2str(e));
            return -1;
        }
        if (atomic_load(&r->stop_req)) return 1;
        rd_kafka_poll(r->producer, POLL_MS);
    }
}

/* Serves delivery reports while the producer holds too many records. */
static void bound_queue(iqp_repartitioner *r) {
    if (rd_kafka_outq_len(r->producer) <= MAX_QUEUED) return;
    while (rd_kafka_outq_len(r->producer) > MAX_QUEUED / 2 && !atomic_load(&r->stop_req) && !r->dr_failed &&
           !r->fatal[0])
        rd_kafka_poll(r->producer, 10);
}

/* Routes one consumed message. 0 (consumed), 1 (stop came: not consumed),
 * -1 (failing). */
static int route(iqp_repartitioner *r, const rd_kafka_message_t *m) {
    int kind = kind_of(r, rd_kafka_topic_name(m->rkt));
    if (kind < 0) return 0;
    iqp_event ev;
    iqp_decode_error derr;
    unsigned n = 1;
    if (iqp_event_decode(r->cfg, m->payload ? m->payload : "", m->len, &ev, &derr) == 0) {
        n = iqp_count_slices_of(r->cfg, &r->scratch, &ev, (unsigned)r->n_out, r->slices);
        iqp_event_clear(&ev);
    } else {
        r->slices[0] = (unsigned)(m->partition % r->n_out);
    }
    char origin[48];
    int olen = snprintf(origin, sizeof origin, "%d/%lld", (int)m->partition, (long long)m->offset);
    for (unsigned i = 0; i < n; i++) {
        int rc = produce_copy(r, kind, (int32_t)r->slices[i], m, origin, (size_t)olen);
        if (rc) return rc;
    }
    find_part(r, kind, m->partition, 1)->next = m->offset + 1;
    bound_queue(r);
    return 0;
}

/* A consumer message carrying an error: fatal ones stop the thread, the
 * rest (a broker away, a topic not there yet) are logged; librdkafka
 * retries them. */
static void consumer_error(iqp_repartitioner *r, const rd_kafka_message_t *m) {
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) return;
    char why[256];
    if (m->err == RD_KAFKA_RESP_ERR__FATAL && rd_kafka_fatal_error(r->consumer, why, sizeof why)) {
        fail(r, "the consumer failed", why);
        return;
    }
    fprintf(stderr, "iqp repartition: consumer: %s\n", rd_kafka_message_errstr(m));
}

/* ---- the thread ---------------------------------------------------------------- */

static void *repartition_main(void *arg) {
    iqp_repartitioner *r = arg;
    char err[512];
    pthread_setname_np(pthread_self(), "iqp-repart");
    int64_t next_commit = iqp_mono_ms() + r->commit_ms;
    while (!atomic_load(&r->stop_req) && !r->failing) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->consumer, POLL_MS);
        if (m) {
            if (m->err) consumer_error(r, m);
            else route(r, m);
            rd_kafka_message_destroy(m);
        }
        rd_kafka_poll(r->producer, 0);
        if (r->dr_failed) fail(r, "a record was not delivered", r->dr_err);
        if (r->fatal[0]) fail(r, "Kafka failed", r->fatal);
        if (r->failing || iqp_mono_ms() < next_commit) continue;
        if (deliver_and_commit(r, NULL, FLUSH_WAIT_MS, err, sizeof err) < 0 && !r->failing)
            fprintf(stderr, "iqp repartition: %s (retried at the next commit)\n", err);
        next_commit = iqp_mono_ms() + r->commit_ms;
    }
    /* stop (or failure): the last delivery and commit, then leave the group
     * (the revoke callback finds nothing more to commit) */
    r->final_rc = 0;
    if (deliver_and_commit(r, NULL, STOP_FLUSH_MS, r->final_err, sizeof r->final_err) < 0) r->final_rc = -1;
    /* everything acknowledged, only the commit refused (a rebalance in
     * progress as this member leaves): nothing is lost, the next owner
     * sends those messages again and stage 2 drops the repeats */
    if (r->final_rc < 0 && !r->failing && rd_kafka_outq_len(r->producer) == 0) {
        fprintf(stderr, "iqp repartition: at stop: %s (the next owner sends them again; stage 2 drops the "
                        "repeats)\n", r->final_err);
        r->final_rc = 0;
    }
    rd_kafka_consumer_close(r->consumer);
    if (r->failing) {
        pthread_mutex_lock(&r->mu);
        r->failed = 1;
        snprintf(r->err, sizeof r->err, "%s", r->fail_msg);
        pthread_mutex_unlock(&r->mu);
    }
    return NULL;
}

/* ---- start ---------------------------------------------------------------------- */

/* The partition counts of the repartition topics: both must exist and
 * agree. */
static int check_out_topics(iqp_repartitioner *r, char *err, size_t errlen) {
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(r->consumer, 1, NULL, &md, METADATA_MS);
    if (e) return snprintf(err, errlen, "cannot read the topic metadata: %s", rd_kafka_err2str(e)), -1;
    int counts[N_KINDS] = {-1, -1};
    for (int t = 0; t < md->topic_cnt; t++)
        for (int k = 0; k < N_KINDS; k++)
            if (!md->topics[t].err && strcmp(md->topics[t].topic, r->out_topics[k]) == 0)
                counts[k] = md->topics[t].partition_cnt;
    rd_kafka_metadata_destroy(md);
    for (int k = 0; k < N_KINDS; k++)
        if (counts[k] <= 0)
            return snprintf(err, errlen, "repartition topic '%s' does not exist (create it with the "
                            "partition count of the other)", r->out_topics[k]), -1;
    if (counts[0] != counts[1])
        return snprintf(err, errlen, "repartition topics '%s' (%d partitions) and '%s' (%d partitions) "
                        "must have the same partition count", r->out_topics[0], counts[0],
                        r->out_topics[1], counts[1]), -1;
    r->n_out = counts[0];
    return 0;
}

static rd_kafka_t *new_handle(iqp_repartitioner *r, rd_kafka_type_t type, const char *const *props,
                              char *err, size_t errlen) {
    int producer = type == RD_KAFKA_PRODUCER;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char kerr[256];
    if (set_props(conf, producer ? producer_defaults : iqp_stream_kafka_defaults(), producer, err, errlen) < 0 ||
        set_props(conf, props, producer, err, errlen) < 0 ||
        set_props(conf, producer ? producer_forced : iqp_stream_kafka_forced(), producer, err, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, r);
    rd_kafka_conf_set_error_cb(conf, on_error);
    if (producer) rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    else rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_t *rk = rd_kafka_new(type, conf, kerr, sizeof kerr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "cannot create the Kafka %s: %s", producer ? "producer" : "consumer", kerr);
        return NULL;
    }
    if (!producer) rd_kafka_poll_set_consumer(rk);
    return rk;
}

static int check_options(const iqp_repartition_options *o, char *err, size_t errlen) {
    if (!o->cfg) return snprintf(err, errlen, "repartition: no config"), -1;
    for (int k = 0; k < N_KINDS; k++)
        if (!o->in_topics[k] || !*o->in_topics[k] || !o->out_topics[k] || !*o->out_topics[k])
            return snprintf(err, errlen, "repartition: a topic name is missing"), -1;
    const char *all[4] = {o->in_topics[0], o->in_topics[1], o->out_topics[0], o->out_topics[1]};
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            if (strcmp(all[i], all[j]) == 0)
                return snprintf(err, errlen, "repartition: topic '%s' is named twice: the input and "
                                "repartition topics must be four different topics", all[i]), -1;
    return 0;
}

static int subscribe(iqp_repartitioner *r, char *err, size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(N_KINDS);
    for (int k = 0; k < N_KINDS; k++) rd_kafka_topic_partition_list_add(l, r->in_topics[k], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(r->consumer, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) snprintf(err, errlen, "cannot subscribe to %s, %s: %s", r->in_topics[0], r->in_topics[1],
                    rd_kafka_err2str(e));
    return e ? -1 : 0;
}

static void declare_metrics(iqp_metrics *m) {
    if (!m) return; /* declared already (a restart in one process): -1, ignored */
    iqp_metrics_declare(m, "iqp_repartition_records_total", IQP_METRIC_COUNTER,
                        "Records written to the repartition topics (acknowledged), by topic.", NULL, 0);
    iqp_metrics_declare(m, "iqp_repartition_commits_total", IQP_METRIC_COUNTER,
                        "Input offset commits of the repartitioner (after every record before them "
                        "was acknowledged).", NULL, 0);
}

iqp_repartitioner *iqp_repartition_start(const iqp_repartition_options *o, char *err, size_t errlen) {
    if (check_options(o, err, errlen) < 0) return NULL;
    iqp_repartitioner *r = calloc(1, sizeof *r);
    if (!r) abort();
    pthread_mutex_init(&r->mu, NULL);
    atomic_init(&r->stop_req, 0);
    r->cfg = o->cfg;
    r->commit_ms = o->commit_ms > 0 ? o->commit_ms : IQP_REPARTITION_COMMIT_MS;
    r->metrics = o->metrics;
    for (int k = 0; k < N_KINDS; k++) {
        r->in_topics[k] = strdup(o->in_topics[k]);
        r->out_topics[k] = strdup(o->out_topics[k]);
        if (!r->in_topics[k] || !r->out_topics[k]) abort();
        char v[256];
        iqp_metrics_label_value(r->out_topics[k], v, sizeof v);
        snprintf(r->out_labels[k], sizeof r->out_labels[k], "topic=\"%s\"", v);
    }
    iqp_count_scratch_init(&r->scratch, r->cfg);
    r->slices = calloc(r->cfg->n_features + 1, sizeof *r->slices);
    if (!r->slices) abort();
    if (!(r->consumer = new_handle(r, RD_KAFKA_CONSUMER, o->kafka_props, err, errlen)) ||
        !(r->producer = new_handle(r, RD_KAFKA_PRODUCER, o->kafka_props, err, errlen)) ||
        check_out_topics(r, err, errlen) < 0) {
        iqp_repartition_free(r);
        return NULL;
    }
    for (int k = 0; k < N_KINDS; k++) r->out[k] = rd_kafka_topic_new(r->producer, r->out_topics[k], NULL);
    if (!r->out[0] || !r->out[1] || subscribe(r, err, errlen) < 0) {
        if (!r->out[0] || !r->out[1]) snprintf(err, errlen, "cannot create the repartition topic handles");
        iqp_repartition_free(r);
        return NULL;
    }
    declare_metrics(r->metrics);
    for (int k = 0; k < N_KINDS && r->metrics; k++)
        iqp_metrics_add(r->metrics, "iqp_repartition_records_total", r->out_labels[k], 0);
    if (pthread_create(&r->thread, NULL, repartition_main, r) != 0) abort();
    r->started = 1;
    return r;
}

int32_t iqp_repartition_partitions(const iqp_repartitioner *r) { return r->n_out; }

int iqp_repartition_failed(iqp_repartitioner *r, char *err, size_t errlen) {
    pthread_mutex_lock(&r->mu);
    int failed = r->failed;
    if (failed && err) snprintf(err, errlen, "%s", r->err);
    pthread_mutex_unlock(&r->mu);
    return failed;
}

int iqp_repartition_stop(iqp_repartitioner *r, char *err, size_t errlen) {
    if (!r->started || r->stopped) return snprintf(err, errlen, "repartitioner not running"), -1;
    atomic_store(&r->stop_req, 1);
    pthread_join(r->thread, NULL);
    r->stopped = 1;
    if (r->failing) return snprintf(err, errlen, "%s", r->fail_msg), -1;
    if (r->final_rc < 0) return snprintf(err, errlen, "%s", r->final_err), -1;
    return 0;
}

void iqp_repartition_free(iqp_repartitioner *r) {
    if (!r) return;
    if (r->started && !r->stopped) {
        char err[512];
        iqp_repartition_stop(r, err, sizeof err);
    }
    for (int k = 0; k < N_KINDS; k++)
        if (r->out[k]) rd_kafka_topic_destroy(r->out[k]);
    if (r->producer) {
        /* anything still queued was not acknowledged, so not committed */
        rd_kafka_purge(r->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(r->producer, 0);
        rd_kafka_destroy(r->producer);
    }
    if (r->consumer) {
        if (!r->started) rd_kafka_consumer_close(r->consumer);
        rd_kafka_destroy(r->consumer);
    }
    iqp_count_scratch_free(&r->scratch, r->cfg);
    free(r->slices);
    free(r->parts);
    for (int k = 0; k < N_KINDS; k++) free(r->in_topics[k]), free(r->out_topics[k]);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* checkpoint.c -- the checkpoint topic (see checkpoint.h).
 *
 * Design
 * ------
 * Two librdkafka handles: an idempotent producer (acks=all) that queues a
 * checkpoint per partition and flush, and a group-less consumer that reads
 * the topic incrementally. The reader keeps its position between reads and
 * folds every message into a small uthash table key -> largest offset, so
 * each assignment only reads what was written since the last one. A read
 * ends when every partition of the topic has been consumed up to the high
 * watermark queried at its start (a checkpoint written before the read
 * began is therefore seen).
 *
 * Warm producer. librdkafka learns a topic's partitions and leaders only
 * when the topic is first used, and then on its next metadata scan (every
 * second): the first flush's checkpoints used to wait 0.4-1 s for it, with
 * the stream's consuming thread blocked in iqp_checkpoints_sync (bench/stream
 * measured that stall as the tail of its event-to-store p99). So the
 * producer's topic handle is made, and its metadata read, when the handle
 * is created (bounded by WARM_MS; on failure the first put waits as before).
 */
#include "consumers/checkpoint.h"
#include "util/clock.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uthash.h>

#define MAX_CKPT_PARTITIONS 64
#define WARM_MS 5000

typedef struct ckpt_entry {
    char *key;                  /* "<group>/<topic>/<partition>" */
    int64_t offset;
    UT_hash_handle hh;
} ckpt_entry;

struct iqp_checkpoints {
    rd_kafka_t *producer;
    rd_kafka_topic_t *producer_topic; /* kept: the producer keeps its metadata fresh */
    rd_kafka_t *reader;
    char *topic, *group;
    int n_parts;                /* partitions of the checkpoint topic; 0 until known */
    ckpt_entry *seen;
    uint64_t failed;            /* delivery reports with an error */
    uint64_t failed_reported;   /* ... of which a sync has reported */
    char failure[256];
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    iqp_checkpoints *c = opaque;
    (void)rk;
    if (!m->err) return;
    c->failed++;
    snprintf(c->failure, sizeof c->failure, "%s", rd_kafka_err2str(m->err));
}

static rd_kafka_t *make_handle(rd_kafka_type_t type, const char *const *props, iqp_checkpoints *c,
                               char *err, size_t errlen) {
    static const char *const producer_props[] = {"enable.idempotence", "true", "acks", "all",
                                                 "linger.ms", "0", NULL};
    static const char *const reader_props[] = {"group.id", "iqp-checkpoint-reader",
                                               "enable.auto.commit", "false",
                                               "auto.offset.reset", "earliest",
                                               "enable.partition.eof", "true", NULL};
    const char *const *lists[2] = {props, type == RD_KAFKA_PRODUCER ? producer_props : reader_props};
    char kerr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (int l = 0; l < 2; l++)
        for (const char *const *p = lists[l]; p && p[0] && p[1]; p += 2)
            if (rd_kafka_conf_set(conf, p[0], p[1], kerr, sizeof kerr) != RD_KAFKA_CONF_OK) {
                snprintf(err, errlen, "checkpoint topic: kafka property %s: %s", p[0], kerr);
                rd_kafka_conf_destroy(conf);
                return NULL;
            }
    rd_kafka_conf_set_opaque(conf, c);
    if (type == RD_KAFKA_PRODUCER) rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(type, conf, kerr, sizeof kerr);
    if (!rk) {
        rd_kafka_conf_destroy(conf); /* still ours when rd_kafka_new fails */
        snprintf(err, errlen, "checkpoint topic: %s", kerr);
    } else if (type == RD_KAFKA_CONSUMER) {
        rd_kafka_poll_set_consumer(rk); /* errors and messages on one queue, served by reads */
    }
    return rk;
}

/* Makes the producer learn the topic's partitions and leaders now (see
 * "Warm producer"); a failure only leaves that to the first put. */
static void warm_producer(iqp_checkpoints *c) {
    const struct rd_kafka_metadata *md = NULL;
    c->producer_topic = rd_kafka_topic_new(c->producer, c->topic, NULL);
    if (c->producer_topic && rd_kafka_metadata(c->producer, 0, c->producer_topic, &md, WARM_MS) == 0)
        rd_kafka_metadata_destroy(md);
}

iqp_checkpoints *iqp_checkpoints_new(const char *const *props, const char *topic,
                                     const char *group, char *err, size_t errlen) {
    iqp_checkpoints *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->topic = strdup(topic);
    c->group = strdup(group);
    if (!c->topic || !c->group) abort();
    c->producer = make_handle(RD_KAFKA_PRODUCER, props, c, err, errlen);
    if (c->producer) warm_producer(c);
    c->reader = c->producer ? make_handle(RD_KAFKA_CONSUMER, props, c, err, errlen) : NULL;
    if (!c->reader) {
        iqp_checkpoints_free(c);
        return NULL;
    }
    return c;
}

void iqp_checkpoints_free(iqp_checkpoints *c) {
    if (!c) return;
    if (c->producer) {
        rd_kafka_flush(c->producer, 5000);
        if (c->producer_topic) rd_kafka_topic_destroy(c->producer_topic);
        rd_kafka_destroy(c->producer);
    }
    if (c->reader) {
        rd_kafka_assign(c->reader, NULL);
        rd_kafka_destroy(c->reader);
    }
    ckpt_entry *e, *tmp;
    HASH_ITER(hh, c->seen, e, tmp) {
        HASH_DEL(c->seen, e);
        free(e->key);
        free(e);
    }
    free(c->topic);
    free(c->group);
    free(c);
}

static char *make_key(const iqp_checkpoints *c, const char *topic, int32_t partition) {
    char *key;
    if (asprintf(&key, "%s/%s/%d", c->group, topic, (int)partition) < 0) abort();
    return key;
}

int iqp_checkpoints_put(iqp_checkpoints *c, const char *topic, int32_t partition,
                        int64_t next_offset, char *err, size_t errlen) {
    char *key = make_key(c, topic, partition), val[32];
    snprintf(val, sizeof val, "%lld", (long long)next_offset);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        c->producer, RD_KAFKA_V_TOPIC(c->topic), RD_KAFKA_V_KEY(key, strlen(key)),
        RD_KAFKA_V_VALUE(val, strlen(val)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    free(key);
    rd_kafka_poll(c->producer, 0);
    if (e) snprintf(err, errlen, "checkpoint topic %s: %s", c->topic, rd_kafka_err2str(e));
    return e ? -1 : 0;
}

int iqp_checkpoints_sync(iqp_checkpoints *c, int timeout_ms, char *err, size_t errlen) {
    rd_kafka_resp_err_t e = rd_kafka_flush(c->producer, timeout_ms);
    if (e) {
        snprintf(err, errlen, "checkpoint topic %s: %s", c->topic, rd_kafka_err2str(e));
        return -1;
    }
    if (c->failed != c->failed_reported) {
        snprintf(err, errlen, "checkpoint topic %s: %llu not delivered: %s", c->topic,
                 (unsigned long long)(c->failed - c->failed_reported), c->failure);
        c->failed_reported = c->failed;
        return -1;
    }
    return 0;
}

/* ---- reading ------------------------------------------------------------- */

static void remember(iqp_checkpoints *c, const rd_kafka_message_t *m) {
    char val[32];
    ckpt_entry *e;
    if (!m->key || m->len == 0 || m->len >= sizeof val) return;
    memcpy(val, m->payload, m->len);
    val[m->len] = '\0';
    int64_t off = strtoll(val, NULL, 10);
    HASH_FIND(hh, c->seen, m->key, m->key_len, e);
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e || !(e->key = strndup(m->key, m->key_len))) abort();
        e->offset = off;
        HASH_ADD_KEYPTR(hh, c->seen, e->key, m->key_len, e);
    } else if (off > e->offset) {
        e->offset = off;
    }
}

/* First read: learns the topic's partitions and assigns them all from the
 * beginning. */
static int start_reader(iqp_checkpoints *c, int timeout_ms, char *err, size_t errlen) {
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(c->reader, c->topic, NULL);
    rd_kafka_resp_err_t e = rd_kafka_metadata(c->reader, 0, t, &md, timeout_ms);
    rd_kafka_topic_destroy(t);
    if (!e && (md->topic_cnt != 1 || md->topics[0].err)) e = md->topic_cnt ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
    if (!e) c->n_parts = md->topics[0].partition_cnt;
    if (md) rd_kafka_metadata_destroy(md);
    if (e || c->n_parts <= 0 || c->n_parts > MAX_CKPT_PARTITIONS) {
        snprintf(err, errlen, "checkpoint topic %s: %s", c->topic,
                 e ? rd_kafka_err2str(e) : "unusable partition count");
        c->n_parts = 0;
        return -1;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(c->n_parts);
    for (int p = 0; p < c->n_parts; p++)
        rd_kafka_topic_partition_list_add(l, c->topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    e = rd_kafka_assign(c->reader, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) snprintf(err, errlen, "checkpoint topic %s: %s", c->topic, rd_kafka_err2str(e));
    return e ? -1 : 0;
}

/* The end offset of every partition, in one ListOffsets round trip per
 * leader (offsets_for_times with RD_KAFKA_OFFSET_END asks for the log end). */
static int query_ends(iqp_checkpoints *c, int64_t *high, int timeout_ms, char *err, size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(c->n_parts);
    for (int p = 0; p < c->n_parts; p++)
        rd_kafka_topic_partition_list_add(l, c->topic, p)->offset = RD_KAFKA_OFFSET_END;
    rd_kafka_resp_err_t e = rd_kafka_offsets_for_times(c->reader, l, timeout_ms);
    for (int i = 0; i < l->cnt && !e; i++) {
        rd_kafka_topic_partition_t *tp = &l->elems[i];
        if (tp->err) e = tp->err;
        else if (tp->partition >= 0 && tp->partition < c->n_parts) high[tp->partition] = tp->offset;
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (e) snprintf(err, errlen, "checkpoint topic %s: cannot read its end: %s", c->topic,
                    rd_kafka_err2str(e));
    return e ? -1 : 0;
}

/* Consumes until every partition reached the end it had at the start. */
static int catch_up(iqp_checkpoints *c, int timeout_ms, char *err, size_t errlen) {
    int64_t high[MAX_CKPT_PARTITIONS], next[MAX_CKPT_PARTITIONS];
    int64_t deadline = iqp_mono_ms() + timeout_ms;
    rd_kafka_topic_partition_list_t *pos = rd_kafka_topic_partition_list_new(c->n_parts);
    for (int p = 0; p < c->n_parts; p++) {
        rd_kafka_topic_partition_list_add(pos, c->topic, p);
        high[p] = 0;
    }
    rd_kafka_position(c->reader, pos);
    for (int p = 0; p < c->n_parts; p++) next[p] = pos->elems[p].offset >= 0 ? pos->elems[p].offset : 0;
    rd_kafka_topic_partition_list_destroy(pos);
    if (query_ends(c, high, timeout_ms, err, errlen) < 0) return -1;
    for (;;) {
        int done = 1;
        for (int p = 0; p < c->n_parts; p++) done &= next[p] >= high[p];
        if (done) return 0;
        if (iqp_mono_ms() >= deadline) break;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->reader, 100);
        if (!m) continue;
        if (m->partition >= 0 && m->partition < c->n_parts) {
            if (!m->err) remember(c, m), next[m->partition] = m->offset + 1;
            else if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) next[m->partition] = m->offset;
        }
        rd_kafka_message_destroy(m);
    }
    snprintf(err, errlen, "checkpoint topic %s: not read to its end within %d ms", c->topic, timeout_ms);
    return -1;
}

/* Retries until timeout_ms is spent: a slow broker or a leader change can
 * fail one metadata or ListOffsets round trip, and the caller treats a
 * failure as fatal. */
int iqp_checkpoints_refresh(iqp_checkpoints *c, int timeout_ms, char *err, size_t errlen) {
    int64_t deadline = iqp_mono_ms() + timeout_ms;
    for (;;) {
        int left = (int)(deadline - iqp_mono_ms());
        if (left < 1) left = 1;
        if ((c->n_parts || start_reader(c, left, err, errlen) == 0) &&
            catch_up(c, (int)(deadline - iqp_mono_ms() > 1 ? deadline - iqp_mono_ms() : 1), err, errlen) == 0)
            return 0;
        if (iqp_mono_ms() + 250 >= deadline) return -1;
        usleep(250000); /* back off */
    }
}

int64_t iqp_checkpoints_get(iqp_checkpoints *c, const char *topic, int32_t partition) {
    char *key = make_key(c, topic, partition);
    ckpt_entry *e;
    HASH_FIND_STR(c->seen, key, e);
    free(key);
    return e ? e->offset : -1;
}

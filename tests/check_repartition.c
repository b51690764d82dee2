/* check_repartition.c -- the repartitioner (consumers/repartition.h) against
 * a real Kafka protocol broker (`iqp devbroker`, 3 brokers).
 *
 * Design
 * ------
 * An unchecked fixture, run once, writes two logs with `iqp gen` (its
 * malformed lines included) and appends hand-written bad lines to the
 * first (not JSON, an unknown schema, an action without fields). Each test
 * starts its own broker: input topics impressions and actions with 8
 * partitions, repartition topics with 6 (devbroker's NAME:N), and puts the
 * logs on the input topics with `iqp produce --key none`, so events land on
 * random partitions and contexts are split, as in the issue.
 *
 * The repartitioner runs in this process. "Done" is read from Kafka, not
 * from it: the group's committed offset of every input partition equals
 * the partition's high watermark (bounded wait). After it stopped, the test
 * reads every input partition and every repartition partition back from
 * the beginning with a plain assign()ed consumer and checks, independently
 * of the repartitioner's bookkeeping:
 *   - every record of a repartition topic has no key, an iqp.origin header
 *     naming an input message of the same kind, and that message's bytes;
 *   - every input message is in exactly the partitions iqp_count_slices_of
 *     gives for its decoded event (decoded here, from the bytes read back),
 *     once in each; one that does not decode once, in (p % R);
 *   - read with stage 2's rule (per repartition partition and origin
 *     partition, a record is applied iff its origin offset is above the
 *     highest applied), every input message is applied exactly once in
 *     each of its partitions; with one member and no rebalance no record
 *     is dropped by that rule (nothing was sent twice).
 * The restart test runs the repartitioner twice over two batches and
 * checks the same: a message of the first batch sent again by the second
 * run would be a duplicate. The rebalance test does it with a second
 * member joining the group while the second batch streams in.
 */
#include <check.h>
#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aggregator/shards.h"
#include "consumers/repartition.h"
#include "schemas/event.h"
#include "tests/testutil.h"

#define START_MS 1717996834567LL
#define N_IN 8
#define N_OUT 6
#define MAX_OFFSETS 4096
#define WAIT_MS 60000

static const char *const in_topics[2] = {"impressions", "actions"};
static const char *const out_topics[2] = {"iqp-repartition-impressions", "iqp-repartition-actions"};

/* ---- fixture: the logs ---------------------------------------------------- */

static char *data_dir, *batch1, *batch2, *setup_error;

static void gen_log(const char *path, int seed, int impressions) {
    char *cmd = tu_fmt("'%s' gen --seed %d --impressions %d --start %lld --span 2h --out '%s'", tu_iqp(), seed,
                       impressions, START_MS, path);
    if (tu_run(cmd, NULL) != 0 && !setup_error) setup_error = tu_fmt("iqp gen failed: %s", cmd);
    free(cmd);
}

static void fixture_setup(void) {
    data_dir = tu_mkdtemp("repart-data");
    if (!data_dir) {
        setup_error = tu_fmt("no temp dir");
        return;
    }
    batch1 = tu_fmt("%s/batch1.jsonl", data_dir);
    batch2 = tu_fmt("%s/batch2.jsonl", data_dir);
    gen_log(batch1, 41, 300);
    gen_log(batch2, 42, 200);
    FILE *f = fopen(batch1, "a");
    if (!f) {
        if (!setup_error) setup_error = tu_fmt("cannot append to %s", batch1);
        return;
    }
    fprintf(f, "this is not json\n");
    fprintf(f, "{\"schema\":\"click.v9\",\"event_id\":\"u1\",\"ts\":%lld}\n", START_MS);
    fprintf(f, "{\"schema\":\"action.v1\",\"event_id\":\"a-bad\",\"ts\":%lld}\n", START_MS);
    fprintf(f, "[1,2,3]\n");
    fclose(f);
}

static void fixture_teardown(void) {
    if (data_dir && !getenv("IQP_KEEP_TMP")) tu_rmrf(data_dir);
    free(data_dir);
    free(batch1);
    free(batch2);
    free(setup_error);
}

/* ---- per test: broker and repartitioner ------------------------------------ */

static tu_broker broker;
static iqp_repartitioner *rp, *rp2;   /* rp2: a second member of the group */
static iqp_metrics *metrics, *metrics2;
static iqp_config cfg;
static const char *extra_prop[2]; /* one more property for start_with (NULL: none) */

static void test_setup(void) {
    static const char *const args[] = {
        "--brokers", "3", "--partitions", "8", "--topics",
        "impressions,actions,iqp-repartition-impressions:6,iqp-repartition-actions:6,rp-four:4", NULL};
    ck_assert_msg(setup_error == NULL, "%s", setup_error);
    ck_assert_int_eq(tu_broker_start(&broker, args), 0);
    iqp_config_defaults(&cfg);
    metrics = iqp_metrics_new();
    metrics2 = iqp_metrics_new();
}

static void test_teardown(void) {
    extra_prop[0] = extra_prop[1] = NULL;
    iqp_repartition_free(rp);
    iqp_repartition_free(rp2);
    rp = rp2 = NULL;
    iqp_metrics_free(metrics);
    iqp_metrics_free(metrics2);
    metrics = metrics2 = NULL;
    tu_broker_stop(&broker);
}

/* `iqp produce --key none` of path, at most rate lines/s (0: unlimited). */
static void produce_unkeyed(const char *path, int rate) {
    ck_assert_int_eq(tu_run_ok(tu_fmt("'%s' produce --brokers '%s' --key none --rate %d '%s'",
                                      tu_iqp(), broker.bootstrap, rate, path)),
                     1);
}

static iqp_repartitioner *start_with(const char *out0, const char *out1, iqp_metrics *m, char *err,
                                     size_t errlen) {
    const char *props[] = {"bootstrap.servers", broker.bootstrap, "group.id", "check-repartition",
                           "session.timeout.ms", "6000", "heartbeat.interval.ms", "500",
                           extra_prop[0], extra_prop[1], NULL};
    iqp_repartition_options o = {.in_topics = {in_topics[0], in_topics[1]},
                                 .out_topics = {out0, out1},
                                 .kafka_props = props,
                                 .cfg = &cfg,
                                 .commit_ms = 200,
                                 .metrics = m};
    return iqp_repartition_start(&o, err, errlen);
}

static void start_repartitioner(iqp_repartitioner **slot, iqp_metrics *m) {
    char err[512] = "";
    *slot = start_with(out_topics[0], out_topics[1], m, err, sizeof err);
    ck_assert_msg(*slot != NULL, "iqp_repartition_start: %s", err);
    ck_assert_int_eq(iqp_repartition_partitions(*slot), N_OUT);
}

static void stop_repartitioner(iqp_repartitioner **slot) {
    char err[512] = "";
    int rc = iqp_repartition_stop(*slot, err, sizeof err);
    ck_assert_msg(rc == 0, "iqp_repartition_stop: %s", err);
    iqp_repartition_free(*slot);
    *slot = NULL;
}

static double records_total(iqp_metrics *m) {
    return iqp_metrics_value(m, "iqp_repartition_records_total", "topic=\"iqp-repartition-impressions\"") +
           iqp_metrics_value(m, "iqp_repartition_records_total", "topic=\"iqp-repartition-actions\"");
}

static rd_kafka_t *plain_consumer(const char *group) {
    char kerr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *kv[] = {"bootstrap.servers", broker.bootstrap, "group.id", group, "enable.auto.commit", "false",
                        "enable.partition.eof", "false", "auto.offset.reset", "earliest", NULL};
    for (const char **p = kv; *p; p += 2)
        ck_assert_int_eq(rd_kafka_conf_set(conf, p[0], p[1], kerr, sizeof kerr), RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof kerr);
    ck_assert_msg(rk != NULL, "%s", kerr);
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

static int64_t high_watermark(rd_kafka_t *rk, const char *topic, int32_t p) {
    int64_t lo = 0, hi = 0;
    ck_assert_int_eq(rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000), 0);
    return hi;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits (bounded) until the group committed every input partition up to
 * its high watermark, reading the commits from the broker. */
static void wait_all_committed(void) {
    rd_kafka_t *rk = plain_consumer("check-repartition");
    int done = 0;
    char err[512];
    for (int64_t waited = 0; !done && waited < tu_wait_limit_ms(WAIT_MS); waited += 200) {
        ck_assert_msg(!rp || !iqp_repartition_failed(rp, err, sizeof err), "repartitioner failed: %s", err);
        ck_assert_msg(!rp2 || !iqp_repartition_failed(rp2, err, sizeof err), "repartitioner 2 failed: %s", err);
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(2 * N_IN);
        for (int k = 0; k < 2; k++)
            for (int p = 0; p < N_IN; p++) rd_kafka_topic_partition_list_add(l, in_topics[k], p);
        done = rd_kafka_committed(rk, l, 5000) == 0;
        for (int i = 0; done && i < l->cnt; i++) {
            int64_t hi = high_watermark(rk, l->elems[i].topic, l->elems[i].partition);
            done = hi == 0 || l->elems[i].offset == hi;
        }
        rd_kafka_topic_partition_list_destroy(l);
        if (!done) sleep_ms(200);
    }
    rd_kafka_destroy(rk);
    ck_assert_msg(done, "the input offsets were not all committed within %d ms", tu_wait_limit_ms(WAIT_MS));
}

/* ---- reading topics back ----------------------------------------------------- */

typedef struct in_msg {
    char *bytes;
    size_t len;
    uint32_t seen;       /* repartition partitions it was found in */
} in_msg;

static in_msg in_msgs[2][N_IN][MAX_OFFSETS];
static int64_t in_count[2][N_IN];

typedef void (*on_msg_fn)(int kind, const rd_kafka_message_t *m);

/* Reads every partition of topic from the beginning to its high watermark. */
static void read_topic(const char *topic, int kind, int n_parts, on_msg_fn fn) {
    rd_kafka_t *rk = plain_consumer("check-repartition-reader");
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n_parts);
    int64_t hi[64], next[64];
    int64_t left = 0;
    for (int p = 0; p < n_parts; p++) {
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
        hi[p] = high_watermark(rk, topic, p);
        next[p] = 0;
        left += hi[p];
    }
    ck_assert_int_eq(rd_kafka_assign(rk, l), 0);
    rd_kafka_topic_partition_list_destroy(l);
    int64_t deadline = tu_wait_limit_ms(30000), waited = 0;
    while (left > 0 && waited < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m) {
            waited += 100;
            continue;
        }
        if (!m->err && m->offset < hi[m->partition]) {
            ck_assert_int_eq(m->offset, next[m->partition]);
            next[m->partition] = m->offset + 1;
            left--;
            fn(kind, m);
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    ck_assert_msg(left == 0, "%lld messages of %s not read back", (long long)left, topic);
}

static void keep_input(int kind, const rd_kafka_message_t *m) {
    ck_assert_int_lt(m->offset, MAX_OFFSETS);
    ck_assert_msg(m->key == NULL, "an input message has a key (produce --key none)");
    in_msg *im = &in_msgs[kind][m->partition][m->offset];
    im->bytes = malloc(m->len + 1);
    memcpy(im->bytes, m->payload, m->len);
    im->len = m->len;
    im->seen = 0;
    if (m->offset + 1 > in_count[kind][m->partition]) in_count[kind][m->partition] = m->offset + 1;
}

static int64_t last_origin[2][N_OUT][N_IN]; /* per out partition and origin partition */
static uint64_t out_records, repeats;   /* records read; those stage 2 would drop */

static void check_output(int kind, const rd_kafka_message_t *m) {
    rd_kafka_headers_t *h = NULL;
    const void *val = NULL;
    size_t size = 0;
    ck_assert_msg(m->key == NULL || m->key_len == 0, "a repartitioned record has a key");
    ck_assert_int_eq(rd_kafka_message_headers(m, &h), 0);
    ck_assert_int_eq(rd_kafka_header_get_last(h, IQP_REPARTITION_ORIGIN_HEADER, &val, &size), 0);
    char origin[64];
    ck_assert_uint_lt(size, sizeof origin);
    memcpy(origin, val, size);
    origin[size] = '\0';
    int p = -1;
    long long off = -1;
    char tail = 0;
    ck_assert_msg(sscanf(origin, "%d/%lld%c", &p, &off, &tail) == 2, "bad origin header '%s'", origin);
    ck_assert_msg(p >= 0 && p < N_IN && off >= 0 && off < in_count[kind][p], "origin %s is no input message",
                  origin);
    in_msg *im = &in_msgs[kind][p][off];
    ck_assert_msg(im->len == m->len && memcmp(im->bytes, m->payload, m->len) == 0,
                  "record from %s/%s differs from the input message", in_topics[kind], origin);
    out_records++;
    /* stage 2's rule: applied iff above the highest origin offset applied */
    if (off <= last_origin[kind][m->partition][p]) {
        repeats++;
        return;
    }
    im->seen |= 1u << m->partition;
    last_origin[kind][m->partition][p] = off;
}

static void free_inputs(void) {
    for (int k = 0; k < 2; k++)
        for (int p = 0; p < N_IN; p++) {
            for (int64_t o = 0; o < in_count[k][p]; o++) free(in_msgs[k][p][o].bytes);
            in_count[k][p] = 0;
        }
    memset(in_msgs, 0, sizeof in_msgs);
}

/* The full check (see the top comment); returns the input messages.
 * Records stage 2 drops (origin offset not above the highest applied for
 * their origin partition) are counted in `repeats`, not applied: the
 * input messages must come out exactly once each after that rule. */
static int64_t check_routing(void) {
    free_inputs();
    out_records = repeats = 0;
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < N_OUT; r++)
            for (int p = 0; p < N_IN; p++) last_origin[k][r][p] = -1;
    for (int k = 0; k < 2; k++) {
        read_topic(in_topics[k], k, N_IN, keep_input);
        int used = 0;
        for (int p = 0; p < N_IN; p++) used += in_count[k][p] > 0;
        ck_assert_msg(used >= N_IN / 2, "%s: unkeyed input on %d partitions only", in_topics[k], used);
    }
    for (int k = 0; k < 2; k++) read_topic(out_topics[k], k, N_OUT, check_output);
    iqp_count_scratch scratch;
    iqp_count_scratch_init(&scratch, &cfg);
    unsigned slices[IQP_MAX_FEATURES];
    int64_t inputs = 0, malformed = 0, split = 0;
    uint64_t expected_records = 0;
    for (int k = 0; k < 2; k++)
        for (int p = 0; p < N_IN; p++)
            for (int64_t o = 0; o < in_count[k][p]; o++) {
                in_msg *im = &in_msgs[k][p][o];
                iqp_event ev;
                iqp_decode_error derr;
                uint32_t want = 0;
                if (iqp_event_decode(&cfg, im->bytes, im->len, &ev, &derr) == 0) {
                    unsigned n = iqp_count_slices_of(&cfg, &scratch, &ev, N_OUT, slices);
                    for (unsigned i = 0; i < n; i++) want |= 1u << slices[i];
                    split += n > 1;
                    iqp_event_clear(&ev);
                } else {
                    want = 1u << (p % N_OUT);
                    malformed++;
                }
                ck_assert_msg(im->seen == want, "%s [%d] offset %lld: in partitions 0x%x, want 0x%x", in_topics[k],
                              p, (long long)o, im->seen, want);
                expected_records += (uint64_t)__builtin_popcount(want);
                inputs++;
            }
    iqp_count_scratch_free(&scratch, &cfg);
    ck_assert_uint_eq(out_records, expected_records + repeats);
    ck_assert_msg(malformed >= 4, "only %lld malformed input messages", (long long)malformed);
    ck_assert_msg(split > 0, "no event went to more than one partition");
    free_inputs();
    return inputs;
}

/* ---- tests -------------------------------------------------------------------- */

START_TEST(routing_is_exact) {
    produce_unkeyed(batch1, 0);
    start_repartitioner(&rp, metrics);
    wait_all_committed();
    stop_repartitioner(&rp);
    int64_t inputs = check_routing();
    ck_assert_int_gt(inputs, 300);
    ck_assert_uint_eq(repeats, 0); /* one run: nothing is sent twice */
    ck_assert_uint_eq((uint64_t)records_total(metrics), out_records);
    ck_assert(iqp_metrics_value(metrics, "iqp_repartition_commits_total", "") >= 1);
}
END_TEST

START_TEST(restart_forwards_only_new_messages) {
    produce_unkeyed(batch1, 0);
    start_repartitioner(&rp, metrics);
    wait_all_committed();
    stop_repartitioner(&rp);
    uint64_t first = 0;
    rd_kafka_t *rk = plain_consumer("check-repartition-hw");
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < N_OUT; r++) first += (uint64_t)high_watermark(rk, out_topics[k], r);
    produce_unkeyed(batch2, 0);
    start_repartitioner(&rp, metrics);
    wait_all_committed();
    stop_repartitioner(&rp);
    uint64_t total = 0;
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < N_OUT; r++) total += (uint64_t)high_watermark(rk, out_topics[k], r);
    rd_kafka_destroy(rk);
    ck_assert_uint_gt(first, 0);
    ck_assert_uint_gt(total, first);
    /* exactly once over both runs: a first-batch message sent again by the
     * second run would be a duplicate */
    check_routing();
    ck_assert_uint_eq(repeats, 0);
    ck_assert_uint_eq(out_records, total);
}
END_TEST

/* A second member joins while the second batch streams in (at 100 lines/s,
 * longer than the group's rebalance): the first one's revoke delivers what
 * it consumed and tries to commit it (the devbroker refuses commits during
 * the rebalance, REBALANCE_IN_PROGRESS, so the new owners may send some
 * messages again), both go on from the committed offsets, and after stage
 * 2's rule every message is applied exactly once where it belongs. */
START_TEST(rebalance_hands_over_exactly) {
    produce_unkeyed(batch1, 0);
    start_repartitioner(&rp, metrics);
    wait_all_committed();
    start_repartitioner(&rp2, metrics2);
    produce_unkeyed(batch2, 100);
    wait_all_committed();
    double before_stop = records_total(metrics2);
    stop_repartitioner(&rp2);
    stop_repartitioner(&rp);
    ck_assert_msg(before_stop > 0, "the second member forwarded nothing: no handover happened");
    check_routing();
    fprintf(stderr, "rebalance_hands_over_exactly: %llu of %llu records are repeats stage 2 drops\n",
            (unsigned long long)repeats, (unsigned long long)out_records);
    ck_assert_uint_eq((uint64_t)(records_total(metrics) + records_total(metrics2)), out_records);
}
END_TEST

/* A message the producer cannot take (longer than its message.max.bytes,
 * here made small) stops the repartitioner as failed, naming the message;
 * the group's committed offset of its partition stays at or below it, so
 * a fixed instance sends it (and everything after it) again. */
START_TEST(failure_stops_before_the_message) {
    char *big = tu_fmt("%s/big.jsonl", data_dir), err[512] = "";
    FILE *f = fopen(big, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "{\"schema\":\"impression.v1\",\"event_id\":\"big-1\",\"request_id\":\"rb\",\"ts\":%lld,"
               "\"query\":\"red shoes\",\"user\":{\"country\":\"US\",\"gender\":\"f\"},\"items\":[",
            START_MS);
    for (int i = 0; i < 400; i++) fprintf(f, "%s\"item-%04d\"", i ? "," : "", i);
    fprintf(f, "]}\n");
    ck_assert_int_eq(fclose(f), 0);
    produce_unkeyed(big, 0);
    free(big);
    extra_prop[0] = "message.max.bytes";
    extra_prop[1] = "2000";
    start_repartitioner(&rp, metrics);
    int failed = 0;
    for (int64_t waited = 0; !failed && waited < tu_wait_limit_ms(WAIT_MS); waited += 100) {
        failed = iqp_repartition_failed(rp, err, sizeof err);
        if (!failed) sleep_ms(100);
    }
    ck_assert_msg(failed, "the repartitioner did not fail on a message over message.max.bytes");
    int p = -1;
    long long off = -1;
    const char *at = strstr(err, "cannot produce the copy of impressions [");
    ck_assert_msg(at && sscanf(at, "cannot produce the copy of impressions [%d] offset %lld", &p, &off) == 2,
                  "%s", err);
    ck_assert_int_eq(off, 0); /* the only message of its partition */
    ck_assert_int_eq(iqp_repartition_stop(rp, err, sizeof err), -1);
    rd_kafka_t *rk = plain_consumer("check-repartition");
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, in_topics[0], p);
    ck_assert_int_eq(rd_kafka_committed(rk, l, 5000), 0);
    ck_assert_msg(l->elems[0].offset <= off, "committed %lld past the failed message at %lld",
                  (long long)l->elems[0].offset, off);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
}
END_TEST

START_TEST(start_refuses_bad_repartition_topics) {
    char err[512] = "";
    rp = start_with(out_topics[0], "no-such-topic", metrics, err, sizeof err);
    ck_assert_ptr_null(rp);
    ck_assert_msg(strstr(err, "'no-such-topic' does not exist"), "%s", err);
    err[0] = '\0';
    rp = start_with(out_topics[0], "rp-four", metrics, err, sizeof err);
    ck_assert_ptr_null(rp);
    ck_assert_msg(strstr(err, "'iqp-repartition-impressions' (6 partitions) and 'rp-four' (4 partitions)"), "%s",
                  err);
    err[0] = '\0';
    rp = start_with(in_topics[1], out_topics[1], metrics, err, sizeof err);
    ck_assert_ptr_null(rp);
    ck_assert_msg(strstr(err, "'actions' is named twice"), "%s", err);
}
END_TEST

int main(void) {
    fixture_setup();
    Suite *s = suite_create("repartition");
    TCase *tc = tcase_create("devbroker");
    tcase_set_timeout(tc, 240);
    tcase_add_checked_fixture(tc, test_setup, test_teardown);
    tcase_add_test(tc, start_refuses_bad_repartition_topics);
    tcase_add_test(tc, routing_is_exact);
    tcase_add_test(tc, restart_forwards_only_new_messages);
    tcase_add_test(tc, rebalance_hands_over_exactly);
    tcase_add_test(tc, failure_stops_before_the_message);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    fixture_teardown();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

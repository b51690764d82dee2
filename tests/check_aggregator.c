/* check_aggregator.c -- the counting rules, event by event, with expected
 * values worked out by hand from the README's rules. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregator/aggregator.h"
#include "model/cells.h"
#include "aggregator/features.h"
#include "model/window.h"
#include "schemas/event.h"
#include "store/store.h"
#include "tests/testutil.h"

#define H 3600000LL
#define D (24 * H)
#define T0 (1700000000000LL - 1700000000000LL % D + 10 * H) /* 10:00 of some day */
#define NOW (T0 + 3 * D)

static char err[1024];
static char *dir;
static iqp_store *st;
static iqp_aggregator *agg;

static void open_with(const char *config_json) {
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    if (config_json) ck_assert_int_eq(iqp_config_parse(&cfg, config_json, "t", err, sizeof err), 0);
    dir = tu_mkdtemp("agg");
    st = iqp_store_open(dir, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    agg = iqp_aggregator_new(st);
}

static void setup(void) { open_with(NULL); }

static void teardown(void) {
    iqp_aggregator_free(agg);
    iqp_store_close(st);
    tu_rmrf(dir);
    free(dir);
}

static iqp_agg_outcome add_at(const char *json, int64_t now) {
    iqp_event ev;
    iqp_decode_error derr;
    int rc = iqp_event_decode(iqp_store_config(st), json, strlen(json), &ev, &derr);
    ck_assert_msg(rc == 0, "decode failed: %s %s", derr.field, derr.detail);
    iqp_agg_outcome out = iqp_aggregator_add(agg, &ev, now, err, sizeof err);
    iqp_event_clear(&ev);
    return out;
}

static iqp_agg_outcome add(const char *json) { return add_at(json, NOW); }

static void flush(void) { ck_assert_msg(iqp_aggregator_flush(agg, err, sizeof err) == 0, "%s", err); }

static char *impression(const char *id, int64_t ts, const char *req, const char *items) {
    static char buf[1024];
    snprintf(buf, sizeof buf,
             "{\"schema\":\"impression.v1\",\"event_id\":\"%s\",\"ts\":%lld,\"request_id\":\"%s\","
             "\"query\":\"Red  Dress \",\"user\":{\"country\":\"us\",\"gender\":\"F\"},\"items\":%s}",
             id, (long long)ts, req, items);
    return buf;
}

static char *action(const char *id, int64_t ts, const char *req, const char *item, const char *act) {
    static char buf[1024];
    snprintf(buf, sizeof buf,
             "{\"schema\":\"action.v1\",\"event_id\":\"%s\",\"ts\":%lld,\"request_id\":\"%s\","
             "\"query\":\"red dress\",\"user\":{\"country\":\"US\",\"gender\":\"female\"},"
             "\"item\":\"%s\",\"action\":\"%s\"}",
             id, (long long)ts, req, item, act);
    return buf;
}

/* Reads feature f (by name) window w (by name) for one item. */
static iqp_feature_row read_one(const char *feature, const char *window, const char *item,
                                int64_t as_of) {
    const iqp_config *cfg = iqp_store_config(st);
    iqp_context ctx = tu_ctx("red dress", "US", "female");
    iqp_feature_row rows[IQP_MAX_WINDOWS];
    size_t len = strlen(item);
    int f = iqp_config_feature_index(cfg, feature);
    ck_assert_int_ge(f, 0);
    ck_assert_int_eq(iqp_features_read(st, (size_t)f, &ctx, &item, &len, 1, as_of, rows, err, sizeof err), 0);
    for (size_t w = 0; w < cfg->n_windows; w++)
        if (strcmp(cfg->windows[w].name, window) == 0) return rows[w];
    ck_abort_msg("no window %s", window);
    return rows[0];
}

#define CLICK (IQP_COUNTER_ACTION0 + 0)
#define SAVE (IQP_COUNTER_ACTION0 + 1)

START_TEST(impression_counts_every_feature_once_per_item) {
    ck_assert_int_eq(add(impression("e1", T0, "r1", "[\"a\", \"b\", {\"id\": \"a\", \"pos\": 3}]")), IQP_AGG_COUNTED);
    ck_assert_int_eq(add(impression("e2", T0 + 1, "r2", "[\"b\"]")), IQP_AGG_COUNTED);
    flush();
    static const char *features[] = {"q_item", "qc_item", "qg_item", "c_item", "g_item"};
    for (int f = 0; f < 5; f++) {
        iqp_feature_row a = read_one(features[f], "1d", "a", T0);
        iqp_feature_row b = read_one(features[f], "365d", "b", T0);
        iqp_feature_row c = read_one(features[f], "7d", "c", T0);
        ck_assert_int_eq(a.context_count, 2);
        ck_assert_int_eq(a.counters[IQP_COUNTER_IMPRESSION], 1); /* listed twice, counted once */
        ck_assert_int_eq(b.counters[IQP_COUNTER_IMPRESSION], 2);
        ck_assert_int_eq(c.context_count, 2);                   /* unknown item: real context count */
        ck_assert_int_eq(c.counters[IQP_COUNTER_IMPRESSION], 0);
        ck_assert_int_eq(a.counters[IQP_COUNTER_ENGAGED], 0);
    }
    ck_assert_int_eq(iqp_features_rate(1, 2) == 0.5, 1);
    ck_assert_int_eq(iqp_features_rate(5, 0) == 0.0, 1);
}
END_TEST

START_TEST(redelivery_counts_once_within_and_across_batches) {
    char first[1024];
    snprintf(first, sizeof first, "%s", impression("e1", T0, "r1", "[\"a\"]"));
    ck_assert_int_eq(add(first), IQP_AGG_COUNTED);
    ck_assert_int_eq(add(first), IQP_AGG_DUPLICATE); /* same batch */
    flush();
    ck_assert_int_eq(add(first), IQP_AGG_DUPLICATE); /* marker now in the store */
    flush();
    ck_assert_int_eq(read_one("q_item", "1d", "a", T0).context_count, 1);
    ck_assert_int_eq(iqp_aggregator_stats(agg)->duplicate, 2);
}
END_TEST

START_TEST(actions_count_distinct_requests_and_engaged) {
    ck_assert_int_eq(add(action("c1", T0 + 10, "r1", "a", "click")), IQP_AGG_COUNTED);
    ck_assert_int_eq(add(action("c2", T0 + 20, "r1", "a", "click")), IQP_AGG_DUPLICATE); /* repeat */
    ck_assert_int_eq(add(action("s1", T0 + 30, "r1", "a", "save")), IQP_AGG_COUNTED);
    flush();
    ck_assert_int_eq(add(action("c3", T0 + 40, "r1", "a", "click")), IQP_AGG_DUPLICATE);
    ck_assert_int_eq(add(action("c4", T0 + 50, "r2", "a", "click")), IQP_AGG_COUNTED); /* other request */
    flush();
    iqp_feature_row r = read_one("qc_item", "1d", "a", T0 + 60);
    ck_assert_int_eq(r.counters[CLICK], 2);
    ck_assert_int_eq(r.counters[SAVE], 1);
    ck_assert_int_eq(r.counters[IQP_COUNTER_ENGAGED], 2);
    ck_assert_int_eq(r.context_count, 0); /* no impressions: rates stay 0 */
}
END_TEST

START_TEST(earlier_repeat_moves_the_count) {
    /* first seen two hours late, then the true (earlier) click arrives */
    ck_assert_int_eq(add(action("c1", T0 + 2 * H, "r1", "a", "click")), IQP_AGG_COUNTED);
    flush();
    ck_assert_int_eq(read_one("q_item", "1d", "a", T0).counters[CLICK], 0);
    ck_assert_int_eq(add(action("c2", T0, "r1", "a", "click")), IQP_AGG_COUNTED);
    flush();
    ck_assert_int_eq(read_one("q_item", "1d", "a", T0).counters[CLICK], 1);
    ck_assert_int_eq(read_one("q_item", "1d", "a", T0).counters[IQP_COUNTER_ENGAGED], 1);
    ck_assert_int_eq(read_one("q_item", "1d", "a", T0 + 2 * H).counters[CLICK], 1); /* not 2 */
    ck_assert_int_eq(read_one("q_item", "1d", "a", T0 + 2 * H).counters[IQP_COUNTER_ENGAGED], 1);
}
END_TEST

/* A repeat that counts nothing must not move the watermark (rule 6): here a
 * click repeated 30 h later would otherwise expire the hourly bucket of an
 * impression that arrives after it. */
START_TEST(uncounted_repeat_keeps_the_watermark) {
    ck_assert_int_eq(add(action("c1", T0, "r1", "a", "click")), IQP_AGG_COUNTED);
    ck_assert_int_eq(add(action("c2", T0 + 30 * H, "r1", "a", "click")), IQP_AGG_DUPLICATE);
    ck_assert_int_eq(add(impression("e1", T0 + 2 * H, "r2", "[\"a\"]")), IQP_AGG_COUNTED);
    flush();
    ck_assert_int_eq(iqp_store_watermark(st), T0 + 2 * H);
    ck_assert_int_eq(read_one("q_item", "1d", "a", T0 + 2 * H).context_count, 1);
    /* the uncounted repeat's event id is not remembered either */
    ck_assert_int_eq(add(impression("c2", T0 + 2 * H, "r3", "[\"a\"]")), IQP_AGG_COUNTED);
}
END_TEST

/* Rule 7 by hand, once without any flush and once flushing after every
 * event: a marker is forgotten when the watermark before an event is more
 * than 24 h past the watermark it was written at, wherever batches end. */
static void forget_by_progress(int flush_each) {
    static const struct { int64_t ts; const char *id, *req; int is_action; iqp_agg_outcome want; } seq[] = {
        {T0, "e1", "r1", 0, IQP_AGG_COUNTED},           /* written at wm T0 */
        {T0 + 1, "c1", "r1", 1, IQP_AGG_COUNTED},       /* key written at wm T0+1 */
        {T0 + 24 * H, "e2", "r2", 0, IQP_AGG_COUNTED},  /* wm T0+24h: nothing forgotten yet */
        {T0, "e1", "r1", 0, IQP_AGG_DUPLICATE},         /* T0 < (T0+24h) - 24h is false */
        {T0 + 24 * H + 2, "e3", "r3", 0, IQP_AGG_COUNTED}, /* wm T0+24h+2 */
        {T0, "e1", "r1", 0, IQP_AGG_COUNTED},           /* forgotten: counted again */
        {T0 + 5, "c2", "r1", 1, IQP_AGG_COUNTED},       /* the key too, in T0's day */
        {T0 + 5, "c2", "r1", 1, IQP_AGG_DUPLICATE},     /* rewritten at wm T0+24h+2 */
    };
    for (size_t i = 0; i < sizeof seq / sizeof *seq; i++) {
        const char *json = seq[i].is_action ? action(seq[i].id, seq[i].ts, seq[i].req, "a", "click")
                                            : impression(seq[i].id, seq[i].ts, seq[i].req, "[\"a\"]");
        ck_assert_msg(add(json) == seq[i].want, "event %zu (flush_each %d)", i, flush_each);
        if (flush_each) flush();
    }
    flush();
    iqp_feature_row day0 = read_one("q_item", "7d", "a", T0 + 13 * H); /* days up to T0's */
    ck_assert_int_eq(day0.context_count, 2);            /* e1 twice */
    ck_assert_int_eq(day0.counters[CLICK], 2);          /* c1, then c2 after c1's key was forgotten */
    ck_assert_int_eq(day0.counters[IQP_COUNTER_ENGAGED], 2);
}

START_TEST(markers_forgotten_by_progress_in_one_batch) { forget_by_progress(0); }
END_TEST

START_TEST(markers_forgotten_by_progress_flushing_each_event) { forget_by_progress(1); }
END_TEST

/* flush_begin hands the batch to a writer thread: events counted meanwhile
 * still see its markers, and the final flush leaves what sync flushes do. */
START_TEST(flush_begin_writes_in_the_background) {
    for (int round = 0; round < 50; round++) {
        char id[32], cid[32], req[32];
        snprintf(id, sizeof id, "e%d", round);
        snprintf(cid, sizeof cid, "c%d", round);
        snprintf(req, sizeof req, "r%d", round);
        ck_assert_int_eq(add(impression(id, T0 + round, req, "[\"a\", \"b\"]")), IQP_AGG_COUNTED);
        ck_assert_int_eq(iqp_aggregator_flush_begin(agg, err, sizeof err), 0);
        ck_assert_int_eq(add(impression(id, T0 + round, req, "[\"a\"]")), IQP_AGG_DUPLICATE);
        ck_assert_int_eq(add(action(cid, T0 + round + 1, req, "a", "click")), IQP_AGG_COUNTED);
    }
    flush();
    ck_assert_int_eq(iqp_store_watermark(st), T0 + 50);
    iqp_feature_row a = read_one("q_item", "1d", "a", T0 + H);
    ck_assert_int_eq(a.context_count, 50);
    ck_assert_int_eq(a.counters[IQP_COUNTER_IMPRESSION], 50);
    ck_assert_int_eq(a.counters[CLICK], 50);
    ck_assert_int_eq(read_one("q_item", "1d", "b", T0 + H).counters[IQP_COUNTER_IMPRESSION], 50);
}
END_TEST

START_TEST(future_events_are_rejected) {
    ck_assert_int_eq(add_at(impression("e1", NOW + 300001, "r1", "[\"a\"]"), NOW), IQP_AGG_FUTURE);
    ck_assert_int_eq(add_at(impression("e2", NOW + 300000, "r2", "[\"a\"]"), NOW), IQP_AGG_COUNTED);
    flush();
    ck_assert_int_eq(read_one("q_item", "1d", "a", NOW + 300000).context_count, 1);
}
END_TEST

START_TEST(window_edges) {
    int64_t h = T0 / H;
    ck_assert_int_eq(add(impression("e1", (h + 1) * H - 1, "r1", "[\"a\"]")), IQP_AGG_COUNTED); /* last ms of hour h */
    ck_assert_int_eq(add(impression("e2", (h + 1) * H, "r2", "[\"a\"]")), IQP_AGG_COUNTED);     /* first ms of h+1 */
    flush();
    ck_assert_int_eq(read_one("q_item", "1d", "a", (h + 1) * H - 1).context_count, 1);
    ck_assert_int_eq(read_one("q_item", "1d", "a", (h + 1) * H).context_count, 2);
    /* 1d as of the last ms of hour h+23 still holds hour h (its oldest bucket) */
    ck_assert_int_eq(read_one("q_item", "1d", "a", (h + 24) * H - 1).context_count, 2);
    /* one ms later hour h has left the window */
    ck_assert_int_eq(read_one("q_item", "1d", "a", (h + 24) * H).context_count, 1);
    ck_assert_int_eq(read_one("q_item", "7d", "a", (h + 24) * H).context_count, 2);
}
END_TEST

START_TEST(old_events_partially_or_wholly_late) {
    ck_assert_int_eq(add(impression("e1", T0 + 2 * D, "r1", "[\"a\"]")), IQP_AGG_COUNTED);
    /* two days behind: outside the hourly retention, inside the daily one */
    ck_assert_int_eq(add(impression("e2", T0, "r2", "[\"a\"]")), IQP_AGG_COUNTED);
    flush();
    ck_assert_int_eq(read_one("q_item", "7d", "a", T0 + 2 * D).context_count, 2);
    ck_assert_int_eq(read_one("q_item", "1d", "a", T0).context_count, 0); /* hourly cell not written */
    /* 400 days behind: late for every granularity */
    ck_assert_int_eq(add(impression("e3", T0 + 2 * D - 400 * D, "r3", "[\"a\"]")), IQP_AGG_LATE);
    ck_assert_int_eq(iqp_aggregator_stats(agg)->late, 1);
}
END_TEST

/* The same events give the same store whatever the flush size. */
/* Event i of a 300-event mix: impressions and actions over 30 hours,
 * with redelivered event ids (e0..e249) and actions repeated on one
 * request and item, at earlier and later times. */
static void mixed_event(int i, const iqp_config *cfg, iqp_event *ev) {
    char id[32], req[32], items[64], item[24], copy[1024];
    snprintf(id, sizeof id, "e%d", i % 250); /* some redeliveries */
    snprintf(req, sizeof req, "r%d", i % 97);
    snprintf(item, sizeof item, "i%d", i % 5);
    snprintf(items, sizeof items, "[\"i%d\", \"i%d\"]", i % 5, (i * 7) % 5);
    const char *json = (i % 3) ? impression(id, T0 + (i * 7919) % (30 * H), req, items)
                               : action(id, T0 + (i * 104729) % (30 * H), req, item, (i % 2) ? "click" : "save");
    snprintf(copy, sizeof copy, "%s", json);
    iqp_decode_error derr;
    ck_assert_int_eq(iqp_event_decode(cfg, copy, strlen(copy), ev, &derr), 0);
}

/* Every feature of the mix's items as of every 5 hours is the same in st
 * and in other; and the mix was counted at all. */
static void expect_same_features(iqp_store *other, const iqp_config *cfg) {
    for (int64_t as_of = T0; as_of <= T0 + 30 * H; as_of += 5 * H)
        for (size_t f = 0; f < cfg->n_features; f++)
            for (int i = 0; i < 5; i++) {
                char item[24];
                const char *ip = item;
                size_t len;
                iqp_feature_row r1[IQP_MAX_WINDOWS], r2[IQP_MAX_WINDOWS];
                iqp_context ctx = tu_ctx("red dress", "US", "female");
                snprintf(item, sizeof item, "i%d", i);
                len = strlen(item);
                ck_assert_int_eq(iqp_features_read(st, f, &ctx, &ip, &len, 1, as_of, r1, err, sizeof err), 0);
                ck_assert_int_eq(iqp_features_read(other, f, &ctx, &ip, &len, 1, as_of, r2, err, sizeof err), 0);
                ck_assert_int_eq(memcmp(r1, r2, cfg->n_windows * sizeof r1[0]), 0);
            }
    ck_assert_int_gt(read_one("q_item", "7d", "i0", T0 + 30 * H).context_count, 150);
}

/* Runs the 300-event mix through agg (flushed after every event, so every
 * marker it looks up lies in the store) and through a second aggregator
 * on a second store (one batch in all), which is the sole marker writer of
 * its store when sole2 is set; checks the outcomes event by event and the
 * features of both stores; returns the duplicates. */
static uint64_t flushes_against_one_batch(int sole2) {
    char *dir2 = tu_mkdtemp("agg2");
    iqp_config cfg = *iqp_store_config(st);
    iqp_store *st2 = iqp_store_open(dir2, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_ptr_nonnull(st2);
    iqp_aggregator *agg2 = iqp_aggregator_new(st2);
    if (sole2) ck_assert_int_eq(iqp_aggregator_set_sole_marker_writer(agg2), 1);
    for (int i = 0; i < 300; i++) {
        iqp_event ev;
        mixed_event(i, &cfg, &ev);
        iqp_agg_outcome o1 = iqp_aggregator_add(agg, &ev, NOW, err, sizeof err);
        iqp_agg_outcome o2 = iqp_aggregator_add(agg2, &ev, NOW, err, sizeof err);
        ck_assert_int_eq(o1, o2);
        iqp_event_clear(&ev);
        flush(); /* store 1: one batch per event; store 2: one batch in all */
    }
    ck_assert_int_eq(iqp_aggregator_flush(agg2, err, sizeof err), 0);
    expect_same_features(st2, &cfg);
    uint64_t dups = iqp_aggregator_stats(agg2)->duplicate;
    iqp_aggregator_free(agg2);
    iqp_store_close(st2);
    tu_rmrf(dir2);
    free(dir2);
    return dups;
}

START_TEST(flush_size_does_not_change_results) { flushes_against_one_batch(0); }
END_TEST

/* The sole writer's marker filter: here the flushed aggregator is the one
 * whose markers lie in the store, so every duplicate it finds is found
 * through the filter's "maybe" and a store read. A store that has had a
 * commit refuses the filter. */
START_TEST(sole_marker_writer_finds_stored_markers) {
    ck_assert_int_eq(iqp_aggregator_set_sole_marker_writer(agg), 1);
    /* ids e0..e249 over 300 events: 50 redeliveries */
    ck_assert_uint_eq(flushes_against_one_batch(0), 50);
    ck_assert_uint_eq(iqp_aggregator_stats(agg)->duplicate, 50);
    iqp_aggregator *late = iqp_aggregator_new(st);
    ck_assert_int_eq(iqp_aggregator_set_sole_marker_writer(late), 0);
    iqp_aggregator_free(late);
}
END_TEST

/* The same with the filter on the one-batch side too (markers found in
 * its batch, never in its store). */
START_TEST(sole_marker_writer_in_one_batch) {
    ck_assert_int_eq(iqp_aggregator_set_sole_marker_writer(agg), 1);
    ck_assert_uint_eq(flushes_against_one_batch(1), 50);
    ck_assert_uint_eq(iqp_aggregator_stats(agg)->duplicate, 50);
}
END_TEST

/* A bulk-loading store's synchronous flush that finds a flush in flight
 * drains its own batch while that one commits (iqp_aggregator_flush): the
 * store it leaves is the one a single batch leaves. Each round hands a
 * batch to the writer and flushes the next one event later, while that
 * writer is still at its table file; at least one round must find it. */
START_TEST(sync_flush_beside_the_writer) {
    iqp_store_set_ingest(st, 1);
    char *dir2 = tu_mkdtemp("agg2");
    iqp_config cfg = *iqp_store_config(st);
    iqp_store *st2 = iqp_store_open(dir2, &cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_ptr_nonnull(st2);
    iqp_aggregator *agg2 = iqp_aggregator_new(st2);
    int beside = 0;
    for (int i = 0; i < 300; i++) {
        iqp_event ev;
        mixed_event(i, &cfg, &ev);
        ck_assert_int_eq(iqp_aggregator_add(agg, &ev, NOW, err, sizeof err),
                         iqp_aggregator_add(agg2, &ev, NOW, err, sizeof err));
        iqp_event_clear(&ev);
        if (i % 15 == 7) ck_assert_msg(iqp_aggregator_flush_begin(agg, err, sizeof err) == 0, "%s", err);
        if (i % 15 == 8) {
            beside += iqp_aggregator_flush_in_flight(agg);
            ck_assert_msg(iqp_aggregator_flush(agg, err, sizeof err) == 0, "%s", err);
            ck_assert_int_eq(iqp_aggregator_flush_in_flight(agg), 0);
        }
    }
    flush();
    ck_assert_int_eq(iqp_aggregator_flush(agg2, err, sizeof err), 0);
    expect_same_features(st2, &cfg);
    ck_assert_int_gt(beside, 0);
    ck_assert_uint_eq(iqp_aggregator_stats(agg)->duplicate, iqp_aggregator_stats(agg2)->duplicate);
    iqp_aggregator_free(agg2);
    iqp_store_close(st2);
    tu_rmrf(dir2);
    free(dir2);
}
END_TEST

START_TEST(retention_follows_the_config) {
    teardown();
    open_with("{\"windows\": [{\"name\": \"3h\", \"length\": \"3h\", \"granularity\": \"1h\"}]}");
    ck_assert_int_eq(add(impression("e1", T0 + 10 * H, "r1", "[\"a\"]")), IQP_AGG_COUNTED);
    ck_assert_int_eq(add(impression("e2", T0 + 8 * H, "r2", "[\"a\"]")), IQP_AGG_COUNTED); /* oldest kept bucket */
    ck_assert_int_eq(add(impression("e3", T0 + 8 * H - 1, "r3", "[\"a\"]")), IQP_AGG_LATE);
    flush();
    ck_assert_int_eq(read_one("q_item", "3h", "a", T0 + 10 * H).context_count, 2);
}
END_TEST


/* ---- derived granularities (shards.c) ------------------------------------
 * The aggregator combines only the finest granularity per event and
 * derives the coarser ones at drain when their sizes are multiples of it.
 * Each config below runs one event stream through two aggregators, one
 * deriving (the default) and one combining every granularity per event
 * (iqp_aggregator_set_derive(0)), flushing at the same points: the stores
 * must hold the same bytes, reads of the unflushed batches must agree, and
 * the windows must match a brute-force count of the impressions. The
 * stream has events late for the finest granularity but kept by a coarser
 * one, late for every granularity, and action repeats that move counts
 * between buckets. */

#define DG_EVENTS 700
#define DG_ITEMS 4
#define DG_NOW (T0 + 30 * D) /* after every event of the stream */

typedef struct dg_store {
    char *dir;
    iqp_store *st;
    iqp_aggregator *agg;
} dg_store;

typedef struct dg_impression {
    int64_t ts;
    unsigned grans;     /* bit g: counted in granularity g */
    unsigned items;     /* bit i: lists item i */
} dg_impression;

static void dg_open(dg_store *s, const iqp_config *cfg, int derive) {
    s->dir = tu_mkdtemp("aggdg");
    s->st = iqp_store_open(s->dir, cfg, IQP_STORE_READ_WRITE, err, sizeof err);
    ck_assert_msg(s->st != NULL, "%s", err);
    s->agg = iqp_aggregator_new(s->st);
    iqp_aggregator_set_derive(s->agg, derive);
}

static void dg_close(dg_store *s) {
    iqp_aggregator_free(s->agg);
    iqp_store_close(s->st);
    tu_rmrf(s->dir);
    free(s->dir);
}

static int dg_buckets(const void *ud, int g, int64_t *first, int64_t *last) {
    return iqp_aggregator_pending_buckets(ud, g, first, last);
}

static int dg_cell(const void *ud, iqp_cf cf, const unsigned char *key, size_t klen, int64_t *vec,
                   size_t n) {
    return iqp_aggregator_pending_cell(ud, cf, key, klen, vec, n);
}

/* Every feature's rows for the test's context and items, store + batch. */
static void dg_read(dg_store *s, int64_t as_of, iqp_feature_row *rows) {
    const iqp_config *cfg = iqp_store_config(s->st);
    iqp_context ctx = tu_ctx("red dress", "US", "female");
    iqp_features_pending pending = {dg_buckets, dg_cell, s->agg, NULL, NULL};
    const char *items[DG_ITEMS] = {"i0", "i1", "i2", "i3"};
    size_t lens[DG_ITEMS] = {2, 2, 2, 2};
    for (size_t f = 0; f < cfg->n_features; f++)
        ck_assert_int_eq(iqp_features_read_pending(s->st, &pending, f, &ctx, items, lens, DG_ITEMS, as_of,
                                                   rows + f * DG_ITEMS * cfg->n_windows, err, sizeof err),
                         0);
}

typedef struct dg_bytes {
    unsigned char *buf;
    size_t len, cap;
} dg_bytes;

static void dg_append(dg_bytes *b, const void *p, size_t n) {
    if (b->len + n + sizeof n > b->cap) {
        b->cap = 2 * (b->len + n + sizeof n) + 4096;
        b->buf = realloc(b->buf, b->cap);
        ck_assert_ptr_nonnull(b->buf);
    }
    memcpy(b->buf + b->len, &n, sizeof n);
    memcpy(b->buf + b->len + sizeof n, p, n);
    b->len += sizeof n + n;
}

static int dg_collect(void *ud, const unsigned char *key, size_t klen, const char *val, size_t vlen) {
    dg_append(ud, key, klen);
    dg_append(ud, val, vlen);
    return 0;
}

/* The raw keys and values of the counts and contexts column families. */
static dg_bytes dg_dump(dg_store *s) {
    dg_bytes b = {NULL, 0, 0};
    iqp_cf cfs[2] = {IQP_CF_COUNTS, IQP_CF_CONTEXTS};
    for (int k = 0; k < 2; k++)
        ck_assert_int_eq(iqp_store_scan_keys(s->st, NULL, cfs[k], "", 0, dg_collect, &b, err, sizeof err), 0);
    return b;
}

/* Event i of the stream, given the watermark so far: impressions mostly
 * step forward (every 7th 30 h back, every 11th 8 h back, every 23rd 6 days
 * back); actions are never newer than the watermark, so only impressions
 * move it, and repeat one of 13 requests at earlier or later times. */
static const char *dg_event(int i, int64_t wm, int64_t *ts, unsigned *items) {
    static char items_json[64];
    if (i % 4 == 3 && wm != INT64_MIN) {
        char id[16], req[16], item[8];
        *ts = wm - (int64_t)(i * 7919 % 40) * H - (i * 104729) % H;
        snprintf(id, sizeof id, "a%d", i);
        snprintf(req, sizeof req, "r%d", i % 13);
        snprintf(item, sizeof item, "i%d", i % DG_ITEMS);
        return action(id, *ts, req, item, (i / 4) % 2 ? "click" : "save");
    }
    *ts = T0 + (int64_t)i * 23 * 60000 - (i % 7 == 0 ? 30 * H : 0) - (i % 11 == 0 ? 8 * H : 0) -
          (i % 23 == 0 ? 6 * D : 0);
    unsigned a = (unsigned)i % DG_ITEMS, b = (unsigned)(i * 3 + 1) % DG_ITEMS;
    *items = 1u << a | 1u << b;
    if (a == b) snprintf(items_json, sizeof items_json, "[\"i%u\"]", a);
    else snprintf(items_json, sizeof items_json, "[\"i%u\", \"i%u\", \"i%u\"]", a, b, a);
    char id[16], req[16];
    snprintf(id, sizeof id, "e%d", i);
    snprintf(req, sizeof req, "q%d", i);
    return impression(id, *ts, req, items_json);
}

/* The brute-force count of the impressions: windows of feature q_item for
 * item it (-1: context_count) as of as_of. */
static int64_t dg_brute(const iqp_config *cfg, const dg_impression *imp, size_t n, size_t w, int it,
                        int64_t as_of) {
    const iqp_window_spec *ws = &cfg->windows[w];
    int64_t last = iqp_bucket_of(as_of, ws->gran_ms), first = last - ws->n_buckets + 1, sum = 0;
    for (size_t k = 0; k < n; k++) {
        int64_t b = iqp_bucket_of(imp[k].ts, ws->gran_ms);
        if (!(imp[k].grans >> ws->gran_index & 1) || b < first || b > last) continue;
        if (it < 0 || imp[k].items >> it & 1) sum++;
    }
    return sum;
}

/* Runs the stream under config_json through a deriving and a
 * per-granularity aggregator; expect_fewer_updates: the config derives
 * something, so the first makes fewer combiner adds. */
static void derived_matches(const char *config_json, int expect_fewer_updates) {
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    ck_assert_int_eq(iqp_config_parse(&cfg, config_json, "t", err, sizeof err), 0);
    dg_store d, p;
    dg_open(&d, &cfg, 1);
    dg_open(&p, &cfg, 0);
    size_t per = cfg.n_features * DG_ITEMS * cfg.n_windows;
    iqp_feature_row *rd = calloc(per, sizeof *rd), *rp = calloc(per, sizeof *rp);
    dg_impression *imp = calloc(DG_EVENTS, sizeof *imp);
    size_t n_imp = 0, late = 0, late_fine_only = 0;
    int64_t wm = INT64_MIN;
    for (int i = 0; i < DG_EVENTS; i++) {
        int64_t ts;
        unsigned items = 0;
        char json[1024];
        snprintf(json, sizeof json, "%s", dg_event(i, wm, &ts, &items));
        iqp_event ev;
        iqp_decode_error derr;
        ck_assert_int_eq(iqp_event_decode(&cfg, json, strlen(json), &ev, &derr), 0);
        iqp_agg_outcome od = iqp_aggregator_add(d.agg, &ev, DG_NOW, err, sizeof err);
        iqp_agg_outcome op = iqp_aggregator_add(p.agg, &ev, DG_NOW, err, sizeof err);
        iqp_event_clear(&ev);
        ck_assert_int_eq(od, op);
        if (items) { /* an impression: counted where a granularity retains it */
            int64_t w2 = ts > wm ? ts : wm;
            unsigned grans = 0;
            for (size_t g = 0; g < cfg.n_grans; g++)
                if (iqp_bucket_of(ts, cfg.gran_ms[g]) >= iqp_retention_first_bucket(&cfg, (int)g, w2))
                    grans |= 1u << g;
            ck_assert_int_eq(od, (grans ? IQP_AGG_COUNTED : IQP_AGG_LATE));
            late += !grans;
            late_fine_only += grans && !(grans & 1);
            if (grans) {
                imp[n_imp++] = (dg_impression){ts, grans, items};
                wm = w2;
            }
        }
        if (i % 37 == 36 || i == DG_EVENTS - 1) {
            dg_read(&d, wm, rd);
            dg_read(&p, wm, rp);
            ck_assert_msg(memcmp(rd, rp, per * sizeof *rd) == 0, "unflushed reads differ at event %d", i);
            ck_assert_int_eq(iqp_aggregator_flush(d.agg, err, sizeof err), 0);
            ck_assert_int_eq(iqp_aggregator_flush(p.agg, err, sizeof err), 0);
        }
    }
    ck_assert_int_gt(late, 0);
    ck_assert_int_gt(late_fine_only, 0);
    dg_bytes bd = dg_dump(&d), bp = dg_dump(&p);
    ck_assert_int_gt(bd.len, 0);
    ck_assert_msg(bd.len == bp.len && memcmp(bd.buf, bp.buf, bd.len) == 0,
                  "stores differ (%zu vs %zu bytes)", bd.len, bp.len);
    free(bd.buf);
    free(bp.buf);
    /* windows of q_item against the brute force, as of the watermark */
    dg_read(&d, wm, rd);
    int f = iqp_config_feature_index(&cfg, "q_item");
    ck_assert_int_ge(f, 0);
    for (int it = 0; it < DG_ITEMS; it++)
        for (size_t w = 0; w < cfg.n_windows; w++) {
            const iqp_feature_row *r = &rd[((size_t)f * DG_ITEMS + (size_t)it) * cfg.n_windows + w];
            ck_assert_int_eq(r->context_count, dg_brute(&cfg, imp, n_imp, w, -1, wm));
            ck_assert_int_eq(r->counters[IQP_COUNTER_IMPRESSION], dg_brute(&cfg, imp, n_imp, w, it, wm));
        }
    uint64_t ud = iqp_aggregator_stats(d.agg)->cell_updates, up = iqp_aggregator_stats(p.agg)->cell_updates;
    if (expect_fewer_updates) ck_assert_uint_lt(ud, up);
    else ck_assert_uint_eq(ud, up);
    free(rd);
    free(rp);
    free(imp);
    dg_close(&d);
    dg_close(&p);
}

/* 5h and 1d are multiples of 1h: both derived (1d inline, 5h by copies
 * whose buckets straddle days); 5h keeps only 10 h, so some events are
 * kept for 1h but not for 5h. */
START_TEST(derived_granularities_multiples) {
    derived_matches("{\"windows\": [{\"name\": \"1d\", \"length\": \"1d\", \"granularity\": \"1h\"},"
                    "{\"name\": \"10h\", \"length\": \"10h\", \"granularity\": \"5h\"},"
                    "{\"name\": \"4d\", \"length\": \"4d\", \"granularity\": \"1d\"}]}",
                    1);
}
END_TEST

/* 5h is not a multiple of 2h: combined per event; 1d still derived. */
START_TEST(derived_granularities_partly) {
    derived_matches("{\"windows\": [{\"name\": \"6h\", \"length\": \"6h\", \"granularity\": \"2h\"},"
                    "{\"name\": \"15h\", \"length\": \"15h\", \"granularity\": \"5h\"},"
                    "{\"name\": \"4d\", \"length\": \"4d\", \"granularity\": \"1d\"}]}",
                    1);
}
END_TEST

/* Nothing derivable: every granularity combined per event. */
START_TEST(derived_granularities_none) {
    derived_matches("{\"windows\": [{\"name\": \"6h\", \"length\": \"6h\", \"granularity\": \"2h\"},"
                    "{\"name\": \"15h\", \"length\": \"15h\", \"granularity\": \"5h\"}]}",
                    0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("aggregator");
    TCase *tc = tcase_create("rules");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, impression_counts_every_feature_once_per_item);
    tcase_add_test(tc, redelivery_counts_once_within_and_across_batches);
    tcase_add_test(tc, actions_count_distinct_requests_and_engaged);
    tcase_add_test(tc, earlier_repeat_moves_the_count);
    tcase_add_test(tc, uncounted_repeat_keeps_the_watermark);
    tcase_add_test(tc, markers_forgotten_by_progress_in_one_batch);
    tcase_add_test(tc, markers_forgotten_by_progress_flushing_each_event);
    tcase_add_test(tc, flush_begin_writes_in_the_background);
    tcase_add_test(tc, future_events_are_rejected);
    tcase_add_test(tc, window_edges);
    tcase_add_test(tc, old_events_partially_or_wholly_late);
    tcase_add_test(tc, flush_size_does_not_change_results);
    tcase_add_test(tc, sole_marker_writer_finds_stored_markers);
    tcase_add_test(tc, sole_marker_writer_in_one_batch);
    tcase_add_test(tc, sync_flush_beside_the_writer);
    tcase_add_test(tc, retention_follows_the_config);
    tcase_add_test(tc, derived_granularities_multiples);
    tcase_add_test(tc, derived_granularities_partly);
    tcase_add_test(tc, derived_granularities_none);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

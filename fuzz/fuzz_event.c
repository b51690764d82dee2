/* fuzz_event.c -- libFuzzer target: one event line through the decoder and
 * the normalization (schemas/event.c, model/normalize.c).
 *
 * The input is one line of bytes, exactly what a log file or a Kafka
 * message hands iqp_event_decode(). It is decoded twice: under the default
 * config and under a config with tight limits (so too_large,
 * string_too_long and too_many_items are reachable with small inputs). The
 * same bytes also go straight to the three normalizers.
 *
 * Beyond "no crash, no leak, no UB", it checks what the rest of the
 * pipeline relies on:
 *   - a decode either succeeds or names a known error code, and the error
 *     formats into a bounded string;
 *   - a decoded event's query is NUL-terminated at query_len, holds no
 *     leading, trailing or doubled space, and is a fixed point of
 *     iqp_normalize_query() (a query printed by `iqp export` and typed
 *     back into `iqp lookup` must land on the same key);
 *   - country is "ZZ" or two upper-case letters; item ids are non-empty.
 * A failed check calls abort(), which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "model/normalize.h"
#include "schemas/event.h"
#include "fuzz/fuzz.h"

static iqp_config default_cfg, tight_cfg;

int fuzz_event_init(void) {
    char err[256];
    iqp_config_defaults(&default_cfg);
    iqp_config_defaults(&tight_cfg);
    if (iqp_config_parse(&tight_cfg,
                         "{\"limits\": {\"max_event_bytes\": 512, \"max_items\": 3,"
                         " \"max_string_bytes\": 16}}",
                         "fuzz", err, sizeof err) < 0) {
        fprintf(stderr, "fuzz_event: %s\n", err);
        abort();
    }
    return 0;
}

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "fuzz_event: check failed: %s\n", #cond);         \
            abort();                                                          \
        }                                                                     \
    } while (0)

/* What every caller of iqp_normalize_query() assumes of its result. */
static void check_normalized(const char *q, size_t len) {
    CHECK(strlen(q) == len);
    CHECK(len == 0 || (q[0] != ' ' && q[len - 1] != ' '));
    CHECK(strstr(q, "  ") == NULL);
    char *again = NULL;
    size_t again_len = 0;
    CHECK(iqp_normalize_query(q, len, &again, &again_len) == 0);
    CHECK(again_len == len && memcmp(again, q, len) == 0);
    free(again);
}

static void check_event(const iqp_config *cfg, const iqp_event *ev) {
    CHECK(ev->kind == IQP_EVENT_IMPRESSION || ev->kind == IQP_EVENT_ACTION);
    CHECK(ev->ts >= 0 && ev->event_id_len > 0 && ev->request_id_len > 0);
    check_normalized(ev->query, ev->query_len);
    const char *country = ev->seg_text[1]; /* the default segments: query, country, gender */
    CHECK(strcmp(country, "ZZ") == 0 ||
          (strlen(country) == 2 && country[0] >= 'A' && country[0] <= 'Z' &&
           country[1] >= 'A' && country[1] <= 'Z'));
    if (ev->kind == IQP_EVENT_IMPRESSION) {
        CHECK(ev->n_items <= cfg->limits.max_items);
        for (size_t i = 0; i < ev->n_items; i++) CHECK(ev->items[i].len > 0 && ev->items[i].id);
    } else {
        CHECK(ev->item.len > 0 && ev->action >= 0 && (size_t)ev->action < cfg->n_actions);
    }
}

static void decode_once(const iqp_config *cfg, const char *buf, size_t len) {
    iqp_event ev;
    iqp_decode_error err;
    char msg[300];
    memset(&ev, 0, sizeof ev);
    memset(&err, 0, sizeof err);
    if (iqp_event_decode(cfg, buf, len, &ev, &err) == 0) {
        check_event(cfg, &ev);
        iqp_event_clear(&ev);
        return;
    }
    CHECK(err.code > IQP_DECODE_OK && err.code < IQP_DECODE__COUNT);
    CHECK(ev.root == NULL && ev.query == NULL && ev.items == NULL && ev.scratch == NULL);
    iqp_decode_error_format(&err, msg, sizeof msg);
    CHECK(strlen(msg) < sizeof msg);
}

int fuzz_event_one(const uint8_t *data, size_t size) {
    const char *buf = (const char *)data;
    decode_once(&default_cfg, buf, size);
    decode_once(&tight_cfg, buf, size);

    char *q = NULL;
    size_t qlen = 0;
    if (iqp_normalize_query(buf, size, &q, &qlen) == 0) {
        check_normalized(q, qlen);
        free(q);
    }
    char country[3];
    iqp_normalize_country(buf, size, country);
    CHECK(country[2] == '\0' && strlen(country) == 2);
    CHECK(iqp_normalize_gender(buf, size) <= IQP_GENDER_MALE);
    return 0;
}

IQP_FUZZ_ENTRY(fuzz_event_init, fuzz_event_one)

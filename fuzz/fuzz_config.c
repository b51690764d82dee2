/* fuzz_config.c -- libFuzzer target: config parsing (model/config.c).
 *
 * The input is the text of a config file. It goes through the three entry
 * points that read untrusted text:
 *   - iqp_config_parse() over the defaults (what --config and the layout
 *     JSON that libiqp reads from Redis go through);
 *   - iqp_config_layout_diff() with the input as the layout stored in a
 *     store's meta, against the defaults;
 *   - iqp_parse_duration() on the whole text.
 *
 * Checked beyond "no crash, no leak, no UB":
 *   - a failed parse leaves the config untouched and says why;
 *   - an accepted config is sane (counts within the IQP_MAX_* arrays, every
 *     window a whole number of buckets) and its canonical layout JSON reads
 *     back into the same layout (iqp_config_layout_diff() says "same"),
 *     which is what lets a store or Redis reader recognise its writer.
 * A failed check calls abort(), which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "fuzz/fuzz.h"

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "fuzz_config: check failed: %s\n", #cond);        \
            abort();                                                          \
        }                                                                     \
    } while (0)

static void check_sane(const iqp_config *cfg) {
    CHECK(cfg->n_actions >= 1 && cfg->n_actions <= IQP_MAX_ACTIONS);
    CHECK(cfg->n_features >= 1 && cfg->n_features <= IQP_MAX_FEATURES);
    CHECK(cfg->n_windows >= 1 && cfg->n_windows <= IQP_MAX_WINDOWS);
    CHECK(cfg->n_grans >= 1 && cfg->n_grans <= IQP_MAX_GRANS);
    for (size_t i = 0; i < cfg->n_windows; i++) {
        const iqp_window_spec *w = &cfg->windows[i];
        CHECK(w->gran_ms > 0 && w->length_ms > 0 && w->length_ms % w->gran_ms == 0);
        CHECK(w->n_buckets == w->length_ms / w->gran_ms);
        CHECK(w->gran_index >= 0 && (size_t)w->gran_index < cfg->n_grans);
        CHECK(cfg->gran_ms[w->gran_index] == w->gran_ms);
    }
    for (size_t f = 0; f < cfg->n_features; f++) CHECK(cfg->features[f].dims != 0);
}

/* The canonical layout JSON must describe cfg exactly. */
static void check_layout_roundtrip(const iqp_config *cfg) {
    char *layout = iqp_config_layout_json(cfg);
    CHECK(layout != NULL);
    char msg[512] = "";
    CHECK(iqp_config_layout_diff(layout, cfg, msg, sizeof msg) == 0);
    iqp_config back;
    char err[512];
    iqp_config_defaults(&back);
    CHECK(iqp_config_parse(&back, layout, "layout", err, sizeof err) == 0);
    CHECK(iqp_config_layout_diff(layout, &back, msg, sizeof msg) == 0);
    free(layout);
}

int fuzz_config_init(void) { return 0; }

int fuzz_config_one(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    iqp_config cfg, before;
    char err[512] = "";
    iqp_config_defaults(&cfg);
    memcpy(&before, &cfg, sizeof cfg);
    if (iqp_config_parse(&cfg, text, "fuzz", err, sizeof err) == 0) {
        check_sane(&cfg);
        check_layout_roundtrip(&cfg);
    } else {
        CHECK(err[0] != '\0');
        CHECK(memcmp(&cfg, &before, sizeof cfg) == 0);
    }

    iqp_config defaults;
    char msg[512];
    iqp_config_defaults(&defaults);
    int rc = iqp_config_layout_diff(text, &defaults, msg, sizeof msg);
    CHECK(rc == -1 || rc == 0 || rc == 1);

    int64_t ms = -1;
    if (iqp_parse_duration(text, &ms) == 0) CHECK(ms >= 0);
    free(text);
    return 0;
}

IQP_FUZZ_ENTRY(fuzz_config_init, fuzz_config_one)

/* check_config.c -- defaults, loading, errors and the layout fingerprint. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "tests/testutil.h"

static char err[1024];

START_TEST(defaults) {
    iqp_config c;
    iqp_config_defaults(&c);
    ck_assert_int_eq(c.n_actions, 6);
    ck_assert_str_eq(c.actions[0], "click");
    ck_assert_str_eq(c.actions[5], "screenshot");
    ck_assert_int_eq(c.n_features, 5);
    ck_assert_str_eq(c.features[1].name, "qc_item");
    ck_assert_uint_eq(c.features[1].dims, IQP_DIM_QUERY | IQP_DIM_COUNTRY);
    ck_assert_uint_eq(c.features[4].dims, IQP_DIM_GENDER);
    ck_assert_int_eq(c.n_windows, 4);
    ck_assert_str_eq(c.windows[2].name, "90d");
    ck_assert_int_eq(c.windows[2].n_buckets, 90);
    ck_assert_int_eq(c.limits.max_event_bytes, 1048576);
    ck_assert_int_eq(c.limits.max_items, 10000);
    ck_assert_int_eq(c.limits.max_string_bytes, 4096);
    ck_assert_int_eq(c.dedup_horizon_ms, 86400000);
    ck_assert_int_eq(c.store.write_buffer_mb, 64);
    ck_assert_int_eq(c.store.l0_compaction_trigger, 8);
    ck_assert_int_eq(c.store.block_cache_mb, 64);
    ck_assert_int_eq(c.store.background_jobs, 2);
    ck_assert_int_eq(c.store.counts_universal, 1);
    ck_assert_int_eq(c.store.dedup_l0_compaction_trigger, 2);
    ck_assert_int_eq(c.store.dedup_write_buffer_mb, 8);
}
END_TEST

START_TEST(durations) {
    int64_t ms;
    ck_assert_int_eq(iqp_parse_duration("500ms", &ms), 0); ck_assert_int_eq(ms, 500);
    ck_assert_int_eq(iqp_parse_duration("30s", &ms), 0);   ck_assert_int_eq(ms, 30000);
    ck_assert_int_eq(iqp_parse_duration("15m", &ms), 0);   ck_assert_int_eq(ms, 900000);
    ck_assert_int_eq(iqp_parse_duration("2h", &ms), 0);    ck_assert_int_eq(ms, 7200000);
    ck_assert_int_eq(iqp_parse_duration("7d", &ms), 0);    ck_assert_int_eq(ms, 604800000);
    ck_assert_int_eq(iqp_parse_duration("1w", &ms), 0);    ck_assert_int_eq(ms, 604800000);
    ck_assert_int_eq(iqp_parse_duration("42", &ms), 0);    ck_assert_int_eq(ms, 42);
    ck_assert_int_eq(iqp_parse_duration("", &ms), -1);
    ck_assert_int_eq(iqp_parse_duration("-1h", &ms), -1);
    ck_assert_int_eq(iqp_parse_duration("3x", &ms), -1);
    ck_assert_int_eq(iqp_parse_duration("h", &ms), -1);
}
END_TEST

START_TEST(override_sections) {
    iqp_config c;
    iqp_config_defaults(&c);
    const char *text =
        "{\"actions\": [\"click\", \"buy\"],"
        " \"features\": [{\"name\": \"qc\", \"context\": [\"country\", \"query\"]}],"
        " \"windows\": [{\"name\": \"6h\", \"length\": \"6h\", \"granularity\": \"1h\"},"
        "               {\"name\": \"2d\", \"length\": \"2d\", \"granularity\": \"1d\"},"
        "               {\"name\": \"3h\", \"length\": \"3h\", \"granularity\": \"1h\"}],"
        " \"limits\": {\"max_items\": 50}, \"dedup_horizon\": \"2h\","
        " \"store\": {\"l0_compaction_trigger\": 12, \"block_cache_mb\": 0,"
        "            \"counts_compaction\": \"level\", \"dedup_l0_compaction_trigger\": 5,"
        "            \"dedup_write_buffer_mb\": 3}}";
    ck_assert_msg(iqp_config_parse(&c, text, "t.json", err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.n_actions, 2);
    ck_assert_int_eq(iqp_config_action_index(&c, "buy", 3), 1);
    ck_assert_int_eq(iqp_config_action_index(&c, "save", 4), -1);
    ck_assert_int_eq(c.n_features, 1);
    ck_assert_uint_eq(c.features[0].dims, IQP_DIM_QUERY | IQP_DIM_COUNTRY);
    ck_assert_int_eq(c.n_grans, 2);
    ck_assert_int_eq(c.gran_retention[0], 6); /* longest hourly window */
    ck_assert_int_eq(c.gran_retention[1], 2);
    ck_assert_int_eq(c.windows[2].gran_index, 0);
    ck_assert_int_eq(c.limits.max_items, 50);
    ck_assert_int_eq(c.limits.max_event_bytes, 1048576); /* untouched */
    ck_assert_int_eq(c.dedup_horizon_ms, 7200000);
    ck_assert_int_eq(c.store.l0_compaction_trigger, 12);
    ck_assert_int_eq(c.store.block_cache_mb, 0);
    ck_assert_int_eq(c.store.write_buffer_mb, 64); /* untouched */
    ck_assert_int_eq(c.store.counts_universal, 0);
    ck_assert_int_eq(c.store.dedup_l0_compaction_trigger, 5);
    ck_assert_int_eq(c.store.dedup_write_buffer_mb, 3);
}
END_TEST

/* Each bad config fails and the message names the problem. */
START_TEST(errors_name_the_problem) {
    static const struct { const char *text, *expect; } cases[] = {
        {"{\"actions\": [\"click\",", "t.json:1:"},
        {"[1]", "must be a JSON object"},
        {"{\"windws\": []}", "unknown key \"windws\""},
        {"{\"actions\": [\"click\", \"click\"]}", "listed twice"},
        {"{\"actions\": []}", "\"actions\""},
        {"{\"features\": [{\"name\": \"x\", \"context\": [\"city\"]}]}", "features[0].context"},
        {"{\"features\": [{\"name\": \"x\", \"context\": [\"query\"], \"entity\": \"user\"}]}", "features[0].entity"},
        {"{\"windows\": [{\"name\": \"w\", \"length\": \"90m\", \"granularity\": \"1h\"}]}", "whole number"},
        {"{\"windows\": [{\"name\": \"w\", \"length\": \"soon\", \"granularity\": \"1h\"}]}", "windows[0].length"},
        {"{\"limits\": {\"max_items\": 0}}", "max_items"},
        {"{\"limits\": {\"max_itemz\": 3}}", "limits.max_itemz"},
        {"{\"dedup_horizon\": \"forever\"}", "dedup_horizon"},
        {"{\"actions\": [\"click\", \"item\"]}", "clash with a lookup output key"},
        {"{\"actions\": [\"iqp_click\"]}", "clash with a lookup output key"},
        {"{\"max_future_skew_ms\": 9223372036854775807}", "max_future_skew_ms\" must be at most"},
        {"{\"limits\": {\"max_string_bytes\": 70000}}", "max_string_bytes"},
        {"{\"store\": {\"counts_compaction\": \"tiered\"}}", "\"counts_compaction\" must be"},
        {"{\"store\": {\"counts_compaction\": 1}}", "\"counts_compaction\" must be"},
        {"{\"store\": {\"dedup_l0_compaction_trigger\": 0}}", "dedup_l0_compaction_trigger"},
        {"{\"store\": {\"dedup_write_buffer_mb\": 0}}", "dedup_write_buffer_mb"},
        /* unknown keys anywhere, named by their JSON path */
        {"{\"windows\": [{\"name\": \"a\", \"length\": \"1d\", \"granularity\": \"1h\"},"
         " {\"name\": \"b\", \"lenght\": \"7d\", \"length\": \"7d\", \"granularity\": \"1d\"}]}",
         "unknown key \"windows[1].lenght\""},
        {"{\"features\": [{\"name\": \"x\", \"context\": [\"query\"], \"contxt\": [\"country\"]}]}",
         "unknown key \"features[0].contxt\""},
        {"{\"metrics\": {\"listen\": \"127.0.0.1:9464\", \"lisen\": \"0.0.0.0:80\"}}",
         "unknown key \"metrics.lisen\""},
        {"{\"metrics\": {\"listen\": 9464}}", "metrics.listen"},
        {"{\"store\": {\"write_buffer_mb\": 0}}", "\"write_buffer_mb\" must be an integer in [1, 4096]"},
        {"{\"store\": {\"l0_trigger\": 8}}", "unknown key \"store.l0_trigger\""},
        {"{\"store\": 8}", "\"store\" must be an object"},
        {"{\"metrics\": \"127.0.0.1:9464\"}", "\"metrics\" must be an object"},
        {"{\"windows\": [\"1d\"]}", "windows[0] must be an object"},
        /* a key given twice: jansson names it, with line and column */
        {"{\"dedup_horizon\": \"1h\",\n \"dedup_horizon\": \"2h\"}", "t.json:2:"},
        {"{\"windows\": [{\"name\": \"w\", \"length\": \"1d\", \"length\": \"2d\", \"granularity\": \"1h\"}]}",
         "a key is given twice: duplicate object key near '\"length\"'"},
        /* only the current layout_version (IQP_LAYOUT_VERSION, 3) is read */
        {"{\"layout_version\": 1}", "\"layout_version\" 1 is not supported"},
        {"{\"layout_version\": 2}", "\"layout_version\" 2 is not supported"},
        {"{\"layout_version\": 4}", "\"layout_version\" 4 is not supported"},
        {"{\"layout_version\": \"1\"}", "\"layout_version\" \"1\" is not supported"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        iqp_config c;
        iqp_config_defaults(&c);
        err[0] = 0;
        ck_assert_int_eq(iqp_config_parse(&c, cases[i].text, "t.json", err, sizeof err), -1);
        ck_assert_msg(strstr(err, cases[i].expect) != NULL, "case %zu: '%s' lacks '%s'", i, err,
                      cases[i].expect);
        ck_assert_int_eq(c.n_actions, 6); /* a failed parse leaves the config as it was */
    }
}
END_TEST

START_TEST(current_layout_version_is_accepted) {
    iqp_config c;
    iqp_config_defaults(&c);
    ck_assert_msg(iqp_config_parse(&c, "{\"layout_version\": 3}", "t.json", err, sizeof err) == 0, "%s", err);
}
END_TEST

/* The commands exit 2 on these configs (a config error), naming the key;
 * `iqp stream` also refuses a bad metrics address with 2 before opening
 * anything, and warns when metrics are served beyond loopback. */
static void expect_exit(const char *config_text, const char *args, int want_rc, const char *needle) {
    char *dir = tu_mkdtemp("config");
    ck_assert_ptr_nonnull(dir);
    char *path = tu_fmt("%s/c.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(config_text, f);
    fclose(f);
    char *full = tu_fmt("'%s' %s --config '%s' 2>&1", tu_iqp(), args, path), *out = NULL;
    int rc = tu_run(full, &out);
    ck_assert_msg(rc == want_rc, "%s: exit %d, want %d: %s", full, rc, want_rc, out);
    ck_assert_msg(out && strstr(out, needle), "%s: output lacks '%s': %s", full, needle, out);
    free(out);
    free(full);
    free(path);
    tu_rmrf(dir);
    free(dir);
}

START_TEST(commands_exit_2_naming_the_key) {
    const char *win = "{\"windows\": [{\"name\": \"w\", \"length\": \"1d\", \"granularity\": \"1h\", "
                      "\"lenght\": \"2d\"}]}";
    expect_exit(win, "backfill --store /nonexistent/s /nonexistent/in.jsonl", 2, "windows[0].lenght");
    expect_exit(win, "stream --store /nonexistent/s --brokers 127.0.0.1:1 --metrics-listen off", 2,
                "windows[0].lenght");
    expect_exit("{\"metrics\": {\"listn\": \"127.0.0.1:1\"}}", "backfill --store /nonexistent/s /nonexistent/in.jsonl", 2,
                "metrics.listn");
    expect_exit("{\"metrics\": {\"listn\": \"127.0.0.1:1\"}}", "stream --store /nonexistent/s --brokers 127.0.0.1:1",
                2, "metrics.listn");
    expect_exit("{\"flush_events\": 5, \"flush_events\": 6}", "stream --store /nonexistent/s --brokers 127.0.0.1:1",
                2, "given twice");
    expect_exit("{\"layout_version\": 7}", "backfill --store /nonexistent/s /nonexistent/in.jsonl", 2, "layout_version");
    /* bad metrics addresses: exit 2, before the store is opened (it does not exist) */
    expect_exit("{\"metrics\": {\"listen\": \"example.com:9464\"}}",
                "stream --store /nonexistent/s --brokers 127.0.0.1:1", 2, "bad metrics address 'example.com:9464'");
    expect_exit("{}", "stream --store /nonexistent/s --brokers 127.0.0.1:1 --metrics-listen 127.0.0.1:99999", 2,
                "port out of range");
    /* not loopback: a warning naming it (the unknown property then stops the run, exit 2) */
    expect_exit("{}", "stream --store /nonexistent/s --brokers 127.0.0.1:1 --metrics-listen 0.0.0.0:9464 "
                "--property no.such.property=1", 2,
                "warning: metrics listen on 0.0.0.0:9464, which is not a loopback address");
}
END_TEST

/* --threads of iqp backfill: 1..256, anything else exits 2 naming the
 * value, before the store is opened (it does not exist). */
START_TEST(backfill_threads_flag) {
    static const char *const bad[] = {"0", "-1", "abc", "257", "2x", "''", "1e3"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *args = tu_fmt("backfill --store /nonexistent/s --threads %s /nonexistent/in.jsonl", bad[i]);
        const char *shown = strcmp(bad[i], "''") == 0 ? "" : bad[i];
        char *needle = tu_fmt("--threads must be an integer in [1, 256], not '%s'", shown);
        expect_exit("{}", args, 2, needle);
        free(needle);
        free(args);
    }
    /* a good value gets as far as the missing store directory's parent: exit 1 */
    expect_exit("{}", "backfill --store /nonexistent/s --threads 256 /nonexistent/in.jsonl", 1,
                "/nonexistent");
}
END_TEST

START_TEST(missing_file) {
    iqp_config c;
    iqp_config_defaults(&c);
    ck_assert_int_eq(iqp_config_load(&c, "/nonexistent/iqp.json", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/iqp.json"));
}
END_TEST

START_TEST(layout_fingerprint) {
    iqp_config a, b;
    char msg[1024];
    iqp_config_defaults(&a);
    iqp_config_defaults(&b);
    char *la = iqp_config_layout_json(&a);
    ck_assert_int_eq(iqp_config_layout_diff(la, &b, msg, sizeof msg), 0);
    /* limits and tuning are not part of the layout */
    b.limits.max_items = 5;
    b.dedup_horizon_ms = 1;
    ck_assert_int_eq(iqp_config_layout_diff(la, &b, msg, sizeof msg), 0);
    /* a different window is */
    ck_assert_int_eq(iqp_config_parse(&b, "{\"windows\": [{\"name\": \"1d\", \"length\": \"1d\", "
                                          "\"granularity\": \"1h\"}]}", "t", err, sizeof err), 0);
    ck_assert_int_eq(iqp_config_layout_diff(la, &b, msg, sizeof msg), 1);
    ck_assert_ptr_nonnull(strstr(msg, "windows differ"));
    ck_assert_ptr_null(strstr(msg, "actions differ"));
    /* the layout JSON is itself a loadable config that reproduces the layout */
    iqp_config c;
    iqp_config_defaults(&c);
    char *lb = iqp_config_layout_json(&b);
    ck_assert_msg(iqp_config_parse(&c, lb, "layout", err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.n_windows, 1);
    ck_assert_int_eq(c.windows[0].n_buckets, 24);
    ck_assert_int_eq(iqp_config_layout_diff(lb, &c, msg, sizeof msg), 0);
    ck_assert_int_eq(iqp_config_layout_diff("not json", &c, msg, sizeof msg), -1);
    free(la);
    free(lb);
}
END_TEST

int main(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, durations);
    tcase_add_test(tc, override_sections);
    tcase_add_test(tc, errors_name_the_problem);
    tcase_add_test(tc, missing_file);
    tcase_add_test(tc, current_layout_version_is_accepted);
    tcase_add_test(tc, commands_exit_2_naming_the_key);
    tcase_add_test(tc, backfill_threads_flag);
    tcase_add_test(tc, layout_fingerprint);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

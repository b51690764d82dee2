/* check_flags.c -- the one flag parser of the iqp subcommands (cli/flags.h).
 *
 * A made-up command with one flag of every kind is parsed from argv vectors
 * written out here, and each stored field is compared with the value the
 * flag was given (or its default); errors are captured
 * (iqp_cli_capture_errors) and must name the flag. The generated --help is
 * read back line by line. Last, every real subcommand's --help must exit 0
 * (so every default in its table parses) and list, as an option line,
 * every flag its own usage line names.
 */
#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/flags.h"
#include "tests/testutil.h"

typedef struct demo_opts {
    const char *store, *name;
    int quiet, backend;
    int64_t count, ttl_ms, cache_bytes;
    double rate;
    iqp_flag_list tags, args;
} demo_opts;

/* A check callback: names must not contain a space. */
static int no_space(void *opts, const char *value, char *why, size_t whylen) {
    (void)opts;
    if (!strchr(value, ' ')) return 0;
    snprintf(why, whylen, "--name: '%s' has a space", value);
    return -1;
}

static const iqp_flag DEMO_FLAGS[] = {
    {"store", IQP_FLAG_STRING, offsetof(demo_opts, store), .arg = "DIR", .help = "the store (required)"},
    {"name", IQP_FLAG_STRING, offsetof(demo_opts, name), .def = "anon", .help = "a name without spaces",
     .check = no_space},
    {"quiet", IQP_FLAG_BOOL, offsetof(demo_opts, quiet), .help = "no progress line"},
    {"count", IQP_FLAG_INT, offsetof(demo_opts, count), .def = "10", .min = 1, .max = 100,
     .help = "how many"},
    {"count-extra", IQP_FLAG_INT, offsetof(demo_opts, count), .help = "shares a prefix with --count"},
    {"ttl", IQP_FLAG_DURATION, offsetof(demo_opts, ttl_ms), .def = "8d", .min = 1000, .max = 30LL * 86400000,
     .help = "time to live"},
    {"cache", IQP_FLAG_SIZE, offsetof(demo_opts, cache_bytes), .def = "256m", .min = 1, .max = 1LL << 40,
     .help = "memory for the cache; a long help text that has to wrap over more than one line of the "
             "generated --help, at word boundaries, indented to the column of the texts"},
    {"rate", IQP_FLAG_NUMBER, offsetof(demo_opts, rate), .def = "0.5", .fmin = 0, .fmax = 1,
     .help = "a share"},
    {"backend", IQP_FLAG_CHOICE, offsetof(demo_opts, backend), .choices = "cpu|cuda|tpu", .def = "cpu",
     .help = "where it runs (default cpu)"},
    {"tag", IQP_FLAG_REPEATED, offsetof(demo_opts, tags), .arg = "NAME=VALUE", .max = 3,
     .help = "a tag (repeatable)"},
    {0}};

static const iqp_flag_cmd DEMO = {
    .name = "demo",
    .usage = "iqp demo --store DIR [options] FILE...",
    .about = "A command for the flag parser's test.",
    .epilog = "Exit status: 0 done.",
    .args = "FILE...",
    .args_offset = offsetof(demo_opts, args),
    .flags = DEMO_FLAGS,
};

static const iqp_flag_cmd NO_ARGS = {.name = "demo", .usage = "iqp demo", .flags = DEMO_FLAGS};

/* Two alternatives: the one given last counts. */
static const iqp_flag ALT_FLAGS[] = {
    {"topic", IQP_FLAG_STRING, offsetof(demo_opts, store), .replaces = "count", .help = "a topic"},
    {"count", IQP_FLAG_INT, offsetof(demo_opts, count), .def = "7", .replaces = "topic", .help = "a number"},
    {0}};
static const iqp_flag_cmd ALT = {.name = "alt", .usage = "iqp alt", .flags = ALT_FLAGS};

static char errbuf[1024];

/* Parses the NULL-terminated words (after the command name) into *o,
 * zeroed first, capturing any message in errbuf. */
static int parse_cmd(const iqp_flag_cmd *cmd, demo_opts *o, const char *const *words) {
    char *argv[32];
    int argc = 0;
    argv[argc++] = "demo";
    while (*words) argv[argc++] = (char *)*words++;
    argv[argc] = NULL;
    memset(o, 0, sizeof *o);
    iqp_cli_capture_errors(errbuf, sizeof errbuf);
    int rc = iqp_flags_parse(cmd, o, argc, argv);
    iqp_cli_capture_errors(NULL, 0);
    return rc;
}

#define PARSE(o, ...) parse_cmd(&DEMO, (o), (const char *const[]){__VA_ARGS__, NULL})

START_TEST(defaults_apply_when_not_given) {
    demo_opts o;
    ck_assert_int_eq(PARSE(&o, "--store", "d"), 0);
    ck_assert_str_eq(o.store, "d");
    ck_assert_str_eq(o.name, "anon");
    ck_assert_int_eq(o.quiet, 0);
    ck_assert_int_eq(o.count, 10);
    ck_assert_int_eq(o.ttl_ms, 8LL * 86400000);
    ck_assert_int_eq(o.cache_bytes, 256LL << 20);
    ck_assert_double_eq(o.rate, 0.5);
    ck_assert_int_eq(o.backend, 0);
    ck_assert_uint_eq(o.tags.n, 0);
    ck_assert_uint_eq(o.args.n, 0);
}
END_TEST

/* Every kind, once with "--flag value" and once with "--flag=value". */
START_TEST(every_kind_in_both_forms) {
    demo_opts o;
    for (int form = 0; form < 2; form++) {
        int rc = form == 0 ? PARSE(&o, "--store", "/s", "--name", "bo", "--quiet", "--count", "42", "--ttl",
                                   "90m", "--cache", "3k", "--rate", "0.25", "--backend", "tpu", "--tag", "a=1")
                           : PARSE(&o, "--store=/s", "--name=bo", "--quiet", "--count=42", "--ttl=90m",
                                   "--cache=3k", "--rate=0.25", "--backend=tpu", "--tag=a=1");
        ck_assert_msg(rc == 0, "form %d: rc %d: %s", form, rc, errbuf);
        ck_assert_str_eq(o.store, "/s");
        ck_assert_str_eq(o.name, "bo");
        ck_assert_int_eq(o.quiet, 1);
        ck_assert_int_eq(o.count, 42);
        ck_assert_int_eq(o.ttl_ms, 90 * 60000);
        ck_assert_int_eq(o.cache_bytes, 3 * 1024);
        ck_assert_double_eq(o.rate, 0.25);
        ck_assert_int_eq(o.backend, 2);
        ck_assert_uint_eq(o.tags.n, 1);
        ck_assert_str_eq(o.tags.v[0], "a=1"); /* only the first '=' splits */
    }
    /* sizes: plain bytes, each suffix, a trailing b */
    static const struct { const char *text; int64_t bytes; } sizes[] = {
        {"1", 1}, {"7K", 7 << 10}, {"2mb", 2 << 20}, {"3G", 3LL << 30}, {"5B", 5}};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        ck_assert_int_eq(PARSE(&o, "--cache", sizes[i].text), 0);
        ck_assert_int_eq(o.cache_bytes, sizes[i].bytes);
    }
    /* an empty string is a value */
    ck_assert_int_eq(PARSE(&o, "--store="), 0);
    ck_assert_str_eq(o.store, "");
}
END_TEST

/* A repeated flag keeps every occurrence in order, up to its max; any
 * other flag given twice: the last one wins. */
START_TEST(repeated_and_later_wins) {
    demo_opts o;
    ck_assert_int_eq(PARSE(&o, "--tag", "x", "--count", "5", "--tag=y", "--count", "6", "--tag", "x"), 0);
    ck_assert_uint_eq(o.tags.n, 3);
    ck_assert_str_eq(o.tags.v[0], "x");
    ck_assert_str_eq(o.tags.v[1], "y");
    ck_assert_str_eq(o.tags.v[2], "x");
    ck_assert_int_eq(o.count, 6);
    ck_assert_int_eq(PARSE(&o, "--tag", "1", "--tag", "2", "--tag", "3", "--tag", "4"), 2);
    ck_assert_msg(strstr(errbuf, "--tag") && strstr(errbuf, "3 times"), "%s", errbuf);
}
END_TEST

/* .replaces: the flag given later clears what its alternative set. */
START_TEST(alternatives_last_one_counts) {
    demo_opts o;
    ck_assert_int_eq(parse_cmd(&ALT, &o, (const char *const[]){"--count", "3", "--topic", "t", NULL}), 0);
    ck_assert_str_eq(o.store, "t");
    ck_assert_int_eq(o.count, 0);
    ck_assert_int_eq(parse_cmd(&ALT, &o, (const char *const[]){"--topic", "t", "--count", "3", NULL}), 0);
    ck_assert_ptr_null(o.store);
    ck_assert_int_eq(o.count, 3);
    /* a default is not "given": it clears nothing */
    ck_assert_int_eq(parse_cmd(&ALT, &o, (const char *const[]){"--topic", "t", NULL}), 0);
    ck_assert_str_eq(o.store, "t");
}
END_TEST

START_TEST(unknown_flag_exits_2_naming_it) {
    demo_opts o;
    ck_assert_int_eq(PARSE(&o, "--store", "d", "--bogus"), 2);
    ck_assert_str_eq(errbuf, "unknown option '--bogus'");
    ck_assert_int_eq(PARSE(&o, "--bogus=1"), 2);
    ck_assert_str_eq(errbuf, "unknown option '--bogus'");
    ck_assert_int_eq(PARSE(&o, "-s"), 2);
    ck_assert_str_eq(errbuf, "unknown option '-s'");
    /* a prefix two flags share is ambiguous; one only one has is that flag */
    ck_assert_int_eq(PARSE(&o, "--coun", "3"), 2);
    ck_assert_msg(strstr(errbuf, "'--coun'") && strstr(errbuf, "ambiguous"), "%s", errbuf);
    ck_assert_int_eq(PARSE(&o, "--sto", "d", "--qu"), 0);
    ck_assert_str_eq(o.store, "d");
    ck_assert_int_eq(o.quiet, 1);
}
END_TEST

START_TEST(missing_value_exits_2_naming_the_flag) {
    demo_opts o;
    ck_assert_int_eq(PARSE(&o, "--store"), 2);
    ck_assert_str_eq(errbuf, "option '--store' needs a value");
    ck_assert_int_eq(PARSE(&o, "--quiet", "--count"), 2);
    ck_assert_str_eq(errbuf, "option '--count' needs a value");
    /* the next word is the value, even when it looks like a flag (as getopt) */
    ck_assert_int_eq(PARSE(&o, "--store", "--quiet"), 0);
    ck_assert_str_eq(o.store, "--quiet");
    ck_assert_int_eq(o.quiet, 0);
    ck_assert_int_eq(PARSE(&o, "--quiet=yes"), 2);
    ck_assert_str_eq(errbuf, "option '--quiet' takes no value");
}
END_TEST

/* Bad values: the message names the flag, what it takes, and the value. */
START_TEST(bad_values_exit_2_naming_flag_and_value) {
    static const struct { const char *flag, *value, *want; } cases[] = {
        {"--count", "ten", "--count must be an integer in [1, 100], not 'ten'"},
        {"--count", "0", "--count must be an integer in [1, 100], not '0'"},
        {"--count", "101", "--count must be an integer in [1, 100], not '101'"},
        {"--count", "5x", "--count must be an integer in [1, 100], not '5x'"},
        {"--count", "", "--count must be an integer in [1, 100], not ''"},
        {"--ttl", "soon", "--ttl must be a duration (500ms, 30s, 15m, 6h, 2d) of 1000..2592000000 ms, not 'soon'"},
        {"--ttl", "500ms", "--ttl must be a duration (500ms, 30s, 15m, 6h, 2d) of 1000..2592000000 ms, not '500ms'"},
        {"--cache", "1t", "--cache must be a size (N, Nk, Nm, Ng) of 1..1099511627776 bytes, not '1t'"},
        {"--cache", "-1", "--cache must be a size (N, Nk, Nm, Ng) of 1..1099511627776 bytes, not '-1'"},
        {"--cache", "2048G", "--cache must be a size (N, Nk, Nm, Ng) of 1..1099511627776 bytes, not '2048G'"},
        {"--rate", "1.5", "--rate must be a number in [0, 1], not '1.5'"},
        {"--rate", "nan", "--rate must be a number in [0, 1], not 'nan'"},
        {"--rate", "0.5x", "--rate must be a number in [0, 1], not '0.5x'"},
        {"--backend", "gpu", "--backend must be cpu, cuda or tpu, not 'gpu'"},
        {"--name", "a b", "--name: 'a b' has a space"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        demo_opts o;
        ck_assert_int_eq(PARSE(&o, cases[i].flag, cases[i].value), 2);
        ck_assert_msg(strcmp(errbuf, cases[i].want) == 0, "%s %s: got '%s'", cases[i].flag, cases[i].value,
                      errbuf);
    }
}
END_TEST

START_TEST(arguments_and_double_dash) {
    demo_opts o;
    ck_assert_int_eq(PARSE(&o, "a.jsonl", "--quiet", "-", "--store", "d", "--", "--count", "b"), 0);
    ck_assert_int_eq(o.quiet, 1);
    ck_assert_str_eq(o.store, "d");
    ck_assert_int_eq(o.count, 10);
    ck_assert_uint_eq(o.args.n, 4);
    ck_assert_str_eq(o.args.v[0], "a.jsonl");
    ck_assert_str_eq(o.args.v[1], "-");
    ck_assert_str_eq(o.args.v[2], "--count");
    ck_assert_str_eq(o.args.v[3], "b");
    ck_assert_int_eq(parse_cmd(&NO_ARGS, &o, (const char *const[]){"--quiet", "extra", NULL}), 2);
    ck_assert_str_eq(errbuf, "unexpected argument 'extra'");
}
END_TEST

/* --help: -1, and nothing parsed after it matters (a bad flag after it is
 * not reported). */
START_TEST(help_flag_returns_minus_one) {
    demo_opts o;
    FILE *saved = stdout;
    stdout = fopen("/dev/null", "w");
    ck_assert_ptr_nonnull(stdout);
    int a = PARSE(&o, "--help", "--bogus"), b = PARSE(&o, "--quiet", "--he");
    fclose(stdout);
    stdout = saved;
    ck_assert_int_eq(a, -1);
    ck_assert_int_eq(b, -1);
}
END_TEST

/* The text of --help, read back: usage, about, one option line per flag
 * (in table order) with its value name, its default when it has one and
 * the help does not say it, wrapped lines within 79 columns indented to
 * the texts' column, --help itself, the epilog. */
START_TEST(generated_help_lists_every_flag) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    ck_assert_ptr_nonnull(f);
    iqp_flags_help(&DEMO, f);
    fclose(f);
    static const char head[] = "usage: iqp demo --store DIR [options] FILE...\n\n"
                               "A command for the flag parser's test.\n\noptions:\n";
    ck_assert_msg(strncmp(text, head, sizeof head - 1) == 0, "%s", text);
    static const char *const lines[] = {
        "  --store DIR             the store (required)\n",
        "  --name VALUE            a name without spaces (default anon)\n",
        "  --quiet                 no progress line\n",
        "  --count N               how many (default 10)\n",
        "  --count-extra N         shares a prefix with --count\n",
        "  --ttl DURATION          time to live (default 8d)\n",
        "  --cache SIZE            memory for the cache; a long help text that has to\n"
        "                          wrap over more than one line of the generated --help,\n"
        "                          at word boundaries, indented to the column of the\n"
        "                          texts (default 256m)\n",
        "  --rate X                a share (default 0.5)\n",
        "  --backend cpu|cuda|tpu  where it runs (default cpu)\n",
        "  --tag NAME=VALUE        a tag (repeatable)\n",
        "  --help                  this text\n\nExit status: 0 done.\n",
    };
    const char *at = text;
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++) {
        const char *hit = strstr(at, lines[i]);
        ck_assert_msg(hit != NULL, "--help lacks (in order)\n%s\ngot\n%s", lines[i], text);
        at = hit + strlen(lines[i]);
    }
    ck_assert_str_eq(at, "");
    for (const char *l = text; *l;) {
        size_t n = strcspn(l, "\n");
        ck_assert_msg(n <= 79, "line wider than 79: %.*s", (int)n, l);
        l += n + (l[n] == '\n');
    }
    free(text);
}
END_TEST

/* Every subcommand: --help exits 0 (so every default of its table parses)
 * and every flag its usage lines name has an option line. */
START_TEST(every_command_help) {
    static const char *const cmds[] = {"gen", "backfill", "lookup", "stats", "produce", "stream",
                                       "publish", "refresh", "export", "backup", "restore",
                                       "config", "devbroker"};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        char *out = NULL, *cmd = tu_fmt("%s %s --help", tu_iqp(), cmds[i]);
        ck_assert_msg(tu_run(cmd, &out) == 0, "%s: %s", cmd, out);
        char *opts = strstr(out, "\noptions:\n"), *usage_end = strstr(out, "\n\n");
        ck_assert_msg(opts != NULL && usage_end != NULL, "%s: no options section:\n%s", cmd, out);
        for (const char *p = out; (p = strstr(p, "--")) && p < usage_end; p += 2) {
            char flag[64], line[80];
            size_t n = strspn(p + 2, "abcdefghijklmnopqrstuvwxyz-");
            if (n == 0 || n >= sizeof flag - 3) continue;
            snprintf(flag, sizeof flag, "%.*s", (int)(n + 2), p);
            snprintf(line, sizeof line, "\n  %s", flag);
            ck_assert_msg(strstr(opts, line) != NULL, "%s: usage names %s, no option line has it:\n%s", cmd,
                          flag, out);
        }
        free(out);
        free(cmd);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("flags");
    TCase *tc = tcase_create("flags");
    tcase_add_test(tc, defaults_apply_when_not_given);
    tcase_add_test(tc, every_kind_in_both_forms);
    tcase_add_test(tc, repeated_and_later_wins);
    tcase_add_test(tc, alternatives_last_one_counts);
    tcase_add_test(tc, unknown_flag_exits_2_naming_it);
    tcase_add_test(tc, missing_value_exits_2_naming_the_flag);
    tcase_add_test(tc, bad_values_exit_2_naming_flag_and_value);
    tcase_add_test(tc, arguments_and_double_dash);
    tcase_add_test(tc, help_flag_returns_minus_one);
    tcase_add_test(tc, generated_help_lists_every_flag);
    tcase_add_test(tc, every_command_help);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* check_fuzz_corpus.c -- every committed fuzz input, replayed as a unit test.
 *
 * The libFuzzer targets in fuzz/ need clang and run only in `ops/fuzz`.
 * Their one-input functions are plain C, though (fuzz/fuzz.h), so this
 * test compiles them with the project's compiler and runs each file of
 * fuzz/corpus/<target>/ through its target, in the normal and the
 * sanitizer build. Each target checks its own outcome (lines equal an
 * independent split, codecs round-trip, statuses carry messages, ...) and
 * aborts on a failed check, which fails the test here; a crash, a leak or
 * undefined behaviour fails it under `ops/test --sanitize`.
 *
 * This is where a crash found by fuzzing becomes a regression test: save
 * the input into fuzz/corpus/<target>/ (a name saying what it is) and fix
 * the cause. The seeds written by fuzz/make_seeds.py are replayed too.
 */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz/fuzz.h"

typedef struct target {
    const char *name;
    int (*init)(void);
    int (*one)(const uint8_t *, size_t);
    int min_inputs; /* seeds make_seeds.py writes at least */
} target;

static const target targets[] = {
    {"event", fuzz_event_init, fuzz_event_one, 60},
    {"config", fuzz_config_init, fuzz_config_one, 7},
    {"redis_value", fuzz_redis_value_init, fuzz_redis_value_one, 5},
    {"logfile", fuzz_logfile_init, fuzz_logfile_one, 10},
    {"client", fuzz_client_init, fuzz_client_one, 15},
};

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    struct stat st;
    ck_assert_int_eq(fstat(fileno(f), &st), 0);
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    ck_assert_ptr_nonnull(buf);
    *len = fread(buf, 1, (size_t)st.st_size, f);
    ck_assert_uint_eq(*len, (size_t)st.st_size);
    fclose(f);
    return buf;
}

static int not_hidden(const struct dirent *d) { return d->d_name[0] != '.'; }

/* Runs every input of one target's corpus; returns how many ran. */
static int replay(const target *t) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/fuzz/corpus/%s", IQP_SRCDIR, t->name);
    struct dirent **names = NULL;
    int n = scandir(dir, &names, not_hidden, alphasort);
    ck_assert_msg(n >= 0, "cannot list %s", dir);
    ck_assert_int_eq(t->init(), 0);
    for (int i = 0; i < n; i++) {
        char path[8192];
        size_t len = 0;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
        /* named before it runs: a crash's log says which input did it */
        fprintf(stderr, "check_fuzz_corpus: %s\n", path);
        uint8_t *data = read_file(path, &len);
        ck_assert_int_eq(t->one(data, len), 0);
        free(data);
        free(names[i]);
    }
    free(names);
    return n;
}

START_TEST(corpus_replays) {
    const target *t = &targets[_i];
    int n = replay(t);
    ck_assert_msg(n >= t->min_inputs, "fuzz/corpus/%s holds %d inputs, expected at least %d",
                  t->name, n, t->min_inputs);
}
END_TEST

static Suite *fuzz_corpus_suite(void) {
    Suite *s = suite_create("fuzz_corpus");
    TCase *tc = tcase_create("corpus");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, corpus_replays, 0, (int)(sizeof targets / sizeof targets[0]));
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(fuzz_corpus_suite());
    srunner_run_all(sr, CK_VERBOSE);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

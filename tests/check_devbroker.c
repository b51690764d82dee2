/* check_devbroker.c -- `iqp devbroker` with a client that is not ours
 * (kcat): topics exist, messages produced come back exactly, broker
 * down/up commands answer, SIGTERM stops it with exit 0. The broker is a
 * child of this test, stopped by pid in every path. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/testutil.h"

static tu_broker b;

static void start_broker(void) {
    static const char *const args[] = {"--brokers", "2", "--partitions", "4", "--topics",
                                       "t.events,t.other", NULL};
    ck_assert_int_eq(tu_broker_start(&b, args), 0);
    ck_assert_msg(strncmp(b.bootstrap, "127.0.0.1:", 10) == 0, "bootstrap '%s'", b.bootstrap);
}

static int stop_broker(void) { return tu_broker_stop(&b); }

static void teardown(void) { tu_broker_stop(&b); }

static const char *command(const char *cmd) {
    const char *answer = tu_broker_command(&b, cmd);
    ck_assert_ptr_nonnull(answer);
    return answer;
}

START_TEST(messages_round_trip_through_kcat) {
    start_broker();
    char *cmd, *out = NULL;
    /* 300 keyed messages over 4 partitions */
    cmd = tu_fmt("seq 1 300 | awk '{print \"k\" $1 \":m\" $1}' | kcat -P -b '%s' -t t.events -K:",
                 b.bootstrap);
    ck_assert_int_eq(tu_run(cmd, NULL), 0);
    free(cmd);
    cmd = tu_fmt("kcat -C -b '%s' -t t.events -e -q -f '%%k=%%s\\n' | sort -t= -k1.2 -n", b.bootstrap);
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    free(cmd);
    /* exactly k1=m1 .. k300=m300, each once */
    char *line = out;
    for (int i = 1; i <= 300; i++) {
        char want[32];
        snprintf(want, sizeof want, "k%d=m%d\n", i, i);
        ck_assert_msg(strncmp(line, want, strlen(want)) == 0, "message %d: got '%.20s'", i, line);
        line += strlen(want);
    }
    ck_assert_str_eq(line, "");
    free(out);
    /* the metadata lists both topics with their partitions */
    cmd = tu_fmt("kcat -L -b '%s' -t t.other", b.bootstrap);
    ck_assert_int_eq(tu_run(cmd, &out), 0);
    ck_assert_ptr_nonnull(strstr(out, "topic \"t.other\" with 4 partitions"));
    free(cmd);
    free(out);
    ck_assert_int_eq(stop_broker(), 0);
}
END_TEST

START_TEST(broker_commands_answer) {
    start_broker();
    ck_assert_str_eq(command("down 2"), "ok down 2");
    ck_assert_str_eq(command("up 2"), "ok up 2");
    ck_assert_ptr_nonnull(strstr(command("down 9"), "error"));
    ck_assert_ptr_nonnull(strstr(command("reboot"), "error"));
    /* several commands in one write: each is answered, in order (a
     * stdio-buffered reader once ran only the first; the tcase timeout
     * ends the test if an answer never comes) */
    static const char *const want[] = {"ok down 1", "ok down 2", "ok up 1", "ok up 2"};
    ck_assert_int_ge(fputs("down 1\ndown 2\nup 1\nup 2\n", b.in), 0);
    fflush(b.in);
    char answer[256];
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        ck_assert_ptr_nonnull(fgets(answer, sizeof answer, b.out));
        answer[strcspn(answer, "\n")] = '\0';
        ck_assert_str_eq(answer, want[i]);
    }
    ck_assert_int_eq(stop_broker(), 0);
}
END_TEST

START_TEST(bad_flags_exit_2) {
    char *cmd = tu_fmt("%s devbroker --partitions 0 2>/dev/null", tu_iqp());
    ck_assert_int_eq(tu_run(cmd, NULL), 2);
    free(cmd);
}
END_TEST

int main(void) {
    Suite *s = suite_create("devbroker");
    TCase *tc = tcase_create("kcat");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, messages_round_trip_through_kcat);
    tcase_add_test(tc, broker_commands_answer);
    tcase_add_test(tc, bad_flags_exit_2);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

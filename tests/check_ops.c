/* check_ops.c -- what an operator relies on (issue 17), tested against the
 * real binary:
 *   - systemd: `iqp stream` sends READY=1, WATCHDOG=1 and STOPPING=1 to
 *     $NOTIFY_SOCKET (a datagram socket this test binds), or nothing when
 *     built without libsystemd;
 *
 * Kafka is `iqp devbroker` (a child, stopped by pid); every wait is
 * bounded and stretched by CK_TIMEOUT_MULTIPLIER like Check's timeouts.
 */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "tests/testutil.h"
#include "util/clock.h"

static char *tmp;
static tu_broker broker;
static pid_t child;

static int wait_limit_ms(int base_ms) {
    const char *m = getenv("CK_TIMEOUT_MULTIPLIER");
    int k = m ? atoi(m) : 1;
    return base_ms * (k >= 1 && k <= 20 ? k : 1);
}

static void setup_broker(void) {
    static const char *const args[] = {"--brokers", "1", "--partitions", "2", "--topics",
                                       "impressions,actions,dead-letter,iqp-checkpoints", NULL};
    tmp = tu_mkdtemp("ops");
    ck_assert_ptr_nonnull(tmp);
    ck_assert_int_eq(tu_broker_start(&broker, args), 0);
}

static void teardown_broker(void) {
    if (child > 0) tu_stop_pid(child, SIGKILL, 5000);
    child = 0;
    tu_broker_stop(&broker);
    if (tmp) tu_rmrf(tmp);
    free(tmp);
    tmp = NULL;
}

/* Runs `iqp ARGV...` in the background with extra environment (NAME=VALUE
 * strings, NULL-terminated); stderr to log. */
static pid_t spawn_env(const char *const *argv, const char *const *env, const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        for (const char *const *e = env; e && *e; e++) putenv((char *)*e);
        if (!freopen(log, "a", stderr) || !freopen("/dev/null", "w", stdout)) _exit(126);
        execv(tu_iqp(), (char *const *)argv);
        _exit(127);
    }
    ck_assert_int_gt(pid, 0);
    return pid;
}

/* ---- systemd notifications ------------------------------------------------ */

/* Reads datagrams from fd for up to ms, appending each (one line) to
 * seen; returns once want is among them (1) or the time is up (0). */
static int wait_for_state(int fd, const char *want, char *seen, size_t seenlen, int ms) {
    int64_t deadline = iqp_mono_ms() + ms;
    while (iqp_mono_ms() < deadline) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
        char buf[512];
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n <= 0) continue;
        buf[n] = '\0';
        size_t used = strlen(seen);
        snprintf(seen + used, seenlen - used, "%s|", buf);
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
            if (strcmp(line, want) == 0) return 1;
    }
    return 0;
}

static int bind_notify_socket(const char *path) {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    ck_assert_int_ge(fd, 0);
    ck_assert_uint_lt(strlen(path), sizeof a.sun_path);
    strcpy(a.sun_path, path);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

START_TEST(stream_notifies_systemd) {
    char *sock = tu_fmt("%s/notify.sock", tmp), *store = tu_fmt("%s/store", tmp);
    char *dl = tu_fmt("%s/dl.jsonl", tmp), *log = tu_fmt("%s/stream.log", tmp);
    char *env_sock = tu_fmt("NOTIFY_SOCKET=%s", sock);
    const char *const env[] = {env_sock, "WATCHDOG_USEC=300000", NULL};
    const char *const argv[] = {"iqp", "stream", "--store", store, "--brokers", broker.bootstrap,
                                "--dead-letter-file", dl, "--metrics-listen", "off",
                                "--checkpoint-topic", "off", "--flush-ms", "100", NULL};
    char seen[8192] = "";
    int fd = bind_notify_socket(sock);
    child = spawn_env(argv, env, log);
#ifdef IQP_HAVE_SYSTEMD
    ck_assert_msg(wait_for_state(fd, "READY=1", seen, sizeof seen, wait_limit_ms(30000)),
                  "no READY=1 (got '%s', log %s)", seen, log);
    /* WatchdogSec=300ms: a ping at least every 100 ms; wait for three. */
    for (int i = 0; i < 3; i++)
        ck_assert_msg(wait_for_state(fd, "WATCHDOG=1", seen, sizeof seen, wait_limit_ms(2000)),
                      "watchdog ping %d missing (got '%s')", i, seen);
    ck_assert_int_eq(kill(child, SIGTERM), 0);
    ck_assert_msg(wait_for_state(fd, "STOPPING=1", seen, sizeof seen, wait_limit_ms(10000)),
                  "no STOPPING=1 (got '%s')", seen);
#else
    /* The no-op build: nothing is ever sent, and the stream runs as usual. */
    ck_assert_msg(!wait_for_state(fd, "READY=1", seen, sizeof seen, 2000), "got '%s'", seen);
    ck_assert_int_eq(kill(child, SIGTERM), 0);
#endif
    int rc = tu_stop_pid(child, 0, wait_limit_ms(15000)); /* 0: wait only (SIGTERM sent) */
    child = 0;
    ck_assert_msg(rc == 0, "iqp stream exited %d (log %s)", rc, log);
    close(fd);
    free(sock), free(store), free(dl), free(log), free(env_sock);
}
END_TEST

static Suite *ops_suite(void) {
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("systemd");
    tcase_add_checked_fixture(tc, setup_broker, teardown_broker);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, stream_notifies_systemd);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(ops_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

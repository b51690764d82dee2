/* testutil.h -- small helpers shared by the Check tests.
 *
 * Temporary directories, running the iqp binary through the shell and
 * capturing what it prints, reading whole files. Everything returned is
 * malloc'd and belongs to the caller.
 */
#ifndef IQP_TESTUTIL_H
#define IQP_TESTUTIL_H

#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>
#include <stdint.h>
#include "model/segments.h"

/* Creates a new directory under $TMPDIR (or /tmp) whose name contains tag.
 * Returns its malloc'd path, or NULL on failure. */
char *tu_mkdtemp(const char *tag);

/* Removes path and everything under it (no error when it does not exist). */
void tu_rmrf(const char *path);

/* Runs cmdline with /bin/sh -c. When out is not NULL, *out receives the
 * command's standard output (malloc'd, NUL-terminated; standard error is
 * passed through). Returns the exit status, or -1 when the command could
 * not be run or did not exit normally. */
int tu_run(const char *cmdline, char **out);

/* tu_run(cmd, NULL) == 0, then frees cmd (a tu_fmt result). */
int tu_run_ok(char *cmd);

/* Path of the iqp binary of this build: IQP_BUILDDIR "/iqp". */
const char *tu_iqp(void);

/* Reads a whole file: malloc'd, NUL-terminated; its length (without the
 * NUL) in *len when len is not NULL. NULL when it cannot be read. */
char *tu_read_file(const char *path, size_t *len);

/* s as one single-quoted shell word (malloc'd). */
char *tu_shell_quote(const char *s);

/* printf into a malloc'd string. */
char *tu_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A child process started by a test, stopped by pid in every path. */

/* `iqp devbroker` as a child: its stdin takes commands (down N, up N), its
 * stdout gave the bootstrap list. */
typedef struct tu_broker {
    pid_t pid;
    FILE *in;
    FILE *out;
    char bootstrap[512];
} tu_broker;

/* Starts `iqp devbroker ARGS...` (args is a NULL-terminated list of extra
 * arguments, may be NULL) and reads its bootstrap line. 0, or -1 when it
 * did not start (the child is reaped). */
int tu_broker_start(tu_broker *b, const char *const *args);

/* Sends one stdin command and returns its answer line (static buffer), or
 * NULL when the broker did not answer. */
const char *tu_broker_command(tu_broker *b, const char *cmd);

/* SIGTERM, wait up to 10 s (then SIGKILL); closes the pipes. Returns the
 * exit status, or -1 when it had to be killed or was not running. Safe to
 * call twice. */
int tu_broker_stop(tu_broker *b);

/* Sends sig to pid and waits up to timeout_ms for it to exit (then
 * SIGKILL). Returns the exit status, 128+signal when a signal ended it, or
 * -1 when it had to be killed with SIGKILL by this function. */
int tu_stop_pid(pid_t pid, int sig, int timeout_ms);

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int tu_free_port(void);

/* A real redis-server as a child, on 127.0.0.1:port, no persistence (a
 * restart starts empty), its log in log_path. Returns its pid once it
 * answers PING (bounded wait: 10 s), or -1 (the child is stopped).
 * Stop it with tu_stop_pid. */
pid_t tu_redis_start(int port, const char *log_path);

/* Runs `redis-cli -p port ARGS` (raw output: replies only) and returns its output
 * (malloc'd; NULL when redis-cli failed). args is shell text. */
char *tu_redis_cli(int port, const char *args);

/* GET /metrics from 127.0.0.1:port (a raw HTTP/1.0 request through
 * bash); the whole response (malloc'd), or NULL unless it answered 200. */
char *tu_try_fetch_metrics(int port);

/* CK_TIMEOUT_MULTIPLIER (ops/test --sanitize sets it) as an integer in
 * 1..20, 1 when unset or out of range; tu_wait_limit_ms stretches a
 * wait's bound by it. Bounds only guard against a hang: what a test
 * asserts is the outcome. */
int tu_timeout_multiplier(void);
int tu_wait_limit_ms(int base_ms);

/* `iqp lookup SOURCE --query Q --country C --gender G -- ITEMS...` with
 * every value shell-quoted (malloc'd). */
char *tu_lookup_cmd(const char *source, const char *query, const char *country, const char *gender,
                    const char *const *items, size_t n_items);

/* A context of the default segments (query, country, gender); NULL values
 * are not given. The strings are borrowed. */
iqp_context tu_ctx(const char *query, const char *country, const char *gender);

/* iqp_rv_hash_key under the default segments. */
size_t tu_hash_key(char *out, size_t cap, const char *prefix, uint64_t generation, const char *feature,
                   unsigned dims, const char *country, const char *gender, const char *query,
                   size_t query_len);

#endif

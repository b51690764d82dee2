/* common.c -- helpers every subcommand shares (see cli.h). */
#include "cli/cli.h"
#include "util/clock.h"

#include <errno.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

/* Where errors go instead of stderr while a caller captures them. */
static char *capture_buf;
static size_t capture_len;

void iqp_cli_capture_errors(char *buf, size_t len) {
    capture_buf = buf;
    capture_len = buf ? len : 0;
    if (buf && len) buf[0] = '\0';
}

static void vreport(const char *cmd, const char *fmt, va_list ap) {
    if (capture_buf) {
        vsnprintf(capture_buf, capture_len, fmt, ap);
        return;
    }
    fprintf(stderr, "iqp %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int iqp_cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    if (!capture_buf) fprintf(stderr, "Try 'iqp %s --help'.\n", cmd);
    return 2;
}

int iqp_cli_fail(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    return 1;
}

int iqp_cli_parse_i64(const char *s, int64_t *out) {
    char *end;
    if (!s || !*s) return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

int64_t iqp_now_ms(void) { return iqp_wall_ms(); }

void iqp_cli_on_stop_signals(void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

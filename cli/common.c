/* common.c -- helpers every subcommand shares (see cli.h). */
#include "cli/cli.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/logfmt.h"

#include <dirent.h>
#include <errno.h>
#include <malloc.h>
#include <jansson.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
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
    if (iqp_logfmt_json_active()) fputs(IQP_LOG_ERROR_MARK, stderr);
    fprintf(stderr, "iqp %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int iqp_cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    if (!capture_buf && !iqp_logfmt_json_active()) fprintf(stderr, "Try 'iqp %s --help'.\n", cmd);
    return IQP_EXIT_USAGE;
}

int iqp_cli_fail(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    return IQP_EXIT_FAIL;
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

void iqp_cli_add_kafka_offset(void *ud, const char *key, size_t klen, const char *val, size_t vlen) {
    static const size_t prefix = sizeof "src/kafka/" - 1;
    json_t *pos = json_loadb(val, vlen, 0, NULL);
    json_t *next = json_object_get(pos, "next_offset");
    if (klen > prefix && json_is_integer(next))
        json_object_setn_new(ud, key + prefix, klen - prefix, json_integer(json_integer_value(next)));
    json_decref(pos);
}

json_t *iqp_cli_store_position(const char *dir, char *err, size_t errlen) {
    iqp_store *st = iqp_store_open(dir, NULL, IQP_STORE_READ_ONLY, err, errlen);
    if (!st) return NULL;
    json_t *offsets = json_object();
    iqp_store_scan_meta(st, "src/kafka/", iqp_cli_add_kafka_offset, offsets);
    json_t *o = json_pack("{s:I, s:o, s:I}", "watermark", (json_int_t)iqp_store_watermark(st), "kafka_offsets",
                          offsets, "disk_bytes", (json_int_t)iqp_store_disk_bytes(st));
    iqp_store_close(st);
    return o;
}

/* A backfill's page faults (perf record -e page-faults) were nearly all
 * first touches of a batch's memory, and those of the blocks glibc maps
 * (large ones: the writer's drain arrays, tens of MiB) came back every
 * batch, as freeing unmaps them. Served from
 * the heap and not trimmed, a freed block is reused by the next batch
 * already mapped: faults -40%, CPU -6% and peak RSS +25 MB on the issue 15
 * log (README, Benchmark: "Fourth round"). Keeping the memory is bounded
 * by the batch cap (IQP_AGG_MAX_CELLS): each batch reuses what the last
 * one freed. Threads' arenas still map blocks over 64 MiB. */
void iqp_cli_keep_freed_memory(void) {
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

static int by_partition_number(const void *x, const void *y) {
    const char *a = strrchr(*(char *const *)x, '-') + 1, *b = strrchr(*(char *const *)y, '-') + 1;
    size_t la = strlen(a), lb = strlen(b);
    return la != lb ? (la < lb ? -1 : 1) : strcmp(a, b); /* numerically, for digits without leading zeros */
}

int iqp_cli_partition_stores(const char *dir, char **paths, size_t max, size_t *n, char *err, size_t errlen) {
    DIR *d = opendir(dir);
    *n = 0;
    if (!d) return snprintf(err, errlen, "cannot read the state dir %s: %s", dir, strerror(errno)), -1;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        const char *num = e->d_name + 10;
        if (strncmp(e->d_name, "partition-", 10) != 0 || !*num || num[strspn(num, "0123456789")]) continue;
        if (*n == max) {
            closedir(d);
            while (*n) free(paths[--*n]);
            return snprintf(err, errlen, "more than %zu partition stores in %s", max, dir), -1;
        }
        if (asprintf(&paths[(*n)++], "%s/%s", dir, e->d_name) < 0) abort();
    }
    closedir(d);
    if (*n == 0) return snprintf(err, errlen, "no partition store (partition-<p>) in %s", dir), -1;
    qsort(paths, *n, sizeof *paths, by_partition_number);
    return 0;
}

/* parse_only.c -- the ceiling for bench/backfill: read a log file with the
 * same reader iqp backfill uses and parse every line with jansson, nothing
 * else (no validation, no normalization, no counting). Prints one line:
 *   parse_only: <lines> lines, <bad> unparsable, <seconds> s, <lines/s> lines/s
 */
#include <jansson.h>
#include <stdio.h>
#include <time.h>

#include "consumers/logfile.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: parse_only FILE\n");
        return 2;
    }
    char err[512];
    iqp_logfile *lf = iqp_logfile_open(argv[1], 1u << 20, err, sizeof err);
    if (!lf) {
        fprintf(stderr, "parse_only: %s\n", err);
        return 1;
    }
    double t0 = now_seconds();
    const char *line;
    size_t len;
    int oversized, rc;
    uint64_t full_len, lines = 0, bad = 0;
    while ((rc = iqp_logfile_next(lf, &line, &len, &oversized, &full_len, err, sizeof err)) == 1) {
        json_t *root = json_loadb(line, len, JSON_DECODE_ANY, NULL);
        lines++;
        if (!root) bad++;
        json_decref(root);
    }
    double secs = now_seconds() - t0;
    iqp_logfile_close(lf);
    if (rc < 0) {
        fprintf(stderr, "parse_only: %s\n", err);
        return 1;
    }
    printf("parse_only: %llu lines, %llu unparsable, %.3f s, %.0f lines/s\n",
           (unsigned long long)lines, (unsigned long long)bad, secs, secs > 0 ? lines / secs : 0.0);
    return 0;
}

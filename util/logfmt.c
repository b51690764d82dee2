/* logfmt.c -- stderr as JSON lines (logfmt.h). */
#include "util/logfmt.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int real_fd = -1, read_fd = -1;
static pthread_t reader;
static const char *component_name;

/* "2026-12-03T08:15:00.123Z" (UTC, ms). */
static void iso_time(char *out, size_t cap) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* A JSON string of a log line's text: bytes that are not UTF-8 (a file
 * name, a broker's message) become '?' rather than losing the line. */
static json_t *text_json(const char *s) {
    json_t *j = json_string(s);
    if (j) return j;
    char *copy = strdup(s);
    if (!copy) return json_string("(out of memory)");
    for (char *c = copy; *c; c++)
        if ((unsigned char)*c >= 0x80) *c = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

/* librdkafka's default log line: "%LEVEL|TIME|FACILITY|CLIENT| message". */
static int kafka_line(const char *line, json_t *ev) {
    static const char *const levels[] = {"error", "error", "error", "error", "warn", "info", "info", "debug"};
    char fac[64], client[128];
    int level, used = 0;
    if (sscanf(line, "%%%d|%*[^|]|%63[^|]|%127[^|]|%n", &level, fac, client, &used) != 3 || used == 0) return 0;
    json_object_set_new(ev, "level", json_string(levels[level >= 0 && level <= 7 ? level : 6]));
    json_object_set_new(ev, "msg", text_json(line[used] == ' ' ? line + used + 1 : line + used));
    json_object_set_new(ev, "source", json_string("librdkafka"));
    json_object_set_new(ev, "facility", text_json(fac));
    json_object_set_new(ev, "client", text_json(client));
    return 1;
}

/* One event for one line of stderr. */
static void emit(const char *line) {
    char when[40];
    iso_time(when, sizeof when);
    json_t *ev = json_pack("{s:s, s:s, s:s}", "time", when, "level", "info", "component", component_name);
    if (!kafka_line(line, ev)) {
        const char *msg = line;
        if (strncmp(msg, IQP_LOG_ERROR_MARK, strlen(IQP_LOG_ERROR_MARK)) == 0) {
            json_object_set_new(ev, "level", json_string("error"));
            msg += strlen(IQP_LOG_ERROR_MARK);
        }
        char prefix[64];
        snprintf(prefix, sizeof prefix, "iqp %s: ", component_name);
        if (strncmp(msg, prefix, strlen(prefix)) == 0) msg += strlen(prefix);
        json_object_set_new(ev, "msg", text_json(msg));
    }
    char *text = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    json_decref(ev);
    if (!text) return;
    size_t n = strlen(text);
    text[n] = '\n';
    for (size_t off = 0; off <= n;) {
        ssize_t w = write(real_fd, text + off, n + 1 - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    free(text);
}

static void *read_lines(void *arg) {
    (void)arg;
    FILE *in = fdopen(read_fd, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    if (!in) return NULL;
    while ((n = getline(&line, &cap, in)) >= 0) {
        if (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
        if (n > 0) emit(line);
    }
    free(line);
    fclose(in);
    return NULL;
}

int iqp_logfmt_json_start(const char *component) {
    int p[2];
    if (real_fd >= 0) return 0;
    component_name = component;
    fflush(stderr);
    if (pipe(p) < 0) return -1;
    real_fd = dup(STDERR_FILENO);
    if (real_fd < 0 || dup2(p[1], STDERR_FILENO) < 0) {
        close(p[0]), close(p[1]);
        if (real_fd >= 0) close(real_fd);
        real_fd = -1;
        return -1;
    }
    close(p[1]);
    read_fd = p[0];
    setvbuf(stderr, NULL, _IOLBF, 0); /* one line, one write */
    if (pthread_create(&reader, NULL, read_lines, NULL) != 0) {
        dup2(real_fd, STDERR_FILENO);
        close(real_fd), close(read_fd);
        real_fd = read_fd = -1;
        return -1;
    }
    return 0;
}

int iqp_logfmt_json_active(void) { return real_fd >= 0; }

void iqp_logfmt_stop(void) {
    if (real_fd < 0) return;
    fflush(stderr);
    dup2(real_fd, STDERR_FILENO); /* the pipe's last writer is gone: the reader sees EOF */
    if (read_fd >= 0) pthread_join(reader, NULL);
    setvbuf(stderr, NULL, _IONBF, 0);
    close(real_fd);
    real_fd = read_fd = -1;
}

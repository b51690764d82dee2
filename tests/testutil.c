/* testutil.c -- see testutil.h. */
#include "tests/testutil.h"

#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef IQP_BUILDDIR
#define IQP_BUILDDIR "."
#endif

char *tu_mkdtemp(const char *tag) {
    const char *base = getenv("TMPDIR");
    char *path;
    if (!base || !*base) base = "/tmp";
    if (asprintf(&path, "%s/iqp-%s-XXXXXX", base, tag ? tag : "test") < 0) return NULL;
    if (!mkdtemp(path)) { free(path); return NULL; }
    return path;
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st; (void)type; (void)ftw;
    remove(path);
    return 0;
}

void tu_rmrf(const char *path) {
    if (path && *path) nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int tu_run(const char *cmdline, char **out) {
    FILE *p;
    char *buf = NULL, chunk[65536];
    size_t len = 0, n;
    int status;

    if (out) *out = NULL;
    fflush(NULL);
    if (!(p = popen(cmdline, "r"))) return -1;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0) {
        if (!out) continue;     /* drain, so the child never blocks */
        char *nb = realloc(buf, len + n + 1);
        if (!nb) { free(buf); pclose(p); return -1; }
        buf = nb;
        memcpy(buf + len, chunk, n);
        len += n;
    }
    status = pclose(p);
    if (out) {
        if (!buf && !(buf = malloc(1))) return -1;
        buf[len] = '\0';
        *out = buf;
    }
    if (status == -1 || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

const char *tu_iqp(void) { return IQP_BUILDDIR "/iqp"; }

char *tu_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL, chunk[65536];
    size_t n, total = 0;

    if (!f) return NULL;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        char *nb = realloc(buf, total + n + 1);
        if (!nb) { free(buf); fclose(f); return NULL; }
        buf = nb;
        memcpy(buf + total, chunk, n);
        total += n;
    }
    if (ferror(f) || (!buf && !(buf = malloc(1)))) { free(buf); fclose(f); return NULL; }
    fclose(f);
    buf[total] = '\0';
    if (len) *len = total;
    return buf;
}

char *tu_fmt(const char *fmt, ...) {
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

/* testutil.c -- see testutil.h. */
#include "tests/testutil.h"

#include "schemas/redis_value.h"

#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
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

/* ---- child processes ------------------------------------------------------ */

int tu_stop_pid(pid_t pid, int sig, int timeout_ms) {
    int status = 0;
    if (pid <= 0) return -1;
    kill(pid, sig);
    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(status)) return WEXITSTATUS(status);
            return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
        }
        if (r < 0) return -1;
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

int tu_broker_start(tu_broker *b, const char *const *args) {
    int to_child[2], from_child[2];
    const char *argv[32] = {"iqp", "devbroker"};
    size_t n = 2;
    memset(b, 0, sizeof *b);
    for (; args && *args && n < 31; args++) argv[n++] = *args;
    argv[n] = NULL;
    if (pipe(to_child) < 0) return -1;
    if (pipe(from_child) < 0) {
        close(to_child[0]);
        close(to_child[1]);
        return -1;
    }
    b->pid = fork();
    if (b->pid == 0) {
        dup2(to_child[0], STDIN_FILENO);
        dup2(from_child[1], STDOUT_FILENO);
        close(to_child[1]);
        close(from_child[0]);
        execv(tu_iqp(), (char *const *)argv);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    b->in = fdopen(to_child[1], "w");
    b->out = fdopen(from_child[0], "r");
    if (b->pid < 0 || !b->in || !b->out || !fgets(b->bootstrap, sizeof b->bootstrap, b->out)) {
        tu_broker_stop(b);
        return -1;
    }
    b->bootstrap[strcspn(b->bootstrap, "\n")] = '\0';
    return 0;
}

const char *tu_broker_command(tu_broker *b, const char *cmd) {
    static char answer[256];
    if (!b->in || !b->out) return NULL;
    fprintf(b->in, "%s\n", cmd);
    fflush(b->in);
    if (!fgets(answer, sizeof answer, b->out)) return NULL;
    answer[strcspn(answer, "\n")] = '\0';
    return answer;
}

int tu_broker_stop(tu_broker *b) {
    int rc = b->pid > 0 ? tu_stop_pid(b->pid, SIGTERM, 10000) : -1;
    b->pid = 0;
    if (b->in) fclose(b->in);
    if (b->out) fclose(b->out);
    b->in = b->out = NULL;
    return rc;
}

int tu_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

pid_t tu_redis_start(int port, const char *log_path) {
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log_path ? log_path : "/dev/null", "a", stdout)) _exit(126);
        execlp("redis-server", "redis-server", "--port", port_s, "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--protected-mode", "yes", (char *)NULL);
        _exit(127);
    }
    if (pid < 0) return -1;
    for (int waited = 0; waited < 10000; waited += 50) {
        char *out = tu_redis_cli(port, "PING");
        int up = out && strstr(out, "PONG");
        free(out);
        if (up) return pid;
        if (waitpid(pid, NULL, WNOHANG) == pid) return -1;
        usleep(50000);
    }
    tu_stop_pid(pid, SIGKILL, 5000);
    return -1;
}

char *tu_redis_cli(int port, const char *args) {
    char *cmd = tu_fmt("redis-cli -h 127.0.0.1 -p %d %s 2>/dev/null", port, args), *out = NULL;
    int rc = tu_run(cmd, &out);
    free(cmd);
    if (rc != 0) {
        free(out);
        return NULL;
    }
    return out;
}

char *tu_shell_quote(const char *s) {
    size_t n = 3;
    for (const char *p = s; *p; p++) n += *p == '\'' ? 4 : 1;
    char *out = malloc(n), *o = out;
    if (!out) abort();
    *o++ = '\'';
    for (const char *p = s; *p; p++) {
        if (*p == '\'') {
            memcpy(o, "'\\''", 4);
            o += 4;
        } else {
            *o++ = *p;
        }
    }
    *o++ = '\'';
    *o = 0;
    return out;
}

/* GET /metrics; NULL when the endpoint does not answer 200 (yet). */
char *tu_try_fetch_metrics(int port) {
    char *cmd = tu_fmt("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d && printf \"GET /metrics HTTP/1.0"
                       "\\r\\n\\r\\n\" >&3 && cat <&3' 2>/dev/null", port), *out = NULL;
    int rc = tu_run(cmd, &out);
    free(cmd);
    if (rc == 0 && out && strstr(out, "200 OK")) return out;
    free(out);
    return NULL;
}

int tu_timeout_multiplier(void) {
    const char *m = getenv("CK_TIMEOUT_MULTIPLIER");
    int k = m ? atoi(m) : 1;
    return k >= 1 && k <= 20 ? k : 1;
}

int tu_wait_limit_ms(int base_ms) { return base_ms * tu_timeout_multiplier(); }

char *tu_lookup_cmd(const char *source, const char *query, const char *country, const char *gender,
                    const char *const *items, size_t n_items) {
    char *q = tu_shell_quote(query), *list = tu_fmt("%s", ""), *next;
    for (size_t i = 0; i < n_items; i++) {
        char *item = tu_shell_quote(items[i]);
        next = tu_fmt("%s %s", list, item);
        free(item);
        free(list);
        list = next;
    }
    char *cmd = tu_fmt("'%s' lookup %s --query %s --country %s --gender %s --%s", tu_iqp(), source, q, country,
                       gender, list);
    free(list);
    free(q);
    return cmd;
}

int tu_run_ok(char *cmd) {
    int rc = tu_run(cmd, NULL);
    free(cmd);
    return rc == 0;
}

/* ---- contexts of the default segments --------------------------------------- */

static iqp_segval tu_segval(const char *s) {
    iqp_segval v = {s, s ? strlen(s) : 0};
    return v;
}

iqp_context tu_ctx(const char *query, const char *country, const char *gender) {
    iqp_context ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.v[0] = tu_segval(query);
    ctx.v[1] = tu_segval(country);
    ctx.v[2] = tu_segval(gender);
    return ctx;
}

size_t tu_hash_key(char *out, size_t cap, const char *prefix, uint64_t generation, const char *feature,
                   unsigned dims, const char *country, const char *gender, const char *query,
                   size_t query_len) {
    iqp_config cfg;
    iqp_config_defaults(&cfg);
    iqp_context ctx = tu_ctx(NULL, country, gender);
    ctx.v[0].s = query;
    ctx.v[0].len = query_len;
    return iqp_rv_hash_key(out, cap, prefix, generation, feature, &cfg, dims, &ctx);
}

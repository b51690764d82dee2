/* fuzz_client.c -- libFuzzer target: libiqp's reply path (client/), fed
 * arbitrary bytes as what "Redis" answers.
 *
 * A fake server listens on a Unix socket (one per fuzzing process). For
 * each input, a server thread accepts the client's connection, writes the
 * input bytes to it verbatim -- a stream of RESP replies, or garbage --
 * and then shuts down its sending side, so the client sees end-of-stream
 * (not a timeout) once the bytes are used up. Later connections (libiqp
 * reconnects after a broken connection) are accepted and closed at once.
 * The client is driven only through the public API (iqp.h):
 *
 *   iqp_client_open()    GET <prefix>:gen, HGETALL <prefix>:<G>:meta
 *   iqp_client_lookup()  twice: GET <prefix>:gen + one HMGET per feature
 *                        (and on a generation switch, the meta again)
 *
 * so everything from hiredis's reply parser through the layout check,
 * generation handling and value decoding runs on hostile bytes. Since the
 * bytes are written before the client asks, the answers do not depend on
 * the requests; the seed corpus holds well-formed conversations
 * (fuzz/corpus/client/, written by fuzz/make_seeds.py).
 *
 * Checked beyond "no crash, no leak, no UB": every call returns a known
 * status, the one iqp_client_status() then reports, with a message when
 * it is not IQP_OK; after IQP_OK every rate is count / context_count (0
 * when context_count is 0), as iqp.h promises.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "client/iqp.h"
#include "fuzz/fuzz.h"

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "fuzz_client: check failed: %s\n", #cond);        \
            abort();                                                          \
        }                                                                     \
    } while (0)

static int listen_fd = -1;
static char url[sizeof(((struct sockaddr_un *)0)->sun_path) + 16];

typedef struct server {
    const uint8_t *data;
    size_t size;
    int stop[2];  /* a pipe: the fuzzer writes a byte when the client is done */
} server;

static void remove_socket(void) {
    if (url[0]) unlink(url + strlen("unix://"));
}

int fuzz_client_init(void) {
    if (listen_fd >= 0) return 0; /* already listening */
    signal(SIGPIPE, SIG_IGN); /* the fake server hangs up on the client */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s/iqp-fuzz-client-%d.sock", tmp, (int)getpid());
    unlink(sa.sun_path);
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(listen_fd, 16) != 0) {
        fprintf(stderr, "fuzz_client: cannot listen on %s: %s\n", sa.sun_path, strerror(errno));
        abort();
    }
    snprintf(url, sizeof url, "unix://%s", sa.sun_path);
    atexit(remove_socket);
    return 0;
}

/* Writes all of data to fd; gives up when the client hangs up. */
static void write_all(int fd, const uint8_t *data, size_t size) {
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        data += n;
        size -= (size_t)n;
    }
}

/* The first connection gets the input; later ones are closed at once. */
static void *serve(void *arg) {
    server *s = arg;
    int served = 0, conn = -1;
    for (;;) {
        struct pollfd p[3] = {{s->stop[0], POLLIN, 0}, {listen_fd, POLLIN, 0}, {conn, POLLIN, 0}};
        if (poll(p, conn >= 0 ? 3 : 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[0].revents) break;
        if (conn >= 0 && p[2].revents) {
            char sink[4096]; /* the client's commands: read and dropped */
            if (read(conn, sink, sizeof sink) <= 0) {
                close(conn);
                conn = -1;
            }
        }
        if (p[1].revents & POLLIN) {
            int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0) continue;
            if (served) {
                close(fd);
                continue;
            }
            served = 1;
            write_all(fd, s->data, s->size);
            shutdown(fd, SHUT_WR);
            if (conn >= 0) close(conn);
            conn = fd;
        }
    }
    if (conn >= 0) close(conn);
    return NULL;
}

/* A status other than IQP_OK comes with a message. */
static void check_status(iqp_client *c, iqp_status s) {
    if (getenv("FUZZ_VERBOSE")) /* to see what a seed reaches */
        fprintf(stderr, "fuzz_client: %s: %s\n", iqp_status_name(s), iqp_client_errstr(c));
    CHECK((int)s >= IQP_OK && s <= IQP_ENOMEM);
    CHECK(iqp_client_status(c) == s);
    CHECK(s == IQP_OK || iqp_client_errstr(c)[0] != '\0');
}

/* The measures of one (item, feature, window): context_count, counts, rates. */
static void check_rates(const double *o, size_t width) {
    for (size_t i = 0; i < width; i++) {
        double want = o[0] == 0 ? 0.0 : o[1 + i] / o[0];
        if (isnan(o[0])) continue;
        CHECK(o[1 + width + i] == want || (isnan(want) && isnan(o[1 + width + i])));
    }
}

static void lookup(iqp_client *c, const char *query, const char *country, const char *gender) {
    static const char *const items[] = {"pin1", "pin2"};
    size_t n = iqp_client_result_len(c, 2);
    double *out = malloc((n ? n : 1) * sizeof *out);
    if (!out) abort();
    iqp_status s = iqp_client_lookup(c, query, country, gender, items, 2, out, n);
    check_status(c, s);
    size_t nm = iqp_client_n_measures(c);
    if (s == IQP_OK && nm > 0)
        for (size_t k = 0; k < n; k += nm) check_rates(out + k, (nm - 1) / 2);
    free(out);
}

int fuzz_client_one(const uint8_t *data, size_t size) {
    server s = {.data = data, .size = size};
    pthread_t th;
    if (pipe2(s.stop, O_CLOEXEC) != 0) abort();
    if (pthread_create(&th, NULL, serve, &s) != 0) abort();

    iqp_client_options o;
    iqp_client_options_init(&o);
    o.timeout_ms = 1000; /* a slow machine must not turn into a different path */
    iqp_client *c = iqp_client_open(url, &o);
    CHECK(c != NULL);
    check_status(c, iqp_client_status(c));
    if (iqp_client_status(c) == IQP_OK) {
        for (size_t f = 0; f < iqp_client_n_features(c); f++) CHECK(iqp_client_feature_name(c, f));
        for (size_t w = 0; w < iqp_client_n_windows(c); w++) CHECK(iqp_client_window_name(c, w));
        for (size_t m = 0; m < iqp_client_n_measures(c); m++) CHECK(iqp_client_measure_name(c, m));
        lookup(c, "Red  Shoes", "us", "f");
        lookup(c, "red shoes", NULL, NULL);
    }
    iqp_client_close(c);

    if (write(s.stop[1], "x", 1) != 1) abort();
    pthread_join(th, NULL);
    close(s.stop[0]);
    close(s.stop[1]);
    return 0;
}

IQP_FUZZ_ENTRY(fuzz_client_init, fuzz_client_one)

/* check_metrics.c -- the Prometheus registry and its HTTP endpoint.
 *
 * Rendering is checked against text written out here by hand (bucket
 * counts, sums and number formats worked out independently of the code);
 * declaration errors, ignored updates, label escaping, exact counts under
 * two writer threads; and the HTTP server through a raw-socket client on
 * loopback: /metrics, /healthz healthy and not, 404, 405, IPv6 when the
 * machine has it, bad listen strings and a port already in use; and slow
 * clients: /healthz answers while 256 idle clients hold connections, idle
 * connections are closed after the timeout, and one address cannot take
 * more than its share of the connections. */
#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "consumers/metrics.h"
#include "tests/testutil.h"

static const double flush_bounds[] = {0.01, 0.1, 1};

/* ---- rendering ------------------------------------------------------------- */

/* Replaces the first occurrence of what in s (malloc'd) by with. */
static char *replace(const char *s, const char *what, const char *with) {
    const char *at = strstr(s, what);
    ck_assert_msg(at != NULL, "'%s' not in:\n%s", what, s);
    return tu_fmt("%.*s%s%s", (int)(at - s), s, with, at + strlen(what));
}

/* The value printed after prefix (a whole line start) in text. */
static double value_after(const char *text, const char *prefix) {
    const char *at = strstr(text, prefix);
    ck_assert_msg(at != NULL, "'%s' not in:\n%s", prefix, text);
    return strtod(at + strlen(prefix), NULL);
}

START_TEST(render_counters_gauge_histogram) {
    iqp_metrics *m = iqp_metrics_new();
    ck_assert_int_eq(iqp_metrics_declare(m, "iqp_events_total", IQP_METRIC_COUNTER,
                                         "Events read.", NULL, 0), 0);
    ck_assert_int_eq(iqp_metrics_declare(m, "iqp_lag_seconds", IQP_METRIC_GAUGE,
                                         "Consumer lag.", NULL, 0), 0);
    ck_assert_int_eq(iqp_metrics_declare(m, "iqp_flush_seconds", IQP_METRIC_HISTOGRAM,
                                         "Flush time.", flush_bounds, 3), 0);
    ck_assert_int_eq(iqp_metrics_declare(m, "iqp_unused", IQP_METRIC_GAUGE,
                                         "Never set.", NULL, 0), 0);
    ck_assert_int_eq(iqp_metrics_declare(m, "iqp_plain_seconds", IQP_METRIC_HISTOGRAM,
                                         "No labels, no bounds.", NULL, 0), 0);
    /* created in an order other than the rendered one (sorted by labels) */
    iqp_metrics_add(m, "iqp_events_total", "topic=\"b\"", 2.5);
    iqp_metrics_add(m, "iqp_events_total", "", 1e6);
    iqp_metrics_add(m, "iqp_events_total", "topic=\"a\",outcome=\"counted\"", 3);
    iqp_metrics_add(m, "iqp_events_total", "topic=\"a\",outcome=\"counted\"", 4);
    iqp_metrics_set(m, "iqp_lag_seconds", "", 7);
    iqp_metrics_set(m, "iqp_lag_seconds", "", 1.5);
    iqp_metrics_observe(m, "iqp_flush_seconds", "topic=\"a\"", 0.003);
    iqp_metrics_observe(m, "iqp_flush_seconds", "topic=\"a\"", 0.02);
    iqp_metrics_observe(m, "iqp_flush_seconds", "topic=\"a\"", 5);
    iqp_metrics_observe(m, "iqp_flush_seconds", "topic=\"b\"", 0.1); /* le is inclusive */
    iqp_metrics_observe(m, "iqp_plain_seconds", "", 2);

    char *got = iqp_metrics_render(m);
    /* the one sum that is not exact in binary is checked by value */
    double sum = 0.003 + 0.02 + 5;
    static const char sum_prefix[] = "iqp_flush_seconds_sum{topic=\"a\"} ";
    ck_assert(value_after(got, sum_prefix) == sum);
    char sum_text[64];
    const char *at = strstr(got, sum_prefix) + strlen(sum_prefix);
    snprintf(sum_text, sizeof sum_text, "%.*s", (int)strcspn(at, "\n"), at);
    char *got_x = replace(got, sum_text, "SUM");
    const char *want =
        "# HELP iqp_events_total Events read.\n"
        "# TYPE iqp_events_total counter\n"
        "iqp_events_total 1000000\n"
        "iqp_events_total{topic=\"a\",outcome=\"counted\"} 7\n"
        "iqp_events_total{topic=\"b\"} 2.5\n"
        "# HELP iqp_lag_seconds Consumer lag.\n"
        "# TYPE iqp_lag_seconds gauge\n"
        "iqp_lag_seconds 1.5\n"
        "# HELP iqp_flush_seconds Flush time.\n"
        "# TYPE iqp_flush_seconds histogram\n"
        "iqp_flush_seconds_bucket{topic=\"a\",le=\"0.01\"} 1\n"
        "iqp_flush_seconds_bucket{topic=\"a\",le=\"0.1\"} 2\n"
        "iqp_flush_seconds_bucket{topic=\"a\",le=\"1\"} 2\n"
        "iqp_flush_seconds_bucket{topic=\"a\",le=\"+Inf\"} 3\n"
        "iqp_flush_seconds_sum{topic=\"a\"} SUM\n"
        "iqp_flush_seconds_count{topic=\"a\"} 3\n"
        "iqp_flush_seconds_bucket{topic=\"b\",le=\"0.01\"} 0\n"
        "iqp_flush_seconds_bucket{topic=\"b\",le=\"0.1\"} 1\n"
        "iqp_flush_seconds_bucket{topic=\"b\",le=\"1\"} 1\n"
        "iqp_flush_seconds_bucket{topic=\"b\",le=\"+Inf\"} 1\n"
        "iqp_flush_seconds_sum{topic=\"b\"} 0.1\n"
        "iqp_flush_seconds_count{topic=\"b\"} 1\n"
        "# HELP iqp_unused Never set.\n"
        "# TYPE iqp_unused gauge\n"
        "# HELP iqp_plain_seconds No labels, no bounds.\n"
        "# TYPE iqp_plain_seconds histogram\n"
        "iqp_plain_seconds_bucket{le=\"+Inf\"} 1\n"
        "iqp_plain_seconds_sum 2\n"
        "iqp_plain_seconds_count 1\n";
    ck_assert_str_eq(got_x, want);
    /* the sum is printed short, not as 17 digits of noise */
    ck_assert_int_le((int)strlen(sum_text), 17);

    ck_assert(iqp_metrics_value(m, "iqp_events_total", "") == 1e6);
    ck_assert(iqp_metrics_value(m, "iqp_events_total", "topic=\"a\",outcome=\"counted\"") == 7);
    ck_assert(iqp_metrics_value(m, "iqp_lag_seconds", "") == 1.5);
    ck_assert(iqp_metrics_value(m, "iqp_flush_seconds", "topic=\"a\"") == 3);
    ck_assert(iqp_metrics_value(m, "iqp_flush_seconds", "topic=\"zzz\"") == 0);
    ck_assert(iqp_metrics_value(m, "iqp_unused", "") == 0);
    free(got);
    free(got_x);
    iqp_metrics_free(m);
}
END_TEST

/* The value line that one gauge set to v renders. */
static char *render_gauge(double v) {
    iqp_metrics *m = iqp_metrics_new();
    ck_assert_int_eq(iqp_metrics_declare(m, "g", IQP_METRIC_GAUGE, "", NULL, 0), 0);
    iqp_metrics_set(m, "g", "", v);
    char *text = iqp_metrics_render(m);
    iqp_metrics_free(m);
    const char *line = strstr(text, "\ng ");
    ck_assert_ptr_nonnull(line);
    char *value = tu_fmt("%.*s", (int)strcspn(line + 3, "\n"), line + 3);
    free(text);
    return value;
}

START_TEST(numbers_render_without_needless_exponents) {
    static const struct {
        double v;
        const char *want;
    } cases[] = {
        {0, "0"},
        {-0.0, "0"},
        {1e6, "1000000"},
        {-2, "-2"},
        {123456789012, "123456789012"},
        {9007199254740992.0, "9007199254740992"}, /* 2^53 */
        {0.1, "0.1"},
        {0.25, "0.25"},
        {1.0 / 3, "0.3333333333333333"},
        {1e300, "1e+300"},
        {INFINITY, "+Inf"},
        {-INFINITY, "-Inf"},
        {NAN, "NaN"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = render_gauge(cases[i].v);
        ck_assert_msg(strcmp(got, cases[i].want) == 0, "case %zu: got '%s' want '%s'", i, got,
                      cases[i].want);
        if (isfinite(cases[i].v)) ck_assert(strtod(got, NULL) == cases[i].v);
        free(got);
    }
}
END_TEST

START_TEST(help_text_is_escaped) {
    iqp_metrics *m = iqp_metrics_new();
    ck_assert_int_eq(iqp_metrics_declare(m, "x", IQP_METRIC_COUNTER, "a\\b\nc", NULL, 0), 0);
    ck_assert_int_eq(iqp_metrics_declare(m, "y", IQP_METRIC_COUNTER, NULL, NULL, 0), 0);
    char *got = iqp_metrics_render(m);
    ck_assert_str_eq(got, "# HELP x a\\\\b\\nc\n# TYPE x counter\n# HELP y \n# TYPE y counter\n");
    free(got);
    iqp_metrics_free(m);
}
END_TEST

/* ---- declaration errors, ignored updates ---------------------------------------- */

START_TEST(declare_rejects_bad_names_duplicates_and_bounds) {
    iqp_metrics *m = iqp_metrics_new();
    static const char *const bad[] = {"", "1abc", "a-b", "a b", "é", "a{b}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(iqp_metrics_declare(m, bad[i], IQP_METRIC_COUNTER, "h", NULL, 0) == -1,
                      "name '%s' accepted", bad[i]);
    ck_assert_int_eq(iqp_metrics_declare(m, NULL, IQP_METRIC_COUNTER, "h", NULL, 0), -1);
    ck_assert_int_eq(iqp_metrics_declare(m, "ok:name_9", IQP_METRIC_COUNTER, "h", NULL, 0), 0);
    ck_assert_int_eq(iqp_metrics_declare(m, "_x", IQP_METRIC_GAUGE, "h", NULL, 0), 0);
    /* twice, with the same or another type */
    ck_assert_int_eq(iqp_metrics_declare(m, "ok:name_9", IQP_METRIC_COUNTER, "h", NULL, 0), -1);
    ck_assert_int_eq(iqp_metrics_declare(m, "ok:name_9", IQP_METRIC_GAUGE, "h", NULL, 0), -1);
    /* bounds */
    static const double equal[] = {0.1, 0.1}, down[] = {1, 0.5}, inf[] = {1, INFINITY},
                        nan_[] = {NAN}, fine[] = {-1, 0, 2.5};
    ck_assert_int_eq(iqp_metrics_declare(m, "h1", IQP_METRIC_HISTOGRAM, "h", equal, 2), -1);
    ck_assert_int_eq(iqp_metrics_declare(m, "h1", IQP_METRIC_HISTOGRAM, "h", down, 2), -1);
    ck_assert_int_eq(iqp_metrics_declare(m, "h1", IQP_METRIC_HISTOGRAM, "h", inf, 2), -1);
    ck_assert_int_eq(iqp_metrics_declare(m, "h1", IQP_METRIC_HISTOGRAM, "h", nan_, 1), -1);
    ck_assert_int_eq(iqp_metrics_declare(m, "h1", IQP_METRIC_HISTOGRAM, "h", NULL, 2), -1);
    ck_assert_int_eq(iqp_metrics_declare(m, "c1", IQP_METRIC_COUNTER, "h", fine, 3), -1);
    ck_assert_int_eq(iqp_metrics_declare(m, "h1", IQP_METRIC_HISTOGRAM, "h", fine, 3), 0);
    ck_assert_int_eq(iqp_metrics_declare(m, "t", (iqp_metric_type)7, "h", NULL, 0), -1);
    char *got = iqp_metrics_render(m);
    ck_assert_str_eq(got, "# HELP ok:name_9 h\n# TYPE ok:name_9 counter\n"
                          "# HELP _x h\n# TYPE _x gauge\n"
                          "# HELP h1 h\n# TYPE h1 histogram\n");
    free(got);
    iqp_metrics_free(m);
}
END_TEST

START_TEST(updates_to_undeclared_or_mistyped_families_are_ignored) {
    iqp_metrics *m = iqp_metrics_new();
    ck_assert_int_eq(iqp_metrics_declare(m, "c", IQP_METRIC_COUNTER, "h", NULL, 0), 0);
    ck_assert_int_eq(iqp_metrics_declare(m, "g", IQP_METRIC_GAUGE, "h", NULL, 0), 0);
    ck_assert_int_eq(iqp_metrics_declare(m, "h", IQP_METRIC_HISTOGRAM, "h", flush_bounds, 3), 0);
    char *before = iqp_metrics_render(m);
    iqp_metrics_add(m, "nope", "", 1);
    iqp_metrics_set(m, "nope", "", 1);
    iqp_metrics_observe(m, "nope", "", 1);
    iqp_metrics_add(m, NULL, "", 1);
    iqp_metrics_set(m, "c", "", 5);      /* set is for gauges */
    iqp_metrics_observe(m, "c", "", 5);  /* observe is for histograms */
    iqp_metrics_add(m, "c", "", -1);     /* counters never go down */
    iqp_metrics_add(m, "c", "", NAN);
    iqp_metrics_observe(m, "g", "", 5);
    iqp_metrics_add(m, "h", "", 5);
    iqp_metrics_set(m, "h", "", 5);
    char *after = iqp_metrics_render(m);
    ck_assert_str_eq(after, before);
    ck_assert(iqp_metrics_value(m, "nope", "") == 0);
    /* what is allowed: gauges go both ways, a zero add creates the series */
    iqp_metrics_add(m, "g", "", 2);
    iqp_metrics_add(m, "g", "", -5);
    iqp_metrics_add(m, "c", "x=\"1\"", 0);
    iqp_metrics_add(m, "c", NULL, 1); /* NULL labels is "" */
    ck_assert(iqp_metrics_value(m, "g", "") == -3);
    ck_assert(iqp_metrics_value(m, "c", "") == 1);
    free(after);
    after = iqp_metrics_render(m);
    ck_assert_ptr_nonnull(strstr(after, "\nc 1\nc{x=\"1\"} 0\n"));
    ck_assert_ptr_nonnull(strstr(after, "\ng -3\n"));
    free(before);
    free(after);
    iqp_metrics_free(m);
}
END_TEST

/* A removed series is no longer rendered; its siblings and family stay. */
START_TEST(removed_series_are_not_rendered) {
    iqp_metrics *m = iqp_metrics_new();
    ck_assert_int_eq(iqp_metrics_declare(m, "lag", IQP_METRIC_GAUGE, "h", NULL, 0), 0);
    ck_assert_int_eq(iqp_metrics_declare(m, "h", IQP_METRIC_HISTOGRAM, "h", flush_bounds, 3), 0);
    iqp_metrics_set(m, "lag", "partition=\"0\"", 7);
    iqp_metrics_set(m, "lag", "partition=\"1\"", 9);
    iqp_metrics_observe(m, "h", "", 0.5);
    iqp_metrics_remove(m, "lag", "partition=\"0\"");
    iqp_metrics_remove(m, "lag", "partition=\"5\""); /* absent: ignored */
    iqp_metrics_remove(m, "nope", "");
    iqp_metrics_remove(m, "h", "");
    char *text = iqp_metrics_render(m);
    ck_assert_ptr_null(strstr(text, "lag{partition=\"0\"}"));
    ck_assert_ptr_nonnull(strstr(text, "\nlag{partition=\"1\"} 9\n"));
    ck_assert_ptr_null(strstr(text, "h_count"));
    ck_assert_ptr_nonnull(strstr(text, "# TYPE h histogram"));
    ck_assert(iqp_metrics_value(m, "lag", "partition=\"0\"") == 0);
    iqp_metrics_set(m, "lag", "partition=\"0\"", 3); /* comes back when set again */
    ck_assert(iqp_metrics_value(m, "lag", "partition=\"0\"") == 3);
    free(text);
    iqp_metrics_free(m);
}
END_TEST

/* ---- label values -------------------------------------------------------------- */

START_TEST(label_values_are_escaped_and_truncated_whole) {
    char out[64];
    iqp_metrics_label_value("plain.topic-1", out, sizeof out);
    ck_assert_str_eq(out, "plain.topic-1");
    iqp_metrics_label_value("a\\b\"c\nd", out, sizeof out);
    ck_assert_str_eq(out, "a\\\\b\\\"c\\nd");
    /* truncation never leaves half an escape or half a UTF-8 character */
    iqp_metrics_label_value("abc\"", out, 5);
    ck_assert_str_eq(out, "abc");
    iqp_metrics_label_value("ab\"", out, 5);
    ck_assert_str_eq(out, "ab\\\"");
    iqp_metrics_label_value("a\xc3\xa9", out, 3); /* a + é (2 bytes) */
    ck_assert_str_eq(out, "a");
    iqp_metrics_label_value("a\xc3\xa9", out, 4);
    ck_assert_str_eq(out, "a\xc3\xa9");
    iqp_metrics_label_value("abc", out, 1);
    ck_assert_str_eq(out, "");
    out[0] = 'Z';
    iqp_metrics_label_value("abc", out, 0);
    ck_assert_int_eq(out[0], 'Z');

    /* an escaped value used in a series renders as given */
    iqp_metrics *m = iqp_metrics_new();
    ck_assert_int_eq(iqp_metrics_declare(m, "t_total", IQP_METRIC_COUNTER, "h", NULL, 0), 0);
    iqp_metrics_label_value("we\"ird\\", out, sizeof out);
    char *labels = tu_fmt("topic=\"%s\"", out);
    iqp_metrics_add(m, "t_total", labels, 1);
    char *got = iqp_metrics_render(m);
    ck_assert_str_eq(got, "# HELP t_total h\n# TYPE t_total counter\n"
                          "t_total{topic=\"we\\\"ird\\\\\"} 1\n");
    free(got);
    free(labels);
    iqp_metrics_free(m);
}
END_TEST

/* ---- threads ---------------------------------------------------------------------- */

#define ADDS 100000

static void *adder(void *arg) {
    iqp_metrics *m = arg;
    for (int i = 0; i < ADDS; i++) iqp_metrics_add(m, "n_total", "w=\"x\"", 1);
    return NULL;
}

static void *renderer(void *arg) {
    iqp_metrics *m = arg;
    for (int i = 0; i < 200; i++) free(iqp_metrics_render(m));
    return NULL;
}

START_TEST(two_writer_threads_count_exactly) {
    iqp_metrics *m = iqp_metrics_new();
    ck_assert_int_eq(iqp_metrics_declare(m, "n_total", IQP_METRIC_COUNTER, "h", NULL, 0), 0);
    pthread_t t[3];
    ck_assert_int_eq(pthread_create(&t[0], NULL, adder, m), 0);
    ck_assert_int_eq(pthread_create(&t[1], NULL, adder, m), 0);
    ck_assert_int_eq(pthread_create(&t[2], NULL, renderer, m), 0);
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    ck_assert(iqp_metrics_value(m, "n_total", "w=\"x\"") == 2.0 * ADDS);
    char *got = iqp_metrics_render(m);
    ck_assert_ptr_nonnull(strstr(got, "\nn_total{w=\"x\"} 200000\n"));
    free(got);
    iqp_metrics_free(m);
}
END_TEST

/* ---- HTTP ------------------------------------------------------------------------- */

typedef struct {
    int status;
    char *head; /* status line and headers */
    char *body;
} http_reply;

static void reply_free(http_reply *r) {
    free(r->head);
    free(r->body);
}

static int connect_loopback(int family, int port) {
    int fd = socket(family, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
                              .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int rc = family == AF_INET6 ? connect(fd, (struct sockaddr *)&a6, sizeof a6)
                                : connect(fd, (struct sockaddr *)&a4, sizeof a4);
    ck_assert_msg(rc == 0, "connect to port %d: %s", port, strerror(errno));
    return fd;
}

static char *read_all(int fd) {
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    for (;;) {
        if (len + 1 == cap) buf = realloc(buf, cap *= 2);
        ck_assert_ptr_nonnull(buf);
        ssize_t n = read(fd, buf + len, cap - len - 1);
        ck_assert_msg(n >= 0, "read: %s", strerror(errno));
        if (n == 0) break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    return buf;
}

/* One request on a fresh connection; the whole reply parsed. */
static http_reply http_request(int family, int port, const char *method, const char *path) {
    int fd = connect_loopback(family, port);
    char *req = tu_fmt("%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                       "Content-Length: 0\r\n\r\n", method, path);
    ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    free(req);
    char *raw = read_all(fd);
    close(fd);
    http_reply r = {0};
    ck_assert_msg(sscanf(raw, "HTTP/1.%*d %d ", &r.status) == 1, "reply '%s'", raw);
    char *end = strstr(raw, "\r\n\r\n");
    ck_assert_ptr_nonnull(end);
    r.head = tu_fmt("%.*s", (int)(end - raw), raw);
    r.body = tu_fmt("%s", end + 4);
    free(raw);
    return r;
}

static http_reply http_get(int port, const char *path) {
    return http_request(AF_INET, port, "GET", path);
}

static int open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    ck_assert_ptr_nonnull(d);
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

static iqp_metrics *small_registry(void) {
    iqp_metrics *m = iqp_metrics_new();
    ck_assert_int_eq(iqp_metrics_declare(m, "up_total", IQP_METRIC_COUNTER, "Up.", NULL, 0), 0);
    iqp_metrics_add(m, "up_total", "", 42);
    return m;
}

START_TEST(http_serves_metrics_healthz_and_errors) {
    int fds_before = open_fds();
    iqp_metrics *m = small_registry();
    char err[256] = "";
    iqp_metrics_server *s = iqp_metrics_serve(m, "127.0.0.1:0", err, sizeof err);
    ck_assert_msg(s != NULL, "serve: %s", err);
    int port = iqp_metrics_server_port(s);
    ck_assert_int_gt(port, 0);
    ck_assert_int_lt(port, 65536);

    http_reply r = http_get(port, "/metrics");
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.head, "Content-Type: text/plain; version=0.0.4") != NULL, "%s", r.head);
    ck_assert_str_eq(r.body, "# HELP up_total Up.\n# TYPE up_total counter\nup_total 42\n");
    reply_free(&r);

    /* a scrape sees the values of that moment */
    iqp_metrics_add(m, "up_total", "", 1);
    r = http_get(port, "/metrics?x=1");
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\nup_total 43\n"));
    reply_free(&r);

    r = http_get(port, "/healthz");
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "ok\n");
    reply_free(&r);

    iqp_metrics_set_health(m, 0, "kafka: all brokers down");
    r = http_get(port, "/healthz");
    ck_assert_int_eq(r.status, 503);
    ck_assert_str_eq(r.body, "kafka: all brokers down\n");
    reply_free(&r);

    iqp_metrics_set_health(m, 0, NULL);
    r = http_get(port, "/healthz");
    ck_assert_int_eq(r.status, 503);
    ck_assert_str_eq(r.body, "unhealthy\n");
    reply_free(&r);

    iqp_metrics_set_health(m, 1, NULL);
    r = http_get(port, "/healthz");
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "ok\n");
    reply_free(&r);

    r = http_get(port, "/nope");
    ck_assert_int_eq(r.status, 404);
    reply_free(&r);
    r = http_get(port, "/metrics/");
    ck_assert_int_eq(r.status, 404);
    reply_free(&r);

    r = http_request(AF_INET, port, "POST", "/metrics");
    ck_assert_int_eq(r.status, 405);
    ck_assert_ptr_nonnull(strstr(r.head, "Allow: GET"));
    reply_free(&r);
    r = http_request(AF_INET, port, "DELETE", "/healthz");
    ck_assert_int_eq(r.status, 405);
    reply_free(&r);

    iqp_metrics_server_stop(s);
    iqp_metrics_server_stop(NULL);
    iqp_metrics_free(m);
    /* the listening socket and MHD's own descriptors are gone */
    ck_assert_int_eq(open_fds(), fds_before);
}
END_TEST

START_TEST(http_serves_localhost_and_a_fixed_port) {
    iqp_metrics *m = small_registry();
    char err[256] = "";
    int want = tu_free_port();
    ck_assert_int_gt(want, 0);
    char *listen = tu_fmt("localhost:%d", want);
    iqp_metrics_server *s = iqp_metrics_serve(m, listen, err, sizeof err);
    ck_assert_msg(s != NULL, "serve %s: %s", listen, err);
    ck_assert_int_eq(iqp_metrics_server_port(s), want);
    http_reply r = http_get(want, "/metrics");
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\nup_total 42\n"));
    reply_free(&r);
    iqp_metrics_server_stop(s);
    /* the port can be served again at once after a stop */
    s = iqp_metrics_serve(m, listen, err, sizeof err);
    ck_assert_msg(s != NULL, "serve %s again: %s", listen, err);
    iqp_metrics_server_stop(s);
    free(listen);
    iqp_metrics_free(m);
}
END_TEST

/* 1 when this machine can bind [::1]. */
static int have_ipv6_loopback(void) {
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int ok = bind(fd, (struct sockaddr *)&a6, sizeof a6) == 0;
    close(fd);
    return ok;
}

START_TEST(http_serves_ipv6_loopback) {
    if (!have_ipv6_loopback()) {
        fprintf(stderr, "check_metrics: no IPv6 loopback here, [::1] not tested\n");
        return;
    }
    iqp_metrics *m = small_registry();
    char err[256] = "";
    iqp_metrics_server *s = iqp_metrics_serve(m, "[::1]:0", err, sizeof err);
    ck_assert_msg(s != NULL, "serve: %s", err);
    int port = iqp_metrics_server_port(s);
    ck_assert_int_gt(port, 0);
    http_reply r = http_request(AF_INET6, port, "GET", "/metrics");
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "# HELP up_total Up.\n# TYPE up_total counter\nup_total 42\n");
    reply_free(&r);
    r = http_request(AF_INET6, port, "GET", "/healthz");
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "ok\n");
    reply_free(&r);
    iqp_metrics_server_stop(s);
    iqp_metrics_free(m);
}
END_TEST

START_TEST(bad_listen_strings_are_refused_by_name) {
    static const struct {
        const char *listen, *why;
    } cases[] = {
        {"nohost", "expected HOST:PORT"},
        {"127.0.0.1:x", "port is not a number"},
        {"127.0.0.1:70000", "port out of range"},
        {"127.0.0.1:99999999999999999999", "port out of range"},
        {"127.0.0.1:", "missing port"},
        {"127.0.0.1:-1", "port is not a number"},
        {":9090", "missing host"},
        {"example.com:9090", "literal address"},
        {"256.1.1.1:9090", "literal address"},
        {"::1:9090", "brackets"},
        {"[::1]", "expected [HOST]:PORT"},
        {"[::1:9090", "missing ']'"},
        {"[127.0.0.1]:9090", "not an IPv6 address"},
        {"", "expected HOST:PORT"},
    };
    iqp_metrics *m = small_registry();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256] = "";
        iqp_metrics_server *s = iqp_metrics_serve(m, cases[i].listen, err, sizeof err);
        ck_assert_msg(s == NULL, "'%s' accepted", cases[i].listen);
        char *want = tu_fmt("cannot listen on %s: ", cases[i].listen);
        ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "'%s': err '%s'", cases[i].listen, err);
        ck_assert_msg(strstr(err, cases[i].why) != NULL, "'%s': err '%s'", cases[i].listen, err);
        free(want);
        /* the same strings are refused before anything binds (iqp stream: exit 2) */
        err[0] = 0;
        ck_assert_int_eq(iqp_metrics_check_listen(cases[i].listen, NULL, err, sizeof err), -1);
        ck_assert_msg(strstr(err, cases[i].why) != NULL, "check '%s': err '%s'", cases[i].listen, err);
    }
    /* a NULL or short error buffer is fine */
    ck_assert_ptr_null(iqp_metrics_serve(m, "nohost", NULL, 0));
    char tiny[8];
    ck_assert_ptr_null(iqp_metrics_serve(m, "nohost", tiny, sizeof tiny));
    ck_assert_str_eq(tiny, "cannot ");
    iqp_metrics_free(m);
}
END_TEST

/* Which listen addresses are loopback (served to this host only). */
START_TEST(listen_addresses_are_classified_loopback_or_not) {
    static const struct {
        const char *listen;
        int loopback;
    } cases[] = {
        {"127.0.0.1:9464", 1}, {"127.8.9.10:1", 1}, {"localhost:0", 1},  {"[::1]:9464", 1},
        {"0.0.0.0:9464", 0},   {"10.1.2.3:9464", 0}, {"[::]:9464", 0},   {"128.0.0.1:1", 0},
        {"[::ffff:10.0.0.1]:1", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256] = "";
        int loopback = -1;
        ck_assert_msg(iqp_metrics_check_listen(cases[i].listen, &loopback, err, sizeof err) == 0,
                      "'%s' refused: %s", cases[i].listen, err);
        ck_assert_msg(loopback == cases[i].loopback, "'%s': loopback %d, want %d", cases[i].listen,
                      loopback, cases[i].loopback);
    }
}
END_TEST

/* Health is every part's: the body names each failed part; a part that is
 * not renewed within its stale_ms turns unhealthy by itself. */
START_TEST(health_parts_combine_and_go_stale) {
    iqp_metrics *m = iqp_metrics_new();
    char why[256];
    ck_assert_int_eq(iqp_metrics_healthy(m, why, sizeof why), 1);
    ck_assert_str_eq(why, "ok");
    iqp_metrics_set_part(m, "kafka", 0, "no broker connected", 0);
    iqp_metrics_set_part(m, "redis", 0, "not connected", 0);
    ck_assert_int_eq(iqp_metrics_healthy(m, why, sizeof why), 0);
    ck_assert_str_eq(why, "kafka: no broker connected; redis: not connected");
    iqp_metrics_set_part(m, "kafka", 1, NULL, 0);
    ck_assert_int_eq(iqp_metrics_healthy(m, why, sizeof why), 0);
    ck_assert_str_eq(why, "redis: not connected");
    iqp_metrics_set_part(m, "redis", 1, "ignored when ok", 0);
    ck_assert_int_eq(iqp_metrics_healthy(m, why, sizeof why), 1);
    /* stale: ok now, unhealthy once 100 ms pass without a renewal */
    iqp_metrics_set_part(m, "loop", 1, NULL, 100);
    ck_assert_int_eq(iqp_metrics_healthy(m, NULL, 0), 1);
    int stale = 0;
    for (int waited = 0; waited < 5000 && !stale; waited += 20) {
        usleep(20000);
        stale = !iqp_metrics_healthy(m, why, sizeof why);
    }
    ck_assert_msg(stale, "a part not renewed for 5 s is still healthy");
    ck_assert_msg(strncmp(why, "loop: no update for ", 20) == 0, "%s", why);
    iqp_metrics_set_part(m, "loop", 1, NULL, 100);
    ck_assert_int_eq(iqp_metrics_healthy(m, NULL, 0), 1);
    iqp_metrics_free(m);
}
END_TEST

/* ---- slow clients ------------------------------------------------------------ */

/* The waits below are bounded by tu_wait_limit_ms (stretched for slow
 * binaries); they only guard against a hang. */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A connection to 127.0.0.1:port from the loopback address 127.0.0.src
 * (any 127.x address is this host's on Linux). */
static int connect_from(int src, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in from = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000000u | (unsigned)src)};
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_msg(bind(fd, (struct sockaddr *)&from, sizeof from) == 0, "bind 127.0.0.%d: %s", src,
                  strerror(errno));
    ck_assert_msg(connect(fd, (struct sockaddr *)&to, sizeof to) == 0, "connect: %s", strerror(errno));
    return fd;
}

/* Waits up to ms for the server to close fd (EOF or reset): 1 closed, 0 still open. */
static int closed_within(int fd, int ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, ms) <= 0) return 0;
    char c;
    return recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

/* Opens n slow clients from 127.0.0.src: every other one sends half a
 * request (headers never finished), the rest send nothing. */
static void open_slow_clients(int *fds, int n, int src, int port) {
    static const char half[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    for (int i = 0; i < n; i++) {
        fds[i] = connect_from(src, port);
        if (i % 2) ck_assert_int_eq(write(fds[i], half, sizeof half - 1), (ssize_t)(sizeof half - 1));
    }
}

/* GET /healthz answers 200 "ok" (asserted); returns how long it took. */
static double timed_healthz(int port) {
    double t0 = now_ms();
    http_reply r = http_get(port, "/healthz");
    double ms = now_ms() - t0;
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "ok\n");
    reply_free(&r);
    return ms;
}

/* The scenario: 256 idle clients (from the same address as the
 * health checker) hold connections; /healthz must still answer at once.
 * It used to be refused: the endpoint had 64 slots. */
START_TEST(healthz_answers_while_256_slow_clients_are_connected) {
    enum { SLOW = 256 };
    iqp_metrics *m = small_registry();
    char err[256] = "";
    iqp_metrics_server *s = iqp_metrics_serve(m, "127.0.0.1:0", err, sizeof err);
    ck_assert_msg(s != NULL, "serve: %s", err);
    int port = iqp_metrics_server_port(s), fds[SLOW];
    open_slow_clients(fds, SLOW, 1, port);
    double worst = 0;
    for (int i = 0; i < 20; i++) {
        double ms = timed_healthz(port);
        if (ms > worst) worst = ms;
    }
    http_reply r = http_get(port, "/metrics");
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "up_total 42\n"));
    reply_free(&r);
    /* the slow clients were served slots, not turned away: all still open */
    int open = 0;
    for (int i = 0; i < SLOW; i++) open += !closed_within(fds[i], 0);
    fprintf(stderr, "metrics: %d of %d slow clients connected; 20 /healthz, slowest %.1f ms\n", open,
            SLOW, worst);
    ck_assert_int_eq(open, SLOW);
    ck_assert_msg(worst < tu_wait_limit_ms(2000), "a /healthz took %.0f ms", worst);
    for (int i = 0; i < SLOW; i++) close(fds[i]);
    iqp_metrics_server_stop(s);
    iqp_metrics_free(m);
}
END_TEST

/* A connection that sends nothing, or never finishes its request, is
 * closed by the server after the idle timeout, freeing its slot. */
START_TEST(idle_connections_are_closed_after_the_timeout) {
    iqp_metrics *m = small_registry();
    iqp_metrics_server *s = iqp_metrics_serve(m, "127.0.0.1:0", NULL, 0);
    ck_assert_ptr_nonnull(s);
    int fds[4];
    open_slow_clients(fds, 4, 1, iqp_metrics_server_port(s));
    int bound = tu_wait_limit_ms((IQP_METRICS_IDLE_TIMEOUT_S + 5) * 1000);
    double t0 = now_ms();
    for (int i = 0; i < 4; i++) {
        int left = bound - (int)(now_ms() - t0);
        ck_assert_msg(closed_within(fds[i], left > 0 ? left : 0), "idle connection %d still open after %d ms",
                      i, bound);
        close(fds[i]);
    }
    fprintf(stderr, "metrics: 4 idle connections closed after %.1f s (timeout %d s)\n",
            (now_ms() - t0) / 1000, IQP_METRICS_IDLE_TIMEOUT_S);
    iqp_metrics_server_stop(s);
    iqp_metrics_free(m);
}
END_TEST

/* One address gets at most its share: the connection past the per-IP
 * limit is closed at once, while another address is still served. */
START_TEST(one_address_cannot_take_every_connection) {
    iqp_metrics *m = small_registry();
    iqp_metrics_server *s = iqp_metrics_serve(m, "127.0.0.1:0", NULL, 0);
    ck_assert_ptr_nonnull(s);
    unsigned total, per_ip;
    iqp_metrics_server_limits(s, &total, &per_ip);
    ck_assert_uint_ge(total, 16);
    ck_assert_uint_eq(per_ip, total / 2);
    int port = iqp_metrics_server_port(s), n = (int)per_ip;
    int *fds = calloc((size_t)n + 1, sizeof *fds);
    ck_assert_ptr_nonnull(fds);
    open_slow_clients(fds, n, 2, port);
    /* accepting is first come, first served: once a health check from
     * 127.0.0.1 made after them is answered, all n were accepted */
    timed_healthz(port);
    fds[n] = connect_from(2, port);
    ck_assert_msg(closed_within(fds[n], tu_wait_limit_ms(5000)),
                  "connection %d from 127.0.0.2 kept open (per-IP limit %u)", n + 1, per_ip);
    timed_healthz(port);
    int open = 0;
    for (int i = 0; i < n; i++) open += !closed_within(fds[i], 0);
    fprintf(stderr, "metrics: limits %u in all, %u per address; %d of them open from 127.0.0.2, "
                    "the next refused, 127.0.0.1 served\n", total, per_ip, open);
    ck_assert_int_eq(open, n);
    for (int i = 0; i <= n; i++) close(fds[i]);
    free(fds);
    iqp_metrics_server_stop(s);
    iqp_metrics_free(m);
}
END_TEST

START_TEST(a_port_in_use_is_refused_by_name) {
    iqp_metrics *m = small_registry();
    char err[256] = "";
    iqp_metrics_server *first = iqp_metrics_serve(m, "127.0.0.1:0", err, sizeof err);
    ck_assert_msg(first != NULL, "serve: %s", err);
    char *listen = tu_fmt("127.0.0.1:%d", iqp_metrics_server_port(first));
    ck_assert_ptr_null(iqp_metrics_serve(m, listen, err, sizeof err));
    char *want = tu_fmt("cannot listen on %s: ", listen);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "err '%s'", err);
    ck_assert_msg(strstr(err, "in use") != NULL, "err '%s'", err);
    /* the first server still answers */
    http_reply r = http_get(iqp_metrics_server_port(first), "/healthz");
    ck_assert_int_eq(r.status, 200);
    reply_free(&r);
    /* an address this machine does not have */
    ck_assert_ptr_null(iqp_metrics_serve(m, "192.0.2.1:0", err, sizeof err));
    ck_assert_msg(strncmp(err, "cannot listen on 192.0.2.1:0: ", 30) == 0, "err '%s'", err);
    free(want);
    free(listen);
    iqp_metrics_server_stop(first);
    iqp_metrics_free(m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("metrics");
    TCase *reg = tcase_create("registry");
    tcase_set_timeout(reg, 60);
    tcase_add_test(reg, render_counters_gauge_histogram);
    tcase_add_test(reg, numbers_render_without_needless_exponents);
    tcase_add_test(reg, help_text_is_escaped);
    tcase_add_test(reg, declare_rejects_bad_names_duplicates_and_bounds);
    tcase_add_test(reg, updates_to_undeclared_or_mistyped_families_are_ignored);
    tcase_add_test(reg, removed_series_are_not_rendered);
    tcase_add_test(reg, label_values_are_escaped_and_truncated_whole);
    tcase_add_test(reg, two_writer_threads_count_exactly);
    tcase_add_test(reg, health_parts_combine_and_go_stale);
    suite_add_tcase(s, reg);
    TCase *http = tcase_create("http");
    tcase_set_timeout(http, 60);
    tcase_add_test(http, http_serves_metrics_healthz_and_errors);
    tcase_add_test(http, http_serves_localhost_and_a_fixed_port);
    tcase_add_test(http, http_serves_ipv6_loopback);
    tcase_add_test(http, bad_listen_strings_are_refused_by_name);
    tcase_add_test(http, listen_addresses_are_classified_loopback_or_not);
    tcase_add_test(http, a_port_in_use_is_refused_by_name);
    suite_add_tcase(s, http);
    TCase *slow = tcase_create("slow_clients");
    tcase_set_timeout(slow, 60);
    tcase_add_test(slow, healthz_answers_while_256_slow_clients_are_connected);
    tcase_add_test(slow, idle_connections_are_closed_after_the_timeout);
    tcase_add_test(slow, one_address_cannot_take_every_connection);
    suite_add_tcase(s, slow);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

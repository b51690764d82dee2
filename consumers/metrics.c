/* metrics.c -- a Prometheus registry and the HTTP endpoint that serves it.
 *
 * Registry
 * --------
 * A registry is a uthash table of families keyed by name. uthash keeps
 * insertion order for iteration (nothing is ever deleted), so families
 * render in declaration order for free. Each family owns a second uthash
 * table of series keyed by the caller's label string ("" for none).
 *
 * A series holds either one double (counter, gauge) or a histogram: one
 * count per bucket (not cumulative; n_bounds + 1 slots, the last is +Inf),
 * the sum and the total count. Cumulative counts are computed at render.
 *
 * One pthread mutex guards the whole registry and the health state. An
 * update is two hash lookups and an add under that mutex; a render holds it
 * while it sorts each family's series by label string (so the text does
 * not depend on which thread created a series first) and prints them.
 *
 * Numbers print so that integers up to 2^53 have no exponent (1000000, not
 * 1e+06) and other values use the shortest of %.15g/%.16g/%.17g that reads
 * back exactly (0.1, not 0.10000000000000001).
 *
 * HTTP
 * ----
 * iqp_metrics_serve() parses "HOST:PORT" itself, creates, binds and
 * listens on the socket itself, and hands it to libmicrohttpd with
 * MHD_OPTION_LISTEN_SOCKET. Binding ourselves is what lets an error name
 * the real reason (errno: "Address already in use", "Cannot assign
 * requested address") instead of MHD's bare NULL. MHD then runs its own
 * polling thread; MHD_stop_daemon() closes the socket.
 *
 * Slow clients. A client that connects and sends nothing (or half a
 * request) holds a connection slot until the connection timeout. With 64
 * slots and select(), 64 such clients used to starve /healthz for
 * everyone. Now: MHD picks epoll on Linux (MHD_USE_AUTO), so an idle
 * connection costs one fd and no work; the limits are
 *   - IQP_METRICS_MAX_CONNECTIONS in all (fewer when the process's open
 *     file limit is low: at most a quarter of it, so slow clients can never
 *     take the fds the store and Kafka need),
 *   - half of that per client IP address (one host cannot take them all),
 *   - IQP_METRICS_IDLE_TIMEOUT_S without traffic closes a connection,
 * and the listen backlog is SOMAXCONN. A health check arriving while 256
 * idle clients are connected is served at once (tests/check_metrics).
 *
 * The handler renders on every GET /metrics (no caching: a scrape sees the
 * values of that instant) and answers /healthz from the health state.
 *
 * Allocation failure aborts: a metrics registry that cannot allocate has
 * no useful way to report it.
 */
#include "consumers/metrics.h"
#include "model/buf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define uthash_fatal(msg) abort()
#include <uthash.h>

/* ---------------------------------------------------------------------------
 * Small helpers: checked allocation (text is built in model/buf.h buffers).
 * ------------------------------------------------------------------------- */

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) abort();
    return p;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

/* ---------------------------------------------------------------------------
 * Registry data structures.
 * ------------------------------------------------------------------------- */

typedef struct series {
    char *labels;      /* hash key, owned */
    double value;      /* counter, gauge */
    double sum;        /* histogram */
    uint64_t count;    /* histogram: observations */
    uint64_t *buckets; /* histogram: n_bounds + 1 per-bucket counts */
    UT_hash_handle hh;
} series;

typedef struct family {
    char *name; /* hash key, owned */
    char *help;
    iqp_metric_type type;
    double *bounds;
    size_t n_bounds;
    series *series; /* uthash head */
    UT_hash_handle hh;
} family;

/* One part of the health /healthz reports (see metrics.h). */
typedef struct health_part {
    char name[IQP_HEALTH_NAME_MAX];
    int ok;
    char *reason;       /* NULL while ok */
    int64_t stale_ms;   /* > 0: unhealthy when not set again within this */
    int64_t set_at_ms;  /* monotonic */
} health_part;

struct iqp_metrics {
    pthread_mutex_t mu;
    family *families; /* uthash head; iteration = declaration order */
    health_part health[IQP_HEALTH_MAX_PARTS];
    size_t n_health;
};

iqp_metrics *iqp_metrics_new(void) {
    iqp_metrics *m = xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

static void series_free(series *s) {
    free(s->labels);
    free(s->buckets);
    free(s);
}

static void family_free(family *f) {
    series *s, *tmp;
    HASH_ITER(hh, f->series, s, tmp) {
        HASH_DEL(f->series, s);
        series_free(s);
    }
    free(f->name);
    free(f->help);
    free(f->bounds);
    free(f);
}

void iqp_metrics_free(iqp_metrics *m) {
    if (!m) return;
    family *f, *tmp;
    HASH_ITER(hh, m->families, f, tmp) {
        HASH_DEL(m->families, f);
        family_free(f);
    }
    for (size_t i = 0; i < m->n_health; i++) free(m->health[i].reason);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* ---------------------------------------------------------------------------
 * Declaring families.
 * ------------------------------------------------------------------------- */

static int valid_name(const char *name) {
    if (!name || !*name) return 0;
    for (const char *p = name; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        int digit = c >= '0' && c <= '9';
        if (!alpha && !(digit && p != name)) return 0;
    }
    return 1;
}

/* Bounds must be finite and strictly ascending; only histograms have any. */
static int valid_bounds(iqp_metric_type type, const double *bounds, size_t n) {
    if (n == 0) return 1;
    if (type != IQP_METRIC_HISTOGRAM || !bounds) return 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(bounds[i])) return 0;
        if (i > 0 && !(bounds[i] > bounds[i - 1])) return 0;
    }
    return 1;
}

static int valid_type(iqp_metric_type type) {
    return type == IQP_METRIC_COUNTER || type == IQP_METRIC_GAUGE || type == IQP_METRIC_HISTOGRAM;
}

static family *family_new(const char *name, iqp_metric_type type, const char *help,
                          const double *bounds, size_t n_bounds) {
    family *f = xcalloc(1, sizeof *f);
    f->name = xstrdup(name);
    f->help = xstrdup(help ? help : "");
    f->type = type;
    f->n_bounds = n_bounds;
    if (n_bounds) {
        f->bounds = xmalloc(n_bounds * sizeof *bounds);
        memcpy(f->bounds, bounds, n_bounds * sizeof *bounds);
    }
    return f;
}

int iqp_metrics_declare(iqp_metrics *m, const char *name, iqp_metric_type type, const char *help,
                        const double *bounds, size_t n_bounds) {
    if (!valid_name(name) || !valid_type(type) || !valid_bounds(type, bounds, n_bounds)) return -1;
    pthread_mutex_lock(&m->mu);
    family *f;
    HASH_FIND_STR(m->families, name, f);
    int rc = -1;
    if (!f) {
        f = family_new(name, type, help, bounds, n_bounds);
        HASH_ADD_KEYPTR(hh, m->families, f->name, strlen(f->name), f);
        rc = 0;
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Updates. Each takes the mutex, finds (or creates) the series, changes it.
 * ------------------------------------------------------------------------- */

/* The family called name when it has type type; NULL otherwise. */
static family *find_family(iqp_metrics *m, const char *name, iqp_metric_type type) {
    family *f = NULL;
    if (name) HASH_FIND_STR(m->families, name, f);
    return f && f->type == type ? f : NULL;
}

static series *find_series(family *f, const char *labels) {
    series *s;
    HASH_FIND_STR(f->series, labels ? labels : "", s);
    return s;
}

static series *get_series(family *f, const char *labels) {
    series *s = find_series(f, labels);
    if (s) return s;
    s = xcalloc(1, sizeof *s);
    s->labels = xstrdup(labels ? labels : "");
    if (f->type == IQP_METRIC_HISTOGRAM) s->buckets = xcalloc(f->n_bounds + 1, sizeof *s->buckets);
    HASH_ADD_KEYPTR(hh, f->series, s->labels, strlen(s->labels), s);
    return s;
}

void iqp_metrics_add(iqp_metrics *m, const char *name, const char *labels, double delta) {
    pthread_mutex_lock(&m->mu);
    family *f = find_family(m, name, IQP_METRIC_COUNTER);
    if (f && !(delta >= 0)) f = NULL; /* counters never go down (NaN too) */
    if (!f) f = find_family(m, name, IQP_METRIC_GAUGE);
    if (f) get_series(f, labels)->value += delta;
    pthread_mutex_unlock(&m->mu);
}

void iqp_metrics_set(iqp_metrics *m, const char *name, const char *labels, double value) {
    pthread_mutex_lock(&m->mu);
    family *f = find_family(m, name, IQP_METRIC_GAUGE);
    if (f) get_series(f, labels)->value = value;
    pthread_mutex_unlock(&m->mu);
}

void iqp_metrics_remove(iqp_metrics *m, const char *name, const char *labels) {
    pthread_mutex_lock(&m->mu);
    family *f = NULL;
    if (name) HASH_FIND_STR(m->families, name, f);
    series *s = f ? find_series(f, labels) : NULL;
    if (s) {
        HASH_DEL(f->series, s);
        series_free(s);
    }
    pthread_mutex_unlock(&m->mu);
}

/* Index of the first bucket whose bound is >= v; n_bounds means +Inf. */
static size_t bucket_of(const family *f, double v) {
    size_t i = 0;
    while (i < f->n_bounds && !(v <= f->bounds[i])) i++;
    return i;
}

void iqp_metrics_observe(iqp_metrics *m, const char *name, const char *labels, double value) {
    pthread_mutex_lock(&m->mu);
    family *f = find_family(m, name, IQP_METRIC_HISTOGRAM);
    if (f) {
        series *s = get_series(f, labels);
        s->buckets[bucket_of(f, value)]++;
        s->sum += value;
        s->count++;
    }
    pthread_mutex_unlock(&m->mu);
}

double iqp_metrics_value(iqp_metrics *m, const char *name, const char *labels) {
    double v = 0;
    pthread_mutex_lock(&m->mu);
    family *f = NULL;
    if (name) HASH_FIND_STR(m->families, name, f);
    series *s = f ? find_series(f, labels) : NULL;
    if (s) v = f->type == IQP_METRIC_HISTOGRAM ? (double)s->count : s->value;
    pthread_mutex_unlock(&m->mu);
    return v;
}

/* ---------------------------------------------------------------------------
 * Health: named parts, all of which must be ok. A part may go stale: its
 * owner must set it again within stale_ms, or it reads unhealthy (an owner
 * stuck in a blocking call cannot vouch for what it watches).
 * ------------------------------------------------------------------------- */

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void iqp_metrics_set_part(iqp_metrics *m, const char *part, int ok, const char *reason, int64_t stale_ms) {
    if (!part) part = "";
    pthread_mutex_lock(&m->mu);
    size_t i = 0;
    while (i < m->n_health && strncmp(m->health[i].name, part, IQP_HEALTH_NAME_MAX - 1) != 0) i++;
    if (i == m->n_health && i < IQP_HEALTH_MAX_PARTS) {
        snprintf(m->health[i].name, sizeof m->health[i].name, "%s", part);
        m->n_health++;
    }
    if (i < m->n_health) {
        health_part *h = &m->health[i];
        free(h->reason);
        h->ok = ok != 0;
        h->reason = ok ? NULL : xstrdup(reason && *reason ? reason : "unhealthy");
        h->stale_ms = stale_ms > 0 ? stale_ms : 0;
        h->set_at_ms = mono_ms();
    }
    pthread_mutex_unlock(&m->mu);
}

void iqp_metrics_set_health(iqp_metrics *m, int ok, const char *reason) {
    iqp_metrics_set_part(m, "", ok, reason, 0);
}

/* Appends one failed part ("name: reason", or the reason alone for the
 * unnamed part) to b, "; "-separated. Caller holds the mutex. */
static void sb_failed_part(iqp_buf *b, const health_part *h, int64_t now) {
    char stale[96];
    const char *why = h->reason;
    if (h->stale_ms && now - h->set_at_ms > h->stale_ms) {
        snprintf(stale, sizeof stale, "no update for %.1f s (its owner is blocked)",
                 (double)(now - h->set_at_ms) / 1000);
        why = stale;
    } else if (h->ok) {
        return;
    }
    if (b->len) iqp_buf_puts(b, "; ");
    if (h->name[0]) {
        iqp_buf_puts(b, h->name);
        iqp_buf_puts(b, ": ");
    }
    iqp_buf_puts(b, why);
}

int iqp_metrics_healthy(iqp_metrics *m, char *reason, size_t len) {
    iqp_buf b = {0};
    pthread_mutex_lock(&m->mu);
    int64_t now = mono_ms();
    for (size_t i = 0; i < m->n_health; i++) sb_failed_part(&b, &m->health[i], now);
    pthread_mutex_unlock(&m->mu);
    int ok = b.len == 0;
    if (reason && len) snprintf(reason, len, "%s", ok ? "ok" : iqp_buf_cstr(&b));
    iqp_buf_free(&b);
    return ok;
}

/* ---------------------------------------------------------------------------
 * Rendering (text exposition format 0.0.4).
 * ------------------------------------------------------------------------- */

/* Writes v the way Prometheus reads it back exactly; buf holds >= 32. */
static void format_number(char *buf, size_t len, double v) {
    if (isnan(v)) {
        snprintf(buf, len, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, len, v > 0 ? "+Inf" : "-Inf");
    } else if (v == 0) {
        snprintf(buf, len, "0"); /* also -0 */
    } else if (v == floor(v) && fabs(v) <= 9007199254740992.0) {
        snprintf(buf, len, "%.0f", v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, len, "%.*g", prec, v);
            if (strtod(buf, NULL) == v) break;
        }
    }
}

static void sb_number(iqp_buf *b, double v) {
    char num[40];
    format_number(num, sizeof num, v);
    iqp_buf_puts(b, num);
}

/* HELP text escapes backslash and newline. */
static void sb_help(iqp_buf *b, const family *f) {
    static const char *const types[] = {"counter", "gauge", "histogram"};
    iqp_buf_puts(b, "# HELP ");
    iqp_buf_puts(b, f->name);
    iqp_buf_putc(b, ' ');
    for (const char *p = f->help; *p; p++) {
        if (*p == '\\') iqp_buf_puts(b, "\\\\");
        else if (*p == '\n') iqp_buf_puts(b, "\\n");
        else iqp_buf_putc(b, *p);
    }
    iqp_buf_puts(b, "\n# TYPE ");
    iqp_buf_puts(b, f->name);
    iqp_buf_putc(b, ' ');
    iqp_buf_puts(b, types[f->type]);
    iqp_buf_putc(b, '\n');
}

/* name+suffix{labels[,le="bound"]} value\n; le NULL for no le label. */
static void sb_sample(iqp_buf *b, const char *name, const char *suffix, const char *labels,
                      const char *le, double value) {
    iqp_buf_puts(b, name);
    iqp_buf_puts(b, suffix);
    if (*labels || le) {
        iqp_buf_putc(b, '{');
        iqp_buf_puts(b, labels);
        if (le) {
            if (*labels) iqp_buf_putc(b, ',');
            iqp_buf_puts(b, "le=\"");
            iqp_buf_puts(b, le);
            iqp_buf_putc(b, '"');
        }
        iqp_buf_putc(b, '}');
    }
    iqp_buf_putc(b, ' ');
    sb_number(b, value);
    iqp_buf_putc(b, '\n');
}

static void sb_histogram(iqp_buf *b, const family *f, const series *s) {
    char le[40];
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= f->n_bounds; i++) {
        cumulative += s->buckets[i];
        if (i < f->n_bounds) format_number(le, sizeof le, f->bounds[i]);
        else snprintf(le, sizeof le, "+Inf");
        sb_sample(b, f->name, "_bucket", s->labels, le, (double)cumulative);
    }
    sb_sample(b, f->name, "_sum", s->labels, NULL, s->sum);
    sb_sample(b, f->name, "_count", s->labels, NULL, (double)s->count);
}

static int by_labels(const series *a, const series *b) { return strcmp(a->labels, b->labels); }

static void sb_family(iqp_buf *b, family *f) {
    sb_help(b, f);
    HASH_SRT(hh, f->series, by_labels);
    for (series *s = f->series; s; s = s->hh.next) {
        if (f->type == IQP_METRIC_HISTOGRAM) sb_histogram(b, f, s);
        else sb_sample(b, f->name, "", s->labels, NULL, s->value);
    }
}

char *iqp_metrics_render(iqp_metrics *m) {
    iqp_buf b = {0};
    pthread_mutex_lock(&m->mu);
    for (family *f = m->families; f; f = f->hh.next) sb_family(&b, f);
    pthread_mutex_unlock(&m->mu);
    return iqp_buf_cstr(&b);
}

/* ---------------------------------------------------------------------------
 * Label values.
 * ------------------------------------------------------------------------- */

/* Bytes of the UTF-8 sequence that starts at p (1 for stray bytes), so a
 * truncation never splits a character. */
static size_t utf8_len(const unsigned char *p) {
    size_t want = *p >= 0xF0 ? 4 : *p >= 0xE0 ? 3 : *p >= 0xC0 ? 2 : 1;
    size_t n = 1;
    while (n < want && (p[n] & 0xC0) == 0x80) n++;
    return n;
}

void iqp_metrics_label_value(const char *in, char *out, size_t outlen) {
    if (outlen == 0) return;
    size_t used = 0;
    const unsigned char *p = (const unsigned char *)(in ? in : "");
    while (*p) {
        char esc[2] = {'\\', 0};
        if (*p == '\\') esc[1] = '\\';
        else if (*p == '"') esc[1] = '"';
        else if (*p == '\n') esc[1] = 'n';
        size_t n = esc[1] ? 2 : utf8_len(p);
        if (used + n > outlen - 1) break;
        memcpy(out + used, esc[1] ? esc : (const char *)p, n);
        used += n;
        p += esc[1] ? 1 : n;
    }
    out[used] = '\0';
}

/* ---------------------------------------------------------------------------
 * HTTP server.
 * ------------------------------------------------------------------------- */

#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result mhd_result;
#else
typedef int mhd_result;
#endif

#ifndef MHD_USE_INTERNAL_POLLING_THREAD
#define MHD_USE_INTERNAL_POLLING_THREAD MHD_USE_SELECT_INTERNALLY
#endif

struct iqp_metrics_server {
    iqp_metrics *m;
    struct MHD_Daemon *daemon;
    int port;
    unsigned max_connections, max_per_ip;
};

/* Queues status with body (malloc'd; MHD frees it) and a content type. */
static mhd_result reply(struct MHD_Connection *c, unsigned status, char *body, const char *type) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, "Allow", "GET, HEAD");
    mhd_result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* "ok\n" or the reasons and "\n"; *status set to 200 or 503. */
static char *health_body(iqp_metrics *m, unsigned *status) {
    char reason[2048];
    int ok = iqp_metrics_healthy(m, reason, sizeof reason);
    char *body = xmalloc(strlen(reason) + 2);
    sprintf(body, "%s\n", reason);
    *status = ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
    return body;
}

static mhd_result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                         const char *version, const char *upload_data, size_t *upload_data_size,
                         void **con_cls) {
    (void)version, (void)upload_data, (void)upload_data_size, (void)con_cls;
    iqp_metrics_server *s = cls;
    static const char text[] = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, xstrdup("method not allowed\n"), text);
    if (strcmp(url, "/metrics") == 0)
        return reply(c, MHD_HTTP_OK, iqp_metrics_render(s->m), "text/plain; version=0.0.4");
    if (strcmp(url, "/healthz") == 0) {
        unsigned status;
        char *body = health_body(s->m, &status);
        return reply(c, status, body, text);
    }
    return reply(c, MHD_HTTP_NOT_FOUND, xstrdup("not found\n"), text);
}

/* Reads PORT (decimal, 0..65535) into *port; NULL or the reason. */
static const char *parse_port(const char *p, int *port) {
    if (!*p) return "missing port";
    long v = 0;
    for (const char *q = p; *q; q++) {
        if (*q < '0' || *q > '9') return "port is not a number";
        if (v <= 65535) v = v * 10 + (*q - '0');
    }
    if (v > 65535) return "port out of range";
    *port = (int)v;
    return NULL;
}

/* Reads the literal host (brackets already removed) into sa; NULL or the
 * reason. */
static const char *parse_host(const char *host, int v6, struct sockaddr_storage *sa) {
    struct sockaddr_in *a4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)sa;
    if (v6) {
        a6->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) return NULL;
        return "not an IPv6 address";
    }
    if (strchr(host, ':')) return "an IPv6 address must be in brackets, e.g. [::1]:9090";
    if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
    a4->sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) return NULL;
    return "host must be a literal address (127.0.0.1, [::1]) or localhost";
}

/* Splits listen into host and port and fills sa; NULL or the reason. */
static const char *parse_listen(const char *listen, struct sockaddr_storage *sa) {
    char host[256];
    const char *colon;
    int v6 = listen[0] == '[';
    if (v6) {
        const char *close = strchr(listen, ']');
        if (!close) return "missing ']'";
        if (close[1] != ':') return "expected [HOST]:PORT";
        colon = close + 1;
    } else if (!(colon = strrchr(listen, ':'))) {
        return "expected HOST:PORT";
    }
    size_t hlen = (size_t)(colon - listen) - (v6 ? 2 : 0);
    if (hlen == 0) return "missing host";
    if (hlen >= sizeof host) return "host too long";
    memcpy(host, listen + v6, hlen);
    host[hlen] = '\0';
    int port = 0;
    const char *why = parse_port(colon + 1, &port);
    if (!why) why = parse_host(host, v6, sa);
    if (why) return why;
    if (v6) ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
    else ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
    return NULL;
}

static int is_loopback(const struct sockaddr_storage *sa) {
    if (sa->ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
}

int iqp_metrics_check_listen(const char *listen, int *loopback, char *err, size_t errlen) {
    struct sockaddr_storage sa;
    memset(&sa, 0, sizeof sa);
    const char *why = parse_listen(listen ? listen : "", &sa);
    if (why) {
        if (err && errlen) snprintf(err, errlen, "bad metrics address '%s': %s", listen ? listen : "", why);
        return -1;
    }
    if (loopback) *loopback = is_loopback(&sa);
    return 0;
}

/* A listening TCP socket on sa, or -1 with errno set. */
static int listen_on(const struct sockaddr_storage *sa) {
    int v6 = sa->ss_family == AF_INET6, one = 1;
    socklen_t len = v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (v6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) ||
        bind(fd, (const struct sockaddr *)sa, len) != 0 || listen(fd, SOMAXCONN) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* The port fd is bound to, asked of MHD first, of the kernel otherwise. */
static int bound_port(struct MHD_Daemon *d, int fd) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    if (info && info->port) return info->port;
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0) return -1;
    if (sa.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
    return ntohs(((struct sockaddr_in *)&sa)->sin_port);
}

static iqp_metrics_server *fail(char *err, size_t errlen, const char *listen, const char *why) {
    if (err && errlen) snprintf(err, errlen, "cannot listen on %s: %s", listen, why);
    return NULL;
}

/* The connection limit: IQP_METRICS_MAX_CONNECTIONS, or a quarter of the
 * open file limit when that is smaller (at least 16). */
static unsigned connection_limit(void) {
    struct rlimit rl;
    rlim_t limit = IQP_METRICS_MAX_CONNECTIONS;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur / 4 < limit)
        limit = rl.rlim_cur / 4;
    return limit < 16 ? 16 : (unsigned)limit;
}

iqp_metrics_server *iqp_metrics_serve(iqp_metrics *m, const char *listen, char *err, size_t errlen) {
    struct sockaddr_storage sa;
    memset(&sa, 0, sizeof sa);
    if (!listen) listen = "";
    const char *why = parse_listen(listen, &sa);
    if (why) return fail(err, errlen, listen, why);
    int fd = listen_on(&sa);
    if (fd < 0) return fail(err, errlen, listen, strerror(errno));
    iqp_metrics_server *s = xcalloc(1, sizeof *s);
    s->m = m;
    s->max_connections = connection_limit();
    s->max_per_ip = s->max_connections / 2;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | (sa.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    s->daemon = MHD_start_daemon(flags, 0, NULL, NULL, handle, s, MHD_OPTION_LISTEN_SOCKET, fd,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IQP_METRICS_IDLE_TIMEOUT_S,
                                 MHD_OPTION_CONNECTION_LIMIT, s->max_connections,
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT, s->max_per_ip, MHD_OPTION_END);
    if (!s->daemon) {
        close(fd);
        free(s);
        return fail(err, errlen, listen, "libmicrohttpd did not start");
    }
    s->port = bound_port(s->daemon, fd);
    return s;
}

int iqp_metrics_server_port(const iqp_metrics_server *s) { return s ? s->port : -1; }

void iqp_metrics_server_limits(const iqp_metrics_server *s, unsigned *total, unsigned *per_ip) {
    *total = s->max_connections;
    *per_ip = s->max_per_ip;
}

void iqp_metrics_server_stop(iqp_metrics_server *s) {
    if (!s) return;
    MHD_stop_daemon(s->daemon);
    free(s);
}

/* metrics.h -- Prometheus metrics of a long-running process, and the
 * loopback HTTP endpoint (libmicrohttpd) that serves them.
 *
 * Owns: a registry of named metric families (counter, gauge, histogram),
 * each with a help text and, for histograms, fixed bucket bounds; the
 * series of each family, keyed by a label string; rendering the registry
 * in the Prometheus text exposition format (version 0.0.4); the health
 * state (named parts, see iqp_metrics_set_part); an HTTP server answering
 * GET /metrics (that text) and GET /healthz (200 "ok\n" while healthy,
 * 503 with the reasons otherwise; anything else 404).
 *
 * May not touch: what is measured (callers update the values), Kafka, the
 * store. Updates and renders may come from different threads: every call
 * is thread-safe (one mutex; updates are a hash lookup and an add).
 *
 * Label strings are passed already formatted, without braces, e.g.
 *   topic="impressions",outcome="counted"
 * and "" for a series without labels. Callers quote values with
 * iqp_metrics_label_value() when they come from outside (topic names).
 */
#ifndef IQP_METRICS_H
#define IQP_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { IQP_METRIC_COUNTER, IQP_METRIC_GAUGE, IQP_METRIC_HISTOGRAM } iqp_metric_type;

typedef struct iqp_metrics iqp_metrics;

iqp_metrics *iqp_metrics_new(void);
void iqp_metrics_free(iqp_metrics *m);

/* Declares a family; name must match [a-zA-Z_:][a-zA-Z0-9_:]*. For a
 * histogram, bounds[0..n_bounds) are the finite, strictly ascending upper
 * bounds (le, inclusive) of its buckets; +Inf is implicit and n_bounds may
 * be 0. Other types take no bounds (NULL, 0). help may be NULL. Returns 0,
 * or -1 for a bad name, a name declared twice (whatever the type), or bad
 * bounds. Families render in declaration order. */
int iqp_metrics_declare(iqp_metrics *m, const char *name, iqp_metric_type type, const char *help,
                        const double *bounds, size_t n_bounds);

/* Updates one series (created on first use; labels NULL is ""). Calls
 * naming an undeclared family, or one of another type, are ignored (a
 * programming error that must not take a stream processor down):
 *   add      counters (delta >= 0; a negative or NaN delta is ignored) and
 *            gauges (any delta). add(..., 0) creates a series at 0, so it
 *            is scraped before its first event;
 *   set      gauges only;
 *   observe  histograms only. */
void iqp_metrics_add(iqp_metrics *m, const char *name, const char *labels, double delta);
void iqp_metrics_set(iqp_metrics *m, const char *name, const char *labels, double value);
void iqp_metrics_observe(iqp_metrics *m, const char *name, const char *labels, double value);

/* Removes one series of any family (a gauge of something that went away,
 * such as a released partition), so it is no longer rendered; a series or
 * family that does not exist is ignored. */
void iqp_metrics_remove(iqp_metrics *m, const char *name, const char *labels);

/* Current value of a counter or gauge series (0 when it does not exist);
 * for a histogram, its observation count. For tests and summaries. */
double iqp_metrics_value(iqp_metrics *m, const char *name, const char *labels);

/* Writes the registry in the Prometheus text format into a malloc'd,
 * NUL-terminated string (the caller frees it). Within a family, series are
 * sorted by label string; a family without series prints only its HELP and
 * TYPE lines. Integral values up to 2^53 print without exponent. */
char *iqp_metrics_render(iqp_metrics *m);

/* Health shown by /healthz is made of named parts (e.g. "kafka", "redis",
 * "stream"), each ok or not with a reason; healthy when every part is ok.
 * A new registry has no parts: healthy.
 *
 * set_part: sets (or adds, up to IQP_HEALTH_MAX_PARTS) part: ok = 1
 * healthy, 0 unhealthy with reason (copied; NULL or "" reads "unhealthy").
 * stale_ms > 0 makes the part unhealthy ("no update for N s") when it is
 * not set again within stale_ms: a part whose owner stops reporting (a
 * loop stuck in a blocking call) does not stay green.
 * set_health: the unnamed part, never stale.
 * healthy: 1 when every part is ok (reason "ok"), else 0 with the failed
 * parts in reason as "name: reason; name: reason" (the /healthz body). */
#define IQP_HEALTH_MAX_PARTS 8
#define IQP_HEALTH_NAME_MAX 32
void iqp_metrics_set_part(iqp_metrics *m, const char *part, int ok, const char *reason, int64_t stale_ms);
void iqp_metrics_set_health(iqp_metrics *m, int ok, const char *reason);
int iqp_metrics_healthy(iqp_metrics *m, char *reason, size_t len);

/* Escapes a label value for use inside double quotes (\\, \", \n):
 * writes at most outlen bytes including the NUL, truncating. */
void iqp_metrics_label_value(const char *in, char *out, size_t outlen);

typedef struct iqp_metrics_server iqp_metrics_server;

/* Connection limits of the endpoint (see metrics.c, "Slow clients"): at
 * most this many connections (fewer when the open file limit is low), half
 * of them per client IP; a connection idle this long is closed. */
#define IQP_METRICS_MAX_CONNECTIONS 1024
#define IQP_METRICS_IDLE_TIMEOUT_S 5

/* Serves m on listen = "HOST:PORT" where HOST is 127.0.0.1, localhost,
 * [::1] or another literal address (IPv6 in brackets), and PORT may be 0
 * (the kernel picks; see iqp_metrics_server_port). GET or HEAD /metrics
 * and /healthz; other paths 404, other methods 405. Returns NULL with a
 * message in err (may be NULL) naming the address when it cannot be parsed
 * or bound, e.g. "cannot listen on 127.0.0.1:9090: Address already in
 * use". m must outlive the server. */
iqp_metrics_server *iqp_metrics_serve(iqp_metrics *m, const char *listen, char *err, size_t errlen);

/* Checks a listen string without binding anything: 0 when iqp_metrics_serve
 * could parse it, with *loopback (may be NULL) set to 1 for a loopback
 * address (127.0.0.0/8, ::1, localhost) and 0 for any other (0.0.0.0, a
 * LAN address: the endpoint is reachable from other hosts); -1 with the
 * reason in err, e.g. "bad metrics address 'x:1': host must be ...". */
int iqp_metrics_check_listen(const char *listen, int *loopback, char *err, size_t errlen);

/* The TCP port actually bound. */
int iqp_metrics_server_port(const iqp_metrics_server *s);

/* The connection limits in force: all connections, and per client IP. */
void iqp_metrics_server_limits(const iqp_metrics_server *s, unsigned *total, unsigned *per_ip);

/* Stops serving and frees s (NULL is fine). */
void iqp_metrics_server_stop(iqp_metrics_server *s);

#endif

/* iqp.h -- libiqp: IQP features for a ranker, read from Redis.
 *
 * A ranker scores, per search request, one query in one user context
 * (country, gender, or whatever segments the pipeline's config declares)
 * against a few hundred to a few thousand candidate items.
 * iqp_client_lookup_ctx() answers that in one pipelined round trip to
 * the Redis that `iqp stream` publishes to, filling a caller-owned array of
 * doubles:
 *
 *   out[((item * n_features + feature) * n_windows + window) * n_measures + measure]
 *
 * Features, windows and measures are the pipeline's configuration, read
 * from Redis when the client opens (iqp_client_feature_name() and friends
 * name them). Measures, in this order:
 *   context_count, impression, engaged, <each action>,
 *   iqp_impression, iqp_engaged, iqp_<each action>       (count / context_count)
 * Counts are exact integers (as doubles); rates are computed here exactly
 * as `iqp lookup` computes them. An item nobody published reads as zeros
 * with the real context_count. A feature whose context needs a segment
 * the call did not give reads as NaN.
 *
 * The query is normalized exactly like the pipeline normalizes events
 * (Unicode NFKC, case fold, white space collapsed), so raw user input may
 * be passed as is; every segment value likewise, by the normalizer the
 * published layout declares for it (country: ISO code else ZZ; an enum
 * such as device: one of its values else its fallback; ...).
 *
 * Threads: a client is one Redis connection and must be used by one
 * thread at a time; open one client per thread.
 *
 * Errors: every call returns an iqp_status; iqp_client_errstr() tells what
 * happened in words. Arguments are checked before anything is sent, and a
 * call that fails after sending drops the connection; the next call
 * reconnects by itself. Replies are bounded by what the request can
 * legitimately get back (n_items + 1 values of at most one encoded value
 * each per feature; 1 MiB for the layout): a server or proxy that answers
 * more fails the call with IQP_EPROTOCOL before it is buffered.
 */
#ifndef IQP_CLIENT_H
#define IQP_CLIENT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum iqp_status {
    IQP_OK = 0,
    IQP_EINVAL = 1,    /* a bad argument: NULL, a query that is not UTF-8 or empty, out too small */
    IQP_ECONNECT = 2,  /* Redis cannot be reached or the connection broke */
    IQP_ETIMEOUT = 3,  /* Redis did not answer within the timeout */
    IQP_EPROTOCOL = 4, /* Redis answered something that is not iqp's layout, or more than the call can need */
    IQP_ELAYOUT = 5,   /* a layout version this libiqp does not know, or the layout changed */
    IQP_NO_GENERATION = 6, /* no features published: no live generation under this prefix (never
                              published, or its TTL ran out: the pointer and its generation expire
                              together) */
    IQP_ENODATA = IQP_NO_GENERATION, /* the former name */
    IQP_ENOMEM = 7,
} iqp_status;

typedef struct iqp_client_options {
    int connect_timeout_ms; /* default 1000 */
    int timeout_ms;         /* bound on each wait for Redis during a call; default 100 */
    const char *prefix;     /* key prefix the publisher uses; default "iqp" */
} iqp_client_options;

typedef struct iqp_client iqp_client;

/* Fills o with the defaults. */
void iqp_client_options_init(iqp_client_options *o);

/* Connects to url (redis://[[user]:password@]host[:port][/db] or
 * unix:///path[?db=N], or redis-cluster://host:port[,host:port...] for a
 * Redis Cluster) and reads the published layout. options may be NULL
 * (defaults). Returns NULL only when out of memory; otherwise check
 * iqp_client_status(): on failure the client only reports its error and
 * must be closed. */
iqp_client *iqp_client_open(const char *url, const iqp_client_options *options);
void iqp_client_close(iqp_client *c);

/* The status and message of the last call (open included). */
iqp_status iqp_client_status(const iqp_client *c);
const char *iqp_client_errstr(const iqp_client *c);
const char *iqp_status_name(iqp_status s);

/* The layout being served. */
size_t iqp_client_n_features(const iqp_client *c);
size_t iqp_client_n_windows(const iqp_client *c);
size_t iqp_client_n_measures(const iqp_client *c);
const char *iqp_client_feature_name(const iqp_client *c, size_t f);
const char *iqp_client_window_name(const iqp_client *c, size_t w);
const char *iqp_client_measure_name(const iqp_client *c, size_t m);
/* Doubles needed for n_items items. */
size_t iqp_client_result_len(const iqp_client *c, size_t n_items);

/* A user context: segment values by segment name, e.g.
 *   iqp_ctx *ctx = iqp_ctx_new();
 *   iqp_ctx_set(ctx, "country", "DE");
 *   iqp_ctx_set(ctx, "device", "ios");
 * Names and values are copied; setting a name again replaces its value,
 * a NULL value removes it. At most 16 names. A context may be reused for
 * any number of calls (and clients); it is not thread-safe by itself. */
typedef struct iqp_ctx iqp_ctx;

iqp_ctx *iqp_ctx_new(void);   /* NULL when out of memory */
/* IQP_OK; IQP_EINVAL for a NULL ctx or an empty name, or a 17th name;
 * IQP_ENOMEM. Names are checked against the layout at lookup time. */
iqp_status iqp_ctx_set(iqp_ctx *ctx, const char *name, const char *value);
void iqp_ctx_clear(iqp_ctx *ctx); /* removes every name */
void iqp_ctx_free(iqp_ctx *ctx);

/* Looks up every feature for one query and user context and n_items items
 * (non-empty strings) into out (out_len >= iqp_client_result_len()).
 * query and ctx may be NULL (features needing a segment not given read
 * NaN); query is the value of the query-text segment. A name in ctx that
 * the published layout has no segment of fails the call with IQP_EINVAL
 * (nothing sent). One pipelined round trip once the client knows the
 * served generation (iqp_client_open reads the pointer and the meta: 2
 * round trips); a call that finds the publisher switched generations
 * takes 3 more (pointer, meta, the pipeline again). */
iqp_status iqp_client_lookup_ctx(iqp_client *c, const char *query, const iqp_ctx *ctx,
                                 const char *const *items, size_t n_items, double *out,
                                 size_t out_len);

/* The positional form, kept for existing callers: country and
 * gender (either may be NULL) are the values of the segments named
 * "country" and "gender"; the same as iqp_client_lookup_ctx with those
 * two names set. */
iqp_status iqp_client_lookup(iqp_client *c, const char *query, const char *country,
                             const char *gender, const char *const *items, size_t n_items,
                             double *out, size_t out_len);

#ifdef __cplusplus
}
#endif

#endif

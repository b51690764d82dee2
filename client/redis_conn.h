/* redis_conn.h -- Redis addresses as URLs, and connecting to them.
 *
 * Owns: parsing `redis://[[user]:password@]host[:port][/db]` (host may be
 * a bracketed IPv6 literal) and `unix:///path[?db=N]`, and opening a
 * hiredis connection with a connect timeout, a command timeout, AUTH and
 * SELECT. Shared by the publisher (iqp stream) and libiqp.
 *
 * May not touch: what is stored in Redis (schemas/redis_value.h).
 */
#ifndef IQP_REDIS_CONN_H
#define IQP_REDIS_CONN_H

#include <hiredis/hiredis.h>
#include <stddef.h>

typedef struct iqp_redis_url {
    int is_unix;
    char host[256];     /* TCP host, or the socket path when is_unix */
    int port;           /* default 6379 */
    int db;             /* default 0 */
    char user[128];     /* empty: AUTH with the password only */
    char password[256]; /* empty: no AUTH */
} iqp_redis_url;

/* 0, or -1 with a message naming what is wrong with the URL. */
int iqp_redis_url_parse(const char *url, iqp_redis_url *out, char *err, size_t errlen);

/* The URL without its password, for messages ("redis://127.0.0.1:6379/0"). */
void iqp_redis_url_describe(const iqp_redis_url *u, char *out, size_t cap);

/* Connects, authenticates and selects the db; NULL with err on failure.
 * Timeouts in ms; command_timeout_ms bounds every reply wait. */
redisContext *iqp_redis_connect(const iqp_redis_url *u, int connect_timeout_ms,
                                int command_timeout_ms, char *err, size_t errlen);

#endif

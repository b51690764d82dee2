/* redis_cluster.c -- one pipeline API over a Redis server or a Redis
 * Cluster (see redis_cluster.h).
 *
 * A cluster connection keeps:
 *   - nodes[]: every node it has heard of (seeds, CLUSTER SLOTS masters,
 *     MOVED / ASK targets), each with a hiredis connection opened on
 *     first use;
 *   - slot_node[16384]: the master of each slot, from CLUSTER SLOTS;
 *   - q[]: the commands appended and not yet read, each kept formatted
 *     (so that a redirected one can be sent again) with its node;
 *   - ready[]: replies read and not yet handed out.
 * The first get_reply after appends writes every node's buffer, reads
 * every queued reply in order (each node answers its own commands in
 * order), and only then follows MOVED / ASK / TRYAGAIN one command at a
 * time on connections that have nothing else pending.
 */
#include "client/redis_cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MAX_REDIRECTS 16
#define TRYAGAIN_WAIT_US 20000

typedef struct node {
    char host[256];
    int port;
    redisContext *ctx;
} node;

typedef struct queued {
    char *cmd;    /* formatted (RESP) command, malloc'd */
    size_t len;
    int node;
    unsigned slot;
} queued;

struct iqp_rconn {
    redisContext *single;      /* redis:// or unix://: everything goes here */
    iqp_reply_limits *limits;  /* NULL: replies unbounded */
    iqp_redis_url url;
    int connect_timeout_ms, command_timeout_ms;
    node *nodes;
    size_t n_nodes;
    int16_t slot_node[IQP_CLUSTER_SLOTS]; /* -1: no master known */
    queued *q;
    size_t n_q, cap_q;
    redisReply **ready;
    size_t ready_pos, n_ready, cap_ready;
    int err;
    char errstr[256];
};

/* ---- hash slots -------------------------------------------------------------------- */

/* CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), Redis Cluster's key hash. */
static uint16_t crc16(const char *buf, size_t len) {
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++) crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned iqp_cluster_slot(const char *key, size_t len) {
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1) return crc16(open + 1, (size_t)(close - open - 1)) & (IQP_CLUSTER_SLOTS - 1);
    }
    return crc16(key, len) & (IQP_CLUSTER_SLOTS - 1);
}

/* ---- errors and nodes ---------------------------------------------------------------- */

static int set_err(iqp_rconn *rc, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int set_err(iqp_rconn *rc, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rc->errstr, sizeof rc->errstr, fmt, ap);
    va_end(ap);
    rc->err = code ? code : REDIS_ERR_OTHER;
    return REDIS_ERR;
}

/* The error of a node's connection, with the node named. */
static int node_failed(iqp_rconn *rc, const node *n) {
    return set_err(rc, n->ctx ? n->ctx->err : REDIS_ERR_IO, "%s (cluster node %s:%d)",
                   n->ctx ? n->ctx->errstr : "not connected", n->host, n->port);
}

static int find_node(iqp_rconn *rc, const char *host, int port) {
    for (size_t i = 0; i < rc->n_nodes; i++)
        if (rc->nodes[i].port == port && strcmp(rc->nodes[i].host, host) == 0) return (int)i;
    if (rc->n_nodes >= INT16_MAX) return -1;
    node *grown = realloc(rc->nodes, (rc->n_nodes + 1) * sizeof *grown);
    if (!grown) abort();
    rc->nodes = grown;
    node *n = &rc->nodes[rc->n_nodes];
    memset(n, 0, sizeof *n);
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    return (int)rc->n_nodes++;
}

/* Node i's connection, opened when needed; NULL with rc's error. */
static redisContext *node_ctx(iqp_rconn *rc, int i) {
    node *n = &rc->nodes[i];
    if (n->ctx) return n->ctx;
    iqp_redis_url u = rc->url;
    u.is_cluster = 0;
    u.db = 0;
    snprintf(u.host, sizeof u.host, "%s", n->host);
    u.port = n->port;
    char err[512];
    n->ctx = iqp_redis_connect(&u, rc->connect_timeout_ms, rc->command_timeout_ms, err, sizeof err);
    if (!n->ctx) {
        set_err(rc, REDIS_ERR_IO, "%s", err);
        return NULL;
    }
    if (rc->limits) { /* limit_replies resets the counts of a read in progress */
        iqp_reply_limits saved = *rc->limits;
        iqp_redis_limit_replies(n->ctx, rc->limits);
        *rc->limits = saved;
    }
    return n->ctx;
}

static void close_nodes(iqp_rconn *rc) {
    for (size_t i = 0; i < rc->n_nodes; i++) {
        if (rc->nodes[i].ctx) redisFree(rc->nodes[i].ctx);
        rc->nodes[i].ctx = NULL;
    }
}

/* ---- the slot map ------------------------------------------------------------------ */

/* Fills slot_node from one CLUSTER SLOTS reply got from node `from`. */
static int adopt_slots(iqp_rconn *rc, const redisReply *r, int from) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) return -1;
    for (size_t s = 0; s < IQP_CLUSTER_SLOTS; s++) rc->slot_node[s] = -1;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2 || e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
            return -1;
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        if (lo < 0 || hi >= IQP_CLUSTER_SLOTS || lo > hi) return -1;
        char host[256]; /* copied: find_node may move nodes[] */
        const char *h = e->element[2]->element[0]->str;
        /* an empty (or "?") host means "the node you asked" */
        snprintf(host, sizeof host, "%s", h[0] && strcmp(h, "?") != 0 ? h : rc->nodes[from].host);
        int n = find_node(rc, host, (int)e->element[2]->element[1]->integer);
        if (n < 0) return -1;
        for (long long s = lo; s <= hi; s++) rc->slot_node[s] = (int16_t)n;
    }
    return 0;
}

/* Asks the known nodes, then the seeds, for the slot map. No command may
 * be pending on any connection. */
static int load_slots(iqp_rconn *rc) {
    for (int s = 0; s < rc->url.n_seeds; s++) find_node(rc, rc->url.seeds[s].host, rc->url.seeds[s].port);
    char why[700] = "no node answered";
    for (size_t i = 0; i < rc->n_nodes; i++) {
        redisContext *c = node_ctx(rc, (int)i);
        if (!c) {
            snprintf(why, sizeof why, "%s", rc->errstr);
            continue;
        }
        redisReply *r = redisCommand(c, "CLUSTER SLOTS");
        int ok = r && adopt_slots(rc, r, (int)i) == 0;
        if (!ok)
            snprintf(why, sizeof why, "%s:%d: %s", rc->nodes[i].host, rc->nodes[i].port,
                     !r ? c->errstr : r->type == REDIS_REPLY_ERROR ? r->str : "no slots in CLUSTER SLOTS");
        if (r) freeReplyObject(r);
        if (ok) return REDIS_OK;
        if (!r) {
            redisFree(c);
            rc->nodes[i].ctx = NULL;
        }
    }
    return set_err(rc, REDIS_ERR_OTHER, "cannot read the Redis Cluster slot map (%s)", why);
}

/* ---- routing ------------------------------------------------------------------------- */

/* Argument i of a formatted command (RESP array of bulk strings). */
static int resp_arg(const char *cmd, size_t len, int want, const char **arg, size_t *arglen) {
    const char *p = cmd, *end = cmd + len;
    if (p >= end || *p != '*') return -1;
    long n = strtol(p + 1, NULL, 10);
    if (want >= n || !(p = memchr(p, '\n', (size_t)(end - p)))) return -1;
    for (int i = 0; ++p < end && *p == '$'; i++) {
        long l = strtol(p + 1, NULL, 10);
        if (l < 0 || !(p = memchr(p, '\n', (size_t)(end - p))) || (size_t)(end - p - 1) < (size_t)l + 2) return -1;
        if (i == want) {
            *arg = p + 1;
            *arglen = (size_t)l;
            return 0;
        }
        p += (size_t)l + 2;
    }
    return -1;
}

static int arg_is(const char *a, size_t n, const char *word) {
    return n == strlen(word) && strncasecmp(a, word, n) == 0;
}

/* The routing key of a command: argument 1, or EVAL's first key; none
 * for commands that name no key. 0 with *key, or -1. */
static int command_key(const char *cmd, size_t len, const char **key, size_t *klen) {
    static const char *keyless[] = {"PING", "TIME", "INFO", "SCAN", "CLUSTER", "SCRIPT", "ASKING", "ECHO",
                                    "DBSIZE", "CONFIG", "FLUSHALL", "FLUSHDB", "AUTH", "SELECT"};
    const char *name, *n;
    size_t nlen, nl;
    if (resp_arg(cmd, len, 0, &name, &nlen) < 0) return -1;
    for (size_t i = 0; i < sizeof keyless / sizeof *keyless; i++)
        if (arg_is(name, nlen, keyless[i])) return -1;
    if (arg_is(name, nlen, "EVAL") || arg_is(name, nlen, "EVALSHA")) {
        if (resp_arg(cmd, len, 2, &n, &nl) < 0 || nl == 0 || n[0] == '0') return -1;
        return resp_arg(cmd, len, 3, key, klen);
    }
    return resp_arg(cmd, len, 1, key, klen);
}

/* The node of the first slot that has one (for keyless commands). */
static int any_master(const iqp_rconn *rc) {
    for (size_t s = 0; s < IQP_CLUSTER_SLOTS; s++)
        if (rc->slot_node[s] >= 0) return rc->slot_node[s];
    return -1;
}

/* Queues a formatted command (taking cmd) on its slot's master. */
static int cluster_append(iqp_rconn *rc, char *cmd, size_t len) {
    const char *key;
    size_t klen;
    unsigned slot = command_key(cmd, len, &key, &klen) == 0 ? iqp_cluster_slot(key, klen) : IQP_CLUSTER_SLOTS;
    int n = slot < IQP_CLUSTER_SLOTS ? rc->slot_node[slot] : any_master(rc);
    redisContext *c = n >= 0 ? node_ctx(rc, n) : NULL;
    if (n < 0) set_err(rc, REDIS_ERR_OTHER, "no Redis Cluster master serves slot %u (is the cluster down?)", slot);
    if (!c || redisAppendFormattedCommand(c, cmd, len) != REDIS_OK) {
        if (c) node_failed(rc, &rc->nodes[n]);
        free(cmd);
        return REDIS_ERR;
    }
    if (rc->n_q == rc->cap_q) {
        rc->cap_q = rc->cap_q ? 2 * rc->cap_q : 64;
        if (!(rc->q = realloc(rc->q, rc->cap_q * sizeof *rc->q))) abort();
    }
    rc->q[rc->n_q++] = (queued){.cmd = cmd, .len = len, .node = n, .slot = slot};
    return REDIS_OK;
}

int iqp_rconn_vappend(iqp_rconn *rc, const char *fmt, va_list ap) {
    if (rc->single) return redisvAppendCommand(rc->single, fmt, ap);
    char *cmd;
    int len = redisvFormatCommand(&cmd, fmt, ap);
    if (len < 0) return set_err(rc, REDIS_ERR_OOM, "cannot format a Redis command");
    return cluster_append(rc, cmd, (size_t)len);
}

int iqp_rconn_append(iqp_rconn *rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = iqp_rconn_vappend(rc, fmt, ap);
    va_end(ap);
    return r;
}

int iqp_rconn_append_formatted2(iqp_rconn *rc, const char *head, size_t head_len, const char *tail,
                                size_t tail_len) {
    if (rc->single)
        return redisAppendFormattedCommand(rc->single, head, head_len) != REDIS_OK ||
                       redisAppendFormattedCommand(rc->single, tail, tail_len) != REDIS_OK
                   ? REDIS_ERR
                   : REDIS_OK;
    char *cmd = malloc(head_len + tail_len + 1);
    if (!cmd) return set_err(rc, REDIS_ERR_OOM, "cannot format a Redis command");
    memcpy(cmd, head, head_len);
    memcpy(cmd + head_len, tail, tail_len);
    cmd[head_len + tail_len] = '\0';
    return cluster_append(rc, cmd, head_len + tail_len);
}

int iqp_rconn_append_argv(iqp_rconn *rc, int argc, const char **argv, const size_t *lens) {
    if (rc->single) return redisAppendCommandArgv(rc->single, argc, argv, lens);
    char *cmd;
    int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len < 0) return set_err(rc, REDIS_ERR_OOM, "cannot format a Redis command");
    return cluster_append(rc, cmd, (size_t)len);
}

/* ---- replies and redirections ------------------------------------------------------ */

static int read_one(iqp_rconn *rc, redisContext *c, redisReply **r) {
    *r = NULL;
    if (rc->limits) return iqp_redis_get_reply(c, rc->limits, r);
    return redisGetReply(c, (void **)r);
}

/* A redirection's own reply does not count against the caller's limits. */
static void uncount(iqp_rconn *rc, const redisReply *r) {
    iqp_reply_limits *l = rc->limits;
    if (!l) return;
    if (l->objects) l->objects--;
    l->bytes -= r->len < l->bytes ? r->len : l->bytes;
}

static int starts(const redisReply *r, const char *word) {
    return r->type == REDIS_REPLY_ERROR && strncmp(r->str, word, strlen(word)) == 0;
}

/* The node named by "MOVED <slot> <host>:<port>" / "ASK ...", or -1. */
static int redirect_target(iqp_rconn *rc, const char *msg) {
    const char *addr = strchr(msg, ' ') ? strchr(strchr(msg, ' ') + 1, ' ') : NULL;
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    if (!colon || colon - addr - 1 <= 0 || colon - addr - 1 >= 256) return -1;
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr - 1), addr + 1);
    int port = atoi(colon + 1);
    return port > 0 && port < 65536 ? find_node(rc, host, port) : -1;
}

/* Sends c again where the error reply *r says, until a reply is final. */
static int follow(iqp_rconn *rc, queued *c, redisReply **r) {
    for (int tries = 0; tries < MAX_REDIRECTS; tries++) {
        int ask = starts(*r, "ASK "), moved = starts(*r, "MOVED "), again = starts(*r, "TRYAGAIN");
        if (!ask && !moved && !again) return REDIS_OK;
        int target = again ? c->node : redirect_target(rc, (*r)->str);
        if (target < 0) return set_err(rc, REDIS_ERR_PROTOCOL, "unexpected redirection: %s", (*r)->str);
        if (moved && load_slots(rc) == REDIS_OK && c->slot < IQP_CLUSTER_SLOTS &&
            rc->slot_node[c->slot] != target)
            rc->slot_node[c->slot] = (int16_t)target; /* the map lags the MOVED: trust the node */
        if (again) usleep(TRYAGAIN_WAIT_US);
        uncount(rc, *r);
        freeReplyObject(*r);
        *r = NULL;
        redisContext *ctx = node_ctx(rc, target);
        if (!ctx) return REDIS_ERR;
        if ((ask && redisAppendCommand(ctx, "ASKING") != REDIS_OK) ||
            redisAppendFormattedCommand(ctx, c->cmd, c->len) != REDIS_OK)
            return node_failed(rc, &rc->nodes[target]);
        if (ask) {
            if (read_one(rc, ctx, r) != REDIS_OK) return node_failed(rc, &rc->nodes[target]);
            uncount(rc, *r);
            freeReplyObject(*r);
        }
        if (read_one(rc, ctx, r) != REDIS_OK) return node_failed(rc, &rc->nodes[target]);
        c->node = target;
    }
    return REDIS_OK; /* still redirected: the caller sees the error reply */
}

static void drop_queue(iqp_rconn *rc) {
    for (size_t i = 0; i < rc->n_q; i++) free(rc->q[i].cmd);
    rc->n_q = 0;
}

static void drop_ready(iqp_rconn *rc) {
    for (size_t i = rc->ready_pos; i < rc->n_ready; i++)
        if (rc->ready[i]) freeReplyObject(rc->ready[i]);
    rc->ready_pos = rc->n_ready = 0;
}

/* A failed pipeline leaves connections mid-reply: close them all. */
static int pipeline_failed(iqp_rconn *rc) {
    drop_queue(rc);
    drop_ready(rc);
    close_nodes(rc);
    return REDIS_ERR;
}

/* Writes every node's commands, reads every queued reply, then follows
 * redirections one by one. */
static int collect(iqp_rconn *rc) {
    for (size_t i = 0; i < rc->n_nodes; i++) {
        int done = 0;
        while (rc->nodes[i].ctx && !done)
            if (redisBufferWrite(rc->nodes[i].ctx, &done) != REDIS_OK)
                return node_failed(rc, &rc->nodes[i]), pipeline_failed(rc);
    }
    if (rc->n_q > rc->cap_ready) {
        rc->cap_ready = rc->n_q;
        if (!(rc->ready = realloc(rc->ready, rc->cap_ready * sizeof *rc->ready))) abort();
    }
    rc->ready_pos = 0;
    for (rc->n_ready = 0; rc->n_ready < rc->n_q; rc->n_ready++) {
        node *n = &rc->nodes[rc->q[rc->n_ready].node];
        if (!n->ctx || read_one(rc, n->ctx, &rc->ready[rc->n_ready]) != REDIS_OK)
            return node_failed(rc, n), pipeline_failed(rc);
    }
    for (size_t i = 0; i < rc->n_q; i++)
        if (follow(rc, &rc->q[i], &rc->ready[i]) != REDIS_OK) return pipeline_failed(rc);
    drop_queue(rc);
    return REDIS_OK;
}

int iqp_rconn_get_reply(iqp_rconn *rc, redisReply **reply) {
    *reply = NULL;
    if (rc->single)
        return rc->limits ? iqp_redis_get_reply(rc->single, rc->limits, reply)
                          : redisGetReply(rc->single, (void **)reply);
    if (rc->ready_pos == rc->n_ready) {
        rc->ready_pos = rc->n_ready = 0;
        if (rc->n_q == 0) return set_err(rc, REDIS_ERR_OTHER, "no command is waiting for a reply");
        if (collect(rc) != REDIS_OK) return REDIS_ERR;
    }
    *reply = rc->ready[rc->ready_pos++];
    return REDIS_OK;
}

redisReply *iqp_rconn_vcommand(iqp_rconn *rc, const char *fmt, va_list ap) {
    redisReply *r = NULL;
    if (iqp_rconn_vappend(rc, fmt, ap) != REDIS_OK || iqp_rconn_get_reply(rc, &r) != REDIS_OK) return NULL;
    return r;
}

redisReply *iqp_rconn_command(iqp_rconn *rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = iqp_rconn_vcommand(rc, fmt, ap);
    va_end(ap);
    return r;
}

/* ---- masters ------------------------------------------------------------------------- */

/* Node index of the i-th master (a node that serves a slot, in node
 * order), or -1. */
static int master_node(const iqp_rconn *rc, size_t want) {
    unsigned char *serves = calloc(rc->n_nodes + 1, 1);
    if (!serves) abort();
    for (size_t s = 0; s < IQP_CLUSTER_SLOTS; s++)
        if (rc->slot_node[s] >= 0) serves[rc->slot_node[s]] = 1;
    int found = -1;
    for (size_t n = 0, seen = 0; n < rc->n_nodes && found < 0; n++)
        if (serves[n] && seen++ == want) found = (int)n;
    free(serves);
    return found;
}

size_t iqp_rconn_masters(iqp_rconn *rc) {
    if (rc->single) return 1;
    size_t n = 0;
    while (master_node(rc, n) >= 0) n++;
    return n;
}

redisReply *iqp_rconn_master_command(iqp_rconn *rc, size_t i, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = iqp_rconn_master_vcommand(rc, i, fmt, ap);
    va_end(ap);
    return r;
}

redisReply *iqp_rconn_master_vcommand(iqp_rconn *rc, size_t i, const char *fmt, va_list ap) {
    redisReply *r = NULL;
    if (rc->single) {
        r = redisvCommand(rc->single, fmt, ap);
    } else {
        int n = rc->n_q ? -1 : master_node(rc, i); /* a queued reply would be read as this one's */
        redisContext *c = n >= 0 ? node_ctx(rc, n) : NULL;
        if (n < 0 && rc->n_q) set_err(rc, REDIS_ERR_OTHER, "commands are still queued");
        else if (n < 0) set_err(rc, REDIS_ERR_OTHER, "no Redis Cluster master %zu", i);
        if (c && !(r = redisvCommand(c, fmt, ap))) node_failed(rc, &rc->nodes[n]);
    }
    return r;
}

/* ---- connections --------------------------------------------------------------------- */

iqp_rconn *iqp_rconn_connect(const iqp_redis_url *u, int connect_timeout_ms, int command_timeout_ms, char *err,
                             size_t errlen) {
    iqp_rconn *rc = calloc(1, sizeof *rc);
    if (!rc) abort();
    rc->url = *u;
    rc->connect_timeout_ms = connect_timeout_ms;
    rc->command_timeout_ms = command_timeout_ms;
    if (!u->is_cluster) {
        if (!(rc->single = iqp_redis_connect(u, connect_timeout_ms, command_timeout_ms, err, errlen))) {
            free(rc);
            return NULL;
        }
        return rc;
    }
    if (load_slots(rc) != REDIS_OK) {
        char where[600];
        iqp_redis_url_describe(u, where, sizeof where);
        snprintf(err, errlen, "Redis Cluster at %s: %s", where, rc->errstr);
        iqp_rconn_free(rc);
        return NULL;
    }
    return rc;
}

void iqp_rconn_free(iqp_rconn *rc) {
    if (!rc) return;
    if (rc->single) redisFree(rc->single);
    drop_queue(rc);
    drop_ready(rc);
    close_nodes(rc);
    free(rc->nodes);
    free(rc->q);
    free(rc->ready);
    free(rc);
}

int iqp_rconn_is_cluster(const iqp_rconn *rc) { return rc->single == NULL; }

int iqp_rconn_err(const iqp_rconn *rc) { return rc->single ? rc->single->err : rc->err; }

const char *iqp_rconn_errstr(const iqp_rconn *rc) { return rc->single ? rc->single->errstr : rc->errstr; }

void iqp_rconn_limit_replies(iqp_rconn *rc, iqp_reply_limits *l) {
    rc->limits = l;
    if (rc->single) iqp_redis_limit_replies(rc->single, l);
    for (size_t i = 0; i < rc->n_nodes; i++)
        if (rc->nodes[i].ctx) iqp_redis_limit_replies(rc->nodes[i].ctx, l);
    iqp_reply_limits_set(l, SIZE_MAX, SIZE_MAX, SIZE_MAX);
}

/* 1 when some ':'-separated part of prefix is all digits: its keys would
 * read as generation keys of a shorter prefix ("iqp:7:..." looks like
 * generation 7 of "iqp"), whose garbage collection would expire them. */
static int has_numeric_part(const char *prefix) {
    for (const char *p = prefix; *p;) {
        size_t n = strcspn(p, ":");
        if (n && strspn(p, "0123456789") >= n) return 1;
        p += n + (p[n] == ':');
    }
    return 0;
}

int iqp_redis_key_prefix(const iqp_redis_url *u, const char *prefix, char *out, size_t cap, char *err,
                         size_t errlen) {
    if (!prefix[0] || strlen(prefix) > IQP_REDIS_PREFIX_MAX) {
        snprintf(err, errlen, "the Redis key prefix must be 1..%d bytes", IQP_REDIS_PREFIX_MAX);
        return -1;
    }
    if (has_numeric_part(prefix)) {
        snprintf(err, errlen,
                 "key prefix '%s' has an all-digit ':' part: its keys would read as another prefix's "
                 "generation keys (use letters, e.g. 'iqp:v7')", prefix);
        return -1;
    }
    if (u->is_cluster && strpbrk(prefix, "{}")) {
        snprintf(err, errlen, "key prefix '%s' holds a brace; in a Redis Cluster iqp adds the hash tags itself",
                 prefix);
        return -1;
    }
    if ((size_t)snprintf(out, cap, u->is_cluster ? "{%s}" : "%s", prefix) >= cap) {
        snprintf(err, errlen, "key prefix longer than %zu bytes", cap - (u->is_cluster ? 3 : 1));
        return -1;
    }
    return 0;
}

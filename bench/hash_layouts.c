/* hash_layouts.c -- what one (feature, context) hash costs to read in each
 * way Redis could hold it: the evidence for README's "Redis settings".
 *
 * usage: hash_layouts URL KEY ITEMS_FILE N_ITEMS CALLS
 *
 * Copies the hash KEY (on a single server) into scratch keys, held as:
 *   listpack    one hash written under hash-max-listpack-entries 512
 *               (Redis's default; a hash of more than 512 fields, or with
 *               a value over hash-max-listpack-value, is a hashtable anyway)
 *   hashtable   one hash written under hash-max-listpack-entries 0
 *   blocks/B    B hashes (B = 4, 16, 64), an item in block XXH3-64(id) mod
 *               B, each written under 512 (small listpacks)
 * then times, for each, the requests a lookup of the first N_ITEMS items
 * of ITEMS_FILE needs: one HMGET "" + every item on the one hash, or one
 * HMGET per block holding a requested item, pipelined on one connection
 * (one round trip). The layouts take turns call by call. Prints one line
 * per layout: p50/p99 of CALLS calls in microseconds. Restores hash-max-listpack-entries and deletes its keys.
 * Loopback only (the URL is the caller's).
 */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "client/redis_conn.h"
#include "util/clock.h"

#define MAX_BLOCKS 64

typedef struct request {
    int n_cmds;
    int argc[MAX_BLOCKS];
    const char **argv[MAX_BLOCKS];
    size_t *lens[MAX_BLOCKS];
} request;

static void check(redisReply *r, const char *what) {
    if (!r || r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "hash_layouts: %s: %s\n", what, r ? r->str : "no reply");
        exit(1);
    }
    freeReplyObject(r);
}

/* Writes the fields of all (HGETALL reply) into n_blocks keys named
 * base/<b>, under hash-max-listpack-entries entries. */
static void write_copy(redisContext *c, const redisReply *all, const char *base, int n_blocks, int entries) {
    check(redisCommand(c, "CONFIG SET hash-max-listpack-entries %d", entries), "CONFIG SET");
    for (size_t i = 0; i + 1 < all->elements; i += 2) {
        const redisReply *f = all->element[i], *v = all->element[i + 1];
        unsigned b = (unsigned)(XXH3_64bits(f->str, f->len) % (unsigned)n_blocks);
        check(redisCommand(c, "HSET %s/%u %b %b", base, b, f->str, f->len, v->str, v->len), "HSET");
    }
}

/* One HMGET per block that holds a requested item ("" goes to block 0). */
static void build_request(request *q, const char *base, int n_blocks, char **items, size_t n) {
    q->n_cmds = 0;
    for (int b = 0; b < n_blocks; b++) {
        const char **argv = malloc((n + 3) * sizeof *argv);
        size_t *lens = malloc((n + 3) * sizeof *lens);
        char *key = malloc(strlen(base) + 16);
        sprintf(key, "%s/%d", base, b);
        int a = 0;
        argv[a] = "HMGET", lens[a++] = 5;
        argv[a] = key, lens[a++] = strlen(key);
        if (b == 0) argv[a] = "", lens[a++] = 0;
        for (size_t i = 0; i < n; i++)
            if (XXH3_64bits(items[i], strlen(items[i])) % (unsigned)n_blocks == (unsigned)b)
                argv[a] = items[i], lens[a++] = strlen(items[i]);
        if (a == 2) {
            free(argv), free(lens), free(key);
            continue;
        }
        q->argc[q->n_cmds] = a, q->argv[q->n_cmds] = argv, q->lens[q->n_cmds++] = lens;
    }
}

static void free_request(request *q) {
    for (int k = 0; k < q->n_cmds; k++) free((char *)q->argv[k][1]), free(q->argv[k]), free(q->lens[k]);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One call: every command of q, then every reply; microseconds. */
static double one_call(redisContext *c, const request *q) {
    double t0 = iqp_mono_seconds();
    for (int i = 0; i < q->n_cmds; i++) redisAppendCommandArgv(c, q->argc[i], q->argv[i], q->lens[i]);
    for (int i = 0; i < q->n_cmds; i++) {
        redisReply *r;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) {
            fprintf(stderr, "hash_layouts: %s\n", c->errstr);
            exit(1);
        }
        freeReplyObject(r);
    }
    return (iqp_mono_seconds() - t0) * 1e6;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s URL KEY ITEMS_FILE N_ITEMS CALLS\n", argv[0]);
        return 2;
    }
    size_t want = strtoul(argv[4], NULL, 10), calls = strtoul(argv[5], NULL, 10), n = 0;
    iqp_redis_url u;
    char err[512], line[4096];
    if (iqp_redis_url_parse(argv[1], &u, err, sizeof err) < 0 || u.is_cluster || calls == 0) {
        fprintf(stderr, "hash_layouts: %s\n", calls ? "a single-server redis:// URL, please" : "CALLS must be > 0");
        return 2;
    }
    redisContext *c = iqp_redis_connect(&u, 1000, 10000, err, sizeof err);
    FILE *f = fopen(argv[3], "r");
    if (!c || !f) {
        fprintf(stderr, "hash_layouts: %s\n", c ? "cannot read the items file" : err);
        return 1;
    }
    char **items = calloc(want ? want : 1, sizeof *items);
    while (n < want && fgets(line, sizeof line, f))
        if ((line[strcspn(line, "\n")] = 0, line[0])) items[n++] = strdup(line);
    fclose(f);
    redisReply *all = redisCommand(c, "HGETALL %s", argv[2]);
    redisReply *old = redisCommand(c, "CONFIG GET hash-max-listpack-entries");
    if (!all || all->type != REDIS_REPLY_ARRAY || !old || old->type != REDIS_REPLY_ARRAY || old->elements != 2) {
        fprintf(stderr, "hash_layouts: cannot read %s or the server's hash-max-listpack-entries\n", argv[2]);
        return 1;
    }
    printf("%s: %zu fields, %zu items asked\n", argv[2], all->elements / 2, n);
    static const struct { const char *name; int blocks, entries; } layouts[] = {
        {"listpack", 1, 512}, {"hashtable", 1, 0}, {"blocks/4", 4, 512}, {"blocks/16", 16, 512}, {"blocks/64", 64, 512}};
    enum { N_LAYOUTS = sizeof layouts / sizeof layouts[0] };
    request q[N_LAYOUTS];
    char base[N_LAYOUTS][64];
    double *us[N_LAYOUTS];
    for (size_t l = 0; l < N_LAYOUTS; l++) {
        snprintf(base[l], sizeof base[l], "hash_layouts:%d:%zu", (int)getpid(), l);
        write_copy(c, all, base[l], layouts[l].blocks, layouts[l].entries);
        build_request(&q[l], base[l], layouts[l].blocks, items, n);
        us[l] = malloc(calls * sizeof *us[l]);
    }
    /* the layouts take turns, call by call, so all see the same machine noise */
    for (size_t k = 0; k < calls; k++)
        for (size_t l = 0; l < N_LAYOUTS; l++) us[l][k] = one_call(c, &q[l]);
    for (size_t l = 0; l < N_LAYOUTS; l++) {
        redisReply *enc = redisCommand(c, "OBJECT ENCODING %s/0", base[l]);
        qsort(us[l], calls, sizeof *us[l], cmp_double);
        printf("%-10s %-9s hashes read=%-3d p50=%.1f p99=%.1f\n", layouts[l].name,
               enc && enc->type == REDIS_REPLY_STRING ? enc->str : "-", q[l].n_cmds, us[l][calls / 2],
               us[l][(size_t)(0.99 * (double)(calls - 1))]);
        if (enc) freeReplyObject(enc);
        free_request(&q[l]);
        free(us[l]);
        for (int b = 0; b < layouts[l].blocks; b++) check(redisCommand(c, "DEL %s/%d", base[l], b), "DEL");
    }
    check(redisCommand(c, "CONFIG SET hash-max-listpack-entries %s", old->element[1]->str), "CONFIG SET");
    freeReplyObject(old), freeReplyObject(all), redisFree(c);
    for (size_t i = 0; i < n; i++) free(items[i]);
    free(items);
    return 0;
}

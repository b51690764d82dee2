/* output.h -- where iqp gen's lines go: the line buffer they are built in,
 * the pending-line heap that orders them, and the (compressed) writer.
 *
 * Owns:
 *   - the appenders of jansson's compact form a line is built with, in
 *     the one byte buffer (model/buf.h; sbuf is its name here): integers,
 *     JSON strings with jansson's escapes, "<prefix><seed>-<n>" ids,
 *     "i<k>" items;
 *   - pheap: a min-heap of pending lines on (key, seq), key = ts + jitter,
 *     seq = generation order; gen.c pushes every line and pops the ones no
 *     later line can sort before (gen.h, "Output order");
 *   - gen_out: a buffered writer, plain, gzip (level 6) or zstd (level 3,
 *     with checksum) chosen by the file name (.gz, .zst; "-" is stdout,
 *     plain), which remembers the first errno.
 *
 * May not touch: what a line says (event.h, faults.h, truth.h) or when it
 * is written (gen.c); the file names are the caller's.
 */
#ifndef IQP_GEN_OUTPUT_H
#define IQP_GEN_OUTPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <zlib.h>
#include <zstd.h>

#include "model/buf.h"

/* ---- Output: plain, gzip or zstd, by file name ------------------------------ */

typedef struct gen_out {
    const char *path;
    int kind, failed;           /* failed: the first errno, 0 while all is well */
    FILE *fp;
    gzFile gz;
    ZSTD_CCtx *zc;
    char *buf, *zbuf;
    size_t len, zcap;
} gen_out;

/* Opens path for writing: 0, or -1 with errno (0 when out of memory); call
 * gen_out_close either way. */
int gen_out_open(gen_out *w, const char *path);

/* Buffers n bytes: 0, or -1 with w->failed set. */
int gen_out_write(gen_out *w, const char *p, size_t n);

/* Finishes and closes; -1 when anything failed along the way. */
int gen_out_close(gen_out *w);

/* ---- Pending lines: a min-heap on (key, seq) --------------------------------- */

typedef struct pending { int64_t key; uint64_t seq; char *line; size_t len; } pending;
typedef struct pheap { pending *v; size_t n, cap; } pheap;

/* 0, or -1 out of memory (e is not stored). */
int pheap_push(pheap *h, pending e);

/* The least entry; h->n > 0. */
pending pheap_pop(pheap *h);

/* ---- Line buffer ------------------------------------------------------------- */

typedef iqp_buf sbuf;

static inline void sb_raw(sbuf *b, const char *s, size_t n) { iqp_buf_append(b, s, n); }

#define SB_LIT(b, lit) sb_raw((b), (lit), sizeof(lit) - 1)

static inline void sb_u64(sbuf *b, uint64_t v) { iqp_buf_u64(b, v); }
static inline void sb_i64(sbuf *b, int64_t v) { iqp_buf_i64(b, v); }

/* A JSON string (UTF-8 passes through, as jansson writes it), or null. */
void sb_str(sbuf *b, const char *s);

/* "<prefix><seed>-<n>" as a JSON string. */
void sb_id(sbuf *b, const char *prefix, int64_t seed, uint64_t n);

/* "i<item>" as a JSON string. */
void sb_item(sbuf *b, uint32_t item);

/* The finished line, malloc'd; NULL when out of memory. Empties b. */
char *sb_take(sbuf *b);

/* e as one compact line (keys in insertion order), malloc'd; NULL when e
 * is NULL or out of memory. Takes e's reference. */
char *json_line(json_t *e);

#endif

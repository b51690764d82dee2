/* buf.h -- the one growable byte buffer.
 *
 * Owns: a run of bytes that grows as it is appended to: store keys
 * (cells.h builds them in one), the metrics page, export rows, generated
 * event lines. Growth doubles the capacity; running out of memory aborts,
 * as every allocation of the pipeline does.
 *
 * A zeroed iqp_buf ({0}) is an empty buffer that allocates on the first
 * append; iqp_buf_init allocates at once, so buf is never NULL (keys are
 * handed to RocksDB as they are, length 0 included). The bytes are not
 * NUL-terminated: iqp_buf_cstr terminates them when text is wanted.
 *
 * May not touch: anything but the buffer it is given. model/ is the
 * ground floor: this file includes nothing of the project.
 */
#ifndef IQP_BUF_H
#define IQP_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct iqp_buf {
    unsigned char *buf;
    size_t len, cap;
} iqp_buf;

/* An empty buffer with room allocated (buf not NULL). */
void iqp_buf_init(iqp_buf *b);
/* Frees the bytes; b is then a zeroed, empty buffer again. */
void iqp_buf_free(iqp_buf *b);

/* Grows the capacity to hold len + more bytes; use iqp_buf_reserve. */
void iqp_buf_grow(iqp_buf *b, size_t more);
/* Makes room for more bytes after len (inline: key building calls it per
 * field, and the room is nearly always there). */
static inline void iqp_buf_reserve(iqp_buf *b, size_t more) {
    if (b->len + more > b->cap) iqp_buf_grow(b, more);
}
/* Cuts the contents to len bytes (no-op when it is not shorter). */
void iqp_buf_truncate(iqp_buf *b, size_t len);

/* Appends n bytes. */
static inline void iqp_buf_append(iqp_buf *b, const void *bytes, size_t n) {
    if (n == 0) return; /* bytes may then be NULL (an empty buffer's) */
    iqp_buf_reserve(b, n);
    memcpy(b->buf + b->len, bytes, n);
    b->len += n;
}
/* Appends a NUL-terminated string (without the NUL). */
static inline void iqp_buf_puts(iqp_buf *b, const char *s) { iqp_buf_append(b, s, strlen(s)); }
/* Appends one byte. */
static inline void iqp_buf_putc(iqp_buf *b, char c) {
    iqp_buf_reserve(b, 1);
    b->buf[b->len++] = (unsigned char)c;
}
/* Appends v in decimal. */
void iqp_buf_u64(iqp_buf *b, uint64_t v);
void iqp_buf_i64(iqp_buf *b, int64_t v);

/* Replaces b's contents with src's. */
void iqp_buf_copy(iqp_buf *b, const iqp_buf *src);

/* The contents as a C string: a NUL is written after the last byte (not
 * counted in len). Valid until the next change of b. */
char *iqp_buf_cstr(iqp_buf *b);

#endif

/* logfile.c -- reading event logs line by line (plain, gzip, zstd, stdin).
 *
 * This is the hot input path of `iqp backfill`, so it is built around two
 * large buffers and memchr, never around per-byte calls:
 *
 *   fd --read(1 MiB)--> in  --inflate / ZSTD_decompressStream--> out
 *                                                                |
 *                      lines <--memchr('\n')---------------------+
 *
 * For plain input the "out" window is the input buffer itself (no copy).
 * The window is described by (data, data_pos, data_len); refill_window()
 * makes the next chunk of decompressed bytes available in it.
 *
 * A line that lies wholly inside the window is returned as a pointer into
 * the window (zero copy). Only a line that crosses a refill is gathered into
 * the "carry" buffer, which keeps at most max_line bytes: for an oversized
 * line the first max_line bytes are kept, the rest is only counted, and the
 * caller gets the prefix with *oversized set and the full length.
 *
 * Compression is detected from the magic bytes of the first read (gzip
 * 1f 8b, zstd 28 b5 2f fd), never from the file name. gzip members and
 * zstd frames may be concatenated; input that ends inside a member or a
 * frame is an error ("truncated"), as is corrupt data.
 *
 * The content identity (iqp_logfile_identity) is the size plus XXH3-64 of
 * the size, the first MiB and the last MiB: cheap on huge files, and enough
 * to tell "the same log again" from "a log that grew or was replaced". A
 * change confined to the middle of a file larger than 2 MiB that keeps its
 * size is deliberately not detected.
 */
/* logfile.h has a slash-star inside a comment, which trips -Wcomment (an
 * error under --enable-werror); silence it for the include only. */
#include "consumers/logfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zlib.h>
#include <zstd.h>

#define IO_CHUNK (1u << 20)             /* bytes per read(2) and per inflate */
#define DEFAULT_MAX_LINE (1u << 20)     /* max_line == 0 means this */
#define IDENTITY_EDGE ((off_t)1 << 20)  /* bytes hashed at each end */

struct iqp_logfile {
    char *path;           /* as given, for messages */
    int fd;
    int owns_fd;          /* 0 for stdin */
    iqp_log_format format;
    size_t max_line;
    uint64_t size;        /* 0 when unknown */
    uint64_t bytes_in;    /* bytes read from fd */
    uint64_t line_no;     /* lines seen, including skipped empty ones */

    unsigned char *in;    /* raw bytes from fd */
    size_t in_pos, in_len;
    int in_eof;

    unsigned char *out;   /* decompressed bytes (compressed formats only) */
    const unsigned char *data; /* the window lines are cut from */
    size_t data_pos, data_len;

    z_stream zs;
    int zs_ready;         /* inflateInit2 succeeded */
    int member_open;      /* inside a gzip member / zstd frame */
    ZSTD_DCtx *zd;

    char *carry;          /* a line crossing a refill: first max_line bytes */
    size_t carry_len, carry_cap;
    uint64_t carry_full;  /* full raw length of the carried line so far */
    unsigned char carry_last; /* last raw byte seen of the carried line */
    int carry_returned;   /* the last line handed out came from carry */
};

/* ---- small helpers ------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int is_stdin_path(const char *path) { return strcmp(path, "-") == 0; }

/* read(2) that retries on EINTR. Returns bytes read, 0 at EOF, -1 on error. */
static ssize_t read_retry(int fd, void *buf, size_t n) {
    ssize_t r;
    do {
        r = read(fd, buf, n);
    } while (r < 0 && errno == EINTR);
    return r;
}

/* Appends more raw bytes to lf->in after in_len. Returns 1 when bytes came,
 * 0 at EOF, -1 on a read error. */
static int read_more(iqp_logfile *lf, char *err, size_t errlen) {
    if (lf->in_eof) return 0;
    ssize_t r = read_retry(lf->fd, lf->in + lf->in_len, IO_CHUNK - lf->in_len);
    if (r < 0) {
        set_err(err, errlen, "%s: read error after line %llu: %s", lf->path,
                (unsigned long long)lf->line_no, strerror(errno));
        return -1;
    }
    if (r == 0) {
        lf->in_eof = 1;
        return 0;
    }
    lf->in_len += (size_t)r;
    lf->bytes_in += (uint64_t)r;
    return 1;
}

/* Refills lf->in from the start (everything before was consumed). */
static int read_chunk(iqp_logfile *lf, char *err, size_t errlen) {
    lf->in_pos = lf->in_len = 0;
    return read_more(lf, err, errlen);
}

/* ---- per-format refill of the window ------------------------------------- */

static int corrupt(iqp_logfile *lf, const char *what, const char *msg, char *err,
                   size_t errlen) {
    set_err(err, errlen, "%s: corrupt %s data after line %llu: %s", lf->path, what,
            (unsigned long long)lf->line_no, msg);
    return -1;
}

static int refill_plain(iqp_logfile *lf, char *err, size_t errlen) {
    int rc = read_chunk(lf, err, errlen);
    lf->data = lf->in;
    lf->data_pos = 0;
    lf->data_len = lf->in_len;
    return rc;
}

/* Runs inflate until it produces output, the input ends, or it fails.
 * Concatenated members: after Z_STREAM_END the stream is reset and goes on
 * with whatever input follows. */
static int refill_gzip(iqp_logfile *lf, char *err, size_t errlen) {
    z_stream *zs = &lf->zs;
    for (;;) {
        if (zs->avail_in == 0 && !lf->in_eof) {
            if (read_chunk(lf, err, errlen) < 0) return -1;
            zs->next_in = lf->in;
            zs->avail_in = (uInt)lf->in_len;
        }
        if (zs->avail_in > 0) lf->member_open = 1;
        zs->next_out = lf->out;
        zs->avail_out = IO_CHUNK;
        int ret = inflate(zs, Z_NO_FLUSH);
        size_t produced = IO_CHUNK - zs->avail_out;
        if (ret == Z_STREAM_END) {
            lf->member_open = 0;
            inflateReset(zs);
        } else if (ret != Z_OK && ret != Z_BUF_ERROR) {
            return corrupt(lf, "gzip", zs->msg ? zs->msg : zError(ret), err, errlen);
        }
        if (produced > 0) {
            lf->data_pos = 0;
            lf->data_len = produced;
            return 1;
        }
        if (zs->avail_in == 0 && lf->in_eof) {
            if (lf->member_open)
                return corrupt(lf, "gzip", "unexpected end of file", err, errlen);
            return 0;
        }
    }
}

/* Same shape as refill_gzip; ZSTD_decompressStream crosses frames itself and
 * returns 0 exactly when a frame is complete and fully flushed. */
static int refill_zstd(iqp_logfile *lf, char *err, size_t errlen) {
    for (;;) {
        if (lf->in_pos == lf->in_len && !lf->in_eof) {
            if (read_chunk(lf, err, errlen) < 0) return -1;
        }
        ZSTD_inBuffer in = {lf->in, lf->in_len, lf->in_pos};
        ZSTD_outBuffer out = {lf->out, IO_CHUNK, 0};
        size_t ret = ZSTD_decompressStream(lf->zd, &out, &in);
        if (ZSTD_isError(ret)) return corrupt(lf, "zstd", ZSTD_getErrorName(ret), err, errlen);
        if (in.pos > lf->in_pos || out.pos > 0) lf->member_open = (ret != 0);
        lf->in_pos = in.pos;
        if (out.pos > 0) {
            lf->data_pos = 0;
            lf->data_len = out.pos;
            return 1;
        }
        if (lf->in_pos == lf->in_len && lf->in_eof) {
            if (lf->member_open)
                return corrupt(lf, "zstd", "unexpected end of file", err, errlen);
            return 0;
        }
    }
}

/* Makes the next chunk of decompressed bytes the window. Returns 1, 0 at the
 * end of input, or -1 with err set. */
static int refill_window(iqp_logfile *lf, char *err, size_t errlen) {
    lf->data_pos = lf->data_len = 0;
    switch (lf->format) {
    case IQP_LOG_GZIP: return refill_gzip(lf, err, errlen);
    case IQP_LOG_ZSTD: return refill_zstd(lf, err, errlen);
    default: return refill_plain(lf, err, errlen);
    }
}

/* ---- opening ------------------------------------------------------------- */

static int open_fd(iqp_logfile *lf, const char *path, char *err, size_t errlen) {
    if (is_stdin_path(path)) {
        lf->fd = STDIN_FILENO;
        return 0;
    }
    lf->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (lf->fd < 0) {
        set_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    lf->owns_fd = 1;
    struct stat st;
    if (fstat(lf->fd, &st) != 0) {
        set_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        set_err(err, errlen, "cannot open %s: %s", path, strerror(EISDIR));
        return -1;
    }
    if (S_ISREG(st.st_mode)) {
        lf->size = (uint64_t)st.st_size;
        posix_fadvise(lf->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    }
    return 0;
}

/* Reads until 4 bytes are there (pipes deliver short reads) or EOF. */
static int read_magic(iqp_logfile *lf, char *err, size_t errlen) {
    while (lf->in_len < 4) {
        int rc = read_more(lf, err, errlen);
        if (rc < 0) return -1;
        if (rc == 0) break;
    }
    return 0;
}

static iqp_log_format detect_format(const unsigned char *p, size_t n) {
    if (n >= 2 && p[0] == 0x1f && p[1] == 0x8b) return IQP_LOG_GZIP;
    if (n >= 4 && p[0] == 0x28 && p[1] == 0xb5 && p[2] == 0x2f && p[3] == 0xfd)
        return IQP_LOG_ZSTD;
    return IQP_LOG_PLAIN;
}

/* Sets up the decoder for lf->format; the first chunk already sits in lf->in. */
static int init_decoder(iqp_logfile *lf, char *err, size_t errlen) {
    if (lf->format == IQP_LOG_PLAIN) {
        lf->data = lf->in;
        lf->data_len = lf->in_len;
        return 0;
    }
    lf->out = malloc(IO_CHUNK);
    if (lf->out == NULL) goto oom;
    lf->data = lf->out;
    if (lf->format == IQP_LOG_GZIP) {
        lf->zs.next_in = lf->in;
        lf->zs.avail_in = (uInt)lf->in_len;
        if (inflateInit2(&lf->zs, 15 + 32) != Z_OK) goto oom;
        lf->zs_ready = 1;
    } else {
        lf->zd = ZSTD_createDCtx();
        if (lf->zd == NULL) goto oom;
    }
    return 0;
oom:
    set_err(err, errlen, "cannot open %s: out of memory", lf->path);
    return -1;
}

iqp_logfile *iqp_logfile_open(const char *path, size_t max_line, char *err, size_t errlen) {
    iqp_logfile *lf = calloc(1, sizeof(*lf));
    if (lf == NULL) {
        set_err(err, errlen, "cannot open %s: out of memory", path);
        return NULL;
    }
    lf->fd = -1;
    lf->max_line = max_line ? max_line : DEFAULT_MAX_LINE;
    lf->path = strdup(path);
    lf->in = malloc(IO_CHUNK);
    if (lf->path == NULL || lf->in == NULL) {
        set_err(err, errlen, "cannot open %s: out of memory", path);
        goto fail;
    }
    if (open_fd(lf, path, err, errlen) != 0) goto fail;
    if (read_magic(lf, err, errlen) != 0) goto fail;
    lf->format = detect_format(lf->in, lf->in_len);
    if (init_decoder(lf, err, errlen) != 0) goto fail;
    return lf;
fail:
    iqp_logfile_close(lf);
    return NULL;
}

/* ---- splitting into lines ------------------------------------------------ */

/* Adds a piece of the current line to carry, keeping at most max_line bytes;
 * the carry buffer grows geometrically up to max_line. */
static int carry_append(iqp_logfile *lf, const unsigned char *p, size_t n) {
    if (n == 0) return 0;
    lf->carry_full += n;
    lf->carry_last = p[n - 1];
    size_t room = lf->max_line - lf->carry_len;
    size_t keep = n < room ? n : room;
    if (keep == 0) return 0;
    size_t need = lf->carry_len + keep;
    if (need > lf->carry_cap) {
        size_t cap = lf->carry_cap ? lf->carry_cap : 256;
        while (cap < need) cap *= 2;
        if (cap > lf->max_line) cap = lf->max_line;
        char *grown = realloc(lf->carry, cap);
        if (grown == NULL) return -1;
        lf->carry = grown;
        lf->carry_cap = cap;
    }
    memcpy(lf->carry + lf->carry_len, p, keep);
    lf->carry_len += keep;
    return 0;
}

static void carry_reset(iqp_logfile *lf) {
    lf->carry_len = 0;
    lf->carry_full = 0;
    lf->carry_returned = 0;
}

/* Hands out one complete line: strips a trailing '\r', bounds it by
 * max_line. Returns 0 for an empty line (to be skipped), 1 otherwise. */
static int emit(iqp_logfile *lf, const char *start, size_t kept, uint64_t full,
                unsigned char last, const char **line, size_t *len, int *oversized,
                uint64_t *full_len) {
    lf->line_no++;
    if (full > 0 && last == '\r') full--;
    if (full == 0) return 0;
    *line = start;
    *len = full < kept ? (size_t)full : kept;
    if (*len > lf->max_line) *len = lf->max_line;
    if (oversized) *oversized = full > lf->max_line;
    if (full_len) *full_len = full;
    return 1;
}

/* A line wholly inside the window: handed out in place. */
static int emit_in_window(iqp_logfile *lf, size_t n, const char **line, size_t *len,
                          int *oversized, uint64_t *full_len) {
    const char *start = (const char *)lf->data + lf->data_pos;
    unsigned char last = n ? (unsigned char)start[n - 1] : 0;
    lf->data_pos += n + 1;
    return emit(lf, start, n, n, last, line, len, oversized, full_len);
}

static int emit_carry(iqp_logfile *lf, const char **line, size_t *len, int *oversized,
                      uint64_t *full_len) {
    lf->carry_returned = 1;
    return emit(lf, lf->carry, lf->carry_len, lf->carry_full, lf->carry_last, line, len,
                oversized, full_len);
}

int iqp_logfile_next(iqp_logfile *lf, const char **line, size_t *len, int *oversized,
                     uint64_t *full_len, char *err, size_t errlen) {
    if (lf->carry_returned) carry_reset(lf);
    for (;;) {
        if (lf->data_pos == lf->data_len) {
            int rc = refill_window(lf, err, errlen);
            if (rc < 0) return -1;
            if (rc == 0) {
                if (lf->carry_full == 0) return 0;
                if (emit_carry(lf, line, len, oversized, full_len)) return 1;
                carry_reset(lf);
                return 0;
            }
        }
        const unsigned char *p = lf->data + lf->data_pos;
        size_t avail = lf->data_len - lf->data_pos;
        const unsigned char *nl = memchr(p, '\n', avail);
        if (nl == NULL) {
            if (carry_append(lf, p, avail) != 0) goto oom;
            lf->data_pos = lf->data_len;
            continue;
        }
        size_t n = (size_t)(nl - p);
        if (lf->carry_full == 0) {
            if (emit_in_window(lf, n, line, len, oversized, full_len)) return 1;
            continue;
        }
        if (carry_append(lf, p, n) != 0) goto oom;
        lf->data_pos += n + 1;
        if (emit_carry(lf, line, len, oversized, full_len)) return 1;
        carry_reset(lf);
    }
oom:
    set_err(err, errlen, "%s: out of memory after line %llu", lf->path,
            (unsigned long long)lf->line_no);
    return -1;
}

/* ---- accessors ----------------------------------------------------------- */

uint64_t iqp_logfile_line_no(const iqp_logfile *lf) { return lf->line_no; }
uint64_t iqp_logfile_bytes_in(const iqp_logfile *lf) { return lf->bytes_in; }
uint64_t iqp_logfile_size(const iqp_logfile *lf) { return lf->size; }
iqp_log_format iqp_logfile_format(const iqp_logfile *lf) { return lf->format; }

void iqp_logfile_close(iqp_logfile *lf) {
    if (lf == NULL) return;
    if (lf->zs_ready) inflateEnd(&lf->zs);
    ZSTD_freeDCtx(lf->zd);
    if (lf->owns_fd && lf->fd >= 0) close(lf->fd);
    free(lf->carry);
    free(lf->out);
    free(lf->in);
    free(lf->path);
    free(lf);
}

/* ---- content identity ---------------------------------------------------- */

/* Feeds bytes [off, off+n) of fd into the hash state. */
static int hash_range(int fd, off_t off, off_t n, XXH3_state_t *st, unsigned char *buf) {
    while (n > 0) {
        size_t want = n < (off_t)IO_CHUNK ? (size_t)n : IO_CHUNK;
        ssize_t r;
        do {
            r = pread(fd, buf, want, off);
        } while (r < 0 && errno == EINTR);
        if (r < 0) return -1;
        if (r == 0) {
            errno = EIO; /* the file shrank while we hashed it */
            return -1;
        }
        XXH3_64bits_update(st, buf, (size_t)r);
        off += r;
        n -= r;
    }
    return 0;
}

/* Hash of: size (8 bytes little-endian), bytes [0, min(size, 1 MiB)) and
 * bytes [max(1 MiB, size - 1 MiB), size): the two ends never overlap. */
static int hash_edges(int fd, off_t size, XXH64_hash_t *out) {
    unsigned char sz[8];
    for (int i = 0; i < 8; i++) sz[i] = (unsigned char)((uint64_t)size >> (8 * i));
    XXH3_state_t *st = XXH3_createState();
    unsigned char *buf = malloc(IO_CHUNK);
    int rc = -1;
    if (st == NULL || buf == NULL || XXH3_64bits_reset(st) == XXH_ERROR) {
        errno = ENOMEM;
        goto done;
    }
    XXH3_64bits_update(st, sz, sizeof(sz));
    off_t head = size < IDENTITY_EDGE ? size : IDENTITY_EDGE;
    off_t tail_start = size - IDENTITY_EDGE > head ? size - IDENTITY_EDGE : head;
    if (hash_range(fd, 0, head, st, buf) != 0) goto done;
    if (hash_range(fd, tail_start, size - tail_start, st, buf) != 0) goto done;
    *out = XXH3_64bits_digest(st);
    rc = 0;
done:
    free(buf);
    XXH3_freeState(st);
    return rc;
}

int iqp_logfile_identity(const char *path, char *out, size_t outlen, char *err, size_t errlen) {
    if (is_stdin_path(path)) {
        set_err(err, errlen, "-: standard input has no content identity");
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    XXH64_hash_t h = 0;
    int rc = -1;
    if (fstat(fd, &st) != 0) {
        set_err(err, errlen, "cannot stat %s: %s", path, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
    } else if (hash_edges(fd, st.st_size, &h) != 0) {
        set_err(err, errlen, "cannot read %s: %s", path, strerror(errno));
    } else if (snprintf(out, outlen, "%llu-%016llx", (unsigned long long)st.st_size,
                        (unsigned long long)h) >= (int)outlen) {
        set_err(err, errlen, "%s: identity buffer too small", path);
    } else {
        rc = 0;
    }
    close(fd);
    return rc;
}

/* fuzz_logfile.c -- libFuzzer target: reading a log file line by line,
 * plain, gzip and zstd (consumers/logfile.c).
 *
 * Input: byte 0 is a mode, byte 1 the max_line bound (0: the default,
 * 1 MiB), the rest is the payload. Mode bits:
 *   0..3  0: the payload is the file as is (mutated gzip/zstd framing,
 *            truncated members, garbage after a frame, ...)
 *         1: the payload is the text of a plain file
 *         2: the payload is the text, gzip-compressed here
 *         3: the payload is the text, zstd-compressed here
 *   4     put a filler line of 'x' before the text, so long that the
 *         text's middle falls on the reader's 1 MiB refill boundary:
 *         lines cross refills (the reader's "carry" path)
 *   8     compress in three members / frames instead of one
 *   16    cut the last bytes of the compressed file (a truncated log)
 *   32    with 4: the filler has no '\n', so it and the text's first line
 *         make one line of about 1 MiB (oversized for most max_line)
 * The file is an in-memory file (memfd) opened by its /proc/self/fd path,
 * so iqp_logfile_open() runs exactly as for a file on disk.
 *
 * Checked beyond "no crash, no leak, no UB": for modes 1..3 without
 * truncation the lines must equal those of an independent, obvious split
 * of the text (split at '\n', drop one trailing '\r', skip empty lines,
 * keep max_line bytes and report the full length); a truncated compressed
 * file must end in an error, never in silently missing lines.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "consumers/logfile.h"
#include "fuzz/fuzz.h"

#define CHUNK (1u << 20) /* the reader's refill size, see logfile.c */

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "fuzz_logfile: check failed: %s\n", #cond);       \
            abort();                                                          \
        }                                                                     \
    } while (0)

typedef struct buf {
    unsigned char *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) abort();
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void gzip_member(buf *out, const unsigned char *p, size_t n) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) abort();
    size_t bound = deflateBound(&zs, (uLong)n);
    unsigned char *tmp = malloc(bound);
    if (!tmp) abort();
    zs.next_in = (unsigned char *)p;
    zs.avail_in = (uInt)n;
    zs.next_out = tmp;
    zs.avail_out = (uInt)bound;
    if (deflate(&zs, Z_FINISH) != Z_STREAM_END) abort();
    put(out, tmp, bound - zs.avail_out);
    deflateEnd(&zs);
    free(tmp);
}

static void zstd_frame(buf *out, const unsigned char *p, size_t n) {
    size_t bound = ZSTD_compressBound(n);
    unsigned char *tmp = malloc(bound);
    if (!tmp) abort();
    size_t r = ZSTD_compress(tmp, bound, p, n, 1);
    if (ZSTD_isError(r)) abort();
    put(out, tmp, r);
    free(tmp);
}

/* The file's bytes for the mode: the text, compressed as asked. */
static void make_file(buf *file, int format, int members, const buf *text) {
    if (format <= 1) {
        put(file, text->p, text->len);
        return;
    }
    size_t cut[4] = {0, text->len / 3, 2 * text->len / 3, text->len};
    size_t parts = members ? 3 : 1;
    if (!members) cut[1] = text->len;
    for (size_t i = 0; i < parts; i++) {
        const unsigned char *p = text->p ? text->p + cut[i] : NULL;
        if (format == 2) gzip_member(file, p, cut[i + 1] - cut[i]);
        else zstd_frame(file, p, cut[i + 1] - cut[i]);
    }
}

/* The reference split: the next expected line of text from *pos, or 0. */
static int next_expected(const buf *text, size_t *pos, size_t *start, size_t *full) {
    while (*pos < text->len) {
        const unsigned char *p = text->p + *pos;
        const unsigned char *nl = memchr(p, '\n', text->len - *pos);
        size_t n = nl ? (size_t)(nl - p) : text->len - *pos;
        *start = *pos;
        *pos += n + (nl ? 1 : 0);
        if (n > 0 && p[n - 1] == '\r') n--;
        if (n > 0) {
            *full = n;
            return 1;
        }
    }
    return 0;
}

/* Reads the whole file and compares its lines with the reference split
 * when text is given: all of them, or when truncated, the lines before the
 * error (which must come). */
static void read_all(const char *path, size_t max_line, const buf *text, int truncated) {
    char err[512];
    iqp_logfile *lf = iqp_logfile_open(path, max_line, err, sizeof err);
    if (!lf) {
        CHECK(text == NULL); /* an existing memfd always opens */
        return;
    }
    size_t limit = max_line ? max_line : CHUNK;
    size_t pos = 0, start = 0, full = 0;
    const char *line;
    size_t len;
    int oversized, rc;
    uint64_t full_len;
    while ((rc = iqp_logfile_next(lf, &line, &len, &oversized, &full_len, err, sizeof err)) == 1) {
        CHECK(len > 0 && len <= limit && len <= full_len);
        CHECK(oversized == (full_len > limit));
        if (text) {
            CHECK(next_expected(text, &pos, &start, &full));
            CHECK(full_len == full && len == (full < limit ? full : limit));
            CHECK(memcmp(line, text->p + start, len) == 0);
        }
    }
    if (text && truncated) CHECK(rc == -1);
    else if (text) CHECK(rc == 0 && !next_expected(text, &pos, &start, &full));
    if (rc < 0) CHECK(err[0] != '\0');
    iqp_logfile_close(lf);
}

/* True when the file starts with gzip's (format 2) or zstd's (3) magic. */
static int has_magic(const buf *file, int format) {
    static const unsigned char gz[2] = {0x1f, 0x8b}, zst[4] = {0x28, 0xb5, 0x2f, 0xfd};
    if (format == 2) return file->len >= 2 && memcmp(file->p, gz, 2) == 0;
    return file->len >= 4 && memcmp(file->p, zst, 4) == 0;
}

int fuzz_logfile_init(void) { return 0; }

int fuzz_logfile_one(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int mode = data[0], format = mode & 3, filler = mode & 4, members = mode & 8, trunc = mode & 16;
    size_t max_line = data[1];
    buf text = {0}, file = {0};
    if (filler && format != 0) {
        size_t half = (size - 2) / 2, n = half < CHUNK - 1 ? CHUNK - 1 - half : 0;
        unsigned char *x = malloc(n + 1);
        if (!x) abort();
        memset(x, 'x', n);
        put(&text, x, n);
        free(x);
        if (!(mode & 32)) put(&text, "\n", 1);
    }
    put(&text, data + 2, size - 2);
    if (format == 0) put(&file, text.p, text.len);
    else make_file(&file, format, members, &text);
    int truncated = trunc && format >= 2 && file.len > 0;
    if (truncated) file.len -= 1 + data[1] % (file.len < 8 ? file.len : 8);

    int fd = memfd_create("fuzz_logfile", 0);
    CHECK(fd >= 0);
    CHECK(write(fd, file.p ? (const void *)file.p : "", file.len) == (ssize_t)file.len);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    /* The reader goes by the magic bytes, not by what we meant: a "plain"
     * text that starts like gzip or zstd is not plain, and nothing is
     * checked then. The cut (1..8 bytes) is always inside the last member
     * or frame, as the smallest is longer than 8 bytes; when it leaves less
     * than the magic, the file reads as plain text: nothing checked either. */
    int unclear = format == 1 ? has_magic(&file, 2) || has_magic(&file, 3)
                              : truncated && !has_magic(&file, format);
    if (format == 0 || unclear)
        read_all(path, max_line, NULL, 0);
    else
        read_all(path, max_line, &text, truncated);
    close(fd);
    free(text.p);
    free(file.p);
    return 0;
}

IQP_FUZZ_ENTRY(fuzz_logfile_init, fuzz_logfile_one)

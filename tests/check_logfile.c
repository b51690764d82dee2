/* check_logfile.c -- tests for consumers/logfile.c and consumers/deadletter.c.
 *
 * Every input is generated into a private temporary directory (mkdtemp
 * under $TMPDIR or /tmp) that main() removes at the end: plain files are
 * written directly, gzip ones with zlib's gzopen/gzwrite (gzopen "ab" adds
 * a second member), zstd ones with ZSTD_compress. The same content in the
 * three formats must give the same lines with the same line numbers.
 *
 * Dead-letter files are read back with jansson, one record per line, and
 * "raw_base64" is decoded with a decoder written here, independent of the
 * encoder under test.
 *
 * Identity: only the size and the first and last MiB are hashed, so a change
 * confined to the middle of a file bigger than 2 MiB is NOT detected; the
 * test asserts that documented behaviour, and that changes inside either
 * end are detected.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

/* logfile.h has a slash-star inside a comment, which trips -Wcomment. */
#include "consumers/logfile.h"
#include "consumers/deadletter.h"

static char tmpdir[4096];

/* ---- fixtures: writing inputs -------------------------------------------- */

static const char *tmp_path(const char *name) {
    static char paths[8][4200];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, sizeof(paths[0]), "%s/%s", tmpdir, name);
    return p;
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(data, 1, len, fp), len);
    ck_assert_int_eq(fclose(fp), 0);
}

static void write_gzip(const char *path, const char *mode, const void *data, size_t len) {
    gzFile gz = gzopen(path, mode);
    ck_assert_ptr_nonnull(gz);
    ck_assert_int_eq(gzwrite(gz, data, (unsigned)len), (int)len);
    ck_assert_int_eq(gzclose(gz), Z_OK);
}

/* Compresses data into one zstd frame; returns the malloc'd frame. */
static char *zstd_frame(const void *data, size_t len, size_t *outlen) {
    size_t cap = ZSTD_compressBound(len);
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    *outlen = ZSTD_compress(buf, cap, data, len, 3);
    ck_assert(!ZSTD_isError(*outlen));
    return buf;
}

static void write_zstd(const char *path, const void *data, size_t len) {
    size_t n;
    char *frame = zstd_frame(data, len, &n);
    write_file(path, frame, n);
    free(frame);
}

static char *read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static void truncate_to(const char *path, off_t len) {
    ck_assert_int_eq(truncate(path, len), 0);
}

/* ---- fixtures: reading lines --------------------------------------------- */

typedef struct {
    char text[64];   /* line as returned (tests keep lines short or check len) */
    size_t len;
    uint64_t line_no, full_len;
    int oversized;
} got_line;

typedef struct {
    got_line lines[64];
    size_t n;
    int rc;          /* last iqp_logfile_next result */
    char err[512];
    iqp_log_format format;
} got_lines;

/* Reads every line of path (at most 64 are recorded). */
static void read_lines(const char *path, size_t max_line, got_lines *g) {
    memset(g, 0, sizeof(*g));
    iqp_logfile *lf = iqp_logfile_open(path, max_line, g->err, sizeof(g->err));
    ck_assert_msg(lf != NULL, "open %s: %s", path, g->err);
    g->format = iqp_logfile_format(lf);
    const char *line;
    size_t len;
    int over;
    uint64_t full;
    while ((g->rc = iqp_logfile_next(lf, &line, &len, &over, &full, g->err,
                                     sizeof(g->err))) == 1) {
        ck_assert_uint_lt(g->n, 64);
        got_line *gl = &g->lines[g->n++];
        memcpy(gl->text, line, len < 63 ? len : 63);
        gl->len = len;
        gl->line_no = iqp_logfile_line_no(lf);
        gl->full_len = full;
        gl->oversized = over;
    }
    iqp_logfile_close(lf);
}

static void assert_line(const got_lines *g, size_t i, const char *text, uint64_t line_no) {
    ck_assert_uint_lt(i, g->n);
    ck_assert_str_eq(g->lines[i].text, text);
    ck_assert_uint_eq(g->lines[i].len, strlen(text));
    ck_assert_uint_eq(g->lines[i].line_no, line_no);
    ck_assert_int_eq(g->lines[i].oversized, 0);
    ck_assert_uint_eq(g->lines[i].full_len, strlen(text));
}

/* CRLF, an empty CRLF line, empty LF lines, spaces kept, no final newline. */
static const char SAMPLE[] = "first\r\n\r\n{\"a\":1}\n\n  x \r\n\nlast";

static void assert_sample(const got_lines *g) {
    ck_assert_int_eq(g->rc, 0);
    ck_assert_uint_eq(g->n, 4);
    assert_line(g, 0, "first", 1);
    assert_line(g, 1, "{\"a\":1}", 3);
    assert_line(g, 2, "  x ", 5);
    assert_line(g, 3, "last", 7);
}

/* ---- logfile: formats and lines ------------------------------------------ */

START_TEST(test_plain_lines) {
    const char *path = tmp_path("sample.jsonl");
    write_file(path, SAMPLE, sizeof(SAMPLE) - 1);
    got_lines g;
    read_lines(path, 1024, &g);
    ck_assert_int_eq(g.format, IQP_LOG_PLAIN);
    assert_sample(&g);
}
END_TEST

START_TEST(test_gzip_lines) {
    const char *path = tmp_path("sample.jsonl.gz");
    write_gzip(path, "wb", SAMPLE, sizeof(SAMPLE) - 1);
    got_lines g;
    read_lines(path, 1024, &g);
    ck_assert_int_eq(g.format, IQP_LOG_GZIP);
    assert_sample(&g);
}
END_TEST

START_TEST(test_zstd_lines) {
    const char *path = tmp_path("sample.jsonl.zst");
    write_zstd(path, SAMPLE, sizeof(SAMPLE) - 1);
    got_lines g;
    read_lines(path, 1024, &g);
    ck_assert_int_eq(g.format, IQP_LOG_ZSTD);
    assert_sample(&g);
}
END_TEST

START_TEST(test_format_by_magic_not_name) {
    const char *path = tmp_path("misnamed.gz"); /* plain content, .gz name */
    write_file(path, SAMPLE, sizeof(SAMPLE) - 1);
    got_lines g;
    read_lines(path, 1024, &g);
    ck_assert_int_eq(g.format, IQP_LOG_PLAIN);
    assert_sample(&g);
    path = tmp_path("misnamed.txt"); /* zstd content, .txt name */
    write_zstd(path, SAMPLE, sizeof(SAMPLE) - 1);
    read_lines(path, 1024, &g);
    ck_assert_int_eq(g.format, IQP_LOG_ZSTD);
    assert_sample(&g);
}
END_TEST

START_TEST(test_empty_inputs) {
    got_lines g;
    const char *path = tmp_path("empty");
    write_file(path, "", 0);
    read_lines(path, 1024, &g);
    ck_assert_int_eq(g.rc, 0);
    ck_assert_uint_eq(g.n, 0);
    path = tmp_path("blank");
    write_file(path, "\n\r\n\n", 4);
    read_lines(path, 1024, &g);
    ck_assert_int_eq(g.rc, 0);
    ck_assert_uint_eq(g.n, 0);
    path = tmp_path("empty.gz");
    write_gzip(path, "wb", "", 0);
    read_lines(path, 1024, &g);
    ck_assert_int_eq(g.rc, 0);
    ck_assert_int_eq(g.format, IQP_LOG_GZIP);
    ck_assert_uint_eq(g.n, 0);
}
END_TEST

START_TEST(test_counters_and_eof) {
    const char *path = tmp_path("counters.gz");
    write_gzip(path, "wb", SAMPLE, sizeof(SAMPLE) - 1);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    char err[256];
    iqp_logfile *lf = iqp_logfile_open(path, 1024, err, sizeof(err));
    ck_assert_ptr_nonnull(lf);
    ck_assert_uint_eq(iqp_logfile_size(lf), (uint64_t)st.st_size);
    const char *line;
    size_t len;
    int over;
    uint64_t full;
    while (iqp_logfile_next(lf, &line, &len, &over, &full, err, sizeof(err)) == 1) {
    }
    ck_assert_uint_eq(iqp_logfile_bytes_in(lf), (uint64_t)st.st_size);
    ck_assert_uint_eq(iqp_logfile_line_no(lf), 7);
    ck_assert_int_eq(iqp_logfile_next(lf, &line, &len, &over, &full, err, sizeof(err)), 0);
    iqp_logfile_close(lf);
}
END_TEST

START_TEST(test_gzip_concatenated_members) {
    const char *path = tmp_path("two-members.gz");
    write_gzip(path, "wb", "a1\na2\n", 6);
    write_gzip(path, "ab", "b1\r\nb2", 6);
    got_lines g;
    read_lines(path, 1024, &g);
    ck_assert_int_eq(g.rc, 0);
    ck_assert_uint_eq(g.n, 4);
    assert_line(&g, 0, "a1", 1);
    assert_line(&g, 1, "a2", 2);
    assert_line(&g, 2, "b1", 3);
    assert_line(&g, 3, "b2", 4);
}
END_TEST

START_TEST(test_zstd_concatenated_frames) {
    size_t n1, n2;
    char *f1 = zstd_frame("a1\na2\n", 6, &n1);
    char *f2 = zstd_frame("b1\nb2\n", 6, &n2);
    char *both = malloc(n1 + n2);
    ck_assert_ptr_nonnull(both);
    memcpy(both, f1, n1);
    memcpy(both + n1, f2, n2);
    const char *path = tmp_path("two-frames.zst");
    write_file(path, both, n1 + n2);
    free(f1);
    free(f2);
    free(both);
    got_lines g;
    read_lines(path, 1024, &g);
    ck_assert_int_eq(g.rc, 0);
    ck_assert_uint_eq(g.n, 4);
    assert_line(&g, 3, "b2", 4);
}
END_TEST

/* ---- logfile: oversized lines -------------------------------------------- */

static void assert_oversized_sample(const got_lines *g) {
    ck_assert_int_eq(g->rc, 0);
    ck_assert_uint_eq(g->n, 5);
    assert_line(g, 0, "short", 1);
    ck_assert_uint_eq(g->lines[1].len, 16);
    ck_assert_str_eq(g->lines[1].text, "0123456789abcdef");
    ck_assert_int_eq(g->lines[1].oversized, 1);
    ck_assert_uint_eq(g->lines[1].full_len, 100);
    ck_assert_uint_eq(g->lines[1].line_no, 2);
    assert_line(g, 2, "after", 3);
    assert_line(g, 3, "exactly-16-bytes", 4); /* 16 bytes + '\r': fits */
    ck_assert_int_eq(g->lines[4].oversized, 1); /* 17 bytes: does not */
    ck_assert_uint_eq(g->lines[4].full_len, 17);
    ck_assert_str_eq(g->lines[4].text, "seventeen-bytes-");
}

static size_t oversized_sample(char *buf) {
    size_t n = (size_t)sprintf(buf, "short\n");
    for (int i = 0; i < 100; i++) buf[n++] = "0123456789abcdef"[i % 16];
    n += (size_t)sprintf(buf + n, "\r\nafter\nexactly-16-bytes\r\nseventeen-bytes-!");
    return n;
}

START_TEST(test_oversized_line_all_formats) {
    char buf[512];
    size_t n = oversized_sample(buf);
    got_lines g;
    write_file(tmp_path("over.jsonl"), buf, n);
    read_lines(tmp_path("over.jsonl"), 16, &g);
    assert_oversized_sample(&g);
    write_gzip(tmp_path("over.gz"), "wb", buf, n);
    read_lines(tmp_path("over.gz"), 16, &g);
    assert_oversized_sample(&g);
    write_zstd(tmp_path("over.zst"), buf, n);
    read_lines(tmp_path("over.zst"), 16, &g);
    assert_oversized_sample(&g);
}
END_TEST

/* A 3 MiB line spans several 1 MiB reads: only its prefix is kept. */
static void check_huge_line(const char *path, size_t max_line, size_t huge) {
    char err[256];
    iqp_logfile *lf = iqp_logfile_open(path, max_line, err, sizeof(err));
    ck_assert_msg(lf != NULL, "%s", err);
    const char *line;
    size_t len;
    int over;
    uint64_t full;
    ck_assert_int_eq(iqp_logfile_next(lf, &line, &len, &over, &full, err, sizeof(err)), 1);
    ck_assert_uint_eq(len, 4);
    ck_assert_mem_eq(line, "head", 4);
    ck_assert_int_eq(iqp_logfile_next(lf, &line, &len, &over, &full, err, sizeof(err)), 1);
    ck_assert_uint_eq(full, huge);
    ck_assert_int_eq(over, huge > max_line);
    ck_assert_uint_eq(len, huge > max_line ? max_line : huge);
    size_t bad = 0;
    while (bad < len && line[bad] == 'a' + (int)(bad % 26)) bad++;
    ck_assert_uint_eq(bad, len);
    ck_assert_int_eq(iqp_logfile_next(lf, &line, &len, &over, &full, err, sizeof(err)), 1);
    ck_assert_uint_eq(len, 4);
    ck_assert_mem_eq(line, "tail", 4);
    ck_assert_uint_eq(iqp_logfile_line_no(lf), 3);
    ck_assert_int_eq(iqp_logfile_next(lf, &line, &len, &over, &full, err, sizeof(err)), 0);
    iqp_logfile_close(lf);
}

START_TEST(test_huge_line_across_reads) {
    size_t huge = 3u << 20;
    char *buf = malloc(huge + 16);
    ck_assert_ptr_nonnull(buf);
    memcpy(buf, "head\n", 5);
    for (size_t i = 0; i < huge; i++) buf[5 + i] = (char)('a' + (int)(i % 26));
    memcpy(buf + 5 + huge, "\ntail\n", 6);
    size_t n = huge + 11;
    write_file(tmp_path("huge.jsonl"), buf, n);
    write_zstd(tmp_path("huge.zst"), buf, n);
    write_gzip(tmp_path("huge.gz"), "wb", buf, n);
    free(buf);
    check_huge_line(tmp_path("huge.jsonl"), 16, huge);
    check_huge_line(tmp_path("huge.zst"), 16, huge);
    check_huge_line(tmp_path("huge.gz"), 16, huge);
    check_huge_line(tmp_path("huge.jsonl"), 4u << 20, huge); /* kept whole */
    check_huge_line(tmp_path("huge.gz"), 4u << 20, huge);
}
END_TEST

/* ---- logfile: errors ----------------------------------------------------- */

/* ~400 KiB of distinct lines, so compressed data spans many blocks. */
static char *many_lines(size_t count, size_t *len) {
    char *buf = malloc(count * 64);
    ck_assert_ptr_nonnull(buf);
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        n += (size_t)sprintf(buf + n, "{\"n\":%zu,\"h\":\"%08zx\"}\n", i, i * 2654435761u);
    *len = n;
    return buf;
}

/* Reads to the end and returns the last rc; err receives the message. */
static int drain(const char *path, char *err, size_t errlen, uint64_t *lines) {
    iqp_logfile *lf = iqp_logfile_open(path, 1024, err, errlen);
    ck_assert_msg(lf != NULL, "%s", err);
    const char *line;
    size_t len;
    int over, rc;
    uint64_t full;
    *lines = 0;
    while ((rc = iqp_logfile_next(lf, &line, &len, &over, &full, err, errlen)) == 1) (*lines)++;
    iqp_logfile_close(lf);
    return rc;
}

START_TEST(test_truncated_gzip) {
    size_t n;
    char *buf = many_lines(20000, &n);
    const char *path = tmp_path("truncated.gz");
    write_gzip(path, "wb", buf, n);
    free(buf);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    truncate_to(path, st.st_size / 2);
    char err[512] = "";
    uint64_t lines;
    ck_assert_int_eq(drain(path, err, sizeof(err), &lines), -1);
    ck_assert_uint_gt(lines, 0);
    ck_assert_uint_lt(lines, 20000);
    ck_assert_msg(strstr(err, path) != NULL, "err: %s", err);
    ck_assert_msg(strstr(err, "corrupt gzip data after line") != NULL, "err: %s", err);
    /* only the trailer is missing: still an error */
    write_gzip(path, "wb", "x\ny\n", 4);
    ck_assert_int_eq(stat(path, &st), 0);
    truncate_to(path, st.st_size - 4);
    ck_assert_int_eq(drain(path, err, sizeof(err), &lines), -1);
    ck_assert_msg(strstr(err, path) != NULL, "err: %s", err);
    /* a bare gzip magic */
    write_file(path, "\x1f\x8b", 2);
    ck_assert_int_eq(drain(path, err, sizeof(err), &lines), -1);
    ck_assert_uint_eq(lines, 0);
}
END_TEST

START_TEST(test_corrupt_gzip) {
    size_t n;
    char *buf = many_lines(20000, &n);
    const char *path = tmp_path("corrupt.gz");
    write_gzip(path, "wb", buf, n);
    free(buf);
    char *gz = read_file(path, &n);
    for (size_t i = n / 2; i < n / 2 + 64; i++) gz[i] ^= 0x5a;
    write_file(path, gz, n);
    free(gz);
    char err[512] = "";
    uint64_t lines;
    ck_assert_int_eq(drain(path, err, sizeof(err), &lines), -1);
    ck_assert_msg(strstr(err, path) != NULL, "err: %s", err);
    ck_assert_msg(strstr(err, "corrupt gzip data after line") != NULL, "err: %s", err);
}
END_TEST

START_TEST(test_truncated_zstd) {
    size_t n;
    char *buf = many_lines(20000, &n);
    const char *path = tmp_path("truncated.zst");
    write_zstd(path, buf, n);
    free(buf);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    truncate_to(path, st.st_size / 2);
    char err[512] = "";
    uint64_t lines;
    ck_assert_int_eq(drain(path, err, sizeof(err), &lines), -1);
    ck_assert_uint_lt(lines, 20000);
    ck_assert_msg(strstr(err, path) != NULL, "err: %s", err);
    ck_assert_msg(strstr(err, "corrupt zstd data after line") != NULL, "err: %s", err);
    /* the checksum / last block missing */
    write_zstd(path, "x\ny\n", 4);
    ck_assert_int_eq(stat(path, &st), 0);
    truncate_to(path, st.st_size - 1);
    ck_assert_int_eq(drain(path, err, sizeof(err), &lines), -1);
}
END_TEST

START_TEST(test_open_errors) {
    char err[512] = "";
    const char *missing = tmp_path("does-not-exist.jsonl");
    ck_assert_ptr_null(iqp_logfile_open(missing, 1024, err, sizeof(err)));
    ck_assert_msg(strstr(err, missing) != NULL, "err: %s", err);
    ck_assert_msg(strstr(err, "cannot open") != NULL, "err: %s", err);
    ck_assert_msg(strstr(err, strerror(ENOENT)) != NULL, "err: %s", err);
    err[0] = '\0';
    ck_assert_ptr_null(iqp_logfile_open(tmpdir, 1024, err, sizeof(err)));
    ck_assert_msg(strstr(err, tmpdir) != NULL, "err: %s", err);
}
END_TEST

START_TEST(test_stdin_dash) {
    const char *path = tmp_path("stdin.gz");
    write_gzip(path, "wb", SAMPLE, sizeof(SAMPLE) - 1);
    int saved = dup(STDIN_FILENO);
    int fd = open(path, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_ge(dup2(fd, STDIN_FILENO), 0);
    close(fd);
    char err[256];
    iqp_logfile *lf = iqp_logfile_open("-", 1024, err, sizeof(err));
    ck_assert_msg(lf != NULL, "%s", err);
    ck_assert_int_eq(iqp_logfile_format(lf), IQP_LOG_GZIP);
    ck_assert_uint_eq(iqp_logfile_size(lf), 0);
    const char *line;
    size_t len;
    int over;
    uint64_t full, count = 0;
    while (iqp_logfile_next(lf, &line, &len, &over, &full, err, sizeof(err)) == 1) count++;
    ck_assert_uint_eq(count, 4);
    iqp_logfile_close(lf);
    ck_assert_int_ge(dup2(saved, STDIN_FILENO), 0); /* stdin was not closed */
    close(saved);
}
END_TEST

/* ---- logfile: large input ------------------------------------------------ */

static void check_large(const char *path, size_t count) {
    char err[256], want[64];
    iqp_logfile *lf = iqp_logfile_open(path, 1024, err, sizeof(err));
    ck_assert_msg(lf != NULL, "%s", err);
    const char *line;
    size_t len, i = 0;
    int over, rc;
    uint64_t full;
    while ((rc = iqp_logfile_next(lf, &line, &len, &over, &full, err, sizeof(err))) == 1) {
        int wn = sprintf(want, "{\"n\":%zu,\"h\":\"%08zx\"}", i, i * 2654435761u);
        if (len != (size_t)wn || memcmp(line, want, len) != 0)
            ck_abort_msg("%s line %zu: got %.*s", path, i + 1, (int)len, line);
        i++;
        ck_assert_uint_eq(iqp_logfile_line_no(lf), i);
    }
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_uint_eq(i, count);
    iqp_logfile_close(lf);
}

START_TEST(test_large_file) {
    size_t n, count = 200000;
    char *buf = many_lines(count, &n);
    ck_assert_uint_gt(n, 4u << 20); /* spans several 1 MiB reads */
    write_file(tmp_path("large.jsonl"), buf, n);
    write_gzip(tmp_path("large.gz"), "wb", buf, n);
    write_zstd(tmp_path("large.zst"), buf, n);
    free(buf);
    check_large(tmp_path("large.jsonl"), count);
    check_large(tmp_path("large.gz"), count);
    check_large(tmp_path("large.zst"), count);
}
END_TEST

/* ---- logfile: identity --------------------------------------------------- */

static void identity_of(const char *path, char *out) {
    char err[256];
    ck_assert_msg(iqp_logfile_identity(path, out, 48, err, sizeof(err)) == 0, "%s", err);
}

START_TEST(test_identity) {
    size_t big = 3u << 20;
    char *buf = malloc(big);
    ck_assert_ptr_nonnull(buf);
    for (size_t i = 0; i < big; i++) buf[i] = (char)(i * 7 + (i >> 12));
    char a[48], b[48], want[48];
    write_file(tmp_path("id-a"), buf, big);
    write_file(tmp_path("id-b"), buf, big);
    identity_of(tmp_path("id-a"), a);
    identity_of(tmp_path("id-b"), b);
    ck_assert_str_eq(a, b);
    snprintf(want, sizeof(want), "%zu-", big);
    ck_assert_msg(strncmp(a, want, strlen(want)) == 0, "identity %s", a);
    ck_assert_uint_eq(strlen(a), strlen(want) + 16);

    /* documented: a change strictly between the first and last MiB is not seen */
    buf[big / 2] ^= 1;
    write_file(tmp_path("id-b"), buf, big);
    identity_of(tmp_path("id-b"), b);
    ck_assert_str_eq(a, b);
    buf[big / 2] ^= 1;

    buf[1000] ^= 1; /* inside the first MiB */
    write_file(tmp_path("id-b"), buf, big);
    identity_of(tmp_path("id-b"), b);
    ck_assert_str_ne(a, b);
    buf[1000] ^= 1;

    buf[big - 1000] ^= 1; /* inside the last MiB */
    write_file(tmp_path("id-b"), buf, big);
    identity_of(tmp_path("id-b"), b);
    ck_assert_str_ne(a, b);
    buf[big - 1000] ^= 1;

    write_file(tmp_path("id-b"), buf, big - 1); /* the size counts */
    identity_of(tmp_path("id-b"), b);
    ck_assert_str_ne(a, b);
    free(buf);

    write_file(tmp_path("id-small"), "abc\n", 4);
    identity_of(tmp_path("id-small"), b);
    ck_assert_msg(strncmp(b, "4-", 2) == 0, "identity %s", b);
    write_file(tmp_path("id-empty"), "", 0);
    identity_of(tmp_path("id-empty"), b);
    ck_assert_msg(strncmp(b, "0-", 2) == 0, "identity %s", b);
}
END_TEST

START_TEST(test_identity_errors) {
    char out[48], err[512] = "";
    const char *missing = tmp_path("no-such-file");
    ck_assert_int_eq(iqp_logfile_identity(missing, out, sizeof(out), err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, missing) != NULL, "err: %s", err);
    ck_assert_int_eq(iqp_logfile_identity(tmpdir, out, sizeof(out), err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, tmpdir) != NULL, "err: %s", err);
    ck_assert_int_eq(iqp_logfile_identity("-", out, sizeof(out), err, sizeof(err)), -1);
}
END_TEST

/* ---- dead letters: reading them back ------------------------------------- */

/* Independent base64 decoder; returns the decoded length or -1. */
static long b64_decode(const char *in, unsigned char *out) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned acc = 0;
    int bits = 0;
    long n = 0;
    for (const char *p = in; *p && *p != '='; p++) {
        const char *hit = strchr(alphabet, *p);
        if (hit == NULL) return -1;
        acc = (acc << 6) | (unsigned)(hit - alphabet);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return n;
}

/* Loads every line of a dead-letter file as a JSON object. */
static size_t load_records(const char *path, json_t **recs, size_t max) {
    FILE *fp = fopen(path, "r");
    ck_assert_ptr_nonnull(fp);
    char *line = NULL;
    size_t cap = 0, n = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, fp)) > 0) {
        ck_assert_uint_lt(n, max);
        ck_assert_int_eq(line[len - 1], '\n');
        json_error_t jerr;
        recs[n] = json_loadb(line, (size_t)len, 0, &jerr);
        ck_assert_msg(recs[n] != NULL, "line %zu: %s", n + 1, jerr.text);
        ck_assert(json_is_object(recs[n]));
        n++;
    }
    free(line);
    fclose(fp);
    return n;
}

/* Asserts the record's keys, in order (space-separated list). */
static void assert_keys(json_t *rec, const char *keys) {
    char got[256] = "";
    for (void *it = json_object_iter(rec); it; it = json_object_iter_next(rec, it)) {
        if (got[0]) strcat(got, " ");
        strcat(got, json_object_iter_key(it));
    }
    ck_assert_str_eq(got, keys);
}

static void assert_common(json_t *rec, const char *code, const char *source, long long pos) {
    ck_assert_str_eq(json_string_value(json_object_get(rec, "code")), code);
    const char *reason = json_string_value(json_object_get(rec, "reason"));
    ck_assert_ptr_nonnull(reason);
    ck_assert_msg(strncmp(reason, code, strlen(code)) == 0, "reason %s", reason);
    ck_assert_str_eq(json_string_value(json_object_get(rec, "source")), source);
    ck_assert_int_eq(json_integer_value(json_object_get(rec, "position")), pos);
}

static void assert_raw_base64(json_t *rec, const void *want, size_t wantlen) {
    const char *b64 = json_string_value(json_object_get(rec, "raw_base64"));
    ck_assert_ptr_nonnull(b64);
    unsigned char *dec = malloc(strlen(b64) + 1);
    ck_assert_ptr_nonnull(dec);
    ck_assert_int_eq(b64_decode(b64, dec), (long)wantlen);
    ck_assert_mem_eq(dec, want, wantlen);
    free(dec);
}

/* ---- dead letters -------------------------------------------------------- */

START_TEST(test_deadletter_records) {
    const char *path = tmp_path("dead.jsonl");
    char err[512];
    iqp_deadletter *dl = iqp_deadletter_open_file(path, err, sizeof(err));
    ck_assert_msg(dl != NULL, "%s", err);

    const char valid[] = "{\"q\":\"caf\xc3\xa9 \\\"x\\\"\",\n\t\"e\":\"\xe2\x82\xac\"}";
    ck_assert_int_eq(iqp_deadletter_write(dl, "bad_json", "bad_json: -: unexpected end",
                                          "a.jsonl", 7, valid, sizeof(valid) - 1,
                                          sizeof(valid) - 1, err, sizeof(err)), 0);
    const unsigned char invalid[] = {0xff, 0xfe, 0x00, 0x80, 'a', 0xc3};
    ck_assert_int_eq(iqp_deadletter_write(dl, "bad_utf8", "bad_utf8: query: not UTF-8",
                                          "b.jsonl.gz", 8, (const char *)invalid,
                                          sizeof(invalid), sizeof(invalid), err,
                                          sizeof(err)), 0);
    char *big = malloc(10000);
    ck_assert_ptr_nonnull(big);
    for (int i = 0; i < 10000; i++) big[i] = (char)('a' + i % 26);
    ck_assert_int_eq(iqp_deadletter_write(dl, "too_large", "too_large: -: 10000 bytes",
                                          "c.zst", 9, big, 10000, 10000, err, sizeof(err)), 0);
    /* cut by the caller (the log reader kept 100 of 5000 bytes) */
    ck_assert_int_eq(iqp_deadletter_write(dl, "too_large", "too_large: -: 5000 bytes",
                                          "topic/3", 123456789012LL, big, 100, 5000, err,
                                          sizeof(err)), 0);
    /* the 4096-byte cut splits a two-byte character: it is dropped, raw stays text */
    memset(big, 'x', 4095);
    memcpy(big + 4095, "\xc3\xa9zz", 4);
    ck_assert_int_eq(iqp_deadletter_write(dl, "too_large", "too_large: -: 4099 bytes",
                                          "d", 10, big, 4099, 4099, err, sizeof(err)), 0);
    /* invalid and oversized: base64 of the first 4096 bytes */
    big[0] = (char)0xff;
    ck_assert_int_eq(iqp_deadletter_write(dl, "too_large", "too_large: -: 4099 bytes",
                                          "e", 11, big, 4099, 4099, err, sizeof(err)), 0);
    /* invalid UTF-8 in the text fields is replaced, the record stays JSON */
    ck_assert_int_eq(iqp_deadletter_write(dl, "missing_field", "missing_field: \xff: absent",
                                          "f\xfe.jsonl", 0, "", 0, 0, err, sizeof(err)), 0);
    ck_assert_uint_eq(iqp_deadletter_count(dl), 7);
    ck_assert_int_eq(iqp_deadletter_close(dl, err, sizeof(err)), 0);

    json_t *recs[16];
    ck_assert_uint_eq(load_records(path, recs, 16), 7);

    assert_keys(recs[0], "reason code source position raw");
    assert_common(recs[0], "bad_json", "a.jsonl", 7);
    ck_assert_str_eq(json_string_value(json_object_get(recs[0], "reason")),
                     "bad_json: -: unexpected end");
    ck_assert_uint_eq(json_string_length(json_object_get(recs[0], "raw")), sizeof(valid) - 1);
    ck_assert_mem_eq(json_string_value(json_object_get(recs[0], "raw")), valid, sizeof(valid) - 1);

    assert_keys(recs[1], "reason code source position raw_base64");
    assert_common(recs[1], "bad_utf8", "b.jsonl.gz", 8);
    assert_raw_base64(recs[1], invalid, sizeof(invalid));

    assert_keys(recs[2], "reason code source position truncated size raw");
    assert_common(recs[2], "too_large", "c.zst", 9);
    ck_assert(json_is_true(json_object_get(recs[2], "truncated")));
    ck_assert_int_eq(json_integer_value(json_object_get(recs[2], "size")), 10000);
    ck_assert_uint_eq(json_string_length(json_object_get(recs[2], "raw")), 4096);

    assert_keys(recs[3], "reason code source position truncated size raw");
    assert_common(recs[3], "too_large", "topic/3", 123456789012LL);
    ck_assert_int_eq(json_integer_value(json_object_get(recs[3], "size")), 5000);
    ck_assert_uint_eq(json_string_length(json_object_get(recs[3], "raw")), 100);

    assert_keys(recs[4], "reason code source position truncated size raw");
    ck_assert_int_eq(json_integer_value(json_object_get(recs[4], "size")), 4099);
    ck_assert_uint_eq(json_string_length(json_object_get(recs[4], "raw")), 4095);

    assert_keys(recs[5], "reason code source position truncated size raw_base64");
    assert_raw_base64(recs[5], big, 4096);

    assert_keys(recs[6], "reason code source position raw");
    ck_assert_str_eq(json_string_value(json_object_get(recs[6], "reason")),
                     "missing_field: \xef\xbf\xbd: absent");
    ck_assert_str_eq(json_string_value(json_object_get(recs[6], "source")),
                     "f\xef\xbf\xbd.jsonl");
    ck_assert_str_eq(json_string_value(json_object_get(recs[6], "raw")), "");

    for (int i = 0; i < 7; i++) json_decref(recs[i]);
    free(big);
}
END_TEST

START_TEST(test_deadletter_compact_and_append) {
    const char *path = tmp_path("dead-append.jsonl");
    char err[512];
    for (int round = 0; round < 2; round++) {
        iqp_deadletter *dl = iqp_deadletter_open_file(path, err, sizeof(err));
        ck_assert_msg(dl != NULL, "%s", err);
        ck_assert_int_eq(iqp_deadletter_write(dl, "bad_json", "bad_json: -: x", "s", 1, "{",
                                              1, 1, err, sizeof(err)), 0);
        ck_assert_uint_eq(iqp_deadletter_count(dl), 1);
        ck_assert_int_eq(iqp_deadletter_close(dl, err, sizeof(err)), 0);
    }
    size_t n;
    char *text = read_file(path, &n);
    text[n] = '\0';
    const char *one =
        "{\"reason\":\"bad_json: -: x\",\"code\":\"bad_json\",\"source\":\"s\","
        "\"position\":1,\"raw\":\"{\"}\n";
    char want[512];
    snprintf(want, sizeof(want), "%s%s", one, one);
    ck_assert_str_eq(text, want);
    free(text);
}
END_TEST

START_TEST(test_deadletter_counting_sink) {
    char err[256];
    iqp_deadletter *dl = iqp_deadletter_open_file(NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(dl);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(iqp_deadletter_write(dl, "c", "c: r", "s", (uint64_t)i, "\xff", 1, 1,
                                              err, sizeof(err)), 0);
    ck_assert_uint_eq(iqp_deadletter_count(dl), 3);
    ck_assert_int_eq(iqp_deadletter_close(dl, err, sizeof(err)), 0);
}
END_TEST

START_TEST(test_deadletter_errors) {
    char err[512] = "";
    const char *bad = tmp_path("no-such-dir/dead.jsonl");
    ck_assert_ptr_null(iqp_deadletter_open_file(bad, err, sizeof(err)));
    ck_assert_msg(strstr(err, bad) != NULL, "err: %s", err);
    if (access("/dev/full", W_OK) != 0) return;
    iqp_deadletter *dl = iqp_deadletter_open_file("/dev/full", err, sizeof(err));
    ck_assert_ptr_nonnull(dl);
    char raw[1024];
    memset(raw, 'r', sizeof(raw));
    int failed = 0;
    for (int i = 0; i < 200 && !failed; i++)
        failed = iqp_deadletter_write(dl, "c", "c: r", "s", 1, raw, sizeof(raw), sizeof(raw),
                                      err, sizeof(err)) != 0;
    ck_assert_int_eq(failed, 1); /* 200 KiB cannot all sit in the buffer */
    ck_assert_msg(strstr(err, "/dev/full") != NULL, "err: %s", err);
    ck_assert_int_eq(iqp_deadletter_close(dl, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, strerror(ENOSPC)) != NULL, "err: %s", err);
}
END_TEST

/* ---- runner -------------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static Suite *logfile_suite(void) {
    Suite *s = suite_create("logfile");
    TCase *tc = tcase_create("logfile");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_plain_lines);
    tcase_add_test(tc, test_gzip_lines);
    tcase_add_test(tc, test_zstd_lines);
    tcase_add_test(tc, test_format_by_magic_not_name);
    tcase_add_test(tc, test_empty_inputs);
    tcase_add_test(tc, test_counters_and_eof);
    tcase_add_test(tc, test_gzip_concatenated_members);
    tcase_add_test(tc, test_zstd_concatenated_frames);
    tcase_add_test(tc, test_oversized_line_all_formats);
    tcase_add_test(tc, test_huge_line_across_reads);
    tcase_add_test(tc, test_truncated_gzip);
    tcase_add_test(tc, test_corrupt_gzip);
    tcase_add_test(tc, test_truncated_zstd);
    tcase_add_test(tc, test_open_errors);
    tcase_add_test(tc, test_stdin_dash);
    tcase_add_test(tc, test_large_file);
    tcase_add_test(tc, test_identity);
    tcase_add_test(tc, test_identity_errors);
    suite_add_tcase(s, tc);
    TCase *dl = tcase_create("deadletter");
    tcase_add_test(dl, test_deadletter_records);
    tcase_add_test(dl, test_deadletter_compact_and_append);
    tcase_add_test(dl, test_deadletter_counting_sink);
    tcase_add_test(dl, test_deadletter_errors);
    suite_add_tcase(s, dl);
    return s;
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/iqp-logfile-XXXXXX", base && *base ? base : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        fprintf(stderr, "mkdtemp %s: %s\n", tmpdir, strerror(errno));
        return 1;
    }
    SRunner *sr = srunner_create(logfile_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? 0 : 1;
}

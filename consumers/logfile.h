/* logfile.h -- reading event logs line by line: plain JSONL, gzip, zstd, or
 * standard input ("-").
 *
 * Owns: opening a log, detecting its compression from its magic bytes (not
 * its name), streaming decompression (zlib, libzstd), splitting into lines,
 * and the content identity that lets a backfill recognise a file it has
 * already ingested.
 *
 * May not touch: decoding or counting; it hands out raw lines only.
 *
 * Lines: a final line without '\n' is still a line; a trailing '\r' is
 * stripped; empty lines are skipped (but counted in line_no). A line longer
 * than max_line bytes is not held in memory whole: the reader returns its
 * first max_line bytes with *oversized set and its full length in
 * *full_len, and resumes at the next line.
 */
#ifndef IQP_LOGFILE_H
#define IQP_LOGFILE_H

#include <stddef.h>
#include <stdint.h>

typedef struct iqp_logfile iqp_logfile;

typedef enum { IQP_LOG_PLAIN = 0, IQP_LOG_GZIP, IQP_LOG_ZSTD } iqp_log_format;

/* Opens path ("-" = stdin). max_line bounds memory per line. On failure
 * returns NULL with a message naming the file in err. */
iqp_logfile *iqp_logfile_open(const char *path, size_t max_line, char *err, size_t errlen);

/* Next non-empty line. Returns 1 with *line and *len set (valid until the next
 * call), 0 at end of input, -1 on a read or decompression error (message in
 * err, naming the file and the line). */
int iqp_logfile_next(iqp_logfile *lf, const char **line, size_t *len, int *oversized,
                     uint64_t *full_len, char *err, size_t errlen);

/* 1-based number of the line last returned. */
uint64_t iqp_logfile_line_no(const iqp_logfile *lf);

/* Bytes consumed from the underlying file so far (compressed bytes). */
uint64_t iqp_logfile_bytes_in(const iqp_logfile *lf);

/* Total size of the underlying file, or 0 when unknown (stdin, pipes). */
uint64_t iqp_logfile_size(const iqp_logfile *lf);

iqp_log_format iqp_logfile_format(const iqp_logfile *lf);

void iqp_logfile_close(iqp_logfile *lf);

/* Content identity of a regular file: "<size>-<xxh3 of first and last 1 MiB
 * as 16 hex digits>" into out (at least 48 bytes). Returns 0, or -1 with a
 * message in err when the file cannot be read or is not a regular file. */
int iqp_logfile_identity(const char *path, char *out, size_t outlen, char *err, size_t errlen);

#endif

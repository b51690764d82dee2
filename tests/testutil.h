/* testutil.h -- small helpers shared by the Check tests.
 *
 * Temporary directories, running the iqp binary through the shell and
 * capturing what it prints, reading whole files. Everything returned is
 * malloc'd and belongs to the caller.
 */
#ifndef IQP_TESTUTIL_H
#define IQP_TESTUTIL_H

#include <stddef.h>

/* Creates a new directory under $TMPDIR (or /tmp) whose name contains tag.
 * Returns its malloc'd path, or NULL on failure. */
char *tu_mkdtemp(const char *tag);

/* Removes path and everything under it (no error when it does not exist). */
void tu_rmrf(const char *path);

/* Runs cmdline with /bin/sh -c. When out is not NULL, *out receives the
 * command's standard output (malloc'd, NUL-terminated; standard error is
 * passed through). Returns the exit status, or -1 when the command could
 * not be run or did not exit normally. */
int tu_run(const char *cmdline, char **out);

/* Path of the iqp binary of this build: IQP_BUILDDIR "/iqp". */
const char *tu_iqp(void);

/* Reads a whole file: malloc'd, NUL-terminated; its length (without the
 * NUL) in *len when len is not NULL. NULL when it cannot be read. */
char *tu_read_file(const char *path, size_t *len);

/* printf into a malloc'd string. */
char *tu_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

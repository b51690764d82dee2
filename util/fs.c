/* fs.c -- small file-system helpers (fs.h). */
#include "util/fs.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

int iqp_rmrf(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return errno == ENOENT ? 0 : -1;
    return nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

char *iqp_parent_dir(const char *path) {
    char *parent = strdup(path), *slash;
    if (!parent) abort();
    if (!(slash = strrchr(parent, '/'))) return strcpy(parent, "."), parent;
    *(slash == parent ? slash + 1 : slash) = '\0';
    return parent;
}

/* fs.h -- small file-system helpers several modules share.
 *
 * Owns: removing a directory tree and naming a path's parent directory.
 * May not touch: anything else. util/ is on the ground floor: this file
 * includes nothing of the project.
 */
#ifndef IQP_UTIL_FS_H
#define IQP_UTIL_FS_H

/* Removes path and everything under it (nothing there is fine): 0 or -1
 * with errno. Does not follow symbolic links. */
int iqp_rmrf(const char *path);

/* The directory part of path ("." when it has none), malloc'd. */
char *iqp_parent_dir(const char *path);

#endif

/* status.h -- the one way a module says how a call went.
 *
 * Owns: the status codes of the pipeline's modules. A call that can fail
 * returns an iqp_rc and writes what went wrong, as one line naming the
 * problem, into a message buffer its caller gave (char *err, size_t
 * errlen) or that the module keeps (..._error()), as libiqp does with
 * iqp_status and iqp_client_errstr().
 *
 * The values are the 0 / -1 / -2 the modules returned before there was a
 * name for them, so a caller that still compares with them reads the same:
 *   IQP_RC_OK       done;
 *   IQP_RC_FAILED   an operational failure (I/O, a server that does not
 *                   answer or refuses a command): worth retrying later,
 *                   exit 1 for a command;
 *   IQP_RC_REFUSED  the other side is not ours to write (another layout,
 *                   another writer's lease): retrying soon will not help.
 *
 * May not touch: anything; model/ is the ground floor and this file
 * includes nothing of the project.
 */
#ifndef IQP_STATUS_H
#define IQP_STATUS_H

typedef enum iqp_rc {
    IQP_RC_OK = 0,
    IQP_RC_FAILED = -1,
    IQP_RC_REFUSED = -2,
} iqp_rc;

#endif

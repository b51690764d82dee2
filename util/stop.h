/* stop.h -- the one shutdown flag of the process.
 *
 * Owns: "a stop was asked for". A SIGINT/SIGTERM handler (cli/) calls
 * iqp_stop_request; the long-running loops (the Kafka stream, the backfill
 * of a log file, the export replay, `iqp produce`) poll iqp_stop_requested
 * at their batch boundaries and wind down cleanly: flush, commit, exit.
 * One flag for every loop, so a handler does not need to know which loop
 * is running.
 *
 * May not touch: anything else; it installs no handler itself (cli/ does,
 * with iqp_cli_on_stop_signals). util/ is on the ground floor: this file
 * includes nothing of the project.
 */
#ifndef IQP_STOP_H
#define IQP_STOP_H

/* Asks every running loop to stop. Async-signal-safe. */
void iqp_stop_request(void);

/* 1 once iqp_stop_request was called, else 0. The flag is never cleared:
 * a process that was asked to stop stays stopping. */
int iqp_stop_requested(void);

#endif

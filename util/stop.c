/* stop.c -- the one shutdown flag (stop.h). */
#include "util/stop.h"

#include <signal.h>

/* Set from a signal handler, read by the loops between batches. */
static volatile sig_atomic_t stop_flag;

void iqp_stop_request(void) { stop_flag = 1; }

int iqp_stop_requested(void) { return stop_flag != 0; }

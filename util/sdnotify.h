/* sdnotify.h -- telling systemd how a service is doing (sd_notify(3)).
 *
 * Owns: the READY / STOPPING / WATCHDOG / STATUS messages a Type=notify
 * unit expects, and the watchdog's interval. Built on libsystemd when
 * configure found it (--with-systemd, on by default when libsystemd-dev
 * is installed); without it every call is a no-op, so the same code runs
 * under systemd, under another supervisor and in a terminal.
 *
 * May not touch: anything else; callers decide when they are ready, when
 * they stop and how often their main loop turns.
 *
 * Outside systemd ($NOTIFY_SOCKET unset) the calls do nothing either.
 */
#ifndef IQP_SDNOTIFY_H
#define IQP_SDNOTIFY_H

#include <stdint.h>

/* 1 when this build talks to systemd (libsystemd linked in), else 0. */
int iqp_sd_available(void);

/* Sends one state line, e.g. "READY=1" or "STATUS=counting". */
void iqp_sd_notify(const char *state);

/* The watchdog interval systemd asked for (WatchdogSec=), in ms; 0 when
 * there is no watchdog for this process. */
int64_t iqp_sd_watchdog_ms(void);

/* A main loop's heartbeat: sends WATCHDOG=1 when at least a third of the
 * watchdog interval has passed since the last one (now_ms: a monotonic
 * clock). *last_ms keeps the time of the last ping; start it at 0. */
void iqp_sd_watchdog_tick(int64_t interval_ms, int64_t now_ms, int64_t *last_ms);

#endif

/* sdnotify.c -- sd_notify(3) through libsystemd, or nothing (sdnotify.h). */
#include "util/sdnotify.h"

#include "config.h"

#ifdef IQP_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>

int iqp_sd_available(void) { return 1; }

void iqp_sd_notify(const char *state) { (void)sd_notify(0, state); }

int64_t iqp_sd_watchdog_ms(void) {
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0) return 0;
    return (int64_t)(usec / 1000) > 0 ? (int64_t)(usec / 1000) : 1;
}
#else
int iqp_sd_available(void) { return 0; }

void iqp_sd_notify(const char *state) { (void)state; }

int64_t iqp_sd_watchdog_ms(void) { return 0; }
#endif

void iqp_sd_watchdog_tick(int64_t interval_ms, int64_t now_ms, int64_t *last_ms) {
    if (interval_ms <= 0 || now_ms - *last_ms < interval_ms / 3) return;
    *last_ms = now_ms;
    iqp_sd_notify("WATCHDOG=1");
}

/* clock.h -- the two clocks every part of iqp reads, in one place.
 *
 * Owns: reading the wall clock (event time, watermarks, "now" in metrics and
 * stamps) and the monotonic clock (timeouts, rates, backoff). Wall time can
 * jump; anything measuring a duration uses the monotonic one.
 *
 * May not touch: anything else; these are header-only, side-effect free.
 */
#ifndef IQP_CLOCK_H
#define IQP_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
static inline int64_t iqp_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds on the monotonic clock; only differences mean anything. */
static inline int64_t iqp_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Seconds on the monotonic clock, with sub-millisecond resolution. */
static inline double iqp_mono_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

#endif

/* deadletter.h -- where rejected events go, with their reason.
 *
 * Owns: the dead-letter file sink (JSON lines). Each record is one line:
 *   {"reason": "<code>: <field>: <detail>", "code": "<code>",
 *    "source": "<file or topic>", "position": <line or offset>,
 *    "raw": "<the original bytes>"}
 * When the original bytes are not valid UTF-8, "raw_base64" replaces "raw".
 * Oversized events keep only their first 4 KiB under "raw" / "raw_base64"
 * and say so with "truncated": true and "size": <full length>.
 * The Kafka topic sink (issue 3) will implement the same interface.
 *
 * May not touch: counting; it never fails the caller's run for a bad event,
 * only for a sink that cannot be written (an operational failure).
 */
#ifndef IQP_DEADLETTER_H
#define IQP_DEADLETTER_H

#include <stddef.h>
#include <stdint.h>

typedef struct iqp_deadletter iqp_deadletter;

/* Opens (appends to) path. NULL path = a sink that only counts. */
iqp_deadletter *iqp_deadletter_open_file(const char *path, char *err, size_t errlen);

/* Writes one record. code is the stable code name, reason the full text.
 * full_len is the event's real size (>= rawlen when truncated).
 * Returns 0, or -1 with a message in err on a write failure. */
int iqp_deadletter_write(iqp_deadletter *dl, const char *code, const char *reason,
                         const char *source, uint64_t position, const char *raw,
                         size_t rawlen, uint64_t full_len, char *err, size_t errlen);

uint64_t iqp_deadletter_count(const iqp_deadletter *dl);

/* Flushes and closes; returns -1 with err if the final flush failed. */
int iqp_deadletter_close(iqp_deadletter *dl, char *err, size_t errlen);

#endif

/* logfmt.h -- one JSON object per log line on stderr (--log-format json).
 *
 * Owns: turning whatever a process writes to stderr into structured
 * events, without changing the code that writes: iqp's own lines
 * ("iqp stream: ..."), librdkafka's ("%3|1733212345.123|FAIL|rdkafka#..|
 * ..."), anything else. stderr is pointed at a pipe; a thread reads it
 * line by line and writes to the original stderr
 *   {"time":"2026-12-03T08:15:00.123Z","level":"info","component":"stream",
 *    "msg":"...", ...fields}
 * where level comes from librdkafka's syslog level when the line is
 * librdkafka's (fields "facility", "client"), "error" for iqp's failure
 * lines (written through iqp_cli_fail / iqp_cli_usage_error, which mark
 * them) and "info" otherwise.
 *
 * May not touch: what is logged; the text format stays the default.
 */
#ifndef IQP_LOGFMT_H
#define IQP_LOGFMT_H

/* The marker iqp's error reporting puts in front of a line so the JSON
 * formatter gives it level "error" (the text format never shows it: it is
 * only written while the formatter runs). */
#define IQP_LOG_ERROR_MARK "\x01E"

/* Starts formatting stderr as JSON lines tagged with component. Returns 0,
 * or -1 (stderr is left as it was). */
int iqp_logfmt_json_start(const char *component);

/* Whether the JSON formatter runs. */
int iqp_logfmt_json_active(void);

/* Restores stderr and waits until every line written so far is out. Safe
 * to call when not started. */
void iqp_logfmt_stop(void);

#endif

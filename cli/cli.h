/* cli.h -- the iqp command's subcommand table.
 *
 * Owns: the shape of a subcommand (name, one-line summary, entry point,
 * usage text) and small helpers every subcommand shares (error printing,
 * number parsing). Each subcommand lives in its own file cli/<name>.c and
 * exports one iqp_cmd_<name>() entry point; cli/iqp.c lists them in a
 * table and dispatches, the way git.c and Redis's command table do.
 *
 * Conventions for every subcommand: its flags are a table read by the one
 * flag parser (cli/flags.h) into an options struct, and --help is generated
 * from that table (printed to stdout, exit 0); then it calls the module
 * below that does the work. A bad flag or value prints "iqp <cmd>: <what is
 * wrong>" and the usage hint to stderr and exits 2; operational failures
 * exit 1; success exits 0 (iqp_exit below).
 */
#ifndef IQP_CLI_H
#define IQP_CLI_H

#include <stddef.h>
#include <stdint.h>

/* The exit statuses of every subcommand (README "Exit status"). */
typedef enum iqp_exit {
    IQP_EXIT_OK = 0,
    IQP_EXIT_FAIL = 1,      /* operational failure: a store, file or server unusable */
    IQP_EXIT_USAGE = 2,     /* bad flags, values or config */
    IQP_EXIT_STOPPED = 130, /* stopped by SIGINT/SIGTERM, as shells report SIGINT */
} iqp_exit;

typedef struct iqp_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} iqp_command;

int iqp_cmd_backfill(int argc, char **argv);
int iqp_cmd_lookup(int argc, char **argv);
int iqp_cmd_gen(int argc, char **argv);
int iqp_cmd_stats(int argc, char **argv);
int iqp_cmd_devbroker(int argc, char **argv);
int iqp_cmd_produce(int argc, char **argv);
int iqp_cmd_stream(int argc, char **argv);
int iqp_cmd_export(int argc, char **argv);
int iqp_cmd_refresh(int argc, char **argv);
int iqp_cmd_publish(int argc, char **argv);
int iqp_cmd_config(int argc, char **argv);
int iqp_cmd_backup(int argc, char **argv);
int iqp_cmd_restore(int argc, char **argv);

/* The stream's config sections ("stream", "kafka", "redis", "metrics" of a
 * parsed config file), read exactly as `iqp stream --config` reads them
 * (cli/stream.c), for `iqp config`. source names the file in messages.
 * check: 0, or 2 after reporting the first problem through
 * iqp_cli_usage_error; require_all also demands a store and brokers.
 * effective: the four sections with every default filled in (a new
 * reference), or NULL after reporting the problem. */
struct json_t;
int iqp_stream_config_check(struct json_t *root, const char *source, int require_all);
struct json_t *iqp_stream_config_effective(struct json_t *root, const char *source);

/* Prints "iqp <cmd>: <message>\n" to stderr; returns 2 (usage error). */
int iqp_cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "iqp <cmd>: <message>\n" to stderr; returns 1 (operational error). */
int iqp_cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* While buf is set, iqp_cli_usage_error and iqp_cli_fail write their
 * message (without the "iqp <cmd>: " prefix; the last one wins) into
 * buf[0..len) instead of stderr; NULL restores stderr. For `iqp config
 * check`, which runs other commands' config readers and reports what they
 * find itself. */
void iqp_cli_capture_errors(char *buf, size_t len);

/* Strict integer parse of the whole string; 0 on success. */
int iqp_cli_parse_i64(const char *s, int64_t *out);

/* Installs handler for SIGINT and SIGTERM, once (SA_RESETHAND): a second
 * signal kills the process, which every long-running command is built to
 * survive (its batches commit atomically). */
void iqp_cli_on_stop_signals(void (*handler)(int));

/* Tells glibc to keep freed memory for reuse (no mmap'd blocks, no trim):
 * for the counting commands, which free and reallocate a batch's tables
 * and buffers every batch. Call before any thread starts. */
void iqp_cli_keep_freed_memory(void);

/* An iqp_store_scan_meta callback over "src/kafka/": adds each stored
 * position as "<topic>/<partition>": next_offset to the JSON object ud
 * (what `iqp stats` and `iqp backup` print as kafka_offsets). */
void iqp_cli_add_kafka_offset(void *ud, const char *key, size_t klen, const char *val, size_t vlen);

/* Opens the store at dir read-only and returns what it was counted up to,
 * {"watermark", "kafka_offsets", "disk_bytes"} (a new reference), or NULL
 * with err. */
struct json_t *iqp_cli_store_position(const char *dir, char *err, size_t errlen);

/* The partition stores of `iqp stream --state-dir dir`: the paths of
 * dir/partition-<p> (p decimal digits), by p ascending, malloc'd into
 * paths[0..*n) (at most max). 0, or -1 with err (dir unreadable, none
 * there, more than max). */
int iqp_cli_partition_stores(const char *dir, char **paths, size_t max, size_t *n, char *err, size_t errlen);

/* Current wall clock in ms since the epoch. */
int64_t iqp_now_ms(void);

#endif

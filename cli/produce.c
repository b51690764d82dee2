/* produce.c -- `iqp produce`: put event log lines on Kafka topics.
 *
 * The feeder of the stream processor, for tests, demos and benchmarks: it
 * reads event logs line by line (consumers/logfile.c: plain JSONL, gzip or
 * zstd, detected from content; "-" or no file = standard input) and produces
 * every non-empty line, byte for byte, as one message value, in file order.
 *
 * Routing. Each line is parsed once with jansson (json_loadb). Its "schema"
 * field picks the topic: "impression.v1" -> the impressions topic,
 * "action.v1" -> the actions topic. Anything else (not JSON, not an object,
 * no or another schema) also goes to the impressions topic: bad input has to
 * reach the stream processor, which dead-letters it, or tests of that path
 * could not be fed from here.
 *
 * Keys. The message key is the "query" field normalized exactly as the
 * aggregator does (model/normalize.c: NFKC, case fold, white space
 * trimmed and collapsed), for any JSON object with a string query that
 * normalizes to something non-empty; other lines have no key. With the
 * "murmur2_random" partitioner (the Java client's murmur2 hash of the key,
 * so Java and librdkafka producers agree; random partition for no key) all
 * events of one query land on one partition, whatever spelling variant the
 * client sent. --key none sends every line without a key (tests of input
 * that is not keyed by query, which `iqp stream --repartition` takes):
 * with sticky.partitioning.linger.ms=0 each line gets a random partition
 * of its own, instead of librdkafka sticking to one for 10 ms.
 *
 * Producer. Idempotent (enable.idempotence=true, acks=all: no duplicates
 * or reordering from retries), linger.ms=5. A delivery report callback,
 * served by rd_kafka_poll on this thread, counts delivered and failed
 * messages. Properties are applied in this order, later wins: those
 * defaults, the "kafka" object of --config (the same file the stream
 * processor reads, values taken as `iqp stream` takes them: strings,
 * integers, booleans; model/config.c accepts and ignores that key, and
 * its "stream" object's topic names are the defaults here too),
 * bootstrap.servers from --brokers, then each --property NAME=VALUE. A
 * property librdkafka does not know or rejects is a usage error (exit 2).
 * QUEUE_FULL from rd_kafka_producev is back-pressure: poll and retry, for
 * at most 30 s per message, then give up with an error. --rate paces lines
 * against a monotonic clock (line i not before start + i/rate), sleeping
 * in rd_kafka_poll so delivery reports are served meanwhile.
 *
 * Input. Every named file is checked (stat, access) before anything is
 * produced, so a misspelt third file fails the run before the first two are
 * on the topic. A line longer than message.max.bytes cannot be produced: it
 * is counted as failed, named, and the run goes on.
 *
 * End. rd_kafka_flush (30 s); what is still queued after that is purged and
 * counted as failed. SIGINT/SIGTERM stop the reading (a blocked read of
 * stdin is ended by putting /dev/null in its place), flush for at most
 * 10 s (also when the signal comes during the final flush), print the
 * summary and exit 130; a second signal kills at once. The summary line
 * goes to stderr. Exit 0 only when every line read was delivered.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "model/config.h"
#include "model/normalize.h"
#include "cli/cli.h"
#include "cli/flags.h"
#include "consumers/logfile.h"
#include "util/clock.h"
#include "util/stop.h"

static const char *CMD = "produce";

#define QUEUE_FULL_GIVE_UP_S 30.0
#define FLUSH_MS 30000
#define STOP_FLUSH_MS 10000
#define POLL_EVERY 1024          /* lines between rd_kafka_poll(0) calls */
#define MAX_REPORTED_ERRORS 5    /* per-line errors printed, then a count */

static volatile sig_atomic_t reading_stdin;

/* ---- options --------------------------------------------------------------- */

typedef struct produce_opts {
    const char *brokers, *imp_topic, *act_topic, *config_path;
    int64_t rate;
    int key_none;                /* --key: 0 query (default), 1 none */
    json_t *root;                /* the --config file, when given */
    iqp_flag_list props;         /* "NAME=VALUE" strings, pointing into argv */
    iqp_flag_list files;         /* pointing into argv; none: standard input */
} produce_opts;

static int check_property(void *opts, const char *arg, char *why, size_t whylen) {
    (void)opts;
    const char *eq = strchr(arg, '=');
    if (eq && eq != arg) return 0;
    snprintf(why, whylen, "--property must be NAME=VALUE, not '%s'", arg);
    return -1;
}

static const iqp_flag FLAGS[] = {
    {"brokers", IQP_FLAG_STRING, offsetof(produce_opts, brokers), .arg = "LIST",
     .help = "bootstrap servers, host:port,... (required)"},
    {"impressions-topic", IQP_FLAG_STRING, offsetof(produce_opts, imp_topic), .arg = "T",
     .help = "default: the config's stream.impressions_topic, else impressions"},
    {"actions-topic", IQP_FLAG_STRING, offsetof(produce_opts, act_topic), .arg = "T",
     .help = "default: the config's stream.actions_topic, else actions"},
    {"key", IQP_FLAG_CHOICE, offsetof(produce_opts, key_none), .choices = "query|none", .def = "query",
     .help = "message key: the normalized query (default), or none (each line on a random partition)"},
    {"rate", IQP_FLAG_INT, offsetof(produce_opts, rate), .max = 1000000000, .must = "0..1000000000 lines/s",
     .help = "at most N lines per second (default 0: unlimited)"},
    {"config", IQP_FLAG_STRING, offsetof(produce_opts, config_path), .arg = "FILE",
     .help = "the iqp JSON config the stream processor reads: its \"kafka\" object (string, integer or "
             "boolean values) is passed to librdkafka as properties"},
    {"property", IQP_FLAG_REPEATED, offsetof(produce_opts, props), .arg = "NAME=VALUE",
     .check = check_property, .help = "any librdkafka property (repeatable)"},
    {0}};

static const iqp_flag_cmd PRODUCE = {
    .name = "produce",
    .usage = "iqp produce --brokers LIST [options] [FILE...]",
    .about = "Puts every non-empty line of the event logs FILE... on Kafka, in file order,\n"
             "as the message value, byte for byte. FILE is JSONL, gzip or zstd (detected\n"
             "from content); no FILE or '-' reads standard input.\n"
             "\n"
             "Topic: a line whose \"schema\" is \"impression.v1\" goes to the impressions\n"
             "topic, \"action.v1\" to the actions topic. Every other line (not JSON, not an\n"
             "object, no or another schema) goes to the impressions topic too, so that the\n"
             "stream processor sees it and dead-letters it.\n"
             "\n"
             "Key: the line's \"query\" normalized as the aggregator does (NFKC, case fold,\n"
             "white space trimmed and collapsed), so all events of one query land on one\n"
             "partition; lines without a usable query have no key. The partitioner is\n"
             "murmur2_random: the Java client's hash of the key (keyless: random).\n"
             "--key none sends every line without a key, each on a random partition\n"
             "(sticky.partitioning.linger.ms=0): input not keyed by query.",
    .epilog = "Producer properties, later wins: enable.idempotence=true, acks=all,\n"
              "linger.ms=5, partitioner=murmur2_random; then the config's \"kafka\" object;\n"
              "bootstrap.servers from --brokers; then each --property. An unknown or\n"
              "invalid property is a usage error. When the producer queue is full it waits,\n"
              "giving up after 30 s on one message. A line longer than message.max.bytes\n"
              "is not produced and counts as failed.\n"
              "\n"
              "At the end it flushes (up to 30 s) and prints to stderr:\n"
              "  iqp produce: N lines (impressions I, actions A, other O) to BROKERS in S s, F failed\n"
              "where I and A count lines by schema, O the rest (sent to the impressions topic,\n"
              "or too long to send), and F the lines not confirmed delivered.\n"
              "SIGINT/SIGTERM stop the reading, flush for up to 10 s, print the summary and\n"
              "exit 130 (a second signal kills). --rate is for benchmarks and demos.\n"
              "\n"
              "Exit status: 0 every line delivered, 1 some line not delivered or an input\n"
              "unreadable, 2 bad usage or Kafka property, 130 stopped by a signal.",
    .args = "FILE...",
    .args_offset = offsetof(produce_opts, files),
    .flags = FLAGS,
};

/* 0 to go on, 2 on bad usage, -1 after --help. */
static int parse_opts(int argc, char **argv, produce_opts *o) {
    memset(o, 0, sizeof *o);
    int rc = iqp_flags_parse(&PRODUCE, o, argc, argv);
    if (rc) return rc;
    if (!o->brokers || !*o->brokers) return iqp_cli_usage_error(CMD, "--brokers LIST is required");
    if ((o->imp_topic && !*o->imp_topic) || (o->act_topic && !*o->act_topic))
        return iqp_cli_usage_error(CMD, "a topic name is empty");
    if (o->files.n == 0) iqp_flag_list_add(&o->files, "-");
    return 0;
}

/* ---- configuration --------------------------------------------------------- */

/* Sets one property; a message naming it (and where it came from) on error. */
static int set_prop(rd_kafka_conf_t *conf, const char *name, const char *value, const char *from) {
    char kerr[512];
    if (rd_kafka_conf_set(conf, name, value, kerr, sizeof kerr) == RD_KAFKA_CONF_OK) return 0;
    return iqp_cli_usage_error(CMD, "Kafka property %s=%s (%s): %s", name, value, from, kerr);
}

/* Applies the "kafka" object of a config file. Values as `iqp stream`
 * takes them: strings, integers (as decimal) and booleans. */
static int apply_kafka_object(rd_kafka_conf_t *conf, json_t *kafka, const char *path) {
    const char *name;
    json_t *v;
    if (!json_is_object(kafka)) return iqp_cli_usage_error(CMD, "%s: \"kafka\" must be an object", path);
    json_object_foreach(kafka, name, v) {
        char num[32];
        const char *val = json_is_string(v) ? json_string_value(v) : NULL;
        if (json_is_integer(v)) snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        if (json_is_integer(v)) val = num;
        if (json_is_boolean(v)) val = json_is_true(v) ? "true" : "false";
        if (!val)
            return iqp_cli_usage_error(CMD, "%s: \"kafka.%s\" must be a string, integer or boolean",
                                       path, name);
        int rc = set_prop(conf, name, val, path);
        if (rc) return rc;
    }
    return 0;
}

/* A string member of the config's "stream" object, when present: checked
 * always, taken into *out only when no flag set it. */
static int stream_string(json_t *stream, const char *key, const char **out, const char *path) {
    json_t *v = json_object_get(stream, key);
    if (!v) return 0;
    if (!json_is_string(v) || !*json_string_value(v))
        return iqp_cli_usage_error(CMD, "%s: \"stream.%s\" must be a non-empty string", path, key);
    if (!*out) *out = json_string_value(v);
    return 0;
}

/* The config file must be a valid iqp config (as the stream processor will
 * check it). Its "kafka" object holds properties; its "stream" object's
 * impressions_topic / actions_topic are the topics unless flags name them
 * (o->root keeps those strings alive). */
static int apply_config_file(rd_kafka_conf_t *conf, produce_opts *o) {
    char err[1024];
    iqp_config cfg;
    json_error_t jerr;
    iqp_config_defaults(&cfg);
    if (iqp_config_load(&cfg, o->config_path, err, sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    o->root = json_load_file(o->config_path, 0, &jerr);
    if (!o->root) return iqp_cli_usage_error(CMD, "%s: %s", o->config_path, jerr.text);
    json_t *kafka = json_object_get(o->root, "kafka"), *stream = json_object_get(o->root, "stream");
    if (kafka && apply_kafka_object(conf, kafka, o->config_path)) return 2;
    if (stream && !json_is_object(stream))
        return iqp_cli_usage_error(CMD, "%s: \"stream\" must be an object", o->config_path);
    if (stream && (stream_string(stream, "impressions_topic", &o->imp_topic, o->config_path) ||
                   stream_string(stream, "actions_topic", &o->act_topic, o->config_path)))
        return 2;
    return 0;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque);
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque);

/* Builds the producer configuration; NULL after printing a usage error. */
static rd_kafka_conf_t *build_conf(produce_opts *o, void *opaque) {
    static const char *const defaults[] = {"enable.idempotence", "true", "acks", "all",
                                           "linger.ms", "5", "partitioner", "murmur2_random",
                                           NULL};
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    int rc = 0;
    for (const char *const *kv = defaults; *kv && rc == 0; kv += 2)
        rc = set_prop(conf, kv[0], kv[1], "default");
    if (rc == 0 && o->key_none) rc = set_prop(conf, "sticky.partitioning.linger.ms", "0", "--key none");
    if (rc == 0 && o->config_path) rc = apply_config_file(conf, o);
    if (!o->imp_topic) o->imp_topic = "impressions";
    if (!o->act_topic) o->act_topic = "actions";
    if (rc == 0) rc = set_prop(conf, "bootstrap.servers", o->brokers, "--brokers");
    for (size_t i = 0; i < o->props.n && rc == 0; i++) {
        const char *eq = strchr(o->props.v[i], '=');
        char *name = strndup(o->props.v[i], (size_t)(eq - o->props.v[i]));
        rc = name ? set_prop(conf, name, eq + 1, "--property") : iqp_cli_fail(CMD, "out of memory");
        free(name);
    }
    if (rc != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_opaque(conf, opaque);
    return conf;
}

/* message.max.bytes of conf: the longest line worth reading whole. */
static size_t max_message_bytes(const rd_kafka_conf_t *conf) {
    char buf[32];
    size_t len = sizeof buf;
    if (rd_kafka_conf_get(conf, "message.max.bytes", buf, &len) != RD_KAFKA_CONF_OK) return 1000000;
    long long v = atoll(buf);
    return v > 0 ? (size_t)v : 1000000;
}

/* ---- the producer ------------------------------------------------------------ */

typedef struct producer {
    rd_kafka_t *rk;
    rd_kafka_topic_t *imp, *act;
    size_t max_line;
    int key_none;                           /* --key none */
    uint64_t lines, n_imp, n_act, n_other;  /* lines read, by schema */
    uint64_t delivered, dr_failed;          /* from delivery reports */
    uint64_t errors_reported;
    rd_kafka_resp_err_t first_dr_err;
} producer;

/* Runs on this thread, inside rd_kafka_poll / rd_kafka_flush. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque) {
    (void)rk;
    producer *p = opaque;
    if (!msg->err) {
        p->delivered++;
        return;
    }
    if (!p->dr_failed++) p->first_dr_err = msg->err;
}

/* Errors that are not about one message. librdkafka already logs the
 * transient ones (connection refused, brokers down); a fatal one (the
 * idempotent producer cannot go on) is printed once here, and producing
 * stops as rd_kafka_producev then returns _FATAL. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    (void)opaque;
    if (err != RD_KAFKA_RESP_ERR__FATAL) return;
    char why[512];
    rd_kafka_fatal_error(rk, why, sizeof why);
    iqp_cli_fail(CMD, "Kafka fatal error: %s (%s)", why, reason);
}

/* Prints a per-line problem, the first MAX_REPORTED_ERRORS of them. */
static void report_line_error(producer *p, const char *path, uint64_t line_no, const char *what) {
    if (p->errors_reported++ < MAX_REPORTED_ERRORS)
        iqp_cli_fail(CMD, "%s line %llu: %s", path, (unsigned long long)line_no, what);
    else if (p->errors_reported == MAX_REPORTED_ERRORS + 1)
        iqp_cli_fail(CMD, "(further line errors not shown)");
}

typedef enum { LINE_OTHER, LINE_IMPRESSION, LINE_ACTION } line_kind;

static int string_is(const json_t *v, const char *s) {
    return json_is_string(v) && json_string_length(v) == strlen(s) &&
           memcmp(json_string_value(v), s, strlen(s)) == 0;
}

/* Classifies a line by its schema and sets *key to its malloc'd normalized
 * query (NULL when it has none). */
static line_kind classify(const char *line, size_t len, char **key, size_t *keylen) {
    *key = NULL;
    *keylen = 0;
    json_t *root = json_loadb(line, len, JSON_ALLOW_NUL, NULL);
    if (!root) return LINE_OTHER;
    line_kind kind = LINE_OTHER;
    if (json_is_object(root)) {
        json_t *schema = json_object_get(root, "schema"), *q = json_object_get(root, "query");
        if (string_is(schema, "impression.v1")) kind = LINE_IMPRESSION;
        else if (string_is(schema, "action.v1")) kind = LINE_ACTION;
        if (json_is_string(q) &&
            iqp_normalize_query(json_string_value(q), json_string_length(q), key, keylen) == 0 &&
            *keylen == 0) {
            free(*key);
            *key = NULL;
        }
        if (!*key) *keylen = 0;
    }
    json_decref(root);
    return kind;
}

/* Hands one message to librdkafka, waiting out a full queue for at most
 * QUEUE_FULL_GIVE_UP_S. Returns 0 (accepted), 1 (rejected: this line
 * failed, go on) or -1 (stop: queue stuck, fatal error or a signal). */
static int send_message(producer *p, rd_kafka_topic_t *rkt, const char *line, size_t len,
                        const char *key, size_t keylen, const char **why) {
    double full_since = 0;
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            p->rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE((void *)line, len),
            RD_KAFKA_V_KEY(key, keylen), RD_KAFKA_V_END);
        if (!err) return 0;
        *why = rd_kafka_err2str(err);
        if (err == RD_KAFKA_RESP_ERR__FATAL) return -1;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) return 1;
        double now = iqp_mono_seconds();
        if (!full_since) full_since = now;
        if (now - full_since > QUEUE_FULL_GIVE_UP_S) {
            *why = "the producer queue stayed full for 30 s (are the brokers reachable?)";
            return -1;
        }
        if (iqp_stop_requested()) {
            *why = NULL;
            return -1;
        }
        rd_kafka_poll(p->rk, 100);
    }
}

/* Waits until line number p->lines may go out under --rate, serving
 * delivery reports meanwhile. */
static void pace(producer *p, int64_t rate, double t0) {
    if (rate <= 0) return;
    double due = t0 + (double)p->lines / (double)rate;
    for (;;) {
        double left = due - iqp_mono_seconds();
        if (left <= 0 || iqp_stop_requested()) return;
        if (left >= 0.001) {
            rd_kafka_poll(p->rk, (int)(left * 1000));
        } else {
            struct timespec ts = {0, (long)(left * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
}

/* Produces one line. Returns 0 to go on, -1 to stop (error printed). */
static int produce_line(producer *p, const char *path, uint64_t line_no, const char *line,
                        size_t len, int oversized, uint64_t full_len) {
    char *key, what[160];
    size_t keylen;
    p->lines++;
    if (oversized) {
        p->n_other++;
        snprintf(what, sizeof what, "%llu bytes, over message.max.bytes (%zu): not produced",
                 (unsigned long long)full_len, p->max_line);
        report_line_error(p, path, line_no, what);
        return 0;
    }
    line_kind kind = classify(line, len, &key, &keylen);
    if (p->key_none) free(key), key = NULL, keylen = 0;
    uint64_t *count = kind == LINE_IMPRESSION ? &p->n_imp : kind == LINE_ACTION ? &p->n_act : &p->n_other;
    (*count)++;
    const char *why = NULL;
    int rc = send_message(p, kind == LINE_ACTION ? p->act : p->imp, line, len, key, keylen, &why);
    free(key);
    if (rc == 1) report_line_error(p, path, line_no, why);
    if (rc < 0 && why) iqp_cli_fail(CMD, "%s line %llu: %s", path, (unsigned long long)line_no, why);
    if (p->lines % POLL_EVERY == 0) rd_kafka_poll(p->rk, 0);
    return rc < 0 ? -1 : 0;
}

/* Produces every line of one log. Returns 0, or -1 to stop (a read error,
 * printed, or a stop; the caller tells them apart by iqp_stop_requested()). */
static int produce_file(producer *p, const char *path, int64_t rate, double t0) {
    char err[1024];
    reading_stdin = strcmp(path, "-") == 0; /* open reads the magic bytes */
    iqp_logfile *lf = iqp_logfile_open(path, p->max_line, err, sizeof err);
    if (!lf) {
        reading_stdin = 0;
        if (!iqp_stop_requested()) iqp_cli_fail(CMD, "%s", err);
        return -1;
    }
    const char *line;
    size_t len;
    int oversized = 0, rc = 0;
    uint64_t full_len = 0;
    while (rc == 0 && !iqp_stop_requested()) {
        int r = iqp_logfile_next(lf, &line, &len, &oversized, &full_len, err, sizeof err);
        if (r == 0) break;
        if (r < 0) {
            if (!iqp_stop_requested()) iqp_cli_fail(CMD, "%s", err);
            rc = -1;
            break;
        }
        pace(p, rate, t0);
        if (iqp_stop_requested()) break;
        rc = produce_line(p, path, iqp_logfile_line_no(lf), line, len, oversized, full_len);
    }
    reading_stdin = 0;
    iqp_logfile_close(lf);
    return iqp_stop_requested() ? -1 : rc;
}

/* Flushes for at most FLUSH_MS, or STOP_FLUSH_MS once a stop is asked for
 * (also during the flush: it runs in 100 ms slices); what is left is purged
 * and its delivery reports (failures) are served before returning. */
static void flush_and_purge(producer *p) {
    double now = iqp_mono_seconds();
    double deadline = now + (iqp_stop_requested() ? STOP_FLUSH_MS : FLUSH_MS) / 1000.0;
    int stop_seen = iqp_stop_requested();
    while (rd_kafka_outq_len(p->rk) > 0 && now < deadline) {
        rd_kafka_flush(p->rk, 100);
        now = iqp_mono_seconds();
        if (iqp_stop_requested() && !stop_seen && now + STOP_FLUSH_MS / 1000.0 < deadline)
            deadline = now + STOP_FLUSH_MS / 1000.0;
        stop_seen = iqp_stop_requested();
    }
    if (rd_kafka_outq_len(p->rk) == 0) return;
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    for (int i = 0; i < 50 && rd_kafka_outq_len(p->rk) > 0; i++) rd_kafka_poll(p->rk, 100);
}

/* ---- signals, input checks, the command -------------------------------------- */

/* Stops the reading. A read of stdin may be blocked (logfile.c retries
 * EINTR): /dev/null put in its place ends it. SA_RESETHAND: a second
 * signal kills. */
static void on_stop_signal(int sig) {
    (void)sig;
    iqp_stop_request();
    if (reading_stdin) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd >= 0) {
            dup2(fd, STDIN_FILENO);
            close(fd);
        }
    }
}


/* Checks that every named input exists and is readable, so that none is
 * produced when one is missing. Not by reading it: a pipe (<(...)) would
 * lose what the check read. */
static int check_inputs(const produce_opts *o) {
    for (int i = 0; i < (int)o->files.n; i++) {
        struct stat st;
        const char *f = o->files.v[i];
        if (strcmp(f, "-") == 0) continue;
        if (stat(f, &st) < 0 || access(f, R_OK) < 0)
            return iqp_cli_fail(CMD, "cannot open %s: %s", f, strerror(errno));
        if (S_ISDIR(st.st_mode)) return iqp_cli_fail(CMD, "cannot read %s: it is a directory", f);
    }
    return 0;
}

static void print_summary(const producer *p, const char *brokers, double secs) {
    uint64_t failed = p->lines - p->delivered;
    fprintf(stderr,
            "iqp produce: %llu lines (impressions %llu, actions %llu, other %llu) to %s in %.2f s, "
            "%llu failed\n",
            (unsigned long long)p->lines, (unsigned long long)p->n_imp,
            (unsigned long long)p->n_act, (unsigned long long)p->n_other, brokers, secs,
            (unsigned long long)failed);
    if (p->dr_failed)
        iqp_cli_fail(CMD, "%llu messages not delivered, first: %s", (unsigned long long)p->dr_failed,
                     rd_kafka_err2str(p->first_dr_err));
}

/* Creates the producer and its two topic handles; 0 or 1 (printed). */
static int producer_open(producer *p, rd_kafka_conf_t *conf, const produce_opts *o) {
    char kerr[512];
    p->max_line = max_message_bytes(conf);
    p->key_none = o->key_none;
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof kerr);
    if (!p->rk) {
        rd_kafka_conf_destroy(conf);
        return iqp_cli_fail(CMD, "cannot create the Kafka producer: %s", kerr);
    }
    p->imp = rd_kafka_topic_new(p->rk, o->imp_topic, NULL);
    p->act = rd_kafka_topic_new(p->rk, o->act_topic, NULL);
    if (!p->imp || !p->act)
        return iqp_cli_fail(CMD, "cannot create topic handles: %s", rd_kafka_err2str(rd_kafka_last_error()));
    return 0;
}

static void producer_close(producer *p) {
    if (p->imp) rd_kafka_topic_destroy(p->imp);
    if (p->act) rd_kafka_topic_destroy(p->act);
    if (p->rk) rd_kafka_destroy(p->rk);
}

/* Produces every file, flushes, prints the summary; the exit status. */
static int run(producer *p, const produce_opts *o) {
    double t0 = iqp_mono_seconds();
    int rc = 0;
    iqp_cli_on_stop_signals(on_stop_signal);
    for (int i = 0; i < (int)o->files.n && rc == 0; i++)
        if (produce_file(p, o->files.v[i], o->rate, t0) < 0) rc = 1;
    flush_and_purge(p);
    print_summary(p, o->brokers, iqp_mono_seconds() - t0);
    if (iqp_stop_requested()) return IQP_EXIT_STOPPED;
    return rc || p->delivered != p->lines ? 1 : 0;
}

int iqp_cmd_produce(int argc, char **argv) {
    produce_opts o;
    producer p;
    memset(&p, 0, sizeof p);
    int rc = parse_opts(argc, argv, &o);
    if (rc == 0) {
        rd_kafka_conf_t *conf = build_conf(&o, &p);
        rc = conf ? check_inputs(&o) : 2;
        if (rc == 0) rc = producer_open(&p, conf, &o);
        else if (conf) rd_kafka_conf_destroy(conf);
        if (rc == 0) rc = run(&p, &o);
        producer_close(&p);
    }
    json_decref(o.root);
    return rc < 0 ? 0 : rc;
}

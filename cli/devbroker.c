/* devbroker.c -- `iqp devbroker`: a local Kafka for tests and the quickstart.
 *
 * No Apache Kafka package exists on the target machines, so this wraps
 * librdkafka's mock cluster (rdkafka_mock.h): real Kafka protocol on
 * loopback TCP, any client (kcat, librdkafka, iqp stream) can connect.
 * It creates the topics, prints the bootstrap list as the first line on
 * stdout, then serves until SIGINT/SIGTERM or "quit" on stdin.
 *
 * Standard input takes one command per line, for failure tests:
 *   down N   take broker N (1-based) down     up N   bring it back
 *   refuse-commits N   answer the next N OffsetCommit requests with
 *            UNKNOWN_MEMBER_ID, as a coordinator does to a member it has
 *            dropped (tests of the stream's ownership check)
 *   quit     stop
 * Each command is answered on stdout with "ok ..." or "error ...".
 *
 * Limits of the Debian 2.0.2 mock (DESIGN.md): each partition keeps about
 * 5 MiB (older messages are evicted silently), the first consumer-group join
 * takes about 3 s, transactions are accepted but have no effect, and there
 * are no admin APIs (topics exist only as created here or auto-created).
 */
#include <errno.h>
#include <stddef.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/flags.h"

static const char *CMD = "devbroker";
static volatile sig_atomic_t stop;

typedef struct devbroker_opts {
    int64_t brokers, partitions;
    const char *topics;
} devbroker_opts;

static const iqp_flag FLAGS[] = {
    {"brokers", IQP_FLAG_INT, offsetof(devbroker_opts, brokers), .def = "3", .min = 1, .max = 16,
     .must = "1..16", .help = "brokers in the cluster"},
    {"partitions", IQP_FLAG_INT, offsetof(devbroker_opts, partitions), .def = "8", .min = 1, .max = 1024,
     .must = "1..1024", .help = "partitions per topic"},
    {"topics", IQP_FLAG_STRING, offsetof(devbroker_opts, topics), .arg = "LIST",
     .def = "impressions,actions,dead-letter,iqp-checkpoints,iqp-repartition-impressions,iqp-repartition-actions",
     .help = "comma-separated topic names; NAME:N gives one topic N partitions"},
    {0}};

static const iqp_flag_cmd DEVBROKER = {
    .name = "devbroker",
    .usage = "iqp devbroker [--brokers N] [--partitions N] [--topics a,b:N,...]",
    .about = "Starts a local Kafka (librdkafka's mock cluster) on loopback, creates the topics,\n"
             "prints the bootstrap list (host:port,...) as its first line on stdout, and runs\n"
             "until SIGINT/SIGTERM or 'quit' on stdin. For tests and the quickstart only.",
    .epilog = "stdin commands: 'down N' / 'up N' (broker N, 1-based), 'refuse-commits N' (the next N\n"
              "offset commits are refused with UNKNOWN_MEMBER_ID), 'quit'.\n"
              "Limits: about 5 MiB kept per partition (older data evicted silently), first\n"
              "group join takes about 3 s, transactions have no effect, no admin APIs.",
    .flags = FLAGS,
};

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

/* Handles one stdin command; returns 1 on "quit". */
static int run_command(rd_kafka_mock_cluster_t *mc, int brokers, char *line) {
    char verb[16];
    int id = 0;
    line[strcspn(line, "\r\n")] = '\0';
    if (sscanf(line, "%15s %d", verb, &id) < 1) return 0;
    if (strcmp(verb, "quit") == 0) return 1;
    if (strcmp(verb, "refuse-commits") == 0 && id >= 1 && id <= 1000) {
        for (int i = 0; i < id; i++) /* ApiKey 8 = OffsetCommit */
            rd_kafka_mock_push_request_errors(mc, 8, 1, RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID);
        printf("ok refuse-commits %d\n", id);
        fflush(stdout);
        return 0;
    }
    int down = strcmp(verb, "down") == 0, up = strcmp(verb, "up") == 0;
    if ((!down && !up) || id < 1 || id > brokers) {
        printf("error: unknown command '%s' (use: down N, up N, refuse-commits N, quit; N in 1..%d)\n", line,
               brokers);
    } else {
        rd_kafka_resp_err_t err = down ? rd_kafka_mock_broker_set_down(mc, id)
                                       : rd_kafka_mock_broker_set_up(mc, id);
        if (err) printf("error: %s broker %d: %s\n", verb, id, rd_kafka_err2str(err));
        else printf("ok %s %d\n", verb, id);
    }
    fflush(stdout);
    return 0;
}

/* Runs every complete line in buf[0..*len) and keeps the unfinished rest
 * at the front; a line longer than the buffer is run as it stands. Returns
 * 1 on "quit". */
static int run_lines(rd_kafka_mock_cluster_t *mc, int brokers, char *buf, size_t *len, size_t cap) {
    char *start = buf, *end = buf + *len, *nl;
    while ((nl = memchr(start, '\n', (size_t)(end - start)))) {
        *nl = '\0';
        if (run_command(mc, brokers, start)) return 1;
        start = nl + 1;
    }
    *len = (size_t)(end - start);
    memmove(buf, start, *len);
    if (*len == cap - 1) {
        buf[*len] = '\0';
        *len = 0;
        return run_command(mc, brokers, buf);
    }
    return 0;
}

/* Serves stdin commands until a signal, "quit" or end of input (then it
 * keeps running until a signal: a background devbroker has no stdin).
 * stdin is read with read(2), not stdio: poll(2) sees the descriptor, so
 * lines stdio had buffered would wait unseen (several commands written at
 * once ran only the first). */
static void serve(rd_kafka_mock_cluster_t *mc, int brokers) {
    char buf[256];
    size_t len = 0;
    int stdin_open = 1;
    while (!stop) {
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        int n = stdin_open ? poll(&p, 1, 200) : (usleep(200000), 0);
        if (n <= 0) continue;
        ssize_t got = read(STDIN_FILENO, buf + len, sizeof buf - 1 - len);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            stdin_open = 0;
            if (len) {
                buf[len] = '\n';
                len++;
                if (run_lines(mc, brokers, buf, &len, sizeof buf)) break;
            }
            continue;
        }
        len += (size_t)got;
        if (run_lines(mc, brokers, buf, &len, sizeof buf)) break;
    }
}

/* Creates each topic of the list; "name:N" gives that topic N partitions
 * instead of --partitions (tests of topics that must agree). */
static int create_topics(rd_kafka_mock_cluster_t *mc, char *topics, int partitions) {
    for (char *t = strtok(topics, ","); t; t = strtok(NULL, ",")) {
        int n = partitions;
        char *colon = strchr(t, ':'), *end = NULL;
        if (colon) {
            long v = strtol(colon + 1, &end, 10);
            if (colon == t || end == colon + 1 || *end || v < 1 || v > 1024)
                return iqp_cli_usage_error(CMD, "--topics: '%s' is not NAME or NAME:N (N in 1..1024)", t);
            *colon = '\0';
            n = (int)v;
        }
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mc, t, n, 1);
        if (err) return iqp_cli_fail(CMD, "cannot create topic '%s': %s", t, rd_kafka_err2str(err));
    }
    return 0;
}

int iqp_cmd_devbroker(int argc, char **argv) {
    devbroker_opts opt = {0};
    int rc = iqp_flags_parse(&DEVBROKER, &opt, argc, argv);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    int64_t brokers = opt.brokers, partitions = opt.partitions;
    const char *topics_arg = opt.topics;
    if (!*topics_arg) return iqp_cli_usage_error(CMD, "--topics is empty");

    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) return iqp_cli_fail(CMD, "cannot create a Kafka handle: %s", errstr);
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, (int)brokers);
    if (!mc) {
        rd_kafka_destroy(rk);
        return iqp_cli_fail(CMD, "cannot start the mock cluster");
    }
    char *topics = strdup(topics_arg);
    rc = create_topics(mc, topics, (int)partitions);
    free(topics);
    if (rc == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
        fflush(stdout);
        serve(mc, (int)brokers);
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}

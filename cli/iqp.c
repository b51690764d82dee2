/* iqp.c -- the iqp command: a table of subcommands and a dispatcher.
 *
 * Like git.c's cmd_struct table and Redis's redisCommandTable, every
 * subcommand is one row: its name, a one-line summary, and its entry point
 * in cli/<name>.c. Adding a subcommand is adding a file and a row.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "config.h"

static const iqp_command command_table[] = {
    {"gen", "write deterministic synthetic search traffic (JSONL, .gz, .zst)", iqp_cmd_gen},
    {"backfill", "count event log files into a store, exactly once", iqp_cmd_backfill},
    {"lookup", "print feature values for a query, user context and items", iqp_cmd_lookup},
    {"stats", "print what a store holds (cells, markers, bytes, watermark)", iqp_cmd_stats},
    {"produce", "put event log lines on Kafka topics, keyed by normalized query", iqp_cmd_produce},
    {"stream", "count Kafka topics into a store, exactly once, with metrics", iqp_cmd_stream},
    {"publish", "write a store's features to Redis once (queue or --all), then exit", iqp_cmd_publish},
    {"refresh", "recompute every feature, smoothed rates and top-K lists from a snapshot", iqp_cmd_refresh},
    {"export", "write point-in-time training rows: features and labels per shown item", iqp_cmd_export},
    {"backup", "copy a store consistently (RocksDB checkpoint), safe beside a running writer", iqp_cmd_backup},
    {"restore", "put a backup back as a store", iqp_cmd_restore},
    {"config", "check a config file (JSON path of each problem) or show the effective one", iqp_cmd_config},
    {"devbroker", "run a local Kafka (librdkafka mock cluster) for tests and demos", iqp_cmd_devbroker},
};

#define N_COMMANDS (sizeof(command_table) / sizeof(command_table[0]))

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: iqp <command> [options]\n"
            "\n"
            "iqp counts search impressions and actions into query-item features\n"
            "(IQP) per user segment and time window.\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-10s %s\n", command_table[i].name, command_table[i].summary);
    fprintf(out, "\n'iqp <command> --help' describes a command's options.\n");
}

static const iqp_command *find_command(const char *name) {
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(command_table[i].name, name) == 0) return &command_table[i];
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return IQP_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        if (argc > 2 && strcmp(argv[1], "help") == 0 && find_command(argv[2])) {
            char *help_argv[] = {argv[2], "--help", NULL};
            return find_command(argv[2])->run(2, help_argv);
        }
        print_usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("iqp %s\n", PACKAGE_VERSION);
        return 0;
    }
    const iqp_command *cmd = find_command(argv[1]);
    if (!cmd) {
        fprintf(stderr, "iqp: '%s' is not an iqp command. See 'iqp --help'.\n", argv[1]);
        return IQP_EXIT_USAGE;
    }
    return cmd->run(argc - 1, argv + 1);
}

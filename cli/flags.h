/* flags.h -- the one flag parser of every iqp subcommand, driven by a table.
 *
 * Owns: turning a subcommand's argv into its options struct, and that
 * subcommand's --help text, both from one table of flags (name, kind of
 * value, default, help text), so the two cannot drift apart; the man pages
 * are generated from --help (ops/gen-man), so they follow too. May not
 * touch: anything a command does with its options (that is the command's
 * file, and below it the modules).
 *
 * A command declares its flags once:
 *
 *     typedef struct stats_opts { const char *store; int compact; } stats_opts;
 *     static const iqp_flag FLAGS[] = {
 *         {"store", IQP_FLAG_STRING, offsetof(stats_opts, store), .arg = "DIR", .help = "the store"},
 *         {"compact", IQP_FLAG_BOOL, offsetof(stats_opts, compact), .help = "compact fully first"},
 *         {0}};
 *     static const iqp_flag_cmd STATS = {.name = "stats", .usage = "iqp stats --store DIR [--compact]",
 *                                         .flags = FLAGS};
 *     ...
 *     stats_opts o = {0};
 *     int rc = iqp_flags_parse(&STATS, &o, argc, argv);
 *     if (rc) return rc < 0 ? IQP_EXIT_OK : rc;       -- after --help, or a usage error
 *
 * What the parser does, the same for every command (the getopt_long
 * conventions the commands had):
 *   - "--name value" and "--name=value"; a flag's name may be shortened to
 *     any prefix no other flag shares ("--stor" for "--store");
 *   - "--" ends the flags; "-" alone is an argument (stdin); arguments and
 *     flags may come in any order;
 *   - each flag's default (the .def text) is parsed exactly as a value from
 *     the command line would be, before argv, so --help shows the value the
 *     command really starts from; a later occurrence of a flag wins, except
 *     that each occurrence of a REPEATED flag is kept;
 *   - --help prints the generated text on stdout and returns -1;
 *   - an unknown flag, a missing value, a value a BOOL flag does not take, a
 *     value that does not parse or is out of range, too many repeats, and an
 *     argument the command takes none of: "iqp CMD: <what, naming the flag>"
 *     and "Try 'iqp CMD --help'." on stderr (iqp_cli_usage_error), and the
 *     return value is 2 (IQP_EXIT_USAGE).
 * Checks across flags (one of two required, --from below --until) stay in
 * the command: the table says what one flag takes.
 */
#ifndef IQP_CLI_FLAGS_H
#define IQP_CLI_FLAGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* What a flag takes, and the type of its field in the options struct. */
typedef enum iqp_flag_kind {
    IQP_FLAG_BOOL,     /* no value; int, set to 1 */
    IQP_FLAG_STRING,   /* const char *, pointing into argv (or .def) */
    IQP_FLAG_INT,      /* int64_t, a decimal integer in [min, max] */
    IQP_FLAG_DURATION, /* int64_t ms: 500ms, 30s, 15m, 6h, 2d, 2w or bare ms; in [min, max] */
    IQP_FLAG_SIZE,     /* int64_t bytes: N, Nk, Nm, Ng (powers of 1024); in [min, max] */
    IQP_FLAG_NUMBER,   /* double, finite, in [fmin, fmax] */
    IQP_FLAG_CHOICE,   /* int: the index of the value in .choices ("cpu|cuda") */
    IQP_FLAG_REPEATED, /* iqp_flag_list: every occurrence, in order; at most max (0: IQP_FLAG_LIST_MAX) */
} iqp_flag_kind;

/* Where a REPEATED flag (and a command's arguments) are collected. */
#define IQP_FLAG_LIST_MAX 1024
typedef struct iqp_flag_list {
    const char *v[IQP_FLAG_LIST_MAX];
    size_t n;
} iqp_flag_list;

/* One flag of a command's table (the table ends with a zeroed entry). */
typedef struct iqp_flag {
    const char *name;   /* without the leading "--" */
    iqp_flag_kind kind;
    size_t offset;      /* offsetof(the options struct, its field) */
    const char *arg;    /* the value's name in --help ("DIR"); NULL: one for the kind */
    const char *def;    /* the default, as it would be typed; NULL: the field is left as it is */
    const char *help;   /* one paragraph, wrapped by the generator; "(default DEF)" is appended
                           unless it says "default" itself */
    int64_t min, max;   /* INT, DURATION, SIZE: the range (both 0: any non-negative value);
                           REPEATED: max is the most occurrences */
    double fmin, fmax;  /* NUMBER: the range */
    const char *choices;/* CHOICE: the accepted values, '|'-separated */
    const char *must;   /* for a bad value: "--NAME must be <must>, not 'VALUE'"; NULL: from the kind */
    const char *replaces; /* another flag's name: the two are alternatives, and this one given
                             clears what that one set (a STRING set to NULL, a number to 0) */
    /* Optional: after the value is stored, a check of it (and of the
     * options so far); 0, or -1 with the whole message in why. */
    int (*check)(void *opts, const char *value, char *why, size_t whylen);
} iqp_flag;

/* A command: its name (for messages), the texts around the option list,
 * and its flags. */
typedef struct iqp_flag_cmd {
    const char *name;    /* "stats": messages read "iqp stats: ..." */
    const char *usage;   /* printed after "usage: "; more lines after a '\n' */
    const char *about;   /* the paragraphs between usage and options, or NULL */
    const char *epilog;  /* the paragraphs after the options, or NULL */
    const char *args;    /* the arguments' name ("FILE..."); NULL: the command takes none */
    size_t args_offset;  /* with args: offsetof the iqp_flag_list that collects them */
    const iqp_flag *flags;
} iqp_flag_cmd;

/* Parses argv[1..argc) (argv[0] is the subcommand's name) into opts: 0 to
 * run, -1 after printing --help, 2 after a usage error. */
int iqp_flags_parse(const iqp_flag_cmd *cmd, void *opts, int argc, char **argv);

/* The command's --help text, generated from its table. */
void iqp_flags_help(const iqp_flag_cmd *cmd, FILE *out);

/* Appends s to a list; -1 when it is full. */
int iqp_flag_list_add(iqp_flag_list *l, const char *s);

#endif

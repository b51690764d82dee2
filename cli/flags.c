/* flags.c -- the table-driven flag parser and --help generator (flags.h).
 *
 * Parsing is one pass over argv: each "--name[=value]" is looked up in the
 * table (exact name first, then a prefix only one flag has), its value
 * taken from the same word or the next one, converted by its kind and
 * stored at its offset in the options struct. Defaults go through the same
 * conversion first, so a default that does not parse is caught by the
 * unit test (tests/check_flags.c) rather than shown wrong in --help.
 */
#include "cli/flags.h"
#include "cli/cli.h"
#include "model/config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define HELP_WIDTH 79     /* --help lines are wrapped to this many columns */
#define HELP_MAX_COLUMN 26 /* where the flags' texts start, at most */

/* ---- values ------------------------------------------------------------------- */

static int64_t range_max(const iqp_flag *f) { return f->min == 0 && f->max == 0 ? INT64_MAX : f->max; }

/* "N", "Nk", "Nm", "Ng" (also with a trailing "b"/"B", any case) in bytes. */
static int parse_size(const char *s, int64_t *out) {
    char *end;
    if (!*s || *s == '-' || *s == '+') return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s) return -1;
    int shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10, end++; break;
    case 'm': case 'M': shift = 20, end++; break;
    case 'g': case 'G': shift = 30, end++; break;
    default: break;
    }
    if (*end == 'b' || *end == 'B') end++;
    if (*end || v > (INT64_MAX >> shift)) return -1;
    *out = (int64_t)v << shift;
    return 0;
}

/* Index of value among the '|'-separated choices, or -1. */
static int choice_index(const char *choices, const char *value) {
    size_t n = strlen(value);
    int i = 0;
    for (const char *p = choices; *p; i++) {
        size_t len = strcspn(p, "|");
        if (len == n && strncmp(p, value, n) == 0) return i;
        p += len + (p[len] == '|');
    }
    return -1;
}

/* What a value of f must be, for the message about a bad one. */
static void describe(const iqp_flag *f, char *buf, size_t len) {
    if (f->must) {
        snprintf(buf, len, "%s", f->must);
        return;
    }
    int64_t lo = f->min, hi = range_max(f);
    switch (f->kind) {
    case IQP_FLAG_INT: snprintf(buf, len, "an integer in [%" PRId64 ", %" PRId64 "]", lo, hi); break;
    case IQP_FLAG_DURATION:
        snprintf(buf, len, "a duration (500ms, 30s, 15m, 6h, 2d) of %" PRId64 "..%" PRId64 " ms", lo, hi);
        break;
    case IQP_FLAG_SIZE: snprintf(buf, len, "a size (N, Nk, Nm, Ng) of %" PRId64 "..%" PRId64 " bytes", lo, hi); break;
    case IQP_FLAG_NUMBER: snprintf(buf, len, "a number in [%g, %g]", f->fmin, f->fmax); break;
    case IQP_FLAG_CHOICE: {
        /* "a, b or c" */
        size_t at = 0, n = 0;
        for (const char *p = f->choices; *p; n++) {
            size_t l = strcspn(p, "|");
            const char *next = p + l + (p[l] == '|');
            const char *sep = n == 0 ? "" : *next ? ", " : " or ";
            at += (size_t)snprintf(buf + at, at < len ? len - at : 0, "%s%.*s", sep, (int)l, p);
            if (at >= len) break;
            p = next;
        }
        break;
    }
    default: snprintf(buf, len, "a value"); break;
    }
}

/* The flag of cmd called name, or NULL. */
static const iqp_flag *flag_named(const iqp_flag_cmd *cmd, const char *name) {
    for (const iqp_flag *f = cmd->flags; f->name; f++)
        if (strcmp(f->name, name) == 0) return f;
    return NULL;
}

/* What f->replaces set, cleared: its field zeroed for its kind. */
static void clear_replaced(const iqp_flag_cmd *cmd, const iqp_flag *f, void *opts) {
    const iqp_flag *r = f->replaces ? flag_named(cmd, f->replaces) : NULL;
    if (!r) return;
    char *field = (char *)opts + r->offset;
    switch (r->kind) {
    case IQP_FLAG_STRING: *(const char **)field = NULL; break;
    case IQP_FLAG_INT: case IQP_FLAG_DURATION: case IQP_FLAG_SIZE: *(int64_t *)field = 0; break;
    case IQP_FLAG_NUMBER: *(double *)field = 0; break;
    case IQP_FLAG_BOOL: case IQP_FLAG_CHOICE: *(int *)field = 0; break;
    case IQP_FLAG_REPEATED: ((iqp_flag_list *)field)->n = 0; break;
    }
}

/* Stores one value of f into opts: 0, or 2 after the message. */
static int store_value(const iqp_flag_cmd *cmd, const iqp_flag *f, void *opts, const char *v) {
    char *field = (char *)opts + f->offset, what[256];
    int64_t n = 0;
    int bad = 0;
    switch (f->kind) {
    case IQP_FLAG_BOOL: *(int *)field = 1; break;
    case IQP_FLAG_STRING: *(const char **)field = v; break;
    case IQP_FLAG_INT: bad = iqp_cli_parse_i64(v, &n) != 0; break;
    case IQP_FLAG_DURATION: bad = iqp_parse_duration(v, &n) != 0; break;
    case IQP_FLAG_SIZE: bad = parse_size(v, &n) != 0; break;
    case IQP_FLAG_NUMBER: {
        char *end;
        errno = 0;
        double d = strtod(v, &end);
        bad = !*v || *end || errno || !isfinite(d) || d < f->fmin || d > f->fmax;
        if (!bad) *(double *)field = d;
        break;
    }
    case IQP_FLAG_CHOICE: {
        int i = choice_index(f->choices, v);
        bad = i < 0;
        if (!bad) *(int *)field = i;
        break;
    }
    case IQP_FLAG_REPEATED: {
        iqp_flag_list *l = (iqp_flag_list *)field;
        size_t most = f->max > 0 && f->max < IQP_FLAG_LIST_MAX ? (size_t)f->max : IQP_FLAG_LIST_MAX;
        if (l->n >= most) return iqp_cli_usage_error(cmd->name, "--%s given more than %zu times", f->name, most);
        l->v[l->n++] = v;
        break;
    }
    }
    if (f->kind == IQP_FLAG_INT || f->kind == IQP_FLAG_DURATION || f->kind == IQP_FLAG_SIZE) {
        bad = bad || n < f->min || n > range_max(f);
        if (!bad) *(int64_t *)field = n;
    }
    if (bad) {
        describe(f, what, sizeof what);
        return iqp_cli_usage_error(cmd->name, "--%s must be %s, not '%s'", f->name, what, v);
    }
    if (f->check && f->check(opts, v, what, sizeof what) != 0) return iqp_cli_usage_error(cmd->name, "%s", what);
    return 0;
}

/* A value given on the command line (not a default): stored, and what
 * the flag's alternative set cleared. */
static int store_given(const iqp_flag_cmd *cmd, const iqp_flag *f, void *opts, const char *v) {
    int rc = store_value(cmd, f, opts, v);
    if (rc == 0) clear_replaced(cmd, f, opts);
    return rc;
}

/* ---- lookup --------------------------------------------------------------------- */

/* The flag named word[0..len): exact, else the one flag it is a prefix of.
 * NULL after the message when there is none or more than one; *help is
 * set for --help. */
static const iqp_flag *find_flag(const iqp_flag_cmd *cmd, const char *word, size_t len, int *help) {
    const iqp_flag *hit = NULL;
    *help = 0;
    for (const iqp_flag *f = cmd->flags; f->name; f++)
        if (strlen(f->name) == len && strncmp(f->name, word, len) == 0) return f;
    int hits = len > 0 && len <= 4 && strncmp("help", word, len) == 0;
    *help = hits;
    for (const iqp_flag *f = cmd->flags; f->name && len > 0; f++)
        if (strncmp(f->name, word, len) == 0) hit = f, hits++;
    if (hits == 1) return hit;
    *help = 0;
    if (hits > 1) iqp_cli_usage_error(cmd->name, "option '--%.*s' is ambiguous", (int)len, word);
    else iqp_cli_usage_error(cmd->name, "unknown option '--%.*s'", (int)len, word);
    return NULL;
}

/* ---- parsing ---------------------------------------------------------------------- */

static int apply_defaults(const iqp_flag_cmd *cmd, void *opts) {
    for (const iqp_flag *f = cmd->flags; f->name; f++)
        if (f->def && f->kind != IQP_FLAG_BOOL && f->kind != IQP_FLAG_REPEATED && store_value(cmd, f, opts, f->def))
            return 2;
    return 0;
}

static int add_argument(const iqp_flag_cmd *cmd, void *opts, const char *arg) {
    if (!cmd->args) return iqp_cli_usage_error(cmd->name, "unexpected argument '%s'", arg);
    if (iqp_flag_list_add((iqp_flag_list *)((char *)opts + cmd->args_offset), arg) < 0)
        return iqp_cli_usage_error(cmd->name, "more than %d arguments", IQP_FLAG_LIST_MAX);
    return 0;
}

/* One "--name[=value]" at argv[*i] (moving *i past a value taken from the
 * next word): 0, -1 for --help, or 2 after the message. */
static int parse_flag(const iqp_flag_cmd *cmd, void *opts, int argc, char **argv, int *i) {
    const char *word = argv[*i] + 2, *eq = strchr(word, '=');
    size_t len = eq ? (size_t)(eq - word) : strlen(word);
    int help;
    const iqp_flag *f = find_flag(cmd, word, len, &help);
    if (help) return iqp_flags_help(cmd, stdout), -1;
    if (!f) return 2;
    if (f->kind == IQP_FLAG_BOOL) {
        if (eq) return iqp_cli_usage_error(cmd->name, "option '--%s' takes no value", f->name);
        return store_given(cmd, f, opts, NULL);
    }
    if (eq) return store_given(cmd, f, opts, eq + 1);
    if (*i + 1 >= argc) return iqp_cli_usage_error(cmd->name, "option '--%s' needs a value", f->name);
    return store_given(cmd, f, opts, argv[++*i]);
}

int iqp_flags_parse(const iqp_flag_cmd *cmd, void *opts, int argc, char **argv) {
    int rc = apply_defaults(cmd, opts), flags_done = 0;
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        if (flags_done || a[0] != '-' || strcmp(a, "-") == 0) rc = add_argument(cmd, opts, a);
        else if (strcmp(a, "--") == 0) flags_done = 1;
        else if (a[1] != '-') rc = iqp_cli_usage_error(cmd->name, "unknown option '%s'", a);
        else rc = parse_flag(cmd, opts, argc, argv, &i);
    }
    return rc;
}

int iqp_flag_list_add(iqp_flag_list *l, const char *s) {
    if (l->n >= IQP_FLAG_LIST_MAX) return -1;
    l->v[l->n++] = s;
    return 0;
}

/* ---- --help ------------------------------------------------------------------------ */

static const char *default_arg(const iqp_flag *f) {
    switch (f->kind) {
    case IQP_FLAG_INT: return "N";
    case IQP_FLAG_DURATION: return "DURATION";
    case IQP_FLAG_SIZE: return "SIZE";
    case IQP_FLAG_NUMBER: return "X";
    case IQP_FLAG_CHOICE: return f->choices;
    default: return "VALUE";
    }
}

/* "--name ARG" (or "--name" for a BOOL) into buf; its length. */
static size_t flag_left(const iqp_flag *f, char *buf, size_t len) {
    if (f->kind == IQP_FLAG_BOOL) return (size_t)snprintf(buf, len, "--%s", f->name);
    return (size_t)snprintf(buf, len, "--%s %s", f->name, f->arg ? f->arg : default_arg(f));
}

/* Writes text word by word from column `at`, wrapping to `indent`. */
static void wrap(FILE *out, const char *text, size_t at, size_t indent) {
    const char *p = text;
    int first = 1;
    while (*p) {
        size_t n = strcspn(p, " ");
        if (!first && at + 1 + n > HELP_WIDTH) {
            fprintf(out, "\n%*s", (int)indent, "");
            at = indent;
        } else if (!first) {
            fputc(' ', out);
            at++;
        }
        fprintf(out, "%.*s", (int)n, p);
        at += n, first = 0;
        p += n;
        while (*p == ' ') p++;
    }
}

static void print_flag(FILE *out, const iqp_flag *f, size_t column) {
    char left[128], text[1024];
    size_t n = flag_left(f, left, sizeof left);
    snprintf(text, sizeof text, "%s", f->help ? f->help : "");
    if (f->def && f->kind != IQP_FLAG_BOOL && !strstr(text, "default"))
        snprintf(text + strlen(text), sizeof text - strlen(text), "%s(default %s)", *text ? " " : "", f->def);
    fprintf(out, "  %s", left);
    size_t at = 2 + n;
    if (at + 2 > column) fputs("  ", out), at += 2;
    else fprintf(out, "%*s", (int)(column - at), ""), at = column;
    wrap(out, text, at, column);
    fputc('\n', out);
}

/* Paragraphs of text as they are (the command wrote them wrapped). */
static void paragraphs(FILE *out, const char *text) {
    if (text) fprintf(out, "\n%s%s", text, text[strlen(text) - 1] == '\n' ? "" : "\n");
}

void iqp_flags_help(const iqp_flag_cmd *cmd, FILE *out) {
    static const iqp_flag help = {"help", IQP_FLAG_BOOL, 0, .help = "this text"};
    char left[128];
    size_t column = 0;
    for (const iqp_flag *f = cmd->flags; f->name; f++) {
        size_t n = 2 + flag_left(f, left, sizeof left) + 2;
        if (n <= HELP_MAX_COLUMN && n > column) column = n;
    }
    if (column < 12) column = 12;
    fprintf(out, "usage: %s\n", cmd->usage);
    paragraphs(out, cmd->about);
    fprintf(out, "\noptions:\n");
    for (const iqp_flag *f = cmd->flags; f->name; f++) print_flag(out, f, column);
    print_flag(out, &help, column);
    paragraphs(out, cmd->epilog);
}

/* config.c -- `iqp config check|show`: a config file checked before it is
 * deployed, and the configuration a command would really run with.
 *
 * Builds on the readers the commands use, so a file that passes here is a
 * file they accept: the counting part through model/config.c
 * (iqp_config_parse), the stream's sections through cli/stream.c
 * (iqp_stream_config_check / _effective, which read them exactly as
 * `iqp stream --config` does).
 *
 * Those readers stop at the first problem. To name every problem and
 * where it is, check narrows it down by asking them about parts of the
 * file: each top-level key alone, then each member of an object or
 * element of an array alone. A part that fails alone is reported with its
 * JSON path ($.redis.ttl, $.windows[2]); a problem that only shows when
 * parts are combined (a name listed twice, a topic used twice, a store
 * missing) is reported at the smallest enclosing path. The readers'
 * messages are printed as they are.
 */
#include <stddef.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "cli/cli.h"
#include "cli/flags.h"

static const char *CMD = "config";

typedef struct config_opts {
    int require_all;
    iqp_flag_list args; /* check FILE | show [FILE] */
} config_opts;

static const iqp_flag FLAGS[] = {
    {"stream", IQP_FLAG_BOOL, offsetof(config_opts, require_all),
     .help = "check: also require what `iqp stream --config FILE` needs with no other flags (stream.store, "
             "kafka.bootstrap.servers)"},
    {0}};

static const iqp_flag_cmd CONFIG = {
    .name = "config",
    .usage = "iqp config check [--stream] FILE\n"
             "       iqp config show [FILE]",
    .about = "check: reads FILE the way every iqp command reads its --config (the counting\n"
             "layout and limits, and the \"stream\", \"kafka\", \"redis\" and \"metrics\"\n"
             "sections) and prints nothing when it is valid. Otherwise it prints one line\n"
             "per problem on stderr, \"FILE: JSON-PATH: what is wrong\", e.g.\n"
             "  service.json: $.redis.ttl: redis TTL must be a duration of at least 1s\n"
             "\n"
             "show: prints the configuration a command would run with, as JSON: FILE (or\n"
             "nothing) over the defaults, every default filled in. Its output is itself a\n"
             "valid config file.",
    .epilog = "Exit status: 0 valid (check) or printed (show), 2 a problem in FILE or bad\n"
              "usage, 1 FILE cannot be read.",
    .args = "check FILE | show [FILE]",
    .args_offset = offsetof(config_opts, args),
    .flags = FLAGS,
};

/* ---- asking the readers ---------------------------------------------------- */

/* Runs both readers on doc; 0 when both accept it, else -1 with the first
 * problem (without the "FILE: " prefix) in msg. */
static int check_doc(json_t *doc, const char *source, int require_all, char *msg, size_t msglen) {
    iqp_config cfg;
    char err[1024];
    char *text = json_dumps(doc, JSON_COMPACT);
    if (!text) abort();
    iqp_config_defaults(&cfg);
    int rc = iqp_config_parse(&cfg, text, source, err, sizeof err);
    free(text);
    if (rc == 0) {
        iqp_cli_capture_errors(err, sizeof err);
        rc = iqp_stream_config_check(doc, source, require_all) ? -1 : 0;
        iqp_cli_capture_errors(NULL, 0);
    }
    if (rc == 0) return 0;
    /* "FILE: ..." (counting reader) or "config: ..." (stream reader) */
    size_t n = strlen(source);
    const char *m = err;
    if (strncmp(m, source, n) == 0 && strncmp(m + n, ": ", 2) == 0) m += n + 2;
    else if (strncmp(m, "config: ", 8) == 0) m += 8;
    snprintf(msg, msglen, "%s", m);
    return -1;
}

/* {key: value} as a document of its own (value borrowed). */
static json_t *single(const char *key, json_t *value) {
    json_t *doc = json_object();
    json_object_set(doc, key, value);
    return doc;
}

static int report(const char *source, const char *path, const char *msg) {
    fprintf(stderr, "%s: %s: %s\n", source, path, msg);
    return 1;
}

/* path + one member name: ".name" when it is an identifier, else
 * ["name"] (kafka properties have dots). */
static void member_path(char *out, size_t cap, const char *path, const char *name) {
    int ident = (name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z') || name[0] == '_';
    for (const char *p = name; ident && *p; p++)
        ident = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_';
    if (ident) snprintf(out, cap, "%s.%s", path, name);
    else snprintf(out, cap, "%s[\"%s\"]", path, name);
}

/* The reader's message about an array it was given part of names elements
 * by their index in that part, "key[j]": make it name the element of the
 * file, key[orig[j]], and return that index (-1 when it names none). */
static long renumber(char *msg, size_t cap, const char *key, const size_t *orig, size_t n) {
    char from[96], out[1024], *end;
    snprintf(from, sizeof from, "%s[", key);
    char *at = strstr(msg, from);
    if (!at) return -1;
    unsigned long j = strtoul(at + strlen(from), &end, 10);
    if (end == at + strlen(from) || *end != ']' || j >= n) return -1;
    snprintf(out, sizeof out, "%.*s%s%zu%s", (int)(at - msg), msg, from, orig[j], end);
    snprintf(msg, cap, "%s", out);
    return (long)orig[j];
}

/* Whether value checked as {key: value} fails; its message in msg. */
static int fails_alone(const char *source, const char *key, json_t *value, char *msg, size_t msglen) {
    json_t *doc = single(key, value);
    int bad = check_doc(doc, source, 0, msg, msglen) < 0;
    json_decref(doc);
    return bad;
}

/* Problems inside top-level key `key`, whose value failed alone: members
 * or elements that fail alone; then what is left without them, when it
 * still fails (a name listed twice), at the key itself. Returns how many. */
static int narrow(const char *source, const char *key, json_t *value, const char *whole_msg) {
    char msg[1024], path[512], top[300];
    int found = 0;
    json_t *rest = json_deep_copy(value);
    member_path(top, sizeof top, "$", key);
    if (json_is_object(value)) {
        const char *k;
        json_t *v;
        json_object_foreach(value, k, v) {
            json_t *part = single(k, v);
            if (fails_alone(source, key, part, msg, sizeof msg)) {
                member_path(path, sizeof path, top, k);
                found += report(source, path, msg);
                json_object_del(rest, k);
            }
            json_decref(part);
        }
    } else if (json_is_array(value)) {
        size_t i, kept = 0, *orig = calloc(json_array_size(value) + 1, sizeof *orig);
        json_t *v;
        if (!orig) abort();
        json_array_foreach(value, i, v) {
            json_t *part = json_array();
            json_array_append(part, v);
            if (fails_alone(source, key, part, msg, sizeof msg)) {
                renumber(msg, sizeof msg, key, &i, 1);
                snprintf(path, sizeof path, "%s[%zu]", top, i);
                found += report(source, path, msg);
                json_array_remove(rest, kept);
            } else {
                orig[kept++] = i;
            }
            json_decref(part);
        }
        /* What fails only together (a name listed twice), among what is
         * left: at the element the reader names, else at the array. */
        if (!found) snprintf(msg, sizeof msg, "%s", whole_msg);
        if (!found || fails_alone(source, key, rest, msg, sizeof msg)) {
            long at = renumber(msg, sizeof msg, key, orig, kept);
            if (at >= 0) snprintf(path, sizeof path, "%s[%ld]", top, at);
            else snprintf(path, sizeof path, "%s", top);
            found += report(source, path, msg);
        }
        free(orig);
        json_decref(rest);
        rest = NULL;
    }
    if (!found) found = report(source, top, whole_msg);
    else if (rest && fails_alone(source, key, rest, msg, sizeof msg)) found += report(source, top, msg);
    json_decref(rest);
    return found;
}

static int check_file(const char *path, int require_all) {
    json_error_t jerr;
    char msg[1024];
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        if (jerr.line < 0 && jerr.position == 0) return iqp_cli_fail(CMD, "cannot read %s: %s", path, jerr.text);
        fprintf(stderr, "%s: $: invalid JSON at line %d, column %d: %s\n", path, jerr.line, jerr.column, jerr.text);
        return IQP_EXIT_USAGE;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return report(path, "$", "the config must be a JSON object"), IQP_EXIT_USAGE;
    }
    if (check_doc(root, path, require_all, msg, sizeof msg) == 0) return json_decref(root), 0;
    int found = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        json_t *doc = single(key, v);
        char part_msg[1024];
        if (check_doc(doc, path, 0, part_msg, sizeof part_msg) < 0) found += narrow(path, key, v, part_msg);
        json_decref(doc);
    }
    if (!found) report(path, "$", msg);
    json_decref(root);
    return IQP_EXIT_USAGE;
}

/* ---- show ---------------------------------------------------------------------- */

/* The counting part as JSON: the canonical layout plus limits and tuning. */
static json_t *counting_json(const iqp_config *cfg) {
    char *layout = iqp_config_layout_json(cfg);
    json_t *out = json_loads(layout, 0, NULL);
    free(layout);
    if (!out) abort();
    json_object_set_new(out, "limits", json_pack("{s:I, s:I, s:I}", "max_event_bytes",
                                                 (json_int_t)cfg->limits.max_event_bytes, "max_items",
                                                 (json_int_t)cfg->limits.max_items, "max_string_bytes",
                                                 (json_int_t)cfg->limits.max_string_bytes));
    json_object_set_new(out, "dedup_horizon", json_integer(cfg->dedup_horizon_ms));
    json_object_set_new(out, "max_future_skew_ms", json_integer(cfg->max_future_skew_ms));
    json_object_set_new(out, "flush_events", json_integer((json_int_t)cfg->flush_events));
    const iqp_store_tuning *t = &cfg->store;
    json_object_set_new(out, "store", json_pack("{s:I, s:I, s:I, s:I, s:s, s:I, s:I}", "write_buffer_mb",
                                                (json_int_t)t->write_buffer_mb, "l0_compaction_trigger",
                                                (json_int_t)t->l0_compaction_trigger, "block_cache_mb",
                                                (json_int_t)t->block_cache_mb, "background_jobs",
                                                (json_int_t)t->background_jobs, "counts_compaction",
                                                t->counts_universal ? "universal" : "level",
                                                "dedup_l0_compaction_trigger",
                                                (json_int_t)t->dedup_l0_compaction_trigger,
                                                "dedup_write_buffer_mb",
                                                (json_int_t)t->dedup_write_buffer_mb));
    return out;
}

static int show(const char *path) {
    iqp_config cfg;
    char err[1024];
    json_error_t jerr;
    json_t *root = json_object();
    iqp_config_defaults(&cfg);
    if (path) {
        json_decref(root);
        if (iqp_config_load(&cfg, path, err, sizeof err) < 0) return iqp_cli_usage_error(CMD, "%s", err);
        if (!(root = json_load_file(path, 0, &jerr))) return iqp_cli_usage_error(CMD, "%s: %s", path, jerr.text);
    }
    json_t *out = counting_json(&cfg), *stream = iqp_stream_config_effective(root, path ? path : "defaults");
    json_decref(root);
    if (!stream) return json_decref(out), IQP_EXIT_USAGE;
    json_object_update(out, stream);
    json_decref(stream);
    char *text = json_dumps(out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(out);
    if (!text) abort();
    puts(text);
    free(text);
    return 0;
}

/* ---- entry point ----------------------------------------------------------------- */

int iqp_cmd_config(int argc, char **argv) {
    config_opts opt = {0};
    int rc = iqp_flags_parse(&CONFIG, &opt, argc, argv);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    int require_all = opt.require_all;
    if (opt.args.n == 0) return iqp_cli_usage_error(CMD, "give check FILE or show [FILE]");
    const char *what = opt.args.v[0];
    int nargs = (int)opt.args.n - 1;
    if (strcmp(what, "check") == 0) {
        if (nargs != 1) return iqp_cli_usage_error(CMD, "check takes one FILE");
        return check_file(opt.args.v[1], require_all);
    }
    if (strcmp(what, "show") == 0) {
        if (nargs > 1) return iqp_cli_usage_error(CMD, "show takes at most one FILE");
        if (require_all) return iqp_cli_usage_error(CMD, "--stream goes with check");
        return show(nargs ? opt.args.v[1] : NULL);
    }
    return iqp_cli_usage_error(CMD, "unknown action '%s': check or show", what);
}

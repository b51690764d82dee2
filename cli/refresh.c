/* refresh.c -- `iqp refresh`: recompute every feature value of a store as
 * of one instant (window roll), smoothed rates and top-K lists, from one
 * snapshot; dump them as text and publish them to Redis.
 *
 * Stages, each timed for the summary line: open the store read-only (safe
 * beside a running `iqp stream`, as lookup does) and take a snapshot;
 * scan; compute on the chosen backend; --dump; publish (the marked spot
 * below). Progress on a terminal, one summary line on stderr always.
 *
 * Several stores (--store repeated, or --state-dir: every partition store
 * of `iqp stream --state-dir`) are opened the same way, every one checked
 * against the first one's layout, and refreshed as the one store holding
 * their sum (iqp_refresh_run_many).
 */
#include <errno.h>
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/config.h"
#include "cli/cli.h"
#include "cli/flags.h"
#include "client/redis_cluster.h"
#include "client/redis_conn.h"
#include "publisher/generation.h"
#include "refresher/dump.h"
#include "refresher/refresh.h"
#include "store/store.h"
#include "util/clock.h"

static const char *CMD = "refresh";

#define MAX_STORES 1024

typedef struct refresh_opts {
    iqp_flag_list stores;         /* --store, every occurrence */
    const char *state_dir;
    const char *config_path, *dump_path, *redis_url, *redis_prefix, *measure;
    const char *redis_url_file;
    char redis_url_buf[1024];
    int64_t redis_ttl_ms;         /* --redis-ttl; 0: the publisher's default */
    int64_t as_of_ms, threads, top_k;
    int backend;                  /* index in "cpu|cuda": iqp_refresh_backend */
    iqp_refresh_params params;
    iqp_publisher_config redis;   /* from --redis* after publish_check */
    int64_t grace_ms;             /* old generation's keys live this long after the flip */
    int quiet;
} refresh_opts;

static const iqp_flag FLAGS[] = {
    {"store", IQP_FLAG_REPEATED, offsetof(refresh_opts, stores), .arg = "DIR", .max = MAX_STORES,
     .help = "the store (opened read-only; safe beside iqp stream); repeated: the stores summed"},
    {"state-dir", IQP_FLAG_STRING, offsetof(refresh_opts, state_dir), .arg = "DIR",
     .help = "... or every partition store (DIR/partition-<p>) of `iqp stream --state-dir DIR`, summed"},
    {"config", IQP_FLAG_STRING, offsetof(refresh_opts, config_path), .arg = "FILE",
     .help = "check the store against this config"},
    {"as-of", IQP_FLAG_INT, offsetof(refresh_opts, as_of_ms), .arg = "MS", .max = INT64_MAX / 2,
     .help = "windows as of this time, ms since the epoch (default: now)"},
    {"backend", IQP_FLAG_CHOICE, offsetof(refresh_opts, backend), .arg = "B", .choices = "cpu|cuda",
     .def = "cpu", .help = "cpu (default) or cuda (needs ./configure --with-cuda and a GPU)"},
    {"threads", IQP_FLAG_INT, offsetof(refresh_opts, threads), .min = 1, .max = 256,
     .help = "CPU threads for scan and compute (default: online CPUs)"},
    {"smoothing", IQP_FLAG_NUMBER, offsetof(refresh_opts, params.smoothing), .arg = "A", .fmax = INFINITY,
     .must = "a finite number >= 0",
     .help = "prior strength in context occurrences, >= 0 (default 20; 0 turns smoothing off)"},
    {"top-k", IQP_FLAG_INT, offsetof(refresh_opts, top_k), .arg = "K", .def = "100", .max = 1000000,
     .help = "items per top-K list (default 100; 0: none)"},
    {"rank-measure", IQP_FLAG_STRING, offsetof(refresh_opts, measure), .arg = "M",
     .help = "impression, engaged (default) or an action name"},
    {"dump", IQP_FLAG_STRING, offsetof(refresh_opts, dump_path), .arg = "FILE",
     .help = "write the whole result as canonical text ('-': stdout); the same snapshot gives the same "
             "bytes on any backend"},
    {"redis", IQP_FLAG_STRING, offsetof(refresh_opts, redis_url), .arg = "URL",
     .help = "publish to Redis as a new generation, then switch readers to it (refused while an iqp "
             "stream publishes there)"},
    {"redis-url-file", IQP_FLAG_STRING, offsetof(refresh_opts, redis_url_file), .arg = "F",
     .help = "... the URL on the first line of file F instead (keeps a password off the command line)"},
    {"redis-prefix", IQP_FLAG_STRING, offsetof(refresh_opts, redis_prefix), .arg = "P",
     .help = "the publisher's key prefix (default iqp)"},
    {"redis-ttl", IQP_FLAG_DURATION, offsetof(refresh_opts, redis_ttl_ms), .arg = "D", .min = 1000,
     .max = INT64_MAX, .must = "a duration of at least 1s (e.g. 8d)",
     .help = "TTL of the new generation's keys (default 8d)"},
    {"grace-ms", IQP_FLAG_INT, offsetof(refresh_opts, grace_ms), .def = "60000", .max = 86400000,
     .help = "the old generation's keys live N ms after the flip, for readers still reading it "
             "(default 60000)"},
    {"quiet", IQP_FLAG_BOOL, offsetof(refresh_opts, quiet), .help = "no progress line"},
    {0}};

static const iqp_flag_cmd REFRESH = {
    .name = "refresh",
    .usage = "iqp refresh --store DIR... | --state-dir DIR [--as-of MS] [--backend cpu|cuda] [--threads N]\n"
             "                   [--smoothing A] [--top-k K] [--rank-measure NAME]\n"
             "                   [--dump FILE] [--redis URL] [--redis-prefix P] [--redis-ttl D]\n"
             "                   [--redis-url-file FILE] [--grace-ms N] [--quiet]",
    .about = "Recomputes, from one snapshot of the store, every (feature, context, item)\n"
             "and window: context_count, the counters summed over the window, the rates\n"
             "count/context_count (what `iqp lookup` prints), a smoothed rate per measure,\n"
             "(count + A * prior) / (context_count + A), where prior is the measure's rate\n"
             "over the whole feature in that window, and per (feature, context, window) the\n"
             "K items with the highest smoothed ranking measure (ties: item id bytes\n"
             "ascending).\n"
             "Over several stores (--store repeated, or --state-dir DIR: every partition\n"
             "store DIR/partition-<p> of `iqp stream --state-dir DIR`), every value is\n"
             "that of one store holding the sum of their counts; the stores must have\n"
             "one layout.",
    .epilog = "Prints a progress line on a terminal and one summary line at the end (stderr).",
    .flags = FLAGS,
};

static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

/* ---- REDIS PUBLISH (issue 5, Redis half) ------------------------------------------
 * publish_check runs right after option parsing (so a flag problem stops
 * the run before the scan); publish writes the finished result as a new
 * generation and flips readers to it (publisher/generation.h). Both return
 * 0, or an exit status after printing the problem. */
static int publish_check(refresh_opts *o) {
    char err[512];
    if (iqp_redis_url_resolve(&o->redis_url, o->redis_url_file, 0, o->redis_url_buf, sizeof o->redis_url_buf, err,
                              sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    if (!o->redis_url) return 0;
    iqp_redis_url u;
    if (iqp_redis_url_parse(o->redis_url, &u, err, sizeof err) < 0) return iqp_cli_usage_error(CMD, "%s", err);
    iqp_publisher_config_defaults(&o->redis);
    o->redis.url = o->redis_url;
    if (o->redis_prefix) o->redis.prefix = o->redis_prefix;
    char tagged[128]; /* a cluster prefix may hold no brace */
    if (iqp_redis_key_prefix(&u, o->redis.prefix, tagged, sizeof tagged, err, sizeof err) < 0)
        return iqp_cli_usage_error(CMD, "%s", err);
    if (o->redis_ttl_ms) o->redis.ttl_ms = o->redis_ttl_ms;
    return 0;
}

static int publish(const refresh_opts *o, const iqp_refresh_result *r) {
    if (!o->redis_url) return 0;
    char err[1024];
    iqp_generation_stats gs;
    int rc = iqp_generation_publish(r, &o->redis, "iqp refresh", NULL, o->grace_ms, &gs, err, sizeof err);
    if (rc < 0) return iqp_cli_fail(CMD, "%s", err);
    if (!o->quiet)
        fprintf(stderr, "refresh: generation %llu served (was %llu): %llu hashes, %llu values, %llu top-K keys in "
                "%.3f s; %llu keys of older or abandoned generations expire in %lld ms\n",
                (unsigned long long)gs.new_generation, (unsigned long long)gs.old_generation,
                (unsigned long long)gs.hashes, (unsigned long long)gs.values, (unsigned long long)gs.topk_keys,
                gs.write_s, (unsigned long long)gs.expired_keys, (long long)o->grace_ms);
    return 0;
}
/* ---- (end of REDIS PUBLISH) ------------------------------------------------------ */

static int parse_opts(int argc, char **argv, refresh_opts *o) {
    memset(o, 0, sizeof *o);
    iqp_refresh_params_defaults(&o->params, iqp_now_ms());
    o->as_of_ms = o->params.as_of_ms;
    o->threads = default_threads();
    int rc = iqp_flags_parse(&REFRESH, o, argc, argv);
    if (rc) return rc;
    o->params.as_of_ms = o->as_of_ms;
    o->params.n_threads = (int)o->threads;
    o->params.top_k = (size_t)o->top_k;
    o->params.backend = o->backend == 1 ? IQP_REFRESH_CUDA : IQP_REFRESH_CPU;
    if (!o->stores.n == !o->state_dir) return iqp_cli_usage_error(CMD, "give --store DIR (repeatable) or --state-dir DIR");
    return publish_check(o);
}

/* ---- progress and summary ------------------------------------------------------------ */

typedef struct progress_state {
    double last;
    int shown;
} progress_state;

static void on_progress(void *ud, const char *stage, uint64_t done, uint64_t total) {
    progress_state *ps = ud;
    double now = iqp_mono_seconds();
    if (now - ps->last < 0.25) return;
    ps->last = now;
    ps->shown = 1;
    if (total)
        fprintf(stderr, "\r\033[Krefresh: %s %.0f%%", stage, 100.0 * (double)done / (double)total);
    else
        fprintf(stderr, "\r\033[Krefresh: %s %llu keys", stage, (unsigned long long)done);
}

static void clear_progress(progress_state *ps) {
    if (ps->shown) fprintf(stderr, "\r\033[K");
    ps->shown = 0;
}

static double per_s(uint64_t n, double s) { return s > 0 ? (double)n / s : 0; }

static void summary(const refresh_opts *o, const iqp_refresh_result *r, double dump_s,
                    double publish_s) {
    const iqp_refresh_stats *s = iqp_refresh_get_stats(r);
    fprintf(stderr,
            "refresh: as_of %lld, %llu keys scanned (%llu cells in windows, %llu context cells, "
            "%llu bad), %llu contexts, %llu entities, %llu top-K entries; scan %.3f s "
            "(%.0f keys/s), compute %s %.3f s (%.0f cells/s)",
            (long long)iqp_refresh_as_of(r), (unsigned long long)(s->keys_scanned + s->ctx_keys_scanned),
            (unsigned long long)s->cells, (unsigned long long)s->ctx_cells,
            (unsigned long long)s->bad_keys, (unsigned long long)s->contexts,
            (unsigned long long)s->entities, (unsigned long long)s->topk_entries, s->scan_s,
            per_s(s->keys_scanned + s->ctx_keys_scanned, s->scan_s),
            o->params.backend == IQP_REFRESH_CUDA ? "cuda" : "cpu", s->compute_s,
            per_s(s->cells, s->compute_s));
    if (o->params.backend == IQP_REFRESH_CUDA)
        fprintf(stderr, " [upload %.3f s, kernels %.3f s, download %.3f s]", s->upload_s, s->kernel_s,
                s->download_s);
    if (o->dump_path) fprintf(stderr, ", dump %.3f s", dump_s);
    if (o->redis_url) fprintf(stderr, ", publish %.3f s", publish_s);
    fprintf(stderr, "\n");
}

/* ---- the command ----------------------------------------------------------------------- */

static int write_dump(const char *path, const iqp_refresh_result *r) {
    int to_stdout = strcmp(path, "-") == 0;
    FILE *f = to_stdout ? stdout : fopen(path, "w");
    if (!f) return iqp_cli_fail(CMD, "cannot write %s: %s", path, strerror(errno));
    static char buf[1 << 16];
    if (!to_stdout) setvbuf(f, buf, _IOFBF, sizeof buf);
    int bad = iqp_refresh_dump(r, f) < 0;
    bad |= to_stdout ? fflush(f) != 0 : fclose(f) != 0;
    if (bad) return iqp_cli_fail(CMD, "cannot write %s: %s", path, strerror(errno));
    return 0;
}

/* The partition stores of state_dir into o->stores (paths malloc'd into
 * paths); an exit status. */
static int list_partitions(refresh_opts *o, char **paths) {
    char err[1024];
    size_t n;
    if (iqp_cli_partition_stores(o->state_dir, paths, MAX_STORES, &n, err, sizeof err) < 0)
        return iqp_cli_fail(CMD, "%s", err);
    for (size_t i = 0; i < n; i++) o->stores.v[i] = paths[i];
    o->stores.n = n;
    return 0;
}

/* Opens o->stores read-only: the first against --config (when given),
 * every other against the first one's layout. An exit status; st[0..*n)
 * are open either way. */
static int open_stores(const refresh_opts *o, iqp_store **st, size_t *n) {
    char err[1024];
    iqp_config cfg;
    *n = 0;
    if (o->config_path) {
        iqp_config_defaults(&cfg);
        if (iqp_config_load(&cfg, o->config_path, err, sizeof err) < 0) return iqp_cli_usage_error(CMD, "%s", err);
    }
    for (size_t i = 0; i < o->stores.n; i++) {
        const iqp_config *want = i > 0 ? iqp_store_config(st[0]) : o->config_path ? &cfg : NULL;
        iqp_store *s = iqp_store_open(o->stores.v[i], want, IQP_STORE_READ_ONLY, err, sizeof err);
        if (!s && i > 0 && strstr(err, "does not match"))
            return iqp_cli_fail(CMD, "the stores must have one layout (that of %s): %s", o->stores.v[0], err);
        if (!s) return iqp_cli_fail(CMD, "%s", err);
        st[(*n)++] = s;
    }
    return 0;
}

/* Scan, compute, dump, publish; an exit status. */
static int run(refresh_opts *o, iqp_store **st, size_t n) {
    char err[1024];
    progress_state ps = {0, 0};
    if (!o->quiet && isatty(STDERR_FILENO)) {
        o->params.progress = on_progress;
        o->params.progress_ud = &ps;
    }
    if (o->params.backend == IQP_REFRESH_CUDA && !iqp_refresh_cuda_available(err, sizeof err))
        return iqp_cli_fail(CMD, "--backend cuda: %s", err);
    iqp_store_snapshot *snap[MAX_STORES];
    for (size_t i = 0; i < n; i++) snap[i] = iqp_store_snapshot_new(st[i]);
    iqp_refresh_result *r = NULL;
    int rc = iqp_refresh_scan_many(st, (const iqp_store_snapshot *const *)snap, n, &o->params, &r, err, sizeof err);
    if (rc == 0) rc = iqp_refresh_compute(r, &o->params, err, sizeof err);
    clear_progress(&ps);
    if (rc < 0) {
        iqp_refresh_free(r);
        for (size_t i = 0; i < n; i++) iqp_store_snapshot_free(st[i], snap[i]);
        return iqp_cli_fail(CMD, "%s", err);
    }
    iqp_refresh_drop_cells(r);
    double t0 = iqp_mono_seconds();
    rc = o->dump_path ? write_dump(o->dump_path, r) : 0;
    double t1 = iqp_mono_seconds();
    if (rc == 0) rc = publish(o, r);
    double t2 = iqp_mono_seconds();
    if (rc == 0) summary(o, r, t1 - t0, t2 - t1);
    iqp_refresh_free(r);
    for (size_t i = 0; i < n; i++) iqp_store_snapshot_free(st[i], snap[i]);
    return rc;
}

static void close_stores(iqp_store **st, size_t n, char **paths) {
    for (size_t i = 0; i < n; i++) iqp_store_close(st[i]);
    for (size_t i = 0; i < MAX_STORES && paths[i]; i++) free(paths[i]);
}

int iqp_cmd_refresh(int argc, char **argv) {
    refresh_opts o;
    iqp_store *st[MAX_STORES];
    char *paths[MAX_STORES] = {0};
    size_t n = 0;
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc < 0 ? IQP_EXIT_OK : rc;
    if (o.state_dir) rc = list_partitions(&o, paths);
    if (rc == 0) rc = open_stores(&o, st, &n);
    if (rc == 0 && o.measure) {
        int k = iqp_refresh_measure_index(iqp_store_config(st[0]), o.measure);
        if (k < 0)
            rc = iqp_cli_usage_error(CMD, "--rank-measure: '%s' is not impression, engaged or an action of this store",
                                     o.measure);
        else
            o.params.rank_measure = k;
    }
    if (rc == 0) rc = run(&o, st, n);
    close_stores(st, n, paths);
    return rc;
}

/* rows.c -- training rows out, labels patched in place (see rows.h).
 *
 * A row is formatted into a scratch buffer, then appended to the output
 * buffer (1 MiB, written whole by the writer thread, see "The file"). Every row ends with the same labels
 * segment, all zeros, whose digits sit at fixed offsets (label_digit), so
 * setting a label is one byte at row offset + segment offset + digit.
 * Numbers are formatted by hand (counts) or with "%.17g" (rates, the
 * precision iqp lookup prints, so they round-trip exactly).
 */
#include "export/rows.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "export/keymap.h"
#include "model/buf.h"

#define OUT_BUFFER (1u << 20)
#define NO_ROW UINT64_MAX

/* A row whose label horizon is open: where its labels are in the file. */
typedef struct open_row {
    iqp_key128 key;           /* (request_id, item) */
    int64_t ts;
    uint64_t offset;          /* file offset of its labels segment */
    uint64_t prev;            /* previous open row of the same key, or NO_ROW */
    uint32_t bits;            /* labels already 1: bit 0 engaged, 1 + a action a */
} open_row;

struct iqp_rows {
    const iqp_config *cfg;
    iqp_rows_format fmt;
    int rates;
    int64_t horizon_ms;
    int fd;
    char *path;
    iqp_buf out;                 /* not yet written; out.buf[0] is at file offset out_offset */
    uint64_t out_offset;
    struct {                     /* the buffer the writer thread writes ("The file") */
        pthread_t thread;
        pthread_mutex_t mu;
        pthread_cond_t cv;
        iqp_buf buf;             /* buf.buf[0] is at file offset offset */
        uint64_t offset;
        int busy;                /* 1 while the thread writes buf */
        int stop;
        int error;               /* errno of the first failed write, 0 */
        uint64_t *patches;       /* label digits in buf, set once it is written */
        size_t n_patches, cap_patches;
    } flight;
    iqp_buf row;                 /* scratch: the row being formatted */
    char **measure_keys;      /* JSONL: ',"<feature>.<window>.<measure>":' per value column */
    size_t n_measures;        /* value columns per (feature, window) */
    iqp_buf labels;              /* the all-zero labels segment, ending the row */
    size_t label_digit[1 + IQP_MAX_ACTIONS];
    /* open rows: a ring indexed by sequence number, oldest first */
    open_row *ring;
    uint64_t ring_mask, head, tail;
    iqp_keymap *newest;       /* key -> newest open row's sequence number */
    struct pre_key {          /* iqp_rows_prefetch's keys, in the order given */
        const char *request_id, *item;
        size_t rlen, ilen;
        iqp_key128 key;
    } *pre;
    size_t n_pre, cap_pre, at_pre;
    iqp_rows_stats stats;
};

/* ---- formatting into the buffers (model/buf.h) ------------------------------- */

/* A rate with 17 significant digits; in JSON always with a '.' or an
 * exponent, as jansson (iqp lookup) prints reals. */
static void sb_rate(iqp_buf *b, double v, int json) {
    char tmp[40];
    if (v == 0.0) { /* the common case: no such action in the window */
        iqp_buf_puts(b, json ? "0.0" : "0");
        return;
    }
    int n = snprintf(tmp, sizeof tmp, "%.17g", v);
    iqp_buf_append(b, tmp, (size_t)n);
    if (json && !strpbrk(tmp, ".eEn")) iqp_buf_append(b, ".0", 2);
}

/* A JSON string: quotes, backslashes and control bytes escaped; other
 * bytes (valid UTF-8, the decoder checked) as they are. */
static void sb_json_string(iqp_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    iqp_buf_reserve(b, n + 2);
    b->buf[b->len++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            iqp_buf_append(b, e, 2);
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            iqp_buf_append(b, e, 6);
        } else {
            iqp_buf_append(b, (const char *)&c, 1);
        }
    }
    iqp_buf_append(b, "\"", 1);
}

/* A CSV field (RFC 4180): quoted, with quotes doubled, when it holds a
 * comma, a quote or a line break. */
static void sb_csv_string(iqp_buf *b, const char *s, size_t n) {
    int quote = 0;
    for (size_t i = 0; i < n && !quote; i++) quote = strchr(",\"\r\n", s[i]) != NULL && s[i];
    if (!quote) {
        iqp_buf_append(b, s, n);
        return;
    }
    iqp_buf_append(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') iqp_buf_append(b, "\"", 1);
        iqp_buf_append(b, &s[i], 1);
    }
    iqp_buf_append(b, "\"", 1);
}

static void sb_string(iqp_buf *b, const char *s, size_t n, iqp_rows_format fmt) {
    if (fmt == IQP_ROWS_JSONL) sb_json_string(b, s, n);
    else sb_csv_string(b, s, n);
}

/* ---- columns ---------------------------------------------------------------- */

/* Name of value column m of a (feature, window): counts, then rates. */
static void measure_name(const iqp_config *cfg, size_t m, char *out, size_t len) {
    size_t width = IQP_COUNTERS(cfg);
    const char *rate = m > width ? "iqp_" : "";
    size_t k = m > width ? m - width - 1 : m - 1;
    if (m == 0) snprintf(out, len, "context_count");
    else if (k == IQP_COUNTER_IMPRESSION) snprintf(out, len, "%simpression", rate);
    else if (k == IQP_COUNTER_ENGAGED) snprintf(out, len, "%sengaged", rate);
    else snprintf(out, len, "%s%s", rate, cfg->actions[k - IQP_COUNTER_ACTION0]);
}

/* The leading columns: request_id, position, query, then every segment
 * but query text (the defaults: country, gender), then item, ts. */
static const char *const ROW_KEYS[] = {"request_id", "position", "query", "item", "ts"};
#define ROW_KEYS_BEFORE_SEGMENTS 3

/* The JSONL key prefixes of every value column, and the CSV header. */
static void build_columns(iqp_rows *w, iqp_buf *header) {
    const iqp_config *cfg = w->cfg;
    w->n_measures = 1 + IQP_COUNTERS(cfg) * (w->rates ? 2 : 1);
    size_t n = cfg->n_features * cfg->n_windows * w->n_measures;
    w->measure_keys = calloc(n, sizeof *w->measure_keys);
    if (!w->measure_keys) abort();
    for (size_t i = 0; i < sizeof ROW_KEYS / sizeof *ROW_KEYS; i++) {
        if (i) iqp_buf_puts(header, ",");
        iqp_buf_puts(header, ROW_KEYS[i]);
        for (size_t sg = 0; i + 1 == ROW_KEYS_BEFORE_SEGMENTS && sg < cfg->n_segments; sg++)
            if (cfg->segments[sg].normalizer != IQP_NORM_QUERY) {
                iqp_buf_puts(header, ",");
                iqp_buf_puts(header, cfg->segments[sg].name);
            }
    }
    size_t k = 0;
    for (size_t f = 0; f < cfg->n_features; f++)
        for (size_t win = 0; win < cfg->n_windows; win++)
            for (size_t m = 0; m < w->n_measures; m++, k++) {
                char name[3 * IQP_NAME_MAX + 16], key[sizeof name + 8];
                measure_name(cfg, m, name, sizeof name);
                snprintf(key, sizeof key, "%s.%s.%s", cfg->features[f].name,
                         cfg->windows[win].name, name);
                iqp_buf_puts(header, ",");
                iqp_buf_puts(header, key);
                w->measure_keys[k] = malloc(strlen(key) + 5);
                if (!w->measure_keys[k]) abort();
                sprintf(w->measure_keys[k], ",\"%s\":", key);
            }
}

/* The labels segment (all zeros) and where its digits are. */
static void build_labels(iqp_rows *w, iqp_buf *header) {
    const iqp_config *cfg = w->cfg;
    for (size_t k = 0; k <= cfg->n_actions; k++) {
        char name[IQP_NAME_MAX + 8];
        snprintf(name, sizeof name, "label_%s", k == 0 ? "engaged" : cfg->actions[k - 1]);
        iqp_buf_puts(header, ",");
        iqp_buf_puts(header, name);
        if (w->fmt == IQP_ROWS_JSONL) {
            iqp_buf_puts(&w->labels, ",\"");
            iqp_buf_puts(&w->labels, name);
            iqp_buf_puts(&w->labels, "\":");
        } else {
            iqp_buf_puts(&w->labels, ",");
        }
        w->label_digit[k] = w->labels.len;
        iqp_buf_puts(&w->labels, "0");
    }
    iqp_buf_puts(&w->labels, w->fmt == IQP_ROWS_JSONL ? "}\n" : "\n");
    iqp_buf_puts(header, "\n");
}

/* ---- the file -----------------------------------------------------------------
 *
 * write(2) of a full 1 MiB buffer copies it into the page cache: from ~1%
 * to 13% of the export's main thread (perf; more under memory pressure),
 * work that has no reason to wait for the next row. So a writer thread
 * writes each full buffer while the main thread formats rows into the
 * other one (two buffers, swapped at flush_out; at most one write in
 * flight, in file order). A label digit lands in whichever part of the
 * file its row is in: the buffer being filled (set there), the buffer in
 * flight (queued, set with pwrite once that write is done: at the next
 * swap or at close), or what is written already (pwrite at once). */

/* 0, or the errno of the failure. */
static int write_bytes(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return errno;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static void *writer_main(void *arg) {
    iqp_rows *w = arg;
    pthread_setname_np(pthread_self(), "iqp-rows");
    pthread_mutex_lock(&w->flight.mu);
    for (;;) {
        while (!w->flight.busy && !w->flight.stop) pthread_cond_wait(&w->flight.cv, &w->flight.mu);
        if (!w->flight.busy) break; /* stopped, nothing in flight */
        pthread_mutex_unlock(&w->flight.mu);
        int e = write_bytes(w->fd, w->flight.buf.buf, w->flight.buf.len);
        pthread_mutex_lock(&w->flight.mu);
        if (e && !w->flight.error) w->flight.error = e;
        w->flight.busy = 0;
        pthread_cond_broadcast(&w->flight.cv);
    }
    pthread_mutex_unlock(&w->flight.mu);
    return NULL;
}

/* Sets one byte at file offset off (already written) to '1'. */
static int pwrite_digit(iqp_rows *w, uint64_t off, char *err, size_t errlen) {
    for (;;) {
        ssize_t k = pwrite(w->fd, "1", 1, (off_t)off);
        if (k == 1) return 0;
        if (k < 0 && errno == EINTR) continue;
        snprintf(err, errlen, "cannot set a label in %s: %s", w->path,
                 k < 0 ? strerror(errno) : "short write");
        return -1;
    }
}

/* Waits for the write in flight, then sets the labels queued for it. */
static int flight_wait(iqp_rows *w, char *err, size_t errlen) {
    pthread_mutex_lock(&w->flight.mu);
    while (w->flight.busy) pthread_cond_wait(&w->flight.cv, &w->flight.mu);
    int e = w->flight.error;
    pthread_mutex_unlock(&w->flight.mu);
    if (e) {
        snprintf(err, errlen, "cannot write %s: %s", w->path, strerror(e));
        return -1;
    }
    for (size_t i = 0; i < w->flight.n_patches; i++)
        if (pwrite_digit(w, w->flight.patches[i], err, errlen) < 0) return -1;
    w->flight.n_patches = 0;
    return 0;
}

/* Hands the buffer being filled to the writer thread. */
static int flush_out(iqp_rows *w, char *err, size_t errlen) {
    if (flight_wait(w, err, errlen) < 0) return -1;
    if (w->out.len == 0) return 0;
    iqp_buf full = w->out;
    w->out = w->flight.buf;
    w->out.len = 0;
    w->flight.buf = full;
    w->flight.offset = w->out_offset;
    w->out_offset += full.len;
    pthread_mutex_lock(&w->flight.mu);
    w->flight.busy = 1;
    pthread_cond_broadcast(&w->flight.cv);
    pthread_mutex_unlock(&w->flight.mu);
    return 0;
}

/* Sets one byte at file offset off to '1' (see above). */
static int patch_digit(iqp_rows *w, uint64_t off, char *err, size_t errlen) {
    if (off >= w->out_offset) {
        w->out.buf[off - w->out_offset] = '1';
        return 0;
    }
    if (w->flight.buf.len > 0 && off >= w->flight.offset) {
        if (w->flight.n_patches == w->flight.cap_patches) {
            w->flight.cap_patches = w->flight.cap_patches ? 2 * w->flight.cap_patches : 256;
            w->flight.patches = realloc(w->flight.patches, w->flight.cap_patches * sizeof *w->flight.patches);
            if (!w->flight.patches) abort();
        }
        w->flight.patches[w->flight.n_patches++] = off;
        return 0;
    }
    return pwrite_digit(w, off, err, errlen);
}

/* Writes what is left and stops the thread; 0, or -1 with err. */
static int writer_finish(iqp_rows *w, char *err, size_t errlen) {
    int rc = flush_out(w, err, errlen);
    char e2[512];
    if (flight_wait(w, e2, sizeof e2) < 0 && rc == 0) {
        snprintf(err, errlen, "%s", e2);
        rc = -1;
    }
    pthread_mutex_lock(&w->flight.mu);
    w->flight.stop = 1;
    pthread_cond_broadcast(&w->flight.cv);
    pthread_mutex_unlock(&w->flight.mu);
    pthread_join(w->flight.thread, NULL);
    pthread_mutex_destroy(&w->flight.mu);
    pthread_cond_destroy(&w->flight.cv);
    free(w->flight.buf.buf);
    free(w->flight.patches);
    return rc;
}

iqp_rows *iqp_rows_open(const char *path, const iqp_config *cfg, iqp_rows_format fmt, int rates,
                        int64_t label_horizon_ms, char *err, size_t errlen) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    struct stat st;
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s is not a regular file (labels are set in place, so the output "
                              "must be one)", path);
        close(fd);
        return NULL;
    }
    iqp_rows *w = calloc(1, sizeof *w);
    if (!w) abort();
    w->cfg = cfg;
    w->fmt = fmt;
    w->rates = rates;
    w->horizon_ms = label_horizon_ms;
    w->fd = fd;
    w->path = strdup(path);
    w->ring_mask = 1023;
    w->ring = malloc((w->ring_mask + 1) * sizeof *w->ring);
    w->newest = iqp_keymap_new();
    if (!w->path || !w->ring) abort();
    iqp_buf header = {0};
    build_columns(w, &header);
    build_labels(w, &header);
    if (fmt == IQP_ROWS_CSV) iqp_buf_append(&w->out, header.buf, header.len);
    free(header.buf);
    pthread_mutex_init(&w->flight.mu, NULL);
    pthread_cond_init(&w->flight.cv, NULL);
    if (pthread_create(&w->flight.thread, NULL, writer_main, w) != 0) abort();
    return w;
}

/* ---- open rows ------------------------------------------------------------------ */

/* XXH3-128 of (u32 request_id length, request_id, item). */
static iqp_key128 row_key(const char *request_id, size_t rlen, const char *item, size_t ilen) {
    unsigned char stack[512], *buf = stack;
    uint32_t n = (uint32_t)rlen;
    size_t len = sizeof n + rlen + ilen;
    if (len > sizeof stack && !(buf = malloc(len))) abort();
    memcpy(buf, &n, sizeof n);
    memcpy(buf + sizeof n, request_id, rlen);
    memcpy(buf + sizeof n + rlen, item, ilen);
    iqp_key128 k = iqp_key128_of(buf, len);
    if (buf != stack) free(buf);
    return k;
}

static void ring_grow(iqp_rows *w) {
    uint64_t cap = 2 * (w->ring_mask + 1);
    open_row *ring = malloc(cap * sizeof *ring);
    if (!ring) abort();
    for (uint64_t s = w->head; s < w->tail; s++) ring[s & (cap - 1)] = w->ring[s & w->ring_mask];
    free(w->ring);
    w->ring = ring;
    w->ring_mask = cap - 1;
}

void iqp_rows_prefetch(iqp_rows *w, const char *request_id, size_t rlen, const char *const *items,
                       const size_t *item_lens, size_t n) {
    if (n > w->cap_pre) {
        w->cap_pre = n;
        free(w->pre);
        if (!(w->pre = malloc(n * sizeof *w->pre))) abort();
    }
    for (size_t i = 0; i < n; i++) {
        struct pre_key *p = &w->pre[i];
        *p = (struct pre_key){request_id, items[i], rlen, item_lens[i],
                              row_key(request_id, rlen, items[i], item_lens[i])};
        iqp_keymap_prefetch(w->newest, p->key);
    }
    w->n_pre = n;
    w->at_pre = 0;
}

/* row's key: the next prefetched one when it is row's (same addresses
 * and lengths), else made here. */
static iqp_key128 next_row_key(iqp_rows *w, const iqp_row *row) {
    if (w->at_pre < w->n_pre) {
        const struct pre_key *p = &w->pre[w->at_pre++];
        if (p->request_id == row->request_id && p->rlen == row->request_id_len && p->item == row->item &&
            p->ilen == row->item_len)
            return p->key;
        w->n_pre = 0; /* out of order: the rest are made on the spot */
    }
    return row_key(row->request_id, row->request_id_len, row->item, row->item_len);
}

static void open_label_horizon(iqp_rows *w, const iqp_row *row, uint64_t labels_offset) {
    if (w->tail - w->head > w->ring_mask) ring_grow(w);
    open_row *r = &w->ring[w->tail & w->ring_mask];
    uint64_t prev;
    r->key = next_row_key(w, row);
    r->ts = row->ts;
    r->offset = labels_offset;
    r->prev = iqp_keymap_swap(w->newest, r->key, w->tail, &prev) ? prev : NO_ROW;
    r->bits = 0;
    w->tail++;
    if (w->tail - w->head > w->stats.open_peak) w->stats.open_peak = (size_t)(w->tail - w->head);
}

void iqp_rows_expire(iqp_rows *w, int64_t t) {
    while (w->head < w->tail) {
        open_row *r = &w->ring[w->head & w->ring_mask];
        if (r->ts > t - w->horizon_ms) break;
        uint64_t newest;
        if (iqp_keymap_get(w->newest, r->key, &newest) && newest == w->head)
            iqp_keymap_delete(w->newest, r->key);
        w->head++;
    }
}

size_t iqp_rows_open_count(const iqp_rows *w) { return (size_t)(w->tail - w->head); }

/* Turns label bit k of r to 1 (once). */
static int set_label(iqp_rows *w, open_row *r, size_t k, char *err, size_t errlen) {
    if (r->bits & (1u << k)) return 0;
    if (patch_digit(w, r->offset + w->label_digit[k], err, errlen) < 0) return -1;
    if (k == 0) w->stats.rows_engaged++;
    r->bits |= 1u << k;
    w->stats.labels_set++;
    return 0;
}

int iqp_rows_label(iqp_rows *w, const char *request_id, size_t rlen, const char *item,
                   size_t ilen, int action, int64_t ts, char *err, size_t errlen) {
    uint64_t s;
    if (!iqp_keymap_get(w->newest, row_key(request_id, rlen, item, ilen), &s)) return 0;
    for (; s != NO_ROW && s >= w->head; s = w->ring[s & w->ring_mask].prev) {
        open_row *r = &w->ring[s & w->ring_mask];
        if (ts < r->ts || ts - r->ts >= w->horizon_ms) continue;
        if (set_label(w, r, 0, err, errlen) < 0) return -1;
        if (set_label(w, r, 1 + (size_t)action, err, errlen) < 0) return -1;
    }
    return 0;
}

/* ---- rows ------------------------------------------------------------------------- */

/* A count: most are single digits (few events per window and item), so
 * those skip iqp_buf_i64's loop; the same bytes either way. */
static inline void sb_count(iqp_buf *b, int64_t v) {
    if (v >= 0 && v < 10) iqp_buf_putc(b, (char)('0' + v));
    else iqp_buf_i64(b, v);
}

static void format_values(iqp_rows *w, const iqp_feature_row *features) {
    const iqp_config *cfg = w->cfg;
    size_t width = IQP_COUNTERS(cfg), k = 0, n = cfg->n_features * cfg->n_windows;
    int json = w->fmt == IQP_ROWS_JSONL;
    for (size_t fw = 0; fw < n; fw++) {
        const iqp_feature_row *r = &features[fw];
        int64_t values[1 + IQP_MAX_COUNTERS];
        values[0] = r->context_count;
        memcpy(values + 1, r->counters, width * sizeof *values);
        for (size_t m = 0; m < w->n_measures; m++, k++) {
            if (json) iqp_buf_puts(&w->row, w->measure_keys[k]);
            else iqp_buf_putc(&w->row, ',');
            if (m <= width) sb_count(&w->row, values[m]);
            else sb_rate(&w->row, iqp_features_rate(values[m - width], r->context_count), json);
        }
    }
}

static void format_row(iqp_rows *w, const iqp_row *row) {
    iqp_rows_format fmt = w->fmt;
    int json = fmt == IQP_ROWS_JSONL;
    iqp_buf *b = &w->row;
    b->len = 0;
    iqp_buf_puts(b, json ? "{\"request_id\":" : "");
    sb_string(b, row->request_id, row->request_id_len, fmt);
    iqp_buf_puts(b, json ? ",\"position\":" : ",");
    iqp_buf_i64(b, row->position);
    iqp_buf_puts(b, json ? ",\"query\":" : ",");
    sb_string(b, row->query, row->query_len, fmt);
    for (size_t sg = 0; sg < w->cfg->n_segments; sg++) {
        if (w->cfg->segments[sg].normalizer == IQP_NORM_QUERY) continue;
        iqp_buf_puts(b, ",");
        if (json) {
            iqp_buf_puts(b, "\"");
            iqp_buf_puts(b, w->cfg->segments[sg].name);
            iqp_buf_puts(b, "\":");
        }
        sb_string(b, row->ctx->v[sg].s, row->ctx->v[sg].len, fmt);
    }
    iqp_buf_puts(b, json ? ",\"item\":" : ",");
    sb_string(b, row->item, row->item_len, fmt);
    iqp_buf_puts(b, json ? ",\"ts\":" : ",");
    iqp_buf_i64(b, row->ts);
    format_values(w, row->features);
}

int iqp_rows_write(iqp_rows *w, const iqp_row *row, char *err, size_t errlen) {
    format_row(w, row);
    size_t n = w->row.len + w->labels.len;
    if (w->out.len + n > OUT_BUFFER && w->out.len > 0 && flush_out(w, err, errlen) < 0) return -1;
    uint64_t labels_offset = w->out_offset + w->out.len + w->row.len;
    iqp_buf_append(&w->out, w->row.buf, w->row.len);
    iqp_buf_append(&w->out, w->labels.buf, w->labels.len);
    w->stats.rows++;
    w->stats.bytes += n;
    open_label_horizon(w, row, labels_offset);
    return 0;
}

const iqp_rows_stats *iqp_rows_get_stats(const iqp_rows *w) { return &w->stats; }

int iqp_rows_close(iqp_rows *w, char *err, size_t errlen) {
    int rc = writer_finish(w, err, errlen);
    if (close(w->fd) < 0 && rc == 0) {
        snprintf(err, errlen, "cannot write %s: %s", w->path, strerror(errno));
        rc = -1;
    }
    size_t n = w->cfg->n_features * w->cfg->n_windows * w->n_measures;
    for (size_t k = 0; k < n; k++) free(w->measure_keys[k]);
    free(w->measure_keys);
    free(w->out.buf);
    free(w->row.buf);
    free(w->labels.buf);
    free(w->ring);
    free(w->pre);
    iqp_keymap_free(w->newest);
    free(w->path);
    free(w);
    return rc;
}

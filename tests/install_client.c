/* install_client.c -- a ranker's smallest program, built by
 * tests/check_install.sh against the *installed* libiqp with
 * `pkg-config --cflags --libs libiqp` (not part of the build).
 *
 * usage: install_client URL QUERY COUNTRY GENDER FEATURE WINDOW ITEM...
 * Prints, per item, "ITEM context_count impression click" of FEATURE in
 * WINDOW, or "error: <status name>: <message>" and exits 1.
 */
#include <iqp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t find(const iqp_client *c, const char *(*name)(const iqp_client *, size_t), size_t n,
                   const char *want) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(name(c, i), want) == 0) return i;
    fprintf(stderr, "error: '%s' is not served\n", want);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 8) return fprintf(stderr, "usage: %s URL QUERY COUNTRY GENDER FEATURE WINDOW ITEM...\n", argv[0]), 2;
    iqp_client_options o;
    iqp_client_options_init(&o);
    o.timeout_ms = 2000;
    iqp_client *c = iqp_client_open(argv[1], &o);
    if (!c) return fprintf(stderr, "error: out of memory\n"), 1;
    if (iqp_client_status(c) != IQP_OK) {
        printf("error: %s: %s\n", iqp_status_name(iqp_client_status(c)), iqp_client_errstr(c));
        iqp_client_close(c);
        return 1;
    }
    size_t nf = iqp_client_n_features(c), nw = iqp_client_n_windows(c), nm = iqp_client_n_measures(c);
    size_t f = find(c, iqp_client_feature_name, nf, argv[5]), w = find(c, iqp_client_window_name, nw, argv[6]);
    size_t m_ctx = find(c, iqp_client_measure_name, nm, "context_count");
    size_t m_imp = find(c, iqp_client_measure_name, nm, "impression");
    size_t m_click = find(c, iqp_client_measure_name, nm, "click");
    const char *const *items = (const char *const *)argv + 7;
    size_t n_items = (size_t)argc - 7, len = iqp_client_result_len(c, n_items);
    double *out = malloc(len * sizeof *out);
    iqp_status st = out ? iqp_client_lookup(c, argv[2], argv[3], argv[4], items, n_items, out, len) : IQP_ENOMEM;
    if (st != IQP_OK) {
        printf("error: %s: %s\n", iqp_status_name(st), iqp_client_errstr(c));
    } else {
        for (size_t i = 0; i < n_items; i++) {
            const double *v = out + ((i * nf + f) * nw + w) * nm;
            printf("%s %.0f %.0f %.0f\n", items[i], v[m_ctx], v[m_imp], v[m_click]);
        }
    }
    free(out);
    iqp_client_close(c);
    return st == IQP_OK ? 0 : 1;
}

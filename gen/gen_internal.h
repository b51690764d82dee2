/* gen_internal.h -- the state of one `iqp gen` run, shared by the files of
 * gen/ and by nothing else.
 *
 * Owns: struct gen, the generator state: the options, the one rng, the
 * Zipf tables, the impression being generated (query, user, items), the
 * pending-line heap and the outputs, the truth cells, the counters.
 * gen.c creates, runs and frees it; traffic.c (pick_items), event.c and
 * faults.c read it and draw from its rng, in the order gen.c calls them.
 *
 * May not touch: this header declares no functions; each file's own
 * header says what it does with the state.
 */
#ifndef IQP_GEN_INTERNAL_H
#define IQP_GEN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "model/config.h"
#include "gen/gen.h"
#include "gen/output.h"
#include "gen/rng.h"
#include "gen/traffic.h"
#include "gen/truth.h"

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* ---- Generator state -------------------------------------------------------- */

struct gen {
    iqp_gen_options o;
    rng r;
    zipf qz, iz, pz;
    uint8_t *mark;              /* per item: already in this impression */
    uint32_t *shown;            /* this impression's distinct items */
    uint32_t *listed;           /* the same as written, with the planted duplicate */
    pheap heap;
    uint64_t seq;
    gen_out out, tout;          /* events; the truth file */
    cellset truth;
    sbuf sb;                    /* the line being built */
    int oom;
    const char *unknown_action;
    size_t heavy_action;        /* "click" when listed, else the first */
    char unknown_buf[IQP_NAME_MAX + 8];
    /* the impression being generated */
    int64_t imp_no, imp_ts;
    uint32_t q;
    char qtext[QUERY_TEXT_MAX];
    const char *qnorm;
    size_t country, gender, device;
    size_t n_listed, n_distinct;
    /* counts for the summary */
    uint64_t n_imp, n_act, n_redeliver, n_repeat, n_bad, n_action_ids, n_bad_ids;
    size_t n_truth;             /* truth cells written */
    int events_done;            /* the event output is complete and closed */
    char *err;                  /* the caller's message buffer */
    size_t errlen;
};

#endif

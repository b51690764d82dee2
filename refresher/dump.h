/* dump.h -- a refresh result as canonical text (`iqp refresh --dump`).
 *
 * Owns: the dump format. Deterministic: the same snapshot, as_of and
 * parameters give the same bytes whatever the backend or thread count, so
 * `cmp` checks bit-identity (doubles print with 17 significant digits,
 * which round-trips binary64 exactly). Lines, in this order:
 *
 *   iqp-refresh-dump 1
 *   as_of MS smoothing A top_k K rank_measure NAME
 *   window NAME first=BUCKET last=BUCKET             one per window
 *   prior FEATURE WINDOW MEASURE num=N den=D value=V every (f, w, k)
 *   then per context (result order):
 *   context FEATURE CTX cc=C_w0,C_w1,... entities=N
 *   entity FEATURE CTX ITEM WINDOW cc=C counts=K0,K1,... rates=R0,...
 *          smoothed=S0,...                          (one line) per entity, window
 *   topk FEATURE CTX WINDOW n=N ITEM=V ITEM=V ...    one per window
 *
 * CTX is {query="...",country=CC,gender=G} with only the feature's
 * segments, in segment order, named as the config names them (query text
 * double-quoted, other values as they are); strings are double-quoted, with \" \\ and \xHH for bytes
 * below 0x20 and 0x7f; counts and measures in config order (impression,
 * engaged, actions).
 *
 * May not touch: the result (read only).
 */
#ifndef IQP_REFRESH_DUMP_H
#define IQP_REFRESH_DUMP_H

#include <stdio.h>

#include "refresher/refresh.h"

/* Writes r to out; 0, or -1 on a write error (errno set). */
int iqp_refresh_dump(const iqp_refresh_result *r, FILE *out);

#endif

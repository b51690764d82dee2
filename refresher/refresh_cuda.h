/* refresh_cuda.h -- the C-callable face of the CUDA backend.
 *
 * Owns: nothing but the two entry points. refresh_cuda.cu implements them
 * when iqp is configured --with-cuda (IQP_HAVE_CUDA); refresh_cuda_stub.c
 * otherwise, where both say "iqp was built without CUDA (./configure
 * --with-cuda)".
 *
 * May not touch: anything outside the result it is given.
 */
#ifndef IQP_REFRESH_CUDA_H
#define IQP_REFRESH_CUDA_H

#include <stddef.h>

#include "refresher/refresh.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when a CUDA device is usable (the runtime is initialized on it as a
 * side effect); else 0 with the reason in err. */
int iqp_refresh_cuda_probe(char *err, size_t errlen);

/* Fills r's values on the device (refresh_internal.h layout; the value
 * arrays are already allocated on the host, top-K arrays are not).
 * 0, or -1 with err naming the failed CUDA call. */
int iqp_refresh_compute_cuda(iqp_refresh_result *r, const iqp_refresh_params *p, char *err,
                             size_t errlen);

#ifdef __cplusplus
}
#endif

#endif

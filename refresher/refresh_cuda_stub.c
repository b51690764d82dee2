/* refresh_cuda_stub.c -- the CUDA backend of a build without CUDA: both
 * entry points fail with one clear message (see refresh_cuda.h).
 */
#include <stdio.h>

#include "refresher/refresh_cuda.h"

#define NO_CUDA "iqp was built without CUDA (./configure --with-cuda)"

int iqp_refresh_cuda_probe(char *err, size_t errlen) {
    snprintf(err, errlen, NO_CUDA);
    return 0;
}

int iqp_refresh_compute_cuda(iqp_refresh_result *r, const iqp_refresh_params *p, char *err,
                             size_t errlen) {
    (void)r, (void)p;
    snprintf(err, errlen, NO_CUDA);
    return -1;
}

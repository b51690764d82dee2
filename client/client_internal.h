/* client_internal.h -- what iqp's own tools (iqp lookup --redis) may see
 * of a libiqp client beyond the public iqp.h. Not installed.
 *
 * May not touch: anything that would let a tool bypass the layout checks
 * the client does on open.
 */
#ifndef IQP_CLIENT_INTERNAL_H
#define IQP_CLIENT_INTERNAL_H

#include <stdint.h>
#include "model/config.h"
#include "client/iqp.h"

/* The layout the client read from Redis (valid after a successful open). */
const iqp_config *iqp_client_config(const iqp_client *c);
/* The generation the client last read from. */
uint64_t iqp_client_generation(const iqp_client *c);

#endif

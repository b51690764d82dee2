/* normalize.h -- one normalization of query, country and gender for every
 * path (stream, backfill, lookup, export, libiqp).
 *
 * Owns: the rules. query = Unicode NFKC + case fold (utf8proc), leading and
 * trailing white space removed, inner runs of white space collapsed to one
 * U+0020. country = ISO 3166-1 alpha-2 (assigned codes), upper case, else
 * "ZZ". gender = female | male | unknown.
 *
 * May not touch: anything but its arguments; no allocation except the
 * returned query string.
 * model/ is the ground floor: this file includes nothing of the project
 * but model/ itself, so every module (store/ and schemas/ too) may use it.
 */
#ifndef IQP_NORMALIZE_H
#define IQP_NORMALIZE_H

#include <stddef.h>

typedef enum { IQP_GENDER_UNKNOWN = 0, IQP_GENDER_FEMALE = 1, IQP_GENDER_MALE = 2 } iqp_gender;

/* Normalizes a UTF-8 query. On success returns 0 and a malloc'd,
 * NUL-terminated string in *out (length in *outlen). Returns -1 when the
 * input is not valid UTF-8 (nothing allocated). */
int iqp_normalize_query(const char *in, size_t len, char **out, size_t *outlen);

/* Writes the normalized two-letter code and a NUL into out[3]. in may be
 * NULL (missing or null country): gives "ZZ". */
void iqp_normalize_country(const char *in, size_t len, char out[3]);

/* "female"/"f"/"woman" -> female, "male"/"m"/"man" -> male (any case,
 * trimmed), anything else or NULL -> unknown. */
iqp_gender iqp_normalize_gender(const char *in, size_t len);

/* "female", "male", "unknown". */
const char *iqp_gender_name(iqp_gender g);

#endif

/* Just enough JSON to read one top-level string field from a request body
 * prefix (rate-limit keys like json:identity). Pure, bounded, no
 * allocation; a truncated or malformed document simply yields "not found". */
#ifndef TG_JSON_H
#define TG_JSON_H

#include <stdbool.h>
#include <stddef.h>

/* Looks for `field` among the members of the top-level object in
 * buf[0..len) and, if its value is a string, writes the unescaped value
 * (UTF-8; \uXXXX escapes and surrogate pairs decoded) to out[0..cap) and
 * sets *outlen. Returns false when the document is not an object, the field
 * is absent, not a string, longer than cap, or the bytes end before the
 * value does. Nesting is skipped up to 64 levels deep. Names are compared
 * after unescaping, byte for byte. The first occurrence wins. */
bool tg_json_find_string(const char *buf, size_t len, const char *field,
                         size_t field_len, char *out, size_t cap,
                         size_t *outlen);

#endif

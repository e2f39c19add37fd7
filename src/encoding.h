/* Content codings and the request and response fields that decide them:
 * Accept-Encoding negotiation with q-values (RFC 9110 12.5.3),
 * Cache-Control directives (RFC 9111 5.2: only no-transform matters
 * here) and media-type matching against a configured list. Pure parsers
 * over byte views: no allocation, no state beyond the caller's struct, so
 * they are unit-tested and fuzzed on their own. */
#ifndef TG_ENCODING_H
#define TG_ENCODING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The codings tollgate can produce; identity is "none". */
enum tg_encoding {
    TG_ENC_IDENTITY = 0,
    TG_ENC_GZIP,
    TG_ENC_ZSTD,
    TG_ENC_BR,
    TG_ENC_COUNT,
};

/* The token a coding is written as ("gzip", "zstd", "br", "identity"). */
const char *tg_encoding_name(enum tg_encoding e);

/* The coding named by a token (case-insensitive; "x-gzip" is gzip), or -1
 * for one we cannot produce. */
int tg_encoding_from_name(const char *p, size_t n);

/* What a client's Accept-Encoding fields allow. q-values are in
 * thousandths (0..1000); -1 means "not mentioned". */
struct tg_encoding_accept {
    int16_t q[TG_ENC_COUNT]; /* per coding we know */
    int16_t star;            /* "*": every coding not mentioned */
    bool present;            /* at least one Accept-Encoding field was seen */
};

void tg_encoding_accept_init(struct tg_encoding_accept *a);

/* Adds one Accept-Encoding field value (a request may carry several; they
 * combine as one list). Elements that do not parse (a bad q, a stray
 * byte) are ignored, not the whole field: a client's typo costs it at most
 * that coding. A coding named twice keeps its last q. */
void tg_encoding_accept_parse(struct tg_encoding_accept *a, const char *p, size_t n);

/* The coding to answer with: among `order` (the server's preference,
 * `norder` codings, no identity in it), the one the client gives the
 * highest q above 0 (its own q, else the q of "*"); ties go to the earlier
 * in `order`. TG_ENC_IDENTITY when none is acceptable or the client sent
 * no Accept-Encoding at all. Identity is always the fallback, even when the
 * client wrote "identity;q=0": RFC 9110 lets a server send it rather than
 * 406, and a gateway should not fail a request over compression. */
enum tg_encoding tg_encoding_choose(const struct tg_encoding_accept *a, const uint8_t *order,
                                    size_t norder);

/* True when a Cache-Control field value holds the no-transform directive
 * (case-insensitive; quoted arguments of other directives, commas inside
 * them included, are skipped correctly). */
bool tg_encoding_no_transform(const char *p, size_t n);

/* True when the media type of a Content-Type value (parameters and case
 * ignored) matches one of `types`: "type/subtype" exactly, or "type/\*"
 * for any subtype. `types` are lower case, as the config stores them. */
bool tg_encoding_type_matches(const char *p, size_t n, const char *const *types, size_t ntypes);

/* True when the media type is `lower` (a lower-case "type/subtype"). */
bool tg_encoding_type_is(const char *p, size_t n, const char *lower);

#endif

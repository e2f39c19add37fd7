/* One named field read from a request body exactly as the backend
 * (PocketBase >= 0.23, Go: router.Event.BindBody) binds it, for rate-limit
 * keys such as "failed logins per account" (the `identity` of a login).
 *
 * The rule: when this module says FOUND, the value is the one the backend
 * acts on. It reads a deliberate SUPERSET of the spellings Go accepts and
 * refuses every ambiguity (MALFORMED, CONFLICT: the caller answers 400), so
 * that no spelling makes the gateway charge one key while the backend logs
 * in another. A spelling Go does not bind but this module does can only
 * add an occurrence (a spurious key, or a refusal); never the reverse.
 *
 * 1. Kind. The Content-Type value (leading SP/HTAB skipped) is matched by
 *    ASCII case-insensitive PREFIX, as Go's strings.HasPrefix (which is
 *    case-sensitive, so this is a superset): "application/json" -> JSON,
 *    "application/x-www-form-urlencoded" -> URLENCODED,
 *    "multipart/form-data" -> MULTIPART; anything else, or none -> OTHER.
 *    A kind the caller does not read (`read` mask; OTHER never is) ->
 *    UNREADABLE. The caller must not treat UNREADABLE as "no key": the
 *    backend also binds text/xml and application/xml bodies.
 * 2. Empty body (len 0). JSON -> MISSING. URLENCODED and MULTIPART: the
 *    body adds nothing but the query string is still read (Go parses the
 *    query whenever Content-Length is not 0, and a chunked empty body has
 *    Content-Length -1), so MISSING only if the query has no occurrence.
 * 3. Occurrences are collected from every source Go reads for the kind;
 *    then: any malformed input anywhere, or an occurrence that is not a
 *    string (JSON number, bool, null, object, array) -> MALFORMED; none ->
 *    MISSING; two occurrences whose decoded values differ -> CONFLICT
 *    (so Go's first-wins / last-wins never matters); else FOUND.
 *    MALFORMED wins over CONFLICT.
 * 4. JSON (body; and every @jsonPayload value of 5 and 6). Exactly one
 *    JSON value, an object, then only JSON whitespace; strict RFC 8259:
 *    strings without raw bytes < 0x20 and only the escapes \" \\ \/ \b \f
 *    \n \r \t \uXXXX; numbers per the grammar (no leading zeros, no '+',
 *    digits after '.' and 'e'); true/false/null; no BOM; at most 64 nested
 *    arrays/objects, the outer object counting as 1 (65 -> MALFORMED).
 *    Occurrences: members of the OUTER object whose unescaped name equals
 *    the field under Go's case folding (encoding/json foldName): ASCII
 *    letters case-insensitively, U+017F (UTF-8 C5 BF) as 's', U+212A
 *    (E2 84 AA) as 'k', nothing else (U+0131 dotless i is not 'i').
 *    Nested members are not occurrences. Values are unescaped as Go does:
 *    surrogate pairs combined; a lone surrogate escape -> U+FFFD (a high
 *    surrogate followed by an escape that is not a low surrogate gives
 *    U+FFFD and that escape is read on its own); every byte of an invalid
 *    UTF-8 sequence (Go's utf8.DecodeRune: overlong, surrogate, > U+10FFFF,
 *    truncated) -> one U+FFFD (EF BF BD). The query is not read for JSON.
 * 5. URLENCODED body, as url.ParseQuery: split on '&', empty pieces
 *    skipped, a piece containing ';' -> MALFORMED, key and value split at
 *    the first '=' (none: empty value), '+' is a space, %XX decoded, a '%'
 *    not followed by two hex digits -> MALFORMED. Occurrences: pairs whose
 *    decoded key equals the field ASCII case-insensitively (Go: exactly;
 *    the superset turns a differently-cased twin into a CONFLICT instead
 *    of a silent split). The query string (raw, without '?') is parsed the
 *    same way and its pairs are occurrences too (Go: body values first,
 *    then query values, values[0] wins). Every pair whose decoded key is
 *    exactly "@jsonPayload" (body or query) must hold a JSON object as in
 *    4, whose outer members are occurrences (Go unmarshals them over the
 *    form value).
 * 6. MULTIPART body. The Content-Type must be "multipart/form-data" then
 *    optional SP/HTAB, then parameters `; name=value` (names ASCII
 *    case-insensitive tokens, value a token or a quoted-string with Go's
 *    backslash rule, SP/HTAB around ';' and '=', one trailing ';'
 *    allowed); a parameter name with '*' (RFC 2231), a duplicated
 *    boundary, a missing or empty boundary, one longer than 70 bytes or
 *    with bytes outside RFC 2046 bchars (or ending in a space) ->
 *    MALFORMED. The body is parsed as Go's mime/multipart reads it, but
 *    strictly: preamble lines (up to each LF) skipped; a "--B--" line first
 *    means no parts; the delimiter line is "--B", optional SP/HTAB, CRLF
 *    (an LF-only one -> MALFORMED, Go would switch to LF mode); part header
 *    lines "Name: value" ending in CRLF, Name a token, no leading SP/HTAB
 *    (obs-fold), no control bytes in the value but HTAB; a blank CRLF line;
 *    content up to the first CRLF "--B" followed by SP, HTAB, CR, LF, "--"
 *    or the end (Go's rule; "--BX" does not end it); content that itself
 *    starts with "--B" -> MALFORMED (Go would end the part there); then the
 *    next delimiter line, or the close line "--B--", optional SP/HTAB, CRLF
 *    or the end of the body; the epilogue ignored. Anything else, or a
 *    body that ends before the close line -> MALFORMED. Each part needs
 *    exactly one Content-Disposition, type form-data (ASCII
 *    case-insensitive), exactly one `name` parameter (parameter rules as
 *    above; a `name*...` parameter -> MALFORMED; a duplicated name or
 *    filename -> MALFORMED). A part with a `filename` or `filename*...`
 *    parameter is a file: ignored, unless its name matches the field or
 *    is "@jsonPayload" -> MALFORMED. A part with a Content-Transfer-Encoding
 *    header (Go decodes quoted-printable) whose name matches the field or
 *    is "@jsonPayload" -> MALFORMED. Occurrences: the raw content of value
 *    parts whose name equals the field ASCII case-insensitively, the outer
 *    members of "@jsonPayload" parts (exact name) as in 4, and the query
 *    string's pairs as in 5 (Go: query values first, then the parts).
 * 7. A decoded occurrence longer than `cap` -> MALFORMED.
 * 8. Bounded and linear in the input; no allocation, no global state;
 *    any thread. Nothing is kept after the call returns.
 *
 * Not read, on purpose: XML bodies (UNREADABLE), file parts, Go's LF-only
 * multipart mode, RFC 2231 parameters; each is refused or ignored as said
 * above. Which Content-Type header is "the" one (Go takes the first) and
 * what the raw query is are the caller's business. */
#ifndef TG_BODYKEY_H
#define TG_BODYKEY_H

#include <stdbool.h>
#include <stddef.h>

#include "str.h"

enum tg_bodykey_kind {
    TG_BODYKEY_OTHER = 0,
    TG_BODYKEY_JSON,
    TG_BODYKEY_URLENCODED,
    TG_BODYKEY_MULTIPART,
};

/* Bits of tg_bodykey_input.read: which kinds the caller reads. */
#define TG_BODYKEY_READ_JSON 1u
#define TG_BODYKEY_READ_FORM 2u /* urlencoded and multipart */

enum tg_bodykey_status {
    TG_BODYKEY_FOUND = 0,  /* out[0..*outlen) is the value the backend uses */
    TG_BODYKEY_MISSING,    /* no occurrence: the backend binds nothing */
    TG_BODYKEY_UNREADABLE, /* a kind (Content-Type) this caller does not read */
    TG_BODYKEY_MALFORMED,  /* refuse: the backend may read it differently */
    TG_BODYKEY_CONFLICT,   /* refuse: occurrences with different values */
};

struct tg_bodykey_input {
    struct tg_str content_type; /* the header's value; p == NULL: none */
    const char *body;           /* the WHOLE body (NULL if len 0): a prefix of a form
                         body reads as another value ("identity=ab" cut to
                         "identity=a"), so never pass a truncated one */
    size_t len;
    struct tg_str query; /* raw, without '?'; p == NULL: none */
    unsigned read;       /* TG_BODYKEY_READ_* */
};

/* Classifies a Content-Type value by rule 1 (p == NULL: OTHER). Pure. */
enum tg_bodykey_kind tg_bodykey_classify(struct tg_str content_type);

/* True if `field` can be looked up: 1..128 bytes of ASCII letters,
 * digits, '_', '-', '.'. For config validation. */
bool tg_bodykey_field_ok(const char *field, size_t field_len);

/* Finds `field` in the request by rules 1-8. On FOUND writes the value to
 * out[0..cap) and sets *outlen; otherwise *outlen = 0 and out[0..cap) holds
 * scratch. *why (if why != NULL) gets a static reason for logs, never NULL.
 * An invalid field (see tg_bodykey_field_ok) gives UNREADABLE. Borrows
 * everything for the call only; pure; any thread. */
enum tg_bodykey_status tg_bodykey_find(const struct tg_bodykey_input *in, const char *field,
                                       size_t field_len, char *out, size_t cap, size_t *outlen,
                                       const char **why);

/* "found", "missing", "unreadable", "malformed", "conflict". */
const char *tg_bodykey_status_name(enum tg_bodykey_status s);

#endif

/* W3C Trace Context (https://www.w3.org/TR/trace-context/): reading a
 * client's traceparent and tracestate, making trace and span ids, the
 * sampling decision, and writing the traceparent sent to a backend.
 *
 * Pure functions over bytes; the ids come from a per-thread generator.
 * What a request does with them is the pipeline's; sending spans is
 * trace_export's. */
#ifndef TG_TRACE_H
#define TG_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TG_TRACE_FLAG_SAMPLED 0x01u
/* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define TG_TRACE_PARENT_LEN 55
/* The longest tracestate we keep (the spec's floor for what a vendor must
 * propagate); a longer one is dropped. */
#define TG_TRACE_STATE_MAX 512
#define TG_TRACE_STATE_MEMBERS 32

/* A parsed traceparent. */
struct tg_trace_parent {
    uint8_t trace_id[16];
    uint8_t parent_id[8];
    uint8_t flags;
};

/* Parses a traceparent value. Version 00 must be exactly 55 bytes; a
 * higher version (not ff) is read by its version-00 prefix, which must be
 * followed by the end or a '-', as the spec asks of a parser meeting a
 * version it does not know. Lower-case hex only; an all-zero trace id or
 * parent id is invalid. Returns true and fills `out` when valid. Any
 * thread. */
bool tg_trace_parse_parent(const char *p, size_t n, struct tg_trace_parent *out);

/* True if `p` is a tracestate value we may forward: at most 32 list
 * members, at most 512 bytes, every member a valid key=value (simple or
 * tenant@system key), no key twice. Empty members (",,") are allowed, as
 * the spec's list syntax does. Any thread. */
bool tg_trace_valid_state(const char *p, size_t n);

/* Fills `out` with `n` random bytes, not all zero, from the calling
 * thread's generator (seeded from getrandom on first use). */
void tg_trace_new_id(uint8_t *out, size_t n);

/* A random number in [0, 1) from the same generator. */
double tg_trace_random(void);

/* The sampling decision: a parent's sampled flag is honoured either way;
 * without a parent, `ratio` (0..1) of traces are sampled, `draw` being a
 * number in [0, 1). Pure. */
bool tg_trace_decide(bool has_parent, uint8_t parent_flags, double ratio, double draw);

/* Writes "00-TRACE-SPAN-FLAGS" (55 bytes) and a NUL into `out` (at least
 * 56 bytes). Returns 55. */
size_t tg_trace_format_parent(char *out, const uint8_t trace_id[16], const uint8_t span_id[8],
                              uint8_t flags);

#endif

/* libFuzzer target for the W3C Trace Context parsers (trace.c). The input
 * is split at its first newline: a traceparent, then a tracestate. Beyond
 * "no crash" it checks what the gateway relies on when it forwards them:
 * an accepted traceparent has non-zero ids and writes back as a version-00
 * value that parses to the same ids (and, for a version-00 input, to the
 * same bytes); an accepted tracestate has at most 512 bytes and 32
 * members. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

static int zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t pn = nl != NULL ? (size_t)(nl - data) : size;
    size_t sn = nl != NULL ? size - pn - 1 : 0;
    /* Buffers of exactly their length, so ASan sees any read past it. */
    char *tp = malloc(pn > 0 ? pn : 1), *ts = malloc(sn > 0 ? sn : 1);
    if (tp == NULL || ts == NULL)
        abort();
    memcpy(tp, data, pn);
    if (sn > 0)
        memcpy(ts, nl + 1, sn);

    struct tg_trace_parent p;
    if (tg_trace_parse_parent(tp, pn, &p)) {
        if (zero(p.trace_id, 16) || zero(p.parent_id, 8))
            abort();
        char out[56];
        if (tg_trace_format_parent(out, p.trace_id, p.parent_id, p.flags) != TG_TRACE_PARENT_LEN)
            abort();
        struct tg_trace_parent q;
        if (!tg_trace_parse_parent(out, TG_TRACE_PARENT_LEN, &q) || memcmp(&p, &q, sizeof(p)) != 0)
            abort();
        if (tp[0] == '0' && tp[1] == '0' && (pn != TG_TRACE_PARENT_LEN || memcmp(out, tp, pn) != 0))
            abort();
    }
    if (tg_trace_valid_state(ts, sn)) {
        if (sn > TG_TRACE_STATE_MAX)
            abort();
        size_t members = 0;
        for (size_t i = 0; i < sn; i++)
            members += ts[i] == '=';
        /* Each member has exactly one '=' (values cannot hold one). */
        if (members > TG_TRACE_STATE_MEMBERS)
            abort();
    }
    free(tp);
    free(ts);
    return 0;
}

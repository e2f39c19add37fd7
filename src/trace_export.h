/* Gateway spans to an OpenTelemetry collector over OTLP/HTTP (JSON).
 *
 * Workers hand a finished span (a fixed-size record, strings copied in and
 * cut to size) to a bounded queue; one exporter thread takes batches off
 * it and POSTs them to the collector. A full queue drops the span and
 * counts it: a slow or absent collector never slows a request. */
#ifndef TG_TRACE_EXPORT_H
#define TG_TRACE_EXPORT_H

#include <stdbool.h>
#include <stdint.h>

struct tg_config_tracing;

/* One finished server span. Strings are NUL-terminated and may be empty
 * (then the attribute is left out). */
struct tg_trace_span {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_id[8];
    bool has_parent;
    uint64_t start_ns, end_ns; /* Unix time */
    int status;                /* HTTP status sent (499: the client left) */
    int64_t upstream_us;       /* to the backend's response head; < 0: none */
    uint64_t bytes_in, bytes_out;
    char method[16];
    char scheme[6];
    char proto[4]; /* "1.0", "1.1", "2" */
    char route[128];
    char path[256];
    char host[128];
    char client[46];
    char tenant[64];
    char limit[16];
    char upstream[64];
};

/* ---- main thread ------------------------------------------------------------ */

/* Starts the exporter thread. Returns 0 or -1. */
int tg_trace_export_start(void);

/* Applies a snapshot's tracing section: the endpoint, batch, interval and
 * timeout from the next batch on; a new queue size at once (spans that no
 * longer fit are dropped and counted). Returns 0, or -1 when memory ran
 * out (the old settings stay). */
int tg_trace_export_configure(const struct tg_config_tracing *cfg);

/* Sends what is queued (for at most the export timeout) and stops the
 * thread; spans still queued then are counted as dropped. */
void tg_trace_export_stop(void);

/* Counters for the metrics page: spans sent and accepted, spans dropped
 * (queue full, or left at shutdown), spans in batches the collector did
 * not accept, and POSTs that failed. Any thread. */
struct tg_trace_export_stats {
    uint64_t exported, dropped, failed_spans, failed_posts;
};
void tg_trace_export_stats(struct tg_trace_export_stats *out);

/* ---- workers ------------------------------------------------------------------ */

/* Queues a copy of `span`, or drops and counts it when the queue is full
 * or the exporter is not running. Never blocks beyond a copy under a
 * mutex. Any thread. */
void tg_trace_export_push(const struct tg_trace_span *span);

/* The OTLP JSON body (ExportTraceServiceRequest) for `n` spans, as a
 * malloc'd string, or NULL when memory ran out. Exposed for tests. */
char *tg_trace_export_json(const struct tg_trace_span *spans, unsigned n, const char *service_name);

#endif

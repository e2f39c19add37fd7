/* What happens to a request, decided in one ordered table of phases:
 *
 *   identify -> normalise -> handlers -> redirect -> host -> route ->
 *   access -> tenant -> limits -> forward
 *
 * Each phase reads the request and returns a verdict: continue to the next,
 * answered (a local answer was given: 400, 403, 404, 421, 429, ...), or
 * wait (a tenant look-up, the request body a rate-limit key reads, a store
 * that answers later, a delay); whatever it waits for resumes the table
 * where it stopped. One driver runs the table for every front end. The
 * last phase hands the request to the upstream client (forward.c).
 *
 * `tollgate explain` runs the same table as a dry run: each phase says
 * what it decided, stores are not touched, and nothing is sent, so the
 * gateway and explain cannot disagree about a request. Worker thread (or
 * the explain command's own context). */
#ifndef TG_PIPELINE_H
#define TG_PIPELINE_H

#include <stdbool.h>

struct tg_request;

/* A dry run's listener: each decision as a labelled line ("client",
 * "route", "limit", ...). */
struct tg_explain {
    void (*say)(struct tg_explain *ex, const char *label, const char *text);
};

/* Runs the phases for a request its front end has filled in (method,
 * host, raw path and query, header views, body length, transport facts).
 * The request ends through its answer or forward.c, possibly before this
 * returns. With req->explain set, a dry run. */
void tg_pipeline_start(struct tg_request *req);

#endif

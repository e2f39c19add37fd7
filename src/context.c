/* A worker's context: the snapshot holder, the lazily made parse results,
 * and the event order (libev's pending callbacks run so that sockets are
 * served in the order epoll reported them). */
#include "context.h"

#include <stdlib.h>

#include "cache.h"
#include "config.h"
#include "http1.h"

/* libev runs one poll's callbacks newest first, so under load the socket
 * that has waited longest would wait for every other one again. While
 * libev runs the pass, client and upstream socket callbacks only note their
 * event (tg_context_defer_io); the notes are then served oldest first.
 * Timers and the mailbox run as before. */
static void invoke_pending(struct ev_loop *loop)
{
    struct tg_context *ctx = ev_userdata(loop);
    do {
        ctx->collecting_io = true;
        ev_invoke_pending(loop);
        ctx->collecting_io = false;
        /* Noted newest first: the oldest is at the end. */
        while (ctx->nready > 0) {
            struct tg_ready_io r = ctx->ready[--ctx->nready];
            if (r.io != NULL)
                ev_cb(r.io)(loop, r.io, r.revents);
        }
        /* What those callbacks fed (buffered TLS input) runs now too. */
    } while (ev_pending_count(loop) > 0);
}

int tg_context_init(struct tg_context *ctx, unsigned id, struct ev_loop *loop,
                    struct tg_runtime *rt)
{
    ctx->id = id;
    ctx->loop = loop;
    ctx->rt = rt;
    ev_set_userdata(loop, ctx);
    ev_set_invoke_pending_cb(loop, invoke_pending);
    tg_list_init(&ctx->upwait);
    tg_list_init(&ctx->tenant_streams);
    tg_list_init(&ctx->conns);
    tg_list_init(&ctx->cert_waiters);
    tg_buf_pool_init(&ctx->bufs, 16384, TG_BUF_LARGE_MIN, TG_BUF_MAX_FREE);
    return 0;
}

void tg_context_fini(struct tg_context *ctx)
{
    free(ctx->ready);
    ctx->ready = NULL;
    free(ctx->h1_request);
    ctx->h1_request = NULL;
    free(ctx->h1_response);
    ctx->h1_response = NULL;
}

struct tg_wcfg *tg_context_cfg_acquire(struct tg_context *ctx)
{
    ctx->cfg->refs++;
    return ctx->cfg;
}

void tg_context_cfg_release(struct tg_wcfg *c)
{
    if (c == NULL || --c->refs > 0)
        return;
    tg_config_unref(c->config);
    free(c->rr_cursor);
    for (size_t i = 0; i < c->ncaches; i++)
        tg_cache_free(c->caches[i]);
    free(c->caches);
    free(c);
}

struct tg_http1_request *tg_context_h1_request(struct tg_context *ctx)
{
    if (ctx->h1_request == NULL)
        ctx->h1_request = calloc(1, sizeof(*ctx->h1_request));
    return ctx->h1_request;
}

struct tg_http1_response *tg_context_h1_response(struct tg_context *ctx)
{
    if (ctx->h1_response == NULL)
        ctx->h1_response = calloc(1, sizeof(*ctx->h1_response));
    return ctx->h1_response;
}

bool tg_context_note_io_grow(struct tg_context *ctx, ev_io *io, int revents)
{
    size_t cap = ctx->ready_cap ? 2 * ctx->ready_cap : 64;
    struct tg_ready_io *r = realloc(ctx->ready, cap * sizeof(*r));
    if (r == NULL)
        return false; /* served at once, out of order: still served */
    ctx->ready = r;
    ctx->ready_cap = cap;
    ctx->ready[ctx->nready++] = (struct tg_ready_io){io, revents};
    return true;
}

void tg_context_io_stop(struct ev_loop *loop, ev_io *io)
{
    ev_io_stop(loop, io);
    struct tg_context *ctx = ev_userdata(loop);
    if (ctx == NULL)
        return;
    for (size_t i = 0; i < ctx->nready; i++)
        if (ctx->ready[i].io == io)
            ctx->ready[i].io = NULL;
}

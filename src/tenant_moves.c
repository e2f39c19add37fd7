/* Ending a moved tenant's streams (tenant_moves.h). */
#include "tenant_moves.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "list.h"
#include "log.h"
#include "request.h"
#include "tenant.h"

/* A look-up of the tenant's new place, in flight. It holds the snapshot
 * the look-up reads. */
struct recheck {
    struct tg_context *ctx;
    struct tg_wcfg *wcfg;
    struct tg_tenant_wait *wait;
    char id[];
};

static struct tg_request *stream_of(struct tg_list *n)
{
    return (struct tg_request *)((char *)n - offsetof(struct tg_request, tenant_stream_link));
}

static bool has_streams(struct tg_context *ctx, const char *id)
{
    for (struct tg_list *n = ctx->tenant_streams.next; n != &ctx->tenant_streams; n = n->next)
        if (strcmp(stream_of(n)->tenant, id) == 0)
            return true;
    return false;
}

static bool lists_server(const struct tg_tenant *t, const char *server)
{
    for (size_t i = 0; server != NULL && i < t->upstream.nservers; i++)
        if (strcmp(t->upstream.servers[i].addr.text, server) == 0)
            return true;
    return false;
}

/* The tenant's place now is known: end the streams that are not there. */
static void settle(struct tg_context *ctx, struct tg_wcfg *wcfg, const char *id,
                   enum tg_tenant_status status, struct tg_tenant *t)
{
    if (status == TG_TENANT_UNAVAILABLE)
        return; /* the directory cannot say: the streams stay */
    ev_tstamp by = tg_context_now(ctx) + (double)wcfg->config->tenants.move_grace_ms / 1000.0;
    /* Chosen first, then ended: ending one may end others on its
     * connection, and so change the list. */
    size_t n = 0, cap = 0;
    struct tg_request **pick = NULL;
    struct tg_list *head = &ctx->tenant_streams;
    for (struct tg_list *l = head->next; l != head; l = l->next) {
        struct tg_request *req = stream_of(l);
        if (strcmp(req->tenant, id) != 0 || req->drain_by != 0)
            continue;
        if (status == TG_TENANT_FOUND && !t->suspended && lists_server(t, req->up_name))
            continue;
        if (n == cap) {
            size_t c = cap ? 2 * cap : 8;
            struct tg_request **p = realloc(pick, c * sizeof(*p));
            if (p == NULL)
                break; /* those chosen so far end; a later change ends the rest */
            pick = p;
            cap = c;
        }
        tg_request_ref(req);
        pick[n++] = req;
    }
    unsigned ended = 0;
    for (size_t i = 0; i < n; i++) {
        if (!tg_request_over(pick[i])) {
            tg_request_move(pick[i], by);
            ended++;
        }
        tg_request_unref(pick[i]);
    }
    free(pick);
    if (ended > 0)
        tg_log_info("tenant %s moved: ending %u open stream%s on its old servers", id, ended,
                    ended == 1 ? "" : "s");
}

static void on_found(void *arg, enum tg_tenant_status status, struct tg_tenant *t)
{
    struct recheck *rc = arg;
    settle(rc->ctx, rc->wcfg, rc->id, status, t);
    tg_tenant_release(t);
    tg_context_cfg_release(rc->wcfg);
    free(rc);
}

void tg_tenant_moves_changed(void *arg, const char *id)
{
    struct tg_context *ctx = arg;
    if (ctx->tenants == NULL || !has_streams(ctx, id))
        return;
    size_t n = strlen(id);
    struct recheck *rc = calloc(1, sizeof(*rc) + n + 1);
    if (rc == NULL)
        return;
    rc->ctx = ctx;
    rc->wcfg = tg_context_cfg_acquire(ctx);
    memcpy(rc->id, id, n + 1);
    struct tg_tenant *t = NULL;
    int st = tg_tenant_lookup(ctx->tenants, &rc->wcfg->config->tenants, rc->id, n, &t, on_found, rc,
                              &rc->wait);
    if (st >= 0)
        on_found(rc, (enum tg_tenant_status)st, t);
}

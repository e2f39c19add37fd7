/* The handler table (handlers.h). Order matters: the first match wins. */
#include "handlers.h"

#include <stddef.h>

#include "acme_challenge.h"
#include "admin.h"
#include "config.h"
#include "context.h"
#include "request.h"
#include "str.h"

#define KEY_AUTH_MAX 512

/* Everything on the admin listener is the admin API's. */
static bool on_admin_listener(const struct tg_request *req)
{
    return req->listener != NULL && req->listener->admin;
}

/* ACME HTTP-01 (RFC 8555 8.3): on plain listeners, before the routes and
 * the redirect to HTTPS, when ACME validates by HTTP-01. */
static bool acme_http01_path(const struct tg_request *req)
{
    const struct tg_config_acme *acme = &req->wcfg->config->tls.acme;
    size_t n = sizeof(TG_ACME_HTTP_PREFIX) - 1;
    return acme->enabled && acme->http01 && req->ssl == NULL && !req->listener->admin &&
           req->route_path_len > n && strncmp(req->path, TG_ACME_HTTP_PREFIX, n) == 0;
}

static void acme_http01_answer(struct tg_request *req)
{
    size_t n = sizeof(TG_ACME_HTTP_PREFIX) - 1;
    char key_auth[KEY_AUTH_MAX];
    if (tg_acme_challenge_http_get(req->path + n, req->route_path_len - n, key_auth,
                                   sizeof(key_auth)))
        tg_request_respond(req, 200, "application/octet-stream", key_auth, strlen(key_auth), false);
    else
        tg_request_respond_text(req, 404, "404 Not Found: no such ACME challenge\n", false);
}

static const struct tg_handler handlers[] = {
    {"admin API", on_admin_listener, tg_admin_handle},
    {"ACME HTTP-01", acme_http01_path, acme_http01_answer},
};

const struct tg_handler *tg_handlers_find(const struct tg_request *req)
{
    for (size_t i = 0; i < TG_ARRAY_LEN(handlers); i++)
        if (handlers[i].match(req))
            return &handlers[i];
    return NULL;
}

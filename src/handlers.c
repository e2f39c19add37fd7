/* The handler table (handlers.h). Order matters: the first match wins. */
#include "handlers.h"

#include <stddef.h>

#include "admin.h"
#include "config.h"
#include "request.h"
#include "str.h"

/* Everything on the admin listener is the admin API's. */
static bool on_admin_listener(const struct tg_request *req)
{
    return req->listener != NULL && req->listener->admin;
}

static const struct tg_handler handlers[] = {
    {"admin API", on_admin_listener, tg_admin_handle},
};

const struct tg_handler *tg_handlers_find(const struct tg_request *req)
{
    for (size_t i = 0; i < TG_ARRAY_LEN(handlers); i++)
        if (handlers[i].match(req))
            return &handlers[i];
    return NULL;
}

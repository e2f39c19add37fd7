/* Endpoints the gateway answers itself, in one table the pipeline looks
 * at after normalising the path and before any site or route: the admin
 * listener's endpoints today; ACME's HTTP-01 responder and a health
 * endpoint plug in here the same way. A handler takes the request over and
 * answers it (tg_request_respond), now or later. */
#ifndef TG_HANDLERS_H
#define TG_HANDLERS_H

#include <stdbool.h>

struct tg_request;

struct tg_handler {
    const char *name;                            /* for explain and logs */
    bool (*match)(const struct tg_request *req); /* is this request mine? */
    void (*handle)(struct tg_request *req);
};

/* The first handler that takes the request, or NULL. */
const struct tg_handler *tg_handlers_find(const struct tg_request *req);

#endif

/* The admin listener's /metrics: the Prometheus text exposition of every
 * counter the workers keep (metrics.h) and of the process-wide parts. */
#ifndef TG_SCRAPE_H
#define TG_SCRAPE_H

#include <stddef.h>

struct tg_runtime;

/* Renders the exposition into a malloc'd buffer (*out, *len). Returns 0,
 * or -1 when memory ran out. Any thread (reads with relaxed loads). */
int tg_scrape_render(struct tg_runtime *rt, char **out, size_t *len);

#endif

/* `tollgate explain`: prints what a configuration would do with a request
 * (site, route, tenant, upstream, access decision, rate-limit policies and
 * keys, response headers) without sending anything. */
#ifndef TG_EXPLAIN_H
#define TG_EXPLAIN_H

/* argv holds the arguments after "explain". Returns the exit status. */
int tg_explain_main(int argc, char **argv, const char *default_config);

#endif

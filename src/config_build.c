/* Builds the runtime objects of a parsed configuration snapshot, reports
 * what they refuse at the marks the parser kept, and frees them with the
 * snapshot. Loading (parse, then build) is here too.
 *
 * Not here: reading YAML, defaults and inheritance (config.c), what the
 * objects do (tls_server.c, access.c, router.c, tenant.c). */
#include "config_build.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "certstore.h"
#include "resolver.h"
#include "router.h"
#include "tenant.h"
#include "tls.h"

/* ---- GeoIP ------------------------------------------------------------------ */

/* The databases are opened and fully checked here, so a broken one fails
 * the load (or the reload, keeping the running configuration and its
 * database). */
static void build_geoip(struct tg_config *cfg, struct tg_config_errors *errs)
{
    const struct tg_config_geoip *g = &cfg->geoip_files;
    char err[512];
    if (g->database != NULL && (cfg->geoip = tg_geoip_open(g->database, err, sizeof(err))) == NULL)
        tg_config_error_at(errs, g->database_mark, "%s", err);
    if (g->asn_database != NULL &&
        (cfg->geoip_asn = tg_geoip_open(g->asn_database, err, sizeof(err))) == NULL)
        tg_config_error_at(errs, g->asn_database_mark, "%s", err);
}

/* ---- hosts, routes ------------------------------------------------------------ */

static void build_hosts(struct tg_config *cfg, struct tg_config_errors *errs)
{
    cfg->hosts = tg_router_hosts_new();
    if (cfg->hosts == NULL) {
        tg_config_error_at(errs, (struct tg_config_mark){1, 1}, "out of memory");
        return;
    }
    for (size_t s = 0; s < cfg->nsites; s++) {
        struct tg_config_site *site = &cfg->sites[s];
        for (size_t h = 0; h < site->nhosts; h++) {
            char err[200];
            if (tg_router_hosts_add(cfg->hosts, site->hosts[h], site, err, sizeof(err)) < 0)
                tg_config_error_at(errs, site->host_marks[h], "host '%s': %s", site->hosts[h], err);
        }
    }
}

/* Whether route a takes every method route b takes. */
static bool methods_cover(const struct tg_config_route *a, const struct tg_config_route *b)
{
    if (a->methods == 0 && a->nother_methods == 0)
        return true;
    if (b->methods == 0 && b->nother_methods == 0)
        return false;
    if ((b->methods & ~a->methods) != 0)
        return false;
    for (size_t i = 0; i < b->nother_methods; i++) {
        bool found = false;
        for (size_t j = 0; j < a->nother_methods && !found; j++)
            found = strcmp(a->other_methods[j], b->other_methods[i]) == 0;
        if (!found)
            return false;
    }
    return true;
}

static void build_routes(struct tg_config *cfg, struct tg_config_errors *errs)
{
    size_t nroutes = 0;
    for (size_t s = 0; s < cfg->nsites; s++)
        nroutes += cfg->sites[s].nroutes;
    cfg->route_in_flight = calloc(nroutes + 1, sizeof(*cfg->route_in_flight));
    if (cfg->route_in_flight == NULL) {
        tg_config_error_at(errs, (struct tg_config_mark){1, 1}, "out of memory");
        return;
    }
    cfg->nroute_slots = nroutes + 1;
    unsigned counter = 0;
    for (size_t s = 0; s < cfg->nsites; s++) {
        struct tg_config_site *site = &cfg->sites[s];
        site->route_table =
            tg_arena_calloc(&cfg->arena, site->nroutes + 1, sizeof(*site->route_table));
        if (site->route_table == NULL) {
            tg_config_error_at(errs, (struct tg_config_mark){1, 1}, "out of memory");
            return;
        }
        for (size_t i = 0; i < site->nroutes; i++) {
            struct tg_config_route *r = &site->routes[i];
            r->counter = counter++;
            if (r->path_source == NULL)
                continue;
            char err[300];
            size_t off = 0;
            r->pattern =
                tg_router_pattern_compile(r->path_source, r->ignore_case, err, sizeof(err), &off);
            if (r->pattern == NULL) {
                /* Point at the byte. */
                struct tg_config_mark m = r->path_mark;
                m.col += (int)off;
                tg_config_error_at(errs, m, "path '%s': %s", r->path_source, err);
                continue;
            }
            r->path = tg_router_pattern_text(r->pattern);
            r->path_len = strlen(r->path);
            site->route_table[i] = (struct tg_route_entry){
                .pattern = r->pattern,
                .methods = r->methods,
                .other_methods = r->other_methods,
                .nother_methods = r->nother_methods,
                .ignore_case = r->ignore_case,
            };
            /* Routes match first to last: one that an earlier route always
             * takes first is a mistake (a catch-all above an allow-list or
             * a login limit). */
            for (size_t e = 0; e < i; e++) {
                const struct tg_config_route *er = &site->routes[e];
                if (er->pattern != NULL && tg_router_pattern_covers(er->pattern, r->pattern) &&
                    methods_cover(er, r)) {
                    tg_config_error_at(errs, r->mark,
                                       "this route can never match: the "
                                       "route at line %d (path '%s') comes first and "
                                       "matches every request it would; move it above, "
                                       "or narrow the earlier one",
                                       er->mark.line, er->path);
                    break;
                }
            }
        }
    }
}

/* ---- access rules ---------------------------------------------------------------- */

static struct tg_access_rules *access_build(const struct tg_config_access_list *l,
                                            struct tg_config_errors *errs)
{
    if (!l->set)
        return NULL;
    struct tg_access_rules *rules = tg_access_rules_new();
    if (rules == NULL) {
        tg_config_error_at(errs, l->n > 0 ? l->rules[0].mark : (struct tg_config_mark){1, 1},
                           "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < l->n; i++) {
        const struct tg_config_access_rule *r = &l->rules[i];
        char err[200];
        int rc;
        switch (r->kind) {
        case TG_ACCESS_CIDR:
            rc = tg_access_rules_add_cidr(rules, r->allow, r->text, err, sizeof(err));
            break;
        case TG_ACCESS_COUNTRY:
            rc = tg_access_rules_add_country(rules, r->allow, r->text, err, sizeof(err));
            break;
        default:
            rc = tg_access_rules_add_asn(rules, r->allow, r->asn);
            snprintf(err, sizeof(err), "'%s' is not an AS number", r->text);
            break;
        }
        if (rc < 0)
            tg_config_error_at(errs, r->mark, "%s: %s", r->key, err);
    }
    return rules;
}

static void build_access(struct tg_config *cfg, struct tg_config_errors *errs)
{
    cfg->admin_access = access_build(&cfg->admin_access_list, errs);
    for (size_t s = 0; s < cfg->nsites; s++) {
        struct tg_config_site *site = &cfg->sites[s];
        site->access = access_build(&site->access_list, errs);
        for (size_t r = 0; r < site->nroutes; r++)
            site->routes[r].access = access_build(&site->routes[r].access_list, errs);
    }
}

/* ---- TLS ------------------------------------------------------------------------------ */

/* Loads certificates and keys, and the ticket key file (after everything
 * else checked out), so that `tollgate -t` and a reload refuse a bad
 * certificate or secret like any other error. */
static int build_tls(struct tg_config *cfg, struct tg_certstore *shared,
                     struct tg_config_errors *errs)
{
    char err[512];
    struct tg_config_mark where = {1, 1};
    bool any_tls = false;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        if (!cfg->listeners[i].tls)
            continue;
        any_tls = true;
        if (cfg->tls.ncerts == 0 && !cfg->tls.acme.enabled) {
            tg_config_error_at(errs, cfg->listeners[i].mark,
                               "listener %s has tls: true but tls.certificates is empty",
                               cfg->listeners[i].key);
            return -1;
        }
    }
    int rc = 0;
    /* Read even without a TLS listener, so `-t` checks it; a reload with a
     * bad file is refused and the running gateway keeps its keys. */
    if (cfg->tls.ticket_key_file != NULL) {
        cfg->ticket_secret = tg_tls_tickets_secret_read(cfg->tls.ticket_key_file, err, sizeof(err));
        if (cfg->ticket_secret == NULL) {
            tg_config_error_at(errs, cfg->tls.mark, "tls.ticket_key_file: %s", err);
            return -1;
        }
    }
    if (shared != NULL) {
        tg_certstore_ref(shared);
        cfg->certstore = shared;
    }
    if (any_tls) {
        if (tg_tls_global_init() < 0) {
            tg_config_error_at(errs, cfg->tls.mark, "cannot initialise TLS");
            return -1;
        }
        if (cfg->certstore == NULL && (cfg->certstore = tg_certstore_new()) == NULL) {
            tg_config_error_at(errs, cfg->tls.mark, "out of memory");
            return -1;
        }
        cfg->tls_server = tg_tls_server_new_shared(cfg, cfg->certstore, err, sizeof(err), &where);
        if (cfg->tls_server == NULL) {
            tg_config_error_at(errs, where, "%s", err);
            rc = -1;
        } else if (shared == NULL && tg_tls_server_publish(cfg->tls_server) < 0) {
            /* A store of its own: filled at once. */
            tg_config_error_at(errs, cfg->tls.mark, "out of memory");
            rc = -1;
        }
    }
    for (size_t i = 0; i <= cfg->nupstreams; i++) {
        struct tg_config_upstream *u =
            i < cfg->nupstreams ? &cfg->upstreams[i] : &cfg->tenants.upstream_defaults;
        if (!u->tls)
            continue;
        if (tg_tls_global_init() < 0) {
            tg_config_error_at(errs, u->mark, "cannot initialise TLS");
            return -1;
        }
        u->tls_client = tg_tls_client_new(u, err, sizeof(err), &where);
        if (u->tls_client == NULL) {
            tg_config_error_at(errs, where, "%s", err);
            rc = -1;
        }
    }
    return rc;
}

/* ---- names among servers ---------------------------------------------------------- */

static bool has_name(const struct tg_config_server *servers, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (servers[i].host != NULL)
            return true;
    return false;
}

/* Every server list that holds a name becomes a resolver group (its
 * addresses are what the load just resolved), so workers follow the
 * names from then on. */
static void build_resolve(struct tg_config *cfg, struct tg_config_errors *errs)
{
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        struct tg_config_upstream *u = &cfg->upstreams[i];
        if (!has_name(u->servers, u->nservers))
            continue;
        u->resolve =
            tg_resolver_group_new(u->name, u->servers, u->nservers, u->resolve_interval_ms);
        if (u->resolve == NULL)
            tg_config_error_at(errs, u->mark, "upstream '%s': out of memory", u->name);
    }
    int64_t interval = cfg->tenants.upstream_defaults.resolve_interval_ms;
    for (size_t i = 0; i < cfg->tenants.ntenants; i++) {
        struct tg_config_tenant *t = &cfg->tenants.tenants[i];
        if (!has_name(t->servers, t->nservers))
            continue;
        /* All tenants share one label, as they share one upstream series. */
        t->resolve = tg_resolver_group_new("$tenant", t->servers, t->nservers, interval);
        if (t->resolve == NULL)
            tg_config_error_at(errs, t->mark, "tenant '%s': out of memory", t->id);
    }
}

static void unbuild_resolve(struct tg_config *cfg)
{
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        tg_resolver_group_unref(cfg->upstreams[i].resolve);
        cfg->upstreams[i].resolve = NULL;
    }
    for (size_t i = 0; i < cfg->tenants.ntenants; i++) {
        tg_resolver_group_unref(cfg->tenants.tenants[i].resolve);
        cfg->tenants.tenants[i].resolve = NULL;
    }
}

/* ---- the snapshot ------------------------------------------------------------------- */

static void unbuild(struct tg_config *cfg)
{
    free((void *)cfg->route_in_flight);
    cfg->route_in_flight = NULL;
    if (cfg->tls_server != NULL)
        tg_tls_server_free(cfg->tls_server);
    cfg->tls_server = NULL;
    tg_tls_tickets_secret_unref(cfg->ticket_secret);
    cfg->ticket_secret = NULL;
    for (size_t i = 0; i <= cfg->nupstreams; i++) {
        struct tg_config_upstream *u =
            i < cfg->nupstreams ? &cfg->upstreams[i] : &cfg->tenants.upstream_defaults;
        if (u->tls_client != NULL)
            tg_tls_client_free(u->tls_client);
        u->tls_client = NULL;
    }
    tg_certstore_unref(cfg->certstore);
    cfg->certstore = NULL;
    if (cfg->hosts != NULL)
        tg_router_hosts_free(cfg->hosts);
    cfg->hosts = NULL;
    tg_geoip_close(cfg->geoip);
    tg_geoip_close(cfg->geoip_asn);
    cfg->geoip = cfg->geoip_asn = NULL;
    tg_access_rules_free(cfg->admin_access);
    cfg->admin_access = NULL;
    for (size_t s = 0; s < cfg->nsites; s++) {
        struct tg_config_site *site = &cfg->sites[s];
        tg_access_rules_free(site->access);
        site->access = NULL;
        for (size_t r = 0; r < site->nroutes; r++) {
            struct tg_config_route *route = &site->routes[r];
            tg_access_rules_free(route->access);
            tg_router_pattern_free(route->pattern);
            route->access = NULL;
            route->pattern = NULL;
        }
    }
    if (cfg->tenants.index != NULL)
        tg_tenant_index_free(cfg->tenants.index);
    cfg->tenants.index = NULL;
    unbuild_resolve(cfg);
}

int tg_config_build(struct tg_config *cfg, const struct tg_config_build_opts *opts,
                    struct tg_config_errors *errs)
{
    int before = errs->n;
    cfg->unbuild = unbuild;
    if (errs->files == NULL) { /* errors of its own: name the included files too */
        errs->files = cfg->files;
        errs->nfiles = cfg->nfiles;
    }
    build_geoip(cfg, errs);
    build_hosts(cfg, errs);
    build_routes(cfg, errs);
    build_access(cfg, errs);
    build_resolve(cfg, errs);
    if (errs->n == 0)
        build_tls(cfg, opts != NULL ? opts->certstore : NULL, errs);
    /* Static tenants copy tenants.upstream_defaults, TLS context included:
     * build them last. */
    if (errs->n == 0 && cfg->tenants.configured) {
        char err[300];
        if (tg_tenant_index_build(cfg, err, sizeof(err)) < 0)
            tg_config_error_at(errs, (struct tg_config_mark){1, 1}, "%s", err);
    }
    return errs->n > before ? -1 : 0;
}

struct tg_config *tg_config_load_buffer_with(const char *name, const char *data, size_t len,
                                             const struct tg_config_build_opts *opts, char *errors,
                                             size_t errlen)
{
    struct tg_config_errors *errs = malloc(sizeof(*errs));
    if (errs == NULL) {
        snprintf(errors, errlen, "%s:1:1: out of memory\n", name);
        return NULL;
    }
    tg_config_errors_init(errs, name);
    if (errors != NULL && errlen > 0)
        errors[0] = '\0';
    /* The build runs even after parse errors: its own checks (hosts,
     * paths, access lists, GeoIP files) are reported in the same pass. */
    struct tg_config *cfg = tg_config_parse_collect(name, data, len, errs);
    if (cfg != NULL)
        tg_config_build(cfg, opts, errs);
    if (cfg == NULL || errs->n > 0) {
        if (errs->n == 0)
            tg_config_error_at(errs, (struct tg_config_mark){1, 1}, "invalid configuration");
        tg_config_errors_format(errs, errors, errlen);
        tg_config_unref(cfg);
        cfg = NULL;
    }
    free(errs);
    return cfg;
}

struct tg_config *tg_config_load_with(const char *path, const struct tg_config_build_opts *opts,
                                      char *errors, size_t errlen)
{
    char *data;
    size_t len;
    if (tg_config_read_file(path, &data, &len, errors, errlen) < 0)
        return NULL;
    struct tg_config *cfg = tg_config_load_buffer_with(path, data, len, opts, errors, errlen);
    free(data);
    return cfg;
}

struct tg_config *tg_config_load_buffer(const char *name, const char *data, size_t len,
                                        char *errors, size_t errlen)
{
    return tg_config_load_buffer_with(name, data, len, NULL, errors, errlen);
}

struct tg_config *tg_config_load(const char *path, char *errors, size_t errlen)
{
    return tg_config_load_with(path, NULL, errors, errlen);
}

int tg_config_publish(struct tg_config *cfg)
{
    if (cfg->tls_server != NULL)
        return tg_tls_server_publish(cfg->tls_server);
    if (cfg->certstore != NULL)
        return tg_certstore_set_config(cfg->certstore, NULL, 0);
    return 0;
}

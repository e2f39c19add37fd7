/* Building a parsed configuration: the runtime objects that live beside
 * the data of a snapshot (config.h marks them "built"), and loading, which
 * is parsing followed by building.
 *
 * What is built: the GeoIP databases (opened and checked), the host index,
 * compiled route patterns (and the check that no route is shadowed by an
 * earlier one), access rule sets, TLS server and client contexts with the
 * certificates loaded, the secret of tls.ticket_key_file, the tenant
 * index, and a resolver group for each server list that holds a name
 * (resolver.h). Each error carries the mark of the entry it is about, as
 * the parser's do. */
#ifndef TG_CONFIG_BUILD_H
#define TG_CONFIG_BUILD_H

#include <stddef.h>

#include "config.h"

struct tg_certstore;

struct tg_config_build_opts {
    /* The certificate store SNI consults, shared by every snapshot of the
     * process (the server keeps a reference). The snapshot's certificates
     * enter it with tg_config_publish. NULL: the snapshot gets a store of
     * its own, filled at once (tests, `-t`, `explain`). */
    struct tg_certstore *certstore;
};

/* Builds the runtime objects of a snapshot from its parsed data (once per
 * snapshot; tg_config_unref frees them). Errors are added to `errs` with
 * their marks. Every step whose input parsed runs, so one pass reports
 * everything; TLS contexts and the tenant index are built only when no
 * error has been found so far (a certificate would be loaded for nothing).
 * Returns 0, or -1 when it added errors (what was built stays, to be freed
 * with the snapshot). `opts` may be NULL. Requires tg_tls_global_init when
 * a listener or upstream has TLS (it calls it). Main thread. */
int tg_config_build(struct tg_config *cfg, const struct tg_config_build_opts *opts,
                    struct tg_config_errors *errs);

/* Loads and validates `path`: parses, then builds the runtime objects
 * (config_build.c; certificates go to a store of the snapshot's own, see
 * tg_config_load_with for the shared one). On success returns a snapshot
 * with one reference. On failure returns NULL and fills `errors`
 * (NUL-terminated, one "FILE:LINE:COL: message" per line, first error
 * first). Main thread (or any thread: the only global state it touches
 * is the resolver's table of names, which has its own lock). */
struct tg_config *tg_config_load(const char *path, char *errors, size_t errlen);

/* Loads from memory; `name` is used in messages. For tests and fuzzing. */
struct tg_config *tg_config_load_buffer(const char *name, const char *data, size_t len,
                                        char *errors, size_t errlen);

/* tg_config_load / tg_config_load_buffer with options. */
struct tg_config *tg_config_load_with(const char *path, const struct tg_config_build_opts *opts,
                                      char *errors, size_t errlen);
struct tg_config *tg_config_load_buffer_with(const char *name, const char *data, size_t len,
                                             const struct tg_config_build_opts *opts, char *errors,
                                             size_t errlen);

/* Makes a snapshot's shared state current when it is installed (start,
 * reload): its certificates become the configuration's certificates in
 * the store (those put at run time stay). Returns 0, or -1 on allocation
 * failure (the store is unchanged). Main thread. */
int tg_config_publish(struct tg_config *cfg);

#endif

/* tollgate: command line, signals, start and stop of the workers, reload.
 *
 * The main thread owns the configuration: it loads and validates a new
 * snapshot, opens any new listening sockets (so a bind failure refuses the
 * reload before any worker changes), and posts the snapshot to every
 * worker. Signals are handled here only; workers block them. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <openssl/crypto.h>

#include "access_log.h"
#include "acme.h"
#include "cache.h"
#include "certstore.h"
#include "config.h"
#include "config_build.h"
#include "explain.h"
#include "iptable.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit.h"
#include "resolver.h"
#include "tenant_metrics.h"
#include "tenant_shared.h"
#include "ticket_share.h"
#include "tls.h"
#include "trace_export.h"
#include "version.h"
#include "worker.h"

#define ERRBUF 16384

static struct {
    const char *config_path;
    struct tg_config *config; /* current snapshot (main's reference) */
    /* The certificates SNI serves: every snapshot's TLS server consults it;
     * installing a snapshot replaces the configured ones. */
    struct tg_certstore *certs;
    struct tg_runtime rt;
    struct tg_worker **workers; /* rt.workers holds their contexts */
    bool acme;                  /* the ACME thread runs */
    struct ev_loop *loop;
    ev_signal sig_hup, sig_term, sig_int, sig_quit, sig_usr1;
    ev_timer drain_timer;
    ev_async worker_exit;
    ev_async worker_drained;
    _Atomic unsigned workers_running;
    _Atomic unsigned workers_drained;
    bool draining;
} g;

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: tollgate [-c FILE] [-t] [-v] [-h]\n"
        "       tollgate explain [-c FILE] [--peer ADDRESS] 'METHOD URL' [-H 'Name: value']...\n"
        "  -c, --config FILE  configuration file (default conf/tollgate.yaml)\n"
        "  -t, --test         check the configuration and exit (0 if valid)\n"
        "  -v, --version      print the version and exit\n"
        "  -h, --help         this help\n"
        "signals: HUP reload, TERM/INT drain and stop, QUIT stop now,\n"
        "         USR1 reopen log files\n");
}

static void print_errors(const char *errors)
{
    fputs(errors, stderr);
    if (errors[0] != '\0' && errors[strlen(errors) - 1] != '\n')
        fputc('\n', stderr);
}

static bool has_listener(const struct tg_config *c, const char *key)
{
    for (size_t j = 0; c != NULL && j < c->nlisteners; j++)
        if (strcmp(c->listeners[j].key, key) == 0)
            return true;
    return false;
}

static void close_opened(int **fds, char ***keys, unsigned nworkers, size_t k, unsigned partial)
{
    for (unsigned v = 0; v < nworkers; v++) {
        size_t upto = k + (v < partial ? 1 : 0);
        for (size_t x = 0; x < upto; x++) {
            close(fds[v][x]);
            free(keys[v][x]);
        }
        free(fds[v]);
        free(keys[v]);
    }
}

/* Whether a listener of `c` shares `l`'s port and family with an address
 * that overlaps (equal, or either one the wildcard): our own socket there
 * makes the probe of `l` fail, so the probe cannot tell us anything. */
static bool overlaps_held(const struct tg_config *c, const struct tg_config_listen *l)
{
    const struct sockaddr_storage *a = &l->addr.sa;
    for (size_t j = 0; c != NULL && j < c->nlisteners; j++) {
        const struct sockaddr_storage *b = &c->listeners[j].addr.sa;
        if (a->ss_family != b->ss_family)
            continue;
        if (a->ss_family == AF_INET) {
            const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
            if (x->sin_port == y->sin_port &&
                (x->sin_addr.s_addr == y->sin_addr.s_addr || x->sin_addr.s_addr == INADDR_ANY ||
                 y->sin_addr.s_addr == INADDR_ANY))
                return true;
        } else if (a->ss_family == AF_INET6) {
            const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
            if (x->sin6_port == y->sin6_port &&
                (IN6_ARE_ADDR_EQUAL(&x->sin6_addr, &y->sin6_addr) ||
                 IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr) || IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr)))
                return true;
        }
    }
    return false;
}

/* Refuses, before any socket is opened, an address of `next` that another
 * process listens on (see tg_worker_probe_listener): SO_REUSEPORT alone
 * would let us share it silently. Addresses `prev` holds are ours. Every
 * address is probed before the first bind, so listeners of one config that
 * overlap (0.0.0.0:80 and 127.0.0.1:80) do not trip over each other. */
static int probe_new_listeners(const struct tg_config *prev, const struct tg_config *next)
{
    int rc = 0;
    for (size_t i = 0; i < next->nlisteners; i++) {
        const struct tg_config_listen *l = &next->listeners[i];
        if (has_listener(prev, l->key) || overlaps_held(prev, l))
            continue;
        char err[256];
        if (tg_worker_probe_listener(l, err, sizeof(err)) < 0) {
            tg_log_error("%s:%d:%d: cannot listen on %s%s: %s", tg_config_mark_file(next, l->mark),
                         l->mark.line, l->mark.col, l->key, l->admin ? " (admin.listen)" : "", err);
            rc = -1; /* name every address taken, not just the first */
        }
    }
    return rc;
}

/* Opens, for every listener of `next` that `prev` lacks, one socket per
 * worker. Returns 0, or -1 after closing what it opened. */
static int open_new_listeners(const struct tg_config *prev, const struct tg_config *next,
                              unsigned nworkers, int **fds, char ***keys, size_t *n_out)
{
    if (probe_new_listeners(prev, next) < 0)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < next->nlisteners; i++)
        n += !has_listener(prev, next->listeners[i].key);
    for (unsigned w = 0; w < nworkers; w++) {
        fds[w] = calloc(n ? n : 1, sizeof(int));
        keys[w] = calloc(n ? n : 1, sizeof(char *));
        if (fds[w] == NULL || keys[w] == NULL) {
            tg_log_error("out of memory opening listeners");
            for (unsigned v = 0; v <= w; v++) {
                free(fds[v]);
                free(keys[v]);
            }
            return -1;
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < next->nlisteners; i++) {
        const struct tg_config_listen *l = &next->listeners[i];
        if (has_listener(prev, l->key))
            continue;
        for (unsigned w = 0; w < nworkers; w++) {
            char err[256];
            int fd = tg_worker_open_listener(l, err, sizeof(err));
            char *key = fd >= 0 ? strdup(l->key) : NULL;
            if (fd < 0 || key == NULL) {
                tg_log_error("%s:%d:%d: cannot listen on %s: %s",
                             tg_config_mark_file(next, l->mark), l->mark.line, l->mark.col, l->key,
                             fd < 0 ? err : "out of memory");
                if (fd >= 0)
                    close(fd);
                close_opened(fds, keys, nworkers, k, w);
                return -1;
            }
            fds[w][k] = fd;
            keys[w][k] = key;
        }
        k++;
    }
    *n_out = n;
    return 0;
}

/* What the configuration loads with but most likely does not mean (the
 * same lines `-t` prints). */
static void log_warnings(const struct tg_config *cfg)
{
    for (size_t i = 0; i < cfg->nwarnings; i++)
        tg_log_warn("%s", cfg->warnings[i]);
}

/* Applies the log settings of a snapshot. */
static int apply_logs(const struct tg_config *cfg, bool at_start)
{
    tg_log_set_level((enum tg_log_level)cfg->log.level);
    if (tg_log_open(cfg->log.error) < 0) {
        tg_log_error("cannot open error log %s: %s", cfg->log.error, strerror(errno));
        if (at_start)
            return -1;
    }
    char err[300];
    if (tg_access_log_set_target(cfg->log.access, err, sizeof(err)) < 0) {
        tg_log_error("%s", err);
        if (at_start)
            return -1;
    }
    return 0;
}

/* Applies a snapshot's tracing section: the exporter thread starts the
 * first time tracing is enabled and stays (a reload that disables tracing
 * only stops workers from queueing spans). */
static int apply_tracing(const struct tg_config *cfg)
{
    if (!cfg->tracing.enabled)
        return 0;
    if (tg_trace_export_configure(&cfg->tracing) < 0 || tg_trace_export_start() < 0) {
        tg_log_error("tracing: cannot start the span exporter");
        return -1;
    }
    return 0;
}

/* Installs `next` in every worker. Takes over the caller's reference. */
static int install_config(struct tg_config *next)
{
    unsigned nw = g.rt.nworkers;
    int **fds = calloc(nw, sizeof(*fds));
    char ***keys = calloc(nw, sizeof(*keys));
    size_t n = 0;
    if (fds == NULL || keys == NULL || open_new_listeners(g.config, next, nw, fds, keys, &n) < 0) {
        free(fds);
        free(keys);
        tg_config_unref(next);
        return -1;
    }
    /* Its certificates serve from the next handshake on (the store swaps
     * atomically); handshakes under way finish with what they started. */
    if (tg_config_publish(next) < 0) {
        tg_log_error("out of memory publishing the certificates");
        close_opened(fds, keys, nw, n, 0);
        free(fds);
        free(keys);
        tg_config_unref(next);
        return -1;
    }
    for (unsigned w = 0; w < nw; w++) {
        struct tg_worker_msg *m = calloc(1, sizeof(*m));
        if (m == NULL) {
            /* Keep going: that worker stays on the old snapshot. */
            tg_log_error("out of memory posting the configuration to worker %u", w);
            for (size_t x = 0; x < n; x++) {
                close(fds[w][x]);
                free(keys[w][x]);
            }
            free(fds[w]);
            free(keys[w]);
            continue;
        }
        m->type = TG_WORKER_MSG_CONFIG;
        tg_config_ref(next);
        m->config = next;
        m->fds = fds[w];
        m->keys = keys[w];
        m->nfds = n;
        tg_worker_post(g.workers[w], m);
    }
    free(fds);
    free(keys);
    if (g.config != NULL)
        tg_config_unref(g.config);
    g.config = next;
    return 0;
}

/* Started as root with `user:` set: give root up once the listening
 * sockets are open (ports below 1024 need it; nothing after does). Under
 * systemd, prefer User= with AmbientCapabilities=CAP_NET_BIND_SERVICE. */
static int drop_privileges(const char *spec)
{
    if (geteuid() != 0) {
        if (spec != NULL)
            tg_log_info("user: %s ignored: not running as root", spec);
        return 0;
    }
    if (spec == NULL) {
        tg_log_warn("running as root; set `user:` to drop privileges after binding");
        return 0;
    }
    char name[256];
    snprintf(name, sizeof(name), "%s", spec);
    char *group = strchr(name, ':');
    if (group != NULL)
        *group++ = '\0';
    struct passwd *pw = getpwnam(name);
    if (pw == NULL) {
        tg_log_error("user: no such user '%s'", name);
        return -1;
    }
    gid_t gid = pw->pw_gid;
    if (group != NULL) {
        struct group *gr = getgrnam(group);
        if (gr == NULL) {
            tg_log_error("user: no such group '%s'", group);
            return -1;
        }
        gid = gr->gr_gid;
    }
    if (initgroups(pw->pw_name, gid) < 0 || setgid(gid) < 0 || setuid(pw->pw_uid) < 0) {
        tg_log_error("cannot switch to user %s: %s", spec, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0) {
        tg_log_error("privileges could not be dropped");
        return -1;
    }
    tg_log_info("running as %s", spec);
    return 0;
}

/* ---- automatic certificates ------------------------------------------------------ */

/* The ACME thread obtained a certificate (or gave up on one): every
 * worker's waiting handshakes try again. */
static void acme_notify(const char *name, void *arg)
{
    (void)name, (void)arg;
    for (unsigned i = 0; i < g.rt.nworkers; i++) {
        struct tg_worker_msg *m = calloc(1, sizeof(*m));
        if (m == NULL)
            continue;
        m->type = TG_WORKER_MSG_CERT;
        tg_worker_post(g.workers[i], m);
    }
}

/* A handshake names a host no certificate serves (a worker thread). */
static int acme_unknown_name(const char *name, size_t n)
{
    switch (tg_acme_on_demand(name, n)) {
    case TG_ACME_WAIT:
        return 1;
    case TG_ACME_REFUSE:
        return -1;
    default:
        return 0;
    }
}

static void acme_follow(struct tg_config *cfg)
{
    if (!cfg->tls.acme.enabled || cfg->certstore == NULL)
        return;
    if (g.acme) {
        tg_acme_configure(cfg);
        return;
    }
    char err[512];
    if (tg_acme_start(cfg, cfg->certstore, acme_notify, NULL, err, sizeof(err)) < 0) {
        tg_log_error("acme: cannot start: %s", err);
        return;
    }
    g.acme = true;
}

static void reload(void)
{
    if (g.draining)
        return;
    char *errors = malloc(ERRBUF);
    if (errors == NULL)
        return;
    struct tg_config_build_opts opts = {.certstore = g.certs};
    struct tg_config *next = tg_config_load_with(g.config_path, &opts, errors, ERRBUF);
    if (next == NULL)
        tg_metrics_reload(false, 0);
    if (next == NULL) {
        tg_log_error("reload refused; the running configuration stays:");
        char *save = NULL;
        for (char *line = strtok_r(errors, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save))
            tg_log_error("  %s", line);
        free(errors);
        return;
    }
    free(errors);
    log_warnings(next);
    if (next->rate_limit.local_max_keys != g.config->rate_limit.local_max_keys)
        tg_log_warn("rate_limit.local.max_keys: the new size takes effect at the next restart");
    if (next->workers != g.rt.nworkers)
        tg_log_warn("workers: %u -> %u takes effect at the next restart", g.rt.nworkers,
                    next->workers);
    apply_logs(next, false);
    apply_tracing(next);
    tg_metrics_assign(next);
    tg_tenant_metrics_configure(next->tenant_series);
    if (install_config(next) < 0) {
        tg_metrics_reload(false, 0);
        tg_log_error("reload refused: a new listener could not be opened");
        return;
    }
    tg_metrics_reload(true, (double)time(NULL));
    acme_follow(g.config);
    tg_ticket_share_follow(g.config);
    tg_log_info("configuration reloaded from %s", g.config_path);
}

static void post_all(enum tg_worker_msg_type type)
{
    for (unsigned i = 0; i < g.rt.nworkers; i++) {
        struct tg_worker_msg *m = calloc(1, sizeof(*m));
        if (m == NULL)
            continue;
        m->type = type;
        tg_worker_post(g.workers[i], m);
    }
}

static void on_drain_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)t, (void)revents;
    tg_log_warn("drain timeout reached; closing what is left");
    post_all(TG_WORKER_MSG_STOP);
}

static void start_drain(void)
{
    if (g.draining)
        return;
    g.draining = true;
    atomic_store(&g.rt.draining, true);
    tg_log_info("draining: no new connections; finishing requests in flight");
    post_all(TG_WORKER_MSG_DRAIN);
    ev_timer_init(&g.drain_timer, on_drain_timeout, (double)g.config->drain_timeout_ms / 1000.0,
                  0.);
    ev_timer_start(g.loop, &g.drain_timer);
}

static void on_signal(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)loop, (void)revents;
    switch (s->signum) {
    case SIGHUP:
        reload();
        break;
    case SIGTERM:
    case SIGINT:
        start_drain();
        break;
    case SIGQUIT:
        tg_log_info("SIGQUIT: stopping now");
        g.draining = true;
        atomic_store(&g.rt.draining, true);
        post_all(TG_WORKER_MSG_STOP);
        break;
    case SIGUSR1:
        if (tg_log_reopen() < 0)
            tg_log_error("cannot reopen the error log: %s", strerror(errno));
        tg_access_log_reopen();
        tg_log_info("log files reopened");
        break;
    }
}

static void on_worker_drained_async(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop, (void)a, (void)revents;
    if (atomic_load(&g.workers_drained) >= g.rt.nworkers) {
        tg_log_info("all requests finished");
        post_all(TG_WORKER_MSG_STOP);
    }
}

/* Runs in a worker thread when its drain has finished. */
static void worker_drained(void)
{
    atomic_fetch_add(&g.workers_drained, 1);
    ev_async_send(g.loop, &g.worker_drained);
}

static void on_worker_exit(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)a, (void)revents;
    if (atomic_load(&g.workers_running) == 0)
        ev_break(loop, EVBREAK_ALL);
}

/* Runs in each worker thread after its loop ends (see worker.c hook). */
static void worker_exited(void)
{
    atomic_fetch_sub(&g.workers_running, 1);
    ev_async_send(g.loop, &g.worker_exit);
}

int main(int argc, char **argv)
{
    const char *path = "conf/tollgate.yaml";
    bool test_only = false;
    int opt;
    if (argc > 1 && strcmp(argv[1], "explain") == 0) {
        if (tg_tls_global_init() < 0)
            return 1;
        int rc = tg_explain_main(argc - 2, argv + 2, path);
        tg_tls_global_cleanup();
        return rc;
    }
    /* GNU style too: --help and --version on stdout with exit 0, as
     * packagers' scripts and `man`-less users expect. */
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"test", no_argument, NULL, 't'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    while ((opt = getopt_long(argc, argv, "c:tvh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = true;
            break;
        case 'v':
            /* The first line is what scripts read: "tollgate X.Y.Z". */
            printf("tollgate %s\nbuilt with libev %d.%d, %s\n", TG_VERSION, ev_version_major(),
                   ev_version_minor(), OpenSSL_version(OPENSSL_VERSION));
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tollgate: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    char *errors = malloc(ERRBUF);
    if (errors == NULL || tg_tls_global_init() < 0 || (g.certs = tg_certstore_new()) == NULL)
        return 1;
    struct tg_config_build_opts opts = {.certstore = g.certs};
    struct tg_config *cfg = tg_config_load_with(path, &opts, errors, ERRBUF);
    if (cfg == NULL) {
        print_errors(errors);
        free(errors);
        return 1;
    }
    free(errors);
    if (test_only) {
        for (size_t i = 0; i < cfg->nwarnings; i++)
            fprintf(stderr, "%s\n", cfg->warnings[i]);
        printf("%s: configuration OK\n", path);
        tg_config_unref(cfg);
        tg_certstore_unref(g.certs);
        tg_tls_global_cleanup();
        return 0;
    }

    g.config_path = path;
    g.rt.config_path = path;
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    unsigned rnd = 0;
    if (getentropy(&rnd, sizeof(rnd)) < 0)
        rnd = (unsigned)time(NULL);
    snprintf(g.rt.gateway_id, sizeof(g.rt.gateway_id), "%s:%d:%08x", host, (int)getpid(), rnd);
    signal(SIGPIPE, SIG_IGN);
    /* Every thread we start (log writer, workers) inherits a mask that
     * blocks our signals; main unblocks them once its handlers are in
     * place, so only main ever handles them. */
    sigset_t set, old;
    sigemptyset(&set);
    int sigs[] = {SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaddset(&set, sigs[i]);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    if (tg_access_log_start() < 0 || apply_logs(cfg, true) < 0 || apply_tracing(cfg) < 0) {
        tg_config_unref(cfg);
        return 1;
    }
    log_warnings(cfg);

    g.loop = ev_default_loop(EVFLAG_AUTO);
    ev_async_init(&g.worker_exit, on_worker_exit);
    ev_async_start(g.loop, &g.worker_exit);
    ev_async_init(&g.worker_drained, on_worker_drained_async);
    ev_async_start(g.loop, &g.worker_drained);

    g.rt.nworkers = cfg->workers;
    pthread_mutex_init(&g.rt.warned_lock, NULL);
    g.rt.iptable = tg_iptable_new();
    /* The table outlives reloads; its size is fixed at start. */
    g.rt.rl_local = tg_ratelimit_local_new(cfg->rate_limit.local_max_keys, 64);
    if (g.rt.iptable == NULL || g.rt.rl_local == NULL)
        return 1;
    /* Purges of the response cache reach every worker through this log
     * (cache.h); it lives as long as the process. */
    g.rt.cache_purges = calloc(1, sizeof(*g.rt.cache_purges));
    if (g.rt.cache_purges == NULL || tg_cache_purges_init(g.rt.cache_purges) < 0)
        return 1;
    /* What any worker fetched from the tenant directory, for the others
     * while Redis fails; sized like one worker's cache, at start. */
    g.rt.tenant_shared = tg_tenant_shared_new(cfg->tenants.max_cached, cfg->workers);
    if (g.rt.tenant_shared == NULL)
        return 1;
    /* The workers' per-tenant tables are sized by the first configuration. */
    tg_tenant_metrics_configure(cfg->tenant_series);
    g.rt.workers = calloc(cfg->workers, sizeof(*g.rt.workers));
    g.workers = calloc(cfg->workers, sizeof(*g.workers));
    if (g.rt.workers == NULL || g.workers == NULL)
        return 1;
    for (unsigned i = 0; i < cfg->workers; i++) {
        g.workers[i] = tg_worker_new(i, &g.rt);
        if (g.workers[i] == NULL) {
            tg_log_error("cannot create worker %u", i);
            return 1;
        }
        g.rt.workers[i] = &g.workers[i]->ctx;
        g.workers[i]->on_exit = worker_exited;
        g.workers[i]->on_drained = worker_drained;
    }
    tg_metrics_assign(cfg);
    /* The first load is no reload: only SIGHUP counts in
     * tollgate_config_reloads_total; the load time is still shown. */
    tg_metrics_loaded((double)time(NULL));
    if (install_config(cfg) < 0) {
        tg_log_error("cannot start: a listener could not be opened");
        return 1;
    }
    if (drop_privileges(cfg->user) < 0)
        return 1;
    atomic_store(&g.workers_running, cfg->workers);
    tg_tls_server_on_unknown_name(acme_unknown_name);
    /* Before the workers: stored certificates serve their first handshake
     * (its threads block the signals too). */
    acme_follow(g.config);
    for (unsigned i = 0; i < g.rt.nworkers; i++) {
        if (tg_worker_start(g.workers[i]) < 0) {
            tg_log_error("cannot start worker thread %u", i);
            return 1;
        }
    }
    ev_signal_init(&g.sig_hup, on_signal, SIGHUP);
    ev_signal_init(&g.sig_term, on_signal, SIGTERM);
    ev_signal_init(&g.sig_int, on_signal, SIGINT);
    ev_signal_init(&g.sig_quit, on_signal, SIGQUIT);
    ev_signal_init(&g.sig_usr1, on_signal, SIGUSR1);
    ev_signal_start(g.loop, &g.sig_hup);
    ev_signal_start(g.loop, &g.sig_term);
    ev_signal_start(g.loop, &g.sig_int);
    ev_signal_start(g.loop, &g.sig_quit);
    ev_signal_start(g.loop, &g.sig_usr1);
    tg_ticket_share_follow(g.config); /* a fleet's ticket keys, from Redis */
    /* Names among upstream and tenant servers, resolved again from now on
     * (its thread blocks our signals too, as they are still masked). */
    if (tg_resolver_start() < 0) {
        tg_log_error("cannot start the resolver thread");
        return 1;
    }
    /* Handlers are in place: now a pending signal is handled, not fatal. */
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    for (size_t i = 0; i < g.config->nlisteners; i++)
        tg_log_info("listening on %s%s", g.config->listeners[i].key,
                    g.config->listeners[i].tls ? " (tls)" : "");
    tg_log_info("tollgate %s started with %u worker%s", TG_VERSION, g.rt.nworkers,
                g.rt.nworkers == 1 ? "" : "s");

    ev_run(g.loop, 0);

    tg_acme_stop();
    tg_ticket_share_stop();
    for (unsigned i = 0; i < g.rt.nworkers; i++)
        tg_worker_join_and_free(g.workers[i]);
    free(g.workers);
    free(g.rt.workers);
    tg_iptable_free(g.rt.iptable);
    tg_ratelimit_local_free(g.rt.rl_local);
    tg_tenant_shared_free(g.rt.tenant_shared);
    tg_trace_export_stop(); /* after the workers: their last spans are queued */
    tg_access_log_stop();
    tg_config_unref(g.config);
    tg_resolver_stop(); /* after the last snapshot: no group is left */
    tg_certstore_unref(g.certs);
    tg_tls_global_cleanup();
    tg_log_info("stopped");
    return 0;
}

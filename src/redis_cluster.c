/* Redis Cluster: the slot map, a redis.c link per node, and commands routed
 * by hash slot with MOVED / ASK / TRYAGAIN followed inside one deadline.
 * It knows nothing of what commands mean (callers judge replies); it does
 * not split commands across slots, read from replicas, or subscribe. With
 * one server configured it is a thin pass-through to that server's link.
 *
 * Lifetimes. A routed command (tg_redis_cluster_cmd) holds a copy of its
 * arguments, so it can be sent again after a redirect, and lives until
 * its callback has run or it is cancelled. It is in flight on one node's
 * link (inner != NULL) or waiting on the TRYAGAIN list, never both. Nodes
 * are freed only from the refresh timer (a node the map no longer names,
 * with nothing in flight) or with the client, never from inside a link's
 * callback; the client's own final free waits until none of its callbacks
 * runs (depth), as redis.c does. */
#include "redis_cluster.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "config.h"
#include "list.h"
#include "log.h"

/* Redirects one command may follow: a slot moves at most a step or two
 * at a time, so more means the map is in flux and the caller's fail-soft
 * rule is the better answer. */
#define MAX_REDIRECTS 5
#define NODES_MAX 1024 /* the map's node index is 16 bits; Redis' own limit is ~1000 */
#define HOST_MAX 256
#define ADDR_MAX (HOST_MAX + 2 + 1 + 5 + 1) /* "[" host "]:" port NUL */
#define NAME_MAX_LEN 32
/* The map is read again this often while every slot is served by a link
 * that is up, and this often while some slot is not (a failover in
 * progress: the map changes when a replica is promoted); never two reads
 * closer than REFRESH_GAP_S. */
#define REFRESH_PERIOD_S 5.0
#define REFRESH_DEGRADED_S 0.25
#define REFRESH_GAP_S 0.1
/* CLUSTER SLOTS may take longer than a rate-limit command's few ms under
 * load, and nobody waits for it: at least this long. */
#define REFRESH_TIMEOUT_MIN_MS 1000
/* A TRYAGAIN (keys of a slot half migrated) is sent again after this,
 * doubling up to the maximum, for as long as the command's deadline
 * allows. */
#define TRYAGAIN_DELAY_S 0.005
#define TRYAGAIN_DELAY_MAX_S 0.04
#define ERROR_MAX 160
#define MAP_BYTES (TG_REDIS_CLUSTER_SLOTS * sizeof(uint16_t))

struct node {
    struct tg_redis_cluster *cl;
    struct tg_redis *link;
    unsigned index;    /* in cl->nodes; the map holds index + 1 */
    unsigned slots;    /* the map gives it this many */
    unsigned inflight; /* routed commands on its link */
    bool seed;
    bool dirty; /* commands sent since the last flush */
    char address[ADDR_MAX];
};

struct tg_redis_cluster_cmd {
    struct tg_list retry; /* in cl->retries while waiting after TRYAGAIN */
    struct tg_redis_cluster *cl;
    struct node *node;          /* in flight there, or NULL */
    struct tg_redis_cmd *inner; /* ... as this command of its link */
    tg_redis_reply_cb cb;
    void *arg;
    ev_tstamp deadline;
    unsigned slot;
    unsigned redirects;
    unsigned tries; /* TRYAGAIN answers so far */
    ev_tstamp retry_at;
    int argc;
    const char **argv;
    size_t *argvlen;
    /* then argv, argvlen and the arguments' bytes */
};

struct tg_redis_cluster {
    struct ev_loop *loop;
    char name[NAME_MAX_LEN];
    struct tg_redis_options opt; /* for every link; name points at `name` */
    tg_redis_state_cb on_state;
    void *arg;

    /* config */
    bool clustered;
    char **seeds; /* cluster: seed addresses */
    size_t nseeds;
    char *address; /* one server */
    char *password;
    unsigned db;
    int64_t timeout_ms;

    struct tg_redis *single; /* one server: its link */

    struct node **nodes; /* NULL holes where nodes were freed */
    size_t nnodes, cap;
    uint16_t *map;     /* slot -> node index + 1, 0: none (a cluster only: 32 KiB) */
    uint16_t *scratch; /* a map being read, as large */
    unsigned holes;    /* slots no node serves */
    bool have_map;
    bool map_failed; /* the last read failed, and no map yet */
    struct tg_redis_cmd *refresh_cmd;
    struct node *refresh_node;
    unsigned refresh_next; /* where the next read starts looking */
    ev_tstamp refresh_at;  /* when the last read was sent */
    ev_timer refresh_timer;
    char last_error[ERROR_MAX];

    struct tg_list retries; /* of tg_redis_cluster_cmd.retry */
    ev_timer retry_timer;

    enum tg_redis_state shown;
    int depth;     /* our callbacks running */
    bool stopping; /* links being dropped: their callbacks only fail */
    bool closing, want_free;
    struct tg_redis_cluster_stats st;
    struct tg_redis_stats gone; /* of links freed, so counters never go down */
};

/* ---- hash slots ----------------------------------------------------------- */

/* CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis
 * Cluster's keyHashSlot; a byte at a time (the unit test checks the table
 * against the bitwise definition). */
static const uint16_t crc16_table[256] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7, 0x8108, 0x9129, 0xa14a, 0xb16b,
    0xc18c, 0xd1ad, 0xe1ce, 0xf1ef, 0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294, 0x72f7, 0x62d6,
    0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de, 0x2462, 0x3443, 0x0420, 0x1401,
    0x64e6, 0x74c7, 0x44a4, 0x5485, 0xa56a, 0xb54b, 0x8528, 0x9509, 0xe5ee, 0xf5cf, 0xc5ac, 0xd58d,
    0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695, 0x46b4, 0xb75b, 0xa77a, 0x9719, 0x8738,
    0xf7df, 0xe7fe, 0xd79d, 0xc7bc, 0x48c4, 0x58e5, 0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823,
    0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948, 0x9969, 0xa90a, 0xb92b, 0x5af5, 0x4ad4, 0x7ab7, 0x6a96,
    0x1a71, 0x0a50, 0x3a33, 0x2a12, 0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a,
    0x6ca6, 0x7c87, 0x4ce4, 0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41, 0xedae, 0xfd8f, 0xcdec, 0xddcd,
    0xad2a, 0xbd0b, 0x8d68, 0x9d49, 0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70,
    0xff9f, 0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78, 0x9188, 0x81a9, 0xb1ca, 0xa1eb,
    0xd10c, 0xc12d, 0xf14e, 0xe16f, 0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046, 0x6067,
    0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e, 0x02b1, 0x1290, 0x22f3, 0x32d2,
    0x4235, 0x5214, 0x6277, 0x7256, 0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e, 0xe54f, 0xd52c, 0xc50d,
    0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405, 0xa7db, 0xb7fa, 0x8799, 0x97b8,
    0xe75f, 0xf77e, 0xc71d, 0xd73c, 0x26d3, 0x36f2, 0x0691, 0x16b0, 0x6657, 0x7676, 0x4615, 0x5634,
    0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9, 0xb98a, 0xa9ab, 0x5844, 0x4865, 0x7806, 0x6827,
    0x18c0, 0x08e1, 0x3882, 0x28a3, 0xcb7d, 0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a,
    0x4a75, 0x5a54, 0x6a37, 0x7a16, 0x0af1, 0x1ad0, 0x2ab3, 0x3a92, 0xfd2e, 0xed0f, 0xdd6c, 0xcd4d,
    0xbdaa, 0xad8b, 0x9de8, 0x8dc9, 0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1,
    0xef1f, 0xff3e, 0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8, 0x6e17, 0x7e36, 0x4e55, 0x5e74,
    0x2e93, 0x3eb2, 0x0ed1, 0x1ef0,
};

static uint16_t crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)(crc << 8) ^ crc16_table[((crc >> 8) ^ (unsigned char)buf[i]) & 0xff];
    return crc;
}

unsigned tg_redis_cluster_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        size_t from = (size_t)(open - key) + 1;
        const char *close = memchr(open + 1, '}', len - from);
        if (close != NULL && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) & (TG_REDIS_CLUSTER_SLOTS - 1);
    }
    return crc16(key, len) & (TG_REDIS_CLUSTER_SLOTS - 1);
}

/* ---- helpers -------------------------------------------------------------- */

static void settle(struct tg_redis_cluster *cl);
static void schedule_refresh(struct tg_redis_cluster *cl, ev_tstamp after);

static int64_t ms_until(const struct tg_redis_cluster *cl, ev_tstamp deadline)
{
    double left = (deadline - ev_now(cl->loop)) * 1e3;
    return left >= 1. ? (int64_t)(left + 0.999) : 0;
}

static struct node *owner(const struct tg_redis_cluster *cl, unsigned slot)
{
    unsigned i = slot < TG_REDIS_CLUSTER_SLOTS && cl->map != NULL ? cl->map[slot] : 0;
    return i != 0 ? cl->nodes[i - 1] : NULL;
}

static enum tg_redis_state node_state(const struct node *n)
{
    return n != NULL && n->link != NULL ? tg_redis_state(n->link) : TG_REDIS_DOWN;
}

static bool node_up(const struct node *n)
{
    return node_state(n) == TG_REDIS_UP;
}

static void add_stats(struct tg_redis_stats *sum, const struct tg_redis *link)
{
    struct tg_redis_stats s;
    if (link == NULL)
        return;
    tg_redis_stats(link, &s);
    sum->sent += s.sent;
    sum->replies += s.replies;
    sum->faults += s.faults;
    sum->timeouts += s.timeouts;
    sum->disconnects += s.disconnects;
    sum->refused += s.refused;
    sum->connects += s.connects;
}

static void set_error(struct tg_redis_cluster *cl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_error(struct tg_redis_cluster *cl, const char *fmt, ...)
{
    char msg[ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Once per distinct problem, not once per periodic read. */
    if (strcmp(msg, cl->last_error) != 0)
        tg_log_warn("redis %s: cluster: %s", cl->name, msg);
    snprintf(cl->last_error, sizeof(cl->last_error), "%s", msg);
}

/* "host:port" as the config and redis.c write it: brackets around an IPv6
 * host. Returns false if it does not fit. */
static bool format_address(char *out, const char *host, size_t hlen, long port)
{
    bool v6 = memchr(host, ':', hlen) != NULL;
    if (hlen == 0 || hlen >= HOST_MAX || port < 1 || port > 65535)
        return false;
    int n = snprintf(out, ADDR_MAX, v6 ? "[%.*s]:%ld" : "%.*s:%ld", (int)hlen, host, port);
    return n > 0 && n < ADDR_MAX;
}

/* The host part of a node's address (no brackets), for endpoints a node
 * reports as unknown ("" or "?": the address we reached it on). */
static size_t host_of(const struct node *n, char *host, size_t cap)
{
    int port;
    bool is_unix;
    if (n == NULL || tg_redis_parse_address(n->address, host, cap, &port, &is_unix) < 0)
        return 0;
    return strlen(host);
}

/* ---- state ---------------------------------------------------------------- */

static enum tg_redis_state visible(const struct tg_redis_cluster *cl)
{
    if (!cl->clustered)
        return cl->single != NULL ? tg_redis_state(cl->single) : TG_REDIS_DOWN;
    if (!cl->have_map) {
        if (cl->map_failed)
            return TG_REDIS_DOWN;
        for (size_t i = 0; i < cl->nnodes; i++) {
            enum tg_redis_state s = node_state(cl->nodes[i]);
            if (s == TG_REDIS_CONNECTING || s == TG_REDIS_UP)
                return TG_REDIS_CONNECTING;
        }
        return TG_REDIS_DOWN;
    }
    if (cl->holes > 0)
        return TG_REDIS_DOWN;
    for (size_t i = 0; i < cl->nnodes; i++) {
        struct node *n = cl->nodes[i];
        if (n != NULL && n->slots > 0 && !node_up(n))
            return TG_REDIS_DOWN;
    }
    return TG_REDIS_UP;
}

/* Reports a change of the whole's state to the owner (cluster only: one
 * server's link reports its own). */
static void notify(struct tg_redis_cluster *cl)
{
    enum tg_redis_state now = visible(cl), old = cl->shown;
    if (!cl->clustered || now == old || cl->closing || cl->stopping)
        return;
    cl->shown = now;
    if (now == TG_REDIS_UP)
        tg_log_info("redis %s: cluster: every slot served", cl->name);
    else if (old == TG_REDIS_UP)
        tg_log_warn("redis %s: cluster: some slots unreachable (fail-soft for their keys)",
                    cl->name);
    if (cl->on_state != NULL) {
        cl->depth++;
        cl->on_state(cl->arg, old, now);
        cl->depth--;
    }
}

/* ---- nodes ---------------------------------------------------------------- */

static void on_node_state(void *arg, enum tg_redis_state old, enum tg_redis_state state);

static void node_config(const struct tg_redis_cluster *cl, const struct node *n,
                        struct tg_config_redis *out)
{
    memset(out, 0, sizeof(*out));
    out->address = n->address;
    out->password = cl->password;
    out->db = cl->db;
    out->timeout_ms = cl->timeout_ms;
}

/* The node at `address`, made (and its link started) if new and `create`.
 * NULL if unknown, or it cannot be made. */
static struct node *node_get(struct tg_redis_cluster *cl, const char *address, bool create)
{
    size_t hole = cl->nnodes;
    for (size_t i = 0; i < cl->nnodes; i++) {
        struct node *n = cl->nodes[i];
        if (n == NULL) {
            if (hole == cl->nnodes)
                hole = i;
        } else if (strcmp(n->address, address) == 0) {
            return n;
        }
    }
    if (!create || cl->closing || strlen(address) >= ADDR_MAX)
        return NULL;
    if (hole == cl->nnodes) {
        if (cl->nnodes >= NODES_MAX) {
            set_error(cl, "more than %d nodes: %s ignored", NODES_MAX, address);
            return NULL;
        }
        if (cl->nnodes == cl->cap) {
            size_t cap = cl->cap ? 2 * cl->cap : 8;
            struct node **nodes = realloc(cl->nodes, cap * sizeof(*nodes));
            if (nodes == NULL)
                return NULL;
            cl->nodes = nodes;
            cl->cap = cap;
        }
        cl->nodes[cl->nnodes++] = NULL;
    }
    struct node *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    n->cl = cl;
    n->index = (unsigned)hole;
    snprintf(n->address, sizeof(n->address), "%s", address);
    struct tg_config_redis c;
    node_config(cl, n, &c);
    struct tg_redis_options o = cl->opt;
    o.on_state = on_node_state;
    o.arg = n;
    n->link = tg_redis_new(cl->loop, &c, &o);
    if (n->link == NULL) {
        free(n);
        return NULL;
    }
    cl->nodes[hole] = n;
    return n;
}

/* Only with nothing of ours in flight on it (or from the client's free,
 * after its link failed everything). */
static void node_free(struct tg_redis_cluster *cl, struct node *n)
{
    cl->nodes[n->index] = NULL;
    if (n == cl->refresh_node)
        cl->refresh_node = NULL;
    add_stats(&cl->gone, n->link);
    tg_redis_free(n->link);
    free(n);
}

static void on_node_state(void *arg, enum tg_redis_state old, enum tg_redis_state state)
{
    (void)old;
    struct node *n = arg;
    struct tg_redis_cluster *cl = n->cl;
    if (cl->closing || cl->stopping)
        return;
    if (state == TG_REDIS_UP && !cl->have_map)
        schedule_refresh(cl, 0.);
    else if (state != TG_REDIS_UP && n->slots > 0)
        schedule_refresh(cl, 0.); /* a primary gone: perhaps a failover */
    notify(cl);
}

/* ---- the slot map --------------------------------------------------------- */

static void schedule_refresh(struct tg_redis_cluster *cl, ev_tstamp after)
{
    if (cl->closing || cl->stopping || !cl->clustered)
        return;
    ev_tstamp now = ev_now(cl->loop);
    ev_tstamp earliest = cl->refresh_at + REFRESH_GAP_S - now;
    if (after < earliest)
        after = earliest;
    if (after < 0.)
        after = 0.;
    if (ev_is_active(&cl->refresh_timer)) {
        if (ev_timer_remaining(cl->loop, &cl->refresh_timer) <= after)
            return;
        ev_timer_stop(cl->loop, &cl->refresh_timer);
    }
    ev_timer_set(&cl->refresh_timer, after, 0.);
    ev_timer_start(cl->loop, &cl->refresh_timer);
}

static bool is_int(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_INTEGER;
}

/* One CLUSTER SLOTS entry's primary: {endpoint, port, id, ...}. Writes its
 * address; false if malformed. */
static bool entry_address(const struct tg_redis_cluster *cl, const redisReply *e, char *out)
{
    if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements < 2 || !is_int(e->element[1]))
        return false;
    const redisReply *ep = e->element[0];
    if (ep == NULL || ep->type != REDIS_REPLY_STRING)
        return false;
    char host[HOST_MAX];
    const char *h = ep->str;
    size_t hlen = ep->len;
    if (hlen == 0 || (hlen == 1 && h[0] == '?')) {
        /* Unknown endpoint: the node is where we asked. */
        hlen = host_of(cl->refresh_node, host, sizeof(host));
        h = host;
    }
    return format_address(out, h, hlen, (long)e->element[1]->integer);
}

/* Reads a CLUSTER SLOTS reply into cl->scratch, making nodes for primaries
 * not known yet. Returns false (map unchanged) if the reply makes no
 * sense. */
static bool read_slots(struct tg_redis_cluster *cl, const redisReply *rep)
{
    if (rep->type != REDIS_REPLY_ARRAY) {
        set_error(cl, "CLUSTER SLOTS on %s: %.*s",
                  cl->refresh_node != NULL ? cl->refresh_node->address : "?",
                  rep->type == REDIS_REPLY_ERROR ? (int)(rep->len > 100 ? 100 : rep->len) : 15,
                  rep->type == REDIS_REPLY_ERROR ? rep->str : "not an array");
        return false;
    }
    memset(cl->scratch, 0, MAP_BYTES);
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *r = rep->element[i];
        char address[ADDR_MAX];
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
            !is_int(r->element[0]) || !is_int(r->element[1]) || r->element[0]->integer < 0 ||
            r->element[1]->integer < r->element[0]->integer ||
            r->element[1]->integer >= TG_REDIS_CLUSTER_SLOTS ||
            !entry_address(cl, r->element[2], address)) {
            set_error(cl, "CLUSTER SLOTS: malformed reply");
            return false;
        }
        struct node *n = node_get(cl, address, true);
        if (n == NULL)
            return false;
        for (long long s = r->element[0]->integer; s <= r->element[1]->integer; s++)
            cl->scratch[s] = (uint16_t)(n->index + 1);
    }
    return true;
}

/* Makes the map read the current one, and counts each node's share. */
static void commit_map(struct tg_redis_cluster *cl)
{
    bool changed = !cl->have_map || memcmp(cl->map, cl->scratch, MAP_BYTES) != 0;
    memcpy(cl->map, cl->scratch, MAP_BYTES);
    cl->have_map = true;
    cl->map_failed = false;
    for (size_t i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i] != NULL)
            cl->nodes[i]->slots = 0;
    cl->holes = 0;
    for (unsigned s = 0; s < TG_REDIS_CLUSTER_SLOTS; s++) {
        if (cl->map[s] == 0)
            cl->holes++;
        else
            cl->nodes[cl->map[s] - 1]->slots++;
    }
    if (!changed)
        return;
    unsigned primaries = 0;
    for (size_t i = 0; i < cl->nnodes; i++)
        primaries += cl->nodes[i] != NULL && cl->nodes[i]->slots > 0;
    if (cl->holes > 0)
        tg_log_warn("redis %s: cluster: slot map of %u primaries, %u slots served by none",
                    cl->name, primaries, cl->holes);
    else
        tg_log_info("redis %s: cluster: slot map of %u primaries", cl->name, primaries);
}

static int on_slots_reply(void *arg, const redisReply *reply)
{
    struct tg_redis_cluster *cl = arg;
    cl->refresh_cmd = NULL;
    if (cl->closing || cl->stopping)
        return 0;
    int verdict = 0;
    if (reply == NULL) {
        cl->st.refresh_failures++;
    } else if (!read_slots(cl, reply)) {
        cl->st.refresh_failures++;
        verdict = -1;
    } else {
        cl->st.refreshes++;
        commit_map(cl);
        cl->last_error[0] = '\0';
    }
    if (!cl->have_map && verdict < 0)
        cl->map_failed = true;
    cl->refresh_node = NULL;
    schedule_refresh(cl, visible(cl) == TG_REDIS_UP ? REFRESH_PERIOD_S : REFRESH_DEGRADED_S);
    cl->depth++;
    notify(cl);
    cl->depth--;
    return verdict;
}

/* Frees nodes that serve nothing, are no seed and have nothing in flight
 * (a failed primary, now a replica, or gone). */
static void drop_idle_nodes(struct tg_redis_cluster *cl)
{
    for (size_t i = 0; i < cl->nnodes; i++) {
        struct node *n = cl->nodes[i];
        if (n != NULL && cl->have_map && n->slots == 0 && !n->seed && n->inflight == 0 &&
            n != cl->refresh_node)
            node_free(cl, n);
    }
}

static void on_refresh_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct tg_redis_cluster *cl = w->data;
    if (cl->refresh_cmd != NULL || cl->closing || cl->nnodes == 0)
        return; /* its reply schedules the next */
    drop_idle_nodes(cl);
    /* Ask a node that is up, taking turns: one that serves slots knows
     * the map as well as a seed does. */
    struct node *ask = NULL;
    for (size_t k = 0; k < cl->nnodes && ask == NULL; k++) {
        struct node *n = cl->nodes[(cl->refresh_next + k) % cl->nnodes];
        if (node_up(n))
            ask = n;
    }
    if (ask == NULL) {
        /* Links reconnect by themselves; the first one up asks at once
         * (on_node_state). */
        schedule_refresh(cl, REFRESH_DEGRADED_S);
        cl->depth++;
        notify(cl);
        cl->depth--;
        settle(cl);
        return;
    }
    cl->refresh_next = (ask->index + 1) % (unsigned)cl->nnodes;
    const char *argv[] = {"CLUSTER", "SLOTS"};
    size_t len[] = {7, 5};
    int64_t t = cl->timeout_ms > REFRESH_TIMEOUT_MIN_MS ? cl->timeout_ms : REFRESH_TIMEOUT_MIN_MS;
    cl->refresh_at = ev_now(cl->loop);
    cl->refresh_node = ask;
    cl->refresh_cmd = tg_redis_command(ask->link, 2, argv, len, t, on_slots_reply, cl);
    if (cl->refresh_cmd == NULL) {
        cl->refresh_node = NULL;
        schedule_refresh(cl, REFRESH_DEGRADED_S);
    } else {
        ask->dirty = true;
        tg_redis_flush(ask->link);
    }
    settle(cl);
}

/* ---- routed commands ------------------------------------------------------ */

static int on_cmd_reply(void *arg, const redisReply *reply);
static bool retry_later(struct tg_redis_cluster_cmd *c);

static int on_asking_reply(void *arg, const redisReply *reply)
{
    (void)arg;
    return reply == NULL || reply->type != REDIS_REPLY_ERROR ? 0 : -1;
}

/* Sends c on n's link (after ASKING, for an ASK redirect), with what is
 * left of its deadline. Returns 0, or -1 if it could not be sent. */
static int send_to(struct tg_redis_cluster_cmd *c, struct node *n, bool asking)
{
    struct tg_redis_cluster *cl = c->cl;
    int64_t left = ms_until(cl, c->deadline);
    if (left <= 0 || !node_up(n))
        return -1;
    if (asking) {
        const char *a[] = {"ASKING"};
        size_t l[] = {6};
        if (tg_redis_command(n->link, 1, a, l, left, on_asking_reply, NULL) == NULL)
            return -1;
    }
    c->inner = tg_redis_command(n->link, c->argc, c->argv, c->argvlen, left, on_cmd_reply, c);
    if (c->inner == NULL)
        return -1;
    c->node = n;
    n->inflight++;
    n->dirty = true;
    return 0;
}

/* Ends c: frees it, then hands the reply (or NULL) to its owner. Returns
 * the owner's verdict. */
static int deliver(struct tg_redis_cluster_cmd *c, const redisReply *reply)
{
    struct tg_redis_cluster *cl = c->cl;
    tg_redis_reply_cb cb = c->cb;
    void *arg = c->arg;
    free(c);
    cl->depth++;
    int verdict = cb(arg, reply);
    cl->depth--;
    return verdict;
}

/* Parses "MOVED 3999 127.0.0.1:6381" or "ASK ..." (after the word): the
 * slot and the node's address; an empty endpoint is `from`'s host. */
static bool parse_redirect(const char *s, size_t len, const struct node *from, unsigned *slot,
                           char *address)
{
    char buf[ADDR_MAX + 16];
    if (len >= sizeof(buf))
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    unsigned long v = strtoul(buf, &end, 10);
    if (end == buf || *end != ' ' || v >= TG_REDIS_CLUSTER_SLOTS)
        return false;
    const char *ep = end + 1;
    const char *colon = strrchr(ep, ':');
    if (colon == NULL)
        return false;
    char *pend;
    long port = strtol(colon + 1, &pend, 10);
    if (*pend != '\0' || pend == colon + 1)
        return false;
    char host[HOST_MAX];
    const char *h = ep;
    size_t hlen = (size_t)(colon - ep);
    if (hlen > 1 && h[0] == '[' && h[hlen - 1] == ']')
        h++, hlen -= 2;
    if (hlen == 0 || (hlen == 1 && h[0] == '?')) {
        hlen = host_of(from, host, sizeof(host));
        h = host;
    }
    *slot = (unsigned)v;
    return format_address(address, h, hlen, port);
}

static bool starts(const redisReply *r, const char *word, size_t n)
{
    return r->len > n && memcmp(r->str, word, n) == 0 && r->str[n] == ' ';
}

/* An error reply whose code (first word) is `code`. */
static bool is_code(const redisReply *r, const char *code)
{
    size_t n = strlen(code);
    return r->len >= n && memcmp(r->str, code, n) == 0 && (r->len == n || r->str[n] == ' ');
}

/* A MOVED or ASK: follow it, or give up (NULL to the owner). */
static int redirect(struct tg_redis_cluster_cmd *c, struct node *from, const redisReply *reply,
                    bool ask)
{
    struct tg_redis_cluster *cl = c->cl;
    size_t skip = ask ? 4 : 6;
    unsigned slot;
    char address[ADDR_MAX];
    if (!parse_redirect(reply->str + skip, reply->len - skip, from, &slot, address))
        return deliver(c, reply); /* an error reply the owner judges */
    struct node *to = node_get(cl, address, true);
    if (ask) {
        cl->st.asked++;
    } else {
        cl->st.moved++;
        if (to != NULL && cl->map[slot] != to->index + 1) {
            struct node *old = owner(cl, slot);
            if (old != NULL)
                old->slots--;
            else
                cl->holes--;
            cl->map[slot] = (uint16_t)(to->index + 1);
            to->slots++;
        }
        schedule_refresh(cl, 0.); /* the rest of the migration, at once */
    }
    if (to == NULL || c->redirects >= MAX_REDIRECTS || send_to(c, to, ask) < 0) {
        deliver(c, NULL);
        return 0; /* the node answered well: not its fault */
    }
    c->redirects++;
    return 0;
}

static int on_cmd_reply(void *arg, const redisReply *reply)
{
    struct tg_redis_cluster_cmd *c = arg;
    struct tg_redis_cluster *cl = c->cl;
    struct node *from = c->node;
    c->inner = NULL;
    c->node = NULL;
    from->inflight--;
    int verdict;
    cl->depth++;
    if (reply == NULL) {
        /* Deadline or lost connection: the command may have run, so it is
         * not sent again. The map may have changed (a failover). */
        schedule_refresh(cl, 0.);
        verdict = deliver(c, NULL);
    } else if (reply->type != REDIS_REPLY_ERROR || cl->closing || cl->stopping) {
        verdict = deliver(c, reply);
    } else if (starts(reply, "MOVED", 5)) {
        verdict = redirect(c, from, reply, false);
    } else if (starts(reply, "ASK", 3)) {
        verdict = redirect(c, from, reply, true);
    } else if (is_code(reply, "TRYAGAIN") && retry_later(c)) {
        /* Keys of a slot on both sides of a migration: again shortly. */
        cl->st.tryagain++;
        verdict = 0;
    } else if (is_code(reply, "CLUSTERDOWN")) {
        /* The cluster's state, not this link's fault (it answered at
         * once, nobody waited): the owner hears the error, the link's
         * breaker does not count it, and the map is read again (a
         * failover is under way). */
        schedule_refresh(cl, 0.);
        deliver(c, reply);
        verdict = 0;
    } else {
        verdict = deliver(c, reply);
    }
    cl->depth--;
    settle(cl);
    return verdict;
}

static void arm_retry_timer(struct tg_redis_cluster *cl)
{
    ev_tstamp first = 0.;
    struct tg_list *head = &cl->retries;
    for (struct tg_list *n = head->next; n != head; n = n->next) {
        ev_tstamp at = tg_list_entry(n, struct tg_redis_cluster_cmd, retry)->retry_at;
        if (first == 0. || at < first)
            first = at;
    }
    ev_timer_stop(cl->loop, &cl->retry_timer);
    if (first == 0.)
        return;
    ev_tstamp after = first - ev_now(cl->loop);
    ev_timer_set(&cl->retry_timer, after > 0. ? after : 0., 0.);
    ev_timer_start(cl->loop, &cl->retry_timer);
}

/* Parks c after a TRYAGAIN, to be sent again after a delay that doubles
 * with each one. False when its deadline would pass first. */
static bool retry_later(struct tg_redis_cluster_cmd *c)
{
    struct tg_redis_cluster *cl = c->cl;
    ev_tstamp delay = TRYAGAIN_DELAY_S;
    for (unsigned i = 0; i < c->tries && delay < TRYAGAIN_DELAY_MAX_S; i++)
        delay *= 2;
    if (delay > TRYAGAIN_DELAY_MAX_S)
        delay = TRYAGAIN_DELAY_MAX_S;
    ev_tstamp at = ev_now(cl->loop) + delay;
    if (at >= c->deadline || cl->closing || cl->stopping)
        return false;
    c->tries++;
    c->retry_at = at;
    tg_list_push_back(&cl->retries, &c->retry);
    arm_retry_timer(cl);
    return true;
}

static void on_retry_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct tg_redis_cluster *cl = w->data;
    struct tg_list batch;
    tg_list_init(&batch);
    /* Those due now; a retry that meets TRYAGAIN again waits anew. */
    ev_tstamp now = ev_now(loop);
    struct tg_list *head = &cl->retries;
    for (struct tg_list *n = head->next, *next; n != head; n = next) {
        next = n->next;
        if (tg_list_entry(n, struct tg_redis_cluster_cmd, retry)->retry_at <= now + 1e-4) {
            tg_list_remove(n);
            tg_list_push_back(&batch, n);
        }
    }
    arm_retry_timer(cl);
    cl->depth++;
    while (!tg_list_empty(&batch)) {
        struct tg_redis_cluster_cmd *c =
            tg_list_entry(tg_list_first(&batch), struct tg_redis_cluster_cmd, retry);
        tg_list_remove(&c->retry);
        if (cl->closing || cl->stopping || send_to(c, owner(cl, c->slot), false) < 0)
            deliver(c, NULL);
    }
    cl->depth--;
    tg_redis_cluster_flush(cl);
    settle(cl);
}

struct tg_redis_cluster_cmd *tg_redis_cluster_command(struct tg_redis_cluster *cl, unsigned slot,
                                                      int argc, const char *const *argv,
                                                      const size_t *argvlen, int64_t timeout_ms,
                                                      tg_redis_reply_cb cb, void *arg)
{
    if (!cl->clustered) {
        /* The link's own handle stands for ours: cancel knows the mode. */
        if (cl->single == NULL)
            return NULL;
        return (struct tg_redis_cluster_cmd *)tg_redis_command(cl->single, argc, argv, argvlen,
                                                               timeout_ms, cb, arg);
    }
    if (cl->closing || argc < 1 || cb == NULL)
        return NULL;
    struct node *n = owner(cl, slot);
    if (!node_up(n))
        return NULL;
    size_t bytes = 0;
    for (int i = 0; i < argc; i++)
        bytes += argvlen[i];
    struct tg_redis_cluster_cmd *c =
        malloc(sizeof(*c) + (size_t)argc * (sizeof(char *) + sizeof(size_t)) + bytes);
    if (c == NULL)
        return NULL;
    memset(c, 0, sizeof(*c));
    c->cl = cl;
    c->cb = cb;
    c->arg = arg;
    c->slot = slot;
    c->deadline = ev_now(cl->loop) + (double)(timeout_ms > 0 ? timeout_ms : cl->timeout_ms) / 1e3;
    c->argc = argc;
    c->argv = (const char **)(c + 1);
    c->argvlen = (size_t *)(c->argv + argc);
    char *p = (char *)(c->argvlen + argc);
    for (int i = 0; i < argc; i++) {
        memcpy(p, argv[i], argvlen[i]);
        c->argv[i] = p;
        c->argvlen[i] = argvlen[i];
        p += argvlen[i];
    }
    if (send_to(c, n, false) < 0) {
        free(c);
        return NULL;
    }
    return c;
}

void tg_redis_cluster_cancel(struct tg_redis_cluster *cl, struct tg_redis_cluster_cmd *c)
{
    if (c == NULL)
        return;
    if (!cl->clustered) {
        tg_redis_cancel((struct tg_redis_cmd *)c);
        return;
    }
    if (tg_list_linked(&c->retry)) {
        tg_list_remove(&c->retry);
    } else if (c->inner != NULL) {
        tg_redis_cancel(c->inner);
        c->node->inflight--;
    }
    free(c);
}

void tg_redis_cluster_flush(struct tg_redis_cluster *cl)
{
    if (!cl->clustered) {
        if (cl->single != NULL)
            tg_redis_flush(cl->single);
        return;
    }
    cl->depth++;
    for (size_t i = 0; i < cl->nnodes; i++) {
        struct node *n = cl->nodes[i];
        if (n != NULL && n->dirty) {
            n->dirty = false;
            tg_redis_flush(n->link);
        }
    }
    cl->depth--;
    settle(cl);
}

/* ---- life cycle ----------------------------------------------------------- */

static void free_config(struct tg_redis_cluster *cl)
{
    for (size_t i = 0; i < cl->nseeds; i++)
        free(cl->seeds[i]);
    free(cl->seeds);
    free(cl->address);
    free(cl->password);
    cl->seeds = NULL;
    cl->nseeds = 0;
    cl->address = cl->password = NULL;
}

static int copy_config(struct tg_redis_cluster *cl, const struct tg_config_redis *cfg)
{
    free_config(cl);
    cl->clustered = cfg->ncluster > 0;
    cl->db = cfg->db;
    cl->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 50;
    if (cfg->password != NULL && (cl->password = strdup(cfg->password)) == NULL)
        return -1;
    if (cfg->address != NULL && (cl->address = strdup(cfg->address)) == NULL)
        return -1;
    if (cfg->ncluster > 0) {
        if ((cl->seeds = calloc(cfg->ncluster, sizeof(*cl->seeds))) == NULL)
            return -1;
        for (; cl->nseeds < cfg->ncluster; cl->nseeds++)
            if ((cl->seeds[cl->nseeds] = strdup(cfg->cluster[cl->nseeds])) == NULL)
                return -1;
    }
    return 0;
}

/* Starts the links of the current config: the one server's, or the
 * seeds' (and the first map read). */
static int start(struct tg_redis_cluster *cl, const struct tg_config_redis *cfg)
{
    cl->shown = TG_REDIS_CONNECTING;
    if (!cl->clustered) {
        struct tg_redis_options o = cl->opt;
        o.on_state = cl->on_state;
        o.arg = cl->arg;
        cl->single = tg_redis_new(cl->loop, cfg, &o);
        return cl->single != NULL ? 0 : -1;
    }
    cl->map = calloc(TG_REDIS_CLUSTER_SLOTS, sizeof(*cl->map));
    cl->scratch = calloc(TG_REDIS_CLUSTER_SLOTS, sizeof(*cl->scratch));
    if (cl->map == NULL || cl->scratch == NULL)
        return -1;
    for (size_t i = 0; i < cl->nseeds; i++) {
        struct node *n = node_get(cl, cl->seeds[i], true);
        if (n == NULL)
            return -1;
        n->seed = true;
    }
    schedule_refresh(cl, 0.);
    return 0;
}

/* Fails everything in flight (callbacks with NULL) and frees every link
 * and node: back to no map. */
static void stop(struct tg_redis_cluster *cl)
{
    ev_timer_stop(cl->loop, &cl->refresh_timer);
    ev_timer_stop(cl->loop, &cl->retry_timer);
    cl->stopping = true;
    cl->depth++;
    /* Their links call our commands back with NULL: owners hear now. */
    for (size_t i = 0; i < cl->nnodes; i++) {
        struct node *n = cl->nodes[i];
        if (n != NULL) {
            struct tg_redis *link = n->link;
            add_stats(&cl->gone, link);
            n->link = NULL;
            tg_redis_free(link);
        }
    }
    while (!tg_list_empty(&cl->retries)) {
        struct tg_redis_cluster_cmd *c =
            tg_list_entry(tg_list_first(&cl->retries), struct tg_redis_cluster_cmd, retry);
        tg_list_remove(&c->retry);
        deliver(c, NULL);
    }
    cl->depth--;
    for (size_t i = 0; i < cl->nnodes; i++) {
        free(cl->nodes[i]);
        cl->nodes[i] = NULL;
    }
    cl->nnodes = 0;
    add_stats(&cl->gone, cl->single);
    struct tg_redis *single = cl->single;
    cl->single = NULL;
    tg_redis_free(single);
    cl->stopping = false;
    cl->refresh_cmd = NULL;
    cl->refresh_node = NULL;
    cl->have_map = cl->map_failed = false;
    cl->holes = 0;
    free(cl->map);
    free(cl->scratch);
    cl->map = cl->scratch = NULL;
}

static void destroy(struct tg_redis_cluster *cl)
{
    free(cl->nodes);
    free_config(cl);
    free(cl);
}

static void settle(struct tg_redis_cluster *cl)
{
    if (cl->depth == 0 && cl->want_free)
        destroy(cl);
}

struct tg_redis_cluster *tg_redis_cluster_new(struct ev_loop *loop,
                                              const struct tg_config_redis *cfg,
                                              const struct tg_redis_options *opt)
{
    struct tg_redis_cluster *cl = calloc(1, sizeof(*cl));
    if (cl == NULL)
        return NULL;
    cl->loop = loop;
    if (opt != NULL)
        cl->opt = *opt;
    snprintf(cl->name, sizeof(cl->name), "%s", cl->opt.name != NULL ? cl->opt.name : "redis");
    cl->opt.name = cl->name;
    cl->on_state = cl->opt.on_state;
    cl->arg = cl->opt.arg;
    tg_list_init(&cl->retries);
    ev_timer_init(&cl->refresh_timer, on_refresh_timer, 0., 0.);
    cl->refresh_timer.data = cl;
    ev_timer_init(&cl->retry_timer, on_retry_timer, 0., 0.);
    cl->retry_timer.data = cl;
    cl->refresh_at = -REFRESH_GAP_S;
    if (copy_config(cl, cfg) < 0 || start(cl, cfg) < 0) {
        stop(cl);
        destroy(cl);
        return NULL;
    }
    return cl;
}

static bool same_str(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

static bool same_target(const struct tg_redis_cluster *cl, const struct tg_config_redis *cfg)
{
    if ((cfg->ncluster > 0) != cl->clustered || !same_str(cfg->password, cl->password) ||
        cfg->db != cl->db)
        return false;
    if (!cl->clustered)
        return true; /* the link compares its address itself */
    if (cfg->ncluster != cl->nseeds)
        return false;
    for (size_t i = 0; i < cl->nseeds; i++)
        if (strcmp(cfg->cluster[i], cl->seeds[i]) != 0)
            return false;
    return true;
}

bool tg_redis_cluster_configure(struct tg_redis_cluster *cl, const struct tg_config_redis *cfg)
{
    if (cl->closing)
        return false;
    if (same_target(cl, cfg)) {
        cl->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 50;
        if (!cl->clustered)
            return tg_redis_configure(cl->single, cfg);
        for (size_t i = 0; i < cl->nnodes; i++) {
            struct node *n = cl->nodes[i];
            struct tg_config_redis c;
            if (n == NULL)
                continue;
            node_config(cl, n, &c);
            tg_redis_configure(n->link, &c); /* the timeout only */
        }
        return false;
    }
    enum tg_redis_state old = visible(cl);
    stop(cl);
    if (copy_config(cl, cfg) < 0 || start(cl, cfg) < 0) {
        tg_log_error("redis %s: out of memory applying the new config", cl->name);
        stop(cl);
    }
    cl->shown = old;
    notify(cl);
    return true;
}

void tg_redis_cluster_free(struct tg_redis_cluster *cl)
{
    if (cl == NULL || cl->closing)
        return;
    cl->closing = true;
    cl->on_state = NULL;
    stop(cl);
    if (cl->depth > 0) {
        cl->want_free = true;
        return;
    }
    destroy(cl);
}

/* ---- queries -------------------------------------------------------------- */

const struct tg_redis *tg_redis_cluster_single(const struct tg_redis_cluster *cl)
{
    return cl->clustered ? NULL : cl->single;
}

bool tg_redis_cluster_enabled(const struct tg_redis_cluster *cl)
{
    return cl->clustered;
}

unsigned tg_redis_cluster_slot(const struct tg_redis_cluster *cl, const char *key, size_t len)
{
    return cl->clustered ? tg_redis_cluster_key_slot(key, len) : 0;
}

enum tg_redis_state tg_redis_cluster_state(const struct tg_redis_cluster *cl)
{
    return visible(cl);
}

enum tg_redis_state tg_redis_cluster_slot_state(const struct tg_redis_cluster *cl, unsigned slot)
{
    if (!cl->clustered)
        return cl->single != NULL ? tg_redis_state(cl->single) : TG_REDIS_DOWN;
    if (!cl->have_map)
        return visible(cl);
    struct node *n = owner(cl, slot);
    return n != NULL ? tg_redis_state(n->link) : TG_REDIS_DOWN;
}

int64_t tg_redis_cluster_timeout_ms(const struct tg_redis_cluster *cl)
{
    return cl->timeout_ms;
}

void tg_redis_cluster_stats(const struct tg_redis_cluster *cl, struct tg_redis_cluster_stats *out)
{
    *out = cl->st;
    out->links = cl->gone;
    add_stats(&out->links, cl->single);
    for (size_t i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i] != NULL)
            add_stats(&out->links, cl->nodes[i]->link);
}

size_t tg_redis_cluster_nodes(const struct tg_redis_cluster *cl, struct tg_redis_cluster_node *out,
                              size_t cap)
{
    if (!cl->clustered) {
        if (cap > 0)
            out[0] = (struct tg_redis_cluster_node){cl->address != NULL ? cl->address : "",
                                                    visible(cl), TG_REDIS_CLUSTER_SLOTS};
        return 1;
    }
    size_t k = 0;
    for (size_t i = 0; i < cl->nnodes; i++) {
        const struct node *n = cl->nodes[i];
        if (n == NULL)
            continue;
        if (k < cap)
            out[k] = (struct tg_redis_cluster_node){n->address, node_state(n), n->slots};
        k++;
    }
    return k;
}

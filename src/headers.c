/* Request and response head rewriting, request ids.
 *
 * Deliberately not here: deciding *whether* to forward (proxy.c) or which
 * client address to trust (the request carries the verdict). */
#include "headers.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "access.h"
#include "buf.h"
#include "config.h"
#include "conn.h"
#include "http1.h"
#include "proxy.h"
#include "worker.h"

/* ---- small appenders ------------------------------------------------------ */

struct out {
    struct tg_buf *b;
    bool overflow;
};

static inline void put(struct out *o, const char *p, size_t n)
{
    if (o->overflow || tg_buf_room(o->b) < n) {
        o->overflow = true;
        return;
    }
    memcpy(o->b->data + o->b->end, p, n);
    o->b->end += n;
}

/* Inline, so a literal's length is folded at compile time. */
static inline __attribute__((always_inline)) void puts_(struct out *o, const char *s)
{
    put(o, s, __builtin_strlen(s));
}

static void put_str(struct out *o, struct tg_str s)
{
    put(o, s.p, s.n);
}

static void putf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct out *o, const char *fmt, ...)
{
    if (o->overflow)
        return;
    va_list ap;
    va_start(ap, fmt);
    size_t room = tg_buf_room(o->b);
    int n = vsnprintf(o->b->data + o->b->end, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room) {
        o->overflow = true;
        return;
    }
    o->b->end += (size_t)n;
}

static void put_header(struct out *o, const struct tg_http_header *h)
{
    put_str(o, h->name);
    put(o, ": ", 2);
    put_str(o, h->value);
    put(o, "\r\n", 2);
}

/* ---- classification -------------------------------------------------------- */

enum hdr_kind {
    HDR_OTHER = 0,
    HDR_HOP,        /* hop-by-hop: never forwarded */
    HDR_HOST,
    HDR_UPGRADE,
    HDR_XFF,
    HDR_XF_OTHER,   /* X-Forwarded-Proto/Host, X-Real-IP: we set them */
    HDR_FORWARDED,
    HDR_REQUEST_ID,
    HDR_SERVER,     /* Server, X-Powered-By: removed from responses */
    HDR_LENGTH,     /* Content-Length: frames the body, always kept */
};

static enum hdr_kind classify(struct tg_str n)
{
    switch (n.n) {
    case 2:
        return tg_http_name_eq(n, "te") ? HDR_HOP : HDR_OTHER;
    case 4:
        return tg_http_name_eq(n, "host") ? HDR_HOST : HDR_OTHER;
    case 6:
        return tg_http_name_eq(n, "server") ? HDR_SERVER : HDR_OTHER;
    case 7:
        if (tg_http_name_eq(n, "upgrade"))
            return HDR_UPGRADE;
        return tg_http_name_eq(n, "trailer") ? HDR_HOP : HDR_OTHER;
    case 9:
        if (tg_http_name_eq(n, "x-real-ip"))
            return HDR_XF_OTHER;
        if (tg_http_name_eq(n, "forwarded"))
            return HDR_FORWARDED;
        return HDR_OTHER;
    case 10:
        if (tg_http_name_eq(n, "connection") || tg_http_name_eq(n, "keep-alive"))
            return HDR_HOP;
        return HDR_OTHER;
    case 12:
        if (tg_http_name_eq(n, "x-request-id"))
            return HDR_REQUEST_ID;
        return tg_http_name_eq(n, "x-powered-by") ? HDR_SERVER : HDR_OTHER;
    case 14:
        return tg_http_name_eq(n, "content-length") ? HDR_LENGTH : HDR_OTHER;
    case 15:
        if (tg_http_name_eq(n, "x-forwarded-for"))
            return HDR_XFF;
        return HDR_OTHER;
    case 16:
        if (tg_http_name_eq(n, "proxy-connection") || tg_http_name_eq(n, "x-forwarded-host"))
            return tg_http_name_eq(n, "x-forwarded-host") ? HDR_XF_OTHER : HDR_HOP;
        return HDR_OTHER;
    case 17:
        if (tg_http_name_eq(n, "transfer-encoding"))
            return HDR_HOP;
        if (tg_http_name_eq(n, "x-forwarded-proto"))
            return HDR_XF_OTHER;
        return HDR_OTHER;
    default:
        return HDR_OTHER;
    }
}

/* The names a Connection header lists are hop-by-hop too (RFC 9110 7.6.1).
 * At most this many are honoured; more is a sign of abuse, and the rest are
 * simply forwarded. */
#define MAX_CONN_TOKENS 16

struct conn_tokens {
    struct tg_str tok[MAX_CONN_TOKENS];
    size_t n;
};

static void collect_connection_tokens(const struct tg_http_header *hs, size_t nh,
                                      struct conn_tokens *ct)
{
    ct->n = 0;
    for (size_t i = 0; i < nh; i++) {
        if (!tg_http_name_eq(hs[i].name, "connection"))
            continue;
        const char *p = hs[i].value.p, *end = p + hs[i].value.n;
        while (p < end && ct->n < MAX_CONN_TOKENS) {
            while (p < end && (*p == ',' || *p == ' ' || *p == '\t'))
                p++;
            const char *s = p;
            while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                p++;
            if (p > s)
                ct->tok[ct->n++] = tg_str_make(s, (size_t)(p - s));
        }
    }
}

static bool listed_in_connection(const struct conn_tokens *ct, struct tg_str name)
{
    for (size_t i = 0; i < ct->n; i++)
        if (ct->tok[i].n == name.n && strncasecmp(ct->tok[i].p, name.p, name.n) == 0)
            return true;
    return false;
}

static void put_limiter_headers(struct out *o, const struct tg_request *req)
{
    if (!req->lim.active || o->overflow)
        return;
    size_t n = tg_limiter_headers(&req->lim, o->b->data + o->b->end, tg_buf_room(o->b));
    o->b->end += n;
}

/* The header rules that apply to a request: its route's, or the global
 * ones before a route is known. */
static const struct tg_config_headers *rules_of(const struct tg_request *req)
{
    if (req->route != NULL && req->route->headers != NULL)
        return req->route->headers;
    return &req->wcfg->config->headers;
}

static bool name_listed(const struct tg_str *names, size_t n, struct tg_str name)
{
    for (size_t i = 0; i < n; i++)
        if (names[i].n == name.n && strncasecmp(names[i].p, name.p, name.n) == 0)
            return true;
    return false;
}

static bool name_added(const struct tg_config_header *h, size_t n, struct tg_str name)
{
    for (size_t i = 0; i < n; i++)
        if (h[i].name_len == name.n && strncasecmp(h[i].name, name.p, name.n) == 0)
            return true;
    return false;
}

static void put_config_header(struct out *o, const struct tg_config_header *h)
{
    put(o, h->name, h->name_len);
    put(o, ": ", 2);
    put(o, h->value, h->value_len);
    put(o, "\r\n", 2);
}

/* Security and other configured response headers: those the backend set
 * stay unless `override` (then they were dropped while copying). */
static void put_response_rules(struct out *o, const struct tg_request *req,
                               const struct tg_http_header *backend, size_t nbackend)
{
    const struct tg_config_headers *rules = rules_of(req);
    bool may_collide = false;
    for (size_t k = 0; k < nbackend && !rules->override && !may_collide; k++)
        may_collide = (rules->add_name_lengths >> (backend[k].name.n & 63)) & 1;
    if (!may_collide) {
        /* The common case: the backend set none of them. */
        if (rules->add_block[req->conn->tls].n > 0)
            put_str(o, rules->add_block[req->conn->tls]);
        return;
    }
    for (size_t i = 0; i < rules->nadd; i++) {
        const struct tg_config_header *h = &rules->add[i];
        if (h->https_only && !req->conn->tls)
            continue;
        bool present = false;
        for (size_t k = 0; k < nbackend && !rules->override && !present; k++)
            present = h->name_len == backend[k].name.n &&
                      strncasecmp(h->name, backend[k].name.p, backend[k].name.n) == 0;
        if (!present)
            put_config_header(o, h);
    }
}

/* ---- request head ------------------------------------------------------------ */

int tg_headers_build_request(struct tg_request *req, struct tg_buf *b)
{
    const struct tg_http1_request *h = &req->head;
    struct out o = {b, false};
    struct conn_tokens ct;
    collect_connection_tokens(h->headers, h->nheaders, &ct);

    put_str(&o, h->method);
    put(&o, " ", 1);
    put(&o, req->path, req->path_len);
    /* The client's Host, unless headers.request.set replaces it. */
    const struct tg_config_headers *rules = rules_of(req);
    const struct tg_config_header *host_rule = NULL;
    for (size_t i = 0; i < rules->nreq_set; i++)
        if (rules->req_set[i].name_len == 4 && strncasecmp(rules->req_set[i].name, "host", 4) == 0)
            host_rule = &rules->req_set[i];
    puts_(&o, " HTTP/1.1\r\n");
    if (host_rule != NULL) {
        put_config_header(&o, host_rule);
    } else {
        puts_(&o, "Host: ");
        put(&o, req->host, req->host_len);
        put(&o, "\r\n", 2);
    }

    const char *subject_header = req->conn->lcfg->client_subject_header;
    const char *geo_header = req->wcfg->config->geoip_header;
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct tg_http_header *hd = &h->headers[i];
        enum hdr_kind k = classify(hd->name);
        /* Configured removals and replacements, and the country header
         * (ours alone: a client's copy would lie about where it is). */
        if (name_listed(rules->req_remove, rules->nreq_remove, hd->name) ||
            name_added(rules->req_set, rules->nreq_set, hd->name) ||
            (geo_header != NULL && hd->name.n == strlen(geo_header) &&
             strncasecmp(hd->name.p, geo_header, hd->name.n) == 0))
            continue;
        /* The certificate subject header is ours alone: a client's own
         * copy would impersonate someone else. */
        if (subject_header != NULL && hd->name.n == strlen(subject_header) &&
            strncasecmp(hd->name.p, subject_header, hd->name.n) == 0)
            continue;
        switch (k) {
        case HDR_LENGTH:
            /* Never hop-by-hop, whatever Connection lists: the body is
             * forwarded by this length. */
            put_header(&o, hd);
            break;
        case HDR_OTHER:
        case HDR_SERVER:
            if (ct.n > 0 && listed_in_connection(&ct, hd->name))
                continue;
            put_header(&o, hd);
            break;
        case HDR_XFF:
        case HDR_FORWARDED:
            /* Replaced below by the chain as identified: the client, then
             * only trusted hops. What a client wrote left of that (or
             * anything an untrusted peer claims) never reaches the
             * backend, so a backend that reads the left-most address gets
             * the same client as our limits and rules. */
            break;
        default:
            break; /* hop-by-hop or regenerated below */
        }
    }
    if (req->req_framing == TG_HTTP1_BODY_CHUNKED)
        puts_(&o, "Transfer-Encoding: chunked\r\n");
    if (req->upgrade) {
        for (size_t i = 0; i < h->nheaders; i++) {
            if (classify(h->headers[i].name) == HDR_UPGRADE) {
                put_header(&o, &h->headers[i]);
                break;
            }
        }
        puts_(&o, "Connection: upgrade\r\n");
    }

    char peer[TG_ADDR_STRLEN];
    size_t peer_len = tg_addr_format(&req->conn->peer, peer, sizeof(peer));
    puts_(&o, "X-Forwarded-For: ");
    const struct tg_client_chain *chain = req->chain;
    if (chain != NULL && chain->source != TG_CHAIN_PEER) {
        char a[TG_ADDR_STRLEN];
        put(&o, a, tg_addr_format(&chain->client, a, sizeof(a)));
        put(&o, ", ", 2);
        for (size_t i = 0; i < chain->nhops; i++) {
            put(&o, a, tg_addr_format(&chain->hops[i], a, sizeof(a)));
            put(&o, ", ", 2);
        }
    }
    put(&o, peer, peer_len);
    puts_(&o, "\r\nX-Real-IP: ");
    if (tg_addr_equal(&req->client, &req->conn->peer)) {
        put(&o, peer, peer_len);
    } else {
        char client[TG_ADDR_STRLEN];
        put(&o, client, tg_addr_format(&req->client, client, sizeof(client)));
    }
    puts_(&o, req->conn->tls ? "\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: "
                             : "\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ");
    put(&o, req->host, req->host_len);
    puts_(&o, "\r\nX-Request-Id: ");
    put(&o, req->request_id, req->request_id_len);
    put(&o, "\r\n", 2);
    if (subject_header != NULL && req->client_subject != NULL) {
        puts_(&o, subject_header);
        put(&o, ": ", 2);
        puts_(&o, req->client_subject);
        put(&o, "\r\n", 2);
    }
    if (geo_header != NULL) {
        puts_(&o, geo_header);
        put(&o, ": ", 2);
        put(&o, req->country[0] ? req->country : TG_GEOIP_UNKNOWN, 2);
        put(&o, "\r\n", 2);
    }
    for (size_t i = 0; i < rules->nreq_set; i++)
        if (&rules->req_set[i] != host_rule)
            put_config_header(&o, &rules->req_set[i]);
    put(&o, "\r\n", 2);
    return o.overflow ? -1 : 0;
}

/* ---- response heads ------------------------------------------------------------ */

static void put_status_line(struct out *o, int status, struct tg_str reason)
{
    char line[13] = "HTTP/1.1 000 ";
    line[9] = (char)('0' + status / 100 % 10);
    line[10] = (char)('0' + status / 10 % 10);
    line[11] = (char)('0' + status % 10);
    put(o, line, sizeof(line));
    if (reason.n > 0)
        put_str(o, reason);
    else
        puts_(o, tg_http_reason(status));
    put(o, "\r\n", 2);
}

/* Copies the backend's end-to-end headers, minus what the rules remove
 * (headers.remove; with override, the ones we add ourselves). */
static void put_response_headers(struct out *o, const struct tg_request *req,
                                 const struct tg_http1_response *r, bool keep_upgrade)
{
    const struct tg_config_headers *rules = rules_of(req);
    struct conn_tokens ct;
    collect_connection_tokens(r->headers, r->nheaders, &ct);
    for (size_t i = 0; i < r->nheaders; i++) {
        const struct tg_http_header *hd = &r->headers[i];
        enum hdr_kind k = classify(hd->name);
        if ((k == HDR_UPGRADE && keep_upgrade) || k == HDR_LENGTH) {
            /* Content-Length frames the body we forward: kept whatever the
             * backend's Connection lists. */
            put_header(o, hd);
            continue;
        }
        if (k != HDR_OTHER && k != HDR_XFF && k != HDR_XF_OTHER && k != HDR_FORWARDED &&
            k != HDR_SERVER)
            continue; /* hop-by-hop, X-Request-Id */
        if (ct.n > 0 && listed_in_connection(&ct, hd->name))
            continue;
        if (name_listed(rules->remove, rules->nremove, hd->name))
            continue;
        if (rules->override && name_added(rules->add, rules->nadd, hd->name))
            continue;
        put_header(o, hd);
    }
}

int tg_headers_build_interim(struct tg_request *req, struct tg_buf *b)
{
    struct out o = {b, false};
    put_status_line(&o, req->resp.status, req->resp.reason);
    put_response_headers(&o, req, &req->resp, false);
    put(&o, "\r\n", 2);
    return o.overflow ? -1 : 0;
}

int tg_headers_build_response(struct tg_request *req, struct tg_buf *b)
{
    const struct tg_http1_response *r = &req->resp;
    struct out o = {b, false};
    bool upgrade = r->status == 101;
    put_status_line(&o, r->status, r->reason);
    put_response_headers(&o, req, r, upgrade);
    put_response_rules(&o, req, r->headers, r->nheaders);
    if (upgrade)
        puts_(&o, "Connection: upgrade\r\n");
    if (req->resp_framing == TG_HTTP1_BODY_CHUNKED && !req->resp_dechunk)
        puts_(&o, "Transfer-Encoding: chunked\r\n");
    puts_(&o, "X-Request-Id: ");
    put(&o, req->request_id, req->request_id_len);
    put(&o, "\r\n", 2);
    put_limiter_headers(&o, req);
    if (!upgrade) {
        if (req->resp_close_client)
            puts_(&o, "Connection: close\r\n");
        else if (req->minor_version == 0)
            puts_(&o, "Connection: keep-alive\r\n");
    }
    put(&o, "\r\n", 2);
    return o.overflow ? -1 : 0;
}

int tg_headers_build_local(struct tg_request *req, struct tg_buf *b, int status,
                           const char *content_type, const char *body,
                           size_t body_len, bool close)
{
    struct out o = {b, false};
    putf(&o, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n",
         status, tg_http_reason(status), content_type, body_len);
    if (req->request_id[0] != '\0') {
        puts_(&o, "X-Request-Id: ");
        puts_(&o, req->request_id);
        put(&o, "\r\n", 2);
    }
    if (req->extra_headers != NULL)
        puts_(&o, req->extra_headers);
    put_limiter_headers(&o, req);
    if (req->wcfg != NULL)
        put_response_rules(&o, req, NULL, 0);
    if (close)
        puts_(&o, "Connection: close\r\n");
    else if (req->minor_version == 0)
        puts_(&o, "Connection: keep-alive\r\n");
    put(&o, "\r\n", 2);
    if (req->method_id != TG_HTTP_HEAD)
        put(&o, body, body_len);
    return o.overflow ? -1 : 0;
}

/* ---- request ids ------------------------------------------------------------------ */

/* xoshiro-style generator per thread, seeded from the kernel: ids are
 * unpredictable enough not to leak traffic volume and unique in practice. */
static _Thread_local uint64_t rid_state[2];

static uint64_t rid_next(void)
{
    if (rid_state[0] == 0 && rid_state[1] == 0) {
        if (getrandom(rid_state, sizeof(rid_state), 0) != sizeof(rid_state)) {
            rid_state[0] = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&rid_state;
            rid_state[1] = 0x9e3779b97f4a7c15ull;
        }
        rid_state[1] |= 1;
    }
    uint64_t s0 = rid_state[0], s1 = rid_state[1];
    uint64_t result = s0 + s1;
    s1 ^= s0;
    rid_state[0] = ((s0 << 55) | (s0 >> 9)) ^ s1 ^ (s1 << 14);
    rid_state[1] = (s1 << 36) | (s1 >> 28);
    return result;
}

/* Writes v as 16 lower-case hex digits, a byte (two digits) at a time. */
static void hex64(char *out, uint64_t v)
{
    static const char pairs[513] =
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
        "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
        "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
        "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
        "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
        "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
    for (int i = 0; i < 8; i++)
        memcpy(out + 2 * i, pairs + 2 * ((v >> (56 - 8 * i)) & 0xff), 2);
}

size_t tg_headers_new_request_id(char *out)
{
    hex64(out, rid_next());
    hex64(out + 16, rid_next());
    out[32] = '\0';
    return 32;
}

bool tg_headers_valid_request_id(struct tg_str v)
{
    if (v.n == 0 || v.n > 64)
        return false;
    for (size_t i = 0; i < v.n; i++) {
        char ch = v.p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' ||
              ch == '-'))
            return false;
    }
    return true;
}

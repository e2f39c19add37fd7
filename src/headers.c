/* Request and response header rules, request ids.
 *
 * Deliberately not here: deciding *whether* to forward (the pipeline) or
 * which client address to trust (the caller passes the verdict). */
#include "headers.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "access.h"
#include "buf.h"
#include "config.h"
#include "limiter.h"

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
    HDR_HOP, /* hop-by-hop: never forwarded */
    HDR_HOST,
    HDR_UPGRADE,
    HDR_XFF,
    HDR_XF_OTHER, /* X-Forwarded-Proto/Host, X-Real-IP: we set them */
    HDR_FORWARDED,
    HDR_REQUEST_ID,
    HDR_SERVER, /* Server, X-Powered-By: removed from responses */
    HDR_LENGTH, /* Content-Length: framing, set from the body by us */
    HDR_DATE,   /* end-to-end; we add one when a response has none */
};

static enum hdr_kind classify(struct tg_str n)
{
    switch (n.n) {
    case 2:
        return tg_http_name_eq(n, "te") ? HDR_HOP : HDR_OTHER;
    case 4:
        if (tg_http_name_eq(n, "host"))
            return HDR_HOST;
        return tg_http_name_eq(n, "date") ? HDR_DATE : HDR_OTHER;
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

static bool is_named(struct tg_str name, const char *configured)
{
    return configured != NULL && name.n == strlen(configured) &&
           strncasecmp(name.p, configured, name.n) == 0;
}

/* ---- request head ------------------------------------------------------------ */

/* traceparent and tracestate: the pipeline sends its own (or none). */
static bool is_trace_field(struct tg_str name)
{
    return (name.n == 11 && tg_http_name_eq(name, "traceparent")) ||
           (name.n == 10 && tg_http_name_eq(name, "tracestate"));
}

static void put_trace_fields(struct out *o, const struct tg_headers_upstream *in)
{
    if (in->traceparent.n == 0)
        return;
    puts_(o, "traceparent: ");
    put_str(o, in->traceparent);
    put(o, "\r\n", 2);
    if (in->tracestate.n > 0) {
        puts_(o, "tracestate: ");
        put_str(o, in->tracestate);
        put(o, "\r\n", 2);
    }
}

int tg_headers_upstream_request(struct tg_buf *b, const struct tg_headers_upstream *in)
{
    const struct tg_http_headers *h = in->fields;
    const struct tg_config_headers *rules = in->rules;
    struct out o = {b, false};
    struct conn_tokens ct;
    collect_connection_tokens(h->v, h->n, &ct);

    put_str(&o, in->method);
    put(&o, " ", 1);
    put_str(&o, in->path);
    /* The client's Host, unless headers.request.set replaces it. */
    const struct tg_config_header *host_rule = NULL;
    for (size_t i = 0; i < rules->nreq_set; i++)
        if (rules->req_set[i].name_len == 4 && strncasecmp(rules->req_set[i].name, "host", 4) == 0)
            host_rule = &rules->req_set[i];
    puts_(&o, " HTTP/1.1\r\n");
    if (host_rule != NULL) {
        put_config_header(&o, host_rule);
    } else {
        puts_(&o, "Host: ");
        put_str(&o, in->host);
        put(&o, "\r\n", 2);
    }

    for (size_t i = 0; i < h->n; i++) {
        const struct tg_http_header *hd = &h->v[i];
        enum hdr_kind k = classify(hd->name);
        /* Configured removals and replacements; the country, tenant and
         * certificate subject headers are ours alone (a client's copy
         * would lie about where it is, or impersonate someone else). */
        if (name_listed(rules->req_remove, rules->nreq_remove, hd->name) ||
            name_added(rules->req_set, rules->nreq_set, hd->name) ||
            is_named(hd->name, in->geo_header) || is_named(hd->name, in->subject_header) ||
            is_named(hd->name, in->tenant_header) || is_trace_field(hd->name))
            continue;
        switch (k) {
        case HDR_OTHER:
        case HDR_SERVER:
        case HDR_DATE:
            if (ct.n > 0 && listed_in_connection(&ct, hd->name))
                continue;
            put_header(&o, hd);
            break;
        default:
            /* Hop-by-hop, framing (set below from the body's length),
             * forwarding fields (the chain as identified is written
             * below: what a client wrote left of the client, or anything
             * an untrusted peer claims, never reaches the backend, so a
             * backend that reads the left-most address gets the same
             * client as our limits and rules), or regenerated below. */
            break;
        }
    }
    if (in->body_length > 0) {
        char len[24];
        puts_(&o, "Content-Length: ");
        put(&o, len, tg_str_u64(len, (unsigned long long)in->body_length));
        put(&o, "\r\n", 2);
    } else if (in->body_length < 0) {
        puts_(&o, "Transfer-Encoding: chunked\r\n");
    }
    if (in->upgrade) {
        for (size_t i = 0; i < h->n; i++) {
            if (classify(h->v[i].name) == HDR_UPGRADE) {
                put_header(&o, &h->v[i]);
                break;
            }
        }
        puts_(&o, "Connection: upgrade\r\n");
    }

    char peer[TG_ADDR_STRLEN];
    size_t peer_len = tg_addr_format(in->peer, peer, sizeof(peer));
    puts_(&o, "X-Forwarded-For: ");
    const struct tg_client_chain *chain = in->chain;
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
    if (tg_addr_equal(in->client, in->peer)) {
        put(&o, peer, peer_len);
    } else {
        char client[TG_ADDR_STRLEN];
        put(&o, client, tg_addr_format(in->client, client, sizeof(client)));
    }
    puts_(&o, in->tls ? "\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: "
                      : "\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ");
    put_str(&o, in->host);
    puts_(&o, "\r\nX-Request-Id: ");
    put_str(&o, in->request_id);
    put(&o, "\r\n", 2);
    put_trace_fields(&o, in);
    if (in->tenant_header != NULL && in->tenant != NULL) {
        puts_(&o, in->tenant_header);
        put(&o, ": ", 2);
        puts_(&o, in->tenant);
        put(&o, "\r\n", 2);
    }
    if (in->subject_header != NULL && in->subject != NULL) {
        puts_(&o, in->subject_header);
        put(&o, ": ", 2);
        puts_(&o, in->subject);
        put(&o, "\r\n", 2);
    }
    if (in->geo_header != NULL) {
        puts_(&o, in->geo_header);
        put(&o, ": ", 2);
        put(&o, in->country != NULL && in->country[0] ? in->country : TG_GEOIP_UNKNOWN, 2);
        put(&o, "\r\n", 2);
    }
    for (size_t i = 0; i < rules->nreq_set; i++)
        if (&rules->req_set[i] != host_rule)
            put_config_header(&o, &rules->req_set[i]);
    put(&o, "\r\n", 2);
    return o.overflow ? -1 : 0;
}

/* ---- response fields ------------------------------------------------------------ */

/* A vector being filled from an arena, grown by doubling. */
static int vec_push(struct tg_arena *a, struct tg_http_headers *v, struct tg_str name,
                    struct tg_str value)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        struct tg_http_header *nv = tg_arena_alloc(a, cap * sizeof(*nv));
        if (nv == NULL)
            return -1;
        if (v->n > 0)
            memcpy(nv, v->v, v->n * sizeof(*nv));
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = (struct tg_http_header){name, value};
    return 0;
}

/* Appends the fields of "Name: value\r\n" lines (a block of our own). */
static int vec_lines(struct tg_arena *a, struct tg_http_headers *v, const char *p, size_t n)
{
    const char *end = p + n;
    while (p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon != NULL) {
            const char *val = colon + 1;
            while (val < eol && (*val == ' ' || *val == '\t'))
                val++;
            if (vec_push(a, v, tg_str_make(p, (size_t)(colon - p)),
                         tg_str_make(val, (size_t)(eol - val))) < 0)
                return -1;
        }
        p = eol + (eol + 1 < end && eol[1] == '\n' ? 2 : 1);
    }
    return 0;
}

static struct tg_str cfg_name(const struct tg_config_header *h)
{
    return tg_str_make(h->name, h->name_len);
}

static struct tg_str cfg_value(const struct tg_config_header *h)
{
    return tg_str_make(h->value, h->value_len);
}

int tg_headers_response_fields(struct tg_arena *arena, const struct tg_headers_response *in,
                               const struct tg_http_headers *backend, struct tg_http_headers *out)
{
    const struct tg_config_headers *rules = in->rules;
    *out = (struct tg_http_headers){NULL, 0, 0};
    size_t nb = backend != NULL ? backend->n : 0;
    struct conn_tokens ct = {.n = 0};
    if (nb > 0)
        collect_connection_tokens(backend->v, nb, &ct);
    bool dated = false;
    /* The backend's end-to-end fields, minus what the rules remove (with
     * override, the ones we add ourselves). */
    for (size_t i = 0; i < nb; i++) {
        const struct tg_http_header *hd = &backend->v[i];
        enum hdr_kind k = classify(hd->name);
        if (k == HDR_UPGRADE && in->keep_upgrade) {
            if (vec_push(arena, out, hd->name, hd->value) < 0)
                return -1;
            continue;
        }
        if (k == HDR_DATE) {
            /* The origin's clock says when it made the answer: kept
             * (only one, the first). */
            if (dated)
                continue;
            dated = true;
            if (vec_push(arena, out, hd->name, hd->value) < 0)
                return -1;
            continue;
        }
        if (k != HDR_OTHER && k != HDR_XFF && k != HDR_XF_OTHER && k != HDR_FORWARDED &&
            k != HDR_SERVER)
            continue; /* hop-by-hop, framing, X-Request-Id */
        if (ct.n > 0 && listed_in_connection(&ct, hd->name))
            continue;
        if (name_listed(rules->remove, rules->nremove, hd->name))
            continue;
        if (rules->override && name_added(rules->add, rules->nadd, hd->name))
            continue;
        if (vec_push(arena, out, hd->name, hd->value) < 0)
            return -1;
    }
    if (!dated) {
        struct tg_str d = tg_headers_date();
        char *copy = tg_arena_alloc(arena, d.n);
        if (copy == NULL)
            return -1;
        memcpy(copy, d.p, d.n);
        if (vec_push(arena, out, TG_STR("Date"), tg_str_make(copy, d.n)) < 0)
            return -1;
    }
    /* Security and other configured headers: those the backend set stay
     * unless `override` (then they were dropped above). */
    bool may_collide = false;
    for (size_t k = 0; k < nb && !rules->override && !may_collide; k++)
        may_collide = (rules->add_name_lengths >> (backend->v[k].name.n & 63)) & 1;
    for (size_t i = 0; i < rules->nadd; i++) {
        const struct tg_config_header *h = &rules->add[i];
        if (h->https_only && !in->hsts)
            continue;
        bool present = false;
        for (size_t k = 0; may_collide && k < nb && !present; k++)
            present = h->name_len == backend->v[k].name.n &&
                      strncasecmp(h->name, backend->v[k].name.p, backend->v[k].name.n) == 0;
        if (!present && vec_push(arena, out, cfg_name(h), cfg_value(h)) < 0)
            return -1;
    }
    if (in->request_id.n > 0 && vec_push(arena, out, TG_STR("X-Request-Id"), in->request_id) < 0)
        return -1;
    if (in->extra != NULL && vec_lines(arena, out, in->extra, strlen(in->extra)) < 0)
        return -1;
    if (in->lim != NULL) {
        char block[512];
        size_t n = tg_limiter_headers(in->lim, block, sizeof(block));
        if (n > 0) {
            char *copy = tg_arena_alloc(arena, n);
            if (copy == NULL)
                return -1;
            memcpy(copy, block, n);
            if (vec_lines(arena, out, copy, n) < 0)
                return -1;
        }
    }
    return 0;
}

int tg_headers_interim_fields(struct tg_arena *arena, const struct tg_http_headers *backend,
                              struct tg_http_headers *out)
{
    *out = (struct tg_http_headers){NULL, 0, 0};
    struct conn_tokens ct;
    collect_connection_tokens(backend->v, backend->n, &ct);
    for (size_t i = 0; i < backend->n; i++) {
        const struct tg_http_header *hd = &backend->v[i];
        enum hdr_kind k = classify(hd->name);
        if (k != HDR_OTHER && k != HDR_XFF && k != HDR_XF_OTHER && k != HDR_FORWARDED &&
            k != HDR_SERVER && k != HDR_DATE)
            continue;
        if (ct.n > 0 && listed_in_connection(&ct, hd->name))
            continue;
        if (vec_push(arena, out, hd->name, hd->value) < 0)
            return -1;
    }
    return 0;
}

/* ---- Date ------------------------------------------------------------------------ */

static _Thread_local struct {
    time_t at;
    char text[29];
    bool set;
} date_cache;

static void two_digits(char *out, int v)
{
    out[0] = (char)('0' + v / 10 % 10);
    out[1] = (char)('0' + v % 10);
}

struct tg_str tg_headers_date(void)
{
    static const char days[] = "SunMonTueWedThuFriSat";
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    time_t now = time(NULL);
    if (now != date_cache.at || !date_cache.set) {
        struct tm tm;
        gmtime_r(&now, &tm);
        char *t = date_cache.text; /* "Sun, 06 Nov 1994 08:49:37 GMT" */
        memcpy(t, days + 3 * tm.tm_wday, 3);
        memcpy(t + 3, ", ", 2);
        two_digits(t + 5, tm.tm_mday);
        t[7] = ' ';
        memcpy(t + 8, months + 3 * tm.tm_mon, 3);
        t[11] = ' ';
        two_digits(t + 12, (tm.tm_year + 1900) / 100);
        two_digits(t + 14, (tm.tm_year + 1900) % 100);
        t[16] = ' ';
        two_digits(t + 17, tm.tm_hour);
        t[19] = ':';
        two_digits(t + 20, tm.tm_min);
        t[22] = ':';
        two_digits(t + 23, tm.tm_sec);
        memcpy(t + 25, " GMT", 4);
        date_cache.at = now;
        date_cache.set = true;
    }
    return tg_str_make(date_cache.text, sizeof(date_cache.text));
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
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == ':' || ch == '-'))
            return false;
    }
    return true;
}

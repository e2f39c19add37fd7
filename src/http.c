/* HTTP semantics: method ids, reason phrases, header look-ups. */
#include "http.h"

#include <string.h>

enum tg_http_method tg_http_method_id(struct tg_str m)
{
    switch (m.n) {
    case 3:
        if (memcmp(m.p, "GET", 3) == 0)
            return TG_HTTP_GET;
        if (memcmp(m.p, "PUT", 3) == 0)
            return TG_HTTP_PUT;
        break;
    case 4:
        if (memcmp(m.p, "HEAD", 4) == 0)
            return TG_HTTP_HEAD;
        if (memcmp(m.p, "POST", 4) == 0)
            return TG_HTTP_POST;
        break;
    case 5:
        if (memcmp(m.p, "PATCH", 5) == 0)
            return TG_HTTP_PATCH;
        if (memcmp(m.p, "TRACE", 5) == 0)
            return TG_HTTP_TRACE;
        break;
    case 6:
        if (memcmp(m.p, "DELETE", 6) == 0)
            return TG_HTTP_DELETE;
        break;
    case 7:
        if (memcmp(m.p, "OPTIONS", 7) == 0)
            return TG_HTTP_OPTIONS;
        if (memcmp(m.p, "CONNECT", 7) == 0)
            return TG_HTTP_CONNECT;
        break;
    default:
        break;
    }
    return TG_HTTP_OTHER;
}

bool tg_http_method_idempotent(enum tg_http_method m)
{
    switch (m) {
    case TG_HTTP_GET:
    case TG_HTTP_HEAD:
    case TG_HTTP_PUT:
    case TG_HTTP_DELETE:
    case TG_HTTP_OPTIONS:
    case TG_HTTP_TRACE:
        return true;
    default:
        return false;
    }
}

const char *tg_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 103:
        return "Early Hints";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 205:
        return "Reset Content";
    case 206:
        return "Partial Content";
    case 300:
        return "Multiple Choices";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 425:
        return "Too Early";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 451:
        return "Unavailable For Legal Reasons";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    case 511:
        return "Network Authentication Required";
    default:
        return "Unknown";
    }
}

const struct tg_http_header *tg_http_find(const struct tg_http_headers *h, const char *lower)
{
    size_t n = strlen(lower);
    for (size_t i = 0; i < h->n; i++) {
        const struct tg_str name = h->v[i].name;
        if (name.n != n)
            continue;
        size_t k = 0;
        while (k < n && tg_ascii_lower(name.p[k]) == lower[k])
            k++;
        if (k == n)
            return &h->v[i];
    }
    return NULL;
}

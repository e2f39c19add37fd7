/* Accept-Encoding, Cache-Control and Content-Type as far as response
 * compression needs them. Deliberately not here: compressing (compress.c)
 * or deciding whether a response is compressed (request.c): these only
 * read field values. */
#include "encoding.h"

#include <string.h>
#include <strings.h>

static const char *const names[TG_ENC_COUNT] = {"identity", "gzip", "zstd", "br"};

const char *tg_encoding_name(enum tg_encoding e)
{
    return (unsigned)e < TG_ENC_COUNT ? names[e] : "identity";
}

static bool ieq(const char *p, size_t n, const char *lit)
{
    size_t ln = strlen(lit);
    return n == ln && strncasecmp(p, lit, n) == 0;
}

int tg_encoding_from_name(const char *p, size_t n)
{
    for (int e = 0; e < TG_ENC_COUNT; e++)
        if (ieq(p, n, names[e]))
            return e;
    if (ieq(p, n, "x-gzip"))
        return TG_ENC_GZIP;
    return -1;
}

void tg_encoding_accept_init(struct tg_encoding_accept *a)
{
    for (int e = 0; e < TG_ENC_COUNT; e++)
        a->q[e] = -1;
    a->star = -1;
    a->present = false;
}

static bool ows(char c)
{
    return c == ' ' || c == '\t';
}

/* RFC 9110 token characters. */
static bool tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), in
 * thousandths; -1 if it does not parse. */
static int parse_q(const char *p, size_t n)
{
    if (n == 0 || (p[0] != '0' && p[0] != '1'))
        return -1;
    int q = (p[0] - '0') * 1000;
    if (n == 1)
        return q;
    if (p[1] != '.' || n > 5)
        return -1;
    int scale = 100;
    for (size_t i = 2; i < n; i++, scale /= 10) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        q += (p[i] - '0') * scale;
    }
    return q > 1000 ? -1 : q;
}

/* One list element "coding *( OWS ; OWS param )": its coding and q (1000
 * when not given), or false when it does not parse. */
static bool parse_element(const char *p, size_t n, const char **tok, size_t *tok_n, int *q)
{
    size_t i = 0;
    while (i < n && tchar((unsigned char)p[i]))
        i++;
    if (i == 0)
        return false;
    *tok = p;
    *tok_n = i;
    *q = 1000;
    for (;;) {
        while (i < n && ows(p[i]))
            i++;
        if (i == n)
            return true;
        if (p[i++] != ';')
            return false;
        while (i < n && ows(p[i]))
            i++;
        size_t name = i;
        while (i < n && tchar((unsigned char)p[i]))
            i++;
        size_t name_n = i - name;
        if (name_n == 0 || i == n || p[i] != '=')
            return false;
        size_t val = ++i;
        while (i < n && tchar((unsigned char)p[i]))
            i++;
        if (ieq(p + name, name_n, "q")) {
            *q = parse_q(p + val, i - val);
            if (*q < 0)
                return false;
        }
        /* Other parameters mean nothing for content codings: skipped. */
    }
}

void tg_encoding_accept_parse(struct tg_encoding_accept *a, const char *p, size_t n)
{
    a->present = true;
    size_t i = 0;
    while (i < n) {
        size_t end = i;
        while (end < n && p[end] != ',')
            end++;
        size_t s = i, e = end;
        while (s < e && ows(p[s]))
            s++;
        while (e > s && ows(p[e - 1]))
            e--;
        const char *tok;
        size_t tok_n;
        int q;
        if (e > s && parse_element(p + s, e - s, &tok, &tok_n, &q)) {
            if (tok_n == 1 && tok[0] == '*') {
                a->star = (int16_t)q;
            } else {
                int enc = tg_encoding_from_name(tok, tok_n);
                if (enc >= 0)
                    a->q[enc] = (int16_t)q;
            }
        }
        i = end + 1;
    }
}

enum tg_encoding tg_encoding_choose(const struct tg_encoding_accept *a, const uint8_t *order,
                                    size_t norder)
{
    if (!a->present)
        return TG_ENC_IDENTITY;
    enum tg_encoding best = TG_ENC_IDENTITY;
    int best_q = 0;
    for (size_t i = 0; i < norder; i++) {
        unsigned e = order[i];
        if (e == TG_ENC_IDENTITY || e >= TG_ENC_COUNT)
            continue;
        int q = a->q[e] >= 0 ? a->q[e] : a->star;
        if (q > best_q) { /* strictly: a tie keeps the earlier one */
            best_q = q;
            best = (enum tg_encoding)e;
        }
    }
    return best;
}

bool tg_encoding_no_transform(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (ows(p[i]) || p[i] == ','))
            i++;
        size_t name = i;
        while (i < n && tchar((unsigned char)p[i]))
            i++;
        size_t name_n = i - name;
        if (name_n > 0 && ieq(p + name, name_n, "no-transform")) {
            size_t j = i;
            while (j < n && ows(p[j]))
                j++;
            if (j == n || p[j] == ',')
                return true;
        }
        /* Skip to the next top-level comma: an argument may be a quoted
         * string holding commas and escaped quotes. */
        bool quoted = false;
        while (i < n && (quoted || p[i] != ',')) {
            if (quoted && p[i] == '\\' && i + 1 < n)
                i++;
            else if (p[i] == '"')
                quoted = !quoted;
            i++;
        }
        if (name_n == 0 && i < n && p[i] != ',')
            i++;
    }
    return false;
}

/* The media type of a Content-Type value: before ';', without OWS. */
static void media_type(const char *p, size_t n, const char **t, size_t *tn)
{
    size_t s = 0;
    while (s < n && ows(p[s]))
        s++;
    size_t e = s;
    while (e < n && p[e] != ';')
        e++;
    while (e > s && ows(p[e - 1]))
        e--;
    *t = p + s;
    *tn = e - s;
}

bool tg_encoding_type_is(const char *p, size_t n, const char *lower)
{
    const char *t;
    size_t tn;
    media_type(p, n, &t, &tn);
    return ieq(t, tn, lower);
}

bool tg_encoding_type_matches(const char *p, size_t n, const char *const *types, size_t ntypes)
{
    const char *t;
    size_t tn;
    media_type(p, n, &t, &tn);
    const char *slash = memchr(t, '/', tn);
    if (slash == NULL || slash == t || slash == t + tn - 1)
        return false;
    size_t main_n = (size_t)(slash - t);
    for (size_t i = 0; i < ntypes; i++) {
        const char *want = types[i];
        size_t wn = strlen(want);
        if (wn == main_n + 2 && want[wn - 1] == '*' && want[main_n] == '/' &&
            strncasecmp(want, t, main_n) == 0)
            return true;
        if (ieq(t, tn, want))
            return true;
    }
    return false;
}

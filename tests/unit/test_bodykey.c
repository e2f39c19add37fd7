/* The body field reader for rate-limit keys: an attacker's matrix. Each
 * case says what it pins; "Go" is PocketBase's BindBody (rules in
 * src/bodykey.h). The invariant under test: FOUND means the backend binds
 * exactly that value; anything the backend could read differently is
 * refused. */
#include "../../src/bodykey.c"

#include <stdlib.h>

#include "test.h"

#define JSON "application/json"
#define FORM "application/x-www-form-urlencoded"
#define MP "multipart/form-data; boundary=XyZ"
#define ALL (TG_BODYKEY_READ_JSON | TG_BODYKEY_READ_FORM)

static char out[256];
static size_t outlen;
static const char *why;

static enum tg_bodykey_status findn(const char *ct, const char *query, const char *body,
                                    size_t blen, const char *field, size_t cap)
{
    struct tg_bodykey_input in = {
        .content_type = {ct, ct != NULL ? strlen(ct) : 0},
        .body = body,
        .len = blen,
        .query = {query, query != NULL ? strlen(query) : 0},
        .read = ALL,
    };
    memset(out, 0x5A, sizeof(out));
    enum tg_bodykey_status st = tg_bodykey_find(&in, field, strlen(field), out, cap, &outlen, &why);
    if (why == NULL)
        fprintf(stderr, "why is NULL\n");
    return st;
}

static enum tg_bodykey_status find(const char *ct, const char *query, const char *body,
                                   const char *field)
{
    return findn(ct, query, body, body != NULL ? strlen(body) : 0, field, sizeof(out));
}

/* FOUND with exactly `want`. */
#define FOUND(ct, q, body, field, want)                                          \
    do {                                                                         \
        CHECK_EQ_STR(tg_bodykey_status_name(find(ct, q, body, field)), "found"); \
        CHECK_EQ_MEM(out, outlen, want);                                         \
    } while (0)

#define STATUS(ct, q, body, field, st)                                 \
    do {                                                               \
        CHECK_EQ_STR(tg_bodykey_status_name(find(ct, q, body, field)), \
                     tg_bodykey_status_name(st));                      \
        if (st != TG_BODYKEY_FOUND)                                    \
            CHECK_EQ_INT(outlen, 0);                                   \
    } while (0)

#define MISSING(ct, q, body, field) STATUS(ct, q, body, field, TG_BODYKEY_MISSING)
#define MALFORMED(ct, q, body, field) STATUS(ct, q, body, field, TG_BODYKEY_MALFORMED)
#define CONFLICT(ct, q, body, field) STATUS(ct, q, body, field, TG_BODYKEY_CONFLICT)
#define UNREADABLE(ct, q, body, field) STATUS(ct, q, body, field, TG_BODYKEY_UNREADABLE)

/* ---- Content-Type ---- */

TEST(classifies_content_types)
{
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("application/json")), TG_BODYKEY_JSON);
    /* Go's HasPrefix: parameters and even suffixes keep the kind. */
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("application/json; charset=utf-8")), TG_BODYKEY_JSON);
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("application/jsonx")), TG_BODYKEY_JSON);
    /* Superset: Go is case-sensitive (it would refuse), we read it. */
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("APPLICATION/JSON")), TG_BODYKEY_JSON);
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR(" \tapplication/json")), TG_BODYKEY_JSON);
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("application/x-www-form-urlencoded;charset=UTF-8")),
                 TG_BODYKEY_URLENCODED);
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("Multipart/Form-Data; boundary=a")),
                 TG_BODYKEY_MULTIPART);
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("text/xml")), TG_BODYKEY_OTHER);
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("application/xml")), TG_BODYKEY_OTHER);
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("text/plain")), TG_BODYKEY_OTHER);
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("application/jso")), TG_BODYKEY_OTHER);
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("x application/json")), TG_BODYKEY_OTHER);
    CHECK_EQ_INT(tg_bodykey_classify(TG_STR("")), TG_BODYKEY_OTHER);
    CHECK_EQ_INT(tg_bodykey_classify((struct tg_str){NULL, 0}), TG_BODYKEY_OTHER);
}

TEST(content_type_variants)
{
    const char *body = "{\"identity\":\"a@b.c\"}";
    FOUND("application/json; charset=utf-8", NULL, body, "identity", "a@b.c");
    FOUND("Application/JSON", NULL, body, "identity", "a@b.c");
    /* No Content-Type, XML (Go binds it!), text: never "no key". */
    UNREADABLE(NULL, NULL, body, "identity");
    UNREADABLE("text/xml", NULL, "<x><identity>v</identity></x>", "identity");
    UNREADABLE("application/xml", NULL, "<x/>", "identity");
    UNREADABLE("text/plain", NULL, body, "identity");
    /* The read mask. */
    struct tg_bodykey_input in = {.content_type = TG_STR(JSON),
                                  .body = body,
                                  .len = strlen(body),
                                  .read = TG_BODYKEY_READ_FORM};
    CHECK_EQ_INT(tg_bodykey_find(&in, "identity", 8, out, sizeof(out), &outlen, &why),
                 TG_BODYKEY_UNREADABLE);
    in.content_type = TG_STR(FORM);
    in.body = "identity=a";
    in.len = 10;
    in.read = TG_BODYKEY_READ_JSON;
    CHECK_EQ_INT(tg_bodykey_find(&in, "identity", 8, out, sizeof(out), &outlen, &why),
                 TG_BODYKEY_UNREADABLE);
    /* A form kind not read stays UNREADABLE even with an empty body: Go
     * would still bind the query. */
    in.len = 0;
    in.query = TG_STR("identity=a");
    CHECK_EQ_INT(tg_bodykey_find(&in, "identity", 8, out, sizeof(out), &outlen, &why),
                 TG_BODYKEY_UNREADABLE);
    in.read = TG_BODYKEY_READ_FORM;
    CHECK_EQ_INT(tg_bodykey_find(&in, "identity", 8, out, sizeof(out), &outlen, &why),
                 TG_BODYKEY_FOUND);
}

TEST(empty_body)
{
    MISSING(JSON, NULL, "", "identity");
    MISSING(JSON, "identity=a", "", "identity"); /* JSON never reads the query */
    MISSING(FORM, NULL, "", "identity");
    MISSING(MP, NULL, "", "identity");
    /* Bug pinned: a chunked empty body has Content-Length -1 in Go, so
     * ParseForm still binds the query; "empty -> MISSING" would let
     * ?identity=victim through uncharged. */
    FOUND(FORM, "identity=victim", "", "identity", "victim");
    FOUND(MP, "identity=victim", "", "identity", "victim");
    MALFORMED(FORM, "identity=a;b", "", "identity");
}

/* ---- JSON ---- */

TEST(json_basic)
{
    FOUND(JSON, NULL, "{\"identity\":\"a@b.c\",\"password\":\"x\"}", "identity", "a@b.c");
    FOUND(JSON, NULL, " \r\n\t{ \"password\" : \"x\" , \"identity\" : \"bob\" } \n", "identity",
          "bob");
    FOUND(JSON, NULL, "{\"identity\":\"\"}", "identity", "");
    MISSING(JSON, NULL, "{}", "identity");
    MISSING(JSON, NULL, "{\"password\":\"x\"}", "identity");
    /* Names that are not the field: prefix, suffix, trailing space. */
    MISSING(JSON, NULL, "{\"identit\":\"a\",\"identityx\":\"b\",\"identity \":\"c\"}", "identity");
    /* identityField is PocketBase's other member; not an occurrence. */
    FOUND(JSON, NULL, "{\"identityField\":\"email\",\"identity\":\"a\"}", "identity", "a");
    /* The query is not read for JSON. */
    FOUND(JSON, "identity=other", "{\"identity\":\"a\"}", "identity", "a");
}

TEST(json_duplicates_and_folds)
{
    /* Go: every matching member is applied, the last wins. */
    FOUND(JSON, NULL, "{\"identity\":\"a\",\"identity\":\"a\"}", "identity", "a");
    CONFLICT(JSON, NULL, "{\"identity\":\"a\",\"identity\":\"b\"}", "identity");
    /* Go folds ASCII case: "Identity" and "IDENTITY" bind too. */
    CONFLICT(JSON, NULL, "{\"identity\":\"a\",\"Identity\":\"b\"}", "identity");
    CONFLICT(JSON, NULL, "{\"IDENTITY\":\"b\",\"identity\":\"a\"}", "identity");
    FOUND(JSON, NULL, "{\"IDENTITY\":\"a\",\"identity\":\"a\"}", "identity", "a");
    FOUND(JSON, NULL, "{\"IdEnTiTy\":\"victim\"}", "identity", "victim");
    /* Names are compared after unescaping. */
    FOUND(JSON, NULL, "{\"\\u0069dentity\":\"victim\"}", "identity", "victim");
    FOUND(JSON, NULL, "{\"\\u0049DENTIT\\u0059\":\"victim\"}", "identity", "victim");
    CONFLICT(JSON, NULL, "{\"identity\":\"a\",\"\\u0069dentity\":\"b\"}", "identity");
    /* U+0131 dotless i folds to itself in Go (not 'i'): another member. */
    FOUND(JSON, NULL,
          "{\"identity\":\"a\",\"\xc4\xb1"
          "dentity\":\"b\"}",
          "identity", "a");
    MISSING(JSON, NULL, "{\"\\u0131dentity\":\"b\"}", "identity");
    /* U+0130 dotted capital I is not 'i' either. */
    MISSING(JSON, NULL,
            "{\"\xc4\xb0"
            "dentity\":\"b\"}",
            "identity");
    /* U+017F long s folds to 's', U+212A Kelvin to 'k': raw or escaped. */
    FOUND(JSON, NULL, "{\"pa\xc5\xbf\xc5\xbf\":\"victim\"}", "pass", "victim");
    FOUND(JSON, NULL, "{\"PA\\u017fS\":\"victim\"}", "pass", "victim");
    CONFLICT(JSON, NULL, "{\"pass\":\"a\",\"pa\xc5\xbfs\":\"b\"}", "pass");
    FOUND(JSON, NULL, "{\"\xe2\x84\xaaid\":\"victim\"}", "kid", "victim");
    FOUND(JSON, NULL, "{\"\\u212aID\":\"victim\"}", "kid", "victim");
    CONFLICT(JSON, NULL, "{\"kid\":\"a\",\"\\u212Aid\":\"b\"}", "kid");
    /* ...but only where the field has an s or a k. */
    MISSING(JSON, NULL, "{\"\xe2\x84\xaa\":\"x\",\"\xc5\xbf\":\"y\"}", "identity");
    MISSING(JSON, NULL, "{\"id\xc5\xbf\":\"x\"}", "idk");
    /* Other look-alikes (fullwidth i, Cyrillic i) are other members. */
    MISSING(JSON, NULL,
            "{\"\xef\xbd\x89"
            "dentity\":\"x\",\"\xd1\x96"
            "dentity\":\"y\"}",
            "identity");
}

TEST(json_non_strings)
{
    /* Go: null is a no-op, anything else not a string fails (400). Both
     * are refused. */
    MALFORMED(JSON, NULL, "{\"identity\":null}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"identity\":null}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":1}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":-0.5e3}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":true}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":false}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":{\"identity\":\"a\"}}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":[\"a\"]}", "identity");
    MALFORMED(JSON, NULL, "{\"Identity\":[]}", "identity");
    /* A nested identity is not an occurrence (nested objects don't bind). */
    MISSING(JSON, NULL, "{\"user\":{\"identity\":\"victim\"}}", "identity");
    FOUND(JSON, NULL,
          "{\"a\":{\"identity\":\"victim\"},\"identity\":\"me\",\"b\":[{"
          "\"identity\":1}]}",
          "identity", "me");
    /* Other members may be anything valid. */
    FOUND(JSON, NULL,
          "{\"n\":null,\"t\":true,\"f\":false,\"x\":-0,\"y\":1.5E+10,\"z\":[],"
          "\"o\":{},"
          "\"identity\":\"a\"}",
          "identity", "a");
    /* Not an object at all. */
    MALFORMED(JSON, NULL, "[{\"identity\":\"a\"}]", "identity");
    MALFORMED(JSON, NULL, "\"identity\"", "identity");
    MALFORMED(JSON, NULL, "null", "identity");
}

TEST(json_padding)
{
    /* A key far into the body: large whitespace, large other members. */
    size_t pad = 200000;
    char *b = malloc(pad * 2 + 100);
    size_t k = 0;
    b[k++] = '{';
    memset(b + k, ' ', pad);
    k += pad;
    memcpy(b + k, "\"big\":\"", 7);
    k += 7;
    memset(b + k, 'x', pad);
    k += pad;
    memcpy(b + k, "\",\"identity\":\"victim\"}", 22);
    k += 22;
    CHECK_EQ_INT(findn(JSON, NULL, b, k, "identity", sizeof(out)), TG_BODYKEY_FOUND);
    CHECK_EQ_MEM(out, outlen, "victim");
    /* A large array of numbers before it. */
    k = 0;
    memcpy(b + k, "{\"a\":[", 6);
    k += 6;
    for (int i = 0; i < 50000; i++) {
        memcpy(b + k, "12,", 3);
        k += 3;
    }
    memcpy(b + k, "0],\"identity\":\"victim\"}", 23);
    k += 23;
    CHECK_EQ_INT(findn(JSON, NULL, b, k, "identity", sizeof(out)), TG_BODYKEY_FOUND);
    CHECK_EQ_MEM(out, outlen, "victim");
    free(b);
}

TEST(json_unescapes_as_go)
{
    FOUND(JSON, NULL, "{\"identity\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"}", "identity",
          "a\"b\\c/d\b\f\n\r\t");
    FOUND(JSON, NULL, "{\"identity\":\"\\u00e9\\u20AC\\ud83d\\ude00\"}", "identity",
          "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    /* \u0000 is a NUL byte in the value. */
    CHECK_EQ_INT(find(JSON, NULL, "{\"identity\":\"a\\u0000b\"}", "identity"), TG_BODYKEY_FOUND);
    CHECK(outlen == 3 && memcmp(out, "a\0b", 3) == 0);
    /* Lone surrogates become U+FFFD, as Go's unquote. */
    FOUND(JSON, NULL, "{\"identity\":\"\\ud800\"}", "identity", "\xef\xbf\xbd");
    FOUND(JSON, NULL, "{\"identity\":\"\\udc00x\"}", "identity", "\xef\xbf\xbdx");
    /* A high surrogate then a non-low escape: FFFD, and the escape stands. */
    FOUND(JSON, NULL, "{\"identity\":\"\\ud800\\u0041\"}", "identity",
          "\xef\xbf\xbd"
          "A");
    FOUND(JSON, NULL, "{\"identity\":\"\\ud800\\n\"}", "identity", "\xef\xbf\xbd\n");
    FOUND(JSON, NULL, "{\"identity\":\"\\udc00\\ud800\"}", "identity", "\xef\xbf\xbd\xef\xbf\xbd");
    FOUND(JSON, NULL, "{\"identity\":\"\\ud800\\ud83d\\ude00\"}", "identity",
          "\xef\xbf\xbd\xf0\x9f\x98\x80");
    /* Invalid UTF-8: one U+FFFD per byte Go's DecodeRune rejects. */
    FOUND(JSON, NULL,
          "{\"identity\":\"a\xff"
          "b\"}",
          "identity",
          "a\xef\xbf\xbd"
          "b");
    FOUND(JSON, NULL, "{\"identity\":\"\xc0\x80\"}", "identity", "\xef\xbf\xbd\xef\xbf\xbd");
    FOUND(JSON, NULL, "{\"identity\":\"\xe2\x84x\"}", "identity", "\xef\xbf\xbd\xef\xbf\xbdx");
    FOUND(JSON, NULL, "{\"identity\":\"\xed\xa0\x80\"}", "identity",
          "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    FOUND(JSON, NULL, "{\"identity\":\"\xf4\x90\x80\x80\"}", "identity",
          "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    FOUND(JSON, NULL, "{\"identity\":\"\xe0\x80\xaf\"}", "identity",
          "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    FOUND(JSON, NULL, "{\"identity\":\"\xf0\x9f\x98\"}", "identity",
          "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    /* Valid multi-byte runes and a literal U+FFFD pass unchanged. */
    FOUND(JSON, NULL, "{\"identity\":\"\xc3\xa9\xf4\x8f\xbf\xbf\xef\xbf\xbd\x7f\"}", "identity",
          "\xc3\xa9\xf4\x8f\xbf\xbf\xef\xbf\xbd\x7f");
    /* Values are compared after decoding: these agree. */
    FOUND(JSON, NULL, "{\"identity\":\"\\ud800\",\"identity\":\"\\ufffd\"}", "identity",
          "\xef\xbf\xbd");
    FOUND(JSON, NULL, "{\"identity\":\"\xff\",\"IDENTITY\":\"\xef\xbf\xbd\"}", "identity",
          "\xef\xbf\xbd");
    FOUND(JSON, NULL, "{\"identity\":\"\\u0061\",\"identity\":\"a\"}", "identity", "a");
    CONFLICT(JSON, NULL, "{\"identity\":\"a\",\"identity\":\"a \"}", "identity");
    CONFLICT(JSON, NULL, "{\"identity\":\"ab\",\"identity\":\"a\"}", "identity");
    CONFLICT(JSON, NULL, "{\"identity\":\"a\",\"identity\":\"ab\"}", "identity");
    CONFLICT(JSON, NULL, "{\"identity\":\"\",\"identity\":\"a\"}", "identity");
}

TEST(json_is_strict)
{
    MALFORMED(JSON, NULL, "{\"identity\":\"a\"} x", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\"}{\"identity\":\"b\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\"},something", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\"}\f", "identity");
    MALFORMED(JSON, NULL, "\xef\xbb\xbf{\"identity\":\"a\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",}", "identity");
    MALFORMED(JSON, NULL, "{,\"identity\":\"a\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\" \"a\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\" \"x\":1}", "identity");
    MALFORMED(JSON, NULL, "{'identity':'a'}", "identity");
    MALFORMED(JSON, NULL, "{identity:\"a\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\"", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\"}/* c */", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\tb\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\nb\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"\\x41\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"\\u12\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"\\u12g4\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"\\ud800\\u12\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"\\U0041\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"\\'\"}", "identity");
    /* Errors anywhere else are refused too (Go rejects the document). */
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":01}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":1.}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":.5}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":+1}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":-}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":1e}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":1e+}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":0x1}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":NaN}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":tru}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":nul}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":True}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":[1,]}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":[1 2]}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":[}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":{\"a\"}}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":{1:2}}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"n\":\"\x01\"}", "identity");
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"\\q\":1}", "identity");
    /* A NUL byte in the body. */
    CHECK_EQ_INT(findn(JSON, NULL, "{\"identity\":\"a\"}\0", 17, "identity", sizeof(out)),
                 TG_BODYKEY_MALFORMED);
    CHECK_EQ_INT(findn(JSON, NULL, "{\"identity\":\"a\0\"}", 17, "identity", sizeof(out)),
                 TG_BODYKEY_MALFORMED);
    /* A malformed member after the occurrence still refuses (MALFORMED
     * wins over FOUND and over CONFLICT). */
    MALFORMED(JSON, NULL, "{\"identity\":\"a\",\"identity\":\"b\",\"x\":}", "identity");
}

static size_t nested(char *b, int levels, bool objects)
{
    size_t k = 0;
    k += (size_t)sprintf(b + k, "{\"identity\":\"a\",\"x\":");
    for (int i = 1; i < levels; i++)
        k += (size_t)sprintf(b + k, objects ? "{\"y\":" : "[");
    b[k++] = '1';
    for (int i = 1; i < levels; i++)
        b[k++] = objects ? '}' : ']';
    b[k++] = '}';
    return k;
}

TEST(json_depth)
{
    char b[2048];
    /* 64 levels with the outer object: read. */
    size_t n = nested(b, 64, false);
    CHECK_EQ_INT(findn(JSON, NULL, b, n, "identity", sizeof(out)), TG_BODYKEY_FOUND);
    n = nested(b, 64, true);
    CHECK_EQ_INT(findn(JSON, NULL, b, n, "identity", sizeof(out)), TG_BODYKEY_FOUND);
    /* 65: refused. */
    n = nested(b, 65, false);
    CHECK_EQ_INT(findn(JSON, NULL, b, n, "identity", sizeof(out)), TG_BODYKEY_MALFORMED);
    n = nested(b, 65, true);
    CHECK_EQ_INT(findn(JSON, NULL, b, n, "identity", sizeof(out)), TG_BODYKEY_MALFORMED);
    /* Far deeper, unterminated: refused, bounded. */
    memset(b, '[', sizeof(b));
    b[0] = '{';
    memcpy(b + 1, "\"a\":", 4);
    CHECK_EQ_INT(findn(JSON, NULL, b, sizeof(b), "identity", sizeof(out)), TG_BODYKEY_MALFORMED);
    /* Siblings do not add depth. */
    char w[4096];
    size_t k = 0;
    k += (size_t)sprintf(w, "{\"identity\":\"a\"");
    for (int i = 0; i < 200; i++)
        k += (size_t)sprintf(w + k, ",\"k%d\":[[{}]]", i);
    w[k++] = '}';
    CHECK_EQ_INT(findn(JSON, NULL, w, k, "identity", sizeof(out)), TG_BODYKEY_FOUND);
}

TEST(value_cap)
{
    const char *b = "{\"identity\":\"12345678\"}";
    CHECK_EQ_INT(findn(JSON, NULL, b, strlen(b), "identity", 8), TG_BODYKEY_FOUND);
    CHECK_EQ_MEM(out, outlen, "12345678");
    CHECK_EQ_INT(findn(JSON, NULL, b, strlen(b), "identity", 7), TG_BODYKEY_MALFORMED);
    CHECK_EQ_INT(outlen, 0);
    /* The cap counts decoded bytes: \u00e9 is 2. */
    b = "{\"identity\":\"\\u00e9\\u00e9\"}";
    CHECK_EQ_INT(findn(JSON, NULL, b, strlen(b), "identity", 4), TG_BODYKEY_FOUND);
    CHECK_EQ_INT(findn(JSON, NULL, b, strlen(b), "identity", 3), TG_BODYKEY_MALFORMED);
    /* A later occurrence too long: refused, not a conflict. */
    b = "{\"identity\":\"ab\",\"identity\":\"abcdefghij\"}";
    CHECK_EQ_INT(findn(JSON, NULL, b, strlen(b), "identity", 8), TG_BODYKEY_MALFORMED);
    CHECK_EQ_INT(findn(JSON, NULL, b, strlen(b), "identity", 10), TG_BODYKEY_CONFLICT);
    /* cap 0 with a NULL buffer: only "" fits. */
    struct tg_bodykey_input in = {
        .content_type = TG_STR(JSON), .body = "{\"identity\":\"\"}", .len = 15, .read = ALL};
    CHECK_EQ_INT(tg_bodykey_find(&in, "identity", 8, NULL, 0, &outlen, NULL), TG_BODYKEY_FOUND);
    CHECK_EQ_INT(outlen, 0);
    in.body = "{\"identity\":\"a\"}";
    in.len = 16;
    CHECK_EQ_INT(tg_bodykey_find(&in, "identity", 8, NULL, 0, &outlen, NULL), TG_BODYKEY_MALFORMED);
    /* Form and multipart values are capped the same way. */
    CHECK_EQ_INT(findn(FORM, NULL, "identity=abc", 12, "identity", 2), TG_BODYKEY_MALFORMED);
    CHECK_EQ_INT(findn(FORM, NULL, "identity=abc", 12, "identity", 3), TG_BODYKEY_FOUND);
    CHECK_EQ_INT(findn(FORM, NULL, "identity=%41bc", 14, "identity", 3), TG_BODYKEY_FOUND);
}

/* ---- urlencoded ---- */

TEST(form_basic)
{
    FOUND(FORM, NULL, "identity=a%40b.c&password=x", "identity", "a@b.c");
    FOUND(FORM, NULL, "password=x&identity=bob", "identity", "bob");
    MISSING(FORM, NULL, "password=x", "identity");
    /* %XX in keys and values; '+' is a space, %2B a plus. */
    FOUND(FORM, NULL, "%69dentity=victim", "identity", "victim");
    FOUND(FORM, NULL, "%69%64%65%6E%74%69%74%79=victim", "identity", "victim");
    FOUND(FORM, NULL, "identity=a+b%2Bc%20d", "identity", "a b+c d");
    MISSING(FORM, NULL, "identity+=a&+identity=b", "identity");
    /* No '=': an empty value. Empty pieces are skipped. */
    FOUND(FORM, NULL, "identity", "identity", "");
    FOUND(FORM, NULL, "&&identity=a&&", "identity", "a");
    FOUND(FORM, NULL, "identity=a=b", "identity", "a=b");
    FOUND(FORM, NULL, "=x&identity=a", "identity", "a");
    /* Raw bytes pass unchanged (Go does not check UTF-8 in forms). */
    CHECK_EQ_INT(find(FORM, NULL, "identity=%FF%00", "identity"), TG_BODYKEY_FOUND);
    CHECK(outlen == 2 && memcmp(out, "\xff\0", 2) == 0);
}

TEST(form_duplicates)
{
    /* Go takes values[0] of the exact key; we refuse any disagreement. */
    FOUND(FORM, NULL, "identity=a&identity=a", "identity", "a");
    CONFLICT(FORM, NULL, "identity=a&identity=b", "identity");
    /* Superset: a differently-cased key Go ignores still conflicts. */
    CONFLICT(FORM, NULL, "Identity=b&identity=a", "identity");
    FOUND(FORM, NULL, "IDENTITY=a", "identity", "a");
    CONFLICT(FORM, NULL, "identity=a&identity=", "identity");
    CONFLICT(FORM, NULL, "identity=a&identity", "identity");
    /* Same value spelled differently: agree. */
    FOUND(FORM, NULL, "identity=a+b&identity=a%20b", "identity", "a b");
}

TEST(form_refuses_what_go_refuses)
{
    /* Go's ParseQuery: ';' in any pair, or a bad escape, fails the form. */
    MALFORMED(FORM, NULL, "identity=a;b", "identity");
    MALFORMED(FORM, NULL, "identity=a&x=1;y=2", "identity");
    MALFORMED(FORM, NULL, "identity=a&;", "identity");
    MALFORMED(FORM, NULL, "identity=%", "identity");
    MALFORMED(FORM, NULL, "identity=%4", "identity");
    MALFORMED(FORM, NULL, "identity=%zz", "identity");
    MALFORMED(FORM, NULL, "identity=a&x=%G0", "identity");
    MALFORMED(FORM, NULL, "%=x&identity=a", "identity");
    MALFORMED(FORM, NULL, "identity=a&x%4=1", "identity");
    /* The same in the query. */
    MALFORMED(FORM, "a=%", "identity=a", "identity");
    MALFORMED(FORM, "a;b", "identity=a", "identity");
}

TEST(form_query)
{
    /* Go: body values first, then the query's; values[0] wins. */
    FOUND(FORM, "identity=a", "identity=a", "identity", "a");
    CONFLICT(FORM, "identity=victim", "identity=me", "identity");
    FOUND(FORM, "identity=victim", "password=x", "identity", "victim");
    FOUND(FORM, "x=1&%49DENTITY=v", "password=x", "identity", "v");
    CONFLICT(FORM, "identity=", "identity=a", "identity");
    MISSING(FORM, "", "password=x", "identity");
    MISSING(FORM, "x=identity", "password=x", "identity");
    /* Multipart reads the query too (query values first). */
    CONFLICT(MP, "identity=victim",
             "--XyZ\r\nContent-Disposition: form-data; "
             "name=\"identity\"\r\n\r\nme\r\n--XyZ--\r\n",
             "identity");
}

TEST(form_json_payload)
{
    /* @jsonPayload is json.Unmarshal'ed over the form values. */
    FOUND(FORM, NULL, "@jsonPayload=%7B%22identity%22%3A%22a%22%7D", "identity", "a");
    FOUND(FORM, NULL, "%40jsonPayload={\"identity\":\"a\"}", "identity", "a");
    FOUND(FORM, NULL, "identity=a&@jsonPayload={\"identity\":\"a\"}", "identity", "a");
    CONFLICT(FORM, NULL, "identity=me&@jsonPayload={\"identity\":\"victim\"}", "identity");
    CONFLICT(FORM, NULL, "@jsonPayload={\"identity\":\"a\"}&@jsonPayload={\"identity\":\"b\"}",
             "identity");
    /* JSON rules inside: folds, escapes, '+' as a space before JSON. */
    CONFLICT(FORM, NULL, "identity=me&@jsonPayload={\"IDENTITY\":\"victim\"}", "identity");
    FOUND(FORM, NULL, "@jsonPayload={\"\\u0069dentity\":\"a+b\"}", "identity", "a b");
    FOUND(FORM, NULL, "@jsonPayload=+{+\"identity\"+:+\"x\"+}+", "identity", "x");
    FOUND(FORM, NULL, "@jsonPayload={\"identity\":\"%5Cud800\"}", "identity", "\xef\xbf\xbd");
    /* Not an occurrence: other members, nested. */
    FOUND(FORM, NULL,
          "identity=a&@jsonPayload={\"password\":\"x\",\"o\":{\"identity\":"
          "\"b\"}}",
          "identity", "a");
    /* Invalid or non-object payloads, non-string identity: refused. */
    MALFORMED(FORM, NULL, "identity=a&@jsonPayload=", "identity");
    MALFORMED(FORM, NULL, "identity=a&@jsonPayload", "identity");
    MALFORMED(FORM, NULL, "identity=a&@jsonPayload={", "identity");
    MALFORMED(FORM, NULL, "identity=a&@jsonPayload=[]", "identity");
    MALFORMED(FORM, NULL, "identity=a&@jsonPayload=null", "identity");
    MALFORMED(FORM, NULL, "identity=a&@jsonPayload={\"identity\":null}", "identity");
    MALFORMED(FORM, NULL, "identity=a&@jsonPayload={\"identity\":1}", "identity");
    MALFORMED(FORM, NULL, "identity=a&@jsonPayload={\"x\":1}x", "identity");
    MALFORMED(FORM, NULL, "@jsonPayload={\"identity\":\"a%0Ab\"}", "identity");
    /* In the query too. */
    CONFLICT(FORM, "@jsonPayload={\"identity\":\"victim\"}", "identity=me", "identity");
    MALFORMED(FORM, "@jsonPayload=x", "identity=me", "identity");
    /* Only the exact key is a payload (Go looks it up exactly). */
    FOUND(FORM, NULL, "identity=a&@JSONPAYLOAD=garbage&@jsonpayload=x", "identity", "a");
    /* The JSON kind has no @jsonPayload. */
    FOUND(JSON, NULL,
          "{\"identity\":\"a\",\"@jsonPayload\":\"{\\\"identity\\\":\\\"b\\\"}"
          "\"}",
          "identity", "a");
}

/* ---- multipart ---- */

#define PART(name) "--XyZ\r\nContent-Disposition: form-data; name=\"" name "\"\r\n\r\n"
#define CLOSE "\r\n--XyZ--\r\n"

TEST(multipart_basic)
{
    FOUND(MP, NULL, PART("identity") "a@b.c\r\n" PART("password") "x" CLOSE, "identity", "a@b.c");
    FOUND(MP, NULL, PART("password") "x\r\n" PART("identity") "bob" CLOSE, "identity", "bob");
    MISSING(MP, NULL, PART("password") "x" CLOSE, "identity");
    FOUND(MP, NULL, PART("identity") CLOSE, "identity", "");
    /* Content is raw: CR, LF, "--" inside are kept. */
    FOUND(MP, NULL, PART("identity") "a\r\nb\n--c\r\n-" CLOSE, "identity", "a\r\nb\n--c\r\n-");
    /* Token name, parameter name case, spaces. */
    FOUND(MP, NULL, "--XyZ\r\ncontent-disposition:form-data;name=identity\r\n\r\nv" CLOSE,
          "identity", "v");
    FOUND(MP, NULL,
          "--XyZ\r\nCONTENT-DISPOSITION: FORM-DATA ; NAME = \"identity\" ; "
          "\r\n\r\nv" CLOSE,
          "identity", "v");
    FOUND(MP, NULL,
          "--XyZ\r\nContent-Type: text/plain\r\nContent-Disposition: form-data; "
          "x=\"y;z\"; name=\"identity\"\r\n\r\nv" CLOSE,
          "identity", "v");
    /* Go's quoted-string: a backslash escapes a tspecial only. */
    MISSING(MP, NULL,
            "--XyZ\r\nContent-Disposition: form-data; "
            "name=\"ident\\ity\"\r\n\r\nv" CLOSE,
            "identity");
    FOUND(MP, NULL,
          "--XyZ\r\nContent-Disposition: form-data; name=\"x\\\"y\"\r\n\r\nv"
          "\r\n--XyZ\r\nContent-Disposition: form-data; "
          "name=\"identity\"\r\n\r\nw" CLOSE,
          "identity", "w");
    /* A differently-cased name Go ignores: an occurrence for us. */
    CONFLICT(MP, NULL, PART("identity") "a\r\n" PART("IDENTITY") "b" CLOSE, "identity");
    FOUND(MP, NULL, PART("identity") "a\r\n" PART("Identity") "a" CLOSE, "identity", "a");
    /* Two parts, same name. */
    FOUND(MP, NULL, PART("identity") "a\r\n" PART("identity") "a" CLOSE, "identity", "a");
    CONFLICT(MP, NULL, PART("identity") "a\r\n" PART("identity") "b" CLOSE, "identity");
}

TEST(multipart_boundaries)
{
    const char *body = PART("identity") "v" CLOSE;
    FOUND("multipart/form-data; boundary=\"XyZ\"", NULL, body, "identity", "v");
    FOUND("multipart/form-data;boundary=XyZ", NULL, body, "identity", "v");
    FOUND("multipart/form-data; charset=utf-8; BOUNDARY=XyZ;", NULL, body, "identity", "v");
    FOUND("Multipart/Form-Data ; boundary = XyZ ", NULL, body, "identity", "v");
    FOUND("multipart/form-data; boundary=\"X\\:Z\"", NULL,
          "--X:Z\r\nContent-Disposition: form-data; "
          "name=identity\r\n\r\nv\r\n--X:Z--",
          "identity", "v");
    /* Outside RFC 2046 bchars (here a literal backslash): refused. */
    MALFORMED("multipart/form-data; boundary=\"X\\yZ\"", NULL,
              "--X\\yZ\r\nContent-Disposition: form-data; "
              "name=identity\r\n\r\nv\r\n--X\\yZ--",
              "identity");
    /* The delimiter may carry trailing blanks; the close line may end the body.
     */
    FOUND(MP, NULL,
          "--XyZ \t\r\nContent-Disposition: form-data; "
          "name=identity\r\n\r\nv\r\n--XyZ--",
          "identity", "v");
    FOUND(MP, NULL,
          "--XyZ\r\nContent-Disposition: form-data; "
          "name=identity\r\n\r\nv\r\n--XyZ-- \r\n",
          "identity", "v");
    /* Preamble and epilogue are ignored, as Go does. */
    FOUND(MP, NULL,
          "preamble\r\nmore\n--XyZx\r\n" PART("identity") "v\r\n--XyZ--\r\nepilogue " PART(
              "identity") "w",
          "identity", "v");
    /* A close line before any part: no parts (Go stops there). */
    MISSING(MP, NULL, "--XyZ--\r\n" PART("identity") "v" CLOSE, "identity");
    /* "\r\n--XyZ" followed by another byte does not end a part (Go). */
    FOUND(MP, NULL, PART("identity") "a\r\n--XyZa\r\n--XyZ-x" CLOSE, "identity",
          "a\r\n--XyZa\r\n--XyZ-x");
    /* 70-byte boundary: read; 71: refused. */
    char b70[71], ct[200], body2[400];
    memset(b70, 'b', 70);
    b70[70] = '\0';
    snprintf(ct, sizeof(ct), "multipart/form-data; boundary=%s", b70);
    snprintf(body2, sizeof(body2),
             "--%s\r\nContent-Disposition: form-data; "
             "name=identity\r\n\r\nv\r\n--%s--",
             b70, b70);
    FOUND(ct, NULL, body2, "identity", "v");
    snprintf(ct, sizeof(ct), "multipart/form-data; boundary=%sb", b70);
    MALFORMED(ct, NULL, body2, "identity");
    /* Missing, empty, duplicated, RFC 2231, odd characters: refused. */
    MALFORMED("multipart/form-data", NULL, body, "identity");
    MALFORMED("multipart/form-data; charset=utf-8", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary=\"\"", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary=XyZ; boundary=XyZ", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary=XyZ; Boundary=abc", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary=XyZ; boundary*=utf-8''abc", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary*0=XyZ", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary=\"Xy Z \"", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary=\"X\x80Z\"", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary=XyZ x", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary=XyZ;;", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary=", NULL, body, "identity");
    MALFORMED("multipart/form-data; boundary=\"XyZ", NULL, body, "identity");
    MALFORMED("multipart/form-data boundary=XyZ", NULL, body, "identity");
    MALFORMED("multipart/form-dataX; boundary=XyZ", NULL, body, "identity");
}

TEST(multipart_is_strict)
{
    /* Ends before the close delimiter. */
    MALFORMED(MP, NULL, PART("identity") "v", "identity");
    MALFORMED(MP, NULL, PART("identity") "v\r\n--XyZ", "identity");
    MALFORMED(MP, NULL, PART("identity") "v\r\n--XyZ\r\n", "identity");
    MALFORMED(MP, NULL, PART("identity") "v\r\n--XyZ-", "identity");
    MALFORMED(MP, NULL, "no delimiter at all", "identity");
    MALFORMED(MP, NULL, "--XyZ\r\nContent-Disposition: form-data; name=identity\r\n", "identity");
    /* LF-only lines (Go switches to LF mode on the first delimiter). */
    MALFORMED(MP, NULL, "--XyZ\nContent-Disposition: form-data; name=identity\n\nv\n--XyZ--\n",
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; "
              "name=identity\n\nv\r\n--XyZ--",
              "identity");
    MALFORMED(MP, NULL,
              PART("a") "x\r\n--XyZ\n"
                        "Content-Disposition: form-data; name=identity"
                        "\r\n\r\nv" CLOSE,
              "identity");
    /* Bad delimiter lines after a part. */
    MALFORMED(MP, NULL, PART("identity") "v\r\n--XyZ--x\r\n", "identity");
    MALFORMED(MP, NULL, PART("identity") "v\r\n--XyZ\rx\r\n", "identity");
    MALFORMED(MP, NULL, PART("identity") "v\r\n--XyZ--\r", "identity");
    MALFORMED(MP, NULL, PART("identity") "v\r\n--XyZ x\r\n" PART("a") CLOSE, "identity");
    /* Header lines: obs-fold, space before the colon, no colon, controls. */
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data;\r\n "
              "name=identity\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\n Content-Disposition: form-data; "
              "name=identity\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition : form-data; "
              "name=identity\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL, "--XyZ\r\nContent-Disposition form-data\r\n\r\nv" CLOSE, "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=identity\r\nX: "
              "a\rb\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; "
              "name=\"iden\x01tity\"\r\n\r\nv" CLOSE,
              "identity");
    /* Parts Go would skip (no or another disposition, no name): refused. */
    MALFORMED(MP, NULL, "--XyZ\r\n\r\nv" CLOSE, "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: attachment; "
              "name=identity\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-datax; "
              "name=identity\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL, "--XyZ\r\nContent-Disposition: form-data\r\n\r\nv" CLOSE, "identity");
    MALFORMED(MP, NULL, "--XyZ\r\nContent-Disposition: form-data; filename=a\r\n\r\nv" CLOSE,
              "identity");
    /* Duplicated headers or parameters, RFC 2231 names. */
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=x\r\n"
              "Content-Disposition: form-data; name=identity\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=x; "
              "name=identity\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=identity; NAME=identity"
              "\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=x; name*=UTF-8''identity"
              "\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name*0=iden; name*1=tity"
              "\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=x; filename=a; "
              "filename=b"
              "\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; "
              "name=\"identity\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=identity "
              "x\r\n\r\nv" CLOSE,
              "identity");
    /* Bug pinned: Go ends a part whose content starts with "--XyZ" (no
     * CRLF before it), so the next line opens a new part; reading the
     * content up to the next CRLF "--XyZ" would hide this identity. */
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=x\r\n\r\n--XyZ\r\n"
              "Content-Disposition: form-data; name=identity\r\n\r\nvictim" CLOSE,
              "identity");
    MALFORMED(MP, NULL, PART("x") "--XyZx" CLOSE, "identity");
}

TEST(multipart_files_and_encodings)
{
    /* File parts are ignored, unless they carry the field or a payload. */
    FOUND(MP, NULL,
          "--XyZ\r\nContent-Disposition: form-data; name=avatar; "
          "filename=\"a.png\"\r\n"
          "Content-Type: image/png\r\n\r\n\x89PNG\r\n" PART("identity") "v" CLOSE,
          "identity", "v");
    FOUND(MP, NULL,
          "--XyZ\r\nContent-Disposition: form-data; name=avatar; "
          "filename*=UTF-8''%C3%A9"
          "\r\n\r\nx\r\n" PART("identity") "v" CLOSE,
          "identity", "v");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=identity; "
              "filename=a\r\n\r\nv" CLOSE,
              "identity");
    /* filename="" makes Go read it as a value: refused all the same. */
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=identity; filename=\"\""
              "\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=identity; filename*=x"
              "\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=@jsonPayload; filename=a"
              "\r\n\r\n{}" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=IDENTITY; filename=a"
              "\r\n\r\nv" CLOSE,
              "identity");
    /* Go decodes quoted-printable: refused on the field's parts only. */
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=identity\r\n"
              "Content-Transfer-Encoding: quoted-printable\r\n\r\nvi=63tim" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\ncontent-transfer-encoding: 8bit\r\n"
              "Content-Disposition: form-data; name=identity\r\n\r\nv" CLOSE,
              "identity");
    MALFORMED(MP, NULL,
              "--XyZ\r\nContent-Disposition: form-data; name=@jsonPayload\r\n"
              "Content-Transfer-Encoding: quoted-printable\r\n\r\n{}" CLOSE,
              "identity");
    FOUND(MP, NULL,
          "--XyZ\r\nContent-Disposition: form-data; name=bio\r\n"
          "Content-Transfer-Encoding: quoted-printable\r\n\r\nx=3D\r\n" PART("identity") "v" CLOSE,
          "identity", "v");
}

TEST(multipart_json_payload)
{
    FOUND(MP, NULL, PART("@jsonPayload") "{\"identity\":\"a\"}" CLOSE, "identity", "a");
    FOUND(MP, NULL,
          PART("identity") "a\r\n" PART("@jsonPayload") "{\"identity\":\"a\",\"p\":1}" CLOSE,
          "identity", "a");
    CONFLICT(MP, NULL,
             PART("identity") "me\r\n" PART("@jsonPayload") "{\"identity\":\"victim\"}" CLOSE,
             "identity");
    CONFLICT(MP, NULL,
             PART("identity") "me\r\n" PART("@jsonPayload") "{\"Identity\":\"victim\"}" CLOSE,
             "identity");
    CONFLICT(MP, "@jsonPayload=%7B%22identity%22:%22victim%22%7D", PART("identity") "me" CLOSE,
             "identity");
    /* The payload is raw JSON here: no %-decoding, '+' is a plus. */
    FOUND(MP, NULL, PART("@jsonPayload") "{\"identity\":\"a+b%41\"}" CLOSE, "identity", "a+b%41");
    MALFORMED(MP, NULL, PART("identity") "a\r\n" PART("@jsonPayload") "{" CLOSE, "identity");
    MALFORMED(MP, NULL, PART("identity") "a\r\n" PART("@jsonPayload") "" CLOSE, "identity");
    MALFORMED(MP, NULL, PART("identity") "a\r\n" PART("@jsonPayload") "{\"identity\":null}" CLOSE,
              "identity");
    MALFORMED(MP, NULL, PART("identity") "a\r\n" PART("@jsonPayload") "{\"identity\":[]}" CLOSE,
              "identity");
    /* Exact name only. */
    FOUND(MP, NULL, PART("identity") "a\r\n" PART("@JsonPayload") "{" CLOSE, "identity", "a");
}

/* ---- truncation, field names, names ---- */

/* Every strict prefix of a valid body: never FOUND with another value,
 * and never FOUND at all before the value is complete. */
static void every_prefix(const char *ct, const char *body, const char *want, size_t complete)
{
    size_t n = strlen(body);
    for (size_t len = 1; len < n; len++) {
        enum tg_bodykey_status st = findn(ct, NULL, body, len, "identity", sizeof(out));
        if (len < complete) {
            CHECK(st == TG_BODYKEY_MALFORMED || st == TG_BODYKEY_MISSING);
            if (st != TG_BODYKEY_MALFORMED && st != TG_BODYKEY_MISSING)
                fprintf(stderr, "  at %zu: %s\n", len, tg_bodykey_status_name(st));
        } else if (st == TG_BODYKEY_FOUND) {
            CHECK_EQ_MEM(out, outlen, want);
        }
    }
}

TEST(every_prefix_is_safe)
{
    const char *j = "{\"x\":[1,{\"y\":\"z\\u00e9\"}],\"identity\":\"user@example.com\"}  ";
    every_prefix(JSON, j, "user@example.com", strlen(j) - 2);
    const char *m = "pre\r\n" PART("x") "1\r\n" PART("identity") "user@example.com" CLOSE;
    every_prefix(MP, m, "user@example.com", strlen(m) - 2);
    /* A form body's prefix can end the value early: only the whole value
     * is the backend's, and the prefix is what it would get. */
    const char *f = "identity=user%40example.com";
    for (size_t len = 9; len < strlen(f); len++) {
        enum tg_bodykey_status st = findn(FORM, NULL, f, len, "identity", sizeof(out));
        CHECK(st == TG_BODYKEY_FOUND || st == TG_BODYKEY_MALFORMED);
    }
}

TEST(field_names)
{
    CHECK(tg_bodykey_field_ok("identity", 8));
    CHECK(tg_bodykey_field_ok("user.e-mail_2", 13));
    CHECK(!tg_bodykey_field_ok("", 0));
    CHECK(!tg_bodykey_field_ok(NULL, 0));
    CHECK(!tg_bodykey_field_ok("@jsonPayload", 12));
    CHECK(!tg_bodykey_field_ok("a b", 3));
    CHECK(!tg_bodykey_field_ok("\xc5\xbf", 2));
    char big[130];
    memset(big, 'a', sizeof(big));
    CHECK(tg_bodykey_field_ok(big, 128));
    CHECK(!tg_bodykey_field_ok(big, 129));
    UNREADABLE(JSON, NULL, "{\"a b\":\"x\"}", "a b");
    /* Fields with '.', '-', '_' are matched literally. */
    FOUND(JSON, NULL, "{\"user.e-mail_2\":\"x\",\"user.e-mail-2\":\"y\"}", "user.e-mail_2", "x");
    FOUND(FORM, NULL, "USER.E-MAIL_2=x&user_e-mail_2=y", "user.e-mail_2", "x");
}

TEST(status_names)
{
    CHECK_EQ_STR(tg_bodykey_status_name(TG_BODYKEY_FOUND), "found");
    CHECK_EQ_STR(tg_bodykey_status_name(TG_BODYKEY_MISSING), "missing");
    CHECK_EQ_STR(tg_bodykey_status_name(TG_BODYKEY_UNREADABLE), "unreadable");
    CHECK_EQ_STR(tg_bodykey_status_name(TG_BODYKEY_MALFORMED), "malformed");
    CHECK_EQ_STR(tg_bodykey_status_name(TG_BODYKEY_CONFLICT), "conflict");
    CHECK_EQ_INT(find(JSON, NULL, "{\"identity\":\"a\",\"identity\":\"b\"}", "identity"),
                 TG_BODYKEY_CONFLICT);
    CHECK(why != NULL && strstr(why, "different") != NULL);
    CHECK_EQ_INT(find(JSON, NULL, "{\"identity\":1}", "identity"), TG_BODYKEY_MALFORMED);
    CHECK_EQ_STR(why, "field is not a JSON string");
}

int main(void)
{
    RUN(classifies_content_types);
    RUN(content_type_variants);
    RUN(empty_body);
    RUN(json_basic);
    RUN(json_duplicates_and_folds);
    RUN(json_non_strings);
    RUN(json_padding);
    RUN(json_unescapes_as_go);
    RUN(json_is_strict);
    RUN(json_depth);
    RUN(value_cap);
    RUN(form_basic);
    RUN(form_duplicates);
    RUN(form_refuses_what_go_refuses);
    RUN(form_query);
    RUN(form_json_payload);
    RUN(multipart_basic);
    RUN(multipart_boundaries);
    RUN(multipart_is_strict);
    RUN(multipart_files_and_encodings);
    RUN(multipart_json_payload);
    RUN(every_prefix_is_safe);
    RUN(field_names);
    RUN(status_names);
    return TEST_SUMMARY();
}

/* Unit tests for src/router.c: path normalisation (table, bypass matrix,
 * random inputs against an independent reference) and the Host index. */
#include "../../src/router.c"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>

#include "test.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

/* Normalises a C string (or n bytes of it); "(400)" for a refusal. */
static const char *norm_n(const char *in, size_t n)
{
    static char out[4096];
    ssize_t r = tg_router_normalize_path(in, n, out, sizeof(out) - 1);
    if (r < 0)
        return "(400)";
    out[r] = '\0';
    return out;
}

static const char *norm(const char *in)
{
    return norm_n(in, strlen(in));
}

#define REFUSED "(400)"

TEST(normalize_table)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        /* The bypass matrix for a rule on "/_/": every spelling lands on
         * "/_/" or is refused. */
        {"/_/", "/_/"},
        {"/%5F/", "/_/"},
        {"/%5f/", "/_/"},
        {"/./_/", "/_/"},
        {"/api/../_/", "/_/"},
        {"//_/", "/_/"},
        {"/_%2F", REFUSED},
        {"/_%2f", REFUSED},
        {"/%2e%2e/_/", "/_/"},
        {"/%2E%2E/_/", "/_/"},
        {"/.%2e/_/", "/_/"},
        {"/%2e./_/", "/_/"},
        {"/a/b/../../_/", "/_/"},
        {"/a/%2e%2E/_/", "/_/"},
        {"/..%2f_/", REFUSED},
        {"/_%5C", REFUSED},
        {"/_%5c", REFUSED},
        {"/_\\", REFUSED},
        {"/%2F_/", REFUSED},
        {"///_///", "/_/"},
        {"/x/./../_/./", "/_/"},
        {"/%5f", "/_"},
        {"/%5F%2f", REFUSED},
        /* Dot segments. */
        {"/..", "/"},
        {"/../../x", "/x"},
        {"/a/./b/", "/a/b/"},
        {"/a/b/..", "/a/"},
        {"/a/b/.", "/a/b/"},
        {"/a/b/../", "/a/"},
        {"/a/.", "/a/"},
        {"/a/..", "/"},
        {"/a/../..", "/"},
        {"/.", "/"},
        {"/./", "/"},
        {"/...", "/..."},
        {"/.../", "/.../"},
        {"/a/.b", "/a/.b"},
        {"/a/..b/", "/a/..b/"},
        {"/a/b../", "/a/b../"},
        {"/a/%2e", "/a/"},
        {"/a/%2E%2e", "/"},
        {"/a/b/%2e%2e/c", "/a/c"},
        {"/a/b/c/../../../../d", "/d"},
        {"/a//..//b", "/b"},
        {"/a/b/./../c/", "/a/c/"},
        {"/.hidden/..", "/"},
        /* Slashes. */
        {"/", "/"},
        {"//", "/"},
        {"///", "/"},
        {"/a//b///c", "/a/b/c"},
        {"/a/", "/a/"},
        {"/a//", "/a/"},
        /* Escapes. */
        {"/%41", "/A"},
        {"/%7e", "/~"},
        {"/%7E", "/~"},
        {"/%3f", "/%3F"},
        {"/%3F", "/%3F"},
        {"/%2d%2E%5f%7E%30%39%61%7a%41%5A", "/-._~09azAZ"},
        {"/%3a%40%21%24%26%27%28%29%2a%2b%2c%3b%3d",
         "/%3A%40%21%24%26%27%28%29%2A%2B%2C%3B%3D"},
        {"/%c3%a9", "/%C3%A9"},
        {"/%e2%82%ac", "/%E2%82%AC"},
        {"/%ff", "/%FF"},
        {"/%80", "/%80"},
        {"/%20", "/%20"},
        {"/%23", "/%23"},
        {"/%25", "/%25"},
        {"/%252e%252e/", "/%252e%252e/"}, /* decoded once only */
        {"/%2561", "/%2561"},
        {"/%", REFUSED},
        {"/a%", REFUSED},
        {"/%4", REFUSED},
        {"/%4/", REFUSED},
        {"/%zz", REFUSED},
        {"/%g1", REFUSED},
        {"/%1g", REFUSED},
        {"/%%41", REFUSED},
        {"/%4%31", REFUSED},
        {"/% 1", REFUSED},
        {"/%+1", REFUSED},
        {"/%00", REFUSED},
        {"/%01", REFUSED},
        {"/%0a", REFUSED},
        {"/%0D", REFUSED},
        {"/%1f", REFUSED},
        {"/%7f", REFUSED},
        {"/%7F", REFUSED},
        {"/a%2Fb", REFUSED},
        /* Raw bytes. */
        {"/a b", REFUSED},
        {"/a\tb", REFUSED},
        {"/a\rb", REFUSED},
        {"/a\nb", REFUSED},
        {"/a\x7f", REFUSED},
        {"/a\x80", REFUSED},
        {"/\xc3\xa9", REFUSED},
        {"/\xff", REFUSED},
        {"/a#b", REFUSED},
        {"/a\\b", REFUSED},
        {"/a;b=c/d", "/a;b=c/d"},
        {"/a:b@c!$&'()*+,", "/a:b@c!$&'()*+,"},
        {"/~user/", "/~user/"},
        {"/api/v1/users", "/api/v1/users"},
        {"/a?b", "/a?b"},
        /* Not an absolute path. */
        {"", REFUSED},
        {"a", REFUSED},
        {"_/", REFUSED},
        {"%2F", REFUSED},
        {"*", REFUSED},
        {".", REFUSED},
        {"../", REFUSED},
        {"\\_/", REFUSED},
        {" /", REFUSED},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        const char *got = norm(cases[i].in);
        if (strcmp(got, cases[i].out) != 0)
            fprintf(stderr, "case %zu: \"%s\"\n", i, cases[i].in);
        CHECK_EQ_STR(got, cases[i].out);
    }
    CHECK(TG_ARRAY_LEN(cases) >= 50);

    /* A raw NUL, exactly n bytes. */
    CHECK_EQ_STR(norm_n("/a\0b", 4), REFUSED);
    CHECK_EQ_STR(norm_n("/ab\0", 3), "/ab");
    CHECK_EQ_STR(norm_n("/%41", 3), REFUSED); /* the escape is cut */
}

TEST(normalize_buffer_rules)
{
    char out[8];
    CHECK_EQ_INT(tg_router_normalize_path("/abc", 4, out, 3), -1);
    CHECK_EQ_INT(tg_router_normalize_path("/abc", 4, out, 4), 4);
    CHECK(memcmp(out, "/abc", 4) == 0);
    CHECK_EQ_INT(tg_router_normalize_path("/ab/..", 6, out, 6), 1);
    CHECK_EQ_INT(tg_router_normalize_path(NULL, 0, out, sizeof(out)), -1);

    /* In place. */
    char buf[] = "/a/%2e%2E/%5f//%3f/./b";
    ssize_t r = tg_router_normalize_path(buf, strlen(buf), buf, sizeof(buf));
    CHECK(r > 0);
    CHECK_EQ_MEM(buf, (size_t)(r > 0 ? r : 0), "/_/%3F/b");
}

/* An independent reference: decode into a string, split on '/', apply the
 * dot segments with a stack. Slower and simpler than the one-pass code. */
static int reference(const char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    char dec[4096];
    size_t d = 0;
    if (n == 0 || in[0] != '/')
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '%') {
            if (i + 2 >= n || !isxdigit((unsigned char)in[i + 1]) ||
                !isxdigit((unsigned char)in[i + 2]))
                return -1;
            char h[3] = {in[i + 1], in[i + 2], 0};
            unsigned v = (unsigned)strtoul(h, NULL, 16);
            i += 2;
            if (isalnum(v) || (v != 0 && strchr("-._~", (int)v) != NULL))
                dec[d++] = (char)v;
            else if (v < 0x20 || v == 0x7f || v == '/' || v == '\\')
                return -1;
            else {
                dec[d++] = '%';
                dec[d++] = hex[v >> 4];
                dec[d++] = hex[v & 15];
            }
        } else if (c <= ' ' || c >= 0x7f || c == '\\' || c == '#') {
            return -1;
        } else {
            dec[d++] = (char)c;
        }
    }
    dec[d] = '\0';

    const char *segs[4096];
    size_t lens[4096], depth = 0;
    bool trailing = false;
    const char *p = dec + 1;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        bool last = slash == NULL;
        if (len == 1 && p[0] == '.') {
            trailing = true;
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            if (depth > 0)
                depth--;
            trailing = true;
        } else if (len > 0) {
            segs[depth] = p;
            lens[depth++] = len;
            trailing = false;
        } else {
            trailing = true; /* empty: a slash ended the previous one */
        }
        if (last)
            break;
        p = slash + 1;
    }
    size_t o = 0;
    out[o++] = '/';
    for (size_t k = 0; k < depth; k++) {
        memcpy(out + o, segs[k], lens[k]);
        o += lens[k];
        if (k + 1 < depth || trailing)
            out[o++] = '/';
    }
    return (int)o;
}

/* The invariants the fuzz target also checks. */
static bool is_normal(const char *p, size_t n)
{
    if (n == 0 || p[0] != '/')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '/' && i + 1 < n && p[i + 1] == '/')
            return false;
        if (p[i] == '/' && i + 1 < n && p[i + 1] == '.') {
            size_t j = i + 2;
            if (j < n && p[j] == '.')
                j++;
            if (j == n || p[j] == '/')
                return false;
        }
        if (p[i] == '%') {
            if (i + 2 >= n)
                return false;
            int v = hexval((unsigned char)p[i + 1]) * 16 +
                    hexval((unsigned char)p[i + 2]);
            if (islower((unsigned char)p[i + 1]) ||
                islower((unsigned char)p[i + 2]) ||
                is_unreserved((unsigned char)v))
                return false;
        }
    }
    return true;
}

TEST(normalize_random_properties)
{
    /* Weighted towards the characters that matter. */
    static const char *const atoms[] = {
        "/",   "/",   "/",   ".",   ".",   "..", "%2e", "%2E",  "%2f", "%5f",
        "%5F", "%41", "%7e", "%3f", "%25", "%",  "a",   "b",    "_",   "~",
        "%00", "%7f", "%c3", "%a9", "2",   "e",  "f",   "%2",   "\\",  " ",
        "#",   "?",   ";",   "x",   "%zz", "//", "/./", "/../",
    };
    int accepted = 0;
    for (int iter = 0; iter < 200000; iter++) {
        char in[512];
        size_t n = 0;
        in[n++] = iter % 50 == 0 ? 'a' : '/';
        int count = (int)(rnd() % 24);
        for (int k = 0; k < count; k++) {
            const char *a = atoms[rnd() % TG_ARRAY_LEN(atoms)];
            size_t al = strlen(a);
            memcpy(in + n, a, al);
            n += al;
        }
        /* Sometimes a random byte anywhere. */
        if (rnd() % 10 == 0)
            in[rnd() % n] = (char)rnd();
        in[n] = '\0';

        char out[512], again[512], ref[4096], inplace[512];
        ssize_t r = tg_router_normalize_path(in, n, out, sizeof(out));
        int want = reference(in, n, ref);
        if ((r < 0) != (want < 0))
            fprintf(stderr, "\"%s\": %zd vs reference %d\n", in, r, want);
        CHECK_EQ_INT(r < 0, want < 0);
        if (r < 0 || want < 0)
            continue;
        accepted++;
        if ((size_t)r != (size_t)want || memcmp(out, ref, (size_t)r) != 0)
            fprintf(stderr, "\"%s\": \"%.*s\" vs reference \"%.*s\"\n", in,
                    (int)r, out, want, ref);
        CHECK_EQ_INT(r, want);
        CHECK((size_t)r <= n);
        CHECK(is_normal(out, (size_t)r));

        ssize_t r2 =
            tg_router_normalize_path(out, (size_t)r, again, sizeof(again));
        CHECK_EQ_INT(r2, r);
        CHECK(r2 == r && memcmp(out, again, (size_t)r) == 0);

        memcpy(inplace, in, n);
        ssize_t r3 = tg_router_normalize_path(inplace, n, inplace, n);
        CHECK_EQ_INT(r3, r);
        CHECK(r3 == r && memcmp(out, inplace, (size_t)r) == 0);
    }
    CHECK(accepted > 20000);
}

/* ---- host index --------------------------------------------------------- */

static int v_exact, v_wild, v_eu, v_tenant, v_any, v_api, v_deep;

static struct tg_host_index *sample_index(bool with_any)
{
    struct tg_host_index *ix = tg_router_hosts_new();
    char err[128];
    CHECK(ix != NULL);
    CHECK(tg_router_hosts_add(ix, "App.Test", &v_exact, err, sizeof(err)) == 0);
    CHECK(tg_router_hosts_add(ix, "api.app.test", &v_api, err, sizeof(err)) ==
          0);
    CHECK(tg_router_hosts_add(ix, "*.app.test", &v_wild, err, sizeof(err)) ==
          0);
    CHECK(tg_router_hosts_add(ix, "*.eu.app.test", &v_eu, err, sizeof(err)) ==
          0);
    CHECK(tg_router_hosts_add(ix, "{tenant}.platform.example.com", &v_tenant,
                              err, sizeof(err)) == 0);
    CHECK(tg_router_hosts_add(ix, "*.x.y.z.platform.example.com", &v_deep, err,
                              sizeof(err)) == 0);
    if (with_any)
        CHECK(tg_router_hosts_add(ix, "*", &v_any, err, sizeof(err)) == 0);
    return ix;
}

struct match_case {
    const char *host;
    int *want;
    const char *capture; /* NULL = no capture */
};

static void check_matches(const struct tg_host_index *ix,
                          const struct match_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct tg_str cap = {"junk", 4};
        void *got = tg_router_hosts_match(
            ix, tg_str_make(cases[i].host, strlen(cases[i].host)), &cap);
        if (got != (void *)cases[i].want)
            fprintf(stderr, "host \"%s\"\n", cases[i].host);
        CHECK(got == (void *)cases[i].want);
        if (cases[i].capture == NULL) {
            CHECK(cap.p == NULL && cap.n == 0);
        } else {
            CHECK(cap.p != NULL);
            if (cap.p != NULL)
                CHECK_EQ_MEM(cap.p, cap.n, cases[i].capture);
        }
    }
}

TEST(hosts_match)
{
    struct tg_host_index *ix = sample_index(true);
    static const struct match_case cases[] = {
        /* exact, any case, port, one trailing dot */
        {"app.test", &v_exact, NULL},
        {"APP.TEST", &v_exact, NULL},
        {"aPp.tEsT:8443", &v_exact, NULL},
        {"app.test.", &v_exact, NULL},
        {"app.test.:80", &v_exact, NULL},
        {"app.test..", &v_any, NULL},
        {"app.test:0", &v_exact, NULL},
        {"app.test:65535", &v_exact, NULL},
        /* exact beats wildcard */
        {"api.app.test", &v_api, NULL},
        {"API.app.test:1", &v_api, NULL},
        /* wildcard: one or more labels */
        {"www.app.test", &v_wild, NULL},
        {"a.b.c.app.test", &v_wild, NULL},
        {"x.api.app.test", &v_wild, NULL},
        {"_x-y.app.test", &v_wild, NULL},
        {"xapp.test", &v_any, NULL},
        {"test", &v_any, NULL},
        /* the longest suffix wins */
        {"eu.app.test", &v_wild, NULL},
        {"fr.eu.app.test", &v_eu, NULL},
        {"a.fr.eu.app.test", &v_eu, NULL},
        /* capture: exactly one label, original case kept */
        {"t1.platform.example.com", &v_tenant, "t1"},
        {"Acme-Corp.Platform.Example.Com:443", &v_tenant, "Acme-Corp"},
        {"acme.platform.example.com.", &v_tenant, "acme"},
        {"a.b.platform.example.com", &v_any, NULL},
        {"platform.example.com", &v_any, NULL},
        /* a capture the caller must refuse still matches */
        {"-bad_.platform.example.com", &v_tenant, "-bad_"},
        /* deeper wildcard under a capture suffix */
        {"w.x.y.z.platform.example.com", &v_deep, NULL},
        {"v.w.x.y.z.platform.example.com", &v_deep, NULL},
        {"x.y.z.platform.example.com", &v_any, NULL},
        /* not names: only "*" */
        {"[::1]", &v_any, NULL},
        {"[::1]:8080", &v_any, NULL},
        {"[2001:db8::1]:443", &v_any, NULL},
        {"a..app.test", &v_any, NULL},
        {".app.test", &v_any, NULL},
        {"a b.app.test", &v_any, NULL},
        {"a/b.app.test", &v_any, NULL},
        {"\xc3\xa9.app.test", &v_any, NULL},
        {"*.app.test", &v_any, NULL},
        {".", &v_any, NULL},
        {"127.0.0.1", &v_any, NULL},
        /* malformed: nothing */
        {"", NULL, NULL},
        {":80", NULL, NULL},
        {"app.test:", NULL, NULL},
        {"app.test:65536", NULL, NULL},
        {"app.test:123456", NULL, NULL},
        {"app.test:8a", NULL, NULL},
        {"app.test:-1", NULL, NULL},
        {"app.test:80:80", NULL, NULL},
        {"::1", NULL, NULL},
        {"[::1", NULL, NULL},
        {"::1]", NULL, NULL},
        {"[::1]x", NULL, NULL},
        {"[fe80::1%eth0]", NULL, NULL},
        {"[]", NULL, NULL},
    };
    check_matches(ix, cases, TG_ARRAY_LEN(cases));
    tg_router_hosts_free(ix);

    /* Without "*", unknown hosts get NULL. */
    ix = sample_index(false);
    static const struct match_case strict[] = {
        {"app.test", &v_exact, NULL},
        {"other.test", NULL, NULL},
        {"[::1]:8080", NULL, NULL},
        {"a.b.platform.example.com", NULL, NULL},
        {"app.test..", NULL, NULL},
        {"x.platform.example.com", &v_tenant, "x"},
    };
    check_matches(ix, strict, TG_ARRAY_LEN(strict));
    tg_router_hosts_free(ix);
}

TEST(hosts_ip_literals)
{
    struct tg_host_index *ix = tg_router_hosts_new();
    char err[128];
    CHECK(tg_router_hosts_add(ix, "127.0.0.1", &v_exact, err, sizeof(err)) ==
          0);
    CHECK(tg_router_hosts_add(ix, "[::1]", &v_exact, err, sizeof(err)) == -1);
    static const struct match_case cases[] = {
        {"127.0.0.1", &v_exact, NULL},
        {"127.0.0.1:8080", &v_exact, NULL},
        {"[::1]:8080", NULL, NULL},
    };
    check_matches(ix, cases, TG_ARRAY_LEN(cases));
    tg_router_hosts_free(ix);
}

TEST(hosts_duplicates)
{
    static const struct {
        const char *first, *second;
    } dups[] = {
        {"app.test", "app.test"},         {"app.test", "APP.Test"},
        {"app.test", "app.test."},        {"*", "*"},
        {"*.app.test", "*.app.test"},     {"*.app.test", "*.APP.test."},
        {"{a}.app.test", "{b}.app.test"}, {"*.app.test", "{t}.app.test"},
        {"{t}.app.test", "*.app.test"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(dups); i++) {
        struct tg_host_index *ix = tg_router_hosts_new();
        char err[128] = "";
        CHECK(tg_router_hosts_add(ix, dups[i].first, &v_exact, err,
                                  sizeof(err)) == 0);
        CHECK(tg_router_hosts_add(ix, dups[i].second, &v_wild, err,
                                  sizeof(err)) == -1);
        CHECK(strstr(err, "duplicate") != NULL);
        /* The first one still stands. */
        struct tg_str cap;
        CHECK(tg_router_hosts_match(ix, TG_STR("x.app.test"), &cap) != &v_wild);
        tg_router_hosts_free(ix);
    }

    /* Exact, wildcard and "*" on one name are three patterns, not dups. */
    struct tg_host_index *ix = tg_router_hosts_new();
    char err[128];
    CHECK(tg_router_hosts_add(ix, "{t}.app.test", &v_tenant, err,
                              sizeof(err)) == 0);
    CHECK(tg_router_hosts_add(ix, "app.test", &v_exact, err, sizeof(err)) == 0);
    CHECK(tg_router_hosts_add(ix, "*.t.app.test", &v_wild, err, sizeof(err)) ==
          0);
    CHECK(tg_router_hosts_add(ix, "t.app.test", &v_api, err, sizeof(err)) == 0);
    CHECK(tg_router_hosts_add(ix, "*", &v_any, err, sizeof(err)) == 0);
    static const struct match_case cases[] = {
        {"app.test", &v_exact, NULL},   {"t.app.test", &v_api, NULL},
        {"u.app.test", &v_tenant, "u"}, {"x.t.app.test", &v_wild, NULL},
        {"x.u.app.test", &v_any, NULL},
    };
    check_matches(ix, cases, TG_ARRAY_LEN(cases));
    tg_router_hosts_free(ix);
}

TEST(hosts_malformed_patterns)
{
    char label63[64], label64[65], long_name[300], max_name[300];
    memset(label63, 'a', 63);
    label63[63] = '\0';
    memset(label64, 'a', 64);
    label64[64] = '\0';
    /* 4 * 63 + 3 dots = 255 bytes; 253 is the limit. */
    snprintf(long_name, sizeof(long_name), "%s.%s.%s.%s", label63, label63,
             label63, label63);
    snprintf(max_name, sizeof(max_name), "%s", long_name);
    max_name[253] = '\0'; /* ends in a 61-byte label */

    static const char *const bad[] = {
        "",          ".",          "..",    "a..b", ".a",     "a.b..",
        "*.",        "*.*.a",      "a.*.b", "a.*",  "*a.b",   "a*.b",
        "**.b",      "*..b",       "{t}",   "{t}.", "{t}x.b", "x{t}.b",
        "{1t}.b",    "{t-x}.b",    "{}.b",  "{t.b", "{t}}.b", "{t.b}.c",
        "{t}.{u}.b", "{t}.*.b",    "a b",   "a/b",  "a:80",   "[::1]",
        "a\tb",      "\xc3\xa9.b", "a%2eb", "a.b/", "*.a b",  "{t }.b",
        "{t}.a..b",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        struct tg_host_index *ix = tg_router_hosts_new();
        char err[128] = "";
        int rc = tg_router_hosts_add(ix, bad[i], &v_exact, err, sizeof(err));
        if (rc != -1)
            fprintf(stderr, "accepted \"%s\"\n", bad[i]);
        CHECK_EQ_INT(rc, -1);
        CHECK(strncmp(err, "host pattern \"", 14) == 0);
        tg_router_hosts_free(ix);
    }

    struct tg_host_index *ix = tg_router_hosts_new();
    char err[400], pat[320];
    CHECK(tg_router_hosts_add(ix, label63, &v_exact, err, sizeof(err)) == 0);
    CHECK(tg_router_hosts_add(ix, label64, &v_exact, err, sizeof(err)) == -1);
    CHECK(strstr(err, "label longer than 63") != NULL);
    CHECK(tg_router_hosts_add(ix, max_name, &v_exact, err, sizeof(err)) == 0);
    CHECK(tg_router_hosts_add(ix, long_name, &v_exact, err, sizeof(err)) == -1);
    CHECK(strstr(err, "longer than 253") != NULL);
    snprintf(pat, sizeof(pat), "*.%s", max_name);
    CHECK(tg_router_hosts_add(ix, pat, &v_wild, err, sizeof(err)) == 0);
    snprintf(pat, sizeof(pat), "%s.", max_name); /* trailing dot is free */
    CHECK(tg_router_hosts_add(ix, pat, &v_exact, err, sizeof(err)) == -1);
    CHECK(strstr(err, "duplicate") != NULL);
    CHECK(tg_router_hosts_add(ix, "ok.test", NULL, err, sizeof(err)) == -1);
    CHECK(tg_router_hosts_add(ix, "a_b-c.x-1.test", &v_exact, err,
                              sizeof(err)) == 0);
    CHECK(tg_router_hosts_add(ix, "{Tenant_1}.test", &v_tenant, err,
                              sizeof(err)) == 0);
    CHECK(tg_router_hosts_add(ix, "{_}.x.test", &v_tenant, err, sizeof(err)) ==
          0);
    /* A short error buffer is cut, not overrun; NULL err is fine. */
    char small[6];
    CHECK(tg_router_hosts_add(ix, "a..b", &v_exact, small, sizeof(small)) ==
          -1);
    CHECK_EQ_STR(small, "host ");
    CHECK(tg_router_hosts_add(ix, "a..b", &v_exact, NULL, 0) == -1);

    struct tg_str cap;
    CHECK(tg_router_hosts_match(ix, tg_str_make(max_name, strlen(max_name)),
                                &cap) == &v_exact);
    CHECK(tg_router_hosts_match(ix, tg_str_make(long_name, strlen(long_name)),
                                &cap) == NULL);
    tg_router_hosts_free(ix);
    tg_router_hosts_free(NULL);
}

TEST(hosts_many_exact_names)
{
    enum { N = 100000 };
    struct tg_host_index *ix = tg_router_hosts_new();
    char name[64], err[128];
    static char values[N];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "Host-%d.Example.COM", i);
        if (tg_router_hosts_add(ix, name, &values[i], err, sizeof(err)) != 0) {
            CHECK(!"add failed");
            break;
        }
    }
    CHECK(tg_router_hosts_add(ix, "*.example.com", &v_wild, err, sizeof(err)) ==
          0);
    int wrong = 0;
    for (int i = 0; i < N; i++) {
        int len = snprintf(name, sizeof(name), "host-%d.example.com:443", i);
        struct tg_str cap;
        if (tg_router_hosts_match(ix, tg_str_make(name, (size_t)len), &cap) !=
            &values[i])
            wrong++;
        len = snprintf(name, sizeof(name), "host-%d.example.com", N + i);
        if (tg_router_hosts_match(ix, tg_str_make(name, (size_t)len), &cap) !=
            &v_wild)
            wrong++;
    }
    CHECK_EQ_INT(wrong, 0);
    CHECK(ix->used == N + 1);
    CHECK(ix->used * 2 <= ix->cap);
    tg_router_hosts_free(ix);
}

TEST(host_without_port)
{
    static const struct {
        const char *in, *host; /* host NULL = malformed */
    } cases[] = {
        {"app.test", "app.test"},
        {"app.test:8080", "app.test"},
        {"app.test:1", "app.test"},
        {"app.test:65535", "app.test"},
        {"app.test:00080", "app.test"},
        {"a", "a"},
        {"127.0.0.1:80", "127.0.0.1"},
        {"[::1]", "[::1]"},
        {"[::1]:8080", "[::1]"},
        {"[2001:DB8::1]:443", "[2001:DB8::1]"},
        {"[::ffff:1.2.3.4]", "[::ffff:1.2.3.4]"},
        {"app.test.", "app.test."},
        {"", NULL},
        {":", NULL},
        {":80", NULL},
        {"app.test:", NULL},
        {"app.test:65536", NULL},
        {"app.test:100000", NULL},
        {"app.test:8o", NULL},
        {"app.test: 80", NULL},
        {"app.test:80 ", NULL},
        {"app.test:+80", NULL},
        {"a:b:c", NULL},
        {"::1", NULL},
        {"[::1", NULL},
        {"::1]", NULL},
        {"a]", NULL},
        {"a[b", NULL},
        {"[]", NULL},
        {"[1.2.3.4]", NULL},
        {"[::1]:", NULL},
        {"[::1]80", NULL},
        {"[::1]]", NULL},
        {"[[::1]]", NULL},
        {"[fe80::1%25eth0]", NULL},
        {"[v1.fe]", NULL},
        {"[::1]:80:80", NULL},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        struct tg_str h = {NULL, 0};
        bool ok = tg_router_host_without_port(
            tg_str_make(cases[i].in, strlen(cases[i].in)), &h);
        if (ok != (cases[i].host != NULL))
            fprintf(stderr, "\"%s\"\n", cases[i].in);
        CHECK_EQ_INT(ok, cases[i].host != NULL);
        if (ok && cases[i].host != NULL) {
            CHECK(h.p == cases[i].in); /* a view, not a copy */
            CHECK_EQ_MEM(h.p, h.n, cases[i].host);
        }
    }
}

TEST(valid_label)
{
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"a", true},     {"tenant123", true}, {"Acme-Corp", true},
        {"a-b-c", true}, {"0", true},         {"9lives", true},
        {"", false},     {"-a", false},       {"a-", false},
        {"-", false},    {"a_b", false},      {"a.b", false},
        {"a b", false},  {"\xc3\xa9", false}, {"a*", false},
        {"{t}", false},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++)
        CHECK_EQ_INT(
            tg_router_valid_label(tg_str_make(cases[i].s, strlen(cases[i].s))),
            cases[i].ok);
    char l63[63], l64[64];
    memset(l63, 'z', sizeof(l63));
    memset(l64, 'z', sizeof(l64));
    CHECK(tg_router_valid_label(tg_str_make(l63, sizeof(l63))));
    CHECK(!tg_router_valid_label(tg_str_make(l64, sizeof(l64))));
    /* Embedded NUL. */
    CHECK(!tg_router_valid_label(tg_str_make("a\0b", 3)));
}

int main(void)
{
    RUN(normalize_table);
    RUN(normalize_buffer_rules);
    RUN(normalize_random_properties);
    RUN(hosts_match);
    RUN(hosts_ip_literals);
    RUN(hosts_duplicates);
    RUN(hosts_malformed_patterns);
    RUN(hosts_many_exact_names);
    RUN(host_without_port);
    RUN(valid_label);
    return TEST_SUMMARY();
}

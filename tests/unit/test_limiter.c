/* Unit tests for the rate-limit key encoder in src/limiter.c: escaping,
 * hashing of long values and keys, the fallback namespace, body values
 * trimmed and folded, and the admin API's normalisation agreeing with what
 * enforcement builds.
 *
 * Regression (issue 16): parts were joined with an unescaped '|' and the
 * fallback was "~" plus the address, so a JSON identity "~1.2.3.4" charged
 * client 1.2.3.4's bucket and "a|b" in one part equalled two parts. */
#include "../../src/limiter.c"

#include "test.h"

/* Encodes one value as a head part does; returns a static string. */
static const char *enc(const char *s)
{
    static char buf[MAX_KEY + 1];
    struct keybuf k = {buf, 0, MAX_KEY, false};
    kb_value(&k, s, strlen(s));
    buf[k.n] = '\0';
    return buf;
}

static const char *enc_body(const char *s)
{
    static char buf[MAX_KEY + 1];
    char v[MAX_BODY_VALUE];
    size_t n = strlen(s);
    memcpy(v, s, n);
    struct keybuf k = {buf, 0, MAX_KEY, false};
    kb_body_value(&k, v, n);
    buf[k.n] = '\0';
    return buf;
}

TEST(escapes_separators_and_markers)
{
    CHECK_EQ_STR(enc("alice@example.com"), "alice@example.com");
    CHECK_EQ_STR(enc("a|b"), "a%7Cb");
    CHECK_EQ_STR(enc("~1.2.3.4"), "%7E1.2.3.4");
    CHECK_EQ_STR(enc("#abc"), "%23abc");
    CHECK_EQ_STR(enc("50%"), "50%25");
    CHECK_EQ_STR(enc("a b\tc\n"), "a%20b%09c%0A");
    CHECK_EQ_STR(enc("\x7f"), "%7F");
    /* UTF-8 stays as it is: it cannot pose as anything. */
    CHECK_EQ_STR(enc("j\xc3\xb6rg"), "j\xc3\xb6rg");
    CHECK_EQ_STR(enc(""), "");
}

TEST(no_value_collides_with_a_fallback_or_a_hash)
{
    /* Every escaped value starts with something other than '~' or '#':
     * the fallback and hash namespaces are out of reach. */
    static const char *const values[] = {"~", "~1.2.3.4", "#", "#0123", "%7E", "|", "||"};
    for (size_t i = 0; i < TG_ARRAY_LEN(values); i++) {
        const char *e = enc(values[i]);
        CHECK(e[0] != '~' && e[0] != '#');
        CHECK(strchr(e, '|') == NULL);
    }
    /* "%7E" itself encodes differently from "~". */
    char a[64];
    snprintf(a, sizeof(a), "%s", enc("%7E"));
    CHECK(strcmp(a, enc("~")) != 0);
}

TEST(long_values_are_hashed_not_cut)
{
    char a[300], b[300];
    memset(a, 'x', sizeof(a) - 1);
    a[sizeof(a) - 1] = '\0';
    memcpy(b, a, sizeof(b));
    b[sizeof(b) - 2] = 'y'; /* differs only at the very end */
    char ea[64], eb[64];
    snprintf(ea, sizeof(ea), "%s", enc(a));
    snprintf(eb, sizeof(eb), "%s", enc(b));
    CHECK_EQ_INT(strlen(ea), 33);
    CHECK_EQ_INT(ea[0], '#');
    CHECK(strcmp(ea, eb) != 0);
    /* The limit is on the escaped length: 43 bytes that each need escaping
     * (129 escaped) are hashed, 42 (126) are not. */
    char sp[64];
    memset(sp, ' ', 43);
    sp[43] = '\0';
    CHECK_EQ_INT(enc(sp)[0], '#');
    sp[42] = '\0';
    CHECK_EQ_INT(strlen(enc(sp)), 126);
}

TEST(whole_keys_beyond_the_store_limit_are_hashed)
{
    char buf[MAX_KEY];
    struct keybuf k = {buf, 0, sizeof(buf), false};
    for (int i = 0; i < 8; i++) {
        if (i > 0)
            kb_put(&k, "|", 1);
        kb_value(&k, "0123456789012345678901234567890123456789012345678901234567890123", 64);
    }
    CHECK(k.n > MAX_STORED);
    size_t n = finish_key(buf, &k);
    CHECK_EQ_INT(n, 33);
    CHECK_EQ_INT(buf[0], '#');
    /* A short key is kept as it is. */
    struct keybuf s = {buf, 0, sizeof(buf), false};
    kb_put(&s, "203.0.113.7", 11);
    CHECK_EQ_INT(finish_key(buf, &s), 11);
}

TEST(body_values_are_trimmed_and_folded)
{
    CHECK_EQ_STR(enc_body("Victim@Example.COM"), "victim@example.com");
    CHECK_EQ_STR(enc_body("  victim@example.com\t\r\n"), "victim@example.com");
    /* Non-ASCII is not folded (SQLite's NOCASE folds ASCII only). */
    CHECK_EQ_STR(enc_body("\xc3\x96ZIL"), "\xc3\x96zil");
    /* Inner white space is kept, escaped. */
    CHECK_EQ_STR(enc_body("a b"), "a%20b");
    CHECK_EQ_STR(enc_body("~1.2.3.4"), "%7E1.2.3.4");
}

/* A config with a few policies, for the admin key checks. */
static struct tg_config *load(const char *yaml)
{
    char err[4096];
    struct tg_config *c = tg_config_load_buffer("t.yaml", yaml, strlen(yaml), err, sizeof(err));
    if (c == NULL)
        fprintf(stderr, "%s", err);
    return c;
}

static const struct tg_config_policy *policy(const struct tg_config *c, const char *name)
{
    for (size_t i = 0; i < c->rate_limit.npolicies; i++)
        if (strcmp(c->rate_limit.policies[i].name, name) == 0)
            return &c->rate_limit.policies[i];
    return NULL;
}

static const char *admin(const struct tg_config *c, const char *pol, const char *text)
{
    static char out[TG_RATELIMIT_LOCAL_KEY_MAX + 1];
    const char *why = NULL;
    size_t n = tg_limiter_admin_key(c, policy(c, pol), text, strlen(text), out,
                                    TG_RATELIMIT_LOCAL_KEY_MAX, &why);
    if (n == 0)
        return why != NULL ? why : "(no reason)";
    out[n] = '\0';
    return out;
}

TEST(admin_keys_match_enforcement)
{
    struct tg_config *c = load(
        "listen: [{address: 127.0.0.1:18080}]\n"
        "admin: {listen: off}\n"
        "rate_limit:\n"
        "  policies:\n"
        "    ip: {rate: 1/s, key: [ip]}\n"
        "    acct: {rate: 1/s, key: [body:identity], count: failures}\n"
        "    both: {rate: 1/s, key: [ip, header:X-Key]}\n"
        "upstreams: {app: {servers: [127.0.0.1:1]}}\n"
        "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n");
    CHECK(c != NULL);
    if (c == NULL)
        return;
    /* Addresses in canonical form, IPv6 grouped by /64. */
    CHECK_EQ_STR(admin(c, "ip", "203.0.113.7"), "203.0.113.7");
    CHECK_EQ_STR(admin(c, "ip", "2001:DB8::1:2:3:4"), "2001:db8::");
    CHECK_EQ_STR(admin(c, "ip", "::ffff:192.0.2.1"), "192.0.2.1");
    CHECK_EQ_STR(admin(c, "ip", "not-an-ip"), "an ip part must be an address");
    /* Body values as enforcement folds them: Carol@Example.com unlocks
     * the bucket carol@example.com. */
    CHECK_EQ_STR(admin(c, "acct", "Carol@Example.com"), "carol@example.com");
    CHECK_EQ_STR(admin(c, "acct", " carol@example.com "), "carol@example.com");
    CHECK_EQ_STR(admin(c, "acct", "a+b@example.com"), "a+b@example.com");
    /* The fallback namespace, reachable on purpose. */
    CHECK_EQ_STR(admin(c, "acct", "~10.0.0.1"), "~10.0.0.1");
    /* Several parts joined with '|'; the last takes the rest. */
    CHECK_EQ_STR(admin(c, "both", "10.0.0.1|k|1"), "10.0.0.1|k%7C1");
    CHECK(strstr(admin(c, "both", "10.0.0.1"), "several parts") != NULL);
    tg_config_unref(c);
}

int main(void)
{
    RUN(escapes_separators_and_markers);
    RUN(no_value_collides_with_a_fallback_or_a_hash);
    RUN(long_values_are_hashed_not_cut);
    RUN(whole_keys_beyond_the_store_limit_are_hashed);
    RUN(body_values_are_trimmed_and_folded);
    RUN(admin_keys_match_enforcement);
    return TEST_SUMMARY();
}

/* W3C Trace Context parsing, id generation and sampling (trace.c). */
#include "../../src/trace.c"

#include <stdlib.h>

#include "str.h"
#include "test.h"

#define TID "4bf92f3577b34da6a3ce929d0e0e4736"
#define PID "00f067aa0ba902b7"

static bool parse(const char *s, struct tg_trace_parent *tp)
{
    return tg_trace_parse_parent(s, strlen(s), tp);
}

TEST(parent_valid)
{
    struct tg_trace_parent tp;
    CHECK(parse("00-" TID "-" PID "-01", &tp));
    CHECK_EQ_INT(tp.trace_id[0], 0x4b);
    CHECK_EQ_INT(tp.trace_id[15], 0x36);
    CHECK_EQ_INT(tp.parent_id[0], 0x00);
    CHECK_EQ_INT(tp.parent_id[7], 0xb7);
    CHECK_EQ_INT(tp.flags, 1);
    CHECK(parse("00-" TID "-" PID "-00", &tp));
    CHECK_EQ_INT(tp.flags, 0);
    /* Unknown flags are read (the sampled bit is what counts). */
    CHECK(parse("00-" TID "-" PID "-ff", &tp));
    CHECK_EQ_INT(tp.flags, 0xff);
    /* A later version: its version-00 prefix, then the end or a '-'. */
    CHECK(parse("01-" TID "-" PID "-01", &tp));
    CHECK(parse("cc-" TID "-" PID "-01-more-fields", &tp));
    CHECK_EQ_INT(tp.flags, 1);
}

TEST(parent_invalid)
{
    static const char *const bad[] = {
        "",
        "00",
        "00-" TID "-" PID "-0",                           /* short */
        "00-" TID "-" PID "-01-",                         /* 00 is exactly 55 */
        "00-" TID "-" PID "-01x",                         /* ditto */
        "cc-" TID "-" PID "-01x",                         /* later version: '-' after */
        "ff-" TID "-" PID "-01",                          /* version ff is invalid */
        "0g-" TID "-" PID "-01",                          /* not hex */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-" PID "-01", /* upper case */
        "00-" TID "-00F067AA0BA902B7-01",
        "00-" TID "-" PID "-0A",
        "00-00000000000000000000000000000000-" PID "-01", /* zero trace id */
        "00-" TID "-0000000000000000-01",                 /* zero parent id */
        "00_" TID "-" PID "-01",
        "00-" TID "_" PID "-01",
        "00-" TID "-" PID "_01",
        " 00-" TID "-" PID "-01",
    };
    struct tg_trace_parent tp;
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        if (parse(bad[i], &tp)) {
            fprintf(stderr, "accepted: '%s'\n", bad[i]);
            CHECK(!"an invalid traceparent was accepted");
        }
    }
    /* A NUL inside is not hex either. */
    char nul[] = "00-" TID "-" PID "-01";
    nul[10] = '\0';
    CHECK(!tg_trace_parse_parent(nul, 55, &tp));
}

static bool state(const char *s)
{
    return tg_trace_valid_state(s, strlen(s));
}

TEST(tracestate)
{
    CHECK(state("congo=t61rcWkgMzE"));
    CHECK(state("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
    CHECK(state("rojo=1 , congo=2"));
    CHECK(state("rojo=1,,congo=2")); /* empty members are allowed */
    CHECK(state(""));
    CHECK(state("tenant1@vendor=x"));
    CHECK(state("1tenant@vendor=x"));
    CHECK(state("a_b-c*d/e=v a l"));
    CHECK(!state("Upper=x"));
    CHECK(!state("1abc=x"));  /* a simple key starts with a letter */
    CHECK(!state("a=b=c"));   /* '=' in a value */
    CHECK(!state("a="));      /* empty value */
    CHECK(state("a=b \t"));   /* trailing white space is OWS around the member */
    CHECK(state("a= b"));     /* a value may start with a space */
    CHECK(!state("a=b\x01")); /* control byte */
    CHECK(!state("a=\xc3\xa9"));
    CHECK(!state("a=1,a=2")); /* the same key twice */
    CHECK(!state("t@Vendor=x"));
    CHECK(!state("t@v123456789012345=x")); /* system id over 14 */
    CHECK(!state("@v=x"));
    CHECK(!state("t@=x"));
    CHECK(!state("novalue"));
    /* 32 members pass, 33 do not. */
    char buf[600];
    size_t n = 0;
    for (int i = 0; i < 33; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%sk%d=v", i ? "," : "", i);
    CHECK(!tg_trace_valid_state(buf, n));
    char *last = strrchr(buf, ',');
    CHECK(tg_trace_valid_state(buf, (size_t)(last - buf)));
    /* 512 bytes pass, 513 do not. */
    char big[514];
    memset(big, 'x', sizeof(big));
    memcpy(big, "k=", 2);
    CHECK(!tg_trace_valid_state(big, 513));
    big[255 + 2] = ',';
    memcpy(big + 258, "j=", 2);
    CHECK(tg_trace_valid_state(big, 512));
}

TEST(tracestate_split_everywhere)
{
    /* Every prefix of a valid list either is valid or ends inside a member;
     * nothing reads past the length given. */
    const char *s = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,t@v=1";
    size_t n = strlen(s);
    for (size_t i = 0; i <= n; i++) {
        char *copy = malloc(i + 1);
        memcpy(copy, s, i);
        (void)tg_trace_valid_state(copy, i);
        free(copy);
    }
    CHECK(tg_trace_valid_state(s, n));
}

TEST(ids_and_format)
{
    uint8_t a[16], b[16];
    tg_trace_new_id(a, 16);
    tg_trace_new_id(b, 16);
    CHECK(memcmp(a, b, 16) != 0);
    CHECK(!all_zero(a, 16));
    uint8_t s[8];
    tg_trace_new_id(s, 8);
    CHECK(!all_zero(s, 8));
    struct tg_trace_parent tp;
    CHECK(parse("00-" TID "-" PID "-01", &tp));
    char out[56];
    CHECK_EQ_INT(tg_trace_format_parent(out, tp.trace_id, tp.parent_id, 1), 55);
    CHECK_EQ_STR(out, "00-" TID "-" PID "-01");
    tg_trace_format_parent(out, tp.trace_id, s, 0);
    struct tg_trace_parent back;
    CHECK(tg_trace_parse_parent(out, 55, &back));
    CHECK(memcmp(back.parent_id, s, 8) == 0);
    CHECK_EQ_INT(back.flags, 0);
    /* The generator's draws fill [0, 1). */
    double lo = 1, hi = 0;
    for (int i = 0; i < 10000; i++) {
        double d = tg_trace_random();
        CHECK(d >= 0 && d < 1);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    CHECK(lo < 0.01 && hi > 0.99);
}

TEST(sampling)
{
    /* The parent decides, whatever the ratio. */
    CHECK(tg_trace_decide(true, 0x01, 0.0, 0.5));
    CHECK(tg_trace_decide(true, 0x03, 0.0, 0.5));
    CHECK(!tg_trace_decide(true, 0x00, 1.0, 0.0));
    CHECK(!tg_trace_decide(true, 0x02, 1.0, 0.0));
    /* No parent: the ratio. */
    CHECK(tg_trace_decide(false, 0, 1.0, 0.999999));
    CHECK(!tg_trace_decide(false, 0, 0.0, 0.0));
    CHECK(tg_trace_decide(false, 0, 0.25, 0.2));
    CHECK(!tg_trace_decide(false, 0, 0.25, 0.3));
    int n = 0;
    for (int i = 0; i < 100000; i++)
        n += tg_trace_decide(false, 0, 0.1, tg_trace_random());
    CHECK(n > 9000 && n < 11000);
}

int main(void)
{
    RUN(parent_valid);
    RUN(parent_invalid);
    RUN(tracestate);
    RUN(tracestate_split_everywhere);
    RUN(ids_and_format);
    RUN(sampling);
    return TEST_SUMMARY();
}

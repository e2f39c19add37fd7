/* Request ids: the hex writer against printf's, and the id's form. */
#include "../../src/headers.c"

#include <inttypes.h>

#include "test.h"

TEST(hex_matches_printf)
{
    uint64_t v = 0x0123456789abcdefull;
    for (int i = 0; i < 10000; i++) {
        char got[17], want[17];
        hex64(got, v);
        got[16] = '\0';
        snprintf(want, sizeof(want), "%016" PRIx64, v);
        CHECK_EQ_STR(got, want);
        v = v * 6364136223846793005ull + 1442695040888963407ull;
    }
    char edge[17] = {0};
    hex64(edge, 0);
    CHECK_EQ_STR(edge, "0000000000000000");
    hex64(edge, UINT64_MAX);
    CHECK_EQ_STR(edge, "ffffffffffffffff");
    hex64(edge, 0x9a9a9a9a0f0f0f0full);
    CHECK_EQ_STR(edge, "9a9a9a9a0f0f0f0f");
}

TEST(new_ids_are_32_hex_digits_and_differ)
{
    char a[65], b[65];
    tg_headers_new_request_id(a);
    tg_headers_new_request_id(b);
    CHECK_EQ_INT(strlen(a), 32);
    CHECK(strspn(a, "0123456789abcdef") == 32);
    CHECK(strcmp(a, b) != 0);
    CHECK(tg_headers_valid_request_id(tg_str_make(a, 32)));
}

int main(void)
{
    RUN(hex_matches_printf);
    RUN(new_ids_are_32_hex_digits_and_differ);
    return TEST_SUMMARY();
}

/* The JSON field reader used for json: rate-limit keys. */
#include "../../src/json.c"

#include "test.h"

static bool find(const char *doc, const char *field, char *out, size_t cap, size_t *n)
{
    return tg_json_find_string(doc, strlen(doc), field, strlen(field), out, cap, n);
}

TEST(finds_top_level_strings)
{
    char out[64];
    size_t n;
    CHECK(find("{\"identity\":\"a@b.c\",\"password\":\"x\"}", "identity", out, sizeof(out), &n));
    CHECK_EQ_MEM(out, n, "a@b.c");
    CHECK(find(" { \"password\" : \"x\" , \"identity\" : \"bob\" } ", "identity", out, sizeof(out), &n));
    CHECK_EQ_MEM(out, n, "bob");
    CHECK(find("{\"a\":{\"identity\":\"nested\"},\"identity\":\"top\"}", "identity", out, sizeof(out), &n));
    CHECK_EQ_MEM(out, n, "top");
    CHECK(find("{\"a\":[1,2,{\"b\":[true,false,null]}],\"id\":\"x\"}", "id", out, sizeof(out), &n));
    CHECK_EQ_MEM(out, n, "x");
    CHECK(find("{\"id\":\"\"}", "id", out, sizeof(out), &n) && n == 0);
}

TEST(unescapes)
{
    char out[64];
    size_t n;
    CHECK(find("{\"id\":\"a\\\"b\\\\c\\/d\\n\"}", "id", out, sizeof(out), &n));
    CHECK_EQ_MEM(out, n, "a\"b\\c/d\n");
    CHECK(find("{\"id\":\"\\u00e9\\u20ac\\ud83d\\ude00\"}", "id", out, sizeof(out), &n));
    CHECK_EQ_MEM(out, n, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    CHECK(find("{\"i\\u0064\":\"escaped name\"}", "id", out, sizeof(out), &n));
    CHECK_EQ_MEM(out, n, "escaped name");
}

TEST(refuses_what_it_cannot_read)
{
    char out[8];
    size_t n;
    CHECK(!find("[\"id\",\"x\"]", "id", out, sizeof(out), &n));
    CHECK(!find("{\"id\":5}", "id", out, sizeof(out), &n));
    CHECK(!find("{\"id\":\"truncat", "id", out, sizeof(out), &n));
    CHECK(!find("{\"id\":\"far too long for eight\"}", "id", out, sizeof(out), &n));
    CHECK(!find("{\"other\":\"x\"}", "id", out, sizeof(out), &n));
    CHECK(!find("{\"id\":\"\\ud800\"}", "id", out, sizeof(out), &n));
    CHECK(!find("{\"id\":\"a\x01\"}", "id", out, sizeof(out), &n));
    CHECK(!find("", "id", out, sizeof(out), &n));
    CHECK(!find("{\"a\":\"b\" \"id\":\"x\"}", "id", out, sizeof(out), &n));
    /* Deep nesting is bounded. */
    char deep[400];
    size_t k = 0;
    deep[k++] = '{';
    memcpy(deep + k, "\"a\":", 4);
    k += 4;
    for (int i = 0; i < 150; i++)
        deep[k++] = '[';
    deep[k] = '\0';
    CHECK(!find(deep, "id", out, sizeof(out), &n));
}

TEST(every_prefix_is_safe)
{
    const char *doc = "{\"x\":[1,{\"y\":\"z\\u00e9\"}],\"identity\":\"user@example.com\"}";
    char out[64];
    size_t n;
    for (size_t len = 0; len < strlen(doc); len++)
        CHECK(!tg_json_find_string(doc, len, "identity", 8, out, sizeof(out), &n) ||
              len >= strlen(doc) - 1);
    CHECK(tg_json_find_string(doc, strlen(doc), "identity", 8, out, sizeof(out), &n));
}

int main(void)
{
    RUN(finds_top_level_strings);
    RUN(unescapes);
    RUN(refuses_what_it_cannot_read);
    RUN(every_prefix_is_safe);
    return TEST_SUMMARY();
}

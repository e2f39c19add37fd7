/* The bump allocator: alignment, big objects, and clear keeping one chunk
 * for the next owner's use (requests reuse theirs, no malloc per request). */
#include "../../src/arena.c"

#include "test.h"

TEST(aligned_and_zeroed)
{
    struct tg_arena a;
    tg_arena_init(&a, 512);
    for (size_t n = 1; n < 100; n += 7) {
        char *p = tg_arena_alloc(&a, n);
        CHECK(p != NULL && (uintptr_t)p % _Alignof(max_align_t) == 0);
        memset(p, 0xab, n);
    }
    unsigned char *z = tg_arena_calloc(&a, 10, 10);
    int zero = 1;
    for (int i = 0; i < 100; i++)
        zero &= z[i] == 0;
    CHECK(zero);
    CHECK(tg_arena_calloc(&a, SIZE_MAX / 2, 4) == NULL);
    CHECK_EQ_STR(tg_arena_printf(&a, "%s-%d", "x", 42), "x-42");
    tg_arena_reset(&a);
    CHECK(a.head == NULL && a.total == 0);
}

TEST(clear_keeps_one_chunk)
{
    struct tg_arena a;
    tg_arena_init(&a, 1024);
    char *first = tg_arena_alloc(&a, 16);
    for (int i = 0; i < 200; i++) /* several ordinary chunks */
        CHECK(tg_arena_alloc(&a, 40) != NULL);
    CHECK(tg_arena_alloc(&a, 100000) != NULL); /* a big one of its own */
    CHECK(a.total > 3 * 1024);
    tg_arena_clear(&a);
    CHECK(a.head != NULL && a.head->next == NULL);
    CHECK_EQ_INT(a.head->payload, 1024);
    /* The next use bumps in the kept chunk: no malloc. */
    size_t before = a.total;
    char *p = tg_arena_alloc(&a, 16);
    CHECK(p == (char *)a.head->data);
    CHECK_EQ_INT(a.total, before);
    (void)first;
    /* Clearing an empty arena, and clearing twice, are fine. */
    tg_arena_clear(&a);
    tg_arena_clear(&a);
    CHECK(tg_arena_alloc(&a, 8) == (void *)a.head->data);
    tg_arena_reset(&a);
    CHECK(a.head == NULL);
    struct tg_arena e;
    tg_arena_init(&e, 1024);
    tg_arena_clear(&e);
    CHECK(e.head == NULL && e.pos == NULL);
}

int main(void)
{
    RUN(aligned_and_zeroed);
    RUN(clear_keeps_one_chunk);
    return TEST_SUMMARY();
}

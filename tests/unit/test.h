/* Minimal unit-test harness: each test file defines tests with TEST(name) and
 * lists them in main() with RUN(name). The summary line "N passed, N failed"
 * is what `make test` and CI read; the exit status is non-zero on failure. */
#ifndef TG_TEST_H
#define TG_TEST_H

#include <stdio.h>
#include <string.h>

static int tg_test_failed_checks;
static int tg_test_passed, tg_test_failed;

#define TEST(name) static void name(void)

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            tg_test_failed_checks++;                                                 \
        }                                                                            \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                        \
    do {                                                                                          \
        long long tg_a_ = (long long)(a), tg_b_ = (long long)(b);                                 \
        if (tg_a_ != tg_b_) {                                                                     \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b, \
                    tg_a_, tg_b_);                                                                \
            tg_test_failed_checks++;                                                              \
        }                                                                                         \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                        \
    do {                                                                                          \
        const char *tg_a_ = (a), *tg_b_ = (b);                                                    \
        if (tg_a_ == NULL || tg_b_ == NULL || strcmp(tg_a_, tg_b_) != 0) {                        \
            fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__, #a, \
                    #b, tg_a_ ? tg_a_ : "(null)", tg_b_ ? tg_b_ : "(null)");                      \
            tg_test_failed_checks++;                                                              \
        }                                                                                         \
    } while (0)

/* Compares a (pointer, length) view with a C string. */
#define CHECK_EQ_MEM(p, n, s)                                                                      \
    do {                                                                                           \
        size_t tg_n_ = (n), tg_sn_ = strlen(s);                                                    \
        if (tg_n_ != tg_sn_ || memcmp((p), (s), tg_n_) != 0) {                                     \
            fprintf(stderr, "%s:%d: %s == \"%s\" failed: \"%.*s\"\n", __FILE__, __LINE__, #p, (s), \
                    (int)tg_n_, (const char *)(p));                                                \
            tg_test_failed_checks++;                                                               \
        }                                                                                          \
    } while (0)

#define RUN(name)                                  \
    do {                                           \
        int tg_before_ = tg_test_failed_checks;    \
        name();                                    \
        if (tg_test_failed_checks == tg_before_) { \
            tg_test_passed++;                      \
        } else {                                   \
            tg_test_failed++;                      \
            fprintf(stderr, "FAIL %s\n", #name);   \
        }                                          \
    } while (0)

#define TEST_SUMMARY()                                                               \
    (printf("%s: %d passed, %d failed\n", __FILE__, tg_test_passed, tg_test_failed), \
     tg_test_failed == 0 ? 0 : 1)

#endif

/* Byte-string views: a pointer and a length into memory someone else owns.
 * The parser and router hand these out instead of copying. */
#ifndef TG_STR_H
#define TG_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

struct tg_str {
    const char *p;
    size_t n;
};

#define TG_STR(lit) ((struct tg_str){(lit), sizeof(lit) - 1})
#define TG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#if defined(__GNUC__)
#define tg_likely(x) __builtin_expect(!!(x), 1)
#define tg_unlikely(x) __builtin_expect(!!(x), 0)
#else
#define tg_likely(x) (x)
#define tg_unlikely(x) (x)
#endif

static inline struct tg_str tg_str_make(const char *p, size_t n)
{
    return (struct tg_str){p, n};
}

static inline bool tg_str_eq(struct tg_str a, const char *lit)
{
    size_t n = strlen(lit);
    return a.n == n && memcmp(a.p, lit, n) == 0;
}

/* ASCII case-insensitive comparison with a C string. */
static inline bool tg_str_caseeq(struct tg_str a, const char *lit)
{
    size_t n = strlen(lit);
    return a.n == n && strncasecmp(a.p, lit, n) == 0;
}

/* Writes v in decimal (no terminator); returns the number of digits. */
static inline size_t tg_str_u64(char *out, unsigned long long v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[sizeof(tmp) - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    memcpy(out, tmp + sizeof(tmp) - n, n);
    return n;
}

/* The same for a signed value. */
static inline size_t tg_str_i64(char *out, long long v)
{
    if (v >= 0)
        return tg_str_u64(out, (unsigned long long)v);
    *out = '-';
    return 1 + tg_str_u64(out + 1, 0ull - (unsigned long long)v);
}

static inline char tg_ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

#endif

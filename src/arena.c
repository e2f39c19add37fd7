/* Bump allocator with chunk list. Deliberately no per-object free and no
 * thread safety: an arena belongs to one owner (a config being built, a
 * request on one worker). */
#include "arena.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tg_arena_chunk {
    struct tg_arena_chunk *next;
    size_t payload;     /* usable bytes */
    max_align_t data[]; /* aligns the payload for any type */
};

#define ALIGN (sizeof(max_align_t))

void tg_arena_init(struct tg_arena *a, size_t chunk_size)
{
    a->head = NULL;
    a->pos = a->end = NULL;
    a->chunk_size = chunk_size < 256 ? 256 : chunk_size;
    a->total = 0;
}

void tg_arena_reset(struct tg_arena *a)
{
    struct tg_arena_chunk *c = a->head;
    while (c != NULL) {
        struct tg_arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->pos = a->end = NULL;
    a->total = 0;
}

void tg_arena_clear(struct tg_arena *a)
{
    struct tg_arena_chunk *keep = NULL, *c = a->head;
    while (c != NULL) {
        struct tg_arena_chunk *next = c->next;
        if (keep == NULL && c->payload == a->chunk_size)
            keep = c;
        else
            free(c);
        c = next;
    }
    a->head = keep;
    a->total = 0;
    a->pos = a->end = NULL;
    if (keep != NULL) {
        keep->next = NULL;
        a->total = sizeof(*keep) + keep->payload;
        a->pos = (char *)keep->data;
        a->end = (char *)keep->data + keep->payload;
    }
}

void *tg_arena_alloc(struct tg_arena *a, size_t n)
{
    n = (n + ALIGN - 1) & ~(ALIGN - 1);
    if (n == 0)
        n = ALIGN;
    if (a->pos != NULL && (size_t)(a->end - a->pos) >= n) {
        void *p = a->pos;
        a->pos += n;
        return p;
    }
    size_t payload = n > a->chunk_size / 2 ? n : a->chunk_size;
    struct tg_arena_chunk *c = malloc(sizeof(*c) + payload);
    if (c == NULL)
        return NULL;
    c->payload = payload;
    a->total += sizeof(*c) + payload;
    if (payload == n && a->head != NULL) {
        /* A big object: keep the current chunk as the one we bump in. */
        c->next = a->head->next;
        a->head->next = c;
        return c->data;
    }
    c->next = a->head;
    a->head = c;
    a->pos = (char *)c->data + n;
    a->end = (char *)c->data + payload;
    return c->data;
}

void *tg_arena_calloc(struct tg_arena *a, size_t count, size_t size)
{
    if (size != 0 && count > SIZE_MAX / size)
        return NULL;
    void *p = tg_arena_alloc(a, count * size);
    if (p != NULL)
        memset(p, 0, count * size);
    return p;
}

char *tg_arena_strndup(struct tg_arena *a, const char *s, size_t n)
{
    char *p = tg_arena_alloc(a, n + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *tg_arena_strdup(struct tg_arena *a, const char *s)
{
    return tg_arena_strndup(a, s, strlen(s));
}

char *tg_arena_printf(struct tg_arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *p = tg_arena_alloc(a, (size_t)n + 1);
    if (p == NULL)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

/* Bump allocator: many small allocations, freed together.
 *
 * A config snapshot keeps all its strings and arrays in one arena and drops
 * them in one go; a request does the same for its scratch strings. Memory
 * comes in chunks from malloc; nothing is freed individually. */
#ifndef TG_ARENA_H
#define TG_ARENA_H

#include <stddef.h>

struct tg_arena_chunk;

struct tg_arena {
    struct tg_arena_chunk *head; /* newest chunk first */
    char *pos, *end;             /* free space in the newest chunk */
    size_t chunk_size;           /* bytes per ordinary chunk */
    size_t total;                /* bytes obtained from malloc */
};

/* Prepares an empty arena whose chunks are `chunk_size` bytes (larger
 * requests get a chunk of their own). Allocates nothing yet. */
void tg_arena_init(struct tg_arena *a, size_t chunk_size);

/* Frees every chunk; the arena is empty again and may be reused. */
void tg_arena_reset(struct tg_arena *a);

/* Empties the arena but keeps one ordinary chunk for the next use: an
 * owner reused many times (a request object on a free list) then costs no
 * malloc per use. tg_arena_reset frees it for good. */
void tg_arena_clear(struct tg_arena *a);

/* Returns `n` bytes aligned for any type, or NULL if malloc fails. The
 * memory lives until tg_arena_reset. */
void *tg_arena_alloc(struct tg_arena *a, size_t n);

/* As tg_arena_alloc, zeroed. */
void *tg_arena_calloc(struct tg_arena *a, size_t count, size_t size);

/* Copies n bytes and appends a NUL. */
char *tg_arena_strndup(struct tg_arena *a, const char *s, size_t n);
char *tg_arena_strdup(struct tg_arena *a, const char *s);

/* printf into the arena. */
char *tg_arena_printf(struct tg_arena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif

/* I/O buffers with a per-worker free list.
 *
 * A buffer is a window [start, end) of bytes inside data[0..cap). Readers
 * append at `end`, consumers advance `start`; when the window is empty both
 * return to 0. Buffers come in two classes: the standard size (the
 * client.buffer_size of the config that created the pool, rounded up to whole
 * pages) and large ones for heads that outgrow it. Idle connections give
 * their buffers back, so an idle keep-alive connection holds none; a bounded
 * number wait in the pool for reuse, and the rest go back to the kernel. One
 * pool per worker thread: no locks. */
#ifndef TG_BUF_H
#define TG_BUF_H

#include <stddef.h>
#include <stdbool.h>

struct tg_buf {
    size_t start, end, cap;
    struct tg_buf *next; /* free-list link */
    char data[];
};

/* Free buffers kept between two trims, at most (per class; large: 1/8).
 * High on purpose: under load every buffer given back is soon wanted again,
 * and returning it to the kernel would cost an munmap and an mmap with page
 * faults per request. The quarter-second trim (tg_buf_pool_trim) gives back
 * what the busiest moment did not need. */
#define TG_BUF_MAX_FREE 4096

/* The large class holds at least this much, whatever the config's head
 * limits: HTTP/2's output buffer (h2.c) lives in it, and an odd-sized
 * buffer would be mapped and unmapped at every drain. */
#define TG_BUF_LARGE_MIN (65536 + 1024)

struct tg_buf_pool {
    struct tg_buf *free_small, *free_large;
    size_t nfree_small, nfree_large;
    size_t small_size, large_size; /* data bytes per class */
    size_t max_free;               /* per class; beyond that, free() */
    size_t outstanding;            /* buffers handed out, for tests/metrics */
    size_t high_water;             /* most outstanding since the last trim */
};

/* Gives back to the kernel the free buffers beyond what was in use at the
 * busiest moment since the last trim (and a small reserve): after a burst,
 * memory shrinks back within a tick or two. */
void tg_buf_pool_trim(struct tg_buf_pool *p, size_t reserve);

void tg_buf_pool_init(struct tg_buf_pool *p, size_t small_size, size_t large_size, size_t max_free);

/* Memory straight from the kernel, in whole pages, for objects beyond the
 * free lists: giving it back (munmap) lowers RSS at once, whatever state
 * malloc's heap is in, so a burst of requests leaves no resident memory
 * behind once it is over. `n` is rounded up to pages; tg_pages_size says
 * to what. */
size_t tg_pages_size(size_t n);
void *tg_pages_alloc(size_t n);
void tg_pages_free(void *p, size_t n);
void tg_buf_pool_destroy(struct tg_buf_pool *p);

/* Returns an empty buffer of at least `min_cap` bytes, or NULL when memory
 * is exhausted (the caller answers 503 or closes). Owner thread only. */
struct tg_buf *tg_buf_get(struct tg_buf_pool *p, size_t min_cap);

/* Returns a buffer to the pool (NULL is fine). */
void tg_buf_put(struct tg_buf_pool *p, struct tg_buf *b);

/* Grows `*b` to at least min_cap, keeping its bytes (moved to start 0).
 * Returns 0, or -1 if memory is exhausted (*b unchanged). */
int tg_buf_grow(struct tg_buf_pool *p, struct tg_buf **b, size_t min_cap);

static inline size_t tg_buf_len(const struct tg_buf *b)
{
    return b->end - b->start;
}

static inline size_t tg_buf_room(const struct tg_buf *b)
{
    return b->cap - b->end;
}

static inline void tg_buf_consume(struct tg_buf *b, size_t n)
{
    b->start += n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

/* Moves the window to the front to make room at the end. */
void tg_buf_compact(struct tg_buf *b);

#endif

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

/* The most of something (buffers, requests) in use over the last few
 * trims: free lists keep what that peak needs, so steady load never gives
 * memory back only to fault it in again a moment later, while what a burst
 * left behind goes back within about a second. */
#define TG_PEAK_TICKS 4

struct tg_peak {
    size_t tick_max;             /* the most in use during this tick */
    size_t past[TG_PEAK_TICKS];  /* the same for the last ticks */
    unsigned at;
};

static inline void tg_peak_note(struct tg_peak *p, size_t in_use)
{
    if (in_use > p->tick_max)
        p->tick_max = in_use;
}

/* Ends a tick; returns the peak over the window. */
static inline size_t tg_peak_tick(struct tg_peak *p, size_t in_use)
{
    p->past[p->at++ % TG_PEAK_TICKS] = p->tick_max;
    p->tick_max = in_use;
    size_t most = 0;
    for (unsigned i = 0; i < TG_PEAK_TICKS; i++)
        most = p->past[i] > most ? p->past[i] : most;
    return most;
}

struct tg_buf_pool {
    struct tg_buf *free_small, *free_large;
    size_t nfree_small, nfree_large;
    size_t small_size, large_size; /* data bytes per class */
    size_t max_free;               /* per class; beyond that, free() */
    size_t outstanding;            /* buffers handed out, for tests/metrics */
    struct tg_peak peak;           /* of outstanding */
};

/* Gives back to the kernel the free buffers beyond what the recent peak
 * needs (and a small reserve): after a burst, memory shrinks back within
 * about a second. Called four times a second. */
void tg_buf_pool_trim(struct tg_buf_pool *p, size_t reserve);

void tg_buf_pool_init(struct tg_buf_pool *p, size_t small_size,
                      size_t large_size, size_t max_free);

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

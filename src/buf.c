/* Per-worker buffer pool: two size classes, bounded free lists. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

size_t tg_pages_size(size_t n)
{
    static size_t page;
    if (page == 0) {
        long v = sysconf(_SC_PAGESIZE);
        page = v > 0 ? (size_t)v : 4096;
    }
    return (n + page - 1) & ~(page - 1);
}

void *tg_pages_alloc(size_t n)
{
    void *p =
        mmap(NULL, tg_pages_size(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void tg_pages_free(void *p, size_t n)
{
    if (p != NULL)
        munmap(p, tg_pages_size(n));
}

/* The data capacity of a buffer whose whole allocation is `n` rounded to
 * pages: nothing of the last page is wasted. */
static size_t page_cap(size_t n)
{
    return tg_pages_size(sizeof(struct tg_buf) + n) - sizeof(struct tg_buf);
}

void tg_buf_pool_init(struct tg_buf_pool *p, size_t small_size, size_t large_size, size_t max_free)
{
    memset(p, 0, sizeof(*p));
    p->small_size = page_cap(small_size);
    if (large_size < TG_BUF_LARGE_MIN)
        large_size = TG_BUF_LARGE_MIN;
    p->large_size = page_cap(large_size > small_size ? large_size : small_size);
    p->max_free = max_free;
}

static void free_list(struct tg_buf *b)
{
    while (b != NULL) {
        struct tg_buf *next = b->next;
        tg_pages_free(b, sizeof(*b) + b->cap);
        b = next;
    }
}

void tg_buf_pool_destroy(struct tg_buf_pool *p)
{
    free_list(p->free_small);
    free_list(p->free_large);
    p->free_small = p->free_large = NULL;
    p->nfree_small = p->nfree_large = 0;
}

struct tg_buf *tg_buf_get(struct tg_buf_pool *p, size_t min_cap)
{
    struct tg_buf *b = NULL;
    size_t cap;
    if (min_cap <= p->small_size) {
        cap = p->small_size;
        if (p->free_small != NULL) {
            b = p->free_small;
            p->free_small = b->next;
            p->nfree_small--;
        }
    } else if (min_cap <= p->large_size) {
        cap = p->large_size;
        if (p->free_large != NULL) {
            b = p->free_large;
            p->free_large = b->next;
            p->nfree_large--;
        }
    } else {
        cap = page_cap(min_cap); /* odd size: never pooled */
    }
    if (b == NULL) {
        b = tg_pages_alloc(sizeof(*b) + cap);
        if (b == NULL)
            return NULL;
        b->cap = cap;
    }
    b->start = b->end = 0;
    b->next = NULL;
    if (++p->outstanding > p->high_water)
        p->high_water = p->outstanding;
    return b;
}

void tg_buf_put(struct tg_buf_pool *p, struct tg_buf *b)
{
    if (b == NULL)
        return;
    p->outstanding--;
    if (b->cap == p->small_size && p->nfree_small < p->max_free) {
        b->next = p->free_small;
        p->free_small = b;
        p->nfree_small++;
    } else if (b->cap == p->large_size && p->nfree_large < p->max_free / 8) {
        b->next = p->free_large;
        p->free_large = b;
        p->nfree_large++;
    } else {
        tg_pages_free(b, sizeof(*b) + b->cap);
    }
}

static void trim_list(struct tg_buf **list, size_t *n, size_t keep)
{
    while (*n > keep && *list != NULL) {
        struct tg_buf *b = *list;
        *list = b->next;
        (*n)--;
        tg_pages_free(b, sizeof(*b) + b->cap);
    }
}

void tg_buf_pool_trim(struct tg_buf_pool *p, size_t reserve)
{
    size_t busy = p->high_water > p->outstanding ? p->high_water - p->outstanding : 0;
    size_t keep = busy > reserve ? busy : reserve;
    trim_list(&p->free_small, &p->nfree_small, keep);
    trim_list(&p->free_large, &p->nfree_large, keep / 8 + 1);
    p->high_water = p->outstanding;
}

void tg_buf_compact(struct tg_buf *b)
{
    if (b->start == 0)
        return;
    size_t n = b->end - b->start;
    memmove(b->data, b->data + b->start, n);
    b->start = 0;
    b->end = n;
}

int tg_buf_grow(struct tg_buf_pool *p, struct tg_buf **b, size_t min_cap)
{
    if ((*b)->cap >= min_cap)
        return 0;
    struct tg_buf *nb = tg_buf_get(p, min_cap);
    if (nb == NULL)
        return -1;
    size_t n = tg_buf_len(*b);
    memcpy(nb->data, (*b)->data + (*b)->start, n);
    nb->end = n;
    tg_buf_put(p, *b);
    *b = nb;
    return 0;
}

/* Per-worker buffer pool: two size classes, bounded free lists. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

void tg_buf_pool_init(struct tg_buf_pool *p, size_t small_size,
                      size_t large_size, size_t max_free)
{
    memset(p, 0, sizeof(*p));
    p->small_size = small_size;
    p->large_size = large_size > small_size ? large_size : small_size;
    p->max_free = max_free;
}

static void free_list(struct tg_buf *b)
{
    while (b != NULL) {
        struct tg_buf *next = b->next;
        free(b);
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
        cap = min_cap; /* odd size: never pooled */
    }
    if (b == NULL) {
        b = malloc(sizeof(*b) + cap);
        if (b == NULL)
            return NULL;
        b->cap = cap;
    }
    b->start = b->end = 0;
    b->next = NULL;
    p->outstanding++;
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
        free(b);
    }
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

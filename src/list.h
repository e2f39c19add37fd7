/* Intrusive doubly linked list with a sentinel, as nginx's ngx_queue_t and
 * the kernel's list_head: a node lives inside the object it links, unlink
 * is O(1), and there are no head/tail special cases.
 *
 * A list (the sentinel) must be tg_list_init'ed before use. A node that is
 * zeroed, or was removed, is unlinked (tg_list_linked says false), so
 * objects from calloc or memset need no set-up. */
#ifndef TG_LIST_H
#define TG_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct tg_list {
    struct tg_list *prev, *next;
};

static inline void tg_list_init(struct tg_list *l)
{
    l->prev = l->next = l;
}

static inline bool tg_list_empty(const struct tg_list *l)
{
    return l->next == l;
}

static inline bool tg_list_linked(const struct tg_list *n)
{
    return n->next != NULL;
}

static inline void tg_list_insert_after(struct tg_list *at, struct tg_list *n)
{
    n->prev = at;
    n->next = at->next;
    at->next->prev = n;
    at->next = n;
}

static inline void tg_list_push_front(struct tg_list *l, struct tg_list *n)
{
    tg_list_insert_after(l, n);
}

static inline void tg_list_push_back(struct tg_list *l, struct tg_list *n)
{
    tg_list_insert_after(l->prev, n);
}

static inline void tg_list_remove(struct tg_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
}

/* First and last node, or NULL when empty. */
static inline struct tg_list *tg_list_first(const struct tg_list *l)
{
    return l->next == l ? NULL : l->next;
}

static inline struct tg_list *tg_list_last(const struct tg_list *l)
{
    return l->prev == l ? NULL : l->prev;
}

/* The object a node is the `member` of. */
#define tg_list_entry(node, type, member) ((type *)(void *)((char *)(node)-offsetof(type, member)))

#endif

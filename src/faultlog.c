/* Rate-limited fault notes and down/up states for the whole process: one
 * small table under one mutex. Only faults reach it (a request that
 * succeeds never takes the lock), and it decides nothing about traffic
 * (ejection, retries): it only keeps the error log readable when the same
 * fault repeats for every request. */
#include "faultlog.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define ENTRIES 256 /* subjects tracked at once; power of two */
#define SUBJECT_MAX TG_FAULTLOG_SUBJECT_MAX
#define DETAIL_MAX 512   /* the last fault of a summary */
#define STALE_DOWN_S 600 /* a down key not heard of for this long may give way */
#define NONE (-1)
#define NEVER (-1e18) /* logged_at of a subject never logged */

enum kind {
    FREE = 0,
    NOTE,  /* counts faults between lines */
    STATE, /* a key that is down (up keys have no entry) */
};

struct entry {
    uint8_t kind;
    int next; /* in its bucket's chain */
    uint64_t hash;
    char subject[SUBJECT_MAX];
    const char *counted; /* NOTE: the kind of fault, plural */
    /* NOTE */
    enum tg_log_level level;
    unsigned long pending; /* counted since the last line */
    double logged_at;      /* the last line about it */
    char last[DETAIL_MAX];
    /* STATE */
    double down_at, touched_at;
    unsigned long failures;
};

static double monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Tests drive their own clock. */
static double (*clock_now)(void) = monotonic_s;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry entries[ENTRIES];
static int buckets[ENTRIES];
static bool ready;
/* Notes past the table: one entry for all of them, its detail naming the
 * subject. */
static struct entry other = {.kind = NOTE, .subject = "other faults", .counted = "faults"};
static _Atomic unsigned long npending; /* NOTE entries with pending > 0 */
static _Atomic unsigned long ndown;
static _Atomic unsigned long down_gen;

static void init_locked(void)
{
    if (ready)
        return;
    for (int i = 0; i < ENTRIES; i++)
        buckets[i] = NONE;
    other.logged_at = NEVER;
    ready = true;
}

static uint64_t hash_of(const char *subject, const char *counted)
{
    /* FNV-1a over both: subjects come from our config and code. */
    uint64_t h = 1469598103934665603ull;
    for (const char *c = subject; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
    for (const char *c = counted; c != NULL && *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    return h;
}

static bool same(const struct entry *e, enum kind kind, uint64_t h, const char *subject,
                 const char *counted)
{
    if (e->kind != kind || e->hash != h || strncmp(e->subject, subject, SUBJECT_MAX - 1) != 0)
        return false;
    return kind == STATE || strcmp(e->counted, counted) == 0;
}

static void unlink_entry(int i)
{
    int *p = &buckets[entries[i].hash & (ENTRIES - 1)];
    while (*p != i)
        p = &entries[*p].next;
    *p = entries[i].next;
    entries[i].kind = FREE;
}

/* An entry that may be given to another subject: a free one, a note with
 * nothing pending and its interval over, or a key down so long without a
 * word that it is likely gone (a server a reload removed). */
static int reusable(double now)
{
    int stale = NONE;
    for (int i = 0; i < ENTRIES; i++) {
        struct entry *e = &entries[i];
        if (e->kind == FREE)
            return i;
        if (e->kind == NOTE && e->pending == 0 && now - e->logged_at >= TG_FAULTLOG_EVERY_S)
            stale = i;
        else if (e->kind == STATE && now - e->touched_at >= STALE_DOWN_S && stale == NONE)
            stale = i;
    }
    if (stale != NONE) {
        if (entries[stale].kind == STATE)
            atomic_fetch_sub(&ndown, 1);
        unlink_entry(stale);
    }
    return stale;
}

/* The entry of (kind, subject, counted), made when `create`; NULL when
 * there is none (and no room). */
static struct entry *find(enum kind kind, const char *subject, const char *counted, bool create,
                          double now)
{
    init_locked();
    uint64_t h = hash_of(subject, counted);
    for (int i = buckets[h & (ENTRIES - 1)]; i != NONE; i = entries[i].next)
        if (same(&entries[i], kind, h, subject, counted))
            return &entries[i];
    if (!create)
        return NULL;
    int i = reusable(now);
    if (i == NONE)
        return NULL;
    struct entry *e = &entries[i];
    memset(e, 0, sizeof(*e));
    e->kind = (uint8_t)kind;
    e->hash = h;
    snprintf(e->subject, sizeof(e->subject), "%s", subject);
    e->counted = counted;
    e->logged_at = NEVER;
    e->next = buckets[h & (ENTRIES - 1)];
    buckets[h & (ENTRIES - 1)] = i;
    return e;
}

void tg_faultlog_note(enum tg_log_level level, const char *subject, const char *counted,
                      const char *fmt, ...)
{
    if (!tg_log_enabled(level) && !tg_log_enabled(TG_LOG_DEBUG))
        return;
    char detail[DETAIL_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    double now = clock_now();
    bool at_once = false;
    pthread_mutex_lock(&lock);
    struct entry *e = find(NOTE, subject, counted, true, now);
    if (e == NULL)
        e = &other;
    if (e->pending == 0 && now - e->logged_at >= TG_FAULTLOG_EVERY_S) {
        e->logged_at = now;
        at_once = true;
    } else {
        if (e->pending++ == 0)
            atomic_fetch_add(&npending, 1);
        e->level = level;
        if (e == &other) {
            /* "SUBJECT: DETAIL", cut to fit. */
            size_t n = strnlen(subject, SUBJECT_MAX - 1);
            memcpy(e->last, subject, n);
            memcpy(e->last + n, ": ", 2);
            size_t m = strnlen(detail, sizeof(e->last) - n - 3);
            memcpy(e->last + n + 2, detail, m);
            e->last[n + 2 + m] = '\0';
        } else {
            memcpy(e->last, detail, sizeof(detail));
        }
    }
    pthread_mutex_unlock(&lock);
    tg_log(at_once ? level : TG_LOG_DEBUG, "%s: %s", subject, detail);
}

static void summarize(struct entry *e, bool all, double now)
{
    if (e->kind != NOTE || e->pending == 0 || (!all && now - e->logged_at < TG_FAULTLOG_EVERY_S))
        return;
    tg_log(e->level, "%s: %lu more %s in the last %.0f s (last: %s)", e->subject, e->pending,
           e->counted, now - e->logged_at, e->last);
    e->pending = 0;
    e->logged_at = now;
    atomic_fetch_sub(&npending, 1);
}

void tg_faultlog_tick(bool all)
{
    if (atomic_load_explicit(&npending, memory_order_relaxed) == 0)
        return;
    double now = clock_now();
    /* The lines are written under the lock: a second apart at most, and
     * a fault noted meanwhile waits for them rather than interleave. */
    pthread_mutex_lock(&lock);
    for (int i = 0; i < ENTRIES; i++)
        summarize(&entries[i], all, now);
    summarize(&other, all, now);
    pthread_mutex_unlock(&lock);
}

bool tg_faultlog_set_down(const char *key, unsigned long initial)
{
    double now = clock_now();
    pthread_mutex_lock(&lock);
    struct entry *e = find(STATE, key, NULL, false, now);
    bool was_up = e == NULL;
    if (was_up)
        e = find(STATE, key, NULL, true, now);
    if (e != NULL) {
        if (was_up) {
            e->down_at = now;
            e->failures = initial;
            atomic_fetch_add(&ndown, 1);
            atomic_fetch_add(&down_gen, 1);
        } else {
            e->failures++;
        }
        e->touched_at = now;
    }
    pthread_mutex_unlock(&lock);
    /* Untracked (the table is full): better a line per caller than none. */
    return was_up;
}

void tg_faultlog_count_down(const char *key)
{
    if (atomic_load_explicit(&ndown, memory_order_relaxed) == 0)
        return;
    double now = clock_now();
    pthread_mutex_lock(&lock);
    struct entry *e = find(STATE, key, NULL, false, now);
    if (e != NULL) {
        e->failures++;
        e->touched_at = now;
    }
    pthread_mutex_unlock(&lock);
}

bool tg_faultlog_set_up(const char *key, double *down_s, unsigned long *failures)
{
    if (atomic_load_explicit(&ndown, memory_order_relaxed) == 0)
        return false;
    double now = clock_now();
    pthread_mutex_lock(&lock);
    struct entry *e = find(STATE, key, NULL, false, now);
    if (e != NULL) {
        *down_s = now - e->down_at;
        *failures = e->failures;
        unlink_entry((int)(e - entries));
        atomic_fetch_sub(&ndown, 1);
    }
    pthread_mutex_unlock(&lock);
    return e != NULL;
}

unsigned long tg_faultlog_down_gen(void)
{
    return atomic_load_explicit(&down_gen, memory_order_relaxed);
}

bool tg_faultlog_any_down(void)
{
    return atomic_load_explicit(&ndown, memory_order_relaxed) > 0;
}

/* ACME challenge answers (acme_challenge.h). */
#include "acme_challenge.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "certstore.h"

/* Challenges live for minutes, a few at a time; past this many the oldest
 * expired ones are dropped first. */
#define MAX_ENTRIES 1024
#define TOKEN_MAX 256
#define KEY_AUTH_MAX 512
#define NAME_MAX_LEN 256

struct entry {
    bool alpn;
    char key[TOKEN_MAX]; /* token (HTTP-01) or name (TLS-ALPN-01) */
    char key_auth[KEY_AUTH_MAX];
    struct tg_cert *cert;
    double expires;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry *entries;
static size_t nentries;

static double now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void drop(size_t i)
{
    if (entries[i].cert != NULL)
        tg_cert_unref(entries[i].cert);
    entries[i] = entries[--nentries];
}

/* Expired entries go; lock held. */
static void sweep(void)
{
    double now = now_wall();
    for (size_t i = 0; i < nentries;)
        if (entries[i].expires <= now)
            drop(i);
        else
            i++;
}

static struct entry *find(bool alpn, const char *key, size_t n)
{
    for (size_t i = 0; i < nentries; i++)
        if (entries[i].alpn == alpn && strlen(entries[i].key) == n &&
            (alpn ? strncasecmp(entries[i].key, key, n) : strncmp(entries[i].key, key, n)) == 0)
            return &entries[i];
    return NULL;
}

static struct entry *slot(bool alpn, const char *key)
{
    struct entry *e = find(alpn, key, strlen(key));
    if (e != NULL)
        return e;
    if (entries == NULL && (entries = calloc(MAX_ENTRIES, sizeof(*entries))) == NULL)
        return NULL;
    if (nentries == MAX_ENTRIES)
        return NULL;
    e = &entries[nentries++];
    memset(e, 0, sizeof(*e));
    e->alpn = alpn;
    strncpy(e->key, key, sizeof(e->key) - 1);
    return e;
}

int tg_acme_challenge_http_put(const char *token, const char *key_auth, double expires)
{
    if (strlen(token) >= TOKEN_MAX || strlen(key_auth) >= KEY_AUTH_MAX)
        return -1;
    pthread_mutex_lock(&lock);
    sweep();
    struct entry *e = slot(false, token);
    if (e != NULL) {
        strcpy(e->key_auth, key_auth);
        e->expires = expires;
    }
    pthread_mutex_unlock(&lock);
    return e != NULL ? 0 : -1;
}

bool tg_acme_challenge_http_get(const char *token, size_t n, char *out, size_t cap)
{
    bool found = false;
    pthread_mutex_lock(&lock);
    struct entry *e = entries != NULL ? find(false, token, n) : NULL;
    if (e != NULL && e->expires > now_wall() && strlen(e->key_auth) < cap) {
        strcpy(out, e->key_auth);
        found = true;
    }
    pthread_mutex_unlock(&lock);
    return found;
}

void tg_acme_challenge_http_remove(const char *token)
{
    pthread_mutex_lock(&lock);
    struct entry *e = entries != NULL ? find(false, token, strlen(token)) : NULL;
    if (e != NULL)
        drop((size_t)(e - entries));
    pthread_mutex_unlock(&lock);
}

int tg_acme_challenge_alpn_put(const char *name, struct tg_cert *cert, double expires)
{
    if (strlen(name) >= NAME_MAX_LEN)
        return -1;
    pthread_mutex_lock(&lock);
    sweep();
    struct entry *e = slot(true, name);
    if (e != NULL) {
        tg_cert_ref(cert);
        if (e->cert != NULL)
            tg_cert_unref(e->cert);
        e->cert = cert;
        e->expires = expires;
    }
    pthread_mutex_unlock(&lock);
    return e != NULL ? 0 : -1;
}

struct tg_cert *tg_acme_challenge_alpn_get(const char *name, size_t n)
{
    struct tg_cert *c = NULL;
    pthread_mutex_lock(&lock);
    struct entry *e = entries != NULL ? find(true, name, n) : NULL;
    if (e != NULL && e->expires > now_wall() && e->cert != NULL) {
        c = e->cert;
        tg_cert_ref(c);
    }
    pthread_mutex_unlock(&lock);
    return c;
}

void tg_acme_challenge_alpn_remove(const char *name)
{
    pthread_mutex_lock(&lock);
    struct entry *e = entries != NULL ? find(true, name, strlen(name)) : NULL;
    if (e != NULL)
        drop((size_t)(e - entries));
    pthread_mutex_unlock(&lock);
}

void tg_acme_challenge_clear(void)
{
    pthread_mutex_lock(&lock);
    while (nentries > 0)
        drop(nentries - 1);
    free(entries);
    entries = NULL;
    pthread_mutex_unlock(&lock);
}

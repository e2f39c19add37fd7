/* libFuzzer target for route patterns (tg_router_pattern_*) and
 * tg_router_fold_path.
 *
 * Input: "PATTERN A\nPATTERN B\nPATH" (missing parts are empty). Both
 * patterns are compiled case-sensitive and ignore_case; then:
 *   - compiling succeeds or fails the same way for both cases, a failure
 *     has a message and an offset within the text;
 *   - the canonical text compiles to the same text, and each pattern
 *     covers itself and its recompiled copy;
 *   - a pattern without wildcards matches exactly as the old literal route
 *     loop did;
 *   - B matches a path built from its own text (every '*' and '**' filled
 *     with bytes from PATH);
 *   - SOUNDNESS of covers(): whenever covers(a, b), every path b matches
 *     (PATH as given, normalised, and the one built from B) is matched by a,
 *     each pattern seeing the path folded if it is ignore_case;
 *   - folding never grows the path and folding twice changes nothing.
 * Every buffer handed to the library has exactly its length, so ASan sees
 * any read past it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

#define FUZZ_ASSERT(c)                                                                \
    do {                                                                              \
        if (!(c)) {                                                                   \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

#define MAX_PATH 4096

static char *dup_n(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s == NULL)
        abort();
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* A heap copy of exactly n bytes (one byte when empty, never read). */
static char *exact_copy(const char *p, size_t n)
{
    char *s = malloc(n > 0 ? n : 1);
    if (s == NULL)
        abort();
    if (n > 0)
        memcpy(s, p, n);
    return s;
}

struct path {
    char *raw, *folded;
    size_t n, fn;
};

static void path_init(struct path *pa, const char *p, size_t n)
{
    pa->raw = exact_copy(p, n);
    pa->n = n;
    char *tmp = malloc(n > 0 ? n : 1);
    if (tmp == NULL)
        abort();
    pa->fn = tg_router_fold_path(p, n, tmp, n);
    FUZZ_ASSERT(pa->fn <= n);
    FUZZ_ASSERT(n == 0 || pa->fn > 0);
    pa->folded = exact_copy(tmp, pa->fn);
    /* Folding again changes nothing, in place too. */
    size_t again = tg_router_fold_path(pa->folded, pa->fn, tmp, pa->fn);
    FUZZ_ASSERT(again == pa->fn && memcmp(tmp, pa->folded, again) == 0);
    again = tg_router_fold_path(tmp, pa->fn, tmp, pa->fn);
    FUZZ_ASSERT(again == pa->fn && memcmp(tmp, pa->folded, again) == 0);
    free(tmp);
}

static void path_free(struct path *pa)
{
    free(pa->raw);
    free(pa->folded);
}

static bool match(const struct tg_route_pattern *p, const struct path *pa)
{
    if (tg_router_pattern_ignore_case(p))
        return tg_router_pattern_match(p, pa->folded, pa->fn);
    return tg_router_pattern_match(p, pa->raw, pa->n);
}

/* Compiles and checks what holds for any text. */
static struct tg_route_pattern *compile(const char *text, bool ic)
{
    char err[256];
    size_t off = (size_t)-1;
    err[0] = 'x';
    struct tg_route_pattern *p = tg_router_pattern_compile(text, ic, err, sizeof(err), &off);
    if (p == NULL) {
        FUZZ_ASSERT(off <= strlen(text));
        FUZZ_ASSERT(err[0] != '\0' && memchr(err, '\0', sizeof(err)));
        return NULL;
    }
    FUZZ_ASSERT(tg_router_pattern_ignore_case(p) == ic);
    FUZZ_ASSERT(tg_router_pattern_kind(p) != NULL);
    const char *canon = tg_router_pattern_text(p);
    FUZZ_ASSERT(strlen(canon) <= strlen(text) + 1);
    struct tg_route_pattern *q = tg_router_pattern_compile(canon, ic, NULL, 0, NULL);
    FUZZ_ASSERT(q != NULL);
    FUZZ_ASSERT(strcmp(tg_router_pattern_text(q), canon) == 0);
    FUZZ_ASSERT(tg_router_pattern_covers(p, p));
    FUZZ_ASSERT(tg_router_pattern_covers(p, q));
    FUZZ_ASSERT(tg_router_pattern_covers(q, p));
    tg_router_pattern_free(q);
    return p;
}

static const char *path_part(const struct tg_route_pattern *p, bool *exact)
{
    const char *t = tg_router_pattern_text(p);
    *exact = t[0] == '=';
    return *exact ? t + 2 : t;
}

/* A literal pattern must follow the rule routes always had. */
static void check_literal(const struct tg_route_pattern *p, const struct path *pa)
{
    bool exact;
    const char *lit = path_part(p, &exact);
    if (strchr(lit, '*') != NULL)
        return;
    size_t rn = strlen(lit);
    char folded[TG_ROUTE_PATTERN_MAX_LEN + 1];
    if (tg_router_pattern_ignore_case(p))
        rn = tg_router_fold_path(lit, rn, folded, sizeof(folded));
    else
        memcpy(folded, lit, rn);
    const char *path = tg_router_pattern_ignore_case(p) ? pa->folded : pa->raw;
    size_t n = tg_router_pattern_ignore_case(p) ? pa->fn : pa->n;
    bool want = n >= rn && memcmp(path, folded, rn) == 0 &&
                (exact ? n == rn : n == rn || folded[rn - 1] == '/' || path[rn] == '/');
    FUZZ_ASSERT(tg_router_pattern_match(p, path, n) == want);
}

struct filler {
    const char *p;
    size_t n, at;
};

static unsigned take(struct filler *f)
{
    return f->at < f->n ? (unsigned char)f->p[f->at++] : 0;
}

/* Appends up to 4 bytes of the filler; a '*' may not take a '/'. */
static size_t fill_run(struct filler *f, bool slashes, char *out, size_t o, size_t cap)
{
    size_t len = take(f) % 5;
    for (size_t k = 0; k < len && f->at < f->n && o < cap; k++) {
        char c = f->p[f->at++];
        out[o++] = c == '/' && !slashes ? 'x' : c;
    }
    return o;
}

/* A path that the case-sensitive pattern p must match: its text with each
 * '*' filled with bytes of PATH (no '/'), each '**' segment with any bytes
 * or with nothing at all (the '/' after it dropped too), and a prefix
 * pattern given a tail. */
static size_t instantiate(const struct tg_route_pattern *p, struct filler *f, char *out, size_t cap)
{
    bool exact;
    const char *t = path_part(p, &exact);
    size_t o = 0, tn = strlen(t);

    for (size_t i = 0; i < tn; i++) {
        if (t[i] != '*') {
            if (o < cap)
                out[o++] = t[i];
            continue;
        }
        bool any = i + 1 < tn && t[i + 1] == '*'; /* the whole segment */
        if (any) {
            i++;
            if (take(f) % 2 == 0) {
                if (i + 1 < tn)
                    i++; /* and the slash after it: [a, **, b] -> "/a/b" */
                continue;
            }
        }
        o = fill_run(f, any, out, o, cap);
    }
    if (!exact) {
        if (tn > 0 && t[tn - 1] == '/') {
            o = fill_run(f, true, out, o, cap);
        } else if (take(f) % 2 == 1 && o < cap) {
            out[o++] = '/';
            o = fill_run(f, true, out, o, cap);
        }
    }
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl1 = memchr(data, '\n', size);
    const uint8_t *a_end = nl1 != NULL ? nl1 : data + size;
    const uint8_t *b_start = nl1 != NULL ? nl1 + 1 : data + size;
    const uint8_t *nl2 = memchr(b_start, '\n', (size_t)(data + size - b_start));
    const uint8_t *b_end = nl2 != NULL ? nl2 : data + size;
    const uint8_t *p_start = nl2 != NULL ? nl2 + 1 : data + size;
    size_t pn = (size_t)(data + size - p_start);
    if (pn > MAX_PATH)
        pn = MAX_PATH;

    char *ta = dup_n(data, (size_t)(a_end - data));
    char *tb = dup_n(b_start, (size_t)(b_end - b_start));
    struct tg_route_pattern *pa[2], *pb[2];
    for (int ic = 0; ic < 2; ic++) {
        pa[ic] = compile(ta, ic);
        pb[ic] = compile(tb, ic);
    }
    FUZZ_ASSERT((pa[0] == NULL) == (pa[1] == NULL));
    FUZZ_ASSERT((pb[0] == NULL) == (pb[1] == NULL));

    /* The paths: as given, normalised, and built from B. */
    struct path paths[3];
    size_t npaths = 0;
    path_init(&paths[npaths++], (const char *)p_start, pn);
    char *norm = malloc(pn > 0 ? pn : 1);
    if (norm == NULL)
        abort();
    ssize_t m = tg_router_normalize_path((const char *)p_start, pn, norm, pn);
    if (m >= 0)
        path_init(&paths[npaths++], norm, (size_t)m);
    free(norm);
    if (pb[0] != NULL) {
        static char built[TG_ROUTE_PATTERN_MAX_LEN + MAX_PATH + 16];
        struct filler f = {(const char *)p_start, pn, 0};
        size_t n = instantiate(pb[0], &f, built, sizeof(built));
        path_init(&paths[npaths], built, n);
        FUZZ_ASSERT(match(pb[0], &paths[npaths]));
        npaths++;
    }

    for (size_t k = 0; k < npaths; k++) {
        for (int ic = 0; ic < 2; ic++) {
            if (pa[ic] != NULL)
                check_literal(pa[ic], &paths[k]);
            if (pb[ic] != NULL)
                check_literal(pb[ic], &paths[k]);
        }
    }

    if (pa[0] != NULL && pb[0] != NULL) {
        for (int ica = 0; ica < 2; ica++) {
            for (int icb = 0; icb < 2; icb++) {
                bool ab = tg_router_pattern_covers(pa[ica], pb[icb]);
                bool ba = tg_router_pattern_covers(pb[icb], pa[ica]);
                for (size_t k = 0; k < npaths; k++) {
                    bool ma = match(pa[ica], &paths[k]);
                    bool mb = match(pb[icb], &paths[k]);
                    FUZZ_ASSERT(!ab || !mb || ma);
                    FUZZ_ASSERT(!ba || !ma || mb);
                }
            }
        }
    }

    for (size_t k = 0; k < npaths; k++)
        path_free(&paths[k]);
    for (int ic = 0; ic < 2; ic++) {
        tg_router_pattern_free(pa[ic]);
        tg_router_pattern_free(pb[ic]);
    }
    free(ta);
    free(tb);
    return 0;
}

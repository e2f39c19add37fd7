/* Configuration parser: libyaml document -> the plain structs of config.h.
 *
 * Each section is described by a schema table (key name, parser, where the
 * value goes, bounds, default); a generic walker applies it, so unknown
 * keys, wrong types and out-of-range values are reported the same way
 * everywhere, with FILE:LINE:COL, and every default is written once, as
 * YAML, beside its key. All errors are collected before giving up.
 * Cross-references (a route naming an upstream) are resolved by parsing
 * sections in dependency order rather than file order, and what routes
 * inherit from their site and the top level (headers, rate-limit policies)
 * is merged here, once.
 *
 * Nothing here opens a file but the YAML or builds a runtime object: TLS,
 * GeoIP, the host index, route patterns, access rules and the tenant index
 * are config_build.c's, from the data and marks left here. */
#include "config.h"

#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <yaml.h>

#include "bodykey.h"
#include "compress.h"
#include "file.h"
#include "http.h"
#include "router.h"

#define MAX_CONFIG_BYTES (64u << 20)
#define MAX_NODE_VISITS 4000000u
#define ADMIN_BACKLOG 128 /* the admin listener's, not configurable */

/* A headers block as written (global, site or route), before merging. */
#define MAX_HDR_ITEMS 32
struct hdr_item {
    const char *name;
    const char *value; /* NULL: take this header away */
    bool https_only;
    const char *written; /* the value as written, when it held ${ENV} */
};

struct hdr_list {
    bool set;
    const char **names;
    size_t n;
};

struct hdr_spec {
    struct hdr_item items[MAX_HDR_ITEMS];
    size_t nitems;
    struct hdr_list remove;
    bool override_set, override;
    struct hdr_item req_set[MAX_HDR_ITEMS];
    size_t nreq_set;
    struct hdr_list req_remove;
};

/* A file the configuration was read from. */
struct cfg_source {
    const char *dir; /* relative paths written in it resolve here; "" = the
                        working directory (arena) */
    dev_t dev;       /* its identity, for include cycles */
    ino_t ino;
    bool has_id;
    int parent; /* the file that included it; -1 for the main one */
};

/* A scalar that ${...} changed: its text as written, so messages and
 * explain can show that rather than what the environment holds. */
struct cfg_subst {
    char *written; /* malloc'd */
    char *value;   /* malloc'd: what it became */
};

struct cfg_ctx {
    struct hdr_spec *global_headers; /* while parsing sites */
    struct hdr_spec *site_headers;
    yaml_document_t *doc;
    struct tg_config *cfg;
    struct tg_config_errors *errs;
    unsigned long visits;
    yaml_document_t defaults; /* list-valued defaults, built as needed */
    bool defaults_ready;
    struct cfg_source sources[TG_CONFIG_MAX_FILES]; /* cfg->files' directories */
    struct cfg_subst *substs;
    size_t nsubsts, substs_cap;
};

/* ---- errors ------------------------------------------------------------- */

void tg_config_errors_init(struct tg_config_errors *e, const char *file)
{
    e->file = file;
    e->files = NULL;
    e->nfiles = 0;
    e->n = 0;
}

static void verror_at(struct tg_config_errors *errs, struct tg_config_mark m, const char *fmt,
                      va_list ap)
{
    if (errs->n < TG_CONFIG_MAX_ERRORS) {
        errs->list[errs->n].mark = m;
        vsnprintf(errs->list[errs->n].msg, sizeof(errs->list[errs->n].msg), fmt, ap);
    }
    errs->n++;
}

void tg_config_error_at(struct tg_config_errors *e, struct tg_config_mark m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror_at(e, m, fmt, ap);
    va_end(ap);
}

static int cmp_error(const void *a, const void *b)
{
    const struct tg_config_mark *x = a, *y = b; /* each entry starts with its mark */
    if (x->file != y->file)
        return x->file < y->file ? -1 : 1;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return (x->col > y->col) - (x->col < y->col);
}

/* Writes the collected errors in file order: the first line is the first
 * problem in the file, whatever order the sections were checked in. */
void tg_config_errors_format(struct tg_config_errors *e, char *out, size_t cap)
{
    if (out == NULL || cap == 0)
        return;
    int n = e->n < TG_CONFIG_MAX_ERRORS ? e->n : TG_CONFIG_MAX_ERRORS;
    qsort(e->list, (size_t)n, sizeof(e->list[0]), cmp_error);
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < n && used + 1 < cap; i++) {
        const struct tg_config_mark *m = &e->list[i].mark;
        const char *file = m->file > 0 && e->files != NULL && (size_t)m->file < e->nfiles
                               ? e->files[m->file]
                               : e->file;
        int w = snprintf(out + used, cap - used, "%s:%d:%d: %s\n", file, m->line, m->col,
                         e->list[i].msg);
        if (w < 0)
            break;
        used += (size_t)w < cap - used ? (size_t)w : cap - used - 1;
    }
}

/* The nodes of the document the parser walks carry, in their start
 * mark's `index` (a byte offset nothing here reads), the file they were
 * read from and which ${...} substitution made their value, if one did:
 * marks_set writes it as each file is loaded, and copies into the merged
 * document keep it. */
#define MARK_FILE_MASK 0xffffu
#define MARK_SUBST_SHIFT 16

static int node_file(const yaml_node_t *node)
{
    return (int)(node->start_mark.index & MARK_FILE_MASK);
}

/* The index of the substitution that made the node's value, or -1. */
static long node_subst(const yaml_node_t *node)
{
    return (long)(node->start_mark.index >> MARK_SUBST_SHIFT) - 1;
}

static struct tg_config_mark mark_of(const yaml_node_t *node)
{
    return (struct tg_config_mark){(int)node->start_mark.line + 1, (int)node->start_mark.column + 1,
                                   node_file(node)};
}

const char *tg_config_mark_file(const struct tg_config *c, struct tg_config_mark m)
{
    if (m.file > 0 && c->files != NULL && (size_t)m.file < c->nfiles)
        return c->files[m.file];
    return c->path != NULL ? c->path : "config";
}

static void error_at(struct cfg_ctx *ctx, struct tg_config_mark m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void error_at(struct cfg_ctx *ctx, struct tg_config_mark m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror_at(ctx->errs, m, fmt, ap);
    va_end(ap);
}

static int node_error(struct cfg_ctx *ctx, const yaml_node_t *node, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int node_error(struct cfg_ctx *ctx, const yaml_node_t *node, const char *fmt, ...)
{
    char msg[sizeof(ctx->errs->list[0].msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* A value that came from the environment may be a secret: the message
     * quotes it as written ('${NAME}'), never what it became. */
    long si = node_subst(node);
    if (si >= 0 && (size_t)si < ctx->nsubsts && ctx->substs[si].value == NULL)
        return -1; /* its ${...} could not be expanded: said already */
    if (si >= 0 && (size_t)si < ctx->nsubsts) {
        const struct cfg_subst *sub = &ctx->substs[si];
        char quoted[sizeof(msg)], out[sizeof(msg)];
        snprintf(quoted, sizeof(quoted), "'%s'", sub->value);
        size_t qn = strlen(quoted), o = 0;
        for (const char *p = msg; *p != '\0' && o + 1 < sizeof(out);) {
            if (qn > 2 && strncmp(p, quoted, qn) == 0) {
                int w = snprintf(out + o, sizeof(out) - o, "'%s'", sub->written);
                o += w < 0 ? 0 : ((size_t)w < sizeof(out) - o ? (size_t)w : sizeof(out) - o - 1);
                p += qn;
            } else {
                out[o++] = *p++;
            }
        }
        out[o] = '\0';
        memcpy(msg, out, o + 1);
    }
    error_at(ctx, mark_of(node), "%s", msg);
    return -1;
}

/* ---- node access -------------------------------------------------------- */

static yaml_node_t *node_at(struct cfg_ctx *ctx, int index)
{
    ctx->visits++;
    return yaml_document_get_node(ctx->doc, index);
}

static bool too_many_visits(struct cfg_ctx *ctx, const yaml_node_t *node)
{
    if (ctx->visits <= MAX_NODE_VISITS)
        return false;
    if (ctx->visits != ULONG_MAX) {
        node_error(ctx, node, "document too large (alias expansion?)");
        ctx->visits = ULONG_MAX;
    }
    return true;
}

static const char *node_kind(const yaml_node_t *node)
{
    switch (node->type) {
    case YAML_SCALAR_NODE:
        return "a scalar";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_MAPPING_NODE:
        return "a mapping";
    default:
        return "nothing";
    }
}

/* Returns the scalar's text (NUL-terminated by libyaml) or NULL with an
 * error. Scalars holding a NUL byte are refused: every value is text. */
static const char *scalar(struct cfg_ctx *ctx, yaml_node_t *node, const char *what)
{
    if (node->type != YAML_SCALAR_NODE) {
        node_error(ctx, node, "%s must be a scalar, not %s", what, node_kind(node));
        return NULL;
    }
    const char *s = (const char *)node->data.scalar.value;
    if (strlen(s) != node->data.scalar.length) {
        node_error(ctx, node, "%s contains a NUL byte", what);
        return NULL;
    }
    return s;
}

static bool is_plain_scalar(const yaml_node_t *node)
{
    return node->type == YAML_SCALAR_NODE && node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

/* ---- value parsers -------------------------------------------------------- */

struct cfg_key;
typedef int (*cfg_parse_fn)(struct cfg_ctx *ctx, yaml_node_t *node, void *dst,
                            const struct cfg_key *key);

/* One key of a section: how its value is parsed, where it goes, its
 * bounds and its default. The default is YAML as a user would write it
 * ("10s", "16KiB", "round_robin", "[400, 401]"), run through the key's own
 * parser when the struct is set up, so it obeys the same rules and bounds
 * as a configured value. A key whose value is a section of its own names
 * the section's table in `sub`: its defaults are applied with the
 * parent's (with p_section, its mapping is walked in place too). */
struct cfg_key {
    const char *name;
    cfg_parse_fn parse;
    size_t offset;
    int64_t min, max;           /* bounds for numbers, durations, sizes */
    const char *const *choices; /* for p_enum: NULL-terminated */
    const char *def;            /* default, as YAML; NULL: zero / none */
    const struct cfg_key *sub;  /* the section's own keys */
};

/* The booleans of the YAML 1.2 core schema (true, True, TRUE and the
 * same for false), quoted or not: `stream: "true"` is what users write
 * when they quote everything, and it means nothing else. YAML 1.1's
 * yes/no/on/off stay refused: "no" is also a country code. */
static int p_bool(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0) {
        *(bool *)dst = true;
        return 0;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0) {
        *(bool *)dst = false;
        return 0;
    }
    return node_error(ctx, node, "%s must be true or false, not '%s'", key->name, s);
}

static int parse_int64(const char *s, int64_t *out)
{
    if (*s == '\0')
        return -1;
    int64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if (v > (INT64_MAX - (*p - '0')) / 10)
            return -1;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return 0;
}

static int check_bounds(struct cfg_ctx *ctx, yaml_node_t *node, const struct cfg_key *key,
                        int64_t v, const char *s)
{
    if (v < key->min || (key->max > 0 && v > key->max))
        return node_error(ctx, node, "%s: '%s' is out of range", key->name, s);
    return 0;
}

static int p_uint(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    int64_t v;
    if (s == NULL)
        return -1;
    if (!is_plain_scalar(node) || parse_int64(s, &v) < 0)
        return node_error(ctx, node, "%s must be a whole number, not '%s'", key->name, s);
    if (check_bounds(ctx, node, key, v, s) < 0)
        return -1;
    *(unsigned *)dst = (unsigned)v;
    return 0;
}

static int p_int(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    unsigned v;
    if (p_uint(ctx, node, &v, key) < 0)
        return -1;
    *(int *)dst = (int)v;
    return 0;
}

int tg_config_parse_duration(const char *s, int64_t *ms)
{
    const char *p = s;
    int64_t v = 0;
    if (*p < '0' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9') {
        if (v > (INT64_MAX / 1000 - (*p - '0')) / 10)
            return -1;
        v = v * 10 + (*p++ - '0');
    }
    int64_t mult;
    if (strcmp(p, "ms") == 0)
        mult = 1;
    else if (strcmp(p, "s") == 0)
        mult = 1000;
    else if (strcmp(p, "m") == 0)
        mult = 60 * 1000;
    else if (strcmp(p, "h") == 0)
        mult = 3600 * 1000;
    else if (strcmp(p, "d") == 0)
        mult = 86400 * 1000;
    else if (*p == '\0' && v == 0)
        mult = 1;
    else
        return -1;
    if (v > INT64_MAX / mult / 1000)
        return -1;
    *ms = v * mult;
    return 0;
}

static int p_duration(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    int64_t ms;
    if (s == NULL)
        return -1;
    if (tg_config_parse_duration(s, &ms) < 0)
        return node_error(ctx, node,
                          "%s must be a duration like 250ms, 10s, 5m, 1h; "
                          "not '%s'",
                          key->name, s);
    if (check_bounds(ctx, node, key, ms, s) < 0)
        return -1;
    *(int64_t *)dst = ms;
    return 0;
}

int tg_config_parse_size(const char *s, uint64_t *bytes)
{
    const char *p = s;
    uint64_t v = 0;
    if (*p < '0' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9') {
        if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*p++ - '0');
    }
    static const struct {
        const char *suffix;
        uint64_t mult;
    } units[] = {
        {"", 1},
        {"B", 1},
        {"K", 1u << 10},
        {"KiB", 1u << 10},
        {"KB", 1000},
        {"M", 1u << 20},
        {"MiB", 1u << 20},
        {"MB", 1000000},
        {"G", 1u << 30},
        {"GiB", 1u << 30},
        {"GB", 1000000000},
        {"T", 1ull << 40},
        {"TiB", 1ull << 40},
        {"TB", 1000000000000ull},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(units); i++) {
        if (strcmp(p, units[i].suffix) == 0) {
            if (v > UINT64_MAX / units[i].mult)
                return -1;
            *bytes = v * units[i].mult;
            return 0;
        }
    }
    return -1;
}

static int parse_size_node(struct cfg_ctx *ctx, yaml_node_t *node, const struct cfg_key *key,
                           uint64_t *out)
{
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    if (tg_config_parse_size(s, out) < 0 || *out > (uint64_t)INT64_MAX)
        return node_error(ctx, node, "%s must be a size like 512, 16KiB, 10MiB; not '%s'",
                          key->name, s);
    return check_bounds(ctx, node, key, (int64_t)*out, s);
}

static int p_size(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    uint64_t v;
    if (parse_size_node(ctx, node, key, &v) < 0)
        return -1;
    *(size_t *)dst = (size_t)v;
    return 0;
}

static int p_size64(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    uint64_t v;
    if (parse_size_node(ctx, node, key, &v) < 0)
        return -1;
    *(uint64_t *)dst = v;
    return 0;
}

static int p_string(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    if (*s == '\0')
        return node_error(ctx, node, "%s must not be empty", key->name);
    char *copy = tg_arena_strdup(&ctx->cfg->arena, s);
    if (copy == NULL)
        return node_error(ctx, node, "out of memory");
    *(const char **)dst = copy;
    return 0;
}

/* `path` as the file `file` means it: relative to that file's directory.
 * An arena string, or NULL when out of memory. */
static const char *resolve_path(struct cfg_ctx *ctx, int file, const char *path)
{
    const char *dir = file >= 0 && file < TG_CONFIG_MAX_FILES ? ctx->sources[file].dir : NULL;
    if (path[0] == '/' || dir == NULL || dir[0] == '\0')
        return tg_arena_strdup(&ctx->cfg->arena, path);
    size_t dn = strlen(dir), pn = strlen(path);
    bool slash = dir[dn - 1] == '/';
    char *out = tg_arena_alloc(&ctx->cfg->arena, dn + pn + 2);
    if (out != NULL)
        snprintf(out, dn + pn + 2, "%s%s%s", dir, slash ? "" : "/", path);
    return out;
}

/* A file or directory: relative to the directory of the file it is
 * written in, so a configuration works from any working directory. */
static int p_path(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    if (*s == '\0')
        return node_error(ctx, node, "%s must not be empty", key->name);
    const char *path = resolve_path(ctx, node_file(node), s);
    if (path == NULL)
        return node_error(ctx, node, "out of memory");
    *(const char **)dst = path;
    return 0;
}

/* log.access: stdout, off, or a file (p_path). */
static int p_log_target(struct cfg_ctx *ctx, yaml_node_t *node, void *dst,
                        const struct cfg_key *key)
{
    if (node->type == YAML_SCALAR_NODE &&
        (strcmp((const char *)node->data.scalar.value, "stdout") == 0 ||
         strcmp((const char *)node->data.scalar.value, "off") == 0))
        return p_string(ctx, node, dst, key);
    return p_path(ctx, node, dst, key);
}

/* tracing.sample_ratio, log.sample_2xx: a plain decimal from 0 to 1
 * ("0.01", "1"). */
static int p_ratio(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    char *end = NULL;
    double v = is_plain_scalar(node) && (*s >= '0' && *s <= '9') ? strtod(s, &end) : -1;
    if (end == NULL || *end != '\0' || !(v >= 0.0 && v <= 1.0))
        return node_error(ctx, node, "%s must be a number from 0 to 1, not '%s'", key->name, s);
    *(double *)dst = v;
    return 0;
}

/* tracing.otlp.endpoint: plain HTTP to a collector, "http://host[:port]/path"
 * (the exporter speaks HTTP/1.1 itself and has no TLS client). */
static int p_otlp_endpoint(struct cfg_ctx *ctx, yaml_node_t *node, void *dst,
                           const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    const char *host = strncmp(s, "http://", 7) == 0 ? s + 7 : NULL;
    if (host == NULL || *host == '\0' || *host == '/' || *host == ':' ||
        strpbrk(host, " \t\r\n") != NULL)
        return node_error(ctx, node, "%s must be an http://host[:port]/path URL, not '%s'",
                          key->name, s);
    return p_string(ctx, node, dst, key);
}

/* A route's access_log: on or off, like log.access and admin.listen say
 * off (true and false too). */
static int p_on_off(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    static const char *const on[] = {"on", "true", "True", "TRUE"};
    static const char *const off[] = {"off", "false", "False", "FALSE"};
    for (size_t i = 0; i < TG_ARRAY_LEN(on); i++) {
        if (strcmp(s, on[i]) == 0 || strcmp(s, off[i]) == 0) {
            *(bool *)dst = strcmp(s, on[i]) == 0;
            return 0;
        }
    }
    return node_error(ctx, node, "%s must be on or off, not '%s'", key->name, s);
}

static int p_enum(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    for (int i = 0; key->choices[i] != NULL; i++) {
        if (strcmp(s, key->choices[i]) == 0) {
            *(int *)dst = i;
            return 0;
        }
    }
    char list[256] = "";
    for (int i = 0; key->choices[i] != NULL; i++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "", key->choices[i]);
    }
    return node_error(ctx, node, "%s must be one of %s; not '%s'", key->name, list, s);
}

/* ---- mappings and lists --------------------------------------------------- */

/* Applies `keys` to a mapping node, writing into `base`. Unknown and
 * duplicate keys are errors. Returns 0 if every value parsed. */
static int walk_mapping(struct cfg_ctx *ctx, yaml_node_t *node, const struct cfg_key *keys,
                        void *base, const char *section)
{
    if (node->type != YAML_MAPPING_NODE)
        return node_error(ctx, node, "%s must be a mapping, not %s", section, node_kind(node));
    int rc = 0;
    uint64_t seen = 0; /* bit per schema entry; schemas are short */
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
         pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = node_at(ctx, pair->key);
        yaml_node_t *v = node_at(ctx, pair->value);
        if (too_many_visits(ctx, node))
            return -1;
        const char *name = scalar(ctx, k, "a key");
        if (name == NULL) {
            rc = -1;
            continue;
        }
        size_t i = 0;
        while (keys[i].name != NULL && strcmp(keys[i].name, name) != 0)
            i++;
        if (keys[i].name == NULL) {
            node_error(ctx, k, "unknown key '%s' in %s", name, section);
            rc = -1;
            continue;
        }
        if (i < 64 && (seen & (1ull << i))) {
            node_error(ctx, k, "duplicate key '%s' in %s", name, section);
            rc = -1;
            continue;
        }
        if (i < 64)
            seen |= 1ull << i;
        if (keys[i].parse(ctx, v, (char *)base + keys[i].offset, &keys[i]) < 0)
            rc = -1;
    }
    return rc;
}

/* A section given as a mapping: its own table, walked in place. */
static int p_section(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    return walk_mapping(ctx, node, key->sub, dst, key->name);
}

/* A list default ("[400, 401, 403, 429]") as a sequence node of plain
 * scalars in the context's defaults document. */
static yaml_node_t *default_list(struct cfg_ctx *ctx, const char *text)
{
    if (!ctx->defaults_ready) {
        if (!yaml_document_initialize(&ctx->defaults, NULL, NULL, NULL, 1, 1))
            return NULL;
        ctx->defaults_ready = true;
    }
    int seq = yaml_document_add_sequence(&ctx->defaults, NULL, YAML_FLOW_SEQUENCE_STYLE);
    if (seq == 0)
        return NULL;
    const char *p = text + 1;
    for (;;) {
        p += strspn(p, " ");
        size_t n = strcspn(p, ",]");
        while (n > 0 && p[n - 1] == ' ')
            n--;
        if (n > 0) {
            int item = yaml_document_add_scalar(&ctx->defaults, NULL, (yaml_char_t *)p, (int)n,
                                                YAML_PLAIN_SCALAR_STYLE);
            if (item == 0 || !yaml_document_append_sequence_item(&ctx->defaults, seq, item))
                return NULL;
        }
        p += strcspn(p, ",]");
        if (*p != ',')
            break;
        p++;
    }
    return yaml_document_get_node(&ctx->defaults, seq);
}

/* Sets every key of `keys` that has a default (and the keys of its
 * sections) in `base`, through the key's parser: once, when the struct is
 * made, before anything configured is read into it. */
static void apply_defaults(struct cfg_ctx *ctx, const struct cfg_key *keys, void *base)
{
    for (const struct cfg_key *k = keys; k->name != NULL; k++) {
        void *dst = (char *)base + k->offset;
        if (k->sub != NULL)
            apply_defaults(ctx, k->sub, dst);
        if (k->def == NULL)
            continue;
        if (k->def[0] == '[') {
            yaml_document_t *saved = ctx->doc;
            yaml_node_t *list = default_list(ctx, k->def);
            ctx->doc = &ctx->defaults;
            if (list == NULL)
                error_at(ctx, (struct tg_config_mark){1, 1}, "out of memory");
            else
                k->parse(ctx, list, dst, k);
            ctx->doc = saved;
            continue;
        }
        yaml_node_t node;
        memset(&node, 0, sizeof(node));
        node.type = YAML_SCALAR_NODE;
        node.data.scalar.value = (yaml_char_t *)k->def;
        node.data.scalar.length = strlen(k->def);
        node.data.scalar.style = YAML_PLAIN_SCALAR_STYLE;
        k->parse(ctx, &node, dst, k);
    }
}

/* Finds a key's value node in a mapping, or NULL. */
static yaml_node_t *mapping_get(struct cfg_ctx *ctx, yaml_node_t *map, const char *name)
{
    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
         pair++) {
        yaml_node_t *k = node_at(ctx, pair->key);
        if (k != NULL && k->type == YAML_SCALAR_NODE &&
            strcmp((const char *)k->data.scalar.value, name) == 0)
            return node_at(ctx, pair->value);
    }
    return NULL;
}

static size_t list_len(yaml_node_t *node)
{
    return (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
}

static int expect_list(struct cfg_ctx *ctx, yaml_node_t *node, const char *what)
{
    if (node->type != YAML_SEQUENCE_NODE)
        return node_error(ctx, node, "%s must be a list, not %s", what, node_kind(node));
    return 0;
}

/* ---- socket addresses ------------------------------------------------------ */

size_t tg_config_format_sockaddr(const struct sockaddr *sa, char *out, size_t cap)
{
    struct tg_addr a;
    char ip[TG_ADDR_STRLEN];
    tg_addr_from_sockaddr(sa, &a);
    tg_addr_format(&a, ip, sizeof(ip));
    int port = 0;
    if (sa->sa_family == AF_INET)
        port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
    else if (sa->sa_family == AF_INET6)
        port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    int n = snprintf(out, cap, a.family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
    return n < 0 ? 0 : ((size_t)n < cap ? (size_t)n : cap - 1);
}

/* Splits "host:port", "[v6]:port" or ":port" (host "0.0.0.0"). Returns 0,
 * or -1 with err set. */
static int split_hostport(const char *s, char *host, size_t hostcap, const char **port,
                          bool *bracketed, char *err, size_t errlen)
{
    *bracketed = s[0] == '[';
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':') {
            snprintf(err, errlen, "'%s' is not [ipv6]:port", s);
            return -1;
        }
        size_t hn = (size_t)(close - s - 1);
        if (hn == 0 || hn >= hostcap) {
            snprintf(err, errlen, "'%s' has a bad address", s);
            return -1;
        }
        memcpy(host, s + 1, hn);
        host[hn] = '\0';
        *port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL) {
            snprintf(err, errlen, "'%s' has no port (host:port)", s);
            return -1;
        }
        size_t hn = (size_t)(colon - s);
        if (hn >= hostcap || memchr(s, ':', hn) != NULL) {
            snprintf(err, errlen, "'%s': IPv6 addresses go in brackets", s);
            return -1;
        }
        memcpy(host, s, hn);
        host[hn] = '\0';
        *port = colon + 1;
        if (hn == 0)
            snprintf(host, hostcap, "0.0.0.0");
    }
    int64_t pv;
    if (parse_int64(*port, &pv) < 0 || pv < 1 || pv > 65535) {
        snprintf(err, errlen, "'%s' has a bad port", s);
        return -1;
    }
    return 0;
}

int tg_config_parse_sockaddr(const char *s, struct tg_config_sockaddr *out, char *err,
                             size_t errlen)
{
    char host[256];
    const char *port;
    bool bracketed;
    if (split_hostport(s, host, sizeof(host), &port, &bracketed, err, errlen) < 0)
        return -1;
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || res == NULL) {
        snprintf(err, errlen, "cannot resolve '%s': %s", host,
                 rc ? gai_strerror(rc) : "no address");
        return -1;
    }
    memset(&out->sa, 0, sizeof(out->sa));
    memcpy(&out->sa, res->ai_addr, res->ai_addrlen);
    out->salen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* A host name as DNS and /etc/hosts spell them. */
static bool host_name_ok(const char *h)
{
    size_t n = strlen(h);
    if (n == 0 || n > 253 || h[0] == '.' || h[0] == '-')
        return false;
    for (const char *c = h; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_' || *c == '.'))
            return false;
    return true;
}

int tg_config_parse_server(const char *s, struct tg_config_server *out, char *host, size_t hostcap,
                           char *err, size_t errlen)
{
    const char *port;
    bool bracketed;
    memset(out, 0, sizeof(*out));
    if (split_hostport(s, host, hostcap, &port, &bracketed, err, errlen) < 0)
        return -1;
    /* An IP literal is parsed as before (no resolver involved). */
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &res) == 0 && res != NULL) {
        memcpy(&out->addr.sa, res->ai_addr, res->ai_addrlen);
        out->addr.salen = res->ai_addrlen;
        freeaddrinfo(res);
        return 0;
    }
    if (bracketed || !host_name_ok(host)) {
        snprintf(err, errlen, "'%s' has a bad address", s);
        return -1;
    }
    out->host = host;
    out->port = (uint16_t)atoi(port);
    return 0;
}

static int p_sockaddr(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    struct tg_config_sockaddr *out = dst;
    char err[300];
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    if (tg_config_parse_sockaddr(s, out, err, sizeof(err)) < 0)
        return node_error(ctx, node, "%s: %s", key->name, err);
    out->text = tg_arena_strdup(&ctx->cfg->arena, s);
    return out->text ? 0 : node_error(ctx, node, "out of memory");
}

/* ---- sections ------------------------------------------------------------- */

#define FIELD(type, member) offsetof(type, member)

/* Keys handled by hand in their section parser (lists, references) appear
 * in the schema with p_skip, so the walker knows them and leaves them. */
static int p_skip(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    (void)ctx, (void)node, (void)dst, (void)key;
    return 0;
}

static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const balances[] = {"round_robin", "least_conn", "hash", NULL};
static const char *const directories[] = {"static", "redis", NULL};
static const char *const client_verify_modes[] = {"required", "optional", NULL};
/* enum tg_client_ip_header order */
static const char *const client_ip_headers[] = {"auto", "x-forwarded-for", "forwarded", NULL};

static int p_tls_version(struct cfg_ctx *ctx, yaml_node_t *node, void *dst,
                         const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    if (strcmp(s, "1.2") == 0 || strcmp(s, "TLSv1.2") == 0) {
        *(int *)dst = TLS1_2_VERSION;
        return 0;
    }
    if (strcmp(s, "1.3") == 0 || strcmp(s, "TLSv1.3") == 0) {
        *(int *)dst = TLS1_3_VERSION;
        return 0;
    }
    return node_error(ctx, node,
                      "%s must be 1.2 or 1.3 (older versions are not "
                      "offered); not '%s'",
                      key->name, s);
}

static int p_client_verify(struct cfg_ctx *ctx, yaml_node_t *node, void *dst,
                           const struct cfg_key *key)
{
    int v;
    if (p_enum(ctx, node, &v, key) < 0)
        return -1;
    *(bool *)dst = v == 1;
    return 0;
}

static int p_workers(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    if (strcmp(s, "auto") == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        *(unsigned *)dst = n < 1 ? 1 : (n > 256 ? 256 : (unsigned)n);
        return 0;
    }
    return p_uint(ctx, node, dst, key);
}

/* The tables below: key, parser, field, min, max (0: none), choices,
 * default (as YAML; NULL: zero or none), the section's own table. They are
 * the reference docs/configuration.md describes. */

static const struct cfg_key client_keys[] = {
    {"header_timeout", p_duration, FIELD(struct tg_config_client, header_timeout_ms), 1, 0, NULL,
     "10s"},
    {"keepalive_timeout", p_duration, FIELD(struct tg_config_client, keepalive_timeout_ms), 0, 0,
     NULL, "60s"},
    {"body_timeout", p_duration, FIELD(struct tg_config_client, body_timeout_ms), 1, 0, NULL,
     "60s"},
    {"send_timeout", p_duration, FIELD(struct tg_config_client, send_timeout_ms), 1, 0, NULL,
     "60s"},
    {"min_body_rate", p_size64, FIELD(struct tg_config_client, min_body_rate), 0, 0, NULL, "0"},
    {"max_request_line", p_size, FIELD(struct tg_config_client, max_request_line), 64, 1 << 20,
     NULL, "8KiB"},
    {"max_head", p_size, FIELD(struct tg_config_client, max_head), 256, 1 << 20, NULL, "32KiB"},
    {"max_headers", p_uint, FIELD(struct tg_config_client, max_headers), 1, 256, NULL, "100"},
    {"max_body", p_size64, FIELD(struct tg_config_client, max_body), 0, 0, NULL, "0"},
    {"max_connections", p_uint, FIELD(struct tg_config_client, max_connections), 0, 10000000, NULL,
     "0"},
    {"buffer_size", p_size, FIELD(struct tg_config_client, buffer_size), 4096, 1 << 24, NULL,
     "16KiB"},
    {"ipv6_prefix", p_uint, FIELD(struct tg_config_client, ipv6_prefix), 1, 128, NULL, "64"},
    {NULL, NULL, 0, 0, 0, NULL},
};

static const struct cfg_key stream_keys[] = {
    {"heartbeat", p_duration, FIELD(struct tg_config_stream, heartbeat_ms), 0, 0, NULL, "30s"},
    {"max_per_ip", p_uint, FIELD(struct tg_config_stream, max_per_ip), 0, 1000000, NULL, "100"},
    {"idle_timeout", p_duration, FIELD(struct tg_config_stream, idle_timeout_ms), 0, 0, NULL, "0"},
    {NULL, NULL, 0, 0, 0, NULL},
};

static const struct cfg_key http2_keys[] = {
    {"max_concurrent_streams", p_uint, FIELD(struct tg_config_http2, max_concurrent_streams), 1,
     65536, NULL, "128"},
    {"stream_window", p_size, FIELD(struct tg_config_http2, stream_window), 16384, 16 << 20, NULL,
     "256KiB"},
    {"connection_window", p_size, FIELD(struct tg_config_http2, connection_window), 65535, 1 << 30,
     NULL, "1MiB"},
    {"max_resets", p_uint, FIELD(struct tg_config_http2, max_resets), 1, 1000000, NULL, "200"},
    {"max_control_frames", p_uint, FIELD(struct tg_config_http2, max_control), 1, 1000000, NULL,
     "1000"},
    {NULL, NULL, 0, 0, 0, NULL},
};

const char *const tg_config_log_field_names[TG_LOG_FIELD_COUNT] = {
    [TG_LOG_FIELD_TIME] = "time",
    [TG_LOG_FIELD_CLIENT] = "client",
    [TG_LOG_FIELD_METHOD] = "method",
    [TG_LOG_FIELD_HOST] = "host",
    [TG_LOG_FIELD_PATH] = "path",
    [TG_LOG_FIELD_ROUTE] = "route",
    [TG_LOG_FIELD_PROTO] = "proto",
    [TG_LOG_FIELD_STATUS] = "status",
    [TG_LOG_FIELD_BYTES_IN] = "bytes_in",
    [TG_LOG_FIELD_BYTES_OUT] = "bytes_out",
    [TG_LOG_FIELD_DURATION_MS] = "duration_ms",
    [TG_LOG_FIELD_ENCODING] = "encoding",
    [TG_LOG_FIELD_UPSTREAM] = "upstream",
    [TG_LOG_FIELD_UPSTREAM_CONNECT_MS] = "upstream_connect_ms",
    [TG_LOG_FIELD_UPSTREAM_MS] = "upstream_ms",
    [TG_LOG_FIELD_REQUEST_ID] = "request_id",
    [TG_LOG_FIELD_TRACE_ID] = "trace_id",
    [TG_LOG_FIELD_SPAN_ID] = "span_id",
    [TG_LOG_FIELD_TLS] = "tls",
    [TG_LOG_FIELD_TENANT] = "tenant",
    [TG_LOG_FIELD_COUNTRY] = "country",
    [TG_LOG_FIELD_RATELIMIT] = "ratelimit",
    [TG_LOG_FIELD_USER_AGENT] = "user_agent",
    [TG_LOG_FIELD_REFERER] = "referer",
};

/* log.access_fields: a list of field names, kept in the order written, or
 * `all` (every field, in enum order). Resolved to ids here, so a line is
 * a loop over them. */
static int p_log_fields(struct cfg_ctx *ctx, yaml_node_t *node, void *dst,
                        const struct cfg_key *key)
{
    struct tg_config_log *lc =
        (struct tg_config_log *)((char *)dst - offsetof(struct tg_config_log, fields));
    if (node->type == YAML_SCALAR_NODE &&
        strcmp((const char *)node->data.scalar.value, "all") == 0) {
        for (unsigned f = 0; f < TG_LOG_FIELD_COUNT; f++)
            lc->fields[f] = (uint8_t)f;
        lc->nfields = TG_LOG_FIELD_COUNT;
        lc->field_set = (1u << TG_LOG_FIELD_COUNT) - 1;
        return 0;
    }
    if (node->type != YAML_SEQUENCE_NODE)
        return node_error(ctx, node, "%s must be a list of field names, or all; not %s", key->name,
                          node_kind(node));
    uint8_t fields[TG_LOG_FIELD_COUNT];
    uint32_t set = 0;
    size_t n = 0;
    int rc = 0;
    for (size_t i = 0; i < list_len(node); i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        const char *name = scalar(ctx, item, "a field name");
        if (name == NULL) {
            rc = -1;
            continue;
        }
        unsigned f = 0;
        while (f < TG_LOG_FIELD_COUNT && strcmp(tg_config_log_field_names[f], name) != 0)
            f++;
        if (f == TG_LOG_FIELD_COUNT) {
            char list[512] = "";
            for (unsigned k = 0; k < TG_LOG_FIELD_COUNT; k++) {
                size_t used = strlen(list);
                snprintf(list + used, sizeof(list) - used, "%s, ", tg_config_log_field_names[k]);
            }
            rc = node_error(ctx, item, "%s: unknown field '%s' (%sor all alone)", key->name, name,
                            list);
            continue;
        }
        if (set & (1u << f)) {
            rc = node_error(ctx, item, "%s: '%s' is listed twice", key->name, name);
            continue;
        }
        set |= 1u << f;
        fields[n++] = (uint8_t)f;
    }
    if (rc == 0 && n == 0)
        rc = node_error(ctx, node, "%s needs at least one field (or log.access: off)", key->name);
    if (rc == 0) {
        memcpy(lc->fields, fields, n);
        lc->nfields = (uint8_t)n;
        lc->field_set = set;
    }
    return rc;
}

/* Today's line, field for field: what a configuration without
 * access_fields has always logged. */
#define LOG_FIELDS_DEFAULT                                                                   \
    "[time, client, method, host, path, proto, status, bytes_in, bytes_out, duration_ms, "   \
    "encoding, upstream, upstream_ms, request_id, trace_id, span_id, tls, tenant, country, " \
    "ratelimit]"

static const struct cfg_key log_keys[] = {
    {"level", p_enum, FIELD(struct tg_config_log, level), 0, 0, log_levels, "info"},
    {"error", p_path, FIELD(struct tg_config_log, error), 0, 0, NULL, NULL /* stderr */},
    {"access", p_log_target, FIELD(struct tg_config_log, access), 0, 0, NULL, "stdout"},
    {"access_flush", p_duration, FIELD(struct tg_config_log, access_flush_ms), 1, 60000, NULL,
     "1s"},
    {"access_buffer", p_size, FIELD(struct tg_config_log, access_buffer), 4096, 64 << 20, NULL,
     "64KiB"},
    {"access_fields", p_log_fields, FIELD(struct tg_config_log, fields), 0, 0, NULL,
     LOG_FIELDS_DEFAULT},
    {"sample_2xx", p_ratio, FIELD(struct tg_config_log, sample_2xx), 0, 0, NULL, "1"},
    {NULL, NULL, 0, 0, 0, NULL},
};

static const char *const trace_request_ids[] = {"own", "trace_id", NULL};

static const struct cfg_key otlp_keys[] = {
    {"endpoint", p_otlp_endpoint, FIELD(struct tg_config_otlp, endpoint), 0, 0, NULL,
     "http://127.0.0.1:4318/v1/traces"},
    {"timeout", p_duration, FIELD(struct tg_config_otlp, timeout_ms), 10, 60000, NULL, "2s"},
    {"batch", p_uint, FIELD(struct tg_config_otlp, batch), 1, 8192, NULL, "512"},
    {"queue", p_uint, FIELD(struct tg_config_otlp, queue), 1, 1000000, NULL, "8192"},
    {"interval", p_duration, FIELD(struct tg_config_otlp, interval_ms), 10, 60000, NULL, "1s"},
    {NULL, NULL, 0, 0, 0, NULL},
};

static const struct cfg_key tracing_keys[] = {
    {"enabled", p_bool, FIELD(struct tg_config_tracing, enabled), 0, 0, NULL, "false"},
    {"sample_ratio", p_ratio, FIELD(struct tg_config_tracing, sample_ratio), 0, 0, NULL, "0.01"},
    {"service_name", p_string, FIELD(struct tg_config_tracing, service_name), 0, 0, NULL,
     "tollgate"},
    {"request_id", p_enum, FIELD(struct tg_config_tracing, request_id), 0, 0, trace_request_ids,
     "own"},
    {"otlp", p_section, FIELD(struct tg_config_tracing, otlp), 0, 0, NULL, NULL, otlp_keys},
    {NULL, NULL, 0, 0, 0, NULL},
};

static const struct cfg_key listen_keys[] = {
    {"address", p_sockaddr, FIELD(struct tg_config_listen, addr), 0, 0, NULL, NULL /* required */},
    {"tls", p_bool, FIELD(struct tg_config_listen, tls), 0, 0, NULL, "false"},
    {"redirect_to_https", p_int, FIELD(struct tg_config_listen, redirect_to_https), 1, 65535, NULL,
     NULL /* off */},
    {"proxy_protocol", p_bool, FIELD(struct tg_config_listen, proxy_protocol), 0, 0, NULL, "false"},
    {"backlog", p_int, FIELD(struct tg_config_listen, backlog), 1, 65535, NULL, "4096"},
    {"max_connections_per_ip", p_uint, FIELD(struct tg_config_listen, max_connections_per_ip), 0,
     1000000, NULL, "0"},
    {"client_ca", p_path, FIELD(struct tg_config_listen, client_ca), 0, 0, NULL, NULL},
    {"client_verify", p_client_verify, FIELD(struct tg_config_listen, client_verify_optional), 0, 0,
     client_verify_modes, "required"},
    {"client_subject_header", p_string, FIELD(struct tg_config_listen, client_subject_header), 0, 0,
     NULL, NULL},
    {"http2", p_bool, FIELD(struct tg_config_listen, http2), 0, 0, NULL, "true"},
    {"h2c", p_bool, FIELD(struct tg_config_listen, h2c), 0, 0, NULL, "false"},
    {NULL, NULL, 0, 0, 0, NULL},
};

static const struct cfg_key health_check_keys[] = {
    {"path", p_string, FIELD(struct tg_config_health_check, path), 0, 0, NULL, NULL /* off */},
    {"interval", p_duration, FIELD(struct tg_config_health_check, interval_ms), 100, 3600000, NULL,
     "5s"},
    {"timeout", p_duration, FIELD(struct tg_config_health_check, timeout_ms), 10, 600000, NULL,
     "2s"},
    {"fails", p_uint, FIELD(struct tg_config_health_check, fails), 1, 100, NULL, "2"},
    {"passes", p_uint, FIELD(struct tg_config_health_check, passes), 1, 100, NULL, "2"},
    {NULL, NULL, 0, 0, 0, NULL},
};

static int p_hash_key(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key);

static const struct cfg_key upstream_keys[] = {
    {"servers", p_skip, 0, 0, 0, NULL, NULL /* required */},
    {"balance", p_enum, FIELD(struct tg_config_upstream, balance), 0, 0, balances, "round_robin"},
    {"keepalive", p_uint, FIELD(struct tg_config_upstream, keepalive), 0, 100000, NULL, "32"},
    {"keepalive_timeout", p_duration, FIELD(struct tg_config_upstream, keepalive_timeout_ms), 1, 0,
     NULL, "60s"},
    {"keepalive_requests", p_uint, FIELD(struct tg_config_upstream, keepalive_requests), 0,
     100000000, NULL, "10000"},
    {"connect_timeout", p_duration, FIELD(struct tg_config_upstream, connect_timeout_ms), 1, 0,
     NULL, "5s"},
    {"read_timeout", p_duration, FIELD(struct tg_config_upstream, read_timeout_ms), 1, 0, NULL,
     "60s"},
    {"send_timeout", p_duration, FIELD(struct tg_config_upstream, send_timeout_ms), 1, 0, NULL,
     "60s"},
    {"retries", p_uint, FIELD(struct tg_config_upstream, retries), 0, 100, NULL, "1"},
    {"max_connections", p_uint, FIELD(struct tg_config_upstream, max_connections), 0, 1000000, NULL,
     "0"},
    {"max_response_head", p_size, FIELD(struct tg_config_upstream, max_response_head), 1024,
     1 << 20, NULL, "32KiB"},
    {"hash_key", p_hash_key, FIELD(struct tg_config_upstream, hash_key), 0, 0, NULL, "ip"},
    {"max_fails", p_uint, FIELD(struct tg_config_upstream, max_fails), 0, 1000, NULL, "3"},
    {"eject_time", p_duration, FIELD(struct tg_config_upstream, eject_ms), 1, 3600000, NULL, "1s"},
    {"fail_on_5xx", p_bool, FIELD(struct tg_config_upstream, fail_on_5xx), 0, 0, NULL, "false"},
    {"health_check", p_skip, FIELD(struct tg_config_upstream, health_check), 0, 0, NULL, NULL,
     health_check_keys},
    {"tls", p_bool, FIELD(struct tg_config_upstream, tls), 0, 0, NULL, "false"},
    {"tls_verify", p_bool, FIELD(struct tg_config_upstream, tls_verify), 0, 0, NULL, "true"},
    {"tls_ca", p_path, FIELD(struct tg_config_upstream, tls_ca), 0, 0, NULL,
     NULL /* system store */},
    {"tls_server_name", p_string, FIELD(struct tg_config_upstream, tls_server_name), 0, 0, NULL,
     NULL},
    {"resolve_interval", p_duration, FIELD(struct tg_config_upstream, resolve_interval_ms), 100,
     86400000, NULL, "30s"},
    {NULL, NULL, 0, 0, 0, NULL},
};

/* ---- CIDR lists --------------------------------------------------------- */

/* Parses a list of prefixes and preset names into `*set` (created on first
 * use), each with `value`. */
static int parse_cidr_list(struct cfg_ctx *ctx, yaml_node_t *node, const char *what,
                           struct tg_cidr_set **set, int value)
{
    if (expect_list(ctx, node, what) < 0)
        return -1;
    if (*set == NULL && (*set = tg_cidr_set_new()) == NULL)
        return node_error(ctx, node, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < list_len(node); i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        const char *s = scalar(ctx, item, what);
        if (s == NULL) {
            rc = -1;
            continue;
        }
        struct tg_cidr prefixes[TG_CIDR_PRESET_MAX];
        int n = tg_cidr_preset(s, prefixes, TG_ARRAY_LEN(prefixes));
        if (n < 0) {
            char err[200];
            if (tg_cidr_parse(s, strlen(s), &prefixes[0], err, sizeof(err)) < 0) {
                rc = node_error(ctx, item, "%s: '%s': %s", what, s, err);
                continue;
            }
            n = 1;
        }
        for (int k = 0; k < n; k++)
            if (tg_cidr_set_add(*set, &prefixes[k], value) < 0)
                rc = node_error(ctx, item, "out of memory");
    }
    return rc;
}

/* ---- rate limiting -------------------------------------------------------- */

static const char *const rl_stores[] = {"default", "local", "redis", NULL};
static const char *const rl_on_errors[] = {"local", "allow", "deny", NULL};
static const char *const rl_modes[] = {"enforce", "shadow", NULL};
static const char *const rl_counts[] = {"all", "failures", NULL};
static const char *const rl_body_fallbacks[] = {"refuse", "ip", NULL};

static int p_rate(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    struct tg_config_policy *p = dst;
    const char *s = scalar(ctx, node, key->name);
    if (s == NULL)
        return -1;
    if (tg_ratelimit_parse_rate(s, &p->params.interval_ns, &p->count, &p->period_s) < 0)
        return node_error(ctx, node,
                          "rate must look like 10/s, 5/m, 1000/h or 100/d; "
                          "not '%s'",
                          s);
    return 0;
}

static int p_store(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    int v;
    if (p_enum(ctx, node, &v, key) < 0)
        return -1;
    if (v == TG_RL_STORE_DEFAULT)
        return node_error(ctx, node, "store must be local or redis");
    *(enum tg_rl_store *)dst = (enum tg_rl_store)v;
    return 0;
}

static int p_flag_choice(struct cfg_ctx *ctx, yaml_node_t *node, void *dst,
                         const struct cfg_key *key)
{
    int v;
    if (p_enum(ctx, node, &v, key) < 0)
        return -1;
    *(bool *)dst = v == 1;
    return 0;
}

static int p_on_error(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    int v;
    if (p_enum(ctx, node, &v, key) < 0)
        return -1;
    *(enum tg_rl_on_error *)dst = (enum tg_rl_on_error)v;
    return 0;
}

static int parse_key_part(struct cfg_ctx *ctx, yaml_node_t *node,
                          struct tg_config_rl_key_part *part)
{
    static const struct {
        const char *name;
        enum tg_rl_part kind;
        bool named;
    } kinds[] = {
        {"ip", TG_RL_PART_IP, false},           {"route", TG_RL_PART_ROUTE, false},
        {"site", TG_RL_PART_SITE, false},       {"tenant", TG_RL_PART_TENANT, false},
        {"country", TG_RL_PART_COUNTRY, false}, {"asn", TG_RL_PART_ASN, false},
        {"header", TG_RL_PART_HEADER, true},    {"query", TG_RL_PART_QUERY, true},
        {"cookie", TG_RL_PART_COOKIE, true},    {"json", TG_RL_PART_JSON, true},
        {"form", TG_RL_PART_FORM, true},        {"body", TG_RL_PART_BODY, true},
    };
    const char *s = scalar(ctx, node, "a key part");
    if (s == NULL)
        return -1;
    const char *colon = strchr(s, ':');
    size_t n = colon ? (size_t)(colon - s) : strlen(s);
    for (size_t i = 0; i < TG_ARRAY_LEN(kinds); i++) {
        if (strlen(kinds[i].name) != n || strncmp(kinds[i].name, s, n) != 0)
            continue;
        if (kinds[i].named != (colon != NULL) || (colon != NULL && colon[1] == '\0'))
            return node_error(ctx, node,
                              kinds[i].named ? "'%s' needs a name: %s:NAME" : "'%s' takes no name",
                              kinds[i].name, kinds[i].name);
        part->kind = kinds[i].kind;
        if (colon != NULL) {
            part->name = tg_arena_strdup(&ctx->cfg->arena, colon + 1);
            part->name_len = strlen(colon + 1);
            for (const char *c = colon + 1; *c; c++)
                if (*c <= ' ' || *c == 127)
                    return node_error(ctx, node,
                                      "key part name '%s' has a space or control "
                                      "character",
                                      colon + 1);
            bool body = part->kind == TG_RL_PART_JSON || part->kind == TG_RL_PART_FORM ||
                        part->kind == TG_RL_PART_BODY;
            if (body && !tg_bodykey_field_ok(part->name, part->name_len))
                return node_error(ctx, node,
                                  "body field name '%s' must be 1-128 ASCII "
                                  "letters, digits, '_', '-' or '.'",
                                  colon + 1);
        }
        return 0;
    }
    return node_error(ctx, node,
                      "unknown key part '%s' (ip, route, site, tenant, country, asn, "
                      "header:NAME, query:NAME, cookie:NAME, json:FIELD, form:FIELD, "
                      "body:FIELD)",
                      s);
}

/* An upstream's hash_key: one key part, read from the request head. */
static int p_hash_key(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    (void)key;
    struct tg_config_rl_key_part *part = dst;
    if (parse_key_part(ctx, node, part) < 0)
        return -1;
    if (part->kind == TG_RL_PART_JSON || part->kind == TG_RL_PART_FORM ||
        part->kind == TG_RL_PART_BODY)
        return node_error(ctx, node, "hash_key cannot read the body");
    return 0;
}

static int p_key_parts(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    (void)key;
    struct tg_config_policy *p = dst;
    size_t n = node->type == YAML_SEQUENCE_NODE ? list_len(node) : 1;
    if (node->type != YAML_SEQUENCE_NODE && node->type != YAML_SCALAR_NODE)
        return node_error(ctx, node, "key must be a part or a list of parts");
    if (n == 0 || n > 8)
        return node_error(ctx, node, "key needs 1 to 8 parts");
    p->parts = tg_arena_calloc(&ctx->cfg->arena, n, sizeof(*p->parts));
    if (p->parts == NULL)
        return node_error(ctx, node, "out of memory");
    p->nparts = 0;
    int rc = 0;
    char kinds[1024];
    size_t kn = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node->type == YAML_SEQUENCE_NODE
                                ? node_at(ctx, node->data.sequence.items.start[i])
                                : node;
        if (parse_key_part(ctx, item, &p->parts[p->nparts]) < 0) {
            rc = -1;
            continue;
        }
        /* The parts as written, joined as the admin API joins a key's. */
        int w = snprintf(kinds + kn, sizeof(kinds) - kn, "%s%s", kn > 0 ? "|" : "",
                         (const char *)item->data.scalar.value);
        kn += w < 0 ? 0 : ((size_t)w < sizeof(kinds) - kn ? (size_t)w : sizeof(kinds) - kn - 1);
        enum tg_rl_part kind = p->parts[p->nparts].kind;
        if (kind == TG_RL_PART_JSON || kind == TG_RL_PART_FORM || kind == TG_RL_PART_BODY)
            p->needs_body = true;
        p->nparts++;
    }
    kinds[kn] = '\0';
    if (rc == 0 && (p->key_kinds = tg_arena_strdup(&ctx->cfg->arena, kinds)) == NULL)
        rc = node_error(ctx, node, "out of memory");
    return rc;
}

static int p_statuses(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    struct tg_config_policy *p = dst;
    if (expect_list(ctx, node, key->name) < 0)
        return -1;
    size_t n = list_len(node);
    if (n == 0)
        return 0; /* [] keeps the default list */
    p->failure_statuses = tg_arena_calloc(&ctx->cfg->arena, n, sizeof(int));
    if (p->failure_statuses == NULL)
        return node_error(ctx, node, "out of memory");
    p->nfailure_statuses = 0;
    static const struct cfg_key status_key = {"a status", NULL, 0, 100, 599, NULL};
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        int v;
        if (p_int(ctx, item, &v, &status_key) < 0) {
            rc = -1;
            continue;
        }
        p->failure_statuses[p->nfailure_statuses++] = v;
    }
    return rc;
}

static int p_burst(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    unsigned v;
    if (p_uint(ctx, node, &v, key) < 0)
        return -1;
    *(int64_t *)dst = v;
    return 0;
}

static const struct cfg_key policy_keys[] = {
    {"rate", p_rate, 0, 0, 0, NULL, NULL /* required */},
    {"burst", p_burst, FIELD(struct tg_config_policy, params.burst), 1, 1000000000, NULL, "1"},
    {"delay", p_burst, FIELD(struct tg_config_policy, params.delay), 0, 1000000000, NULL, "0"},
    {"key", p_key_parts, 0, 0, 0, NULL, "[ip]"},
    {"mode", p_flag_choice, FIELD(struct tg_config_policy, shadow), 0, 0, rl_modes, "enforce"},
    {"count", p_flag_choice, FIELD(struct tg_config_policy, count_failures), 0, 0, rl_counts,
     "all"},
    {"failure_statuses", p_statuses, 0, 0, 0, NULL,
     "[400, 401, 403, 429]" /* with count: failures */},
    {"store", p_store, FIELD(struct tg_config_policy, store), 0, 0, rl_stores,
     NULL /* rate_limit.store */},
    {"max_peek", p_size, FIELD(struct tg_config_policy, max_peek), 16, 65536, NULL, "4KiB"},
    {"body_fallback", p_flag_choice, FIELD(struct tg_config_policy, body_fallback), 0, 0,
     rl_body_fallbacks, "refuse"},
    {NULL, NULL, 0, 0, 0, NULL},
};

/* Sentinels a Redis primary is found through: a list of host:port (no
 * unix sockets: Sentinel answers with a TCP address anyway). */
#define SENTINELS_MAX 16
static int p_sentinels(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    struct tg_config_redis *r =
        (struct tg_config_redis *)((char *)dst - offsetof(struct tg_config_redis, sentinels));
    if (expect_list(ctx, node, key->name) < 0)
        return -1;
    size_t n = list_len(node);
    if (n == 0 || n > SENTINELS_MAX)
        return node_error(ctx, node, "%s must list 1 to %d host:port addresses", key->name,
                          SENTINELS_MAX);
    const char **v = tg_arena_calloc(&ctx->cfg->arena, n, sizeof(*v));
    if (v == NULL)
        return node_error(ctx, node, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        const char *s = scalar(ctx, item, "a sentinel address");
        struct tg_config_sockaddr sa;
        char err[300];
        if (s == NULL) {
            rc = -1;
        } else if (strncmp(s, "unix:", 5) == 0 ||
                   tg_config_parse_sockaddr(s, &sa, err, sizeof(err)) < 0) {
            rc = node_error(ctx, item, "%s: %s", key->name,
                            strncmp(s, "unix:", 5) == 0 ? "a sentinel is host:port, not a unix "
                                                          "socket"
                                                        : err);
        } else if ((v[i] = tg_arena_strdup(&ctx->cfg->arena, s)) == NULL) {
            return node_error(ctx, item, "out of memory");
        }
    }
    if (rc == 0) {
        r->sentinels = v;
        r->nsentinels = n;
    }
    return rc;
}

/* Redis Cluster's seed nodes: 1 to 64 "host:port" (no unix sockets: the
 * cluster names its nodes by address). */
#define REDIS_CLUSTER_SEEDS_MAX 64
static int p_redis_cluster(struct cfg_ctx *ctx, yaml_node_t *node, void *dst,
                           const struct cfg_key *key)
{
    struct tg_config_redis *r = dst;
    if (expect_list(ctx, node, key->name) < 0)
        return -1;
    size_t n = list_len(node);
    if (n == 0 || n > REDIS_CLUSTER_SEEDS_MAX)
        return node_error(ctx, node, "cluster needs 1 to %d seed nodes (host:port)",
                          REDIS_CLUSTER_SEEDS_MAX);
    r->cluster = tg_arena_calloc(&ctx->cfg->arena, n, sizeof(*r->cluster));
    if (r->cluster == NULL)
        return node_error(ctx, node, "out of memory");
    r->ncluster = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        const char *s = scalar(ctx, item, "a cluster seed node");
        struct tg_config_sockaddr sa;
        char err[300];
        if (s == NULL) {
            rc = -1;
        } else if (tg_config_parse_sockaddr(s, &sa, err, sizeof(err)) < 0) {
            rc = node_error(ctx, item, "redis cluster node: %s", err);
        } else if ((r->cluster[r->ncluster++] = tg_arena_strdup(&ctx->cfg->arena, s)) == NULL) {
            rc = node_error(ctx, item, "out of memory");
        }
    }
    return rc;
}

/* A Redis server's keys; only the key prefix differs between the users. */
// clang-format off
#define REDIS_KEYS(prefix)                                                                   \
    {                                                                                        \
        {"address", p_string, FIELD(struct tg_config_redis, address), 0, 0, NULL,            \
         "127.0.0.1:6379"},                                                                  \
        {"password", p_string, FIELD(struct tg_config_redis, password), 0, 0, NULL, NULL},   \
        {"db", p_uint, FIELD(struct tg_config_redis, db), 0, 1000, NULL, "0"},               \
        {"timeout", p_duration, FIELD(struct tg_config_redis, timeout_ms), 1, 60000, NULL,   \
         "50ms"},                                                                            \
        {"key_prefix", p_string, FIELD(struct tg_config_redis, key_prefix), 0, 0, NULL,      \
         prefix},                                                                            \
        {"on_error", p_skip, 0, 0, 0, NULL, NULL /* rate_limit.redis: local */},             \
        {"sentinels", p_sentinels, FIELD(struct tg_config_redis, sentinels), 0, 0, NULL,     \
         NULL},                                                                              \
        {"master", p_string, FIELD(struct tg_config_redis, master), 0, 0, NULL, NULL},       \
        {"sentinel_password", p_string, FIELD(struct tg_config_redis, sentinel_password), 0, \
         0, NULL, NULL},                                                                     \
        {"cluster", p_redis_cluster, 0, 0, 0, NULL, NULL /* none: address */},              \
        {NULL, NULL, 0, 0, 0, NULL},                                                         \
    }
// clang-format on
static const struct cfg_key rl_redis_keys[] = REDIS_KEYS("tollgate:rl:");
static const struct cfg_key tenant_redis_keys[] = REDIS_KEYS("tollgate:tenant:");
static const struct cfg_key tls_redis_keys[] = REDIS_KEYS("tollgate:tls:");

/* Parses a redis mapping into `r` (already holding its defaults); checks
 * the address form. */
static int parse_redis(struct cfg_ctx *ctx, yaml_node_t *node, struct tg_config_redis *r,
                       const struct cfg_key *keys, const char *what)
{
    r->mark = mark_of(node);
    int rc = walk_mapping(ctx, node, keys, r, what);
    /* One way to the server: an address, or the sentinels that know it.
     * What this block writes replaces what it inherited. */
    yaml_node_t *addr_n = mapping_get(ctx, node, "address");
    yaml_node_t *sent_n = mapping_get(ctx, node, "sentinels");
    yaml_node_t *master_n = mapping_get(ctx, node, "master");
    yaml_node_t *spw_n = mapping_get(ctx, node, "sentinel_password");
    if (addr_n != NULL && sent_n != NULL) {
        rc = node_error(ctx, sent_n,
                        "%s: address and sentinels exclude each other (the sentinels name "
                        "the primary)",
                        what);
    } else if (addr_n != NULL) {
        r->sentinels = NULL;
        r->nsentinels = 0;
        r->master = NULL;
        r->sentinel_password = NULL;
    } else if (sent_n != NULL || r->nsentinels > 0) {
        r->address = NULL;
    }
    if (addr_n == NULL || sent_n == NULL) {
        if (r->nsentinels > 0 && r->master == NULL && master_n == NULL)
            rc = node_error(ctx, sent_n != NULL ? sent_n : node,
                            "%s: sentinels need master (the name the sentinels monitor)", what);
        else if (sent_n == NULL && r->nsentinels == 0 && (master_n != NULL || spw_n != NULL))
            rc = node_error(ctx, master_n != NULL ? master_n : spw_n, "%s: %s needs sentinels",
                            what, master_n != NULL ? "master" : "sentinel_password");
    }
    /* Or a Redis Cluster's seed nodes: exclusive with both. */
    yaml_node_t *cl = mapping_get(ctx, node, "cluster");
    if (cl != NULL && (addr_n != NULL || sent_n != NULL))
        rc = node_error(ctx, cl,
                        "%s: cluster, address and sentinels exclude each other (cluster names "
                        "the seed nodes)",
                        what);
    else if (cl != NULL) {
        r->sentinels = NULL; /* inherited ones: the cluster replaces them */
        r->nsentinels = 0;
        r->master = NULL;
        r->sentinel_password = NULL;
    } else if (addr_n != NULL || sent_n != NULL) {
        r->cluster = NULL; /* an address or sentinels here replace an inherited cluster */
        r->ncluster = 0;
    }
    if (r->ncluster > 0 && r->db != 0)
        rc = node_error(ctx, mapping_get(ctx, node, "db"), "%s: Redis Cluster has only db 0", what);
    if (r->address != NULL && strncmp(r->address, "unix:", 5) != 0) {
        struct tg_config_sockaddr sa;
        char err[200];
        if (tg_config_parse_sockaddr(r->address, &sa, err, sizeof(err)) < 0) {
            yaml_node_t *a = mapping_get(ctx, node, "address");
            rc = node_error(ctx, a ? a : node, "redis address: %s", err);
        }
    } else if (r->address != NULL && r->address[5] == '\0') {
        rc = node_error(ctx, node, "redis address unix: needs a path");
    } else if (r->address != NULL && r->address[5] != '/' &&
               mapping_get(ctx, node, "address") != NULL) {
        /* A socket file, relative to the file that names it (an inherited
         * address was resolved where it was written). */
        yaml_node_t *a = mapping_get(ctx, node, "address");
        const char *path = resolve_path(ctx, node_file(a), r->address + 5);
        char *addr = path != NULL ? tg_arena_alloc(&ctx->cfg->arena, strlen(path) + 6) : NULL;
        if (addr == NULL)
            return node_error(ctx, node, "out of memory");
        sprintf(addr, "unix:%s", path);
        r->address = addr;
    }
    return rc;
}

static const char *const acme_key_types[] = {"ecdsa", "rsa", NULL};

static const struct cfg_key acme_keys[] = {
    {"email", p_string, FIELD(struct tg_config_acme, email), 0, 0, NULL, NULL},
    {"ca", p_string, FIELD(struct tg_config_acme, directory), 0, 0, NULL,
     "https://acme-v02.api.letsencrypt.org/directory"},
    {"ca_bundle", p_path, FIELD(struct tg_config_acme, ca_bundle), 0, 0, NULL, NULL /* system */},
    {"eab_kid", p_string, FIELD(struct tg_config_acme, eab_kid), 0, 0, NULL, NULL},
    {"eab_hmac_key", p_string, FIELD(struct tg_config_acme, eab_hmac_key), 0, 0, NULL, NULL},
    {"key_type", p_enum, FIELD(struct tg_config_acme, key_type), 0, 0, acme_key_types, "ecdsa"},
    {"state_dir", p_path, FIELD(struct tg_config_acme, state_dir), 0, 0, NULL,
     "/var/lib/tollgate/acme"},
    {"http01", p_bool, FIELD(struct tg_config_acme, http01), 0, 0, NULL, "true"},
    {"tls_alpn01", p_bool, FIELD(struct tg_config_acme, tls_alpn01), 0, 0, NULL, "true"},
    {"on_demand", p_bool, FIELD(struct tg_config_acme, on_demand), 0, 0, NULL, "false"},
    {"ask", p_string, FIELD(struct tg_config_acme, ask), 0, 0, NULL, NULL},
    {"on_demand_timeout", p_duration, FIELD(struct tg_config_acme, on_demand_timeout_ms), 100,
     600000, NULL, "10s"},
    {"max_per_hour", p_uint, FIELD(struct tg_config_acme, max_per_hour), 1, 100000, NULL, "20"},
    {"timeout", p_duration, FIELD(struct tg_config_acme, timeout_ms), 100, 600000, NULL, "30s"},
    {NULL, NULL, 0, 0, 0, NULL},
};

/* tls.acme: present means on. */
static int p_acme(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    struct tg_config_acme *a = dst;
    a->enabled = true;
    a->mark = mark_of(node);
    int rc = walk_mapping(ctx, node, key->sub, a, "tls.acme");
    if (a->eab_kid != NULL && a->eab_hmac_key == NULL)
        rc = node_error(ctx, node, "tls.acme: eab_kid needs eab_hmac_key");
    return rc;
}

static const struct cfg_key certificate_keys[] = {
    {"cert", p_path, FIELD(struct tg_config_certificate, cert), 0, 0, NULL, NULL},
    {"key", p_path, FIELD(struct tg_config_certificate, key), 0, 0, NULL, NULL},
    {NULL, NULL, 0, 0, 0, NULL},
};

static const struct cfg_key tls_keys[] = {
    {"certificates", p_skip, 0, 0, 0, NULL, NULL /* [] */},
    {"min_version", p_tls_version, FIELD(struct tg_config_tls, min_version), 0, 0, NULL, "1.2"},
    {"ciphers", p_string, FIELD(struct tg_config_tls, ciphers), 0, 0, NULL,
     NULL /* tls_server.c's */},
    {"ciphersuites", p_string, FIELD(struct tg_config_tls, ciphersuites), 0, 0, NULL,
     NULL /* OpenSSL's */},
    {"session_tickets", p_bool, FIELD(struct tg_config_tls, session_tickets), 0, 0, NULL, "true"},
    {"ticket_key_rotation", p_duration, FIELD(struct tg_config_tls, ticket_key_rotation_ms), 60000,
     0, NULL, "1h"},
    {"session_cache_size", p_uint, FIELD(struct tg_config_tls, session_cache_size), 0, 10000000,
     NULL, "20480"},
    {"session_timeout", p_duration, FIELD(struct tg_config_tls, session_timeout_ms), 1000, 86400000,
     NULL, "1h"},
    {"handshake_timeout", p_duration, FIELD(struct tg_config_tls, handshake_timeout_ms), 100, 0,
     NULL, "10s"},
    {"ticket_key_file", p_path, FIELD(struct tg_config_tls, ticket_key_file), 0, 0, NULL, NULL},
    {"acme", p_acme, FIELD(struct tg_config_tls, acme), 0, 0, NULL, NULL, acme_keys},
    {"redis", p_skip, FIELD(struct tg_config_tls, redis), 0, 0, NULL, NULL /* rate_limit.redis */,
     tls_redis_keys},
    {NULL, NULL, 0, 0, 0, NULL},
};

static const struct tg_config_policy *find_policy(const struct tg_config *c, const char *name)
{
    for (size_t i = 0; i < c->rate_limit.npolicies; i++)
        if (strcmp(c->rate_limit.policies[i].name, name) == 0)
            return &c->rate_limit.policies[i];
    return NULL;
}

/* A policy name or a list of them. */
static int parse_policy_list(struct cfg_ctx *ctx, yaml_node_t *node,
                             struct tg_config_policy_list *out)
{
    size_t n = node->type == YAML_SEQUENCE_NODE ? list_len(node) : 1;
    if (node->type != YAML_SEQUENCE_NODE && node->type != YAML_SCALAR_NODE)
        return node_error(ctx, node, "rate_limit must be a policy name or a list of names");
    if (n > TG_RATELIMIT_LOCAL_MAX_OPS / 2)
        return node_error(ctx, node, "at most %d policies apply to one route",
                          TG_RATELIMIT_LOCAL_MAX_OPS / 2);
    out->set = true;
    out->n = 0;
    out->items = tg_arena_calloc(&ctx->cfg->arena, n ? n : 1, sizeof(*out->items));
    if (out->items == NULL)
        return node_error(ctx, node, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node->type == YAML_SEQUENCE_NODE
                                ? node_at(ctx, node->data.sequence.items.start[i])
                                : node;
        const char *s = scalar(ctx, item, "a policy name");
        if (s == NULL) {
            rc = -1;
            continue;
        }
        const struct tg_config_policy *p = find_policy(ctx->cfg, s);
        if (p == NULL) {
            rc = node_error(ctx, item, "no rate-limit policy named '%s'", s);
            continue;
        }
        for (size_t k = 0; k < out->n; k++)
            if (out->items[k] == p)
                rc = node_error(ctx, item, "policy '%s' is listed twice", s);
        out->items[out->n++] = p;
    }
    return rc;
}

/* rate_limit.local's keys live in struct tg_config_rate_limit itself. */
static const struct cfg_key rl_local_keys[] = {
    {"max_keys", p_size, FIELD(struct tg_config_rate_limit, local_max_keys), 1024, 1000000000, NULL,
     "1000000"},
    {NULL, NULL, 0, 0, 0, NULL},
};

static const struct cfg_key rate_limit_keys[] = {
    {"store", p_store, FIELD(struct tg_config_rate_limit, store), 0, 0, rl_stores, "local"},
    {"headers", p_bool, FIELD(struct tg_config_rate_limit, headers), 0, 0, NULL, "false"},
    {"legacy_headers", p_bool, FIELD(struct tg_config_rate_limit, legacy_headers), 0, 0, NULL,
     "false"},
    {"exempt", p_skip, 0, 0, 0, NULL, NULL /* [] */},
    {"global", p_skip, 0, 0, 0, NULL, NULL /* [] */},
    {"local", p_section, 0, 0, 0, NULL, NULL, rl_local_keys},
    {"redis", p_skip, FIELD(struct tg_config_rate_limit, redis), 0, 0, NULL, NULL, rl_redis_keys},
    {"policies", p_skip, 0, 0, 0, NULL, NULL /* {} */},
    {NULL, NULL, 0, 0, 0, NULL},
};

static int parse_rate_limit(struct cfg_ctx *ctx, yaml_node_t *node)
{
    struct tg_config *cfg = ctx->cfg;
    struct tg_config_rate_limit *rl = &cfg->rate_limit;
    int rc = walk_mapping(ctx, node, rate_limit_keys, rl, "rate_limit");
    if (node->type != YAML_MAPPING_NODE)
        return -1;
    yaml_node_t *n;
    if ((n = mapping_get(ctx, node, "redis")) != NULL) {
        rl->has_redis = true;
        if (parse_redis(ctx, n, &rl->redis, rl_redis_keys, "rate_limit.redis") < 0)
            rc = -1;
        yaml_node_t *oe = mapping_get(ctx, n, "on_error");
        static const struct cfg_key oe_key = {"on_error", p_on_error, 0, 0, 0, rl_on_errors};
        if (oe != NULL && p_on_error(ctx, oe, &rl->on_error, &oe_key) < 0)
            rc = -1;
    }
    if ((n = mapping_get(ctx, node, "exempt")) != NULL &&
        parse_cidr_list(ctx, n, "exempt", &rl->exempt, 1) < 0)
        rc = -1;
    if ((n = mapping_get(ctx, node, "policies")) != NULL) {
        if (n->type != YAML_MAPPING_NODE)
            return node_error(ctx, n, "policies must be a mapping of names");
        size_t np = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
        rl->policies = tg_arena_calloc(&cfg->arena, np ? np : 1, sizeof(*rl->policies));
        if (rl->policies == NULL)
            return node_error(ctx, n, "out of memory");
        for (size_t i = 0; i < np; i++) {
            yaml_node_pair_t *pair = &n->data.mapping.pairs.start[i];
            yaml_node_t *k = node_at(ctx, pair->key), *v = node_at(ctx, pair->value);
            const char *name = scalar(ctx, k, "a policy name");
            if (name == NULL) {
                rc = -1;
                continue;
            }
            bool ok_name = *name != '\0' && strlen(name) <= 64;
            for (const char *c = name; *c; c++)
                ok_name &= (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                           (*c >= '0' && *c <= '9') || *c == '_' || *c == '-' || *c == '.';
            if (!ok_name) {
                rc = node_error(ctx, k, "policy name '%s' must be 1-64 of [A-Za-z0-9_.-]", name);
                continue;
            }
            if (find_policy(cfg, name) != NULL) {
                rc = node_error(ctx, k, "policy '%s' is defined twice", name);
                continue;
            }
            struct tg_config_policy *p = &rl->policies[rl->npolicies];
            apply_defaults(ctx, policy_keys, p);
            p->name = tg_arena_strdup(&cfg->arena, name);
            p->index = rl->npolicies;
            p->mark = mark_of(k);
            if (walk_mapping(ctx, v, policy_keys, p, "a policy") < 0) {
                rc = -1;
                continue;
            }
            if (p->params.interval_ns == 0) {
                rc = node_error(ctx, v, "policy '%s' needs a rate", name);
                continue;
            }
            if (p->count_failures && p->params.delay > 0) {
                rc = node_error(ctx, v, "policy '%s': delay does not apply to count: failures",
                                name);
                continue;
            }
            if (p->store == TG_RL_STORE_DEFAULT) /* inherited */
                p->store = rl->store;
            rl->npolicies++;
        }
    }
    if ((n = mapping_get(ctx, node, "global")) != NULL &&
        parse_policy_list(ctx, n, &rl->global) < 0)
        rc = -1;
    bool uses_redis = false;
    for (size_t i = 0; i < rl->npolicies; i++)
        uses_redis |= rl->policies[i].store == TG_RL_STORE_REDIS;
    if (uses_redis && !rl->has_redis)
        rl->has_redis = true; /* defaults: 127.0.0.1:6379 */
    return rc;
}

/* ---- tenants --------------------------------------------------------------- */

static int parse_servers(struct cfg_ctx *ctx, yaml_node_t *node, struct tg_config_upstream *u);
static int parse_upstream_settings(struct cfg_ctx *ctx, yaml_node_t *v,
                                   struct tg_config_upstream *u, const char *what);

static const char *const tenant_statuses[] = {"active", "suspended", NULL};
static const struct cfg_key tenant_keys[] = {
    {"servers", p_skip, 0, 0, 0, NULL, NULL /* required */},
    {"status", p_flag_choice, FIELD(struct tg_config_tenant, suspended), 0, 0, tenant_statuses,
     "active"},
    {"rate", p_skip, 0, 0, 0, NULL, NULL /* the policy's */},
    {"burst", p_burst, FIELD(struct tg_config_tenant, burst), 1, 1000000000, NULL,
     NULL /* the policy's */},
    {NULL, NULL, 0, 0, 0, NULL},
};

static const struct cfg_key activation_keys[] = {
    {"timeout", p_duration, FIELD(struct tg_config_activation, timeout_ms), 100, 600000, NULL,
     "10s"},
    {"max_waiting", p_uint, FIELD(struct tg_config_activation, max_waiting), 1, 1000000, NULL,
     "1000"},
    {"unknown", p_bool, FIELD(struct tg_config_activation, unknown), 0, 0, NULL, "false"},
    {"stream", p_string, FIELD(struct tg_config_activation, stream), 0, 0, NULL,
     NULL /* key_prefix + "activate" */},
    {NULL, NULL, 0, 0, 0, NULL},
};

/* tenants.activation: {} turns it on with the defaults. */
static int p_activation(struct cfg_ctx *ctx, yaml_node_t *node, void *dst,
                        const struct cfg_key *key)
{
    struct tg_config_activation *a = dst;
    a->enabled = true;
    a->mark = mark_of(node);
    return walk_mapping(ctx, node, key->sub, a, "tenants.activation");
}

static const struct cfg_key tenants_keys[] = {
    {"directory", p_enum, FIELD(struct tg_config_tenants, directory), 0, 0, directories, "static"},
    {"redis", p_skip, FIELD(struct tg_config_tenants, redis), 0, 0, NULL, NULL, tenant_redis_keys},
    {"cache_ttl", p_duration, FIELD(struct tg_config_tenants, cache_ttl_ms), 0, 86400000, NULL,
     "30s"},
    {"negative_ttl", p_duration, FIELD(struct tg_config_tenants, negative_ttl_ms), 0, 86400000,
     NULL, "2s"},
    {"stale_ttl", p_duration, FIELD(struct tg_config_tenants, stale_ttl_ms), 0, 86400000, NULL,
     "5m"},
    {"max_cached", p_size, FIELD(struct tg_config_tenants, max_cached), 16, 100000000, NULL,
     "100000"},
    {"move_grace", p_duration, FIELD(struct tg_config_tenants, move_grace_ms), 0, 3600000, NULL,
     "10s"},
    {"activation", p_activation, FIELD(struct tg_config_tenants, activation), 0, 0, NULL,
     NULL /* off */, activation_keys},
    {"static", p_skip, 0, 0, 0, NULL, NULL /* {} */},
    {"domains", p_skip, 0, 0, 0, NULL, NULL /* {} */},
    {"upstream_defaults", p_skip, FIELD(struct tg_config_tenants, upstream_defaults), 0, 0, NULL,
     NULL, upstream_keys},
    {NULL, NULL, 0, 0, 0, NULL},
};

static int parse_tenant_entry(struct cfg_ctx *ctx, yaml_node_t *k, yaml_node_t *v,
                              struct tg_config_tenant *t)
{
    apply_defaults(ctx, tenant_keys, t);
    t->mark = mark_of(k);
    int rc = walk_mapping(ctx, v, tenant_keys, t, "a tenant");
    if (v->type != YAML_MAPPING_NODE)
        return -1;
    yaml_node_t *n = mapping_get(ctx, v, "servers");
    struct tg_config_upstream tmp = {0};
    if (n == NULL) {
        /* A suspended tenant is answered 403: nothing is forwarded. */
        if (!t->suspended)
            rc = node_error(ctx, v, "tenant '%s' needs servers (or status: suspended)", t->id);
    } else if (parse_servers(ctx, n, &tmp) < 0)
        rc = -1;
    t->servers = tmp.servers;
    t->nservers = tmp.nservers;
    if ((n = mapping_get(ctx, v, "rate")) != NULL) {
        const char *s = scalar(ctx, n, "rate");
        if (s == NULL ||
            tg_ratelimit_parse_rate(s, &t->rate_interval_ns, &t->rate_count, &t->rate_period_s) < 0)
            rc = node_error(ctx, n, "rate must look like 100/s or 1000/h");
    }
    return rc;
}

static int parse_tenants(struct cfg_ctx *ctx, yaml_node_t *node)
{
    struct tg_config *cfg = ctx->cfg;
    struct tg_config_tenants *tn = &cfg->tenants;
    tn->configured = true;
    int rc = walk_mapping(ctx, node, tenants_keys, tn, "tenants");
    if (node->type != YAML_MAPPING_NODE)
        return -1;
    if (tn->activation.enabled && tn->directory != TG_TENANTS_REDIS) {
        error_at(ctx, tn->activation.mark,
                 "tenants.activation needs directory: redis (the control plane answers there)");
        rc = -1;
    }
    yaml_node_t *n;
    /* tenants.redis inherits rate_limit.redis (its parent scope), with a
     * key prefix of its own. */
    if (cfg->rate_limit.has_redis) {
        const char *prefix = tn->redis.key_prefix;
        tn->redis = cfg->rate_limit.redis;
        tn->redis.key_prefix = prefix;
    }
    if ((n = mapping_get(ctx, node, "redis")) != NULL &&
        parse_redis(ctx, n, &tn->redis, tenant_redis_keys, "tenants.redis") < 0)
        rc = -1;
    if ((n = mapping_get(ctx, node, "upstream_defaults")) != NULL &&
        parse_upstream_settings(ctx, n, &tn->upstream_defaults, "tenants.upstream_defaults") < 0)
        rc = -1;
    if ((n = mapping_get(ctx, node, "static")) != NULL) {
        if (n->type != YAML_MAPPING_NODE)
            return node_error(ctx, n, "tenants.static must be a mapping of tenant ids");
        size_t nt = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
        tn->tenants = tg_arena_calloc(&cfg->arena, nt ? nt : 1, sizeof(*tn->tenants));
        if (tn->tenants == NULL)
            return node_error(ctx, n, "out of memory");
        for (size_t i = 0; i < nt; i++) {
            yaml_node_pair_t *pair = &n->data.mapping.pairs.start[i];
            yaml_node_t *k = node_at(ctx, pair->key), *v = node_at(ctx, pair->value);
            if (too_many_visits(ctx, n))
                return -1;
            const char *id = scalar(ctx, k, "a tenant id");
            if (id == NULL) {
                rc = -1;
                continue;
            }
            struct tg_config_tenant *t = &tn->tenants[tn->ntenants];
            t->id = tg_arena_strdup(&cfg->arena, id);
            if (!tg_router_valid_label(tg_str_make(id, strlen(id)))) {
                rc = node_error(ctx, k, "tenant id '%s' must be a DNS label", id);
                continue;
            }
            if (parse_tenant_entry(ctx, k, v, t) < 0) {
                rc = -1;
                continue;
            }
            tn->ntenants++;
        }
    }
    if ((n = mapping_get(ctx, node, "domains")) != NULL) {
        if (n->type != YAML_MAPPING_NODE)
            return node_error(ctx, n, "tenants.domains must map domains to tenant ids");
        size_t nd = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
        tn->domains = tg_arena_calloc(&cfg->arena, nd ? nd : 1, sizeof(*tn->domains));
        for (size_t i = 0; tn->domains != NULL && i < nd; i++) {
            yaml_node_pair_t *pair = &n->data.mapping.pairs.start[i];
            yaml_node_t *k = node_at(ctx, pair->key), *v = node_at(ctx, pair->value);
            const char *d = scalar(ctx, k, "a domain"), *id = scalar(ctx, v, "a tenant id");
            if (d == NULL || id == NULL) {
                rc = -1;
                continue;
            }
            char *lower = tg_arena_strdup(&cfg->arena, d);
            for (char *c = lower; c != NULL && *c; c++)
                *c = tg_ascii_lower(*c);
            tn->domains[tn->ndomains].domain = lower;
            tn->domains[tn->ndomains].tenant = tg_arena_strdup(&cfg->arena, id);
            tn->ndomains++;
        }
    }
    return rc;
}

/* ---- headers ------------------------------------------------------------------ */

static bool valid_header_name(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s) != NULL))
            return false;
    return true;
}

static bool valid_header_value(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

static void spec_put(struct hdr_item *items, size_t *n, const char *name, const char *value,
                     bool https_only, const char *written)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcasecmp(items[i].name, name) == 0) {
            items[i].value = value;
            items[i].https_only = https_only;
            items[i].written = written;
            return;
        }
    }
    if (*n < MAX_HDR_ITEMS)
        items[(*n)++] = (struct hdr_item){name, value, https_only, written};
}

/* A value node's text as written, when ${...} changed it; else NULL. */
static const char *written_form(struct cfg_ctx *ctx, const yaml_node_t *node)
{
    long si = node_subst(node);
    if (si < 0 || (size_t)si >= ctx->nsubsts || ctx->substs[si].value == NULL)
        return NULL;
    return tg_arena_strdup(&ctx->cfg->arena, ctx->substs[si].written);
}

/* Headers tollgate owns: they frame the message or manage the connection,
 * so a rule that added, replaced or dropped them could desynchronise the
 * two sides. Host may only be replaced (headers.request.set). */
static bool reserved_header(const char *name, const char *what)
{
    static const char *const owned[] = {
        "content-length", "transfer-encoding", "connection",      "keep-alive", "te",
        "trailer",        "upgrade",           "proxy-connection"};
    for (size_t i = 0; i < TG_ARRAY_LEN(owned); i++)
        if (strcasecmp(name, owned[i]) == 0)
            return true;
    /* Every response carries one Date: the backend's, else ours. */
    if (strcasecmp(name, "date") == 0 && strncmp(what, "headers.request", 15) != 0)
        return true;
    return strcasecmp(name, "host") == 0 && strcmp(what, "headers.request.set") != 0;
}

static int parse_header_map(struct cfg_ctx *ctx, yaml_node_t *node, struct hdr_item *items,
                            size_t *n, const char *what)
{
    if (node->type != YAML_MAPPING_NODE)
        return node_error(ctx, node, "%s must map header names to values", what);
    int rc = 0;
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
         pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = node_at(ctx, pair->key), *v = node_at(ctx, pair->value);
        const char *name = scalar(ctx, k, "a header name"), *value = scalar(ctx, v, "a value");
        if (name == NULL || value == NULL) {
            rc = -1;
            continue;
        }
        if (!valid_header_name(name)) {
            rc = node_error(ctx, k, "'%s' is not a valid header name", name);
            continue;
        }
        if (reserved_header(name, what)) {
            rc = node_error(ctx, k, "%s: '%s' is managed by tollgate and cannot be set here", what,
                            name);
            continue;
        }
        if (!valid_header_value(value)) {
            rc = node_error(ctx, v, "header values cannot hold control characters");
            continue;
        }
        if (*n >= MAX_HDR_ITEMS) {
            rc = node_error(ctx, k, "at most %d headers here", MAX_HDR_ITEMS);
            continue;
        }
        spec_put(items, n, tg_arena_strdup(&ctx->cfg->arena, name),
                 tg_arena_strdup(&ctx->cfg->arena, value), false, written_form(ctx, v));
    }
    return rc;
}

static int parse_header_names(struct cfg_ctx *ctx, yaml_node_t *node, struct hdr_list *l,
                              const char *what)
{
    if (expect_list(ctx, node, what) < 0)
        return -1;
    l->set = true;
    l->n = 0;
    l->names = tg_arena_calloc(&ctx->cfg->arena, list_len(node) + 1, sizeof(char *));
    int rc = 0;
    for (size_t i = 0; l->names != NULL && i < list_len(node); i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        const char *s = scalar(ctx, item, "a header name");
        if (s == NULL || !valid_header_name(s)) {
            rc = s == NULL ? -1 : node_error(ctx, item, "'%s' is not a valid header name", s);
            continue;
        }
        if (reserved_header(s, what)) {
            rc = node_error(ctx, item, "%s: '%s' is managed by tollgate and cannot be removed",
                            what, s);
            continue;
        }
        l->names[l->n++] = tg_arena_strdup(&ctx->cfg->arena, s);
    }
    return rc;
}

/* The named security headers: key, header, HTTPS only, default value
 * (NULL: not sent unless configured). HSTS pins only the name asked for
 * (no includeSubDomains: that is the owner's call for the whole domain),
 * and only where tg_request_hsts allows it (docs/security.md). */
static const struct {
    const char *key, *header;
    bool https_only;
    const char *def;
} named_headers[] = {
    {"hsts", "Strict-Transport-Security", true, "max-age=31536000"},
    {"content_type_options", "X-Content-Type-Options", false, "nosniff"},
    {"frame_options", "X-Frame-Options", false, "DENY"},
    {"referrer_policy", "Referrer-Policy", false, "strict-origin-when-cross-origin"},
    {"content_security_policy", "Content-Security-Policy", false, NULL},
    {"permissions_policy", "Permissions-Policy", false, NULL},
};

/* Response headers dropped unless headers.remove says otherwise. */
static const char *default_remove[] = {"Server", "X-Powered-By"};

static int parse_headers_spec(struct cfg_ctx *ctx, yaml_node_t *node, struct hdr_spec *spec)
{
    if (node->type != YAML_MAPPING_NODE)
        return node_error(ctx, node, "headers must be a mapping");
    int rc = 0;
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
         pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = node_at(ctx, pair->key), *v = node_at(ctx, pair->value);
        const char *key = scalar(ctx, k, "a key");
        if (key == NULL) {
            rc = -1;
            continue;
        }
        bool done = false;
        for (size_t i = 0; i < TG_ARRAY_LEN(named_headers); i++) {
            if (strcmp(key, named_headers[i].key) != 0)
                continue;
            done = true;
            const char *s = scalar(ctx, v, key);
            if (s == NULL) {
                rc = -1;
            } else if (is_plain_scalar(v) && strcmp(s, "false") == 0) {
                spec_put(spec->items, &spec->nitems, named_headers[i].header, NULL, false, NULL);
            } else if (*s == '\0' || !valid_header_value(s)) {
                rc = node_error(ctx, v, "%s: a header value, or false to leave it out", key);
            } else {
                spec_put(spec->items, &spec->nitems, named_headers[i].header,
                         tg_arena_strdup(&ctx->cfg->arena, s), named_headers[i].https_only,
                         written_form(ctx, v));
            }
        }
        if (done)
            continue;
        if (strcmp(key, "add") == 0) {
            if (parse_header_map(ctx, v, spec->items, &spec->nitems, "headers.add") < 0)
                rc = -1;
        } else if (strcmp(key, "remove") == 0) {
            if (parse_header_names(ctx, v, &spec->remove, "headers.remove") < 0)
                rc = -1;
        } else if (strcmp(key, "override") == 0) {
            static const struct cfg_key k_override = {"override", NULL, 0, 0, 0, NULL};
            spec->override_set = true;
            if (p_bool(ctx, v, &spec->override, &k_override) < 0)
                rc = -1;
        } else if (strcmp(key, "request") == 0) {
            yaml_node_t *n;
            if (v->type != YAML_MAPPING_NODE) {
                rc = node_error(ctx, v, "headers.request must be a mapping (set, remove)");
                continue;
            }
            for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top;
                 q++) {
                const char *rk = scalar(ctx, node_at(ctx, q->key), "a key");
                if (rk == NULL || (strcmp(rk, "set") != 0 && strcmp(rk, "remove") != 0))
                    rc = node_error(ctx, node_at(ctx, q->key),
                                    "unknown key '%s' in headers.request", rk ? rk : "");
            }
            if ((n = mapping_get(ctx, v, "set")) != NULL &&
                parse_header_map(ctx, n, spec->req_set, &spec->nreq_set, "headers.request.set") < 0)
                rc = -1;
            if ((n = mapping_get(ctx, v, "remove")) != NULL &&
                parse_header_names(ctx, n, &spec->req_remove, "headers.request.remove") < 0)
                rc = -1;
        } else {
            rc = node_error(ctx, k, "unknown key '%s' in headers", key);
        }
    }
    return rc;
}

/* A list of header names with their lengths, for compares per request. */
static int name_list(struct tg_arena *a, const struct hdr_list *l, struct tg_str **out, size_t *n)
{
    *out = tg_arena_calloc(a, l->n ? l->n : 1, sizeof(**out));
    if (*out == NULL)
        return -1;
    for (size_t i = 0; i < l->n; i++)
        (*out)[i] = tg_str_make(l->names[i], strlen(l->names[i]));
    *n = l->n;
    return 0;
}

/* Defaults, then each spec in order (NULL entries skipped). */
static int resolve_headers(struct cfg_ctx *ctx, struct tg_config_headers *out,
                           const struct hdr_spec *const *specs, size_t nspecs)
{
    struct hdr_item items[MAX_HDR_ITEMS * 4];
    size_t n = 0;
    for (size_t i = 0; i < TG_ARRAY_LEN(named_headers); i++)
        if (named_headers[i].def != NULL)
            spec_put(items, &n, named_headers[i].header, named_headers[i].def,
                     named_headers[i].https_only, NULL);
    struct hdr_list remove = {true, default_remove, TG_ARRAY_LEN(default_remove)};
    bool override = false;
    struct hdr_item req[MAX_HDR_ITEMS * 4];
    size_t nreq = 0;
    struct hdr_list req_remove = {false, NULL, 0};
    for (size_t s = 0; s < nspecs; s++) {
        const struct hdr_spec *sp = specs[s];
        if (sp == NULL)
            continue;
        for (size_t i = 0; i < sp->nitems; i++)
            spec_put(items, &n, sp->items[i].name, sp->items[i].value, sp->items[i].https_only,
                     sp->items[i].written);
        if (sp->remove.set)
            remove = sp->remove;
        if (sp->override_set)
            override = sp->override;
        for (size_t i = 0; i < sp->nreq_set; i++)
            spec_put(req, &nreq, sp->req_set[i].name, sp->req_set[i].value, false,
                     sp->req_set[i].written);
        if (sp->req_remove.set)
            req_remove = sp->req_remove;
    }
    struct tg_arena *a = &ctx->cfg->arena;
    out->add = tg_arena_calloc(a, n ? n : 1, sizeof(*out->add));
    out->req_set = tg_arena_calloc(a, nreq ? nreq : 1, sizeof(*out->req_set));
    if (out->add == NULL || out->req_set == NULL)
        return -1;
    out->nadd = 0;
    for (size_t i = 0; i < n; i++)
        if (items[i].value != NULL)
            out->add[out->nadd++] = (struct tg_config_header){
                items[i].name,          items[i].value,      strlen(items[i].name),
                strlen(items[i].value), items[i].https_only, items[i].written};
    out->nreq_set = 0;
    for (size_t i = 0; i < nreq; i++)
        if (req[i].value != NULL)
            out->req_set[out->nreq_set++] =
                (struct tg_config_header){req[i].name,          req[i].value, strlen(req[i].name),
                                          strlen(req[i].value), false,        req[i].written};
    out->override = override;
    if (name_list(a, &remove, &out->remove, &out->nremove) < 0 ||
        name_list(a, &req_remove, &out->req_remove, &out->nreq_remove) < 0)
        return -1;
    for (int tls = 0; tls < 2; tls++) {
        size_t len = 0;
        for (size_t i = 0; i < out->nadd; i++)
            if (tls || !out->add[i].https_only)
                len += out->add[i].name_len + out->add[i].value_len + 4;
        char *block = tg_arena_alloc(a, len + 1);
        if (block == NULL)
            return -1;
        size_t at = 0;
        for (size_t i = 0; i < out->nadd; i++) {
            const struct tg_config_header *h = &out->add[i];
            if (!tls && h->https_only)
                continue;
            at += (size_t)sprintf(block + at, "%s: %s\r\n", h->name, h->value);
        }
        out->add_block[tls] = tg_str_make(block, at);
    }
    out->add_name_lengths = 0;
    for (size_t i = 0; i < out->nadd; i++)
        out->add_name_lengths |= 1ull << (out->add[i].name_len & 63);
    return 0;
}

/* ---- access rules ------------------------------------------------------------- */

/* allow/deny lists of a site or route, as written (config_build.c makes
 * the rule sets; an address or country that does not parse is reported
 * there, at the entry). AS numbers are parsed here. */
static int parse_access(struct cfg_ctx *ctx, yaml_node_t *node, struct tg_config_access_list *out)
{
    static const struct {
        const char *key;
        enum tg_config_access_kind kind;
        bool allow;
    } lists[] = {
        {"allow", TG_ACCESS_CIDR, true},
        {"deny", TG_ACCESS_CIDR, false},
        {"allow_countries", TG_ACCESS_COUNTRY, true},
        {"deny_countries", TG_ACCESS_COUNTRY, false},
        {"allow_asns", TG_ACCESS_ASN, true},
        {"deny_asns", TG_ACCESS_ASN, false},
    };
    yaml_node_t *found[TG_ARRAY_LEN(lists)];
    size_t total = 0;
    for (size_t l = 0; l < TG_ARRAY_LEN(lists); l++) {
        found[l] = mapping_get(ctx, node, lists[l].key);
        if (found[l] != NULL && found[l]->type == YAML_SEQUENCE_NODE)
            total += list_len(found[l]);
    }
    out->n = 0;
    out->rules = tg_arena_calloc(&ctx->cfg->arena, total ? total : 1, sizeof(*out->rules));
    if (out->rules == NULL)
        return node_error(ctx, node, "out of memory");
    int rc = 0;
    for (size_t l = 0; l < TG_ARRAY_LEN(lists); l++) {
        yaml_node_t *n = found[l];
        if (n == NULL)
            continue;
        if (expect_list(ctx, n, lists[l].key) < 0) {
            rc = -1;
            continue;
        }
        out->set = true;
        if (lists[l].kind == TG_ACCESS_COUNTRY && ctx->cfg->geoip_files.database == NULL)
            rc = node_error(ctx, n, "%s needs geoip.database", lists[l].key);
        if (lists[l].kind == TG_ACCESS_ASN && ctx->cfg->geoip_files.asn_database == NULL)
            rc = node_error(ctx, n, "%s needs geoip.asn_database", lists[l].key);
        for (size_t i = 0; i < list_len(n); i++) {
            yaml_node_t *item = node_at(ctx, n->data.sequence.items.start[i]);
            const char *s = scalar(ctx, item, lists[l].key);
            if (s == NULL) {
                rc = -1;
                continue;
            }
            struct tg_config_access_rule *r = &out->rules[out->n];
            *r = (struct tg_config_access_rule){lists[l].kind,
                                                lists[l].allow,
                                                lists[l].key,
                                                tg_arena_strdup(&ctx->cfg->arena, s),
                                                0,
                                                mark_of(item)};
            if (r->text == NULL) {
                rc = node_error(ctx, item, "out of memory");
                continue;
            }
            if (lists[l].kind == TG_ACCESS_ASN) {
                int64_t asn;
                const char *d =
                    (s[0] == 'A' || s[0] == 'a') && (s[1] == 'S' || s[1] == 's') ? s + 2 : s;
                if (parse_int64(d, &asn) < 0 || asn <= 0 || asn > UINT32_MAX) {
                    rc = node_error(ctx, item, "%s: '%s' is not an AS number", lists[l].key, s);
                    continue;
                }
                r->asn = (uint32_t)asn;
            }
            out->n++;
        }
    }
    return rc;
}

static const struct cfg_key geoip_keys[] = {
    {"database", p_path, FIELD(struct tg_config_geoip, database), 0, 0, NULL, NULL /* none */},
    {"asn_database", p_path, FIELD(struct tg_config_geoip, asn_database), 0, 0, NULL,
     NULL /* none */},
    {"header", p_string, FIELD(struct tg_config_geoip, header), 0, 0, NULL, "X-Geo-Country"},
    {NULL, NULL, 0, 0, 0, NULL},
};

/* geoip: {database, asn_database, header}. The files are opened (and fully
 * checked) by config_build.c, so a broken one fails the load, or the
 * reload, keeping the running configuration and its database. */
static int parse_geoip(struct cfg_ctx *ctx, yaml_node_t *node)
{
    struct tg_config *cfg = ctx->cfg;
    struct tg_config_geoip *g = &cfg->geoip_files;
    if (walk_mapping(ctx, node, geoip_keys, g, "geoip") < 0)
        return -1;
    yaml_node_t *n;
    if ((n = mapping_get(ctx, node, "database")) != NULL)
        g->database_mark = mark_of(n);
    if ((n = mapping_get(ctx, node, "asn_database")) != NULL)
        g->asn_database_mark = mark_of(n);
    if (g->database != NULL) {
        cfg->geoip_header = valid_header_name(g->header) ? g->header : NULL;
        if (cfg->geoip_header == NULL)
            return node_error(ctx, node, "geoip.header: '%s' is not a header name", g->header);
    }
    return 0;
}

/* The keys of an upstream besides `servers`: balance, timeouts, pool,
 * health. Shared by named upstreams and tenants.upstream_defaults. */
static int parse_upstream_settings(struct cfg_ctx *ctx, yaml_node_t *v,
                                   struct tg_config_upstream *u, const char *what)
{
    int rc = walk_mapping(ctx, v, upstream_keys, u, what);
    yaml_node_t *n;
    if ((n = mapping_get(ctx, v, "health_check")) != NULL) {
        if (walk_mapping(ctx, n, health_check_keys, &u->health_check, "health_check") < 0)
            rc = -1;
        else if (u->health_check.path == NULL || u->health_check.path[0] != '/')
            rc = node_error(ctx, n, "health_check needs a path starting with '/'");
        else if (u->health_check.timeout_ms >= u->health_check.interval_ms)
            rc = node_error(ctx, n, "health_check timeout must be shorter than interval");
    }
    return rc;
}

static int parse_tls(struct cfg_ctx *ctx, yaml_node_t *node)
{
    struct tg_config_tls *t = &ctx->cfg->tls;
    t->mark = mark_of(node);
    int rc = walk_mapping(ctx, node, tls_keys, t, "tls");
    yaml_node_t *r = mapping_get(ctx, node, "redis");
    if (r != NULL) {
        t->fleet = true;
        if (parse_redis(ctx, r, &t->redis, tls_redis_keys, "tls.redis") < 0)
            rc = -1;
        else if (t->redis.ncluster > 0)
            rc = node_error(ctx, mapping_get(ctx, r, "cluster"),
                            "tls.redis: TLS state needs one Redis (address), not a cluster");
    }
    yaml_node_t *certs = mapping_get(ctx, node, "certificates");
    if (certs == NULL)
        return rc;
    if (expect_list(ctx, certs, "tls.certificates") < 0)
        return -1;
    size_t n = list_len(certs);
    t->certs = tg_arena_calloc(&ctx->cfg->arena, n ? n : 1, sizeof(*t->certs));
    if (t->certs == NULL)
        return node_error(ctx, certs, "out of memory");
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, certs->data.sequence.items.start[i]);
        struct tg_config_certificate *c = &t->certs[t->ncerts];
        memset(c, 0, sizeof(*c));
        apply_defaults(ctx, certificate_keys, c);
        c->mark = mark_of(item);
        if (walk_mapping(ctx, item, certificate_keys, c, "a certificate") < 0) {
            rc = -1;
            continue;
        }
        if (c->cert == NULL || c->key == NULL) {
            rc = node_error(ctx, item, "a certificate needs both cert and key files");
            continue;
        }
        t->ncerts++;
    }
    return rc;
}

static int parse_listen(struct cfg_ctx *ctx, yaml_node_t *node)
{
    struct tg_config *cfg = ctx->cfg;
    if (expect_list(ctx, node, "listen") < 0)
        return -1;
    size_t n = list_len(node);
    if (n == 0)
        return node_error(ctx, node, "listen needs at least one address");
    /* One more slot for the admin listener. */
    cfg->listeners = tg_arena_calloc(&cfg->arena, n + 1, sizeof(*cfg->listeners));
    if (cfg->listeners == NULL)
        return node_error(ctx, node, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        struct tg_config_listen *l = &cfg->listeners[cfg->nlisteners];
        memset(l, 0, sizeof(*l)); /* a slot a failed entry left */
        apply_defaults(ctx, listen_keys, l);
        l->mark = mark_of(item);
        static const struct cfg_key addr_key = {"address", p_sockaddr, 0, 0, 0, NULL};
        if (item->type == YAML_SCALAR_NODE) {
            if (p_sockaddr(ctx, item, &l->addr, &addr_key) < 0) {
                rc = -1;
                continue;
            }
        } else {
            if (walk_mapping(ctx, item, listen_keys, l, "listen") < 0) {
                rc = -1;
                continue;
            }
            if (l->addr.text == NULL) {
                node_error(ctx, item, "listen entry needs an address");
                rc = -1;
                continue;
            }
        }
        if (!l->tls && (l->client_ca != NULL || l->client_subject_header != NULL)) {
            node_error(ctx, item, "client_ca and client_subject_header need tls: true");
            rc = -1;
        }
        if (l->tls && l->redirect_to_https) {
            node_error(ctx, item, "a listener cannot both terminate TLS and redirect to HTTPS");
            rc = -1;
        }
        char key[80];
        tg_config_format_sockaddr((struct sockaddr *)&l->addr.sa, key, sizeof(key));
        for (size_t j = 0; j < cfg->nlisteners; j++) {
            if (strcmp(cfg->listeners[j].key, key) == 0) {
                node_error(ctx, item, "address %s is already listed at line %d", key,
                           cfg->listeners[j].mark.line);
                rc = -1;
            }
        }
        l->key = tg_arena_strdup(&cfg->arena, key);
        cfg->nlisteners++;
    }
    return rc;
}

/* Every address a server's name has now (A and AAAA), into the arena:
 * what the resolver starts from. A name that does not resolve is an
 * error at load, as it always was: -t, start and reload say so. */
static int resolve_at_load(struct cfg_ctx *ctx, yaml_node_t *item, struct tg_config_server *srv)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)srv->port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(srv->host, port, &hints, &res);
    if (rc != 0 || res == NULL)
        return node_error(ctx, item, "server: cannot resolve '%s': %s", srv->host,
                          rc ? gai_strerror(rc) : "no address");
    size_t n = 0;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
        n++;
    struct sockaddr_storage *v = tg_arena_calloc(&ctx->cfg->arena, n, sizeof(*v));
    if (v == NULL) {
        freeaddrinfo(res);
        return node_error(ctx, item, "out of memory");
    }
    size_t k = 0;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof(v[k]))
            continue;
        memcpy(&v[k], ai->ai_addr, ai->ai_addrlen);
        k++;
    }
    freeaddrinfo(res);
    if (k == 0)
        return node_error(ctx, item, "server: '%s' has no IPv4 or IPv6 address", srv->host);
    srv->addr.sa = v[0];
    srv->addr.salen =
        v[0].ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    srv->resolved = v;
    srv->nresolved = k;
    return 0;
}

/* servers: [...]: IP literals, and names (resolved now, then again every
 * resolve_interval by resolver.c). */
static int parse_servers(struct cfg_ctx *ctx, yaml_node_t *node, struct tg_config_upstream *u)
{
    if (expect_list(ctx, node, "servers") < 0)
        return -1;
    size_t n = list_len(node);
    if (n == 0)
        return node_error(ctx, node, "servers needs at least one address");
    u->servers = tg_arena_calloc(&ctx->cfg->arena, n, sizeof(*u->servers));
    if (u->servers == NULL)
        return node_error(ctx, node, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        const char *text = scalar(ctx, item, "server");
        if (text == NULL) {
            rc = -1;
            continue;
        }
        struct tg_config_server *srv = &u->servers[u->nservers];
        char host[256], err[300];
        if (tg_config_parse_server(text, srv, host, sizeof(host), err, sizeof(err)) < 0) {
            rc = node_error(ctx, item, "server: %s", err);
            continue;
        }
        bool name = srv->host != NULL;
        srv->addr.text = tg_arena_strdup(&ctx->cfg->arena, text);
        if (name)
            srv->host = tg_arena_strdup(&ctx->cfg->arena, host);
        if (srv->addr.text == NULL || (name && srv->host == NULL)) {
            rc = node_error(ctx, item, "out of memory");
            continue;
        }
        if (srv->host != NULL && resolve_at_load(ctx, item, srv) < 0) {
            rc = -1;
            continue;
        }
        u->nservers++;
    }
    return rc;
}

static int parse_upstreams(struct cfg_ctx *ctx, yaml_node_t *node)
{
    struct tg_config *cfg = ctx->cfg;
    if (node->type != YAML_MAPPING_NODE)
        return node_error(ctx, node, "upstreams must be a mapping of names, not %s",
                          node_kind(node));
    size_t n = (size_t)(node->data.mapping.pairs.top - node->data.mapping.pairs.start);
    cfg->upstreams = tg_arena_calloc(&cfg->arena, n ? n : 1, sizeof(*cfg->upstreams));
    if (cfg->upstreams == NULL)
        return node_error(ctx, node, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_pair_t *pair = &node->data.mapping.pairs.start[i];
        yaml_node_t *k = node_at(ctx, pair->key), *v = node_at(ctx, pair->value);
        const char *name = scalar(ctx, k, "an upstream name");
        if (name == NULL) {
            rc = -1;
            continue;
        }
        if (name[0] == '\0' || name[0] == '$') {
            node_error(ctx, k, "upstream name '%s' is not allowed", name);
            rc = -1;
            continue;
        }
        if (tg_config_find_upstream(cfg, name, strlen(name)) != NULL) {
            node_error(ctx, k, "upstream '%s' is defined twice", name);
            rc = -1;
            continue;
        }
        struct tg_config_upstream *u = &cfg->upstreams[cfg->nupstreams];
        apply_defaults(ctx, upstream_keys, u);
        u->name = tg_arena_strdup(&cfg->arena, name);
        u->mark = mark_of(k);
        if (parse_upstream_settings(ctx, v, u, "an upstream") < 0)
            rc = -1;
        yaml_node_t *servers = mapping_get(ctx, v, "servers");
        if (servers == NULL) {
            if (v->type == YAML_MAPPING_NODE)
                node_error(ctx, v, "upstream '%s' needs servers", name);
            rc = -1;
        } else if (parse_servers(ctx, servers, u) < 0) {
            rc = -1;
        }
        u->index = cfg->nupstreams++;
    }
    return rc;
}

/* methods: [GET, POST, ...]: tokens as RFC 9110 spells them (case
 * matters). GET also matches HEAD, as in nginx and Go's mux. CONNECT and
 * TRACE are refused before routing, so listing them is an error. */
static int parse_methods(struct cfg_ctx *ctx, yaml_node_t *node, struct tg_config_route *r)
{
    struct tg_config *cfg = ctx->cfg;
    if (node->type == YAML_SCALAR_NODE)
        return node_error(ctx, node, "methods must be a list, e.g. [GET, POST]");
    if (expect_list(ctx, node, "methods") < 0)
        return -1;
    size_t n = list_len(node);
    if (n == 0)
        return node_error(ctx, node, "methods needs at least one method (leave it out for all)");
    r->other_methods = tg_arena_calloc(&cfg->arena, n, sizeof(char *));
    if (r->other_methods == NULL)
        return node_error(ctx, node, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        const char *m = scalar(ctx, item, "a method");
        if (m == NULL) {
            rc = -1;
            continue;
        }
        bool token = *m != '\0' && strlen(m) <= 32;
        for (const char *c = m; *c; c++)
            token &= (*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
                     (*c >= '0' && *c <= '9') || strchr("!#$%&'*+-.^_`|~", *c) != NULL;
        if (!token) {
            rc = node_error(ctx, item, "'%s' is not an HTTP method", m);
            continue;
        }
        enum tg_http_method id = tg_http_method_id(tg_str_make(m, strlen(m)));
        if (id == TG_HTTP_CONNECT || id == TG_HTTP_TRACE) {
            rc = node_error(ctx, item, "%s requests are refused with 405 before routing", m);
            continue;
        }
        if (id != TG_HTTP_OTHER) {
            r->methods |= 1u << id;
            if (id == TG_HTTP_GET)
                r->methods |= 1u << TG_HTTP_HEAD;
        } else {
            r->other_methods[r->nother_methods++] = tg_arena_strdup(&cfg->arena, m);
        }
    }
    return rc;
}

static const char *const errors_choices[] = {"text", "json", "html", NULL};

/* ---- compress ------------------------------------------------------------------ */

/* `compress.types`: media types, "type/subtype" or "type/\*". */
static int p_types(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    struct tg_config_compress *cc =
        (struct tg_config_compress *)((char *)dst - offsetof(struct tg_config_compress, types));
    if (expect_list(ctx, node, key->name) < 0)
        return -1;
    size_t n = list_len(node);
    const char **v = tg_arena_calloc(&ctx->cfg->arena, n ? n : 1, sizeof(*v));
    if (v == NULL)
        return node_error(ctx, node, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        const char *t = scalar(ctx, item, "a media type");
        if (t == NULL) {
            rc = -1;
            continue;
        }
        const char *slash = strchr(t, '/');
        if (slash == NULL || slash == t || slash[1] == '\0' || strchr(slash + 1, '/') != NULL ||
            strpbrk(t, " ;,") != NULL || (strchr(t, '*') != NULL && strcmp(slash, "/*") != 0)) {
            rc = node_error(ctx, item, "%s: '%s' is not a media type (type/subtype or type/*)",
                            key->name, t);
            continue;
        }
        char *copy = tg_arena_strdup(&ctx->cfg->arena, t);
        if (copy == NULL)
            return node_error(ctx, item, "out of memory");
        for (char *c = copy; *c; c++)
            *c = (char)tg_ascii_lower(*c);
        v[i] = copy;
    }
    if (rc == 0) {
        cc->types = v;
        cc->ntypes = n;
    }
    return rc;
}

/* cache.bypass_query: a list of query parameter names. */
static int p_bypass_query(struct cfg_ctx *ctx, yaml_node_t *node, void *dst,
                          const struct cfg_key *key)
{
    struct tg_config_cache *c = dst;
    if (expect_list(ctx, node, key->name) < 0)
        return -1;
    size_t n = list_len(node);
    c->bypass_query = tg_arena_calloc(&ctx->cfg->arena, n + 1, sizeof(*c->bypass_query));
    if (c->bypass_query == NULL)
        return node_error(ctx, node, "out of memory");
    static const struct cfg_key name_key = {"a query parameter name", NULL, 0, 0, 0, NULL};
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        if (p_string(ctx, item, &c->bypass_query[c->nbypass_query], &name_key) < 0) {
            rc = -1;
            continue;
        }
        c->nbypass_query++;
    }
    return rc;
}

/* `compress.order`: the codings to offer, preferred first. */
static int p_order(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    struct tg_config_compress *cc =
        (struct tg_config_compress *)((char *)dst - offsetof(struct tg_config_compress, order));
    if (expect_list(ctx, node, key->name) < 0)
        return -1;
    uint8_t order[TG_ENC_COUNT];
    size_t n = 0;
    int rc = 0;
    for (size_t i = 0; i < list_len(node); i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        const char *name = scalar(ctx, item, "a coding");
        if (name == NULL) {
            rc = -1;
            continue;
        }
        int e = strcmp(name, "x-gzip") == 0 ? -1 : tg_encoding_from_name(name, strlen(name));
        if (e <= TG_ENC_IDENTITY) {
            rc = node_error(ctx, item, "%s: '%s' is not one of zstd, br, gzip", key->name, name);
            continue;
        }
        bool dup = false;
        for (size_t k = 0; k < n; k++)
            dup |= order[k] == e;
        if (dup) {
            rc = node_error(ctx, item, "%s: '%s' is listed twice", key->name, name);
            continue;
        }
        order[n++] = (uint8_t)e;
    }
    if (rc == 0 && n == 0)
        rc = node_error(ctx, node, "%s needs at least one coding (or compress: false)", key->name);
    if (rc == 0) {
        memcpy(cc->order, order, n);
        cc->norder = n;
    }
    return rc;
}

static const struct cfg_key compress_levels_keys[] = {
    {"gzip", p_int, TG_ENC_GZIP * sizeof(int), 1, TG_COMPRESS_GZIP_MAX, NULL, "5"},
    {"zstd", p_int, TG_ENC_ZSTD * sizeof(int), 1, TG_COMPRESS_ZSTD_MAX, NULL, "3"},
    {"br", p_int, TG_ENC_BR * sizeof(int), 1, TG_COMPRESS_BR_MAX, NULL, "3"},
    {NULL, NULL, 0, 0, 0, NULL},
};

/* PocketBase's production guide's list, and the other text formats a
 * PocketBase app serves (its admin UI's JS/CSS/SVG, JSON APIs). */
#define COMPRESS_TYPES                                                                            \
    "[text/*, application/json, application/javascript, application/xml, "                        \
    "application/ld+json, application/manifest+json, application/rss+xml, application/atom+xml, " \
    "application/wasm, image/svg+xml]"

static const struct cfg_key compress_keys[] = {
    {"enabled", p_bool, FIELD(struct tg_config_compress, enabled), 0, 0, NULL, "false"},
    {"types", p_types, FIELD(struct tg_config_compress, types), 0, 0, NULL, COMPRESS_TYPES},
    {"min_length", p_size64, FIELD(struct tg_config_compress, min_length), 0, 0, NULL, "1000"},
    {"order", p_order, FIELD(struct tg_config_compress, order), 0, 0, NULL, "[zstd, br, gzip]"},
    {"levels", p_section, FIELD(struct tg_config_compress, levels), 0, 0, NULL, NULL,
     compress_levels_keys},
    {NULL, NULL, 0, 0, 0, NULL},
};

/* `compress: true|false`, or a mapping of compress_keys; `out` holds the
 * parent's settings and keeps what the node does not say. A mapping
 * without `enabled` turns compression on: writing the settings means
 * wanting them. */
static int parse_compress(struct cfg_ctx *ctx, yaml_node_t *node, struct tg_config_compress *out)
{
    static const struct cfg_key whole = {"compress", p_bool, 0, 0, 0, NULL, NULL};
    if (node->type == YAML_SCALAR_NODE)
        return p_bool(ctx, node, &out->enabled, &whole);
    out->enabled = true;
    return walk_mapping(ctx, node, compress_keys, out, "compress");
}

static const struct cfg_key cache_keys[] = {
    {"ttl", p_duration, FIELD(struct tg_config_cache, ttl_ms), 0, 0, NULL, "10m"},
    {"max_size", p_size64, FIELD(struct tg_config_cache, max_size), 65536, 0, NULL, "64MiB"},
    {"max_entry_size", p_size64, FIELD(struct tg_config_cache, max_entry_size), 1, 1ll << 30, NULL,
     "4MiB"},
    {"cache_authorized", p_bool, FIELD(struct tg_config_cache, cache_authorized), 0, 0, NULL,
     "false"},
    {"x_cache_header", p_bool, FIELD(struct tg_config_cache, x_cache_header), 0, 0, NULL, "true"},
    {"lock_timeout", p_duration, FIELD(struct tg_config_cache, lock_timeout_ms), 1, 0, NULL, "5s"},
    {"bypass_query", p_bypass_query, 0, 0, 0, NULL, NULL /* none */},
    {NULL, NULL, 0, 0, 0, NULL},
};

/* A route's `cache:` mapping: its presence turns the cache on. */
static int p_cache(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    struct tg_config_cache *c = dst;
    c->enabled = true;
    if (walk_mapping(ctx, node, key->sub, dst, key->name) < 0)
        return -1;
    if (c->max_entry_size > c->max_size)
        return node_error(ctx, node, "cache.max_entry_size (%llu) is larger than max_size (%llu)",
                          (unsigned long long)c->max_entry_size, (unsigned long long)c->max_size);
    return 0;
}

static const struct cfg_key route_keys[] = {
    {"path", p_skip, 0, 0, 0, NULL, NULL /* required */},
    {"methods", p_skip, 0, 0, 0, NULL, NULL /* any */},
    {"ignore_case", p_bool, FIELD(struct tg_config_route, ignore_case), 0, 0, NULL,
     NULL /* the site's */},
    {"upstream", p_skip, 0, 0, 0, NULL, NULL /* required */},
    {"stream", p_bool, FIELD(struct tg_config_route, stream), 0, 0, NULL, "false"},
    {"errors", p_enum, FIELD(struct tg_config_route, errors), 0, 0, errors_choices,
     NULL /* the site's */},
    {"compress", p_skip, 0, 0, 0, NULL, NULL /* the site's, changed by what is written */},
    {"rate_limit", p_skip, 0, 0, 0, NULL, NULL /* the site's, else rate_limit.global */},
    {"max_in_flight", p_uint, FIELD(struct tg_config_route, max_in_flight), 0, 10000000, NULL, "0"},
    {"read_timeout", p_duration, FIELD(struct tg_config_route, read_timeout_ms), 1, 0, NULL,
     NULL /* the upstream's */},
    {"max_body", p_size64, FIELD(struct tg_config_route, max_body), 0, 0, NULL,
     NULL /* client.max_body */},
    {"headers", p_skip, 0, 0, 0, NULL, NULL /* the site's, else the global block */},
    {"cache", p_cache, FIELD(struct tg_config_route, cache), 0, 0, NULL, NULL /* off */,
     cache_keys},
    {"allow", p_skip, 0, 0, 0, NULL},
    {"deny", p_skip, 0, 0, 0, NULL},
    {"allow_countries", p_skip, 0, 0, 0, NULL},
    {"deny_countries", p_skip, 0, 0, 0, NULL},
    {"allow_asns", p_skip, 0, 0, 0, NULL},
    {"deny_asns", p_skip, 0, 0, 0, NULL},
    {"access_log", p_on_off, FIELD(struct tg_config_route, access_log), 0, 0, NULL, "on"},
    {"access_log_sample", p_ratio, FIELD(struct tg_config_route, access_log_sample), 0, 0, NULL,
     NULL /* log.sample_2xx */},
    {NULL, NULL, 0, 0, 0, NULL},
};

static int parse_route(struct cfg_ctx *ctx, yaml_node_t *node, struct tg_config_site *site,
                       struct tg_config_route *r)
{
    struct tg_config *cfg = ctx->cfg;
    apply_defaults(ctx, route_keys, r);
    r->mark = mark_of(node);
    /* Inherited unless the route says. */
    r->max_body = cfg->client.max_body;
    r->ignore_case = site->ignore_case;
    r->errors = site->errors;
    r->compress = site->compress;
    r->access_log_sample = cfg->log.sample_2xx;
    int rc = walk_mapping(ctx, node, route_keys, r, "a route");
    if (node->type != YAML_MAPPING_NODE)
        return -1;
    yaml_node_t *cn = mapping_get(ctx, node, "compress");
    if (cn != NULL && parse_compress(ctx, cn, &r->compress) < 0)
        rc = -1;

    /* The pattern is compiled by config_build.c; its errors point at the
     * byte, counted from path_mark. */
    yaml_node_t *path = mapping_get(ctx, node, "path");
    if (path == NULL) {
        rc = node_error(ctx, node, "a route needs a path");
    } else {
        const char *s = scalar(ctx, path, "path");
        if (s == NULL) {
            rc = -1;
        } else if ((r->path_source = tg_arena_strdup(&cfg->arena, s)) == NULL) {
            rc = node_error(ctx, path, "out of memory");
        } else {
            bool quoted = path->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                          path->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
            r->path_mark = mark_of(path);
            r->path_mark.col += quoted ? 1 : 0;
        }
    }
    if (r->ignore_case)
        site->any_ignore_case = true;
    yaml_node_t *methods = mapping_get(ctx, node, "methods");
    if (methods != NULL && parse_methods(ctx, methods, r) < 0)
        rc = -1;

    /* Policies: the route's own, else its site's, else rate_limit.global;
     * resolved here, once, so the limiter reads one list. */
    yaml_node_t *rl = mapping_get(ctx, node, "rate_limit");
    if (rl != NULL && parse_policy_list(ctx, rl, &r->rate_limit) < 0)
        rc = -1;
    if (!r->rate_limit.set)
        r->rate_limit = site->rate_limit.set ? site->rate_limit : cfg->rate_limit.global;
    r->rate_limit.set = true;
    if (parse_access(ctx, node, &r->access_list) < 0)
        rc = -1;
    struct hdr_spec *route_spec = NULL;
    yaml_node_t *hn = mapping_get(ctx, node, "headers");
    if (hn != NULL) {
        route_spec = tg_arena_calloc(&cfg->arena, 1, sizeof(*route_spec));
        if (route_spec == NULL || parse_headers_spec(ctx, hn, route_spec) < 0)
            rc = -1;
    }
    if (route_spec == NULL && ctx->site_headers == NULL) {
        r->headers = &cfg->headers;
    } else {
        struct tg_config_headers *h = tg_arena_calloc(&cfg->arena, 1, sizeof(*h));
        const struct hdr_spec *specs[] = {ctx->global_headers, ctx->site_headers, route_spec};
        if (h == NULL || resolve_headers(ctx, h, specs, 3) < 0)
            rc = node_error(ctx, node, "out of memory");
        r->headers = h;
    }

    yaml_node_t *up = mapping_get(ctx, node, "upstream");
    if (up == NULL) {
        rc = node_error(ctx, node, "a route needs an upstream");
    } else {
        const char *s = scalar(ctx, up, "upstream");
        if (s == NULL) {
            rc = -1;
        } else if (strcmp(s, "$tenant") == 0) {
            r->upstream_tenant = true;
            if (!cfg->tenants.configured)
                rc = node_error(ctx, up, "upstream: $tenant needs a tenants section");
        } else {
            r->upstream = tg_config_find_upstream(cfg, s, strlen(s));
            if (r->upstream == NULL)
                rc = node_error(ctx, up, "no upstream named '%s'", s);
        }
    }
    return rc;
}

static const struct cfg_key site_keys[] = {
    {"hosts", p_skip, 0, 0, 0, NULL, NULL /* required */},
    {"routes", p_skip, 0, 0, 0, NULL, NULL /* required */},
    {"rate_limit", p_skip, 0, 0, 0, NULL, NULL /* rate_limit.global */},
    {"custom_domains", p_bool, FIELD(struct tg_config_site, custom_domains), 0, 0, NULL, "false"},
    {"tenant_header", p_string, FIELD(struct tg_config_site, tenant_header), 0, 0, NULL,
     NULL /* off */},
    {"acme", p_bool, FIELD(struct tg_config_site, acme), 0, 0, NULL, "true"},
    {"ignore_case", p_bool, FIELD(struct tg_config_site, ignore_case), 0, 0, NULL, "false"},
    {"errors", p_enum, FIELD(struct tg_config_site, errors), 0, 0, errors_choices, "text"},
    {"compress", p_skip, 0, 0, 0, NULL, NULL /* compress_keys' defaults */},
    {"headers", p_skip, 0, 0, 0, NULL, NULL /* the global block */},
    {"allow", p_skip, 0, 0, 0, NULL},
    {"deny", p_skip, 0, 0, 0, NULL},
    {"allow_countries", p_skip, 0, 0, 0, NULL},
    {"deny_countries", p_skip, 0, 0, 0, NULL},
    {"allow_asns", p_skip, 0, 0, 0, NULL},
    {"deny_asns", p_skip, 0, 0, 0, NULL},
    {NULL, NULL, 0, 0, 0, NULL},
};

static int parse_sites(struct cfg_ctx *ctx, yaml_node_t *node)
{
    struct tg_config *cfg = ctx->cfg;
    if (expect_list(ctx, node, "sites") < 0)
        return -1;
    size_t n = list_len(node);
    cfg->sites = tg_arena_calloc(&cfg->arena, n ? n : 1, sizeof(*cfg->sites));
    if (cfg->sites == NULL)
        return node_error(ctx, node, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        struct tg_config_site *site = &cfg->sites[cfg->nsites];
        apply_defaults(ctx, site_keys, site);
        apply_defaults(ctx, compress_keys, &site->compress);
        site->index = cfg->nsites++;
        if (walk_mapping(ctx, item, site_keys, site, "a site") < 0) {
            rc = -1;
            if (item->type != YAML_MAPPING_NODE)
                continue;
        }
        yaml_node_t *hosts = mapping_get(ctx, item, "hosts");
        if (hosts == NULL) {
            rc = node_error(ctx, item, "a site needs hosts");
        } else if (expect_list(ctx, hosts, "hosts") < 0) {
            rc = -1;
        } else if (list_len(hosts) == 0) {
            rc = node_error(ctx, hosts, "hosts needs at least one name");
        } else {
            /* Host patterns are checked as config_build.c indexes them. */
            size_t nh = list_len(hosts);
            site->hosts = tg_arena_calloc(&cfg->arena, nh, sizeof(char *));
            site->host_marks = tg_arena_calloc(&cfg->arena, nh, sizeof(*site->host_marks));
            if (site->hosts == NULL || site->host_marks == NULL)
                rc = node_error(ctx, hosts, "out of memory");
            for (size_t h = 0; site->hosts && site->host_marks && h < nh; h++) {
                yaml_node_t *hn = node_at(ctx, hosts->data.sequence.items.start[h]);
                const char *s = scalar(ctx, hn, "a host");
                if (s == NULL) {
                    rc = -1;
                    continue;
                }
                site->host_marks[site->nhosts] = mark_of(hn);
                site->hosts[site->nhosts++] = tg_arena_strdup(&cfg->arena, s);
                if (s[0] == '{')
                    site->has_capture = true;
            }
        }
        if (site->custom_domains) {
            if (cfg->domain_site != NULL)
                rc = node_error(ctx, item, "only one site may have custom_domains: true");
            else if (!cfg->tenants.configured)
                rc = node_error(ctx, item, "custom_domains needs a tenants section");
            cfg->domain_site = site;
        }
        if (site->tenant_header != NULL) {
            yaml_node_t *th = mapping_get(ctx, item, "tenant_header");
            if (!valid_header_name(site->tenant_header))
                rc = node_error(ctx, th, "tenant_header must be a header name, not '%s'",
                                site->tenant_header);
            else if (cfg->trusted_proxies == NULL)
                rc = node_error(ctx, th,
                                "tenant_header needs trusted_proxies: only the peers listed "
                                "there may name a tenant (others' %s is ignored and removed)",
                                site->tenant_header);
            if (cfg->header_site == NULL)
                cfg->header_site = site;
        }
        if (item->type == YAML_MAPPING_NODE && parse_access(ctx, item, &site->access_list) < 0)
            rc = -1;
        yaml_node_t *scn = mapping_get(ctx, item, "compress");
        if (scn != NULL && parse_compress(ctx, scn, &site->compress) < 0)
            rc = -1;
        ctx->site_headers = NULL;
        yaml_node_t *sh =
            item->type == YAML_MAPPING_NODE ? mapping_get(ctx, item, "headers") : NULL;
        if (sh != NULL) {
            ctx->site_headers = tg_arena_calloc(&cfg->arena, 1, sizeof(struct hdr_spec));
            if (ctx->site_headers == NULL || parse_headers_spec(ctx, sh, ctx->site_headers) < 0)
                rc = -1;
        }
        yaml_node_t *srl = mapping_get(ctx, item, "rate_limit");
        if (srl != NULL && parse_policy_list(ctx, srl, &site->rate_limit) < 0)
            rc = -1;
        yaml_node_t *routes = mapping_get(ctx, item, "routes");
        if (routes == NULL) {
            rc = node_error(ctx, item, "a site needs routes");
        } else if (expect_list(ctx, routes, "routes") < 0) {
            rc = -1;
        } else {
            size_t nr = list_len(routes);
            if (nr == 0)
                rc = node_error(ctx, routes, "routes needs at least one route");
            site->routes = tg_arena_calloc(&cfg->arena, nr ? nr : 1, sizeof(*site->routes));
            for (size_t r = 0; site->routes && r < nr; r++) {
                yaml_node_t *rn = node_at(ctx, routes->data.sequence.items.start[r]);
                site->routes[site->nroutes].site = site;
                if (parse_route(ctx, rn, site, &site->routes[site->nroutes]) < 0) {
                    memset(&site->routes[site->nroutes], 0, sizeof(site->routes[0]));
                    rc = -1;
                    continue;
                }
                /* Whether an earlier route shadows it needs the compiled
                 * patterns: config_build.c checks. */
                if (site->routes[site->nroutes].upstream_tenant && !site->has_capture &&
                    !site->custom_domains && site->tenant_header == NULL)
                    rc = node_error(ctx, rn,
                                    "upstream: $tenant needs a \"{tenant}.domain\" "
                                    "host, custom_domains: true or tenant_header on its site");
                site->nroutes++;
            }
        }
    }
    return rc;
}

/* admin.histogram_buckets: [1ms, 5ms, ...], ascending, at most 16. */
static int p_buckets(struct cfg_ctx *ctx, yaml_node_t *node, void *dst, const struct cfg_key *key)
{
    (void)dst;
    struct tg_config *cfg = ctx->cfg;
    if (expect_list(ctx, node, key->name) < 0)
        return -1;
    size_t n = list_len(node);
    size_t max = sizeof(cfg->histogram_buckets_ms) / sizeof(cfg->histogram_buckets_ms[0]);
    if (n == 0 || n > max)
        return node_error(ctx, node, "%s needs 1 to %zu bounds", key->name, max);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(ctx, node->data.sequence.items.start[i]);
        const char *s = scalar(ctx, item, key->name);
        int64_t ms;
        if (s == NULL)
            return -1;
        if (tg_config_parse_duration(s, &ms) < 0 || ms <= 0)
            return node_error(ctx, item, "%s: a bound is a duration like 5ms or 2s; not '%s'",
                              key->name, s);
        if (i > 0 && ms <= cfg->histogram_buckets_ms[i - 1])
            return node_error(ctx, item, "%s must go up: %s is not above the bound before it",
                              key->name, s);
        cfg->histogram_buckets_ms[i] = ms;
    }
    cfg->nhistogram_buckets = (unsigned)n;
    return 0;
}

/* admin: {listen: ADDRESS | off, token: STRING, allow: [...], deny: [...]}.
 * The admin listener joins the listener list (so reloads add and remove it
 * like any other) with the admin flag; it is on 127.0.0.1:9901 unless
 * switched off. allow/deny are prefix lists as a site's are (built and
 * checked by config_build.c). */
struct admin_section {
    const char *listen;
    const char *token;
    unsigned tenant_series;
};

static const struct cfg_key admin_keys[] = {
    {"listen", p_string, FIELD(struct admin_section, listen), 0, 0, NULL,
     "127.0.0.1:9901" /* or off */},
    {"token", p_string, FIELD(struct admin_section, token), 0, 0, NULL, NULL /* none */},
    {"histogram_buckets", p_buckets, 0, 0, 0, NULL,
     NULL /* 1ms 5ms 10ms 25ms 50ms 100ms 250ms 500ms 1s 2500ms 5s 10s */},
    {"tenant_series", p_uint, FIELD(struct admin_section, tenant_series), 0, 100000, NULL, "500"},
    {"allow", p_skip, 0, 0, 0, NULL, NULL /* anyone who reaches the listener */},
    {"deny", p_skip, 0, 0, 0, NULL, NULL /* none */},
    {NULL, NULL, 0, 0, 0, NULL},
};

static int parse_admin(struct cfg_ctx *ctx, yaml_node_t *node)
{
    struct tg_config *cfg = ctx->cfg;
    struct admin_section a = {NULL, NULL, 0};
    apply_defaults(ctx, admin_keys, &a);
    struct tg_config_mark mark = {1, 1};
    if (node != NULL) {
        yaml_node_t *ln = mapping_get(ctx, node, "listen");
        mark = mark_of(ln != NULL ? ln : node);
        if (walk_mapping(ctx, node, admin_keys, &a, "admin") < 0 ||
            parse_access(ctx, node, &cfg->admin_access_list) < 0)
            return -1;
    }
    cfg->admin_token = a.token;
    cfg->tenant_series = a.tenant_series;
    if (a.token != NULL && strlen(a.token) < 16)
        return node_error(ctx, node, "admin.token must be at least 16 characters");
    if (strcmp(a.listen, "off") == 0 || cfg->listeners == NULL)
        return 0;
    struct tg_config_listen *l = &cfg->listeners[cfg->nlisteners];
    memset(l, 0, sizeof(*l));
    l->admin = true;
    l->backlog = ADMIN_BACKLOG;
    l->mark = mark;
    char err[300];
    if (tg_config_parse_sockaddr(a.listen, &l->addr, err, sizeof(err)) < 0) {
        yaml_node_t *ln = mapping_get(ctx, node, "listen");
        return node_error(ctx, ln ? ln : node, "admin.listen: %s", err);
    }
    l->addr.text = tg_arena_strdup(&cfg->arena, a.listen);
    char key[80];
    tg_config_format_sockaddr((struct sockaddr *)&l->addr.sa, key, sizeof(key));
    for (size_t j = 0; j < cfg->nlisteners; j++)
        if (strcmp(cfg->listeners[j].key, key) == 0)
            return error_at(ctx, mark, "admin.listen %s is also a listener at line %d", key,
                            cfg->listeners[j].mark.line),
                   -1;
    l->key = tg_arena_strdup(&cfg->arena, key);
    cfg->nlisteners++;
    return 0;
}

/* ---- warnings ------------------------------------------------------------------------ */

#define MAX_WARNINGS 32

/* Adds "FILE:LINE:COL: warning: ..." to the snapshot: `-t` prints it, a
 * start or reload logs it, and the configuration loads. */
static void warn_at(struct cfg_ctx *ctx, struct tg_config_mark m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warn_at(struct cfg_ctx *ctx, struct tg_config_mark m, const char *fmt, ...)
{
    struct tg_config *cfg = ctx->cfg;
    if (cfg->warnings == NULL)
        cfg->warnings = tg_arena_calloc(&cfg->arena, MAX_WARNINGS, sizeof(*cfg->warnings));
    if (cfg->warnings == NULL || cfg->nwarnings >= MAX_WARNINGS)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    const char *file = tg_config_mark_file(cfg, m);
    size_t n = strlen(file) + strlen(msg) + 48;
    char *line = tg_arena_alloc(&cfg->arena, n);
    if (line == NULL)
        return;
    snprintf(line, n, "%s:%d:%d: warning: %s", file, m.line, m.col, msg);
    cfg->warnings[cfg->nwarnings++] = line;
}

static bool is_loopback(const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

/* What is valid but most likely not meant: an admin listener anyone on
 * the network may use, and redirects to a port nothing here serves TLS
 * on (fine behind a load balancer that terminates TLS there, so not an
 * error). */
static void warn_listeners(struct cfg_ctx *ctx)
{
    const struct tg_config *cfg = ctx->cfg;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct tg_config_listen *l = &cfg->listeners[i];
        if (l->admin && cfg->admin_token == NULL && !is_loopback(&l->addr.sa))
            warn_at(ctx, l->mark,
                    "admin.listen %s is not a loopback address and admin.token is not set: "
                    "anyone who reaches it can read /status and /metrics and reset rate "
                    "limits; set admin.token, or listen on 127.0.0.1",
                    l->key);
        if (l->redirect_to_https == 0)
            continue;
        bool served = false;
        for (size_t j = 0; j < cfg->nlisteners && !served; j++) {
            const struct sockaddr_storage *sa = &cfg->listeners[j].addr.sa;
            int port = sa->ss_family == AF_INET
                           ? ntohs(((const struct sockaddr_in *)sa)->sin_port)
                           : ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
            served =
                cfg->listeners[j].tls && !cfg->listeners[j].admin && port == l->redirect_to_https;
        }
        if (!served)
            warn_at(ctx, l->mark,
                    "listener %s: redirect_to_https: %d, but no TLS listener here is on port "
                    "%d (right only if something in front terminates TLS on that port)",
                    l->key, l->redirect_to_https, l->redirect_to_https);
    }
}

/* The top level: sections in dependency order, whatever the file order. */
/* The top level. Sections walked in place (p_section) have no
 * dependencies; the others are parsed by parse_root in dependency order,
 * and list their table here for the defaults. */
static const struct cfg_key top_keys[] = {
    {"workers", p_workers, FIELD(struct tg_config, workers), 1, 256, NULL, "auto"},
    {"drain_timeout", p_duration, FIELD(struct tg_config, drain_timeout_ms), 0, 0, NULL, "30s"},
    {"user", p_string, FIELD(struct tg_config, user), 0, 0, NULL, NULL /* stay */},
    {"listen", p_skip, 0, 0, 0, NULL, NULL /* required */},
    {"client", p_section, FIELD(struct tg_config, client), 0, 0, NULL, NULL, client_keys},
    {"stream", p_section, FIELD(struct tg_config, stream), 0, 0, NULL, NULL, stream_keys},
    {"http2", p_section, FIELD(struct tg_config, http2), 0, 0, NULL, NULL, http2_keys},
    {"upstreams", p_skip, 0, 0, 0, NULL, NULL /* {} */},
    {"sites", p_skip, 0, 0, 0, NULL, NULL /* required */},
    {"log", p_section, FIELD(struct tg_config, log), 0, 0, NULL, NULL, log_keys},
    {"tracing", p_section, FIELD(struct tg_config, tracing), 0, 0, NULL, NULL, tracing_keys},
    {"tls", p_skip, FIELD(struct tg_config, tls), 0, 0, NULL, NULL, tls_keys},
    {"rate_limit", p_skip, FIELD(struct tg_config, rate_limit), 0, 0, NULL, NULL, rate_limit_keys},
    {"tenants", p_skip, FIELD(struct tg_config, tenants), 0, 0, NULL, NULL, tenants_keys},
    {"admin", p_skip, 0, 0, 0, NULL, NULL /* admin_keys */},
    {"trusted_proxies", p_skip, 0, 0, 0, NULL, NULL /* [] */},
    {"client_ip_header", p_enum, FIELD(struct tg_config, client_ip_header), 0, 0, client_ip_headers,
     "auto"},
    {"geoip", p_skip, FIELD(struct tg_config, geoip_files), 0, 0, NULL, NULL, geoip_keys},
    {"headers", p_skip, 0, 0, 0, NULL, NULL /* named_headers */},
    {"include", p_skip, 0, 0, 0, NULL, NULL /* none: read before parsing (read_includes) */},
    {NULL, NULL, 0, 0, 0, NULL},
};

/* The top level: sections in dependency order, whatever the file order. */
static int parse_root(struct cfg_ctx *ctx, yaml_node_t *root)
{
    struct tg_config *cfg = ctx->cfg;
    if (root->type != YAML_MAPPING_NODE)
        return node_error(ctx, root, "the configuration must be a mapping, not %s",
                          node_kind(root));
    int rc = walk_mapping(ctx, root, top_keys, cfg, "the top level");

    yaml_node_t *n;
    if ((n = mapping_get(ctx, root, "tls")) != NULL && parse_tls(ctx, n) < 0)
        rc = -1;
    if ((n = mapping_get(ctx, root, "trusted_proxies")) != NULL &&
        parse_cidr_list(ctx, n, "trusted_proxies", &cfg->trusted_proxies, 1) < 0)
        rc = -1;
    if ((n = mapping_get(ctx, root, "geoip")) != NULL && parse_geoip(ctx, n) < 0)
        rc = -1;
    struct hdr_spec *global = NULL;
    if ((n = mapping_get(ctx, root, "headers")) != NULL) {
        global = tg_arena_calloc(&cfg->arena, 1, sizeof(*global));
        if (global == NULL || parse_headers_spec(ctx, n, global) < 0)
            rc = -1;
    }
    ctx->global_headers = global;
    const struct hdr_spec *gspecs[] = {global};
    if (resolve_headers(ctx, &cfg->headers, gspecs, 1) < 0)
        rc = node_error(ctx, root, "out of memory");
    /* A missing section is reported at the end of the file, after any
     * problem in what is there. */
    struct tg_config_mark end = {(int)root->end_mark.line + 1, (int)root->end_mark.column + 1};
    if ((n = mapping_get(ctx, root, "listen")) == NULL) {
        error_at(ctx, end, "missing 'listen': no address to serve on");
        rc = -1;
    }
    if (n != NULL && parse_listen(ctx, n) < 0)
        rc = -1;
    if (parse_admin(ctx, mapping_get(ctx, root, "admin")) < 0)
        rc = -1;
    if ((n = mapping_get(ctx, root, "rate_limit")) != NULL && parse_rate_limit(ctx, n) < 0)
        rc = -1;
    if ((n = mapping_get(ctx, root, "tenants")) != NULL && parse_tenants(ctx, n) < 0)
        rc = -1;
    /* Gateways that share limits in Redis are a fleet: they share TLS
     * state there too, under its own prefix, unless tls.redis says where
     * (a Redis Cluster cannot hold it: TLS state needs one server). */
    if (!cfg->tls.fleet && cfg->rate_limit.has_redis && cfg->rate_limit.redis.ncluster == 0) {
        cfg->tls.fleet = true;
        cfg->tls.redis = cfg->rate_limit.redis;
        cfg->tls.redis.key_prefix = "tollgate:tls:";
    }
    if ((n = mapping_get(ctx, root, "upstreams")) != NULL && parse_upstreams(ctx, n) < 0)
        rc = -1;
    if ((n = mapping_get(ctx, root, "sites")) == NULL) {
        error_at(ctx, end, "missing 'sites': nothing to route to");
        rc = -1;
    } else if (parse_sites(ctx, n) < 0) {
        rc = -1;
    }

    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct tg_config_listen *l = &cfg->listeners[i];
        if (l->h2c && l->tls) {
            error_at(ctx, l->mark,
                     "listener %s: h2c is HTTP/2 without TLS; on a TLS listener "
                     "HTTP/2 is offered by ALPN (http2: true)",
                     l->addr.text);
            rc = -1;
        }
        if (l->proxy_protocol && cfg->trusted_proxies == NULL) {
            error_at(ctx, l->mark,
                     "listener %s: proxy_protocol needs trusted_proxies listing "
                     "the load balancers that send it (a PROXY header from any other "
                     "address is refused)",
                     l->addr.text);
            rc = -1;
        }
    }
    if (cfg->tls.acme.enabled) {
        const struct tg_config_acme *a = &cfg->tls.acme;
        bool plain = false, tls = false;
        for (size_t i = 0; i < cfg->nlisteners; i++) {
            if (cfg->listeners[i].admin)
                continue;
            plain |= !cfg->listeners[i].tls;
            tls |= cfg->listeners[i].tls;
        }
        if (!(a->http01 && plain) && !(a->tls_alpn01 && tls)) {
            error_at(ctx, a->mark,
                     "tls.acme has no way to prove the names: HTTP-01 needs a "
                     "plain listener (the CA connects on port 80) and http01: true; TLS-ALPN-01 "
                     "needs a TLS listener (port 443) and tls_alpn01: true");
            rc = -1;
        }
        if (a->ask != NULL && !a->on_demand) {
            error_at(ctx, a->mark,
                     "tls.acme: ask is for on_demand certificates; set "
                     "on_demand: true or drop ask");
            rc = -1;
        }
    }
    if (cfg->client.max_request_line > cfg->client.max_head) {
        n = mapping_get(ctx, root, "client");
        node_error(ctx, n ? n : root, "client.max_request_line must not exceed client.max_head");
        rc = -1;
    }
    for (size_t i = 0; i < cfg->rate_limit.npolicies; i++) {
        const struct tg_config_policy *p = &cfg->rate_limit.policies[i];
        if (p->needs_body && p->max_peek > cfg->client.buffer_size) {
            error_at(ctx, p->mark, "policy '%s': max_peek must not exceed client.buffer_size",
                     p->name);
            rc = -1;
        }
    }
    if (cfg->log.access != NULL && strcmp(cfg->log.access, "off") == 0)
        cfg->log.access = NULL;
    warn_listeners(ctx);
    return rc;
}

static void config_free(struct tg_config *cfg)
{
    if (cfg->unbuild != NULL)
        cfg->unbuild(cfg);
    if (cfg->rate_limit.exempt != NULL)
        tg_cidr_set_free(cfg->rate_limit.exempt);
    if (cfg->trusted_proxies != NULL)
        tg_cidr_set_free(cfg->trusted_proxies);
    tg_arena_reset(&cfg->arena);
    free(cfg);
}

/* ---- sources: files, ${ENV}, include ------------------------------------------------------ */

#define MAX_INCLUDE_DEPTH 8 /* levels of included files below the main one */
#define MAX_MERGE_DEPTH 64  /* nesting of an included document's nodes */
#define MAX_SUBSTS 65535    /* scalars ${...} changed, all files */
#define MAX_ENV_NAME 128

/* Reads `path` whole (NUL-terminated; free it). Returns 0, or -1 with the
 * reason in `why`. */
static int read_whole(const char *path, char **data_out, size_t *len_out, char *why, size_t whylen)
{
    switch (tg_file_read(path, MAX_CONFIG_BYTES, data_out, len_out)) {
    case TG_FILE_OK:
        return 0;
    case TG_FILE_OPEN:
        snprintf(why, whylen, "cannot open: %s", strerror(errno));
        return -1;
    case TG_FILE_NOT_REGULAR:
        snprintf(why, whylen, "not a regular file of at most %u MiB", MAX_CONFIG_BYTES >> 20);
        return -1;
    default:
        snprintf(why, whylen, "cannot read: %s",
                 errno == ENOMEM ? "out of memory" : strerror(errno));
        return -1;
    }
}

/* Registers a file the configuration reads: its name for messages and
 * its directory for the relative paths written in it. Returns its number,
 * or -1 when there are too many (or no memory). */
static int source_add(struct cfg_ctx *ctx, const char *name, int parent)
{
    struct tg_config *cfg = ctx->cfg;
    if (cfg->files == NULL || cfg->nfiles >= TG_CONFIG_MAX_FILES)
        return -1;
    int k = (int)cfg->nfiles;
    char *copy = tg_arena_strdup(&cfg->arena, name);
    const char *slash = copy != NULL ? strrchr(copy, '/') : NULL;
    char *dir = tg_arena_alloc(&cfg->arena, slash != NULL ? (size_t)(slash - copy) + 2 : 1);
    if (copy == NULL || dir == NULL)
        return -1;
    size_t dn = slash != NULL ? (size_t)(slash - copy) + 1 : 0; /* with its '/' */
    memcpy(dir, copy, dn);
    dir[dn] = '\0';
    struct stat st;
    bool has_id = stat(name, &st) == 0;
    ctx->sources[k] =
        (struct cfg_source){dir, has_id ? st.st_dev : 0, has_id ? st.st_ino : 0, has_id, parent};
    cfg->files[k] = copy;
    cfg->nfiles++;
    ctx->errs->files = cfg->files;
    ctx->errs->nfiles = cfg->nfiles;
    return k;
}

/* Tags every node of a freshly loaded document with its file (mark_of). */
static void marks_set(yaml_document_t *doc, int file)
{
    for (yaml_node_t *n = doc->nodes.start; n < doc->nodes.top; n++) {
        n->start_mark.index = (size_t)file;
        n->end_mark.index = (size_t)file;
    }
}

static bool env_name_char(char c, bool first)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
}

/* Expands ${NAME}, ${NAME:-default} (the default when NAME is unset or
 * empty) and $$ (one '$') in `in`; any other '$' stays, so `$tenant`
 * means what it always did. Returns 1 with *out (malloc'd) when something
 * was expanded, 0 when nothing was to be, -1 with `why` and *at (the
 * offset of the '$') when it cannot be. */
static int expand_env(const char *in, char **out, size_t *at, char *why, size_t whylen)
{
    if (strchr(in, '$') == NULL)
        return 0;
    size_t cap = strlen(in) + 64, n = 0;
    char *buf = malloc(cap);
    bool changed = false;
    if (buf == NULL) {
        snprintf(why, whylen, "out of memory");
        *at = 0;
        return -1;
    }
    for (const char *p = in; *p != '\0';) {
        const char *text = p;
        size_t tn = 1;
        if (p[0] == '$' && p[1] == '$') {
            changed = true;
            p += 2;
        } else if (p[0] == '$' && p[1] == '{') {
            changed = true;
            const char *name = p + 2, *q = name;
            while (env_name_char(*q, q == name))
                q++;
            size_t nn = (size_t)(q - name);
            const char *def = NULL;
            size_t defn = 0;
            if (q[0] == ':' && q[1] == '-') {
                def = q + 2;
                const char *close = strchr(def, '}');
                defn = close != NULL ? (size_t)(close - def) : 0;
                q = close != NULL ? close : def + strlen(def);
            }
            if (nn == 0 || nn > MAX_ENV_NAME || *q != '}') {
                snprintf(why, whylen,
                         "'%.40s' is not a variable: write ${NAME} or ${NAME:-default} "
                         "(NAME: letters, digits, '_'), and $$ for a '$'",
                         p);
                *at = (size_t)(p - in);
                free(buf);
                return -1;
            }
            char var[MAX_ENV_NAME + 1];
            memcpy(var, name, nn);
            var[nn] = '\0';
            const char *v = getenv(var);
            if (def != NULL && (v == NULL || *v == '\0')) {
                text = def;
                tn = defn;
            } else if (v == NULL) {
                snprintf(why, whylen,
                         "${%s}: the environment variable %s is not set (${%s:-default} "
                         "gives a default)",
                         var, var, var);
                *at = (size_t)(p - in);
                free(buf);
                return -1;
            } else {
                text = v;
                tn = strlen(v);
            }
            p = q + 1;
        } else {
            p++;
        }
        if (n + tn + 1 > cap) {
            cap = (n + tn + 1) * 2;
            char *grown = realloc(buf, cap);
            if (grown == NULL) {
                free(buf);
                snprintf(why, whylen, "out of memory");
                *at = 0;
                return -1;
            }
            buf = grown;
        }
        memcpy(buf + n, text, tn);
        n += tn;
    }
    buf[n] = '\0';
    if (!changed) {
        free(buf);
        return 0;
    }
    *out = buf;
    return 1;
}

/* Substitutes ${...} in one scalar value, keeping what was written. */
static void subst_scalar(struct cfg_ctx *ctx, yaml_node_t *node)
{
    const char *value = (const char *)node->data.scalar.value;
    if (strlen(value) != node->data.scalar.length)
        return; /* a NUL byte: scalar() refuses it */
    char *out = NULL, why[512];
    size_t at = 0;
    int r = expand_env(value, &out, &at, why, sizeof(why));
    if (r == 0)
        return;
    if (r < 0) {
        /* Point at the '$' when the scalar is its text: on one line,
         * and as long as the value (plain) or two quotes longer (quoted:
         * every escape would make it longer still). */
        struct tg_config_mark m = mark_of(node);
        size_t span = node->end_mark.column - node->start_mark.column;
        bool plain = node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (node->start_mark.line == node->end_mark.line &&
            span == node->data.scalar.length + (plain ? 0 : 2))
            m.col += (int)at + (plain ? 0 : 1);
        error_at(ctx, m, "%s", why);
    }
    if (ctx->nsubsts == ctx->substs_cap) {
        size_t cap = ctx->substs_cap ? ctx->substs_cap * 2 : 16;
        struct cfg_subst *grown =
            ctx->nsubsts < MAX_SUBSTS ? realloc(ctx->substs, cap * sizeof(*grown)) : NULL;
        if (grown == NULL) {
            free(out);
            node_error(ctx, node, "too many ${...} substitutions");
            return;
        }
        ctx->substs = grown;
        ctx->substs_cap = cap;
    }
    /* A value that could not be expanded is recorded without one: what
     * the parser would say about its text is noise after the error above. */
    char *written = strdup(value), *copy = r > 0 ? strdup(out) : NULL;
    if (written == NULL || (r > 0 && copy == NULL)) {
        free(written);
        free(copy);
        free(out);
        node_error(ctx, node, "out of memory");
        return;
    }
    ctx->substs[ctx->nsubsts] = (struct cfg_subst){written, copy};
    node->start_mark.index |= (size_t)(ctx->nsubsts + 1) << MARK_SUBST_SHIFT;
    ctx->nsubsts++;
    if (r < 0)
        return;
    /* libyaml frees scalar values with free(). */
    free(node->data.scalar.value);
    node->data.scalar.value = (yaml_char_t *)out;
    node->data.scalar.length = strlen(out);
}

/* Substitutes ${...} in every value of a document (keys stay as written),
 * each node once however many aliases reach it. */
static void subst_values(struct cfg_ctx *ctx, yaml_document_t *doc, int idx, unsigned char *seen,
                         int depth)
{
    yaml_node_t *node = yaml_document_get_node(doc, idx);
    if (node == NULL || seen[idx - 1] || depth > MAX_MERGE_DEPTH)
        return;
    seen[idx - 1] = 1;
    if (node->type == YAML_SCALAR_NODE) {
        subst_scalar(ctx, node);
    } else if (node->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *it = node->data.sequence.items.start;
             it < node->data.sequence.items.top; it++)
            subst_values(ctx, doc, *it, seen, depth + 1);
    } else if (node->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
             pair < node->data.mapping.pairs.top; pair++)
            subst_values(ctx, doc, pair->value, seen, depth + 1);
    }
}

static void subst_document(struct cfg_ctx *ctx, yaml_document_t *doc)
{
    size_t n = (size_t)(doc->nodes.top - doc->nodes.start);
    unsigned char *seen = calloc(n ? n : 1, 1);
    if (seen == NULL) {
        error_at(ctx, (struct tg_config_mark){1, 1, 0}, "out of memory");
        return;
    }
    if (n > 0)
        subst_values(ctx, doc, 1, seen, 0);
    free(seen);
}

/* An included document merged into the main one: its nodes are copied
 * (marks and all) into the main document, which the parser then walks as
 * if it had been written in one file. */
struct merge {
    struct cfg_ctx *ctx;
    yaml_document_t *dst, *src;
    int *memo; /* src node -> its copy in dst (0: not copied yet) */
};

enum merge_how { MERGE_NONE = 0, MERGE_APPEND, MERGE_INTO, MERGE_BY_NAME };

/* What combines across files; every other key may be set in one file only. */
static const struct {
    const char *section; /* NULL: the top level */
    const char *key;
    enum merge_how how;
    const char *what; /* MERGE_BY_NAME: what a name names */
} merge_rules[] = {
    {NULL, "sites", MERGE_APPEND, NULL},
    {NULL, "upstreams", MERGE_BY_NAME, "upstream"},
    {NULL, "rate_limit", MERGE_INTO, NULL},
    {NULL, "tenants", MERGE_INTO, NULL},
    {"rate_limit", "policies", MERGE_BY_NAME, "rate-limit policy"},
    {"tenants", "static", MERGE_BY_NAME, "tenant"},
    {"tenants", "domains", MERGE_BY_NAME, "custom domain"},
};

/* Copies src node `idx` (and what it holds) into dst. Returns the copy's
 * index, or 0 after reporting why not. dst's node array may move. */
static int copy_node(struct merge *m, int idx, int depth)
{
    if (m->memo[idx - 1] != 0)
        return m->memo[idx - 1];
    const yaml_node_t *n = yaml_document_get_node(m->src, idx);
    if (depth > MAX_MERGE_DEPTH) {
        node_error(m->ctx, n, "nested more than %d levels deep", MAX_MERGE_DEPTH);
        return 0;
    }
    int out = 0;
    if (n->type == YAML_SCALAR_NODE)
        out = yaml_document_add_scalar(m->dst, n->tag, n->data.scalar.value,
                                       (int)n->data.scalar.length, n->data.scalar.style);
    else if (n->type == YAML_SEQUENCE_NODE)
        out = yaml_document_add_sequence(m->dst, n->tag, n->data.sequence.style);
    else if (n->type == YAML_MAPPING_NODE)
        out = yaml_document_add_mapping(m->dst, n->tag, n->data.mapping.style);
    if (out == 0) {
        node_error(m->ctx, n, "out of memory");
        return 0;
    }
    yaml_node_t *c = yaml_document_get_node(m->dst, out);
    c->start_mark = n->start_mark;
    c->end_mark = n->end_mark;
    m->memo[idx - 1] = out;
    if (n->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
             it++) {
            int item = copy_node(m, *it, depth + 1);
            if (item == 0 || !yaml_document_append_sequence_item(m->dst, out, item))
                return 0;
        }
    } else if (n->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
             p++) {
            int k = copy_node(m, p->key, depth + 1);
            int v = k != 0 ? copy_node(m, p->value, depth + 1) : 0;
            if (v == 0 || !yaml_document_append_mapping_pair(m->dst, out, k, v))
                return 0;
        }
    }
    return out;
}

static const char *scalar_text(const yaml_node_t *n)
{
    return n != NULL && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* In mapping `map` of `doc`: the pair whose key is `name`, or NULL. */
static yaml_node_pair_t *pair_of(yaml_document_t *doc, int map, const char *name)
{
    yaml_node_t *mn = yaml_document_get_node(doc, map);
    for (yaml_node_pair_t *p = mn->data.mapping.pairs.start; p < mn->data.mapping.pairs.top; p++) {
        const char *k = scalar_text(yaml_document_get_node(doc, p->key));
        if (k != NULL && strcmp(k, name) == 0)
            return p;
    }
    return NULL;
}

/* "FILE:LINE:COL" of a node of the main document, for messages that
 * name two places. */
static void place_of(struct cfg_ctx *ctx, const yaml_node_t *n, char *out, size_t cap)
{
    struct tg_config_mark mk = mark_of(n);
    snprintf(out, cap, "%s:%d:%d", tg_config_mark_file(ctx->cfg, mk), mk.line, mk.col);
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Merges src mapping `src_map` into dst mapping `dst_map` name by name
 * (upstreams, policies, tenants): a name both define is an error that
 * names both places. */
static void merge_by_name(struct merge *m, int dst_map, int src_map, const char *what)
{
    yaml_node_t *dn = yaml_document_get_node(m->dst, dst_map);
    const yaml_node_t *sn = yaml_document_get_node(m->src, src_map);
    size_t nd = (size_t)(dn->data.mapping.pairs.top - dn->data.mapping.pairs.start);
    size_t ns = (size_t)(sn->data.mapping.pairs.top - sn->data.mapping.pairs.start);
    size_t cap = 16;
    while (cap < 2 * (nd + ns))
        cap *= 2;
    int *slots = calloc(cap, sizeof(int)); /* dst key node indexes; 0 = empty */
    if (slots == NULL) {
        node_error(m->ctx, sn, "out of memory");
        return;
    }
    for (size_t i = 0; i < nd; i++) {
        int key = dn->data.mapping.pairs.start[i].key;
        const char *name = scalar_text(yaml_document_get_node(m->dst, key));
        if (name == NULL)
            continue;
        size_t h = (size_t)name_hash(name) & (cap - 1);
        while (slots[h] != 0 &&
               strcmp(scalar_text(yaml_document_get_node(m->dst, slots[h])), name) != 0)
            h = (h + 1) & (cap - 1);
        if (slots[h] == 0)
            slots[h] = key; /* a name twice in one file: the parser says so */
    }
    for (const yaml_node_pair_t *p = sn->data.mapping.pairs.start; p < sn->data.mapping.pairs.top;
         p++) {
        const yaml_node_t *sk = yaml_document_get_node(m->src, p->key);
        const char *name = scalar_text(sk);
        size_t h = 0;
        if (name != NULL) {
            h = (size_t)name_hash(name) & (cap - 1);
            while (slots[h] != 0 &&
                   strcmp(scalar_text(yaml_document_get_node(m->dst, slots[h])), name) != 0)
                h = (h + 1) & (cap - 1);
            if (slots[h] != 0) {
                char there[600];
                place_of(m->ctx, yaml_document_get_node(m->dst, slots[h]), there, sizeof(there));
                node_error(m->ctx, sk, "%s '%s' is defined twice: here and at %s", what, name,
                           there);
                continue;
            }
        }
        int k = copy_node(m, p->key, 1);
        int v = k != 0 ? copy_node(m, p->value, 1) : 0;
        if (v == 0 || !yaml_document_append_mapping_pair(m->dst, dst_map, k, v))
            break;
        if (name != NULL)
            slots[h] = k;
    }
    free(slots);
}

/* Merges src mapping `src_map` (the top level of an included file, or a
 * section of it) into dst mapping `dst_map`. */
static void merge_mapping(struct merge *m, int dst_map, int src_map, const char *section)
{
    const yaml_node_t *sn = yaml_document_get_node(m->src, src_map);
    for (const yaml_node_pair_t *p = sn->data.mapping.pairs.start; p < sn->data.mapping.pairs.top;
         p++) {
        const yaml_node_t *sk = yaml_document_get_node(m->src, p->key);
        const yaml_node_t *sv = yaml_document_get_node(m->src, p->value);
        const char *name = scalar_text(sk);
        if (section == NULL && name != NULL && strcmp(name, "include") == 0)
            continue; /* read by read_includes */
        yaml_node_pair_t *dp = name != NULL ? pair_of(m->dst, dst_map, name) : NULL;
        if (dp == NULL) {
            int k = copy_node(m, p->key, 1);
            int v = k != 0 ? copy_node(m, p->value, 1) : 0;
            if (v == 0 || !yaml_document_append_mapping_pair(m->dst, dst_map, k, v))
                return;
            continue;
        }
        int dkey = dp->key, dval = dp->value;
        const yaml_node_t *dv = yaml_document_get_node(m->dst, dval);
        size_t r = 0;
        while (r < TG_ARRAY_LEN(merge_rules) &&
               !(strcmp(merge_rules[r].key, name) == 0 &&
                 (merge_rules[r].section == NULL
                      ? section == NULL
                      : section != NULL && strcmp(merge_rules[r].section, section) == 0)))
            r++;
        enum merge_how how = r < TG_ARRAY_LEN(merge_rules) ? merge_rules[r].how : MERGE_NONE;
        yaml_node_type_t want = how == MERGE_APPEND ? YAML_SEQUENCE_NODE : YAML_MAPPING_NODE;
        if (how != MERGE_NONE && sv->type != want) {
            node_error(m->ctx, sv, "%s%s%s must be %s, not %s", section ? section : "",
                       section ? "." : "", name,
                       want == YAML_SEQUENCE_NODE ? "a list" : "a mapping", node_kind(sv));
            continue;
        }
        if (how != MERGE_NONE && dv->type != want)
            continue; /* the parser reports it where it is written */
        if (how == MERGE_APPEND) {
            for (yaml_node_item_t *it = sv->data.sequence.items.start;
                 it < sv->data.sequence.items.top; it++) {
                int item = copy_node(m, *it, 1);
                if (item == 0 || !yaml_document_append_sequence_item(m->dst, dval, item))
                    return;
            }
        } else if (how == MERGE_INTO) {
            merge_mapping(m, dval, p->value, name);
        } else if (how == MERGE_BY_NAME) {
            merge_by_name(m, dval, p->value, merge_rules[r].what);
        } else {
            char there[600];
            place_of(m->ctx, yaml_document_get_node(m->dst, dkey), there, sizeof(there));
            node_error(m->ctx, sk,
                       "'%s%s%s' is set here and at %s; across files only sites (appended), "
                       "upstreams, rate_limit.policies, tenants.static and tenants.domains "
                       "(by name) combine",
                       section ? section : "", section ? "." : "", name, there);
        }
    }
}

static void read_includes(struct cfg_ctx *ctx, yaml_document_t *main_doc, yaml_document_t *doc,
                          int file, int depth);

/* Reads one included file into the main document: its own keys first,
 * then what it includes. `at` is where it was named. */
static void include_file(struct cfg_ctx *ctx, yaml_document_t *main_doc, const char *path,
                         int parent, struct tg_config_mark at, int depth)
{
    if (depth > MAX_INCLUDE_DEPTH) {
        error_at(ctx, at, "include: '%s' is more than %d files deep", path, MAX_INCLUDE_DEPTH);
        return;
    }
    struct stat st;
    if (stat(path, &st) < 0) {
        error_at(ctx, at, "include: cannot open '%s': %s", path, strerror(errno));
        return;
    }
    for (int f = parent; f >= 0; f = ctx->sources[f].parent) {
        if (ctx->sources[f].has_id && ctx->sources[f].dev == st.st_dev &&
            ctx->sources[f].ino == st.st_ino) {
            if (f == parent)
                error_at(ctx, at, "include: '%s' includes itself", path);
            else
                error_at(ctx, at,
                         "include cycle: '%s' is being read already (it includes this "
                         "file, directly or through others)",
                         path);
            return;
        }
    }
    int k = source_add(ctx, path, parent);
    if (k < 0) {
        error_at(ctx, at, "include: more than %d files", TG_CONFIG_MAX_FILES);
        return;
    }
    char *data = NULL, why[300];
    size_t len = 0;
    if (read_whole(path, &data, &len, why, sizeof(why)) < 0) {
        error_at(ctx, at, "include: '%s': %s", path, why);
        return;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        free(data);
        error_at(ctx, at, "out of memory");
        return;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    if (!yaml_parser_load(&parser, &doc)) {
        struct tg_config_mark m = {(int)parser.problem_mark.line + 1,
                                   (int)parser.problem_mark.column + 1, k};
        error_at(ctx, m, "YAML syntax error: %s%s%s", parser.problem ? parser.problem : "unknown",
                 parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        free(data);
        return;
    }
    marks_set(&doc, k);
    subst_document(ctx, &doc);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    yaml_node_t *main_root = yaml_document_get_root_node(main_doc);
    if (root == NULL) {
        /* Only comments: nothing to add. */
    } else if (root->type != YAML_MAPPING_NODE) {
        node_error(ctx, root, "an included file must be a mapping of top-level keys, not %s",
                   node_kind(root));
    } else {
        size_t n = (size_t)(doc.nodes.top - doc.nodes.start);
        struct merge m = {ctx, main_doc, &doc, calloc(n, sizeof(int))};
        if (m.memo == NULL)
            error_at(ctx, at, "out of memory");
        else
            merge_mapping(&m, (int)(main_root - main_doc->nodes.start) + 1,
                          (int)(root - doc.nodes.start) + 1, NULL);
        free(m.memo);
        read_includes(ctx, main_doc, &doc, k, depth + 1);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    free(data);
}

/* The `include:` of file `file` (whose document is `doc`): a file pattern
 * or a list of them, relative to that file's directory; each match, in
 * sorted order, is read into the main document. A pattern with a
 * wildcard may match nothing; a name without one must exist. */
static void read_includes(struct cfg_ctx *ctx, yaml_document_t *main_doc, yaml_document_t *doc,
                          int file, int depth)
{
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (root == NULL || root->type != YAML_MAPPING_NODE)
        return;
    yaml_node_t *inc = NULL;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        const char *k = scalar_text(yaml_document_get_node(doc, p->key));
        if (k != NULL && strcmp(k, "include") == 0) {
            inc = yaml_document_get_node(doc, p->value);
            break;
        }
    }
    if (inc == NULL)
        return;
    if (inc->type != YAML_SCALAR_NODE && inc->type != YAML_SEQUENCE_NODE) {
        node_error(ctx, inc, "include must be a file pattern or a list of them, not %s",
                   node_kind(inc));
        return;
    }
    /* The patterns first: reading a file adds nodes to the main document
     * (which may be `doc`), and that moves them. */
    size_t n = inc->type == YAML_SCALAR_NODE ? 1 : list_len(inc);
    struct {
        const char *pattern;
        struct tg_config_mark mark;
    } *pats = calloc(n ? n : 1, sizeof(*pats));
    if (pats == NULL) {
        node_error(ctx, inc, "out of memory");
        return;
    }
    size_t np = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = inc->type == YAML_SCALAR_NODE
                                ? inc
                                : yaml_document_get_node(doc, inc->data.sequence.items.start[i]);
        const char *s = scalar_text(item);
        if (s == NULL || *s == '\0' || strlen(s) != item->data.scalar.length) {
            node_error(ctx, item, "include: each entry must be a file pattern");
            continue;
        }
        const char *full = resolve_path(ctx, file, s);
        if (full == NULL) {
            node_error(ctx, item, "out of memory");
            continue;
        }
        pats[np].pattern = full;
        pats[np].mark = mark_of(item);
        np++;
    }
    for (size_t i = 0; i < np; i++) {
        if (strpbrk(pats[i].pattern, "*?[") == NULL) {
            include_file(ctx, main_doc, pats[i].pattern, file, pats[i].mark, depth);
            continue;
        }
        glob_t g;
        int r = glob(pats[i].pattern, 0, NULL, &g);
        if (r == GLOB_NOMATCH)
            continue;
        if (r != 0) {
            error_at(ctx, pats[i].mark, "include: cannot expand '%s'", pats[i].pattern);
            continue;
        }
        for (size_t j = 0; j < g.gl_pathc; j++)
            include_file(ctx, main_doc, g.gl_pathv[j], file, pats[i].mark, depth);
        globfree(&g);
    }
    free(pats);
}

/* Frees a snapshot the parse gives up on (its file names go with it). */
static void discard(struct cfg_ctx *ctx)
{
    ctx->errs->files = NULL;
    ctx->errs->nfiles = 0;
    config_free(ctx->cfg);
}

struct tg_config *tg_config_parse_collect(const char *name, const char *data, size_t len,
                                          struct tg_config_errors *errs)
{
    struct cfg_ctx ctx = {.errs = errs};
    struct tg_config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        error_at(&ctx, (struct tg_config_mark){1, 1}, "out of memory");
        return NULL;
    }
    atomic_init(&cfg->refs, 1);
    tg_arena_init(&cfg->arena, 16384);
    cfg->path = tg_arena_strdup(&cfg->arena, name);
    cfg->loaded_at = time(NULL);
    ctx.cfg = cfg;
    cfg->files = tg_arena_calloc(&cfg->arena, TG_CONFIG_MAX_FILES, sizeof(*cfg->files));
    if (cfg->path == NULL || source_add(&ctx, name, -1) != 0) {
        error_at(&ctx, (struct tg_config_mark){1, 1}, "out of memory");
        discard(&ctx);
        return NULL;
    }

    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        error_at(&ctx, (struct tg_config_mark){1, 1}, "out of memory");
        discard(&ctx);
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    if (!yaml_parser_load(&parser, &doc)) {
        struct tg_config_mark m = {(int)parser.problem_mark.line + 1,
                                   (int)parser.problem_mark.column + 1};
        error_at(&ctx, m, "YAML syntax error: %s%s%s", parser.problem ? parser.problem : "unknown",
                 parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        discard(&ctx);
        return NULL;
    }
    ctx.doc = &doc;
    marks_set(&doc, 0);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root == NULL) {
        error_at(&ctx, (struct tg_config_mark){1, 1}, "the configuration is empty");
        discard(&ctx);
        cfg = NULL;
    } else {
        /* Values from the environment, then the included files merged
         * in: the parser below sees one document. */
        subst_document(&ctx, &doc);
        read_includes(&ctx, &doc, &doc, 0, 1);
        root = yaml_document_get_root_node(&doc); /* the nodes may have moved */
        apply_defaults(&ctx, top_keys, cfg);
        if (parse_root(&ctx, root) < 0 && errs->n == 0)
            error_at(&ctx, (struct tg_config_mark){1, 1}, "invalid configuration");
    }
    for (size_t i = 0; i < ctx.nsubsts; i++) {
        free(ctx.substs[i].written);
        free(ctx.substs[i].value);
    }
    free(ctx.substs);
    if (ctx.defaults_ready)
        yaml_document_delete(&ctx.defaults);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return cfg;
}

struct tg_config *tg_config_parse_buffer(const char *name, const char *data, size_t len,
                                         char *errors, size_t errlen)
{
    struct tg_config_errors *errs = malloc(sizeof(*errs));
    if (errs == NULL) {
        snprintf(errors, errlen, "%s:1:1: out of memory\n", name);
        return NULL;
    }
    tg_config_errors_init(errs, name);
    if (errors != NULL && errlen > 0)
        errors[0] = '\0';
    struct tg_config *cfg = tg_config_parse_collect(name, data, len, errs);
    if (errs->n > 0) {
        tg_config_errors_format(errs, errors, errlen);
        tg_config_unref(cfg);
        cfg = NULL;
    }
    free(errs);
    return cfg;
}

int tg_config_read_file(const char *path, char **data_out, size_t *len_out, char *errors,
                        size_t errlen)
{
    char why[300];
    if (read_whole(path, data_out, len_out, why, sizeof(why)) < 0) {
        snprintf(errors, errlen, "%s:1:1: %s\n", path, why);
        return -1;
    }
    return 0;
}

struct tg_config *tg_config_parse(const char *path, char *errors, size_t errlen)
{
    char *data;
    size_t len;
    if (tg_config_read_file(path, &data, &len, errors, errlen) < 0)
        return NULL;
    struct tg_config *cfg = tg_config_parse_buffer(path, data, len, errors, errlen);
    free(data);
    return cfg;
}

void tg_config_ref(struct tg_config *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void tg_config_unref(struct tg_config *c)
{
    if (c != NULL && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        config_free(c);
}

const struct tg_config_upstream *tg_config_find_upstream(const struct tg_config *c,
                                                         const char *name, size_t n)
{
    for (size_t i = 0; i < c->nupstreams; i++)
        if (strlen(c->upstreams[i].name) == n && memcmp(c->upstreams[i].name, name, n) == 0)
            return &c->upstreams[i];
    return NULL;
}

/* YAML config loader: any bytes as a configuration file. A snapshot that
 * loads is freed again; one that does not must say why as
 * "fuzz.yaml:LINE:COL: message". Host names are resolved numerically only
 * (getaddrinfo below), so the target never touches the network; it may try
 * to open certificate, CA and GeoIP files a config names. */
#include <dlfcn.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "config_build.h"

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

/* Overrides libc's (and the sanitizer's weak interceptor): numeric
 * addresses still resolve, names fail at once instead of asking DNS. */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static getaddrinfo_fn real;
    if (real == NULL)
        real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    struct addrinfo h;
    if (hints != NULL)
        h = *hints;
    else
        memset(&h, 0, sizeof(h));
    h.ai_flags |= AI_NUMERICHOST | AI_NUMERICSERV;
    return real(node, service, &h, res);
}

/* "FILE:LINE:COL: " */
static bool starts_with_position(const char *s)
{
    if (strncmp(s, "fuzz.yaml:", 10) == 0)
        return true;
    const char *end = strchr(s, '\n');
    size_t n = end != NULL ? (size_t)(end - s) : strlen(s);
    for (size_t i = 0; i < n; i++) {
        unsigned line, col;
        int used = 0;
        if (s[i] == ':' && sscanf(s + i, ":%u:%u: %n", &line, &col, &used) == 2 && used > 0)
            return i > 0;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char errbuf[4096];
    memset(errbuf, 'X', sizeof(errbuf));
    struct tg_config *c =
        tg_config_load_buffer("fuzz.yaml", (const char *)data, size, errbuf, sizeof(errbuf));
    if (c == NULL) {
        /* The error report is NUL-terminated, inside the buffer, and
         * starts with the position of the first problem: in fuzz.yaml,
         * or in a file it includes ("FILE:LINE:COL: "). */
        if (memchr(errbuf, '\0', sizeof(errbuf)) == NULL || !starts_with_position(errbuf))
            __builtin_trap();
    }
    tg_config_unref(c);
    return 0;
}

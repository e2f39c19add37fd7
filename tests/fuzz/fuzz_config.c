/* YAML config loader: any bytes as a configuration file. A snapshot that
 * loads is freed again; one that does not must say why as
 * "fuzz.yaml:LINE:COL: message". Host names are resolved numerically only
 * (getaddrinfo below), so the target never touches the network; it may try
 * to open certificate, CA and GeoIP files a config names. */
#include <dlfcn.h>
#include <netdb.h>
#include <stdint.h>
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char errbuf[4096];
    memset(errbuf, 'X', sizeof(errbuf));
    struct tg_config *c =
        tg_config_load_buffer("fuzz.yaml", (const char *)data, size, errbuf, sizeof(errbuf));
    if (c == NULL) {
        /* The error report is NUL-terminated, inside the buffer, and
         * starts with the position of the first problem. */
        if (memchr(errbuf, '\0', sizeof(errbuf)) == NULL || strncmp(errbuf, "fuzz.yaml:", 10) != 0)
            __builtin_trap();
    }
    tg_config_unref(c);
    return 0;
}

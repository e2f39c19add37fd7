/* JSON field reader: any input, any field; the value must fit its buffer. */
#include <stdint.h>
#include <string.h>

#include "json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char out[64];
    size_t n = 0;
    size_t split = size > 0 ? data[0] % 16 : 0;
    if (split + 1 > size)
        return 0;
    const char *field = (const char *)data + 1;
    const char *doc = field + split;
    if (tg_json_find_string(doc, size - 1 - split, field, split, out, sizeof(out), &n) &&
        n > sizeof(out))
        __builtin_trap();
    return 0;
}

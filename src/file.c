/* Whole small files (file.h). */
#include "file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

enum tg_file_error tg_file_read(const char *path, size_t max, char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return TG_FILE_OPEN;
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
        fclose(f);
        return TG_FILE_NOT_REGULAR;
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (buf == NULL) {
        fclose(f);
        errno = ENOMEM;
        return TG_FILE_READ;
    }
    if (fread(buf, 1, n, f) != n) {
        int saved = errno != 0 ? errno : EIO;
        free(buf);
        fclose(f);
        errno = saved;
        return TG_FILE_READ;
    }
    fclose(f);
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return TG_FILE_OK;
}

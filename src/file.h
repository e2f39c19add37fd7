/* Whole small files read into memory: certificates and keys, configuration
 * files, ACME state. Any thread. */
#ifndef TG_FILE_H
#define TG_FILE_H

#include <stddef.h>

enum tg_file_error {
    TG_FILE_OK = 0,
    TG_FILE_OPEN = -1,        /* cannot open (errno says why) */
    TG_FILE_NOT_REGULAR = -2, /* not a regular file, or larger than allowed */
    TG_FILE_READ = -3,        /* cannot read, or out of memory (errno says which) */
};

/* Reads the regular file `path` of at most `max` bytes into a malloc'd
 * buffer, NUL-terminated (*len excludes the NUL; free *data). Returns
 * TG_FILE_OK, or an error with errno kept for the caller's message. */
enum tg_file_error tg_file_read(const char *path, size_t max, char **data, size_t *len);

#endif

/* The error log: human-readable lines on stderr (or a file), one write(2)
 * per line so lines from different threads never interleave.
 *
 * Format: "2026-11-26T10:00:00.123Z [error] worker 1: message". */
#ifndef TG_LOG_H
#define TG_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum tg_log_level {
    TG_LOG_DEBUG = 0,
    TG_LOG_INFO,
    TG_LOG_WARN,
    TG_LOG_ERROR,
};

/* Sets the minimum level written. Any thread; takes effect at once. */
void tg_log_set_level(enum tg_log_level level);

/* Whether lines at `level` are written now (to skip formatting them). */
bool tg_log_enabled(enum tg_log_level level);

/* Sends the log to `path` (opened for append) or back to stderr when path
 * is NULL. Returns 0, or -1 with errno set (the old target is kept). Main
 * thread; safe while workers log (the descriptor is swapped atomically and
 * the old one closed after a grace period, see log.c). */
int tg_log_open(const char *path);

/* Reopens the current file (SIGUSR1 after logrotate). */
int tg_log_reopen(void);

/* Names the calling thread in its lines ("main", "worker 2"). */
void tg_log_set_thread_name(const char *name);

void tg_log(enum tg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tg_vlog(enum tg_log_level level, const char *fmt, va_list ap);

#define tg_log_debug(...) tg_log(TG_LOG_DEBUG, __VA_ARGS__)
#define tg_log_info(...) tg_log(TG_LOG_INFO, __VA_ARGS__)
#define tg_log_warn(...) tg_log(TG_LOG_WARN, __VA_ARGS__)
#define tg_log_error(...) tg_log(TG_LOG_ERROR, __VA_ARGS__)

#endif

/* Error log. Each line is formatted into a stack buffer and written with a
 * single write(2), so concurrent threads never interleave partial lines.
 * The error log is low volume by design (faults, not requests); the access
 * log, which is per request, lives in access_log.c and never blocks. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048 /* longer messages are cut */
#define THREAD_NAME_MAX 24
#define FILE_MODE 0640

static _Atomic int log_level = TG_LOG_INFO;
static _Atomic int log_fd = STDERR_FILENO;
static char *log_path;
static _Thread_local char thread_name[THREAD_NAME_MAX] = "main";

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void tg_log_set_level(enum tg_log_level level)
{
    atomic_store(&log_level, (int)level);
}

bool tg_log_enabled(enum tg_log_level level)
{
    return (int)level >= atomic_load_explicit(&log_level, memory_order_relaxed);
}

void tg_log_set_thread_name(const char *name)
{
    snprintf(thread_name, sizeof(thread_name), "%s", name);
}

static int open_log_file(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, FILE_MODE);
}

/* The old descriptor is closed only after the new one is in place; a
 * thread that loaded the old value may still write to it once, which is
 * harmless because we dup2 over it instead of closing it. */
static int install_fd(int fd)
{
    int old = atomic_load(&log_fd);
    if (old == STDERR_FILENO || fd == STDERR_FILENO) {
        atomic_store(&log_fd, fd);
        if (old != STDERR_FILENO)
            close(old);
        return 0;
    }
    if (dup2(fd, old) < 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

int tg_log_open(const char *path)
{
    if (path == NULL) {
        free(log_path);
        log_path = NULL;
        return install_fd(STDERR_FILENO);
    }
    int fd = open_log_file(path);
    if (fd < 0)
        return -1;
    char *copy = strdup(path);
    if (copy == NULL) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    free(log_path);
    log_path = copy;
    return install_fd(fd);
}

int tg_log_reopen(void)
{
    if (log_path == NULL)
        return 0;
    int fd = open_log_file(log_path);
    if (fd < 0)
        return -1;
    return install_fd(fd);
}

void tg_vlog(enum tg_log_level level, const char *fmt, va_list ap)
{
    if ((int)level < atomic_load(&log_level))
        return;
    char line[LOG_LINE_MAX];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ [%s] %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), level_names[level], thread_name);
    if (n < 0)
        return;
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    /* Best effort: a failing error log must not take the gateway down. */
    ssize_t w = write(atomic_load(&log_fd), line, len);
    (void)w;
}

void tg_log(enum tg_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tg_vlog(level, fmt, ap);
    va_end(ap);
}

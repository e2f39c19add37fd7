/* Rate-limited fault notes and down/up states (issue 23, item 6: a dead
 * backend wrote two error-log lines per request). Driven by a fake clock;
 * the lines are read back from a log file. */
#include "../../src/faultlog.c"

#include <stdlib.h>
#include <unistd.h>

#include "test.h"

static double fake_now = 1000.0;

static double fake_clock(void)
{
    return fake_now;
}

static char logpath[64];

/* Everything logged since the last call. */
static char *take_log(void)
{
    static char buf[65536];
    FILE *f = fopen(logpath, "r");
    size_t n = f != NULL ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f != NULL)
        fclose(f);
    buf[n] = '\0';
    if (truncate(logpath, 0) < 0)
        buf[0] = '\0';
    return buf;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static int lines(const char *s)
{
    return count(s, "\n");
}

TEST(first_note_at_once_then_counted_then_one_summary)
{
    take_log();
    tg_faultlog_note(TG_LOG_ERROR, "upstream app", "requests failed", "request %d: refused", 1);
    char *log = take_log();
    CHECK_EQ_INT(lines(log), 1);
    CHECK(strstr(log, "[error]") != NULL && strstr(log, "upstream app: request 1: refused"));
    for (int i = 2; i <= 500; i++) {
        fake_now += 0.01;
        tg_faultlog_note(TG_LOG_ERROR, "upstream app", "requests failed", "request %d: refused", i);
    }
    tg_faultlog_tick(false); /* 5 s after the first line: not yet */
    CHECK_EQ_INT(lines(take_log()), 0);
    fake_now += 5.1;
    tg_faultlog_tick(false);
    log = take_log();
    CHECK_EQ_INT(lines(log), 1);
    CHECK(strstr(log, "upstream app: 499 more requests failed in the last 10 s "
                      "(last: request 500: refused)") != NULL);
    tg_faultlog_tick(false); /* nothing more pending */
    CHECK_EQ_INT(lines(take_log()), 0);
    /* Within the interval after the summary: counted again, not logged. */
    fake_now += 1.0;
    tg_faultlog_note(TG_LOG_ERROR, "upstream app", "requests failed", "request 501: refused");
    CHECK_EQ_INT(lines(take_log()), 0);
    fake_now += 9.5;
    tg_faultlog_tick(false);
    CHECK(strstr(take_log(), "upstream app: 1 more requests failed") != NULL);
    /* Quiet for a whole interval: the next one is logged at once again. */
    fake_now += 11.0;
    tg_faultlog_note(TG_LOG_ERROR, "upstream app", "requests failed", "request 502: refused");
    CHECK(strstr(take_log(), "upstream app: request 502: refused") != NULL);
    fake_now += 100.0;
}

TEST(subjects_and_kinds_are_separate)
{
    take_log();
    tg_faultlog_note(TG_LOG_ERROR, "upstream a", "requests failed", "x");
    tg_faultlog_note(TG_LOG_ERROR, "upstream b", "requests failed", "y");
    tg_faultlog_note(TG_LOG_INFO, "upstream a", "requests retried", "z");
    char *log = take_log();
    CHECK_EQ_INT(lines(log), 3);
    CHECK(strstr(log, "[info]") != NULL && strstr(log, "upstream a: z") != NULL);
    fake_now += 100.0;
}

TEST(counted_notes_are_logged_at_debug)
{
    take_log();
    tg_log_set_level(TG_LOG_DEBUG);
    for (int i = 0; i < 10; i++)
        tg_faultlog_note(TG_LOG_WARN, "redis", "faults", "fault %d", i);
    char *log = take_log();
    CHECK_EQ_INT(lines(log), 10);
    CHECK_EQ_INT(count(log, "[warn]"), 1);
    CHECK_EQ_INT(count(log, "[debug]"), 9);
    CHECK(strstr(log, "redis: fault 9") != NULL);
    tg_log_set_level(TG_LOG_INFO);
    fake_now += 100.0;
    tg_faultlog_tick(false);
    CHECK(strstr(take_log(), "redis: 9 more faults in the last 100 s") != NULL);
    fake_now += 100.0;
}

TEST(flush_at_exit_writes_what_is_pending)
{
    take_log();
    tg_faultlog_note(TG_LOG_ERROR, "tenant directory", "requests failed", "a");
    tg_faultlog_note(TG_LOG_ERROR, "tenant directory", "requests failed", "b");
    fake_now += 2.0;
    tg_faultlog_tick(false);
    CHECK_EQ_INT(lines(take_log()), 1); /* the first only */
    tg_faultlog_tick(true);
    CHECK(strstr(take_log(), "tenant directory: 1 more requests failed in the last 2 s (last: b)"));
    fake_now += 100.0;
}

TEST(full_table_shares_one_entry)
{
    take_log();
    char subject[32];
    /* Every entry pending: the rest go to "other faults". */
    for (int i = 0; i < ENTRIES + 50; i++) {
        snprintf(subject, sizeof(subject), "upstream t%d", i);
        tg_faultlog_note(TG_LOG_ERROR, subject, "requests failed", "first");
        tg_faultlog_note(TG_LOG_ERROR, subject, "requests failed", "second");
    }
    /* A server going down now cannot be tracked: its change is still
     * said (by each caller), its recovery cannot be. */
    CHECK(tg_faultlog_set_down("server 10.9.9.9:80", 3));
    CHECK(tg_faultlog_set_down("server 10.9.9.9:80", 3));
    double down_s;
    unsigned long failed;
    CHECK(!tg_faultlog_set_up("server 10.9.9.9:80", &down_s, &failed));
    char *log = take_log();
    CHECK_EQ_INT(lines(log), ENTRIES + 1);
    CHECK(strstr(log, "upstream t0: first") != NULL);
    CHECK(strstr(log, "upstream t299: first") == NULL);
    fake_now += 10.2;
    tg_faultlog_tick(false);
    log = take_log();
    CHECK_EQ_INT(lines(log), ENTRIES + 1);
    CHECK(strstr(log, "other faults: 99 more faults in the last 10 s (last: upstream t305: "
                      "second)") != NULL);
    /* Their intervals over, the entries go to new subjects. */
    fake_now += 10.2;
    tg_faultlog_note(TG_LOG_ERROR, "upstream new", "requests failed", "hello");
    CHECK(strstr(take_log(), "upstream new: hello") != NULL);
    fake_now += 100.0;
}

TEST(down_and_up_once_per_change)
{
    take_log();
    unsigned long gen = tg_faultlog_down_gen();
    CHECK(!tg_faultlog_any_down());
    double down_s = 0;
    unsigned long failed = 0;
    CHECK(!tg_faultlog_set_up("server 10.0.0.5:80", &down_s, &failed)); /* never down */
    tg_faultlog_count_down("server 10.0.0.5:80");                       /* up: not counted */
    CHECK(tg_faultlog_set_down("server 10.0.0.5:80", 3));
    CHECK(tg_faultlog_any_down());
    CHECK(tg_faultlog_down_gen() != gen);
    gen = tg_faultlog_down_gen();
    /* Another worker gets there too: no second change. */
    CHECK(!tg_faultlog_set_down("server 10.0.0.5:80", 3));
    CHECK_EQ_INT(tg_faultlog_down_gen(), gen);
    for (int i = 0; i < 10; i++)
        tg_faultlog_count_down("server 10.0.0.5:80");
    tg_faultlog_count_down("server 10.0.0.6:80"); /* up: nothing */
    fake_now += 12.5;
    CHECK(tg_faultlog_set_up("server 10.0.0.5:80", &down_s, &failed));
    CHECK(down_s > 12.4 && down_s < 12.6);
    CHECK_EQ_INT(failed, 3 + 1 + 10);
    CHECK(!tg_faultlog_any_down());
    CHECK(!tg_faultlog_set_up("server 10.0.0.5:80", &down_s, &failed)); /* once */
    CHECK(tg_faultlog_set_down("server 10.0.0.5:80", 1));               /* flaps */
    CHECK(tg_faultlog_set_up("server 10.0.0.5:80", &down_s, &failed));
    CHECK_EQ_INT(failed, 1);
    CHECK_EQ_INT(lines(take_log()), 0); /* the callers word the lines */
}

int main(void)
{
    snprintf(logpath, sizeof(logpath), "/tmp/tg_test_faultlog.%d", (int)getpid());
    if (tg_log_open(logpath) < 0) {
        perror(logpath);
        return 1;
    }
    clock_now = fake_clock;
    RUN(first_note_at_once_then_counted_then_one_summary);
    RUN(subjects_and_kinds_are_separate);
    RUN(counted_notes_are_logged_at_debug);
    RUN(flush_at_exit_writes_what_is_pending);
    RUN(full_table_shares_one_entry);
    RUN(down_and_up_once_per_change);
    tg_log_open(NULL);
    unlink(logpath);
    return TEST_SUMMARY();
}

/* Faults that can repeat for every request (a dead backend, a Redis that
 * does not answer, a client flooding us), kept to a few error-log lines.
 *
 * Two tools, both shared by every thread of the process:
 *
 * - Notes, for events: per subject ("upstream app") and kind ("requests
 *   failed"), the first note after a quiet spell is logged at once, in
 *   full; the ones within TG_FAULTLOG_EVERY_S of the last line are counted
 *   (and logged in full at level debug), and tg_faultlog_tick writes one
 *   line for them: "upstream app: 1234 more requests failed in the last
 *   10 s (last: ...)". At most one line per subject and kind per interval.
 *
 * - States, for things that go down and come back (an upstream server):
 *   the caller logs the change when tg_faultlog_set_down or
 *   tg_faultlog_set_up says this call made it; failures are counted while
 *   down, for the line that says it is back.
 *
 * Subjects are bounded (a fixed table): past it, notes share one
 * "other faults" entry, and a key that goes down is not tracked (its
 * change is logged, its recovery is not). Nothing here is on the path of
 * a request that succeeds. */
#ifndef TG_FAULTLOG_H
#define TG_FAULTLOG_H

#include <stdbool.h>

#include "log.h"

#define TG_FAULTLOG_EVERY_S 10     /* at most one line per subject and kind */
#define TG_FAULTLOG_SUBJECT_MAX 96 /* longer subjects are cut */

/* Notes one fault of `subject` (copied; cut at TG_FAULTLOG_SUBJECT_MAX) of kind `counted`
 * (a string literal, plural: "requests failed"): logs "SUBJECT: DETAIL" at
 * `level` now, or counts it for the next summary at `level` (then logs it
 * at debug). Any thread. */
void tg_faultlog_note(enum tg_log_level level, const char *subject, const char *counted,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Writes the summaries that are due (all pending ones when `all`, at
 * exit). Any thread; workers call it once a second. */
void tg_faultlog_tick(bool all);

/* Marks `key` down. When it was up, its failures start at `initial` and
 * this returns true: the caller logs the change. When it was already
 * down, one more failure is counted and this returns false. With the
 * table full the key is not tracked: true each time (no change is lost;
 * call it once per outage, and tg_faultlog_count_down for the rest). Any
 * thread. */
bool tg_faultlog_set_down(const char *key, unsigned long initial);

/* Counts one failure against `key` when it is down; nothing otherwise. */
void tg_faultlog_count_down(const char *key);

/* Marks `key` up. When it was down, returns true with how long (seconds)
 * and the failures counted meanwhile: the caller logs the change. Any
 * thread. */
bool tg_faultlog_set_up(const char *key, double *down_s, unsigned long *failures);

/* Changes each time any key goes down (0 until one does): a caller that
 * saw the same value at its last success need not ask tg_faultlog_set_up
 * again. Lock-free. */
unsigned long tg_faultlog_down_gen(void);

/* Whether any key is down now. Lock-free. */
bool tg_faultlog_any_down(void);

#endif

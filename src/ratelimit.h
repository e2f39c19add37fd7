/* Rate limiting: the GCRA core and the store interface.
 *
 * A policy is a token bucket described by its emission interval (the time
 * one token takes to come back: 60s/5 for "5/m") and its burst (capacity).
 * GCRA keeps one number per key, the theoretical arrival time (TAT), and
 * decides with integer arithmetic on a monotonic clock in nanoseconds. The
 * core below is pure: tests drive it with any clock. */
#ifndef TG_RATELIMIT_H
#define TG_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tg_ratelimit_params {
    int64_t interval_ns; /* emission interval: period / count, >= 1 */
    int64_t burst;       /* bucket capacity in tokens, >= 1 */
    int64_t delay;       /* excess requests that may be delayed instead of
                            refused (nginx's burst/delay), >= 0 */
};

struct tg_ratelimit_result {
    bool allowed;
    int64_t remaining;      /* tokens left after this decision, 0..burst */
    int64_t retry_after_ns; /* when refused: until a request of the same cost
                               would pass (INT64_MAX: never, its cost exceeds
                               burst + delay, as capped below); 0 if allowed */
    int64_t reset_ns;       /* until the bucket is full again */
    int64_t delay_ns;       /* when allowed through `delay`: hold it this long */
    bool overflow;          /* local store: the key had no room and was decided
                               against its class's overflow bucket (see
                               tg_ratelimit_local_take); false elsewhere */
    bool store_failed;      /* Redis Cluster: this key's slot could not be
                               decided (its node failed) while others were;
                               the other fields are zero and the caller
                               applies on_error to it alone */
};

/* burst * interval (and (burst + delay) * interval) is capped at this many
 * nanoseconds (about 146 years), so that a TAT always fits in int64: a
 * policy asking for more behaves as if its burst (then its delay) were
 * floor(TG_RATELIMIT_MAX_TOLERANCE_NS / interval_ns) tokens. Only absurd
 * policies reach it (2^31 tokens at one per day is 5.9 million years of
 * credit); config validation may reject them. The cap only ever lowers
 * what is granted. */
#define TG_RATELIMIT_MAX_TOLERANCE_NS (INT64_C(1) << 62)

/* Largest count tg_ratelimit_parse_rate accepts: "1000000000/s" is one
 * token per nanosecond, the finest the clock can express. */
#define TG_RATELIMIT_COUNT_MAX INT64_C(1000000000)

/* Decides whether `cost` tokens may be spent at `now_ns`, and spends them
 * (advances *tat) if so. *tat is 0 for a key never seen. A request costing
 * more than burst + delay is never allowed. The clock may jump backwards:
 * the result is then conservative (never more tokens than the bucket held).
 * Pure; no overflow for any interval up to one day and burst up to 2^31.
 *
 * With I = interval_ns, tat' = max(*tat, now_ns) + cost * I:
 *   - tat' - now <= burst * I: allowed, delay_ns = 0 (so `burst` requests
 *     of cost 1 pass at one instant on a fresh key);
 *   - tat' - now <= (burst + delay) * I: allowed, spent, and delay_ns =
 *     tat' - now - burst * I, the wait after which the request conforms
 *     (the caller holds it that long, as nginx's burst without nodelay);
 *   - otherwise refused, nothing spent; retry_after_ns = tat' - now -
 *     (burst + delay) * I: waiting exactly that long lets the same request
 *     pass, 1 ns less does not.
 * remaining = floor((burst * I - (t - now)) / I) clamped to 0..burst, where
 * t is the TAT after the decision (tat' if allowed, else max(*tat, now));
 * reset_ns = max(t - now, 0). See TG_RATELIMIT_MAX_TOLERANCE_NS for the
 * one cap on burst * I. Preconditions (config validation guarantees them):
 * interval_ns >= 1, burst >= 1, delay >= 0, cost >= 0, now_ns >= 0. */
bool tg_ratelimit_gcra(int64_t *tat, int64_t now_ns, const struct tg_ratelimit_params *p,
                       int64_t cost, struct tg_ratelimit_result *out);

/* The same decision without spending: what would a request of `cost` get. */
void tg_ratelimit_gcra_peek(int64_t tat, int64_t now_ns, const struct tg_ratelimit_params *p,
                            int64_t cost, struct tg_ratelimit_result *out);

/* Gives back a spend of `cost` tokens (the undo of an allowed
 * tg_ratelimit_gcra of that cost): if *tat <= now_ns nothing (the bucket
 * is already full), else *tat = max(*tat - cost * interval_ns, now_ns), so
 * a refund never makes the bucket more than full. Spends add up and a
 * refund subtracts exactly what its take added: a take then its refund at
 * the same instant restore the TAT, and over any window the takes that
 * were not refunded get at most burst + delay + window / interval tokens,
 * as if the refunded ones had never been made. The one difference from
 * "never made": if the bucket would have been full while the refunded take
 * was outstanding, the refill it earned meanwhile (at most `cost` tokens,
 * never beyond full) is kept. Pure; 128-bit products as in
 * tg_ratelimit_gcra. Preconditions as there (interval_ns >= 1, cost >= 0,
 * now_ns >= 0); only interval_ns is read. */
void tg_ratelimit_gcra_refund(int64_t *tat, int64_t now_ns, const struct tg_ratelimit_params *p,
                              int64_t cost);

/* True when the bucket behind `tat` is full again at `now_ns`: the key then
 * carries no information and may be forgotten. */
bool tg_ratelimit_gcra_idle(int64_t tat, int64_t now_ns);

/* Parses "10/s", "5/m", "1000/h", "86400/d" (count/unit, count >= 1) into an
 * emission interval. Returns 0, or -1 if malformed. `period_s` receives the
 * window in seconds (for the RateLimit-Policy header's w=).
 * The syntax is strict: decimal digits, '/', one of s m h d, nothing else
 * (no spaces, signs or long unit names); count is at most
 * TG_RATELIMIT_COUNT_MAX. The interval is period / count rounded up, so the
 * rate is never faster than asked ("3/s" gives 333333334 ns). Outputs are
 * written only on success. */
int tg_ratelimit_parse_rate(const char *s, int64_t *interval_ns, int64_t *count, int64_t *period_s);

/* ---- local store: one table shared by all worker threads ---------------- */

/* Longest key the local store takes. Keys up to 38 bytes are stored inline
 * in a 64-byte entry, longer ones in a heap copy; this bounds the copies.
 * An op with a longer key is refused (retry_after_ns = INT64_MAX) and
 * spends nothing: build keys from bounded parts, or hash them. */
#define TG_RATELIMIT_LOCAL_KEY_MAX 512

/* Most ops one take or peek may carry (policies on one request). A batch
 * with more is refused whole, as above. */
#define TG_RATELIMIT_LOCAL_MAX_OPS 16

/* Overflow buckets per shard: classes beyond this share them (cls % 64). */
#define TG_RATELIMIT_LOCAL_OVERFLOW_CLASSES 64

/* One key's decision in a batch. The key bytes are borrowed for the call. */
struct tg_ratelimit_op {
    const void *key;
    size_t keylen;
    const struct tg_ratelimit_params *params;
    int64_t cost;
    struct tg_ratelimit_result result; /* out (refund also reads .overflow) */
    uint16_t cls;                      /* the policy's class (its index): new keys that find no
                     room share the class's overflow bucket; 0 by default */
};

struct tg_ratelimit_local;

/* Creates a table bounded to max_keys keys, split into `shards` (a power
 * of two, at most 65536) each with its own lock and a cap of
 * max_keys / shards keys (fewer shards are used if max_keys < shards).
 * Memory: about 68 bytes per key at capacity for keys up to 38 bytes, plus
 * 512 bytes of overflow buckets per shard, plus
 * the heap copies of longer keys; the entry array grows on demand up to the
 * cap and is not given back. The hash is keyed with a random seed drawn
 * here, so clients cannot aim keys at one chain. Returns NULL on allocation
 * failure or invalid arguments (max_keys 0, shards not a power of two).
 * Call from one thread; free only when no other thread uses the table. */
struct tg_ratelimit_local *tg_ratelimit_local_new(size_t max_keys, unsigned shards);
void tg_ratelimit_local_free(struct tg_ratelimit_local *t);

/* Decides all ops atomically: either every op is allowed and all spend, or
 * none spends (each op's result says what it would have got). Ops are
 * decided in order and a key named twice pays twice: the second op sees
 * the first one's spend. Locks the shards involved in a fixed order, so it
 * never deadlocks. Returns true if all were allowed (true for nops 0).
 * Keys are compared as bytes; each op's params may differ. A key whose
 * bucket is full after the decision (refused on a new key, cost 0) is not
 * stored. If a heap copy of a long new key cannot be allocated, that key
 * is not remembered either.
 *
 * Memory stays bounded whatever the traffic. Each entry remembers the
 * size of the bucket its last spend used (burst * interval and (burst - 1)
 * * interval, to about a millisecond), so that its fullness is judged
 * against its own policy: an entry is LOCKED while it holds less than one
 * token.
 * When a shard is full, a new key that needs an entry makes room: a clock
 * hand sweeps 16 to 64 entries (on to 64 while none is idle) and drops
 * every idle one seen (bucket full again: it carries no information), or
 * if none is idle the swept entry that is not locked and has the largest
 * fraction of its tokens left, whatever its policy. A locked entry is
 * never dropped. If every swept entry is locked, nothing is dropped and
 * the new key is not stored: it is decided against an OVERFLOW bucket
 * shared by all new keys of its class in that shard (class cls % 64; one
 * TAT per class and shard, decided with each op's own params), and its
 * result says so (result.overflow). So under a flood that fills the table
 * with locked keys, the locked keys stay locked (a flood of new keys
 * cannot reset a login lockout), and the new clients of a policy are
 * limited together, to one bucket of that policy per shard, until entries
 * unlock or go idle. Under pressure an unlocked active key can still be
 * forgotten and start again with a full bucket: the price of the bound.
 * The sweep is approximate (like Redis's sampled LRU) to keep an insert
 * O(1). In a batch, an entry the batch names is never dropped to make
 * room for another of its keys; room made for a batch that is then
 * refused stays free. Thread-safe. */
bool tg_ratelimit_local_take(struct tg_ratelimit_local *t, struct tg_ratelimit_op *ops, size_t nops,
                             int64_t now_ns);

/* Fills ops[i].result as take would (including a repeated key seeing the
 * earlier op's spend, and a new key that would find no room seeing its
 * overflow bucket), without spending, storing or evicting. Thread-safe. */
void tg_ratelimit_local_peek(struct tg_ratelimit_local *t, struct tg_ratelimit_op *ops, size_t nops,
                             int64_t now_ns);

/* Gives back spends (the undo of an allowed take, e.g. a failure budget
 * reserved before forwarding and returned when the answer was not a
 * failure). For each op in turn: if op->result.overflow is set (pass the
 * take's result along when the take was decided against the overflow
 * bucket), op->cost is refunded to the overflow bucket of op->cls in the
 * key's shard; otherwise, if the key is held, to the key under op->params
 * (tg_ratelimit_gcra_refund), and an entry whose bucket is then full is
 * removed. A key not held is left alone (it was evicted, reset, or never
 * stored: its bucket is already full). Each op's result is then what a
 * cost-0 peek of that bucket says (overflow set as it was). Ops are
 * independent (no all-or-nothing); a key named twice is refunded twice.
 * Ops with a key longer than TG_RATELIMIT_LOCAL_KEY_MAX are skipped.
 * Thread-safe. */
void tg_ratelimit_local_refund(struct tg_ratelimit_local *t, struct tg_ratelimit_op *ops,
                               size_t nops, int64_t now_ns);

/* Forgets a key (the bucket is full again). Returns true if it existed.
 * Thread-safe. */
bool tg_ratelimit_local_reset(struct tg_ratelimit_local *t, const void *key, size_t keylen);

/* Keys currently held, and bytes used by the table: buckets, allocated
 * entries, heap key copies and the fixed parts, not malloc's own overhead
 * (for docs, metrics and tests). Thread-safe; they lock each shard in turn,
 * so the total is not a snapshot under concurrent takes. */
size_t tg_ratelimit_local_count(struct tg_ratelimit_local *t);
size_t tg_ratelimit_local_memory(struct tg_ratelimit_local *t);

#endif

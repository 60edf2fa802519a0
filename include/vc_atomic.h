/* vc_atomic.h: the few atomic operations the engine needs, with the memory order
 * each one must have.  GCC/Clang __atomic builtins; no locks.
 */
#ifndef VC_ATOMIC_H
#define VC_ATOMIC_H

#include <stddef.h>
#include <stdint.h>

/* Publishing a pointer (skip-list link, version-chain head): the object's fields are
 * written first, so the store must be RELEASE and the reader's load ACQUIRE; then a
 * reader that sees the pointer also sees the initialised object. */
static inline void *vc_load_ptr(void *const *p) { return __atomic_load_n((void **)p, __ATOMIC_ACQUIRE); }
static inline void vc_store_ptr(void **p, void *v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* Timestamps: visible_ts is stored RELEASE after the versions of that commit are
 * installed, and loaded ACQUIRE when a snapshot begins, so the snapshot sees them. */
static inline uint64_t vc_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void vc_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* Counters (statistics): RELAXED is enough where nothing else is ordered by them. */
static inline uint64_t vc_add_u64_relaxed(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
static inline int vc_load_int_relaxed(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void vc_store_int_relaxed(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

/* Lock-free skip-list links and version-chain heads: a CAS publishes a new node or
 * version, so it must be RELEASE on success (its fields are written before) and ACQUIRE
 * on failure (the caller re-reads the new head and follows it). */
static inline int vc_cas_ptr(void **p, void *expected, void *desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* Arena bump allocation: only the returned range matters, nothing is published by it.
 * The load is a writer's look at where the next allocations will go (to prefetch them). */
static inline size_t vc_fetch_add_size(size_t *p, size_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline size_t vc_load_size_relaxed(const size_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* Freeze handshake between writers and the checkpointer (Dekker style): a writer
 * increments `inflight` then reads `frozen`; the checkpointer sets `frozen` then reads
 * `inflight`.  Both sides need SEQ_CST so neither read can pass the other's write. */
static inline int vc_add_int_sc(int *p, int v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline int vc_load_int_sc(const int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void vc_store_int_sc(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

/* Raise *p to at least v with RELAXED order: statistics and bounds only. */
static inline void vc_max_u64_relaxed(uint64_t *p, uint64_t v)
{
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

/* Lower *p to at most v.  A skip-list link's key-prefix bound (vc_link in _mvcc.pxd): a
 * writer lowers it to its new node's prefix before the CAS that links the node (RELEASE),
 * so a reader that loads the link ACQUIRE and the bound after it reads a bound no greater
 * than the prefix of the node it got.  The bound itself publishes nothing: RELAXED. */
static inline void vc_min_u64_relaxed(uint64_t *p, uint64_t v)
{
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (cur > v && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

static inline int vc_cas_int(int *p, int expected, int desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

static inline uint64_t vc_fetch_add_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
/* Counters that also go down (versions held by a memtable as the GC prunes them): RELAXED. */
static inline uint64_t vc_sub_u64_relaxed(uint64_t *p, uint64_t v) { return __atomic_sub_fetch(p, v, __ATOMIC_RELAXED); }

/* A shared budget (page-cache pins that readers keep past a lookup): take one unit unless
 * `limit` are out; given back with vc_sub_u64_relaxed.  RELAXED: only the count matters,
 * nothing is published by it, and a brief overshoot between the add and the undo is
 * harmless. */
static inline int vc_budget_take(uint64_t *p, uint64_t limit)
{
    if (__atomic_add_fetch(p, 1, __ATOMIC_RELAXED) <= limit)
        return 1;
    __atomic_sub_fetch(p, 1, __ATOMIC_RELAXED);
    return 0;
}

/* Seqlock around the published view: a publisher makes the sequence odd, writes, makes
 * it even again; a reader copies the fields between two equal, even readings.  All
 * SEQ_CST: the begin path pairs the second reading with its slot store (Dekker style)
 * against a publisher that bumps the sequence and then scans the slots. */
static inline uint64_t vc_load_u64_sc(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void vc_store_u64_sc(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline void vc_seq_bump(uint64_t *p) { __atomic_fetch_add(p, 1, __ATOMIC_SEQ_CST); }
/* Racy field reads validated by the seqlock: RELAXED atomics keep them well defined.
 * vc_fence_acquire goes between those reads and the closing sequence read, so none of
 * them can be satisfied after it. */
static inline void vc_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
/* The writer's side of such a sequence word when the data is written by plain stores (a
 * page read into a cache frame): the word's new value, then this fence, then the data, so
 * a reader whose data reads see any new byte also sees the new word after its own
 * vc_fence_acquire. */
static inline void vc_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
/* A store followed by a load of another word that must not be satisfied before the store
 * is visible (the GC unlinks dead versions, then reads visible_ts to tag them: a reader
 * that can still reach them read its snapshot before it loaded the old link). */
static inline void vc_fence_sc(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline uint32_t vc_load_u32_relaxed(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint64_t vc_load_u64_relaxed(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void *vc_load_ptr_relaxed(void *const *p) { return __atomic_load_n((void **)p, __ATOMIC_RELAXED); }
static inline void vc_store_u32_relaxed(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void vc_store_u64_relaxed(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void vc_store_ptr_relaxed(void **p, void *v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

/* Page-cache frames: one 64-bit state word per frame, (page_id << 32) | pins, with
 * VC_FRAME_EVICTING in the low half while the frame is being emptied or refilled.  A hit
 * pins with a CAS on the whole word, so it can never pin a frame that changed page:
 * ACQUIRE on success (the page bytes were published before the word), and the refill
 * publishes the word with RELEASE after writing the bytes.  Unpin is a RELEASE decrement
 * so the evictor that reads pins == 0 (ACQUIRE) knows the reader is done with the bytes. */
#define VC_FRAME_EVICTING 0x80000000u
static inline uint64_t vc_frame_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline int vc_frame_cas(uint64_t *p, uint64_t expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
static inline void vc_frame_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void vc_frame_unpin(uint64_t *p) { __atomic_fetch_sub(p, 1, __ATOMIC_RELEASE); }
/* One more pin on a frame the caller already holds pinned: the count is above zero, so no
 * evictor's CAS (which expects zero pins) can succeed meanwhile, and the caller's first pin
 * already ordered the page bytes before its reads.  RELAXED is enough. */
static inline void vc_frame_repin(uint64_t *p) { __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
static inline void vc_frame_mark_evicting(uint64_t *p) { __atomic_fetch_or(p, (uint64_t)VC_FRAME_EVICTING, __ATOMIC_ACQ_REL); }
static inline uint32_t vc_load_u32_acquire(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void vc_store_u32_release(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint8_t vc_load_u8_relaxed(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void vc_store_u8_relaxed(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

/* Sleeping until a 32-bit word changes, without a mutex to take back on waking (group
 * commit: the commits a flush covered wake and return at once instead of queueing on the
 * log's lock).  The waker stores the new value (RELEASE, after the state it announces)
 * and then wakes every sleeper; a sleeper returns when the word differs from `seen`, or
 * spuriously, so it re-checks its own condition.  Linux: a private futex.  Elsewhere: a
 * yield loop. */
#if defined(__linux__)
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
static inline void vc_wait_u32(uint32_t *p, uint32_t seen)
{
    if (__atomic_load_n(p, __ATOMIC_ACQUIRE) == seen)
        syscall(SYS_futex, p, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}
static inline void vc_wake_all_u32(uint32_t *p)
{
    syscall(SYS_futex, p, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
#include <sched.h>
static inline void vc_wait_u32(uint32_t *p, uint32_t seen)
{
    while (__atomic_load_n(p, __ATOMIC_ACQUIRE) == seen)
        sched_yield();
}
static inline void vc_wake_all_u32(uint32_t *p) { (void)p; }
#endif

#endif

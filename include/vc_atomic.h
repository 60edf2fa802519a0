/* vc_atomic.h: the few atomic operations the engine needs, with the memory order
 * each one must have.  GCC/Clang __atomic builtins; no locks.
 */
#ifndef VC_ATOMIC_H
#define VC_ATOMIC_H

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

/* Raise *p to at least v (commit-order publication of visible_ts).  ACQ_REL: the
 * winner's installs must be visible to whoever reads the new value. */
static inline void vc_max_u64(uint64_t *p, uint64_t v)
{
    uint64_t cur = __atomic_load_n(p, __ATOMIC_ACQUIRE);
    while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    }
}

/* Counters (statistics, pins): RELAXED is enough where nothing else is ordered by them;
 * pin counts use ACQ_REL so an evictor that reads 0 sees the reader's last access done. */
static inline uint64_t vc_add_u64_relaxed(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
static inline int32_t vc_add_i32(int32_t *p, int32_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline int32_t vc_load_i32(const int32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline int vc_load_int_relaxed(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void vc_store_int_relaxed(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

#endif

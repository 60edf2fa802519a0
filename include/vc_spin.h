/* vc_spin.h: bounded spinning for the short waits of a durable commit.
 *
 * A durable commit waits for things that usually come within a flush's time (a few
 * hundred microseconds at most): the flush that covers it, the other committers' records
 * (a group's leader), and the GIL back from the committer ahead of it.  Sleeping on each
 * and being woken costs a thread switch, and a thread woken on a CPU that went idle
 * starts tens of microseconds later on a virtual machine (the idle vCPU has halted).
 * With several committers those wake-ups come one after another, between flushes, and
 * they were most of a cycle.  A waiter here spins instead, for a bounded time: a few
 * PAUSEs, then sched_yield, so that any thread that can run on its CPU (the GIL's holder,
 * the flush's leader) runs at once, and the CPU does not halt.  Past the bound the caller
 * sleeps as before (or, for the GIL, takes its turn in CPython's queue).
 */
#ifndef VC_SPIN_H
#define VC_SPIN_H

#include <stdint.h>
#include <sched.h>
#include "vc_common.h"

/* PAUSEs between two looks at the clock (and two yields): about a microsecond */
#define VC_SPIN_PAUSES 32

static inline void vc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Between two rounds of VC_SPIN_PAUSES looks: 0 once the monotonic clock has reached
 * `deadline` (the caller stops spinning), else the CPU is offered to any other thread
 * that can run on it, and 1. */
static inline int vc_spin_again(uint64_t deadline)
{
    if (vc_now_ns() >= deadline)
        return 0;
    sched_yield();
    return 1;
}

/* Wait until *p differs from `seen`, at most max_ns: 1 when it did, 0 when the time ran
 * out.  ACQUIRE: what the writer stored before its RELEASE store of *p (the flush's
 * result) is visible once the change is. */
static inline int vc_spin_u32_change(const uint32_t *p, uint32_t seen, uint64_t max_ns)
{
    uint64_t deadline;
    int i;
    if (__atomic_load_n(p, __ATOMIC_ACQUIRE) != seen)
        return 1;
    if (max_ns == 0)
        return 0;
    deadline = vc_now_ns() + max_ns;
    do {
        for (i = 0; i < VC_SPIN_PAUSES; i++) {
            if (__atomic_load_n(p, __ATOMIC_ACQUIRE) != seen)
                return 1;
            vc_cpu_relax();
        }
    } while (vc_spin_again(deadline));
    return 0;
}

/* Wait until *p >= want, until the monotonic clock reads `deadline`: 1 when it did, 0
 * when the time ran out.  RELAXED: the caller takes the lock that guards *p (and what
 * it counts) before acting on it; this only says when to. */
static inline int vc_spin_u64_reach(const uint64_t *p, uint64_t want, uint64_t deadline)
{
    int i;
    do {
        for (i = 0; i < VC_SPIN_PAUSES; i++) {
            if (__atomic_load_n(p, __ATOMIC_RELAXED) >= want)
                return 1;
            vc_cpu_relax();
        }
    } while (vc_spin_again(deadline));
    return 0;
}

/* The GIL between committing threads.  A durable commit gives the GIL up for its flush
 * and needs it back to return; with several committers, the ones a flush released queue
 * for it in CPython, asleep, and each hand-off wakes one.  `free` says that a committer
 * gave the GIL up and no returning committer has claimed that since: a committer on its
 * way back claims it (and then takes the GIL, most likely free) or spins until another
 * committer gives it up, at most max_ns; then it queues in CPython as before.  A hint
 * only: CPython's GIL decides who runs; other threads and other ways of releasing the GIL
 * do not show here (hence the bound).  One per process, like the GIL. */
typedef struct {
    uint32_t free;
} vc_gil_baton;

/* Just after giving the GIL up.  RELEASE: nothing is published by it, but it must not be
 * seen before the GIL was actually released (which CPython's own locking orders). */
static inline void vc_gil_give(vc_gil_baton *b)
{
    __atomic_store_n(&b->free, 1, __ATOMIC_RELEASE);
}

/* Before taking the GIL back.  The CAS is ACQUIRE so that it orders after the giver's
 * store; one claimant wins each give. */
static inline void vc_gil_claim(vc_gil_baton *b, uint64_t max_ns)
{
    uint32_t one = 1;
    uint64_t deadline;
    int i;
    if (__atomic_compare_exchange_n(&b->free, &one, 0, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return;
    deadline = vc_now_ns() + max_ns;
    do {
        for (i = 0; i < VC_SPIN_PAUSES; i++) {
            one = 1;
            if (__atomic_load_n(&b->free, __ATOMIC_RELAXED) == 1 &&
                __atomic_compare_exchange_n(&b->free, &one, 0, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return;
            vc_cpu_relax();
        }
    } while (vc_spin_again(deadline));
}

#endif

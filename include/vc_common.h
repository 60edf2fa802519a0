/* vc_common.h: status codes and the error record every core function fills.
 *
 * Core functions are `noexcept nogil` and return an int status:
 *   0 (VC_OK) success, 1 (VC_NOTFOUND) a lookup found nothing, -1 failure with
 *   the details written to the caller's vc_err.  The facade (_store.pyx) turns a
 *   vc_err into the matching Python exception in one place.
 */
#ifndef VC_COMMON_H
#define VC_COMMON_H

#include <stdarg.h>
#include <stdio.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

#define VC_OK        0
#define VC_NOTFOUND  1
#define VC_FAIL     (-1)

/* a hint: load the cache line holding p soon (no fault if p is bad) */
#if defined(__GNUC__) || defined(__clang__)
#define vc_prefetch(p) __builtin_prefetch((const void *)(p))
#define vc_prefetch_w(p) __builtin_prefetch((const void *)(p), 1)   /* to be written */
#else
#define vc_prefetch(p) ((void)0)
#define vc_prefetch_w(p) ((void)0)
#endif

/* Timed waits.  The store's condition variables that are waited on with a deadline (the
 * checkpointer's, the log's) count on CLOCK_MONOTONIC, so that a step of the wall clock
 * neither stretches nor cuts a wait; vc_now_ns reads that clock, for deadlines and
 * durations alike. */
static inline uint64_t vc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline int vc_cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t a;
    int rc = pthread_condattr_init(&a);
    if (rc != 0)
        return rc;
    rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

/* commit_ts of a version whose transaction ended without committing it */
#define VC_TS_ABORTED UINT64_MAX

/* vc_err.code values: which exception the facade raises */
#define VC_E_NONE      0
#define VC_E_IO        1   /* OSError: a system call failed (errno kept)        */
#define VC_E_CORRUPT   2   /* CorruptionError: checksum or structure check      */
#define VC_E_NOMEM     3   /* MemoryError                                       */
#define VC_E_CONFLICT  4   /* ConflictError: write-write conflict               */
#define VC_E_LOCKED    5   /* LockedError: directory open elsewhere             */
#define VC_E_READONLY  6   /* ReadOnlyError                                     */
#define VC_E_CLOSED    7   /* ClosedError                                       */
#define VC_E_INVALID   8   /* ValueError: bad argument reaching the core        */
#define VC_E_NOFILE    9   /* FileNotFoundError                                 */

typedef struct vc_err {
    int code;          /* one of VC_E_*; VC_E_NONE when nothing failed */
    int sys_errno;     /* errno for VC_E_IO / VC_E_NOFILE, else 0 */
    char msg[480];     /* human-readable, names the file and page/offset when known */
} vc_err;

static inline void vc_err_clear(vc_err *e) { e->code = 0; e->sys_errno = 0; e->msg[0] = 0; }

/* Record a failure and return VC_FAIL, so callers can `return vc_fail(...)`. */
static inline int vc_fail(vc_err *e, int code, const char *fmt, ...)
{
    va_list ap;
    if (e == NULL) return VC_FAIL;
    if (e->code != VC_E_NONE) return VC_FAIL;   /* keep the first (root) cause */
    e->code = code;
    e->sys_errno = 0;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return VC_FAIL;
}

/* Same, for a failed system call: appends strerror(errnum). */
static inline int vc_fail_errno(vc_err *e, int code, int errnum, const char *fmt, ...)
{
    va_list ap;
    size_t n;
    if (e == NULL || e->code != VC_E_NONE) return VC_FAIL;
    e->code = code;
    e->sys_errno = errnum;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    n = strlen(e->msg);
    snprintf(e->msg + n, sizeof(e->msg) - n, ": %s", strerror(errnum));
    return VC_FAIL;
}

#endif

# Shared C-level declarations: status codes and the error record (include/vc_common.h).
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport realloc, free

cdef extern from "vc_common.h" nogil:
    enum:
        VC_OK
        VC_NOTFOUND
        VC_FAIL
        VC_E_NONE
        VC_E_IO
        VC_E_CORRUPT
        VC_E_NOMEM
        VC_E_CONFLICT
        VC_E_LOCKED
        VC_E_READONLY
        VC_E_CLOSED
        VC_E_INVALID
        VC_E_NOFILE
    const uint64_t VC_TS_ABORTED
    void vc_prefetch(const void* p)     # a hint: load p's cache line soon
    void vc_prefetch_w(const void* p)   # the same, for a line about to be written

    ctypedef struct vc_err:
        int code            # one of VC_E_*; VC_E_NONE while nothing failed
        int sys_errno       # errno for VC_E_IO / VC_E_NOFILE
        char msg[480]       # names the file and page or offset when known

    void vc_err_clear(vc_err* e)
    int vc_fail(vc_err* e, int code, const char* fmt, ...)
    int vc_fail_errno(vc_err* e, int code, int errnum, const char* fmt, ...)

cdef extern from "vc_poison.h" nogil:
    void VC_POISON(const void* p, size_t n)
    void VC_UNPOISON(const void* p, size_t n)

cdef extern from "vc_huge.h" nogil:
    void* vc_huge_alloc(size_t n)
    void* vc_pages_alloc_backed(size_t n)
    void vc_huge_free(void* m, size_t n)
    size_t vc_huge_len(size_t n)

cdef extern from "vc_crc32c.h" nogil:
    uint32_t vc_crc32c(uint32_t crc, const void* buf, size_t length)
    uint32_t vc_crc32c_sw(uint32_t crc, const void* buf, size_t length)
    int vc_crc32c_hw()

cdef extern from "vc_atomic.h" nogil:
    void vc_wait_u32(uint32_t* p, uint32_t seen)
    void vc_wake_all_u32(uint32_t* p)
    void* vc_load_ptr(void* const* p)
    void vc_store_ptr(void** p, void* v)
    uint64_t vc_load_u64(const uint64_t* p)
    void vc_store_u64(uint64_t* p, uint64_t v)
    uint64_t vc_add_u64_relaxed(uint64_t* p, uint64_t v)
    int vc_load_int_relaxed(const int* p)
    void vc_store_int_relaxed(int* p, int v)
    bint vc_cas_ptr(void** p, void* expected, void* desired)
    size_t vc_fetch_add_size(size_t* p, size_t v)
    size_t vc_load_size_relaxed(const size_t* p)
    int vc_add_int_sc(int* p, int v)
    int vc_load_int_sc(const int* p)
    void vc_store_int_sc(int* p, int v)
    void vc_max_u64_relaxed(uint64_t* p, uint64_t v)
    void vc_min_u64_relaxed(uint64_t* p, uint64_t v)
    uint64_t vc_fetch_add_u64(uint64_t* p, uint64_t v)
    uint64_t vc_sub_u64_relaxed(uint64_t* p, uint64_t v)
    bint vc_budget_take(uint64_t* p, uint64_t limit)
    void vc_fence_acquire()
    void vc_fence_sc()
    void vc_fence_release()
    bint vc_cas_int(int* p, int expected, int desired)
    uint64_t vc_load_u64_sc(const uint64_t* p)
    void vc_store_u64_sc(uint64_t* p, uint64_t v)
    void vc_seq_bump(uint64_t* p)
    uint32_t vc_load_u32_relaxed(const uint32_t* p)
    uint64_t vc_load_u64_relaxed(const uint64_t* p)
    void* vc_load_ptr_relaxed(void* const* p)
    void vc_store_u32_relaxed(uint32_t* p, uint32_t v)
    void vc_store_u64_relaxed(uint64_t* p, uint64_t v)
    void vc_store_ptr_relaxed(void** p, void* v)
    const uint32_t VC_FRAME_EVICTING
    uint64_t vc_frame_load(const uint64_t* p)
    bint vc_frame_cas(uint64_t* p, uint64_t expected, uint64_t desired)
    void vc_frame_store(uint64_t* p, uint64_t v)
    void vc_frame_unpin(uint64_t* p)
    void vc_frame_repin(uint64_t* p)
    void vc_frame_mark_evicting(uint64_t* p)
    uint32_t vc_load_u32_acquire(const uint32_t* p)
    void vc_store_u32_release(uint32_t* p, uint32_t v)
    uint8_t vc_load_u8_relaxed(const uint8_t* p)
    void vc_store_u8_relaxed(uint8_t* p, uint8_t v)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_mutex_init(pthread_mutex_t*, const pthread_mutexattr_t*)
    int pthread_mutex_destroy(pthread_mutex_t*)
    int pthread_mutex_lock(pthread_mutex_t*)
    int pthread_mutex_trylock(pthread_mutex_t*)
    int pthread_mutex_unlock(pthread_mutex_t*)
    int pthread_cond_init(pthread_cond_t*, const pthread_condattr_t*)
    int pthread_cond_destroy(pthread_cond_t*)
    int pthread_cond_wait(pthread_cond_t*, pthread_mutex_t*)
    int pthread_cond_broadcast(pthread_cond_t*)
    int pthread_cond_signal(pthread_cond_t*)
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t* thread, const void* attr, void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t thread, void** retval)
    ctypedef struct pthread_rwlock_t:
        pass
    ctypedef struct pthread_rwlockattr_t:
        pass
    int pthread_rwlock_init(pthread_rwlock_t*, const pthread_rwlockattr_t*)
    int pthread_rwlock_destroy(pthread_rwlock_t*)
    int pthread_rwlock_rdlock(pthread_rwlock_t*)
    int pthread_rwlock_wrlock(pthread_rwlock_t*)
    int pthread_rwlock_unlock(pthread_rwlock_t*)

cdef extern from "vc_common.h" nogil:
    uint64_t vc_now_ns()                                # CLOCK_MONOTONIC, in ns
    int vc_cond_init_monotonic(pthread_cond_t* c)       # timed waits on that clock

# Growable array of page ids (free lists, checkpoint bookkeeping).
cdef struct vc_u32vec:
    uint32_t* items     # malloc'ed, capacity cap
    size_t len          # items in use
    size_t cap          # allocated slots

cdef inline int vc_u32vec_push(vc_u32vec* v, uint32_t x) noexcept nogil:
    cdef size_t ncap
    cdef uint32_t* p
    if v.len == v.cap:
        ncap = v.cap * 2 if v.cap else 64
        p = <uint32_t*>realloc(v.items, ncap * sizeof(uint32_t))
        if p == NULL:
            return -1
        v.items = p
        v.cap = ncap
    v.items[v.len] = x
    v.len += 1
    return 0

cdef inline void vc_u32vec_free(vc_u32vec* v) noexcept nogil:
    free(v.items)
    v.items = NULL
    v.len = 0
    v.cap = 0


# Growable byte buffer (values read from overflow pages, log payloads).
cdef struct vc_buf:
    unsigned char* data     # malloc'ed, capacity cap
    size_t len              # bytes in use
    size_t cap

cdef inline int vc_buf_reserve(vc_buf* b, size_t n) noexcept nogil:
    cdef size_t ncap
    cdef unsigned char* p
    if n <= b.cap:
        return 0
    ncap = b.cap * 2 if b.cap else 256
    while ncap < n:
        ncap *= 2
    p = <unsigned char*>realloc(b.data, ncap)
    if p == NULL:
        return -1
    b.data = p
    b.cap = ncap
    return 0

cdef inline void vc_buf_free(vc_buf* b) noexcept nogil:
    free(b.data)
    b.data = NULL
    b.len = 0
    b.cap = 0

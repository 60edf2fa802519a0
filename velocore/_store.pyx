# The facade: Python objects that check arguments, call the nogil core, and turn its
# status codes into exceptions (raise_error is the one place that happens).
import os
import random
import time

from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE,
                            PyBytes_CheckExact)
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyObject_CheckBuffer, PyBUF_SIMPLE
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memset

from velocore._common cimport (vc_err, vc_buf, vc_buf_reserve, vc_buf_free, VC_OK, VC_NOTFOUND,
                               VC_E_NONE, VC_E_IO, VC_E_CORRUPT, VC_E_NOMEM, VC_E_CONFLICT,
                               VC_E_LOCKED, VC_E_READONLY, VC_E_CLOSED, VC_E_INVALID, VC_E_NOFILE,
                               vc_prefetch, vc_load_u64_relaxed, vc_pages_alloc_backed,
                               vc_huge_free, vc_huge_len, vc_crc32c, vc_crc32c_sw, vc_crc32c_hw,
                               pthread_mutex_t, pthread_cond_t, pthread_t, pthread_mutex_init,
                               pthread_mutex_destroy, pthread_mutex_lock, pthread_mutex_unlock,
                               pthread_cond_init, pthread_cond_destroy, pthread_cond_wait,
                               pthread_cond_signal, pthread_create, pthread_join)
from velocore._mvcc cimport (vc_db, vc_txn, vc_iter, vc_db_open, vc_db_close, vc_db_checkpoint,
                             vc_db_check, vc_db_stats, vc_txn_begin, vc_txn_commit, vc_txn_abort,
                             vc_txn_free, vc_txn_get, vc_txn_write, vc_iter_init, vc_iter_next,
                             vc_iter_close, vc_iter_fill_refs, vc_iref, vc_txn_lookup_init, vc_txn_get_lk,
                             VC_PUT, VC_DEL, VC_CHECK, VC_TXN_ACTIVE, VC_GROUP, vc_finger,
                             vc_txn_group_fingers, vc_txn_prefetch_key, vc_txn_savepoint,
                             vc_txn_rollback, vc_txn_bulk_begin, vc_txn_bulk_add,
                             vc_txn_bulk_drop, vc_txn_bulk_put, VC_BULK_AFTER)
from velocore._wal cimport VC_SYNC_OFF, VC_SYNC_NORMAL, VC_SYNC_FULL
from velocore._btree cimport (VC_MAX_VALUE, vc_lookup, vc_lookup_close, vc_lookup_hold,
                              vc_page_search, vc_key_cmp, vc_key_copy)
from velocore._pager cimport vc_hints, vc_page_try, vc_page_still, vc_kept_pins_max, VC_NO_FRAME

cdef extern from "Python.h":
    # the raw item pointer (NULL in a list fresh from PyList_New)
    void* PyList_GET_ITEM_PTR "PyList_GET_ITEM" (object lst, Py_ssize_t i)
    void* PyTuple_GET_ITEM_PTR "PyTuple_GET_ITEM" (void* tup, Py_ssize_t i)
    bint PyTuple_CheckExact_PTR "PyTuple_CheckExact" (void* o)
    Py_ssize_t Py_SIZE_PTR "Py_SIZE" (void* o)
    # a range iterator's reused pair (RangeIterator.pair): raw references, counted by hand
    Py_ssize_t Py_REFCNT_PTR "Py_REFCNT" (void* o)
    void PyTuple_SET_ITEM_PTR "PyTuple_SET_ITEM" (void* tup, Py_ssize_t i, void* o)
    void Py_INCREF_PTR "Py_INCREF" (void* o)
    void Py_DECREF_PTR "Py_DECREF" (void* o)
    int PyObject_GC_IsTracked(object o)
    void PyObject_GC_Track(object o)


cdef inline void prefetch_object(const void* o) noexcept:
    """Start loading an object's header and the start of its data (an object may straddle
    a cache line boundary)."""
    vc_prefetch(o)
    vc_prefetch(<const char*>o + 48)

cdef inline void prefetch_value(const unsigned char* p, uint64_t n) noexcept nogil:
    """Start loading the lines of a value's first 128 bytes: up to three lines, as bytes
    not aligned to a line spill into one more."""
    if n > 128:
        n = 128
    vc_prefetch(p)
    if n > 64:
        vc_prefetch(p + 64)
    if n > 1:
        vc_prefetch(p + n - 1)

from cpython.list cimport PyList_New, PyList_SET_ITEM, PyList_GET_SIZE, PyList_CheckExact
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE
from cpython.ref cimport Py_INCREF

cdef extern from "vc_spin.h" nogil:
    ctypedef struct vc_gil_baton:
        pass
    void vc_gil_give(vc_gil_baton* b)
    void vc_gil_claim(vc_gil_baton* b, uint64_t max_ns)

# Durable committers hand the GIL on through this hint (one per process, like the GIL):
# one coming back from its flush spins for at most GIL_CLAIM_SPIN_NS until another gives
# the GIL up, instead of sleeping in CPython's queue and being woken.
cdef vc_gil_baton gil_baton
cdef uint64_t GIL_CLAIM_SPIN_NS = 50000

cdef extern from "vc_sort.h" nogil:
    # stable sort of key indexes by key (radix over 8-byte words; see vc_sort.h)
    int vc_sort_keys_by_index(const unsigned char* data, const size_t* offs, const uint32_t* lens,
                              uint32_t* idx, size_t n, void* scratch)
    size_t VC_SORT_SCRATCH(size_t n)

cdef extern from *:
    """
    static int vc_simd_detect(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) return 3;
        if (__builtin_cpu_supports("avx2")) return 2;
        return 0;
    #elif defined(__aarch64__)
        return 1;
    #else
        return 0;
    #endif
    }
    """
    int vc_simd_detect() nogil

DEF MAX_KEY = 1024
DEF TID_LEN = 4
DEF PF_PAIR = 16              # put_many reads the pair this many items ahead ...
DEF PF_ITEMS = 8              # ... and its key and value this many (longer leads: no faster)
DEF PUT_CHUNK = 4096         # put_many items read, then written, at a time while keys ascend
DEF PIPE_MIN = 2 * PUT_CHUNK + 1   # put_many calls of this many items or more write their
                                   # chunks on a thread of their own (put_pipe)

cdef extern from *:
    """
    /* a range iterator refills the pair it returned last only where a reference count
       of 1 means nobody else holds it: not on free-threaded builds */
    #ifdef Py_GIL_DISABLED
    #define VC_PAIR_REUSE 0
    #else
    #define VC_PAIR_REUSE 1
    #endif
    """
    const bint VC_PAIR_REUSE

cdef enum:
    RANGE_BLOCK_FIRST = 16       # entries in an iterator's first block (short scans stay cheap)
    RANGE_BLOCK_MAX = 512        # ... doubling per refill up to this
    PAIR_MISSES_MAX = 64         # a range iterator's pairs found still held before it
                                 # stops keeping them for reuse (RangeIterator.pair)
    GET_MANY_YIELD = 4096        # get_many: objects made between offers of the GIL (a power of 2)
MAX_VALUE = VC_MAX_VALUE
_PUT_CHUNK = PUT_CHUNK          # for the tests: calls of more items take the chunked path
_PIPE_MIN = PIPE_MIN
cdef size_t NO_SAVEPOINT = <size_t>-1   # put_ascending's writes so far were all a bulk load's
cdef bint bulk_loads_on = True
cdef bint put_threads_on = True


def _set_bulk_loads(bint on):
    """For the tests: whether a large ascending put_many into an empty key range may be
    written as a bulk load (leaves) instead of through the memtable; returns the setting
    before."""
    global bulk_loads_on
    before = bulk_loads_on
    bulk_loads_on = on
    return before


def _set_put_threads(bint on):
    """For the tests: whether a put_many of _PIPE_MIN items or more writes its chunks on a
    thread of its own while it reads the next (else it reads and writes them in turn);
    returns the setting before."""
    global put_threads_on
    before = put_threads_on
    put_threads_on = on
    return before


# ---------------------------------------------------------------- errors

class Error(Exception):
    """Base class of velocore's errors."""


class ConflictError(Error):
    """Write-write conflict: another transaction committed a change to the same key first."""


class ClosedError(Error):
    """A store, transaction or iterator was used after it ended."""


class ReadOnlyError(Error):
    """A write on a read-only store or snapshot."""


class LockedError(Error):
    """The store directory is open elsewhere (this process or another)."""


class CorruptionError(Error):
    """A checksum or structure check failed."""


class NoSuchTableError(Error, KeyError):
    """The named table does not exist."""

    def __str__(self):
        return Exception.__str__(self)


cdef object raise_error(vc_err* e):
    """The one place where a core status becomes an exception."""
    msg = e.msg.decode("utf-8", "replace")
    code = e.code
    if code == VC_E_CONFLICT:
        raise ConflictError(msg)
    if code == VC_E_CORRUPT:
        raise CorruptionError(msg)
    if code == VC_E_LOCKED:
        raise LockedError(msg)
    if code == VC_E_READONLY:
        raise ReadOnlyError(msg)
    if code == VC_E_CLOSED:
        raise ClosedError(msg)
    if code == VC_E_NOMEM:
        raise MemoryError(msg)
    if code == VC_E_INVALID:
        raise ValueError(msg)
    if code == VC_E_NOFILE:
        raise FileNotFoundError(e.sys_errno, msg)
    if code == VC_E_IO:
        raise OSError(e.sys_errno, msg)
    raise Error(msg or "unknown error")


# ---------------------------------------------------------------- argument helpers


cdef struct keybuf:
    unsigned char data[1028]     # table id + user key
    uint32_t len


cdef inline void put_tid(unsigned char* p, uint32_t tid) noexcept:
    p[0] = <unsigned char>(tid >> 24)
    p[1] = <unsigned char>(tid >> 16)
    p[2] = <unsigned char>(tid >> 8)
    p[3] = <unsigned char>tid


cdef int make_key(keybuf* kb, uint32_t tid, object key, str what) except -1:
    """Table id + key bytes into kb; TypeError / ValueError for bad keys."""
    cdef Py_buffer view
    cdef Py_ssize_t n
    if PyBytes_CheckExact(key):
        n = PyBytes_GET_SIZE(key)
        if n < 1 or n > MAX_KEY:
            raise ValueError(f"{what} must be 1 to {MAX_KEY} bytes, got {n}")
        put_tid(kb.data, tid)
        vc_key_copy(kb.data + TID_LEN, <const unsigned char*>PyBytes_AS_STRING(key), <size_t>n)
        kb.len = <uint32_t>(n + TID_LEN)
        return 0
    if isinstance(key, str) or not PyObject_CheckBuffer(key):
        raise TypeError(f"{what} must be bytes-like (bytes, bytearray, memoryview), "
                        f"not {type(key).__name__}")
    try:
        PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    except BufferError as exc:
        raise TypeError(f"{what} must be a contiguous buffer: {exc}") from None
    try:
        n = view.len
        if n < 1 or n > MAX_KEY:
            raise ValueError(f"{what} must be 1 to {MAX_KEY} bytes, got {n}")
        put_tid(kb.data, tid)
        memcpy(kb.data + TID_LEN, view.buf, n)
        kb.len = <uint32_t>(n + TID_LEN)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef struct gm_rec:               # get_many: where key i's value is until the lookup closes
    const unsigned char* p       # its bytes (in a kept leaf, a memtable or the write set),
    uint64_t n                   # and their length; p NULL: GM_ABSENT, or the offset of a
                                 # copy (8-byte length, then the bytes) in the copy buffer

cdef uint64_t GM_ABSENT = <uint64_t>-1
DEF GM_MAPPED = 1048576          # get_many's scratch from this size on: one mapping, backed at once
cdef unsigned char GM_EMPTY = 0  # where an empty value points


cdef struct keyarray:
    unsigned char* data          # composite keys (table id + key) packed back to back
    size_t used                  # bytes of data in use
    size_t cap                   # bytes allocated
    size_t* offs                 # offset of key i in data
    uint32_t* lens               # length of key i
    Py_ssize_t n                 # keys pushed


cdef int keyarray_init(keyarray* ka, Py_ssize_t n) except -1:
    """Room for n keys; key bytes grow as they come (16 + 4 bytes each to start)."""
    memset(ka, 0, sizeof(keyarray))
    ka.cap = <size_t>(n if n else 1) * 20
    ka.data = <unsigned char*>malloc(ka.cap)
    ka.offs = <size_t*>malloc(<size_t>(n if n else 1) * sizeof(size_t))
    ka.lens = <uint32_t*>malloc(<size_t>(n if n else 1) * sizeof(uint32_t))
    if ka.data == NULL or ka.offs == NULL or ka.lens == NULL:
        raise MemoryError()
    return 0


cdef int keyarray_push(keyarray* ka, uint32_t tid, object key) except -1:
    """Append one composite key (caller sized offs/lens for it with keyarray_init)."""
    cdef keybuf kb
    cdef size_t ncap
    cdef unsigned char* nd
    make_key(&kb, tid, key, "key")
    if ka.used + kb.len > ka.cap:
        ncap = ka.cap * 2
        while ncap < ka.used + kb.len:
            ncap *= 2
        nd = <unsigned char*>realloc(ka.data, ncap)
        if nd == NULL:
            raise MemoryError()
        ka.data = nd
        ka.cap = ncap
    memcpy(ka.data + ka.used, kb.data, kb.len)
    ka.offs[ka.n] = ka.used
    ka.lens[ka.n] = kb.len
    ka.used += kb.len
    ka.n += 1
    return 0


cdef inline bint keyarray_push_fast(keyarray* ka, const unsigned char* tidb, object key) noexcept:
    """The common case of keyarray_push inline: a bytes key of valid length that fits the
    room already there.  False: the caller takes keyarray_push (checks, errors, growth)."""
    cdef Py_ssize_t kl
    cdef unsigned char* p
    if not PyBytes_CheckExact(key):
        return False
    kl = PyBytes_GET_SIZE(key)
    if kl < 1 or kl > MAX_KEY or ka.used + TID_LEN + <size_t>kl > ka.cap:
        return False
    p = ka.data + ka.used
    memcpy(p, tidb, TID_LEN)
    vc_key_copy(p + TID_LEN, <const unsigned char*>PyBytes_AS_STRING(key), <size_t>kl)
    ka.offs[ka.n] = ka.used
    ka.lens[ka.n] = <uint32_t>(kl + TID_LEN)
    ka.used += <size_t>(kl + TID_LEN)
    ka.n += 1
    return True


cdef int keyarray_fill(keyarray* ka, uint32_t tid, list keys) except -1:
    """Composite keys of a batch call in C arrays, so its loop can run without the GIL.
    keys may be the caller's own list (each key is copied as it is read)."""
    cdef Py_ssize_t i, n = len(keys)
    cdef unsigned char tidb[4]
    keyarray_init(ka, n)
    put_tid(tidb, tid)
    for i in range(n):
        if PyList_GET_SIZE(keys) != n:
            # changed by code that reading a key ran (a finalizer, say)
            raise RuntimeError("the list of keys changed size during the call")
        if i + 8 < n:
            # the key objects lie strewn over the heap: start loading one a few steps ahead
            prefetch_object(PyList_GET_ITEM_PTR(keys, i + 8))
        key = keys[i]
        if not keyarray_push_fast(ka, tidb, key):
            keyarray_push(ka, tid, key)
    return 0


cdef int keyarray_order(keyarray* ka, uint32_t* order, void* scratch=NULL) noexcept nogil:
    """order[i] = index of the i-th key in key order (stable: equal keys keep their input
    order).  scratch: VC_SORT_SCRATCH(ka.n) bytes for the sort, or NULL (it allocates its
    own).  0, or -1 when out of memory."""
    cdef Py_ssize_t i
    for i in range(ka.n):
        order[i] = <uint32_t>i
    return vc_sort_keys_by_index(ka.data, ka.offs, ka.lens, order, <size_t>ka.n, scratch)


cdef void keyarray_free(keyarray* ka) noexcept:
    free(ka.data)
    free(ka.offs)
    free(ka.lens)
    ka.data = NULL
    ka.offs = NULL
    ka.lens = NULL


cdef Py_ssize_t pairs_fill(keyarray* ka, uint32_t tid, list pairs, Py_ssize_t n,
                           Py_ssize_t lo, Py_ssize_t hi, const unsigned char** vptrs,
                           uint32_t* vlens, list keep, Py_ssize_t base,
                           bint plain_only=False, bint* plain=NULL) except -1:
    """Read put_many's pairs[lo:hi] (pairs may be the caller's own list, of n items when
    the call began): each composite key into ka (room for hi - lo keys), and the pointer
    and length of each value at [i - base] of vptrs and vlens.  keep[i - base] holds what
    keeps the value alive: the pair, or a value no pair holds (a copy of a buffer, an
    item of a non-tuple pair).  Returns the index it stopped at: hi, or with plain_only
    the first item that is not a plain pair (a tuple of a bytes key of valid length and
    a bytes value), read no further.  A plain pair is read without running Python code,
    and dropping it from keep later runs none either.  *plain (when given) is set False
    if an item read was not plain."""
    cdef Py_ssize_t i
    cdef unsigned char tidb[4]
    cdef bint held
    cdef void* ahead
    put_tid(tidb, tid)
    for i in range(lo, hi):
        if PyList_GET_SIZE(pairs) != n:
            # the caller's list, changed meanwhile: by another thread while a chunk was
            # written, or by code an item ran
            raise RuntimeError("put_many: the list of items changed size during the call")
        # the pairs and their items lie strewn over the heap: load the pair PF_PAIR steps
        # ahead, and the items of the pair PF_ITEMS steps ahead (its pointers are in by then)
        if i + PF_PAIR < n:
            prefetch_object(PyList_GET_ITEM_PTR(pairs, i + PF_PAIR))
        if i + PF_ITEMS < n:
            ahead = PyList_GET_ITEM_PTR(pairs, i + PF_ITEMS)
            if PyTuple_CheckExact_PTR(ahead) and Py_SIZE_PTR(ahead) == 2:
                prefetch_object(PyTuple_GET_ITEM_PTR(ahead, 0))
                vc_prefetch(PyTuple_GET_ITEM_PTR(ahead, 1))
        pair = pairs[i]
        held = PyTuple_CheckExact(pair) and PyTuple_GET_SIZE(pair) == 2
        if held:
            # an immutable pair held by `pairs`: its key and value stay alive
            k = (<tuple>pair)[0]
            val = (<tuple>pair)[1]
            if PyBytes_CheckExact(val) and PyBytes_GET_SIZE(val) <= VC_MAX_VALUE:
                if keyarray_push_fast(ka, tidb, k):
                    keep[i - base] = pair
                    vptrs[i - base] = <const unsigned char*>PyBytes_AS_STRING(val)
                    vlens[i - base] = <uint32_t>PyBytes_GET_SIZE(val)
                    continue
        if plain_only:
            return i
        if plain != NULL:
            plain[0] = False
        if not held:
            try:
                k, val = pair
            except (TypeError, ValueError):
                raise TypeError(f"put_many items must be (key, value) pairs, got "
                                f"{type(pair).__name__}") from None
        if not keyarray_push_fast(ka, tidb, k):
            keyarray_push(ka, tid, k)
        if PyBytes_CheckExact(val) and PyBytes_GET_SIZE(val) <= VC_MAX_VALUE:
            v = val
            keep[i - base] = pair if held else v
        else:
            v = as_value(val)            # a copy (or the error)
            keep[i - base] = v
        vptrs[i - base] = <const unsigned char*>PyBytes_AS_STRING(v)
        vlens[i - base] = <uint32_t>PyBytes_GET_SIZE(v)
    return hi


cdef Py_ssize_t keyarray_ascending(keyarray* ka, const unsigned char* prev,
                                   uint32_t prevlen) noexcept:
    """How many of ka's keys, from the first, each sort at or after the one before (the
    first after prev, when prev is given)."""
    cdef Py_ssize_t i
    if prev != NULL and vc_key_cmp(ka.data, ka.lens[0], prev, prevlen) < 0:
        return 0
    for i in range(1, ka.n):
        if vc_key_cmp(ka.data + ka.offs[i], ka.lens[i],
                      ka.data + ka.offs[i - 1], ka.lens[i - 1]) < 0:
            return i
    return ka.n


cdef int bulk_apply(vc_txn* t, keyarray* ka, const unsigned char** vptrs, const uint32_t* vlens,
                    Py_ssize_t n, Py_ssize_t* taken, vc_err* err) noexcept nogil:
    """Add put_many's first n items (ascending) to the transaction's bulk load until one
    cannot join it: *taken of them joined.  0, or -1 with err set."""
    cdef Py_ssize_t i
    cdef int rc
    for i in range(n):
        if i + 8 < n:
            prefetch_value(vptrs[i + 8], vlens[i + 8])
        rc = vc_txn_bulk_add(t, ka.data + ka.offs[i], ka.lens[i], vptrs[i], vlens[i], err)
        if rc != 0:
            taken[0] = i
            return -1 if rc < 0 else 0
    taken[0] = n
    return 0


cdef int put_apply(vc_txn* t, keyarray* ka, const uint32_t* order, const unsigned char** vptrs,
                   const uint32_t* vlens, Py_ssize_t n, vc_err* err, Py_ssize_t start=0) noexcept nogil:
    """Write put_many's puts start..n-1: item order[i] i-th, or (order NULL) in the order
    given, the keys ascending either way.  0, or -1 with err set at the first write refused."""
    cdef vc_finger fingers[VC_GROUP]
    cdef const unsigned char* gkeys[VC_GROUP]
    cdef uint32_t glens[VC_GROUP]
    cdef Py_ssize_t i, j, g, gi
    cdef int ngroup = 0
    for i in range(start, n):
        if i + 8 < n:
            # the values are Python objects strewn over the heap: start fetching the ones
            # a few steps ahead (the copy misses otherwise)
            j = order[i + 8] if order != NULL else i + 8
            prefetch_value(vptrs[j], vlens[j])
            # and the key filter's block its insert will set bits in
            vc_txn_prefetch_key(t, ka.data + ka.offs[j], ka.lens[j], True)
        if (i - start) % VC_GROUP == 0:
            # the memtable searches of the next keys, together
            g = min(<Py_ssize_t>VC_GROUP, n - i)
            for gi in range(g):
                j = order[i + gi] if order != NULL else i + gi
                gkeys[gi] = ka.data + ka.offs[j]
                glens[gi] = ka.lens[j]
            ngroup = vc_txn_group_fingers(t, gkeys, glens, <int>g, fingers)
        if ngroup:
            gi = (i - start) % VC_GROUP
            if fingers[gi].mem != NULL:
                memcpy(&t.mem_finger, &fingers[gi], sizeof(vc_finger))
        j = order[i] if order != NULL else i
        if vc_txn_write(t, ka.data + ka.offs[j], ka.lens[j], vptrs[j], vlens[j], VC_PUT, err) < 0:
            return -1
    return 0


cdef struct put_chunk:
    keyarray ka                  # the chunk's composite keys
    const unsigned char** vptrs  # its values (in the objects its keep list holds)
    uint32_t* vlens
    bint plain                   # every item read was a plain pair (see pairs_fill)


cdef int chunk_apply(vc_txn* t, put_chunk* c, Py_ssize_t m, bint* bulk, bint can_withdraw,
                     Py_ssize_t* taken, vc_err* err) noexcept nogil:
    """Write the first m items of an ascending chunk of put_many: to the transaction's
    bulk load while *bulk, which it clears at the first item the load cannot take
    (*taken of them joined it); the items from there on are then written as usual if
    can_withdraw, else left to the caller.  0, or -1 with err set."""
    cdef int rc
    if bulk[0]:
        rc = bulk_apply(t, &c.ka, c.vptrs, c.vlens, m, taken, err)
        if rc == 0 and taken[0] < m:
            bulk[0] = False
            if can_withdraw:
                rc = put_apply(t, &c.ka, NULL, c.vptrs, c.vlens, m, err, taken[0])
        return rc
    return put_apply(t, &c.ka, NULL, c.vptrs, c.vlens, m, err)


cdef enum:
    PIPE_IDLE = 0                # nothing posted (or its result taken)
    PIPE_WORK = 1                # a chunk posted, being written
    PIPE_DONE = 2                # written: rc, taken, err and bulk hold the outcome
    PIPE_QUIT = 3                # the writer thread is to end


# put_many's chunk writer: a thread that writes one chunk (chunk_apply) while the calling
# thread reads the next one.  Only the writer touches the transaction between a post and
# the wait that follows it.
cdef struct put_pipe:
    pthread_mutex_t lock
    pthread_cond_t cond
    pthread_t thread
    bint threaded                # the thread runs (else pipe_post writes in the caller)
    int state                    # PIPE_*
    vc_txn* t
    put_chunk* chunk             # posted
    Py_ssize_t m                 # its items to write
    bint bulk                    # in: items go to the bulk load; out: they still do
    bint can_withdraw
    int rc                       # out: chunk_apply's result (< 0: the write failed,
                                 # and the engine's error is raised)
    Py_ssize_t taken
    vc_err err


cdef void* pipe_main(void* arg) noexcept nogil:
    cdef put_pipe* p = <put_pipe*>arg
    pthread_mutex_lock(&p.lock)
    while True:
        while p.state != PIPE_WORK and p.state != PIPE_QUIT:
            pthread_cond_wait(&p.cond, &p.lock)
        if p.state == PIPE_QUIT:
            break
        pthread_mutex_unlock(&p.lock)
        p.rc = chunk_apply(p.t, p.chunk, p.m, &p.bulk, p.can_withdraw, &p.taken, &p.err)
        pthread_mutex_lock(&p.lock)
        p.state = PIPE_DONE
        pthread_cond_signal(&p.cond)
    pthread_mutex_unlock(&p.lock)
    return NULL


cdef void pipe_start(put_pipe* p, vc_txn* t, bint threaded) noexcept nogil:
    """Set the pipe up, with its thread if threaded and one can be had."""
    memset(p, 0, sizeof(put_pipe))
    p.t = t
    pthread_mutex_init(&p.lock, NULL)
    pthread_cond_init(&p.cond, NULL)
    if threaded:
        p.threaded = pthread_create(&p.thread, NULL, pipe_main, p) == 0


cdef void pipe_post(put_pipe* p, put_chunk* c, Py_ssize_t m) noexcept nogil:
    """Hand chunk c's first m items to the writer (threadless: write them now)."""
    p.chunk = c
    p.m = m
    p.taken = 0
    p.err.code = VC_E_NONE
    if not p.threaded:
        p.rc = chunk_apply(p.t, c, m, &p.bulk, p.can_withdraw, &p.taken, &p.err)
        p.state = PIPE_DONE
        return
    pthread_mutex_lock(&p.lock)
    p.state = PIPE_WORK
    pthread_cond_signal(&p.cond)
    pthread_mutex_unlock(&p.lock)


cdef void pipe_wait(put_pipe* p) noexcept nogil:
    """Until the chunk posted last is written; its outcome is in p."""
    if p.threaded:
        pthread_mutex_lock(&p.lock)
        while p.state != PIPE_DONE:
            pthread_cond_wait(&p.cond, &p.lock)
        pthread_mutex_unlock(&p.lock)
    p.state = PIPE_IDLE


cdef void pipe_stop(put_pipe* p) noexcept nogil:
    """End the writer thread (nothing may be posted and unwaited)."""
    if p.threaded:
        pthread_mutex_lock(&p.lock)
        p.state = PIPE_QUIT
        pthread_cond_signal(&p.cond)
        pthread_mutex_unlock(&p.lock)
        pthread_join(p.thread, NULL)
        p.threaded = False
    pthread_cond_destroy(&p.cond)
    pthread_mutex_destroy(&p.lock)


cdef int put_chunk_init(put_chunk* c) except -1:
    keyarray_init(&c.ka, PUT_CHUNK)
    c.vptrs = <const unsigned char**>malloc(PUT_CHUNK * sizeof(void*))
    c.vlens = <uint32_t*>malloc(PUT_CHUNK * sizeof(uint32_t))
    if c.vptrs == NULL or c.vlens == NULL:
        raise MemoryError()
    return 0


cdef void put_chunk_free(put_chunk* c) noexcept:
    keyarray_free(&c.ka)
    free(c.vptrs)
    free(c.vlens)
    c.vptrs = NULL
    c.vlens = NULL


cdef bytes as_value(object value):
    """Any contiguous buffer as bytes (a mutable buffer is copied here, at put)."""
    cdef Py_buffer view
    cdef bytes out
    if PyBytes_CheckExact(value):
        out = <bytes>value
    else:
        if isinstance(value, str) or not PyObject_CheckBuffer(value):
            raise TypeError(f"value must be bytes-like (bytes, bytearray, memoryview), "
                            f"not {type(value).__name__}")
        try:
            PyObject_GetBuffer(value, &view, PyBUF_SIMPLE)
        except BufferError as exc:
            raise TypeError(f"value must be a contiguous buffer: {exc}") from None
        try:
            out = PyBytes_FromStringAndSize(<char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
    if PyBytes_GET_SIZE(out) > VC_MAX_VALUE:
        raise ValueError(f"value is {PyBytes_GET_SIZE(out)} bytes; the maximum is {VC_MAX_VALUE} (64 MiB)")
    return out


cdef bytes catalog_name_key(str name):
    return b"\0\0\0\0N" + name.encode("utf-8")


cdef str check_table_name(object name):
    if not isinstance(name, str):
        raise TypeError(f"table name must be str, not {type(name).__name__}")
    if len(name) < 1 or len(name) > 255:
        raise ValueError(f"table name must be 1 to 255 characters, got {len(name)}")
    return <str>name


cdef bytes prefix_end(bytes prefix):
    """The smallest byte string greater than every string starting with prefix, or None."""
    cdef bytearray b = bytearray(prefix)
    while len(b) and b[len(b) - 1] == 0xFF:
        b.pop()
    if not len(b):
        return None
    b[len(b) - 1] += 1
    return bytes(b)


def simd_level():
    """simd_level() -> str

    The SIMD instruction set velocore's kernels use on this CPU: "avx512", "avx2",
    "neon" or "scalar".
    """
    return ("scalar", "neon", "avx2", "avx512")[vc_simd_detect()]


def _sort_order(list keys):
    """_sort_order(keys) -> list of int

    Test support: the order a batch call visits keys in (their indexes, by key, equal
    keys in the order given), from the radix sort get_many and put_many use.
    """
    cdef keyarray ka
    cdef uint32_t* order = NULL
    cdef Py_ssize_t i, n = len(keys)
    memset(&ka, 0, sizeof(keyarray))
    try:
        keyarray_fill(&ka, 1, keys)
        order = <uint32_t*>malloc(<size_t>(n if n else 1) * sizeof(uint32_t))
        if order == NULL or keyarray_order(&ka, order) < 0:
            raise MemoryError()
        return [order[i] for i in range(n)]
    finally:
        free(order)
        keyarray_free(&ka)


def _crc32c(const unsigned char[:] data, uint32_t crc=0, bint hw=True):
    """_crc32c(data, crc=0, hw=True) -> int

    Test support: CRC32C of data continuing from crc, as pages and log records are
    checksummed: with the machine's instruction where it has one (hw), else with the
    portable table the engine falls back to.
    """
    cdef size_t n = data.shape[0]
    cdef const unsigned char* p = &data[0] if n else NULL
    if hw and vc_crc32c_hw():
        return vc_crc32c(crc, p, n)
    return vc_crc32c_sw(crc, p, n)


def _page_search(const unsigned char[:] page, const unsigned char[:] key, int mode, bint hinted,
                 const unsigned char[:] hints=None, uint32_t start=0):
    """_page_search(page, key, mode, hinted, hints=None, start=0) -> (pos, exact, nheads)

    Test support: search one 4096-byte leaf (mode 0) or branch page (1: separators <= key,
    2: separators < key) as a lookup over a cached page does, with its search hints or
    without; mode 3: a leaf searched from entry `start` on, as a batch lookup does after
    the one before it in the same leaf, or None where that search declines (the entry
    before start is not before key).  Raises CorruptionError where the search meets a
    damaged slot.  hints: a 256-byte hint block to use instead of the page's own (any
    bytes: what a reader that does not pin the frame may see while it is refilled).
    """
    cdef uint32_t pos = 0, nheads = 0
    cdef bint exact = False
    cdef vc_err err
    cdef int rc
    cdef const vc_hints* given = NULL
    if page.shape[0] != 4096 or not 1 <= key.shape[0] <= 1028 or not 0 <= mode <= 3:
        raise ValueError("a 4096-byte page, a 1..1028-byte key and a mode 0..3")
    if hints is not None:
        if hints.shape[0] != sizeof(vc_hints):
            raise ValueError("a %d-byte hint block" % sizeof(vc_hints))
        given = <const vc_hints*>&hints[0]
    err.code = VC_E_NONE
    rc = vc_page_search(&page[0], hinted, mode, &key[0], <uint32_t>key.shape[0], given, start,
                        &pos, &exact, &nheads, &err)
    if rc < 0:
        raise_error(&err)
    if rc == 1:
        return None
    return pos, bool(exact), nheads


# ---------------------------------------------------------------- store

cdef class Store:
    """An open store.  Create with velocore.open()."""

    cdef vc_db* db
    cdef readonly object path
    cdef readonly bint readonly
    cdef readonly str sync
    cdef readonly str wal_mode
    cdef int busy                # calls running without the GIL
    cdef bint closing

    def __cinit__(self):
        self.db = NULL

    def __init__(self, path, bint readonly, str sync, size_t cache_bytes, str wal_mode,
                 uint64_t checkpoint_bytes):
        cdef vc_err err
        cdef int rc
        cdef bytes bpath
        cdef const char* cpath = NULL
        cdef int sync_mode = {"off": VC_SYNC_OFF, "normal": VC_SYNC_NORMAL, "full": VC_SYNC_FULL}[sync]
        self.path = path
        self.readonly = readonly
        self.sync = sync
        self.wal_mode = wal_mode
        err.code = VC_E_NONE
        err.msg[0] = 0
        if path is not None:
            bpath = os.fsencode(path)
            cpath = bpath
        with nogil:
            rc = vc_db_open(&self.db, cpath, readonly, sync_mode, cache_bytes, checkpoint_bytes, &err)
        if rc < 0:
            vc_db_close(self.db)
            self.db = NULL
            raise_error(&err)

    def __dealloc__(self):
        if self.db != NULL:
            vc_db_close(self.db)
            self.db = NULL

    cdef int check_open(self) except -1:
        if self.db == NULL or self.closing:
            raise ClosedError("the store is closed")
        return 0

    def __enter__(self):
        self.check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def _page_try(self, uint32_t page_id):
        """Test support: (frame, gen) if page_id is cached, read as an unpinned lookup
        reads it (no pin, no load), else None."""
        cdef uint32_t frame
        cdef uint64_t gen
        self.check_open()
        if vc_page_try(self.db.pager, page_id, &frame, &gen) == NULL:
            return None
        return frame, gen

    def _kept_pins(self):
        """Test support: leaf pins that batch reads hold past their lookups (get_many keeps
        the leaves it reads pinned until its values are made), and the most they may hold."""
        self.check_open()
        return (int(vc_load_u64_relaxed(&self.db.pager.kept_pins)),
                int(vc_kept_pins_max(self.db.pager)))

    def _page_still(self, uint32_t frame, uint64_t gen):
        """Test support: whether the frame _page_try returned still holds that page."""
        self.check_open()
        if frame != VC_NO_FRAME and (self.db.pager.fd < 0 or frame >= self.db.pager.nframes):
            raise ValueError("no frame %d in a cache of %d" % (frame, self.db.pager.nframes))
        return bool(vc_page_still(self.db.pager, frame, gen))

    def __repr__(self):
        state = "closed" if self.db == NULL else ("read-only" if self.readonly else "open")
        where = "in memory" if self.path is None else repr(self.path)
        return f"<velocore.Store {where} {state}>"

    def close(self):
        """close() -> None

        Close the store.  Live transactions, snapshots and iterators end with it; using
        them afterwards raises ClosedError.  Closing twice does nothing.
        """
        cdef vc_db* db
        cdef vc_err err
        if self.db == NULL:
            return
        self.closing = True
        while self.busy > 0:            # let calls running without the GIL finish
            time.sleep(0.0005)
        db = self.db
        self.db = NULL
        err.code = VC_E_NONE
        with nogil:
            if not db.readonly and db.wal != NULL:
                # fold the log into the data file so the next open has little to replay;
                # if this fails the log still holds every commit
                vc_db_checkpoint(db, False, &err)
            vc_db_close(db)

    def txn(self):
        """txn() -> Txn

        Begin a read-write transaction (a context manager: commits at the end of the
        block, aborts if it raises).  ReadOnlyError on a read-only store.
        """
        self.check_open()
        if self.readonly:
            raise ReadOnlyError("the store was opened read-only")
        return Txn._begin(self, False)

    def snapshot(self):
        """snapshot() -> Snapshot

        Begin a read-only transaction that sees the store as it is now.
        """
        self.check_open()
        return Snapshot._begin(self, True)

    def retry(self, fn, attempts=10):
        """retry(fn, attempts=10) -> object

        Call fn(txn) in a fresh transaction and commit it, again on ConflictError, at most
        `attempts` times in all; returns what fn returned.  Other exceptions abort and
        propagate at once.
        """
        if not isinstance(attempts, int) or attempts < 1:
            raise ValueError("attempts must be a positive integer")
        for attempt in range(attempts):
            t = self.txn()
            try:
                result = fn(t)
                t.commit()
                return result
            except ConflictError:
                t.abort()
                if attempt + 1 == attempts:
                    raise
                # randomized exponential backoff: lets the winner's commit become visible
                time.sleep(random.uniform(0, min(0.02, 0.0002 * (2 ** attempt))))
            except BaseException:
                t.abort()
                raise

    # ---- tables

    def table(self, name, key=None, columns=None):
        """table(name) -> Table

        The table called name, created (durably, in its own transaction) if missing.
        """
        name = check_table_name(name)
        if key is not None or columns is not None:
            raise NotImplementedError("typed tables (key=, columns=) are not available yet")
        self.check_open()
        with self.snapshot() as s:
            if s._lookup(name) is not None:
                return Table(self, name)
        if self.readonly:
            raise NoSuchTableError(f"no table named {name!r} (the store is read-only)")

        def create(t):
            if t._lookup(name) is None:
                counter = t._raw_get(b"\0\0\0\0C")
                tid = int.from_bytes(counter, "big") if counter is not None else 1
                if tid >= 0xFFFFFFFF:
                    raise Error("no table ids left")
                t._raw_put(b"\0\0\0\0C", (tid + 1).to_bytes(4, "big"))
                t._raw_put(catalog_name_key(name), tid.to_bytes(4, "big"))
        self.retry(create, attempts=100)
        return Table(self, name)

    def tables(self):
        """tables() -> list of str, sorted."""
        self.check_open()
        with self.snapshot() as s:
            return [k[1:].decode("utf-8") for k in s._catalog_names()]

    def drop_table(self, name):
        """drop_table(name) -> None

        Delete the table and everything in it (durably, in its own transaction).
        NoSuchTableError if there is no such table.
        """
        name = check_table_name(name)
        self.check_open()

        def drop(t):
            tid = t._lookup(name)
            if tid is None:
                raise NoSuchTableError(f"no table named {name!r}")
            t._raw_delete(catalog_name_key(name))
            t._raw_put(b"\0\0\0\0D" + tid.to_bytes(4, "big"), b"")
        self.retry(drop, attempts=100)

    # ---- operations

    def checkpoint(self):
        """checkpoint() -> None

        Fold logged commits into the data file now (it also happens on its own).
        """
        cdef vc_err err
        cdef int rc
        self.check_open()
        if self.readonly:
            raise ReadOnlyError("the store was opened read-only")
        err.code = VC_E_NONE
        self.busy += 1
        try:
            with nogil:
                rc = vc_db_checkpoint(self.db, False, &err)
        finally:
            self.busy -= 1
        if rc < 0:
            raise_error(&err)

    def info(self):
        """info() -> dict: sizes, counters and settings of the store."""
        cdef uint64_t s[25]
        self.check_open()
        vc_db_stats(self.db, s)
        data_bytes = None
        log_bytes = s[4]
        if self.path is not None:
            try:
                data_bytes = os.path.getsize(os.path.join(self.path, "data.vc"))
            except OSError:
                data_bytes = 0
        ckpt_time = self.db.checkpoint_time
        return {
            "path": None if self.path is None else os.fspath(self.path),
            "readonly": self.readonly,
            "sync": self.sync,
            "wal_mode": None if self.path is None else "file",
            "simd": simd_level(),
            "page_size": 4096,
            "data_bytes": data_bytes,
            "page_count": s[0],
            "free_pages": s[15],
            "tree_height": s[1],
            "cache_pages": self.db.pager.nframes if self.db.pager.fd >= 0 else 0,
            "cache_hits": s[2],
            "cache_misses": s[3],
            "log_bytes": log_bytes,
            "log_zeroed_bytes": s[20],   # zeros written ahead of log appends (sync full/normal)
            "active_transactions": s[5],
            "oldest_snapshot_ts": s[6] if s[5] else None,
            "checkpoint_ts": s[7],
            "checkpoints": s[8],
            "checkpoint_time": ckpt_time if ckpt_time else None,
            "last_commit_ts": s[9],
            "visible_ts": s[10],
            "memtable_bytes": s[11],
            "memtable_spare_bytes": s[21],   # retired memtables' memory kept for the next ones
            "memtable_chunks_reused": s[22],   # taken from a retired memtable
            "memtable_chunks_mapped_ahead": s[24],   # mapped by the filler for growing ones
            "bulk_loads": s[23],             # sorted loads written as leaves (see put_many, put)
            "versions_retained": s[12],
            "versions_pruned": s[16],
            "versions_deferred": s[17],
            "gc_horizon_ts": s[18],
            "memtables": s[13],
            "commits": s[14],
            "log_flushes": s[19],        # sync="full" group-commit flushes: commits per flush
        }

    def check(self):
        """check() -> dict

        Verify every page checksum and tree invariant of the checkpointed tree and that
        every page is either in the tree or free.  Returns {"ok", "errors", "pages",
        "entries", "tables"}.
        """
        cdef vc_buf report
        cdef vc_err err
        cdef long problems
        cdef uint64_t nkeys = 0
        self.check_open()
        memset(&report, 0, sizeof(report))
        err.code = VC_E_NONE
        self.busy += 1
        try:
            with nogil:
                problems = vc_db_check(self.db, &report, &nkeys, &err)
            text = PyBytes_FromStringAndSize(<char*>report.data, report.len).decode("utf-8", "replace") \
                if report.len else ""
        finally:
            self.busy -= 1
            vc_buf_free(&report)
        if problems < 0:
            raise_error(&err)
        errors = [line for line in text.split("\n") if line]
        if problems > len(errors):
            errors.append(f"... {problems - len(errors)} more problems")
        try:
            ntables = len(self.tables())
        except CorruptionError as exc:
            errors.append(str(exc))
            ntables = None
        return {"ok": not errors, "errors": errors, "pages": self.db.pager.page_count,
                "entries": nkeys, "tables": ntables}


def open(path=None, *, readonly=False, sync="full", cache_mb=256, wal="file", checkpoint_mb=64):
    """open(path=None, *, readonly=False, sync="full", cache_mb=256, wal="file", checkpoint_mb=64) -> Store

    Open (creating if needed) the store in directory `path`; no path: an in-memory store.
    Raises LockedError if the directory is open elsewhere, FileNotFoundError for a
    read-only open of a missing store, CorruptionError for a damaged one, TypeError /
    ValueError for bad options.
    """
    if not isinstance(readonly, bool):
        raise TypeError(f"readonly must be True or False, not {type(readonly).__name__}")
    if not isinstance(sync, str) or sync not in ("full", "normal", "off"):
        raise ValueError(f"sync must be 'full', 'normal' or 'off', not {sync!r}")
    if not isinstance(wal, str) or wal not in ("file", "pmem"):
        raise ValueError(f"wal must be 'file' or 'pmem', not {wal!r}")
    if isinstance(cache_mb, bool) or not isinstance(cache_mb, (int, float)):
        raise TypeError(f"cache_mb must be a number, not {type(cache_mb).__name__}")
    if not cache_mb > 0 or cache_mb > (1 << 40):
        raise ValueError(f"cache_mb must be positive, not {cache_mb!r}")
    if isinstance(checkpoint_mb, bool) or not isinstance(checkpoint_mb, (int, float)):
        raise TypeError(f"checkpoint_mb must be a number, not {type(checkpoint_mb).__name__}")
    if not checkpoint_mb > 0 or checkpoint_mb > (1 << 30):
        raise ValueError(f"checkpoint_mb must be positive, not {checkpoint_mb!r}")
    if path is None:
        if readonly:
            raise ValueError("readonly=True needs a path: an in-memory store starts empty")
    else:
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        path = os.path.abspath(os.fsdecode(os.fspath(path)))
        if readonly:
            if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "data.vc")):
                raise FileNotFoundError(2, f"no velocore store at {path}", path)
        else:
            if os.path.exists(path) and not os.path.isdir(path):
                raise NotADirectoryError(20, f"{path} exists and is not a directory", path)
            os.makedirs(path, exist_ok=True)
    # wal="pmem" (a memory-mapped log) is not built yet: the file log serves it,
    # and info()["wal_mode"] says so.
    return Store(path, readonly, sync, <size_t>(cache_mb * 1048576),
                 "file", <uint64_t>(checkpoint_mb * 1048576))


# ---------------------------------------------------------------- tables

cdef class Table:
    """A named ordered map of bytes to bytes.  Each method here is its own transaction."""

    cdef readonly Store store
    cdef readonly str name

    def __init__(self, Store store, str name):
        self.store = store
        self.name = name

    def __repr__(self):
        return f"<velocore.Table {self.name!r}>"

    def __eq__(self, other):
        return isinstance(other, Table) and (<Table>other).store is self.store and \
            (<Table>other).name == self.name

    def __hash__(self):
        return hash((id(self.store), self.name))

    def get(self, key, default=None):
        with self.store.snapshot() as s:
            return s.get(self, key, default)

    def put(self, key, value):
        with self.store.txn() as t:
            t.put(self, key, value)

    def delete(self, key):
        with self.store.txn() as t:
            return t.delete(self, key)

    def __getitem__(self, key):
        cdef object v
        with self.store.snapshot() as s:
            v = s.get(self, key, None)
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key, value):
        self.put(key, value)

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key):
        return self.get(key) is not None

    def __len__(self):
        with self.store.snapshot() as s:
            return s.count(self)

    def range(self, start=None, stop=None, *, reverse=False, prefix=None, keys_only=False):
        s = self.store.snapshot()
        it = s.range(self, start, stop, reverse=reverse, prefix=prefix, keys_only=keys_only)
        (<RangeIterator>it).owns_txn = True
        return it

    def items(self):
        return self.range()

    def keys(self):
        return self.range(keys_only=True)

    def __iter__(self):
        return self.range(keys_only=True)


# ---------------------------------------------------------------- transactions

cdef class Txn:
    """A read-write transaction with snapshot isolation.  Use store.txn()."""

    cdef vc_txn* t
    cdef Store store
    cdef dict tids               # table name -> [table id, catalog entry checked]
    cdef bint ended
    cdef bint in_use             # a call is running without the GIL
    cdef bint is_snapshot
    cdef object last_table       # the table object of the last call, and its id:
    cdef uint32_t last_tid       # a loop over one table skips the name lookup
    cdef bint last_checked       # ... and its catalog entry is already a write check
    cdef object __weakref__

    def __cinit__(self):
        self.t = NULL
        self.ended = True

    @staticmethod
    cdef Txn _begin(Store store, bint readonly):
        cdef Txn self = Snapshot.__new__(Snapshot) if readonly else Txn.__new__(Txn)
        cdef vc_err err
        err.code = VC_E_NONE
        if vc_txn_begin(store.db, readonly, &self.t, &err) < 0:
            raise_error(&err)
        self.store = store
        self.tids = {}
        self.ended = False
        self.is_snapshot = readonly
        return self

    def __dealloc__(self):
        if self.t == NULL:
            return
        if self.ended:
            vc_txn_free(self.t)          # unregistered: owned by this object alone
        elif self.store is not None and self.store.db != NULL:
            vc_txn_free(self.t)          # still live: abort, then free
        # else: the store closed and freed it
        self.t = NULL

    cdef inline int check_alive(self) except -1:
        if self.ended:
            raise ClosedError("the transaction has ended")
        if self.store.db == NULL or self.store.closing:
            self.ended = True
            self.t = NULL                # freed by the store's close
            raise ClosedError("the store is closed")
        return 0

    cdef inline int check(self) except -1:
        self.check_alive()
        if self.in_use:
            raise Error("the transaction is in use by another thread")
        return 0

    cdef inline int check_write(self) except -1:
        self.check()
        if self.is_snapshot:
            raise ReadOnlyError("a snapshot is read-only")
        return 0

    def __enter__(self):
        self.check()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.ended:
            return False
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    # ---- catalog helpers (table 0)

    def _raw_get(self, bytes ckey):
        cdef const unsigned char* v
        cdef size_t vlen
        cdef vc_err err
        cdef int rc
        self.check()
        err.code = VC_E_NONE
        rc = vc_txn_get(self.t, <const unsigned char*>PyBytes_AS_STRING(ckey),
                        <uint32_t>PyBytes_GET_SIZE(ckey), &v, &vlen, &err)
        if rc < 0:
            raise_error(&err)
        if rc == VC_NOTFOUND:
            return None
        return PyBytes_FromStringAndSize(<const char*>v, vlen)

    cdef int raw_write(self, bytes ckey, bytes value, int kind) except -1:
        cdef vc_err err
        self.check_write()
        err.code = VC_E_NONE
        if vc_txn_write(self.t, <const unsigned char*>PyBytes_AS_STRING(ckey),
                        <uint32_t>PyBytes_GET_SIZE(ckey),
                        <const unsigned char*>(PyBytes_AS_STRING(value) if value is not None else NULL),
                        <uint32_t>(PyBytes_GET_SIZE(value) if value is not None else 0),
                        kind, &err) < 0:
            raise_error(&err)
        return 0

    def _raw_put(self, bytes ckey, bytes value):
        self.raw_write(ckey, value, VC_PUT)

    def _raw_delete(self, bytes ckey):
        self.raw_write(ckey, None, VC_DEL)

    def _lookup(self, str name):
        v = self._raw_get(catalog_name_key(name))
        if v is None:
            return None
        if len(v) != 4:
            raise CorruptionError(f"catalog entry of table {name!r} is damaged")
        return int.from_bytes(v, "big")

    def _catalog_names(self):
        cdef RangeIterator it = RangeIterator.__new__(RangeIterator)
        it.setup(self, <const unsigned char*>b"\0\0\0\0N", 5, <const unsigned char*>b"\0\0\0\0O", 5,
                 False, True, 4)
        return list(it)

    cdef uint32_t tid(self, object table, bint for_write) except? 0xFFFFFFFF:
        if table is self.last_table and (self.last_checked or not for_write):
            return self.last_tid
        return self.tid_lookup(table, for_write)

    cdef uint32_t tid_lookup(self, object table, bint for_write) except? 0xFFFFFFFF:
        cdef str name
        cdef list entry
        if isinstance(table, Table):
            name = (<Table>table).name
            if (<Table>table).store is not self.store:
                raise ValueError(f"table {name!r} belongs to another store")
        elif isinstance(table, str):
            name = <str>table
        else:
            raise TypeError(f"table must be a Table or a table name, not {type(table).__name__}")
        entry = self.tids.get(name)
        if entry is None:
            tid = self._lookup(name)
            if tid is None:
                raise NoSuchTableError(f"no table named {name!r}")
            entry = [tid, False]
            self.tids[name] = entry
        if for_write and not entry[1]:
            # a concurrent drop (or re-create) of the table must abort this transaction
            self.raw_write(catalog_name_key(name), None, VC_CHECK)
            entry[1] = True
        # names map to ids for the whole transaction (self.tids), so identity suffices
        self.last_table = table
        self.last_tid = <uint32_t>entry[0]
        self.last_checked = entry[1]
        return <uint32_t>entry[0]

    # ---- reads

    def get(self, table, key, default=None):
        """get(table, key, default=None) -> bytes or default"""
        cdef keybuf kb
        cdef const unsigned char* v
        cdef size_t vlen
        cdef vc_err err
        cdef int rc
        self.check()
        make_key(&kb, self.tid(table, False), key, "key")
        self.check()
        err.code = VC_E_NONE
        rc = vc_txn_get(self.t, kb.data, kb.len, &v, &vlen, &err)
        if rc == VC_NOTFOUND:
            return default
        if rc < 0:
            raise_error(&err)
        return PyBytes_FromStringAndSize(<const char*>v, vlen)

    def get_many(self, table, keys):
        """get_many(table, keys) -> list of bytes or None, in the order of keys.

        The keys are looked up in key order with the GIL released (neighbouring keys then
        share tree leaves), and the results made in the order given."""
        cdef uint32_t tid
        cdef Py_ssize_t n, i, j
        cdef keyarray ka
        cdef gm_rec* recs = NULL
        cdef gm_rec* r
        cdef uint32_t* order = NULL
        cdef vc_lookup* lk = NULL
        cdef vc_buf out
        cdef vc_err err
        cdef int rc = 0
        cdef const unsigned char* v
        cdef size_t vlen
        cdef Py_ssize_t failed_at = -1
        cdef bint lk_open = False
        cdef list result
        cdef unsigned char* scratch = NULL
        cdef size_t scratch_len = 0, order_len
        self.check()
        tid = self.tid(table, False)
        keys = keys if PyList_CheckExact(keys) else list(keys)   # a list is read in place
        n = len(keys)
        memset(&out, 0, sizeof(out))
        memset(&ka, 0, sizeof(ka))
        order_len = ((<size_t>(n + 1) * sizeof(uint32_t)) + 15) & ~(<size_t>15)
        if order_len + VC_SORT_SCRATCH(n + 1) >= GM_MAPPED:
            # a large batch: the order, the sort's records and then (in the same place,
            # free once the order is known) the value records in one mapping, backed by
            # the kernel at once rather than faulted in a page at a time
            scratch_len = vc_huge_len(order_len + VC_SORT_SCRATCH(n + 1))
            scratch = <unsigned char*>vc_pages_alloc_backed(scratch_len)
            if scratch != NULL:
                order = <uint32_t*>scratch
                recs = <gm_rec*>(scratch + order_len)
        else:
            recs = <gm_rec*>malloc(<size_t>(n + 1) * sizeof(gm_rec))
            order = <uint32_t*>malloc(<size_t>(n + 1) * sizeof(uint32_t))
        lk = <vc_lookup*>malloc(sizeof(vc_lookup))
        try:
            if recs == NULL or order == NULL or lk == NULL:
                raise MemoryError()
            if n > 0xFFFFFFFF:
                raise ValueError("get_many takes at most 2**32 - 1 keys per call")
            keyarray_fill(&ka, tid, keys)
            err.code = VC_E_NONE
            self.check()               # the loops above ran Python code
            # Two passes.  The lookups, in key order and without the GIL, note where each
            # value is: the leaves they read stay pinned (up to the pager's budget; past
            # it, and for overflow values, the value is copied aside).  Then the bytes
            # objects are made in the order of the keys given, so that they lie in memory
            # in the list's order: a caller walking the list then reads memory in order,
            # where objects made in key order would cost it a cache miss each.
            result = PyList_New(n)
            self.in_use = True
            self.store.busy += 1
            try:
                with nogil:
                    if keyarray_order(&ka, order, <void*>recs if scratch != NULL else NULL) < 0:
                        rc = -2
                    else:
                        vc_txn_lookup_init(self.t, lk)
                        lk_open = True
                        for j in range(n):
                            # the keys sit in input order: fetch the ones a few steps ahead
                            if j + 16 < n:
                                vc_prefetch(&ka.offs[order[j + 16]])
                                vc_prefetch(&ka.lens[order[j + 16]])
                            if j + 8 < n:
                                vc_prefetch(ka.data + ka.offs[order[j + 8]])
                                vc_prefetch(&recs[order[j + 8]])
                            if j + 4 < n:
                                # the memtables' key filter blocks (when they hold keys)
                                i = order[j + 4]
                                vc_txn_prefetch_key(self.t, ka.data + ka.offs[i], ka.lens[i], False)
                            i = order[j]
                            r = &recs[i]
                            rc = vc_txn_get_lk(self.t, lk, ka.data + ka.offs[i], ka.lens[i], &v, &vlen, &err)
                            if rc < 0:
                                failed_at = i
                                break
                            if rc == VC_NOTFOUND:
                                rc = 0
                                r.p = NULL
                                r.n = GM_ABSENT
                                continue
                            if vlen == 0:
                                r.p = &GM_EMPTY
                                r.n = 0
                            elif not vc_lookup_hold(lk, v):
                                # gone at the next lookup: copied aside
                                if vc_buf_reserve(&out, out.len + vlen + 8) < 0:
                                    rc = -2
                                    break
                                memcpy(out.data + out.len, &vlen, 8)
                                memcpy(out.data + out.len + 8, v, vlen)
                                r.p = NULL
                                r.n = out.len
                                out.len += vlen + 8
                            else:
                                # a kept leaf, or a memtable or this transaction's write set
                                # (unchanged while the transaction lives)
                                r.p = v
                                r.n = vlen
                if rc == 0:
                    for i in range(n):
                        if (i & (GET_MANY_YIELD - 1)) == GET_MANY_YIELD - 1:
                            with nogil:
                                pass    # a thread waiting for the GIL may take it here
                        if i + 16 < n:
                            # the values lie at random: start loading them well ahead
                            v = recs[i + 16].p
                            if v != NULL:
                                vc_prefetch(v)
                                vc_prefetch(v + 64)
                        r = &recs[i]
                        if r.p != NULL:
                            value = PyBytes_FromStringAndSize(<const char*>r.p, <Py_ssize_t>r.n)
                        elif r.n == GM_ABSENT:
                            value = None
                        else:
                            memcpy(&vlen, out.data + r.n, 8)
                            value = PyBytes_FromStringAndSize(<const char*>out.data + r.n + 8, vlen)
                        Py_INCREF(value)
                        PyList_SET_ITEM(result, i, value)
            finally:
                if lk_open:
                    vc_lookup_close(lk)
                self.in_use = False
                self.store.busy -= 1
            if rc == -2:
                raise MemoryError("out of memory in get_many")
            if failed_at >= 0:
                raise_error(&err)
            return result
        finally:
            keyarray_free(&ka)
            if scratch != NULL:
                vc_huge_free(scratch, scratch_len)
            else:
                free(recs)
                free(order)
            free(lk)
            vc_buf_free(&out)

    def range(self, table, start=None, stop=None, *, reverse=False, prefix=None, keys_only=False):
        """range(table, start=None, stop=None, *, reverse=False, prefix=None, keys_only=False)

        Iterate (key, value) pairs (keys with keys_only=True) with start <= key < stop,
        and key starting with prefix when given, in key order (descending with reverse).
        """
        cdef keybuf lo, hi, pk
        cdef uint32_t tid
        cdef bytes plo, phi
        self.check()
        tid = self.tid(table, False)
        if start is not None:
            make_key(&lo, tid, start, "start")
        else:
            put_tid(lo.data, tid)
            lo.len = TID_LEN
        if stop is not None:
            make_key(&hi, tid, stop, "stop")
        else:
            put_tid(hi.data, tid + 1)
            hi.len = TID_LEN
        if prefix is not None:
            make_key(&pk, tid, prefix, "prefix")
            plo = PyBytes_FromStringAndSize(<char*>pk.data, pk.len)
            phi = prefix_end(plo)
            if plo > PyBytes_FromStringAndSize(<char*>lo.data, lo.len):
                memcpy(lo.data, pk.data, pk.len)
                lo.len = pk.len
            if phi is not None and phi < PyBytes_FromStringAndSize(<char*>hi.data, hi.len):
                memcpy(hi.data, PyBytes_AS_STRING(phi), PyBytes_GET_SIZE(phi))
                hi.len = <uint32_t>PyBytes_GET_SIZE(phi)
        cdef RangeIterator it = RangeIterator.__new__(RangeIterator)
        it.setup(self, lo.data, lo.len, hi.data, hi.len, bool(reverse), bool(keys_only), TID_LEN)
        return it

    def count(self, table):
        """count(table) -> int: the number of keys in the table."""
        cdef uint32_t tid
        cdef vc_iter* it
        cdef unsigned char lo[4]
        cdef unsigned char hi[4]
        cdef vc_err err
        cdef int rc
        cdef uint64_t n = 0
        self.check()
        tid = self.tid(table, False)
        put_tid(lo, tid)
        put_tid(hi, tid + 1)
        it = <vc_iter*>malloc(sizeof(vc_iter))
        if it == NULL:
            raise MemoryError()
        err.code = VC_E_NONE
        try:
            self.check()
        except BaseException:
            free(it)
            raise
        self.in_use = True
        self.store.busy += 1
        with nogil:
            rc = vc_iter_init(it, self.t, lo, 4, hi, 4, False, &err)
            while rc == 0:
                rc = vc_iter_next(it, &err)
                if rc == VC_OK:
                    n += 1
                    rc = 0
            vc_iter_close(it)
        self.in_use = False
        self.store.busy -= 1
        free(it)
        if rc < 0:
            raise_error(&err)
        return n

    # ---- writes

    def put(self, table, key, value):
        """put(table, key, value) -> None"""
        cdef keybuf kb
        cdef bytes v
        cdef vc_err err
        cdef int rc
        cdef bint bulk
        # the key's and the value's bytes may lie past the line the caller's reference count is
        # in: ask for them now, so that their misses overlap the checks below
        vc_prefetch(<const char*><void*>key + 32)
        vc_prefetch(<const char*><void*>value + 64)
        vc_prefetch(<const char*><void*>value + 128)
        self.check_write()
        make_key(&kb, self.tid(table, True), key, "key")
        # a sorted load made key by key becomes a bulk load once it has gone on a while
        bulk = bulk_loads_on and (self.t.nruns != 0 or self.t.wa_len >= VC_BULK_AFTER)
        if not bulk or self.t.nruns == 0:
            vc_txn_prefetch_key(self.t, kb.data, kb.len, True)   # for the memtable's insert
        v = as_value(value)
        self.check_write()
        err.code = VC_E_NONE
        if bulk:
            rc = vc_txn_bulk_put(self.t, kb.data, kb.len, <const unsigned char*>PyBytes_AS_STRING(v),
                                 <uint32_t>PyBytes_GET_SIZE(v), &err)
            if rc < 0:
                raise_error(&err)
            if rc == 0:
                return
        if vc_txn_write(self.t, kb.data, kb.len, <const unsigned char*>PyBytes_AS_STRING(v),
                        <uint32_t>PyBytes_GET_SIZE(v), VC_PUT, &err) < 0:
            raise_error(&err)

    def delete(self, table, key):
        """delete(table, key) -> bool: whether the key existed."""
        cdef keybuf kb
        cdef const unsigned char* v
        cdef size_t vlen
        cdef vc_err err
        cdef int rc
        self.check_write()
        make_key(&kb, self.tid(table, True), key, "key")
        self.check_write()
        err.code = VC_E_NONE
        rc = vc_txn_get(self.t, kb.data, kb.len, &v, &vlen, &err)
        if rc < 0:
            raise_error(&err)
        if vc_txn_write(self.t, kb.data, kb.len, NULL, 0, VC_DEL, &err) < 0:
            raise_error(&err)
        return rc == VC_OK

    def put_many(self, table, items=None, **columns):
        """put_many(table, items) -> None

        items: a mapping, or an iterable of (key, value) pairs; a repeated key: last wins.
        A bad item raises TypeError or ValueError, and none of the items is written.
        """
        cdef uint32_t tid
        cdef Py_ssize_t n
        cdef Py_ssize_t done = 0
        cdef size_t sp = 0
        if columns:
            raise TypeError(f"unexpected keyword arguments {sorted(columns)}; column arrays need a typed table")
        self.check_write()
        tid = self.tid(table, True)
        if items is None:
            raise TypeError("put_many() needs items: a mapping or an iterable of (key, value) pairs")
        if hasattr(items, "items") and callable(items.items):
            items = items.items()
        # a list is read in place (pairs_fill holds each pair it reads): a copy of it
        # would touch every pair once more, a cache miss each in a large batch
        pairs = items if PyList_CheckExact(items) else list(items)
        n = len(pairs)
        if n > 0xFFFFFFFF:
            raise ValueError("put_many takes at most 2**32 - 1 items per call")
        self.check_write()             # list() may have run Python code
        # from here on, Python code that reading an item runs (a buffer's export, a key's
        # conversion) cannot use this transaction: the call's writes stay one run
        self.in_use = True
        nruns = self.t.nruns
        try:
            if n > PUT_CHUNK:
                done = self.put_ascending(tid, pairs, n, &sp)
            if done < n:
                self.put_sorted(tid, pairs, done, n, done > 0 and sp != NO_SAVEPOINT, sp)
        except BaseException:
            # the bulk loads this call started go too: it has no effect
            if not self.ended and self.t != NULL and self.store.db != NULL and not self.store.closing:
                while self.t.nruns > nruns:
                    vc_txn_bulk_drop(self.t)
            raise
        finally:
            self.in_use = False

    cdef Py_ssize_t put_ascending(self, uint32_t tid, list pairs, Py_ssize_t n,
                                  size_t* sp) except -1:
        """The first part of a large put_many while its keys ascend, chunk by chunk: a
        chunk's items are read (with the GIL), then written in input order without it,
        while the chunk's objects are still in the CPU cache.  A batch read whole before
        any write reads each object twice, a cache miss each time once the batch
        outgrows the cache.  In a call of PIPE_MIN items or more, a thread of its own
        (put_pipe) writes each chunk while this one reads the next: the two take about
        as long.  Meanwhile no Python code may run here (it could end the transaction or
        the store under the write, or wait for the write to end), so the next chunk is
        read then only while its items are plain pairs (see pairs_fill); at one that is
        not, the read waits for the write first.  A chunk's objects stay held (its keep
        list) until its write is done.  Returns how many items it wrote; the caller
        sorts and writes the rest.  A bad item withdraws the writes made so far
        (vc_txn_rollback from *sp), so a call that raises TypeError or ValueError
        changes nothing.

        Into a key range the snapshot holds nothing in, the items go to a bulk load
        instead (vc_txn_bulk_*: leaves, spliced into the tree at commit), which put_many
        drops again if the call fails.  A bulk load needs no savepoint: where the write
        set cannot withdraw (*sp is then NO_SAVEPOINT), the items the load cannot take are
        left to the caller, which reads them all before it writes any."""
        cdef put_chunk bufs[2]
        cdef put_chunk* c
        cdef put_pipe pipe
        cdef bint piped = False
        cdef bint pending = False        # a chunk posted to the pipe and not waited for
        cdef Py_ssize_t plo = 0          # ... its first item
        cdef Py_ssize_t plen = 0         # ... and its length
        cdef unsigned char* last = NULL
        cdef uint32_t lastlen = 0
        cdef Py_ssize_t lo = 0
        cdef Py_ssize_t hi, m, got, r
        cdef int b = 0
        cdef bint wrote = False
        cdef bint can_withdraw = True
        cdef list keeps = [[None] * PUT_CHUNK, [None] * PUT_CHUNK]
        cdef list keep
        memset(bufs, 0, sizeof(bufs))
        memset(&pipe, 0, sizeof(pipe))
        try:
            put_chunk_init(&bufs[0])
            put_chunk_init(&bufs[1])
            last = <unsigned char*>malloc(MAX_KEY + TID_LEN)
            if last == NULL:
                raise MemoryError()
            with nogil:
                pipe_start(&pipe, self.t, n >= PIPE_MIN and put_threads_on)
            piped = True
            while lo < n:
                hi = min(n, lo + PUT_CHUNK)
                c = &bufs[b]
                keep = <list>keeps[b]
                c.ka.n = 0
                c.ka.used = 0
                c.plain = True
                got = lo
                if pending:
                    # while the chunk before is written: plain pairs only
                    got = pairs_fill(&c.ka, tid, pairs, n, lo, hi, c.vptrs, c.vlens, keep,
                                     lo, True)
                    if got < hi:
                        pending = False
                        r = self.pipe_result(&pipe, plo, plen, &bufs[1 - b], <list>keeps[1 - b])
                        if r >= 0:
                            return r
                if got < hi:
                    pairs_fill(&c.ka, tid, pairs, n, got, hi, c.vptrs, c.vlens, keep, lo,
                               False, &c.plain)
                    self.check_alive()            # reading the items may have run Python code
                if lo == 0:
                    can_withdraw = vc_txn_savepoint(self.t, c.ka.data, c.ka.lens[0], sp)
                    if not can_withdraw:
                        sp[0] = NO_SAVEPOINT
                    m = keyarray_ascending(&c.ka, NULL, 0)
                    if m == hi - lo and bulk_loads_on:
                        pipe.bulk = self.bulk_begin(tid, &c.ka, pairs, n)
                    if not can_withdraw and not pipe.bulk:
                        return 0                # writes it could not withdraw: sort them all
                    pipe.can_withdraw = can_withdraw
                else:
                    m = keyarray_ascending(&c.ka, last, lastlen)
                if pending:
                    pending = False
                    r = self.pipe_result(&pipe, plo, plen, &bufs[1 - b], <list>keeps[1 - b])
                    if r >= 0:
                        return r
                if m == 0:
                    return lo                   # a key out of order: the rest is sorted
                lastlen = c.ka.lens[m - 1]
                memcpy(last, c.ka.data + c.ka.offs[m - 1], lastlen)
                self.check_alive()
                self.store.busy += 1
                if pipe.threaded:
                    pipe_post(&pipe, c, m)
                else:
                    with nogil:
                        pipe_post(&pipe, c, m)
                pending = True
                wrote = True
                plo = lo
                plen = hi - lo
                if m < hi - lo:
                    break                       # a key out of order: the rest is sorted
                lo = hi
                b = 1 - b
            if pending:
                pending = False
                r = self.pipe_result(&pipe, plo, plen, &bufs[b], <list>keeps[b])
                if r >= 0:
                    return r
            return lo
        except BaseException:
            if pending:
                with nogil:
                    pipe_wait(&pipe)
                self.store.busy -= 1
            if wrote and pipe.rc >= 0 and sp[0] != NO_SAVEPOINT:
                self.rollback(sp[0])
            raise
        finally:
            if piped:
                with nogil:
                    pipe_stop(&pipe)
            put_chunk_free(&bufs[0])
            put_chunk_free(&bufs[1])
            free(last)

    cdef Py_ssize_t pipe_result(self, put_pipe* p, Py_ssize_t plo, Py_ssize_t plen,
                                put_chunk* c, list keep) except -2:
        """Wait for the chunk put_ascending posted last (items plo .. plo+plen-1, in c, its
        objects held by keep) to be written.  -1 to go on, or the count of items written
        when the rest is to be sorted; raises the engine's error."""
        cdef Py_ssize_t i
        with nogil:
            pipe_wait(p)
        self.store.busy -= 1
        if p.rc < 0:
            raise_error(&p.err)
        if not p.bulk and not p.can_withdraw:
            # the bulk load took items plo .. plo+taken-1; the rest is read whole and
            # sorted before any of it is written (nothing to withdraw then)
            return plo + p.taken
        if p.m < plen:
            return plo + p.m                    # a key out of order: the rest is sorted
        if not c.plain:
            # objects whose release may run Python code: let go of them while no write runs
            for i in range(PUT_CHUNK):
                keep[i] = None
            self.check_alive()
        return -1

    cdef bint bulk_begin(self, uint32_t tid, keyarray* ka, list pairs, Py_ssize_t n) except -1:
        """Whether this call's items, whose first chunk (in ka) ascends, start a bulk load
        (see vc_txn_bulk_begin); the last item's key, when it is a plain (bytes, value)
        pair, tells whether the range is free that far."""
        cdef unsigned char lastkey[MAX_KEY + TID_LEN]
        cdef const unsigned char* lastp = NULL
        cdef uint32_t lastlen = 0
        cdef Py_ssize_t kl
        cdef vc_err err
        cdef int rc
        pair = pairs[n - 1]
        if PyTuple_CheckExact(pair) and PyTuple_GET_SIZE(pair) == 2:
            k = (<tuple>pair)[0]
            if PyBytes_CheckExact(k):
                kl = PyBytes_GET_SIZE(k)
                if 1 <= kl <= MAX_KEY:
                    put_tid(lastkey, tid)
                    memcpy(lastkey + TID_LEN, PyBytes_AS_STRING(k), <size_t>kl)
                    lastp = lastkey
                    lastlen = <uint32_t>(kl + TID_LEN)
        err.code = VC_E_NONE
        with nogil:
            rc = vc_txn_bulk_begin(self.t, ka.data, ka.lens[0], lastp, lastlen, &err)
        if rc < 0:
            raise_error(&err)
        return rc == 1

    cdef int put_sorted(self, uint32_t tid, list pairs, Py_ssize_t lo, Py_ssize_t n,
                        bint wrote, size_t sp) except -1:
        """put_many's items lo..n: all read first, then written in key order (a stable
        radix sort, so a repeated key still ends with its last value) without the GIL.
        wrote: put_ascending wrote the items before lo, to be withdrawn (from sp) if an
        item here is bad."""
        cdef Py_ssize_t cnt = n - lo
        cdef keyarray ka
        cdef const unsigned char** vptrs = NULL
        cdef uint32_t* vlens = NULL
        cdef uint32_t* order = NULL
        cdef list keep
        cdef vc_err err
        cdef int rc = 0
        memset(&ka, 0, sizeof(ka))
        try:
            try:
                keep = [None] * cnt
                vptrs = <const unsigned char**>malloc(<size_t>(cnt if cnt else 1) * sizeof(void*))
                vlens = <uint32_t*>malloc(<size_t>(cnt if cnt else 1) * sizeof(uint32_t))
                order = <uint32_t*>malloc(<size_t>(cnt if cnt else 1) * sizeof(uint32_t))
                if vptrs == NULL or vlens == NULL or order == NULL:
                    raise MemoryError()
                keyarray_init(&ka, cnt)
                pairs_fill(&ka, tid, pairs, n, lo, n, vptrs, vlens, keep, lo)
                self.check_alive()            # reading the items may have run Python code
            except BaseException:
                if wrote:
                    self.rollback(sp)
                raise
            err.code = VC_E_NONE
            self.store.busy += 1
            with nogil:
                # applied in key order (cache-friendly skip-list inserts)
                if keyarray_order(&ka, order) < 0:
                    rc = -2
                else:
                    rc = put_apply(self.t, &ka, order, vptrs, vlens, cnt, &err)
            self.store.busy -= 1
            if rc == -2:
                raise MemoryError("out of memory sorting a put_many batch")
            if rc < 0:
                raise_error(&err)
            return 0
        finally:
            keyarray_free(&ka)
            free(vptrs)
            free(vlens)
            free(order)

    cdef void rollback(self, size_t sp) noexcept:
        """Withdraw this transaction's writes since savepoint sp (see put_ascending); if
        that is no longer possible, the transaction can no longer commit."""
        if self.ended or self.t == NULL or self.store.db == NULL or self.store.closing:
            return
        if vc_txn_rollback(self.t, sp) < 0:
            self.t.doomed = True

    def delete_many(self, table, keys):
        """delete_many(table, keys) -> int: how many of the keys existed."""
        cdef uint32_t tid
        cdef Py_ssize_t n, i
        cdef keyarray ka
        cdef const unsigned char* v
        cdef size_t vlen
        cdef vc_err err
        cdef int rc = 0
        cdef Py_ssize_t existed = 0
        self.check_write()
        tid = self.tid(table, True)
        keys = keys if PyList_CheckExact(keys) else list(keys)   # a list is read in place
        n = len(keys)
        memset(&ka, 0, sizeof(ka))
        try:
            keyarray_fill(&ka, tid, keys)
            err.code = VC_E_NONE
            self.check()               # the loops above ran Python code
            self.in_use = True
            self.store.busy += 1
            with nogil:
                for i in range(n):
                    rc = vc_txn_get(self.t, ka.data + ka.offs[i], ka.lens[i], &v, &vlen, &err)
                    if rc < 0:
                        break
                    if rc == VC_OK:
                        existed += 1
                    rc = vc_txn_write(self.t, ka.data + ka.offs[i], ka.lens[i], NULL, 0, VC_DEL, &err)
                    if rc < 0:
                        break
            self.in_use = False
            self.store.busy -= 1
            if rc < 0:
                raise_error(&err)
            return existed
        finally:
            keyarray_free(&ka)

    # ---- end

    def commit(self):
        """commit() -> None

        Make the transaction's writes durable (with sync="full") and visible.
        ConflictError if another transaction committed a write to the same key first;
        ClosedError if the transaction already ended.
        """
        cdef vc_err err
        cdef int rc
        cdef bint handoff
        self.check()
        if self.is_snapshot:
            self.abort()
            return
        err.code = VC_E_NONE
        self.in_use = True
        self.store.busy += 1
        # a commit that waits for a flush takes part in the GIL hand-off (vc_spin.h)
        handoff = (self.t.db.sync_mode == VC_SYNC_FULL and self.t.db.wal != NULL
                   and (self.t.nwrites > 0 or self.t.nruns > 0))
        with nogil:
            if handoff:
                vc_gil_give(&gil_baton)
            rc = vc_txn_commit(self.t, &err)
            if handoff:
                vc_gil_claim(&gil_baton, GIL_CLAIM_SPIN_NS)
        self.in_use = False
        self.store.busy -= 1
        self.ended = True
        if rc < 0:
            raise_error(&err)

    def abort(self):
        """abort() -> None: discard the transaction; nothing happens if it already ended."""
        if self.ended:
            return
        if self.store.db == NULL or self.store.closing:
            self.ended = True
            self.t = NULL
            return
        if self.in_use:
            raise Error("the transaction is in use by another thread")
        vc_txn_abort(self.t)
        self.ended = True


cdef class Snapshot(Txn):
    """A read-only transaction at a fixed point in time.  Use store.snapshot()."""
    pass


# ---------------------------------------------------------------- iterators

cdef class RangeIterator:
    """Iterates a key range in order; valid while its transaction is open.

    Entries are fetched in blocks, each with the GIL released.  A block holds references
    to the entries where they lie (pinned leaves, memtable nodes), so each key and value
    is copied once, into its bytes object.  A write by the same transaction makes the
    iterator drop its block and continue after the last key it returned, so it sees that
    write if the write lies ahead.
    """

    cdef vc_iter* it
    cdef Txn txn
    cdef bint keys_only
    cdef bint reverse
    cdef bint owns_txn           # made by Table.range: ends its snapshot when exhausted
    cdef bint finished
    cdef int strip               # bytes of table id to cut from returned keys
    cdef vc_iref* refs           # the current block
    cdef size_t refs_cap         # entries refs has room for
    cdef vc_buf spill            # values of the block read from overflow pages
    cdef size_t pos              # next entry in refs
    cdef size_t left             # entries of the block not yet returned
    cdef Py_ssize_t last_pos     # index in refs of the entry returned last, -1 if none
    cdef size_t batch            # entries per refill, grows up to RANGE_BLOCK_MAX
    cdef uint64_t wgen           # txn.t.wgen when the block was fetched
    cdef tuple result            # the (key, value) returned last
    cdef tuple result_prev       # the one returned before it: either is refilled when only
                                 # this iterator holds it
    cdef int result_misses       # steps at which the caller still held both

    def __cinit__(self):
        self.it = NULL
        self.refs = NULL
        self.refs_cap = 0
        self.finished = True
        memset(&self.spill, 0, sizeof(vc_buf))
        self.last_pos = -1
        self.batch = RANGE_BLOCK_FIRST

    cdef int setup(self, Txn txn, const unsigned char* lo, uint32_t lolen, const unsigned char* hi,
                   uint32_t hilen, bint reverse, bint keys_only, int strip) except -1:
        """Position on the range and fetch the first block, in one release of the GIL."""
        cdef vc_err err
        cdef int rc
        cdef size_t count = 0
        self.txn = txn
        self.keys_only = keys_only
        self.reverse = reverse
        self.strip = strip
        self.it = <vc_iter*>malloc(sizeof(vc_iter))
        self.refs = <vc_iref*>malloc(self.batch * sizeof(vc_iref))
        if self.it == NULL or self.refs == NULL:
            raise MemoryError()
        self.refs_cap = self.batch
        err.code = VC_E_NONE
        txn.in_use = True
        txn.store.busy += 1
        with nogil:
            rc = vc_iter_init(self.it, txn.t, lo, lolen, hi, hilen, reverse, &err)
            if rc >= 0:
                rc = vc_iter_fill_refs(self.it, self.refs, self.batch, &self.spill, keys_only,
                                       &count, &err)
        txn.in_use = False
        txn.store.busy -= 1
        self.finished = False
        if rc < 0:
            self.finish()
            raise_error(&err)
        self.block_fetched(count)
        return 0

    cdef inline bint store_open(self):
        return self.txn is not None and self.txn.store is not None \
            and self.txn.store.db != NULL and not self.txn.store.closing

    cdef void finish(self):
        if self.finished:
            return
        self.finished = True
        self.left = 0
        self.result = None               # the last pairs (a value may be large) are not kept
        self.result_prev = None
        if self.it != NULL and self.store_open():
            vc_iter_close(self.it)       # also drops the block's pins
        if self.owns_txn:
            self.txn.abort()

    def __dealloc__(self):
        if self.it != NULL:
            if not self.finished and self.store_open():
                vc_iter_close(self.it)
            free(self.it)
            self.it = NULL
        free(self.refs)
        self.refs = NULL
        vc_buf_free(&self.spill)

    def __iter__(self):
        return self

    cdef int reseek(self) except -1:
        """The transaction wrote since the block was fetched, so the block may be stale:
        start again after the entry returned last (from the bounds, if none was)."""
        cdef vc_err err
        cdef vc_iref* r
        cdef const unsigned char* k
        cdef unsigned char lo[1032]
        cdef unsigned char hi[1032]
        cdef uint32_t lolen = self.it.lolen, hilen = self.it.hilen
        cdef int rc
        memcpy(lo, self.it.lo, lolen)
        memcpy(hi, self.it.hi, hilen)
        if self.last_pos >= 0:
            # the block's pins (or its spill buffer) still hold the key
            r = &self.refs[self.last_pos]
            k = r.key if r.key != NULL else <const unsigned char*>self.spill.data + r.voff
            if self.reverse:
                memcpy(hi, k, r.klen)
                hilen = r.klen
            else:
                memcpy(lo, k, r.klen)
                lo[r.klen] = 0
                lolen = r.klen + 1
        vc_iter_close(self.it)
        self.left = 0
        self.last_pos = -1
        err.code = VC_E_NONE
        rc = vc_iter_init(self.it, self.txn.t, lo, lolen, hi, hilen, self.reverse, &err)
        self.wgen = self.txn.t.wgen
        if rc < 0:
            self.finish()
            raise_error(&err)
        return 0

    cdef inline void block_fetched(self, size_t count):
        self.pos = 0
        self.left = count
        self.last_pos = -1
        self.wgen = self.txn.t.wgen
        if self.batch < RANGE_BLOCK_MAX:
            self.batch *= 2

    cdef int refill(self) except -1:
        cdef vc_err err
        cdef int rc
        cdef size_t count = 0
        cdef Txn txn = self.txn
        cdef vc_iref* grown
        txn.check()
        if self.refs_cap < self.batch:
            grown = <vc_iref*>realloc(self.refs, self.batch * sizeof(vc_iref))
            if grown == NULL:
                raise MemoryError()
            self.refs = grown
            self.refs_cap = self.batch
        err.code = VC_E_NONE
        txn.in_use = True
        txn.store.busy += 1
        with nogil:
            rc = vc_iter_fill_refs(self.it, self.refs, self.batch, &self.spill, self.keys_only,
                                   &count, &err)
        txn.in_use = False
        txn.store.busy -= 1
        if rc < 0:
            self.finish()
            raise_error(&err)
        self.block_fetched(count)
        return 0

    def __next__(self):
        cdef vc_iref* r
        cdef const char* k
        cdef const char* v
        if self.finished:
            if self.txn is not None and (self.txn.ended or self.txn.store.db == NULL) and not self.owns_txn:
                raise ClosedError("the iterator's transaction has ended")
            raise StopIteration
        if self.txn.ended or self.txn.store.db == NULL or self.txn.store.closing:
            self.finished = True
            raise ClosedError("the iterator's transaction has ended")
        if self.txn.t.wgen != self.wgen:
            self.reseek()
        if self.left == 0:
            self.refill()
            if self.left == 0:
                self.finish()
                raise StopIteration
        r = &self.refs[self.pos]
        self.last_pos = <Py_ssize_t>self.pos
        self.pos += 1
        self.left -= 1
        if r.key != NULL:
            k = <const char*>r.key
            v = <const char*>(r.value if r.value != NULL else self.spill.data + r.voff)
        else:
            k = <const char*>self.spill.data + r.voff
            v = k + r.klen
        key = PyBytes_FromStringAndSize(k + self.strip, r.klen - self.strip)
        if self.keys_only:
            return key
        return self.pair(key, PyBytes_FromStringAndSize(v, r.vlen))

    cdef inline tuple pair(self, object key, object value):
        """(key, value), in a tuple returned before when nothing but this iterator holds it
        any more: a scan then makes two objects per entry instead of three.  The last two
        are kept, so that a loop that holds each pair until it has the next (`for pair in
        it`, a generator expression) finds the one before free, as well as one that drops
        each at once (`for k, v in it`, as CPython's dict items iterator expects).  A
        caller that keeps its pairs (a list) gets new ones, and after PAIR_MISSES_MAX such
        steps the iterator stops keeping them."""
        cdef tuple t
        cdef void* old_key
        cdef void* old_value
        if not VC_PAIR_REUSE or self.result_misses >= PAIR_MISSES_MAX:
            return (key, value)                         # (this caller keeps its pairs)
        if self.result_prev is not None and Py_REFCNT_PTR(<void*>self.result_prev) == 1:
            t = self.result_prev
        elif self.result is not None and Py_REFCNT_PTR(<void*>self.result) == 1:
            t = self.result
            self.result = self.result_prev              # (t becomes the last again below)
        else:
            if self.result is not None:
                self.result_misses += 1
                if self.result_misses >= PAIR_MISSES_MAX:   # (or holds each until it has
                    self.result = None                      # the next two): stop holding
                    self.result_prev = None
                    return (key, value)
            self.result_prev = self.result
            self.result = (key, value)
            return self.result
        # t (held here, and by result_prev or result until now) becomes the last
        self.result_prev = self.result
        self.result = t
        old_key = PyTuple_GET_ITEM_PTR(<void*>t, 0)
        old_value = PyTuple_GET_ITEM_PTR(<void*>t, 1)
        Py_INCREF_PTR(<void*>key)               # the tuple's references
        Py_INCREF_PTR(<void*>value)
        PyTuple_SET_ITEM_PTR(<void*>t, 0, <void*>key)
        PyTuple_SET_ITEM_PTR(<void*>t, 1, <void*>value)
        Py_DECREF_PTR(old_key)
        Py_DECREF_PTR(old_value)
        if not PyObject_GC_IsTracked(t):        # the collector untracks tuples of bytes
            PyObject_GC_Track(t)
        return t

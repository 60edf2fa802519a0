# MVCC core.  No Python objects; every function is nogil and returns a status.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, UINT64_MAX
from libc.stdlib cimport malloc, calloc, realloc, free, qsort
from libc.string cimport memcpy, memset, memcmp, strlen
from libc.stdio cimport snprintf
from libc.errno cimport errno, ENOENT

cdef extern from "<errno.h>" nogil:
    enum:
        EWOULDBLOCK
        ETIMEDOUT
from posix.unistd cimport close
from posix.fcntl cimport open as c_open, O_RDWR, O_RDONLY, O_CREAT
from posix.stat cimport struct_stat, stat as c_stat
from posix.stdlib cimport posix_memalign

from velocore._common cimport (vc_err, vc_fail, vc_fail_errno, vc_buf, vc_buf_reserve, vc_buf_free,
                               vc_u32vec, vc_u32vec_push, vc_u32vec_free,
                               vc_crc32c, vc_prefetch, vc_add_u64_relaxed, vc_budget_take,
                               vc_pages_alloc_backed, vc_huge_free,
                               VC_OK, VC_NOTFOUND, VC_E_IO, VC_E_CORRUPT, VC_E_NOMEM,
                               VC_E_CONFLICT, VC_E_LOCKED, VC_E_READONLY, VC_E_CLOSED, VC_E_INVALID,
                               VC_E_NOFILE, VC_E_NONE,
                               vc_load_ptr, vc_store_ptr, vc_load_u64, vc_store_u64,
                               vc_load_int_relaxed, vc_store_int_relaxed, vc_cas_ptr,
                               vc_fetch_add_size, vc_add_int_sc, vc_load_int_sc, vc_store_int_sc,
                               vc_max_u64_relaxed, vc_min_u64_relaxed, vc_fetch_add_u64, vc_cas_int, sched_yield,
                               VC_TS_ABORTED, pthread_cond_init, pthread_cond_destroy, vc_now_ns,
                               vc_cond_init_monotonic,
                               pthread_cond_wait, pthread_cond_broadcast, pthread_cond_signal,
                               pthread_rwlock_init,
                               pthread_rwlock_destroy, pthread_rwlock_rdlock, pthread_rwlock_wrlock,
                               pthread_rwlock_unlock, pthread_create, pthread_join,
                               vc_load_u64_sc, vc_store_u64_sc, vc_seq_bump, vc_load_u32_relaxed,
                               vc_fence_sc,
                               vc_load_u64_relaxed, vc_load_ptr_relaxed, vc_store_u32_relaxed,
                               vc_store_u64_relaxed, vc_store_ptr_relaxed,
                               pthread_mutex_init, pthread_mutex_destroy, pthread_mutex_lock,
                               pthread_mutex_trylock, pthread_mutex_unlock, vc_sub_u64_relaxed,
                               vc_fence_acquire, VC_POISON, VC_UNPOISON, vc_prefetch_w,
                               vc_load_size_relaxed)
from velocore._pager cimport (vc_pager, vc_meta, vc_pager_open, vc_pager_close, vc_pager_commit_meta, vc_pager_hits,
                              vc_pager_reclaim, vc_page_release, vc_page_repin, VC_NO_FRAME,
                              vc_page_free, vc_pager_release_held, vc_pager_sync, VC_PAGE_SIZE)
from velocore._btree cimport (vc_op, vc_key_cmp, vc_load_be64, vc_tree_get, vc_tree_merge,
                              vc_run, vc_run_new, vc_run_add, vc_run_finish, vc_run_free,
                              vc_tree_splice, vc_run_scan, vc_cursor,
                              vc_tree_check, vc_hints_derive,
                              vc_lookup, vc_lookup_init, vc_lookup_get,
                              vc_cursor_init, vc_cursor_close, vc_cursor_seek_ge, vc_cursor_seek_lt,
                              vc_cursor_next, vc_cursor_prev, vc_cursor_key, vc_cursor_value,
                              vc_cursor_entry, vc_cursor_prefetch,
                              VC_MAX_KEY)
from velocore._wal cimport (vc_wal, vc_wal_fill_fn, vc_wal_open, vc_wal_append_stream, vc_wal_sync_to,
                            vc_wal_flush, vc_wal_durable_lsn, vc_wal_rotate, vc_wal_remove_before,
                            vc_wal_close, VC_SYNC_FULL, VC_SYNC_OFF)

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass
    struct dirent:
        char d_name[256]
    DIR* opendir(const char* name)
    dirent* readdir(DIR* d)
    int closedir(DIR* d)

cdef extern from "<sys/file.h>" nogil:
    int flock(int fd, int operation)
    enum:
        LOCK_EX
        LOCK_NB
        LOCK_UN

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    enum:
        CLOCK_REALTIME

cdef extern from "<pthread.h>" nogil:
    int pthread_cond_timedwait(pthread_cond_t* c, pthread_mutex_t* m, const timespec* t)

cdef extern from "vc_bloom.h" nogil:
    uint64_t vc_key_hash(const unsigned char* k, uint32_t n)
    int vc_bloom_init(vc_bloom* b, size_t nbytes)
    void vc_bloom_free(vc_bloom* b)
    void vc_bloom_add(vc_bloom* b, uint64_t h)
    bint vc_bloom_maybe(const vc_bloom* b, uint64_t h)

cdef enum:
    TXN_GET_TREE = 2        # txn_get_mem: not decided by the memtables
    LOG_CHUNK = 1 << 20     # a commit's log record is encoded and written in pieces this big
    ARENA_CHUNK = 1 << 20   # an arena's first chunk (malloc)
    ARENA_MAPPED = 2 << 20  # each later chunk: a mapping backed at once (vc_pages_alloc_backed)
    MINDEX_LEVEL = 2        # a memtable index holds the nodes linked at this level (1 in 16)
    MINDEX_FIRST = 4096     # nodes in a shared memtable before its first index
    ARENA_BIG = 1 << 18
    GC_EVERY = 64           # commits between GC rounds (recomputing the horizon)
    CKPT_DEAD_MIN = 4096    # aborted nodes that can make a checkpoint due (checkpoint_due)
    POOL_IDLE_NS = 1000000000   # spare arena chunks none took for this long are unmapped
    POOL_AHEAD = 2          # spare chunks the pool's filler keeps mapped for growing memtables

# An aborted version that counted its node in its memtable's `dead` (mark_shared); no
# transaction id comes near it.
cdef uint64_t VC_OWNER_DEAD = 0xFFFFFFFFFFFFFFFF

# vc_mindex.up of an entry with no taller tower before it
cdef uint32_t MINDEX_NONE = 0xFFFFFFFF


# ---------------------------------------------------------------- arena

cdef void* arena_new_chunk(vc_arena* a, size_t n, bint make_current) noexcept nogil:
    """A chunk for n bytes (caller holds a.lock for shared arenas); returns n bytes of it.

    An arena's first chunk comes from malloc: most write sets (small transactions) touch
    a few hundred bytes of it.  Each chunk after it is a 2 MiB mapping backed when it is
    mapped (vc_pages_alloc_backed): an arena that outgrows one chunk (a shared memtable,
    a large transaction's write set) fills it, so one system call backs it instead of a
    page fault for each 4 KiB as the bump pointer reaches it.  Its pages are the
    kernel's default size, not huge pages: under a hypervisor that backs guest memory
    lazily, fresh huge pages cost far more to back (docs/performance.md, W1b).  A
    memtable's arena first takes a spare chunk of its store's pool: memory already
    backed, by a retired memtable (see arena_free) or by the pool's filler, which maps
    chunks ahead of the writers in a thread of its own (pool_fill_main), so that a writer
    filling a memtable seldom waits for the kernel to zero 2 MiB."""
    cdef size_t size = n if n > ARENA_BIG else ARENA_CHUNK
    cdef size_t mapped = 0
    cdef vc_arena_chunk* c = NULL
    cdef vc_arena_chunk* head
    if size == ARENA_CHUNK and vc_load_ptr(<void* const*>&a.head) != NULL:
        c = pool_take(a.pool)
        if c == NULL:
            c = <vc_arena_chunk*>vc_pages_alloc_backed(ARENA_MAPPED)
            if c != NULL and a.pool != NULL:
                pthread_mutex_lock(&a.pool.lock)
                a.pool.inuse += 1
                pthread_mutex_unlock(&a.pool.lock)
        if c != NULL:
            mapped = ARENA_MAPPED
            size = ARENA_MAPPED - sizeof(vc_arena_chunk)
    if c == NULL:
        c = <vc_arena_chunk*>malloc(sizeof(vc_arena_chunk) + size)
        if c == NULL:
            return NULL
    c.size = size
    c.used = n
    c.mapped = mapped
    c.ahead = 0
    a.bytes += sizeof(vc_arena_chunk) + size
    head = <vc_arena_chunk*>vc_load_ptr(<void* const*>&a.head)
    if make_current or head == NULL:
        c.next = head
        vc_store_ptr(<void**>&a.head, c)
    else:
        # a big block gets its own chunk behind the one being filled
        c.next = head.next
        vc_store_ptr(<void**>&head.next, c)
    return <unsigned char*>c + sizeof(vc_arena_chunk)


cdef void* arena_alloc(vc_arena* a, size_t n) noexcept nogil:
    """Single-threaded bump allocation (write sets)."""
    cdef vc_arena_chunk* c = a.head
    cdef void* p
    n = (n + 7) & ~(<size_t>7)
    if c == NULL or c.used + n > c.size:
        return arena_new_chunk(a, n, n <= ARENA_BIG)
    p = <unsigned char*>c + sizeof(vc_arena_chunk) + c.used
    c.used += n
    return p


cdef void* arena_alloc_mt(vc_arena* a, size_t n) noexcept nogil:
    """Bump allocation that many writers may call at once (shared memtables)."""
    cdef vc_arena_chunk* c
    cdef size_t off
    cdef void* p
    n = (n + 7) & ~(<size_t>7)
    if n > ARENA_BIG:
        pthread_mutex_lock(&a.lock)
        p = arena_new_chunk(a, n, False)
        pthread_mutex_unlock(&a.lock)
        return p
    while True:
        c = <vc_arena_chunk*>vc_load_ptr(<void* const*>&a.head)
        if c != NULL:
            off = vc_fetch_add_size(&c.used, n)
            if off + n <= c.size:
                return <unsigned char*>c + sizeof(vc_arena_chunk) + off
        pthread_mutex_lock(&a.lock)
        if <vc_arena_chunk*>vc_load_ptr(<void* const*>&a.head) == c:
            p = arena_new_chunk(a, n, True)
            pthread_mutex_unlock(&a.lock)
            return p
        pthread_mutex_unlock(&a.lock)    # someone else added a chunk: try it


cdef vc_arena_chunk* pool_pop(vc_chunk_pool* p) noexcept nogil:
    """Unlink the newest spare chunk, readable again (p.lock held, or the store closing);
    NULL if there is none."""
    cdef vc_arena_chunk* c = p.head
    if c != NULL:
        p.head = c.next
        p.count -= 1
        VC_UNPOISON(<unsigned char*>c + sizeof(vc_arena_chunk), c.mapped - sizeof(vc_arena_chunk))
    return c


cdef inline size_t pool_ahead(vc_chunk_pool* p) noexcept nogil:
    """How many spare chunks the filler keeps: POOL_AHEAD, never more than the pool's cap."""
    return POOL_AHEAD if POOL_AHEAD < p.cap else p.cap


cdef bint pool_unlink_ahead(vc_chunk_pool* p, vc_arena_chunk** drop) noexcept nogil:
    """Move the newest spare chunk the filler mapped to the list *drop, readable again
    (p.lock held); False if the pool holds none."""
    cdef vc_arena_chunk** at = &p.head
    cdef vc_arena_chunk* c
    while at[0] != NULL and not at[0].ahead:
        at = &at[0].next
    c = at[0]
    if c == NULL:
        return False
    at[0] = c.next
    p.count -= 1
    VC_UNPOISON(<unsigned char*>c + sizeof(vc_arena_chunk), c.mapped - sizeof(vc_arena_chunk))
    c.next = drop[0]
    drop[0] = c
    return True


cdef vc_arena_chunk* pool_take(vc_chunk_pool* p) noexcept nogil:
    """A spare 2 MiB chunk of the pool for an arena (NULL: none, or no pool).  Either
    way a memtable is growing: the filler is asked to top the spares up."""
    cdef vc_arena_chunk* c
    if p == NULL:
        return NULL
    pthread_mutex_lock(&p.lock)
    c = pool_pop(p)
    if c != NULL:
        p.inuse += 1
        p.taken += 1
        if not c.ahead:
            p.reused += 1
    if p.filler_running and p.count < pool_ahead(p) and not p.fill_want:
        p.fill_want = 1
        pthread_cond_signal(&p.fill_cond)
    pthread_mutex_unlock(&p.lock)
    return c


cdef void* pool_fill_main(void* arg) noexcept nogil:
    """The filler: each time a writer takes a chunk (pool_take), map chunks until the pool
    holds pool_ahead() spares.  The kernel zeroes and backs them here, beside the writers
    instead of in their path (see docs/performance.md, W2).  A spare none
    takes is unmapped by the checkpointer's idle rule (pool_release_idle), which the filler
    wakes after a round; a mapping that fails ends the round, and the writers map their
    own chunks (and report running out of memory) as without a filler."""
    cdef vc_db* db = <vc_db*>arg
    cdef vc_chunk_pool* p = &db.chunks
    cdef vc_arena_chunk* c
    cdef bint added
    pthread_mutex_lock(&p.lock)
    while not p.fill_stop:
        if not p.fill_want:
            pthread_cond_wait(&p.fill_cond, &p.lock)
            continue
        added = False
        while not p.fill_stop and p.count < pool_ahead(p):
            pthread_mutex_unlock(&p.lock)
            c = <vc_arena_chunk*>vc_pages_alloc_backed(ARENA_MAPPED)
            pthread_mutex_lock(&p.lock)
            if c == NULL:
                break
            c.size = ARENA_MAPPED - sizeof(vc_arena_chunk)
            c.used = 0
            c.mapped = ARENA_MAPPED
            c.ahead = 1
            VC_POISON(<unsigned char*>c + sizeof(vc_arena_chunk), c.mapped - sizeof(vc_arena_chunk))
            c.next = p.head
            p.head = c
            p.count += 1
            p.mapped_ahead += 1
            added = True
        p.fill_want = 0
        if added:
            # the checkpointer times how long spares stay untaken; it may be waiting
            # without a deadline (none were spare).  Lock order: ckpt_sig_lock, then p.lock
            pthread_mutex_unlock(&p.lock)
            pthread_mutex_lock(&db.ckpt_sig_lock)
            pthread_cond_broadcast(&db.ckpt_sig_cond)
            pthread_mutex_unlock(&db.ckpt_sig_lock)
            pthread_mutex_lock(&p.lock)
    pthread_mutex_unlock(&p.lock)
    return NULL


cdef void stop_worker(pthread_mutex_t* lock, pthread_cond_t* cond, int* stop, pthread_t thread,
                      bint* running) noexcept nogil:
    """Ask a background thread that sleeps on cond under lock to exit (*stop), and join
    it; nothing if it is not running (the checkpointer, the pool's filler)."""
    if not running[0]:
        return
    pthread_mutex_lock(lock)
    stop[0] = 1
    pthread_cond_broadcast(cond)
    pthread_mutex_unlock(lock)
    pthread_join(thread, NULL)
    running[0] = False


cdef void pool_drain(vc_chunk_pool* p) noexcept nogil:
    """Unmap every spare chunk (the store is closing)."""
    cdef vc_arena_chunk* c = pool_pop(p)
    while c != NULL:
        vc_huge_free(c, c.mapped)
        c = pool_pop(p)


cdef uint64_t pool_peek(vc_chunk_pool* p, size_t* count) noexcept nogil:
    """The pool's take count (`taken`), and in count the chunks spare now."""
    cdef uint64_t taken
    pthread_mutex_lock(&p.lock)
    count[0] = p.count
    taken = p.taken
    pthread_mutex_unlock(&p.lock)
    return taken


cdef void pool_release_idle(vc_chunk_pool* p, uint64_t seen) noexcept nogil:
    """Unmap every spare chunk, unless one was taken since the take count was `seen`
    (pool_peek): the store's writers have gone quiet, so what a checkpoint left spare
    goes back to the system instead of waiting for the next retire or close()."""
    cdef vc_arena_chunk* drop = NULL
    cdef vc_arena_chunk* c
    pthread_mutex_lock(&p.lock)
    if p.taken == seen:
        c = pool_pop(p)
        while c != NULL:
            c.next = drop
            drop = c
            c = pool_pop(p)
    pthread_mutex_unlock(&p.lock)
    while drop != NULL:                 # unmapped outside the lock
        c = drop
        drop = c.next
        vc_huge_free(c, c.mapped)


cdef void arena_free(vc_arena* a) noexcept nogil:
    """Free every chunk.  With a pool (a shared memtable's arena), the mapped chunks go to
    it instead, backed as they are, for the memtables that follow: a store writing steadily
    retires a memtable at each checkpoint and fills a new one of about the same size, and
    zeroing fresh memory is much of a write's cost (see docs/performance.md, W2).  The
    pool keeps only what the live memtables would need to grow as large as this one was
    (its chunks less the ones they hold already, at most `cap`), and unmaps the rest: the
    store never holds more arena memory than it did while this memtable was alive."""
    cdef vc_arena_chunk* c = a.head
    cdef vc_arena_chunk* nx
    cdef vc_arena_chunk* spare = NULL
    cdef vc_arena_chunk* drop = NULL
    cdef vc_chunk_pool* p = a.pool
    cdef size_t nspare = 0, keep
    while c != NULL:
        nx = c.next
        if p != NULL and c.mapped == ARENA_MAPPED:
            c.next = spare
            spare = c
            nspare += 1
        elif c.mapped:
            vc_huge_free(c, c.mapped)
        else:
            free(c)
        c = nx
    if p != NULL:
        pthread_mutex_lock(&p.lock)
        p.inuse -= nspare
        keep = nspare - p.inuse if nspare > p.inuse else 0
        if keep > p.cap:
            keep = p.cap
        # the retired chunks are kept before the filler's: both are backed, and each one
        # kept is a chunk the filler need not map again
        while p.count + nspare > keep and pool_unlink_ahead(p, &drop):
            pass
        while spare != NULL:
            c = spare
            spare = c.next
            if p.count < keep:
                VC_POISON(<unsigned char*>c + sizeof(vc_arena_chunk), c.mapped - sizeof(vc_arena_chunk))
                c.ahead = 0
                c.next = p.head
                p.head = c
                p.count += 1
            else:
                c.next = drop
                drop = c
        while p.count > keep:            # older spares beyond the new bound
            c = pool_pop(p)
            c.next = drop
            drop = c
        pthread_mutex_unlock(&p.lock)
        while drop != NULL:             # unmapped outside the lock
            c = drop
            drop = c.next
            vc_huge_free(c, c.mapped)
    a.head = NULL
    a.bytes = 0


# ---------------------------------------------------------------- skip list memtable

cdef size_t bloom_bytes_for(uint64_t checkpoint_bytes) noexcept nogil:
    """Filter size for a memtable that grows to about checkpoint_bytes of log: ~8 bits per
    key at ~64 log bytes a key (a few % false positives when full), 64 KiB to 64 MiB."""
    cdef uint64_t b = checkpoint_bytes // 64
    if b < (64 << 10):
        b = 64 << 10
    if b > (64 << 20):
        b = 64 << 20
    return <size_t>b


cdef vc_memtable* mem_new(uint64_t gen, bint shared, size_t bloom_bytes=0,
                          vc_chunk_pool* pool=NULL) noexcept nogil:
    cdef vc_memtable* m = NULL
    cdef vc_node* h
    # aligned so that the read-mostly first cache line is a cache line of its own
    if posix_memalign(<void**>&m, 64, sizeof(vc_memtable)) != 0:
        return NULL
    memset(m, 0, sizeof(vc_memtable))
    if shared and bloom_bytes:
        if vc_bloom_init(&m.bloom, bloom_bytes) < 0:
            free(m)
            return NULL
        if vc_bloom_init(&m.bloom_small, 32 << 10) < 0:
            vc_bloom_free(&m.bloom)
            free(m)
            return NULL
    pthread_mutex_init(&m.arena.lock, NULL)
    pthread_mutex_init(&m.free_lock, NULL)
    m.arena.pool = pool
    h = <vc_node*>arena_alloc(&m.arena, sizeof(vc_node) + VC_SL_MAX * sizeof(vc_link))
    if h == NULL:
        pthread_mutex_destroy(&m.arena.lock)
        pthread_mutex_destroy(&m.free_lock)
        vc_bloom_free(&m.bloom)
        vc_bloom_free(&m.bloom_small)
        free(m)
        return NULL
    h.versions = NULL
    links_clear(sl_tower(h))
    h.key = NULL
    h.klen = 0
    h.kprefix = 0
    h.height = VC_SL_MAX
    m.head = h
    m.height = 1
    m.rng = <uint32_t>(<uint64_t>0x9E3779B9U ^ (gen * <uint64_t>2654435761U))
    if m.rng == 0:
        m.rng = 1
    m.gen = gen
    m.shared = shared
    m.index_next = MINDEX_FIRST if shared else 0xFFFFFFFFFFFFFFFF
    return m


cdef void mem_free(vc_memtable* m) noexcept nogil:
    cdef vc_bigblk* b
    cdef vc_bigblk* nb
    if m != NULL:
        b = m.big
        while b != NULL:
            nb = b.next
            free(b)
            b = nb
        m.big = NULL
        arena_free(&m.arena)
        pthread_mutex_destroy(&m.arena.lock)
        pthread_mutex_destroy(&m.free_lock)
        vc_bloom_free(&m.bloom)
        vc_bloom_free(&m.bloom_small)
        free(m)


cdef inline void* mem_alloc(vc_memtable* m, size_t n) noexcept nogil:
    if m.shared:
        return arena_alloc_mt(&m.arena, n)
    return arena_alloc(&m.arena, n)


# ---------------------------------------------------------------- version memory (shared memtables)
#
# Versions the GC prunes (see chain_prune) are reused by later versions of the same
# memtable: small ones go to a free list of their 32-byte size class, big ones are
# malloc'ed one by one and freed at once.  Everything goes when the memtable does.

cdef inline size_t version_bytes(uint32_t vlen) noexcept nogil:
    return sizeof(vc_version) + vlen


cdef inline size_t link_offset() noexcept nogil:
    """Offset of the free-list link (`shared`) in a version: the one word of a free
    version left unpoisoned under AddressSanitizer."""
    cdef vc_version probe
    return <size_t>(<unsigned char*>&probe.shared - <unsigned char*>&probe)


cdef vc_version* version_alloc(vc_memtable* m, size_t n) noexcept nogil:
    """n bytes for a version of a shared memtable: a pruned block of its size class, new
    arena space rounded up to the class, or (big) its own malloc.  Any number of writers."""
    cdef size_t c
    cdef vc_version* v
    cdef vc_bigblk* b
    if n > VC_GC_SMALL_MAX:
        b = <vc_bigblk*>malloc(sizeof(vc_bigblk) + n)
        if b == NULL:
            return NULL
        b.size = n
        b.prev = NULL
        pthread_mutex_lock(&m.arena.lock)
        b.next = m.big
        if m.big != NULL:
            m.big.prev = b
        m.big = b
        m.arena.bytes += sizeof(vc_bigblk) + n
        pthread_mutex_unlock(&m.arena.lock)
        return <vc_version*>(<unsigned char*>b + sizeof(vc_bigblk))
    c = (n + VC_GC_CLASS - 1) // VC_GC_CLASS
    if vc_load_ptr_relaxed(<void* const*>&m.free_heads[c]) != NULL:
        # a mutex, not a lock-free pop: a CAS pop could be fooled by ABA (the block popped,
        # reused, pruned and pushed back between another popper's two reads)
        pthread_mutex_lock(&m.free_lock)
        v = m.free_heads[c]
        if v != NULL:
            vc_store_ptr_relaxed(<void**>&m.free_heads[c], v.shared)
        pthread_mutex_unlock(&m.free_lock)
        if v != NULL:
            VC_UNPOISON(v, c * VC_GC_CLASS)
            return v
    return <vc_version*>arena_alloc_mt(&m.arena, c * VC_GC_CLASS)


cdef uint64_t versions_free(vc_memtable* m, vc_version* v) noexcept nogil:
    """Give back a list of pruned versions (linked by `shared`) that no reader can reach
    any more; returns how many."""
    cdef vc_version* nx
    cdef vc_bigblk* b
    cdef size_t n, c, link = link_offset()
    cdef uint64_t count = 0
    pthread_mutex_lock(&m.free_lock)
    while v != NULL:
        nx = v.shared
        n = version_bytes(v.vlen)
        if n > VC_GC_SMALL_MAX:
            b = <vc_bigblk*>(<unsigned char*>v - sizeof(vc_bigblk))
            pthread_mutex_lock(&m.arena.lock)
            if b.prev != NULL:
                b.prev.next = b.next
            else:
                m.big = b.next
            if b.next != NULL:
                b.next.prev = b.prev
            m.arena.bytes -= sizeof(vc_bigblk) + b.size
            pthread_mutex_unlock(&m.arena.lock)
            free(b)
        else:
            c = (n + VC_GC_CLASS - 1) // VC_GC_CLASS
            v.shared = m.free_heads[c]
            vc_store_ptr_relaxed(<void**>&m.free_heads[c], v)
            VC_POISON(v, link)
            VC_POISON(<unsigned char*>v + link + sizeof(void*), c * VC_GC_CLASS - link - sizeof(void*))
        count += 1
        v = nx
    pthread_mutex_unlock(&m.free_lock)
    return count


cdef inline vc_link* sl_tower(vc_node* x) noexcept nogil:
    """x's links, level 0 first: right after the node (next to kprefix, which a search
    reads with them)."""
    return <vc_link*>(<unsigned char*>x + sizeof(vc_node))


cdef inline vc_node* sl_next(vc_node* x, int level) noexcept nogil:
    return <vc_node*>vc_load_ptr(<void* const*>&sl_tower(x)[level].node)


cdef inline vc_node* sl_next_kp(vc_node* x, int level, uint64_t* lb) noexcept nogil:
    """x's next node at level, and in *lb a lower bound of its key prefix: read after the
    link (acquire), it is at most the prefix of the node returned (see vc_link)."""
    cdef vc_node* nx = <vc_node*>vc_load_ptr(<void* const*>&sl_tower(x)[level].node)
    lb[0] = vc_load_u64_relaxed(&sl_tower(x)[level].kp)
    return nx


cdef void links_clear(vc_link* links) noexcept nogil:
    """A head's tower: every level ends at once."""
    cdef int i
    for i in range(VC_SL_MAX):
        links[i].node = NULL
        links[i].kp = UINT64_MAX


cdef inline uint64_t key_prefix(const unsigned char* key, uint32_t klen) noexcept nogil:
    """The first 8 bytes as a big-endian integer, zero-padded.  Padded prefixes order like
    the keys wherever they differ (a key that ends early is a prefix of the other, and
    sorts first either way), so only equal prefixes need the full comparison."""
    cdef unsigned char b[8]
    if klen >= 8:
        return vc_load_be64(key)
    memset(b, 0, 8)
    memcpy(b, key, klen)
    return vc_load_be64(b)


cdef inline bint node_lt(vc_node* n, const unsigned char* key, uint32_t klen, uint64_t kp) noexcept nogil:
    """n's key < key (kp: key_prefix(key))."""
    if n.kprefix != kp:
        return n.kprefix < kp
    return vc_key_cmp(n.key, n.klen, key, klen) < 0


cdef inline bint link_lt(vc_node* nx, uint64_t lb, const unsigned char* key, uint32_t klen,
                         uint64_t kp) noexcept nogil:
    """nx, found with bound lb (sl_next_kp), is a node whose key < key.  A bound above kp
    answers no without loading nx: the step most searches end each level with."""
    return nx != NULL and lb <= kp and node_lt(nx, key, klen, kp)


# ---------------------------------------------------------------- memtable index
#
# A search of a big memtable from its head takes ~33 steps (4 per level over ~9 levels),
# each a dependent load; the steps above level 1 are most of the time of a put_many of
# scattered keys (vc_txn_group_fingers).  The index is a sorted array of the nodes linked
# at level MINDEX_LEVEL, with their key prefixes and tower heights: a binary search over
# the prefixes (a few hundred KiB, mostly cached) finds the last node sorting before a key,
# and its chain of earlier taller towers gives a node to start from at every level above.
# The search then takes about one step per level above MINDEX_LEVEL and walks the levels
# below as before.
#
# The index is a snapshot: built by one writer when the memtable's node count reaches
# index_next (then doubled), published with a release store, never changed, freed with the
# memtable's arena.  Nodes are never removed, so every entry stays a node sorting before
# the keys it is used for; nodes linked since it was built are found by the walk from it,
# as a finger search finds them (sl_find_preds_f).  An entry was linked at MINDEX_LEVEL and
# so at every level below; at a level above, a tower still being linked by its writer is a
# node whose link there points forward to a greater key, so a walk from it stays ordered,
# and at worst a write linked after it is left out of that shortcut level (searches then
# take a step more; level 0, which decides, holds every node).

cdef void mindex_build(vc_memtable* m) noexcept nogil:
    """Build and publish a fresh index of shared memtable m (one builder at a time; the
    others go on with the index they have)."""
    cdef uint64_t nk
    cdef size_t cap, n = 0, top = 0
    cdef vc_node* x
    cdef vc_mindex* ix = NULL
    cdef unsigned char* p
    cdef uint32_t* stack
    if not vc_cas_int(&m.index_building, 0, 1):
        return
    nk = vc_load_u64_relaxed(&m.nkeys)
    # about nk / 4**MINDEX_LEVEL nodes are linked there: room for four times that
    cap = <size_t>(nk >> (2 * MINDEX_LEVEL)) * 4 + 256
    stack = <uint32_t*>malloc(cap * sizeof(uint32_t))
    if stack != NULL:
        ix = <vc_mindex*>arena_alloc_mt(&m.arena, sizeof(vc_mindex) + cap * (
            sizeof(uint64_t) + sizeof(vc_node*) + sizeof(uint32_t) + sizeof(uint8_t)))
    if ix != NULL:
        p = <unsigned char*>ix + sizeof(vc_mindex)
        ix.kp = <uint64_t*>p
        ix.node = <vc_node**>(p + cap * sizeof(uint64_t))
        ix.up = <uint32_t*>(p + cap * (sizeof(uint64_t) + sizeof(vc_node*)))
        ix.height = <uint8_t*>(p + cap * (sizeof(uint64_t) + sizeof(vc_node*) + sizeof(uint32_t)))
        x = sl_next(m.head, MINDEX_LEVEL)
        while x != NULL and n < cap:
            ix.kp[n] = x.kprefix
            ix.node[n] = x
            ix.height[n] = <uint8_t>x.height
            # the nearest earlier entry with a taller tower (a stack of ever taller ones)
            while top > 0 and ix.height[stack[top - 1]] <= x.height:
                top -= 1
            ix.up[n] = stack[top - 1] if top > 0 else MINDEX_NONE
            stack[top] = <uint32_t>n
            top += 1
            n += 1
            x = sl_next(x, MINDEX_LEVEL)
        ix.n = <uint32_t>n
        if x == NULL:
            vc_store_ptr(<void**>&m.index, ix)
        # else more tall towers than room (never expected): keys past the last entry
        # would walk far from it, so the index in use stays (the arena keeps this one)
    free(stack)
    vc_store_u64_relaxed(&m.index_next, nk * 2)     # (out of memory: try again then)
    vc_store_int_sc(&m.index_building, 0)


cdef inline Py_ssize_t mindex_find(const vc_mindex* ix, uint64_t kp) noexcept nogil:
    """The last entry whose key prefix is below kp, -1 if none.  A smaller prefix means a
    smaller key (see key_prefix), so that entry's node sorts before every key with prefix
    kp; entries with an equal prefix are passed over (no full comparison)."""
    cdef Py_ssize_t j
    mindex_find_many(ix, &kp, 1, &j)
    return j


cdef struct mindex_chain:   # a search's entry in the index and the taller towers before it
    vc_node* node[VC_SL_MAX]    # heights strictly rising along it
    uint64_t kp[VC_SL_MAX]
    uint8_t height[VC_SL_MAX]
    int len
    int pos                 # node[pos:] are the towers taller than the last level asked


cdef inline void mindex_find_many(const vc_mindex* ix, const uint64_t* kps, int n,
                                  Py_ssize_t* out) noexcept nogil:
    """mindex_find of n keys at once: branch-free binary searches (lower bounds) in step,
    so that each step's n loads (independent of one another) are in flight together."""
    cdef const uint64_t* kp = ix.kp
    cdef size_t left = ix.n, half, b
    cdef int i
    if left == 0:
        for i in range(n):
            out[i] = -1
        return
    for i in range(n):
        out[i] = 0
    while left > 1:
        half = left >> 1
        for i in range(n):
            b = <size_t>out[i]
            out[i] = <Py_ssize_t>(b + half if kp[b + half] < kps[i] else b)
        left -= half
    for i in range(n):
        b = <size_t>out[i]
        out[i] = <Py_ssize_t>b + (1 if kp[b] < kps[i] else 0) - 1


cdef inline void mindex_chain_init(mindex_chain* c, const vc_mindex* ix, uint64_t kp) noexcept nogil:
    """The chain for a key with prefix kp (empty without an index), its nodes prefetched."""
    mindex_chain_at(c, ix, mindex_find(ix, kp) if ix != NULL else -1)


cdef inline void mindex_chain_at(mindex_chain* c, const vc_mindex* ix, Py_ssize_t j) noexcept nogil:
    """The chain from index entry j (-1: none), its nodes prefetched."""
    cdef vc_node* nd
    c.len = 0
    while j >= 0 and c.len < VC_SL_MAX:
        nd = ix.node[j]
        vc_prefetch(&sl_tower(nd)[0])       # the links a search reads at the levels
        vc_prefetch(&sl_tower(nd)[MINDEX_LEVEL])    # it starts there
        c.node[c.len] = nd
        c.kp[c.len] = ix.kp[j]
        c.height[c.len] = ix.height[j]
        c.len += 1
        j = -1 if ix.up[j] == MINDEX_NONE else <Py_ssize_t>ix.up[j]
    c.pos = c.len


cdef inline vc_node* mindex_start(mindex_chain* c, vc_node* x, vc_node* head, int level) noexcept nogil:
    """Where a search at `level` starts: x (where the level above left it), or the chain's
    nearest tower linked at that level when that one sorts after x."""
    cdef vc_node* nd
    while c.pos > 0 and c.height[c.pos - 1] > level:
        c.pos -= 1
    if c.pos < c.len:
        nd = c.node[c.pos]
        if nd != x and (x == head or c.kp[c.pos] > x.kprefix):
            return nd
    return x


cdef inline int read_start(vc_memtable* m, const unsigned char* key, uint64_t kp,
                           vc_node** x) noexcept nogil:
    """Where a read's search starts (*x, and the level returned).  A read needs no path
    above: with an index it starts at level MINDEX_LEVEL from the last entry before its
    key, or from the last entry of all when key is NULL (the entry is linked there, so at
    every level below); without one, at the head's top level."""
    cdef vc_mindex* ix = <vc_mindex*>vc_load_ptr(<void* const*>&m.index)
    cdef Py_ssize_t j
    x[0] = m.head
    if ix != NULL and ix.n > 0:
        j = <Py_ssize_t>ix.n - 1 if key == NULL else mindex_find(ix, kp)
        if j >= 0:
            x[0] = ix.node[j]
            return MINDEX_LEVEL
    return vc_load_int_relaxed(&m.height) - 1


cdef vc_node* sl_find_ge(vc_memtable* m, const unsigned char* key, uint32_t klen) noexcept nogil:
    """First node with key >= key (key NULL: the first node)."""
    cdef vc_node* x
    cdef vc_node* nx
    cdef int level
    cdef uint64_t kp, lb
    if key == NULL:
        return sl_next(m.head, 0)
    kp = key_prefix(key, klen)
    level = read_start(m, key, kp, &x)
    nx = NULL
    while level >= 0:
        nx = sl_next_kp(x, level, &lb)
        while link_lt(nx, lb, key, klen, kp):
            x = nx
            nx = sl_next_kp(x, level, &lb)
        level -= 1
    # nx is the first node >= key that the level-0 walk compared.  Reading sl_tower(x)[0] again
    # here could return a node inserted since, which sorts before key: a false "absent".
    return nx


cdef vc_node* sl_find_lt(vc_memtable* m, const unsigned char* key, uint32_t klen) noexcept nogil:
    """Last node with key < key (key NULL: the last node); NULL if none.  A reverse scan
    calls it at every step (no backward links): from the index, a short walk each."""
    cdef vc_node* x
    cdef vc_node* nx
    cdef uint64_t kp = key_prefix(key, klen) if key != NULL else 0
    cdef uint64_t lb
    cdef int level = read_start(m, key, kp, &x)
    while level >= 0:
        nx = sl_next_kp(x, level, &lb)
        while nx != NULL and (key == NULL or link_lt(nx, lb, key, klen, kp)):
            x = nx
            nx = sl_next_kp(x, level, &lb)
        level -= 1
    return NULL if x == m.head else x


cdef inline vc_node* sl_find_eq(vc_memtable* m, const unsigned char* key, uint32_t klen) noexcept nogil:
    cdef vc_node* n
    cdef uint64_t h
    # an empty memtable (the usual state right after a checkpoint) costs one load; a reader
    # that must see a node saw its commit published after the node was linked (and the
    # flag set).  Both filters hold every key: the small one answers while it is sparse
    if vc_load_int_relaxed(&m.nonempty) == 0:
        return NULL
    if m.bloom.words != NULL:
        h = vc_key_hash(key, klen)
        if not vc_bloom_maybe(&m.bloom_small, h) or not vc_bloom_maybe(&m.bloom, h):
            return NULL
    n = sl_find_ge(m, key, klen)
    if n != NULL and n.klen == klen and memcmp(n.key, key, klen) == 0:
        return n
    return NULL


cdef void sl_find_preds(vc_memtable* m, const unsigned char* key, uint32_t klen,
                        vc_node** preds, vc_link* succs) noexcept nogil:
    """For every level: the last node < key, and the link to the node after it (that node
    and the bound its predecessor's link gave for it, see vc_link)."""
    cdef vc_node* x = m.head
    cdef vc_node* nx
    cdef int level = VC_SL_MAX - 1
    cdef int top = vc_load_int_relaxed(&m.height)
    cdef uint64_t kp = key_prefix(key, klen)
    cdef uint64_t lb
    cdef mindex_chain c
    while level >= top:               # levels above the height in use: only the head
        preds[level] = x
        succs[level].node = sl_next_kp(x, level, &succs[level].kp)
        level -= 1
    mindex_chain_init(&c, <vc_mindex*>vc_load_ptr(<void* const*>&m.index), kp)
    while level >= 0:
        if c.len:
            x = mindex_start(&c, x, m.head, level)
        nx = sl_next_kp(x, level, &lb)
        while link_lt(nx, lb, key, klen, kp):
            x = nx
            nx = sl_next_kp(x, level, &lb)
        preds[level] = x
        succs[level].node = nx
        succs[level].kp = lb
        level -= 1


cdef inline bint finger_partial(const vc_finger* f) noexcept nogil:
    """f holds a partial path (see vc_finger): a full one always has the head, at least,
    at the top level."""
    return f.path[VC_SL_MAX - 1] == NULL


cdef void sl_find_preds_f(vc_memtable* m, const unsigned char* key, uint32_t klen,
                          vc_node** preds, vc_link* succs, vc_finger* f) noexcept nogil:
    """sl_find_preds, starting from the writer's previous search path when key sorts after
    the node that search ended on (keys written in ascending order: a sorted load or a
    sorted batch).  Nodes are never removed, so every node of the old path still sorts
    before key and is a valid place to resume a level's walk; nodes inserted since are
    found by the walk.  Cost: a few comparisons on cache-hot nodes instead of a descent."""
    cdef vc_node* x = m.head
    cdef vc_node* nx
    cdef vc_node* c
    cdef bint moved = False            # x was walked past path[level + 1]
    cdef int level = VC_SL_MAX - 1
    cdef int top
    cdef uint64_t kp = key_prefix(key, klen)
    cdef uint64_t lb
    if f.mem != m or f.last == NULL or not node_lt(f.last, key, klen, kp):
        sl_find_preds(m, key, klen, preds, succs)
        return
    if finger_partial(f):
        # a grouped search's path of the lower levels only (vc_txn_group_fingers): the
        # levels above are left unset, for a node that will not reach them (sl_link
        # searches again for one that does); used while key's place is within reach of
        # its top level's node
        level = MINDEX_LEVEL
        nx = sl_next_kp(f.path[level], level, &lb)
        if link_lt(nx, lb, key, klen, kp):
            sl_find_preds(m, key, klen, preds, succs)
            return
        for top in range(MINDEX_LEVEL + 1, VC_SL_MAX):
            preds[top] = NULL
            succs[top].node = NULL
            succs[top].kp = UINT64_MAX
    elif vc_load_ptr_relaxed(<void* const*>&m.index) != NULL and not finger_covers(f, m, key, klen):
        # far past the finger (a scattered write, not the next of a sorted run): the index
        # reaches the key sooner
        sl_find_preds(m, key, klen, preds, succs)
        return
    else:
        top = vc_load_int_relaxed(&m.height)
        while level >= top:
            preds[level] = x
            succs[level].node = sl_next_kp(x, level, &succs[level].kp)
            level -= 1
    while level >= 0:
        c = f.path[level]
        if c != m.head and c != x:
            # the path is ordered: path[level] is at or after path[level + 1]
            if x == m.head or not moved or vc_key_cmp(c.key, c.klen, x.key, x.klen) > 0:
                x = c
                moved = False
        nx = sl_next_kp(x, level, &lb)
        while link_lt(nx, lb, key, klen, kp):
            x = nx
            moved = True
            nx = sl_next_kp(x, level, &lb)
        preds[level] = x
        succs[level].node = nx
        succs[level].kp = lb
        level -= 1


cdef inline bint succ_is_key(const vc_link* succ, const unsigned char* key, uint32_t klen) noexcept nogil:
    """The node a search found after key's place is key's own (its bound, above key's
    prefix, mostly answers no without loading it)."""
    cdef vc_node* n = succ.node
    return (n != NULL and succ.kp <= key_prefix(key, klen) and n.klen == klen
            and memcmp(n.key, key, klen) == 0)


cdef inline void finger_set(vc_finger* f, vc_memtable* m, vc_node* n, vc_node** preds) noexcept nogil:
    f.mem = m
    f.last = n
    memcpy(f.path, preds, VC_SL_MAX * sizeof(vc_node*))


cdef uint32_t random_height(vc_memtable* m, uint64_t key_hash) noexcept nogil:
    """Geometric tower height, p = 1/4.  Shared memtables use bits of the key's hash
    instead of a shared random state, so concurrent writers touch no common cache line."""
    cdef uint32_t r
    cdef int h = 1
    if m.shared:
        r = <uint32_t>((key_hash * <uint64_t>0x9E3779B97F4A7C15U) >> 32)
    else:
        r = m.rng
        r ^= r << 13
        r ^= r >> 17
        r ^= r << 5
        m.rng = r
    while h < VC_SL_MAX and (r & 3) == 0:
        h += 1
        r >>= 2
    return <uint32_t>h


cdef vc_node* sl_link(vc_memtable* m, vc_node** preds, vc_link* succs, const unsigned char* key,
                      uint32_t klen) noexcept nogil:
    """Insert a node for key, given the predecessors a search just found.  Lock-free: if
    another writer got there first, returns its node (nodes are never removed, so a CAS on
    each level's link is all it takes).  Each link's bound is lowered to the node's prefix
    before the CAS that points the link at it (see vc_link)."""
    cdef vc_node* n
    cdef uint32_t h, i
    cdef int cur
    cdef uint64_t kp
    cdef uint64_t kh = vc_key_hash(key, klen) if m.shared else 0
    h = random_height(m, kh)
    if preds[h - 1] == NULL:
        # a partial finger's path (sl_find_preds_f) does not reach this node's top level
        sl_find_preds(m, key, klen, preds, succs)
        if succ_is_key(&succs[0], key, klen):
            return succs[0].node
    if m.bloom.words != NULL:
        vc_bloom_add(&m.bloom, kh)    # before the node can be found (see vc_bloom.h)
        vc_bloom_add(&m.bloom_small, kh)
    n = <vc_node*>mem_alloc(m, sizeof(vc_node) + <size_t>h * sizeof(vc_link) + klen)
    if n == NULL:
        return NULL
    n.versions = NULL
    n.key = <unsigned char*>n + sizeof(vc_node) + <size_t>h * sizeof(vc_link)
    memcpy(n.key, key, klen)
    n.klen = klen
    n.height = h
    kp = key_prefix(key, klen)
    n.kprefix = kp
    while True:
        for i in range(h):             # no other thread can reach n yet
            sl_tower(n)[i].kp = succs[i].kp
            sl_tower(n)[i].node = succs[i].node
        vc_min_u64_relaxed(&sl_tower(preds[0])[0].kp, kp)
        if vc_cas_ptr(<void**>&sl_tower(preds[0])[0].node, succs[0].node, n):
            break
        sl_find_preds(m, key, klen, preds, succs)
        if succ_is_key(&succs[0], key, klen):
            return succs[0].node      # (the node allocated here stays unused in the arena)
    # level 0 links the node in; the upper levels are shortcuts, linked one by one
    for i in range(1, h):
        while True:
            vc_min_u64_relaxed(&sl_tower(preds[i])[i].kp, kp)
            if vc_cas_ptr(<void**>&sl_tower(preds[i])[i].node, succs[i].node, n):
                break
            sl_find_preds(m, key, klen, preds, succs)
            if succs[i].node == n:
                break
            # n can be read from now on (a search may start at it from the index): its
            # link moves back to a node sorting before the old one, its bound first
            vc_min_u64_relaxed(&sl_tower(n)[i].kp, succs[i].kp)
            vc_store_ptr(<void**>&sl_tower(n)[i].node, succs[i].node)
    cur = vc_load_int_relaxed(&m.height)
    while cur < <int>h:
        if vc_cas_int(&m.height, cur, <int>h):
            break
        cur = vc_load_int_relaxed(&m.height)
    if vc_fetch_add_u64(&m.nkeys, 1) + 1 >= vc_load_u64_relaxed(&m.index_next):
        mindex_build(m)
    if vc_load_int_relaxed(&m.nonempty) == 0:
        vc_store_int_relaxed(&m.nonempty, 1)   # once: later inserts leave the line alone
    return n


cdef vc_node* sl_upsert(vc_memtable* m, const unsigned char* key, uint32_t klen) noexcept nogil:
    """Find or insert the node for key (any number of concurrent writers)."""
    cdef vc_node* preds[VC_SL_MAX]
    cdef vc_link succs[VC_SL_MAX]
    sl_find_preds(m, key, klen, preds, succs)
    if succ_is_key(&succs[0], key, klen):
        return succs[0].node
    return sl_link(m, preds, succs, key, klen)


cdef vc_node* sl_upsert_f(vc_memtable* m, const unsigned char* key, uint32_t klen,
                          vc_finger* f) noexcept nogil:
    """sl_upsert with the writer's finger (see sl_find_preds_f)."""
    cdef vc_node* preds[VC_SL_MAX]
    cdef vc_link succs[VC_SL_MAX]
    cdef vc_node* n
    sl_find_preds_f(m, key, klen, preds, succs, f)
    if succ_is_key(&succs[0], key, klen):
        n = succs[0].node
    else:
        n = sl_link(m, preds, succs, key, klen)     # preds stay valid for n (see sl_link)
    if n != NULL:
        if preds[VC_SL_MAX - 1] != NULL:
            finger_set(f, m, n, preds)
        else:
            f.mem = NULL            # a partial path (above) is not kept as the finger
    return n


cdef vc_version* new_version(vc_memtable* m, uint64_t ts, uint64_t owner, int kind,
                             const unsigned char* value, uint32_t vlen) noexcept nogil:
    cdef vc_version* v = version_alloc(m, version_bytes(vlen)) if m.shared else \
        <vc_version*>mem_alloc(m, sizeof(vc_version) + vlen)
    cdef unsigned char* copy
    if v == NULL:
        return NULL
    v.commit_ts = ts
    v.owner = owner
    v.kind = <uint8_t>kind
    v.vlen = vlen
    v.value = NULL
    v.shared = NULL
    v.shared_mem = NULL
    v.older = NULL
    if kind == VC_PUT:
        copy = <unsigned char*>v + sizeof(vc_version)
        if vlen:
            memcpy(copy, value, vlen)
        v.value = copy
    return v


cdef int mem_push_version(vc_memtable* m, vc_node* n, vc_version* v) noexcept nogil:
    """Publish v at the head of n's chain (any number of concurrent pushers)."""
    cdef vc_version* head
    while True:
        head = <vc_version*>vc_load_ptr(<void* const*>&n.versions)
        v.older = head
        if vc_cas_ptr(<void**>&n.versions, head, v):
            break
    vc_fetch_add_u64(&m.nversions, 1)
    return 0


cdef int mem_add_version(vc_memtable* m, vc_node* n, uint64_t ts, int kind,
                         const unsigned char* value, uint32_t vlen) noexcept nogil:
    cdef vc_version* v = new_version(m, ts, 0, kind, value, vlen)
    if v == NULL:
        return -1
    return mem_push_version(m, n, v)


cdef inline uint64_t version_ts(vc_version* v) noexcept nogil:
    return vc_load_u64(&v.commit_ts)


cdef inline vc_version* visible(vc_node* n, uint64_t snapshot_ts) noexcept nogil:
    """Newest version committed at or before the snapshot; pending and aborted ones
    (and everything committed later) are invisible."""
    cdef vc_version* v = <vc_version*>vc_load_ptr(<void* const*>&n.versions)
    cdef uint64_t ts
    while v != NULL:
        ts = version_ts(v)
        if ts != VC_TS_PENDING and ts <= snapshot_ts:
            return v
        v = <vc_version*>vc_load_ptr(<void* const*>&v.older)    # the GC may move it
    return NULL


# ---------------------------------------------------------------- version GC
#
# A GC round (gc_refresh, every GC_EVERY commits) publishes the snapshots that matter:
# the smallest distinct snapshot_ts of live transactions and `live` = visible_ts when it
# began (every later transaction starts at or after it; see vc_txn_begin).  A version X
# of a chain is *needed* if some snapshot s reads it: ts(X) <= s < ts of the next newer
# committed version.  Whoever installs a pending version at a chain head prunes that
# chain (write-write conflicts let only one such owner exist per chain at a time; replay
# is single-threaded; copy_forward only pushes): versions no published snapshot and no
# snapshot >= live needs are unlinked, in runs ("gaps") between needed ones, each gap
# tagged with the ts of the needed version above it.
#
# Who can still be at a gap's version?  A walker passes a committed version only if its
# snapshot is below its ts, so a walker in the gap has snapshot < tag (a walker that
# loaded an older head did so before the version above was even installed, and so has
# an older snapshot still).  Once a published horizon (the oldest live snapshot, found
# by a scan after which every transaction has a snapshot >= it) reaches the tag, every
# such walker has ended and the gap can be freed.  Gaps below the version the oldest
# snapshot reads (the tail) qualify at once; gaps between live snapshots wait on the
# memtable's deferred list (still linked through `older`, so a walker in one goes on
# down to what it needs) until the snapshots older than them end.  Values handed out
# are those of needed versions, and the facade copies them before the call returns.
#
# Only the active memtable is pruned (inside the install's in-flight section, so no
# checkpoint can freeze it meanwhile): a checkpoint folds the newest version <= its own
# ts, which is >= every `live` published before the freeze, so it is never pruned.

cdef bint gc_read(vc_db* db, uint64_t* snaps, uint32_t* nsnaps, uint64_t* lim,
                  uint64_t* horizon) noexcept nogil:
    """The published round: snapshots ascending, *lim (every snapshot >= it may be in use),
    *horizon (the oldest snapshot).  False before the first round."""
    cdef uint64_t s1, s2, live
    cdef uint32_t i, n, more
    while True:
        s1 = vc_load_u64_sc(&db.gc_seq)
        if s1 & 1:
            sched_yield()
            continue
        live = vc_load_u64_relaxed(&db.gc_live)
        more = vc_load_u32_relaxed(&db.gc_more)
        n = vc_load_u32_relaxed(&db.gc_nsnaps)
        if n > VC_GC_SNAPS:
            n = VC_GC_SNAPS
        for i in range(n):
            snaps[i] = vc_load_u64_relaxed(&db.gc_snaps[i])
        vc_fence_acquire()
        s2 = vc_load_u64_sc(&db.gc_seq)
        if s1 == s2:
            break
    if n == 0:
        return False
    nsnaps[0] = n
    horizon[0] = snaps[0]
    lim[0] = live
    if more and snaps[n - 1] + 1 < live:
        lim[0] = snaps[n - 1] + 1      # unknown snapshots above the last one published
    return True


cdef void gc_add_snap(uint64_t* snaps, uint32_t* n, uint32_t* more, uint64_t s) noexcept nogil:
    """Insert s into the ascending, duplicate-free array of at most VC_GC_SNAPS values; when
    it is full the largest value drops out (*more records that)."""
    cdef uint32_t k = 0, i = n[0]
    while k < i and snaps[k] < s:
        k += 1
    if k < i and snaps[k] == s:
        return
    if i == VC_GC_SNAPS:
        more[0] = 1
        if k == i:
            return
        i -= 1
    while i > k:
        snaps[i] = snaps[i - 1]
        i -= 1
    snaps[k] = s
    if n[0] < VC_GC_SNAPS:
        n[0] += 1


cdef void gc_refresh(vc_db* db) noexcept nogil:
    """One GC round: publish the live snapshots (one round at a time; a busy lock skips)."""
    cdef uint64_t snaps[VC_GC_SNAPS]
    cdef uint32_t n = 0, more = 0, i
    cdef uint64_t target, s
    cdef vc_txn* t
    if pthread_mutex_trylock(&db.gc_lock) != 0:
        return
    target = vc_load_u64(&db.visible_ts)
    # published before the scan: a transaction whose slot the scan misses reads it in
    # vc_txn_begin and takes a snapshot >= target (Dekker, both sides seq_cst)
    vc_store_u64_sc(&db.gc_target, target)
    gc_add_snap(snaps, &n, &more, target)
    for i in range(VC_NSLOTS):
        s = vc_load_u64_sc(&db.slots[i].snapshot_ts)
        if s != 0:
            gc_add_snap(snaps, &n, &more, s - 1)
    pthread_mutex_lock(&db.reg_lock)      # the overflow list; its members begin under this lock
    t = db.txns
    while t != NULL:
        gc_add_snap(snaps, &n, &more, t.snapshot_ts)
        t = t.next
    pthread_mutex_unlock(&db.reg_lock)
    vc_seq_bump(&db.gc_seq)
    vc_store_u64_relaxed(&db.gc_live, target)
    vc_store_u64_relaxed(&db.gc_horizon, snaps[0])
    vc_store_u32_relaxed(&db.gc_more, more)
    vc_store_u32_relaxed(&db.gc_nsnaps, n)
    for i in range(n):
        vc_store_u64_relaxed(&db.gc_snaps[i], snaps[i])
    vc_seq_bump(&db.gc_seq)
    pthread_mutex_unlock(&db.gc_lock)


cdef void gap_dispose(vc_db* db, vc_memtable* m, vc_version* first, vc_version* last, uint64_t count,
                      uint64_t tag, uint64_t horizon) noexcept nogil:
    """A gap was unlinked from its chain: free it now if no walker can be in it, else defer it."""
    vc_sub_u64_relaxed(&m.nversions, count)
    last.shared = NULL
    if tag <= horizon:
        vc_fetch_add_u64(&db.versions_pruned, versions_free(m, first))
        return
    pthread_mutex_lock(&m.free_lock)
    if m.deferred_tail != NULL:
        m.deferred_tail.shared = first
    else:
        m.deferred = first
        vc_store_u64_relaxed(&m.deferred_tag, tag)
    m.deferred_tail = last
    vc_fetch_add_u64(&m.ndeferred, count)
    pthread_mutex_unlock(&m.free_lock)


cdef void deferred_sweep(vc_db* db, vc_memtable* m, uint64_t horizon) noexcept nogil:
    """Free the deferred versions at the front of m's list whose tag the horizon reached
    (the list is in unlink order, which is nearly tag order: one with a higher tag in front
    only delays the ones behind it)."""
    cdef vc_version* first
    cdef vc_version* last = NULL
    cdef vc_version* v
    cdef uint64_t count = 0
    cdef uint64_t tag = vc_load_u64_relaxed(&m.deferred_tag)
    if tag == 0 or tag > horizon:
        return
    pthread_mutex_lock(&m.free_lock)
    first = m.deferred
    v = first
    while v != NULL and v.owner <= horizon:
        last = v
        v = v.shared
        count += 1
    if last != NULL:
        last.shared = NULL
        m.deferred = v
        if v == NULL:
            m.deferred_tail = NULL
        vc_sub_u64_relaxed(&m.ndeferred, count)
    vc_store_u64_relaxed(&m.deferred_tag, v.owner if v != NULL else 0)
    pthread_mutex_unlock(&m.free_lock)
    if last != NULL:
        vc_fetch_add_u64(&db.versions_pruned, versions_free(m, first))


cdef inline void gap_push(vc_version** first, vc_version** last, vc_version* x) noexcept nogil:
    """Append x, just unlinked (or about to be), to the gap list being built through
    `shared` (see gap_dispose)."""
    x.shared = NULL
    if first[0] == NULL:
        first[0] = x
    else:
        last[0].shared = x
    last[0] = x


cdef void dead_run_prune(vc_db* db, vc_memtable* m, vc_version* head, uint64_t horizon) noexcept nogil:
    """Unlink the aborted versions right under head (the caller's own pending version),
    down to the chain's first version that is neither aborted nor an earlier, superseded
    write of head's own transaction (those stay linked: the write that superseded one
    marks it aborted only after this install returns, and the next install unlinks it).

    Without this a key written by transaction after transaction that abort (a retry loop
    on a hot key) keeps every aborted version until its memtable is checkpointed, and
    each write and read of it walks them all.  Every walker passes aborted versions,
    whatever its snapshot, so any transaction live now may be at one: the run is tagged
    visible_ts + 1, read after the unlink (SEQ_CST fence: a reader that loaded the old
    link took its snapshot before, so it is <= that visible_ts), and freed once the
    horizon passes it -- once every transaction live at the unlink has ended."""
    cdef vc_version* prev = head
    cdef vc_version* x = <vc_version*>vc_load_ptr(<void* const*>&head.older)
    cdef vc_version* first = NULL
    cdef vc_version* last = NULL
    cdef uint64_t count = 0, ts, tag, undead = 0
    cdef bint cut = False
    while x != NULL:
        ts = version_ts(x)
        if ts == VC_TS_ABORTED:
            if x.owner == VC_OWNER_DEAD:
                undead += 1           # it counted its node dead (mark_shared): take it back
            gap_push(&first, &last, x)
            count += 1
            cut = True
        elif ts == VC_TS_PENDING and x.owner == head.owner:
            if cut:
                vc_store_ptr(<void**>&prev.older, x)
                cut = False
            prev = x
        else:
            break
        x = <vc_version*>vc_load_ptr(<void* const*>&x.older)
    if count == 0:
        return
    if undead:
        vc_sub_u64_relaxed(&m.dead, undead)
    if cut:
        vc_store_ptr(<void**>&prev.older, x)
    vc_fence_sc()
    tag = vc_load_u64(&db.visible_ts) + 1
    x = first
    while x != NULL:
        x.owner = tag                 # aborted: nobody reads its owner any more
        x = x.shared
    gap_dispose(db, m, first, last, count, tag, horizon)


cdef void chain_prune(vc_db* db, vc_memtable* m, vc_version* head) noexcept nogil:
    """Unlink the versions of head's chain that no snapshot needs (see above).  Caller: the
    owner of the pending version `head`, inside the active memtable's in-flight section."""
    cdef uint64_t snaps[VC_GC_SNAPS]
    cdef uint32_t nsnaps
    cdef uint64_t lim, horizon, ts, prev_ts, kept_ts, count = 0
    cdef int j
    cdef bint drop
    cdef vc_version* kept
    cdef vc_version* x
    cdef vc_version* first = NULL
    cdef vc_version* last = NULL
    if gc_read(db, snaps, &nsnaps, &lim, &horizon):
        deferred_sweep(db, m, horizon)
        dead_run_prune(db, m, head, horizon)
    else:
        dead_run_prune(db, m, head, 0)    # before the first round: deferred until one
        return
    # the newest committed version: always needed (snapshots >= live read it or newer ones)
    kept = head
    while kept != NULL:
        ts = version_ts(kept)
        if ts != VC_TS_PENDING and ts != VC_TS_ABORTED:
            break
        kept = <vc_version*>vc_load_ptr(<void* const*>&kept.older)
    if kept == NULL:
        return
    kept_ts = ts
    prev_ts = ts
    j = <int>nsnaps - 1
    x = <vc_version*>vc_load_ptr(<void* const*>&kept.older)
    while x != NULL:
        ts = version_ts(x)
        if ts == VC_TS_PENDING:
            break                     # not expected below a committed version: leave the rest
        drop = True
        if ts != VC_TS_ABORTED:
            # x is what snapshots in [ts, prev_ts) read
            if prev_ts - 1 >= lim:
                drop = False
            else:
                while j >= 0 and snaps[j] > prev_ts - 1:
                    j -= 1
                if j >= 0 and snaps[j] >= ts:
                    drop = False
            prev_ts = ts
        if drop:
            x.owner = kept_ts         # the tag, should the gap be deferred
            gap_push(&first, &last, x)
            count += 1
        else:
            if first != NULL:
                vc_store_ptr(<void**>&kept.older, x)
                gap_dispose(db, m, first, last, count, kept_ts, horizon)
                first = NULL
                count = 0
            kept = x
            kept_ts = ts
        x = <vc_version*>vc_load_ptr(<void* const*>&x.older)
    if first != NULL:
        vc_store_ptr(<void**>&kept.older, x)
        gap_dispose(db, m, first, last, count, kept_ts, horizon)


cdef void chain_cut_replayed(vc_db* db, vc_memtable* m, vc_node* n) noexcept nogil:
    """Recovery: the version just replayed is committed and nobody reads yet, so every
    older version of the chain goes."""
    cdef vc_version* head = n.versions
    cdef vc_version* first = head.older
    cdef vc_version* v = first
    cdef uint64_t count
    if first == NULL:
        return
    head.older = NULL
    while v != NULL:
        v.shared = v.older
        v = v.older
    count = versions_free(m, first)
    vc_sub_u64_relaxed(&m.nversions, count)
    vc_fetch_add_u64(&db.versions_pruned, count)


# ---------------------------------------------------------------- open / close / recovery

cdef int encode_put(vc_buf* b, int kind, const unsigned char* key, uint32_t klen,
                    const unsigned char* value, uint32_t vlen) noexcept nogil:
    cdef size_t need = b.len + 1 + 4 + klen + (4 + vlen if kind == VC_PUT else 0)
    cdef unsigned char* p
    if vc_buf_reserve(b, need) < 0:
        return -1
    p = b.data + b.len
    p[0] = <unsigned char>kind
    memcpy(p + 1, &klen, 4)
    memcpy(p + 5, key, klen)
    if kind == VC_PUT:
        memcpy(p + 5 + klen, &vlen, 4)
        if vlen:
            memcpy(p + 9 + klen, value, vlen)
    b.len = need
    return 0


cdef struct replay_ctx:
    vc_db* db
    uint64_t ts


cdef int replay_entry(void* ctx, const unsigned char* key, uint32_t klen,
                      const unsigned char* value, uint32_t vlen, vc_err* err) noexcept nogil:
    cdef replay_ctx* rc = <replay_ctx*>ctx
    cdef vc_memtable* m = rc.db.view.active
    cdef vc_node* n = sl_upsert(m, key, klen)
    if n == NULL or mem_add_version(m, n, rc.ts, VC_PUT, value, vlen) < 0:
        return vc_fail(err, VC_E_NOMEM, "out of memory replaying the log")
    chain_cut_replayed(rc.db, m, n)
    return 0


cdef int replay_ingest(vc_db* db, uint64_t commit_ts, const unsigned char* payload,
                       size_t payload_len, size_t* off, vc_err* err) noexcept nogil:
    """A logged bulk load: `VC_INGEST | n u32 | n page ids u32 | n checksums u32`.  Its
    leaves are read back (the durable meta may list them as free or not count them yet:
    nothing reuses a page before recovery ends) into the memtable, as if logged key by key."""
    cdef uint32_t n
    cdef uint32_t* ids
    cdef replay_ctx ctx
    cdef int rc
    if off[0] + 5 > payload_len:
        return vc_fail(err, VC_E_CORRUPT, "log record ts=%llu: truncated bulk load",
                       <unsigned long long>commit_ts)
    memcpy(&n, payload + off[0] + 1, 4)
    if <size_t>n * 8 > payload_len - off[0] - 5:
        return vc_fail(err, VC_E_CORRUPT, "log record ts=%llu: bad bulk load length",
                       <unsigned long long>commit_ts)
    ids = <uint32_t*>malloc(<size_t>n * 8 + 8)
    if ids == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory replaying the log")
    memcpy(ids, payload + off[0] + 5, <size_t>n * 8)     # aligned copies of both arrays
    ctx.db = db
    ctx.ts = commit_ts
    rc = vc_run_scan(db.pager, ids, ids + n, n, replay_entry, &ctx, err)
    free(ids)
    off[0] += 5 + <size_t>n * 8
    if rc < 0:
        return -1
    if commit_ts > db.view.active.max_ts:
        db.view.active.max_ts = commit_ts
    return 0


cdef int replay_record(void* ctx, uint64_t commit_ts, const unsigned char* payload,
                       size_t payload_len, vc_err* err) noexcept nogil:
    """Install one logged transaction into the active memtable."""
    cdef vc_db* db = <vc_db*>ctx
    cdef size_t off = 0
    cdef uint32_t klen, vlen
    cdef int kind
    cdef const unsigned char* key
    cdef vc_node* n
    while off < payload_len:
        kind = payload[off]
        if kind == VC_INGEST:
            if replay_ingest(db, commit_ts, payload, payload_len, &off, err) < 0:
                return -1
            continue
        if (kind != VC_PUT and kind != VC_DEL) or off + 5 > payload_len:
            return vc_fail(err, VC_E_CORRUPT, "log record ts=%llu: bad operation at byte %llu",
                           <unsigned long long>commit_ts, <unsigned long long>off)
        memcpy(&klen, payload + off + 1, 4)
        if klen == 0 or klen > VC_MAX_KEY or off + 5 + klen > payload_len:
            return vc_fail(err, VC_E_CORRUPT, "log record ts=%llu: bad key length at byte %llu",
                           <unsigned long long>commit_ts, <unsigned long long>off)
        key = payload + off + 5
        off += 5 + klen
        vlen = 0
        if kind == VC_PUT:
            if off + 4 > payload_len:
                return vc_fail(err, VC_E_CORRUPT, "log record ts=%llu: truncated value",
                               <unsigned long long>commit_ts)
            memcpy(&vlen, payload + off, 4)
            if vlen > payload_len - off - 4:
                return vc_fail(err, VC_E_CORRUPT, "log record ts=%llu: bad value length",
                               <unsigned long long>commit_ts)
            off += 4
        n = sl_upsert(db.view.active, key, klen)
        if n == NULL or mem_add_version(db.view.active, n, commit_ts, kind, payload + off, vlen) < 0:
            return vc_fail(err, VC_E_NOMEM, "out of memory replaying the log")
        chain_cut_replayed(db, db.view.active, n)
        off += vlen
    if commit_ts > db.view.active.max_ts:
        db.view.active.max_ts = commit_ts
    if commit_ts > db.last_ts:
        db.last_ts = commit_ts
    return 0


cdef int vc_db_open(vc_db** out, const char* path, bint readonly, int sync_mode, size_t cache_bytes,
                    uint64_t checkpoint_bytes, vc_err* err) noexcept nogil:
    cdef vc_db* db = <vc_db*>calloc(1, sizeof(vc_db))
    cdef char lock_path[4200]
    cdef char seg_path[4200]
    cdef vc_meta meta
    cdef uint64_t last_ts = 0
    cdef struct_stat st
    if db == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory opening the store")
    out[0] = db
    db.lock_fd = -1
    db.readonly = readonly
    db.sync_mode = sync_mode
    db.checkpoint_bytes = checkpoint_bytes
    if posix_memalign(<void**>&db.slots, 64, VC_NSLOTS * sizeof(vc_slot)) != 0:
        db.slots = NULL
        return vc_fail(err, VC_E_NOMEM, "out of memory opening the store")
    memset(db.slots, 0, VC_NSLOTS * sizeof(vc_slot))
    pthread_mutex_init(&db.ckpt_sig_lock, NULL)
    vc_cond_init_monotonic(&db.ckpt_sig_cond)    # the checkpointer's timed waits
    pthread_mutex_init(&db.commit_lock, NULL)
    pthread_mutex_init(&db.run_lock, NULL)
    pthread_mutex_init(&db.reg_lock, NULL)
    pthread_mutex_init(&db.ckpt_lock, NULL)
    pthread_mutex_init(&db.gc_lock, NULL)
    pthread_mutex_init(&db.chunks.lock, NULL)
    pthread_cond_init(&db.chunks.fill_cond, NULL)
    db.chunks.cap = <size_t>((checkpoint_bytes * 4) // ARENA_MAPPED) + 1
    if path != NULL:
        snprintf(lock_path, sizeof(lock_path), "%s/LOCK", path)
        db.lock_fd = c_open(lock_path, O_RDWR | O_CREAT, 0o644)
        if db.lock_fd < 0 and readonly:
            db.lock_fd = c_open(lock_path, O_RDONLY)
        if db.lock_fd < 0:
            if errno == ENOENT:
                return vc_fail_errno(err, VC_E_NOFILE, errno, "%s", lock_path)
            return vc_fail_errno(err, VC_E_IO, errno, "%s", lock_path)
        if flock(db.lock_fd, LOCK_EX | LOCK_NB) < 0:
            if errno == EWOULDBLOCK:
                close(db.lock_fd)
                db.lock_fd = -1
                return vc_fail(err, VC_E_LOCKED, "%s is open elsewhere (lock held on %s)", path, lock_path)
            return vc_fail_errno(err, VC_E_IO, errno, "flock %s", lock_path)
    if vc_pager_open(&db.pager, path, readonly, cache_bytes, vc_hints_derive, &meta, err) < 0:
        return -1
    db.next_gen = 1
    pthread_rwlock_init(&db.mems_lock, NULL)
    pthread_mutex_init(&db.vis_lock, NULL)
    pthread_cond_init(&db.vis_cond, NULL)
    db.pub_ring = <vc_pub*>calloc(VC_PUB_RING, sizeof(vc_pub))
    if db.pub_ring == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory opening the store")
    db.view.active = mem_new(db.next_gen, True, bloom_bytes_for(db.checkpoint_bytes), &db.chunks)
    if db.view.active == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory opening the store")
    db.next_gen += 1
    db.mems = db.view.active
    db.view.root = meta.root
    db.view.height = meta.height
    db.view.tree_version = 1
    db.last_ts = meta.checkpoint_ts
    db.checkpoint_ts = meta.checkpoint_ts
    if path != NULL:
        # The meta names the first log segment it needs (a checkpoint creates it before
        # flipping the meta).  If it is gone while the log has moved past it, the newest
        # meta slot was damaged and an older one was chosen: commits would be lost.
        snprintf(seg_path, sizeof(seg_path), "%s/wal/%08llu.log", path,
                 <unsigned long long>meta.log_start_seg)
        if c_stat(seg_path, &st) < 0 and (meta.checkpoint_seq > 1 or
                                          wal_has_segment_after(path, meta.log_start_seg)):
            return vc_fail(err, VC_E_CORRUPT,
                           "%s: meta slot %u names log segment %08llu, which is missing: the newer "
                           "meta slot is damaged or the log was removed", db.pager.path,
                           meta.hdr.page_id, <unsigned long long>meta.log_start_seg)
        if vc_wal_open(&db.wal, path, sync_mode, readonly, meta.log_start_seg, meta.checkpoint_ts,
                       replay_record, db, &last_ts, err) < 0:
            return -1
    if last_ts > db.last_ts:
        db.last_ts = last_ts
    db.visible_ts = db.last_ts
    if db.wal != NULL:
        db.wal.on_durable = on_log_durable
        db.wal.on_durable_ctx = db
    if not readonly:
        if pthread_create(&db.ckpt_thread, NULL, checkpointer_main, db) != 0:
            return vc_fail(err, VC_E_NOMEM, "cannot start the checkpoint thread")
        db.ckpt_thread_running = True
        if pthread_create(&db.chunks.filler, NULL, pool_fill_main, db) != 0:
            return vc_fail(err, VC_E_NOMEM, "cannot start the memtable memory thread")
        db.chunks.filler_running = True
    return 0


cdef bint wal_has_segment_after(const char* path, uint64_t seg) noexcept nogil:
    cdef char dir_path[4200]
    cdef DIR* d
    cdef dirent* e
    cdef uint64_t n
    cdef int i
    cdef bint found = False
    snprintf(dir_path, sizeof(dir_path), "%s/wal", path)
    d = opendir(dir_path)
    if d == NULL:
        return False
    while True:
        e = readdir(d)
        if e == NULL:
            break
        n = 0
        i = 0
        while i < 8 and e.d_name[i] >= 48 and e.d_name[i] <= 57:
            n = n * 10 + <uint64_t>(e.d_name[i] - 48)
            i += 1
        if i == 8 and memcmp(e.d_name + 8, b".log", 5) == 0 and n > seg:
            found = True
            break
    closedir(d)
    return found


cdef void vc_db_close(vc_db* db) noexcept nogil:
    cdef uint32_t i
    cdef vc_txn* t
    cdef vc_txn* nx
    cdef vc_memtable* m
    cdef vc_memtable* mn
    cdef vc_err ignored
    if db == NULL:
        return
    vc_err_reset(&ignored)
    stop_worker(&db.ckpt_sig_lock, &db.ckpt_sig_cond, &db.ckpt_stop, db.ckpt_thread,
                &db.ckpt_thread_running)
    stop_worker(&db.chunks.lock, &db.chunks.fill_cond, &db.chunks.fill_stop, db.chunks.filler,
                &db.chunks.filler_running)
    # end every live transaction (the facade no longer touches them)
    t = db.txns
    while t != NULL:
        nx = t.next
        txn_release(t)
        free(t)
        t = nx
    db.txns = NULL
    if db.slots != NULL:
        for i in range(VC_NSLOTS):
            t = db.slots[i].txn
            if t != NULL:
                txn_release(t)
                free(t)
        free(db.slots)
        db.slots = NULL
    if db.wal != NULL:
        vc_wal_close(db.wal, &ignored)
        db.wal = NULL
    vc_pager_close(db.pager)
    m = db.mems
    while m != NULL:
        mn = m.older
        mem_free(m)
        m = mn
    pool_drain(&db.chunks)
    if db.lock_fd >= 0:
        flock(db.lock_fd, LOCK_UN)
        close(db.lock_fd)
    pthread_mutex_destroy(&db.commit_lock)
    pthread_mutex_destroy(&db.run_lock)
    for i in range(<uint32_t>db.nrunrecs):
        free(db.runrecs[i].lo)
        free(db.runrecs[i].hi)
    free(db.runrecs)
    pthread_mutex_destroy(&db.reg_lock)
    pthread_mutex_destroy(&db.ckpt_lock)
    pthread_mutex_destroy(&db.gc_lock)
    pthread_mutex_destroy(&db.chunks.lock)
    pthread_cond_destroy(&db.chunks.fill_cond)
    pthread_rwlock_destroy(&db.mems_lock)
    pthread_mutex_destroy(&db.ckpt_sig_lock)
    pthread_cond_destroy(&db.ckpt_sig_cond)
    pthread_mutex_destroy(&db.vis_lock)
    pthread_cond_destroy(&db.vis_cond)
    free(db.pub_ring)
    free(db)


cdef inline void vc_err_reset(vc_err* e) noexcept nogil:
    e.code = VC_E_NONE
    e.sys_errno = 0
    e.msg[0] = 0


cdef int db_fail(vc_db* db, vc_err* err) noexcept nogil:
    """A flush or checkpoint failed: refuse further writes (the store must be reopened)."""
    if not db.failed:
        snprintf(db.failed_msg, sizeof(db.failed_msg), "%s", err.msg)
        db.failed = 1
    return -1


# ---------------------------------------------------------------- transactions

cdef void txn_release(vc_txn* t) noexcept nogil:
    cdef size_t i
    for i in range(t.nruns):
        vc_run_free(t.runs[i], True)
    free(t.runs)
    t.runs = NULL
    t.nruns = t.runs_cap = 0
    if t.ws != NULL:
        mem_free(t.ws)
        t.ws = NULL
    free(t.wa)
    t.wa = NULL
    t.wa_len = t.wa_cap = 0
    t.wa_mode = False
    vc_buf_free(&t.scratch)
    vc_buf_free(&t.payload)
    if t.page_hits != 0:
        vc_add_u64_relaxed(&t.db.pager.unpinned_hits, t.page_hits)
        t.page_hits = 0
    t.state = VC_TXN_ENDED


cdef void view_publish_begin(vc_db* db) noexcept nogil:
    """Caller holds reg_lock (one publisher at a time)."""
    vc_seq_bump(&db.view_seq)


cdef void view_publish_end(vc_db* db) noexcept nogil:
    vc_seq_bump(&db.view_seq)


cdef inline void view_read(vc_db* db, vc_view* v) noexcept nogil:
    v.root = vc_load_u32_relaxed(&db.view.root)
    v.height = vc_load_u32_relaxed(&db.view.height)
    v.tree_version = vc_load_u64_relaxed(&db.view.tree_version)
    v.active = <vc_memtable*>vc_load_ptr_relaxed(<void* const*>&db.view.active)
    v.frozen = <vc_memtable*>vc_load_ptr_relaxed(<void* const*>&db.view.frozen)
    v.min_snap = vc_load_u64_relaxed(&db.view.min_snap)


cdef int vc_txn_begin(vc_db* db, bint readonly, vc_txn** out, vc_err* err) noexcept nogil:
    """Begin a transaction.  The common path takes no lock: a slot is claimed with a CAS
    and the view is copied under a seqlock; the slot's tree_version is published before
    the sequence is re-read, so reclaim() (which scans slots after a view changed) either
    sees this transaction or this transaction sees the new view and retries.  Likewise
    the slot's snapshot is published before gc_target is read: a GC round (which stores
    gc_target before it scans the slots) either sees this snapshot or this transaction
    sees the round's target and, if that is past its snapshot, takes a newer one."""
    cdef vc_txn* t = <vc_txn*>calloc(1, sizeof(vc_txn))
    cdef vc_slot* slot = NULL
    cdef uint64_t s1, s2, snap
    cdef uint32_t i, start
    if t == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory beginning a transaction")
    t.db = db
    t.readonly = readonly
    t.id = vc_fetch_add_u64(&db.next_txn_id, 1) + 1
    start = <uint32_t>((t.id * <uint64_t>0x9E3779B97F4A7C15U) >> 54)   # top 10 bits
    for i in range(VC_NSLOTS):
        slot = &db.slots[(start + i) & (VC_NSLOTS - 1)]
        if vc_load_ptr_relaxed(<void* const*>&slot.txn) == NULL and \
                vc_cas_ptr(<void**>&slot.txn, NULL, t):
            break
        slot = NULL
    if slot == NULL:
        # every slot is taken: the locked list
        pthread_mutex_lock(&db.reg_lock)
        while True:
            view_read(db, &t.view)
            t.snapshot_ts = vc_load_u64(&db.visible_ts)
            if t.snapshot_ts >= t.view.min_snap:
                break
            # the view's tree holds a bulk load not visible yet: wait until it is
            pthread_mutex_unlock(&db.reg_lock)
            await_visible(db, t.view.min_snap)
            pthread_mutex_lock(&db.reg_lock)
        t.next = db.txns
        if db.txns != NULL:
            db.txns.prev = t
        db.txns = t
        db.ntxns += 1
        pthread_mutex_unlock(&db.reg_lock)
        out[0] = t
        return 0
    while True:
        s1 = vc_load_u64_sc(&db.view_seq)
        if s1 & 1:
            sched_yield()
            continue
        view_read(db, &t.view)
        snap = vc_load_u64(&db.visible_ts)
        vc_store_u64_sc(&slot.tree_version, t.view.tree_version)
        vc_store_u64_sc(&slot.snapshot_ts, snap + 1)
        s2 = vc_load_u64_sc(&db.view_seq)
        if s1 == s2 and snap < t.view.min_snap:
            # the view's tree holds a bulk load committed after snap that is not visible
            # yet (its committer publishes the tree just before it): wait until it is
            await_visible(db, t.view.min_snap)
            continue
        if s1 == s2 and vc_load_u64_sc(&db.gc_target) <= snap:
            break
    t.snapshot_ts = snap
    t.slot = slot
    out[0] = t
    return 0


cdef uint64_t min_live_version(vc_db* db, uint64_t start) noexcept nogil:
    """The oldest tree version a live transaction holds (start if none is older).
    Caller holds reg_lock (the overflow list)."""
    cdef uint64_t m = start, v
    cdef uint32_t i
    cdef vc_txn* t
    for i in range(VC_NSLOTS):
        v = vc_load_u64_sc(&db.slots[i].tree_version)
        if v != 0 and v < m:
            m = v
    t = db.txns
    while t != NULL:
        if t.view.tree_version < m:
            m = t.view.tree_version
        t = t.next
    return m


cdef void reclaim(vc_db* db) noexcept nogil:
    """Free retired memtables and reuse pages no live transaction can read any more."""
    cdef uint64_t min_version
    cdef vc_memtable** link
    cdef vc_memtable* m
    cdef vc_memtable* dead = NULL
    cdef bint still = False
    pthread_mutex_lock(&db.commit_lock)
    pthread_mutex_lock(&db.reg_lock)
    min_version = min_live_version(db, db.view.tree_version)
    link = &db.mems
    pthread_rwlock_wrlock(&db.mems_lock)
    while link[0] != NULL:
        m = link[0]
        if m.retired_version != 0:
            if m.retired_version <= min_version:
                vc_store_ptr(<void**>link, m.older)
                m.older = dead
                dead = m
                continue
            still = True
        link = &m.older
    pthread_rwlock_unlock(&db.mems_lock)
    vc_pager_reclaim(db.pager, min_version)
    if min_version < db.view.tree_version:
        still = True
    db.reclaim_pending = still
    pthread_mutex_unlock(&db.reg_lock)
    pthread_mutex_unlock(&db.commit_lock)
    # freed outside the locks (unmapping a big arena takes a while): nothing can reach
    # them any more, neither a view (min_version) nor a writer (unlinked under mems_lock)
    if dead == NULL:
        return
    while dead != NULL:
        m = dead
        dead = m.older
        mem_free(m)
    if db.ckpt_thread_running:
        # their chunks may be spare now: the checkpointer times how long none is taken
        pthread_mutex_lock(&db.ckpt_sig_lock)
        pthread_cond_broadcast(&db.ckpt_sig_cond)
        pthread_mutex_unlock(&db.ckpt_sig_lock)


cdef void txn_unregister(vc_txn* t) noexcept nogil:
    cdef vc_db* db = t.db
    cdef vc_slot* slot = t.slot
    if slot != NULL:
        vc_store_u64_sc(&slot.snapshot_ts, 0)
        vc_store_u64_sc(&slot.tree_version, 0)
        vc_store_ptr(<void**>&slot.txn, NULL)      # the slot is free for the next claim
        t.slot = NULL
    else:
        pthread_mutex_lock(&db.reg_lock)
        if t.prev != NULL:
            t.prev.next = t.next
        else:
            db.txns = t.next
        if t.next != NULL:
            t.next.prev = t.prev
        t.prev = NULL
        t.next = NULL
        db.ntxns -= 1
        pthread_mutex_unlock(&db.reg_lock)
    txn_release(t)
    if vc_load_int_sc(&db.nrunrecs) != 0:
        runrecs_expire(db)
    if db.reclaim_pending:
        reclaim(db)
    if vc_load_u64(&db.visible_ts) >= vc_load_u64_relaxed(&db.gc_target) + GC_EVERY:
        gc_refresh(db)


# A transaction's writes, one per key in key order, live in one of two forms: while they
# ascend (a sorted load, a batch call, which sorts its keys), an array (t.wa) of the
# pending versions they installed; from the first write out of order on, the write set's
# skip list (t.ws), which the array is then linked into.  The loops over all of them go
# through this cursor, which reads either.

cdef struct vc_wcur:
    vc_txn* t
    size_t i                # next array entry (array form)
    vc_node* w              # next write-set node (skip-list form)

cdef struct vc_wref:        # one write, as the cursor reads it
    const unsigned char* key
    uint32_t klen
    int kind
    const unsigned char* value
    uint32_t vlen
    vc_version* shared      # the pending version installed, NULL for VC_CHECK
    vc_memtable* shared_mem


cdef inline void wcur_init(vc_wcur* c, vc_txn* t) noexcept nogil:
    c.t = t
    c.i = 0
    c.w = NULL if t.ws == NULL or t.wa_mode else sl_next(t.ws.head, 0)


cdef inline bint wcur_next(vc_wcur* c, vc_wref* r) noexcept nogil:
    """The transaction's next write into r; False after the last."""
    cdef vc_went* e
    cdef vc_version* v
    if c.t.wa_mode:
        if c.i >= c.t.wa_len:
            return False
        e = &c.t.wa[c.i]
        c.i += 1
        r.key = e.key
        r.klen = e.klen
        r.kind = <int>e.kind
        r.shared = e.shared
        r.shared_mem = e.shared_mem
        if e.shared != NULL:
            r.value = e.shared.value
            r.vlen = e.shared.vlen
        else:
            r.value = NULL
            r.vlen = 0
        return True
    if c.w == NULL:
        return False
    v = c.w.versions
    r.key = c.w.key
    r.klen = c.w.klen
    r.kind = v.kind
    r.value = v.value
    r.vlen = v.vlen
    r.shared = v.shared
    r.shared_mem = v.shared_mem
    c.w = sl_next(c.w, 0)
    return True


cdef inline bint mark_if_dead(vc_version* v) noexcept nogil:
    """Before the withdrawal of v, a pending version of this transaction: True, and v
    marked (`owner` = VC_OWNER_DEAD), if nothing but aborted versions (this transaction's
    own superseded writes) lie under it, so that its node may hold nothing live.  Read and
    marked before the withdrawal: from then on the version is another writer's to unlink.
    While it is pending, others only compare `owner` with their own id (a conflict either
    way); the withdrawal's release store publishes the mark."""
    cdef vc_version* x = <vc_version*>vc_load_ptr(<void* const*>&v.older)
    while x != NULL and version_ts(x) == VC_TS_ABORTED:
        x = <vc_version*>vc_load_ptr(<void* const*>&x.older)
    if x != NULL:
        return False
    v.owner = VC_OWNER_DEAD
    return True


cdef void mark_shared(vc_txn* t, uint64_t ts) noexcept nogil:
    """Stamp (or, with VC_TS_ABORTED, withdraw) every version this txn installed.  A
    withdrawn version with nothing older under it may leave its node holding nothing
    live, which every scan through it still walks: each memtable counts those (`dead`),
    and enough of them make a checkpoint due (see checkpoint_due)."""
    cdef vc_wcur c
    cdef vc_wref r
    cdef vc_memtable* m = NULL
    cdef uint64_t dead = 0
    wcur_init(&c, t)
    while wcur_next(&c, &r):
        if r.shared != NULL:
            if ts == VC_TS_ABORTED and mark_if_dead(r.shared):
                if r.shared_mem != m:
                    if dead:
                        vc_fetch_add_u64(&m.dead, dead)
                    m = r.shared_mem
                    dead = 0
                dead += 1
            vc_store_u64(&r.shared.commit_ts, ts)
    if dead:
        vc_fetch_add_u64(&m.dead, dead)


cdef void vc_txn_abort(vc_txn* t) noexcept nogil:
    cdef vc_db* db = t.db
    cdef bint wrote
    if t.state == VC_TXN_ACTIVE:
        wrote = t.nwrites > 0
        mark_shared(t, VC_TS_ABORTED)
        txn_unregister(t)
        if wrote:
            checkpoint_if_due(db, True)


cdef void vc_txn_free(vc_txn* t) noexcept nogil:
    if t != NULL:
        vc_txn_abort(t)
        free(t)


cdef vc_went* wa_find(vc_txn* t, const unsigned char* key, uint32_t klen) noexcept nogil:
    """The array-form write of key, NULL if none (a binary search: the array ascends)."""
    cdef size_t lo = 0, hi = t.wa_len, mid
    cdef int c
    while lo < hi:
        mid = (lo + hi) >> 1
        c = vc_key_cmp(t.wa[mid].key, t.wa[mid].klen, key, klen)
        if c == 0:
            return &t.wa[mid]
        if c < 0:
            lo = mid + 1
        else:
            hi = mid
    return NULL


cdef int txn_get_mem(vc_txn* t, const unsigned char* key, uint32_t klen, const unsigned char** value,
                     size_t* vlen) noexcept nogil:
    """The write set and memtables part of a read: VC_OK / VC_NOTFOUND when they decide,
    TXN_GET_TREE when the checkpointed tree must answer."""
    cdef vc_node* n
    cdef vc_version* v
    cdef vc_memtable* m
    cdef vc_went* e
    cdef int i
    if t.wa_mode:
        e = wa_find(t, key, klen)
        if e != NULL and e.kind != VC_CHECK:
            if e.kind == VC_DEL:
                return VC_NOTFOUND
            value[0] = e.shared.value
            vlen[0] = e.shared.vlen
            return VC_OK
    elif t.ws != NULL:
        n = sl_find_eq(t.ws, key, klen)
        if n != NULL and n.versions.kind != VC_CHECK:
            if n.versions.kind == VC_DEL:
                return VC_NOTFOUND
            value[0] = n.versions.value
            vlen[0] = n.versions.vlen
            return VC_OK
    for i in range(2):
        m = t.view.active if i == 0 else t.view.frozen
        if m == NULL:
            continue
        n = sl_find_eq(m, key, klen)
        if n != NULL:
            v = visible(n, t.snapshot_ts)
            if v != NULL:
                if v.kind == VC_DEL:
                    return VC_NOTFOUND
                value[0] = v.value
                vlen[0] = v.vlen
                return VC_OK
    return TXN_GET_TREE


cdef int vc_txn_get(vc_txn* t, const unsigned char* key, uint32_t klen, const unsigned char** value,
                    size_t* vlen, vc_err* err) noexcept nogil:
    cdef int rc
    if t.nruns and in_runs(t, key, klen) and vc_txn_bulk_settle(t, err) < 0:
        return -1
    rc = txn_get_mem(t, key, klen, value, vlen)
    if rc != TXN_GET_TREE:
        return rc
    rc = vc_tree_get(t.db.pager, t.view.root, t.view.height, key, klen, &t.scratch,
                     &t.page_hits, err)
    if rc == VC_OK:
        value[0] = t.scratch.data
        vlen[0] = t.scratch.len
    return rc


cdef void vc_txn_lookup_init(vc_txn* t, vc_lookup* lk) noexcept nogil:
    vc_lookup_init(lk, t.db.pager, t.view.root, t.view.height)


cdef int vc_txn_get_lk(vc_txn* t, vc_lookup* lk, const unsigned char* key, uint32_t klen,
                       const unsigned char** value, size_t* vlen, vc_err* err) noexcept nogil:
    cdef int rc
    if t.nruns and in_runs(t, key, klen) and vc_txn_bulk_settle(t, err) < 0:
        return -1
    rc = txn_get_mem(t, key, klen, value, vlen)
    if rc != TXN_GET_TREE:
        return rc
    return vc_lookup_get(lk, key, klen, value, vlen, err)


cdef int chain_conflict(vc_node* n, vc_txn* t, bint* decided) noexcept nogil:
    """Whether the newest live version of n blocks t's write: pending for another txn, or
    committed after t's snapshot.  *decided: n holds a live version (older memtables can
    then be skipped)."""
    cdef vc_version* v = <vc_version*>vc_load_ptr(<void* const*>&n.versions)
    cdef uint64_t ts
    while v != NULL:
        ts = version_ts(v)
        if ts != VC_TS_ABORTED:
            decided[0] = True
            if ts == VC_TS_PENDING:
                return 1 if v.owner != t.id else 0
            return 1 if ts > t.snapshot_ts else 0
        v = <vc_version*>vc_load_ptr(<void* const*>&v.older)    # the GC may move it
    return 0


cdef int older_conflict(vc_db* db, vc_txn* t, vc_memtable* newest, const unsigned char* key,
                        uint32_t klen) noexcept nogil:
    """Look for a blocking version in every live memtable older than `newest`: a pending
    version of a transaction that began before a checkpoint sits in the memtable that
    checkpoint froze, and must still stop a later writer of the same key."""
    cdef vc_memtable* m
    cdef bint decided
    cdef int rc = 0
    cdef vc_node* n
    if vc_load_ptr(<void* const*>&newest.older) == NULL:
        return 0                              # no older memtable: nothing to lock or walk
    pthread_rwlock_rdlock(&db.mems_lock)      # reclaim() frees memtables only under wrlock
    m = <vc_memtable*>vc_load_ptr(<void* const*>&newest.older)
    while m != NULL:
        n = sl_find_eq(m, key, klen)
        if n != NULL:
            decided = False
            if chain_conflict(n, t, &decided):
                rc = 1
                break
            if decided:
                break
        m = <vc_memtable*>vc_load_ptr(<void* const*>&m.older)
    pthread_rwlock_unlock(&db.mems_lock)
    return rc


cdef void vc_txn_prefetch_key(vc_txn* t, const unsigned char* key, uint32_t klen,
                              bint write) noexcept nogil:
    """A hint, some steps before a write (or a read) of key: start loading the key
    filter's block the write's insert will set bits in (the read's check will test).  The
    filter (up to 64 MiB) is read at random, and an insert sets its bits with locked
    instructions, which wait for the line: without the hint that wait was most of
    sl_link's time.  The memtables named are alive for as long as this transaction is (a
    memtable is freed only once no transaction older than its retirement remains)."""
    cdef vc_memtable* m
    cdef uint64_t h
    cdef int i
    if write:
        h = vc_key_hash(key, klen)
        m = <vc_memtable*>vc_load_ptr(<void* const*>&t.db.view.active)
        if m.bloom.words != NULL:
            vc_prefetch_w(m.bloom.words + ((h & m.bloom.block_mask) << 3))
        # and the filter block the write's conflict check reads in the memtable a
        # checkpoint is folding in (older_conflict), while there is one
        m = t.view.frozen
        if m != NULL and m.bloom.words != NULL:
            vc_prefetch(m.bloom.words + ((h & m.bloom.block_mask) << 3))
        return
    h = 0
    for i in range(2):
        m = t.view.active if i == 0 else t.view.frozen
        if m == NULL or m.bloom.words == NULL or vc_load_int_relaxed(&m.nonempty) == 0:
            continue
        if h == 0:
            h = vc_key_hash(key, klen)
        vc_prefetch(m.bloom.words + ((h & m.bloom.block_mask) << 3))


cdef vc_memtable* enter_active(vc_db* db) noexcept nogil:
    """The active memtable, entered for an install: its in-flight count is raised (leave
    with vc_add_int_sc(&m.inflight, -1)), so a checkpoint cannot freeze it meanwhile.
    While a checkpoint is switching memtables, wait for the new one."""
    cdef vc_memtable* m
    while True:
        m = <vc_memtable*>vc_load_ptr(<void* const*>&db.view.active)
        vc_add_int_sc(&m.inflight, 1)
        if not vc_load_int_sc(&m.frozen):
            return m
        vc_add_int_sc(&m.inflight, -1)
        sched_yield()


cdef int install_pending(vc_txn* t, const unsigned char* key, uint32_t klen, int kind,
                         const unsigned char* value, uint32_t vlen, vc_version** out_v,
                         vc_memtable** out_m, vc_node** out_n, vc_err* err) noexcept nogil:
    """Put a pending version of key at the head of its chain in the active memtable, or
    report the write-write conflict at once."""
    cdef vc_db* db = t.db
    cdef vc_memtable* m
    cdef vc_node* n
    cdef vc_version* head
    cdef vc_version* v = NULL
    cdef bint decided
    cdef int conflict
    cdef vc_arena_chunk* ac
    cdef unsigned char* ap
    m = enter_active(db)
    # the node and version about to be written go to fresh arena lines, and the locked
    # operations after those stores (the link's CAS, the chain's) wait until the lines
    # are in: fetch, for writing, the ones about two writes ahead (a write takes about
    # four lines: a node of ~80 bytes, a version of 160)
    ac = <vc_arena_chunk*>vc_load_ptr_relaxed(<void* const*>&m.arena.head)
    if ac != NULL:
        ap = <unsigned char*>ac + sizeof(vc_arena_chunk) + vc_load_size_relaxed(&ac.used) + 512
        vc_prefetch_w(ap)
        vc_prefetch_w(ap + 64)
        vc_prefetch_w(ap + 128)
        vc_prefetch_w(ap + 192)
    n = sl_upsert_f(m, key, klen, &t.mem_finger)
    if n == NULL:
        vc_add_int_sc(&m.inflight, -1)
        return vc_fail(err, VC_E_NOMEM, "out of memory")
    while True:
        head = <vc_version*>vc_load_ptr(<void* const*>&n.versions)
        decided = False
        conflict = chain_conflict(n, t, &decided)
        if not conflict and not decided:
            conflict = older_conflict(db, t, m, key, klen)
        if conflict:
            vc_add_int_sc(&m.inflight, -1)
            t.doomed = True
            return vc_fail(err, VC_E_CONFLICT, "write conflict: another transaction wrote this key "
                           "after this transaction began (or is writing it now)")
        if v == NULL:
            v = new_version(m, VC_TS_PENDING, t.id, kind, value, vlen)
            if v == NULL:
                vc_add_int_sc(&m.inflight, -1)
                return vc_fail(err, VC_E_NOMEM, "out of memory")
        v.older = head
        if vc_cas_ptr(<void**>&n.versions, head, v):
            break
    vc_fetch_add_u64(&m.nversions, 1)
    # a bulk load committed after this snapshot, or committing now, may cover the key:
    # checked after the install (both sides sequentially consistent: its committer
    # publishes its range, then looks for versions in it), so one of the two sees the other
    if vc_load_int_sc(&db.nrunrecs) != 0 and runrec_conflict(db, t, key, klen):
        if mark_if_dead(v):
            vc_fetch_add_u64(&m.dead, 1)
        vc_store_u64(&v.commit_ts, VC_TS_ABORTED)
        vc_add_int_sc(&m.inflight, -1)
        t.doomed = True
        return vc_fail(err, VC_E_CONFLICT, "write conflict: a bulk load that covers this key "
                       "committed after this transaction began (or is committing now)")
    chain_prune(db, m, v)            # this pending head makes us the chain's one pruner
    vc_add_int_sc(&m.inflight, -1)
    out_v[0] = v
    out_m[0] = m
    out_n[0] = n
    return 0


cdef inline bint finger_covers(vc_finger* f, vc_memtable* m, const unsigned char* key,
                               uint32_t klen) noexcept nogil:
    """The finger's own search would reach key cheaply: key sorts after its last node and
    before that node's successor at level VC_FINGER_NEAR (a walk of a few levels)."""
    cdef vc_node* nx
    cdef uint64_t lb
    cdef uint64_t kp = key_prefix(key, klen)
    if f.mem != m or f.last == NULL or finger_partial(f) or not node_lt(f.last, key, klen, kp):
        return False
    nx = sl_next_kp(f.path[VC_FINGER_NEAR], VC_FINGER_NEAR, &lb)
    return not link_lt(nx, lb, key, klen, kp)


cdef inline int group_walk(vc_memtable* m, vc_finger* f, mindex_chain* ch, vc_node** xp, int level,
                           const unsigned char* key, uint32_t klen, uint64_t kp,
                           vc_node** cand) noexcept nogil:
    """One search of vc_txn_group_fingers, from *xp at level, as far as it goes without a
    node it has not loaded: every link whose bound sorts after key ends its level there
    (the path's entry) and the search goes down.  Returns the level where the next node
    (*cand, prefetched) must be read to decide, with *xp its predecessor; -1 once the path
    is complete."""
    cdef vc_node* x = xp[0]
    cdef vc_node* nx
    cdef uint64_t lb
    while True:
        nx = sl_next_kp(x, level, &lb)
        if nx != NULL and lb <= kp:
            # what the next round reads of it: its prefix, and its link at this level (the
            # same line but when the two straddle one)
            vc_prefetch(&nx.kprefix)
            vc_prefetch(&sl_tower(nx)[level].kp)
            cand[0] = nx
            xp[0] = x
            return level
        f.path[level] = x
        if level == 0:
            xp[0] = x
            return -1
        level -= 1
        x = mindex_start(ch, x, m.head, level)


cdef int group_begin(vc_memtable* m, vc_mindex* ix, int top, const uint64_t* kps,
                     const Py_ssize_t* jx, const uint8_t* part, int n, int* nxt, vc_finger* out,
                     mindex_chain* ch, vc_node** xp, int* lvlp, uint64_t* kpp,
                     vc_node** cand) noexcept nogil:
    """Start the search of the next key, keys[*nxt], in one slot of vc_txn_group_fingers
    (returns its index; -1 if none is left), from its place in the index (jx, found for
    the whole group at once), whose node is prefetched; the slot's next round walks from
    there (*cand NULL).  In an empty memtable every path is the head's, complete at once.
    A key with part[i] set (see vc_txn_group_fingers) gets a partial path: its search
    starts at the index's level, at the index's node, and the levels above stay NULL."""
    cdef int i, level
    while nxt[0] < n:
        i = nxt[0]
        nxt[0] += 1
        out[i].mem = m
        for level in range(top, VC_SL_MAX):
            out[i].path[level] = m.head
        if top <= 0:
            continue
        kpp[0] = kps[i]
        cand[0] = NULL
        if part[i]:
            for level in range(MINDEX_LEVEL + 1, VC_SL_MAX):
                out[i].path[level] = NULL
            ch.len = 0
            ch.pos = 0
            xp[0] = ix.node[jx[i]] if jx[i] >= 0 else m.head
            vc_prefetch(&sl_tower(xp[0])[MINDEX_LEVEL])
            lvlp[0] = MINDEX_LEVEL
            return i
        mindex_chain_at(ch, ix, jx[i])
        xp[0] = mindex_start(ch, m.head, m.head, top - 1)
        lvlp[0] = top - 1
        return i
    return -1


cdef int vc_txn_group_fingers(vc_txn* t, const unsigned char** keys, const uint32_t* klens,
                              int n, vc_finger* out) noexcept nogil:
    """Search the active memtable for up to VC_GROUP ascending keys, VC_GROUP_SLOTS at a
    time, each step of one search overlapping the cache misses of the others, and leave
    each key's path in out[i] as a finger for its write (see sl_find_preds_f: the write
    walks on from the path past anything linked since, its own group's nodes included).
    A slot whose search ends takes the next key at once, so the slots stay busy while the
    longest searches finish.  Returns how many fingers it made: 0 when the writer's own
    finger already covers the keys (a sorted load appending at one place), so the plain
    path is as cheap."""
    cdef vc_db* db = t.db
    cdef vc_memtable* m
    cdef vc_node* x[VC_GROUP_SLOTS]
    cdef vc_node* cand[VC_GROUP_SLOTS]
    cdef int lvl[VC_GROUP_SLOTS]
    cdef uint64_t kp[VC_GROUP_SLOTS]
    cdef int slot[VC_GROUP_SLOTS]         # the key each slot searches for, -1 when idle
    cdef mindex_chain chain[VC_GROUP_SLOTS]
    cdef uint64_t kps[VC_GROUP]
    cdef Py_ssize_t jx[VC_GROUP]
    cdef uint8_t part[VC_GROUP]
    cdef vc_node* c
    cdef int i, s, level, top, active, nxt
    cdef vc_mindex* ix
    if n <= 1 or n > VC_GROUP:
        return 0
    m = enter_active(db)
    if finger_covers(&t.mem_finger, m, keys[n - 1], klens[n - 1]):
        vc_add_int_sc(&m.inflight, -1)
        return 0
    ix = <vc_mindex*>vc_load_ptr(<void* const*>&m.index)
    top = vc_load_int_relaxed(&m.height)
    # every key's place in the index, the binary searches in step; and which keys need
    # no path above the index's level: a key whose node, if it is new, will be no taller
    # (its height comes from its hash: 63 keys in 64) starts there, at the index's node,
    # and gets a partial finger (vc_finger.path), without the chain of taller towers and
    # the line per level above that a full path reads
    for i in range(n):
        kps[i] = key_prefix(keys[i], klens[i])
        jx[i] = -1
        part[i] = 0
        if ix != NULL and top > MINDEX_LEVEL + 1 and \
                random_height(m, vc_key_hash(keys[i], klens[i])) <= MINDEX_LEVEL + 1:
            part[i] = 1
    if ix != NULL:
        mindex_find_many(ix, kps, n, jx)
        for i in range(n):
            if jx[i] >= 0:
                vc_prefetch(&ix.node[jx[i]])
    nxt = 0
    active = 0
    for s in range(VC_GROUP_SLOTS):
        slot[s] = group_begin(m, ix, top, kps, jx, part, n, &nxt, out, &chain[s], &x[s], &lvl[s],
                              &kp[s], &cand[s])
        if slot[s] >= 0:
            active += 1
    # each round reads one node per search (prefetched in the round before), so the
    # searches' cache misses overlap
    while active > 0:
        for s in range(VC_GROUP_SLOTS):
            i = slot[s]
            if i < 0:
                continue
            level = lvl[s]
            c = cand[s]
            # (c NULL: just begun, x[s] is the index's node for this level, prefetched)
            if c != NULL:
                if node_lt(c, keys[i], klens[i], kp[s]):
                    x[s] = c
                else:
                    # c sorts at or after the key (its bound was below its prefix, or
                    # equal to the key's): the level ends at x[s], a tower of height > level
                    out[i].path[level] = x[s]
                    level -= 1
                    if level >= 0:
                        x[s] = mindex_start(&chain[s], x[s], m.head, level)
            lvl[s] = -1 if level < 0 else group_walk(m, &out[i], &chain[s], &x[s], level, keys[i],
                                                     klens[i], kp[s], &cand[s])
            if lvl[s] < 0:
                slot[s] = group_begin(m, ix, top, kps, jx, part, n, &nxt, out, &chain[s], &x[s],
                                      &lvl[s], &kp[s], &cand[s])
                if slot[s] < 0:
                    active -= 1
    for i in range(n):
        out[i].last = out[i].path[0] if top > 0 and out[i].path[0] != m.head else NULL
        if out[i].last == NULL:
            out[i].mem = NULL                        # the plain search from the head
    vc_add_int_sc(&m.inflight, -1)
    return n


cdef vc_version* ws_version(vc_txn* t, int kind, const unsigned char* value, uint32_t vlen,
                            vc_version* sv) noexcept nogil:
    """A write's version in the write set's skip list, `shared` left for the caller."""
    cdef vc_version* wv
    if sv != NULL and kind == VC_PUT:
        # one copy of the value: the pending version's, which lives as long as this txn
        # (its memtable is freed only after every transaction that could read it ended)
        wv = new_version(t.ws, 0, t.id, VC_DEL, NULL, 0)
        if wv != NULL:
            wv.kind = VC_PUT
            wv.value = sv.value
            wv.vlen = sv.vlen
    else:
        wv = new_version(t.ws, 0, t.id, kind, value, vlen)
    return wv


cdef void ws_list_clear(vc_memtable* m) noexcept nogil:
    """Empty a private skip list (its nodes stay in the arena until it is freed)."""
    links_clear(sl_tower(m.head))
    m.height = 1
    m.nkeys = 0


cdef int wa_link_all(vc_txn* t, vc_err* err) noexcept nogil:
    """Leave the array form: link every write into the write set's skip list.  If memory
    runs out half way, the list is emptied again and the array stays in force."""
    cdef vc_node* preds[VC_SL_MAX]
    cdef vc_link succs[VC_SL_MAX]
    cdef vc_node* n
    cdef vc_version* wv
    cdef vc_went* e
    cdef size_t i
    t.ws_finger.mem = NULL
    for i in range(t.wa_len):
        e = &t.wa[i]
        sl_find_preds_f(t.ws, e.key, e.klen, preds, succs, &t.ws_finger)
        n = sl_link(t.ws, preds, succs, e.key, e.klen)
        wv = NULL
        if n != NULL:
            finger_set(&t.ws_finger, t.ws, n, preds)
            wv = ws_version(t, <int>e.kind, NULL, 0, e.shared)
        if wv == NULL:
            ws_list_clear(t.ws)
            t.ws_finger.mem = NULL
            return vc_fail(err, VC_E_NOMEM, "out of memory in the write set")
        wv.shared = e.shared
        wv.shared_mem = e.shared_mem
        n.versions = wv
    free(t.wa)
    t.wa = NULL
    t.wa_len = t.wa_cap = 0
    t.wa_mode = False
    return 0


cdef enum:
    WA_UNSORTED = 2         # wa_write: the key does not come after every key written so far


cdef int wa_write(vc_txn* t, const unsigned char* key, uint32_t klen, const unsigned char* value,
                  uint32_t vlen, int kind, vc_err* err) noexcept nogil:
    """A write in the array form: 0 / -1 as vc_txn_write, or WA_UNSORTED (nothing done)."""
    cdef vc_went* e = NULL
    cdef vc_went* grown
    cdef vc_version* sv = NULL
    cdef vc_memtable* sm = NULL
    cdef vc_node* sn = NULL
    cdef unsigned char* kcopy
    cdef size_t ncap
    cdef int c = 1
    if t.wa_len > 0:
        e = &t.wa[t.wa_len - 1]
        c = vc_key_cmp(key, klen, e.key, e.klen)
        if c < 0:
            return WA_UNSORTED
    if c == 0:
        # the key written last, once more: the new write replaces it
        if kind == VC_CHECK:
            return 0
        if install_pending(t, key, klen, kind, value, vlen, &sv, &sm, &sn, err) < 0:
            return -1
        if e.shared != NULL:
            vc_store_u64(&e.shared.commit_ts, VC_TS_ABORTED)    # superseded by sv
        else:
            t.nchecks -= 1
            t.nwrites += 1
        e.shared = sv
        e.shared_mem = sm
        e.kind = <uint32_t>kind
        t.wgen += 1
        return 0
    if t.wa_len == t.wa_cap:
        # room first, so that a pending version, once installed, is always recorded
        ncap = t.wa_cap * 2 if t.wa_cap else 64
        grown = <vc_went*>realloc(t.wa, ncap * sizeof(vc_went))
        if grown == NULL:
            return vc_fail(err, VC_E_NOMEM, "out of memory in the write set")
        t.wa = grown
        t.wa_cap = ncap
    e = &t.wa[t.wa_len]
    if kind == VC_CHECK:
        kcopy = <unsigned char*>mem_alloc(t.ws, klen)
        if kcopy == NULL:
            return vc_fail(err, VC_E_NOMEM, "out of memory in the write set")
        memcpy(kcopy, key, klen)
        e.key = kcopy
        e.shared = NULL
        e.shared_mem = NULL
        t.nchecks += 1
    else:
        # the conflict check happens here; a refused write leaves the write set untouched
        if install_pending(t, key, klen, kind, value, vlen, &sv, &sm, &sn, err) < 0:
            return -1
        e.key = sn.key
        e.shared = sv
        e.shared_mem = sm
        t.nwrites += 1
    e.klen = klen
    e.kind = <uint32_t>kind
    t.wa_len += 1
    t.wgen += 1
    return 0


cdef bint vc_txn_savepoint(vc_txn* t, const unsigned char* key, uint32_t klen,
                           size_t* sp) noexcept nogil:
    """True, with *sp set, if writes from key on, while they ascend, can be withdrawn again
    by vc_txn_rollback(t, *sp): the write set is empty or in its array form, and key sorts
    after every key in it (so those writes only append entries, and replace none before
    *sp)."""
    cdef vc_went* e
    if t.ws == NULL:
        sp[0] = 0
        return True
    if not t.wa_mode:
        return False
    if t.wa_len > 0:
        e = &t.wa[t.wa_len - 1]
        if vc_key_cmp(key, klen, e.key, e.klen) <= 0:
            return False
    sp[0] = t.wa_len
    return True


cdef int vc_txn_rollback(vc_txn* t, size_t sp) noexcept nogil:
    """Withdraw every write recorded since vc_txn_savepoint gave sp, as an abort withdraws
    them: 0, or -1 (nothing done) if the write set has left its array form since."""
    cdef vc_went* e
    cdef size_t i
    if t.ws == NULL:
        return 0 if sp == 0 else -1
    if not t.wa_mode or t.wa_len < sp:
        return -1
    for i in range(sp, t.wa_len):
        e = &t.wa[i]
        if e.shared != NULL:
            if mark_if_dead(e.shared):
                vc_fetch_add_u64(&e.shared_mem.dead, 1)
            vc_store_u64(&e.shared.commit_ts, VC_TS_ABORTED)
            t.nwrites -= 1
        else:
            t.nchecks -= 1
    if t.wa_len > sp:
        t.wa_len = sp
        t.wgen += 1
        checkpoint_if_due(t.db, True)     # what it withdrew may make one due (never waits)
    return 0


cdef int vc_txn_write(vc_txn* t, const unsigned char* key, uint32_t klen, const unsigned char* value,
                      uint32_t vlen, int kind, vc_err* err) noexcept nogil:
    """Record a put or delete (installing a pending version, which detects conflicts at
    once), or (VC_CHECK) a key whose change by others must abort this txn at commit."""
    cdef vc_node* n = NULL
    cdef vc_node* preds[VC_SL_MAX]
    cdef vc_link succs[VC_SL_MAX]
    cdef vc_version* prev = NULL
    cdef vc_version* wv
    cdef vc_version* sv = NULL
    cdef vc_memtable* sm = NULL
    cdef vc_node* sn = NULL
    cdef int old_kind = 0
    cdef int rc
    if t.readonly:
        return vc_fail(err, VC_E_READONLY, "this transaction is read-only")
    if t.doomed:
        return vc_fail(err, VC_E_CONFLICT, "the transaction had a write conflict and cannot commit")
    if t.nruns and in_runs(t, key, klen) and vc_txn_bulk_settle(t, err) < 0:
        return -1
    if t.ws == NULL:
        t.ws = mem_new(0, False)
        if t.ws == NULL:
            return vc_fail(err, VC_E_NOMEM, "out of memory")
        t.wa_mode = True
    if t.wa_mode:
        rc = wa_write(t, key, klen, value, vlen, kind, err)
        if rc != WA_UNSORTED:
            return rc
        if wa_link_all(t, err) < 0:
            return -1
    sl_find_preds_f(t.ws, key, klen, preds, succs, &t.ws_finger)
    if succ_is_key(&succs[0], key, klen):
        n = succs[0].node
        old_kind = n.versions.kind
        prev = n.versions.shared
        if kind == VC_CHECK:
            return 0
    if kind != VC_CHECK:
        # the conflict check happens here; a refused write leaves the write set untouched
        if install_pending(t, key, klen, kind, value, vlen, &sv, &sm, &sn, err) < 0:
            return -1
    if n == NULL:
        n = sl_link(t.ws, preds, succs, key, klen)   # nothing changed the write set since
    if n != NULL:
        finger_set(&t.ws_finger, t.ws, n, preds)
    wv = NULL if n == NULL else ws_version(t, kind, value, vlen, sv)
    if wv == NULL:
        if sv != NULL:
            vc_store_u64(&sv.commit_ts, VC_TS_ABORTED)
        return vc_fail(err, VC_E_NOMEM, "out of memory buffering a %u-byte value", vlen)
    if prev != NULL:
        vc_store_u64(&prev.commit_ts, VC_TS_ABORTED)    # superseded by sv
    wv.shared = sv
    wv.shared_mem = sm
    n.versions = wv                  # a write set keeps only the latest write of a key
    t.wgen += 1
    if kind != VC_CHECK and (old_kind == 0 or old_kind == VC_CHECK):
        t.nwrites += 1
    if kind == VC_CHECK:
        t.nchecks += 1
    elif old_kind == VC_CHECK:
        t.nchecks -= 1
    return 0


cdef bint checks_conflict(vc_db* db, vc_txn* t) noexcept nogil:
    """Commit-time validation of VC_CHECK keys (catalog entries of tables written)."""
    cdef vc_wcur c
    cdef vc_wref r
    cdef vc_memtable* m
    cdef vc_node* n
    cdef bint decided
    if t.nchecks == 0:
        return False
    cdef uint64_t seen = 0
    # the caller holds commit_lock, under which reclaim() frees memtables: all are alive
    wcur_init(&c, t)
    while seen < t.nchecks and wcur_next(&c, &r):
        if r.kind == VC_CHECK:
            seen += 1
            m = <vc_memtable*>vc_load_ptr(<void* const*>&db.mems)
            while m != NULL:
                n = sl_find_eq(m, r.key, r.klen)
                if n != NULL:
                    decided = False
                    if chain_conflict(n, t, &decided):
                        return True
                    if decided:
                        break
                m = <vc_memtable*>vc_load_ptr(<void* const*>&m.older)
    return False


# Publication in commit order.  visible_ts moves from N-1 to N only once commit N is
# stamped and, under sync="full", its log record is durable, so a snapshot never sees
# commit N+1 without commit N.  Commits leave their timestamp (and the log position that
# must be durable first) in a ring, and whoever finds the next ones ready moves visible_ts
# over all of them: the committer itself, any other committer, or the leader of the flush
# that made them durable (on_log_durable, before it wakes them).  The commits of one
# flush then find themselves visible when they wake, whatever order they run in, instead
# of waking one another one by one.

cdef inline uint64_t durable_now(vc_db* db) noexcept nogil:
    if db.wal != NULL and db.sync_mode == VC_SYNC_FULL:
        return vc_wal_durable_lsn(db.wal)
    return <uint64_t>-1


cdef void advance_visible(vc_db* db, uint64_t durable) noexcept nogil:
    """vis_lock held: visible_ts moves over every next commit that is ready and durable."""
    cdef uint64_t start = db.visible_ts
    cdef uint64_t v = start
    cdef vc_pub* e
    while True:
        e = &db.pub_ring[(v + 1) & (VC_PUB_RING - 1)]
        if e.ts != v + 1 or e.lsn > durable:
            break
        v += 1
    if v != start:
        vc_store_u64(&db.visible_ts, v)     # RELEASE: after the stamps of every commit <= v
        if db.vis_waiters:
            pthread_cond_broadcast(&db.vis_cond)


cdef void mark_ready(vc_db* db, uint64_t ts, uint64_t lsn) noexcept nogil:
    """Commit ts may become visible once the log is durable up to lsn (0: at once)."""
    cdef vc_pub* e
    pthread_mutex_lock(&db.vis_lock)
    if db.visible_ts < ts:
        # the ring's slot for ts is free once ts - VC_PUB_RING is visible
        while ts - db.visible_ts > VC_PUB_RING:
            db.vis_waiters += 1
            pthread_cond_wait(&db.vis_cond, &db.vis_lock)
            db.vis_waiters -= 1
        e = &db.pub_ring[ts & (VC_PUB_RING - 1)]
        e.ts = ts
        e.lsn = lsn
        advance_visible(db, durable_now(db))
    pthread_mutex_unlock(&db.vis_lock)


cdef void await_visible(vc_db* db, uint64_t ts) noexcept nogil:
    """Return once commit ts is visible (every earlier one is then visible too)."""
    if vc_load_u64(&db.visible_ts) >= ts:
        return
    pthread_mutex_lock(&db.vis_lock)
    advance_visible(db, durable_now(db))
    while db.visible_ts < ts:
        db.vis_waiters += 1
        pthread_cond_wait(&db.vis_cond, &db.vis_lock)
        db.vis_waiters -= 1
    pthread_mutex_unlock(&db.vis_lock)


cdef void on_log_durable(void* ctx, uint64_t lsn) noexcept nogil:
    cdef vc_db* db = <vc_db*>ctx
    pthread_mutex_lock(&db.vis_lock)
    advance_visible(db, lsn)
    pthread_mutex_unlock(&db.vis_lock)


cdef int copy_forward(vc_txn* t, uint64_t ts, vc_err* err) noexcept nogil:
    """Versions left in a memtable that a checkpoint froze before this commit's timestamp
    are copied, committed, into the active one (the checkpoint folds only ts <= its own)."""
    cdef vc_db* db = t.db
    cdef vc_wcur c
    cdef vc_wref r
    cdef vc_memtable* m
    cdef vc_node* n
    wcur_init(&c, t)
    while wcur_next(&c, &r):
        if r.shared != NULL and vc_load_int_sc(&r.shared_mem.frozen) and ts > r.shared_mem.frozen_ts:
            m = enter_active(db)
            if m != r.shared_mem:
                n = sl_upsert(m, r.key, r.klen)
                if n == NULL or mem_add_version(m, n, ts, r.kind, r.value, r.vlen) < 0:
                    vc_add_int_sc(&m.inflight, -1)
                    return vc_fail(err, VC_E_NOMEM, "out of memory installing a commit")
                vc_max_u64_relaxed(&m.max_ts, ts)
            vc_add_int_sc(&m.inflight, -1)
    return 0


cdef struct log_producer:
    vc_wcur c               # the transaction's writes
    vc_wref r               # the next one to encode, when `have`
    bint have
    vc_txn* t
    size_t run_i            # its bulk loads, encoded after the writes


cdef inline bint lp_more(log_producer* lp) noexcept nogil:
    return lp.have or lp.run_i < lp.t.nruns


cdef int encode_ingest(vc_buf* b, vc_run* run) noexcept nogil:
    """`VC_INGEST | n u32 | n leaf page ids u32 | n leaf checksums u32`"""
    cdef uint32_t n = <uint32_t>run.leaves.len
    cdef size_t need = b.len + 5 + <size_t>n * 8
    cdef unsigned char* p
    if vc_buf_reserve(b, need) < 0:
        return -1
    p = b.data + b.len
    p[0] = <unsigned char>VC_INGEST
    memcpy(p + 1, &n, 4)
    memcpy(p + 5, run.leaves.items, <size_t>n * 4)
    memcpy(p + 5 + <size_t>n * 4, run.crcs.items, <size_t>n * 4)
    b.len = need
    return 0


cdef int log_fill(void* ctx, vc_buf* chunk) noexcept nogil:
    """The next piece of a commit's log record: whole entries, about LOG_CHUNK bytes."""
    cdef log_producer* lp = <log_producer*>ctx
    chunk.len = 0
    while lp.have and chunk.len < LOG_CHUNK:
        if lp.r.kind != VC_CHECK:
            if encode_put(chunk, lp.r.kind, lp.r.key, lp.r.klen, lp.r.value, lp.r.vlen) < 0:
                return -1
        lp.have = wcur_next(&lp.c, &lp.r)
    while not lp.have and lp.run_i < lp.t.nruns and chunk.len < LOG_CHUNK:
        if encode_ingest(chunk, lp.t.runs[lp.run_i]) < 0:
            return -1
        lp.run_i += 1
    return 0


cdef int vc_txn_commit(vc_txn* t, vc_err* err) noexcept nogil:
    cdef vc_db* db = t.db
    cdef vc_wcur c
    cdef vc_wref r
    cdef log_producer lp
    cdef vc_buf rest
    cdef uint32_t crc = 0
    cdef vc_memtable* last_m
    cdef bint any_frozen
    cdef uint64_t ts, lsn = 0
    cdef int rc = 0
    cdef bint bulk = t.nruns > 0
    cdef uint32_t broot = 0, bheight = 0
    cdef vc_u32vec ballocs, bfreed
    memset(&ballocs, 0, sizeof(ballocs))
    memset(&bfreed, 0, sizeof(bfreed))
    if t.state != VC_TXN_ACTIVE:
        return vc_fail(err, VC_E_CLOSED, "the transaction has ended")
    if t.doomed:
        vc_txn_abort(t)
        return vc_fail(err, VC_E_CONFLICT, "the transaction had a write conflict and cannot commit")
    if (t.ws == NULL or t.nwrites == 0) and not bulk:
        if t.ws != NULL:
            pthread_mutex_lock(&db.commit_lock)
            rc = checks_conflict(db, t)
            pthread_mutex_unlock(&db.commit_lock)
            if rc:
                vc_txn_abort(t)
                return vc_fail(err, VC_E_CONFLICT, "write conflict: a table this transaction used was "
                               "dropped or created concurrently")
        txn_unregister(t)
        return 0
    if db.readonly:
        vc_txn_abort(t)
        return vc_fail(err, VC_E_READONLY, "the store is read-only")
    # bulk loads: their new tree is built now (ckpt_lock held from here until it is
    # published; their leaves are written, and flushed unless sync="off")
    if bulk and runs_prepare(t, &broot, &bheight, &ballocs, &bfreed, err) < 0:
        vc_u32vec_free(&ballocs)
        vc_u32vec_free(&bfreed)
        vc_txn_abort(t)
        return -1
    # the redo record's first piece (all of a small transaction's) and its CRC, outside
    # the lock; a large one's rest is encoded piece by piece as it is written (the record
    # never exists whole in memory)
    memset(&rest, 0, sizeof(vc_buf))
    if db.wal != NULL:
        t.payload.len = 0
        wcur_init(&lp.c, t)
        lp.have = wcur_next(&lp.c, &lp.r)
        lp.t = t
        lp.run_i = 0
        if log_fill(&lp, &t.payload) < 0:
            if bulk:
                runs_undo(t, &ballocs, &bfreed)
            vc_txn_abort(t)
            return vc_fail(err, VC_E_NOMEM, "out of memory building the log record")
        crc = vc_crc32c(0, t.payload.data, t.payload.len)
    # the one critical section: a timestamp and the log record's place, in the same order
    pthread_mutex_lock(&db.commit_lock)
    if db.failed:
        pthread_mutex_unlock(&db.commit_lock)
        if bulk:
            runs_undo(t, &ballocs, &bfreed)
        vc_txn_abort(t)
        return vc_fail(err, VC_E_IO, "the store stopped accepting writes after an error: %s",
                       db.failed_msg)
    if checks_conflict(db, t):
        db.conflicts += 1
        pthread_mutex_unlock(&db.commit_lock)
        if bulk:
            runs_undo(t, &ballocs, &bfreed)
        vc_txn_abort(t)
        return vc_fail(err, VC_E_CONFLICT, "write conflict: a table this transaction used was "
                       "dropped or created concurrently")
    ts = db.last_ts + 1
    if db.wal != NULL:
        rc = vc_wal_append_stream(db.wal, ts, t.payload.data, t.payload.len, crc,
                                  log_fill if lp_more(&lp) else <vc_wal_fill_fn>NULL, &lp, &rest,
                                  &lsn, err)
        vc_buf_free(&rest)
        if rc < 0:
            # a record it could not produce (out of memory, too large) was cut off the log
            # again, and only this transaction fails; an I/O error stops the store
            if err.code != VC_E_NOMEM and err.code != VC_E_INVALID:
                db_fail(db, err)
            pthread_mutex_unlock(&db.commit_lock)
            if bulk:
                runs_undo(t, &ballocs, &bfreed)
            vc_txn_abort(t)
            return -1
    db.last_ts = ts
    db.commits += 1
    pthread_mutex_unlock(&db.commit_lock)
    # stamp the pending versions (one pass); a memtable frozen meanwhile gets a copy
    last_m = NULL
    any_frozen = False
    wcur_init(&c, t)
    while wcur_next(&c, &r):
        if r.shared != NULL:
            vc_store_u64(&r.shared.commit_ts, ts)
            if r.shared_mem != last_m:
                last_m = r.shared_mem
                vc_max_u64_relaxed(&last_m.max_ts, ts)
                if vc_load_int_sc(&last_m.frozen):
                    any_frozen = True
    if any_frozen:
        rc = copy_forward(t, ts, err)
    if rc < 0:
        db_fail(db, err)
    if bulk:
        runs_publish(t, ts, broot, bheight, &ballocs, &bfreed)
    if rc == 0 and db.wal != NULL and db.sync_mode == VC_SYNC_FULL:
        mark_ready(db, ts, lsn)
        rc = vc_wal_sync_to(db.wal, lsn, err)
        if rc < 0:
            db_fail(db, err)
            mark_ready(db, ts, 0)
    else:
        # even a failed commit must not hold back the visible timestamp of later ones
        mark_ready(db, ts, 0)
    await_visible(db, ts)
    txn_unregister(t)
    if rc < 0:
        return -1
    checkpoint_if_due(db)
    return 0


# ---------------------------------------------------------------- bulk loads
#
# A put_many whose keys ascend into a key range the snapshot holds nothing in is written
# as a run of leaves outside the tree (vc_run, _btree.pyx): no memtable node, no version,
# no value copied into the log.  Commit writes the leaves, flushes them (unless sync=
# "off"), and under ckpt_lock checks that no other transaction wrote into the range,
# splices the leaves into the tree copy-on-write, logs their page ids and checksums, and
# publishes the new tree just before the commit becomes visible.  Writers of a key in the
# range whose snapshot is older conflict through the store's list of run ranges
# (runrec_conflict); recovery reads logged leaves back into the memtable.

cdef bint in_runs(vc_txn* t, const unsigned char* key, uint32_t klen) noexcept nogil:
    """Whether key lies within one of t's bulk loads."""
    cdef size_t i
    cdef vc_run* r
    for i in range(t.nruns):
        r = t.runs[i]
        if r.nkeys and vc_key_cmp(key, klen, r.lo, r.lolen) >= 0 and \
                vc_key_cmp(key, klen, r.last, r.lastlen) <= 0:
            return True
    return False


cdef int run_limit(vc_txn* t, vc_run* run, const unsigned char* key, uint32_t klen,
                   vc_err* err) noexcept nogil:
    """The snapshot's first key >= key into run.limit: 0, 1 if key itself is there (a
    node in a memtable counts, whatever its versions), -1 on error."""
    cdef vc_memtable* m
    cdef vc_node* n
    cdef vc_cursor c
    cdef const unsigned char* k
    cdef uint32_t kl
    cdef int i, rc
    run.limitlen = 0
    for i in range(2):
        m = t.view.active if i == 0 else t.view.frozen
        if m == NULL:
            continue
        n = sl_find_ge(m, key, klen)
        if n == NULL:
            continue
        if vc_key_cmp(n.key, n.klen, key, klen) == 0:
            return 1
        if run.limitlen == 0 or vc_key_cmp(n.key, n.klen, run.limit, run.limitlen) < 0:
            memcpy(run.limit, n.key, n.klen)
            run.limitlen = n.klen
    vc_cursor_init(&c, t.db.pager, t.view.root, t.view.height)
    rc = vc_cursor_seek_ge(&c, key, klen, err)
    if rc == 0 and c.valid:
        vc_cursor_key(&c, &k, &kl)
        if vc_key_cmp(k, kl, key, klen) == 0:
            rc = 1
        elif run.limitlen == 0 or vc_key_cmp(k, kl, run.limit, run.limitlen) < 0:
            memcpy(run.limit, k, kl)
            run.limitlen = kl
    vc_cursor_close(&c)
    return rc


cdef int vc_txn_bulk_begin(vc_txn* t, const unsigned char* key, uint32_t klen,
                           const unsigned char* last, uint32_t lastlen, vc_err* err) noexcept nogil:
    cdef vc_db* db = t.db
    cdef vc_run* run
    cdef vc_run** nr
    cdef size_t ncap
    cdef int rc
    cdef vc_node* wl
    if t.state != VC_TXN_ACTIVE or t.readonly or t.doomed or db.readonly or db.failed:
        return 0
    if t.ws != NULL and not t.wa_mode:
        wl = sl_find_lt(t.ws, NULL, 0)          # its last write
        if wl != NULL and vc_key_cmp(key, klen, wl.key, wl.klen) <= 0:
            return 0
    elif t.wa_len > 0 and vc_key_cmp(key, klen, t.wa[t.wa_len - 1].key, t.wa[t.wa_len - 1].klen) <= 0:
        return 0
    if t.nruns > 0 and vc_key_cmp(key, klen, t.runs[t.nruns - 1].last,
                                  t.runs[t.nruns - 1].lastlen) <= 0:
        return 0
    if last != NULL and vc_key_cmp(last, lastlen, key, klen) <= 0:
        return 0
    run = vc_run_new(db.pager, err)
    if run == NULL:
        return -1
    rc = run_limit(t, run, key, klen, err)
    if rc == 0 and last != NULL and run.limitlen and vc_key_cmp(last, lastlen, run.limit,
                                                                run.limitlen) >= 0:
        rc = 1          # the call's last key is past the range: a run would stop short
    if rc == 0 and t.nruns == t.runs_cap:
        ncap = t.runs_cap * 2 if t.runs_cap else 4
        nr = <vc_run**>realloc(t.runs, ncap * sizeof(vc_run*))
        if nr == NULL:
            rc = vc_fail(err, VC_E_NOMEM, "out of memory")
        else:
            t.runs = nr
            t.runs_cap = ncap
    if rc != 0:
        vc_run_free(run, True)
        return -1 if rc < 0 else 0
    t.runs[t.nruns] = run
    t.nruns += 1
    return 1


cdef int vc_txn_bulk_add(vc_txn* t, const unsigned char* key, uint32_t klen,
                         const unsigned char* value, uint32_t vlen, vc_err* err) noexcept nogil:
    cdef vc_run* run = t.runs[t.nruns - 1]
    cdef int rc
    if run.nkeys and vc_key_cmp(key, klen, run.last, run.lastlen) < 0:
        return 1
    if run.limitlen and vc_key_cmp(key, klen, run.limit, run.limitlen) >= 0:
        return 1
    rc = vc_run_add(run, key, klen, value, vlen, err)
    if rc < 0:
        t.doomed = True
        return -1
    t.wgen += 1
    return rc


cdef int vc_txn_bulk_put(vc_txn* t, const unsigned char* key, uint32_t klen,
                         const unsigned char* value, uint32_t vlen, vc_err* err) noexcept nogil:
    """One put of a sorted load made key by key: once the transaction has written
    VC_BULK_AFTER keys in ascending order, the next one starts a bulk load (if its key
    range is empty in the snapshot), and the puts after it join it while they ascend
    below its limit.  A failed start is tried again VC_BULK_AFTER writes later."""
    cdef int rc
    if t.doomed or t.readonly or t.state != VC_TXN_ACTIVE:
        return 1                    # vc_txn_write reports it
    if t.nruns:
        rc = vc_txn_bulk_add(t, key, klen, value, vlen, err)
        if rc <= 0:
            return rc
    if not t.wa_mode or t.wa_len < t.bulk_tried + VC_BULK_AFTER:
        return 1
    t.bulk_tried = t.wa_len
    rc = vc_txn_bulk_begin(t, key, klen, NULL, 0, err)
    if rc <= 0:
        return -1 if rc < 0 else 1
    return vc_txn_bulk_add(t, key, klen, value, vlen, err)


cdef void vc_txn_bulk_drop(vc_txn* t) noexcept nogil:
    if t.nruns > 0:
        t.nruns -= 1
        vc_run_free(t.runs[t.nruns], True)
        t.wgen += 1


cdef int settle_entry(void* ctx, const unsigned char* key, uint32_t klen,
                      const unsigned char* value, uint32_t vlen, vc_err* err) noexcept nogil:
    return vc_txn_write(<vc_txn*>ctx, key, klen, value, vlen, VC_PUT, err)


cdef int vc_txn_bulk_settle(vc_txn* t, vc_err* err) noexcept nogil:
    cdef vc_run** runs = t.runs
    cdef size_t n = t.nruns, i
    cdef int rc = 0
    t.runs = NULL                   # detached: the writes below see no run
    t.nruns = t.runs_cap = 0
    for i in range(n):
        if rc == 0:
            rc = vc_run_finish(runs[i], err)
        if rc == 0:
            rc = vc_run_scan(t.db.pager, runs[i].leaves.items, NULL, runs[i].leaves.len,
                             settle_entry, t, err)
        vc_run_free(runs[i], True)
    free(runs)
    if rc < 0:
        t.doomed = True             # some of its writes are missing: it cannot commit
    return rc


cdef bint runrec_conflict(vc_db* db, vc_txn* t, const unsigned char* key, uint32_t klen) noexcept nogil:
    cdef int i
    cdef vc_runrec* r
    cdef bint hit = False
    pthread_mutex_lock(&db.run_lock)
    for i in range(db.nrunrecs):
        r = &db.runrecs[i]
        if r.owner == t.id or (r.ts != 0 and r.ts <= t.snapshot_ts):
            continue
        if vc_key_cmp(key, klen, r.lo, r.lolen) >= 0 and vc_key_cmp(key, klen, r.hi, r.hilen) <= 0:
            hit = True
            break
    pthread_mutex_unlock(&db.run_lock)
    return hit


cdef int runrecs_add(vc_db* db, vc_txn* t, vc_err* err) noexcept nogil:
    """Publish t's runs' key ranges (ts 0: committing)."""
    cdef size_t i
    cdef int ncap
    cdef vc_runrec* nr
    cdef vc_runrec* r
    cdef vc_run* run
    pthread_mutex_lock(&db.run_lock)
    for i in range(t.nruns):
        run = t.runs[i]
        if run.nkeys == 0:
            continue
        if db.nrunrecs == db.runrec_cap:
            ncap = db.runrec_cap * 2 if db.runrec_cap else 8
            nr = <vc_runrec*>realloc(db.runrecs, <size_t>ncap * sizeof(vc_runrec))
            if nr == NULL:
                pthread_mutex_unlock(&db.run_lock)
                runrecs_remove(db, t)
                return vc_fail(err, VC_E_NOMEM, "out of memory")
            db.runrecs = nr
            db.runrec_cap = ncap
        r = &db.runrecs[db.nrunrecs]
        r.ts = 0
        r.owner = t.id
        r.lo = <unsigned char*>malloc(run.lolen)
        r.hi = <unsigned char*>malloc(run.lastlen)
        if r.lo == NULL or r.hi == NULL:
            free(r.lo)
            free(r.hi)
            pthread_mutex_unlock(&db.run_lock)
            runrecs_remove(db, t)
            return vc_fail(err, VC_E_NOMEM, "out of memory")
        memcpy(r.lo, run.lo, run.lolen)
        memcpy(r.hi, run.last, run.lastlen)
        r.lolen = run.lolen
        r.hilen = run.lastlen
        vc_store_int_sc(&db.nrunrecs, db.nrunrecs + 1)
    pthread_mutex_unlock(&db.run_lock)
    return 0


cdef void runrecs_keep_if(vc_db* db, vc_txn* t, uint64_t horizon) noexcept nogil:
    """Drop t's committing records (t not NULL), or (t NULL) committed ones no snapshot
    older than them can still see: ts <= horizon (run_lock held)."""
    cdef int i, k = 0
    cdef vc_runrec* r
    for i in range(db.nrunrecs):
        r = &db.runrecs[i]
        if (t != NULL and r.owner == t.id and r.ts == 0) or \
                (t == NULL and r.ts != 0 and r.ts <= horizon):
            free(r.lo)
            free(r.hi)
            continue
        db.runrecs[k] = r[0]
        k += 1
    vc_store_int_sc(&db.nrunrecs, k)


cdef void runrecs_remove(vc_db* db, vc_txn* t) noexcept nogil:
    pthread_mutex_lock(&db.run_lock)
    runrecs_keep_if(db, t, 0)
    pthread_mutex_unlock(&db.run_lock)


cdef void runrecs_expire(vc_db* db) noexcept nogil:
    """Records every live and future snapshot is at least as new as leave the list (the
    GC's published horizon: no transaction can begin older than it)."""
    cdef uint64_t horizon = vc_load_u64_sc(&db.gc_horizon)
    if horizon == 0:
        return
    pthread_mutex_lock(&db.run_lock)
    runrecs_keep_if(db, NULL, horizon)
    pthread_mutex_unlock(&db.run_lock)


cdef void runrecs_stamp(vc_db* db, vc_txn* t, uint64_t ts) noexcept nogil:
    cdef int i
    pthread_mutex_lock(&db.run_lock)
    for i in range(db.nrunrecs):
        if db.runrecs[i].owner == t.id and db.runrecs[i].ts == 0:
            db.runrecs[i].ts = ts
    pthread_mutex_unlock(&db.run_lock)


cdef bint runs_conflict(vc_db* db, vc_txn* t, vc_err* err) noexcept nogil:
    """Whether another transaction wrote into one of t's runs' ranges: a version that is
    not aborted in a live memtable (whoever wrote it after t's snapshot), or a key in the
    current tree (folded in by a checkpoint since).  Caller holds ckpt_lock."""
    cdef size_t i
    cdef vc_run* run
    cdef vc_memtable* m
    cdef vc_node* n
    cdef vc_version* v
    cdef uint64_t ts
    cdef vc_cursor c
    cdef const unsigned char* k
    cdef uint32_t kl
    cdef bint hit = False
    pthread_rwlock_rdlock(&db.mems_lock)
    for i in range(t.nruns):
        run = t.runs[i]
        if run.nkeys == 0:
            continue
        m = <vc_memtable*>vc_load_ptr(<void* const*>&db.mems)
        while m != NULL and not hit:
            n = sl_find_ge(m, run.lo, run.lolen)
            while n != NULL and not hit and vc_key_cmp(n.key, n.klen, run.last, run.lastlen) <= 0:
                v = <vc_version*>vc_load_ptr(<void* const*>&n.versions)
                while v != NULL:
                    ts = version_ts(v)
                    if ts != VC_TS_ABORTED and not (ts == VC_TS_PENDING and v.owner == t.id):
                        hit = True
                        break
                    v = <vc_version*>vc_load_ptr(<void* const*>&v.older)
                n = sl_next(n, 0)
            m = <vc_memtable*>vc_load_ptr(<void* const*>&m.older)
        if hit:
            break
    pthread_rwlock_unlock(&db.mems_lock)
    if hit:
        return True
    for i in range(t.nruns):
        run = t.runs[i]
        if run.nkeys == 0:
            continue
        vc_cursor_init(&c, db.pager, db.view.root, db.view.height)
        if vc_cursor_seek_ge(&c, run.lo, run.lolen, err) < 0:
            hit = True          # cannot tell: refuse (the caller reports a conflict)
        elif c.valid:
            vc_cursor_key(&c, &k, &kl)
            hit = vc_key_cmp(k, kl, run.last, run.lastlen) <= 0
        vc_cursor_close(&c)
        if hit:
            break
    return hit


cdef int runs_prepare(vc_txn* t, uint32_t* root, uint32_t* height, vc_u32vec* allocs,
                      vc_u32vec* freed, vc_err* err) noexcept nogil:
    """A committing transaction's bulk loads: leaves written (and flushed unless
    sync="off"), ranges published for writers, checked for conflicts, spliced into a new
    tree that is not published yet.  0 with ckpt_lock held (runs_publish or runs_undo
    release it), or -1 with it released and nothing changed."""
    cdef vc_db* db = t.db
    cdef size_t i
    for i in range(t.nruns):
        if vc_run_finish(t.runs[i], err) < 0:
            return -1
    pthread_mutex_lock(&db.ckpt_lock)
    if db.failed:
        pthread_mutex_unlock(&db.ckpt_lock)
        return vc_fail(err, VC_E_IO, "the store stopped accepting writes after an error: %s",
                       db.failed_msg)
    if db.sync_mode != VC_SYNC_OFF and vc_pager_sync(db.pager, err) < 0:
        pthread_mutex_unlock(&db.ckpt_lock)
        return -1
    if runrecs_add(db, t, err) < 0:
        pthread_mutex_unlock(&db.ckpt_lock)
        return -1
    vc_fence_sc()       # the ranges are published before the memtables are searched
    if runs_conflict(db, t, err):
        runrecs_remove(db, t)
        db.conflicts += 1
        pthread_mutex_unlock(&db.ckpt_lock)
        return vc_fail(err, VC_E_CONFLICT, "write conflict: another transaction wrote into "
                       "the key range of this transaction's bulk load")
    root[0] = db.view.root
    height[0] = db.view.height
    for i in range(t.nruns):
        if vc_tree_splice(db.pager, root[0], height[0], t.runs[i], root, height, allocs,
                          freed, err) < 0:
            runs_undo(t, allocs, freed)
            return -1
    return 0


cdef void runs_undo(vc_txn* t, vc_u32vec* allocs, vc_u32vec* freed) noexcept nogil:
    """runs_prepare's tree is not published: its pages are free again (ckpt_lock released)."""
    cdef vc_db* db = t.db
    vc_pager_release_held(db.pager, allocs, 0, allocs.len)
    vc_u32vec_free(allocs)
    vc_u32vec_free(freed)
    runrecs_remove(db, t)
    pthread_mutex_unlock(&db.ckpt_lock)


cdef void runs_publish(vc_txn* t, uint64_t ts, uint32_t root, uint32_t height,
                       vc_u32vec* allocs, vc_u32vec* freed) noexcept nogil:
    """Commit ts is logged and its other writes stamped: publish the tree with its runs,
    once every earlier commit is visible (a snapshot that takes this view waits for ts:
    min_snap), then release ckpt_lock.  The pages it replaced are freed as a
    checkpoint's are: reused once a checkpoint's meta no longer names them and no reader
    holds the older tree."""
    cdef vc_db* db = t.db
    cdef vc_err ignored
    cdef size_t i
    await_visible(db, ts - 1)
    pthread_mutex_lock(&db.reg_lock)
    view_publish_begin(db)
    vc_store_u32_relaxed(&db.view.root, root)
    vc_store_u32_relaxed(&db.view.height, height)
    vc_store_u64_relaxed(&db.view.tree_version, db.view.tree_version + 1)
    vc_store_u64_relaxed(&db.view.min_snap, ts)
    view_publish_end(db)
    db.reclaim_pending = True
    pthread_mutex_unlock(&db.reg_lock)
    for i in range(freed.len):
        vc_page_free(db.pager, freed.items[i], &ignored)
    vc_u32vec_free(allocs)
    vc_u32vec_free(freed)
    runrecs_stamp(db, t, ts)
    db.bulk_loads += t.nruns
    for i in range(t.nruns):
        vc_store_u64_relaxed(&db.bulk_bytes, db.bulk_bytes + t.runs[i].pages.len * <uint64_t>VC_PAGE_SIZE)
        vc_run_free(t.runs[i], False)
    t.nruns = 0
    pthread_mutex_unlock(&db.ckpt_lock)


# ---------------------------------------------------------------- checkpoint

cdef int cmp_u32(const void* a, const void* b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t*>a)[0]
    cdef uint32_t y = (<const uint32_t*>b)[0]
    return (x > y) - (x < y)


cdef int vc_db_checkpoint(vc_db* db, bint only_if_due, vc_err* err) noexcept nogil:
    """Fold the active memtable into a new copy-on-write tree and flip the meta slot."""
    cdef vc_memtable* frozen
    cdef vc_memtable* fresh
    cdef uint64_t C, new_seg = 0, tree_version
    cdef vc_op* ops = NULL
    cdef uint32_t* dropped = NULL
    cdef size_t nops = 0, ndropped = 0, i, k
    cdef vc_node* n
    cdef vc_version* v
    cdef uint32_t root, height, tid
    cdef vc_meta meta
    cdef timespec now
    cdef int rc = 0
    if db.readonly:
        return 0
    if only_if_due:
        if not checkpoint_due(db, True):
            return 0
        if pthread_mutex_trylock(&db.ckpt_lock) != 0:
            return 0     # another thread is checkpointing
    else:
        pthread_mutex_lock(&db.ckpt_lock)

    # 1. freeze: new commits go to a fresh memtable and a fresh log segment
    pthread_mutex_lock(&db.commit_lock)
    if db.failed:
        pthread_mutex_unlock(&db.commit_lock)
        pthread_mutex_unlock(&db.ckpt_lock)
        return vc_fail(err, VC_E_IO, "the store stopped accepting writes after an error: %s",
                       db.failed_msg)
    if db.view.active.nkeys == 0 and db.bulk_bytes == 0:     # nothing new, no bulk load either
        pthread_mutex_unlock(&db.commit_lock)
        pthread_mutex_unlock(&db.ckpt_lock)
        return 0
    fresh = mem_new(db.next_gen, True, bloom_bytes_for(db.checkpoint_bytes), &db.chunks)
    if fresh == NULL:
        pthread_mutex_unlock(&db.commit_lock)
        pthread_mutex_unlock(&db.ckpt_lock)
        return vc_fail(err, VC_E_NOMEM, "out of memory starting a checkpoint")
    if db.wal != NULL and vc_wal_rotate(db.wal, &new_seg, err) < 0:
        mem_free(fresh)
        db_fail(db, err)
        pthread_mutex_unlock(&db.commit_lock)
        pthread_mutex_unlock(&db.ckpt_lock)
        return -1
    C = db.last_ts
    db.next_gen += 1
    frozen = db.view.active
    fresh.older = frozen
    # stop installs into the old memtable and wait for those under way (they are short)
    frozen.frozen_ts = C
    vc_store_int_sc(&frozen.frozen, 1)
    while vc_load_int_sc(&frozen.inflight) != 0:
        sched_yield()
    pthread_mutex_lock(&db.reg_lock)
    vc_store_ptr(<void**>&db.mems, fresh)
    view_publish_begin(db)
    vc_store_ptr_relaxed(<void**>&db.view.frozen, frozen)
    vc_store_ptr(<void**>&db.view.active, fresh)
    view_publish_end(db)
    pthread_mutex_unlock(&db.reg_lock)
    pthread_mutex_unlock(&db.commit_lock)
    # every commit up to C must be stamped before the merge reads the memtable
    await_visible(db, C)

    # 2. the frozen memtable's newest versions, in key order (all are <= C)
    ops = <vc_op*>malloc((frozen.nkeys + 1) * sizeof(vc_op))
    dropped = <uint32_t*>malloc((frozen.nkeys + 1) * sizeof(uint32_t))
    if ops == NULL or dropped == NULL:
        rc = vc_fail(err, VC_E_NOMEM, "out of memory in checkpoint")
    n = sl_next(frozen.head, 0)
    while rc == 0 and n != NULL:
        v = visible(n, C)            # newest committed version <= C; later ones are copied forward
        if v == NULL:
            n = sl_next(n, 0)
            continue
        if n.klen == 9 and memcmp(n.key, b"\0\0\0\0", 4) == 0 and n.key[4] == VC_CATALOG_DROP \
                and v.kind == VC_PUT:
            tid = (<uint32_t>n.key[5] << 24) | (<uint32_t>n.key[6] << 16) | (<uint32_t>n.key[7] << 8) | n.key[8]
            dropped[ndropped] = tid
            ndropped += 1
        else:
            ops[nops].key = n.key
            ops[nops].klen = n.klen
            ops[nops].value = v.value if v.kind == VC_PUT else NULL
            ops[nops].vlen = v.vlen if v.kind == VC_PUT else 0
            nops += 1
        n = sl_next(n, 0)
    if rc == 0 and ndropped:
        qsort(dropped, ndropped, sizeof(uint32_t), cmp_u32)
        # writes to a dropped table in the same memtable go with it
        k = 0
        for i in range(nops):
            if not table_in(ops[i].key, dropped, ndropped):
                ops[k] = ops[i]
                k += 1
        nops = k

    # 3. copy-on-write merge, then make it durable and flip the meta slot
    if rc == 0:
        rc = vc_tree_merge(db.pager, db.view.root, db.view.height, ops, nops, dropped, ndropped,
                           &root, &height, err)
    if rc == 0:
        memset(&meta, 0, sizeof(meta))
        meta.checkpoint_ts = C
        meta.log_start_seg = new_seg
        meta.root = root
        meta.height = height
        tree_version = db.view.tree_version + 1
        rc = vc_pager_commit_meta(db.pager, &meta, tree_version, err)
    free(ops)
    free(dropped)
    if rc < 0:
        db_fail(db, err)
        pthread_mutex_unlock(&db.ckpt_lock)
        return -1

    # 4. publish the new tree; the frozen memtable retires until its readers are gone
    pthread_mutex_lock(&db.reg_lock)
    view_publish_begin(db)
    vc_store_u32_relaxed(&db.view.root, root)
    vc_store_u32_relaxed(&db.view.height, height)
    vc_store_u64_relaxed(&db.view.tree_version, tree_version)
    vc_store_ptr_relaxed(<void**>&db.view.frozen, NULL)
    view_publish_end(db)
    frozen.retired_version = tree_version
    db.reclaim_pending = True
    vc_store_u64_relaxed(&db.bulk_bytes, 0)
    db.checkpoint_ts = C
    db.checkpoints += 1
    clock_gettime(CLOCK_REALTIME, &now)
    db.checkpoint_time = now.tv_sec + now.tv_nsec * 1e-9
    pthread_mutex_unlock(&db.reg_lock)
    if db.wal != NULL and vc_wal_remove_before(db.wal, new_seg, err) < 0:
        db_fail(db, err)
        pthread_mutex_unlock(&db.ckpt_lock)
        return -1
    reclaim(db)
    pthread_mutex_unlock(&db.ckpt_lock)
    return 0


cdef uint64_t checkpoint_backlog(vc_db* db, bint bulk=True) noexcept nogil:
    """What a checkpoint would fold: the log size, or memtable bytes when there is no log.
    bulk: with a log, the bytes of bulk loads spliced in since the last checkpoint count
    as if they were logged (a crash replays them from their leaves)."""
    cdef vc_memtable* m
    cdef uint64_t b
    if db.wal != NULL:
        return db.wal.total_bytes + (vc_load_u64_relaxed(&db.bulk_bytes) if bulk else 0)
    pthread_rwlock_rdlock(&db.mems_lock)      # see checkpoint_due
    m = <vc_memtable*>vc_load_ptr(<void* const*>&db.view.active)
    b = m.arena.bytes                         # a racy read of a counter: only a trigger
    pthread_rwlock_unlock(&db.mems_lock)
    return b


cdef bint checkpoint_due(vc_db* db, bint aborted) noexcept nogil:
    """Whether a background checkpoint is due: the backlog passed checkpoint_mb.

    aborted (after an aborted write transaction, and in the checkpointer): also when
    the active memtable holds enough of what aborted writes left, which they never log
    and only a checkpoint frees: four times checkpoint_mb of memory (committed writes
    cost the memtable less than four times their log bytes, so commits keep pacing
    checkpoints by the log alone and skip this), or nodes that may hold nothing live
    (every scan through them walks them), at least CKPT_DEAD_MIN and a quarter of all."""
    cdef vc_memtable* m
    cdef uint64_t mem, nkeys
    cdef int64_t dead
    if checkpoint_backlog(db) >= db.checkpoint_bytes:
        return True
    if not aborted:
        return False
    # under mems_lock: the memtable read as active may be frozen and retired meanwhile,
    # and reclaim() frees retired memtables only under the write lock
    pthread_rwlock_rdlock(&db.mems_lock)
    m = <vc_memtable*>vc_load_ptr(<void* const*>&db.view.active)
    mem = m.arena.bytes                       # racy reads of counters: only a trigger
    dead = <int64_t>vc_load_u64_relaxed(&m.dead)  # below 0 for a moment if an unlink's -1
                                                  # came before the abort's batched +1
    nkeys = m.nkeys
    pthread_rwlock_unlock(&db.mems_lock)
    if db.wal != NULL and mem // 4 >= db.checkpoint_bytes:
        return True
    return dead >= CKPT_DEAD_MIN and <uint64_t>dead * 4 >= nkeys


cdef void* checkpointer_main(void* arg) noexcept nogil:
    """Background checkpoints, each run when a committer reports the log is due.  While
    the store's chunk pool holds spare arena chunks, it waits at most POOL_IDLE_NS at a
    time, and unmaps them when none was taken meanwhile (pool_release_idle)."""
    cdef vc_db* db = <vc_db*>arg
    cdef vc_err err
    cdef size_t spare
    cdef uint64_t seen, deadline
    cdef timespec ts
    while True:
        pthread_mutex_lock(&db.ckpt_sig_lock)
        while not db.ckpt_requested and not db.ckpt_stop:
            seen = pool_peek(&db.chunks, &spare)
            if spare == 0:
                pthread_cond_wait(&db.ckpt_sig_cond, &db.ckpt_sig_lock)
                continue
            # spare arena chunks: if no memtable takes one for POOL_IDLE_NS, return them
            deadline = vc_now_ns() + POOL_IDLE_NS        # ckpt_sig_cond's clock
            ts.tv_sec = <long>(deadline // 1000000000)
            ts.tv_nsec = <long>(deadline % 1000000000)
            if (pthread_cond_timedwait(&db.ckpt_sig_cond, &db.ckpt_sig_lock, &ts) == ETIMEDOUT
                    and not db.ckpt_requested and not db.ckpt_stop):
                pthread_mutex_unlock(&db.ckpt_sig_lock)
                pool_release_idle(&db.chunks, seen)
                pthread_mutex_lock(&db.ckpt_sig_lock)
        if db.ckpt_stop:
            pthread_mutex_unlock(&db.ckpt_sig_lock)
            break
        db.ckpt_requested = 0
        pthread_mutex_unlock(&db.ckpt_sig_lock)
        err.code = VC_E_NONE
        err.msg[0] = 0
        # a failure marks the store failed (db_fail): the next commit reports it
        vc_db_checkpoint(db, True, &err)
        pthread_mutex_lock(&db.ckpt_sig_lock)
        pthread_cond_broadcast(&db.ckpt_sig_cond)     # wakes committers waiting on backlog
        pthread_mutex_unlock(&db.ckpt_sig_lock)
    return NULL


cdef void checkpoint_if_due(vc_db* db, bint aborted=False) noexcept nogil:
    """Called after each commit: wake the checkpointer when the log is due; when it has
    fallen far behind (4x), wait for it, so memory stays bounded.  aborted: called after
    an aborted write transaction instead, whose versions stay in the memtable until a
    checkpoint: what they leave there counts too (see checkpoint_due), and it never
    waits (the facade's abort holds the GIL)."""
    if not db.ckpt_thread_running or not checkpoint_due(db, aborted):
        return
    pthread_mutex_lock(&db.ckpt_sig_lock)
    if not db.ckpt_requested:
        db.ckpt_requested = 1
        pthread_cond_broadcast(&db.ckpt_sig_cond)
    # (bulk loads do not count here: they hold no memory until the checkpoint)
    while (not aborted and checkpoint_backlog(db, False) >= 4 * db.checkpoint_bytes
           and db.ckpt_requested and not db.ckpt_stop and not db.failed):
        pthread_cond_wait(&db.ckpt_sig_cond, &db.ckpt_sig_lock)
    pthread_mutex_unlock(&db.ckpt_sig_lock)


cdef bint table_in(const unsigned char* key, const uint32_t* tids, size_t n) noexcept nogil:
    cdef uint32_t t = (<uint32_t>key[0] << 24) | (<uint32_t>key[1] << 16) | (<uint32_t>key[2] << 8) | key[3]
    cdef size_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if tids[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo < n and tids[lo] == t


cdef long vc_db_check(vc_db* db, vc_buf* report, uint64_t* nkeys, vc_err* err) noexcept nogil:
    cdef long r
    pthread_mutex_lock(&db.ckpt_lock)
    r = vc_tree_check(db.pager, db.view.root, db.view.height, report, nkeys, err)
    pthread_mutex_unlock(&db.ckpt_lock)
    return r


cdef void vc_db_stats(vc_db* db, uint64_t* out) noexcept nogil:
    """out[0..23]: see _store.pyx Store.info for the meaning of each slot."""
    cdef vc_txn* t
    cdef uint64_t live, snap
    cdef uint32_t i
    cdef vc_memtable* m
    cdef uint64_t oldest = 0, mem_bytes = 0, versions = 0, nmems = 0, deferred = 0
    pthread_mutex_lock(&db.reg_lock)
    t = db.txns
    oldest = 0
    live = db.ntxns
    while t != NULL:
        if oldest == 0 or t.snapshot_ts < oldest:
            oldest = t.snapshot_ts
        t = t.next
    for i in range(VC_NSLOTS):
        if vc_load_u64_sc(&db.slots[i].tree_version) != 0:
            live += 1
            snap = vc_load_u64_sc(&db.slots[i].snapshot_ts)
            if snap != 0 and (oldest == 0 or snap - 1 < oldest):
                oldest = snap - 1
    m = db.mems
    while m != NULL:
        mem_bytes += m.arena.bytes
        versions += m.nversions
        deferred += vc_load_u64_relaxed(&m.ndeferred)
        nmems += 1
        m = m.older
    out[0] = db.pager.page_count
    out[1] = db.view.height
    out[2] = vc_pager_hits(db.pager)
    out[3] = db.pager.misses
    out[4] = db.wal.total_bytes if db.wal != NULL else 0
    out[5] = live
    out[6] = oldest
    out[7] = db.checkpoint_ts
    out[8] = db.checkpoints
    out[9] = db.last_ts
    out[10] = vc_load_u64(&db.visible_ts)
    out[11] = mem_bytes
    out[12] = versions
    out[13] = nmems
    out[14] = db.commits
    out[15] = db.pager.free_now.len
    out[16] = vc_load_u64_relaxed(&db.versions_pruned)
    out[17] = deferred
    out[18] = vc_load_u64_relaxed(&db.gc_horizon)
    out[19] = db.wal.commit_flushes if db.wal != NULL else 0
    out[20] = db.wal.zeroed_bytes if db.wal != NULL else 0
    pthread_mutex_unlock(&db.reg_lock)
    pthread_mutex_lock(&db.chunks.lock)
    out[21] = db.chunks.count * ARENA_MAPPED
    out[22] = db.chunks.reused
    out[24] = db.chunks.mapped_ahead
    pthread_mutex_unlock(&db.chunks.lock)
    out[23] = db.bulk_loads


# ---------------------------------------------------------------- iterators

cdef inline bint node_relevant(vc_iter* it, int s, vc_node* n) noexcept nogil:
    if s == 0:
        return n.versions.kind != VC_CHECK
    return visible(n, it.txn.snapshot_ts) != NULL


cdef void src_settle(vc_iter* it, int s) noexcept nogil:
    """Move source s off nodes that hold nothing for this reader."""
    cdef vc_node* n = it.node[s]
    while n != NULL and not node_relevant(it, s, n):
        if it.reverse:
            n = sl_find_lt(it.mem[s], n.key, n.klen)
        else:
            n = sl_next(n, 0)
    it.node[s] = n


cdef int vc_iter_init(vc_iter* it, vc_txn* t, const unsigned char* lo, uint32_t lolen,
                      const unsigned char* hi, uint32_t hilen, bint reverse, vc_err* err) noexcept nogil:
    cdef int s
    # every field but the key buffers (which are written before they are read)
    memset(it, 0, <size_t>(<char*>&it.lo - <char*>it))
    it.done = False
    it.started = False
    it.from_tree = False
    it.value = NULL
    it.vlen = 0
    it.curlen = 0
    it.mem[0] = it.mem[1] = it.mem[2] = NULL
    it.node[0] = it.node[1] = it.node[2] = NULL
    it.txn = t
    it.reverse = reverse
    memcpy(it.lo, lo, lolen)
    it.lolen = lolen
    memcpy(it.hi, hi, hilen)
    it.hilen = hilen
    vc_cursor_init(&it.tree, t.db.pager, t.view.root, t.view.height)
    if t.nruns and vc_txn_bulk_settle(t, err) < 0:     # its bulk loads become writes
        it.done = True
        return -1
    if t.wa_mode and wa_link_all(t, err) < 0:     # iterators walk the skip list
        it.done = True
        return -1
    it.mem[0] = t.ws
    it.mem[1] = t.view.active
    it.mem[2] = t.view.frozen
    if vc_key_cmp(lo, lolen, hi, hilen) >= 0:
        it.done = True
        return 0
    for s in range(3):
        if it.mem[s] == NULL:
            continue
        if reverse:
            it.node[s] = sl_find_lt(it.mem[s], hi, hilen)
        else:
            it.node[s] = sl_find_ge(it.mem[s], lo, lolen)
        src_settle(it, s)
    if reverse:
        return vc_cursor_seek_lt(&it.tree, hi, hilen, err)
    return vc_cursor_seek_ge(&it.tree, lo, lolen, err)


cdef inline int iter_accept(vc_iter* it, const unsigned char* k, uint32_t kl) noexcept nogil:
    """k is the next key in the merge: VC_OK once recorded as the key returned, or
    VC_NOTFOUND (the iterator is done) if it lies past the range's bound."""
    if (not it.reverse and vc_key_cmp(k, kl, it.hi, it.hilen) >= 0) or \
       (it.reverse and vc_key_cmp(k, kl, it.lo, it.lolen) < 0):
        it.done = True
        return VC_NOTFOUND
    memcpy(it.cur, k, kl)
    it.curlen = kl
    it.key_ref = k
    return VC_OK


cdef int vc_iter_next(vc_iter* it, vc_err* err) noexcept nogil:
    cdef int s, best, c
    cdef const unsigned char* bk
    cdef uint32_t bkl
    cdef const unsigned char* k
    cdef uint32_t kl
    cdef vc_version* v
    if it.done:
        return VC_NOTFOUND
    if it.from_tree and it.node[0] == NULL and it.node[1] == NULL and it.node[2] == NULL:
        # only the tree is left (a checkpointed range), and the cursor is on the entry
        # returned last: step, decode once, check the bound
        if (vc_cursor_prev(&it.tree, err) if it.reverse else vc_cursor_next(&it.tree, err)) < 0:
            return -1
        if not it.tree.valid:
            it.done = True
            return VC_NOTFOUND
        if vc_cursor_entry(&it.tree, &k, &kl, &it.value, &it.vlen, err) < 0:
            return -1
        return iter_accept(it, k, kl)
    while True:
        # step every source off the key returned last
        if it.started:
            for s in range(3):
                if it.node[s] != NULL and vc_key_cmp(it.node[s].key, it.node[s].klen, it.cur, it.curlen) == 0:
                    if it.reverse:
                        it.node[s] = sl_find_lt(it.mem[s], it.cur, it.curlen)
                    else:
                        it.node[s] = sl_next(it.node[s], 0)
                    src_settle(it, s)
            if it.tree.valid:
                vc_cursor_key(&it.tree, &k, &kl)
                if vc_key_cmp(k, kl, it.cur, it.curlen) == 0:
                    if (vc_cursor_prev(&it.tree, err) if it.reverse else vc_cursor_next(&it.tree, err)) < 0:
                        return -1
        it.started = True
        # the smallest (largest, reversed) key among the sources; earlier sources win ties
        best = -1
        bk = NULL
        bkl = 0
        for s in range(3):
            if it.node[s] != NULL:
                if best < 0:
                    c = -1
                else:
                    c = vc_key_cmp(it.node[s].key, it.node[s].klen, bk, bkl)
                    if it.reverse:
                        c = -c
                if c < 0:
                    best = s
                    bk = it.node[s].key
                    bkl = it.node[s].klen
        if it.tree.valid:
            vc_cursor_key(&it.tree, &k, &kl)
            if k == NULL:
                return vc_fail(err, VC_E_CORRUPT, "%s: damaged leaf entry", it.txn.db.pager.path)
            if best < 0:
                c = -1
            else:
                c = vc_key_cmp(k, kl, bk, bkl)
                if it.reverse:
                    c = -c
            if c < 0:
                best = 3
                bk = k
                bkl = kl
        if best < 0:
            it.done = True
            return VC_NOTFOUND
        if iter_accept(it, bk, bkl) == VC_NOTFOUND:
            return VC_NOTFOUND
        it.from_tree = best == 3
        if best == 3:
            if vc_cursor_value(&it.tree, &it.value, &it.vlen, err) < 0:
                return -1
            return VC_OK
        if best == 0:
            v = it.node[0].versions
        else:
            v = visible(it.node[best], it.txn.snapshot_ts)
        if v.kind == VC_DEL:
            continue
        it.value = v.value
        it.vlen = v.vlen
        return VC_OK


cdef void vc_iter_unpin(vc_iter* it) noexcept nogil:
    cdef uint32_t i
    if it.npins == 0:
        return
    for i in range(it.npins):
        vc_page_release(it.txn.db.pager, it.pins[i])
    vc_sub_u64_relaxed(&it.txn.db.iter_pins, it.npins)
    it.npins = 0


cdef void vc_iter_close(vc_iter* it) noexcept nogil:
    vc_iter_unpin(it)
    vc_cursor_close(&it.tree)
    it.done = True


cdef inline bint iter_pin_leaf(vc_iter* it, uint32_t h) noexcept nogil:
    """Pin the cursor's leaf (frame h) for the block, within the store-wide cap."""
    cdef vc_db* db = it.txn.db
    if not vc_budget_take(&db.iter_pins, db.pager.nframes // 4):
        return False
    vc_page_repin(db.pager, h)
    it.pins[it.npins] = h
    it.npins += 1
    return True


cdef int vc_iter_fill_refs(vc_iter* it, vc_iref* out, size_t max_entries, vc_buf* spill,
                           bint keys_only, size_t* count, vc_err* err) noexcept nogil:
    cdef int rc
    cdef uint32_t h
    cdef uint32_t pinned = VC_NO_FRAME   # the leaf the block has pinned last
    cdef uint32_t unpinned = VC_NO_FRAME # a leaf it could not pin: its entries are copied
    cdef uint32_t vlen
    cdef vc_iref* r
    cdef bint copy
    vc_iter_unpin(it)
    count[0] = 0
    spill.len = 0
    while count[0] < max_entries:
        rc = vc_iter_next(it, err)
        if rc < 0:
            return -1
        if rc == VC_NOTFOUND:
            break
        vlen = 0 if keys_only else <uint32_t>it.vlen
        copy = False
        if it.from_tree:
            h = it.tree.leaf_handle
            if h != VC_NO_FRAME and h != pinned:
                if h != unpinned:
                    vc_cursor_prefetch(&it.tree, it.reverse)   # a new leaf: load what follows
                    if iter_pin_leaf(it, h):
                        pinned = h
                    else:
                        unpinned = h
                copy = h == unpinned
        r = &out[count[0]]
        r.klen = it.curlen
        r.vlen = vlen
        r.voff = 0
        if copy:
            # no pin for this leaf: the entry itself goes to the spill buffer
            r.key = NULL
            r.value = NULL
            r.voff = spill.len
            if vc_buf_reserve(spill, spill.len + it.curlen + vlen) < 0:
                return vc_fail(err, VC_E_NOMEM, "out of memory reading a range")
            memcpy(spill.data + spill.len, it.key_ref, it.curlen)
            if vlen:
                memcpy(spill.data + spill.len + it.curlen, it.value, vlen)
            spill.len += it.curlen + vlen
        else:
            r.key = it.key_ref
            r.value = it.value if vlen else it.key_ref   # any valid pointer when empty
            # the caller copies each entry soon after: start loading its lines now
            vc_prefetch(it.key_ref)
            if vlen:
                vc_prefetch(it.value)
                if vlen > 64:
                    vc_prefetch(it.value + 64)
            if vlen and it.from_tree and it.value == <const unsigned char*>it.tree.ovf.data:
                # read from overflow pages into the cursor's buffer, which the next step reuses
                r.value = NULL
                r.voff = spill.len
                if vc_buf_reserve(spill, spill.len + vlen) < 0:
                    return vc_fail(err, VC_E_NOMEM, "out of memory reading a range")
                memcpy(spill.data + spill.len, it.value, vlen)
                spill.len += vlen
        count[0] += 1
        if it.npins > VC_ITER_PINS:
            break
    return 0

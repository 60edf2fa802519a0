# Page file, page cache (CLOCK), meta slots, free-space bookkeeping.  No Python objects.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset, memcpy, memcmp, memmove, strlen
from libc.stdio cimport snprintf
from libc.errno cimport errno, EINTR
from posix.unistd cimport pread, pwrite, close, fdatasync, fsync, ftruncate
from posix.fcntl cimport open as c_open, O_RDWR, O_RDONLY, O_CREAT
from posix.stat cimport struct_stat, fstat

from velocore._common cimport (vc_frame_load, vc_frame_cas, vc_frame_store, vc_frame_unpin, vc_frame_repin,
                               vc_frame_mark_evicting, vc_load_u32_acquire, vc_store_u32_release,
                               vc_load_u8_relaxed, vc_store_u8_relaxed,
                               vc_load_u64_relaxed, vc_store_u64_relaxed, vc_fence_release,
                               VC_FRAME_EVICTING)
from velocore._common cimport (vc_err, vc_fail, vc_fail_errno, vc_crc32c, vc_u32vec, vc_prefetch,
                               vc_u32vec_push, vc_u32vec_free, VC_E_IO, VC_E_CORRUPT,
                               VC_E_NOMEM, VC_E_NOFILE, pthread_mutex_init,
                               pthread_mutex_destroy, pthread_mutex_lock, pthread_mutex_unlock,
                               sched_yield, vc_huge_alloc, vc_huge_free)

cdef enum:
    MEM_CHUNK_BITS = 16
    MEM_CHUNK = 65536
    FREELIST_PER_PAGE = (VC_PAGE_SIZE - VC_HDR_SIZE) // 4
    MIN_FRAMES = 64

cdef const char* META_MAGIC = b"VELOCORE"


cdef uint32_t vc_page_crc(const unsigned char* page) noexcept nogil:
    return vc_crc32c(0, page + 4, VC_PAGE_SIZE - 4)


cdef inline uint32_t slot_hash(uint32_t page_id) noexcept nogil:
    # Groups of 16 consecutive page ids keep their order inside one cache line of the table
    # (16 slots of 4 bytes), so a scan, whose next leaves mostly have the next page ids,
    # finds their slots in a line it has already loaded; Fibonacci hashing spreads the
    # groups over the table.
    return (<uint32_t>(((<uint64_t>(page_id >> 4)) * 0x9E3779B97F4A7C15ULL) >> 32) << 4) | (page_id & 15)


cdef int full_pread(int fd, unsigned char* buf, size_t n, uint64_t off) noexcept nogil:
    """Read exactly n bytes; returns bytes read (short only at end of file), -1 on error."""
    cdef size_t done = 0
    cdef ssize_t r
    while done < n:
        r = pread(fd, buf + done, n - done, <long>(off + done))
        if r < 0:
            if errno == EINTR:
                continue
            return -1
        if r == 0:
            break
        done += <size_t>r
    return <int>done


cdef int full_pwrite(int fd, const unsigned char* buf, size_t n, uint64_t off) noexcept nogil:
    cdef size_t done = 0
    cdef ssize_t r
    while done < n:
        r = pwrite(fd, buf + done, n - done, <long>(off + done))
        if r < 0:
            if errno == EINTR:
                continue
            return -1
        done += <size_t>r
    return 0


cdef int check_page(vc_pager* p, const unsigned char* page, uint32_t page_id, vc_err* err) noexcept nogil:
    cdef const vc_page_hdr* h = <const vc_page_hdr*>page
    if h.crc != vc_page_crc(page):
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: checksum mismatch (offset %llu)",
                       p.path, page_id, <unsigned long long>page_id * VC_PAGE_SIZE)
    if h.page_id != page_id:
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: header names page %u (misplaced write)",
                       p.path, page_id, h.page_id)
    return 0


cdef int meta_valid(const unsigned char* page, uint32_t slot) noexcept nogil:
    cdef const vc_meta* m = <const vc_meta*>page
    if m.hdr.crc != vc_page_crc(page) or m.hdr.type != VC_PAGE_META or m.hdr.page_id != slot:
        return 0
    if memcmp(m.magic, META_MAGIC, 8) != 0 or m.format_version != VC_FORMAT_VERSION:
        return 0
    if m.page_size != VC_PAGE_SIZE or m.page_count < 2:
        return 0
    return 1


# ---------------------------------------------------------------- open / close

cdef int write_initial_metas(vc_pager* p, vc_meta* meta, vc_err* err) noexcept nogil:
    cdef unsigned char buf[VC_PAGE_SIZE]
    cdef vc_meta* m = <vc_meta*>buf
    cdef uint32_t slot
    for slot in range(2):
        memset(buf, 0, VC_PAGE_SIZE)
        m.hdr.type = VC_PAGE_META
        m.hdr.page_id = slot
        memcpy(m.magic, META_MAGIC, 8)
        m.format_version = VC_FORMAT_VERSION
        m.page_size = VC_PAGE_SIZE
        m.checkpoint_seq = 1 - slot        # slot 0 holds seq 1, slot 1 seq 0
        m.checkpoint_ts = 0
        m.log_start_seg = 1
        m.page_count = 2
        m.hdr.crc = vc_page_crc(buf)
        if full_pwrite(p.fd, buf, VC_PAGE_SIZE, <uint64_t>slot * VC_PAGE_SIZE) < 0:
            return vc_fail_errno(err, VC_E_IO, errno, "%s: writing meta page %u", p.path, slot)
        if slot == 0:
            memcpy(meta, buf, sizeof(vc_meta))
    if fdatasync(p.fd) < 0:
        return vc_fail_errno(err, VC_E_IO, errno, "%s: fdatasync", p.path)
    return 0


cdef int load_freelist(vc_pager* p, vc_meta* meta, vc_err* err) noexcept nogil:
    cdef unsigned char buf[VC_PAGE_SIZE]
    cdef const vc_page_hdr* h = <const vc_page_hdr*>buf
    cdef const uint32_t* ids
    cdef uint32_t pid = meta.freelist_head
    cdef uint32_t i
    cdef uint64_t seen = 0
    cdef uint64_t hops = 0
    while pid != 0:
        hops += 1
        if pid < 2 or pid >= p.page_count or hops > p.page_count:
            return vc_fail(err, VC_E_CORRUPT, "%s: freelist chain points at page %u (page count %u)",
                           p.path, pid, p.page_count)
        if vc_page_read_into(p, pid, buf, err) < 0:
            return -1
        if h.type != VC_PAGE_FREELIST or h.count > FREELIST_PER_PAGE:
            return vc_fail(err, VC_E_CORRUPT, "%s: page %u: expected a freelist page", p.path, pid)
        ids = <const uint32_t*>(buf + VC_HDR_SIZE)
        for i in range(h.count):
            if ids[i] < 2 or ids[i] >= p.page_count:
                return vc_fail(err, VC_E_CORRUPT, "%s: page %u: freelist entry %u out of range",
                               p.path, pid, ids[i])
            if vc_u32vec_push(&p.free_now, ids[i]) < 0:
                return vc_fail(err, VC_E_NOMEM, "out of memory loading the freelist")
        seen += h.count
        if vc_u32vec_push(&p.chain_pages, pid) < 0:
            return vc_fail(err, VC_E_NOMEM, "out of memory loading the freelist")
        pid = h.aux
    if seen != meta.free_count:
        return vc_fail(err, VC_E_CORRUPT, "%s: freelist holds %llu pages, meta says %llu", p.path,
                       <unsigned long long>seen, <unsigned long long>meta.free_count)
    return 0


cdef int vc_pager_open(vc_pager** out, const char* store_dir, bint readonly, size_t cache_bytes,
                       vc_hints_fn derive_hints, vc_meta* meta, vc_err* err) noexcept nogil:
    cdef vc_pager* p = <vc_pager*>calloc(1, sizeof(vc_pager))
    cdef struct_stat st
    cdef unsigned char buf0[VC_PAGE_SIZE]
    cdef unsigned char buf1[VC_PAGE_SIZE]
    cdef int ok0, ok1, n0, n1, dfd, rc
    cdef uint32_t i
    if p == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory opening the store")
    out[0] = p
    p.fd = -1
    p.readonly = readonly
    pthread_mutex_init(&p.lock, NULL)
    pthread_mutex_init(&p.free_lock, NULL)
    memset(meta, 0, sizeof(vc_meta))
    if store_dir == NULL:
        snprintf(p.path, sizeof(p.path), "<memory>")
        p.mem_dir = <unsigned char***>calloc(MEM_CHUNK, sizeof(unsigned char**))
        if p.mem_dir == NULL:
            return vc_fail(err, VC_E_NOMEM, "out of memory opening the store")
        p.page_count = 2
        meta.page_count = 2
        meta.log_start_seg = 1
        return 0

    snprintf(p.path, sizeof(p.path), "%s/data.vc", store_dir)
    p.fd = c_open(p.path, O_RDONLY if readonly else (O_RDWR | O_CREAT), 0o644)
    if p.fd < 0:
        if readonly:
            return vc_fail_errno(err, VC_E_NOFILE, errno, "%s", p.path)
        return vc_fail_errno(err, VC_E_IO, errno, "%s", p.path)
    if fstat(p.fd, &st) < 0:
        return vc_fail_errno(err, VC_E_IO, errno, "%s", p.path)
    if st.st_size == 0:
        if readonly:
            # A store created but never written: nothing to read.
            p.page_count = 2
            meta.page_count = 2
            meta.log_start_seg = 1
            p.meta_seq = 0
        else:
            if write_initial_metas(p, meta, err) < 0:
                return -1
            # make the new file's directory entry durable too
            dfd = c_open(store_dir, O_RDONLY)
            if dfd < 0 or fsync(dfd) < 0:
                rc = errno
                if dfd >= 0:
                    close(dfd)
                return vc_fail_errno(err, VC_E_IO, rc, "fsync of directory %s", store_dir)
            close(dfd)
            p.page_count = 2
            p.meta_seq = 1
    else:
        n0 = full_pread(p.fd, buf0, VC_PAGE_SIZE, 0)
        n1 = full_pread(p.fd, buf1, VC_PAGE_SIZE, VC_PAGE_SIZE)
        if n0 < 0 or n1 < 0:
            return vc_fail_errno(err, VC_E_IO, errno, "%s: reading meta pages", p.path)
        ok0 = n0 == VC_PAGE_SIZE and meta_valid(buf0, 0)
        ok1 = n1 == VC_PAGE_SIZE and meta_valid(buf1, 1)
        if not ok0 and not ok1:
            return vc_fail(err, VC_E_CORRUPT,
                           "%s: no valid meta page at offset 0 or 4096: not a velocore data file, "
                           "or both meta slots are damaged", p.path)
        if ok0 and (not ok1 or (<vc_meta*>buf0).checkpoint_seq > (<vc_meta*>buf1).checkpoint_seq):
            memcpy(meta, buf0, sizeof(vc_meta))
        else:
            memcpy(meta, buf1, sizeof(vc_meta))
        p.page_count = meta.page_count
        p.meta_seq = meta.checkpoint_seq
        if <uint64_t>st.st_size < <uint64_t>p.page_count * VC_PAGE_SIZE:
            return vc_fail(err, VC_E_CORRUPT, "%s: file is %lld bytes, the checkpoint needs %llu",
                           p.path, <long long>st.st_size,
                           <unsigned long long>p.page_count * VC_PAGE_SIZE)
        if meta.root >= p.page_count or meta.height > 40 or (meta.root == 0) != (meta.height == 0):
            return vc_fail(err, VC_E_CORRUPT, "%s: meta page %u: bad root %u / height %u", p.path,
                           meta.hdr.page_id, meta.root, meta.height)
        p.freelist_head = meta.freelist_head

    # page cache: each frame's page and hint block come out of cache_bytes
    p.nframes = <uint32_t>(cache_bytes // (VC_PAGE_SIZE + sizeof(vc_hints)))
    if p.nframes < MIN_FRAMES:
        p.nframes = MIN_FRAMES
    # the cache's four arrays are read at random; 2 MiB pages keep those reads from also
    # missing the TLB (vc_huge.h).  Zeroed, and touched only as frames fill.
    p.frame_mem = <unsigned char*>vc_huge_alloc(<size_t>p.nframes * VC_PAGE_SIZE)
    # hint blocks: a frame's block is written by every load into it
    p.hints = <vc_hints*>vc_huge_alloc(<size_t>p.nframes * sizeof(vc_hints))
    p.frames = <vc_frame*>vc_huge_alloc(<size_t>p.nframes * sizeof(vc_frame))
    p.slot_mask = 1
    while p.slot_mask < p.nframes * 2:
        p.slot_mask <<= 1
    p.slots = <uint32_t*>vc_huge_alloc(p.slot_mask * sizeof(uint32_t))
    p.slot_mask -= 1
    p.derive_hints = derive_hints
    if p.frame_mem == NULL or p.hints == NULL or p.frames == NULL or p.slots == NULL:
        return vc_fail(err, VC_E_NOMEM, "cannot allocate a page cache of %u pages", p.nframes)
    for i in range(p.nframes):
        memset(&p.frames[i], 0, sizeof(vc_frame))
        p.frames[i].page_id = VC_NO_FRAME
        p.frames[i].state = (<uint64_t>VC_NO_FRAME) << 32
    if st.st_size > 0:
        if load_freelist(p, meta, err) < 0:
            return -1
    return 0


cdef void vc_pager_close(vc_pager* p) noexcept nogil:
    cdef size_t i, j
    if p == NULL:
        return
    if p.fd >= 0:
        close(p.fd)
    if p.mem_dir != NULL:
        for i in range(MEM_CHUNK):
            if p.mem_dir[i] != NULL:
                for j in range(MEM_CHUNK):
                    free(p.mem_dir[i][j])
                free(p.mem_dir[i])
        free(p.mem_dir)
    vc_huge_free(p.frame_mem, <size_t>p.nframes * VC_PAGE_SIZE)
    vc_huge_free(p.hints, <size_t>p.nframes * sizeof(vc_hints))
    vc_huge_free(p.frames, <size_t>p.nframes * sizeof(vc_frame))
    vc_huge_free(p.slots, (<size_t>p.slot_mask + 1) * sizeof(uint32_t))
    vc_u32vec_free(&p.free_now)
    vc_u32vec_free(&p.freed_cur)
    vc_u32vec_free(&p.chain_pages)
    for i in range(p.npending):
        vc_u32vec_free(&p.pending[i].pages)
    free(p.pending)
    free(p.held)
    pthread_mutex_destroy(&p.lock)
    pthread_mutex_destroy(&p.free_lock)
    free(p)


# ---------------------------------------------------------------- cache

cdef inline unsigned char* mem_page(vc_pager* p, uint32_t page_id) noexcept nogil:
    cdef unsigned char** chunk = p.mem_dir[page_id >> MEM_CHUNK_BITS]
    if chunk == NULL:
        return NULL
    return chunk[page_id & (MEM_CHUNK - 1)]


cdef void slot_remove(vc_pager* p, uint32_t page_id) noexcept nogil:
    """Unmap page_id (backward-shift deletion keeps linear probing chains intact)."""
    cdef uint32_t i = slot_hash(page_id) & p.slot_mask
    cdef uint32_t j, k, f
    while True:
        f = p.slots[i]
        if f == 0:
            return
        if p.frames[f - 1].page_id == page_id:
            break
        i = (i + 1) & p.slot_mask
    vc_store_u32_release(&p.slots[i], 0)
    j = i
    while True:
        j = (j + 1) & p.slot_mask
        f = p.slots[j]
        if f == 0:
            return
        k = slot_hash(p.frames[f - 1].page_id) & p.slot_mask
        # move slot j into the hole at i unless its home k lies cyclically in (i, j]
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            vc_store_u32_release(&p.slots[i], f)
            vc_store_u32_release(&p.slots[j], 0)
            i = j


cdef inline bint try_pin(vc_frame* fr, uint32_t page_id) noexcept nogil:
    """Pin fr if it holds page_id and is not being emptied, refilled or loaded."""
    cdef uint64_t st
    while True:
        st = vc_frame_load(&fr.state)
        if <uint32_t>(st >> 32) != page_id or (st & VC_FRAME_EVICTING):
            return False
        if vc_frame_cas(&fr.state, st, st + 1):
            return True


cdef inline void prefetch_hints(vc_pager* p, uint32_t f) noexcept nogil:
    """A page lookup found frame f in the page table: its caller searches the page's hint
    block next, so start loading the block's four lines now, while the frame's own line
    (which says whether it holds the page) is still on its way; their misses then
    overlap.  A frame that turns out to hold another page only wastes the hint."""
    cdef const unsigned char* hb = <const unsigned char*>&p.hints[f]
    vc_prefetch(hb)
    vc_prefetch(hb + 64)
    vc_prefetch(hb + 128)
    vc_prefetch(hb + 192)


cdef inline int lookup_pin(vc_pager* p, uint32_t page_id) noexcept nogil:
    """Frame index holding page_id, pinned; -1 if none found (maybe falsely, while a
    concurrent slot change is under way: the caller then retries under the lock)."""
    cdef uint32_t i = slot_hash(page_id) & p.slot_mask
    cdef uint32_t f, probes = 0
    cdef vc_frame* fr
    while probes <= p.slot_mask:
        f = vc_load_u32_acquire(&p.slots[i])
        if f == 0:
            return -1
        fr = &p.frames[f - 1]
        prefetch_hints(p, f - 1)
        if try_pin(fr, page_id):
            # a statistic: a plain increment (two threads hitting the frame at once may
            # count one hit), no locked instruction on the hit path
            vc_store_u64_relaxed(&fr.hits, vc_load_u64_relaxed(&fr.hits) + 1)
            if not vc_load_u8_relaxed(&fr.referenced):
                vc_store_u8_relaxed(&fr.referenced, 1)
            return <int>(f - 1)
        i = (i + 1) & p.slot_mask
        probes += 1
    return -1


cdef int slot_find(vc_pager* p, uint32_t page_id) noexcept nogil:
    """Frame index mapped to page_id, -1 if none (caller holds the cache lock)."""
    cdef uint32_t i = slot_hash(page_id) & p.slot_mask
    cdef uint32_t f
    while True:
        f = p.slots[i]
        if f == 0:
            return -1
        if p.frames[f - 1].page_id == page_id:
            return <int>(f - 1)
        i = (i + 1) & p.slot_mask


cdef void slot_insert(vc_pager* p, uint32_t page_id, uint32_t f) noexcept nogil:
    """Map page_id to frame f (caller holds the cache lock; page_id is not mapped)."""
    cdef uint32_t i = slot_hash(page_id) & p.slot_mask
    while p.slots[i] != 0:
        i = (i + 1) & p.slot_mask
    vc_store_u32_release(&p.slots[i], f + 1)


cdef void wait_loaded(vc_frame* fr, uint32_t page_id) noexcept nogil:
    """Return once fr no longer shows page_id being loaded (caller holds no lock).

    A spin with sched_yield rather than a condition variable: two misses on one page at
    once are rare (the pages every lookup passes stay cached; a cold leaf wanted by two
    threads together is a coincidence) and last one 4 KiB read, while a condition
    variable would make every load take the cache mutex again to broadcast its end.  The
    waiter holds no pin and watches only the state word, so a load that fails, or a frame
    that is reused at once, leaves it nothing to undo: its caller just looks again."""
    cdef uint64_t st
    while True:
        st = vc_frame_load(&fr.state)
        if <uint32_t>(st >> 32) != page_id or not (st & VC_FRAME_LOADING):
            return
        sched_yield()


cdef uint32_t claim_frame(vc_pager* p, uint32_t page_id, uint32_t max_scan,
                          uint8_t referenced) noexcept nogil:
    """Take a frame for page_id (caller holds the cache lock; page_id is not mapped) and
    map it as loading it: VC_NO_FRAME if none is free within max_scan steps of CLOCK.

    CLOCK clears the reference bits it passes and claims the first unpinned frame whose
    bit is clear, with a CAS from "unpinned" to "evicting", which no reader can pin.  The
    frame is then mapped to page_id with VC_FRAME_LOADING: a later miss on the same page
    finds it in the table and waits for it instead of reading the page into a second
    frame, and hits and CLOCK leave it alone until its owner publishes it."""
    cdef uint32_t f, scanned = 0
    cdef vc_frame* fr
    cdef uint64_t st
    while True:
        if scanned >= max_scan:
            return VC_NO_FRAME
        f = p.clock_hand
        fr = &p.frames[f]
        p.clock_hand += 1
        if p.clock_hand == p.nframes:
            p.clock_hand = 0
        scanned += 1
        st = vc_frame_load(&fr.state)
        if <uint32_t>st != 0:
            continue                                  # pinned, or being loaded
        if fr.page_id != VC_NO_FRAME and vc_load_u8_relaxed(&fr.referenced):
            vc_store_u8_relaxed(&fr.referenced, 0)
            continue
        if vc_frame_cas(&fr.state, st, (st & 0xFFFFFFFF00000000ULL) | VC_FRAME_EVICTING):
            break
    # Unpinned readers (vc_page_try) validate with gen: it changes before any byte does
    # (the fence), so a reader that saw a byte of the next page sees a new gen after it.
    vc_store_u64_relaxed(&fr.gen, fr.gen + 1)
    vc_fence_release()
    if fr.page_id != VC_NO_FRAME:
        slot_remove(p, fr.page_id)
    fr.page_id = page_id
    vc_store_u8_relaxed(&fr.referenced, referenced)
    vc_frame_store(&fr.state, ((<uint64_t>page_id) << 32) | VC_FRAME_EVICTING | VC_FRAME_LOADING)
    slot_insert(p, page_id, f)
    return f


cdef int vc_page_get(vc_pager* p, uint32_t page_id, const unsigned char** page,
                     uint32_t* handle, vc_err* err) noexcept nogil:
    cdef uint32_t f
    cdef vc_frame* fr
    cdef unsigned char* buf
    cdef int n, hit, busy, rc, eno
    if page_id < 2 or page_id >= p.page_count:
        return vc_fail(err, VC_E_CORRUPT, "%s: reference to page %u outside the file (page count %u)",
                       p.path, page_id, p.page_count)
    if p.fd < 0:
        buf = mem_page(p, page_id)
        if buf == NULL:
            return vc_fail(err, VC_E_CORRUPT, "%s: page %u was never written", p.path, page_id)
        page[0] = buf
        handle[0] = VC_NO_FRAME
        return 0
    while True:
        # the hit path: no lock, one CAS on the frame's own cache line
        hit = lookup_pin(p, page_id)
        if hit >= 0:
            page[0] = p.frame_mem + <size_t>hit * VC_PAGE_SIZE
            handle[0] = <uint32_t>hit
            return 0
        pthread_mutex_lock(&p.lock)
        hit = lookup_pin(p, page_id)          # slots are stable under the lock
        if hit >= 0:
            pthread_mutex_unlock(&p.lock)
            page[0] = p.frame_mem + <size_t>hit * VC_PAGE_SIZE
            handle[0] = <uint32_t>hit
            return 0
        busy = slot_find(p, page_id)
        if busy < 0:
            break                             # not cached: load it (still under the lock)
        # mapped but not pinnable: another miss is loading it.  Wait for that load
        # without the lock, then look again: a hit if it worked; if it failed the page is
        # unmapped again and this thread reads it itself (and gets its own error).
        pthread_mutex_unlock(&p.lock)
        wait_loaded(&p.frames[busy], page_id)
    p.misses += 1
    f = claim_frame(p, page_id, 3 * p.nframes, 1)
    pthread_mutex_unlock(&p.lock)
    if f == VC_NO_FRAME:
        return vc_fail(err, VC_E_NOMEM, "page cache exhausted: all %u frames are pinned", p.nframes)
    fr = &p.frames[f]
    # read and verify without the lock: only this thread touches the frame's bytes now
    buf = p.frame_mem + <size_t>f * VC_PAGE_SIZE
    n = full_pread(p.fd, buf, VC_PAGE_SIZE, <uint64_t>page_id * VC_PAGE_SIZE)
    eno = errno
    if n < 0:
        rc = vc_fail_errno(err, VC_E_IO, eno, "%s: reading page %u", p.path, page_id)
    elif n != VC_PAGE_SIZE:
        rc = vc_fail(err, VC_E_CORRUPT, "%s: page %u lies past the end of the file", p.path, page_id)
    else:
        rc = check_page(p, buf, page_id, err)
    if rc == 0:
        # still loading: no reader can see the frame, so the hints need no synchronization
        # beyond the release store that publishes the page
        if p.derive_hints != NULL:
            p.derive_hints(buf, &p.hints[f])
        else:
            p.hints[f].nheads = 0
    if rc < 0:
        # unmap and empty the frame; waiters see the state change and look again
        pthread_mutex_lock(&p.lock)
        slot_remove(p, page_id)
        fr.page_id = VC_NO_FRAME
        vc_store_u8_relaxed(&fr.referenced, 0)
        vc_frame_store(&fr.state, (<uint64_t>VC_NO_FRAME) << 32)   # empty, unpinned
        pthread_mutex_unlock(&p.lock)
        return -1
    # RELEASE after the bytes: a waiter or hit that pins the frame sees the page
    vc_frame_store(&fr.state, ((<uint64_t>page_id) << 32) | 1)     # pinned by this caller
    page[0] = buf
    handle[0] = f
    return 0


cdef const unsigned char* vc_page_try(vc_pager* p, uint32_t page_id, uint32_t* frame,
                                      uint64_t* gen) noexcept nogil:
    """The hit path without the pin: reads the frame's line and writes nothing there but a
    clear CLOCK bit, so there is no locked instruction (a CAS to pin, a decrement to
    unpin) on the way to the page's bytes, and readers of a hot page (the root) do not
    take its frame's line from one another."""
    cdef uint32_t i, f, probes = 0
    cdef uint64_t g, st
    cdef vc_frame* fr
    if page_id < 2 or page_id >= p.page_count:
        return NULL
    if p.fd < 0:
        frame[0] = VC_NO_FRAME
        return mem_page(p, page_id)
    i = slot_hash(page_id) & p.slot_mask
    while probes <= p.slot_mask:
        f = vc_load_u32_acquire(&p.slots[i])
        if f == 0:
            return NULL
        fr = &p.frames[f - 1]
        prefetch_hints(p, f - 1)
        # gen before state: a claim that comes between them leaves gen changed for the
        # caller's vc_page_still; state (ACQUIRE) shows the page published, not loading
        g = vc_frame_load(&fr.gen)
        st = vc_frame_load(&fr.state)
        if <uint32_t>(st >> 32) == page_id and not (st & VC_FRAME_EVICTING):
            # the CLOCK bit is written only when clear; the hit is counted by the caller
            if not vc_load_u8_relaxed(&fr.referenced):
                vc_store_u8_relaxed(&fr.referenced, 1)
            frame[0] = f - 1
            gen[0] = g
            return p.frame_mem + <size_t>(f - 1) * VC_PAGE_SIZE
        i = (i + 1) & p.slot_mask
        probes += 1
    return NULL


cdef void vc_page_release(vc_pager* p, uint32_t handle) noexcept nogil:
    if handle == VC_NO_FRAME:
        return
    vc_frame_unpin(&p.frames[handle].state)


cdef const unsigned char* vc_page_peek(vc_pager* p, uint32_t page_id) noexcept nogil:
    """Where a cached page's bytes are, for prefetch hints only (NULL if not cached), and
    a prefetch of its first line.  No pin: a frame that changes meanwhile only makes the
    hint useless (prefetches never fault, and frame memory stays mapped)."""
    cdef uint32_t i, f, probes = 0
    cdef const unsigned char* base = NULL
    if page_id < 2 or page_id >= p.page_count:
        return NULL
    if p.fd < 0:
        base = mem_page(p, page_id)
    else:
        i = slot_hash(page_id) & p.slot_mask
        while probes < 8:
            f = vc_load_u32_acquire(&p.slots[i])
            if f == 0:
                return NULL
            if <uint32_t>(vc_frame_load(&p.frames[f - 1].state) >> 32) == page_id:
                base = p.frame_mem + <size_t>(f - 1) * VC_PAGE_SIZE
                break
            i = (i + 1) & p.slot_mask
            probes += 1
    if base != NULL:
        vc_prefetch(base)
    return base


cdef void vc_page_repin(vc_pager* p, uint32_t handle) noexcept nogil:
    if handle == VC_NO_FRAME:
        return
    vc_frame_repin(&p.frames[handle].state)


cdef uint64_t vc_pager_hits(vc_pager* p) noexcept nogil:
    cdef uint64_t total = vc_load_u64_relaxed(&p.unpinned_hits)
    cdef uint32_t i
    if p.frames == NULL:
        return total
    for i in range(p.nframes):
        total += p.frames[i].hits
    return total


cdef int vc_page_read_into(vc_pager* p, uint32_t page_id, unsigned char* buf, vc_err* err) noexcept nogil:
    if page_id >= p.page_count and page_id >= 2:
        return vc_fail(err, VC_E_CORRUPT, "%s: reference to page %u outside the file (page count %u)",
                       p.path, page_id, p.page_count)
    return vc_page_read_raw(p, page_id, buf, err)


# ---------------------------------------------------------------- checkpoint side

cdef int vc_page_alloc(vc_pager* p, uint32_t* page_id, vc_err* err) noexcept nogil:
    pthread_mutex_lock(&p.free_lock)
    if p.free_now.len > 0:
        p.free_now.len -= 1
        page_id[0] = p.free_now.items[p.free_now.len]
    else:
        if p.page_count >= <uint32_t>0xFFFFFFF0U:
            pthread_mutex_unlock(&p.free_lock)
            return vc_fail(err, VC_E_IO, "%s: the data file is full (2^32 pages)", p.path)
        page_id[0] = p.page_count
        p.page_count += 1
    pthread_mutex_unlock(&p.free_lock)
    return 0


cdef int vc_page_write(vc_pager* p, uint32_t page_id, unsigned char* buf, vc_err* err) noexcept nogil:
    cdef vc_page_hdr* h = <vc_page_hdr*>buf
    cdef unsigned char** chunk
    cdef unsigned char* dst
    h.page_id = page_id
    if p.fd < 0:
        chunk = p.mem_dir[page_id >> MEM_CHUNK_BITS]
        if chunk == NULL:
            chunk = <unsigned char**>calloc(MEM_CHUNK, sizeof(unsigned char*))
            if chunk == NULL:
                return vc_fail(err, VC_E_NOMEM, "out of memory (in-memory store)")
            p.mem_dir[page_id >> MEM_CHUNK_BITS] = chunk
        dst = chunk[page_id & (MEM_CHUNK - 1)]
        if dst == NULL:
            dst = <unsigned char*>malloc(VC_PAGE_SIZE)
            if dst == NULL:
                return vc_fail(err, VC_E_NOMEM, "out of memory (in-memory store)")
            chunk[page_id & (MEM_CHUNK - 1)] = dst
        memcpy(dst, buf, VC_PAGE_SIZE)
        return 0
    h.crc = vc_page_crc(buf)
    # The page was free: no reader holds it, but an old image may still be cached.
    slot_remove_frame(p, page_id)
    if full_pwrite(p.fd, buf, VC_PAGE_SIZE, <uint64_t>page_id * VC_PAGE_SIZE) < 0:
        return vc_fail_errno(err, VC_E_IO, errno, "%s: writing page %u", p.path, page_id)
    if h.type == VC_PAGE_LEAF or h.type == VC_PAGE_BRANCH:
        cache_install(p, page_id, buf)
    return 0


cdef void cache_install(vc_pager* p, uint32_t page_id, const unsigned char* buf) noexcept nogil:
    """Keep a tree page just written in the cache, as a miss would have loaded it, so the
    first lookups after a checkpoint need not read back what it wrote.  Best effort: left
    out when CLOCK finds no frame in one sweep.  Its reference bit starts clear, so unless
    it is read it is among the first pages evicted (a checkpoint rewriting more than the
    cache holds does not push out the pages readers use)."""
    cdef uint32_t f
    cdef vc_frame* fr
    pthread_mutex_lock(&p.lock)
    if slot_find(p, page_id) >= 0:
        # the page was free, so no reader should have loaded it since slot_remove_frame;
        # if one did, its image came from the file this call just wrote: keep that one
        pthread_mutex_unlock(&p.lock)
        return
    f = claim_frame(p, page_id, p.nframes, 0)
    pthread_mutex_unlock(&p.lock)
    if f == VC_NO_FRAME:
        return
    fr = &p.frames[f]
    # still loading: as in a miss, only this thread touches the frame until it publishes
    memcpy(p.frame_mem + <size_t>f * VC_PAGE_SIZE, buf, VC_PAGE_SIZE)
    if p.derive_hints != NULL:
        p.derive_hints(p.frame_mem + <size_t>f * VC_PAGE_SIZE, &p.hints[f])
    else:
        p.hints[f].nheads = 0
    # RELEASE after the bytes and hints: mapped and unpinned
    vc_frame_store(&fr.state, (<uint64_t>page_id) << 32)


cdef void slot_remove_frame(vc_pager* p, uint32_t page_id) noexcept nogil:
    """Drop any cached image of page_id (caller holds no cache lock)."""
    cdef int f
    cdef vc_frame* fr
    cdef uint64_t st
    while True:
        pthread_mutex_lock(&p.lock)
        f = slot_find(p, page_id)
        if f < 0:
            pthread_mutex_unlock(&p.lock)
            return
        fr = &p.frames[f]
        if not (vc_frame_load(&fr.state) & VC_FRAME_LOADING):
            break
        # a free page has no readers, so no load should be under way; if one is, let it
        # finish (it may need the lock to undo a failure) and unmap what it left
        pthread_mutex_unlock(&p.lock)
        wait_loaded(fr, page_id)
    # no new pins (the page was free, so nobody should hold one); a stray holder keeps
    # its pin count, and the frame is reused once it drops to zero
    vc_frame_mark_evicting(&fr.state)
    slot_remove(p, page_id)
    fr.page_id = VC_NO_FRAME
    vc_store_u8_relaxed(&fr.referenced, 0)
    st = vc_frame_load(&fr.state)
    while not vc_frame_cas(&fr.state, st, ((<uint64_t>VC_NO_FRAME) << 32) | (st & VC_FRAME_PINS)):
        st = vc_frame_load(&fr.state)
    pthread_mutex_unlock(&p.lock)


cdef int vc_page_free(vc_pager* p, uint32_t page_id, vc_err* err) noexcept nogil:
    if page_id < 2 or page_id >= p.page_count:
        return vc_fail(err, VC_E_CORRUPT, "%s: freeing page %u outside the file", p.path, page_id)
    pthread_mutex_lock(&p.free_lock)
    if vc_u32vec_push(&p.freed_cur, page_id) < 0:
        pthread_mutex_unlock(&p.free_lock)
        return vc_fail(err, VC_E_NOMEM, "out of memory")
    pthread_mutex_unlock(&p.free_lock)
    return 0


cdef size_t free_total(vc_pager* p) noexcept nogil:
    """Page ids a freelist chain written now lists (caller holds free_lock)."""
    cdef size_t i, total = p.free_now.len + p.freed_cur.len
    for i in range(p.npending):
        total += p.pending[i].pages.len
    for i in range(p.nheld):
        total += p.held[i].len
    return total


cdef int write_freelist(vc_pager* p, vc_meta* meta, vc_err* err) noexcept nogil:
    """Write a new freelist chain listing free_now + freed_cur + pending + the held sets
    (caller holds free_lock)."""
    cdef unsigned char buf[VC_PAGE_SIZE]
    cdef vc_page_hdr* h = <vc_page_hdr*>buf
    cdef uint32_t* ids = <uint32_t*>(buf + VC_HDR_SIZE)
    cdef vc_u32vec chain
    cdef vc_u32vec* src
    cdef size_t total, need, i, k, s, pos
    cdef uint32_t pid
    chain.items = NULL
    chain.len = 0
    chain.cap = 0
    # the old chain is only read at open: free it with this checkpoint
    for i in range(p.chain_pages.len):
        if vc_u32vec_push(&p.freed_cur, p.chain_pages.items[i]) < 0:
            return vc_fail(err, VC_E_NOMEM, "out of memory")
    p.chain_pages.len = 0
    total = free_total(p)
    need = (total + FREELIST_PER_PAGE - 1) // FREELIST_PER_PAGE
    for i in range(need):
        if p.free_now.len > 0:
            p.free_now.len -= 1
            pid = p.free_now.items[p.free_now.len]
        else:
            pid = p.page_count
            p.page_count += 1
        if vc_u32vec_push(&chain, pid) < 0:
            vc_u32vec_free(&chain)
            return vc_fail(err, VC_E_NOMEM, "out of memory")
    # stream the ids: free_now, then freed_cur, then each pending list, then the held sets
    s = 0
    pos = 0
    k = 0
    src = &p.free_now
    for i in range(chain.len):
        memset(buf, 0, VC_PAGE_SIZE)
        h.type = VC_PAGE_FREELIST
        h.aux = chain.items[i + 1] if i + 1 < chain.len else 0
        while h.count < FREELIST_PER_PAGE:
            while src != NULL and pos >= src.len:
                pos = 0
                if s == 0:
                    src = &p.freed_cur
                elif s - 1 < p.npending:
                    src = &p.pending[s - 1].pages
                elif s - 1 - p.npending < p.nheld:
                    src = p.held[s - 1 - p.npending]
                else:
                    src = NULL
                s += 1
            if src == NULL:
                break
            ids[h.count] = src.items[pos]
            h.count += 1
            pos += 1
            k += 1
        if vc_page_write(p, chain.items[i], buf, err) < 0:
            vc_u32vec_free(&chain)
            return -1
    meta.freelist_head = chain.items[0] if chain.len else 0
    meta.free_count = k
    vc_u32vec_free(&p.chain_pages)
    p.chain_pages = chain
    return 0


cdef int vc_pager_commit_meta(vc_pager* p, vc_meta* meta, uint64_t tree_version, vc_err* err) noexcept nogil:
    """Make a checkpoint durable: freelist chain, fdatasync, the alternate meta slot, fdatasync.
    Then the pages freed by this checkpoint wait (pending) until no reader is older than
    tree_version."""
    cdef unsigned char buf[VC_PAGE_SIZE]
    cdef vc_meta* m = <vc_meta*>buf
    cdef vc_pending* np
    cdef uint32_t slot
    cdef struct_stat st
    pthread_mutex_lock(&p.free_lock)
    if p.fd >= 0:
        if write_freelist(p, meta, err) < 0:
            pthread_mutex_unlock(&p.free_lock)
            return -1
        # pages a bulk load took and gave back unwritten may lie past the file's end:
        # the file must hold every page the meta counts
        if fstat(p.fd, &st) < 0 or (st.st_size < <long long>p.page_count * VC_PAGE_SIZE and
                                    ftruncate(p.fd, <long long>p.page_count * VC_PAGE_SIZE) < 0):
            pthread_mutex_unlock(&p.free_lock)
            return vc_fail_errno(err, VC_E_IO, errno, "%s: extending the file", p.path)
        if fdatasync(p.fd) < 0:
            pthread_mutex_unlock(&p.free_lock)
            return vc_fail_errno(err, VC_E_IO, errno, "%s: fdatasync", p.path)
        memset(buf, 0, VC_PAGE_SIZE)
        memcpy(buf, meta, sizeof(vc_meta))
        m.checkpoint_seq = p.meta_seq + 1
        slot = <uint32_t>(m.checkpoint_seq & 1)
        m.hdr.type = VC_PAGE_META
        m.hdr.level = 0
        m.hdr.count = 0
        m.hdr.aux = 0
        m.hdr.page_id = slot
        memcpy(m.magic, META_MAGIC, 8)
        m.format_version = VC_FORMAT_VERSION
        m.page_size = VC_PAGE_SIZE
        m.page_count = p.page_count
        m.hdr.crc = vc_page_crc(buf)
        if full_pwrite(p.fd, buf, VC_PAGE_SIZE, <uint64_t>slot * VC_PAGE_SIZE) < 0:
            pthread_mutex_unlock(&p.free_lock)
            return vc_fail_errno(err, VC_E_IO, errno, "%s: writing meta page %u", p.path, slot)
        if fdatasync(p.fd) < 0:
            pthread_mutex_unlock(&p.free_lock)
            return vc_fail_errno(err, VC_E_IO, errno, "%s: fdatasync", p.path)
        memcpy(meta, buf, sizeof(vc_meta))
    p.meta_seq += 1
    if p.freed_cur.len > 0:
        if p.npending == p.pending_cap:
            np = <vc_pending*>realloc_pending(p.pending, (p.pending_cap * 2 + 4))
            if np == NULL:
                pthread_mutex_unlock(&p.free_lock)
                return vc_fail(err, VC_E_NOMEM, "out of memory")
            p.pending = np
            p.pending_cap = p.pending_cap * 2 + 4
        p.pending[p.npending].tree_version = tree_version
        p.pending[p.npending].pages = p.freed_cur
        p.npending += 1
        p.freed_cur.items = NULL
        p.freed_cur.len = 0
        p.freed_cur.cap = 0
    pthread_mutex_unlock(&p.free_lock)
    return 0


cdef void* realloc_pending(vc_pending* old, size_t n) noexcept nogil:
    return realloc(old, n * sizeof(vc_pending))


cdef void vc_pager_reclaim(vc_pager* p, uint64_t min_tree_version) noexcept nogil:
    """Pages freed by checkpoints whose tree version <= min_tree_version become reusable."""
    cdef size_t i, j, keep = 0
    cdef vc_pending* e
    pthread_mutex_lock(&p.free_lock)
    for i in range(p.npending):
        e = &p.pending[i]
        if e.tree_version <= min_tree_version:
            for j in range(e.pages.len):
                if vc_u32vec_push(&p.free_now, e.pages.items[j]) < 0:
                    break       # out of memory: the pages are simply not reused
            vc_u32vec_free(&e.pages)
        else:
            p.pending[keep] = e[0]
            keep += 1
    p.npending = keep
    pthread_mutex_unlock(&p.free_lock)


# ---------------------------------------------------------------- bulk-load runs

cdef int vc_pager_hold(vc_pager* p, vc_u32vec* pages, vc_err* err) noexcept nogil:
    cdef vc_u32vec** nh
    cdef size_t ncap
    pthread_mutex_lock(&p.free_lock)
    if p.nheld == p.held_cap:
        ncap = p.held_cap * 2 if p.held_cap else 4
        nh = <vc_u32vec**>realloc(p.held, ncap * sizeof(vc_u32vec*))
        if nh == NULL:
            pthread_mutex_unlock(&p.free_lock)
            return vc_fail(err, VC_E_NOMEM, "out of memory")
        p.held = nh
        p.held_cap = ncap
    p.held[p.nheld] = pages
    p.nheld += 1
    pthread_mutex_unlock(&p.free_lock)
    return 0


cdef int vc_pager_alloc_held(vc_pager* p, vc_u32vec* pages, uint32_t n, uint32_t* first,
                             vc_err* err) noexcept nogil:
    cdef uint32_t i
    pthread_mutex_lock(&p.free_lock)
    if p.page_count >= <uint32_t>0xFFFFFFF0U - n:
        pthread_mutex_unlock(&p.free_lock)
        return vc_fail(err, VC_E_IO, "%s: the data file is full (2^32 pages)", p.path)
    for i in range(n):
        if vc_u32vec_push(pages, p.page_count + i) < 0:
            pages.len -= i
            pthread_mutex_unlock(&p.free_lock)
            return vc_fail(err, VC_E_NOMEM, "out of memory")
    first[0] = p.page_count
    p.page_count += n
    pthread_mutex_unlock(&p.free_lock)
    return 0


cdef void vc_pager_release_held(vc_pager* p, vc_u32vec* pages, size_t start, size_t count) noexcept nogil:
    cdef size_t i
    pthread_mutex_lock(&p.free_lock)
    if start > pages.len:
        start = pages.len
    if count > pages.len - start:
        count = pages.len - start
    for i in range(start, start + count):
        if vc_u32vec_push(&p.free_now, pages.items[i]) < 0:
            break           # out of memory: the page is simply not reused until a reopen
    memmove(pages.items + start, pages.items + start + count,
            (pages.len - start - count) * sizeof(uint32_t))
    pages.len -= count
    pthread_mutex_unlock(&p.free_lock)


cdef void vc_pager_unhold(vc_pager* p, vc_u32vec* pages) noexcept nogil:
    cdef size_t i
    pthread_mutex_lock(&p.free_lock)
    for i in range(p.nheld):
        if p.held[i] == pages:
            p.held[i] = p.held[p.nheld - 1]
            p.nheld -= 1
            break
    pthread_mutex_unlock(&p.free_lock)


cdef int vc_pager_write_pages(vc_pager* p, uint32_t first, unsigned char* buf, uint32_t n,
                              vc_err* err) noexcept nogil:
    cdef uint32_t i
    cdef vc_page_hdr* h
    if p.fd < 0:
        for i in range(n):
            if vc_page_write(p, first + i, buf + <size_t>i * VC_PAGE_SIZE, err) < 0:
                return -1
        return 0
    for i in range(n):
        h = <vc_page_hdr*>(buf + <size_t>i * VC_PAGE_SIZE)
        h.page_id = first + i
        h.crc = vc_page_crc(<unsigned char*>h)
    # new pages at the end of the file: no reader has seen them, none is cached
    if full_pwrite(p.fd, buf, <size_t>n * VC_PAGE_SIZE, <uint64_t>first * VC_PAGE_SIZE) < 0:
        return vc_fail_errno(err, VC_E_IO, errno, "%s: writing pages %u-%u", p.path, first,
                             first + n - 1)
    return 0


cdef int vc_page_read_raw(vc_pager* p, uint32_t page_id, unsigned char* buf, vc_err* err) noexcept nogil:
    cdef unsigned char* src
    cdef int n
    if page_id < 2:
        return vc_fail(err, VC_E_CORRUPT, "%s: reference to page %u outside the file (page count %u)",
                       p.path, page_id, p.page_count)
    if p.fd < 0:
        src = mem_page(p, page_id)
        if src == NULL:
            return vc_fail(err, VC_E_CORRUPT, "%s: page %u was never written", p.path, page_id)
        memcpy(buf, src, VC_PAGE_SIZE)
        return 0
    n = full_pread(p.fd, buf, VC_PAGE_SIZE, <uint64_t>page_id * VC_PAGE_SIZE)
    if n != VC_PAGE_SIZE:
        if n < 0:
            return vc_fail_errno(err, VC_E_IO, errno, "%s: reading page %u", p.path, page_id)
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u lies past the end of the file", p.path, page_id)
    return check_page(p, buf, page_id, err)


cdef int vc_pager_sync(vc_pager* p, vc_err* err) noexcept nogil:
    if p.fd >= 0 and fdatasync(p.fd) < 0:
        return vc_fail_errno(err, VC_E_IO, errno, "%s: fdatasync", p.path)
    return 0

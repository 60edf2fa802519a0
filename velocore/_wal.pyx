# Write-ahead log: framing, CRC32C, group commit, segment rotation, recovery scan.
#
# On-disk format (all integers little-endian), files <dir>/wal/NNNNNNNN.log:
#
#   segment header, 32 bytes at offset 0
#     0  char[8]  magic "VCWALSEG"
#     8  u32      format version (1)
#    12  u32      header size (32)
#    16  u64      segment number (must match the file name)
#    24  u32      reserved, 0
#    28  u32      CRC32C of bytes 0..27
#
#   record, at every 8-byte aligned offset from 32 on
#     0  u32      magic 0x52574356 (bytes "VCWR")
#     4  u32      header CRC: CRC32C(seed, bytes 8..31), seed = CRC32C of the segment
#                 number as 8 LE bytes, so a record copied from another segment fails
#     8  u64      payload length
#    16  u64      commit_ts
#    24  u32      CRC32C of the payload
#    28  u32      reserved, 0
#    32  payload, then zero padding to a multiple of 8
#
#   zeroed region (sync "full" / "normal", last segment only): the file may extend past
#   the last record with zeros written ahead of the appends, so that a commit's fdatasync
#   overwrites allocated, initialised blocks and has no file size to journal (ext4 would
#   otherwise commit its journal on every flush).  A zero word is no record magic, so
#   recovery reads the region as the torn tail it already cuts off.  Rotation cuts a
#   segment to its last record (and flushes that) before the next segment exists, and a
#   clean close cuts the last one: a segment that is not the last never ends in zeros.
#   Sizes that mean "log bytes" (info, the checkpoint trigger) count records, not zeros.
#
# Locking: `lock` guards the shared counters and the group-commit state; `append_lock`
# serializes the writers of the segment (append, rotate, remove_before) and is held across
# the write(2) so `lock` is never held during I/O.  The segment fd is only switched by
# rotate while it owns the `syncing` role, so a group-commit leader never fsyncs a closed fd.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free, realloc, qsort
from libc.string cimport memcpy, memset, strlen
from libc.errno cimport EINTR, EEXIST, ENOENT, EIO
from libc.stdio cimport snprintf
from posix.types cimport off_t
from posix.unistd cimport close, pread, ftruncate, fsync, fdatasync, unlink
from posix.fcntl cimport open as c_open, O_RDONLY, O_RDWR, O_CREAT, O_EXCL, O_CLOEXEC, O_DIRECTORY
from posix.stat cimport struct_stat, fstat, stat as c_stat, mkdir
from posix.uio cimport iovec, pwritev
from posix.time cimport timespec, clock_gettime, CLOCK_MONOTONIC

from velocore._common cimport (vc_err, vc_fail, vc_fail_errno, VC_OK, VC_FAIL, VC_E_NONE,
                               VC_E_IO, VC_E_CORRUPT, VC_E_NOMEM, VC_E_INVALID,
                               VC_E_READONLY, vc_load_u64, vc_store_u64, vc_wait_u32,
                               vc_wake_all_u32, vc_store_u32_release, vc_now_ns,
                               vc_cond_init_monotonic, vc_store_u64_relaxed)

cdef extern from "vc_crc32c.h" nogil:
    uint32_t vc_crc32c(uint32_t crc, const void* buf, size_t len)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    ctypedef struct pthread_attr_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* m, const pthread_mutexattr_t* a)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_unlock(pthread_mutex_t* m)
    int pthread_cond_init(pthread_cond_t* c, const pthread_condattr_t* a)
    int pthread_cond_destroy(pthread_cond_t* c)
    int pthread_cond_wait(pthread_cond_t* c, pthread_mutex_t* m)
    int pthread_cond_timedwait(pthread_cond_t* c, pthread_mutex_t* m, const timespec* t)
    int pthread_cond_broadcast(pthread_cond_t* c)
    int pthread_cond_signal(pthread_cond_t* c)
    int pthread_create(pthread_t* t, const pthread_attr_t* a,
                       void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t t, void** ret)

cdef extern from "vc_spin.h" nogil:
    int vc_spin_u32_change(const uint32_t* p, uint32_t seen, uint64_t max_ns)
    int vc_spin_u64_reach(const uint64_t* p, uint64_t want, uint64_t deadline)

cdef extern from "<errno.h>" nogil:
    int errno               # assigned in places: those functions declare `global errno`

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass
    cdef struct dirent:
        char d_name[256]
    DIR* opendir(const char* name)
    dirent* readdir(DIR* d)
    int closedir(DIR* d)

cdef enum:
    SEG_HDR_SIZE = 32
    REC_HDR_SIZE = 32
    WAL_FORMAT_VERSION = 1
    REC_MAGIC = 0x52574356           # "VCWR" as little-endian bytes
    SEG_PATH_MAX = 4160              # w.path (< 4096) + "/" + up to 20 digits + ".log"
    SCAN_CHUNK = 1 << 20             # read size of the torn-tail forward scan
    ZERO_BUF_SIZE = 1 << 16          # the static zero buffer behind each zeroing iovec
    ZERO_IOV = 16                    # iovecs per zeroing pwritev (1 MiB)
    ZERO_AHEAD_MIN = 1 << 16         # zeros written ahead: as much as the segment holds,
    ZERO_AHEAD_MAX = 1 << 20         # at least 64 KiB, at most 1 MiB
    ZERO_ALIGN = 4096                # the zeroed region ends on a block boundary
    FLUSH_INTERVAL_NS = 10000000     # sync normal: background flush period (10 ms)

# Largest payload accepted by append (1 TiB); far above any transaction the engine builds,
# and small enough that record sizes never overflow 64 bits.
cdef uint64_t WAL_MAX_PAYLOAD = (<uint64_t>1) << 40
cdef uint64_t GROUP_WAIT_MAX_NS = 300000        # a commit leader gathers for 0.3 ms at most
cdef uint64_t FLUSH_SPIN_MAX_NS = 1000000       # committers spin through flushes of up to 1 ms

cdef const char* SEG_MAGIC = b"VCWALSEG"

# Read-only source of the zeros written ahead of the appends (static, so all zero).
cdef unsigned char ZERO_BUF[ZERO_BUF_SIZE]


# ---------------------------------------------------------------- little-endian fields

cdef inline void put_u32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>(v & 0xFF)
    p[1] = <unsigned char>((v >> 8) & 0xFF)
    p[2] = <unsigned char>((v >> 16) & 0xFF)
    p[3] = <unsigned char>((v >> 24) & 0xFF)

cdef inline uint32_t get_u32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)

cdef inline void put_u64(unsigned char* p, uint64_t v) noexcept nogil:
    put_u32(p, <uint32_t>(v & 0xFFFFFFFFu))
    put_u32(p + 4, <uint32_t>(v >> 32))

cdef inline uint64_t get_u64(const unsigned char* p) noexcept nogil:
    return (<uint64_t>get_u32(p)) | ((<uint64_t>get_u32(p + 4)) << 32)

cdef inline uint64_t pad8(uint64_t n) noexcept nogil:
    return (n + 7) & ~(<uint64_t>7)


# ---------------------------------------------------------------- framing

cdef void encode_seg_header(unsigned char* h, uint64_t seg_no) noexcept nogil:
    memcpy(h, SEG_MAGIC, 8)
    put_u32(h + 8, WAL_FORMAT_VERSION)
    put_u32(h + 12, SEG_HDR_SIZE)
    put_u64(h + 16, seg_no)
    put_u32(h + 24, 0)
    put_u32(h + 28, vc_crc32c(0, h, 28))

cdef inline bint padding_zero(const unsigned char* p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if p[i] != 0:
            return False
    return True

cdef uint32_t record_seed(uint64_t seg_no) noexcept nogil:
    cdef unsigned char b[8]
    put_u64(b, seg_no)
    return vc_crc32c(0, b, 8)

cdef void encode_rec_header(unsigned char* h, uint32_t seed, uint64_t commit_ts,
                            uint64_t payload_len, uint32_t payload_crc) noexcept nogil:
    put_u32(h, REC_MAGIC)
    put_u64(h + 8, payload_len)
    put_u64(h + 16, commit_ts)
    put_u32(h + 24, payload_crc)
    put_u32(h + 28, 0)
    put_u32(h + 4, vc_crc32c(seed, h + 8, 24))

cdef inline bint rec_header_ok(const unsigned char* h, uint32_t seed) noexcept nogil:
    """Magic, reserved word and header CRC are right (the payload is not checked)."""
    return (get_u32(h) == REC_MAGIC and get_u32(h + 28) == 0
            and get_u32(h + 4) == vc_crc32c(seed, h + 8, 24))


cdef inline bint memcmp8(const unsigned char* a, const char* b) noexcept nogil:
    cdef int i
    for i in range(8):
        if a[i] != <unsigned char>b[i]:
            return False
    return True

# ---------------------------------------------------------------- I/O helpers

cdef ssize_t read_full(int fd, void* buf, size_t n, uint64_t off) noexcept nogil:
    """pread n bytes at off, retrying EINTR and short reads; returns the count read
    (less than n only at end of file), or -1 with errno set."""
    cdef size_t done = 0
    cdef ssize_t r
    while done < n:
        r = pread(fd, <char*>buf + done, n - done, <off_t>(off + done))
        if r < 0:
            if errno == EINTR:
                continue
            return -1
        if r == 0:
            break
        done += <size_t>r
    return <ssize_t>done

cdef int write_full_v(int fd, iovec* iov, int cnt, uint64_t off) noexcept nogil:
    """pwritev the whole iovec array at off (iov is consumed); 0, or -1 with errno set."""
    global errno
    cdef ssize_t r
    cdef size_t left
    while cnt > 0:
        if iov[0].iov_len == 0:
            iov += 1
            cnt -= 1
            continue
        r = pwritev(fd, iov, cnt, <off_t>off)
        if r < 0:
            if errno == EINTR:
                continue
            return -1
        if r == 0:
            errno = EIO
            return -1
        off += <uint64_t>r
        left = <size_t>r
        while cnt > 0 and left >= iov[0].iov_len:
            left -= iov[0].iov_len
            iov += 1
            cnt -= 1
        if cnt > 0:
            iov[0].iov_base = <char*>iov[0].iov_base + left
            iov[0].iov_len -= left
    return 0

cdef int write_full(int fd, const void* buf, size_t n, uint64_t off) noexcept nogil:
    cdef iovec v
    v.iov_base = <void*>buf
    v.iov_len = n
    return write_full_v(fd, &v, 1, off)

cdef int write_zeros(int fd, uint64_t start, uint64_t end) noexcept nogil:
    """pwrite zeros over [start, end), up to 1 MiB per call; 0, or -1 with errno set."""
    cdef iovec iov[ZERO_IOV]
    cdef int cnt
    cdef uint64_t pos
    cdef size_t piece
    while start < end:
        cnt = 0
        pos = start
        while cnt < ZERO_IOV and pos < end:
            piece = ZERO_BUF_SIZE if end - pos > ZERO_BUF_SIZE else <size_t>(end - pos)
            iov[cnt].iov_base = ZERO_BUF
            iov[cnt].iov_len = piece
            pos += piece
            cnt += 1
        if write_full_v(fd, iov, cnt, start) != 0:
            return -1
        start = pos
    return 0

cdef int datasync_fd(int fd) noexcept nogil:
    # Only EINTR is retried: after an EIO the kernel may have dropped the dirty pages,
    # so a retry that succeeds would lie (the WAL turns failed instead).
    cdef int r
    while True:
        r = fdatasync(fd)
        if r == 0 or errno != EINTR:
            return r

cdef int fsync_fd(int fd) noexcept nogil:
    cdef int r
    while True:
        r = fsync(fd)
        if r == 0 or errno != EINTR:
            return r

cdef int open_retry(const char* path, int flags, int mode) noexcept nogil:
    cdef int fd
    while True:
        fd = c_open(path, flags, mode)
        if fd >= 0 or errno != EINTR:
            return fd

cdef void close_fd(int fd) noexcept nogil:
    if fd >= 0:
        close(fd)

cdef int fsync_dir_path(const char* path) noexcept nogil:
    global errno
    cdef int fd = open_retry(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
    cdef int r, e
    if fd < 0:
        return -1
    r = fsync_fd(fd)
    e = errno
    close(fd)
    errno = e
    return r

cdef void seg_path(vc_wal* w, uint64_t seg_no, char* out) noexcept nogil:
    snprintf(out, SEG_PATH_MAX, "%s/%08llu.log", w.path, <unsigned long long>seg_no)


# ---------------------------------------------------------------- segment listing

cdef int cmp_u64(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0]
    cdef uint64_t y = (<const uint64_t*>b)[0]
    return -1 if x < y else (1 if x > y else 0)

cdef bint parse_seg_name(const char* name, uint64_t* seg_no) noexcept nogil:
    """True for "<8 to 19 digits>.log" (the digits are the segment number)."""
    cdef size_t i = 0
    cdef uint64_t v = 0
    while name[i] >= c'0' and name[i] <= c'9':
        v = v * 10 + <uint64_t>(name[i] - c'0')
        i += 1
        if i > 19:
            return False
    if i < 8:
        return False
    if not (name[i] == c'.' and name[i + 1] == c'l' and name[i + 2] == c'o'
            and name[i + 3] == c'g' and name[i + 4] == 0):
        return False
    seg_no[0] = v
    return True

cdef int list_segments(vc_wal* w, uint64_t** out, size_t* count, vc_err* err) noexcept nogil:
    """Sorted segment numbers found in w.path (caller frees *out)."""
    global errno
    cdef DIR* d = opendir(w.path)
    cdef dirent* ent
    cdef uint64_t* segs = NULL
    cdef uint64_t* grown
    cdef size_t n = 0, cap = 0
    cdef uint64_t seg_no
    cdef int e
    out[0] = NULL
    count[0] = 0
    if d == NULL:
        return vc_fail_errno(err, VC_E_IO, errno, "%s: cannot list log directory", w.path)
    while True:
        errno = 0
        ent = readdir(d)
        if ent == NULL:
            e = errno
            if e != 0:
                closedir(d)
                free(segs)
                return vc_fail_errno(err, VC_E_IO, e, "%s: cannot list log directory", w.path)
            break
        if not parse_seg_name(ent.d_name, &seg_no):
            continue
        if n == cap:
            cap = 16 if cap == 0 else cap * 2
            grown = <uint64_t*>realloc(segs, cap * sizeof(uint64_t))
            if grown == NULL:
                closedir(d)
                free(segs)
                return vc_fail(err, VC_E_NOMEM, "%s: out of memory listing segments", w.path)
            segs = grown
        segs[n] = seg_no
        n += 1
    closedir(d)
    if n > 1:
        qsort(segs, n, sizeof(uint64_t), cmp_u64)
    out[0] = segs
    count[0] = n
    return VC_OK


# ---------------------------------------------------------------- recovery

cdef struct replay_state:
    uint64_t after_ts         # records with commit_ts <= after_ts are checked, not replayed
    uint64_t prev_ts          # commit_ts of the last good record (valid when have_prev)
    bint have_prev
    uint64_t max_ts           # largest commit_ts seen
    vc_replay_fn fn
    void* ctx
    unsigned char* buf        # payload buffer, grown as needed
    size_t buf_cap

cdef int grow_buf(replay_state* st, uint64_t need, const char* path, vc_err* err) noexcept nogil:
    cdef unsigned char* nb
    cdef size_t cap
    if need < 64:
        need = 64            # never hand the callback a NULL payload pointer
    if need <= st.buf_cap:
        return VC_OK
    if need > <uint64_t>(<size_t>-1) // 2:
        return vc_fail(err, VC_E_NOMEM, "%s: record of %llu bytes too large for memory",
                       path, <unsigned long long>need)
    cap = st.buf_cap * 2
    if cap < <size_t>need:
        cap = <size_t>need
    nb = <unsigned char*>malloc(cap)
    if nb == NULL:
        cap = <size_t>need
        nb = <unsigned char*>malloc(cap)
        if nb == NULL:
            return vc_fail(err, VC_E_NOMEM, "%s: out of memory reading a %llu-byte record",
                           path, <unsigned long long>need)
    free(st.buf)
    st.buf = nb
    st.buf_cap = cap
    return VC_OK

cdef int scan_for_valid(int fd, const char* path, uint32_t seed, uint64_t start, uint64_t size,
                        replay_state* st, uint64_t* found_at, vc_err* err) noexcept nogil:
    """Look for any valid record (magic, header CRC, fitting length, payload CRC,
    commit_ts above the last good one) at an 8-aligned offset in [start, size).
    *found_at gets its offset, or stays (uint64_t)-1.  VC_FAIL only on I/O or memory errors."""
    cdef unsigned char* chunk
    cdef unsigned char hdr[REC_HDR_SIZE]
    cdef uint64_t pos = pad8(start), q, plen, ts
    cdef size_t n, j
    cdef ssize_t r
    found_at[0] = <uint64_t>-1
    if pos + REC_HDR_SIZE > size:
        return VC_OK
    chunk = <unsigned char*>malloc(SCAN_CHUNK)
    if chunk == NULL:
        return vc_fail(err, VC_E_NOMEM, "%s: out of memory scanning the log tail", path)
    while pos + REC_HDR_SIZE <= size:
        n = SCAN_CHUNK if size - pos > SCAN_CHUNK else <size_t>(size - pos)
        r = read_full(fd, chunk, n, pos)
        if r < 0:
            free(chunk)
            return vc_fail_errno(err, VC_E_IO, errno, "%s: read at offset %llu", path,
                                 <unsigned long long>pos)
        n = <size_t>r
        if n == 0:
            break
        j = 0
        while j + 4 <= n and pos + j + REC_HDR_SIZE <= size:
            if get_u32(chunk + j) == REC_MAGIC:
                q = pos + j
                if j + REC_HDR_SIZE <= n:
                    memcpy(hdr, chunk + j, REC_HDR_SIZE)
                elif read_full(fd, hdr, REC_HDR_SIZE, q) != REC_HDR_SIZE:
                    j += 8
                    continue
                plen = get_u64(hdr + 8)
                ts = get_u64(hdr + 16)
                if (rec_header_ok(hdr, seed) and (not st.have_prev or ts > st.prev_ts)
                        and plen <= size - q - REC_HDR_SIZE
                        and pad8(plen) <= size - q - REC_HDR_SIZE):
                    if grow_buf(st, plen, path, err) != VC_OK:
                        free(chunk)
                        return VC_FAIL
                    if read_full(fd, st.buf, <size_t>plen, q + REC_HDR_SIZE) != <ssize_t>plen:
                        free(chunk)
                        return vc_fail_errno(err, VC_E_IO, errno, "%s: read at offset %llu",
                                             path, <unsigned long long>q)
                    if vc_crc32c(0, st.buf, <size_t>plen) == get_u32(hdr + 24):
                        found_at[0] = q
                        free(chunk)
                        return VC_OK
            j += 8
        pos += n
    free(chunk)
    return VC_OK

cdef int rewrite_empty_segment(vc_wal* w, int fd, const char* path, uint64_t seg_no,
                               vc_err* err) noexcept nogil:
    cdef unsigned char hdr[SEG_HDR_SIZE]
    encode_seg_header(hdr, seg_no)
    if ftruncate(fd, 0) != 0 or write_full(fd, hdr, SEG_HDR_SIZE, 0) != 0:
        return vc_fail_errno(err, VC_E_IO, errno, "%s: cannot rewrite torn segment header", path)
    if w.sync_mode != VC_SYNC_OFF and datasync_fd(fd) != 0:
        return vc_fail_errno(err, VC_E_IO, errno, "%s: fdatasync", path)
    return VC_OK

cdef int check_seg_header(vc_wal* w, replay_state* st, int fd, const char* path,
                          uint64_t seg_no, bint is_last, uint64_t size,
                          vc_err* err) noexcept nogil:
    """0: header good; 1: last segment with a torn header (rewritten empty unless readonly);
    VC_FAIL: corrupt or I/O error."""
    cdef unsigned char hdr[SEG_HDR_SIZE]
    cdef uint64_t found
    cdef ssize_t r
    cdef int i
    cdef bint all_zero = True
    r = read_full(fd, hdr, SEG_HDR_SIZE, 0)
    if r < 0:
        return vc_fail_errno(err, VC_E_IO, errno, "%s: read at offset 0", path)
    if <size_t>r < SEG_HDR_SIZE:
        if not is_last:
            return vc_fail(err, VC_E_CORRUPT, "%s: truncated segment header (%llu bytes) at offset 0",
                           path, <unsigned long long>size)
        if not w.readonly and rewrite_empty_segment(w, fd, path, seg_no, err) != VC_OK:
            return VC_FAIL
        return 1
    if not (memcmp8(hdr, SEG_MAGIC) and get_u32(hdr + 28) == vc_crc32c(0, hdr, 28)):
        for i in range(SEG_HDR_SIZE):
            if hdr[i] != 0:
                all_zero = False
                break
        if is_last and all_zero:
            # the size reached the disk but not the header: empty unless records follow
            if scan_for_valid(fd, path, record_seed(seg_no), SEG_HDR_SIZE, size, st, &found,
                              err) != VC_OK:
                return VC_FAIL
            if found != <uint64_t>-1:
                return vc_fail(err, VC_E_CORRUPT,
                               "%s: zeroed segment header at offset 0 followed by a valid record at offset %llu",
                               path, <unsigned long long>found)
            if not w.readonly and rewrite_empty_segment(w, fd, path, seg_no, err) != VC_OK:
                return VC_FAIL
            return 1
        return vc_fail(err, VC_E_CORRUPT, "%s: not a velocore log segment (bad header at offset 0)",
                       path)
    if get_u32(hdr + 8) != WAL_FORMAT_VERSION or get_u32(hdr + 12) != SEG_HDR_SIZE:
        return vc_fail(err, VC_E_CORRUPT, "%s: unsupported log format version %u at offset 8",
                       path, get_u32(hdr + 8))
    if get_u64(hdr + 16) != seg_no:
        return vc_fail(err, VC_E_CORRUPT, "%s: segment header says segment %llu at offset 16",
                       path, <unsigned long long>get_u64(hdr + 16))
    return 0

cdef int replay_segment(vc_wal* w, replay_state* st, uint64_t seg_no, bint is_last,
                        int* out_fd, uint64_t* out_end, vc_err* err) noexcept nogil:
    """Check and replay one segment.  For the last segment (not readonly) the open fd is
    handed back in *out_fd; *out_end gets the offset just past the last good record."""
    cdef char path[SEG_PATH_MAX]
    cdef unsigned char hdr[REC_HDR_SIZE]
    cdef struct_stat sb
    cdef uint64_t size, off, plen, ts, rec_size, scan_from, found
    cdef uint32_t seed = record_seed(seg_no)
    cdef ssize_t r
    cdef int fd, e, hs
    cdef const char* what = NULL
    cdef bint torn_by_length = False

    out_fd[0] = -1
    out_end[0] = 0
    seg_path(w, seg_no, path)
    fd = open_retry(path, (O_RDONLY if w.readonly else O_RDWR) | O_CLOEXEC, 0)
    if fd < 0:
        return vc_fail_errno(err, VC_E_IO, errno, "%s: cannot open log segment", path)
    if fstat(fd, &sb) != 0:
        e = errno
        close(fd)
        return vc_fail_errno(err, VC_E_IO, e, "%s: fstat", path)
    size = <uint64_t>sb.st_size

    # --- segment header
    hs = check_seg_header(w, st, fd, path, seg_no, is_last, size, err)
    if hs < 0:
        close(fd)
        return VC_FAIL
    if hs == 1:
        # torn creation of the newest segment: it holds nothing
        out_end[0] = SEG_HDR_SIZE
        if not w.readonly:
            out_fd[0] = fd
        else:
            close(fd)
        return VC_OK

    # --- records
    off = SEG_HDR_SIZE
    while off < size:
        if size - off < REC_HDR_SIZE:
            what = "truncated record header"
            scan_from = size
            break
        r = read_full(fd, hdr, REC_HDR_SIZE, off)
        if r != REC_HDR_SIZE:
            e = errno if r < 0 else EIO
            close(fd)
            return vc_fail_errno(err, VC_E_IO, e, "%s: read at offset %llu", path,
                                 <unsigned long long>off)
        if not rec_header_ok(hdr, seed):
            what = "bad record header"
            scan_from = off + 8
            break
        plen = get_u64(hdr + 8)
        ts = get_u64(hdr + 16)
        if plen > size - off - REC_HDR_SIZE or pad8(plen) > size - off - REC_HDR_SIZE:
            # the header is intact, so everything up to end of file is its payload
            what = "record extends past end of file"
            scan_from = size
            torn_by_length = True
            break
        rec_size = REC_HDR_SIZE + pad8(plen)
        if grow_buf(st, pad8(plen), path, err) != VC_OK:
            close(fd)
            return VC_FAIL
        r = read_full(fd, st.buf, <size_t>pad8(plen), off + REC_HDR_SIZE)
        if r != <ssize_t>pad8(plen):
            e = errno if r < 0 else EIO
            close(fd)
            return vc_fail_errno(err, VC_E_IO, e, "%s: read at offset %llu", path,
                                 <unsigned long long>(off + REC_HDR_SIZE))
        if vc_crc32c(0, st.buf, <size_t>plen) != get_u32(hdr + 24):
            what = "bad record checksum"
            scan_from = off + rec_size
            break
        if not padding_zero(st.buf + plen, <size_t>(pad8(plen) - plen)):
            what = "bad record padding"
            scan_from = off + rec_size
            break
        if st.have_prev and ts <= st.prev_ts:
            close(fd)
            return vc_fail(err, VC_E_CORRUPT,
                           "%s: commit_ts %llu not above previous %llu at offset %llu",
                           path, <unsigned long long>ts, <unsigned long long>st.prev_ts,
                           <unsigned long long>off)
        if ts > st.after_ts and st.fn != NULL:
            if st.fn(st.ctx, ts, st.buf, <size_t>plen, err) != 0:
                close(fd)
                if err != NULL and err.code == VC_E_NONE:
                    vc_fail(err, VC_E_INVALID, "%s: replay of record at offset %llu failed",
                            path, <unsigned long long>off)
                return VC_FAIL
        st.prev_ts = ts
        st.have_prev = True
        if ts > st.max_ts:
            st.max_ts = ts
        off += rec_size

    if what != NULL:
        if not is_last:
            close(fd)
            return vc_fail(err, VC_E_CORRUPT, "%s: %s at offset %llu", path, what,
                           <unsigned long long>off)
        if not torn_by_length:
            if scan_for_valid(fd, path, seed, scan_from, size, st, &found, err) != VC_OK:
                close(fd)
                return VC_FAIL
            if found != <uint64_t>-1:
                close(fd)
                return vc_fail(err, VC_E_CORRUPT,
                               "%s: %s at offset %llu followed by a valid record at offset %llu",
                               path, what, <unsigned long long>off, <unsigned long long>found)
        # torn tail: cut it off
        if not w.readonly:
            if ftruncate(fd, <off_t>off) != 0:
                e = errno
                close(fd)
                return vc_fail_errno(err, VC_E_IO, e, "%s: cannot truncate torn tail at offset %llu",
                                     path, <unsigned long long>off)
        size = off

    if not w.readonly and w.sync_mode != VC_SYNC_OFF:
        # what this open recovered must outlive any later crash (sync normal keeps a suffix)
        if datasync_fd(fd) != 0:
            e = errno
            close(fd)
            return vc_fail_errno(err, VC_E_IO, e, "%s: fdatasync", path)
    out_end[0] = off
    if is_last and not w.readonly:
        out_fd[0] = fd
    else:
        close(fd)
    return VC_OK

cdef int create_segment(vc_wal* w, uint64_t seg_no, int* out_fd, vc_err* err) noexcept nogil:
    """Create seg_no with its header (not synced; the caller fsyncs the dir)."""
    cdef char path[SEG_PATH_MAX]
    cdef unsigned char hdr[SEG_HDR_SIZE]
    cdef int fd, e
    seg_path(w, seg_no, path)
    fd = open_retry(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    if fd < 0:
        return vc_fail_errno(err, VC_E_IO, errno, "%s: cannot create log segment", path)
    encode_seg_header(hdr, seg_no)
    if write_full(fd, hdr, SEG_HDR_SIZE, 0) != 0:
        e = errno
        close(fd)
        unlink(path)
        return vc_fail_errno(err, VC_E_IO, e, "%s: write at offset 0", path)
    out_fd[0] = fd
    return VC_OK


# ---------------------------------------------------------------- group commit

cdef int fail_sticky(vc_wal* w, int failed, vc_err* err) noexcept nogil:
    return vc_fail_errno(err, VC_E_IO, failed, "%s: log unusable after an earlier write or flush error",
                         w.path)

cdef void gather_group(vc_wal* w) noexcept nogil:
    """A commit leader, with w.lock held and `syncing` set: when the last flush covered
    several commits, wait (at most half that flush's time, capped at GROUP_WAIT_MAX_NS)
    until as many records are waiting again.  Committers that were released by the last
    flush are then back with their next commit, instead of missing this flush by a few
    microseconds and waiting for a whole other one.  A lone committer never waits.
    The leader spins (vc_spin.h) without the lock: the appends it waits for come one
    after another, each behind a GIL hand-off, and the leader's CPU should not go idle
    in between (and a sleeping leader would have to be woken)."""
    cdef uint64_t want = w.last_group, limit
    if want < 2 or w.appends - w.synced_appends >= want:
        return
    limit = w.last_flush_ns // 2
    if limit > GROUP_WAIT_MAX_NS:
        limit = GROUP_WAIT_MAX_NS
    want += w.synced_appends        # only a flush moves it, and this leader holds the role
    pthread_mutex_unlock(&w.lock)
    vc_spin_u64_reach(&w.appends, want, vc_now_ns() + limit)
    pthread_mutex_lock(&w.lock)


cdef inline void end_syncing(vc_wal* w) noexcept nogil:
    """With w.lock held: the flush (or rotate) that held the syncing role is over, and its
    result is in place; commits sleeping on flush_gen wake and look again."""
    w.syncing = False
    vc_store_u32_release(&w.flush_gen, w.flush_gen + 1)
    vc_wake_all_u32(&w.flush_gen)


cdef int flush_locked(vc_wal* w, uint64_t lsn, vc_err* err, bint commit=False) noexcept nogil:
    """With w.lock held: return once durable_lsn >= lsn and nothing older is unflushed.
    One caller becomes leader and runs fdatasync for all; the others wait on w.cond.
    commit: the caller is a committing transaction (group commit may gather)."""
    cdef uint64_t target, old_from, old_to, s, dir_gen, covered, t0
    cdef int fd, rc, e, ofd
    cdef bint need_dir
    cdef char path[SEG_PATH_MAX]
    while True:
        if w.failed:
            return fail_sticky(w, w.failed, err)
        if w.durable_lsn >= lsn and w.unsynced_seg == 0 and w.dir_gen == w.dir_synced_gen:
            return VC_OK
        if w.syncing:
            pthread_cond_wait(&w.cond, &w.lock)
            continue
        # leader
        w.syncing = True
        if commit:
            gather_group(w)
        target = w.written_lsn
        covered = w.appends
        t0 = vc_now_ns()
        fd = w.seg_fd
        old_from = w.unsynced_seg
        old_to = w.seg_no
        dir_gen = w.dir_gen
        need_dir = dir_gen != w.dir_synced_gen
        pthread_mutex_unlock(&w.lock)
        rc = 0
        e = 0
        # segments left behind unflushed by a rotate under sync off
        if old_from != 0:
            s = old_from
            while s < old_to and rc == 0:
                seg_path(w, s, path)
                ofd = open_retry(path, O_RDONLY | O_CLOEXEC, 0)
                if ofd >= 0:
                    rc = datasync_fd(ofd)
                    e = errno
                    close(ofd)
                elif errno != ENOENT:          # removed ones are covered by a checkpoint
                    rc = -1
                    e = errno
                s += 1
        if rc == 0 and fd >= 0:
            rc = datasync_fd(fd)
            e = errno
        if rc == 0 and need_dir and w.dir_fd >= 0:
            rc = fsync_fd(w.dir_fd)
            e = errno
        if rc == 0 and w.on_durable != NULL:
            # before the waiters wake: they find their commits visible and need not wait
            # for one another (see publish in _mvcc.pyx)
            w.on_durable(w.on_durable_ctx, target)
        pthread_mutex_lock(&w.lock)
        if rc != 0:
            w.failed = e if e != 0 else EIO
            end_syncing(w)
            pthread_cond_broadcast(&w.cond)
            return vc_fail_errno(err, VC_E_IO, w.failed, "%s/%08llu.log: fdatasync", w.path,
                                 <unsigned long long>old_to)
        if target > w.durable_lsn:
            vc_store_u64(&w.durable_lsn, target)
        end_syncing(w)           # after durable_lsn: the commits it wakes return at once
        if commit:
            w.last_group = covered - w.synced_appends
            w.last_flush_ns = vc_now_ns() - t0
            w.commit_flushes += 1
        if covered > w.synced_appends:
            w.synced_appends = covered
        w.unsynced_seg = 0       # only a rotate sets it, and rotate waits for the leader
        w.dir_synced_gen = dir_gen
        pthread_cond_broadcast(&w.cond)

cdef void* flusher_main(void* arg) noexcept nogil:
    cdef vc_wal* w = <vc_wal*>arg
    cdef timespec ts
    cdef vc_err local_err
    pthread_mutex_lock(&w.lock)
    while not w.stopping:
        clock_gettime(CLOCK_MONOTONIC, &ts)
        ts.tv_nsec += FLUSH_INTERVAL_NS
        if ts.tv_nsec >= 1000000000:
            ts.tv_sec += 1
            ts.tv_nsec -= 1000000000
        pthread_cond_timedwait(&w.cond, &w.lock, &ts)
        if w.stopping:
            break
        if not w.failed and not w.syncing and w.written_lsn > w.durable_lsn:
            local_err.code = VC_E_NONE
            local_err.sys_errno = 0
            local_err.msg[0] = 0
            flush_locked(w, w.written_lsn, &local_err)   # a failure is sticky in w.failed
    pthread_mutex_unlock(&w.lock)
    return NULL


cdef int zero_ahead(vc_wal* w, uint64_t rec_end) noexcept nogil:
    """With append_lock held, a record ending at rec_end (past seg_file_bytes) about to
    be written: extend the segment file with zeros from rec_end to a block boundary
    ZERO_AHEAD_MIN..ZERO_AHEAD_MAX bytes further (as much as the segment already holds).
    Not flushed here: the next fdatasync (a commit's) allocates the blocks and journals
    the size once, and the commits after it only overwrite.  A failed write is undone and
    the record appended plainly: 0, or the errno when the undo fails too (the log is then
    failed)."""
    cdef uint64_t ahead = w.seg_bytes, target
    cdef int e
    if ahead < ZERO_AHEAD_MIN:
        ahead = ZERO_AHEAD_MIN
    elif ahead > ZERO_AHEAD_MAX:
        ahead = ZERO_AHEAD_MAX
    target = (rec_end + ahead + (ZERO_ALIGN - 1)) & ~(<uint64_t>(ZERO_ALIGN - 1))
    if write_zeros(w.seg_fd, rec_end, target) == 0:
        w.seg_file_bytes = target
        pthread_mutex_lock(&w.lock)
        w.zeroed_bytes += target - rec_end
        pthread_mutex_unlock(&w.lock)
        return 0
    # e.g. ENOSPC: put the size back (the record's own write then says what is wrong)
    if ftruncate(w.seg_fd, <off_t>w.seg_file_bytes) == 0:
        return 0
    e = errno if errno != 0 else EIO
    pthread_mutex_lock(&w.lock)
    w.failed = e
    pthread_cond_broadcast(&w.cond)
    pthread_mutex_unlock(&w.lock)
    return e


# ---------------------------------------------------------------- public API

cdef int vc_wal_open(vc_wal** out, const char* store_dir, int sync_mode, bint readonly,
                     uint64_t start_seg, uint64_t after_ts, vc_replay_fn fn, void* ctx,
                     uint64_t* last_ts, vc_err* err) noexcept nogil:
    cdef vc_wal* w
    cdef replay_state st
    cdef uint64_t* segs = NULL
    cdef size_t nsegs = 0, i, first
    cdef uint64_t end, removed = 0
    cdef int fd, n
    cdef bint created_dir = False
    cdef char path[SEG_PATH_MAX]
    cdef struct_stat sb

    out[0] = NULL
    if last_ts != NULL:
        last_ts[0] = after_ts
    if sync_mode < VC_SYNC_OFF or sync_mode > VC_SYNC_FULL:
        return vc_fail(err, VC_E_INVALID, "bad log sync mode %d", sync_mode)
    if start_seg < 1:
        return vc_fail(err, VC_E_INVALID, "log start segment must be >= 1")
    w = <vc_wal*>malloc(sizeof(vc_wal))
    if w == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory opening the log")
    memset(w, 0, sizeof(vc_wal))
    w.dir_fd = -1
    w.seg_fd = -1
    w.sync_mode = sync_mode
    w.readonly = readonly
    # the condition's timed wait (flusher_main) counts on CLOCK_MONOTONIC
    if (pthread_mutex_init(&w.lock, NULL) != 0 or pthread_mutex_init(&w.append_lock, NULL) != 0
            or vc_cond_init_monotonic(&w.cond) != 0):
        free(w)   # init of these cannot fail on Linux
        return vc_fail(err, VC_E_NOMEM, "cannot initialise log locks")
    n = snprintf(w.path, sizeof(w.path), "%s/wal", store_dir)
    if n < 0 or <size_t>n >= sizeof(w.path):
        vc_wal_close(w, NULL)
        return vc_fail(err, VC_E_INVALID, "store path too long")

    if not readonly:
        if mkdir(w.path, 0o755) == 0:
            created_dir = True
        elif errno != EEXIST:
            vc_fail_errno(err, VC_E_IO, errno, "%s: cannot create log directory", w.path)
            vc_wal_close(w, NULL)
            return VC_FAIL
        if created_dir and sync_mode != VC_SYNC_OFF and fsync_dir_path(store_dir) != 0:
            vc_fail_errno(err, VC_E_IO, errno, "%s: fsync", store_dir)
            vc_wal_close(w, NULL)
            return VC_FAIL
    w.dir_fd = open_retry(w.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
    if w.dir_fd < 0:
        if readonly and errno == ENOENT:
            out[0] = w               # no log at all: nothing to replay
            return VC_OK
        vc_fail_errno(err, VC_E_IO, errno, "%s: cannot open log directory", w.path)
        vc_wal_close(w, NULL)
        return VC_FAIL

    if list_segments(w, &segs, &nsegs, err) != VC_OK:
        vc_wal_close(w, NULL)
        return VC_FAIL

    # segments below start_seg are covered by the checkpoint
    first = 0
    while first < nsegs and segs[first] < start_seg:
        if not readonly:
            seg_path(w, segs[first], path)
            if unlink(path) != 0 and errno != ENOENT:
                vc_fail_errno(err, VC_E_IO, errno, "%s: cannot remove old log segment", path)
                free(segs)
                vc_wal_close(w, NULL)
                return VC_FAIL
            removed += 1
        first += 1
    if removed and sync_mode != VC_SYNC_OFF and fsync_fd(w.dir_fd) != 0:
        vc_fail_errno(err, VC_E_IO, errno, "%s: fsync", w.path)
        free(segs)
        vc_wal_close(w, NULL)
        return VC_FAIL
    for i in range(first + 1, nsegs):
        if segs[i] != segs[i - 1] + 1:
            vc_fail(err, VC_E_CORRUPT, "%s/%08llu.log: log segment missing (found %08llu.log after %08llu.log)",
                    w.path, <unsigned long long>(segs[i - 1] + 1), <unsigned long long>segs[i],
                    <unsigned long long>segs[i - 1])
            free(segs)
            vc_wal_close(w, NULL)
            return VC_FAIL

    memset(&st, 0, sizeof(st))
    st.after_ts = after_ts
    st.max_ts = after_ts
    st.fn = fn
    st.ctx = ctx
    for i in range(first, nsegs):
        if replay_segment(w, &st, segs[i], i == nsegs - 1, &fd, &end, err) != VC_OK:
            free(st.buf)
            free(segs)
            vc_wal_close(w, NULL)
            return VC_FAIL
        w.total_bytes += end
        if i == nsegs - 1:
            w.seg_fd = fd
            w.seg_no = segs[i]
            w.seg_bytes = end
            w.seg_file_bytes = end       # a torn (or zeroed) tail was cut off at end
    free(st.buf)
    if first < nsegs:
        w.first_seg = segs[first]
    free(segs)

    if first == nsegs:
        w.first_seg = start_seg
        w.seg_no = start_seg
        if not readonly:
            if create_segment(w, start_seg, &w.seg_fd, err) != VC_OK:
                vc_wal_close(w, NULL)
                return VC_FAIL
            if sync_mode != VC_SYNC_OFF and (datasync_fd(w.seg_fd) != 0 or fsync_fd(w.dir_fd) != 0):
                vc_fail_errno(err, VC_E_IO, errno, "%s: fsync of new segment", w.path)
                vc_wal_close(w, NULL)
                return VC_FAIL
            w.seg_bytes = SEG_HDR_SIZE
            w.seg_file_bytes = SEG_HDR_SIZE
            w.total_bytes = SEG_HDR_SIZE

    if last_ts != NULL:
        last_ts[0] = st.max_ts
    if not readonly and sync_mode == VC_SYNC_NORMAL:
        if pthread_create(&w.flusher, NULL, flusher_main, w) != 0:
            vc_fail_errno(err, VC_E_IO, errno, "%s: cannot start the log flusher thread", w.path)
            vc_wal_close(w, NULL)
            return VC_FAIL
        w.has_flusher = True
    out[0] = w
    return VC_OK


cdef int vc_wal_append_stream(vc_wal* w, uint64_t commit_ts, const unsigned char* first,
                              size_t first_len, uint32_t first_crc, vc_wal_fill_fn fill,
                              void* ctx, vc_buf* chunk, uint64_t* lsn, vc_err* err) noexcept nogil:
    cdef unsigned char hdr[REC_HDR_SIZE]
    cdef unsigned char zeros[8]
    cdef iovec iov[3]
    cdef int cnt = 0, e = 0, p = 0
    cdef uint64_t off, rec_size, pos
    cdef uint64_t payload_len = first_len
    cdef uint32_t crc = first_crc
    cdef bint produce_failed = False
    cdef bint too_big = False
    if w == NULL:
        return vc_fail(err, VC_E_INVALID, "log is closed")
    if w.readonly:
        return vc_fail(err, VC_E_READONLY, "%s: log is read-only", w.path)
    if first == NULL and first_len > 0:
        return vc_fail(err, VC_E_INVALID, "log record pieces do not add up")
    if <uint64_t>first_len > WAL_MAX_PAYLOAD:
        return vc_fail(err, VC_E_INVALID, "log record of %llu bytes exceeds the maximum",
                       <unsigned long long>first_len)
    memset(zeros, 0, 8)

    pthread_mutex_lock(&w.append_lock)
    pthread_mutex_lock(&w.lock)
    e = w.failed
    pthread_mutex_unlock(&w.lock)
    if e:
        pthread_mutex_unlock(&w.append_lock)
        return fail_sticky(w, e, err)
    # seg_fd / seg_no / seg_bytes / seg_file_bytes only change under append_lock, which we hold
    off = w.seg_bytes
    pos = off
    e = 0
    if fill == NULL:
        # the whole record at once: header, payload and padding in one write
        rec_size = REC_HDR_SIZE + pad8(payload_len)
        if (off + rec_size > w.seg_file_bytes and w.sync_mode != VC_SYNC_OFF
                and rec_size <= ZERO_AHEAD_MAX):
            e = zero_ahead(w, off + rec_size)
            if e != 0:
                pthread_mutex_unlock(&w.append_lock)
                return fail_sticky(w, e, err)
        encode_rec_header(hdr, record_seed(w.seg_no), commit_ts, payload_len, crc)
        iov[0].iov_base = hdr
        iov[0].iov_len = REC_HDR_SIZE
        cnt = 1
        if first_len > 0:
            iov[cnt].iov_base = <void*>first
            iov[cnt].iov_len = first_len
            cnt += 1
        if pad8(payload_len) != payload_len:
            iov[cnt].iov_base = zeros
            iov[cnt].iov_len = <size_t>(pad8(payload_len) - payload_len)
            cnt += 1
        if write_full_v(w.seg_fd, iov, cnt, pos) != 0:
            e = errno if errno != 0 else EIO
    else:
        # a streamed payload, encoded once: written piece by piece after the header's place,
        # its length and CRC taken as it goes, and the header written last.  Until then the
        # record's place reads as zeros or a bad header, which recovery cuts off as a torn
        # tail (nothing valid follows it: append_lock is held throughout).
        pos = off + REC_HDR_SIZE
        if first_len > 0 and write_full(w.seg_fd, first, first_len, pos) != 0:
            e = errno if errno != 0 else EIO
        pos += first_len
        while e == 0:
            if fill(ctx, chunk) < 0:
                produce_failed = True
                break
            if chunk.len == 0:
                break
            if payload_len + chunk.len > WAL_MAX_PAYLOAD:
                too_big = True
                break
            crc = vc_crc32c(crc, chunk.data, chunk.len)
            if write_full(w.seg_fd, chunk.data, chunk.len, pos) != 0:
                e = errno if errno != 0 else EIO
                break
            pos += chunk.len
            payload_len += chunk.len
        rec_size = REC_HDR_SIZE + pad8(payload_len)
        if e == 0 and not produce_failed and not too_big:
            p = <int>(pad8(payload_len) - payload_len)
            if p > 0 and write_full(w.seg_fd, zeros, <size_t>p, pos) != 0:
                e = errno if errno != 0 else EIO
        if e == 0 and not produce_failed and not too_big:
            encode_rec_header(hdr, record_seed(w.seg_no), commit_ts, payload_len, crc)
            if write_full(w.seg_fd, hdr, REC_HDR_SIZE, off) != 0:
                e = errno if errno != 0 else EIO
    if e != 0 or produce_failed or too_big:
        # drop the partial record (and the zeros ahead) so a later append does not leave
        # its remains behind; if even that fails the log can no longer be trusted
        if ftruncate(w.seg_fd, <off_t>off) != 0:
            pthread_mutex_lock(&w.lock)
            w.failed = errno if errno != 0 else EIO
            pthread_cond_broadcast(&w.cond)
            pthread_mutex_unlock(&w.lock)
        w.seg_file_bytes = off
        pthread_mutex_unlock(&w.append_lock)
        if produce_failed:
            return vc_fail(err, VC_E_NOMEM, "%s/%08llu.log: could not produce the log record",
                           w.path, <unsigned long long>w.seg_no)
        if too_big:
            return vc_fail(err, VC_E_INVALID, "log record of more than %llu bytes exceeds the maximum",
                           <unsigned long long>WAL_MAX_PAYLOAD)
        return vc_fail_errno(err, VC_E_IO, e, "%s/%08llu.log: write at offset %llu", w.path,
                             <unsigned long long>w.seg_no, <unsigned long long>off)
    if off + rec_size > w.seg_file_bytes:
        w.seg_file_bytes = off + rec_size
    pthread_mutex_lock(&w.lock)
    w.seg_bytes = off + rec_size
    w.total_bytes += rec_size
    w.written_lsn += rec_size
    vc_store_u64_relaxed(&w.appends, w.appends + 1)   # a gathering leader reads it unlocked
    if lsn != NULL:
        lsn[0] = w.written_lsn
    pthread_mutex_unlock(&w.lock)
    pthread_mutex_unlock(&w.append_lock)
    return VC_OK


cdef int vc_wal_sync_to(vc_wal* w, uint64_t lsn, vc_err* err) noexcept nogil:
    cdef int rc = VC_OK
    cdef uint32_t gen
    cdef uint64_t spin
    if w == NULL:
        return vc_fail(err, VC_E_INVALID, "log is closed")
    if w.readonly:
        return VC_OK
    if w.sync_mode != VC_SYNC_FULL:
        pthread_mutex_lock(&w.lock)
        if w.failed:
            rc = fail_sticky(w, w.failed, err)
        pthread_mutex_unlock(&w.lock)
        return rc
    while True:
        # under sync full every flush covers the whole log, the directory included, so
        # durable_lsn alone says whether this commit is durable
        if vc_load_u64(&w.durable_lsn) >= lsn:
            return VC_OK
        pthread_mutex_lock(&w.lock)
        if w.failed:
            rc = fail_sticky(w, w.failed, err)
            pthread_mutex_unlock(&w.lock)
            return rc
        if not w.syncing:
            rc = flush_locked(w, lsn, err, True)     # this commit leads the next flush
            pthread_mutex_unlock(&w.lock)
            return rc
        # a flush is under way: wait until it ends, without the lock, and look again;
        # spin while it should end soon (vc_spin.h), else sleep
        gen = w.flush_gen
        spin = 0                     # a slow disk: a wake-up is small beside its flush
        if w.last_flush_ns <= FLUSH_SPIN_MAX_NS:
            spin = 2 * w.last_flush_ns
        pthread_mutex_unlock(&w.lock)
        if not vc_spin_u32_change(&w.flush_gen, gen, spin):
            vc_wait_u32(&w.flush_gen, gen)


cdef uint64_t vc_wal_durable_lsn(vc_wal* w) noexcept nogil:
    # ACQUIRE pairs with the release stores under w.lock; a stale value is only smaller
    return vc_load_u64(&w.durable_lsn)


cdef int vc_wal_flush(vc_wal* w, vc_err* err) noexcept nogil:
    cdef int rc
    if w == NULL:
        return vc_fail(err, VC_E_INVALID, "log is closed")
    if w.readonly:
        return VC_OK
    pthread_mutex_lock(&w.lock)
    rc = flush_locked(w, w.written_lsn, err)
    pthread_mutex_unlock(&w.lock)
    return rc


cdef int vc_wal_rotate(vc_wal* w, uint64_t* new_seg, vc_err* err) noexcept nogil:
    cdef int new_fd = -1, old_fd, rc = 0, e = 0
    cdef uint64_t target, next_seg
    cdef bint cut = False
    cdef const char* what = "fdatasync"
    cdef char path[SEG_PATH_MAX]
    if w == NULL:
        return vc_fail(err, VC_E_INVALID, "log is closed")
    if w.readonly:
        return vc_fail(err, VC_E_READONLY, "%s: log is read-only", w.path)
    pthread_mutex_lock(&w.append_lock)
    pthread_mutex_lock(&w.lock)
    e = w.failed
    pthread_mutex_unlock(&w.lock)
    if e:
        pthread_mutex_unlock(&w.append_lock)
        return fail_sticky(w, e, err)
    next_seg = w.seg_no + 1

    # Take the syncing role: no leader may hold the old fd while we switch it.
    pthread_mutex_lock(&w.lock)
    while w.syncing:
        pthread_cond_wait(&w.cond, &w.lock)
    w.syncing = True
    target = w.written_lsn
    pthread_mutex_unlock(&w.lock)
    # The old segment is cut to its last record and flushed before the next one exists:
    # once it is no longer the last, a zero tail would read as a bad record (corruption).
    if w.seg_file_bytes > w.seg_bytes:
        cut = True
        what = "cannot cut the zeros after the last record"
        rc = ftruncate(w.seg_fd, <off_t>w.seg_bytes)
        e = errno
        if rc == 0:
            w.seg_file_bytes = w.seg_bytes
    if rc == 0 and w.sync_mode != VC_SYNC_OFF:
        # everything appended so far is in the old segment (appends wait on append_lock);
        # fsync, not fdatasync, when the size went down
        what = "fsync" if cut else "fdatasync"
        rc = fsync_fd(w.seg_fd) if cut else datasync_fd(w.seg_fd)
        e = errno
    if rc != 0:
        pthread_mutex_lock(&w.lock)
        end_syncing(w)
        w.failed = e if e != 0 else EIO
        pthread_cond_broadcast(&w.cond)
        pthread_mutex_unlock(&w.lock)
        pthread_mutex_unlock(&w.append_lock)
        return vc_fail_errno(err, VC_E_IO, e, "%s/%08llu.log: %s", w.path,
                             <unsigned long long>w.seg_no, what)
    if create_segment(w, next_seg, &new_fd, err) != VC_OK:
        # the old segment stays the current one, flushed
        pthread_mutex_lock(&w.lock)
        end_syncing(w)
        if w.sync_mode != VC_SYNC_OFF and target > w.durable_lsn:
            vc_store_u64(&w.durable_lsn, target)
        pthread_cond_broadcast(&w.cond)
        pthread_mutex_unlock(&w.lock)
        pthread_mutex_unlock(&w.append_lock)
        return VC_FAIL
    if w.sync_mode != VC_SYNC_OFF:
        rc = fsync_fd(w.dir_fd)
        e = errno
    pthread_mutex_lock(&w.lock)
    end_syncing(w)
    if rc != 0:
        w.failed = e if e != 0 else EIO
        pthread_cond_broadcast(&w.cond)
        pthread_mutex_unlock(&w.lock)
        close(new_fd)
        seg_path(w, next_seg, path)
        unlink(path)
        pthread_mutex_unlock(&w.append_lock)
        return vc_fail_errno(err, VC_E_IO, e, "%s: fsync", w.path)
    if w.sync_mode != VC_SYNC_OFF:
        if target > w.durable_lsn:
            vc_store_u64(&w.durable_lsn, target)
    else:
        if w.unsynced_seg == 0:
            w.unsynced_seg = w.seg_no
        w.dir_gen += 1
    old_fd = w.seg_fd
    w.seg_fd = new_fd
    w.seg_no = next_seg
    w.seg_bytes = SEG_HDR_SIZE
    w.seg_file_bytes = SEG_HDR_SIZE
    w.total_bytes += SEG_HDR_SIZE
    pthread_cond_broadcast(&w.cond)
    pthread_mutex_unlock(&w.lock)
    close(old_fd)
    if new_seg != NULL:
        new_seg[0] = next_seg
    pthread_mutex_unlock(&w.append_lock)
    return VC_OK


cdef int vc_wal_remove_before(vc_wal* w, uint64_t seg, vc_err* err) noexcept nogil:
    cdef char path[SEG_PATH_MAX]
    cdef struct_stat sb
    cdef uint64_t s, removed_bytes = 0
    cdef bint removed_any = False
    cdef int rc = VC_OK
    if w == NULL:
        return vc_fail(err, VC_E_INVALID, "log is closed")
    if w.readonly:
        return vc_fail(err, VC_E_READONLY, "%s: log is read-only", w.path)
    pthread_mutex_lock(&w.append_lock)
    if seg > w.seg_no:
        pthread_mutex_unlock(&w.append_lock)
        return vc_fail(err, VC_E_INVALID, "%s: cannot remove segments below %llu: current segment is %llu",
                       w.path, <unsigned long long>seg, <unsigned long long>w.seg_no)
    s = w.first_seg
    while s < seg:          # oldest first: a crash midway leaves a consecutive suffix
        seg_path(w, s, path)
        if c_stat(path, &sb) == 0:
            if unlink(path) != 0 and errno != ENOENT:
                rc = vc_fail_errno(err, VC_E_IO, errno, "%s: cannot remove log segment", path)
                break
            removed_bytes += <uint64_t>sb.st_size
            removed_any = True
        elif errno != ENOENT:
            rc = vc_fail_errno(err, VC_E_IO, errno, "%s: stat", path)
            break
        s += 1
        w.first_seg = s
    if removed_any:
        if w.sync_mode != VC_SYNC_OFF:
            if fsync_fd(w.dir_fd) != 0 and rc == VC_OK:
                rc = vc_fail_errno(err, VC_E_IO, errno, "%s: fsync", w.path)
        pthread_mutex_lock(&w.lock)
        if w.sync_mode == VC_SYNC_OFF:
            w.dir_gen += 1
        w.total_bytes = w.total_bytes - removed_bytes if w.total_bytes > removed_bytes else 0
        pthread_mutex_unlock(&w.lock)
    pthread_mutex_unlock(&w.append_lock)
    return rc


cdef int vc_wal_close(vc_wal* w, vc_err* err) noexcept nogil:
    cdef int rc = VC_OK
    if w == NULL:
        return VC_OK
    if w.has_flusher:
        pthread_mutex_lock(&w.lock)
        w.stopping = True
        pthread_cond_broadcast(&w.cond)
        pthread_mutex_unlock(&w.lock)
        pthread_join(w.flusher, NULL)
        w.has_flusher = False
    if not w.readonly and w.seg_fd >= 0 and w.sync_mode != VC_SYNC_OFF:
        rc = vc_wal_flush(w, err)
        if rc == VC_OK and w.seg_file_bytes > w.seg_bytes:
            # leave the last segment ending at its last record; if this fails, the zeros
            # are a torn tail that the next open cuts off
            if ftruncate(w.seg_fd, <off_t>w.seg_bytes) == 0:
                fsync_fd(w.seg_fd)
    close_fd(w.seg_fd)
    close_fd(w.dir_fd)
    pthread_cond_destroy(&w.cond)
    pthread_mutex_destroy(&w.append_lock)
    pthread_mutex_destroy(&w.lock)
    free(w)
    return rc

# Write-ahead log: framing, CRC32C, group commit, segment rotation, recovery scan.
#
# Contract (all functions noexcept nogil; return VC_OK or VC_FAIL with *err filled):
# - One record per committed transaction; the payload is opaque bytes owned by the caller.
# - Records are appended in strictly increasing commit_ts order (the caller guarantees it).
# - Files: <dir>/wal/NNNNNNNN.log (8 decimal digits, segment number, starting at 1).
from libc.stdint cimport uint32_t, uint64_t
from velocore._common cimport vc_err, vc_buf

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef unsigned long pthread_t

cdef enum:
    VC_SYNC_OFF = 0      # never fsync
    VC_SYNC_NORMAL = 1   # write at commit, background fdatasync every few ms
    VC_SYNC_FULL = 2     # commit waits for fdatasync (group commit)

# Called once per valid record with commit_ts > after_ts, in log order, during open.
# Return 0 to go on, -1 to stop the open with an error (the callback fills err).
# Called by the leader of a successful flush, before it wakes the commits it covered:
# everything up to lsn is durable.  Runs without the log's locks held.
ctypedef void (*vc_durable_fn)(void* ctx, uint64_t lsn) noexcept nogil

ctypedef int (*vc_replay_fn)(void* ctx, uint64_t commit_ts, const unsigned char* payload,
                             size_t payload_len, vc_err* err) noexcept nogil

cdef struct vc_wal:
    int dir_fd                  # fd of <dir>/wal (for fsync after create/unlink)
    int seg_fd                  # fd of the segment being appended to, -1 when readonly
    uint64_t seg_no             # number of the segment being appended to
    uint64_t seg_bytes          # bytes in the current segment (next append offset)
    uint64_t total_bytes        # bytes in all live segments (checkpoint trigger)
    uint64_t written_lsn        # log sequence number (total bytes ever appended) written
    uint64_t durable_lsn        # everything up to here is flushed to disk
    int sync_mode               # VC_SYNC_*
    bint readonly               # no file is modified
    bint syncing                # a group-commit leader is inside fdatasync
    bint stopping               # tells the background flusher to exit
    bint has_flusher            # background flusher thread started (sync normal)
    int failed                  # sticky: after an fsync error every commit fails
    pthread_mutex_t lock        # guards every field above
    pthread_cond_t cond         # signalled when durable_lsn advances / flusher work
    pthread_t flusher           # background flusher (sync normal)
    char path[4096]             # <dir>/wal
    # private to _wal.pyx
    pthread_mutex_t append_lock # serializes append/rotate/remove_before; held across write(2)
    uint64_t first_seg          # lowest live segment number (guarded by append_lock)
    uint64_t seg_file_bytes     # size of the current segment file, >= seg_bytes: past seg_bytes
                                # it holds only zeros written ahead of the appends (sync full /
                                # normal), so a commit's fdatasync overwrites allocated blocks
                                # and has no file size to journal (guarded by append_lock)
    uint64_t zeroed_bytes       # zeros written ahead so far (info(): log_zeroed_bytes)
    uint64_t unsynced_seg       # sync off: oldest segment rotated away unflushed, 0 if none
    uint64_t dir_gen            # bumped when wal/ changes without a dir fsync (sync off)
    uint64_t dir_synced_gen     # dir_gen covered by the last dir fsync
    # group commit (w.lock): a leader whose last group had several commits waits a moment
    # for the others to append before it flushes, so groups do not alternate 1, n-1, 1 ...
    uint64_t appends            # records appended so far (the gathering leader spins on it
                                # without the lock: relaxed stores and loads)
    uint64_t synced_appends     # of those, covered by the last completed flush
    uint64_t last_group         # records the last commit flush covered
    uint64_t last_flush_ns      # how long that flush took (also bounds the committers' spin)
    uint32_t flush_gen          # bumped (w.lock, release store) when a flush ends, well or
                                # not; committers waiting for a flush sleep on it (futex)
    vc_durable_fn on_durable    # set once after open (NULL: none)
    void* on_durable_ctx
    uint64_t commit_flushes     # flushes run by committing leaders (info(): group size)

# Open <dir>/wal (create it when missing unless readonly), replay segments >= start_seg,
# calling fn for each record whose commit_ts > after_ts, and (unless readonly) position
# for appending after the last valid record.  A torn or truncated tail of the LAST segment
# is cut off (truncated on disk unless readonly) without error.  A bad record followed by
# a valid one, a missing segment in the sequence, a bad segment header on a non-last
# segment, or commit_ts not strictly increasing raises VC_E_CORRUPT naming file and offset.
# Segments numbered below start_seg are deleted (unless readonly).
# *last_ts receives the largest commit_ts seen (after_ts when none).
cdef int vc_wal_open(vc_wal** out, const char* store_dir, int sync_mode, bint readonly,
                     uint64_t start_seg, uint64_t after_ts, vc_replay_fn fn, void* ctx,
                     uint64_t* last_ts, vc_err* err) noexcept nogil

# Produce the next piece of a streamed payload into chunk: 0 with chunk.len > 0, a piece;
# 0 with chunk.len == 0, the end; -1, a failure.
ctypedef int (*vc_wal_fill_fn)(void* ctx, vc_buf* chunk) noexcept nogil

# Append one record; on return the bytes are written (write(2)) but maybe not flushed.
# Its payload is `first` (first_crc: its CRC32C), followed, when fill is not NULL, by
# what fill() produces, piece by piece, until it reports the end: a large transaction's
# record never exists whole in memory, and is encoded once (the header, with the
# payload's length and CRC, is then written after the payload).  *lsn receives the lsn
# just past the record, to pass to vc_wal_sync_to.
cdef int vc_wal_append_stream(vc_wal* w, uint64_t commit_ts, const unsigned char* first,
                              size_t first_len, uint32_t first_crc, vc_wal_fill_fn fill,
                              void* ctx, vc_buf* chunk, uint64_t* lsn, vc_err* err) noexcept nogil

# Group commit: return once durable_lsn >= lsn.  One caller (the leader) runs fdatasync
# for everyone waiting; others wait on the condition.  No-op for VC_SYNC_OFF; for
# VC_SYNC_NORMAL returns at once (the flusher does it).
cdef int vc_wal_sync_to(vc_wal* w, uint64_t lsn, vc_err* err) noexcept nogil

# Flush everything written so far, whatever the mode (used by close and checkpoint).
cdef int vc_wal_flush(vc_wal* w, vc_err* err) noexcept nogil

# durable_lsn, read without the lock (it only grows)
cdef uint64_t vc_wal_durable_lsn(vc_wal* w) noexcept nogil

# Start a new segment (flushing the old one unless VC_SYNC_OFF); *new_seg gets its number.
# The old segment is first cut to its last record and flushed, and only then is the new
# one created: a segment that is not the last never ends in zeros (recovery is strict
# there).  Records appended afterwards go to the new segment.
cdef int vc_wal_rotate(vc_wal* w, uint64_t* new_seg, vc_err* err) noexcept nogil

# Delete segments numbered below seg (they are covered by a checkpoint); fsync the dir.
cdef int vc_wal_remove_before(vc_wal* w, uint64_t seg, vc_err* err) noexcept nogil

# Flush (unless VC_SYNC_OFF), cut the zeros ahead off the last segment, stop the flusher,
# close files, free w.  Safe on NULL.
cdef int vc_wal_close(vc_wal* w, vc_err* err) noexcept nogil

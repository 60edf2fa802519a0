# Page file, page cache, meta slots and free-space bookkeeping.
#
# Pages are VC_PAGE_SIZE bytes.  Every page starts with a vc_page_hdr whose crc covers
# bytes [4, VC_PAGE_SIZE) and whose page_id must equal the page's position (a misplaced
# write is caught like a flipped bit).  Pages are written only by a checkpoint, into
# pages no reader can see (copy-on-write), so a cached page is never dirty.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from velocore._common cimport (vc_err, vc_u32vec, pthread_mutex_t, vc_fence_acquire,
                               vc_load_u64_relaxed)

cdef enum:
    VC_PAGE_SIZE = 4096
    VC_HDR_SIZE = 16
    VC_PAGE_META = 0x4D      # 'M'
    VC_PAGE_LEAF = 0x4C      # 'L'
    VC_PAGE_BRANCH = 0x42    # 'B'
    VC_PAGE_OVERFLOW = 0x4F  # 'O'
    VC_PAGE_FREELIST = 0x46  # 'F'
    VC_FORMAT_VERSION = 1
    VC_NO_FRAME = 0xFFFFFFFF # handle of a page that needs no release (in-memory store)
    VC_FRAME_LOADING = 0x40000000  # state bit, always with VC_FRAME_EVICTING: a miss is
                                   # reading the page named in the high half into the frame
    VC_FRAME_PINS = 0x3FFFFFFF     # pin count in the low half of the state word
    VC_HINT_WORDS = 62             # vc_hints.words: the block is 256 bytes, 4 cache lines
    VC_HINT_MAX_PREFIX = 64        # a page whose keys share a longer prefix gets no hints

cdef packed struct vc_page_hdr:
    uint32_t crc             # CRC32C of bytes [4, VC_PAGE_SIZE)
    uint8_t type             # VC_PAGE_*
    uint8_t level            # branch: height above the leaves (1 = children are leaves)
    uint16_t count           # leaf: entries; branch: separators (children = count + 1)
    uint32_t page_id         # this page's own number
    uint32_t aux             # branch: leftmost child; overflow/freelist: next page or 0

cdef packed struct vc_meta:
    vc_page_hdr hdr          # type VC_PAGE_META, page_id 0 or 1
    char magic[8]            # "VELOCORE"
    uint32_t format_version  # VC_FORMAT_VERSION
    uint32_t page_size       # VC_PAGE_SIZE
    uint64_t checkpoint_seq  # increases by one per checkpoint; the higher valid slot wins
    uint64_t checkpoint_ts   # every commit with commit_ts <= this is in the tree
    uint64_t log_start_seg   # first log segment recovery must read
    uint32_t root            # root page of the tree, 0 when empty
    uint32_t height          # 0 empty, 1 root is a leaf, ...
    uint32_t freelist_head   # first freelist page, 0 when none
    uint32_t page_count      # pages in use by this checkpoint (file high-water mark)
    uint64_t free_count      # page ids listed in the freelist chain

cdef struct vc_frame:       # one cache line each: hits on different frames share nothing
    uint64_t state           # (page_id << 32) | pins; VC_FRAME_EVICTING while emptied or
                             # refilled, plus VC_FRAME_LOADING (no pins) while the miss that
                             # claimed it reads page_id without the cache lock
    uint64_t hits            # lookups served by this frame (relaxed; summed by info())
    uint64_t gen             # bumped each time the frame is claimed for another page,
                             # before its bytes change: an unpinned read of the frame is
                             # valid if gen is the same after it (vc_page_try/vc_page_still)
    uint32_t page_id         # page held or being loaded (mirror of state for the slot
                             # table), changed under the cache lock
    uint8_t referenced       # CLOCK bit, set on a hit when clear (relaxed)
    uint8_t pad[35]

cdef struct vc_hints:        # search hints of the page in one frame, derived from its bytes by
                             # the miss that loads it, before it is published (see _btree.pyx)
    uint16_t nheads          # heads in words[hoff:], 0 = no hints (not a leaf or branch,
                             # a slot that fails the search's bounds checks, ...)
    uint16_t step            # head j is that of slot j * step (1: every slot has one)
    uint16_t count           # the page's entry count
    uint8_t cp               # every key on the page starts with the cp bytes in words[:hoff]
    uint8_t hoff             # first word of the heads: cp rounded up to whole words
    uint32_t words[VC_HINT_WORDS]  # the prefix bytes, then the heads: per head, the
                             # key bytes [cp, cp + 4) as a big-endian number, zero-padded;
                             # non-decreasing in slot order

ctypedef void (*vc_hints_fn)(const unsigned char* page, vc_hints* hints) noexcept nogil

cdef struct vc_pending:
    uint64_t tree_version    # reusable once no reader holds a tree version below this
    vc_u32vec pages          # page ids freed by the checkpoint that made tree_version

cdef struct vc_pager:
    int fd                   # data.vc, or -1 for an in-memory store
    bint readonly
    uint32_t page_count      # high-water mark: pages 0 .. page_count-1 exist
    unsigned char*** mem_dir # in-memory backend: 65536 chunks of 65536 page pointers
    # cache (file backend only)
    uint32_t nframes
    unsigned char* frame_mem # nframes * VC_PAGE_SIZE, page aligned
    vc_frame* frames
    vc_hints* hints          # nframes blocks, 64-byte aligned; hints[f] describes frame f's page
                             # while it is pinned (written only while the frame is loading)
    vc_hints_fn derive_hints # fills a frame's hints from its page (NULL: none are built)
    uint32_t* slots          # open addressing: frame index + 1, 0 = empty; size slot_mask+1;
                             # maps valid and loading frames; changed under `lock`, read
                             # lock-free by hits (a hit that races a change may miss and
                             # retry under the lock, never mis-hit)
    uint32_t slot_mask
    uint32_t clock_hand
    pthread_mutex_t lock     # guards victim choice, eviction and slot changes; not held
                             # across a miss's read (hits take no lock)
    uint64_t misses          # lookups that read from disk (cache lock)
    uint64_t kept_pins       # leaf pins get_many holds past its lookups (vc_lookup_hold), atomic;
                             # at most vc_kept_pins_max
    uint64_t unpinned_hits   # pages read through vc_page_try, added by each transaction as
                             # it ends (relaxed): those reads write nothing shared
    # free space (touched by the checkpointer, and reclaim under the store's lock)
    vc_u32vec free_now       # reusable at once
    vc_u32vec freed_cur      # freed by the checkpoint in progress
    vc_pending* pending      # freed by earlier checkpoints, waiting for readers to move on
    size_t npending
    size_t pending_cap
    vc_u32vec chain_pages    # pages of the freelist chain recorded in the durable meta
    pthread_mutex_t free_lock # guards free_now, freed_cur, pending, chain_pages, page_count growth
    vc_u32vec** held         # page sets of bulk-load runs not in the tree yet (vc_pager_hold):
    size_t nheld             # every meta written meanwhile lists them as free, and check counts
    size_t held_cap          # them so (free_lock; the sets themselves change under it too)
    uint32_t freelist_head   # chain currently recorded in the durable meta
    uint64_t meta_seq        # checkpoint_seq of the durable meta
    char path[4096]          # path of data.vc (for messages)

# cache_bytes pays for the frames and their hint blocks; derive_hints (or NULL) fills a
# frame's hint block from the page read into it.
cdef int vc_pager_open(vc_pager** out, const char* store_dir, bint readonly, size_t cache_bytes,
                       vc_hints_fn derive_hints, vc_meta* meta, vc_err* err) noexcept nogil
cdef void vc_pager_close(vc_pager* p) noexcept nogil

# Read access: pin the page and return a pointer to its bytes (checksum verified on load).
# *handle must be passed to vc_page_release.  Never writes the page.
cdef int vc_page_get(vc_pager* p, uint32_t page_id, const unsigned char** page,
                     uint32_t* handle, vc_err* err) noexcept nogil
cdef void vc_page_release(vc_pager* p, uint32_t handle) noexcept nogil
# For prefetch hints only: where a cached page's bytes are, NULL if it is not cached (no
# pin, no read from disk; the frame may change at any time).  Prefetches its first line.
cdef const unsigned char* vc_page_peek(vc_pager* p, uint32_t page_id) noexcept nogil
# Optimistic read access, without a pin: where a cached page's bytes are (NULL if it is not
# cached, is being loaded, or page_id is out of range: use vc_page_get, which loads it or
# reports the error).  The frame may be refilled with another page at any moment, so
# whatever is read from the bytes (and from vc_page_hints(p, *frame)) may be torn: every
# read must stay inside the page whatever the bytes say, and nothing read may be acted
# on (a child to descend to, a value returned, an error reported) until
# vc_page_still(p, *frame, *gen) has confirmed the frame held the page throughout.  Never
# loads, waits or writes anything but the frame's CLOCK bit; the caller counts the hit
# (unpinned_hits).
cdef const unsigned char* vc_page_try(vc_pager* p, uint32_t page_id, uint32_t* frame,
                                      uint64_t* gen) noexcept nogil

cdef inline uint64_t vc_kept_pins_max(vc_pager* p) noexcept nogil:
    """The most leaf pins get_many may hold past its lookups, all calls together: half
    the frames (iterator blocks may keep a quarter; the rest serve the other reads, the
    writers and the checkpoints)."""
    return p.nframes // 2

cdef inline bint vc_page_still(vc_pager* p, uint32_t frame, uint64_t gen) noexcept nogil:
    """True if the frame vc_page_try returned has held its page since then, so every read
    of its bytes made before this call saw that page's bytes."""
    if frame == VC_NO_FRAME:
        return True                 # an in-memory page: never rewritten while readable
    vc_fence_acquire()              # the page reads above complete before gen is read again
    return vc_load_u64_relaxed(&p.frames[frame].gen) == gen

# Another pin on a page the caller holds pinned (one more vc_page_release is then owed).
cdef void vc_page_repin(vc_pager* p, uint32_t handle) noexcept nogil

# The hint block of a page pinned by vc_page_get, valid until vc_page_release; NULL for an
# in-memory store's pages (they have none).
cdef inline const vc_hints* vc_page_hints(vc_pager* p, uint32_t handle) noexcept nogil:
    if handle == VC_NO_FRAME:
        return NULL
    return &p.hints[handle]

# Read a page straight into buf, bypassing the cache (overflow chains, check).
cdef int vc_page_read_into(vc_pager* p, uint32_t page_id, unsigned char* buf, vc_err* err) noexcept nogil

# Checkpoint side (one checkpointer at a time).
cdef int vc_page_alloc(vc_pager* p, uint32_t* page_id, vc_err* err) noexcept nogil
cdef int vc_page_write(vc_pager* p, uint32_t page_id, unsigned char* buf, vc_err* err) noexcept nogil
cdef int vc_page_free(vc_pager* p, uint32_t page_id, vc_err* err) noexcept nogil
cdef int vc_pager_commit_meta(vc_pager* p, vc_meta* meta, uint64_t tree_version, vc_err* err) noexcept nogil
cdef void vc_pager_reclaim(vc_pager* p, uint64_t min_tree_version) noexcept nogil
cdef uint32_t vc_page_crc(const unsigned char* page) noexcept nogil

# Bulk-load runs (see _btree.pxd, vc_run): pages written outside the tree and any
# checkpoint, spliced into it when their transaction commits.  A run's page set is held
# from vc_pager_hold to vc_pager_unhold: meanwhile a meta written by a checkpoint lists
# them as free (after a crash they are), and so does check.
cdef int vc_pager_hold(vc_pager* p, vc_u32vec* pages, vc_err* err) noexcept nogil
# n consecutive new pages at the end of the file, appended to a held set; *first is the first.
cdef int vc_pager_alloc_held(vc_pager* p, vc_u32vec* pages, uint32_t n, uint32_t* first,
                             vc_err* err) noexcept nogil
# pages[start:start+count] of a set (a held one, or any the caller owns) become free at
# once (no reader has seen them) and leave it.
cdef void vc_pager_release_held(vc_pager* p, vc_u32vec* pages, size_t start, size_t count) noexcept nogil
# The set is no longer held: its pages belong to the tree now (or were all released).
cdef void vc_pager_unhold(vc_pager* p, vc_u32vec* pages) noexcept nogil
# Write n consecutive pages from first (their page ids and checksums are filled in here)
# in one call; a run's leaves are not put in the cache.
cdef int vc_pager_write_pages(vc_pager* p, uint32_t first, unsigned char* buf, uint32_t n,
                              vc_err* err) noexcept nogil
# fdatasync the data file (a bulk load's leaves before its log record names them).
cdef int vc_pager_sync(vc_pager* p, vc_err* err) noexcept nogil
# Read and verify a page anywhere in the file, also past page_count (recovery reads a
# committed run's leaves, which the durable meta may not count yet).
cdef int vc_page_read_raw(vc_pager* p, uint32_t page_id, unsigned char* buf, vc_err* err) noexcept nogil

cdef uint64_t vc_pager_hits(vc_pager* p) noexcept nogil

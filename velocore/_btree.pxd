# B+tree over immutable (copy-on-write) pages: lookup, cursors, merge, overflow, check.
#
# Keys here are composite: a 4-byte big-endian table id, then the user key (1..1024 bytes),
# compared as unsigned bytes (memcmp order, shorter first on a tie).
#
# Leaf page:   vc_page_hdr | uint16 slot[count] ... free ... | entries (packed from the end)
#   entry:     uint16 klen | uint16 flags | uint32 vlen | [uint32 first overflow page] | key | [value]
# Branch page: vc_page_hdr (aux = leftmost child, level >= 1) | uint16 slot[count] | entries
#   entry:     uint16 klen | uint32 child | key      (every key in child >= this separator)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp
from velocore._common cimport vc_err, vc_buf, vc_u32vec
from velocore._pager cimport vc_pager, vc_hints

cdef enum:
    VC_MAX_KEY = 1028            # 4-byte table id + 1024 user bytes
    VC_MAX_VALUE = 67108864      # 64 MiB, enforced by the facade
    VC_INLINE_MAX = 1200         # 8 + klen + vlen above this: value goes to overflow pages
    VC_MAX_HEIGHT = 32
    VC_ENT_OVERFLOW = 1          # entry flag: value lives in an overflow chain

cdef struct vc_op:               # one change merged into the tree by a checkpoint
    const unsigned char* key
    const unsigned char* value   # NULL: delete
    uint32_t klen
    uint32_t vlen

cdef struct vc_cursor:
    vc_pager* pager
    uint32_t root
    uint32_t height
    int depth                    # levels on the stack (== height once positioned)
    uint32_t pid[32]             # page at each level, 0 = root level
    int idx[32]                  # slot at each level (branch: child index 0..count)
    const unsigned char* leaf    # pinned leaf page while positioned, else NULL
    uint32_t leaf_handle
    const unsigned char* ahead   # a scan's next leaf in the cache, for prefetches only
    uint32_t ahead_line          # ... lines of it prefetched so far (a few per step)
    bint valid                   # positioned on an entry
    vc_buf ovf                   # value read from overflow pages

# Fill a cached page's hint block (the pager's vc_hints_fn, run while the frame is loading):
# nheads = 0 unless it is a leaf or branch whose every slot passes the search's bounds checks.
cdef void vc_hints_derive(const unsigned char* page, vc_hints* h) noexcept nogil
# Test support: check and search one page image as a lookup would, with its hints or
# without.  mode 0: leaf (pos = entries < key, exact); 1: branch (pos = separators <= key);
# 2: branch, strict (separators < key); 3: leaf, searched from entry `start` on as a batch
# lookup after one in the same leaf does (1, nothing set, where the entry before start is
# not before key).  *nheads: heads the page's hint block has.  -1 if the page is not of
# that kind or a probe is damaged.  given: a hint block to search with instead of the
# page's own (what an unpinned reader of a frame being refilled may see), or NULL.
cdef int vc_page_search(const unsigned char* page, bint hinted, int mode, const unsigned char* key,
                        uint32_t klen, const vc_hints* given, uint32_t start, uint32_t* pos,
                        bint* exact, uint32_t* nheads, vc_err* err) noexcept nogil

# Point lookup.  Cached pages are read without a pin (vc_page_try) and each one read so is
# counted in *unpinned_hits; a page that is not cached, or changes meanwhile, sends the
# lookup down again with pins (vc_page_get, which loads it).
cdef int vc_tree_get(vc_pager* p, uint32_t root, uint32_t height, const unsigned char* key,
                     uint32_t klen, vc_buf* out, uint64_t* unpinned_hits, vc_err* err) noexcept nogil

cdef struct vc_lookup:           # point lookups that keep the last leaf pinned: a batch in
    vc_pager* pager              # key order descends once per leaf, not once per key
    uint32_t root
    uint32_t height
    const unsigned char* leaf    # pinned leaf of the last lookup, NULL when none
    uint32_t leaf_pid
    uint32_t leaf_handle
    uint32_t fpos                # where the last lookup in this leaf ended (the number of
                                 # entries before its key, plus one if it was found): the
                                 # next one searches from there when its key sorts after
                                 # the entry before; none after a descent
    uint32_t lolen               # the leaf holds every key in [lo, hi) of the tree;
    uint32_t hilen               # a length of 0 means unbounded on that side
    unsigned char lo[1028]
    unsigned char hi[1028]
    vc_buf ovf                   # value read from overflow pages
    bint leaf_kept               # the current leaf's pin is in kept: leaving it releases nothing
    bint keep_refused            # no budget was left to keep the current leaf
    uint32_t* kept               # pins of leaves kept for the caller (vc_lookup_hold), released
    uint32_t nkept               # by vc_lookup_close
    uint32_t kept_cap

cdef void vc_lookup_init(vc_lookup* lk, vc_pager* p, uint32_t root, uint32_t height) noexcept nogil
cdef void vc_lookup_close(vc_lookup* lk) noexcept nogil
# VC_OK with *value (valid until the next call or close), VC_NOTFOUND, or -1.
cdef int vc_lookup_get(vc_lookup* lk, const unsigned char* key, uint32_t klen,
                       const unsigned char** value, size_t* vlen, vc_err* err) noexcept nogil
# Whether value (from the last vc_lookup_get, or from elsewhere) stays valid until
# vc_lookup_close.  A value in the current leaf does once the leaf is kept pinned, within
# the pager's budget of kept pins (half its frames, shared by all lookups); 0 when that
# budget is spent or memory is short, and for a value read from overflow pages (a copy the
# next call replaces): the caller must copy those before the next call.  Memory that is
# not the lookup's is the caller's to judge, and answered 1.
cdef bint vc_lookup_hold(vc_lookup* lk, const unsigned char* value) noexcept nogil

cdef void vc_cursor_init(vc_cursor* c, vc_pager* p, uint32_t root, uint32_t height) noexcept nogil
cdef void vc_cursor_close(vc_cursor* c) noexcept nogil
# Position on the first entry >= key (key NULL: the first entry).
cdef int vc_cursor_seek_ge(vc_cursor* c, const unsigned char* key, uint32_t klen, vc_err* err) noexcept nogil
# Position on the last entry < key (key NULL: the last entry).
cdef int vc_cursor_seek_lt(vc_cursor* c, const unsigned char* key, uint32_t klen, vc_err* err) noexcept nogil
cdef int vc_cursor_next(vc_cursor* c, vc_err* err) noexcept nogil
cdef int vc_cursor_prev(vc_cursor* c, vc_err* err) noexcept nogil
cdef void vc_cursor_key(vc_cursor* c, const unsigned char** key, uint32_t* klen) noexcept nogil
cdef int vc_cursor_value(vc_cursor* c, const unsigned char** value, size_t* vlen, vc_err* err) noexcept nogil
# Prefetch hint: the next few entries of the cursor's leaf, in the scan's direction.
cdef void vc_cursor_prefetch(vc_cursor* c, bint backward) noexcept nogil
# Key and value of the entry under the cursor in one decode.
cdef int vc_cursor_entry(vc_cursor* c, const unsigned char** key, uint32_t* klen,
                         const unsigned char** value, size_t* vlen, vc_err* err) noexcept nogil

# Apply sorted, duplicate-free ops to the tree copy-on-write, removing every key whose table
# id is in dropped[] (sorted).  Old pages go to the pager's freed list.
cdef int vc_tree_merge(vc_pager* p, uint32_t root, uint32_t height, const vc_op* ops, size_t nops,
                       const uint32_t* dropped, size_t ndropped, uint32_t* new_root,
                       uint32_t* new_height, vc_err* err) noexcept nogil

# A bulk load's leaves, built outside the tree from keys in ascending order, for a key
# range the tree has no key in, and spliced into the tree whole (vc_tree_splice) when its
# transaction commits.  Its pages are taken from the end of the file and held in the pager
# (vc_pager_hold) until then.
cdef struct vc_run:
    void* impl                   # builder state (_btree.pyx)
    vc_pager* pager
    vc_u32vec pages              # every page it holds: leaves and overflow pages
    vc_u32vec leaves             # its leaves written so far, in key order (vc_run_finish
    vc_u32vec crcs               # writes the rest), and their checksums: the log names both
    uint64_t nkeys
    uint32_t lolen               # its first key
    uint32_t lastlen             # the last one added
    unsigned char lo[1028]
    unsigned char last[1028]
    unsigned char limit[1028]    # keys must stay below this one (the snapshot's next key)
    uint32_t limitlen            # 0: no limit

ctypedef int (*vc_run_entry_fn)(void* ctx, const unsigned char* key, uint32_t klen,
                                const unsigned char* value, uint32_t vlen, vc_err* err) noexcept nogil

cdef vc_run* vc_run_new(vc_pager* p, vc_err* err) noexcept nogil
# Keys ascending, each at or above the last one added (the caller checks); the same key
# again replaces it (its overflow pages, if any, are free again).  0, or -1 on error.
cdef int vc_run_add(vc_run* run, const unsigned char* key, uint32_t klen,
                    const unsigned char* value, uint32_t vlen, vc_err* err) noexcept nogil
# Write what is still being packed; run.leaves is then complete.
cdef int vc_run_finish(vc_run* run, vc_err* err) noexcept nogil
# release: its pages become free (it was not spliced in); else they are the tree's now.
cdef void vc_run_free(vc_run* run, bint release) noexcept nogil
# The tree with a finished run's leaves spliced in where its key range lies, copy-on-write;
# 0, or -1 (VC_E_CONFLICT if the tree holds one of its first or last key).  The pages the
# new tree replaces are appended to freed (the caller frees them once it is published), the
# ones it wrote to allocs (to give back if it is not); on failure it gives back its own.
cdef int vc_tree_splice(vc_pager* p, uint32_t root, uint32_t height, vc_run* run,
                        uint32_t* new_root, uint32_t* new_height, vc_u32vec* allocs,
                        vc_u32vec* freed, vc_err* err) noexcept nogil
# Every entry of the leaves (read from the file wherever they lie, each checked against its
# logged checksum when crcs is given), in order, to fn.
cdef int vc_run_scan(vc_pager* p, const uint32_t* leaves, const uint32_t* crcs, size_t n,
                     vc_run_entry_fn fn, void* ctx, vc_err* err) noexcept nogil

# Verify every reachable page (checksum, layout, key order, separators, overflow chains)
# and that reachable + free pages account for the whole file.  Problems are appended to
# report as lines; returns the number of problems, or -1 on an I/O / memory failure.
cdef long vc_tree_check(vc_pager* p, uint32_t root, uint32_t height, vc_buf* report,
                        uint64_t* nkeys, vc_err* err) noexcept nogil

cdef extern from "vc_key.h" nogil:
    # memcmp order, the shorter key first on a tie (8 bytes per step, see vc_key.h)
    int vc_key_cmp(const unsigned char* a, uint32_t alen, const unsigned char* b,
                   uint32_t blen)
    bint vc_key_eq(const unsigned char* a, uint32_t alen, const unsigned char* b,
                   uint32_t blen)
    uint64_t vc_load_be64(const unsigned char* p)
    # a key's bytes, by moves of fixed size (no `rep movs`; see vc_key.h)
    void vc_key_copy(unsigned char* dst, const unsigned char* src, size_t n)

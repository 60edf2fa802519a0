# B+tree over copy-on-write pages.  No Python objects; every function is nogil.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memmove, memset, memcmp
from libc.stdio cimport snprintf

from velocore._common cimport (vc_err, vc_fail, vc_buf, vc_buf_reserve, vc_buf_free,
                               vc_u32vec, vc_u32vec_push, vc_u32vec_free,
                               VC_E_CORRUPT, VC_E_NOMEM, VC_E_CONFLICT, VC_OK, VC_NOTFOUND, vc_prefetch,
                               vc_load_u64_relaxed, vc_budget_take, vc_sub_u64_relaxed)
from velocore._pager cimport (vc_pager, vc_page_hdr, vc_page_get, vc_page_release, vc_page_peek,
                              vc_page_try, vc_page_still, vc_kept_pins_max,
                              vc_page_read_into, vc_page_alloc, vc_page_write, vc_page_free,
                              vc_hints, vc_page_hints, vc_pager_hold, vc_pager_alloc_held,
                              vc_pager_release_held, vc_pager_unhold, vc_pager_write_pages,
                              vc_page_read_raw,
                              VC_PAGE_SIZE, VC_HDR_SIZE, VC_PAGE_LEAF, VC_PAGE_BRANCH,
                              VC_PAGE_OVERFLOW, VC_PAGE_FREELIST, VC_NO_FRAME, VC_HINT_WORDS,
                              VC_HINT_MAX_PREFIX)

cdef enum:
    FPOS_NONE = 0x7FFFFFFF                    # vc_lookup.fpos: no last lookup in this leaf
    CAP = VC_PAGE_SIZE - VC_HDR_SIZE          # bytes for slots + entries in a node
    OVF_DATA = VC_PAGE_SIZE - VC_HDR_SIZE     # value bytes per overflow page
    MAX_CHILDREN = CAP // 9 + 2               # smallest branch entry: slot 2 + 6 + 1-byte key
    MAX_PROBLEMS = 100


# ---------------------------------------------------------------- unaligned little helpers

cdef inline uint16_t ld16(const unsigned char* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v

cdef inline uint32_t ld32(const unsigned char* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v

cdef inline void st16(unsigned char* p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)

cdef inline void st32(unsigned char* p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline const vc_page_hdr* hdr(const unsigned char* page) noexcept nogil:
    return <const vc_page_hdr*>page

cdef inline uint32_t key_table(const unsigned char* key) noexcept nogil:
    return (<uint32_t>key[0] << 24) | (<uint32_t>key[1] << 16) | (<uint32_t>key[2] << 8) | key[3]


# ---------------------------------------------------------------- entry decoding with bounds checks

cdef struct leaf_ent:
    const unsigned char* key
    const unsigned char* value   # inline value, or NULL when on overflow pages
    const unsigned char* raw     # start of the encoded entry
    uint32_t klen
    uint32_t vlen
    uint32_t ovf                 # first overflow page, 0 when inline
    uint32_t size                # encoded size


cdef int node_check(vc_pager* p, const unsigned char* page, uint32_t pid, int want_type,
                    int want_level, vc_err* err) noexcept nogil:
    cdef const vc_page_hdr* h = hdr(page)
    if h.type != want_type or (want_level >= 0 and h.level != want_level):
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: expected a %s page at level %d, found type 0x%02x level %u",
                       p.path, pid, "leaf" if want_type == VC_PAGE_LEAF else "branch", want_level,
                       h.type, h.level)
    if VC_HDR_SIZE + 2 * <uint32_t>h.count > VC_PAGE_SIZE:
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: entry count %u too large", p.path, pid, h.count)
    return 0


cdef int leaf_get(vc_pager* p, const unsigned char* page, uint32_t pid, uint32_t i, leaf_ent* e,
                  vc_err* err) noexcept nogil:
    cdef uint32_t off = ld16(page + VC_HDR_SIZE + 2 * i)
    cdef uint32_t flags, head
    if off < VC_HDR_SIZE + 2 * <uint32_t>hdr(page).count or off + 8 > VC_PAGE_SIZE:
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: slot %u points outside the page", p.path, pid, i)
    e.raw = page + off
    e.klen = ld16(page + off)
    flags = ld16(page + off + 2)
    e.vlen = ld32(page + off + 4)
    if flags & VC_ENT_OVERFLOW:
        head = 12
        if off + 12 > VC_PAGE_SIZE:
            return vc_fail(err, VC_E_CORRUPT, "%s: page %u: entry %u truncated", p.path, pid, i)
        e.ovf = ld32(page + off + 8)
        e.size = head + e.klen
        e.value = NULL
    else:
        head = 8
        e.ovf = 0
        e.size = head + e.klen + e.vlen
    if e.klen == 0 or e.klen > VC_MAX_KEY or e.vlen > VC_MAX_VALUE or off + e.size > VC_PAGE_SIZE:
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: entry %u has bad lengths", p.path, pid, i)
    e.key = page + off + head
    if not (flags & VC_ENT_OVERFLOW):
        e.value = e.key + e.klen
    return 0


cdef int branch_sep(vc_pager* p, const unsigned char* page, uint32_t pid, uint32_t i,
                    const unsigned char** key, uint32_t* klen, uint32_t* child, vc_err* err) noexcept nogil:
    """Separator i (0-based) and the child to its right (child index i + 1)."""
    cdef uint32_t off = ld16(page + VC_HDR_SIZE + 2 * i)
    if off < VC_HDR_SIZE + 2 * <uint32_t>hdr(page).count or off + 6 > VC_PAGE_SIZE:
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: slot %u points outside the page", p.path, pid, i)
    klen[0] = ld16(page + off)
    child[0] = ld32(page + off + 2)
    if klen[0] == 0 or klen[0] > VC_MAX_KEY or off + 6 + klen[0] > VC_PAGE_SIZE:
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: separator %u has a bad length", p.path, pid, i)
    key[0] = page + off + 6
    return 0


cdef int branch_child(vc_pager* p, const unsigned char* page, uint32_t pid, uint32_t ci,
                      uint32_t* child, vc_err* err) noexcept nogil:
    cdef const unsigned char* k
    cdef uint32_t kl
    if ci == 0:
        child[0] = hdr(page).aux
        return 0
    return branch_sep(p, page, pid, ci - 1, &k, &kl, child, err)


cdef inline int slot_key(const unsigned char* page, uint32_t i, bint leaf, uint32_t lo_off,
                         const unsigned char** key, uint32_t* klen) noexcept nogil:
    """Key of slot i for a search.  Only what the comparison reads is bounds-checked;
    -1 if it lies outside the page."""
    cdef uint32_t off = ld16(page + VC_HDR_SIZE + 2 * i)
    cdef uint32_t kl, head = 6
    if off < lo_off or off + 8 > VC_PAGE_SIZE:
        return -1
    if leaf:
        head = 12 if ld16(page + off + 2) & VC_ENT_OVERFLOW else 8
    kl = ld16(page + off)
    if kl == 0 or off + head + kl > VC_PAGE_SIZE:
        return -1
    key[0] = page + off + head
    klen[0] = kl
    return 0


# ---------------------------------------------------------------- search hints
#
# A binary search over a page reads a slot offset and then a key elsewhere in the page at
# every probe: a cache miss each.  A page loaded into the cache gets a 256-byte hint block
# (vc_hints, built once by vc_hints_derive while the frame is loading; pages are immutable,
# so it stays right while the page is cached): the prefix cp all its keys share (that of
# its first and last keys) and, for every slot or evenly sampled ones, the key's "head",
# bytes [cp, cp + 4) as a big-endian number, zero-padded.  For keys that start with the
# prefix the head is monotone (a < b implies head(a) <= head(b)), so a slot whose head is
# below the search key's sorts before it and one whose head is above sorts after it.  The
# heads therefore bracket the answer of any lower or upper bound search to a few slots,
# usually one, and the full-key probes run only there.  Equal heads (short keys, zero
# bytes, prefixes longer than cp) just leave a wider range: the answer is always the
# plain search's.

cdef inline uint32_t key_head(const unsigned char* key, uint32_t klen, uint32_t cp) noexcept nogil:
    """Key bytes [cp, cp + 4) as a big-endian number, zero-padded (klen >= cp)."""
    cdef uint32_t head = 0, i
    if klen >= cp + 4:
        return ((<uint32_t>key[cp] << 24) | (<uint32_t>key[cp + 1] << 16)
                | (<uint32_t>key[cp + 2] << 8) | key[cp + 3])
    for i in range(4):
        head <<= 8
        if cp + i < klen:
            head |= key[cp + i]
    return head


cdef void vc_hints_derive(const unsigned char* page, vc_hints* h) noexcept nogil:
    cdef uint32_t count = hdr(page).count, lo_off, i, j, cp = 0, kl, fl = 0, ll = 0, nwords, step
    cdef uint32_t n, head, prev = 0
    cdef const unsigned char* k
    cdef const unsigned char* first = NULL
    cdef const unsigned char* last = NULL
    cdef bint leaf
    h.nheads = 0
    if hdr(page).type == VC_PAGE_LEAF:
        leaf = True
    elif hdr(page).type == VC_PAGE_BRANCH:
        leaf = False
    else:
        return
    if count == 0 or VC_HDR_SIZE + 2 * count > VC_PAGE_SIZE:
        return
    lo_off = VC_HDR_SIZE + 2 * count
    # Every slot must pass the search's own bounds checks: then a hinted search fails on no
    # page that a plain one reads without error, and a page with a damaged slot gets no
    # hints, so its searches report the damage exactly as they would without them.
    for i in range(count):
        if slot_key(page, i, leaf, lo_off, &k, &kl) < 0:
            return
    slot_key(page, 0, leaf, lo_off, &first, &fl)
    slot_key(page, count - 1, leaf, lo_off, &last, &ll)
    while cp < fl and cp < ll and first[cp] == last[cp]:
        cp += 1
    if cp > VC_HINT_MAX_PREFIX:
        return
    nwords = (cp + 3) >> 2
    step = (count + (VC_HINT_WORDS - nwords) - 1) // (VC_HINT_WORDS - nwords)
    n = (count + step - 1) // step
    memset(h.words, 0, nwords * 4)
    memcpy(<unsigned char*>h.words, first, cp)
    for j in range(n):
        slot_key(page, j * step, leaf, lo_off, &k, &kl)
        # keys out of order (a page no checkpoint writes): no hints, the plain search decides
        if kl < cp or memcmp(k, first, cp) != 0:
            return
        head = key_head(k, kl, cp)
        if head < prev:
            return
        h.words[nwords + j] = head
        prev = head
    h.step = <uint16_t>step
    h.count = <uint16_t>count
    h.cp = <uint8_t>cp
    h.hoff = <uint8_t>nwords
    h.nheads = <uint16_t>n


cdef inline void hints_narrow(const vc_hints* h, const unsigned char* key, uint32_t klen,
                              uint32_t* lo, uint32_t* hi) noexcept nogil:
    """Narrow [0, count) to [lo, hi): every slot before lo sorts before key, every slot
    from hi on after it, so a lower or upper bound search for key lies in [lo, hi]."""
    # The block's first 8 bytes in one load: an unpinned read (vc_page_try) may meet a
    # block being rewritten, and the checks below must hold for the very values used.
    # vc_hints_derive never builds a block that fails them.
    cdef uint64_t head8 = vc_load_u64_relaxed(<const uint64_t*>h)
    cdef uint32_t nheads = <uint16_t>head8, step = <uint16_t>(head8 >> 16)
    cdef uint32_t count = <uint16_t>(head8 >> 32), cp = <uint8_t>(head8 >> 48)
    cdef uint32_t hoff = <uint8_t>(head8 >> 56)
    cdef uint32_t n = klen if klen < cp else cp, j, hk, below = 0, upto = 0
    cdef const uint32_t* heads = h.words + hoff
    cdef int c
    if cp > VC_HINT_MAX_PREFIX or hoff + nheads > VC_HINT_WORDS:
        return
    c = vc_key_cmp(key, n, <const unsigned char*>h.words, n)
    if c < 0 or (c == 0 and klen < cp):     # before the prefix: before every key
        lo[0] = 0
        hi[0] = 0
        return
    if c > 0:                                # after the prefix: after every key
        lo[0] = count
        hi[0] = count
        return
    hk = key_head(key, klen, cp)
    for j in range(nheads):                  # branch-free: the heads fill 1 to 4 cache lines
        below += heads[j] < hk
        upto += heads[j] <= hk
    lo[0] = 0 if below == 0 else (below - 1) * step + 1
    hi[0] = count if upto == nheads else upto * step


cdef inline void narrow_within(const vc_hints* h, const unsigned char* key, uint32_t klen,
                               uint32_t count, uint32_t* lo, uint32_t* hi) noexcept nogil:
    """hints_narrow, with the range kept inside the page's own count [0, count]: the same
    for hints derived from the page, and no slot read outside the page for a block that
    an unpinned reader saw torn."""
    hints_narrow(h, key, klen, lo, hi)
    if hi[0] > count:
        hi[0] = count
    if lo[0] > hi[0]:
        lo[0] = hi[0]


cdef int branch_search(vc_pager* p, const unsigned char* page, uint32_t pid, const vc_hints* hints,
                       const unsigned char* key, uint32_t klen, bint strict, uint32_t* ci,
                       vc_err* err) noexcept nogil:
    """ci = number of separators <= key (strict: < key).  hints: the page's, or NULL."""
    cdef uint32_t count = hdr(page).count, lo = 0, hi = count, mid, kl
    cdef uint32_t lo_off = VC_HDR_SIZE + 2 * count
    cdef const unsigned char* k
    cdef int c
    if lo_off > VC_PAGE_SIZE:
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: entry count %u too large", p.path, pid, count)
    if hints != NULL and hints.nheads != 0:
        narrow_within(hints, key, klen, count, &lo, &hi)
    while lo < hi:
        mid = (lo + hi) >> 1
        if slot_key(page, mid, False, lo_off, &k, &kl) < 0:
            return vc_fail(err, VC_E_CORRUPT, "%s: page %u: separator %u lies outside the page",
                           p.path, pid, mid)
        c = vc_key_cmp(k, kl, key, klen)
        if c < 0 or (c == 0 and not strict):
            lo = mid + 1
        else:
            hi = mid
    ci[0] = lo
    return 0


cdef int leaf_lower_bound(vc_pager* p, const unsigned char* page, uint32_t pid, const vc_hints* hints,
                          const unsigned char* key, uint32_t klen, uint32_t* pos, bint* exact,
                          vc_err* err) noexcept nogil:
    """pos = number of entries < key; exact: the entry at pos is key.  hints: the page's, or NULL."""
    cdef uint32_t count = hdr(page).count, lo = 0, hi = count
    cdef uint32_t lo_off = VC_HDR_SIZE + 2 * count
    exact[0] = False
    if lo_off > VC_PAGE_SIZE:
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: entry count %u too large", p.path, pid, count)
    if hints != NULL and hints.nheads != 0:
        narrow_within(hints, key, klen, count, &lo, &hi)
    return leaf_bsearch(p, page, pid, lo_off, key, klen, lo, hi, False, pos, exact, err)


cdef inline int leaf_bsearch(vc_pager* p, const unsigned char* page, uint32_t pid, uint32_t lo_off,
                             const unsigned char* key, uint32_t klen, uint32_t lo, uint32_t hi,
                             bint hi_exact, uint32_t* pos, bint* exact, vc_err* err) noexcept nogil:
    """The binary search both leaf searches end with: every entry before lo sorts before
    key, and the entry at hi does not (hi_exact: it is key).  pos, exact as they say."""
    cdef uint32_t mid, kl
    cdef const unsigned char* k
    cdef int c
    while lo < hi:
        mid = (lo + hi) >> 1
        if slot_key(page, mid, True, lo_off, &k, &kl) < 0:
            return vc_fail(err, VC_E_CORRUPT, "%s: page %u: entry %u lies outside the page",
                           p.path, pid, mid)
        c = vc_key_cmp(k, kl, key, klen)
        if c < 0:
            lo = mid + 1
        else:
            hi = mid
            hi_exact = c == 0
    pos[0] = lo
    exact[0] = hi_exact
    return 0


cdef int leaf_lower_bound_from(vc_pager* p, const unsigned char* page, uint32_t pid, uint32_t start,
                               const unsigned char* key, uint32_t klen, uint32_t* pos, bint* exact,
                               vc_err* err) noexcept nogil:
    """leaf_lower_bound for a key that sorts after every entry before start, searched from
    start on: probes at start, start + 1, start + 3, start + 7, ... then a binary search of
    the last gap, so a key a few entries on costs a few comparisons.  1 when the entry at
    start - 1 is not before key (or start is past the page's entries): nothing is set, and
    the caller searches the whole page."""
    cdef uint32_t count = hdr(page).count, lo = start, hi, probe, step = 1, kl
    cdef uint32_t lo_off = VC_HDR_SIZE + 2 * count
    cdef const unsigned char* k
    cdef bint hi_exact = False      # the entry at hi is key
    cdef int c
    if lo_off > VC_PAGE_SIZE:
        return vc_fail(err, VC_E_CORRUPT, "%s: page %u: entry count %u too large", p.path, pid, count)
    if start > count:
        return 1
    if start > 0:
        if slot_key(page, start - 1, True, lo_off, &k, &kl) < 0:
            return vc_fail(err, VC_E_CORRUPT, "%s: page %u: entry %u lies outside the page",
                           p.path, pid, start - 1)
        if vc_key_cmp(k, kl, key, klen) >= 0:
            return 1
    # every entry before lo sorts before key; gallop to the first probe that does not
    hi = count
    while lo < count:
        probe = lo + step - 1
        if probe >= count:
            break
        if slot_key(page, probe, True, lo_off, &k, &kl) < 0:
            return vc_fail(err, VC_E_CORRUPT, "%s: page %u: entry %u lies outside the page",
                           p.path, pid, probe)
        c = vc_key_cmp(k, kl, key, klen)
        if c >= 0:
            hi = probe
            hi_exact = c == 0
            break
        lo = probe + 1
        step <<= 1
    return leaf_bsearch(p, page, pid, lo_off, key, klen, lo, hi, hi_exact, pos, exact, err)


cdef int vc_page_search(const unsigned char* page, bint hinted, int mode, const unsigned char* key,
                        uint32_t klen, const vc_hints* given, uint32_t start, uint32_t* pos,
                        bint* exact, uint32_t* nheads, vc_err* err) noexcept nogil:
    cdef vc_pager* p = <vc_pager*>calloc(1, sizeof(vc_pager))    # only its path is read
    cdef uint64_t hbuf[32]          # 256 bytes, 8-byte aligned, as a frame's hint block is
    cdef vc_hints* h = <vc_hints*>hbuf
    cdef int rc
    if sizeof(vc_hints) > sizeof(hbuf):
        free(p)
        return vc_fail(err, VC_E_NOMEM, "hint block larger than its buffer")
    if p == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory")
    snprintf(p.path, sizeof(p.path), "<page>")
    exact[0] = False
    if node_check(p, page, 0, VC_PAGE_LEAF if mode == 0 or mode == 3 else VC_PAGE_BRANCH, -1, err) < 0:
        free(p)
        return -1
    if given != NULL:
        memcpy(h, given, sizeof(vc_hints))
    else:
        vc_hints_derive(page, h)
    nheads[0] = h.nheads
    if mode == 0:
        rc = leaf_lower_bound(p, page, 0, h if hinted else NULL, key, klen, pos, exact, err)
    elif mode == 3:
        rc = leaf_lower_bound_from(p, page, 0, start, key, klen, pos, exact, err)
    else:
        rc = branch_search(p, page, 0, h if hinted else NULL, key, klen, mode == 2, pos, err)
    free(p)
    return rc


# ---------------------------------------------------------------- overflow chains

cdef int read_overflow(vc_pager* p, uint32_t first, uint32_t vlen, vc_buf* out, vc_err* err) noexcept nogil:
    return read_overflow_x(p, first, vlen, out, False, err)


cdef int read_overflow_x(vc_pager* p, uint32_t first, uint32_t vlen, vc_buf* out, bint raw,
                         vc_err* err) noexcept nogil:
    """A value's overflow chain into out; raw: pages anywhere in the file (vc_page_read_raw)."""
    cdef unsigned char page[VC_PAGE_SIZE]
    cdef uint32_t pid = first
    cdef size_t done = 0, n
    if vc_buf_reserve(out, vlen if vlen else 1) < 0:
        return vc_fail(err, VC_E_NOMEM, "out of memory reading a %u-byte value", vlen)
    while done < vlen:
        if pid == 0:
            return vc_fail(err, VC_E_CORRUPT, "%s: overflow chain from page %u ends early", p.path, first)
        if (vc_page_read_raw(p, pid, page, err) if raw else vc_page_read_into(p, pid, page, err)) < 0:
            return -1
        if hdr(page).type != VC_PAGE_OVERFLOW:
            return vc_fail(err, VC_E_CORRUPT, "%s: page %u: expected an overflow page", p.path, pid)
        n = vlen - done
        if n > OVF_DATA:
            n = OVF_DATA
        memcpy(out.data + done, page + VC_HDR_SIZE, n)
        done += n
        pid = hdr(page).aux
    if pid != 0:
        return vc_fail(err, VC_E_CORRUPT, "%s: overflow chain from page %u is too long", p.path, first)
    out.len = vlen
    return 0


# ---------------------------------------------------------------- point lookup

cdef enum:
    GET_AGAIN = 2           # tree_get_unpinned: a page was not cached, or changed under it


cdef int tree_get_unpinned(vc_pager* p, uint32_t root, uint32_t height, const unsigned char* key,
                           uint32_t klen, vc_buf* out, vc_err* err) noexcept nogil:
    """vc_tree_get over cached pages without pinning them (vc_page_try): GET_AGAIN when a
    page is not cached or was refilled while it was read, and vc_tree_get then descends
    again with pins.  Each page is confirmed unchanged (vc_page_still) before anything read
    from it is used: the child to descend to, the value, a not-found or an error."""
    cdef uint32_t pid = root, level = height - 1, ci, frame, pos
    cdef uint64_t gen
    cdef const unsigned char* page
    cdef bint exact
    cdef leaf_ent e
    cdef int rc
    while True:
        page = vc_page_try(p, pid, &frame, &gen)
        if page == NULL:
            return GET_AGAIN
        if level > 0:
            if (node_check(p, page, pid, VC_PAGE_BRANCH, <int>level, err) < 0
                    or branch_search(p, page, pid, vc_page_hints(p, frame), key, klen, False,
                                     &ci, err) < 0
                    or branch_child(p, page, pid, ci, &pid, err) < 0):
                return -1 if vc_page_still(p, frame, gen) else GET_AGAIN
            if not vc_page_still(p, frame, gen):
                return GET_AGAIN
            level -= 1
            continue
        if (node_check(p, page, pid, VC_PAGE_LEAF, 0, err) < 0
                or leaf_lower_bound(p, page, pid, vc_page_hints(p, frame), key, klen, &pos,
                                    &exact, err) < 0
                or (exact and leaf_get(p, page, pid, pos, &e, err) < 0)):
            return -1 if vc_page_still(p, frame, gen) else GET_AGAIN
        if not exact:
            return VC_NOTFOUND if vc_page_still(p, frame, gen) else GET_AGAIN
        if e.ovf != 0:
            if not vc_page_still(p, frame, gen):
                return GET_AGAIN
            rc = read_overflow(p, e.ovf, e.vlen, out, err)
            return -1 if rc < 0 else VC_OK
        if vc_buf_reserve(out, e.vlen if e.vlen else 1) < 0:
            return vc_fail(err, VC_E_NOMEM, "out of memory")
        memcpy(out.data, e.value, e.vlen)
        out.len = e.vlen
        return VC_OK if vc_page_still(p, frame, gen) else GET_AGAIN


cdef int vc_tree_get(vc_pager* p, uint32_t root, uint32_t height, const unsigned char* key,
                     uint32_t klen, vc_buf* out, uint64_t* unpinned_hits, vc_err* err) noexcept nogil:
    cdef int rc
    if root == 0:
        return VC_NOTFOUND
    rc = tree_get_unpinned(p, root, height, key, klen, out, err)
    if rc != GET_AGAIN:
        if p.fd >= 0:                   # an in-memory store has no cache to count hits of
            unpinned_hits[0] += height
        return rc
    return tree_get_pinned(p, root, height, key, klen, out, err)


cdef int tree_get_pinned(vc_pager* p, uint32_t root, uint32_t height, const unsigned char* key,
                         uint32_t klen, vc_buf* out, vc_err* err) noexcept nogil:
    cdef uint32_t pid = root, level, ci, handle, pos
    cdef const unsigned char* page
    cdef bint exact
    cdef leaf_ent e
    cdef int rc
    if root == 0:
        return VC_NOTFOUND
    level = height - 1
    while True:
        if vc_page_get(p, pid, &page, &handle, err) < 0:
            return -1
        if level > 0:
            if (node_check(p, page, pid, VC_PAGE_BRANCH, <int>level, err) < 0
                    or branch_search(p, page, pid, vc_page_hints(p, handle), key, klen, False,
                                     &ci, err) < 0
                    or branch_child(p, page, pid, ci, &pid, err) < 0):
                vc_page_release(p, handle)
                return -1
            vc_page_release(p, handle)
            level -= 1
            continue
        if (node_check(p, page, pid, VC_PAGE_LEAF, 0, err) < 0
                or leaf_lower_bound(p, page, pid, vc_page_hints(p, handle), key, klen, &pos,
                                    &exact, err) < 0):
            vc_page_release(p, handle)
            return -1
        if not exact:
            vc_page_release(p, handle)
            return VC_NOTFOUND
        if leaf_get(p, page, pid, pos, &e, err) < 0:
            vc_page_release(p, handle)
            return -1
        if e.ovf == 0:
            if vc_buf_reserve(out, e.vlen if e.vlen else 1) < 0:
                vc_page_release(p, handle)
                return vc_fail(err, VC_E_NOMEM, "out of memory")
            memcpy(out.data, e.value, e.vlen)
            out.len = e.vlen
            vc_page_release(p, handle)
            return VC_OK
        vc_page_release(p, handle)
        rc = read_overflow(p, e.ovf, e.vlen, out, err)
        return -1 if rc < 0 else VC_OK


# ---------------------------------------------------------------- batched point lookups

cdef void vc_lookup_init(vc_lookup* lk, vc_pager* p, uint32_t root, uint32_t height) noexcept nogil:
    lk.pager = p
    lk.root = root
    lk.height = height
    lk.leaf = NULL
    lk.leaf_pid = 0
    lk.leaf_handle = VC_NO_FRAME
    lk.fpos = FPOS_NONE
    lk.lolen = 0
    lk.hilen = 0
    memset(&lk.ovf, 0, sizeof(vc_buf))
    lk.leaf_kept = False
    lk.keep_refused = False
    lk.kept = NULL
    lk.nkept = 0
    lk.kept_cap = 0


cdef inline void lookup_unpin(vc_lookup* lk) noexcept nogil:
    if lk.leaf != NULL:
        if not lk.leaf_kept:
            vc_page_release(lk.pager, lk.leaf_handle)
        lk.leaf = NULL
        lk.leaf_handle = VC_NO_FRAME
        lk.leaf_kept = False
        lk.keep_refused = False


cdef bint vc_lookup_hold(vc_lookup* lk, const unsigned char* value) noexcept nogil:
    if lk.ovf.data != NULL and value >= lk.ovf.data and value < lk.ovf.data + lk.ovf.cap:
        return False
    if lk.leaf == NULL or value < lk.leaf or value >= lk.leaf + VC_PAGE_SIZE:
        return True
    if lk.leaf_kept:
        return True
    return lookup_keep(lk)


cdef bint lookup_keep(vc_lookup* lk) noexcept nogil:
    """Keep the current leaf pinned until vc_lookup_close, within the pager's budget."""
    cdef vc_pager* p = lk.pager
    cdef uint32_t* grown
    cdef uint32_t cap
    if lk.keep_refused:
        return False
    if lk.leaf_handle == VC_NO_FRAME:
        # an in-memory page: it stays put while any reader's snapshot may reach it
        lk.leaf_kept = True
        return True
    if lk.nkept == lk.kept_cap:
        cap = lk.kept_cap * 2 if lk.kept_cap else 64
        grown = <uint32_t*>realloc(lk.kept, <size_t>cap * sizeof(uint32_t))
        if grown == NULL:
            lk.keep_refused = True
            return False
        lk.kept = grown
        lk.kept_cap = cap
    if not vc_budget_take(&p.kept_pins, vc_kept_pins_max(p)):
        lk.keep_refused = True
        return False
    lk.kept[lk.nkept] = lk.leaf_handle
    lk.nkept += 1
    lk.leaf_kept = True
    return True


cdef void vc_lookup_close(vc_lookup* lk) noexcept nogil:
    cdef uint32_t i
    lookup_unpin(lk)
    vc_buf_free(&lk.ovf)
    for i in range(lk.nkept):
        vc_page_release(lk.pager, lk.kept[i])
    if lk.nkept:
        vc_sub_u64_relaxed(&lk.pager.kept_pins, lk.nkept)
    free(lk.kept)
    lk.kept = NULL
    lk.nkept = 0
    lk.kept_cap = 0


cdef int lookup_descend(vc_lookup* lk, const unsigned char* key, uint32_t klen, vc_err* err) noexcept nogil:
    """Pin the leaf that holds key's place, noting the key range it covers."""
    cdef vc_pager* p = lk.pager
    cdef uint32_t pid = lk.root, level = lk.height - 1, ci, handle, kl, child, count, right
    cdef const unsigned char* page
    cdef const unsigned char* k
    lookup_unpin(lk)
    lk.fpos = FPOS_NONE
    lk.lolen = 0
    lk.hilen = 0
    while level > 0:
        if vc_page_get(p, pid, &page, &handle, err) < 0:
            return -1
        if (node_check(p, page, pid, VC_PAGE_BRANCH, <int>level, err) < 0
                or branch_search(p, page, pid, vc_page_hints(p, handle), key, klen, False,
                                 &ci, err) < 0):
            vc_page_release(p, handle)
            return -1
        # child ci holds [separator ci-1, separator ci); a deeper bound is tighter
        count = hdr(page).count
        if ci > 0:
            if branch_sep(p, page, pid, ci - 1, &k, &kl, &child, err) < 0:
                vc_page_release(p, handle)
                return -1
            memcpy(lk.lo, k, kl)
            lk.lolen = kl
        else:
            child = hdr(page).aux
        if ci < count:
            if branch_sep(p, page, pid, ci, &k, &kl, &right, err) < 0:
                vc_page_release(p, handle)
                return -1
            memcpy(lk.hi, k, kl)
            lk.hilen = kl
        vc_page_release(p, handle)
        pid = child
        level -= 1
    if vc_page_get(p, pid, &page, &handle, err) < 0:
        return -1
    if node_check(p, page, pid, VC_PAGE_LEAF, 0, err) < 0:
        vc_page_release(p, handle)
        return -1
    lk.leaf = page
    lk.leaf_pid = pid
    lk.leaf_handle = handle
    return 0


cdef int vc_lookup_get(vc_lookup* lk, const unsigned char* key, uint32_t klen,
                       const unsigned char** value, size_t* vlen, vc_err* err) noexcept nogil:
    cdef uint32_t pos
    cdef bint exact
    cdef leaf_ent e
    cdef int rc
    if lk.root == 0:
        return VC_NOTFOUND
    if (lk.leaf == NULL
            or (lk.lolen != 0 and vc_key_cmp(key, klen, lk.lo, lk.lolen) < 0)
            or (lk.hilen != 0 and vc_key_cmp(key, klen, lk.hi, lk.hilen) >= 0)):
        if lookup_descend(lk, key, klen, err) < 0:
            return -1
    # a batch in key order: start where the last lookup in this leaf ended
    rc = 1
    if lk.fpos != FPOS_NONE:
        rc = leaf_lower_bound_from(lk.pager, lk.leaf, lk.leaf_pid, lk.fpos, key, klen, &pos,
                                   &exact, err)
        if rc < 0:
            return -1
    if rc == 1 and leaf_lower_bound(lk.pager, lk.leaf, lk.leaf_pid,
                                    vc_page_hints(lk.pager, lk.leaf_handle),
                                    key, klen, &pos, &exact, err) < 0:
        return -1
    # found: the next key of a batch in key order sorts after it (a repeated key is
    # turned back by leaf_lower_bound_from's check, and searched for in the whole leaf)
    lk.fpos = pos + 1 if exact else pos
    if not exact:
        return VC_NOTFOUND
    if leaf_get(lk.pager, lk.leaf, lk.leaf_pid, pos, &e, err) < 0:
        return -1
    if e.ovf == 0:
        value[0] = e.value
        vlen[0] = e.vlen
        return VC_OK
    if read_overflow(lk.pager, e.ovf, e.vlen, &lk.ovf, err) < 0:
        return -1
    value[0] = lk.ovf.data
    vlen[0] = lk.ovf.len
    return VC_OK


# ---------------------------------------------------------------- cursors

cdef void vc_cursor_init(vc_cursor* c, vc_pager* p, uint32_t root, uint32_t height) noexcept nogil:
    memset(c, 0, sizeof(vc_cursor))
    c.pager = p
    c.root = root
    c.height = height
    c.leaf_handle = VC_NO_FRAME


cdef inline void cursor_unpin(vc_cursor* c) noexcept nogil:
    if c.leaf != NULL:
        vc_page_release(c.pager, c.leaf_handle)
        c.leaf = NULL
        c.leaf_handle = VC_NO_FRAME


cdef void vc_cursor_close(vc_cursor* c) noexcept nogil:
    cursor_unpin(c)
    c.valid = False
    vc_buf_free(&c.ovf)


cdef int cursor_down(vc_cursor* c, int level, uint32_t pid, bint rightmost, vc_err* err) noexcept nogil:
    """Walk from page pid at stack level `level` to a leaf along the left (right) edge."""
    cdef const unsigned char* page
    cdef uint32_t handle, count
    cdef int depth = <int>c.height
    while True:
        if vc_page_get(c.pager, pid, &page, &handle, err) < 0:
            return -1
        c.pid[level] = pid
        if level < depth - 1:
            if node_check(c.pager, page, pid, VC_PAGE_BRANCH, depth - 1 - level, err) < 0:
                vc_page_release(c.pager, handle)
                return -1
            count = hdr(page).count
            c.idx[level] = <int>count if rightmost else 0
            if branch_child(c.pager, page, pid, <uint32_t>c.idx[level], &pid, err) < 0:
                vc_page_release(c.pager, handle)
                return -1
            vc_page_release(c.pager, handle)
            level += 1
            continue
        if node_check(c.pager, page, pid, VC_PAGE_LEAF, 0, err) < 0:
            vc_page_release(c.pager, handle)
            return -1
        c.leaf = page
        c.leaf_handle = handle
        c.idx[level] = <int>hdr(page).count - 1 if rightmost else 0
        return 0


cdef int cursor_step_leaf(vc_cursor* c, bint backward, vc_err* err) noexcept nogil:
    """Move to the neighbouring leaf; c.valid False at either end of the tree."""
    cdef int level = <int>c.height - 2
    cdef const unsigned char* page
    cdef uint32_t handle, child, ahead
    cdef vc_err ignored              # a damaged neighbour is reported when it is reached
    cursor_unpin(c)
    while level >= 0:
        if vc_page_get(c.pager, c.pid[level], &page, &handle, err) < 0:
            return -1
        if (not backward and c.idx[level] < <int>hdr(page).count) or (backward and c.idx[level] > 0):
            c.idx[level] += -1 if backward else 1
            if branch_child(c.pager, page, c.pid[level], <uint32_t>c.idx[level], &child, err) < 0:
                vc_page_release(c.pager, handle)
                return -1
            c.ahead = NULL
            if level == <int>c.height - 2:
                # a scan: the leaf after this one is loaded a few lines per step meanwhile
                if not backward and c.idx[level] < <int>hdr(page).count:
                    if branch_child(c.pager, page, c.pid[level], <uint32_t>c.idx[level] + 1,
                                    &ahead, &ignored) == 0:
                        c.ahead = vc_page_peek(c.pager, ahead)
                elif backward and c.idx[level] > 0:
                    if branch_child(c.pager, page, c.pid[level], <uint32_t>c.idx[level] - 1,
                                    &ahead, &ignored) == 0:
                        c.ahead = vc_page_peek(c.pager, ahead)
                c.ahead_line = 1
            vc_page_release(c.pager, handle)
            if cursor_down(c, level + 1, child, backward, err) < 0:
                return -1
            if hdr(c.leaf).count == 0:
                return cursor_step_leaf(c, backward, err)
            c.valid = True
            return 0
        vc_page_release(c.pager, handle)
        level -= 1
    c.valid = False
    return 0


cdef int cursor_seek(vc_cursor* c, const unsigned char* key, uint32_t klen, bint before,
                     vc_err* err) noexcept nogil:
    cdef uint32_t pid, handle, ci, pos
    cdef const unsigned char* page
    cdef int level = 0
    cdef int depth = <int>c.height
    cdef bint exact
    cursor_unpin(c)
    c.valid = False
    c.ahead = NULL
    if c.root == 0:
        return 0
    if key == NULL:
        if cursor_down(c, 0, c.root, before, err) < 0:
            return -1
        c.valid = True
        if hdr(c.leaf).count == 0:
            return cursor_step_leaf(c, before, err)
        return 0
    pid = c.root
    while level < depth - 1:
        if vc_page_get(c.pager, pid, &page, &handle, err) < 0:
            return -1
        c.pid[level] = pid
        if (node_check(c.pager, page, pid, VC_PAGE_BRANCH, depth - 1 - level, err) < 0
                or branch_search(c.pager, page, pid, vc_page_hints(c.pager, handle), key, klen,
                                 before, &ci, err) < 0
                or branch_child(c.pager, page, pid, ci, &pid, err) < 0):
            vc_page_release(c.pager, handle)
            return -1
        c.idx[level] = <int>ci
        vc_page_release(c.pager, handle)
        level += 1
    if vc_page_get(c.pager, pid, &page, &handle, err) < 0:
        return -1
    c.pid[level] = pid
    c.leaf = page
    c.leaf_handle = handle
    if (node_check(c.pager, page, pid, VC_PAGE_LEAF, 0, err) < 0
            or leaf_lower_bound(c.pager, page, pid, vc_page_hints(c.pager, handle), key, klen,
                                &pos, &exact, err) < 0):
        cursor_unpin(c)
        return -1
    c.valid = True
    if before:
        c.idx[level] = <int>pos - 1
        if c.idx[level] < 0:
            return cursor_step_leaf(c, True, err)
    else:
        c.idx[level] = <int>pos
        if pos >= hdr(page).count:
            return cursor_step_leaf(c, False, err)
    return 0


cdef int vc_cursor_seek_ge(vc_cursor* c, const unsigned char* key, uint32_t klen, vc_err* err) noexcept nogil:
    return cursor_seek(c, key, klen, False, err)


cdef int vc_cursor_seek_lt(vc_cursor* c, const unsigned char* key, uint32_t klen, vc_err* err) noexcept nogil:
    return cursor_seek(c, key, klen, True, err)


cdef inline void cursor_ahead(vc_cursor* c) noexcept nogil:
    """A scan's step within a leaf: prefetch the next lines of the leaf after it, a few
    per step, so it is in cache when reached without a burst of misses at once."""
    if c.ahead != NULL and c.ahead_line < VC_PAGE_SIZE // 64:
        vc_prefetch(c.ahead + 64 * c.ahead_line)
        vc_prefetch(c.ahead + 64 * (c.ahead_line + 1))
        vc_prefetch(c.ahead + 64 * (c.ahead_line + 2))
        c.ahead_line += 3


cdef int vc_cursor_next(vc_cursor* c, vc_err* err) noexcept nogil:
    cdef int leaf_level = <int>c.height - 1
    if not c.valid:
        return 0
    c.idx[leaf_level] += 1
    if c.idx[leaf_level] < <int>hdr(c.leaf).count:
        cursor_ahead(c)
        return 0
    return cursor_step_leaf(c, False, err)


cdef int vc_cursor_prev(vc_cursor* c, vc_err* err) noexcept nogil:
    cdef int leaf_level = <int>c.height - 1
    if not c.valid:
        return 0
    c.idx[leaf_level] -= 1
    if c.idx[leaf_level] >= 0:
        cursor_ahead(c)
        return 0
    return cursor_step_leaf(c, True, err)


cdef void vc_cursor_key(vc_cursor* c, const unsigned char** key, uint32_t* klen) noexcept nogil:
    cdef leaf_ent e
    cdef vc_err ignored
    ignored.code = 0
    # the entry was validated when the cursor landed on it (leaf_get in the seek / checks)
    if leaf_get(c.pager, c.leaf, c.pid[c.height - 1], <uint32_t>c.idx[c.height - 1], &e, &ignored) < 0:
        key[0] = NULL
        klen[0] = 0
        return
    key[0] = e.key
    klen[0] = e.klen


cdef int vc_cursor_value(vc_cursor* c, const unsigned char** value, size_t* vlen, vc_err* err) noexcept nogil:
    cdef leaf_ent e
    if leaf_get(c.pager, c.leaf, c.pid[c.height - 1], <uint32_t>c.idx[c.height - 1], &e, err) < 0:
        return -1
    if e.ovf == 0:
        value[0] = e.value
        vlen[0] = e.vlen
        return 0
    if read_overflow(c.pager, e.ovf, e.vlen, &c.ovf, err) < 0:
        return -1
    value[0] = c.ovf.data
    vlen[0] = e.vlen
    return 0


cdef int vc_cursor_entry(vc_cursor* c, const unsigned char** key, uint32_t* klen,
                         const unsigned char** value, size_t* vlen, vc_err* err) noexcept nogil:
    cdef leaf_ent e
    if leaf_get(c.pager, c.leaf, c.pid[c.height - 1], <uint32_t>c.idx[c.height - 1], &e, err) < 0:
        return -1
    key[0] = e.key
    klen[0] = e.klen
    if e.ovf == 0:
        value[0] = e.value
        vlen[0] = e.vlen
        return 0
    if read_overflow(c.pager, e.ovf, e.vlen, &c.ovf, err) < 0:
        return -1
    value[0] = c.ovf.data
    vlen[0] = e.vlen
    return 0


cdef void vc_cursor_prefetch(vc_cursor* c, bint backward) noexcept nogil:
    """Start loading the next few entries of the cursor's leaf (a scan that just reached
    it reads them at once).  A hint only: bad offsets just stop it."""
    cdef uint32_t count, i, k, off
    cdef int step = -1 if backward else 1
    if c.leaf == NULL or not c.valid:
        return
    count = hdr(c.leaf).count
    i = <uint32_t>c.idx[c.height - 1]
    if VC_HDR_SIZE + 2 * count > VC_PAGE_SIZE:
        return
    for k in range(4):
        if i >= count:
            break
        off = ld16(c.leaf + VC_HDR_SIZE + 2 * i)
        if off < VC_PAGE_SIZE - 64:
            vc_prefetch(c.leaf + off)
            vc_prefetch(c.leaf + off + 64)
        i = <uint32_t>(<int>i + step)


# ---------------------------------------------------------------- merge (checkpoint)

cdef struct kid:
    unsigned char* key           # malloc'ed lower bound, NULL: no lower bound (leftmost)
    uint32_t klen
    uint32_t pid

cdef struct kidvec:
    kid* items
    size_t len
    size_t cap

cdef struct runimpl

cdef struct mctx:
    vc_pager* p
    vc_err* err
    const vc_op* ops
    const uint32_t* dropped
    size_t ndropped
    unsigned char* sbuf          # leaf entries waiting to be packed, encoded back to back
    size_t sbuf_len
    size_t sbuf_cap
    uint32_t* soff               # offset of each waiting entry in sbuf
    size_t sn
    size_t scap
    size_t sbytes                # sum of (entry size + 2-byte slot) of waiting entries
    unsigned char prev_key[1028] # last key of the previous leaf written in this run
    uint32_t prev_klen
    bint has_prev
    unsigned char page[4096]     # page being built
    runimpl* run                 # a bulk-load run's overflow pages: from its held set
    const vc_run* splice         # splicing this run in: ops[0] marks where (its first key)
    bint track                   # pages allocated and freed go to allocs / freed (a splice
    vc_u32vec* allocs            # that fails gives back what it took; one that succeeds
    vc_u32vec* freed             # frees the replaced pages once published)


cdef int m_alloc(mctx* m, uint32_t* pid) noexcept nogil:
    if m.run != NULL:
        return vc_pager_alloc_held(m.p, &m.run.pub.pages, 1, pid, m.err)
    if vc_page_alloc(m.p, pid, m.err) < 0:
        return -1
    if m.track and vc_u32vec_push(m.allocs, pid[0]) < 0:
        return vc_fail(m.err, VC_E_NOMEM, "out of memory in checkpoint")
    return 0


cdef int m_free(mctx* m, uint32_t pid) noexcept nogil:
    if m.track:
        if pid < 2 or pid >= m.p.page_count:
            return vc_fail(m.err, VC_E_CORRUPT, "%s: freeing page %u outside the file", m.p.path, pid)
        if vc_u32vec_push(m.freed, pid) < 0:
            return vc_fail(m.err, VC_E_NOMEM, "out of memory in checkpoint")
        return 0
    return vc_page_free(m.p, pid, m.err)


cdef int kid_push(mctx* m, kidvec* v, const unsigned char* key, uint32_t klen, uint32_t pid) noexcept nogil:
    cdef kid* items
    cdef size_t ncap
    if v.len == v.cap:
        ncap = v.cap * 2 if v.cap else 16
        items = <kid*>realloc(v.items, ncap * sizeof(kid))
        if items == NULL:
            return vc_fail(m.err, VC_E_NOMEM, "out of memory in checkpoint")
        v.items = items
        v.cap = ncap
    v.items[v.len].key = NULL
    v.items[v.len].klen = klen
    v.items[v.len].pid = pid
    if key != NULL:
        v.items[v.len].key = <unsigned char*>malloc(klen)
        if v.items[v.len].key == NULL:
            return vc_fail(m.err, VC_E_NOMEM, "out of memory in checkpoint")
        memcpy(v.items[v.len].key, key, klen)
    v.len += 1
    return 0


cdef void kidvec_free(kidvec* v) noexcept nogil:
    cdef size_t i
    for i in range(v.len):
        free(v.items[i].key)
    free(v.items)
    v.items = NULL
    v.len = 0
    v.cap = 0


cdef bint is_dropped(mctx* m, const unsigned char* key) noexcept nogil:
    cdef uint32_t t
    cdef size_t lo = 0, hi = m.ndropped, mid
    if m.ndropped == 0:
        return False
    t = key_table(key)
    while lo < hi:
        mid = (lo + hi) >> 1
        if m.dropped[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo < m.ndropped and m.dropped[lo] == t


cdef bint range_hits_dropped(mctx* m, const unsigned char* lo, uint32_t lolen,
                             const unsigned char* hi, uint32_t hilen) noexcept nogil:
    """Whether [lo, hi) (NULL: unbounded) may hold keys of a dropped table."""
    cdef size_t i
    cdef unsigned char tk[4]
    cdef unsigned char tk1[4]
    cdef uint32_t t
    for i in range(m.ndropped):
        t = m.dropped[i]
        tk[0] = <unsigned char>(t >> 24); tk[1] = <unsigned char>(t >> 16)
        tk[2] = <unsigned char>(t >> 8); tk[3] = <unsigned char>t
        t += 1
        tk1[0] = <unsigned char>(t >> 24); tk1[1] = <unsigned char>(t >> 16)
        tk1[2] = <unsigned char>(t >> 8); tk1[3] = <unsigned char>t
        if (hi == NULL or vc_key_cmp(hi, hilen, tk, 4) > 0) and \
           (lo == NULL or m.dropped[i] == <uint32_t>0xFFFFFFFFU or vc_key_cmp(lo, lolen, tk1, 4) < 0):
            return True
    return False


cdef int free_overflow(mctx* m, uint32_t first, uint32_t vlen) noexcept nogil:
    cdef unsigned char page[VC_PAGE_SIZE]
    cdef uint32_t pid = first
    cdef uint32_t npages = (vlen + OVF_DATA - 1) // OVF_DATA
    cdef uint32_t k
    for k in range(npages):
        if pid == 0:
            return vc_fail(m.err, VC_E_CORRUPT, "%s: overflow chain from page %u ends early", m.p.path, first)
        if vc_page_read_into(m.p, pid, page, m.err) < 0:
            return -1
        if hdr(page).type != VC_PAGE_OVERFLOW:
            return vc_fail(m.err, VC_E_CORRUPT, "%s: page %u: expected an overflow page", m.p.path, pid)
        if m_free(m, pid) < 0:
            return -1
        pid = hdr(page).aux
    return 0


cdef int write_overflow(mctx* m, const unsigned char* value, uint32_t vlen, uint32_t* first) noexcept nogil:
    cdef unsigned char page[VC_PAGE_SIZE]
    cdef uint32_t npages = (vlen + OVF_DATA - 1) // OVF_DATA
    cdef uint32_t k, cur, nxt = 0
    cdef size_t n
    if m_alloc(m, &cur) < 0:
        return -1
    first[0] = cur
    for k in range(npages):
        nxt = 0
        if k + 1 < npages and m_alloc(m, &nxt) < 0:
            return -1
        memset(page, 0, VC_HDR_SIZE)
        (<vc_page_hdr*>page).type = VC_PAGE_OVERFLOW
        (<vc_page_hdr*>page).aux = nxt
        n = vlen - <size_t>k * OVF_DATA
        if n > OVF_DATA:
            n = OVF_DATA
        memcpy(page + VC_HDR_SIZE, value + <size_t>k * OVF_DATA, n)
        if n < OVF_DATA:
            memset(page + VC_HDR_SIZE + n, 0, OVF_DATA - n)
        if vc_page_write(m.p, cur, page, m.err) < 0:
            return -1
        cur = nxt
    return 0


cdef inline uint32_t sep_length(const unsigned char* prev, uint32_t prevlen,
                                const unsigned char* first, uint32_t klen) noexcept nogil:
    """A leaf's separator: the shortest prefix of its first key above the last key of the
    leaf before it (prev; NULL: none, the whole key)."""
    cdef uint32_t l = 0
    if prev == NULL:
        return klen
    while l < prevlen and l < klen and prev[l] == first[l]:
        l += 1
    return l + 1 if l + 1 < klen else klen


cdef int write_leaf(mctx* m, size_t n, kidvec* out) noexcept nogil:
    """Pack the first n waiting entries into one new leaf and hand it to out."""
    cdef unsigned char* page = m.page
    cdef vc_page_hdr* h = <vc_page_hdr*>page
    cdef uint32_t off = VC_PAGE_SIZE
    cdef size_t i, size, rest_bytes = 0
    cdef uint32_t pid, klen, first_klen, sep_len
    cdef const unsigned char* e
    cdef const unsigned char* first_key
    size = (m.soff[n] if n < m.sn else m.sbuf_len) + 2 * n
    if n == 0 or size > CAP:
        return vc_fail(m.err, VC_E_CORRUPT, "internal error: %llu leaf bytes do not fit a page",
                       <unsigned long long>size)
    memset(page, 0, VC_HDR_SIZE)
    h.type = VC_PAGE_LEAF
    h.count = <uint16_t>n
    for i in range(n):
        e = m.sbuf + m.soff[i]
        size = (m.soff[i + 1] if i + 1 < m.sn else m.sbuf_len) - m.soff[i]
        off -= <uint32_t>size
        memcpy(page + off, e, size)
        st16(page + VC_HDR_SIZE + 2 * i, <uint16_t>off)
    memset(page + VC_HDR_SIZE + 2 * n, 0, off - (VC_HDR_SIZE + 2 * n))
    if m_alloc(m, &pid) < 0 or vc_page_write(m.p, pid, page, m.err) < 0:
        return -1
    # separator: the shortest prefix of the first key above the previous leaf's last key
    e = m.sbuf + m.soff[0]
    first_klen = ld16(e)
    first_key = e + (12 if ld16(e + 2) & VC_ENT_OVERFLOW else 8)
    sep_len = sep_length(m.prev_key if m.has_prev else NULL, m.prev_klen, first_key, first_klen)
    if kid_push(m, out, first_key, sep_len, pid) < 0:
        return -1
    e = m.sbuf + m.soff[n - 1]
    klen = ld16(e)
    memcpy(m.prev_key, e + (12 if ld16(e + 2) & VC_ENT_OVERFLOW else 8), klen)
    m.prev_klen = klen
    m.has_prev = True
    # drop the n entries from the stream
    if n < m.sn:
        size = m.soff[n]
        memmove(m.sbuf, m.sbuf + size, m.sbuf_len - size)
        m.sbuf_len -= size
        for i in range(n, m.sn):
            m.soff[i - n] = <uint32_t>(m.soff[i] - size)
    else:
        m.sbuf_len = 0
    m.sn -= n
    m.sbytes = m.sbuf_len + 2 * m.sn
    return 0


cdef int stream_emit_full(mctx* m, kidvec* out) noexcept nogil:
    """While more than two pages wait, write a full page from the front."""
    cdef size_t n, used, size
    while m.sbytes > 2 * CAP:
        n = 0
        used = 0
        while n < m.sn:
            size = (m.soff[n + 1] if n + 1 < m.sn else m.sbuf_len) - m.soff[n] + 2
            if used + size > CAP:
                break
            used += size
            n += 1
        if write_leaf(m, n, out) < 0:
            return -1
    return 0


cdef int stream_flush(mctx* m, kidvec* out) noexcept nogil:
    """Write every waiting entry into pages: the last two balanced, none over capacity."""
    cdef size_t n, used, size, target
    while m.sbytes > CAP:
        target = m.sbytes // 2 if m.sbytes <= 2 * CAP else CAP
        n = 0
        used = 0
        while n < m.sn:
            size = (m.soff[n + 1] if n + 1 < m.sn else m.sbuf_len) - m.soff[n] + 2
            if used + size > CAP or used >= target:
                break
            used += size
            n += 1
        if n == 0:
            n = 1
        if write_leaf(m, n, out) < 0:
            return -1
    if m.sn == 0:
        return 0
    return write_leaf(m, m.sn, out)


cdef unsigned char* stream_reserve(mctx* m, size_t size) noexcept nogil:
    cdef size_t ncap
    cdef unsigned char* nb
    cdef uint32_t* no
    if m.sbuf_len + size > m.sbuf_cap:
        ncap = m.sbuf_cap * 2 if m.sbuf_cap else 16384
        while ncap < m.sbuf_len + size:
            ncap *= 2
        nb = <unsigned char*>realloc(m.sbuf, ncap)
        if nb == NULL:
            return NULL
        m.sbuf = nb
        m.sbuf_cap = ncap
    if m.sn == m.scap:
        ncap = m.scap * 2 if m.scap else 1024
        no = <uint32_t*>realloc(m.soff, ncap * sizeof(uint32_t))
        if no == NULL:
            return NULL
        m.soff = no
        m.scap = ncap
    m.soff[m.sn] = <uint32_t>m.sbuf_len
    m.sn += 1
    m.sbuf_len += size
    m.sbytes += size + 2
    return m.sbuf + m.sbuf_len - size


cdef int stream_add_raw(mctx* m, const unsigned char* raw, uint32_t size, kidvec* out) noexcept nogil:
    cdef unsigned char* dst = stream_reserve(m, size)
    if dst == NULL:
        return vc_fail(m.err, VC_E_NOMEM, "out of memory in checkpoint")
    memcpy(dst, raw, size)
    return stream_emit_full(m, out)


cdef int stream_add_op(mctx* m, const vc_op* op, kidvec* out) noexcept nogil:
    cdef uint32_t first
    cdef unsigned char* dst
    if 8 + op.klen + op.vlen > VC_INLINE_MAX:
        if write_overflow(m, op.value, op.vlen, &first) < 0:
            return -1
        dst = stream_reserve(m, 12 + op.klen)
        if dst == NULL:
            return vc_fail(m.err, VC_E_NOMEM, "out of memory in checkpoint")
        st16(dst, <uint16_t>op.klen)
        st16(dst + 2, VC_ENT_OVERFLOW)
        st32(dst + 4, op.vlen)
        st32(dst + 8, first)
        memcpy(dst + 12, op.key, op.klen)
    else:
        dst = stream_reserve(m, 8 + op.klen + op.vlen)
        if dst == NULL:
            return vc_fail(m.err, VC_E_NOMEM, "out of memory in checkpoint")
        st16(dst, <uint16_t>op.klen)
        st16(dst + 2, 0)
        st32(dst + 4, op.vlen)
        memcpy(dst + 8, op.key, op.klen)
        if op.vlen:
            memcpy(dst + 8 + op.klen, op.value, op.vlen)
    return stream_emit_full(m, out)


cdef size_t ops_before(mctx* m, size_t a, size_t b, const unsigned char* key, uint32_t klen) noexcept nogil:
    """First index in [a, b) whose op key >= key (key NULL: b)."""
    cdef size_t mid
    if key == NULL:
        return b
    while a < b:
        mid = (a + b) >> 1
        if vc_key_cmp(m.ops[mid].key, m.ops[mid].klen, key, klen) < 0:
            a = mid + 1
        else:
            b = mid
    return a


cdef int merge_leaf(mctx* m, uint32_t pid, size_t a, size_t b, bint absorb_only, kidvec* out) noexcept nogil:
    """Feed the leaf's entries, merged with ops[a:b], into the stream; free the leaf."""
    cdef const unsigned char* page
    cdef uint32_t handle, i = 0, count
    cdef size_t j = a
    cdef leaf_ent e
    cdef int c, rc = 0
    if vc_page_get(m.p, pid, &page, &handle, m.err) < 0:
        return -1
    if node_check(m.p, page, pid, VC_PAGE_LEAF, 0, m.err) < 0:
        vc_page_release(m.p, handle)
        return -1
    count = hdr(page).count
    while rc == 0 and (i < count or j < b):
        if i < count:
            if leaf_get(m.p, page, pid, i, &e, m.err) < 0:
                rc = -1
                break
            c = vc_key_cmp(m.ops[j].key, m.ops[j].klen, e.key, e.klen) if j < b else 1
        else:
            c = -1
        if c < 0:
            if m.splice != NULL:
                rc = splice_emit(m, j, out)
            elif m.ops[j].value != NULL:
                rc = stream_add_op(m, &m.ops[j], out)
            j += 1
        elif c == 0:
            if m.splice != NULL:
                rc = vc_fail(m.err, VC_E_CONFLICT, "write conflict: the bulk load's key range "
                             "is no longer empty")
                break
            if e.ovf != 0:
                rc = free_overflow(m, e.ovf, e.vlen)
            if rc == 0 and m.ops[j].value != NULL:
                rc = stream_add_op(m, &m.ops[j], out)
            i += 1
            j += 1
        else:
            if is_dropped(m, e.key):
                if e.ovf != 0:
                    rc = free_overflow(m, e.ovf, e.vlen)
            else:
                rc = stream_add_raw(m, e.raw, e.size, out)
            i += 1
    vc_page_release(m.p, handle)
    if rc < 0:
        return -1
    return m_free(m, pid)


cdef int process_leaves(mctx* m, const uint32_t* pids, const unsigned char** los, const uint32_t* lolens,
                        size_t n, const unsigned char* hi, uint32_t hilen, size_t a, size_t b,
                        kidvec* out) noexcept nogil:
    """Rebuild the leaves pids[0:n] (child i holds keys in [los[i], los[i+1]) ) with ops[a:b]."""
    cdef size_t i, j = a, e
    cdef const unsigned char* chi
    cdef uint32_t chilen
    cdef bint touched
    m.has_prev = False
    if n == 0:
        while j < b:
            if m.splice != NULL:
                if splice_emit(m, j, out) < 0:
                    return -1
            elif m.ops[j].value != NULL and stream_add_op(m, &m.ops[j], out) < 0:
                return -1
            j += 1
        return stream_flush(m, out)
    for i in range(n):
        if i + 1 < n:
            chi = los[i + 1]
            chilen = lolens[i + 1]
        else:
            chi = hi
            chilen = hilen
        e = ops_before(m, j, b, chi, chilen)
        touched = e > j or range_hits_dropped(m, los[i], lolens[i], chi, chilen)
        if touched:
            if merge_leaf(m, pids[i], j, e, False, out) < 0:
                return -1
        elif m.sn > 0 and m.sbytes < CAP // 2:
            # the run so far ends underfull: pull this neighbour in
            if merge_leaf(m, pids[i], j, j, True, out) < 0:
                return -1
        else:
            if stream_flush(m, out) < 0:
                return -1
            if kid_push(m, out, los[i], lolens[i], pids[i]) < 0:
                return -1
            m.has_prev = False
        j = e
    return stream_flush(m, out)


cdef int pack_branches(mctx* m, kidvec* kids, uint32_t level, kidvec* out) noexcept nogil:
    """Pack kids (children at level-1) into branch pages at `level`, handing them to out."""
    cdef size_t s = 0, t, i, nb, prev_s = 0, total, half, acc
    cdef size_t* starts
    cdef size_t nstarts = 0
    cdef unsigned char* page = m.page
    cdef vc_page_hdr* h = <vc_page_hdr*>page
    cdef uint32_t off, pid
    cdef size_t used
    if kids.len == 0:
        return 0
    starts = <size_t*>malloc((kids.len + 1) * sizeof(size_t))
    if starts == NULL:
        return vc_fail(m.err, VC_E_NOMEM, "out of memory in checkpoint")
    # greedy page boundaries: page = kids[s] as leftmost child + separators for kids[s+1:t]
    while s < kids.len:
        starts[nstarts] = s
        nstarts += 1
        used = 0
        t = s + 1
        while t < kids.len and used + 8 + kids.items[t].klen <= CAP:
            used += 8 + kids.items[t].klen
            t += 1
        s = t
    starts[nstarts] = kids.len
    # balance the last two pages when the last is under half full
    if nstarts >= 2:
        s = starts[nstarts - 2]
        total = 0
        for i in range(s + 1, kids.len):
            total += 8 + kids.items[i].klen
        acc = 0
        t = s + 1
        half = total // 2
        while t < kids.len - 1 and acc + 8 + kids.items[t].klen <= half:
            acc += 8 + kids.items[t].klen
            t += 1
        # the second page's leftmost child (kids[t]) carries no separator bytes
        if t > s + 1:
            used = 0
            for i in range(t + 1, kids.len):
                used += 8 + kids.items[i].klen
            if used <= CAP:
                starts[nstarts - 1] = t
    for nb in range(nstarts):
        s = starts[nb]
        t = starts[nb + 1]
        memset(page, 0, VC_PAGE_SIZE)
        h.type = VC_PAGE_BRANCH
        h.level = <uint8_t>level
        h.count = <uint16_t>(t - s - 1)
        h.aux = kids.items[s].pid
        off = VC_PAGE_SIZE
        for i in range(s + 1, t):
            off -= 6 + kids.items[i].klen
            st16(page + off, <uint16_t>kids.items[i].klen)
            st32(page + off + 2, kids.items[i].pid)
            memcpy(page + off + 6, kids.items[i].key, kids.items[i].klen)
            st16(page + VC_HDR_SIZE + 2 * (i - s - 1), <uint16_t>off)
        if m_alloc(m, &pid) < 0 or vc_page_write(m.p, pid, page, m.err) < 0:
            free(starts)
            return -1
        if kid_push(m, out, kids.items[s].key, kids.items[s].klen, pid) < 0:
            free(starts)
            return -1
    free(starts)
    return 0


cdef int free_subtree(mctx* m, uint32_t pid, uint32_t level) noexcept nogil:
    cdef const unsigned char* page
    cdef uint32_t handle, i, child
    cdef leaf_ent e
    cdef int rc = 0
    if vc_page_get(m.p, pid, &page, &handle, m.err) < 0:
        return -1
    if level == 0:
        if node_check(m.p, page, pid, VC_PAGE_LEAF, 0, m.err) < 0:
            rc = -1
        i = 0
        while rc == 0 and i < hdr(page).count:
            if leaf_get(m.p, page, pid, i, &e, m.err) < 0:
                rc = -1
            elif e.ovf != 0:
                rc = free_overflow(m, e.ovf, e.vlen)
            i += 1
    else:
        if node_check(m.p, page, pid, VC_PAGE_BRANCH, <int>level, m.err) < 0:
            rc = -1
        i = 0
        while rc == 0 and i <= hdr(page).count:
            if branch_child(m.p, page, pid, i, &child, m.err) < 0:
                rc = -1
            else:
                rc = free_subtree(m, child, level - 1)
            i += 1
    vc_page_release(m.p, handle)
    if rc < 0:
        return -1
    return m_free(m, pid)


cdef int merge_branch(mctx* m, uint32_t pid, uint32_t level, const unsigned char* lo, uint32_t lolen,
                      const unsigned char* hi, uint32_t hilen, size_t a, size_t b, kidvec* out) noexcept nogil:
    cdef const unsigned char* page
    cdef uint32_t handle, i, n, child
    cdef kidvec kids
    cdef size_t j = a, e
    cdef uint32_t pids[MAX_CHILDREN]
    cdef const unsigned char* los[MAX_CHILDREN]
    cdef uint32_t lolens[MAX_CHILDREN]
    cdef const unsigned char* chi
    cdef uint32_t chilen
    cdef int rc = 0
    memset(&kids, 0, sizeof(kids))
    if vc_page_get(m.p, pid, &page, &handle, m.err) < 0:
        return -1
    if node_check(m.p, page, pid, VC_PAGE_BRANCH, <int>level, m.err) < 0:
        vc_page_release(m.p, handle)
        return -1
    n = hdr(page).count + 1
    if n > MAX_CHILDREN:
        vc_page_release(m.p, handle)
        return vc_fail(m.err, VC_E_CORRUPT, "%s: page %u: too many children", m.p.path, pid)
    pids[0] = hdr(page).aux
    los[0] = lo
    lolens[0] = lolen
    for i in range(1, n):
        if branch_sep(m.p, page, pid, i - 1, &los[i], &lolens[i], &pids[i], m.err) < 0:
            vc_page_release(m.p, handle)
            return -1
    if level == 1:
        rc = process_leaves(m, pids, los, lolens, n, hi, hilen, a, b, &kids)
    else:
        for i in range(n):
            if i + 1 < n:
                chi = los[i + 1]
                chilen = lolens[i + 1]
            else:
                chi = hi
                chilen = hilen
            e = ops_before(m, j, b, chi, chilen)
            if e > j or range_hits_dropped(m, los[i], lolens[i], chi, chilen):
                rc = merge_branch(m, pids[i], level - 1, los[i], lolens[i], chi, chilen, j, e, &kids)
            else:
                rc = kid_push(m, &kids, los[i], lolens[i], pids[i])
            if rc < 0:
                break
            j = e
    vc_page_release(m.p, handle)
    if rc == 0:
        rc = m_free(m, pid)
    if rc == 0:
        rc = pack_branches(m, &kids, level, out)
    kidvec_free(&kids)
    return rc


cdef int vc_tree_merge(vc_pager* p, uint32_t root, uint32_t height, const vc_op* ops, size_t nops,
                       const uint32_t* dropped, size_t ndropped, uint32_t* new_root,
                       uint32_t* new_height, vc_err* err) noexcept nogil:
    cdef mctx* m = <mctx*>calloc(1, sizeof(mctx))
    cdef int rc
    if m == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory in checkpoint")
    m.p = p
    m.err = err
    m.ops = ops
    m.dropped = dropped
    m.ndropped = ndropped
    rc = tree_merge(m, root, height, nops, new_root, new_height)
    free(m.sbuf)
    free(m.soff)
    free(m)
    return rc


cdef int tree_merge(mctx* m, uint32_t root, uint32_t height, size_t nops, uint32_t* new_root,
                    uint32_t* new_height) noexcept nogil:
    """The merge's descent from the root, the levels packed above it, and the root
    collapsed while it has a single child."""
    cdef kidvec kids, up
    cdef uint32_t level, handle, child
    cdef const unsigned char* page
    cdef const unsigned char* nolo = NULL
    cdef uint32_t zero = 0
    cdef vc_pager* p = m.p
    cdef vc_err* err = m.err
    cdef int rc = 0
    memset(&kids, 0, sizeof(kids))
    memset(&up, 0, sizeof(up))
    if root == 0:
        rc = process_leaves(m, NULL, NULL, NULL, 0, NULL, 0, 0, nops, &kids)
        level = 0
    elif height == 1:
        rc = process_leaves(m, &root, &nolo, &zero, 1, NULL, 0, 0, nops, &kids)
        level = 0
    else:
        rc = merge_branch(m, root, height - 1, NULL, 0, NULL, 0, 0, nops, &kids)
        level = height - 1
    while rc == 0 and kids.len > 1:
        level += 1
        if level >= VC_MAX_HEIGHT:
            rc = vc_fail(err, VC_E_CORRUPT, "tree height limit reached")
            break
        rc = pack_branches(m, &kids, level, &up)
        kidvec_free(&kids)
        kids = up
        memset(&up, 0, sizeof(up))
    if rc == 0:
        if kids.len == 0:
            new_root[0] = 0
            new_height[0] = 0
        else:
            new_root[0] = kids.items[0].pid
            new_height[0] = level + 1
            # a root with a single child is replaced by that child
            while rc == 0 and new_height[0] > 1:
                if vc_page_get(p, new_root[0], &page, &handle, err) < 0:
                    rc = -1
                    break
                if hdr(page).count != 0:
                    vc_page_release(p, handle)
                    break
                child = hdr(page).aux
                vc_page_release(p, handle)
                rc = m_free(m, new_root[0])
                new_root[0] = child
                new_height[0] -= 1
    kidvec_free(&kids)
    kidvec_free(&up)
    return rc


# ---------------------------------------------------------------- bulk-load runs

cdef enum:
    RUN_EXTENT = 64              # pages a run takes from the end of the file at a time,
                                 # written with one call once filled

cdef struct runimpl:
    vc_run* pub
    mctx m                       # for its overflow pages (m.run = this: held ones)
    kidvec kids                  # (separator, page) of each leaf finished, in key order
    unsigned char* batch         # RUN_EXTENT pages: leaves waiting to be written, then the
    uint32_t batch_first         # one being packed; page id of batch[0] (consecutive ids)
    uint32_t batch_n             # leaves finished in the batch
    uint32_t ext_next            # the extent being filled: ids ext_next .. ext_end-1 unused
    uint32_t ext_end             # (ext_next is the leaf being packed, when there is one)
    size_t ext_at                # index in pub.pages of the extent's first unused id
    unsigned char* cur           # the leaf being packed (batch[batch_n]), NULL if none: its
    uint32_t cur_off             # entries go down from the page's end, the last one added
    uint32_t cur_count           # at cur_off; cur_count of them
    uint32_t prev_lastlen        # last key of the leaf before it (its separator's bound)
    bint has_prev
    size_t ovf_at                # the last entry's overflow pages: pub.pages[ovf_at:][:ovf_n]
    size_t ovf_n                 # (0: its value is inline)
    unsigned char prev_last[1028]


cdef int run_flush_batch(runimpl* r, vc_err* err) noexcept nogil:
    cdef uint32_t i
    if r.batch_n == 0:
        return 0
    if vc_pager_write_pages(r.m.p, r.batch_first, r.batch, r.batch_n, err) < 0:
        return -1
    for i in range(r.batch_n):
        if vc_u32vec_push(&r.pub.leaves, r.batch_first + i) < 0 or \
           vc_u32vec_push(&r.pub.crcs, hdr(r.batch + <size_t>i * VC_PAGE_SIZE).crc) < 0:
            return vc_fail(err, VC_E_NOMEM, "out of memory in a bulk load")
    r.batch_n = 0
    return 0


cdef int run_leaf_open(runimpl* r, vc_err* err) noexcept nogil:
    """Start packing a leaf, at the next id of the run's extent (a new extent, once the
    batch of the last one is written, when it is used up)."""
    if r.ext_next == r.ext_end:
        if run_flush_batch(r, err) < 0:
            return -1
        r.ext_at = r.pub.pages.len
        if vc_pager_alloc_held(r.m.p, &r.pub.pages, RUN_EXTENT, &r.ext_next, err) < 0:
            return -1
        r.ext_end = r.ext_next + RUN_EXTENT
        r.batch_first = r.ext_next
    r.cur = r.batch + <size_t>r.batch_n * VC_PAGE_SIZE
    r.cur_off = VC_PAGE_SIZE
    r.cur_count = 0
    return 0


cdef int run_leaf_close(runimpl* r, vc_err* err) noexcept nogil:
    """The leaf being packed is finished: its header, its separator (the shortest prefix
    of its first key above the previous leaf's last key) into kids."""
    cdef unsigned char* page = r.cur
    cdef vc_page_hdr* h = <vc_page_hdr*>page
    cdef const unsigned char* e
    cdef const unsigned char* key
    cdef uint32_t klen, sep_len
    memset(page, 0, VC_HDR_SIZE)
    h.type = VC_PAGE_LEAF
    h.count = <uint16_t>r.cur_count
    memset(page + VC_HDR_SIZE + 2 * r.cur_count, 0, r.cur_off - (VC_HDR_SIZE + 2 * r.cur_count))
    e = page + ld16(page + VC_HDR_SIZE)
    klen = ld16(e)
    key = e + (12 if ld16(e + 2) & VC_ENT_OVERFLOW else 8)
    sep_len = sep_length(r.prev_last if r.has_prev else NULL, r.prev_lastlen, key, klen)
    r.m.err = err
    if kid_push(&r.m, &r.kids, key, sep_len, r.ext_next) < 0:
        return -1
    e = page + r.cur_off                       # the last entry added
    klen = ld16(e)
    memcpy(r.prev_last, e + (12 if ld16(e + 2) & VC_ENT_OVERFLOW else 8), klen)
    r.prev_lastlen = klen
    r.has_prev = True
    r.batch_n += 1
    r.ext_next += 1
    r.ext_at += 1
    r.cur = NULL
    return 0


cdef vc_run* vc_run_new(vc_pager* p, vc_err* err) noexcept nogil:
    cdef vc_run* run = <vc_run*>calloc(1, sizeof(vc_run))
    cdef runimpl* r = <runimpl*>calloc(1, sizeof(runimpl))
    if run != NULL and r != NULL:
        r.batch = <unsigned char*>malloc(<size_t>RUN_EXTENT * VC_PAGE_SIZE)
    if run == NULL or r == NULL or r.batch == NULL:
        if r != NULL:
            free(r.batch)
        free(r)
        free(run)
        vc_fail(err, VC_E_NOMEM, "out of memory starting a bulk load")
        return NULL
    run.impl = r
    run.pager = p
    r.pub = run
    r.m.p = p
    r.m.err = err
    r.m.run = r
    if vc_pager_hold(p, &run.pages, err) < 0:
        free(r.batch)
        free(r)
        free(run)
        return NULL
    return run


cdef int vc_run_add(vc_run* run, const unsigned char* key, uint32_t klen,
                    const unsigned char* value, uint32_t vlen, vc_err* err) noexcept nogil:
    cdef runimpl* r = <runimpl*>run.impl
    cdef unsigned char* e
    cdef uint32_t size, first = 0
    cdef bint ovf = 8 + klen + vlen > VC_INLINE_MAX
    if run.nkeys and vc_key_cmp(key, klen, run.last, run.lastlen) == 0:
        # the same key again: the last wins.  Its entry is the last one of the leaf being
        # packed (a leaf is finished only when the entry after it does not fit)
        if r.cur == NULL or r.cur_count == 0:
            return 1
        e = r.cur + r.cur_off
        if ld16(e + 2) & VC_ENT_OVERFLOW:
            # its overflow pages are free again (no reader saw them); ids taken after them
            # (an extent) move down in pages
            vc_pager_release_held(r.m.p, &run.pages, r.ovf_at, r.ovf_n)
            if r.ext_at > r.ovf_at:
                r.ext_at -= r.ovf_n
            r.cur_off += 12 + ld16(e)
        else:
            r.cur_off += 8 + ld16(e) + ld32(e + 4)
        r.cur_count -= 1
        run.nkeys -= 1
    r.m.err = err
    r.ovf_n = 0
    if ovf:
        r.ovf_at = run.pages.len
        if write_overflow(&r.m, value, vlen, &first) < 0:
            return -1
        r.ovf_n = run.pages.len - r.ovf_at
        size = 12 + klen
    else:
        size = 8 + klen + vlen
    if r.cur != NULL and VC_HDR_SIZE + 2 * (r.cur_count + 1) + size > r.cur_off:
        if run_leaf_close(r, err) < 0:
            return -1
    if r.cur == NULL and run_leaf_open(r, err) < 0:
        return -1
    r.cur_off -= size
    e = r.cur + r.cur_off
    st16(e, <uint16_t>klen)
    st32(e + 4, vlen)
    if ovf:
        st16(e + 2, VC_ENT_OVERFLOW)
        st32(e + 8, first)
        memcpy(e + 12, key, klen)
    else:
        st16(e + 2, 0)
        memcpy(e + 8, key, klen)
        if vlen:
            memcpy(e + 8 + klen, value, vlen)
    st16(r.cur + VC_HDR_SIZE + 2 * r.cur_count, <uint16_t>r.cur_off)
    r.cur_count += 1
    if run.nkeys == 0:
        memcpy(run.lo, key, klen)
        run.lolen = klen
    memcpy(run.last, key, klen)
    run.lastlen = klen
    run.nkeys += 1
    return 0


cdef int vc_run_finish(vc_run* run, vc_err* err) noexcept nogil:
    cdef runimpl* r = <runimpl*>run.impl
    if r.cur != NULL and r.cur_count > 0 and run_leaf_close(r, err) < 0:
        return -1
    if run_flush_batch(r, err) < 0:
        return -1
    # the extent's unused tail goes back at once
    if r.ext_next < r.ext_end:
        vc_pager_release_held(r.m.p, &run.pages, r.ext_at, r.ext_end - r.ext_next)
    r.ext_next = r.ext_end
    return 0


cdef void vc_run_free(vc_run* run, bint release) noexcept nogil:
    cdef runimpl* r
    if run == NULL:
        return
    r = <runimpl*>run.impl
    if release:
        vc_pager_release_held(run.pager, &run.pages, 0, run.pages.len)
    vc_pager_unhold(run.pager, &run.pages)
    kidvec_free(&r.kids)
    free(r.m.sbuf)
    free(r.m.soff)
    free(r.batch)
    free(r)
    vc_u32vec_free(&run.pages)
    vc_u32vec_free(&run.leaves)
    vc_u32vec_free(&run.crcs)
    free(run)


cdef int splice_emit(mctx* m, size_t j, kidvec* out) noexcept nogil:
    """ops[0] of a splice (the run's first key) is where the run's leaves go: after what
    the stream holds.  ops[1] (its last key) adds nothing."""
    cdef runimpl* r
    cdef size_t i
    if j != 0:
        return 0
    r = <runimpl*>m.splice.impl
    if stream_flush(m, out) < 0:
        return -1
    for i in range(r.kids.len):
        if kid_push(m, out, r.kids.items[i].key, r.kids.items[i].klen, r.kids.items[i].pid) < 0:
            return -1
    memcpy(m.prev_key, m.splice.last, m.splice.lastlen)
    m.prev_klen = m.splice.lastlen
    m.has_prev = True
    return 0


cdef int vc_tree_splice(vc_pager* p, uint32_t root, uint32_t height, vc_run* run,
                        uint32_t* new_root, uint32_t* new_height, vc_u32vec* allocs,
                        vc_u32vec* freed, vc_err* err) noexcept nogil:
    cdef mctx* m = <mctx*>calloc(1, sizeof(mctx))
    cdef vc_op marks[2]
    cdef size_t a0 = allocs.len, f0 = freed.len
    cdef int rc
    if m == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory in a bulk load")
    if run.nkeys == 0:
        free(m)
        new_root[0] = root
        new_height[0] = height
        return 0
    marks[0].key = run.lo
    marks[0].klen = run.lolen
    marks[0].value = run.lo
    marks[0].vlen = 0
    marks[1].key = run.last
    marks[1].klen = run.lastlen
    marks[1].value = run.last
    marks[1].vlen = 0
    m.p = p
    m.err = err
    m.ops = marks
    m.splice = run
    m.track = True
    m.allocs = allocs
    m.freed = freed
    rc = tree_merge(m, root, height, 2 if run.nkeys > 1 else 1, new_root, new_height)
    if rc < 0:
        # nothing was published: the pages it wrote are free again, the ones it would
        # have replaced stay the tree's
        vc_pager_release_held(p, allocs, a0, allocs.len - a0)
        freed.len = f0
    free(m.sbuf)
    free(m.soff)
    free(m)
    return rc


cdef int vc_run_scan(vc_pager* p, const uint32_t* leaves, const uint32_t* crcs, size_t n,
                     vc_run_entry_fn fn, void* ctx, vc_err* err) noexcept nogil:
    cdef unsigned char* page = <unsigned char*>malloc(VC_PAGE_SIZE)
    cdef vc_buf ovf
    cdef leaf_ent e
    cdef size_t i
    cdef uint32_t k
    cdef int rc = 0
    memset(&ovf, 0, sizeof(ovf))
    memset(&e, 0, sizeof(e))
    if page == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory reading a bulk load")
    for i in range(n):
        rc = vc_page_read_raw(p, leaves[i], page, err)
        if rc == 0 and crcs != NULL and p.fd >= 0 and hdr(page).crc != crcs[i]:
            rc = vc_fail(err, VC_E_CORRUPT, "%s: page %u: not the leaf the log names (checksum "
                         "%08x, logged %08x)", p.path, leaves[i], hdr(page).crc, crcs[i])
        if rc == 0:
            rc = node_check(p, page, leaves[i], VC_PAGE_LEAF, 0, err)
        k = 0
        while rc == 0 and k < hdr(page).count:
            rc = leaf_get(p, page, leaves[i], k, &e, err)
            if rc == 0 and e.ovf != 0:
                rc = read_overflow_x(p, e.ovf, e.vlen, &ovf, True, err)
                e.value = ovf.data
            if rc == 0:
                rc = fn(ctx, e.key, e.klen, e.value, e.vlen, err)
            k += 1
        if rc < 0:
            break
    vc_buf_free(&ovf)
    free(page)
    return rc


# ---------------------------------------------------------------- check

cdef struct cctx:
    vc_pager* p
    vc_buf* report
    vc_err* err
    uint8_t* seen                # one byte per page: 0 unseen, 1 tree, 2 free
    long problems
    uint64_t keys


cdef void problem(cctx* c, const char* text) noexcept nogil:
    cdef size_t n = 0
    c.problems += 1
    if c.problems > MAX_PROBLEMS:
        return
    while text[n] != 0:
        n += 1
    if vc_buf_reserve(c.report, c.report.len + n + 2) < 0:
        return
    memcpy(c.report.data + c.report.len, text, n)
    c.report.data[c.report.len + n] = 10   # newline
    c.report.len += n + 1


cdef bint mark(cctx* c, uint32_t pid, uint8_t how) noexcept nogil:
    cdef char msg[200]
    if pid < 2 or pid >= c.p.page_count:
        snprintf(msg, sizeof(msg), "page %u is outside the file (page count %u)", pid, c.p.page_count)
        problem(c, msg)
        return False
    if c.seen[pid] != 0:
        snprintf(msg, sizeof(msg), "page %u is used twice (%s and %s)", pid,
                 "tree" if c.seen[pid] == 1 else "freelist", "tree" if how == 1 else "freelist")
        problem(c, msg)
        return False
    c.seen[pid] = how
    return True


cdef int check_overflow(cctx* c, uint32_t first, uint32_t vlen, uint32_t owner) noexcept nogil:
    cdef unsigned char page[VC_PAGE_SIZE]
    cdef uint32_t npages = (vlen + OVF_DATA - 1) // OVF_DATA
    cdef uint32_t k, pid = first
    cdef char msg[600]
    cdef vc_err e2
    for k in range(npages):
        if not mark(c, pid, 1):
            return 0
        e2.code = 0
        if vc_page_read_into(c.p, pid, page, &e2) < 0:
            snprintf(msg, sizeof(msg), "overflow page %u (value in leaf %u): %s", pid, owner, e2.msg)
            problem(c, msg)
            return 0
        if hdr(page).type != VC_PAGE_OVERFLOW:
            snprintf(msg, sizeof(msg), "page %u: expected an overflow page (value in leaf %u)", pid, owner)
            problem(c, msg)
            return 0
        pid = hdr(page).aux
    if pid != 0:
        snprintf(msg, sizeof(msg), "overflow chain of a value in leaf %u is longer than its value", owner)
        problem(c, msg)
    return 0


cdef int check_node(cctx* c, uint32_t pid, uint32_t level, const unsigned char* lo, uint32_t lolen,
                    const unsigned char* hi, uint32_t hilen) noexcept nogil:
    cdef const unsigned char* page
    cdef uint32_t handle, i, n, child, kl, pkl = 0
    cdef const unsigned char* k
    cdef const unsigned char* pk = NULL
    cdef const unsigned char* clo
    cdef const unsigned char* chi
    cdef uint32_t clolen, chilen
    cdef leaf_ent e
    cdef char msg[600]
    cdef vc_err e2
    e2.code = 0
    if not mark(c, pid, 1):
        return 0
    if vc_page_get(c.p, pid, &page, &handle, &e2) < 0:
        snprintf(msg, sizeof(msg), "%s", e2.msg)
        problem(c, msg)
        return 0
    if node_check(c.p, page, pid, VC_PAGE_LEAF if level == 0 else VC_PAGE_BRANCH, <int>level, &e2) < 0:
        snprintf(msg, sizeof(msg), "%s", e2.msg)
        problem(c, msg)
        vc_page_release(c.p, handle)
        return 0
    if level == 0:
        n = hdr(page).count
        if n == 0:
            snprintf(msg, sizeof(msg), "leaf %u is empty", pid)
            problem(c, msg)
        for i in range(n):
            if leaf_get(c.p, page, pid, i, &e, &e2) < 0:
                snprintf(msg, sizeof(msg), "%s", e2.msg)
                problem(c, msg)
                break
            if pk != NULL and vc_key_cmp(pk, pkl, e.key, e.klen) >= 0:
                snprintf(msg, sizeof(msg), "leaf %u: keys out of order at entry %u", pid, i)
                problem(c, msg)
            if (lo != NULL and vc_key_cmp(e.key, e.klen, lo, lolen) < 0) or \
               (hi != NULL and vc_key_cmp(e.key, e.klen, hi, hilen) >= 0):
                snprintf(msg, sizeof(msg), "leaf %u: entry %u lies outside its parent's separators", pid, i)
                problem(c, msg)
            if e.ovf != 0:
                check_overflow(c, e.ovf, e.vlen, pid)
            pk = e.key
            pkl = e.klen
            c.keys += 1
    else:
        n = hdr(page).count + 1
        for i in range(n):
            clo = lo
            clolen = lolen
            if i > 0:
                if branch_sep(c.p, page, pid, i - 1, &clo, &clolen, &child, &e2) < 0:
                    snprintf(msg, sizeof(msg), "%s", e2.msg)
                    problem(c, msg)
                    break
                if pk != NULL and vc_key_cmp(pk, pkl, clo, clolen) >= 0:
                    snprintf(msg, sizeof(msg), "branch %u: separators out of order at %u", pid, i)
                    problem(c, msg)
                if (lo != NULL and vc_key_cmp(clo, clolen, lo, lolen) < 0) or \
                   (hi != NULL and vc_key_cmp(clo, clolen, hi, hilen) >= 0):
                    snprintf(msg, sizeof(msg), "branch %u: separator %u outside its parent's range", pid, i)
                    problem(c, msg)
                pk = clo
                pkl = clolen
            else:
                child = hdr(page).aux
            chi = hi
            chilen = hilen
            if i + 1 < n:
                if branch_sep(c.p, page, pid, i, &chi, &chilen, &kl, &e2) < 0:
                    snprintf(msg, sizeof(msg), "%s", e2.msg)
                    problem(c, msg)
                    break
            check_node(c, child, level - 1, clo, clolen, chi, chilen)
    vc_page_release(c.p, handle)
    return 0


cdef long vc_tree_check(vc_pager* p, uint32_t root, uint32_t height, vc_buf* report,
                        uint64_t* nkeys, vc_err* err) noexcept nogil:
    cdef cctx c
    cdef size_t i, j
    cdef uint32_t pid
    cdef char msg[200]
    cdef uint64_t missing = 0
    c.p = p
    c.report = report
    c.err = err
    c.problems = 0
    c.keys = 0
    c.seen = <uint8_t*>calloc(p.page_count + 1, 1)
    if c.seen == NULL:
        return vc_fail(err, VC_E_NOMEM, "out of memory checking %u pages", p.page_count)
    if root != 0:
        if height == 0 or height > VC_MAX_HEIGHT:
            problem(&c, "meta: bad tree height")
        else:
            check_node(&c, root, height - 1, NULL, 0, NULL, 0)
    # free space: reusable, waiting for readers, freed by a running checkpoint, freelist pages
    for i in range(p.free_now.len):
        mark(&c, p.free_now.items[i], 2)
    for i in range(p.freed_cur.len):
        mark(&c, p.freed_cur.items[i], 2)
    for i in range(p.npending):
        for j in range(p.pending[i].pages.len):
            mark(&c, p.pending[i].pages.items[j], 2)
    for i in range(p.nheld):
        for j in range(p.held[i].len):
            mark(&c, p.held[i].items[j], 2)
    for i in range(p.chain_pages.len):
        mark(&c, p.chain_pages.items[i], 2)
    for pid in range(2, p.page_count):
        if c.seen[pid] == 0:
            missing += 1
    if missing:
        snprintf(msg, sizeof(msg), "%llu pages are neither in the tree nor free (leaked)",
                 <unsigned long long>missing)
        problem(&c, msg)
    free(c.seen)
    nkeys[0] = c.keys
    return c.problems

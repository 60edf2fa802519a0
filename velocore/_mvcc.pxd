# MVCC core: arenas, skip-list memtables with version chains, transactions, snapshot
# visibility, first-committer-wins validation, commit, checkpoint, recovery, iterators.
#
# Keys are composite (4-byte big-endian table id + user key, see _btree.pxd).  Table 0 is
# the catalog: b"N" + name -> table id, b"C" -> next table id, b"D" + id -> drop marker
# (consumed by the next checkpoint, which removes the dropped table's key range).
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from velocore._common cimport vc_err, vc_buf, pthread_mutex_t, pthread_cond_t, pthread_rwlock_t, pthread_t
from velocore._pager cimport vc_pager
from velocore._btree cimport vc_cursor, vc_lookup, vc_run
from velocore._wal cimport vc_wal

cdef enum:
    VC_PUT = 1              # version kinds
    VC_DEL = 2
    VC_CHECK = 3            # write set only: validate at commit, write nothing
    VC_INGEST = 4           # log only: a bulk load's leaves, by page id and checksum
    VC_BULK_AFTER = 4096    # ascending single puts after which the next may start a bulk load
    VC_SL_MAX = 20          # skip-list levels
    VC_GROUP = 64           # keys of a batch searched in one call (vc_txn_group_fingers)
    VC_GROUP_SLOTS = 16     # of them, searched at once
    VC_FINGER_NEAR = 3      # a finger within this level's reach needs no group search
    VC_TXN_ACTIVE = 0
    VC_TXN_ENDED = 1
    VC_CATALOG_DROP = 0x44  # 'D'

cdef enum:
    VC_TS_PENDING = 0       # commit_ts of a version whose transaction has not committed

cdef enum:
    VC_GC_CLASS = 32        # free-list size classes of pruned versions: 32-byte steps
    VC_GC_SMALL_MAX = 2048  # versions bigger than this are malloc'ed one by one
    VC_GC_CLASSES = 65      # VC_GC_SMALL_MAX / VC_GC_CLASS + 1
    VC_GC_SNAPS = 64        # distinct live snapshots a GC round publishes (the oldest ones;
                            # versions above the last of them are all kept)

cdef struct vc_arena_chunk:
    vc_arena_chunk* next    # older chunk
    size_t size             # usable bytes after the header
    size_t used
    size_t mapped           # bytes mmap'ed (0: from malloc)
    size_t ahead            # in a pool: 1 if the pool's filler mapped it, 0 if an arena
                            # used it before

cdef struct vc_chunk_pool:  # a store's spare arena chunks: 2 MiB mappings, still backed
    pthread_mutex_t lock
    vc_arena_chunk* head    # the spare chunks, poisoned under ASan past their header (lock)
    size_t count            # chunks in the list (lock)
    size_t inuse            # mapped chunks held by live arenas that use the pool (lock)
    size_t cap              # most ever kept: a memtable's chunks at 4x checkpoint_bytes
    uint64_t taken          # chunks taken from the list instead of mapped (lock)
    uint64_t reused         # of those, chunks a retired memtable used before (lock)
    uint64_t mapped_ahead   # chunks the filler mapped (lock)
    # the filler: a thread that maps chunks ahead of the writers (pool_fill_main)
    pthread_t filler
    bint filler_running
    pthread_cond_t fill_cond    # wakes the filler (lock)
    int fill_want           # a writer took a chunk: top the list up (lock)
    int fill_stop           # close asks the filler to exit (lock)

cdef struct vc_arena:
    vc_arena_chunk* head    # chunk being filled (atomic); freed all at once
    size_t bytes            # total bytes obtained from malloc
    pthread_mutex_t lock    # taken only to add a chunk (shared memtables)
    vc_chunk_pool* pool     # where its mapped chunks come from and go back to (NULL: none)

cdef struct vc_version:
    uint64_t commit_ts      # VC_TS_PENDING until its txn commits, then the commit ts;
                            # VC_TS_ABORTED if its txn ended without it (atomic)
    uint64_t owner          # id of the writing transaction (0: recovered from the log);
                            # once unlinked by the GC and deferred: the tag it waits for
    vc_version* older       # next older version; set before publication, later only moved
                            # down the chain (or to NULL) by the GC (release store, acquire load)
    const unsigned char* value   # copy right after the header; NULL for VC_DEL / VC_CHECK
    vc_version* shared      # write set only: the pending version installed in a memtable;
                            # memtable versions pruned by the GC: the free-list / deferred link
    vc_memtable* shared_mem # write set only: the memtable holding `shared`
    uint32_t vlen
    uint8_t kind            # VC_PUT / VC_DEL / VC_CHECK

cdef struct vc_memtable

cdef struct vc_node

cdef struct vc_link:        # one level of a node's tower
    vc_node* node           # the next node at this level, published with a release store
    uint64_t kp             # a lower bound of that node's kprefix (UINT64_MAX after the
                            # last node): most searches stop at a link without loading
                            # the node.  Only ever lowered once the link can be read
                            # (vc_min_u64_relaxed before the CAS that links a node)

cdef struct vc_node:          # followed by its tower (sl_tower: `height` vc_links), then its key
    vc_version* versions    # newest first; published with a release store
    unsigned char* key
    uint32_t klen
    uint32_t height
    uint64_t kprefix        # first 8 key bytes, big-endian, zero-padded: most comparisons
                            # of a search end here, without reading the key itself

cdef extern from "vc_bloom.h" nogil:
    ctypedef struct vc_bloom:   # blocked Bloom filter of a shared memtable's keys
        uint64_t* words
        uint64_t block_mask

cdef struct vc_bigblk:      # header of a version bigger than VC_GC_SMALL_MAX (shared memtables)
    vc_bigblk* prev         # the memtable's list of them (arena.lock), freed with it
    vc_bigblk* next
    size_t size             # bytes after this header
    size_t pad

cdef struct vc_mindex:      # a sorted sample of a shared memtable's tall nodes (mindex_build)
    uint32_t n              # entries
    uint64_t* kp            # their key prefixes, ascending
    vc_node** node
    uint32_t* up            # the nearest earlier entry with a taller tower, MINDEX_NONE if none
    uint8_t* height         # their tower heights

cdef struct vc_memtable:   # 64-byte aligned (mem_new)
    # -- first cache line: what every point read looks at, written (almost) never, so a
    #    reader beside a busy writer does not keep losing it to the writer's counters
    vc_node* head           # sentinel with VC_SL_MAX links
    vc_bloom bloom          # shared memtables: "certainly absent" for point reads
    vc_bloom bloom_small    # the same keys in 32 KiB: stays in cache while the memtable
                            # is small (saturates on a big one; `bloom` then decides)
    int height              # levels in use (read relaxed by readers; rises rarely)
    int nonempty            # set once, by the first node linked (relaxed; read per get)
    bint shared             # written by many threads (concurrent inserts, locked arena)
    uint32_t rng            # xorshift state for tower heights (private memtables only)
    uint64_t gen            # creation order (the line is 64 bytes: 8+16+16+4+4+4+4+8)
    # -- from here on: written by writers
    vc_arena arena          # shared memtables: arena.bytes also counts big versions
    uint64_t max_ts         # newest commit_ts installed (commit lock)
    uint64_t nkeys          # nodes
    uint64_t dead           # nodes that may hold nothing live: +1 for an aborted version
                            # withdrawn with only aborted ones under it (it is marked), -1
                            # when a write unlinks a marked one (atomic, relaxed; read as
                            # signed: see checkpoint_due)
    uint64_t nversions      # versions linked in chains (installed minus pruned; atomic)
    uint64_t retired_version  # tree version that folded it in; 0 while live
    vc_memtable* older      # the store's list of live memtables, newest first
    int inflight            # writers installing right now (freeze handshake, seq_cst)
    int frozen              # set by a checkpoint: no new installs (seq_cst)
    uint64_t frozen_ts      # the freezing checkpoint's ts (written before `frozen`)
    pthread_mutex_t free_lock   # the free lists and the deferred list
    vc_version* free_heads[VC_GC_CLASSES]   # pruned versions by size class (free_lock;
                                            # peeked with a relaxed load), linked by `shared`
    vc_bigblk* big          # big versions, newest first (arena.lock)
    vc_version* deferred    # versions unlinked by the GC that an older snapshot may still be
    vc_version* deferred_tail   # walking past: oldest first, linked by `shared`, each
                                # freed once the GC horizon reaches its tag (free_lock)
    uint64_t ndeferred      # on that list (atomic)
    uint64_t deferred_tag   # tag of the oldest deferred version, 0 if none (relaxed peek)
    vc_mindex* index        # shared memtables: published with a release store, immutable,
                            # in the arena (freed with the memtable); NULL until big enough
    uint64_t index_next     # nkeys at which a writer builds the next one (relaxed)
    int index_building      # a writer is building one (CAS)

cdef struct vc_finger:       # a writer's last search path in one memtable (finger search)
    vc_memtable* mem        # memtable the path belongs to, NULL when unused
    vc_node* last           # node found or linked by that search
    vc_node* path[VC_SL_MAX]    # its predecessor at every level (all sort before `last`);
                            # a partial path (the top entry NULL) has only the levels up to
                            # the memtable index's: vc_txn_group_fingers' for a node no
                            # taller, used once, by that key's write

cdef struct vc_view:        # what a transaction reads besides its own writes
    uint32_t root           # checkpointed tree
    uint32_t height
    uint64_t tree_version   # bumps with every checkpoint
    vc_memtable* active     # receives new commits
    vc_memtable* frozen     # being folded into the tree by a checkpoint, or NULL
    uint64_t min_snap       # the tree holds a bulk load committed at this ts: a snapshot
                            # that takes this view must be at least as new

cdef struct vc_db

cdef enum:
    VC_NSLOTS = 1024        # lock-free registration slots; more live txns use a locked list

cdef struct vc_slot:        # one cache line per live transaction
    vc_txn* txn             # owner, NULL when free (claimed with a CAS)
    uint64_t tree_version   # the owner's view; 0 while unpublished (seq_cst)
    uint64_t snapshot_ts    # the owner's snapshot_ts + 1; 0 while free or unpublished
                            # (seq_cst: the GC horizon scan, and info())
    uint64_t pad[5]

cdef struct vc_went:        # one write of a transaction while its writes ascend (vc_txn.wa)
    const unsigned char* key    # the memtable node's key, or (VC_CHECK) a copy in ws's arena
    vc_version* shared      # the pending version installed (its kind, value); NULL: VC_CHECK
    vc_memtable* shared_mem # the memtable holding it
    uint32_t klen
    uint32_t kind

cdef struct vc_txn:
    vc_db* db
    uint64_t id             # owner id stamped on its pending versions
    uint64_t snapshot_ts    # sees commits with commit_ts <= this
    vc_view view            # pinned at begin
    vc_memtable* ws         # private write set, NULL until the first write
    vc_went* wa             # while wa_mode: the writes, in ascending key order, one per key
    size_t wa_len           # (ws then holds no nodes, only VC_CHECK keys in its arena); the
    size_t wa_cap           # first write out of order links them all into ws's skip list,
    bint wa_mode            # and ws is used from then on
    uint64_t nwrites        # write-set nodes that are puts or deletes
    uint64_t nchecks        # write-set nodes that are VC_CHECK only
    uint64_t wgen           # bumped by every write (iterators holding a prefetched block re-seek)
    int state               # VC_TXN_ACTIVE / VC_TXN_ENDED
    bint readonly
    bint doomed             # a conflict was reported: can never commit
    vc_slot* slot           # registration slot, or NULL when on the locked overflow list
    vc_txn* prev            # overflow list of live transactions (db.reg_lock)
    vc_txn* next
    vc_finger ws_finger     # last write-set search (sorted writes skip most of the search)
    vc_finger mem_finger    # last shared-memtable search
    vc_buf scratch          # last value read from the tree
    uint64_t page_hits      # pages its gets read without a pin; added to the pager's count
                            # when it ends
    vc_buf payload          # log record being built at commit
    vc_run** runs           # bulk loads (put_many into empty key ranges), ascending and
    size_t nruns            # disjoint, each above every other write; spliced into the
    size_t runs_cap         # tree at commit (vc_txn_bulk_*)
    size_t bulk_tried       # wa_len when a single put last tried to start one

cdef enum:
    VC_PUB_RING = 4096      # commits that may wait at once to become visible (a power of 2)

cdef struct vc_pub:         # commit `ts` is stamped (and copied forward) and may become
    uint64_t ts             # visible once its log record up to `lsn` is durable (0: at once)
    uint64_t lsn

cdef struct vc_runrec:      # a bulk load's key range, for the writers' conflict check
    uint64_t ts             # its commit_ts; 0 while its transaction commits
    uint64_t owner          # the committing transaction's id
    unsigned char* lo       # first and last key (malloc'ed)
    unsigned char* hi
    uint32_t lolen
    uint32_t hilen

cdef struct vc_db:
    vc_pager* pager
    uint64_t iter_pins      # leaves pinned by iterator blocks (atomic); kept under a quarter
                            # of the cache's frames, so many open iterators cannot exhaust it
    vc_wal* wal             # NULL for in-memory stores
    int lock_fd             # flock on LOCK, -1 when none
    int sync_mode
    bint readonly
    int failed              # sticky: a flush or checkpoint failed; writes refused
    char failed_msg[480]
    uint64_t last_ts        # last commit_ts handed out (commit_lock)
    uint64_t visible_ts     # newest commit a new snapshot sees; advances in commit order
    uint64_t next_txn_id    # atomic counter of transaction ids
    pthread_mutex_t vis_lock    # ordered advance of visible_ts, and the ring below
    pthread_cond_t vis_cond     # broadcast when visible_ts advances and vis_waiters > 0
    vc_pub* pub_ring        # VC_PUB_RING commits waiting to become visible, by timestamp
    uint32_t vis_waiters    # threads waiting on vis_cond
    vc_view view            # current view: written under reg_lock inside view_seq
    uint64_t view_seq       # seqlock over view: odd while a publisher writes it
    vc_slot* slots          # VC_NSLOTS registration slots (64-byte aligned)
    vc_memtable* mems       # live memtables, newest first (commit_lock + reg_lock to unlink)
    uint64_t next_gen
    vc_txn* txns            # live transactions that found no free slot (reg_lock)
    uint64_t ntxns          # of those
    bint reclaim_pending    # retired memtables or pages wait for old readers
    uint64_t checkpoint_bytes   # log (or memtable) size that triggers a checkpoint
    uint64_t checkpoint_ts
    uint64_t checkpoints
    double checkpoint_time  # wall clock of the last checkpoint, 0 if none
    uint64_t commits
    uint64_t conflicts
    pthread_mutex_t commit_lock # validation, timestamp, log append, install
    pthread_mutex_t reg_lock    # view, registry
    pthread_mutex_t ckpt_lock   # one checkpoint at a time
    pthread_rwlock_t mems_lock  # shared: writers walking old memtables; exclusive: freeing one
    pthread_t ckpt_thread       # background checkpointer (not for read-only stores)
    bint ckpt_thread_running
    int ckpt_requested          # a committer saw the log pass checkpoint_bytes (ckpt_sig_lock)
    int ckpt_stop               # close asks the checkpointer to exit (ckpt_sig_lock)
    pthread_mutex_t ckpt_sig_lock
    pthread_cond_t ckpt_sig_cond
    # version GC: a round (gc_refresh, one at a time under gc_lock) stores gc_target =
    # visible_ts (seq_cst) before it scans the slots, and a beginning transaction stores
    # its slot's snapshot before it checks gc_target (retrying if it moved past its
    # snapshot): every transaction is either scanned or starts at or after gc_target.
    pthread_mutex_t gc_lock
    uint64_t gc_target      # visible_ts when the latest round began (seq_cst)
    uint64_t gc_seq         # seqlock over the published round below
    uint64_t gc_horizon     # oldest snapshot of any live or future txn (0: no round yet)
    uint64_t gc_live        # visible_ts of the published round: later snapshots start >= it
    uint32_t gc_nsnaps      # gc_snaps[0..n): the smallest distinct live snapshots, ascending
    uint32_t gc_more        # more live snapshots exist above gc_snaps[n-1]
    uint64_t gc_snaps[VC_GC_SNAPS]
    uint64_t versions_pruned    # freed by the GC (atomic)
    vc_chunk_pool chunks    # spare memtable arena chunks (see arena_free)
    # bulk loads: key ranges committed (or committing) outside the memtables, which a
    # writer whose snapshot is older must still conflict with
    pthread_mutex_t run_lock
    vc_runrec* runrecs      # (run_lock)
    int nrunrecs            # (run_lock to change; read seq_cst by writers after installing)
    int runrec_cap
    uint64_t bulk_loads     # runs spliced in (ckpt_lock)
    uint64_t bulk_bytes     # their pages' bytes since the last checkpoint, so not 0 while
                            # the tree differs from the durable meta's by a bulk load
                            # (written under ckpt_lock; read relaxed as a trigger like the
                            # log size)

cdef enum:
    VC_ITER_PINS = 8        # leaves a block of entry references may keep pinned (one more
                            # ends the block)

cdef struct vc_iref:        # one entry of a block filled by vc_iter_fill_refs
    const unsigned char* key    # into a pinned leaf or a memtable node; NULL: the entry
                                # was copied to the spill buffer, key at voff, value after it
    const unsigned char* value  # likewise; NULL: the value alone is in the spill at voff
    size_t voff
    uint32_t klen
    uint32_t vlen

cdef struct vc_iter:
    vc_txn* txn
    bint reverse
    bint done
    bint started
    const unsigned char* key_ref  # the key returned last where it lives (leaf or node)
    uint32_t npins          # leaves pinned for the current block (vc_iter_fill_refs)
    uint32_t pins[VC_ITER_PINS + 1]
    unsigned char lo[1032]  # composite bounds: lo <= key < hi (room for a longest key
    uint32_t lolen          # plus one byte: a restart after key k begins at k + "\0")
    unsigned char hi[1032]
    uint32_t hilen
    vc_memtable* mem[3]     # write set, active, frozen (NULL when absent)
    vc_node* node[3]        # each source's current node
    vc_cursor tree
    unsigned char cur[1028] # key returned last
    uint32_t curlen
    const unsigned char* value  # value returned last (valid until the next step)
    size_t vlen
    bint from_tree          # the entry returned last came from the tree cursor

cdef int vc_db_open(vc_db** out, const char* path, bint readonly, int sync_mode, size_t cache_bytes,
                    uint64_t checkpoint_bytes, vc_err* err) noexcept nogil
cdef void vc_db_close(vc_db* db) noexcept nogil
cdef int vc_db_checkpoint(vc_db* db, bint only_if_due, vc_err* err) noexcept nogil
cdef long vc_db_check(vc_db* db, vc_buf* report, uint64_t* nkeys, vc_err* err) noexcept nogil

cdef int vc_txn_begin(vc_db* db, bint readonly, vc_txn** out, vc_err* err) noexcept nogil
cdef int vc_txn_commit(vc_txn* t, vc_err* err) noexcept nogil
cdef void vc_txn_abort(vc_txn* t) noexcept nogil
cdef void vc_txn_free(vc_txn* t) noexcept nogil
cdef int vc_txn_get(vc_txn* t, const unsigned char* key, uint32_t klen, const unsigned char** value,
                    size_t* vlen, vc_err* err) noexcept nogil
# Batched reads: a vc_lookup (from vc_txn_lookup_init, closed with vc_lookup_close) keeps
# the last tree leaf pinned, so keys read in ascending order share leaves.  *value stays
# valid until the next call with the same lookup, or its close.
cdef void vc_txn_lookup_init(vc_txn* t, vc_lookup* lk) noexcept nogil
cdef int vc_txn_get_lk(vc_txn* t, vc_lookup* lk, const unsigned char* key, uint32_t klen,
                       const unsigned char** value, size_t* vlen, vc_err* err) noexcept nogil
cdef int vc_txn_write(vc_txn* t, const unsigned char* key, uint32_t klen, const unsigned char* value,
                      uint32_t vlen, int kind, vc_err* err) noexcept nogil
# Withdrawing a run of ascending writes again (put_many's, when a later item is bad):
# vc_txn_savepoint is True, with *sp set, if the writes from key on can be withdrawn by
# vc_txn_rollback(t, *sp) while they ascend; vc_txn_rollback is -1 if they no longer can.
cdef bint vc_txn_savepoint(vc_txn* t, const unsigned char* key, uint32_t klen,
                           size_t* sp) noexcept nogil
cdef int vc_txn_rollback(vc_txn* t, size_t sp) noexcept nogil
# a hint before a write (write=True) or read of key: the memtable key filter's block it needs
cdef void vc_txn_prefetch_key(vc_txn* t, const unsigned char* key, uint32_t klen,
                              bint write) noexcept nogil
# Fingers for up to VC_GROUP ascending keys about to be written, searched together (their
# cache misses overlap); 0 if the writer's finger already covers them.  Copy out[i] to
# t.mem_finger just before writing key i.
cdef int vc_txn_group_fingers(vc_txn* t, const unsigned char** keys, const uint32_t* klens,
                              int n, vc_finger* out) noexcept nogil

cdef int vc_iter_init(vc_iter* it, vc_txn* t, const unsigned char* lo, uint32_t lolen,
                      const unsigned char* hi, uint32_t hilen, bint reverse, vc_err* err) noexcept nogil
# VC_OK: it.cur / it.value hold the next entry; VC_NOTFOUND: exhausted.
cdef int vc_iter_next(vc_iter* it, vc_err* err) noexcept nogil
cdef void vc_iter_close(vc_iter* it) noexcept nogil
# Up to max_entries entries as references (no copy of keys or values): the leaves they lie
# in stay pinned until the next fill, vc_iter_unpin or close.  Overflow values are copied to
# spill, and so are whole entries of leaves it cannot pin (the store's iterator pins at their
# cap).  The block ends early once VC_ITER_PINS + 1 leaves are pinned.  The references stay
# valid while the transaction lives and writes nothing (its own writes may replace them).
cdef int vc_iter_fill_refs(vc_iter* it, vc_iref* out, size_t max_entries, vc_buf* spill,
                           bint keys_only, size_t* count, vc_err* err) noexcept nogil
cdef void vc_iter_unpin(vc_iter* it) noexcept nogil

cdef void vc_db_stats(vc_db* db, uint64_t* out) noexcept nogil

# Bulk loads.  vc_txn_bulk_begin: 1 if t can load keys from key on as a run of leaves built
# outside the tree (the write set holds only smaller keys, and key is absent from the
# snapshot, which is then searched for the next key it holds: the run must stay below it),
# and a run is started; 0 if not (write normally).  vc_txn_bulk_add: 0, or 1 if key cannot
# join the run (not above its last key, or not below that limit): write it normally.
# last (or NULL): the call's last key, if known; 0 when it is not above key or the range
# ends before it.  vc_txn_bulk_drop: withdraw the last run (a bad item in its call).  The transaction's
# reads of keys inside a run, and its writes into one, first turn its runs into ordinary
# writes (vc_txn_bulk_settle); commit splices them into the tree.
cdef int vc_txn_bulk_begin(vc_txn* t, const unsigned char* key, uint32_t klen,
                           const unsigned char* last, uint32_t lastlen, vc_err* err) noexcept nogil
cdef int vc_txn_bulk_add(vc_txn* t, const unsigned char* key, uint32_t klen,
                         const unsigned char* value, uint32_t vlen, vc_err* err) noexcept nogil
cdef void vc_txn_bulk_drop(vc_txn* t) noexcept nogil
# A single put: 0 if it joined the transaction's last bulk load (or, after VC_BULK_AFTER
# ascending writes, started one), 1 if it must be written as usual, -1 on error.
cdef int vc_txn_bulk_put(vc_txn* t, const unsigned char* key, uint32_t klen,
                         const unsigned char* value, uint32_t vlen, vc_err* err) noexcept nogil
cdef int vc_txn_bulk_settle(vc_txn* t, vc_err* err) noexcept nogil

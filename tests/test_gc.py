"""Incremental version garbage collection.

Old versions of a key are pruned from its chain in the active memtable as new versions
are written, so a hot key does not grow memory between checkpoints, and a long-lived
snapshot keeps the one version it reads (not every version written since it began).
The threaded test checks that every read still sees exactly its snapshot while chains
are pruned under it and checkpoints freeze memtables mid-write.

`checkpoint_mb=4096` keeps checkpoints from running, so what is measured is the GC and
not memtables being folded into the tree.
"""
import os
import random
import subprocess
import sys
import threading
import time

import pytest

import velocore


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def overwrite(store, tbl, key, start, count, size=16):
    for i in range(start, start + count):
        with store.txn() as t:
            t.put(tbl, key, b"%0*d" % (size, i))


@pytest.mark.parametrize("where", ["disk", "memory"])
def test_hot_key_memory_is_bounded(tmp_path, where):
    path = tmp_path / "db" if where == "disk" else None
    store = velocore.open(path, sync="off", checkpoint_mb=4096)
    try:
        tbl = store.table("t")
        overwrite(store, tbl, b"hot", 0, 20_000)
        info = store.info()
        mem_early, rss_early = info["memtable_bytes"], rss_bytes()
        overwrite(store, tbl, b"hot", 20_000, 180_000)
        info = store.info()
        assert info["checkpoints"] == 0
        assert info["versions_retained"] < 1000, info
        assert info["versions_pruned"] > 190_000, info
        # 180k more versions of ~80 bytes would be ~14 MB: none of it may stay
        assert info["memtable_bytes"] - mem_early < 256 * 1024, (mem_early, info["memtable_bytes"])
        assert rss_bytes() - rss_early < 8 * 1024 * 1024
        assert tbl.get(b"hot") == b"%016d" % 199_999
    finally:
        store.close()


def test_hot_key_large_values_are_freed(tmp_path):
    store = velocore.open(tmp_path / "db", sync="off", checkpoint_mb=4096)
    try:
        tbl = store.table("t")
        big = os.urandom(100_000)
        for i in range(2_000):                       # 200 MB written, one value live
            with store.txn() as t:
                t.put(tbl, b"big", b"%06d" % i + big)
        info = store.info()
        assert info["versions_retained"] < 1000, info
        assert info["memtable_bytes"] < 80 * 1024 * 1024, info
        assert tbl.get(b"big") == b"%06d" % 1999 + big
    finally:
        store.close()


@pytest.mark.parametrize("committed_first", [False, True])
def test_aborted_writes_do_not_pile_up(tmp_path, committed_first):
    """Transaction after transaction writes one key and aborts (a retry loop on a hot
    key): each write unlinks the aborted versions under it, so the chain stays short
    (reads and writes of the key do not walk them all), and once the transactions live
    at the unlink have ended a later write frees them."""
    store = velocore.open(tmp_path / "db", sync="off", checkpoint_mb=4096)
    try:
        tbl = store.table("t")
        if committed_first:
            tbl.put(b"hot", b"committed")
        before = store.info()
        for i in range(20_000):
            t = store.txn()
            t.put(tbl, b"hot", b"aborted %d" % i)
            t.abort()
        info = store.info()
        assert info["checkpoints"] == 0
        assert info["versions_retained"] - before["versions_retained"] < 10, info
        assert tbl.get(b"hot") == (b"committed" if committed_first else None)
        # commits move visible_ts on and run GC rounds; then a write of the key frees
        # what the aborted writes left behind
        for i in range(300):
            tbl.put(b"other %d" % i, b"x")
        tbl.put(b"hot", b"last")
        info = store.info()
        assert info["versions_deferred"] < 100, info
        assert info["versions_pruned"] - before["versions_pruned"] >= 19_900, info
        assert tbl.get(b"hot") == b"last"
    finally:
        store.close()


@pytest.mark.parametrize("in_order", [True, False])
def test_rewrites_in_one_transaction_do_not_pile_up(tmp_path, in_order):
    """A transaction writing one key over and over leaves one pending version in the
    memtable's chain, not one per write (in both forms of its write set: writes in key
    order, and any order)."""
    store = velocore.open(tmp_path / "db", sync="off", checkpoint_mb=4096)
    try:
        tbl = store.table("t")
        tbl.put(b"k", b"before")
        before = store.info()
        t = store.txn()
        if not in_order:
            t.put(tbl, b"z", b"1")
            t.put(tbl, b"a", b"1")
        for i in range(20_000):
            t.put(tbl, b"k", b"%d" % i)
        assert store.info()["versions_retained"] - before["versions_retained"] < 10
        assert tbl.get(b"k") == b"before"
        t.commit()
        assert tbl.get(b"k") == b"19999"
    finally:
        store.close()


def wait_for(cond, seconds=30):
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def rewrite_every(store, tbl, prefix, n, step, old, new):
    """Overwrite every step-th of the n keys prefix + "%07d" (all holding `old`) with
    `new` in one transaction, and check that the whole range reads back so."""
    with store.txn() as t:
        t.put_many(tbl, ((prefix + b"%07d" % i, new) for i in range(0, n, step)))
    got = dict(tbl.range(prefix, prefix[:-1] + bytes([prefix[-1] + 1])))
    assert len(got) == n
    assert all(v == (new if int(k[len(prefix):]) % step == 0 else old)
               for k, v in got.items())


def put_random_batch(store, tbl, rng, model, klen, vmin, vmax, n=2_000):
    """One put_many of n random keys of klen bytes, values of vmin..vmax-1 bytes; the
    model dict follows."""
    batch = {rng.randbytes(klen): rng.randbytes(rng.randrange(vmin, vmax)) for _ in range(n)}
    with store.txn() as t:
        t.put_many(tbl, batch.items())
    model.update(batch)


def memtable_bytes(store):
    with store.snapshot():            # ending a transaction frees retired memtables
        pass
    return store.info()["memtable_bytes"]


@pytest.mark.usefixtures("no_bulk")
@pytest.mark.parametrize("where", ["disk", "memory"])
def test_aborted_transactions_do_not_grow_memory(tmp_path, where):
    """Large write transactions that abort log nothing, yet their nodes and versions stay
    in the memtable until a checkpoint: the memtable's size alone makes one due (at four
    times checkpoint_mb with a log), so memory stays bounded, and nothing committed is
    touched."""
    store = velocore.open(tmp_path / "db" if where == "disk" else None, sync="off",
                          checkpoint_mb=1)
    try:
        tbl = store.table("t")
        tbl.put(b"kept", b"v")
        for r in range(40):           # ~4 MiB of memtable each: 160 MiB if never freed
            t = store.txn()
            t.put_many(tbl, ((b"r%03d-%07d" % (r, i), b"v" * 100) for i in range(20_000)))
            t.abort()
        assert wait_for(lambda: memtable_bytes(store) < 24 << 20), store.info()
        assert store.info()["checkpoints"] > 0
        assert [(k, v) for k, v in tbl.range()] == [(b"kept", b"v")]
    finally:
        store.close()


@pytest.mark.usefixtures("no_bulk")
@pytest.mark.parametrize("where", ["disk", "memory"])
def test_retired_memtable_memory_is_reused_within_bounds(tmp_path, where):
    """A checkpoint retires a memtable; its arena's 2 MiB chunks stay backed for the
    memtables after it (info()["memtable_chunks_reused"]) instead of being unmapped and
    mapped (and zeroed) again.  What is spare stays bounded: never more than four times
    checkpoint_mb (plus a chunk), even after a transaction that made a memtable far
    larger, and what is read back is what was written."""
    mb = 2
    cap = 4 * (mb << 20) + (2 << 20)
    store = velocore.open(tmp_path / "db" if where == "disk" else None, sync="off",
                          checkpoint_mb=mb)
    try:
        tbl = store.table("t")
        rng = random.Random(11)
        model = {}
        for i in range(400):    # 60 batches at least; more while the checkpointer lags
            put_random_batch(store, tbl, rng, model, 12, 0, 300)
            assert store.info()["memtable_spare_bytes"] <= cap, store.info()
            if i % 10 == 9:
                # besides the background ones: a checkpoint that finds the new memtable
                # empty when it frees the old one, which a writer outrunning the
                # background checkpointer may never let happen (the pool keeps only what
                # the live memtables lack to grow as large as the one freed)
                store.checkpoint()
            if i >= 59 and store.info()["checkpoints"] >= 5:
                break
        info = store.info()
        assert info["checkpoints"] >= 5, info
        assert info["memtable_chunks_reused"] > 0, info
        # one transaction whose memtable grows far past 4 x checkpoint_mb
        with store.txn() as t:
            t.put_many(tbl, ((b"big%07d" % i, b"v" * 200) for i in range(200_000)))
            assert store.info()["memtable_bytes"] > 4 * cap, store.info()
        store.checkpoint()
        wait_for(lambda: memtable_bytes(store) < cap)
        assert store.info()["memtable_bytes"] < cap, store.info()
        assert store.info()["memtable_spare_bytes"] <= cap, store.info()
        rewrite_every(store, tbl, b"big", 200_000, 7, b"v" * 200, b"w" * 10)
        assert dict(tbl.range(b"a", b"big")) == {k: v for k, v in model.items()
                                                  if b"a" <= k < b"big"}
        for k in rng.sample(sorted(model), 2_000):
            assert tbl.get(k) == model[k]
    finally:
        store.close()


@pytest.mark.usefixtures("no_bulk")
@pytest.mark.parametrize("where", ["disk", "memory"])
def test_growing_memtable_gets_chunks_mapped_ahead(tmp_path, where):
    """A memtable growing chunk by chunk takes 2 MiB chunks the store's filler thread
    mapped ahead (info()["memtable_chunks_mapped_ahead"]), never more spare than the
    pool's bound; once writes stop, the spares go back to the system like a retired
    memtable's; and every write reads back."""
    mb = 64                                   # no checkpoint while the memtable grows
    store = velocore.open(tmp_path / "db" if where == "disk" else None, sync="off",
                          checkpoint_mb=mb)
    try:
        tbl = store.table("t")
        rng = random.Random(5)
        model = {}
        for i in range(40):                   # ~24 MB of memtable: a dozen chunks
            put_random_batch(store, tbl, rng, model, 16, 200, 400)
            assert store.info()["memtable_spare_bytes"] <= 2 * (2 << 20), store.info()
        info = store.info()
        assert info["checkpoints"] == 0, info
        assert info["memtable_bytes"] > 8 * (2 << 20), info
        # (the filler was asked at every chunk taken; on a loaded machine it may answer late)
        assert wait_for(lambda: store.info()["memtable_chunks_mapped_ahead"] > 0, 10), info
        assert wait_for(lambda: store.info()["memtable_spare_bytes"] == 0, 10), store.info()
        assert dict(tbl.items()) == model
        with store.txn() as t:                # and the store writes on
            t.put_many(tbl, ((k, b"w") for k in rng.sample(sorted(model), 1_000)))
    finally:
        store.close()


@pytest.mark.usefixtures("no_bulk")
@pytest.mark.parametrize("where", ["disk", "memory"])
def test_spare_memtable_memory_is_returned_when_idle(tmp_path, where):
    """What a checkpoint leaves spare in the chunk pool goes back to the system once no
    memtable has taken a chunk for a second: an idle store does not keep a retired
    memtable's memory until its next checkpoint or close().  The store works on after."""
    store = velocore.open(tmp_path / "db" if where == "disk" else None, sync="off",
                          checkpoint_mb=8)
    try:
        tbl = store.table("t")
        with store.txn() as t:
            t.put_many(tbl, ((b"k%07d" % i, b"v" * 200) for i in range(100_000)))
        store.checkpoint()
        assert wait_for(lambda: memtable_bytes(store) < (4 << 20), 10), store.info()
        # spare right after the retire (the drain waits a second for takes first)
        spare = store.info()["memtable_spare_bytes"]
        assert spare > 0, store.info()
        assert wait_for(lambda: store.info()["memtable_spare_bytes"] == 0, 10), store.info()
        rewrite_every(store, tbl, b"k", 100_000, 3, b"v" * 200, b"w" * 300)
    finally:
        store.close()


@pytest.mark.parametrize("where", ["disk", "memory"])
def test_aborted_bulk_insert_is_checkpointed_away(tmp_path, where):
    """An aborted transaction that inserted many new keys leaves nodes holding nothing
    live, and every scan through them walks them all: once they are a quarter of the
    memtable, a checkpoint is due and a fresh memtable replaces them."""
    store = velocore.open(tmp_path / "db" if where == "disk" else None, sync="off")
    try:
        tbl = store.table("t")
        with store.txn() as t:
            for i in range(10):
                t.put(tbl, b"k%07d" % (i * 100_000), b"v")
        store.checkpoint()
        before = store.info()["checkpoints"]
        t = store.txn()
        t.put_many(tbl, ((b"k%07d" % i, b"x" * 100) for i in range(1, 1_000_000, 50)))
        t.abort()

        assert wait_for(lambda: memtable_bytes(store) < 2 << 20), store.info()
        assert store.info()["checkpoints"] > before
        assert [k for k, _ in tbl.range()] == [b"k%07d" % (i * 100_000) for i in range(10)]
    finally:
        store.close()


@pytest.mark.usefixtures("no_bulk")
def test_rewrites_do_not_hide_an_aborted_bulk_insert(tmp_path):
    """A transaction rewriting new keys unlinks its own superseded versions, which never
    counted their nodes dead: that must not take anything off the count, or a later
    aborted bulk insert would not make its checkpoint due."""
    store = velocore.open(tmp_path / "db", sync="off")
    try:
        tbl = store.table("t")
        with store.txn() as t:
            for i in range(40_000):
                for v in (b"a", b"b", b"c"):
                    t.put(tbl, b"r%06d" % i, v)
        before = store.info()["checkpoints"]
        t = store.txn()
        t.put_many(tbl, ((b"s%06d" % i, b"x") for i in range(20_000)))
        t.abort()
        assert wait_for(lambda: store.info()["checkpoints"] > before), store.info()
        assert tbl.get(b"r039999") == b"c" and tbl.get(b"s000000") is None
    finally:
        store.close()


def test_aborted_rewrites_of_live_keys_do_not_force_checkpoints(tmp_path):
    """Aborted writes of keys that hold a committed version leave no dead node (their
    versions are unlinked by the next write): they make no checkpoint due."""
    store = velocore.open(tmp_path / "db", sync="off")
    try:
        tbl = store.table("t")
        with store.txn() as t:
            for i in range(100):
                t.put(tbl, b"k%03d" % i, b"v")
        before = store.info()["checkpoints"]
        for r in range(200):
            t = store.txn()
            t.put_many(tbl, ((b"k%03d" % i, b"w") for i in range(100)))
            t.abort()
        time.sleep(0.2)
        assert store.info()["checkpoints"] == before
        assert tbl.get(b"k050") == b"v"
    finally:
        store.close()


def test_aborted_writes_under_readers(tmp_path):
    """Writers that abort, a writer that commits and readers share a few hot keys while
    the aborted versions are unlinked and freed: a reader sees only committed values, in
    order, and each snapshot stays the same."""
    store = velocore.open(tmp_path / "db", sync="off", checkpoint_mb=4096)
    tbl = store.table("t")
    keys = [b"k%d" % i for i in range(4)]
    with store.txn() as t:
        for k in keys:
            t.put(tbl, k, b"c%09d" % 0)
    stop = time.monotonic() + 2.0
    errors = []

    def aborter(seed):
        rng = random.Random(seed)
        while time.monotonic() < stop and not errors:
            t = store.txn()
            try:
                for k in rng.sample(keys, 2):
                    t.put(tbl, k, b"a%09d" % rng.randrange(10**9))
            except velocore.ConflictError:
                pass
            t.abort()

    def committer():
        n = 0
        while time.monotonic() < stop and not errors:
            n += 1
            try:
                with store.txn() as t:
                    for k in keys:
                        t.put(tbl, k, b"c%09d" % n)
            except velocore.ConflictError:
                pass

    def reader():
        last = 0
        while time.monotonic() < stop and not errors:
            with store.snapshot() as s:
                vals = [s.get(tbl, k) for k in keys]
                if any(v[:1] != b"c" for v in vals) or len(set(vals)) != 1:
                    errors.append(("bad snapshot", vals))
                    return
                n = int(vals[0][1:])
                if n < last:
                    errors.append(("went back", last, n))
                last = n
                if [s.get(tbl, k) for k in keys] != vals:
                    errors.append(("snapshot changed", vals))

    threads = [threading.Thread(target=aborter, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=committer)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors[:5]
        # hundreds of thousands of aborted writes: the chains hold a few versions each
        # (what waits to be freed is counted as deferred, not retained)
        info = store.info()
        assert info["versions_retained"] < 1000, info
    finally:
        store.close()


def test_replay_keeps_one_version_per_key(tmp_path):
    """Recovery replays every logged overwrite of a key: only the newest stays."""
    path = tmp_path / "db"
    child = (
        "import os, sys, velocore\n"
        "s = velocore.open(sys.argv[1], sync='off', checkpoint_mb=4096)\n"
        "t = s.table('t')\n"
        "for i in range(30000):\n"
        "    with s.txn() as x:\n"
        "        x.put(t, b'hot', b'%016d' % i)\n"
        "os._exit(0)\n"                  # no close: no checkpoint, the log holds it all
    )
    subprocess.run([sys.executable, "-c", child, str(path)], check=True)
    store = velocore.open(path, sync="off", checkpoint_mb=4096)
    try:
        info = store.info()
        assert info["checkpoints"] == 0
        assert info["versions_retained"] < 10, info
        assert info["versions_pruned"] >= 29_000, info
        assert store.table("t").get(b"hot") == b"%016d" % 29_999
    finally:
        store.close()


def test_long_lived_snapshot_keeps_only_its_version(tmp_path):
    store = velocore.open(tmp_path / "db", sync="off", checkpoint_mb=4096)
    try:
        tbl = store.table("t")
        tbl.put(b"k", b"old")
        tbl.put(b"other", b"x")
        snap = store.snapshot()
        assert snap.get(tbl, b"k") == b"old"
        overwrite(store, tbl, b"k", 0, 100_000)
        info = store.info()
        assert info["checkpoints"] == 0
        assert info["oldest_snapshot_ts"] == snap_ts(store, info)
        assert snap.get(tbl, b"k") == b"old"
        assert snap.get(tbl, b"other") == b"x"
        assert [(k, v) for k, v in snap.range(tbl)] == [(b"k", b"old"), (b"other", b"x")]
        assert info["versions_retained"] < 1000, info
        retained_with_snapshot = info["versions_retained"]
        snap.abort()
        overwrite(store, tbl, b"k", 100_000, 500)      # the next writes prune what it held
        info = store.info()
        assert info["oldest_snapshot_ts"] is None
        assert info["versions_retained"] < retained_with_snapshot
        assert info["versions_deferred"] == 0, info
        assert tbl.get(b"k") == b"%016d" % 100_499
    finally:
        store.close()


def snap_ts(store, info):
    # the snapshot is the only live transaction: its ts is the one info reports
    return info["oldest_snapshot_ts"]


@pytest.mark.parametrize("nsnaps", [20, 100])
def test_snapshots_of_many_ages(tmp_path, nsnaps):
    """Snapshots taken every few hundred writes each keep their own version, in one chain.
    A GC round publishes the 64 oldest distinct snapshots; past that, versions newer than
    the 64th are all kept (so only the reads are checked)."""
    store = velocore.open(tmp_path / "db", sync="off", checkpoint_mb=4096)
    try:
        tbl = store.table("t")
        snaps = []
        step = 20_000 // nsnaps
        for round_ in range(nsnaps):
            overwrite(store, tbl, b"k", round_ * step, step)
            snaps.append((store.snapshot(), b"%016d" % (round_ * step + step - 1)))
        info = store.info()
        if nsnaps <= 64:
            assert info["versions_retained"] < 500, info
        for s, want in snaps:
            assert s.get(tbl, b"k") == want
        for s, want in snaps[::2]:
            s.abort()
        overwrite(store, tbl, b"k", 20_000, 300)
        for s, want in snaps[1::2]:
            assert s.get(tbl, b"k") == want
            assert list(s.range(tbl)) == [(b"k", want)]
            s.abort()
        overwrite(store, tbl, b"k", 20_300, 300)
        info = store.info()
        assert info["versions_retained"] < 500, info
        assert info["versions_deferred"] == 0, info
    finally:
        store.close()


def run_threads(store, seconds, seed):
    """4 writers bump per-key counters; readers check each snapshot's view is one moment.

    Every write transaction increments one key's counter and the global `total` key by
    one, so in any snapshot: each counter is monotone over time, and `total` equals the
    sum of the counters (a snapshot mixing two moments would break that)."""
    tbl = store.table("c")
    keys = [b"k%02d" % i for i in range(8)]
    with store.txn() as t:
        for k in keys:
            t.put(tbl, k, b"0")
        t.put(tbl, b"total", b"0")
    stop = time.monotonic() + seconds
    errors = []
    done = threading.Event()

    def writer(wid):
        rng = random.Random(seed * 100 + wid)
        while time.monotonic() < stop and not errors:
            k = rng.choice(keys)

            def bump(t):
                t.put(tbl, k, b"%d" % (int(t.get(tbl, k)) + 1))
                t.put(tbl, b"total", b"%d" % (int(t.get(tbl, b"total")) + 1))
            try:
                store.retry(bump, attempts=1000)
            except Exception as e:          # pragma: no cover - reported below
                errors.append(("writer", repr(e)))

    def view(s):
        vals = {k: int(s.get(tbl, k)) for k in keys}
        total = int(s.get(tbl, b"total"))
        scanned = {k: int(v) for k, v in s.range(tbl)}
        return vals, total, scanned

    def reader(rid):
        rng = random.Random(seed * 100 + 50 + rid)
        last = {k: 0 for k in keys}
        held = []
        while time.monotonic() < stop and not errors:
            held.append((store.snapshot(), None))
            # keep snapshots of varying age: drop a random one now and then
            if len(held) > rng.randint(1, 6):
                s, first = held.pop(rng.randrange(len(held)))
                s.abort()
            for i, (s, first) in enumerate(held):
                vals, total, scanned = view(s)
                if sum(vals.values()) != total:
                    errors.append(("torn snapshot", vals, total))
                if scanned != {**vals, b"total": total}:
                    errors.append(("range differs from get", scanned, vals, total))
                if first is None:
                    held[i] = (s, (vals, total))
                elif first != (vals, total):
                    errors.append(("snapshot changed", first, (vals, total)))
            newest = held[-1][1][0]
            for k in keys:
                if newest[k] < last[k]:
                    errors.append(("counter went back", k, last[k], newest[k]))
            last = newest
            time.sleep(rng.random() * 0.002)
        for s, _ in held:
            s.abort()

    def checkpointer():
        while time.monotonic() < stop and not errors:
            time.sleep(0.05)
            try:
                store.checkpoint()
            except Exception as e:          # pragma: no cover
                errors.append(("checkpoint", repr(e)))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=checkpointer))
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:5]
    with store.snapshot() as s:
        vals = {k: int(s.get(tbl, k)) for k in keys}
        assert sum(vals.values()) == int(s.get(tbl, b"total"))
    info = store.info()
    assert info["versions_pruned"] > 0, info
    return info


@pytest.mark.parametrize("where", ["disk", "memory"])
def test_threads_snapshots_and_checkpoints(tmp_path, where):
    store = velocore.open(tmp_path / "db" if where == "disk" else None, sync="off")
    try:
        run_threads(store, 3.0, seed=1)
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_threads_snapshots_and_checkpoints_long(tmp_path, seed):
    store = velocore.open(tmp_path / "db", sync="off")
    try:
        run_threads(store, 30.0, seed=seed)
    finally:
        store.close()

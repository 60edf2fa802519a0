"""Snapshot isolation, first-committer-wins conflicts and store.retry (SPEC §3, §5a)."""
import random
import threading

import pytest

import velocore
from _helpers import run_in_thread


def commit_or_conflict(txn, fn):
    """Run fn(txn) then commit; return True if committed, False on ConflictError."""
    try:
        fn(txn)
    except velocore.ConflictError:
        # the engine detected the conflict early; the txn can no longer commit
        with pytest.raises((velocore.ConflictError, velocore.ClosedError)):
            txn.commit()
        txn.abort()
        return False
    try:
        txn.commit()
    except velocore.ConflictError:
        txn.abort()
        return False
    return True


# ---------------------------------------------------------------- snapshots

def test_snapshot_never_sees_later_commits(store):
    t = store.table("t")
    with store.txn() as x:
        x.put_many(t, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    snap = store.snapshot()
    with store.txn() as x:
        x.put(t, b"a", b"100")
        x.delete(t, b"b")
        x.put(t, b"d", b"4")
    t[b"e"] = b"5"
    store.checkpoint()
    assert snap.get(t, b"a") == b"1"
    assert snap.get(t, b"b") == b"2"
    assert snap.get(t, b"d") is None
    assert snap.get(t, b"e") is None
    assert list(snap.range(t)) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
    assert list(snap.range(t, reverse=True, keys_only=True)) == [b"c", b"b", b"a"]
    assert snap.get_many(t, [b"a", b"d"]) == [b"1", None]
    snap.abort()
    with store.snapshot() as s:
        assert list(s.range(t)) == [(b"a", b"100"), (b"c", b"3"), (b"d", b"4"), (b"e", b"5")]


def test_rw_txn_reads_its_begin_state(store):
    t = store.table("t")
    t[b"a"] = b"1"
    x = store.txn()
    t[b"a"] = b"2"          # committed after x began
    t[b"new"] = b"n"
    assert x.get(t, b"a") == b"1"
    assert x.get(t, b"new") is None
    assert list(x.range(t)) == [(b"a", b"1")]
    x.put(t, b"mine", b"m")
    assert list(x.range(t, keys_only=True)) == [b"a", b"mine"]
    assert x.get(t, b"a") == b"1"
    x.commit()             # no write-write overlap: commits
    assert dict(t.items()) == {b"a": b"2", b"new": b"n", b"mine": b"m"}


def test_many_snapshots_different_points(store):
    t = store.table("t")
    snaps = []
    for i in range(20):
        t[b"k"] = b"%d" % i
        t[b"k%02d" % i] = b"x"
        snaps.append(store.snapshot())
    store.checkpoint()
    for i, s in enumerate(snaps):
        assert s.get(t, b"k") == b"%d" % i
        assert len(list(s.range(t, prefix=b"k0"))) == min(i + 1, 10)
        assert len(list(s.range(t))) == i + 2
    for s in snaps:
        s.abort()


def test_readers_do_not_wait_for_writers(store):
    t = store.table("t")
    t[b"a"] = b"1"
    x = store.txn()
    x.put(t, b"a", b"2")
    x.put(t, b"b", b"2")

    def read():
        with store.snapshot() as s:
            return s.get(t, b"a"), s.get(t, b"b")

    assert run_in_thread(read) == (b"1", None)
    assert run_in_thread(lambda: t.get(b"a")) == b"1"
    x.commit()
    assert run_in_thread(read) == (b"2", b"2")


def test_concurrent_rw_txns_in_threads(store):
    """Several read-write transactions are open at the same time in different threads."""
    t = store.table("t")
    n = 4
    barrier = threading.Barrier(n, timeout=60)
    errors = []

    def worker(i):
        try:
            with store.txn() as x:
                x.put(t, b"w%d" % i, b"%d" % i)
                barrier.wait()       # every thread holds an open rw txn here
                x.put(t, b"w%d-b" % i, b"x")
                barrier.wait()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ths = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(120)
    assert not any(th.is_alive() for th in ths), "rw transactions block each other"
    assert errors == []
    assert len(t) == 2 * n


# ---------------------------------------------------------------- conflicts

def test_second_committer_conflicts_and_leaves_no_trace(store):
    t = store.table("t")
    t[b"k"] = b"orig"
    a = store.txn()
    b = store.txn()
    b.put(t, b"b-only", b"b")          # written before the conflict exists
    a.put(t, b"k", b"A")
    a.put(t, b"a-only", b"a")
    a.commit()

    def b_writes(x):
        x.put(t, b"k", b"B")
        x.put(t, b"b-other", b"b")

    assert commit_or_conflict(b, b_writes) is False
    assert t[b"k"] == b"A"
    assert t[b"a-only"] == b"a"
    assert b"b-only" not in t
    assert b"b-other" not in t


def test_both_write_before_either_commits(store):
    t = store.table("t")
    a = store.txn()
    b = store.txn()
    a.put(t, b"k", b"A")
    a.put(t, b"ka", b"A")
    try:
        b.put(t, b"k", b"B")
        b.put(t, b"kb", b"B")
        b_alive = True
    except velocore.ConflictError:
        b_alive = False
    a.commit()  # the first committer always wins
    if b_alive:
        with pytest.raises(velocore.ConflictError):
            b.commit()
    else:
        with pytest.raises((velocore.ConflictError, velocore.ClosedError)):
            b.commit()
    b.abort()
    assert dict(t.items()) == {b"k": b"A", b"ka": b"A"}


def test_first_committer_wins_either_order(store):
    t = store.table("t")
    a = store.txn()
    b = store.txn()
    b.put(t, b"kb", b"B")
    b.put(t, b"k", b"B")
    b.commit()  # b commits first, although a began first
    assert commit_or_conflict(a, lambda x: (x.put(t, b"ka", b"A"), x.put(t, b"k", b"A"))) \
        is False
    assert dict(t.items()) == {b"k": b"B", b"kb": b"B"}


def test_delete_is_a_write(store):
    t = store.table("t")
    t[b"k"] = b"v"
    a = store.txn()
    b = store.txn()
    a.delete(t, b"k")
    a.commit()
    assert commit_or_conflict(b, lambda x: x.put(t, b"k", b"B")) is False
    assert b"k" not in t

    t[b"k"] = b"v"
    a = store.txn()
    b = store.txn()
    a.put(t, b"k", b"A")
    a.commit()
    assert commit_or_conflict(b, lambda x: x.delete(t, b"k")) is False
    assert t[b"k"] == b"A"


def test_insert_insert_conflict(store):
    t = store.table("t")
    a = store.txn()
    b = store.txn()
    a.put(t, b"fresh", b"A")
    a.commit()
    assert commit_or_conflict(b, lambda x: x.put(t, b"fresh", b"B")) is False
    assert t[b"fresh"] == b"A"


def test_conflict_via_put_many(store):
    t = store.table("t")
    a = store.txn()
    b = store.txn()
    a.put(t, b"k5", b"A")
    a.commit()
    ok = commit_or_conflict(b, lambda x: x.put_many(t, [(b"k%d" % i, b"B") for i in range(10)]))
    assert ok is False
    assert dict(t.items()) == {b"k5": b"A"}


def test_disjoint_writes_do_not_conflict(store):
    t = store.table("t")
    u = store.table("u")
    a = store.txn()
    b = store.txn()
    a.put(t, b"x", b"A")
    b.put(t, b"y", b"B")
    b.put(u, b"x", b"B")  # same key, different table
    a.commit()
    b.commit()
    assert dict(t.items()) == {b"x": b"A", b"y": b"B"}
    assert dict(u.items()) == {b"x": b"B"}


def test_write_skew_allowed_read_only_overlap_no_conflict(store):
    """Conflicts are write-write only: reading a key another txn wrote is fine."""
    t = store.table("t")
    t[b"a"] = b"1"
    t[b"b"] = b"1"
    x = store.txn()
    y = store.txn()
    assert x.get(t, b"a") == b"1"
    assert y.get(t, b"b") == b"1"
    x.put(t, b"b", b"0")
    y.put(t, b"a", b"0")
    x.commit()
    y.commit()
    assert t[b"a"] == b"0" and t[b"b"] == b"0"


def test_aborted_writer_does_not_cause_conflict(store):
    t = store.table("t")
    a = store.txn()
    b = store.txn()
    a.put(t, b"k", b"A")
    a.abort()
    b.put(t, b"k", b"B")
    b.commit()
    assert t[b"k"] == b"B"


def test_conflict_with_autocommit(store):
    t = store.table("t")
    x = store.txn()
    x.get(t, b"k")
    t[b"k"] = b"auto"
    assert commit_or_conflict(x, lambda txn: txn.put(t, b"k", b"txn")) is False
    assert t[b"k"] == b"auto"


# ---------------------------------------------------------------- retry

def test_retry_reruns_on_conflict(store):
    t = store.table("t")
    t[b"k"] = b"0"
    calls = []

    def fn(x):
        calls.append(1)
        x.get(t, b"k")
        if len(calls) == 1:
            t[b"k"] = b"interloper"    # commits after x began: x must conflict
        x.put(t, b"k", b"fn%d" % len(calls))
        x.put(t, b"side", b"%d" % len(calls))
        return "result"

    assert store.retry(fn) == "result"
    assert len(calls) == 2
    assert t[b"k"] == b"fn2"
    assert t[b"side"] == b"2"


def test_retry_gives_up_after_attempts(store):
    t = store.table("t")
    calls = []

    def fn(x):
        calls.append(1)
        x.get(t, b"k")
        t[b"k"] = b"other%d" % len(calls)
        x.put(t, b"k", b"never")
        x.put(t, b"side%d" % len(calls), b"never")

    with pytest.raises(velocore.ConflictError):
        store.retry(fn, attempts=3)
    assert len(calls) == 3
    assert t[b"k"] == b"other3"
    assert list(t.keys()) == [b"k"]

    calls.clear()
    with pytest.raises(velocore.ConflictError):
        store.retry(fn)
    assert len(calls) == 10  # default attempts=10


def test_retry_propagates_other_exceptions_immediately(store):
    t = store.table("t")
    calls = []

    class Boom(Exception):
        pass

    def fn(x):
        calls.append(1)
        x.put(t, b"k", b"v")
        raise Boom("no retry")

    with pytest.raises(Boom):
        store.retry(fn, attempts=5)
    assert len(calls) == 1
    assert b"k" not in t

    def fn2(x):
        calls.append(1)
        x.put(t, b"k2", b"v")
        return {}["missing"]

    calls.clear()
    with pytest.raises(KeyError):
        store.retry(fn2)
    assert len(calls) == 1
    assert b"k2" not in t


def test_retry_each_attempt_fresh_txn(store):
    t = store.table("t")
    seen = []

    def fn(x):
        seen.append(x.get(t, b"k"))
        x.get(t, b"z")
        if len(seen) < 3:
            t[b"k"] = b"%d" % len(seen)
        x.put(t, b"k", b"final")

    store.retry(fn)
    # each attempt saw the state committed before it began
    assert seen == [None, b"1", b"2"]
    assert t[b"k"] == b"final"


def test_threads_increment_through_retry(store):
    t = store.table("counters")
    t[b"total"] = b"0"
    n_threads, n_incr = 4, 60
    errors = []

    def incr(x, me):
        cur = int(x.get(t, b"total"))
        x.put(t, b"total", b"%d" % (cur + 1))
        mine = int(x.get(t, me, b"0"))
        x.put(t, me, b"%d" % (mine + 1))

    def worker(i):
        me = b"thread%d" % i
        try:
            for _ in range(n_incr):
                store.retry(lambda x: incr(x, me), attempts=10_000)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ths = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(300)
    assert not any(th.is_alive() for th in ths)
    assert errors == []
    assert int(t[b"total"]) == n_threads * n_incr
    for i in range(n_threads):
        assert int(t[b"thread%d" % i]) == n_incr


def test_snapshots_see_atomic_transfers(store):
    """A writer moves money between accounts; every snapshot sees the same total."""
    t = store.table("acct")
    n_acct = 20
    with store.txn() as x:
        for i in range(n_acct):
            x.put(t, b"acct%02d" % i, b"100")
    total = 100 * n_acct
    stop = threading.Event()
    errors = []
    checks = [0]

    def writer(seed):
        rnd = random.Random(seed)
        try:
            for _ in range(150):
                a, b = rnd.sample(range(n_acct), 2)
                amt = rnd.randrange(1, 20)

                def move(x):
                    va = int(x.get(t, b"acct%02d" % a))
                    vb = int(x.get(t, b"acct%02d" % b))
                    x.put(t, b"acct%02d" % a, b"%d" % (va - amt))
                    x.put(t, b"acct%02d" % b, b"%d" % (vb + amt))

                store.retry(move, attempts=10_000)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def reader():
        try:
            while not stop.is_set():
                with store.snapshot() as s:
                    vals = [int(v) for _, v in s.range(t)]
                    assert len(vals) == n_acct
                    assert sum(vals) == total, vals
                    got = s.get_many(t, [b"acct%02d" % i for i in range(n_acct)])
                    assert sum(int(v) for v in got) == total
                checks[0] += 1
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    writers = [threading.Thread(target=writer, args=(s,)) for s in range(2)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for th in writers + readers:
        th.start()
    for th in writers:
        th.join(300)
    stop.set()
    for th in readers:
        th.join(60)
    assert not any(th.is_alive() for th in writers + readers)
    assert errors == [], errors[:3]
    assert checks[0] > 0
    assert sum(int(v) for _, v in t.items()) == total


def test_ops_after_conflict_at_put_cannot_commit(store):
    t = store.table("t")
    x = store.txn()
    x.get(t, b"k")
    t[b"k"] = b"winner"
    try:
        x.put(t, b"other", b"loser")
        x.put(t, b"k", b"loser")
    except velocore.ConflictError:
        pass
    with pytest.raises((velocore.ConflictError, velocore.ClosedError)):
        x.commit()
    x.abort()
    assert t[b"k"] == b"winner"
    assert b"other" not in t


@pytest.mark.slow
def test_threads_increment_through_retry_stress(store):
    t = store.table("c")
    t[b"n"] = b"0"

    def worker():
        for _ in range(500):
            store.retry(lambda x: x.put(t, b"n", b"%d" % (int(x.get(t, b"n")) + 1)),
                        attempts=100_000)

    ths = [threading.Thread(target=worker) for _ in range(8)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert int(t[b"n"]) == 8 * 500


@pytest.mark.parametrize("first", ["put", "delete"])
@pytest.mark.parametrize("second", ["put", "delete"])
def test_conflict_detected_across_checkpoint(store, first, second):
    """A checkpoint between the first commit and the second txn's write must not make
    the engine forget that the key changed after the second txn began (lost update)."""
    t = store.table("t")
    t[b"k"] = b"orig"
    x = store.txn()
    assert x.get(t, b"k") == b"orig"
    if first == "put":
        t[b"k"] = b"first"
    else:
        del t[b"k"]
    store.checkpoint()
    assert x.get(t, b"k") == b"orig"  # still its snapshot
    ok = commit_or_conflict(
        x, lambda txn: txn.put(t, b"k", b"second") if second == "put" else txn.delete(t, b"k"))
    assert ok is False, "second committer was not rejected after a checkpoint"
    assert t.get(b"k") == (b"first" if first == "put" else None)


def test_increments_with_concurrent_checkpoints(store):
    """Read-modify-write through retry while another thread checkpoints continuously:
    no increment may be lost."""
    t = store.table("c")
    t[b"n"] = b"0"
    stop = threading.Event()
    errors = []

    def ckpt():
        try:
            while not stop.is_set():
                store.checkpoint()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def worker():
        try:
            for _ in range(150):
                store.retry(lambda x: x.put(t, b"n", b"%d" % (int(x.get(t, b"n")) + 1)),
                            attempts=100_000)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    c = threading.Thread(target=ckpt)
    ws = [threading.Thread(target=worker) for _ in range(3)]
    c.start()
    for w in ws:
        w.start()
    for w in ws:
        w.join(300)
    stop.set()
    c.join(60)
    assert errors == []
    assert int(t[b"n"]) == 3 * 150

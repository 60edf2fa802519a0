"""Bulk loads: a large put_many whose keys ascend into a key range the snapshot holds
nothing in is written as leaves outside the tree, and spliced into the tree when its
transaction commits (see docs/architecture.md, *Bulk loads*).  Everything here checks that
it behaves exactly as the same writes through the memtable would: what readers see and
when, conflicts, bad input, own reads, aborts, checkpoints, crashes and damaged files."""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import velocore
from velocore._store import _PUT_CHUNK

from _helpers import assert_no_signal, child_env, run_python, wal_segments

N = 3 * _PUT_CHUNK + 77          # items per load: several of the engine's chunks


def value_of(key, size):
    """A value that depends on its key (cheap enough for hundreds of thousands of keys)."""
    return (key[::-1] * (size // len(key) + 1))[:size]


def items(prefix, n=N, start=0, size=100):
    keys = [b"%s%07d" % (prefix, i) for i in range(start, start + n)]
    return [(k, value_of(k, size)) for k in keys]


def bulk_loads(store):
    return store.info()["bulk_loads"]


def test_load_into_an_empty_store(tmp_path):
    path = str(tmp_path / "db")
    data = items(b"k", size=100)
    with velocore.open(path, sync="off") as s:
        t = s.table("t")
        before = s.snapshot()
        with s.txn() as x:
            x.put_many(t, data)
        assert bulk_loads(s) == 1
        assert s.info()["versions_retained"] < 10        # nothing went through the memtable
        with s.snapshot() as snap:
            assert list(snap.range(t)) == data
            assert snap.get(t, data[1234][0]) == data[1234][1]
            assert snap.get(t, b"k") is None
            keys = [k for k, _ in data[::7]]
            assert snap.get_many(t, keys) == [v for _, v in data[::7]]
            assert list(snap.range(t, reverse=True)) == data[::-1]
        # a snapshot from before the commit does not see it
        assert list(before.range(t)) == []
        before.abort()
        assert len(t) == len(data)
        assert s.check()["ok"]
    with velocore.open(path) as s:
        assert list(s.table("t").items()) == data
        assert s.check()["ok"]


def test_load_into_gaps_of_a_checkpointed_tree(tmp_path):
    """Into the gaps between keys already in the tree (below the first, between two, past
    the last, and in a table between two others), each a splice of many leaves."""
    path = str(tmp_path / "db")
    rnd = random.Random(3)
    model = {}
    with velocore.open(path, sync="off") as s:
        a, b, c = s.table("a"), s.table("b"), s.table("c")
        with s.txn() as x:
            for tbl, name in ((a, "a"), (c, "c")):
                for k, v in items(b"m", 20_000, size=40):
                    x.put(tbl, k, v)
                    model[(name, k)] = v
            for k in (b"g0500000", b"g0900000"):
                x.put(b, k, b"fence")
                model[("b", k)] = b"fence"
        s.checkpoint()
        loads = [(a, "a", items(b"a", size=100)),                  # below every key of a
                 (a, "a", items(b"n", size=100)),                  # past every key of a
                 (b, "b", items(b"g", N, start=500_001, size=60)),  # between b's two keys
                 (c, "c", items(b"m", N, start=20_000, size=100))]  # right after c's last
        for tbl, name, data in loads:
            with s.txn() as x:
                x.put_many(tbl, data)
            model.update(((name, k), v) for k, v in data)
        assert bulk_loads(s) == len(loads)
        # and one more checkpointed in between, then a load into that checkpointed tree
        s.checkpoint()
        data = items(b"z", size=rnd.randrange(1, 200))
        with s.txn() as x:
            x.put_many(b, data)
        model.update((("b", k), v) for k, v in data)
        assert bulk_loads(s) == len(loads) + 1
        # the memtable is empty, yet the tree changed: a checkpoint saves it
        s.checkpoint()
        assert s.info()["checkpoint_ts"] == s.info()["last_commit_ts"]

        def check(store):
            for name in "abc":
                got = list(store.table(name).items())
                want = sorted((k, v) for (n, k), v in model.items() if n == name)
                assert got == want, name
            report = store.check()
            assert report["ok"], report["errors"]
            assert report["entries"] >= len(model)
        check(s)
    with velocore.open(path) as s:
        check(s)


def test_load_stops_where_the_snapshot_has_a_key(tmp_path):
    """A load whose keys run into a key the snapshot holds is a bulk load only if its last
    key lies before it; otherwise it is written as usual.  Both give the same data."""
    with velocore.open(str(tmp_path / "db"), sync="off") as s:
        t = s.table("t")
        t[b"k0005000"] = b"old"
        data = items(b"k", size=30)
        with s.txn() as x:
            x.put_many(t, data)          # past b"k0005000": through the memtable
        assert bulk_loads(s) == 0
        assert dict(t.items()) == dict(data)
        with s.txn() as x:
            x.put_many(t, items(b"p", size=30))
        assert bulk_loads(s) == 1


def test_load_that_meets_a_key_midway_is_completed_as_usual(tmp_path):
    """The call's last key is not known (an iterator): the bulk load stops at the key the
    snapshot holds, and that item and the rest are written as usual."""
    with velocore.open(str(tmp_path / "db"), sync="off") as s:
        t = s.table("t")
        t[b"k0007000"] = b"old"
        data = items(b"k", size=30)
        with s.txn() as x:
            x.put_many(t, iter(data))
        assert dict(t.items()) == dict(data)
        assert s.check()["ok"]


def test_own_reads_and_writes_see_the_load(tmp_path):
    with velocore.open(str(tmp_path / "db"), sync="off") as s:
        t = s.table("t")
        data = items(b"k", size=50)
        with s.txn() as x:
            x.put(t, b"a", b"before")
            x.put_many(t, data)
            assert x.get(t, b"a") == b"before"                 # outside the load
            assert x.get(t, data[100][0]) == data[100][1]       # inside: read through
            x.put(t, data[5][0], b"changed")
            x.delete(t, data[6][0])
            assert x.get(t, data[5][0]) == b"changed"
        model = dict(data)
        model[b"a"] = b"before"
        model[data[5][0]] = b"changed"
        del model[data[6][0]]
        assert dict(t.items()) == model
        # an iterator and get_many inside the transaction, then a commit
        data2 = items(b"q", size=20)
        with s.txn() as x:
            x.put_many(t, data2)
            assert list(x.range(t, start=b"q")) == data2
            x.put(t, b"r", b"after")
        model.update(data2)
        model[b"r"] = b"after"
        with s.txn() as x:
            data3 = items(b"s", size=20)
            x.put_many(t, data3)
            assert x.get_many(t, [k for k, _ in data3[:50]]) == [v for _, v in data3[:50]]
        model.update(data3)
        assert dict(t.items()) == model
        assert s.check()["ok"]


def test_several_loads_and_writes_in_one_transaction(tmp_path):
    with velocore.open(str(tmp_path / "db"), sync="off") as s:
        t, u = s.table("t"), s.table("u")
        d1, d2, d3 = items(b"a", size=10), items(b"b", size=2000), items(b"c", size=0)
        with s.txn() as x:
            x.put(t, b"0", b"first")
            x.put_many(t, d1)
            x.put(t, b"b", b"between")         # past the first load
            x.put_many(t, d2)                   # values on overflow pages
            x.put_many(u, d3)                   # another table, empty values
            x.put(u, b"zz", b"last")
        assert bulk_loads(s) == 3
        assert dict(t.items()) == {b"0": b"first", b"b": b"between", **dict(d1), **dict(d2)}
        assert dict(u.items()) == {**dict(d3), b"zz": b"last"}
        assert s.check()["ok"]
        s.checkpoint()
        assert s.check()["ok"]
        assert dict(u.items()) == {**dict(d3), b"zz": b"last"}


def test_repeated_keys_last_wins(tmp_path):
    with velocore.open(str(tmp_path / "db"), sync="off") as s:
        t = s.table("t")
        data = items(b"k", size=30)
        doubled = [p for k, v in data for p in ((k, b"first"), (k, v))]
        big = [(b"x%07d" % i, b"y" * 3000) for i in range(N)]
        big_doubled = [p for k, v in big for p in ((k, v), (k, b"small"))]
        with s.txn() as x:
            x.put_many(t, doubled)
            x.put_many(t, big_doubled)
        assert bulk_loads(s) == 2
        # each key once, with its last value
        assert list(t.items()) == data + [(k, b"small") for k, _ in big]
        assert len(t) == 2 * N
        assert s.check()["ok"]


def test_aborted_and_failed_loads_leave_nothing(tmp_path):
    path = str(tmp_path / "db")
    with velocore.open(path, sync="off") as s:
        t = s.table("t")
        t[b"kept"] = b"v"
        s.checkpoint()
        pages = s.info()["page_count"]
        for r in range(5):
            x = s.txn()
            x.put_many(t, items(b"r%d-" % r, size=100))
            assert s.check()["ok"]         # the load's pages count as free meanwhile
            x.abort()
        with s.txn() as x:
            bad = items(b"s", size=100) + [(b"t", 5)]
            with pytest.raises(TypeError):
                x.put_many(t, bad)
            assert x.get(t, b"s0000000") is None
        assert dict(t.items()) == {b"kept": b"v"}
        assert bulk_loads(s) == 0
        # the pages came back: the later loads reuse them instead of growing the file
        grown = s.info()["page_count"] - pages
        assert s.check()["ok"]
        s.checkpoint()
        assert s.check()["ok"]
        assert s.info()["free_pages"] >= grown * 9 // 10
    with velocore.open(path) as s:
        assert dict(s.table("t").items()) == {b"kept": b"v"}
        assert s.check()["ok"]


def test_writer_of_a_loaded_key_with_an_older_snapshot_conflicts(tmp_path):
    with velocore.open(str(tmp_path / "db"), sync="off") as s:
        t = s.table("t")
        data = items(b"k", size=10)
        old = s.txn()
        assert old.get(t, b"zzz") is None          # its snapshot predates the load
        with s.txn() as x:
            x.put_many(t, data)
        with pytest.raises(velocore.ConflictError):
            old.put(t, data[10][0], b"lost update")
        old.abort()
        # a writer that began after it commits
        with s.txn() as x:
            x.put(t, data[10][0], b"new")
        assert t[data[10][0]] == b"new"
        # outside the loaded range an older snapshot writes freely
        old = s.txn()
        with s.txn() as x:
            x.put_many(t, items(b"m", size=10))
        old.put(t, b"a", b"fine")
        old.commit()
        assert t[b"a"] == b"fine"


@pytest.mark.parametrize("order", ["pending", "committed"])
def test_load_conflicts_with_a_writer_in_its_range(tmp_path, order):
    """Another transaction writes into the range after the load was built: the load's
    commit fails (first committer wins; a pending writer also wins), and nothing of it
    stays."""
    with velocore.open(str(tmp_path / "db"), sync="off") as s:
        t = s.table("t")
        data = items(b"k", size=10)
        x = s.txn()
        x.put_many(t, data)
        y = s.txn()
        y.put(t, data[500][0], b"other")
        if order == "committed":
            y.commit()
        with pytest.raises(velocore.ConflictError):
            x.commit()
        if order == "pending":
            y.commit()
        assert dict(t.items()) == {data[500][0]: b"other"}
        assert s.check()["ok"]


def test_readers_see_all_of_a_load_or_none(tmp_path):
    """Snapshots taken from another thread while loads commit: each sees every key of a
    load or none, and loads in commit order."""
    with velocore.open(str(tmp_path / "db"), sync="normal") as s:
        t = s.table("t")
        stop = threading.Event()
        seen = []
        errors = []

        def reader():
            try:
                while not stop.is_set():
                    with s.snapshot() as snap:
                        n = sum(1 for _ in snap.range(t, keys_only=True))
                        first = [snap.get(t, b"L%02d%07d" % (i, 0)) is not None for i in range(8)]
                    seen.append(n)
                    assert n % N == 0, n
                    assert first == sorted(first, reverse=True), first
            except BaseException as e:       # reported below
                errors.append(e)

        th = threading.Thread(target=reader)
        th.start()
        try:
            for i in range(8):
                with s.txn() as x:
                    x.put_many(t, items(b"L%02d" % i, size=20))
                time.sleep(0.01)
        finally:
            stop.set()
            th.join()
        assert not errors, errors[0]
        assert len(t) == 8 * N
        assert max(seen) <= 8 * N
        assert s.check()["ok"]


def test_concurrent_loads_and_writers_in_one_table(tmp_path):
    """Threads loading disjoint ranges while others write single keys everywhere (some in
    the loads' ranges): every commit that returned is there, no failed one is, and the
    tree checks out."""
    path = str(tmp_path / "db")
    with velocore.open(path, sync="off", checkpoint_mb=4) as s:
        t = s.table("t")
        model = {}
        lock = threading.Lock()
        errors = []
        progress = [-1, -1, -1]      # the load each loader is at
        first_done = threading.Event()

        def write_then_commit(write, changes):
            """The writes run at once; the commits, with the model's update, in turn (so
            the model follows commit order).  Whether it committed."""
            x = s.txn()
            try:
                write(x)
            except velocore.ConflictError:
                x.abort()
                return False
            with lock:
                try:
                    x.commit()
                except velocore.ConflictError:
                    return False
                model.update(changes)
                return True

        def loader(w):
            try:
                for i in range(4):
                    data = items(b"L%d-%d-" % (w, i), size=50)
                    progress[w] = i                # writers may write into it from now on
                    # put_many stops where a writer's key is
                    write_then_commit(lambda x: x.put_many(t, data), data)
                    first_done.set()
            except BaseException as e:
                errors.append(e)
            finally:
                first_done.set()

        def writer(w):
            rnd = random.Random(w)
            first_done.wait(60)      # one load at least meets no writer (however slow it runs)
            try:
                for i in range(1500):
                    lw = rnd.randrange(3)
                    if progress[lw] < 0 or rnd.random() < 0.5:
                        k = b"w%d-%d" % (w, i)
                    else:
                        k = b"L%d-%d-%07d" % (lw, rnd.randint(0, progress[lw]), rnd.randrange(N))
                    write_then_commit(lambda x: x.put(t, k, b"w"), {k: b"w"})
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=loader, args=(w,)) for w in range(3)]
        threads += [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors[0]
        assert bulk_loads(s) > 0
        assert dict(t.items()) == model
        assert s.check()["ok"]
    with velocore.open(path) as s:
        assert dict(s.table("t").items()) == model
        assert s.check()["ok"]


def test_in_memory_store(tmp_path):
    with velocore.open() as s:
        t = s.table("t")
        data = items(b"k", size=100)
        with s.txn() as x:
            x.put_many(t, data)
        assert bulk_loads(s) == 1
        assert list(t.items()) == data
        with s.txn() as x:
            x.put_many(t, items(b"a", size=3000))
        assert len(t) == 2 * N
        assert s.check()["ok"]


# ---------------------------------------------------------------- recovery

M = _PUT_CHUNK + 500             # items per load in the crash tests

LOADER = r"""
import os, sys, velocore
sys.path.insert(0, sys.argv[4])
from test_bulk import items, M
s = velocore.open(sys.argv[1], sync=sys.argv[2], checkpoint_mb=int(sys.argv[3]))
t = s.table("t")
i = int(sys.argv[5])
print("open", flush=True)
while True:
    with s.txn() as x:
        x.put_many(t, items(b"L%05d-" % i, M, size=64 + i % 200))
        x.put(t, b"n%05d" % i, b"%d" % i)
    print(i, flush=True)
    i += 1
"""


def loaded(path):
    """{i: keys of load i} and the marks written beside them, read first by a read-only
    open (which replays the log in memory), then by a normal one; and its check()."""
    with velocore.open(path, readonly=True) as s:
        ro = list(s.table("t").items())
    with velocore.open(path) as s:
        t = s.table("t")
        counts = {}
        for k, v in t.items():
            if k.startswith(b"L"):
                i = int(k[1:6])
                assert v == value_of(k, 64 + i % 200), k
                counts[i] = counts.get(i, 0) + 1
        marks = {int(k[1:]) for k in t.keys() if k.startswith(b"n")}
        assert ro == list(t.items())
        return counts, marks, s.check()


@pytest.mark.parametrize("sync,ckpt", [("full", 1000), ("full", 2), ("normal", 1000), ("off", 1000)])
def test_killed_while_loading(tmp_path, sync, ckpt):
    """kill -9 while loads commit in a loop: what reopens is a prefix of the loads, each
    whole, with the key written beside it in the same transaction; with sync="full" every
    acknowledged one.  checkpoint_mb=1000: every load since the first is replayed from its
    logged leaves; 2: checkpoints come and go in between."""
    path = str(tmp_path / "db")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(11)
    nxt = 0
    for rnd in range(3):
        p = subprocess.Popen([sys.executable, "-c", LOADER, path, sync, str(ckpt), tests_dir,
                              str(nxt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=child_env())
        acked = -1
        assert p.stdout.readline().strip() == b"open", p.stderr.read()[-3000:]
        deadline = time.monotonic() + rng.uniform(0.2, 0.8)
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            acked = int(line)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL, p.stderr.read()[-3000:]
        counts, marks, report = loaded(path)
        assert report["ok"], report["errors"]
        done = sorted(counts)
        assert done == list(range(len(done))), done
        assert all(c == M for c in counts.values()), counts
        assert sorted(marks) == done
        if sync == "full":
            assert len(done) > acked
        nxt = len(done)
    assert nxt > 0


def test_damaged_leaf_of_a_logged_load_is_corruption(tmp_path):
    """Recovery reads a logged load's leaves back: one that is not what the log names (a
    byte flipped, or the page reused) gives CorruptionError, not missing or wrong data."""
    path = str(tmp_path / "db")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    code = r"""
import os, sys, velocore
sys.path.insert(0, sys.argv[2])
from test_bulk import items
s = velocore.open(sys.argv[1], sync="full", checkpoint_mb=1000)
t = s.table("t")
s.checkpoint()
print(s.info()["page_count"], flush=True)
with s.txn() as x:
    x.put_many(t, items(b"k", size=100))
os._exit(0)
"""
    p = run_python(code, path, tests_dir)
    assert_no_signal(p)
    assert p.returncode == 0, p.stderr[-3000:]
    first = int(p.stdout.split()[0])
    with open(os.path.join(path, "data.vc"), "r+b") as f:
        f.seek((first + 3) * 4096 + 2000)      # a page of the load, past the old tree
        b = f.read(1)
        f.seek((first + 3) * 4096 + 2000)
        f.write(bytes([b[0] ^ 0x40]))
    with pytest.raises(velocore.CorruptionError):
        velocore.open(path)
    assert wal_segments(path)


def test_checkpoint_beside_an_open_load_then_a_crash(tmp_path):
    """A checkpoint while a load's leaves are written but not committed records their pages
    as free: after a crash they are, and nothing of the load is there."""
    path = str(tmp_path / "db")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    code = r"""
import os, sys, velocore
sys.path.insert(0, sys.argv[2])
from test_bulk import items
s = velocore.open(sys.argv[1], sync="full")
t = s.table("t")
t[b"kept"] = b"v"
x = s.txn()
x.put_many(t, items(b"k"))
s.checkpoint()
print(s.info()["bulk_loads"], flush=True)
os._exit(0)
"""
    p = run_python(code, path, tests_dir)
    assert_no_signal(p)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["0"]
    with velocore.open(path) as s:
        assert dict(s.table("t").items()) == {b"kept": b"v"}
        report = s.check()
        assert report["ok"], report["errors"]
        # and the pages are used again
        with s.txn() as x:
            x.put_many(s.table("t"), items(b"m"))
        assert s.check()["ok"]


# ---------------------------------------------------------------- key by key

K = 4096                          # VC_BULK_AFTER: ascending puts before a bulk load starts


def test_sorted_load_key_by_key_becomes_a_bulk_load(tmp_path):
    path = str(tmp_path / "db")
    data = items(b"k", 3 * K, size=100)
    with velocore.open(path, sync="off") as s:
        t = s.table("t")
        with s.txn() as x:
            for k, v in data:
                x.put(t, k, v)
        assert bulk_loads(s) == 1
        # most of it never went through the memtable
        assert s.info()["versions_retained"] < K + 10
        assert list(t.items()) == data
        assert s.check()["ok"]
    with velocore.open(path) as s:
        assert list(s.table("t").items()) == data


def test_key_by_key_load_with_reads_and_a_key_in_the_way(tmp_path):
    """Reads of keys already put, a key the snapshot holds in the middle of the load, a
    repeated key, and a put_many after the puts: the same as through the memtable."""
    with velocore.open(str(tmp_path / "db"), sync="off") as s:
        t = s.table("t")
        t[b"k%07d" % (5 * K)] = b"in the way"
        data = items(b"k", 8 * K, size=30)
        model = {b"k%07d" % (5 * K): b"in the way"}
        with s.txn() as x:
            for i, (k, v) in enumerate(data):
                x.put(t, k, v)
                model[k] = v
                if i % 5000 == 4999:
                    j = random.Random(i).randrange(i)
                    assert x.get(t, data[j][0]) == data[j][1]
                if i == 3 * K:
                    x.put(t, k, b"again")         # the same key twice in a row
                    model[k] = b"again"
            more = items(b"m", N, size=10)
            x.put_many(t, more)
            model.update(more)
        assert bulk_loads(s) >= 2
        assert dict(t.items()) == model
        assert s.check()["ok"]


def test_key_by_key_load_conflicts_and_aborts(tmp_path):
    with velocore.open(str(tmp_path / "db"), sync="off") as s:
        t = s.table("t")
        data = items(b"k", 2 * K, size=10)
        x = s.txn()
        for k, v in data:
            x.put(t, k, v)
        y = s.txn()
        y.put(t, data[-1][0], b"other")          # into the range the puts went to
        y.commit()
        with pytest.raises(velocore.ConflictError):
            x.commit()
        assert dict(t.items()) == {data[-1][0]: b"other"}
        x = s.txn()
        for k, v in items(b"z", 2 * K):
            x.put(t, k, v)
        x.abort()
        assert dict(t.items()) == {data[-1][0]: b"other"}
        assert s.check()["ok"]


def test_an_open_iterator_sees_a_later_load_of_its_transaction(tmp_path):
    with velocore.open(str(tmp_path / "db"), sync="off") as s:
        t = s.table("t")
        t[b"a"] = b"first"
        data = items(b"k", size=20)
        with s.txn() as x:
            it = x.range(t)
            assert next(it) == (b"a", b"first")
            x.put_many(t, data)
            assert list(it) == data
            it2 = x.range(t, reverse=True)
            assert next(it2) == data[-1]
        assert list(t.items()) == [(b"a", b"first")] + data

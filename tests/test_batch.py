"""Batch calls: get_many / put_many visit keys in key order internally (a radix sort and a
lookup that keeps the last leaf pinned); results must come back in the caller's order and
match per-key calls exactly, for every kind of key and wherever the value lives."""
import os
import random
import threading

import pytest

import velocore
from _helpers import churn_with_checkpoints, run_alongside
from velocore._store import _PIPE_MIN, _PUT_CHUNK, _set_put_threads, _sort_order


def key_kinds(rnd, n):
    """Keys that stress the sort: random, shared prefixes of every length, prefixes of
    each other, zero bytes, the longest allowed, single bytes."""
    keys = set()
    while len(keys) < n:
        kind = rnd.randrange(7)
        if kind == 0:
            k = rnd.randbytes(rnd.randint(1, 24))
        elif kind == 1:
            k = b"user:%012d" % rnd.randrange(10 ** 6)
        elif kind == 2:
            k = b"P" * rnd.choice([7, 8, 9, 15, 16, 17, 40]) + rnd.randbytes(rnd.randint(0, 3))
        elif kind == 3:
            k = b"\0" * rnd.randint(1, 20)
        elif kind == 4:
            k = bytes([rnd.randrange(256)]) * 1024
        elif kind == 5:
            k = b"ab" + b"\0" * rnd.randint(0, 12)
        else:
            k = bytes([rnd.randrange(256)])
        keys.add(k)
    return sorted(keys)


@pytest.mark.parametrize("kind", ["mixed", "random16", "deep", "sequential", "lengths"])
def test_sort_order_is_a_stable_sort(kind):
    """The radix sort batch calls visit keys in, on a large batch of each kind of key:
    memcmp order, the shorter key first, repeated keys in the order given."""
    rnd = random.Random(kind)
    n = 70_000
    if kind == "mixed":
        pool = key_kinds(rnd, 20_000)
    elif kind == "random16":
        pool = [rnd.randbytes(16) for _ in range(60_000)]
    elif kind == "deep":
        # the first varying byte lies past the first word, or inside it at any place
        pool = [b"prefix:" * rnd.randint(0, 3) + rnd.randbytes(rnd.randint(1, 12)) for _ in range(30_000)]
    elif kind == "sequential":
        pool = [i.to_bytes(8, "big") for i in range(40_000)]
    else:
        # keys that differ only in length, in the first word and past it
        pool = [b"\0" * rnd.randint(1, 30) for _ in range(100)] + [b"ab" * rnd.randint(1, 9) for _ in range(100)]
    keys = [rnd.choice(pool) for _ in range(n)]      # repeated keys too
    order = _sort_order(keys)
    assert order == sorted(range(n), key=lambda i: keys[i])
    assert _sort_order(sorted(keys)) == list(range(n))
    assert _sort_order([]) == []


@pytest.mark.parametrize("where", ["memtable", "tree", "both"])
def test_get_many_matches_get(tmp_path, where):
    rnd = random.Random(7)
    store = velocore.open(str(tmp_path / "db"), sync="off", cache_mb=1)
    table = store.table("t")
    keys = key_kinds(rnd, 3000)
    model = {}
    for i, k in enumerate(keys):
        # a few values large enough for overflow pages, the rest small or empty
        model[k] = (b"%d:" % i) + (rnd.randbytes(5000) if i % 97 == 0 else b"v" * (i % 50))
    first = dict(list(model.items())[: len(model) // 2]) if where == "both" else model
    with store.txn() as t:
        t.put_many(table, first)
    if where != "memtable":
        store.checkpoint()
    if where == "both":
        with store.txn() as t:
            t.put_many(table, {k: v for k, v in model.items() if k not in first})
            # deletes and overwrites that live only in the memtable
            for k in keys[::11]:
                t.delete(table, k)
                model.pop(k)
            for k in keys[5::13]:
                if k in model:
                    model[k] = b"new" + k[:8]
                    t.put(table, k, model[k])
    absent = [k + b"\xff" for k in keys[::7] if len(k) < 1024]
    probe = keys + absent + keys[::3]            # duplicates too
    rnd.shuffle(probe)
    with store.snapshot() as s:
        got = s.get_many(table, probe)
        assert got == [model.get(k) for k in probe]
        assert got == [s.get(table, k) for k in probe]
        assert s.get_many(table, []) == []
        assert s.get_many(table, [probe[0]]) == [model.get(probe[0])]
    store.close()


def test_get_many_sees_own_writes(tmp_path):
    store = velocore.open(str(tmp_path / "db"), sync="off")
    table = store.table("t")
    with store.txn() as t:
        t.put_many(table, [(b"k%05d" % i, b"old%d" % i) for i in range(5000)])
    store.checkpoint()
    with store.txn() as t:
        t.put(table, b"k00010", b"mine")
        t.delete(table, b"k00020")
        t.put(table, b"zz", b"new key")
        probe = [b"zz", b"k00020", b"k00010", b"k00030", b"nope"]
        assert t.get_many(table, probe) == [b"new key", None, b"mine", b"old30", None]
    store.close()


def test_put_many_last_value_wins_for_repeated_keys(tmp_path):
    rnd = random.Random(3)
    store = velocore.open(str(tmp_path / "db"), sync="off")
    table = store.table("t")
    keys = key_kinds(rnd, 400)
    items, model = [], {}
    for round_ in range(5):
        for k in rnd.sample(keys, 300):
            v = b"%d/" % round_ + k[:10]
            items.append((k, v))
            model[k] = v
    rnd.shuffle(items)
    model = {}
    for k, v in items:
        model[k] = v                             # the last occurrence in input order
    with store.txn() as t:
        t.put_many(table, items)
    with store.snapshot() as s:
        assert dict(s.range(table)) == model
        assert [k for k, _ in s.range(table)] == sorted(model)
    store.close()


def test_get_many_large_random_batch_on_small_cache(tmp_path):
    """More pages than the cache holds: the pinned leaf must be released and re-taken
    as the batch moves on, and the answer stays right.  The batch is large enough for
    get_many's scratch mapping (the order, the sort's records, then the value records in
    one place), with values in the tree and in the memtable, keys absent and repeated."""
    rnd = random.Random(11)
    store = velocore.open(str(tmp_path / "db"), sync="off", cache_mb=1)
    table = store.table("t")
    n = 60_000
    keys = [rnd.randbytes(8) + i.to_bytes(8, "big") for i in range(n)]
    model = {k: k[::-1] * 3 for k in keys}
    with store.txn() as t:
        t.put_many(table, model)
    store.checkpoint()
    with store.txn() as t:
        for k in rnd.sample(keys, 500):
            model[k] = b"new" + k
            t.put(table, k, model[k])
        for k in rnd.sample(keys, 500):
            model.pop(k, None)
            t.delete(table, k)
    probe = rnd.sample(keys, 40_000) + [b"\x00" * 16, b"\xff" * 16] + rnd.sample(keys, 1_000)
    probe += [k + b"\x00" for k in rnd.sample(keys, 100)]
    rnd.shuffle(probe)
    with store.snapshot() as s:
        got = s.get_many(table, probe)
    assert got == [model.get(k) for k in probe]
    assert sum(v is None for v in got) > 100
    store.close()


def test_large_commit_log_record_replays(tmp_path):
    """A commit whose log record spans many pieces (encoded once and written streamed, in
    ~1 MiB pieces, its header with the length and CRC written last) is recovered whole
    after the process dies before any checkpoint."""
    import subprocess
    import sys
    import textwrap
    path = str(tmp_path / "db")
    child = textwrap.dedent(f"""
        import os, velocore
        s = velocore.open({path!r}, sync="full", checkpoint_mb=100000)
        t = s.table("t")
        with s.txn() as x:
            x.put_many(t, [(b"k%07d" % i, (b"%07d" % i) * (1 + i % 40)) for i in range(60000)])
            x.put(t, b"big", b"B" * 3_000_000)
            x.delete(t, b"k0000005")
        os._exit(0)          # no close, no checkpoint: only the log has it
    """)
    subprocess.run([sys.executable, "-c", child], check=True, timeout=300)
    store = velocore.open(path)
    table = store.table("t")
    with store.snapshot() as s:
        assert s.count(table) == 60000
        assert s.get(table, b"big") == b"B" * 3_000_000
        assert s.get(table, b"k0000005") is None
        for i in (0, 1, 39, 40, 12345, 59999):
            assert s.get(table, b"k%07d" % i) == (b"%07d" % i) * (1 + i % 40)
    store.close()


@pytest.mark.parametrize("checkpoint_mb", [1, 64])
def test_memtable_reads_with_key_filter(tmp_path, checkpoint_mb):
    """Point reads skip a memtable whose key filter says "absent": every key written must
    still be found (present, overwritten, deleted), whether the filter is nearly empty or
    saturated (checkpoint_mb=1 gives the smallest filter, overfilled many times here)."""
    rnd = random.Random(5)
    store = velocore.open(str(tmp_path / "db"), sync="off", checkpoint_mb=checkpoint_mb)
    table = store.table("t")
    model = {}
    keys = [rnd.randbytes(rnd.randint(1, 30)) for _ in range(40_000)]
    for i in range(0, len(keys), 500):
        with store.txn() as t:
            for k in keys[i:i + 500]:
                if rnd.random() < 0.1 and k in model:
                    t.delete(table, k)
                    del model[k]
                else:
                    model[k] = b"%d" % rnd.randrange(10 ** 9)
                    t.put(table, k, model[k])
    probe = keys + [rnd.randbytes(rnd.randint(1, 30)) for _ in range(5000)]
    with store.snapshot() as s:
        assert [s.get(table, k) for k in probe] == [model.get(k) for k in probe]
        assert s.get_many(table, probe) == [model.get(k) for k in probe]
    store.close()


def test_put_many_scattered_batches_into_a_large_memtable(tmp_path):
    """Batches whose keys lie far apart in a memtable of many keys: their memtable
    searches run in groups, each key's write walking on from its group's search path
    (past the nodes its own group linked meanwhile).  Keys of every shape, repeats."""
    rnd = random.Random(11)
    store = velocore.open(str(tmp_path / "db"), sync="off", checkpoint_mb=512)
    table = store.table("t")
    base = [(b"base%08d" % i, b"b%d" % i) for i in range(60_000)]
    with store.txn() as t:
        t.put_many(table, base)
    model = dict(base)
    keys = key_kinds(rnd, 4000) + [b"base%08d" % rnd.randrange(60_000) for _ in range(2000)]
    for _ in range(40):
        batch = [(rnd.choice(keys), rnd.randbytes(rnd.randint(0, 40))) for _ in range(300)]
        with store.txn() as t:
            t.put_many(table, batch)
        model.update(batch)
    want = sorted(model.items())
    with store.snapshot() as s:
        assert list(s.range(table)) == want
        assert s.get_many(table, keys) == [model.get(k) for k in keys]
    store.checkpoint()
    with store.snapshot() as s:
        assert list(s.range(table)) == want
    store.close()


def test_put_many_groups_with_concurrent_writers_and_checkpoints(tmp_path):
    """Writers in several threads put scattered batches into one memtable (their keys
    interleave) while checkpoints switch memtables under them: a group's search paths
    into a memtable that has since been frozen must be ignored, and concurrent links
    walked past."""
    import threading
    store = velocore.open(str(tmp_path / "db"), sync="off", checkpoint_mb=4)
    table = store.table("t")
    with store.txn() as t:
        t.put_many(table, [(b"%08d" % i + b"-", b"base") for i in range(30_000)])
    models = [dict() for _ in range(3)]
    stop = threading.Event()
    errors = []

    def writer(w):
        rnd = random.Random(w)
        try:
            for r in range(80):
                batch = [(b"%08d" % rnd.randrange(30_000) + b"-w%d" % w, b"%d:%d" % (w, r))
                         for _ in range(400)]
                with store.txn() as t:
                    t.put_many(table, batch)
                models[w].update(batch)
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)

    def checkpointer():
        while not stop.is_set():
            store.checkpoint()

    run_alongside([threading.Thread(target=writer, args=(w,)) for w in range(3)],
                  [threading.Thread(target=checkpointer)], stop)
    assert not errors
    with store.snapshot() as s:
        for model in models:
            keys = sorted(model)
            assert s.get_many(table, keys) == [model.get(k) for k in keys]
        assert sum(1 for _ in s.range(table)) == 30_000 + sum(len(m) for m in models)
    store.close()


# A large put_many whose keys ascend is read and written chunk by chunk (4,096 items at a
# time) while they ascend; the rest of the call is sorted and written as one batch.  A bad
# item anywhere still leaves the call without effect.  Into an empty key range such a call
# is a bulk load (leaves written at once, spliced in at commit): each test runs both ways.

CHUNK = _PUT_CHUNK     # the engine's own chunk size, so these calls span several chunks


def ascending_items(n, start=0, tag=b""):
    return [(b"k%07d" % i, b"v%d" % i + tag) for i in range(start, start + n)]


@pytest.mark.usefixtures("bulk_mode")
@pytest.mark.parametrize("shape", ["ascending", "ascending-then-not", "repeats", "buffers",
                                   "a-few-others"])
def test_large_put_many_matches_a_model(tmp_path, shape):
    rnd = random.Random(5)
    store = velocore.open(str(tmp_path / "db"), sync="off")
    table = store.table("t")
    items = ascending_items(3 * CHUNK + 123)
    assert len(items) >= _PIPE_MIN      # the chunks are written on a thread of their own
    if shape == "ascending-then-not":
        # out of order in the middle of the third chunk: the rest, repeats included, sorted
        tail = items[2 * CHUNK + 50:]
        rnd.shuffle(tail)
        tail += [(k, v + b"-again") for k, v in rnd.sample(items, 500)]
        items = items[:2 * CHUNK + 50] + tail
    elif shape == "repeats":
        # a key repeated right after itself (still ascending), across a chunk boundary too
        items = [p for k, v in items for p in ((k, v), (k, v + b"!"))]
    elif shape == "buffers":
        items = [(memoryview(k) if i % 3 == 0 else k,
                  bytearray(v) if i % 5 == 0 else (memoryview(v) if i % 7 == 0 else v))
                 if i % 2 else [k, v] for i, (k, v) in enumerate(items)]
    elif shape == "a-few-others":
        # plain (bytes, bytes) tuples but for a few items, in the chunks read while the
        # one before is written: the read stops there and waits for that write
        for i in (CHUNK + 7, 2 * CHUNK, 2 * CHUNK + 1, 3 * CHUNK + 122):
            k, v = items[i]
            items[i] = [(k, bytearray(v)), (memoryview(k), v), [k, v], (k, memoryview(v))][i % 4]
    model = {}
    for k, v in items:
        model[bytes(k)] = bytes(v)
    with store.txn() as t:
        t.put(table, b"a-first", b"mine")          # an earlier write, sorting first
        t.put_many(table, items)
        assert t.get(table, b"a-first") == b"mine"
        assert t.get_many(table, list(model)) == list(model.values())
    model[b"a-first"] = b"mine"
    with store.snapshot() as s:
        assert dict(s.range(table)) == model
    store.close()


@pytest.mark.usefixtures("bulk_mode")
@pytest.mark.parametrize("where", [CHUNK // 2, 2 * CHUNK + 7, 3 * CHUNK - 1])
@pytest.mark.parametrize("bad", [5, "str", b""])
def test_bad_item_late_in_a_large_put_many_changes_nothing(tmp_path, where, bad):
    """Chunks before the bad item were already written when it is read: they are withdrawn,
    and the transaction goes on with only its earlier writes."""
    store = velocore.open(str(tmp_path / "db"), sync="off")
    table = store.table("t")
    with store.txn() as t:
        t.put(table, b"k0000003", b"committed")
    items = ascending_items(3 * CHUNK, tag=b"-new")
    if isinstance(bad, bytes):
        items[where] = (bad, b"v")                 # an empty key: ValueError
    else:
        items[where] = (items[where][0], bad)      # a value that is no buffer: TypeError
    with store.txn() as t:
        t.put(table, b"a-first", b"mine")
        with pytest.raises((TypeError, ValueError)):
            t.put_many(table, items)
        assert t.get(table, b"a-first") == b"mine"
        assert t.get(table, b"k0000003") == b"committed"
        assert t.get(table, b"k0000004") is None
        assert list(t.range(table)) == [(b"a-first", b"mine"), (b"k0000003", b"committed")]
        # the transaction goes on: a second, good call, then the commit
        t.put_many(table, ascending_items(CHUNK + 1, start=10))
    with store.snapshot() as s:
        got = dict(s.range(table))
    assert got[b"a-first"] == b"mine"
    assert got[b"k0000003"] == b"committed"
    assert got[b"k0000010"] == b"v10" and got[b"k%07d" % (10 + CHUNK)] == b"v%d" % (10 + CHUNK)
    assert len(got) == 2 + CHUNK + 1
    store.close()


@pytest.mark.usefixtures("bulk_mode")
def test_bad_item_in_the_unsorted_rest_withdraws_the_ascending_part(tmp_path):
    store = velocore.open(str(tmp_path / "db"), sync="off")
    table = store.table("t")
    items = ascending_items(2 * CHUNK + 10)
    # the rest begins in the third chunk, and the bad item lies beyond that chunk's end
    items += [(b"a%05d" % i, b"x") for i in range(CHUNK + 100)] + [(b"b", None)]
    with store.txn() as t:
        with pytest.raises(TypeError):
            t.put_many(table, items)
        assert list(t.range(table)) == []
        t.put(table, b"z", b"1")
    with store.snapshot() as s:
        assert dict(s.range(table)) == {b"z": b"1"}
    store.close()


@pytest.mark.usefixtures("bulk_mode")
def test_large_put_many_after_larger_keys_takes_the_sorted_path(tmp_path):
    """Earlier writes that sort after the batch: its writes could not be withdrawn one by
    one, so the whole call is read first; a bad item still changes nothing."""
    store = velocore.open(str(tmp_path / "db"), sync="off")
    table = store.table("t")
    items = ascending_items(2 * CHUNK)
    with store.txn() as t:
        t.put(table, b"zzz", b"last")
        with pytest.raises(TypeError):
            t.put_many(table, items + [(b"k9999999", 1.5)])
        assert list(t.range(table)) == [(b"zzz", b"last")]
        t.put_many(table, items)
    with store.snapshot() as s:
        assert s.count(table) == 2 * CHUNK + 1
    store.close()


@pytest.mark.usefixtures("bulk_mode")
def test_put_many_items_that_touch_the_list_or_the_transaction(tmp_path):
    """A pair that is not a tuple is unpacked by running its own code, which may change
    the caller's list or call the transaction: either is refused, the writes made so far
    are withdrawn, and nothing crashes."""
    store = velocore.open(str(tmp_path / "db"), sync="off")
    table = store.table("t")
    items = ascending_items(3 * CHUNK)

    class Shrinks:
        def __iter__(self):
            del items[CHUNK:]
            return iter((b"k%07d" % (2 * CHUNK), b"v"))

    class UsesTxn:
        def __iter__(self):
            t.put(table, b"inner", b"x")
            return iter((b"k%07d" % (2 * CHUNK), b"v"))

    with store.txn() as t:
        items[2 * CHUNK] = Shrinks()
        with pytest.raises(RuntimeError, match="changed size"):
            t.put_many(table, items)
        assert t.count(table) == 0
        items[:] = ascending_items(3 * CHUNK)
        items[2 * CHUNK] = UsesTxn()
        with pytest.raises(velocore.Error, match="in use"):
            t.put_many(table, items)
        assert t.count(table) == 0
        t.put(table, b"after", b"ok")
    with store.snapshot() as s:
        assert dict(s.range(table)) == {b"after": b"ok"}
    store.close()


@pytest.mark.usefixtures("bulk_mode")
@pytest.mark.parametrize("then", ["uses the transaction", "closes the store"])
def test_put_many_letting_go_of_an_item_runs_its_code(tmp_path, then):
    """An item that is not a plain pair is held until its chunk is written; letting go of
    it may be the last reference and run a finalizer.  That code runs while no write
    does: using the transaction is refused, closing the store ends the call."""
    store = velocore.open(str(tmp_path / "db"), sync="off")
    table = store.table("t")
    items = ascending_items(5 * CHUNK)
    ran = []

    class Key(bytes):                          # read through the buffer protocol
        def __del__(self):
            if then == "closes the store":
                store.close()
                ran.append("closed")
                return
            try:
                t.put(table, b"inner", b"x")
            except velocore.Error as e:
                ran.append(str(e))

    class Replaces:                            # leaves the Key only in put_many's hands
        def __iter__(self):
            items[CHUNK + 5] = (b"k%07d" % (CHUNK + 5), b"replaced")
            return iter((b"k%07d" % (CHUNK + 10), b"v%d" % (CHUNK + 10)))

    items[CHUNK + 5] = (Key(b"k%07d" % (CHUNK + 5)), b"held")
    items[CHUNK + 10] = Replaces()
    t = store.txn()
    if then == "closes the store":
        with pytest.raises(velocore.ClosedError):
            t.put_many(table, items)
        assert ran == ["closed"]
        with velocore.open(str(tmp_path / "db")) as again:
            assert again.snapshot().count(again.table("t")) == 0
        return
    t.put_many(table, items)
    assert len(ran) == 1 and "in use" in ran[0]
    assert t.get(table, b"k%07d" % (CHUNK + 5)) == b"held"       # as read, before replaced
    assert t.get(table, b"inner") is None
    t.commit()
    with store.snapshot() as s:
        got = dict(s.range(table))
    assert len(got) == 5 * CHUNK
    assert all(got[k] == v for k, v in ascending_items(5 * CHUNK) if k != b"k%07d" % (CHUNK + 5))
    store.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists threads in /proc")
@pytest.mark.parametrize("threads", [True, False])
def test_large_put_many_writes_on_a_thread_of_its_own(tmp_path, threads):
    """A put_many of _PIPE_MIN items or more has a writer thread for the call's length,
    joined before it returns; with the thread turned off (tests only) it has none."""
    store = velocore.open(str(tmp_path / "db"), sync="off")
    table = store.table("t")
    items = ascending_items(8 * CHUNK)
    assert len(items) >= _PIPE_MIN

    def tasks():
        return set(os.listdir("/proc/self/task"))

    seen = set()
    stop = threading.Event()

    def watch():                     # runs while put_many gives up the GIL between chunks
        while not stop.is_set():
            seen.update(tasks())

    setting = _set_put_threads(threads)
    try:
        watcher = threading.Thread(target=watch)
        before = tasks()
        watcher.start()
        before.add(str(watcher.native_id))
        with store.txn() as t:
            t.put_many(table, items)
        stop.set()
        watcher.join()
    finally:
        _set_put_threads(setting)
    came_and_went = seen - before - tasks()
    assert len(came_and_went) == (1 if threads else 0)
    with store.snapshot() as s:
        assert dict(s.range(table)) == dict(items)
    store.close()


@pytest.mark.usefixtures("bulk_mode")
def test_put_many_beside_a_thread_replacing_its_items(tmp_path):
    """Another thread replaces the caller's pairs (dropping the old ones) while the call
    reads and writes: each key ends with one of its two values, and nothing crashes."""
    import threading
    store = velocore.open(str(tmp_path / "db"), sync="off")
    n = 8 * CHUNK
    for round_ in range(3):
        table = store.table("t%d" % round_)
        items = ascending_items(n, tag=b"-old")
        stop = threading.Event()

        def replace():
            rnd = random.Random(round_)
            while not stop.is_set():
                i = rnd.randrange(n)
                items[i] = (b"k%07d" % i, b"v%d-new" % i)

        th = threading.Thread(target=replace)
        th.start()
        try:
            with store.txn() as t:
                t.put_many(table, items)
        finally:
            stop.set()
            th.join()
        with store.snapshot() as s:
            got = dict(s.range(table))
        assert len(got) == n
        for i in range(n):
            assert got[b"k%07d" % i] in (b"v%d-old" % i, b"v%d-new" % i)
    store.close()


@pytest.mark.usefixtures("bulk_mode")
def test_conflict_in_a_later_chunk_dooms_the_transaction(tmp_path):
    store = velocore.open(str(tmp_path / "db"), sync="off")
    table = store.table("t")
    other = store.txn()
    other.put(table, b"k%07d" % (2 * CHUNK + 5), b"theirs")
    t = store.txn()
    with pytest.raises(velocore.ConflictError):
        t.put_many(table, ascending_items(3 * CHUNK))
    with pytest.raises(velocore.ConflictError):
        t.commit()
    other.commit()
    with store.snapshot() as s:
        assert dict(s.range(table)) == {b"k%07d" % (2 * CHUNK + 5): b"theirs"}
    store.close()


@pytest.mark.usefixtures("bulk_mode")
def test_large_ascending_put_many_beside_checkpoints_and_writers(tmp_path):
    """Checkpoints freeze the memtable between (and during) a call's chunks, so one call's
    writes and their withdrawal span several memtables; another thread commits keys of
    its own all along.  Calls with a bad last item leave nothing; the others everything."""
    import threading
    store = velocore.open(str(tmp_path / "db"), sync="off", checkpoint_mb=1)
    table = store.table("t")
    stop = threading.Event()
    errors = []
    other = {}

    def checkpointer():
        while not stop.is_set():
            store.checkpoint()

    def committer():
        i = 0
        while not stop.is_set():
            k = b"other%07d" % i
            with store.txn() as t:
                t.put(table, k, b"o")
            other[k] = b"o"
            i += 1

    def loader():
        try:
            for r in range(12):
                items = [(b"r%02d-%07d" % (r, i), b"%d" % i * 20) for i in range(3 * CHUNK)]
                with store.txn() as t:
                    if r % 2:
                        items.append((b"r%02d-zzz" % r, 7))
                        with pytest.raises(TypeError):
                            t.put_many(table, items)
                        t.put(table, b"r%02d-after" % r, b"a")
                    else:
                        t.put_many(table, items)
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)

    run_alongside([threading.Thread(target=loader)],
                  [threading.Thread(target=checkpointer), threading.Thread(target=committer)],
                  stop)
    assert not errors
    assert store.info()["checkpoints"] > 0
    with store.snapshot() as s:
        got = dict(s.range(table))
    for r in range(12):
        mine = {k: v for k, v in got.items() if k.startswith(b"r%02d-" % r)}
        if r % 2:
            assert mine == {b"r%02d-after" % r: b"a"}, r
        else:
            assert mine == {b"r%02d-%07d" % (r, i): b"%d" % i * 20 for i in range(3 * CHUNK)}, r
    assert {k: v for k, v in got.items() if k.startswith(b"other")} == other
    store.close()


def test_get_many_keeps_leaves_pinned_within_budget(tmp_path):
    """get_many reads every value first (in key order) and makes the bytes objects after,
    in the caller's order: the leaves it read stay pinned until then, up to half the
    cache's frames, and values past that budget are copied aside.  Here the batch reads
    several times as many leaves as the budget allows; afterwards every pin is given
    back, and a second batch, a scan and a checkpoint find the cache whole."""
    rnd = random.Random(21)
    store = velocore.open(str(tmp_path / "db"), sync="off", cache_mb=1)
    table = store.table("t")
    keys = [rnd.randbytes(8) + i.to_bytes(8, "big") for i in range(40_000)]
    model = {k: k[::-1] * (1 + k[0] % 5) for k in keys}
    for i, k in enumerate(keys[::500]):
        model[k] = bytes([i % 256]) * 9000                 # overflow pages
    with store.txn() as t:
        t.put_many(table, model.items())
    store.checkpoint()
    with store.txn() as t:                                 # some answers from the memtable
        for k in keys[::7]:
            model[k] = b"mem" + k
            t.put(table, k, model[k])
    kept, budget = store._kept_pins()
    assert kept == 0 and budget > 0
    probe = keys + [k + b"!" for k in keys[::9]]
    rnd.shuffle(probe)
    with store.snapshot() as s:
        for _ in range(2):
            assert s.get_many(table, probe) == [model.get(k) for k in probe]
            assert store._kept_pins()[0] == 0
        assert sum(1 for _ in s.range(table)) == len(model)
    store.checkpoint()
    with store.txn() as t:                                 # kept pins are a read's only
        assert t.get_many(table, probe[:5000]) == [model.get(k) for k in probe[:5000]]
        t.put(table, b"after", b"x")
    assert store._kept_pins()[0] == 0
    store.close()


def test_get_many_pins_from_threads_beside_checkpoints(tmp_path):
    """Two threads run get_many on a small cache, each able to take the whole budget of
    kept pins, while a writer commits and checkpoints: no call may find the cache
    exhausted, every answer matches its snapshot, and all pins are back at the end."""
    store = velocore.open(str(tmp_path / "db"), sync="off", cache_mb=1)
    table = store.table("t")
    keys = [b"k%07d" % i for i in range(30_000)]
    with store.txn() as t:
        t.put_many(table, [(k, b"0:" + k) for k in keys])
    store.checkpoint()
    stop = threading.Event()
    reads = [0, 0]
    errors = []
    checkpoints = [0]

    def writer():
        checkpoints[0] = churn_with_checkpoints(
            store, table, keys, lambda k, gen: b"%d:" % gen + k, stop, errors, seed=5, per_txn=200)

    def reader(me):
        rnd = random.Random(me)
        try:
            for _ in range(6):
                probe = rnd.sample(keys, 20_000)
                with store.snapshot() as s:
                    got = s.get_many(table, probe)
                    want = [s.get(table, k) for k in probe]
                assert got == want
                assert all(v.endswith(k) for k, v in zip(probe, got))
                reads[me] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    run_alongside([threading.Thread(target=reader, args=(i,)) for i in range(2)],
                  [threading.Thread(target=writer)], stop)
    assert not errors, errors
    assert reads == [6, 6]
    assert checkpoints[0] > 0
    assert store._kept_pins()[0] == 0
    store.close()

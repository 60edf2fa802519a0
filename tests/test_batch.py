"""Batch calls: get_many / put_many visit keys in key order internally (a radix sort and a
lookup that keeps the last leaf pinned); results must come back in the caller's order and
match per-key calls exactly, for every kind of key and wherever the value lives."""
import random

import pytest

import velocore
from _helpers import run_alongside


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
    as the batch moves on, and the answer stays right."""
    rnd = random.Random(11)
    store = velocore.open(str(tmp_path / "db"), sync="off", cache_mb=1)
    table = store.table("t")
    n = 60_000
    keys = [rnd.randbytes(8) + i.to_bytes(8, "big") for i in range(n)]
    with store.txn() as t:
        t.put_many(table, [(k, k[::-1] * 3) for k in keys])
    store.checkpoint()
    probe = rnd.sample(keys, 20_000) + [b"\x00" * 16, b"\xff" * 16]
    with store.snapshot() as s:
        got = s.get_many(table, probe)
    assert got[:-2] == [k[::-1] * 3 for k in probe[:-2]]
    assert got[-2:] == [None, None]
    store.close()


def test_large_commit_log_record_replays(tmp_path):
    """A commit whose log record spans many pieces (written streamed, in ~1 MiB pieces,
    with the CRC taken in a first pass) is recovered whole after the process dies before
    any checkpoint."""
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

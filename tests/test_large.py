"""Large data: more data than the cache, huge values, space reuse (SPEC §1, §4)."""
import hashlib
import os
import random

import pytest

import velocore

MiB = 1024 * 1024
MAX_VALUE = 64 * MiB


def val(i, size):
    return random.Random(i).randbytes(size)


def load(store, table, n, size, batch=500):
    for j in range(0, n, batch):
        with store.txn() as x:
            x.put_many(table, [(b"k%08d" % i, val(i, size)) for i in range(j, min(n, j + batch))])


def verify_all(table, n, size):
    count = 0
    for k, v in table.items():
        i = int(k[1:])
        assert k == b"k%08d" % count, f"missing or extra key around {k!r}"
        assert v == val(i, size), f"wrong value for {k!r}"
        count += 1
    assert count == n


def test_50mb_with_tiny_cache(tmp_path):
    path = str(tmp_path / "big")
    n, size = 13_000, 4000  # 52 MB of values
    with velocore.open(path, cache_mb=1, sync="normal") as s:
        t = s.table("t")
        load(s, t, n, size)
        verify_all(t, n, size)
        assert len(t) == n
    assert os.path.getsize(os.path.join(path, "data.vc")) >= n * size
    with velocore.open(path, cache_mb=1) as s:
        t = s.table("t")
        verify_all(t, n, size)
        rng = random.Random(5)
        for i in rng.sample(range(n), 800):
            assert t[b"k%08d" % i] == val(i, size)
        with s.snapshot() as snap:
            got = snap.get_many(t, [b"k%08d" % i for i in range(0, n, 7)])
            assert got == [val(i, size) for i in range(0, n, 7)]
            back = list(snap.range(t, b"k%08d" % 5000, b"k%08d" % 5100, reverse=True,
                                   keys_only=True))
            assert back == [b"k%08d" % i for i in range(5099, 4999, -1)]
        assert s.check()["ok"]


def test_50mb_small_values_many_keys(tmp_path):
    """Millions of bytes of small records: deep trees under a 1 MiB cache."""
    path = str(tmp_path / "many")
    n = 250_000
    with velocore.open(path, cache_mb=1, sync="off") as s:
        t = s.table("t")
        for j in range(0, n, 5000):
            with s.txn() as x:
                x.put_many(t, [(hashlib.md5(b"%d" % i).digest(), b"%d" % i * 20)
                               for i in range(j, min(n, j + 5000))])
    with velocore.open(path, cache_mb=1) as s:
        t = s.table("t")
        assert len(t) == n
        prev = None
        count = 0
        for k, v in t.items():
            assert prev is None or k > prev
            prev = k
            count += 1
        assert count == n
        for i in random.Random(1).sample(range(n), 2000):
            assert t[hashlib.md5(b"%d" % i).digest()] == b"%d" % i * 20


@pytest.mark.parametrize("size", [0, 1, MiB, 3 * MiB + 17, MAX_VALUE],
                         ids=["0", "1", "1MiB", "3MiB+17", "64MiB"])
def test_value_sizes_round_trip(tmp_path, size):
    path = str(tmp_path / "v")
    v = random.Random(size).randbytes(size) if size <= 4 * MiB else \
        (random.Random(size).randbytes(MiB) * (size // MiB + 1))[:size]
    with velocore.open(path) as s:
        t = s.table("t")
        t[b"before"] = b"b"
        t[b"v"] = v
        t[b"w"] = b"after"
        got = t[b"v"]
        assert len(got) == size and got == v
        with s.snapshot() as snap:
            assert snap.get(t, b"v") == v
            assert list(snap.range(t, keys_only=True)) == [b"before", b"v", b"w"]
        s.checkpoint()
        assert t[b"v"] == v
    with velocore.open(path, cache_mb=1) as s:
        t = s.table("t")
        got = t[b"v"]
        assert len(got) == size and got == v
        assert t[b"w"] == b"after" and t[b"before"] == b"b"
        assert s.check()["ok"]
        # overwrite with a small value, then delete: the store stays consistent
        t[b"v"] = b"small"
        s.checkpoint()
        assert t[b"v"] == b"small"
        del t[b"v"]
        s.checkpoint()
        assert b"v" not in t
        assert s.check()["ok"]


def test_64mib_value_in_memory_store():
    v = b"\x5a" * MAX_VALUE
    with velocore.open() as s:
        t = s.table("t")
        t[b"big"] = v
        assert t[b"big"] == v


def data_size(path):
    return os.path.getsize(os.path.join(path, "data.vc"))


@pytest.mark.parametrize("empty_by", ["delete", "drop_table"])
def test_fill_empty_refill_does_not_grow(tmp_path, empty_by):
    path = str(tmp_path / "reuse")
    sizes = []
    with velocore.open(path, sync="off") as s:
        for rnd in range(5):
            t = s.table("t")
            with s.txn() as x:
                x.put_many(t, [(b"r%d-%06d" % (rnd, i), val(i + rnd, 1500)) for i in range(3000)])
            with s.txn() as x:
                x.put_many(t, [(b"big%d-%d" % (rnd, i), val(i, 60_000)) for i in range(10)])
            s.checkpoint()
            s.checkpoint()
            sizes.append(data_size(path))
            assert len(t) == 3010
            if empty_by == "delete":
                with s.txn() as x:
                    x.delete_many(t, list(t.keys()))
                assert len(t) == 0
            else:
                s.drop_table("t")
            s.checkpoint()
            s.checkpoint()
        assert s.check()["ok"]
    slack = 1 * MiB
    assert sizes[3] <= sizes[0] * 1.2 + slack, f"data.vc keeps growing: {sizes}"
    assert sizes[4] <= sizes[0] * 1.2 + slack, f"data.vc keeps growing: {sizes}"


def test_overwrite_large_value_does_not_grow(tmp_path):
    path = str(tmp_path / "ow")
    sizes = []
    with velocore.open(path, sync="off") as s:
        t = s.table("t")
        for i in range(12):
            t[b"blob"] = val(i, 2 * MiB)
            t[b"small%d" % (i % 3)] = b"x" * 100
            s.checkpoint()
            s.checkpoint()
            sizes.append(data_size(path))
        assert t[b"blob"] == val(11, 2 * MiB)
    assert sizes[-1] <= sizes[2] * 1.2 + MiB, f"data.vc keeps growing: {sizes}"
    with velocore.open(path) as s:
        assert s.table("t")[b"blob"] == val(11, 2 * MiB)


@pytest.mark.slow
def test_300mb_tiny_cache(tmp_path):
    path = str(tmp_path / "huge")
    n, size = 40_000, 8000
    with velocore.open(path, cache_mb=1, sync="off") as s:
        t = s.table("t")
        load(s, t, n, size, batch=1000)
    with velocore.open(path, cache_mb=1) as s:
        verify_all(s.table("t"), n, size)
        assert s.check()["ok"]

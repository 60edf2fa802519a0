"""Page-layout edge cases: keys and values of every awkward size around page, inline and
overflow thresholds, long keys, checkpoint merges, reopen; plus table drop/re-create under
snapshots and concurrent writers."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import velocore


def blob(seed, n):
    return random.Random(seed).randbytes(n)


def test_value_size_sweep_across_thresholds(tmp_path):
    path = str(tmp_path / "s")
    sizes = sorted(set(list(range(0, 200, 13)) + list(range(900, 1200, 7))
                       + list(range(1900, 2200, 11)) + list(range(3900, 4300, 5))
                       + list(range(8100, 8300, 17)) + [12_287, 12_288, 12_289, 65_536, 100_001]))
    model = {}
    with velocore.open(path, cache_mb=1) as s:
        t = s.table("t")
        for klen in (1, 37, 500, 1024):
            with s.txn() as x:
                for n in sizes:
                    k = (b"%06d-" % n + b"k" * klen)[:klen] if klen < 8 else \
                        (b"%06d-" % n).ljust(klen, b"\xfe")
                    if klen == 1:
                        k = bytes([n % 251])
                    v = blob(n * 7 + klen, n)
                    x.put(t, k, v)
                    model[k] = v
            s.checkpoint()
        assert dict(t.items()) == model
    with velocore.open(path, cache_mb=1) as s:
        t = s.table("t")
        assert dict(t.items()) == model
        for k, v in model.items():
            assert t[k] == v
        assert s.check()["ok"]
        # shrink and grow every value in place, then delete half
        with s.txn() as x:
            for i, k in enumerate(sorted(model)):
                v = blob(i, (len(model[k]) * 3 // 2 + 1) if i % 2 else len(model[k]) // 3)
                x.put(t, k, v)
                model[k] = v
        s.checkpoint()
        with s.txn() as x:
            for k in sorted(model)[::2]:
                x.delete(t, k)
                del model[k]
        s.checkpoint()
        assert dict(t.items()) == model
        assert s.check()["ok"]
    with velocore.open(path) as s:
        assert dict(s.table("t").items()) == model


ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "put", "del", "ckpt"]),
        st.one_of(st.integers(1, 8), st.integers(1, 1024), st.sampled_from([1023, 1024])),
        st.one_of(st.integers(0, 64), st.integers(0, 5000), st.integers(3000, 20_000)),
        st.integers(0, 40),  # key identity (small, so keys get overwritten)
    ),
    min_size=1, max_size=60,
)


@settings(deadline=None)
@given(ops=ops)
def test_random_sizes_against_model(tmp_path_factory, ops):
    path = str(tmp_path_factory.mktemp("r") / "s")
    model = {}
    with velocore.open(path, cache_mb=1, sync="off") as s:
        t = s.table("t")
        x = s.txn()
        for op, klen, vlen, ident in ops:
            key = (b"%03d" % ident * 400)[:klen] if klen >= 3 else bytes([ident + 1]) * klen
            if op == "put":
                v = blob(ident * 100_003 + vlen, vlen)
                x.put(t, key, v)
                model[key] = v
            elif op == "del":
                assert x.delete(t, key) == (key in model)
                model.pop(key, None)
            else:
                x.commit()
                s.checkpoint()
                x = s.txn()
        x.commit()
        assert list(t.items()) == sorted(model.items())
        s.checkpoint()
        assert list(t.items()) == sorted(model.items())
    with velocore.open(path, cache_mb=1) as s:
        t = s.table("t")
        assert list(t.items()) == sorted(model.items())
        assert list(t.range(reverse=True)) == sorted(model.items(), reverse=True)
        assert s.check()["ok"]


def test_overwrite_overflow_value_within_one_txn(store):
    t = store.table("t")
    with store.txn() as x:
        x.put(t, b"k", blob(1, 50_000))
        x.put(t, b"k", blob(2, 10))
        x.put(t, b"k", blob(3, 70_000))
        x.delete(t, b"k")
        x.put(t, b"k", blob(4, 30_000))
        assert x.get(t, b"k") == blob(4, 30_000)
    assert t[b"k"] == blob(4, 30_000)
    store.checkpoint()
    assert t[b"k"] == blob(4, 30_000)
    assert store.check()["ok"]


def test_drop_and_recreate_table_under_snapshot(store):
    t = store.table("t")
    t[b"k"] = b"old"
    t[b"only-old"] = b"x"
    snap = store.snapshot()
    store.drop_table("t")
    t2 = store.table("t")
    t2[b"k"] = b"new"
    store.checkpoint()
    assert snap.get("t", b"k") == b"old"
    assert list(snap.range("t")) == [(b"k", b"old"), (b"only-old", b"x")]
    snap.abort()
    with store.snapshot() as s2:
        assert list(s2.range("t")) == [(b"k", b"new")]
    assert list(t.items()) == [(b"k", b"new")]  # a Table object names a table


def test_write_to_concurrently_dropped_table(store):
    t = store.table("t")
    t[b"a"] = b"1"
    x = store.txn()
    x.put(t, b"b", b"2")
    store.drop_table("t")
    with pytest.raises((velocore.ConflictError, velocore.NoSuchTableError)):
        x.commit()
    x.abort()
    assert "t" not in store.tables()
    assert len(store.table("t")) == 0


def test_several_stores_in_one_process(tmp_path):
    stores = [velocore.open(str(tmp_path / ("s%d" % i))) for i in range(4)]
    try:
        for i, s in enumerate(stores):
            s.table("t").put(b"who", b"%d" % i)
        for i, s in enumerate(stores):
            assert s.table("t")[b"who"] == b"%d" % i
            with s.txn() as x:
                x.put("t", b"n", b"%d" % (i * 10))
    finally:
        for s in stores:
            s.close()
    for i in range(4):
        with velocore.open(str(tmp_path / ("s%d" % i)), readonly=True) as s:
            assert dict(s.table("t").items()) == {b"who": b"%d" % i, b"n": b"%d" % (i * 10)}


@pytest.mark.parametrize("name", ["\x00", "a\x00b", "é" * 255, "\U0001F600" * 255, " ", "N"])
def test_odd_table_names(store_path, name):
    with velocore.open(store_path) as s:
        s.table(name).put(b"k", name.encode("utf-8")[:1000] or b"-")
        s.table(name + "x" if len(name) < 255 else "other").put(b"k", b"neighbour")
        assert s.table(name)[b"k"] == name.encode("utf-8")[:1000]
        assert name in s.tables()
    with velocore.open(store_path) as s:
        assert name in s.tables()
        assert list(s.table(name).items()) == [(b"k", name.encode("utf-8")[:1000])]
        s.drop_table(name)
        assert name not in s.tables()
        assert len(s.tables()) == 1

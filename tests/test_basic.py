"""Basic API behaviour: SPEC §1, §2, §3, §5 (no concurrency, no crashes)."""
import gc
import os

import pytest

import velocore
from _helpers import model_range

ORDER_KEYS = [
    b"\x00", b"\x00\x00", b"\x00\x01", b"\x01", b"\x7f", b"\x80", b"\x80\x00",
    b"a", b"a\x00", b"a\xff", b"ab", b"b", b"\xfe", b"\xff", b"\xff\x00", b"\xff\xff",
]


def reopen(store, **kw):
    path = store.path
    store.close()
    return velocore.open(path, **kw)


# ---------------------------------------------------------------- module surface

def test_exception_hierarchy():
    assert issubclass(velocore.Error, Exception)
    for name in ("ConflictError", "ClosedError", "ReadOnlyError", "LockedError",
                 "CorruptionError", "NoSuchTableError"):
        exc = getattr(velocore, name)
        assert issubclass(exc, velocore.Error), name
    assert issubclass(velocore.NoSuchTableError, KeyError)


def test_simd_level_and_get_include():
    assert velocore.simd_level() in ("avx512", "avx2", "neon", "scalar")
    inc = velocore.get_include()
    assert isinstance(inc, list) and inc
    for d in inc:
        assert os.path.isdir(d), d


def test_open_creates_directory_layout(store_path):
    assert not os.path.exists(store_path)
    with velocore.open(store_path) as s:
        s.table("t").put(b"k", b"v")
        assert os.path.isdir(store_path)
        assert os.path.abspath(s.path) == os.path.abspath(store_path)
    assert os.path.isfile(os.path.join(store_path, "data.vc"))
    assert os.path.isdir(os.path.join(store_path, "wal"))
    assert os.path.getsize(os.path.join(store_path, "data.vc")) % 4096 == 0


def test_info_keys(store, store_path):
    info = store.info()
    assert isinstance(info, dict)
    assert os.path.abspath(info["path"]) == os.path.abspath(store_path)
    assert info["simd"] == velocore.simd_level()
    assert info["wal_mode"] == "file"


def test_info_pmem_reports_a_real_mode(tmp_path):
    with velocore.open(str(tmp_path / "p"), wal="pmem") as s:
        assert s.info()["wal_mode"] in ("pmem", "file")
        s.table("t").put(b"k", b"v")
        assert s.table("t")[b"k"] == b"v"


# ---------------------------------------------------------------- table conveniences

def test_table_autocommit_conveniences(store):
    t = store.table("users")
    assert len(t) == 0
    assert t.get(b"alice") is None
    assert t.get(b"alice", b"dflt") == b"dflt"
    with pytest.raises(KeyError):
        t[b"alice"]
    assert b"alice" not in t
    t[b"alice"] = b"1"
    t.put(b"bob", b"2")
    assert t[b"alice"] == b"1"
    assert t.get(b"bob") == b"2"
    assert b"alice" in t and b"bob" in t
    assert len(t) == 2
    t[b"alice"] = b"11"
    assert t[b"alice"] == b"11"
    assert len(t) == 2
    assert t.delete(b"alice") is True
    assert t.delete(b"alice") is False
    assert b"alice" not in t
    del t[b"bob"]
    assert len(t) == 0
    assert t.get(b"bob", 7) == 7


def test_del_missing_key_raises_keyerror(store):
    t = store.table("t")
    with pytest.raises(KeyError):
        del t[b"nope"]


def test_values_are_bytes(store):
    t = store.table("t")
    t.put(bytearray(b"k"), bytearray(b"value"))
    v = t[b"k"]
    assert type(v) is bytes and v == b"value"
    with store.txn() as x:
        assert type(x.get(t, b"k")) is bytes
    k, v = next(iter(t.items()))
    assert type(k) is bytes and type(v) is bytes


def test_ordering_unsigned_bytes(store):
    t = store.table("ord")
    import random
    shuffled = ORDER_KEYS[:]
    random.Random(1).shuffle(shuffled)
    for i, k in enumerate(shuffled):
        t[k] = b"v" + k
    expected = sorted(ORDER_KEYS)  # Python bytes compare == memcmp order
    assert list(t.keys()) == expected
    assert list(t.items()) == [(k, b"v" + k) for k in expected]
    assert [k for k, _ in t.range()] == expected
    assert list(t.range(keys_only=True)) == expected
    assert list(t.range(reverse=True, keys_only=True)) == expected[::-1]
    assert len(t) == len(ORDER_KEYS)


def test_table_range_arguments(store):
    t = store.table("r")
    model = {k: b"v" + k for k in ORDER_KEYS}
    with store.txn() as x:
        x.put_many(t, model)
    cases = [
        dict(), dict(start=b"a"), dict(stop=b"a"), dict(start=b"\x01", stop=b"\xff"),
        dict(prefix=b"a"), dict(prefix=b"\xff"), dict(prefix=b"\x00"),
        dict(prefix=b"a", start=b"a\x01"), dict(prefix=b"a", stop=b"a\xff"),
        dict(prefix=b"a", start=b"b"), dict(prefix=b"zz"),
        dict(start=b"b", stop=b"b"), dict(start=b"c", stop=b"a"),
    ]
    for kw in cases:
        for rev in (False, True):
            exp = model_range(model, kw.get("start"), kw.get("stop"), kw.get("prefix"), rev)
            assert list(t.range(reverse=rev, **kw)) == exp, (kw, rev)
            assert list(t.range(reverse=rev, keys_only=True, **kw)) == [k for k, _ in exp]
            with store.snapshot() as s:
                assert list(s.range(t, reverse=rev, **kw)) == exp, (kw, rev)
                assert list(s.range("r", reverse=rev, keys_only=True, **kw)) == \
                    [k for k, _ in exp]


def test_range_start_ge_stop_is_empty(store):
    t = store.table("t")
    for k in (b"a", b"b", b"c"):
        t[k] = k
    with store.snapshot() as s:
        assert list(s.range(t, b"b", b"b")) == []
        assert list(s.range(t, b"c", b"a")) == []
        assert list(s.range(t, b"c", b"a", reverse=True)) == []
        assert list(s.range(t, b"b", b"b", keys_only=True)) == []
        assert list(s.range(t, b"b", b"c")) == [(b"b", b"b")]


# ---------------------------------------------------------------- tables()

def test_tables_create_list_drop(store):
    assert store.tables() == []
    store.table("b")
    store.table("a")
    store.table("a")  # idempotent
    assert sorted(store.tables()) == ["a", "b"]
    store.table("a").put(b"k", b"v")
    store.drop_table("a")
    assert sorted(store.tables()) == ["b"]
    with pytest.raises(velocore.NoSuchTableError):
        store.drop_table("a")
    with pytest.raises(KeyError):
        store.drop_table("nope")
    # recreated table starts empty
    a = store.table("a")
    assert len(a) == 0 and a.get(b"k") is None


def test_tables_durable_across_reopen(store_path):
    s = velocore.open(store_path)
    for name in ("users", "orders", "tmp", "ünïcødé"):
        s.table(name).put(b"k", name.encode())
    s.drop_table("tmp")
    s.close()
    s = velocore.open(store_path)
    try:
        assert sorted(s.tables()) == sorted(["users", "orders", "ünïcødé"])
        for name in ("users", "orders", "ünïcødé"):
            assert s.table(name)[b"k"] == name.encode()
        s.drop_table("orders")
    finally:
        s.close()
    s = velocore.open(store_path)
    try:
        assert sorted(s.tables()) == sorted(["users", "ünïcødé"])
        assert len(s.table("orders")) == 0
    finally:
        s.close()


def test_drop_table_not_seen_by_older_snapshot(store):
    t = store.table("t")
    t[b"k"] = b"v"
    snap = store.snapshot()
    store.drop_table("t")
    assert "t" not in store.tables()
    # the snapshot is a fixed point in time: the table and its data are still there
    assert snap.get(t, b"k") == b"v"
    assert list(snap.range(t)) == [(b"k", b"v")]
    snap.abort()


def test_table_by_name_in_txn(store):
    store.table("users")
    with store.txn() as x:
        x.put("users", b"a", b"1")
        assert x.get("users", b"a") == b"1"
    with store.snapshot() as s:
        assert s.get("users", b"a") == b"1"
        assert list(s.range("users")) == [(b"a", b"1")]


# ---------------------------------------------------------------- in-memory store

def test_in_memory_store_touches_no_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    s = velocore.open()
    try:
        t = s.table("m")
        for i in range(500):
            t.put(b"k%04d" % i, b"v" * (i % 50))
        t.put(b"big", b"x" * 100_000)
        with s.txn() as x:
            x.put(t, b"k0000", b"new")
            x.delete(t, b"k0001")
        assert t[b"k0000"] == b"new"
        assert b"k0001" not in t
        assert t[b"big"] == b"x" * 100_000
        assert len(t) == 500
        assert s.tables() == ["m"]
        s.checkpoint()
        info = s.info()
        assert info["simd"] == velocore.simd_level()
        assert info["path"] in (None, "", ":memory:")
    finally:
        s.close()
    assert sorted(os.listdir(tmp_path)) == before


def test_in_memory_stores_are_independent():
    a = velocore.open()
    b = velocore.open()
    try:
        a.table("t").put(b"k", b"a")
        assert "t" not in b.tables() or b.table("t").get(b"k") is None
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- transactions

def test_txn_commit_and_read_your_writes(store):
    t = store.table("t")
    t[b"pre"] = b"0"
    with store.txn() as x:
        assert x.get(t, b"a") is None
        assert x.get(t, b"a", b"d") == b"d"
        x.put(t, b"a", b"1")
        x.put(t, b"b", b"2")
        assert x.get(t, b"a") == b"1"
        assert x.delete(t, b"pre") is True
        assert x.get(t, b"pre") is None
        assert x.delete(t, b"pre") is False
        assert x.delete(t, b"never") is False
        # range sees own writes and own deletes
        assert list(x.range(t)) == [(b"a", b"1"), (b"b", b"2")]
        assert list(x.range(t, reverse=True, keys_only=True)) == [b"b", b"a"]
        # others do not see uncommitted writes
        with store.snapshot() as s:
            assert s.get(t, b"a") is None
            assert s.get(t, b"pre") == b"0"
        assert t.get(b"a") is None
    assert t[b"a"] == b"1" and t[b"b"] == b"2" and b"pre" not in t


def test_txn_exception_aborts_and_propagates(store):
    t = store.table("t")
    t[b"a"] = b"old"

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with store.txn() as x:
            x.put(t, b"a", b"new")
            x.put(t, b"b", b"new")
            x.delete(t, b"a")
            raise Boom()
    assert t[b"a"] == b"old"
    assert b"b" not in t


def test_explicit_commit_abort(store):
    t = store.table("t")
    x = store.txn()
    x.put(t, b"a", b"1")
    x.abort()
    assert b"a" not in t
    x = store.txn()
    x.put(t, b"a", b"2")
    x.commit()
    assert t[b"a"] == b"2"


def test_commit_or_abort_inside_with_block(store):
    t = store.table("t")
    with store.txn() as x:
        x.put(t, b"a", b"1")
        x.commit()
    assert t[b"a"] == b"1"
    with store.txn() as x:
        x.put(t, b"a", b"2")
        x.abort()
    assert t[b"a"] == b"1"
    with store.snapshot() as s:
        assert s.get(t, b"a") == b"1"
        s.abort()


def test_dropped_txn_never_commits(store):
    t = store.table("t")
    x = store.txn()
    x.put(t, b"ghost", b"boo")
    del x
    gc.collect()
    assert b"ghost" not in t
    # the store still works and accepts a conflicting write
    t[b"ghost"] = b"real"
    assert t[b"ghost"] == b"real"


def test_batch_calls(store):
    t = store.table("t")
    with store.txn() as x:
        x.put_many(t, {b"a": b"1", b"b": b"2"})
        x.put_many(t, [(b"c", b"3"), (b"d", b"4")])
        x.put_many(t, ((k, k * 2) for k in (b"e", b"f")))
        x.put_many(t, [(b"r", b"1"), (b"r", b"2"), (b"r", b"3")])  # last wins
        assert x.get_many(t, [b"a", b"zz", b"r", b"e"]) == [b"1", None, b"3", b"ee"]
    with store.snapshot() as s:
        assert s.get_many(t, [b"c", b"d", b"f", b"nope"]) == [b"3", b"4", b"ff", None]
        assert s.get_many(t, []) == []
        assert s.get_many(t, (k for k in [b"a"])) == [b"1"]
    with store.txn() as x:
        x.delete_many(t, [b"a", b"b", b"missing"])
        x.delete_many(t, (k for k in [b"c"]))
        assert x.get_many(t, [b"a", b"b", b"c", b"d"]) == [None, None, None, b"4"]
    assert list(t.keys()) == [b"d", b"e", b"f", b"r"]


def test_put_many_repeated_key_with_delete_between(store):
    t = store.table("t")
    with store.txn() as x:
        x.put_many(t, [(b"k", b"1"), (b"k", b"")])
        assert x.get(t, b"k") == b""
    assert t[b"k"] == b""


def test_iterator_valid_while_txn_open_then_closed(store):
    t = store.table("t")
    with store.txn() as x:
        x.put_many(t, [(b"%03d" % i, b"v%d" % i) for i in range(300)])
    x = store.txn()
    it = x.range(t)
    first = [next(it) for _ in range(10)]
    assert first == [(b"%03d" % i, b"v%d" % i) for i in range(10)]
    # a concurrent commit changes the table; the iterator keeps its snapshot
    with store.txn() as y:
        y.put(t, b"050", b"changed")
        y.delete(t, b"100")
        y.put(t, b"0505", b"inserted")
    rest = list(it)
    assert first + rest == [(b"%03d" % i, b"v%d" % i) for i in range(300)]
    it2 = x.range(t, keys_only=True)
    assert next(it2) == b"000"
    x.commit()
    with pytest.raises(velocore.ClosedError):
        next(it2)


def test_snapshot_iterator_closed_after_snapshot_ends(store):
    t = store.table("t")
    for i in range(50):
        t[b"%02d" % i] = b"x"
    s = store.snapshot()
    it = s.range(t)
    next(it)
    s.abort()
    with pytest.raises(velocore.ClosedError):
        next(it)


def test_checkpoint_keeps_data(store):
    t = store.table("t")
    for i in range(200):
        t[b"%d" % i] = b"v%d" % i
    store.checkpoint()
    store.checkpoint()
    for i in range(200):
        assert t[b"%d" % i] == b"v%d" % i
    s2 = reopen(store)
    try:
        t2 = s2.table("t")
        assert len(t2) == 200
        assert t2[b"199"] == b"v199"
    finally:
        s2.close()


@pytest.mark.parametrize("sync", ["full", "normal", "off"])
def test_durable_across_clean_reopen(store_path, sync):
    s = velocore.open(store_path, sync=sync)
    t = s.table("t")
    model = {}
    for i in range(300):
        k = b"key%05d" % (i * 7 % 300)
        v = b"%d" % i * (i % 13)
        with s.txn() as x:
            x.put(t, k, v)
            if i % 10 == 0:
                x.delete(t, b"key%05d" % i)
        model[k] = v
        if i % 10 == 0:
            model.pop(b"key%05d" % i, None)
    big = bytes(range(256)) * 100
    t[b"big"] = big
    model[b"big"] = big
    s.close()
    for ro in (False, True):
        s = velocore.open(store_path, sync=sync, readonly=ro)
        try:
            assert dict(s.table("t").items()) == model
            assert s.check()["ok"]
        finally:
            s.close()


def test_reopen_many_times(store_path):
    for i in range(12):
        with velocore.open(store_path, sync="off") as s:
            t = s.table("t")
            assert len(t) == i
            t[b"%02d" % i] = b"x" * i
            if i % 3 == 0:
                s.checkpoint()
    with velocore.open(store_path, readonly=True) as s:
        assert list(s.table("t").items()) == [(b"%02d" % i, b"x" * i) for i in range(12)]


def test_check_healthy_store(store):
    t = store.table("t")
    for i in range(2000):
        t.put(b"%06d" % i, b"v" * (i % 100))
    t.put(b"overflow", b"o" * 20000)
    res = store.check()
    assert res["ok"] is True
    assert res["errors"] == []
    store.checkpoint()
    res = store.check()
    assert res["ok"] is True and res["errors"] == []


def test_readonly_store_reads(store_path):
    with velocore.open(store_path) as s:
        s.table("t").put(b"a", b"1")
    with velocore.open(store_path, readonly=True) as ro:
        assert ro.tables() == ["t"]
        t = ro.table("t")
        assert t[b"a"] == b"1"
        assert list(t.items()) == [(b"a", b"1")]
        with ro.snapshot() as s:
            assert s.get(t, b"a") == b"1"


def test_retry_basic(store):
    t = store.table("t")

    def fn(x):
        x.put(t, b"k", b"v")
        return 42

    assert store.retry(fn) == 42
    assert t[b"k"] == b"v"


def test_get_many_duplicates_and_order(store):
    t = store.table("t")
    t[b"a"] = b"1"
    t[b"b"] = b"2"
    with store.snapshot() as s:
        assert s.get_many(t, [b"b", b"a", b"b", b"zz", b"a"]) == [b"2", b"1", b"2", None, b"1"]


def test_put_many_generator_raising_aborts_block(store):
    t = store.table("t")

    def gen():
        yield (b"a", b"1")
        yield (b"b", b"2")
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        with store.txn() as x:
            x.put_many(t, gen())
    assert len(t) == 0


def test_put_many_bad_items(store):
    t = store.table("t")
    with store.txn() as x:
        for bad in ([(b"a",)], [(b"a", b"1", b"2")], [b"ab"], [None]):
            with pytest.raises((TypeError, ValueError)):
                x.put_many(t, bad)
        x.abort()
    assert len(t) == 0

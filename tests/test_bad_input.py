"""Every rule of SPEC §1, §3, §4 and §5a about bad input, misuse and ended objects."""
import array
import gc
import json
import os
import sys

import pytest

import velocore
from _helpers import assert_no_signal, run_python

MAX_VALUE = 64 * 1024 * 1024

BAD_OBJECTS = ["text", 5, None, [1, 2], 3.5, {"a": 1}]


def type_named(exc_info, obj):
    msg = str(exc_info.value)
    name = type(obj).__name__
    return name in msg or (obj is None and "None" in msg)


# ---------------------------------------------------------------- key / value types

@pytest.mark.parametrize("bad", BAD_OBJECTS, ids=lambda o: type(o).__name__)
def test_non_bytes_key_rejected(store, bad):
    t = store.table("t")
    with store.txn() as x:
        with pytest.raises(TypeError) as ei:
            x.put(t, bad, b"v")
        assert type_named(ei, bad), str(ei.value)
        with pytest.raises(TypeError) as ei:
            x.get(t, bad)
        assert type_named(ei, bad), str(ei.value)
        with pytest.raises(TypeError) as ei:
            x.delete(t, bad)
        assert type_named(ei, bad), str(ei.value)
    with pytest.raises(TypeError):
        t.put(bad, b"v")
    with pytest.raises(TypeError):
        t.get(bad)
    with pytest.raises(TypeError):
        t[bad] = b"v"
    assert len(t) == 0


@pytest.mark.parametrize("bad", BAD_OBJECTS, ids=lambda o: type(o).__name__)
def test_non_bytes_value_rejected(store, bad):
    t = store.table("t")
    with store.txn() as x:
        with pytest.raises(TypeError) as ei:
            x.put(t, b"k", bad)
        assert type_named(ei, bad), str(ei.value)
    with pytest.raises(TypeError) as ei:
        t.put(b"k", bad)
    assert type_named(ei, bad), str(ei.value)
    with pytest.raises(TypeError):
        t[b"k"] = bad
    assert b"k" not in t


def test_bad_types_in_batches(store):
    t = store.table("t")
    with store.txn() as x:
        with pytest.raises(TypeError):
            x.put_many(t, [(b"a", b"1"), ("b", b"2")])
        with pytest.raises(TypeError):
            x.put_many(t, [(b"a", 5)])
        with pytest.raises(TypeError):
            x.get_many(t, [b"a", 7])
        with pytest.raises(TypeError):
            x.delete_many(t, [None])
        x.abort()


def test_buffers_accepted_as_raw_bytes(store):
    t = store.table("t")
    ints = array.array("i", [1, -2, 3])
    with store.txn() as x:
        x.put(t, bytearray(b"ba"), bytearray(b"bytearray"))
        x.put(t, memoryview(b"mv"), memoryview(b"memoryview"))
        x.put(t, array.array("B", b"arr"), array.array("B", b"array-B"))
        x.put(t, b"ints", ints)
        x.put(t, b"slice", memoryview(b"0123456789")[2:5])
        assert x.get(t, bytearray(b"ba")) == b"bytearray"
        assert x.get(t, array.array("B", b"mv")) == b"memoryview"
    assert t[b"ba"] == b"bytearray"
    assert t[b"mv"] == b"memoryview"
    assert t[b"arr"] == b"array-B"
    assert t[b"ints"] == ints.tobytes()
    assert t[b"slice"] == b"234"
    assert t.get(memoryview(b"arr")) == b"array-B"
    assert memoryview(b"arr") in t


def test_non_contiguous_buffer_never_stored_wrong(store):
    t = store.table("t")
    mv = memoryview(b"0123456789")[::2]
    try:
        t.put(b"k", mv)
    except (TypeError, ValueError, BufferError):
        assert b"k" not in t
    else:
        assert t[b"k"] == b"02468"


def test_mutable_buffer_copied_at_put(store):
    t = store.table("t")
    val = bytearray(b"original")
    key = bytearray(b"key1")
    arr = array.array("B", b"arrval")
    with store.txn() as x:
        x.put(t, key, val)
        x.put(t, b"key2", arr)
        val[:] = b"MUTATED!"
        key[:] = b"keyX"
        arr[0] = ord("Z")
        assert x.get(t, b"key1") == b"original"
        assert x.get(t, b"keyX") is None
        assert x.get(t, b"key2") == b"arrval"
    val[0] = 0
    assert t[b"key1"] == b"original"
    assert t[b"key2"] == b"arrval"
    assert b"keyX" not in t
    big = bytearray(b"q" * 30000)  # overflow-sized value
    t.put(b"big", big)
    big[:5] = b"xxxxx"
    assert t[b"big"] == b"q" * 30000


# ---------------------------------------------------------------- key / value sizes

@pytest.mark.parametrize("key", [b"", b"k" * 1025, b"\x00" * 5000], ids=["empty", "1025", "5000"])
def test_key_length_rules(store, key):
    t = store.table("t")
    t[b"ok"] = b"1"
    with store.txn() as x:
        with pytest.raises(ValueError):
            x.put(t, key, b"v")
        with pytest.raises(ValueError):
            x.get(t, key)
        with pytest.raises(ValueError):
            x.delete(t, key)
        with pytest.raises(ValueError):
            x.get_many(t, [b"ok", key])
        with pytest.raises(ValueError):
            x.put_many(t, [(key, b"v")])
        with pytest.raises(ValueError):
            x.delete_many(t, [key])
        x.abort()
    with store.snapshot() as s:
        with pytest.raises(ValueError):
            s.get(t, key)
    with pytest.raises(ValueError):
        t.put(key, b"v")
    with pytest.raises(ValueError):
        t.get(key)
    with pytest.raises(ValueError):
        t.delete(key)
    with pytest.raises(ValueError):
        t[key] = b"v"
    with pytest.raises(ValueError):
        t[key]
    with pytest.raises(ValueError):
        key in t  # noqa: B015
    assert list(t.items()) == [(b"ok", b"1")]


def test_max_key_length_ok(store_path):
    with velocore.open(store_path) as s:
        t = s.table("t")
        keys = [b"\xff" * 1024, b"\x00" * 1024, b"a" * 1023 + b"b", b"a" * 1024, b"a" * 1000]
        for i, k in enumerate(keys):
            t[k] = b"%d" % i
        for i, k in enumerate(keys):
            assert t[k] == b"%d" % i
        assert list(t.keys()) == sorted(keys)
        assert t.delete(b"a" * 1000) is True
        # many long keys force splits with long separators
        with s.txn() as x:
            for i in range(400):
                x.put(t, (b"%04d" % i) * 256, b"v%d" % i)
        s.checkpoint()
    with velocore.open(store_path) as s:
        t = s.table("t")
        assert t[b"\xff" * 1024] == b"0"
        for i in range(400):
            assert t[(b"%04d" % i) * 256] == b"v%d" % i
        assert s.check()["ok"]


def test_empty_value_ok(store_path):
    with velocore.open(store_path) as s:
        t = s.table("t")
        t[b"e"] = b""
        assert t[b"e"] == b""
        assert b"e" in t
        assert t.get(b"e", b"default") == b""
        assert list(t.items()) == [(b"e", b"")]
    with velocore.open(store_path) as s:
        assert s.table("t")[b"e"] == b""


def test_value_too_large_rejected_nothing_changed(store):
    t = store.table("t")
    t[b"k"] = b"old"
    big = bytes(MAX_VALUE + 1)
    with pytest.raises(ValueError):
        t.put(b"k", big)
    with pytest.raises(ValueError):
        t.put(b"new", big)
    with pytest.raises(ValueError):
        t[b"k"] = big
    with store.txn() as x:
        with pytest.raises(ValueError):
            x.put(t, b"k", big)
        with pytest.raises(ValueError):
            x.put_many(t, [(b"new", big)])
        x.abort()
    del big
    assert t[b"k"] == b"old"
    assert b"new" not in t
    assert len(t) == 1


# ---------------------------------------------------------------- open() options

def test_unknown_open_kwarg(store_path):
    with pytest.raises(TypeError) as ei:
        velocore.open(store_path, bogus=1)
    assert "bogus" in str(ei.value)
    with pytest.raises(TypeError):
        velocore.open(store_path, True)  # readonly is keyword-only
    # nothing was left locked
    velocore.open(store_path).close()


@pytest.mark.parametrize("opt,value", [
    ("sync", "fast"), ("sync", ""), ("cache_mb", -1), ("wal", "x"),
    ("checkpoint_mb", 0), ("checkpoint_mb", -5),
])
def test_bad_option_value(store_path, opt, value):
    with pytest.raises(ValueError) as ei:
        velocore.open(store_path, **{opt: value})
    assert opt in str(ei.value), str(ei.value)
    # a failed open leaves nothing locked
    velocore.open(store_path).close()


@pytest.mark.parametrize("opt,value", [
    ("sync", 1), ("cache_mb", "big"), ("wal", None), ("checkpoint_mb", "1"),
])
def test_bad_option_type(store_path, opt, value):
    with pytest.raises((TypeError, ValueError)) as ei:
        velocore.open(store_path, **{opt: value})
    assert opt in str(ei.value), str(ei.value)


def test_bad_option_in_memory():
    with pytest.raises(ValueError):
        velocore.open(sync="fast")
    with pytest.raises(TypeError):
        velocore.open(nope=True)


def test_readonly_missing_store(tmp_path):
    p = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        velocore.open(p, readonly=True)
    assert not os.path.exists(p)


def test_open_path_is_a_file(tmp_path):
    p = tmp_path / "afile"
    p.write_bytes(b"not a directory")
    with pytest.raises((OSError, velocore.Error)):
        velocore.open(str(p))


# ---------------------------------------------------------------- table names

def test_table_names(store):
    with pytest.raises(ValueError):
        store.table("")
    with pytest.raises(ValueError):
        store.table("x" * 256)
    for bad in (b"users", 5, None, ["a"]):
        with pytest.raises(TypeError):
            store.table(bad)
    name = "y" * 255
    store.table(name).put(b"k", b"v")
    assert name in store.tables()
    assert store.table(name)[b"k"] == b"v"
    assert sorted(store.tables()) == [name]


def test_unknown_table_name(store):
    store.table("exists")
    with store.txn() as x:
        for call in (lambda: x.put("nope", b"k", b"v"), lambda: x.get("nope", b"k"),
                     lambda: x.delete("nope", b"k"), lambda: list(x.range("nope"))):
            with pytest.raises(velocore.NoSuchTableError) as ei:
                call()
            assert isinstance(ei.value, KeyError)
        x.put("exists", b"k", b"v")
    with store.snapshot() as s:
        with pytest.raises(KeyError):
            s.get("nope", b"k")
    assert store.tables() == ["exists"]
    with pytest.raises(velocore.NoSuchTableError):
        store.drop_table("nope")


# ---------------------------------------------------------------- ended objects

def test_store_use_after_close(store_path):
    s = velocore.open(store_path)
    t = s.table("t")
    t[b"k"] = b"v"
    s.close()
    s.close()  # idempotent
    for call in (lambda: s.table("t"), s.tables, s.txn, s.snapshot, s.info, s.checkpoint,
                 lambda: s.drop_table("t"), lambda: s.retry(lambda x: None),
                 lambda: t.get(b"k"), lambda: t.put(b"k", b"v"), lambda: t[b"k"],
                 lambda: len(t), lambda: list(t.items()), lambda: b"k" in t):
        with pytest.raises(velocore.ClosedError):
            call()


def test_context_manager_closes(store_path):
    with velocore.open(store_path) as s:
        s.table("t")
    with pytest.raises(velocore.ClosedError):
        s.txn()
    s.close()
    # the lock was released
    velocore.open(store_path).close()


def test_close_with_live_txns_snapshots_iterators(store_path):
    s = velocore.open(store_path)
    t = s.table("t")
    with s.txn() as x:
        x.put_many(t, [(b"%03d" % i, b"v") for i in range(100)])
    txn = s.txn()
    txn.put(t, b"uncommitted", b"x")
    snap = s.snapshot()
    it = snap.range(t)
    next(it)
    it2 = txn.range(t, keys_only=True)
    next(it2)
    s.close()  # must succeed
    for call in (lambda: txn.get(t, b"000"), lambda: txn.put(t, b"a", b"b"),
                 lambda: snap.get(t, b"000"), lambda: next(it), lambda: next(it2),
                 txn.commit):
        with pytest.raises(velocore.ClosedError):
            call()
    txn.abort()  # abort on an ended txn does nothing
    snap.abort()
    s.close()
    with velocore.open(store_path) as s2:
        assert b"uncommitted" not in s2.table("t")
        assert len(s2.table("t")) == 100


def test_txn_after_end(store):
    t = store.table("t")
    x = store.txn()
    x.put(t, b"a", b"1")
    x.commit()
    with pytest.raises(velocore.ClosedError):
        x.commit()
    x.abort()  # no-op
    x.abort()
    for call in (lambda: x.get(t, b"a"), lambda: x.put(t, b"b", b"2"),
                 lambda: x.delete(t, b"a"), lambda: list(x.range(t)),
                 lambda: x.get_many(t, [b"a"]), lambda: x.put_many(t, [(b"c", b"3")])):
        with pytest.raises(velocore.ClosedError):
            call()
    y = store.txn()
    y.put(t, b"b", b"2")
    y.abort()
    with pytest.raises(velocore.ClosedError):
        y.commit()
    with pytest.raises(velocore.ClosedError):
        y.get(t, b"a")
    assert t[b"a"] == b"1" and b"b" not in t


def test_with_block_after_explicit_commit_no_double_commit(store):
    t = store.table("t")
    with store.txn() as x:
        x.put(t, b"a", b"1")
        x.commit()
        with pytest.raises(velocore.ClosedError):
            x.put(t, b"b", b"2")
    assert t[b"a"] == b"1" and b"b" not in t


def test_snapshot_after_end(store):
    t = store.table("t")
    t[b"a"] = b"1"
    s = store.snapshot()
    it = s.range(t)
    s.abort()
    s.abort()
    with pytest.raises(velocore.ClosedError):
        s.get(t, b"a")
    with pytest.raises(velocore.ClosedError):
        list(s.range(t))
    with pytest.raises(velocore.ClosedError):
        next(it)
    with store.snapshot() as s2:
        pass
    with pytest.raises(velocore.ClosedError):
        s2.get(t, b"a")


# ---------------------------------------------------------------- read-only

def test_writes_on_snapshot_rejected(store):
    t = store.table("t")
    t[b"a"] = b"1"
    with store.snapshot() as s:
        for call in (lambda: s.put(t, b"a", b"2"), lambda: s.delete(t, b"a"),
                     lambda: s.put_many(t, [(b"b", b"2")]), lambda: s.delete_many(t, [b"a"])):
            with pytest.raises(velocore.ReadOnlyError):
                call()
        assert s.get(t, b"a") == b"1"
    assert t[b"a"] == b"1" and b"b" not in t


def test_writes_on_readonly_store_rejected(store_path):
    with velocore.open(store_path) as s:
        s.table("t").put(b"a", b"1")
    with velocore.open(store_path, readonly=True) as ro:
        t = ro.table("t")
        with pytest.raises(velocore.ReadOnlyError):
            t.put(b"a", b"2")
        with pytest.raises(velocore.ReadOnlyError):
            t[b"b"] = b"2"
        with pytest.raises(velocore.ReadOnlyError):
            del t[b"a"]
        with pytest.raises(velocore.ReadOnlyError):
            t.delete(b"a")
        with pytest.raises(velocore.ReadOnlyError):
            with ro.txn() as x:
                x.put(t, b"a", b"3")
        with pytest.raises(velocore.ReadOnlyError):
            ro.drop_table("t")
        with pytest.raises((velocore.ReadOnlyError, velocore.NoSuchTableError)):
            ro.table("brand_new")
        with pytest.raises(velocore.ReadOnlyError):
            ro.retry(lambda x: x.put(t, b"a", b"4"))
        assert t[b"a"] == b"1"
        assert ro.tables() == ["t"]
    with velocore.open(store_path) as s:
        assert list(s.table("t").items()) == [(b"a", b"1")]


# ---------------------------------------------------------------- locking

def test_second_open_same_process_locked(store_path):
    s = velocore.open(store_path)
    try:
        with pytest.raises(velocore.LockedError):
            velocore.open(store_path)
        with pytest.raises(velocore.LockedError):
            velocore.open(store_path, readonly=True)
        # the failed opens did not break the first handle
        s.table("t").put(b"k", b"v")
        assert s.table("t")[b"k"] == b"v"
    finally:
        s.close()
    with velocore.open(store_path) as s2:
        assert s2.table("t")[b"k"] == b"v"


def test_second_open_via_other_path_spelling(store_path):
    s = velocore.open(store_path)
    try:
        other = os.path.join(os.path.dirname(store_path), ".", os.path.basename(store_path))
        with pytest.raises(velocore.LockedError):
            velocore.open(other)
        link = store_path + "-link"
        os.symlink(store_path, link)
        with pytest.raises(velocore.LockedError):
            velocore.open(link)
        with pytest.raises(velocore.LockedError):
            velocore.open(link, readonly=True)
    finally:
        s.close()


CHILD_OPEN = r"""
import sys, velocore
path, ro = sys.argv[1], sys.argv[2] == "1"
try:
    s = velocore.open(path, readonly=ro)
except velocore.LockedError as e:
    print("LockedError")
    sys.exit(0)
except Exception as e:
    print("other", type(e).__name__, e)
    sys.exit(0)
print("opened")
s.close()
"""


def test_open_from_other_process_locked(store_path):
    s = velocore.open(store_path)
    try:
        s.table("t").put(b"k", b"v")
        for ro in ("0", "1"):
            p = run_python(CHILD_OPEN, store_path, ro)
            assert_no_signal(p)
            assert p.stdout.strip() == "LockedError", (p.stdout, p.stderr)
    finally:
        s.close()
    p = run_python(CHILD_OPEN, store_path, "0")
    assert_no_signal(p)
    assert p.stdout.strip() == "opened", (p.stdout, p.stderr)


HOLDER = r"""
import sys, time, velocore
s = velocore.open(sys.argv[1])
s.table("t").put(b"k", b"v")
print("ready", flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
"""


def test_other_process_holds_lock(store_path):
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", HOLDER, store_path], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(velocore.LockedError):
            velocore.open(store_path)
        with pytest.raises(velocore.LockedError):
            velocore.open(store_path, readonly=True)
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "closed"
        p.wait(60)
        with velocore.open(store_path) as s:
            assert s.table("t")[b"k"] == b"v"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_lock_released_when_owner_killed(store_path):
    import signal
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", HOLDER, store_path], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    with velocore.open(store_path) as s:  # a stale LOCK file must not block
        assert s.table("t")[b"k"] == b"v"


def test_unclosed_store_released_by_gc(store_path):
    """A Store dropped without close() releases its lock; committed data is kept."""
    s = velocore.open(store_path)
    s.table("t").put(b"k", b"v")
    del s
    gc.collect()
    with velocore.open(store_path) as s2:
        assert s2.table("t")[b"k"] == b"v"


TEMP_OBJECTS = r"""
import json, sys, velocore
s = velocore.open(sys.argv[1])
t = s.table("t")
with s.txn() as x:
    x.put_many(t, [(b"%04d" % i, b"v%d" % i) for i in range(2000)])
out = {}
try:
    out["snap_range"] = len(list(s.snapshot().range(t)))
except velocore.ClosedError:
    out["snap_range"] = "closed"
try:
    it = s.txn().range(t, keys_only=True)
    import gc; gc.collect()
    out["txn_range"] = len(list(it))
except velocore.ClosedError:
    out["txn_range"] = "closed"
x = s.txn()
x.put(t, b"tmp", b"1")
it = x.range(t)
del x
import gc; gc.collect()
try:
    out["orphan_iter"] = len(list(it))
except velocore.ClosedError:
    out["orphan_iter"] = "closed"
del it
gc.collect()
s.close()
s = velocore.open(sys.argv[1])
out["tmp_committed"] = s.table("t").get(b"tmp") is not None
s.close()
print(json.dumps(out))
"""


def test_temporary_txn_and_iterator_objects(tmp_path):
    """list(store.snapshot().range(t)) and friends: correct data or ClosedError, never a
    crash; an unreferenced transaction never commits."""
    p = run_python(TEMP_OBJECTS, str(tmp_path / "s"))
    assert_no_signal(p)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["snap_range"] in (2000, "closed"), out
    assert out["txn_range"] in (2000, "closed"), out
    assert out["orphan_iter"] in (2001, "closed"), out
    assert out["tmp_committed"] is False, out


def test_open_accepts_pathlike(tmp_path):
    p = tmp_path / "pl"
    with velocore.open(p) as s:
        s.table("t").put(b"k", b"v")
        assert os.path.abspath(str(s.path)) == os.path.abspath(str(p))
    with velocore.open(str(p), readonly=True) as s:
        assert s.table("t")[b"k"] == b"v"

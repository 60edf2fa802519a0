"""The log's zeroed region: with sync "full" or "normal" the last segment extends past its
last record with zeros written ahead, so a commit's fdatasync overwrites allocated blocks
instead of growing the file.  Recovery reads the zeros as the torn tail it cuts off; a
segment that is not the last never keeps them; sizes that mean "log bytes" count records.
"""
import os
import threading
import time

import pytest

import velocore
from _helpers import (assert_no_signal, run_python, wal_records, wal_segments, wal_tail)

# Commit n single-put transactions, then leave without closing (the zeros stay).
COMMIT_EXIT = r"""
import json, os, sys, velocore
path, sync, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = velocore.open(path, sync=sync)
t = s.table("t")
for i in range(n):
    t[b"k%06d" % i] = b"v%d" % i * (1 + i % 40)
print(json.dumps(s.info()["log_zeroed_bytes"]), flush=True)
os._exit(0)
"""


def expected(n):
    return {b"k%06d" % i: b"v%d" % i * (1 + i % 40) for i in range(n)}


def commit_exit(path, sync, n):
    p = run_python(COMMIT_EXIT, path, sync, n)
    assert_no_signal(p)
    assert p.returncode == 0, p.stderr[-4000:]
    return int(p.stdout.strip())


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_durable_commits_leave_zeros_past_the_last_record(store_path, sync):
    zeroed = commit_exit(store_path, sync, 600)
    assert zeroed > 0
    (seg,) = wal_segments(store_path)
    end, size, zeros = wal_tail(seg)
    assert len(wal_records(seg)) == 601          # the table's creation and 600 puts
    assert size > end and zeros, (end, size)
    assert size % 4096 == 0                      # the region ends on a block boundary
    # a read-only open replays through the zeros and changes nothing
    with velocore.open(store_path, readonly=True) as s:
        assert dict(s.table("t").items()) == expected(600)
        assert s.info()["log_bytes"] == end
    assert wal_tail(seg)[1] == size
    # a read-write open recovers exactly the commits and cuts the zeros off
    with velocore.open(store_path, sync=sync) as s:
        assert dict(s.table("t").items()) == expected(600)
        assert s.info()["log_bytes"] == end
        assert os.path.getsize(seg) == end
        s.table("t")[b"after"] = b"reopen"       # zeros ahead again
        end2, size2, zeros2 = wal_tail(seg)
        assert end2 > end and size2 > end2 and zeros2
        assert s.info()["log_bytes"] == end2
    with velocore.open(store_path) as s:
        assert s.table("t")[b"after"] == b"reopen"
        assert len(s.table("t")) == 601
        assert s.check()["ok"]


def test_sync_off_writes_no_zeros(store_path):
    assert commit_exit(store_path, "off", 300) == 0
    (seg,) = wal_segments(store_path)
    end, size, _ = wal_tail(seg)
    assert size == end
    with velocore.open(store_path, sync="off") as s:
        t = s.table("t")
        assert len(t) == 300
        for i in range(200):
            t[b"more%d" % i] = b"x" * 50
        assert s.info()["log_zeroed_bytes"] == 0
        end, size, _ = wal_tail(wal_segments(store_path)[-1])
        assert size == end and s.info()["log_bytes"] == end


def test_in_memory_store_reports_no_zeros():
    with velocore.open() as s:
        s.table("t")[b"a"] = b"b"
        assert s.info()["log_zeroed_bytes"] == 0 and s.info()["log_bytes"] == 0


def test_records_over_a_mebibyte_are_appended_without_zeros(store_path):
    with velocore.open(store_path) as s:
        t = s.table("t")
        t[b"small"] = b"x"
        before = s.info()["log_zeroed_bytes"]
        assert before > 0
        seg = wal_segments(store_path)[-1]
        t[b"big"] = b"B" * (3 << 20)              # one record past the zeroed region
        end, size, _ = wal_tail(seg)
        assert s.info()["log_zeroed_bytes"] == before and size == end
        t[b"small2"] = b"y"                       # a small one zeros ahead again
        end, size, zeros = wal_tail(seg)
        assert s.info()["log_zeroed_bytes"] > before and size > end and zeros
    with velocore.open(store_path) as s:
        assert s.table("t")[b"big"] == b"B" * (3 << 20)


def test_checkpoint_trigger_counts_log_records_not_zeros(store_path):
    """checkpoint_mb=1: ~600 KiB of records (over 1 MiB of file with the zeros) must not
    start a checkpoint; going past 1 MiB of records must."""
    with velocore.open(store_path, checkpoint_mb=1) as s:
        t = s.table("t")
        i = 0
        while s.info()["log_bytes"] < 600 << 10:
            t[b"k%06d" % i] = b"v" * 400
            i += 1
        seg = wal_segments(store_path)[-1]
        assert os.path.getsize(seg) > 1 << 20, "the zeros should take the file past 1 MiB"
        time.sleep(0.3)
        assert s.info()["checkpoints"] == 0
        # past 1 MiB of records (the checkpoint, once started, shrinks log_bytes)
        while s.info()["checkpoints"] == 0 and s.info()["log_bytes"] < (1 << 20) + (100 << 10):
            t[b"k%06d" % i] = b"v" * 400
            i += 1
        deadline = time.monotonic() + 30
        while s.info()["checkpoints"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.info()["checkpoints"] >= 1


@pytest.mark.usefixtures("no_bulk")
@pytest.mark.parametrize("sync", ["full", "normal"])
def test_rotation_cuts_the_old_segment_to_its_last_record(store_path, sync):
    """While a checkpoint merges, the segment it rotated away from is already cut to its
    last record: only the last segment may end in zeros (recovery is strict elsewhere)."""
    s = velocore.open(store_path, sync=sync, checkpoint_mb=1024)
    try:
        t = s.table("t")
        # a memtable big enough that the checkpoint's merge takes a while
        for j in range(20):
            with s.txn() as x:
                x.put_many(t, [(b"k%08d" % (j * 5000 + i), b"v" * 40) for i in range(5000)])
        for i in range(50):
            t[b"small%d" % i] = b"x"
        (seg,) = wal_segments(store_path)
        end, size, zeros = wal_tail(seg)
        assert size > end and zeros
        seen = {}
        th = threading.Thread(target=s.checkpoint)
        th.start()
        while th.is_alive():
            segs = wal_segments(store_path)
            for p in segs[:-1]:
                try:
                    seen[p] = wal_tail(p)[:2]
                except FileNotFoundError:     # removed by the checkpoint meanwhile
                    pass
        th.join()
        assert seen, "never saw two segments during the checkpoint"
        for p, (e, sz) in seen.items():
            assert e == sz == end, (p, e, sz, end)
        # the checkpoint removed it; the new segment holds only its header
        assert wal_segments(store_path) != [seg]
        for i in range(20):
            t[b"after%d" % i] = b"y"
    finally:
        s.close()
    with velocore.open(store_path) as s:
        assert len(s.table("t")) == 100_000 + 50 + 20


def _flip(fname, offset):
    with open(fname, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_bad_record_followed_by_good_ones_before_the_zeros_is_corruption(store_path, readonly):
    commit_exit(store_path, "full", 200)
    (seg,) = wal_segments(store_path)
    recs = wal_records(seg)
    end, size, zeros = wal_tail(seg)
    assert size > end and zeros
    start, stop = recs[len(recs) // 2]
    _flip(seg, (start + stop) // 2)
    with pytest.raises(velocore.CorruptionError, match=os.path.basename(seg)):
        velocore.open(store_path, readonly=readonly)
    assert os.path.getsize(seg) == size        # nothing was cut away


def test_bad_last_record_before_the_zeros_is_a_torn_tail(store_path):
    commit_exit(store_path, "full", 200)
    (seg,) = wal_segments(store_path)
    start, stop = wal_records(seg)[-1]
    _flip(seg, (start + stop) // 2)
    with velocore.open(store_path) as s:
        assert dict(s.table("t").items()) == expected(199)
        assert os.path.getsize(seg) == start


def test_recovery_through_a_long_zero_tail_is_quick(store_path):
    """A last segment that ends in many MiB of zeros (more than is ever written ahead)
    still opens, and the torn-tail scan over it takes little time."""
    commit_exit(store_path, "full", 50)
    (seg,) = wal_segments(store_path)
    end, size, _ = wal_tail(seg)
    with open(seg, "r+b") as f:
        f.truncate(size + (16 << 20))
    t0 = time.perf_counter()
    with velocore.open(store_path, readonly=True) as s:
        assert len(s.table("t")) == 50
    took = time.perf_counter() - t0
    assert took < 5, took                     # generous: ~17 MiB of zeros to scan
    with velocore.open(store_path) as s:
        assert len(s.table("t")) == 50
        assert os.path.getsize(seg) == end


# A small commit, then one whose record passes 1 MiB (streamed: its pieces first, its
# header last), then exit without closing.
STREAMED_EXIT = r"""
import os, sys, velocore, velocore._store
velocore._store._set_bulk_loads(False)     # the load is logged key by key: one big record
s = velocore.open(sys.argv[1], sync=sys.argv[2], checkpoint_mb=1000)
t = s.table("t")
t[b"small"] = b"before"
with s.txn() as x:
    x.put_many(t, [(b"big%05d" % i, b"%05d" % i * 60) for i in range(8000)])
os._exit(0)
"""


@pytest.mark.parametrize("sync", ["full", "off"])
@pytest.mark.parametrize("cut", ["header-only", "mid-payload", "first-piece"])
def test_streamed_record_without_its_header_is_a_torn_tail(store_path, sync, cut):
    """A kill while a streamed record is written leaves its pieces, or some of them, with
    zeros where its header goes: recovery cuts it off as a torn tail, keeps the commits
    before it, and the log takes new records at that place."""
    p = run_python(STREAMED_EXIT, store_path, sync)
    assert_no_signal(p)
    assert p.returncode == 0, p.stderr[-4000:]
    (seg,) = wal_segments(store_path)
    start, end = wal_records(seg)[-1]
    assert end - start > 1 << 20, "the last record should be streamed"
    with open(seg, "r+b") as f:
        f.seek(start)
        f.write(bytes(32))                       # the header not written yet
        if cut == "mid-payload":
            f.truncate(start + 32 + (end - start) // 2)
        elif cut == "first-piece":
            f.truncate(start + 32 + 4096)
    with velocore.open(store_path, sync=sync) as s:
        t = s.table("t")
        assert dict(t.items()) == {b"small": b"before"}
        assert os.path.getsize(seg) <= start or wal_tail(seg)[0] == start
        t[b"after"] = b"reopen"
    with velocore.open(store_path) as s:
        assert dict(s.table("t").items()) == {b"small": b"before", b"after": b"reopen"}
        assert s.check()["ok"]

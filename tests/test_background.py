"""Automatic checkpoints run in a background thread and keep the log bounded."""
import os
import time

import velocore
from _helpers import churn_with_checkpoints, run_threads_for


def test_log_stays_bounded_by_background_checkpoints(tmp_path):
    path = str(tmp_path / "s")
    store = velocore.open(path, sync="off", checkpoint_mb=1)
    tab = store.table("t")
    value = os.urandom(2000)
    biggest_log = 0
    for i in range(3000):                       # ~6 MB of commits, 2 KB each
        with store.txn() as t:
            t.put(tab, b"k%06d" % (i % 500), value + b"%d" % i)
        biggest_log = max(biggest_log, store.info()["log_bytes"])
    info = store.info()
    assert info["checkpoints"] >= 1
    # backpressure: committers wait once the log is 4x checkpoint_mb behind
    assert biggest_log < 4 * 1048576 + 64 * 1024
    for i in range(2500, 3000):
        assert tab[b"k%06d" % (i % 500)] == value + b"%d" % i
    store.close()
    store = velocore.open(path)
    assert len(store.table("t")) == 500
    assert store.check()["ok"]
    store.close()


def test_background_checkpoints_in_memory_store():
    store = velocore.open(None, checkpoint_mb=1)
    tab = store.table("t")
    value = os.urandom(3000)
    # distinct keys: overwrites of a few keys would be pruned by the version GC and keep
    # the memtable too small to ever need a checkpoint
    for i in range(2000):
        with store.txn() as t:
            t.put(tab, b"k%06d" % i, value)
    # a writer waits for the checkpointer only once it has fallen 4x behind, and goes on
    # as soon as a checkpoint starts: on a busy machine the first may still be running
    deadline = time.monotonic() + 30
    while store.info()["checkpoints"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.info()["checkpoints"] >= 1
    assert len(tab) == 2000
    assert store.check()["ok"]
    store.close()


def test_many_live_snapshots_beyond_registration_slots(tmp_path):
    # Transactions register in lock-free slots; past 1024 live ones they use a locked
    # list.  Both kinds must pin what they read across checkpoints and be counted.
    store = velocore.open(str(tmp_path / "s"), sync="off")
    tab = store.table("t")
    snaps = []
    for i in range(1500):
        tab.put(b"key", b"%d" % i)
        snaps.append(store.snapshot())
        if i % 300 == 299:
            store.checkpoint()
    info = store.info()
    assert info["active_transactions"] == 1500
    assert info["oldest_snapshot_ts"] is not None
    for i, s in enumerate(snaps):
        assert s.get(tab, b"key") == b"%d" % i
    for s in snaps:
        s.abort()
    store.checkpoint()
    with store.snapshot():
        info = store.info()
    assert info["active_transactions"] == 1
    assert info["memtables"] <= 2
    assert store.check()["ok"]
    store.close()


def test_tiny_cache_under_concurrent_readers_writer_and_checkpoints(tmp_path):
    # Hits pin frames without a lock while misses evict and checkpoints rewrite freed
    # pages: a reader must never get another page's bytes.  Values name their key.
    import random
    import threading
    store = velocore.open(str(tmp_path / "s"), sync="off", cache_mb=1)
    tab = store.table("t")
    keys = [b"k%06d" % i for i in range(12000)]

    def value(k, gen):
        return k + b":%d:" % gen + bytes(900)

    with store.txn() as t:
        t.put_many(tab, [(k, value(k, 0)) for k in keys])
    store.checkpoint()
    stop = threading.Event()
    bad = []
    errors = []

    def reader(seed):
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                with store.snapshot() as s:
                    sample = rnd.sample(keys, 200)
                    for k, v in zip(sample, s.get_many(tab, sample)):
                        if v is None or not v.startswith(k + b":"):
                            bad.append((k, v[:20] if v else v))
                    start = rnd.choice(keys)
                    for k, v in s.range(tab, start, None):
                        if not v.startswith(k + b":"):
                            bad.append((k, v[:20]))
                        if k > start + b"\xff" or len(bad) > 5:
                            break
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def writer():
        churn_with_checkpoints(store, tab, keys, value, stop, errors, seed=99, per_txn=300)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=writer))
    run_threads_for(threads, 6, stop)
    assert errors == []
    assert bad == []
    info = store.info()
    assert info["cache_misses"] > 0 and info["cache_hits"] > 0
    assert store.check()["ok"]
    store.close()

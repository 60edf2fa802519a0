"""Automatic checkpoints run in a background thread and keep the log bounded."""
import os

import velocore


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
    for i in range(2000):
        with store.txn() as t:
            t.put(tab, b"k%06d" % (i % 300), value)
    assert store.info()["checkpoints"] >= 1
    assert len(tab) == 300
    assert store.check()["ok"]
    store.close()

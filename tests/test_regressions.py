"""Regression tests for engine bugs found by the randomized suites."""
import os
import threading

import pytest

import velocore


@pytest.mark.parametrize("on_disk", [False, True])
def test_conflict_seen_across_checkpoint(tmp_path, on_disk):
    # A write committed after t began, then folded into the tree by a checkpoint, must
    # still make t's write to the same key conflict (an empty fresh memtable sits in front).
    store = velocore.open(str(tmp_path / "s") if on_disk else None)
    beta = store.table("beta")
    t = store.txn()
    beta.put(b"\x00", b"")
    store.checkpoint()
    t.delete(beta, b"\x00")
    with pytest.raises(velocore.ConflictError):
        t.commit()
    assert beta.get(b"\x00") == b""
    store.close()


def test_checkpoint_packs_large_entries_under_concurrent_commits(tmp_path):
    # Leaves holding near-maximal inline entries once overflowed a page while being packed.
    store = velocore.open(str(tmp_path / "s"), sync="off", checkpoint_mb=1)
    tab = store.table("t")
    sizes = [0, 8, 100, 1000, 1100, 5000, 15000]
    errors = []

    def worker(k):
        try:
            for i in range(600):
                with store.txn() as x:
                    for j in range(5):
                        x.put(tab, b"k%d-%d" % (k, j), os.urandom(sizes[(i + j) % len(sizes)]))
                    x.put(tab, b"T%d-%06d" % (k, i), b"v" * (1100 + i % 90))
                if k == 0 and i % 40 == 0:
                    store.checkpoint()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    store.checkpoint()
    assert len(tab) == 3 * 5 + 3 * 600
    report = store.check()
    assert report["ok"], report["errors"]
    for k in range(3):
        for i in range(0, 600, 37):
            assert tab[b"T%d-%06d" % (k, i)] == b"v" * (1100 + i % 90)
    store.close()

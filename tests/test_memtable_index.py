"""Searches of a big memtable through its index.

Once a shared memtable holds a few thousand nodes, searches start from a sorted sample of
its tall nodes (rebuilt as it doubles) instead of from the skip list's head: the grouped
searches of put_many, the search of every other write, point reads and range seeks.  The
tests here fill one memtable far past several rebuilds (no checkpoint runs: checkpoint_mb
is large) with keys that sort in the ways the sample's key prefixes can get wrong: keys
sharing their first 8 bytes, keys shorter than 8 bytes, keys that are a prefix of
others, and keys between and around sampled ones.  Every answer is checked against a dict
model, before and after a checkpoint folds the memtable into the tree.
"""
import bisect
import itertools
import random
import threading


import velocore

N_KEYS = 60_000        # the index is first built at 4,096 nodes, then at 8k, 16k, 32k


def mixed_keys(n, rnd):
    """n distinct keys: random 16-byte keys, groups sharing their first 8 bytes, short keys,
    and keys that are prefixes of others."""
    keys = set()
    while len(keys) < n:
        r = rnd.random()
        if r < 0.5:
            keys.add(rnd.randbytes(8) + rnd.randbytes(8))
        elif r < 0.75:
            # one of 64 shared 8-byte heads: many keys with equal prefixes
            keys.add(bytes([rnd.randrange(64)]) * 8 + rnd.randbytes(rnd.randrange(0, 6)))
        elif r < 0.9:
            keys.add(rnd.randbytes(rnd.randrange(1, 8)))
        else:
            base = rnd.randbytes(rnd.randrange(1, 12))
            keys.add(base)
            keys.add(base + b"\x00")
            keys.add(base + b"\x00\x00" + rnd.randbytes(3))
    return list(keys)


def value(key, gen):
    return b"%d:" % gen + key[:24]


def check_model(store, tbl, model, rnd, probes=4000):
    order = sorted(model)
    with store.snapshot() as s:
        # every key, and the scan in both directions
        assert s.count(tbl) == len(model)
        got = s.get_many(tbl, order)
        assert got == [model[k] for k in order]
        assert list(s.range(tbl, keys_only=True)) == order
        assert list(s.range(tbl, reverse=True, keys_only=True)) == order[::-1]
        # per-op gets of present and absent keys
        for key in rnd.sample(order, min(probes, len(order))):
            assert s.get(tbl, key) == model[key]
        for _ in range(probes):
            key = rnd.randbytes(rnd.randrange(1, 17))
            assert s.get(tbl, key) == model.get(key)
        # seeks from anywhere: present keys, keys between, keys one byte longer
        for _ in range(probes // 4):
            start = rnd.choice(order)
            if rnd.random() < 0.5:
                start = start + b"\x00" if rnd.random() < 0.5 else start[:-1] or b"\x00"
            i = bisect.bisect_left(order, start)
            want = order[i:i + 5]
            assert list(itertools.islice(s.range(tbl, start, keys_only=True), 5)) == want
            back = s.range(tbl, None, start, reverse=True, keys_only=True)
            assert list(itertools.islice(back, 5)) == order[max(0, i - 5):i][::-1]


def test_big_memtable_matches_a_model(tmp_path):
    rnd = random.Random(11)
    store = velocore.open(str(tmp_path / "s"), sync="off", checkpoint_mb=4096)
    try:
        tbl = store.table("t")
        keys = mixed_keys(N_KEYS, rnd)
        model = {}
        # scattered batches (the grouped searches), per-op writes (the plain search),
        # overwrites and deletes of keys already there
        for gen, lo in enumerate(range(0, len(keys), 2000)):
            chunk = keys[lo:lo + 2000]
            with store.txn() as t:
                if gen % 3 == 0:
                    for key in chunk:
                        t.put(tbl, key, value(key, gen))
                else:
                    t.put_many(tbl, [(key, value(key, gen)) for key in chunk])
                for key in chunk:
                    model[key] = value(key, gen)
                old = rnd.sample(sorted(model), 200)
                for key in old[:100]:
                    t.put(tbl, key, value(key, -gen))
                    model[key] = value(key, -gen)
                t.delete_many(tbl, old[100:150])
                for key in old[100:150]:
                    del model[key]
        info = store.info()
        assert info["checkpoints"] == 0 and info["memtables"] == 1
        check_model(store, tbl, model, rnd)
        # the same answers once the memtable is folded into the tree
        store.checkpoint()
        check_model(store, tbl, model, rnd, probes=500)
    finally:
        store.close()
    # and after reopening
    store = velocore.open(str(tmp_path / "s"), sync="off", checkpoint_mb=4096)
    try:
        check_model(store, store.table("t"), model, rnd, probes=500)
    finally:
        store.close()


def test_index_survives_a_checkpoint_that_freezes_it(tmp_path):
    """Reads of a frozen memtable (the checkpoint folding it) use its index too, and the
    next memtable builds its own."""
    rnd = random.Random(12)
    store = velocore.open(str(tmp_path / "s"), sync="off", checkpoint_mb=4096)
    try:
        tbl = store.table("t")
        model = {}
        for round_ in range(3):
            batch = {rnd.randbytes(12): rnd.randbytes(20) for _ in range(20_000)}
            for lo in range(0, 20_000, 5000):
                part = list(batch.items())[lo:lo + 5000]
                with store.txn() as t:
                    t.put_many(tbl, part)
            model.update(batch)
            snap = store.snapshot()
            store.checkpoint()
            # the snapshot reads as of before the checkpoint, from the retired memtable
            probe = rnd.sample(sorted(model), 2000)
            assert snap.get_many(tbl, probe) == [model[k] for k in probe]
            snap.abort()
        check_model(store, tbl, model, rnd, probes=1000)
    finally:
        store.close()


def test_writers_and_readers_on_a_growing_memtable(tmp_path):
    """Threads insert scattered keys through both write paths while the memtable grows
    past several rebuilds of its index; readers meanwhile look up keys already committed.
    Every key committed is there at the end, with its value, in order."""
    store = velocore.open(str(tmp_path / "s"), sync="off", checkpoint_mb=4096)
    tbl = store.table("t")
    n_writers, per_writer = 4, 15_000
    committed = [[] for _ in range(n_writers)]     # each writer's committed chunks, in order
    stop = threading.Event()
    errors = []
    reads = [0]

    def writer(w):
        rnd = random.Random(100 + w)
        keys = [rnd.randbytes(6) + bytes([w]) + rnd.randbytes(rnd.randrange(0, 6))
                for _ in range(per_writer)]
        for lo in range(0, per_writer, 500):
            chunk = [(k, value(k, w)) for k in keys[lo:lo + 500]]

            def fn(t, chunk=chunk):
                if lo % 1000 == 0:
                    t.put_many(tbl, chunk)
                else:
                    for k, v in chunk:
                        t.put(tbl, k, v)
            store.retry(fn)
            committed[w].append(chunk)

    def reader():
        rnd = random.Random(7)
        try:
            while not stop.is_set():
                chunks = committed[rnd.randrange(n_writers)]
                if not chunks:
                    continue
                items = chunks[-1][:300]
                with store.snapshot() as s:
                    for k, v in items:
                        got = s.get(tbl, k)
                        if got != v:
                            errors.append((k, v, got))
                            return
                    got = s.get_many(tbl, [k for k, _ in items])
                    if got != [v for _, v in items]:
                        errors.append(("get_many", len(items)))
                        return
                reads[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for th in readers:
        th.start()
    try:
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(n_writers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
            assert not th.is_alive()
    finally:
        stop.set()
        for th in readers:
            th.join(60)
    try:
        assert errors == []
        assert reads[0] > 0
        model = {}
        for chunks in committed:
            for chunk in chunks:
                model.update(chunk)
        assert sum(map(len, committed)) == n_writers * per_writer // 500
        assert store.info()["checkpoints"] == 0
        check_model(store, tbl, model, random.Random(8), probes=2000)
    finally:
        store.close()

"""Page-cache misses from several threads at once (cache_mb=1, so nearly every lookup
misses): a miss reads its page without the cache mutex, a second miss on the same page
waits for that load instead of reading it again, and a failed load leaves nothing
pinned or stuck.  Every value encodes its key, so a frame holding the wrong page shows.
"""
import json
import os
import random
import shutil
import threading

import pytest

import velocore
from _helpers import assert_no_signal, run_python

N_KEYS = 300_000
PAGE = 4096


def key(i):
    return b"key%013d" % i


def value(i, gen=0):
    # encodes the key (and the generation that wrote it); ~50 bytes
    return key(i) + b"|%d|" % gen + b"v" * (i % 23)


def value_ok(i, v):
    return v is not None and v.startswith(key(i) + b"|")


def run_threads(targets):
    """Run each callable in its own thread, started together; re-raise the first error."""
    barrier = threading.Barrier(len(targets))
    errors = []

    def wrap(fn):
        try:
            barrier.wait()
            fn()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ths = [threading.Thread(target=wrap, args=(fn,)) for fn in targets]
    for th in ths:
        th.start()
    for th in ths:
        th.join(timeout=600)
        assert not th.is_alive(), "a reader thread hangs"
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """A closed, checkpointed store of N_KEYS keys (about 5000 leaves: 20 MB)."""
    path = str(tmp_path_factory.mktemp("pager") / "big")
    with velocore.open(path, sync="off", checkpoint_mb=256) as s:
        t = s.table("t")
        for lo in range(0, N_KEYS, 50_000):
            with s.txn() as x:
                x.put_many(t, [(key(i), value(i)) for i in range(lo, min(N_KEYS, lo + 50_000))])
        s.checkpoint()
    return path


@pytest.fixture
def big_copy(big_store, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(big_store, dst)
    return dst


def test_readers_writer_and_checkpoints_with_a_tiny_cache(big_copy):
    """3 readers (get_many and per-key get) against a writer that commits and
    checkpoints (pages freed and reused under the readers): every value right."""
    s = velocore.open(big_copy, cache_mb=1, sync="off", checkpoint_mb=256)
    try:
        t = s.table("t")
        latest = {}
        stats = {"commits": 0, "checkpoints": 0, "readers": 3}
        lock = threading.Lock()

        def reader(seed):
            rnd = random.Random(seed)
            try:
                for _ in range(150):
                    ids = [rnd.randrange(N_KEYS) for _ in range(1000)]
                    with s.snapshot() as snap:
                        got = snap.get_many(t, [key(i) for i in ids])
                        for i, v in zip(ids, got):
                            assert value_ok(i, v), (i, v)
                    for _ in range(30):
                        i = rnd.randrange(N_KEYS)
                        v = t.get(key(i))
                        assert value_ok(i, v), (i, v)
            finally:
                with lock:
                    stats["readers"] -= 1

        def writer():
            rnd = random.Random(99)
            gen = 0
            while stats["readers"] > 0 or stats["checkpoints"] < 2:
                gen += 1
                batch = {rnd.randrange(N_KEYS): gen for _ in range(300)}
                with s.txn() as x:
                    x.put_many(t, sorted((key(i), value(i, g)) for i, g in batch.items()))
                latest.update(batch)
                stats["commits"] += 1
                if gen % 3 == 0:
                    s.checkpoint()
                    stats["checkpoints"] += 1

        run_threads([lambda seed=seed: reader(seed) for seed in (1, 2, 3)] + [writer])
        assert stats["checkpoints"] >= 2
        ids = list(range(N_KEYS))
        with s.snapshot() as snap:
            got = snap.get_many(t, [key(i) for i in ids])
        wrong = [i for i, v in zip(ids, got) if v != value(i, latest.get(i, 0))]
        assert wrong == [], "%d wrong values, first %r" % (len(wrong), wrong[:5])
        assert s.info()["cache_misses"] > 1000
        assert s.check()["ok"]
    finally:
        s.close()


def test_disjoint_halves_from_two_threads(big_store):
    """Two threads read disjoint halves of the keys (even / odd, each in random order)
    with get_many at the same time, cache_mb=1: both finish with exactly the right
    values.  The halves share their leaves, so the threads often miss on the same page
    together and one waits for the other's load."""
    with velocore.open(big_store, readonly=True, cache_mb=1) as s:
        t = s.table("t")
        results = {}
        before = s.info()["cache_misses"]

        def half(which):
            ids = list(range(which, N_KEYS, 2))
            random.Random(which).shuffle(ids)
            with s.snapshot() as snap:
                got = snap.get_many(t, [key(i) for i in ids])
            results[which] = [i for i, v in zip(ids, got) if v != value(i)]

        run_threads([lambda: half(0), lambda: half(1)])
        assert results == {0: [], 1: []}
        # get_many visits keys in key order, so each pass loads every leaf (far more
        # than the 256 frames of cache_mb=1) about once, not once per key
        assert s.info()["cache_misses"] - before > N_KEYS // 100


def test_same_page_is_loaded_once(big_store):
    """Two threads missing on the same pages at the same time must share one load: with
    a cache big enough to hold everything, the misses equal one thread's alone."""
    rnd = random.Random(5)
    ids = [rnd.randrange(N_KEYS) for _ in range(20_000)]
    keys = [key(i) for i in ids]

    def misses(nthreads):
        with velocore.open(big_store, readonly=True, cache_mb=64) as s:
            t = s.table("t")
            bad = []

            def run():
                with s.snapshot() as snap:
                    got = snap.get_many(t, keys)
                bad.extend(i for i, v in zip(ids, got) if v != value(i))

            run_threads([run] * nthreads)
            assert bad == []
            return s.info()["cache_misses"]

    one = misses(1)
    assert misses(2) == one
    assert misses(3) == one


# ---------------------------------------------------------------- a damaged page

CORRUPT_CHILD = r"""
import json, sys, threading
import velocore

path, bad_ids = sys.argv[1], json.loads(sys.argv[2])
N = int(sys.argv[3])
def key(i): return b"key%013d" % i
def value_ok(i, v): return v is not None and v.startswith(key(i) + b"|")

out = {"errors": [], "wrong": [], "hang": False}
s = velocore.open(path, cache_mb=1)
t = s.table("t")
bad_keys = [key(i) for i in bad_ids]

def round_of(fn, n=3):
    res = [None] * n
    barrier = threading.Barrier(n)
    def run(k):
        barrier.wait()
        try:
            fn(k)
            res[k] = "no error"
        except velocore.CorruptionError as e:
            res[k] = "CorruptionError" if "data.vc" in str(e) else "message: " + str(e)
        except BaseException as e:
            res[k] = "%s: %s" % (type(e).__name__, e)
    ths = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for th in ths: th.start()
    for th in ths:
        th.join(120)
        if th.is_alive():
            out["hang"] = True
            print(json.dumps(out), flush=True)
            import os; os._exit(3)
    return res

def many(k):
    with s.snapshot() as snap:
        snap.get_many(t, bad_keys[k % len(bad_keys):] + bad_keys)

def single(k):
    t.get(bad_keys[(k * 7) % len(bad_keys)])

# more failed loads than the cache has frames (256): a frame left stuck by a failed
# load would soon exhaust the cache
for r in range(100):
    out["errors"].extend(round_of(many))
out["errors"].extend(round_of(single))

# the failed frame must not stay stuck: every undamaged key still reads, from 3 threads
bad = set(bad_ids)
good = [i for i in range(N) if i not in bad]
def read_good(k):
    part = good[k::3]
    with s.snapshot() as snap:
        got = snap.get_many(t, [key(i) for i in part])
    out["wrong"].extend(i for i, v in zip(part, got) if not value_ok(i, v))
out["good"] = round_of(read_good)
out["again"] = round_of(many)
out["misses"] = s.info()["cache_misses"]
s.close()
print(json.dumps(out), flush=True)
"""


def leaf_pages(fname):
    """(page number, key ids in it) of every leaf page of data.vc."""
    import re
    pages = []
    with open(fname, "rb") as f:
        data = f.read()
    for pno in range(2, len(data) // PAGE):
        page = data[pno * PAGE:(pno + 1) * PAGE]
        if page[4] == 0x4C and int.from_bytes(page[8:12], "little") == pno:
            ids = sorted({int(m) for m in re.findall(rb"key(\d{13})\|", page)})
            if ids:
                pages.append((pno, ids))
    return pages


def test_damaged_page_read_from_three_threads(tmp_path):
    """A flipped byte in a leaf: every thread that reads it gets CorruptionError (no
    hang, no crash, also when they miss on it together), and afterwards every
    undamaged key still reads right (the failed frame did not stay stuck)."""
    n = 40_000
    path = str(tmp_path / "damaged")
    with velocore.open(path, sync="off") as s:
        t = s.table("t")
        with s.txn() as x:
            x.put_many(t, [(key(i), value(i)) for i in range(n)])
        s.checkpoint()
    fname = os.path.join(path, "data.vc")
    leaves = leaf_pages(fname)
    assert len(leaves) > 100
    pno, ids = leaves[len(leaves) // 2]
    assert len(ids) > 10
    with open(fname, "r+b") as f:
        f.seek(pno * PAGE + PAGE - 1)
        b = f.read(1)
        f.seek(pno * PAGE + PAGE - 1)
        f.write(bytes([b[0] ^ 0x20]))
    p = run_python(CORRUPT_CHILD, path, json.dumps(ids), n, timeout=300)
    assert_no_signal(p, "reader child")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert p.returncode == 0 and lines, f"rc={p.returncode}\n{p.stdout}\n{p.stderr[-4000:]}"
    res = json.loads(lines[-1])
    assert not res["hang"], res
    assert set(res["errors"]) == {"CorruptionError"}, res["errors"]
    assert res["good"] == ["no error"] * 3, res["good"]
    assert res["wrong"] == [], res["wrong"][:10]
    assert res["again"] == ["CorruptionError"] * 3, res["again"]


# ---------------------------------------------------------------- pages a checkpoint wrote

def test_checkpoint_leaves_written_pages_cached(tmp_path):
    """The tree pages a checkpoint writes stay in the cache: reading every key right after
    it loads nothing from the file.  Then a rewrite far bigger than a 256-frame cache:
    the pages it keeps are correct ones, and reads that miss load the rest."""
    n = 20_000
    order = list(range(n))
    random.Random(3).shuffle(order)
    with velocore.open(str(tmp_path / "a"), sync="off", cache_mb=64) as s:
        t = s.table("t")
        for start in range(0, n, 1000):
            with s.txn() as x:
                x.put_many(t, [(key(i), value(i)) for i in order[start:start + 1000]])
        s.checkpoint()
        before = s.info()["cache_misses"]
        with s.snapshot() as snap:
            wrong = [i for i in order if snap.get(t, key(i)) != value(i)]
        assert wrong == []
        assert s.info()["cache_misses"] == before

    with velocore.open(str(tmp_path / "b"), sync="off", cache_mb=1) as s:
        t = s.table("t")
        for gen in (1, 2):
            with s.txn() as x:
                x.put_many(t, [(key(i), value(i, gen)) for i in range(N_KEYS // 4)])
            s.checkpoint()
        before = s.info()["cache_misses"]
        ids = list(range(N_KEYS // 4))
        random.Random(4).shuffle(ids)
        with s.snapshot() as snap:
            wrong = [i for i in ids if snap.get(t, key(i)) != value(i, 2)]
        assert wrong == []
        assert s.info()["cache_misses"] - before > 1000
        assert s.check()["ok"]


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def _anon_huge_kib():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(_thp_mode() not in ("madvise", "always"),
                    reason="the kernel offers no transparent huge pages")
def test_page_cache_lies_on_huge_pages(tmp_path):
    """The page cache's memory is advised for transparent huge pages (a random read over
    a large cache then misses the TLB far less).  Pages enter the cache as a checkpoint
    writes them; every value is read back through it."""
    n = 40_000
    before = _anon_huge_kib()
    s = velocore.open(str(tmp_path / "h"), sync="off", cache_mb=64)
    try:
        t = s.table("t")
        with s.txn() as x:
            x.put_many(t, [(key(i), value(i)) for i in range(n)])
        s.checkpoint()
        with s.snapshot() as snap:
            wrong = [i for i in range(n) if snap.get(t, key(i)) != value(i)]
        assert wrong == []
        during = _anon_huge_kib()
    finally:
        s.close()
    assert during - before >= 2048, (before, during)


def test_unpinned_read_notices_a_refilled_frame(big_store):
    """A per-key get reads cached pages without pinning them and checks afterwards that
    each frame still held its page (a generation the frame's refill bumps).  After enough
    other pages pass through 64 frames, every page seen before answers "changed" exactly
    when its frame was refilled in between."""
    with velocore.open(big_store, readonly=True, cache_mb=0.05) as s:
        t = s.table("t")
        assert t.get(key(12345)) == value(12345)
        pages = s.info()["page_count"]
        seen = {pid: s._page_try(pid) for pid in range(2, pages)}
        seen = {pid: fg for pid, fg in seen.items() if fg is not None}
        # the get's root, branch and leaf at least
        assert len(seen) >= 3
        for frame, gen in seen.values():
            assert s._page_still(frame, gen)
        rnd = random.Random(3)
        with s.snapshot() as snap:
            ids = [rnd.randrange(N_KEYS) for _ in range(20_000)]
            assert snap.get_many(t, [key(i) for i in ids]) == [value(i) for i in ids]
        changed = 0
        for pid, (frame, gen) in seen.items():
            now = s._page_try(pid)
            still = s._page_still(frame, gen)
            assert still == (now == (frame, gen)), (pid, frame, gen, now, still)
            changed += not still
        assert changed > 0


def test_unpinned_gets_beside_refills(big_store):
    """Per-key gets (unpinned reads of cached pages, validated after) while two get_many
    threads push pages through a cache of 64 frames without the GIL: every value right."""
    with velocore.open(big_store, readonly=True, cache_mb=0.05) as s:
        t = s.table("t")
        done = threading.Event()
        bad = []
        counts = {"gets": 0}

        def churn(seed):
            rnd = random.Random(seed)
            while not done.is_set():
                ids = [rnd.randrange(N_KEYS) for _ in range(3000)]
                with s.snapshot() as snap:
                    got = snap.get_many(t, [key(i) for i in ids])
                bad.extend(i for i, v in zip(ids, got) if v != value(i))

        def gets():
            rnd = random.Random(7)
            try:
                for _ in range(60):
                    # a small working set, so most gets find their pages cached
                    ids = [rnd.randrange(2000) for _ in range(2000)]
                    with s.snapshot() as snap:
                        for i in ids:
                            v = snap.get(t, key(i))
                            if v != value(i):
                                bad.append(i)
                    counts["gets"] += len(ids)
            finally:
                done.set()

        run_threads([gets, lambda: churn(1), lambda: churn(2)])
        assert bad == []
        assert counts["gets"] == 120_000


def test_unpinned_hits_are_counted(big_store):
    """Gets served from the cache without pins count in info()["cache_hits"] (each
    snapshot adds its own when it ends): every level of every get is one hit."""
    with velocore.open(big_store, readonly=True, cache_mb=64) as s:
        t = s.table("t")
        ids = list(range(0, N_KEYS, 300))
        with s.snapshot() as snap:
            assert [snap.get(t, key(i)) for i in ids] == [value(i) for i in ids]
        before = s.info()
        with s.snapshot() as snap:
            assert [snap.get(t, key(i)) for i in ids] == [value(i) for i in ids]
        after = s.info()
        assert after["cache_misses"] == before["cache_misses"]
        # 300,000 keys: a root branch over the leaves at least
        assert after["cache_hits"] - before["cache_hits"] >= len(ids) * 2


def test_page_still_refuses_a_frame_outside_the_cache(big_store, tmp_path):
    with velocore.open(big_store, readonly=True, cache_mb=0.05) as s:
        with pytest.raises(ValueError):
            s._page_still(10**6, 0)
    with velocore.open(None) as m:
        t = m.table("t")
        t.put(b"k", b"v")
        m.checkpoint()
        with pytest.raises(ValueError):
            m._page_still(0, 0)

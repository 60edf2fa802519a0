"""Snapshot isolation verified with a list-append workload and a history checker
(tests/_elle.py, after the design of Jepsen's Elle). SPEC §3 and §5a.

Many threads run random transactions of 1-4 micro-ops over a small key space: an append
reads the key's list (a comma-separated list of ints) and writes it back with a unique
element added; a read returns the whole list. The history (every transaction's ops with
the values read, and whether it committed or was aborted by a ConflictError or on
purpose) is checked for G0, G1a, G1b, G1c, G-single, incompatible version orders, lost
and duplicated appends, internal (read-your-writes) violations and stale reads.
Write skew (G2) is allowed under snapshot isolation and not flagged.

The second half proves the checker can fail: hand-made histories with each anomaly,
histories from a small model of snapshot isolation (valid) and of broken variants of it.

A failure message names the seed and configuration; rerun one with
    VELOCORE_ELLE_SEED=<seed> python -m pytest tests/test_isolation_checker.py -k <id>
"""
import itertools
import os
import random
import sys
import threading
import time

import pytest

import velocore
from _elle import Txn, check

BASE_SEED = int(os.environ.get("VELOCORE_ELLE_SEED", "20240611"))


# --------------------------------------------------------------------------------------
# workload against the engine
# --------------------------------------------------------------------------------------

def encode(lst):
    return b",".join(b"%d" % e for e in lst)


def decode(raw):
    if raw is None:
        return None
    if raw == b"":
        return ()
    return tuple(map(int, raw.split(b",")))


def run_list_append(store, *, n_txns, threads=8, n_slots=12, epoch_len=1500, seed=0,
                    checkpoint_every=None, abort_rate=0.02, yield_rate=0.3):
    """Run the workload; return (history, keys, stats). Keys rotate every `epoch_len`
    finished transactions (a fresh set of n_slots keys) so lists stay short and the
    checker's prefix comparisons stay cheap while contention stays high."""
    tbl = store.table("la")
    history = []
    clock = itertools.count()           # one global logical clock: begin / end positions
    started = itertools.count()
    errors = []
    key_sets = []
    checkpoints = [0]

    def worker(tid):
        rnd = random.Random(seed * 1_000_003 + tid)
        elems = itertools.count()
        keys = set()
        key_sets.append(keys)
        next_cp = checkpoint_every
        try:
            while next(started) < n_txns:
                if checkpoint_every and tid == 0 and len(history) >= next_cp:
                    store.checkpoint()
                    checkpoints[0] += 1
                    next_cp = len(history) + checkpoint_every
                epoch = len(history) // epoch_len
                plan = []
                for _ in range(rnd.randint(1, 4)):
                    k = b"k%04d-%02d" % (epoch, rnd.randrange(n_slots))
                    keys.add(k)
                    if rnd.random() < 0.5:
                        plan.append(("append", k, tid + threads * next(elems)))
                    else:
                        plan.append(("r", k, None))
                read_only = all(f == "r" for f, _k, _e in plan)
                ops = []
                begin = next(clock)
                t = store.snapshot() if read_only and rnd.random() < 0.5 else store.txn()
                ok = False
                try:
                    for f, k, e in plan:
                        how = rnd.random()      # read through each read path
                        if how < 0.6:
                            raw = t.get(tbl, k)
                        elif how < 0.8:
                            raw = t.get_many(tbl, [k, k + b"~"])[0]
                        else:
                            found = list(t.range(tbl, k, k + b"\x00"))
                            assert len(found) <= 1 and all(kk == k for kk, _v in found), found
                            raw = found[0][1] if found else None
                        cur = decode(raw)
                        ops.append(("r", k, cur))
                        if f == "append":
                            ops.append(("append", k, e))
                            t.put(tbl, k, encode((cur or ()) + (e,)))
                        if rnd.random() < yield_rate:
                            time.sleep(0)   # let another thread in mid-transaction
                    if rnd.random() < abort_rate:
                        t.abort()
                    else:
                        t.commit()
                        ok = True
                except velocore.ConflictError:
                    t.abort()
                end = next(clock)
                history.append(Txn(begin, ops, ok=ok, process=tid, begin=begin, end=end))
        except BaseException as exc:  # noqa: BLE001
            errors.append((tid, exc))

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)       # interleave the threads finely
    try:
        ths = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(600)
            assert not th.is_alive(), "a worker did not finish (deadlock?)"
    finally:
        sys.setswitchinterval(old_interval)
    if errors:
        raise AssertionError(f"worker errors (seed {seed}): {errors!r}") from errors[0][1]
    keys = set().union(*key_sets)
    return history, keys, {"checkpoints": checkpoints[0]}


def read_final(store, keys):
    tbl = store.table("la")
    with store.snapshot() as s:
        return {k: decode(s.get(tbl, k)) or () for k in keys}


CONFIGS = {
    # id: (sync or None for memory, transactions, checkpoint every N commits)
    "memory": (None, 50_000, None),
    "disk-normal": ("normal", 50_000, 300),
    "disk-full": ("full", 12_000, None),
}
SLOW_CONFIGS = {
    "memory": (None, 150_000, None),
    "disk-normal": ("normal", 120_000, 400),
    "disk-full": ("full", 40_000, None),
}


def run_and_check(tmp_path, name, sync, n_txns, checkpoint_every, seed):
    where = f"config={name} seed={seed} n_txns={n_txns}"
    if sync is None:
        store = velocore.open()
    else:
        path = str(tmp_path / "store.vc")
        store = velocore.open(path, sync=sync, cache_mb=8)
    try:
        history, keys, wl = run_list_append(store, n_txns=n_txns, seed=seed,
                                            checkpoint_every=checkpoint_every)
        assert len(history) == n_txns
        info = store.info()
        assert info["active_transactions"] == 0, (where, info)
        final = read_final(store, keys)
        res = check(history, final=final)
        assert res.valid, f"{where}\n{res.describe()}"
        st = res.stats
        # The workload really exercised concurrency: conflicts happened, and the
        # dependency graph has cycles (write skew), which SI allows.
        assert st["aborted"] > n_txns * 0.02, (where, st)
        assert st["edges"].get("rw", 0) > 0 and st["edges"].get("ww", 0) > 0, (where, st)
        if checkpoint_every:
            assert wl["checkpoints"] >= 3, (where, wl)
        if sync is not None:
            chk = store.check()
            assert chk["ok"], (where, chk["errors"][:5])
    finally:
        store.close()
    print(where, res.stats, wl)
    if sync is not None:
        # Everything committed is still there after a clean close and reopen.
        with velocore.open(path, sync=sync) as again:
            assert read_final(again, keys) == final, where
            assert again.check()["ok"], where
    return res


@pytest.mark.parametrize("name", list(CONFIGS))
def test_list_append_snapshot_isolation(tmp_path, name):
    sync, n, cp = CONFIGS[name]
    seed = BASE_SEED + sorted(CONFIGS).index(name)
    run_and_check(tmp_path, name, sync, n, cp, seed)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CONFIGS))
def test_list_append_snapshot_isolation_long(tmp_path, name):
    sync, n, cp = SLOW_CONFIGS[name]
    seed = BASE_SEED + 100 + sorted(SLOW_CONFIGS).index(name)
    run_and_check(tmp_path, name, sync, n, cp, seed)


# --------------------------------------------------------------------------------------
# the checker can fail: hand-made histories
# --------------------------------------------------------------------------------------

_ids = itertools.count(1000)


def T(*ops, ok=True, begin=None, end=None, tid=None):
    return Txn(next(_ids) if tid is None else tid, list(ops), ok=ok, begin=begin, end=end)


def r(k, *lst):
    return ("r", k, list(lst) if lst else None)


def a(k, e):
    return ("append", k, e)


def assert_only(res, kind):
    assert not res.valid, f"expected {kind}, the checker found nothing"
    assert kind in res.counts, f"expected {kind}; got {res.describe()}"


def test_checker_accepts_serial_history():
    h = [T(a("x", 1), a("y", 3)), T(r("x", 1), a("x", 2)), T(r("x", 1, 2), r("y", 3))]
    res = check(h, final={"x": [1, 2], "y": [3]})
    assert res.valid, res.describe()


def test_checker_finds_G0():
    # T1 before T2 on x, T2 before T1 on y: a write cycle.
    h = [T(a("x", 1), a("y", 3), tid=1), T(a("x", 2), a("y", 4), tid=2)]
    res = check(h, final={"x": [1, 2], "y": [4, 3]})
    assert_only(res, "G0")
    assert "G1c" not in res.counts
    assert any("ww" in step for step in res.anomalies["G0"][0]["cycle"])


def test_checker_finds_G1a():
    h = [T(a("x", 1), ok=False, tid=1), T(r("x", 1), tid=2)]
    res = check(h, final={"x": []})
    assert_only(res, "G1a")
    assert res.anomalies["G1a"][0]["writers"] == [1]


def test_checker_finds_G1a_in_final_state():
    h = [T(a("x", 1), ok=False), T(a("x", 2))]
    res = check(h, final={"x": [1, 2]})
    assert_only(res, "G1a")


def test_checker_finds_G1b():
    h = [T(a("x", 1), a("x", 2), tid=1), T(r("x", 1), tid=2)]
    res = check(h, final={"x": [1, 2]})
    assert_only(res, "G1b")
    # reading one's own intermediate state is fine
    h = [T(a("x", 1), r("x", 1), a("x", 2), r("x", 1, 2))]
    assert check(h, final={"x": [1, 2]}).valid


def test_checker_finds_G1c():
    # each transaction read the other's write: a wr cycle
    h = [T(a("x", 1), r("y", 2), tid=1), T(a("y", 2), r("x", 1), tid=2)]
    res = check(h, final={"x": [1], "y": [2]})
    assert_only(res, "G1c")
    assert "G0" not in res.counts


def test_checker_finds_G_single():
    # read skew: T1 saw x before T2 but y after T2
    h = [T(a("x", 1), a("y", 2), tid=2), T(r("x"), r("y", 2), tid=1)]
    res = check(h, final={"x": [1], "y": [2]})
    assert_only(res, "G-single")
    cycle = res.anomalies["G-single"][0]["cycle"]
    assert sum("rw" in s for s in cycle) == 1, cycle


def test_checker_finds_G_single_in_longer_cycle():
    # T1 -rw-> T2 -ww-> T3 -wr-> T1
    h = [T(r("x"), r("z", 5), tid=1), T(a("x", 2), a("y", 4), tid=2),
         T(r("y", 4), a("y", 3), a("z", 5), tid=3)]
    res = check(h, final={"x": [2], "y": [4, 3], "z": [5]})
    assert_only(res, "G-single")
    assert len(res.anomalies["G-single"][0]["cycle"]) == 3


def test_checker_accepts_write_skew_G2():
    # both read x and y empty, each appends to a different one: T1 -rw-> T2 -rw-> T1
    h = [T(r("x"), r("y"), a("x", 1), tid=1), T(r("x"), r("y"), a("y", 2), tid=2)]
    res = check(h, final={"x": [1], "y": [2]})
    assert res.valid, res.describe()
    assert res.stats["edges"]["rw"] == 2
    assert res.stats["sccs_with_cycles"] == 1


def test_checker_finds_incompatible_order():
    h = [T(a("x", 1)), T(a("x", 2)), T(r("x", 1, 2)), T(r("x", 2, 1))]
    res = check(h)
    assert_only(res, "incompatible-order")


def test_checker_finds_lost_append():
    h = [T(r("x"), a("x", 1)), T(r("x"), a("x", 2))]
    res = check(h, final={"x": [2]})
    assert_only(res, "lost-append")
    assert res.anomalies["lost-append"][0]["element"] == 1


def test_checker_finds_duplicated_append():
    h = [T(a("x", 1)), T(r("x", 1), a("x", 2))]
    res = check(h, final={"x": [1, 2, 1]})
    assert_only(res, "duplicate-append")
    res = check(h + [T(r("x", 1, 1))], final={"x": [1, 2]})
    assert_only(res, "duplicate-append")


def test_checker_finds_read_your_writes_violation():
    h = [T(a("x", 1), r("x"))]
    assert_only(check(h, final={"x": [1]}), "internal")
    # non-repeatable read inside one transaction
    h = [T(a("x", 1)), T(r("x"), r("x", 1))]
    assert_only(check(h, final={"x": [1]}), "internal")


def test_checker_finds_garbage_and_stale_reads():
    h = [T(a("x", 1)), T(r("x", 7))]
    assert_only(check(h), "garbage-read")
    # T2 began after T1's commit returned but does not see it
    h = [T(a("x", 1), begin=0, end=1), T(r("x"), begin=2, end=3)]
    assert_only(check(h, final={"x": [1]}), "stale-read")
    h = [T(a("x", 1), begin=0, end=2), T(r("x"), begin=1, end=3)]   # concurrent: fine
    assert check(h, final={"x": [1]}).valid


# --------------------------------------------------------------------------------------
# the checker on model histories: snapshot isolation (valid) and broken variants
# --------------------------------------------------------------------------------------

def simulate(n_txns, *, n_keys=6, concurrency=6, seed=0, bug=None):
    """A small model of snapshot isolation with first-committer-wins, interleaving
    `concurrency` transactions at random. bug: None, "no-conflict-check" (lost updates),
    "read-committed" (reads see the latest commit, not the snapshot),
    "dirty" (reads see other transactions' uncommitted appends)."""
    rnd = random.Random(seed)
    versions = {}               # key -> [(commit_ts, tuple)]
    ts = 0
    history = []
    elems = itertools.count()
    ids = itertools.count()
    active = []
    pending = {}                # key -> list of uncommitted appends (for "dirty")

    def snapshot_read(k, start):
        vs = versions.get(k, [])
        if bug == "read-committed":
            return vs[-1][1] if vs else ()
        for cts, lst in reversed(vs):
            if cts <= start:
                return lst
        return ()

    def new_txn():
        epoch = len(history) // 1000       # fresh keys now and then: lists stay short
        plan = [(rnd.choice("ra"), "e%d-k%d" % (epoch, rnd.randrange(n_keys)))
                for _ in range(rnd.randint(1, 4))]
        return {"id": next(ids), "start": ts, "plan": plan, "pos": 0, "ops": [], "writes": {}}

    while len(history) < n_txns:
        while len(active) < concurrency:
            active.append(new_txn())
        t = rnd.choice(active)
        if t["pos"] < len(t["plan"]):
            f, k = t["plan"][t["pos"]]
            t["pos"] += 1
            cur = t["writes"].get(k)
            if cur is None:
                cur = snapshot_read(k, t["start"])
                if bug == "dirty" and pending.get(k):
                    cur = cur + tuple(pending[k])
            t["ops"].append(("r", k, list(cur) if cur else None))
            if f == "a":
                e = next(elems)
                t["ops"].append(("append", k, e))
                t["writes"][k] = cur + (e,)
                pending.setdefault(k, []).append(e)
            continue
        active.remove(t)
        conflict = any(versions.get(k) and versions[k][-1][0] > t["start"] for k in t["writes"])
        if bug == "no-conflict-check":
            conflict = False
        ok = not conflict and rnd.random() > 0.03
        for k, lst in t["writes"].items():
            for e in lst:
                if e in pending.get(k, ()):
                    pending[k].remove(e)
        if ok:
            ts += 1
            for k, lst in t["writes"].items():
                versions.setdefault(k, []).append((ts, lst))
        history.append(Txn(t["id"], t["ops"], ok=ok))
    final = {k: list(vs[-1][1]) for k, vs in versions.items()}
    return history, final


def test_checker_accepts_model_snapshot_isolation_at_scale():
    """25,000 transactions of the SI model: valid, with plenty of write skew cycles."""
    history, final = simulate(25_000, seed=BASE_SEED)
    res = check(history, final=final)
    assert res.valid, res.describe()
    assert res.stats["aborted"] > 1000
    assert res.stats["rw_edges_in_cycles_only_with_other_rw"] > 0   # G2 was present


@pytest.mark.parametrize("bug, expected", [
    ("no-conflict-check", {"lost-append"}),
    ("read-committed", {"G-single", "internal"}),
    ("dirty", {"G1a"}),
])
def test_checker_rejects_broken_models(bug, expected):
    history, final = simulate(3_000, seed=BASE_SEED, bug=bug)
    res = check(history, final=final)
    assert not res.valid
    assert expected & res.types(), res.describe()


def test_checker_finds_one_injected_anomaly_among_many():
    """A single read-skew transaction inside 25,000 valid ones is found."""
    history, final = simulate(25_000, seed=BASE_SEED + 1)
    committed = [t for t in history if t.ok]
    # find a committed transaction that appended to two keys, and add a reader that saw
    # one of its appends but not the other (the state just before it on that key).
    for t in committed[len(committed) // 2:]:
        apps = [op for op in t.ops if op[0] == "append"]
        keys = {op[1] for op in apps}
        if len(keys) >= 2:
            break
    k1, k2 = sorted(keys)[:2]
    e1 = [op[2] for op in apps if op[1] == k1][-1]
    e2 = [op[2] for op in apps if op[1] == k2][0]
    l1 = final[k1][:final[k1].index(e1) + 1]       # sees t's last append to k1
    l2 = final[k2][:final[k2].index(e2)]           # but not its first append to k2
    reader = Txn(10**9, [("r", k1, l1), ("r", k2, l2 or None)], ok=True)
    history.insert(len(history) - 10, reader)
    res = check(history, final=final)
    assert "G-single" in res.counts, res.describe()

"""The bank test: money moves between accounts, never appears or vanishes (SPEC §3, §5a).

Transfer threads move random amounts between 100 accounts through `store.retry` (read
both balances, write both). Auditor threads meanwhile take snapshots (and read-only use
of read-write transactions) and check that the sum over all accounts never changes,
reading the accounts once with a range scan and once with get_many: both must give the
same balances and the same total, and no balance is negative. At the end every account
matches the log of committed transfers (a transfer is logged only when `retry`
returned), in the live store and again after a close and reopen.

Disk stores run with sync="normal" and one transfer thread forcing a checkpoint every
few hundred transfers; the in-memory store runs the same workload.

Rerun one configuration with a seed:
    VELOCORE_BANK_SEED=<seed> python -m pytest tests/test_bank.py -k <id>
"""
import itertools
import os
import random
import sys
import threading
import time

import pytest

import velocore

BASE_SEED = int(os.environ.get("VELOCORE_BANK_SEED", "7321"))
N_ACCOUNTS = 100
INITIAL = 1_000
TOTAL = N_ACCOUNTS * INITIAL
KEYS = [b"acct:%03d" % i for i in range(N_ACCOUNTS)]


def audit(t, tbl, how):
    """Problems seen in one transaction's view of the accounts (empty list: none)."""
    problems = []
    by_scan = [(k, int(v)) for k, v in t.range(tbl)]
    by_many = t.get_many(tbl, KEYS)
    if [k for k, _ in by_scan] != KEYS or any(v is None for v in by_many):
        return [(how, "accounts missing or extra", [k for k, _ in by_scan][:5])]
    scan_vals = [v for _, v in by_scan]
    many_vals = [int(v) for v in by_many]
    if scan_vals != many_vals:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(scan_vals, many_vals)) if a != b]
        problems.append((how, "range and get_many disagree in one snapshot", diff[:5]))
    for name, vals in (("range", scan_vals), ("get_many", many_vals)):
        if sum(vals) != TOTAL:
            problems.append((how, f"total via {name} is {sum(vals)}, not {TOTAL}"))
        if min(vals) < 0:
            problems.append((how, f"negative balance via {name}", min(vals)))
    return problems


def run_bank(store, *, transfers, seed, transfer_threads=4, auditors=2,
             checkpoint_every=None, yield_rate=0.2):
    tbl = store.table("bank")
    with store.txn() as t:
        t.put_many(tbl, [(k, b"%d" % INITIAL) for k in KEYS])

    started = itertools.count()
    done = threading.Event()
    log = []                 # (src, dst, amount) of committed transfers
    gave_up = []             # transfers whose retry ran out of attempts
    attempts = [0]
    problems = []            # what the auditors saw wrong (checked after the run)
    audits = [0, 0]          # snapshots, read-write transactions audited
    checkpoints = [0]
    errors = []

    def transfer_worker(tid):
        rnd = random.Random(seed * 1_000_003 + tid)
        next_cp = checkpoint_every
        try:
            while next(started) < transfers:
                if checkpoint_every and tid == 0 and len(log) >= next_cp:
                    store.checkpoint()
                    checkpoints[0] += 1
                    next_cp = len(log) + checkpoint_every
                src, dst = rnd.sample(range(N_ACCOUNTS), 2)
                want = rnd.randint(1, 100)
                pause = rnd.random() < yield_rate

                def move(t, src=src, dst=dst, want=want, pause=pause):
                    attempts[0] += 1
                    a = int(t.get(tbl, KEYS[src]))
                    if pause:
                        time.sleep(0)       # let other threads commit in between
                    b = int(t.get(tbl, KEYS[dst]))
                    amount = min(want, a)
                    t.put(tbl, KEYS[src], b"%d" % (a - amount))
                    t.put(tbl, KEYS[dst], b"%d" % (b + amount))
                    return amount

                try:
                    amount = store.retry(move, attempts=50)
                except velocore.ConflictError:
                    gave_up.append((src, dst))
                    continue
                log.append((src, dst, amount))
        except BaseException as exc:  # noqa: BLE001
            errors.append(("transfer", tid, exc))

    def auditor(aid):
        rnd = random.Random(seed * 7_919 + 100 + aid)
        try:
            while not done.is_set():
                if rnd.random() < 0.8:
                    with store.snapshot() as s:
                        problems.extend(audit(s, tbl, "snapshot"))
                    audits[0] += 1
                else:
                    t = store.txn()          # read-write transaction that only reads
                    try:
                        problems.extend(audit(t, tbl, "txn"))
                        t.commit()
                    finally:
                        t.abort()
                    audits[1] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(("auditor", aid, exc))

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        movers = [threading.Thread(target=transfer_worker, args=(i,), daemon=True)
                  for i in range(transfer_threads)]
        checkers = [threading.Thread(target=auditor, args=(i,), daemon=True)
                    for i in range(auditors)]
        for th in checkers + movers:
            th.start()
        for th in movers:
            th.join(600)
            assert not th.is_alive(), "a transfer thread did not finish (deadlock?)"
        done.set()
        for th in checkers:
            th.join(600)
            assert not th.is_alive(), "an auditor did not finish (deadlock?)"
    finally:
        done.set()
        sys.setswitchinterval(old_interval)
    return {"log": log, "gave_up": gave_up, "attempts": attempts[0], "problems": problems,
            "audits": audits, "checkpoints": checkpoints[0], "errors": errors}


def expected_balances(log):
    bal = [INITIAL] * N_ACCOUNTS
    for src, dst, amount in log:
        bal[src] -= amount
        bal[dst] += amount
    return bal


def read_balances(store):
    tbl = store.table("bank")
    with store.snapshot() as s:
        return [int(v) for v in s.get_many(tbl, KEYS)]


def bank_case(tmp_path, name, sync, transfers, checkpoint_every, seed):
    where = f"config={name} seed={seed} transfers={transfers}"
    path = None
    if sync is None:
        store = velocore.open()
    else:
        path = str(tmp_path / "bank.vc")
        store = velocore.open(path, sync=sync, cache_mb=8)
    try:
        r = run_bank(store, transfers=transfers, seed=seed, checkpoint_every=checkpoint_every)
        assert not r["errors"], (where, r["errors"])
        assert not r["problems"], (where, len(r["problems"]), r["problems"][:10])
        log = r["log"]
        assert len(log) + len(r["gave_up"]) == transfers, where
        assert len(log) >= transfers * 0.95, (where, len(r["gave_up"]))
        # the auditors really ran concurrently, and the movers really conflicted
        assert r["audits"][0] >= 10 and r["audits"][1] >= 1, (where, r["audits"])
        assert r["attempts"] > len(log), (where, "no transfer ever conflicted")
        if checkpoint_every:
            assert r["checkpoints"] >= 3, where
        want = expected_balances(log)
        got = read_balances(store)
        assert sum(got) == TOTAL, (where, sum(got))
        bad = [(KEYS[i], g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
        assert not bad, (where, "accounts differ from the transfer log", bad[:10])
        assert store.info()["active_transactions"] == 0, where
        if path is not None:
            chk = store.check()
            assert chk["ok"], (where, chk["errors"][:5])
    finally:
        store.close()
    if path is not None:
        with velocore.open(path, sync=sync) as again:
            assert read_balances(again) == want, (where, "after reopen")
            assert again.check()["ok"], where
    print(where, "committed", len(log), "gave up", len(r["gave_up"]), "attempts",
          r["attempts"], "audits", r["audits"], "checkpoints", r["checkpoints"])


CONFIGS = {
    # id: (sync or None for memory, transfers, checkpoint every N committed transfers)
    "memory": (None, 80_000, None),
    "disk-normal": ("normal", 80_000, 300),
}
SLOW_CONFIGS = {
    "memory": (None, 400_000, None),
    "disk-normal": ("normal", 400_000, 300),
    "disk-full": ("full", 40_000, 300),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bank_transfers_conserve_money(tmp_path, name):
    sync, n, cp = CONFIGS[name]
    bank_case(tmp_path, name, sync, n, cp, BASE_SEED + sorted(CONFIGS).index(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CONFIGS))
def test_bank_transfers_conserve_money_long(tmp_path, name):
    sync, n, cp = SLOW_CONFIGS[name]
    bank_case(tmp_path, name, sync, n, cp, BASE_SEED + 100 + sorted(SLOW_CONFIGS).index(name))


def test_bank_audit_detects_a_broken_transfer():
    """The checks are able to fail: a transfer that writes only one side is caught by the
    audit of a snapshot and by the final comparison with the log."""
    with velocore.open() as store:
        tbl = store.table("bank")
        with store.txn() as t:
            t.put_many(tbl, [(k, b"%d" % INITIAL) for k in KEYS])
        with store.snapshot() as s:
            assert audit(s, tbl, "snapshot") == []
        with store.txn() as t:                       # 5 taken from account 3, never paid in
            t.put(tbl, KEYS[3], b"%d" % (INITIAL - 5))
            assert any("total via range" in p[1] for p in audit(t, tbl, "txn"))
        with store.snapshot() as s:
            found = audit(s, tbl, "snapshot")
        assert any("total via range" in p[1] for p in found), found
        assert any("total via get_many" in p[1] for p in found), found
        assert read_balances(store) != expected_balances([(3, 4, 5)])
        with store.txn() as t:
            t.delete(tbl, KEYS[7])
        with store.snapshot() as s:
            assert audit(s, tbl, "snapshot")[0][1] == "accounts missing or extra"

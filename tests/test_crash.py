"""kill -9 at random moments (during commits and checkpoints), then recover (SPEC §3, §5a).

A child process (tests/crash_child.py) commits multi-key transactions and prints the id
of every transaction whose commit() returned.  The parent SIGKILLs it at a random moment,
reopens the store in another child and checks:
  * no transaction is partial (all its keys agree) and every value is exact;
  * the recovered transactions are exactly a prefix 1..X of the commit order;
  * sync="full": every acknowledged transaction is present (X >= every ack);
  * sync="normal": X never goes below what an earlier open had recovered;
  * store.check()["ok"].
Then it continues on the same store from X + 1, for several rounds.
"""
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from _helpers import (CHILD_TIMEOUT, TESTS_DIR, assert_no_signal, child_env,
                      file_digest_tree, run_script, wal_segments, wal_tail)

CHILD = os.path.join(TESTS_DIR, "crash_child.py")


def _env(big, pin=False):
    env = child_env()
    env["VC_CRASH_BIG"] = "1" if big else "0"
    env["VC_CRASH_PIN"] = "1" if pin else "0"
    return env


def verify(path, nthreads, nkeys, readonly=False, big=False):
    args = ["verify", path, nthreads, nkeys] + (["ro"] if readonly else [])
    p = subprocess.run([sys.executable, CHILD, *map(str, args)], capture_output=True,
                       text=True, timeout=CHILD_TIMEOUT, env=_env(big))
    assert_no_signal(p, "verify child")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"verify printed nothing\nstdout={p.stdout}\nstderr={p.stderr[-4000:]}"
    res = json.loads(lines[-1])
    assert "error" not in res, f"recovery failed: {res}\nstderr={p.stderr[-4000:]}"
    assert p.returncode == 0, p.stderr[-4000:]
    return res


def run_writer_and_kill(path, sync, rng, next_ids, nkeys, ckpt_every, big=False, argv=None,
                        pin=False):
    """Start a writer, SIGKILL it at a random moment; return {thread: max acked id}."""
    seed = rng.randrange(2**31)
    errf = tempfile.TemporaryFile()
    if argv is None:
        argv = ["write", path, sync, str(seed), str(ckpt_every), str(nkeys),
                ",".join(map(str, next_ids))]
    p = subprocess.Popen(
        [sys.executable, CHILD, *argv],
        stdout=subprocess.PIPE, stderr=errf, env=_env(big, pin), bufsize=0,
    )
    acked = {}
    lines = []
    hung = []

    def guard():
        hung.append(True)
        p.kill()

    timer = threading.Timer(CHILD_TIMEOUT, guard)
    timer.start()
    try:
        how = rng.random()
        if how < 0.12:
            # kill while it may still be opening / recovering
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            target = rng.choice([0, 1, rng.randrange(2, 30), rng.randrange(30, 250)])
            seen = -1  # the "open" line
            while seen < target:
                line = p.stdout.readline()
                if not line:
                    break
                lines.append(line)
                seen += 1
            time.sleep(rng.uniform(0.0, 0.03))
        os.kill(p.pid, signal.SIGKILL)
        rest = p.stdout.read()
        p.wait(CHILD_TIMEOUT)
    finally:
        timer.cancel()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not hung, "writer child hung (no progress for %ds)" % CHILD_TIMEOUT
    errf.seek(0)
    stderr = errf.read().decode(errors="replace")
    errf.close()
    assert p.returncode == -signal.SIGKILL, (
        f"writer ended by itself (rc={p.returncode}) before the kill:\n{stderr[-4000:]}")
    text = b"".join(lines) + rest
    for raw in text.split(b"\n")[:-1]:  # only complete lines are acknowledgements
        raw = raw.strip()
        if not raw or raw == b"open":
            continue
        t, i = map(int, raw.split())
        acked[t] = max(acked.get(t, 0), i)
    return acked


def log_after_kill(path):
    """Check the log as a kill left it: no segment but the last may extend past its last
    record (a rotation cuts it before the next segment exists).  Returns whether the last
    segment has zeros written ahead past its last record."""
    segs = wal_segments(path)
    for seg in segs[:-1]:
        end, size, _ = wal_tail(seg)
        assert size == end, (
            f"{seg} is not the last segment, yet holds {size - end} bytes past its last "
            f"record (which ends at {end})")
    if not segs:
        return False
    end, size, zeros = wal_tail(segs[-1])
    return size > end and zeros


def crash_rounds(path, sync, rounds, nthreads=1, nkeys=6, seed=None, big=False, pin=False,
                 zero_tails=None, ckpt_every=None):
    """zero_tails: a list that gets, per round, whether the kill left a zeroed log tail.
    ckpt_every: explicit checkpoints every that many commits (default: 2, 5 or 20)."""
    seed = random.randrange(2**31) if seed is None else seed
    rng = random.Random(seed)
    last_x = [0] * nthreads
    total_acked = 0
    for rnd in range(rounds):
        acked = run_writer_and_kill(path, sync, rng, [x + 1 for x in last_x], nkeys,
                                    ckpt_every or rng.choice([2, 5, 20]), big, pin=pin)
        total_acked += len(acked)
        zeroed = log_after_kill(path)
        if zero_tails is not None:
            zero_tails.append(zeroed)
        res = verify(path, nthreads, nkeys, big=big)
        ctx = f"seed={seed} round={rnd} sync={sync} acked={acked} last_x={last_x}"
        assert res["check_ok"], f"{ctx}: check() failed: {res['errors']}"
        for t in range(nthreads):
            st = res["threads"][t]
            assert st["partial"] is None, f"{ctx}: partial transaction, ids {st['partial']}"
            assert st["bad"] == [], f"{ctx}: wrong values for {st['bad'][:10]}"
            x = st["X"]
            assert st["ids"] == list(range(1, x + 1)), (
                f"{ctx}: recovered txns are not a prefix 1..{x}: "
                f"missing={sorted(set(range(1, x + 1)) - set(st['ids']))[:10]} "
                f"extra={sorted(set(st['ids']) - set(range(1, x + 1)))[:10]}")
            assert x >= last_x[t], f"{ctx}: lost txns {x + 1}..{last_x[t]} recovered earlier"
            if sync == "full" and t in acked:
                assert x >= acked[t], (
                    f"{ctx}: acknowledged txn {acked[t]} of thread {t} lost (recovered {x})")
            last_x[t] = x
    return last_x


def test_crash_full_sync(tmp_path):
    last = crash_rounds(str(tmp_path / "s"), "full", rounds=12)
    # sanity: the test really committed things
    assert last[0] > 0


def test_crash_full_sync_threads(tmp_path):
    """Group commit: three writer threads share flushes; every ack must survive."""
    last = crash_rounds(str(tmp_path / "s"), "full", rounds=5, nthreads=3, nkeys=4)
    assert sum(last) > 0


def test_crash_normal_sync(tmp_path):
    last = crash_rounds(str(tmp_path / "s"), "normal", rounds=10)
    assert last[0] > 0


@pytest.mark.parametrize("sync,nthreads", [("full", 1), ("full", 3), ("normal", 1)])
def test_crash_into_the_zeroed_log_tail(tmp_path, sync, nthreads):
    """Small commits stream into the zeros written ahead when the kill lands: recovery cuts
    the zeros off as a torn tail, and (sync full) keeps every acknowledged commit.  Only
    the background checkpoints (checkpoint_mb=1) rotate the log."""
    tails = []
    last = crash_rounds(str(tmp_path / "s"), sync, rounds=10, nthreads=nthreads, nkeys=2,
                        zero_tails=tails, ckpt_every=10**9)
    assert sum(last) > 0
    assert sum(tails) >= 3, f"few kills left a zeroed log tail: {tails}"


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_crash_inside_streamed_log_records(tmp_path, sync):
    """Transactions of 24 keys with values up to 250 KB: many records pass 1 MiB, and are
    written in pieces with their header last, so kills land between a record's pieces and
    before its header.  Each transaction is recovered whole or not at all."""
    last = crash_rounds(str(tmp_path / "s"), sync, rounds=6, nkeys=24, big=True,
                        ckpt_every=10**9)
    assert last[0] > 0


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_crash_big_values_long_checkpoints(tmp_path, sync):
    """Values up to 250 KB: checkpoints write many pages, so kills land inside them."""
    last = crash_rounds(str(tmp_path / "s"), sync, rounds=8, nkeys=4, big=True)
    assert last[0] > 0


def test_crash_with_pinned_snapshot(tmp_path):
    """The writer keeps an old snapshot open while checkpoints run (pages pinned)."""
    last = crash_rounds(str(tmp_path / "s"), "full", rounds=8, nkeys=4, big=True, pin=True)
    assert last[0] > 0


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["full", "normal"])
def test_crash_many_rounds(tmp_path, sync):
    crash_rounds(str(tmp_path / "s"), sync, rounds=60)


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["full", "normal"])
def test_crash_many_rounds_big(tmp_path, sync):
    crash_rounds(str(tmp_path / "s"), sync, rounds=50, nkeys=4, big=True)


@pytest.mark.slow
def test_crash_many_rounds_threads(tmp_path):
    crash_rounds(str(tmp_path / "s"), "full", rounds=40, nthreads=4, nkeys=5)


def test_crash_while_creating_and_dropping_tables(tmp_path):
    """Table create/drop are transactional and durable: after kill -9 the catalog holds
    exactly the tables of the acknowledged iterations (plus at most the one in flight)."""
    path = str(tmp_path / "s")
    rng = random.Random()
    last = 0
    for rnd in range(8):
        acked = run_writer_and_kill(path, "full", rng, None, 0, 0,
                                    argv=["tables", path, "full", str(last + 1)])
        log_after_kill(path)
        a = acked.get(0, last)
        p = subprocess.run([sys.executable, CHILD, "verify-tables", path], capture_output=True,
                           text=True, timeout=CHILD_TIMEOUT, env=child_env())
        assert_no_signal(p, "verify-tables")
        res = json.loads(p.stdout.strip().splitlines()[-1])
        assert "error" not in res, res
        assert res["check_ok"], res
        tables = res["tables"]
        nums = sorted(int(n[1:]) for n in tables)
        ctx = f"round {rnd}: acked up to {a}, tables {nums}"
        # every acknowledged iteration's effects are durable
        must = range(max(1, a - 1), a + 1)
        if a >= 3 and "t%d" % (a + 1) not in tables:
            must = range(a - 2, a + 1)        # the in-flight iteration may have dropped t<a-2>
        for j in must:
            assert "t%d" % j in tables, ctx
            assert tables["t%d" % j] == "%d" % j + "." * (j % 5000), ctx
        for j in nums:
            assert j >= a - 2, ctx            # acknowledged drops stay dropped
            assert j <= a + 1, ctx            # nothing from the future
            v = tables["t%d" % j]
            assert v in ("", "%d" % j + "." * (j % 5000)), ctx
        # the next writer redoes the iteration that was in flight (table() of an existing
        # table and drop_table of a dropped one are guarded in the child)
        last = a


def seq_rounds(path, sync, rounds, nthreads=3):
    """Global commit order: every txn takes the next counter value; after a crash the
    surviving numbers must be exactly 1..counter (a prefix of the commit order), and with
    sync="full" include every acknowledged number."""
    rng = random.Random()
    last = 0
    for rnd in range(rounds):
        acked = run_writer_and_kill(path, sync, rng, None, 0, 0,
                                    argv=["seq", path, sync, str(nthreads)])
        log_after_kill(path)
        p = subprocess.run([sys.executable, CHILD, "verify-seq", path], capture_output=True,
                           text=True, timeout=CHILD_TIMEOUT, env=child_env())
        assert_no_signal(p, "verify-seq")
        res = json.loads(p.stdout.strip().splitlines()[-1])
        assert "error" not in res, res
        c = res["counter"]
        ctx = f"round {rnd} sync={sync}: counter={c} acked={acked} previous={last}"
        assert res["check_ok"], ctx
        assert res["bad"] == [], ctx
        assert res["present"] == list(range(1, c + 1)), (
            ctx + f": not a prefix of the commit order: missing "
            f"{sorted(set(range(1, c + 1)) - set(res['present']))[:10]}, extra "
            f"{sorted(set(res['present']) - set(range(1, c + 1)))[:10]}")
        assert c >= last, ctx + ": lost commits an earlier open had recovered"
        if sync == "full" and acked:
            assert c >= acked[0], ctx + ": acknowledged commit lost"
        last = c
    return last


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_crash_global_commit_order_prefix(tmp_path, sync):
    last = seq_rounds(str(tmp_path / "s"), sync, rounds=6)
    assert last > 0


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["full", "normal"])
def test_crash_global_commit_order_prefix_many(tmp_path, sync):
    seq_rounds(str(tmp_path / "s"), sync, rounds=40, nthreads=4)


# ---------------------------------------------------------------- recovery without kill

def make_unrecovered_store(path, n, sync="full", nkeys=5):
    p = run_script("crash_child.py", "commit-exit", path, sync, nkeys, n)
    assert_no_signal(p)
    assert p.returncode == 0 and p.stdout.strip() == "done", p.stderr[-4000:]


def test_readonly_recovery_leaves_files_untouched(tmp_path):
    path = str(tmp_path / "s")
    make_unrecovered_store(path, 40)
    before = file_digest_tree(path)
    res = verify(path, 1, 5, readonly=True)
    assert res["threads"][0]["X"] == 40
    assert res["threads"][0]["ids"] == list(range(1, 41))
    assert res["check_ok"]
    after = file_digest_tree(path)
    # LOCK may be created/kept by the lock protocol; every other file is byte-identical
    before.pop("LOCK", None)
    after.pop("LOCK", None)
    assert after == before
    # a normal open recovers the same state
    res = verify(path, 1, 5)
    assert res["threads"][0]["X"] == 40 and res["threads"][0]["partial"] is None
    res = verify(path, 1, 5)
    assert res["threads"][0]["X"] == 40


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_exit_without_close_recovers(tmp_path, sync):
    """os._exit right after commits (no close): sync=full keeps all; normal a prefix."""
    path = str(tmp_path / "s")
    make_unrecovered_store(path, 25, sync=sync)
    res = verify(path, 1, 5)
    st = res["threads"][0]
    assert st["partial"] is None and st["bad"] == []
    assert st["ids"] == list(range(1, st["X"] + 1))
    if sync == "full":
        assert st["X"] == 25
    assert res["check_ok"]


def test_recovered_store_accepts_more_writes(tmp_path):
    path = str(tmp_path / "s")
    make_unrecovered_store(path, 10)
    import velocore

    with velocore.open(path) as s:
        t = s.table("crash")
        t[b"after"] = b"recovery"
        s.checkpoint()
        t[b"after2"] = b"x"
    with velocore.open(path) as s:
        t = s.table("crash")
        assert t[b"after"] == b"recovery" and t[b"after2"] == b"x"
        assert t[b"T0-txn%010d" % 10].startswith(b"10|")
        assert s.check()["ok"]

"""Child process for the crash tests (tests/test_crash.py).

  crash_child.py write PATH SYNC SEED CKPT_EVERY NKEYS NEXT_IDS
      NEXT_IDS is a comma-separated list, one first txn id per writer thread.
      Each thread t commits txns i = NEXT_IDS[t], +1, ...; txn i writes the same id into
      NKEYS shared keys b"T<t>-s<j>" and one per-txn key b"T<t>-txn<i>".  After commit()
      returns it prints "t i" (flushed).  Every CKPT_EVERY commits (per thread 0) it calls
      store.checkpoint().  It runs until killed.
  crash_child.py commit-exit PATH SYNC NKEYS N
      one thread, commits txns 1..N, then os._exit(0) without closing (needs recovery).
  crash_child.py verify PATH NTHREADS NKEYS [ro]
      opens the store (readonly with "ro"), checks every value, prints one JSON line.
  crash_child.py tables PATH SYNC FIRST
      loop i = FIRST...: create table t<i>, put b"k", drop t<i-3>; prints "0 i".
  crash_child.py verify-tables PATH
      prints {"tables": {name: value of b"k"}, "check_ok": ...}.
  crash_child.py seq PATH SYNC NTHREADS
      threads commit txns numbered by a global counter (commit order = number order).
  crash_child.py verify-seq PATH
  Env VC_CRASH_BIG=1 makes values much larger (long checkpoints); use it for both modes.
  Env VC_CRASH_PIN=1 makes the writer keep an old snapshot open across checkpoints.
"""
import json
import os
import random
import sys
import threading

import velocore

TABLE = "crash"
SIZES = [0, 8, 100, 1000, 5000, 15000]
BIG_SIZES = [0, 100, 5000, 60_000, 250_000]
BIG = os.environ.get("VC_CRASH_BIG") == "1"


def value(t, i, j):
    """Deterministic value of key j (j == -1: the per-txn key) of txn i of thread t."""
    rnd = random.Random((t * 1_000_003 + i) * 101 + j + 1)
    return b"%d|" % i + rnd.randbytes(rnd.choice(BIG_SIZES if BIG else SIZES))


def shared_key(t, j):
    return b"T%d-s%02d" % (t, j)


def txn_key(t, i):
    return b"T%d-txn%010d" % (t, i)


def write_txn(store, table, t, i, nkeys):
    with store.txn() as x:
        for j in range(nkeys):
            x.put(table, shared_key(t, j), value(t, i, j))
            if j == nkeys // 2:
                x.put(table, txn_key(t, i), value(t, i, -1))


def mode_write(path, sync, seed, ckpt_every, nkeys, next_ids):
    store = velocore.open(path, sync=sync, checkpoint_mb=1)
    table = store.table(TABLE)
    print("open", flush=True)
    out_lock = threading.Lock()

    pin = os.environ.get("VC_CRASH_PIN") == "1"

    def worker(t, first):
        i = first
        n = 0
        snap = None
        while n < 1_000_000:
            if pin and t == 0 and n % 40 == 0:
                # an old snapshot pins pages while checkpoints run
                if snap is not None:
                    snap.abort()
                snap = store.snapshot()
                snap.get(table, shared_key(0, 0))
            write_txn(store, table, t, i, nkeys)
            with out_lock:
                sys.stdout.write("%d %d\n" % (t, i))
                sys.stdout.flush()
            i += 1
            n += 1
            if t == 0 and n % ckpt_every == 0:
                store.checkpoint()

    ths = [threading.Thread(target=worker, args=(t, first))
           for t, first in enumerate(next_ids)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()


def mode_commit_exit(path, sync, nkeys, n):
    store = velocore.open(path, sync=sync)
    table = store.table(TABLE)
    for i in range(1, n + 1):
        write_txn(store, table, 0, i, nkeys)
    sys.stdout.write("done\n")
    sys.stdout.flush()
    os._exit(0)


def mode_tables(path, sync, first):
    """Loop: create table t<i>, put into it, drop t<i-3>; print i after all three."""
    store = velocore.open(path, sync=sync, checkpoint_mb=1)
    print("open", flush=True)
    i = first
    while i < first + 1_000_000:
        t = store.table("t%d" % i)
        t.put(b"k", b"%d" % i + b"." * (i % 5000))
        if i - 3 >= 1 and "t%d" % (i - 3) in store.tables():
            store.drop_table("t%d" % (i - 3))
        sys.stdout.write("0 %d\n" % i)
        sys.stdout.flush()
        if i % 7 == 0:
            store.checkpoint()
        i += 1


def seq_value(n):
    return b"%d|" % n + random.Random(n).randbytes(n % 3000)


def mode_seq(path, sync, nthreads):
    """Threads commit txns that each take the next number of a global counter (so the
    commit order is the counter order) and write a key for that number."""
    store = velocore.open(path, sync=sync, checkpoint_mb=1)
    table = store.table("seq")
    print("open", flush=True)
    out_lock = threading.Lock()

    def step(x):
        cur = x.get(table, b"counter")
        n = int(cur) + 1 if cur is not None else 1
        x.put(table, b"counter", b"%d" % n)
        x.put(table, b"S%010d" % n, seq_value(n))
        return n

    def worker(t):
        k = 0
        while k < 1_000_000:
            n = store.retry(step, attempts=1_000_000)
            with out_lock:
                sys.stdout.write("0 %d\n" % n)
                sys.stdout.flush()
            k += 1
            if t == 0 and k % 25 == 0:
                store.checkpoint()

    ths = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()


def mode_verify_seq(path):
    try:
        store = velocore.open(path)
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"error": type(e).__name__, "msg": str(e)}))
        return 3
    try:
        out = {"counter": 0, "present": [], "bad": []}
        if "seq" in store.tables():
            t = store.table("seq")
            c = t.get(b"counter")
            out["counter"] = int(c) if c is not None else 0
            for k, v in t.range(prefix=b"S"):
                n = int(k[1:])
                out["present"].append(n)
                if v != seq_value(n):
                    out["bad"].append(n)
        out["check_ok"] = bool(store.check()["ok"])
    finally:
        store.close()
    print(json.dumps(out))
    return 0


def mode_verify_tables(path):
    try:
        store = velocore.open(path)
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"error": type(e).__name__, "msg": str(e)}))
        return 3
    try:
        out = {"tables": {}}
        for name in store.tables():
            out["tables"][name] = (store.table(name).get(b"k") or b"").decode()
        out["check_ok"] = bool(store.check()["ok"])
    finally:
        store.close()
    print(json.dumps(out))
    return 0


def mode_verify(path, nthreads, nkeys, readonly):
    out = {"threads": []}
    try:
        store = velocore.open(path, readonly=readonly)
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"error": type(e).__name__, "msg": str(e)}))
        return 3
    try:
        if TABLE not in store.tables():
            out["threads"] = [{"X": 0, "ids": [], "partial": None, "bad": []}
                              for _ in range(nthreads)]
        else:
            table = store.table(TABLE)
            items = dict(table.items())
            for t in range(nthreads):
                shared = [items.get(shared_key(t, j)) for j in range(nkeys)]
                bad = []
                if all(v is None for v in shared):
                    x, partial = 0, None
                else:
                    ids = set()
                    for v in shared:
                        ids.add(int(v.split(b"|", 1)[0]) if v is not None else None)
                    partial = sorted(ids, key=str) if len(ids) != 1 else None
                    x = max(i for i in ids if i is not None)
                    for j, v in enumerate(shared):
                        if v is not None and v != value(t, int(v.split(b"|", 1)[0]), j):
                            bad.append(shared_key(t, j).decode())
                prefix = b"T%d-txn" % t
                ids = []
                for k, v in items.items():
                    if k.startswith(prefix):
                        i = int(k[len(prefix):])
                        ids.append(i)
                        if v != value(t, i, -1):
                            bad.append(k.decode())
                out["threads"].append({"X": x, "ids": sorted(ids), "partial": partial,
                                       "bad": bad})
        chk = store.check()
        out["check_ok"] = bool(chk["ok"])
        out["errors"] = [str(e) for e in chk["errors"]][:20]
    except Exception as e:  # noqa: BLE001
        out = {"error": type(e).__name__, "msg": str(e)}
        print(json.dumps(out))
        return 3
    finally:
        store.close()
    print(json.dumps(out))
    return 0


def main(argv):
    mode = argv[1]
    if mode == "write":
        path, sync, seed, ckpt_every, nkeys, next_ids = argv[2:8]
        mode_write(path, sync, int(seed), int(ckpt_every), int(nkeys),
                   [int(x) for x in next_ids.split(",")])
        return 0
    if mode == "commit-exit":
        path, sync, nkeys, n = argv[2:6]
        mode_commit_exit(path, sync, int(nkeys), int(n))
        return 0
    if mode == "tables":
        mode_tables(argv[2], argv[3], int(argv[4]))
        return 0
    if mode == "seq":
        mode_seq(argv[2], argv[3], int(argv[4]))
        return 0
    if mode == "verify-seq":
        return mode_verify_seq(argv[2])
    if mode == "verify-tables":
        return mode_verify_tables(argv[2])
    if mode == "verify":
        path, nthreads, nkeys = argv[2:5]
        readonly = len(argv) > 5 and argv[5] == "ro"
        return mode_verify(path, int(nthreads), int(nkeys), readonly)
    raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

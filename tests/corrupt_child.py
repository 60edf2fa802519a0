"""Child process for tests/test_corruption.py: builds stores and verifies damaged ones.

Every verify mode prints exactly one JSON line and exits 0 (unless the engine crashes the
interpreter, which the parent detects as a negative return code).

  corrupt_child.py build PATH
      a checkpointed, cleanly closed store with a known dataset (incl. overflow values).
  corrupt_child.py verify PATH [ro]
      reads everything back and compares with the known dataset, then store.check().
  corrupt_child.py write-verify PATH
      writes into the store, checkpoints, reopens and verifies (data + updates).
  corrupt_child.py log-build PATH K
      base data + checkpoint, then K single commits (sync=full); prints where each commit's
      log record landed ({"records": [[segment_name, start, end], ...]}), then os._exit(0)
      so the records stay in the log.
  corrupt_child.py log-verify PATH K [ro]
      recovers and reports which log txns survived, then (unless ro) writes once more,
      reopens and checks the write and earlier state survived.
"""
import hashlib
import json
import os
import random
import sys

import velocore

N_KEYS = 3000
N_OTHER = 100


def expected_data():
    data = {}
    for i in range(N_KEYS):
        k = b"key%06d" % i
        rnd = random.Random(i)
        if i % 97 == 5:
            size = rnd.randrange(5000, 30000)
        else:
            size = rnd.randrange(0, 300)
        data[k] = rnd.randbytes(size)
    other = {b"o%04d" % i: hashlib.sha256(b"%d" % i).digest() * (1 + i % 5)
             for i in range(N_OTHER)}
    return {"data": data, "other": other}


def mode_build(path):
    exp = expected_data()
    with velocore.open(path) as s:
        for name, content in exp.items():
            t = s.table(name)
            items = sorted(content.items())
            for j in range(0, len(items), 500):
                with s.txn() as x:
                    x.put_many(t, items[j:j + 500])
        s.checkpoint()
    print(json.dumps({"ok": True}))


def mode_verify(path, readonly):
    out = {"stage": "open", "exc": None, "msg": None, "wrong": [], "check_ok": None,
           "check_errors": []}
    exp = expected_data()
    s = None
    try:
        s = velocore.open(path, readonly=readonly)
        out["stage"] = "read"
        names = sorted(s.tables())
        if names != sorted(exp):
            out["wrong"].append("tables() == %r" % names)
        for name, content in exp.items():
            if name not in names:
                continue
            t = s.table(name)
            got = list(t.items())
            want = sorted(content.items())
            if got != want:
                gk = [k for k, _ in got]
                out["wrong"].append("%s: range gave %d items, expected %d; first diff %r" % (
                    name, len(got), len(want),
                    next((a[0] for a, b in zip(got, want) if a != b), None) or gk[-1:]))
            with s.snapshot() as snap:
                for k, v in content.items():
                    g = snap.get(t, k)
                    if g != v:
                        out["wrong"].append("%s[%r]: got %s" % (
                            name, k, None if g is None else "%d bytes" % len(g)))
                        break
        out["stage"] = "check"
        chk = s.check()
        out["check_ok"] = bool(chk["ok"])
        out["check_errors"] = [str(e) for e in chk["errors"]][:10]
        out["stage"] = "done"
    except velocore.CorruptionError as e:
        out["exc"] = "CorruptionError"
        out["msg"] = str(e)
    except Exception as e:  # noqa: BLE001
        out["exc"] = type(e).__name__
        out["msg"] = str(e)
    finally:
        if s is not None:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001
                out["close_exc"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out))


def mode_write_verify(path):
    """Write into a (maybe damaged) store, checkpoint, reopen, verify.  A damaged page
    must surface as CorruptionError somewhere; a checkpoint must never fold damage into
    new pages with valid checksums (silent loss)."""
    out = {"phase": "open", "exc": None, "msg": None, "wrong": []}
    exp = expected_data()
    updates = {b"key%06d" % i: b"W%d" % i for i in range(0, N_KEYS, 50)}
    updates[b"new-key"] = b"inserted"
    s = None
    try:
        s = velocore.open(path)
        out["phase"] = "write"
        t = s.table("data")
        with s.txn() as x:
            x.put_many(t, sorted(updates.items()))
        out["phase"] = "checkpoint"
        s.checkpoint()
        out["phase"] = "close"
        s.close()
        s = None
        out["phase"] = "reopen"
        s = velocore.open(path)
        out["phase"] = "read"
        want = dict(exp["data"])
        want.update(updates)
        got = dict(s.table("data").items())
        if got != want:
            missing = [k for k in want if k not in got][:5]
            bad = [k for k in want if k in got and got[k] != want[k]][:5]
            extra = [k for k in got if k not in want][:5]
            out["wrong"].append("data: missing %r bad %r extra %r" % (missing, bad, extra))
        if dict(s.table("other").items()) != exp["other"]:
            out["wrong"].append("other table differs")
        out["phase"] = "check"
        out["check_ok"] = bool(s.check()["ok"])
        out["phase"] = "done"
    except velocore.CorruptionError as e:
        out["exc"] = "CorruptionError"
        out["msg"] = str(e)
    except Exception as e:  # noqa: BLE001
        out["exc"] = type(e).__name__
        out["msg"] = str(e)
    finally:
        if s is not None:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001
                out["close_exc"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out))


def log_value(i, which):
    rnd = random.Random(i * 7 + which)
    return b"%d|" % i + rnd.randbytes(rnd.randrange(200, 600))


def segments(path):
    d = os.path.join(path, "wal")
    return sorted(f for f in os.listdir(d) if f.endswith(".log"))


def read_seg(path, name):
    with open(os.path.join(path, "wal", name), "rb") as f:
        return f.read()


def mode_log_build(path, k):
    s = velocore.open(path, sync="full", checkpoint_mb=64)
    base = s.table("base")
    with s.txn() as x:
        x.put_many(base, [(b"b%03d" % i, b"base%d" % i * 10) for i in range(50)])
    s.checkpoint()
    t = s.table("log")
    snap = {name: read_seg(path, name) for name in segments(path)}
    records = []
    for i in range(1, k + 1):
        with s.txn() as x:
            x.put(t, b"L%03d-a" % i, log_value(i, 0))
            x.put(t, b"last", b"%d" % i)
            x.put(t, b"L%03d-b" % i, log_value(i, 1))
        segs = segments(path)
        last = segs[-1]
        new = read_seg(path, last)
        old = snap.get(last, b"")
        start = 0
        n = min(len(old), len(new))
        while start < n and old[start] == new[start]:
            start += 1
        # the record's first byte is its magic, never 0 (the file may extend past the
        # record with zeros written ahead), so its header says where it ends
        plen = int.from_bytes(new[start + 8:start + 16], "little")
        end = start + 32 + ((plen + 7) & ~7)
        records.append([last, start, end])
        snap = {name: read_seg(path, name) for name in segs}
    print(json.dumps({"records": records, "segments": segments(path)}), flush=True)
    os._exit(0)


def mode_log_verify(path, k, readonly):
    out = {"error": None, "msg": None}
    s = None
    try:
        s = velocore.open(path, readonly=readonly)
        base = s.table("base")
        out["base_ok"] = list(base.items()) == [(b"b%03d" % i, b"base%d" % i * 10)
                                                for i in range(50)]
        present = []
        whole = True
        exact = True
        if "log" in s.tables():
            t = s.table("log")
            for i in range(1, k + 1):
                a = t.get(b"L%03d-a" % i)
                b = t.get(b"L%03d-b" % i)
                if (a is None) != (b is None):
                    whole = False
                if a is not None:
                    present.append(i)
                    if a != log_value(i, 0) or b != log_value(i, 1):
                        exact = False
            last = t.get(b"last")
            x = int(last) if last is not None else 0
        else:
            x = 0
        out["X"] = x
        out["whole"] = whole
        out["exact"] = exact
        out["prefix_ok"] = present == list(range(1, x + 1))
        out["check_ok"] = bool(s.check()["ok"])
        if not readonly:
            s.table("base").put(b"zz-after", b"written after recovery")
            s.close()
            s = velocore.open(path)
            base = s.table("base")
            out["write_after_ok"] = (
                base.get(b"zz-after") == b"written after recovery"
                and (x == 0 or s.table("log").get(b"last") == b"%d" % x))
            out["check_after_ok"] = bool(s.check()["ok"])
    except velocore.CorruptionError as e:
        out["error"] = "CorruptionError"
        out["msg"] = str(e)
    except Exception as e:  # noqa: BLE001
        out["error"] = type(e).__name__
        out["msg"] = str(e)
    finally:
        if s is not None:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001
                out["close_exc"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out))


def main(argv):
    mode = argv[1]
    ro = argv[-1] == "ro"
    if mode == "build":
        mode_build(argv[2])
    elif mode == "verify":
        mode_verify(argv[2], ro)
    elif mode == "write-verify":
        mode_write_verify(argv[2])
    elif mode == "log-build":
        mode_log_build(argv[2], int(argv[3]))
    elif mode == "log-verify":
        mode_log_verify(argv[2], int(argv[3]), ro)
    else:
        raise SystemExit("unknown mode " + mode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The floor under compare.py's workloads: what their Python side costs with no engine.

    python benchmarks/floor.py [--n 1000000] [--reps 3] [--seed 42] [--json FILE]

A benchmark loop such as W1's `for key, value in items: put(table, key, value)` costs
something before any engine does any work: the interpreter's loop, the call, and above
all the cache misses on a million tuples and `bytes` objects strewn over the heap.  This
script times each per-key workload of compare.py three ways, in one process, with the
same data and loops, interleaved within each repetition (medians of --reps):

  floor     the workload with do-nothing callees in the engine's place
            (benchmarks/_floor.pyx, compiled on first use with pyximport, so it needs
            Cython and a C compiler): a put reads its key and value objects, a get reads
            its key and returns a new 100-byte value, a scan yields new (key, value)
            tuples; nothing is stored or looked up
  velocore  compare.py's adapter
  lmdb      compare.py's adapter (skipped if py-lmdb is not installed)

For each workload it prints the time per operation of each, each engine's own part (its
time less the floor), and the best ratio to LMDB that any engine could reach with this
loop (LMDB's time / the floor) beside the target of issue 4, with the engine part that
target leaves: LMDB's time / target - floor.  A target above the best reachable ratio
cannot be met by engine work alone.
"""
import argparse
import gc
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402  (the data, the adapters, the loops)

WORKLOADS = ("W1", "W1b", "W2", "W3", "W3b", "W4", "W5")
TARGETS = dict(compare.TARGETS)


def load_floor():
    import pyximport
    pyximport.install(language_level=3, inplace=False)
    import _floor
    return _floor


class Floor:
    """compare.py's adapter shape, with nothing behind it."""
    name = "floor"
    fl = None

    def __init__(self, path, durable, cache_mb):
        self.n = 0

    def put_each_one_txn(self, items):
        table = None
        put = self.fl.put
        for key, value in items:
            put(table, key, value)

    def put_batch(self, items, sorted_input=False):
        self.n += len(items)
        self.fl.put_many(None, items)

    def settle(self):
        pass

    def get_each(self, keys):
        table = None
        get = self.fl.get
        return sum(1 for key in keys if get(table, key) is not None)

    def get_many(self, keys):
        values = self.fl.get_many(None, keys)
        return len(values) - values.count(None)

    def scan_all(self):
        return sum(1 for _ in self.fl.scan(self.n))

    def scan_short(self, starts, length):
        count = 0
        scan = self.fl.scan
        for _ in starts:
            count += sum(1 for _ in itertools.islice(scan(length), length))
        return count

    def close(self):
        pass


def run_engine(cls, data, workdir, n):
    """Seconds per workload for one engine, each in a fresh directory, as compare.py
    runs them (W3-W5 read the store W2 built, brought to rest first)."""
    sorted_items, insert_order, lookups, starts = data
    out = {}
    for name, items, sorted_input in (("W1", sorted_items, None), ("W1b", sorted_items, True)):
        path = tempfile.mkdtemp(dir=workdir)
        engine = cls(path, False, 256)
        if sorted_input is None:
            out[name], _ = compare.timed(engine.put_each_one_txn, items)
        else:
            out[name], _ = compare.timed(engine.put_batch, items, True)
        engine.close()
        shutil.rmtree(path)
    path = tempfile.mkdtemp(dir=workdir)
    engine = cls(path, False, 256)
    batches = [insert_order[i:i + compare.BATCH] for i in range(0, n, compare.BATCH)]

    def insert_batches():
        for batch in batches:
            engine.put_batch(batch)
    out["W2"], _ = compare.timed(insert_batches)
    del batches
    engine.settle()
    took, found = compare.timed(engine.get_each, lookups)
    compare.expect("W3 found", found, n)
    out["W3"] = took
    took, found = compare.timed(engine.get_many, lookups)
    compare.expect("W3b found", found, n)
    out["W3b"] = took
    took, count = compare.timed(engine.scan_all)
    compare.expect("W4 keys", count, n)
    out["W4"] = took
    out["W5"], _ = compare.timed(engine.scan_short, starts, compare.SHORT_LENGTH)
    engine.close()
    shutil.rmtree(path)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json")
    ap.add_argument("--dir", help="parent of the temporary stores")
    args = ap.parse_args()
    Floor.fl = load_floor()
    engines = [Floor, compare.Velocore]
    try:
        import lmdb  # noqa: F401
        engines.append(compare.Lmdb)
    except ImportError:
        print("py-lmdb is not installed: no LMDB column, no ratios", file=sys.stderr)
    data = compare.make_data(args.n, args.seed)
    ops = {w: args.n for w in WORKLOADS}
    ops["W5"] = compare.SHORT_SCANS
    runs = {cls.name: {w: [] for w in WORKLOADS} for cls in engines}
    workdir = tempfile.mkdtemp(dir=args.dir, prefix="velocore-floor-")
    try:
        for rep in range(args.reps):
            k = rep % len(engines)
            for cls in engines[k:] + engines[:k]:
                gc.collect()
                got = run_engine(cls, data, workdir, args.n)
                for w in WORKLOADS:
                    runs[cls.name][w].append(got[w] / ops[w] * 1e9)
                print("rep %d %-8s %s" % (rep + 1, cls.name, " ".join(
                    "%s=%.0f" % (w, got[w] / ops[w] * 1e9) for w in WORKLOADS)), file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = {e: {w: statistics.median(v) for w, v in r.items()} for e, r in runs.items()}
    has_lmdb = "lmdb" in med
    print("n = %d, median of %d repetitions, ns per operation (W5: per scan of %d keys)\n"
          % (args.n, args.reps, compare.SHORT_LENGTH))
    head = "| workload | floor | velocore | velocore - floor |"
    if has_lmdb:
        head += (" lmdb | lmdb - floor | best reachable ratio (lmdb / floor) | target |"
                 " engine part the target leaves (lmdb / target - floor) |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    rows = {}
    for w in WORKLOADS:
        f, v = med["floor"][w], med["velocore"][w]
        row = {"floor_ns": f, "velocore_ns": v}
        line = "| %s | %.0f | %.0f | %.0f |" % (w, f, v, v - f)
        if has_lmdb:
            lm = med["lmdb"][w]
            target = TARGETS.get(w)
            row.update(lmdb_ns=lm, best_ratio=lm / f, target=target,
                       target_engine_ns=lm / target - f if target else None)
            line += " %.0f | %.0f | %.2fx | %s | %s |" % (
                lm, lm - f, lm / f, "%.1fx" % target if target else "",
                "%.0f" % (lm / target - f) if target else "")
        rows[w] = row
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": args.n, "reps": args.reps, "runs": runs, "median": rows}, fh, indent=1)


if __name__ == "__main__":
    main()

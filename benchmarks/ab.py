"""Two commits of velocore, A against B, on compare.py's workloads, in alternating
fresh processes.

    python benchmarks/ab.py A B [--workloads W1,W1b,W2,W3,W3b,W4,W5] [--pairs 4] [--n 1000000]

A and B are git revisions of this repository.  Each is checked out into a temporary
worktree and built in place (`setup.py build_ext --inplace`); then, `--pairs` times,
the velocore workloads run once with A's build and once with B's (the order alternates
from pair to pair), each in a fresh store, the way compare.py's workloads run: W1 in a
child process of its own, then W2 and the reads after it in a second, then W1b in a
third.  It prints each workload's nanoseconds per operation, the
median per build, and in how many pairs B was faster.

On a noisy machine (a VM whose speed drifts by 10-20% over minutes) this says more than
two full compare.py runs: the two builds take turns a few seconds apart, and a pair's two
runs see nearly the same machine.  A second table splits each workload's CPU time into
user and system time (getrusage, the whole process): the kernel's share (zeroing fresh
memory, on this VM anywhere from a tenth to a half of a load's time) swings far more
than the user part does, so a change to the engine's own code shows in the user column
when the wall-clock one cannot tell.

The workloads are compare.py's: W1, W1b and W2 load an empty store; W3, W3b, W4 and W5
read the store W2 built, brought to rest by a checkpoint (W3 then runs on the cache the
checkpoint left, as in compare.py), in that order (W5 is timed per scan of 100 keys).
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ALL = ("W1", "W1b", "W2", "W3", "W3b", "W4", "W5")


def child(workloads, n, seed, workdir):
    """Run the workloads with whichever velocore is importable; print JSON ns/op."""
    sys.path.insert(0, HERE)
    import compare
    import velocore
    tree = os.environ.get("PYTHONPATH", "")
    if not os.path.abspath(velocore.__file__).startswith(os.path.abspath(tree) + os.sep):
        sys.exit("ab.py: imported %s, not the build in %s" % (velocore.__file__, tree))
    sorted_items, insert_order, lookups, starts = compare.make_data(n, seed)
    out = {}

    def fresh(name):
        path = os.path.join(workdir, name)
        shutil.rmtree(path, ignore_errors=True)
        return compare.Velocore(path, False, 256)

    def timed(key, fn, count):
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        fn()
        out[key] = (time.perf_counter() - started) / count * 1e9
        after = resource.getrusage(resource.RUSAGE_SELF)
        out[key + " user"] = (after.ru_utime - before.ru_utime) / count * 1e9
        out[key + " sys"] = (after.ru_stime - before.ru_stime) / count * 1e9

    for name in ("W1", "W1b"):
        if name in workloads:
            engine = fresh(name)
            if name == "W1":
                timed(name, lambda: engine.put_each_one_txn(sorted_items), n)
            else:
                timed(name, lambda: engine.put_batch(sorted_items, sorted_input=True), n)
            engine.close()
    if {"W2", "W3", "W3b", "W4", "W5"} & set(workloads):
        engine = fresh("W2")

        def w2():
            for i in range(0, n, compare.BATCH):
                engine.put_batch(insert_order[i:i + compare.BATCH])
        timed("W2", w2, n)
        engine.settle()
        timed("W3", lambda: engine.get_each(lookups), n)
        timed("W3b", lambda: engine.get_many(lookups), n)
        timed("W4", engine.scan_all, n)
        timed("W5", lambda: engine.scan_short(starts, compare.SHORT_LENGTH), len(starts))
        engine.close()
    print(json.dumps({k: v for k, v in out.items() if k.split()[0] in workloads}))


def child_groups(workloads):
    """The child processes a build's run takes, in compare.py's order: W1 in one of its
    own, then W2 with the reads of the store it builds, then W1b.  Where a load starts
    matters: memory freed moments before (by an earlier load in the same process, or by
    the process before) can be far cheaper than fresh memory on a VM, huge pages above
    all (benchmarks/fresh_memory.py)."""
    reads = [w for w in workloads if w not in ("W1", "W1b")]
    groups = [["W1"]] if "W1" in workloads else []
    groups += [reads] if reads else []
    return groups + ([["W1b"]] if "W1b" in workloads else [])


def build(rev, root):
    tree = os.path.join(root, rev.replace("/", "_"))
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", tree, rev],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tree


def summary(results, keys):
    print("| workload | A | B | B/A | B faster in |")
    print("|---|---:|---:|---:|---:|")
    for w in keys:
        a = [r[w] for r in results["A"]]
        b = [r[w] for r in results["B"]]
        wins = sum(1 for x, y in zip(a, b) if y < x)
        print("| %s | %.0f | %.0f | %.2f | %d of %d |" % (
            w, statistics.median(a), statistics.median(b),
            statistics.median(b) / max(statistics.median(a), 1e-9), wins, len(a)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--workloads", default=",".join(ALL))
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dir", default=None, help="parent of the temporary trees and stores")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    bad = [w for w in workloads if w not in ALL]
    if bad:
        ap.error("unknown workloads %s (choose from %s)" % (bad, ",".join(ALL)))
    root = tempfile.mkdtemp(prefix="velocore-ab-", dir=args.dir)
    if args.child:
        try:
            child(workloads, args.n, args.seed, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    trees = {}
    try:
        for label, rev in (("A", args.a), ("B", args.b)):
            print("building %s = %s ..." % (label, rev), flush=True)
            trees[label] = build(rev, root)
        results = {"A": [], "B": []}
        for pair in range(args.pairs):
            for label in (("A", "B") if pair % 2 == 0 else ("B", "A")):
                env = dict(os.environ, PYTHONPATH=trees[label])
                got = {}
                for group in child_groups(workloads):
                    line = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), args.a, args.b, "--child",
                         "--workloads", ",".join(group), "--n", str(args.n),
                         "--seed", str(args.seed)] + (["--dir", args.dir] if args.dir else []),
                        env=env, check=True, capture_output=True, text=True).stdout
                    got.update(json.loads(line.strip().splitlines()[-1]))
                results[label].append(got)
                print("pair %d %s: %s" % (pair + 1, label,
                                          "  ".join("%s %.0f" % (w, got[w]) for w in workloads)),
                      flush=True)
        print("\nns per operation, median of %d (A = %s, B = %s)\n" % (args.pairs, args.a, args.b))
        summary(results, workloads)
        print("\nCPU time per operation (the process's, its background threads included), "
              "user and system apart:\n")
        summary(results, [w + kind for w in workloads for kind in (" user", " sys")])
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Where the time goes: profile one compare.py workload of velocore with Linux perf.

    python benchmarks/profile.py W3 [--n 1000000] [--top 12] [--out DIR] [--call-graph dwarf]
    python benchmarks/profile.py all

The workload's data and store are prepared first (untimed, unprofiled), exactly as
benchmarks/compare.py prepares them; then `perf record` attaches to this process for the
workload alone.  The report groups samples by where they fall:

  engine     velocore's extension modules (B+tree, MVCC, pager, log, facade)
  python     the interpreter (the benchmark loop, object creation, argument passing)
  libc       memcpy/memcmp/malloc called by either
  kernel     system calls, page faults, I/O

and lists the hottest symbols, the samples' split over the threads (the workload's and
the engine's background ones), then the store's memtable figures from `info()` (size,
arena chunks reused or mapped ahead, spare memory).  Needs `perf` (linux-tools) and permission to profile
(perf_event_paranoid <= 1 or root).  The raw data stays in --out for `perf report -i`.
"""
import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the workloads and the velocore adapter)

WORKLOADS = ("W1", "W1b", "W2", "W3", "W3b", "W4", "W5", "W6")


def prepare(name, path, n, seed):
    """Open the store and build what the workload needs; return the timed callable."""
    sorted_items, insert_order, lookups, starts = compare.make_data(n, seed)
    durable = name == "W6"
    engine = compare.Velocore(path, durable, 256)
    if name == "W1":
        return engine, lambda: engine.put_each_one_txn(sorted_items)
    if name == "W1b":
        return engine, lambda: engine.put_batch(sorted_items, sorted_input=True)
    if name == "W2":
        def w2():
            for i in range(0, n, compare.BATCH):
                engine.put_batch(insert_order[i:i + compare.BATCH])
        return engine, w2
    if name == "W6":
        def w6():
            for key, value in insert_order[:compare.DURABLE_COMMITS]:
                engine.commit_one(key, value)
        return engine, w6
    # the read workloads read the store W2 builds, brought to rest first, and run in
    # compare.py's order (W3 on a cold cache, then W3b, W4, W5): the ones before the
    # profiled one run first, unprofiled, so the cache is as warm as it is there
    for i in range(0, n, compare.BATCH):
        engine.put_batch(insert_order[i:i + compare.BATCH])
    engine.settle()
    steps = [("W3", lambda: engine.get_each(lookups)),
             ("W3b", lambda: engine.get_many(lookups)),
             ("W4", engine.scan_all),
             ("W5", lambda: engine.scan_short(starts, compare.SHORT_LENGTH))]
    for step, run in steps:
        if step == name:
            return engine, run
        run()
    raise ValueError(name)


def classify(dso):
    if "velocore" in dso or dso.startswith("_store") or dso.startswith("_mvcc") or \
            dso.startswith("_btree") or dso.startswith("_pager") or dso.startswith("_wal"):
        return "engine"
    if "kernel" in dso or dso.startswith("["):
        return "kernel"
    if "libpython" in dso or dso == "python" or dso.startswith("python3"):
        return "python"
    if dso.startswith("libc") or dso.startswith("ld-linux"):
        return "libc"
    return "other"


def summarize(data, top):
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                          "--sort", "dso,sym", "-g", "none", "--percent-limit", "0"],
                         capture_output=True, text=True, check=True).stdout
    groups = collections.Counter()
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].endswith("%"):
            continue
        pct = float(parts[0][:-1])
        dso = parts[1]
        sym = " ".join(parts[3:])
        groups[classify(dso)] += pct
        rows.append((pct, dso, sym))
    lines = ["| where | share of samples |", "|---|---:|"]
    for name in ("engine", "python", "libc", "kernel", "other"):
        lines.append("| %s | %.1f%% |" % (name, groups[name]))
    lines += ["", "| % | module | symbol |", "|---:|---|---|"]
    for pct, dso, sym in sorted(rows, reverse=True)[:top]:
        sym = sym.replace("__pyx_f_8velocore_", "").replace("__pyx_pf_8velocore_", "")
        lines.append("| %.1f | %s | `%s` |" % (pct, dso, sym[:70]))
    return "\n".join(lines)


def profile(name, args):
    work = tempfile.mkdtemp(prefix="velocore-profile-", dir=args.dir)
    data = os.path.join(args.out, "perf-%s.data" % name)
    try:
        engine, run = prepare(name, os.path.join(work, "db"), args.n, args.seed)
        graph = ["-g"] if args.call_graph == "fp" else ["--call-graph", "dwarf,16384"]
        perf = subprocess.Popen(["perf", "record", "-F", str(args.freq)] + graph + [
                                 "-o", data, "-p", str(os.getpid())],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)                       # let perf attach
        started = time.perf_counter()
        run()
        took = time.perf_counter() - started
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=120)
        info = engine.store.info()
        engine.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("## %s: %s (n=%d), %.2f s under perf\n" % (name, compare.LABELS[name], args.n, took))
    print(summarize(data, args.top))
    print()
    print(by_thread(data))
    print()
    print("After the workload: %d checkpoints; memtables hold %.1f MiB, %d arena chunks "
          "were reused from retired memtables, %d were mapped ahead by the filler, "
          "%.1f MiB are spare." % (
              info["checkpoints"], info["memtable_bytes"] / 2**20,
              info["memtable_chunks_reused"], info.get("memtable_chunks_mapped_ahead", 0),
              info["memtable_spare_bytes"] / 2**20))
    print()


def by_thread(data):
    """The samples' split over the process's threads: the workload runs in the main one
    (its id is the process id), the engine's background threads beside it."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                          "--sort", "pid", "-g", "none", "--percent-limit", "0"],
                         capture_output=True, text=True, check=True).stdout
    lines = ["| thread | share of samples |", "|---|---:|"]
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[0].endswith("%") or ":" not in parts[1]:
            continue
        tid = parts[1].split(":")[0]
        who = "the workload's" if tid == str(os.getpid()) else "background " + tid
        lines.append("| %s | %s |" % (who, parts[0]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workload", choices=WORKLOADS + ("all",))
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--freq", type=int, default=2000, help="perf samples per second")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "velocore-perf"))
    ap.add_argument("--dir", default=None, help="parent of the temporary store")
    ap.add_argument("--call-graph", choices=("fp", "dwarf"), default="fp",
                    help="how perf records stacks: frame pointers (perf -g), or DWARF "
                         "unwinding, which also follows code built without them (slower, "
                         "larger files)")
    args = ap.parse_args(argv)
    if shutil.which("perf") is None:
        ap.error("perf is not installed (Debian: linux-perf)")
    os.makedirs(args.out, exist_ok=True)
    for name in (WORKLOADS if args.workload == "all" else (args.workload,)):
        profile(name, args)


if __name__ == "__main__":
    main()

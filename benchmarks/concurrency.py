"""Concurrency benchmark: how velocore behaves with several threads.

    python benchmarks/concurrency.py [--durable-n 2000] [--threads 1,2,4,8]
                                     [--read-keys 100000] [--seconds 2] [--pairs 10]
                                     [--many-keys 1000000] [--seed 42] [--dir DIR]

Prints markdown tables:

  (a) durable commits/s: sync="full", transactions of one put each (distinct keys),
      with 1, 2, 4 and 8 committing threads, and the ratio to 1 thread (group commit
      lets concurrent committers share one flush): each count in alternating pairs of
      phases with 1 thread, the median of the pairs' ratios;
  (b) a reader thread's gets/s (read transactions of 1,000 per-op gets on a preloaded
      table) beside 1,000 other keys in the memtable (what a writer's memtable costs
      each get), and beside one writer thread committing 10-put transactions back to
      back (sync="full" and sync="off"), as a % of its rate alone: alternating pairs of
      phases alone and beside, the median of the pairs' ratios;
  (c) get_many of --many-keys keys: 1 thread, 2 threads each looking up its own half,
      2 threads each looking up the full set; aggregate keys/s (get_many's loop runs
      without the GIL, so two threads can overlap on two cores), each 2-thread case in
      alternating pairs of phases with 1 thread, the median of the pairs' ratios.

Every part pairs its phases because this VM's speed drifts by 10-40% within seconds:
phases minutes apart mostly measure the drift.

Stores live in temporary directories under --dir (default: the system temp dir) and
are removed afterwards. Standard library and velocore only.
"""
import argparse
import gc
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time

import velocore

VALUE = b"x" * 100


def key(i):
    return b"key:%010d" % i


def run_threads(n, target):
    """Start n threads running target(i) together; return wall seconds until all end."""
    barrier = threading.Barrier(n + 1)
    errors = []

    def wrap(i):
        barrier.wait()
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ths = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for th in ths:
        th.start()
    gc.collect()
    barrier.wait()
    started = time.perf_counter()
    for th in ths:
        th.join()
    took = time.perf_counter() - started
    if errors:
        raise errors[0]
    return took


# ---------------------------------------------------------------------- (a) durable commits

def durable_phase(workdir, n, total, seed):
    """One phase of (a) in a fresh store: `total` single-put durable commits of distinct
    keys from n threads; returns (commits/s, commits per fdatasync)."""
    path = os.path.join(workdir, "durable-%d.vc" % n)
    with velocore.open(path, sync="full") as store:
        tbl = store.table("t")
        per = max(1, total // n)
        order = list(range(per * n))
        random.Random(seed + n).shuffle(order)

        def commit_loop(i):
            for j in order[i * per:(i + 1) * per]:
                with store.txn() as t:
                    t.put(tbl, key(j), VALUE)

        before = store.info()
        took = run_threads(n, commit_loop)
        after = store.info()
        assert len(tbl) == per * n
    shutil.rmtree(path)
    flushes = max(1, after["log_flushes"] - before["log_flushes"])
    return per * n / took, (after["commits"] - before["commits"]) / flushes


def bench_durable(workdir, total, thread_counts, seed, pairs):
    """Rows (threads, commits per phase, commits/s, vs 1 thread, commits per fdatasync):
    each count above 1 runs `pairs` alternating pairs of a 1-thread phase and an n-thread
    phase; the medians of the rates, of the pairs' ratios and of the group sizes."""
    rows = []
    ones = []

    def one():
        return durable_phase(workdir, 1, total, seed)[0]

    for n in thread_counts:
        if n == 1:
            continue
        groups = []

        def many(n=n):
            rate, group = durable_phase(workdir, n, total, seed)
            groups.append(group)
            return rate

        solo, multi = paired(pairs, one, many)
        ones.extend(solo)
        rows.append((n, max(1, total // n) * n, statistics.median(multi),
                     statistics.median(b / a for a, b in zip(solo, multi)),
                     statistics.median(groups)))
    if 1 in thread_counts:
        if not ones:
            ones = [one() for _ in range(pairs)]
        rows.insert(0, (1, total, statistics.median(ones), 1.0, 1.0))
    return rows


# ---------------------------------------------------------------------- (b) reader vs writer

def preload(store, n, seed):
    tbl = store.table("t")
    with store.txn() as t:
        t.put_many(tbl, ((key(i), VALUE) for i in range(n)))
    store.checkpoint()
    return tbl


def read_phase(store, tbl, batch, seconds):
    """gets/s of the calling thread over `seconds`: read transactions of the 1,000 keys
    of `batch`, one per-op get each."""
    gets = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        with store.snapshot() as s:
            get = s.get
            for k in batch:
                get(tbl, k)
        gets += len(batch)
    return gets / (time.perf_counter() - started)


class Writer:
    """A thread that commits 10-put transactions of fresh keys back to back while a
    `with writer:` block runs, and waits between blocks."""

    def __init__(self, store, tbl, first_key):
        self.store, self.tbl, self.next = store, tbl, first_key
        self.go = threading.Event()        # set: commit back to back
        self.running = threading.Event()   # set: doing so
        self.idle = threading.Event()      # set: between blocks, not committing
        self.stop = threading.Event()
        self.commits = 0
        self.seconds = 0.0
        self.errors = []
        self.thread = threading.Thread(target=self.loop)
        self.thread.start()
        self.idle.wait()

    def loop(self):
        try:
            while True:
                self.idle.set()
                self.go.wait()
                if self.stop.is_set():
                    return
                self.idle.clear()
                self.running.set()
                while self.go.is_set():
                    with self.store.txn() as t:
                        for _ in range(10):
                            t.put(self.tbl, key(self.next), VALUE)   # fresh keys: no conflicts
                            self.next += 1
                    self.commits += 1
                self.running.clear()
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)
            self.running.set()
            self.idle.set()

    def __enter__(self):
        self.go.set()
        self.running.wait()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.go.clear()
        self.idle.wait()
        self.seconds += time.perf_counter() - self.started
        if self.errors:
            raise self.errors[0]

    def close(self):
        self.stop.set()
        self.go.set()
        self.thread.join()
        if self.errors:
            raise self.errors[0]


def paired(pairs, base, other):
    """Run `base()` and `other()` (each returns a rate) `pairs` times, which one first
    alternating; return (base rates, other rates).  This VM's speed drifts by 10-40%
    within seconds, so one phase of each, one after the other, mostly measures the drift;
    the ratio of two neighbouring phases does not."""
    a, b = [], []
    for i in range(pairs):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            gc.collect()
            (a if which == 0 else b).append(base() if which == 0 else other())
    return a, b


def bench_reader(workdir, n_keys, seconds, seed, pairs):
    """Rows (case, reader gets/s alone, gets/s in the case, % of alone, writer commits/s):
    medians over `pairs` pairs of phases of seconds / pairs each, the store checkpointed
    (memtable empty) before each phase; % of alone is the median of the pairs' ratios."""
    rows = []
    phase = seconds / pairs
    rnd = random.Random(seed)
    batch = [key(rnd.randrange(n_keys)) for _ in range(1000)]

    def row(name, solo, other, wrate=None):
        rows.append((name, statistics.median(solo), statistics.median(other),
                     100.0 * statistics.median(b / a for a, b in zip(solo, other)), wrate))

    for sync in ("full", "off"):
        path = os.path.join(workdir, "reader-%s.vc" % sync)
        with velocore.open(path, sync=sync) as store:
            tbl = preload(store, n_keys, seed)

            def alone():
                store.checkpoint()
                return read_phase(store, tbl, batch, phase)

            if sync == "full":
                # what a writer's memtable alone costs the reader: every get then checks
                # the memtable's key filter before the tree (1,000 keys it never reads)
                unread = [n_keys + 10**8]

                def with_memtable():
                    store.checkpoint()
                    with store.txn() as t:
                        t.put_many(tbl, ((key(unread[0] + i), VALUE) for i in range(1000)))
                    unread[0] += 1000
                    return read_phase(store, tbl, batch, phase)

                solo, other = paired(pairs, alone, with_memtable)
                row("1,000 unread keys in the memtable", solo, other)

            writer = Writer(store, tbl, n_keys)
            try:
                def shared():
                    store.checkpoint()
                    with writer:
                        return read_phase(store, tbl, batch, phase)

                solo, other = paired(pairs, alone, shared)
            finally:
                writer.close()
            row('a writer, sync="%s"' % sync, solo, other, writer.commits / writer.seconds)
        shutil.rmtree(path)
    return rows


# ---------------------------------------------------------------------- (c) get_many

def bench_get_many(workdir, n_keys, seed, pairs):
    """Rows (case, keys looked up, keys/s, vs 1 thread): each 2-thread case runs `pairs`
    alternating pairs of a 1-thread phase and its own phase; medians of the rates and of
    the pairs' ratios."""
    path = os.path.join(workdir, "many.vc")
    rows = []
    with velocore.open(path, sync="off") as store:
        tbl = store.table("t")
        keys = [key(i) for i in range(n_keys)]
        with store.txn() as t:
            t.put_many(tbl, ((k, VALUE) for k in keys))
        store.checkpoint()
        random.Random(seed).shuffle(keys)
        half = n_keys // 2
        with store.snapshot() as s:
            s.get_many(tbl, keys)        # warm the cache

        def phase(parts):
            def look(i):
                # a transaction serves one thread at a time: each its own snapshot
                with store.snapshot() as s:
                    got = s.get_many(tbl, parts[i])
                assert len(got) == len(parts[i]) and got[0] is not None

            return sum(len(p) for p in parts) / run_threads(len(parts), look)

        cases = [
            ("2 threads, one half each", [keys[:half], keys[half:]]),
            ("2 threads, all keys each", [keys, keys]),
        ]
        ones = []
        for name, parts in cases:
            solo, two = paired(pairs, lambda: phase([keys]), lambda parts=parts: phase(parts))
            ones.extend(solo)
            rows.append((name, sum(len(p) for p in parts), statistics.median(two),
                         statistics.median(b / a for a, b in zip(solo, two))))
        rows.insert(0, ("1 thread, all keys", n_keys, statistics.median(ones), 1.0))
    shutil.rmtree(path)
    return rows


def part_a(args, workdir, thread_counts):
    rows = bench_durable(workdir, args.durable_n, thread_counts, args.seed, args.pairs)
    print('## (a) durable commits (sync="full", one put per transaction)\n')
    print(f"Each thread count against 1 thread in {args.pairs} pairs of alternating "
          f"phases, a fresh store each; medians, and vs 1 thread is the median of the "
          f"pairs' ratios.\n")
    print("| threads | commits per phase | commits/s | vs 1 thread | commits per fdatasync |")
    print("|---:|---:|---:|---:|---:|")
    for n, total, rate, ratio, group in rows:
        print(f"| {n} | {total:,} | {rate:,.0f} | {ratio:.2f}x | {group:.2f} |")
    print()
    sys.stdout.flush()


def part_b(args, workdir):
    rows = bench_reader(workdir, args.read_keys, args.seconds, args.seed, args.pairs)
    print(f"## (b) one reader thread: read transactions of 1,000 gets "
          f"({args.read_keys:,} preloaded keys), alone and beside ...\n")
    print(f"Medians of {args.pairs} pairs of alternating phases; % of alone is the "
          f"median of the pairs' ratios.\n")
    print("| beside | gets/s alone | gets/s beside | % of alone | "
          "writer commits/s (10 puts each) |")
    print("|---|---:|---:|---:|---:|")
    for name, solo, rate, pct, wrate in rows:
        w = "" if wrate is None else f"{wrate:,.0f}"
        print(f"| {name} | {solo:,.0f} | {rate:,.0f} | {pct:.0f}% | {w} |")
    print()
    sys.stdout.flush()


def part_c(args, workdir):
    rows = bench_get_many(workdir, args.many_keys, args.seed, args.pairs)
    print(f"## (c) get_many of {args.many_keys:,} keys (shuffled; one snapshot per thread)\n")
    print(f"Each 2-thread case against 1 thread in {args.pairs} pairs of alternating "
          f"phases; medians, and vs 1 thread is the median of the pairs' ratios.\n")
    print("| case | keys looked up | aggregate keys/s | vs 1 thread |")
    print("|---|---:|---:|---:|")
    for name, total, rate, ratio in rows:
        print(f"| {name} | {total:,} | {rate:,.0f} | {ratio:.2f}x |")
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--durable-n", type=int, default=2000,
                    help="durable commits per thread count (split over the threads)")
    ap.add_argument("--threads", default="1,2,4,8", help="committing thread counts for (a)")
    ap.add_argument("--read-keys", type=int, default=100_000, help="preloaded keys for (b)")
    ap.add_argument("--seconds", type=float, default=2.0,
                    help="measuring time per case of (b), alone and in the case each")
    ap.add_argument("--pairs", type=int, default=10,
                    help="alternating pairs of phases per case of (a), (b) and (c)")
    ap.add_argument("--many-keys", type=int, default=1_000_000, help="keys for (c)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dir", default=None, help="where to create the temporary stores")
    ap.add_argument("--parts", default="abc", help="which of the parts (a), (b), (c) to run")
    args = ap.parse_args(argv)
    if not args.parts or set(args.parts) - set("abc"):
        ap.error("--parts takes letters from a, b, c")
    thread_counts = [int(x) for x in args.threads.split(",") if x]

    workdir = tempfile.mkdtemp(prefix="velocore-conc-", dir=args.dir)
    try:
        print("# velocore concurrency benchmark\n")
        print(f"python {platform.python_version()}, {platform.machine()}, "
              f"{os.cpu_count()} CPUs, simd {velocore.simd_level()}, dir {workdir}, "
              f"seed {args.seed}\n")
        if "a" in args.parts:
            part_a(args, workdir, thread_counts)
        if "b" in args.parts:
            part_b(args, workdir)
        if "c" in args.parts:
            part_c(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Page-cache misses from several threads: get_many over a store much bigger than the cache.

    python benchmarks/cache_misses.py [--dir DIR] [--keys 1000000] [--lookups 200000]
                                      [--cache-mb 4] [--repeat 3] [--seed 7]

Builds (or reuses, when DIR already holds one) a store of --keys keys (16-byte keys,
100-byte values), reopens it with cache_mb=--cache-mb, and times get_many of --lookups
random keys: from 1 thread, then the same keys split over 2 threads (one half each).
Nearly every lookup misses the page cache, so this shows whether misses from two
threads overlap.  Prints the best of --repeat runs of each; no assertions.
Standard library and velocore only.
"""
import argparse
import os
import random
import shutil
import tempfile
import threading
import time

import velocore

VALUE_SIZE = 100


def key(i):
    return b"k%015d" % i


def value(i):
    return (b"%016d" % i) * (VALUE_SIZE // 16) + b"v" * (VALUE_SIZE % 16)


def build(path, n):
    with velocore.open(path, sync="off", checkpoint_mb=256) as s:
        t = s.table("t")
        step = 50000
        for lo in range(0, n, step):
            with s.txn() as x:
                x.put_many(t, [(key(i), value(i)) for i in range(lo, min(n, lo + step))])
        s.checkpoint()


def timed(store, parts):
    """get_many of each list in parts, one thread per list; wall seconds from the common
    start until the last get_many returns (checking the values is not timed)."""
    t = store.table("t")
    barrier = threading.Barrier(len(parts) + 1)
    ends = []
    bad = []

    def run(ids):
        keys = [key(i) for i in ids]
        with store.snapshot() as snap:
            barrier.wait()
            got = snap.get_many(t, keys)
            ends.append(time.perf_counter())
        if any(g != value(i) for g, i in zip(got, ids)):
            bad.append(1)

    ths = [threading.Thread(target=run, args=(p,)) for p in parts]
    for th in ths:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in ths:
        th.join()
    if bad:
        raise SystemExit("wrong values read")
    return max(ends) - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir")
    ap.add_argument("--keys", type=int, default=1000000)
    ap.add_argument("--lookups", type=int, default=200000)
    ap.add_argument("--cache-mb", type=float, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    tmp = None
    path = a.dir
    if path is None:
        tmp = tempfile.mkdtemp(prefix="vc-misses-")
        path = os.path.join(tmp, "store")
    try:
        if not os.path.exists(os.path.join(path, "data.vc")):
            build(path, a.keys)
        rnd = random.Random(a.seed)
        ids = [rnd.randrange(a.keys) for _ in range(a.lookups)]
        half = len(ids) // 2
        best = {1: float("inf"), 2: float("inf")}
        for _ in range(a.repeat):
            for nthreads, parts in ((1, [ids]), (2, [ids[:half], ids[half:]])):
                with velocore.open(path, cache_mb=a.cache_mb) as s:
                    best[nthreads] = min(best[nthreads], timed(s, parts))
                    info = s.info()
        print("store %s: %d keys, cache_mb=%g, %d lookups (misses in the last run: %d)"
              % (path, a.keys, a.cache_mb, a.lookups, info["cache_misses"]))
        for n in (1, 2):
            print("%d thread%s: %.3f s  %.0f keys/s" % (n, "s" if n > 1 else " ", best[n],
                                                       a.lookups / best[n]))
        print("2 threads / 1 thread speed-up: %.2fx" % (best[1] / best[2]))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

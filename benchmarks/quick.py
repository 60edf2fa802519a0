"""Quick benchmark: velocore next to sqlite3, measured in the same run.

    python benchmarks/quick.py [--n 200000] [--durable-n 1000] [--value-size 100]
                               [--seed 42] [--sync normal|off] [--dir DIR]

Prints a markdown table of operations per second for each phase and the ratio
velocore/sqlite3 (above 1 means velocore is faster). Both engines get the same keys
(b"key:%010d", inserted in a seeded random order), the same random values and the same
lookup order. Only the standard library and velocore are needed.

Phases:
  put, one txn      n single puts inside one read-write transaction
  put_many          n puts as put_many / executemany calls of 10,000 in one transaction
  get, one snapshot n random point reads inside one read-only transaction
  full range scan   every (key, value) of the table in key order
  durable commits   durable-n transactions of one put each, every one flushed to disk

Settings that keep the comparison fair:
  sqlite3: WAL journal, tables `WITHOUT ROWID` (a clustered B-tree keyed like velocore),
  cache_size = velocore's default cache (256 MiB), synchronous=NORMAL (or OFF with
  --sync off) matching velocore's sync="normal" (or "off"), synchronous=FULL matching
  sync="full" for the durable commits. Both are checkpointed (not timed) before reads.
"""
import argparse
import gc
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time

import velocore

BATCH = 10_000          # items per put_many / executemany call
CACHE_MB = 256          # velocore's default cache_mb; sqlite3 gets the same budget


def timed(fn):
    """Run fn() once after a collection; return (seconds, fn's result)."""
    gc.collect()
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def chunks(seq, size):
    for first in range(0, len(seq), size):
        yield seq[first:first + size]


# --------------------------------------------------------------------------------------
# velocore
# --------------------------------------------------------------------------------------

def run_velocore(workdir, data, sync):
    keys, values, lookups, durable = data["keys"], data["values"], data["lookups"], data["durable"]
    results = {}
    store = velocore.open(os.path.join(workdir, "bench.vc"), sync=sync, cache_mb=CACHE_MB)
    try:
        per_op = store.table("per_op")
        batched = store.table("batched")

        def put_one_txn():
            with store.txn() as t:
                put = t.put
                for key, value in zip(keys, values):
                    put(per_op, key, value)
        results["put"] = timed(put_one_txn)[0]

        items = list(zip(keys, values))

        def put_many():
            with store.txn() as t:
                for batch in chunks(items, BATCH):
                    t.put_many(batched, batch)
        results["put_many"] = timed(put_many)[0]
        del items

        store.checkpoint()

        def get_one_snapshot():
            found = 0
            with store.snapshot() as s:
                get = s.get
                for key in lookups:
                    if get(per_op, key) is not None:
                        found += 1
            return found
        results["get"], found = timed(get_one_snapshot)
        check_count("velocore get", found, len(lookups))

        def scan():
            count = 0
            with store.snapshot() as s:
                for _ in s.range(per_op):
                    count += 1
            return count
        results["scan"], count = timed(scan)
        check_count("velocore scan", count, len(keys))
    finally:
        store.close()

    store = velocore.open(os.path.join(workdir, "durable.vc"), sync="full", cache_mb=CACHE_MB)
    try:
        table = store.table("durable")

        def durable_commits():
            for key, value in durable:
                with store.txn() as t:
                    t.put(table, key, value)
        results["durable"] = timed(durable_commits)[0]
        with store.snapshot() as s:
            check_count("velocore durable", sum(1 for _ in s.range(table, keys_only=True)),
                        len(durable))
    finally:
        store.close()
    return results


# --------------------------------------------------------------------------------------
# sqlite3
# --------------------------------------------------------------------------------------

def sqlite_connect(path, synchronous):
    con = sqlite3.connect(path, isolation_level=None)   # explicit BEGIN/COMMIT
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=%s" % synchronous)
    con.execute("PRAGMA cache_size=%d" % (-CACHE_MB * 1024))   # negative: KiB
    return con


def run_sqlite(workdir, data, sync):
    keys, values, lookups, durable = data["keys"], data["values"], data["lookups"], data["durable"]
    results = {}
    con = sqlite_connect(os.path.join(workdir, "bench.sqlite"),
                         "OFF" if sync == "off" else "NORMAL")
    try:
        for name in ("per_op", "batched"):
            con.execute("CREATE TABLE %s (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"
                        % name)

        def put_one_txn():
            execute = con.execute
            execute("BEGIN")
            for key, value in zip(keys, values):
                execute("INSERT OR REPLACE INTO per_op VALUES (?, ?)", (key, value))
            execute("COMMIT")
        results["put"] = timed(put_one_txn)[0]

        items = list(zip(keys, values))

        def put_many():
            con.execute("BEGIN")
            for batch in chunks(items, BATCH):
                con.executemany("INSERT OR REPLACE INTO batched VALUES (?, ?)", batch)
            con.execute("COMMIT")
        results["put_many"] = timed(put_many)[0]
        del items

        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        def get_one_snapshot():
            found = 0
            execute = con.execute
            execute("BEGIN")
            for key in lookups:
                if execute("SELECT v FROM per_op WHERE k = ?", (key,)).fetchone() is not None:
                    found += 1
            execute("COMMIT")
            return found
        results["get"], found = timed(get_one_snapshot)
        check_count("sqlite3 get", found, len(lookups))

        def scan():
            count = 0
            for _ in con.execute("SELECT k, v FROM per_op ORDER BY k"):
                count += 1
            return count
        results["scan"], count = timed(scan)
        check_count("sqlite3 scan", count, len(keys))
    finally:
        con.close()

    con = sqlite_connect(os.path.join(workdir, "durable.sqlite"), "FULL")
    try:
        con.execute("CREATE TABLE durable (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")

        def durable_commits():
            execute = con.execute
            for key, value in durable:
                execute("BEGIN")
                execute("INSERT OR REPLACE INTO durable VALUES (?, ?)", (key, value))
                execute("COMMIT")
        results["durable"] = timed(durable_commits)[0]
        check_count("sqlite3 durable",
                    con.execute("SELECT count(*) FROM durable").fetchone()[0], len(durable))
    finally:
        con.close()
    return results


# --------------------------------------------------------------------------------------

def check_count(what, got, expected):
    if got != expected:
        raise SystemExit("%s: expected %d rows, got %d" % (what, expected, got))


def make_data(n, durable_n, value_size, seed):
    rng = random.Random(seed)
    keys = [b"key:%010d" % i for i in range(n)]
    rng.shuffle(keys)                                   # insertion order
    values = [rng.randbytes(value_size) for _ in range(n)]
    lookups = [keys[rng.randrange(n)] for _ in range(n)]  # random, with repeats
    durable = [(b"key:%010d" % i, rng.randbytes(value_size)) for i in range(durable_n)]
    rng.shuffle(durable)
    return {"keys": keys, "values": values, "lookups": lookups, "durable": durable}


def velocore_version():
    version = getattr(velocore, "__version__", None)
    if version:
        return version
    try:
        from importlib.metadata import version as dist_version
        return dist_version("velocore")
    except Exception:
        return "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000,
                        help="keys for the put, put_many, get and scan phases (default 200000)")
    parser.add_argument("--durable-n", type=int, default=1_000,
                        help="single-put durable commits (default 1000)")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value (100)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (42)")
    parser.add_argument("--sync", choices=("normal", "off"), default="normal",
                        help="velocore sync= / sqlite3 synchronous= for the non-durable "
                             "phases (default normal)")
    parser.add_argument("--dir", default=None,
                        help="parent directory of the temporary stores (default: the "
                             "system temp dir); put it on the disk you care about")
    args = parser.parse_args(argv)
    if args.n < 1 or args.durable_n < 1 or args.value_size < 0:
        parser.error("--n and --durable-n must be positive, --value-size not negative")

    print("# velocore quick benchmark")
    print()
    print("- command: `%s`" % " ".join(
        ["python", "benchmarks/quick.py"] + list(argv if argv is not None else sys.argv[1:])))
    print("- velocore %s (simd %s), sqlite3 %s, Python %s" % (
        velocore_version(), velocore.simd_level(),
        sqlite3.sqlite_version, platform.python_version()))
    print("- %s, %s CPUs" % (platform.platform(), os.cpu_count()))
    print("- n=%d, durable-n=%d, value %d bytes, seed %d, sync=%s / synchronous=%s" % (
        args.n, args.durable_n, args.value_size, args.seed, args.sync,
        "OFF" if args.sync == "off" else "NORMAL"))
    print()
    sys.stdout.flush()

    data = make_data(args.n, args.durable_n, args.value_size, args.seed)
    with tempfile.TemporaryDirectory(prefix="velocore-quick-", dir=args.dir) as workdir:
        os.mkdir(os.path.join(workdir, "velocore"))
        os.mkdir(os.path.join(workdir, "sqlite3"))
        print("running velocore ...", file=sys.stderr, flush=True)
        vc = run_velocore(os.path.join(workdir, "velocore"), data, args.sync)
        print("running sqlite3 ...", file=sys.stderr, flush=True)
        sq = run_sqlite(os.path.join(workdir, "sqlite3"), data, args.sync)

    phases = [
        ("put", "put, one txn", args.n),
        ("put_many", "put_many (batches of %d), one txn" % BATCH, args.n),
        ("get", "get (random keys), one snapshot", args.n),
        ("scan", "full range scan", args.n),
        ("durable", "durable commits, 1 put each (sync=full / FULL)", args.durable_n),
    ]
    print("| operation | ops | velocore ops/s | sqlite3 ops/s | velocore/sqlite3 |")
    print("|---|---:|---:|---:|---:|")
    for name, label, ops in phases:
        vc_rate = ops / vc[name] if vc[name] > 0 else float("inf")
        sq_rate = ops / sq[name] if sq[name] > 0 else float("inf")
        print("| %s | %d | %s | %s | %.2f |" % (
            label, ops, "{:,.0f}".format(vc_rate), "{:,.0f}".format(sq_rate),
            vc_rate / sq_rate if sq_rate else float("inf")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

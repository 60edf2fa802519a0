"""Compare velocore with LMDB, RocksDB (rocksdict), SQLite and LevelDB (plyvel).

    python benchmarks/compare.py [--n 1000000] [--reps 3] [--quick] [--seed 42]
                                 [--engines velocore,lmdb,rocksdb,sqlite3,leveldb]
                                 [--json benchmarks/results/compare.json]
                                 [--png benchmarks/results/compare.png] [--dir DIR]

Every engine runs every workload in a fresh temporary directory, in child processes of
its own (W1, W2-W5 and the rest each in a new one, so no engine or earlier workload
inflates another's memory figures). Engines are
interleaved within each repetition (their order rotates from one repetition to the
next); each figure is the median over --reps repetitions, and each ratio to LMDB is
computed within a repetition and then its median taken. A peer that cannot be imported
is reported and skipped. Output: a markdown table on stdout, JSON (--json) and a bar
chart of the ratios to LMDB (--png, needs matplotlib).

Data: N keys of 16 bytes (8 seeded random bytes + the 8-byte big-endian index, so
index order is not key order), values of 100 seeded random bytes.

Workloads:
  W1   sorted load: one transaction, one put call per key
  W1b  sorted load in one call (velocore put_many, LMDB putmulti(append=True),
       SQLite executemany, RocksDB/LevelDB a write batch)
  W2   N inserts in random order, 1,000 per transaction, one batch put per transaction
  W3   N point gets in random order, one read transaction, one get call per key
  W3b  the same through the multi-get call (velocore get_many, LMDB getmulti,
       RocksDB multi-get; SQLite IN lists of 500, LevelDB a loop)
  W4   one full ordered scan
  W5   10,000 scans of 100 keys from random starts
  W6   2,000 single-put transactions, each durable (on disk) before commit returns;
       p50 / p99 commit latency
  W7   one reader thread (read transactions of 1,000 random gets) while another thread
       commits 10-put transactions back to back, non-durable and durable; the reader's
       rate as a share of its rate alone on the same store, from 10 pairs of alternating
       solo and shared phases (the store settled before each), the median of the pairs'
       ratios
W3, W3b, W4 and W5 read the store that W2 built (brought to rest first, untimed).

Each peer runs its documented fast path. Non-durable: velocore sync="off"; LMDB
writemap=True, sync=False, metasync=False; SQLite WAL, WITHOUT ROWID, synchronous=OFF;
RocksDB and LevelDB write batches with their default (unsynced) writes. Durable
(W6, W7 durable): velocore sync="full"; LMDB sync=True (no writemap); SQLite
synchronous=FULL; RocksDB and LevelDB sync=True writes. Page caches: velocore cache_mb
(--cache-mb, default 256), SQLite the same cache_size; LMDB uses the OS page cache.

Also recorded: the on-disk size after W1 (allocated blocks, after close) and the peak
resident memory of W1 and W2: the RSS high-water mark of the engine's process reset
just before the workload (/proc/self/clear_refs), less the RSS at the start, so the
benchmark's own key and value lists are not counted.
"""
import argparse
import gc
import itertools
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ENGINE_ORDER = ("velocore", "lmdb", "rocksdb", "sqlite3", "leveldb")
WORKLOADS = ("W1", "W1b", "W2", "W3", "W3b", "W4", "W5", "W6", "W7", "W7d")
LABELS = {
    "W1": "W1 sorted load, put per key, 1 txn",
    "W1b": "W1b sorted load, put_many, 1 txn",
    "W2": "W2 random inserts, 1,000 per txn",
    "W3": "W3 random gets, per-op, 1 read txn",
    "W3b": "W3b random gets, get_many",
    "W4": "W4 full ordered scan (keys/s)",
    "W5": "W5 scans of 100 keys (scans/s)",
    "W6": "W6 durable single-put commits",
    "W7": "W7 reader gets/s with a writer (non-durable)",
    "W7d": "W7 reader gets/s with a writer (durable)",
}
LMDB_MAP_SIZE = 1 << 36          # sparse; LMDB needs the whole size up front
BATCH = 1_000                    # W2 puts per transaction
SHORT_SCANS, SHORT_LENGTH = 10_000, 100
DURABLE_COMMITS = 2_000
W7_PRELOAD = 100_000
W7_GET_BATCH = 1_000
W7_PUTS_PER_COMMIT = 10
W7_PAIRS = 10                   # alternating solo / shared reader phases


# ===================================================================== engine adapters

class Velocore:
    name = "velocore"

    @staticmethod
    def available():
        import velocore
        return "velocore %s (simd %s)" % (_dist_version("velocore"), velocore.simd_level())

    def __init__(self, path, durable, cache_mb):
        import velocore
        self.store = velocore.open(path, sync="full" if durable else "off", cache_mb=cache_mb)
        self.table = self.store.table("bench")

    def put_each_one_txn(self, items):
        table = self.table
        with self.store.txn() as t:
            put = t.put
            for key, value in items:
                put(table, key, value)

    def put_batch(self, items, sorted_input=False):
        with self.store.txn() as t:
            t.put_many(self.table, items)

    def commit_one(self, key, value):
        with self.store.txn() as t:
            t.put(self.table, key, value)

    def settle(self):
        self.store.checkpoint()

    def get_each(self, keys):
        table = self.table
        with self.store.snapshot() as s:
            get = s.get
            return sum(1 for key in keys if get(table, key) is not None)

    def get_many(self, keys):
        with self.store.snapshot() as s:
            values = s.get_many(self.table, keys)
        return len(values) - values.count(None)

    def scan_all(self):
        with self.store.snapshot() as s:
            return sum(1 for _ in s.range(self.table))

    def scan_short(self, starts, length):
        table = self.table
        count = 0
        with self.store.snapshot() as s:
            for start in starts:
                count += sum(1 for _ in itertools.islice(s.range(table, start), length))
        return count

    def close(self):
        self.store.close()


class Lmdb:
    name = "lmdb"

    @staticmethod
    def available():
        import lmdb
        return "py-lmdb %s (LMDB %s)" % (lmdb.__version__, ".".join(map(str, lmdb.version())))

    def __init__(self, path, durable, cache_mb):
        import lmdb
        if durable:
            self.env = lmdb.open(path, map_size=LMDB_MAP_SIZE, sync=True, metasync=True,
                                 readahead=False)
        else:
            self.env = lmdb.open(path, map_size=LMDB_MAP_SIZE, writemap=True, sync=False,
                                 metasync=False, readahead=False)

    def put_each_one_txn(self, items):
        with self.env.begin(write=True) as txn:
            put = txn.put
            for key, value in items:
                put(key, value)

    def put_batch(self, items, sorted_input=False):
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(items, append=sorted_input)

    def commit_one(self, key, value):
        with self.env.begin(write=True) as txn:
            txn.put(key, value)

    def settle(self):
        pass

    def get_each(self, keys):
        with self.env.begin() as txn:
            get = txn.get
            return sum(1 for key in keys if get(key) is not None)

    def get_many(self, keys):
        with self.env.begin() as txn:
            return len(txn.cursor().getmulti(keys))

    def scan_all(self):
        with self.env.begin() as txn:
            return sum(1 for _ in txn.cursor())

    def scan_short(self, starts, length):
        count = 0
        with self.env.begin() as txn:
            cursor = txn.cursor()
            for start in starts:
                if cursor.set_range(start):
                    count += sum(1 for _ in itertools.islice(cursor.iternext(), length))
        return count

    def close(self):
        self.env.close()


class Rocksdb:
    name = "rocksdb"

    @staticmethod
    def available():
        import rocksdict  # noqa: F401
        return "rocksdict %s" % _dist_version("rocksdict")

    def __init__(self, path, durable, cache_mb):
        import rocksdict
        self.rocksdict = rocksdict
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        self.db = rocksdict.Rdict(path, options=options)
        self.write_options = rocksdict.WriteOptions()
        self.write_options.sync = durable

    def _batch(self):
        return self.rocksdict.WriteBatch(raw_mode=True)

    def put_each_one_txn(self, items):
        batch = self._batch()
        put = batch.put
        for key, value in items:
            put(key, value)
        self.db.write(batch, self.write_options)

    def put_batch(self, items, sorted_input=False):
        self.put_each_one_txn(items)   # a write batch is RocksDB's only bulk write

    def commit_one(self, key, value):
        self.db.put(key, value, self.write_options)

    def settle(self):
        self.db.flush(True)

    def get_each(self, keys):
        get = self.db.get
        return sum(1 for key in keys if get(key) is not None)

    def get_many(self, keys):
        values = self.db.get(keys)
        return len(values) - values.count(None)

    def scan_all(self):
        return sum(1 for _ in self.db.items())

    def scan_short(self, starts, length):
        items = self.db.items
        return sum(sum(1 for _ in itertools.islice(items(from_key=start), length))
                   for start in starts)

    def close(self):
        self.db.close()


class Sqlite:
    name = "sqlite3"

    @staticmethod
    def available():
        return "sqlite3 %s" % sqlite3.sqlite_version

    def __init__(self, path, durable, cache_mb):
        os.makedirs(path, exist_ok=True)
        self.file = os.path.join(path, "bench.sqlite")
        self.durable = durable
        self.cache_mb = cache_mb
        self.con = self.connect()
        self.con.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)"
                         " WITHOUT ROWID")

    def connect(self):
        con = sqlite3.connect(self.file, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=%s" % ("FULL" if self.durable else "OFF"))
        con.execute("PRAGMA cache_size=-%d" % (self.cache_mb * 1024))
        return con

    def put_each_one_txn(self, items):
        execute = self.con.execute
        execute("BEGIN")
        for item in items:
            execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", item)
        execute("COMMIT")

    def put_batch(self, items, sorted_input=False):
        self.con.execute("BEGIN")
        self.con.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", items)
        self.con.execute("COMMIT")

    def commit_one(self, key, value):
        self.con.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))  # autocommit

    def settle(self):
        self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def get_each(self, keys, con=None):
        execute = (con or self.con).execute
        execute("BEGIN")
        found = sum(1 for key in keys
                    if execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone() is not None)
        execute("COMMIT")
        return found

    def get_many(self, keys):
        execute = self.con.execute
        found = 0
        execute("BEGIN")
        for first in range(0, len(keys), 500):
            chunk = keys[first:first + 500]
            rows = dict(execute("SELECT k, v FROM kv WHERE k IN (%s)"
                                % ",".join("?" * len(chunk)), chunk))
            found += sum(1 for value in map(rows.get, chunk) if value is not None)
        execute("COMMIT")
        return found

    def scan_all(self):
        return sum(1 for _ in self.con.execute("SELECT k, v FROM kv ORDER BY k"))

    def scan_short(self, starts, length):
        execute = self.con.execute
        count = 0
        execute("BEGIN")
        for start in starts:
            count += len(execute("SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT ?",
                                 (start, length)).fetchall())
        execute("COMMIT")
        return count

    def close(self):
        self.con.close()


class Leveldb:
    name = "leveldb"

    @staticmethod
    def available():
        import plyvel
        return "plyvel %s (LevelDB %s)" % (plyvel.__version__, plyvel.__leveldb_version__)

    def __init__(self, path, durable, cache_mb):
        import plyvel
        self.db = plyvel.DB(path, create_if_missing=True, lru_cache_size=cache_mb << 20)
        self.durable = durable

    def put_each_one_txn(self, items):
        with self.db.write_batch(sync=self.durable) as batch:
            put = batch.put
            for key, value in items:
                put(key, value)

    def put_batch(self, items, sorted_input=False):
        self.put_each_one_txn(items)

    def commit_one(self, key, value):
        self.db.put(key, value, sync=self.durable)

    def settle(self):
        self.db.compact_range()

    def get_each(self, keys):
        with self.db.snapshot() as snap:
            get = snap.get
            return sum(1 for key in keys if get(key) is not None)

    get_many = get_each   # LevelDB has no multi-get

    def scan_all(self):
        return sum(1 for _ in self.db.iterator())

    def scan_short(self, starts, length):
        count = 0
        with self.db.snapshot() as snap:
            for start in starts:
                with snap.iterator(start=start) as it:
                    count += sum(1 for _ in itertools.islice(it, length))
        return count

    def close(self):
        self.db.close()


ENGINES = {cls.name: cls for cls in (Velocore, Lmdb, Rocksdb, Sqlite, Leveldb)}


def _dist_version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "unknown"


# ===================================================================== measuring

class PeakRss:
    """RSS high-water mark of this process since reset(), in bytes (Linux clear_refs)."""

    def __init__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False

    @staticmethod
    def _status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def reset(self):
        if self.resettable:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        self.start = self._status("VmRSS")

    def growth(self):
        """Peak RSS since reset() less the RSS at reset(); None without clear_refs."""
        if not self.resettable:
            return None
        return max(0, self._status("VmHWM") - self.start)


def disk_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def timed(fn, *args):
    gc.collect()
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def make_data(n, seed):
    rng = random.Random(seed)
    items = [(rng.randbytes(8) + i.to_bytes(8, "big"), rng.randbytes(100)) for i in range(n)]
    sorted_items = sorted(items)
    insert_order = items[:]
    rng.shuffle(insert_order)
    lookups = [key for key, _ in items]
    rng.shuffle(lookups)
    starts = [items[rng.randrange(n)][0] for _ in range(SHORT_SCANS)]
    return sorted_items, insert_order, lookups, starts


def expect(what, got, wanted):
    if got != wanted:
        raise RuntimeError("%s: expected %d, got %d" % (what, wanted, got))


def reader_vs_writer(engine_cls, path, durable, cache_mb, seconds, seed):
    """W7: the reader's gets/s alone and while a writer commits 10-put transactions.

    This VM's speed drifts by 20-40% within seconds, so one solo phase followed by one
    shared phase mostly measures the drift.  The phases alternate instead: W7_PAIRS
    pairs of a solo and a shared phase (seconds / W7_PAIRS each, which comes first
    alternating), the store settled before each phase as it was before the one shared
    phase of old, and the share is the median of the pairs' ratios."""
    engine = engine_cls(path, durable, cache_mb)
    try:
        rng = random.Random(seed)
        preload = [(rng.randbytes(8) + i.to_bytes(8, "big"), rng.randbytes(100))
                   for i in range(W7_PRELOAD)]
        engine.put_batch(sorted(preload), sorted_input=True)
        engine.settle()
        batch = [preload[rng.randrange(W7_PRELOAD)][0] for _ in range(W7_GET_BATCH)]
        reader = engine
        if isinstance(engine, Sqlite):           # a connection per thread
            reader = Sqlite.__new__(Sqlite)
            reader.__dict__.update(engine.__dict__)
            reader.con = engine.connect()
        phase_seconds = seconds / W7_PAIRS

        def read_rate():
            gets = 0
            started = time.perf_counter()
            deadline = started + phase_seconds
            while time.perf_counter() < deadline:
                expect("W7 reader", reader.get_each(batch), len(batch))
                gets += len(batch)
            return gets / (time.perf_counter() - started)

        go = threading.Event()          # set: the writer is to commit back to back
        running = threading.Event()     # set: it is doing so
        idle = threading.Event()        # set: it is between phases, not committing
        stop = threading.Event()
        commits = [0]
        errors = []

        def write_loop():
            try:
                wrng = random.Random(seed + 1)
                while True:
                    idle.set()
                    go.wait()
                    if stop.is_set():
                        return
                    idle.clear()
                    running.set()
                    while go.is_set():
                        engine.put_batch([(wrng.randbytes(16), b"w" * 100)
                                          for _ in range(W7_PUTS_PER_COMMIT)])
                        commits[0] += 1
                    running.clear()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                running.set()
                idle.set()

        writer = threading.Thread(target=write_loop)
        writer.start()
        solo, shared, shared_seconds = [], [], 0.0
        try:
            idle.wait()
            for i in range(W7_PAIRS):
                for kind in (("solo", "shared") if i % 2 == 0 else ("shared", "solo")):
                    engine.settle()
                    gc.collect()
                    if kind == "solo":
                        solo.append(read_rate())
                        continue
                    go.set()
                    running.wait()
                    started = time.perf_counter()
                    shared.append(read_rate())
                    go.clear()
                    idle.wait()
                    shared_seconds += time.perf_counter() - started
                    if errors:
                        raise errors[0]
        finally:
            stop.set()
            go.set()
            writer.join()
        if errors:
            raise errors[0]
        if reader is not engine:
            reader.con.close()
        return {"solo": statistics.median(solo), "with_writer": statistics.median(shared),
                "share": statistics.median(b / a for a, b in zip(solo, shared)),
                "solo_phases": solo, "shared_phases": shared,
                "writer_commits_per_s": commits[0] / shared_seconds}
    finally:
        engine.close()


PHASES = ("load", "insert", "rest")   # one child process each: W1 / W2-W5 / the others


def run_phase(phase, name, n, seed, cache_mb, workdir, w7_seconds):
    """One phase of one engine's workloads, in this process; returns a result dict.

    W1 and W2 each start in a process of their own, so their peak RSS is not inflated
    by memory an earlier workload left allocated."""
    engine_cls = ENGINES[name]
    sorted_items, insert_order, lookups, starts = make_data(n, seed)
    rss = PeakRss()
    out = {"seconds": {}}

    def fresh(tag):
        path = os.path.join(workdir, "%s-%s" % (name, tag))
        shutil.rmtree(path, ignore_errors=True)
        return path

    if phase == "load":
        return phase_load(out, engine_cls, fresh, rss, sorted_items, cache_mb)
    if phase == "insert":
        return phase_insert(out, engine_cls, fresh, rss, insert_order, lookups, starts,
                            n, cache_mb)
    return phase_rest(out, engine_cls, fresh, sorted_items, seed, cache_mb, w7_seconds)


def phase_load(out, engine_cls, fresh, rss, sorted_items, cache_mb):
    """W1: sorted load, one put per key."""
    path = fresh("w1")
    engine = engine_cls(path, False, cache_mb)
    rss.reset()
    took, _ = timed(engine.put_each_one_txn, sorted_items)
    out["peak_rss_w1"] = rss.growth()
    engine.close()
    out["disk_bytes_w1"] = disk_bytes(path)
    out["seconds"]["W1"] = took
    shutil.rmtree(path)
    return out


def phase_rest(out, engine_cls, fresh, sorted_items, seed, cache_mb, w7_seconds):
    """W1b (sorted load, one bulk call), W6 and W7."""
    path = fresh("w1b")
    engine = engine_cls(path, False, cache_mb)
    took, _ = timed(engine.put_batch, sorted_items, True)
    engine.close()
    out["disk_bytes_w1b"] = disk_bytes(path)
    out["seconds"]["W1b"] = took
    shutil.rmtree(path)
    phase_durable(out, engine_cls, fresh, seed, cache_mb, w7_seconds)
    return out


def phase_insert(out, engine_cls, fresh, rss, insert_order, lookups, starts, n, cache_mb):
    """W2: random inserts, 1,000 per transaction; W3-W5 then read this store."""
    path = fresh("w2")
    engine = engine_cls(path, False, cache_mb)
    batches = [insert_order[i:i + BATCH] for i in range(0, n, BATCH)]

    def insert_batches():
        put_batch = engine.put_batch
        for batch in batches:
            put_batch(batch)
    rss.reset()
    out["seconds"]["W2"], _ = timed(insert_batches)
    out["peak_rss_w2"] = rss.growth()
    del batches
    engine.settle()
    took, found = timed(engine.get_each, lookups)
    expect("W3 found", found, n)
    out["seconds"]["W3"] = took
    took, found = timed(engine.get_many, lookups)
    expect("W3b found", found, n)
    out["seconds"]["W3b"] = took
    took, count = timed(engine.scan_all)
    expect("W4 keys", count, n)
    out["seconds"]["W4"] = took
    took, count = timed(engine.scan_short, starts, SHORT_LENGTH)
    if count < len(starts):
        raise RuntimeError("W5: short scans returned only %d keys" % count)
    out["seconds"]["W5"] = took
    engine.close()
    shutil.rmtree(path)
    return out


def phase_durable(out, engine_cls, fresh, seed, cache_mb, w7_seconds):
    """W6: durable single-put commits; W7: a reader next to a committing writer."""
    path = fresh("w6")
    engine = engine_cls(path, True, cache_mb)
    rng = random.Random(seed + 6)
    durable_items = [(rng.randbytes(16), rng.randbytes(100)) for _ in range(DURABLE_COMMITS)]
    latencies = []
    commit_one = engine.commit_one
    clock = time.perf_counter
    gc.collect()
    started = clock()
    for key, value in durable_items:
        t0 = clock()
        commit_one(key, value)
        latencies.append(clock() - t0)
    out["seconds"]["W6"] = clock() - started
    latencies.sort()
    out["w6_p50_ms"] = 1e3 * latencies[len(latencies) // 2]
    out["w6_p99_ms"] = 1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    engine.close()
    shutil.rmtree(path)

    for tag, durable in (("W7", False), ("W7d", True)):
        path = fresh(tag.lower())
        out[tag] = reader_vs_writer(engine_cls, path, durable, cache_mb, w7_seconds, seed + 7)
        shutil.rmtree(path)


def merge_phases(results, n):
    """One engine's phase results -> a result dict with "rates" (ops/s) per workload."""
    out = {"seconds": {}}
    for part in results:
        seconds = part.pop("seconds")
        out["seconds"].update(seconds)
        out.update(part)
    ops = {"W1": n, "W1b": n, "W2": n, "W3": n, "W3b": n, "W4": n,
           "W5": SHORT_SCANS, "W6": DURABLE_COMMITS}
    out["rates"] = {workload: count / out["seconds"][workload]
                    for workload, count in ops.items()}
    out["rates"]["W7"] = out["W7"]["with_writer"]
    out["rates"]["W7d"] = out["W7d"]["with_writer"]
    return out


def run_child(args):
    """--child ENGINE:PHASE: run one phase, print its result as JSON (last stdout line)."""
    name, phase = args.child.split(":")
    workdir = tempfile.mkdtemp(prefix="velocore-compare-%s-" % name, dir=args.dir)
    try:
        result = run_phase(phase, name, args.n, args.seed, args.cache_mb, workdir,
                           args.w7_seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0


def spawn(name, args):
    """Run each phase of one engine in a child process; the merged result."""
    return merge_phases([spawn_phase(name, phase, args) for phase in PHASES], args.n)


def spawn_phase(name, phase, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "%s:%s" % (name, phase),
           "--n", str(args.n),
           "--seed", str(args.seed), "--cache-mb", str(args.cache_mb),
           "--w7-seconds", str(args.w7_seconds)]
    if args.dir:
        cmd += ["--dir", args.dir]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError("%s %s failed (exit %d):\n%s"
                           % (name, phase, proc.returncode, proc.stderr))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ===================================================================== report

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs, engines):
    """Medians over repetitions; ratios to LMDB taken per repetition, then the median."""
    summary = {}
    for name in engines:
        reps = [run[name] for run in runs]
        entry = {"rates": {}, "ratio_to_lmdb": {}}
        for workload in WORKLOADS:
            entry["rates"][workload] = median(r["rates"][workload] for r in reps)
            if "lmdb" in engines:
                entry["ratio_to_lmdb"][workload] = median(
                    r["rates"][workload] / run["lmdb"]["rates"][workload]
                    for r, run in zip(reps, runs))
        for field in ("w6_p50_ms", "w6_p99_ms", "disk_bytes_w1", "disk_bytes_w1b",
                      "peak_rss_w1", "peak_rss_w2"):
            entry[field] = median(r[field] for r in reps)
        for tag in ("W7", "W7d"):
            entry[tag + "_solo"] = median(r[tag]["solo"] for r in reps)
            entry[tag + "_share"] = median(r[tag]["share"] for r in reps)
            entry[tag + "_writer_commits_per_s"] = median(
                r[tag]["writer_commits_per_s"] for r in reps)
        summary[name] = entry
    return summary


def fmt_rate(value):
    return "-" if value is None else "{:,.0f}".format(value)


def fmt_mib(value):
    return "-" if value is None else "%.1f" % (value / 2**20)


def print_table(summary, engines, args, header):
    print("# velocore against its peers\n")
    for line in header:
        print("- " + line)
    print()
    has_lmdb = "lmdb" in engines
    cols = []
    for name in engines:
        cols.append(name + " ops/s")
        if has_lmdb and name != "lmdb":
            cols.append(name + "/lmdb")
    print("| workload | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for workload in WORKLOADS:
        cells = []
        for name in engines:
            cells.append(fmt_rate(summary[name]["rates"][workload]))
            if has_lmdb and name != "lmdb":
                cells.append("%.2fx" % summary[name]["ratio_to_lmdb"][workload])
        print("| %s | %s |" % (LABELS[workload], " | ".join(cells)))
    print()
    print("| engine | W6 p50 ms | W6 p99 ms | W7 reader share (non-durable) | "
          "W7 reader share (durable) | disk after W1 MiB | disk after W1b MiB | "
          "peak RSS W1 MiB | peak RSS W2 MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in engines:
        e = summary[name]
        print("| %s | %.3f | %.3f | %.0f%% | %.0f%% | %s | %s | %s | %s |" % (
            name, e["w6_p50_ms"], e["w6_p99_ms"], 100 * e["W7_share"], 100 * e["W7d_share"],
            fmt_mib(e["disk_bytes_w1"]), fmt_mib(e["disk_bytes_w1b"]),
            fmt_mib(e["peak_rss_w1"]), fmt_mib(e["peak_rss_w2"])))
    print()


TARGETS = (("W1", 1.5), ("W1b", 3.0), ("W2", 3.0), ("W3", 1.5), ("W3b", 5.0),
           ("W4", 2.0), ("W5", 1.5), ("W6", 1.5))


def check_targets(summary, cache_mb):
    """velocore's targets against LMDB: list of (target, measured, met)."""
    if "velocore" not in summary or "lmdb" not in summary:
        return []
    vc, lm = summary["velocore"], summary["lmdb"]
    rows = []
    for workload, want in TARGETS:
        got = vc["ratio_to_lmdb"][workload]
        rows.append(("%s >= %.1fx LMDB" % (workload, want), "%.2fx" % got, got >= want))
    rows.append(("W6 p99 <= LMDB's", "%.3f ms vs %.3f ms" % (vc["w6_p99_ms"], lm["w6_p99_ms"]),
                 vc["w6_p99_ms"] <= lm["w6_p99_ms"]))
    for tag, label in (("W7", "non-durable"), ("W7d", "durable")):
        share = vc[tag + "_share"]
        rows.append(("W7 reader >= 90%% of solo (%s)" % label, "%.0f%%" % (100 * share),
                     share >= 0.9))
    rows.append(("disk after W1 <= LMDB's", "%s vs %s MiB" % (
        fmt_mib(vc["disk_bytes_w1"]), fmt_mib(lm["disk_bytes_w1"])),
        vc["disk_bytes_w1"] <= lm["disk_bytes_w1"]))
    for field, label in (("peak_rss_w1", "W1"), ("peak_rss_w2", "W2")):
        if vc[field] is None or lm[field] is None:
            continue
        limit = lm[field] + cache_mb * 2**20
        rows.append(("peak RSS %s <= LMDB's + cache_mb" % label, "%s vs %s MiB" % (
            fmt_mib(vc[field]), fmt_mib(limit)), vc[field] <= limit))
    return rows


def write_png(summary, engines, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [name for name in engines if name != "lmdb"]
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / max(1, len(peers))
    xs = range(len(WORKLOADS))
    for i, name in enumerate(peers):
        ratios = [summary[name]["ratio_to_lmdb"][w] for w in WORKLOADS]
        ax.bar([x + (i - (len(peers) - 1) / 2) * width for x in xs], ratios, width,
               label=name)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="lmdb = 1")
    ax.set_yscale("log")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([w if w != "W7d" else "W7 durable" for w in WORKLOADS])
    ax.set_ylabel("throughput / LMDB throughput (log scale; higher is better)")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="keys (default 1,000,000; "
                    "--quick: 20,000)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions, median taken (>= 3)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: n=20,000 and 0.3 s per W7 phase")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--engines", default=",".join(ENGINE_ORDER),
                    help="comma-separated subset of " + ",".join(ENGINE_ORDER))
    ap.add_argument("--cache-mb", type=int, default=256,
                    help="velocore cache_mb and SQLite cache_size (256)")
    ap.add_argument("--w7-seconds", type=float, default=None,
                    help="seconds per W7 reader phase (default 2; --quick: 0.3)")
    ap.add_argument("--json", default=os.path.join(here, "results", "compare.json"))
    ap.add_argument("--png", default=os.path.join(here, "results", "compare.png"))
    ap.add_argument("--dir", default=None, help="parent of the temporary stores")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.n is None:
        args.n = 20_000 if args.quick else 1_000_000
    if args.w7_seconds is None:
        args.w7_seconds = 0.3 if args.quick else 2.0
    if args.child:
        return run_child(args)
    if args.n < 1 or args.reps < 1:
        ap.error("--n and --reps must be positive")

    engines, versions, missing = [], {}, {}
    for name in args.engines.split(","):
        if name not in ENGINES:
            ap.error("unknown engine %r" % name)
        try:
            versions[name] = ENGINES[name].available()
            engines.append(name)
        except ImportError as exc:
            missing[name] = str(exc)
            print("skipping %s: %s" % (name, exc), file=sys.stderr)
    if not engines:
        ap.error("no engine available")

    runs = []
    for rep in range(args.reps):
        order = engines[rep % len(engines):] + engines[:rep % len(engines)]
        run = {}
        for name in order:
            print("rep %d/%d: %s ..." % (rep + 1, args.reps, name), file=sys.stderr, flush=True)
            run[name] = spawn(name, args)
            print("rep %d/%d: %s: %s" % (rep + 1, args.reps, name, "  ".join(
                "%s %s/s" % (w, fmt_rate(rate)) for w, rate in run[name]["rates"].items())),
                file=sys.stderr, flush=True)
        runs.append(run)
    summary = summarise(runs, engines)

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    header = [
        "command: `python benchmarks/compare.py %s`" % " ".join(
            argv if argv is not None else sys.argv[1:]),
        "machine: %s, %d CPUs, %s, Python %s" % (cpu, os.cpu_count(), platform.platform(),
                                                 platform.python_version()),
        "engines: " + ", ".join(versions[name] for name in engines),
        "skipped: " + (", ".join("%s (%s)" % item for item in missing.items()) or "none"),
        "n=%d keys (16 B) and values (100 B), seed %d, median of %d repetitions, "
        "cache_mb=%d" % (args.n, args.seed, args.reps, args.cache_mb),
    ]
    print_table(summary, engines, args, header)
    targets = check_targets(summary, args.cache_mb)
    if targets:
        print("| velocore target | measured | met |")
        print("|---|---|---|")
        for target, measured, met in targets:
            print("| %s | %s | %s |" % (target, measured, "yes" if met else "no"))
        print()

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"header": header, "n": args.n, "reps": args.reps, "seed": args.seed,
                       "engines": engines, "versions": versions, "skipped": missing,
                       "summary": summary,
                       "targets": [{"target": t, "measured": m, "met": ok}
                                   for t, m, ok in targets],
                       "runs": runs}, f, indent=1)
        print("JSON: %s" % args.json, file=sys.stderr)
    if args.png:
        if "lmdb" not in engines:
            print("no PNG: the chart shows ratios to LMDB, which did not run", file=sys.stderr)
        else:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
                write_png(summary, engines, args.png,
                          "Throughput relative to LMDB, n=%d (median of %d)"
                          % (args.n, args.reps))
                print("PNG: %s" % args.png, file=sys.stderr)
            except ImportError:
                print("no PNG: matplotlib is not installed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

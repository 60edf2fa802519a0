"""asv benchmarks: velocore next to its baselines in the same class.

Keys are 16 bytes (8 seeded random bytes, then the 8-byte big-endian index) and values
100 random bytes, so key order differs from insertion order. Every class builds fresh
stores in a temporary directory in `setup` and removes them in `teardown`; a baseline
that is not importable (lmdb) raises NotImplementedError in `setup`, which asv reports
as skipped. Mutating benchmarks use `number = 1` so each sample starts from a fresh
setup.
"""
import itertools
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading

import velocore

try:
    import lmdb
except ImportError:  # optional baseline
    lmdb = None

VALUE_SIZE = 100
SEED = 1234
LMDB_MAP_SIZE = 1 << 32          # sparse; far above what these sizes need
SQLITE_CACHE_KIB = 256 * 1024    # velocore's default cache_mb, for sqlite3 too


def make_items(n, seed=SEED):
    """make_items(n, seed) -> list of (key, value) in index order, deterministic."""
    rng = random.Random(seed)
    return [(rng.randbytes(8) + i.to_bytes(8, "big"), rng.randbytes(VALUE_SIZE))
            for i in range(n)]


def shuffled(seq, seed):
    seq = list(seq)
    random.Random(seed).shuffle(seq)
    return seq


# ------------------------------------------------------------------------- engines

class VelocoreEngine:
    ordered = True

    def __init__(self, path, durable=False):
        self.store = velocore.open(path, sync="full" if durable else "off")
        self.table = self.store.table("bench")

    def load(self, items):
        with self.store.txn() as t:
            t.put_many(self.table, items)
        self.store.checkpoint()

    def put_loop(self, items):
        table = self.table
        with self.store.txn() as t:
            put = t.put
            for key, value in items:
                put(table, key, value)

    def put_many(self, items):
        with self.store.txn() as t:
            t.put_many(self.table, items)

    bulk_load = put_many             # items in key order

    def commit_one(self, key, value):
        with self.store.txn() as t:
            t.put(self.table, key, value)

    def get_loop(self, keys):
        table = self.table
        with self.store.snapshot() as s:
            get = s.get
            return sum(1 for key in keys if get(table, key) is not None)

    def get_many(self, keys):
        with self.store.snapshot() as s:
            return s.get_many(self.table, keys)

    def scan_full(self):
        with self.store.snapshot() as s:
            return sum(1 for _ in s.range(self.table))

    def scan_short(self, starts, length):
        count = 0
        table = self.table
        with self.store.snapshot() as s:
            for start in starts:
                count += sum(1 for _ in itertools.islice(s.range(table, start), length))
        return count

    def close(self):
        self.store.close()


class DictEngine:
    """The floor: a Python dict (unordered, in memory, no transactions)."""
    ordered = False

    def __init__(self, path, durable=False):
        if durable:
            raise NotImplementedError("a dict is not durable")
        self.data = {}

    def load(self, items):
        self.data.update(items)

    def put_loop(self, items):
        data = self.data
        for key, value in items:
            data[key] = value

    def put_many(self, items):
        self.data.update(items)

    bulk_load = put_many

    def get_loop(self, keys):
        get = self.data.get
        return sum(1 for key in keys if get(key) is not None)

    def get_many(self, keys):
        return list(map(self.data.get, keys))

    def close(self):
        self.data = None


class SqliteEngine:
    """sqlite3 with WAL and a WITHOUT ROWID table (a clustered B-tree like velocore)."""
    ordered = True

    def __init__(self, path, durable=False):
        os.mkdir(path)
        self.con = sqlite3.connect(os.path.join(path, "bench.sqlite"), isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=%s" % ("FULL" if durable else "OFF"))
        self.con.execute("PRAGMA cache_size=-%d" % SQLITE_CACHE_KIB)
        self.con.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)"
                         " WITHOUT ROWID")

    def load(self, items):
        self.put_many(items)
        self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def put_loop(self, items):
        execute = self.con.execute
        execute("BEGIN")
        for item in items:
            execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", item)
        execute("COMMIT")

    def put_many(self, items):
        self.con.execute("BEGIN")
        self.con.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", items)
        self.con.execute("COMMIT")

    bulk_load = put_many

    def commit_one(self, key, value):
        self.con.execute("BEGIN")
        self.con.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
        self.con.execute("COMMIT")

    def get_loop(self, keys):
        execute = self.con.execute
        execute("BEGIN")
        found = sum(1 for key in keys
                    if execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone() is not None)
        execute("COMMIT")
        return found

    def get_many(self, keys):
        # sqlite3 has no multi-get: IN lists of 500 keys, answers put back in order
        execute = self.con.execute
        out = []
        execute("BEGIN")
        for first in range(0, len(keys), 500):
            chunk = keys[first:first + 500]
            found = dict(execute("SELECT k, v FROM kv WHERE k IN (%s)"
                                 % ",".join("?" * len(chunk)), chunk))
            out.extend(map(found.get, chunk))
        execute("COMMIT")
        return out

    def scan_full(self):
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


class LmdbEngine:
    """py-lmdb: writemap without syncs when not durable, synchronous commits when durable."""
    ordered = True

    def __init__(self, path, durable=False):
        if lmdb is None:
            raise NotImplementedError("lmdb is not installed")
        if durable:
            self.env = lmdb.open(path, map_size=LMDB_MAP_SIZE, sync=True, metasync=True)
        else:
            self.env = lmdb.open(path, map_size=LMDB_MAP_SIZE, writemap=True,
                                 sync=False, metasync=False)

    def load(self, items):
        self.put_many(items)

    def put_loop(self, items):
        with self.env.begin(write=True) as txn:
            put = txn.put
            for key, value in items:
                put(key, value)

    def put_many(self, items):
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(items)

    def bulk_load(self, items):
        """Items in key order: LMDB's append mode writes into the last page."""
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(items, append=True)

    def commit_one(self, key, value):
        with self.env.begin(write=True) as txn:
            txn.put(key, value)

    def get_loop(self, keys):
        with self.env.begin(buffers=False) as txn:
            get = txn.get
            return sum(1 for key in keys if get(key) is not None)

    def get_many(self, keys):
        with self.env.begin() as txn:
            return txn.cursor().getmulti(keys)

    def scan_full(self):
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


ENGINES = {"velocore": VelocoreEngine, "dict": DictEngine,
           "sqlite3": SqliteEngine, "lmdb": LmdbEngine}


class _EngineBench:
    """Common setup/teardown: one engine in a fresh temporary directory."""
    durable = False
    loaded = True
    needs_order = False

    def make_engine(self, engine_name):
        cls = ENGINES[engine_name]
        if self.needs_order and not cls.ordered:
            raise NotImplementedError("%s has no key order" % engine_name)
        self.workdir = tempfile.mkdtemp(prefix="velocore-asv-")
        self.engine = cls(os.path.join(self.workdir, engine_name), durable=self.durable)

    def teardown(self, *params):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
            self.engine = None
        shutil.rmtree(getattr(self, "workdir", ""), ignore_errors=True)


# ------------------------------------------------------------------------- point ops

class PointReads(_EngineBench):
    """Random point reads in one read transaction: per-op get and get_many."""
    params = (["velocore", "dict", "sqlite3", "lmdb"], [20_000, 200_000])
    param_names = ["engine", "n"]

    def setup(self, engine_name, n):
        self.make_engine(engine_name)
        items = make_items(n)
        self.engine.load(items)
        self.lookups = shuffled((key for key, _ in items), SEED + 1)

    def time_get(self, engine_name, n):
        self.engine.get_loop(self.lookups)

    def peakmem_get(self, engine_name, n):
        self.engine.get_loop(self.lookups)

    def time_get_many(self, engine_name, n):
        self.engine.get_many(self.lookups)

    def peakmem_get_many(self, engine_name, n):
        self.engine.get_many(self.lookups)


class PointWrites(_EngineBench):
    """n inserts in random order into an empty store, one transaction: put and put_many."""
    params = (["velocore", "dict", "sqlite3", "lmdb"], [20_000, 200_000])
    param_names = ["engine", "n"]
    number = 1
    repeat = (1, 5, 20.0)

    def setup(self, engine_name, n):
        self.make_engine(engine_name)
        self.items = shuffled(make_items(n), SEED + 2)

    def time_put(self, engine_name, n):
        self.engine.put_loop(self.items)

    def peakmem_put(self, engine_name, n):
        self.engine.put_loop(self.items)

    def time_put_many(self, engine_name, n):
        self.engine.put_many(self.items)

    def peakmem_put_many(self, engine_name, n):
        self.engine.put_many(self.items)


class SortedLoad(_EngineBench):
    """n keys in key order into an empty store, one transaction, one batch call (a bulk
    load: velocore's put_many reads and writes an ascending batch chunk by chunk; LMDB's
    putmulti in append mode)."""
    params = (["velocore", "dict", "sqlite3", "lmdb"], [200_000])
    param_names = ["engine", "n"]
    number = 1
    repeat = (1, 5, 20.0)

    def setup(self, engine_name, n):
        self.make_engine(engine_name)
        self.items = sorted(make_items(n))

    def time_bulk_load(self, engine_name, n):
        self.engine.bulk_load(self.items)

    def peakmem_bulk_load(self, engine_name, n):
        self.engine.bulk_load(self.items)


class MemtableReads:
    """Random point reads of n checkpointed keys while the memtable holds n other keys
    (not yet checkpointed): each read first asks the memtable's key filter, which says
    the key is absent, then reads the tree."""
    params = ([500_000],)
    param_names = ["n"]

    def setup(self, n):
        self.workdir = tempfile.mkdtemp(prefix="velocore-asv-")
        self.store = velocore.open(os.path.join(self.workdir, "mem.vc"), sync="off",
                                   checkpoint_mb=4096)
        self.table = self.store.table("bench")
        items = make_items(2 * n)
        with self.store.txn() as t:
            t.put_many(self.table, items[:n])
        self.store.checkpoint()
        rest = shuffled(items[n:], SEED + 7)
        for first in range(0, n, 10_000):
            with self.store.txn() as t:
                t.put_many(self.table, rest[first:first + 10_000])
        self.lookups = shuffled((key for key, _ in items[:n]), SEED + 8)

    def teardown(self, n):
        self.store.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def time_get_many(self, n):
        with self.store.snapshot() as s:
            values = s.get_many(self.table, self.lookups)
        assert values.count(None) == 0

    def time_get(self, n):
        with self.store.snapshot() as s:
            get = s.get
            for key in self.lookups:
                get(self.table, key)


class BigMemtable:
    """Reads and writes of a memtable holding n keys written in scattered order, none
    checkpointed yet: every search walks the memtable (its index, then its skip list).
    `get` / `get_many` look up all n keys in random order; `put_many` writes n // 4 new
    scattered keys in transactions of 1,000 (the grouped searches) and `put` n // 8 of
    them one call per key (the plain search); `range` scans all n keys forward and
    `range_reverse` backward (each step back is a search for the key before), counting
    the pairs without unpacking them; `range_items` and `range_dict` scan forward the way
    most code does (`for key, value in ...`, `dict(...)`), which drops each pair before
    asking for the next, so the iterator refills it instead of making a new one."""
    params = ([300_000],)
    param_names = ["n"]
    number = 1                    # the writes change the memtable: a fresh one per sample
    repeat = (3, 5, 30.0)

    def setup(self, n):
        self.workdir = tempfile.mkdtemp(prefix="velocore-asv-")
        self.store = velocore.open(os.path.join(self.workdir, "big.vc"), sync="off",
                                   checkpoint_mb=4096)
        self.table = self.store.table("bench")
        items = make_items(n + n // 4)
        present = shuffled(items[:n], SEED + 9)
        for first in range(0, n, 1_000):
            with self.store.txn() as t:
                t.put_many(self.table, present[first:first + 1_000])
        self.new = shuffled(items[n:], SEED + 10)
        self.lookups = shuffled((key for key, _ in present), SEED + 11)

    def teardown(self, n):
        self.store.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def time_get(self, n):
        with self.store.snapshot() as s:
            get = s.get
            for key in self.lookups:
                get(self.table, key)

    def time_get_many(self, n):
        with self.store.snapshot() as s:
            values = s.get_many(self.table, self.lookups)
        assert values.count(None) == 0

    def time_put_many(self, n):
        new = self.new
        for first in range(0, len(new), 1_000):
            with self.store.txn() as t:
                t.put_many(self.table, new[first:first + 1_000])

    def time_range(self, n):
        with self.store.snapshot() as s:
            assert sum(1 for _ in s.range(self.table)) == n

    def time_range_reverse(self, n):
        with self.store.snapshot() as s:
            assert sum(1 for _ in s.range(self.table, reverse=True)) == n

    def time_range_items(self, n):
        # the usual loop: each pair unpacked and dropped, so the iterator refills it
        count = 0
        with self.store.snapshot() as s:
            for key, value in s.range(self.table):
                count += 1
        assert count == n

    def time_range_dict(self, n):
        with self.store.snapshot() as s:
            assert len(dict(s.range(self.table))) == n

    def time_put(self, n):
        new = self.new[:len(self.new) // 2]
        for first in range(0, len(new), 1_000):
            with self.store.txn() as t:
                put = t.put
                for key, value in new[first:first + 1_000]:
                    put(self.table, key, value)


# ------------------------------------------------------------------------- range scans

class RangeScans(_EngineBench):
    """A full ordered scan, and 1,000 scans of 100 keys from random starts."""
    params = (["velocore", "sqlite3", "lmdb"], [200_000])
    param_names = ["engine", "n"]
    needs_order = True
    short_scans = 1_000
    short_length = 100

    def setup(self, engine_name, n):
        self.make_engine(engine_name)
        items = make_items(n)
        self.engine.load(items)
        rng = random.Random(SEED + 3)
        self.starts = [items[rng.randrange(n)][0] for _ in range(self.short_scans)]

    def time_scan_full(self, engine_name, n):
        self.engine.scan_full()

    def peakmem_scan_full(self, engine_name, n):
        self.engine.scan_full()

    def time_scan_short(self, engine_name, n):
        self.engine.scan_short(self.starts, self.short_length)

    def peakmem_scan_short(self, engine_name, n):
        self.engine.scan_short(self.starts, self.short_length)


# ------------------------------------------------------------------------- durability

class DurableCommits(_EngineBench):
    """Transactions of one put, each flushed to disk before commit returns."""
    params = (["velocore", "sqlite3", "lmdb"],)
    param_names = ["engine"]
    durable = True
    number = 1
    repeat = (1, 5, 20.0)
    commits = 200

    def setup(self, engine_name):
        self.make_engine(engine_name)
        self.items = shuffled(make_items(self.commits), SEED + 4)

    def time_commit_durable(self, engine_name):
        commit_one = self.engine.commit_one
        for key, value in self.items:
            commit_one(key, value)

    def peakmem_commit_durable(self, engine_name):
        commit_one = self.engine.commit_one
        for key, value in self.items:
            commit_one(key, value)


class Checkpoint:
    """store.checkpoint() folding n logged inserts (random order) into the data file."""
    params = ([20_000, 200_000],)
    param_names = ["n"]
    number = 1
    repeat = (1, 5, 20.0)

    def setup(self, n):
        self.workdir = tempfile.mkdtemp(prefix="velocore-asv-")
        # a log large enough that nothing is folded in before the timed checkpoint
        self.store = velocore.open(os.path.join(self.workdir, "ckpt.vc"), sync="off",
                                   checkpoint_mb=4096)
        table = self.store.table("bench")
        items = shuffled(make_items(n), SEED + 5)
        for first in range(0, n, 1_000):
            with self.store.txn() as t:
                t.put_many(table, items[first:first + 1_000])

    def teardown(self, n):
        self.store.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def time_checkpoint(self, n):
        self.store.checkpoint()

    def peakmem_checkpoint(self, n):
        self.store.checkpoint()


_CRASH_WRITER = r"""
import os, random, signal, sys
import velocore
path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
store = velocore.open(path, sync="normal", checkpoint_mb=4096)
table = store.table("bench")
for first in range(0, n, 1000):
    with store.txn() as t:
        t.put_many(table, [(rng.randbytes(8) + i.to_bytes(8, "big"), rng.randbytes(100))
                           for i in range(first, min(n, first + 1000))])
os.kill(os.getpid(), signal.SIGKILL)   # no close(): the next open must recover
"""


class Recovery:
    """velocore.open of a store whose writer was SIGKILLed with n inserts only in its log."""
    params = ([20_000, 200_000],)
    param_names = ["n"]
    number = 1
    repeat = (1, 5, 30.0)
    timeout = 120

    def setup(self, n):
        self.workdir = tempfile.mkdtemp(prefix="velocore-asv-")
        self.path = os.path.join(self.workdir, "crashed.vc")
        proc = subprocess.run([sys.executable, "-c", _CRASH_WRITER, self.path, str(n),
                               str(SEED)], capture_output=True)
        if proc.returncode != -signal.SIGKILL:
            raise RuntimeError("crash writer exited with %d: %s"
                               % (proc.returncode, proc.stderr.decode(errors="replace")))
        self.store = None

    def teardown(self, n):
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def time_open_after_crash(self, n):
        self.store = velocore.open(self.path)

    def peakmem_open_after_crash(self, n):
        self.store = velocore.open(self.path)

    def track_recovered_keys(self, n):
        with velocore.open(self.path) as store:
            return len(store.table("bench"))
    track_recovered_keys.unit = "keys"


# ------------------------------------------------------------------------- the GIL

class ParallelGetMany:
    """get_many over a shuffled key list split across threads (each its own snapshot),
    against the same parts looked up one after another in one thread. get_many runs
    without the GIL, so time_parallel should fall as threads are added (on enough cores)
    while time_loop stays flat."""
    params = ([1, 2, 4],)
    param_names = ["threads"]
    n = 200_000

    def setup(self, threads):
        self.workdir = tempfile.mkdtemp(prefix="velocore-asv-")
        self.store = velocore.open(os.path.join(self.workdir, "gil.vc"), sync="off")
        self.table = self.store.table("bench")
        items = make_items(self.n)
        with self.store.txn() as t:
            t.put_many(self.table, items)
        self.store.checkpoint()
        keys = shuffled((key for key, _ in items), SEED + 6)
        size = -(-len(keys) // threads)
        self.parts = [keys[first:first + size] for first in range(0, len(keys), size)]

    def teardown(self, threads):
        self.store.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _look_up(self, keys):
        with self.store.snapshot() as s:
            s.get_many(self.table, keys)

    def time_parallel(self, threads):
        workers = [threading.Thread(target=self._look_up, args=(part,))
                   for part in self.parts]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def time_loop(self, threads):
        for part in self.parts:
            self._look_up(part)

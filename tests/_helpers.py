"""Helpers shared by several test modules (imported as a plain module)."""
import hashlib
import os
import random
import struct
import subprocess
import sys
import threading

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# Generous upper bound for a child process: only a guard against a hung engine,
# never a performance assertion.
CHILD_TIMEOUT = 300


def child_env():
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONFAULTHANDLER"] = "1"  # a crash prints a C-level traceback to stderr
    return env


def run_python(code, *args, timeout=CHILD_TIMEOUT, cwd=None):
    """Run `python -c code args...`; returns CompletedProcess (text mode)."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=child_env(),
    )


def run_script(name, *args, timeout=CHILD_TIMEOUT, cwd=None):
    """Run a helper script that lives in tests/."""
    return subprocess.run(
        [sys.executable, os.path.join(TESTS_DIR, name), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=child_env(),
    )


def run_cli(*args, timeout=CHILD_TIMEOUT, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "velocore", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=child_env(),
    )


def assert_no_signal(proc, what="child"):
    """A negative return code means the child died from a signal (segfault, abort)."""
    assert proc.returncode >= 0, (
        f"{what} was killed by signal {-proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    )


def value_for(key, size=None, salt=b""):
    """Deterministic pseudo-random value for a key (reproducible in child processes)."""
    seed = int.from_bytes(hashlib.blake2b(salt + key, digest_size=8).digest(), "little")
    rnd = random.Random(seed)
    if size is None:
        size = rnd.randrange(0, 300)
    return rnd.randbytes(size)


def model_range(model, start=None, stop=None, prefix=None, reverse=False):
    """Reference implementation of range() over a dict bytes -> bytes."""
    keys = sorted(model)
    out = []
    for k in keys:
        if start is not None and k < start:
            continue
        if stop is not None and k >= stop:
            continue
        if prefix is not None and not k.startswith(prefix):
            continue
        out.append((k, model[k]))
    if reverse:
        out.reverse()
    return out


def run_in_thread(fn, timeout=120):
    """Run fn in a thread; fail if it does not finish (a deadlock guard only)."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            result["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise AssertionError(f"operation did not finish within {timeout}s (deadlock?)")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def run_threads_for(threads, seconds, stop):
    """Start threads, let them run for `seconds`, set the `stop` event, join them all."""
    import time
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()


def churn_with_checkpoints(store, table, keys, value, stop, errors, *, seed, per_txn,
                           every=5):
    """A writer for the background of a test: until `stop` is set, transactions that put
    `per_txn` random keys (value(key, generation) each), with a checkpoint after every
    `every` of them.  An exception is appended to `errors`.  Returns the checkpoints taken."""
    rnd = random.Random(seed)
    gen = checkpoints = 0
    try:
        while not stop.is_set():
            gen += 1
            with store.txn() as t:
                for k in rnd.sample(keys, per_txn):
                    t.put(table, k, value(k, gen))
            if gen % every == 0:
                store.checkpoint()
                checkpoints += 1
    except Exception as exc:  # noqa: BLE001
        errors.append(exc)
    return checkpoints


def run_alongside(workers, background, stop, timeout=600):
    """Start the background threads, then the workers; once every worker has ended, set
    `stop` (the background threads loop until it is set) and join the background ones.
    Fails if a thread is still running after `timeout` seconds."""
    for th in background + workers:
        th.start()
    for th in workers:
        th.join(timeout)
    stop.set()
    for th in background:
        th.join(timeout)
    assert not any(th.is_alive() for th in workers + background), "threads hung"


def file_digest_tree(root):
    """{relative path: (size, sha256)} for every file under root."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, root)
            with open(p, "rb") as fh:
                data = fh.read()
            out[rel] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def wal_segments(store_dir):
    """Sorted absolute paths of the log segments of a store."""
    d = os.path.join(store_dir, "wal")
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".log"))


WAL_SEG_HDR = 32
WAL_REC_MAGIC = 0x52574356  # b"VCWR"


def wal_records(seg_file):
    """[(start, end)] of the records in one log segment, found by their framing (magic and
    payload length; CRCs are not checked), up to the first offset that holds none."""
    with open(seg_file, "rb") as f:
        data = f.read()
    out = []
    off = WAL_SEG_HDR
    while off + 32 <= len(data):
        if struct.unpack_from("<I", data, off)[0] != WAL_REC_MAGIC:
            break
        plen = struct.unpack_from("<Q", data, off + 8)[0]
        end = off + 32 + ((plen + 7) & ~7)
        if end > len(data):
            break
        out.append((off, end))
        off = end
    return out


def wal_tail(seg_file):
    """(logical end, file size, every byte past the logical end is zero) of a segment."""
    recs = wal_records(seg_file)
    end = recs[-1][1] if recs else WAL_SEG_HDR
    with open(seg_file, "rb") as f:
        data = f.read()
    return end, len(data), data[end:].count(0) == len(data) - end


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    """CRC32C (the checksum of pages and log records) a byte at a time from a table: the
    definition, slow and plain; crc continues a previous result."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF

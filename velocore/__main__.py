"""The velocore command line: ``python -m velocore`` (also the ``velocore`` script).

    velocore demo [--keys N]          load, read, scan and contend on a temporary store
    velocore info STORE [--json]      print store.info() of a store, opened read-only
    velocore check STORE [--json]     verify every checksum and tree invariant

Exit status: 0 success / healthy store; 1 the store is damaged (``check``) or an
operation failed; 2 usage errors, a missing store, or a store locked by another process.
Expected errors print one line to stderr, never a traceback.
"""
import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time

EXIT_OK = 0
EXIT_DAMAGED = 1   # check found damage, or an operation failed
EXIT_USAGE = 2     # bad arguments, missing store, store locked elsewhere

PROG = "velocore"


def _error(message):
    print("%s: %s" % (PROG, message), file=sys.stderr)


def _version():
    try:
        from importlib.metadata import version
        return version("velocore")
    except Exception:  # not installed as a distribution (running from a source tree)
        return "unknown"


# --------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------

def _human_bytes(n):
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return ("%d %s" % (value, unit)) if unit == "B" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%d B" % n  # not reached


def _is_byte_count(key):
    key = key.lower()
    return key.endswith(("bytes", "_size", "size")) or key in ("cache", "log", "data")


def _format_value(key, value):
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int) and _is_byte_count(key) and value >= 1024:
        return "%d (%s)" % (value, _human_bytes(value))
    if isinstance(value, float):
        if key.lower().endswith("_time") and value > 1e9:  # seconds since the epoch
            return "%s (%.3f)" % (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)),
                                  value)
        return ("%.6g" % value) if abs(value) < 1e6 else ("%.3f" % value)
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value))
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return ", ".join(str(item) for item in items) if items else "-"
    return str(value)


def _format_mapping(mapping, indent=0):
    """Lines of 'key   value', aligned, nested mappings indented below their key."""
    lines = []
    if not mapping:
        return [" " * indent + "(empty)"]
    width = max(len(str(key)) for key in mapping)
    for key, value in mapping.items():
        label = " " * indent + str(key).ljust(width)
        if isinstance(value, dict):
            lines.append(label.rstrip() + ":")
            lines.extend(_format_mapping(value, indent + 2))
        else:
            lines.append("%s  %s" % (label, _format_value(str(key), value)))
    return lines


def _print_json(obj):
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


# --------------------------------------------------------------------------------------
# opening a store for info / check
# --------------------------------------------------------------------------------------

class _CommandError(Exception):
    """An expected failure: message for stderr plus the exit status."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def _open_readonly(velocore, path):
    if not os.path.exists(path):
        raise _CommandError("no such store: %s" % path, EXIT_USAGE)
    if not os.path.isdir(path):
        raise _CommandError("not a store directory: %s" % path, EXIT_USAGE)
    try:
        return velocore.open(path, readonly=True)
    except FileNotFoundError as exc:
        raise _CommandError("not a velocore store: %s (%s)" % (path, exc), EXIT_USAGE)


def _run_store_command(args, body):
    """Run body(store) on a read-only store, mapping expected errors to exit codes."""
    import velocore
    try:
        with _open_readonly(velocore, args.store) as store:
            return body(store)
    except _CommandError as exc:
        _error(str(exc))
        return exc.status
    except velocore.CorruptionError as exc:
        _error("store is damaged: %s" % exc)
        return EXIT_DAMAGED
    except velocore.LockedError as exc:
        _error("store is locked (open in another process?): %s" % exc)
        return EXIT_USAGE
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except velocore.Error as exc:
        _error("%s: %s" % (type(exc).__name__, exc))
        return EXIT_DAMAGED
    except OSError as exc:
        _error(str(exc))
        return EXIT_DAMAGED


# --------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------

def cmd_info(args):
    def body(store):
        info = dict(store.info())
        if args.json:
            _print_json(info)
        else:
            print("velocore store %s" % info.get("path", args.store))
            for line in _format_mapping(info, indent=2):
                print(line)
        return EXIT_OK
    return _run_store_command(args, body)


# --------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------

def cmd_check(args):
    def body(store):
        started = time.perf_counter()
        report = dict(store.check())
        elapsed = time.perf_counter() - started
        errors = list(report.get("errors") or [])
        ok = bool(report.get("ok")) and not errors
        if args.json:
            _print_json(report)
            return EXIT_OK if ok else EXIT_DAMAGED
        print("checking %s" % args.store)
        counts = {key: value for key, value in report.items() if key not in ("ok", "errors")}
        if counts:
            for line in _format_mapping(counts, indent=2):
                print(line)
        if ok:
            print("ok: no errors found (%.2fs)" % elapsed)
            return EXIT_OK
        if errors:
            print("DAMAGED: %d error%s" % (len(errors), "" if len(errors) == 1 else "s"))
            for message in errors:
                print("  - %s" % message)
        else:
            print("DAMAGED: check reported failure without details")
        return EXIT_DAMAGED
    return _run_store_command(args, body)


# --------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------

def _demo_key(i):
    return b"key:%010d" % i


def _demo_value(i):
    return (b"%010d" % i) * 10        # 100 bytes, different for every key


class _Phases:
    """Collects (phase, operations, seconds) and prints them as a table."""

    def __init__(self):
        self.rows = []

    def add(self, phase, ops, seconds, unit="ops"):
        self.rows.append((phase, ops, seconds, unit))
        rate = ops / seconds if seconds > 0 else float("inf")
        print("  %-34s %10d %-8s %8.3f s %14s %s/s" % (phase, ops, unit, seconds,
                                                     "{:,.0f}".format(rate), unit))

    def print_table(self):
        print()
        print("| phase | count | seconds | per second |")
        print("|---|---:|---:|---:|")
        for phase, ops, seconds, unit in self.rows:
            rate = ops / seconds if seconds > 0 else float("inf")
            print("| %s | %d %s | %.3f | %s |" % (phase, ops, unit, seconds,
                                                "{:,.0f}".format(rate)))


def _demo_load(velocore, store, table, n_keys, chunk, phases, progress_cls):
    engine_seconds = 0.0
    with progress_cls(n_keys, "loading", unit="keys") as bar:
        for first in range(0, n_keys, chunk):
            last = min(n_keys, first + chunk)
            items = [(_demo_key(i), _demo_value(i)) for i in range(first, last)]
            started = time.perf_counter()
            with store.txn() as t:
                t.put_many(table, items)
            engine_seconds += time.perf_counter() - started
            bar.update(last - first)
    phases.add("load (put_many, %d-key txns)" % chunk, n_keys, engine_seconds, "keys")


def _demo_read(velocore, store, table, n_keys, chunk, phases, progress_cls, rng):
    found = 0
    engine_seconds = 0.0
    with store.snapshot() as s:
        with progress_cls(n_keys, "reading", unit="keys") as bar:
            for first in range(0, n_keys, chunk):
                keys = [_demo_key(i) for i in range(first, min(n_keys, first + chunk))]
                started = time.perf_counter()
                values = s.get_many(table, keys)
                engine_seconds += time.perf_counter() - started
                found += sum(1 for value in values if value is not None)
                bar.update(len(keys))
        phases.add("read back (get_many)", n_keys, engine_seconds, "keys")
        if found != n_keys:
            raise RuntimeError("read back %d of %d keys" % (found, n_keys))

        sample = [rng.randrange(n_keys) for _ in range(min(n_keys, 10_000))]
        started = time.perf_counter()
        for i in sample:
            value = s.get(table, _demo_key(i))
            if value != _demo_value(i):
                raise RuntimeError("wrong value for %r: %r" % (_demo_key(i), value))
        phases.add("verify sample (get)", len(sample), time.perf_counter() - started, "keys")
        for i in (n_keys, n_keys + 1, 10 * n_keys + 7):  # never written
            if s.get(table, _demo_key(i)) is not None:
                raise RuntimeError("found a key that was never written: %r" % _demo_key(i))
    print("  all %d keys present; %d sampled values verified" % (found, len(sample)))


def _demo_scan(velocore, store, table, n_keys, phases, progress_cls):
    with store.snapshot() as s:
        count = 0
        previous = b""
        started = time.perf_counter()
        with progress_cls(n_keys, "scanning", unit="keys") as bar:
            pending = 0
            for key, value in s.range(table):
                if key <= previous:
                    raise RuntimeError("range scan out of order at %r" % key)
                previous = key
                count += 1
                pending += 1
                if pending == 65536:
                    bar.update(pending)
                    pending = 0
            bar.update(pending)
        phases.add("full range scan", count, time.perf_counter() - started, "keys")
        if count != n_keys:
            raise RuntimeError("range scan returned %d of %d keys" % (count, n_keys))

        # A bounded reverse scan: the last 1000 keys below the middle key.
        middle = n_keys // 2
        start = _demo_key(max(0, middle - 1000))
        stop = _demo_key(middle)
        started = time.perf_counter()
        window = list(s.range(table, start, stop, reverse=True, keys_only=True))
        phases.add("bounded reverse scan", len(window), time.perf_counter() - started, "keys")
        expected = [_demo_key(i) for i in range(middle - 1, max(0, middle - 1000) - 1, -1)]
        if window != expected:
            raise RuntimeError("bounded reverse scan returned the wrong keys")
    print("  full scan returned %d keys in order; reverse scan of [%s, %s) returned %d"
          % (count, start.decode(), stop.decode(), len(window)))


def _demo_conflict(velocore, store, counters):
    """Two overlapping transactions write the same key: the second committer loses."""
    key = b"balance"
    with store.txn() as t:
        t.put(counters, key, b"100")

    first = store.txn()
    second = store.txn()                      # both see balance = 100
    first.put(counters, key, b"150")          # +50
    lost_at = None
    try:
        second.put(counters, key, b"80")      # -20, computed from the same old value
    except velocore.ConflictError:
        lost_at = "put"                       # the engine may detect it early
    first.commit()
    if lost_at is None:
        try:
            second.commit()
        except velocore.ConflictError as exc:
            lost_at = "commit"
            print("  second transaction: ConflictError at commit (%s)" % exc)
    else:
        print("  second transaction: ConflictError at put")
    second.abort()                            # no-op if it already ended
    if lost_at is None:
        raise RuntimeError("two transactions wrote the same key and both committed")

    # The loser's work is redone on the new state by store.retry.
    def withdraw(txn):
        balance = int(txn.get(counters, key))
        txn.put(counters, key, b"%d" % (balance - 20))
        return balance - 20

    balance = store.retry(withdraw)
    print("  resolved with store.retry: balance 100 +50 -20 = %d" % balance)
    if balance != 130:
        raise RuntimeError("expected a balance of 130, got %d" % balance)


def _demo_threads(velocore, store, counters, phases, n_threads=4, per_thread=50):
    """Threads increment one counter through store.retry; every increment must count."""
    key = b"hits"
    with store.txn() as t:
        t.put(counters, key, b"0")
    attempts = [0]
    attempts_lock = threading.Lock()
    failures = []

    def increment(txn):
        with attempts_lock:
            attempts[0] += 1
        value = int(txn.get(counters, key))
        txn.put(counters, key, b"%d" % (value + 1))

    def worker():
        try:
            for _ in range(per_thread):
                store.retry(increment, attempts=1000)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=worker, name="demo-%d" % i) for i in range(n_threads)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise failures[0]
    total = n_threads * per_thread
    phases.add("contended commits, %d threads" % n_threads, total, elapsed, "commits")
    with store.snapshot() as s:
        final = int(s.get(counters, key))
    print("  %d threads x %d increments: counter = %d, %d conflicts retried"
          % (n_threads, per_thread, final, attempts[0] - total))
    if final != total:
        raise RuntimeError("lost updates: counter is %d, expected %d" % (final, total))


def cmd_demo(args):
    import velocore
    from velocore._progress import Progress

    n_keys = args.keys
    if n_keys < 1:
        _error("--keys must be at least 1")
        return EXIT_USAGE
    chunk = 50_000
    rng = random.Random(20240601)
    phases = _Phases()
    progress_cls = Progress if not args.quiet else (
        lambda *a, **kw: Progress(*a, enabled=False, **kw))

    tmpdir = tempfile.mkdtemp(prefix="velocore-demo-")
    try:
        path = os.path.join(tmpdir, "demo.vc")
        print("velocore %s demo: %d keys (b'key:%%010d' -> 100-byte values)" % (
            _version(), n_keys))
        print("store: %s (removed at the end)" % path)
        print("simd: %s" % velocore.simd_level())
        print()
        with velocore.open(path) as store:
            table = store.table("demo")
            counters = store.table("counters")

            print("1. load")
            _demo_load(velocore, store, table, n_keys, chunk, phases, progress_cls)
            print("2. read back")
            _demo_read(velocore, store, table, n_keys, chunk, phases, progress_cls, rng)
            print("3. range scans")
            _demo_scan(velocore, store, table, n_keys, phases, progress_cls)
            print("4. a write-write conflict")
            _demo_conflict(velocore, store, counters)
            print("5. concurrent transactions")
            _demo_threads(velocore, store, counters, phases)
            print("6. checkpoint")
            started = time.perf_counter()
            store.checkpoint()
            print("  checkpoint took %.3f s" % (time.perf_counter() - started))

            phases.print_table()
            print()
            print("store.info():")
            for line in _format_mapping(dict(store.info()), indent=2):
                print(line)
            print()
            print("tables: %s" % ", ".join(store.tables()))
        return EXIT_OK
    except velocore.Error as exc:
        _error("demo failed: %s: %s" % (type(exc).__name__, exc))
        return EXIT_DAMAGED
    except RuntimeError as exc:
        _error("demo failed: %s" % exc)
        return EXIT_DAMAGED
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="velocore: an embedded, transactional, ordered key-value store.",
        epilog="exit status: 0 ok, 1 damaged store or failure, 2 usage error, "
               "missing or locked store")
    parser.add_argument("--version", action="version", version="%(prog)s " + _version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo", help="load, read, scan and contend on a temporary store",
        description="Create a store in a temporary directory, load keys with put_many, "
                    "read them back, scan them, show a write-write conflict resolved by "
                    "store.retry, print the measured rates and store.info(), then "
                    "remove the store.")
    demo.add_argument("--keys", type=int, default=1_000_000, metavar="N",
                      help="number of keys to load (default: 1,000,000)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=cmd_demo)

    info = commands.add_parser("info", help="print information about a store",
                               description="Open STORE read-only and print store.info().")
    info.add_argument("store", metavar="STORE", help="the store's directory")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=cmd_info)

    check = commands.add_parser(
        "check", help="verify every checksum and tree invariant",
        description="Open STORE read-only and run store.check(). Exit 0 when the store "
                    "is healthy, 1 when it is damaged, 2 when it is missing or locked.")
    check.add_argument("store", metavar="STORE", help="the store's directory")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=cmd_check)
    return parser


def main(argv=None):
    """main(argv=None) -> int

    Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit status.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`velocore info STORE | head`): quiet exit.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_DAMAGED


if __name__ == "__main__":
    sys.exit(main())

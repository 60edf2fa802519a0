"""Damaged files (SPEC §4): CorruptionError naming the file, never a crash, never wrong data.

Every scenario runs the engine in a child process (tests/corrupt_child.py); a negative
return code (killed by a signal: segfault, abort) fails the test.
"""
import json
import os
import random
import shutil

import pytest

import velocore
from _helpers import assert_no_signal, crc32c, run_cli, run_python, run_script, wal_tail

PAGE = 4096
LOG_K = 20


def child_json(*args):
    p = run_script("corrupt_child.py", *args)
    assert_no_signal(p, "corrupt_child " + args[0])
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert p.returncode == 0 and lines, f"rc={p.returncode}\n{p.stdout}\n{p.stderr[-4000:]}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def built_store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("built") / "store")
    assert child_json("build", path)["ok"]
    return path


@pytest.fixture
def store_copy(built_store, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(built_store, dst)
    for f in ("LOCK",):
        try:
            os.unlink(os.path.join(dst, f))
        except FileNotFoundError:
            pass
    return dst


def data_file(path):
    return os.path.join(path, "data.vc")


def xor_byte(fname, offset, mask):
    with open(fname, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        assert len(b) == 1
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def assert_safe_outcome(res, what, fname="data.vc"):
    """Damage must be reported (CorruptionError naming the file, or check() not ok) or
    invisible (every value exactly right).  Returns True when it was detected."""
    assert res["exc"] in (None, "CorruptionError"), f"{what}: wrong exception: {res}"
    if res["exc"] == "CorruptionError":
        assert fname in res["msg"], f"{what}: message does not name {fname}: {res['msg']!r}"
        # whatever was read before the error must have been right
        assert res["wrong"] == [], f"{what}: wrong data returned before the error: {res}"
        return True
    assert res["wrong"] == [], f"{what}: WRONG DATA RETURNED SILENTLY: {res['wrong'][:5]}"
    return res["check_ok"] is False


# ---------------------------------------------------------------- the baseline

def test_built_store_is_healthy(store_copy):
    res = child_json("verify", store_copy)
    assert res["exc"] is None, res
    assert res["wrong"] == [] and res["check_ok"] is True, res
    res = child_json("verify", store_copy, "ro")
    assert res["exc"] is None and res["wrong"] == [] and res["check_ok"] is True, res


# ---------------------------------------------------------------- data.vc damage

def _flip_trials(built_store, tmp_path, n, seed, readonly=False):
    rng = random.Random(seed)
    size = os.path.getsize(data_file(built_store))
    npages = size // PAGE
    assert npages > 10, "the built store should span many pages"
    detected = 0
    for trial in range(n):
        dst = str(tmp_path / ("t%d" % trial))
        shutil.copytree(built_store, dst)
        page = rng.randrange(npages)
        off = rng.randrange(PAGE)
        mask = 1 << rng.randrange(8)
        xor_byte(data_file(dst), page * PAGE + off, mask)
        args = ["verify", dst] + (["ro"] if readonly else [])
        res = child_json(*args)
        what = f"seed={seed} page={page}/{npages} offset={off} mask={mask:#x}"
        detected += assert_safe_outcome(res, what)
        shutil.rmtree(dst)
    return detected


def test_flip_random_bytes_in_data_file(built_store, tmp_path):
    seed = random.randrange(2**31)
    detected = _flip_trials(built_store, tmp_path, 10, seed)
    # nearly every page of a freshly built store is in use: most flips must be caught
    assert detected >= 3, f"seed={seed}: only {detected}/10 flips were detected"


def test_flip_random_bytes_in_data_file_readonly(built_store, tmp_path):
    seed = random.randrange(2**31)
    _flip_trials(built_store, tmp_path, 4, seed, readonly=True)


@pytest.mark.slow
def test_flip_random_bytes_many(built_store, tmp_path):
    seed = random.randrange(2**31)
    detected = _flip_trials(built_store, tmp_path, 150, seed)
    assert detected >= 75, f"seed={seed}: only {detected}/150 flips were detected"


def _write_after_flip_trials(built_store, tmp_path, n, seed):
    rng = random.Random(seed)
    npages = os.path.getsize(data_file(built_store)) // PAGE
    for trial in range(n):
        dst = str(tmp_path / ("w%d" % trial))
        shutil.copytree(built_store, dst)
        page = rng.randrange(2, npages)
        off = rng.randrange(PAGE)
        xor_byte(data_file(dst), page * PAGE + off, 1 << rng.randrange(8))
        res = child_json("write-verify", dst)
        what = f"seed={seed} page={page}/{npages} offset={off}: {res}"
        assert res["exc"] in (None, "CorruptionError"), what
        if res["exc"] is None:
            assert res["wrong"] == [], "DAMAGE FOLDED INTO THE STORE SILENTLY: " + what
        else:
            assert "data.vc" in res["msg"], what
        shutil.rmtree(dst)


def test_write_and_checkpoint_over_damaged_page(built_store, tmp_path):
    """Writes + checkpoint on a store with one damaged page: CorruptionError, or (unused
    page) everything exactly right after reopen -- never silently lost or wrong data."""
    _write_after_flip_trials(built_store, tmp_path, 8, random.randrange(2**31))


@pytest.mark.slow
def test_write_and_checkpoint_over_damaged_page_many(built_store, tmp_path):
    _write_after_flip_trials(built_store, tmp_path, 120, random.randrange(2**31))


def test_flip_every_data_page(store_copy):
    """All tree pages damaged: reading the data cannot succeed; it must raise."""
    fname = data_file(store_copy)
    npages = os.path.getsize(fname) // PAGE
    for page in range(2, npages):
        xor_byte(fname, page * PAGE + 1000, 0x10)
        xor_byte(fname, page * PAGE + 3000, 0x01)
    res = child_json("verify", store_copy)
    assert res["exc"] == "CorruptionError", res
    assert "data.vc" in res["msg"], res["msg"]
    assert res["wrong"] == []


@pytest.mark.parametrize("offsets", [(0, 1), (0,), (1,)], ids=["both", "meta0", "meta1"])
def test_flip_meta_pages(store_copy, offsets):
    fname = data_file(store_copy)
    for page in offsets:
        for off in (8, 20, 33):
            xor_byte(fname, page * PAGE + off, 0x44)
    res = child_json("verify", store_copy)
    detected = assert_safe_outcome(res, f"meta pages {offsets}")
    if len(offsets) == 2:
        assert res["exc"] == "CorruptionError" and res["stage"] == "open", res
        assert detected


def test_flip_newest_meta_never_falls_back_to_stale_state(tmp_path):
    """Two checkpoints with different contents; damaging either meta slot must not make
    the store silently come back with the older checkpoint's state."""
    import corrupt_child

    exp = corrupt_child.expected_data()
    src = str(tmp_path / "src")
    items = sorted(exp["data"].items())
    with velocore.open(src) as s:
        t = s.table("data")
        with s.txn() as x:
            x.put_many(t, items[: len(items) // 2])
        s.checkpoint()
        with s.txn() as x:
            x.put_many(t, items[len(items) // 2:])
        o = s.table("other")
        with s.txn() as x:
            x.put_many(o, exp["other"])
        s.checkpoint()
    for meta in (0, 1):
        dst = str(tmp_path / ("m%d" % meta))
        shutil.copytree(src, dst)
        for off in (8, 20, 33):
            xor_byte(data_file(dst), meta * PAGE + off, 0x44)
        res = child_json("verify", dst)
        assert_safe_outcome(res, f"meta page {meta} damaged")


def test_torn_page(built_store, tmp_path):
    """The second half of a page never reached the disk (zeros)."""
    rng = random.Random()
    npages = os.path.getsize(data_file(built_store)) // PAGE
    for trial in range(3):
        dst = str(tmp_path / ("t%d" % trial))
        shutil.copytree(built_store, dst)
        page = rng.randrange(2, npages)
        with open(data_file(dst), "r+b") as f:
            f.seek(page * PAGE)
            content = f.read(PAGE)
            if content[2048:] == bytes(2048):
                f.seek(page * PAGE + 2048)
                f.write(b"\xAA" * 2048)
            else:
                f.seek(page * PAGE + 2048)
                f.write(bytes(2048))
        assert_safe_outcome(child_json("verify", dst), f"torn page {page}")


def test_truncated_data_file(built_store, tmp_path):
    size = os.path.getsize(data_file(built_store))
    for i, new_size in enumerate([2 * PAGE, size // 2, size - PAGE, size - 100]):
        dst = str(tmp_path / ("t%d" % i))
        shutil.copytree(built_store, dst)
        os.truncate(data_file(dst), new_size)
        res = child_json("verify", dst)
        detected = assert_safe_outcome(res, f"truncated to {new_size}")
        if new_size <= size // 2:
            assert detected, f"truncation to {new_size} of {size} went unnoticed: {res}"


@pytest.mark.parametrize("kind", ["random3pages", "random5000", "text", "sqlite-like"])
def test_foreign_data_file(tmp_path, kind):
    path = tmp_path / "foreign"
    path.mkdir()
    rng = random.Random(7)
    if kind == "random3pages":
        content = rng.randbytes(3 * PAGE)
    elif kind == "random5000":
        content = rng.randbytes(5000)
    elif kind == "text":
        content = b"hello, this is a text file, not a store\n" * 300
    else:
        content = b"SQLite format 3\x00" + rng.randbytes(4 * PAGE - 16)
    (path / "data.vc").write_bytes(content)
    res = child_json("verify", str(path))
    assert res["exc"] == "CorruptionError", res
    assert "data.vc" in res["msg"], res["msg"]
    # the failed open must not have modified someone else's file
    assert (path / "data.vc").read_bytes() == content
    res = child_json("verify", str(path), "ro")
    assert res["exc"] == "CorruptionError", res


ZERO_LEN = r"""
import json, sys, velocore
path = sys.argv[1]
out = {}
try:
    s = velocore.open(path)
except velocore.CorruptionError as e:
    out = {"outcome": "corruption", "msg": str(e)}
except Exception as e:
    out = {"outcome": "other", "exc": type(e).__name__, "msg": str(e)}
else:
    s.table("t").put(b"k", b"v")
    s.close()
    s = velocore.open(path)
    ok = s.table("t").get(b"k") == b"v" and s.check()["ok"]
    s.close()
    out = {"outcome": "opened", "works": ok}
print(json.dumps(out))
"""


def test_zero_length_data_file(tmp_path):
    path = tmp_path / "zero"
    path.mkdir()
    (path / "data.vc").write_bytes(b"")
    p = run_python(ZERO_LEN, str(path))
    assert_no_signal(p)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["outcome"] in ("corruption", "opened"), res
    if res["outcome"] == "opened":
        assert res["works"], res
    else:
        assert "data.vc" in res["msg"], res


# ---------------------------------------------------------------- log damage

@pytest.fixture(scope="module")
def log_store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("logbuilt") / "store")
    res = child_json("log-build", path, LOG_K)
    recs = res["records"]
    assert len(recs) == LOG_K
    for name, start, end in recs:
        assert end > start, f"could not locate a log record: {recs}"
    # the child did not close the store: the damage below lands before zeros written ahead
    name, _, last_end = recs[-1]
    end, size, zeros = wal_tail(os.path.join(path, "wal", name))
    assert end == last_end and size > end and zeros, (end, size, recs[-1])
    return path, recs


@pytest.fixture
def log_copy(log_store, tmp_path):
    path, recs = log_store
    dst = str(tmp_path / "copy")
    shutil.copytree(path, dst)
    try:
        os.unlink(os.path.join(dst, "LOCK"))
    except FileNotFoundError:
        pass
    return dst, recs


def seg_path(store, name):
    return os.path.join(store, "wal", name)


def test_log_store_unmodified_recovers_everything(log_copy):
    path, _ = log_copy
    res = child_json("log-verify", path, LOG_K, "ro")
    assert res["error"] is None, res
    assert res["X"] == LOG_K and res["whole"] and res["exact"] and res["prefix_ok"], res
    assert res["base_ok"] and res["check_ok"], res
    res = child_json("log-verify", path, LOG_K)
    assert res["error"] is None and res["X"] == LOG_K and res["write_after_ok"], res


def _cut_points(start, end):
    mid = (start + end) // 2
    return sorted({start, start + 1, start + 4, start + 8, mid, end - 1})


@pytest.mark.parametrize("which", range(6))
def test_truncated_last_log_record(log_copy, which):
    path, recs = log_copy
    name, start, end = recs[-1]
    cut = _cut_points(start, end)[which % len(_cut_points(start, end))]
    os.truncate(seg_path(path, name), cut)
    res = child_json("log-verify", path, LOG_K)
    assert res["error"] is None, f"cut at {cut} (record {start}..{end}): {res}"
    assert res["X"] == LOG_K - 1, res
    assert res["whole"] and res["exact"] and res["prefix_ok"] and res["base_ok"], res
    assert res["check_ok"] and res["write_after_ok"] and res["check_after_ok"], res


def test_truncated_last_log_record_random_offsets(log_store, tmp_path):
    path, recs = log_store
    name, start, end = recs[-1]
    rng = random.Random()
    for i in range(3):
        dst = str(tmp_path / ("c%d" % i))
        shutil.copytree(path, dst)
        cut = rng.randrange(start, end)
        os.truncate(seg_path(dst, name), cut)
        before = {f: os.path.getsize(os.path.join(dst, "wal", f))
                  for f in os.listdir(os.path.join(dst, "wal"))}
        data_before = open(data_file(dst), "rb").read()
        res = child_json("log-verify", dst, LOG_K, "ro")
        assert res["error"] is None and res["X"] == LOG_K - 1 and res["whole"], (cut, res)
        # a read-only open recovers in memory and leaves the files untouched
        after = {f: os.path.getsize(os.path.join(dst, "wal", f))
                 for f in os.listdir(os.path.join(dst, "wal"))}
        assert after == before
        assert open(data_file(dst), "rb").read() == data_before


def test_log_cut_in_the_middle_keeps_prefix(log_copy):
    """Cutting the log inside record k loses k and everything after: a clean prefix."""
    path, recs = log_copy
    name, start, end = recs[LOG_K // 2]
    if any(r[0] != name for r in recs[LOG_K // 2:]):
        pytest.skip("records span several segments")
    os.truncate(seg_path(path, name), (start + end) // 2)
    res = child_json("log-verify", path, LOG_K)
    assert res["error"] is None, res
    assert res["X"] == LOG_K // 2, res
    assert res["whole"] and res["prefix_ok"] and res["base_ok"] and res["check_ok"], res


def test_flipped_last_log_record_is_a_torn_tail(log_copy):
    path, recs = log_copy
    name, start, end = recs[-1]
    xor_byte(seg_path(path, name), (start + end) // 2, 0x20)
    res = child_json("log-verify", path, LOG_K)
    assert res["error"] is None, res
    assert res["X"] == LOG_K - 1 and res["whole"] and res["exact"], res


def test_whole_last_segment_truncated_keeps_checkpointed_data(log_copy):
    path, recs = log_copy
    name = recs[-1][0]
    os.truncate(seg_path(path, name), 0)
    res = child_json("log-verify", path, LOG_K)
    assert res["error"] is None, res
    assert res["base_ok"], "data folded in by a completed checkpoint was lost"
    assert res["whole"] and res["prefix_ok"] and res["check_ok"], res


@pytest.mark.parametrize("garbage", ["random", "zeros", "ff", "small"])
def test_garbage_extended_log(log_copy, garbage):
    path, recs = log_copy
    name = recs[-1][0]
    rng = random.Random(3)
    extra = {"random": rng.randbytes(5000), "zeros": bytes(8192),
             "ff": b"\xff" * 700, "small": b"\x01\x02\x03"}[garbage]
    with open(seg_path(path, name), "ab") as f:
        f.write(extra)
    res = child_json("log-verify", path, LOG_K)
    assert res["error"] is None, res
    assert res["X"] == LOG_K and res["whole"] and res["exact"] and res["base_ok"], res
    assert res["check_ok"] and res["write_after_ok"] and res["check_after_ok"], res


@pytest.mark.parametrize("where", ["start", "start+4", "mid", "end-1"])
@pytest.mark.parametrize("ro", [False, True], ids=["rw", "ro"])
def test_flipped_middle_log_record(log_copy, where, ro):
    path, recs = log_copy
    name, start, end = recs[LOG_K // 2]
    off = {"start": start, "start+4": start + 4, "mid": (start + end) // 2,
           "end-1": end - 1}[where]
    before = open(seg_path(path, name), "rb").read()
    xor_byte(seg_path(path, name), off, 0x08)
    res = child_json("log-verify", path, LOG_K, *(["ro"] if ro else []))
    assert res["error"] == "CorruptionError", (
        f"a bad record followed by good ones must raise CorruptionError: {res}")
    assert name in res["msg"], f"message does not name the log file {name}: {res['msg']!r}"
    # the damaged log was not "repaired" by truncating away the good records after it
    after = open(seg_path(path, name), "rb").read()
    assert len(after) == len(before)


def test_missing_data_file_with_log_present(log_copy):
    """data.vc deleted, the log (which starts after a checkpoint) still there: replaying
    the log onto an empty store would silently lose the checkpointed data."""
    path, _ = log_copy
    os.unlink(data_file(path))
    res = child_json("log-verify", path, LOG_K)
    assert res["error"] is not None, f"opened without the checkpointed data: {res}"
    assert res["error"] in ("CorruptionError", "FileNotFoundError"), res


def test_missing_log_with_unfolded_commits(log_copy):
    """wal/ deleted while it held acknowledged commits not yet folded into data.vc: the
    store must not silently come back without them."""
    path, _ = log_copy
    shutil.rmtree(os.path.join(path, "wal"))
    res = child_json("log-verify", path, LOG_K)
    if res["error"] is None:
        assert res["X"] == LOG_K, f"acknowledged commits silently lost: {res}"
    else:
        assert res["error"] == "CorruptionError", res


# ---------------------------------------------------------------- check CLI and API

def test_check_cli_on_damaged_store(store_copy):
    fname = data_file(store_copy)
    npages = os.path.getsize(fname) // PAGE
    for page in range(2, npages):
        xor_byte(fname, page * PAGE + 100, 0x02)
    p = run_cli("check", store_copy)
    assert_no_signal(p, "velocore check")
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


def test_check_cli_on_healthy_store(store_copy):
    p = run_cli("check", store_copy)
    assert_no_signal(p, "velocore check")
    assert p.returncode == 0, p.stdout + p.stderr


def test_check_api_reports_damage_with_errors(store_copy):
    """check() on a store with one damaged leaf: ok False with errors, or CorruptionError."""
    fname = data_file(store_copy)
    npages = os.path.getsize(fname) // PAGE
    code = r"""
import json, sys, velocore
try:
    s = velocore.open(sys.argv[1])
except velocore.CorruptionError as e:
    print(json.dumps({"open": "corruption", "msg": str(e)})); sys.exit(0)
try:
    r = s.check()
    print(json.dumps({"ok": bool(r["ok"]), "errors": [str(e) for e in r["errors"]][:5]}))
except velocore.CorruptionError as e:
    print(json.dumps({"check": "corruption", "msg": str(e)}))
finally:
    s.close()
"""
    for page in range(2, npages):
        xor_byte(fname, page * PAGE + 2222, 0x80)
    p = run_python(code, store_copy)
    assert_no_signal(p)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if "ok" in res:
        assert res["ok"] is False and res["errors"], res
    else:
        assert "data.vc" in res["msg"], res


# ---------------------------------------------------------------- the checksum itself

@pytest.mark.parametrize("hw", [True, False])
def test_crc32c_matches_its_definition(hw):
    """Every page and log record is checked with CRC32C: the engine's (three streams at
    once over long buffers with the SSE4.2 instruction, a table elsewhere) must be the
    checksum's definition for any length, start address and starting value, including
    the lengths around the block sizes the fast path cuts buffers into."""
    from velocore._store import _crc32c
    assert _crc32c(b"123456789", hw=hw) == 0xE3069283
    assert _crc32c(b"", 0x1234, hw=hw) == 0x1234
    rng = random.Random(17)
    lengths = [0, 1, 7, 8, 9, 4092, 4096, 20_000]
    for blk in (168, 1360):                  # the block sizes, and three of them
        for n in (blk, 3 * blk):
            lengths += [n - 9, n - 1, n, n + 1, n + 8, n + 15]
    lengths += [rng.randrange(0, 12_000) for _ in range(40)]
    for n in lengths:
        raw = rng.randbytes(n + 8)
        off = rng.randrange(8)               # the fast path aligns to 8 bytes first
        data = memoryview(raw)[off:off + n]
        start = rng.choice([0, rng.getrandbits(32)])
        want = crc32c(data, start)
        assert _crc32c(data, start, hw=hw) == want, (n, off, start)
        cut = rng.randrange(n + 1)           # chaining: the CRC of a prefix continued
        assert _crc32c(data[cut:], _crc32c(data[:cut], start, hw=hw), hw=hw) == want

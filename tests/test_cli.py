"""Command line: python -m velocore info / check / demo (SPEC §5)."""
import os
import shutil
import sys

import pytest

import velocore
from _helpers import assert_no_signal, run_cli, run_script


def make_store(path, n=500):
    with velocore.open(path) as s:
        t = s.table("users")
        with s.txn() as x:
            x.put_many(t, [(b"u%05d" % i, b"v" * (i % 50)) for i in range(n)])
        s.table("empty")


def test_info(tmp_path):
    path = str(tmp_path / "s")
    make_store(path)
    p = run_cli("info", path)
    assert_no_signal(p)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip(), "info printed nothing"
    assert "wal_mode" in p.stdout or "simd" in p.stdout, p.stdout
    # info must not have damaged or locked the store
    with velocore.open(path) as s:
        assert len(s.table("users")) == 500


def test_check_healthy(tmp_path):
    path = str(tmp_path / "s")
    make_store(path)
    p = run_cli("check", path)
    assert_no_signal(p)
    assert p.returncode == 0, p.stdout + p.stderr


def test_check_after_crash_needs_recovery(tmp_path):
    """A store left by kill -9 is healthy: recovery is automatic."""
    path = str(tmp_path / "s")
    p = run_script("crash_child.py", "commit-exit", path, "full", 4, 15)
    assert p.returncode == 0, p.stderr
    p = run_cli("check", path)
    assert_no_signal(p)
    assert p.returncode == 0, p.stdout + p.stderr


def test_check_damaged(tmp_path):
    path = str(tmp_path / "s")
    make_store(path, 3000)
    fname = os.path.join(path, "data.vc")
    size = os.path.getsize(fname)
    with open(fname, "r+b") as f:
        for page in range(2, size // 4096):
            f.seek(page * 4096 + 512)
            b = f.read(1)
            f.seek(page * 4096 + 512)
            f.write(bytes([b[0] ^ 0xFF]))
    p = run_cli("check", path)
    assert_no_signal(p)
    assert p.returncode > 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


def test_check_foreign_file(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / "data.vc").write_bytes(b"just some text\n" * 1000)
    p = run_cli("check", str(path))
    assert_no_signal(p)
    assert p.returncode > 0
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


@pytest.mark.parametrize("cmd", ["info", "check"])
def test_missing_store(tmp_path, cmd):
    path = str(tmp_path / "nope")
    p = run_cli(cmd, path)
    assert_no_signal(p)
    assert p.returncode > 0
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert not os.path.exists(path), f"'{cmd}' created a store"


def test_demo(tmp_path):
    p = run_cli("demo", cwd=str(tmp_path))
    assert_no_signal(p)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip()


def test_bad_command():
    p = run_cli("no-such-command")
    assert_no_signal(p)
    assert p.returncode != 0


def test_no_arguments():
    p = run_cli()
    assert_no_signal(p)
    assert p.returncode != 0 or p.stdout.strip()


def test_console_script(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "velocore")
    if not os.path.exists(exe):
        exe = shutil.which("velocore")
    if not exe:
        pytest.skip("console script not installed")
    import subprocess

    path = str(tmp_path / "s")
    make_store(path, 10)
    p = subprocess.run([exe, "check", path], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr

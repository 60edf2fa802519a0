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


# ---------------------------------------------------------------- README-documented details

def test_info_json(tmp_path):
    import json

    path = str(tmp_path / "s")
    make_store(path)
    p = run_cli("info", path, "--json")
    assert_no_signal(p)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert os.path.abspath(info["path"]) == os.path.abspath(path)
    assert info["simd"] == velocore.simd_level()
    assert info["wal_mode"] in ("file", "pmem")


def test_check_json(tmp_path):
    import json

    path = str(tmp_path / "s")
    make_store(path)
    p = run_cli("check", path, "--json")
    assert_no_signal(p)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["ok"] is True and res["errors"] == []


def test_check_exit_codes_per_readme(tmp_path):
    """README: check exits 0 healthy, 1 damaged, 2 missing or locked."""
    path = str(tmp_path / "s")
    make_store(path, 3000)
    p = run_cli("check", str(tmp_path / "missing"))
    assert p.returncode == 2, (p.returncode, p.stderr)
    s = velocore.open(path)
    try:
        p = run_cli("check", path)
        assert p.returncode == 2, (p.returncode, p.stderr)
        assert "Traceback" not in p.stderr
        p = run_cli("info", path)
        assert p.returncode == 2, (p.returncode, p.stderr)
        assert "Traceback" not in p.stderr
    finally:
        s.close()
    fname = os.path.join(path, "data.vc")
    with open(fname, "r+b") as f:
        size = os.path.getsize(fname)
        for page in range(2, size // 4096):
            f.seek(page * 4096 + 700)
            b = f.read(1)
            f.seek(page * 4096 + 700)
            f.write(bytes([b[0] ^ 0x01]))
    p = run_cli("check", path)
    assert_no_signal(p)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr


def test_store_attributes(tmp_path):
    path = str(tmp_path / "s")
    with velocore.open(path, sync="normal") as s:
        assert s.readonly is False
        assert s.sync == "normal"
        assert s.wal_mode == "file"
    with velocore.open(path, readonly=True) as s:
        assert s.readonly is True

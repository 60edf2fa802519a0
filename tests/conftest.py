"""Shared fixtures and hypothesis profiles for the velocore test suite.

Profiles (env HYPOTHESIS_PROFILE):
  ci        (default) quick: the whole stateful test stays well under a minute
  thorough  many more examples and longer programs, for nightly / manual runs
"""
import os
import sys

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=3000,
    stateful_step_count=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


@pytest.fixture
def store_path(tmp_path):
    """Path (str) of a not-yet-existing store directory."""
    return str(tmp_path / "store.vc")


@pytest.fixture
def store(store_path):
    """An open on-disk store (sync='full'), closed after the test."""
    import velocore

    s = velocore.open(store_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def mem_store():
    import velocore

    s = velocore.open()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def no_bulk():
    """Large ascending put_many calls into empty key ranges go through the memtable, as
    any other does, instead of being written as bulk loads (leaves spliced in at commit):
    for tests of what the memtable and the log do with them."""
    import velocore._store

    before = velocore._store._set_bulk_loads(False)
    try:
        yield
    finally:
        velocore._store._set_bulk_loads(before)


@pytest.fixture(params=["bulk", "memtable", "bulk-one-thread", "memtable-one-thread"])
def bulk_mode(request):
    """Runs a test with bulk loads allowed, then with large put_many calls through the
    memtable; each way with a large call's chunks written on a thread of their own while
    the next is read, and then read and written in turn by the calling thread."""
    import velocore._store

    before = velocore._store._set_bulk_loads(request.param.startswith("bulk"))
    threads = velocore._store._set_put_threads(not request.param.endswith("one-thread"))
    try:
        yield request.param
    finally:
        velocore._store._set_bulk_loads(before)
        velocore._store._set_put_threads(threads)

"""velocore: an embedded, transactional, ordered key-value storage engine.

    import velocore
    store = velocore.open("shop.vc")
    users = store.table("users")
    with store.txn() as t:
        t.put(users, b"alice", b"...")
"""
import os as _os

from velocore._store import (
    ClosedError,
    ConflictError,
    CorruptionError,
    Error,
    LockedError,
    NoSuchTableError,
    RangeIterator,
    ReadOnlyError,
    Snapshot,
    Store,
    Table,
    Txn,
    open,
    simd_level,
)

__version__ = "0.1.0"

__all__ = [
    "open", "Store", "Table", "Txn", "Snapshot", "RangeIterator", "simd_level", "get_include",
    "Error", "ConflictError", "ClosedError", "ReadOnlyError", "LockedError", "CorruptionError",
    "NoSuchTableError",
]


def get_include():
    """get_include() -> list of str

    Directories to add to a Cython extension's include path to cimport velocore: the
    package directory (its .pxd files) and the C headers.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    headers = _os.path.join(here, "include")
    if not _os.path.isdir(headers):
        # an editable install: the headers are in the source tree beside the package
        headers = _os.path.join(_os.path.dirname(here), "include")
    return [_os.path.dirname(here), headers]

"""Model-based test: a hypothesis RuleBasedStateMachine against a dict model.

Covers put/delete/get/range (forward, reverse, prefix, start/stop, keys_only), batches,
commit/abort, read-your-writes, aborted transactions leaving no trace, snapshots that keep
their state (and their iterators), conflicts with autocommit writes, checkpoints, and
reopen (close + open of the same directory).

Profiles: HYPOTHESIS_PROFILE=ci (default, fast) or thorough; see conftest.py.
"""
import copy
import os
import random
import shutil
import tempfile

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

import velocore
from _helpers import model_range

ALPHA = [b"\x00", b"a", b"b", b"\xff"]
TABLES = ["alpha", "beta"]

FEW_KEYS = [b"\x00", b"a", b"b", b"\xff", b"ab", b"a\x00", b"\xff\xff", b"ba"]
keys = st.one_of(
    st.sampled_from(FEW_KEYS),   # weighted towards a few keys so that collisions happen
    st.sampled_from(FEW_KEYS),
    st.lists(st.sampled_from(ALPHA), min_size=1, max_size=3).map(b"".join),
)
prefixes = st.none() | st.lists(st.sampled_from(ALPHA), min_size=1, max_size=2).map(b"".join)
bounds = st.none() | keys


def _big(args):
    n, seed = args
    return random.Random(seed).randbytes(n)


values = st.one_of(
    st.binary(max_size=16),
    st.binary(max_size=16),
    st.binary(max_size=16),
    st.binary(max_size=300),
    st.just(b""),
    st.tuples(st.integers(5000, 20000), st.integers(0, 2**32)).map(_big),  # overflow pages
)
tables = st.sampled_from(TABLES)


class StoreMachine(RuleBasedStateMachine):
    IN_MEMORY = False

    def __init__(self):
        super().__init__()
        if self.IN_MEMORY:
            self.dir = None
            self.path = None
        else:
            self.dir = tempfile.mkdtemp(prefix="vc-sm-")
            self.path = os.path.join(self.dir, "store")
        self.store = self._open()
        self.committed = {n: {} for n in TABLES}
        self._fetch_tables()
        self.txn = None
        self.snaps = []   # [snapshot, frozen model]
        self.iters = []   # [iterator, expected remaining list, snapshot]

    # ------------------------------------------------------------ helpers

    def _open(self):
        if self.IN_MEMORY:
            return velocore.open()
        return velocore.open(self.path, sync="off", cache_mb=1, checkpoint_mb=1)

    def _fetch_tables(self):
        self.tobj = {n: self.store.table(n) for n in TABLES}

    def _t(self, name, by_name):
        return name if by_name else self.tobj[name]

    def _view(self, name):
        view = dict(self.txn_base[name])
        for k, v in self.txn_writes[name].items():
            if v is None:
                view.pop(k, None)
            else:
                view[k] = v
        return view

    def _end_txn(self):
        self.txn = None
        self.txn_base = None
        self.txn_writes = None

    @staticmethod
    def _assert_iter_closed(entry):
        it, remaining, _snap = entry
        if remaining:
            with pytest.raises(velocore.ClosedError):
                next(it)
        else:
            # nothing left to yield: ending with StopIteration is acceptable too
            with pytest.raises((velocore.ClosedError, StopIteration)):
                next(it)

    def teardown(self):
        try:
            self.store.close()
        finally:
            if self.dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ transactions

    @precondition(lambda self: self.txn is None)
    @rule()
    def begin(self):
        self.txn = self.store.txn()
        self.txn_base = copy.deepcopy(self.committed)
        self.txn_writes = {n: {} for n in TABLES}
        self.txn_changed_since = set()   # (table, key) committed by others after begin
        self.txn_must_conflict = False
        self.txn_dead = False            # a put/delete raised ConflictError

    def _txn_write(self, name, key, value, by_name):
        expect_conflict = (name, key) in self.txn_changed_since
        try:
            if value is None:
                existed = self.txn.delete(self._t(name, by_name), key)
            else:
                self.txn.put(self._t(name, by_name), key, value)
        except velocore.ConflictError:
            assert expect_conflict, "ConflictError without a write-write conflict"
            self.txn_dead = True
            return
        if expect_conflict:
            self.txn_must_conflict = True
        elif value is None:
            assert existed == (key in self._view(name))
        self.txn_writes[name][key] = value

    @precondition(lambda self: self.txn is not None and not self.txn_dead)
    @rule(name=tables, key=keys, value=values, by_name=st.booleans())
    def txn_put(self, name, key, value, by_name):
        self._txn_write(name, key, value, by_name)

    @precondition(lambda self: self.txn is not None and not self.txn_dead)
    @rule(name=tables, key=keys, by_name=st.booleans())
    def txn_delete(self, name, key, by_name):
        self._txn_write(name, key, None, by_name)

    @precondition(lambda self: self.txn is not None and not self.txn_dead)
    @rule(name=tables, items=st.lists(st.tuples(keys, values), max_size=6))
    def txn_put_many(self, name, items):
        if any((name, k) in self.txn_changed_since for k, _ in items):
            return  # conflict timing inside a batch is not modelled
        self.txn.put_many(self.tobj[name], items)
        for k, v in items:
            self.txn_writes[name][k] = v

    @precondition(lambda self: self.txn is not None and not self.txn_dead)
    @rule(name=tables, ks=st.lists(keys, max_size=5))
    def txn_delete_many(self, name, ks):
        if any((name, k) in self.txn_changed_since for k in ks):
            return
        self.txn.delete_many(self.tobj[name], ks)
        for k in ks:
            self.txn_writes[name][k] = None

    @precondition(lambda self: self.txn is not None and not self.txn_dead)
    @rule(name=tables, key=keys, by_name=st.booleans())
    def txn_get(self, name, key, by_name):
        assert self.txn.get(self._t(name, by_name), key) == self._view(name).get(key)

    @precondition(lambda self: self.txn is not None and not self.txn_dead)
    @rule(name=tables, ks=st.lists(keys, max_size=5))
    def txn_get_many(self, name, ks):
        view = self._view(name)
        assert self.txn.get_many(self.tobj[name], ks) == [view.get(k) for k in ks]

    @precondition(lambda self: self.txn is not None and not self.txn_dead)
    @rule(name=tables, start=bounds, stop=bounds, prefix=prefixes, reverse=st.booleans(),
          keys_only=st.booleans())
    def txn_range(self, name, start, stop, prefix, reverse, keys_only):
        exp = model_range(self._view(name), start, stop, prefix, reverse)
        got = list(self.txn.range(self.tobj[name], start, stop, reverse=reverse,
                                  prefix=prefix, keys_only=keys_only))
        assert got == ([k for k, _ in exp] if keys_only else exp)

    @precondition(lambda self: self.txn is not None)
    @rule()
    def commit(self):
        if self.txn_dead:
            with pytest.raises((velocore.ConflictError, velocore.ClosedError)):
                self.txn.commit()
            self.txn.abort()
        elif self.txn_must_conflict:
            with pytest.raises(velocore.ConflictError):
                self.txn.commit()
            self.txn.abort()
        else:
            self.txn.commit()
            for name, writes in self.txn_writes.items():
                for k, v in writes.items():
                    if v is None:
                        self.committed[name].pop(k, None)
                    else:
                        self.committed[name][k] = v
        with pytest.raises(velocore.ClosedError):
            self.txn.commit()
        self._end_txn()

    @precondition(lambda self: self.txn is not None)
    @rule()
    def abort(self):
        self.txn.abort()
        self.txn.abort()  # no-op
        with pytest.raises(velocore.ClosedError):
            self.txn.get(self.tobj["alpha"], b"a")
        self._end_txn()

    # ------------------------------------------------------------ autocommit

    def _note_autocommit(self, name, key):
        if self.txn is not None:
            self.txn_changed_since.add((name, key))

    def _txn_touches(self, name, key):
        return self.txn is not None and key in self.txn_writes[name]

    @rule(name=tables, key=keys, value=values, how=st.sampled_from(["put", "setitem"]))
    def auto_put(self, name, key, value, how):
        if self._txn_touches(name, key):
            return  # would make the open txn's outcome depend on conflict-detection timing
        t = self.tobj[name]
        if how == "put":
            t.put(key, value)
        else:
            t[key] = value
        self.committed[name][key] = value
        self._note_autocommit(name, key)

    @rule(name=tables, key=keys, how=st.sampled_from(["delete", "delitem"]))
    def auto_delete(self, name, key, how):
        if self._txn_touches(name, key):
            return
        exists = key in self.committed[name]
        if self.txn is not None and not exists:
            return  # is deleting a missing key a "write"? not specified; skip
        t = self.tobj[name]
        if how == "delete":
            assert t.delete(key) == exists
        elif exists:
            del t[key]
        self.committed[name].pop(key, None)
        if exists:
            self._note_autocommit(name, key)

    @rule(name=tables, key=keys)
    def auto_get(self, name, key):
        t = self.tobj[name]
        exp = self.committed[name].get(key)
        assert t.get(key) == exp
        assert (key in t) == (exp is not None)
        if exp is None:
            with pytest.raises(KeyError):
                t[key]
        else:
            assert t[key] == exp

    @rule(name=tables, start=bounds, stop=bounds, prefix=prefixes, reverse=st.booleans())
    def auto_range(self, name, start, stop, prefix, reverse):
        exp = model_range(self.committed[name], start, stop, prefix, reverse)
        assert list(self.tobj[name].range(start, stop, reverse=reverse, prefix=prefix)) == exp

    @rule()
    def full_compare(self):
        for name in TABLES:
            t = self.tobj[name]
            assert len(t) == len(self.committed[name])
            assert list(t.items()) == sorted(self.committed[name].items())
            assert list(t.keys()) == sorted(self.committed[name])

    # ------------------------------------------------------------ snapshots

    @precondition(lambda self: len(self.snaps) < 3)
    @rule()
    def open_snapshot(self):
        self.snaps.append([self.store.snapshot(), copy.deepcopy(self.committed)])

    @precondition(lambda self: self.snaps)
    @rule(i=st.integers(0, 10), name=tables, key=keys, start=bounds, stop=bounds,
          prefix=prefixes, reverse=st.booleans())
    def check_snapshot(self, i, name, key, start, stop, prefix, reverse):
        snap, frozen = self.snaps[i % len(self.snaps)]
        assert snap.get(self.tobj[name], key) == frozen[name].get(key)
        exp = model_range(frozen[name], start, stop, prefix, reverse)
        assert list(snap.range(name, start, stop, reverse=reverse, prefix=prefix)) == exp

    @precondition(lambda self: self.snaps and len(self.iters) < 3)
    @rule(i=st.integers(0, 10), name=tables, reverse=st.booleans())
    def open_snapshot_iterator(self, i, name, reverse):
        snap, frozen = self.snaps[i % len(self.snaps)]
        it = snap.range(self.tobj[name], reverse=reverse)
        self.iters.append([it, model_range(frozen[name], reverse=reverse), snap])

    @precondition(lambda self: self.iters)
    @rule(i=st.integers(0, 10), n=st.integers(1, 4))
    def advance_iterator(self, i, n):
        entry = self.iters[i % len(self.iters)]
        it, remaining, _snap = entry
        for _ in range(n):
            if remaining:
                assert next(it) == remaining.pop(0)
            else:
                with pytest.raises(StopIteration):
                    next(it)
                break

    @precondition(lambda self: self.snaps)
    @rule(i=st.integers(0, 10))
    def close_snapshot(self, i):
        snap, _ = self.snaps.pop(i % len(self.snaps))
        snap.abort()
        with pytest.raises(velocore.ClosedError):
            snap.get(self.tobj["alpha"], b"a")
        for entry in [e for e in self.iters if e[2] is snap]:
            self.iters.remove(entry)
            self._assert_iter_closed(entry)

    # ------------------------------------------------------------ store level

    @rule()
    def checkpoint(self):
        self.store.checkpoint()

    @precondition(lambda self: not self.IN_MEMORY)
    @rule()
    def reopen(self):
        old_txn = self.txn
        old_snaps = self.snaps
        old_iters = self.iters
        self.store.close()
        if old_txn is not None:
            with pytest.raises(velocore.ClosedError):
                old_txn.get(self.tobj["alpha"], b"a")
            with pytest.raises(velocore.ClosedError):
                old_txn.commit()
        for snap, _ in old_snaps:
            with pytest.raises(velocore.ClosedError):
                snap.get(self.tobj["alpha"], b"a")
        for entry in old_iters:
            self._assert_iter_closed(entry)
        self._end_txn()
        self.snaps = []
        self.iters = []
        self.store = self._open()
        self._fetch_tables()
        assert sorted(self.store.tables()) == TABLES
        for name in TABLES:
            assert list(self.tobj[name].items()) == sorted(self.committed[name].items())

    @precondition(lambda self: self.txn is None)
    @rule()
    def check_store(self):
        res = self.store.check()
        assert res["ok"], res["errors"]


class InMemoryMachine(StoreMachine):
    IN_MEMORY = True


TestStoreMachine = StoreMachine.TestCase
TestInMemoryMachine = InMemoryMachine.TestCase

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


class TxnState:
    def __init__(self, obj, base):
        self.obj = obj
        self.base = base                        # committed state when it began
        self.writes = {n: {} for n in TABLES}   # key -> value, None = deleted
        self.changed = set()     # (table, key) definitely committed by others since begin
        self.ambiguous = set()   # (table, key) "deleted" by others while absent
        self.must_conflict = False
        self.may_conflict = False
        self.dead = False        # a put/delete raised ConflictError

    def view(self, name):
        view = dict(self.base[name])
        for k, v in self.writes[name].items():
            if v is None:
                view.pop(k, None)
            else:
                view[k] = v
        return view


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
        self.txns = [None, None]   # TxnState or None
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
    #
    # Two read-write transaction slots may be open at once.  Conflict expectations:
    #   * a key committed by someone else after the txn began ("changed") and then written
    #     by the txn: ConflictError at that put/delete or at commit (must_conflict);
    #   * a key the other open txn has written but not committed: the engine may detect
    #     the conflict early at this put/delete; otherwise whoever commits first wins;
    #   * deleting a key that did not exist is a write of unspecified conflict behaviour
    #     ("ambiguous"): a later writer of that key may or may not conflict.

    def _slot(self, slot):
        ts = self.txns[slot]
        return ts if ts is not None and not ts.dead else None

    @rule(slot=st.integers(0, 1))
    def begin(self, slot):
        if self.txns[slot] is not None:
            return
        self.txns[slot] = TxnState(self.store.txn(), copy.deepcopy(self.committed))

    def _txn_write(self, ts, name, key, value, by_name):
        expect = (name, key) in ts.changed
        ambiguous = (name, key) in ts.ambiguous
        other_holds = any(o is not None and o is not ts and key in o.writes[name]
                          for o in self.txns)
        try:
            if value is None:
                existed = ts.obj.delete(self._t(name, by_name), key)
            else:
                ts.obj.put(self._t(name, by_name), key, value)
        except velocore.ConflictError:
            assert expect or ambiguous or other_holds, \
                "ConflictError without a write-write conflict"
            ts.dead = True
            return
        if expect:
            ts.must_conflict = True
        elif ambiguous:
            ts.may_conflict = True
        elif value is None:
            assert existed == (key in ts.view(name))
        ts.writes[name][key] = value

    @rule(slot=st.integers(0, 1), name=tables, key=keys, value=values, by_name=st.booleans())
    def txn_put(self, slot, name, key, value, by_name):
        ts = self._slot(slot)
        if ts is not None:
            self._txn_write(ts, name, key, value, by_name)

    @rule(slot=st.integers(0, 1), name=tables, key=keys, by_name=st.booleans())
    def txn_delete(self, slot, name, key, by_name):
        ts = self._slot(slot)
        if ts is not None:
            self._txn_write(ts, name, key, None, by_name)

    def _batch_is_plain(self, ts, name, ks):
        for k in ks:
            if (name, k) in ts.changed or (name, k) in ts.ambiguous:
                return False
            if any(o is not None and o is not ts and k in o.writes[name] for o in self.txns):
                return False
        return True

    @rule(slot=st.integers(0, 1), name=tables, items=st.lists(st.tuples(keys, values),
                                                              max_size=6))
    def txn_put_many(self, slot, name, items):
        ts = self._slot(slot)
        if ts is None or not self._batch_is_plain(ts, name, [k for k, _ in items]):
            return  # conflict timing inside a batch is not modelled
        ts.obj.put_many(self.tobj[name], items)
        for k, v in items:
            ts.writes[name][k] = v

    @rule(slot=st.integers(0, 1), name=tables, ks=st.lists(keys, max_size=5))
    def txn_delete_many(self, slot, name, ks):
        ts = self._slot(slot)
        if ts is None or not self._batch_is_plain(ts, name, ks):
            return
        ts.obj.delete_many(self.tobj[name], ks)
        for k in ks:
            ts.writes[name][k] = None

    @rule(slot=st.integers(0, 1), name=tables, key=keys, by_name=st.booleans())
    def txn_get(self, slot, name, key, by_name):
        ts = self._slot(slot)
        if ts is not None:
            assert ts.obj.get(self._t(name, by_name), key) == ts.view(name).get(key)

    @rule(slot=st.integers(0, 1), name=tables, ks=st.lists(keys, max_size=5))
    def txn_get_many(self, slot, name, ks):
        ts = self._slot(slot)
        if ts is not None:
            view = ts.view(name)
            assert ts.obj.get_many(self.tobj[name], ks) == [view.get(k) for k in ks]

    @rule(slot=st.integers(0, 1), name=tables, start=bounds, stop=bounds, prefix=prefixes,
          reverse=st.booleans(), keys_only=st.booleans())
    def txn_range(self, slot, name, start, stop, prefix, reverse, keys_only):
        ts = self._slot(slot)
        if ts is None:
            return
        exp = model_range(ts.view(name), start, stop, prefix, reverse)
        got = list(ts.obj.range(self.tobj[name], start, stop, reverse=reverse,
                                prefix=prefix, keys_only=keys_only))
        assert got == ([k for k, _ in exp] if keys_only else exp)

    def _apply_commit(self, ts):
        for name, writes in ts.writes.items():
            for k, v in writes.items():
                definite = v is not None or k in self.committed[name]
                for o in self.txns:
                    if o is None or o is ts:
                        continue
                    if definite:
                        o.changed.add((name, k))
                        if k in o.writes[name]:
                            o.must_conflict = True
                    else:
                        o.ambiguous.add((name, k))
                        if k in o.writes[name]:
                            o.may_conflict = True
                if v is None:
                    self.committed[name].pop(k, None)
                else:
                    self.committed[name][k] = v

    @rule(slot=st.integers(0, 1))
    def commit(self, slot):
        ts = self.txns[slot]
        if ts is None:
            return
        if ts.dead:
            with pytest.raises((velocore.ConflictError, velocore.ClosedError)):
                ts.obj.commit()
            ts.obj.abort()
        elif ts.must_conflict:
            with pytest.raises(velocore.ConflictError):
                ts.obj.commit()
            ts.obj.abort()
        else:
            try:
                ts.obj.commit()
            except velocore.ConflictError:
                assert ts.may_conflict, "unexpected ConflictError at commit"
                ts.obj.abort()
            else:
                self._apply_commit(ts)
        with pytest.raises(velocore.ClosedError):
            ts.obj.commit()
        self.txns[slot] = None

    @rule(slot=st.integers(0, 1))
    def abort(self, slot):
        ts = self.txns[slot]
        if ts is None:
            return
        ts.obj.abort()
        ts.obj.abort()  # no-op
        with pytest.raises(velocore.ClosedError):
            ts.obj.get(self.tobj["alpha"], b"a")
        self.txns[slot] = None

    # ------------------------------------------------------------ autocommit

    def _note_autocommit(self, name, key):
        for ts in self.txns:
            if ts is not None:
                ts.changed.add((name, key))

    def _txn_touches(self, name, key):
        return any(ts is not None and key in ts.writes[name] for ts in self.txns)

    def _any_txn(self):
        return any(ts is not None for ts in self.txns)

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
        if self._any_txn() and not exists:
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
        old_txns = [ts for ts in self.txns if ts is not None]
        old_snaps = self.snaps
        old_iters = self.iters
        self.store.close()
        for ts in old_txns:
            with pytest.raises(velocore.ClosedError):
                ts.obj.get(self.tobj["alpha"], b"a")
            with pytest.raises(velocore.ClosedError):
                ts.obj.commit()
        for snap, _ in old_snaps:
            with pytest.raises(velocore.ClosedError):
                snap.get(self.tobj["alpha"], b"a")
        for entry in old_iters:
            self._assert_iter_closed(entry)
        self.txns = [None, None]
        self.snaps = []
        self.iters = []
        self.store = self._open()
        self._fetch_tables()
        assert sorted(self.store.tables()) == TABLES
        for name in TABLES:
            assert list(self.tobj[name].items()) == sorted(self.committed[name].items())

    @rule()
    def check_store(self):
        res = self.store.check()
        assert res["ok"], res["errors"]


class InMemoryMachine(StoreMachine):
    IN_MEMORY = True


TestStoreMachine = StoreMachine.TestCase
TestInMemoryMachine = InMemoryMachine.TestCase

"""A transaction's own writes while they ascend (a sorted load, batch calls) and after.

While every write comes after the ones before it in key order, a transaction keeps them
in an array; the first write out of order, or the first iterator, moves them into its
skip list.  Every test here checks the same answers in both forms and across the move:
reads of one's own writes, repeated writes of a key, deletes, aborts, conflicts, a
checkpoint in the middle of the transaction, the log (after reopening), and iterators;
and a state machine against a dict model.
"""
import itertools
import os
import random
import shutil
import tempfile

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

import velocore


def k(i):
    return b"k%08d" % i


def v(i, gen=0):
    return b"v%d-%d" % (i, gen) * 3


@pytest.fixture
def store(tmp_path):
    s = velocore.open(str(tmp_path / "s"), sync="normal")
    yield s
    s.close()


def expect_all(store, table, model):
    with store.snapshot() as s:
        got = dict(s.range(table))
    assert got == model


def test_ascending_reads_repeats_deletes_then_out_of_order(store, tmp_path):
    t = store.table("t")
    model = {k(i): v(i) for i in range(0, 4000, 3)}      # committed before
    with store.txn() as x:
        x.put_many(t, sorted(model.items()))
    with store.txn() as x:
        for i in range(1, 3000, 2):                       # ascending: the array
            x.put(t, k(i), v(i, 1))
            model[k(i)] = v(i, 1)
            if i % 7 == 0:                                # the same key again, at once
                x.put(t, k(i), v(i, 2))
                model[k(i)] = v(i, 2)
            if i % 11 == 0:
                x.delete(t, k(i))
                del model[k(i)]
        x.delete(t, k(3003))                              # a committed key, still ascending
        del model[k(3003)]
        for i in range(0, 3100):                          # read-your-writes from the array
            assert x.get(t, k(i)) == model.get(k(i)), i
        assert x.get(t, b"a") is None and x.get(t, b"z") is None
        for i in (500, 10, 2999, 3):                      # out of order: the skip list
            x.put(t, k(i), v(i, 3))
            model[k(i)] = v(i, 3)
        x.put(t, k(3501), v(3501, 3))
        model[k(3501)] = v(3501, 3)
        for i in range(0, 3600):
            assert x.get(t, k(i)) == model.get(k(i)), i
        assert dict(x.range(t)) == model
    expect_all(store, t, model)
    store.close()
    with velocore.open(str(tmp_path / "s")) as again:         # the log, replayed
        expect_all(again, again.table("t"), model)


def test_put_many_with_repeated_keys_last_wins(store):
    t = store.table("t")
    items = [(k(i // 3), v(i)) for i in range(3000)]        # each key three times
    random.Random(1).shuffle(items)
    model = {}
    for key, value in items:
        model[key] = value
    with store.txn() as x:
        x.put_many(t, items)
        assert x.get(t, k(5)) == model[k(5)]
    expect_all(store, t, model)


def test_iterator_during_ascending_writes(store):
    t = store.table("t")
    with store.txn() as x:
        x.put_many(t, [(k(i), v(i)) for i in range(0, 200, 2)])
    model = {k(i): v(i) for i in range(0, 200, 2)}
    with store.txn() as x:
        x.put(t, k(1), v(1, 1))
        model[k(1)] = v(1, 1)
        it = x.range(t)                                   # moves the writes to the list
        first = [next(it) for _ in range(3)]
        assert first == sorted(model.items())[:3]
        for i in range(201, 260, 2):                      # ascending again, list form
            x.put(t, k(i), v(i, 1))
            model[k(i)] = v(i, 1)
        rest = list(it)
        assert first + rest == sorted(model.items())
        assert dict(x.range(t)) == model
    expect_all(store, t, model)


def test_abort_withdraws_everything(store):
    t = store.table("t")
    with store.txn() as x:
        x.put(t, k(5), v(5))
    x = store.txn()
    x.put_many(t, [(k(i), v(i, 9)) for i in range(1000)])
    x.delete(t, k(5))
    x.abort()
    expect_all(store, t, {k(5): v(5)})
    with store.txn() as y:                                # no pending version is left
        y.put_many(t, [(k(i), v(i, 1)) for i in range(1000)])
    expect_all(store, t, {k(i): v(i, 1) for i in range(1000)})


def test_conflict_leaves_the_array_intact(store):
    t = store.table("t")
    a = store.txn()
    b = store.txn()
    a.put_many(t, [(k(i), v(i, 1)) for i in range(0, 100)])
    b.put(t, k(200), v(200, 2))
    with pytest.raises(velocore.ConflictError):
        b.put(t, k(50), v(50, 2))
    b.abort()
    a.put(t, k(150), v(150, 1))
    assert a.get(t, k(50)) == v(50, 1)
    a.commit()
    model = {k(i): v(i, 1) for i in range(100)}
    model[k(150)] = v(150, 1)
    expect_all(store, t, model)


def test_checkpoint_in_the_middle(store, tmp_path):
    """A checkpoint freezes the memtable holding the first half of the writes; the rest go
    to the new one, and the commit copies the first half forward."""
    t = store.table("t")
    model = {}
    with store.txn() as x:
        for i in range(2000):
            x.put(t, k(i), v(i, 1))
            model[k(i)] = v(i, 1)
            if i == 999:
                store.checkpoint()
        x.delete(t, k(2000))
        assert x.get(t, k(10)) == v(10, 1) and x.get(t, k(1500)) == v(1500, 1)
    expect_all(store, t, model)
    store.checkpoint()
    expect_all(store, t, model)
    store.close()
    with velocore.open(str(tmp_path / "s")) as again:
        expect_all(again, again.table("t"), model)


def test_two_tables_out_of_table_order(store):
    """The first write to a table records a check of its catalog entry (table 0, which
    sorts first): writing a second table after a first one goes out of order."""
    a = store.table("a")
    b = store.table("b")
    with store.txn() as x:
        x.put(b, k(1), v(1))
        x.put(a, k(2), v(2))
        x.put(b, k(3), v(3))
    expect_all(store, a, {k(2): v(2)})
    expect_all(store, b, {k(1): v(1), k(3): v(3)})


# ---------------------------------------------------------------- against a dict model

class WriteSetMachine(RuleBasedStateMachine):
    """One transaction at a time against a dict model, its writes biased to ascend (the
    next key after the last one written, the same key again) so that programs run long in
    the array form and then leave it (a write out of order, an iterator), with committed
    data underneath, checkpoints in the middle, aborts, and reopening."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="velocore-ws-")
        self.path = os.path.join(self.dir, "s")
        self.store = velocore.open(self.path, sync="normal")
        t = self.store.table("t")
        with self.store.txn() as x:              # data under the writes
            x.put_many(t, [(k(i), b"c%d" % i) for i in range(0, 400, 7)])
        self.committed = {k(i): b"c%d" % i for i in range(0, 400, 7)}
        self.txn = None
        self.writes = {}
        self.last = 0
        self.iters = []

    def teardown(self):
        self.iters = []
        if self.txn is not None:
            self.txn.abort()
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def view(self):
        got = dict(self.committed)
        for key, value in self.writes.items():
            if value is None:
                got.pop(key, None)
            else:
                got[key] = value
        return got

    def table(self):
        return self.store.table("t")

    def ensure_txn(self):
        if self.txn is None:
            self.txn = self.store.txn()
            self.writes = {}

    def write(self, i, value):
        self.ensure_txn()
        if value is None:
            self.txn.delete(self.table(), k(i))
        else:
            self.txn.put(self.table(), k(i), value)
        self.writes[k(i)] = value
        self.last = i

    @rule(step=st.integers(1, 40), value=st.binary(max_size=40))
    def put_next(self, step, value):
        self.write(self.last + step, value)

    @rule(value=st.binary(max_size=40))
    def put_same(self, value):
        self.write(self.last, value)

    @rule(step=st.integers(1, 40))
    def delete_next(self, step):
        self.write(self.last + step, None)

    @rule(i=st.integers(0, 400), value=st.binary(max_size=40))
    def put_anywhere(self, i, value):
        self.write(i, value)

    @rule(start=st.integers(0, 400), n=st.integers(1, 30), value=st.binary(max_size=8))
    def put_many(self, start, n, value):
        self.ensure_txn()
        items = [(k(i), value + b"%d" % i) for i in range(start, start + 2 * n, 2)]
        random.Random(start).shuffle(items)
        self.txn.put_many(self.table(), items)
        self.writes.update(items)
        self.last = start + 2 * n - 2

    @rule(i=st.integers(0, 400))
    def get(self, i):
        if self.txn is None:
            return
        assert self.txn.get(self.table(), k(i)) == self.view().get(k(i))

    @rule()
    def get_written(self):
        if self.txn is None or not self.writes:
            return
        ks = sorted(self.writes)
        view = self.view()
        assert self.txn.get_many(self.table(), ks) == [view.get(x) for x in ks]

    @rule(start=st.integers(0, 400))
    def open_iterator(self, start):
        if self.txn is None:
            return
        it = self.txn.range(self.table(), k(start))
        expect = sorted((x, y) for x, y in self.view().items() if x >= k(start))
        first = list(itertools.islice(it, 3))
        assert first == expect[:3]
        if len(first) == 3:                     # (else it ended, and stays ended)
            self.iters.append((it, first[-1][0], k(start)))

    @rule()
    def drain_iterators(self):
        # an iterator sees the transaction's writes as of each step it takes: what is
        # left of it is the view's keys after the last one it returned
        view = self.view()
        for it, after, _ in self.iters:
            rest = list(it)
            assert rest == sorted((x, y) for x, y in view.items() if x > after)
        self.iters = []

    @rule()
    def checkpoint(self):
        self.store.checkpoint()

    def expect_committed(self):
        with self.store.snapshot() as s:
            assert dict(s.range(self.table())) == self.committed

    @rule(commit=st.booleans())
    def end(self, commit):
        if self.txn is None:
            return
        self.iters = []
        if commit:
            self.txn.commit()
            self.committed = self.view()
        else:
            self.txn.abort()
        self.txn = None
        self.expect_committed()

    @rule()
    def reopen(self):
        if self.txn is not None:
            return
        self.store.close()
        self.store = velocore.open(self.path, sync="normal")
        self.expect_committed()


TestWriteSetMachine = WriteSetMachine.TestCase

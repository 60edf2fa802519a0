"""Range iteration by blocks of entry references.

An iterator's block points into the leaves it keeps pinned (and into memtable nodes);
values read from overflow pages, and whole entries of leaves the store's pin cap does
not let it pin, are copied aside.  These tests check what each path returns, and that
many open iterators cannot exhaust a small page cache with their pins.
"""
import random

import pytest

import velocore


def _value(i, big_every=0):
    if big_every and i % big_every == 0:
        return bytes([i % 251]) * (3000 + i % 700)       # overflow pages
    return b"v%07d" % i + bytes([i % 256]) * (i % 90)


def _fill(store, table, n, big_every=0):
    with store.txn() as t:
        t.put_many(table, [(b"k%07d" % i, _value(i, big_every)) for i in range(n)])
    store.checkpoint()


def test_many_open_iterators_on_a_small_cache(tmp_path):
    # 150 iterators each holding a block over a 1 MiB cache (256 frames): each cursor
    # pins its leaf, and without the store-wide cap on block pins their blocks would pin
    # several leaves more each and exhaust the cache
    n = 20000
    with velocore.open(str(tmp_path / "db"), sync="off", cache_mb=1) as store:
        table = store.table("t")
        _fill(store, table, n)
        rng = random.Random(3)
        with store.snapshot() as s:
            starts = [rng.randrange(n - 600) for _ in range(150)]
            its = [s.range(table, b"k%07d" % a) for a in starts]
            # three steps: the blocks grow (16, 32, 64 entries) and pin their leaves
            firsts = [[next(it) for _ in range(40)] for it in its]
            for a, got in zip(starts, firsts):
                assert got == [(b"k%07d" % i, _value(i)) for i in range(a, a + 40)]
            # interleave the iterators, so each refill runs while all others hold blocks
            for step in range(4):
                for a, it in zip(starts, its):
                    got = [next(it) for _ in range(100)]
                    lo = a + 40 + 100 * step
                    assert got == [(b"k%07d" % i, _value(i)) for i in range(lo, lo + 100)]
            del its


def test_overflow_values_across_blocks(tmp_path):
    n = 3000
    with velocore.open(str(tmp_path / "db"), sync="off", cache_mb=1) as store:
        table = store.table("t")
        _fill(store, table, n, big_every=7)
        want = [(b"k%07d" % i, _value(i, 7)) for i in range(n)]
        with store.snapshot() as s:
            assert list(s.range(table)) == want
            assert list(s.range(table, reverse=True)) == want[::-1]
            assert list(s.range(table, b"k0001000", b"k0002000")) == want[1000:2000]
            assert list(s.range(table, keys_only=True)) == [k for k, _ in want]


def test_blocks_merge_memtable_and_tree(tmp_path):
    # part of the range checkpointed, part only in the memtable, some keys deleted and
    # some overwritten after the checkpoint: the block mixes node and leaf references
    n = 5000
    with velocore.open(str(tmp_path / "db"), sync="off", cache_mb=1) as store:
        table = store.table("t")
        _fill(store, table, n, big_every=11)
        model = {b"k%07d" % i: _value(i, 11) for i in range(n)}
        rng = random.Random(5)
        with store.txn() as t:
            for i in rng.sample(range(n), 700):
                k = b"k%07d" % i
                if i % 3 == 0:
                    t.delete(table, k)
                    del model[k]
                else:
                    model[k] = b"new" * (i % 500)
                    t.put(table, k, model[k])
            for i in range(n, n + 300):
                model[b"k%07d" % i] = b"x%d" % i
                t.put(table, b"k%07d" % i, model[b"k%07d" % i])
        want = sorted(model.items())
        with store.snapshot() as s:
            assert list(s.range(table)) == want
            assert list(s.range(table, reverse=True)) == want[::-1]


def test_own_writes_during_iteration_over_pinned_blocks(tmp_path):
    # a write by the iterating transaction drops the block (its references may be
    # replaced) and resumes after the last key returned
    with velocore.open(str(tmp_path / "db"), sync="off", cache_mb=1) as store:
        table = store.table("t")
        _fill(store, table, 2000, big_every=13)
        with store.txn() as t:
            it = t.range(table)
            seen = [next(it) for _ in range(50)]
            t.put(table, b"k0000100", b"changed")
            t.delete(table, b"k0000101")
            t.put(table, b"k0000048x", b"inserted-behind")    # behind: not seen
            rest = list(it)
        keys = [k for k, _ in seen + rest]
        assert keys == sorted(set(keys))
        got = dict(seen + rest)
        assert got[b"k0000100"] == b"changed"
        assert b"k0000101" not in got
        assert b"k0000048x" not in got
        assert got[b"k0001999"] == _value(1999, 13)
        assert len(got) == 1999


@pytest.mark.parametrize("memory", [False, True])
def test_iterator_outlives_its_snapshot_cleanly(tmp_path, memory):
    path = None if memory else str(tmp_path / "db")
    store = velocore.open(path, sync="off", cache_mb=1)
    table = store.table("t")
    _fill(store, table, 3000)
    s = store.snapshot()
    it = s.range(table)
    assert next(it) == (b"k0000000", _value(0))
    s.abort()
    with pytest.raises(velocore.ClosedError):
        next(it)
    del it
    # the pins of the dropped block are gone: the whole cache is usable again
    with store.snapshot() as s2:
        assert sum(1 for _ in s2.range(table)) == 3000
    store.close()


def test_write_between_range_and_first_next_is_seen(tmp_path):
    # range() fetches its first block at once; a write before the first next() must
    # still show up (the block is fetched again from the bounds)
    with velocore.open(str(tmp_path / "db"), sync="off") as store:
        table = store.table("t")
        _fill(store, table, 100)
        with store.txn() as t:
            it = t.range(table, b"k0000010", b"k0000020")
            t.put(table, b"k0000010a", b"new")
            t.delete(table, b"k0000011")
            got = list(it)
            it2 = t.range(table, reverse=True)
            t.put(table, b"k0000099z", b"last")
            assert next(it2) == (b"k0000099z", b"last")
        keys = [k for k, _ in got]
        assert keys[:2] == [b"k0000010", b"k0000010a"]
        assert b"k0000011" not in keys
        assert len(keys) == 10


def test_resume_after_a_longest_key(tmp_path):
    # resuming after a key of the maximum length needs one byte more than a key
    long_keys = [bytes([65 + i]) * 1024 for i in range(6)]
    between = b"A" * 1023 + b"B"                 # after long_keys[0], before long_keys[1]
    with velocore.open(str(tmp_path / "db"), sync="off") as store:
        table = store.table("t")
        with store.txn() as t:
            for k in long_keys:
                t.put(table, k, b"v")
        store.checkpoint()
        with store.txn() as t:
            it = t.range(table, keys_only=True)
            first = next(it)
            t.put(table, between, b"w")
            rest = list(it)
        assert first == long_keys[0]
        assert rest == [between] + long_keys[1:]


def test_pairs_are_refilled_only_when_the_caller_dropped_them(tmp_path):
    """A range iterator hands back its last (key, value) tuple refilled when nothing but
    the iterator holds it; a pair the caller keeps is never changed, and the collector
    (which untracks tuples holding only bytes) keeps track of a refilled one."""
    import gc
    import sys
    n = 3000
    with velocore.open(str(tmp_path / "db"), sync="off") as store:
        table = store.table("t")
        _fill(store, table, n)
        with store.txn() as t:                       # memtable entries among tree ones
            t.put_many(table, [(b"k%07d" % i, b"m%d" % i) for i in range(0, n, 7)])
        want = [(b"k%07d" % i, b"m%d" % i if i % 7 == 0 else _value(i)) for i in range(n)]
        with store.snapshot() as s:
            kept = list(s.range(table))              # every pair held: all distinct
            assert kept == want
            assert len({id(p) for p in kept}) == n
            assert dict(s.range(table)) == dict(want)
            assert [k + v for k, v in s.range(table)] == [k + v for k, v in want]
            it = s.range(table)
            first = next(it)
            second = next(it)                        # `first` is still held
            assert (first, second) == (want[0], want[1])
            del second
            got = []
            ids = set()
            while True:
                pair = next(it, None)
                if pair is None:
                    break
                # this name, the call's argument, and the iterator's own reference
                assert sys.getrefcount(pair) == 3
                assert gc.is_tracked(pair)
                ids.add(id(pair))
                got.append((pair[0], pair[1]))
                del pair                             # the next call may refill it
                if len(got) % 500 == 0:
                    gc.collect()                     # untracks the tuple it holds
            assert got == want[2:]
            assert first == want[0]
            # one tuple, refilled: a new one would be made while the iterator still held
            # the old one, so two in a row could not share an address
            assert len(ids) == 1
            # an exhausted iterator (still alive here) lets go of the last pair
            last = None
            tail = s.range(table, b"k%07d" % (n - 5))
            for last in tail:
                pass
            assert last == want[-1]
            assert sys.getrefcount(last) == 2        # this name and the call's argument


def test_pairs_held_until_the_next_one_are_refilled_two_steps_later(tmp_path):
    """A loop that holds each pair until it has the next (`for pair in it`, a generator
    expression) gets the pair before the last refilled, so the scan alternates between
    two tuples; a caller that holds the last two or more never sees one of them change."""
    n = 2000
    with velocore.open(str(tmp_path / "db"), sync="off") as store:
        table = store.table("t")
        _fill(store, table, n)
        want = [(b"k%07d" % i, _value(i)) for i in range(n)]
        with store.snapshot() as s:
            got = []
            ids = set()
            for pair in s.range(table):              # `pair` holds one until the next
                ids.add(id(pair))
                got.append((pair[0], pair[1]))
            assert got == want
            assert len(ids) == 2
            assert sum(1 for _ in s.range(table)) == n
            # a window of the last three pairs: each must still read as it was made
            window = []
            for i, pair in enumerate(s.range(table)):
                window.append(pair)
                del pair
                if len(window) > 3:
                    window.pop(0)
                assert window == want[max(0, i - len(window) + 1):i + 1]
            # held two steps, then dropped: refilled with the misses counted, not stopped
            it = s.range(table)
            a, b = next(it), next(it)
            rest = []
            for pair in it:
                assert (a, b) == (want[len(rest)], want[len(rest) + 1])
                a, b = b, pair
                rest.append(pair)
                rest[-1] = (pair[0], pair[1])        # a copy; the list keeps no pair
            assert rest == want[2:]

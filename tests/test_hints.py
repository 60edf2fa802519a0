"""Search hints: a page loaded into the cache gets a block of key heads that narrows each
binary search to a slot or two.  A hinted search must give exactly the plain search's
answer for every key and every page shape (shared prefixes longer than the hint block
keeps, keys shorter than a head, zero bytes, equal heads, sampled heads on crowded pages),
and a page with a damaged slot must still be reported, never searched wrongly."""
import bisect
import os
import random
import struct

import pytest
from hypothesis import given, strategies as st

import velocore
from velocore._store import _page_search
from _helpers import crc32c

PAGE = 4096
LEAF, BRANCH = 0x4C, 0x42


# ---------------------------------------------------------------- page images

def page_keys(page):
    """The keys (table id + user key) of a leaf or branch page, in slot order."""
    kind, count = page[4], struct.unpack_from("<H", page, 6)[0]
    keys = []
    for i in range(count):
        off = struct.unpack_from("<H", page, 16 + 2 * i)[0]
        klen = struct.unpack_from("<H", page, off)[0]
        if kind == LEAF:
            head = 12 if struct.unpack_from("<H", page, off + 2)[0] & 1 else 8
        else:
            head = 6
        keys.append(bytes(page[off + head:off + head + klen]))
    return keys


def tree_pages(path):
    """(page id, page bytes) of every leaf and branch page in a store's data file."""
    with open(os.path.join(path, "data.vc"), "rb") as f:
        data = f.read()
    out = []
    for pid in range(2, len(data) // PAGE):
        page = data[pid * PAGE:(pid + 1) * PAGE]
        if page[4] in (LEAF, BRANCH) and struct.unpack_from("<I", page, 0)[0] == crc32c(page[4:]):
            out.append((pid, page))
    return out


def neighbours(key):
    """Keys right around key: below, above, prefixes, extensions, zero-padded."""
    out = [key, key + b"\0", key + b"\xff", key[:-1], key + b"\0\0\0\0\0"]
    if key[-1] > 0:
        out.append(key[:-1] + bytes([key[-1] - 1]))
        out.append(key[:-1] + bytes([key[-1] - 1]) + b"\xff" * 6)
    if key[-1] < 255:
        out.append(key[:-1] + bytes([key[-1] + 1]))
    for cut in (1, 3, 4, 5, 7, 8, 9, 63, 64, 65, 66, 67, 68, 69):
        if 0 < cut < len(key):
            out.append(key[:cut])
            out.append(key[:cut] + b"\0")
    return [k for k in out if 1 <= len(k) <= 1028]


# ---------------------------------------------------------------- key shapes

def keys_long_prefix(rnd, n, plen):
    prefix = bytes(rnd.randrange(256) for _ in range(plen))
    return {prefix + rnd.randbytes(rnd.randint(0, 5)) for _ in range(n)} - {b""}


def keys_shape(shape, rnd):
    if shape == "sequential":
        return {b"user:%012d" % i for i in range(0, 40000, 3)}
    if shape == "short":
        return {bytes([a]) for a in range(256)} | {bytes([a, b]) for a in range(0, 256, 3)
                                                  for b in range(0, 256, 5)}
    if shape == "zeros":
        return ({b"\0" * i for i in range(1, 300)} | {b"a" + b"\0" * i for i in range(300)}
                | {b"a\0\0\0" + bytes([i]) for i in range(256)} | {b"\0\0\0\0\0\1" * i for i in range(1, 60)})
    if shape == "equal_heads":
        # pages across a group boundary: the prefix ends at the group byte, and within a
        # group every key has the same four bytes after it
        return {b"K" + bytes([rnd.randrange(3)]) + b"HEA" + rnd.randbytes(rnd.randint(0, 6))
                for _ in range(5000)}
    if shape.startswith("prefix"):
        return keys_long_prefix(rnd, 3000, int(shape[6:]))
    if shape == "maxlen":
        return ({bytes([rnd.randrange(256)]) * 1020 + rnd.randbytes(4) for _ in range(300)}
                | {rnd.randbytes(1024) for _ in range(300)})
    if shape == "mixed":
        keys = set()
        while len(keys) < 6000:
            kind = rnd.randrange(6)
            if kind == 0:
                keys.add(rnd.randbytes(rnd.randint(1, 24)))
            elif kind == 1:
                keys.add(b"P" * rnd.choice([7, 8, 59, 60, 61, 64, 65, 100]) + rnd.randbytes(rnd.randint(0, 3)))
            elif kind == 2:
                keys.add(b"\0" * rnd.randint(1, 20))
            elif kind == 3:
                keys.add(bytes([rnd.randrange(256)]) * 1024)
            elif kind == 4:
                keys.add(b"ab" + b"\0" * rnd.randint(0, 12))
            else:
                keys.add(bytes([rnd.randrange(256)]))
        return keys
    raise ValueError(shape)


SHAPES = ["sequential", "short", "zeros", "equal_heads", "prefix0", "prefix55", "prefix59",
          "prefix60", "prefix61", "prefix70", "maxlen", "mixed"]


def build(path, keys, value_of, cache_mb=0.05):
    store = velocore.open(path, sync="off", cache_mb=cache_mb)
    table = store.table("t")
    with store.txn() as t:
        t.put_many(table, {k: value_of(k) for k in keys})
    store.checkpoint()
    return store, table


# ---------------------------------------------------------------- hinted == plain, page by page

@pytest.mark.parametrize("shape", SHAPES)
def test_hinted_page_search_matches_plain(tmp_path, shape):
    rnd = random.Random(shape)
    keys = keys_shape(shape, rnd)
    # empty values crowd the leaves (sampled heads), others give a few entries per page
    store, _ = build(str(tmp_path / "db"), keys, lambda k: b"" if len(k) % 3 else b"v" * (len(k) % 40))
    store.close()
    pages = tree_pages(str(tmp_path / "db"))
    all_keys = sorted({k for _, page in pages for k in page_keys(page)})
    hinted = sampled = 0
    for pid, page in pages:
        keys_here = page_keys(page)
        probes = set()
        for k in keys_here:
            probes.update(neighbours(k))
        probes.update(rnd.choice(all_keys) for _ in range(50))
        probes.update([b"\0", b"\0\0\0\0", b"\0\0\0\1", b"\0\0\0\2", b"\xff" * 9])
        modes = (0,) if page[4] == LEAF else (1, 2)
        for probe in probes:
            for mode in modes:
                plain = _page_search(page, probe, mode, False)
                got = _page_search(page, probe, mode, True)
                assert got[:2] == plain[:2], (shape, pid, mode, probe, plain, got)
                if mode == 0:
                    assert plain[0] == bisect.bisect_left(keys_here, probe)
                    assert plain[1] == (probe in keys_here)
                elif mode == 1:
                    assert plain[0] == bisect.bisect_right(keys_here, probe)
                else:
                    assert plain[0] == bisect.bisect_left(keys_here, probe)
        nheads = _page_search(page, keys_here[0], modes[0], True)[2]
        hinted += nheads > 0
        sampled += 0 < nheads < len(keys_here)
    assert pages
    if shape not in ("zeros", "maxlen", "prefix60", "prefix61", "prefix70"):
        # pages whose keys share at most 64 bytes (table id included) have hints
        assert hinted >= len(pages) // 2, (shape, hinted, len(pages))
    elif shape in ("zeros", "maxlen"):
        assert hinted > 0, shape
    if shape in ("short", "sequential"):
        assert sampled > 0, "crowded pages should get sampled heads"


@pytest.mark.parametrize("shape", ["sequential", "short", "prefix59", "maxlen", "mixed"])
def test_leaf_search_from_a_start_matches_plain(tmp_path, shape):
    """A batch lookup searches a leaf from where the one before it in that leaf ended:
    from any start at or before the key's place it finds what a whole-page search finds,
    and from a start past it (or past the page's entries) it declines."""
    rnd = random.Random("from" + shape)
    keys = keys_shape(shape, rnd)
    store, _ = build(str(tmp_path / "db"), keys, lambda k: b"" if len(k) % 3 else b"v" * (len(k) % 40))
    store.close()
    leaves = [page for _, page in tree_pages(str(tmp_path / "db")) if page[4] == LEAF]
    checked = declined = far = 0
    for page in leaves[:40]:
        keys_here = page_keys(page)
        count = len(keys_here)
        probes = set(rnd.sample(keys_here, min(len(keys_here), 12)))
        for k in list(probes):
            probes.update(rnd.sample(neighbours(k), 3))
        probes.update([b"\0", b"\xff" * 9])
        for probe in probes:
            lb = bisect.bisect_left(keys_here, probe)
            starts = {0, 1, count, count + 1, rnd.randrange(count + 2)}
            starts.update(range(max(0, lb - 6), min(count, lb + 2) + 1))
            starts.update(lb - (1 << i) for i in range(12) if lb >= (1 << i))
            for start in starts:
                got = _page_search(page, probe, 3, False, start=start)
                if start > count or (start > 0 and keys_here[start - 1] >= probe):
                    assert got is None, (shape, probe, start, lb, got)
                    declined += 1
                else:
                    assert got is not None and got[:2] == (lb, probe in keys_here), \
                        (shape, probe, start, lb, got)
                    checked += 1
                    far += lb - start >= 8
    assert leaves and checked > 100 and declined > 50, (checked, declined, far)
    if shape != "maxlen":            # three keys to a leaf there
        assert far > 50, (checked, declined, far)


def test_pages_without_hints():
    page = bytearray(PAGE)
    page[4] = 0x4F                       # an overflow page is no search's business
    with pytest.raises(velocore.CorruptionError):
        _page_search(bytes(page), b"\0\0\0\1k", 0, True)
    page[4] = LEAF                       # empty: nothing to hint
    assert _page_search(bytes(page), b"\0\0\0\1k", 0, True) == (0, False, 0)
    page[4] = BRANCH
    struct.pack_into("<H", page, 6, 3000)  # a count whose slots would overrun the page
    with pytest.raises(velocore.CorruptionError):
        _page_search(bytes(page), b"\0\0\0\1k", 1, True)
    # one key of 70 bytes shared by first and last: longer than the 64 a block keeps
    keys = [b"L" * 70, b"L" * 70 + b"\0", b"L" * 70 + b"\1"]
    assert _page_search(bytes(leaf_page(keys)), keys[1], 0, True) == (1, True, 0)
    keys = [b"L" * 64, b"L" * 64 + b"\0", b"L" * 64 + b"\1"]
    assert _page_search(bytes(leaf_page(keys)), keys[1], 0, True) == (1, True, 3)


def leaf_page(keys):
    """A leaf holding keys (sorted) with empty values, packed like a checkpoint packs it."""
    page = bytearray(PAGE)
    page[4] = LEAF
    struct.pack_into("<H", page, 6, len(keys))
    off = PAGE
    for i, k in enumerate(keys):
        entry = struct.pack("<HHI", len(k), 0, 0) + k
        off -= len(entry)
        page[off:off + len(entry)] = entry
        struct.pack_into("<H", page, 16 + 2 * i, off)
    assert off >= 16 + 2 * len(keys)
    return page


SUFFIX = st.one_of(st.binary(min_size=1, max_size=12),
                   st.tuples(st.sampled_from([b"", b"\0", b"\1"]), st.binary(max_size=5))
                   .map(lambda t: t[0] + b"SAME" + t[1]))


@given(st.lists(SUFFIX, min_size=1, max_size=200, unique=True),
       st.binary(max_size=70), st.lists(st.binary(min_size=0, max_size=14), max_size=30))
def test_hinted_search_of_synthetic_leaf(suffixes, prefix, extra):
    """Leaves of keys sharing any prefix, heads equal or not, every count up to ~200 (heads
    sampled past 62): every probe gets the plain search's answer."""
    keys = sorted({prefix + s for s in suffixes if 1 <= len(prefix + s) <= 1028})
    page = bytes(leaf_page(keys))
    probes = set(extra) | {prefix + e for e in extra}
    for k in keys:
        probes.update(neighbours(k))
    for probe in probes:
        if not 1 <= len(probe) <= 1028:
            continue
        plain = _page_search(page, probe, 0, False)
        got = _page_search(page, probe, 0, True)
        assert got[:2] == plain[:2] == (bisect.bisect_left(keys, probe), probe in keys), probe
    cp = len(os.path.commonprefix([keys[0], keys[-1]]))
    nheads = _page_search(page, keys[0], 0, True)[2]
    assert (nheads > 0) == (cp <= 64)


# ---------------------------------------------------------------- the store, against a dict

def key_strategy():
    prefix = st.sampled_from([b"", b"p", b"x" * 7, b"y" * 60, b"z" * 61, b"w" * 200,
                              b"\0\0\0", b"ab\0\0"])
    tail = st.one_of(st.binary(min_size=0, max_size=6),
                     st.binary(min_size=0, max_size=3).map(lambda b: b + b"\0" * 5),
                     st.just(b"HEAD").flatmap(lambda h: st.binary(max_size=4).map(lambda b: h + b)))
    longest = st.binary(min_size=1, max_size=2).map(lambda b: (b * 1024)[:1024])
    return st.one_of(st.tuples(prefix, tail).map(lambda t: t[0] + t[1]), longest,
                     st.binary(min_size=1, max_size=2)).filter(lambda k: 1 <= len(k) <= 1024)


def check_reads(s, table, model, ordered, probes, ranges, width):
    """Every probe read by get and get_many, and the first `ranges` probes as the start
    (and the stop, reversed) of a range of `width` keys, against the model."""
    for p in probes:
        assert s.get(table, p) == model.get(p), p
    assert s.get_many(table, probes) == [model.get(p) for p in probes]
    for p in probes[:ranges]:
        i = bisect.bisect_left(ordered, p)
        got = [k for k, _ in zip(s.range(table, p, keys_only=True), range(width))]
        assert got == ordered[i:i + width], p
        got = [k for k, _ in zip(s.range(table, stop=p, reverse=True, keys_only=True), range(width))]
        assert got == ordered[max(0, i - width):i][::-1], p


@given(st.lists(key_strategy(), min_size=1, max_size=400, unique=True),
       st.lists(key_strategy(), max_size=20), st.integers(0, 2 ** 32))
def test_store_reads_match_model(tmp_path_factory, keys, absent, seed):
    """Built, checkpointed and reopened with a 64-frame cache (pages evicted and loaded
    again, hints rebuilt each time): get, get_many and ranges from any start, forward and
    reverse, return exactly what a dict says."""
    rnd = random.Random(seed)
    model = {k: (b"%d" % i) * rnd.choice([0, 1, 5, 30, 400]) for i, k in enumerate(keys)}
    path = str(tmp_path_factory.mktemp("db"))
    store, table = build(path, model, model.__getitem__)
    store.close()
    store = velocore.open(path, sync="off", cache_mb=0.05)
    try:
        table = store.table("t")
        ordered = sorted(model)
        probes = set(absent)
        for k in rnd.sample(ordered, min(len(ordered), 40)):
            probes.update(neighbours(k))
        probes = sorted(p for p in probes if 1 <= len(p) <= 1024)
        with store.snapshot() as s:
            check_reads(s, table, model, ordered, probes, ranges=40, width=3)
            assert s.get_many(table, ordered) == [model[k] for k in ordered]
        assert list(table.range(keys_only=True)) == ordered
    finally:
        store.close()


def test_store_reads_with_eviction(tmp_path):
    """Enough data that a 64-frame cache evicts pages all the time, in every key shape."""
    rnd = random.Random(5)
    keys = set()
    for shape in ("zeros", "equal_heads", "prefix59", "prefix61", "mixed"):
        keys |= keys_shape(shape, rnd)
    model = {k: rnd.randbytes(rnd.choice([0, 10, 100])) for k in keys}
    path = str(tmp_path / "db")
    store, table = build(path, model, model.__getitem__)
    try:
        ordered = sorted(model)
        probes = set()
        for k in rnd.sample(ordered, 1500):
            probes.update(neighbours(k))
        probes = sorted(p for p in probes if len(p) <= 1024)
        rnd.shuffle(probes)
        with store.snapshot() as s:
            check_reads(s, table, model, ordered, probes, ranges=300, width=2)
        info = store.info()
        assert info["cache_misses"] > 3 * 64, info
    finally:
        store.close()


# ---------------------------------------------------------------- damaged slots

def rewrite_page(path, pid, page):
    page = bytearray(page)
    struct.pack_into("<I", page, 0, crc32c(page[4:]))
    with open(os.path.join(path, "data.vc"), "r+b") as f:
        f.seek(pid * PAGE)
        f.write(page)


@pytest.mark.parametrize("bad", ["offset_low", "offset_high", "klen_zero", "klen_past_end"])
def test_damaged_slot_with_valid_checksum(tmp_path, bad):
    """A leaf whose checksum is right but one slot is not: the page gets no hints, lookups
    that meet the slot raise CorruptionError, the others return the right values."""
    path = str(tmp_path / "db")
    model = {b"key%05d" % i: b"value%d" % i for i in range(3000)}
    store, _ = build(path, model, model.__getitem__)
    store.close()
    # a leaf of the table alone (not the first, which also holds the catalog)
    pid, page = next((pid, p) for pid, p in tree_pages(path)
                     if p[4] == LEAF and struct.unpack_from("<H", p, 6)[0] > 20
                     and page_keys(p)[0][:4] != b"\0\0\0\0")
    keys_here = page_keys(page)
    count = len(keys_here)
    page = bytearray(page)
    victim = count // 2
    off = struct.unpack_from("<H", page, 16 + 2 * victim)[0]
    if bad == "offset_low":
        struct.pack_into("<H", page, 16 + 2 * victim, 16)
    elif bad == "offset_high":
        struct.pack_into("<H", page, 16 + 2 * victim, PAGE - 4)
    elif bad == "klen_zero":
        struct.pack_into("<H", page, off, 0)
    else:
        struct.pack_into("<H", page, off, PAGE)
    rewrite_page(path, pid, page)
    for k in keys_here:
        outcomes = []
        for hinted in (False, True):
            try:
                outcomes.append(_page_search(bytes(page), k, 0, hinted))
            except velocore.CorruptionError:
                outcomes.append("corrupt")
        assert outcomes[0] == outcomes[1], k
        assert outcomes[0] == "corrupt" or outcomes[0][2] == 0
    store = velocore.open(path, sync="off", cache_mb=0.05)
    try:
        table = store.table("t")
        raised = 0
        for k in keys_here:
            user_key = k[4:]
            try:
                got = table.get(user_key)
            except velocore.CorruptionError as e:
                assert "data.vc" in str(e) and "page %d" % pid in str(e)
                raised += 1
                continue
            assert got == model[user_key]
        assert raised > 0                  # the middle slot is every search's first probe
        assert store.check()["ok"] is False
    finally:
        store.close()


def torn_blocks(rnd, count):
    """Hint blocks an unpinned reader may meet: random bytes, extreme fields, and
    plausible fields that do not belong to the page."""
    def block(nheads, step, cnt, cp, hoff, words):
        return struct.pack("<HHHBB", nheads, step, cnt, cp, hoff) + struct.pack("<62I", *words)
    out = [rnd.randbytes(256) for _ in range(20)]
    out.append(block(0xFFFF, 0xFFFF, 0xFFFF, 0xFF, 0xFF, [0xFFFFFFFF] * 62))
    out.append(block(0xFFFF, 0, 0xFFFF, 0, 0, [0] * 62))
    out.append(block(62, 0xFFFF, 0xFFFF, 64, 0, sorted(rnd.getrandbits(32) for _ in range(62))))
    for _ in range(30):
        out.append(block(rnd.randrange(70), rnd.randrange(300), rnd.choice([count, rnd.randrange(2000)]),
                         rnd.randrange(80), rnd.randrange(70),
                         sorted(rnd.getrandbits(32) for _ in range(62))))
    return out


@pytest.mark.parametrize("shape", ["sequential", "mixed", "prefix59", "short"])
def test_torn_hint_blocks_stay_inside_the_page(tmp_path, shape):
    """A lookup that reads a cached page without pinning it may see the frame's hint
    block while it is rewritten for another page.  Whatever the block holds, the search
    must read only the page and the block (the AddressSanitizer build checks that), end,
    and give a position inside the page or CorruptionError; the lookup then finds the
    frame changed and descends again with pins.  The block passed is the one searched
    with: an empty one gives the plain answer, one whose only head is above every key
    puts every key before the first slot."""
    rnd = random.Random(shape)
    store, _ = build(str(tmp_path / "db"), keys_shape(shape, rnd), lambda k: b"v" * (len(k) % 30))
    store.close()
    pages = tree_pages(str(tmp_path / "db"))
    assert pages
    for pid, page in pages[:40]:
        keys_here = page_keys(page)
        modes = (0,) if page[4] == LEAF else (1, 2)
        probes = [keys_here[0], keys_here[-1], rnd.choice(keys_here), b"\0", b"\xff" * 9,
                  keys_here[len(keys_here) // 2] + b"\0"]
        for hints in torn_blocks(rnd, len(keys_here)):
            for probe in probes:
                for mode in modes:
                    try:
                        pos, _, _ = _page_search(page, probe, mode, True, hints)
                    except velocore.CorruptionError:
                        continue
                    assert 0 <= pos <= len(keys_here)
        for probe in probes:
            for mode in modes:
                assert (_page_search(page, probe, mode, True, bytes(256))[:2]
                        == _page_search(page, probe, mode, False)[:2])
        high = struct.pack("<HHHBB", 1, 1, len(keys_here), 0, 0) + struct.pack("<62I", *[0xFFFFFFFF] * 62)
        assert _page_search(page, keys_here[-1], modes[0], True, high)[0] == 0

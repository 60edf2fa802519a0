"""A list-append history checker for snapshot isolation.

The design follows the idea of Jepsen's Elle (Kingsbury & Alvaro, "Elle: Inferring
Isolation Anomalies from Experimental Observations"): every write appends a unique
element to a per-key list, so a read of a key reveals the whole version history that
preceded it. From a recorded history this module

  1. recovers the version order of every key (the final, or longest, list) and checks
     that every observed list is a prefix of it ("incompatible-order" otherwise);
  2. checks the data itself: every committed append is in the final list exactly once
     ("lost-append" / "duplicate-append"), no element of an aborted transaction is ever
     read (G1a), no element comes from nowhere ("garbage-read"), no read ends on a
     non-final append of another transaction (G1b), a transaction sees its own earlier
     appends and reads the same thing twice ("internal");
  3. builds the dependency graph over the committed transactions with ww, wr and rw
     edges (Adya) and searches it for cycles: G0 (ww only), G1c (ww/wr, at least one
     wr), G-single (exactly one rw edge, the rest ww/wr). All are forbidden under
     snapshot isolation. Cycles with two or more rw edges (G2, write skew) are allowed
     under snapshot isolation and are only counted, never reported;
  4. optionally (when transactions carry `begin`/`end` positions from one global
     counter) checks that a transaction that began after another one's commit() had
     returned sees that commit ("stale-read").

The history is a list of `Txn`. A `Txn` has an `ops` list of
    ("r", key, list_or_None)     a read of the whole list of key (None: key absent)
    ("append", key, element)     append element (unique over the whole history)
and `ok` (True: committed, False: aborted). Keys are any hashables, elements any
hashables (ints in practice).

Cycle search is linear in the size of the graph (iterative Tarjan SCC) except for
G-single, which does one pruned search per rw edge: the search from v back to u only
visits nodes whose position in a topological order of the ww/wr graph lies between
v's and u's (a topological order chosen close to the history order, so the window is
about the number of transactions that were concurrent with u).
"""
import heapq
from collections import Counter, defaultdict, deque

WW, WR, RW = 1, 2, 4
EDGE_NAMES = {WW: "ww", WR: "wr", RW: "rw"}

# Anomalies forbidden under snapshot isolation (all of them are reported).
ANOMALY_TYPES = (
    "G0", "G1a", "G1b", "G1c", "G-single", "incompatible-order", "lost-append",
    "duplicate-append", "garbage-read", "internal", "stale-read", "duplicate-element",
)


class Txn:
    __slots__ = ("id", "ops", "ok", "process", "begin", "end")

    def __init__(self, id, ops, ok=True, process=None, begin=None, end=None):
        self.id = id
        self.ops = ops
        self.ok = ok
        self.process = process
        self.begin = begin
        self.end = end

    def __repr__(self):
        status = "ok" if self.ok else "aborted"
        return f"T{self.id}[{status} p={self.process} {self.ops!r}]"


class Result:
    def __init__(self, anomalies, counts, stats):
        self.anomalies = anomalies      # type -> list of examples (at most `limit`)
        self.counts = counts            # type -> number found
        self.stats = stats              # sizes of the history and graph

    @property
    def valid(self):
        return not self.counts

    def types(self):
        return set(self.counts)

    def describe(self, max_per_type=3):
        if self.valid:
            return "valid: " + repr(self.stats)
        lines = ["INVALID history: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.counts.items())),
                 "stats: " + repr(self.stats)]
        for kind in sorted(self.anomalies):
            for ex in self.anomalies[kind][:max_per_type]:
                lines.append(f"  {kind}: {ex}")
        return "\n".join(lines)


def _tarjan(n, succ):
    """Iterative Tarjan SCC. Returns comp[] with components numbered in reverse
    topological order (an edge u->v between components has comp[u] > comp[v])."""
    index = [-1] * n
    low = [0] * n
    onstack = [False] * n
    comp = [-1] * n
    stack = []
    counter = 0
    ncomp = 0
    for root in range(n):
        if index[root] != -1:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        onstack[root] = True
        work = [(root, iter(succ[root]))]
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if index[w] == -1:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    onstack[w] = True
                    work.append((w, iter(succ[w])))
                    advanced = True
                    break
                if onstack[w] and index[w] < low[v]:
                    low[v] = index[w]
            if advanced:
                continue
            work.pop()
            if work:
                u = work[-1][0]
                if low[v] < low[u]:
                    low[u] = low[v]
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    onstack[w] = False
                    comp[w] = ncomp
                    if w == v:
                        break
                ncomp += 1
    return comp, ncomp


def _path(src, dst, succ, allowed):
    """Shortest path src -> ... -> dst following succ, visiting only nodes for which
    allowed(node) is true (src and dst are always allowed). None if there is none."""
    if src == dst:
        return [src]
    parent = {src: None}
    queue = deque([src])
    while queue:
        x = queue.popleft()
        for y in succ[x]:
            if y in parent:
                continue
            if y != dst and not allowed(y):
                continue
            parent[y] = x
            if y == dst:
                out = [y]
                while parent[out[-1]] is not None:
                    out.append(parent[out[-1]])
                out.reverse()
                return out
            queue.append(y)
    return None


def _decode(value):
    return () if value is None else tuple(value)


def check(history, final=None, limit=5):
    """Check a list-append history for snapshot isolation.

    final: optional {key: list} read in a fresh snapshot after every transaction ended.
    When given it is the version order of each key and the lost/duplicate-append checks
    run against it; otherwise the longest observed list is the version order (and those
    two checks are skipped). Returns a `Result`.
    """
    anomalies = defaultdict(list)
    counts = Counter()

    def report(kind, **info):
        counts[kind] += 1
        if len(anomalies[kind]) < limit:
            anomalies[kind].append(info)

    committed = [t for t in history if t.ok]
    node = {}                                   # txn id -> node number
    for i, t in enumerate(committed):
        node[t.id] = i
    n = len(committed)

    # ---- who wrote what --------------------------------------------------------------
    writer = {}              # element -> (node, key) of a committed append
    aborted_writer = {}      # element -> (txn id, key) of an aborted append
    appends_of = {}          # (node, key) -> [elements in append order]
    for t in history:
        for op in t.ops:
            if op[0] != "append":
                continue
            _, k, e = op
            if e in writer or e in aborted_writer:
                report("duplicate-element", element=e, txn=t.id,
                       note="the workload appended the same element twice")
                continue
            if t.ok:
                i = node[t.id]
                writer[e] = (i, k)
                appends_of.setdefault((i, k), []).append(e)
            else:
                aborted_writer[e] = (t.id, k)
    aborted_elems = set(aborted_writer)
    elems_of_key = defaultdict(set)
    for e, (_i, k) in writer.items():
        elems_of_key[k].add(e)

    # ---- internal consistency; collect observed lists and external reads ------------
    observed = defaultdict(list)    # key -> [(node, list)] every committed read
    ext_reads = []                  # (node, key, base): first read of key, own appends stripped
    for i, t in enumerate(committed):
        own = {}        # key -> own appends so far
        seen = {}       # key -> what this txn must read next (after a first read)
        for op in t.ops:
            f, k, v = op
            if f == "append":
                own.setdefault(k, []).append(v)
                if k in seen:
                    seen[k] = seen[k] + (v,)
                continue
            v = _decode(v)
            observed[k].append((i, v))
            mine = tuple(own.get(k, ()))
            if k in seen:
                if v != seen[k]:
                    report("internal", txn=t.id, key=k, expected=list(seen[k]), read=list(v),
                           note="a later read of the key in the same transaction differs "
                                "from the earlier read plus the transaction's own appends")
            else:
                if mine and v[len(v) - len(mine):] != mine:
                    report("internal", txn=t.id, key=k, own_appends=list(mine), read=list(v),
                           note="read does not end with the transaction's own earlier appends "
                                "(read-your-writes)")
                    base = v
                else:
                    base = v[:len(v) - len(mine)]
                ext_reads.append((i, k, base))
            seen[k] = v

    # ---- data checks on every read -----------------------------------------------------
    for k, reads in observed.items():
        known = elems_of_key.get(k, set())
        for i, v in reads:
            vs = set(v)
            if len(vs) != len(v):
                dup = [e for e, c in Counter(v).items() if c > 1]
                report("duplicate-append", key=k, txn=committed[i].id, elements=dup[:10],
                       where="read")
            if not aborted_elems.isdisjoint(vs):
                bad = sorted(vs & aborted_elems, key=repr)
                report("G1a", key=k, reader=committed[i].id, elements=bad[:10],
                       writers=sorted({aborted_writer[e][0] for e in bad}))
            if not known.issuperset(vs):
                odd = [e for e in v if e not in known and e not in aborted_elems]
                if odd:
                    report("garbage-read", key=k, reader=committed[i].id, elements=odd[:10],
                           note="elements never appended to this key by any transaction")

    # ---- version orders ------------------------------------------------------------------
    orders = {}
    for k in set(observed) | set(final or ()) | set(elems_of_key):
        if final is not None and k in final:
            orders[k] = _decode(final[k])
        else:
            longest = ()
            for _i, v in observed.get(k, ()):
                if len(v) > len(longest):
                    longest = v
            orders[k] = longest
    for k, reads in observed.items():
        order = orders[k]
        for i, v in reads:
            if order[:len(v)] != v:
                report("incompatible-order", key=k, reader=committed[i].id, read=list(v),
                       version_order=list(order[:len(v) + 3]),
                       note="a read that is not a prefix of the key's version order")

    if final is not None:
        for k, order in orders.items():
            if k not in final:
                continue
            c = Counter(order)
            dups = [e for e, m in c.items() if m > 1]
            if dups:
                report("duplicate-append", key=k, elements=dups[:10], where="final state")
            if not aborted_elems.isdisjoint(c):
                bad = [e for e in c if e in aborted_elems]
                report("G1a", key=k, reader="final state", elements=bad[:10],
                       writers=sorted({aborted_writer[e][0] for e in bad}))
            odd = [e for e in c if writer.get(e, (None, k))[1] != k and e not in aborted_elems]
            if odd:
                report("garbage-read", key=k, reader="final state", elements=odd[:10])
        final_sets = {k: set(orders[k]) for k in final}
        for e, (i, k) in writer.items():
            if k in final_sets and e not in final_sets[k]:
                report("lost-append", key=k, element=e, writer=committed[i].id,
                       note="a committed append missing from the final state")

    # ---- G1b: a read ending on another transaction's non-final append ----------------
    for i, k, base in ext_reads:
        if not base:
            continue
        w = writer.get(base[-1])
        if w is None or w[0] == i:
            continue
        mine = appends_of[(w[0], k)] if w[1] == k else None
        if mine and len(mine) > 1 and mine[-1] != base[-1]:
            report("G1b", key=k, reader=committed[i].id, writer=committed[w[0]].id,
                   read_ends_with=base[-1], writer_appends=mine,
                   note="read an intermediate state of another transaction")

    # ---- dependency graph -------------------------------------------------------------
    edges = [dict() for _ in range(n)]          # u -> {v: bitmask}

    def add(u, v, kind):
        if u != v:
            d = edges[u]
            d[v] = d.get(v, 0) | kind

    for k, order in orders.items():
        prev = None
        for e in order:
            w = writer.get(e)
            cur = w[0] if w is not None and w[1] == k else None
            if prev is not None and cur is not None:
                add(prev, cur, WW)
            if cur is not None:
                prev = cur
    for i, k, base in ext_reads:
        order = orders.get(k, ())
        if base:
            w = writer.get(base[-1])
            if w is not None and w[1] == k:
                add(w[0], i, WR)
        nb = len(base)
        if nb < len(order) and order[:nb] == base:
            w = writer.get(order[nb])
            if w is not None and w[1] == k:
                add(i, w[0], RW)

    stats = {"txns": len(history), "committed": n, "aborted": len(history) - n,
             "keys": len(orders), "appends_committed": len(writer),
             "appends_aborted": len(aborted_writer)}
    ecount = Counter()
    for d in edges:
        for m in d.values():
            for bit in (WW, WR, RW):
                if m & bit:
                    ecount[EDGE_NAMES[bit]] += 1
    stats["edges"] = dict(ecount)

    succ_ww = [[v for v, m in d.items() if m & WW] for d in edges]
    succ_wwwr = [[v for v, m in d.items() if m & (WW | WR)] for d in edges]
    succ_all = [list(d) for d in edges]

    def describe_cycle(path):
        """path = [n0, n1, ..., n0]; list of (txn, edge kinds, txn)."""
        steps = []
        for a, b in zip(path, path[1:]):
            m = edges[a].get(b, 0)
            kinds = "+".join(EDGE_NAMES[bit] for bit in (WW, WR, RW) if m & bit)
            steps.append(f"T{committed[a].id} -{kinds}-> T{committed[b].id}")
        return steps

    # G0: cycles of ww edges only.
    comp0, _ = _tarjan(n, succ_ww)
    done = set()
    for u in range(n):
        for v in succ_ww[u]:
            if comp0[u] == comp0[v] and comp0[u] not in done:
                done.add(comp0[u])
                c = comp0[u]
                p = _path(v, u, succ_ww, lambda x: comp0[x] == c)
                report("G0", cycle=describe_cycle([u] + p))
    # G1c: cycles of ww/wr edges with at least one wr edge. A wr edge whose ends are in
    # one SCC of the ww/wr graph lies on such a cycle.
    comp1, ncomp1 = _tarjan(n, succ_wwwr)
    done = set()
    for u in range(n):
        for v, m in edges[u].items():
            if not m & WR or comp1[u] != comp1[v] or comp1[u] in done:
                continue
            if m & WW and comp0[u] == comp0[v]:
                continue        # a pure ww cycle through this edge: reported as G0
            done.add(comp1[u])
            c = comp1[u]
            p = _path(v, u, succ_wwwr, lambda x: comp1[x] == c)
            report("G1c", cycle=describe_cycle([u] + p))
    # Full graph SCCs: only an rw edge inside one can close a cycle.
    comp2, ncomp2 = _tarjan(n, succ_all)
    sizes = Counter(comp2)
    big = [s for s in sizes.values() if s > 1]
    stats["sccs_with_cycles"] = len(big)
    stats["largest_scc"] = max(big, default=1)

    # Topological rank of the ww/wr condensation, close to history order (Kahn's
    # algorithm, ready components taken by their earliest member).
    first = [n] * ncomp1
    for x in range(n):
        if x < first[comp1[x]]:
            first[comp1[x]] = x
    indeg = [0] * ncomp1
    cadj = [set() for _ in range(ncomp1)]
    for u in range(n):
        for v in succ_wwwr[u]:
            cu, cv = comp1[u], comp1[v]
            if cu != cv and cv not in cadj[cu]:
                cadj[cu].add(cv)
                indeg[cv] += 1
    heap = [(first[c], c) for c in range(ncomp1) if indeg[c] == 0]
    heapq.heapify(heap)
    rank = [0] * ncomp1
    r = 0
    while heap:
        _, c = heapq.heappop(heap)
        rank[c] = r
        r += 1
        for d in cadj[c]:
            indeg[d] -= 1
            if indeg[d] == 0:
                heapq.heappush(heap, (first[d], d))
    noderank = [rank[comp1[x]] for x in range(n)]

    # G-single: an rw edge u -> v closed by a ww/wr path v -> ... -> u. Cycles with two
    # or more rw edges (write skew, G2) are allowed under SI and only counted.
    g2_candidates = 0
    for u in range(n):
        for v, m in edges[u].items():
            if not m & RW or comp2[u] != comp2[v]:
                continue
            if m & (WW | WR):
                # u -> v is also a ww/wr edge: any cycle through it is reported as G0 or
                # G1c with that label.
                continue
            if noderank[v] > noderank[u]:
                g2_candidates += 1
                continue
            ru, c2 = noderank[u], comp2[u]
            p = _path(v, u, succ_wwwr, lambda x: noderank[x] <= ru and comp2[x] == c2)
            if p is None:
                g2_candidates += 1
                continue
            report("G-single", cycle=describe_cycle([u] + p))
    stats["rw_edges_in_cycles_only_with_other_rw"] = g2_candidates

    # ---- real-time: a transaction that began after a commit returned must see it -------
    if all(t.begin is not None and t.end is not None for t in committed):
        suffix_min = {}
        for k, order in orders.items():
            mins = [None] * (len(order) + 1)
            best = None
            for j in range(len(order) - 1, -1, -1):
                w = writer.get(order[j])
                if w is not None and w[1] == k:
                    end = committed[w[0]].end
                    if best is None or end < best[0]:
                        best = (end, w[0], order[j])
                mins[j] = best
            suffix_min[k] = mins
        for i, k, base in ext_reads:
            mins = suffix_min.get(k)
            if mins is None or len(base) >= len(mins):
                continue
            best = mins[len(base)]
            t = committed[i]
            if best is not None and best[0] < t.begin:
                report("stale-read", key=k, reader=t.id, read_len=len(base),
                       missing_element=best[2], writer=committed[best[1]].id,
                       note="the writer's commit() returned before the reader began, yet "
                            "the reader does not see the write")

    return Result(dict(anomalies), dict(counts), stats)


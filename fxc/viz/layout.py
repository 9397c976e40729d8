"""A layered (Sugiyama-style) layout of a DAG, computed once in Python and embedded as JSON.

    lay = layered(n, edges, widths, heights, seed_x=None)   # -> Layout

Steps, each a small function below:
1. layers: networkx's topological generations (longest path from the sources), then sources
   are pulled down to just above their first consumer, so a graph input or a constant-like
   op does not sit at the top with one edge running the whole height of the graph;
2. long edges get a chain of dummy points, one per layer they cross; all long edges of one
   producer share one chain (a bus), branching off above each consumer, which keeps the
   attention-mask-to-every-layer kind of fan-out to one line instead of twelve;
3. order within each layer: start from graph order (fx order is the program's order, already
   a good DFS-like start) or from `seed_x` (the stage before, so unchanged nodes stay put),
   then barycenter sweeps down and up; the ordering with the fewest crossings wins;
4. x: the nodes of one longest path (the spine: a network's main stream) are held on one
   vertical line; every other node moves toward the mean x of its neighbours in a few sweeps
   (a real node counts only real neighbours where it has any: averaging in the bends of a
   residual edge would drag it aside), and each layer is projected back onto "in order, no
   overlap" exactly (weighted isotonic regression, pool adjacent violators).

Invariant of a Layout: every edge goes strictly downward (y of its producer < y of its
consumer) and two nodes of one layer never overlap (gap included).
"""
from __future__ import annotations

import bisect
import dataclasses

import networkx as nx

LAYER_GAP = 34      # vertical space between the bottom of one layer and the top of the next
NODE_GAP = 18       # horizontal space between neighbours in a layer
DUMMY_W = 8         # the width an edge bend takes in a layer
SPINE_WEIGHT = 1e4   # how hard a node of the longest path holds x = 0
DUMMY_WEIGHT = 1e-4  # how hard a bend holds its place when it collides with a node
SWEEPS = 4          # barycenter sweeps (each one down and one up)
X_ITERS = 6         # x-placement sweeps


@dataclasses.dataclass
class Layout:
    x: list[float]                  # centre of node i
    y: list[float]
    paths: list[list[float]]        # per edge (same order as given): x0, y0, x1, y1, ...
    width: float
    height: float
    layers: int
    crossings: int                  # edge crossings of the final order
    crossings_initial: int          # ... of the starting order, for comparison


def layered(n: int, edges: list[tuple[int, int]], widths: list[float], heights: list[float],
            seed_x: list[float | None] | None = None) -> Layout:
    if n == 0:
        return Layout([], [], [], 0.0, 0.0, 0, 0, 0)
    layer = assign_layers(n, edges)
    g = _Graph(n, edges, layer, widths)
    start = _initial_order(g, seed_x)
    order, crossings, initial = _minimize_crossings(g, start)
    xs = _place_x(g, order, longest_path(n, edges))
    ys, tops = _place_y(g, heights)
    lo = min(xs[v] - g.width[v] / 2 for v in range(len(xs)))
    hi = max(xs[v] + g.width[v] / 2 for v in range(len(xs)))
    xs = [x - lo for x in xs]  # the leftmost box starts at 0
    paths = _edge_paths(g, edges, xs, ys, heights)
    return Layout(xs[:n], ys[:n], paths, hi - lo, tops[-1], max(layer) + 1, crossings, initial)


def assign_layers(n: int, edges: list[tuple[int, int]]) -> list[int]:
    dag = nx.DiGraph()
    dag.add_nodes_from(range(n))
    dag.add_edges_from(edges)
    layer = [0] * n
    for depth, generation in enumerate(nx.topological_generations(dag)):
        for v in generation:
            layer[v] = depth
    for v in range(n):  # sources sit just above their first consumer
        succ = [layer[s] for s in dag.successors(v)]
        if dag.in_degree(v) == 0 and succ:
            layer[v] = min(succ) - 1
    return layer


class _Graph:
    """The layout graph: real nodes 0..n-1, then dummies; adjacency between adjacent layers."""

    def __init__(self, n: int, edges, layer: list[int], widths: list[float]):
        self.n = n
        self.layer = list(layer)
        self.width = list(widths)
        self.preds: list[list[int]] = [[] for _ in range(n)]  # real producers
        self.up: list[list[int]] = [[] for _ in range(n)]     # neighbours one layer above
        self.down: list[list[int]] = [[] for _ in range(n)]   # ... one layer below
        self.route: dict[tuple[int, int], list[int]] = {}     # edge -> dummies it passes
        self.bus: dict[int, list[int]] = {}                   # producer -> its dummy chain
        for u, v in edges:
            self.preds[v].append(u)
            self.route[(u, v)] = self._route(u, v)

    def _new_dummy(self, layer: int) -> int:
        self.layer.append(layer)
        self.width.append(DUMMY_W)
        self.up.append([])
        self.down.append([])
        return len(self.layer) - 1

    def _link(self, a: int, b: int) -> None:
        if b not in self.down[a]:
            self.down[a].append(b)
            self.up[b].append(a)

    def _route(self, u: int, v: int) -> list[int]:
        chain = self.bus.setdefault(u, [])
        need = self.layer[v] - self.layer[u] - 1
        while len(chain) < need:  # extend the producer's bus down to this consumer
            prev = chain[-1] if chain else u
            d = self._new_dummy(self.layer[u] + len(chain) + 1)
            self._link(prev, d)
            chain.append(d)
        self._link(chain[need - 1] if need > 0 else u, v)
        return chain[:need]


def _initial_order(g: _Graph, seed_x) -> list[list[int]]:
    """Graph order, or the stage before's x for nodes it had; dummies follow their producer."""
    key = [float(v) for v in range(len(g.layer))]
    if seed_x is not None:
        known = sorted((x, v) for v, x in enumerate(seed_x) if x is not None)
        for rank, (_, v) in enumerate(known):  # new nodes: just after their inputs
            key[v] = float(rank)
        for v in range(g.n):  # graph order is topological: producers are keyed first
            if seed_x[v] is None and g.preds[v]:
                key[v] = max(key[u] for u in g.preds[v]) + 0.5
    for v in range(g.n, len(g.layer)):  # dummies are made in layer order: parents come first
        key[v] = key[g.up[v][0]]
    order: list[list[int]] = [[] for _ in range(max(g.layer) + 1)]
    for v in sorted(range(len(g.layer)), key=lambda v: key[v]):
        order[g.layer[v]].append(v)
    return order


def _minimize_crossings(g: _Graph, order: list[list[int]]):
    best = [list(layer) for layer in order]
    best_c = initial = last = count_crossings(g, order)
    for _ in range(SWEEPS):
        for i in range(1, len(order)):
            _sort_by_barycenter(order[i], g.up, _positions(order[i - 1]))
        for i in range(len(order) - 2, -1, -1):
            _sort_by_barycenter(order[i], g.down, _positions(order[i + 1]))
        c = count_crossings(g, order)
        if c < best_c:
            best, best_c = [list(layer) for layer in order], c
        if c == last:  # a fixed point: further sweeps give the same order
            break
        last = c
    return best, best_c, initial


def _positions(layer: list[int]) -> dict[int, int]:
    return {v: i for i, v in enumerate(layer)}


def _sort_by_barycenter(layer: list[int], adj, pos: dict[int, int]) -> None:
    """Stable sort by the mean position of the neighbours in the fixed layer; a node with no
    neighbour there keeps its place (its current index)."""
    keyed = []
    for i, v in enumerate(layer):
        ps = [pos[u] for u in adj[v] if u in pos]
        keyed.append((sum(ps) / len(ps) if ps else i, i, v))
    keyed.sort()
    layer[:] = [v for _, _, v in keyed]


def count_crossings(g: _Graph, order: list[list[int]]) -> int:
    """Edge crossings between each pair of adjacent layers (inversions, counted by merge)."""
    total = 0
    for i in range(len(order) - 1):
        below = _positions(order[i + 1])
        pairs = sorted((a, below[b]) for a, v in enumerate(order[i]) for b in g.down[v])
        total += _inversions([b for _, b in pairs])
    return total


def _inversions(seq: list[int]) -> int:
    seen: list[int] = []
    count = 0
    for k, x in enumerate(seq):
        count += k - bisect.bisect_right(seen, x)
        bisect.insort(seen, x)
    return count


def longest_path(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """The nodes of a longest path (fx order is topological); ties go to the earlier producer."""
    preds: list[list[int]] = [[] for _ in range(n)]
    for u, v in edges:
        preds[v].append(u)
    dist, back = [0] * n, [-1] * n
    for v in range(n):
        for u in sorted(preds[v]):
            if dist[u] + 1 > dist[v]:
                dist[v], back[v] = dist[u] + 1, u
    path, v = [], max(range(n), key=lambda i: (dist[i], -i))
    while v >= 0:
        path.append(v)
        v = back[v]
    return path[::-1]


def _place_x(g: _Graph, order: list[list[int]], spine: list[int]) -> list[float]:
    """Barycenter sweeps around a spine: the nodes of a longest path hold x = 0 (they
    weigh SPINE_WEIGHT), so the graph cannot drift sideways a little per block, which plain
    averaging does wherever a branch is lopsided (attention reads q and k, not v)."""
    x = [0.0] * len(g.layer)
    weight = [1.0 if v < g.n else DUMMY_WEIGHT for v in range(len(g.layer))]
    for v in spine:
        weight[v] = SPINE_WEIGHT
    on_spine = set(spine)
    for layer in order:
        _project(layer, [0.0] * len(layer), g.width, x, weight)
    for it in range(X_ITERS):
        layers = range(1, len(order)) if it % 2 == 0 else range(len(order) - 2, -1, -1)
        for i in layers:
            adj = g.up if it % 2 == 0 else g.down
            both = it == X_ITERS - 1
            want = []
            for v in order[i]:
                nbrs = adj[v] + ((g.down[v] if adj is g.up else g.up[v]) if both else [])
                if v < g.n:  # a real node follows real neighbours: the bends of a skip
                    nbrs = [u for u in nbrs if u < g.n] or nbrs  # edge must not drag it aside
                if v in on_spine:
                    want.append(0.0)
                else:
                    want.append(sum(x[u] for u in nbrs) / len(nbrs) if nbrs else x[v])
            _project(order[i], want, g.width, x, weight)
    return x


def _project(layer: list[int], want: list[float], width: list[float], x: list[float],
             weight: list[float]) -> None:
    """x of `layer`'s nodes closest to `want` (weighted least squares) with the order kept and
    no overlap: with offsets c_i (the packed position), y_i = x_i - c_i must be nondecreasing,
    which is isotonic regression of want_i - c_i; pool adjacent violators solves it exactly.
    Edge bends weigh little, so where a bend and a node collide the bend gives way."""
    c, acc = [], 0.0
    for k, v in enumerate(layer):
        if k:
            acc += (width[layer[k - 1]] + width[v]) / 2 + NODE_GAP
        c.append(acc)
    blocks: list[list[float]] = []  # [weighted mean, total weight, count]
    for k, (w, ck) in enumerate(zip(want, c)):
        blocks.append([w - ck, weight[layer[k]], 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks[-1]
            blocks[-1] = [(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2]
    k = 0
    for mean, _, cnt in blocks:
        for _ in range(cnt):
            x[layer[k]] = mean + c[k]
            k += 1


def _place_y(g: _Graph, heights: list[float]) -> tuple[list[float], list[float]]:
    """Centre y of every node (dummies too); tops[i] is where layer i starts (last: height)."""
    rows = max(g.layer) + 1
    tall = [0.0] * rows
    for v in range(g.n):
        tall[g.layer[v]] = max(tall[g.layer[v]], heights[v])
    tops = [0.0]
    for i in range(rows):
        tops.append(tops[-1] + (tall[i] or DUMMY_W) + LAYER_GAP)
    ys = [tops[g.layer[v]] + (tall[g.layer[v]] or DUMMY_W) / 2 for v in range(len(g.layer))]
    return ys, tops


def _edge_paths(g: _Graph, edges, xs, ys, heights) -> list[list[float]]:
    """Points of each edge. Of the edges that share a producer's bus, the one to the farthest
    consumer draws the bus; the others start where they leave it (the same picture, without
    the bus drawn a dozen times over)."""
    longest: dict[int, tuple[int, int]] = {}
    for u, v in edges:
        if u not in longest or len(g.route[(u, v)]) > len(g.route[longest[u]]):
            longest[u] = (u, v)
    paths = []
    for u, v in edges:
        route = g.route[(u, v)]
        if route and longest.get(u) != (u, v):
            pts = [(xs[route[-1]], ys[route[-1]])]
        else:
            pts = [(xs[u], ys[u] + heights[u] / 2)] + [(xs[d], ys[d]) for d in route]
        pts.append((xs[v], ys[v] - heights[v] / 2))
        flat: list[float] = []
        for x, y in _drop_straight(pts):
            flat += [round(x, 1), round(y, 1)]
        paths.append(flat)
    return paths


def _drop_straight(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Bends in the middle of a vertical run add nothing to the drawing (a bus of a producer
    used all the way down would otherwise carry a point per layer)."""
    keep = [pts[0]]
    for k in range(1, len(pts) - 1):
        if not (abs(pts[k][0] - keep[-1][0]) < 0.5 and abs(pts[k + 1][0] - pts[k][0]) < 0.5):
            keep.append(pts[k])
    keep.append(pts[-1])
    return keep

"""Fuse what no library pattern took: maximal regions of pointwise ops and trailing-dim
reductions, each -> one generated Triton kernel (fxc::fused_region, fxc/codegen/).

    v = mul(x, g); s = add(r, v); m = mean(pow(s, 2), [-1], True); y = mul(s, rsqrt(m + eps))
        ->  (s, y) = fxc::fused_region([x, g, r], key)          (getitem 0 and 1)

Invariant: every value the graph had outside a region is computed as before: the op's
reference is the region's own ATen ops, in graph order, and its kernel computes every op in
the dtype the graph gives it (fp32 opmath for fp16/bf16, rounded after each op as ATen does;
reductions and norms accumulate in fp32), so no dtype the cast policy chose changes. Every
region value read outside the region (or returned) is an output of the op, produced once, in
the shape, dtype and strides it had (numerics "lowp": fp32 math is reassociated inside
reductions, and Triton's exp/erf differ from ATen's by an ulp).

What a region holds (registry.py is the op table): pointwise and broadcast ops (arithmetic,
comparisons, where, casts, activations, pow by a scalar), and reductions over the trailing
dims (sum/mean/amax/amin/var with or without keepdim, softmax, log_softmax, layer_norm,
rms_norm) with their pointwise prologue and epilogue: a "row" region, where every value is
row-shaped [outer..., R] or reduced [outer..., 1] (weights of shape [R] broadcast). Regions
grow greedily in graph order, a node joining its producers' regions when the shapes agree and
no path leaves the region and comes back (that would be a cycle).

Refuses, with the reason (counted in the notes): an op with no entry in the table (GEMMs,
convolutions, SDPA, fxc ops, views, index/gather/sort: library kernels or no pointwise
semantics), a symbolic shape (no silent specialization), a dtype the kernels do not take
(float64, complex), a reduction not over the trailing dims. A region of one op stays ATen: a
softmax or layer norm alone is already one ATen kernel, and it is only absorbed together
with a pointwise neighbour, which saves that neighbour's round trip through memory.

Views end regions (a kernel computes in one index space), but a permute or unsqueeze read by
a fusible op whose operand is a single-use pointwise op is first moved onto that op's operands
(`_sink_views`: the same ops on the same values), so ConvNeXt's layer-scale mul, permute and
residual add become one region that reads the GEMM output through its strides.

Where it runs: after layout, so the strides it records for outputs are the final ones (an
output keeps its graph strides; inputs are read through theirs, channels-last included);
only where the engine is fxc's torch runtime on CUDA, or anywhere with
`generated_kernels=True` (tests run it on CPU under TRITON_INTERPRET=1).
"""
from __future__ import annotations

import collections
import heapq
import operator

import torch
import torch.fx as fx

import fxc.ops  # noqa: F401  (torch.ops.fxc.fused_region)
from fxc import ir
from fxc.codegen import cache, registry
from fxc.codegen.region import In, Region, Val, dense_strides, dim_order, same_strides

from .manager import PassContext, PassResult

aten = torch.ops.aten
FUSED = torch.ops.fxc.fused_region.default
MAX_RANK = 8


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    off = not_here(ctx.options)
    if off:
        return PassResult(notes=[off])
    sunk = _sink_views(gm)
    refused: collections.Counter = collections.Counter()
    ok = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is not operator.getitem:
            why = fusible(n)
            if why is None:
                ok[n] = True
            else:
                refused[why] += 1
    regions = absorbed = 0
    specs: set[str] = set()
    notes: list[str] = []
    for nodes in _grow(gm, ok, refused):
        if len(nodes) >= 2 and _replace(gm, nodes, ctx, specs, notes, refused):
            regions += 1
            absorbed += len(nodes)
    if regions:
        _topo_sort(gm)  # first: fx's dead-code elimination lints the order
        gm.graph.eliminate_dead_code()
    summary = [f"{regions} regions fused, {absorbed} ops absorbed, {len(specs)} distinct kernels"]
    if sunk:
        summary.append(f"{sunk} views moved above the pointwise op that fed them")
    notes = summary + notes + [f"refused {why} (x{c})" for why, c in sorted(refused.items())]
    return PassResult(rewrites=regions + sunk, notes=notes,
                      stats={"regions": regions, "ops_absorbed": absorbed, "kernels": len(specs)})


# -- which nodes -------------------------------------------------------------------------------

def not_here(opts) -> str | None:
    """Why generated kernels do not run for these options (None: they do)."""
    forced = getattr(opts, "generated_kernels", None)
    if forced is False:
        return "generated_kernels=False"
    if not forced:
        from fxc.backends import engine_is_torch
        if opts.device.type != "cuda":
            return "not CUDA (generated_kernels=True forces it)"
        if not engine_is_torch(opts):
            return "the engine is not fxc's torch runtime: its own fusions apply"
    return None


def fusible(n: fx.Node) -> str | None:
    """None when `n` can be part of a region, else why not."""
    entry = registry.lookup(n.target)
    if entry is None:
        return f"{ir.op_name(n)}: not in the op table (a library kernel, or no pointwise semantics)"
    val = n.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return f"{ir.op_name(n)}: no tensor result"
    metas = [val] + [a.meta.get("val") for a in n.all_input_nodes]
    for m in metas:
        if not isinstance(m, torch.Tensor):
            return f"{ir.op_name(n)}: a non-tensor operand"
        if not all(isinstance(s, int) for s in (*m.shape, *m.stride())):
            return "a symbolic shape (generated kernels are specialized to static shapes)"
        if m.dtype not in registry.DTYPES:
            return f"dtype {m.dtype}"
        if m.device != val.device:
            return "operands on several devices"
        if m.dim() > MAX_RANK:
            return f"rank {m.dim()} > {MAX_RANK}"
    if val.numel() == 0:
        return "an empty tensor"
    if isinstance(entry, registry.Pointwise) and entry.floats_only and not all(
            m.dtype.is_floating_point for m in metas):
        return f"{ir.op_name(n)} on an integer tensor"
    if isinstance(entry, registry.Pointwise) and entry.bool_only and not all(
            m.dtype == torch.bool for m in metas):
        return f"{ir.op_name(n)} on a non-bool tensor"
    if isinstance(entry, registry.Reduction):
        x = n.args[0].meta["val"]
        if entry.kind != "sum" and not x.dtype.is_floating_point:
            return f"{ir.op_name(n)} of an integer tensor"
        if x.dim() == 0:
            return "a reduction of a 0-d tensor"
        dims, _ = registry.reduce_spec(n.target, n.args, n.kwargs, x.dim())
        k = len(dims)
        if dims != list(range(x.dim() - k, x.dim())):
            return f"a reduction over dims {dims}, not the trailing ones"
    if entry.check is not None:
        why = entry.check(n.args, n.kwargs)
        if why:
            return f"{ir.op_name(n)}: {why}"
    for a in list(n.args) + list(n.kwargs.values()):
        if isinstance(a, (list, tuple)) and any(isinstance(x, fx.Node) for x in a):
            return f"{ir.op_name(n)}: a tensor-list argument"
    return None


# -- views between pointwise ops ----------------------------------------------------------------

_SINKABLE = (aten.permute.default, aten.unsqueeze.default)


def _sink_views(gm: fx.GraphModule) -> int:
    """permute/unsqueeze(f(a, b)) -> f(permute/unsqueeze(a'), ...(b')) when f is pointwise, its
    only reader is the view and the view is read by a fusible op: the view then reads f's
    operands (free: strides), and f joins its reader's region (ConvNeXt's layer-scale mul,
    permute, residual add). a' is `a` viewed at f's rank (leading size-1 dims) where it
    broadcasts from a lower rank. Same ops on the same values: bitwise the graph before."""
    moved = 0
    for w in list(gm.graph.nodes):
        if w.op == "call_function" and w.target in _SINKABLE:
            moved += _sink(gm, w)
    return moved + (_sink_views(gm) if moved else 0)  # to a fixed point: views move up chains


def _sink(gm: fx.GraphModule, w: fx.Node) -> int:
    """Move view `w` above the pointwise op it reads, when that helps (1), else 0."""
    v = w.args[0]
    if not (isinstance(v, fx.Node) and v.op == "call_function" and v.target in registry.POINTWISE
            and len(v.users) == 1 and fusible(v) is None
            and any(u.op == "call_function" and fusible(u) is None for u in w.users)):
        return 0
    rank = v.meta["val"].dim()
    with gm.graph.inserting_before(v):
        def moved_view(a):
            if not isinstance(a, fx.Node):
                return a
            t = a.meta["val"]
            if t.dim() < rank:
                a = ir.new_call(gm.graph, aten.view.default,
                                (a, [1] * (rank - t.dim()) + list(t.shape)), like=v)
            return ir.new_call(gm.graph, w.target, (a, *w.args[1:]), like=w)
        args = tuple(moved_view(a) for a in v.args)
        kwargs = {k: moved_view(x) for k, x in v.kwargs.items()}
        new = ir.new_call(gm.graph, v.target, args, kwargs, like=v)
    w.replace_all_uses_with(new)
    gm.graph.erase_node(w)
    gm.graph.erase_node(v)
    return 1


# -- growing regions ---------------------------------------------------------------------------

def _grow(gm: fx.GraphModule, ok: dict, refused: collections.Counter) -> list[list[fx.Node]]:
    """Greedy, in graph order: each fusible node joins the regions of its fusible producers
    where the shapes agree and the union stays acyclic."""
    pos = {n: i for i, n in enumerate(gm.graph.nodes)}
    group: dict[fx.Node, int] = {}
    members: dict[int, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n not in ok:
            continue
        gid = len(members)
        members[gid], group[n] = [n], gid
        for p in sorted({group[a] for a in n.all_input_nodes if a in group}, reverse=True):
            if p == group[n]:
                continue
            union = members[p] + members[group[n]]
            why = _shape_plan(union)
            why = why if isinstance(why, str) else None
            if why is None and _cycle(union, pos):
                why = "fusing would make a cycle through an op outside the region"
            if why:
                refused[why] += 1
                continue
            old = group[n]
            for m in members.pop(old):
                group[m] = p
            members[p] = sorted(union, key=pos.__getitem__)
    return [m for m in members.values()]


def _shape_plan(nodes: list[fx.Node]):
    """(full shape, reduced trailing dims) every value of the region fits, or why none does."""
    inside = set(nodes)
    reds = [n for n in nodes if n.target in registry.REDUCTIONS]
    shapes = [tuple(n.meta["val"].shape) for n in nodes]
    outs = [n for n in nodes if _is_output(n, inside)]
    if not reds:
        try:
            full = tuple(torch.broadcast_shapes(*shapes))
        except RuntimeError:
            return "shapes that do not broadcast"
        for n in outs:
            if tuple(n.meta["val"].shape) != full:
                return "an output smaller than the region's shape"
        return full, 0
    full = tuple(reds[0].args[0].meta["val"].shape)
    k = len(registry.reduce_spec(reds[0].target, reds[0].args, reds[0].kwargs, len(full))[0])
    for r in reds:
        x = tuple(r.args[0].meta["val"].shape)
        dims, keep = registry.reduce_spec(r.target, r.args, r.kwargs, len(x))
        if x != full or len(dims) != k:
            return "reductions over different rows"
        if not keep and any(u in inside for u in r.users):
            return "a reduction without keepdim read inside the region"
    outer, inner = full[:-k], full[-k:]
    for n in nodes:
        s = tuple(n.meta["val"].shape)
        if n in reds and not registry.reduce_spec(n.target, n.args, n.kwargs, len(full))[1]:
            continue
        if len(s) > len(full):
            return "a value larger than the row"
        pad = (1,) * (len(full) - len(s)) + s
        if any(a not in (1, b) for a, b in zip(pad, full)):
            return "a value that does not broadcast to the row"
        tail = pad[-k:]
        if tail != inner and any(t != 1 for t in tail):
            return "a value neither row-shaped nor reduced"
        if n in outs and pad[:-k] != outer:
            return "an output smaller than the region's rows"
        if n in outs and tail != inner and len(s) != len(full):
            return "a reduced output of another rank"
    return full, k


def _is_output(n: fx.Node, inside: set) -> bool:
    return any(u not in inside for u in n.users)


def _cycle(nodes: list[fx.Node], pos: dict) -> bool:
    """Does a path leave `nodes` and come back (through a node outside)?"""
    inside = set(nodes)
    last = max(pos[n] for n in nodes)
    stack = [u for n in nodes for u in n.users if u not in inside]
    seen = set()
    while stack:
        u = stack.pop()
        if u in seen or pos.get(u, last + 1) > last:
            continue
        seen.add(u)
        for w in u.users:
            if w in inside:
                return True
            stack.append(w)
    return False


# -- rewriting ---------------------------------------------------------------------------------

def build_region(nodes: list[fx.Node]) -> tuple[Region, list[fx.Node], list[fx.Node]] | str:
    """(the region, its input nodes, its output nodes) or why it cannot be built."""
    plan = _shape_plan(nodes)
    if isinstance(plan, str):
        return plan
    inside = {n: j for j, n in enumerate(nodes)}
    inputs: list[fx.Node] = []

    def enc(a):
        if isinstance(a, fx.Node):
            if a in inside:
                return Val(inside[a])
            if a not in inputs:
                inputs.append(a)
            return In(inputs.index(a))
        if isinstance(a, (list, tuple)):
            return [enc(x) for x in a]
        if isinstance(a, (torch.dtype, torch.memory_format)) or a is None or \
                isinstance(a, (bool, int, float, str)):
            return a
        raise TypeError(f"argument {a!r}")

    ops = []
    for n in nodes:
        try:
            args = tuple(enc(a) for a in n.args)
            kwargs = {k: enc(v) for k, v in n.kwargs.items()
                      if not (k in ("layout", "device", "pin_memory") and v in (None, torch.strided, False))}
        except TypeError as e:
            return f"{ir.op_name(n)}: an argument the key cannot hold ({e})"
        ops.append((n.target, args, kwargs))
    outs = [n for n in nodes if _is_output(n, set(nodes))]
    orders = []
    for n in outs:
        v = n.meta["val"]
        order = dim_order(v)
        if not same_strides(v, dense_strides(v.shape, order)):
            return "an output that is not dense (its strides cannot be reproduced)"
        orders.append(order)
    region = Region(ops, len(inputs), [inside[n] for n in outs], orders, plan[1])
    return region, inputs, outs


def _replace(gm, nodes, ctx, specs: set, notes: list, refused) -> bool:
    built = build_region(nodes)
    if isinstance(built, str):
        refused[built] += 1
        return False
    region, inputs, outs = built
    metas = [a.meta["val"] for a in inputs]
    launch = cache.plan(region, metas, [n.meta["val"] for n in outs]) if cache.available() else None
    if isinstance(launch, str):
        refused[f"no kernel fits: {launch}"] += 1
        return False
    last = nodes[-1]
    with gm.graph.inserting_before(last):
        fused = ir.new_call(gm.graph, FUSED, (list(inputs), region.key), like=last)
        items = [ir.new_call(gm.graph, operator.getitem, (fused, i), like=n)
                 for i, n in enumerate(outs)]
    for n, item in zip(outs, items):
        n.replace_all_uses_with(item)
    for n in reversed(nodes):
        if not n.users:
            gm.graph.erase_node(n)
    if launch is not None and launch.spec not in specs:
        specs.add(launch.spec)
        ops = ", ".join(ir.op_name(n).replace("aten.", "") for n in nodes)
        note = f"kernel {launch.name}: {ops}"
        if ctx.options.dump_dir:
            note += f" -> {cache.write_source(ctx.options.dump_dir, launch.name, launch.source)}"
        notes.append(note)
    return True


def _topo_sort(gm: fx.GraphModule) -> None:
    """Stable topological order (a fused op sits at its last member; a reader of an earlier
    member's value that came before it moves after it)."""
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    indeg = {n: len(set(n.all_input_nodes)) for n in nodes}
    if all(pos[a] < pos[n] for n in nodes for a in n.all_input_nodes):
        return
    ready = [(pos[n], n.name, n) for n in nodes if indeg[n] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, n = heapq.heappop(ready)
        order.append(n)
        for u in n.users:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, (pos[u], u.name, u))
    prev = order[0]
    for n in order[1:]:
        prev.append(n)
        prev = n

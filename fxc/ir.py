"""Helpers over fxc's one IR: an ATen-level torch.fx GraphModule.

Invariant every stage keeps: each placeholder, get_attr and call_function node carries
`meta["val"]` (a FakeTensor, a tuple of them, or a Python scalar) that is true of what the
node computes, and call_function nodes keep the user's `stack_trace` where capture had one.
"""
from __future__ import annotations

import operator
import os
from typing import Any, Iterable

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from .errors import FxcPassError


def op_name(node: fx.Node) -> str:
    """A stable, readable name of what a node does: 'aten.relu.default', 'getitem', 'x'."""
    if node.op == "call_function":
        t = node.target
        if isinstance(t, torch._ops.OpOverload):
            return f"{t.namespace}.{t._opname}.{t._overloadname}"
        return getattr(t, "__name__", str(t))
    if node.op in ("call_module", "get_attr"):
        return f"{node.op}:{node.target}"
    return node.op


_TORCH_DIR = os.path.dirname(torch.__file__)


def source_line(node: fx.Node) -> str | None:
    """The user's innermost source line that produced `node` ('file.py:12 in forward: y = f(x)').

    Frames inside torch itself (nn.Conv2d.forward, say) are skipped: the user's line is the
    one that called into torch.
    """
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    frames = []
    lines = trace.rstrip().splitlines()
    for i, raw in enumerate(lines):
        s = raw.strip()
        if not s.startswith("File "):
            continue
        code = lines[i + 1].strip() if i + 1 < len(lines) else ""
        try:
            path, rest = s[len("File "):].split(", line ", 1)
            lineno, fn = rest.split(", in ", 1)
        except ValueError:
            continue
        frames.append((path.strip('"'), lineno, fn, code))
    if not frames:
        return None
    user = [f for f in frames if not os.path.abspath(f[0]).startswith(_TORCH_DIR)]
    path, lineno, fn, code = (user or frames)[-1]
    return f"{path}:{lineno} in {fn}: {code}"


def describe(node: fx.Node) -> str:
    """'%relu_3 = aten.relu.default' plus the source line where there is one."""
    src = source_line(node)
    return f"%{node.name} = {op_name(node)}" + (f"  [{src}]" if src else "")


def tensor_meta(node: fx.Node) -> torch.Tensor | None:
    val = node.meta.get("val")
    return val if isinstance(val, torch.Tensor) else None


def call_nodes(gm: fx.GraphModule) -> Iterable[fx.Node]:
    return (n for n in gm.graph.nodes if n.op == "call_function")


def count_compute(gm: fx.GraphModule) -> int:
    """Nodes that do work at run time (getitem projections are free)."""
    return sum(1 for n in call_nodes(gm) if n.target is not operator.getitem)


def infer_meta(gm: fx.GraphModule) -> None:
    """Recompute meta["val"] of every node by fake execution (after a pass made new nodes).

    Static graphs: a fresh FakeTensorMode each time, placeholders rebuilt from their recorded
    shape/stride/dtype/device, parameters (get_attr) converted from the real tensors. Symbolic
    graphs: the mode that owns the placeholders' symbols (symbolic_mode), so sizes stay
    symbols; a fresh mode has no ShapeEnv and may specialise them to their hints.
    """
    placeholders = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
    mode = symbolic_mode(placeholders) or FakeTensorMode(allow_non_fake_inputs=True)
    inputs = [in_mode(v, mode) for v in placeholders]
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*inputs)


def free_size(s: Any) -> bool:
    """Whether a size is still a free symbol: a SymInt whose expression, after the ShapeEnv's
    replacements, has free symbols (a guard that specialised it leaves a constant SymInt)."""
    if not isinstance(s, torch.SymInt):
        return False
    node = s.node
    env = getattr(node, "shape_env", None)
    expr = env.replace(node.expr) if env is not None else node.expr
    return bool(getattr(expr, "free_symbols", ()))


def _is_symbolic_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and any(free_size(s) for s in (*v.shape, *v.stride()))


def symbolic_mode(metas: Iterable[Any]) -> FakeTensorMode | None:
    """The fake mode owning the symbolic sizes among `metas` (tensors or tuples of them), or
    None when every size is an int. New metas of a symbolic graph must be computed in it: its
    ShapeEnv knows the symbols' ranges and relations, a fresh mode does not."""
    for v in metas:
        for t in (v if isinstance(v, (tuple, list)) else (v,)):
            if _is_symbolic_tensor(t) and getattr(t, "fake_mode", None) is not None:
                return t.fake_mode
    return None


def in_mode(v: Any, mode: FakeTensorMode) -> Any:
    """`v` as a fake tensor of `mode` (itself if it already is one); non-tensors unchanged."""
    if not isinstance(v, torch.Tensor) or getattr(v, "fake_mode", None) is mode:
        return v
    with mode:
        return torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device)


def _same_meta(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_meta(x, y) for x, y in zip(a, b))
    return type(a) is type(b) or a is None or b is None


def lint(gm: fx.GraphModule, stage: str = "lint") -> None:
    """fx's structural lint, plus: every value node has meta["val"], and it is true.

    Raises FxcPassError naming `stage` and the first node whose meta is missing or wrong.
    """
    try:
        gm.graph.lint()
    except Exception as e:  # fx raises RuntimeError with the offending node in the text
        raise FxcPassError(stage, f"graph lint failed: {e}") from None
    recorded = {}
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "get_attr", "call_function"):
            if "val" not in n.meta:
                raise FxcPassError(stage, "node has no meta['val']", node=describe(n))
            recorded[n] = n.meta["val"]
    if not recorded:
        return
    try:
        infer_meta(gm)
    except Exception as e:  # the graph no longer type-checks: say so, with the first line
        for n, old in recorded.items():
            n.meta["val"] = old
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FxcPassError(stage, f"meta: the graph no longer type-checks: {first}") from None
    try:
        for n, old in recorded.items():
            if not _same_meta(old, n.meta["val"]):
                raise FxcPassError(stage, f"meta['val'] is stale: recorded {_fmt(old)}, "
                                          f"computes {_fmt(n.meta['val'])}", node=describe(n),
                                   source=source_line(n))
    finally:
        for n, old in recorded.items():
            n.meta["val"] = old


def _fmt(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"{str(v.dtype).replace('torch.', '')}{list(v.shape)}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return repr(v)


def fmt_meta(node: fx.Node) -> str:
    """'f32[1, 3, 224, 224]'-style summary of a node's value, for reports and dumps."""
    return _fmt(node.meta.get("val")).replace("float", "f").replace("int", "i")


def infer_node_meta(node: fx.Node) -> None:
    """Set meta["val"] of one call_function node from its inputs' meta, by fake execution.

    For passes that create a node: cheaper than re-propagating the whole graph. Inputs with
    symbolic sizes are run in the mode that owns their symbols (symbolic_mode): a fresh mode
    would specialise them (seen with torch 2.11 on CUDA: matmul and the ops after it got the
    example's sizes, and the memory plan then sized their buffers for it alone).
    """
    metas = [a.meta.get("val") for a in node.all_input_nodes]
    mode = symbolic_mode(metas) or FakeTensorMode(allow_non_fake_inputs=True)
    memo: dict[fx.Node, Any] = {}

    def fake(n: fx.Node):
        if n not in memo:
            memo[n] = in_mode(n.meta["val"], mode)
        return memo[n]

    args = fx.node.map_arg(node.args, fake)
    kwargs = fx.node.map_arg(node.kwargs, fake)
    node.meta["val"] = fake_call(node.target, args, kwargs, mode)


def _sdpa_meta(q, k, v, *args, **kwargs):
    """SDPA's result as the math kernel lays it out: (..., L, Ev), contiguous. Views of it that
    another kernel's layout would not allow are reshapes after passes/sdpa_views.py."""
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


# Ops whose device meta kernels want concrete sizes (torch 2.11's CUDA SDPA meta pads the mask
# with constant_pad_nd, which fails on SymInts after fixing sizes with guards): on a symbolic
# graph their metas come from these rules instead.
SYMBOLIC_META = {torch.ops.aten.scaled_dot_product_attention.default: _sdpa_meta}


def fake_call(target, args, kwargs, mode: FakeTensorMode):
    """target(*args, **kwargs) in fake `mode`; by SYMBOLIC_META's rule where `mode` holds
    symbolic sizes and the target has one."""
    rule = SYMBOLIC_META.get(target)
    with mode:
        if rule is not None and mode.shape_env is not None and any(
                _is_symbolic_tensor(a) for a in args):
            return rule(*args, **kwargs)
        return target(*args, **kwargs)


def new_call(graph: fx.Graph, target, args: tuple, kwargs: dict | None = None, *,
             like: fx.Node | None = None) -> fx.Node:
    """Insert a call_function node (at the graph's current insert point) with true meta,
    carrying `like`'s stack trace so errors and dumps still point at the user's line."""
    node = graph.call_function(target, args, kwargs or {})
    if like is not None and "stack_trace" in like.meta:
        node.meta["stack_trace"] = like.meta["stack_trace"]
    infer_node_meta(node)
    return node


# -- constants (get_attr buffers) that passes add and drop --------------------------------------

def fetch_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    """The tensor a get_attr target names (dotted paths into submodules included)."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def add_constant(gm: fx.GraphModule, tensor: torch.Tensor, base: str, *,
                 after: fx.Node, like: fx.Node | None = None) -> fx.Node:
    """Register `tensor` as a non-persistent buffer under a fresh name from `base` and insert
    a get_attr for it after `after`, with a true meta["val"] (and `like`'s other meta)."""
    name, i = base.replace(".", "_"), 1
    while hasattr(gm, name):
        name, i = f"{base.replace('.', '_')}_{i}", i + 1
    gm.register_buffer(name, tensor, persistent=False)
    with gm.graph.inserting_after(after):
        node = gm.graph.get_attr(name)
    if like is not None:
        node.meta.update({k: v for k, v in like.meta.items() if k != "val"})
    node.meta["val"] = FakeTensorMode(allow_non_fake_inputs=True).from_tensor(tensor)
    return node


def drop_unused_constants(gm: fx.GraphModule) -> int:
    """Erase get_attr nodes nothing reads and delete their tensors when no node names them."""
    dropped = 0
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            target = node.target
            gm.graph.erase_node(node)
            if not any(m.op == "get_attr" and m.target == target for m in gm.graph.nodes):
                *path, last = target.split(".")
                owner: Any = gm
                for part in path:
                    owner = getattr(owner, part)
                delattr(owner, last)
                dropped += 1
    return dropped

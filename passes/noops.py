"""No-op removal: ops that return their input unchanged go, and chains of layout ops or casts
shrink to one op. Every rule compares meta["val"] (dtype, shape, strides, device) of the op's
input and output, so broadcasting, type promotion and layout changes are never lost.

Rules (the code says `# rule N`):
  1. clone / contiguous whose output has its input's strides: eval dropout's clone, the
     .contiguous() of a contiguous value. A clone that changes the memory format
     (channels_last of an NCHW value) changes strides, so it stays.
  2. alias, detach.
  3. _to_copy / to with the input's dtype, device, layout and strides.
  4. expand to the input's own shape.
  5. view / reshape / _unsafe_view / squeeze to the input's own shape (and strides).
  6. slice over a whole dim (start 0, end >= size, step 1).
  7. x * 1, x / 1, x - 0 and x + (-0.0), when the output has x's dtype, shape and strides (no
     promotion, no broadcast). For floats x + 0 and x - (-0.0) are NOT removed: -0.0 + 0.0 =
     +0.0, and the sign of a zero shows in 1/x, atan2, copysign; x - 0 keeps -0.0
     (-0.0 - 0.0 = -0.0), so it goes. For integers x + 0 goes too.
  8. permute / transpose pairs that cancel (and the identity permute).
  9. a chain of permutes / transposes -> one permute.
 10. a chain of view / reshape / _unsafe_view -> one view (when the input can be viewed so
     directly, with the same strides).
 11. a cast round trip that is exact: x.to(a).to(x.dtype) -> x when every value of x's dtype is
     exact in a (f16->f32->f16, int32->int64->int32, bool->int->bool). f32->f16->f32 rounds:
     it stays.
 12. x.to(a).to(b) -> x.to(b) when a is wider than both ends (exact for both), so that
     skipping it changes no value; not for a float a and an integer b (a float -> int cast of
     an out-of-range value is undefined, and f32 and f64 kernels need not agree on it).
 13. constant_pad_nd with every pad 0: torchvision's Swin pads each window stage to a multiple
     of the window size, which at 224x224 is no padding at all (15 copy kernels a call).

Every rule refuses, with the reason in the notes, when it would make a graph output an input,
a constant, another output, or (for the copies: 1, 3, 7, 11, 13) a view of something else: the
caller would then share memory it did not share before. Chain rules (9, 10, 12) refuse when
the intermediate has another user: the chain would stay, and nothing would be saved.

A graph that writes in place (not one capture makes) is left alone.

Invariant: outputs equal to the stage before (every rule is exact on values; a removed copy
can hand a later kernel the same values in the same strides); every meta["val"] true.
"""
from __future__ import annotations

import contextlib

import math
from typing import Any

import torch
import torch.fx as fx

from fxc import ir

from .cse import aliases_input, first_mutation, skipped
from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_graph_output, is_op, only_user, run_rules

aten = torch.ops.aten

_COPIES = (aten.clone.default, aten.contiguous.default, aten.lift_fresh_copy.default)
_CASTS = (aten._to_copy.default, aten.to.dtype, aten.to.device, aten.to.dtype_layout)
_ALIASES = (aten.alias.default, aten.detach.default)
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
_SQUEEZES = (aten.squeeze.dims, aten.squeeze.dim, aten.squeeze.default)
_PERMUTES = (aten.permute.default, aten.transpose.int)


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    if (writer := first_mutation(gm)) is not None:
        return skipped(writer)  # a removed copy could let a write reach its input
    return run_rules(gm, RULES, ctx)


# -- shared checks ------------------------------------------------------------------------------

def _val(node: Any) -> torch.Tensor | None:
    return ir.tensor_meta(node) if isinstance(node, fx.Node) else None


def _same_value_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
            and a.layout == b.layout and a.stride() == b.stride()
            and a.storage_offset() == b.storage_offset())


def _output_refusal(node: fx.Node, x: fx.Node, copy: bool) -> Refuse | None:
    """Replacing `node` by `x`: does a graph output start sharing memory it did not share?"""
    if not is_graph_output(node):
        return None
    if x.op != "call_function":
        return Refuse(f"graph output would be the {x.op} itself")
    if is_graph_output(x):
        return Refuse("graph output would repeat another output")
    if copy and aliases_input(x):
        return Refuse("graph output would become a view of another value")
    return None


def _identity(node: fx.Node, x: Any, copy: bool):
    """Match `node -> x` when node's value is x's, same layout; else None or a Refuse."""
    xv, nv = _val(x), _val(node)
    if xv is None or nv is None:
        return None
    if xv.dtype != nv.dtype or xv.device != nv.device or xv.shape != nv.shape:
        return None  # not an identity at all: nothing to say
    if not _same_value_layout(xv, nv):
        return Refuse("a real copy: the layout changes")
    refusal = _output_refusal(node, x, copy)
    return refusal if refusal is not None else (node, x)


def _replace(gm: fx.GraphModule, m: tuple[fx.Node, fx.Node], ctx: PassContext) -> int:
    node, x = m
    node.replace_all_uses_with(x)
    gm.graph.erase_node(node)
    return 1


# -- rules 1-7: identities ----------------------------------------------------------------------

def match_copy(node, ctx):  # rule 1
    if not is_op(node, *_COPIES):
        return None
    return _identity(node, node.args[0], copy=True)


def match_alias(node, ctx):  # rule 2
    if not is_op(node, *_ALIASES):
        return None
    return _identity(node, node.args[0], copy=False)


def match_cast(node, ctx):  # rule 3
    if not is_op(node, *_CASTS):
        return None
    return _identity(node, node.args[0], copy=True)


def match_expand(node, ctx):  # rule 4
    if not is_op(node, aten.expand.default):
        return None
    return _identity(node, node.args[0], copy=False)


def match_view(node, ctx):  # rule 5
    if not is_op(node, *_VIEWS, *_SQUEEZES):
        return None
    return _identity(node, node.args[0], copy=False)


def match_slice(node, ctx):  # rule 6
    if not is_op(node, aten.slice.Tensor):
        return None
    step = node.args[4] if len(node.args) > 4 else node.kwargs.get("step", 1)
    if step != 1:
        return None
    return _identity(node, node.args[0], copy=False)  # same shape with step 1: whole dim


_ONE = (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar)
_ZERO = (aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar)


def match_arith(node, ctx):  # rule 7
    if not is_op(node, *_ONE, *_ZERO) or len(node.args) != 2 or isinstance(node.args[1], fx.Node):
        return None
    x, s = node.args
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        return None
    if node.target in _ONE:
        if s != 1 or node.kwargs.get("rounding_mode") is not None:
            return None
    else:
        if s != 0 or node.kwargs.get("alpha", 1) != 1:
            return None
        xv = _val(x)
        sign = 1.0 if node.target in (aten.add.Tensor, aten.add.Scalar) else -1.0
        adds_plus_zero = math.copysign(1.0, s) * sign > 0  # x + (-0.0) and x - 0.0 are x
        if adds_plus_zero and xv is not None and xv.is_floating_point():
            return Refuse("x + 0.0 turns -0.0 into +0.0")
    return _identity(node, x, copy=True)


def match_pad(node, ctx):  # rule 13
    if not is_op(node, aten.constant_pad_nd.default):
        return None
    if any(not isinstance(p, int) or p != 0 for p in node.args[1]):
        return None  # a real pad or crop (negative), or a symbolic one: not an identity
    return _identity(node, node.args[0], copy=True)


# -- rules 8-10: chains of layout ops -----------------------------------------------------------

def _perm(node: fx.Node) -> list[int] | None:
    """The permutation a permute/transpose applies, dims normalized."""
    v = _val(node.args[0])
    if v is None:
        return None
    rank = v.dim()
    if rank == 0:
        return None
    if node.target is aten.permute.default:
        return [d % rank for d in node.args[1]]
    d0, d1 = (d % rank for d in node.args[1:3])
    p = list(range(rank))
    p[d0], p[d1] = p[d1], p[d0]
    return p


def match_permute_cancel(node, ctx):  # rule 8
    if not is_op(node, *_PERMUTES):
        return None
    p = _perm(node)
    if p is None:
        return None
    if p == sorted(p):
        return _identity(node, node.args[0], copy=False)
    inner = node.args[0]
    if not is_op(inner, *_PERMUTES) or (q := _perm(inner)) is None:
        return None
    if [q[i] for i in p] != list(range(len(p))):
        return None
    return _identity(node, inner.args[0], copy=False)


def match_permute_chain(node, ctx):  # rule 9
    if not is_op(node, *_PERMUTES) or not is_op(node.args[0], *_PERMUTES):
        return None
    inner = node.args[0]
    p, q = _perm(node), _perm(inner)
    if p is None or q is None:
        return None
    if only_user(inner) is not node:
        return Refuse("intermediate permute has another user")
    return ("permute", node, inner.args[0], [q[i] for i in p])


def match_view_chain(node, ctx):  # rule 10
    if not is_op(node, *_VIEWS) or not is_op(node.args[0], *_VIEWS):
        return None
    inner, nv = node.args[0], _val(node)
    x, xv = inner.args[0], _val(inner.args[0])
    if nv is None or xv is None:
        return None
    if only_user(inner) is not node:
        return Refuse("intermediate view has another user")
    try:  # views compose into a view, but an aten.reshape in the chain may have copied
        direct = torch.empty_strided(xv.shape, xv.stride(), dtype=xv.dtype,
                                     device="meta").view(nv.shape)
    except RuntimeError:
        return Refuse("the input cannot be viewed so in one step")
    if direct.stride() != nv.stride():  # size-1 dims can get other strides: keep meta true
        return Refuse("one view would give other strides")
    return ("view", node, x, list(nv.shape))


def _apply_chain(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    kind, node, x, arg = m
    target = aten.permute.default if kind == "permute" else aten.view.default
    with gm.graph.inserting_before(node):
        new = ir.new_call(gm.graph, target, (x, arg), like=node)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return 1


# -- rules 11-12: casts -------------------------------------------------------------------------

_FLOAT_WIDER = {  # source -> the float dtypes that hold each of its values exactly
    torch.float16: {torch.float32, torch.float64},
    torch.bfloat16: {torch.float32, torch.float64},
    torch.float32: {torch.float64},
}
_MANTISSA = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}


def exact(src: torch.dtype, dst: torch.dtype) -> bool:
    """Every value of `src` is exactly representable in `dst` (so src -> dst -> src is x)."""
    if src == dst or src == torch.bool:
        return src == dst or not dst.is_complex
    if dst == torch.bool or src.is_complex or dst.is_complex:
        return False
    if src.is_floating_point:
        return dst in _FLOAT_WIDER.get(src, ())
    si = torch.iinfo(src)
    if dst.is_floating_point:  # integers up to 2**mantissa are exact
        m = _MANTISSA.get(dst)
        return m is not None and max(-si.min, si.max) <= 2 ** m
    di = torch.iinfo(dst)
    return di.min <= si.min and si.max <= di.max


def _pure_cast(node: Any) -> torch.dtype | None:
    """The dtype a cast node converts to, when it changes nothing else (device, layout, strides)."""
    if not is_op(node, aten._to_copy.default):
        return None
    xv, nv = _val(node.args[0]), _val(node)
    if xv is None or nv is None or xv.device != nv.device or xv.layout != nv.layout:
        return None
    if xv.shape != nv.shape or xv.stride() != nv.stride():
        return None
    return nv.dtype


def match_cast_roundtrip(node, ctx):  # rule 11
    b, inner = _pure_cast(node), node.args[0] if node.args else None
    a = _pure_cast(inner)
    if b is None or a is None:
        return None
    x = inner.args[0]
    src = _val(x).dtype
    if b != src:
        return None
    if not exact(src, a):
        return Refuse(f"{_short(src)} -> {_short(a)} -> {_short(src)} rounds")
    refusal = _output_refusal(node, x, copy=True)
    return refusal if refusal is not None else (node, x)


def match_cast_chain(node, ctx):  # rule 12
    b, inner = _pure_cast(node), node.args[0] if node.args else None
    a = _pure_cast(inner)
    if b is None or a is None:
        return None
    src = _val(inner.args[0]).dtype
    if b == src:
        return None  # rule 11's case
    if not (exact(src, a) and exact(b, a)):
        return Refuse(f"{_short(a)} is not wider than {_short(src)} and {_short(b)}")
    if a.is_floating_point and not b.is_floating_point:
        return Refuse("float -> int of an out-of-range value differs by source type")
    if only_user(inner) is not node:
        return Refuse("intermediate cast has another user")
    return node, inner.args[0]


def _apply_cast_chain(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    node, x = m
    with gm.graph.inserting_before(node):
        new = ir.new_call(gm.graph, aten._to_copy.default, (x,), dict(node.kwargs), like=node)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return 1


def _short(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


RULES = [
    Rule("clone", match_copy, _replace),                       # 1
    Rule("alias", match_alias, _replace),                      # 2
    Rule("cast_same", match_cast, _replace),                   # 3
    Rule("expand_same", match_expand, _replace),               # 4
    Rule("view_same", match_view, _replace),                   # 5
    Rule("slice_whole", match_slice, _replace),                # 6
    Rule("arith_identity", match_arith, _replace),             # 7
    Rule("permute_cancel", match_permute_cancel, _replace),    # 8
    Rule("permute_chain", match_permute_chain, _apply_chain),  # 9
    Rule("view_chain", match_view_chain, _apply_chain),        # 10
    Rule("cast_roundtrip", match_cast_roundtrip, _replace),    # 11
    Rule("cast_chain", match_cast_chain, _apply_cast_chain),   # 12
    Rule("pad_zero", match_pad, _replace),                     # 13
]


# -- views their input's layout no longer allows (issue 16.9) ----------------------------------
#
# Capture records strides, and a graph relies on them: torch.export drops a .contiguous() that
# was a no-op at trace time, and rule 1 drops a clone whose input was already contiguous. A
# pass that later changes an op's output layout or dtype can change those strides (on CUDA,
# SDPA's output layout depends on the kernel its dtype picks; channels-last convs; a cast of a
# non-dense value), and a `view` downstream may no longer be possible. The passes that change
# layouts or dtypes (cast_precision, layout) therefore end with `repair_views`, and
# cast_precision also fixes each view as it re-infers it: the view reads a contiguous clone
# (what capture emits for x.contiguous().view() or a copying reshape), so it stays in the
# ATen form the later passes and backends know.

VIEW_OPS = (aten.view.default, aten._unsafe_view.default)


def viewable(x: torch.Tensor, shape) -> bool:
    """Whether torch can view a tensor with `x`'s shape and strides as `shape` (no copy).
    Symbolic sizes are decided in the fake mode that owns them; a view it cannot decide for
    every size of the range counts as not viewable (the copy is always correct)."""
    symbolic = not all(isinstance(s, int) for s in (*x.shape, *x.stride(), *shape))
    mode = getattr(x, "fake_mode", None) if symbolic else None
    try:
        with mode if mode is not None else contextlib.nullcontext():
            torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta").view(shape)
    except Exception:  # RuntimeError/ValueError; symbolic: a guard it cannot decide
        return False
    return True


def needs_copy(node: fx.Node) -> bool:
    """A view node whose input, as its meta now is, cannot be viewed as the node asks."""
    if node.op != "call_function" or node.target not in VIEW_OPS:
        return False
    x = _val(node.args[0])
    # a size computed in the graph (a symbolic dim) stands for its meta value, a SymInt
    shape = fx.node.map_arg(node.args[1], lambda n: n.meta.get("val"))
    return x is not None and not viewable(x, shape)


def read_contiguous(graph: fx.Graph, node: fx.Node) -> fx.Node:
    """Make view `node` read a contiguous clone of its input (inserted before it)."""
    with graph.inserting_before(node):
        clone = ir.new_call(graph, aten.clone.default, (node.args[0],),
                            {"memory_format": torch.contiguous_format}, like=node)
    node.args = (clone,) + tuple(node.args[1:])
    return clone


def repair_views(gm: fx.GraphModule) -> list[str]:
    """Every view whose input's strides no longer allow it reads a contiguous clone. Each
    view's meta is inferred again from its input's (a pass that replaced an upstream op may
    have left its consumers' metas as they were), and where that changes it, or a view was
    repaired, every later node's too. Returns the repaired views' names.

    Invariant after: every view/_unsafe_view node can view its input, and its meta (and
    everything after a changed one) is what its inputs' metas give."""
    repaired, stale = [], False
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or not (stale or n.target in VIEW_OPS):
            continue
        if needs_copy(n):
            read_contiguous(gm.graph, n)
            repaired.append(n.name)
        before = _val(n)
        ir.infer_node_meta(n)
        after = _val(n)
        stale = stale or before is None or after is None or before.stride() != after.stride()
    return repaired

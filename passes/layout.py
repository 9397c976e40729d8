"""Channels-last (NHWC) layout for conv nets on CUDA, kept only where it measures faster.

Invariant: the graph computes the same values (conv algorithms differ between layouts, so to
rounding: assert_close in fp32 without TF32, the reduced-precision contract otherwise), its
outputs keep the strides they had, and every node's meta["val"] (strides included) is true.

Rules:
(Views that the passes before this one made impossible are repaired by passes/repair_views.py,
which runs just before it on every device.)
 1. Fires on CUDA only, on graphs with a 2-D convolution (aten.convolution or an fxc conv op
    with a 4-D weight): cuDNN's NHWC kernels are what tensor cores want; on CPU it never fires.
 2. Conv weights that are constants read only by convs become channels_last constants at
    compile time (no per-call conversion; the contiguous originals are deleted).
 3. A conv whose input (or fused residual) does not arrive channels_last reads
    `aten.clone(x, memory_format=torch.channels_last)`. In a plain conv net that is the first
    conv only, at the graph input side: convs return channels_last for channels_last input,
    and elementwise ops, clone and _to_copy (casts) preserve the format.
 4. A view that cannot read a channels_last tensor (flatten of an H x W > 1 map) reads a
    contiguous clone; a graph output that was contiguous is made contiguous again, so the
    caller sees the strides it saw before.
 5. Measure both graphs on the example inputs (CUDA graph replay where capture works, else
    eager; warm-up, then the best of 3 rounds of ITERS runs, timed with CUDA events) and keep
    channels-last only if it is faster (by MARGIN) and its outputs match. The report says
    both timings. Measured on an H100 (fp16, torch 2.11): ResNet-50 batch 1 0.92 -> 0.37 ms,
    batch 32 3.50 -> 1.36 ms; MobileNetV2 0.40 -> 0.38 ms; ViT-B/16 (one conv) 0.85 -> 0.82.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

from fxc import ir

from . import noops
from .manager import PassContext, PassResult, compare, lowp_problem

aten = torch.ops.aten
CL = torch.channels_last
ITERS, ROUNDS, WARMUP = 10, 3, 3
LOWP_REL = 2e-2  # manager.lowp_problem's default: the reduced-precision contract
MARGIN = 0.02  # channels-last must win by 2%: run-to-run noise of these timings is ~1%


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    return _run(gm, ctx)


def _run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    if ctx.options.device.type != "cuda":
        return PassResult(notes=["not CUDA: layout unchanged"])
    if not any(conv_operands(n) for n in ir.call_nodes(gm)):
        return PassResult(notes=["no 2-D convolution"])
    cand, changes = channels_last_candidate(gm)
    if not changes:
        return PassResult(notes=["already channels_last"])
    inputs = ctx.example_inputs
    (t_now, out_now, how_now), (t_cl, out_cl, how_cl) = measure(gm, inputs), measure(cand, inputs)
    problem = mismatch(out_cl, out_now)
    keep = problem is None and t_cl < t_now * (1 - MARGIN)
    verdict = ("kept channels_last" if keep else
               f"kept contiguous: {problem}" if problem else "kept contiguous: not faster")
    lines = [f"contiguous (NCHW): {t_now:.3f} ms/run ({how_now})",
             f"channels_last (NHWC): {t_cl:.3f} ms/run ({how_cl})", verdict]
    ctx.state.setdefault("report_sections", []).append(("layout", lines))
    stats = dict(contiguous_ms=t_now, channels_last_ms=t_cl, kept=keep)
    if not keep:
        return PassResult(notes=[verdict], stats=stats)
    adopt(gm, cand)
    return PassResult(rewrites=changes, notes=[f"channels_last: {t_cl:.3f} ms vs {t_now:.3f} ms"],
                      stats=stats)


# -- rules 1-4: the channels-last graph ---------------------------------------------------------

def conv_operands(n: fx.Node) -> tuple[list[int], int] | None:
    """(positions of activations, position of the weight) of a 2-D conv node, else None."""
    if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
        return None
    if n.target is aten.convolution.default:
        acts, w = [0], 1
    elif n.target.namespace == "fxc" and "conv" in n.target._opname:
        names = [a.name for a in n.target._schema.arguments]
        acts, w = [0] + ([names.index("residual")] if "residual" in names else []), 1
    else:
        return None
    weight = n.args[w] if len(n.args) > w else None
    val = weight.meta.get("val") if isinstance(weight, fx.Node) else None
    return (acts, w) if isinstance(val, torch.Tensor) and val.dim() == 4 else None


def channels_last_candidate(gm: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of `gm` (sharing its constants) rewritten by rules 2-4; and how many changes."""
    cand = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    graph = cand.graph
    was_contiguous = {n.name: _contiguous(n) for n in gm.graph.nodes}
    changes = _convert_weights(cand)
    for n in list(graph.nodes):
        if n.op == "call_function":
            changes += _rewrite(graph, n)
        elif n.op == "output":
            changes += _restore_outputs(graph, n, was_contiguous)
    cand.recompile()
    return cand, changes


def _convert_weights(cand: fx.GraphModule) -> int:
    converted = 0
    for n in list(cand.graph.nodes):
        if n.op != "get_attr" or not n.users or _is(n, CL):
            continue
        if not all((ops := conv_operands(u)) and u.args[ops[1]] is n
                   and n not in [u.args[i] for i in ops[0]] for u in n.users):
            continue  # read by something else (a view would break on NHWC strides)
        name = _fresh_name(cand, f"{n.target.replace('.', '_')}_cl")
        weight = ir.fetch_attr(cand, n.target).contiguous(memory_format=CL)
        cand.register_buffer(name, weight, persistent=False)
        n.target = name
        with FakeTensorMode(allow_non_fake_inputs=True):
            n.meta["val"] = torch.empty_strided(weight.shape, weight.stride(), dtype=weight.dtype,
                                                device=weight.device)
        converted += 1
    return converted


def _rewrite(graph: fx.Graph, n: fx.Node) -> int:
    changes = 0
    ops = conv_operands(n)
    for i in ops[0] if ops else ():
        x = n.args[i]
        if isinstance(x, fx.Node) and _dim(x) == 4 and not _is(x, CL):
            n.update_arg(i, _clone(graph, x, n, CL))
            changes += 1
    try:
        ir.infer_node_meta(n)
        if ops and n.target.namespace == "fxc" and _is(n.args[0], CL):
            _follow_input_format(n)
    except (RuntimeError, ValueError):  # rule 4: a view NHWC strides cannot serve
        x = n.args[0]
        if not isinstance(x, fx.Node) or _contiguous(x):
            raise
        n.update_arg(0, _clone(graph, x, n, torch.contiguous_format))
        ir.infer_node_meta(n)
        changes += 1
    return changes


def _follow_input_format(n: fx.Node) -> None:
    """fxc conv ops' fake kernels return contiguous strides, but their kernels (cuDNN's fused
    ones, and the aten.convolution reference) return channels_last for channels_last input:
    make the meta say what runs, so later convs and the outputs see the true strides."""
    v = n.meta["val"]
    with FakeTensorMode(allow_non_fake_inputs=True):
        n.meta["val"] = torch.empty(v.shape, dtype=v.dtype, device=v.device).contiguous(
            memory_format=CL)


def _restore_outputs(graph: fx.Graph, out: fx.Node, was_contiguous: dict) -> int:
    clones: dict[fx.Node, fx.Node] = {}

    def restore(a: fx.Node) -> fx.Node:
        if not was_contiguous.get(a.name) or _contiguous(a):
            return a
        if a not in clones:
            clones[a] = _clone(graph, a, out, torch.contiguous_format)
        return clones[a]

    out.args = fx.node.map_arg(out.args, restore)
    return len(clones)


def _clone(graph: fx.Graph, x: fx.Node, before: fx.Node, fmt) -> fx.Node:
    with graph.inserting_before(before):
        return ir.new_call(graph, aten.clone.default, (x,), {"memory_format": fmt},
                           like=before if before.op == "call_function" else x)


def adopt(gm: fx.GraphModule, cand: fx.GraphModule) -> None:
    """Make `gm` the candidate: its graph, its channels_last constants; drop what is unused."""
    for n in cand.graph.nodes:
        if n.op == "get_attr" and not hasattr(gm, n.target):
            gm.register_buffer(n.target, ir.fetch_attr(cand, n.target), persistent=False)
    gm.graph = cand.graph
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_buffers(recurse=False)):
        if name not in used:
            delattr(gm, name)
    gm.recompile()


# -- rule 5: measure -----------------------------------------------------------------------------

def measure(gm: fx.GraphModule, inputs) -> tuple[float, tuple, str]:
    """(ms per run, outputs, 'cuda graph' | 'eager'): best of ROUNDS rounds of ITERS runs."""
    with torch.no_grad():
        for _ in range(WARMUP):
            out = tuple(gm(*inputs))
        torch.cuda.synchronize()
        replay, how = _capture(gm, inputs), "cuda graph"
        if replay is None:
            replay, how = (lambda: gm(*inputs)), "eager"
        best = float("inf")
        for _ in range(ROUNDS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(ITERS):
                replay()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / ITERS)
    return best, out, how


def _capture(gm, inputs):
    """A CUDA graph replay of `gm` (what the torch runtime runs on CUDA), or None if the graph
    cannot be captured (a host sync, a CPU op): launch overhead would then hide the layout."""
    try:
        g = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            gm(*inputs)  # warm on the side stream, as capture requires
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(g):
            gm(*inputs)
        return g.replay
    except Exception:  # any capture failure means: time it eagerly instead
        torch.cuda.synchronize()
        return None


def mismatch(actual: tuple, expected: tuple) -> str | None:
    """Why the channels-last outputs differ, or None. fp32 is held to assert_close unless cuDNN
    runs fp32 convs in TF32 (PyTorch's default), where two algorithms agree to ~1e-3 only;
    reduced precision to manager's lowp contract (fp16's), scaled by the dtype's roundoff
    (bf16's is 8x fp16's: on an H100 MobileNetV2's two layouts differ by 2.8e-2 in bf16)."""
    for i, (a, b) in enumerate(zip(actual, expected)):
        if not isinstance(b, torch.Tensor) or not b.is_floating_point() or (
                b.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32):
            problem = compare(a, b, "fp32")
        else:
            scale = max(1.0, torch.finfo(b.dtype).eps / torch.finfo(torch.float16).eps)
            problem = compare(a, b, "fp32") if a.shape != b.shape else lowp_problem(
                a, b, rel=LOWP_REL * scale)
        if problem:
            return f"output {i}: {problem}"
    return None


# -- helpers ------------------------------------------------------------------------------------

def _is(n: fx.Node, fmt) -> bool:
    v = n.meta.get("val")
    return isinstance(v, torch.Tensor) and v.dim() == 4 and v.is_contiguous(memory_format=fmt)


def _contiguous(n: fx.Node) -> bool:
    v = n.meta.get("val")
    return isinstance(v, torch.Tensor) and v.is_contiguous()


def _dim(n: fx.Node) -> int:
    v = n.meta.get("val")
    return v.dim() if isinstance(v, torch.Tensor) else -1




def _fresh_name(gm, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name

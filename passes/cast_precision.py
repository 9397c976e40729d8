"""Reduced precision: compute in fp16 (or bf16), keeping numerically sensitive ops in fp32.

Invariant: the graph computes what it did, in `options.dtype` where that is safe: every
node whose value was float32 is either computed in half (`options.dtype`) or kept in fp32
(with a reason, listed in the compile report); integer, bool and float64 values are computed
by the same ops as before; with `keep_io_dtype` the inputs and outputs keep their dtypes;
every node's meta["val"] is true; no cast this pass made is undone by the next one; every
view can view its input: where a value's new dtype gives it strides the recorded view cannot
read (CUDA's SDPA kernels differ by dtype, and capture dropped the .contiguous() that was a
no-op then), the view reads a contiguous copy (noops.repair_views; issue 16.9).

Rules, in the order the pass applies them:
 1. Range. Calibration (fp16 only): run the fp32 graph on the example inputs and record each
    value's largest finite |x|; a value over `fp16_overflow_threshold` (3e4 by default: 2x
    headroom under fp16's 65504, for inputs larger than the example) is kept in fp32, and so
    is every node that reads it (a half copy of it would be inf: T5's FFN reaches 66246,
    attention scores can too). bf16 has fp32's exponent range: no calibration, but a node
    with a scalar argument beyond the half dtype's range (HF's finfo(float32).min masks,
    which do not fit even bf16) is kept in fp32 for both. ±inf is exact in half, never counts.
    One exception: an additive attention mask (SDPA's attn_mask) read in half is saturated to
    ±finfo(half).max, which masks as well, so the attention stays in half (MASK_ARGS).
 2. Policy (POLICY, below): "half" ops take half inputs (GEMMs and convolutions: tensor
    cores, fp32 accumulation inside); "fp32" ops take fp32 inputs (softmax, norms,
    reductions, exp/log/pow, rsqrt); "mixed" ops take half activations and fp32 parameters
    and compute in fp32 inside (eval batch norm); "follow" ops (elementwise, views, and any
    op not in the table) compute in fp32 if any float input arrives in fp32, else in half.
    An fxc fused op (fxc::conv2d_act, fxc::linear_act, ...) with float inputs is "half":
    they are GEMM/conv epilogues. A cast the model itself makes from half to float32 stays.
 3. Values that depend on no activation (inputs, weights, arange, masks built from integer
    inputs) are flexible: computed in fp32 if any consumer reads them in fp32, else in half,
    so positions and masks feeding fp32 islands keep their digits.
 4. Casts: one `aten._to_copy(v, dtype=d)` per value and dtype, read from the value as it is
    computed (never a cast of a cast); float weights become half constants at compile time
    (the fp32 originals are deleted once nothing reads them, so their memory halves).
    Cast pairs that cancel exactly (f16 -> f32 -> f16) and casts to the dtype a value already
    has are removed.
 5. Ops with integer, bool or float64 results are left alone; they read their float inputs
    in fp32 where every input is available in fp32 without a cast (inputs, weights, fp32
    nodes), else in half: comparisons and index math on inputs stay exact.

Where it runs: after the fusions, so fused ops get half inputs. Choices made here:
- layer_norm, group_norm and rms_norm (NORMS_FP32_INSIDE) take half inputs where the engine is fxc's
  torch runtime (`norms_in_half`, default: then): ATen's kernels (CUDA and CPU) compute mean
  and variance in fp32 from half inputs and round only the normalized output, so the
  statistics are fp32 as the policy asks, without the casts (bert-base fp16 on an H100: 25
  fp32 layer norms, 50 casts and 24 fp32 residual adds per call). For ONNX Runtime and
  TensorRT they run in fp32 with casts around: their fp16 LayerNormalization overflows after
  attention (TensorRT warns of it). rms_norm: ATen's composite upcasts a half input to fp32
  (opmath) for the statistics and the normalization, rounds once, then applies the weight
  (Llama's own order), and CUDA's fused kernel (aten._fused_rms_norm, torch >= 2.8) keeps
  everything in fp32 inside; an fp32 island would only add a cast on each side (Llama: two
  per norm, 2 x 65 a call at TinyLlama's size), which the generated-kernel pass would then
  have to fuse back.
- On CUDA in half, an exact-erf GELU fused after a linear (fxc::linear_act "gelu") becomes
  "gelu_tanh", which the GEMM's cuBLASLt epilogue computes (`gelu_epilogue`): the forms differ
  by at most 4.7e-4 (at 2.7), under half's rounding there (fp16 ulp 2e-3), and it saves one
  kernel a layer. The report counts them.
- eval batch norm is "mixed": its statistics are constants, and in half var + eps (eps 1e-5)
  falls under fp16's smallest normal (6.1e-5); ATen's mixed kernels (CPU and CUDA) keep the
  parameters fp32 and compute in fp32, so no casts are needed around it.
- rsqrt is fp32 (it ends a norm's statistics: var + eps again); sqrt and div follow: their
  relative error is that of their inputs, and their overflows (x / tiny) are range problems
  that calibration sees.
- gelu, silu, tanh, sigmoid, erf follow: bounded, and ATen computes them in fp32 opmath.
- Calibration sees node outputs only: inside a fused op, a pre-activation value that
  overflows while the activation's output does not is invisible to it.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

from fxc import ir
from fxc.errors import FxcOptionError

from . import noops
from .manager import PassContext, PassResult

aten = torch.ops.aten
F32 = torch.float32
HALF, FP32, FLEX = "half", "fp32", "flex"  # node classes; FLEX is resolved by rule 3

# Rule 2, as data: overload packet -> policy. Not listed: "follow".
POLICY: dict[Any, str] = {
    **{op: "half" for op in (
        aten.convolution, aten.linear, aten.matmul, aten.mm, aten.bmm, aten.addmm,
        aten.baddbmm, aten.mv, aten.dot, aten.embedding, aten.scaled_dot_product_attention,
        aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_efficient_attention,
        aten._scaled_dot_product_cudnn_attention)},
    **{op: "fp32" for op in (
        aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax,
        aten.layer_norm, aten.native_layer_norm, aten.group_norm, aten.native_group_norm,
        aten.rms_norm, aten.instance_norm, aten.batch_norm, aten.native_batch_norm,
        aten._native_batch_norm_legit,
        aten.sum, aten.mean, aten.var, aten.var_mean, aten.std, aten.std_mean, aten.norm,
        aten.linalg_vector_norm, aten.prod, aten.cumsum, aten.cumprod, aten.logsumexp,
        aten.exp, aten.exp2, aten.expm1, aten.log, aten.log2, aten.log10, aten.log1p,
        aten.pow, aten.rsqrt)},
    aten._native_batch_norm_legit_no_training: "mixed",
}
# Rule 2's fp32 ops whose ATen kernels keep the statistics in fp32 on half inputs.
NORMS_FP32_INSIDE = {aten.layer_norm, aten.native_layer_norm, aten.group_norm,
                     aten.native_group_norm, aten.rms_norm, aten._fused_rms_norm}
MIXED_ACTIVATIONS = {aten._native_batch_norm_legit_no_training: (0,)}  # arg positions in half
# Additive attention masks (arg position, kwarg name): there a value beyond half's range means
# "masked" (HF writes finfo(float32).min), and saturating it to half's largest finite value
# keeps that meaning (softmax gives those keys weight 0 either way), so the attention itself
# stays in half rather than following the mask into fp32.
MASK_ARGS = {aten.scaled_dot_product_attention: (3, "attn_mask")}
_LOWP = (torch.float16, torch.bfloat16)


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    opts = ctx.options
    if opts.precision == "fp32":
        return PassResult(notes=["precision fp32: nothing to cast"])
    low, threshold = opts.dtype, _threshold(opts)
    origin = {n: _dtype(n) for n in gm.graph.nodes}
    if not any(n.op == "call_function" and origin[n] == F32 for n in gm.graph.nodes):
        return PassResult(notes=["no float32 computation"])
    peaks = calibrate(gm, ctx.example_inputs) if threshold is not None else {}
    flagged = {n: (p, f"calibration: max |value| {p:.4g} over the threshold {threshold:g}")
               for n, p in peaks.items() if p > threshold}
    flagged.update(out_of_range_constants(gm, origin, low))
    half_norms = NORMS_FP32_INSIDE if _norms_in_half(opts) else set()
    cls, why = classify(gm, origin, flagged, opts.keep_io_dtype, half_norms)
    rw = _Rewriter(gm, origin, cls, low, opts.keep_io_dtype, flagged)
    rw.rewrite(ctx)
    cancelled = drop_cancelling_casts(gm)
    rw.views_repaired += noops.repair_views(gm)  # a dropped cast can hand a view other strides
    freed = rw.drop_replaced_constants()
    tanh = tanh_gelu_epilogues(gm, low) if opts.device.type == "cuda" and opts.gelu_epilogue \
        else 0
    lines = _report_lines(gm, origin, why)
    ctx.state.setdefault("report_sections", []).append(
        (f"{opts.precision}: kept in fp32 ({len(lines)} of {rw.float_nodes} float nodes)",
         (lines or ["(none)"]) + _choice_lines(gm, low, half_norms, tanh)))
    result = _result(gm, opts.precision, low, rw, flagged, len(lines), cancelled, freed)
    result.stats["tanh_gelu_epilogues"] = tanh
    result.stats["views_copied"] = len(rw.views_repaired)
    if rw.views_repaired:
        result.notes.append(f"{len(rw.views_repaired)} view(s) read a contiguous copy: their "
                            f"input's {_short(low)} layout cannot be viewed so "
                            f"({', '.join(rw.views_repaired[:5])})")
    return result


def _norms_in_half(opts) -> bool:
    """norms_in_half, or (None) whether the engine will be fxc's torch runtime."""
    from fxc.backends import engine_is_torch
    return opts.norms_in_half if opts.norms_in_half is not None else engine_is_torch(opts)


def tanh_gelu_epilogues(gm: fx.GraphModule, low: torch.dtype) -> int:
    """fxc::linear_act(..., "gelu") computing in half -> "gelu_tanh" (the epilogue's form)."""
    n_done = 0
    for n in ir.call_nodes(gm):
        if n.target is torch.ops.fxc.linear_act.default and n.args[3] == "gelu" \
                and _dtype(n) == low:
            n.args = (*n.args[:3], "gelu_tanh")
            n_done += 1
    return n_done


def _choice_lines(gm, low, half_norms, tanh) -> list[str]:
    out = []
    norms = [n for n in ir.call_nodes(gm)
             if getattr(n.target, "overloadpacket", None) in half_norms and _dtype(n) == low]
    if norms:
        out.append(f"({len(norms)} layer/group/rms norm(s) read {_short(low)}: their kernels keep "
                   f"the statistics in fp32)")
    if tanh:
        out.append(f"({tanh} exact GELU(s) after a linear run as the tanh form in the GEMM "
                   f"epilogue: |difference| <= 4.7e-4; gelu_epilogue=False keeps them exact)")
    return out


def _result(gm, precision, low, rw, flagged, kept, cancelled, freed) -> PassResult:
    half = sum(1 for n in ir.call_nodes(gm) if _dtype(n) == low)
    notes = [f"{half} nodes in {precision}, {kept} kept in fp32",
             f"{rw.casts} casts ({cancelled} cancelling removed)",
             f"{rw.constants} constants converted ({freed} fp32 freed)"]
    if flagged:
        notes.append(f"{len(flagged)} value(s) out of {precision}'s safe range kept in fp32")
    if rw.saturated:
        notes.append(f"{rw.saturated} attention mask(s) saturated to {precision}'s range")
    stats = dict(half_nodes=half, fp32_nodes=kept, casts=rw.casts, cancelled=cancelled,
                 constants=rw.constants, freed=freed,
                 calibration={n.name: p for n, (p, _) in flagged.items()})
    return PassResult(rewrites=rw.changes + rw.casts + rw.constants + cancelled, notes=notes,
                      stats=stats)


def _threshold(opts) -> float | None:
    t = opts.fp16_overflow_threshold
    if not t > 0:
        raise FxcOptionError(f"fp16_overflow_threshold={t!r}: expected a positive number "
                             f"(math.inf switches the overflow check off)")
    if opts.dtype != torch.float16 or math.isinf(t):
        return None  # bf16 has fp32's range; inf: the caller switched the check off
    return float(t)


# -- rule 1: calibration ------------------------------------------------------------------------

class _Peaks(fx.Interpreter):
    """Runs the graph, recording each float value's largest finite |x| (tuples: over items)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.peaks: dict[fx.Node, float] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        peak = _peak(out)
        if peak is not None:
            self.peaks[n] = peak
        return out


def _peak(v) -> float | None:
    if isinstance(v, (tuple, list)):
        peaks = [p for p in map(_peak, v) if p is not None]
        return max(peaks) if peaks else None
    if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.numel() == 0:
        return None
    a = v.detach().abs()
    peak = a.max().item()
    return peak if math.isfinite(peak) else torch.where(torch.isfinite(a), a, 0).max().item()


def out_of_range_constants(gm, origin, low) -> dict[fx.Node, tuple[float, str]]:
    """Nodes with a finite scalar argument beyond `low`'s range (masks of finfo(float32).min,
    `x * 1e5`): in half they would be inf, or refuse to run. Needs no calibration, so it
    holds for bf16 and with the check off."""
    big = torch.finfo(low).max
    out = {}
    for n in ir.call_nodes(gm):
        if origin.get(n) != F32:
            continue
        worst = max((abs(a) for a in _value_scalars(n) if math.isfinite(a)), default=0.0)
        if worst > big:
            out[n] = (float(worst), f"range: its constant {worst:.4g} does not fit "
                                    f"{str(low).replace('torch.', '')}")
    return out


def _value_scalars(n: fx.Node) -> list[float]:
    """Python numbers `n` computes with: those in Tensor, Scalar or float slots of its schema
    (not sizes, dims or slice bounds, whose int slots may hold sys.maxsize)."""
    schema = getattr(n.target, "_schema", None)
    if schema is None:
        return []
    out = []
    for i, arg in enumerate(schema.arguments):
        v = n.args[i] if i < len(n.args) and not arg.kwarg_only else n.kwargs.get(arg.name)
        if (isinstance(v, (int, float)) and not isinstance(v, bool)
                and str(arg.type).rstrip("?") in ("Tensor", "Scalar", "float")):
            out.append(v)
    return out


def calibrate(gm: fx.GraphModule, example_inputs) -> dict[fx.Node, float]:
    """node -> largest finite |value| it takes on `example_inputs`, for float values."""
    interp = _Peaks(gm)
    with torch.no_grad():
        interp.run(*example_inputs)
    return interp.peaks


# -- rules 2 and 3: which nodes compute in half, which in fp32 ----------------------------------

def policy(node: fx.Node) -> str:
    """'half' | 'fp32' | 'mixed' | 'follow' for a call_function node (rule 2)."""
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        if t.namespace == "fxc":
            return "half" if any(_is_float(a) for a in node.all_input_nodes) else "follow"
        return POLICY.get(t.overloadpacket, "follow")
    return "follow"


def classify(gm, origin, flagged, keep_io, half_norms=frozenset()) -> tuple[dict, dict]:
    """cls: node -> HALF | FP32 for every node whose value was float32 (sources: FLEX or FP32);
    why: node -> the reason it is FP32. `half_norms`: fp32-policy ops read in half instead."""
    cls: dict[fx.Node, str] = {}
    why: dict[fx.Node, str] = {}
    for n in gm.graph.nodes:
        if origin.get(n) != F32 or n.op not in ("placeholder", "get_attr", "call_function"):
            continue
        c, reason = _class_of(n, origin, cls, flagged, half_norms)
        cls[n] = c
        if reason:
            why[n] = reason
    _resolve_flexible(gm, cls, why, keep_io)
    return cls, why


def _class_of(n, origin, cls, flagged, half_norms=frozenset()) -> tuple[str, str | None]:
    if n in flagged:
        return FP32, flagged[n][1]
    if n.op != "call_function":
        return FLEX, None
    if n.target is operator.getitem:
        parent = n.args[0]
        c = cls.get(parent, FP32)
        return c, _why_parent(parent) if c == FP32 else None
    big = next((a for pos, a in _reads(n) if a in flagged and not _saturates(n, pos)), None)
    if big is not None:
        kind = flagged[big][1].split(":")[0]
        return FP32, f"{kind}: reads %{big.name} (|value| up to {flagged[big][0]:.4g})"
    p = policy(n)
    if p in ("half", "mixed") or (p == "fp32" and n.target.overloadpacket in half_norms):
        return HALF, None
    if p == "fp32":
        return FP32, f"policy: {n.target.overloadpacket.__name__} runs in fp32"
    src = n.args[0] if n.target is aten._to_copy.default else None
    if _is_float(src) and origin.get(src) != F32:
        return FP32, f"the model's own cast from {str(origin[src]).replace('torch.', '')}"
    votes = [_vote(a, cls) for a in n.all_input_nodes if _is_float(a)]
    if FP32 in votes:
        first = next(a for a in n.all_input_nodes if _is_float(a) and _vote(a, cls) == FP32)
        return FP32, f"follows its fp32 input %{first.name}"
    return (HALF, None) if HALF in votes else (FLEX, None)


def _why_parent(parent: fx.Node) -> str:
    return f"an output of %{parent.name}"


def _vote(a: fx.Node, cls) -> str | None:
    if a in cls:
        return None if cls[a] == FLEX else cls[a]
    return HALF if _dtype(a) in _LOWP else None


def _resolve_flexible(gm, cls, why, keep_io) -> None:
    """Rule 3: a flexible node is fp32 if any consumer reads it in fp32 (last to first)."""
    for n in reversed(gm.graph.nodes):
        if n.op != "call_function" or cls.get(n) != FLEX:
            continue
        wants = [(u, _wants(u, n, cls, keep_io)) for u in n.users]
        fp32_user = next((u for u, w in wants if w == FP32), None)
        cls[n] = FP32 if fp32_user is not None else HALF
        if fp32_user is not None:
            why[n] = ("a graph output" if fp32_user.op == "output"
                      else f"depends on no activation; %{fp32_user.name} reads it in fp32")
    for n in gm.graph.nodes:  # a tuple's items share its class
        if n.op == "call_function" and n.target is operator.getitem and n.args[0] in cls:
            cls[n] = cls[n.args[0]]
            if cls[n] == FP32 and n not in why:
                why[n] = _why_parent(n.args[0])


def _wants(user: fx.Node, value: fx.Node, cls, keep_io) -> str:
    if user.op == "output":
        return FP32 if keep_io else HALF
    c = cls.get(user)
    if c is None:
        return FP32  # rule 5: an untouched op reads exact inputs where it can
    if c == HALF and policy(user) == "mixed":
        act = MIXED_ACTIVATIONS[user.target.overloadpacket]
        return HALF if any(user.args[i] is value for i in act if i < len(user.args)) else FP32
    return c if c != FLEX else HALF


# -- rules 4 and 5: rewriting --------------------------------------------------------------------

class _Rewriter:
    """Walks the graph once, first to last, making every node read the dtype its class wants."""

    def __init__(self, gm, origin, cls, low, keep_io, flagged):
        self.gm, self.graph, self.origin, self.cls = gm, gm.graph, origin, cls
        self.flagged = flagged
        self.low, self.keep_io = low, keep_io
        self.versions: dict[tuple[fx.Node, torch.dtype], fx.Node] = {}
        self.replaced: list[fx.Node] = []  # get_attr nodes that got a half twin
        self.casts = self.constants = self.changes = self.saturated = 0
        self.float_nodes = 0
        self.views_repaired: list[str] = []  # views that now read a contiguous copy
        self.entry = next((n for n in gm.graph.nodes if n.op not in ("placeholder", "get_attr")))
        # a symbolic graph's new metas live in the mode owning its symbols (ir.symbolic_mode)
        self.mode = ir.symbolic_mode(n.meta.get("val") for n in gm.graph.nodes
                                     if n.op == "placeholder") or FakeTensorMode(allow_non_fake_inputs=True)

    def rewrite(self, ctx: PassContext) -> None:
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        for n in list(self.graph.nodes):
            if n.op == "placeholder" and not self.keep_io and self.cls.get(n) == FLEX:
                self._retype_input(n, placeholders.index(n), ctx)
            elif n.op == "call_function":
                self.float_nodes += self.origin.get(n) == F32 and n.target is not operator.getitem
                self._rewrite_call(n)
            elif n.op == "output":
                self._rewrite_output(n)

    def _retype_input(self, n, i, ctx) -> None:
        """keep_io_dtype=False: the caller passes half inputs (the example inputs follow)."""
        n.meta["val"] = self._fake(n.meta["val"], self.low)
        ctx.example_inputs[i] = ctx.example_inputs[i].to(self.low)
        self.changes += 1

    def _read_dtype(self, n: fx.Node, pos) -> torch.dtype:
        """The dtype `n` reads its fp32-origin float input at `pos` (arg index or kwarg name) in."""
        c = self.cls.get(n)
        if c == FP32:
            return F32
        if c == HALF:
            act = MIXED_ACTIVATIONS.get(n.target.overloadpacket) if policy(n) == "mixed" else None
            return self.low if act is None or pos in act else F32
        ins = [a for a in n.all_input_nodes if self._fp32_origin(a)]  # rule 5
        exact = all(_dtype(a) == F32 or a.op == "get_attr" for a in ins)
        return F32 if exact else self.low

    def _rewrite_call(self, n: fx.Node) -> None:
        if n.target is operator.getitem:
            if _dtype(n.args[0]) != self.origin.get(n.args[0]):
                self._infer(n)
            return
        args = tuple(self._read(a, self._read_dtype(n, i), _saturates(n, i))
                     for i, a in enumerate(n.args))
        kwargs = {k: self._read(v, self._read_dtype(n, k), _saturates(n, k))
                  for k, v in n.kwargs.items()}
        if self.cls.get(n) == HALF:
            _retarget_dtype(n, kwargs, self.low)
        changed = args != n.args or kwargs != dict(n.kwargs)
        retyped = any(_dtype(a) != self.origin.get(a) for a in n.all_input_nodes)
        if changed:
            n.args, n.kwargs = args, kwargs
            self.changes += 1
        if changed or retyped:
            self._infer(n)

    def _infer(self, n: fx.Node) -> None:
        """ir.infer_node_meta, with one fake mode for the whole walk (its op cache is kept)."""
        fakes = {}

        def fake(a: fx.Node):
            v = a.meta["val"]
            if isinstance(v, torch.Tensor):
                if a not in fakes:
                    fakes[a] = self._fake(v, v.dtype)
                return fakes[a]
            return v

        args, kwargs = fx.node.map_arg((n.args, n.kwargs), fake)
        if n.target in noops.VIEW_OPS and not noops.viewable(args[0], args[1]):
            # The input's new dtype gave it other strides (CUDA's SDPA kernels differ by
            # dtype) and the view the capture recorded is impossible now: read a copy.
            noops.read_contiguous(self.graph, n)
            self.views_repaired.append(n.name)
            args = (fake(n.args[0]),) + tuple(args[1:])
        n.meta["val"] = ir.fake_call(n.target, args, kwargs, self.mode)

    def _read(self, a, dtype, saturate=False):
        if isinstance(a, (list, tuple)):
            return type(a)(self._read(x, dtype, saturate) for x in a)
        if isinstance(a, fx.Node) and self._fp32_origin(a):
            if saturate and a in self.flagged and dtype != F32:
                return self._saturated(a, dtype)
            return self.version(a, dtype)
        return a

    def _fp32_origin(self, a: fx.Node) -> bool:
        return isinstance(a, fx.Node) and self.origin.get(a) == F32 and isinstance(
            a.meta.get("val"), torch.Tensor)

    def _rewrite_output(self, out: fx.Node) -> None:
        if not self.keep_io:
            return
        out.args = fx.node.map_arg(
            out.args, lambda a: self.version(a, F32) if self._fp32_origin(a) else a)

    def version(self, v: fx.Node, dtype: torch.dtype) -> fx.Node:
        """`v` as `dtype`: itself, a half constant made now, or one cast node (cached)."""
        if _dtype(v) == dtype:
            return v
        key = (v, dtype)
        if key not in self.versions:
            make = self._constant if v.op == "get_attr" else self._cast
            self.versions[key] = make(v, dtype)
        return self.versions[key]

    def _cast(self, v: fx.Node, dtype) -> fx.Node:
        with self.graph.inserting_before(self.entry if v.op == "placeholder" else v.next):
            cast = ir.new_call(self.graph, aten._to_copy.default, (v,), {"dtype": dtype}, like=v)
        self.casts += 1
        return cast

    def _saturated(self, v: fx.Node, dtype) -> fx.Node:
        """A mask read in half: clamp to ±finfo(dtype).max, then cast (MASK_ARGS says why)."""
        key = (v, dtype, "saturated")
        if key not in self.versions:
            src, big = self.version(v, F32), torch.finfo(dtype).max
            with self.graph.inserting_before(self.entry if src.op == "placeholder" else src.next):
                clamp = ir.new_call(self.graph, aten.clamp.default, (src, -big, big), like=v)
                self.versions[key] = ir.new_call(self.graph, aten._to_copy.default, (clamp,),
                                                 {"dtype": dtype}, like=v)
            self.saturated += 1
            self.casts += 1
        return self.versions[key]

    def _constant(self, v: fx.Node, dtype) -> fx.Node:
        tensor = ir.fetch_attr(self.gm, v.target).detach().to(dtype)
        name = _fresh_name(self.gm, f"{v.target.replace('.', '_')}_{_short(dtype)}")
        self.gm.register_buffer(name, tensor, persistent=False)
        with self.graph.inserting_after(v):
            node = self.graph.get_attr(name)
        node.meta.update({k: x for k, x in v.meta.items() if k != "val"})
        node.meta["val"] = self._fake(v.meta["val"], dtype)
        self.replaced.append(v)
        self.constants += 1
        return node

    def _fake(self, val: torch.Tensor, dtype) -> torch.Tensor:
        with self.mode:
            return torch.empty_strided(val.shape, val.stride(), dtype=dtype, device=val.device)

    def drop_replaced_constants(self) -> int:
        """Delete fp32 originals nothing reads any more (their half twin replaced them)."""
        freed = 0
        for v in self.replaced:
            if v.users:
                continue
            target = v.target
            self.graph.erase_node(v)
            if not any(n.op == "get_attr" and n.target == target for n in self.graph.nodes):
                _delete(self.gm, target)
                freed += 1
        return freed


def _retarget_dtype(n: fx.Node, kwargs: dict, low) -> None:
    """A node computed in half whose float32 result comes from a dtype argument (casts and
    factories: `_to_copy`, `full`, `arange`, `scalar_tensor`): ask for `low` instead."""
    schema = getattr(n.target, "_schema", None)
    factory = not any(_is_float(a) for a in n.all_input_nodes) and "dtype" not in kwargs and (
        schema is not None and any(a.name == "dtype" and a.kwarg_only for a in schema.arguments))
    if kwargs.get("dtype") == F32 or factory:  # a factory without dtype makes float32
        kwargs["dtype"] = low


def drop_cancelling_casts(gm: fx.GraphModule) -> int:
    """Remove `_to_copy` casts that change nothing: x -> wider -> x's dtype (an exact round
    trip: the second cast reads x itself) and casts to the dtype their input already has.
    A graph output keeps its cast where dropping it would return an input, a constant or
    another output itself (the caller would get an alias, not a fresh tensor)."""
    removed = 0
    for c in list(gm.graph.nodes):
        if not _is_plain_cast(c):
            continue
        src = c.args[0]
        if _is_plain_cast(src) and _widens(_dtype(src.args[0]), _dtype(src)):
            src = src.args[0]
        if _dtype(src) != _dtype(c):
            continue
        if _is_output(c) and (src.op != "call_function" or _is_output(src)):
            continue
        c.replace_all_uses_with(src)
        removed += 1
    for c in reversed(list(gm.graph.nodes)):
        if _is_plain_cast(c) and not c.users:
            gm.graph.erase_node(c)
    return removed


def _is_plain_cast(n) -> bool:
    """A `_to_copy` that only changes dtype (no device, layout or memory format), tensor in
    and out."""
    return (isinstance(n, fx.Node) and n.op == "call_function"
            and n.target is aten._to_copy.default and set(n.kwargs) <= {"dtype"}
            and isinstance(n.meta.get("val"), torch.Tensor) and isinstance(n.args[0], fx.Node)
            and isinstance(n.args[0].meta.get("val"), torch.Tensor))


def _widens(a: torch.dtype | None, b: torch.dtype | None) -> bool:
    """Every value of dtype a is exactly a value of dtype b."""
    wider = {torch.float16: (F32, torch.float64), torch.bfloat16: (F32, torch.float64),
             F32: (torch.float64,)}
    return b in wider.get(a, ())


def _is_output(n: fx.Node) -> bool:
    return any(u.op == "output" for u in n.users)


# -- helpers ------------------------------------------------------------------------------------

def _dtype(n) -> torch.dtype | None:
    """A node's tensor dtype; for a tuple, its first float item's (None: not a tensor)."""
    v = n.meta.get("val") if isinstance(n, fx.Node) else None
    if isinstance(v, torch.Tensor):
        return v.dtype
    if isinstance(v, (tuple, list)):
        ds = [x.dtype for x in v if isinstance(x, torch.Tensor)]
        return next((d for d in ds if d.is_floating_point), ds[0] if ds else None)
    return None


def _reads(n: fx.Node):
    """(position, input node) for every node `n` reads: arg index or kwarg name."""
    for pos, a in list(enumerate(n.args)) + list(n.kwargs.items()):
        for x in (a if isinstance(a, (list, tuple)) else [a]):
            if isinstance(x, fx.Node):
                yield pos, x


def _saturates(n: fx.Node, pos) -> bool:
    t = n.target
    return isinstance(t, torch._ops.OpOverload) and pos in MASK_ARGS.get(t.overloadpacket, ())


def _is_float(n) -> bool:
    d = _dtype(n)
    return d is not None and d.is_floating_point and isinstance(n.meta.get("val"), torch.Tensor)


def _short(dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", F32: "fp32"}[dtype]




def _delete(gm, target: str) -> None:
    *path, last = target.split(".")
    owner = gm
    for part in path:
        owner = getattr(owner, part)
    delattr(owner, last)


def _fresh_name(gm, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _report_lines(gm, origin, why) -> list[str]:
    """'node (op): reason' for every node that computed float32 and still does (the casts
    this pass made are not listed: they were not in the graph)."""
    lines = []
    for n in ir.call_nodes(gm):
        if n.target is operator.getitem or origin.get(n) != F32 or _dtype(n) != F32:
            continue
        reason = why.get(n, "its result is float32 whatever its inputs (no dtype argument)")
        lines.append(f"{n.name} ({ir.op_name(n)}): {reason}")
    return lines

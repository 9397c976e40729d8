"""Reduced precision (passes/cast_precision.py): which nodes run in half and which in fp32, the
casts, calibration against fp16 overflow, dtypes at the edges, where it must not fire.

Numerics oracle: the fp32 graph before the pass, on the same inputs. Tolerance (relative norm
error ||a - b|| / ||b||, manager.lowp_problem, plus "no inf/NaN where fp32 is finite"):
- hand-written graphs: 2e-2 for fp16 and bf16 (manager's lowp contract);
- generated graphs: GEN_TOL below (4.7e-2 fp16, 0.375 bf16): a drawn op may sum terms up to
  16x its result (fxc.testing's CANCEL_RATIO), so rounding is amplified up to 16x per op;
- zoo models: tests/test_pass_cast_precision.py::ZOO_TOL below, with the measured errors.
"""
import copy
import math

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functionalize
from torch.fx.experimental.proxy_tensor import make_fx

import fxc
import fxc.ops  # noqa: F401  (torch.ops.fxc.*)
from fxc import decomp, ir
from fxc.capture import capture
from fxc.models import get, names
from fxc.options import resolve
from fxc.passes import PassContext, cast_precision
from fxc.passes.manager import lowp_problem
from fxc.testing import graphs
from fxc.testing.program import CANCEL_RATIO

aten = torch.ops.aten
LOW = {"fp16": torch.float16, "bf16": torch.bfloat16}


def ctx_for(inputs, precision="fp16", **opts):
    o = resolve(device=None, precision=precision, backend="torch", verify=False, dump_dir=None,
                disable_passes=(), default_device=torch.device("cpu"), **opts)
    return PassContext(o, list(inputs))


_CAPTURED: dict = {}


def captured(model, *inputs):
    """capture(model) once per architecture and input shapes (1-2 s each on torch 2.13); each
    test rewrites its own copy."""
    key = (repr(model), tuple((tuple(x.shape), x.dtype) for x in inputs))
    if key not in _CAPTURED:
        torch.manual_seed(0)
        _CAPTURED[key] = capture(model.eval(), tuple(inputs), {}).gm
    return copy.deepcopy(_CAPTURED[key])


def run_pass(gm, inputs, precision="fp16", **opts):
    """(outputs before, outputs after, result, ctx): the pass on gm, in place."""
    with torch.no_grad():
        before = tuple(gm(*inputs))
    ctx = ctx_for(inputs, precision, **opts)
    result = cast_precision.run(gm, ctx)
    gm.recompile()
    ir.lint(gm, "cast_precision")
    with torch.no_grad():
        after = tuple(gm(*ctx.example_inputs))
    return before, after, result, ctx


def calls(gm, target):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]


def dtype(n):
    return n.meta["val"].dtype


def cancelling_casts(gm) -> list[str]:
    """Casts that change nothing: f16 -> f32 -> f16 round trips and casts to the same dtype."""
    bad = []
    for c in calls(gm, aten._to_copy.default):
        src = c.args[0]
        if set(c.kwargs) <= {"dtype"} and dtype(src) == dtype(c) and not any(
                u.op == "output" for u in c.users):
            bad.append(f"identity {c.name}")
        if (src.op == "call_function" and src.target is aten._to_copy.default
                and dtype(src.args[0]) == dtype(c) and dtype(src) == torch.float32
                and dtype(c) in (torch.float16, torch.bfloat16)):
            bad.append(f"round trip {src.args[0].name} -> {src.name} -> {c.name}")
    return bad


def fp32_report(ctx) -> list[str]:
    (title, lines), = [s for s in ctx.state["report_sections"] if "kept in fp32" in s[0]]
    return lines


# -- structure on hand-written models -------------------------------------------------------------

class Block(nn.Module):
    """linear -> softmax -> linear -> residual add -> layer_norm: a transformer's skeleton."""

    def __init__(self, d=16):
        super().__init__()
        self.q, self.o, self.ln = nn.Linear(d, d), nn.Linear(d, d), nn.LayerNorm(d)

    def forward(self, x):
        a = torch.softmax(self.q(x), dim=-1)
        return self.ln(x + self.o(a))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gemms_in_half_sensitive_ops_in_fp32_with_casts_around(precision):
    low, x = LOW[precision], torch.randn(2, 4, 16)
    gm = captured(Block(), x)
    before, after, result, ctx = run_pass(gm, [x], precision, norms_in_half=False)
    linears = calls(gm, aten.linear.default)
    assert len(linears) == 2 and all(dtype(n) == low for n in linears)
    assert all(dtype(a) == low for n in linears for a in n.all_input_nodes)  # weights too
    (sm,), (ln,) = calls(gm, aten.softmax.int), calls(gm, aten.layer_norm.default)
    assert dtype(sm) == dtype(ln) == torch.float32
    # fp32 islands read fp32 casts of half values, and half ops read half casts of fp32 ones
    assert sm.args[0].target is aten._to_copy.default and dtype(sm.args[0].args[0]) == low
    assert linears[1].args[0].target is aten._to_copy.default and linears[1].args[0].args[0] is sm
    assert not cancelling_casts(gm)
    assert all(a.dtype == torch.float32 for a in after)  # keep_io_dtype
    assert lowp_problem(after[0], before[0]) is None
    lines = fp32_report(ctx)
    assert any(x.startswith("softmax (aten.softmax.int): policy") for x in lines)
    assert any(x.startswith("layer_norm (aten.layer_norm.default): policy") for x in lines)
    assert result.rewrites > 0


@pytest.mark.parametrize("backend,norms_in_half,expect_half", [
    ("torch", None, True), ("onnxruntime", None, False), ("torch", False, False),
    ("onnxruntime", True, True)])
def test_layer_norm_reads_half_where_its_kernel_keeps_fp32_statistics(backend, norms_in_half,
                                                                     expect_half):
    x = torch.randn(2, 4, 16)
    gm = captured(Block(), x)
    o = resolve(device=None, precision="fp16", backend=backend, verify=False, dump_dir=None,
                disable_passes=(), default_device=torch.device("cpu"),
                norms_in_half=norms_in_half)
    before = tuple(gm(x))
    c = PassContext(o, [x])
    cast_precision.run(gm, c)
    gm.recompile()
    ir.lint(gm, "cast_precision")
    (sm,), (ln,) = calls(gm, aten.softmax.int), calls(gm, aten.layer_norm.default)
    assert dtype(sm) == torch.float32  # softmax keeps the policy's fp32 either way
    assert dtype(ln) == (torch.float16 if expect_half else torch.float32)
    if expect_half:  # half in, half weights, no cast pair around it
        assert all(dtype(a) == torch.float16 for a in ln.all_input_nodes)
        assert any("layer/group/rms norm(s) read fp16" in line for line in fp32_report(c))
        assert not any(x.startswith("layer_norm (") for x in fp32_report(c))
    after = tuple(gm(*c.example_inputs))
    assert lowp_problem(after[0], before[0]) is None


class RMSBlock(nn.Module):
    """A linear, Llama's RMSNorm (recognized as aten.rms_norm), a linear."""

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 16)
        self.w = nn.Parameter(torch.rand(16) + 0.5)

    def forward(self, x):
        h = self.fc(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.fc2(self.w * h)


@pytest.mark.parametrize("backend,expect_half", [("torch", True), ("onnxruntime", False)])
def test_rms_norm_reads_half_on_the_torch_runtime(backend, expect_half):
    """ATen's rms_norm keeps its statistics in fp32 on half inputs (and CUDA's fused kernel
    all of it): no fp32 island, no cast pair around it, where fxc's torch runtime runs it."""
    from fxc.passes import recognize_norm_act
    x = torch.randn(2, 4, 16)
    gm = captured(RMSBlock(), x)
    recognize_norm_act.run(gm, ctx_for([x], precision="fp32"))
    gm.recompile()
    (rms,) = calls(gm, aten.rms_norm.default)
    before = tuple(gm(x))
    o = resolve(device=None, precision="fp16", backend=backend, verify=False, dump_dir=None,
                disable_passes=(), default_device=torch.device("cpu"))
    c = PassContext(o, [x])
    cast_precision.run(gm, c)
    gm.recompile()
    ir.lint(gm, "cast_precision")
    assert dtype(rms) == (torch.float16 if expect_half else torch.float32)
    casts = calls(gm, aten._to_copy.default)
    if expect_half:
        assert all(dtype(a) == torch.float16 for a in rms.all_input_nodes)
        assert len(casts) == 2, gm.code  # the graph's input in, its output back: nothing else
        assert any("layer/group/rms norm(s) read fp16" in line for line in fp32_report(c))
    after = tuple(gm(*c.example_inputs))
    assert lowp_problem(after[0], before[0]) is None


class LinearGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc(x)))


@pytest.mark.parametrize("device,flag,expect", [("cuda", True, "gelu_tanh"),
                                                ("cuda", False, "gelu"), ("cpu", True, "gelu")])
def test_exact_gelu_epilogue_becomes_tanh_only_on_cuda_half(device, flag, expect):
    from fxc.options import CompileOptions
    from fxc.passes import fuse_linear
    x = torch.randn(3, 16)
    gm = captured(LinearGelu(), x)
    o = CompileOptions(device=torch.device(device), precision="fp16", backend="torch",
                       gelu_epilogue=flag)
    c = PassContext(o, [x])
    fuse_linear.run(gm, c)
    before = tuple(gm(x))
    result = cast_precision.run(gm, c)
    gm.recompile()
    ir.lint(gm, "cast_precision")
    (fused,) = calls(gm, torch.ops.fxc.linear_act.default)
    assert fused.args[3] == expect
    assert result.stats["tanh_gelu_epilogues"] == (expect == "gelu_tanh")
    after = tuple(gm(*c.example_inputs))  # the reference kernels run on CPU: numbers hold
    assert lowp_problem(after[0], before[0]) is None


def test_weights_become_half_constants_and_fp32_originals_are_freed():
    x = torch.randn(3, 16)
    gm = captured(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), x)
    nbytes = lambda: sum(b.numel() * b.element_size() for b in gm.buffers())  # noqa: E731
    fp32_bytes = nbytes()
    run_pass(gm, [x])
    assert all(b.dtype == torch.float16 for b in gm.buffers())
    assert nbytes() * 2 == fp32_bytes
    assert {n.target for n in gm.graph.nodes if n.op == "get_attr"} == set(dict(gm.named_buffers()))


def test_eval_batch_norm_reads_half_activations_and_fp32_parameters():
    x = torch.randn(2, 3, 8, 8)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    m[1].running_var.uniform_(1e-6, 1e-5)  # var + eps below fp16's smallest normal (6.1e-5)
    gm = captured(m, x)
    before, after, _, _ = run_pass(gm, [x])
    (bn,) = calls(gm, aten._native_batch_norm_legit_no_training.default)
    assert dtype(bn.args[0]) == torch.float16 and bn.args[0].target is aten.convolution.default
    assert all(dtype(p) == torch.float32 and p.op == "get_attr" for p in bn.args[1:5])
    assert len(calls(gm, aten._to_copy.default)) == 2  # the input, the output; none around bn
    assert lowp_problem(after[0], before[0]) is None


def test_fused_fxc_ops_run_in_half():
    x = torch.randn(4, 8)
    g = fx.Graph()
    xp = g.placeholder("x")
    xp.meta["val"] = x
    w = g.get_attr("w")
    y = g.call_function(torch.ops.fxc.linear_act.default, (xp, w, None, "gelu"))
    g.output((y,))
    root = nn.Module()
    root.register_buffer("w", torch.randn(6, 8))
    gm = fx.GraphModule(root, g)
    ir.infer_meta(gm)
    before, after, _, _ = run_pass(gm, [x])
    (fused,) = calls(gm, torch.ops.fxc.linear_act.default)
    assert dtype(fused) == torch.float16 and cast_precision.policy(fused) == "half"
    assert lowp_problem(after[0], before[0]) is None


class Masked(nn.Module):
    """HF's extended attention mask ((1 - mask) * finfo(float32).min) into SDPA."""

    def __init__(self, d=8):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x, mask):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, T, d) each
        add = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        return F.scaled_dot_product_attention(q, k, v, attn_mask=add)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_attention_mask_of_float32_min_is_saturated_not_inf_and_sdpa_stays_half(precision):
    x, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    gm = captured(Masked(), x, mask)
    before, after, _, ctx = run_pass(gm, [x, mask], precision)
    (sdpa,) = calls(gm, aten.scaled_dot_product_attention.default)
    assert dtype(sdpa) == LOW[precision]
    cast = sdpa.args[3]
    assert cast.target is aten._to_copy.default and cast.args[0].target is aten.clamp.default
    assert lowp_problem(after[0], before[0]) is None
    assert any("range: its constant 3.403e+38" in x for x in fp32_report(ctx))


# -- calibration --------------------------------------------------------------------------------

class Overflow(nn.Module):
    """x * 5e4 is ~1e5 for |x| ~ 2: past fp16's 65504, though 5e4 itself fits."""

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(self.fc(x * 5e4) / 5e4)


def overflow_input():
    return torch.linspace(-3, 3, 32).reshape(4, 8)


def test_calibration_keeps_overflowing_activation_and_its_readers_in_fp32():
    x = overflow_input()
    gm = captured(Overflow(), x)
    before, after, result, ctx = run_pass(gm, [x])
    (mul,), (fc, fc2), (div,) = (calls(gm, aten.mul.Tensor), calls(gm, aten.linear.default),
                                 calls(gm, aten.div.Tensor))
    assert dtype(mul) == dtype(fc) == dtype(div) == torch.float32
    assert dtype(fc2) == torch.float16  # small again: back to half
    assert torch.isfinite(after[0]).all() and lowp_problem(after[0], before[0]) is None
    lines = fp32_report(ctx)
    want = "mul (aten.mul.Tensor): calibration: max |value| 1.5e+05"
    assert any(line.startswith(want) for line in lines)
    assert any(x.startswith("linear (aten.linear.default): calibration:") for x in lines)
    assert "mul" in result.stats["calibration"]


def test_without_the_check_the_same_graph_overflows():
    x = overflow_input()
    gm = captured(Overflow(), x)
    before, after, _, _ = run_pass(gm, [x], fp16_overflow_threshold=math.inf)
    assert dtype(calls(gm, aten.mul.Tensor)[0]) == torch.float16
    assert lowp_problem(after[0], before[0]) == "inf or NaN where the reference is finite"


def test_bf16_has_the_range_and_skips_calibration():
    x = overflow_input()
    gm = captured(Overflow(), x)
    before, after, result, _ = run_pass(gm, [x], "bf16")
    assert dtype(calls(gm, aten.mul.Tensor)[0]) == torch.bfloat16
    assert not result.stats["calibration"] and lowp_problem(after[0], before[0]) is None


def test_threshold_must_be_positive():
    x = overflow_input()
    with pytest.raises(fxc.FxcOptionError, match="fp16_overflow_threshold"):
        cast_precision.run(captured(Overflow(), x), ctx_for([x], fp16_overflow_threshold=0.0))


# -- dtypes at the edges; casts that cancel ----------------------------------------------------

class TwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x, ids):
        return self.fc(x), ids * 2, x


def placeholder_dtypes(gm):
    return [dtype(p) for p in gm.graph.nodes if p.op == "placeholder"]


def test_inputs_and_outputs_keep_their_dtypes():
    x, ids = torch.randn(3, 8), torch.arange(3)
    gm = captured(TwoOut(), x, ids)
    before, after, _, _ = run_pass(gm, [x, ids])
    assert [a.dtype for a in after] == [torch.float32, torch.int64, torch.float32]
    assert torch.equal(after[1], before[1]) and torch.equal(after[2], before[2])
    assert placeholder_dtypes(gm) == [torch.float32, torch.int64]


def test_keep_io_dtype_false_takes_and_returns_half():
    x, ids = torch.randn(3, 8), torch.arange(3)
    gm = captured(TwoOut(), x, ids)
    before, after, _, ctx = run_pass(gm, [x, ids], keep_io_dtype=False)
    assert placeholder_dtypes(gm) == [torch.float16, torch.int64]
    assert ctx.example_inputs[0].dtype == torch.float16
    assert [a.dtype for a in after] == [torch.float16, torch.int64, torch.float16]
    assert lowp_problem(after[0], before[0]) is None


class RoundTrip(nn.Module):
    """The model's own casts: x.half() (lossy, kept), then .float() back (kept: the model
    asked for fp32), which a half linear would read through f16 -> f32 -> f16."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = x.half().float()
        return self.fc(h), torch.exp(h)


def test_no_cast_round_trips_remain_and_lossy_model_casts_stay():
    x = torch.randn(2, 8)
    gm = captured(RoundTrip(), x)
    before, after, _, _ = run_pass(gm, [x])
    assert not cancelling_casts(gm)
    (fc,) = calls(gm, aten.linear.default)
    assert fc.args[0].target is aten._to_copy.default and fc.args[0].args[0].op == "placeholder"
    assert dtype(fc.args[0]) == torch.float16  # reads x.half() itself, not its round trip
    assert all(lowp_problem(a, b) is None for a, b in zip(after, before))


def test_drop_cancelling_casts_keeps_lossy_and_returned_casts():
    g = fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.empty(3)
    chain = [x]
    for d in (torch.float16, torch.float32, torch.float16, torch.float32):  # f32>f16>f32>f16>f32
        chain.append(g.call_function(aten._to_copy.default, (chain[-1],), {"dtype": d}))
        chain[-1].meta["val"] = torch.empty(3, dtype=d)
    same = g.call_function(aten._to_copy.default, (x,), {"dtype": torch.float32})
    same.meta["val"] = torch.empty(3)
    g.output((chain[-1], same))
    gm = fx.GraphModule(nn.Module(), g)
    assert cast_precision.drop_cancelling_casts(gm) == 1  # only f16 > f32 > f16
    kept = [n.kwargs["dtype"] for n in calls(gm, aten._to_copy.default)]
    assert kept == [torch.float16, torch.float32, torch.float32]  # x.half().float(), same
    xin = torch.randn(3)
    assert torch.equal(gm(xin)[0], xin.half().float())


# -- where it must not fire; idempotence -----------------------------------------------------

def test_fp32_precision_leaves_the_graph_untouched():
    x = torch.randn(2, 4, 16)
    gm = captured(Block(), x)
    code = gm.code
    result = cast_precision.run(gm, ctx_for([x], "fp32"))
    assert result.rewrites == 0 and gm.code == code


class IntOnly(nn.Module):
    def forward(self, a, b):
        return (a * 3 + b) // 2, (a > b).sum()


def test_integer_graphs_are_untouched():
    a, b = torch.arange(6), torch.arange(6).flip(0)
    gm = captured(IntOnly(), a, b)
    code = gm.code
    result = cast_precision.run(gm, ctx_for([a, b]))
    assert result.rewrites == 0 and gm.code == code


def test_integer_ops_on_float_inputs_read_them_exactly():
    # 1 + 2^-12 rounds to 1 in fp16: a comparison on a half copy of x would flip
    x = torch.tensor([1.0 + 2 ** -12, 1.0, 0.5])

    class M(nn.Module):
        def forward(self, x):
            return (x > 1.0).long(), x * 2

    gm = captured(M(), x)
    before, after, _, _ = run_pass(gm, [x])
    assert torch.equal(after[0], before[0])
    (gt,) = calls(gm, aten.gt.Scalar)
    assert gt.args[0].op == "placeholder"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_idempotent(precision):
    x, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    for model, inputs in ((Block(), [torch.randn(2, 4, 16)]), (Masked(), [x, mask]),
                          (Overflow(), [overflow_input()])):
        gm = captured(model, *inputs)
        run_pass(gm, inputs, precision)
        code = gm.code
        again = cast_precision.run(gm, ctx_for(inputs, precision))
        assert again.rewrites == 0 and gm.code == code, type(model).__name__


# -- generated graphs ----------------------------------------------------------------------------

DECOMP = decomp.table()  # materializing it costs ~0.5 s: once per module, not per graph


def aten_graph(g) -> fx.GraphModule:
    """The generated module as fxc's IR: a functional ATen graph with meta, its parameters
    and buffers as get_attr constants. Built with make_fx over fxc's decomposition table, not
    with capture: capture's run_decompositions costs 1-2 s a graph on torch 2.13, which 200
    examples cannot afford; the pass sees the same kind of graph (with addmm, the native norms
    and _softmax besides the ops capture keeps whole)."""
    consts = dict(g.module.named_parameters()) | dict(g.module.named_buffers())
    names = list(consts)

    def f(tensors, *inputs):
        return torch.func.functional_call(g.module, dict(zip(names, tensors)), inputs)

    tensors = [t.detach() for t in consts.values()]
    gm = make_fx(functionalize(f, remove="mutations"),
                 decomposition_table=DECOMP)(tensors, *g.inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, (node, t) in enumerate(zip(placeholders, tensors)):  # params first, as passed
        gm.register_buffer(f"c{i}", t.clone())
        with gm.graph.inserting_before(node):
            attr = gm.graph.get_attr(f"c{i}")
        attr.meta.update(node.meta)
        node.replace_all_uses_with(attr)
        gm.graph.erase_node(node)
    gm.graph.set_codegen(fx.CodeGen())  # flat inputs: the constants are no longer arguments
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def decided_on_rounded_data(gm) -> set:
    """Nodes downstream of a non-float result computed from reduced-precision floats (a
    comparison or a float -> int cast of rounded values): a last-bit change may flip them."""
    lowp, flipped = set(), set()
    for n in gm.graph.nodes:
        ins = n.all_input_nodes
        val = n.meta.get("val")
        is_low = isinstance(val, torch.Tensor) and val.dtype in (torch.float16, torch.bfloat16)
        if is_low or any(a in lowp for a in ins):
            lowp.add(n)
        floaty = isinstance(val, torch.Tensor) and val.is_floating_point()
        if any(a in flipped for a in ins) or (not floaty and any(a in lowp for a in ins)):
            flipped.add(n)
    return flipped


MAX_OPS = 6
# Each drawn op may lose up to CANCEL_RATIO x to cancellation (fxc.testing refuses more), on a
# rounding of u (the unit roundoff: 2^-11 fp16, 2^-8 bf16): fp16 4.7e-2, bf16 0.375. Loose for
# bf16, but a wrong cast, an overflow or a lost operand errs by O(1), and exact results and
# finiteness are checked exactly.
GEN_TOL = {p: CANCEL_RATIO * MAX_OPS * torch.finfo(d).eps / 2 for p, d in LOW.items()}


@given(graphs(max_ops=MAX_OPS, dtypes=(torch.float32, torch.float32, torch.int64, torch.float16)),
       st.sampled_from(["fp16", "bf16"]))
def test_generated_graphs(g, precision):
    gm = aten_graph(g)
    inputs = list(g.inputs)
    before, after, _, _ = run_pass(gm, inputs, precision)
    assert not cancelling_casts(gm)
    outs = [a for a in pytree.tree_leaves(gm.graph.output_node().args)
            if isinstance(a, fx.Node)]
    flipped = decided_on_rounded_data(gm)
    for node, a, b in zip(outs, pytree.tree_leaves(after), pytree.tree_leaves(before)):
        if not isinstance(b, torch.Tensor):
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        decided = node in flipped or any(x in flipped for x in node.all_input_nodes)
        if not b.is_floating_point():
            assert decided or torch.equal(a, b), f"{node.name}: an exact result changed"
        elif decided:  # a flipped comparison may change values, never finiteness
            assert torch.isfinite(a[torch.isfinite(b)]).all()
        else:
            problem = lowp_problem(a, b, rel=GEN_TOL[precision])
            assert problem is None, f"{node.name}: {problem}"
    code = gm.code
    assert cast_precision.run(gm, ctx_for(inputs, precision)).rewrites == 0 and gm.code == code


class FullMin(nn.Module):
    """Llama's mask: full(finfo(float32).min).triu(1) added to scores; x[:, 1:] slices with
    end=sys.maxsize."""

    def forward(self, x):  # x (B, T + 1, T)
        t = x.shape[-1]
        mask = torch.full((t, t), torch.finfo(torch.float32).min).triu(1)
        return torch.softmax(x[:, 1:] + mask, dim=-1)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_regression_float32_min_fill_and_slice_bounds(precision):
    """Found on the zoo's llama: in bf16, full(-3.4e38, dtype=bfloat16) refused to run (the
    fill does not fit); and slice's end=sys.maxsize was once taken for a huge constant."""
    x = torch.randn(2, 5, 4)
    gm = captured(FullMin(), x)
    before, after, _, ctx = run_pass(gm, [x], precision)
    (full,) = calls(gm, aten.full.default)
    assert dtype(full) == torch.float32
    slices = [x for x in fp32_report(ctx) if x.startswith("slice")]
    assert slices and not any("range" in x for x in slices)  # fp32 by rule 3, not by range
    assert lowp_problem(after[0], before[0]) is None


# -- the zoo, tiny, on CPU -----------------------------------------------------------------------

# Relative norm error vs eager FP32, measured on CPU (torch 2.13, batch 2, seed 0): ours | the
# model cast whole to that dtype by eager PyTorch, for scale.
#             fp16                   bf16
# mlp         5.5e-4 | -             4.8e-3 | -
# resnet18    4.1e-3 | 5.8e-3        2.6e-2 | 3.0e-2
# resnet50    1.5e-3 | 2.3e-3        1.6e-2 | 1.9e-2
# mobilenet_v2 7.1e-3 | 1.5e-2       6.9e-2 | 1.1e-1
# bert        3.7e-4                 4.1e-3
# gpt2        6.0e-4                 4.8e-3
# vit         5.0e-4 | 5.6e-4        5.7e-3 | 5.8e-3
# llama       6.8e-4                 5.7e-3
# swin        3.7e-4                 2.7e-3
# efficientnet 9.7e-3 | 7.3e-3       3.7e-2 | 9.3e-2
# The tiny conv nets are badly conditioned: fxc.models' calibrate_bn_ measures BN statistics on
# one batch, and at 1x1 spatial size the variance of mobilenet_v2's and efficientnet's last
# stages is ~1e-10, so those BNs multiply rounding error by ~1/sqrt(eps) = 316.
ZOO_TOL = {"fp16": 2e-2, "bf16": 1e-1}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", names(include_extras=True))
def test_zoo_tiny_matches_eager_fp32(name, precision):
    model, inputs = get(name, size="tiny", batch=2)
    compiled = fxc.compile(model, inputs, precision=precision, backend="torch")
    with torch.no_grad():
        expected = pytree.tree_leaves(model(*inputs))
    actual = pytree.tree_leaves(compiled(*inputs))
    for a, b in zip(actual, expected):
        assert a.dtype == b.dtype
        problem = lowp_problem(a, b, rel=ZOO_TOL[precision])
        assert problem is None, f"{name} {precision}: {problem}"
    assert "kept in fp32" in compiled.report()

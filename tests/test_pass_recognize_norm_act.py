"""recognize_norm_act: layer norm, RMS norm, GELU and SiLU written in primitives -> the one op.

Structure (the primitives gone, the op there with the right arguments), lint, numbers against
the graph before, refusals with their reason, idempotence; on hand-written models (HF's
BertLayerNorm, Llama's and T5's RMSNorm, HF's GELU spellings), on ATen graphs drawn directly
(every spelling, every refusal), and on fxc.testing's random graphs with the patterns planted.
The zoo (gpt2's NewGELU, llama's RMSNorm, counts) is in test_pass_fuse_attention.py, which
compiles each zoo transformer once for all three transformer passes.
"""
import contextlib
import math
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxc.capture import capture
from fxc.passes import recognize_norm_act
from fxc.testing import OPS, OpRejected, OpSpec, graphs
from fxc.testing.ops import c_layer_norm
import passkit  # noqa: E402
from passkit import AtenGraph, ctx, count, outputs, captured, many  # noqa: E402

aten = torch.ops.aten
FUSED = (aten.layer_norm.default, aten.rms_norm.default, aten.gelu.default, aten.silu.default)
PRIMS = (aten.rsqrt.default, aten.sqrt.default, aten.erf.default, aten.tanh.default,
         aten.sigmoid.default, aten.mean.dim, aten.var.correction, aten.var_mean.correction)


def fused(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in FUSED]


def run_checked(gm, inputs):
    """Run the pass; check lint, numbers against the graph before, idempotence."""
    return passkit.run_checked(recognize_norm_act, gm, inputs, ctx(), passkit.close_nan)[0]


# -- hand-written models ---------------------------------------------------------------------

class BertLayerNorm(nn.Module):
    """HF's old TF-style layer norm (modeling_bert before nn.LayerNorm): (x - u) twice."""

    def __init__(self, n, eps=1e-12):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(n)), nn.Parameter(torch.randn(n))
        self.eps = eps

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight * x + self.bias


class VarLayerNorm(nn.Module):
    """var(unbiased=False) and rsqrt over the last two dims, no affine."""

    def forward(self, x):
        m = x.mean((-2, -1), keepdim=True)
        v = x.var((-2, -1), keepdim=True, unbiased=False)
        return (x - m) * torch.rsqrt(v + 1e-5)


class VarMeanLayerNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n))

    def forward(self, x):
        v, m = torch.var_mean(x, -1, unbiased=False, keepdim=True)
        return (x - m) * (v + 1e-6).pow(-0.5) * self.weight


class LlamaRMSNorm(nn.Module):
    """As HF's LlamaRMSNorm: float32 round trip, weight after the cast back."""

    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight, self.variance_epsilon = nn.Parameter(torch.randn(n)), eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class T5LayerNorm(nn.Module):
    """HF's T5LayerNorm: RMS with the weight multiplied in float32 (no cast back here)."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n))

    def forward(self, x):
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + 1e-6))


class FunctionalRMSNorm(nn.Module):
    """F.rms_norm: capture keeps it whole (fxc/decomp.py: CUDA has a fused kernel)."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, eps=1e-5)


class LayerScale(nn.Module):
    """timm's LayerScale (x * gamma after the MLP's last linear) or, with permute, torchvision
    CNBlock's layer_scale (C, 1, 1) * block(x) after its permute back to channels first."""

    def __init__(self, permute=False, gamma=None, tied=False):
        super().__init__()
        self.fc, self.permute, self.tied = nn.Linear(8, 8), permute, tied
        shape = gamma or ((8, 1, 1) if permute else (8,))
        self.gamma = nn.Parameter(torch.rand(*shape) + 0.5)

    def forward(self, x):
        y = self.fc(x)
        if self.permute:
            y = y.permute(0, 3, 1, 2)
        if self.tied:  # the weight read by a second linear: scaling it would change that one
            return y * self.gamma, nn.functional.linear(x, self.fc.weight) * self.gamma
        return y * self.gamma


def gelu_python(x):  # HF's gelu_python / BERT's original
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def new_gelu(x):  # HF's NewGELUActivation, gpt2's
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def fast_gelu(x):  # HF's FastGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


class Mlp(nn.Module):
    """linear -> written activation -> linear, with a written layer norm in front."""

    def __init__(self, act, n=8):
        super().__init__()
        self.ln, self.act = BertLayerNorm(n, 1e-5), act
        self.fc1, self.fc2 = nn.Linear(n, 16), nn.Linear(16, n)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.ln(x))))


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def x3():
    return (torch.randn(2, 5, 8) * 2,)


# name: (model builder, inputs, {fused op: count}). One capture holds them all (export costs
# seconds a model on the CI machine): each pattern reads its own inputs, returns its own output.
HAND_WRITTEN = {
    "bert_layer_norm": (lambda: BertLayerNorm(8), x3, {"layer_norm": 1}),
    "var_layer_norm_two_dims": (VarLayerNorm, x3, {"layer_norm": 1}),
    "var_mean_layer_norm": (lambda: VarMeanLayerNorm(8), x3, {"layer_norm": 1}),
    "llama_rms_norm": (lambda: LlamaRMSNorm(8), x3, {"rms_norm": 1}),
    "llama_rms_norm_fp16": (lambda: LlamaRMSNorm(8).half(), lambda: (torch.randn(2, 5, 8).half(),),
                            {"rms_norm": 1}),
    "t5_layer_norm": (lambda: T5LayerNorm(8), x3, {"rms_norm": 1}),
    "timm_layer_scale": (lambda: LayerScale(), x3, {"layer_scale": 1}),
    "tv_layer_scale": (lambda: LayerScale(permute=True), lambda: (torch.randn(2, 3, 3, 8),),
                       {"layer_scale": 1}),
    "scale_not_per_feature": (lambda: LayerScale(gamma=(5, 1)), x3, {}),
    "gelu_python": (lambda: Fn(gelu_python), x3, {"gelu": 1}),
    "new_gelu": (lambda: Fn(new_gelu), x3, {"gelu_tanh": 1}),
    "fast_gelu": (lambda: Fn(fast_gelu), x3, {"gelu_tanh": 1}),
    "silu": (lambda: Fn(lambda x: x * torch.sigmoid(x)), x3, {"silu": 1}),
    "silu_reversed": (lambda: Fn(lambda x: torch.sigmoid(x) * x), x3, {"silu": 1}),
    "mlp_new_gelu": (lambda: Mlp(new_gelu), x3, {"layer_norm": 1, "gelu_tanh": 1}),
    "mlp_gelu_python": (lambda: Mlp(gelu_python), x3, {"layer_norm": 1, "gelu": 1}),
    "geglu": (lambda: Fn(lambda x, y: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))) * y),
              lambda: (torch.randn(3, 4), torch.randn(3, 4)), {"gelu": 1}),
    "not_a_pattern": (lambda: Fn(lambda x, y: (x * y * 0.5, x / torch.sqrt(y.abs() + 1),
                                              torch.tanh(x) * x, x - x.mean(-1, keepdim=True))),
                      lambda: (torch.randn(3, 4), torch.randn(3, 4)), {}),
}


def test_hand_written():
    model, inputs = many(HAND_WRITTEN)
    gm = captured(model, *inputs)
    assert not fused(gm)
    result = run_checked(gm, inputs)
    want = {}
    for _, _, stats in HAND_WRITTEN.values():
        for k, v in stats.items():
            want[k] = want.get(k, 0) + v
    assert result.stats == want, (result.stats, result.notes)
    assert not [n for n in result.notes if n.startswith("refused")], result.notes
    assert count(gm, aten.rsqrt.default, aten.erf.default, aten.var.correction,
                 aten.var_mean.correction, aten.sigmoid.default) == 0, gm.code
    with torch.no_grad():  # and the graph still is the eager model
        for a, b in zip(outputs(gm, inputs), model(*inputs), strict=True):
            torch.testing.assert_close(a, b)
    # the fused ops' arguments: outputs 0 (BertLayerNorm), 2 (var over two dims), 4 (fp16 Llama)
    outs = gm.graph.output_node().args[0]
    x, shape, w, b, eps = outs[0].args
    assert outs[0].target is aten.layer_norm.default and x.op == "placeholder"
    assert shape == [8] and eps == 1e-12 and w.op == b.op == "get_attr"
    assert outs[1].target is aten.layer_norm.default and outs[1].args[1:] == ([5, 8], None, None, 1e-5)
    rms = outs[4]
    assert rms.target is aten.rms_norm.default and rms.args[0].op == "placeholder"  # casts absorbed
    assert rms.meta["val"].dtype == torch.float16 and rms.args[3] == 1e-6
    assert rms.args[2].op == "get_attr"


def test_rms_norm_is_bitwise_in_float32():
    """The claim in the docstring: aten.rms_norm == the written form in float32 (this torch)."""
    x, w = torch.randn(4, 7, 64) * 3, torch.randn(64)
    written = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert torch.equal(torch.ops.aten.rms_norm(x, [64], w, 1e-5), written)


# -- must not fire ---------------------------------------------------------------------------

class ReturnsMean(nn.Module):
    def forward(self, x):
        m = x.mean(-1, keepdim=True)
        d = x - m
        return d * torch.rsqrt((d * d).mean(-1, keepdim=True) + 1e-5), m


class MeanUsedElsewhere(nn.Module):
    def forward(self, x):
        m = x.mean(-1, keepdim=True)
        d = x - m
        return d * torch.rsqrt((d * d).mean(-1, keepdim=True) + 1e-5) + m.sum()


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's LayerNorm(data_format="channels_first"): over dim 1, not the last."""

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return (x - u) / torch.sqrt(s + 1e-6)


class TensorEps(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("eps", torch.tensor(1e-5))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class UnbiasedLayerNorm(nn.Module):
    def forward(self, x):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + 1e-5)


# name: (model builder, inputs, the reason the pass gives); one capture holds them all.
REFUSALS = {
    "mean_returned": (ReturnsMean, x3, "inside the pattern is a graph output"),
    "mean_reused": (MeanUsedElsewhere, x3, "inside the pattern is also used by"),
    "channels_first": (ChannelsFirstLayerNorm, lambda: (torch.randn(2, 4, 3, 3),),
                       "not the last dim(s)"),
    "tensor_eps": (TensorEps, x3, "not a Python scalar"),
    "unbiased_variance": (UnbiasedLayerNorm, x3, "unbiased variance"),
    "gelu_wrong_half": (lambda: Fn(lambda x: 0.6 * x * (1 + torch.erf(x / math.sqrt(2)))), x3,
                        "constant factor 0.6, GELU's is 0.5"),
    "gelu_wrong_cubic": (lambda: Fn(lambda x: 0.5 * x * (1 + torch.tanh(
        0.7978845608 * (x + 0.04 * x ** 3)))), x3, "the tanh argument"),
    "gelu_erf_reused": (lambda: Fn(lambda x: (lambda e: (0.5 * x * (1 + e), e))(
        torch.erf(x / math.sqrt(2)))), x3, "inside the pattern is a graph output"),
    "gelu_of_a_product": (lambda: Fn(lambda x, y: 0.5 * x * y * (1 + torch.erf(x / math.sqrt(2)))),
                          lambda: (torch.randn(3, 4), torch.randn(3, 4)), "not by x alone"),
    "gelu_fp16": (lambda: Fn(gelu_python), lambda: (torch.randn(3, 4).half(),), "computes in float16"),
    "layer_norm_bf16": (lambda: BertLayerNorm(8).bfloat16(), lambda: (torch.randn(3, 8).bfloat16(),),
                        "computes in bfloat16"),
    "silu_sigmoid_reused": (lambda: Fn(lambda x: (lambda s: (x * s, s + 1))(torch.sigmoid(x))), x3,
                            "inside the pattern is also used by"),
    "layer_scale_tied_weight": (lambda: LayerScale(tied=True), x3, "also read elsewhere (tied)"),
}


def test_functional_rms_norm_is_captured_whole():
    """torch's F.rms_norm / nn.RMSNorm reach the passes as one aten.rms_norm (CUDA runs it as
    one fused kernel, aten._fused_rms_norm) instead of seven primitives to recognize."""
    (x,) = x3()
    gm = captured(FunctionalRMSNorm(8), x)
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [aten.rms_norm.default]


def test_must_not_fire():
    model, inputs = many(REFUSALS)
    gm = captured(model, *inputs)
    code, before = gm.code, outputs(gm, inputs)
    result = recognize_norm_act.run(gm, ctx())
    gm.recompile()
    assert result.rewrites == 0 and gm.code == code
    for name, (_, _, reason) in REFUSALS.items():
        assert any(reason in note for note in result.notes), (name, reason, result.notes)
    assert all(torch.equal(a, b) for a, b in zip(outputs(gm, inputs), before))


# -- ATen graphs drawn directly: every spelling, every refusal --------------------------------

SPOILERS = ["none"] * 6 + ["output", "user", "low_precision"]


@st.composite
def norm_case(draw):
    """(graph, inputs, expected: (op, normalized_shape, eps, has weight, has bias) | reason)."""
    g, gen = AtenGraph(), torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    kind = draw(st.sampled_from(["layer_norm", "rms_norm"]))
    spoil = draw(st.sampled_from(SPOILERS + ["not_last", "tensor_eps"]
                                 + (["unbiased"] if kind == "layer_norm" else [])))
    rank = draw(st.integers(1 if spoil != "not_last" else 2, 4))
    shape = [draw(st.integers(1, 5)) for _ in range(rank)]
    k = draw(st.integers(1, min(2, rank)))
    upcast = kind == "rms_norm" and spoil != "low_precision" and draw(st.booleans())
    dt = torch.float64 if draw(st.integers(0, 5)) == 0 else torch.float32
    if spoil == "low_precision" or upcast:
        dt = draw(st.sampled_from([torch.float16, torch.bfloat16]))
    x = g.input((torch.randn(shape, generator=gen) * draw(st.sampled_from([0.1, 1.0, 30.0]))).to(dt))
    dims = list(range(rank - k, rank))
    if draw(st.booleans()):
        dims = [d - rank for d in dims]
    if spoil == "not_last":
        dims = [0]
    eps = draw(st.sampled_from([1e-5, 1e-6, 1e-12, 0.1]))
    want, y, m = None, x, None
    if upcast:
        y = g(aten._to_copy.default, x, dtype=torch.float32)
    var_form = draw(st.sampled_from(["pow", "mul", "twin", "var", "var_mean"]
                                    if kind == "layer_norm" else ["pow", "mul"]))
    if spoil == "unbiased":
        var_form = "var"
    if kind == "layer_norm":
        if var_form == "var_mean":
            vm = g(aten.var_mean.correction, x, dims, correction=0, keepdim=True)
            v, m = g(operator.getitem, vm, 0), g(operator.getitem, vm, 1)
        else:
            m = g(aten.mean.dim, x, dims, True)
        d = g(aten.sub.Tensor, x, m)
        if var_form == "var":
            v = g(aten.var.correction, x, dims, correction=int(spoil == "unbiased"), keepdim=True)
        elif var_form != "var_mean":
            sq = {"pow": lambda: g(aten.pow.Tensor_Scalar, d, 2),
                  "mul": lambda: g(aten.mul.Tensor, d, d),
                  "twin": lambda: g(aten.mul.Tensor, d, g(aten.sub.Tensor, x, m))}[var_form]()
            v = g(aten.mean.dim, sq, dims, True)
    else:
        d = y
        sq = g(aten.pow.Tensor_Scalar, y, 2) if var_form == "pow" else g(aten.mul.Tensor, y, y)
        v = g(aten.mean.dim, sq, dims, True)
    eps_arg = g.const(torch.tensor(eps, dtype=torch.float32)) if spoil == "tensor_eps" else eps
    if spoil != "tensor_eps" and draw(st.booleans()):
        a = g(aten.add.Scalar, v, eps)  # F.rms_norm's spelling
    else:
        a = g(aten.add.Tensor, *((v, eps_arg) if draw(st.booleans()) else (eps_arg, v)))
    inv = draw(st.sampled_from(["rsqrt", "pow", "div", "recip"]))
    if inv == "div":
        n = g(aten.div.Tensor, d, g(aten.sqrt.default, a))
    else:
        r = {"rsqrt": lambda: g(aten.rsqrt.default, a),
             "pow": lambda: g(aten.pow.Tensor_Scalar, a, -0.5),
             "recip": lambda: g(aten.reciprocal.default, g(aten.sqrt.default, a))}[inv]()
        n = g(aten.mul.Tensor, *((d, r) if draw(st.booleans()) else (r, d)))
    out = n
    if upcast:
        out = g(aten._to_copy.default, n, dtype=dt)
    nshape = shape[rank - k:]
    has_w = draw(st.booleans())
    has_b = kind == "layer_norm" and draw(st.booleans())
    if has_w:
        w = g.const(torch.randn(*nshape, generator=gen).to(dt))
        out = g(aten.mul.Tensor, *((out, w) if draw(st.booleans()) else (w, out)))
    if has_b:
        b = g.const(torch.randn(*nshape, generator=gen).to(dt))
        out = g(aten.add.Tensor, *((out, b) if draw(st.booleans()) else (b, out)))
    outs = [out]
    if spoil == "output":
        outs.append(v if kind == "rms_norm" else m)
        want = "inside the pattern is a graph output"
    elif spoil == "user":
        outs.append(g(aten.neg.default, a))
        want = "inside the pattern is also used by"
    elif spoil == "low_precision":
        want = f"computes in {str(dt).replace('torch.', '')}"
    elif spoil == "not_last":
        want = "not the last dim(s)"
    elif spoil == "tensor_eps":
        want = "not a Python scalar"
    elif spoil == "unbiased":
        want = "unbiased variance"
    else:
        want = (kind, nshape if spoil != "not_last" else None, eps, has_w, has_b)
    if draw(st.booleans()):  # a bystander reading x
        outs.append(g(aten.relu.default, x))
    return g.build(outs), g.inputs, want


@st.composite
def act_case(draw):
    """GELU (erf, tanh: several spellings) or SiLU: (graph, inputs, expected op kwargs | reason)."""
    g, gen = AtenGraph(), torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    spoil = draw(st.sampled_from(SPOILERS + ["constant", "extra_factor", "gated"]))
    dt = draw(st.sampled_from([torch.float16, torch.bfloat16])) if spoil == "low_precision" else \
        draw(st.sampled_from([torch.float32] * 4 + [torch.float64]))
    shape = [draw(st.integers(1, 5)) for _ in range(draw(st.integers(0, 3)))]
    x = g.input((torch.randn(shape, generator=gen) * draw(st.sampled_from([0.5, 2.0, 10.0]))).to(dt))
    mul = lambda a, b: g(aten.mul.Tensor, *((a, b) if draw(st.booleans()) else (b, a)))  # noqa: E731
    form = draw(st.sampled_from(["erf", "tanh", "silu"]))
    half = 0.6 if spoil == "constant" and form == "erf" else 0.5
    cubic = 0.04 if spoil == "constant" and form == "tanh" else 0.044715
    if form == "silu":
        inner = s = g(aten.sigmoid.default, x)
        out = mul(x, s)
        if spoil in ("constant", "extra_factor", "gated"):
            spoil = "none"
        want = ("silu", {})
    else:
        if form == "erf":
            arg = draw(st.sampled_from(["div", "mul"]))
            t_in = g(aten.div.Tensor, x, math.sqrt(2.0)) if arg == "div" else mul(x, 0.7071067811865476)
            inner = t = g(aten.erf.default, t_in)
            want = ("gelu", {})
        else:
            c = draw(st.sampled_from([math.sqrt(2 / math.pi), 0.7978845608, 0.79788456]))
            arg = draw(st.sampled_from(["pow", "cube", "fast"]))
            if arg == "fast":  # x * c * (1 + 0.044715 * x * x)
                poly = g(aten.add.Tensor, mul(mul(x, x), cubic), 1.0)
                t_in = mul(mul(x, c), poly)
            else:
                x3 = g(aten.pow.Tensor_Scalar, x, 3.0) if arg == "pow" else mul(mul(x, x), x)
                t_in = mul(g(aten.add.Tensor, x, mul(x3, cubic)), c)
            inner = t = g(aten.tanh.default, t_in)
            want = ("gelu", {"approximate": "tanh"})
        one_plus = g(aten.add.Tensor, t, 1.0) if draw(st.booleans()) else g(aten.add.Tensor, 1.0, t)
        assoc = draw(st.sampled_from(["(hx)p", "h(xp)", "x(hp)", "div2"]))
        xf = x  # the factor beside (1 + t): x, or x * y (then no sub-product is GELU)
        if spoil == "extra_factor":
            xf = mul(x, g.input(torch.randn(shape, generator=gen).to(dt)))
        if assoc == "(hx)p":
            out = mul(mul(xf, half), one_plus)
        elif assoc == "h(xp)":
            out = mul(mul(xf, one_plus), half)
        elif assoc == "x(hp)":
            out = mul(xf, mul(one_plus, half))
        else:  # x * (1 + t) / 2
            out = g(aten.div.Tensor, mul(xf, one_plus), 1.0 / half)
        if spoil == "extra_factor":
            want = "not by x alone"
        elif spoil == "gated":  # gelu(x) * z written out (GEGLU): the GELU inside matches
            out = mul(out, g.input(torch.randn(shape, generator=gen).to(dt)))
        elif spoil == "constant":
            want = "constant factor 0.6" if form == "erf" else "the tanh argument"
    outs = [out]
    if spoil == "output":
        outs.append(inner)
        want = "inside the pattern is a graph output"
    elif spoil == "user":
        outs.append(g(aten.neg.default, inner))
        want = "inside the pattern is also used by"
    elif spoil == "low_precision":
        want = f"computes in {str(dt).replace('torch.', '')}"
    return g.build(outs), g.inputs, want


def check_case(gm, inputs, want):
    code = gm.code
    if isinstance(want, str):
        result = recognize_norm_act.run(gm, ctx())
        gm.recompile()
        assert result.rewrites == 0 and gm.code == code, gm.code
        assert any(want in note for note in result.notes), (want, result.notes)
        return None
    result = run_checked(gm, inputs)
    assert result.rewrites == 1, (want, result.notes, code)
    (new,) = fused(gm)
    assert new.target._opname == want[0]
    assert count(gm, *PRIMS) == 0, gm.code
    return new


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(norm_case())
def test_drawn_norms(case):
    gm, inputs, want = case
    new = check_case(gm, inputs, want)
    if new is not None:
        kind, shape, eps, has_w, has_b = want
        assert new.args[1] == shape and new.args[-1] == eps
        assert (new.args[2] is not None) == has_w
        if kind == "layer_norm":
            assert (new.args[3] is not None) == has_b
        assert new.args[0].op == "placeholder"  # the input itself (casts absorbed)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(act_case())
def test_drawn_activations(case):
    gm, inputs, want = case
    new = check_case(gm, inputs, want)
    if new is not None:
        assert new.kwargs == want[1] and new.args[0].op == "placeholder"


# -- fxc.testing's random graphs with written-out patterns planted ------------------------------

def written_layer_norm(x, w, b, *, k, form, eps):
    dims = tuple(range(-k, 0))
    m = x.mean(dims, keepdim=True)
    if form == "var":
        v = x.var(dims, keepdim=True, unbiased=False)
    else:
        v = ((x - m) * (x - m)).mean(dims, keepdim=True)
    y = (x - m) / torch.sqrt(v + eps) if form == "div" else (x - m) * torch.rsqrt(v + eps)
    return y * w + b if w is not None else y


def written_rms_norm(x, w, *, eps):
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def written_gelu(x, *, form):
    return gelu_python(x) if form == "erf" else new_gelu(x) if form == "tanh" else fast_gelu(x)


def _reject_rule(b, spec):
    raise OpRejected("planted only")


ROWS = [
    OpSpec("written_layer_norm", (torch.float32,), _reject_rule, written_layer_norm,
           args=lambda t, s: ((t[0], *(list(t[1:]) + [None, None])[:2]),
                              {k: v for k, v in s.items() if k != "normalized_shape"}),
           check=c_layer_norm),
    OpSpec("written_rms_norm", (torch.float32,), _reject_rule, written_rms_norm,
           args=lambda t, s: ((t[0], t[1]), s)),
    OpSpec("written_gelu", (torch.float32,), _reject_rule, written_gelu),
]
BASE_OPS = [name for name in OPS if not name.startswith("written_")]


@contextlib.contextmanager
def planted_rows():
    """The written-out patterns as op-table rows, for the test's duration only (so graphs()
    elsewhere never draws them)."""
    for row in ROWS:
        OPS[row.name] = row
    try:
        yield
    finally:
        for row in ROWS:
            OPS.pop(row.name, None)


def plant_written_norm(b, draw):
    x = b.pick_value(draw, dtypes=(torch.float32,), min_rank=1)
    shape = b.value(x).shape
    if draw(st.booleans()):
        k = draw(st.integers(1, min(2, len(shape))))
        ns = tuple(shape[len(shape) - k:])
        params = [b.new_param(torch.randn(ns)), b.new_param(torch.randn(ns))] if draw(st.booleans()) else []
        return b.add("written_layer_norm", x, *params, k=k, normalized_shape=ns,
                     form=draw(st.sampled_from(["div", "rsqrt", "var"])), eps=1e-5)
    return b.add("written_rms_norm", x, b.new_param(torch.randn(shape[-1:])), eps=1e-6)


def plant_written_gelu(b, draw):
    x = b.pick_value(draw, dtypes=(torch.float32,))
    return b.add("written_gelu", x, form=draw(st.sampled_from(["erf", "tanh", "fast"])))


def plant_silu(b, draw):
    x = b.pick_value(draw, dtypes=(torch.float32,))
    return b.add("mul", x, b.add("sigmoid", x))


@settings(max_examples=5, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_generated_graphs(data):
    with planted_rows():
        g = data.draw(graphs(max_ops=4, ops=BASE_OPS, allow_empty=False,
                             plant=[plant_written_norm, plant_written_gelu, plant_silu]))
    planted = [i for i in g.program.instrs if i.op.startswith("written_")]
    gm = capture(g.module, g.inputs, {}).gm
    result = run_checked(gm, g.inputs)
    # every planted written_* pattern (its intermediates are private to it) became its op;
    # the planted x * sigmoid(x) did too, unless the graph reads its sigmoid elsewhere
    assert result.rewrites >= len(planted), (result.notes, g)
    assert count(gm, aten.erf.default, aten.rsqrt.default) == 0, gm.code
    for n in gm.graph.nodes:
        if n.target is aten.sigmoid.default and any(
                u.target is aten.mul.Tensor and n.args[0] in u.args for u in n.users):
            assert len(n.users) > 1 or any(u.op == "output" for u in n.users), gm.code
            assert any("refused silu" in note for note in result.notes), result.notes

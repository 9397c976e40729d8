"""fuse_conv: conv2d + bias + activation -> fxc::conv2d_act; conv2d + residual add + activation
-> fxc::conv2d_add_act. Then the zoo's CNNs through the whole pipeline.

Structure, lint, numbers (bitwise on CPU: the fused ops run the same ATen ops), refusals with
their reason, idempotence; on hand-written models, on ATen graphs drawn directly (every
activation, residual form and refusal case) and on fxc.testing's random graphs with planted
conv -> activation and conv -> add -> relu patterns.
"""
import collections
import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxc
from fxc import ir
from fxc.capture import capture
from fxc.models import get, resnet
from fxc.passes import fuse_bn, fuse_conv
from fxc.testing import FLOATS, graphs
from test_pass_fuse_bn import AtenGraph  # noqa: E402  (the drawn graphs' builder)
import passkit  # noqa: E402
from passkit import ctx, count, outputs  # noqa: E402

aten = torch.ops.aten
CONV_ACT, CONV_ADD_ACT = torch.ops.fxc.conv2d_act.default, torch.ops.fxc.conv2d_add_act.default
ACT_OPS = {aten.relu.default, aten.hardtanh.default, aten.silu.default, aten.gelu.default,
           aten.sigmoid.default, aten.hardswish.default}


def run_checked(gm, inputs, p=fuse_conv):
    """Run the pass; check lint, bitwise numbers and idempotence; return its result."""
    return passkit.run_checked(p, gm, inputs, ctx(), passkit.bitwise)[0]


def captured(model, *inputs, fold_bn=False):
    gm = capture(model.eval(), inputs, {}).gm
    if fold_bn:  # the stage before fuse_conv in the pipeline
        fuse_bn.run(gm, ctx())
        gm.recompile()
    return gm


def fused_args(gm, target):
    return [n.args for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


# -- hand-written models ---------------------------------------------------------------------

class EveryActivation(nn.Module):
    ACTS = [F.relu, F.relu6, lambda y: F.hardtanh(y, -1.0, 2.0), F.silu, F.gelu,
            lambda y: F.gelu(y, approximate="tanh"), torch.sigmoid, F.hardswish]

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 4, 3, padding=1, bias=i % 2 == 0)
                                   for i in range(len(self.ACTS)))

    def forward(self, x):
        return tuple(act(conv(x)) for act, conv in zip(self.ACTS, self.convs))


class ResidualBothSides(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = F.relu(self.a(x) + x)           # conv on the left
        return F.relu6(y + self.b(y))       # conv on the right, another activation


def test_every_activation_keeps_its_arguments():
    model, x = EveryActivation(), torch.randn(2, 3, 6, 6)
    gm = captured(model, x)
    result = run_checked(gm, (x,))
    assert result.rewrites == 8 and count(gm, *ACT_OPS) == 0
    assert count(gm, aten.convolution.default) == 0 and count(gm, CONV_ACT) == 8
    acts = [(a[7], list(a[8])) for a in fused_args(gm, CONV_ACT)]
    assert acts == [("relu", []), ("hardtanh", [0.0, 6.0]), ("hardtanh", [-1.0, 2.0]),
                    ("silu", []), ("gelu", []), ("gelu_tanh", []), ("sigmoid", []),
                    ("hardswish", [])]
    assert all(torch.equal(a, b) for a, b in zip(gm(x), model(x)))


@pytest.mark.parametrize("block", ["basic", "basic_downsample", "bottleneck"])
def test_resnet_blocks(block):
    torch.manual_seed(0)
    model = {"basic": lambda: resnet.BasicBlock(8, 8),
             "basic_downsample": lambda: resnet.BasicBlock(8, 16, 2, nn.Sequential(
                 resnet.conv1x1(8, 16, 2), nn.BatchNorm2d(16))),
             "bottleneck": lambda: resnet.Bottleneck(16, 4)}[block]()
    x = torch.randn(2, model.conv1.in_channels, 8, 8)
    gm = captured(model, x, fold_bn=True)
    n_relu = count(gm, aten.relu.default)
    result = run_checked(gm, (x,))
    assert count(gm, aten.relu.default) == 0 and count(gm, aten.add.Tensor) == 0
    assert count(gm, CONV_ADD_ACT) == 1 and count(gm, CONV_ACT) == n_relu - 1
    assert result.rewrites == n_relu
    (args,) = fused_args(gm, CONV_ADD_ACT)
    assert args[3].op == "placeholder" or args[3].target is aten.convolution.default  # residual


def test_residual_on_either_side_of_the_add():
    model, x = ResidualBothSides(), torch.randn(1, 4, 5, 5)
    gm = captured(model, x)
    result = run_checked(gm, (x,))
    assert result.rewrites == 2 and count(gm, CONV_ADD_ACT) == 2 and count(gm, aten.add.Tensor) == 0
    assert [(a[8], list(a[9])) for a in fused_args(gm, CONV_ADD_ACT)] == [
        ("relu", []), ("hardtanh", [0.0, 6.0])]


# -- must not fire ---------------------------------------------------------------------------

class Pattern(nn.Module):
    """One conv and what follows it; `case` picks the way the pattern is broken."""

    def __init__(self, case):
        super().__init__()
        self.case = case
        self.conv = {"conv1d": nn.Conv1d(3, 3, 3, padding=1), "conv3d": nn.Conv3d(3, 3, 3, padding=1),
                     "transposed": nn.ConvTranspose2d(3, 3, 3, padding=1)}.get(case, nn.Conv2d(3, 3, 3, padding=1))

    def forward(self, x, r):
        y, c = self.conv(x), self.case
        if c == "other_user":
            return F.relu(y), y.sum()
        if c == "conv_returned":
            return F.relu(y), y
        if c == "add_returned":
            s = y + r
            return F.relu(s), s
        if c == "add_other_user":
            s = y + r
            return F.relu(s) * s
        if c == "bias_like_add":
            return F.relu(y + r[0, :, :1, :1])          # (C, 1, 1): broadcasts
        if c == "batch_broadcast":
            return F.relu(y + r[:1])                   # (1, C, H, W) onto (2, C, H, W)
        if c == "scalar_add":
            return F.relu(y + 0.5)
        if c == "alpha":
            return F.relu(torch.add(y, r, alpha=2))
        if c == "dtype":
            return F.relu(y + r.double())
        if c == "no_activation":
            return (y + r) * 2
        if c == "leaky_relu":
            return F.leaky_relu(y, 0.1)
        if c == "tanh":
            return torch.tanh(y)
        if c == "add_then_tanh":
            return torch.tanh(y + r)
        return F.relu(y)  # conv1d, conv3d, transposed


REFUSALS = {
    "other_user": "the conv output has another user",
    "conv_returned": "the conv output is also a graph output",
    "add_returned": "the residual add output is also a graph output",
    "add_other_user": "the residual add output has another user",
    "bias_like_add": "the residual add broadcasts [3, 1, 1] to [2, 3, 5, 5]",
    "batch_broadcast": "the residual add broadcasts [1, 3, 5, 5] to [2, 3, 5, 5]",
    "scalar_add": "the residual is a scalar (broadcast)",
    "alpha": "the residual add scales its operand (alpha != 1)",
    "dtype": "the residual is torch.float64, the conv torch.float32",
    "no_activation": "no activation after the residual add",
    "leaky_relu": "unsupported activation aten.leaky_relu.default",
    "tanh": "unsupported activation aten.tanh.default",
    "add_then_tanh": "unsupported activation aten.tanh.default",
    "conv1d": "conv1d: the fused ops are 2-D (cuDNN's)",
    "conv3d": "conv3d: the fused ops are 2-D (cuDNN's)",
    "transposed": "transposed conv: no fused op",
}


@pytest.mark.parametrize("case", REFUSALS)
def test_must_not_fire(case):
    x = {"conv1d": torch.randn(2, 3, 5), "conv3d": torch.randn(2, 3, 5, 5, 5)}.get(
        case, torch.randn(2, 3, 5, 5))
    model = Pattern(case)
    gm = captured(model, x, torch.randn(2, 3, 5, 5))
    inputs = (x, torch.randn(2, 3, 5, 5))
    code, before = gm.code, outputs(gm, inputs)
    result = fuse_conv.run(gm, ctx())
    gm.recompile()
    assert result.rewrites == 0 and gm.code == code
    assert any(REFUSALS[case] in n for n in result.notes), result.notes
    assert all(torch.equal(a, b) for a, b in zip(outputs(gm, inputs), before))


# -- ATen graphs drawn directly ----------------------------------------------------------------

# act name -> (how the graph writes it, its fused (act, act_args)) ; None: refused
DRAWN_ACTS = {
    "relu": (lambda g, y: g.call(aten.relu.default, y), ("relu", [])),
    "relu6": (lambda g, y: g.call(aten.hardtanh.default, y, 0.0, 6.0), ("hardtanh", [0.0, 6.0])),
    "hardtanh_int": (lambda g, y: g.call(aten.hardtanh.default, y, -2, 3), ("hardtanh", [-2.0, 3.0])),
    "hardtanh_default": (lambda g, y: g.call(aten.hardtanh.default, y), ("hardtanh", [-1.0, 1.0])),
    "silu": (lambda g, y: g.call(aten.silu.default, y), ("silu", [])),
    "gelu": (lambda g, y: g.call(aten.gelu.default, y), ("gelu", [])),
    "gelu_tanh": (lambda g, y: g.call(aten.gelu.default, y, approximate="tanh"), ("gelu_tanh", [])),
    "sigmoid": (lambda g, y: g.call(aten.sigmoid.default, y), ("sigmoid", [])),
    "hardswish": (lambda g, y: g.call(aten.hardswish.default, y), ("hardswish", [])),
    "leaky_relu": (lambda g, y: g.call(aten.leaky_relu.default, y, 0.2), None),
    "tanh": (lambda g, y: g.call(aten.tanh.default, y), None),
}


@st.composite
def conv_patterns(draw):
    """(graph, inputs, expected: ("fused", target, act, act_args) or ("refused", reason))."""
    dt = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.bfloat16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    rnd = lambda *s: torch.randn(*s, generator=gen).to(dt)  # noqa: E731
    g = AtenGraph()
    rank = draw(st.sampled_from([2] * 6 + [1, 3]))
    transposed = draw(st.sampled_from([False] * 9 + [True]))
    groups = draw(st.integers(1, 2))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k, stride, pad, dil = (draw(st.integers(1, 3)), draw(st.integers(1, 2)),
                           draw(st.integers(0, 1)), draw(st.integers(1, 2)))
    size = draw(st.integers(max(1, dil * (k - 1) + 1 - 2 * pad), 6))
    x = g.input(rnd(draw(st.integers(1, 2)), cin, *[size] * rank))
    wshape = (cin, cout // groups) if transposed else (cout, cin // groups)
    w_is_input = draw(st.sampled_from([False] * 5 + [True]))  # the fusion does not need constant weights
    w = (g.input if w_is_input else g.const)(rnd(*wshape, *[k] * rank) / (cin * k) ** 0.5)
    b = g.const(rnd(cout)) if draw(st.booleans()) else None
    conv = g.call(aten.convolution.default, x, w, b, [stride] * rank,
                  [0 if transposed else pad] * rank, [1 if transposed else dil] * rank,
                  transposed, [0] * rank, groups)
    shape = _conv_shape(g, conv)
    residual = draw(st.sampled_from(["none"] * 3 + ["same", "same", "right", "right", "broadcast",
                                                    "alpha", "returned"]))
    y, add = conv, None
    if residual != "none":
        r_shape = (1, *shape[1:]) if residual == "broadcast" and shape[0] > 1 else (
            (shape[1],) + (1,) * (len(shape) - 2) if residual == "broadcast" else shape)
        r = g.input(rnd(*r_shape))
        kw = {"alpha": 2} if residual == "alpha" else {}
        add = y = g.call(aten.add.Tensor, *((r, conv) if residual == "right" else (conv, r)), **kw)
    act_name = draw(st.sampled_from(sorted(DRAWN_ACTS)))
    write, fused = DRAWN_ACTS[act_name]
    outs = [write(g, y)]
    extra = draw(st.sampled_from(["none"] * 7 + ["conv_output", "conv_user"]))
    if extra == "conv_output":
        outs.append(conv)
    elif extra == "conv_user":
        outs.append(g.call(aten.neg.default, conv))
    if residual == "returned":
        outs.append(add)
    gm = g.build(outs)
    # the oracle, in the pass's documented order of checks
    why = None
    if transposed:
        why = "transposed conv: no fused op"
    elif rank != 2:
        why = f"conv{rank}d: the fused ops are 2-D (cuDNN's)"
    elif extra == "conv_output":
        why = "the conv output is also a graph output"
    elif extra == "conv_user":
        why = "the conv output has another user"
    elif residual == "alpha":
        why = "the residual add scales its operand (alpha != 1)"
    elif residual == "broadcast":
        why = "the residual add broadcasts"
    elif residual == "returned":
        why = "the residual add output is also a graph output"
    elif fused is None:
        why = f"unsupported activation aten.{act_name}.default"
    if why:
        return gm, g.inputs, ("refused", why)
    target = CONV_ACT if residual == "none" else CONV_ADD_ACT
    return gm, g.inputs, ("fused", target, *fused)


def _conv_shape(g, conv):
    """The conv's output shape, by running it (the residual is drawn to fit, or not)."""
    env = dict(zip([n for n in g.graph.nodes if n.op == "placeholder"], g.inputs))
    env.update({n: getattr(g.root, n.target) for n in g.graph.nodes if n.op == "get_attr"})
    with torch.no_grad():
        out = conv.target(*[env[a] if isinstance(a, fx.Node) else a for a in conv.args])
    return tuple(out.shape)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(conv_patterns())
def test_drawn_aten_graphs(case):
    gm, inputs, expected = case
    code = gm.code
    if expected[0] == "fused":
        _, target, act, act_args = expected
        result = run_checked(gm, inputs)
        assert result.rewrites == 1 and count(gm, aten.convolution.default) == 0
        (args,) = fused_args(gm, target)
        assert (args[-2], list(args[-1])) == (act, act_args)
    else:
        result = fuse_conv.run(gm, ctx())
        gm.recompile()
        assert result.rewrites == 0 and gm.code == code
        assert any(expected[1] in n for n in result.notes), (expected, result.notes)


# -- fxc.testing's random graphs with planted patterns ---------------------------------------

def plant_conv_act(b, draw):
    """conv2d (any groups/stride/bias) -> relu, silu, gelu (none/tanh) or sigmoid."""
    x = b.pick_value(draw, dtypes=FLOATS, min_rank=4, max_rank=4,
                     fresh_shape=st.tuples(st.integers(1, 2), st.integers(1, 4),
                                           st.integers(3, 5), st.integers(3, 5)))
    c = b.value(x).shape[1]
    groups = draw(st.sampled_from([g for g in (1, 2) if c % g == 0]))
    y = b.add("conv2d", x, out_channels=groups * draw(st.integers(1, 3)), kernel_size=draw(
        st.integers(1, 3)), stride=draw(st.integers(1, 2)), padding=1, groups=groups,
        bias=draw(st.booleans()), module=draw(st.booleans()))
    act = draw(st.sampled_from(["relu", "silu", "gelu", "sigmoid"]))
    if act == "gelu":
        return b.add("gelu", y, approximate=draw(st.sampled_from(["none", "tanh"])))
    return b.add(act, y)


def plant_conv_add_relu(b, draw):
    """relu(conv2d(x) + x): a shape-keeping conv and its identity residual (either side)."""
    x = b.pick_value(draw, dtypes=FLOATS, min_rank=4, max_rank=4,
                     fresh_shape=st.tuples(st.integers(1, 2), st.integers(1, 4),
                                           st.integers(1, 5), st.integers(1, 5)))
    k = draw(st.sampled_from([1, 3]))
    y = b.add("conv2d", x, out_channels=b.value(x).shape[1], kernel_size=k, stride=1,
              padding=k // 2, groups=1, bias=draw(st.booleans()), module=draw(st.booleans()))
    s = b.add("add", *((y, x) if draw(st.booleans()) else (x, y)))
    return b.add("relu", s)


@settings(max_examples=max(1, settings.default.max_examples // 16),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(graphs(max_ops=4, plant=[plant_conv_act, plant_conv_add_relu]))
def test_generated_graphs(g):
    gm = capture(g.module, g.inputs, {}).gm
    run_checked(gm, g.inputs)
    # no activation (or residual add + activation) is left after a conv2d it could fuse with
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is aten.convolution.default:
            m1, m2 = fuse_conv.match_conv_act(n, ctx()), fuse_conv.match_conv_add_act(n, ctx())
            assert not m1 and not m2, f"{n} was left fusable"


# -- the zoo: the whole pipeline, verify on --------------------------------------------------

def node_counts(gm):
    return collections.Counter(ir.op_name(n) for n in gm.graph.nodes if n.op == "call_function")


def float64_truth(model, inputs):
    with torch.no_grad():
        return copy.deepcopy(model).double()(*[t.double() for t in inputs])


@pytest.mark.slow  # 5-40 s each on 2 shared cores
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "efficientnet"])
def test_zoo_compiles_fused_and_matches_eager(name):
    model, inputs = get(name, "tiny")
    captured_gm = capture(model, inputs, {}).gm
    before = node_counts(captured_gm)
    compiled = fxc.compile(model, inputs, verify=True)
    after = node_counts(compiled.graph)
    with torch.no_grad():
        eager, out = model(*inputs), compiled(*inputs)
    # every batch norm is folded; every activation after a conv is fused into it
    assert before["aten._native_batch_norm_legit_no_training.default"] > 0
    assert after["aten._native_batch_norm_legit_no_training.default"] == 0
    for act in ("aten.relu.default", "aten.hardtanh.default", "aten.silu.default",
                "aten.sigmoid.default"):
        assert after[act] == 0, (act, after)
    assert after["fxc.conv2d_act.default"] + after["fxc.conv2d_add_act.default"] > 0
    assert sum(after.values()) < sum(before.values())
    if name == "efficientnet":
        # Its fp32 logits (|y| ~ 20) differ from float64 by more than assert_close allows, in
        # eager too: compare distances to the float64 truth instead.
        truth = float64_truth(model, inputs)
        err = lambda y: ((y.double() - truth).norm() / truth.norm()).item()  # noqa: E731
        assert err(out) <= 2 * err(eager) + 1e-6, (err(out), err(eager))
    else:
        torch.testing.assert_close(out, eager)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zoo_on_cuda_runs_cudnn_fused_kernels(name):
    model, inputs = get(name, "tiny")
    # The step loop (no CUDA graph): a graph replay hides the ATen ops from the profiler.
    compiled = fxc.compile(model, inputs, device="cuda", backend="torch", verify=True,
                           cuda_graphs=False)
    x = inputs[0].cuda()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = compiled(x)
        torch.cuda.synchronize()
    ran = {e.key for e in prof.key_averages()}
    assert {"aten::cudnn_convolution_relu", "aten::cudnn_convolution_add_relu"} <= ran, ran
    with torch.no_grad():
        eager = model.cuda()(x)
    err = ((out - eager).norm() / eager.norm()).item()
    assert err < 5e-3, err  # TF32 convolutions (cuDNN's default): ~3e-4 per layer


# -- rule 3: biased 1x1 convs on CUDA in half -> one GEMM with a bias epilogue ---------------

class Pointwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = nn.Conv2d(4, 6, 1)                  # fires: rule 3
        self.act = nn.Conv2d(6, 6, 1)                    # rule 1 (relu) takes it first
        self.k3 = nn.Conv2d(6, 6, 3, padding=1)          # not a GEMM: left alone, no refusal
        self.strided = nn.Conv2d(6, 6, 1, stride=2)      # refused: stride
        self.nobias = nn.Conv2d(6, 6, 1, bias=False)     # refused: no bias

    def forward(self, x):
        y = self.k3(F.relu(self.act(self.plain(x))))
        return self.nobias(self.strided(y))


def half_cuda_ctx(precision="fp16"):
    return fxc.passes.PassContext(fxc.options.CompileOptions(device=torch.device("cuda"),
                                                             precision=precision), [])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_pointwise_convs_become_identity_epilogue_ops_for_cuda_half(precision):
    x = torch.randn(2, 4, 8, 8)
    gm = captured(Pointwise(), x)
    before = outputs(gm, (x,))
    result = fuse_conv.run(gm, half_cuda_ctx(precision))
    gm.recompile()
    ir.lint(gm, "fuse_conv")
    acts = [a[7] for a in fused_args(gm, CONV_ACT)]
    assert sorted(acts) == ["identity", "relu"], acts
    assert count(gm, aten.convolution.default) == 3  # k3, strided, nobias
    assert "refused conv1x1_bias: 1x1 conv with stride, padding or groups is not a plain GEMM (x1)" \
        in result.notes
    assert any("1x1 conv without bias" in n for n in result.notes)
    for a, b in zip(outputs(gm, (x,)), before, strict=True):
        assert torch.equal(a, b)  # identity's reference on CPU is the same aten.convolution
    code = gm.code
    assert fuse_conv.run(gm, half_cuda_ctx(precision)).rewrites == 0 and gm.code == code


@pytest.mark.parametrize("where", ["cpu-fp16", "cuda-fp32"])
def test_pointwise_rule_must_not_fire_off_cuda_half(where):
    device, precision = where.split("-")
    x = torch.randn(2, 4, 8, 8)
    gm = captured(Pointwise(), x)
    c = fxc.passes.PassContext(fxc.options.CompileOptions(device=torch.device(device),
                                                          precision=precision), [])
    fuse_conv.run(gm, c)
    gm.recompile()
    assert [a[7] for a in fused_args(gm, CONV_ACT)] == ["relu"]
    assert count(gm, aten.convolution.default) == 4

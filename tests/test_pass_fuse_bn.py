"""fuse_bn: eval batch norm folded into the conv / linear before it.

Structure (no batch norm left, same number of convs), lint, numbers against the graph before,
refusals with their reason, idempotence; on hand-written models, on ATen graphs drawn directly
(every conv rank, groups, transposed, batch norm form, refusal case) and on fxc.testing's
random graphs with planted conv/linear -> batch norm patterns.
"""
import operator

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxc.capture import capture
from fxc.models import resnet
from fxc.passes import fuse_bn
from fxc.testing import FLOATS, graphs, plant_conv_bn
import passkit  # noqa: E402
from passkit import ctx, count, outputs, captured  # noqa: E402

aten = torch.ops.aten
BN_OPS = {aten._native_batch_norm_legit_no_training.default, aten.native_batch_norm.default,
          aten._native_batch_norm_legit.default, aten.batch_norm.default,
          aten._native_batch_norm_legit.no_stats}
ORACLE_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def close(after, before):
    """Folding reassociates one product per layer: within the dtype's rounding of the result's
    scale (a conv output near 0 is computed from terms of the scale of its largest values)."""
    for a, b in zip(after, before, strict=True):
        if not b.is_floating_point():
            assert torch.equal(a, b)
            continue
        tol = ORACLE_TOL[b.dtype]
        scale = max(1.0, b.double().abs().max().item()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


def run_checked(gm, inputs):
    """Run fuse_bn; check lint, numbers and idempotence; return (result, before, after)."""
    return passkit.run_checked(fuse_bn, gm, inputs, ctx(), lambda a, b: close([a], [b]))


def randomize_bn_(model):
    """Non-trivial BN statistics and affines, and biases (init leaves BN an identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.bias is not None:
                m.bias.normal_(0, 0.2)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                if m.affine:
                    m.weight.uniform_(-1.5, 1.5)  # negative gamma: the sign must fold too
                    m.bias.normal_(0, 0.5)
    return model


# -- hand-written models ---------------------------------------------------------------------

class ConvBNReLUStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, dilation=2, groups=2), nn.BatchNorm2d(16, eps=1e-3), nn.ReLU())

    def forward(self, x):
        return self.body(x)


class DepthwiseBNReLU6(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return F.relu6(self.bn(self.dw(x)))


class AnyRankAndTransposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4)
        self.c3, self.b3 = nn.Conv3d(2, 4, 2, groups=2), nn.BatchNorm3d(4, affine=False)
        self.t2, self.bt = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, output_padding=1), nn.BatchNorm2d(6)
        self.t1, self.bt1 = nn.ConvTranspose1d(3, 2, 2, bias=False), nn.BatchNorm1d(2)

    def forward(self, a, b, c):
        return self.b1(self.c1(a)), self.b3(self.c3(b)), self.bt(self.t2(c)), self.bt1(self.t1(a))


class LinearBN(nn.Module):
    def __init__(self, affine=True):
        super().__init__()
        self.fc, self.bn = nn.Linear(6, 5), nn.BatchNorm1d(5, affine=affine)
        self.fc2, self.bn2 = nn.Linear(5, 3, bias=False), nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn2(self.fc2(torch.relu(self.bn(self.fc(x)))))


HAND_WRITTEN = {
    "conv_bn_relu_stack": (ConvBNReLUStack, lambda: (torch.randn(2, 3, 12, 12),), 3, 3),
    "depthwise_bn_relu6": (DepthwiseBNReLU6, lambda: (torch.randn(1, 8, 6, 6),), 1, 1),
    "any_rank_transposed": (AnyRankAndTransposed, lambda: (
        torch.randn(2, 3, 9), torch.randn(1, 2, 4, 4, 4), torch.randn(2, 4, 5, 5)), 4, 4),
    "linear_bn": (LinearBN, lambda: (torch.randn(4, 6),), 2, 0),
    "linear_bn_no_affine": (lambda: LinearBN(affine=False), lambda: (torch.randn(4, 6),), 2, 0),
    "resnet_basic_block": (lambda: resnet.BasicBlock(8, 16, stride=2, downsample=nn.Sequential(
        resnet.conv1x1(8, 16, 2), nn.BatchNorm2d(16))), lambda: (torch.randn(2, 8, 8, 8),), 3, 3),
    "resnet_bottleneck": (lambda: resnet.Bottleneck(16, 4), lambda: (torch.randn(1, 16, 6, 6),), 3, 3),
}


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_hand_written(name):
    build, make_inputs, folds, convs = HAND_WRITTEN[name]
    torch.manual_seed(0)
    model = randomize_bn_(build())
    inputs = make_inputs()
    gm = captured(model, *inputs)
    assert count(gm, *BN_OPS) == folds
    result, before, _ = run_checked(gm, inputs)
    assert result.rewrites == folds and f"fold_bn x{folds}" in result.notes
    assert count(gm, *BN_OPS) == 0 and count(gm, operator.getitem) == count(
        gm, aten.max_pool2d_with_indices.default)
    assert count(gm, aten.convolution.default) == convs
    with torch.no_grad():  # and the captured model still is the eager model
        eager = model(*inputs)
    close(before, list(eager) if isinstance(eager, tuple) else [eager])


def test_folded_constants_replace_the_old_ones():
    model = randomize_bn_(ConvBNReLUStack())
    x = torch.randn(1, 3, 12, 12)
    gm = captured(model, x)
    n_before = len(dict(gm.named_buffers()))
    result, _, _ = run_checked(gm, (x,))
    names = dict(gm.named_buffers())
    assert all("bnfold" in n for n in names), names  # every weight/bias left is a folded one
    assert len(names) == 2 * 3 < n_before and any("freed" in s for s in result.notes)
    for n in gm.graph.nodes:
        if n.op == "get_attr":  # meta of the new constants is true
            assert n.meta["val"].shape == names[n.target].shape
            assert n.meta["val"].dtype == names[n.target].dtype


def test_fold_math_in_float64():
    """W' and b' against the formula, computed independently, for a grouped transposed conv."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 3, 2, 2, generator=g)          # (C_in, C_out/g, k, k), groups=2: C_out = 6
    b, gamma, beta = (torch.randn(6, generator=g) for _ in range(3))
    mean, var = torch.randn(6, generator=g), torch.rand(6, generator=g) + 0.5
    new_w, new_b = fuse_bn.fold(w, b, gamma, beta, mean, var, eps=1e-3, transposed=True, groups=2)
    s = gamma.double() / (var.double() + 1e-3).sqrt()
    for o in range(6):  # out channel o = group o // 3, column o % 3
        block = slice((o // 3) * 2, (o // 3) * 2 + 2)
        torch.testing.assert_close(new_w[block, o % 3], (w[block, o % 3].double() * s[o]).float())
    torch.testing.assert_close(new_b, ((b.double() - mean.double()) * s + beta.double()).float())
    assert new_w.dtype == w.dtype and new_b.dtype == w.dtype


# -- must not fire ---------------------------------------------------------------------------

class ConvBN(nn.Module):
    def __init__(self, returns="bn"):
        super().__init__()
        self.conv, self.bn, self.returns = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), returns

    def forward(self, x):
        y = self.conv(x)
        if self.returns == "conv_too":          # a graph output in the middle of the pattern
            return self.bn(y), y
        if self.returns == "other_user":        # the unnormalized value has another reader
            return self.bn(y) + y.sigmoid()
        return self.bn(y)


class WeightAsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x, w):
        return self.bn(F.conv2d(x, w))


class StatsAsInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, mean, var):
        return F.batch_norm(self.conv(x), mean, var, training=False)


class Linear3dBN(nn.Module):  # BatchNorm1d on (N, L, C) normalizes L, not the out features
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(5, 4), nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.fc(x))


REFUSALS = {
    "conv_output_returned": (lambda: ConvBN("conv_too"), lambda: (torch.randn(1, 3, 6, 6),),
                             "the conv output is also a graph output"),
    "conv_output_other_user": (lambda: ConvBN("other_user"), lambda: (torch.randn(1, 3, 6, 6),),
                               "the conv output has another user"),
    "weight_is_an_input": (WeightAsInput, lambda: (torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3)),
                           "the conv weight is not a constant"),
    "stats_are_inputs": (StatsAsInputs, lambda: (torch.randn(1, 3, 6, 6), torch.randn(4),
                                                 torch.rand(4) + 0.5),
                         "the batch norm statistics are not constants"),
    "linear_3d_bn1d": (Linear3dBN, lambda: (torch.randn(2, 3, 5),),
                       "batch norm normalizes axis 1 of the 3-D linear output, not its features"),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_must_not_fire(name):
    build, make_inputs, reason = REFUSALS[name]
    model, inputs = randomize_bn_(build()), make_inputs()
    gm = captured(model, *inputs)
    code, before = gm.code, outputs(gm, inputs)
    result = fuse_bn.run(gm, ctx())
    gm.recompile()
    assert result.rewrites == 0 and gm.code == code
    assert any(reason in note for note in result.notes), result.notes
    assert all(torch.equal(a, b) for a, b in zip(outputs(gm, inputs), before))


# -- ATen graphs drawn directly: every form of the pattern and every refusal -------------------

class AtenGraph(passkit.AtenGraph):
    """passkit's hand-built graph, with meta recorded from one eager run instead."""

    def tensor(self, t, as_input=False):
        return self.input(t) if as_input else self.const(t)

    call = passkit.AtenGraph.__call__

    def build(self, outs):
        """The GraphModule, meta["val"] of every node recorded from one eager run (cheaper than
        fake propagation; the pass test lints the result by fake propagation anyway)."""
        self.graph.output(tuple(outs))
        gm = fx.GraphModule(self.root, self.graph)
        vals = {}

        class Record(fx.Interpreter):
            def run_node(self, n):
                vals[n] = super().run_node(n)
                return vals[n]

        with torch.no_grad():
            Record(gm).run(*[t.clone() for t in self.inputs])  # clones: training BN mutates
        for n, v in vals.items():
            n.meta["val"] = v
        return gm


@st.composite
def conv_or_linear_bn(draw):
    """(graph, inputs, expected refusal reason or None). Where several apply, the pass names the
    first in its documented order: training, the producer's users and axis, constants."""
    dt = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.float16]))
    seed = draw(st.integers(0, 2 ** 16))
    g, gen = AtenGraph(), torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(dt)  # noqa: E731
    why = None  # the refusal about the weight; the others are decided below
    form = draw(st.sampled_from(["no_training"] * 6 + ["native", "legit", "batch_norm",
                                                       "native_train", "legit_train",
                                                       "batch_norm_train", "no_stats"]))
    training = form.endswith("train") or form == "no_stats"
    batch = 2 if training else draw(st.integers(1, 2))  # batch statistics need 2 values
    if draw(st.sampled_from(["conv", "conv", "linear"])) == "linear":  # -> BatchNorm1d
        rank = draw(st.sampled_from([2, 2, 3]))
        fin, c = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        lead = [batch] + [draw(st.integers(1, 3)) for _ in range(rank - 2)]
        x = g.input(rnd(*lead, fin))
        w_input = draw(st.sampled_from([False] * 7 + [True]))
        w = g.tensor(rnd(c, fin) / fin ** 0.5, as_input=w_input)
        b = g.const(rnd(c)) if draw(st.booleans()) else None
        prod = g.call(aten.linear.default, x, w, b)
        channels = lead[1] if rank == 3 else c
        why = "the linear weight is not a constant" if w_input else None
        if rank == 3:
            why = "batch norm normalizes axis 1 of the 3-D linear output, not its features"
    else:
        n, groups = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        transposed = draw(st.booleans())
        cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
        k, stride, dil = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
        pad = draw(st.integers(0, 1))
        outpad = draw(st.integers(0, min(stride, dil) - 1)) if transposed else 0
        size = draw(st.integers(max(1, dil * (k - 1) + 1 - 2 * pad), 6))
        if transposed and (size - 1) * stride + dil * (k - 1) + outpad + 1 - 2 * pad < 1:
            pad = 0  # else the transposed conv's output would be empty
        x = g.input(rnd(batch, cin, *[size] * n))
        wshape = (cin, cout // groups, *[k] * n) if transposed else (cout, cin // groups, *[k] * n)
        w_input = draw(st.sampled_from([False] * 7 + [True]))
        w = g.tensor(rnd(*wshape) / (cin * k ** n / groups) ** 0.5, as_input=w_input)
        b = g.const(rnd(cout)) if draw(st.booleans()) else None
        prod = g.call(aten.convolution.default, x, w, b, [stride] * n, [pad] * n, [dil] * n,
                      transposed, [outpad] * n, groups)
        channels = cout
        why = "the conv weight is not a constant" if w_input else None
    kind = "conv" if prod.target is aten.convolution.default else "linear"
    stats_input = draw(st.sampled_from([False] * 9 + [True]))
    mean = g.tensor(rnd(channels) * 0.5, as_input=stats_input)
    var = g.tensor(torch.rand(channels, generator=gen).to(dt) + 0.3, as_input=stats_input)
    affine = draw(st.booleans())
    gamma, beta = (g.const(rnd(channels)), g.const(rnd(channels))) if affine else (None, None)
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    if form == "no_training":
        bn = g.call(aten._native_batch_norm_legit_no_training.default, prod, gamma, beta, mean, var, 0.1, eps)
    elif form.startswith("native"):
        bn = g.call(aten.native_batch_norm.default, prod, gamma, beta, mean, var, training, 0.1, eps)
    elif form.startswith("legit"):
        bn = g.call(aten._native_batch_norm_legit.default, prod, gamma, beta, mean, var, training, 0.1, eps)
    elif form == "no_stats":
        bn = g.call(aten._native_batch_norm_legit.no_stats, prod, gamma, beta, True, 0.1, eps)
    else:
        bn = g.call(aten.batch_norm.default, prod, gamma, beta, mean, var, training, 0.1, eps, False)
    y = bn if form.startswith("batch_norm") else g.call(operator.getitem, bn, 0)
    outs = [g.call(aten.relu.default, y) if draw(st.booleans()) else y]
    extra = draw(st.sampled_from(["none"] * 7 + ["output", "user"]))
    if extra == "output":
        outs.append(prod)
    elif extra == "user":
        outs.append(g.call(aten.sigmoid.default, prod))
    if training:
        why = "batch norm in training mode (batch statistics)"
    elif extra == "output":
        why = f"the {kind} output is also a graph output"
    elif extra == "user":
        why = f"the {kind} output has another user"
    elif why is None and stats_input:
        why = "the batch norm statistics are not constants"
    gm = g.build(outs)
    return gm, g.inputs, why


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(conv_or_linear_bn())
def test_drawn_aten_graphs(case):
    gm, inputs, why = case
    n_bn, n_prod = count(gm, *BN_OPS), count(gm, aten.convolution.default, aten.linear.default)
    code = gm.code
    if why is None:
        result, _, _ = run_checked(gm, inputs)
        assert result.rewrites == 1 and count(gm, *BN_OPS) == 0
        assert count(gm, aten.convolution.default, aten.linear.default) == n_prod
    else:
        result = fuse_bn.run(gm, ctx())
        gm.recompile()
        assert result.rewrites == 0 and gm.code == code and count(gm, *BN_OPS) == n_bn
        assert any(why in note for note in result.notes), (why, result.notes)


def test_non_floating_is_refused():
    """An integer conv cannot run on CPU, so the rule is asked directly (meta only)."""
    g = AtenGraph()
    x = g.input(torch.zeros(1, 2, 4, 4, dtype=torch.int64))
    conv = g.call(aten.convolution.default, x, g.const(torch.ones(3, 2, 1, 1, dtype=torch.int64)),
                  None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    bn = g.call(aten._native_batch_norm_legit_no_training.default, conv, None, None,
                g.const(torch.zeros(3)), g.const(torch.ones(3)), 0.1, 1e-5)
    g.graph.output((g.call(operator.getitem, bn, 0),))
    gm = fx.GraphModule(g.root, g.graph)
    for n in gm.graph.nodes:  # meta by hand: fake propagation of an int conv is not the point
        if n.op == "get_attr":
            n.meta["val"] = getattr(gm, n.target)
    conv.meta["val"] = torch.zeros(1, 3, 4, 4, dtype=torch.int64)
    bn.meta["val"] = (torch.zeros(1, 3, 4, 4, dtype=torch.int64),) * 3
    m = fuse_bn.match(bn, ctx())
    assert not m and m.reason == "non-floating dtype"


# -- fxc.testing's random graphs with planted patterns ---------------------------------------

def plant_linear_bn(b, draw):
    """linear on a (N, C) value -> BatchNorm1d in eval (module or functional)."""
    x = b.pick_value(draw, dtypes=FLOATS, min_rank=2, max_rank=2)
    module = draw(st.booleans())
    y = b.add("linear", x, out_features=draw(st.integers(1, 6)), bias=draw(st.booleans()),
              module=module)
    return b.add("batch_norm", y, affine=draw(st.booleans()), module=module)


# A capture (torch.export) per example costs ~0.6 s: 1/16 of the profile's examples here (12
# under `ci`, 125 under `slow`); the drawn ATen graphs above carry the count.
@settings(max_examples=max(1, settings.default.max_examples // 16),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(graphs(max_ops=5, plant=[plant_conv_bn, plant_linear_bn]))
def test_generated_graphs(g):
    gm = capture(g.module, g.inputs, {}).gm
    n_bn = count(gm, *BN_OPS)
    result, _, _ = run_checked(gm, g.inputs)
    # every batch norm that follows a conv/linear whose output nobody else reads is gone
    assert count(gm, *BN_OPS) == n_bn - result.rewrites
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in BN_OPS:
            src = n.args[0]
            assert not (isinstance(src, fx.Node) and src.target in (
                aten.convolution.default, aten.linear.default) and len(src.users) == 1
                and src.meta["val"].dim() == (2 if src.target is aten.linear.default else 4)), \
                f"an unfolded batch norm after a foldable {src}"

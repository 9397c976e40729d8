"""No-op removal: each numbered rule fires on its pattern and refuses where it must (layout
changes, promotion, broadcasting, -0.0, rounding casts, graph outputs, shared intermediates);
lint, bitwise numbers against the stage before, idempotence, generated graphs."""
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from fxc import ir
from fxc.passes import noops
from fxc.passes.manager import compare
from fxc.passes.rewrite import Refuse, is_graph_output
from fxc.testing import FLOATS, INTS, OPS, graphs
from passkit import aten_graph, captured_after_dce as _captured, fp32_ctx as _ctx  # noqa: E402

aten = torch.ops.aten
FUNCTIONAL_OPS = [name for name, spec in OPS.items() if not spec.inplace]


def _noops(gm, inputs):
    """Run the pass; check lint, bitwise numbers against the stage before, idempotence, and
    that the node count never grows."""
    with torch.no_grad():
        before = gm(*inputs)
    n_before = ir.count_compute(gm)
    result = noops.run(gm, _ctx(inputs))
    gm.recompile()
    ir.lint(gm, "noops")
    with torch.no_grad():
        after = gm(*inputs)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert compare(a, b, "exact") is None
        if isinstance(a, torch.Tensor):
            assert a.stride() == b.stride() or a.numel() <= 1
    assert ir.count_compute(gm) <= n_before
    code = gm.code
    assert noops.run(gm, _ctx(inputs)).rewrites == 0 and gm.code == code
    return result


def _ops(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _refused(result, text):
    return any(n.startswith("refused") and text in n for n in result.notes)


class Graph:
    """A hand-built ATen graph with true meta, for ops capture writes only in some models."""

    def __init__(self, *inputs):
        self.g, self.inputs = fx.Graph(), list(inputs)
        self.x = []
        for i, t in enumerate(inputs):
            n = self.g.placeholder(f"x{i}")
            n.meta["val"] = t
            self.x.append(n)

    def call(self, target, *args, **kwargs):
        return ir.new_call(self.g, target, args, kwargs)

    def module(self, *outs):
        self.g.output(tuple(outs))
        gm = fx.GraphModule(nn.Module(), self.g)
        ir.infer_meta(gm)
        return gm


def _through(b, target, *args, **kwargs):
    """target(x, ...) followed by relu, so that the op under test is not a graph output."""
    return b.module(b.call(aten.relu.default, b.call(target, b.x[0], *args, **kwargs)))


# -- rules 1-6: copies and views that change nothing ---------------------------------------------

class Dropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.drop = nn.Linear(4, 4), nn.Dropout(0.1)

    def forward(self, x):
        return self.fc(self.drop(x.relu()))


def test_rule1_eval_dropout_clone_goes():
    x = torch.randn(2, 4)
    gm = _captured(Dropout(), x)
    assert aten.clone.default in _ops(gm)
    result = _noops(gm, [x])
    assert aten.clone.default not in _ops(gm) and "clone x1" in result.notes


def test_rule1_contiguous_of_a_contiguous_value_goes_and_a_real_copy_stays():
    x = torch.randn(2, 3)
    b = Graph(x)
    c = b.call(aten.clone.default, b.x[0], memory_format=torch.contiguous_format)
    t = b.call(aten.clone.default, b.call(aten.permute.default, b.x[0], [1, 0]),
               memory_format=torch.contiguous_format)
    gm = b.module(b.call(aten.relu.default, c), b.call(aten.relu.default, t))
    result = _noops(gm, [x])
    assert _ops(gm).count(aten.clone.default) == 1
    assert _refused(result, "a real copy")


class ChannelsLast(nn.Module):
    def forward(self, x):
        return x.contiguous(memory_format=torch.channels_last).relu()


def test_rule1_clone_to_channels_last_is_not_a_noop():
    x = torch.randn(1, 3, 4, 4)
    gm = _captured(ChannelsLast(), x)
    assert aten.clone.default in _ops(gm)
    result = _noops(gm, [x])
    assert aten.clone.default in _ops(gm) and result.rewrites == 0
    assert _refused(result, "a real copy")


def test_rule1_clone_to_channels_last_of_a_channels_last_value_goes():
    x = torch.randn(1, 3, 4, 4).to(memory_format=torch.channels_last)
    b = Graph(x)
    gm = _through(b, aten.clone.default, memory_format=torch.channels_last)
    _noops(gm, [x])
    assert aten.clone.default not in _ops(gm)


@pytest.mark.parametrize("target", [aten.alias.default, aten.detach.default])
def test_rule2_alias_and_detach_go(target):
    x = torch.randn(3)
    gm = _through(Graph(x), target)
    _noops(gm, [x])
    assert _ops(gm) == [aten.relu.default]


def test_rule3_cast_to_the_same_dtype_goes_and_a_real_cast_stays():
    x = torch.randn(3)
    b = Graph(x)
    same = b.call(aten._to_copy.default, b.x[0], dtype=torch.float32)
    other = b.call(aten._to_copy.default, b.x[0], dtype=torch.float16)
    gm = b.module(b.call(aten.relu.default, same), b.call(aten.relu.default, other))
    _noops(gm, [x])
    assert _ops(gm).count(aten._to_copy.default) == 1


class Views(nn.Module):
    def forward(self, x):  # x: (3, 4)
        a = x.expand(3, 4)
        b = x.reshape(3, 4)
        c = x[:, :]
        d = x.squeeze(0)
        e = x[:, ::2]  # step 2: a real slice
        f = x[:, 1:]  # start 1: a real slice
        return a.relu() + b.relu() + c.relu() + d.relu(), e.relu(), f.relu()


def test_rules_4_5_6_same_shape_expand_view_slice_squeeze_go():
    x = torch.randn(3, 4)
    gm = _captured(Views(), x)
    result = _noops(gm, [x])
    ops = _ops(gm)
    assert aten.expand.default not in ops and aten.view.default not in ops
    assert ops.count(aten.slice.Tensor) == 2 and not any("squeeze" in str(t) for t in ops)
    assert result.rewrites >= 3


# -- rule 7: arithmetic identities ---------------------------------------------------------------

@pytest.mark.parametrize("target, scalar, dtype, goes", [
    (aten.mul.Tensor, 1, torch.float32, True),
    (aten.mul.Tensor, 1.0, torch.float16, True),
    (aten.div.Tensor, 1, torch.float32, True),
    (aten.sub.Tensor, 0, torch.float32, True),        # -0.0 - 0 = -0.0
    (aten.add.Tensor, -0.0, torch.float32, True),     # -0.0 + -0.0 = -0.0
    (aten.add.Tensor, 0, torch.int64, True),
    (aten.add.Tensor, 0.0, torch.float32, False),     # -0.0 + 0.0 = +0.0
    (aten.add.Tensor, 0, torch.float32, False),
    (aten.sub.Tensor, -0.0, torch.float32, False),    # -0.0 - (-0.0) = +0.0
    (aten.mul.Tensor, 1.0, torch.int64, False),       # promotes to float32
    (aten.div.Tensor, 1, torch.int64, False),         # true division: float32
    (aten.add.Tensor, 0, torch.bool, False),          # promotes to int64
    (aten.mul.Tensor, 2, torch.float32, False),
    (aten.mul.Tensor, 1, torch.bool, False),
])
def test_rule7_arithmetic_identities(target, scalar, dtype, goes):
    x = torch.tensor([-0.0, 0.0, 1.5, -3.0]).to(dtype)
    b = Graph(x)
    after = aten.neg.default if dtype != torch.bool else aten.logical_not.default
    gm = b.module(b.call(after, b.call(target, b.x[0], scalar)))
    result = _noops(gm, [x])
    assert (target not in _ops(gm)) == goes
    if target in (aten.add.Tensor, aten.sub.Tensor) and dtype == torch.float32 and not goes:
        assert _refused(result, "-0.0 into +0.0")


def test_rule7_broadcasting_is_not_lost():
    x = torch.randn(3)
    b = Graph(x)
    ones = b.call(aten.ones.default, [2, 3], dtype=torch.float32, device="cpu")
    gm = b.module(b.call(aten.relu.default, b.call(aten.mul.Tensor, b.x[0], ones)))
    _noops(gm, [x])
    assert aten.mul.Tensor in _ops(gm)  # a tensor of ones, (2, 3): not an identity


# -- rules 8-10: layout chains -------------------------------------------------------------------

class Permutes(nn.Module):
    def forward(self, x):  # (2, 3, 4)
        a = x.permute(0, 2, 1).permute(0, 2, 1)      # cancels
        b = x.transpose(1, 2).transpose(2, 1)        # cancels
        c = x.permute(2, 0, 1).permute(0, 2, 1)      # one permute (2, 1, 0)
        return (a + b).relu(), c.relu()


def test_rules_8_9_permute_pairs_cancel_and_chains_collapse():
    x = torch.randn(2, 3, 4)
    gm = _captured(Permutes(), x)
    assert _ops(gm).count(aten.permute.default) == 6
    result = _noops(gm, [x])
    perms = [n for n in gm.graph.nodes if n.target is aten.permute.default]
    assert len(perms) == 1 and list(perms[0].args[1]) == [2, 1, 0]
    assert "permute_cancel x2" in result.notes and "permute_chain x1" in result.notes


def test_rule9_refuses_when_the_intermediate_has_another_user():
    x = torch.randn(2, 3, 4)
    b = Graph(x)
    p1 = b.call(aten.permute.default, b.x[0], [2, 0, 1])
    p2 = b.call(aten.permute.default, p1, [0, 2, 1])
    gm = b.module(b.call(aten.relu.default, p2), b.call(aten.neg.default, p1))
    result = _noops(gm, [x])
    assert _ops(gm).count(aten.permute.default) == 2
    assert _refused(result, "intermediate permute has another user")


class Reshapes(nn.Module):
    def forward(self, x):  # (2, 3, 4)
        a = x.view(6, 4).view(2, 12).view(24)
        b = x.reshape(24).reshape(2, 3, 4)
        return a.relu(), b.relu()


def test_rule10_view_chains_collapse():
    x = torch.randn(2, 3, 4)
    gm = _captured(Reshapes(), x)
    result = _noops(gm, [x])
    views = [n for n in gm.graph.nodes if n.target is aten.view.default]
    assert len(views) == 1 and list(views[0].args[1]) == [24] and views[0].args[0].op == "placeholder"
    assert result.rewrites >= 3


def test_rule10_refuses_when_the_intermediate_has_another_user_or_strides_would_differ():
    x = torch.randn(2, 3, 4)
    b = Graph(x)
    v1 = b.call(aten.view.default, b.x[0], [6, 4])
    v2 = b.call(aten.view.default, v1, [24])
    gm = b.module(b.call(aten.relu.default, v2), b.call(aten.neg.default, v1))
    result = _noops(gm, [x])
    assert _ops(gm).count(aten.view.default) == 2
    assert _refused(result, "intermediate view has another user")
    # (4, 1) with strides (1, 4): two views give strides (4, 1, 1), one view (4, 1, 4)
    y = torch.randn(1, 4).t()
    b = Graph(y)
    v = b.call(aten.view.default, b.call(aten.view.default, b.x[0], [2, 2]), [1, 4, 1])
    gm = b.module(b.call(aten.relu.default, v))
    result = _noops(gm, [y])
    assert _ops(gm).count(aten.view.default) == 2
    assert _refused(result, "one view would give other strides")
    # a reshape of a transposed value copies: no single view reaches (4, 6) from it
    z = torch.randn(4, 6).t()
    b = Graph(z)
    r = b.call(aten.reshape.default, b.call(aten.reshape.default, b.x[0], [24]), [4, 6])
    gm = b.module(b.call(aten.relu.default, r))
    result = _noops(gm, [z])
    assert _ops(gm).count(aten.reshape.default) == 2
    assert _refused(result, "cannot be viewed so in one step")


# -- rules 11-12: casts ----------------------------------------------------------------------------

@pytest.mark.parametrize("src, mid, cancels", [
    (torch.float16, torch.float32, True),
    (torch.bfloat16, torch.float32, True),
    (torch.int32, torch.int64, True),
    (torch.bool, torch.int32, True),
    (torch.bool, torch.float16, True),
    (torch.int8, torch.float16, True),
    (torch.float32, torch.float16, False),  # rounds
    (torch.float32, torch.bfloat16, False),
    (torch.int64, torch.int32, False),      # wraps
    (torch.int32, torch.float32, False),    # 2**24 + 1 rounds
    (torch.float16, torch.bfloat16, False),
    (torch.float32, torch.int32, False),    # truncates
])
def test_rule11_cast_round_trips(src, mid, cancels):
    x = (torch.tensor([0, 1, 3, 100, -7, 2 ** 24 + 1], dtype=torch.int64) if not src.is_floating_point
         else torch.tensor([0.1, -2.5, 65504.0, 3e-8, 1 / 3, -0.0]))
    x = x.to(src) if src != torch.bool else (x % 2).bool()
    b = Graph(x)
    there = b.call(aten._to_copy.default, b.x[0], dtype=mid)
    back = b.call(aten._to_copy.default, there, dtype=src)
    gm = b.module(b.call(aten.logical_not.default if src == torch.bool else aten.neg.default, back))
    result = _noops(gm, [x])
    assert (aten._to_copy.default not in _ops(gm)) == cancels
    if not cancels:
        assert _refused(result, "rounds")


class F32F16F32(nn.Module):
    def forward(self, x):
        return x.half().float().relu()


def test_rule11_f32_f16_f32_is_kept():
    x = torch.tensor([0.1, 1 / 3, 7e4])
    gm = _captured(F32F16F32(), x)
    result = _noops(gm, [x])
    assert _ops(gm).count(aten._to_copy.default) == 2
    assert _refused(result, "float32 -> float16 -> float32 rounds")


@pytest.mark.parametrize("src, mid, dst, collapses", [
    (torch.float16, torch.float32, torch.bfloat16, True),
    (torch.int16, torch.int64, torch.int32, True),
    (torch.bool, torch.int64, torch.int32, True),
    (torch.int32, torch.int64, torch.float64, False),      # int64 does not hold every float64
    (torch.float32, torch.float16, torch.float64, False),  # f16 narrower than both ends
    (torch.float32, torch.float64, torch.int32, False),    # float -> int: out of range is UB
])
def test_rule12_cast_chains_collapse_only_through_a_wider_type(src, mid, dst, collapses):
    x = torch.tensor([0.1, -2.5, 1000.0, 1 / 3, 3.0])
    x = x.to(src) if src != torch.bool else x > 0
    b = Graph(x)
    there = b.call(aten._to_copy.default, b.x[0], dtype=mid)
    out = b.call(aten._to_copy.default, there, dtype=dst)
    gm = b.module(b.call(aten.abs.default, out))
    _noops(gm, [x])
    casts = [n for n in gm.graph.nodes if n.target is aten._to_copy.default]
    assert (len(casts) == 1 and casts[0].args[0].op == "placeholder") == collapses
    assert casts[-1].meta["val"].dtype == dst


class ZeroPad(nn.Module):
    """torchvision's Swin pads each stage to a multiple of its window; at 224x224 that is 0."""

    def forward(self, x):
        y = torch.nn.functional.pad(x.relu(), (0, 0, 0, 0))
        return y * 2, torch.nn.functional.pad(x, (1, 0)) + 1, torch.nn.functional.pad(x, (-1, 0))


def test_rule13_all_zero_pad_goes_and_a_real_pad_or_crop_stays():
    x = torch.randn(2, 3, 4)
    gm = _captured(ZeroPad(), x)
    assert _ops(gm).count(aten.constant_pad_nd.default) == 3
    result = _noops(gm, [x])
    assert _ops(gm).count(aten.constant_pad_nd.default) == 2
    assert any(n.startswith("pad_zero") for n in result.notes)


def test_rule13_a_zero_pad_returned_next_to_its_input_stays():
    x = torch.randn(2, 3)
    b = Graph(x)
    r = b.call(aten.relu.default, b.x[0])
    gm = b.module(r, b.call(aten.constant_pad_nd.default, r, [0, 0], 0.0))
    result = _noops(gm, [x])
    assert aten.constant_pad_nd.default in _ops(gm)
    assert _refused(result, "graph output would repeat another output")


def test_exact_table():
    assert noops.exact(torch.float16, torch.float32) and not noops.exact(torch.float32, torch.float16)
    assert noops.exact(torch.uint8, torch.bfloat16) and not noops.exact(torch.int16, torch.float16)
    assert noops.exact(torch.int32, torch.float64) and not noops.exact(torch.int64, torch.float64)
    assert noops.exact(torch.bool, torch.int8) and not noops.exact(torch.int8, torch.bool)
    assert not noops.exact(torch.uint8, torch.int8) and noops.exact(torch.uint8, torch.int16)
    assert not noops.exact(torch.float32, torch.complex64)


# -- graph outputs and in-place graphs -----------------------------------------------------------

class ReturnsDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        y = x * 2
        return self.drop(x), self.drop(y), y.permute(1, 0).permute(1, 0)


def test_a_graph_output_never_becomes_an_input_or_another_output():
    x = torch.randn(2, 3)
    gm = _captured(ReturnsDropout(), x)
    result = _noops(gm, [x])
    outs = gm.graph.output_node().args[0]
    assert all(o.op == "call_function" for o in outs)  # the input is not returned as itself
    assert len(set(outs)) == 3  # nor one tensor twice
    assert _refused(result, "graph output would be the placeholder itself")


def test_in_place_graph_is_left_alone():
    x = torch.randn(3)
    b = Graph(x)
    c = b.call(aten.clone.default, b.x[0])
    b.call(aten.add_.Tensor, c, 1.0)
    gm = b.module(c)
    result = noops.run(gm, _ctx([x]))
    assert result.rewrites == 0 and "writes in place" in result.notes[0]


# -- generated graphs ----------------------------------------------------------------------------

def plant_permute_pair(b, draw):
    """x.permute(p).permute(inverse of p), or a transpose twice."""
    x = b.pick_value(draw, min_rank=2)
    rank = len(b.value(x).shape)
    perm = draw(st.permutations(range(rank)))
    inverse = tuple(sorted(range(rank), key=lambda i: perm[i]))
    return b.add("permute", b.add("permute", x, dims=tuple(perm)), dims=inverse)


def plant_reshape_round_trip(b, draw):
    x = b.pick_value(draw, min_rank=1)
    shape = b.value(x).shape
    return b.add("reshape", b.add("reshape", x, shape=(-1,)), shape=tuple(shape))


def plant_identity_arith(b, draw):
    op, c = draw(st.sampled_from([("mul_scalar", 1), ("mul_scalar", 1.0), ("add_scalar", 0),
                                  ("add_scalar", 0.0), ("add_scalar", -0.0), ("div_scalar", 1)]))
    x = b.pick_value(draw, dtypes=FLOATS + INTS)
    return b.add(op, x, c=c)


def plant_cast_round_trip(b, draw):
    src, mid = draw(st.sampled_from([(torch.float32, torch.float16), (torch.float16, torch.float32),
                                     (torch.int32, torch.int64), (torch.int64, torch.int32),
                                     (torch.bool, torch.int64), (torch.float32, torch.float64)]))
    x = b.pick_value(draw, dtypes=(src,))
    return b.add("to_dtype", b.add("to_dtype", x, dtype=mid), dtype=src)


def plant_same_shape_view(b, draw):
    x = b.pick_value(draw, min_rank=1, max_rank=3)
    shape = b.value(x).shape
    if draw(st.booleans()):
        return b.add("expand", x, sizes=tuple(shape))
    return b.add("slice", x, index=(slice(None),))


NOOP_PLANTERS = [plant_permute_pair, plant_reshape_round_trip, plant_identity_arith,
                 plant_cast_round_trip, plant_same_shape_view]


def _inject_copies(gm, draw):
    """Put clone / alias / detach / same-dtype _to_copy between values and their users (at the
    ATen level: the generator has no dropout); the pass must remove or refuse each."""
    values = [n for n in gm.graph.nodes if n.op in ("placeholder", "call_function", "get_attr")
              and isinstance(n.meta.get("val"), torch.Tensor) and n.users]
    injected = []
    for n in values[:draw(st.integers(0, 3))]:
        target = draw(st.sampled_from([aten.clone.default, aten.alias.default, aten.detach.default,
                                       aten._to_copy.default]))
        kwargs = {"dtype": n.meta["val"].dtype} if target is aten._to_copy.default else {}
        with gm.graph.inserting_after(n):
            c = ir.new_call(gm.graph, target, (n,), kwargs)
        n.replace_all_uses_with(c, delete_user_cb=lambda u: u is not c)
        injected.append(c)
    gm.recompile()
    return injected


def _run_generated(g, draw):
    gm = aten_graph(g)
    injected = _inject_copies(gm, draw)
    result = _noops(gm, list(g.inputs))
    alive = set(gm.graph.nodes)
    for c in injected:
        if c in alive:  # kept only where a copy changes layout or a graph output would alias
            m = _RULE_OF[c.target](c, None)
            assert isinstance(m, Refuse), ir.describe(c)
            assert is_graph_output(c) or "real copy" in m.reason, (ir.describe(c), m.reason)
    return result


_RULE_OF = {aten.clone.default: noops.match_copy, aten.alias.default: noops.match_alias,
            aten.detach.default: noops.match_alias, aten._to_copy.default: noops.match_cast}


# 200 examples in all under the ci profile: 30 in the default run, 170 more marked slow.
@settings(max_examples=30)
@given(graphs(max_ops=5, dtypes=(torch.float32, torch.float16, torch.int32, torch.int64, torch.bool),
              ops=FUNCTIONAL_OPS, plant=NOOP_PLANTERS[:3]), st.data())
def test_generated_graphs_with_noops(g, data):
    result = _run_generated(g, data.draw)
    assert result.rewrites > 0 or any(n.startswith("refused") for n in result.notes)


@pytest.mark.slow
@settings(max_examples=170)
@given(graphs(max_ops=8, dtypes=(torch.float32, torch.float16, torch.int32, torch.int64, torch.bool),
              ops=FUNCTIONAL_OPS, plant=NOOP_PLANTERS[2:]), st.data())
def test_generated_graphs_more(g, data):
    result = _run_generated(g, data.draw)
    assert result.rewrites > 0 or any(n.startswith("refused") for n in result.notes)

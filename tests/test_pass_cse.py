"""Common subexpression elimination: structure, lint, bitwise numbers, exact argument keys
(lists, slices, dtypes, -0.0, NaN, bool/int/float), constants merged by their bytes, where
it must not fire (random ops, two graph outputs, in-place graphs), idempotence, generated graphs."""
import math
import operator

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from fxc import ir
from fxc.passes import cse, fold_constants
from fxc.passes.manager import compare
from fxc.testing import FLOATS, INTS, OPS, graphs
from passkit import aten_graph, captured_after_dce as _captured, fp32_ctx as _ctx  # noqa: E402

aten = torch.ops.aten
FUNCTIONAL_OPS = [name for name, spec in OPS.items() if not spec.inplace]


def _cse(gm, inputs):
    """Run the pass; check lint, bitwise numbers against the stage before, idempotence."""
    with torch.no_grad():
        before = gm(*inputs)
    result = cse.run(gm, _ctx(inputs))
    gm.recompile()
    ir.lint(gm, "cse")
    with torch.no_grad():
        after = gm(*inputs)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert compare(a, b, "exact") is None
    code = gm.code
    assert cse.run(gm, _ctx(inputs)).rewrites == 0 and gm.code == code
    return result


def _count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)


class Graph:
    """A hand-built ATen graph with true meta (for argument forms capture never writes)."""

    def __init__(self, *inputs):
        self.g, self.inputs, self.root = fx.Graph(), list(inputs), nn.Module()
        self.x = []
        for i, t in enumerate(inputs):
            n = self.g.placeholder(f"x{i}")
            n.meta["val"] = t
            self.x.append(n)

    def call(self, target, *args, **kwargs):
        return ir.new_call(self.g, target, args, kwargs)

    def const(self, name, tensor):
        self.root.register_buffer(name, tensor)
        n = self.g.get_attr(name)
        n.meta["val"] = tensor
        return n

    def module(self, *outs):
        self.g.output(tuple(outs))
        gm = fx.GraphModule(self.root, self.g)
        ir.infer_meta(gm)
        return gm


# -- what merges ---------------------------------------------------------------------------------

class Duplicated(nn.Module):
    def forward(self, x):
        return (x.relu() * 2).sum(dim=[0, 1]) + (x.relu() * 2).sum(dim=[0, 1])


def test_duplicated_subexpressions_merge():
    x = torch.randn(3, 4, 5)
    gm = _captured(Duplicated(), x)
    assert _count(gm, aten.relu.default) == 2
    result = _cse(gm, [x])
    assert _count(gm, aten.relu.default) == _count(gm, aten.mul.Tensor) == 1
    assert _count(gm, aten.sum.dim_IntList) == 1
    add = next(n for n in gm.graph.nodes if n.target is aten.add.Tensor)
    assert add.args[0] is add.args[1]
    assert result.stats["duplicate_calls"] == 3 and "merged 3 duplicate computation(s)" in result.notes


def test_multi_output_ops_merge_with_their_getitems():
    x = torch.randn(6, 4)
    b = Graph(x)
    s1, s2 = b.call(aten.split.Tensor, b.x[0], 2), b.call(aten.split.Tensor, b.x[0], 2)
    a1, a2 = b.call(operator.getitem, s1, 1), b.call(operator.getitem, s2, 1)
    gm = b.module(b.call(aten.mul.Tensor, a1, a2))
    _cse(gm, [x])
    assert _count(gm, aten.split.Tensor) == 1 and _count(gm, operator.getitem) == 1


@pytest.mark.parametrize("first, second, merged", [
    ((aten.mul.Tensor, 1), (aten.mul.Tensor, 1), True),
    ((aten.mul.Tensor, 1), (aten.mul.Tensor, 1.0), False),     # int64 result vs float32
    ((aten.mul.Tensor, 1), (aten.mul.Tensor, True), False),    # True == 1, hash(True) == hash(1)
    ((aten.add.Tensor, 0.0), (aten.add.Tensor, -0.0), False),  # -0.0 + 0.0 = 0.0; -0.0 + -0.0 = -0.0
    ((aten.add.Tensor, 2.5), (aten.add.Tensor, 2.5), True),
    ((aten.add.Tensor, 2.5), (aten.sub.Tensor, 2.5), False),
])
def test_scalars_are_keyed_exactly(first, second, merged):
    dtype = torch.int64 if isinstance(first[1], int) else torch.float32
    x = torch.tensor([-0.0, 1.0, -2.0]).to(dtype)
    b = Graph(x)
    n1, n2 = b.call(first[0], b.x[0], first[1]), b.call(second[0], b.x[0], second[1])
    gm = b.module(b.call(aten.add.Tensor, n1, n2))
    result = _cse(gm, [x])
    assert (result.stats["duplicate_calls"] == 1) == merged


def test_argument_forms():
    x = torch.randn(4, 6)
    b = Graph(x)
    x0 = b.x[0]
    pairs = {
        "same slice": (b.call(aten.slice.Tensor, x0, 1, 0, 3), b.call(aten.slice.Tensor, x0, 1, 0, 3)),
        "other slice": (b.call(aten.slice.Tensor, x0, 1, 0, 3), b.call(aten.slice.Tensor, x0, 1, 1, 4)),
        "same dims": (b.call(aten.permute.default, x0, [1, 0]), b.call(aten.permute.default, x0, [1, 0])),
        "same dtype": (b.call(aten._to_copy.default, x0, dtype=torch.float16),
                       b.call(aten._to_copy.default, x0, dtype=torch.float16)),
        "other dtype": (b.call(aten._to_copy.default, x0, dtype=torch.float16),
                        b.call(aten._to_copy.default, x0, dtype=torch.bfloat16)),
        "memory format": (b.call(aten.clone.default, x0),
                          b.call(aten.clone.default, x0, memory_format=torch.contiguous_format)),
        "nan fill": (b.call(aten.full.default, [2], math.nan, dtype=torch.float32, device="cpu"),
                     b.call(aten.full.default, [2], math.nan, dtype=torch.float32, device="cpu")),
    }
    sums = {name: b.call(aten.add.Tensor, p, q) for name, (p, q) in pairs.items()}
    gm = b.module(*sums.values())
    _cse(gm, [x])
    merged = {name for name, n in sums.items() if n.args[0] is n.args[1]}
    assert merged == {"same slice", "same dims", "same dtype", "nan fill"}


def test_arg_key():
    k = cse.arg_key
    assert k([1, 2]) == k([1, 2]) and k([1, 2]) != k((1, 2))
    assert k(True) != k(1) and k(1) != k(1.0)
    assert k(0.0) != k(-0.0) and k(math.nan) == k(math.nan) and k(1e-300) != k(0.0)
    assert k(slice(0, 2)) == k(slice(0, 2)) and k(slice(0, 2)) != k(slice(0, 2, 2))
    assert k(torch.float16) != k(torch.bfloat16) and k(torch.device("cpu")) == k(torch.device("cpu"))
    assert k(torch.channels_last) != k(torch.contiguous_format)
    assert k({"dim": [0], "keepdim": True}) != k({"dim": [0], "keepdim": 1})
    assert k(torch.ones(1)) != k(torch.ones(1))  # tensors: identity only
    assert k(None) == k(None) and k("tanh") != k("none")


# -- constants -----------------------------------------------------------------------------------

def test_get_attrs_of_one_attribute_merge():
    x = torch.randn(3)
    b = Graph(x)
    w1, w2 = b.const("w", torch.randn(3)), b.g.get_attr("w")
    w2.meta["val"] = w1.meta["val"]
    gm = b.module(b.call(aten.add.Tensor, b.call(aten.mul.Tensor, b.x[0], w1),
                         b.call(aten.mul.Tensor, b.x[0], w2)))
    result = _cse(gm, [x])
    assert result.stats["same_attribute"] == 1 and result.stats["duplicate_calls"] == 1
    assert sum(n.op == "get_attr" for n in gm.graph.nodes) == 1


class TwoMasks(nn.Module):
    """Two layers, each with its own (equal) causal mask buffer, as gpt2 registers them."""

    def __init__(self, t=8):
        super().__init__()
        self.register_buffer("mask0", torch.tril(torch.ones(t, t)))
        self.register_buffer("mask1", torch.tril(torch.ones(t, t)))

    def forward(self, x):
        x = x.masked_fill(self.mask0 == 0, -1e4).softmax(-1) @ x
        return x.masked_fill(self.mask1 == 0, -1e4).softmax(-1) @ x


def test_identical_constants_merge_and_their_users_follow():
    x = torch.randn(8, 8)
    gm = _captured(TwoMasks(), x)
    result = _cse(gm, [x])
    assert result.stats["identical_constants"] == 1
    assert _count(gm, aten.eq.Scalar) == 1  # mask1 == 0 became mask0 == 0, then merged
    assert len(list(gm.buffers())) == 1


def test_identical_constants_merge_after_folding():
    x = torch.randn(8, 8)
    gm = _captured(TwoMasks(), x)
    fold_constants.run(gm, _ctx([x]))
    gm.recompile()
    masks = lambda: [t for t in gm.buffers() if t.dtype == torch.bool]  # noqa: E731
    assert len(masks()) == 2 and len(list(gm.buffers())) == 4  # masks and -1e4 fill values
    result = _cse(gm, [x])
    assert result.stats["identical_constants"] == 2 and len(masks()) == 1
    assert len(list(gm.buffers())) == 2


@pytest.mark.parametrize("a, b, merged", [
    (torch.tensor([0.0, 1.0]), torch.tensor([-0.0, 1.0]), False),   # torch.equal says equal
    (torch.tensor([math.nan, 1.0]), torch.tensor([math.nan, 1.0]), True),  # torch.equal says not
    (torch.ones(2, 3), torch.ones(3, 2).t(), False),                 # other strides
    (torch.ones(2), torch.ones(2, dtype=torch.float64), False),
    (torch.ones(2, dtype=torch.int32), torch.ones(2, dtype=torch.int32), True),
    (torch.zeros(0), torch.zeros(0), True),
])
def test_constants_merge_only_when_bitwise_identical(a, b, merged):
    x = torch.randn(1)
    g = Graph(x)
    c1, c2 = g.const("c1", a), g.const("c2", b)
    r1 = g.call(aten.add.Tensor, g.call(aten._to_copy.default, c1, dtype=torch.float32), g.x[0])
    r2 = g.call(aten.add.Tensor, g.call(aten._to_copy.default, c2, dtype=torch.float32), g.x[0])
    gm = g.module(g.call(aten.cat.default, [r1, r2]))
    result = _cse(gm, [x])
    assert (result.stats["identical_constants"] == 1) == merged


# -- what must not merge -------------------------------------------------------------------------

def test_random_ops_do_not_merge():
    b = Graph()
    r1 = b.call(aten.rand.default, [3], dtype=torch.float32, device="cpu")
    r2 = b.call(aten.rand.default, [3], dtype=torch.float32, device="cpu")
    gm = b.module(b.call(aten.sub.Tensor, r1, r2))
    result = cse.run(gm, _ctx([]))
    assert result.rewrites == 0 and _count(gm, aten.rand.default) == 2
    assert not cse.is_pure(next(n for n in gm.graph.nodes if n.target is aten.rand.default))


def test_uninitialized_memory_does_not_merge():
    b = Graph()
    e1 = b.call(aten.empty.memory_format, [3], dtype=torch.float32, device="cpu")
    e2 = b.call(aten.empty.memory_format, [3], dtype=torch.float32, device="cpu")
    gm = b.module(b.call(aten.mul.Tensor, e1, 0), b.call(aten.mul.Tensor, e2, 0))
    assert cse.run(gm, _ctx([])).stats["duplicate_calls"] == 0


class BothOutputs(nn.Module):
    def forward(self, x):
        return x.relu(), x.relu(), x.relu() + 1


def test_two_graph_outputs_are_not_merged():
    x = torch.randn(4)
    gm = _captured(BothOutputs(), x)
    result = _cse(gm, [x])
    outs = gm.graph.output_node().args[0]
    assert outs[0] is not outs[1] and _count(gm, aten.relu.default) == 2
    assert result.stats["refused_outputs"] == 1 and result.stats["duplicate_calls"] == 1
    assert "refused 1: both graph outputs" in result.notes


def test_in_place_graph_is_left_alone():
    x = torch.randn(3)
    b = Graph(x)
    c1, c2 = b.call(aten.clone.default, b.x[0]), b.call(aten.clone.default, b.x[0])
    b.call(aten.add_.Tensor, c1, 1.0)
    gm = b.module(c1, b.call(aten.relu.default, c2))
    result = cse.run(gm, _ctx([x]))
    assert result.rewrites == 0 and "writes in place" in result.notes[0]


# -- generated graphs ----------------------------------------------------------------------------

_UNARY = ["relu", "neg", "abs", "exp", "sigmoid", "mul_scalar", "add_scalar", "sum"]


def plant_duplicate(b, draw):
    """The same op on the same operand, twice, both read by one op."""
    op = draw(st.sampled_from(_UNARY))
    x = b.pick_value(draw, dtypes=FLOATS if op == "sigmoid" else FLOATS + INTS)
    static = {"c": draw(st.sampled_from([2, 0.5, -1]))} if op.endswith("scalar") else {}
    y1, y2 = b.add(op, x, **static), b.add(op, x, **static)
    return b.add("add", y1, y2)


def plant_near_duplicates(b, draw):
    """Ops that differ only in how a scalar is written: 0.0 / -0.0, 2 / 2.0. Never merged."""
    x = b.pick_value(draw, dtypes=FLOATS + INTS)
    if b.value(x).dtype.is_floating_point:
        y1, y2 = b.add("add_scalar", x, c=0.0), b.add("add_scalar", x, c=-0.0)
    else:
        y1, y2 = b.add("mul_scalar", x, c=2), b.add("mul_scalar", x, c=2.0)
    return b.add("sub", y2, y1) if b.value(y1).dtype == b.value(y2).dtype else b.add("mul", y2, y1)


def _check_no_duplicates_left(gm):
    keys = {}
    for n in gm.graph.nodes:
        if cse.is_pure(n):
            key = (n.target, cse.arg_key(n.args), cse.arg_key(n.kwargs))
            if key in keys:  # only two graph outputs may stay twice
                assert any(u.op == "output" for u in n.users) and any(
                    u.op == "output" for u in keys[key].users), ir.describe(n)
            keys.setdefault(key, n)


def _run_generated(g, planted_dups=0):
    gm = aten_graph(g)
    n_before = ir.count_compute(gm)
    result = _cse(gm, list(g.inputs))
    _check_no_duplicates_left(gm)
    assert ir.count_compute(gm) == n_before - result.stats["duplicate_calls"]
    assert result.stats["duplicate_calls"] + result.stats["refused_outputs"] >= planted_dups


# 200 examples in all under the ci profile: 40 in the default run, 160 more marked slow.
@settings(max_examples=25)
@given(graphs(max_ops=6, dtypes=(torch.float32, torch.int64), ops=FUNCTIONAL_OPS,
              plant=[plant_duplicate]))
def test_generated_graphs_with_duplicates(g):
    _run_generated(g, planted_dups=1)


@settings(max_examples=15)
@given(graphs(max_ops=4, dtypes=(torch.float32, torch.int32), ops=FUNCTIONAL_OPS,
              plant=[plant_near_duplicates]))
def test_generated_graphs_with_near_duplicates(g):
    gm = aten_graph(g)
    n_before = ir.count_compute(gm)
    result = _cse(gm, list(g.inputs))
    _check_no_duplicates_left(gm)
    assert ir.count_compute(gm) == n_before - result.stats["duplicate_calls"]


@pytest.mark.slow
@settings(max_examples=160)
@given(graphs(max_ops=8, dtypes=(torch.float32, torch.float16, torch.int64, torch.bool),
              ops=FUNCTIONAL_OPS, plant=[plant_duplicate, plant_near_duplicates]))
def test_generated_graphs_more(g):
    _run_generated(g, planted_dups=1)

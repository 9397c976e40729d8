"""Constant folding: structure, lint, numbers against the stage before, where it must not fire
(inputs, impure ops, size, graph outputs), idempotence, generated graphs, and the zoo."""
import contextlib
import dataclasses

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensor

import fxc
from fxc import ir, models
from fxc.passes import cse, fold_constants
from fxc.passes.manager import compare
from fxc.testing import FLOATS, OPS, graphs
from passkit import aten_graph, captured_after_dce as _captured, fp32_ctx as _ctx  # noqa: E402

aten = torch.ops.aten
FUNCTIONAL_OPS = [name for name, spec in OPS.items() if not spec.inplace]


def _fold(gm, inputs, **options):
    """Run the pass; check lint and numbers against the stage before; return the result."""
    with torch.no_grad():
        before = gm(*inputs)
    result = fold_constants.run(gm, _ctx(inputs, **options))
    gm.recompile()
    ir.lint(gm, "fold_constants")
    with torch.no_grad():
        after = gm(*inputs)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert compare(a, b, "fp32") is None
    return result


def _ops(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _folded(gm):
    return [n for n in gm.graph.nodes if n.op == "get_attr" and n.target.startswith("folded_")]


# -- what must fold ------------------------------------------------------------------------------

class WeightT(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 6))

    def forward(self, x):
        return x @ (self.w.t() * 2)


def test_transposed_scaled_weight_folds_into_one_constant():
    x = torch.randn(3, 6)
    gm = _captured(WeightT(), x)
    assert aten.permute.default in _ops(gm) and aten.mul.Tensor in _ops(gm)
    result = _fold(gm, [x])
    assert _ops(gm) == [aten.matmul.default]
    (const,) = _folded(gm)
    assert const.target == "folded_mul"
    assert result.rewrites == 2 and result.stats["new_constants"] == 1
    # the weight itself is gone; the folded one has the same size: bytes stay
    assert not hasattr(gm, "p_w")
    assert result.stats["constant_bytes_before"] == result.stats["constant_bytes_after"] == 8 * 6 * 4
    assert "constants 192 B -> 192 B" in result.notes


def test_folded_value_equals_eager_and_keeps_meta_true():
    m, x = WeightT(), torch.randn(3, 6)
    gm = _captured(m, x)
    _fold(gm, [x])
    (const,) = _folded(gm)
    tensor = gm.get_buffer(const.target)
    assert torch.equal(tensor, (m.w.t() * 2).detach())
    val = const.meta["val"]
    assert isinstance(val, FakeTensor)
    assert (val.shape, val.stride(), val.dtype, val.device) == (
        tensor.shape, tensor.stride(), tensor.dtype, tensor.device)


class BNArith(nn.Module):
    """Batch norm written out by hand: scale and shift are arithmetic on buffers alone."""

    def __init__(self, c=4):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.rand(c) + 0.5), nn.Parameter(torch.randn(c))
        self.register_buffer("mean", torch.randn(c))
        self.register_buffer("var", torch.rand(c) + 0.1)

    def forward(self, x):
        scale = self.gamma / torch.sqrt(self.var + 1e-5)
        shift = self.beta - self.mean * scale
        return x * scale[:, None, None] + shift[:, None, None]


def test_batch_norm_parameter_arithmetic_folds_to_two_constants():
    x = torch.randn(2, 4, 3, 3)
    gm = _captured(BNArith(), x)
    result = _fold(gm, [x])
    assert sorted(map(str, _ops(gm))) == ["aten.add.Tensor", "aten.mul.Tensor"]
    assert len(_folded(gm)) == 2 and result.rewrites >= 6
    # four vectors in, two (already unsqueezed) out
    assert result.stats["constant_bytes_after"] < result.stats["constant_bytes_before"]


class CausalLM(nn.Module):
    """GPT-2's mask (a tril buffer, sliced and compared) and BERT's position ids (a buffer,
    sliced, through an embedding), as the zoo models write them."""

    def __init__(self, block=16, d=8):
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(block, block)).view(1, 1, block, block))
        self.register_buffer("position_ids", torch.arange(block).unsqueeze(0))
        self.pos = nn.Embedding(block, d)

    def forward(self, x):  # x: (B, T, d)
        T = x.shape[1]
        att = x @ x.transpose(-1, -2)
        att = att.masked_fill(self.bias[0, :, :T, :T] == 0, float("-inf"))
        return att.softmax(-1) @ (x + self.pos(self.position_ids[:, :T]))


def test_causal_mask_and_position_ids_fold():
    x = torch.randn(2, 5, 8)
    gm = _captured(CausalLM(), x)
    result = _fold(gm, [x])
    ops = _ops(gm)
    for gone in (aten.slice.Tensor, aten.eq.Scalar, aten.embedding.default, aten.scalar_tensor.default):
        assert gone not in ops
    assert aten.where.self in ops  # it reads the scores, an input's value
    masks = [gm.get_buffer(n.target) for n in _folded(gm) if gm.get_buffer(n.target).dtype == torch.bool]
    assert len(masks) == 1 and masks[0].shape[-2:] == (5, 5)
    assert not hasattr(gm, "b_bias") and not hasattr(gm, "b_position_ids")
    assert result.stats["constant_bytes_after"] < result.stats["constant_bytes_before"]


class Literals(nn.Module):
    """Position ids made with arange, a causal mask made with full().triu(): no buffer at all."""

    def forward(self, x):  # x: (T, T)
        T = x.shape[0]
        pos = torch.arange(T, device=x.device)
        mask = torch.full((T, T), float("-inf"), device=x.device).triu(1)
        return x + mask + pos.to(x.dtype)


def test_masks_built_from_literals_fold():
    x = torch.randn(6, 6)
    gm = _captured(Literals(), x)
    _fold(gm, [x])
    assert [str(t) for t in _ops(gm)] == ["aten.add.Tensor", "aten.add.Tensor"]


class CastWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):  # x: f16
        return x @ self.w.to(torch.float16)


def test_dtype_cast_of_a_constant_folds():
    x = torch.randn(2, 4).half()
    gm = _captured(CastWeight(), x)
    assert aten._to_copy.default in _ops(gm)
    _fold(gm, [x])
    assert aten._to_copy.default not in _ops(gm)
    (const,) = _folded(gm)
    assert gm.get_buffer(const.target).dtype == torch.float16


# -- what must not fold --------------------------------------------------------------------------

class ExpandWeight(nn.Module):
    def __init__(self, rows=64, width=16):
        super().__init__()
        self.rows, self.width = rows, width
        self.b = nn.Parameter(torch.randn(1, width))

    def forward(self, x):
        return x + (self.b * 2).expand(self.rows, self.width)


BIG = 8192  # an expanded row of 8192 floats over 64 rows: 2 MiB, over fold_constants.SMALL_BYTES


def test_expand_of_a_weight_is_refused_for_size():
    x = torch.randn(64, BIG)
    gm = _captured(ExpandWeight(width=BIG), x)
    result = _fold(gm, [x])
    assert aten.expand.default in _ops(gm)  # stays lazy: 64x the weight, and 2 MiB
    assert aten.mul.Tensor not in _ops(gm)  # its input still folds
    assert result.stats["refused_size"] == 1 and result.stats["small_folded"] == 0
    assert any("refused 1 for size" in n for n in result.notes)
    assert max(gm.get_buffer(n.target).numel() for n in _folded(gm)) == BIG


def test_small_values_fold_whatever_their_ratio():
    """64x its weight, but 4 KB: folds under the absolute rule, and the notes say so."""
    x = torch.randn(64, 16)
    gm = _captured(ExpandWeight(), x)
    result = _fold(gm, [x])
    assert aten.expand.default not in _ops(gm) and result.stats["refused_size"] == 0
    assert result.stats["small_folded"] == 1 and result.stats["small_bytes"] == 64 * 16 * 4
    assert any("1 small value(s) over 4x" in n for n in result.notes), result.notes
    (const,) = _folded(gm)
    assert gm.get_buffer(const.target).shape == (64, 16)


def test_small_values_have_a_total_budget(monkeypatch):
    monkeypatch.setattr(fold_constants, "SMALL_TOTAL", 64 * 16 * 4 - 1)
    x = torch.randn(64, 16)
    gm = _captured(ExpandWeight(), x)
    result = _fold(gm, [x])
    assert aten.expand.default in _ops(gm)
    assert result.stats["refused_size"] == 1 and result.stats["small_folded"] == 0


class WindowBias(nn.Module):
    """torchvision Swin's relative position bias (stage 4: window 7, 24 heads): a gather of its
    (2w-1)^2 x heads table by a constant index, 6.5x the bytes it reads, 230 KB."""

    def __init__(self, w=7, heads=24):
        super().__init__()
        n = w * w
        self.heads, self.n = heads, n
        self.table = nn.Parameter(torch.randn((2 * w - 1) ** 2, heads))
        grid = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
        coords = torch.stack(grid).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
        self.register_buffer("index", (rel[..., 0] * (2 * w - 1) + rel[..., 1]).flatten())

    def forward(self, s):  # s: (windows, heads, n, n)
        bias = self.table[self.index].view(self.n, self.n, -1).permute(2, 0, 1).contiguous()
        return s + bias.unsqueeze(0)


def test_window_attention_bias_folds():
    s = torch.randn(2, 24, 49, 49)
    gm = _captured(WindowBias(), s)
    assert aten.index.Tensor in _ops(gm)
    result = _fold(gm, [s])
    assert _ops(gm) == [aten.add.Tensor], gm.code
    assert result.stats["small_folded"] >= 1 and result.stats["refused_size"] == 0


class ReturnsExpand(nn.Module):
    """Regression (hypothesis): the expanded weight is also a graph output."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.randn(1, 1))

    def forward(self, x):  # x: (5, 1)
        e = self.p.expand(5, 1)
        return x + e, e


def test_expand_of_a_weight_returned_as_an_output_stays():
    x = torch.randn(5, 1)
    gm = _captured(ReturnsExpand(), x)
    _fold(gm, [x])
    assert _ops(gm).count(aten.expand.default) == 1 and not _folded(gm)


def test_size_limit_is_the_option():
    x = torch.randn(64, BIG)
    gm = _captured(ExpandWeight(width=BIG), x)
    result = _fold(gm, [x], fold_size_limit=100.0)
    assert aten.expand.default not in _ops(gm) and result.stats["refused_size"] == 0
    assert result.stats["small_folded"] == 0
    gm = _captured(ExpandWeight(rows=4), torch.randn(4, 16))
    assert _fold(gm, [torch.randn(4, 16)]).stats["small_folded"] == 0  # 4x: within the ratio


class ReadsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return (x + 1) * self.w


def test_nothing_that_reads_an_input_folds():
    x = torch.randn(3, 4)
    gm = _captured(ReadsInput(), x)
    ops = _ops(gm)
    result = _fold(gm, [x])
    assert _ops(gm) == ops and result.rewrites == 0 and not _folded(gm)


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return x + torch.rand(4) * self.w


def test_random_ops_do_not_fold():
    x = torch.randn(4)
    gm = _captured(Noisy(), x)
    result = fold_constants.run(gm, _ctx([x]))
    gm.recompile()
    ir.lint(gm)
    assert any("rand" in str(t) for t in _ops(gm)) and aten.mul.Tensor in _ops(gm)
    assert result.rewrites == 0
    assert any("impure or random" in n for n in result.notes)


class ReturnsConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        return x + 1, self.w.t() * 2


def test_a_graph_output_is_not_folded_but_its_inputs_are():
    x = torch.randn(4)
    gm = _captured(ReturnsConstant(), x)
    result = _fold(gm, [x])
    out = gm.graph.output_node().args[0][1]
    assert out.target is aten.mul.Tensor  # the caller gets a fresh tensor each call
    assert out.args[0].op == "get_attr" and out.args[0].target.startswith("folded_")
    assert any("graph output" in n for n in result.notes)


def test_idempotent():
    x = torch.randn(2, 5, 8)
    gm = _captured(CausalLM(), x)
    assert _fold(gm, [x]).rewrites > 0
    code = gm.code
    again = _fold(gm, [x])
    assert again.rewrites == 0 and gm.code == code


def test_new_names_do_not_clash():
    x = torch.randn(3, 6)
    gm = _captured(WeightT(), x)
    gm.register_buffer("folded_mul", torch.zeros(1))  # the name the pass would pick
    _fold(gm, [x])
    assert [n.target for n in _folded(gm)] == ["folded_mul_1"]


def test_in_place_graph_is_left_alone():
    g = torch.fx.Graph()
    w = g.get_attr("w")
    t = g.call_function(aten.mul.Tensor, (w, 2.0))
    g.call_function(aten.add_.Tensor, (t, 1.0))
    g.output((t,))
    root = nn.Module()
    root.register_buffer("w", torch.ones(3))
    gm = torch.fx.GraphModule(root, g)
    ir.infer_meta(gm)
    result = fold_constants.run(gm, _ctx([]))
    assert result.rewrites == 0 and "writes in place" in result.notes[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_folds_on_the_device_of_the_constants():
    x = torch.randn(2, 5, 8, device="cuda")
    gm = _captured(CausalLM().cuda(), x)
    _fold(gm, [x])
    assert _folded(gm) and all(gm.get_buffer(n.target).is_cuda for n in _folded(gm))
    assert all(n.meta["val"].device.type == "cuda" for n in _folded(gm))


# -- generated graphs ----------------------------------------------------------------------------

def plant_weight_chain(b, draw):
    """A parameter, permuted and scaled (foldable), added to a value that may read an input."""
    x = b.pick_value(draw, dtypes=FLOATS, min_rank=2, max_rank=4)
    shape, dtype = b.value(x).shape, b.value(x).dtype
    perm = draw(st.permutations(range(len(shape))))
    inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
    w = b.new_leaf(tuple(shape[i] for i in perm), dtype, kind="param")
    wt = b.add("permute", w, dims=inverse)
    ws = b.add("mul_scalar", wt, c=draw(st.sampled_from([2, 0.5, -1.5])))
    return b.add("add", x, ws)


def plant_expanded_weight(b, draw):
    """A (1, n) parameter expanded to (m, n), m > fold_size_limit: must stay lazy."""
    m, n = draw(st.integers(5, 8)), draw(st.integers(1, 4))
    x = b.new_leaf((m, n), torch.float32, kind="input")
    w = b.new_leaf((1, n), torch.float32, kind="param")
    e = b.add("expand", w, sizes=(m, n))
    return b.add("add", x, e)


def _check_fold_fixed_point(gm, limit):
    """After folding, a node reading only constants is one the pass must refuse."""
    for n in gm.graph.nodes:
        if n.op != "call_function" or any(i.op != "get_attr" for i in n.all_input_nodes):
            continue
        targets = {i.target for i in n.all_input_nodes}
        src = sum(fold_constants.nbytes(fold_constants.fetch_attr(gm, t)) for t in targets)
        val = n.meta["val"]
        tuple_read_by_output = not isinstance(val, torch.Tensor) and any(
            u.op == "output" for getitem in n.users for u in getitem.users)
        refused = (any(u.op == "output" for u in n.users) or not cse.is_pure(n)
                   or (targets and fold_constants.nbytes(val) > limit * src)
                   or tuple_read_by_output)
        assert refused, f"constant-only node left unfolded: {ir.describe(n)}"


def _lazy_expands(gm):
    """Expands of a constant to over 4x its size (the planted ones, once dce kept them)."""
    return [n for n in gm.graph.nodes if n.target is aten.expand.default
            and n.args[0].op == "get_attr"
            and n.meta["val"].numel() > 4 * n.args[0].meta["val"].numel()]


@contextlib.contextmanager
def _ratio_rule_only():
    """Generated graphs are all small: without this the absolute rule would fold everything
    and the ratio rule would go untested."""
    saved = fold_constants.SMALL_BYTES
    fold_constants.SMALL_BYTES = 0
    try:
        yield
    finally:
        fold_constants.SMALL_BYTES = saved


def _run_generated(g):
    gm = aten_graph(g)
    expands = _lazy_expands(gm)
    with _ratio_rule_only():
        result = _fold(gm, list(g.inputs))
        _check_fold_fixed_point(gm, 4.0)
        assert _lazy_expands(gm) == expands  # refused for size (or as a graph output)
        assert _fold(gm, list(g.inputs)).rewrites == 0  # idempotent
    return result


# 200 examples in all under the ci profile: 40 in the default run, 160 more marked slow.
@settings(max_examples=25)
@given(graphs(max_ops=6, dtypes=(torch.float32, torch.float16, torch.int64), ops=FUNCTIONAL_OPS,
              plant=[plant_weight_chain]))
def test_generated_graphs_with_weight_chains(g):
    result = _run_generated(g)
    assert result.rewrites > 0 or any("graph output" in n for n in result.notes)  # the chain


@settings(max_examples=15)
@given(graphs(max_ops=4, ops=FUNCTIONAL_OPS, plant=[plant_expanded_weight, plant_weight_chain]))
def test_generated_graphs_with_expanded_weights(g):
    _run_generated(g)


@pytest.mark.slow
@settings(max_examples=160)
@given(graphs(max_ops=8, dtypes=(torch.float32, torch.bfloat16, torch.int32, torch.bool),
              ops=FUNCTIONAL_OPS, plant=[plant_weight_chain, plant_expanded_weight]))
def test_generated_graphs_more(g):
    _run_generated(g)


# -- the zoo -------------------------------------------------------------------------------------

MINE = ("noops", "fold_constants", "cse")


def compile_cleanup_only(name):
    """fxc.compile with verify=True, only dce and the clean-up passes on."""
    from fxc.passes import names
    model, inputs = models.get(name, size="tiny")
    others = [p for p in names() if p not in ("dce",) + MINE]
    compiled = fxc.compile(model, inputs, verify=True, disable_passes=others)
    return model, inputs, compiled


def _leaves(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _leaves(v)]
    if dataclasses.is_dataclass(out):
        return [t for f in dataclasses.fields(out) for t in _leaves(getattr(out, f.name))]
    return [out]


FAST_ZOO = {"mlp"}


@pytest.mark.parametrize("name", [
    n if n in FAST_ZOO else pytest.param(n, marks=pytest.mark.slow)
    for n in models.names(include_extras=True)])
def test_zoo_tiny_matches_eager_and_node_counts_never_grow(name):
    model, inputs, compiled = compile_cleanup_only(name)
    with torch.no_grad():
        expected, actual = _leaves(model(*inputs)), _leaves(compiled(*inputs))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
    records = {r.name: r for r in compiled.report_data.records}
    counts = [compiled.report_data.captured_nodes, records["dce"].nodes_after] + [
        records[p].nodes_after for p in MINE]
    assert all(b <= a for a, b in zip(counts, counts[1:])), counts
    assert "constants" in compiled.report()

"""merge_parallel_linear: linears on one input -> one linear over concatenated weights + split.

Structure (one linear and one split_with_sizes per group, the consumers reading getitems, the
old weights freed), lint, numbers against the graph before, refusals with their reason,
idempotence, and the order with the other passes (fuse_attention before, fuse_linear's
epilogue after: neither blocked); on hand-written blocks (BERT's and Llama's q/k/v, Llama's
gate/up), on ATen graphs drawn directly, and on fxc.testing's random graphs with parallel
linears planted. The zoo: tiny bert and llama compiled with verify=True match eager, with the
counts of all three transformer passes (gpt2, vit and base sizes: test_pass_fuse_attention.py).
"""
import operator

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxc
from fxc import ir
from fxc.capture import capture
from fxc.models import bert, get, llama
from fxc.passes import fuse_attention, fuse_linear, merge_parallel_linear
from fxc.testing import graphs
import passkit  # noqa: E402
from passkit import AtenGraph, Many, ctx, count, outputs, captured, many  # noqa: E402

aten = torch.ops.aten
LINEAR, SPLIT = aten.linear.default, aten.split_with_sizes.default


def run_checked(gm, inputs, c=None):
    """Run the pass; check lint, numbers against the graph before, idempotence, and that every
    get_attr still names a buffer of the module."""
    result = passkit.run_checked(merge_parallel_linear, gm, inputs, c or ctx(),
                                 torch.testing.assert_close)[0]
    buffers = dict(gm.named_buffers())
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            assert n.target in buffers and n.meta["val"].shape == buffers[n.target].shape
    return result


def perturb(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.2)
    return model


# -- hand-written blocks ---------------------------------------------------------------------

BERT = bert.BertConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=16)
LLAMA = llama.LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8)


class BertQKV(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = perturb(bert.BertSelfAttention(BERT))

    def forward(self, x):
        return self.attn(x, torch.zeros(1, 1, 1, x.shape[1]))


class LlamaLayer(nn.Module):
    """q/k/v without bias (k, v narrower: GQA) and the gated MLP's gate/up (silu is no epilogue
    of fuse_linear, so gate and up merge too)."""

    def __init__(self):
        super().__init__()
        self.model = llama.LlamaForCausalLM(LLAMA)
        self.layer = self.model.layers[0]

    def forward(self, x, keep):
        cos, sin = self.model.rotary_emb(x.shape[1], x.dtype)
        return self.layer(x, cos, sin, self.model.causal_mask(keep, x.dtype))


class Heads(nn.Module):
    """Three heads on one input; one returned as it is (its getitem becomes the output), one
    behind relu (fuse_linear's epilogue: left alone), bias on two of them only."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 3)
        self.c, self.d = nn.Linear(6, 5, bias=False), nn.Linear(6, 2)

    def forward(self, x):
        return self.a(x), torch.tanh(self.b(x)), self.c(x) * 2, torch.relu(self.d(x))


# name: (builder, inputs, groups merged, linears merged)
HAND_WRITTEN = {
    "bert_qkv": (BertQKV, lambda: (torch.randn(2, 5, 16),), 1, 3),
    "llama_layer": (LlamaLayer, lambda: (torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.long)), 2, 5),
    "heads": (lambda: perturb(Heads()), lambda: (torch.randn(3, 6),), 1, 2),
}


def test_hand_written():
    model, inputs = many(HAND_WRITTEN)
    gm = captured(model, *inputs)
    n_linear, n_buffers = count(gm, LINEAR), len(dict(gm.named_buffers()))
    result = run_checked(gm, inputs)
    groups = sum(e[2] for e in HAND_WRITTEN.values())
    merged = sum(e[3] for e in HAND_WRITTEN.values())
    assert result.stats == {"groups": groups, "linears": merged}, result.notes
    assert count(gm, LINEAR) == n_linear - merged + groups and count(gm, SPLIT) == groups
    assert any("freed" in note for note in result.notes)
    assert len(dict(gm.named_buffers())) < n_buffers  # the old weights went with the merge
    # Heads: a and b (bias) merged; c (no bias) alone; d (relu: the epilogue's) left alone
    outs = gm.graph.output_node().args[0]
    heads = outs[-4:]
    assert heads[0].target is operator.getitem  # a returned as a getitem of the merged output
    assert heads[3].target is aten.relu.default and heads[3].args[0].target is LINEAR
    assert any("fused into its GEMM later (fuse_linear)" in n for n in result.notes)
    with torch.no_grad():
        for a, b in zip(outputs(gm, inputs), model(*inputs), strict=True):
            torch.testing.assert_close(a, b)


def test_merged_constants_are_the_concatenation():
    model = perturb(Heads())
    x = torch.randn(3, 6)
    gm = captured(model, x)
    run_checked(gm, (x,))
    (merged,) = [n for n in gm.graph.nodes
                 if n.target is LINEAR and n.args[1].target.endswith("_merged")]
    w, b = getattr(gm, merged.args[1].target), getattr(gm, merged.args[2].target)
    assert torch.equal(w, torch.cat([model.a.weight, model.b.weight]))
    assert torch.equal(b, torch.cat([model.a.bias, model.b.bias]))
    (split,) = [n for n in gm.graph.nodes if n.target is SPLIT]
    assert split.args[1:] == ([4, 3], -1)


def test_order_with_attention_and_epilogue():
    """fuse_attention runs before the merge (SDPA's q, k, v become views of one GEMM's output,
    still valid); fuse_linear runs after it and still fuses the relu linear it left alone."""
    model = Many([BertQKV, lambda: perturb(Heads())])
    model.arity = [1, 1]
    inputs = (torch.randn(2, 5, 16), torch.randn(3, 6))
    gm = captured(model, *inputs)
    before = outputs(gm, inputs)
    for p, rewrites in ((fuse_attention, 1), (merge_parallel_linear, 2), (fuse_linear, 1)):
        assert p.run(gm, ctx()).rewrites == rewrites, p.__name__
        gm.recompile()
        ir.lint(gm, p.__name__)
    for a, b in zip(outputs(gm, inputs), before, strict=True):
        torch.testing.assert_close(a, b)
    (sdpa,) = [n for n in gm.graph.nodes if n.target is aten.scaled_dot_product_attention.default]
    for arg in sdpa.args[:3]:  # q, k, v: permute(view(getitem(split(merged linear))))
        while arg.target is not operator.getitem:
            arg = arg.args[0]
        assert arg.args[0].target is SPLIT
    assert count(gm, torch.ops.fxc.linear_act.default) == 1


# -- must not fire ---------------------------------------------------------------------------

class WeightInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x, w):
        return self.a(x), torch.nn.functional.linear(x, w)


class BiasInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(2, 4))

    def forward(self, x, b):
        f = torch.nn.functional.linear
        return f(x, self.w1, b), f(x, self.w2, b[:2])


class FlattenAfter(nn.Module):
    """view(B, T * C) of a linear output cannot view a slice of a wider output."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.a(x).view(x.shape[0], -1), self.b(x).view(x.shape[0], -1)


class BothRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 5)

    def forward(self, x):
        return torch.relu(self.a(x)), torch.relu(self.b(x))


REFUSALS = {
    "weight_input": (WeightInput, lambda: (torch.randn(2, 4), torch.randn(5, 4)), "is not a constant"),
    "bias_input": (BiasInput, lambda: (torch.randn(2, 4), torch.randn(3)), "the bias of"),
    "flatten_after": (FlattenAfter, lambda: (torch.randn(2, 5, 4),), "cannot view a strided slice"),
    "both_relu": (BothRelu, lambda: (torch.randn(2, 4),), "fused into its GEMM later (fuse_linear)"),
}


def test_must_not_fire():
    model, inputs = many(REFUSALS)
    gm = captured(model, *inputs)
    code, before = gm.code, outputs(gm, inputs)
    result = merge_parallel_linear.run(gm, ctx())
    gm.recompile()
    assert result.rewrites == 0 and gm.code == code
    for name, (_, _, reason) in REFUSALS.items():
        assert any(reason in note for note in result.notes), (name, reason, result.notes)
    assert all(torch.equal(a, b) for a, b in zip(outputs(gm, inputs), before))


def test_epilogue_disabled_then_relu_linears_merge():
    """With fuse_linear switched off nothing would take the relu epilogue: merge them."""
    g = AtenGraph()
    x = g.input(torch.randn(2, 4))
    lins = [g(LINEAR, x, g.const(torch.randn(o, 4)), g.const(torch.randn(o))) for o in (3, 5)]
    gm = g.build([g(aten.relu.default, lin) for lin in lins])
    assert merge_parallel_linear.run(gm, ctx()).rewrites == 0
    assert run_checked(gm, g.inputs, ctx(disable=["fuse_linear"])).rewrites == 1


def test_single_linear_is_no_candidate():
    g = AtenGraph()
    x = g.input(torch.randn(2, 4))
    gm = g.build([g(LINEAR, x, g.const(torch.randn(3, 4)), None), g(aten.relu.default, x)])
    result = merge_parallel_linear.run(gm, ctx())
    assert result.rewrites == 0 and result.notes == []


# -- ATen graphs drawn directly ----------------------------------------------------------------

CONSUMERS = ["output", "output", "neg", "split_heads", "permute", "relu", "flatten", "tanh"]


@st.composite
def parallel_case(draw):
    """x -> 2..4 linears with drawn biases, weights (sometimes inputs) and consumers;
    returns (graph, inputs, the groups the rules should merge as sets of linear indices)."""
    g, gen = AtenGraph(), torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    dt = draw(st.sampled_from([torch.float32, torch.float32, torch.float64]))
    rnd = lambda *s: torch.randn(*s, generator=gen).to(dt)  # noqa: E731
    lead = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))]
    fin = draw(st.integers(1, 5))
    x = g.input(rnd(*lead, fin))
    n = draw(st.integers(2, 4))
    eligible, outs = {}, []
    bias_mode = draw(st.sampled_from(["all", "none", "mixed"]))
    for i in range(n):
        fout = 2 * draw(st.integers(1, 3))
        w_input = draw(st.integers(0, 6)) == 0
        w = g.input(rnd(fout, fin)) if w_input else g.const(rnd(fout, fin))
        has_b = bias_mode == "all" or (bias_mode == "mixed" and draw(st.booleans()))
        b = g.const(rnd(fout)) if has_b else None
        lin = g(LINEAR, x, w, b)
        use = draw(st.sampled_from(CONSUMERS))
        if use == "output":
            outs.append(lin)
        elif use == "split_heads":  # (..., fout) -> (..., 2, fout / 2): viewable on a slice
            outs.append(g(aten.view.default, lin, lead + [2, fout // 2]))
        elif use == "permute" and lead:
            outs.append(g(aten.permute.default, lin, [len(lead)] + list(range(len(lead)))))
        elif use == "flatten":  # merges the last dim with the rest: not viewable on a slice
            outs.append(g(aten.view.default, lin, [-1]))
        else:
            op = {"neg": aten.neg.default, "relu": aten.relu.default, "tanh": aten.tanh.default,
                  "permute": aten.neg.default}[use]
            outs.append(g(op, lin))
        # view(-1) of a slice of wider rows works only when there is a single row
        bad_view = use == "flatten" and any(d > 1 for d in lead)
        if not (w_input or use == "relu" or bad_view):
            eligible[i] = has_b
    by_bias = {}
    for i, has_b in eligible.items():
        by_bias.setdefault(has_b, set()).add(i)
    groups = [s for s in by_bias.values() if len(s) >= 2]
    return g.build(outs), g.inputs, groups, n


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(parallel_case())
def test_drawn_parallel_linears(case):
    gm, inputs, groups, n = case
    code = gm.code
    if not groups:
        result = merge_parallel_linear.run(gm, ctx())
        gm.recompile()
        assert result.rewrites == 0 and gm.code == code
        assert any("fewer than two can merge" in note for note in result.notes), result.notes
        return
    result = run_checked(gm, inputs)
    assert result.stats == {"groups": len(groups), "linears": sum(map(len, groups))}, result.notes
    assert count(gm, SPLIT) == len(groups)
    assert count(gm, LINEAR) == n - sum(map(len, groups)) + len(groups)


# -- fxc.testing's random graphs with parallel linears planted ---------------------------------

def plant_parallel_linears(b, draw):
    """2-3 linears (modules or functional, with or without bias) on one drawn value."""
    x = b.pick_value(draw, dtypes=(torch.float32,), min_rank=1)
    bias = draw(st.booleans())
    return [b.add("linear", x, out_features=draw(st.integers(1, 6)), bias=bias,
                  module=draw(st.booleans())) for _ in range(draw(st.integers(2, 3)))]


@settings(max_examples=5, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(graphs(max_ops=4, dtypes=(torch.float32,), allow_empty=False, plant=[plant_parallel_linears]))
def test_generated_graphs(g):
    gm = capture(g.module, g.inputs, {}).gm
    result = run_checked(gm, g.inputs)
    # the planted linears merged, unless a later op took one (a relu epilogue, a flattening view)
    assert result.rewrites >= 1 or any("refused" in n for n in result.notes), (result.notes, g)


# -- the zoo ---------------------------------------------------------------------------------

ZOO_TINY = {
    "bert": {"recognize_norm_act": {}, "fuse_attention": {"sdpa": 2},
             "merge_parallel_linear": {"groups": 2, "linears": 6}},
    "llama": {"recognize_norm_act": {"rms_norm": 5}, "fuse_attention": {"sdpa": 2},
              "merge_parallel_linear": {"groups": 4, "linears": 10}},
}


@pytest.mark.parametrize("name", ZOO_TINY)
def test_zoo_tiny(name):
    import torch.utils._pytree as pytree
    model, inputs = get(name, "tiny")
    compiled = fxc.compile(model, inputs, verify=True)
    records = {r.name: r for r in compiled.report_data.records}
    for p, stats in ZOO_TINY[name].items():
        assert records[p].stats == stats, (p, records[p].stats, records[p].notes)
    with torch.no_grad():
        got, want = pytree.tree_leaves(compiled(*inputs)), pytree.tree_leaves(model(*inputs))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)

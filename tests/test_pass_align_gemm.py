"""align_gemm: a half GEMM whose output features N are not a multiple of 8 gets a zero-padded
constant weight (and bias) and a slice of its output; a tied reader of the weight reads a view
of the padded copy. Structure, lint, numbers against the stage before (half tolerance), the
weight stored once, idempotence, the refusals, and random graphs with planted linears.
"""
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxc
from fxc import ir
from fxc.capture import capture
from fxc.options import CompileOptions
from fxc.passes import PassContext, align_gemm, cast_precision
from fxc.passes.manager import lowp_problem
from fxc.passes.pipeline import PIPELINE
from fxc.testing import graphs
import passkit  # noqa: E402


aten = torch.ops.aten


def cuda_half_ctx(inputs, precision="fp16"):
    """Options of a CUDA fp16 compile; the graph itself runs on CPU (the pass only reads meta)."""
    return PassContext(CompileOptions(device=torch.device("cuda"), precision=precision,
                                      backend="torch"), list(inputs))


def half_graph(model, *inputs, precision="fp16"):
    """The graph as align_gemm sees it in the pipeline: captured, then cast to half."""
    gm = capture(model.eval(), inputs, {}).gm
    c = cuda_half_ctx(inputs, precision)
    cast_precision.run(gm, c)
    gm.recompile()
    return gm, c


def run_checked(gm, c):
    def same_shape_within_lowp(a, b):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert lowp_problem(a, b) is None
    return passkit.run_checked(align_gemm, gm, c.example_inputs, c, same_shape_within_lowp)[0]


def weights(gm):
    return {n.target: ir.fetch_attr(gm, n.target).shape for n in gm.graph.nodes
            if n.op == "get_attr"}


class Head(nn.Module):
    def __init__(self, n_out=13, bias=True):
        super().__init__()
        self.body, self.head = nn.Linear(16, 24), nn.Linear(24, n_out, bias=bias)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_odd_output_features_are_padded_and_sliced(bias, precision):
    gm, c = half_graph(Head(13, bias), torch.randn(3, 16), precision=precision)
    result = run_checked(gm, c)
    assert result.rewrites == 1
    shapes = sorted(tuple(s) for s in weights(gm).values())
    assert (16, 24) in shapes and (13, 24) not in shapes  # padded, the original freed
    if bias:
        assert (16,) in shapes and (13,) not in shapes
    (sl,) = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is aten.slice.Tensor]
    assert sl.args[1:] == (-1, 0, 13)


class TiedLM(nn.Module):
    """GPT-2's shape of problem: an embedding and an LM head sharing an odd-sized weight."""

    def __init__(self, vocab=37, d=16):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.wte(ids)))


def test_tied_weight_is_stored_once_and_the_embedding_reads_a_view():
    gm, c = half_graph(TiedLM(), torch.randint(0, 37, (2, 5)))
    run_checked(gm, c)
    shapes = [tuple(s) for s in weights(gm).values()]
    assert shapes.count((40, 16)) == 1 and (37, 16) not in shapes, shapes
    (emb,) = [n for n in gm.graph.nodes if n.op == "call_function"
              and n.target is aten.embedding.default]
    assert emb.args[0].target is aten.slice.Tensor and emb.args[0].args[1:] == (0, 0, 37)


@pytest.mark.parametrize("case,why", [
    ("aligned", None),
    ("odd_k", "K = 13 is not a multiple of 8"),
    ("computed_weight", "the weight is computed"),
])
def test_must_not_fire(case, why):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            k = 13 if case == "odd_k" else 16
            self.w = nn.Parameter(torch.randn(16 if case == "aligned" else 11, k))

        def forward(self, x):
            w = self.w * x.mean() if case == "computed_weight" else self.w
            return torch.nn.functional.linear(x, w)

    k = 13 if case == "odd_k" else 16
    gm, c = half_graph(M(), torch.randn(4, k))
    code = gm.code
    result = align_gemm.run(gm, c)
    gm.recompile()
    assert result.rewrites == 0 and gm.code == code
    if why:
        assert any(why in note for note in result.notes), result.notes


@pytest.mark.parametrize("device,precision", [("cpu", "fp16"), ("cuda", "fp32")])
def test_the_pipeline_runs_it_only_for_cuda_half(device, precision):
    (entry,) = [p for p in PIPELINE if p.name == "align_gemm"]
    assert not entry.when(CompileOptions(device=torch.device(device), precision=precision))
    assert entry.when(CompileOptions(device=torch.device("cuda"), precision="bf16"))


def plant_odd_linear(b, draw):
    x = b.pick_value(draw, dtypes=(torch.float32,), min_rank=1)
    return b.add("linear", x, out_features=draw(st.sampled_from([3, 5, 9, 13])),
                 bias=draw(st.booleans()), module=True)


@settings(max_examples=60,  # fewer than the ci profile's 200, for CI time
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(graphs(max_ops=5, plant=[plant_odd_linear]))
def test_generated_graphs(g):
    gm = passkit.aten_graph(g)  # make_fx: ~20x cheaper than capture, 60 examples in CI
    c = cuda_half_ctx(g.inputs)
    cast_precision.run(gm, c)
    gm.recompile()
    run_checked(gm, c)
    for n in gm.graph.nodes:  # every half GEMM is aligned now, or refused with a reason
        if n.op == "call_function" and n.target is aten.linear.default:
            w = ir.tensor_meta(n.args[1])
            m = align_gemm.match(n, c)
            assert w.shape[0] % 8 == 0 or w.dtype != torch.float16 or \
                isinstance(m, fxc.passes.rewrite.Refuse), (n, m)

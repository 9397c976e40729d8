"""CUDA graphs per shape bucket for symbolic graphs (issue 13.3), their logic on the CPU: the
bucket a size replays in, when padding the batch cannot change an answer, the bounded
least-recently-used cache of captured graphs, and padded calls sliced back to the caller's
batch (a stand-in 'capture' replays the step loop at the bucket's shape). The real CUDA
graphs are the gpu-marked tests at the end."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.export import Dim

import fxc
from fxc.capture import capture
from fxc.runtime.buckets import BucketedGraphs, GraphCache, batch_padding, bucket_size, pad_rows
from fxc.runtime.torch_engine import TorchEngine


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))).softmax(-1)


class MixesRows(nn.Module):
    def forward(self, x):
        return x - x.mean(0, keepdim=True)


def symbolic(model, x, dims=None):
    return capture(model.eval(), (x,), {}, (dims or {0: Dim("batch", min=1, max=64)},)).gm


@pytest.mark.parametrize("n, buckets, high, want", [
    (1, None, 64, 1), (3, None, 64, 4), (4, None, 64, 4), (33, None, 64, 64), (50, None, 48, 48),
    (5, (8, 16, 64), None, 8), (16, (8, 16, 64), None, 16), (65, (8, 16, 64), None, None),
    (20, (8, 64), 32, 32),  # a listed bucket past the declared max: the max (the arena's size)
])
def test_bucket_size(n, buckets, high, want):
    assert bucket_size(n, buckets, high) == want


def test_row_wise_graphs_may_pad_the_batch():
    sym, why = batch_padding(symbolic(Mlp(), torch.randn(3, 8)))
    assert sym is not None, why


def test_graphs_that_mix_rows_may_not():
    sym, why = batch_padding(symbolic(MixesRows(), torch.randn(3, 8)))
    assert sym is None and "works across dim 0" in why


def test_a_symbolic_axis_other_than_dim_0_forbids_padding():
    gm = symbolic(Mlp(), torch.randn(3, 5, 8), {0: Dim("b", max=16), 1: Dim("t", max=16)})
    sym, _ = batch_padding(gm)
    assert sym is not None  # rows stay apart: the second symbol is exact in the key
    gm = symbolic(MixesRows(), torch.randn(3, 5), {1: Dim("t", max=16)})
    assert batch_padding(gm)[0] is None  # dim 0 is static: nothing to pad


def test_graph_cache_is_bounded_and_remembers_failures():
    made = []

    def capture(key):
        made.append(key)
        return (None, "refused") if key == ("bad",) else (object(), "ok")

    cache = GraphCache(capture, limit=2)
    a = cache.get((1,))
    assert cache.get((1,)) is a and made == [(1,)]
    cache.get((2,)), cache.get((1,)), cache.get((4,))  # (2,) is least recently used: dropped
    assert list(cache.graphs) == [(1,), (4,)]
    assert cache.get(("bad",)) is None and cache.get(("bad",)) is None
    assert made.count(("bad",)) == 1 and cache.failed[("bad",)] == "refused"


def test_pad_rows_repeats_the_last_row():
    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(pad_rows(x, 5)[3:], x[2:].expand(2, 2)) and pad_rows(x, 3) is x


class _Replay:
    """A stand-in for a captured graph: the step loop at the shapes it was 'captured' for."""

    def __init__(self, engine, xs):
        self.engine, self.shapes = engine, [tuple(x.shape) for x in xs]

    def run(self, inputs):
        assert [tuple(x.shape) for x in inputs] == self.shapes
        return self.engine.run_steps(inputs)


def test_padded_calls_match_the_step_loop_and_share_a_bucket():
    model = Mlp().eval()
    engine = TorchEngine(symbolic(model, torch.randn(3, 8)))
    graphs = BucketedGraphs(engine, lambda xs: (_Replay(engine, xs), "ok"), None, limit=3)
    for n in (3, 4, 1, 5, 7, 64):
        x = torch.randn(n, 8)
        (got,) = graphs.run([x])
        torch.testing.assert_close(got, model(x))
    assert sorted(graphs.cache.graphs) == [(1,), (8,), (64,)]  # 4 least recent: dropped
    assert graphs.cache.captures == 4  # 4, 1, 8, 64 (3 and 4 share one bucket; 5 and 7 too)


def test_shape_buckets_option_and_past_the_last_bucket():
    model = Mlp().eval()
    engine = TorchEngine(symbolic(model, torch.randn(3, 8)))
    graphs = BucketedGraphs(engine, lambda xs: (_Replay(engine, xs), "ok"), (8, 32), limit=8)
    for n in (2, 20, 40):  # 40: no bucket holds it, the step loop runs
        x = torch.randn(n, 8)
        torch.testing.assert_close(graphs.run([x])[0], model(x))
    assert sorted(graphs.cache.graphs) == [(8,), (32,)]


def test_shape_buckets_option_is_validated():
    with pytest.raises(fxc.FxcOptionError, match="shape_buckets"):
        fxc.compile(Mlp().eval(), (torch.randn(2, 8),), backend="torch", shape_buckets=[0, 4])


@pytest.mark.gpu
def test_cuda_graphs_per_bucket_match_eager():
    model = Mlp().eval().cuda()
    compiled = fxc.compile(model, (torch.randn(3, 8, device="cuda"),), backend="torch",
                           dynamic_shapes=({0: Dim("batch", min=1, max=64)},), max_cuda_graphs=4)
    graphs = compiled.engine.bucketed
    assert graphs is not None and graphs.pad is not None
    for n in (1, 3, 4, 7, 33, 64, 5):
        x = torch.randn(n, 8, device="cuda")
        torch.testing.assert_close(compiled(x), model(x))
    assert len(graphs.cache.graphs) <= 4 and not graphs.cache.failed


@pytest.mark.gpu
def test_cuda_bert_over_sequence_buckets_matches_eager():
    from fxc.models import get
    model, xs = get("bert", size="tiny", batch=2)
    model = model.cuda()
    xs = tuple(x.cuda() for x in xs)
    b, s = Dim("batch", min=1, max=16), Dim("seq", min=8, max=64)
    compiled = fxc.compile(model, xs, backend="torch", precision="fp32",
                           dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
    for n, t in [(1, 8), (16, 64), (3, 13)]:
        ys = tuple(x[:1, :1].expand(n, t).contiguous() for x in xs)
        for got, want in zip(compiled(*ys).values(), model(*ys).values()):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_fused_conv_graphs_may_pad_the_batch():
    """fxc's fused conv ops keep rows apart; the list named one `conv_act` (no such op), so every
    compiled CNN lost batch padding and captured one CUDA graph per exact batch (the H200's
    dynamic resnet50: "%conv2d_act_default (conv2d_act) is not known to keep rows apart")."""
    from fxc.models import get
    model, xs = get("resnet18", size="tiny", batch=2)
    c = fxc.compile(model, xs, backend="torch", dynamic_batch=True)
    sym, why = batch_padding(c.engine.gm)
    assert sym is not None, why
    assert any("conv2d_act" in str(n.target) for n in c.engine.gm.graph.nodes)

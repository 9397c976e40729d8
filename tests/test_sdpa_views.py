"""passes/sdpa_views.py: a view of a permuted SDPA output that only the fast kernels' layout
allows becomes a reshape, so the graph runs whichever attention kernel torch picks (the
CUDA-captured Llama/Qwen2 graphs failed in float32 after fuse_attention's enable_gqa)."""
import pytest
import torch
import torch.fx as fx
from torch.nn.attention import SDPBackend, sdpa_kernel

from fxc.passes import sdpa_views

aten = torch.ops.aten
B, H, S, D = 2, 4, 8, 16


def _graph(tail):
    """q, k, v -> SDPA -> tail ops; the SDPA's meta has flash attention's (B, S, H, D) memory,
    as a CUDA capture records it."""
    g = fx.Graph()
    q, k, v = (g.placeholder(n) for n in "qkv")
    for p in (q, k, v):
        p.meta["val"] = torch.empty(B, H, S, D, device="meta")
    x = g.call_function(aten.scaled_dot_product_attention.default, (q, k, v))
    x.meta["val"] = torch.empty(B, S, H, D, device="meta").transpose(1, 2)
    for target, args in tail:
        x = g.call_function(target, (x, *args))
        # a view's meta as a reshape gives it: the one view flash's layout cannot take still has one
        meta_op = aten.reshape.default if target in (aten.view.default, aten._unsafe_view.default) else target
        x.meta["val"] = meta_op(x.args[0].meta["val"], *args)
    g.output(x)
    return fx.GraphModule(torch.nn.Module(), g)


def _inputs():
    torch.manual_seed(0)
    return [torch.randn(B, H, S, D) for _ in range(3)]


MERGE_HEADS = [(aten.transpose.int, (1, 2)), (aten.view.default, ([B, S, H * D],))]


def test_merge_heads_view_becomes_reshape_and_runs_under_either_kernel():
    gm = _graph(MERGE_HEADS)
    with sdpa_kernel([SDPBackend.MATH]), pytest.raises(RuntimeError, match="view size is not"):
        gm(*_inputs())  # the math kernel writes contiguous memory: the captured view fails
    assert len(sdpa_views.fix(gm)) == 1
    gm.recompile()
    q, k, v = _inputs()
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, S, H * D)
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):  # CPU has a flash kernel too
        with sdpa_kernel([backend]):
            torch.testing.assert_close(gm(q, k, v), want, rtol=1e-5, atol=1e-5)
    gm.graph.lint()
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"][-1] == aten.reshape.default


def test_permute_form_is_followed_too():
    gm = _graph([(aten.permute.default, ([0, 2, 1, 3],)), (aten._unsafe_view.default, ([B, S, H * D],))])
    assert len(sdpa_views.fix(gm)) == 1


@pytest.mark.parametrize("tail", [
    [(aten.view.default, ([B, H, S, D // 2, 2],))],                         # no permute
    [(aten.transpose.int, (1, 2)), (aten.view.default, ([B, S, H, D // 2, 2],))],  # splits the last dim only
])
def test_views_every_layout_allows_stay_views(tail):
    gm = _graph(tail)
    assert sdpa_views.fix(gm) == []
    assert all(n.target != aten.reshape.default for n in gm.graph.nodes)
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        with sdpa_kernel([backend]):
            gm(*_inputs())


def test_a_view_only_the_math_layout_allows_becomes_reshape():
    gm = _graph([(aten.view.default, ([B * H, S, D],))])  # flash's (B, S, H, D) memory cannot
    assert len(sdpa_views.fix(gm)) == 1


def test_a_graph_without_sdpa_is_untouched():
    g = fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.empty(B, H, S, D, device="meta")
    t = g.call_function(aten.transpose.int, (x, 1, 2))
    t.meta["val"] = x.meta["val"].transpose(1, 2)
    g.output(g.call_function(aten.clone.default, (t,)))
    gm = fx.GraphModule(torch.nn.Module(), g)
    assert sdpa_views.fix(gm) == []

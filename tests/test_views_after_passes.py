"""Views stay valid after the passes that change layouts or dtypes (issue 16.9).

A held-out decoder failed in FP16 on CUDA: `pass 'cast_precision': ValueError: Cannot view a
tensor with shape [1, 128, 16, 64] and strides (131072, 64, 8192, 1) as (1, 128, 1024)`. Its
capture recorded SDPA's CUDA layout ((B, L, H, D) in memory), under which
attn.transpose(1, 2).view(B, L, H * D) needs no copy, so none was recorded; in FP16 the
output's layout differs, and the view was impossible. The class: any pass that changes an op's
output layout or dtype. fxc.testing.views draws such chains (CUDA layouts recorded in meta,
this machine being a CPU) and every drawn chain must compile, keep every view valid and
compute what eager computes; a view the new layout still allows must stay a plain view.
"""
import copy

import pytest
import torch
from hypothesis import find, given, settings

from fxc import ir
from fxc.options import CompileOptions
from fxc.passes import PassContext, cast_precision, noops, repair_views
from fxc.testing.views import chain, view_chains
from test_pass_cast_precision import ctx_for

aten = torch.ops.aten
LOOSE = {torch.float16: dict(rtol=1e-2, atol=1e-2), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


def cast(c, precision):
    """cast_precision over chain `c` (calibration off: it runs real CPU kernels on a graph
    recorded on CUDA); returns (its result, the context holding the cast inputs)."""
    ctx = ctx_for(c.inputs, precision, fp16_overflow_threshold=float("inf"))
    result = cast_precision.run(c.module, ctx)
    c.module.recompile()
    return result, ctx


def assert_views_valid_and_meta_true(gm):
    """Every view can view its input; every node's meta is what its inputs' meta give."""
    ir.lint(gm, "views")
    assert not [n.name for n in gm.graph.nodes if noops.needs_copy(n)]
    for n in gm.graph.nodes:
        if n.op == "call_function":
            before = n.meta["val"]
            ir.infer_node_meta(n)
            after = n.meta["val"]
            assert (before.shape, before.stride(), before.dtype) == \
                (after.shape, after.stride(), after.dtype), n.name


def issue_chain(d=64, heads=16, length=128):
    qkv = [torch.randn(1, heads, length, d) for _ in range(3)]
    return chain("sdpa", qkv, [(aten.transpose.int, [1, 2]), (aten.view.default, [[1, length, heads * d]])])


def test_the_issues_decoder_attention_compiles_in_fp16():
    c = issue_chain()
    result, ctx = cast(c, "fp16")
    assert result.stats["views_copied"] == 1 and "contiguous copy" in " ".join(result.notes)
    assert_views_valid_and_meta_true(c.module)
    out = c.module(*ctx.example_inputs)[0]
    assert out.shape == (1, 128, 1024)
    torch.testing.assert_close(out.float(), c.reference(), **LOOSE[torch.float16])


def test_a_view_the_new_layout_allows_stays_a_view():
    """Must not fire: the same chain recorded on the CPU's layout had its copy already."""
    c = issue_chain(d=8, heads=2, length=4)
    c_cpu = chain("sdpa", c.inputs, [(aten.transpose.int, [1, 2]), (aten.view.default, [[1, 4, 2, 8]])],
                  cuda_layout=False)
    result, _ = cast(c_cpu, "fp16")
    assert result.stats["views_copied"] == 0
    assert not any(n.target is aten.clone.default for n in c_cpu.module.graph.nodes)


def test_the_generator_draws_views_a_new_layout_forbids():
    """The strategy reaches the class: some drawn chain's view is impossible on CPU strides."""
    def forbidden(c):
        gm = copy.deepcopy(c.module)
        src = next(n for n in gm.graph.nodes if n.op == "call_function")
        ir.infer_node_meta(src)  # the CPU kernel's layout
        return any(noops.needs_copy(n) for n in _reinferred(gm))
    found = find(view_chains(sources=("conv",)), forbidden, settings=settings(database=None))
    assert found.cuda_layout


def _reinferred(gm):
    for n in gm.graph.nodes:
        if n.op == "call_function" and not noops.needs_copy(n):
            ir.infer_node_meta(n)
        yield n


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@settings(max_examples=40)
@given(c=view_chains(cuda_layouts=(True,)))
def test_cast_precision_keeps_drawn_views_valid(precision, c):
    _, ctx = cast(c, precision)
    assert_views_valid_and_meta_true(c.module)
    out = c.module(*ctx.example_inputs)[0]
    torch.testing.assert_close(out.float(), c.reference(), **LOOSE[ctx.options.dtype])


@settings(max_examples=40)
@given(c=view_chains())
def test_a_kernel_with_another_layout_then_repair_views_pass(c):
    """What align_gemm or fuse_add_norm do (replace an op by one whose output strides differ,
    metas kept true) stands for here as the CPU kernel's layout re-inferred; the repair_views
    pass runs on every device and makes each impossible view read a copy. FP32: values exact."""
    for n in c.module.graph.nodes:
        if n.op == "call_function" and n.target is not aten.view.default:
            ir.infer_node_meta(n)
    ctx = PassContext(CompileOptions(device=torch.device("cpu")), list(c.inputs))
    result = repair_views.run(c.module, ctx)
    c.module.recompile()
    assert_views_valid_and_meta_true(c.module)
    assert (result.stats["views_copied"] > 0) == any(
        n.target is aten.clone.default for n in c.module.graph.nodes)
    torch.testing.assert_close(c.module(*c.inputs)[0], c.reference(), rtol=0, atol=0)


@pytest.mark.gpu
def test_a_partial_rotary_decoder_compiles_in_fp16_on_cuda():
    """The issue's failure on real CUDA kernels: GPT-NeoX with rotary on a quarter of each
    64-wide head, hidden 1024, 16 heads, 128 tokens. Before the fix: FxcPassError "Cannot
    view a tensor with shape [1, 128, 16, 64] and strides (131072, 64, 8192, 1) as
    (1, 128, 1024)"; after it (H200, torch 2.11): relative error 8.0e-4, 2 views copied."""
    transformers = pytest.importorskip("transformers")
    import fxc
    cfg = transformers.GPTNeoXConfig(hidden_size=1024, num_attention_heads=16,
                                     num_hidden_layers=2, intermediate_size=2048,
                                     rotary_pct=0.25, vocab_size=1000, use_cache=False)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = transformers.GPTNeoXModel(cfg)

        def forward(self, ids):
            return self.m(ids, use_cache=False).last_hidden_state

    torch.manual_seed(0)
    model = Decoder().eval().cuda()
    ids = torch.randint(0, 1000, (1, 128), device="cuda")
    with torch.no_grad():
        ref = model(ids).float()
    compiled = fxc.compile(model, (ids,), device="cuda", precision="fp16")
    out = compiled(ids).float()
    assert (out - ref).norm() / ref.norm() < 5e-3
    # repaired either way: repair_views copies, or fuse_attention's sdpa_views turns the view
    # of the attention output into a reshape (H200, torch 2.11: the reshape)
    report = str(compiled.report())
    assert "contiguous copy" in report or "became reshape" in report

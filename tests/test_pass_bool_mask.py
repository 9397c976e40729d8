"""bool_mask: a run-time bool attention mask becomes one additive mask every SDPA shares.
Structure (one where for several SDPAs), lint, bitwise numbers against the stage before on
random masks (fully masked rows included), generated shapes and broadcasts, and where it must
not fire (constant, float or absent masks; the ONNX Runtime engine)."""
import dataclasses

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fxc
from fxc import ir
from fxc.passes import bool_mask
from passkit import captured, count, fp32_ctx, outputs

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
WHERE = aten.where.ScalarOther


class Layers(nn.Module):
    """`n` attention layers reading one padding mask built at run time (HF's form)."""

    def __init__(self, n=3, e=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.ModuleList(nn.Linear(e, 3 * e) for _ in range(n))

    def forward(self, x, attention_mask):
        b, s, e = x.shape
        keep = attention_mask.bool()[:, None, None, :].expand(b, 1, s, s)
        for lin in self.qkv:
            q, k, v = lin(x).view(b, s, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
            x = x + F.scaled_dot_product_attention(q, k, v, attn_mask=keep) \
                .transpose(1, 2).reshape(b, s, e)
        return x


def _run(gm, inputs, **options):
    before = outputs(gm, inputs)
    result = bool_mask.run(gm, fp32_ctx(inputs, **options))
    gm.recompile()
    ir.lint(gm, "bool_mask")
    after = outputs(gm, inputs)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # exact
    return result


def _masks(gm):
    return [n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
            for n in gm.graph.nodes if n.target is SDPA]


def test_one_conversion_for_every_layer_and_numbers_bitwise():
    x, mask = torch.randn(2, 8, 16), torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    gm = captured(Layers(), x, mask)
    assert count(gm, WHERE) == 0 and all(ir.tensor_meta(m).dtype == torch.bool for m in _masks(gm))
    result = _run(gm, [x, mask])
    assert result.rewrites == 3 and count(gm, WHERE) == 1
    (bias,) = set(_masks(gm))
    assert bias.target is WHERE and ir.tensor_meta(bias).dtype == torch.float32
    assert "read by 3 SDPA" in result.notes[-1]
    assert bool_mask.run(gm, fp32_ctx([x, mask])).rewrites == 0  # idempotent: now a float mask


def test_fully_masked_rows_match_sdpa_own_conversion():
    """A row that keeps nothing: SDPA's own conversion gives the same -inf row, same answer."""
    x, mask = torch.randn(2, 8, 16), torch.zeros(2, 8, dtype=torch.long)
    mask[0] = 1
    _run(captured(Layers(n=2), x, mask), [x, mask])


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("keep", torch.ones(8, 8, dtype=torch.bool).tril())

    def forward(self, q, m):
        return F.scaled_dot_product_attention(q, q, q, attn_mask=self.keep), \
            F.scaled_dot_product_attention(q, q, q, attn_mask=m), F.scaled_dot_product_attention(q, q, q)


def test_must_not_fire_on_constant_float_or_absent_masks():
    q, m = torch.randn(1, 2, 8, 4), torch.randn(1, 1, 8, 8)
    gm = captured(Constant(), q, m)
    result = _run(gm, [q, m])
    assert result.rewrites == 0 and count(gm, WHERE) == 0
    assert any("constant" in n for n in result.notes)


def test_must_not_fire_where_the_engine_is_onnx_runtime():
    x, mask = torch.randn(1, 8, 16), torch.ones(1, 8, dtype=torch.long)
    gm = captured(Layers(n=2), x, mask)
    ctx = fp32_ctx([x, mask])
    ctx.options = dataclasses.replace(ctx.options, backend="onnxruntime")
    result = bool_mask.run(gm, ctx)
    assert result.rewrites == 0 and count(gm, WHERE) == 0


def _hand_built(q, k, v, keep):
    """Two SDPAs reading one run-time mask, one positionally and one by keyword; built by
    hand (a capture per example would cost seconds)."""
    g = fx.Graph()
    ins = []
    for name, t in zip("qkvm", (q, k, v, keep)):
        ins.append(g.placeholder(name))
        ins[-1].meta["val"] = t
    q, k, v, keep = ins
    m = ir.new_call(g, aten.bitwise_and.Tensor, (keep, keep))
    a = ir.new_call(g, SDPA, (q, k, v, m))
    b = ir.new_call(g, SDPA, (k, q, v), {"attn_mask": m})
    g.output((ir.new_call(g, aten.mul.Tensor, (a, 2.0)), b))
    return fx.GraphModule(nn.Module(), g)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9),
       st.sampled_from(["full", "row", "col", "one"]), st.sampled_from([0.0, 0.3, 1.0]),
       st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**16))
def test_generated_shapes_and_broadcast_masks(b, h, n, form, p_drop, dtype, seed):
    shape = {"full": (b, h, n, n), "row": (b, 1, 1, n), "col": (1, 1, n, 1), "one": (n, n)}[form]
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, 4, generator=g, dtype=dtype) for _ in range(3))
    keep = torch.rand(shape, generator=g) >= p_drop  # 1.0: every key masked
    gm = _hand_built(q, k, v, keep)
    result = _run(gm, [q, k, v, keep])
    if dtype == torch.float64:  # not a dtype the pass converts for: untouched
        assert result.rewrites == 0 and count(gm, WHERE) == 0
        assert any("q is torch.float64" in n for n in result.notes)
    else:
        assert result.rewrites == 2 and count(gm, WHERE) == 1


def test_in_the_pipeline_hf_style_model_compiles_and_matches():
    x, mask = torch.randn(2, 8, 16), torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
    model = Layers().eval()
    c = fxc.compile(model, (x, mask), backend="torch")
    torch.testing.assert_close(c(x, mask), model(x, mask))
    assert count(c.graph, WHERE) == 1

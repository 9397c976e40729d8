"""rotary: HF's rotate_half RoPE rewritten over [..., 2, h] views so fuse_regions takes it whole.
Structure (neg + cat gone, one region), lint, bitwise numbers against the stage before, the
forms HF writes (full and partial rotary, either operand order), generated shapes and
layouts, and where it must not fire."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import fxc
from fxc import ir
from fxc.passes import rotary
from passkit import aten_graph, count, fp32_ctx, outputs

aten = torch.ops.aten


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class Rope(nn.Module):
    """HF's apply_rotary_pos_emb on a [B, S, H, D] projection viewed as [B, H, S, D]."""

    def __init__(self, rot=None, swap=False):
        super().__init__()
        self.rot, self.swap = rot, swap

    def forward(self, q, cos, sin):
        q = q.transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        rot = self.rot or q.shape[-1]
        q_rot, q_pass = q[..., :rot], q[..., rot:]
        if self.swap:  # operands the other way round at every op
            y = sin * rotate_half(q_rot) + cos * q_rot
        else:
            y = q_rot * cos + rotate_half(q_rot) * sin
        return torch.cat([y, q_pass], dim=-1) * 1.5


def _case(b=1, s=6, heads=2, d=8, rot=None, swap=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s, heads, d, generator=g).to(dtype)
    pos = torch.randn(b, s, rot or d, generator=g).to(dtype)
    return SimpleNamespace(module=Rope(rot, swap), inputs=[q, pos.cos(), pos.sin()])


def _run(gm, inputs):
    before = outputs(gm, inputs)
    result = rotary.run(gm, fp32_ctx(inputs))
    gm.recompile()
    ir.lint(gm, "rotary")
    for a, b in zip(outputs(gm, inputs), before):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # exact
    return result


LAYOUT = "the split form would lay the result out otherwise"


@pytest.mark.parametrize("rot", [None, 4, 6])
def test_rotate_half_goes_and_numbers_are_bitwise(rot):
    c = _case(rot=rot, d=8)
    gm = aten_graph(c)
    assert count(gm, aten.neg.default) == 1
    result = _run(gm, c.inputs)
    assert result.rewrites == 1 and "rotary x1" in result.notes
    assert count(gm, aten.neg.default) == 1 and count(gm, aten.where.self) == 1
    cats = [n for n in gm.graph.nodes if n.target is aten.cat.default]
    assert len(cats) == 1  # only the model's own cat with the pass-through part is left


def test_swapped_operands_refuse_where_the_layout_would_change():
    """sin * rotate_half(q) + cos * q: ATen lays the sum out like the contiguous cat, the
    split form like q (transposed): readers could see other strides, so it must not fire."""
    c = _case(swap=True, d=8, heads=2, s=6)
    gm = aten_graph(c)
    result = _run(gm, c.inputs)
    assert result.rewrites == 0 and any(LAYOUT in n for n in result.notes)


def test_in_the_pipeline_rope_is_one_generated_region(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    c = _case(b=2, s=5, d=8)
    model = c.module.eval()
    compiled = fxc.compile(model, tuple(c.inputs), backend="torch", generated_kernels=True)
    torch.testing.assert_close(compiled(*c.inputs), model(*c.inputs))
    regions = [n for n in compiled.graph.graph.nodes if n.target is torch.ops.fxc.fused_region.default]
    assert any('"aten.neg.default"' in n.args[1] and '"aten.where.self"' in n.args[1] for n in regions)


class NotRope(nn.Module):
    def forward(self, x, cos, sin):
        h = x.shape[-1] // 2
        wrong_order = torch.cat((x[..., :h], -x[..., h:]), -1) * sin + x * cos
        other_tensor = rotate_half(x) * sin + cos * sin  # the other product is not of x
        uneven = torch.cat((-x[..., 3:], x[..., :3]), -1) * sin + x * cos
        return wrong_order, other_tensor, uneven


def test_must_not_fire_on_other_cats():
    x, cos, sin = torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 8)
    gm = aten_graph(SimpleNamespace(module=NotRope(), inputs=[x, cos, sin]))
    result = _run(gm, [x, cos, sin])
    assert result.rewrites == 0 and count(gm, aten.cat.default) == 3
    for why in ("first part is not a negation", "not adjacent halves", "does not multiply"):
        assert any(why in n for n in result.notes), why


class Broadcasts(nn.Module):
    def forward(self, x, cos, sin):  # cos/sin broadcast x to a larger shape: not RoPE's
        return x * cos + rotate_half(x) * sin


def test_must_not_fire_when_cos_broadcasts_x_larger():
    x, cos, sin = torch.randn(1, 8), torch.randn(3, 8), torch.randn(3, 8)
    gm = aten_graph(SimpleNamespace(module=Broadcasts(), inputs=[x, cos, sin]))
    result = _run(gm, [x, cos, sin])
    assert result.rewrites == 0
    assert any("larger shape" in n for n in result.notes)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.integers(1, 7), st.integers(1, 3), st.sampled_from([2, 4, 8, 12]),
       st.booleans(), st.data())
def test_generated_shapes(b, s, heads, d, swap, data):
    rot = data.draw(st.sampled_from([None] + [r for r in (2, 4, 6) if r < d]))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    c = _case(b, s, heads, d, rot, swap, dtype, seed=data.draw(st.integers(0, 999)))
    gm = aten_graph(c)
    result = _run(gm, c.inputs)  # bitwise and same strides either way
    assert result.rewrites == 1 or (swap and any(LAYOUT in n for n in result.notes))
    if not swap:
        assert count(gm, aten.where.self) == 1

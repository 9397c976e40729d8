"""flatten_linear: N-D linear -> view, 2-D linear, view (so a planned linear.out is addmm).

Structure, lint, numbers against the graph before (rounding level: addmm adds the bias inside
the GEMM), idempotence; refusals (non-contiguous input, no bias, another engine); the point of
the pass: the planned engine then calls linear.out on a 2-D input; a garden transformer.
"""
import pytest
import torch
import torch.nn as nn

import fxc
from fxc.passes import flatten_linear
import passkit  # noqa: E402
from passkit import captured_after_dce, count, fp32_ctx  # noqa: E402

aten = torch.ops.aten


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class Block(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16, bias=bias), nn.Linear(16, 8, bias=bias)

    def forward(self, x):                       # x: (B, T, 8) or (B, H, W, 8)
        return self.fc2(torch.relu(self.fc1(x))) + x


@pytest.mark.parametrize("shape", [(2, 5, 8), (2, 3, 4, 8), (7, 1, 1, 1, 8)])
def test_nd_linears_become_2d_gemms_between_views(shape):
    x = torch.randn(*shape)
    gm = captured_after_dce(Block(), x)
    views_before = count(gm, aten.view.default)
    result, _, _ = passkit.run_checked(flatten_linear, gm, [x], fp32_ctx([x]), close)
    assert result.rewrites == 2
    linears = [n for n in gm.graph.nodes if n.target is aten.linear.default]
    assert len(linears) == 2 and all(n.args[0].meta["val"].dim() == 2 for n in linears)
    assert all(n.meta["val"].dim() == 2 for n in linears)
    assert count(gm, aten.view.default) == views_before + 4


def test_must_not_fire_on_2d_inputs_missing_bias_or_non_contiguous_inputs():
    x = torch.randn(4, 8)
    gm = captured_after_dce(Block(), x)
    assert flatten_linear.run(gm, fp32_ctx([x])).rewrites == 0   # already 2-D: nothing to do

    x3 = torch.randn(2, 5, 8)
    gm = captured_after_dce(Block(bias=False), x3)
    r = flatten_linear.run(gm, fp32_ctx([x3]))
    assert r.rewrites == 0 and any("no bias" in n for n in r.notes)

    class Permuted(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):                    # (B, 8, T) -> permute: not contiguous
            return self.fc(x.permute(0, 2, 1))

    xp = torch.randn(2, 8, 5)
    gm = captured_after_dce(Permuted(), xp)
    r = flatten_linear.run(gm, fp32_ctx([xp]))
    assert r.rewrites == 0 and any("not contiguous" in n for n in r.notes)


def test_must_not_fire_for_onnx_runtime():
    x = torch.randn(2, 5, 8)
    gm = captured_after_dce(Block(), x)
    c = fp32_ctx([x])
    c.options = c.options.__class__(**{**c.options.__dict__, "backend": "onnxruntime"})
    r = flatten_linear.run(gm, c)
    assert r.rewrites == 0 and "not fxc's torch runtime" in r.notes[0]


def test_the_planned_engine_runs_linear_out_on_2d_inputs():
    x = torch.randn(2, 5, 8)
    model = Block().eval()
    compiled = fxc.compile(model, (x,), backend="torch")
    steps = [s for s in compiled.engine.steps if s.node.target is aten.linear.default]
    assert steps and all(s.node.args[0].meta["val"].dim() == 2 for s in steps)
    assert any(s.planned for s in steps)   # written into the arena through linear.out (addmm)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)

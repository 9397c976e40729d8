"""torch.compile(backend="fxc") across shapes (issue 13.5): dynamo's recompile with symbolic
inputs (SymInt scalars, tensors of symbolic sizes) becomes one fxc compile over dynamo's
range; no failure on the second shape, no further compile for sizes inside the range."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxc.dynamo as fxc_dynamo
from fxc.models import get


@pytest.fixture
def counted(monkeypatch):
    """fxc_backend, counting the fxc compiles dynamo asks for."""
    fxc_dynamo.register()
    calls = []
    real = fxc_dynamo.fxc_backend

    def backend(gm, example_inputs, **options):
        run = real(gm, example_inputs, **options)
        calls.append(run.fxc_compiled)
        return run

    torch._dynamo.reset()
    yield backend, calls
    torch._dynamo.reset()


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))).reshape(x.shape[0], -1)


def test_second_shape_compiles_once_for_the_range(counted):
    backend, calls = counted
    model = Mlp().eval()
    fn = torch.compile(model, backend=backend)
    for n in (4, 7, 9, 33, 2):
        x = torch.randn(n, 8)
        torch.testing.assert_close(fn(x), model(x))
    assert len(calls) == 2  # the first (static) shape, then one symbolic compile
    (spec,) = [s for s in calls[1].checker.specs if s.dynamic]  # x; parameters stay fixed
    assert spec.dims[0].low == 2 and spec.dims[1] is None


def test_sym_int_inputs_are_read_off_the_tensors(counted):
    backend, calls = counted
    model, (ids,) = get("gpt2", size="tiny", batch=2)
    fn = torch.compile(model, backend=backend)
    with torch.no_grad():
        for b, t in [(2, 16), (3, 11), (5, 9)]:
            x = ids[:1, :t].repeat(b, 1)
            torch.testing.assert_close(fn(x), model(x))
    assert len(calls) <= 3  # static, then at most one recompile per new symbolic axis
    placeholders = [n for n in calls[-1].graph.graph.nodes if n.op == "placeholder"]
    assert all(isinstance(n.meta["val"], torch.Tensor) for n in placeholders)


def test_symbolic_inputs_pass_static_graphs_through():
    gm = torch.fx.symbolic_trace(Mlp())
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            n.meta["example_value"] = torch.randn(4, 8)
    x = torch.randn(4, 8)
    out_gm, inputs, keep, shapes = fxc_dynamo.symbolic_inputs(gm, [x])
    assert out_gm is gm and inputs == [x] and keep == [0] and shapes is None

"""The out= probe of a graph compiled for ranges (issue 13): the engine checks each planned out=
call against its functional call at the example's sizes and at both ends of the declared
ranges (every symbol at its low, then at its high), on the example inputs cut or grown to
those sizes. An out= kernel that misbehaves only at a size the example does not have (here:
one that resizes its out when the batch is 1) is demoted, with the size named; a well-behaved
one stays planned and is seen at all three sizes."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
from torch.export import Dim

import fxc
from fxc.runtime.torch_engine import _range_ends, _resized

_LIB = torch.library.Library("fxc_test_probe", "FRAGMENT")
_SEEN: dict[str, list[tuple[int, ...]]] = {"good": [], "bad": []}


def _define(name: str, batch_one_resizes: bool) -> None:
    """fxc_test_probe::<name>(x) = 2x + 1, with a real (not generated) out= overload."""
    _LIB.define(f"{name}(Tensor x) -> Tensor")
    _LIB.define(f"{name}.out(Tensor x, *, Tensor(a!) out) -> Tensor(a!)")
    _LIB.impl(name, lambda x: x * 2 + 1, "CompositeExplicitAutograd")
    _LIB.impl(name, lambda x: torch.empty_like(x), "Meta")

    def out_kernel(x, *, out):
        _SEEN[name].append(tuple(x.shape))
        if batch_one_resizes and x.shape[0] == 1:
            out.resize_(x.shape[1:])  # a kernel that squeezes a batch of one: wrong for us
            return torch.mul(x[0], 2, out=out).add_(1)
        return torch.mul(x, 2, out=out).add_(1)

    _LIB.impl(f"{name}.out", out_kernel, "CompositeExplicitAutograd")
    _LIB.impl(f"{name}.out", lambda x, *, out: out, "Meta")


_define("good", batch_one_resizes=False)
_define("bad", batch_one_resizes=True)


class Net(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op, self.a, self.b = op, nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = self.op(torch.relu(self.a(x)))  # an intermediate: planned in the arena
        return self.b(torch.tanh(h))


SHAPES = ({0: Dim("b", min=1, max=8), 1: Dim("t", min=2, max=6)},)


def _compile(name: str):
    model = Net(getattr(torch.ops.fxc_test_probe, name).default).eval()
    _SEEN[name].clear()
    compiled = fxc.compile(model, (torch.randn(3, 4, 8),), backend="torch", dynamic_shapes=SHAPES)
    return model, compiled


def _probed_node(compiled, name: str) -> str:
    nodes = [n.name for n in compiled.engine.gm.graph.nodes if n.target is
             getattr(torch.ops.fxc_test_probe, name).default]
    assert len(nodes) == 1
    return nodes[0]


def test_an_out_kernel_that_misbehaves_only_at_the_range_low_end_is_demoted():
    model, compiled = _compile("bad")
    node = _probed_node(compiled, "bad")
    assert (3, 4, 16) in _SEEN["bad"] and (1, 2, 16) in _SEEN["bad"]  # example, then low end
    reasons = {n: why for n, _, why in compiled.memory_plan.unplanned}
    low = {k: lo for k, (lo, _) in compiled.memory_plan.ranges.items()}
    at = ", ".join(f"{k}={n}" for k, n in sorted(low.items()))
    # resize_ reshapes the arena view object itself, so the check sees it as a layout mismatch
    assert reasons.get(node, "").endswith(f" (at {at})"), reasons.get(node)
    assert node not in {t.node for t in compiled.memory_plan.tensors}
    assert not next(s for s in compiled.engine.steps if s.node.name == node).planned
    for b, t in [(1, 2), (1, 6), (8, 6), (3, 4)]:
        compiled.engine.arena.fill_(0xFF)  # NaN in every float slot: a stale read shows
        x = torch.randn(b, t, 8)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x))


def test_a_well_behaved_out_kernel_is_probed_at_both_ends_and_stays_planned():
    model, compiled = _compile("good")
    node = _probed_node(compiled, "good")
    assert {(3, 4, 16), (1, 2, 16), (8, 6, 16)} <= set(_SEEN["good"])
    probe_reasons = ("out= ", "functional layout", "returns an alias")
    assert not [u for u in compiled.memory_plan.unplanned if u[2].startswith(probe_reasons)]
    assert node in {t.node for t in compiled.memory_plan.tensors}
    assert "out= calls probed at the example's sizes; " in compiled.report()
    for b, t in [(1, 2), (8, 6), (5, 3)]:
        compiled.engine.arena.fill_(0xFF)
        x = torch.randn(b, t, 8)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x))


def test_token_ids_stay_valid_at_the_ends_of_bert_ranges():
    # Probe inputs are the example cut or grown (last slice repeated): embedding lookups stay
    # in range, so the whole graph runs at 1x8 and 16x64 and nothing is demoted for it.
    model, ex = fxc.models.get("bert", size="tiny", batch=2)
    b, s = Dim("batch", min=1, max=16), Dim("seq", min=8, max=64)
    compiled = fxc.compile(model, ex, backend="torch", dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
    line = next(ln for _, lines in compiled.engine.report_sections for ln in lines
                if ln.startswith("out= calls probed at"))
    assert re.fullmatch(r"out= calls probed at the example's sizes; "
                        r"s\d+=1, s\d+=8; s\d+=16, s\d+=64", line), line
    assert not [u for u in compiled.memory_plan.unplanned if u[2].startswith("out= ")]


def test_range_ends_and_resized_inputs():
    assert _range_ends({"s0": 3, "s1": 4}, {"s0": (1, 8), "s1": (2, None)}) == [
        {"s0": 1, "s1": 2}, {"s0": 8, "s1": 4}]
    assert _range_ends({"s0": 1}, {"s0": (1, 1)}) == []  # the example is both ends
    assert _range_ends({}, {}) == []
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    assert _resized(ids, (1, 5)).tolist() == [[5, 6, 7, 7, 7]]
    assert _resized(ids, (3, 2)).tolist() == [[5, 6], [8, 9], [8, 9]]
    assert _resized(ids.t(), (2, 3)).stride() == (1, 2)  # the example's stride order kept
    cl = torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
    assert _resized(cl, (1, 3, 2, 6)).is_contiguous(memory_format=torch.channels_last)

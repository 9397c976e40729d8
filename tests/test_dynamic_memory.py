"""The memory plan of a graph compiled for ranges (issue 13.2): a tensor sized by symbols with a
declared maximum is planned at the most bytes it spans over the ranges, so the arena is what a
static compile at the maximum shape needs, and `verify()` holds at both ends of the ranges
(and fails, naming the tensor, for a slot too small for the maximum). A symbol with no
maximum leaves its tensors with the allocator, and the report says why. Runs compare with
eager (assert_close defaults) on an arena poisoned with NaN bytes first."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
from torch.export import Dim

import fxc
from fxc.passes.memory_plan import FxcMemoryPlanError, span_at


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.tanh(self.b(h)) + h
        return self.c(h * 2).softmax(-1)


@pytest.fixture(scope="module")
def ranged():
    model = Net().eval()
    shapes = ({0: Dim("b", min=1, max=16), 1: Dim("t", min=2, max=10)},)
    return model, fxc.compile(model, (torch.randn(3, 5, 8),), backend="torch",
                              dynamic_shapes=shapes)


def test_arena_is_what_a_static_compile_at_the_maximum_needs(ranged):
    model, compiled = ranged
    plan = compiled.memory_plan
    static = fxc.compile(model, (torch.randn(16, 10, 8),), backend="torch").memory_plan
    assert plan.tensors and all(t.span is not None for t in plan.tensors)
    assert plan.arena_bytes == static.arena_bytes
    assert sorted(plan.ranges.values()) == [(1, 16), (2, 10)]
    assert "planned at the declared maximum" in compiled.report()


def test_runs_at_both_ends_and_between_over_a_poisoned_arena(ranged):
    model, compiled = ranged
    for b, t in [(1, 2), (16, 10), (7, 3), (16, 2)]:
        compiled.engine.arena.fill_(0xFF)  # NaN in every float slot: a stale read shows
        x = torch.randn(b, t, 8)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x))


def test_verify_holds_at_the_ends_and_names_a_slot_too_small_for_the_maximum(ranged):
    _, compiled = ranged
    plan = compiled.memory_plan
    low = {k: lo for k, (lo, _) in plan.ranges.items()}
    high = {k: hi for k, (_, hi) in plan.ranges.items()}
    plan.verify()
    plan.verify(at=low)
    plan.verify(at=high)
    big = max(plan.tensors, key=lambda t: t.nbytes)
    assert span_at(big.span, high) == big.nbytes  # sizes that grow with their symbols: exact
    short = dataclasses.replace(big, nbytes=span_at(big.span, low))
    broken = dataclasses.replace(plan, tensors=[short if t is big else t for t in plan.tensors])
    broken.verify(at=low)  # fits the small end
    with pytest.raises(FxcMemoryPlanError, match=rf"spans {big.nbytes} B at .* more than its "
                                                 rf"slot's {short.nbytes} B \(%{big.node}\)"):
        broken.verify()
    with pytest.raises(FxcMemoryPlanError, match=r"outside the planned range"):
        plan.verify(at={k: hi + 1 for k, hi in high.items()})


def test_a_symbol_without_a_maximum_leaves_its_tensors_to_the_allocator():
    model = Net().eval()
    compiled = fxc.compile(model, (torch.randn(3, 5, 8),), backend="torch",
                           dynamic_shapes=({0: Dim("b", min=1)},))
    plan = compiled.memory_plan
    assert not any(t.span is not None for t in plan.tensors)
    reasons = {why for _, _, why in plan.unplanned}
    assert any(r.startswith("dynamic shape: s") and "has no declared maximum" in r for r in reasons)
    assert "has no declared maximum" in compiled.report()
    x = torch.randn(40, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))

"""Dynamic shapes on random well-formed graphs (fxc.testing.graphs): dim 0 of every input of
rank >= 1 is exported as Dim.AUTO, open or with a maximum (export keeps the axes the graph lets
vary, and says which are equal); hypothesis then draws sizes inside each recorded range, the
ends included, and the compiled module must match eager there (assert_close, the graph's
tolerances), its memory plan (sized for the maximum) must verify at those sizes, and it must
refuse a size past the range or a wrong rank with FxcInputError before running. The default
run takes a few examples; the slow-marked twins take many more."""
from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.export import Dim

import fxc
from fxc.testing import FLOAT_DTYPES, graphs


def resized(x: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """`x` with `axis` of size n, repeating its entries (index values stay in range)."""
    if x.shape[axis] == 0:
        return x.new_zeros(x.shape[:axis] + (n,) + x.shape[axis + 1:])
    return x.index_select(axis, torch.arange(n) % x.shape[axis])


def compile_dynamic(g, backend: str, bounded: bool):
    """bounded: each axis' Dim.AUTO gets a maximum a few past the example's size, so the
    torch runtime plans its symbolically sized tensors (an open range leaves them unplanned)."""
    auto = lambda x: Dim.AUTO(max=x.shape[0] + 5) if bounded else Dim.AUTO  # noqa: E731
    shapes = tuple({0: auto(x)} if x.dim() else None for x in g.inputs)
    try:
        return fxc.compile(g.module, g.inputs, backend=backend, dynamic_shapes=shapes)
    except fxc.FxcCaptureError:
        assume(False)  # a graph export cannot trace symbolically (data-dependent sizes)
    except fxc.FxcUnsupportedOpError:  # ONNX: an op refused (with its reason): fine
        assume(False)


@settings(max_examples=6)  # each example is a symbolic torch.export (~1 s under xdist)
@given(graphs(dtypes=FLOAT_DTYPES, max_ops=6, allow_empty=False), st.data())
def test_sizes_inside_the_range_match_eager(g, data):
    check_sizes(g, data, "torch")


@settings(max_examples=5)
@given(graphs(dtypes=(torch.float32,), max_ops=6, allow_empty=False), st.data())
def test_sizes_inside_the_range_match_eager_on_onnxruntime(g, data):
    """FP32 only: ONNX Runtime rounds FP16 chains once more than eager (static shapes too)."""
    check_sizes(g, data, "onnxruntime")


@pytest.mark.slow
@settings(max_examples=80, deadline=None)
@given(graphs(dtypes=FLOAT_DTYPES, max_ops=8, allow_empty=False), st.data())
def test_sizes_inside_the_range_match_eager_many(g, data):
    check_sizes(g, data, "torch")


@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(graphs(dtypes=(torch.float32,), max_ops=8, allow_empty=False), st.data())
def test_sizes_inside_the_range_match_eager_on_onnxruntime_many(g, data):
    check_sizes(g, data, "onnxruntime")


def check_sizes(g, data, backend: str):
    bounded = data.draw(st.sampled_from([True, False]), label="bounded")  # shrinks to True
    compiled = compile_dynamic(g, backend, bounded)
    specs = [s for s in compiled.checker.specs if s.is_tensor]
    symbols = {d.symbol: d for s in specs for d in s.dims if d is not None}
    assume(symbols)
    size = {sym: data.draw(_sizes(d), label=sym) for sym, d in symbols.items()}
    plan = compiled.memory_plan
    if plan is not None and plan.ranges and set(plan.ranges) <= set(size):
        plan.verify(at={k: size[k] for k in plan.ranges})  # the slots hold this size too
    xs = list(g.inputs)
    for i, spec in enumerate(specs):
        for axis, d in enumerate(spec.dims):
            if d is not None:
                xs[i] = resized(xs[i], axis, size[d.symbol])
    with torch.no_grad():
        want = g.module(*xs)
    got = compiled(*xs)
    for a, e in zip(pytree.tree_leaves(got), pytree.tree_leaves(want)):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, **g.tolerances, equal_nan=True)
    if plan is not None:  # a stale arena byte would show as NaN in the next call
        compiled.engine.arena.fill_(0xFF)
        again = compiled(*xs)
        for a, b in zip(pytree.tree_leaves(again), pytree.tree_leaves(got)):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    # the typed error: past the range (or below it), and the wrong rank
    i, axis, d = next((i, a, d) for i, s in enumerate(specs) for a, d in enumerate(s.dims) if d)
    bad = list(xs)
    bad[i] = resized(xs[i], axis, d.high + 1 if d.high is not None else d.low - 1)
    if d.high is not None or d.low > 0:
        with pytest.raises(fxc.FxcInputError, match=rf"axis {axis} \({d.name}\) expected a size"):
            compiled(*bad)
    bad[i] = xs[i][None]
    with pytest.raises(fxc.FxcInputError, match=r"expected rank"):
        compiled(*bad)


def _sizes(d):
    """Sizes in d's range: its ends (where a plan sized for the maximum is tested) or a few
    above its low end."""
    near = st.integers(d.low, min(d.high if d.high is not None else d.low + 6, d.low + 6))
    return st.sampled_from([d.low, d.high]) | near if d.high is not None else near

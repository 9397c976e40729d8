"""Properties of fxc.compile on random well-formed graphs (fxc.testing.graphs):

1. capture -> runtime identity: with every pass off, the compiled module computes what the
   module computes, within TESTING.md's assert_close tolerances (bitwise in practice);
2. the whole pipeline: the same, where fusions that reorder rounding are allowed the
   rounding of the dtype: FP32 within assert_close defaults; a graph that computes in
   FP16/BF16 anywhere within 4 units of the dtype's precision at its outputs' scale (a fused
   or folded op rounds once where eager rounded several times), finite where eager is.
"""
import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from hypothesis import strategies as st

import fxc
from fxc.passes import names as pass_names
from fxc.testing import (ALL_DTYPES, FLOAT_DTYPES, graphs, plant_conv_bn, plant_linear_relu)

ANY_GRAPH = st.one_of(graphs(dtypes=ALL_DTYPES, outputs="any"),
                      graphs(dtypes=FLOAT_DTYPES, plant=(plant_conv_bn, plant_linear_relu),
                             max_ops=4))


def _leaves(x):
    """Leaves and structure, with fx's immutable_list/dict read as list/dict (a GraphModule
    returns those where the model returned a list: the same structure to a user)."""
    return pytree.tree_flatten(_plain(x))


def _plain(x):
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, dict) and type(x) is not dict and not hasattr(x, "_fields"):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, tuple) and type(x) is tuple:
        return tuple(_plain(v) for v in x)
    return x


# each example is a torch.export capture (~0.7 s on 2 cores); the slow twin draws 500
@settings(max_examples=40)
@given(ANY_GRAPH)
def test_capture_runtime_identity(g):
    _capture_runtime_identity(g)


@pytest.mark.slow
@settings(max_examples=500)
@given(ANY_GRAPH)
def test_capture_runtime_identity_more(g):
    _capture_runtime_identity(g)


def _capture_runtime_identity(g):
    expected = g.module(*g.inputs)
    # The torch runtime: the identity under test is capture's (ONNX Runtime, auto's CPU
    # choice, folds batch norm into an FP16 conv and rounds twice: 1-2 ulp off eager).
    compiled = fxc.compile(g.module, g.inputs, disable_passes=tuple(pass_names()),
                           backend="torch")
    torch.testing.assert_close(compiled(*g.inputs), expected, **g.tolerances)


@settings(max_examples=20)
@given(ANY_GRAPH)
def test_compile_matches_eager(g):
    with torch.no_grad():
        expected = g.module(*g.inputs)
    compiled = fxc.compile(g.module, g.inputs)
    actual = compiled(*g.inputs)
    a, a_spec = _leaves(actual)
    e, e_spec = _leaves(expected)
    assert a_spec == e_spec
    lowp = g.lowest_float in (torch.float16, torch.bfloat16)
    for x, y in zip(a, e):
        if not (isinstance(y, torch.Tensor) and y.is_floating_point() and lowp):
            torch.testing.assert_close(x, y, **g.tolerances)
            continue
        finite = torch.isfinite(y)
        assert torch.isfinite(x[finite]).all(), "inf/NaN where eager is finite"
        scale = max(1.0, float(y[finite].abs().max())) if finite.any() else 1.0
        tol = 4 * torch.finfo(g.lowest_float).eps
        torch.testing.assert_close(x[finite], y[finite], rtol=tol, atol=tol * scale)

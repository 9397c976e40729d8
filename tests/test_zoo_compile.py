"""Every zoo model (tiny) compiles and matches eager in FP32 (assert_close defaults)."""
import pytest
import torch

import torch.utils._pytree as pytree

import fxc
from fxc.models import get, names


def assert_same(actual, expected):
    """assert_close over any pytree (dataclass outputs included), structure checked too."""
    a, a_spec = pytree.tree_flatten(actual)
    b, b_spec = pytree.tree_flatten(expected)
    assert a_spec == b_spec and type(actual) is type(expected)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", names(include_extras=True))
def test_zoo_model_matches_eager_fp32(name):
    model, inputs = get(name, size="tiny", batch=2)
    compiled = fxc.compile(model, inputs, backend="torch")
    with torch.no_grad():
        expected = model(*inputs)
    assert_same(compiled(*inputs), expected)
    # a second call with other inputs of the same spec also matches
    _, other = get(name, size="tiny", batch=2, seed=1)
    with torch.no_grad():
        assert_same(compiled(*other), model(*other))

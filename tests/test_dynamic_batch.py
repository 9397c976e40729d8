"""dynamic_batch=True through fxc.compile: the module takes any batch size on dim 0 (the
lowered model's symbolic dim), checked before any kernel runs; every other mismatch is
still the typed FxcInputError naming the input and the expected shape; saved artifacts
keep the dynamic batch. FP32 results are compared with eager under assert_close defaults."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree

import fxc
from fxc.capture import InputSpec
from fxc.models import get
from fxc.runtime.inputs import DynamicBatch, InputChecker

ZOO = ["mlp", "resnet18", "gpt2"]
_CACHE: dict[str, tuple] = {}


def compiled_zoo(name):
    """One compile per model for the module (compiles dominate this file's time)."""
    if name not in _CACHE:
        model, inputs = get(name, size="tiny", batch=2)
        _CACHE[name] = model, inputs, fxc.compile(model, inputs, backend="onnxruntime",
                                                  dynamic_batch=True)
    return _CACHE[name]


def assert_matches_eager(model, got, xs):
    with torch.no_grad():
        want = model(*xs)
    assert pytree.tree_flatten(got)[1] == pytree.tree_flatten(want)[1]
    for g, w in zip(pytree.tree_leaves(got), pytree.tree_leaves(want)):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_runs_other_batch_sizes(name):
    model, _, compiled = compiled_zoo(name)
    assert compiled.engine.batch == DynamicBatch((True,))
    for n in (1, 3, 5):
        _, xs = get(name, size="tiny", batch=n, seed=n)
        assert_matches_eager(model, compiled(*xs), xs)


@pytest.mark.parametrize("name", ZOO)
def test_wrong_rank_and_non_batch_dims_are_still_refused(name):
    _, (x,), compiled = compiled_zoo(name)
    expected = "(batch, " + ", ".join(str(d) for d in x.shape[1:]) + ")"
    with pytest.raises(fxc.FxcInputError, match=rf"input '\w+': expected rank {x.dim()} "
                                                rf"\(shape {re.escape(expected)}\)"):
        compiled(x[0])
    wrong = x[..., :-1]  # the last dim one short, at another batch size too
    for y in (wrong, torch.cat([wrong, wrong])):
        with pytest.raises(fxc.FxcInputError, match=rf"axis {x.dim() - 1} expected size "
                                                    rf"{x.shape[-1]}, got {x.shape[-1] - 1} "
                                                    rf"\(expected shape {re.escape(expected)}"):
            compiled(y)


def test_batch_zero_is_refused_by_name():
    _, (x,), compiled = compiled_zoo("mlp")
    with pytest.raises(fxc.FxcInputError, match=r"axis 0 is the dynamic batch, expected a size "
                                                r">= 1, got 0"):
        compiled(x[:0])


def test_outputs_of_one_batch_size_survive_a_call_at_another():
    model, (x,), compiled = compiled_zoo("mlp")
    first = compiled(x)
    kept = first.clone()
    _, (y,) = get("mlp", size="tiny", batch=7, seed=3)
    assert compiled(y).shape[0] == 7
    assert torch.equal(first, kept)
    assert set(compiled.engine._shapes) >= {2, 7}  # output shapes worked out once per size


def test_static_onnxruntime_module_still_wants_the_compile_batch():
    model, (x,) = get("mlp", size="tiny", batch=2)
    compiled = fxc.compile(model, (x,), backend="onnxruntime")
    assert compiled.engine.batch is None
    with pytest.raises(fxc.FxcInputError, match=r"axis 0 expected size 2, got 3 \(expected "
                                                r"shape \(2, 32\)"):
        compiled(torch.cat([x, x[:1]]))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, y):
        return self.fc(x) + y


def test_batched_inputs_must_agree_on_the_batch():
    model = TwoInputs().eval()
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    compiled = fxc.compile(model, (x, y), backend="onnxruntime", dynamic_batch=True)
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    assert_matches_eager(model, compiled(a, b), (a, b))
    with pytest.raises(fxc.FxcInputError, match=r"input 'y': axis 0 is the dynamic batch, "
                                                r"expected size 4 \(the batch of input 'x'\), got 3"):
        compiled(a, b[:3])


def test_checker_bounds_the_batch_where_the_engine_does():
    """A TensorRT engine's profile ends at trt_max_batch: the checker refuses past it by name."""
    spec = InputSpec("x", True, torch.float32, (2, 5), torch.device("cpu"))
    checker = InputChecker([spec], pytree.tree_flatten(((0,), {}))[1], None,
                           DynamicBatch((True,), 1, 8))
    assert checker.flatten((torch.randn(8, 5),), {})[0].shape == (8, 5)
    with pytest.raises(fxc.FxcInputError, match=r"input 'x': axis 0 is the dynamic batch, "
                                                r"expected a size 1..8, got 9"):
        checker.flatten((torch.randn(9, 5),), {})


@pytest.mark.parametrize("name", ["resnet18", "gpt2"])
def test_saved_dynamic_module_loads_and_runs_other_batch_sizes(name, tmp_path):
    model, _, compiled = compiled_zoo(name)
    compiled.save(str(tmp_path))
    loaded = fxc.load(str(tmp_path))
    assert loaded.engine.batch == DynamicBatch((True,)) and loaded.manifest["dynamic_batch"]
    for n in (1, 4):
        _, xs = get(name, size="tiny", batch=n, seed=10 + n)
        assert_matches_eager(model, loaded(*xs), xs)
    _, (x,) = get(name, size="tiny", batch=3)
    with pytest.raises(fxc.FxcInputError, match=r"expected rank"):
        loaded(x[0])

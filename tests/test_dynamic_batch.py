"""dynamic_batch=True through fxc.compile: the shorthand for dynamic_shapes that makes axis 0
of every tensor input one Dim "batch" in 1..32 (or up to the example's batch; dynamic_batch=N:
1..N), on every backend. Sizes in range run, checked before any kernel runs; every other
mismatch is still the typed FxcInputError naming the input and the expected shape; declaring
axis 0 in both keywords is an FxcOptionError naming both; saved artifacts keep the range.
FP32 results are compared with eager under assert_close defaults."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.export import Dim

import fxc
from fxc.capture import InputSpec
from fxc.dynamic import DEFAULT_MAX_BATCH, with_batch
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


def batch_range(compiled, i=0):
    d = compiled.checker.specs[i].dims[0]
    return d.name, d.low, d.high


@pytest.mark.parametrize("name", ZOO)
def test_zoo_runs_other_batch_sizes(name):
    model, _, compiled = compiled_zoo(name)
    assert batch_range(compiled) == ("batch", 1, DEFAULT_MAX_BATCH)
    assert compiled.engine.batch is None  # symbolic dims of the graph, not the ONNX relaxation
    for n in (1, 3, DEFAULT_MAX_BATCH):
        _, xs = get(name, size="tiny", batch=n, seed=n)
        assert_matches_eager(model, compiled(*xs), xs)


@pytest.mark.parametrize("name", ZOO)
def test_wrong_rank_and_non_batch_dims_are_still_refused(name):
    _, (x,), compiled = compiled_zoo(name)
    expected = f"(batch: 1..{DEFAULT_MAX_BATCH}, " + ", ".join(str(d) for d in x.shape[1:]) + ")"
    with pytest.raises(fxc.FxcInputError, match=rf"input '\w+': expected rank {x.dim()} "
                                                rf"\(shape {re.escape(expected)}\)"):
        compiled(x[0])
    wrong = x[..., :-1]  # the last dim one short, at another batch size too
    for y in (wrong, torch.cat([wrong, wrong])):
        with pytest.raises(fxc.FxcInputError, match=rf"axis {x.dim() - 1} expected size "
                                                    rf"{x.shape[-1]}, got {x.shape[-1] - 1} "
                                                    rf"\(expected shape {re.escape(expected)}"):
            compiled(y)


def test_batches_outside_the_range_are_refused_by_name():
    _, (x,), compiled = compiled_zoo("mlp")
    for n in (0, DEFAULT_MAX_BATCH + 1):
        with pytest.raises(fxc.FxcInputError, match=rf"input 'x': axis 0 \(batch\) expected a "
                                                    rf"size in 1..{DEFAULT_MAX_BATCH}, got {n}"):
            compiled(x[:1].expand(n, -1))


def test_outputs_of_one_batch_size_survive_a_call_at_another():
    model, (x,), compiled = compiled_zoo("mlp")
    first = compiled(x)
    kept = first.clone()
    _, (y,) = get("mlp", size="tiny", batch=7, seed=3)
    assert compiled(y).shape[0] == 7
    assert torch.equal(first, kept)
    assert set(compiled.engine.dims._cache) >= {(2,), (7,)}  # output shapes worked out once per size


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


def test_the_torch_backend_runs_every_batch_and_inputs_must_agree_on_it():
    """The shorthand is a symbolic capture, so fxc's own runtime takes it too (it used to be
    refused there: the ONNX-level relaxation had no counterpart in the step list)."""
    model = TwoInputs().eval()
    compiled = fxc.compile(model, (torch.randn(2, 4), torch.randn(2, 4)), backend="torch",
                           dynamic_batch=True)
    for n in (1, 5, DEFAULT_MAX_BATCH):
        a, b = torch.randn(n, 4), torch.randn(n, 4)
        assert_matches_eager(model, compiled(a, b), (a, b))
    with pytest.raises(fxc.FxcInputError, match=r"input 'y': axis 0 \(batch\) must equal axis 0 "
                                                r"of input 'x' \(size 4\), got 3"):
        compiled(torch.randn(4, 4), torch.randn(3, 4))


def test_an_int_is_the_largest_batch_and_the_example_batch_widens_the_default():
    model = TwoInputs().eval()
    xs = (torch.randn(2, 4), torch.randn(2, 4))
    small = fxc.compile(model, xs, backend="torch", dynamic_batch=6)
    assert batch_range(small) == batch_range(small, 1) == ("batch", 1, 6)
    big = (torch.randn(40, 4), torch.randn(40, 4))
    x_dims, y_dims = with_batch(model, big, {}, None, True)  # what capture is given
    assert x_dims[0] is y_dims[0] and (x_dims[0].min, x_dims[0].max) == (1, 40)
    with pytest.raises(fxc.FxcOptionError, match=r"dynamic_batch=1: expected True"):
        fxc.compile(model, xs, backend="torch", dynamic_batch=1)


def test_with_dynamic_shapes_for_other_axes_and_a_conflict_naming_both():
    class Seq(nn.Module):
        def forward(self, x):
            return x.softmax(-1) * 2

    model, x = Seq().eval(), torch.randn(2, 5, 3)
    seq = Dim("seq", min=2, max=9)
    compiled = fxc.compile(model, (x,), backend="torch", dynamic_batch=4,
                           dynamic_shapes=({1: seq},))
    dims = compiled.checker.specs[0].dims
    assert [(d.name, d.low, d.high) for d in dims[:2]] == [("batch", 1, 4), ("seq", 2, 9)]
    y = torch.randn(3, 9, 3)
    assert_matches_eager(model, compiled(y), (y,))
    with pytest.raises(fxc.FxcOptionError, match=r"dynamic_batch=True and dynamic_shapes= both "
                                                 r"declare axis 0 of input 'x'"):
        fxc.compile(model, (x,), backend="torch", dynamic_batch=True,
                    dynamic_shapes={"x": {0: Dim("b", max=8), 1: seq}})


def test_examples_that_cannot_define_one_batch_are_option_errors():
    model = TwoInputs().eval()
    with pytest.raises(fxc.FxcOptionError, match=r"batch 1, and torch.export fixes"):
        fxc.compile(model, (torch.randn(1, 4), torch.randn(1, 4)), dynamic_batch=True)
    with pytest.raises(fxc.FxcOptionError, match=r"disagree on it \(x: 2, y: 3\)"):
        fxc.compile(model, (torch.randn(2, 4), torch.randn(3, 4)), dynamic_batch=True)


def test_checker_bounds_the_batch_where_the_engine_does():
    """Artifacts saved before dynamic_batch became a shorthand relax dim 0 in the ONNX model
    (DynamicBatch); the checker still refuses past their range by name."""
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
    assert batch_range(loaded) == ("batch", 1, DEFAULT_MAX_BATCH)
    for n in (1, 4):
        _, xs = get(name, size="tiny", batch=n, seed=10 + n)
        assert_matches_eager(model, loaded(*xs), xs)
    _, (x,) = get(name, size="tiny", batch=3)
    with pytest.raises(fxc.FxcInputError, match=r"expected rank"):
        loaded(x[0])

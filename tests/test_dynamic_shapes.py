"""dynamic_shapes= (issue 13): one compile runs every shape in the declared ranges, on the torch
runtime; a shape outside them (or of the wrong rank) is an FxcInputError naming the input, the
axis and the range, before any kernel runs. FP32 results against eager, assert_close defaults."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.export import Dim

import fxc
from fxc.dynamic import DimRange


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Pair(nn.Module):
    """Two inputs sharing a batch and a sequence axis; the sum needs them equal."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x, y):
        return self.fc(x).softmax(1) + y


def assert_matches_eager(model, got, xs):
    with torch.no_grad():
        want = model(*xs)
    for g, w in zip(pytree.tree_leaves(got), pytree.tree_leaves(want)):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w)


@pytest.fixture(scope="module")
def pair():
    model = Pair().eval()
    b, s = Dim("batch", min=1, max=16), Dim("seq", min=2, max=40)
    xs = (torch.randn(3, 5, 6), torch.randn(3, 5, 6))
    return model, fxc.compile(model, xs, backend="torch", dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))


def test_one_compile_runs_the_range_ends_and_sizes_between(pair):
    model, compiled = pair
    for n, t in [(1, 2), (16, 40), (7, 13), (3, 5)]:
        xs = (torch.randn(n, t, 6), torch.randn(n, t, 6))
        assert_matches_eager(model, compiled(*xs), xs)


def test_input_specs_record_each_axis_range(pair):
    _, compiled = pair
    x_spec = compiled.checker.specs[0]
    assert x_spec.dims[0] == DimRange(x_spec.dims[0].symbol, "batch", 1, 16)
    assert (x_spec.dims[1].name, x_spec.dims[1].low, x_spec.dims[1].high) == ("seq", 2, 40)
    assert x_spec.dims[2] is None  # the feature axis stays fixed


@pytest.mark.parametrize("shape, message", [
    ((17, 5, 6), r"input 'x': axis 0 \(batch\) expected a size in 1..16, got 17"),
    ((3, 41, 6), r"input 'x': axis 1 \(seq\) expected a size in 2..40, got 41"),
    ((3, 5, 7), r"input 'x': axis 2 expected size 6, got 7 \(expected shape \(batch: 1..16, "
                r"seq: 2..40, 6\)"),
    ((3, 5), r"input 'x': expected rank 3 \(shape \(batch: 1..16, seq: 2..40, 6\)\), got rank 2"),
])
def test_shapes_outside_the_range_get_the_typed_error(pair, shape, message):
    _, compiled = pair
    with pytest.raises(fxc.FxcInputError, match=message):
        compiled(torch.randn(*shape), torch.randn(3, 5, 6))


def test_axes_of_one_dim_must_agree(pair):
    _, compiled = pair
    with pytest.raises(fxc.FxcInputError, match=r"input 'y': axis 1 \(seq\) must equal axis 1 "
                                                r"of input 'x' \(size 9\), got 8"):
        compiled(torch.randn(3, 9, 6), torch.randn(3, 8, 6))


def test_dict_form_keyed_by_parameter_name_and_auto():
    model = Pair().eval()
    xs = (torch.randn(4, 5, 6), torch.randn(4, 5, 6))
    compiled = fxc.compile(model, xs, backend="torch",
                           dynamic_shapes={"x": {0: Dim.AUTO}, "y": {0: Dim.AUTO}})
    ys = (torch.randn(9, 5, 6), torch.randn(9, 5, 6))
    assert_matches_eager(model, compiled(*ys), ys)
    with pytest.raises(fxc.FxcInputError, match=r"axis 1 expected size 5, got 6"):
        compiled(torch.randn(4, 6, 6), torch.randn(4, 6, 6))


def test_dynamic_shapes_of_the_wrong_structure_are_an_option_error():
    with pytest.raises(fxc.FxcOptionError, match=r"2 entries for 1 inputs"):
        fxc.compile(Mlp().eval(), (torch.randn(2, 8),), dynamic_shapes=({0: Dim("b")}, None))
    with pytest.raises(fxc.FxcOptionError, match=r"\['z'\] name no parameter"):
        fxc.compile(Mlp().eval(), (torch.randn(2, 8),), dynamic_shapes={"z": {0: Dim("b")}})


def test_a_range_the_model_cannot_take_is_a_capture_error_with_exports_suggestion():
    class NeedsEight(nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], 2, 4)

    with pytest.raises(fxc.FxcCaptureError, match=r"export suggests: .*b = 8"):
        fxc.compile(NeedsEight(), (torch.randn(3, 8),), backend="torch",
                    dynamic_shapes=({0: Dim("a", min=1, max=9), 1: Dim("b", min=2, max=9)},))


def test_the_static_shape_error_says_how_to_compile_for_a_range():
    compiled = fxc.compile(Mlp().eval(), (torch.randn(2, 8),), backend="torch")
    with pytest.raises(fxc.FxcInputError, match=r"axis 0 expected size 2, got 3 .*"
                                                r"dynamic_shapes=.*dynamic_batch=True"):
        compiled(torch.randn(3, 8))


def test_report_names_the_passes_symbolic_shapes_skip():
    compiled = fxc.compile(Mlp().eval(), (torch.randn(2, 8),), backend="torch",
                           dynamic_shapes=({0: Dim("batch", max=64)},))
    skipped = {r.name: r.skipped for r in compiled.report_data.records}
    assert skipped["fuse_linear"] is None  # checked on symbolic shapes: it runs
    assert compiled(torch.randn(64, 8)).shape == (64, 4)
    text = compiled.report()
    assert "Dynamic shapes" in text and "input 'x': (batch: 0..64, 8)" in text
    assert "passes skipped on symbolic shapes:" in text


def test_a_dim_with_only_a_max_starts_where_export_says():
    """torch.export.Dim's min defaults to 0 and export's range_constraints say [0, max]; the
    compiled module takes the same range (sizes 0 and 1 included) and names it when refusing.
    (ONNX Runtime ran sizes 0, 1 and 8 of this module too, by hand: its empty-tensor path.)"""
    model, x, b = Mlp().eval(), torch.randn(3, 8), Dim("b", max=8)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: b},), strict=False)
    (vr,) = ep.range_constraints.values()
    compiled = fxc.compile(model, (x,), backend="torch", dynamic_shapes=({0: b},))
    d = compiled.checker.specs[0].dims[0]
    assert (d.low, d.high) == (int(vr.lower), int(vr.upper)) == (0, 8)
    for n in (0, 1, 8):
        xs = (torch.randn(n, 8),)
        assert_matches_eager(model, compiled(*xs), xs)
    with pytest.raises(fxc.FxcInputError, match=r"input 'x': axis 0 \(b\) expected a size in "
                                                r"0\.\.8, got 9"):
        compiled(torch.randn(9, 8))


class Doubled(nn.Module):
    def forward(self, x, y):
        return torch.cat([x, x], 0) + y


def test_a_derived_dim_must_agree_with_its_root_in_another_input():
    """y's axis 0 is 2*s where x's is s: a call where they disagree, or where y's size is no
    2*s at all, is refused naming both inputs and axes (it used to reach the kernel)."""
    s = Dim("s", min=2, max=8)
    xs = (torch.randn(3, 4), torch.randn(6, 4))
    compiled = fxc.compile(Doubled(), xs, backend="torch", dynamic_shapes=({0: s}, {0: 2 * s}))
    (cat,) = compiled.memory_plan.tensors  # 2*s rows, planned for s = 8 (the root's range)
    assert cat.span is not None and cat.nbytes == 16 * 4 * 4
    for n in (2, 5, 8):
        ys = (torch.randn(n, 4), torch.randn(2 * n, 4))
        assert_matches_eager(Doubled(), compiled(*ys), ys)
    with pytest.raises(fxc.FxcInputError, match=r"input 'y': axis 0 \(2\*s\) expected size 10, "
                                                r"got 12 \(axis 0 of input 'x' is s = 5\)"):
        compiled(torch.randn(5, 4), torch.randn(12, 4))
    with pytest.raises(fxc.FxcInputError, match=r"input 'y': axis 0 \(2\*s\) expected a size of "
                                                r"the form 2\*s \(in 4\.\.16\), got 11"):
        compiled(torch.randn(5, 4), torch.randn(11, 4))

"""Saved artifacts keep dynamic_shapes' ranges (issue 13.6): fxc.load restores each axis's
range, so the loaded module runs every size in it and refuses the others by name; a
malformed or inconsistent range in the manifest is an FxcArtifactError."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch.export import Dim

import fxc
from fxc.artifact import MANIFEST, MANIFEST_HASH, manifest_digest
from test_dynamic_shapes import Pair  # tests/ is on sys.path, as for passkit


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = Pair().eval()
    b, s = Dim("batch", min=1, max=16), Dim("seq", min=2, max=40)
    xs = (torch.randn(3, 5, 6), torch.randn(3, 5, 6))
    path = str(tmp_path_factory.mktemp("artifact"))
    for backend in ("onnxruntime", "torch"):
        compiled = fxc.compile(model, xs, backend=backend,
                               dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
        with pytest.warns(UserWarning) if backend == "torch" else _nothing():
            compiled.save(os.path.join(path, backend))
    return model, path


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_loaded_module_keeps_the_ranges(saved, backend):
    model, path = saved
    loaded = fxc.load(os.path.join(path, backend))
    spec = loaded.checker.specs[0]
    assert [(d.name, d.low, d.high) for d in spec.dims[:2]] == [("batch", 1, 16), ("seq", 2, 40)]
    for n, t in [(1, 2), (16, 40), (7, 13)]:
        xs = (torch.randn(n, t, 6), torch.randn(n, t, 6))
        torch.testing.assert_close(loaded(*xs), model(*xs))
    with pytest.raises(fxc.FxcInputError, match=r"input 'x': axis 1 \(seq\) expected a size in "
                                                r"2..40, got 41"):
        loaded(torch.randn(3, 41, 6), torch.randn(3, 41, 6))
    with pytest.raises(fxc.FxcInputError, match=r"axis 1 \(seq\) must equal axis 1 of input 'x'"):
        loaded(torch.randn(3, 9, 6), torch.randn(3, 8, 6))


def _rewrite(path, edit):
    with open(os.path.join(path, MANIFEST)) as f:
        manifest = json.load(f)
    edit(manifest["inputs"][0])
    manifest[MANIFEST_HASH] = manifest_digest(manifest)  # consistent, but wrong inside
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(manifest, f)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["dims"][0].update(low=20), r"axis 0 range .* low <= high"),
    (lambda s: s["dims"][1].update(symbol="s999"), r"axis 1 is the range 's999'"),
    (lambda s: s["dims"].pop(), r"dims .* one entry per axis \(3\)"),
    (lambda s: s["dims"][0].update(high="16"), r"axis 0 range"),
    (lambda s: s.update(dims="batch"), r"dims 'batch' is not a list"),
])
def test_a_malformed_range_is_an_artifact_error(saved, tmp_path, edit, message):
    import shutil
    _, path = saved
    copy = str(tmp_path / "a")
    shutil.copytree(os.path.join(path, "onnxruntime"), copy)
    _rewrite(copy, edit)
    with pytest.raises(fxc.FxcArtifactError, match=message):
        fxc.load(copy)


def test_a_derived_dim_survives_save_and_load(tmp_path):
    """y's axis 0 is 2*s of x's s: the loaded ONNX Runtime module keeps the relation (a
    disagreeing call is refused naming both inputs) and runs the sizes of the range."""
    from test_dynamic_shapes import Doubled
    s = Dim("s", min=2, max=8)
    xs = (torch.randn(3, 4), torch.randn(6, 4))
    compiled = fxc.compile(Doubled(), xs, backend="onnxruntime", dynamic_shapes=({0: s}, {0: 2 * s}))
    compiled.save(str(tmp_path / "a"))
    loaded = fxc.load(str(tmp_path / "a"))
    for n in (2, 5, 8):
        ys = (torch.randn(n, 4), torch.randn(2 * n, 4))
        torch.testing.assert_close(loaded(*ys), Doubled()(*ys))
    with pytest.raises(fxc.FxcInputError, match=r"input 'y': axis 0 \(2\*s\) expected size 10, "
                                                r"got 12 \(axis 0 of input 'x' is s = 5\)"):
        loaded(torch.randn(5, 4), torch.randn(12, 4))

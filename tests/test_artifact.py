"""Deployment artifacts: save/load round trips, and every way a directory can lie to load()."""
from __future__ import annotations

import json
import os
import pickle

import onnx
import pytest
import torch
import torch.nn as nn

import fxc
from fxc import FxcArtifactError, FxcInputError, artifact


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 64)  # 1.5 KiB of weights: over the 1 KiB external-data floor
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x, img, *, scale: float = 2.0):
        return {"y": self.fc(x) * scale, "z": [torch.relu(self.conv(img)), x.sum(-1)]}


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 6, generator=g), torch.randn(1, 2, 5, 5, generator=g)



@pytest.fixture(scope="module")
def compiled():
    x, img = inputs()
    return fxc.compile(Net().eval(), {"x": x, "img": img, "scale": 0.5}, backend="onnxruntime")


@pytest.fixture
def saved(compiled, tmp_path):
    compiled.save(str(tmp_path))
    return tmp_path


def assert_same(a, b):
    ta, sa = torch.utils._pytree.tree_flatten(a)
    tb, sb = torch.utils._pytree.tree_flatten(b)
    assert sa == sb
    for x, y in zip(ta, tb):
        torch.testing.assert_close(x, y)


def test_round_trip_gives_a_module_callable_like_the_compiled_one(compiled, saved):
    loaded = fxc.load(str(saved))
    x, img = inputs(1)
    assert_same(loaded(x=x, img=img, scale=0.5), compiled(x=x, img=img, scale=0.5))
    assert loaded.engine.name == "onnxruntime"


def test_manifest_records_versions_specs_and_hashes(saved):
    m = json.loads((saved / "manifest.json").read_text())
    assert m["format"] == "fxc-artifact" and m["format_version"] == 2
    assert {"fxc", "torch", "onnx", "onnxruntime"} <= set(m["versions"])
    assert m["backend"] == "onnxruntime" and m["opset"] == 17
    assert [s["name"] for s in m["inputs"]] == ["x", "img", "scale"]
    assert m["inputs"][0] == {"name": "x", "tensor": True, "dtype": "float32", "shape": [3, 6]}
    assert m["inputs"][2] == {"name": "scale", "tensor": False, "value": 0.5}
    json.loads(m["in_spec"]) and json.loads(m["out_spec"])  # torch's JSON treespecs
    assert set(m["files"]) == {"model.onnx"} and len(m["files"]["model.onnx"]["sha256"]) == 64


def test_loaded_module_checks_its_inputs(saved):
    loaded = fxc.load(str(saved))
    x, img = inputs()
    with pytest.raises(FxcInputError, match="axis 1"):
        loaded(x=torch.randn(3, 7), img=img, scale=0.5)
    with pytest.raises(FxcInputError, match="constant"):
        loaded(x=x, img=img, scale=3.0)


def test_torch_backend_modules_save_as_onnx(tmp_path):
    x, img = inputs()
    model = Net().eval()
    compiled = fxc.compile(model, (x, img), backend="torch")
    with pytest.warns(UserWarning, match="no artifact format of its own"):
        compiled.save(str(tmp_path))
    loaded = fxc.load(str(tmp_path))
    assert loaded.engine.name == "onnxruntime"
    got, want = loaded(x, img), model(x, img)
    torch.testing.assert_close(got["y"], want["y"], rtol=1e-4, atol=1e-5)


def test_load_never_unpickles(saved, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("load() must not unpickle")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    fxc.load(str(saved))


# -- what load() refuses ------------------------------------------------------------------------

def edit_manifest(path, fn, rehash=True):
    """Edit manifest.json; `rehash` recomputes its own SHA-256 as a forger would, so the
    checks behind the hash are what the test reaches."""
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    if rehash:
        m[artifact.MANIFEST_HASH] = artifact.manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_tampered_model_is_refused(saved):
    data = bytearray((saved / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (saved / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(FxcArtifactError, match="SHA-256"):
        fxc.load(str(saved))


def test_truncated_model_is_refused(saved):
    data = (saved / "model.onnx").read_bytes()
    (saved / "model.onnx").write_bytes(data[:-10])
    with pytest.raises(FxcArtifactError, match="truncated"):
        fxc.load(str(saved))


def test_truncated_manifest_is_refused(saved):
    text = (saved / "manifest.json").read_text()
    (saved / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(FxcArtifactError, match="not valid JSON"):
        fxc.load(str(saved))


def test_missing_files_are_refused(saved):
    os.remove(saved / "model.onnx")
    with pytest.raises(FxcArtifactError, match="missing"):
        fxc.load(str(saved))
    os.remove(saved / "manifest.json")
    with pytest.raises(FxcArtifactError, match="no manifest"):
        fxc.load(str(saved))


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(format="something-else"), "not an fxc-artifact"),
    (lambda m: m.update(format_version=99), "format version 99"),
    (lambda m: m.update(backend="tvm"), "unknown backend"),
    (lambda m: m.pop("files"), "'files'"),
    (lambda m: m.update(in_spec="[1, {\"type\": \"os.system\"}]"), "pytree spec"),
])
def test_foreign_or_malformed_manifests_are_refused(saved, edit, match):
    edit_manifest(saved, edit)
    with pytest.raises(FxcArtifactError, match=match):
        fxc.load(str(saved))


@pytest.mark.parametrize("bad", ["../model.onnx", "/etc/passwd", "sub/../../x", "C:\\x", ""])
def test_paths_leaving_the_directory_are_refused(saved, bad):
    def point(m):
        m["files"][bad] = m["files"].pop("model.onnx")
        m["onnx"]["file"] = bad

    edit_manifest(saved, point)
    with pytest.raises(FxcArtifactError, match="absolute|leaves|invalid"):
        fxc.load(str(saved))


def test_symlinked_files_are_refused(saved, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "model.onnx"
    os.replace(saved / "model.onnx", outside)
    os.symlink(outside, saved / "model.onnx")
    with pytest.raises(FxcArtifactError, match="symlink"):
        fxc.load(str(saved))


def test_external_data_round_trip_and_traversal(tmp_path):
    x, img = inputs()
    compiled = fxc.compile(Net().eval(), (x, img), backend="onnxruntime",
                           external_data_threshold=256)
    good = tmp_path / "good"
    compiled.save(str(good))
    m = json.loads((good / "manifest.json").read_text())
    assert set(m["files"]) == {"model.onnx", "model.onnx.data"}
    assert_same(fxc.load(str(good))(x, img), compiled(x, img))

    # CVE-2022-25882 / CVE-2024-27318: a model whose external data points outside the dir,
    # with every hash in the manifest recomputed so that only the location can give it away.
    for loc in ("../secret.bin", "/etc/hostname", "sub/../../secret.bin"):
        bad = tmp_path / f"bad{abs(hash(loc))}"
        compiled.save(str(bad))
        model = onnx.load(str(bad / "model.onnx"), load_external_data=False)
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = loc
        onnx.save_model(model, str(bad / "model.onnx"))

        def rehash(m, bad=bad):
            import hashlib
            data = (bad / "model.onnx").read_bytes()
            m["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

        edit_manifest(bad, rehash)
        with pytest.raises(FxcArtifactError, match="absolute|leaves"):
            fxc.load(str(bad))


def test_external_data_not_listed_in_the_manifest_is_refused(tmp_path):
    x, img = inputs()
    compiled = fxc.compile(Net().eval(), (x, img), backend="onnxruntime",
                           external_data_threshold=256)
    compiled.save(str(tmp_path))
    edit_manifest(tmp_path, lambda m: m["files"].pop("model.onnx.data"))
    with pytest.raises(FxcArtifactError, match="does not list"):
        fxc.load(str(tmp_path))


def test_unstorable_constant_inputs_are_refused_at_save(tmp_path):
    class TakesObj(nn.Module):
        def forward(self, x, cfg):
            return x * 2

    compiled = fxc.compile(TakesObj(), (torch.randn(2), (1, 2)), backend="onnxruntime")
    compiled.save(str(tmp_path / "ok"))  # a tuple of ints is flattened into int leaves
    fxc.load(str(tmp_path / "ok"))

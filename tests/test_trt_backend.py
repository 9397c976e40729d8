"""The TensorRT backend. CI has no TensorRT and no GPU: there we test what needs neither
(the install hint, the static check of our ONNX against TensorRT's ONNX support matrix, the
engine cache key and profiles); the build-and-run test is marked gpu."""
from __future__ import annotations

import dataclasses
import importlib.util

import onnx
import pytest
import torch
import torch.nn as nn
from onnx import helper

import fxc
from fxc import FxcBackendUnavailableError, FxcUnsupportedOpError
from fxc.lowering import tensorrt as trt_lowering
from fxc.lowering import to_onnx
from fxc.options import resolve
from test_op_coverage import CASES, one_op_graph

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_error_says_what_to_install():
    with pytest.raises(FxcBackendUnavailableError) as err:
        fxc.compile(nn.Linear(3, 2), (torch.randn(1, 3),), backend="tensorrt")
    assert "pip install tensorrt" in str(err.value) and "fxc[tensorrt]" in str(err.value)


def test_on_cpu_the_error_says_tensorrt_needs_cuda(monkeypatch):
    from fxc.runtime import trt_engine
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert "CUDA" in trt_engine.unavailable(torch.device("cpu"))


def _emitted() -> dict[str, set[str]]:
    """ONNX op type -> input dtypes it is emitted with, over every op-coverage sample
    (tensors of float types only: what TensorRT is asked to run)."""
    seen: dict[str, set[str]] = {}
    for case in CASES:
        gm, _ = one_op_graph(case)
        model = onnx.shape_inference.infer_shapes(to_onnx(gm).model)
        types = {v.name: v.type.tensor_type.elem_type for v in
                 list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
        types.update({t.name: t.data_type for t in model.graph.initializer})
        for n in model.graph.node:
            # the data operand; later ones are shapes, axes, pads (int64 by the ONNX spec)
            seen.setdefault(n.op_type, set()).add(trt_lowering.TYPES.get(types.get(n.input[0]), "?"))
    return seen


EMITTED = _emitted()


def test_every_onnx_op_we_emit_is_in_tensorrts_support_matrix():
    supported = trt_lowering.supported_onnx_ops()
    assert len(supported) > 100 and "LayerNormalization" in supported
    missing = sorted(set(EMITTED) - set(supported))
    assert not missing, f"our converters emit ONNX ops TensorRT cannot parse: {missing}"


def test_float_and_int_types_we_emit_are_parsed_by_tensorrt():
    """Float, int32/int64 and bool operands must be types TensorRT takes for that op; the
    exceptions below are the known gaps, each one an op a FP16/FP32 network does not reach."""
    supported = trt_lowering.supported_onnx_ops()
    # Known gap: TensorRT scans floats only; an integer cumsum (position ids from a mask)
    # stays exact for ONNX Runtime and is refused by TensorRT's parser, with its node named.
    known = {"CumSum": {"INT64", "INT32"}}
    bad = {}
    for op, types in EMITTED.items():
        extra = types - supported.get(op, set()) - {"?", "FP64"} - known.get(op, set())
        if extra:
            bad[op] = sorted(extra)
    assert not bad, f"TensorRT's parser does not take these (op: dtypes): {bad}"


def test_unsupported_node_types_are_all_refused_before_tensorrt_is_needed():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu", doc_string="m.py:3"),
             helper.make_node("Hardmax2", ["a"], ["b"], name="h"),
             helper.make_node("Identity", ["b"], ["y"], name="id", domain="com.microsoft")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    found = trt_lowering.unsupported_nodes(model)
    assert [(op, n) for op, n, _ in found] == [("ONNX Hardmax2", "h"), ("ONNX Identity", "id")]
    lowered = type("L", (), {"model": model})()
    with pytest.raises(FxcUnsupportedOpError) as err:
        trt_lowering.build_engine(lowered, None)
    assert err.value.backend == "tensorrt" and len(err.value.unsupported) == 2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


def _lowered(dynamic=False, seed=0):
    from fxc.capture import capture
    torch.manual_seed(seed)
    return to_onnx(capture(Net().eval(), (torch.randn(2, 4),), {}).gm, dynamic_batch=dynamic)


def test_graph_hash_follows_structure_and_weights():
    a, b, c = _lowered(seed=0), _lowered(seed=0), _lowered(seed=1)
    assert trt_lowering.graph_hash(a.model) == trt_lowering.graph_hash(b.model)
    assert trt_lowering.graph_hash(a.model) != trt_lowering.graph_hash(c.model)


def test_profile_is_static_or_ranges_over_the_batch():
    opts = resolve(device="cpu", precision="fp32", backend="auto", verify=False, dump_dir=None,
                   disable_passes=(), default_device=torch.device("cpu"))
    assert trt_lowering.profile_shapes(_lowered(), opts) == {"x": ((2, 4), (2, 4), (2, 4))}
    dyn = trt_lowering.profile_shapes(_lowered(dynamic=True), dataclasses.replace(opts, trt_max_batch=16))
    assert dyn == {"x": ((1, 4), (2, 4), (16, 4))}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRT, reason="needs CUDA and TensorRT")
def test_tensorrt_builds_caches_and_replays(tmp_path):
    from fxc.models import get
    model, inputs = get("resnet18", "tiny")
    model, inputs = model.cuda(), tuple(x.cuda() for x in inputs)
    compiled = fxc.compile(model, inputs, backend="tensorrt", precision="fp16",
                           trt_cache_dir=str(tmp_path))
    assert compiled.engine.name == "tensorrt" and compiled.engine.graph is not None
    assert any(p.suffix == ".engine" for p in tmp_path.iterdir())
    assert (tmp_path / "timing.cache").exists()
    with torch.no_grad():
        ref = model(*inputs)
    first = compiled(*inputs)
    rel = (first.float() - ref).norm() / ref.norm()
    assert rel < 2e-2
    again = fxc.compile(model, inputs, backend="tensorrt", precision="fp16",
                        trt_cache_dir=str(tmp_path))  # from the engine cache
    torch.testing.assert_close(again(*inputs), first)

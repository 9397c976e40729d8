"""precision='int8' (fxc/quant): QDQ structure, numbers against FP32, calibration methods, the
policy's refusals, and the typed errors. Tolerance: a small CNN in int8 against eager FP32,
relative norm error under 5% and cosine over 0.99 (int8 rounding is ~0.4% a tensor, a few
tensors deep)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import fxc
from fxc.errors import FxcCalibrationError, FxcOptionError
from fxc.quant import calibrate, prepare


class SmallNet(nn.Module):
    """conv-bn-relu, max pool, a residual block, global pooling, a classifier."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.c3 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = nn.functional.max_pool2d(torch.relu(self.bn(self.c1(x))), 2)
        y = torch.relu(self.c3(torch.relu(self.c2(y))) + y)
        return self.fc(y.mean((2, 3)))


def _batches(n, seed, shape=(2, 3, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g),) for _ in range(n)]


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = SmallNet().eval()
    example = _batches(1, 0)[0]
    compiled = fxc.compile(model, example, precision="int8", calibration=_batches(8, 1),
                           backend="onnxruntime")
    return model, compiled


def _producers(model: onnx.ModelProto) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def _report(compiled) -> list[str]:
    return dict(compiled.report_data.sections)["INT8 quantization"]


def test_qdq_structure_int8_convs_fp32_classifier(small):
    _, compiled = small
    m = compiled.engine.lowered.model
    prod, inits = _producers(m), {t.name: t for t in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    for conv in convs:  # activation and weight both come through DequantizeLinear
        x, w = prod[conv.input[0]], prod[conv.input[1]]
        assert x.op_type == "DequantizeLinear" and w.op_type == "DequantizeLinear"
        q = inits[w.input[0]]
        assert q.data_type == TensorProto.INT8
        scale = numpy_helper.to_array(inits[w.input[1]])
        assert scale.shape == (16,)  # per output channel
        assert not numpy_helper.to_array(inits[w.input[2]]).any()  # symmetric: zero point 0
        assert numpy_helper.to_array(inits[x.input[1]]).shape == ()  # activations: per tensor
    # the classifier writes the model output: float weight, float output
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    assert gemm.input[1] in inits and inits[gemm.input[1]].data_type == TensorProto.FLOAT
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == gemm.output[0]
                   for n in m.graph.node)
    assert any(n.op_type == "Add" and prod[n.input[0]].op_type == "DequantizeLinear"
               for n in m.graph.node)  # the residual add joins the int8 chain
    report = "\n".join(_report(compiled))
    assert "int8: 3 of 4" in report and "writes a model output" in report


def test_int8_matches_fp32_within_tolerance(small):
    model, compiled = small
    for (x,) in _batches(4, 7):
        ref, got = model(x), compiled(x)
        assert ((got - ref).norm() / ref.norm()).item() < 0.05
        assert nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.99


def _identity_model(n: int) -> onnx.ModelProto:
    """y = x * 1: calibrating y sees exactly the fed values."""
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "one"], ["y"], name="mul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_calibration_methods_percentile_and_entropy_clip_an_outlier():
    rng = np.random.default_rng(0)
    feeds = []
    for i in range(4):
        x = rng.standard_normal(50_000).astype(np.float32)
        if i == 2:
            x[17] = 100.0  # one outlier among 200,000 values (99.99%: 20 in each tail)
        feeds.append({"x": x})
    got = {m: calibrate.calibrate(_identity_model(50_000), feeds, ["y"], m).ranges["y"]
           for m in ("minmax", "percentile", "entropy")}
    assert got["minmax"][1] == 100.0 and got["minmax"][0] < -2.5  # keeps everything seen
    assert 2.0 < got["percentile"][1] < 10.0   # the outlier is clipped, the bulk kept
    assert 1.0 < got["entropy"][1] < 10.0
    assert -10.0 < got["percentile"][0] < -2.0
    for lo, hi in got.values():
        assert lo <= 0.0 <= hi


def test_policy_keeps_a_layer_over_tolerance_in_fp32():
    """Must not fire: with a tolerance nothing meets, no layer is quantized, and the report
    says why for each (measured error over the tolerance)."""
    torch.manual_seed(0)
    model = SmallNet().eval()
    compiled = fxc.compile(model, _batches(1, 0)[0], precision="int8",
                           calibration=_batches(2, 1), int8_tolerance=1e-7)
    ops = {n.op_type for n in compiled.engine.lowered.model.graph.node}
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    report = _report(compiled)
    assert sum("over the 0% tolerance" in ln for ln in report) == 3
    x = _batches(1, 5)[0][0]
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.o = nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x):  # (B, S, 32)
        q = self.q(x)
        a = torch.softmax(q @ q.transpose(1, 2), -1) @ q
        return self.o(a) + x


def test_activation_matmuls_stay_fp32_and_3d_linears_become_int8_gemms():
    torch.manual_seed(0)
    model = Attn().eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(1, 8, 32, generator=g),) for _ in range(4)]
    compiled = fxc.compile(model, batches[0], precision="int8", calibration=batches)
    m = compiled.engine.lowered.model
    prod, inits = _producers(m), {t.name: t for t in m.graph.initializer}
    gemms = [n for n in m.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 2  # x @ W^T + b on (1, 8, 32): reshaped to 2-D GEMMs, bias inside
    for gemm in gemms:
        w = prod[gemm.input[1]]
        assert w.op_type == "DequantizeLinear" and inits[w.input[0]].data_type == TensorProto.INT8
        assert numpy_helper.to_array(inits[w.input[1]]).shape == (32,)
    for mm in (n for n in m.graph.node if n.op_type == "MatMul"):  # scores and p @ v
        assert all(i not in inits for i in mm.input)
        assert not any(n.op_type == "QuantizeLinear" and n.input[0] == mm.output[0]
                       for n in m.graph.node)
    assert any("both operands are activations" in ln for ln in _report(compiled))
    x = torch.randn(1, 8, 32, generator=g)
    ref, got = model(x), compiled(x)
    assert ((got - ref).norm() / ref.norm()).item() < 0.05


def test_prepare_drops_nan_gates_and_keeps_the_function():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)).eval()
    x = torch.randn(1, 3, 10, 10)
    fp32 = fxc.compile(model, (x,), backend="onnxruntime")
    src = fp32.engine.lowered.model
    assert any(n.op_type == "If" for n in src.graph.node)
    out, counts = prepare.prepare(src)
    assert counts["NaN gates dropped"] == 1 and not any(n.op_type == "If" for n in out.graph.node)
    assert {"ReduceSum", "Not"}.isdisjoint(n.op_type for n in out.graph.node)
    import onnxruntime as ort
    got = ort.InferenceSession(out.SerializeToString()).run(None, {src.graph.input[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got[0]), model(x))


def test_int8_without_calibration_is_an_option_error():
    with pytest.raises(FxcOptionError, match="calibration=batches"):
        fxc.compile(nn.Linear(4, 4), (torch.randn(2, 4),), precision="int8")


@pytest.mark.parametrize("options, match", [
    ({"calibration": [(torch.randn(2, 4),)]}, "precision='int8' only"),
    ({"precision": "int8", "calibration": [(torch.randn(2, 4),)], "calibration_method": "kl"},
     "calibration_method='kl'"),
    ({"precision": "int8", "calibration": [(torch.randn(2, 4),)], "int8_tolerance": -1},
     "int8_tolerance"),
])
def test_calibration_options_are_checked(options, match):
    with pytest.raises(FxcOptionError, match=match):
        fxc.compile(nn.Linear(4, 4), (torch.randn(2, 4),), **options)


def test_a_wrong_shaped_calibration_batch_names_itself():
    batches = [(torch.randn(2, 4),), (torch.randn(2, 4),), (torch.randn(3, 4),)]
    with pytest.raises(FxcCalibrationError, match=r"calibration batch 2: .*"):
        fxc.compile(nn.Linear(4, 4).eval(), (torch.randn(2, 4),), precision="int8",
                    calibration=batches)
    with pytest.raises(FxcCalibrationError, match="iterable of batches"):
        fxc.compile(nn.Linear(4, 4).eval(), (torch.randn(2, 4),), precision="int8",
                    calibration=torch.randn(2, 4))


def test_int8_on_the_torch_backend_says_what_to_use():
    with pytest.raises(FxcOptionError, match="backend='onnxruntime'"):
        fxc.compile(nn.Linear(4, 4).eval(), (torch.randn(2, 4),), precision="int8",
                    calibration=[(torch.randn(2, 4),)], backend="torch")

"""Write QuantizeLinear/DequantizeLinear into the model for the nodes fxc chose, with fxc's
calibrated ranges, through onnxruntime.quantization's QDQ quantizer (it knows which QDQ
patterns ONNX Runtime's CPU fuses into int8 kernels: QLinearConv, QGemm, QLinearAdd, ...).

Settings, and why:
- weights int8, symmetric, per output channel (Conv axis 0, MatMul axis 1, Gemm by transB);
  biases int32 at scale input_scale * weight_scale;
- activations per tensor, uint8 asymmetric on x86 (MLAS's u8s8 kernels: with int8
  activations ONNX Runtime 1.32 left 21 of ResNet-50's 53 convs and every residual Add in
  float on this project's AVX2 CPU, 0.96x FP32; uint8: 1.5x), int8 symmetric elsewhere;
- reduce_range (7-bit weights) on an x86 CPU without VNNI, where the u8s8 kernel's 16-bit
  pair sums can saturate (onnxruntime.quantization's own guidance);
- only the nodes fxc names are quantized (nodes_to_quantize), and nothing else;
- a Gemm's output stays float (FLOAT_OUTPUTS): ONNX Runtime's QGemm then writes float itself,
  with no requantize and no DequantizeLinear after it, and the float ops that follow keep
  their own fusions (BiasGelu); BERT base here: 1.38x -> 1.51x FP32, cosine 0.9988 -> 0.9991.

Invariant: the returned model differs from the input only by QDQ nodes, quantized
initializers and the removal of activations absorbed by a Q (Relu after an int8 Conv);
every original node not chosen keeps its float inputs and outputs.
"""
from __future__ import annotations

import platform

import numpy as np
import onnx

from fxc.errors import FxcBackendUnavailableError

FLOAT_OUTPUTS = ("Gemm",)  # int8 ops whose outputs are written in float (QGemm can)


def cpu_has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return False
    return "vnni" in flags  # avx512_vnni, avx_vnni


def settings() -> dict:
    """The quantizer's type choices for this machine (see the module docstring)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    return {"activation": "uint8" if x86 else "int8",
            "reduce_range": x86 and not cpu_has_vnni()}


def insert_qdq(model: onnx.ModelProto, nodes: list[str], ranges: dict[str, tuple[float, float]],
               method: str, conf: dict, op_types: list[str]) -> onnx.ModelProto:
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantType
        from onnxruntime.quantization.calibrate import TensorData, TensorsData
        from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
        from onnxruntime.quantization.quant_utils import save_and_reload_model_with_shape_infer
    except ImportError as e:  # pragma: no cover - onnxruntime without its quantization tools
        raise FxcBackendUnavailableError(
            f"precision='int8' needs onnxruntime.quantization (onnxruntime >= 1.17): {e}") from None
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    data = {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
            for t, (lo, hi) in ranges.items()}
    act = QuantType.QUInt8 if conf["activation"] == "uint8" else QuantType.QInt8
    quantizer = QDQQuantizer(
        save_and_reload_model_with_shape_infer(model), True, conf["reduce_range"],
        QuantType.QInt8, act, TensorsData(methods[method], data), nodes, [], op_types,
        {"WeightSymmetric": True, "ActivationSymmetric": act == QuantType.QInt8,
         "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
         "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUTS)})
    quantizer.quantize_model()
    out = quantizer.model.model
    # The shape-inferred value_info of float tensors now quantized would mislead a reader.
    del out.graph.value_info[:]
    return out

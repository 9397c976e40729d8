"""fxc.lowering: the optimized graph to ONNX (our converter registry) and to TensorRT engines.

    lowered = to_onnx(gm, opset=17, dynamic_batch=False)   # -> LoweredOnnx (.model: ModelProto)

Converters live in ops_*.py, one per ATen (or fxc) overload, registered in registry.py.
"""
from .onnx_export import DEFAULT_OPSET, LoweredOnnx, check_model, save, to_onnx
from .registry import Refuse, converter, lookup, supported_targets

__all__ = ["to_onnx", "LoweredOnnx", "check_model", "save", "DEFAULT_OPSET", "converter",
           "Refuse", "lookup", "supported_targets"]

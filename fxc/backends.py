"""Backend registry: name -> how to build an engine for the final graph.

An engine is any object with `name` and `run(list_of_tensors) -> list_of_outputs`.
`auto` takes the first backend of AUTO_ORDER[device type] that is available.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch.fx as fx

from .errors import FxcBackendUnavailableError
from .options import CompileOptions


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    build: Callable[[fx.GraphModule, CompileOptions, list], object]
    available: Callable[[CompileOptions], str | None]  # None if usable, else why not


_REGISTRY: dict[str, Backend] = {}

# Fastest first, per device type (measured: see README's performance section).
AUTO_ORDER = {"cuda": ["tensorrt", "torch"], "cpu": ["torch"]}


def register(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


def choose(options: CompileOptions) -> Backend:
    if options.backend != "auto":
        b = _REGISTRY.get(options.backend)
        if b is None:
            raise FxcBackendUnavailableError(f"backend {options.backend!r} is not built into this fxc")
        why = b.available(options)
        if why:
            raise FxcBackendUnavailableError(f"backend {options.backend!r} cannot run here: {why}")
        return b
    for name in AUTO_ORDER.get(options.device.type, ["torch"]):
        b = _REGISTRY.get(name)
        if b is not None and b.available(options) is None:
            return b
    return _REGISTRY["torch"]


def _torch_build(gm, options, example_inputs):
    from fxc.runtime import TorchEngine
    return TorchEngine(gm, options, example_inputs)  # plans memory, captures a CUDA graph


register(Backend("torch", _torch_build, lambda options: None))


def _onnxruntime_build(gm, options, example_inputs):
    from fxc.lowering import to_onnx
    from fxc.runtime.ort_engine import OrtEngine
    lowered = to_onnx(gm, opset=options.opset, dynamic_batch=options.dynamic_batch,
                      backend="onnxruntime")
    return OrtEngine(lowered, options.device, options.ort_threads,
                     external_threshold=options.external_data_threshold)


def _onnxruntime_available(options):
    from fxc.runtime.ort_engine import unavailable
    return unavailable(options.device)


def _tensorrt_build(gm, options, example_inputs):
    from fxc.runtime.trt_engine import build
    return build(gm, options, example_inputs)


def _tensorrt_available(options):
    from fxc.runtime.trt_engine import unavailable
    return unavailable(options.device)


register(Backend("onnxruntime", _onnxruntime_build, _onnxruntime_available))
register(Backend("tensorrt", _tensorrt_build, _tensorrt_available))

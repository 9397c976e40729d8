"""fxc: a graph-level optimizing compiler for PyTorch inference.

    compiled = fxc.compile(model, example_inputs, device="cuda", precision="fp16")
    out = compiled(*example_inputs)
    print(compiled.report())

Pipeline: capture (torch.export -> ATen fx graph) -> passes (fxc.passes) -> backend
(fxc.runtime's torch engine, ONNX Runtime or TensorRT through fxc.lowering).
"""
from .api import CompiledModule, compile
from .errors import (FxcArtifactError, FxcBackendUnavailableError, FxcCaptureError, FxcError,
                     FxcInputError, FxcOptionError, FxcPassError, FxcRuntimeError,
                     FxcUnsupportedOpError, FxcVerifyError)

__version__ = "0.1.0"
__all__ = [
    "compile", "CompiledModule", "FxcError", "FxcCaptureError", "FxcInputError",
    "FxcOptionError", "FxcPassError", "FxcVerifyError", "FxcUnsupportedOpError",
    "FxcBackendUnavailableError", "FxcArtifactError", "FxcRuntimeError",
]

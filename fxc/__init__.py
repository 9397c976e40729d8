"""fxc: a graph-level optimizing compiler for PyTorch inference.

    compiled = fxc.compile(model, example_inputs, device="cuda", precision="fp16")
    out = compiled(*example_inputs)
    print(compiled.report())

Pipeline: capture (torch.export -> ATen fx graph) -> passes (fxc.passes) -> backend
(fxc.runtime's torch engine, ONNX Runtime or TensorRT through fxc.lowering).
"""
import os as _os

# Running from a source checkout that is not installed (or installed elsewhere): fxc.passes,
# fxc.lowering, fxc.runtime and fxc.models live in top-level folders beside fxc/ (pyproject
# maps them at install time). Let the package's search path see them too.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and \
        _os.path.isfile(_os.path.join(_root, "passes", "__init__.py")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821

from .errors import (FxcArtifactError, FxcBackendUnavailableError, FxcCaptureError,  # noqa: E402
                     FxcError, FxcInputError, FxcOptionError, FxcPassError, FxcRuntimeError,
                     FxcUnsupportedOpError, FxcVerifyError)

# The compiler (torch, the passes, the backends) loads on first use, not on `import fxc`:
# `python -m fxc --help` and the CLI's argument errors then answer in a fraction of a second.
_LAZY = {"compile": ("api", "compile"), "CompiledModule": ("api", "CompiledModule"),
         "load": ("artifact", "load")}
_SUBPACKAGES = {"api", "artifact", "passes", "lowering", "runtime", "models", "ops", "codegen",
                "capture", "bench", "timing", "ir", "guard", "dynamo", "testing"}


def __getattr__(name):
    import importlib
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = [
    "compile", "CompiledModule", "load", "FxcError", "FxcCaptureError", "FxcInputError",
    "FxcOptionError", "FxcPassError", "FxcVerifyError", "FxcUnsupportedOpError",
    "FxcBackendUnavailableError", "FxcArtifactError", "FxcRuntimeError",
]

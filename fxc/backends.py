"""Backend registry: name -> how to build an engine for the final graph.

An engine is any object with `name` and `run(list_of_tensors) -> list_of_outputs`.

`build` is the one entry point: a named backend builds or raises (never a silent fallback
when the user named it); `auto` walks AUTO_ORDER[device type], skipping a backend that is
not available here or cannot honour an option the user set, and falling through to the next
when one cannot take this graph (an op it has no converter or kernel for, a converter that
cannot keep a symbolic size, a dtype its runtime cannot hold). Every backend passed over is noted, with why, for
the compile report.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch.fx as fx

from .errors import (FxcBackendUnavailableError, FxcOptionError, FxcUnsupportedOpError)
from .options import CompileOptions


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    build: Callable[[fx.GraphModule, CompileOptions, list], object]
    available: Callable[[CompileOptions], str | None]  # None if usable, else why not
    # None if it honours every option set, else the option it cannot (auto then skips it)
    honours: Callable[[CompileOptions], str | None] = lambda options: None


_REGISTRY: dict[str, Backend] = {}

# Fastest first, per device type (measured: see README's performance section; on a 2-core
# CPU ONNX Runtime ran the zoo 1.7-20x faster than the torch step list). torch comes last
# everywhere: it runs every graph, so auto always has an engine to fall back to.
AUTO_ORDER = {"cuda": ["tensorrt", "torch"], "cpu": ["onnxruntime", "torch"]}


def register(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


def choose(options: CompileOptions) -> Backend:
    """The named backend (or FxcBackendUnavailableError); under auto, the first of
    AUTO_ORDER that is available and honours the options (before trying the graph)."""
    if options.backend != "auto":
        return _named(options)
    return next(b for b, why in _auto_candidates(options) if why is None)


def engine_is_torch(options: CompileOptions) -> bool:
    """Whether the compile is headed for fxc's torch runtime (the backend `choose` picks), for
    passes whose rewrites only that runtime gains from. False where no backend can run: the
    backend's own error comes later, from compile."""
    try:
        return choose(options).name == "torch"
    except Exception:
        return False


def build(gm: fx.GraphModule, options: CompileOptions,
          example_inputs: list) -> tuple[Backend, object, list[str]]:
    """(backend, engine, notes): see the module docstring. Under auto, when no backend can
    take the graph, the first backend's error is raised (it says the most about why)."""
    if options.backend != "auto":
        chosen = _named(options)
        return chosen, chosen.build(gm, options, example_inputs), []
    notes, first_error = [], None
    for b, why in _auto_candidates(options):
        if why is not None:
            notes.append(f"{b.name} passed over: {why}")
            continue
        try:
            engine = b.build(gm, options, example_inputs)
        except cannot_take_graph() as e:
            notes.append(f"{b.name} could not take this graph: {summary(e)}")
            first_error = first_error or e
            continue
        return b, engine, notes
    if first_error is not None:
        raise first_error
    raise FxcOptionError("backend='auto': no backend can honour these options:\n  "
                         + "\n  ".join(notes))


def _named(options: CompileOptions) -> Backend:
    b = _REGISTRY.get(options.backend)
    if b is None:
        raise FxcBackendUnavailableError(f"backend {options.backend!r} is not built into this fxc")
    why = b.available(options)
    if why:
        raise FxcBackendUnavailableError(f"backend {options.backend!r} cannot run here: {why}")
    return b


def _auto_candidates(options: CompileOptions) -> list[tuple[Backend, str | None]]:
    """AUTO_ORDER's backends for this device, torch last, each with why it is skipped (None:
    try it). torch is never skipped for availability: it is the fallback that always runs."""
    names = [n for n in AUTO_ORDER.get(options.device.type, []) if n != "torch"] + ["torch"]
    out = []
    for name in names:
        b = _REGISTRY.get(name)
        if b is None:
            continue
        out.append((b, b.available(options) or b.honours(options)))
    return out


def cannot_take_graph() -> tuple[type[BaseException], ...]:
    """Errors by which a backend says it cannot take this graph (as opposed to a bug in the
    user's call): unsupported ops and dynamic-batch refusals, a dtype its runtime cannot
    hold, a lowered model the ONNX checker rejects (bf16 Conv has no ONNX type), and ONNX
    Runtime refusing the model when it builds its session."""
    errors: list[type[BaseException]] = [FxcUnsupportedOpError, FxcBackendUnavailableError]
    try:
        import onnx
        errors += [onnx.checker.ValidationError, onnx.shape_inference.InferenceError]
    except ImportError:  # pragma: no cover - onnx is a dependency
        pass
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
        errors += [getattr(ort_state, n) for n in ("Fail", "InvalidGraph", "InvalidArgument",
                                                   "NotImplemented", "RuntimeException")
                   if hasattr(ort_state, n)]
    except ImportError:
        pass
    return tuple(errors)


def summary(e: BaseException, limit: int = 240) -> str:
    """One line for the report: the unsupported ops by name, or the error's first line."""
    if isinstance(e, FxcUnsupportedOpError):
        ops = sorted({op for op, _, _ in e.unsupported})
        text = f"{len(ops)} op(s) unsupported: " + ", ".join(ops)
    else:
        lines = str(e).strip().splitlines()
        text = f"{type(e).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _torch_build(gm, options, example_inputs):
    from fxc.runtime import TorchEngine
    _check_precision(options, "torch")
    return TorchEngine(gm, options, example_inputs)  # plans memory, captures a CUDA graph


# dynamic_batch=True needs no refusal here: it is a dynamic_shapes shorthand (fxc/dynamic.py),
# so every backend gets a graph that is symbolic in the batch and runs it like any other range.
register(Backend("torch", _torch_build, lambda options: None))

# Options that tune fxc's own runtime (runtime/torch_engine.py) and that ONNX Runtime has no
# counterpart for: set away from its default, one says the user wants that runtime.
TORCH_RUNTIME_OPTIONS = ("plan_memory", "planner", "cuda_graphs", "zero_copy_outputs",
                         "host_inputs")


def _torch_runtime_option_set(options) -> str | None:
    defaults = {f.name: f.default for f in dataclasses.fields(CompileOptions)}
    for name in TORCH_RUNTIME_OPTIONS:
        value = getattr(options, name)
        if value != defaults[name]:
            return f"{name}={value!r} is an option of the torch runtime, which ONNX Runtime lacks"
    return None


def _check_precision(options, backend: str) -> None:
    from fxc.quant import refuses
    why = refuses(options, backend)
    if why:
        raise FxcOptionError(why)


def _onnxruntime_build(gm, options, example_inputs):
    from fxc.lowering import to_onnx
    from fxc.runtime.ort_engine import OrtEngine
    _check_precision(options, "onnxruntime")
    lowered = to_onnx(gm, opset=options.opset, backend="onnxruntime")  # symbolic dims: gm's own
    sections = []
    if options.precision == "int8":  # fxc/quant: calibrate, choose the int8 layers, write QDQ
        from fxc.quant import quantize
        lowered, sections = quantize(lowered, options, gm.meta.get("calibration"))
    engine = OrtEngine(lowered, options.device, options.ort_threads,
                       external_threshold=options.external_data_threshold)
    engine.report_sections = sections
    return engine


def _onnxruntime_available(options):
    from fxc.runtime.ort_engine import unavailable
    return unavailable(options.device)


def _tensorrt_build(gm, options, example_inputs):
    from fxc.runtime.trt_engine import build
    _check_precision(options, "tensorrt")
    return build(gm, options, example_inputs)


def _tensorrt_available(options):
    from fxc.runtime.trt_engine import unavailable
    return unavailable(options.device)


register(Backend("onnxruntime", _onnxruntime_build, _onnxruntime_available,
                 _torch_runtime_option_set))
register(Backend("tensorrt", _tensorrt_build, _tensorrt_available))

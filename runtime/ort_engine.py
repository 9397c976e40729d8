"""The ONNX Runtime engine: our ONNX model in an InferenceSession, run through IO binding.

Inputs are bound straight from the torch tensors' memory (no numpy copies); each call binds
freshly allocated torch tensors as outputs, so a returned tensor is never overwritten by a
later call. Sessions run with every graph optimization on (ORT_ENABLE_ALL), sequential
execution, and as many intra-op threads as the machine has physical cores (or
`options.ort_threads`). CPU tensors use the CPU provider; CUDA tensors the CUDA provider,
where this onnxruntime has one.

Invariant: `run(inputs)` returns torch tensors in the graph's flat output order, on the
compile device, with the graph's dtypes and shapes (dim 0 following the inputs' under
dynamic batch). Under dynamic batch `batch` (a runtime.inputs.DynamicBatch) says which
inputs' dim 0 is free, so the input checker lets any batch size >= 1 through; the output
shapes are worked out once per batch size and cached. A model lowered from symbolic shapes
(`dynamic_shapes=`) has its output shapes evaluated per call from the inputs' sizes
(runtime/dims.py), also cached.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading

import numpy as np
import torch

from fxc.errors import FxcBackendUnavailableError, FxcRuntimeError, FxcUnsupportedOpError
from fxc.runtime.dims import SymbolicDims
from fxc.runtime.inputs import DynamicBatch, bindable

NUMPY_DTYPES = {
    torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
    torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.int8: np.int8,
    torch.uint8: np.uint8, torch.bool: np.bool_,
}


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthread siblings counted once)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        path = f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id"
        pkg = f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"
        try:
            with open(path) as f, open(pkg) as g:
                cores.add((g.read().strip(), f.read().strip()))
        except OSError:
            cores.add(("?", str(cpu)))
    return max(1, len(cores))


def unavailable(device: torch.device) -> str | None:
    """None if ONNX Runtime can run on `device` here, else why not and what to install."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return ("this onnxruntime has no CUDAExecutionProvider "
                f"(providers: {ort.get_available_providers()}): pip install onnxruntime-gpu")
    if device.type not in ("cpu", "cuda"):
        return f"no ONNX Runtime provider for device {device}"
    return None


class OrtEngine:
    """Runs a LoweredOnnx (fxc.lowering) with ONNX Runtime."""

    name = "onnxruntime"
    runs_torch_ops = False  # outputs are filled by ONNX Runtime: no autograd to switch off

    def __init__(self, lowered, device: torch.device, threads: int = 0,
                 model_path: str | None = None, external_threshold: int = 2_000_000_000):
        why = unavailable(device)
        if why:
            raise FxcBackendUnavailableError(f"backend 'onnxruntime': {why}")
        import onnxruntime as ort
        self.lowered, self.device = lowered, device
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = threads or physical_cores()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only: ORT's warnings are about its own rewrites
        self.threads = so.intra_op_num_threads
        if device.type == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                         "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = _session(lowered, so, providers, model_path, external_threshold)
        # One IO binding per calling thread: a binding is mutable state (bound pointers), and
        # ONNX Runtime runs one session from several threads at once, each with its own.
        self._bindings = threading.local()
        self._outputs = _output_specs(lowered)
        self.dims = SymbolicDims.of(lowered.model)  # None: static (or dynamic batch) shapes
        self._empty_output = any(0 in (shape[1:] if is_batch else shape)
                                 for _, shape, is_batch in self._outputs) and self.dims is None
        self.batch = (DynamicBatch(tuple(lowered.batch_inputs()))
                      if lowered.dynamic_batch else None)
        self._shapes: dict[int | None, list[tuple[int, ...]]] = {}  # batch size -> output shapes

    def run(self, inputs: list[torch.Tensor]) -> list:
        low = self.lowered
        shapes = self.dims.shapes(inputs) if self.dims is not None else None
        if self._empty_output or any(x.numel() == 0 for x in inputs) or (
                shapes is not None and any(0 in s for s in shapes)):
            return self._run_copying(inputs)  # empty tensors have no memory to bind
        binding = self._binding()
        kept = []  # keep contiguous copies alive until the run is done
        for name, x in zip(low.input_names, inputs):
            x = bindable(x)
            kept.append(x)
            binding.bind_input(name, NUMPY_DTYPES[x.dtype], tuple(x.shape), x.data_ptr())
        batch = inputs[0].shape[0] if low.dynamic_batch and inputs else None
        outs = []
        # Fresh outputs every call (a returned tensor is never overwritten later), in the
        # shapes of this call's batch size.
        for name, (dtype, _, _), shape in zip(low.output_names, self._outputs,
                                              shapes or self._output_shapes(batch)):
            y = torch.empty(shape, dtype=dtype, device=self.device)
            binding.bind_output(name, NUMPY_DTYPES[dtype], shape, y.data_ptr())
            outs.append(y)
        try:
            binding.run()
        except Exception as e:
            raise FxcRuntimeError(f"onnxruntime failed: {type(e).__name__}: {e}") from e
        return _assemble(low, outs)

    def _binding(self) -> "Binding":
        b = getattr(self._bindings, "b", None)
        if b is None:
            dev = self.device
            b = self._bindings.b = Binding(self.session, "cuda" if dev.type == "cuda" else "cpu",
                                           dev.index or 0)
        return b

    def _output_shapes(self, batch: int | None) -> list[tuple[int, ...]]:
        """The outputs' shapes for this batch size (None: static), worked out once per size."""
        shapes = self._shapes.get(batch)
        if shapes is None:
            shapes = [(batch,) + tuple(shape[1:]) if is_batch else tuple(shape)
                      for _, shape, is_batch in self._outputs]
            self._shapes[batch] = shapes
        return shapes

    def _run_copying(self, inputs):
        feeds = {n: bindable(x.detach()).cpu().numpy()
                 for n, x in zip(self.lowered.input_names, inputs)}
        try:
            outs = self.session.run(self.lowered.output_names, feeds)
        except Exception as e:
            raise FxcRuntimeError(f"onnxruntime failed: {type(e).__name__}: {e}") from e
        return _assemble(self.lowered, [torch.from_numpy(np.asarray(o)).to(self.device)
                                        for o in outs])


class Binding:
    """An IOBinding bound through ONNX Runtime's C-level binding with one device object made
    once: the public wrapper rebuilds an OrtDevice and re-checks capture pinning on every
    bind, ~5 us each, which is most of a small model's per-call overhead. Where this
    onnxruntime lacks those internals (`_iobinding`, `_sess`), the public calls are used."""

    def __init__(self, session, device_type: str, device_id: int):
        import onnxruntime as ort
        self.public = session.io_binding()
        self.session, self.device = session, (device_type, device_id)
        try:
            self.c_device = ort.OrtDevice.make(device_type, device_id)._get_c_device()
            self.c_binding, self.c_session = self.public._iobinding, session._sess
        except AttributeError:  # pragma: no cover - an onnxruntime without these internals
            self.c_binding = None

    def bind_input(self, name: str, dtype, shape: tuple, ptr: int) -> None:
        if self.c_binding is None:  # pragma: no cover
            return self.public.bind_input(name, *self.device, dtype, shape, ptr)
        self.c_binding.bind_input(name, self.c_device, dtype, shape, ptr)

    def bind_output(self, name: str, dtype, shape: tuple, ptr: int) -> None:
        if self.c_binding is None:  # pragma: no cover
            return self.public.bind_output(name, *self.device, dtype, shape, ptr)
        self.c_binding.bind_output(name, self.c_device, dtype, shape, ptr)

    def run(self) -> None:
        if self.c_binding is None:  # pragma: no cover
            return self.session.run_with_iobinding(self.public)
        self.c_session.run_with_iobinding(self.c_binding, None)


def _output_specs(lowered) -> list[tuple[torch.dtype, tuple, bool]]:
    from fxc.lowering.builder import ONNX_TO_TORCH
    specs = []
    for vi, is_batch in zip(lowered.model.graph.output, lowered.batch_outputs):
        t = vi.type.tensor_type
        dtype = ONNX_TO_TORCH[t.elem_type]
        if dtype not in NUMPY_DTYPES:
            raise FxcBackendUnavailableError(
                f"backend 'onnxruntime': output {vi.name} is {dtype}, which ONNX Runtime's "
                f"Python binding cannot hand over; use precision='fp16' or backend='torch'")
        shape = tuple(d.dim_value for d in t.shape.dim)
        specs.append((dtype, shape, is_batch))
    for vi in lowered.model.graph.input:
        if ONNX_TO_TORCH[vi.type.tensor_type.elem_type] not in NUMPY_DTYPES:
            raise FxcBackendUnavailableError(
                f"backend 'onnxruntime': input {vi.name} has a dtype ONNX Runtime's Python "
                f"binding cannot take (bfloat16)")
    return specs


def _assemble(lowered, outs: list) -> list:
    return [outs[s] if isinstance(s, int) else s[1] for s in lowered.output_slots]


_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")


def _session(lowered, so, providers, model_path, external_threshold):
    """The InferenceSession, from bytes (or a file when the model is over the protobuf limit).
    A node ONNX Runtime has no kernel for (an op/dtype pair) is an unsupported op: say which."""
    import onnxruntime as ort

    from fxc.lowering import save
    from fxc.lowering.onnx_export import model_bytes
    model = lowered.model
    try:
        if model_path is not None:
            return ort.InferenceSession(model_path, so, providers=providers)
        if model_bytes(model) < min(external_threshold, 2**31 - 1):
            return ort.InferenceSession(model.SerializeToString(), so, providers=providers)
        with tempfile.TemporaryDirectory(prefix="fxc-ort-") as d:
            path = os.path.join(d, "model.onnx")
            save(model, path, external_threshold)
            return ort.InferenceSession(path, so, providers=providers)
    except Exception as e:
        m = _NO_KERNEL.search(str(e))
        if m is None:
            raise
        op, opset, node_name = m.groups()
        doc = next((n.doc_string for n in model.graph.node if n.name == node_name), None)
        raise FxcUnsupportedOpError(
            "onnxruntime", [(f"ONNX {op}-{opset} (no ONNX Runtime kernel for these dtypes)",
                             node_name, doc or None)], len(model.graph.node)) from None

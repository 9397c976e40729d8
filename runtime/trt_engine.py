"""The TensorRT engine: a deserialized engine run over preplanned device buffers, replayed as
one CUDA graph (TensorRT 10: set_tensor_address + execute_async_v3).

Static shapes: input and output buffers are torch tensors allocated once; a call copies the
inputs into them and replays the CUDA graph captured around execute_async_v3. Returned
outputs are clones (so a later call never overwrites them) unless `zero_copy_outputs`.
Dynamic batch or symbolic shapes (`dynamic_shapes=`, one optimization profile over the
declared ranges: lowering/tensorrt.py): each call sets the input shapes, allocates outputs of
the shapes TensorRT reports and executes directly (no graph: shapes change between calls); a
size outside the profile is an FxcInputError naming the input, the axis and the range.

Invariant: `run(inputs)` returns the graph's flat outputs as CUDA torch tensors.
"""
from __future__ import annotations

import importlib.util

import torch

from fxc.errors import FxcBackendUnavailableError, FxcInputError, FxcRuntimeError
from fxc.lowering.tensorrt import INSTALL_HINT
from fxc.runtime.inputs import bindable


def unavailable(device: torch.device) -> str | None:
    """None if TensorRT can run on `device` here, else why not and what to install."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"TensorRT is not installed: {INSTALL_HINT}"
    if device.type != "cuda":
        return f"TensorRT runs on CUDA devices, not {device.type}: compile with device='cuda'"
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    return None


def build(gm, options, example_inputs) -> "TrtEngine":
    """Lower to ONNX, build (or load the cached) engine, and wrap it."""
    from fxc.lowering import to_onnx
    from fxc.lowering.tensorrt import build_engine
    why = unavailable(options.device)
    if why:
        raise FxcBackendUnavailableError(f"backend 'tensorrt': {why}")
    lowered = to_onnx(gm, opset=options.opset, backend="tensorrt")  # dynamic_batch: symbolic gm
    data = build_engine(lowered, options, options.device.index or 0)
    return TrtEngine(data, lowered, options.device, zero_copy=options.zero_copy_outputs)


class TrtEngine:
    name = "tensorrt"

    def __init__(self, engine_bytes: bytes, lowered, device: torch.device, zero_copy=False):
        import tensorrt as trt
        self.lowered, self.device, self.zero_copy = lowered, device, zero_copy
        self.engine_bytes = engine_bytes
        with torch.cuda.device(device):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise FxcRuntimeError("TensorRT could not deserialize the engine (built by "
                                      "another TensorRT version or for another GPU?)")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(device)
            self.graph = None
            self.batch = _dynamic_batch(self.engine, lowered) if lowered.dynamic_batch else None
            self.dynamic = lowered.dynamic_batch or _symbolic(lowered.model)
            if not self.dynamic:
                self._plan_static()

    # -- static shapes: planned buffers, one CUDA graph ----------------------------------------
    def _plan_static(self):
        low = self.lowered
        self.in_bufs = [self._alloc(n) for n in low.input_names]
        self.out_bufs = [self._alloc(n) for n in low.output_names]
        for name, buf in zip(low.input_names + low.output_names, self.in_bufs + self.out_bufs):
            self.context.set_tensor_address(name, buf.data_ptr())
        with torch.cuda.stream(self.stream):
            # One plain run first: TensorRT allocates lazily, which a capture must not see.
            self._execute(self.stream)
        self.stream.synchronize()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self._execute(self.stream)
            self.graph = graph
        except RuntimeError:  # capture unsupported for this engine: run it plainly
            self.graph = None

    def _alloc(self, name: str) -> torch.Tensor:
        shape = tuple(self.engine.get_tensor_shape(name))
        dtype = _torch_dtype(self.engine.get_tensor_dtype(name))
        return torch.empty(shape, dtype=dtype, device=self.device)

    def _execute(self, stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise FxcRuntimeError("TensorRT execute_async_v3 failed (see its log)")

    def run(self, inputs: list[torch.Tensor]) -> list:
        if self.dynamic:
            return self._run_dynamic(inputs)
        for buf, x in zip(self.in_bufs, inputs):
            buf.copy_(x)
        stream = torch.cuda.current_stream(self.device)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._execute(stream)
        outs = self.out_bufs if self.zero_copy else [o.clone() for o in self.out_bufs]
        return _assemble(self.lowered, outs)

    # -- dynamic batch: shapes per call ---------------------------------------------------------
    def _run_dynamic(self, inputs):
        low, ctx = self.lowered, self.context
        kept = []
        for name, x in zip(low.input_names, inputs):
            x = bindable(x)
            kept.append(x)
            self._check_profile(name, tuple(x.shape))
            ctx.set_input_shape(name, tuple(x.shape))
            ctx.set_tensor_address(name, x.data_ptr())
        outs = []
        for name in low.output_names:
            y = torch.empty(tuple(ctx.get_tensor_shape(name)),
                            dtype=_torch_dtype(self.engine.get_tensor_dtype(name)),
                            device=self.device)
            ctx.set_tensor_address(name, y.data_ptr())
            outs.append(y)
        self._execute(torch.cuda.current_stream(self.device))
        return _assemble(low, outs)


    def _check_profile(self, name: str, shape: tuple) -> None:
        """A shape outside the engine's profile fails inside TensorRT: refuse it by name."""
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        for axis, (n, lo, hi) in enumerate(zip(shape, low, high)):
            if not int(lo) <= n <= int(hi):
                raise FxcInputError(f"input '{name}': axis {axis} expected a size in "
                                    f"{int(lo)}..{int(hi)} (the TensorRT engine's optimization "
                                    f"profile), got {n}")


def _symbolic(model) -> bool:
    """Whether any input of the ONNX model has a symbolic dim (dynamic_shapes=)."""
    return any(d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim)


def _dynamic_batch(engine, lowered):
    """The batch range of the engine's one optimization profile (lowering/tensorrt.py
    profile_shapes), so the input checker refuses a size TensorRT would fail on, by name."""
    from fxc.runtime.inputs import DynamicBatch
    marks = tuple(lowered.batch_inputs())
    name = next((n for n, m in zip(lowered.input_names, marks) if m), None)
    if name is None:
        return None
    low, _, high = engine.get_tensor_profile_shape(name, 0)
    return DynamicBatch(marks, int(low[0]), int(high[0]))


def _torch_dtype(trt_dtype) -> torch.dtype:
    import tensorrt as trt
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
             trt.int32: torch.int32, trt.int64: torch.int64, trt.bool: torch.bool,
             trt.uint8: torch.uint8, trt.int8: torch.int8}
    return table[trt_dtype]


def _assemble(lowered, outs):
    return [outs[s] if isinstance(s, int) else s[1] for s in lowered.output_slots]


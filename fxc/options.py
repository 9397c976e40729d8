"""Compile options: one frozen dataclass, validated once, read by every stage."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from . import debug
from .errors import FxcOptionError

# int8: the fx passes run in float32; the lowered ONNX model is quantized (fxc/quant).
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
              "int8": torch.float32}
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """What the user asked for. `device` is resolved (never None) once built by `resolve`."""

    device: torch.device
    precision: str = "fp32"
    backend: str = "auto"
    verify: bool = False
    dump_dir: str | None = None
    disable_passes: tuple[str, ...] = ()
    # Passes' tunables live here so the benchmark can sweep them; each pass documents its own.
    fold_size_limit: float = 4.0
    # Reduced precision (passes/cast_precision.py): values over the threshold on the example
    # inputs stay fp32 (fp16 only; math.inf switches the check off); inputs/outputs keep dtypes.
    fp16_overflow_threshold: float = 30000.0
    keep_io_dtype: bool = True
    # None: layer/group norm take half inputs where the engine is fxc's torch runtime (ATen's
    # kernels keep the statistics in fp32 inside); False: always fp32 with casts around.
    norms_in_half: bool | None = None
    # CUDA, fp16/bf16: an exact GELU fused after a linear runs as the tanh form in the cuBLASLt
    # epilogue (|difference| <= 4.7e-4, under half's rounding of such values). False: exact.
    gelu_epilogue: bool = True
    # Generated Triton kernels for pointwise/row regions (passes/fuse_regions.py): None: on CUDA
    # with fxc's torch runtime; True: on any device (CPU runs Triton's interpreter when
    # TRITON_INTERPRET=1, else the op's reference); False: off.
    generated_kernels: bool | None = None
    # Every call's outputs checked for inf/NaN; a bad call raises FxcNumericsError naming the
    # first node that made them (fxc/guard.py). None: the FXC_GUARD environment variable.
    guard: bool | None = None
    # Torch backend runtime (runtime/torch_engine.py, passes/memory_plan.py):
    plan_memory: bool = True          # intermediates with a real out= kernel go in one arena
    planner: str = "best"             # arena order: 'best' (try all) or a memory_plan.ORDERS name
    cuda_graphs: bool = True          # on CUDA, replay the step list as one captured CUDA graph
    zero_copy_outputs: bool = False   # outputs may be arena/static views, overwritten by the next call
    host_inputs: bool = False         # a CUDA module takes CPU inputs (staged through pinned buffers)
    # ONNX lowering and its backends (lowering/, runtime/ort_engine.py, runtime/trt_engine.py):
    opset: int = 17                   # 17..20; 17 is the first with LayerNormalization (TensorRT 10: 9..24)
    # Shorthand for dynamic_shapes (fxc/dynamic.py with_batch): axis 0 of every tensor input is
    # one Dim 'batch' in 1..max(32, the example's batch); an int N >= 2 says 1..N.
    dynamic_batch: bool | int = False
    # Shapes as ranges (fxc/dynamic.py): torch.export's dynamic_shapes, read by capture only.
    dynamic_shapes: Any = dataclasses.field(default=None, compare=False, hash=False)
    # CUDA graphs of a symbolic graph (runtime/buckets.py): one per bucket of sizes, captured on
    # first use. None: powers of two; else the sorted bucket sizes of the first dynamic axis.
    shape_buckets: tuple[int, ...] | None = None
    max_cuda_graphs: int = 8          # captured buckets kept at once (least recently used goes)
    external_data_threshold: int = 2_000_000_000  # ONNX bytes over which tensors go to model.onnx.data
    ort_threads: int = 0              # ONNX Runtime intra-op threads; 0: the physical cores
    trt_cache_dir: str | None = None  # TensorRT engine + timing cache dir (None: ~/.cache/fxc/tensorrt)
    # precision='int8' (fxc/quant): batches like the example inputs, to measure ranges on;
    # 'minmax' (None), 'percentile' or 'entropy'; a layer whose own int8 error (relative norm,
    # first batch) is over int8_tolerance (None: 0.05) stays FP32.
    calibration: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    calibration_method: str | None = None
    int8_tolerance: float | None = None
    trt_max_batch: int = 32           # TensorRT profile's largest size for an axis declared without a max

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def enabled(self, pass_name: str) -> bool:
        return pass_name not in self.disable_passes


def resolve(*, device, precision, backend, verify, dump_dir, disable_passes, default_device,
            **extra) -> CompileOptions:
    """Validate the user's options and fill in the environment's debug switches."""
    if precision not in PRECISIONS:
        raise FxcOptionError(f"precision={precision!r}: expected one of {sorted(PRECISIONS)}")
    if backend not in BACKENDS:
        raise FxcOptionError(f"backend={backend!r}: expected one of {list(BACKENDS)}")
    try:
        dev = torch.device(device) if device is not None else default_device
    except (RuntimeError, TypeError) as e:
        raise FxcOptionError(f"device={device!r}: {e}") from None
    if dev.type not in ("cpu", "cuda"):
        raise FxcOptionError(f"device={device!r}: fxc compiles for 'cpu' or 'cuda' (a {dev.type} "
                             f"device cannot run the compiled model's kernels)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FxcOptionError(f"device={device!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    _check_dynamic(extra)
    from .quant import check_options
    check_options(precision, dev, extra)
    if isinstance(disable_passes, str):
        disable_passes = (disable_passes,)
    fields = {f.name for f in dataclasses.fields(CompileOptions)}
    unknown = set(extra) - fields
    if unknown:
        raise FxcOptionError(f"unknown compile option(s): {sorted(unknown)}")
    return CompileOptions(
        device=dev, precision=precision, backend=backend,
        verify=bool(verify) or debug.env_verify(),
        dump_dir=dump_dir or debug.env_dump_dir(),
        disable_passes=tuple(disable_passes) + debug.env_disabled_passes(),
        **extra,
    )


def _check_dynamic(extra: dict) -> None:
    """shape_buckets: positive sizes (kept sorted, as a tuple); max_cuda_graphs >= 1;
    dynamic_batch: a bool or the largest batch."""
    buckets = extra.get("shape_buckets")
    if buckets is not None:
        if isinstance(buckets, int) or not all(isinstance(b, int) and b > 0 for b in buckets) \
                or not len(buckets):
            raise FxcOptionError(f"shape_buckets={buckets!r}: expected a list of positive sizes")
        extra["shape_buckets"] = tuple(sorted(set(buckets)))
    batch = extra.get("dynamic_batch", False)
    if not (isinstance(batch, bool) or isinstance(batch, int) and batch >= 2):
        raise FxcOptionError(f"dynamic_batch={batch!r}: expected True (batch 1..32, or up to the "
                             f"example's batch if larger), False, or the largest batch (an int >= 2)")
    n = extra.get("max_cuda_graphs", 1)
    if not isinstance(n, int) or n < 1:
        raise FxcOptionError(f"max_cuda_graphs={n!r}: expected an int >= 1")

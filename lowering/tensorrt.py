"""Our ONNX model -> a serialized TensorRT engine (TensorRT 10 Python API), with caches.

- The network is STRONGLY_TYPED: TensorRT keeps the ONNX model's types (our FP16 graphs carry
  their casts), rather than choosing precisions itself.
- One optimization profile: every input at its captured shape, except that under dynamic
  batch dim 0 ranges over 1..max(captured, options.trt_max_batch), optimized for the
  captured batch, and under `dynamic_shapes=` every symbolic axis ranges over its declared
  range (min: its low end, at least 1; opt: the example's size; max: its high end, or
  max(example, trt_max_batch) for a range declared without one).
- A timing cache file in the cache dir (loaded before, saved after each build) makes
  rebuilds fast; a built engine is cached as `<key>.engine`, key = sha256 of (the ONNX graph,
  the profile, TensorRT's version, the GPU's name and compute capability).
- Before anything is built, every ONNX op type of the model must be in TensorRT's ONNX
  support matrix (tensorrt_onnx_ops.txt); otherwise FxcUnsupportedOpError lists them.
TensorRT is imported lazily: fxc works without it.
"""
from __future__ import annotations

import functools
import hashlib
import os

import onnx

from fxc.errors import FxcBackendUnavailableError, FxcError, FxcUnsupportedOpError

TYPES = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16",
         onnx.TensorProto.BFLOAT16: "BF16", onnx.TensorProto.INT32: "INT32",
         onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL",
         onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.INT8: "INT8"}
INSTALL_HINT = "pip install tensorrt  (or: pip install 'fxc[tensorrt]')"


@functools.cache
def supported_onnx_ops() -> dict[str, frozenset[str]]:
    """ONNX op type -> the data types TensorRT's ONNX parser takes it in."""
    path = os.path.join(os.path.dirname(__file__), "tensorrt_onnx_ops.txt")
    ops = {}
    with open(path) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, types = line.rstrip("\n").split("\t")
                ops[name] = frozenset(types.split())
    return ops


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str, str | None]]:
    """(op type, node name, source line) of every node TensorRT's parser does not take."""
    ops = supported_onnx_ops()
    return [(f"ONNX {n.op_type}", n.name, n.doc_string or None) for n in model.graph.node
            if n.domain not in ("", "ai.onnx") or n.op_type not in ops]


def tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise FxcBackendUnavailableError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return trt


def cache_dir(options) -> str:
    d = options.trt_cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "fxc", "tensorrt")
    os.makedirs(d, exist_ok=True)
    return d


def profile_shapes(lowered, options) -> dict[str, tuple[tuple, tuple, tuple]]:
    """input name -> (min, opt, max) shapes of the one optimization profile."""
    shapes = {}
    ranges = getattr(lowered, "dim_ranges", {})
    for vi in lowered.model.graph.input:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        params = [d.dim_param for d in vi.type.tensor_type.shape.dim]
        if any(p in ranges for p in params):
            shapes[vi.name] = tuple(zip(*[_axis_profile(ranges.get(p), n, options)
                                          for p, n in zip(params, dims)]))
        elif lowered.dynamic_batch and dims:
            captured = lowered.captured_batch or 1
            hi = max(captured, options.trt_max_batch)
            shapes[vi.name] = (tuple([1] + dims[1:]), tuple([captured] + dims[1:]),
                               tuple([hi] + dims[1:]))
        else:
            shapes[vi.name] = (tuple(dims),) * 3
    return shapes


def _axis_profile(rng, size: int, options) -> tuple[int, int, int]:
    """(min, opt, max) of one axis: fixed, or a declared range (see the module docstring)."""
    if rng is None:
        return size, size, size
    low, high, example = rng
    hi = high if high is not None else max(example, options.trt_max_batch)
    lo = max(1, low)
    return lo, min(max(example, lo), hi), hi


def graph_hash(model: onnx.ModelProto) -> str:
    """sha256 over the graph's structure and every weight's bytes (no 2 GB serialization)."""
    h = hashlib.sha256()
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    del skeleton.graph.initializer[:]
    h.update(skeleton.SerializeToString(deterministic=True))
    for t in model.graph.initializer:
        h.update(t.name.encode())
        h.update(t.SerializeToString(deterministic=True))
    return h.hexdigest()


def engine_key(lowered, options, device_index: int) -> str:
    import torch
    trt = tensorrt()
    props = torch.cuda.get_device_properties(device_index)
    h = hashlib.sha256()
    for part in (graph_hash(lowered.model), repr(sorted(profile_shapes(lowered, options).items())),
                 trt.__version__, props.name, f"sm_{props.major}{props.minor}"):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def build_engine(lowered, options, device_index: int = 0) -> bytes:
    """The serialized engine for `lowered`: from the cache, or built (and cached)."""
    missing = unsupported_nodes(lowered.model)
    if missing:
        raise FxcUnsupportedOpError("tensorrt", missing, len(lowered.model.graph.node))
    trt = tensorrt()
    d = cache_dir(options)
    path = os.path.join(d, engine_key(lowered, options, device_index) + ".engine")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    _parse(parser, lowered, d)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(lowered, options).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    timing_path = os.path.join(d, "timing.cache")
    blob = open(timing_path, "rb").read() if os.path.exists(timing_path) else b""
    timing = config.create_timing_cache(blob)
    config.set_timing_cache(timing, ignore_mismatch=True)  # a cache from another GPU: ignored
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise FxcError("TensorRT could not build an engine for this graph (see its log above)")
    _write_atomic(timing_path, memoryview(config.get_timing_cache().serialize()))
    data = bytes(memoryview(engine))
    _write_atomic(path, data)
    return data


def _parse(parser, lowered, workdir: str) -> None:
    """Parse the model (through a file when it must carry external data)."""
    from .onnx_export import PROTOBUF_LIMIT, model_bytes, save
    model = lowered.model
    if model_bytes(model) < PROTOBUF_LIMIT:
        ok = parser.parse(model.SerializeToString())
    else:
        path = os.path.join(workdir, "parse-" + graph_hash(model)[:16] + ".onnx")
        save(model, path, external_threshold=0)
        ok = parser.parse_from_file(path)
    if ok:
        return
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node_name() if hasattr(e, "node_name") else str(e.node())
        doc = next((n.doc_string for n in model.graph.node if n.name == node), None)
        errors.append((f"TensorRT parser: {e.desc()}", node, doc or None))
    raise FxcUnsupportedOpError("tensorrt", errors, len(model.graph.node))


def _write_atomic(path: str, data) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)

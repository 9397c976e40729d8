"""Deployment artifacts: `compiled.save(dir)` and `fxc.load(dir)`.

A directory holds the model (model.onnx [+ model.onnx.data], and model.engine for TensorRT)
and manifest.json: format and versions, backend, opset, the input specs, the pytree in/out
specs (torch's JSON treespec_dumps), the output layout, and the SHA-256 and size of every
file.

`load` trusts nothing in the directory: it never unpickles (no torch.load, no pickle), reads
each file once and checks its size and hash before using the bytes, refuses any path in the
manifest or in the ONNX external-data entries that is absolute, climbs out with '..', or is
a symlink (CVE-2022-25882, CVE-2024-27318), and raises FxcArtifactError for a tampered,
truncated, foreign or incomplete artifact. The loaded module checks its inputs as the
compiled one did (runtime/inputs.py).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from typing import Any

import torch
import torch.utils._pytree as pytree

from .errors import FxcArtifactError, FxcBackendUnavailableError

FORMAT, FORMAT_VERSION = "fxc-artifact", 1
MANIFEST = "manifest.json"
_MANIFEST_LIMIT = 64 << 20
_DTYPES = {str(d).replace("torch.", ""): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}
_JSON_SCALARS = (type(None), bool, int, float, str)


# -- save -------------------------------------------------------------------------------------

def save(compiled, directory: str) -> str:
    """Write `compiled`'s artifact into `directory` (created if needed); returns the manifest path."""
    from fxc.lowering import save as save_onnx
    from fxc.lowering import to_onnx
    opts, engine = compiled.options, compiled.engine
    lowered = getattr(engine, "lowered", None)
    if lowered is None:  # the torch backend: lower its final graph for deployment
        lowered = to_onnx(compiled.graph, opset=opts.opset, dynamic_batch=opts.dynamic_batch)
    os.makedirs(directory, exist_ok=True)
    files = save_onnx(lowered.model, os.path.join(directory, "model.onnx"),
                      opts.external_data_threshold)
    backend = "tensorrt" if engine.name == "tensorrt" else "onnxruntime"
    if backend == "tensorrt":
        with open(os.path.join(directory, "model.engine"), "wb") as f:
            f.write(engine.engine_bytes)
        files.append("model.engine")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "backend": backend, "compiled_backend": engine.name,
        "device": str(opts.device), "precision": opts.precision, "opset": lowered.opset,
        "dynamic_batch": lowered.dynamic_batch, "captured_batch": lowered.captured_batch,
        "inputs": [_spec_json(s) for s in compiled.checker.specs],
        "in_spec": _dumps(compiled.checker.in_spec, "input"),
        "out_spec": _dumps(compiled.out_spec, "output"),
        "layout": _layout_json(getattr(compiled.checker, "layout", None)),
        "onnx": {"file": "model.onnx", "input_names": lowered.input_names,
                 "output_names": lowered.output_names,
                 "output_slots": [_slot_json(s) for s in lowered.output_slots],
                 "batch_outputs": lowered.batch_outputs},
        "engine": {"file": "model.engine"} if backend == "tensorrt" else None,
        "files": {name: _file_entry(os.path.join(directory, name)) for name in files},
    }
    path = os.path.join(directory, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, path)
    return path


def _versions() -> dict[str, str]:
    import onnx

    import fxc
    out = {"fxc": fxc.__version__, "torch": torch.__version__, "onnx": onnx.__version__}
    for mod in ("onnxruntime", "tensorrt"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def _spec_json(spec) -> dict:
    if spec.is_tensor:
        return {"name": spec.name, "tensor": True, "dtype": str(spec.dtype).replace("torch.", ""),
                "shape": list(spec.shape)}
    if not isinstance(spec.value, _JSON_SCALARS):
        raise FxcArtifactError(f"input '{spec.name}' is the constant {spec.value!r}, which an "
                               f"artifact cannot store (only None, bool, int, float, str)")
    return {"name": spec.name, "tensor": False, "value": spec.value}


def _slot_json(slot) -> Any:
    if isinstance(slot, int):
        return slot
    if not isinstance(slot[1], _JSON_SCALARS):
        raise FxcArtifactError(f"the model returns the constant {slot[1]!r}, which an artifact "
                               f"cannot store")
    return {"const": slot[1]}


def _dumps(spec, what: str) -> str:
    try:
        return pytree.treespec_dumps(spec)
    except Exception as e:
        raise FxcArtifactError(f"the {what} structure cannot be serialized: {e}") from None


def _layout_json(layout) -> dict | None:
    if layout is None:
        return None
    params = [[p.name, int(p.kind), p.default is not inspect.Parameter.empty]
              for p in layout.signature.parameters.values()]
    return {"params": params, "n_args": layout.n_args, "kw_names": list(layout.kw_names)}


def _file_entry(path: str) -> dict:
    with open(path, "rb") as f:
        data = f.read()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


# -- load -------------------------------------------------------------------------------------

class LoadedModule:
    """A loaded artifact: callable like the CompiledModule it was saved from."""

    def __init__(self, engine, checker, out_spec, manifest: dict):
        self.engine, self.checker, self.out_spec, self.manifest = engine, checker, out_spec, manifest

    def __call__(self, *args, **kwargs):
        flat = self.checker.flatten(args, kwargs)
        with torch.no_grad():
            outs = self.engine.run(flat)
        return pytree.tree_unflatten(outs, self.out_spec)

    def __repr__(self) -> str:
        return f"LoadedModule(backend={self.engine.name}, device={self.engine.device})"


def load(directory: str, device: str | torch.device | None = None) -> LoadedModule:
    """Load an artifact written by `CompiledModule.save`; see the module docstring."""
    if not os.path.isdir(directory):
        raise FxcArtifactError(f"{directory!r} is not a directory")
    root = os.path.realpath(directory)
    manifest = _read_manifest(root)
    files = _verified_files(root, manifest)
    dev = torch.device(device) if device is not None else torch.device(manifest["device"])
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FxcBackendUnavailableError(f"the artifact runs on {dev}, and CUDA is not available")
    lowered = _lowered(root, manifest, files)
    if manifest["backend"] == "tensorrt":
        from fxc.runtime.trt_engine import TrtEngine, unavailable
        why = unavailable(dev)
        if why:
            raise FxcBackendUnavailableError(f"backend 'tensorrt': {why}")
        engine = TrtEngine(files[_field(manifest, "engine", dict)["file"]], lowered, dev)
    else:
        from fxc.runtime.ort_engine import OrtEngine
        engine = OrtEngine(lowered, dev, model_path=lowered.model_path)
    checker = _checker(manifest, dev, getattr(engine, "batch", None))
    out_spec = _loads(manifest["out_spec"], "out_spec")
    return LoadedModule(engine, checker, out_spec, manifest)


def _read_manifest(root: str) -> dict:
    path = os.path.join(root, MANIFEST)
    if os.path.islink(path) or not os.path.isfile(path):
        raise FxcArtifactError(f"{path}: no manifest.json (not an fxc artifact?)")
    with open(path, "rb") as f:
        raw = f.read(_MANIFEST_LIMIT + 1)
    if len(raw) > _MANIFEST_LIMIT:
        raise FxcArtifactError(f"{path}: manifest larger than {_MANIFEST_LIMIT} bytes")
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise FxcArtifactError(f"{path}: not valid JSON ({e}): truncated or tampered") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise FxcArtifactError(f"{path}: not an {FORMAT} manifest (format "
                               f"{m.get('format') if isinstance(m, dict) else None!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise FxcArtifactError(f"{path}: artifact format version {m.get('format_version')!r}; "
                               f"this fxc reads version {FORMAT_VERSION} (re-save it with this fxc)")
    for key, typ in (("backend", str), ("device", str), ("files", dict), ("inputs", list),
                     ("in_spec", str), ("out_spec", str), ("onnx", dict)):
        _field(m, key, typ)
    if m["backend"] not in ("onnxruntime", "tensorrt"):
        raise FxcArtifactError(f"unknown backend {m['backend']!r} in the manifest")
    return m


def _field(m: dict, key: str, typ):
    if not isinstance(m.get(key), typ):
        raise FxcArtifactError(f"manifest field {key!r} is missing or not a {typ.__name__}")
    return m[key]


def safe_path(root: str, rel: Any) -> str:
    """`rel` resolved inside `root`, or FxcArtifactError: no absolute paths, no '..', no
    symlinks anywhere on the way, nothing that resolves outside `root`."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise FxcArtifactError(f"invalid path {rel!r} in the artifact")
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise FxcArtifactError(f"absolute path {rel!r} in the artifact")
    parts = rel.replace("\\", "/").split("/")
    if any(p in ("..", "") for p in parts):
        raise FxcArtifactError(f"path {rel!r} leaves the artifact directory")
    cur = root
    for p in parts:
        cur = os.path.join(cur, p)
        if os.path.islink(cur):
            raise FxcArtifactError(f"{rel!r} is a symlink; artifacts hold plain files only")
    if os.path.commonpath([os.path.realpath(cur), root]) != root:
        raise FxcArtifactError(f"path {rel!r} resolves outside the artifact directory")
    return cur


def _verified_files(root: str, manifest: dict) -> dict[str, bytes]:
    """Every listed file's bytes, after its size and SHA-256 matched the manifest."""
    out = {}
    for rel, entry in manifest["files"].items():
        path = safe_path(root, rel)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise FxcArtifactError(f"manifest entry for {rel!r} has no sha256")
        if not os.path.isfile(path):
            raise FxcArtifactError(f"{rel!r} is missing from the artifact")
        with open(path, "rb") as f:
            data = f.read()
        if len(data) != entry.get("bytes"):
            raise FxcArtifactError(f"{rel!r} has {len(data)} bytes, the manifest says "
                                   f"{entry.get('bytes')}: truncated or replaced")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise FxcArtifactError(f"{rel!r} does not match its SHA-256 in the manifest: "
                                   f"the file was modified")
        out[rel] = data
    return out


def _lowered(root: str, manifest: dict, files: dict[str, bytes]):
    """The ONNX model (from the verified bytes) and its layout, as a LoweredOnnx."""
    import onnx

    from fxc.lowering import LoweredOnnx
    meta = manifest["onnx"]
    name = meta.get("file")
    if name not in files:
        raise FxcArtifactError(f"the ONNX model {name!r} is not among the artifact's hashed files")
    try:
        model = onnx.load_model_from_string(files[name])
    except Exception as e:
        raise FxcArtifactError(f"{name}: not a readable ONNX model ({type(e).__name__})") from None
    external = _external_locations(model)
    for loc in external:
        safe_path(root, loc)
        if loc not in files:
            raise FxcArtifactError(f"{name} reads external data from {loc!r}, which the manifest "
                                   f"does not list (and so did not hash)")
    try:
        names_in = [i.name for i in model.graph.input]
        slots = [s if isinstance(s, int) else ("const", s["const"]) for s in meta["output_slots"]]
        low = LoweredOnnx(model, list(meta["input_names"]), list(meta["output_names"]), slots,
                          [bool(x) for x in meta["batch_outputs"]],
                          bool(manifest.get("dynamic_batch")), int(manifest.get("opset", 17)),
                          manifest.get("captured_batch"))
    except (KeyError, TypeError, ValueError) as e:
        raise FxcArtifactError(f"manifest 'onnx' section is malformed: {e}") from None
    if names_in != low.input_names or [o.name for o in model.graph.output] != low.output_names:
        raise FxcArtifactError("the ONNX model's inputs/outputs differ from the manifest's")
    # With external data ONNX Runtime must read the model from its file (already verified).
    low.model_path = os.path.join(root, name) if external else None
    return low


def _external_locations(model) -> set[str]:
    """Every external-data `location` in the model (initializers and Constant attributes)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors
    locs = set()
    for t in _get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in t.external_data}
            locs.add(entry.get("location", ""))
    return locs


def _checker(manifest: dict, device: torch.device, batch=None):
    """The input checker of the saved specs; `batch`: the engine's DynamicBatch, if any."""
    from fxc.capture import InputSpec
    from fxc.runtime import InputChecker
    specs = []
    for s in manifest["inputs"]:
        try:
            if s["tensor"]:
                specs.append(InputSpec(str(s["name"]), True, _DTYPES[s["dtype"]],
                                       tuple(int(d) for d in s["shape"]), device))
            else:
                specs.append(InputSpec(str(s["name"]), False, value=s["value"]))
        except (KeyError, TypeError, ValueError) as e:
            raise FxcArtifactError(f"manifest input spec {s!r} is malformed: {e}") from None
    in_spec = _loads(manifest["in_spec"], "in_spec")
    layout = _layout(manifest.get("layout"))
    return InputChecker(specs, in_spec, layout, batch)


def _loads(text: str, what: str):
    try:
        return pytree.treespec_loads(text)
    except Exception as e:
        raise FxcArtifactError(f"manifest {what} is not a valid pytree spec: {e}") from None


def _layout(data):
    if data is None:
        return None
    try:
        from fxc.capture import CallLayout
    except ImportError:
        return None
    try:
        params = [inspect.Parameter(str(n), inspect._ParameterKind(int(k)),
                                    default=None if has_default else inspect.Parameter.empty)
                  for n, k, has_default in data["params"]]
        return CallLayout(inspect.Signature(params), int(data["n_args"]),
                          tuple(str(k) for k in data["kw_names"]))
    except (KeyError, TypeError, ValueError) as e:
        raise FxcArtifactError(f"manifest layout is malformed: {e}") from None

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

import contextlib
import ctypes
import errno
import hashlib
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from typing import Any

import torch
import torch.utils._pytree as pytree

from .errors import FxcArtifactError, FxcBackendUnavailableError

FORMAT, FORMAT_VERSION = "fxc-artifact", 2  # 2: the manifest carries its own SHA-256
MANIFEST = "manifest.json"
MANIFEST_HASH = "manifest_sha256"
_MANIFEST_LIMIT = 64 << 20
_DTYPES = {str(d).replace("torch.", ""): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}
_JSON_SCALARS = (type(None), bool, int, float, str)


# -- save -------------------------------------------------------------------------------------

def save(compiled, directory: str) -> str:
    """Write `compiled`'s artifact into `directory`; returns the manifest path.

    Atomic: everything is written into a fresh staging directory beside `directory`, flushed,
    then swapped into place with one renameat2(RENAME_EXCHANGE) (Linux), so a save killed at
    any instant leaves at `directory` the previous artifact or the new one, whole (a hidden
    `.NAME.saving-*` folder may be left beside it). Where the exchange is unavailable (another
    OS, or a filesystem without it) the swap is two renames, the old artifact aside to
    `.NAME.old-*` and then the new one in: a kill between them leaves `directory` absent and the
    previous artifact whole in the aside, which `load(directory)` then reads and the next
    completed save removes. The staging directory is new, so no symlink planted in `directory`
    is ever written through.
    `directory` must be absent, empty, or an fxc artifact (which is replaced); anything else
    is refused rather than mixed with or deleted.
    """
    from fxc.lowering import save as save_onnx
    from fxc.lowering import to_onnx
    opts, engine = compiled.options, compiled.engine
    target = os.path.abspath(directory)
    _check_target(target)
    lowered = getattr(engine, "lowered", None)
    if lowered is None:  # the torch backend: lower its final graph for deployment
        warnings.warn("the torch backend has no artifact format of its own: saving the final "
                      "graph as ONNX, which fxc.load runs on ONNX Runtime", stacklevel=3)
        lowered = to_onnx(compiled.graph, opset=opts.opset)  # ranges (and dynamic_batch): symbolic
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.saving-", dir=parent)
    try:
        files = save_onnx(lowered.model, os.path.join(staging, "model.onnx"),
                          opts.external_data_threshold)
        backend = "tensorrt" if engine.name == "tensorrt" else "onnxruntime"
        if backend == "tensorrt":
            with open(os.path.join(staging, "model.engine"), "wb") as f:
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
            "files": {name: _file_entry(os.path.join(staging, name)) for name in files},
        }
        manifest[MANIFEST_HASH] = manifest_digest(manifest)
        with open(os.path.join(staging, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        _flush(staging, files + [MANIFEST])
        _swap_into_place(staging, target)
        _drop_asides(target)  # superseded now: left by a two-rename save killed midway
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap it holds the old artifact
    return os.path.join(target, MANIFEST)


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON without its own hash field. It catches a
    manifest edited, truncated or corrupted after the save (not a forger who recomputes it:
    an artifact carries no key)."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_HASH}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _check_target(target: str) -> None:
    """Refuse a target that is a symlink, a file, or a directory holding something other than
    an fxc artifact: save() replaces the directory as a whole."""
    if os.path.islink(target):
        raise FxcArtifactError(f"{target!r} is a symlink; save() writes real directories only")
    if not os.path.exists(target):
        return
    if not os.path.isdir(target):
        raise FxcArtifactError(f"{target!r} exists and is not a directory")
    entries = os.listdir(target)
    if entries and MANIFEST not in entries:
        raise FxcArtifactError(f"{target!r} is not empty and holds no fxc artifact "
                               f"({len(entries)} entries); save() replaces the whole directory, "
                               f"so give it an empty or new one")


def _flush(directory: str, names: list[str]) -> None:
    """fsync every written file and the directory, so the swap publishes complete bytes."""
    for name in names:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _swap_into_place(staging: str, target: str) -> None:
    """Make `staging` the directory at `target`. A missing target is one rename; an existing
    one is exchanged with staging in one renameat2(RENAME_EXCHANGE) (Linux), so at every
    instant `target` is the old artifact or the new one. Where the exchange is unavailable,
    two renames: a kill between them leaves no `target`, and the old artifact whole in a
    `.NAME.old-*` folder, which load() falls back to (`_asides`). A name of that form only ever
    holds a whole artifact: it is made by renaming one and left by renaming it elsewhere."""
    if not os.path.exists(target):
        os.rename(staging, target)
    elif not _rename_exchange(staging, target):
        # a fresh name, not mkdtemp + rmdir: a kill between those would leave an empty aside
        old = os.path.join(os.path.dirname(target),
                           f"{_aside_prefix(target)}{os.urandom(6).hex()}")
        os.rename(target, old)
        os.rename(staging, target)
        os.rename(old, staging)  # so the caller's cleanup removes the old artifact
    _fsync_dir(os.path.dirname(target))


def _aside_prefix(target: str) -> str:
    return f".{os.path.basename(target)}.old-"


def _asides(target: str) -> list[str]:
    """The `.NAME.old-*` folders beside `target` (whole previous artifacts a two-rename swap
    left when it was killed between its renames), newest first."""
    parent, prefix = os.path.dirname(target), _aside_prefix(target)
    pattern = re.compile(re.escape(prefix) + r"[0-9a-f]{12}")
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(parent, name)
        if (pattern.fullmatch(name) and not os.path.islink(path) and os.path.isdir(path)
                and os.path.isfile(os.path.join(path, MANIFEST))):
            found.append((os.stat(os.path.join(path, MANIFEST)).st_mtime_ns, path))
    return [path for _, path in sorted(found, reverse=True)]


def _drop_asides(target: str) -> None:
    """Remove the asides of `target` once a save has put a whole artifact there: each is first
    renamed to a staging-style name, so a kill during the removal never leaves a partial
    directory under an aside's name."""
    for aside in _asides(target):
        trash = os.path.join(os.path.dirname(target),
                             f".{os.path.basename(target)}.saving-{os.urandom(6).hex()}")
        try:
            os.rename(aside, trash)
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)


def _rename_exchange(a: str, b: str) -> bool:
    """Atomically exchange the paths `a` and `b` (Linux renameat2); False where unsupported."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # no kernel/filesystem support
        return False
    raise OSError(err, f"renameat2 exchange of {a!r} and {b!r}: {os.strerror(err)}")


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
        out = {"name": spec.name, "tensor": True, "dtype": str(spec.dtype).replace("torch.", ""),
               "shape": list(spec.shape)}
        if spec.dynamic:  # per axis: null (fixed) or the range it was compiled for
            out["dims"] = [d.to_json() if d is not None else None for d in spec.dims]
        return out
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

    def __init__(self, engine, checker, out_spec, manifest: dict, guard: bool | None = None):
        from fxc import guard as guard_mod
        self.engine, self.checker, self.out_spec, self.manifest = engine, checker, out_spec, manifest
        self._guard = guard_mod.enabled(guard)

    def __call__(self, *args, **kwargs):
        flat = self.checker.flatten(args, kwargs)
        with torch.no_grad():
            outs = self.engine.run(flat)
        if self._guard:
            from fxc import guard
            if bad := guard.bad_outputs(outs):
                raise guard.loaded_error(bad, self.manifest["backend"])
        return pytree.tree_unflatten(outs, self.out_spec)

    def __repr__(self) -> str:
        return f"LoadedModule(backend={self.engine.name}, device={self.engine.device})"


def load(directory: str, device: str | torch.device | None = None,
         guard: bool | None = None) -> LoadedModule:
    """Load an artifact written by `CompiledModule.save`; see the module docstring. `guard`
    (default: the FXC_GUARD environment variable) checks every call's outputs for inf/NaN.
    Where `directory` is absent but a save killed between its two renames left the previous
    artifact aside (`.NAME.old-*`, see `save`), that artifact is loaded, with a warning."""
    if not os.path.isdir(directory):
        asides = _asides(os.path.abspath(directory))
        if not asides:
            raise FxcArtifactError(f"{directory!r} is not a directory")
        warnings.warn(f"{directory!r} is missing: a save() into it was killed midway; loading "
                      f"the previous artifact it left whole at {asides[0]!r}", stacklevel=2)
        directory = asides[0]
    root = os.path.realpath(directory)
    manifest = _read_manifest(root)
    with _malformed("manifest"):
        files = _verified_files(root, manifest)
        dev = torch.device(device if device is not None else manifest["device"])
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FxcBackendUnavailableError(f"the artifact runs on {dev}, and CUDA is not available")
    with _malformed("manifest 'onnx' section"):
        lowered = _lowered(root, manifest, files)
    if manifest["backend"] == "tensorrt":
        from fxc.runtime.trt_engine import TrtEngine, unavailable
        why = unavailable(dev)
        if why:
            raise FxcBackendUnavailableError(f"backend 'tensorrt': {why}")
        with _malformed("manifest 'engine' section"):
            blob = files[_field(manifest, "engine", dict)["file"]]
        engine = TrtEngine(blob, lowered, dev)
    else:
        from fxc.runtime.ort_engine import OrtEngine
        engine = OrtEngine(lowered, dev, model_path=lowered.model_path)
    with _malformed("manifest"):
        checker = _checker(manifest, dev, lowered, getattr(engine, "batch", None))
        out_spec = _loads(manifest["out_spec"], "out_spec")
        if out_spec.num_leaves != len(lowered.output_slots):
            raise FxcArtifactError(f"out_spec holds {out_spec.num_leaves} outputs; the manifest's "
                                   f"output slots are {len(lowered.output_slots)}")
    return LoadedModule(engine, checker, out_spec, manifest, guard)


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
    if m.get(MANIFEST_HASH) != manifest_digest(m):
        raise FxcArtifactError(f"{path}: the manifest does not match its own SHA-256: it was "
                               f"edited or corrupted after the save")
    _check_versions(m)
    return m


def _check_versions(m: dict) -> None:
    """Refuse an artifact this installation cannot be trusted to run as it was saved: another
    fxc release (lowering and manifest may differ), an opset beyond the installed onnx, or a
    model saved for a newer onnxruntime than the installed one."""
    import onnx

    import fxc
    saved = _field(m, "versions", dict)
    if _release(saved.get("fxc")) != _release(fxc.__version__):
        raise FxcArtifactError(f"the artifact was saved by fxc {saved.get('fxc')!r}; this is fxc "
                               f"{fxc.__version__}: re-save it with this fxc")
    opset = m.get("opset")
    if not isinstance(opset, int) or not 1 <= opset <= onnx.defs.onnx_opset_version():
        raise FxcArtifactError(f"the artifact's opset {opset!r} is not one the installed onnx "
                               f"{onnx.__version__} knows (1..{onnx.defs.onnx_opset_version()})")
    if m["backend"] == "onnxruntime" and "onnxruntime" in saved:
        try:
            import onnxruntime
        except ImportError:
            return  # the engine says so when it is built
        if _release(onnxruntime.__version__) < _release(saved["onnxruntime"]):
            raise FxcArtifactError(f"the artifact was saved with onnxruntime {saved['onnxruntime']!r}"
                                   f"; the installed {onnxruntime.__version__} is older: upgrade it "
                                   f"or re-save the model here")


def _release(version) -> tuple[int, ...]:
    """(major, minor) of a version string; FxcArtifactError for anything else."""
    try:
        return tuple(int(p) for p in str(version).split("+")[0].split(".")[:2])
    except ValueError:
        raise FxcArtifactError(f"version {version!r} in the manifest is not a release number") from None


@contextlib.contextmanager
def _malformed(what: str):
    """Turn the errors a wrongly typed or missing manifest field raises while it is parsed
    into FxcArtifactError, naming the section: a user never sees a bare KeyError."""
    try:
        yield
    except FxcArtifactError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise FxcArtifactError(f"{what} is malformed: {type(e).__name__}: {e}") from None


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
        n_out = len(_list_of(meta["output_names"], str, "onnx.output_names"))
        slots = [_slot(s, n_out) for s in _list_of(meta["output_slots"], (int, dict),
                                                    "onnx.output_slots")]
        batch_outputs = _list_of(meta["batch_outputs"], bool, "onnx.batch_outputs")
        if len(batch_outputs) != n_out:
            raise FxcArtifactError(f"onnx.batch_outputs has {len(batch_outputs)} entries for "
                                   f"{n_out} outputs")
        captured = manifest.get("captured_batch")
        if captured is not None and not _is_int(captured, 1):
            raise FxcArtifactError(f"captured_batch {captured!r} is not a positive integer")
        low = LoweredOnnx(model, _list_of(meta["input_names"], str, "onnx.input_names"),
                          list(meta["output_names"]), slots, batch_outputs,
                          _bool(manifest.get("dynamic_batch", False), "dynamic_batch"),
                          manifest["opset"], captured)
    except (KeyError, TypeError, ValueError) as e:
        raise FxcArtifactError(f"manifest 'onnx' section is malformed: {e}") from None
    if names_in != low.input_names or [o.name for o in model.graph.output] != low.output_names:
        raise FxcArtifactError("the ONNX model's inputs/outputs differ from the manifest's")
    # With external data ONNX Runtime must read the model from its file (already verified).
    low.model_path = os.path.join(root, name) if external else None
    return low


def _is_int(v, lo: int = 0) -> bool:
    return type(v) is int and v >= lo  # bool is an int subclass: not a size


def _bool(v, what: str) -> bool:
    if type(v) is not bool:
        raise FxcArtifactError(f"manifest field {what} is {v!r}, not true/false")
    return v


def _list_of(v, types, what: str) -> list:
    if not isinstance(v, list) or any(type(x) not in (types if isinstance(types, tuple)
                                                      else (types,)) for x in v):
        raise FxcArtifactError(f"manifest field {what} is not a list of "
                               f"{getattr(types, '__name__', types)}: {v!r:.80}")
    return v


def _slot(s, n_out: int):
    """An output slot: an index into the ONNX outputs, or {"const": scalar}."""
    if type(s) is int:
        if not 0 <= s < n_out:
            raise FxcArtifactError(f"output slot {s} points past the model's {n_out} outputs")
        return s
    if set(s) != {"const"} or not isinstance(s["const"], _JSON_SCALARS):
        raise FxcArtifactError(f"output slot {s!r:.80} is neither an index nor a constant")
    return ("const", s["const"])


def _onnx_inputs(model) -> list[tuple[int, list]]:
    """(elem_type, dims) per ONNX graph input; a dim is an int or its symbolic name."""
    out = []
    for vi in model.graph.input:
        t = vi.type.tensor_type
        out.append((t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]))
    return out


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


def _checker(manifest: dict, device: torch.device, lowered, batch=None):
    """The input checker of the saved specs, each tensor spec checked against the hashed ONNX
    model's own input (dtype and static dims); `batch`: the engine's DynamicBatch, if any."""
    from fxc.capture import InputSpec
    from fxc.lowering.builder import TORCH_TO_ONNX
    from fxc.runtime import InputChecker
    specs, onnx_inputs = [], _onnx_inputs(lowered.model)
    for s in _list_of(manifest["inputs"], dict, "inputs"):
        name = s.get("name")
        if not isinstance(name, str) or type(s.get("tensor")) is not bool:
            raise FxcArtifactError(f"manifest input spec {s!r:.80} is malformed")
        if not s["tensor"]:
            if not isinstance(s.get("value"), _JSON_SCALARS):
                raise FxcArtifactError(f"manifest input {name!r}: constant {s.get('value')!r:.40} "
                                       f"is not a JSON scalar")
            specs.append(InputSpec(name, False, value=s["value"]))
            continue
        dtype, shape = _DTYPES.get(s.get("dtype")), s.get("shape")
        if dtype is None or not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise FxcArtifactError(f"manifest input {name!r}: dtype {s.get('dtype')!r} / shape "
                                   f"{shape!r:.60} is not a known dtype and a list of sizes")
        k = sum(1 for x in specs if x.is_tensor)
        if k >= len(onnx_inputs):
            raise FxcArtifactError(f"manifest input {name!r} has no input in the ONNX model")
        elem, dims = onnx_inputs[k]
        if (TORCH_TO_ONNX.get(dtype) != elem or len(dims) != len(shape)
                or any(isinstance(d, int) and d != n for d, n in zip(dims, shape))):
            raise FxcArtifactError(f"manifest input {name!r} says {s['dtype']}{shape}; the ONNX "
                                   f"model's input {k} takes {dims} of ONNX type {elem}")
        ranges = _dim_ranges(s.get("dims"), name, dims)
        specs.append(InputSpec(name, True, dtype, tuple(shape), device, dims=ranges))
    if sum(1 for x in specs if x.is_tensor) != len(onnx_inputs):
        raise FxcArtifactError(f"the manifest lists {sum(x.is_tensor for x in specs)} tensor "
                               f"inputs; the ONNX model takes {len(onnx_inputs)}")
    in_spec = _loads(manifest["in_spec"], "in_spec")
    if in_spec.num_leaves != len(specs):
        raise FxcArtifactError(f"in_spec holds {in_spec.num_leaves} inputs; the manifest lists "
                               f"{len(specs)}")
    layout = _layout(manifest.get("layout"))
    return InputChecker(specs, in_spec, layout, batch)


def _dim_ranges(data, name: str, onnx_dims: list) -> tuple:
    """An input's saved axis ranges (absent: every axis fixed), each checked for its types and
    against the ONNX model: a ranged axis is the model's symbolic dim of the same symbol."""
    from fxc.dynamic import DimRange
    if data is None:
        return ()
    if not isinstance(data, list) or len(data) != len(onnx_dims):
        raise FxcArtifactError(f"manifest input {name!r}: dims {data!r:.80} is not a list of one "
                               f"entry per axis ({len(onnx_dims)})")
    out = []
    for axis, (d, onnx_dim) in enumerate(zip(data, onnx_dims)):
        if d is None:
            out.append(None)
            continue
        ok = (isinstance(d, dict) and set(d) == {"symbol", "name", "low", "high"}
              and isinstance(d["symbol"], str) and isinstance(d["name"], str)
              and _is_int(d["low"]) and (d["high"] is None or _is_int(d["high"], d["low"])))
        if not ok:
            raise FxcArtifactError(f"manifest input {name!r}: axis {axis} range {d!r:.80} is not "
                                   f"{{symbol, name, low, high}} with low <= high")
        if onnx_dim != d["symbol"]:
            raise FxcArtifactError(f"manifest input {name!r}: axis {axis} is the range "
                                   f"{d['symbol']!r}, the ONNX model's axis is {onnx_dim!r}")
        out.append(DimRange(d["symbol"], d["name"], d["low"], d["high"]))
    return tuple(out)


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

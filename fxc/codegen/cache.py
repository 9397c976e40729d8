"""Generated source -> a triton.jit kernel, compiled once per structure; and the launch.

Kernels are cached by `Launch.spec` (region key + input dtypes + broadcast pattern + collapsed
rank), so the 24 identical layers of a transformer compile one kernel. Launch geometry is
cached per (key, input and output shapes/strides/dtypes): a call costs two dict lookups and
the launch. The source of every kernel is readable: `source(spec)`, and written to
`$FXC_DUMP_DIR/kernels/<name>.py` (or `dump_dir=`) when a dump directory is set.

Triton reads a kernel's source through `inspect` (linecache); each generated source is
registered there under a pseudo file name, so nothing is written to disk unless dumping.
"""
from __future__ import annotations

import functools
import linecache
import os
from typing import Any

import torch

from . import triton_gen
from .region import Region

_KERNELS: dict[str, Any] = {}        # spec -> jitted kernel
_SOURCES: dict[str, str] = {}        # spec -> source text
_PLANS: dict[tuple, Any] = {}        # (key, metadata of the tensors, interpret) -> Launch | why


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@functools.cache
def available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _sig(ts) -> tuple:
    return tuple((tuple(t.shape), tuple(t.stride()), t.dtype) for t in ts)


def plan(region: Region, inputs, outputs):
    """The Launch for these tensors (cached), or a string saying why no kernel fits."""
    k = (region.key, _sig(inputs), _sig(outputs), interpreting())
    p = _PLANS.get(k)
    if p is None:
        p = _PLANS[k] = triton_gen.plan(region, inputs, outputs, interpret=interpreting())
        if not isinstance(p, str):
            _SOURCES.setdefault(p.spec, p.source)
    return p


def kernel(launch) -> Any:
    """The jitted kernel of a launch's spec (compiled from its source once)."""
    fn = _KERNELS.get(launch.spec)
    if fn is None:
        filename = f"<fxc-generated {launch.name}>"
        lines = launch.source.splitlines(keepends=True)
        linecache.cache[filename] = (len(launch.source), None, lines, filename)
        namespace: dict[str, Any] = {"__name__": f"fxc.generated.{launch.name}"}  # jit helpers need a module
        exec(compile(launch.source, filename, "exec"), namespace)  # noqa: S102 (our own text)
        fn = _KERNELS[launch.spec] = namespace[launch.name]
        _dump(launch)
    return fn


def launch(region: Region, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> str | None:
    """Run the region's kernel writing `outputs`; None when it ran, else why it did not."""
    p = plan(region, inputs, outputs)
    if isinstance(p, str):
        return p
    kernel(p)[(p.grid,)](*inputs, *outputs, *p.ints, **p.constexprs, num_warps=p.num_warps)
    return None


def source(spec: str) -> str | None:
    return _SOURCES.get(spec)


def compiled_specs() -> set[str]:
    return set(_KERNELS)


def _dump(launch) -> None:
    d = os.environ.get("FXC_DUMP_DIR")
    if d:
        write_source(d, launch.name, launch.source)


def write_source(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, "kernels", f"{name}.py")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path

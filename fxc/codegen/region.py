"""A fused region as data: the ATen program it runs, its outputs and their layouts.

    ops      [(target, args, kwargs)]: registry ops only (fxc/codegen/registry.py); an
             argument is In(i) (the region's i-th input), Val(j) (op j's result), a Python
             scalar, a dtype or a list of ints
    outputs  op indices whose results leave the region (read outside it, or returned)
    orders   per output, its dims from the largest stride to the smallest: outputs are
             allocated dense in that order, so they have the strides the graph had before
    reduce   how many trailing dims the region's reductions reduce (0: pointwise)

The key is the region as canonical JSON text. It is what the graph's fxc::fused_region node
carries, so any process (a loaded dump, a subprocess test) rebuilds the region from the graph
alone; nothing but registry ops is ever resolved from it. Kernels are cached on the key plus
the input dtypes and broadcast pattern (cache.py), never on tensor values.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, NamedTuple

import torch

from . import registry

FORMAT = 1


class In(NamedTuple):
    i: int


class Val(NamedTuple):
    j: int


_DTYPE_NAMES = {str(d).replace("torch.", ""): d for d in registry.DTYPES}


@dataclasses.dataclass
class Region:
    ops: list[tuple[Any, tuple, dict]]
    n_inputs: int
    outputs: list[int]
    orders: list[list[int]]
    reduce: int = 0

    @property
    def kind(self) -> str:
        return "row" if self.reduce else "pointwise"

    # -- the key -------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        if not hasattr(self, "_key"):
            doc = {"fxc_region": FORMAT, "inputs": self.n_inputs, "reduce": self.reduce,
                   "outputs": self.outputs, "orders": self.orders,
                   "ops": [[_op_name(t), _enc(list(a)), _enc(k)] for t, a, k in self.ops]}
            self._key = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return self._key

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()[:12]

    @classmethod
    def from_key(cls, key: str) -> "Region":
        doc = json.loads(key)
        if doc.get("fxc_region") != FORMAT:
            raise ValueError(f"not an fxc region key of format {FORMAT}: {key[:80]!r}")
        ops = [(_resolve(name), tuple(_dec(a)), _dec(k)) for name, a, k in doc["ops"]]
        r = cls(ops, doc["inputs"], list(doc["outputs"]), [list(o) for o in doc["orders"]],
                doc["reduce"])
        r._key = key
        return r

    # -- running the ATen program (the reference, and meta propagation) -----------------------
    def run_ops(self, inputs: list[torch.Tensor]) -> list[Any]:
        """Every op's result, computed by the ATen ops themselves."""
        vals: list[Any] = []

        def sub(a):
            if isinstance(a, In):
                return inputs[a.i]
            if isinstance(a, Val):
                return vals[a.j]
            if isinstance(a, list):
                return [sub(x) for x in a]
            return a

        for target, args, kwargs in self.ops:
            vals.append(target(*[sub(a) for a in args], **{k: sub(v) for k, v in kwargs.items()}))
        return vals

    def reference(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        vals = self.run_ops(inputs)
        outs = []
        for j, order in zip(self.outputs, self.orders):
            v, want = vals[j], dense_strides(vals[j].shape, order)
            if not same_strides(v, want):
                v = empty_in_order(v.shape, order, v.dtype, v.device).copy_(v)
            elif list(v.stride()) != want:  # differs in size-1 dims only: restate them
                v = v.as_strided(v.shape, want)
            outs.append(v)
        return outs

    def empty_outputs(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Output buffers (shape, dtype, layout) for `inputs`: the ops run on meta tensors once
        per input signature (a call then costs a dict lookup, not a meta execution)."""
        cache = self.__dict__.setdefault("_out_specs", {})
        sig = tuple((tuple(t.shape), tuple(t.stride()), t.dtype) for t in inputs)
        static = all(isinstance(n, int) for one in sig for n in (*one[0], *one[1]))
        specs = cache.get(sig) if static else None
        if specs is None:
            specs = [(tuple(m.shape), m.dtype) for m in self.output_metas(inputs)]
            if static:
                cache[sig] = specs
        dev = inputs[0].device if inputs else torch.device("cpu")
        return [empty_in_order(shape, o, dt, dev) for (shape, dt), o in zip(specs, self.orders)]

    def metas(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every op's result as a meta tensor (shape and dtype), from `inputs`' metadata."""
        fake = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
                for t in inputs]
        return self.run_ops(fake)

    def output_metas(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        vals = self.metas(inputs)
        return [vals[j] for j in self.outputs]


def _op_name(t) -> str:
    return f"{t.namespace}.{t._opname}.{t._overloadname}"


def _resolve(name: str):
    ns, op, overload = name.split(".")
    target = getattr(getattr(getattr(torch.ops, ns), op), overload)
    if registry.lookup(target) is None:
        raise ValueError(f"{name} is not an op generated kernels support")
    return target


def _enc(a):
    if isinstance(a, In):
        return {"$in": a.i}
    if isinstance(a, Val):
        return {"$v": a.j}
    if isinstance(a, torch.dtype):
        return {"$dtype": str(a).replace("torch.", "")}
    if isinstance(a, torch.memory_format) and a in registry.MEMORY_FORMATS:
        return {"$memory_format": registry.MEMORY_FORMATS[a]}
    if isinstance(a, (list, tuple)):
        return [_enc(x) for x in a]
    if isinstance(a, dict):
        return {k: _enc(v) for k, v in a.items()}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    raise TypeError(f"a region argument of type {type(a).__name__} has no key form")


def _dec(a):
    if isinstance(a, dict):
        if set(a) == {"$in"}:
            return In(a["$in"])
        if set(a) == {"$v"}:
            return Val(a["$v"])
        if set(a) == {"$dtype"}:
            return _DTYPE_NAMES[a["$dtype"]]
        if set(a) == {"$memory_format"}:
            return getattr(torch, a["$memory_format"])
        return {k: _dec(v) for k, v in a.items()}
    if isinstance(a, list):
        return [_dec(x) for x in a]
    return a


# -- layouts -------------------------------------------------------------------------------------

def dim_order(t: torch.Tensor) -> list[int]:
    """Dims from the largest stride to the smallest (ties: the dims' own order)."""
    if t.is_contiguous():
        return list(range(t.dim()))
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))


def dense_strides(shape, order: list[int]) -> list[int]:
    strides, acc = [0] * len(shape), 1
    for d in reversed(order):
        strides[d] = acc
        acc *= max(int(shape[d]), 1)
    return strides


def same_strides(t: torch.Tensor, strides) -> bool:
    return all(s == w for n, s, w in zip(t.shape, t.stride(), strides) if n > 1)


def empty_in_order(shape, order, dtype, device) -> torch.Tensor:
    return torch.empty_strided(tuple(shape), tuple(dense_strides(shape, order)), dtype=dtype,
                               device=device)


_CACHE: dict[str, Region] = {}


def get(key: str) -> Region:
    """The region a key names (parsed once per process)."""
    r = _CACHE.get(key)
    if r is None:
        r = _CACHE[key] = Region.from_key(key)
    return r

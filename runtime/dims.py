"""Output shapes of an ONNX model with symbolic dims, per call, from the inputs' sizes.

The lowering (lowering/onnx_export.py `onnx_dims`) names every symbolic input axis by its
symbol (`s33`) and every symbolic output axis by its expression over them (`s33`, `2*s33`).
An engine that allocates its outputs before running (ONNX Runtime's IO binding, TensorRT)
binds the symbols from this call's inputs and evaluates the output expressions; the result
is cached per tuple of symbol values.

Invariant: `shapes(inputs)` is the shape ONNX Runtime computes for every output, provided
the inputs passed the input checker (equal symbols agree; runtime/inputs.py).
"""
from __future__ import annotations

import re
from typing import Callable

import onnx

_NAME = re.compile(r"^[A-Za-z_]\w*$")


class SymbolicDims:
    """Which input axis carries each symbol, and each output axis as a function of them."""

    def __init__(self, model: onnx.ModelProto):
        import sympy
        self.where: dict[str, tuple[int, int]] = {}
        for i, vi in enumerate(model.graph.input):
            for axis, d in enumerate(vi.type.tensor_type.shape.dim):
                if d.dim_param and _NAME.match(d.dim_param):
                    self.where.setdefault(d.dim_param, (i, axis))
        self.symbols = sorted(self.where)
        syms = [sympy.Symbol(n) for n in self.symbols]
        self.outputs: list[list[int | Callable]] = []
        for vi in model.graph.output:
            dims = []
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param:
                    expr = sympy.sympify(d.dim_param)
                    unknown = {str(s) for s in expr.free_symbols} - set(self.symbols)
                    if unknown:
                        raise ValueError(f"output {vi.name}: dim {d.dim_param} depends on "
                                         f"{sorted(unknown)}, which no input carries")
                    dims.append(sympy.lambdify(syms, expr, "math"))
                else:
                    dims.append(d.dim_value)
            self.outputs.append(dims)
        self._cache: dict[tuple, list[tuple[int, ...]]] = {}

    @staticmethod
    def of(model: onnx.ModelProto) -> "SymbolicDims | None":
        """None for a model with no symbolic dims but dynamic batch's 'batch' (handled apart)."""
        dims = [d for vi in list(model.graph.input) + list(model.graph.output)
                for d in vi.type.tensor_type.shape.dim if d.dim_param and d.dim_param != "batch"]
        return SymbolicDims(model) if dims else None

    def shapes(self, inputs) -> list[tuple[int, ...]]:
        key = tuple(int(inputs[i].shape[a]) for i, a in (self.where[s] for s in self.symbols))
        found = self._cache.get(key)
        if found is None:
            found = [tuple(int(d(*key)) if callable(d) else d for d in dims)
                     for dims in self.outputs]
            if len(self._cache) < 4096:  # bounded: a server sees a few sizes, not millions
                self._cache[key] = found
        return found

"""Dynamic shapes (DESIGN decision 11): ranges in torch.export's `dynamic_shapes` format.

The user writes what torch.export takes: per input `{axis: torch.export.Dim("name", min=...,
max=...)}` (or `Dim.AUTO`, `Dim.DYNAMIC`), as a tuple by position or a dict keyed by
`forward`'s parameter names.

Export turns every free axis into a symbol (`s33`) with a value range; `input_dims` reads
them back off the captured graph's placeholders, so the compiled module knows, per tensor
input and axis, either a fixed size (None) or a `DimRange`. Axes that share a symbol must be
equal at run time, and an axis of a derived Dim (`2 * seq`, `seq + 1`: export allows increasing
linear forms of one Dim) must be that form of the value its root takes elsewhere
(runtime/inputs.py checks all of it before any kernel runs).

Lower bounds are torch.export's own: a named `Dim("b", max=N)` has min 0 (Dim's default), and
export's range_constraints say [0, N]; Dim hints (`Dim.AUTO`, `Dim.DYNAMIC(max=N)`) get [2, N],
the range export traced them for. Either way the range the checker enforces is the one
range_constraints records, never a guess of fxc's.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .errors import FxcOptionError


@dataclasses.dataclass(frozen=True)
class DimRange:
    """One symbolic axis: `symbol` is export's expression for it (axes with the same symbol
    are one size), `name` the user's Dim name where known, sizes low..high inclusive
    (high None: unbounded)."""

    symbol: str
    name: str
    low: int
    high: int | None

    def contains(self, n: int) -> bool:
        return n >= self.low and (self.high is None or n <= self.high)

    def describe(self) -> str:
        return f"{self.low}..{self.high}" if self.high is not None else f">= {self.low}"

    def to_json(self) -> dict:
        return {"symbol": self.symbol, "name": self.name, "low": self.low, "high": self.high}

    def form(self) -> tuple[str, int, int] | None:
        """(root symbol, a, b) when this axis is a*root + b (a >= 1), else None."""
        return linear_form(self.symbol)

    def root_value(self, n: int) -> int | None:
        """The root symbol's value that makes this axis size n; None if no integer does (an
        odd size for `2*s`). An axis of no linear form is its own root (n itself)."""
        form = self.form()
        if form is None:
            return n
        _, a, b = form
        return (n - b) // a if (n - b) % a == 0 else None


@functools.lru_cache(maxsize=1024)
def linear_form(symbol: str) -> tuple[str, int, int] | None:
    """`symbol` (an axis' size expression as export writes it: 's77', '2*s77', 's77 + 1') as
    (root symbol, a, b) with size = a*root + b and a >= 1; None for any other expression."""
    import sympy
    try:
        expr = sympy.sympify(symbol)
    except (sympy.SympifyError, TypeError, ValueError, SyntaxError):
        return None
    free = sorted(expr.free_symbols, key=str)
    if len(free) != 1:
        return None
    root = free[0]
    try:
        poly = sympy.Poly(expr, root)
    except sympy.PolynomialError:
        return None
    if poly.degree() != 1 or not all(c.is_Integer for c in poly.all_coeffs()):
        return None
    a, b = (int(c) for c in poly.all_coeffs())
    return (str(root), a, b) if a >= 1 else None


def is_symbolic(gm: fx.GraphModule) -> bool:
    """Whether any placeholder of `gm` has a symbolic size (the graph runs a range of shapes)."""
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and not all(isinstance(s, int) for s in val.shape):
                return True
    return False


def for_export(model, args: tuple, kwargs: dict, dynamic_shapes) -> tuple[Any, dict[tuple, str]]:
    """(what torch.export.export takes as `dynamic_shapes`, {(tensor leaf index, axis): Dim
    name}). A tuple given for a `forward(*args)` model is regrouped the way export wants it
    (the varargs as one tuple); a dict is keyed by parameter name, as export's is."""
    if dynamic_shapes is None:
        return None, {}
    per_arg, per_kw = _per_input(model, args, kwargs, dynamic_shapes)
    names_of = _leaf_dim_names((tuple(args), kwargs), (tuple(per_arg), per_kw))
    return _export_layout(model, args, per_arg, per_kw), names_of


def _per_input(model, args: tuple, kwargs: dict, dynamic_shapes) -> tuple[list, dict]:
    """The user's dynamic_shapes as (one entry per positional arg, {kwarg: entry})."""
    names = _param_names(model)
    if isinstance(dynamic_shapes, dict):
        unknown = set(dynamic_shapes) - set(names or ()) - set(kwargs)
        if names is not None and unknown:
            raise FxcOptionError(f"dynamic_shapes: {sorted(unknown)} name no parameter of "
                                 f"forward (parameters: {names})")
        return ([dynamic_shapes.get(n) for n in (names or [])[:len(args)]],
                {k: dynamic_shapes.get(k) for k in kwargs})
    if isinstance(dynamic_shapes, (tuple, list)):
        if len(dynamic_shapes) != len(args) + len(kwargs):
            raise FxcOptionError(f"dynamic_shapes: {len(dynamic_shapes)} entries for "
                                 f"{len(args) + len(kwargs)} inputs; give one per input "
                                 f"(None for an input with no dynamic axis)")
        return list(dynamic_shapes[:len(args)]), dict(zip(kwargs, dynamic_shapes[len(args):]))
    raise FxcOptionError(f"dynamic_shapes={type(dynamic_shapes).__name__}: expected a tuple "
                         f"(one entry per input) or a dict keyed by forward's parameters")


# dynamic_batch=True: batch sizes 1..max(DEFAULT_MAX_BATCH, the example's batch). The max is
# what the memory plan sizes the arena for and TensorRT's profile ends at; dynamic_batch=N
# (an int >= 2) declares 1..N instead.
DEFAULT_MAX_BATCH = 32


def with_batch(model, args: tuple, kwargs: dict, dynamic_shapes, dynamic_batch) -> tuple:
    """`dynamic_batch` as torch.export's format: axis 0 of every tensor input of rank >= 1 is
    one `Dim("batch", min=1, max=...)`, merged with the user's `dynamic_shapes` (which may
    declare other axes, never axis 0: that is FxcOptionError naming both keywords). The
    result is a tuple, one entry per input, as `for_export` takes it."""
    per_arg, per_kw = (_per_input(model, args, kwargs, dynamic_shapes)
                       if dynamic_shapes is not None else ([None] * len(args), dict.fromkeys(kwargs)))
    names = (_param_names(model) or [])[:len(args)]
    inputs = [(names[i] if i < len(names) else f"args[{i}]", x, spec)
              for i, (x, spec) in enumerate(zip(args, per_arg))]
    inputs += [(k, kwargs[k], per_kw[k]) for k in kwargs]
    sizes: dict[str, int] = {}  # input leaf -> its example batch
    for name, x, _ in inputs:
        _batch_sizes(name, x, sizes)
    if not sizes:
        raise FxcOptionError("dynamic_batch=True: no tensor input has an axis 0 to make the batch")
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{k}: {n}" for k, n in sizes.items())
        raise FxcOptionError(f"dynamic_batch=True makes axis 0 of every tensor input one batch, "
                             f"but the example inputs disagree on it ({shown}); declare the "
                             f"batched axes with dynamic_shapes= instead")
    example = next(iter(sizes.values()))
    if example < 2:
        raise FxcOptionError(f"dynamic_batch=True: the example inputs have batch {example}, and "
                             f"torch.export fixes an axis whose example size is 0 or 1; give "
                             f"examples with batch >= 2 (the module then runs every batch in range)")
    high = max(DEFAULT_MAX_BATCH, example) if dynamic_batch is True else int(dynamic_batch)
    if high < example:
        raise FxcOptionError(f"dynamic_batch={dynamic_batch}: the largest batch is below the "
                             f"example inputs' batch ({example})")
    batch = torch.export.Dim("batch", min=1, max=high)
    return tuple(_add_batch(name, x, spec, batch) for name, x, spec in inputs)


def _batch_sizes(name: str, x, sizes: dict) -> None:
    if isinstance(x, torch.Tensor):
        if x.dim():
            sizes[name] = int(x.shape[0])
    elif isinstance(x, (tuple, list)):
        for i, y in enumerate(x):
            _batch_sizes(f"{name}[{i}]", y, sizes)
    elif isinstance(x, dict):
        for k, y in x.items():
            _batch_sizes(f"{name}[{k!r}]", y, sizes)


def _add_batch(name: str, x, spec, batch):
    """`spec` (this input's part of dynamic_shapes) with axis 0 of each tensor leaf `batch`."""
    if isinstance(x, torch.Tensor):
        if not x.dim():
            return spec
        if spec is None:
            return {0: batch}
        axes = dict(spec) if isinstance(spec, dict) else dict(enumerate(spec))
        if axes.get(0) is not None:
            raise FxcOptionError(f"dynamic_batch=True and dynamic_shapes= both declare axis 0 of "
                                 f"input '{name}' ({axes[0]!r}): dynamic_batch makes axis 0 of "
                                 f"every tensor input the batch; drop one of the two, or declare "
                                 f"the other axes only in dynamic_shapes")
        axes[0] = batch
        return axes
    if isinstance(x, (tuple, list)):
        specs = spec if isinstance(spec, (tuple, list)) else [None] * len(x)
        out = [_add_batch(f"{name}[{i}]", y, s, batch) for i, (y, s) in enumerate(zip(x, specs))]
        return out if isinstance(x, list) else tuple(out)
    if isinstance(x, dict):
        specs = spec if isinstance(spec, dict) else {}
        return {k: _add_batch(f"{name}[{k!r}]", y, specs.get(k), batch) for k, y in x.items()}
    if any(isinstance(y, torch.Tensor) for y in pytree.tree_leaves(x)):
        raise FxcOptionError(f"dynamic_batch=True: input '{name}' is a {type(x).__name__} holding "
                             f"tensors; declare its batch axes with dynamic_shapes= instead")
    return spec


def _param_names(model) -> list[str] | None:
    try:
        return list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return None


def _export_layout(model, args, per_arg: list, per_kw: dict):
    """torch.export matches `dynamic_shapes` against forward's bound arguments: varargs are
    one entry (a tuple); everything else one entry per parameter, in order."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return tuple(per_arg) + tuple(per_kw.values())
    out, i = {}, 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            out[p.name] = tuple(per_arg[i:])
            i = len(per_arg)
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and i < len(per_arg):
            out[p.name] = per_arg[i]
            i += 1
        elif p.kind == p.VAR_KEYWORD:
            out.update({k: v for k, v in per_kw.items() if k not in out})
        elif p.name in per_kw:
            out[p.name] = per_kw[p.name]
    return out


def _leaf_dim_names(inputs, shapes) -> dict[tuple[int, int], str]:
    """{(index among tensor leaves, axis): Dim name} for every named Dim the user gave."""
    found: dict[tuple[int, int], str] = {}
    counter = [0]

    def walk(x, spec):
        if isinstance(x, torch.Tensor):
            k = counter[0]
            counter[0] += 1
            items = spec.items() if isinstance(spec, dict) else enumerate(spec or ())
            for axis, dim in items:
                name = getattr(dim, "__name__", None)
                if name and not isinstance(dim, type(torch.export.Dim.AUTO)):
                    found[(k, int(axis))] = name
            return
        if isinstance(x, (tuple, list)):
            for i, y in enumerate(x):
                walk(y, spec[i] if isinstance(spec, (tuple, list)) and i < len(spec) else None)
        elif isinstance(x, dict):
            for key, y in x.items():
                walk(y, spec.get(key) if isinstance(spec, dict) else None)
        else:  # dataclasses, namedtuples and other pytree nodes: no per-leaf names
            for y in pytree.tree_leaves(x):
                if isinstance(y, torch.Tensor):
                    counter[0] += 1

    walk(inputs, shapes)
    return found


def input_dims(gm: fx.GraphModule, ranges: dict, names: dict[tuple[int, int], str]
               ) -> list[tuple[DimRange | None, ...]]:
    """Per placeholder: per axis, None (a fixed size) or the DimRange export gave it."""
    out = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for k, node in enumerate(placeholders):
        val = node.meta.get("val")
        shape = val.shape if isinstance(val, torch.Tensor) else ()
        out.append(tuple(None if isinstance(s, int) else _range(s, ranges, names.get((k, a)))
                         for a, s in enumerate(shape)))
    return out


def input_symbols(gm: fx.GraphModule) -> dict[str, tuple[int, int, int, int]]:
    """root symbol -> (placeholder index, axis, a, b): the first input axis whose size is
    a*root + b, so a call's inputs give each root's value as (size - b) // a."""
    where: dict[str, tuple[int, int, int, int]] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for k, node in enumerate(placeholders):
        val = node.meta.get("val")
        for axis, size in enumerate(val.shape if isinstance(val, torch.Tensor) else ()):
            form = linear_form(str(size.node.expr)) if isinstance(size, torch.SymInt) else None
            if form is not None and form[0] not in where:
                where[form[0]] = (k, axis, form[1], form[2])
    return where


def root_ranges(range_constraints: dict) -> dict[str, tuple[int, int | None]]:
    """symbol name -> (low, high) of export's range_constraints, for plain symbols only (a
    derived Dim's root is there even when no input axis is the root itself)."""
    out = {}
    for expr, vr in range_constraints.items():
        if getattr(expr, "is_Symbol", False):
            low = range_end(vr.lower)
            out[str(expr)] = (low if low is not None else 0, range_end(vr.upper))
    return out


def int_function(exprs: list, names: list[str]):
    """`exprs` (sympy, over the symbols named `names`) as one Python function of those symbols'
    values returning their ints, printed once by torch's own PythonPrinter (FloorDiv as //,
    Max as max): a call costs about a microsecond, where sympy's subs costs tens."""
    import sympy
    from torch.utils._sympy.printers import PythonPrinter
    symbols = [sympy.Symbol(n, integer=True) for n in names]
    rename = {s: sympy.Symbol(str(s), integer=True) for e in exprs for s in e.free_symbols}
    exprs = [e.xreplace(rename) for e in exprs]  # one Symbol per name, whatever its assumptions
    return sympy.lambdify(symbols, exprs, modules=[{"max": max, "min": min}, "math"],
                          printer=PythonPrinter())


def _range(size: torch.SymInt, ranges: dict, name: str | None) -> DimRange:
    from torch.utils._sympy.value_ranges import bound_sympy
    expr = size.node.expr
    vr = ranges.get(expr) if expr in ranges else bound_sympy(expr, ranges)
    low, high = range_end(vr.lower), range_end(vr.upper)
    return DimRange(str(expr), name or str(expr), low if low is not None else 0, high)


def range_end(bound) -> int | None:
    """A range end as an int; None for an unbounded end (export's int_oo)."""
    if getattr(bound, "is_finite", True) is False or getattr(bound, "is_integer", True) is False:
        return None
    try:
        return int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None

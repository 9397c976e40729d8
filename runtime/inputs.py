"""Input checking: every call's inputs against the specs captured at compile time.

Invariant: `flatten` returns the tensor leaves in graph-placeholder order, or raises
FxcInputError (naming the input, the axis, what was expected and what came) before any
kernel runs. Shapes must match the compile shapes exactly, except (1) an axis compiled as a
range (`InputSpec.dims`, from `dynamic_shapes=`): any size in its range that agrees with every
other axis of the same root symbol (equal for the same Dim; a*root + b for a derived one);
(2) when the engine runs a dynamic batch (`DynamicBatch`: artifacts saved before
dynamic_batch=True became a dynamic_shapes shorthand), dim 0 of the inputs the lowered model
made symbolic: any size in the engine's range, the same for all.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.utils._pytree as pytree

from fxc.capture import CallLayout, InputSpec
from fxc.errors import FxcInputError


@dataclasses.dataclass(frozen=True)
class DynamicBatch:
    """What an engine built for a dynamic batch takes: dim 0 of the tensor inputs marked in
    `inputs` (placeholder order) is one batch size in low..high (high None: no bound)."""

    inputs: tuple[bool, ...]
    low: int = 1
    high: int | None = None

    def describe(self) -> str:
        return f"{self.low}..{self.high}" if self.high is not None else f">= {self.low}"


class InputChecker:
    def __init__(self, specs: list[InputSpec], in_spec: pytree.TreeSpec,
                 layout: CallLayout | None = None, batch: DynamicBatch | None = None):
        self.specs, self.in_spec, self.layout, self.batch = specs, in_spec, layout, batch
        self.tensor_specs = [s for s in specs if s.is_tensor]
        # Per spec: dim 0 is the engine's dynamic batch (a rank-0 input has no dim 0 to free).
        marks = iter(batch.inputs if batch is not None else ())
        self.batched = [s.is_tensor and next(marks, False) and len(s.shape) > 0 for s in specs]
        # Fast path: forward(t0, t1, ...) with tensors only, no kwargs, no nesting.
        self.flat_positional = all(s.is_tensor for s in specs) and in_spec == pytree.tree_flatten(
            (tuple(range(len(specs))), {}))[1]

    def flatten(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        if self.flat_positional and not kwargs:
            if len(args) != len(self.specs):
                raise FxcInputError(self._count_message(len(args)))
            leaves = list(args)
        else:
            leaves, spec = pytree.tree_flatten((args, kwargs))
            if spec != self.in_spec and self.layout is not None:
                # Same arguments passed another way (positional vs keyword): rearrange.
                canon = self.layout.canonical(args, kwargs)
                if canon is not None:
                    leaves, spec = pytree.tree_flatten(canon)
            if spec != self.in_spec:
                raise FxcInputError(self._structure_message(leaves, spec))
        tensors, first = [], None  # first: (name, size) of the first batched input
        bound: dict[str, tuple] = {}  # root symbol -> its first axis seen (_check_relation)
        for spec, leaf, batched in zip(self.specs, leaves, self.batched):
            if spec.is_tensor and spec.dynamic:
                _check_ranged(spec, leaf, bound)
                tensors.append(leaf)
            elif spec.is_tensor:
                _check_tensor(spec, leaf, self.batch if batched else None)
                if batched:
                    first = first or (spec.name, leaf.shape[0])
                    _check_same_batch(spec, leaf, first)
                tensors.append(leaf)
            elif leaf != spec.value:
                raise FxcInputError(f"input '{spec.name}': compiled for the constant "
                                    f"{spec.value!r}, got {leaf!r} (recompile for another value)")
        return tensors

    def _names(self) -> str:
        return ", ".join(s.name for s in self.specs)

    def _count_message(self, got: int) -> str:
        return f"expected {len(self.specs)} input(s) ({self._names()}), got {got}"

    def _structure_message(self, leaves, spec) -> str:
        if len(leaves) != len(self.specs):
            return self._count_message(len(leaves))
        return (f"inputs have another structure than at compile time: expected "
                f"{self.in_spec}, got {spec}")


def _check_tensor(spec: InputSpec, x, batch: DynamicBatch | None = None) -> None:
    """`batch`: set when dim 0 of this input is the engine's dynamic batch."""
    if not isinstance(x, torch.Tensor):
        raise FxcInputError(f"input '{spec.name}': expected a tensor, got {type(x).__name__}")
    if x.dtype != spec.dtype:
        raise FxcInputError(f"input '{spec.name}': expected dtype {spec.dtype}, got {x.dtype}")
    if x.dim() != len(spec.shape):
        shown = _shape_text(spec.shape, batch is not None)
        raise FxcInputError(f"input '{spec.name}': expected rank {len(spec.shape)} "
                            f"(shape {shown}), got rank {x.dim()} (shape {tuple(x.shape)})")
    expected = tuple(spec.shape)
    if batch is not None:
        _check_batch_size(spec, x, batch)
        expected = (x.shape[0],) + expected[1:]  # dim 0 is free; the rest must match
    if tuple(x.shape) != expected:
        axis = next(i for i, (a, b) in enumerate(zip(x.shape, expected)) if a != b)
        shown = _shape_text(spec.shape, batch is not None)
        hint = "" if batch is not None else (
            "; to accept a range of sizes, compile with dynamic_shapes= (torch.export's format: "
            f"{{{axis}: torch.export.Dim('name', min=..., max=...)}} for this input) or, for "
            "dim 0 of every input, dynamic_batch=True")
        raise FxcInputError(f"input '{spec.name}': axis {axis} expected size {expected[axis]}, "
                            f"got {x.shape[axis]} (expected shape {shown}, got "
                            f"{tuple(x.shape)}){hint}")
    if x.device != spec.device:
        raise FxcInputError(f"input '{spec.name}': expected device {spec.device}, got {x.device}")


def _check_ranged(spec: InputSpec, x, bound: dict) -> None:
    """An input with ranged axes: fixed axes exact, ranged ones inside their range and agreeing
    with every other axis of the same root symbol (`bound`: root -> (input, axis, size, root
    value, DimRange) of the first axis seen, filled as inputs are checked)."""
    if not isinstance(x, torch.Tensor):
        raise FxcInputError(f"input '{spec.name}': expected a tensor, got {type(x).__name__}")
    if x.dtype != spec.dtype:
        raise FxcInputError(f"input '{spec.name}': expected dtype {spec.dtype}, got {x.dtype}")
    shown = _ranged_text(spec)
    if x.dim() != len(spec.shape):
        raise FxcInputError(f"input '{spec.name}': expected rank {len(spec.shape)} "
                            f"(shape {shown}), got rank {x.dim()} (shape {tuple(x.shape)})")
    for axis, (n, want, dim) in enumerate(zip(x.shape, spec.shape, spec.dims)):
        if dim is None and n != want:
            raise FxcInputError(f"input '{spec.name}': axis {axis} expected size {want}, got "
                                f"{n} (expected shape {shown}, got {tuple(x.shape)})")
        if dim is None:
            continue
        if not dim.contains(n):
            raise FxcInputError(f"input '{spec.name}': axis {axis} ({dim.name}) expected a size "
                                f"in {dim.describe()}, got {n} (shape {tuple(x.shape)}); the "
                                f"module was compiled for that range")
        _check_relation(spec.name, axis, n, dim, bound)
    if x.device != spec.device:
        raise FxcInputError(f"input '{spec.name}': expected device {spec.device}, got {x.device}")


def _check_relation(name: str, axis: int, n: int, dim, bound: dict) -> None:
    """Axes of one Dim (or of forms of it: `2*s`, `s + 1`) must agree on its value."""
    form = dim.form()
    root = form[0] if form is not None else dim.symbol
    value = dim.root_value(n)
    if value is None:
        raise FxcInputError(f"input '{name}': axis {axis} ({dim.name}) expected a size of the "
                            f"form {dim.name} (in {dim.describe()}), got {n}")
    first = bound.setdefault(root, (name, axis, n, value, dim))
    o_name, o_axis, o_n, o_value, o_dim = first
    if o_value == value:
        return
    if dim.symbol == o_dim.symbol:
        raise FxcInputError(f"input '{name}': axis {axis} ({dim.name}) must equal axis {o_axis} "
                            f"of input '{o_name}' (size {o_n}), got {n}")
    _, a, b = form
    if o_dim.form() == (root, 1, 0):  # the other axis is the root Dim itself
        told = f"is {o_dim.name} = {o_n}"
    else:
        label = dim.name if form == (root, 1, 0) else root
        told = f"({o_dim.name}) is {o_n}, so {label} = {o_value}"
    raise FxcInputError(f"input '{name}': axis {axis} ({dim.name}) expected size "
                        f"{a * o_value + b}, got {n} (axis {o_axis} of input '{o_name}' {told})")


def _ranged_text(spec: InputSpec) -> str:
    dims = [str(n) if d is None else f"{d.name}: {d.describe()}" for n, d in zip(spec.shape, spec.dims)]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _check_batch_size(spec: InputSpec, x: torch.Tensor, batch: DynamicBatch) -> None:
    n = x.shape[0]
    if n < batch.low or (batch.high is not None and n > batch.high):
        raise FxcInputError(f"input '{spec.name}': axis 0 is the dynamic batch, expected a size "
                            f"{batch.describe()}, got {n} (shape {tuple(x.shape)})")


def _check_same_batch(spec: InputSpec, x: torch.Tensor, first: tuple[str, int]) -> None:
    """The lowered model has one batch dim: every batched input must agree on it."""
    name, n = first
    if x.shape[0] != n:
        raise FxcInputError(f"input '{spec.name}': axis 0 is the dynamic batch, expected size "
                            f"{n} (the batch of input '{name}'), got {x.shape[0]}")


def _shape_text(shape, batched: bool) -> str:
    """The expected shape as the user should read it: dim 0 shown as 'batch' when free."""
    dims = [str(d) for d in shape]
    if batched and dims:
        dims[0] = "batch"
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def bindable(x: torch.Tensor) -> torch.Tensor:
    """`x` as dense memory holding its values, for a runtime that reads raw pointers (ONNX
    Runtime, TensorRT): a negated or conjugated view (x.conj().imag, torch._neg_view) keeps
    its sign in a bit that data_ptr() does not see, so it is materialized first."""
    return x.resolve_neg().resolve_conj().contiguous()

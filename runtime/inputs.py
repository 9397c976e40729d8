"""Input checking: every call's inputs against the specs captured at compile time.

Invariant: `flatten` returns the tensor leaves in graph-placeholder order, or raises
FxcInputError (naming the input, the axis, what was expected and what came) before any
kernel runs.
"""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree

from fxc.capture import CallLayout, InputSpec
from fxc.errors import FxcInputError


class InputChecker:
    def __init__(self, specs: list[InputSpec], in_spec: pytree.TreeSpec,
                 layout: CallLayout | None = None):
        self.specs, self.in_spec, self.layout = specs, in_spec, layout
        self.tensor_specs = [s for s in specs if s.is_tensor]
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
        tensors = []
        for spec, leaf in zip(self.specs, leaves):
            if spec.is_tensor:
                _check_tensor(spec, leaf)
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


def _check_tensor(spec: InputSpec, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise FxcInputError(f"input '{spec.name}': expected a tensor, got {type(x).__name__}")
    if x.dtype != spec.dtype:
        raise FxcInputError(f"input '{spec.name}': expected dtype {spec.dtype}, got {x.dtype}")
    if x.dim() != len(spec.shape):
        raise FxcInputError(f"input '{spec.name}': expected rank {len(spec.shape)} "
                            f"(shape {tuple(spec.shape)}), got rank {x.dim()} (shape {tuple(x.shape)})")
    if x.shape != spec.shape:
        axis = next(i for i, (a, b) in enumerate(zip(x.shape, spec.shape)) if a != b)
        raise FxcInputError(f"input '{spec.name}': axis {axis} expected size {spec.shape[axis]}, "
                            f"got {x.shape[axis]} (expected shape {tuple(spec.shape)}, got "
                            f"{tuple(x.shape)})")
    if x.device != spec.device:
        raise FxcInputError(f"input '{spec.name}': expected device {spec.device}, got {x.device}")

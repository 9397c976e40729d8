"""The converter registry: one converter per exact ATen (or fxc) overload.

Trivial ops are table rows (`UNARY`, `BINARY`, `COMPARE` in ops_elementwise.py); every other
op has a function registered with `@converter(aten.x.overload)` whose docstring is the op's
ATen signature and whose body is a few lines of ONNX ops. A converter returns the ONNX value
name(s) of the node, or a `Refuse(reason)` for a case it does not cover; refusals are
counted as unsupported ops, with the reason, when the whole graph is checked.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from .builder import Builder

ConverterFn = Callable[[Builder, "torch.fx.Node"], Any]


@dataclasses.dataclass(frozen=True)
class Refuse:
    """A converter matched the op but not this case (dtype, argument value, shape)."""

    reason: str

    def __bool__(self) -> bool:
        return False


CONVERTERS: dict[Any, ConverterFn] = {}


def converter(*targets) -> Callable[[ConverterFn], ConverterFn]:
    """Register `fn` as the converter of each of `targets` (exact OpOverloads)."""

    def register(fn: ConverterFn) -> ConverterFn:
        for t in targets:
            if t in CONVERTERS:
                raise ValueError(f"two converters for {t}: {CONVERTERS[t].__name__} and {fn.__name__}")
            CONVERTERS[t] = fn
        return fn

    return register


def lookup(target) -> ConverterFn | None:
    _load()
    return CONVERTERS.get(target)


def supported_targets() -> list:
    _load()
    return list(CONVERTERS)


_loaded = False


def _load() -> None:
    """Import the converter modules once (they register themselves)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from . import ops_elementwise, ops_fxc, ops_nn, ops_reduce, ops_shape  # noqa: F401

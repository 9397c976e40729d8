"""`guard=True` (or FXC_GUARD=1): every call's outputs are checked for inf/NaN, and a call
that produced them is traced back to the first graph node that made them.

The check is one sum per floating output (inf/NaN anywhere makes it non-finite; a bad sum is
then confirmed element-wise, since finite values can sum past float32's range) and one host
sync per call: that is its cost, measured in tests/test_guard.py and the README. When it
fires, the call's inputs are replayed:

1. through the user's own model, in its own precision: if eager gives inf/NaN too, the model
   does on these inputs (nothing the compiler did), and the error says so;
2. else through the compiled graph node by node (an fx Interpreter over the optimized
   graph, fused ops run by their own kernels): the first node whose output is not finite
   while every input it reads is finite is where the values went bad (in FP16, usually an
   overflow past 65504 of a value the calibration inputs did not reach). The error names
   the node, its op, its dtype and the user's source line.

Invariant: a guarded call returns exactly what an unguarded one does, or raises
FxcNumericsError; nothing is recomputed unless the outputs are bad.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from . import ir
from .errors import FxcError


class FxcNumericsError(FxcError, FloatingPointError):
    """A guarded call produced inf or NaN; says which outputs, and where they first appeared."""

    def __init__(self, message: str, *, outputs: list[int], node: str | None = None,
                 source: str | None = None, eager_too: bool = False):
        self.outputs, self.node, self.source, self.eager_too = outputs, node, source, eager_too
        super().__init__(message)


def enabled(option: bool | None) -> bool:
    """The compile option, else the FXC_GUARD environment variable."""
    if option is not None:
        return bool(option)
    return os.environ.get("FXC_GUARD", "") not in ("", "0", "false", "False")


def bad_outputs(flat_outputs) -> list[int]:
    """Indices of the floating outputs holding inf or NaN (one sync for all of them)."""
    idx = [i for i, t in enumerate(flat_outputs)
           if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
           and t.numel()]
    if not idx:
        return []
    # One sum per output: inf/NaN anywhere makes it non-finite. A finite tensor can sum past
    # float32's range too, so a bad sum is only a suspicion, checked element-wise below.
    sums = torch.stack([(t if t.is_floating_point() else t.abs()).sum(dtype=torch.float32)
                        for t in (flat_outputs[i] for i in idx)])
    if bool(torch.isfinite(sums).all()):  # the call's one host sync
        return []
    return [i for i in idx if not bool(torch.isfinite(flat_outputs[i]).all())]


def _finite(v: Any) -> bool:
    leaves = [t for t in pytree.tree_leaves(v) if isinstance(t, torch.Tensor)
              and (t.is_floating_point() or t.is_complex()) and t.numel()]
    return all(bool(torch.isfinite(t).all()) for t in leaves)


class _FirstBad(fx.Interpreter):
    """Runs the graph and stops at the first node that turns finite inputs into inf/NaN."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.found: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if self.found is None and n.op == "call_function" and not _finite(out):
            ins = [self.env[a] for a in n.all_input_nodes if a in self.env]
            if all(_finite(v) for v in ins):
                self.found = n
                raise _Stop
        return out


class _Stop(Exception):
    pass


def first_bad_node(gm: fx.GraphModule, flat_inputs: list) -> fx.Node | None:
    """The first node of `gm` whose output is not finite while its inputs are, or None."""
    walker = _FirstBad(gm)
    try:
        with torch.no_grad():
            walker.run(*flat_inputs)
    except _Stop:
        pass
    return walker.found


def loaded_error(bad: list[int], backend: str) -> FxcNumericsError:
    """The error for a loaded artifact's call: it keeps no graph and no model to replay, so it
    names the outputs and says how to find the node."""
    which = ", ".join(f"output {i}" for i in bad)
    return FxcNumericsError(
        f"guard: {which} of the loaded {backend} artifact holds inf/NaN. An artifact keeps no "
        f"graph to trace back: compile the model with guard=True and call it on these inputs "
        f"to name the node that made them", outputs=bad)


def diagnose(model, args: tuple, kwargs: dict, gm: fx.GraphModule, flat_inputs: list,
             bad: list[int]) -> FxcNumericsError:
    """The error for a call whose outputs `bad` are not finite (see the module docstring)."""
    which = ", ".join(f"output {i}" for i in bad)
    eager_too = False
    if model is not None:
        try:
            with torch.no_grad():
                eager_too = not _finite(model(*args, **kwargs))
        except Exception:  # noqa: BLE001 (the model may not run here: skip step 1)
            eager_too = False
    if eager_too:
        return FxcNumericsError(f"guard: {which} holds inf/NaN, and so does the model run "
                                f"eagerly on these inputs: the values come from the model, "
                                f"not from compilation", outputs=bad, eager_too=True)
    node = first_bad_node(gm, flat_inputs)
    if node is None:
        return FxcNumericsError(f"guard: {which} holds inf/NaN, but replaying the optimized "
                                f"graph node by node gave finite values (a run-time kernel, "
                                f"not the graph's math)", outputs=bad)
    val = ir.tensor_meta(node)
    dtype = str(val.dtype).replace("torch.", "") if val is not None else "?"
    src = ir.source_line(node)
    hint = (" (float16 overflows past 65504: compile with a larger fp16_overflow_threshold "
            "margin, calibration inputs that reach these values, or precision='bf16')"
            if dtype == "float16" else "")
    msg = (f"guard: {which} holds inf/NaN; eager gives finite values. First made by node "
           f"%{node.name} = {node.target} -> {dtype}, from finite inputs{hint}")
    if src:
        msg += f"\n  at {src}"
    return FxcNumericsError(msg, outputs=bad, node=node.name, source=src)

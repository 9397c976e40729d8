"""Helpers shared by the pass tests: a CPU pass context, op counts, outputs, capture."""
import torch

from fxc.capture import capture
from fxc.options import CompileOptions
from fxc.passes import PassContext


def ctx(disable=()):
    """A CPU, FP32 pass context with no example inputs (passes that need none)."""
    return PassContext(CompileOptions(device=torch.device("cpu"), disable_passes=tuple(disable)), [])


def count(gm, *targets):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target in targets)


def outputs(gm, inputs):
    """The graph's outputs on `inputs`, as a list of clones (safe to compare after a rewrite)."""
    with torch.no_grad():
        out = gm(*inputs)
    return [t.clone() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def captured(model, *inputs):
    return capture(model.eval(), inputs, {}).gm

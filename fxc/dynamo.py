"""`torch.compile(model, backend="fxc")`: a TorchDynamo backend over fxc.compile.

Registered lazily through the `torch_dynamo_backends` entry point in pyproject.toml, and
eagerly by `register()` for environments where entry points are not installed.

Dynamic shapes (issue 13): when a size changes between calls, dynamo recompiles once with
symbolic sizes: its graph then takes the symbols as SymInt inputs beside tensors whose fake
values have symbolic sizes. `symbolic_inputs` turns that into what fxc.compile takes: each
SymInt input is read off a tensor axis of the same symbol inside the graph (`sym_size`), and
every symbolic axis is exported as Dim.AUTO (export finds the range the model takes), so one
fxc compile serves the whole range and dynamo does not come back for sizes inside it. A size
dynamo lets through but the model cannot take is the checker's FxcInputError, naming the range.
"""
from __future__ import annotations

import torch
import torch.fx as fx


def fxc_backend(gm, example_inputs, **options):
    """Dynamo hands us an fx graph of flat inputs; compile it like any module."""
    from fxc.api import compile as fxc_compile

    gm, inputs, keep, shapes = symbolic_inputs(gm, list(example_inputs))
    if shapes is not None and "dynamic_shapes" not in options:
        options = {**options, "dynamic_shapes": shapes}
    # Outside dynamo's tracing context: torch.export would otherwise adopt dynamo's fake mode
    # and add its own guards to dynamo's shape environment (dynamo then rejects the frame).
    with torch._guards.tracing(None):
        compiled = fxc_compile(gm, tuple(inputs), **options)

    def run(*args):
        return compiled(*[args[i] for i in keep])

    run.fxc_compiled = compiled  # for inspection: report(), graph
    return run


def symbolic_inputs(gm: fx.GraphModule, example_inputs: list):
    """(graph, real example inputs, positions of the caller's args the graph still takes,
    dynamic_shapes or None). Without symbolic sizes the graph and inputs pass through."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fakes = [n.meta.get("example_value", n.meta.get("val")) for n in placeholders]
    if not any(_symbolic(v) for v in fakes):
        return gm, example_inputs, list(range(len(example_inputs))), None
    gm = _copy(gm)  # dynamo reads its graph's placeholders after we return: keep them
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    where = _symbol_axes(placeholders, fakes)  # symbol -> (tensor placeholder, axis)
    keep = []
    for i, (node, fake) in enumerate(zip(placeholders, fakes)):
        if isinstance(fake, torch.SymInt) and str(fake.node.expr) in where:
            src, axis = where[str(fake.node.expr)]
            with gm.graph.inserting_after(placeholders[-1]):
                size = gm.graph.call_function(torch.ops.aten.sym_size.int, (src, axis))
            size.meta["example_value"] = size.meta["val"] = fake
            node.replace_all_uses_with(size)
            gm.graph.erase_node(node)
        else:
            keep.append(i)
    gm.recompile()
    inputs = [_real(example_inputs[i]) for i in keep]
    shapes = tuple(_axes(fakes[i]) if isinstance(fakes[i], torch.Tensor) else None for i in keep)
    return gm, inputs, keep, shapes


def _copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule over a copy of the graph (nodes' meta copied, values shared)."""
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    return fx.GraphModule(gm, graph)


def _symbolic(v) -> bool:
    if isinstance(v, torch.SymInt):
        return True
    return isinstance(v, torch.Tensor) and not all(isinstance(s, int) for s in v.shape)


def _symbol_axes(placeholders, fakes) -> dict[str, tuple[fx.Node, int]]:
    where = {}
    for node, fake in zip(placeholders, fakes):
        if isinstance(fake, torch.Tensor):
            for axis, s in enumerate(fake.shape):
                if isinstance(s, torch.SymInt):
                    where.setdefault(str(s.node.expr), (node, axis))
    return where


def _axes(fake: torch.Tensor) -> dict | None:
    """Dim.AUTO on every axis dynamo made symbolic: dynamo's own range ([2, inf) for a
    size it saw change) is wider than many models take (a position table ends at 64), so
    export works out each axis's range and which axes are equal from the model itself."""
    axes = {a: torch.export.Dim.AUTO for a, s in enumerate(fake.shape) if isinstance(s, torch.SymInt)}
    return axes or None


def _real(x):
    """A real example: dynamo's example tensors are real at the hint sizes already."""
    if isinstance(x, torch.SymInt):
        return x.node.hint
    return x


def register() -> None:
    from torch._dynamo import list_backends, register_backend
    if "fxc" not in list_backends(exclude_tags=()):
        register_backend(fxc_backend, name="fxc")

"""The optimized fx graph -> one ONNX model, through our converter registry.

Invariants of every model `to_onnx` returns:
- it computes what the graph computes: inputs in placeholder order named after the
  placeholders, outputs `output_0..` in the graph's flat output order (constants that are not
  tensors are kept aside in `LoweredOnnx.const_outputs`);
- every node is named after the fx node it came from and carries the user's source line;
- weights are initializers, in the graph's own dtypes (FP16 graphs stay FP16);
- `onnx.checker.check_model(full_check=True)` (which runs strict shape inference) passes;
- every node feeds an output (builder.prune), in topological order (builder.check_order);
Every unsupported node is found before anything fails: one FxcUnsupportedOpError lists all.
"""
from __future__ import annotations

import copy
import dataclasses
import operator
import os
import re
from typing import Any

import onnx
import torch
import torch.fx as fx
from onnx import helper

from fxc import ir
from fxc.errors import FxcOptionError, FxcUnsupportedOpError

from . import batch as batch_rules
from .builder import (TORCH_TO_ONNX, Builder, SymbolicShape, check_order, onnx_dtype, prune,
                      reads, to_tensor_proto)
from .ops_shape import SIZE_OPS
from .registry import Refuse, lookup, supported_targets

DEFAULT_OPSET = 17      # the first opset with LayerNormalization; TensorRT 10 parses 9..24
OPSETS = range(17, 21)  # what our converters are written for (Reduce* axes move at 18)
PROTOBUF_LIMIT = 2**31 - 1


def model_bytes(model: onnx.ModelProto) -> int:
    """An upper bound on the serialized size of `model`, for the 2 GB / external-data choices:
    the initializers' payloads plus the nodes plus a margin for names, shapes and value infos.
    ModelProto.ByteSize() walks the whole message (2 s for bert-base's 437 MB on the 2-core
    machine, more than serializing it); the payload lengths are read in 60 ms."""
    total = 1 << 20
    for t in model.graph.initializer:
        total += 256 + (len(t.raw_data) if t.raw_data else t.ByteSize())
    return total + sum(n.ByteSize() for n in model.graph.node)


@dataclasses.dataclass
class LoweredOnnx:
    model: onnx.ModelProto
    input_names: list[str]
    output_names: list[str]                 # one per tensor output, in flat output order
    output_slots: list[Any]                 # per flat output: an index into output_names or
    #                                         ('const', value) for a non-tensor output
    batch_outputs: list[bool]               # per tensor output: dim 0 is the dynamic batch
    dynamic_batch: bool
    opset: int
    captured_batch: int | None = None       # dim 0 of the first input at capture
    # symbolic dims (dynamic_shapes=): symbol -> (low, high or None, the example's size), for
    # engines that need ranges up front (TensorRT's optimization profile)
    dim_ranges: dict[str, tuple[int, int | None, int]] = dataclasses.field(default_factory=dict)

    def op_types(self) -> set[str]:
        return {n.op_type for n in self.model.graph.node}

    def batch_inputs(self) -> list[bool]:
        """Per input (placeholder order): its dim 0 is the symbolic batch of the model."""
        return [bool(d and d[0].dim_param) for d in
                (vi.type.tensor_type.shape.dim for vi in self.model.graph.input)]


def to_onnx(gm: fx.GraphModule, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
            backend: str = "onnx", check: bool = True) -> LoweredOnnx:
    """Lower `gm`; raises FxcUnsupportedOpError listing every node it cannot lower."""
    if opset not in OPSETS:
        raise FxcOptionError(f"opset={opset}: fxc's converters emit opsets "
                             f"{OPSETS.start}..{OPSETS.stop - 1}")
    b = Builder(opset)
    refusals: dict[fx.Node, str] = {}
    if dynamic_batch:
        # fxc's fused ops register their batch rules as their converters load: load them
        # first, or the first lowering of a process would refuse every fused op.
        supported_targets()
        b.batch, found = batch_rules.analyze(gm)
        refusals.update({n: f"dynamic_batch: {why}" for n, why in found})
    inputs, initializers_seen = [], {}
    unsupported: list[tuple[str, str, str | None]] = []
    total = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            val = ir.tensor_meta(node)
            if val is not None and val.dtype not in TORCH_TO_ONNX:  # complex, float8, uint16...
                unsupported.append((f"input of dtype {val.dtype} (no ONNX type)", node.name, None))
                b.env[node] = _missing(node)
                continue
            inputs.append(_input(b, node, dynamic_batch))
            if node in refusals:
                unsupported.append((f"input ({refusals[node]})", node.name, None))
        elif node.op == "get_attr":
            _get_attr(b, node, gm, initializers_seen)
        elif node.op == "call_function":
            counted = node.target is not operator.getitem
            total += counted
            why = refusals.get(node) or _convert(b, node)
            if why:
                unsupported.append((f"{ir.op_name(node)} ({why})" if why != "no converter"
                                    else ir.op_name(node), node.name, ir.source_line(node)))
                b.env[node] = _missing(node)
        elif node.op == "output":
            out_node = node
        else:
            unsupported.append((f"{node.op}:{node.target}", node.name, ir.source_line(node)))
    if unsupported:
        raise FxcUnsupportedOpError(backend, unsupported, total)
    graph_outputs, names, slots, batch_outs = _outputs(b, out_node, inputs, dynamic_batch)
    nodes = prune(b.nodes, names)  # unread outputs' nodes; then the constants only they read
    used = set().union(*map(reads, nodes)) | set(names)
    initializers = [t for t in b.initializers if t.name in used]
    check_order(nodes, {i.name for i in inputs} | {t.name for t in initializers})
    graph = helper.make_graph(nodes, "fxc", inputs, graph_outputs, initializers)
    model = helper.make_model(graph, producer_name="fxc",
                              opset_imports=[helper.make_opsetid("", opset)])
    # The IR the opset shipped with, not onnx's newest: the widest set of runtimes loads it.
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if check:
        _check_or_refuse(model, backend)
    first = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
    size0 = first.meta["val"].shape[0] if first is not None and first.meta["val"].dim() else None
    captured = size0 if isinstance(size0, int) else None
    return LoweredOnnx(model, [i.name for i in inputs], names, slots, batch_outs, dynamic_batch,
                       opset, captured, dim_ranges(gm))


def dim_ranges(gm: fx.GraphModule) -> dict[str, tuple[int, int | None, int]]:
    """symbol -> (low, high or None, example size) of every symbolic input axis of `gm`."""
    from fxc.dynamic import range_end
    declared = gm.meta.get("dim_ranges", {})  # export's own ranges, recorded by capture
    out = {}
    for node in gm.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        for d in getattr(val, "shape", ()):
            if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol:
                vr = d.node.shape_env.var_to_range.get(d.node.expr)
                low = range_end(vr.lower) if vr is not None else None
                high = range_end(vr.upper) if vr is not None else None
                low, high = declared.get(str(d.node.expr), (low or 0, high))
                out[str(d.node.expr)] = (low, high, int(d.node.hint))
    return out


def _missing(node: fx.Node):
    """A stand-in value for a node that did not lower, so later nodes can still be checked."""
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return [f"{node.name}/missing{i}" for i in range(len(val))]
    return f"{node.name}/missing"


def _convert(b: Builder, node: fx.Node) -> str | None:
    """Run the node's converter; returns why it is unsupported, or None."""
    if node.target is operator.getitem:
        src, i = node.args
        vals = b.env.get(src)
        if not isinstance(vals, (list, tuple)) or vals[i] is None:
            return f"output {i} of %{src.name} is not lowered"
        b.env[node] = vals[i]
        return None
    fn = SIZE_OPS.get(node.target) or lookup(node.target)
    if fn is None:
        return "no converter"
    b.begin(node)
    try:
        result = fn(b, node)
    except SymbolicShape as e:  # reads a symbolic size as a number: refused, not fixed
        return str(e)
    except Exception as e:  # a converter bug: report it at compile time, with the node
        return f"converter failed: {type(e).__name__}: {e}"
    if isinstance(result, Refuse):
        return result.reason
    b.env[node] = result
    return None


def _input(b: Builder, node: fx.Node, dynamic_batch: bool) -> onnx.ValueInfoProto:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise FxcUnsupportedOpError("onnx", [(f"non-tensor input {type(val).__name__}",
                                              node.name, None)], 0)
    b.env[node] = node.name
    shape: list[Any] = onnx_dims(val)
    if dynamic_batch and shape:
        shape[0] = "batch"
    return helper.make_tensor_value_info(node.name, onnx_dtype(val.dtype), shape)


def onnx_dims(val: torch.Tensor) -> list[Any]:
    """A tensor's shape for a value info: static sizes as numbers, a symbolic one as its
    expression (`s33`, `2*s33`), which runtime/ort_engine.py evaluates per call."""
    return [d if isinstance(d, int) else str(d.node.expr).replace(" ", "") for d in val.shape]


def _get_attr(b: Builder, node: fx.Node, gm: fx.GraphModule, seen: dict) -> None:
    if not node.users:
        return  # nothing reads it: no initializer (ORT would warn and drop it)
    if node.target in seen:  # one initializer per attribute, however often it is read
        b.env[node] = seen[node.target]
        return
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, torch.Tensor):
        b.env[node] = _missing(node)
        return
    name = node.target
    b.initializers.append(to_tensor_proto(obj, name))
    b.env[node] = seen[node.target] = name


def _outputs(b: Builder, out_node: fx.Node, inputs, dynamic_batch: bool):
    """Name tensor outputs output_0.. (renaming the producer's value, or an Identity where the
    value is an input, an initializer or already an output)."""
    produced = {o for n in b.nodes for o in n.output}
    renames: dict[str, str] = {}
    graph_outputs, names, slots, batch_outs = [], [], [], []
    for arg in out_node.args[0]:
        if not isinstance(arg, fx.Node) or not isinstance(arg.meta.get("val"), torch.Tensor):
            slots.append(("const", arg if not isinstance(arg, fx.Node) else arg.meta.get("val")))
            continue
        v, out_name = b.value(arg), f"output_{len(names)}"
        if v in produced and v not in renames:
            renames[v] = out_name
        else:
            b.begin(None)
            b.nodes.append(helper.make_node("Identity", [renames.get(v, v)], [out_name],
                                            name=f"{out_name}/identity"))
        val = arg.meta["val"]
        is_batch = bool(dynamic_batch and b.batch.get(arg) and val.dim())
        shape: list[Any] = onnx_dims(val)
        if is_batch:
            shape[0] = "batch"
        graph_outputs.append(helper.make_tensor_value_info(out_name, onnx_dtype(val.dtype), shape))
        slots.append(len(names))
        names.append(out_name)
        batch_outs.append(is_batch)
    for n in b.nodes:
        for i, x in enumerate(n.input):
            if x in renames:
                n.input[i] = renames[x]
        for i, x in enumerate(n.output):
            if x in renames:
                n.output[i] = renames[x]
    return graph_outputs, names, slots, batch_outs


# -- checking and saving ------------------------------------------------------------------------

_CHECK_NODE = re.compile(r"\(op_type:(\w+), node name: ([^)]*)\): (.*)")


def _check_or_refuse(model: onnx.ModelProto, backend: str) -> None:
    """check_model; a node whose input types ONNX's own schema does not allow (a bf16 Conv:
    ONNX types Conv for float, double and half only) is an unsupported op of this backend,
    named with its node and source line like any other, not a checker traceback."""
    try:
        check_model(model)
    except onnx.shape_inference.InferenceError as e:
        m = _CHECK_NODE.search(str(e))
        if m is None:
            raise
        op, name, why = m.groups()
        doc = next((n.doc_string for n in model.graph.node if n.name == name), None)
        raise FxcUnsupportedOpError(backend, [(f"ONNX {op} ({why.strip()})", name, doc or None)],
                                    len(model.graph.node)) from None


def check_model(model: onnx.ModelProto, path: str | None = None) -> None:
    """onnx.checker with full_check (strict shape and type inference). A model over 2 GB is
    checked by path: written with external data to `path` or, without one, a temporary
    directory (protobuf cannot hold it in one message)."""
    if path is not None:
        onnx.checker.check_model(path, full_check=True)
    elif model_bytes(model) < PROTOBUF_LIMIT:
        onnx.checker.check_model(model, full_check=True)
    else:
        import tempfile
        with tempfile.TemporaryDirectory(prefix="fxc-check-") as d:
            save(model, os.path.join(d, "model.onnx"), external_threshold=0)
            onnx.checker.check_model(os.path.join(d, "model.onnx"), full_check=True)


def save(model: onnx.ModelProto, path: str, external_threshold: int = 2_000_000_000) -> list[str]:
    """Write `model` to `path`; with tensor data in `<name>.data` beside it when the model is
    over `external_threshold` bytes (protobuf cannot hold 2 GB). Returns the files written."""
    if model_bytes(model) <= min(external_threshold, PROTOBUF_LIMIT):
        onnx.save_model(model, path)
        return [os.path.basename(path)]
    location = os.path.basename(path) + ".data"
    if os.path.exists(os.path.join(os.path.dirname(path), location)):
        os.remove(os.path.join(os.path.dirname(path), location))  # save_model appends
    # save_model rewrites the tensors it moves out: leave the caller's model as it was.
    # Tensors under 1 KiB stay inline: shape inference must read axes and shapes.
    onnx.save_model(copy.deepcopy(model), path, save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=1024)
    moved = os.path.exists(os.path.join(os.path.dirname(path), location))
    return [os.path.basename(path)] + ([location] if moved else [])

"""Ready an FP32 ONNX model for INT8: weights as plain initializers, int8 chains unbroken.

Rewrites, in order (each counted in the returned dict):
1. `Transpose(initializer)` -> a transposed initializer: fxc lowers an N-D linear as
   `MatMul(x, Transpose(W))`, and the quantizer quantizes a weight per channel only when it
   is an initializer; otherwise it would be calibrated as an activation (one scale).
2. NaN gates dropped: the lowering wraps max pooling and max/min reductions in an `If` that
   repairs torch's NaN / -inf semantics when the input holds one (lowering/ops_reduce.py
   `nan_gated`); its else branch is one Identity of the plain result. An INT8 model gives
   those semantics up (a QuantizeLinear maps NaN to an integer), and the gate would split the
   int8 chain around every pool and cost a float ReduceSum. The If's users read the plain
   result instead.
3. Nodes whose outputs nothing reads any more are removed (the gates' ReduceSum/Greater/Not).

Invariant: on inputs without NaN or -inf in pooled/reduced tensors, the model computes what it
did; graph inputs and outputs keep their names, and every node keeps its name.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper


def prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    model = _copy(model)
    counts = {"weights transposed": _fold_weight_transposes(model.graph),
              "NaN gates dropped": _drop_nan_gates(model.graph)}
    counts["dead nodes removed"] = _dce(model.graph)
    return model, counts


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _fold_weight_transposes(graph: onnx.GraphProto) -> int:
    inits = {t.name: t for t in graph.initializer}
    n = 0
    for node in graph.node:
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        w = numpy_helper.to_array(inits[node.input[0]])
        t = w.transpose(perm) if perm else w.T
        graph.initializer.append(numpy_helper.from_array(t.copy(), node.output[0]))
        inits[node.output[0]] = graph.initializer[-1]
        n += 1
    for nd in [nd for nd in graph.node if nd.op_type == "Transpose" and nd.output[0] in inits]:
        graph.node.remove(nd)  # its output is an initializer now
    return n


def _drop_nan_gates(graph: onnx.GraphProto) -> int:
    rename: dict[str, str] = {}
    for node in list(graph.node):
        if node.op_type != "If":
            continue
        plain = _as_is(node)
        if plain is None:
            continue
        rename[node.output[0]] = plain
        graph.node.remove(node)
    for node in graph.node:
        for i, v in enumerate(node.input):
            while v in rename:
                v = rename[v]
            node.input[i] = v
    for out in graph.output:  # a gated value that is a model output: keep its name
        if out.name in rename:
            graph.node.append(onnx.helper.make_node("Identity", [rename[out.name]], [out.name],
                                                    name=out.name + "/as_is"))
    return len(rename)


def _as_is(node: onnx.NodeProto) -> str | None:
    """The outer value an If's else branch passes through unchanged (fxc's NaN gate), else None."""
    branch = next((a.g for a in node.attribute if a.name == "else_branch"), None)
    if branch is None or len(branch.node) != 1 or len(node.output) != 1:
        return None
    only = branch.node[0]
    if only.op_type != "Identity" or only.output[0] != branch.output[0].name:
        return None
    return only.input[0]


def _dce(graph: onnx.GraphProto) -> int:
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(_reads(node))
    removed = len(graph.node) - len(keep)
    if removed:
        del graph.node[:]
        graph.node.extend(reversed(keep))
        inits = [t for t in graph.initializer if t.name in live]
        del graph.initializer[:]
        graph.initializer.extend(inits)
    return removed


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every value `node` reads, its subgraphs' reads of outer values included."""
    names = set(node.input)
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for inner in g.node:
                names |= _reads(inner)
    return names

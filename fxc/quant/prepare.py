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
3. `Add(MatMul(x, W), b)` with constant W (K, N) and b (N,) and a static x -> one 2-D
   `Gemm(Reshape(x, [-1, K]), W, b)` reshaped back: the quantizer then writes one int8 GEMM
   whose int32 bias and requantized output live in the kernel (QGemm), instead of an int8
   MatMul, a DequantizeLinear and a float Add (BERT base on this 2-core CPU: cosine with FP32
   0.9970 -> 0.9988 at the same speed; qdq.py's float Gemm outputs then gain the speed).
4. Nodes whose outputs nothing reads any more are removed (the gates' ReduceSum/Greater/Not).

Invariant: on inputs without NaN or -inf in pooled/reduced tensors, the model computes what it
did; graph inputs and outputs keep their names, and every node keeps its name.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    model = _copy(model)
    counts = {"weights transposed": _fold_weight_transposes(model.graph),
              "NaN gates dropped": _drop_nan_gates(model.graph)}
    counts["bias adds folded into Gemm"] = _matmul_add_to_gemm(model)
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


def _matmul_add_to_gemm(model: onnx.ModelProto) -> int:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                       for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.value_info) + list(inferred.input)}
    users: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    n = 0
    for mm in list(graph.node):
        if mm.op_type != "MatMul" or mm.input[1] not in inits:
            continue
        w, x = inits[mm.input[1]], mm.input[0]
        after = users.get(mm.output[0], [])
        if len(w.dims) != 2 or len(after) != 1 or after[0].op_type != "Add":
            continue
        add = after[0]
        b = next((i for i in add.input if i != mm.output[0]), None)
        xs = shapes.get(x)
        if b not in inits or list(inits[b].dims) != [w.dims[1]] or not xs or len(xs) < 2 \
                or None in xs or xs[-1] != w.dims[0] or mm.output[0] in {o.name for o in graph.output}:
            continue
        k, out_shape = w.dims[0], xs[:-1] + [w.dims[1]]
        flat = _const(graph, f"{mm.name}/flat_shape", [-1, k])
        back = _const(graph, f"{mm.name}/out_shape", out_shape)
        new = [helper.make_node("Reshape", [x, flat], [f"{mm.name}/flat"], name=f"{mm.name}/flat"),
               helper.make_node("Gemm", [f"{mm.name}/flat", mm.input[1], b], [f"{mm.name}/2d"],
                                name=mm.name),
               helper.make_node("Reshape", [f"{mm.name}/2d", back], [add.output[0]],
                                name=add.name)]
        for nd in new:
            nd.doc_string = mm.doc_string
        at = list(graph.node).index(add)
        graph.node.remove(add)
        graph.node.remove(mm)
        for j, nd in enumerate(new):
            graph.node.insert(at - 1 + j, nd)
        n += 1
    return n


def _const(graph: onnx.GraphProto, name: str, values: list[int]) -> str:
    graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
    return name


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

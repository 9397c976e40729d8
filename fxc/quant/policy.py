"""Which nodes of the FP32 ONNX model run in INT8, and why each of the others stays FP32.

Anchors are the ops whose int8 kernels make the model faster: Conv, Gemm and MatMul with a
constant weight (ONNX Runtime CPU: QLinearConv, QGemm / MatMulInteger). Rules, in order:
1. an anchor whose weight is not a constant (attention's q @ k^T and p @ v) stays FP32: both
   operands would get one scale per tensor from calibration, and the softmax's outputs and
   the scores are where int8 loses most in transformers for a small share of the time;
2. a node that writes a model output stays FP32: int8 would round the values the user reads
   (a classifier's logits, whose order is its answer);
3. an anchor whose own int8 error, measured on the first calibration batch, is over
   `tolerance` stays FP32: its input fake-quantized with the calibrated range, its weight
   per channel, its output compared with FP32 (relative norm error);
4. a chain op (Add, pooling, Relu, reshapes) runs in int8 when every activation it reads is
   an int8 output (of a Conv or another chain op; a Gemm writes float, see qdq.py), so a ResNet's int8 tensors flow from conv to conv without float
   round trips (QLinearAdd, int8 MaxPool), while an Add that joins a float tensor (BERT's
   residual stream into layer norm) stays float.

Invariant: `decide` returns one Decision per anchor and chain candidate, and the names it
marks `int8` are exactly the nodes handed to the quantizer; every FP32 decision has a reason.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, numpy_helper

ANCHORS = ("Conv", "Gemm", "MatMul")
CHAIN = ("Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip", "Reshape",
         "Flatten", "Transpose", "Concat")


@dataclasses.dataclass
class Decision:
    node: str
    op: str
    int8: bool
    reason: str
    error: float | None = None  # measured int8 error of an anchor (relative norm)


@dataclasses.dataclass
class Graph:
    """What the rules read of a model: nodes by name, producers, float tensors, constants."""
    model: onnx.ModelProto

    def __post_init__(self):
        g = self.model.graph
        self.nodes = list(g.node)
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.outputs = {o.name for o in g.output}
        inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=False).graph
        vis = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
        self.float = {v.name for v in vis if v.type.tensor_type.elem_type == TensorProto.FLOAT}

    def activations(self, node) -> list[str]:
        """`node`'s float inputs that are computed at run time (not initializers)."""
        return [i for i in node.input if i and i not in self.inits and i in self.float]


def candidates(g: Graph) -> tuple[list, list, list[Decision]]:
    """(anchors, chain ops, decisions taken by rules 1-2) before any measurement."""
    anchors, chain, fixed = [], [], []
    for n in g.nodes:
        if n.op_type in ANCHORS:
            if not g.activations(n) or n.input[0] not in g.float:
                continue  # not a float op on run-time values: nothing to quantize
            if len(n.input) < 2 or n.input[1] not in g.inits:
                fixed.append(Decision(n.name, n.op_type, False, "both operands are activations "
                                      "(attention scores or values): kept FP32 by rule"))
            elif any(o in g.outputs for o in n.output):
                fixed.append(Decision(n.name, n.op_type, False, "writes a model output: int8 "
                                      "would round the values the caller reads"))
            else:
                anchors.append(n)
        elif n.op_type in CHAIN and g.activations(n):
            chain.append(n)
    return anchors, chain, fixed


def tensors_to_calibrate(g: Graph, nodes) -> list[str]:
    """Every float activation read or written by `nodes`, in first-seen order."""
    seen: dict[str, None] = {}
    for n in nodes:
        for t in g.activations(n) + [o for o in n.output if o in g.float]:
            seen.setdefault(t, None)
    return list(seen)


def decide(g: Graph, anchors, chain, fixed: list[Decision], ranges, samples,
           tolerance: float, reduce_range: bool) -> list[Decision]:
    """Rules 3 and 4 over the calibrated ranges and first-batch samples."""
    from .qdq import FLOAT_OUTPUTS
    out = list(fixed)
    int8: set[str] = set()  # nodes whose outputs are int8 tensors
    for n in anchors:
        err = layer_error(n, samples[n.input[0]], g.inits, ranges[n.input[0]], reduce_range)
        ok = err <= tolerance
        why = (f"int8 error {err:.2%} on the first calibration batch" if ok else
               f"int8 error {err:.2%} on the first calibration batch, over the {tolerance:.0%} "
               f"tolerance (int8_tolerance=)")
        out.append(Decision(n.name, n.op_type, ok, why, err))
        if ok and n.op_type not in FLOAT_OUTPUTS:
            int8.add(n.name)
    for n in chain:  # topological order: a chain op sees its producers' decisions
        ins = g.activations(n)
        fed = bool(ins) and all(i in g.producer and g.producer[i].name in int8 for i in ins)
        if n.op_type == "Add" and len(ins) < 2:
            fed = False  # a bias add: the anchor's own epilogue (QGemm folds it)
        if fed and not any(o in g.outputs for o in n.output):
            int8.add(n.name)
            out.append(Decision(n.name, n.op_type, True, "int8 chain: every input is int8"))
    return out


def layer_error(node, x: np.ndarray, inits, rng: tuple[float, float], reduce_range: bool) -> float:
    """Relative norm error of `node`'s output with its input quantized to uint8 over `rng`
    (asymmetric, as ONNX Runtime's QDQ on x86) and its weight to int8 per output channel
    (symmetric), against FP32; the bias stays float (int32 in the kernel)."""
    w = torch.from_numpy(numpy_helper.to_array(inits[node.input[1]]).astype(np.float32))
    b = (torch.from_numpy(numpy_helper.to_array(inits[node.input[2]]).astype(np.float32))
         if len(node.input) > 2 and node.input[2] in inits else None)
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and attrs.get("transB", 0)) else 1
    with torch.no_grad():
        ref = _apply(node.op_type, attrs, x, w, b)
        got = _apply(node.op_type, attrs, fake_quant_act(x, rng),
                     fake_quant_weight(w, axis, reduce_range), b)
    return float((got - ref).norm() / ref.norm().clamp_min(1e-12))


def fake_quant_act(x: torch.Tensor, rng: tuple[float, float]) -> torch.Tensor:
    lo, hi = min(rng[0], 0.0), max(rng[1], 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


def fake_quant_weight(w: torch.Tensor, axis: int, reduce_range: bool) -> torch.Tensor:
    qmax = 64.0 if reduce_range else 127.0
    dims = [d for d in range(w.dim()) if d != axis]
    amax = w.abs().amax(dim=dims, keepdim=True) if dims else w.abs()
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def _apply(op: str, attrs: dict, x, w, b):
    if op == "MatMul":
        return x @ w
    if op == "Gemm":
        a = x.T if attrs.get("transA", 0) else x
        bw = w.T if attrs.get("transB", 0) else w
        y = attrs.get("alpha", 1.0) * (a @ bw)
        return y + attrs.get("beta", 1.0) * b if b is not None else y
    k = w.dim() - 2  # Conv
    pads = attrs.get("pads", [0] * 2 * k)
    if list(pads[:k]) != list(pads[k:]):
        x = F.pad(x, [p for i in reversed(range(k)) for p in (pads[i], pads[i + k])])
        pads = [0] * 2 * k
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[k]
    return conv(x, w, b, stride=attrs.get("strides", 1), padding=list(pads[:k]),
                dilation=attrs.get("dilations", 1), groups=attrs.get("group", 1))

"""INT8 post-training quantization with calibration, for ONNX Runtime on the CPU.

    compiled = fxc.compile(model, example, precision="int8", calibration=batches,
                           calibration_method="entropy")   # or "minmax", "percentile"

`batches` is an iterable of inputs shaped like `example` (a tuple of args, a dict of kwargs
or one tensor each), drawn from what the model will see. The fx passes run in FP32; the
lowered ONNX model is then
  prepare.py    readied: weights as initializers, NaN gates dropped (int8 has no NaN)
  policy.py     split into int8 and FP32 nodes: rules, then each layer's measured int8 error
  calibrate.py  calibrated: each activation's range over the batches (minmax/percentile/entropy)
  qdq.py        rewritten as QDQ (QuantizeLinear/DequantizeLinear), per-channel int8 weights,
                per-tensor activations, which ONNX Runtime's CPU runs with its int8 kernels.
The compile report's "INT8 quantization" section lists what runs in int8 and every layer
kept in FP32 with why.

Invariant: the model ONNX Runtime runs computes the FP32 graph's function up to int8
rounding on the nodes the policy chose; every other node computes in FP32 as before.
"""
from __future__ import annotations

import collections
import dataclasses

from fxc.errors import FxcCalibrationError, FxcInputError, FxcOptionError

METHODS = ("minmax", "percentile", "entropy")  # calibrate.py says what each measures
DEFAULT_TOLERANCE = 0.05  # a layer's own int8 error (relative norm) past which it stays FP32

__all__ = ["METHODS", "calibration_batches", "check_options", "quantize", "refuses"]


def check_options(precision: str, device, extra: dict) -> None:
    """options.resolve's checks: int8 needs batches and a CPU; calibration options need int8."""
    given = [k for k in ("calibration", "calibration_method", "int8_tolerance")
             if extra.get(k) is not None]
    if precision != "int8":
        if given:
            raise FxcOptionError(f"{given[0]}= is read by precision='int8' only "
                                 f"(precision={precision!r})")
        return
    if device.type != "cpu":
        raise FxcOptionError(
            f"precision='int8' is built for ONNX Runtime's CPU int8 kernels (device={device}); "
            f"on CUDA use precision='fp16', or compile with device='cpu' for int8")
    if extra.get("calibration") is None:
        raise FxcOptionError(
            "precision='int8' needs calibration=batches: a list of inputs shaped like "
            "example_inputs, drawn from what the model will see (a few dozen suffice); int8 "
            "ranges are measured on them")
    method = extra.get("calibration_method")
    if method is not None and method not in METHODS:
        raise FxcOptionError(f"calibration_method={method!r}: expected one of {list(METHODS)}")
    tol = extra.get("int8_tolerance")
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise FxcOptionError(f"int8_tolerance={tol!r}: expected a relative error > 0")


def refuses(options, backend: str) -> str | None:
    """Why `backend` cannot run precision='int8' (None: it can, or the precision is not int8)."""
    if options.precision != "int8":
        return None
    if backend == "onnxruntime":
        return None
    return (f"precision='int8' runs as a QDQ ONNX model on ONNX Runtime's CPU int8 kernels; "
            f"the {backend} backend has no int8 path in fxc: use backend='onnxruntime' "
            f"(or 'auto') with device='cpu'")


def calibration_batches(batches, captured) -> list:
    """The user's batches as flat tensor lists in graph-input order, each checked against the
    compiled inputs (structure, dtype, shape, device) like a call's, or FxcCalibrationError."""
    from fxc.capture import normalize_inputs
    from fxc.runtime import InputChecker

    import torch
    if isinstance(batches, (torch.Tensor, dict)) or not hasattr(batches, "__iter__"):
        raise FxcCalibrationError(
            f"calibration=: expected an iterable of batches, each like example_inputs, got "
            f"{type(batches).__name__} (one batch? pass [batch])")
    checker = InputChecker(captured.inputs, captured.in_spec, captured.layout)
    out = []
    for i, batch in enumerate(batches):
        args, kwargs = normalize_inputs(batch)
        try:
            flat = checker.flatten(args, kwargs)
        except FxcInputError as e:
            raise FxcCalibrationError(f"calibration batch {i}: {e}") from None
        out.append([x.detach() for x in flat])
    if not out:
        raise FxcCalibrationError("calibration=: no batches (at least one is needed)")
    return out


def quantize(lowered, options, batches: list) -> tuple[object, list[tuple[str, list[str]]]]:
    """(the QDQ LoweredOnnx, report sections) for an FP32 LoweredOnnx and checked batches."""
    from . import calibrate, policy, prepare, qdq

    if not batches:
        raise FxcCalibrationError("precision='int8': no calibration batches reached the backend")
    model, counts = prepare.prepare(lowered.model)
    g = policy.Graph(model)
    anchors, chain, fixed = policy.candidates(g)
    tensors = policy.tensors_to_calibrate(g, anchors + chain)
    feeds = [{n: x.cpu().numpy() for n, x in zip(lowered.input_names, b)} for b in batches]
    method = options.calibration_method or "minmax"
    cal = calibrate.calibrate(model, feeds, tensors, method,
                              samples=frozenset(a.input[0] for a in anchors),
                              threads=options.ort_threads)
    conf = qdq.settings()
    tol = options.int8_tolerance or DEFAULT_TOLERANCE
    decisions = policy.decide(g, anchors, chain, fixed, cal.ranges, cal.samples, tol,
                              conf["reduce_range"])
    chosen = [d.node for d in decisions if d.int8]
    # (an empty node list would mean "every node" to the quantizer)
    qmodel = qdq.insert_qdq(model, chosen, cal.ranges, method, conf,
                            list(policy.ANCHORS + policy.CHAIN)) if chosen else model
    lines = _report(decisions, cal, conf, counts, tol)
    return dataclasses.replace(lowered, model=qmodel), [("INT8 quantization", lines)]


def _report(decisions, cal, conf, counts, tol) -> list[str]:
    anchors = [d for d in decisions if d.op in ("Conv", "Gemm", "MatMul")]
    int8 = [d for d in anchors if d.int8]
    chain = collections.Counter(d.op for d in decisions if d.int8 and d not in int8)
    lines = [f"calibration: {cal.method} over {cal.batches} batch(es); weights int8 symmetric "
             f"per output channel{' (7-bit: reduce_range, no VNNI on this CPU)' if conf['reduce_range'] else ''}; "
             f"activations {conf['activation']} per tensor",
             f"int8: {len(int8)} of {len(anchors)} Conv/Gemm/MatMul"
             + (" + chain " + ", ".join(f"{n} {op}" for op, n in chain.most_common()) if chain else ""),
             "prepared: " + ", ".join(f"{n} {what}" for what, n in counts.items())
             + (" (int8 gives up torch's NaN through max pooling and max/min)"
                if counts.get("NaN gates dropped") else "")]
    kept = [d for d in anchors if not d.int8]
    by_rule = collections.defaultdict(list)
    for d in kept:
        if d.error is None:
            by_rule[d.reason].append(d.node)
        else:
            lines.append(f"kept FP32: {d.node} ({d.op}): {d.reason}")
    for reason, nodes in by_rule.items():
        shown = ", ".join(nodes[:6]) + (f", ... ({len(nodes)} in all)" if len(nodes) > 6 else "")
        lines.append(f"kept FP32: {shown}: {reason}")
    worst = sorted((d for d in int8 if d.error is not None), key=lambda d: -d.error)[:3]
    if worst:
        lines.append(f"largest int8 errors kept (tolerance {tol:.0%}): "
                     + ", ".join(f"{d.node} {d.error:.2%}" for d in worst))
    return lines

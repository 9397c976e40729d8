"""Calibration: the range each activation takes over the user's batches, three ways.

The FP32 model runs in ONNX Runtime with the tensors to calibrate as extra outputs, once per
batch (a second pass for the histogram methods, over edges fixed by the first):
- minmax: the lowest and highest value seen. Every value is representable; one outlier
  stretches the scale for all the others.
- percentile: the range holding all but (100 - p)% of the values on each side (p = 99.99 by
  default), from a 2048-bin histogram: an outlier is clipped.
- entropy: TensorRT's rule, the threshold T over |x| whose 128-level quantization of the
  histogram up to T (everything beyond counted in the last bin) is closest in KL divergence
  to the original; the range is (-T, T), or (0, T) for a tensor that is never negative.

Invariant: every returned range is finite, holds 0 (so zero has an exact int8 code) and lies
within the values seen (minmax's range is that of the values seen).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper

from fxc.quant import METHODS
BINS = 2048
LEVELS = 128  # entropy: quantized bins of |x| (int8's positive half)


@dataclasses.dataclass
class Calibration:
    method: str
    ranges: dict[str, tuple[float, float]]  # tensor -> (low, high)
    samples: dict[str, np.ndarray]          # tensor -> its value on the first batch
    batches: int


def calibrate(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], tensors: list[str],
              method: str = "minmax", samples: frozenset[str] = frozenset(),
              percentile: float = 99.99, threads: int = 0) -> Calibration:
    """Ranges of the float tensors `tensors` over `feeds`, and the first feed's values of
    `samples` (a subset of `tensors`)."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: expected one of {METHODS}")
    session = _session(model, tensors, threads)
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    kept: dict[str, np.ndarray] = {}
    for i, feed in enumerate(feeds):
        for t, v in zip(tensors, session.run(tensors, feed)):
            if i == 0 and t in samples:
                kept[t] = v
            finite = np.isfinite(v)
            v = v if finite.all() else v[finite]
            if v.size:
                lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    ranges = {t: (min(lo[t], 0.0), max(hi[t], 0.0)) if np.isfinite(lo[t]) else (0.0, 0.0)
              for t in tensors}
    if method != "minmax":
        hists = _histograms(session, feeds, tensors, ranges, signed=method == "percentile")
        pick = (lambda t, h: _percentile(h, ranges[t], percentile)) if method == "percentile" \
            else (lambda t, h: _entropy(h, ranges[t]))
        ranges = {t: pick(t, hists[t]) for t in tensors}
    return Calibration(method, ranges, kept, len(feeds))


def _session(model: onnx.ModelProto, tensors: list[str], threads: int):
    import onnxruntime as ort

    from fxc.runtime.ort_engine import physical_cores
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = threads or physical_cores()
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _histograms(session, feeds, tensors, ranges, signed: bool) -> dict[str, np.ndarray]:
    """Per tensor, BINS counts over [low, high] (signed) or over [0, max |x|]."""
    hists = {t: np.zeros(BINS, np.int64) for t in tensors}
    for feed in feeds:
        for t, v in zip(tensors, session.run(tensors, feed)):
            lo, hi = ranges[t]
            if hi <= lo:
                continue
            v = v[np.isfinite(v)]
            span = (lo, hi) if signed else (0.0, max(-lo, hi))
            hists[t] += np.histogram(v if signed else np.abs(v), BINS, span)[0]
    return hists


def _percentile(hist: np.ndarray, rng: tuple[float, float], p: float) -> tuple[float, float]:
    lo, hi = rng
    if hi <= lo or hist.sum() == 0:
        return rng
    cdf = np.cumsum(hist) / hist.sum()
    edges = np.linspace(lo, hi, BINS + 1)
    tail = (100.0 - p) / 100.0
    low = edges[np.searchsorted(cdf, tail, side="right")] if lo < 0 else 0.0
    high = edges[min(np.searchsorted(cdf, 1.0 - tail, side="left") + 1, BINS)]
    return min(float(low), 0.0), max(float(high), 0.0)


def _entropy(hist: np.ndarray, rng: tuple[float, float]) -> tuple[float, float]:
    lo, hi = rng
    amax = max(-lo, hi)
    if amax <= 0 or hist.sum() == 0:
        return rng
    t = amax * _kl_bins(hist.astype(np.float64)) / BINS
    return max(lo, -t) if lo < 0 else 0.0, min(hi, t)


def _kl_bins(hist: np.ndarray) -> int:
    """The number of leading bins whose LEVELS-level quantization loses the least (KL)."""
    best, best_i = np.inf, len(hist)
    for i in range(LEVELS, len(hist) + 1, 16):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()  # the clipped tail lands in the last bin
        src = hist[:i]
        chunk = (np.arange(i) * LEVELS) // i
        nz = (src > 0).astype(np.float64)
        sums = np.bincount(chunk, weights=src, minlength=LEVELS)
        counts = np.bincount(chunk, weights=nz, minlength=LEVELS)
        q = np.where(nz > 0, sums[chunk] / np.maximum(counts[chunk], 1), 0.0)
        if q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        kl = float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return best_i

"""Peers that fxc is measured against and that need more than a line to set up.

ort_export_runner: ONNX Runtime on the graph torch.onnx.export writes, with the same session
options and IO binding as fxc's ONNX Runtime backend, so the comparison is of graphs alone.
"""
from __future__ import annotations

import os
import tempfile
import warnings

import torch
import torch.utils._pytree as pytree

from fxc.runtime.ort_engine import NUMPY_DTYPES


def leaves(out):
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def ort_export_runner(model, inputs, threads: int, workdir: str | None = None):
    """torch.onnx.export's graph (the classic TorchScript exporter; dynamo if it fails) in an
    InferenceSession set up as fxc's, run through the same IO binding."""
    import onnxruntime as ort
    workdir = workdir or tempfile.mkdtemp(prefix="fxc_ort_export_")
    path = os.path.join(workdir, "exported.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, tuple(inputs), path, dynamo=False, opset_version=17)
            how = "torch.onnx.export(dynamo=False)"
        except Exception:
            torch.onnx.export(model, tuple(inputs), path, dynamo=True, opset_version=18)
            how = "torch.onnx.export(dynamo=True)"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    in_names = [i.name for i in sess.get_inputs()]
    with torch.no_grad():
        ref = leaves(model(*inputs))
    out_meta = [(o.name, r.dtype, tuple(r.shape)) for o, r in zip(sess.get_outputs(), ref)]
    binding = sess.io_binding()
    # The exporter may drop inputs the graph does not read: bind by the names it kept.
    keep = list(range(len(inputs))) if len(in_names) == len(inputs) else _match(sess, inputs)

    def run(*xs):
        kept = []
        for name, i in zip(in_names, keep):
            x = xs[i].contiguous()
            kept.append(x)
            binding.bind_input(name, "cpu", 0, NUMPY_DTYPES[x.dtype], tuple(x.shape), x.data_ptr())
        outs = []
        for name, dtype, shape in out_meta:
            y = torch.empty(shape, dtype=dtype)
            binding.bind_output(name, "cpu", 0, NUMPY_DTYPES[dtype], shape, y.data_ptr())
            outs.append(y)
        sess.run_with_iobinding(binding)
        return outs

    return run, how


def _match(sess, inputs):
    """Input positions for an exported graph that kept fewer inputs: match by shape/dtype."""
    out, used = [], set()
    for i in sess.get_inputs():
        for j, x in enumerate(inputs):
            if j not in used and list(x.shape) == list(i.shape):
                out.append(j)
                used.add(j)
                break
    return out

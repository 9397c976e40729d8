"""Stage dumps: with `dump_dir`, the graph after capture and after each pass.

Files: `NN_<stage>.py` (the fx code of the stage, runnable to read) and `NN_<stage>.txt`
(one line a node: name, op, output meta, source line), written as each stage happens; then,
at the end of compile (`finish`), `report.html` (every stage's graph, what each pass changed,
the pass table and the memory plan: fxc/viz) and `model.onnx` (the lowered final graph, to
open in Netron) where it can be lowered.
"""
from __future__ import annotations

import os

import torch.fx as fx

from . import ir
from .debug import log


class StageDumper:
    def __init__(self, directory: str, title: str = "fxc compile"):
        self.dir = directory
        self.index = 0
        self.title = title
        self.snapshots = []
        self.last: fx.GraphModule | None = None
        os.makedirs(directory, exist_ok=True)

    def __call__(self, stage: str, gm: fx.GraphModule) -> None:
        from .viz.snapshot import snapshot
        base = os.path.join(self.dir, f"{self.index:02d}_{stage}")
        self.index += 1
        with open(base + ".py", "w") as f:
            f.write(f"# fxc stage: {stage}\n{gm.code}")
        with open(base + ".txt", "w") as f:
            f.write(node_table(gm))
        self.snapshots.append(snapshot(stage, gm))  # passes rewrite gm in place: copy now
        self.last = gm

    def finish(self, report=None, memory_plan=None, onnx_model=None,
               gm: fx.GraphModule | None = None, title: str | None = None) -> str:
        """Write model.onnx (`onnx_model`, else the final graph lowered here when it can be)
        and report.html; returns the report's path."""
        from .viz import write_report
        onnx = self._write_onnx(onnx_model, gm if gm is not None else self.last)
        return write_report(self.dir, self.snapshots, report, memory_plan, onnx,
                            title or self.title)

    def _write_onnx(self, model, gm) -> dict:
        """{'file': 'model.onnx' or None, 'note': what happened}. A graph that cannot be
        lowered (an op without a converter) still gets its report: the note says why."""
        from fxc.errors import FxcError
        from fxc.lowering import save, to_onnx
        note = "the model the onnxruntime backend runs"
        if model is None:
            if gm is None:
                return {"file": None, "note": "no graph to lower"}
            try:
                model = to_onnx(gm, check=False).model
                note = "the final graph, lowered by fxc.lowering for reading"
            except FxcError as e:  # the whole message: it lists every unsupported op
                why = " ".join(line.strip() for line in str(e).splitlines())
                log.warning("dump: no model.onnx: %s", why)
                return {"file": None, "note": "not lowered: " + why[:600]}
        files = save(model, os.path.join(self.dir, "model.onnx"))
        if len(files) > 1:
            note += f" (weights in {files[1]})"
        return {"file": "model.onnx", "note": note}


def node_table(gm: fx.GraphModule) -> str:
    rows = []
    for n in gm.graph.nodes:
        src = ir.source_line(n) or ""
        rows.append(f"{n.name:<32} {ir.op_name(n):<48} {ir.fmt_meta(n):<28} {src}")
    return "\n".join(rows) + "\n"

"""Stage dumps: with `dump_dir`, the graph after capture and after each pass as text.

Files: `NN_<stage>.py` (the fx code of the stage, runnable to read) and `NN_<stage>.txt`
(one line a node: name, op, output meta, source line).
"""
from __future__ import annotations

import os

import torch.fx as fx

from . import ir


class StageDumper:
    def __init__(self, directory: str):
        self.dir = directory
        self.index = 0
        os.makedirs(directory, exist_ok=True)

    def __call__(self, stage: str, gm: fx.GraphModule) -> None:
        base = os.path.join(self.dir, f"{self.index:02d}_{stage}")
        self.index += 1
        with open(base + ".py", "w") as f:
            f.write(f"# fxc stage: {stage}\n{gm.code}")
        with open(base + ".txt", "w") as f:
            f.write(node_table(gm))


def node_table(gm: fx.GraphModule) -> str:
    rows = []
    for n in gm.graph.nodes:
        src = ir.source_line(n) or ""
        rows.append(f"{n.name:<32} {ir.op_name(n):<48} {ir.fmt_meta(n):<28} {src}")
    return "\n".join(rows) + "\n"

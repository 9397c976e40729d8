"""The compile report: what each stage did, as a text table (and data for the dumps).

Two sections say what is left after the passes (`coverage`): the rewrites that fired, pass by
pass (from the pass records), and the ops of the final graph, first as the one sum every
count of the report and of `fxc demo` agrees with (nodes = kernels + views; issue 16.8: they
used to disagree), then grouped by kind with counts:
fxc's fused ops, the library kernels the pattern passes aim for (GEMMs, convolutions, SDPA,
norms, softmax), and every other ATen op, each a kernel of its own at run time, the part a
generated kernel could still take. Views (view, permute, expand, slice, split, getitem ...)
launch no kernel and are only counted.
"""
from __future__ import annotations

import collections
import dataclasses
import operator
from typing import Any

import torch
import torch.fx as fx

from fxc import ir
from fxc.passes import PassRecord

aten = torch.ops.aten
# What the pattern passes rewrite into: library kernels (cuBLAS, cuDNN, flash attention, ...).
LIBRARY_OPS = {
    aten.linear, aten.matmul, aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.convolution,
    aten.scaled_dot_product_attention, aten.layer_norm, aten.native_layer_norm, aten.rms_norm,
    aten._fused_rms_norm, aten.group_norm, aten.native_group_norm, aten.softmax,
    aten._softmax, aten.log_softmax, aten._native_batch_norm_legit_no_training,
    aten.embedding, aten.gelu, aten.silu, aten.hardswish, aten.hardsigmoid,
}


@dataclasses.dataclass
class CompileReport:
    device: str
    precision: str
    backend: str
    capture_ms: float
    captured_nodes: int
    records: list[PassRecord]
    backend_ms: float = 0.0
    total_ms: float = 0.0
    backend_choice: str = ""  # under backend='auto': which backend, and why the others were not
    sections: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def add_section(self, title: str, lines: list[str]) -> None:
        self.sections.append((title, lines))

    def __str__(self) -> str:
        out = [f"fxc compile report  device={self.device}  precision={self.precision}  "
               f"backend={self.backend}",
               f"{'stage':<22}{'ms':>9}{'rewrites':>10}{'nodes':>8}  notes"]
        if self.backend_choice:
            out.insert(1, f"backend: {self.backend_choice}")
        out.append(f"{'capture':<22}{self.capture_ms:>9.1f}{'':>10}{self.captured_nodes:>8}")
        for r in self.records:
            if r.skipped:
                out.append(f"{r.name:<22}{'-':>9}{'-':>10}{'-':>8}  skipped: {r.skipped}")
                continue
            note = "; ".join(r.notes)
            out.append(f"{r.name:<22}{r.ms:>9.1f}{r.rewrites:>10}{r.nodes_after:>8}  {note}")
        out.append(f"{'backend build':<22}{self.backend_ms:>9.1f}")
        out.append(f"{'total':<22}{self.total_ms:>9.1f}")
        for title, lines in self.sections:
            out.append(f"\n{title}:")
            out.extend("  " + line for line in lines)
        return "\n".join(out)


# -- what is left after the passes ----------------------------------------------------------------

def is_view(node: fx.Node) -> bool:
    """The op launches no kernel: getitem, or an ATen op whose result aliases its input and
    writes nothing (view, permute, expand, slice, split, ...)."""
    if node.target is operator.getitem:
        return True
    t = node.target
    if not isinstance(t, torch._ops.OpOverload):
        return False
    rets = t._schema.returns
    return bool(rets) and all(r.alias_info is not None and not r.alias_info.is_write
                              for r in rets)


def op_census(gm: fx.GraphModule) -> dict[str, collections.Counter]:
    """The final graph's call nodes by group: 'fxc' fused ops, 'library' kernels, 'aten'
    (every other ATen op: one kernel each), 'other' callables, and 'views' (no kernel)."""
    groups = {k: collections.Counter() for k in ("fxc", "library", "aten", "other", "views")}
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        name = _op_name(n.target)
        if is_view(n):
            groups["views"][name] += 1
        elif name.startswith("fxc."):
            groups["fxc"][name] += 1
        elif getattr(n.target, "overloadpacket", None) in LIBRARY_OPS:
            groups["library"][name] += 1
        elif name.startswith("aten."):
            groups["aten"][name] += 1
        else:
            groups["other"][name] += 1
    return groups


def _op_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        ns = target.namespace
        base = target._schema.name.split("::", 1)[-1]
        return f"{ns}.{base}" if target._overloadname == "default" else \
            f"{ns}.{base}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def coverage(gm: fx.GraphModule, records: list[PassRecord]) -> list[tuple[str, list[str]]]:
    """The report's two sections on what the passes did and what they left."""
    fired = []
    for r in records:
        if r.skipped or not r.rewrites:
            continue
        said = [n for n in r.notes if not n.startswith(("refused", "kept"))]
        said = f" ({'; '.join(said)})" if said else ""
        fired.append(f"{r.name}: {r.rewrites} rewrite(s){said}")
    groups = op_census(gm)
    labels = {"fxc": "fxc fused ops", "library": "library kernels (GEMM, conv, SDPA, norms)",
              "aten": "other ATen ops, one kernel each", "other": "other callables"}
    left = [node_summary(gm, groups)]
    for key, label in labels.items():
        c = groups[key]
        if c:
            left.append(f"{label}: {sum(c.values())}")
            left.append("    " + ", ".join(f"{op} x{k}" for op, k in _ordered(c)))
    views = groups["views"]
    left.append(f"views and projections (no kernel, not listed): {sum(views.values())}")
    return [("rewrites that fired", fired or ["(none)"]),
            ("ops left after the passes", left)]


def node_summary(gm: fx.GraphModule, groups: dict[str, collections.Counter]) -> str:
    """How the 'nodes' column (and fxc demo's 'after', the same ir.count_compute) splits into
    kernels and views: the three numbers a reader meets must add up, getitem aside."""
    kernels = sum(sum(groups[k].values()) for k in ("fxc", "library", "aten", "other"))
    projections = sum(1 for n in ir.call_nodes(gm) if n.target is operator.getitem)
    views = sum(groups["views"].values()) - projections
    return (f"{ir.count_compute(gm)} nodes after the passes (the last 'nodes' above; fxc demo's "
            f"'after') = {kernels} kernels + {views} views; {projections} getitem "
            f"projection(s) are not counted as nodes")


def _ordered(c: collections.Counter) -> list[tuple[str, int]]:
    return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))

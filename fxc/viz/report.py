"""The HTML report: every stage's graph, what each pass changed, the pass table and the
memory plan, in one self-contained file (inline JS and CSS, no network) that opens offline.

    path = write_report(directory, snapshots, report=None, memory_plan=None, onnx=None)

The page data is one JSON object embedded in the HTML (`build_data` makes it; tests read it
too). Layouts are computed here, in Python (layout.py), once per distinct stage graph: a pass
that changed nothing reuses the layout of the stage before, and a changed stage starts from
the stage before's order, so unchanged nodes keep their places as you step through passes.
"""
from __future__ import annotations

import html
import json
import os
import time
from importlib import resources
from typing import Any

from . import diff as diffs
from .layout import layered
from .snapshot import NodeInfo, Snapshot

FAMILIES = [  # (family, substrings of the op name); first match wins
    ("fused", ("fxc.",)),
    ("attention", ("scaled_dot_product", "attention")),
    ("conv", ("convolution", "conv")),
    ("matmul", ("linear", "addmm", ".mm.", "bmm", "matmul", "baddbmm")),
    ("norm", ("batch_norm", "layer_norm", "group_norm", "rms_norm", "instance_norm")),
    ("activation", ("relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
                    "softmax", "clamp", "hardtanh", "elu", "mish", "erf")),
    ("pool", ("pool",)),
    ("reduce", ("mean", "sum", "amax", "amin", ".max.", ".min.", "var", "std", "argmax",
                "cumsum", "prod")),
    ("embedding", ("embedding", "index", "gather")),
    ("shape", ("view", "reshape", "permute", "transpose", "expand", "unsqueeze", "squeeze",
               "slice", "select", "cat", "split", "clone", "contiguous", "_to_copy", "flatten",
               "t.default", "stack", "chunk", "pad", "alias", "unbind", "repeat")),
    ("elementwise", ("add", "mul", "sub", "div", "pow", "sqrt", "rsqrt", "exp", "log", "neg",
                     "where", "abs", "reciprocal", "masked_fill", "eq", "ne", "lt", "gt", "le",
                     "ge", "logical", "bitwise", "maximum", "minimum", "sin", "cos", "full",
                     "ones", "zeros", "arange", "scalar_tensor", "fill")),
]
SHORT = {  # ATen names whose suffixes say more than a node box has room for
    "_native_batch_norm_legit_no_training": "batch_norm", "_native_batch_norm_legit": "batch_norm",
    "max_pool2d_with_indices": "max_pool2d", "scaled_dot_product_attention": "sdpa",
    "split_with_sizes": "split", "_scaled_dot_product_efficient_attention": "sdpa",
    "_scaled_dot_product_flash_attention_for_cpu": "sdpa",
}
NODE_H = {"op": 40, "input": 34, "output": 34, "getitem": 20}


def family(n: NodeInfo) -> str:
    if n.kind in ("input", "output"):
        return n.kind
    if n.kind == "getitem":
        return "shape"
    for fam, keys in FAMILIES:
        if any(k in n.op for k in keys):
            return fam
    return "other"


def label(n: NodeInfo) -> str:
    """What the node box says in big type: the op without namespace and overload."""
    if n.kind == "input":
        return n.name
    if n.kind == "output":
        return "output"
    if n.kind == "getitem":
        index = n.args.rstrip(")").rsplit(", ", 1)[-1] if n.args else "?"
        return f"[{index}]"
    parts = n.op.split(".")
    name = parts[1] if len(parts) == 3 else n.op
    return SHORT.get(name, name.lstrip("_"))


def _width(n: NodeInfo) -> float:
    if n.kind == "getitem":
        return 44.0
    text = max(7.4 * len(label(n)) + 26, 6.1 * min(len(compact_meta(n.meta)), 40) + 22)
    return float(min(max(text, 72), 250))


class _Table:
    """Node records shared by all stages (a node that no pass touched is stored once), and
    interned strings (source lines and module paths repeat a lot)."""

    def __init__(self):
        self.rows: list[list] = []
        self.index: dict[tuple, int] = {}
        self.strings: dict[str, int] = {}

    def string(self, s: str) -> int:
        return self.strings.setdefault(s, len(self.strings))

    def record(self, n: NodeInfo) -> int:
        key = (n.name, n.op, n.meta, n.source, n.module, n.precision, tuple(n.constants), n.args)
        if key not in self.index:
            self.index[key] = len(self.rows)
            self.rows.append([n.name, n.op, label(n), n.kind, family(n), n.meta, n.precision,
                              self.string(n.source), self.string(n.module),
                              [list(c) for c in n.constants], _width(n), NODE_H[n.kind], n.args,
                              compact_meta(n.meta)])
        return self.index[key]


def compact_meta(meta: str) -> str:
    """The box's second line: 'f32[1,64,56,56]'; of a tuple, the first value and a count."""
    if meta.startswith("(") and meta.endswith(")"):
        items = meta[1:-1].split("], ")
        first = items[0] + ("]" if len(items) > 1 else "")
        meta = first + (f" +{len(items) - 1}" if len(items) > 1 else "")
    return meta.replace(", ", ",")


def build_data(snapshots: list[Snapshot], report=None, memory_plan=None,
               onnx: dict | None = None, title: str = "fxc compile") -> dict[str, Any]:
    """The page's JSON: stages with layouts and diffs, the pass table, the memory plan."""
    t0 = time.perf_counter()
    table = _Table()
    stage_diffs = [None] + [diffs.diff(a, b) for a, b in zip(snapshots, snapshots[1:])]
    fate = diffs.fates(snapshots, stage_diffs) if snapshots else []
    groups = _groups(snapshots, fate)
    group_ids = {g: i for i, g in enumerate(groups)}
    layouts: list[dict] = []
    stages: list[dict] = []
    codes: dict[str, int] = {}
    for k, snap in enumerate(snapshots):
        ids = [table.record(n) for n in snap.nodes]
        local = {n.name: i for i, n in enumerate(snap.nodes)}
        edges = [[local[i], j] for j, n in enumerate(snap.nodes) for i in n.inputs if i in local]
        d = stage_diffs[k]
        nxt = stage_diffs[k + 1] if k + 1 < len(snapshots) else None
        stages.append({
            "name": snap.stage, "nodes": ids, "edges": edges,
            "layout": _layout_for(ids, edges, table, stages, layouts),
            "constants": snap.constants, "code": codes.setdefault(snap.code, len(codes)),
            "added": [local[a] for a in d.added] if d else [],
            "changed": [local[c] for c in d.changed] if d else [],
            "removed": [[r, d.replaced_by.get(r)] for r in d.removed] if d else [],
            "removedNext": [local[r] for r in nxt.removed] if nxt else [],
            "replacedNext": {str(local[r]): a for r, a in nxt.replaced_by.items()} if nxt else {},
            "group": [group_ids.get(fate[k].get(n.name), -1) for n in snap.nodes],
        })
    return {
        "title": title, "generated": time.strftime("%Y-%m-%d %H:%M"),
        "strings": list(table.strings), "records": table.rows, "stages": stages,
        "layouts": layouts, "code": list(codes),
        "groups": [{"node": g, "label": lbl, "members": m} for g, (lbl, m) in groups.items()],
        "passes": _pass_table(report, snapshots), "header": _header(report),
        "sections": [[t, list(lines)] for t, lines in (report.sections if report else [])],
        "memory": memory_data(memory_plan), "onnx": onnx or {"file": None, "note": ""},
        "buildSeconds": round(time.perf_counter() - t0, 3),
    }


def _layout_for(ids: list[int], edges: list[list[int]], table: _Table, stages: list[dict],
                layouts: list[dict]) -> int:
    """Index into `layouts`: the stage before's when the graph is the same, else a new one
    seeded with the stage before's x of the nodes it kept."""
    if stages and stages[-1]["nodes"] == ids and stages[-1]["edges"] == edges:
        return stages[-1]["layout"]
    seed = None
    if stages:
        prev = stages[-1]
        lay = layouts[prev["layout"]]
        where = {table.rows[r][0]: lay["x"][i] for i, r in enumerate(prev["nodes"])}
        seed = [where.get(table.rows[r][0]) for r in ids]
    t0 = time.perf_counter()
    res = layered(len(ids), [tuple(e) for e in edges], [table.rows[r][10] for r in ids],
                  [table.rows[r][11] for r in ids], seed_x=seed)
    layouts.append({"x": [round(v, 1) for v in res.x], "y": [round(v, 1) for v in res.y],
                    "paths": res.paths, "width": round(res.width, 1),
                    "height": round(res.height, 1), "layers": res.layers,
                    "crossings": res.crossings, "seconds": round(time.perf_counter() - t0, 3)})
    return len(layouts) - 1


def _groups(snapshots: list[Snapshot], fate: list[dict]) -> dict[str, tuple[str, int]]:
    """Fusion groups: nodes of the final graph that an fxc op is, or that two or more compute
    nodes of earlier stages became. -> {final node: (its label, members over all stages)}."""
    if not snapshots:
        return {}
    final = snapshots[-1].by_name()
    members: dict[str, set[str]] = {}
    for snap, f in zip(snapshots, fate):
        for n in snap.nodes:
            target = f.get(n.name)
            if target and n.kind == "op" and (target != n.name or n.op != final[target].op):
                members.setdefault(target, set()).add(n.name)
    out = {}
    for name, n in final.items():
        m = members.get(name, set()) - {name}
        if n.kind == "op" and (n.op.startswith("fxc.") or len(m) >= 2):
            out[name] = (label(n), len(m))
    return out


def _pass_table(report, snapshots: list[Snapshot]) -> list[dict]:
    stage_of = {s.stage: k for k, s in enumerate(snapshots)}
    if report is None:
        return [{"name": s.stage, "stage": k} for k, s in enumerate(snapshots)]
    rows = [{"name": "capture", "ms": round(report.capture_ms, 1), "nodes": report.captured_nodes,
             "stage": stage_of.get("capture")}]
    for r in report.records:
        rows.append({"name": r.name, "ms": None if r.skipped else round(r.ms, 1),
                     "rewrites": None if r.skipped else r.rewrites, "nodes": r.nodes_after,
                     "notes": "; ".join(r.notes), "skipped": r.skipped,
                     "stage": None if r.skipped else stage_of.get(r.name)})
    rows.append({"name": "backend build", "ms": round(report.backend_ms, 1)})
    rows.append({"name": "total", "ms": round(report.total_ms, 1)})
    return rows


def _header(report) -> dict:
    if report is None:
        return {}
    return {"device": report.device, "precision": report.precision, "backend": report.backend}


def memory_data(plan) -> dict | None:
    """The plan's tensors as [name, offset, size, nbytes, first, last, device] rows."""
    if plan is None:
        return None
    rows = [[t.name, t.offset, t.size, t.nbytes, t.first, t.last, t.device] for t in plan.tensors]
    return {"tensors": rows, "arenas": dict(plan.arenas), "lowerBounds": dict(plan.lower_bounds),
            "alignment": plan.alignment, "strategy": plan.strategy,
            "noReuse": plan.no_reuse_bytes, "summary": list(plan.summary()),
            "unplanned": [list(u) for u in plan.unplanned]}


def render_html(data: dict) -> str:
    """One HTML file: the template with the CSS, the JS and the data inlined."""
    assets = resources.files(__package__) / "assets"
    page = (assets / "report.html").read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (page.replace("/*FXC_CSS*/", (assets / "report.css").read_text(encoding="utf-8"))
                .replace("/*FXC_JS*/", (assets / "report.js").read_text(encoding="utf-8"))
                .replace("FXC_TITLE", html.escape(data["title"]))
                .replace("FXC_DATA", payload))


def write_report(directory: str, snapshots: list[Snapshot], report=None, memory_plan=None,
                 onnx: dict | None = None, title: str = "fxc compile") -> str:
    """Write `report.html` into `directory`; returns its path."""
    path = os.path.join(directory, "report.html")
    page = render_html(build_data(snapshots, report, memory_plan, onnx, title))
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path

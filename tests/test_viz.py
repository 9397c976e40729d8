"""The compile report (fxc/viz): the layered layout, what each pass changed, and the page
itself, opened in a real headless Chromium (Debian's /usr/bin/chromium, driven over the
DevTools pipe by fxc.viz.headless). Screenshots are kept in test-artifacts/."""
import json
import os
import pathlib
import re
import time

import onnx
import pytest
import torch
import torch.fx as fx

import fxc
from fxc.cli import main as cli_main, parse_input_shapes
from fxc.dump import StageDumper
from fxc.errors import FxcOptionError
from fxc.viz import build_data, write_report
from fxc.viz.diff import diff, fates
from fxc.viz.layout import layered
from fxc.viz.snapshot import NodeInfo, Snapshot

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="needs Debian's chromium at /usr/bin/chromium (scripts/setup.sh installs it: "
           "apt-get install chromium)")
ARTIFACTS = pathlib.Path(__file__).resolve().parents[1] / "test-artifacts"


def page_data(path) -> dict:
    html = pathlib.Path(path).read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="fxc-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def drawn_names(txt_path) -> list[str]:
    """The nodes a stage should draw, from dump.py's node table (not from fxc.viz): every
    node but parameters and buffers (get_attr)."""
    lines = pathlib.Path(txt_path).read_text().splitlines()
    rows = [line.split() for line in lines if line.strip()]
    return [r[0] for r in rows if not r[1].startswith("get_attr")]


# ---------- synthetic graphs (no torch: the layout and the page at scale) ----------

def node(name, op, inputs=(), kind="op", meta="f32[2, 8, 16]", consts=()):
    return NodeInfo(name=name, op=op, kind=kind, meta=meta, precision="fp32", source="",
                    module="", inputs=list(inputs), constants=list(consts))


def weight(name):
    return [(name + "_w", "f32[16, 16]")]


def transformer_snapshot(blocks: int) -> Snapshot:
    """A pre-norm transformer's shape: a mask used by every block (a long fan-out), residual
    skips, q/k/v branches. 15 nodes a block."""
    nodes = [node("x", "placeholder", kind="input"), node("mask", "placeholder", kind="input")]
    prev = "x"
    for b in range(blocks):
        n = lambda s: f"{s}_{b}"  # noqa: E731
        nodes += [node(n("ln"), "aten.layer_norm.default", [prev]),
                  *[node(n(p), "aten.linear.default", [n("ln")], consts=weight(n(p)))
                    for p in ("q", "k", "v")],
                  *[node(n(p + "v"), "aten.view.default", [n(p)]) for p in ("q", "k", "v")],
                  node(n("mm"), "aten.matmul.default", [n("qv"), n("kv")]),
                  node(n("madd"), "aten.add.Tensor", [n("mm"), "mask"]),
                  node(n("sm"), "aten.softmax.int", [n("madd")]),
                  node(n("av"), "aten.matmul.default", [n("sm"), n("vv")]),
                  node(n("res"), "aten.add.Tensor", [prev, n("av")]),
                  node(n("fc"), "aten.linear.default", [n("res")], consts=weight(n("fc"))),
                  node(n("act"), "aten.gelu.default", [n("fc")]),
                  node(n("out"), "aten.add.Tensor", [n("res"), n("act")])]
        prev = n("out")
    nodes.append(node("output", "output", [prev], kind="output", meta=""))
    return Snapshot("capture", nodes, "# code\n", 4 * blocks)


def fuse_linear_gelu(snap: Snapshot) -> Snapshot:
    """The next stage: every linear + gelu becomes one fxc.linear_act (named like a pass would)."""
    out, renamed = [], {}
    by = snap.by_name()
    for n in snap.nodes:
        if n.op == "aten.gelu.default":
            fc = by[n.inputs[0]]
            fused = node(f"linear_act_{len(renamed)}", "fxc.linear_act.default", fc.inputs,
                         consts=fc.constants)
            renamed[n.name] = fused.name
            out.append(fused)
        elif n.op == "aten.linear.default" and n.name.startswith("fc_"):
            continue
        else:
            inputs = [renamed.get(i, i) for i in n.inputs]
            out.append(node(n.name, n.op, inputs, n.kind, n.meta, n.constants))
    return Snapshot("fuse_linear", out, "# code\n", snap.constants)


# ---------- layout ----------

def test_layout_of_2500_nodes_is_fast_straight_and_non_overlapping():
    snap = transformer_snapshot(170)
    idx = {n.name: i for i, n in enumerate(snap.nodes)}
    edges = [(idx[i], idx[n.name]) for n in snap.nodes for i in n.inputs]
    t0 = time.perf_counter()
    lay = layered(len(snap.nodes), edges, [120.0] * len(snap.nodes), [40.0] * len(snap.nodes))
    seconds = time.perf_counter() - t0
    assert len(snap.nodes) >= 2500
    assert seconds < 15, f"layout of {len(snap.nodes)} nodes took {seconds:.1f} s"
    assert all(lay.y[u] < lay.y[v] for u, v in edges)  # every edge points down
    rows: dict[float, list[float]] = {}
    for x, y in zip(lay.x, lay.y):
        rows.setdefault(y, []).append(x)
    for xs in rows.values():  # no two nodes of a layer overlap
        xs.sort()
        assert all(b - a >= 120.0 for a, b in zip(xs, xs[1:]))
    chain = [lay.x[idx[f"out_{b}"]] for b in range(170)]
    assert max(chain) - min(chain) < 1.0, "the residual stream should run straight down"
    assert lay.crossings <= lay.crossings_initial
    assert sum(len(p) for p in lay.paths) < 40 * len(edges), "long edges share one bus"
    paths_of: dict[int, list] = {}
    for (u, v), path in zip(edges, lay.paths):
        assert path[-2:] == [round(lay.x[v], 1), round(lay.y[v] - 20.0, 1)]  # ends at v's top
        paths_of.setdefault(u, []).append(path)
    for (u, v), path in zip(edges, lay.paths):  # starts at u's bottom, or on u's drawn bus
        start = (path[0], path[1])
        at_u = start == (round(lay.x[u], 1), round(lay.y[u] + 20.0, 1))
        assert at_u or any(on_polyline(start, p) for p in paths_of[u] if p is not path), (u, v)


def on_polyline(pt, path) -> bool:
    pts = list(zip(path[::2], path[1::2]))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if abs(x0 - x1) < 0.5 and abs(pt[0] - x0) < 0.5 and min(y0, y1) <= pt[1] <= max(y0, y1):
            return True
    return pt in pts


def test_barycenter_ordering_removes_a_crossing():
    # a, b on top; in graph order c (b's child) comes before d (a's child): one crossing
    lay = layered(4, [(1, 2), (0, 3)], [60.0] * 4, [30.0] * 4)
    assert lay.crossings_initial == 1 and lay.crossings == 0
    assert (lay.x[0] < lay.x[1]) == (lay.x[3] < lay.x[2])


# ---------- what a pass changed ----------

def snap(stage, *nodes):
    return Snapshot(stage, list(nodes), "", 0)


def test_diff_names_the_node_that_replaced_each_removed_one():
    before = snap("a", node("x", "placeholder", kind="input"),
                  node("conv", "aten.convolution.default", ["x"], consts=[("w", "")]),
                  node("relu", "aten.relu.default", ["conv"]),
                  node("down", "aten.convolution.default", ["x"], consts=[("w2", "")]),
                  node("add", "aten.add.Tensor", ["relu", "down"]),
                  node("dead", "aten.neg.default", ["x"]),
                  node("output", "output", ["add"], kind="output"))
    after = snap("b", node("x", "placeholder", kind="input"),
                 node("conv_act", "fxc.conv2d_act.default", ["x"], consts=[("w", "")]),
                 node("down", "aten.convolution.default", ["x"], consts=[("w2", "")]),
                 node("add", "aten.add.Tensor", ["conv_act", "down"]),
                 node("output", "output", ["add"], kind="output"))
    d = diff(before, after)
    assert d.added == ["conv_act"] and sorted(d.removed) == ["conv", "dead", "relu"]
    assert d.replaced_by == {"conv": "conv_act", "relu": "conv_act"}  # 'dead' was deleted
    assert d.changed == []  # add now reads the fused op: a rewiring, not a change of add


def test_diff_ties_are_settled_by_the_run_of_removed_nodes_and_by_the_main_node():
    # A downsample conv ties with the main conv on its input and with the residual conv on
    # its consumer; only its own replacement is in both (fuse_bn on resnet's downsample).
    before = snap("a", node("x", "placeholder", kind="input"),
                  node("c1", "aten.convolution.default", ["x"]), node("bn1", "bn", ["c1"]),
                  node("r", "aten.relu.default", ["bn1"]),
                  node("c2", "aten.convolution.default", ["r"]), node("bn2", "bn", ["c2"]),
                  node("cd", "aten.convolution.default", ["x"]), node("bnd", "bn", ["cd"]),
                  node("add", "aten.add.Tensor", ["bn2", "bnd"]),
                  node("output", "output", ["add"], kind="output"))
    after = snap("b", node("x", "placeholder", kind="input"),
                 node("f1", "aten.convolution.default", ["x"]),
                 node("r", "aten.relu.default", ["f1"]),
                 node("f2", "aten.convolution.default", ["r"]),
                 node("fd", "aten.convolution.default", ["x"]),
                 node("add", "aten.add.Tensor", ["f2", "fd"]),
                 node("output", "output", ["add"], kind="output"))
    d = diff(before, after)
    assert d.replaced_by["cd"] == d.replaced_by["bnd"] == "fd"
    assert d.replaced_by["c1"] == "f1" and d.replaced_by["bn2"] == "f2"
    # three linears on one input merged into one GEMM + split: the GEMM takes their place
    before = snap("a", node("h", "placeholder", kind="input"),
                  *[node(p, "aten.linear.default", ["h"], consts=[(p + "_w", "")]) for p in "qkv"],
                  *[node(p + "v", "aten.view.default", [p]) for p in "qkv"],
                  node("output", "output", ["qv", "kv", "vv"], kind="output"))
    after = snap("b", node("h", "placeholder", kind="input"),
                 node("qkv", "aten.linear.default", ["h"], consts=[("qkv_w", "")]),
                 node("split", "aten.split_with_sizes.default", ["qkv"]),
                 *[node(f"g{i}", "getitem", ["split"], kind="getitem") for i in range(3)],
                 *[node(p + "v", "aten.view.default", [f"g{i}"]) for i, p in enumerate("qkv")],
                 node("output", "output", ["qv", "kv", "vv"], kind="output"))
    assert diff(before, after).replaced_by == {"q": "qkv", "k": "qkv", "v": "qkv"}


def test_diff_folding_into_constants_and_explicit_provenance():
    # batch norm folded into the conv's weights: the conv keeps its name, reads new constants
    before = snap("a", node("x", "placeholder", kind="input"),
                  node("conv", "aten.convolution.default", ["x"], consts=[("w", "")]),
                  node("bn", "bn", ["conv"], consts=[("gamma", "")]),
                  node("output", "output", ["bn"], kind="output"))
    after = snap("b", node("x", "placeholder", kind="input"),
                 node("conv", "aten.convolution.default", ["x"], consts=[("w_folded", "")]),
                 node("output", "output", ["conv"], kind="output"))
    d = diff(before, after)
    assert d.replaced_by == {"bn": "conv"} and d.changed == ["conv"]
    # a pass that records node.meta["fxc_from"] is believed over the graph's shape
    fused = node("fused", "fxc.op.default", ["x"])
    fused.fused_from = ["conv", "bn"]
    after = snap("b", node("x", "placeholder", kind="input"), fused,
                 node("output", "output", ["fused"], kind="output"))
    assert diff(before, after).replaced_by == {"conv": "fused", "bn": "fused"}


def test_fates_follow_replacements_through_stages():
    s0 = transformer_snapshot(2)
    s1 = fuse_linear_gelu(s0)
    f = fates([s0, s1], [None, diff(s0, s1)])
    assert f[0]["fc_0"] == "linear_act_0" and f[0]["act_1"] == "linear_act_1"
    assert f[0]["ln_0"] == "ln_0" and f[1]["linear_act_0"] == "linear_act_0"
    data = build_data([s0, s1])
    groups = {g["node"]: g for g in data["groups"]}
    assert set(groups) == {"linear_act_0", "linear_act_1"}
    assert groups["linear_act_0"]["members"] == 2


# ---------- a real compile: resnet18 (tiny) with dump_dir ----------

@pytest.fixture(scope="module")
def resnet_dump(tmp_path_factory):
    from fxc.models import get
    model, inputs = get("resnet18", size="tiny")
    out = tmp_path_factory.mktemp("dump_resnet18")
    compiled = fxc.compile(model, inputs, dump_dir=str(out))
    return out, compiled


def test_dump_dir_holds_stages_onnx_and_a_self_contained_report(resnet_dump):
    out, compiled = resnet_dump
    data = page_data(out / "report.html")
    ran = ["capture"] + [r.name for r in compiled.report_data.records if not r.skipped]
    assert [s["name"] for s in data["stages"]] == ran
    for k, stage in enumerate(data["stages"]):  # each stage draws exactly its graph's nodes
        names = [data["records"][r][0] for r in stage["nodes"]]
        assert names == drawn_names(out / f"{k:02d}_{stage['name']}.txt")
        assert (out / f"{k:02d}_{stage['name']}.py").exists()
    final = [n for n in compiled.graph.graph.nodes if n.op != "get_attr"]
    assert len(data["stages"][-1]["nodes"]) == len(final)
    model = onnx.load(str(out / "model.onnx"))  # beside it, for Netron
    assert len(model.graph.node) > 0 and data["onnx"]["file"] == "model.onnx"
    html = (out / "report.html").read_text()
    remote = r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?https?:"""
    assert not re.search(remote, html)  # nothing to fetch: it opens offline
    if compiled.memory_plan is not None:
        assert len(data["memory"]["tensors"]) == len(compiled.memory_plan.tensors)


def test_resnet_fusions_are_traced_back_to_the_captured_nodes(resnet_dump):
    out, _ = resnet_dump
    data = page_data(out / "report.html")
    rec = data["records"]
    capture, final = data["stages"][0], data["stages"][-1]
    fused = [rec[r][0] for r in final["nodes"] if rec[r][1].startswith("fxc.")]
    groups = {g["node"]: i for i, g in enumerate(data["groups"])}
    assert fused and set(fused) <= set(groups)
    for name in fused:  # conv + batch norm (+ add) + relu of the captured graph, each
        ops = {rec[r][1] for r, g in zip(capture["nodes"], capture["group"]) if g == groups[name]}
        assert {"aten.convolution.default", "aten._native_batch_norm_legit_no_training.default",
                "aten.relu.default"} <= ops, (name, ops)
    by_name = {s["name"]: s for s in data["stages"]}
    assert all(by for _, by in by_name["fuse_conv"]["removed"]), "all went into a fused op"
    stage = by_name["fuse_bn"]
    relus = {i for i, r in enumerate(stage["nodes"]) if rec[r][1] == "aten.relu.default"}
    assert not relus & set(stage["changed"])


def test_report_notes_why_there_is_no_onnx_model(tmp_path):
    from torch.fx.passes.shape_prop import ShapeProp
    gm = fx.symbolic_trace(lambda x: torch.ops.aten.special_bessel_j0.default(x) + 1)
    ShapeProp(gm).propagate(torch.randn(2, 3))
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        if tm is not None and n.op != "output":
            n.meta["val"] = torch.empty(tm.shape, dtype=tm.dtype)
    dumper = StageDumper(str(tmp_path))
    dumper("capture", gm)
    data = page_data(dumper.finish())
    assert data["onnx"]["file"] is None and "bessel" in data["onnx"]["note"]
    assert not (tmp_path / "model.onnx").exists() and (tmp_path / "00_capture.py").exists()


# ---------- the page in headless Chromium ----------

@pytest.fixture(scope="module")
def browser():
    from fxc.viz.headless import Chromium
    with Chromium(CHROMIUM, width=1600, height=1000) as b:
        yield b


def graph_state(page) -> dict:
    return page.evaluate("({...document.getElementById('graph').dataset,"
                         " drawn: document.querySelectorAll('#nodes .node').length,"
                         " paths: document.querySelectorAll('#edges .edge').length,"
                         " names: [...document.querySelectorAll('#nodes .node')]"
                         ".map(e => e.dataset.name),"
                         " error: document.body.dataset.error || null})")


def shoot(page, name: str) -> pathlib.Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    return path


@needs_chromium
def test_resnet_report_in_chromium(resnet_dump, browser):
    out, compiled = resnet_dump
    data = page_data(out / "report.html")
    last = len(data["stages"]) - 1
    final_names = drawn_names(out / f"{last:02d}_{data['stages'][-1]['name']}.txt")
    capture_names = drawn_names(out / "00_capture.txt")
    page = browser.open((out / "report.html").as_uri())
    page.wait_for("document.body.dataset.ready === '1'")
    st = graph_state(page)  # the final graph, by default
    assert st["stage"] == str(last) and st["drawn"] == int(st["nodes"]) == len(final_names)
    assert st["names"] == final_names
    shoot(page, "viz_resnet18_final.png")

    page.set_hash("stage=0&color=fusion")  # capture, coloured by the fusion group it ends in
    page.wait_for("document.getElementById('graph').dataset.stage === '0'")
    st = graph_state(page)
    assert st["names"] == capture_names and len(capture_names) != len(final_names)
    assert page.evaluate("document.querySelectorAll('#hulls .hull').length") >= len(
        [g for g in data["groups"] if g["label"].startswith("conv2d")])
    assert "conv2d_act" in page.evaluate("document.getElementById('legend').textContent")
    shoot(page, "viz_resnet18_capture_fusion.png")

    target = next(n for n in capture_names if n.startswith("relu"))  # a real click on a node
    box = page.evaluate(
        f"(async () => {{ fxcReport.select({json.dumps(target)}, true); fxcReport.select(null);"
        " await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));"
        f" const r = document.querySelector('.node[data-name={json.dumps(target)}] rect.box')"
        ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    page.click(*box)
    assert page.evaluate("document.querySelector('#details h3').textContent") == target
    details = page.evaluate("document.getElementById('details').textContent")
    assert "Ends up in" in details and "models/resnet.py" in details  # its fusion, its source line

    page.evaluate("document.getElementById('search').focus()")  # search by name: centre, mark
    page.type_text("maxpool" if "maxpool" in capture_names else "max_pool2d")
    page.press("Enter", 13)
    assert page.evaluate("document.querySelectorAll('.node.found').length") >= 1
    found = page.evaluate("document.querySelector('#details h3').textContent")
    assert found.startswith("max_pool2d")

    assert page.evaluate("document.querySelectorAll('#labels text').length") > 0
    for _ in range(8):  # zoomed far out, labels are not drawn
        page.wheel(700, 500, 400)
    page.wait_for("document.getElementById('graph').classList.contains('far')")
    assert page.evaluate("document.querySelectorAll('#labels text').length") == 0

    page.set_hash(f"stage={last}&tab=memory")
    page.wait_for("document.getElementById('view-memory').classList.contains('on')")
    plan = compiled.memory_plan
    slots = page.evaluate("document.querySelectorAll('#view-memory .slot').length")
    assert slots == (len(plan.tensors) if plan is not None else 0)
    shoot(page, "viz_resnet18_memory.png")
    assert page.errors == []
    assert all(u.startswith(("file:", "data:", "about:")) for u in page.requests), page.requests


@needs_chromium
def test_a_2500_node_graph_renders_and_switches_stage(tmp_path, browser):
    s0 = transformer_snapshot(170)
    s1 = fuse_linear_gelu(s0)
    t0 = time.perf_counter()
    path = write_report(str(tmp_path), [s0, s1], title="transformer x170 (synthetic)")
    build_s = time.perf_counter() - t0
    assert build_s < 30, f"report of {len(s0.nodes)} nodes took {build_s:.1f} s"
    page = browser.open(pathlib.Path(path).as_uri())
    page.wait_for("document.body.dataset.ready === '1'")
    st = graph_state(page)
    assert st["drawn"] == int(st["nodes"]) == len(s1.nodes)
    assert st["paths"] == int(st["edges"]) == sum(len(n.inputs) for n in s1.nodes)
    assert 0 < int(st["labels"]) < len(s1.nodes) / 10, "only the nodes near the view get labels"
    shoot(page, "viz_synthetic_2500_top.png")
    page.set_hash("stage=0&color=fusion&node=act_100")
    page.wait_for("document.getElementById('graph').dataset.stage === '0'")
    st = graph_state(page)
    assert st["drawn"] == len(s0.nodes) > 2500
    assert page.evaluate("document.querySelector('.node.sel').dataset.name") == "act_100"
    shoot(page, "viz_synthetic_2500_selected.png")
    assert page.errors == []


# ---------- the command line ----------

def test_cli_dump_of_a_user_module(tmp_path, capsys):
    src = tmp_path / "net.py"
    src.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin, self.emb = torch.nn.Linear(8, 8), torch.nn.Embedding(4, 8)\n"
        "    def forward(self, x, ids):\n"
        "        return torch.relu(self.lin(x)) + self.emb(ids).sum(-1)\n")
    out = tmp_path / "dump"
    rc = cli_main(["dump", "--module", f"{src}:Net", "--input-shapes", "2x8,2x8:int64",
                   "--device", "cpu", "--out", str(out)])
    assert rc == 0
    assert "report.html" in capsys.readouterr().out
    data = page_data(out / "report.html")
    assert data["title"] == "Net"
    assert (out / "00_capture.py").exists() and (out / "model.onnx").exists()
    ops = {data["records"][r][1] for r in data["stages"][-1]["nodes"]}
    assert "aten.embedding.default" in ops
    assert cli_main(["dump", "--module", f"{src}:Net", "--input-shapes", "2x8x:int64",
                     "--out", str(out)]) == 2  # a typed error, not a traceback
    assert cli_main(["dump", "--module", f"{src}:Nope", "--input-shapes", "2x8",
                     "--out", str(out)]) == 2


def test_input_shapes_parse():
    x, ids, flag, scalar = parse_input_shapes("1x3x4x4, 1x5:int64, 2:bool, :fp16")
    assert x.shape == (1, 3, 4, 4) and x.dtype == torch.float32
    assert ids.dtype == torch.int64 and set(ids.unique().tolist()) <= {0, 1}
    assert flag.dtype == torch.bool and scalar.shape == () and scalar.dtype == torch.float16
    with pytest.raises(FxcOptionError, match="cannot read"):
        parse_input_shapes("1x3:complex7")

"""fxc.viz: the compile report as one self-contained HTML page.

    fxc.compile(model, inputs, dump_dir="out")    # writes out/report.html (and NN_<stage>.py)
    fxc dump --model resnet18 --out out           # the same from the command line

The page shows the graph after capture and after each pass (a layered layout computed here,
with pan, zoom, search and a minimap), what each pass added, removed, changed or fused, the
final graph coloured by op family, fusion group or precision, the per-pass table and the
memory plan as a timeline. Modules: snapshot (a stage as data), diff (what a pass changed,
which node replaced which), layout (the layered layout), report (the page), headless (a
stdlib driver for headless Chromium, to check the page and take screenshots).
"""
from .report import build_data, render_html, write_report
from .snapshot import Snapshot, snapshot

__all__ = ["snapshot", "Snapshot", "build_data", "render_html", "write_report"]

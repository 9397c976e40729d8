"""Generate the README's performance section from benchmarks/results/*.json (never typed by
hand): one table per results file, every runner's median, and fxc's ratio to the best peer.

    python3 scripts/perf_readme.py            # rewrites the section between the markers
"""
from __future__ import annotations

import glob
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- perf:begin (scripts/perf_readme.py) -->", "<!-- perf:end -->"


def section() -> str:
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "*.json"))):
        data = json.load(open(path))
        m = data["machine"]
        where = m.get("gpu") or f"{m['cpu']} CPU, {m['threads']} threads"
        rows = data["rows"]
        runners = list(dict.fromkeys(r["runner"] for r in rows))
        out.append(f"**{os.path.basename(path)}** — {where}, torch {m['torch']}, median ms; "
                   f"fxc's relative error vs eager FP32; peak memory during calls beyond the "
                   f"weights\n")
        out.append("| model | batch | " + " | ".join(runners)
                   + " | fxc / best peer | fxc rel err | peak MB fxc / eager |")
        out.append("|" + "---|" * (len(runners) + 5))
        for key in dict.fromkeys((r["model"], r["batch"]) for r in rows):
            group = {r["runner"]: r for r in rows if (r["model"], r["batch"]) == key}
            cells = [f"{group[n]['median_ms']:.3f}" if n in group and group[n]["median_ms"]
                     else ("failed" if n in group else "") for n in runners]
            peers = [r for n, r in group.items() if not n.startswith("fxc") and r["median_ms"]]
            mine = [r for n, r in group.items() if n.startswith("fxc") and r["median_ms"]]
            ratio = err = mem = ""
            if peers and mine:
                best = min(mine, key=lambda r: r["median_ms"])
                peer = min(peers, key=lambda r: r["median_ms"])
                ratio = f"{peer['median_ms'] / best['median_ms']:.2f}x vs {peer['runner']}"
                err = f"{best['rel_err']:.1e}"
                mem = _memory(group)
            out.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells)
                       + f" | {ratio} | {err} | {mem} |")
        out.append("")
    return "\n".join(out)


def _memory(group: dict) -> str:
    """Peak GPU memory during calls beyond the weights: fxc's default row against eager's in
    the table's precision (CPU runs record none)."""
    fxc_row = group.get("fxc_torch")
    eager = next((r for n, r in group.items() if n.startswith("eager_") and n != "eager_fp32"
                  and not n.endswith("cudagraph")), group.get("eager_fp32"))
    if not fxc_row or not eager or fxc_row.get("peak_mem_mb") is None \
            or eager.get("peak_mem_mb") is None:
        return ""
    return f"{fxc_row['peak_mem_mb']:.1f} / {eager['peak_mem_mb']:.1f}"


def main() -> None:
    readme = os.path.join(ROOT, "README.md")
    text = open(readme).read()
    new = f"{BEGIN}\n{section()}\n{END}"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), new, text, flags=re.S) \
        if BEGIN in text else text + "\n" + new + "\n"
    open(readme, "w").write(text)


if __name__ == "__main__":
    main()

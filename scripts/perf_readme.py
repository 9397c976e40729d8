"""Generate the README's performance section from benchmarks/results/*.json (never typed by
hand): one table per results file, every runner's median, and fxc's ratio to the best peer; then
one table per (model, batch) in benchmarks/results/ablation/*.json (`fxc bench --ablate`), each
pass set's share of latency, memory and error from fxc.bench.ablation_shares.

    python3 scripts/perf_readme.py            # rewrites the section between the markers
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # fxc.bench: the ablation shares are computed in one place
BEGIN, END = "<!-- perf:begin (scripts/perf_readme.py) -->", "<!-- perf:end -->"


def section() -> str:
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "*.json"))):
        data = json.load(open(path))
        m = data["machine"]
        where = _where(m)
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
                ratio += _paired(peer, best)
                err = f"{best['rel_err']:.1e}"
                mem = _memory(group)
            out.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells)
                       + f" | {ratio} | {err} | {mem} |")
        out.append("")
    out += ablations()
    return "\n".join(out)


def _paired(peer: dict, best: dict) -> str:
    """CPU runs keep each interleaved round's median: the same ratio taken round by round
    (median, interquartile range), which a shared machine's load drift moves far less."""
    from fxc.bench import Row, paired_ratio
    got = paired_ratio(Row(**peer), Row(**best))
    if got is None:
        return ""
    mid, lo, hi = got
    return f"; round by round {mid:.2f}x (IQR {lo:.2f}-{hi:.2f})"


def _where(m: dict) -> str:
    return m.get("gpu") or f"{m['cpu']} CPU, {m['threads']} threads"


def ablations() -> list[str]:
    """One markdown table per (model, batch) of each benchmarks/results/ablation/*.json."""
    from fxc.bench import ABLATION_COLUMNS, ablation_cells, ablation_shares
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "ablation",
                                              "*.json"))):
        data = json.load(open(path))
        m = data["machine"]
        for key, rows in data.get("ablation", {}).items():
            rows = ablation_shares(rows)
            has_all = any(r["without"] == "(all)" and not r.get("error") for r in rows)
            model, _, batch = key.rpartition("_b")
            shares = ("share of gain = d / ((all) - (none)), the part of the whole pipeline's "
                      "gain that set accounts for (passes interact: shares need not add up to "
                      "100% and can exceed it or be negative)" if has_all else
                      "no (all) row (every pass left out) in this run, recorded before `--ablate` "
                      "measured one, so no share columns")
            out.append(f"**ablation/{os.path.basename(path)}: {model} batch {batch}** — "
                       f"{_where(m)}, torch {m['torch']}, fxc torch backend, one compile with "
                       f"each pass set left out; median ms, memory-plan arena, relative error "
                       f"vs eager FP32; d = change against the full pipeline, (none); "
                       f"{shares}\n")
            keep = [i for i, c in enumerate(ABLATION_COLUMNS) if has_all or "share" not in c]
            out.append("| " + " | ".join(ABLATION_COLUMNS[i] for i in keep) + " |")
            out.append("|" + "---|" * len(keep))
            for r in rows:
                cells = ablation_cells(r)
                if r.get("error"):
                    cells[1] = "failed: " + r["error"][:80]
                out.append("| " + " | ".join(cells[i].replace("|", "\\|") for i in keep) + " |")
            out.append("")
    return out


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

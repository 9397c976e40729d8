"""Generate the README's performance section from benchmarks/results/*.json (never typed by
hand): one table per results file, every runner's median, and fxc's ratio to the best peer; one
table over the garden runs (benchmarks/results/*garden*.json: library models, kernels per call,
error and compile time against the issue's goals, geometric-mean speed-up over torch.compile
reduce-overhead); then one table per (model, batch) in benchmarks/results/ablation/*.json
(`fxc bench --ablate`), each pass set's share of latency, memory and error from
fxc.bench.ablation_shares.

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
        if "garden" in os.path.basename(path):
            continue  # garden() puts all garden runs in one table
        data = json.load(open(path))
        if not isinstance(data, dict) or "machine" not in data:
            continue  # another script's results (scripts/int8_bench.py): not an fxc bench run
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
    out += garden()
    out += ablations()
    return "\n".join(out)


GARDEN_GOALS = ("goals (issue 12): fxc's relative error at most 1.5x eager FP16's own; fxc's "
                "compile at most torch.compile's first call")


def garden() -> list[str]:
    """One table over benchmarks/results/*garden*.json per machine and torch: a row per garden
    (model, batch) with every runner's median, then what fxc.bench.summary compares (fxc's
    fastest runner against the fastest peer: speed, kernels per call; its error against eager
    FP16's own; its compile time against torch.compile's first call), and the geometric-mean
    speed-up over torch.compile reduce-overhead under it."""
    import dataclasses

    from fxc.bench import Row, geomean, kernels_cell, summary
    fields = {f.name for f in dataclasses.fields(Row)}
    groups: dict[tuple, list] = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "*garden*.json"))):
        data = json.load(open(path))
        m = data["machine"]
        rows = [Row(**{k: v for k, v in r.items() if k in fields}) for r in data["rows"]]
        groups.setdefault((_where(m), m["torch"]), []).append((os.path.basename(path), data, rows))
    out = []
    for (where, torch_version), runs in groups.items():
        rows = [r for _, _, rs in runs for r in rs]
        sizes = sorted({d.get("size") or "?" for _, d, _ in runs})
        runners = list(dict.fromkeys(r.runner for r in rows if not r.runner.startswith("(")))
        out.append(f"**Garden: library models** ({', '.join(n for n, _, _ in runs)}) — {where}, "
                   f"torch {torch_version}, size {'/'.join(sizes)}, median ms; fxc = the "
                   f"fastest fxc runner, best peer = the fastest other; kernels = CUDA kernels "
                   f"per call (* counted on the runner without its CUDA graph, empty: unknown; "
                   f"the notes under the table say why); rel err against eager FP32; compile = wall s from the module to "
                   f"the first result (torch.compile: its first call, default mode); "
                   f"{GARDEN_GOALS}\n")
        out.append("| model | batch | " + " | ".join(runners) + " | fxc / best peer | kernels "
                   "fxc / best peer | rel err fxc / eager FP16 | compile s fxc / torch.compile |")
        out.append("|" + "---|" * (len(runners) + 6))
        summ = {(s["model"], s["batch"]): s for s in summary(rows)}
        notes: dict[tuple, list] = {}  # (runner, what happened, digits blanked) -> [rows, text]
        for key in dict.fromkeys((r.model, r.batch) for r in rows):
            group = {r.runner: r for r in rows if (r.model, r.batch) == key}
            cells = [f"{group[n].median_ms:.3f}" if n in group and group[n].median_ms
                     else ("failed" if n in group else "") for n in runners]
            s = summ.get(key)
            extra = ["", "", "", ""]
            if s:
                extra[0] = f"{s['speedup']:.2f}x vs {s['peer']}"
                extra[1] = (f"{kernels_cell(s['fxc_kernels'], s['fxc_kernels_how'])} / "
                            f"{kernels_cell(s['peer_kernels'], s['peer_kernels_how'])}")
                if s["err_ratio"] is not None:
                    extra[2] = (f"{s['fxc_rel_err']:.1e} / {s['eager_half_rel_err']:.1e} "
                                f"({s['err_ratio']:.2f}x)")
                if s["compile_ratio"] is not None:
                    extra[3] = f"{s['fxc_compile_s']:.1f} / {s['tc_compile_s']:.1f}"
            out.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells + extra) + " |")
            for r in group.values():
                text = (f"failed: {r.error[:160]}" if r.error else f"kernels: {r.kernels_how[:200]}"
                        if r.kernels_how and (r.kernels_per_call is None
                                              or r.kernels_how.startswith("counted on")) else None)
                if text:
                    note = notes.setdefault((r.runner, re.sub(r"[0-9.]+", "#", text)), [[], text])
                    note[0].append(f"{key[0]} b{key[1]}")
        out.append("")
        out += _garden_means(list(summ.values()), geomean)
        for (runner, _), (where, text) in notes.items():  # one line for what repeats
            more = f" and {len(where) - 3} more" if len(where) > 3 else ""
            out.append(f"- {runner} ({', '.join(where[:3])}{more}) {text}".replace("|", "\\|"))
        out.append("")
    return out


def _garden_means(summ: list[dict], geomean) -> list[str]:
    """The lines under a garden table: geometric-mean speed-up over torch.compile
    reduce-overhead, and how many rows meet the error and compile goals."""
    vs_ro = [s["speedup_vs_tc_ro"] for s in summ if s["speedup_vs_tc_ro"]]
    out = []
    if vs_ro:
        out.append(f"Geometric-mean speed-up of fxc over torch.compile reduce-overhead: "
                   f"**{geomean(vs_ro):.2f}x** over {len(vs_ro)} (model, batch) rows "
                   f"({min(vs_ro):.2f}x-{max(vs_ro):.2f}x; fxc faster on "
                   f"{sum(x > 1 for x in vs_ro)}).")
    err = [s["err_ratio"] for s in summ if s["err_ratio"] is not None]
    comp = [s["compile_ratio"] for s in summ if s["compile_ratio"] is not None]
    if err or comp:
        out.append(f"Error goal (<= 1.5x eager FP16's) met on {sum(x <= 1.5 for x in err)} of "
                   f"{len(err)} rows; compile goal (<= torch.compile's first call) met on "
                   f"{sum(x <= 1 for x in comp)} of {len(comp)}.")
    if out:
        out.append("")
    return out


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

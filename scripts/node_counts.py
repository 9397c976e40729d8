"""Issue 3's measure: per zoo model, the node count after each pass (fxc's compile report).

  python3 scripts/node_counts.py [--device cuda] [--precision fp16] [--size base] [--out FILE.md]

Writes a markdown table: one row per model, one column per pipeline stage ('-' where a pass
did not run for these options), compute nodes (placeholders, constants, output excluded).
"""
import argparse

import torch

import fxc
from fxc.models import get, names
from fxc.passes import names as pass_names


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--size", default="base")
    p.add_argument("--backend", default="torch")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    stages = ["capture"] + pass_names()
    lines = [f"Compute nodes after each pass ({a.size} size, {a.precision}, device {a.device}"
             + (f", {torch.cuda.get_device_name()}" if a.device == "cuda" else "") + ")", "",
             "| model | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
    for name in names():
        model, ex = get(name, size=a.size, batch=1)
        c = fxc.compile(model, ex, device=a.device, precision=a.precision, backend=a.backend)
        after = {r.name: r.nodes_after for r in c.report_data.records if not r.skipped}
        row = [str(c.report_data.captured_nodes)] + [str(after.get(s, "-")) for s in stages[1:]]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if a.out:
        open(a.out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()

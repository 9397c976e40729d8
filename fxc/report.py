"""The compile report: what each stage did, as a text table (and data for the dumps)."""
from __future__ import annotations

import dataclasses
from typing import Any

from fxc.passes import PassRecord


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

"""compiled.profile(): per-step times with node, op and source line, ranked; call latencies
with a text histogram and nearest-rank percentiles."""
import torch

import fxc
from fxc.runtime.profile import Profile, StepTime, histogram


class Heavy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(256, 256))

    def forward(self, x):
        y = torch.relu(x)
        z = y @ self.w @ self.w @ self.w  # the costly line
        return torch.tanh(z).sum(dim=0)


def test_profile_ranks_steps_and_reports_latency(capsys):
    x = torch.randn(256, 256)
    compiled = fxc.compile(Heavy().eval(), (x,), backend="torch")  # profiles its step list
    prof = compiled.profile(x, iters=30)
    printed = capsys.readouterr().out
    engine = compiled.engine
    assert [s.node for s in prof.steps] == [s.node.name for s in engine.steps]
    assert all(s.ms >= 0 for s in prof.steps) and len(prof.latencies_ms) == 30
    top = prof.costliest()[0]
    assert "matmul" in top.op or "mm" in top.op, prof.costliest()
    assert "the costly line" in top.source and "forward" in top.source
    costly = sum(s.ms for s in prof.steps if "costly" in s.source)
    assert 0.5 < costly / prof.step_total_ms <= 1.0
    assert prof.percentile(50) <= prof.percentile(90) <= prof.percentile(99)
    assert prof.mode == "step loop"
    text = str(prof)
    assert printed.strip() == text.strip()
    assert "p50" in text and "p90" in text and "p99" in text and top.node in text
    bars = [line for line in text.splitlines() if line.strip().startswith("[")]
    assert len(bars) == 10 and sum(int(b.split("ms")[1].split()[0]) for b in bars) == 30


def test_quiet_profile_prints_nothing(capsys):
    x = torch.randn(4, 8)
    compiled = fxc.compile(torch.nn.Linear(8, 8).eval(), (x,), backend="torch")
    prof = compiled.profile(x, iters=3, quiet=True)
    assert capsys.readouterr().out == "" and len(prof.latencies_ms) == 3


def test_percentiles_are_nearest_rank():
    p = Profile([], [float(i) for i in range(100, 0, -1)], "cpu", "step loop")
    assert (p.percentile(50), p.percentile(90), p.percentile(99), p.percentile(100)) == (50, 90, 99, 100)


def test_histogram_counts_every_call_once():
    xs = [1.0, 1.0, 1.0, 2.0, 10.0]
    lines = histogram(xs, bins=3, width=6)
    counts = [int(line.split("ms")[1].split()[0]) for line in lines]
    assert counts == [4, 0, 1]            # [1, 4) holds the four small ones, the max is in the last
    assert lines[0].endswith("######") and lines[2].endswith("##")
    assert histogram([]) == ["  (no calls)"]
    assert histogram([3.0, 3.0]) and sum(int(s.split("ms")[1].split()[0]) for s in histogram([3.0, 3.0])) == 2


def test_costliest_is_sorted_and_cut():
    steps = [StepTime(f"n{i}", "op", "", float(i)) for i in range(20)]
    p = Profile(steps, [1.0], "cpu", "step loop", top=5)
    assert [s.node for s in p.costliest()] == ["n19", "n18", "n17", "n16", "n15"]

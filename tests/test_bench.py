"""fxc bench: every runner produces a timed, correct row; JSON, plots and the table come out."""
import json

import torch

from fxc import bench
from fxc.cli import main


def test_bench_rows_on_cpu():
    rows = bench.bench_one("mlp", "tiny", 2, torch.device("cpu"), "fp32", iters=5,
                           with_torch_compile=False, backends_=["torch"])
    names = [r.runner for r in rows]
    assert names == ["eager_fp32", "ort_export", "fxc_torch"]
    for r in rows:
        assert r.error is None, r
        assert r.median_ms > 0 and r.p90_ms >= r.median_ms and r.throughput > 0
        assert r.rel_err < 1e-5
    assert any("fxc_torch" in line for line in bench.ratios(rows))


def test_bench_cli_writes_json_and_table(tmp_path, capsys):
    assert main(["bench", "--model", "mlp", "--size", "tiny", "--iters", "5",
                 "--backends", "torch", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fxc_torch" in out and "eager_fp32" in out
    files = list(tmp_path.glob("*.json"))
    data = json.loads(files[0].read_text())
    assert data["machine"]["torch"] == torch.__version__
    assert {r["runner"] for r in data["rows"]} >= {"eager_fp32", "fxc_torch"}


def test_failed_runner_is_a_row_not_a_crash():
    def broken(model, example):
        raise RuntimeError("no such kernel")
    row, fn = bench._build("mlp", 1, "broken", broken, None, (), [()], [None],
                           torch.device("cpu"))
    assert fn is None and row.error.startswith("RuntimeError: no such kernel")


def test_cpu_runners_are_timed_in_interleaved_rounds(monkeypatch):
    """Every runner gets samples from every round (so drifting load falls on all alike)."""
    order = []
    calls = {"a": 0, "b": 0}

    def runner(tag):
        def fn(*xs):
            calls[tag] += 1
            order.append(tag)
        return fn
    built = [(bench.Row("m", 1, "a"), runner("a")), (bench.Row("m", 1, "b"), runner("b")),
             (bench.Row("m", 1, "dead", error="x"), None)]
    bench._time_interleaved(built, [()], torch.device("cpu"), iters=10, rounds=5)
    assert built[0][0].median_ms is not None and built[1][0].median_ms is not None
    assert built[2][0].median_ms is None
    switches = sum(1 for x, y in zip(order, order[1:]) if x != y)
    assert switches >= 9  # a..b..a..b.. five rounds, not all a then all b

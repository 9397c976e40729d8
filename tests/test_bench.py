"""fxc bench: every runner produces a timed, correct row; JSON, plots and the table come out."""
import json

import pytest
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
    assert len(built[0][0].round_ms) == len(built[1][0].round_ms) == 5  # one median a round
    runs = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
    # a b | b a | a b | b a | a b: the order flips each round, so neither runner is always
    # the one timed right after the other
    assert len(runs) == 6 and runs == ["a", "b", "a", "b", "a", "b"]


def test_paired_ratio_is_taken_round_by_round():
    slow = bench.Row("m", 1, "peer", round_ms=[2.0, 4.0, 2.2, 8.0])
    fast = bench.Row("m", 1, "fxc", round_ms=[1.0, 2.0, 2.0, 4.0])
    mid, lo, hi = bench.paired_ratio(slow, fast)
    assert mid == pytest.approx(2.0) and lo <= mid <= hi and lo == pytest.approx(2.0)
    assert bench.paired_ratio(slow, bench.Row("m", 1, "x", round_ms=[1.0])) is None
    assert bench.paired_ratio(slow, bench.Row("m", 1, "x")) is None


def _ablation_rows():
    return [dict(without="(none)", median_ms=1.0, rel_err=1e-3, arena_bytes=1024, nodes=10),
            dict(without="(all)", median_ms=3.0, rel_err=1e-6, arena_bytes=4096, nodes=30),
            dict(without="fuse_x", median_ms=2.0, rel_err=2e-3, arena_bytes=1024, nodes=12),
            dict(without="layout", median_ms=0.9, rel_err=1e-3, arena_bytes=2048, nodes=10),
            dict(without="broken", error="RuntimeError: no kernel | here")]


def test_ablation_shares_against_full_and_all():
    rows = _ablation_rows()
    got = {r["without"]: r for r in bench.ablation_shares(rows)}
    assert rows == _ablation_rows()  # copies, the input is left alone
    x = got["fuse_x"]
    assert x["d_ms"] == pytest.approx(1.0) and x["ms_share"] == pytest.approx(0.5)
    assert x["d_arena_bytes"] == 0 and x["arena_share"] == 0
    assert x["d_rel_err"] == pytest.approx(1e-3)
    lay = got["layout"]  # faster without it: a negative share
    assert lay["ms_share"] == pytest.approx(-0.05) and lay["arena_share"] == pytest.approx(1 / 3)
    assert got["(all)"]["ms_share"] == pytest.approx(1.0)
    assert got["(none)"]["d_ms"] == 0 and got["(none)"]["ms_share"] == 0
    assert got["broken"] == _ablation_rows()[-1]  # a failed row comes back unchanged

    no_all = {r["without"]: r for r in bench.ablation_shares(
        [r for r in _ablation_rows() if r["without"] != "(all)"])}
    assert no_all["fuse_x"]["d_ms"] == pytest.approx(1.0)
    assert no_all["fuse_x"]["ms_share"] is None and no_all["fuse_x"]["arena_share"] is None
    no_full = [r for r in _ablation_rows() if r["without"] != "(none)"]
    assert bench.ablation_shares(no_full) == no_full  # nothing to measure against


def test_ablation_table_text():
    lines = bench.ablation_table(_ablation_rows()).splitlines()
    assert lines[0].split() == ["without", "ms", "d", "ms", "share", "of", "gain", "arena", "KB",
                                "d", "arena", "KB", "arena", "share", "rel", "err", "d", "rel",
                                "err", "nodes"]
    assert lines[3].split() == ["fuse_x", "2.000", "+1.000", "50%", "1.0", "+0.0", "0%",
                                "2.0e-03", "+1.0e-03", "12"]
    assert len({len(line) for line in lines[:5]}) == 1  # aligned
    assert lines[-1] == "broken: failed: RuntimeError: no kernel | here"


def _perf_readme(monkeypatch, root):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "perf_readme.py"
    spec = importlib.util.spec_from_file_location("perf_readme", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "ROOT", str(root))
    return mod


def test_perf_readme_writes_ablation_tables(tmp_path, monkeypatch):
    d = tmp_path / "benchmarks" / "results" / "ablation"
    d.mkdir(parents=True)
    machine = {"python": "3.11", "torch": "2.13", "cpu": "x86_64", "threads": 2, "gpu": None}
    (d / "a_new.json").write_text(json.dumps(
        {"machine": machine, "rows": [], "ablation": {"mlp_b1": _ablation_rows()}}))
    old = [r for r in _ablation_rows() if r["without"] != "(all)"]
    (d / "b_old.json").write_text(json.dumps(
        {"machine": machine, "rows": [], "ablation": {"bert_b8": old}}))
    text = _perf_readme(monkeypatch, tmp_path).section()
    assert "ablation/a_new.json: mlp batch 1** — x86_64 CPU, 2 threads" in text
    assert ("| without | ms | d ms | share of gain | arena KB | d arena KB | arena share | "
            "rel err | d rel err | nodes |") in text
    assert "| fuse_x | 2.000 | +1.000 | 50% | 1.0 | +0.0 | 0% | 2.0e-03 | +1.0e-03 | 12 |" in text
    assert "| broken | failed: RuntimeError: no kernel \\| here |" in text
    assert "ablation/b_old.json: bert batch 8**" in text and "no share columns" in text
    assert "| fuse_x | 2.000 | +1.000 | 1.0 | +0.0 | 2.0e-03 | +1.0e-03 | 12 |" in text


def test_progress_line_is_a_bar_over_jobs(capsys):
    from fxc.cli import progress_line
    line = progress_line(1, 4, "resnet50 b1: building fxc_torch", 72.4, width=8)
    assert line.startswith("[##------] 1/4 1m12s resnet50 b1: building fxc_torch")
    assert progress_line(4, 4, "done", 0).startswith("[" + "#" * 20 + "] 4/4")
    assert main(["bench", "--model", "mlp", "--size", "tiny", "--iters", "3",
                 "--backends", "torch"]) == 0
    assert "[--------------------] 0/1" in capsys.readouterr().err

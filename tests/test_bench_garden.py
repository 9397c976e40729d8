"""fxc bench on garden names (library:model), kernels per call, the issue-12 summary (error and
compile time against their goals) and the README's garden table. The garden itself is not
needed: a tiny stub garden model is routed through fxc.models.get by monkeypatch, here only."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

import fxc.models
from fxc import bench, timing
from fxc.cli import bench_jobs, main, results_tag
from fxc.errors import FxcOptionError

CUDA, CPU = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU


def test_parser_takes_garden_names_beside_batches():
    assert bench_jobs("hf:bert-base@1+8,tv:swin_t@1", "1") == [
        ("hf:bert-base", 1), ("hf:bert-base", 8), ("tv:swin_t", 1)]
    assert bench_jobs("timm:regnety_016, resnet50@2,", "1,4") == [
        ("timm:regnety_016", 1), ("timm:regnety_016", 4), ("resnet50", 2)]
    for bad in ("hf:@1", ":bert", "hf:bert-base@", "tv:swin_t@0", "tv:swin_t@x", ","):
        with pytest.raises(FxcOptionError):
            bench_jobs(bad, "1")
    tag = results_tag(torch.device("cuda"), "fp16", bench_jobs("hf:bert-base@1+8,tv:a/b", "1"))
    assert tag == "cuda_fp16_hf_bert-base-tv_a_b"


@pytest.fixture
def stub_garden(monkeypatch):
    """'stub:mlp' through fxc.models.get, counting builds; other names go to the real get."""
    real, builds = fxc.models.get, []

    def get(name, size="tiny", batch=1, seed=0, **kw):
        if not name.startswith("stub:"):
            return real(name, size=size, batch=batch, seed=seed, **kw)
        builds.append((name, batch, seed))
        g = torch.Generator().manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        return model.eval(), (torch.randn(batch, 8, generator=g),)
    monkeypatch.setattr(fxc.models, "get", get)
    from fxc.models import garden
    monkeypatch.setitem(garden.GARDEN, "stub:mlp", None)  # a known name to the CLI's check
    return builds


def test_cpu_bench_of_a_garden_model_end_to_end(tmp_path, capsys, stub_garden):
    assert main(["bench", "--model", "stub:mlp@2", "--size", "tiny", "--iters", "5",
                 "--rounds", "1", "--backends", "torch", "--out", str(tmp_path)]) == 0
    assert stub_garden == [("stub:mlp", 2, 0)]  # built once, shared by every runner
    data = json.loads((tmp_path / "cpu_fp32_stub_mlp.json").read_text())
    rows = {r["runner"]: r for r in data["rows"]}
    assert set(rows) == {"eager_fp32", "ort_export", "fxc_torch"}
    for r in rows.values():
        assert r["error"] is None and r["median_ms"] > 0 and r["rel_err"] < 1e-5
        assert r["kernels_per_call"] is None and r["kernels_how"].startswith(timing.NO_CUDA)
    (s,) = data["summary"]
    assert s["model"] == "stub:mlp" and s["batch"] == 2 and s["fxc"] == "fxc_torch"
    assert s["fxc_compile_s"] > 0 and s["eager_half"] is None and s["err_ratio"] is None
    assert data["inductor_cache"].startswith("the process's")
    assert "stub:mlp b2: fxc_torch" in capsys.readouterr().out


def test_a_model_that_cannot_be_built_is_a_row(monkeypatch):
    def broken(*a, **k):
        raise ImportError("No module named 'timm'")
    monkeypatch.setattr(fxc.models, "get", broken)
    (row,) = bench.bench_one("timm:regnety_016", "tiny", 1, torch.device("cpu"), "fp32", 3,
                             False, ["torch"])
    assert row.runner == "(model)" and row.error == "ImportError: No module named 'timm'"


def test_isolate_passes_garden_names_and_a_cold_inductor_cache(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cmd, capture_output, text, env):
        seen["cmd"], seen["env"] = cmd, env
        out = cmd[cmd.index("--out") + 1]
        row = dict(bench.Row("hf:bert-base", 8, "eager_fp16").__dict__, median_ms=1.0)
        (tmp_path / "child.json").write_text(json.dumps({"rows": [row]}))
        import shutil
        shutil.copy(tmp_path / "child.json", out)
        return SimpleNamespace(returncode=0, stderr="")
    monkeypatch.setattr("subprocess.run", fake_run)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/warm")  # as Inductor leaves it
    args = SimpleNamespace(size="base", precision="fp16", iters=10, rounds=5, tc_modes="default",
                           device="cuda", torch_compile=True, ablate=None, kernels=False)
    rows, _ = bench.run_isolated("hf:bert-base", 8, args, ["torch"])
    cmd = seen["cmd"]
    assert bench_jobs(cmd[cmd.index("--model") + 1], "1") == [("hf:bert-base", 8)]
    assert "--no-kernels" in cmd and "--torch-compile" in cmd
    assert seen["env"]["TORCHINDUCTOR_CACHE_DIR"].startswith(cmd[cmd.index("--out") + 1])
    assert [r.runner for r in rows] == ["eager_fp16"] and rows[0].median_ms == 1.0


def test_a_runner_that_kills_the_child_is_named_and_the_rows_before_it_survive(monkeypatch):
    """A device-side assert poisons the child's whole process; the journal keeps the finished
    rows and names the runner that was running, not '(child process) after no runner'."""
    def fake_run(cmd, capture_output, text, env):
        with open(env[bench.JOURNAL_ENV], "a") as f:  # what bench_one writes as it goes
            for rname in ("eager_fp16", "fxc_torch"):
                f.write(json.dumps({"started": rname}) + "\n")
                row = dict(bench.Row("hf:bert-base", 1, rname).__dict__, median_ms=0.5)
                f.write(json.dumps({"row": row}) + "\n")
            f.write(json.dumps({"started": "eager_fp16_cudagraph"}) + "\n")
        return SimpleNamespace(returncode=1, stderr="torch.AcceleratorError: CUDA error: "
                               "device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`")
    monkeypatch.setattr("subprocess.run", fake_run)
    args = SimpleNamespace(size="base", precision="fp16", iters=10, rounds=5, tc_modes="default",
                           device="cuda", torch_compile=False, ablate=None, kernels=False)
    rows, _ = bench.run_isolated("hf:bert-base", 1, args, ["torch"])
    assert [(r.runner, r.median_ms) for r in rows[:2]] == [("eager_fp16", 0.5), ("fxc_torch", 0.5)]
    assert rows[2].runner == "eager_fp16_cudagraph"
    assert rows[2].error.startswith("killed the process (exit 1): torch.AcceleratorError")


def test_journal_is_silent_outside_a_child(monkeypatch, tmp_path):
    monkeypatch.delenv(bench.JOURNAL_ENV, raising=False)
    bench._journal({"started": "x"})  # no file named: nothing written, no error
    monkeypatch.setenv(bench.JOURNAL_ENV, str(tmp_path / "j.jsonl"))
    bench._journal({"started": "x"})
    assert bench._read_journal(str(tmp_path / "j.jsonl")) == ([], "x")


@pytest.mark.gpu
def test_eager_cudagraph_peer_keeps_its_model_copy_alive():
    """The replayed graph reads the copy's weights by address; once bench's builder returns,
    nothing else holds the copy. Freed and overwritten, it gave garbage (issue 16.7)."""
    import gc
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()).to(dev)
    x = torch.randn(8, 64, device=dev)
    run = bench._eager_cudagraph(model, "fp32", dev, (x,))
    want = run(x).clone()
    gc.collect()
    torch.cuda.empty_cache()
    junk = [torch.full((64, 64), float("nan"), device=dev) for _ in range(256)]  # reuse freed memory
    torch.testing.assert_close(run(x), want)
    del junk


# -- kernels per call --------------------------------------------------------------------------

def ev(name, device_type=CUDA, id=1, activity_type=None):
    return SimpleNamespace(name=name, device_type=device_type, id=id, activity_type=activity_type)


def loop_call(i):  # one eager call: 3 kernels launched one by one, a copy, a sync
    return [ev("cudaLaunchKernel", CPU, id=10 * i + k) for k in range(3)] + \
        [ev(f"gemm_{k}", id=10 * i + k) for k in range(3)] + \
        [ev("Memcpy DtoD (Device -> Device)", id=10 * i + 5), ev("Context Sync", id=0)]


def replay_call(i, visible=True):  # one graph replay: a launch, its 3 kernels, an input copy
    return [ev("cudaGraphLaunch", CPU, id=100 + i), ev("Memcpy DtoD (Device -> Device)", id=7)] + \
        ([ev(f"gemm_{k}", id=100 + i) for k in range(3)] if visible else [])


def test_count_kernels_on_fake_profiler_events():
    k = timing.count_kernels(loop_call(0) + loop_call(1), calls=2)
    assert (k.per_call, k.graph_launches, k.in_graphs) == (3, 0, 0)
    k = timing.count_kernels(replay_call(0) + replay_call(1), calls=2)
    assert (k.per_call, k.graph_launches, k.in_graphs) == (3, 1, 3)
    k = timing.count_kernels(replay_call(0, visible=False), calls=1)
    assert (k.per_call, k.graph_launches, k.in_graphs) == (0, 1, 0)
    # where the profiler names the activity, that decides (a memcpy is not a kernel)
    typed = [ev("gemm", activity_type="kernel"), ev("copy", activity_type="gpu_memcpy"),
             ev("range", activity_type="gpu_user_annotation")]
    assert timing.count_kernels(typed, calls=1).per_call == 1


def test_kernels_per_call_on_cpu_is_empty_with_a_reason():
    count, how = timing.kernels_per_call(lambda x: x + 1, [(torch.ones(2),)], torch.device("cpu"))
    assert count is None and how.startswith("no CUDA")


def test_kernels_per_call_logic_with_a_fake_profiler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = torch.device("cuda")
    traces = {"loop": loop_call(0), "replay": replay_call(0), "blind": replay_call(0, False),
              "empty": []}

    def profiler(fn, sets, calls):
        if fn == "broken":
            raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")
        return timing.count_kernels(traces[fn], 1)

    def count(fn, non_graph=None):
        return timing.kernels_per_call(fn, [()], gpu, non_graph, profiler=profiler)
    assert count("loop") == (3, "profiled")
    n, how = count("replay")
    assert n == 3 and how == "graph replay: 3 of the 3 kernels inside the graph"
    n, how = count("replay", ("eager_fp16", 4))  # the variant's count is shown beside
    assert n == 3 and how == "graph replay: 3 of the 3 kernels inside the graph; eager_fp16: 4"
    # kernels inside the replayed graph not seen: the non-graph variant is counted, and said so
    n, how = count("blind", ("fxc's step loop", lambda: None))  # its profile fails (KeyError)
    assert n is None and how.endswith("profiling fxc's step loop failed: KeyError")
    n, how = timing.kernels_per_call("blind", [()], gpu, ("eager_fp16", 41), profiler=profiler)
    assert n == 41 and how.startswith("counted on eager_fp16: replayed 1 CUDA graph")
    n, how = count("blind", ("torch.compile (not in this run)", None))
    assert n is None and how.endswith("torch.compile (not in this run) could not be counted")
    n, how = count("blind")
    assert n is None and "no variant of this runner without the graph" in how
    assert count("empty")[0] is None and "saw no CUDA kernel" in count("empty")[1]
    assert count("broken")[1].startswith("profiler failed: RuntimeError")


def test_kernels_per_call_counts_a_callable_variant(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loop = lambda: None  # noqa: E731
    traces = {"blind": replay_call(0, False)}

    def profiler(fn, sets, calls):
        return timing.count_kernels(loop_call(0) if fn is loop else traces[fn], 1)
    n, how = timing.kernels_per_call("blind", [()], torch.device("cuda"),
                                     ("fxc's step loop", loop), profiler=profiler)
    assert n == 3 and how.startswith("counted on fxc's step loop")
    assert bench.kernels_cell(n, how) == "3*" and bench.kernels_cell(2.5, "profiled") == "2.5"
    assert bench.kernels_cell(None, "no CUDA") == ""


def test_non_graph_variants():
    done = [bench.Row("m", 1, "eager_fp16", kernels_per_call=40, kernels_how="profiled"),
            bench.Row("m", 1, "torch.compile", kernels_how="profiler failed: X")]
    label, n = bench._non_graph("eager_fp16_cudagraph", None, done)
    assert label.startswith("eager_fp16") and n == 40
    assert bench._non_graph("torch.compile_ro", None, done) == \
        ("torch.compile (profiler failed: X)", None)
    assert bench._non_graph("eager_fp32_cudagraph", None, done) == \
        ("eager_fp32 (not in this run)", None)
    assert bench._non_graph("eager_fp16", None, done) is None
    graphed = SimpleNamespace(engine=SimpleNamespace(cuda_graph=object(), run_steps=None))
    label, fn = bench._non_graph("fxc_torch", graphed, done)
    assert "step loop" in label and callable(fn)
    assert bench._non_graph("fxc_torch", SimpleNamespace(engine=SimpleNamespace(
        cuda_graph=None, run_steps=None)), done) is None


# -- summary, geometric mean, README garden table ----------------------------------------------

def garden_rows(model="hf:bert-base", batch=1, fxc_ms=0.5, ro_ms=1.0):
    R = bench.Row
    return [R(model, batch, "eager_fp32", median_ms=5.0, rel_err=0.0, compile_s=0.1),
            R(model, batch, "eager_fp16", median_ms=4.0, rel_err=1e-3, compile_s=0.1,
              kernels_per_call=300, kernels_how="profiled"),
            R(model, batch, "eager_fp16_cudagraph", median_ms=0.9, rel_err=1e-3, compile_s=0.2,
              kernels_per_call=300, kernels_how="counted on eager_fp16, the same kernels: x"),
            R(model, batch, "torch.compile", median_ms=1.2, rel_err=1e-3, compile_s=30.0,
              kernels_per_call=80, kernels_how="profiled"),
            R(model, batch, "torch.compile_ro", median_ms=ro_ms, rel_err=1e-3, compile_s=6.0,
              kernels_how="replayed 1 CUDA graph(s) a call and the profiler saw no kernel"),
            R(model, batch, "fxc_torch", median_ms=fxc_ms, rel_err=1.2e-3, compile_s=9.0,
              kernels_per_call=120, kernels_how="graph replay: 120 of the 120 kernels inside"),
            R(model, batch, "fxc_torch_zero_copy", error="RuntimeError: boom")]


def test_summary_compares_against_the_goals():
    (s,) = bench.summary(garden_rows())
    assert (s["fxc"], s["peer"]) == ("fxc_torch", "eager_fp16_cudagraph")
    assert s["speedup"] == pytest.approx(1.8) and s["speedup_vs_tc_ro"] == pytest.approx(2.0)
    assert s["err_ratio"] == pytest.approx(1.2) and s["eager_half"] == "eager_fp16"
    assert s["tc"] == "torch.compile" and s["compile_ratio"] == pytest.approx(0.3)
    assert (s["fxc_kernels"], s["peer_kernels"]) == (120, 300)
    line = bench.ratios(garden_rows())[0]
    assert "kernels 120 vs 300*" in line and "(1.20x)" in line and "compile 9.0 s" in line


def test_geomean():
    assert bench.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert bench.geomean([1.5, None, 0.0, 1.5]) == pytest.approx(1.5)
    assert bench.geomean([]) is None
    assert bench.geomean([0.5, 2.0, 3.0]) == pytest.approx(math.prod([0.5, 2.0, 3.0]) ** (1 / 3))


def test_perf_readme_garden_table(tmp_path, monkeypatch):
    from test_bench import _perf_readme
    d = tmp_path / "benchmarks" / "results"
    d.mkdir(parents=True)
    machine = {"python": "3.11", "torch": "2.11.0+cu130", "cpu": "x86_64", "threads": 16,
               "gpu": "NVIDIA H200"}
    rows = garden_rows() + garden_rows("tv:swin_t", 8, fxc_ms=2.0, ro_ms=1.0)
    rows += [bench.Row("hf:llama", 1, "(child process)", error="exit 1 after no runner: OOM")]
    import dataclasses
    for name, part in (("h200_fp16_garden_p1of2.json", rows[:7]),
                       ("h200_fp16_garden_p2of2.json", rows[7:])):
        (d / name).write_text(json.dumps({"machine": machine, "size": "base", "rows": [
            {**dataclasses.asdict(r), "from_the_future": 1} for r in part]}))
    (d / "h100_fp16_cnn.json").write_text(json.dumps({"machine": machine, "rows": [
        dataclasses.asdict(r) for r in garden_rows("resnet50")]}))
    text = _perf_readme(monkeypatch, tmp_path).section()
    assert "**h100_fp16_cnn.json**" in text and "**h200_fp16_garden" not in text
    assert ("**Garden: library models** (h200_fp16_garden_p1of2.json, "
            "h200_fp16_garden_p2of2.json) — NVIDIA H200, torch 2.11.0+cu130, size base") in text
    assert ("| model | batch | eager_fp32 | eager_fp16 | eager_fp16_cudagraph | torch.compile | "
            "torch.compile_ro | fxc_torch | fxc_torch_zero_copy | fxc / best peer | kernels fxc "
            "/ best peer | rel err fxc / eager FP16 | compile s fxc / torch.compile |") in text
    assert ("| hf:bert-base | 1 | 5.000 | 4.000 | 0.900 | 1.200 | 1.000 | 0.500 | failed | "
            "1.80x vs eager_fp16_cudagraph | 120 / 300* | 1.2e-03 / 1.0e-03 (1.20x) | 9.0 / 30.0 |"
            ) in text
    assert "| tv:swin_t | 8 |" in text and "0.45x vs eager_fp16_cudagraph" in text
    assert "| hf:llama | 1 | " + " | ".join([""] * 7) in text
    # fxc over torch.compile_ro: 2.0x and 0.5x -> geometric mean 1.00x
    assert ("Geometric-mean speed-up of fxc over torch.compile reduce-overhead: **1.00x** over 2 "
            "(model, batch) rows (0.50x-2.00x; fxc faster on 1).") in text
    assert "Error goal (<= 1.5x eager FP16's) met on 2 of 2 rows; compile goal" in text
    assert "- (child process) (hf:llama b1) failed: exit 1 after no runner: OOM" in text
    # what repeats is said once, with the rows it holds for
    assert ("- torch.compile_ro (hf:bert-base b1, tv:swin_t b8) kernels: replayed 1 CUDA "
            "graph(s)") in text


def test_a_childs_error_line_names_the_exception_not_torchs_hint():
    from fxc.bench import _error_line
    err = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
           "torch.AcceleratorError: CUDA error: operation not permitted when stream is capturing\n"
           "Search for `cudaErrorStreamCaptureUnsupported' in the CUDA docs\n"
           "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n")
    assert _error_line(err).startswith("torch.AcceleratorError: CUDA error: operation not permitted")
    assert _error_line("") == "(no output)" and _error_line("just text\n") == "just text"

"""The `fxc` command line: demo (compile the zoo, show the gain), compile (print a report),
dump (every stage, model.onnx and an HTML report of the compile) and bench.

Imports are lazy: torch and the compiler load inside the commands, so `fxc --help` and a
wrong option answer without them (this module imports only argparse and fxc.errors).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
import time

from .errors import FxcError, FxcOptionError

# One size rule for every command (demo, compile, dump, bench): a GPU gets the published
# sizes, where compilation pays; a CPU gets tiny ones, which compile in seconds.
SIZE_RULE = "default: base on a GPU, tiny on a CPU"


def best_device():
    import torch
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_of(args):
    import torch
    return torch.device(args.device) if args.device else best_device()


def default_size(args, device) -> str:
    """--size, or the one rule every command shares: base on a GPU, tiny on a CPU."""
    return args.size or ("base" if device.type == "cuda" else "tiny")


def check_model_name(name: str) -> str:
    """`name` if it is a zoo or garden model, else an FxcOptionError listing the choices."""
    from fxc.models import REGISTRY
    if name in REGISTRY:
        return name
    from fxc.models.garden import GARDEN
    if name in GARDEN:
        return name
    raise FxcOptionError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}; "
                         f"or from the garden: {', '.join(GARDEN)}")


def _row(name: str, size: str, batch: int, device, precision: str, backend: str,
         iters: int, rounds: int) -> dict:
    import torch

    from fxc import compile as fxc_compile, timing
    from fxc.models import get

    model, inputs = get(name, size=size, batch=batch)
    model = model.to(device)
    inputs = tuple(x.to(device) for x in inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    compiled = fxc_compile(model, inputs, precision=precision, backend=backend)
    out = compiled(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    with torch.no_grad():
        ref = model(*inputs)
    abs_err, rel_err = timing.max_error(out, ref)
    runners = {"eager": model, "fxc": compiled}
    if device.type == "cpu":  # the runner a CPU user would pick instead of fxc
        from fxc.peers import ort_export_runner
        try:
            runners["ort"] = ort_export_runner(model, inputs, torch.get_num_threads())[0]
        except Exception:  # an export that fails is a blank cell, not a failed demo
            pass
    ms = _interleaved(runners, timing.rotated_inputs(inputs), device, iters, rounds)
    rep = compiled.report_data
    return dict(model=name, nodes_before=rep.captured_nodes,
                nodes_after=rep.records[-1].nodes_after if rep.records else rep.captured_nodes,
                compile_s=compile_s, max_abs_err=abs_err, rel_err=rel_err,
                eager_ms=ms["eager"], fxc_ms=ms["fxc"], ort_ms=ms.get("ort"), backend=rep.backend)


def _interleaved(runners: dict, sets, device, iters: int, rounds: int) -> dict:
    """Median ms per runner over `rounds` rounds, runners alternating order each round, each
    warmed up first: load that drifts during the demo falls on all of them alike."""
    from fxc import timing
    per = {k: [] for k in runners}
    names = list(runners)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            t = timing.measure(runners[k], sets, device=device, warmup=3 if r else 10,
                               iters=max(1, iters // rounds))
            per[k].append(t.median_ms)
    return {k: statistics.median(v) for k, v in per.items()}


def cmd_demo(args) -> int:
    import torch

    from fxc.models import names

    device = device_of(args)
    size = default_size(args, device)
    models = [check_model_name(m) for m in args.models.split(",")] if args.models else names()
    threads = torch.get_num_threads()
    print(f"fxc demo: {len(models)} models, size={size}, batch={args.batch}, "
          f"device={_device_name(device)}, precision={args.precision}"
          + (f", {threads} CPU threads" if device.type == "cpu" else "")
          + f"; every runner timed in {args.rounds} interleaved rounds after warm-up")
    peer = device.type == "cpu"
    header = (f"{'model':<14}{'nodes':>7}{'->':>4}{'after':>6}{'compile s':>11}{'max err':>10}"
              f"{'rel err':>10}{'eager ms':>10}" + (f"{'ORT ms':>9}" if peer else "")
              + f"{'fxc ms':>9}{'vs eager':>10}" + (f"{'vs ORT':>8}" if peer else "")
              + "  backend")
    print(header)
    print("-" * len(header))
    failed = 0
    for name in models:
        try:
            r = _row(name, size, args.batch, device, args.precision, args.backend, args.iters,
                     args.rounds)
        except FxcError as e:
            failed += 1
            print(f"{name:<14}  failed: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        ort = r["ort_ms"]
        print(f"{r['model']:<14}{r['nodes_before']:>7}{'->':>4}{r['nodes_after']:>6}"
              f"{r['compile_s']:>11.2f}{r['max_abs_err']:>10.1e}{r['rel_err']:>10.1e}"
              f"{r['eager_ms']:>10.3f}" + (f"{ort:>9.3f}" if peer and ort else f"{'-':>9}" if peer else "")
              + f"{r['fxc_ms']:>9.3f}{r['eager_ms'] / r['fxc_ms']:>9.2f}x"
              + (f"{ort / r['fxc_ms']:>7.2f}x" if peer and ort else f"{'-':>8}" if peer else "")
              + f"  {r['backend']}", flush=True)
    if size == "tiny":
        print("\n" + textwrap.fill("tiny models take microseconds of arithmetic: their eager time is mostly PyTorch's "
              "per-op dispatch from Python, which any graph runtime removes, so 'vs eager' is "
              "large here and says little about real models. 'vs ORT' compares with ONNX Runtime "
              "on torch.onnx.export's graph, the runner a CPU user would pick; --size base shows "
              "real sizes (the README's tables have both, per machine).", 100))
    return 1 if failed else 0


def cmd_compile(args) -> int:
    from fxc import compile as fxc_compile

    device = device_of(args)
    model, inputs = model_and_inputs(args, "compile", device)
    compiled = fxc_compile(model.to(device), tuple(x.to(device) for x in inputs),
                           precision=args.precision, backend=args.backend, verify=args.verify,
                           dump_dir=args.dump_dir)
    print(compiled.report())
    return 0


def model_and_inputs(args, cmd: str, device):
    """--model NAME (zoo or garden) or --module SPEC with its inputs: exactly one of them."""
    if bool(args.model) == bool(args.module):
        raise FxcOptionError(f"fxc {cmd}: give either --model NAME (a zoo model) "
                             "or --module path.py:ATTR / package.module:ATTR (your own)")
    if args.module:
        return load_module(args.module, args.input_shapes)
    from fxc.models import get
    return get(check_model_name(args.model), size=default_size(args, device), batch=args.batch)


def cmd_dump(args) -> int:
    """Compile one model with dump_dir=args.out: every stage as fx code, model.onnx and the
    HTML report (fxc/viz); optionally a screenshot of the report through headless Chromium."""
    import os

    from fxc import compile as fxc_compile

    device = device_of(args)
    model, inputs = model_and_inputs(args, "dump", device)
    compiled = fxc_compile(model.to(device), tuple(x.to(device) for x in inputs),
                           precision=args.precision, backend=args.backend, verify=args.verify,
                           dump_dir=args.out)
    page = os.path.abspath(os.path.join(args.out, "report.html"))
    stages = sorted(f for f in os.listdir(args.out) if f.endswith(".py"))
    onnx = os.path.exists(os.path.join(args.out, "model.onnx"))
    print(f"fxc dump: {len(stages)} stages ({stages[0]} .. {stages[-1]})"
          + (", model.onnx" if onnx else "") + f" in {args.out}")
    print(f"report: file://{page}")
    if args.screenshot:
        from fxc.viz.headless import Chromium
        with Chromium() as browser:
            browser.open("file://" + page).screenshot(args.screenshot)
        print(f"screenshot: {args.screenshot}")
    if args.print_report:
        print(compiled.report())
    return 0


# --input-shapes dtype names -> torch dtype attribute names (resolved when used: lazy torch).
DTYPES = {"fp32": "float32", "float32": "float32", "float": "float32",
          "fp16": "float16", "float16": "float16", "half": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16", "fp64": "float64",
          "float64": "float64", "int64": "int64", "long": "int64",
          "int32": "int32", "int": "int32", "int8": "int8", "uint8": "uint8",
          "bool": "bool"}


def parse_input_shapes(text: str) -> tuple:
    """'1x3x224x224,1x128:int64' -> example tensors: floats from randn; integers 0 or 1 (valid
    token ids and masks for any vocabulary); bools at random. A bare ':dtype' is a 0-d tensor."""
    import torch
    out = []
    for spec in (s.strip() for s in text.split(",")):
        if not spec:
            continue
        dims, _, dtype_name = spec.partition(":")
        dtype = DTYPES.get(dtype_name.strip().lower() or "fp32")
        dtype = getattr(torch, dtype) if dtype else None
        try:
            shape = [int(d) for d in dims.lower().split("x")] if dims.strip() else []
        except ValueError:
            shape = None
        if dtype is None or shape is None or any(d < 0 for d in shape):
            raise FxcOptionError(f"--input-shapes: cannot read {spec!r}: write dims joined by 'x' "
                                 f"and an optional ':dtype' ({', '.join(sorted(DTYPES))}), "
                                 "e.g. 1x3x224x224,1x128:int64")
        if dtype == torch.bool:
            out.append(torch.rand(shape) < 0.5)
        elif dtype.is_floating_point:
            out.append(torch.randn(shape, dtype=dtype))
        else:
            out.append(torch.randint(0, 2, shape, dtype=dtype))
    return tuple(out)


def load_module(spec: str, input_shapes: str | None):
    """'path.py:attr' or 'package.module:attr' -> (model in eval mode, example inputs).
    `attr` (dotted names allowed) is an nn.Module, an nn.Module class or a function that
    returns one (called without arguments). Inputs come from --input-shapes, else the
    module's `example_inputs` (a tuple, or a function returning one)."""
    import torch

    path, sep, attr = spec.rpartition(":")
    if not sep or not path or not attr:
        raise FxcOptionError(f"--module {spec!r}: expected path/to/file.py:ATTR or "
                             f"package.module:ATTR")
    module = _import_file(path) if path.endswith(".py") else _import_dotted(path)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FxcOptionError(f"--module: {path} has no attribute {attr!r}")
        obj = getattr(obj, part)
    model = obj() if not isinstance(obj, torch.nn.Module) and callable(obj) else obj
    if not isinstance(model, torch.nn.Module):
        raise FxcOptionError(f"--module {spec!r}: {attr} is not an nn.Module, a Module class "
                             f"or a function returning one (got {type(model).__name__})")
    if input_shapes:
        inputs = parse_input_shapes(input_shapes)
    elif hasattr(module, "example_inputs"):
        ex = module.example_inputs
        inputs = tuple(ex() if callable(ex) else ex)
    else:
        raise FxcOptionError("--module needs --input-shapes (e.g. 1x3x224x224,1x128:int64) "
                             "or an `example_inputs` in the module")
    return model.eval(), inputs


def _import_file(path: str):
    import importlib.util
    import os

    if not os.path.isfile(path):
        raise FxcOptionError(f"--module: no such file {path!r}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # the file's own imports
    name = "_fxc_user_" + os.path.splitext(os.path.basename(path))[0]
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _import_dotted(name: str):
    """An importable module (the current directory counts, as for `python -m`)."""
    import importlib
    import os

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise FxcOptionError(f"--module: cannot import {name!r} ({e}); give a module on the "
                             f"Python path or a file path/to/file.py") from None


def bench_jobs(spec: str, default_batches: str) -> list[tuple[str, int]]:
    """'resnet50@1+32,hf:bert-base,tv:swin_t@8' -> [(resnet50, 1), (resnet50, 32),
    (hf:bert-base, b) for b in --batch, (tv:swin_t, 8)]. Garden names hold a ':' (library:model),
    never '@', ',' or '+', so the split on those is unambiguous; empty items are skipped."""
    jobs = []
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        name, at, batches = item.partition("@")
        name = name.strip()
        if not name or name.startswith(":") or name.endswith(":") or (at and not batches):
            raise FxcOptionError(f"--model {item!r}: expected NAME or NAME@B1+B2 (a zoo name "
                                 f"such as resnet50, or a garden name such as hf:bert-base)")
        for b in (batches.replace("+", ",") or default_batches).split(","):
            try:
                batch = int(b)
            except ValueError:
                batch = 0
            if batch < 1:
                raise FxcOptionError(f"--model {item!r}: batch {b!r} is not a positive integer "
                                     f"(expected NAME or NAME@B1+B2)") from None
            jobs.append((name, batch))
    if not jobs:
        raise FxcOptionError(f"--model {spec!r}: no model named")
    return jobs


def results_tag(device, precision: str, jobs: list[tuple[str, int]]) -> str:
    """Default results file name: cuda_fp16_resnet50-hf_bert-base (':' and '/' made '_')."""
    import re
    models = "-".join(dict.fromkeys(m for m, _ in jobs))
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{device.type}_{precision}_{models}")


def progress_line(done: int, total: int, what: str, elapsed_s: float, width: int = 20) -> str:
    """'[#####---------------] 1/4 0m12s resnet50 b1: building fxc_torch': the bar counts the
    (model, batch) jobs finished; padded so a shorter line overwrites a longer one."""
    filled = round(width * done / max(1, total))
    bar = "#" * filled + "-" * (width - filled)
    m, sec = divmod(int(elapsed_s), 60)
    return f"[{bar}] {done}/{total} {m}m{sec:02d}s {what:<56}"


def cmd_bench(args) -> int:
    import torch

    from . import bench

    device = device_of(args)
    args.size = default_size(args, device)
    backends = args.backends.split(",") if args.backends else bench.available_backends(
        device, args.precision)
    jobs = bench_jobs(args.model, args.batch)
    for m, _ in jobs:
        check_model_name(m)
    rows, ablations = [], {}
    tag = args.tag or results_tag(device, args.precision, jobs)
    print(f"fxc bench on {_device_name(device)}, precision={args.precision}, "
          f"fxc backends={backends}, torch {torch.__version__}", flush=True)
    t_start = time.perf_counter()
    for i, (m, b) in enumerate(jobs, 1):
        progress = lambda what, i=i: print(  # noqa: E731
            "\r" + progress_line(i - 1, len(jobs), what, time.perf_counter() - t_start),
            end="", file=sys.stderr, flush=True)
        if args.isolate:
            progress(f"{m} b{b}: in a child process")
            got, abl = bench.run_isolated(m, b, args, backends)
            rows += got
            ablations.update(abl)
        else:
            rows += bench.bench_one(m, args.size, b, device, args.precision, args.iters,
                                    args.torch_compile, backends, progress,
                                    tc_modes=args.tc_modes.split(","), rounds=args.rounds,
                                    kernels=args.kernels)
            if args.ablate is not None:
                progress(f"{m} b{b}: ablation")
                ablations[f"{m}_b{b}"] = bench.ablate(m, args.size, b, device, args.precision,
                                                      args.iters, bench.ablation_sets(args.ablate))
        if args.out:  # written after every model, so a run cut short keeps what it measured
            bench.write_results(rows, args.out, tag, _extra(args, ablations), plots=False)
    print("\r" + progress_line(len(jobs), len(jobs), "done", time.perf_counter() - t_start),
          file=sys.stderr)
    print(bench.table(rows))
    for key, abl in ablations.items():
        print(f"\nablation {key}: each pass set left out in turn; d = change against all passes "
              f"on, (none); share of gain = d / ((all) - (none)):")
        print(bench.ablation_table(abl))
    if args.out:
        path = bench.write_results(rows, args.out, tag, _extra(args, ablations))
        print(f"\nresults: {path} and PNG plots beside it (if matplotlib is installed)")
    return 0


def _extra(args, ablations: dict) -> dict:
    """What a results file records beside its rows: the size, ablations, and the Inductor
    cache torch.compile's first call found (bench.run_isolated gives each child an empty one)."""
    how = ("cold: an empty one per (model, batch) child" if args.isolate
           else "the process's, maybe warm from an earlier run")
    return {"size": args.size, "ablation": ablations, "inductor_cache": how}


def _device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default=None, choices=["tiny", "base"],
                   help=f"model size: tiny (seconds to compile, CI-sized) or base (published); "
                        f"{SIZE_RULE}")
    p.add_argument("--batch", type=int, default=1, help="leading dim of the example inputs "
                                                        "(default: 1)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="compute precision; fp16/bf16 keep sensitive ops in fp32 (default: fp32)")
    p.add_argument("--backend", default="auto",
                   choices=["auto", "torch", "onnxruntime", "tensorrt"],
                   help="engine; auto tries onnxruntime then torch on a CPU, tensorrt then "
                        "torch on a GPU, each where it can take the graph (default: auto)")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="NAME",
                   help="a zoo model (mlp, resnet18, bert, gpt2, ...) or a garden model "
                        "(tv:swin_t, hf:bert-base, ...)")
    p.add_argument("--module", default=None, metavar="PATH.py:ATTR | PKG.MOD:ATTR",
                   help="your own model instead: an nn.Module, a Module class or a factory "
                        "returning one, in a file or an importable module")
    p.add_argument("--input-shapes", default=None, metavar="SHAPES",
                   help="example inputs of --module, e.g. 1x3x224x224,1x128:int64 (dtype "
                        "default fp32; default: the module's example_inputs)")
    p.add_argument("--verify", action="store_true",
                   help="check numerics and metadata after every pass; name the first to break")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxc", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="compile the model zoo and show the gain over eager")
    _common(demo)
    demo.add_argument("--models", default=None, metavar="NAMES",
                      help="comma-separated model names (default: the 7 core zoo models)")
    demo.add_argument("--iters", type=int, default=60,
                      help="timed calls per runner, over all rounds (default: 60)")
    demo.add_argument("--rounds", type=int, default=5,
                      help="interleaved timing rounds, runner order alternating (default: 5)")
    demo.set_defaults(fn=cmd_demo)
    comp = sub.add_parser("compile", help="compile one model and print the compile report")
    _common(comp)
    _model_options(comp)
    comp.add_argument("--dump-dir", default=None, metavar="DIR",
                      help="also write every stage's graph and model.onnx here")
    comp.set_defaults(fn=cmd_compile)
    dump = sub.add_parser("dump", help="compile one model and write every stage, model.onnx and "
                                       "an HTML report (report.html) to --out")
    _common(dump)
    _model_options(dump)
    dump.add_argument("--out", required=True, metavar="DIR", help="the dump directory")
    dump.add_argument("--screenshot", default=None, metavar="PNG",
                      help="also save a screenshot of the report (needs Chromium)")
    dump.add_argument("--print-report", action="store_true", help="print the compile report too")
    dump.set_defaults(fn=cmd_dump)
    b = sub.add_parser("bench", help="benchmark fxc against eager and the peers")
    b.add_argument("--model", required=True, metavar="NAMES",
                   help="zoo names (resnet50) or garden names (tv:swin_t, hf:bert-base), "
                        "comma-separated; NAME@1+32 gives a model its own batches")
    b.add_argument("--size", default=None, choices=["tiny", "base"],
                   help=f"model size; {SIZE_RULE} (tiny models time PyTorch's per-op "
                        f"dispatch more than the compiler: see fxc demo)")
    b.add_argument("--batch", default="1", metavar="B1,B2",
                   help="comma-separated batch sizes (default: 1)")
    b.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    b.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="compute precision (default: fp32)")
    b.add_argument("--backends", default=None, metavar="NAMES",
                   help="fxc backends, comma-separated (default: all available)")
    b.add_argument("--iters", type=int, default=100, help="timed calls per runner (default: 100)")
    b.add_argument("--rounds", type=int, default=5,
                   help="CPU: interleaved timing rounds the iters are split over (default: 5)")
    b.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    b.add_argument("--tc-modes", default="default,reduce-overhead", metavar="MODES",
                   help="torch.compile modes to time (GPU), comma-separated "
                        "(default: default,reduce-overhead)")
    b.add_argument("--ablate", nargs="?", const="each", default=None, metavar="SETS",
                   help="compile again without passes: 'each' (default: every pass in turn) or "
                        "comma-separated sets, '+' joining passes of one set; 'fusion' names "
                        "all fusion passes (e.g. fusion,cast_precision,fuse_attention)")
    b.add_argument("--isolate", action="store_true",
                   help="run each model in a child process: a crash (device assert, OOM) "
                        "becomes an error row instead of ending the run")
    b.add_argument("--no-kernels", dest="kernels", action="store_false",
                   help="GPU: do not count kernels per call (torch.profiler, after the timing)")
    b.add_argument("--tag", default=None, help="results file name (default: from the models)")
    b.add_argument("--out", default=None, metavar="DIR", help="write JSON and PNG plots here")
    b.set_defaults(fn=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except FxcError as e:
        print(f"fxc: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `fxc` command line: demo (compile the zoo, show the gain) and compile (print a report)."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from . import timing
from .errors import FxcError


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _row(name: str, size: str, batch: int, device: torch.device, precision: str, backend: str,
         iters: int) -> dict:
    from fxc import compile as fxc_compile
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
    sets = timing.rotated_inputs(inputs)
    eager = timing.measure(model, sets, device=device, iters=iters)
    fast = timing.measure(compiled, sets, device=device, iters=iters)
    rep = compiled.report_data
    return dict(model=name, nodes_before=rep.captured_nodes,
                nodes_after=rep.records[-1].nodes_after if rep.records else rep.captured_nodes,
                compile_s=compile_s, max_abs_err=abs_err, rel_err=rel_err,
                eager_ms=eager.median_ms, fxc_ms=fast.median_ms, backend=rep.backend)


def cmd_demo(args) -> int:
    from fxc.models import names

    device = torch.device(args.device) if args.device else best_device()
    models = args.models.split(",") if args.models else names()
    threads = torch.get_num_threads()
    print(f"fxc demo: {len(models)} models, size={args.size}, batch={args.batch}, "
          f"device={_device_name(device)}, precision={args.precision}"
          + (f", {threads} CPU threads" if device.type == "cpu" else ""))
    header = (f"{'model':<14}{'nodes':>7}{'->':>4}{'after':>6}{'compile s':>11}{'max err':>10}"
              f"{'rel err':>10}{'eager ms':>10}{'fxc ms':>9}{'speed-up':>10}  backend")
    print(header)
    print("-" * len(header))
    failed = 0
    for name in models:
        try:
            r = _row(name, args.size, args.batch, device, args.precision, args.backend, args.iters)
        except FxcError as e:
            failed += 1
            print(f"{name:<14}  failed: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        print(f"{r['model']:<14}{r['nodes_before']:>7}{'->':>4}{r['nodes_after']:>6}"
              f"{r['compile_s']:>11.2f}{r['max_abs_err']:>10.1e}{r['rel_err']:>10.1e}"
              f"{r['eager_ms']:>10.3f}{r['fxc_ms']:>9.3f}{r['eager_ms'] / r['fxc_ms']:>9.2f}x"
              f"  {r['backend']}", flush=True)
    return 1 if failed else 0


def cmd_compile(args) -> int:
    from fxc import compile as fxc_compile
    from fxc.models import get

    device = torch.device(args.device) if args.device else best_device()
    model, inputs = get(args.model, size=args.size, batch=args.batch)
    compiled = fxc_compile(model.to(device), tuple(x.to(device) for x in inputs),
                           precision=args.precision, backend=args.backend, verify=args.verify,
                           dump_dir=args.dump_dir)
    print(compiled.report())
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="tiny", choices=["tiny", "base"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--backend", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxc", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="compile the model zoo and show the gain over eager")
    _common(demo)
    demo.add_argument("--models", default=None, help="comma-separated zoo names (default: all)")
    demo.add_argument("--iters", type=int, default=30)
    demo.set_defaults(fn=cmd_demo)
    comp = sub.add_parser("compile", help="compile one zoo model and print the compile report")
    _common(comp)
    comp.add_argument("--model", required=True)
    comp.add_argument("--verify", action="store_true")
    comp.add_argument("--dump-dir", default=None)
    comp.set_defaults(fn=cmd_compile)
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

"""fxc.compile: capture -> passes -> backend, wrapped in a drop-in CompiledModule."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from . import backends, dynamic, guard, ir
from .capture import capture, normalize_inputs
from .dump import StageDumper
from .errors import FxcOptionError
from .options import CompileOptions, resolve
from .report import CompileReport, coverage, op_census


class CompiledModule:
    """Callable like the model: same inputs, same output structure.

    `.graph` is the final GraphModule, `.report()` the per-stage table as text,
    `.options` the resolved compile options.
    """

    def __init__(self, engine, checker, out_spec, graph: fx.GraphModule,
                 report: CompileReport, options: CompileOptions):
        self.engine, self.checker, self.out_spec = engine, checker, out_spec
        # An engine that runs no torch ops (ONNX Runtime) needs no no_grad around each call.
        self._grad_free = not getattr(engine, "runs_torch_ops", True)
        self.graph, self._report, self.options = graph, report, options
        self._guard = guard.enabled(getattr(options, "guard", None))
        self._model = None  # guard: the user's model, to tell its own inf/NaN from ours

    def __call__(self, *args, **kwargs):
        flat = self.checker.flatten(args, kwargs)
        if self._grad_free:
            outs = self.engine.run(flat)
        else:
            with torch.no_grad():
                outs = self.engine.run(flat)
        if self._guard and (bad := guard.bad_outputs(outs)):
            raise guard.diagnose(self._model, args, kwargs, self.graph, flat, bad)
        return pytree.tree_unflatten(outs, self.out_spec)

    def report(self) -> str:
        return str(self._report)

    def save(self, directory: str) -> str:
        """Write the deployment artifact (ONNX model or TensorRT engine + manifest.json) to
        `directory`; `fxc.load(directory)` gives back a module callable like this one."""
        from .artifact import save
        return save(self, directory)

    @property
    def memory_plan(self):
        """The torch engine's MemoryPlan (passes/memory_plan.py), or None when nothing was
        planned (plan_memory=False, or another backend)."""
        return getattr(self.engine, "plan", None)

    def profile(self, *args, iters: int = 100, top: int = 15, quiet: bool = False, **kwargs):
        """Time every step and `iters` whole calls on these inputs; prints the costliest
        steps and a latency histogram (unless quiet) and returns the runtime.profile.Profile.
        Steps are the torch runtime's: another backend raises FxcOptionError saying so."""
        from fxc.runtime.profile import profile
        result = profile(self, args, kwargs, iters=iters, top=top)
        if not quiet:
            print(result)
        return result

    @property
    def report_data(self) -> CompileReport:
        return self._report

    def __repr__(self) -> str:
        return (f"CompiledModule(backend={self.engine.name}, device={self.options.device}, "
                f"precision={self.options.precision}, nodes={ir.count_compute(self.graph)})")


def compile(model: torch.nn.Module, example_inputs, *, device=None, precision: str = "fp32",
            backend: str = "auto", verify: bool = False, dump_dir: str | None = None,
            disable_passes=(), **options) -> CompiledModule:
    """Compile `model` for inference on `example_inputs` (a tuple of args, a dict of kwargs,
    or one tensor). Inputs of later calls must match them in structure, dtype, shape, device.

    device: where it runs (default: where the example inputs are); precision: 'fp32', 'fp16'
    or 'bf16'; backend: 'auto', 'torch', 'onnxruntime' or 'tensorrt' ('auto' takes the first
    of backends.AUTO_ORDER that can take the graph, falling back to 'torch', and says why in
    the report; a named backend raises instead); verify: check every pass numerically;
    dump_dir: write each stage there; disable_passes: pass names to skip.
    precision='int8' (CPU, ONNX Runtime; fxc/quant): calibration=batches, each like
    example_inputs; calibration_method 'minmax' (default), 'percentile' or 'entropy'; a
    layer whose own int8 error is over int8_tolerance (0.05) stays FP32, said in the report.
    dynamic_shapes: ranges in torch.export's format, per input `{axis: Dim("name", min=...,
    max=...)}` (or Dim.AUTO), a tuple by position or a dict by forward's parameter names:
    one compile runs every size in the ranges, on every backend; a size outside them is an
    FxcInputError. dynamic_batch=True is its shorthand for axis 0 of every tensor input, one
    Dim "batch" in 1..32 (or 1..the example's batch, if larger; dynamic_batch=N: 1..N); it
    may be combined with dynamic_shapes for the other axes (declaring axis 0 in both is an
    FxcOptionError). The example inputs' batch must be >= 2 (export fixes sizes 0 and 1).
    """
    t_start = time.perf_counter()
    args, kwargs = normalize_inputs(example_inputs)
    moded = _train_mode_layers(model)
    if moded:
        warnings.warn(f"{type(model).__name__} has layers in train mode ({', '.join(moded[:3])}"
                      f"{', ...' if len(moded) > 3 else ''}); fxc compiles for inference, with "
                      f"eval-mode semantics (BatchNorm uses its running statistics, dropout is "
                      f"off): call model.eval() first to say so", stacklevel=2)
    with _restored_on_failure(model, args, kwargs):
        return _compile(model, args, kwargs, t_start, device=device, precision=precision,
                        backend=backend, verify=verify, dump_dir=dump_dir,
                        disable_passes=disable_passes, **options)


def _train_mode_layers(model) -> list[str]:
    """Names of the layers that compute differently in train mode (BatchNorm, dropout) and are
    in it: only those make eval semantics a change the user should hear about."""
    if not isinstance(model, torch.nn.Module):
        return []
    kinds = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)
    return [name or type(m).__name__ for name, m in model.named_modules()
            if m.training and isinstance(m, kinds)]


@contextlib.contextmanager
def _restored_on_failure(model, args, kwargs):
    """If compile fails, put back the model's buffers and the example inputs as they were: a
    forward that counts calls in a buffer or writes into its input has run during capture,
    and a refused compile must leave the user's objects untouched. (Parameters are not
    copied: that would double a large model's memory, and forwards do not write them.)"""
    owned = list(model.buffers()) if isinstance(model, torch.nn.Module) else []
    owned += [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    saved = [(t, t.detach().clone()) for t in owned]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for t, before in saved:
                # an inference tensor's own mode; no_grad inside it (leaving inference mode
                # turns grad mode back on, and a parameter dynamo passes in requires grad)
                with torch.inference_mode(t.is_inference()), torch.no_grad():
                    t.copy_(before)
        raise


def _compile(model, args, kwargs, t_start, *, device, precision, backend, verify, dump_dir,
             disable_passes, **options) -> CompiledModule:
    from fxc.passes import PIPELINE, PassContext, run_pipeline  # after fxc.* is importable
    from fxc.runtime import InputChecker

    opts = resolve(device=device, precision=precision, backend=backend, verify=verify,
                   dump_dir=dump_dir, disable_passes=disable_passes,
                   default_device=_default_device(model, args, kwargs), **options)
    model, args, kwargs = _to_device(model, args, kwargs, opts.device)

    t0 = time.perf_counter()
    shapes = opts.dynamic_shapes
    if opts.dynamic_batch:  # the shorthand: axis 0 of every tensor input one Dim "batch"
        shapes = dynamic.with_batch(model, args, kwargs, shapes, opts.dynamic_batch)
    captured = capture(model, args, kwargs, shapes)
    gm = captured.gm
    if opts.precision == "int8":  # checked before the passes; calibrated at lowering
        from .quant import calibration_batches
        gm.meta["calibration"] = calibration_batches(opts.calibration, captured)
    capture_ms = (time.perf_counter() - t0) * 1e3
    captured_nodes = ir.count_compute(gm)

    dumper = StageDumper(opts.dump_dir) if opts.dump_dir else None
    if dumper:
        dumper("capture", gm)
    flat_inputs = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    ctx = PassContext(opts, flat_inputs)
    records = run_pipeline(gm, ctx, PIPELINE, on_stage=dumper)

    t0 = time.perf_counter()
    chosen, engine, passed_over = backends.build(gm, opts, flat_inputs)
    backend_ms = (time.perf_counter() - t0) * 1e3
    report = CompileReport(device=str(opts.device), precision=opts.precision, backend=chosen.name,
                           capture_ms=capture_ms, captured_nodes=captured_nodes, records=records,
                           backend_ms=backend_ms,
                           backend_choice=_backend_choice(opts, chosen.name, passed_over))
    for title, lines in ctx.state.get("report_sections", []) + getattr(engine, "report_sections", []):
        report.add_section(title, lines)
    if any(s.is_tensor and s.dynamic for s in captured.inputs):
        report.add_section("Dynamic shapes", _dynamic_lines(captured.inputs, records))
    for title, lines in coverage(gm, records):  # what fired, and the ops that are left
        report.add_section(title, lines)
    report.extra["ops_left"] = {k: dict(c) for k, c in op_census(gm).items()}
    report.total_ms = (time.perf_counter() - t_start) * 1e3
    specs = _host_specs(captured.inputs) if opts.host_inputs and opts.device.type == "cuda" \
        else captured.inputs
    specs = _graph_dtypes(specs, gm)  # keep_io_dtype=False: the graph may now take half inputs
    # An engine built for a dynamic batch says which inputs' dim 0 is free (runtime/inputs.py).
    checker = InputChecker(specs, captured.in_spec, captured.layout, getattr(engine, "batch", None))
    compiled = CompiledModule(engine, checker, captured.out_spec, gm, report, opts)
    if compiled._guard:
        compiled._model = model
    if dumper:  # report.html and model.onnx beside the stage dumps (fxc/dump.py)
        dumper.finish(report, memory_plan=getattr(compiled, "memory_plan", None),
                      onnx_model=getattr(getattr(engine, "lowered", None), "model", None),
                      gm=gm, title=type(model).__name__)
    return compiled


def _dynamic_lines(specs, records) -> list[str]:
    """The report's view of a compile for ranges: each input's axes, and what had to be
    static (passes skipped on symbolic shapes, with why)."""
    lines = []
    for s in specs:
        if s.is_tensor and s.dynamic:
            axes = [str(n) if d is None else f"{d.name}: {d.describe()}" for n, d in zip(s.shape, s.dims)]
            lines.append(f"input '{s.name}': ({', '.join(axes)})")
    skipped = [f"{r.name} ({r.skipped})" for r in records
               if r.skipped and r.skipped.startswith("needs static shapes")]
    lines.append("passes skipped on symbolic shapes: " + ("; ".join(skipped) or "none"))
    return lines


def _backend_choice(opts: CompileOptions, chosen: str, passed_over: list[str]) -> str:
    """The report's line on how `auto` chose (empty when the user named the backend)."""
    if opts.backend != "auto":
        return ""
    if passed_over:
        return f"{chosen} (auto; " + "; ".join(passed_over) + ")"
    order = ", ".join(backends.AUTO_ORDER.get(opts.device.type, ["torch"]))
    return f"{chosen} (auto: the first of {order} on {opts.device.type} that takes the graph)"


def _graph_dtypes(specs, gm: fx.GraphModule):
    """Input specs whose dtype is what the final graph's placeholders take."""
    metas = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    tensor_specs = [s for s in specs if s.is_tensor]
    if len(metas) != len(tensor_specs):
        return specs
    dtypes = {id(s): m.dtype for s, m in zip(tensor_specs, metas) if isinstance(m, torch.Tensor)}
    return [dataclasses.replace(s, dtype=dtypes.get(id(s), s.dtype)) if s.is_tensor else s
            for s in specs]


def _host_specs(specs):
    """host_inputs=True: a CUDA module's tensor inputs are expected on the CPU (the engine
    stages them through pinned buffers); without it, inputs must be on the compile device."""
    cpu = torch.device("cpu")
    return [dataclasses.replace(s, device=cpu) if s.is_tensor else s for s in specs]


def _default_device(model, args, kwargs) -> torch.device:
    for x in pytree.tree_leaves((args, kwargs)):
        if isinstance(x, torch.Tensor):
            return x.device
    for p in model.parameters() if isinstance(model, torch.nn.Module) else ():
        return p.device
    return torch.device("cpu")


def _to_device(model, args, kwargs, device: torch.device) -> tuple[Any, tuple, dict]:
    """Move inputs (and a copy of the model, never the user's own) to `device`."""
    if not isinstance(model, torch.nn.Module):
        return model, args, kwargs
    tensors = list(model.parameters()) + list(model.buffers())
    if any(t.device != device for t in tensors):
        try:
            model = copy.deepcopy(model).to(device)
        except Exception as e:
            raise FxcOptionError(f"device={device}: cannot move the model there: {e}") from None
    move = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731
    return model, pytree.tree_map(move, args), pytree.tree_map(move, kwargs)

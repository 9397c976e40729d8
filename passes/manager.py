"""The pass manager: runs the pipeline, times and counts each pass, verifies in verify mode.

A pass is a function `(gm, ctx) -> PassResult` that rewrites `gm` in place and keeps the IR
invariant (fxc/ir.py: every node's meta["val"] true). The manager recompiles the graph after
each pass; in verify mode it lints it and compares its outputs on the example inputs with the
stage before, and raises FxcVerifyError naming the first pass that broke them.

Symbolic shapes (DESIGN decision 11): on a graph whose inputs have symbolic sizes, a pass
runs only if its entry declares it works on them (`Pass.static_only` is None); any other is
skipped with its reason in the report, never run to specialize the graph silently. A pass
that raises on a symbolic graph is rolled back (the graph and the module's constants as they
were before it) and skipped with its error as the reason. After a pass that runs, the graph
must still be symbolic and hold no concrete SymInt in an argument.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch
import torch.fx as fx

from fxc import ir
from fxc.debug import log
from fxc.dynamic import is_symbolic
from fxc.errors import FxcError, FxcPassError, FxcVerifyError
from fxc.options import CompileOptions


@dataclasses.dataclass
class PassResult:
    """What a pass did: how many rewrites, plus free-form notes and stats for the report."""

    rewrites: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.rewrites > 0


@dataclasses.dataclass
class PassContext:
    """What a pass may read: the options and the example inputs (flat tensors, on device)."""

    options: CompileOptions
    example_inputs: list[torch.Tensor]
    state: dict[str, Any] = dataclasses.field(default_factory=dict)  # shared between passes


@dataclasses.dataclass(frozen=True)
class Pass:
    """One pipeline entry. `numerics` says how verify mode compares it with the stage before:
    'exact' (bitwise), 'fp32' (assert_close defaults), 'reassoc' (the same math in another
    rounding order, e.g. BN folded into weights: relative norm error at rounding level) or
    'lowp' (reduced-precision tolerance)."""

    name: str
    fn: Callable[[fx.GraphModule, PassContext], PassResult]
    numerics: str = "fp32"
    when: Callable[[CompileOptions], bool] = lambda opts: True
    # None: correct on symbolic shapes (tests/test_dynamic_passes.py runs it at several sizes);
    # else why it needs static shapes, shown in the report when a symbolic graph skips it.
    static_only: str | None = "not yet checked on symbolic shapes"


@dataclasses.dataclass
class PassRecord:
    name: str
    ms: float
    rewrites: int
    nodes_after: int
    skipped: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_pipeline(gm: fx.GraphModule, ctx: PassContext, pipeline: list[Pass],
                 on_stage: Callable[[str, fx.GraphModule], None] | None = None) -> list[PassRecord]:
    """Run every enabled pass in order; returns one record per pipeline entry."""
    opts, records = ctx.options, []
    reference = _execute(gm, ctx) if opts.verify else None
    symbolic = is_symbolic(gm)
    for p in pipeline:
        if not p.when(opts):
            records.append(PassRecord(p.name, 0.0, 0, ir.count_compute(gm), skipped="not for these options"))
            continue
        if not opts.enabled(p.name):
            records.append(PassRecord(p.name, 0.0, 0, ir.count_compute(gm), skipped="disabled"))
            continue
        if symbolic and p.static_only:
            records.append(PassRecord(p.name, 0.0, 0, ir.count_compute(gm),
                                      skipped=f"needs static shapes: {p.static_only}"))
            log.info("pass %s skipped on symbolic shapes: %s", p.name, p.static_only)
            continue
        t0 = time.perf_counter()
        saved = _Snapshot(gm) if symbolic else None
        was_symbolic = _symbolic_nodes(gm) if symbolic else set()
        try:
            result = p.fn(gm, ctx)
            if symbolic:
                check_still_symbolic(gm, p.name, was_symbolic)
        except Exception as e:
            if saved is not None:  # symbolic shapes: roll back, skip it, say why
                saved.restore(gm)
                why = f"failed on symbolic shapes, rolled back: {type(e).__name__}: " + \
                    (str(e).strip().splitlines() or [""])[0][:200]
                records.append(PassRecord(p.name, 0.0, 0, ir.count_compute(gm), skipped=why))
                log.warning("pass %s %s", p.name, why)
                log.debug("pass %s: the failure on symbolic shapes", p.name, exc_info=e)
                continue
            if isinstance(e, FxcError):
                raise
            # a bug in a pass: say which pass, keep the cause chained
            raise FxcPassError(p.name, f"{type(e).__name__}: {e}") from e
        gm.recompile()
        ms = (time.perf_counter() - t0) * 1e3
        records.append(PassRecord(p.name, ms, result.rewrites, ir.count_compute(gm),
                                  notes=result.notes, stats=result.stats))
        log.info("pass %s: %d rewrites in %.1f ms", p.name, result.rewrites, ms)
        log.debug("graph after %s:\n%s", p.name, gm.code)
        if opts.verify:
            ir.lint(gm, p.name)
            reference = _check_numerics(gm, ctx, p, reference)
        if on_stage is not None:
            on_stage(p.name, gm)
    return records


class _Snapshot:
    """The graph (a node-for-node copy, meta included) and the module's constants, as they
    were before a pass; `restore` puts both back (constants by reference: no tensor copies)."""

    def __init__(self, gm: fx.GraphModule):
        self.graph = fx.Graph()
        self.graph.output(self.graph.graph_copy(gm.graph, {}))
        self.graph.set_codegen(gm.graph._codegen)
        self.buffers, self.params = dict(gm._buffers), dict(gm._parameters)
        self.attrs = {k: v for k, v in gm.__dict__.items() if isinstance(v, torch.Tensor)}
        self.shapes = _ShapeEnvState(gm)

    def restore(self, gm: fx.GraphModule) -> None:
        gm._buffers.clear()
        gm._buffers.update(self.buffers)
        gm._parameters.clear()
        gm._parameters.update(self.params)
        for k, v in self.attrs.items():
            gm.__dict__[k] = v
        gm.graph = self.graph
        gm.recompile()
        self.shapes.restore()


class _ShapeEnvState:
    """What a pass's fake execution can add to the ShapeEnv of a symbolic graph's metas: a guard
    that evaluates a symbol (int(size), a meta kernel wanting concrete sizes) records a
    replacement symbol -> its example value, and every meta that reads the symbol is then that
    constant. A rolled-back pass must take its guards with it (seen on the H200: SDPA's CUDA
    meta failed inside fuse_attention after specialising BERT's batch and length; the graph came
    back, the sizes stayed fixed, and the memory plan sized buffers for the example alone)."""

    _FIELDS = ("replacements", "replacements_slocs", "var_to_range", "var_to_range_sloc",
               "divisible", "axioms", "guards", "specializations", "deferred_runtime_asserts")

    def __init__(self, gm: fx.GraphModule):
        self.env = _shape_env(gm)
        self.saved = {}
        for name in self._FIELDS if self.env is not None else ():
            v = getattr(self.env, name, None)
            if v is not None and hasattr(v, "copy"):
                self.saved[name] = _state_copy(v)

    def restore(self) -> None:
        if self.env is None:
            return
        for name, v in self.saved.items():
            setattr(self.env, name, _state_copy(v))
        if hasattr(self.env, "num_deferred_runtime_asserts"):
            self.env.num_deferred_runtime_asserts = sum(
                len(a) for a in getattr(self.env, "deferred_runtime_asserts", {}).values())
        # caches keyed on the state must see it changed: the ShapeEnv's own (a key of its
        # lengths) and each SymNode's expression (a replacements counter)
        if callable(getattr(self.env, "_update_version_counter", None)):
            self.env._update_version_counter()
        if isinstance(getattr(self.env, "_replacements_version_counter", None), int):
            self.env._replacements_version_counter += 1
        for cache in ("fx_node_cache",):
            c = getattr(self.env, cache, None)
            if isinstance(c, dict):
                c.clear()


def _state_copy(v):
    """A copy of a ShapeEnv container that later guards cannot reach: dicts of lists
    (deferred_runtime_asserts) get their lists copied too, since guards append in place."""
    if isinstance(v, dict):
        return {k: list(x) if isinstance(x, list) else x for k, x in v.items()}
    return v.copy()  # list, set, OrderedSet (divisible, guards, specializations)


def _shape_env(gm: fx.GraphModule):
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            v = n.meta.get("val")
            for s in getattr(v, "shape", ()):
                if isinstance(s, torch.SymInt):
                    return s.node.shape_env
    return None


def _symbolic_nodes(gm: fx.GraphModule) -> set[str]:
    return {n.name for n in gm.graph.nodes if ir.symbolic_mode([n.meta.get("val")]) is not None}


def check_still_symbolic(gm: fx.GraphModule, pass_name: str, was: set[str] = frozenset()) -> None:
    """A pass on a symbolic graph must keep it so: inputs still symbolic, no node of `was` (the
    nodes whose metas had symbolic sizes before it) now with a concrete meta (the memory plan
    would size its buffer for one shape), and no argument a concrete SymInt (a size read off
    meta and written into the graph: fixed at trace time). A failure rolls the pass back."""
    if not is_symbolic(gm):
        raise FxcPassError(pass_name, "made the graph's symbolic input sizes static")
    for node in gm.graph.nodes:  # a guard in its fake execution fixed a symbol to its example
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
            if any(isinstance(s, torch.SymInt) and not ir.free_size(s) for s in node.meta["val"].shape):
                raise FxcPassError(pass_name, "specialised a symbolic input size (a guard fixed it "
                                              "to the example's value)", node=ir.describe(node))
    for node in gm.graph.nodes:
        if node.name in was and ir.symbolic_mode([node.meta.get("val")]) is None:
            raise FxcPassError(pass_name, "specialised a symbolic meta to the example's sizes",
                               node=ir.describe(node))
    for node in gm.graph.nodes:
        baked = []
        fx.node.map_aggregate((node.args, node.kwargs), lambda a: baked.append(a)
                              if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)) else a)
        if baked:
            raise FxcPassError(pass_name, f"wrote the symbolic size {baked[0]} into an argument "
                               f"instead of computing it in the graph", node=ir.describe(node))


def _execute(gm: fx.GraphModule, ctx: PassContext) -> tuple:
    with torch.no_grad():
        return tuple(gm(*ctx.example_inputs))


def _check_numerics(gm, ctx, p: Pass, before: tuple) -> tuple:
    after = _execute(gm, ctx)
    if len(after) != len(before):
        raise FxcVerifyError(p.name, f"the graph now returns {len(after)} outputs, not {len(before)}")
    for i, (a, b) in enumerate(zip(after, before)):
        problem = compare(a, b, p.numerics, _effective_precision(ctx))
        if problem:
            raise FxcVerifyError(p.name, f"output {i} changed: {problem}")
    return after


# Relative norm error allowed for a reduced-precision stage, by the compile's precision:
# bf16 keeps 8 mantissa bits to fp16's 11, so its rounding is 8x coarser.
LOWP_REL = {"fp32": 2e-2, "tf32": 2e-2, "fp16": 2e-2, "bf16": 1e-1}


def _effective_precision(ctx: PassContext) -> str:
    """'tf32' for an FP32 compile on CUDA where torch lets convs/GEMMs use TF32 (10 mantissa
    bits): two correct graphs then differ at TF32's rounding level, not FP32's."""
    opts = ctx.options
    if opts.precision == "fp32" and opts.device.type == "cuda" and (
            torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32):
        return "tf32"
    return opts.precision


def compare(actual: Any, expected: Any, numerics: str, precision: str = "fp16") -> str | None:
    """None when `actual` matches `expected` under the pass's numerics contract, else why not."""
    if not isinstance(expected, torch.Tensor):
        return None if actual == expected else f"expected {expected!r}, got {actual!r}"
    if not isinstance(actual, torch.Tensor):
        return f"expected a tensor, got {type(actual).__name__}"
    if actual.shape != expected.shape:
        return f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if numerics == "fp32" and precision == "tf32" and expected.is_floating_point():
        return lowp_problem(actual, expected, rel=5e-3)
    if numerics == "exact":
        ok = actual.dtype == expected.dtype and torch.equal(actual, expected) or (
            actual.is_floating_point() and torch.equal(actual.isnan(), expected.isnan())
            and torch.equal(actual.nan_to_num(), expected.nan_to_num()))
        return None if ok else "not bitwise equal"
    if numerics == "lowp":
        return lowp_problem(actual, expected, rel=LOWP_REL.get(precision, 2e-2))
    if numerics == "reassoc" and expected.is_floating_point():
        # Whole graphs amplify reordered fp32 rounding past assert_close's elementwise bounds,
        # but a real bug moves the norm error far above rounding level.
        rel = 1e-5 if expected.dtype in (torch.float32, torch.float64) else 4e-3
        if precision == "tf32":
            rel = 5e-3
        return lowp_problem(actual, expected, rel=rel)
    try:
        torch.testing.assert_close(actual, expected, equal_nan=True)
    except AssertionError as e:
        return str(e).strip().splitlines()[0] + " " + " ".join(str(e).split("\n")[1:4])
    return None


def lowp_problem(actual: torch.Tensor, expected: torch.Tensor, rel: float = 2e-2) -> str | None:
    """Reduced precision contract: finite where the reference is finite, and the relative
    norm error ||a - b|| / ||b|| under `rel` (whole graphs accumulate rounding)."""
    a, b = actual.double(), expected.double()
    finite = torch.isfinite(b)
    if not torch.isfinite(a[finite]).all():
        return "inf or NaN where the reference is finite"
    denom = b[finite].norm().item()
    err = (a[finite] - b[finite]).norm().item() / (denom if denom > 0 else 1.0)
    return None if err <= rel else f"relative norm error {err:.3g} > {rel}"

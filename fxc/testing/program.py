"""Programs (straight-line lists of ops over inputs and parameters) and their builder.

A `Program` is the data a generated graph is made from: values (graph inputs, parameters,
buffers, op results), instructions (op name, operand value ids, static args), module
attributes, and the output structure. `Program.to_graph_module()` turns it into a
`torch.fx.GraphModule` that calls plain torch functions, so `gm.code` reads as code.

The `Builder` runs every instruction as it is added, on the real input data, and refuses
an instruction (`OpRejected`, rolled back) whose result is not finite, too large for its
dtype, wrapped around (integers), decided by rounding (see `ops`), or that raised. So a
finished program is well-formed and finite *by construction*, on its own inputs.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from hypothesis import strategies as st

from . import ops as O
from . import shape as S
from .ops import OPS, OpRejected

# Largest |value| a generated graph may hold, per dtype. FP16 keeps 8x headroom below 65504;
# FP32/BF16 may exceed 65504 on purpose (an FP16 cast of those values overflows).
FLOAT_LIMIT = {torch.float16: 8192.0, torch.bfloat16: 1e6, torch.float32: 1e6, torch.float64: 1e6}
INT_LIMIT = {torch.int32: 2 ** 24, torch.int64: 2 ** 40, torch.int16: 2 ** 12, torch.int8: 100,
             torch.uint8: 200}
MAX_RESULT_NUMEL = 512
CANCEL_RATIO = 16.0  # a result may be at most this much smaller than what it is summed from (+1)


@dataclass(frozen=True)
class Value:
    id: int
    kind: str                   # "input" | "param" | "buffer" | "op"
    name: str                   # x0 / p0 / b0 for leaves; "" for op results (fx names them)
    shape: tuple[int, ...]
    dtype: torch.dtype
    root: int                   # the value whose storage this one may share (itself if fresh)
    max_abs: float


@dataclass(frozen=True)
class Instr:
    op: str
    inputs: tuple[int, ...]
    static: dict
    out: int

    def __str__(self):
        args = [f"v{i}" for i in self.inputs] + [f"{k}={v!r}" for k, v in self.static.items()]
        args = ", ".join(args)
        return f"v{self.out} = {self.op}({args})"


@dataclass
class Program:
    values: list[Value] = field(default_factory=list)
    instrs: list[Instr] = field(default_factory=list)
    leaves: dict[int, torch.Tensor] = field(default_factory=dict)  # data of inputs/params/buffers
    modules: dict[str, nn.Module] = field(default_factory=dict)
    outputs: Any = None                                           # id, or tuple/list/dict of ids

    @property
    def inputs(self) -> list[int]:
        return [v.id for v in self.values if v.kind == "input"]

    def output_ids(self) -> list[int]:
        return flatten(self.outputs)

    def users(self) -> Counter:
        """How many instructions use each value (an op using a value twice counts once)."""
        return Counter(i for ins in self.instrs for i in set(ins.inputs))

    def __str__(self):
        leaves = [f"v{v.id} = {v.kind} {v.name}: {_fmt(v)}" for v in self.values if v.kind != "op"]
        return "\n".join(leaves + [str(i) for i in self.instrs] + [f"return {self.outputs!r}"])

    def to_graph_module(self) -> fx.GraphModule:
        """The program as an fx.GraphModule (eval mode) owning its parameters and modules."""
        root, graph, node = nn.Module(), fx.Graph(), {}
        for v in self.values:
            if v.kind == "input":
                node[v.id] = graph.placeholder(v.name)
        for v in self.values:
            if v.kind == "param":
                t = self.leaves[v.id].clone()
                root.register_parameter(v.name, nn.Parameter(t, requires_grad=t.is_floating_point()))
            elif v.kind == "buffer":
                root.register_buffer(v.name, self.leaves[v.id].clone())
            if v.kind in ("param", "buffer"):
                node[v.id] = graph.get_attr(v.name)
        for name, m in self.modules.items():
            root.add_module(name, copy.deepcopy(m))
        for ins in self.instrs:
            spec, operands = OPS[ins.op], [node[i] for i in ins.inputs]
            if "module" in ins.static:
                n = graph.call_module(ins.static["module"], tuple(operands))
            else:
                args, kwargs = spec.args(operands, ins.static)
                kind = graph.call_method if isinstance(spec.fn, str) else graph.call_function
                n = kind(spec.fn, tuple(args), kwargs)
            node[ins.out] = n
        graph.output(_map_outputs(self.outputs, node))
        graph.lint()
        gm = fx.GraphModule(root, graph, class_name="Generated")
        return gm.eval()


def flatten(o) -> list:
    """The leaves of an output structure (a value, or a tuple / list / dict of them)."""
    if isinstance(o, dict):
        return list(o.values())
    return list(o) if isinstance(o, (tuple, list)) else [o]


def _map_outputs(o, f):
    if isinstance(o, dict):
        return {k: f[v] for k, v in o.items()}
    if isinstance(o, (tuple, list)):
        return type(o)(f[v] for v in o)
    return f[o]


def _fmt(v: Value) -> str:
    return f"{str(v.dtype).removeprefix('torch.')}{list(v.shape)}"


def _max_abs(t: torch.Tensor) -> float:
    return float(t.detach().double().abs().max()) if t.numel() else 0.0


def _call(spec, tensors, static, modules):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return O.call(spec, tensors, static, modules)


class Builder:
    """Grows a Program one checked instruction at a time; the API that planters use.

    `add(op, *value_ids, **static)` appends an op (with its guards and parameters) and
    returns the new value id; `value(id)` gives its shape and dtype; `pick_value(...)`
    chooses an operand among the values built so far, or makes a fresh leaf.
    """

    def __init__(self, draw, *, dtypes, allow_params=True, chain=False, max_leaves=6,
                 allow_empty=True):
        self.draw, self.dtypes, self.allow_params = draw, tuple(dtypes), allow_params
        self.chain, self.max_leaves, self.allow_empty = chain, max_leaves, allow_empty
        self.p = Program()
        self.env: dict[int, torch.Tensor] = {}  # the concrete value of every id, as eager runs it
        self.rejected: Counter = Counter()
        self._mutated = False
        self._fresh: set[int] = set()  # leaves made by new_leaf (not op weights): max_leaves

    # -- reading --------------------------------------------------------------------------
    @property
    def modules(self):
        return self.p.modules

    @property
    def values(self) -> list[Value]:
        return self.p.values

    def value(self, vid: int) -> Value:
        return self.p.values[vid]

    def tensor(self, vid: int) -> torch.Tensor:
        return self.env[vid]

    @property
    def last(self) -> int | None:
        ops = [v.id for v in self.p.values if v.kind == "op"]
        return ops[-1] if ops else None

    def writable(self, vid: int) -> bool:
        """In-place safe: no expanded (stride 0) dim, so no two elements share memory."""
        t = self.env[vid]
        return all(st_ != 0 or n <= 1 for st_, n in zip(t.stride(), t.shape))

    # -- operands and leaves --------------------------------------------------------------
    def pick_value(self, draw=None, *, dtypes=O.ALL, min_rank=0, max_rank=S.MAX_RANK, where=None,
                   fresh_shape=None, primary=True, strict=False, fresh=True) -> int:
        """An existing value that fits (most recent first when shrunk), or a fresh leaf.

        primary: the op's main operand (in a chain, the previous result). strict: a fresh
        leaf must have one of the graph's dtypes (planters leave it off to always succeed).
        """
        draw = draw or self.draw

        def ok(v):
            return (v.dtype in dtypes and min_rank <= len(v.shape) <= max_rank
                    and (where is None or where(v)))

        if self.chain and primary and self.last is not None:
            if ok(self.value(self.last)):
                return self.last
            raise OpRejected("the chain's last value does not fit")
        cands = [v.id for v in reversed(self.p.values) if ok(v) and
                 not (self.chain and v.kind == "op")]
        room = fresh and self._leaf_count() < self.max_leaves
        if cands and not (room and draw(st.integers(0, 4)) == 4):
            # primary operands: half of the time the latest value, so graphs grow deep
            i = draw(st.integers(0, (2 if primary else 1) * len(cands) - 1))
            return cands[i if i < len(cands) else 0]
        if not room:
            raise OpRejected("no operand fits")
        choices = [d for d in dtypes if d in self.dtypes]
        if not choices and (strict or not dtypes):
            raise OpRejected(f"no operand fits and none of {dtypes} is a graph dtype")
        dtype = draw(st.sampled_from(choices or list(dtypes)))
        shape = draw(fresh_shape if fresh_shape is not None else
                     S.shapes(min_rank, max_rank, allow_empty=self.allow_empty))
        if not ok(Value(-1, "input", "", tuple(shape), dtype, -1, 0.0)):
            raise OpRejected(f"a fresh {dtype} leaf of shape {shape} does not fit")
        return self.new_leaf(shape, dtype)

    def operand(self, dtypes, primary=True, **kw) -> int:
        """pick_value for op rules: strict about dtypes."""
        return self.pick_value(dtypes=dtypes, primary=primary, strict=True, **kw)

    def _leaf_count(self):
        return len(self._fresh)

    def data(self, shape, dtype, *, scale=1.0, shift=0.0, low=None, high=None) -> torch.Tensor:
        """Random data from a drawn seed: normal(shift, scale), or uniform(low, high)."""
        g = torch.Generator().manual_seed(self.draw(st.integers(0, 2 ** 32 - 1)))
        if dtype == torch.bool:
            return torch.rand(shape, generator=g) > 0.5
        if not dtype.is_floating_point:
            return torch.randint(-8, 9, shape, generator=g).to(dtype)
        if low is not None:
            return (torch.rand(shape, generator=g) * (high - low) + low).to(dtype)
        return (torch.randn(shape, generator=g) * scale + shift).to(dtype)

    def new_leaf(self, shape, dtype, kind=None) -> int:
        """A fresh graph input, or (if allowed) a parameter / buffer, with drawn data."""
        if kind is None:
            kind = "input"
            if self.allow_params and self.draw(st.integers(0, 2)) == 2:
                kind = "param" if dtype.is_floating_point and self.draw(st.integers(0, 3)) else "buffer"
        scale = 1.0
        if dtype.is_floating_point:  # 3e4 * randn: FP32/BF16 inputs past FP16's 65504
            scale = self.draw(st.sampled_from([1.0, 10.0, 0.01, 300.0, 3e4]))
            scale = min(scale, 300.0) if dtype == torch.float16 else scale
        vid = self._leaf(self.data(tuple(shape), dtype, scale=scale), kind)
        self._fresh.add(vid)
        return vid

    def new_param(self, tensor: torch.Tensor, *, buffer=False) -> int:
        """Register `tensor` as a parameter (float) or buffer of the module; returns its id."""
        kind = "buffer" if buffer or not tensor.is_floating_point() else "param"
        return self._leaf(tensor, kind)

    def _leaf(self, t, kind) -> int:
        vid = len(self.p.values)
        prefix = {"input": "x", "param": "p", "buffer": "b"}[kind]
        name = f"{prefix}{sum(v.kind == kind for v in self.p.values)}"
        self.p.values.append(Value(vid, kind, name, tuple(t.shape), t.dtype, vid, _max_abs(t)))
        self.p.leaves[vid] = t
        self.env[vid] = t
        return vid

    def add_module(self, prefix: str, module: nn.Module) -> str:
        name = f"{prefix}{sum(n.rstrip('0123456789') == prefix for n in self.p.modules)}"
        self.p.modules[name] = module
        return name

    # -- instructions ---------------------------------------------------------------------
    def add(self, op: str, *inputs: int, **static) -> int:
        """Append `op` (its guards and parameters first); returns the result's value id.

        Raises OpRejected (callers roll back with `transaction()`) if the op fails or its
        result is unsafe to compare across backends."""
        spec = OPS[op]
        ins, static = list(inputs), dict(static)
        if spec.prepare:
            ins, static = spec.prepare(self, ins, static)
        tensors = [self.env[i] for i in ins]
        if spec.inplace:
            if any(self.value(i).root == self.value(ins[0]).root for i in ins[1:]):
                raise OpRejected(f"{op}: operand shares storage with the target")
            self._mutated = True
        try:
            with torch.no_grad():
                out = _call(spec, tensors, static, self.p.modules)
        except Exception as e:  # noqa: BLE001 -- any failure of an op means: not here
            raise OpRejected(f"{op}: {type(e).__name__}: {str(e)[:200]}") from None
        with torch.no_grad():
            reason = self._unsafe(spec, tensors, out, static)
        if reason:
            raise OpRejected(f"{op}: {reason}")
        vid = len(self.p.values)
        root = self.value(ins[0]).root if (spec.view or spec.inplace) and ins else vid
        self.p.values.append(Value(vid, "op", "", tuple(out.shape), out.dtype, root, _max_abs(out)))
        self.p.instrs.append(Instr(op, tuple(ins), static, vid))
        self.env[vid] = out
        return vid

    def _unsafe(self, spec, tensors, out, static) -> str | None:
        if not isinstance(out, torch.Tensor):
            return f"returned {type(out).__name__}"
        if out.numel() > MAX_RESULT_NUMEL:
            return f"result too large ({out.numel()} elements)"
        if spec.check and not spec.inplace:
            reason = spec.check(tensors, out, static)
            if reason:
                return reason
        if out.dtype == torch.bool or out.numel() == 0:
            return None
        m = _max_abs(out)
        if out.is_floating_point():
            if not bool(torch.isfinite(out).all()):
                return "not finite"
            if m > FLOAT_LIMIT[out.dtype]:
                return f"|value| {m:.3g} too large for {out.dtype}"
            if spec.cancel and not spec.inplace:
                scale = spec.cancel(tensors, static, self).expand(out.shape)
                ratio = float((scale / (out.double().abs() + 1.0)).max())
                if ratio > CANCEL_RATIO:
                    return f"cancellation: result {ratio:.3g}x smaller than its terms"
            return None
        if m > INT_LIMIT.get(out.dtype, 2 ** 24):
            return f"|value| {m:.3g} too large for {out.dtype}"
        if spec.exact_int and not spec.inplace:
            shadow = _call(spec, [t.double() if t.dtype != torch.bool else t for t in tensors],
                           static, self.p.modules)
            if not torch.equal(out.double(), shadow.double()):
                return "integer overflow"
        return None

    @contextlib.contextmanager
    def transaction(self):
        """Undo every value, instruction, leaf and module added inside if OpRejected escapes."""
        n_vals, n_instrs, mods = len(self.p.values), len(self.p.instrs), list(self.p.modules)
        mutated, self._mutated = self._mutated, False
        try:
            yield
        except OpRejected as e:
            self.rejected[str(e).split(":")[0]] += 1
            del self.p.values[n_vals:], self.p.instrs[n_instrs:]
            for k in [k for k in self.p.leaves if k >= n_vals]:
                del self.p.leaves[k]
            self._fresh = {k for k in self._fresh if k < n_vals}
            for k in [k for k in self.p.modules if k not in mods]:
                del self.p.modules[k]
            if self._mutated:  # an in-place op ran: recompute everything from the leaves
                self._replay()
            else:
                for k in [k for k in self.env if k >= n_vals]:
                    del self.env[k]
            raise
        finally:
            self._mutated = mutated or self._mutated

    def _replay(self):
        self.env = {vid: t for vid, t in self.p.leaves.items()}
        with torch.no_grad():
            for ins in self.p.instrs:
                self.env[ins.out] = _call(OPS[ins.op], [self.env[i] for i in ins.inputs],
                                          ins.static, self.p.modules)

    def try_add(self, op: str, *inputs: int, **static) -> int | None:
        """add(), rolled back and None if refused."""
        try:
            with self.transaction():
                return self.add(op, *inputs, **static)
        except OpRejected:
            return None

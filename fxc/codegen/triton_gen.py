"""A region's ATen program -> Triton source text, plus the launch geometry it needs.

Two kernel shapes:
- pointwise: one 1-D tile of BLOCK elements of the output shape per program; the element's
  multi-index is decomposed over the (collapsed) dims and every operand is read and written
  at `sum(index[d] * stride[d])`, so broadcast (stride 0), permuted and sliced operands are
  read where they lie, without a copy.
- row: one program holds ROWS rows x RB columns, a row being the trailing `reduce` dims
  (RB >= their size, a power of two); a value is either [ROWS, RB] (row-shaped) or [ROWS, 1]
  (reduced). Reductions mask the padding columns with their identity.

Numerics follow ATen: each op computes in its opmath dtype (fp32 for fp16/bf16) from its
operands and is rounded to the graph's dtype (registry.py); reductions, softmax and norms
accumulate in fp32 and round once, as ATen's kernels do.

The source depends only on the region's key, the input dtypes, the broadcast pattern
(which operands are constant along a row) and the number of dims left after collapsing:
`Launch.spec` is that, and cache.py compiles one kernel per distinct spec.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import torch

from . import registry as R
from .region import In, Region, Val

MAX_ROW = 16384          # longest row (product of the reduced dims) a row kernel holds
MAX_TILE = 4096          # elements per row-kernel program
NEG_INF = '-float("inf")'


@dataclasses.dataclass
class Launch:
    """Everything one launch needs; `source` and `name` depend on `spec` alone."""

    spec: str
    name: str
    source: str
    grid: int
    ints: list[int]
    constexprs: dict[str, int]
    num_warps: int


# -- geometry --------------------------------------------------------------------------------

def _expand(shape, stride, full) -> list[int]:
    """Strides of a tensor broadcast (right-aligned) to `full`: 0 along broadcast dims."""
    pad = len(full) - len(shape)
    out = [0] * pad
    for d, (n, s) in enumerate(zip(shape, stride)):
        out.append(0 if n == 1 else int(s))
    return out


def _collapse(sizes: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge neighbours every operand walks as one dim."""
    out_sizes: list[int] = []
    out_st: list[list[int]] = [[] for _ in strides]
    for d, n in enumerate(sizes):
        if n == 1:
            continue
        if out_sizes and all(st[-1] == s[d] * n for st, s in zip(out_st, strides)):
            out_sizes[-1] *= n
            for st, s in zip(out_st, strides):
                st[-1] = s[d]
            continue
        out_sizes.append(n)
        for st, s in zip(out_st, strides):
            st.append(s[d])
    if not out_sizes:
        return [1], [[0] for _ in strides]
    return out_sizes, out_st


def plan(region: Region, inputs: list[torch.Tensor], outputs: list[torch.Tensor],
         interpret: bool = False) -> Launch | str:
    """The launch for these inputs and output buffers (real, fake or meta tensors), or why
    no kernel fits (then the op runs its reference)."""
    vals = region.metas(inputs)
    k = region.reduce
    if k:
        red = next(j for j, (t, _, _) in enumerate(region.ops) if t in R.REDUCTIONS)
        x = region.ops[red][1][0]
        full = list((inputs[x.i] if isinstance(x, In) else vals[x.j]).shape)
    else:
        full = list(torch.broadcast_shapes(*(o.shape for o in outputs)))
    in_st = [_expand(t.shape, t.stride(), full) for t in inputs]
    out_st = []
    for o in outputs:
        if k and o.dim() == len(full) - k:       # a reduction without keepdim
            out_st.append([int(s) for s in o.stride()] + [0] * k)
        else:
            out_st.append(_expand(o.shape, o.stride(), full))
    numel = math.prod(full)
    if numel == 0:
        return "empty"
    ops_st = in_st + out_st
    span = max((sum((n - 1) * abs(s) for n, s in zip(full, st)) for st in ops_st), default=0)
    idx64 = max(span, numel) >= 2**31 - 1
    dtypes = [str(t.dtype).replace("torch.", "") for t in inputs]
    if not k:
        sizes, st = _collapse(full, ops_st)
        spec = _spec(region, dtypes, ("pw", len(sizes), idx64, interpret))
        block = min(1024, max(16, 1 << (numel - 1).bit_length()))
        name = f"fxc_pointwise_{spec}"
        src = _source(region, vals, inputs, name, "pw", len(sizes), 0, None, idx64, interpret)
        ints = [numel] + sizes[1:] + [s for one in st for s in one]
        return Launch(spec, name, src, -(-numel // block), ints, {"BLOCK": block},
                      4 if block >= 512 else 1)
    outer, inner = full[:-k], full[-k:]
    rows, row = math.prod(outer), math.prod(inner)
    if row > MAX_ROW:
        return f"a row of {row} elements (the kernel holds {MAX_ROW})"
    o_sizes, o_st = _collapse(outer, [s[:-k] for s in ops_st])
    i_sizes, i_st = _collapse(inner, [s[-k:] for s in ops_st])
    const_row = [all(s == 0 for s in st) for st in i_st[:len(inputs)]]
    spec = _spec(region, dtypes, ("row", len(o_sizes), len(i_sizes), tuple(const_row), idx64,
                                  interpret, row == 1))
    # a row of one element: every value is [ROWS, 1] (else a masked [ROWS, 16] tile would meet
    # [ROWS, 1] stores of values the shapes call reduced)
    rb = 1 if row == 1 else max(16, 1 << (row - 1).bit_length())
    nrows = max(1, min(64, MAX_TILE // rb, 1 << (rows - 1).bit_length()))
    name = f"fxc_row_{spec}"
    src = _source(region, vals, inputs, name, "row", len(o_sizes), len(i_sizes), const_row,
                  idx64, interpret)
    ints = [rows, row] + o_sizes[1:] + i_sizes[1:] + [s for a, b in zip(o_st, i_st) for s in a + b]
    tile = nrows * rb
    return Launch(spec, name, src, -(-rows // nrows), ints, {"ROWS": nrows, "RB": rb},
                  1 if tile <= 512 else 4 if tile <= 4096 else 8)


def _spec(region: Region, dtypes: list[str], shape: tuple) -> str:
    text = f"{region.key}|{','.join(dtypes)}|{shape}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- source ------------------------------------------------------------------------------------

def _lit(v, dtype: torch.dtype) -> str:
    """A Python scalar as a Triton literal of `dtype`'s kind (parenthesized)."""
    if dtype.is_floating_point:
        f = float(v)
        if math.isnan(f):
            return 'float("nan")'
        if math.isinf(f):
            return '(-float("inf"))' if f < 0 else 'float("inf")'
        return f"({f!r})"
    if dtype == torch.bool:
        return "True" if v else "False"
    return f"({int(v)})"


def _conv(expr: str, have: torch.dtype, want: torch.dtype) -> str:
    if have == want:
        return expr
    if want == torch.bool:
        return f"({expr} != 0)"
    return f"({expr}).to({R.DTYPES[want]})"


def _source(region: Region, vals, inputs, name: str, kind: str, n_a: int, n_b: int,
            const_row, idx64: bool, interpret: bool) -> str:
    n_in, n_out = len(inputs), len(region.outputs)
    ptrs = [f"in{i}" for i in range(n_in)] + [f"out{i}" for i in range(n_out)]
    body: list[str] = []
    pid = "tl.program_id(0).to(tl.int64)" if idx64 else "tl.program_id(0)"
    if kind == "pw":
        sizes = [f"size{d}" for d in range(1, n_a)]
        strides = [f"{p}_s{d}" for p in ptrs for d in range(n_a)]
        params = ptrs + ["numel"] + sizes + strides + ["BLOCK: tl.constexpr"]
        body += [f"offs = {pid} * BLOCK + tl.arange(0, BLOCK)", "mask = offs < numel"]
        body += _decompose("offs", "i", n_a)
        full_off = {p: " + ".join(f"i{d} * {p}_s{d}" for d in range(n_a)) for p in ptrs}
        in_mask = ["mask"] * n_in
        offsets = [full_off[p] for p in ptrs]
        out_mask = ["mask"] * n_out
    else:
        osz = [f"osize{d}" for d in range(1, n_a)]
        isz = [f"isize{d}" for d in range(1, n_b)]
        strides = [f"{p}_{x}{d}" for p in ptrs for x, n in (("o", n_a), ("i", n_b)) for d in range(n)]
        params = ptrs + ["rows", "R"] + osz + isz + strides + ["ROWS: tl.constexpr", "RB: tl.constexpr"]
        body += [f"r = {pid} * ROWS + tl.arange(0, ROWS)[:, None]",
                 "c = tl.arange(0, RB)[None, :]", "rmask = r < rows", "cmask = c < R",
                 "mask = rmask & cmask"]
        body += _decompose("r", "o", n_a, "osize")
        body += _decompose("c", "j", n_b, "isize")
        outer = {p: " + ".join(f"o{d} * {p}_o{d}" for d in range(n_a)) for p in ptrs}
        innr = {p: " + ".join(f"j{d} * {p}_i{d}" for d in range(n_b)) for p in ptrs}
        row_out = [not _reduced(vals[j], region.reduce) for j in region.outputs]
        const = list(const_row) + [not f for f in row_out]
        offsets = [outer[p] if c else f"{outer[p]} + {innr[p]}" for p, c in zip(ptrs, const)]
        in_mask = ["rmask" if c else "mask" for c in const_row]
        out_mask = ["mask" if f else "rmask" for f in row_out]
    used = {a.i for _, args, kw in region.ops for a in _refs(args, kw) if isinstance(a, In)}
    for i in range(n_in):
        if i in used:
            body.append(f"x{i} = tl.load(in{i} + ({offsets[i]}), mask={in_mask[i]}, other=0)")
    dt = {("in", i): t.dtype for i, t in enumerate(inputs)}
    for j, v in enumerate(vals):
        dt[("v", j)] = v.dtype
    uses_tanh = False
    for j, (target, args, kwargs) in enumerate(region.ops):
        pre, expr = _emit(target, args, kwargs, vals, inputs, dt, j, interpret)
        uses_tanh |= "_tanh(" in expr
        body += pre + [f"v{j} = {expr}"]
    for n, j in enumerate(region.outputs):
        v = f"v{j}"
        if kind == "row" and out_mask[n] == "mask":
            v = f"tl.broadcast_to({v}, [ROWS, RB])"
        body.append(f"tl.store(out{n} + ({offsets[n_in + n]}), {v}, mask={out_mask[n]})")
    head = [f"# fxc generated kernel: {kind} region, {len(region.ops)} ATen ops, "
            f"{n_in} inputs ({', '.join(_fmt(t) for t in inputs)}), {n_out} outputs"]
    for j, (target, args, kwargs) in enumerate(region.ops):
        head.append(f"#   v{j} = {_show(target, args, kwargs)}")
    head += ["import triton", "import triton.language as tl"]
    if uses_tanh:
        if interpret:  # the interpreter has no libdevice: tanh from exp (abs error ~1e-7)
            head += ["", "", "@triton.jit", "def _tanh(x):",
                     "    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0"]
        else:
            head += ["from triton.language.extra import libdevice", "", "", "@triton.jit",
                     "def _tanh(x):", "    return libdevice.tanh(x)"]
    sig = f"def {name}(" + ", ".join(params) + "):"
    return "\n".join(head + ["", "", "@triton.jit", sig] + ["    " + b for b in body]) + "\n"


def _reduced(v: torch.Tensor, k: int) -> bool:
    return v.dim() < k or all(n == 1 for n in v.shape[-k:]) if k else False


def _decompose(flat: str, var: str, n: int, size: str = "size") -> list[str]:
    if n == 1:
        return [f"{var}0 = {flat}"]
    lines, rem = [], flat
    for d in range(n - 1, 0, -1):
        lines.append(f"{var}{d} = {rem} % {size}{d}")
        lines.append(f"{var}_{d} = {rem} // {size}{d}")
        rem = f"{var}_{d}"
    lines.append(f"{var}0 = {rem}")
    return lines


def _refs(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (In, Val)):
            yield a
        elif isinstance(a, list):
            yield from (x for x in a if isinstance(x, (In, Val)))


def _fmt(t) -> str:
    return f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"


def _show(target, args, kwargs) -> str:
    def s(a):
        if isinstance(a, In):
            return f"in{a.i}"
        if isinstance(a, Val):
            return f"v{a.j}"
        return repr(a)
    parts = [s(a) for a in args] + [f"{k}={s(v)}" for k, v in kwargs.items()]
    return f"{target.namespace}.{target._opname}.{target._overloadname}({', '.join(parts)})"


def _emit(target, args, kwargs, vals, inputs, dt, j, interpret) -> tuple[list[str], str]:
    """(statements before, the Triton expression) of op j, its result in the graph's dtype."""
    od = vals[j].dtype

    def var(a):
        return f"x{a.i}" if isinstance(a, In) else f"v{a.j}"

    def have(a):
        return dt[("in", a.i)] if isinstance(a, In) else dt[("v", a.j)]

    def operand(a, want):
        if isinstance(a, (In, Val)):
            return _conv(var(a), have(a), want)
        return _lit(a, want)

    def meta(a):
        if isinstance(a, In):
            return torch.empty((), dtype=inputs[a.i].dtype, device="meta")
        if isinstance(a, Val):
            return torch.empty((), dtype=vals[a.j].dtype, device="meta")
        return a

    spec = R.POINTWISE.get(target)
    if spec is not None:
        ops = list(args[:spec.nargs])
        if spec.math == "cast":
            return [], _conv(var(ops[0]), have(ops[0]), od)
        template = spec.expr(args, kwargs) if callable(spec.expr) else spec.expr
        if target is R.aten.clamp.default:
            ops = [ops[0]] + [b for b in (list(args[1:3]) + [kwargs.get("min"), kwargs.get("max")])
                              if b is not None]
        if spec.math == "op":
            cd = R.opmath(od)
            return [], _conv(template.format(*(operand(a, cd) for a in ops)), cd, od)
        if spec.math == "cmp":
            cd = R.opmath(torch.result_type(*(meta(a) for a in ops)) if len(ops) > 1
                          else have(ops[0]))
            return [], template.format(*(operand(a, cd) for a in ops))
        # sel
        texts = [operand(a, torch.bool if i == spec.cond else od) for i, a in enumerate(ops)]
        return [], template.format(*texts)
    return _reduction(R.REDUCTIONS[target].kind, target, args, kwargs, vals, inputs, od, operand,
                      have, j, interpret)


def _reduction(kind, target, args, kwargs, vals, inputs, od, operand, have, j,
               interpret) -> tuple[list[str], str]:
    """(statements, the result expression) of a reduction over the row (axis 1 of the tile).
    Padding columns (c >= R) are masked with the reduction's identity."""
    x = args[0]
    xd = have(x)
    acc = torch.int64 if not xd.is_floating_point and kind == "sum" else R.opmath(xd)
    t = f"t{j}"  # this op's temporaries: t{j}x, t{j}m, ...
    lines = [f"{t}x = {operand(x, acc)}"]

    def red(how, e, identity):
        if interpret:  # tl.sum is a jit function the interpreter cannot call when triton was
            # imported before TRITON_INTERPRET was set; tl.reduce with the standard combine
            # functions is what it runs with numpy
            fn = {"sum": "_sum_combine", "max": "_elementwise_max", "min": "_elementwise_min"}[how]
            return f"tl.reduce(tl.where(cmask, {e}, {identity}), 1, tl.standard.{fn}, keep_dims=True)"
        return f"tl.{how}(tl.where(cmask, {e}, {identity}), axis=1, keep_dims=True)"

    if kind in ("sum", "mean"):
        e = red("sum", f"{t}x", 0) + (" / R" if kind == "mean" else "")
    elif kind in ("amax", "amin"):
        e = red(kind[1:], f"{t}x", NEG_INF if kind == "amax" else 'float("inf")')
    elif kind in ("var", "layer_norm"):
        lines.append(f"{t}m = {red('sum', f'{t}x', 0)} / R")
        lines.append(f"{t}d = tl.where(cmask, {t}x - {t}m, 0)")
        if kind == "var":
            corr = kwargs.get("correction")
            e = f"{red('sum', f'{t}d * {t}d', 0)} / (R - {_lit(1 if corr is None else corr, acc)})"
        else:
            w, b, eps = (list(args[2:5]) + [None, None, 1e-5])[:3]
            lines.append(f"{t}r = tl.rsqrt({red('sum', f'{t}d * {t}d', 0)} / R + "
                         f"{_lit(eps, torch.float32)})")
            e = f"{t}d * {t}r"
            if w is not None:
                e = f"{e} * {operand(w, torch.float32)}"
            if b is not None:
                e = f"{e} + {operand(b, torch.float32)}"
    elif kind in ("softmax", "log_softmax"):
        lines.append(f"{t}s = {t}x - {red('max', f'{t}x', NEG_INF)}")
        lines.append(f"{t}e = tl.exp({t}s)")
        total = red("sum", f"{t}e", 0)
        e = f"{t}e / {total}" if kind == "softmax" else f"{t}s - tl.log({total})"
    elif kind == "rms_norm":
        w = args[2] if len(args) > 2 else kwargs.get("weight")
        eps = args[3] if len(args) > 3 else kwargs.get("eps")
        eps = torch.finfo(acc).eps if eps is None else eps
        # ATen: (x * rsqrt(mean(x^2) + eps)) rounded to x's dtype, then times the weight
        lines.append(f"{t}y = " + _conv(f"{t}x * tl.rsqrt({red('sum', f'{t}x * {t}x', 0)} / R + "
                                         f"{_lit(eps, torch.float32)})", acc, xd))
        if w is None:
            return lines, _conv(f"{t}y", xd, od)
        cd = R.opmath(od)
        return lines, _conv(f"{_conv(f'{t}y', xd, cd)} * {operand(w, cd)}", cd, od)
    else:
        raise ValueError(f"no reduction template for {kind}")
    return lines, _conv(e, acc, od)

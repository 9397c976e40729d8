"""Generated kernels (fxc/codegen/) under Triton's CPU interpreter, against the region's own
ATen ops: hypothesis draws random regions (pointwise chains, and row regions: a trailing-dim
reduction, softmax or norm with prologue and epilogue) over inputs that broadcast (size-1,
lower rank, 0-d), lie permuted, strided or expanded, with odd sizes (1, 3, 17, 129), fp32 and
fp16, and outputs written in a drawn dim order. Plus: the key round trip, the structural
cache (one kernel for equal structures), the out form into strided buffers.

TRITON_INTERPRET is read by Triton each time a kernel is jitted (triton.knobs), so it is set
per test (monkeypatch), and the kernel cache keys on it.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxc.ops  # noqa: F401
from fxc.codegen import cache, registry
from fxc.codegen.region import In, Region, Val, dim_order

pytest.importorskip("triton")
aten = torch.ops.aten
F16, F32 = torch.float16, torch.float32


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


# -- drawing regions -------------------------------------------------------------------------

class Draft:
    """A region under construction, run eagerly as it grows (so shapes and values are known)."""

    def __init__(self, inputs):
        self.inputs, self.ops, self.vals = inputs, [], []

    def ref(self, a):
        return self.inputs[a.i] if isinstance(a, In) else self.vals[a.j]

    def add(self, target, *args, **kwargs):
        sub = lambda a: self.ref(a) if isinstance(a, (In, Val)) else a  # noqa: E731
        self.vals.append(target(*[sub(a) for a in args], **kwargs))
        self.ops.append((target, args, kwargs))
        return Val(len(self.ops) - 1)

    def shape(self, a):
        return tuple(self.ref(a).shape)

    def dtype(self, a):
        return self.ref(a).dtype


def _layout(draw, shape, dtype, gen):
    """A tensor of `shape` as it may arrive: contiguous, permuted, strided or expanded."""
    kind = draw(st.sampled_from(["contig", "permuted", "strided", "expanded"])) if shape else "contig"
    if kind == "permuted" and len(shape) > 1:
        perm = draw(st.permutations(range(len(shape))))
        base = torch.randn([shape[p] for p in perm], generator=gen)
        t = base.permute([perm.index(d) for d in range(len(shape))])
    elif kind == "strided":
        t = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen)[..., ::2]
    elif kind == "expanded" and any(n > 1 for n in shape):
        d = draw(st.sampled_from([i for i, n in enumerate(shape) if n > 1]))
        one = list(shape)
        one[d] = 1
        t = torch.randn(one, generator=gen).expand(shape)
    else:
        t = torch.randn(shape, generator=gen)
    return (t * 1.5).to(dtype) if dtype != F32 else t * 1.5


def _bcast_shape(draw, full, row_k=0):
    """A shape that broadcasts to `full`: lower rank, size-1 dims, or 0-d. In a row region,
    its trailing k dims are the row's or all 1."""
    rank = draw(st.integers(0, len(full)))
    tail = list(full[len(full) - rank:])
    if row_k and rank >= 1 and draw(st.booleans()):
        for d in range(max(0, rank - row_k), rank):
            tail[d] = 1
    for d in range(rank):
        if draw(st.integers(0, 3)) == 0:
            tail[d] = 1
    if row_k and rank:
        inner = tail[-row_k:]
        if any(n == 1 for n in inner) and inner != list(full[-len(inner):]):
            tail[-len(inner):] = [1] * len(inner)
    return tuple(tail)


def _any(draw, d: Draft, n):
    """A float value of the region so far (an input or an op's result)."""
    vals = [In(i) for i in range(n)] + [Val(j) for j in range(len(d.ops))]
    return draw(st.sampled_from([v for v in vals if d.dtype(v).is_floating_point]))


def _pointwise_step(draw, d: Draft, n_in, full_dtype):
    a, b = _any(draw, d, n_in), _any(draw, d, n_in)
    step = draw(st.sampled_from(["unary", "binary", "scalar", "safe", "select", "cast", "pow"]))
    if d.dtype(a) != d.dtype(b) and step in ("binary", "select"):
        b = a
    if step == "unary":
        op, kw = draw(st.sampled_from([(aten.neg.default, {}), (aten.tanh.default, {}),
                                       (aten.sigmoid.default, {}), (aten.relu.default, {}),
                                       (aten.gelu.default, {}), (aten.silu.default, {}),
                                       (aten.gelu.default, {"approximate": "tanh"}),
                                       (aten.abs.default, {}), (aten.erf.default, {}),
                                       (aten.hardswish.default, {}), (aten.hardsigmoid.default, {}),
                                       (aten.relu6.default, {}), (aten.sin.default, {}),
                                       (aten.cos.default, {}), (aten.floor.default, {}),
                                       ("leaky_relu", {}), ("hardtanh", {})]))
        if op == "leaky_relu":
            return d.add(aten.leaky_relu.default, a, 0.2)
        if op == "hardtanh":
            return d.add(aten.hardtanh.default, a, -0.5, 2.0)
        return d.add(op, a, **kw)
    if step == "binary":
        op = draw(st.sampled_from([aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor,
                                   aten.maximum.default, aten.minimum.default, "div"]))
        if op == "div":
            return d.add(aten.div.Tensor, a, d.add(aten.add.Tensor, d.add(aten.abs.default, b), 1.0))
        return d.add(op, a, b)
    if step == "scalar":
        op = draw(st.sampled_from([aten.add.Tensor, aten.mul.Tensor, aten.sub.Tensor,
                                   aten.rsub.Scalar, aten.div.Tensor]))
        s = draw(st.sampled_from([0.5, -2.0, 3, 1e-3, 0.1]))
        return d.add(op, a, s)
    if step == "safe":  # domain-limited ops on |x| + 1 (or -|x| for exp)
        op = draw(st.sampled_from([aten.sqrt.default, aten.rsqrt.default, aten.log.default,
                                   aten.reciprocal.default, aten.exp.default]))
        pos = d.add(aten.abs.default, a)
        arg = d.add(aten.neg.default, pos) if op is aten.exp.default else d.add(aten.add.Tensor, pos, 1.0)
        return d.add(op, arg)
    if step == "select":
        how = draw(st.sampled_from(["where", "masked_fill", "clamp"]))
        if how == "clamp":
            return d.add(aten.clamp.default, a, -1.0, 0.75)
        cond = d.add(draw(st.sampled_from([aten.gt.Tensor, aten.le.Tensor])), a, b) \
            if draw(st.booleans()) else d.add(aten.lt.Scalar, a, 0.25)
        if draw(st.booleans()):  # mask logic on booleans
            other = d.add(aten.gt.Scalar, b, -0.5)
            op = draw(st.sampled_from([aten.logical_and.default, aten.logical_or.default,
                                       aten.bitwise_and.Tensor, aten.bitwise_or.Tensor]))
            cond = d.add(op, cond, other)
            if draw(st.booleans()):
                cond = d.add(aten.bitwise_not.default, cond)
        if how == "where":
            if draw(st.booleans()):
                return d.add(aten.where.ScalarOther, cond, a, -0.25)
            return d.add(aten.where.self, cond, a, b)
        return d.add(aten.masked_fill.Scalar, a, cond, -1.5)
    if step == "cast":
        other = F32 if d.dtype(a) == F16 else F16
        up = d.add(aten._to_copy.default, a, dtype=other)
        return d.add(aten._to_copy.default, d.add(aten.mul.Tensor, up, 0.5), dtype=full_dtype)
    p = draw(st.sampled_from([2, 3, 0.5, -0.5, -1, 1.5]))
    base = a if p in (2, 3) else d.add(aten.add.Tensor, d.add(aten.abs.default, a), 1.0)
    return d.add(aten.pow.Tensor_Scalar, base, p)


def _reduction_step(draw, d: Draft, x, k, weights):
    dims = list(range(-k, 0))
    kind = draw(st.sampled_from(["sum", "mean", "amax", "amin", "var", "softmax", "log_softmax",
                                 "layer_norm", "rms_norm"] if k == 1 else
                                ["sum", "mean", "amax", "var"]))
    if kind == "sum":
        return d.add(aten.sum.dim_IntList, x, dims, True)
    if kind == "mean":
        return d.add(aten.mean.dim, x, dims, True)
    if kind in ("amax", "amin"):
        return d.add(getattr(aten, kind).default, x, dims, True)
    if kind == "var":
        return d.add(aten.var.correction, x, dims, correction=draw(st.sampled_from([0, 1])),
                     keepdim=True)
    if kind == "softmax":
        return d.add(aten._softmax.default, x, -1, False)
    if kind == "log_softmax":
        return d.add(aten._log_softmax.default, x, -1, False)
    n = d.shape(x)[-1]
    w, b = weights
    if kind == "layer_norm":
        return d.add(aten.layer_norm.default, x, [n], w if draw(st.booleans()) else None,
                     b if draw(st.booleans()) else None, 1e-5)
    return d.add(aten.rms_norm.default, x, [n], w if draw(st.booleans()) else None, 1e-6)


SIZES = st.sampled_from([1, 2, 3, 17])
ROW = st.sampled_from([1, 3, 17, 129])


@st.composite
def regions(draw, row: bool):
    dtype = draw(st.sampled_from([F32, F16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    k = draw(st.sampled_from([1, 1, 1, 2])) if row else 0
    outer = draw(st.lists(SIZES, min_size=0 if row else 0, max_size=2))
    full = tuple(outer) + (tuple(draw(st.lists(ROW, min_size=k, max_size=k))) if row else ())
    if not row:
        full = tuple(draw(st.lists(SIZES, min_size=0, max_size=3)))
    if row and k == 2:
        full = full[:-2] + (min(full[-2], 17), full[-1])  # rows of at most 17 x 129
    n_in = draw(st.integers(1, 3))
    shapes = [full] + [_bcast_shape(draw, full, k) for _ in range(n_in - 1)]
    inputs = [_layout(draw, s, dtype, gen) for s in shapes]
    weights = (None, None)
    if row:
        w = torch.randn(full[-1], generator=gen).to(dtype)
        inputs += [w, (torch.randn(full[-1], generator=gen) * 0.1).to(dtype)]
        weights = (In(n_in), In(n_in + 1))
    d = Draft(inputs)
    for _ in range(draw(st.integers(0, 3))):
        _pointwise_step(draw, d, n_in, dtype)
    x = d.add(aten.add.Tensor, _any(draw, d, n_in), In(0))  # full-shaped
    if d.dtype(x) != dtype:
        x = d.add(aten._to_copy.default, x, dtype=dtype)
    if row:
        r = _reduction_step(draw, d, x, k, weights)
        if tuple(d.shape(r)) != full and draw(st.booleans()):  # the reduced value in the epilogue
            r = d.add(aten.sub.Tensor, x, r)
        x = r
        for _ in range(draw(st.integers(0, 2))):
            x = d.add(aten.mul.Tensor, x, d.add(aten.tanh.default, _any(draw, d, n_in)))
        if draw(st.integers(0, 4)) == 0:  # a reduction without keepdim, read by nothing inside
            d.add(aten.sum.dim_IntList, d.add(aten.add.Tensor, In(0), 1.0), list(range(-k, 0)))
    else:
        for _ in range(draw(st.integers(0, 2))):
            _pointwise_step(draw, d, n_in, dtype)
        d.add(aten.add.Tensor, Val(len(d.ops) - 1), In(0))
    # outputs: the last value and some others of the region's shape (or reduced rows)
    fits = lambda v: (tuple(v.shape) == full or (row and tuple(v.shape) in  # noqa: E731
                      (full[:-k] + (1,) * k, full[:-k])))
    last = len(d.ops) - 1
    outs = [j for j, v in enumerate(d.vals) if fits(v) and j != last and draw(st.integers(0, 3)) == 0]
    outs = sorted(set(outs + [last]))
    orders = []
    for j in outs:
        rank = d.vals[j].dim()
        orders.append(list(draw(st.permutations(range(rank)))) if rank > 1 and
                      draw(st.booleans()) else list(range(rank)))
    region = Region(d.ops, len(inputs), outs, orders, k)
    return region, inputs


def check(region, inputs):
    ref = region.reference(inputs)
    if not all(torch.isfinite(r.float()).all() for r in ref if r.is_floating_point()):
        return  # a drawn chain that overflowed fp16 on both sides: nothing to compare
    outs = region.empty_outputs(inputs)
    why = cache.launch(region, inputs, outs)
    assert why is None, why
    for o, r in zip(outs, ref):
        assert o.dtype == r.dtype and o.shape == r.shape and o.stride() == r.stride()
        if not r.is_floating_point():
            assert torch.equal(o, r)
            continue
        tol = 2e-2 if r.dtype == F16 else 1e-4
        scale = max(1.0, r.float().abs().max().item())
        torch.testing.assert_close(o.float(), r.float(), rtol=tol, atol=tol * scale, equal_nan=True)


HC = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


@settings(max_examples=settings.default.max_examples * 3 // 5, suppress_health_check=HC)
@given(regions(row=False))
def test_pointwise_regions_match_the_aten_ops(case):
    check(*case)


@settings(max_examples=settings.default.max_examples // 2, suppress_health_check=HC)
@given(regions(row=True))
def test_row_regions_match_the_aten_ops(case):
    check(*case)


# -- fixed cases -------------------------------------------------------------------------------

def _rms_region():
    ops = [(aten.pow.Tensor_Scalar, (In(0), 2), {}),
           (aten.mean.dim, (Val(0), [-1], True), {}),
           (aten.add.Tensor, (Val(1), 1e-6), {}),
           (aten.rsqrt.default, (Val(2),), {}),
           (aten.mul.Tensor, (In(0), Val(3)), {}),
           (aten.mul.Tensor, (Val(4), In(1)), {})]
    return Region(ops, 2, [5], [[0, 1, 2]], reduce=1)


def test_key_round_trips_and_names_only_registry_ops():
    r = _rms_region()
    again = Region.from_key(r.key)
    assert again.key == r.key and again.ops == r.ops
    bad = r.key.replace("aten.rsqrt.default", "aten.index_select.default")
    with pytest.raises(ValueError, match="not an op"):
        Region.from_key(bad)


def test_identical_structures_compile_one_kernel():
    r = _rms_region()
    before = set(cache.compiled_specs())
    for rows, n in [(3, 17), (5, 17), (2, 129)]:  # other sizes, one structure
        x, w = torch.randn(2, rows, n).half(), torch.randn(n).half()
        check(r, [x, w])
    assert len(set(cache.compiled_specs()) - before) == 1


def test_out_form_writes_strided_buffers_in_place():
    r = _rms_region()
    x, w = torch.randn(4, 3, 33), torch.randn(33)
    big = torch.full((4, 3, 66), float("nan"))
    out = big[..., ::2]  # a strided buffer: the kernel writes through its strides
    torch.ops.fxc.fused_region.out([x, w], r.key, out=[out])
    torch.testing.assert_close(out, r.reference([x, w])[0], rtol=1e-5, atol=1e-5)
    assert big[..., 1::2].isnan().all()  # and nothing between


def test_permuted_output_order_is_kept():
    ops = [(aten.mul.Tensor, (In(0), 2.0), {}), (aten.add.Tensor, (Val(0), In(1)), {})]
    r = Region(ops, 2, [1], [[0, 2, 3, 1]])  # channels-last, as layout leaves conv outputs
    x = torch.randn(2, 3, 5, 7).contiguous(memory_format=torch.channels_last)
    (y,) = torch.ops.fxc.fused_region([x, torch.randn(3, 1, 1)], r.key)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert dim_order(y) == [0, 2, 3, 1]


def test_long_rows_fall_back_to_the_reference():
    r = _rms_region()
    x, w = torch.randn(1, 2, 20000), torch.randn(20000)
    why = cache.plan(r, [x, w], r.empty_outputs([x, w]))
    assert isinstance(why, str) and "row of 20000" in why
    (y,) = torch.ops.fxc.fused_region([x, w], r.key)
    assert torch.equal(y, r.reference([x, w])[0])


def test_every_table_row_names_a_real_overload():
    for target in list(registry.POINTWISE) + list(registry.REDUCTIONS):
        assert isinstance(target, torch._ops.OpOverload)
    assert math.isclose(registry.opmath(F16).itemsize, 4)


def _compile_for_sm90(region, inputs):
    """Compile a region's CUDA source (not the interpreter's) with Triton's own compiler down
    to a cubin for sm_90: no GPU needed, so CI catches what only the real frontend rejects."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fxc.codegen import triton_gen
    types = {F16: "*fp16", F32: "*fp32", torch.bool: "*i1", torch.int64: "*i64", torch.int32: "*i32",
             torch.bfloat16: "*bf16", torch.int8: "*i8", torch.uint8: "*u8", torch.int16: "*i16"}
    outs = region.empty_outputs(inputs)
    launch = triton_gen.plan(region, inputs, outs, interpret=False)
    fn = cache.kernel(launch)
    sig = {n: types[v.dtype] if isinstance(v, torch.Tensor) else "i32"
           for n, v in zip(fn.arg_names, [*inputs, *outs, *launch.ints])}
    sig.update({k: "constexpr" for k in launch.constexprs})
    return triton.compile(ASTSource(fn, sig, constexprs=dict(launch.constexprs)),
                          target=GPUTarget("cuda", 90, 32))


def test_cuda_sources_compile_for_sm90_without_a_gpu(monkeypatch):
    triton = pytest.importorskip("triton")
    from triton.backends import backends
    if "nvidia" not in backends:
        pytest.skip("Triton without its NVIDIA backend")
    if not isinstance(triton.language.standard.sum, triton.JITFunction):
        pytest.skip("triton was first imported under TRITON_INTERPRET=1: no compiler frontend")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    gelu_tanh = [(aten.gelu.default, (In(0),), {"approximate": "tanh"}),  # libdevice tanh helper
                 (aten.gt.Scalar, (Val(0), 0.1), {}),
                 (aten.add.Tensor, (Val(1), Val(1)), {}),                   # bool arithmetic
                 (aten.where.self, (Val(1), Val(0), In(1)), {}),
                 (aten._to_copy.default, (Val(3),), {"dtype": F16})]
    cases = [(Region(gelu_tanh, 2, [2, 4], [[1, 0], [0, 1]]),
              [torch.randn(3, 17).t(), torch.randn(17, 1)]),
             (_rms_region(), [torch.randn(2, 3, 129).half(), torch.randn(129).half()])]
    for region, inputs in cases:
        k = _compile_for_sm90(region, inputs)
        assert "cubin" in k.asm or "ptx" in k.asm
    del triton

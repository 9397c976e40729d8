"""fxc::conv2d_act, fxc::conv2d_add_act, fxc::linear_act: reference = the ATen ops they replace,
fake = the real shapes, CUDA fast paths = the reference within the dtype's tolerance (and used)."""
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import fxc.ops  # noqa: F401
from fxc.ops.conv import ACTIVATIONS
from fxc.testing import tolerances

fxc_ops = torch.ops.fxc
gpu = pytest.mark.gpu

# (act, act_args, the torch function it must equal)
ACTS = [
    ("identity", [], lambda y: y),
    ("relu", [], F.relu),
    ("hardtanh", [0.0, 6.0], F.relu6),
    ("hardtanh", [-1.5, 0.25], lambda y: F.hardtanh(y, -1.5, 0.25)),
    ("silu", [], F.silu),
    ("gelu", [], F.gelu),
    ("gelu_tanh", [], lambda y: F.gelu(y, approximate="tanh")),
    ("sigmoid", [], torch.sigmoid),
    ("hardswish", [], F.hardswish),
]
# (x shape, w shape, stride, padding, dilation, groups)
GEOMETRIES = [
    ((2, 4, 9, 9), (6, 4, 3, 3), [1, 1], [1, 1], [1, 1], 1),
    ((1, 4, 10, 7), (8, 2, 3, 1), [2, 1], [0, 1], [1, 1], 2),
    ((1, 6, 8, 8), (6, 1, 3, 3), [1, 1], [2, 2], [2, 2], 6),   # depthwise, dilated
    ((3, 3, 5, 5), (4, 3, 1, 1), [2, 2], [0, 0], [1, 1], 1),   # pointwise, strided
    ((0, 3, 5, 5), (4, 3, 3, 3), [1, 1], [1, 1], [1, 1], 1),   # empty batch
]


def conv_args(geom, dtype=torch.float32, device="cpu", bias=True, seed=0):
    xs, ws, stride, padding, dilation, groups = geom
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(xs, generator=g).to(device, dtype)
    w = (torch.randn(ws, generator=g) / (ws[1] * ws[2] * ws[3]) ** 0.5).to(device, dtype)
    b = torch.randn(ws[0], generator=g).to(device, dtype) if bias else None
    return x, w, b, stride, padding, dilation, groups


def torch_conv(x, w, b, stride, padding, dilation, groups):
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


def test_activation_table_is_the_documented_one():
    assert sorted(ACTIVATIONS) == sorted({a for a, _, _ in ACTS})


@pytest.mark.parametrize("act,act_args,fn", ACTS, ids=[f"{a}{v}" for a, v, _ in ACTS])
@pytest.mark.parametrize("geom", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_conv2d_act_reference_is_conv_then_act(geom, act, act_args, fn):
    x, w, b, *rest = conv_args(geom)
    expected = fn(torch_conv(x, w, b, *rest))
    got = fxc_ops.conv2d_act(x, w, b, *rest, act, act_args)
    assert torch.equal(got, expected)  # the same ATen ops: bitwise


@pytest.mark.parametrize("act,act_args,fn", ACTS[1:4], ids=["relu", "relu6", "hardtanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_add_act_reference_is_conv_add_act(act, act_args, fn, bias):
    x, w, b, *rest = conv_args(GEOMETRIES[0], bias=bias)
    r = torch.randn(2, 6, 9, 9)
    expected = fn(torch_conv(x, w, b, *rest) + r)
    assert torch.equal(fxc_ops.conv2d_add_act(x, w, b, r, *rest, act, act_args), expected)


@pytest.mark.parametrize("act,fn", [("relu", F.relu), ("gelu", F.gelu),
                                    ("gelu_tanh", lambda y: F.gelu(y, approximate="tanh"))])
@pytest.mark.parametrize("x_shape", [(5, 8), (2, 3, 8), (8,), (0, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_act_reference_is_linear_then_act(act, fn, x_shape, bias):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(x_shape, generator=g), torch.randn(6, 8, generator=g)
    b = torch.randn(6, generator=g) if bias else None
    assert torch.equal(fxc_ops.linear_act(x, w, b, act), fn(F.linear(x, w, b)))


@pytest.mark.parametrize("geom", GEOMETRIES[:4], ids=range(4))
def test_fake_shapes_match_real(geom):
    x, w, b, *rest = conv_args(geom)
    real = fxc_ops.conv2d_act(x, w, b, *rest, "relu", [])
    r = torch.randn(real.shape)
    with FakeTensorMode() as mode:
        fx_, fw, fb, fr = (mode.from_tensor(t) for t in (x, w, b, r))
        fake = fxc_ops.conv2d_act(fx_, fw, fb, *rest, "relu", [])
        fake_add = fxc_ops.conv2d_add_act(fx_, fw, fb, fr, *rest, "relu", [])
        fake_lin = fxc_ops.linear_act(mode.from_tensor(torch.randn(2, 3, 5)),
                                      mode.from_tensor(torch.randn(7, 5)), None, "relu")
    for f in (fake, fake_add):
        assert f.shape == real.shape and f.dtype == real.dtype and f.is_contiguous()
    assert fake_lin.shape == (2, 3, 7)


def test_opcheck():
    """torch.library's own checks: schema, fake vs real, dispatch registrations."""
    x, w, b, *rest = conv_args(GEOMETRIES[1])
    r = fxc_ops.conv2d_act(x, w, b, *rest, "relu", []) * 0.5
    torch.library.opcheck(fxc_ops.conv2d_act.default, (x, w, b, *rest, "hardtanh", [0.0, 6.0]))
    torch.library.opcheck(fxc_ops.conv2d_add_act.default, (x, w, None, r, *rest, "relu", []))
    torch.library.opcheck(fxc_ops.linear_act.default,
                          (torch.randn(2, 3, 4), torch.randn(5, 4), torch.randn(5), "gelu_tanh"))


def test_bad_arguments_raise():
    x, w, b, *rest = conv_args(GEOMETRIES[0])
    with pytest.raises(ValueError, match="unknown activation"):
        fxc_ops.conv2d_act(x, w, b, *rest, "tanh", [])
    with pytest.raises(ValueError, match="takes 2 argument"):
        fxc_ops.conv2d_act(x, w, b, *rest, "hardtanh", [])  # bounds are never implicit
    with pytest.raises(ValueError, match="unknown activation"):
        fxc_ops.linear_act(torch.randn(2, 3), torch.randn(4, 3), None, "silu")
    with FakeTensorMode() as mode, pytest.raises(ValueError, match="residual"):
        fxc_ops.conv2d_add_act(mode.from_tensor(x), mode.from_tensor(w), None,
                               mode.from_tensor(torch.randn(1, 6, 9, 9)), *rest, "relu", [])


# -- CUDA fast paths ---------------------------------------------------------------------------

def kernel_tolerance(dtype, ref) -> dict:
    """The dtype's assert_close tolerance, with atol at least 2 units in the last place of the
    largest output: the fused kernels round once (fp32 epilogue), the reference rounds the
    conv/GEMM output before the bias, add or activation (measured on an H100: up to 1 ulp)."""
    tol = tolerances(dtype)
    scale = ref.abs().max().item() if ref.numel() else 0.0  # empty batches are tested too
    tol["atol"] = max(tol["atol"], 2 * torch.finfo(dtype).eps * scale)
    return tol


def _ran(fn, op_name: str) -> bool:
    """Whether the ATen op `op_name` ran while calling fn (the profiler's op names)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
        torch.cuda.synchronize()
    return any(e.key == op_name for e in prof.key_averages())


RELU_LIKE = [("relu", [], F.relu), ("hardtanh", [0.0, 6.0], F.relu6)]


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("geom", GEOMETRIES, ids=range(len(GEOMETRIES)))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("act,act_args,fn", RELU_LIKE, ids=["relu", "relu6"])
def test_cuda_conv_relu_is_cudnn_fused_and_matches(dtype, geom, bias, channels_last, act,
                                                   act_args, fn):
    x, w, b, *rest = conv_args(geom, dtype, "cuda", bias)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fused = x.numel() > 0 and geom[-1] == 1  # grouped convs run the reference (faster)
        ref = fn(torch_conv(x, w, b, *rest))
        got = fxc_ops.conv2d_act(x, w, b, *rest, act, act_args)
        if x.numel():
            assert _ran(lambda: fxc_ops.conv2d_act(x, w, b, *rest, act, act_args),
                        "aten::cudnn_convolution_relu") == fused
        r = torch.randn_like(ref)
        ref_add = fn(torch_conv(x, w, b, *rest) + r)
        got_add = fxc_ops.conv2d_add_act(x, w, b, r, *rest, act, act_args)
        if x.numel():
            assert _ran(lambda: fxc_ops.conv2d_add_act(x, w, b, r, *rest, act, act_args),
                        "aten::cudnn_convolution_add_relu") == fused
    torch.testing.assert_close(got, ref, **kernel_tolerance(dtype, ref))
    torch.testing.assert_close(got_add, ref_add, **kernel_tolerance(dtype, ref_add))


@gpu
@pytest.mark.parametrize("act,act_args,fn", [a for a in ACTS if a[0] not in ("relu", "identity")
                                            and a[2] is not F.relu6],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_cuda_conv_other_acts_run_the_reference(act, act_args, fn):
    x, w, b, *rest = conv_args(GEOMETRIES[0], torch.float16, "cuda")
    got = fxc_ops.conv2d_act(x, w, b, *rest, act, act_args)
    assert not _ran(lambda: fxc_ops.conv2d_act(x, w, b, *rest, act, act_args),
                    "aten::cudnn_convolution_relu")
    assert torch.equal(got, fn(torch_conv(x, w, b, *rest)))


POINTWISE = ((2, 8, 5, 7), (12, 8, 1, 1), [1, 1], [0, 0], [1, 1], 1)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act,act_args,fn,op", [
    ("identity", [], lambda y: y, "aten::addmm"),
    ("relu", [], F.relu, "aten::_addmm_activation"),
    ("hardtanh", [0.0, 6.0], F.relu6, "aten::_addmm_activation"),
], ids=["identity", "relu", "relu6"])
def test_cuda_pointwise_conv_is_one_gemm_with_bias_epilogue(dtype, act, act_args, fn, op):
    x, w, b, *rest = conv_args(POINTWISE, dtype, "cuda")
    x = x.to(memory_format=torch.channels_last)
    ref = fn(torch_conv(x, w, b, *rest))
    call = lambda: fxc_ops.conv2d_act(x, w, b, *rest, act, act_args)  # noqa: E731
    got = call()
    assert _ran(call, op) and not _ran(call, "aten::cudnn_convolution")
    assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, ref, **kernel_tolerance(dtype, ref))
    nchw = x.contiguous()  # not a GEMM view: the reference (cuDNN conv + bias)
    assert not _ran(lambda: fxc_ops.conv2d_act(nchw, w, b, *rest, act, act_args), op)
    torch.testing.assert_close(fxc_ops.conv2d_act(nchw, w, b, *rest, act, act_args), ref,
                               **kernel_tolerance(dtype, ref))


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("act,fn,fast", [
    ("relu", F.relu, True),
    ("gelu_tanh", lambda y: F.gelu(y, approximate="tanh"), True),
    ("gelu", F.gelu, False),  # _addmm_activation's gelu is the tanh one: never for exact gelu
])
@pytest.mark.parametrize("x_shape", [(64, 96), (2, 7, 96), (1, 96)])
def test_cuda_linear_act_epilogue_matches(dtype, act, fn, fast, x_shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(x_shape, generator=g).to("cuda", dtype)
    w = (torch.randn(80, 96, generator=g) / 96 ** 0.5).to("cuda", dtype)
    b = torch.randn(80, generator=g).to("cuda", dtype)
    ref = fn(F.linear(x, w, b))  # fp32 matmuls stay fp32 (allow_tf32 is off by default)
    got = fxc_ops.linear_act(x, w, b, act)
    used = _ran(lambda: fxc_ops.linear_act(x, w, b, act), "aten::_addmm_activation")
    assert used == fast
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, **kernel_tolerance(dtype, ref))


@gpu
def test_cuda_linear_without_bias_runs_the_reference():
    x, w = torch.randn(4, 8, device="cuda"), torch.randn(3, 8, device="cuda")
    assert not _ran(lambda: fxc_ops.linear_act(x, w, None, "relu"), "aten::_addmm_activation")
    assert torch.equal(fxc_ops.linear_act(x, w, None, "relu"), F.relu(F.linear(x, w)))

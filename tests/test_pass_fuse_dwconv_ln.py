"""fuse_dwconv_ln: depthwise conv -> permute -> layer_norm -> fxc::dwconv2d_ln (ConvNeXt).

Structure (one op per block head, the conv/permute/norm gone), lint, numbers (bitwise on CPU,
where the op runs its reference), idempotence, refusals with their reason, drawn block shapes
(hypothesis: fires exactly when the kernel's conditions hold); the Triton kernel under Triton's
CPU interpreter (a subprocess: TRITON_INTERPRET must be set before triton is imported) on drawn
shapes and strides; on CUDA the kernel itself and the garden's ConvNeXt.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxc.capture import capture
from fxc.options import CompileOptions
from fxc.passes import PassContext, fuse_dwconv_ln
import passkit  # noqa: E402
from passkit import count

aten = torch.ops.aten
FUSED = torch.ops.fxc.dwconv2d_ln.default


def cuda_ctx(backend="torch"):
    """Options of a CUDA compile on the torch runtime; the graph itself runs on CPU."""
    return PassContext(CompileOptions(device=torch.device("cuda"), backend=backend), [])


class Head(nn.Module):
    """torchvision's CNBlock head: conv_dw -> permute -> LayerNorm (-> a linear reads it)."""

    def __init__(self, c=8, k=7, pad=3, stride=1, groups=None, dilation=1, affine=True, norm_c=None):
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, stride=stride, padding=pad, dilation=dilation,
                              groups=c if groups is None else groups)
        self.ln = nn.LayerNorm(norm_c or c, eps=1e-6, elementwise_affine=affine)
        self.fc = nn.Linear(norm_c or c, 4)

    def forward(self, x):
        return self.fc(self.ln(self.conv(x).permute(0, 2, 3, 1)))


class ReadTwice(Head):
    def forward(self, x):
        y = self.conv(x)
        return self.fc(self.ln(y.permute(0, 2, 3, 1))), y


def fused_graph(model, x, c=None):
    gm = capture(model.eval(), (x,), {}).gm
    result = passkit.run_checked(fuse_dwconv_ln, gm, (x,), c or cuda_ctx(), passkit.bitwise)[0]
    return gm, result


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_head_becomes_one_op(channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    gm, result = fused_graph(Head(), x)
    assert result.rewrites == 1 and count(gm, FUSED) == 1
    assert count(gm, aten.convolution.default, aten.layer_norm.default, aten.permute.default) == 0


REFUSALS = {  # Head(**kwargs) -> the refusal's words
    "strided": (dict(stride=2), "strided or dilated"),
    "dilated": (dict(dilation=2, pad=6), "strided or dilated"),
    "grouped, not depthwise": (dict(groups=2), "not a depthwise"),
    "dense": (dict(groups=1), "not a depthwise"),
    "no padding on a 7x7": (dict(pad=0), None),  # fires: valid conv, the kernel takes pad 0
    "norm without weight": (dict(affine=False), "weight and bias"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_must_not_fire(case):
    kwargs, why = REFUSALS[case]
    x = torch.randn(1, 8, 12, 12)
    gm = capture(Head(**kwargs).eval(), (x,), {}).gm
    code = gm.code
    result = fuse_dwconv_ln.run(gm, cuda_ctx())
    gm.recompile()
    if why is None:
        assert result.rewrites == 1
        return
    assert result.rewrites == 0 and gm.code == code
    assert any(why in n for n in result.notes), result.notes


def test_must_not_fire_when_the_conv_is_read_twice():
    x = torch.randn(1, 8, 10, 10)
    gm = capture(ReadTwice().eval(), (x,), {}).gm
    result = fuse_dwconv_ln.run(gm, cuda_ctx())
    assert result.rewrites == 0 and any("other readers" in n for n in result.notes)


def test_must_not_fire_for_other_engines():
    x = torch.randn(1, 8, 10, 10)
    gm = capture(Head().eval(), (x,), {}).gm
    result = fuse_dwconv_ln.run(gm, cuda_ctx("onnxruntime"))
    assert result.rewrites == 0 and "not fxc's torch runtime" in result.notes[0]


@settings(max_examples=20, deadline=None,  # capture costs ~0.5 s a drawn head (CI time)
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(c=st.integers(1, 12), h=st.integers(3, 9), w=st.integers(3, 9), k=st.sampled_from([1, 3, 5, 7]),
       pad=st.integers(0, 3), stride=st.sampled_from([1, 1, 2]), depthwise=st.booleans(),
       cl=st.booleans())
def test_drawn_heads_fuse_exactly_when_the_kernel_takes_them(c, h, w, k, pad, stride, depthwise, cl):
    from hypothesis import assume
    assume(h + 2 * pad >= k and w + 2 * pad >= k)
    torch.manual_seed(c * 100 + h)
    groups = c if depthwise else 1
    x = torch.randn(1, c, h, w)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    gm, result = fused_graph(Head(c=c, k=k, pad=pad, stride=stride, groups=groups), x)
    takes = (groups == c) and stride == 1 and pad < k
    assert result.rewrites == int(takes), (result.notes, takes)


def test_op_reference_fake_and_schema():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 6, 5, 7), torch.randn(6, 1, 3, 3), torch.randn(6)
    lw, lb = torch.randn(6), torch.randn(6)
    y = torch.ops.fxc.dwconv2d_ln(x, w, b, [1, 1], lw, lb, 1e-6)
    want = F.layer_norm(F.conv2d(x, w, b, padding=1, groups=6).permute(0, 2, 3, 1), (6,), lw, lb, 1e-6)
    assert torch.equal(y, want) and y.is_contiguous() and y.shape == (2, 5, 7, 6)
    torch.library.opcheck(FUSED, (x, w, b, [1, 1], lw, lb, 1e-6))
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    with mode, pytest.raises(ValueError, match="not a depthwise conv"):
        torch.ops.fxc.dwconv2d_ln(mode.from_tensor(x), mode.from_tensor(torch.randn(6, 2, 3, 3)),
                                  None, [1, 1], None, None, 1e-6)


def test_lowers_to_onnx_and_matches():
    ort = pytest.importorskip("onnxruntime")
    from fxc.lowering import to_onnx
    torch.manual_seed(0)
    x = torch.randn(1, 8, 9, 9)
    model = Head().eval()
    gm, _ = fused_graph(model, x)
    lowered = to_onnx(gm)
    assert {"Conv", "Transpose", "LayerNormalization"} <= lowered.op_types()
    sess = ort.InferenceSession(lowered.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, dict(zip(lowered.input_names, (x.numpy(),))))
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)


INTERPRETED = r'''
import os, random, torch
os.environ["TRITON_INTERPRET"] = "1"
from fxc.ops.dwconv import launch, _reference
rng = random.Random(0)
# small images: the interpreter runs every program's K*K taps in Python (CI time)
cases = [(1, 96, 4, 3, 7, 3, torch.float32, True), (2, 5, 3, 4, 3, 1, torch.float32, False),
         (1, 40, 3, 3, 7, 3, torch.float16, True), (1, 3, 4, 4, 3, 0, torch.float32, False)]
for _ in range(3):  # drawn: odd channel counts, sizes, kernels, paddings, layouts
    k = rng.choice([1, 3, 5, 7]); pad = rng.randint(0, k // 2)  # output no larger than input
    h, w = rng.randint(max(1, k - 2 * pad), 5), rng.randint(max(1, k - 2 * pad), 5)
    cases.append((1, rng.randint(1, 70), h, w, k, pad,
                  rng.choice([torch.float32, torch.float16]), rng.random() < 0.5))
for n, c, h, w, k, pad, dtype, cl in cases:
    g = torch.Generator().manual_seed(c)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    wt = (torch.randn(c, 1, k, k, generator=g) * 0.3).to(dtype)
    b, lw, lb = (torch.randn(c, generator=g).to(dtype) for _ in range(3))
    y = launch(x, wt, b, pad, lw, lb, 1e-6)
    conv = _reference(x.float(), wt.float(), b.float(), [pad, pad], None, None, 1e-6)
    # the kernel normalizes the conv output rounded to dtype, as the reference graph does
    y0 = torch.nn.functional.conv2d(x.float(), wt.float(), b.float(), padding=pad, groups=c)
    y0 = torch.nn.functional.layer_norm(y0.to(dtype).float().permute(0, 2, 3, 1), (c,),
                                        lw.float(), lb.float(), 1e-6)
    assert y.shape == y0.shape and y.is_contiguous() and y.dtype == dtype, (n, c, h, w, k, pad)
    tol = (4e-3 if dtype == torch.float16 else 2e-5) * max(1.0, y0.abs().max().item())
    if c == 1:  # one channel: the norm's variance is 0, both give the bias
        tol = max(tol, 1e-2)
    err = (y.float() - y0).abs().max().item()
    assert err <= tol, (n, c, h, w, k, pad, dtype, cl, err, tol)
print("ok", len(cases))
'''


def test_triton_kernel_matches_the_reference_under_the_interpreter():
    pytest.importorskip("triton")
    assert "ok" in passkit.run_interpreted(INTERPRETED)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 96, 56, 56), (2, 384, 14, 14), (1, 768, 7, 7), (1, 5, 3, 4)])
def test_cuda_kernel_runs_triton_and_matches(dtype, shape):
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, generator=g).to("cuda", dtype).to(memory_format=torch.channels_last)
    w = (torch.randn(c, 1, 7, 7, generator=g) * 0.2).to("cuda", dtype)
    b, lw, lb = (torch.randn(c, generator=g).to("cuda", dtype) for _ in range(3))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = torch.ops.fxc.dwconv2d_ln(x, w, b, [3, 3], lw, lb, 1e-6)
        torch.cuda.synchronize()
    assert not any(e.key == "aten::layer_norm" for e in prof.key_averages())
    y0 = F.layer_norm(F.conv2d(x, w, b, padding=3, groups=c).permute(0, 2, 3, 1), (c,), lw, lb, 1e-6)
    err = (y.float() - y0.float()).abs().max().item()
    assert err <= (8e-3 if dtype == torch.float16 else 1e-3) * max(1.0, y0.abs().max().item()), err


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tv:convnext_tiny", "timm:convnext_tiny"])
def test_garden_convnext_on_cuda_fuses_every_block_head(name):
    import fxc
    from fxc.models import get
    model, xs = get(name, size="tiny", batch=1, seed=0)
    model, xs = model.cuda(), tuple(x.cuda() for x in xs)
    c = fxc.compile(model, xs, device="cuda", precision="fp16")
    assert "dwconv_ln x" in c.report()
    with torch.no_grad():
        ref = model(*xs).float()
    out = c(*xs).float()
    assert (out - ref).norm() / ref.norm() < 5e-3

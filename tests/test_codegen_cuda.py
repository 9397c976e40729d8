"""Generated kernels on CUDA (run on the GPU machine: scripts/gpu_check.sh): fuse_regions on
real CUDA tensors in fp16, on library-like blocks (a ConvNeXt block, an RMSNorm written as
arithmetic, BERT's additive mask, a softmax with scale and mask), compared with eager FP32
(the reduced-precision contract) and with fxc without the pass, counting CUDA kernels per call.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxc
from fxc.passes.manager import lowp_problem
from passkit import count

pytestmark = pytest.mark.gpu
FUSED = torch.ops.fxc.fused_region.default


class ConvNeXtBlock(nn.Module):  # torchvision's CNBlock, written as timm/torchvision do
    def __init__(self, d=96):
        super().__init__()
        self.dw = nn.Conv2d(d, d, 7, padding=3, groups=d)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.gamma = nn.Parameter(torch.rand(d) * 0.1 + 0.05)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class RMSNorm(nn.Module):  # Llama's, as arithmetic
    def __init__(self, d=256):
        super().__init__()
        self.w, self.lin = nn.Parameter(torch.rand(d) + 0.5), nn.Linear(d, d)

    def forward(self, x):
        h = x + self.lin(x)
        f = h.float()
        f = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.w * f.to(h.dtype)


class BertMask(nn.Module):  # HF BERT's extended attention mask, then scores + mask, softmax
    def __init__(self, d=64, heads=4):
        super().__init__()
        self.q, self.k, self.h = nn.Linear(d, d), nn.Linear(d, d), heads

    def forward(self, x, mask):
        b, t, d = x.shape
        ext = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        q = self.q(x).view(b, t, self.h, -1).transpose(1, 2)
        k = self.k(x).view(b, t, self.h, -1).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / (d // self.h) ** 0.5 + ext
        return F.softmax(scores, dim=-1), torch.tanh(x * 0.5) * x + 1.0


def _cases():
    g = torch.Generator().manual_seed(0)
    x4 = torch.randn(2, 96, 14, 14, generator=g)
    xs = torch.randn(4, 33, 256, generator=g)
    xb = torch.randn(2, 17, 64, generator=g)
    mask = torch.ones(2, 17, dtype=torch.int64)
    mask[1, 11:] = 0
    # name -> (model, inputs, generated regions expected). ConvNeXt: the layer-scale mul and the
    # residual add, either side of a permute (the pass moves the permute onto the mul's operands).
    return {"convnext": (ConvNeXtBlock, (x4,), 1), "rmsnorm": (RMSNorm, (xs,), 1),
            "bert_mask": (BertMask, (xb, mask), 2)}


def _kernels(c, inputs) -> int:
    """CUDA kernels one call launches (no CUDA graph: compiled with cuda_graphs=False)."""
    with torch.no_grad():
        c(*inputs)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            c(*inputs)
            torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def _ms(c, inputs, n=50) -> float:
    with torch.no_grad():
        for _ in range(5):
            c(*inputs)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            c(*inputs)
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / n


@pytest.mark.parametrize("name", list(_cases()))
def test_blocks_fuse_match_eager_and_launch_fewer_kernels(name):
    pytest.importorskip("triton")
    build, inputs, regions = _cases()[name]
    torch.manual_seed(0)
    model = build().cuda().eval()
    inputs = tuple(t.cuda() for t in inputs)
    # layout off in both: its measured channels-last choice could differ between the two
    opts = dict(device="cuda", precision="fp16", backend="torch", cuda_graphs=False)
    c = fxc.compile(model, inputs, verify=True, disable_passes=("layout",), **opts)
    base = fxc.compile(model, inputs, disable_passes=("layout", "fuse_regions"), **opts)
    assert count(c.graph, FUSED) >= regions, c.report()
    with torch.no_grad():
        ref, out = model(*inputs), c(*inputs)
    for a, b in zip(torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(ref)):
        assert lowp_problem(a.float(), b.float()) is None, name
    k_fused, k_base = _kernels(c, inputs), _kernels(base, inputs)
    print(f"{name}: {k_base} -> {k_fused} CUDA kernels per call, "
          f"{count(c.graph, FUSED)} generated; {_ms(base, inputs):.4f} -> {_ms(c, inputs):.4f} ms "
          "per call (step loop, no CUDA graph)")
    assert k_fused < k_base if regions else k_fused <= k_base


def test_pass_on_cuda_tensors_matches_the_graph_before():
    """The pass alone over a captured CUDA graph: each fused op runs its Triton kernel."""
    from fxc.capture import capture
    from fxc.options import CompileOptions
    from fxc.passes import PassContext, fuse_regions
    import passkit
    build, inputs, _ = _cases()["rmsnorm"]
    model = build().cuda().half().eval()
    x = inputs[0].cuda().half()
    gm = capture(model, (x,), {}).gm
    before = passkit.outputs(gm, (x,))
    result = fuse_regions.run(gm, PassContext(CompileOptions(device=torch.device("cuda"),
                                                             backend="torch"), [x]))
    gm.recompile()
    assert result.rewrites >= 1, result.notes
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        after = passkit.outputs(gm, (x,))
    assert not any(e.key.startswith("aten::rsqrt") for e in prof.key_averages())  # Triton ran
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


def test_twenty_four_identical_layers_compile_one_kernel_each():
    from fxc.codegen import cache
    model = nn.Sequential(*[RMSNorm(128) for _ in range(24)]).cuda().half().eval()
    x = torch.randn(2, 9, 128, device="cuda").half()
    c = fxc.compile(model, (x,), device="cuda", precision="fp16", backend="torch")
    assert count(c.graph, FUSED) >= 24
    from fxc.codegen.region import get
    specs = set()
    for n in c.graph.graph.nodes:
        if n.target is FUSED:
            ins = [a.meta["val"] for a in n.args[0]]
            outs = [m for m in n.meta["val"]]
            specs.add(cache.plan(get(n.args[1]), ins, outs).spec)
    assert 1 <= len(specs) <= 3, len(specs)  # the first layer reads x, the others a layer's output
    assert specs <= cache.compiled_specs()  # compiled (the engine ran them), once each

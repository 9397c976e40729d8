"""fuse_regions: pointwise/row regions -> fxc::fused_region (generated Triton kernels).

The pass runs on CPU with generated_kernels=True and TRITON_INTERPRET=1, so the fused op runs
its Triton kernel under the interpreter (the reference otherwise). Structure (which ops went,
which came), lint, numbers against the graph before, idempotence; must-not-fire cases (ops
with no pointwise semantics, a lone softmax, a symbolic shape), an fp32 island kept fp32, a
graph output returned twice, the memory plan over fused outputs, ONNX lowering, the pipeline.
"""
import operator

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings

import fxc
from fxc.codegen.region import get as region_of
from fxc.options import CompileOptions
from fxc.passes import PassContext, fuse_regions
from fxc.testing import graphs
import passkit
from passkit import count

pytest.importorskip("triton")
aten = torch.ops.aten
FUSED = torch.ops.fxc.fused_region.default


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def ctx():
    return PassContext(CompileOptions(device=torch.device("cpu"), generated_kernels=True), [])


def close(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    tol = 2e-2 if b.dtype == torch.float16 else 1e-4 if b.dtype == torch.float32 else 0
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


def run_checked(gm, inputs):
    return passkit.run_checked(fuse_regions, gm, inputs, ctx(), close)[0]


class Block(nn.Module):
    """A layer-scale residual, an RMSNorm written out, BERT's additive mask, a scaled softmax."""

    def __init__(self, d=16):
        super().__init__()
        self.lin, self.w, self.gamma = nn.Linear(d, d), nn.Parameter(torch.randn(d)), nn.Parameter(torch.rand(d))

    def forward(self, x, mask):
        h = x + self.lin(x) * self.gamma                                   # layer scale + residual
        y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w  # RMSNorm
        m = (1.0 - mask[:, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        scores = (y @ y.transpose(-1, -2)) * 0.25 + m
        return torch.softmax(scores, -1), h


def inputs():
    x = torch.randn(2, 5, 16)
    mask = torch.ones(2, 5, dtype=torch.int64)
    mask[0, 3:] = 0
    return x, mask


def test_regions_fuse_and_match():
    x, mask = inputs()
    gm = passkit.captured(Block(), x, mask)
    n_mul = count(gm, aten.mul.Tensor)
    result = run_checked(gm, (x, mask))
    # (layer scale, residual, RMSNorm) and (mask arithmetic, score scale, softmax): the mask
    # [2, 1, 5] broadcasts into the softmax's rows
    assert result.rewrites == count(gm, FUSED) == 2, result.notes
    assert count(gm, aten.mul.Tensor, aten.rsqrt.default, aten.mean.dim, aten.pow.Tensor_Scalar,
                 aten.softmax.int, aten.sub.Tensor, aten._to_copy.default) == 0 < n_mul
    assert count(gm, aten.linear.default) == 1 and count(gm, aten.bmm.default, aten.matmul.default) >= 1
    assert result.notes[0] == "2 regions fused, 14 ops absorbed, 2 distinct kernels"
    assert any("not in the op table" in n for n in result.notes)


@settings(max_examples=settings.default.max_examples // 5,  # ci: 40 (the kernels run interpreted)
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(graphs(max_ops=8, dtypes=(torch.float32, torch.float16, torch.int64, torch.bool)))
def test_generated_graphs(g):
    """Random graphs (dtype mixes, 0-d and size-1 broadcasting, values used twice, inputs
    returned): lint, numbers, idempotence, and regions that feed each other stay in order."""
    gm = passkit.aten_graph(g)
    run_checked(gm, g.inputs)


def test_graph_output_returned_twice_is_produced_once():
    class M(nn.Module):
        def forward(self, x):
            h = torch.relu(x * 2 + 1)
            return h, h, torch.tanh(h) - x

    x = torch.randn(3, 7)
    gm = passkit.captured(M(), x)
    run_checked(gm, (x,))
    (node,) = [n for n in gm.graph.nodes if n.target is FUSED]
    assert len(region_of(node.args[1]).outputs) == 2  # h and the last value, each once
    outs = gm(x)
    assert outs[0] is outs[1] or torch.equal(outs[0], outs[1])
    close(outs[0], torch.relu(x * 2 + 1))


class ConvNeXtTail(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.lin, self.gamma = nn.Linear(d, d), nn.Parameter(torch.rand(d))

    def forward(self, x):  # layer scale (NHWC), permute back, residual add (NCHW)
        return x + (self.gamma * self.lin(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


def test_a_permute_between_pointwise_ops_moves_onto_the_operands():
    x = torch.randn(2, 8, 3, 5)
    gm = passkit.captured(ConvNeXtTail(), x)
    result = run_checked(gm, (x,))
    assert count(gm, FUSED) == 1 and result.rewrites == 2, result.notes  # a region, a view moved
    assert "1 views moved above the pointwise op that fed them" in result.notes
    assert count(gm, aten.mul.Tensor, aten.add.Tensor) == 0
    (node,) = [n for n in gm.graph.nodes if n.target is FUSED]
    assert all(a.target in (aten.permute.default, aten.view.default) or a.op == "placeholder"
               for a in node.args[0])  # the kernel reads the GEMM's output through its strides


class NotPointwise(nn.Module):
    def forward(self, x, idx):
        y = torch.gather(x * 2, 1, idx)           # gather: no pointwise semantics
        s, _ = torch.sort(y + 1, dim=-1)          # sort: neither
        return torch.softmax(s, -1)               # a lone softmax: already one ATen kernel


def test_must_not_fire_without_pointwise_neighbours():
    x, idx = torch.randn(3, 8), torch.randint(0, 8, (3, 8))
    gm = passkit.captured(NotPointwise(), x, idx)
    code = gm.code
    result = fuse_regions.run(gm, ctx())
    gm.recompile()
    assert result.rewrites == 0 and gm.code == code
    assert any("aten.gather.default: not in the op table" in n for n in result.notes)
    assert any("aten.sort" in n for n in result.notes)


def test_must_not_fire_on_symbolic_shapes():
    from torch.fx.experimental.proxy_tensor import make_fx
    gm = make_fx(lambda x: torch.tanh(x * 2) + 1, tracing_mode="symbolic")(torch.randn(4, 3))
    result = fuse_regions.run(gm, ctx())
    assert result.rewrites == 0
    assert any("symbolic shape" in n for n in result.notes), result.notes


def test_must_not_fire_off_cuda_unless_forced():
    x, mask = inputs()
    gm = passkit.captured(Block(), x, mask)
    result = fuse_regions.run(gm, PassContext(CompileOptions(device=torch.device("cpu")), []))
    assert result.rewrites == 0 and "not CUDA" in result.notes[0]


def test_fp32_island_stays_fp32():
    """Half activations, an RMSNorm kept in fp32 by the cast policy (Llama's form): the region
    holds the casts, and computes between them in fp32, as the graph said."""
    class Island(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(32).half())

        def forward(self, x):
            f = x.to(torch.float32)
            f = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-6)
            return self.w * f.to(torch.float16)

    x = (torch.randn(4, 32) * 3).half()
    model = Island()
    gm = passkit.captured(model, x)
    dtypes = {n.name: n.meta["val"].dtype for n in gm.graph.nodes if n.op == "call_function"}
    run_checked(gm, (x,))
    (node,) = [n for n in gm.graph.nodes if n.target is FUSED]
    region = region_of(node.args[1])
    metas = region.metas([node.args[0][0].meta["val"], node.args[0][1].meta["val"]])
    assert [m.dtype for m in metas] == list(dtypes.values())  # every op in its graph dtype
    ref32 = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    (got,) = gm(x)
    torch.testing.assert_close(got, model.w.detach() * ref32.half(), rtol=1e-3, atol=1e-3)


class Mlp(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.a, self.b = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.nn.functional.gelu(h) * 0.5 + torch.sigmoid(h))  # written-out epilogue


def test_memory_plan_puts_fused_outputs_in_the_arena():
    from fxc.runtime.torch_engine import TorchEngine
    x = torch.randn(3, 16)
    gm = passkit.captured(Mlp(), x)
    fuse_regions.run(gm, ctx())
    gm.recompile()
    engine = TorchEngine(gm, CompileOptions(device=torch.device("cpu")), [x])
    plan = engine.plan
    plan.verify()
    fused = {n.name for n in gm.graph.nodes if n.target is FUSED}
    assert {t.node for t in plan.tensors} & fused, plan.summary()
    for a, b in zip(engine.run([x]), gm(x)):
        assert torch.equal(a, b)  # the out form writes what the functional form returns


def test_onnx_lowering_inlines_the_region():
    ort = pytest.importorskip("onnxruntime")
    from fxc.lowering import to_onnx
    x, mask = inputs()
    gm = passkit.captured(Block(), x, mask)
    fuse_regions.run(gm, ctx())
    gm.recompile()
    lowered = to_onnx(gm)
    assert {"Softmax", "Sqrt"} & lowered.op_types() or "Pow" in lowered.op_types()
    sess = ort.InferenceSession(lowered.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, dict(zip(lowered.input_names, (x.numpy(), mask.numpy()))))
    for a, b in zip(got, gm(x, mask)):
        torch.testing.assert_close(torch.from_numpy(a), b, rtol=1e-4, atol=1e-5)


def test_pipeline_entry_switch_and_dump(tmp_path):
    x, mask = inputs()
    model = Block().eval()
    c = fxc.compile(model, (x, mask), backend="torch", generated_kernels=True, dump_dir=str(tmp_path))
    assert count(c.graph, FUSED) == 2
    dumped = sorted((tmp_path / "kernels").glob("fxc_*.py"))
    assert len(dumped) == 2 and "@triton.jit" in dumped[0].read_text()  # readable sources
    with torch.no_grad():
        for a, b in zip(c(x, mask), model(x, mask)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    off = fxc.compile(model, (x, mask), backend="torch", generated_kernels=True,
                      disable_passes=("fuse_regions",))
    assert count(off.graph, FUSED) == 0
    assert operator.getitem is not None

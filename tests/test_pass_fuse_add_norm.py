"""fuse_add_norm: add -> layer_norm -> fxc::add_layer_norm (sum and norm from one kernel).

Structure (post-LN and pre-LN blocks), lint, numbers (bitwise on CPU, where the op runs its
reference), idempotence, refusals with their reason, random graphs with planted seams; the
Triton kernel under Triton's CPU interpreter (a subprocess: TRITON_INTERPRET must be set
before triton is imported) and on CUDA.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings

import fxc
from fxc.capture import capture
from fxc.options import CompileOptions
from fxc.passes import PassContext, fuse_add_norm
from fxc.testing import graphs, plant_add_layer_norm
import passkit  # noqa: E402
from passkit import count

aten = torch.ops.aten
FUSED = torch.ops.fxc.add_layer_norm.default


def cuda_ctx(backend="torch"):
    """Options of a CUDA compile on the torch runtime; the graph itself runs on CPU."""
    return PassContext(CompileOptions(device=torch.device("cuda"), backend=backend), [])


def run_checked(gm, inputs, c=None):
    def bitwise(a, b):
        assert torch.equal(a, b), "not bitwise the graph before (the reference is the same ops)"
    return passkit.run_checked(fuse_add_norm, gm, inputs, c or cuda_ctx(), bitwise)[0]


class PostLN(nn.Module):  # BERT: y = LN(x + f(x)); only y is read
    def __init__(self, d=8):
        super().__init__()
        self.f, self.ln = nn.Linear(d, d), nn.LayerNorm(d)

    def forward(self, x):
        return self.ln(x + self.f(x))


class PreLN(nn.Module):  # GPT-2 / ViT: h = x + f(LN1(x)); out = h + g(LN2(h)): h read twice
    def __init__(self, d=8):
        super().__init__()
        self.ln1, self.ln2, self.f, self.g = nn.LayerNorm(d), nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        h = x + self.f(self.ln1(x))
        return h + self.g(self.ln2(h))


@pytest.mark.parametrize("model,fused,lns_left", [(PostLN, 1, 0), (PreLN, 1, 1)])
def test_seams_fuse_and_the_sum_stays_readable(model, fused, lns_left):
    x = torch.randn(2, 5, 8)
    gm = capture(model().eval(), (x,), {}).gm
    result = run_checked(gm, (x,))
    assert result.rewrites == fused == count(gm, FUSED)
    assert count(gm, aten.layer_norm.default) == lns_left  # PreLN's first LN reads x: no add
    (node,) = [n for n in gm.graph.nodes if n.target is FUSED]
    readers = {u.args[1] for u in node.users}
    assert readers == ({1} if model is PostLN else {0, 1})  # PreLN carries h on


class Case(nn.Module):
    def __init__(self, case):
        super().__init__()
        self.case = case
        self.ln = nn.LayerNorm((5, 8) if case == "two_dims" else 8,
                               elementwise_affine=case != "no_affine")

    def forward(self, x, r):
        if self.case == "broadcast":
            return self.ln(x + r[:, :1])
        if self.case == "alpha":
            return self.ln(torch.add(x, r, alpha=2.0))
        if self.case == "scalar":
            return self.ln(x + 1.0)
        if self.case == "no_add":
            return self.ln(x * r)
        return self.ln(x + r)


REFUSALS = {
    "broadcast": "the add broadcasts",
    "alpha": "alpha != 1",
    "scalar": "scalar operand",
    "no_affine": "without weight or bias",
    "two_dims": "over 2 dimensions",
    "no_add": None,
}


@pytest.mark.parametrize("case", REFUSALS)
def test_must_not_fire(case):
    x, r = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    gm = capture(Case(case).eval(), (x, r), {}).gm
    code = gm.code
    result = fuse_add_norm.run(gm, cuda_ctx())
    gm.recompile()
    assert result.rewrites == 0 and gm.code == code
    if REFUSALS[case]:
        assert any(REFUSALS[case] in n for n in result.notes), result.notes


def test_must_not_fire_for_other_engines():
    x = torch.randn(2, 5, 8)
    gm = capture(PostLN().eval(), (x,), {}).gm
    result = fuse_add_norm.run(gm, cuda_ctx("onnxruntime"))
    assert result.rewrites == 0 and "not fxc's torch runtime" in result.notes[0]


@settings(max_examples=60,  # fewer than the ci profile's 200, for CI time
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(graphs(max_ops=5, plant=[plant_add_layer_norm]))
def test_generated_graphs(g):
    gm = passkit.aten_graph(g)  # make_fx: ~20x cheaper than capture, 60 examples in CI
    run_checked(gm, g.inputs)
    for n in gm.graph.nodes:  # no seam is left unfused without a reason
        if n.op == "call_function" and n.target is aten.layer_norm.default:
            m = fuse_add_norm.match(n, cuda_ctx())
            assert m is None or isinstance(m, fxc.passes.rewrite.Refuse), n


# -- the op ----------------------------------------------------------------------------------

def test_op_reference_fake_and_schema():
    x, r = torch.randn(3, 7), torch.randn(3, 7)
    w, b = torch.randn(7), torch.randn(7)
    s, y = torch.ops.fxc.add_layer_norm(x, r, [7], w, b, 1e-5)
    assert torch.equal(s, x + r) and torch.equal(y, F.layer_norm(x + r, (7,), w, b, 1e-5))
    torch.library.opcheck(FUSED, (x, r, [7], w, b, 1e-5))
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode, row = FakeTensorMode(), r[:1].clone()
    fx_, fr = mode.from_tensor(x), mode.from_tensor(row)
    with mode, pytest.raises(ValueError, match="no broadcasting"):
        torch.ops.fxc.add_layer_norm(fx_, fr, [7], None, None, 1e-5)


INTERPRETED = r'''
import os, sys, torch
os.environ["TRITON_INTERPRET"] = "1"
from fxc.ops.norm import launch, _reference
worst = 0.0
for rows, n, dtype in [(3, 7, torch.float32), (5, 768, torch.float16), (2, 1, torch.float32),
                       (1, 1000, torch.float16)]:  # bf16: on CUDA only (numpy has none)
    g = torch.Generator().manual_seed(n)
    x, r = (torch.randn(rows, n, generator=g).to(dtype) for _ in range(2))
    w, b = torch.randn(n, generator=g).to(dtype), torch.randn(n, generator=g).to(dtype)
    s, y = launch(x, r, w, b, 1e-5)
    s0, y0 = _reference(x, r, [n], w, b, 1e-5)
    assert torch.equal(s, s0), (rows, n, dtype)
    ulp = torch.finfo(dtype).eps * y0.abs().max().item()
    err = (y.float() - y0.float()).abs().max().item()
    assert err <= 2 * ulp + 1e-6, (rows, n, dtype, err, ulp)
print("ok")
'''


def test_triton_kernel_matches_the_reference_under_the_interpreter():
    pytest.importorskip("triton")
    assert passkit.run_interpreted(INTERPRETED, timeout=300).strip().endswith("ok")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(128, 768), (2, 197, 768), (3, 5)])
def test_cuda_kernel_runs_triton_and_matches(dtype, shape):
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(shape, generator=g).to("cuda", dtype) for _ in range(2))
    n = shape[-1]
    w, b = (torch.randn(n, generator=g).to("cuda", dtype) for _ in range(2))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        s, y = torch.ops.fxc.add_layer_norm(x, r, [n], w, b, 1e-5)
        torch.cuda.synchronize()
    assert not any(e.key == "aten::layer_norm" for e in prof.key_averages())
    s0, y0 = x + r, F.layer_norm(x + r, (n,), w, b, 1e-5)
    assert torch.equal(s, s0)
    ulp = torch.finfo(dtype).eps * y0.abs().max().item()
    assert (y.float() - y0.float()).abs().max().item() <= 2 * ulp + 1e-6


@pytest.mark.gpu
def test_zoo_bert_on_cuda_fuses_every_seam_and_matches():
    from fxc.models import get
    model, inputs = get("bert", "tiny")
    model, inputs = model.cuda(), tuple(t.cuda() for t in inputs)
    c = fxc.compile(model, inputs, precision="fp16", backend="torch", verify=True)
    # Every layer norm follows a same-shape add at batch 1: two per layer and the embeddings'
    # (H100 run: bert-base went from 245 to 220 nodes, 25 seams).
    lns = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert count(c.graph, FUSED) == lns and count(c.graph, aten.layer_norm.default) == 0
    with torch.no_grad():
        out, ref = c(*inputs), model(*inputs)
    from fxc.passes.manager import lowp_problem
    for a, b in zip(torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(ref)):
        assert lowp_problem(a.float(), b.float()) is None

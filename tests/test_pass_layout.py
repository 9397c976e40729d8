"""Channels-last layout (passes/layout.py): the NHWC graph it builds (structure, lint, numbers:
assert_close in fp32, lowp_problem in half), the refusals, and that it never fires on CPU.
The measuring half of the pass needs CUDA: see the gpu tests at the end."""
import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxc
import fxc.ops  # noqa: F401  (torch.ops.fxc.*)
from fxc import ir
from fxc.capture import capture
from fxc.options import CompileOptions, resolve
from fxc.passes import PassContext, cast_precision, layout
from fxc.passes.manager import lowp_problem

aten = torch.ops.aten
CL = torch.channels_last


class Net(nn.Module):
    """conv -> relu -> conv (+ residual) -> 1x1 conv -> flatten -> linear: a small ResNet."""

    def __init__(self, flatten_map=False):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4 * 8 * 8 if flatten_map else 4, 5)
        self.flatten_map = flatten_map

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(h) + h)
        h = self.c3(h)
        # flatten of an 8x8 map: a view that NHWC strides cannot serve
        h = h.flatten(1) if self.flatten_map else h.mean((2, 3))
        return self.fc(h), h


_CAPTURED: dict = {}


def captured(flatten_map=False):
    """capture once per variant (1-2 s each on torch 2.13); each test gets its own copy."""
    if flatten_map not in _CAPTURED:
        torch.manual_seed(0)
        x = torch.randn(2, 3, 8, 8)
        _CAPTURED[flatten_map] = (capture(Net(flatten_map).eval(), (x,), {}).gm, x)
    gm, x = _CAPTURED[flatten_map]
    return copy.deepcopy(gm), x


def calls(gm, target):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]


def val(n):
    return n.meta["val"]


def nhwc(gm):
    return layout.channels_last_candidate(gm)


def check_numbers(cand, gm, x, lowp=False):
    with torch.no_grad():
        for a, b in zip(cand(x), gm(x)):
            assert a.is_contiguous() == b.is_contiguous() and a.dtype == b.dtype
            if lowp:
                assert lowp_problem(a, b) is None
            else:
                torch.testing.assert_close(a, b)


def test_first_conv_input_and_weights_go_channels_last():
    gm, x = captured()
    cand, changes = nhwc(gm)
    ir.lint(cand, "layout")
    convs = calls(cand, aten.convolution.default)
    clones = [n for n in calls(cand, aten.clone.default) if n.kwargs.get("memory_format") == CL]
    assert len(clones) == 1 and clones[0].args[0].op == "placeholder"  # the graph input side
    assert convs[0].args[0] is clones[0]
    assert all(val(c).is_contiguous(memory_format=CL) for c in convs)  # propagated, no more clones
    w1, w2 = convs[0].args[1], convs[1].args[1]
    assert w1.op == "get_attr" and val(w1).is_contiguous(memory_format=CL)
    assert getattr(cand, w1.target).is_contiguous(memory_format=CL)
    assert not getattr(cand, w2.target).is_contiguous()  # a real 3x3 weight: really NHWC now
    assert changes == 1 + 2  # the clone and two 3x3 weights (a 1x1 weight is NHWC already)
    check_numbers(cand, gm, x)


def test_candidate_leaves_the_original_graph_alone():
    gm, x = captured()
    code, buffers = gm.code, dict(gm.named_buffers())
    nhwc(gm)
    assert gm.code == code and dict(gm.named_buffers()).keys() == buffers.keys()
    assert all(b.is_contiguous() for b in gm.buffers())


def test_a_view_that_needs_contiguous_strides_reads_a_contiguous_clone():
    gm, x = captured(flatten_map=True)
    cand, _ = nhwc(gm)
    ir.lint(cand, "layout")
    (view,) = [n for n in calls(cand, aten.view.default) if len(val(n).shape) == 2]
    fix = view.args[0]
    assert fix.target is aten.clone.default
    assert fix.kwargs["memory_format"] == torch.contiguous_format
    check_numbers(cand, gm, x)


def test_outputs_keep_their_strides():
    gm, x = captured()
    cand, _ = nhwc(gm)
    outs = cand.graph.output_node().args[0]
    assert all(val(o).is_contiguous() for o in outs)
    for a, b in zip(cand(x), gm(x)):
        assert a.stride() == b.stride()


def test_adopt_swaps_weights_without_growing_memory_and_is_idempotent():
    gm, x = captured()
    with torch.no_grad():
        before = gm(x)
    nbytes = sum(b.numel() for b in gm.buffers())
    cand, _ = nhwc(gm)
    layout.adopt(gm, cand)
    ir.lint(gm, "layout")
    assert sum(b.numel() for b in gm.buffers()) == nbytes
    assert {n.target for n in gm.graph.nodes if n.op == "get_attr"} == set(dict(gm.named_buffers()))
    with torch.no_grad():
        for a, b in zip(gm(x), before):
            torch.testing.assert_close(a, b)
    again, changes = nhwc(gm)
    assert changes == 0


def test_half_graph_after_cast_precision():
    gm, x = captured()
    opts = resolve(device=None, precision="fp16", backend="torch", verify=False, dump_dir=None,
                   disable_passes=(), default_device=torch.device("cpu"))
    cast_precision.run(gm, PassContext(opts, [x]))
    gm.recompile()
    cand, changes = nhwc(gm)
    ir.lint(cand, "layout")
    (clone,) = [n for n in calls(cand, aten.clone.default) if n.kwargs.get("memory_format") == CL]
    assert val(clone).dtype == torch.float16  # after the input's cast to half
    assert val(calls(cand, aten.convolution.default)[0].args[1]).dtype == torch.float16
    check_numbers(cand, gm, x, lowp=True)


def test_weight_with_another_reader_is_not_converted():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):  # a view of the weight too: NHWC strides would break it
            return self.conv(x), self.conv.weight.flatten()

    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    gm = capture(Shared().eval(), (x,), {}).gm
    cand, changes = nhwc(gm)
    ir.lint(cand, "layout")
    (c,) = calls(cand, aten.convolution.default)
    assert c.args[1].target in dict(gm.named_buffers()) and val(c.args[1]).is_contiguous()
    assert changes == 2  # the input's clone, and the returned conv output made contiguous again
    check_numbers(cand, gm, x)


def test_fused_conv_ops_and_their_residual():
    torch.manual_seed(0)
    x, r = torch.randn(1, 3, 6, 6), torch.randn(1, 4, 6, 6)
    g = fx.Graph()
    xp, rp = g.placeholder("x"), g.placeholder("r")
    xp.meta["val"], rp.meta["val"] = x, r
    w = g.get_attr("w")
    y = g.call_function(torch.ops.fxc.conv2d_add_act.default,
                        (xp, w, None, rp, [1, 1], [1, 1], [1, 1], 1, "relu", []))
    g.output((y,))
    root = nn.Module()
    root.register_buffer("w", torch.randn(4, 3, 3, 3))
    gm = fx.GraphModule(root, g)
    ir.infer_meta(gm)
    assert layout.conv_operands(y) == ([0, 3], 1)
    cand, changes = nhwc(gm)
    ir.lint(cand, "layout")
    (fused,) = calls(cand, torch.ops.fxc.conv2d_add_act.default)
    assert all(val(fused.args[i]).is_contiguous(memory_format=CL) for i in (0, 1, 3))
    assert changes == 4  # input, residual, weight, and the output made contiguous again
    with torch.no_grad():
        out = cand(x, r)[0]
    assert out.is_contiguous()  # the fused op returns NHWC: made contiguous for the caller
    torch.testing.assert_close(out, gm(x, r)[0])


def test_never_fires_on_cpu():
    gm, x = captured()
    code = gm.code
    opts = resolve(device="cpu", precision="fp32", backend="torch", verify=False, dump_dir=None,
                   disable_passes=(), default_device=torch.device("cpu"))
    ctx = PassContext(opts, [x])
    result = layout.run(gm, ctx)
    assert result.rewrites == 0 and gm.code == code and "report_sections" not in ctx.state
    # and the pipeline does not even call it there
    from fxc.passes.pipeline import PIPELINE
    (entry,) = [p for p in PIPELINE if p.name == "layout"]
    assert not entry.when(opts)
    c = fxc.compile(Net().eval(), (x,), backend="torch")
    assert "layout" in c.report() and not any(
        n.kwargs.get("memory_format") == CL for n in c.graph.graph.nodes if n.op == "call_function")


def test_graph_without_conv_is_left_alone_even_on_cuda_options():
    """Rule 1 is decided before anything touches CUDA, so it is testable here."""
    lin = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
    x = torch.randn(2, 4)
    gm = capture(lin, (x,), {}).gm
    code = gm.code
    ctx = PassContext(CompileOptions(device=torch.device("cuda", 0)), [x])
    result = layout.run(gm, ctx)
    assert result.rewrites == 0 and gm.code == code and result.notes == ["no 2-D convolution"]


def test_mismatch_contract():
    a = torch.randn(64)
    assert layout.mismatch((a,), (a.clone(),)) is None
    assert layout.mismatch((a.half(),), (a.half() * 1.5,)) is not None
    assert "inf or NaN" in layout.mismatch((torch.full((3,), float("inf")).half(),),
                                          (torch.ones(3).half(),))
    assert layout.mismatch((torch.tensor([1, 2]),), (torch.tensor([1, 3]),)) is not None
    b = torch.randn(256)
    off = b + 0.05 * torch.randn(256)  # ~5% relative norm error (both norms ~ sqrt(256))
    assert layout.mismatch((off.half(),), (b.half(),)) is not None  # past fp16's 2e-2
    assert layout.mismatch((off.bfloat16(),), (b.bfloat16(),)) is None  # within bf16's 0.16


# -- CUDA: the measured decision --------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_measures_both_layouts_and_keeps_the_faster(precision):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(8, 3, 8, 8)
    c = fxc.compile(model, (x,), device="cuda", precision=precision, backend="torch", verify=True)
    (lines,) = [ls for t, ls in c.report_data.sections if t == "layout"]
    assert lines[0].startswith("contiguous (NCHW): ")
    assert lines[1].startswith("channels_last (NHWC): ")
    kept = lines[2] == "kept channels_last"
    # what the graph's convs read: a later pass (fuse_regions) may absorb the conversion
    # node itself into a generated kernel that writes channels-last, so look at the layouts
    convs = [n for n in ir.call_nodes(c.graph) if "conv" in str(n.target)]
    has_cl = any(n.args[0].meta["val"].dim() == 4 and n.args[0].meta["val"].shape[1] > 1
                 and n.args[0].meta["val"].is_contiguous(memory_format=CL) for n in convs)
    assert convs and kept == has_cl
    with torch.no_grad():
        expected = model.cuda()(x.cuda())
    for a, b in zip(c(x.cuda()), expected):
        assert a.is_contiguous() and lowp_problem(a, b) is None

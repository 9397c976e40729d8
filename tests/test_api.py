"""The public API: options, report, verify mode, pass switches, dumps, torch.compile backend."""
import os

import pytest
import torch
import torch.nn as nn

import fxc
from fxc.passes import Pass, PassResult, pipeline


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.fixture
def model_and_input():
    return Small().eval(), torch.randn(4, 8)


def test_compile_defaults(model_and_input):
    m, x = model_and_input
    c = fxc.compile(m, (x,))
    torch.testing.assert_close(c(x), m(x))
    assert c.options.device == torch.device("cpu") and c.options.precision == "fp32"
    assert isinstance(c.graph, torch.fx.GraphModule)
    text = c.report()
    assert "capture" in text and "dce" in text and "total" in text
    assert "backend=onnxruntime" in text  # auto on CPU: ONNX Runtime first (fxc/backends.py)
    assert "backend: onnxruntime (auto" in text


@pytest.mark.parametrize("kw, match", [
    ({"precision": "fp8"}, "precision"),
    ({"backend": "tvm"}, "backend"),
    ({"device": "nonsense"}, "device"),
    ({"no_such_option": 1}, "unknown compile option"),
])
def test_bad_options_are_typed_errors(model_and_input, kw, match):
    m, x = model_and_input
    with pytest.raises(fxc.FxcOptionError, match=match):
        fxc.compile(m, (x,), **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_an_option_error(model_and_input):
    m, x = model_and_input
    with pytest.raises(fxc.FxcOptionError, match="CUDA is not available"):
        fxc.compile(m, (x,), device="cuda")


def test_disable_passes_by_name(model_and_input):
    m, x = model_and_input
    c = fxc.compile(m, (x,), disable_passes=("dce",))
    assert "skipped: disabled" in c.report()
    torch.testing.assert_close(c(x), m(x))


def test_disable_passes_from_environment(model_and_input, monkeypatch):
    monkeypatch.setenv("FXC_DISABLE_PASSES", "dce")
    m, x = model_and_input
    assert "skipped: disabled" in fxc.compile(m, (x,)).report()


def _breaks_numbers(gm, ctx):
    """A deliberately wrong pass: negates the graph's first output (meta stays true)."""
    from fxc import ir
    out = gm.graph.output_node()
    first = out.args[0][0]
    with gm.graph.inserting_before(out):
        neg = ir.new_call(gm.graph, torch.ops.aten.neg.default, (first,))
    out.args = ((neg,) + tuple(out.args[0][1:]),)
    return PassResult(rewrites=1)


def _breaks_meta(gm, ctx):
    """A pass that forgets to keep meta true: changes a node's op but not its meta shape."""
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.args and isinstance(n.args[0], torch.fx.Node):
            n.args = (n.args[0],)
            n.kwargs = {}
            n.target = torch.ops.aten.sum.default
            return PassResult(rewrites=1)
    return PassResult()


@pytest.mark.parametrize("bad, err", [(_breaks_numbers, "output 0 changed"),
                                      (_breaks_meta, "meta")])
def test_verify_names_the_first_pass_that_breaks_the_graph(model_and_input, monkeypatch, bad, err):
    m, x = model_and_input
    monkeypatch.setattr(pipeline, "PIPELINE", pipeline.PIPELINE + [Pass("evil", bad)])
    monkeypatch.setattr(fxc.passes, "PIPELINE", pipeline.PIPELINE)
    with pytest.raises(fxc.FxcPassError, match=err) as info:
        fxc.compile(m, (x,), verify=True)
    assert info.value.pass_name == "evil"
    # without verify the broken pass goes unnoticed at compile time: that is what verify is for
    if bad is _breaks_numbers:
        fxc.compile(m, (x,))


def test_verify_from_environment(model_and_input, monkeypatch):
    monkeypatch.setenv("FXC_VERIFY", "1")
    m, x = model_and_input
    assert fxc.compile(m, (x,)).options.verify


def test_dump_dir_writes_every_stage(model_and_input, tmp_path):
    m, x = model_and_input
    fxc.compile(m, (x,), dump_dir=str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    assert files[0].startswith("00_capture")
    assert any("dce" in f for f in files)
    text = (tmp_path / files[0]).read_text()
    assert "aten.linear" in text


def test_torch_compile_backend(model_and_input):
    from fxc.dynamo import register
    register()
    m, x = model_and_input
    torch._dynamo.reset()
    out = torch.compile(m, backend="fxc")(x)
    torch.testing.assert_close(out, m(x))


def test_errors_share_one_base():
    for name in fxc.__all__:
        obj = getattr(fxc, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, fxc.FxcError)

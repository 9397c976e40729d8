"""The ONNX lowering itself: what every emitted model looks like (names, source lines,
opset, initializers, checker), the unsupported-op report, type promotion, external data,
FP16 graphs and the dynamic batch."""
from __future__ import annotations

import onnx
import pytest
import torch

from fxc import ir
import torch.nn as nn

import fxc
from fxc import FxcUnsupportedOpError
from fxc.capture import capture
from fxc.lowering import check_model, save, to_onnx
from fxc.lowering import onnx_export
from fxc.runtime.ort_engine import OrtEngine

CPU = torch.device("cpu")


def lowered_of(model, *inputs, **kw):
    return to_onnx(capture(model.eval(), inputs, {}).gm, **kw)


def run(lowered, *inputs):
    return OrtEngine(lowered, CPU, threads=1).run(list(inputs))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y.mean(dim=(2, 3))
        return torch.nn.functional.gelu(self.fc(y))


def test_nodes_are_named_after_fx_nodes_and_carry_the_user_line():
    gm = capture(Block().eval(), (torch.randn(1, 3, 8, 8),), {}).gm
    lowered = to_onnx(gm)
    fx_names = {n.name for n in gm.graph.nodes}
    for node in lowered.model.graph.node:
        base = node.name.split("/")[0]
        assert base in fx_names or base.startswith("output_"), node.name
    gelu_nodes = [n for n in lowered.model.graph.node if n.name.split("/")[0].startswith("gelu")]
    assert len(gelu_nodes) >= 4  # written out: erf form, one node per step, suffixed names
    # Each ONNX node carries its fx node's user line (capture's own tests check that line;
    # here: lowering passes it on, whatever the line is).
    by_name = {n.name: n for n in gm.graph.nodes}
    for n in gelu_nodes:
        src = ir.source_line(by_name[n.name.split("/")[0]])
        assert src and src in n.doc_string, (n.name, n.doc_string, src)
    # the default ONNX domain's opset (other domains may be listed first)
    assert {o.domain: o.version for o in lowered.model.opset_import}[""] == 17
    assert [i.name for i in lowered.model.graph.input] == lowered.input_names


def test_weights_are_initializers_and_unused_ones_are_dropped():
    lowered = lowered_of(Block(), torch.randn(1, 3, 8, 8))
    inits = {t.name for t in lowered.model.graph.initializer}
    assert any("conv_weight" in n for n in inits) and any("fc_weight" in n for n in inits)
    assert not any("num_batches_tracked" in n for n in inits)
    used = {i for n in lowered.model.graph.node for i in n.input}
    assert inits <= used


def test_every_emitted_model_passes_the_full_checker(monkeypatch):
    calls = []
    real = onnx_export.check_model
    monkeypatch.setattr(onnx_export, "check_model", lambda m, *a: calls.append(m) or real(m, *a))
    lowered = lowered_of(Block(), torch.randn(1, 3, 8, 8))
    assert calls == [lowered.model]
    onnx.shape_inference.infer_shapes(lowered.model, check_type=True, strict_mode=True)


def test_checker_rejects_a_broken_model():
    lowered = lowered_of(Block(), torch.randn(1, 3, 8, 8))
    broken = onnx.ModelProto()
    broken.CopyFrom(lowered.model)
    broken.graph.node[0].input[0] = "nowhere"
    with pytest.raises(Exception):
        check_model(broken)


class Unsupported(nn.Module):
    def forward(self, x, i):
        a = torch.cumprod(x, 0)                  # no converter
        b = torch.bitwise_and(i, 6)              # integer bitwise: refused (opset 18)
        c = torch.special.bessel_j0(x)           # no converter
        return a, b, c, torch.relu(x)


def test_unsupported_ops_are_all_listed_at_once_with_counts_and_lines():
    x, i = torch.randn(4), torch.arange(4)
    gm = capture(Unsupported(), (x, i), {}).gm
    with pytest.raises(FxcUnsupportedOpError) as err:
        to_onnx(gm, backend="onnxruntime")
    e = err.value
    ops = " ".join(op for op, _, _ in e.unsupported)
    assert "cumprod" in ops and "bitwise_and" in ops and "bessel_j0" in ops
    assert "opset 18" in ops  # a converter's refusal carries its reason
    assert all(src and "test_lowering_onnx.py" in src for _, _, src in e.unsupported)
    assert e.backend == "onnxruntime"
    assert f"({e.total} ops, {e.total - len(e.unsupported)} supported)" in str(e)
    assert len(e.unsupported) == 3


def test_unsupported_ops_fail_at_compile_time_not_run_time():
    with pytest.raises(FxcUnsupportedOpError):
        fxc.compile(Unsupported(), (torch.randn(4), torch.arange(4)), backend="onnxruntime")


class Promote(nn.Module):
    def forward(self, i, h):
        return i + 2.5, i * 3, h * 2.0, (i > 1.5), h + torch.tensor(1.0), i / 2


def test_python_scalars_and_0d_tensors_promote_like_torch():
    i, h = torch.arange(6).view(2, 3), torch.randn(2, 3).half()
    model = Promote()
    out = run(lowered_of(model, i, h), i, h)
    for got, want in zip(out, model(i, h)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want)


def test_fp16_graphs_lower_as_they_are():
    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4).half()

        def forward(self, x):
            return torch.softmax(self.fc(x.half()), -1).float()

    x = torch.randn(3, 8)
    lowered = lowered_of(Half(), x)
    inits = {t.name: t.data_type for t in lowered.model.graph.initializer}
    assert {v for k, v in inits.items() if "fc" in k} == {onnx.TensorProto.FLOAT16}
    assert {n.op_type for n in lowered.model.graph.node} >= {"Cast", "Gemm", "Softmax"}
    model = Half()
    lowered = lowered_of(model, x)
    torch.testing.assert_close(run(lowered, x)[0], model(x), rtol=1e-2, atol=1e-3)


def test_external_data_past_the_threshold(tmp_path):
    model = Block()
    model.fc = nn.Linear(4, 300)  # 4.8 KiB: over the 1 KiB floor under which tensors stay inline
    x = torch.randn(1, 3, 8, 8)
    lowered = lowered_of(model, x)
    small = save(lowered.model, str(tmp_path / "small.onnx"))
    assert small == ["small.onnx"]
    files = save(lowered.model, str(tmp_path / "big.onnx"), external_threshold=1024)
    assert files == ["big.onnx", "big.onnx.data"]
    stored = onnx.load(str(tmp_path / "big.onnx"), load_external_data=False)
    moved = [t for t in stored.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {t.name for t in moved} >= {"p_fc_weight"}
    assert all(t.external_data[0].value == "big.onnx.data" for t in moved)
    check_model(None, str(tmp_path / "big.onnx"))
    # the caller's in-memory model keeps its weights inline
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in lowered.model.graph.initializer)
    engine = OrtEngine(lowered, CPU, model_path=str(tmp_path / "big.onnx"))
    torch.testing.assert_close(engine.run([x])[0], model(x), rtol=1e-4, atol=1e-5)


def test_ort_engine_goes_through_a_file_for_models_over_the_threshold():
    model, x = Block(), torch.randn(1, 3, 8, 8)
    engine = OrtEngine(lowered_of(model, x), CPU, external_threshold=512)
    torch.testing.assert_close(engine.run([x])[0], model(x), rtol=1e-4, atol=1e-5)


class Convnet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        self.ln = nn.LayerNorm(5)

    def forward(self, x):
        y = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        y = y.flatten(1)
        return self.ln(self.fc(y)).softmax(-1), y.sum(1, keepdim=True)


def test_dynamic_batch_runs_other_batch_sizes_per_sample():
    model = Convnet().eval()
    lowered = lowered_of(model, torch.randn(2, 3, 8, 8), dynamic_batch=True)
    dims = [d.dim_param or d.dim_value for d in lowered.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 8, 8]
    assert lowered.batch_outputs == [True, True]
    engine = OrtEngine(lowered, CPU)
    for n in (1, 5):
        x = torch.randn(n, 3, 8, 8)
        for got, want in zip(engine.run([x]), model(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


class MixesBatch(nn.Module):
    def forward(self, x):
        return x.reshape(-1).softmax(0), x.sum(0)


def test_dynamic_batch_refuses_ops_across_the_batch():
    gm = capture(MixesBatch(), (torch.randn(2, 3),), {}).gm
    with pytest.raises(FxcUnsupportedOpError) as err:
        to_onnx(gm, dynamic_batch=True)
    text = str(err.value)
    assert "dynamic_batch" in text and "merges or splits dim 0" in text
    assert "across dim 0" in text
    to_onnx(gm)  # static: fine


def test_dynamic_batch_refuses_inputs_without_one_batch_dim():
    class Two(nn.Module):
        def forward(self, x, y):
            return x + 1, y * 2

    gm = capture(Two(), (torch.randn(2, 3), torch.randn(4, 3)), {}).gm
    with pytest.raises(FxcUnsupportedOpError, match="inputs disagree on dim 0"):
        to_onnx(gm, dynamic_batch=True)


def test_graph_outputs_that_are_inputs_or_repeated_get_their_own_names():
    class Echo(nn.Module):
        def forward(self, x):
            y = x + 1
            return x, y, y

    x = torch.randn(3)
    lowered = lowered_of(Echo(), x)
    assert lowered.output_names == ["output_0", "output_1", "output_2"]
    a, b, c = run(lowered, x)
    assert torch.equal(a, x) and torch.equal(b, x + 1) and torch.equal(c, x + 1)


@pytest.mark.parametrize("opset", [18, 20])
def test_later_opsets_lower_and_run(opset):
    class Red(nn.Module):
        def forward(self, x):
            return x.mean(-1), x.amax(0), torch.rms_norm(x, [4]), x.sum(1)

    x = torch.randn(3, 4)
    lowered = lowered_of(Red(), x, opset=opset)
    assert lowered.model.opset_import[0].version == opset
    for got, want in zip(run(lowered, x), Red()(x)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unknown_opsets_are_refused():
    with pytest.raises(fxc.FxcOptionError, match="opset=16"):
        lowered_of(Block(), torch.randn(1, 3, 8, 8), opset=16)


def test_model_bytes_bounds_the_serialized_size():
    """model_bytes (read from the payload lengths, not ByteSize's full walk) never falls under
    the real size, and over-counts by little more than its fixed margin."""
    for model, x in [(Block(), torch.randn(1, 3, 8, 8)), (nn.Linear(4, 300), torch.randn(2, 4))]:
        m = lowered_of(model, x).model
        real = m.ByteSize()
        assert real <= onnx_export.model_bytes(m) <= real + (1 << 20) + 256 * len(m.graph.initializer)


def test_a_model_over_the_protobuf_limit_is_still_checked(monkeypatch):
    """Over 2 GB the checker runs on a copy written with external data; it is never skipped."""
    model = lowered_of(Block(), torch.randn(1, 3, 8, 8)).model
    seen = []
    real = onnx.checker.check_model

    def spy(m, full_check=False):
        seen.append(m)
        return real(m, full_check=full_check)
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1024)
    monkeypatch.setattr(onnx.checker, "check_model", spy)
    check_model(model)
    assert len(seen) == 1 and isinstance(seen[0], str) and seen[0].endswith("model.onnx")

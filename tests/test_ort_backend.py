"""The ONNX Runtime backend: registration, session settings, IO binding, output ownership,
and the zoo differential eager == fxc (torch runtime) == fxc through ONNX Runtime.

Zoo tolerance (whole models, FP32): assert_close with the ONNX Runtime backend suite's
rtol 1e-3 / atol 1e-5 plus a relative norm error under 1e-4; ORT fuses and reorders
(Conv+BN folding, MatMul+Add into Gemm, its own erf/tanh), so bitwise equality with torch
is not the contract. The extra zoo models (llama, swin, efficientnet) run in the slow suite.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree

import fxc
from fxc import FxcBackendUnavailableError, FxcUnsupportedOpError, backends
from fxc.models import get, names
from fxc.runtime.ort_engine import OrtEngine, physical_cores


def ort_engine_for(compiled, inputs):
    """Build the ONNX Runtime engine from the graph the torch backend runs: one compile, both
    runtimes on the very same optimized graph."""
    opts = dataclasses.replace(compiled.options, backend="onnxruntime")
    return backends.choose(opts).build(compiled.graph, opts, list(inputs))


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


EXTRAS = sorted(set(names(include_extras=True)) - set(names()))


@pytest.mark.parametrize("name", names() + [pytest.param(n, marks=pytest.mark.slow) for n in EXTRAS])
def test_zoo_eager_torch_runtime_and_onnxruntime_agree(name):
    model, inputs = get(name, size="tiny", batch=2)
    compiled = fxc.compile(model, inputs, backend="torch")
    engine = ort_engine_for(compiled, inputs)
    assert engine.name == "onnxruntime"
    _, other = get(name, size="tiny", batch=2, seed=1)
    for xs in (inputs, other):
        with torch.no_grad():
            expected = model(*xs)
        via_torch = compiled(*xs)
        via_ort = pytree.tree_unflatten(engine.run(compiled.checker.flatten(tuple(xs), {})),
                                        compiled.out_spec)
        e, spec = pytree.tree_flatten(expected)
        assert pytree.tree_flatten(via_ort)[1] == spec
        for t, o, r in zip(pytree.tree_leaves(via_torch), pytree.tree_leaves(via_ort), e):
            torch.testing.assert_close(t, r)
            torch.testing.assert_close(o, r, rtol=1e-3, atol=1e-5)
            assert rel_err(o, r) < 1e-4


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x, *, scale: float = 2.0):
        y = self.fc(x)
        return {"y": y * scale, "z": torch.relu(y)}


def test_backend_is_registered_and_chosen_by_name():
    model, x = Small().eval(), torch.randn(3, 6)
    compiled = fxc.compile(model, (x,), backend="onnxruntime")
    assert compiled.engine.name == "onnxruntime"
    assert compiled.report_data.backend == "onnxruntime"
    out = compiled(x)
    assert set(out) == {"y", "z"}
    for k, v in model(x).items():
        torch.testing.assert_close(out[k], v, rtol=1e-4, atol=1e-5)


def test_outputs_match_and_are_not_overwritten_by_later_calls():
    model = Small().eval()
    a, b = torch.randn(3, 6), torch.randn(3, 6)
    compiled = fxc.compile(model, (a,), backend="onnxruntime")
    first = compiled(a)
    kept = {k: v.clone() for k, v in first.items()}
    second = compiled(b)
    for k in kept:
        assert torch.equal(first[k], kept[k])  # the first call's tensors were left alone
        torch.testing.assert_close(second[k], model(b)[k], rtol=1e-4, atol=1e-5)
    assert first["y"].data_ptr() != second["y"].data_ptr()


def test_inputs_are_bound_from_torch_memory_even_when_not_contiguous():
    model = Small().eval()
    x = torch.randn(6, 3).t()  # a transposed view: bound through a contiguous copy
    compiled = fxc.compile(model, (x.contiguous(),), backend="onnxruntime")
    torch.testing.assert_close(compiled(x)["z"], model(x)["z"], rtol=1e-4, atol=1e-5)


def test_session_uses_all_optimizations_and_physical_cores():
    import onnxruntime as ort
    compiled = fxc.compile(Small(), (torch.randn(3, 6),), backend="onnxruntime")
    engine = compiled.engine
    assert engine.threads == physical_cores() >= 1
    assert engine.session.get_providers() == ["CPUExecutionProvider"]
    opts = engine.session.get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.intra_op_num_threads == physical_cores()
    two = fxc.compile(Small(), (torch.randn(3, 6),), backend="onnxruntime", ort_threads=2)
    assert two.engine.session.get_session_options().intra_op_num_threads == 2


def test_empty_tensors_run_without_binding_memory():
    class Cat(nn.Module):
        def forward(self, x, y):
            return torch.cat([x, y], 0) * 2, x.sum(0)

    x, y = torch.randn(0, 3), torch.randn(2, 3)
    compiled = fxc.compile(Cat(), (x, y), backend="onnxruntime")
    got = compiled(x, y)
    assert got[0].shape == (2, 3) and torch.equal(got[1], torch.zeros(3))
    torch.testing.assert_close(got[0], y * 2)


def test_a_node_without_an_onnxruntime_kernel_is_reported_at_compile_time():
    class Erf64(nn.Module):
        def forward(self, x):
            return torch.special.erf(x) + 1

    with pytest.raises(FxcUnsupportedOpError) as err:
        fxc.compile(Erf64(), (torch.randn(3, dtype=torch.float64),), backend="onnxruntime")
    assert "Erf" in str(err.value) and "no ONNX Runtime kernel" in str(err.value)
    assert err.value.backend == "onnxruntime"


def test_cuda_without_a_cuda_provider_says_what_to_install(monkeypatch):
    import onnxruntime as ort
    from fxc.runtime import ort_engine
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    why = ort_engine.unavailable(torch.device("cuda", 0))
    assert "onnxruntime-gpu" in why
    with pytest.raises(FxcBackendUnavailableError, match="onnxruntime-gpu"):
        OrtEngine(None, torch.device("cuda", 0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_provider_binds_device_memory():
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider")
    model = Small().cuda().eval()
    x = torch.randn(3, 6, device="cuda")
    compiled = fxc.compile(model, (x,), backend="onnxruntime")
    out = compiled(x)
    assert out["y"].device.type == "cuda"
    torch.testing.assert_close(out["y"], model(x)["y"], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("approximate,fused", [("none", {"Gelu", "BiasGelu"}),
                                              ("tanh", {"FastGelu"})])
def test_our_gelu_is_one_onnxruntime_kernel(tmp_path, approximate, fused):
    """The lowering writes GELU in the forms ONNX Runtime's GeluFusion / FastGeluFusion match:
    after ORT's optimizer no Erf/Tanh/Pow is left, one fused GELU per activation, and the
    numbers still agree with torch."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(approximate=approximate),
                          nn.Linear(32, 8)).eval()
    x = torch.randn(2, 5, 16)
    c = fxc.compile(model, (x,), backend="onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(c.engine.lowered.model.SerializeToString(), so,
                         providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert not {"Erf", "Tanh", "Pow"} & set(ops), ops
    assert sum(op in fused for op in ops) == 1, ops
    torch.testing.assert_close(c(x), model(x), rtol=1e-4, atol=1e-5)


def test_binding_goes_through_one_prebuilt_device():
    """The per-call path binds through ONNX Runtime's C-level IOBinding with a device object
    made once (the public wrapper rebuilds one per bind); results are the same."""
    model = nn.Linear(4, 3).eval()
    x = torch.randn(2, 4)
    c = fxc.compile(model, (x,), backend="onnxruntime")
    assert c.engine._binding().c_binding is not None
    for _ in range(3):
        torch.testing.assert_close(c(x), model(x))

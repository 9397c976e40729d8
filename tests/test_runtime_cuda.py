"""The torch engine on CUDA: one captured CUDA graph per module, static inputs and outputs
that never leak into what the user holds, a logged fallback where capture fails, host inputs
through pinned buffers (host_inputs=True), profiling with CUDA events."""
import pytest
import torch
import torch.utils._pytree as pytree

import fxc
from fxc.errors import FxcInputError
from fxc.models import get
from fxc.runtime import TorchEngine, cuda_graph
from fxc.runtime.torch_engine import bitwise_equal

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
POISON = 0xFF


def same(a, b) -> bool:
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    return len(la) == len(lb) and all(bitwise_equal(x, y) for x, y in zip(la, lb))


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64),
                               torch.nn.Tanh(), torch.nn.Linear(64, 8)).eval()


def section(compiled, title):
    return dict(compiled.report_data.sections)[title]


@pytest.mark.parametrize("name", ["mlp", "resnet18", "bert", "gpt2"])
def test_zoo_captured_graph_matches_step_loop_and_eager(name):
    model, inputs = get(name, "tiny", batch=2)
    model, inputs = model.cuda(), tuple(x.cuda() for x in inputs)
    # The layout pass times both layouts per compile and may choose differently for the two
    # (then cuDNN's TF32 algorithms differ at 1e-3): pinned off, the graphs are the same.
    graphed = fxc.compile(model, inputs, backend="torch", disable_passes=("layout",))
    loop = fxc.compile(model, inputs, backend="torch", cuda_graphs=False, disable_passes=("layout",))
    assert graphed.engine.cuda_graph is not None, section(graphed, "CUDA graph")
    assert section(graphed, "CUDA graph")[0].startswith("captured")
    assert loop.engine.cuda_graph is None
    with torch.no_grad():
        want = loop(*inputs)
        first = graphed(*inputs)
        held = [t.clone() for t in pytree.tree_leaves(first)]
        if graphed.engine.arena is not None:
            graphed.engine.arena.fill_(POISON)
        _, other = get(name, "tiny", batch=2, seed=1)
        graphed(*(x.cuda() for x in other))        # replays over the static buffers
        again = graphed(*inputs)
        eager = model(*inputs)
    assert same(first, want) and same(again, want)
    assert same(first, held), "a replay overwrote an output the user holds"
    for a, b in zip(pytree.tree_leaves(first), pytree.tree_leaves(eager)):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)  # TF32 convs, as eager


def test_static_refusal_falls_back_to_the_step_loop():
    class HostHop(torch.nn.Module):
        def forward(self, x):
            return (x.cpu() * 2).cuda() + 1   # a tensor off the device: cannot be captured

    x = torch.randn(8, device="cuda")
    compiled = fxc.compile(HostHop(), (x,), backend="torch")
    assert compiled.engine.cuda_graph is None
    line = section(compiled, "CUDA graph")[0]
    assert line.startswith("not captured") and "cpu" in line
    assert torch.equal(compiled(x), x * 2 + 1)


_lib = torch.library.Library("fxc_test_cuda", "FRAGMENT")
_lib.define("shift_by_max(Tensor x) -> Tensor")
_lib.impl("shift_by_max", lambda x: x - x.max().item(), "CompositeExplicitAutograd")  # a host sync
_lib.impl("shift_by_max", lambda x: torch.empty_like(x), "Meta")


class Syncing(torch.nn.Module):
    def forward(self, x):
        return torch.ops.fxc_test_cuda.shift_by_max(torch.sigmoid(x)) * 3


def test_host_sync_is_found_in_warm_up_and_falls_back(caplog):
    x = torch.randn(64, device="cuda")
    with caplog.at_level("WARNING", logger="fxc"):
        compiled = fxc.compile(Syncing(), (x,), backend="torch")
    assert compiled.engine.cuda_graph is None
    line = section(compiled, "CUDA graph")[0]
    assert line.startswith("not captured") and "synchronizes with the host" in line
    assert "shift_by_max" in line
    assert any("CUDA graph not used" in r.message for r in caplog.records)
    assert torch.cuda.get_sync_debug_mode() == 0       # restored after the check
    s = torch.sigmoid(x)
    for _ in range(2):
        torch.testing.assert_close(compiled(x), (s - s.max()) * 3, rtol=0, atol=0)
    torch.randn(4, device="cuda")  # the CUDA RNG is untouched


def test_a_failed_capture_is_cleaned_up(monkeypatch):
    # Skip the warm-up check so that capture itself meets the host sync and fails.
    monkeypatch.setattr(cuda_graph, "check_no_host_sync", lambda engine, inputs: None)
    x = torch.randn(64, device="cuda")
    compiled = fxc.compile(Syncing(), (x,), backend="torch")
    assert compiled.engine.cuda_graph is None
    line = section(compiled, "CUDA graph")[0]
    assert line.startswith("not captured") and "capture failed" in line and "shift_by_max" in line
    torch.randn(4, device="cuda")  # a failed capture left the RNG in capture mode; reset it
    s = torch.sigmoid(x)
    torch.testing.assert_close(compiled(x), (s - s.max()) * 3, rtol=0, atol=0)


def test_reset_after_failed_capture_restores_the_rng():
    x = torch.ones(4, device="cuda")
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph.capture_begin(capture_error_mode="thread_local")
        with pytest.raises(RuntimeError):
            x.sum().item()
        with pytest.raises(RuntimeError):
            graph.capture_end()
    torch.cuda.current_stream().wait_stream(stream)
    with pytest.raises(RuntimeError, match="Offset increment outside graph capture"):
        torch.randn(4, device="cuda")  # what torch leaves behind
    cuda_graph.reset_after_failed_capture(x.device)
    assert torch.randn(4, device="cuda").shape == (4,)


def test_inputs_must_be_on_the_device_unless_host_inputs():
    model, x = mlp().cuda(), torch.randn(4, 32, device="cuda")
    compiled = fxc.compile(model, (x,), backend="torch")
    with pytest.raises(FxcInputError, match="device"):
        compiled(x.cpu())
    host = fxc.compile(model, (x,), backend="torch", host_inputs=True)
    with pytest.raises(FxcInputError, match="device"):
        host(x)
    want = compiled(x)
    for _ in range(3):  # the pinned buffer is reused: each call waits for the last copy
        xc = x.cpu()
        got = host(xc)
        xc.fill_(float("nan"))     # the user reuses their buffer right away
        assert got.device.type == "cuda" and bitwise_equal(got, want)
    loop = fxc.compile(model, (x,), backend="torch", host_inputs=True, cuda_graphs=False)
    assert bitwise_equal(loop(x.cpu()), want)


def test_zero_copy_outputs_return_the_static_buffer():
    model, x = mlp().cuda(), torch.randn(4, 32, device="cuda")
    compiled = fxc.compile(model, (x,), backend="torch", zero_copy_outputs=True)
    a = compiled(x)
    b = compiled(x + 1)
    assert a.data_ptr() == b.data_ptr()          # documented: overwritten by the next call
    plain = fxc.compile(model, (x,), backend="torch")
    c, d = plain(x), plain(x + 1)
    assert c.data_ptr() != d.data_ptr() and bitwise_equal(b, d)


def test_output_that_is_an_input_is_the_users_tensor():
    class PassThrough(torch.nn.Module):
        def forward(self, x, y):
            return x, torch.tanh(y)

    x, y = torch.randn(3, device="cuda"), torch.randn(3, device="cuda")
    compiled = fxc.compile(PassThrough(), (x, y), backend="torch")
    assert compiled.engine.cuda_graph is not None
    ox, oy = compiled(x, y)
    assert ox.data_ptr() == x.data_ptr() and bitwise_equal(oy, torch.tanh(y))


def test_engine_arena_is_on_the_device_with_cuda_alignment():
    model, x = mlp().cuda(), torch.randn(4, 32, device="cuda")
    compiled = fxc.compile(model, (x,), backend="torch", disable_passes=("fuse_linear",))
    plan = compiled.memory_plan
    plan.verify()
    assert plan.alignment == 256 and all(t.device.startswith("cuda") for t in plan.tensors)
    assert isinstance(compiled.engine, TorchEngine)


def test_profile_on_cuda_uses_events():
    model, x = mlp().cuda(), torch.randn(16, 32, device="cuda")
    compiled = fxc.compile(model, (x,), backend="torch")
    prof = compiled.profile(x, iters=20, quiet=True)
    assert prof.mode == "cuda graph" and len(prof.steps) == len(compiled.engine.steps)
    assert len(prof.latencies_ms) == 20 and all(t > 0 for t in prof.latencies_ms)
    assert prof.step_total_ms > 0 and prof.costliest()[0].ms > 0

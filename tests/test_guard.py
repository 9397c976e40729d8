"""guard=True / FXC_GUARD=1 (issue 16.6): a call whose outputs hold inf/NaN raises
FxcNumericsError naming the first node that made them, or saying the model itself does;
unguarded and finite calls are untouched; the check's cost on a CPU model."""
import time

import pytest
import torch
import torch.nn as nn

import fxc
from fxc.guard import FxcNumericsError, bad_outputs, enabled


class Overflow(nn.Module):
    """Finite in FP32 for any |x| < 1e30; in FP16 the product passes 65504 once |x| > ~6.5."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x).relu()
        return (h * 10000.0).sum(-1), h.mean()


def _compiled(**options):
    torch.manual_seed(0)
    model = Overflow().eval()
    x = torch.rand(2, 8) * 1e-3  # calibration: far from overflow
    return model, fxc.compile(model, (x,), backend="torch", precision="fp16", **options)


def test_guard_names_the_first_node_that_overflowed():
    model, c = _compiled(guard=True)
    big = torch.full((2, 8), 30.0)
    assert all(torch.isfinite(t).all() for t in model(big))  # eager FP32 is fine
    with pytest.raises(FxcNumericsError) as e:
        c(big)
    err = e.value
    assert err.outputs == [0] and err.node and not err.eager_too
    assert "float16" in str(err) and "65504" in str(err)
    assert err.source and "test_guard.py" in err.source  # the user's line


def test_guard_says_when_the_model_itself_makes_inf():
    model, c = _compiled(guard=True)
    with pytest.raises(FxcNumericsError) as e:
        c(torch.full((2, 8), float("inf")))
    assert e.value.eager_too and "model run eagerly" in str(e.value)


def test_unguarded_calls_and_finite_outputs_are_untouched(monkeypatch):
    monkeypatch.delenv("FXC_GUARD", raising=False)
    model, plain = _compiled()
    _, guarded = _compiled(guard=True)
    x = torch.rand(2, 8)
    for a, b in zip(plain(x), guarded(x)):
        assert torch.equal(a, b)
    out = plain(torch.full((2, 8), 30.0))  # silently inf without the guard (what 16.6 reports)
    assert not torch.isfinite(out[0]).all()


def test_env_switch_and_option_precedence(monkeypatch):
    monkeypatch.setenv("FXC_GUARD", "1")
    assert enabled(None) and not enabled(False)
    monkeypatch.setenv("FXC_GUARD", "0")
    assert not enabled(None) and enabled(True)


def test_bad_outputs_skips_integers_and_empty_tensors():
    outs = [torch.tensor([1.0, float("nan")]), torch.tensor([1, 2]), torch.empty(0),
            torch.tensor([float("inf")]), torch.ones(3)]
    assert bad_outputs(outs) == [0, 3]
    big = torch.full((4,), 3e38)  # finite, but its sum is not: a suspicion, not a finding
    assert bad_outputs([big, torch.tensor([1.0])]) == []


def test_guard_cost_on_a_small_model_is_measured():
    """Not a speed assertion (CI machines vary): the guard's overhead per call is printed and
    bounded loosely, so a regression to, say, a per-element Python loop fails. FP32, timed in
    interleaved rounds so a shared machine's load falls on both alike."""
    torch.manual_seed(0)
    model, x = Overflow().eval(), torch.rand(64, 8)
    plain = fxc.compile(model, (x,), backend="torch")
    guarded = fxc.compile(model, (x,), backend="torch", guard=True)
    totals = {plain: 0.0, guarded: 0.0}
    for _ in range(10):
        for fn in totals:
            t0 = time.perf_counter()
            for _ in range(50):
                fn(x)
            totals[fn] += time.perf_counter() - t0
    base, with_guard = (totals[f] / 500 for f in (plain, guarded))
    print(f"guard cost: {1e6 * (with_guard - base):.1f} us a call ({1e6 * base:.1f} us unguarded)")
    assert with_guard - base < 2e-3


def test_a_loaded_artifact_is_guarded_too(tmp_path, monkeypatch):
    """fxc.load(..., guard=True) (or FXC_GUARD=1) checks a loaded artifact's outputs; with no
    graph kept, the error names the outputs and how to find the node."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = Overflow().eval()
    c = fxc.compile(model, (torch.rand(2, 8),), backend="onnxruntime")
    c.save(str(tmp_path / "a"))
    big = torch.full((2, 8), 1e38)  # inf in FP32 too: the products overflow
    plain = fxc.load(str(tmp_path / "a"), guard=False)
    assert not torch.isfinite(plain(big)[0]).all()  # unguarded: returned as computed
    with pytest.raises(FxcNumericsError, match="output 0 of the loaded onnxruntime artifact") as e:
        fxc.load(str(tmp_path / "a"), guard=True)(big)
    assert e.value.outputs == [0]
    monkeypatch.setenv("FXC_GUARD", "1")
    guarded = fxc.load(str(tmp_path / "a"))
    with pytest.raises(FxcNumericsError):
        guarded(big)
    torch.testing.assert_close(guarded(torch.ones(2, 8)), plain(torch.ones(2, 8)))

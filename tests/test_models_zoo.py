"""The model zoo: every model builds, runs, is deterministic, has the published size, exports."""
import copy
import dataclasses

import pytest
import torch

from fxc.models import get, names

ALL = names(include_extras=True)
SEQ_MODELS = ["bert", "gpt2", "llama"]

# Parameters at base size, as the reference implementations count them (tied weights once).
BASE_PARAMS = {
    "resnet18": 11_689_512,  # torchvision resnet18
    "resnet50": 25_557_032,  # torchvision resnet50
    "mobilenet_v2": 3_504_872,  # torchvision mobilenet_v2
    "bert": 109_482_240,  # HF bert-base-uncased, pooler included
    "gpt2": 124_439_808,  # HF gpt2 / nanoGPT with wpe
    "vit": 86_567_656,  # torchvision vit_b_16
    "llama": 134_515_008,  # SmolLM-135M
    "swin": 28_288_354,  # Swin-T
    "efficientnet": 5_288_548,  # torchvision efficientnet_b0
    "mlp": 1024 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000,
}


def leaves(out) -> list[torch.Tensor]:
    """Tensors of a model output: a tensor, dict, tuple/list or dataclass, nested."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in leaves(v)]
    if dataclasses.is_dataclass(out):
        return [t for f in dataclasses.fields(out) for t in leaves(getattr(out, f.name))]
    raise TypeError(f"unexpected output type {type(out)}")


def run(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return leaves(model(*inputs))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_names():
    assert names() == ["mlp", "resnet18", "resnet50", "mobilenet_v2", "bert", "gpt2", "vit"]
    assert ALL == names() + ["llama", "swin", "efficientnet"]


@pytest.mark.parametrize("name", ALL)
def test_tiny_forward(name):
    model, inputs = get(name, "tiny")
    assert isinstance(inputs, tuple) and all(isinstance(t, torch.Tensor) for t in inputs)
    assert not any(m.training for m in model.modules()), "get() returns eval mode"
    for t in inputs:
        assert t.dtype in (torch.float32, torch.int64)
        assert t.dtype != torch.float32 or t.std() > 0.5, "image inputs are randn, not zeros"
    outs = run(model, inputs)
    assert outs and all(torch.isfinite(o).all() for o in outs)
    assert all(0 < o.abs().max() < 30 for o in outs), "outputs of order 1"
    assert sum(p.numel() for p in model.parameters()) < 500_000, "a tiny model must stay tiny"


@pytest.mark.parametrize("name", ALL)
def test_tiny_fp16_is_close_to_fp64(name):
    """Well conditioned: FP16 rounding is not amplified into a large error (base: <= 5e-3)."""
    model, inputs = get(name, "tiny")
    cast = lambda dtype: [t.to(dtype) if t.is_floating_point() else t for t in inputs]  # noqa: E731
    want = run(copy.deepcopy(model).double(), cast(torch.float64))
    got = run(model.half(), cast(torch.float16))
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        assert (g.double() - w).norm() / w.norm() < 5e-2


@pytest.mark.parametrize("name", ALL)
def test_deterministic_in_seed(name):
    m1, x1 = get(name, "tiny", seed=0)
    m2, x2 = get(name, "tiny", seed=0)
    m3, x3 = get(name, "tiny", seed=1)
    assert same_weights(m1, m2) and all(torch.equal(a, b) for a, b in zip(x1, x2))
    assert all(torch.equal(a, b) for a, b in zip(run(m1, x1), run(m2, x2)))
    assert not same_weights(m1, m3)
    assert not torch.equal(x1[0], x3[0])
    assert not torch.equal(run(m1, x1)[0], run(m3, x3)[0])


def test_global_rng_untouched():
    state = torch.get_rng_state()
    get("resnet18", "tiny", seed=123)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("name", ALL)
def test_batch(name):
    model, inputs = get(name, "tiny", batch=3)
    assert all(t.shape[0] == 3 for t in inputs)
    assert all(o.shape[0] == 3 for o in run(model, inputs))


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_seq(name):
    model, inputs = get(name, "tiny", seq=8)
    assert all(t.shape[1] == 8 for t in inputs)
    assert run(model, inputs)[0].shape[1] == 8
    with pytest.raises(ValueError, match="seq"):
        get(name, "tiny", seq=10_000)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_attention_mask_pads_and_matters(name):
    model, (ids, mask) = get(name, "tiny", batch=4)
    assert mask.dtype == torch.int64 and (mask[:, 0] == 1).all() and (mask[:, -1] == 0).all()
    assert (mask.diff(dim=1) <= 0).all(), "ones then zeros"
    first = run(model, (ids, mask))[0]
    assert not torch.allclose(first, run(model, (ids, torch.ones_like(mask)))[0])


def test_batchnorm_statistics_are_not_trivial():
    model, _ = get("resnet18", "tiny")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert bn.running_mean.abs().max() > 1e-3 and (bn.running_var - 1).abs().max() > 1e-3
        assert (bn.running_var > 0).all()
        assert (bn.weight - 1).abs().max() > 1e-3 and bn.bias.abs().max() > 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="resnet18"):  # lists the valid names
        get("resnet19")
    with pytest.raises(ValueError, match="tiny, base"):
        get("resnet18", size="huge")
    with pytest.raises(ValueError, match="seq"):
        get("resnet18", seq=16)
    with pytest.raises(ValueError):
        get("mlp", batch=0)


@pytest.mark.slow  # 2 s here, 8 s on torch 2.11: meta init still runs every initialiser in Python
def test_base_parameter_counts():
    """Built on the meta device: no memory, no weights."""
    with torch.device("meta"):
        for name in ALL:
            model, inputs = get(name, "base")
            count = sum(p.numel() for p in model.parameters())
            assert count == BASE_PARAMS[name], f"{name}: {count:,} != {BASE_PARAMS[name]:,}"
            assert all(t.is_meta for t in inputs)


@pytest.mark.parametrize("name", ALL)
def test_torch_export(name):
    model, inputs = get(name, "tiny")
    ep = torch.export.export(model, inputs, strict=False)
    got = run(ep.module(), inputs)
    want = run(model, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)

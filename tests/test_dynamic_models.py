"""Issue 13's goal on the CPU: transformers' BertModel and GPT-2 (tiny configs, position
tables of 256) compiled once for batch 1..16 and sequence 8..256 match eager at both ends of
both ranges and at odd sizes between, on the torch runtime and on ONNX Runtime (whose model
has a symbolic dim for every declared axis). FP32 under assert_close's defaults."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.utils._pytree as pytree
from torch.export import Dim

import fxc
from fxc.models import garden
from fxc.models._common import padding_mask
from fxc.models.garden import from_transformers

SIZES = [(1, 8), (16, 256), (7, 131), (3, 37)]  # (batch, seq): the corners and odd sizes


def hf_model(key: str):
    """garden's tiny `key` with a 256-position table (its tiny config stops at 64)."""
    spec = from_transformers.MODELS[key]
    tiny = dict(spec.tiny, **{spec.seq_key: 256})
    saved = from_transformers.MODELS[key]
    from_transformers.MODELS[key] = dataclasses.replace(spec, tiny=tiny)
    try:
        return garden.get(f"hf:{key}", size="tiny", batch=2, seq=16)
    finally:
        from_transformers.MODELS[key] = saved


def inputs(key: str, batch: int, seq: int, vocab: int):
    g = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    return (ids,) if key == "gpt2" else (ids, padding_mask(batch, seq))


_COMPILED: dict = {}


def compiled(key: str, backend: str):
    if (key, backend) not in _COMPILED:
        model, xs = hf_model(key)
        b, s = Dim("batch", min=1, max=16), Dim("seq", min=8, max=256)
        shapes = tuple({0: b, 1: s} for _ in xs)
        _COMPILED[key, backend] = model, fxc.compile(model, xs, backend=backend,
                                                     dynamic_shapes=shapes)
    return _COMPILED[key, backend]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("key", ["bert-base", "gpt2"])
def test_one_compile_matches_eager_across_batch_and_sequence(key, backend):
    model, module = compiled(key, backend)
    assert module.engine.name == backend
    vocab = model.model.config.vocab_size
    for batch, seq in SIZES:
        xs = inputs(key, batch, seq, vocab)
        with torch.no_grad():
            want = model(*xs)
        got = module(*xs)
        for g, w in zip(pytree.tree_leaves(got), pytree.tree_leaves(want)):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w)


def test_onnx_model_has_a_symbolic_dim_for_every_declared_axis():
    _, module = compiled("bert-base", "onnxruntime")
    graph = module.engine.lowered.model.graph
    for vi in graph.input:
        dims = vi.type.tensor_type.shape.dim
        assert all(d.dim_param for d in dims), vi
    batch, seq = (d.dim_param for d in graph.input[0].type.tensor_type.shape.dim)
    hidden = graph.output[0].type.tensor_type.shape.dim
    assert [hidden[0].dim_param, hidden[1].dim_param] == [batch, seq] and hidden[2].dim_value


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_sizes_past_the_range_are_refused_by_name(backend):
    _, module = compiled("gpt2", backend)
    with pytest.raises(fxc.FxcInputError, match=r"axis 1 \(seq\) expected a size in 8..256, "
                                                r"got 257"):
        module(torch.randint(3, 100, (2, 257)))
    with pytest.raises(fxc.FxcInputError, match=r"axis 0 \(batch\) expected a size in 1..16, "
                                                r"got 17"):
        module(torch.randint(3, 100, (17, 8)))

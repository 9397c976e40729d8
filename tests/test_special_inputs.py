"""Inputs whose values live partly in tensor flags (issue 16.3): a negated view keeps its sign
in a bit that a raw pointer does not carry; the engines that bind raw memory (ONNX Runtime,
TensorRT) must read the values, not the storage."""
import pytest
import torch
import torch.nn as nn

import fxc


class Twice(nn.Module):
    def forward(self, x):
        return x * 2


@pytest.fixture(scope="module")
def compiled():
    return fxc.compile(Twice(), (torch.randn(4),), backend="onnxruntime")


@pytest.mark.parametrize("make", [
    lambda: torch._neg_view(torch.randn(4)),                                  # contiguous, neg bit
    lambda: torch.complex(torch.randn(4), torch.randn(4)).conj().imag,       # strided, neg bit
], ids=["neg_view", "conj_imag"])
def test_negated_views_are_read_with_their_sign(compiled, make):
    v = make()
    assert v.is_neg()
    torch.testing.assert_close(compiled(v), Twice()(v))


def test_a_negated_view_through_the_copying_path():
    c = fxc.compile(Twice(), (torch.randn(0, 3),), backend="onnxruntime")  # empty: copies
    v = torch._neg_view(torch.randn(0, 3))
    assert c(v).shape == (0, 3)

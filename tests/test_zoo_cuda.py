"""The CUDA path: every zoo model (tiny) compiled on the GPU matches eager on the GPU.

TF32 is off so that FP32 means FP32; cuDNN's fused conv kernels round once where eager
rounds twice, so the comparison is assert_close with rtol 1e-4 (not the 1.3e-6 default)
plus a relative norm error at rounding level."""
import pytest
import torch
import torch.utils._pytree as pytree

import fxc
from fxc.models import get, names
from fxc.passes.manager import LOWP_REL, lowp_problem

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("name", names(include_extras=True))
def test_zoo_model_on_cuda_matches_eager(name):
    model, inputs = get(name, size="tiny", batch=2)
    model = model.cuda()
    inputs = tuple(x.cuda() for x in inputs)
    compiled = fxc.compile(model, inputs, verify=True)
    with torch.no_grad():
        expected = model(*inputs)
    for _ in range(2):  # the second call replays the CUDA graph
        actual = compiled(*inputs)
        a, e = pytree.tree_leaves(actual), pytree.tree_leaves(expected)
        for x, y in zip(a, e):
            assert x.device.type == "cuda"
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
            assert lowp_problem(x, y, rel=1e-5) is None


@pytest.mark.parametrize("name", ["resnet18", "bert", "gpt2"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_zoo_low_precision_on_cuda(name, precision):
    model, inputs = get(name, size="tiny", batch=2)
    model = model.cuda()
    inputs = tuple(x.cuda() for x in inputs)
    compiled = fxc.compile(model, inputs, precision=precision)
    with torch.no_grad():
        expected = model(*inputs)
    for x, y in zip(pytree.tree_leaves(compiled(*inputs)), pytree.tree_leaves(expected)):
        assert x.dtype == y.dtype  # the model's output dtype is kept
        assert lowp_problem(x, y, rel=LOWP_REL[precision]) is None

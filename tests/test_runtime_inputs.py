"""Every bad input gets an FxcInputError naming the input, before any kernel runs."""
import pytest
import torch
import torch.nn as nn

import fxc


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)

    def forward(self, image, ids):
        return image.mean((2, 3)).sum() + self.emb(ids).sum()


_MODEL = TwoInputs().eval()


@pytest.fixture(scope="module")
def compiled():
    return fxc.compile(_MODEL, (torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2, 5))))


def good():
    return torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2, 5))


def test_good_inputs_run(compiled):
    image, ids = good()
    torch.testing.assert_close(compiled(image, ids), _MODEL(image, ids))


@pytest.mark.parametrize("bad, pattern", [
    (lambda i, d: (i.double(), d), r"input 'image': expected dtype torch.float32, got torch.float64"),
    (lambda i, d: (i, d.int()), r"input 'ids': expected dtype torch.int64, got torch.int32"),
    (lambda i, d: (i[0], d), r"input 'image': expected rank 4 .* got rank 3"),
    (lambda i, d: (i[:, :, :7], d), r"input 'image': axis 2 expected size 8, got 7"),
    (lambda i, d: (i, d[:1]), r"input 'ids': axis 0 expected size 2, got 1"),
    (lambda i, d: (i.to("meta"), d), r"input 'image': expected device cpu, got meta"),
    (lambda i, d: (i,), r"expected 2 input\(s\) \(image, ids\), got 1"),
    (lambda i, d: (i, d, d), r"expected 2 input\(s\) \(image, ids\), got 3"),
    (lambda i, d: (i, d.tolist()), r"input 'ids': expected a tensor, got list|structure"),
])
def test_bad_inputs(compiled, bad, pattern):
    with pytest.raises(fxc.FxcInputError, match=pattern):
        compiled(*bad(*good()))


def test_input_error_is_raised_before_any_kernel(compiled, monkeypatch):
    ran = []
    engine = compiled.engine
    monkeypatch.setattr(engine, "run", lambda flat: ran.append(1))
    with pytest.raises(fxc.FxcInputError):
        compiled(torch.randn(1, 3, 8, 8), torch.randint(0, 10, (2, 5)))
    assert not ran


def test_kwargs_structure_is_checked():
    class M(nn.Module):
        def forward(self, x, *, mask):
            return x * mask

    x = torch.randn(3)
    c = fxc.compile(M(), {"x": x, "mask": torch.ones(3)})
    torch.testing.assert_close(c(x=x, mask=torch.ones(3)), x)
    with pytest.raises(fxc.FxcInputError):
        c(x=x)

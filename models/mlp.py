"""A plain multi-layer perceptron (Linear + ReLU): the smallest graph worth compiling."""
import torch
from torch import nn

from ._common import perturb_

CONFIGS = {  # layer widths, input first
    "tiny": (32, 64, 64, 10),
    "base": (1024, 4096, 4096, 1000),
}


class MLP(nn.Module):
    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # keeps activations of order 1 through the ReLUs
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, d_in) -> (B, d_out)


def build(size: str, batch: int):
    dims = CONFIGS[size]
    model = perturb_(MLP(dims))
    return model, (torch.randn(batch, dims[0]),)

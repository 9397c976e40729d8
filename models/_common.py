"""Helpers shared by the zoo's builders: non-trivial init of norms and biases, example inputs."""
import torch
from torch import nn


def perturb_(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Make every bias, norm affine and BN running statistic non-trivial, in place.

    Published inits leave biases at 0, norm weights at 1 and BN statistics at (0, 1), so a pass
    that drops a bias or folds BatchNorm wrongly still matches eager. Here they are random but
    small: outputs stay of order 1 in FP32 and FP16.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.7, 1.3)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.7, 1.3)  # positive: a valid variance
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, std)
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.normal_(0.0, std)
    return model


def damp_residuals_(bns: list[nn.modules.batchnorm._BatchNorm]) -> None:
    """Scale the BN that ends each residual branch by U(0.2, 0.5), as trained nets end up doing.

    Like torchvision's zero_init_residual, but not zero. Without it a random ResNet-50 turns the
    FP16 rounding of each block into a 1.3-1.7x larger error at the next one: 3e-2 relative
    error in FP16 at the logits, against 3e-3 with it; MobileNetV2 1.8e-2 -> 5e-3.
    """
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.2, 0.5)


def calibrate_bn_(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set BatchNorm running statistics to those of one forward over `x`, then jitter them.

    A random net whose BN statistics do not match its activations grows them block after block
    (ResNet-50 reached 1e3 in its last stage); measured statistics keep every stage of order 1,
    as in a trained net. Skipped on the meta device, where nothing can be measured.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or x.is_meta:
        return model
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives exactly its statistics
    model.train()
    with torch.no_grad():
        model(x)
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
            # a nearly dead channel (var 1e-9 seen) would be scaled up 1e4x on other inputs
            m.running_var.clamp_(min=0.1 * m.running_var.median().item())
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
    return model.eval()


def images(batch: int, size: int, channels: int = 3) -> torch.Tensor:
    return torch.randn(batch, channels, size, size)  # (B, C, H, W) float32


def tokens(batch: int, seq: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq))  # (B, T) int64


def padding_mask(batch: int, seq: int) -> torch.Tensor:
    """(B, T) int64 of ones then zeros: every row keeps at least half its tokens and pads >= 1."""
    if seq < 2:
        return torch.ones(batch, seq, dtype=torch.long)
    lengths = torch.randint(max(1, seq // 2), seq, (batch,))  # (B,) in [T/2, T)
    return (torch.arange(seq) < lengths[:, None]).long()


def check_seq(seq: int, limit: int, name: str) -> int:
    if not 1 <= seq <= limit:
        raise ValueError(f"{name}: seq must be in [1, {limit}], got {seq}")
    return seq



def check_args(name: str, spec, size: str, batch: int, kwargs: dict) -> None:
    """ValueError naming the choices for a size, keyword or batch `spec` (a zoo Spec or a
    GardenSpec: .sizes, .kwargs) does not take."""
    if size not in spec.sizes:
        raise ValueError(f"unknown size {size!r} for {name}; choose one of: {', '.join(spec.sizes)}")
    unknown = sorted(set(kwargs) - set(spec.kwargs))
    if unknown:
        accepted = ", ".join(spec.kwargs) or "none"
        raise ValueError(f"{name} takes no argument {', '.join(unknown)}; accepted: {accepted}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")


def build_seeded(spec, size: str, batch: int, seed: int, kwargs: dict):
    """`spec.build` in eval mode, weights drawn from `seed`; the global RNG left as it was."""
    with torch.random.fork_rng(devices=[]):  # CPU/meta generators; global state restored after
        torch.manual_seed(seed)
        model, inputs = spec.build(size, batch, **kwargs)
    return model.eval(), inputs

"""fxc's model zoo: our own pure-torch.nn versions of the models we compile and benchmark.

    from fxc.models import get, names
    model, example_inputs = get("resnet18", size="tiny", batch=1, seed=0)
    out = model(*example_inputs)

Every model has two sizes: `tiny` (a few ms on CPU, for tests) and `base` (the published size,
for benchmarks). Weights are random but deterministic given `seed`, with biases, norm affines
and BatchNorm statistics made non-trivial (see _common.perturb_); example inputs are random
too. `get` leaves the global RNG state as it found it.

Keyword arguments, per model (each listed in its Spec.kwargs):
    seq: sequence length of bert, gpt2 and llama (default 16 tiny, 128 base).

Build on another device with a device context: `with torch.device("meta"): get(...)` builds
without allocating, which is how the tests count base-size parameters.

Names with a ':' are the garden's library models (`tv:resnet50`, `timm:...`, `hf:bert-base`):
`get` hands them to `fxc.models.garden.get`, same contract; see `garden.names()`.
"""
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from ._common import build_seeded, check_args
from . import bert, efficientnet, gpt2, llama, mlp, mobilenet, resnet, swin, vit


@dataclass(frozen=True)
class Spec:
    build: Callable[..., tuple[nn.Module, tuple[torch.Tensor, ...]]]  # (size, batch, **kwargs)
    description: str
    sizes: tuple[str, ...] = ("tiny", "base")
    kwargs: tuple[str, ...] = ()
    extra: bool = False  # exists to test capture; skipped by the demo and benchmarks by default


REGISTRY: dict[str, Spec] = {
    "mlp": Spec(mlp.build, "Linear+ReLU stack, base 1024-4096-4096-1000 (25M params)"),
    "resnet18": Spec(partial(resnet.build, "resnet18"), "ResNet-18 as torchvision, 224x224 (11.7M)"),
    "resnet50": Spec(partial(resnet.build, "resnet50"), "ResNet-50 v1.5 as torchvision, 224x224 (25.6M)"),
    "mobilenet_v2": Spec(mobilenet.build, "MobileNetV2 as torchvision, 224x224 (3.5M)"),
    "bert": Spec(bert.build, "BERT-base encoder + pooler as HF BertModel, seq 128 (109M)", kwargs=("seq",)),
    "gpt2": Spec(gpt2.build, "GPT-2 small as nanoGPT, tied lm_head, seq 128 (124M)", kwargs=("seq",)),
    "vit": Spec(vit.build, "ViT-B/16 with SDPA attention, 224x224 (86.6M)"),
    "llama": Spec(llama.build, "Llama decoder as HF (RMSNorm, RoPE, GQA), SmolLM-135M config",
                  kwargs=("seq",), extra=True),
    "swin": Spec(swin.build, "Swin-T as Microsoft's reference, shifted windows, 224x224 (28.3M)",
                 extra=True),
    "efficientnet": Spec(efficientnet.build, "EfficientNet-B0 as torchvision, MBConv + SE (5.3M)",
                         extra=True),
}


def names(include_extras: bool = False) -> list[str]:
    """Model names in registry order: the 7 core models, then the extras if asked."""
    return [n for n, s in REGISTRY.items() if include_extras or not s.extra]


def get(name: str, size: str = "tiny", batch: int = 1, seed: int = 0,
        **kwargs: Any) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build model `name` at `size` in eval mode, with example inputs of leading dim `batch`."""
    if ":" in name:  # a garden model; imported here, so the zoo needs none of its libraries
        from . import garden
        return garden.get(name, size, batch, seed, **kwargs)
    spec = REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}, "
                         "or a garden model 'source:name' (fxc.models.garden.names())")
    check_args(name, spec, size, batch, kwargs)
    return build_seeded(spec, size, batch, seed, kwargs)


__all__ = ["REGISTRY", "Spec", "get", "names"]

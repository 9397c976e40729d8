"""What the garden's builders share: importing the libraries, non-trivial random weights, and
the wrapper that makes a transformers model return tensors."""
from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

import torch
from torch import nn

from .._common import calibrate_bn_, damp_residuals_, images, perturb_

log = logging.getLogger("fxc.models.garden")

# Kept alive for the process: dropping the Library object would unregister the schemas.
_torchvision_schemas: torch.library.Library | None = None


def _import_torchvision() -> ModuleType:
    """Import torchvision, working around a C extension built for another torch.

    PyPI's torchvision wheels are built against CUDA torch; beside the CPU torch their C
    extension does not load, and `import torchvision` dies in its own Python code, registering
    fake kernels for `torchvision::nms` ("operator torchvision::nms does not exist"). Defining
    the two schemas it registers fakes for (nms, qnms) lets the import finish, and every
    classification model builds and runs: they use no torchvision C op. Detection ops
    (nms, roi_align, ...) stay unavailable, which is logged. Any other failure is re-raised.
    """
    global _torchvision_schemas
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e) or _torchvision_schemas is not None:
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # half-imported: the retry must run their top level again
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_schemas = lib
    log.warning("torchvision's C extension does not load beside torch %s; defined the nms/qnms "
                "schemas so it imports. Its C ops (nms, roi_align, ...) are unavailable; "
                "classification models do not use them.", torch.__version__)
    return importlib.import_module("torchvision")


def load(library: str) -> ModuleType:
    """Import one of torchvision, timm, transformers; ImportError (with the reason) if absent.

    timm and transformers import torchvision themselves, so its workaround runs first.
    """
    if library not in ("torchvision", "timm", "transformers"):
        raise ValueError(f"unknown library {library!r}")
    try:
        _import_torchvision()
    except ImportError:
        if library == "torchvision":
            raise
    return importlib.import_module(library)


def nontrivial_(model: nn.Module, calibrate: torch.Tensor | None = None,
                residual_bns: list[nn.Module] = ()) -> nn.Module:
    """Random weights with nothing left at an identity init, in place.

    _common.perturb_ covers nn.LayerNorm (and subclasses), BatchNorm, and Linear/Conv2d biases;
    here also the libraries' own norms (RMSNorm, T5LayerNorm, GroupNorm: a 1-d `weight` of
    ones), every other zero bias (Conv1d, HF's Conv1D) and layer scales (ConvNeXt's 1e-6 init
    would make every residual branch vanish). Then, as the zoo's CNNs do, the BN ending each
    residual branch is damped (_common.damp_residuals_) and, given `calibrate` images, BatchNorm
    statistics are measured on them (_common.calibrate_bn_): deep random CNNs keep activations
    of order 1.
    """
    perturb_(model)
    with torch.no_grad():
        for m in model.modules():
            for p_name, p in m.named_parameters(recurse=False):
                if p.is_meta:
                    continue
                if p_name == "bias" and not p.any():
                    p.normal_(0.0, 0.02)
                elif "norm" in type(m).__name__.lower() and p_name == "weight" and p.dim() == 1 \
                        and bool((p == 1).all()):
                    p.normal_(1.0, 0.1)
                elif ("gamma" in p_name or "layer_scale" in p_name) and p.abs().max() < 1e-3:
                    p.uniform_(0.2, 0.5)
    damp_residuals_(list(residual_bns))
    if calibrate is not None:
        calibrate_bn_(model, calibrate)
    return model


class ReturnTensors(nn.Module):
    """Calls a transformers model with positional inputs and returns tensors, not a ModelOutput.

    `inputs` names the model's arguments in the order of the example inputs; `fields` the
    output fields returned: one field gives a tensor, several a tuple. Other keyword arguments
    (use_cache=False) are passed on every call.
    """

    def __init__(self, model: nn.Module, inputs: tuple[str, ...], fields: tuple[str, ...],
                 **call_kwargs):
        super().__init__()
        self.model, self.inputs, self.fields, self.call_kwargs = model, inputs, fields, call_kwargs

    def forward(self, *args: torch.Tensor):
        out = self.model(**dict(zip(self.inputs, args)), **self.call_kwargs, return_dict=True)
        return out[self.fields[0]] if len(self.fields) == 1 else tuple(out[f] for f in self.fields)


BASE_PX, TINY_PX = 224, 32  # image side of the published models, and of the tiny ones


def image_model(model: nn.Module, size: str, batch: int, residual_bns: list[nn.Module] = ()):
    """(model, (images,)) for an image classifier: weights made non-trivial (BN statistics
    measured on images, the BNs ending residual branches damped), images (B, 3, px, px)."""
    px = BASE_PX if size == "base" else TINY_PX
    nontrivial_(model, calibrate=images(2 if size == "base" else 16, px), residual_bns=residual_bns)
    return model, (images(batch, px),)

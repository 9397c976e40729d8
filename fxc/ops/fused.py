"""Generated fused kernels: one op for every region passes/fuse_regions.py fuses.

    fxc::fused_region(Tensor[] inputs, str key) -> Tensor[]
    fxc::fused_region.out(Tensor[] inputs, str key, *, Tensor(a!)[] out) -> ()

`key` is the region as canonical JSON (fxc/codegen/region.py): its ATen program over the
inputs, which op results it returns, and each output's dim order. The reference runs that
ATen program (so any stage of the graph is runnable and verify mode compares stages); the
fake runs it on fake tensors; the CUDA kernel launches the Triton kernel generated from it
(fxc/codegen/), cached by the region's structure. CPU tensors run the Triton kernel too when
TRITON_INTERPRET=1 (Triton's interpreter: how the tests run kernels without a GPU), else the
reference. Where no kernel fits (a row longer than triton_gen.MAX_ROW, an empty tensor, no
Triton), the reference runs.

The out form writes into given buffers (the memory planner's arena views) of the outputs'
shapes and dtypes, whatever their strides: the kernel indexes every operand by its strides.
Outputs are dense in the dim order the key records (the strides the graph had before fusion).
"""
from __future__ import annotations

import logging

import torch

from fxc.codegen import cache
from fxc.codegen.region import get as region_of

log = logging.getLogger("fxc")
_BROKEN: list[str] = []   # a Triton that cannot compile here: said once, then the reference


@torch.library.custom_op("fxc::fused_region", mutates_args=(),
                         schema="(Tensor[] inputs, str key) -> Tensor[]")
def fused_region(inputs, key):
    """fxc::fused_region(Tensor[] inputs, str key) -> Tensor[]: the region's ATen ops."""
    return region_of(key).reference(list(inputs))


@fused_region.register_fake
def _(inputs, key):
    return region_of(key).empty_outputs(list(inputs))


def _run(inputs, key, outs=None):
    """The kernel where one fits (writing `outs`, allocated when None); None: run the reference."""
    if _BROKEN or not cache.available():
        return None
    region = region_of(key)
    inputs = list(inputs)
    outs = region.empty_outputs(inputs) if outs is None else outs
    try:
        why = cache.launch(region, inputs, outs)
    except Exception as e:  # a Triton that cannot compile this here: say so once
        log.warning("fxc::fused_region: generated kernel failed (%s: %s); running the reference "
                    "ATen ops from now on", type(e).__name__, str(e).splitlines()[0][:300])
        _BROKEN.append(str(e))
        return None
    return None if why else outs


@fused_region.register_kernel("cuda")
def _(inputs, key):
    outs = _run(inputs, key)
    return outs if outs is not None else region_of(key).reference(list(inputs))


@fused_region.register_kernel("cpu")
def _(inputs, key):
    outs = _run(inputs, key) if cache.interpreting() else None
    return outs if outs is not None else region_of(key).reference(list(inputs))


torch.library.define("fxc::fused_region.out",
                     "(Tensor[] inputs, str key, *, Tensor(a!)[] out) -> ()")


@torch.library.impl("fxc::fused_region.out", "CompositeExplicitAutograd")
def _(inputs, key, *, out):
    dev = out[0].device.type if out else "cpu"
    ran = (dev == "cuda" or cache.interpreting()) and _run(inputs, key, list(out)) is not None
    if not ran:
        for o, r in zip(out, region_of(key).reference(list(inputs))):
            o.copy_(r)


@torch.library.register_fake("fxc::fused_region.out")
def _(inputs, key, *, out):
    return None

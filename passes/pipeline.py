"""The pass pipeline: one ordered list, one comment a pass.

Read top to bottom, this is what fxc does to a captured graph. Options pick entries through
each Pass's `when`; any pass can be switched off by name (`disable_passes=`).
"""
from __future__ import annotations

from . import dce
from .manager import Pass

PIPELINE: list[Pass] = [
    Pass("dce", dce.run, numerics="exact"),  # drop what nothing uses (export leaves some)
    # [fold_constants] [cse] [noops]  (clean-up)
    # [fuse_*]  (fusion rules)
    # [fp16]  (precision)
]


def names() -> list[str]:
    return [p.name for p in PIPELINE]

"""Every view still views: after the passes that change output layouts, a view whose input's
strides no longer allow it reads a contiguous copy (noops.repair_views says why views depend
on layouts: capture dropped a .contiguous() that was a no-op at trace time).

cast_precision repairs what it changes itself; the passes after it change layouts too
(align_gemm slices padded GEMM outputs, fuse_add_norm's kernel returns its own layout), and
layout (channels-last) repairs its own. This entry runs after those two on every device and on
symbolic graphs, where layout itself is skipped.

Invariant: values exact; afterwards every view/_unsafe_view node can view its input and every
meta is what its inputs' metas give.
"""
from __future__ import annotations

import torch.fx as fx

from . import noops
from .manager import PassContext, PassResult


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    copied = noops.repair_views(gm)
    notes = [f"{len(copied)} view(s) read a contiguous copy: their input's layout changed "
             f"({', '.join(copied[:5])})"] if copied else []
    return PassResult(rewrites=len(copied), notes=notes, stats={"views_copied": len(copied)})

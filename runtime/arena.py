"""The arena: one uint8 tensor per device, allocated once, and typed views into it.

Invariant: `view(t)` is a tensor of the planned node's shape, stride and dtype whose bytes are
within arena[t.offset : t.offset + t.nbytes] on t's device (exactly those for a fixed size; a
symbolically sized tensor's `view_at` spans at most that, its slot sized for its maximum);
two views of tensors live at once never share a byte (the plan's invariant, checked by
MemoryPlan.verify before we get here).
"""
from __future__ import annotations

import torch

from fxc.passes.memory_plan import MemoryPlan, PlannedTensor


class Arena:
    def __init__(self, plan: MemoryPlan):
        self.plan = plan
        # The arena is allocated here, once for this engine (its inputs' shapes are fixed).
        self.buffers = {dev: torch.empty(max(n, 1), dtype=torch.uint8, device=dev)
                        for dev, n in plan.arenas.items()}

    def view(self, t: PlannedTensor, meta: torch.Tensor) -> torch.Tensor:
        """A `meta`-shaped, `meta`-strided tensor of meta's dtype over t's bytes."""
        return self.view_at(t, meta.shape, meta.stride(), meta.storage_offset(), meta.dtype)

    def view_at(self, t: PlannedTensor, shape, stride, offset: int, dtype: torch.dtype) -> torch.Tensor:
        """The view of one size of a symbolically sized tensor (its slot holds its largest)."""
        buf = self.buffers[t.device]
        if t.nbytes == 0:
            return torch.empty_strided(shape, stride, dtype=dtype, device=buf.device)
        item = dtype.itemsize
        typed = buf[t.offset:t.offset + t.nbytes].view(dtype)  # offsets are aligned >= item
        return typed.as_strided(shape, stride, t.offset // item + offset)

    def fill_(self, byte: int) -> None:
        """Overwrite every arena byte (tests poison it with 0xFF: NaN in every float type)."""
        for b in self.buffers.values():
            b.fill_(byte)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self.buffers.values())

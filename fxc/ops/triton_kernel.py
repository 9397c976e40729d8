"""A hand-written Triton kernel of an fxc op, compiled lazily, with the op's reference as the
fallback (fxc/ops/norm.py, fxc/ops/dwconv.py).

Invariant: `get()` is the jitted kernel, or None where Triton does not import or the kernel
failed once; `run(launch, reference)` returns launch()'s result, or reference()'s where the
kernel is unavailable or fails (the failure is logged once and the kernel disabled, so later
calls go straight to the reference).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger("fxc")


class LazyKernel:
    def __init__(self, op: str, define: Callable[[Any, Any], Any]):
        """`define(triton, tl)` returns the @triton.jit function; `op` names it in the log."""
        self.op, self.define = op, define
        self._kernel: list = []  # empty: not tried yet; [None]: unavailable

    def get(self):
        if not self._kernel:
            try:
                import triton
                import triton.language as tl
            except Exception:  # no Triton: the reference runs
                self._kernel.append(None)
                return None
            self._kernel.append(self.define(triton, tl))
        return self._kernel[0]

    def run(self, launch: Callable[[], Any], reference: Callable[[], Any]):
        if self.get() is None:
            return reference()
        try:
            return launch()
        except Exception as e:  # a Triton that cannot compile here: say so once, run the reference
            log.warning("fxc::%s: Triton kernel unavailable (%s: %s); running the reference ops "
                        "from now on", self.op, type(e).__name__, str(e).splitlines()[0][:200])
            self._kernel[:] = [None]
            return reference()

"""View chains recorded on CUDA-like layouts (issue 16.9), for tests of the passes that change
an op's output layout or dtype.

A captured graph keeps the strides its ops had at capture, and relies on them: torch.export
drops a `.contiguous()` that was a no-op then, and a `view` downstream is valid only for
those strides. On CUDA some kernels pick their output layout by dtype or algorithm (SDPA's
flash kernel writes (B, L, H, D) in memory, convolutions can return channels-last); once a
pass changes the dtype (cast_precision) or the kernel (layout, align_gemm), the recorded view
may be impossible. This machine has no CUDA, so `view_chains()` draws the graph a CUDA
capture would give: a source whose meta["val"] has the CUDA layout, then transposes,
permutes, splits or narrows, then a view that is valid on the recorded layout (and may not
be on the CPU's). Real CPU kernels then give the CPU layout, as a re-inferred meta does.

    @given(view_chains())
    def test_cast_keeps_views_valid(chain):
        cast_precision.run(chain.module, ctx)          # must not fail, every view valid after
        torch.testing.assert_close(chain.module(*chain.inputs), chain.reference(), ...)
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import torch
import torch.fx as fx
from hypothesis import strategies as st

aten = torch.ops.aten
SOURCES = ("sdpa", "conv")
MIDDLES = ("undo", "transpose", "permute", "split", "narrow", "none")
# The permutation that reads the CUDA layout in memory order, as models write it next:
# HF attention's attn_output.transpose(1, 2), timm's NCHW -> NHWC permute.
_UNDO = {"sdpa": (aten.transpose.int, [1, 2]), "conv": (aten.permute.default, [[0, 2, 3, 1]])}


@dataclasses.dataclass(repr=False)
class ViewChain:
    module: fx.GraphModule
    inputs: list[torch.Tensor]
    source: str                 # the op whose recorded layout is CUDA's
    steps: list[tuple]          # (target, args after the first) from the source to the view
    cuda_layout: bool           # the source's meta has the CUDA layout (else the CPU's)

    def reference(self) -> torch.Tensor:
        """What the chain computes, in eager fp32, with reshape where the graph has view
        (values do not depend on layouts)."""
        x = _SOURCE_FNS[self.source](*self.inputs)
        for target, args in self.steps:
            x = (x.reshape(*args) if target is aten.view.default else target(x, *args))
        return x

    def __repr__(self) -> str:
        shapes = [tuple(t.shape) for t in self.inputs]
        steps = ", ".join(f"{t.__name__}{tuple(a)}" for t, a in self.steps)
        return f"ViewChain({self.source}{shapes} cuda_layout={self.cuda_layout} -> {steps})"


def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _conv(x, w):
    return torch.nn.functional.conv2d(x, w, padding=1)


_SOURCE_FNS = {"sdpa": _sdpa, "conv": _conv}


def _cuda_layout(source: str, out: torch.Tensor) -> torch.Tensor:
    """An empty tensor of `out`'s shape in the layout CUDA gives: SDPA's flash and efficient
    kernels write (B, L, H, D) in memory; a cuDNN convolution in NHWC writes channels-last."""
    if source == "sdpa":
        b, h, l, d = out.shape
        return torch.empty(b, l, h, d, dtype=out.dtype).transpose(1, 2)
    return torch.empty(out.shape, dtype=out.dtype).to(memory_format=torch.channels_last)


@st.composite
def view_chains(draw, sources=SOURCES, middles=MIDDLES, cuda_layouts=(True, False)) -> ViewChain:
    """A graph: source (CUDA layout in its meta, or the CPU's) -> 0-2 layout ops -> view.
    'undo' is the permutation models apply to such a source (_UNDO)."""
    source = draw(st.sampled_from(sources))
    # Size-1 dims make most layouts viewable alike: the batch may be 1, the rest mostly not.
    dims = [draw(st.integers(1, 2))] + draw(st.lists(st.sampled_from([2, 3, 4, 1]),
                                                     min_size=3, max_size=3))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    if source == "sdpa":
        inputs = [torch.randn(*dims, generator=gen) for _ in range(3)]
    else:
        inputs = [torch.randn(*dims, generator=gen),
                  torch.randn(draw(st.integers(1, 4)), dims[1], 3, 3, generator=gen)]
    out = _SOURCE_FNS[source](*inputs)
    cuda_layout = draw(st.sampled_from(cuda_layouts))
    val = _cuda_layout(source, out) if cuda_layout else torch.empty_like(out)
    steps = []
    for kind in draw(st.lists(st.sampled_from(middles), min_size=1, max_size=2)):
        step = _UNDO[source] if kind == "undo" else _middle(draw, kind, val)
        if step is not None:
            steps.append(step)
            val = step[0](val, *step[1])
    shapes = viewable_shapes(val)
    merges = [v for v in shapes if len(v) < val.dim()]  # what crosses recorded strides
    pick = merges if merges and draw(st.booleans()) else shapes
    steps.append((aten.view.default, [draw(st.sampled_from(pick))]))
    return chain(source, inputs, steps, cuda_layout)


def chain(source: str, inputs: list[torch.Tensor], steps: list[tuple],
          cuda_layout: bool = True) -> ViewChain:
    """One chain, given: `source` ('sdpa': q, k, v; 'conv': x, w) on `inputs`, then `steps`
    ((target, args after the input) each, the last a view valid on the recorded layout)."""
    out = _SOURCE_FNS[source](*inputs)
    return ViewChain(_build(source, inputs, out, cuda_layout, steps), inputs, source, steps,
                     cuda_layout)


def _middle(draw, kind: str, val: torch.Tensor) -> tuple | None:
    """One layout op drawn over `val`'s dims: (target, args after the input)."""
    r = val.dim()
    if kind == "transpose":
        a, b = draw(st.lists(st.integers(0, r - 1), min_size=2, max_size=2, unique=True))
        return aten.transpose.int, [a, b]
    if kind == "permute":
        return aten.permute.default, [list(draw(st.permutations(range(r))))]
    if kind in ("split", "narrow"):
        d = draw(st.integers(0, r - 1))
        n = val.shape[d]
        if n < 2:
            return None
        start = draw(st.integers(0, n - 1))
        return aten.slice.Tensor, [d, start, draw(st.integers(start + 1, n))]
    return None


def viewable_shapes(val: torch.Tensor) -> list[list[int]]:
    """Shapes `val`'s layout can be viewed as: itself, each run of adjacent dims merged, and
    each dim split in two factors (a view that is valid here is what capture records)."""
    shape = list(val.shape)
    found = [shape]
    for i, j in itertools.combinations(range(len(shape) + 1), 2):
        if j - i >= 2:
            found.append(shape[:i] + [math.prod(shape[i:j])] + shape[j:])
    for i, n in enumerate(shape):
        for f in (f for f in range(2, n) if n % f == 0):
            found.append(shape[:i] + [f, n // f] + shape[i + 1:])
    return [s for s in found if _can_view(val, s)]


def _can_view(val: torch.Tensor, shape) -> bool:
    try:
        val.view(shape)
    except RuntimeError:
        return False
    return True


def _build(source, inputs, out, cuda_layout, steps) -> fx.GraphModule:
    """The ATen graph of the chain, each node's meta["val"] as a CUDA capture records it."""
    g = fx.Graph()
    xs = []
    for i, t in enumerate(inputs):
        p = g.placeholder(f"x{i}")
        p.meta["val"] = torch.empty_like(t)
        xs.append(p)
    if source == "sdpa":
        node = g.call_function(aten.scaled_dot_product_attention.default, tuple(xs))
    else:
        node = g.call_function(aten.convolution.default,
                               (xs[0], xs[1], None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1))
    node.meta["val"] = _cuda_layout(source, out) if cuda_layout else torch.empty_like(out)
    for target, args in steps:
        nxt = g.call_function(target, (node, *args))
        nxt.meta["val"] = target(node.meta["val"], *args)
        node = nxt
    g.output((node,))
    return fx.GraphModule(torch.nn.Module(), g)

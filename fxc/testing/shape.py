"""Shape strategies for the graph generator: small shapes, size-1 dims on purpose.

Every strategy here shrinks toward rank 0 or 1 and toward size-1 dims, so a shrunk failure
shows the smallest shapes that still break. Empty dims (size 0) come only when asked for.
"""
from __future__ import annotations

import math

from hypothesis import strategies as st

MAX_RANK = 4
MAX_SIDE = 5
MAX_NUMEL = 96  # per generated leaf; keeps every op in a graph in the microseconds


def numel(shape) -> int:
    return math.prod(shape)


def _cap(dims: list[int], max_numel: int) -> tuple[int, ...]:
    """Halve the largest dim until the tensor is small (deterministic, keeps 0 and 1)."""
    while numel(dims) > max_numel:
        i = max(range(len(dims)), key=lambda j: dims[j])
        dims[i] = max(1, dims[i] // 2)
    return tuple(dims)


@st.composite
def shapes(draw, min_rank=0, max_rank=MAX_RANK, max_side=MAX_SIDE, allow_empty=False,
           max_numel=MAX_NUMEL):
    """A shape of rank min_rank..max_rank; sides 1..max_side, now and then a 0 if allowed."""
    rank = draw(st.integers(min_rank, max_rank))
    dims = [draw(st.integers(1, max_side)) for _ in range(rank)]
    if allow_empty and rank and draw(st.integers(0, 11)) == 11:
        dims[draw(st.integers(0, rank - 1))] = 0
    return _cap(dims, max_numel)


@st.composite
def shapes_broadcastable_to(draw, shape):
    """A shape s with broadcast_shapes(s, shape) == shape: leading dims dropped, some set to 1."""
    shape = tuple(shape)
    drop = draw(st.integers(0, len(shape)))
    return tuple(1 if draw(st.booleans()) else d for d in shape[drop:])


@st.composite
def shapes_broadcast_compatible(draw, shape, max_rank=MAX_RANK, max_numel=MAX_NUMEL):
    """A shape s that broadcasts with `shape` (either side may be the larger one).

    Shrinks toward rank 0 (a 0-d tensor broadcasts with everything)."""
    shape = tuple(shape)
    rank = draw(st.integers(0, max_rank))
    dims = []
    for i in range(1, rank + 1):  # from the right, as broadcasting aligns
        d = shape[-i] if i <= len(shape) else 1
        if d == 1:
            dims.append(draw(st.integers(1, 4)))
        else:
            dims.append(1 if draw(st.booleans()) else d)
    return _cap(dims[::-1], max_numel)


@st.composite
def factorizations(draw, n: int, max_rank=MAX_RANK):
    """A shape with numel n (a reshape target), sometimes with one -1."""
    if n == 0:
        rank = draw(st.integers(1, max_rank))
        dims = [draw(st.integers(1, 3)) for _ in range(rank)]
        dims[draw(st.integers(0, rank - 1))] = 0
        return tuple(dims)
    rank = draw(st.integers(0 if n == 1 else 1, max_rank))
    dims = [1] * rank
    p, m = 2, n
    while m > 1:  # hand each prime factor to a drawn dim
        while m % p == 0:
            dims[draw(st.integers(0, rank - 1))] *= p
            m //= p
        p += 1
    if rank and draw(st.integers(0, 3)) == 3:
        dims[draw(st.integers(0, rank - 1))] = -1
    return tuple(dims)

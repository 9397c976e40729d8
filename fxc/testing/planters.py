"""Pattern planters: place a target pattern (what a fusion pass looks for) inside a graph.

A planter is `planter(builder, draw) -> value id(s)`. It picks its place among the values
built so far with `builder.pick_value(draw, dtypes=..., min_rank=...)` (or gets a fresh
input there), then appends the pattern with `builder.add(op, *ids, **static)`. The graph
generator calls it at a drawn step, so the pattern lands inside a random graph, its operand
may have other users, and its result may feed later ops or be an output.

    graphs(plant=[plant_conv_bn])   # every graph holds a conv2d -> batch_norm
"""
from __future__ import annotations

from hypothesis import strategies as st

from .ops import FLOATS


def plant_linear_relu(b, draw):
    """linear (weight, maybe bias; module or functional) -> relu."""
    x = b.pick_value(draw, dtypes=FLOATS, min_rank=1)
    y = b.add("linear", x, out_features=draw(st.integers(1, 8)), bias=draw(st.booleans()),
              module=draw(st.booleans()))
    return b.add("relu", y)


def plant_conv_bn(b, draw):
    """conv2d -> batch_norm in eval, with random running stats (both modules or both functional)."""
    x = b.pick_value(draw, dtypes=FLOATS, min_rank=4, max_rank=4,
                     fresh_shape=st.tuples(st.integers(1, 2), st.integers(1, 4),
                                           st.integers(1, 5), st.integers(1, 5)))
    h, w = b.value(x).shape[-2:]
    padding = draw(st.integers(0, 1))
    module = draw(st.booleans())
    y = b.add("conv2d", x, out_channels=draw(st.integers(1, 4)),
              kernel_size=draw(st.integers(1, max(1, min(3, h + 2 * padding, w + 2 * padding)))),
              stride=1, padding=padding, groups=1, bias=draw(st.booleans()), module=module)
    return b.add("batch_norm", y, affine=True, module=module)


def plant_add_layer_norm(b, draw):
    """x + f(x) (a same-shape residual add) -> layer_norm over the last dim, affine."""
    x = b.pick_value(draw, dtypes=FLOATS, min_rank=1)
    r = b.add(draw(st.sampled_from(["relu", "tanh"])), x)
    s = b.add("add", *((x, r) if draw(st.booleans()) else (r, x)))
    return b.add("layer_norm", s, k=1, affine=True, module=draw(st.booleans()))

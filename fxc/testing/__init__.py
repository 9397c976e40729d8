"""fxc.testing: hypothesis strategies that generate random well-formed graphs for fxc.

    from fxc.testing import graphs, tolerances
    @given(graphs(max_ops=6, dtypes=ALL_DTYPES))
    def test_pass(g):
        out = my_pass(g.module)(*g.inputs)
        torch.testing.assert_close(out, g.module(*g.inputs), **g.tolerances)

What a drawn graph guarantees is in strategies.py; the op table is ops.OPS; planters place
target patterns (planters.py); views.py draws view chains recorded on CUDA layouts; settings.py holds the hypothesis profiles and tolerances.
"""
from .ops import ALL, FLOATS, INTS, OPS, OpRejected, OpSpec
from .planters import plant_add_layer_norm, plant_conv_bn, plant_linear_relu
from .program import Builder, Instr, Program, Value
from .settings import register_profiles, tolerances
from .shape import factorizations, shapes, shapes_broadcast_compatible, shapes_broadcastable_to
from .strategies import (ALL_DTYPES, FLOAT_DTYPES, INT_DTYPES, GeneratedGraph, GraphConfig,
                         build_graph, chains, graph_config, graphs, single_thread)
from .views import ViewChain, view_chains

register_profiles()

__all__ = [
    "ALL", "ALL_DTYPES", "FLOATS", "FLOAT_DTYPES", "INTS", "INT_DTYPES",          # dtypes
    "graphs", "chains", "GeneratedGraph", "GraphConfig", "graph_config", "build_graph",
    "plant_add_layer_norm", "plant_conv_bn", "plant_linear_relu",                 # planters
    "shapes", "shapes_broadcastable_to", "shapes_broadcast_compatible", "factorizations",
    "OPS", "OpSpec", "OpRejected", "Builder", "Program", "Instr", "Value",        # internals
    "register_profiles", "tolerances", "single_thread",
    "view_chains", "ViewChain",                                                   # layouts
]

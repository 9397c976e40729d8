"""Helpers shared by the pass tests: pass contexts, op counts, outputs, capture, ATen graphs
(generated through make_fx, or built by hand), several models captured as one."""
import torch
import torch.fx as fx
import torch.nn as nn

from fxc.capture import capture
from fxc.options import CompileOptions
from fxc.passes import PassContext

aten = torch.ops.aten


def ctx(disable=()):
    """A CPU, FP32 pass context with no example inputs (passes that need none)."""
    return PassContext(CompileOptions(device=torch.device("cpu"), disable_passes=tuple(disable)), [])


def count(gm, *targets):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target in targets)


def outputs(gm, inputs):
    """The graph's outputs on `inputs`, as a list of clones (safe to compare after a rewrite)."""
    with torch.no_grad():
        out = gm(*inputs)
    return [t.clone() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def captured(model, *inputs):
    return capture(model.eval(), inputs, {}).gm


def fp32_ctx(inputs, **options):
    """A CPU, FP32 pass context through `resolve` (options validated), with example inputs."""
    from fxc.options import resolve
    opts = resolve(device=None, precision="fp32", backend="torch", verify=False, dump_dir=None,
                   disable_passes=(), default_device=torch.device("cpu"), **options)
    return PassContext(opts, list(inputs))


def captured_after_dce(model, *inputs):
    """The captured graph as the clean-up passes see it: the pipeline runs dce first."""
    from fxc.passes import dce
    gm = capture(model.eval(), inputs, {}).gm
    dce.run(gm, fp32_ctx(inputs))
    gm.recompile()
    return gm


_TABLE: dict = {}  # fxc's decomposition table, materialized once (the lazy one re-collects ops)
_OUT_OF_PLACE = {aten.squeeze_.dim: aten.squeeze.dim, aten.unsqueeze_.default: aten.unsqueeze.default,
                 aten.squeeze_.dims: aten.squeeze.dims, aten.transpose_.default: aten.transpose.int}


def aten_graph(g):
    """A generated module as a functional ATen graph with get_attr constants and true meta:
    make_fx with fxc's decomposition table (capture costs ~1 s a graph; this ~0.05 s).

    make_fx decomposes a rank-1 matmul into mm + squeeze_: that in-place squeeze of a fresh
    value is rewritten out of place; a graph that still writes in place is not drawn."""
    from hypothesis import assume
    from torch.fx.experimental.proxy_tensor import make_fx

    from fxc import decomp, ir
    from fxc.passes import cse, dce
    if not _TABLE:
        _TABLE.update(decomp.table())
    with torch.no_grad():
        gm = make_fx(g.module, decomposition_table=_TABLE)(*g.inputs)
    for n in list(gm.graph.nodes):
        if n.target in _OUT_OF_PLACE and len(n.args[0].users) == 1:
            n.target = _OUT_OF_PLACE[n.target]
    gm.recompile()
    assume(cse.first_mutation(gm) is None)
    ir.infer_meta(gm)
    dce.run(gm, fp32_ctx(g.inputs))  # as the pipeline does before the clean-up passes
    gm.recompile()
    return gm


class Many(nn.Module):
    """Several models side by side, each on its own inputs (one capture: export costs
    seconds a model on the CI machine); returns all outputs flat."""

    def __init__(self, builds):
        super().__init__()
        self.parts = nn.ModuleList(build() for build in builds)
        self.arity = []

    def forward(self, *xs):
        outs, i = [], 0
        for part, n in zip(self.parts, self.arity):
            out = part(*xs[i:i + n])
            outs += list(out) if isinstance(out, tuple) else [out]
            i += n
        return tuple(outs)


def many(table):
    """(Many of every entry's model, all entries' inputs): table name -> (build, inputs, ...)."""
    torch.manual_seed(0)
    model = Many([entry[0] for entry in table.values()])
    inputs = []
    for entry in table.values():
        xs = entry[1]()
        model.arity.append(len(xs))
        inputs += xs
    return model, tuple(inputs)


class AtenGraph:
    """A hand-built graph in fxc's IR form (get_attr constants, meta by fake propagation)."""

    def __init__(self):
        self.root, self.graph, self.inputs, self.k = nn.Module(), fx.Graph(), [], 0

    def input(self, t):
        node = self.graph.placeholder(f"in{len(self.inputs)}")
        node.meta["val"] = t
        self.inputs.append(t)
        return node

    def const(self, t):
        self.k += 1
        self.root.register_buffer(f"c{self.k}", t)
        return self.graph.get_attr(f"c{self.k}")

    def __call__(self, op, *args, **kwargs):
        return self.graph.call_function(op, args, kwargs)

    def build(self, outs):
        from fxc import ir
        self.graph.output(tuple(outs))
        gm = fx.GraphModule(self.root, self.graph)
        ir.infer_meta(gm)
        return gm


def bitwise(a, b):
    """The pass must leave the numbers exactly as they were (same ops, same order)."""
    assert a.dtype == b.dtype and torch.equal(a, b), "not bitwise the graph before"


def close_nan(a, b):
    torch.testing.assert_close(a, b, equal_nan=True)


def run_checked(pass_mod, gm, inputs, c, compare):
    """Run `pass_mod` on `gm` with context `c`; lint; `compare(after, before)` each output with
    the graph before; then run it again: a second run rewrites nothing and leaves the code as it
    was (idempotence). Returns (result, before, after)."""
    from fxc import ir
    name = pass_mod.__name__.rsplit(".", 1)[-1]
    before = outputs(gm, inputs)
    result = pass_mod.run(gm, c)
    gm.recompile()
    ir.lint(gm, name)
    after = outputs(gm, inputs)
    for a, b in zip(after, before, strict=True):
        compare(a, b)
    code = gm.code
    again = pass_mod.run(gm, c)
    gm.recompile()
    assert again.rewrites == 0 and gm.code == code, f"{name} is not idempotent"
    return result, before, after


def run_interpreted(script: str, timeout: int = 600) -> str:
    """Run `script` in a fresh Python with TRITON_INTERPRET=1 (it must be set before triton is
    imported, hence a subprocess) and this checkout first on the path; asserts it exits 0 and
    returns its stdout."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=env, timeout=timeout)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout

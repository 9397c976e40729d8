"""The graph generator of fxc.testing: its graphs run, are finite, are deterministic given
the draw, cover the op table and the bug classes of TESTING.md, and survive torch.export."""
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxc.testing import (ALL_DTYPES, FLOAT_DTYPES, OPS, build_graph, chains, graph_config, graphs,
                         plant_conv_bn, plant_linear_relu, shapes, shapes_broadcast_compatible,
                         shapes_broadcastable_to, single_thread, tolerances)

# Explicit example counts keep this file near 30 s on 2 cores whatever the profile says.
FAST = dict(deadline=None, database=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second thread's wake-up costs more than the ops (up to 30 ms a conv
    on a loaded 2-core machine)."""
    with single_thread():
        yield


def flat(out):
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


@settings(max_examples=60, **FAST)
@given(graphs(dtypes=ALL_DTYPES, outputs="any"))
def test_graphs_run_finite_and_leave_inputs_alone(g):
    before = [t.clone() for t in g.inputs]
    outs = flat(g.module(*g.inputs))
    assert outs and all(isinstance(t, torch.Tensor) for t in outs)
    for t in outs:
        if t.is_floating_point():
            assert torch.isfinite(t).all(), g
    for a, b in zip(before, g.inputs):
        assert torch.equal(a, b), "an input was mutated"
    assert not g.module.training
    g.module.graph.lint()
    assert "def forward" in repr(g)
    for v in g.program.values:  # every intermediate, not just outputs, is finite and bounded
        assert v.max_abs == v.max_abs and v.max_abs < float("inf")
        if v.dtype == torch.float16:
            assert v.max_abs <= 8192


@st.composite
def recorded_graphs(draw, cfg):
    """A graph and the values its draws returned, to build it again from those alone."""
    record = []

    def recording(strategy):
        record.append(draw(strategy))
        return record[-1]

    return build_graph(recording, cfg), record


@settings(max_examples=25, **FAST)
@given(recorded_graphs(graph_config(dtypes=ALL_DTYPES, outputs="any", plant=(plant_conv_bn,))))
def test_same_draw_same_graph(g_record):
    g1, record = g_record
    replay = iter(record)
    g2 = build_graph(lambda strategy: next(replay), graph_config(
        dtypes=ALL_DTYPES, outputs="any", plant=(plant_conv_bn,)))
    assert next(replay, None) is None
    assert g1.code == g2.code
    assert all(torch.equal(a, b) for a, b in zip(g1.inputs, g2.inputs))
    s1, s2 = g1.module.state_dict(), g2.module.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    torch.testing.assert_close(g1.module(*g1.inputs), g2.module(*g2.inputs), rtol=0, atol=0)


def test_derandomized_runs_repeat():
    def run():
        seen = []

        @settings(max_examples=15, **FAST)
        @given(graphs(dtypes=ALL_DTYPES))
        def collect(g):
            seen.append((g.code, g.inputs))
        collect()
        return seen

    a, b = run(), run()
    assert [c for c, _ in a] == [c for c, _ in b]
    assert all(torch.equal(x, y) for (_, xs), (_, ys) in zip(a, b) for x, y in zip(xs, ys))


def test_every_op_of_the_table_is_generated():
    names, seen = list(OPS), Counter()
    for i in range(8):  # 8 ops at a time, spread over the table, so none is starved

        @settings(max_examples=25, **FAST)
        @given(graphs(dtypes=ALL_DTYPES, ops=names[i::8], max_ops=6))
        def collect(g):
            seen.update(ins.op for ins in g.program.instrs)
        collect()
    assert set(names) - set(seen) == set()


def test_the_bug_classes_of_testing_md_are_generated():
    stats, dtypes = Counter(), Counter()

    @settings(max_examples=150, **FAST)
    @given(graphs(dtypes=ALL_DTYPES, outputs="any", max_ops=10))
    def collect(g):
        p, users = g.program, g.program.users()
        out_kinds = {p.values[i].kind for i in p.output_ids()}
        dtypes.update({v.dtype for v in p.values})
        stats["graphs"] += 1
        stats["0-d value"] += any(v.shape == () for v in p.values)
        stats["size-1 dim"] += any(1 in v.shape for v in p.values)
        stats["empty dim"] += any(0 in v.shape for v in p.values)
        stats["value with >= 2 users"] += any(n >= 2 for n in users.values())
        stats["input returned"] += "input" in out_kinds
        stats["parameter returned"] += bool(out_kinds & {"param", "buffer"})
        stats["python scalar"] += any("c" in ins.static for ins in p.instrs)
        operand_dtypes = [{p.values[i].dtype for i in ins.inputs} for ins in p.instrs]
        stats["int32/int64 mix"] += {torch.int32, torch.int64} in operand_dtypes
        stats["fp16 with fp32"] += any(d >= {torch.float16, torch.float32} for d in operand_dtypes)
        stats["rank-1 matmul"] += any(ins.op == "matmul" and
                                      any(len(p.values[i].shape) == 1 for i in ins.inputs)
                                      for ins in p.instrs)
        stats["cast"] += any(ins.op in ("to_dtype", "float", "half") for ins in p.instrs)
        stats["in place"] += any(OPS[ins.op].inplace for ins in p.instrs)
        stats["past fp16 range"] += any(not v.dtype == torch.float16 and v.dtype.is_floating_point
                                        and v.max_abs > 65504 for v in p.values)
        stats["dead code"] += any(v.kind == "op" and not users[v.id] and v.id not in p.output_ids()
                                  for v in p.values)
        stats["nn.Module layer"] += bool(p.modules)
    collect()
    print(dict(stats), {str(k): n for k, n in dtypes.items()})  # pytest -s shows the numbers
    assert set(dtypes) == set(ALL_DTYPES)
    for feature, n in stats.items():
        assert n >= 2, f"{feature}: only {n} of {stats['graphs']} graphs"
    assert stats["value with >= 2 users"] > stats["graphs"] // 3


@settings(max_examples=30, **FAST)
@given(st.one_of(graphs(dtypes=ALL_DTYPES, outputs="any"),
                 graphs(dtypes=FLOAT_DTYPES, plant=(plant_conv_bn, plant_linear_relu), max_ops=4)))
def test_torch_export_keeps_the_graph(g):
    """Capture identity: torch.export of the generated module computes the same outputs."""
    ep = torch.export.export(g.module, g.inputs, strict=False)
    torch.testing.assert_close(ep.module()(*g.inputs), g.module(*g.inputs), **g.tolerances)


@settings(max_examples=20, **FAST)
@given(graphs(plant=(plant_conv_bn, plant_linear_relu), max_ops=3))
def test_planters_place_their_pattern(g):
    ins = g.program.instrs
    producer = {i.out: i for i in ins}
    bns = [i for i in ins if i.op == "batch_norm" and producer.get(i.inputs[0], i).op == "conv2d"]
    relus = [i for i in ins if i.op == "relu" and producer.get(i.inputs[0], i).op == "linear"]
    assert bns and relus, g
    used = set(g.program.output_ids()) | set(g.program.users())
    assert bns[0].out in used and relus[0].out in used  # a planted pattern is never dead code


@settings(max_examples=20, **FAST)
@given(chains(dtypes=ALL_DTYPES))
def test_chains_are_chains(g):
    p, users = g.program, g.program.users()
    ops = [v.id for v in p.values if v.kind == "op"]
    assert p.outputs == (ops[-1],)
    assert all(users[v] for v in ops[:-1])
    for a, b in zip(ops, ops[1:]):  # every op result feeds a later op
        assert any(a in i.inputs for i in p.instrs if i.out > a)


@given(st.data())
@settings(max_examples=50, **FAST)
def test_shape_strategies(data):
    shape = data.draw(shapes())
    assert len(shape) <= 4
    small = data.draw(shapes_broadcastable_to(shape))
    assert torch.broadcast_shapes(small, shape) == tuple(shape)
    other = data.draw(shapes_broadcast_compatible(shape))
    torch.broadcast_shapes(other, shape)


def test_tolerances_follow_testing_md():
    assert tolerances(torch.float32) == dict(rtol=1.3e-6, atol=1e-5)
    assert tolerances(torch.float16) == dict(rtol=1e-3, atol=1e-5)
    assert tolerances(torch.bfloat16) == dict(rtol=1.6e-2, atol=1e-5)
    assert tolerances(torch.int64) == dict(rtol=0.0, atol=0.0)


def test_profiles_are_registered():
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.max_examples == 200 and ci.deadline is None
    assert settings.get_profile("slow").max_examples > ci.max_examples


def test_unknown_op_is_refused():
    with pytest.raises(ValueError, match="unknown ops"):
        graphs(ops=["no_such_op"])

"""CUDA graphs of a symbolic graph: one captured graph per shape bucket (DESIGN decision 11).

A CUDA graph replays fixed sizes, so a graph compiled for ranges keeps one per *key*: the
tuple of its symbols' values in a call. Where the batch can be padded without changing the
answer (`batch_padding`), the batch symbol's value in the key is its bucket (the next power
of two, or the smallest of `shape_buckets=` that holds it): the call's inputs are padded
along dim 0 into the bucket's static buffers (repeating the last row, so padded rows compute
on valid data) and the outputs are sliced back to the call's batch. Other symbols take their
exact value. Graphs are captured on first use and kept in a least-recently-used cache of at
most `max_cuda_graphs`; a key whose capture fails, or a size past every bucket, runs the
step loop.

Memory: each captured graph holds its own static inputs, outputs and the allocator pool its
capture used, all sized for its bucket; with power-of-two buckets the graphs of one symbol
together take under twice the largest one, and `max_cuda_graphs` bounds the total.

Invariant: `run(inputs)` returns what `engine.run_steps(inputs)` returns (padded rows are
computed and dropped; rows never mix when `batch_padding` allowed padding).
"""
from __future__ import annotations

import collections
from typing import Callable

import torch
import torch.fx as fx

# Ops that act on each dim-0 row on its own, when dim 0 is the batch and their dims/axes
# arguments leave it alone (checked by _leaves_dim0); anything else forbids padding.
_ROWWISE = {
    "linear", "addmm", "mm", "matmul", "bmm", "baddbmm", "convolution", "conv2d", "conv1d",
    "layer_norm", "native_layer_norm", "group_norm", "_native_batch_norm_legit_no_training",
    "softmax", "_softmax", "log_softmax", "_log_softmax", "scaled_dot_product_attention",
    "gelu", "relu", "silu", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid", "erf",
    "add", "sub", "mul", "div", "neg", "pow", "rsqrt", "sqrt", "exp", "clamp", "clamp_min",
    "where", "eq", "ne", "lt", "le", "gt", "ge", "bitwise_and", "bitwise_or", "bitwise_not",
    "logical_not", "_to_copy", "clone", "contiguous", "embedding", "mean", "sum", "amax",
    "view", "_unsafe_view", "reshape", "permute", "transpose", "unsqueeze", "squeeze", "expand",
    "slice", "select", "split", "split_with_sizes", "cat", "max_pool2d", "avg_pool2d",
    "adaptive_avg_pool2d", "max_pool2d_with_indices", "sym_size", "getitem", "alias", "t",
    "linear_act", "conv2d_act", "conv2d_add_act", "dwconv2d_ln", "add_layer_norm",
    "fused_region", "masked_fill", "full_like",
    "zeros_like", "ones_like", "rsub", "reciprocal", "abs", "minimum", "maximum", "type_as",
}


def bucket_size(n: int, buckets: tuple[int, ...] | None, high: int | None) -> int | None:
    """The bucket a batch of `n` replays in: the smallest listed bucket >= n, or (no list) the
    next power of two, either capped at the range's `high` (the memory plan sizes the arena for
    it: a padded call past it would outgrow its slots); None when no bucket holds `n`."""
    if buckets is not None:
        b = next((b for b in buckets if b >= n), None)
    else:
        b = 1 << max(0, n - 1).bit_length()
    return min(b, high) if b is not None and high is not None else b


def batch_padding(gm: fx.GraphModule) -> tuple[str | None, str]:
    """(the batch symbol, why) where padding dim 0 cannot change any row's answer; (None, why
    not) otherwise. Holds when every tensor input has the same symbol B on dim 0 and nowhere
    else, every value has B on dim 0 only (or no B at all), and every op that sees B is row-wise
    (_ROWWISE) with its dims/axes arguments off dim 0."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    firsts = {_expr(_val(n).shape[0]) if _val(n) is not None and _val(n).dim() else None
              for n in inputs}
    if len(firsts) != 1 or None in firsts or not isinstance(next(iter(firsts)), str):
        return None, "inputs do not share one symbolic dim 0"
    b = next(iter(firsts))
    for node in gm.graph.nodes:
        for v in _tensors(node.meta.get("val")):
            dims = [_expr(s) for s in v.shape]
            if any(b in str(d) for d in dims[1:]) or (dims and b in str(dims[0]) and dims[0] != b):
                return None, f"%{node.name} holds the batch off dim 0"
        if node.op != "call_function" or not _sees(node, b):
            continue
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if name not in _ROWWISE:
            return None, f"%{node.name} ({name}) is not known to keep rows apart"
        if not _leaves_dim0(node):
            return None, f"%{node.name} ({name}) works across dim 0"
    return b, "dim 0 is an independent batch"


def _val(node):
    v = node.meta.get("val")
    return v if isinstance(v, torch.Tensor) else None


def _tensors(val) -> list[torch.Tensor]:
    if isinstance(val, torch.Tensor):
        return [val]
    if isinstance(val, (tuple, list)):
        return [v for v in val if isinstance(v, torch.Tensor)]
    return []


def _expr(size):
    return size if isinstance(size, int) else str(size.node.expr)


def _sees(node: fx.Node, b: str) -> bool:
    vals = [a.meta.get("val") for a in node.all_input_nodes] + [node.meta.get("val")]
    return any(b in str(v) for v in vals if isinstance(v, (torch.Tensor, torch.SymInt, tuple, list)))


def _leaves_dim0(node: fx.Node) -> bool:
    """A reduction, split, cat, select, slice, softmax, transpose or permute whose dims argument
    includes dim 0 mixes or moves rows; a sym_size of dim 0 is fine (it is B itself)."""
    name = getattr(node.target, "__name__", "")
    if name.startswith("sym_size"):
        return True
    if name.startswith("permute"):
        return node.args[1][0] in (0, -len(node.args[1]))
    if name.startswith(("transpose", "mean", "sum", "amax", "softmax", "_softmax", "log_softmax",
                        "_log_softmax", "select", "slice", "cat", "split", "squeeze")):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if name.startswith(("transpose",)):
            dims = list(node.args[1:3])
        if name.startswith("cat"):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if name.startswith("split"):
            dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if name.startswith(("mean", "sum", "amax")) and (dims is None or dims == []):
            return False  # a full reduction
        ranks = [v.dim() for v in _tensors(node.args[0].meta.get("val"))] if isinstance(
            node.args[0], fx.Node) else [1]
        rank = max(ranks or [1])
        dims = dims if isinstance(dims, (list, tuple)) else [dims]
        return all(isinstance(d, int) and d % max(rank, 1) != 0 for d in dims)
    return True


class GraphCache:
    """Captured graphs by key, least recently used dropped past `limit`; `failed` remembers
    keys whose capture failed (they run the step loop, and are not tried again)."""

    def __init__(self, capture: Callable[[tuple], object], limit: int):
        self.capture, self.limit = capture, limit
        self.graphs: collections.OrderedDict = collections.OrderedDict()
        self.failed: dict[tuple, str] = {}
        self.captures = 0

    def get(self, key: tuple):
        """The runner for `key` (captured now if new), or None where capture failed."""
        if key in self.failed:
            return None
        runner = self.graphs.get(key)
        if runner is not None:
            self.graphs.move_to_end(key)
            return runner
        runner, why = self.capture(key)
        self.captures += 1
        if runner is None:
            self.failed[key] = why
            return None
        self.graphs[key] = runner
        while len(self.graphs) > self.limit:
            self.graphs.popitem(last=False)  # its buffers and pool go with it
        return runner


def pad_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """`x` with dim 0 grown to `n` by repeating its last row (valid data: no NaN from padding)."""
    extra = n - x.shape[0]
    if extra <= 0:
        return x
    return torch.cat([x, x[-1:].expand(extra, *x.shape[1:])], 0)


class BucketedGraphs:
    """The torch engine's CUDA graphs for a symbolic graph: see the module docstring."""

    def __init__(self, engine, capture: Callable, buckets: tuple[int, ...] | None, limit: int):
        self.engine, self.buckets = engine, buckets
        placeholders = [n for n in engine.gm.graph.nodes if n.op == "placeholder"]
        self.where: dict[str, tuple[int, int]] = {}
        for i, node in enumerate(placeholders):
            for axis, s in enumerate(getattr(_val(node), "shape", ())):
                if not isinstance(s, int):
                    self.where.setdefault(_expr(s), (i, axis))
        self.symbols = sorted(self.where)
        self.pad, self.why = batch_padding(engine.gm)
        self.high = _high(placeholders, self.pad)
        outs = engine.gm.graph.output_node().args[0]
        self.batched_outputs = [isinstance(o, fx.Node) and _val(o) is not None and _val(o).dim() > 0
                                and _expr(_val(o).shape[0]) == self.pad for o in outs]
        self.cache = GraphCache(lambda key: capture(self._staged), limit)
        self._staged: list = []

    def status(self) -> str:
        padding = f"batch padded into buckets ({self.why})" if self.pad else \
            f"no padding: {self.why}; one graph per exact size"
        sizes = "powers of two" if self.buckets is None else f"buckets {list(self.buckets)}"
        return (f"symbolic shapes: CUDA graphs captured per shape on first use ({sizes}), "
                f"at most {self.cache.limit} kept; {padding}")

    def run(self, inputs: list[torch.Tensor]) -> list:
        values = {s: int(inputs[i].shape[a]) for s, (i, a) in self.where.items()}
        n = bucket = None
        if self.pad is not None:
            n = values[self.pad]
            bucket = bucket_size(n, self.buckets, self.high)
            if bucket is None:
                return self.engine.run_steps(inputs)  # past every bucket: the step loop
            values[self.pad] = bucket
            inputs = [pad_rows(x, bucket) for x in inputs]
        self._staged = inputs  # the capture's example inputs, if this key is new
        runner = self.cache.get(tuple(values[s] for s in self.symbols))
        outs = runner.run(inputs) if runner is not None else self.engine.run_steps(inputs)
        if bucket is not None and bucket != n:
            outs = [o[:n] if b else o for o, b in zip(outs, self.batched_outputs)]
        return outs


def _high(placeholders, symbol: str | None) -> int | None:
    """The largest size `symbol` may take (its range's upper end; None: unbounded)."""
    from fxc.dynamic import range_end
    if symbol is None:
        return None
    for node in placeholders:
        v = _val(node)
        if v is not None and v.dim() and _expr(v.shape[0]) == symbol:
            s = v.shape[0].node
            vr = s.shape_env.var_to_range.get(s.expr)
            return range_end(vr.upper) if vr is not None else None
    return None

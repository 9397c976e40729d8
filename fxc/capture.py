"""Capture: nn.Module + example inputs -> a flat ATen-level GraphModule.

torch.export traces the model (non-strict), `decomp.table()` lowers it to core ATen while
keeping the ops we fuse whole, and we then rebuild the graph in fxc's own shape:

- parameters, buffers and lifted constants become `get_attr` nodes on a plain root module
  (so constant folding sees them as constants, not as inputs);
- placeholders are the model's tensor inputs only, in pytree-flatten order of (args, kwargs);
- the graph returns a flat tuple; `in_spec`/`out_spec` restore the user's structures;
- export's own runtime assertions are dropped: the runtime checks inputs itself.

Invariant: `Captured.gm(*tensor_leaves(args, kwargs))` == pytree-flat `model(*args, **kwargs)`.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import traceback
import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from . import decomp, dynamic
from .errors import FxcCaptureError

_ASSERT_OPS = {
    "_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size",
    "sym_constrain_range", "_assert_async",
}


@dataclasses.dataclass
class InputSpec:
    """What one flat input leaf must be: a tensor of this dtype/shape/device, or a constant."""

    name: str                       # 'attention_mask', "batch['image']", 'x[1]'
    is_tensor: bool
    dtype: torch.dtype | None = None
    shape: tuple[int, ...] = ()
    device: torch.device | None = None
    value: Any = None               # the specialized value of a non-tensor leaf
    # Per axis: None (exactly `shape[axis]`) or the DimRange it may take (fxc/dynamic.py);
    # empty: every axis fixed. `shape` holds the example's sizes either way.
    dims: tuple = ()

    @property
    def dynamic(self) -> bool:
        return any(d is not None for d in self.dims)


@dataclasses.dataclass
class Captured:
    gm: fx.GraphModule              # tensor leaves in -> flat tuple of output leaves
    in_spec: pytree.TreeSpec        # of (args, kwargs)
    out_spec: pytree.TreeSpec
    inputs: list[InputSpec]         # one per leaf of (args, kwargs), tensors and constants
    eager_out: Any                  # the model's own output on the example inputs (reference)
    layout: "CallLayout | None" = None  # how the example call passed its arguments


@dataclasses.dataclass
class CallLayout:
    """The compile-time call's shape: which parameters came positionally, which by keyword.
    A later call may pass the same arguments the other way; `canonical` rearranges it."""

    signature: inspect.Signature
    n_args: int
    kw_names: tuple[str, ...]

    def canonical(self, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:
            return None
        names = list(self.signature.parameters)
        if any(n not in bound.arguments for n in names[:self.n_args]):
            return None
        new_args = tuple(bound.arguments[n] for n in names[:self.n_args])
        new_kwargs = {k: bound.arguments[k] for k in self.kw_names if k in bound.arguments}
        return new_args, new_kwargs


def normalize_inputs(example_inputs) -> tuple[tuple, dict]:
    """Accept a tuple/list of positional args, a dict of kwargs, or a single tensor."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def capture(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes=None) -> Captured:
    """`dynamic_shapes`: torch.export's format (fxc/dynamic.py); None captures static shapes."""
    if not isinstance(model, torch.nn.Module):
        raise FxcCaptureError(f"expected a torch.nn.Module, got {type(model).__name__}",
                              hint="wrap a function in an nn.Module whose forward calls it")
    was_training = model.training
    model.eval()  # fxc compiles inference: dropout off, batch norm on running stats
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch.export deep-copies pytree specs through a path torch itself deprecated.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            eager_out = _run_eager(model, args, kwargs)
            _register_dataclasses((args, kwargs, eager_out))
            shapes, dim_names = dynamic.for_export(model, args, kwargs, dynamic_shapes)
            ep = _export(model, args, kwargs, shapes)
            ep = ep.run_decompositions(decomp.table())
    finally:
        model.train(was_training)
    gm = _flatten_program(ep)
    specs = _input_specs(model, args, kwargs)
    if dynamic_shapes is not None:
        specs = _with_dims(specs, dynamic.input_dims(gm, ep.range_constraints, dim_names))
        # export's ranges, for later stages (its shape env keeps backed sizes >= 2 internally):
        # every input axis' expression, and every root symbol (derived Dims' roots included)
        gm.meta["dim_ranges"] = {**dynamic.root_ranges(ep.range_constraints),
                                 **{d.symbol: (d.low, d.high) for s in specs for d in s.dims if d}}
    return Captured(gm=gm, in_spec=ep.call_spec.in_spec, out_spec=ep.call_spec.out_spec,
                    inputs=specs, eager_out=eager_out, layout=_layout(model, args, kwargs))


def _with_dims(specs: list[InputSpec], dims: list[tuple]) -> list[InputSpec]:
    """Tensor specs (placeholder order) get their axes' ranges."""
    it = iter(dims)
    return [dataclasses.replace(s, dims=next(it, ())) if s.is_tensor else s for s in specs]


def _layout(model, args, kwargs) -> CallLayout | None:
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        return None  # *args/**kwargs: no names to rearrange by
    return CallLayout(sig, len(args), tuple(kwargs))


def _run_eager(model, args, kwargs):
    try:
        return model(*args, **kwargs)
    except Exception as e:
        raise _capture_error(e, "the model fails in eager mode on the example inputs") from None


def _export(model, args, kwargs, dynamic_shapes=None):
    try:
        return torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes,
                                   strict=False)
    except Exception as e:
        raise _capture_error(e) from None


def _register_dataclasses(tree) -> None:
    """torch.export flattens only registered pytree types: register the user's dataclasses."""
    seen: set[type] = set()

    def visit(x):
        t = type(x)
        if dataclasses.is_dataclass(x) and not isinstance(x, type) and t not in seen:
            seen.add(t)
            if t not in pytree.SUPPORTED_NODES:
                torch.export.register_dataclass(t)
            for f in dataclasses.fields(x):
                visit(getattr(x, f.name))
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y)
        elif isinstance(x, dict):
            for y in x.values():
                visit(y)

    visit(tree)


# -- errors ----------------------------------------------------------------------------------

_TORCH_DIR = os.path.dirname(torch.__file__)
_FXC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_frame(exc: BaseException) -> str | None:
    """The innermost traceback frame outside torch and fxc: the user's line."""
    best = None
    for frame in traceback.extract_tb(exc.__traceback__):
        f = os.path.abspath(frame.filename)
        if f.startswith(_TORCH_DIR) or f.startswith(_FXC_DIR + os.sep + "fxc"):
            continue
        if "site-packages" in f and "/torch" in f:
            continue
        best = f"{frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"
    return best


_HINTS = {
    "data-dependent": "control flow or shapes depend on tensor values; use torch.where or "
                      "torch.cond, or move the branch out of forward",
    "GuardOnDataDependentSymNode": "a Python branch or .item() depends on tensor values; "
                                   "use torch.where / torch.cond instead",
    "not registered as a pytree": "register the input/output type with "
                                  "torch.utils._pytree.register_pytree_node",
    "which is not a known type": "the model returns an object torch.export cannot flatten (a "
                                 "KV cache, say): return tensors, register the type with "
                                 "torch.utils._pytree.register_pytree_node, or for transformers "
                                 "models pass use_cache=False",
}


def _capture_error(exc: BaseException, context: str | None = None) -> FxcCaptureError:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if context:
        reason = f"{context}: {reason}"
    hint = next((h for k, h in _HINTS.items() if k in text or k in type(exc).__name__), None)
    fixes, why = _suggested_fixes(text), _violations(text)
    if fixes or why:  # a declared range the model cannot take: export says why, and what can
        hint = "the model does not run every size of the declared range" + \
            (f" ({why})" if why else "") + (f"; export suggests: {fixes}" if fixes else "")
    err = FxcCaptureError(reason, source=_user_frame(exc), hint=hint)
    err.cause = exc  # the full original error, for whoever wants all of it
    return err


def _violations(text: str, limit: int = 2) -> str | None:
    """export's first 'Not all values of seq ... satisfy the generated guard ...' lines."""
    lines = [line.strip()[2:] for line in text.splitlines()
             if line.strip().startswith("- Not all values")]
    return "; ".join(lines[:limit]) or None


def _suggested_fixes(text: str) -> str | None:
    """torch.export's 'Suggested fixes:' lines (`seq = Dim('seq', min=8, max=64)`), joined."""
    lines = [line.strip() for line in text.splitlines()]
    if "Suggested fixes:" not in lines:
        return None
    fixes = []
    for line in lines[lines.index("Suggested fixes:") + 1:]:
        if not line:
            break
        fixes.append(line)
    return "; ".join(fixes) or None


# -- the flat GraphModule ------------------------------------------------------------------------

def _flatten_program(ep: torch.export.ExportedProgram) -> fx.GraphModule:
    sig = ep.graph_signature
    if sig.buffers_to_mutate or getattr(sig, "user_inputs_to_mutate", None):
        what = list(sig.buffers_to_mutate.values()) + list(
            getattr(sig, "user_inputs_to_mutate", {}).values())
        raise FxcCaptureError(f"the model mutates {what} in forward",
                              hint="fxc compiles pure inference graphs; move state updates "
                                   "out of forward")
    lifted = _lifted_tensors(ep)
    gm = fx.GraphModule(torch.nn.Module(), ep.graph_module.graph, class_name="FxcGraph")
    for name, tensor in lifted.items():
        # Plain tensors, not Parameters: the compiled graph is inference-only.
        gm.register_buffer(name, tensor.detach(), persistent=False)
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node, spec in zip(placeholders, sig.input_specs):
        if spec.arg.name in lifted:
            _to_get_attr(graph, node)
        elif not isinstance(node.meta.get("val"), torch.Tensor):
            _inline_constant(graph, node)
    for node in list(graph.nodes):
        if node.op == "call_function" and getattr(node.target, "__name__", "").split(".")[0] in _ASSERT_OPS:
            graph.erase_node(node)
    graph.set_codegen(fx.CodeGen())  # plain flat signature; specs live in Captured
    out = graph.output_node()
    out.args = (tuple(out.args[0]),)
    gm.recompile()
    return gm


def _lifted_tensors(ep) -> dict[str, torch.Tensor]:
    """placeholder name -> the real tensor, for parameters, buffers and lifted constants."""
    sig, out = ep.graph_signature, {}
    for name, target in sig.inputs_to_parameters.items():
        out[name] = ep.state_dict[target]
    for name, target in sig.inputs_to_buffers.items():
        out[name] = ep.state_dict[target] if target in ep.state_dict else ep.constants[target]
    for name, target in getattr(sig, "inputs_to_lifted_tensor_constants", {}).items():
        out[name] = ep.constants[target]
    return out


def _to_get_attr(graph: fx.Graph, node: fx.Node) -> None:
    with graph.inserting_before(node):
        new = graph.get_attr(node.name)  # the root module holds it under the same name
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _inline_constant(graph: fx.Graph, node: fx.Node) -> None:
    """A non-tensor user input was specialized by export: substitute its value."""
    for user in list(node.users):
        user.replace_input_with(node, node.meta.get("val"))
    graph.erase_node(node)


def _input_specs(model, args, kwargs) -> list[InputSpec]:
    names = _arg_names(model, len(args))
    leaves, _ = pytree.tree_flatten_with_path((args, kwargs))
    specs = []
    for path, leaf in leaves:
        name = _leaf_name(path, names)
        if isinstance(leaf, torch.Tensor):
            specs.append(InputSpec(name, True, leaf.dtype, tuple(leaf.shape), leaf.device))
        else:
            specs.append(InputSpec(name, False, value=leaf))
    return specs


def _arg_names(model, n: int) -> list[str]:
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(n):
        if i < len(params) and params[i].kind in (params[i].POSITIONAL_ONLY,
                                                  params[i].POSITIONAL_OR_KEYWORD):
            names.append(params[i].name)
        else:
            names.append(f"args[{i}]")
    return names


def _leaf_name(path, arg_names: list[str]) -> str:
    # path[0] selects args (0) or kwargs (1); path[1] the argument; the rest the structure.
    top, key = path[0].idx, path[1]
    head = arg_names[key.idx] if top == 0 else str(key.key)
    return head + "".join(str(k) for k in path[2:])

"""`torch.compile(model, backend="fxc")`: a TorchDynamo backend over fxc.compile.

Registered lazily through the `torch_dynamo_backends` entry point in pyproject.toml, and
eagerly by `register()` for environments where entry points are not installed.
"""
from __future__ import annotations


def fxc_backend(gm, example_inputs, **options):
    """Dynamo hands us an fx graph of flat tensor inputs; compile it like any module."""
    from fxc.api import compile as fxc_compile

    compiled = fxc_compile(gm, tuple(example_inputs), **options)

    def run(*args):
        return compiled(*args)

    run.fxc_compiled = compiled  # for inspection: report(), graph
    return run


def register() -> None:
    from torch._dynamo import list_backends, register_backend
    if "fxc" not in list_backends(exclude_tags=()):
        register_backend(fxc_backend, name="fxc")

"""The fxc error hierarchy: every error fxc raises on purpose derives from FxcError.

Errors about a graph carry the node, its op and the user's source line, so the message
points back at the model code rather than at compiler internals.
"""
from __future__ import annotations


class FxcError(Exception):
    """Base of every error fxc raises on purpose."""


class FxcCaptureError(FxcError):
    """The model could not be captured as a graph (torch.export refused it)."""

    def __init__(self, reason: str, *, source: str | None = None, hint: str | None = None):
        self.reason, self.source, self.hint = reason, source, hint
        msg = f"could not capture the model: {reason}"
        if source:
            msg += f"\n  at {source}"
        if hint:
            msg += f"\n  hint: {hint}"
        super().__init__(msg)


class FxcInputError(FxcError, ValueError):
    """A call's inputs do not match what the module was compiled for (checked before any kernel runs)."""


class FxcOptionError(FxcError, ValueError):
    """A compile option has a value fxc does not accept."""


class FxcCalibrationError(FxcInputError):
    """precision='int8': a calibration batch does not fit the compiled inputs (names which)."""


class FxcPassError(FxcError):
    """A pass failed or broke the graph; names the pass and, where known, the node."""

    def __init__(self, pass_name: str, message: str, *, node: str | None = None, source: str | None = None):
        self.pass_name, self.node, self.source = pass_name, node, source
        msg = f"pass '{pass_name}': {message}"
        if node:
            msg += f"\n  node: {node}"
        if source:
            msg += f"\n  at {source}"
        super().__init__(msg)


class FxcVerifyError(FxcPassError):
    """Verify mode found a pass whose output graph no longer matches the stage before it."""


class FxcUnsupportedOpError(FxcError):
    """The graph holds ops the chosen backend cannot run; lists all of them at once."""

    def __init__(self, backend: str, unsupported: list[tuple[str, str, str | None]], total: int):
        # unsupported: (op, node name, source line or None) for every offending node
        self.backend, self.unsupported, self.total = backend, unsupported, total
        ops = sorted({op for op, _, _ in unsupported})
        lines = [f"{backend}: {len(ops)} unsupported op(s) in the graph "
                 f"({total} ops, {total - len(unsupported)} supported):"]
        for op, node, src in unsupported:
            lines.append(f"  {op}  (node {node}{', at ' + src if src else ''})")
        super().__init__("\n".join(lines))


class FxcBackendUnavailableError(FxcError):
    """The requested backend's runtime library is not installed or has no usable device."""


class FxcArtifactError(FxcError):
    """A saved artifact is tampered with, truncated, foreign, or points outside its directory."""


class FxcRuntimeError(FxcError, RuntimeError):
    """A kernel failed while running a compiled graph; names the step's node and source line."""

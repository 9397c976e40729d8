"""fxc.runtime: executes a compiled graph. Every engine takes the flat tensor inputs (in
placeholder order, already checked by `inputs.InputChecker`) and returns the flat outputs."""
from .inputs import InputChecker
from .torch_engine import TorchEngine

__all__ = ["InputChecker", "TorchEngine"]

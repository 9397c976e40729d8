"""fxc.passes: graph rewrites over the ATen-level fx graph, one file per pass.

`pipeline.PIPELINE` is the ordered list; `manager.run_pipeline` runs it.
"""
from .manager import Pass, PassContext, PassRecord, PassResult, run_pipeline
from .pipeline import PIPELINE, names

__all__ = ["Pass", "PassContext", "PassRecord", "PassResult", "run_pipeline", "PIPELINE", "names"]

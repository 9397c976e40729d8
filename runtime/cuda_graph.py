"""CUDA graphs for the torch engine: the whole step list captured once, replayed per call.

A call copies its inputs into static input buffers (host inputs through pinned staging
buffers, non_blocking), replays the graph, and returns fresh clones of the static outputs, so
a later replay never overwrites what the user holds (with `zero_copy_outputs` it returns the
static outputs themselves: valid until the next call). Warm-up runs on a side stream first,
as torch.cuda.graphs' own recipe does, so lazy initialisation (cuBLAS handles, workspaces)
happens outside the capture.

Where capture is impossible (an op tagged data-dependent or cudagraph-unsafe, a tensor off
the device, a step that waits for the host such as .item(), found in warm-up with torch's
sync debug mode; or the capture itself failing) `try_capture` returns no runner and says
why; the engine logs it, the report shows it, and the step loop runs instead. A failed
capture is cleaned up after (reset_after_failed_capture), so nothing of it leaks into the
user's later CUDA work.

Invariant: `CudaGraphRunner.run(inputs)` returns the same values as `engine.run_steps(inputs)`.
"""
from __future__ import annotations

import torch

from fxc import ir
from fxc.debug import log
from fxc.errors import FxcRuntimeError

WARMUP_ITERS = 3  # the second of them runs with host syncs turned into errors
# Not dynamic_output_shape: aten.index.Tensor carries it for boolean masks, yet with integer
# indices its shape is static; a truly dynamic shape shows in the meta (checked below).
_UNSAFE_TAGS = ("cudagraph_unsafe", "data_dependent_output")


def capture_refusal(engine, symbolic: bool = False) -> str | None:
    """A reason the step list cannot be one CUDA graph, found before trying, or None.
    `symbolic`: the graph's sizes are symbols and this capture is for one concrete shape of
    them (runtime/buckets.py), so a symbolic size in the meta is no reason to refuse."""
    for step in engine.steps:
        node, op = step.node, step.node.target
        tags = getattr(op, "tags", ())
        for tag in _UNSAFE_TAGS:
            if getattr(torch.Tag, tag, None) in tags:
                return f"{ir.describe(node)} is tagged {tag}"
        for v in _metas(node.meta.get("val")):
            if v.device != engine.device:
                return f"{ir.describe(node)} computes on {v.device}, not {engine.device}"
            if not symbolic and not all(isinstance(s, int) for s in v.shape):
                return f"{ir.describe(node)} has a dynamic shape"
    return None


def _metas(val):
    if isinstance(val, torch.Tensor):
        return [val]
    if isinstance(val, (tuple, list)):
        return [v for v in val if isinstance(v, torch.Tensor)]
    return []


def try_capture(engine, example_inputs, *, zero_copy_outputs: bool = False,
                symbolic: bool = False):
    """(runner, status line) on success, (None, why not) otherwise; never raises for a
    capture failure (a kernel failing in warm-up is a real error and propagates).
    `symbolic`: capture a symbolic graph at the example inputs' shape (one bucket)."""
    why = capture_refusal(engine, symbolic)
    if why is None:
        try:
            runner = CudaGraphRunner(engine, example_inputs, zero_copy_outputs)
            outs = "static (zero_copy_outputs)" if zero_copy_outputs else "cloned per call"
            return runner, (f"captured {len(engine.steps)} steps as one CUDA graph "
                            f"(warm-up {WARMUP_ITERS} runs on a side stream); outputs {outs}")
        except _CaptureFailed as e:
            why = str(e)
    log.warning("CUDA graph not used, running the step loop: %s", why)
    return None, f"not captured, running the step loop: {why}"


class _CaptureFailed(Exception):
    pass


class CudaGraphRunner:
    def __init__(self, engine, example_inputs, zero_copy_outputs: bool):
        self.device, self.zero_copy = engine.device, zero_copy_outputs
        self.sources = engine.output_sources()
        self.stager = HostStager(self.device)
        self.static_inputs = [torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=self.device)
                              for x in example_inputs]
        for s, x in zip(self.static_inputs, example_inputs):
            s.copy_(x)
        with torch.no_grad():
            self._warm_up(engine)
            self.graph, self.static_outputs = self._capture(engine)

    def _warm_up(self, engine) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side):
                engine.run_steps(self.static_inputs)  # lazy initialisation happens here
                check_no_host_sync(engine, self.static_inputs)
                for _ in range(WARMUP_ITERS - 2):
                    engine.run_steps(self.static_inputs)
        finally:  # also when we give up: the step loop must not race the side stream
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)

    def _capture(self, engine):
        # By hand rather than `with torch.cuda.graph(...)`: its __exit__ leaves the capture
        # stream current when capture_end raises, and we must come back clean to fall back.
        torch.cuda.synchronize(self.device)
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        error, outs = None, None
        with torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                outs = engine.run_steps(self.static_inputs)
            except Exception as e:  # noqa: BLE001 - reported as the reason to fall back
                error = e
            try:
                graph.capture_end()
            except Exception as e:  # noqa: BLE001
                error = error or e
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if error is not None:
            _recover(self.device)
            first = (str(error).strip().splitlines() or [""])[0]
            raise _CaptureFailed(f"capture failed: {type(error).__name__}: {first}")
        return graph, outs

    def run(self, inputs: list[torch.Tensor]) -> list:
        for i, (s, x) in enumerate(zip(self.static_inputs, inputs)):
            if x.device == self.device:
                s.copy_(x)
            else:
                self.stager.stage(i, x, s)
        self.graph.replay()
        outs = []
        for (kind, v), o in zip(self.sources, self.static_outputs):
            if kind == "input":
                x = inputs[v]
                outs.append(x if x.device == self.device else self.static_inputs[v].clone())
            elif kind == "constant":
                outs.append(v)
            elif isinstance(o, torch.Tensor) and not self.zero_copy:
                outs.append(o.clone())
            else:
                outs.append(o)
        return outs


def check_no_host_sync(engine, inputs) -> None:
    """One warm-up run with torch's sync debug mode set to 'error': a step that waits for the
    host (.item(), nonzero, a blocking copy) is found here, outside any capture, because a
    capture that fails leaves CUDA state behind (see reset_after_failed_capture)."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.run_steps(inputs)
    except FxcRuntimeError as e:
        if "synchronizing" not in str(e):
            raise  # a real failure: the step loop would fail the same way
        first = (str(e).strip().splitlines() or [""])[0]
        raise _CaptureFailed(f"a step synchronizes with the host: {first}") from None
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _recover(device) -> None:
    """After a failed capture: drain the device and undo what the capture left behind, so
    the step loop (and the user's own CUDA work) runs as if it had never been tried."""
    try:
        torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001 - logged, the fallback still runs
        log.debug("synchronize after failed capture: %s", e)
    reset_after_failed_capture(device)


def reset_after_failed_capture(device) -> None:
    """torch runs its generators' capture epilogue only after a successful
    cudaStreamEndCapture, so a failed capture leaves the CUDA RNG in capture mode and every
    later random op fails ('Offset increment outside graph capture encountered
    unexpectedly'). A trivial capture that succeeds runs prologue and epilogue again and
    clears that state."""
    try:
        probe, graph = torch.zeros(1, device=device), torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                probe.add_(1)
            finally:
                graph.capture_end()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001
        log.warning("could not reset CUDA state after a failed capture: %s", e)


class HostStager:
    """Host (CPU) inputs of a CUDA module: copied into a pinned buffer per input, then to the
    device with non_blocking=True. An event per buffer makes the next call wait until the
    previous copy out of that buffer has finished before overwriting it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pinned: dict[int, tuple[torch.Tensor, torch.cuda.Event]] = {}

    def stage(self, i: int, x: torch.Tensor, dst: torch.Tensor | None = None) -> torch.Tensor:
        buf, done = self._buffer(i, x)
        done.synchronize()
        buf.copy_(x)
        if dst is None:
            dst = torch.empty_like(x, device=self.device)
        dst.copy_(buf, non_blocking=True)
        done.record(torch.cuda.current_stream(self.device))
        return dst

    def to_device(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x if x.device == self.device else self.stage(i, x)

    def _buffer(self, i: int, x: torch.Tensor):
        have = self.pinned.get(i)
        if have is None or have[0].shape != x.shape or have[0].dtype != x.dtype:
            buf = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, pin_memory=True)
            have = (buf, torch.cuda.Event())
            have[1].record(torch.cuda.current_stream(self.device))
            self.pinned[i] = have
        return have

"""Hypothesis profiles and comparison tolerances shared by fxc's tests.

Profiles (loaded by tests/conftest.py from FXC_HYPOTHESIS_PROFILE):
- `ci`: derandomized (the same examples every run), 200 examples, no deadline;
- `slow`: 2000 random examples, for a night run that hunts new bugs;
- `dev`: 20 examples, for a quick local loop.
"""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, settings

# assert_close defaults of PyTorch (see /work/shared/TESTING.md, "Tolerances").
_TOLERANCES = {
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


def tolerances(dtype: torch.dtype) -> dict:
    """dict(rtol=..., atol=...) for comparing tensors of `dtype`; exact for int and bool."""
    return dict(_TOLERANCES.get(dtype, dict(rtol=0.0, atol=0.0)))


def register_profiles() -> None:
    """Register the `ci`, `slow` and `dev` hypothesis profiles (loading is the caller's)."""
    quiet = [HealthCheck.too_slow]
    settings.register_profile("ci", derandomize=True, database=None, max_examples=200,
                              deadline=None, suppress_health_check=quiet, print_blob=True)
    settings.register_profile("slow", max_examples=2000, deadline=None,
                              suppress_health_check=quiet, print_blob=True)
    settings.register_profile("dev", max_examples=20, deadline=None, suppress_health_check=quiet)

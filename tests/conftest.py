"""Shared test setup: hypothesis profiles (FXC_HYPOTHESIS_PROFILE=ci|slow, ci by default),
deterministic torch, and the gpu marker's skip."""
import os

import pytest
import torch

from fxc.testing import register_profiles

register_profiles()
from hypothesis import settings  # noqa: E402

settings.load_profile(os.environ.get("FXC_HYPOTHESIS_PROFILE", "ci"))
torch.manual_seed(0)
# CI has 2 cores and runs 2 xdist workers: one thread each; more only adds contention
# (tiny ops cost tens of ms under oversubscription).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on the GPU machine: scripts/gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

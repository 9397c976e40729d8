#!/usr/bin/env bash
# The test command: everything but slow and GPU tests (those run on the GPU machine:
# scripts/gpu_check.sh). Hypothesis uses the derandomized `ci` profile.
set -euo pipefail
cd "$(dirname "$0")/.."
# -n 2: both cores of a CI machine (pytest-xdist); each worker runs torch single-threaded.
exec "${PYTHON:-python3}" -m pytest -m "not slow and not gpu" -q -p no:cacheprovider -n "${FXC_TEST_WORKERS:-2}" "$@"

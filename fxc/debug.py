"""Debug switches, all in one place. Each is an environment variable and a compile option.

FXC_LOG=debug|info|warning   log level of the `fxc` logger (default warning). At debug,
                             every pass logs the graph after it.
FXC_VERIFY=1                 verify mode: after each pass, lint the graph and compare its
                             outputs with the stage before on the example inputs; the first
                             pass that breaks them is named in an FxcVerifyError.
FXC_DUMP_DIR=path            write the graph after capture and after each pass there.
FXC_DISABLE_PASSES=a,b       switch passes off by name (as `disable_passes=`).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("fxc")


def _setup_logging() -> None:
    level = os.environ.get("FXC_LOG", "").upper()
    if level:
        logging.basicConfig(format="%(name)s %(levelname)s: %(message)s")
        log.setLevel(getattr(logging, level, logging.WARNING))


_setup_logging()


def env_verify() -> bool:
    return os.environ.get("FXC_VERIFY", "").strip().lower() in {"1", "true", "yes", "on"}


def env_dump_dir() -> str | None:
    return os.environ.get("FXC_DUMP_DIR") or None


def env_disabled_passes() -> tuple[str, ...]:
    raw = os.environ.get("FXC_DISABLE_PASSES", "")
    return tuple(p.strip() for p in raw.split(",") if p.strip())

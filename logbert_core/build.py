"""What a logad process runs: its package version and the versions that decide its numbers. Shared by both command
lines (``--version``) and the ``logad_build_info`` metric.

Versions come from the installed package metadata (``importlib.metadata``), so asking for them never imports torch.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def _installed(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"  # run from a source tree that was never installed


def build_info() -> dict[str, str]:
    """``{"version": logad's, "python": ..., "torch": ...}``: bounded, one value per process."""
    return {"version": _installed("logad"), "python": platform.python_version(), "torch": _installed("torch")}


def describe(prog: str) -> str:
    """The ``--version`` line, e.g. ``logad 0.1.0 (torch 2.13.0+cpu, python 3.12.3)``."""
    b = build_info()
    return f"{prog} {b['version']} (torch {b['torch']}, python {b['python']})"

"""Exceptions of the live detector, under ``logbert_core.errors.LogadError`` (the hierarchy is described there).
Third-party errors are wrapped at the boundary with ``raise ... from exc``."""

from __future__ import annotations

from logbert_core.errors import LogadError, Unavailable

__all__ = ["LogadError", "OutageError", "StartupError", "Unavailable"]


class StartupError(LogadError):
    """The detector cannot start: bad settings, a bundle that does not fit them, an unreachable service.

    The message says what is wrong and how to fix it; the CLI prints it and exits with code 2.
    """


class OutageError(LogadError):
    """Redis or the broker stayed unreachable past the configured outage budget; the process exits non-zero
    without committing offsets for work not done."""

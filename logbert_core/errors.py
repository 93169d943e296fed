"""The one exception hierarchy of logad.

Every error logad raises on purpose is a ``LogadError``; a command catches that, prints the message (which names
the file, field or setting and the fix) and exits non-zero, while anything else is a bug with a traceback.
Third-party errors are wrapped where they enter (``raise ... from exc``). The areas:

* ``ConfigError`` (``logbert_core.config``): settings that cannot be used;
* ``BundleError`` (``logbert_core.bundle``): a model bundle that cannot be loaded;
* ``DeviceError`` and ``SettingsMismatch`` (``logbert_core.runtime``): a bundle this machine or these settings
  cannot run as it was trained;
* ``LineFormatError`` (``logbert_core.parsing``): one line that does not fit its family's format (bad input:
  counted and dead-lettered, never fatal);
* ``Unavailable``: infrastructure that is down or too slow (Redis, the broker, Alertmanager), the one kind the
  detector's back-off retries; past its outage budget it becomes ``streamer.errors.OutageError``;
* the streamer's own (``streamer.errors``): ``StartupError``, ``OutageError`` and the areas built on them.

The logbert_core errors also derive from ``ValueError``, which callers caught before this hierarchy existed.
"""

from __future__ import annotations


class LogadError(Exception):
    """Root of logad's own errors."""


class Unavailable(LogadError):
    """Infrastructure that is down or timed out: worth retrying with back-off, never a reason to skip work."""

"""The worker's own counts (what ``Worker.run`` returns), kept by both of its threads."""

from __future__ import annotations

import threading

KEYS = ("consumed", "rejected", "windows", "anomalies", "reloads", "refused", "suppressed", "storms")


class Tally:
    """Counts by name, safe to add to from the consume thread and the scorer thread at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(KEYS, 0)

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def __getitem__(self, key: str) -> int:
        return self._counts[key]

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

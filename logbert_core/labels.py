"""Session labels as Loghub writes them: a ``BlockId,Label`` CSV -> {session id: anomalous}.

Pure: it reads lines someone else opened (``training.data.load_labels`` reads a file for the trainer, the demo its
hold-out labels), so both read the same format with the same errors.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable

LABEL_VALUES = {"normal": False, "0": False, "anomaly": True, "1": True}  # lower-cased Label column -> anomalous


def parse_labels(lines: Iterable[str], name: str) -> dict[str, bool]:
    """The labels of a CSV's text lines; ``name`` is how errors name the source.

    A row that cannot be read or an id labelled both ways is a ``ValueError`` naming the line, never skipped or
    overridden: a lost anomaly label puts that session into training as normal. The same label repeated is fine.
    """
    out: dict[str, bool] = {}
    first: dict[str, tuple[int, str]] = {}  # id -> (line, label as written) where it was first labelled
    reader = csv.reader(lines)
    try:
        _check_header(name, next(reader, None))
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) < 2 or not row[0].strip():
                raise ValueError(f"{name}, line {reader.line_num}: expected 'id,label', got {','.join(row)!r}")
            sid, written = row[0].strip(), row[1].strip()
            value = LABEL_VALUES.get(written.lower())
            if value is None:
                raise ValueError(f"{name}, line {reader.line_num}: unknown label {row[1]!r} for {sid!r} "
                                 "(Normal/Anomaly or 0/1)")
            if sid in first and out[sid] != value:
                at, was = first[sid]
                raise ValueError(f"{name}: {sid!r} is labelled {was} on line {at} but {written} on line "
                                 f"{reader.line_num}")
            first.setdefault(sid, (reader.line_num, written))
            out[sid] = value
    except csv.Error as exc:
        raise ValueError(f"{name}, line {reader.line_num}: unreadable CSV ({exc})") from exc
    return out


def _check_header(name: str, header: list[str] | None) -> None:
    """An id column, then ``Label``: a file without its header would lose its first row to it."""
    cols = [c.strip().lower() for c in header or []]
    if not any(cols):
        raise ValueError(f"{name}: no header; expected 'BlockId,Label' on line 1, then one row per session")
    if len(cols) >= 2 and cols[1] in LABEL_VALUES:
        raise ValueError(f"{name}, line 1: a data row where the header 'BlockId,Label' should be")
    if len(cols) < 2 or cols[1] != "label" or not cols[0].replace("_", "").replace(" ", "").endswith("id"):
        raise ValueError(f"{name}, line 1: expected the header 'BlockId,Label' (an id column, then Label), "
                         f"got {','.join(header or [])!r}")

"""Hold-out splits of raw log files into a training part and a test part.

The default is chronological: train on earlier sessions, test on later ones, never the other way round.
``interleave`` deals sessions, in the order of their first line, into blocks of ``INTERLEAVE_BLOCK``; the last
``test_fraction`` of every block is the test. It stands for *other lines of the same period*: what a detector meets
when its training file is a sample of a period and the logs it judges are the rest of that period (BGL_dev.log is
such a sample). It never replaces the chronological split; it is reported beside it.

``interleave_days`` deals whole *days* (UTC, by each session's first line) instead of sessions: the test part is
other days of the period. Sessions dealt one by one share their neighbours' bursts (a core dump prints the same
dozens of lines on many nodes within seconds), so the session-interleaved test sees little the training part did
not; a test day shares no burst with the training days. It stands for logs of the same period that a sample left
out, drawn from other times than the sample's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from logbert_core.config import Settings
from logbert_core.parsing import LineFormatError
from training.data import (
    check_labels,
    describe,
    file_fingerprint,
    iter_lines,
    load_labels,
    no_sessions,
    split_chronological,
)

INTERLEAVE_BLOCK = 10
DAY_S = 86_400


def split_files(settings: Settings, inputs: Sequence[str | Path], labels_csv: str | Path | None,
                test_fraction: float, out_dir: Path, interleave: bool = False,
                interleave_days: bool = False) -> dict[str, Any]:
    """Raises ValueError, before anything is written, when the inputs or labels cannot make both parts.
    ``interleave_days`` (with ``interleave``): deal days, not sessions (module docstring)."""
    fmt = settings.line_format()
    labels = load_labels(labels_csv) if labels_csv else None
    first_seen: dict[str, tuple[float, int]] = {}
    rejected: Counter[str] = Counter()
    for n, line in enumerate(iter_lines(inputs)):
        if not line.strip():
            rejected["empty"] += 1
            continue
        try:
            rec = fmt.parse(line)
        except LineFormatError as exc:
            rejected[exc.reason] += 1
            continue
        for sid in rec.session_ids:
            first_seen.setdefault(sid, (rec.timestamp, n))
    if not first_seen:
        raise no_sessions(describe(inputs), rejected)
    if labels is not None and labels_csv:
        check_labels(labels, first_seen, labels_csv, describe(inputs))
    order = sorted(first_seen, key=first_seen.__getitem__)
    if interleave:
        n_test = round(test_fraction * INTERLEAVE_BLOCK)
        if not 0 < n_test < INTERLEAVE_BLOCK:
            raise ValueError(f"test_fraction={test_fraction}: an interleaved split needs 1 to {INTERLEAVE_BLOCK - 1} "
                             f"test sessions in every block of {INTERLEAVE_BLOCK}")
        if interleave_days:
            days = sorted({int(first_seen[sid][0] // DAY_S) for sid in order})
            test_days = {d for i, d in enumerate(days) if i % INTERLEAVE_BLOCK >= INTERLEAVE_BLOCK - n_test}
            test_ids = [sid for sid in order if int(first_seen[sid][0] // DAY_S) in test_days]
        else:
            test_ids = [sid for i, sid in enumerate(order) if i % INTERLEAVE_BLOCK >= INTERLEAVE_BLOCK - n_test]
        picked = set(test_ids)
        train_ids = [sid for sid in order if sid not in picked]
    else:
        train_ids, test_ids = split_chronological(order, [test_fraction])
    if not train_ids:
        raise ValueError(f"{describe(inputs)}: too few sessions ({len(order)}) to split into train and test at "
                         f"test fraction {test_fraction}")
    part = {sid: "train" for sid in train_ids} | {sid: "test" for sid in test_ids}

    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "test": 0, "unparsed": 0}
    with open(out_dir / "train.log", "w", encoding="utf-8", errors="surrogateescape") as tr, \
            open(out_dir / "test.log", "w", encoding="utf-8", errors="surrogateescape") as te:
        sinks = {"train": tr, "test": te}
        for line in iter_lines(inputs):
            try:
                rec = fmt.parse(line)
            except LineFormatError:
                counts["unparsed"] += 1
                continue
            for name in sorted({part[sid] for sid in rec.session_ids}):
                sinks[name].write(line + "\n")
                counts[name] += 1
    summary: dict[str, Any] = {
        "inputs": [str(p) for p in inputs], "sha256": file_fingerprint(inputs),
        "sessions": {"train": len(train_ids), "test": len(test_ids)}, "lines": counts,
        "split": ("interleaved by day" if interleave_days else "interleaved") if interleave else "chronological",
        "test_starts_at": first_seen[test_ids[0]][0] if test_ids else None,
        "train_ends_before": None if interleave else first_seen[test_ids[0]][0] if test_ids else None,
    }
    if labels is not None:
        for name, ids in (("train", train_ids), ("test", test_ids)):
            with open(out_dir / f"{name}.labels.csv", "w") as fh:
                fh.write("BlockId,Label\n")
                for sid in ids:
                    fh.write(f"{sid},{'Anomaly' if labels.get(sid, False) else 'Normal'}\n")
            summary[f"{name}_anomalous"] = sum(labels.get(sid, False) for sid in ids)
    return summary

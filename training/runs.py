"""Run records: every ``logad-train`` run appends one JSON line to a runs store, and to MLflow when it is installed.

A record holds what is needed to compare and redo a run: the command, its parameters (settings and options), the
data fingerprint (sha256 of the input files), the metrics, and the bundle version it wrote. The store is a plain
JSON-lines file (default ``runs/runs.jsonl``; ``--runs-file`` or ``LOGAD_RUNS_FILE`` move it, an empty value turns it
off). Each record is written with one ``write`` on a file opened for appending, so concurrent runs do not interleave
lines. MLflow (the optional ``mlflow`` extra) gets the same record as params, numeric metrics and tags; without it,
nothing changes.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_RUNS_FILE = "runs/runs.jsonl"
RECORD_VERSION = 1


def make_record(command: str, params: Mapping[str, Any], data: Mapping[str, Any], metrics: Mapping[str, Any],
                bundle_version: str | None = None, outputs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One run record (plain JSON types)."""
    return {
        "record_version": RECORD_VERSION,
        "run_id": uuid.uuid4().hex[:16],
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "params": dict(params),
        "data": dict(data),
        "metrics": dict(metrics),
        "bundle_version": bundle_version,
        "outputs": dict(outputs or {}),
    }


def append_run(record: Mapping[str, Any], path: str | Path) -> Path:
    """Append ``record`` as one JSON line to ``path`` (parents created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return p


def read_runs(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a runs store, oldest first; a missing file is an empty store."""
    p = Path(path)
    if not p.is_file():
        return []
    with open(p) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": value}``; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_mlflow(record: Mapping[str, Any]) -> bool:
    """Log a record to MLflow (tracking URI from MLflow's own settings); False when mlflow is not installed."""
    try:
        import mlflow
    except ImportError:
        return False
    params = {k: str(v)[:500] for k, v in flatten(record["params"]).items()}
    metrics = {k: float(v) for k, v in flatten(record["metrics"]).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with mlflow.start_run(run_name=f"{record['command']}-{record['run_id']}"):
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"command": record["command"], "bundle_version": str(record.get("bundle_version")),
                         **{f"data.{k}": str(v)[:500] for k, v in flatten(record["data"]).items()}})
    return True


def record_run(record: Mapping[str, Any], runs_file: str | Path | None, mlflow: bool | None = None) -> Path | None:
    """Append to the store (unless ``runs_file`` is empty/None) and log to MLflow (``None``: when importable).

    A store that cannot be written is reported and skipped: the run's own outputs are already safely written.
    """
    written = None
    if runs_file:
        try:
            written = append_run(record, runs_file)
        except OSError as exc:
            log.warning("could not append the run record to %s: %s", runs_file, exc)
    if mlflow is not False:
        try:
            logged = log_mlflow(record)
        except Exception as exc:  # noqa: BLE001 - a tracking server outage must not fail a finished run
            log.warning("MLflow logging failed: %s", exc)
            logged = False
        if mlflow and not logged:
            log.warning("MLflow logging requested but mlflow is not installed (pip install 'logad[mlflow]')")
    return written

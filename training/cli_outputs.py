"""Where ``logad-train``'s jobs put what they make: ``--out`` checked when the command line is read (a job must not
fail on its output after the work is done), and the run record (``--runs-file``, ``--mlflow``; ``training.runs``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import click

from logbert_core.config import Settings, bundle_fields


def _unusable_dir(path: Path) -> str | None:
    """Why ``path`` cannot be made (or written into) as a directory; None when it can."""
    p = path.absolute()
    there = next(q for q in (p, *p.parents) if os.path.lexists(q))
    if not there.is_dir():
        return f"{there} exists and is not a directory"
    if not os.access(there, os.W_OK | os.X_OK):
        return f"{there} is not writable"
    return None


def check_out_dir(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--out`` checked when the command line is read: a job must not fail on its output after the work is done."""
    problem = _unusable_dir(Path(value))
    if problem:
        raise click.BadParameter(f"cannot create {value}: {problem}")
    return value


def check_bundle_dir(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--out`` of ``train``: writing a bundle replaces the whole directory (``save_bundle``), so it must be new,
    empty or a bundle already; its parent must take the temporary directory the bundle is written to first."""
    path = Path(value)
    if path.name in ("", ".", ".."):
        raise click.BadParameter(f"{value}: name the bundle directory (e.g. models/mine)")
    problem = _unusable_dir(path.absolute().parent)
    if problem:
        raise click.BadParameter(f"cannot create {value}: {problem}")
    if path.is_dir() and any(path.iterdir()) and not (path / "bundle.json").is_file():
        raise click.BadParameter(f"{value} holds files but no model bundle, and a bundle replaces its directory "
                                 "as a whole; give a new or empty directory")
    return value


def _runs_file(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--runs-file`` checked up front. The record is a by-product: where it cannot be written (a read-only image
    running the default path), the job says so now and runs without it, rather than refusing to train."""
    if value:
        path = Path(value)
        problem = "it is a directory" if path.is_dir() else _unusable_dir(path.absolute().parent)
        if problem:
            click.echo(f"warning: the run record will not be written: cannot write {value} ({problem}); "
                       "set --runs-file (or LOGAD_RUNS_FILE) to a writable path, or to '' to skip it", err=True)
            return ""
    return value


def runs_options(f: Callable[..., None]) -> Callable[..., None]:
    """``--runs-file`` and ``--mlflow/--no-mlflow``: where the run record goes (see ``training.runs``)."""
    f = click.option("--mlflow/--no-mlflow", "mlflow", default=None,
                     help="Also log the run to MLflow (default: when mlflow is installed).")(f)
    return click.option("--runs-file", envvar="LOGAD_RUNS_FILE", default="runs/runs.jsonl", show_default=True,
                        callback=_runs_file,
                        help="JSON-lines runs store to append this run's record to; empty to skip. "
                             "Env: LOGAD_RUNS_FILE.")(f)


def run_params(settings: Settings, **options: object) -> dict[str, object]:
    """The settings that shape a run (bundle fields and training section) plus the command's options."""
    train = {f"train.{k}": v for k, v in settings.train.model_dump(mode="json").items()}
    return {**bundle_fields(settings), **train, **{f"option.{k}": v for k, v in options.items()}}


def record_run(command: str, params: Mapping[str, object], data: Mapping[str, object], metrics: Mapping[str, object],
               bundle_version: str | None, outputs: dict[str, str], runs_file: str, mlflow: bool | None) -> None:
    """Append the run's record (``training.runs``) where ``runs_options`` said, and print where it went."""
    from training import runs

    record = runs.make_record(command, params, data, metrics, bundle_version, outputs)
    written = runs.record_run(record, runs_file or None, mlflow)
    if written is not None:
        click.echo(f"  run {record['run_id']} recorded in {written}")

"""``logad-train``: the offline jobs. A thin layer: parse -> settings -> run the job -> print what happened."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from logbert_core.config import ConfigError, Settings, load_settings


class _DefaultToTrain(click.Group):
    """``logad-train --config ... --input ...`` runs ``train``; subcommands run by name."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        i = 0
        while i < len(args) and args[i] in ("-v", "--verbose"):  # the group's own flags
            i += 1
        if i < len(args) and args[i].startswith("-") and args[i] not in ("--help", "-h"):
            args = [*args[:i], "train", *args[i:]]
        return super().parse_args(ctx, args)


def _settings(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        click.echo(f"logad-train: configuration error\n{exc}", err=True)
        sys.exit(2)


@click.group(cls=_DefaultToTrain, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """Offline jobs: build a model bundle from historical logs, split data chronologically."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), required=True, help="TOML config of the log family.")
@click.option("--input", "inputs", type=click.Path(exists=True, dir_okay=False), multiple=True, required=True,
              help="Raw log file(s), oldest first. Repeat or list several after one --input.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV 'BlockId,Label': anomalous sessions are kept out of training, used only to evaluate.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Bundle directory to write.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.argument("more_inputs", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def train(config: str, inputs: tuple[str, ...], labels: str | None, out_dir: str, no_progress: bool,
          more_inputs: tuple[str, ...]) -> None:
    """Parse, train LogBERT on normal sessions, calibrate thresholds on held-out normals, write a bundle."""
    from training.train import train_bundle  # torch import only when training

    settings = _settings(config)
    report = train_bundle(settings, [*inputs, *more_inputs], out_dir, labels, progress=not no_progress)
    m = report.metrics
    click.echo(f"bundle {report.version} written to {report.out_dir}")
    click.echo(f"  data: {m['data']['lines']} lines, {m['data']['sessions']} sessions, "
               f"{m['data']['templates']} templates; split {m['data']['split']}")
    click.echo(f"  training: best epoch {m['training']['best_epoch']}, {m['training']['seconds']} s on "
               f"{m['training']['device']}; total {m['total_seconds']} s")
    click.echo(f"  thresholds: {json.dumps(m['thresholds'])}")
    ev = m["in_period_eval"]
    click.echo(f"  in-period eval (not a test): P {ev['precision']} R {ev['recall']} F1 {ev['f1']} "
               f"FPR {ev['fpr']}")


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), required=True)
@click.option("--input", "inputs", type=click.Path(exists=True, dir_okay=False), multiple=True, required=True)
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--test-fraction", type=click.FloatRange(0.01, 0.9), default=0.3, show_default=True,
              help="Share of sessions (the latest by first timestamp) held out as the test set.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
def split(config: str, inputs: tuple[str, ...], labels: str | None, test_fraction: float, out_dir: str) -> None:
    """Chronological split by session: earlier sessions -> train.log, later ones -> test.log (+ label CSVs).

    A line goes to every part that holds one of its sessions, in its original order.
    """
    from training.split import split_files

    settings = _settings(config)
    summary = split_files(settings, inputs, labels, test_fraction, Path(out_dir))
    click.echo(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

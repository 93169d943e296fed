"""``logad-train``: the offline jobs. A thin layer: parse -> settings -> run the job -> print what happened."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import click

from logbert_core import logs
from logbert_core.build import describe
from logbert_core.config import ConfigError, Settings, load_settings
from training.cli_outputs import check_bundle_dir, check_out_dir, record_run, run_params, runs_options

log = logging.getLogger("logad.train")


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``-v`` after the subcommand (``logad-train evaluate -v``): the same as before it."""
    if value:
        logs.lower_to_info()


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(describe("logad-train"))
        ctx.exit()


class _DefaultToTrain(click.Group):
    """``logad-train --config ... --input ...`` runs ``train``; subcommands run by name. Every subcommand also
    accepts ``-v``, so it works anywhere on the line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags = {o for p in self.params if isinstance(p, click.Option) and p.is_flag for o in p.opts}
        valued = {o for p in self.params if isinstance(p, click.Option) and not p.is_flag for o in p.opts}
        i = 0
        while i < len(args):  # skip the group's own options (-v, --log-format json, --log-level=INFO, ...)
            if args[i] in valued:
                i += 2
            elif args[i] in flags or args[i].split("=", 1)[0] in valued:
                i += 1
            else:
                break
        if i < len(args) and args[i].startswith("-") and args[i] not in ("--help", "-h"):
            args = [*args[:i], "train", *args[i:]]
        return super().parse_args(ctx, args)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any("--verbose" in p.opts for p in cmd.params):
            cmd.params.append(click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, callback=_verbose,
                                           help="Log progress details (as logad-train -v)."))
        super().add_command(cmd, name)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _settings(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        click.echo(f"logad-train: configuration error\n{exc}", err=True)
        sys.exit(2)


@click.group(cls=_DefaultToTrain, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details (INFO).")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="text", show_default=True,
              envvar="LOGAD_LOG_FORMAT", show_envvar=True, help="Own log lines as text, or one JSON object per line.")
@click.option("--log-level", default=None, envvar="LOGAD_LOG_LEVEL", show_envvar=True, metavar="LEVEL",
              help=f"{', '.join(logs.LEVELS)} (default WARNING; -v lowers it to INFO).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print logad's, torch's and python's versions and exit.")
def main(verbose: bool, log_format: str, log_level: str | None) -> None:
    """Offline jobs: build a model bundle from historical logs, split data chronologically."""
    try:
        logs.install(log_format, log_level, verbose, log)  # stderr: stdout carries the reports
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--log-level' / LOGAD_LOG_LEVEL") from exc
    # evaluation (average precision, PCA and isolation-forest baselines) and the report's plots need the train
    # extra; the detector's image leaves it out
    missing = [m for m in ("sklearn", "matplotlib") if not _installed(m)]
    if missing:
        raise click.ClickException(f"logad-train needs {', '.join(missing)}, which the detector's install leaves "
                                   "out: pip install 'logad[train]'")


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), required=True,
              help="TOML config of the log family.")
@click.option("--input", "inputs", type=click.Path(exists=True, dir_okay=False), multiple=True, required=True,
              help="Raw log file(s), oldest first. Repeat or list several after one --input.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV 'BlockId,Label': anomalous sessions are kept out of training, used only to evaluate.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, callback=check_bundle_dir,
              help="Bundle directory to write (new, empty, or a bundle to replace).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@runs_options
@click.argument("more_inputs", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def train(config: str, inputs: tuple[str, ...], labels: str | None, out_dir: str, no_progress: bool,
          more_inputs: tuple[str, ...], runs_file: str, mlflow: bool | None) -> None:
    """Parse, train LogBERT on normal sessions, calibrate thresholds on held-out normals, write a bundle."""
    from training.train import train_bundle  # torch import only when training

    settings = _settings(config)
    try:
        report = train_bundle(settings, [*inputs, *more_inputs], out_dir, labels, progress=not no_progress)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    m = report.metrics
    click.echo(f"bundle {report.version} written to {report.out_dir}")
    click.echo(f"  data: {m['data']['lines']} lines, {m['data']['sessions']} sessions, "
               f"{m['data']['templates']} templates; split {m['data']['split']}")
    click.echo(f"  training: best epoch {m['training']['best_epoch']}, {m['training']['seconds']} s on "
               f"{m['training']['device']}; total {m['total_seconds']} s")
    click.echo(f"  thresholds: {json.dumps({k: v for k, v in m['thresholds'].items() if k != 'promise'})}")
    cal = m["calibration"]
    click.echo(f"  calibration: FPR {cal['fpr']:.4f} (95 % bound {cal['fpr_upper']:.4f}, target {cal['target_fpr']}) "
               f"from {cal['sessions']} normal sessions; model rules: {cal['mode']}")
    ev = m["in_period_eval"]
    click.echo(f"  in-period anomalies caught (not a test): {ev['caught']} of {ev['anomalies']}"
               + (f" (recall {ev['recall']})" if ev["recall"] is not None else ""))
    for w in m["warnings"]:
        click.echo(f"  warning: {w}", err=True)
    data = {k: m["data"][k] for k in ("inputs", "sha256", "lines", "sessions", "anomalous_sessions", "labels",
                                      "split", "templates")}
    metrics = {"in_period_eval": {k: v for k, v in ev.items() if k != "flagged_by_reason"},
               "thresholds": {k: v for k, v in m["thresholds"].items() if k not in ("method", "promise")},
               "training": {k: m["training"][k] for k in ("best_epoch", "seconds")},
               "final_val_loss": min(h["val_loss"] for h in m["training"]["history"])}
    record_run("train", run_params(settings, config=config, labels=labels, out=out_dir), data, metrics,
               report.version, {"bundle": str(report.out_dir)}, runs_file, mlflow)


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), required=True)
@click.option("--input", "inputs", type=click.Path(exists=True, dir_okay=False), multiple=True, required=True)
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--test-fraction", type=click.FloatRange(0.01, 0.9), default=0.3, show_default=True,
              help="Share of sessions (the latest by first timestamp) held out as the test set.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, callback=check_out_dir)
def split(config: str, inputs: tuple[str, ...], labels: str | None, test_fraction: float, out_dir: str) -> None:
    """Chronological split by session: earlier sessions -> train.log, later ones -> test.log (+ label CSVs).

    A line goes to every part that holds one of its sessions, in its original order.
    """
    from training.split import split_files

    settings = _settings(config)
    try:
        summary = split_files(settings, inputs, labels, test_fraction, Path(out_dir))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(summary, indent=1))


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), required=True,
              help="TOML config of the log family.")
@click.option("--input", "inputs", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="Raw log file(s), oldest first (the product path). Never pass the final hold-out here.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV 'BlockId,Label' for --input; without it, inline labels (BGL) or none.")
@click.option("--test-fraction", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True,
              help="Latest share of sessions (by first timestamp) that forms the test-within-period split.")
@click.option("--sequences-train", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Pre-parsed normal training sessions, one per line (e.g. deeplog_hdfs_train).")
@click.option("--sequences-abnormal", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Pre-parsed anomalous test sessions, one per line (e.g. deeplog_hdfs_test_abnormal).")
@click.option("--sequences-normal", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV 'BlockId,Label,EventSequence'; its Normal rows are the normal test sessions.")
@click.option("--normal-ids", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labels CSV whose block ids restrict the normal test sessions of --sequences-normal.")
@click.option("--methods", default="all", show_default=True,
              help="Comma-separated: logbert, deeplog, loganomaly, pca, iforest, bert_ae, unseen_template, "
                   "unseen_set_exact, unseen_set_subset, unseen_count_vector, length, rare_key; or 'all' (those). "
                   "Also logbert_complete (raw lines only, not in 'all'): LogBERT with time gaps and parameters.")
@click.option("--baseline-epochs", type=click.IntRange(1), default=10, show_default=True,
              help="Epoch cap of the learned baselines: DeepLog and LogAnomaly LSTMs, the BERT-AE encoder (early "
                   "stopping on validation loss).")
@click.option("--live", is_flag=True,
              help="Raw logs: LogBERT judges the windows a live stream cuts at the log's own pace (a session closes "
                   "whenever it is quiet for session.idle_timeout_s and reopens with its next line), not those of "
                   "a fast replay.")
@click.option("--history", type=click.IntRange(3), default=None,
              help="Train on the first N normal sessions of the training part only: what a new deployment with a "
                   "small history would ship.")
@click.option("--title", default=None, help="Report title.")
@click.option("--goal-f1", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Test F1 the shipped decision is held to: the report says whether it is met, and if not, by how "
                   "much and where the errors come from.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, callback=check_out_dir,
              help="Report directory to write.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@runs_options
def evaluate(config: str, inputs: tuple[str, ...], labels: str | None, test_fraction: float,
             sequences_train: str | None, sequences_abnormal: str | None, sequences_normal: str | None,
             normal_ids: str | None, methods: str, baseline_epochs: int, live: bool, history: int | None,
             title: str | None,
             goal_f1: float | None, out_dir: str, no_progress: bool, runs_file: str, mlflow: bool | None) -> None:
    """LogBERT against the baselines on one split: results table (Markdown, JSON), plots, fingerprint, split.

    Raw logs (--input): sessions by the detector's own code, chronological fit / validation / calibration / test.
    Pre-parsed sessions (--sequences-*): the paper-comparable model-level protocol.
    """
    from training import protocols
    from training.report import write_report

    settings = _settings(config)
    chosen = list(protocols.METHODS) if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    seq = (sequences_train, sequences_abnormal, sequences_normal)
    if inputs and any(seq):
        raise click.UsageError("give either --input (raw logs) or the --sequences-* files, not both")
    if not inputs and not all(seq):
        raise click.UsageError("give --input, or all of --sequences-train, --sequences-abnormal, --sequences-normal")
    baseline = {"epochs": baseline_epochs}
    try:
        if inputs:
            ev = protocols.evaluate_raw(settings, inputs, labels, test_fraction, out_dir, chosen, not no_progress,
                                        baseline, live, history)
        else:
            assert sequences_train and sequences_abnormal and sequences_normal
            ev = protocols.evaluate_sequences(settings, sequences_train, sequences_abnormal, sequences_normal,
                                              normal_ids, chosen, not no_progress, baseline, history)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    options = {"config": config, "inputs": list(inputs), "labels": labels, "test_fraction": test_fraction,
               "sequences": list(seq), "normal_ids": normal_ids, "methods": chosen, "live": live, "history": history,
               "baseline_epochs": baseline_epochs, "goal_f1": goal_f1}
    params = {**run_params(settings, **options)}
    name = title or f"{settings.log.family}: {ev.data.protocol} protocol"
    doc = write_report(out_dir, ev.data, ev.results, title=name,
                 params={"target_fpr": settings.scoring.target_fpr, **params, **ev.extra}, notes=ev.notes,
                 goal_f1=goal_f1)
    counts = ev.data.split.counts(ev.data.labels)
    click.echo(f"report written to {out_dir} ({ev.data.protocol} protocol; split {counts})")
    for r in ev.results:
        t = r.test
        if ev.data.labelled:
            click.echo(f"  {r.name:20s} P {t['precision']:.4f} R {t['recall']:.4f} F1 {t['f1']:.4f} FPR {t['fpr']} "
                       f"AUC-PR {t['auc_pr']}  ({r.seconds} s)")
        else:
            click.echo(f"  {r.name:20s} flagged {t['fp']} of {t['fp'] + t['tn']} unlabelled sessions  ({r.seconds} s)")
    goal = doc["analysis"].get("goal")
    if goal:
        click.echo(f"goal F1 >= {goal['f1']:g}: " + ("met" if goal["met"] else
                   f"not met, short by {goal['shortfall']} ({goal['false_positives']} FP, {goal['false_negatives']} "
                   f"FN; the goal allows {goal['false_positives_allowed_at_full_recall']} FP at full recall)"))
    metrics = {r.name: {k: r.test[k] for k in ("precision", "recall", "f1", "fpr", "flag_rate", "auc_pr")}
               for r in ev.results}
    data = {"inputs": ev.data.data.get("inputs"), "split": ev.data.split.counts(ev.data.labels),
            "protocol": ev.data.protocol}
    record_run("evaluate", params, data, metrics, ev.extra.get("bundle_version"), {"report": out_dir}, runs_file,
               mlflow)


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), required=True,
              help="TOML config of the log family.")
@click.option("--input", "inputs", type=click.Path(exists=True, dir_okay=False), multiple=True, required=True,
              help="Raw log file(s), oldest first. Never pass the final hold-out here.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--test-fraction", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True)
@click.option("--grid", "grid_items", multiple=True,
              help="name=v1,v2 (repeatable): top_g, n_embd, mask_ratio, n_layer, lr, ... or section.field. "
                   "Default: top_g=3,5,8 n_embd=32,64 mask_ratio=0.15,0.3.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, callback=check_out_dir,
              help="Report directory to write.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@runs_options
def search(config: str, inputs: tuple[str, ...], labels: str | None, test_fraction: float,
           grid_items: tuple[str, ...], out_dir: str, no_progress: bool, runs_file: str, mlflow: bool | None) -> None:
    """Grid search for LogBERT: select on the validation split only, score the winner on the test split once."""
    from training.search import DEFAULT_GRID, checked_grid, parse_grid, write_search_report
    from training.search import search as run_search

    settings = _settings(config)
    try:
        grid = checked_grid(settings, parse_grid(grid_items) if grid_items else DEFAULT_GRID)
        result = run_search(settings, inputs, labels, test_fraction, grid, out_dir, progress=not no_progress)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    base = run_params(settings, config=config, inputs=list(inputs), labels=labels, test_fraction=test_fraction)
    doc = write_search_report(out_dir, result, grid, base)
    w = doc["winner"]
    click.echo(f"search report written to {out_dir}: {len(result.candidates)} candidates")
    click.echo(f"  winner {w['params']}: validation F1 {w['validation']['f1']}; test (once) P {w['test']['precision']} "
               f"R {w['test']['recall']} F1 {w['test']['f1']} FPR {w['test']['fpr']}")
    metrics = {"winner_validation": w["validation"], "winner_test": w["test"],
               "candidates": len(result.candidates)}
    record_run("search", {**base, "grid": grid, "winner": w["params"]},
               {"inputs": result.data.data.get("inputs"), "split": result.data.split.counts(result.data.labels)},
               metrics, w["bundle_version"], {"report": out_dir}, runs_file, mlflow)


@main.command()
@click.option("--shared", "shared", type=click.Path(exists=True, file_okay=False), default="../shared/data",
              show_default=True, help="The shared data folder (hdfs/, hdfs_sequences/, bgl/, hadoop_sequences/).")
@click.option("--only", default="", help="Comma-separated suites: hdfs_raw, hdfs_sequences, bgl_raw, bgl_same_period, "
                                         "bgl_other_days, hadoop_sequences (default: all).")
@click.option("--no-small", is_flag=True, help="Skip the small-history variants (first 50 normal sessions).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="reports/benchmark", show_default=True,
              callback=check_out_dir, help="Directory for benchmark.md, benchmark.json and each suite's bundle.")
def benchmark(shared: str, only: str, no_small: bool, out_dir: str) -> None:
    """Every labelled data set, full and small history: the shipped decision, LogBERT alone, the one-line rules.

    Each suite trains as logad-train does on its training part and scores its test part once; nothing is tuned on
    a test part. About 15-30 minutes on two CPU cores.
    """
    from training.benchmark import markdown, run_benchmark

    root = Path(__file__).resolve().parent.parent

    def load(config: str | None) -> Settings:
        return _settings(str(root / config) if config else None)

    names = [n.strip() for n in only.split(",") if n.strip()]
    try:
        results = run_benchmark(load, Path(shared), Path(out_dir), names, small=not no_small)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(markdown(results))
    click.echo(f"written to {out_dir}/benchmark.md and benchmark.json")


@main.command("parser-check")
@click.option("--loghub", "loghub", type=click.Path(exists=True, file_okay=False), default="../shared/data/loghub",
              show_default=True, help="Folder of Loghub systems (<System>/<System>_2k.log and its _templates.csv).")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Settings whose parser section is checked (default: the defaults a new log family gets).")
@click.option("--sim-th", "sim_th", default="", help="Comma-separated similarity thresholds to compare, with the "
                                                     "config's masks (default: the config's own).")
@click.option("--no-masks", is_flag=True, help="Compare without the config's masks as well.")
@click.option("--only", default="", help="Comma-separated system names (default: every folder).")
def parser_check(loghub: str, config: str | None, sim_th: str, no_masks: bool, only: str) -> None:
    """How well the parser groups lines, against Loghub's reference templates (grouping accuracy).

    Each line's content is taken from where its reference template matches, as a correct log.line_regex would
    give it; the figure is the share of lines grouped exactly as the reference groups them.
    """
    from dataclasses import replace

    from training.parsercheck import check, markdown, read_reference

    params = _settings(config).drain_params()
    try:
        grid = [float(x) for x in sim_th.split(",") if x.strip()] or [params.sim_th]
    except ValueError as exc:
        raise click.BadParameter(f"{sim_th!r}: expected numbers such as 0.4,0.7", param_hint="--sim-th") from exc
    if not all(0 < t <= 1 for t in grid):
        raise click.BadParameter(f"{sim_th!r}: similarity thresholds lie in (0, 1]", param_hint="--sim-th")
    named = [(f"sim_th {t:g}", replace(params, sim_th=t)) for t in grid]
    if no_masks:
        named += [(f"sim_th {t:g}, no masks", replace(params, sim_th=t, masking=())) for t in grid]
    wanted = {n.strip() for n in only.split(",") if n.strip()}
    folders = sorted(p for p in Path(loghub).iterdir() if p.is_dir() and (not wanted or p.name in wanted))
    if not folders:
        raise click.ClickException(f"{loghub}: no system folders{' named ' + only if wanted else ''}")
    try:
        rows = check((read_reference(f) for f in folders), named)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(markdown(rows, [n for n, _ in named]), nl=False)


if __name__ == "__main__":
    main()

"""``logad demo``: the whole system on this machine, on real HDFS logs the model never saw.

Starts redis-server and the tansu broker on free ports, starts detector processes (``logad run``) in one consumer
group, produces the held-out HDFS lines (raw or Fluent Bit JSON) into the input topic, prints anomaly events as they
arrive, waits until every input offset is committed and every session is closed and scored, stops the detectors
with SIGTERM, and scores the flagged sessions against the labels.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import redis

from logbert_core.config import load_settings
from logbert_core.ingest import Rejected
from logbert_core.labels import parse_labels
from streamer.embedded import start_broker, start_redis
from streamer.events import AnomalyEvent
from streamer.kafka_io import committed_offsets, end_offsets, ensure_topics, produce_lines
from streamer.render import render_event

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "hdfs"
DEFAULT_INPUT = REPO / "data" / "hdfs" / "holdout.log.gz"
DEFAULT_LABELS = REPO / "data" / "hdfs" / "holdout.labels.csv"
DEFAULT_CONFIG = REPO / "config" / "hdfs.toml"


@dataclass(frozen=True)
class DemoOptions:
    workers: int = 1
    partitions: int = 4
    fmt: str = "raw"
    model_dir: str | None = None
    input_file: str | None = None
    labels: str | None = None
    config: str | None = None
    quiet: bool = False
    events_out: str | None = None  # write every event received as JSON lines here
    idle_timeout_s: float = 3.0
    timeout_s: float = 600.0


def _read_lines(path: Path) -> list[bytes]:
    """The file's lines as a shipper sends them: their bytes, without line ends (``.gz`` decompressed)."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
            return [line.rstrip(b"\r\n") for line in fh]
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise click.ClickException(f"{path}: cannot read it ({exc})") from exc


def _read_labels(path: Path) -> dict[str, bool]:
    """The labels file, read as the trainer reads it (``logbert_core.labels``); a bad file is a message."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return parse_labels(fh, str(path))
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path}: not a text CSV file (bytes that are not UTF-8)") from exc
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc) if isinstance(exc, ValueError) else f"{path}: cannot read it "
                                   f"({exc.strerror or exc})") from exc


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    model_dir = Path(opts.model_dir or DEFAULT_MODEL)
    input_file = Path(opts.input_file or DEFAULT_INPUT)
    labels_file = Path(opts.labels) if opts.labels else (DEFAULT_LABELS if opts.input_file is None else None)
    config = Path(opts.config or DEFAULT_CONFIG)
    echo = click.echo
    labels: dict[str, bool] | None = None
    if labels_file is not None:
        labels = _read_labels(labels_file)  # before anything starts: a bad file is a message, not a lost run
    echo(f"logad demo: model {model_dir}, stream {input_file.name} ({opts.fmt}), {opts.workers} worker(s), "
         f"{opts.partitions} partitions")
    workdir = Path(tempfile.mkdtemp(prefix="logad-demo-"))
    rds = start_redis()
    broker = start_broker()
    procs: list[subprocess.Popen[bytes]] = []
    summary: dict[str, Any] = {}
    try:
        settings = load_settings(config)
        k = settings.kafka
        group = f"logad-demo-{os.getpid()}"
        ensure_topics(broker.url, {k.input_topic: opts.partitions, k.output_topic: 1, k.dlq: 1})
        env = dict(os.environ, LOGAD_KAFKA__BOOTSTRAP_SERVERS=broker.url, LOGAD_REDIS__URL=rds.url,
                   LOGAD_KAFKA__GROUP_ID=group, LOGAD_SESSION__IDLE_TIMEOUT_S=str(opts.idle_timeout_s),
                   LOGAD_KAFKA__SESSION_TIMEOUT_MS="6000", LOGAD_HTTP__PORT="0")
        for i in range(opts.workers):
            log_file = open(workdir / f"worker-{i}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "streamer.cli", "-v", "run", "--config", str(config),
                                           "--model", str(model_dir)], env=env, stdout=log_file,
                                          stderr=subprocess.STDOUT, cwd=REPO))
        lines = _read_lines(input_file)
        events: dict[str, AnomalyEvent] = {}
        n_events = [0]
        stop_tail = threading.Event()
        tail = threading.Thread(target=_tail, args=(broker.url, k.output_topic, events, n_events, stop_tail,
                                                    opts.quiet), daemon=True)
        tail.start()
        t0 = time.monotonic()
        sent = produce_lines(broker.url, k.input_topic, lines,
                             json_field=settings.log.json_fields[0] if opts.fmt == "json" else None)
        t_produced = time.monotonic() - t0
        echo(f"produced {sent} lines in {t_produced:.1f} s; waiting for the detector(s) to finish ...")
        r = redis.Redis.from_url(rds.url)
        t_committed = _wait_until_done(broker.url, group, k.input_topic, r, procs, t0, opts.timeout_s, workdir)
        t_done = time.monotonic() - t0
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
        time.sleep(1.0)
        stop_tail.set()
        tail.join(timeout=10)
        summary = _summarise(lines, events, n_events[0], labels, settings, sent, t_committed, t_done, codes)
        if opts.events_out:
            with open(opts.events_out, "w") as fh:
                for ev in events.values():
                    fh.write(ev.model_dump_json() + "\n")
        _print_summary(summary)
        if any(codes):
            summary["error"] = f"worker exit codes {codes}; logs in {workdir}"
            echo(summary["error"], err=True)
        return summary
    except Exception as exc:  # the demo reports and cleans up; the traceback goes to the user as well
        for i, _ in enumerate(procs):
            tail_text = (workdir / f"worker-{i}.log").read_text(errors="replace")[-3000:]
            echo(f"--- worker {i} log (tail) ---\n{tail_text}", err=True)
        raise click.ClickException(f"demo failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        broker.stop()
        rds.stop()


def _tail(bootstrap: str, topic: str, events: dict[str, AnomalyEvent], count: list[int], stop: threading.Event,
          quiet: bool) -> None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=200)
    parts = consumer.partitions_for_topic(topic) or {0}
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    try:
        while not stop.is_set():
            for recs in consumer.poll(timeout_ms=300).values():
                for rec in recs:
                    ev = AnomalyEvent.model_validate_json(rec.value)
                    count[0] += 1
                    if ev.event_id not in events and not quiet:
                        click.echo(render_event(rec.value) + "\n")
                    events[ev.event_id] = ev
    finally:
        consumer.close()


def _wait_until_done(bootstrap: str, group: str, topic: str, r: redis.Redis, procs: list[subprocess.Popen[bytes]],
                     t0: float, timeout_s: float, workdir: Path) -> float:
    """Block until all input is committed and no session is open or pending; returns seconds to full commit."""
    t_committed = None
    stable = 0
    while time.monotonic() - t0 < timeout_s:
        dead = [i for i, p in enumerate(procs) if p.poll() is not None]
        if dead:
            raise RuntimeError(f"worker(s) {dead} exited early; logs in {workdir}")
        ends = end_offsets(bootstrap, topic)
        done = committed_offsets(bootstrap, group, topic)
        all_committed = all((done.get(p) or 0) >= off for p, off in ends.items())
        if all_committed and t_committed is None:
            t_committed = time.monotonic() - t0
        open_sessions = sum(r.zcard(key) for key in r.scan_iter(match="*:idle"))
        pending = sum(r.zcard(key) for key in r.scan_iter(match="*:pending"))
        stable = stable + 1 if all_committed and open_sessions == 0 and pending == 0 else 0
        if stable >= 3:
            return t_committed or 0.0
        time.sleep(0.5)
    raise TimeoutError(f"the detector did not finish within {timeout_s:.0f} s; logs in {workdir}")


def _summarise(lines: list[bytes], events: dict[str, AnomalyEvent], n_events: int, labels: dict[str, bool] | None,
               settings: Any, sent: int, t_committed: float, t_done: float, codes: list[int]) -> dict[str, Any]:
    read = settings.line_reader().read  # the sessions the detector reads from these lines
    sessions: set[str] = set()
    for line in lines:
        rec = read(line)
        if not isinstance(rec, Rejected):
            sessions.update(rec.session_ids)
    flagged = {ev.session_id for ev in events.values()}
    out: dict[str, Any] = {
        "lines": sent, "sessions": len(sessions), "events": n_events, "distinct_event_ids": len(events),
        "flagged_sessions": len(flagged), "seconds_to_all_committed": round(t_committed, 1),
        "seconds_to_all_scored": round(t_done, 1),
        "lines_per_s_to_committed": round(sent / t_committed, 1) if t_committed else None,
        "worker_exit_codes": codes,
    }
    if labels is not None:
        truth = {s for s in sessions if labels.get(s, False)}
        tp = len(flagged & truth)
        fp = len(flagged - truth)
        fn = len(truth - flagged)
        p = tp / (tp + fp) if tp + fp else 0.0
        r_ = tp / (tp + fn) if tp + fn else 0.0
        out.update({"anomalous_sessions": len(truth), "tp": tp, "fp": fp, "fn": fn, "precision": round(p, 4),
                    "recall": round(r_, 4), "f1": round(2 * p * r_ / (p + r_), 4) if p + r_ else 0.0})
        for key, which in (("false_positives_by_rule", flagged - truth), ("true_positives_by_rule", flagged & truth)):
            fired: dict[str, set[str]] = {}
            for ev in events.values():
                if ev.session_id in which:
                    for rule in ev.explanation.reasons:
                        fired.setdefault(rule, set()).add(ev.session_id)
            out[key] = dict(sorted(((r, len(v)) for r, v in fired.items()), key=lambda kv: (-kv[1], kv[0])))
    return out


def _print_summary(s: dict[str, Any]) -> None:
    click.echo("=" * 78)
    click.echo(f"lines {s['lines']}, sessions {s['sessions']}, anomaly events {s['events']} "
               f"({s['distinct_event_ids']} distinct ids), flagged sessions {s['flagged_sessions']}")
    click.echo(f"all input committed after {s['seconds_to_all_committed']} s "
               f"({s['lines_per_s_to_committed']} lines/s end to end); all sessions scored after "
               f"{s['seconds_to_all_scored']} s")
    if "f1" in s:
        click.echo(f"block-level vs labels: TP {s['tp']} FP {s['fp']} FN {s['fn']} of {s['anomalous_sessions']} "
                   f"anomalous -> precision {s['precision']:.3f} recall {s['recall']:.3f} F1 {s['f1']:.3f}")
        for key, what in (("true_positives_by_rule", "anomalous"), ("false_positives_by_rule", "normal")):
            if s[key]:
                click.echo(f"  rules that flagged {what} sessions (sessions per rule): "
                           + ", ".join(f"{r} {n}" for r, n in s[key].items()))

"""``logad``: the detector's command line. A thin layer: parse -> settings -> construct -> run.

The ``model`` and ``alerts`` subgroups live in ``streamer.cli_model`` and ``streamer.cli_alerts``; what all commands
share (``-v`` anywhere, logging options, the settings loader) in ``streamer.cli_base``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from logbert_core import logs
from streamer.cli_alerts import alerts
from streamer.cli_base import Group, print_version, quiet_kafka, read_settings, setup_logging
from streamer.cli_model import model

log = logging.getLogger("logad")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr (INFO).")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="text", show_default=True,
              envvar="LOGAD_LOG_FORMAT", show_envvar=True, help="Own log lines as text, or one JSON object per line.")
@click.option("--log-level", default=None, envvar="LOGAD_LOG_LEVEL", show_envvar=True, metavar="LEVEL",
              help=f"{', '.join(logs.LEVELS)} (default WARNING; -v lowers it to INFO).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=print_version,
              help="Print logad's, torch's and python's versions and exit.")
def main(verbose: bool, log_format: str, log_level: str | None) -> None:
    """Streaming log anomaly detection: Kafka in, LogBERT on Redis session windows, anomaly events out."""
    setup_logging(verbose, log_format, log_level)


@main.command()
@click.option("--config", type=click.Path(dir_okay=False), required=True, help="TOML config of the log family.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), required=True, help="Model bundle directory.")
@click.option("--exit-when-idle", type=float, default=None, metavar="SECONDS",
              help="Stop once the input stayed empty this long and no session is open (batch/backfill use).")
def run(config: str, model_dir: str, exit_when_idle: float | None) -> None:
    """Consume the input topic, score sessions, publish anomaly events (a consumer-group member)."""
    from logbert_core.bundle import BundleError, load_bundle
    from streamer.errors import OutageError, StartupError
    from streamer.http import StatusServer
    from streamer.worker import Worker

    settings = read_settings(config)
    try:
        bundle = load_bundle(model_dir)
        worker = Worker(settings, bundle, bundle_dir=model_dir)
    except (BundleError, StartupError) as exc:
        click.echo(f"logad run: {exc}", err=True)
        sys.exit(2)
    worker.install_signal_handlers()
    from streamer import metrics as m

    m.READY.set_function(lambda: 1.0 if worker.readiness()[0] else 0.0)  # evaluated at each scrape, as /ready is
    server = None
    if settings.http.port:
        try:
            server = StatusServer(settings.http.host, settings.http.port, worker.readiness).start()
        except OSError as exc:
            click.echo(f"logad run: cannot listen on {settings.http.host}:{settings.http.port} ({exc}); "
                       "set LOGAD_HTTP__PORT (0 disables)", err=True)
            sys.exit(2)
    log.info("model %s on %s; consuming %s as group %s", bundle.version, worker.device,
             settings.kafka.input_topic, settings.kafka.group_id)
    try:
        stats = worker.run(max_idle_s=exit_when_idle)
    except OutageError as exc:
        click.echo(f"logad run: {exc}; exiting without committing unfinished work", err=True)
        sys.exit(3)
    except StartupError as exc:  # e.g. Kafka settings librdkafka refused when the consumer was created
        click.echo(f"logad run: {exc}", err=True)
        sys.exit(2)
    finally:
        if server is not None:
            server.stop()
    click.echo(json.dumps({"stopped": True, **stats}), err=True)


@main.command()
@click.option("--workers", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Detector processes in one consumer group.")
@click.option("--partitions", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["raw", "json"]), default="raw", show_default=True,
              help="Produce raw lines or Fluent Bit-style JSON records.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Bundle to use (default: the bundled HDFS model).")
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Log file to stream (default: the bundled held-out HDFS blocks).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--config", type=click.Path(dir_okay=False), default=None)
@click.option("--quiet", is_flag=True, help="Print only the summary, not each anomaly.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Write the summary as JSON here.")
@click.option("--events-out", type=click.Path(dir_okay=False), default=None,
              help="Write the anomaly events received as JSON lines here.")
def demo(workers: int, partitions: int, fmt: str, model_dir: str | None, input_file: str | None,
         labels: str | None, config: str | None, quiet: bool, json_out: str | None, events_out: str | None) -> None:
    """Embedded broker + Redis, stream held-out HDFS logs through the detector, print anomalies and P/R/F1."""
    from streamer.demo import DemoOptions, run_demo

    quiet_kafka()  # the demo checks what it produced, committed and scored itself; -v shows the client's own log
    summary = run_demo(DemoOptions(workers=workers, partitions=partitions, fmt=fmt, model_dir=model_dir,
                                   input_file=input_file, labels=labels, config=config, quiet=quiet,
                                   events_out=events_out))
    if json_out:
        Path(json_out).write_text(json.dumps(summary, indent=1) + "\n")
    if summary.get("error"):
        sys.exit(1)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", type=click.Path(dir_okay=False), default=None)
@click.option("--bootstrap-servers", default=None, help="Override kafka.bootstrap_servers.")
@click.option("--topic", default=None, help="Override kafka.input_topic.")
@click.option("--format", "fmt", type=click.Choice(["raw", "json"]), default="raw", show_default=True)
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Lines per second (0 = as fast as the broker takes them).")
def replay(file: str, config: str | None, bootstrap_servers: str | None, topic: str | None, fmt: str,
           rate: float) -> None:
    """Produce a log file (.gz too) into the input topic, one record per line (demos and backfills).

    Progress goes to stderr. --format json wraps each line as Fluent Bit does ({"log": line, "@timestamp": t})."""
    import time

    from streamer.kafka_clients import client_settings
    from streamer.kafka_io import KafkaIOError, KafkaSettingsError, produce_file

    s = read_settings(config)
    quiet_kafka()
    target = topic or s.kafka.input_topic
    t0 = time.monotonic()
    try:
        n = produce_file(bootstrap_servers or s.kafka.bootstrap_servers, target, file,
                         json_field=s.log.json_fields[0] if fmt == "json" else None, rate=rate, progress=True,
                         **{"bootstrap_timeout_ms": 15_000, **client_settings(s.kafka, "kafka-python")})
    except KafkaSettingsError as exc:
        click.echo(f"logad replay: {exc}", err=True)
        sys.exit(2)
    except KafkaIOError as exc:
        click.echo(f"logad replay: {exc}", err=True)
        sys.exit(1)
    took = time.monotonic() - t0
    click.echo(f"produced {n} lines to {target} in {took:.1f} s ({n / max(took, 1e-9):.0f} lines/s)")


@main.command()
@click.option("--config", type=click.Path(dir_okay=False), default=None)
@click.option("--bootstrap-servers", default=None, help="Override kafka.bootstrap_servers.")
@click.option("--topic", default=None, help="Override kafka.output_topic.")
@click.option("--from-beginning", is_flag=True, help="Start with the oldest event the topic keeps, not new ones.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Readable text, or each event as one line of JSON (for jq).")
@click.option("--max-events", type=click.IntRange(min=1), default=None, help="Exit after this many events.")
@click.option("--idle-exit", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Exit once no event arrived for this long.")
def tail(config: str | None, bootstrap_servers: str | None, topic: str | None, from_beginning: bool, fmt: str,
         max_events: int | None, idle_exit: float | None) -> None:
    """Follow the anomalies topic and print events readably (joins no consumer group, commits nothing)."""
    import time

    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    from streamer.kafka_clients import client_settings
    from streamer.kafka_io import KafkaSettingsError
    from streamer.render import render_event

    s = read_settings(config)
    quiet_kafka()
    bootstrap = bootstrap_servers or s.kafka.bootstrap_servers
    try:
        kw = client_settings(s.kafka, "kafka-python")
    except KafkaSettingsError as exc:
        click.echo(f"logad tail: {exc}", err=True)
        sys.exit(2)
    try:
        consumer = KafkaConsumer(topic or s.kafka.output_topic, **{
            "bootstrap_servers": bootstrap, "group_id": None,
            "auto_offset_reset": "earliest" if from_beginning else "latest", "enable_auto_commit": False,
            "allow_auto_create_topics": False, "bootstrap_timeout_ms": 10_000, **kw})
    except KafkaError as exc:
        click.echo(f"logad tail: cannot reach the broker at {bootstrap}: {exc}", err=True)
        sys.exit(1)
    shown = 0
    last = time.monotonic()
    try:
        while True:
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    click.echo(render_event(rec.value) if fmt == "text"
                               else rec.value.decode("utf-8", "replace"))
                    shown += 1
                    if max_events is not None and shown >= max_events:
                        return
            now = time.monotonic()
            if batch:
                last = now
            elif idle_exit is not None and now - last > idle_exit:
                return
    except KeyboardInterrupt:
        pass
    except KafkaError as exc:
        click.echo(f"logad tail: {exc}", err=True)
        sys.exit(1)
    finally:
        consumer.close()


@main.command()
@click.option("--config", type=click.Path(dir_okay=False), required=True, help="TOML config of the log family.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), required=True, help="Model bundle directory.")
@click.option("--host", default=None, help="Override serve.host (default 127.0.0.1: loopback only).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Override serve.port (0: any free port).")
def serve(config: str, model_dir: str, host: str | None, port: int | None) -> None:
    """HTTP API: POST /detect judges raw lines on demand; /health, /ready, /metrics; OpenAPI docs at /docs."""
    from logbert_core.bundle import BundleError, load_bundle
    from streamer.errors import StartupError

    try:
        from streamer.service import SessionDetector, is_loopback, load_token, serve_forever
    except ModuleNotFoundError as exc:  # the detector's image leaves the HTTP API's dependencies out
        if exc.name not in ("fastapi", "uvicorn", "starlette"):
            raise
        click.echo(f"logad serve: {exc.name} is not installed; the HTTP API needs the serve extra: "
                   "pip install 'logad[serve]'", err=True)
        sys.exit(2)

    s = read_settings(config)
    try:
        token = load_token(s.serve)
        detector = SessionDetector(s, load_bundle(model_dir))
    except (BundleError, StartupError) as exc:
        click.echo(f"logad serve: {exc}", err=True)
        sys.exit(2)
    bind = host or s.serve.host
    if token is None and not is_loopback(bind):
        click.echo(f"logad serve: warning: {bind} is not loopback and no serve.token is set, so whoever reaches the "
                   "port may call /detect; set LOGAD_SERVE__TOKEN or serve.token_file (docs/operations.md)", err=True)

    def bound(h: str, p: int) -> None:
        auth = "bearer token required" if token is not None else "no authentication"
        click.echo(f"logad serve: model {detector.bundle.version} on {detector.device}, listening on "
                   f"http://{h}:{p} (API docs at /docs; {auth})", err=True)

    serve_forever(detector, host, port, on_bound=bound, token=token)


@main.command()
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="TOML config (default: built-in defaults and LOGAD_* environment variables).")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Also check that this bundle loads and agrees with the config.")
@click.option("--timeout", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="Seconds to wait for each service.")
@click.option("--create-topics", is_flag=True,
              help="Create missing topics (input 4 partitions, output and dead-letter 1; replication 1).")
def doctor(config: str | None, model_dir: str | None, timeout: float, create_topics: bool) -> None:
    """Check the broker, topics, Redis and the model bundle; say what is wrong and how to fix it.

    Exits 0 when everything needed by 'logad run' is in place, 1 otherwise."""
    from streamer.doctor import doctor as run_doctor

    s = read_settings(config)
    quiet_kafka()
    click.echo(f"logad doctor: config {config or '(defaults + environment)'}"
               + (f", model {model_dir}" if model_dir else ""))
    ok, report = run_doctor(s, model_dir, timeout_s=timeout, create_topics=create_topics)
    click.echo(report)
    sys.exit(0 if ok else 1)


@main.command()
def schema() -> None:
    """Print the JSON Schema of the anomaly event (committed as schemas/anomaly-event.schema.json)."""
    from streamer.schema import render_schema

    click.echo(render_schema(), nl=False)


main.add_command(model)
main.add_command(alerts)


if __name__ == "__main__":
    main()

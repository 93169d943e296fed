"""``logad alerts``: anomaly events to alerting systems. ``forward`` builds a ``streamer.alerts.Forwarder`` from the
options and runs it (signals, status server, exit codes)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from streamer.cli_base import Group, read_settings

log = logging.getLogger("logad")


@click.group(cls=Group)
def alerts() -> None:
    """Anomaly events to alerting systems."""


@alerts.command("forward")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="TOML config: broker, output topic and SASL/SSL settings (LOGAD_KAFKA__* override it).")
@click.option("--brokers", "--bootstrap-servers", "brokers", default=None, help="Override kafka.bootstrap_servers.")
@click.option("--topic", default=None, help="Override kafka.output_topic (the anomalies topic).")
@click.option("--group", default="logad-alerts", show_default=True, help="Consumer group of the forwarders.")
@click.option("--alertmanager", "alertmanager_url", envvar="LOGAD_ALERTMANAGER_URL", required=True,
              help="Alertmanager base URL, e.g. http://alertmanager:9093 (env LOGAD_ALERTMANAGER_URL); "
                   "basic auth as https://user:pass@host.")
@click.option("--resolve-after", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              metavar="SECONDS", help="An alert resolves this long after its last window was posted.")
@click.option("--generator-url", default="", help="Link shown with each alert (e.g. a dashboard).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds per POST.")
@click.option("--start-at", type=click.Choice(["earliest", "latest"]), default="earliest", show_default=True,
              help="Where a new consumer group starts (a group that committed resumes where it stopped).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="/metrics, /health, /ready address.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8081, show_default=True,
              help="0 disables the HTTP server.")
@click.option("--max-events", type=click.IntRange(min=1), default=None, help="Exit after forwarding this many.")
@click.option("--idle-exit", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Exit once the topic stayed empty this long (backfills, tests).")
def alerts_forward(config: str | None, brokers: str | None, topic: str | None, group: str, alertmanager_url: str,
                   resolve_after: float, generator_url: str, timeout: float, start_at: str, metrics_host: str,
                   metrics_port: int, max_events: int | None, idle_exit: float | None) -> None:
    """Post anomaly events to Alertmanager, one alert per session; commit only what was delivered."""
    import signal
    import threading
    from datetime import timedelta

    from streamer.alertmanager import Alertmanager, AlertsError
    from streamer.alerts import Forwarder, make_kafka_consumer
    from streamer.errors import StartupError
    from streamer.http import StatusServer
    from streamer.kafka_clients import client_settings

    s = read_settings(config)
    logging.getLogger("kafka").setLevel(logging.WARNING)  # -v shows the forwarder's own progress, not the client's
    try:
        sink = Alertmanager(alertmanager_url, timeout_s=timeout)
    except AlertsError as exc:
        click.echo(f"logad alerts forward: {exc}", err=True)
        sys.exit(2)
    bootstrap = brokers or s.kafka.bootstrap_servers
    out_topic = topic or s.kafka.output_topic
    try:
        consumer = make_kafka_consumer(bootstrap, out_topic, group, start_at=start_at,
                                       session_timeout_ms=s.kafka.session_timeout_ms,
                                       client_kwargs=client_settings(s.kafka, "kafka-python"))
    except StartupError as exc:  # settings kafka-python cannot honour
        click.echo(f"logad alerts forward: {exc}", err=True)
        sys.exit(2)
    except AlertsError as exc:
        click.echo(f"logad alerts forward: {exc}", err=True)
        sys.exit(1)
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the batch in hand, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    fwd = Forwarder(consumer, sink, resolve_after=timedelta(seconds=resolve_after), generator_url=generator_url,
                    stop_event=stop)
    server = None
    if metrics_port:
        try:
            server = StatusServer(metrics_host, metrics_port, fwd.readiness).start()
        except OSError as exc:
            click.echo(f"logad alerts forward: cannot listen on {metrics_host}:{metrics_port} ({exc}); "
                       "use --metrics-port (0 disables)", err=True)
            consumer.close(autocommit=False)
            sys.exit(2)
    log.info("forwarding %s on %s (group %s) to %s", out_topic, bootstrap, group, sink.url)
    try:
        stats = fwd.run(max_events=max_events, idle_exit_s=idle_exit)
    finally:
        consumer.close(autocommit=False)
        if server is not None:
            server.stop()
    click.echo(json.dumps({"stopped": True, **stats.__dict__}), err=True)

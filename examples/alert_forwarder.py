"""Superseded by ``logad alerts forward`` (streamer/alerts.py): one alert per session instead of one per window,
``endsAt`` from the time of posting, additive event fields accepted, metrics, a compose service. This script is
kept only while tests/streamer/test_operations.py still runs it; use the command.

Forward logad anomaly events to an Alertmanager-compatible webhook (``POST /api/v2/alerts``).

A consumer-group member of the anomalies topic: each polled batch becomes one POST of a JSON list of alerts, and the
batch's offsets are committed only after the webhook answered 2xx. A failed POST is retried with back-off and
nothing is committed meanwhile, so every event reaches the webhook at least once; a restart re-sends at most the
batch in flight. Alertmanager deduplicates by label set, and each window of a session is its own alert (the
``event_id`` label), grouped by ``session_id`` in Alertmanager's route if wanted.

    python examples/alert_forwarder.py --config config/hdfs.toml --url http://alertmanager:9093/api/v2/alerts

Security settings (SASL/SSL) come from the logad config and LOGAD_KAFKA__* variables, as for the detector.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from logbert_core.config import load_settings
from streamer.events import AnomalyEvent

log = logging.getLogger("alert_forwarder")


def to_alert(event: AnomalyEvent, resolve_after: timedelta, generator_url: str = "") -> dict[str, Any]:
    """One Alertmanager alert (API v2 ``postableAlert``) for one anomaly event."""
    ex = event.explanation
    alert: dict[str, Any] = {
        "labels": {"alertname": "LogAnomaly", "service": "logad", "severity": "warning",
                   "session_id": event.session_id, "event_id": event.event_id, "model_version": event.model_version},
        "annotations": {
            "summary": f"anomalous log session {event.session_id} (score {event.score:.3f}, threshold "
                       f"{event.threshold:.3f})",
            "description": ex.summary,
            "reasons": ", ".join(ex.reasons),
            "window": f"{event.window.line_count} lines {event.window.first_ts.isoformat()} .. "
                      f"{event.window.last_ts.isoformat()}",
        },
        "startsAt": event.detected_at.isoformat(),
        # an anomaly is a finding, not a state: let it resolve by itself unless re-sent
        "endsAt": (event.detected_at + resolve_after).isoformat(),
    }
    if generator_url:
        alert["generatorURL"] = generator_url
    return alert


def post(url: str, alerts: list[dict[str, Any]], timeout_s: float) -> None:
    req = urllib.request.Request(url, data=json.dumps(alerts).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # raises HTTPError on 4xx/5xx
        resp.read()


def post_with_retry(url: str, alerts: list[dict[str, Any]], timeout_s: float, max_wait_s: float = 30.0) -> None:
    """POST until it succeeds: 5xx, timeouts and refused connections are retried; a 4xx is a bug and is raised."""
    attempt = 0
    while True:
        try:
            post(url, alerts, timeout_s)
            return
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code != 429:
                raise
            err: Exception = exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            err = exc
        delay = random.uniform(0, min(max_wait_s, 0.2 * 2 ** attempt))
        attempt += 1
        log.warning("webhook POST failed (%s); retrying in %.1f s, nothing committed meanwhile", err, delay)
        time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="logad TOML config (topics, broker, security settings)")
    ap.add_argument("--bootstrap-servers", default=None, help="override kafka.bootstrap_servers")
    ap.add_argument("--topic", default=None, help="override kafka.output_topic")
    ap.add_argument("--group", default="logad-alert-forwarder", help="consumer group (default: %(default)s)")
    ap.add_argument("--url", default="http://127.0.0.1:9093/api/v2/alerts", help="webhook (default: %(default)s)")
    ap.add_argument("--resolve-after", type=float, default=3600, help="seconds until an alert resolves by itself")
    ap.add_argument("--generator-url", default="", help="link shown with each alert (e.g. a dashboard)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per POST")
    ap.add_argument("--max-events", type=int, default=None, help="exit after forwarding this many (tests, backfills)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)

    s = load_settings(args.config)
    topic = args.topic or s.kafka.output_topic
    try:
        consumer = KafkaConsumer(topic, bootstrap_servers=args.bootstrap_servers or s.kafka.bootstrap_servers,
                                 group_id=args.group, enable_auto_commit=False, auto_offset_reset="earliest",
                                 max_poll_records=200, session_timeout_ms=s.kafka.session_timeout_ms,
                                 heartbeat_interval_ms=max(100, s.kafka.session_timeout_ms // 3),
                                 **s.kafka.client_kwargs())
    except KafkaError as exc:
        print(f"alert_forwarder: cannot reach the broker: {exc}", file=sys.stderr)
        return 1
    forwarded = 0
    try:
        while args.max_events is None or forwarded < args.max_events:
            batch = consumer.poll(timeout_ms=1000)
            alerts = []
            for records in batch.values():
                for rec in records:
                    try:
                        event = AnomalyEvent.model_validate_json(rec.value)
                    except ValueError as exc:  # not an event of this schema: log and skip, never block the stream
                        log.warning("skipping unreadable record %s[%d]@%d: %s", rec.topic, rec.partition,
                                    rec.offset, str(exc)[:200])
                        continue
                    alerts.append(to_alert(event, timedelta(seconds=args.resolve_after), args.generator_url))
            if alerts:
                post_with_retry(args.url, alerts, args.timeout)
                forwarded += len(alerts)
                log.info("forwarded %d alert(s)", len(alerts))
            if batch:
                consumer.commit()  # only after the webhook has them
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close(autocommit=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

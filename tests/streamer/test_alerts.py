"""``logad alerts forward`` without a broker: a fake consumer, and a fake Alertmanager on a stdlib HTTP server.

What is held: one alert per session (not per window), severity from the event, ``endsAt`` from the time of posting,
nothing committed before Alertmanager took the batch (retried with back-off), a stop during back-off commits
nothing, records that are not events are logged and counted without blocking, an alert Alertmanager refuses is
isolated, and events with fields this forwarder does not know are forwarded.
"""

from __future__ import annotations

import json
import random
import threading
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from streamer.alert_payload import INVALID_REASONS, EventView, to_alerts
from streamer.alertmanager import Alertmanager, AlertsError, alerts_url
from streamer.alerts import Backoff, Forwarder
from streamer.events import AnomalyEvent

Record = namedtuple("Record", "topic partition offset value")
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def event(session: str, n: int, *, detected: str = "2020-05-01T10:00:00+00:00", **extra: Any) -> bytes:
    """An event as the detector publishes it (schema version 1), plus ``extra`` fields."""
    body = {"schema_version": 1, "event_id": f"{session}-{n}", "session_id": session, "score": 0.5, "threshold": 0.2,
            "distance": 1.0, "distance_threshold": 9.0, "model_version": "hdfs-test", "detected_at": detected,
            "window": {"first_ts": "2020-05-01T09:00:00+00:00", "last_ts": "2020-05-01T09:59:00+00:00",
                       "line_count": 12, "start_index": n * 8, "cause": "full"},
            "explanation": {"summary": f"window {n} of {session}", "reasons": ["unseen_template"],
                            "unexpected_positions": [3], "templates": []}}
    body.update(extra)
    return json.dumps(body).encode()


class FakeConsumer:
    def __init__(self, *batches: list[Record]) -> None:
        self.batches = list(batches)
        self.commits: list[dict[tuple[str, int], int]] = []
        self.closed = False

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Record]]:
        if not self.batches:
            return {}
        batch = self.batches.pop(0)
        out: dict[Any, list[Record]] = {}
        for rec in batch:
            out.setdefault((rec.topic, rec.partition), []).append(rec)
        return out

    def commit(self, offsets: Any = None) -> None:
        raise AssertionError("the forwarder commits through commit_offsets in these tests")

    def assignment(self) -> set[Any]:
        return {("logs.anomalies", 0)}

    def close(self, autocommit: bool = True) -> None:
        self.closed = True


class FakeAlertmanager:
    """``POST /api/v2/alerts``: answers the next code of ``codes`` (then 200), or 400 to a list holding an alert of
    a session in ``refuse``. Records every request with what the consumer had committed at that moment."""

    def __init__(self, codes: list[int] | None = None, refuse: set[str] | None = None,
                 consumer: FakeConsumer | None = None) -> None:
        self.codes = list(codes or [])
        self.refuse = refuse or set()
        self.consumer = consumer
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = outer.codes.pop(0) if outer.codes else 200
                if any(a["labels"]["session_id"] in outer.refuse for a in body):
                    code = 400
                outer.requests.append({"path": self.path, "alerts": body, "code": code,
                                       "auth": self.headers.get("Authorization"),
                                       "committed": len(outer.consumer.commits) if outer.consumer else None})
                payload = b'{"error": "refused"}' if code >= 400 else b""
                self.send_response(code)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict[str, Any]]:
        return [a for r in self.requests if r["code"] < 300 for a in r["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def am_factory():
    made: list[FakeAlertmanager] = []

    def make(**kw: Any) -> FakeAlertmanager:
        made.append(FakeAlertmanager(**kw))
        return made[-1]

    yield make
    for am in made:
        am.close()


def forwarder(consumer: FakeConsumer, url: str, **kw: Any) -> Forwarder:
    return Forwarder(consumer, Alertmanager(url, timeout_s=5), resolve_after=HOUR, clock=lambda: NOW,
                     backoff=Backoff(base_s=0.01, max_s=0.05), rng=random.Random(0), poll_timeout_ms=10,
                     commit_offsets=consumer.commits.append, **kw)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def recs(*values: bytes, partition: int = 0, start: int = 0) -> list[Record]:
    return [Record("logs.anomalies", partition, start + i, v) for i, v in enumerate(values)]


# -- events -> alerts ----------------------------------------------------------------------------------------------
def test_one_alert_per_session_with_severity_and_ends_at_from_the_time_of_posting():
    evs = [EventView.model_validate_json(v) for v in (
        event("blk_1", 0, detected="2020-05-01T10:00:00+00:00"),
        event("blk_1", 1, detected="2020-05-01T10:05:00+00:00", severity="critical"),
        event("blk_2", 0))]
    alerts = to_alerts(evs, now=NOW, resolve_after=HOUR, generator_url="http://grafana/d/logad")
    assert len(alerts) == 2
    by_session = {a["labels"]["session_id"]: a for a in alerts}
    a1, a2 = by_session["blk_1"], by_session["blk_2"]
    assert a1["labels"] == {"alertname": "LogAnomaly", "service": "logad", "session_id": "blk_1",
                            "severity": "critical"}  # no event id: Alertmanager's fingerprint is the session
    assert a2["labels"]["severity"] == "warning"  # no severity in the event: the default
    # a backlog from 2020 posted now still fires for an hour: endsAt counts from posting, startsAt is detection
    assert a1["endsAt"] == a2["endsAt"] == "2030-01-01T13:00:00Z"
    assert a1["startsAt"] == "2020-05-01T10:00:00Z"
    assert a1["annotations"]["description"] == "window 1 of blk_1"  # the latest window explains
    assert a1["annotations"]["event_id"] == "blk_1-1" and "2 anomalous windows" in a1["annotations"]["windows"]
    assert a1["annotations"]["window"].startswith("12 lines 2020-05-01T09:00:00Z")
    assert a1["generatorURL"] == "http://grafana/d/logad"


def test_a_future_detection_time_is_brought_back_to_now():
    ev = EventView.model_validate_json(event("blk_1", 0, detected="2031-01-01T00:00:00Z"))
    (alert,) = to_alerts([ev], now=NOW, resolve_after=HOUR)
    assert alert["startsAt"] == "2030-01-01T12:00:00Z" < alert["endsAt"]


def test_a_newer_event_with_fields_this_forwarder_does_not_know_is_forwarded():
    raw = event("blk_9", 0, severity="Critical", log_family="hdfs", host="dn-7", labels={"team": "storage"},
                cloudevents={"specversion": "1.0"}, input={"topic": "logs.raw", "partition": 3, "offsets": [1, 9]})
    (alert,) = to_alerts([EventView.model_validate_json(raw)], now=NOW, resolve_after=HOUR)
    assert alert["labels"] == {"alertname": "LogAnomaly", "service": "logad", "session_id": "blk_9",
                               "severity": "critical", "log_family": "hdfs", "host": "dn-7", "team": "storage"}


def test_an_event_label_cannot_change_which_alert_it_is():
    raw = event("blk_9", 0, labels={"session_id": "other", "alertname": "Else", "severity": "info"})
    (alert,) = to_alerts([EventView.model_validate_json(raw)], now=NOW, resolve_after=HOUR)
    assert alert["labels"]["session_id"] == "blk_9" and alert["labels"]["alertname"] == "LogAnomaly"
    assert alert["labels"]["severity"] == "warning"


def test_the_forwarder_requires_only_fields_every_event_has():
    required_by_us = {name for name, f in EventView.model_fields.items() if f.is_required()}
    published = AnomalyEvent.model_json_schema()
    assert required_by_us <= set(published["required"]), required_by_us - set(published["required"])


def test_alertmanager_url_forms():
    assert alerts_url("http://alertmanager:9093") == "http://alertmanager:9093/api/v2/alerts"
    assert alerts_url("http://am:9093/prefix/") == "http://am:9093/prefix/api/v2/alerts"
    assert alerts_url("https://am/api/v2/alerts") == "https://am/api/v2/alerts"
    with pytest.raises(AlertsError, match="http"):
        alerts_url("alertmanager:9093")
    am = Alertmanager("https://ops:s3cret@am.example:9093")
    assert am.url == "https://am.example:9093/api/v2/alerts" and "s3cret" not in repr(am)


# -- delivery and commits ------------------------------------------------------------------------------------------
def test_delivers_then_commits_one_batch(am_factory):
    consumer = FakeConsumer(recs(event("blk_1", 0), event("blk_1", 1), event("blk_2", 0)),
                            recs(event("blk_3", 0), partition=1, start=40))
    am = am_factory(consumer=consumer)
    stats = forwarder(consumer, am.url).run(max_events=4)
    assert [r["path"] for r in am.requests] == ["/api/v2/alerts"] * 2
    assert sorted(a["labels"]["session_id"] for a in am.requests[0]["alerts"]) == ["blk_1", "blk_2"]
    assert consumer.commits == [{("logs.anomalies", 0): 3}, {("logs.anomalies", 1): 41}]
    assert (stats.events, stats.alerts, stats.invalid) == (4, 3, 0)


def test_nothing_is_committed_until_alertmanager_takes_the_batch(am_factory, caplog):
    consumer = FakeConsumer(recs(event("blk_1", 0), event("blk_2", 0)))
    am = am_factory(codes=[503, 500, 429], consumer=consumer)
    errors = metric("logad_alerts_post_errors_total")
    fwd = forwarder(consumer, am.url)
    fwd.run(max_events=2)
    assert [r["code"] for r in am.requests] == [503, 500, 429, 200]
    assert [r["committed"] for r in am.requests] == [0, 0, 0, 0]  # no commit before the 2xx
    assert consumer.commits == [{("logs.anomalies", 0): 2}]
    assert metric("logad_alerts_post_errors_total") - errors == 3
    assert "nothing committed meanwhile" in caplog.text
    assert metric("logad_alerts_undelivered_since_timestamp_seconds") == 0


def test_an_unreachable_alertmanager_is_retried_and_a_stop_commits_nothing(am_factory):
    consumer = FakeConsumer(recs(event("blk_1", 0)))
    stop = threading.Event()
    fwd = forwarder(consumer, "http://127.0.0.1:9", stop_event=stop)  # port 9 (discard): connection refused
    seen: list[bool] = []
    timer = threading.Timer(0.5, lambda: (seen.append(fwd.readiness()[0]), stop.set()))
    timer.start()
    stats = fwd.run()
    timer.join()
    assert consumer.commits == [] and stats.events == 0 and stats.alerts == 0
    assert seen == [False]  # not ready while retrying


def test_records_that_are_not_events_are_logged_counted_and_committed(am_factory, caplog):
    consumer = FakeConsumer(recs(b"not json", b'{"event_id": "x"}', b"[1, 2]", event("blk_1", 0), start=7))
    am = am_factory(consumer=consumer)
    before = {r: metric("logad_alerts_invalid_records_total", reason=r) for r in INVALID_REASONS}
    stats = forwarder(consumer, am.url).run(max_events=1)
    assert [a["labels"]["session_id"] for a in am.delivered()] == ["blk_1"]
    assert consumer.commits == [{("logs.anomalies", 0): 11}]
    assert stats.invalid == 3
    assert metric("logad_alerts_invalid_records_total", reason="not_json") - before["not_json"] == 1
    assert metric("logad_alerts_invalid_records_total", reason="not_an_event") - before["not_an_event"] == 2
    assert "logs.anomalies[0]@7" in caplog.text and "logs.anomalies[0]@8" in caplog.text


def test_a_batch_of_only_invalid_records_is_committed_without_a_post(am_factory):
    consumer = FakeConsumer(recs(b"", b"{}"))
    am = am_factory(consumer=consumer)
    fwd = forwarder(consumer, am.url)
    fwd.handle([r for rs in consumer.poll().values() for r in rs])
    assert am.requests == [] and consumer.commits == [{("logs.anomalies", 0): 2}]


def test_an_alert_alertmanager_refuses_is_isolated_and_the_rest_delivered(am_factory, caplog):
    consumer = FakeConsumer(recs(event("blk_ok", 0), event("blk_bad", 0), event("blk_ok2", 0)))
    am = am_factory(refuse={"blk_bad"}, consumer=consumer)
    rejected = metric("logad_alerts_rejected_total")
    stats = forwarder(consumer, am.url).run(max_events=3)
    assert sorted(a["labels"]["session_id"] for a in am.delivered()) == ["blk_ok", "blk_ok2"]
    assert metric("logad_alerts_rejected_total") - rejected == 1 and stats.rejected == 1
    assert "blk_bad" in caplog.text and "logs.anomalies[0]@1" in caplog.text
    assert consumer.commits == [{("logs.anomalies", 0): 3}]


def test_a_failed_commit_after_delivery_is_counted_not_fatal(am_factory):
    consumer = FakeConsumer(recs(event("blk_1", 0)), recs(event("blk_2", 0), start=1))
    am = am_factory(consumer=consumer)
    calls: list[Any] = []

    def commit(offsets: Any) -> None:
        calls.append(offsets)
        if len(calls) == 1:
            raise RuntimeError("CommitFailedError: the group has rebalanced")

    before = metric("logad_alerts_commit_errors_total")
    fwd = Forwarder(consumer, Alertmanager(am.url), clock=lambda: NOW, poll_timeout_ms=10, commit_offsets=commit)
    stats = fwd.run(max_events=2)
    assert stats.batches_committed == 1 and len(calls) == 2
    assert metric("logad_alerts_commit_errors_total") - before == 1


def test_basic_auth_from_the_url(am_factory):
    consumer = FakeConsumer(recs(event("blk_1", 0)))
    am = am_factory(consumer=consumer)
    url = am.url.replace("http://", "http://ops:s%40cret@")
    forwarder(consumer, url).run(max_events=1)
    import base64

    assert am.requests[0]["auth"] == "Basic " + base64.b64encode(b"ops:s@cret").decode()


def test_the_command_is_registered():
    from streamer.cli import main

    res = CliRunner().invoke(main, ["alerts", "forward", "--help"])
    assert res.exit_code == 0 and "--alertmanager" in res.output and "--brokers" in res.output
    res = CliRunner().invoke(main, ["alerts", "forward", "--alertmanager", "alertmanager:9093"])
    assert res.exit_code == 2 and "http(s) URL" in res.output

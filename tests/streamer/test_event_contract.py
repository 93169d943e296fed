"""The anomaly event as a contract that can evolve: an older consumer reads a newer event, the producer emits only
what it declares, severity and input coordinates are derived deterministically, and CloudEvents framing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest
from e2e_harness import make_topics, run_until_done, settings_for

from logbert_core.bundle import load_bundle
from logbert_core.config import ConfigError, load_settings
from logbert_core.judge import DISTANCE, KEY_MISSES, PREMATURE_END, RARE_TEMPLATE, UNSEEN_SET, UNSEEN_TEMPLATE, Verdict
from logbert_core.scoring import Candidate, Miss, WindowScore
from logbert_core.vocab import UNK
from logbert_core.windows import member
from streamer.alert_payload import EventView, read_event, to_alerts
from streamer.events import (
    CE_STRUCTURED,
    CE_TYPE,
    SCHEMA_ID,
    STORM_SESSION,
    AnomalyEvent,
    EventContext,
    build_event,
    build_storm_event,
    frame_event,
    input_coordinates,
    severity_of,
    unwrap_event,
)
from streamer.kafka_io import produce_lines, read_all
from streamer.render import render_event
from streamer.schema import event_schema, producer_schema
from streamer.worker import Worker

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "schemas" / "anomaly-event.schema.json"
BUNDLE = REPO / "models" / "hdfs"
CONFIG = REPO / "config" / "hdfs.toml"
CTX = EventContext(log_family="hdfs", host="dn-7", labels=(("env", "prod"),), input_topic="logs.raw")


@pytest.fixture(scope="module")
def vocab():
    return load_bundle(BUNDLE).vocab


def an_event(vocab, reasons=(UNSEEN_TEMPLATE, UNSEEN_SET, KEY_MISSES), origins=("0:10", "1:7", "0:12")) -> AnomalyEvent:
    members = (member(4, "a"), member(UNK, "weird"), member(5, "b"))
    score = WindowScore(3, 2, 2 / 3, 9.0, (Miss(2, 5, (Candidate(8, 0.9),)),))
    return build_event(event_id="e" * 40, session_id="blk_1", members=members, lo=0, cause="idle", first_ts=1.0,
                       last_ts=3.0, cut_ms=5_000, verdict=Verdict(True, tuple(reasons), score), vocab=vocab,
                       unseen_text={}, miss_threshold=0.1, distance_threshold=5.0, model_version="hdfs-x",
                       context=CTX, origins=origins)


def newer(raw: str) -> dict:
    """The event as a later detector version might publish it: fields added at the top and inside objects."""
    doc = json.loads(raw)
    doc["runbook_url"] = "https://runbooks.example/logad"
    doc["trace"] = {"span_id": "00f067aa0ba902b7", "sampled": True}
    doc["window"]["median_gap_s"] = 0.4
    doc["explanation"]["templates"][0]["line_number"] = 12
    doc["input"]["ranges"][0]["bytes"] = 4096
    return doc


def test_an_older_consumer_reads_a_newer_event(vocab):
    """The committed schema, the model and the forwarder of this version all accept additive fields."""
    doc = newer(an_event(vocab).model_dump_json())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(doc)
    ev = AnomalyEvent.model_validate_json(json.dumps(doc))
    assert ev.session_id == "blk_1" and ev.severity == "critical" and ev.window.line_count == 3
    # a relay that re-serialises the event keeps what it did not know
    assert json.loads(ev.model_dump_json())["trace"] == doc["trace"]
    view = read_event(json.dumps(doc).encode())
    assert isinstance(view, EventView) and view.severity == "critical" and view.labels == {"env": "prod"}
    (alert,) = to_alerts([view], now=datetime(2026, 1, 1, tzinfo=timezone.utc), resolve_after=timedelta(hours=1))
    assert alert["labels"] == {"alertname": "LogAnomaly", "service": "logad", "session_id": "blk_1",
                               "severity": "critical", "log_family": "hdfs", "host": "dn-7", "env": "prod"}
    assert render_event(json.dumps(doc)).startswith("ANOMALY blk_1")


def test_no_object_of_the_schema_is_closed_and_the_producer_emits_only_what_it_declares(vocab):
    text = SCHEMA.read_text()
    assert json.loads(text) == event_schema() and '"additionalProperties": false' not in text
    strict = jsonschema.Draft202012Validator(producer_schema())
    for ev in (an_event(vocab), an_event(vocab, origins=()),
               build_storm_event(prefix="p", minute=1, limit=2, trip_event_id="t" * 40,
                                 published=[(60_500, "unseen_template")], model_version="m", context=CTX)):
        strict.validate(json.loads(ev.model_dump_json()))
    with pytest.raises(jsonschema.ValidationError):
        strict.validate(newer(an_event(vocab).model_dump_json()))


def test_new_fields_are_optional_so_a_new_consumer_reads_the_backlog_of_older_events(vocab):
    doc = json.loads(an_event(vocab).model_dump_json())
    for added in ("severity", "log_family", "host", "labels", "input"):
        del doc[added]
    jsonschema.Draft202012Validator(event_schema()).validate(doc)
    assert AnomalyEvent.model_validate(doc).severity == "warning"


def test_severity_is_a_function_of_the_reasons():
    assert severity_of((UNSEEN_TEMPLATE, UNSEEN_SET, RARE_TEMPLATE, KEY_MISSES)) == "critical"
    assert severity_of((UNSEEN_TEMPLATE, DISTANCE)) == "critical"
    assert severity_of((UNSEEN_TEMPLATE, PREMATURE_END)) == "critical"
    # what follows from the unseen template itself is no corroboration
    assert severity_of((UNSEEN_TEMPLATE, UNSEEN_SET, RARE_TEMPLATE)) == "warning"
    assert severity_of((KEY_MISSES, DISTANCE, RARE_TEMPLATE)) == "warning"
    assert severity_of((PREMATURE_END,)) == "warning"
    storm = build_storm_event(prefix="p", minute=1, limit=2, trip_event_id="t" * 40, published=[], model_version="m")
    assert storm.session_id == STORM_SESSION and storm.severity == "critical"


def test_event_carries_family_host_labels_and_the_input_records(vocab):
    ev = an_event(vocab)
    assert (ev.log_family, ev.host, ev.labels) == ("hdfs", "dn-7", {"env": "prod"})
    assert ev.input is not None and ev.input.topic == "logs.raw"
    assert [(r.partition, r.first_offset, r.last_offset, r.lines) for r in ev.input.ranges] == [(0, 10, 12, 2),
                                                                                               (1, 7, 7, 1)]
    assert "unknown_lines" not in ev.model_dump_json()
    partial = input_coordinates("t", ["3:5", None, "3:4"])
    assert partial is not None and partial.unknown_lines == 1 and partial.ranges[0].first_offset == 4
    assert input_coordinates("t", [None, None]) is None
    bare = an_event(vocab, origins=())  # offsets not kept: no "input", no nulls on the wire
    assert bare.input is None and '"input"' not in bare.model_dump_json() and "null" not in bare.model_dump_json()
    # the event id is the window's and nothing of the context enters it
    assert ev.event_id == bare.event_id


def test_event_settings_are_checked():
    s = load_settings(CONFIG, event={"format": "cloudevents-binary", "labels": {"env": "prod"}, "host": ""})
    assert s.event.format == "cloudevents-binary" and s.event.labels == {"env": "prod"}
    for bad in ({"format": "avro"}, {"labels": {"bad-name": "x"}}):
        with pytest.raises((ConfigError, ValueError), match="event"):
            load_settings(CONFIG, event=bad)


def test_cloudevents_binary_and_structured_frames(vocab):
    raw = an_event(vocab).model_dump_json()
    value, headers = frame_event(raw, "plain", "urn:logad:hdfs")
    assert value == raw.encode() and headers is None
    value, headers = frame_event(raw, "cloudevents-binary", "urn:logad:hdfs")
    h = dict(headers or [])
    assert value == raw.encode()
    assert h == {"ce_specversion": b"1.0", "ce_id": b"e" * 40, "ce_source": b"urn:logad:hdfs",
                 "ce_type": CE_TYPE.encode(), "ce_subject": b"blk_1", "ce_time": b"1970-01-01T00:00:05Z",
                 "ce_dataschema": SCHEMA_ID.encode(), "content-type": b"application/json"}
    value, headers = frame_event(raw, "cloudevents-structured", "urn:logad:hdfs")
    assert headers == [("content-type", CE_STRUCTURED.encode())]
    env = json.loads(value)
    assert {k: env[k] for k in ("specversion", "id", "source", "type", "time", "datacontenttype")} == {
        "specversion": "1.0", "id": "e" * 40, "source": "urn:logad:hdfs", "type": CE_TYPE,
        "time": "1970-01-01T00:00:05Z", "datacontenttype": "application/json"}
    assert raw in value.decode()  # the event's own bytes, unchanged, as data
    assert unwrap_event(env) == json.loads(raw) and unwrap_event(json.loads(raw)) == json.loads(raw)
    # consumers of this version read it in every framing
    view = read_event(value)
    assert isinstance(view, EventView) and view.event_id == "e" * 40 and view.severity == "critical"
    assert render_event(value).startswith("ANOMALY blk_1")
    # the same event frames to the same bytes (a replay publishes an identical record)
    assert frame_event(raw, "cloudevents-structured", "urn:logad:hdfs") == (value, headers)
    with pytest.raises(ValueError, match="event.format"):
        frame_event(raw, "avro", "x")


# -- against the real broker and Redis ------------------------------------------------------------------------------
@pytest.mark.integration
def test_cloudevents_binary_end_to_end_with_the_input_records_behind_each_window(broker, redis_url, topic_name, lines,
                                                                                bundle, expected):
    """A detector run publishing CloudEvents in binary mode: ce_* headers beside the unchanged event, the same
    anomalies as offline, and each event's input ranges point at records of its own session."""
    s = settings_for(broker.url, redis_url, topic_name, "ce1", event={"format": "cloudevents-binary",
                                                                      "labels": {"env": "test"}, "host": "det-1"})
    make_topics(s)
    produce_lines(broker.url, topic_name, lines)
    run_until_done(s, bundle)
    records = read_all(broker.url, s.kafka.output_topic)
    events = [AnomalyEvent.model_validate_json(r.value) for r in records]
    got: dict[str, int] = {}
    for ev in events:
        got[ev.session_id] = got.get(ev.session_id, 0) + 1
    assert got == expected
    inputs = {(r.partition, r.offset): r.value.decode() for r in read_all(broker.url, topic_name)}
    strict = jsonschema.Draft202012Validator(producer_schema())
    for rec, ev in zip(records, events):
        h = {k: v.decode() for k, v in rec.headers}
        assert h == {"ce_specversion": "1.0", "ce_id": ev.event_id, "ce_source": "urn:logad:hdfs", "ce_type": CE_TYPE,
                     "ce_subject": ev.session_id, "ce_time": json.loads(rec.value)["detected_at"],
                     "ce_dataschema": SCHEMA_ID, "content-type": "application/json"}
        strict.validate(json.loads(rec.value))
        assert (ev.log_family, ev.host, ev.labels) == ("hdfs", "det-1", {"env": "test"})
        assert ev.input is not None and ev.input.topic == topic_name and ev.input.unknown_lines == 0
        assert sum(r.lines for r in ev.input.ranges) == ev.window.line_count
        for r in ev.input.ranges:
            assert ev.session_id in inputs[r.partition, r.first_offset]
            assert ev.session_id in inputs[r.partition, r.last_offset]


@pytest.mark.integration
def test_cloudevents_structured_through_the_worker_producer(broker, redis_url, topic_name, bundle, vocab):
    """Structured mode at the producer: the worker's framing of an event, published to and read from the broker."""
    s = settings_for(broker.url, redis_url, topic_name, "ce2", event={"format": "cloudevents-structured",
                                                                      "source": "https://logad.example/hdfs"})
    make_topics(s)
    worker = Worker(s, bundle)
    try:
        raw = an_event(vocab).model_dump_json()
        worker.publisher.deliver([worker.publisher.event_message("blk_1", raw)])
    finally:
        worker.close()
    (rec,) = read_all(broker.url, s.kafka.output_topic, expected=1)
    assert rec.key == b"blk_1" and [(k, v) for k, v in rec.headers] == [("content-type", CE_STRUCTURED.encode())]
    env = json.loads(rec.value)
    assert (env["specversion"], env["id"], env["source"], env["type"]) == ("1.0", "e" * 40,
                                                                           "https://logad.example/hdfs", CE_TYPE)
    assert env["data"] == json.loads(raw)
    view = read_event(rec.value)
    assert isinstance(view, EventView) and view.severity == "critical"

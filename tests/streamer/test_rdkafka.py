"""The librdkafka clients: the worker's kafka-python settings, translated, and nothing dropped; the consumer's
polling; the producer's delivery contract (everything acknowledged, or an error to retry on)."""

from __future__ import annotations

import pytest

from logbert_core.config import KafkaSection
from streamer.kafka_clients import client_settings
from streamer.rdkafka import rdkafka_config, rdkafka_producer_config


def test_settings_match_the_kafka_python_consumer() -> None:
    config = rdkafka_config("b:9092", "g", session_timeout_ms=6000, client_id="logad-g", settings={})
    assert config["bootstrap.servers"] == "b:9092" and config["group.id"] == "g"
    assert config["enable.auto.commit"] is False and config["enable.auto.offset.store"] is False
    assert config["auto.offset.reset"] == "earliest"
    assert config["session.timeout.ms"] == 6000 and config["heartbeat.interval.ms"] == 2000
    assert config["fetch.wait.max.ms"] <= 100  # idle fetches do not hold a slow stream's lines back


def test_every_security_setting_is_translated() -> None:
    k = KafkaSection(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="u",
                     sasl_plain_password="p", ssl_cafile="/ca.pem", ssl_certfile="/c.pem", ssl_keyfile="/k.pem")
    config = rdkafka_config("b:9093", "g", session_timeout_ms=10_000, client_id="c",
                            settings=client_settings(k, "confluent-kafka"))
    assert {key: config[key] for key in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password",
                                         "ssl.ca.location", "ssl.certificate.location", "ssl.key.location")} == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u",
        "sasl.password": "p", "ssl.ca.location": "/ca.pem", "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/k.pem"}
    # librdkafka accepts the names and values (it checks them when a client is created; the files do not exist
    # here, so the ssl paths are left out of this check)
    from confluent_kafka import Consumer

    Consumer({key: value for key, value in config.items() if not key.startswith("ssl.")}).close()


def test_a_setting_librdkafka_refuses_is_a_start_up_error() -> None:
    """Not a broker outage to back off from: the worker would retry it for the whole outage budget."""
    from streamer.errors import StartupError
    from streamer.rdkafka import ConfluentConsumer

    config = rdkafka_config("127.0.0.1:1", "g", session_timeout_ms=6000, client_id="c",
                            settings={"no.such.property": "1"})
    with pytest.raises(StartupError, match="no.such.property"):
        ConfluentConsumer(config, "t", connect_timeout_s=1.0)


def test_no_broker_at_creation_is_unavailable_for_the_start_up_back_off() -> None:
    """The worker retries its consumer's creation with back-off, then exits 3 past the outage budget: that needs
    the creation to fail, as kafka-python's does, when no broker answers."""
    import time

    from streamer.embedded import free_port
    from streamer.errors import BrokerUnavailable
    from streamer.rdkafka import ConfluentConsumer

    config = rdkafka_config(f"127.0.0.1:{free_port()}", "g", session_timeout_ms=6000, client_id="c", settings={})
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="librdkafka"):
        ConfluentConsumer(config, "t", connect_timeout_s=1.0)
    assert time.monotonic() - t0 < 10


@pytest.mark.integration
def test_a_slow_stream_is_not_held_back_by_batching(broker) -> None:
    """A poll returns what has arrived at once: librdkafka's batch consume alone would wait for a full batch or the
    whole timeout, and an idle fetch for its whole wait on some brokers."""
    import time

    from streamer.kafka_io import ensure_topics, make_producer
    from streamer.rdkafka import ConfluentConsumer

    ensure_topics(broker.url, {"t.slow": 1})
    consumer = ConfluentConsumer(rdkafka_config(broker.url, "slow", session_timeout_ms=6000, client_id="c",
                                                settings={}), "t.slow")
    producer = make_producer(broker.url)
    try:
        deadline = time.monotonic() + 30
        while not consumer._fetched and time.monotonic() < deadline:  # joined, and fetching the empty partition
            consumer.poll(200, 1000)
        waits = []
        for _ in range(5):
            t0 = time.monotonic()
            producer.send("t.slow", b"x").get(10)
            got: dict = {}
            while not got and time.monotonic() - t0 < 5:
                got = consumer.poll(1000, 1000)
            assert sum(len(v) for v in got.values()) == 1
            waits.append(time.monotonic() - t0)
            time.sleep(0.05)
        assert sorted(waits)[2] < 0.3, waits  # median; librdkafka's defaults gave 0.5-1 s here
    finally:
        producer.close()
        consumer.close()


def test_producer_settings_match_the_kafka_python_producer() -> None:
    k = KafkaSection(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_plain_username="u",
                     sasl_plain_password="p")
    config = rdkafka_producer_config("b:9092", client_id="logad-g", settings=client_settings(k, "confluent-kafka"),
                                     timeout_s=30)
    assert config["acks"] == "all" and config["linger.ms"] == 5
    from streamer.kafka_io import producer_config

    assert producer_config(30) == {"acks": "all", "linger_ms": 5, "retry_backoff_ms": 200,
                                   "delivery_timeout_ms": config["message.timeout.ms"], "request_timeout_ms": 29_994}
    from kafka import KafkaProducer

    for timeout_s in (0.5, 2, 30, 60):  # kafka-python accepts each (delivery > linger + request timeout)
        KafkaProducer(**producer_config(timeout_s), bootstrap_servers="127.0.0.1:1", bootstrap_timeout_ms=0,
                      api_version=(3, 0)).close(0)
    assert config["message.timeout.ms"] == 30_000  # an undelivered copy leaves the queue when the send is retried
    assert (config["security.protocol"], config["sasl.mechanism"], config["sasl.username"]) == (
        "SASL_PLAINTEXT", "PLAIN", "u")
    from confluent_kafka import Producer

    Producer(config).flush(0)  # librdkafka accepts every name and value


def test_no_broker_at_producer_creation_is_unavailable() -> None:
    import time

    from streamer.embedded import free_port
    from streamer.errors import BrokerUnavailable
    from streamer.rdkafka import ConfluentProducer

    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="librdkafka"):
        ConfluentProducer(rdkafka_producer_config(f"127.0.0.1:{free_port()}", client_id="c", settings={}),
                          connect_timeout_s=1.0)
    assert time.monotonic() - t0 < 10


@pytest.mark.integration
def test_producer_delivers_every_message_with_its_key_and_headers(broker) -> None:
    from streamer.kafka_io import ensure_topics, read_all
    from streamer.rdkafka import ConfluentProducer

    ensure_topics(broker.url, {"t.deliver": 2})
    producer = ConfluentProducer(rdkafka_producer_config(broker.url, client_id="c", settings={}))
    try:
        sent = [("t.deliver", f"s{i}".encode(), f"event {i}".encode(), [("logad.reason", b"r")] if i % 2 else None)
                for i in range(300)]
        producer.deliver(sent, timeout_s=20)  # returns only once the broker has acknowledged all of them
        got = read_all(broker.url, "t.deliver", expected=300, timeout_s=20)
    finally:
        producer.close()
    assert sorted((r.key, r.value) for r in got) == sorted((k, v) for _, k, v, _ in sent)
    assert sum(1 for r in got if list(r.headers) == [("logad.reason", b"r")]) == 150


@pytest.mark.integration
def test_producer_reports_what_the_broker_did_not_acknowledge() -> None:
    """A paused broker: ``deliver`` raises ``BrokerUnavailable`` at its timeout (the worker backs off, commits
    nothing and sends the set again), and a later delivery succeeds once the broker is back."""
    import time

    from streamer.embedded import start_broker
    from streamer.errors import BrokerUnavailable
    from streamer.kafka_io import ensure_topics
    from streamer.rdkafka import ConfluentProducer

    broker = start_broker()
    try:
        ensure_topics(broker.url, {"t.paused": 1})
        producer = ConfluentProducer(rdkafka_producer_config(broker.url, client_id="c", settings={},
                                                             timeout_s=3))
        producer.deliver([("t.paused", None, b"before", None)], timeout_s=10)
        broker.pause()
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="not acknowledged|timed out"):
            producer.deliver([("t.paused", None, b"during", None)], timeout_s=2)
        assert time.monotonic() - t0 < 6
        broker.resume()
        producer.deliver([("t.paused", None, b"after", None)], timeout_s=20)
        producer.close()
    finally:
        broker.stop()


@pytest.mark.integration
def test_producer_takes_records_as_large_as_the_kafka_python_one_did(broker) -> None:
    """librdkafka refuses records over 1,000,000 bytes by default, kafka-python over 1,048,576: an event or dead
    letter in between must not become an endless retry."""
    from streamer.kafka_io import ensure_topics
    from streamer.rdkafka import ConfluentProducer

    ensure_topics(broker.url, {"t.large": 1})
    producer = ConfluentProducer(rdkafka_producer_config(broker.url, client_id="c", settings={}))
    try:
        producer.deliver([("t.large", None, b"x" * 1_040_000, [("logad.reason", b"too_large")])], timeout_s=20)
    finally:
        producer.close()


def test_a_partition_the_group_moved_on_from_is_a_rejected_commit_not_an_outage() -> None:
    """librdkafka can answer a synchronous commit with an error per partition instead of raising. A generation or
    member error there means what it means for the whole request: the group moved on, the commit is refused and
    must not be retried (``CommitRejected``); any other error is the broker's (``BrokerUnavailable``: back-off)."""
    from types import SimpleNamespace

    from confluent_kafka import KafkaError

    from streamer.broker import Partition
    from streamer.errors import BrokerUnavailable, CommitRejected
    from streamer.rdkafka import ConfluentConsumer

    def consumer_answering(*codes: int | None) -> ConfluentConsumer:
        # what commit() returns: a TopicPartition per partition, whose error is set by librdkafka (read-only here)
        answer = [SimpleNamespace(topic="t", partition=i, offset=5, error=None if code is None else KafkaError(code))
                  for i, code in enumerate(codes)]
        c = ConfluentConsumer.__new__(ConfluentConsumer)  # no broker: only commit() is exercised
        c._c = SimpleNamespace(commit=lambda offsets, asynchronous: answer)
        return c

    offsets = {Partition("t", 0): 5, Partition("t", 1): 5}
    consumer_answering(None, None).commit(offsets)
    with pytest.raises(CommitRejected, match="1 partition"):
        consumer_answering(None, KafkaError.ILLEGAL_GENERATION).commit(offsets)
    with pytest.raises(BrokerUnavailable, match="2 partition"):
        consumer_answering(KafkaError.REQUEST_TIMED_OUT, KafkaError._TRANSPORT).commit(offsets)

"""Kafka settings as operators give them: the pass-through map, OAUTHBEARER and GSSAPI, secrets from files, and the
one translation (``streamer.kafka_clients.client_settings``) every client takes its settings from.

tansu speaks no SASL, so OAUTHBEARER and GSSAPI are tested at the configuration level (and the OIDC token fetch
against a local HTTP endpoint); the broker test proves a pass-through key reaches librdkafka."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from logbert_core.config import ConfigError, KafkaSection, load_settings
from streamer.errors import StartupError
from streamer.kafka_clients import OidcTokenProvider, client_settings

SECRET = "s3cret-Val-91c2"
OIDC = {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER",
        "sasl_oauthbearer_token_endpoint_url": "https://idp.example/token", "sasl_oauthbearer_client_id": "logad",
        "sasl_oauthbearer_scope": "kafka"}


def secret_file(tmp_path: Path, text: str = SECRET + "\n", name: str = "secret") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


class Listener:
    def on_partitions_assigned(self, _assigned: Any) -> None:
        pass

    def on_partitions_revoked(self, _revoked: Any) -> None:
        pass


# -- translation ---------------------------------------------------------------------------------------------------

def test_librdkafka_gets_typed_settings_then_the_pass_through_map_verbatim() -> None:
    k = KafkaSection(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="u",
                     sasl_plain_password="p", ssl_cafile="/ca.pem", ssl_key_password="kp",
                     client_config={"socket.keepalive.enable": True, "statistics.interval.ms": 5000,
                                    "client.id": "mine", "fetch.wait.max.ms": "50"})
    assert client_settings(k, "confluent-kafka") == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "u",
        "sasl.password": "p", "ssl.ca.location": "/ca.pem", "ssl.key.password": "kp",
        "socket.keepalive.enable": True, "statistics.interval.ms": 5000, "client.id": "mine",
        "fetch.wait.max.ms": "50"}
    from streamer.rdkafka import rdkafka_config

    config = rdkafka_config("b:9092", "g", session_timeout_ms=6000, client_id="logad-g",
                            settings=client_settings(k, "confluent-kafka"))
    assert config["client.id"] == "mine" and config["fetch.wait.max.ms"] == "50"  # pass-through beats tuning
    assert config["enable.auto.commit"] is False


def test_oauthbearer_oidc_for_librdkafka() -> None:
    k = KafkaSection(**OIDC, sasl_oauthbearer_client_secret=SECRET)
    config = client_settings(k, "confluent-kafka")
    assert {key: v for key, v in config.items() if key.startswith("sasl.")} == {
        "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.token.endpoint.url": "https://idp.example/token",
        "sasl.oauthbearer.client.id": "logad", "sasl.oauthbearer.client.secret": SECRET,
        "sasl.oauthbearer.scope": "kafka"}


def test_kafka_python_translates_what_it_can() -> None:
    k = KafkaSection(ssl_key_password="kp", client_config={
        "client.id": "mine", "reconnect.backoff.max.ms": "2000", "socket.keepalive.enable": "true",
        "ssl.endpoint.identification.algorithm": "none", "metadata.max.age.ms": 60000})
    kw = client_settings(k, "kafka-python")
    assert kw["client_id"] == "mine" and kw["reconnect_backoff_max_ms"] == 2000
    assert kw["metadata_max_age_ms"] == 60000 and kw["ssl_check_hostname"] is False and kw["ssl_password"] == "kp"
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in kw["socket_options"]
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    for cls in (KafkaConsumer, KafkaProducer, KafkaAdminClient):  # every kafka-python client takes every keyword
        assert set(kw) <= set(cls.DEFAULT_CONFIG)


def test_kafka_python_refuses_a_key_it_cannot_honour_unless_told_to_ignore_it() -> None:
    k = KafkaSection(client_config={"statistics.interval.ms": 5000})
    with pytest.raises(StartupError, match=r"'statistics.interval.ms'.*kafka-python.*kafka_python_ignore"):
        client_settings(k, "kafka-python")
    assert client_settings(k, "confluent-kafka")["statistics.interval.ms"] == 5000
    k = KafkaSection(client_config={"statistics.interval.ms": 5000}, kafka_python_ignore=["statistics.interval.ms"])
    assert "statistics.interval.ms" not in str(client_settings(k, "kafka-python"))
    with pytest.raises(StartupError, match="socket.keepalive.enable"):  # a value it cannot read: named too
        client_settings(KafkaSection(client_config={"socket.keepalive.enable": "maybe"}), "kafka-python")


def test_kafka_python_oauthbearer_gets_a_token_provider_and_needs_an_endpoint() -> None:
    kw = client_settings(KafkaSection(**OIDC, sasl_oauthbearer_client_secret=SECRET), "kafka-python")
    assert isinstance(kw["sasl_oauth_token_provider"], OidcTokenProvider)
    assert SECRET not in repr(kw["sasl_oauth_token_provider"])
    k = KafkaSection(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                     client_config={"sasl.oauthbearer.config": "principal=me"})  # librdkafka's unsecured JWT
    assert client_settings(k, "confluent-kafka")["sasl.oauthbearer.config"] == "principal=me"
    with pytest.raises(StartupError, match="sasl_oauthbearer_token_endpoint_url"):
        client_settings(k, "kafka-python")


def test_gssapi() -> None:
    k = KafkaSection(security_protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI", sasl_kerberos_service_name="kfk",
                     sasl_kerberos_principal="logad@EXAMPLE.COM", sasl_kerberos_keytab="/etc/logad.keytab")
    config = client_settings(k, "confluent-kafka")
    assert (config["sasl.kerberos.service.name"], config["sasl.kerberos.principal"],
            config["sasl.kerberos.keytab"]) == ("kfk", "logad@EXAMPLE.COM", "/etc/logad.keytab")
    with pytest.raises(StartupError, match="kafka.sasl_kerberos_principal.*kinit"):
        client_settings(k, "kafka-python")
    plain = KafkaSection(security_protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI")
    try:
        import gssapi  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(StartupError, match="pip install gssapi"):
            client_settings(plain, "kafka-python")
    else:
        assert client_settings(plain, "kafka-python")["sasl_kerberos_service_name"] == "kafka"


def test_a_librdkafka_without_gssapi_says_so_at_start_up() -> None:
    """The confluent-kafka wheels' librdkafka is built without libsasl2: creating a client is a start-up error with
    librdkafka's explanation, not an outage to retry."""
    from confluent_kafka import libversion

    from streamer.rdkafka import ConfluentProducer, rdkafka_producer_config

    k = KafkaSection(security_protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI")
    config = rdkafka_producer_config("127.0.0.1:1", client_id="c", settings=client_settings(k, "confluent-kafka"))
    try:
        producer = ConfluentProducer(config, connect_timeout_s=0.5)
    except StartupError as exc:
        assert "GSSAPI" in str(exc)
    except Exception:  # noqa: BLE001 (a librdkafka with GSSAPI gets as far as the missing broker)
        pytest.skip(f"librdkafka {libversion()[0]} was built with GSSAPI")
    else:
        producer.close(0)


# -- the one function, for every client ----------------------------------------------------------------------------

class Captured(Exception):
    """Raised by ``capturing`` in place of making a client."""


def capturing(seen: dict[str, Any]) -> Any:
    """A stand-in for a client class or factory: records the keywords it was given in ``seen``, then raises."""

    def capture(*_args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise Captured

    return capture


def test_detector_clients_get_the_settings_with_either_client(monkeypatch) -> None:
    from streamer import kafka_python
    from streamer.kafka_clients import broker_clients

    seen: dict[str, Any] = {}
    capture = capturing(seen)

    monkeypatch.setattr(kafka_python, "KafkaConsumer", capture)
    monkeypatch.setattr(kafka_python, "KafkaProducer", capture)
    s = load_settings(None, kafka={"client": "kafka-python", "client_config": {"client.id": "mine",
                                                                               "retry.backoff.ms": 300}},
                      detector={"outage_budget_s": 60})
    clients = broker_clients(s)
    with pytest.raises(Captured):
        clients.consumer(Listener())
    # the pass-through key, and the heartbeat the librdkafka consumer has too
    assert seen["client_id"] == "mine" and seen["retry_backoff_ms"] == 300 and seen["heartbeat_interval_ms"] == 3000
    seen.clear()
    with pytest.raises(Captured):
        clients.producer()
    assert s.kafka_request_timeout_s() == 12  # from detector.outage_budget_s: a message is given up after it
    assert seen["client_id"] == "mine" and seen["delivery_timeout_ms"] == 12_000 and seen["acks"] == "all"


def test_every_tool_gets_the_pass_through_settings(monkeypatch, tmp_path) -> None:
    import logging

    import kafka
    from click.testing import CliRunner

    from streamer import alerts, cli, doctor, kafka_io

    config = Path(__file__).resolve().parents[2] / "config" / "hdfs.toml"
    env = {"LOGAD_KAFKA__CLIENT_CONFIG": json.dumps({"client.id": "ops-id", "reconnect.backoff.ms": 77})}
    want = {"client_id": "ops-id", "reconnect_backoff_ms": 77}
    kafka_log = logging.getLogger("kafka")
    monkeypatch.setattr(kafka_log, "level", kafka_log.level)
    seen: dict[str, Any] = {}
    capture = capturing(seen)

    runner = CliRunner()
    monkeypatch.setattr(kafka, "KafkaConsumer", capture)
    res = runner.invoke(cli.main, ["tail", "--config", str(config)], env=env)
    assert isinstance(res.exception, Captured) and want.items() <= seen.items()
    seen.clear()
    monkeypatch.setattr(kafka_io, "produce_file", capture)
    (tmp_path / "a.log").write_text("line\n")
    res = runner.invoke(cli.main, ["replay", str(tmp_path / "a.log"), "--config", str(config)], env=env)
    assert isinstance(res.exception, Captured) and want.items() <= seen.items()
    seen.clear()
    monkeypatch.setattr(alerts, "make_kafka_consumer", capture)
    res = runner.invoke(cli.main, ["alerts", "forward", "--config", str(config), "--metrics-port", "0",
                                      "--alertmanager", "http://127.0.0.1:1"], env=env)
    assert isinstance(res.exception, Captured) and want.items() <= seen["client_kwargs"].items()
    seen.clear()
    monkeypatch.setattr(kafka, "KafkaAdminClient", capture)
    with pytest.raises(Captured):
        doctor.check_kafka(load_settings(config, kafka={"client_config": {"client.id": "ops-id",
                                                                           "reconnect.backoff.ms": 77}}), 1)
    assert want.items() <= seen.items()
    # and a key kafka-python cannot honour stops a tool with exit 2, naming it
    res = runner.invoke(cli.main, ["tail", "--config", str(config)],
                        env={"LOGAD_KAFKA__CLIENT_CONFIG": '{"statistics.interval.ms": 1000}'})
    assert res.exit_code == 2 and "statistics.interval.ms" in res.output


# -- configuration: env forms, conflicts, secrets from files --------------------------------------------------------

def test_pass_through_from_toml_and_env(monkeypatch, tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[kafka.client_config]\n"socket.keepalive.enable" = true\n"statistics.interval.ms" = 1000\n')
    assert load_settings(path).kafka.client_config == {"socket.keepalive.enable": True,
                                                       "statistics.interval.ms": 1000}
    monkeypatch.setenv("LOGAD_KAFKA__CLIENT_CONFIG", '{"client.id": "from-env", "statistics.interval.ms": 500}')
    assert load_settings(path).kafka.client_config == {  # merged into the file's map, key by key
        "socket.keepalive.enable": True, "statistics.interval.ms": 500, "client.id": "from-env"}
    monkeypatch.delenv("LOGAD_KAFKA__CLIENT_CONFIG")
    monkeypatch.setenv("LOGAD_KAFKA__CLIENT_CONFIG__client.id", "one-key")  # one key (env names with dots)
    assert load_settings(None).kafka.client_config == {"client.id": "one-key"}


@pytest.mark.parametrize(("client_config", "names"), [
    ({"sasl.username": "x"}, ("'sasl.username'", "kafka.sasl_plain_username")),
    ({"bootstrap.servers": "h:9092"}, ("'bootstrap.servers'", "kafka.bootstrap_servers")),
    ({"sasl.password_file": "/run/secrets/p"}, ("'sasl.password_file'", "kafka.sasl_plain_password")),
    ({"sasl.oauthbearer.method": "oidc"}, ("'sasl.oauthbearer.method'", "kafka.sasl_oauthbearer_token_endpoint_url")),
    ({"enable.auto.commit": True}, ("'enable.auto.commit'", "logad sets")),
    ({"ssl.keystore.password": "a", "ssl.keystore.password_file": "/p"}, ("'ssl.keystore.password_file'",
                                                                           "'ssl.keystore.password'")),
])
def test_a_pass_through_key_that_collides_is_a_config_error_naming_both(client_config, names) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, kafka={"client_config": client_config})
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize("field", ["sasl_plain_password", "sasl_oauthbearer_client_secret", "ssl_key_password"])
def test_every_typed_secret_can_come_from_a_file(monkeypatch, tmp_path, field) -> None:
    base = OIDC if field == "sasl_oauthbearer_client_secret" else {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u"}
    for key, value in base.items():
        monkeypatch.setenv(f"LOGAD_KAFKA__{key.upper()}", value)
    monkeypatch.setenv(f"LOGAD_KAFKA__{field.upper()}_FILE", secret_file(tmp_path))
    s = load_settings(None)
    assert s.kafka.secret(field) == SECRET  # trailing newline stripped
    rd = client_settings(s.kafka, "confluent-kafka")
    assert SECRET in rd.values()
    for text in (repr(s), str(s), repr(s.kafka)):
        assert SECRET not in text
    monkeypatch.setenv(f"LOGAD_KAFKA__{field.upper()}", SECRET)  # both: refused, naming both, showing neither
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert f"kafka.{field} and kafka.{field}_file are both set" in str(err.value) and SECRET not in str(err.value)


def test_a_pass_through_secret_from_a_file(tmp_path) -> None:
    k = KafkaSection(client_config={"ssl.keystore.password_file": secret_file(tmp_path, SECRET + "\r\n"),
                                    "ssl.keystore.location": "/ks.p12", "sasl.oauthbearer.config": SECRET})
    assert client_settings(k, "confluent-kafka")["ssl.keystore.password"] == SECRET
    assert "ssl.keystore.password_file" not in client_settings(k, "confluent-kafka")
    assert SECRET not in repr(k)  # the inline secret is masked as well
    assert "'ssl.keystore.location': '/ks.p12'" in repr(k)  # the rest stays readable


@pytest.mark.parametrize("content", [None, "", "two\nlines\n"])
def test_a_bad_secret_file_is_a_config_error_naming_the_setting_not_the_value(tmp_path, content) -> None:
    path = str(tmp_path / "missing") if content is None else secret_file(tmp_path, content + SECRET * (content != ""))
    with pytest.raises(ConfigError) as err:
        load_settings(None, kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                                   "sasl_plain_password_file": path})
    assert "kafka.sasl_plain_password_file" in str(err.value) and path in str(err.value)
    assert SECRET not in str(err.value)


def test_config_errors_do_not_show_pass_through_secrets() -> None:
    with pytest.raises(ConfigError) as err:  # a value of the wrong type: pydantic would echo it
        load_settings(None, kafka={"client_config": {"sasl.oauthbearer.client.secret": [SECRET]}})
    assert SECRET not in str(err.value)


def test_mechanism_specific_settings_need_their_mechanism() -> None:
    with pytest.raises(ConfigError, match="sasl_kerberos_keytab.*GSSAPI"):
        load_settings(None, kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                                   "sasl_kerberos_keytab": "/k"})
    with pytest.raises(ConfigError, match="sasl_oauthbearer_client_secret is required"):
        load_settings(None, kafka=OIDC)
    with pytest.raises(ConfigError, match="kafka.sasl_mechanism"):
        load_settings(None, kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "KERBEROS"})


# -- OIDC token provider (kafka-python) ------------------------------------------------------------------------------

def test_oidc_token_provider_fetches_with_client_credentials_and_reuses_the_token() -> None:
    forms: list[dict[str, list[str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            forms.append(urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()))
            body = json.dumps({"access_token": f"tok{len(forms)}", "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/token"
        provider = OidcTokenProvider(url, "logad", SECRET, "kafka")
        assert provider.token() == "tok1" and provider.token() == "tok1"  # kept until 80% of its lifetime
        assert forms == [{"grant_type": ["client_credentials"], "client_id": ["logad"],
                          "client_secret": [SECRET], "scope": ["kafka"]}]
        with pytest.raises(ConnectionError) as err:
            OidcTokenProvider(url.replace("/token", ":1/x").replace(str(server.server_address[1]) + ":1", "1"),
                              "logad", SECRET).token()
        assert SECRET not in str(err.value)
    finally:
        server.shutdown()
        server.server_close()


# -- against the broker ------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_a_pass_through_key_reaches_librdkafka(broker, topic_name, caplog) -> None:
    """Pass-through keys reach the detector's librdkafka consumer: with ``debug`` and ``client.id`` from the map,
    librdkafka logs its group protocol under that id while it joins the broker's group; and a value librdkafka
    refuses stops start-up with its message."""
    import logging
    import time

    from streamer.kafka_clients import broker_clients
    from streamer.kafka_io import ensure_topics

    ensure_topics(broker.url, {topic_name: 1})
    group = f"g-{topic_name}"
    s = load_settings(None, kafka={"bootstrap_servers": broker.url, "input_topic": topic_name, "group_id": group,
                                   "session_timeout_ms": 6000, "client": "confluent-kafka",
                                   "client_config": {"client.id": "logad-passthrough-probe", "debug": "cgrp"}})
    caplog.set_level(logging.DEBUG, logger="librdkafka")
    consumer = broker_clients(s).consumer(Listener())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                "logad-passthrough-probe#consumer" in r.getMessage() and "JoinGroup" in r.getMessage()
                for r in caplog.records):
            consumer.poll(200, 10)
    finally:
        consumer.close()
    assert any("logad-passthrough-probe#consumer" in r.getMessage() and "JoinGroup" in r.getMessage()
               for r in caplog.records)
    bad = load_settings(None, kafka={"bootstrap_servers": broker.url, "input_topic": topic_name, "group_id": group,
                                     "client": "confluent-kafka", "client_config": {"statistics.interval.ms": "often"}})
    with pytest.raises(StartupError, match="statistics.interval.ms"):
        broker_clients(bad).consumer(Listener())

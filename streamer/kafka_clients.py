"""Kafka settings -> client configuration: the one place every Kafka client logad builds takes its settings from.

``client_settings(kafka, client)`` gives, for ``"confluent-kafka"``, librdkafka properties (the typed security
settings under librdkafka's names, then ``kafka.client_config`` verbatim) and, for ``"kafka-python"``, keyword
arguments (the typed settings translated, and each pass-through key with a kafka-python equivalent, see
``KAFKA_PYTHON_NAMES``). A pass-through key kafka-python has no equivalent for is refused with an error naming it,
unless ``kafka.kafka_python_ignore`` lists it: a setting is never dropped without the operator saying so.
Bootstrap servers are not included: every caller names its own (the tools take ``--bootstrap-servers``).

``broker_clients(settings)`` makes the detector's consumer and event producer (``streamer.broker``) with the library
``kafka.client`` names.

What each client supports beyond PLAIN and SCRAM:

* OAUTHBEARER with OIDC client credentials: librdkafka fetches and refreshes the token itself
  (``sasl.oauthbearer.method = oidc``); kafka-python gets ``OidcTokenProvider``, which does the same. librdkafka's
  other OAUTHBEARER methods (``sasl.oauthbearer.config``, unsecured JWTs) are pass-through keys kafka-python refuses.
* GSSAPI (Kerberos): librdkafka takes the principal and keytab, if it was built with libsasl2 (the confluent-kafka
  wheels are not: creating a client then fails with librdkafka's own message, a start-up error). kafka-python needs
  the ``gssapi`` package and takes its credentials from the ticket cache or ``KRB5_CLIENT_KTNAME``, so a principal or
  keytab in the settings is refused for it.

Errors are ``KafkaSettingsError`` (a ``StartupError``: the commands print it and exit 2). They name settings and
keys, never a secret's value.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, Literal

from kafka.net.sasl.oauth import AbstractTokenProvider

from logbert_core.config import KafkaSection, Settings
from streamer.broker import BrokerConsumer, BrokerProducer, RebalanceListener, heartbeat_interval_ms
from streamer.errors import KafkaSettingsError
from streamer.kafka_io import producer_config
from streamer.kafka_python import KafkaPythonConsumer, KafkaPythonProducer
from streamer.rdkafka import ConfluentConsumer, ConfluentProducer, rdkafka_config, rdkafka_producer_config

log = logging.getLogger(__name__)

__all__ = ["KAFKA_PYTHON_NAMES", "BrokerClients", "OidcTokenProvider", "broker_clients", "client_settings"]

Client = Literal["confluent-kafka", "kafka-python"]


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ValueError("must be true or false")
    return text == "true"


def _hostname_check(value: Any) -> bool:
    text = str(value).strip().lower()
    if text not in ("https", "none"):
        raise ValueError("must be 'https' or 'none'")
    return text == "https"


# librdkafka property -> (kafka-python keyword, conversion): the pass-through keys kafka-python clients honour. Only
# keywords that its consumer, producer and admin client all take, so that every tool gets the same.
KAFKA_PYTHON_NAMES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "client.id": ("client_id", str),
    "reconnect.backoff.ms": ("reconnect_backoff_ms", int),
    "reconnect.backoff.max.ms": ("reconnect_backoff_max_ms", int),
    "retry.backoff.ms": ("retry_backoff_ms", int),
    "metadata.max.age.ms": ("metadata_max_age_ms", int),
    "connections.max.idle.ms": ("connections_max_idle_ms", int),
    "socket.send.buffer.bytes": ("send_buffer_bytes", int),
    "socket.receive.buffer.bytes": ("receive_buffer_bytes", int),
    "ssl.endpoint.identification.algorithm": ("ssl_check_hostname", _hostname_check),
    "ssl.crl.location": ("ssl_crlfile", str),
    # kafka-python's socket options: TCP_NODELAY (its default) plus SO_KEEPALIVE when true
    "socket.keepalive.enable": ("socket_options", _bool),
}


def client_settings(kafka: KafkaSection, client: Client) -> dict[str, Any]:
    """The security and pass-through settings of ``kafka`` for ``client``; ``KafkaSettingsError`` for one that
    client cannot honour."""
    return _rdkafka(kafka) if client == "confluent-kafka" else _kafka_python(kafka)


def _rdkafka(k: KafkaSection) -> dict[str, Any]:
    out: dict[str, Any] = {"security.protocol": k.security_protocol}
    typed = {"sasl.mechanism": k.sasl_mechanism, "sasl.username": k.sasl_plain_username,
             "sasl.password": k.secret("sasl_plain_password"), "ssl.ca.location": k.ssl_cafile,
             "ssl.certificate.location": k.ssl_certfile, "ssl.key.location": k.ssl_keyfile,
             "ssl.key.password": k.secret("ssl_key_password")}
    if k.sasl_mechanism == "OAUTHBEARER" and k.sasl_oauthbearer_token_endpoint_url is not None:
        typed.update({"sasl.oauthbearer.method": "oidc",
                      "sasl.oauthbearer.token.endpoint.url": k.sasl_oauthbearer_token_endpoint_url,
                      "sasl.oauthbearer.client.id": k.sasl_oauthbearer_client_id,
                      "sasl.oauthbearer.client.secret": k.secret("sasl_oauthbearer_client_secret"),
                      "sasl.oauthbearer.scope": k.sasl_oauthbearer_scope})
    if k.sasl_mechanism == "GSSAPI":
        typed.update({"sasl.kerberos.service.name": k.sasl_kerberos_service_name,
                      "sasl.kerberos.principal": k.sasl_kerberos_principal,
                      "sasl.kerberos.keytab": k.sasl_kerberos_keytab})
    out.update({name: value for name, value in typed.items() if value is not None})
    out.update(k.passthrough())  # no key overlaps a typed one: KafkaSection refuses that at load
    return out


def _kafka_python(k: KafkaSection) -> dict[str, Any]:
    kw: dict[str, Any] = {"security_protocol": k.security_protocol}
    typed = {"sasl_mechanism": k.sasl_mechanism, "sasl_plain_username": k.sasl_plain_username,
             "sasl_plain_password": k.secret("sasl_plain_password"), "ssl_cafile": k.ssl_cafile,
             "ssl_certfile": k.ssl_certfile, "ssl_keyfile": k.ssl_keyfile, "ssl_password": k.secret("ssl_key_password")}
    kw.update({name: value for name, value in typed.items() if value is not None})
    if k.sasl_mechanism == "OAUTHBEARER":
        if k.sasl_oauthbearer_token_endpoint_url is None:
            raise KafkaSettingsError(
                "kafka.sasl_mechanism = 'OAUTHBEARER' without kafka.sasl_oauthbearer_token_endpoint_url: kafka-python "
                "clients (logad tail, replay, doctor, alerts forward) get their token from an OIDC token endpoint "
                "only; set it with kafka.sasl_oauthbearer_client_id and _client_secret")
        secret = k.secret("sasl_oauthbearer_client_secret")
        assert k.sasl_oauthbearer_client_id is not None and secret is not None  # KafkaSection requires both
        kw["sasl_oauth_token_provider"] = OidcTokenProvider(
            k.sasl_oauthbearer_token_endpoint_url, k.sasl_oauthbearer_client_id, secret, k.sasl_oauthbearer_scope)
    if k.sasl_mechanism == "GSSAPI":
        for name in ("sasl_kerberos_principal", "sasl_kerberos_keytab"):
            if getattr(k, name) is not None:
                raise KafkaSettingsError(
                    f"kafka.{name} is set, but kafka-python clients (logad tail, replay, doctor, alerts forward) "
                    "cannot take it: they use the Kerberos ticket cache (kinit -kt KEYTAB PRINCIPAL) or the keytab "
                    f"in KRB5_CLIENT_KTNAME; unset kafka.{name} and provide one of those")
        try:
            import gssapi  # type: ignore[import-not-found]  # noqa: F401  (kafka-python's GSSAPI needs it)
        except ImportError as exc:
            raise KafkaSettingsError("kafka.sasl_mechanism = 'GSSAPI' needs the Python package gssapi for "
                                     "kafka-python clients: pip install gssapi") from exc
        kw["sasl_kerberos_service_name"] = k.sasl_kerberos_service_name
    for key, value in k.passthrough().items():
        if key in k.kafka_python_ignore:
            log.info("kafka.client_config[%r] is left out of kafka-python clients (kafka.kafka_python_ignore)", key)
            continue
        if key not in KAFKA_PYTHON_NAMES:
            raise KafkaSettingsError(
                f"kafka.client_config[{key!r}] has no kafka-python equivalent (streamer/kafka_clients.py lists "
                "those it has): kafka-python clients (logad tail, replay, doctor, alerts forward, and the detector "
                "with kafka.client = 'kafka-python') would ignore it. Drop the key, or list it in "
                "kafka.kafka_python_ignore to let them run without it")
        name, convert = KAFKA_PYTHON_NAMES[key]
        try:
            converted = convert(value)
        except ValueError as exc:  # the message names the key; values of these keys are not secrets
            raise KafkaSettingsError(f"kafka.client_config[{key!r}]: {exc}") from exc
        if key == "socket.keepalive.enable":
            converted = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] + (
                [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)] if converted else [])
        kw[name] = converted
    return kw


class OidcTokenProvider(AbstractTokenProvider):
    """kafka-python's OAUTHBEARER token source: an OIDC client-credentials grant against the token endpoint, as
    librdkafka's ``sasl.oauthbearer.method = oidc`` does. The token is kept until 80% of its lifetime has passed
    (kafka-python asks at every connection); an endpoint failure raises, and the client retries the connection."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None,
                 timeout_s: float = 10.0) -> None:
        super().__init__()
        self._url, self._timeout_s = token_url, timeout_s
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
        if scope:
            form["scope"] = scope
        self._body = urllib.parse.urlencode(form).encode("ascii")
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def __repr__(self) -> str:  # the form holds the client secret
        return f"OidcTokenProvider({self._url!r})"

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token, lifetime_s = self._fetch()
                self._renew_at = time.monotonic() + 0.8 * lifetime_s
            return self._token

    def _fetch(self) -> tuple[str, float]:
        request = urllib.request.Request(self._url, data=self._body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310 (operator's URL)
                doc = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise ConnectionError(f"OIDC token endpoint {self._url}: {exc.__class__.__name__}: {exc}") from exc
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise ConnectionError(f"OIDC token endpoint {self._url} answered without an access_token")
        lifetime = doc.get("expires_in", 300)
        return token, float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else 300.0


# -- the detector's clients ----------------------------------------------------------------------------------------

class BrokerClients:
    """The detector's client pair (``streamer.broker``) with the library ``kafka.client`` names. Each method makes a
    connected client, or raises ``BrokerUnavailable`` when no broker answers (the caller retries with back-off);
    settings the library refuses are a ``KafkaSettingsError``, here (those ``client_settings`` refuses) or when a
    client is made."""

    def __init__(self, settings: Settings) -> None:
        self.kafka = k = settings.kafka
        self.client: Client = k.client
        self.settings = client_settings(k, k.client)  # KafkaSettingsError: exit 2
        self.client_id = f"logad-{k.group_id}"
        self.timeout_s = settings.kafka_request_timeout_s()  # a message is given up after this, with either client

    def consumer(self, listener: RebalanceListener) -> BrokerConsumer:
        """The group consumer of the input topic: manual commits, from the earliest offset with none committed,
        heartbeats at a third of the session timeout."""
        k = self.kafka
        if self.client == "confluent-kafka":
            return ConfluentConsumer(rdkafka_config(k.bootstrap_servers, k.group_id,
                                                    session_timeout_ms=k.session_timeout_ms,
                                                    client_id=self.client_id, settings=self.settings),
                                     k.input_topic, listener)
        return KafkaPythonConsumer({
            "bootstrap_servers": k.bootstrap_servers, "group_id": k.group_id, "enable_auto_commit": False,
            "bootstrap_timeout_ms": 5000,  # fail fast; the worker retries with back-off within the outage budget
            "auto_offset_reset": "earliest", "session_timeout_ms": k.session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms(k.session_timeout_ms),
            "max_poll_records": k.max_poll_records, "client_id": self.client_id, **self.settings},
            k.input_topic, listener)

    def producer(self) -> BrokerProducer:
        """The event producer: every replica acknowledges; the caller sends the whole set again after a failure."""
        k = self.kafka
        if self.client == "confluent-kafka":
            return ConfluentProducer(rdkafka_producer_config(k.bootstrap_servers, client_id=self.client_id,
                                                             settings=self.settings, timeout_s=self.timeout_s))
        # bootstrap_timeout_ms as the consumer's: kafka-python's default (30 s) outlasts the back-off's per-try time
        return KafkaPythonProducer({"bootstrap_servers": k.bootstrap_servers, **producer_config(self.timeout_s),
                                    "bootstrap_timeout_ms": 5000, "client_id": self.client_id, **self.settings})


def broker_clients(settings: Settings) -> BrokerClients:
    """The one factory of the detector's consumer and event producer (``kafka.client``)."""
    return BrokerClients(settings)

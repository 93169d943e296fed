"""Security basics: secrets stay out of reprs, error messages and logs; every Kafka client gets the security settings;
HTTP servers bind loopback unless configured."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from logbert_core.config import ConfigError, Settings, load_settings, redact_url
from streamer import cli

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "hdfs.toml"
BUNDLE = REPO / "models" / "hdfs"
SASL_PW = "sasl-Pw-5e1d"
REDIS_PW = "redis-Pw-77ab"
SECURE = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "logad",
          "sasl_plain_password": SASL_PW, "ssl_cafile": "/etc/ssl/ca.pem"}


def secure_env(redis_url: str = "redis://127.0.0.1:6379/0", **kafka: str) -> dict[str, str]:
    env = {f"LOGAD_KAFKA__{k.upper()}": v for k, v in {**SECURE, **kafka}.items()}
    env["LOGAD_REDIS__URL"] = redis_url.replace("redis://", f"redis://:{REDIS_PW}@", 1)
    return env


def test_settings_repr_and_str_hide_passwords():
    s = load_settings(CONFIG, kafka=SECURE, redis={"url": f"rediss://app:{REDIS_PW}@r:6380/0"})
    from streamer.kafka_clients import client_settings

    assert client_settings(s.kafka, "kafka-python")["sasl_plain_password"] == SASL_PW  # still usable
    for text in (repr(s), str(s), repr(s.kafka), repr(s.redis), str(s.kafka)):
        assert SASL_PW not in text and REDIS_PW not in text


@pytest.mark.parametrize("env", [
    {"LOGAD_REDIS__URL": f"http://:{REDIS_PW}@r:6379/0"},  # wrong scheme: the value is echoed, redacted
    {"LOGAD_REDIS__URL": f"redis//:{REDIS_PW}@r:6379/0"},
    {"LOGAD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "LOGAD_KAFKA__SASL_PLAIN_PASSWORD": SASL_PW},  # no mechanism
    {"LOGAD_KAFKA__SASL_PASSWORD": SASL_PW},  # a misspelt field: rejected, value not shown
])
def test_config_errors_do_not_echo_secrets(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings(CONFIG)
    assert SASL_PW not in str(err.value) and REDIS_PW not in str(err.value)
    assert "redis.url" in str(err.value) or "kafka" in str(err.value)


def test_redact_url():
    assert redact_url(f"rediss://app:{REDIS_PW}@r:6380/0") == "rediss://***@r:6380/0"
    assert redact_url("redis://r:6379/0") == "redis://r:6379/0"
    assert redact_url(f"redis://:a/b{REDIS_PW}@r/0") == "redis://***@r/0"  # an unescaped '/' in the password


def test_http_servers_bind_loopback_unless_configured():
    from streamer.http import StatusServer

    s = Settings()
    assert s.http.host == "127.0.0.1" and s.serve.host == "127.0.0.1"
    server = StatusServer(s.http.host, 0, lambda: (True, {}))
    try:
        assert server._server.server_address[0] == "127.0.0.1"
    finally:
        server._server.server_close()


class _Captured(Exception):
    pass


def _capture(store: dict[str, Any]):
    def fake(*args: Any, **kwargs: Any) -> Any:
        store.update(kwargs)
        raise _Captured

    return fake


def test_every_cli_kafka_client_gets_the_security_settings(monkeypatch, tmp_path):
    import kafka

    from streamer import doctor, kafka_io

    env = secure_env()
    want = dict(SECURE)
    runner = CliRunner()
    kafka_log = logging.getLogger("kafka")
    monkeypatch.setattr(kafka_log, "level", kafka_log.level)  # the commands quiet kafka-python; undone after

    seen: dict[str, Any] = {}
    monkeypatch.setattr(kafka, "KafkaConsumer", _capture(seen))
    res = runner.invoke(cli.main, ["tail", "--config", str(CONFIG)], env=env)
    assert isinstance(res.exception, _Captured) and want.items() <= seen.items()

    seen.clear()
    monkeypatch.setattr(kafka_io, "produce_file", _capture(seen))
    (tmp_path / "a.log").write_text("line\n")
    res = runner.invoke(cli.main, ["replay", str(tmp_path / "a.log"), "--config", str(CONFIG)], env=env)
    assert isinstance(res.exception, _Captured) and want.items() <= seen.items()

    seen.clear()
    monkeypatch.setattr(kafka, "KafkaAdminClient", _capture(seen))
    with pytest.raises(_Captured):
        doctor.check_kafka(load_settings(CONFIG, kafka=SECURE), timeout_s=1)
    assert want.items() <= seen.items()


@pytest.mark.integration
def test_secrets_never_reach_the_logs(broker, redis_url, tmp_path):
    env = dict(os.environ, **secure_env(redis_url, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN"),
               LOGAD_KAFKA__BOOTSTRAP_SERVERS=broker.url, LOGAD_HTTP__PORT="0")
    env.pop("LOGAD_KAFKA__SSL_CAFILE")
    doctor = subprocess.run([sys.executable, "-m", "streamer.cli", "-v", "doctor", "--config", str(CONFIG),
                             "--timeout", "1"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert doctor.returncode == 1  # tansu speaks no SASL: the broker check fails, and says so
    assert "redis://***@127.0.0.1" in doctor.stdout
    log_path = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "-v", "run", "--config", str(CONFIG), "--model",
                             str(BUNDLE)], env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while "bootstrap" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)  # a few connection attempts, each logged at INFO
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    logged = log_path.read_text()
    assert "consuming" in logged and "bootstrap" in logged  # it did log, at -v
    for text in (doctor.stdout, doctor.stderr, logged):
        assert SASL_PW not in text and REDIS_PW not in text

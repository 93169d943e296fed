"""Settings: TOML + environment, readable errors naming the field, the public env names."""

from __future__ import annotations

from pathlib import Path

import pytest

from logbert_core.config import ConfigError, bundle_fields, load_settings

HDFS = Path(__file__).resolve().parents[2] / "config" / "hdfs.toml"


def test_public_env_names_override_the_file(monkeypatch):
    env = {"LOGAD_KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "LOGAD_KAFKA__INPUT_TOPIC": "in",
           "LOGAD_KAFKA__OUTPUT_TOPIC": "out", "LOGAD_KAFKA__GROUP_ID": "g", "LOGAD_REDIS__URL": "redis://r:1/2",
           "LOGAD_SESSION__IDLE_TIMEOUT_S": "12.5", "LOGAD_HTTP__PORT": "9100"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings(HDFS)
    assert (s.kafka.bootstrap_servers, s.kafka.input_topic, s.kafka.output_topic, s.kafka.group_id) == (
        "k1:9092,k2:9092", "in", "out", "g")
    assert (s.redis.url, s.session.idle_timeout_s, s.http.port) == ("redis://r:1/2", 12.5, 9100)
    assert s.session.key_regex == r"blk_-?\d+"  # the rest still comes from the file
    assert s.kafka.dlq == "in.dlq"


def test_defaults_without_a_file():
    s = load_settings(None)
    assert s.kafka.input_topic == "logs.raw" and s.kafka.output_topic == "logs.anomalies"


@pytest.mark.parametrize("var,value,needle", [
    ("LOGAD_HTTP__PORT", "70000", "http.port"),
    ("LOGAD_SESSION__IDLE_TIMEOUT_S", "-1", "session.idle_timeout_s"),
    ("LOGAD_REDIS__URL", "http://x", "redis.url"),
    ("LOGAD_KAFKA__SECURITY_PROTOCOL", "TLS", "kafka.security_protocol"),
    ("LOGAD_SCORING__SMALL_HISTORY_MODEL", "max", "scoring.small_history_model"),
])
def test_invalid_values_name_the_field(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings(HDFS)
    assert needle in str(err.value) and var in str(err.value)


def test_a_removed_setting_is_a_config_error_naming_it(tmp_path, monkeypatch):
    # detector.max_wait_ms did nothing (the scorer never waited on it) and is gone: a config that still sets it
    # gets the setting named, not a traceback; so does the environment variable
    cfg = tmp_path / "c.toml"
    cfg.write_text("[detector]\nmax_wait_ms = 200\n")
    with pytest.raises(ConfigError, match=r"setting detector\.max_wait_ms no longer exists: .*; delete it"):
        load_settings(cfg)
    cfg.write_text("[detector]\nmax_wait = 200\n")  # a typo is not a removed setting
    with pytest.raises(ConfigError, match=r"detector\.max_wait .*not permitted"):
        load_settings(cfg)
    monkeypatch.setenv("LOGAD_DETECTOR__MAX_WAIT_MS", "200")
    with pytest.raises(ConfigError, match="LOGAD_DETECTOR__MAX_WAIT_MS"):
        load_settings(None)


def test_cross_field_rule_is_explained(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nmax_len = 16\nstride = 32\n")
    with pytest.raises(ConfigError, match="stride"):
        load_settings(cfg)


def test_rest_horizon_defaults_to_the_idle_timeout_and_may_not_be_shorter(tmp_path, monkeypatch):
    s = load_settings(HDFS)
    assert s.session.rest_horizon_s is None and s.session.rest_s == s.session.idle_timeout_s == 300
    monkeypatch.setenv("LOGAD_SESSION__IDLE_TIMEOUT_S", "30")
    monkeypatch.setenv("LOGAD_SESSION__REST_HORIZON_S", "600")
    s = load_settings(HDFS)
    assert (s.session.idle_timeout_s, s.session.rest_s) == (30, 600)
    monkeypatch.setenv("LOGAD_SESSION__REST_HORIZON_S", "10")
    with pytest.raises(ConfigError, match="rest_horizon_s"):
        load_settings(HDFS)


def test_redis_keys_must_outlive_the_idle_timeout_and_the_rest_horizon(monkeypatch):
    monkeypatch.setenv("LOGAD_SESSION__TTL_S", "300")  # the HDFS config closes and judges sessions at 300 s
    with pytest.raises(ConfigError, match=r"session.ttl_s \(300\) must exceed"):
        load_settings(HDFS)
    monkeypatch.setenv("LOGAD_SESSION__TTL_S", "3600")
    assert load_settings(HDFS).session.ttl_s == 3600


def test_settings_are_frozen():
    s = load_settings(HDFS)
    with pytest.raises(Exception):
        s.kafka = None  # type: ignore[misc]


def test_bundle_fields_ignore_runtime_sections(monkeypatch):
    base = bundle_fields(load_settings(HDFS))
    monkeypatch.setenv("LOGAD_KAFKA__INPUT_TOPIC", "x")
    monkeypatch.setenv("LOGAD_SESSION__IDLE_TIMEOUT_S", "5")
    assert bundle_fields(load_settings(HDFS)) == base
    monkeypatch.setenv("LOGAD_PARSER__SIM_TH", "0.7")
    assert bundle_fields(load_settings(HDFS))["parser.sim_th"] == 0.7


def load_toml(tmp_path, text):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    return load_settings(cfg)


@pytest.mark.parametrize("toml,needle", [
    ("[log]\nline_regex = '(unclosed'\n", "log.line_regex"),
    ("[session]\nkey_regex = '['\n", "session.key_regex"),
    ("[[parser.masking]]\nregex_pattern = '('\nmask_with = 'X'\n", "parser.masking.0.regex_pattern"),
])
def test_a_regex_that_does_not_compile_is_a_config_error_naming_the_setting(tmp_path, toml, needle):
    with pytest.raises(ConfigError) as err:
        load_toml(tmp_path, toml)
    assert f"invalid setting {needle} " in str(err.value) and "not a valid regular expression" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mask_with", ["\\9", "\\q", "\\g<x>"])
def test_a_mask_name_re_sub_cannot_insert_is_a_config_error(tmp_path, mask_with):
    with pytest.raises(ConfigError, match=r"parser\.masking\.0: mask_with .* is not a valid replacement"):
        load_toml(tmp_path, f"[[parser.masking]]\nregex_pattern = 'a'\nmask_with = '{mask_with}'\n")


@pytest.mark.parametrize("toml,missing", [
    ("[log]\nline_regex = '^(?P<date>\\d+) (?P<msg>.*)$'\n", "['content', 'time']"),  # timestamp_fields, content
    ("[session]\nkind = 'field_window'\nfield = 'node'\n", "['node']"),  # the default HDFS line has no node
])
def test_a_line_regex_without_the_groups_the_config_names_is_refused_at_load(tmp_path, toml, missing):
    with pytest.raises(ConfigError) as err:
        load_toml(tmp_path, toml)
    assert str(err.value) == f"invalid settings: log.line_regex lacks the named group(s) {missing}"


def test_timestamp_fields_may_not_be_empty(tmp_path):
    with pytest.raises(ConfigError, match=r"log\.timestamp_fields"):
        load_toml(tmp_path, "[log]\ntimestamp_fields = []\n")


def test_field_window_sessions_need_a_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_toml(tmp_path, "[session]\nkind = 'field_window'\n")
    assert "session.field is required when session.kind = 'field_window'" in str(err.value)
    assert "lacks the named group" not in str(err.value)


@pytest.mark.parametrize("section", ["train", "detector"])
def test_devices_are_the_ones_torch_is_asked_for(tmp_path, monkeypatch, section):
    with pytest.raises(ConfigError) as err:
        load_toml(tmp_path, f"[{section}]\ndevice = 'tpu'\n")
    assert f"invalid setting {section}.device (got 'tpu'): must be 'auto', 'cpu', 'cuda' or 'cuda:N'" in str(err.value)
    for ok in ("auto", "cpu", "cuda", "cuda:1"):
        monkeypatch.setenv(f"LOGAD_{section.upper()}__DEVICE", ok)
        assert getattr(load_settings(None), section).device == ok


def test_every_deliberate_error_is_a_logad_error_and_still_a_value_error():
    from logbert_core.bundle import BundleError
    from logbert_core.errors import LogadError, Unavailable
    from logbert_core.parsing import LineFormatError
    from logbert_core.runtime import DeviceError, SettingsMismatch
    from streamer.errors import OutageError, StartupError
    from streamer.kafka_io import KafkaIOError

    for cls in (ConfigError, BundleError, LineFormatError, DeviceError, SettingsMismatch):
        assert issubclass(cls, LogadError) and issubclass(cls, ValueError)  # callers that caught ValueError still do
    for cls in (StartupError, OutageError, Unavailable):
        assert issubclass(cls, LogadError)
    assert issubclass(KafkaIOError, Unavailable)

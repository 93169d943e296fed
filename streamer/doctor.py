"""``logad doctor``: checks what ``logad run`` needs before it starts, and says how to fix what is wrong.

Each check is independent and read-only (``create_topics`` is the one opt-in write): the broker answers with the
configured security settings and has the input, output and dead-letter topics; Redis answers PING, is recent enough
for the window scripts and will not evict session state; the bundle loads and agrees with the config. Secrets never
appear in the report: URLs are shown without their user-info, and SASL passwords are not shown at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from logbert_core.calibration import length_span
from logbert_core.config import Settings, redact_url

if TYPE_CHECKING:
    from logbert_core.bundle import Bundle

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"
MIN_REDIS = (5, 0)  # multi-field HSET and the scripting the window store relies on


@dataclass(frozen=True, slots=True)
class Finding:
    status: str  # ok | warn | FAIL | info
    area: str  # kafka | redis | model | http
    message: str
    fix: str = ""


def check_kafka(settings: Settings, timeout_s: float, create_topics: bool = False) -> list[Finding]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError

    from streamer.kafka_clients import client_settings
    from streamer.kafka_io import KafkaSettingsError

    k = settings.kafka
    out: list[Finding] = []
    where = f"{k.bootstrap_servers} ({k.security_protocol})"
    try:
        kw = client_settings(k, "kafka-python")
    except KafkaSettingsError as exc:
        return [Finding(FAIL, "kafka", str(exc), "fix kafka.client_config or the kafka security settings")]
    try:
        admin = KafkaAdminClient(**{"bootstrap_servers": k.bootstrap_servers, "client_id": "logad-doctor", **kw,
                                    "request_timeout_ms": int(timeout_s * 1000),
                                    "bootstrap_timeout_ms": int(timeout_s * 1000)})
    except KafkaError as exc:
        fix = ("check kafka.bootstrap_servers / LOGAD_KAFKA__BOOTSTRAP_SERVERS and that the broker is up"
               + ("; with SASL/SSL also kafka.security_protocol, kafka.sasl_* and kafka.ssl_cafile"
                  if k.security_protocol != "PLAINTEXT" else ""))
        return [Finding(FAIL, "kafka", f"broker {where} not reachable: {exc}", fix)]
    try:
        try:
            topics = set(admin.list_topics())
            brokers = admin.describe_cluster().get("brokers", [])
        except KafkaError as exc:
            return [Finding(FAIL, "kafka", f"broker {where} answered but listing topics failed: {exc}",
                            "check the client's ACLs (Describe on the cluster and topics)")]
        out.append(Finding(OK, "kafka", f"broker {where} reachable, {len(brokers)} broker(s) in the cluster"))
        wanted = {k.input_topic: ("input", 4), k.output_topic: ("output", 1), k.dlq: ("dead-letter", 1)}
        missing = [t for t in wanted if t not in topics]
        if missing and create_topics:
            for name in missing:
                try:
                    admin.create_topics([NewTopic(name, wanted[name][1], 1)], timeout_ms=int(timeout_s * 1000))
                except KafkaError as exc:
                    out.append(Finding(FAIL, "kafka", f"could not create topic {name}: {exc}",
                                       "create it with your broker's tools, or grant Create on it"))
                else:
                    out.append(Finding(OK, "kafka", f"created topic {name} ({wanted[name][1]} partition(s), "
                                                    "replication 1: raise it for production)"))
                    topics.add(name)
        present = [t for t in wanted if t in topics]
        parts: dict[str, int] = {}
        if present:
            try:
                for info in admin.describe_topics(present):
                    parts[info.get("name", info.get("topic"))] = len(info.get("partitions") or [])
            except KafkaError:
                pass
        for name, (role, n) in wanted.items():
            if name in topics:
                count = f", {parts[name]} partition(s)" if name in parts else ""
                out.append(Finding(OK, "kafka", f"{role} topic {name} exists{count}"))
            else:
                out.append(Finding(
                    FAIL, "kafka", f"{role} topic {name} does not exist",
                    f"logad doctor --create-topics, or kafka-topics.sh --bootstrap-server {k.bootstrap_servers} "
                    f"--create --topic {name} --partitions {n}"
                    + (" (its partitions bound how many detector processes share the work)" if role == "input"
                       else "")))
    finally:
        admin.close()
    if k.input_topic in topics:
        out += _group_lag(settings, timeout_s)
    return out


def _group_lag(settings: Settings, timeout_s: float) -> list[Finding]:
    from streamer.kafka_clients import client_settings
    from streamer.kafka_io import KafkaIOError, committed_offsets, end_offsets

    k = settings.kafka
    kw = client_settings(k, "kafka-python")  # check_kafka has refused settings kafka-python cannot honour
    try:
        ends = end_offsets(k.bootstrap_servers, k.input_topic, timeout_s=timeout_s, **kw)
        done = committed_offsets(k.bootstrap_servers, k.group_id, k.input_topic, timeout_s=timeout_s, **kw)
    except KafkaIOError as exc:
        return [Finding(WARN, "kafka", f"could not read the lag of group {k.group_id}: {exc}")]
    if all(v is None for v in done.values()):
        return [Finding(INFO, "kafka", f"group {k.group_id} has committed nothing on {k.input_topic} yet "
                                       f"({sum(ends.values())} record(s) in the topic)")]
    lag = sum(max(0, end - (done.get(p) or 0)) for p, end in ends.items())
    return [Finding(INFO, "kafka", f"group {k.group_id} is {lag} record(s) behind on {k.input_topic}")]


def check_redis(settings: Settings, timeout_s: float) -> list[Finding]:
    import redis

    url = settings.redis.url
    shown = redact_url(url)
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except ValueError as exc:
        return [Finding(FAIL, "redis", f"redis.url {shown} is not usable: {exc}",
                        "fix redis.url / LOGAD_REDIS__URL (redis://[:password@]host:port/db, rediss:// for TLS)")]
    out: list[Finding] = []
    try:
        client.ping()
        info = client.info()
        try:
            save: str | None = str(client.config_get("save").get("save", ""))
        except redis.ResponseError:  # CONFIG disabled (managed Redis): cannot tell
            save = None
    except redis.AuthenticationError as exc:
        return [Finding(FAIL, "redis", f"{shown}: authentication failed ({exc})",
                        "put the password in the URL: redis://:PASSWORD@host:port/0 (or user:PASSWORD@ with ACLs)")]
    except redis.RedisError as exc:
        return [Finding(FAIL, "redis", f"{shown} not reachable: {type(exc).__name__}: {exc}",
                        "check redis.url / LOGAD_REDIS__URL and that redis-server is up (rediss:// for TLS)")]
    finally:
        client.close()
    version = str(info.get("redis_version", "?"))
    try:
        major_minor = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        major_minor = (0, 0)
    if major_minor < MIN_REDIS:
        out.append(Finding(FAIL, "redis", f"{shown} answers PING but runs Redis {version}",
                           f"use Redis >= {'.'.join(map(str, MIN_REDIS))}"))
    else:
        out.append(Finding(OK, "redis", f"{shown} answers PING, Redis {version}"))
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        out.append(Finding(WARN, "redis", f"maxmemory-policy is {policy}: under memory pressure Redis may evict "
                                          "open session windows and pending windows",
                           "CONFIG SET maxmemory-policy noeviction (and size maxmemory for the open sessions)"))
    if not info.get("aof_enabled") and save == "":
        out.append(Finding(WARN, "redis", "no persistence: a Redis restart loses open sessions and pending windows",
                           "run redis-server with --appendonly yes (snapshots alone lose the last minutes)"))
    return out


def check_model(settings: Settings, model_dir: str | Path) -> list[Finding]:
    from logbert_core.bundle import BundleError, load_bundle
    from logbert_core.runtime import DeviceError, SettingsMismatch, check_settings, resolve_device

    try:
        bundle = load_bundle(model_dir)
    except BundleError as exc:
        return [Finding(FAIL, "model", f"bundle {model_dir} does not load: {exc}",
                        "point --model at a directory written by logad-train (bundle.json + model.safetensors)")]
    out = [Finding(OK, "model", f"bundle {bundle.version} loads ({bundle.vocab.n_templates} templates, "
                                f"max_len {bundle.model_config.max_len})")]
    try:
        check_settings(settings, bundle)
    except SettingsMismatch as exc:
        out.append(Finding(FAIL, "model", str(exc).split("\nfix: ")[0],
                           "run with the config the bundle was trained with, or retrain with logad-train"))
    else:
        out.append(Finding(OK, "model", "the config agrees with the bundle (parsing, sessions, windows, scoring)"))
    out += _promise_findings(bundle)
    try:
        device = resolve_device(settings.detector.device)
    except DeviceError as exc:
        out.append(Finding(FAIL, "model", str(exc), "set detector.device = 'auto' or 'cpu'"))
    else:
        out.append(Finding(OK, "model", f"scoring device: {device}"))
    return out


def _promise_findings(bundle: Bundle) -> list[Finding]:
    """What the bundle's calibration promises about false positives, and what its trainer warned about."""
    p = bundle.thresholds.promise
    if p is None:
        return [Finding(WARN, "model", "the bundle states no false-positive promise (trained before calibration "
                                       "on all normal history)", "retrain with logad-train")]
    out = [Finding(INFO, "model", f"decision: {p.describe()}")]
    history = bundle.metrics.get("data", {}).get("history", {})
    if history.get("summary"):  # bundles trained since the history's span was recorded
        out.append(Finding(INFO, "model", f"history: {history['summary']}"))
    for rule, table in bundle.thresholds.by_length.items():
        spans = ", ".join(length_span(c) for c in sorted(table)) or "none"
        out.append(Finding(INFO, "model", f"{rule} judges windows of {spans} entries, the lengths its calibration "
                                          "saw; other windows are left to the exact rules "
                                          "(logad_windows_model_skipped_total counts them)"))
    if bundle.vocab.routine_levels:
        seen = {n["level"]: n for n in bundle.metrics.get("calibration", {}).get("novelty_forward", [])}
        why = "; ".join(f"{lv}: {seen[lv]['sessions']} of {seen[lv]['of']} later normal sessions" for lv in
                        bundle.vocab.routine_levels if lv in seen)
        out.append(Finding(INFO, "model", f"new templates at level(s) {', '.join(bundle.vocab.routine_levels)} are "
                                          f"routine in the training history and flag nothing by themselves ({why})"))
    fw = bundle.metrics.get("calibration", {}).get("forward_unseen")
    if fw and fw.get("rule_on") and fw.get("of"):
        out.append(Finding(INFO, "model", f"forward test: {fw['sessions']} of {fw['of']} later normal sessions held a "
                                          f"template the earlier half of the history never had ({fw['rate']:.4f}): "
                                          "what unseen_template flags under the drift the history shows, where "
                                          "new templates come in bursts that leave-one-out does not count"))
    out += [Finding(WARN, "model", f"calibration: {w}", "train on a longer normal history, or accept the rate "
                                                        "stated above") for w in p.warnings]
    for w in bundle.metrics.get("warnings", []):
        if w not in p.warnings:
            out.append(Finding(WARN, "model", f"training: {w}", "see the bundle's metrics.json"))
    return out


def check_http(settings: Settings) -> list[Finding]:
    h = settings.http
    if not h.port:
        return [Finding(INFO, "http", "status server disabled (http.port = 0)")]
    loopback = h.host in ("127.0.0.1", "::1", "localhost")
    if loopback:
        return [Finding(INFO, "http", f"/health /ready /metrics on {h.host}:{h.port} (loopback only)")]
    return [Finding(INFO, "http", f"/health /ready /metrics on {h.host}:{h.port}: reachable from the network, "
                                  "unauthenticated; keep it on a private network")]


def run_checks(settings: Settings, model_dir: str | Path | None, timeout_s: float = 5.0,
               create_topics: bool = False) -> list[Finding]:
    checks: list[Callable[[], list[Finding]]] = [lambda: check_kafka(settings, timeout_s, create_topics),
                                                 lambda: check_redis(settings, timeout_s)]
    if model_dir is not None:
        checks.append(lambda: check_model(settings, model_dir))
    checks.append(lambda: check_http(settings))
    out: list[Finding] = []
    for check in checks:
        out += check()
    return out


def render(findings: list[Finding], elapsed_s: float | None = None) -> str:
    lines = []
    for f in findings:
        lines.append(f"  {f.status:<5} {f.area:<6} {f.message}")
        if f.fix and f.status in (FAIL, WARN):
            lines.append(f"{'':14}fix: {f.fix}")
    failed = sum(f.status == FAIL for f in findings)
    warned = sum(f.status == WARN for f in findings)
    took = f" ({elapsed_s:.1f} s)" if elapsed_s is not None else ""
    lines.append(f"{failed} problem(s), {warned} warning(s){took}" if failed or warned else f"all good{took}")
    return "\n".join(lines)


def doctor(settings: Settings, model_dir: str | Path | None, timeout_s: float = 5.0,
           create_topics: bool = False) -> tuple[bool, str]:
    t0 = time.monotonic()
    findings = run_checks(settings, model_dir, timeout_s, create_topics)
    return not any(f.status == FAIL for f in findings), render(findings, time.monotonic() - t0)

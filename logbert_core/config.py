"""Settings: one frozen pydantic-settings model, nested per area.

Sources, highest priority first: keyword arguments, environment variables ``LOGAD_<SECTION>__<FIELD>``, the TOML
file given with ``--config``, defaults. The sections ``log``, ``session`` (its key rule), ``parser``, ``model`` and
``scoring`` describe how a bundle was built; ``logad run`` checks that its settings agree with the bundle it loads
(see ``bundle_fields``). Kafka, Redis, HTTP and detector sections are runtime-only.

Defined here rather than in ``streamer`` because ``logad-train`` reads the same files and may not import ``streamer``.
Nothing reads the environment at import time: ``load_settings`` does, when called.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from logbert_core.errors import LogadError
from logbert_core.ingest import LineReader
from logbert_core.parsing import DrainParams, LineFormat, SessionRule


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _compiles(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return value


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _device(value: str) -> str:
    if _DEVICE.fullmatch(value) is None:
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return value


# a regular expression, compiled at load so that a bad one is a config error naming the setting, not a crash later
Regex = Annotated[str, AfterValidator(_compiles)]
# a torch device the trainer and the detector accept ("auto": cuda when available, else cpu)
Device = Annotated[str, AfterValidator(_device)]


class MaskRule(_Section):
    regex_pattern: Regex
    mask_with: str

    @model_validator(mode="after")
    def _check_mask(self) -> MaskRule:
        # Drain3 inserts "<mask_with>" with re.sub, which reads backslashes as escapes and group references
        try:
            re.compile(self.regex_pattern).sub(f"<{self.mask_with}>", "")
        except (re.error, IndexError) as exc:
            raise ValueError(f"mask_with {self.mask_with!r} is not a valid replacement for regex_pattern "
                             f"{self.regex_pattern!r}: {exc}") from exc
        return self


class LogSection(_Section):
    family: str = "hdfs"
    line_regex: Regex = (
        r"^(?P<date>\d{6}) (?P<time>\d{6}) (?P<pid>\d+) (?P<level>[A-Z]+) (?P<component>[^:]+): (?P<content>.*)$"
    )
    timestamp_fields: tuple[str, ...] = Field(default=("date", "time"), min_length=1)
    timestamp_format: str = "%y%m%d %H%M%S"
    # Fluent Bit (and other shippers) send a JSON object; the line is under the first of these fields present.
    json_fields: tuple[str, ...] = ("log", "message")
    max_line_bytes: int = Field(default=1_048_576, gt=0)


class SessionSection(_Section):
    kind: Literal["regex", "field_window"] = "regex"
    key_regex: Regex = r"blk_-?\d+"
    field: str = ""
    window_s: int = Field(default=300, gt=0)
    idle_timeout_s: float = Field(default=30.0, gt=0)  # runtime: a session idle this long is closed and scored
    ttl_s: int = Field(default=86_400, gt=0)  # runtime: Redis keys of a session expire after this much inactivity
    # premature_end calls a session stopped only once it has been quiet this long (None: idle_timeout_s). Training
    # learns where sessions rest for this long; the detector scores a closing window at idle_timeout_s for the
    # other rules, holds a premature_end verdict until the log has gone on this long without the session, and
    # drops it if the session comes back first.
    rest_horizon_s: float | None = Field(default=None, gt=0)
    # Key floods (docs/operations.md, "Limits of logad run"). At most max_open sessions are open under one Redis
    # prefix (namespace and bundle, every worker together; 0: no cap). A line that would open one more is refused:
    # it goes to the dead-letter topic with reason session_cap, and the sessions already open keep their windows.
    max_open: int = Field(default=100_000, ge=0)
    # A closed session's keys are kept this long after it closes (not ttl_s): a replayed line of it must stay a
    # no-op, and a session that comes back continues its window as training saw it (normal HDFS blocks rest up to
    # ~7 h between write and delete); never longer than ttl_s. At most max_closed closed sessions are kept (0: no
    # cap); past it the ones closed longest ago are forgotten first, never one closed within the replay horizon.
    closed_ttl_s: int = Field(default=28_800, gt=0)
    max_closed: int = Field(default=500_000, ge=0)

    @model_validator(mode="after")
    def _check(self) -> SessionSection:
        if self.kind == "field_window" and not self.field:
            raise ValueError("session.field is required when session.kind = 'field_window': the named group of "
                             "log.line_regex that identifies the session (BGL: field = \"node\")")
        if self.rest_horizon_s is not None and self.rest_horizon_s < self.idle_timeout_s:
            raise ValueError(f"session.rest_horizon_s ({self.rest_horizon_s:g}) must be at least "
                             f"session.idle_timeout_s ({self.idle_timeout_s:g}): a session is closed before its "
                             "silence is judged")
        if self.ttl_s <= self.rest_s:
            raise ValueError(f"session.ttl_s ({self.ttl_s}) must exceed session.idle_timeout_s and rest_horizon_s "
                             f"({self.rest_s:g}), with room for backlogs and outages: a session whose Redis keys "
                             "expire before it is closed and judged loses its last window")
        return self

    @property
    def rest_s(self) -> float:
        """How long a session must be quiet before ``premature_end`` judges where it stopped."""
        return self.rest_horizon_s if self.rest_horizon_s is not None else self.idle_timeout_s


# What a new log family gets when its config names no masks: parameters every family prints. With them, a similarity
# of 0.7 groups Loghub's 16 systems best of 0.4-0.8 (mean grouping accuracy 0.813 against 0.735 for the old 0.4
# without masks; `logad-train parser-check`, docs/evaluation.md "Parser settings"). A config's masks replace these.
_BOUNDED = r"((?<=[^A-Za-z0-9])|^)({})((?=[^A-Za-z0-9])|$)"
GENERIC_MASKS = (
    MaskRule(regex_pattern=_BOUNDED.format(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"), mask_with="UUID"),
    MaskRule(regex_pattern=r"((?<=[^A-Za-z0-9])|^)(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(:\d+)?((?=[^A-Za-z0-9])|$)",
             mask_with="IP"),
    MaskRule(regex_pattern=_BOUNDED.format(r"0x[a-fA-F0-9]+"), mask_with="HEX"),
    MaskRule(regex_pattern=_BOUNDED.format(r"[\-\+]?\d+(\.\d+)?"), mask_with="NUM"),
)


class ParserSection(_Section):
    sim_th: float = Field(default=0.7, gt=0, le=1)
    depth: int = Field(default=4, ge=3)
    max_children: int = Field(default=100, gt=0)
    max_clusters: int | None = Field(default=None, gt=0)
    extra_delimiters: tuple[str, ...] = ()
    masking: tuple[MaskRule, ...] = GENERIC_MASKS
    # unseen templates: "unk" = always the unknown key; "nearest" = the closest trained template if similar enough
    unknown: Literal["unk", "nearest"] = "unk"


class ModelSection(_Section):
    max_len: int = Field(default=64, gt=1)
    stride: int = Field(default=32, gt=0)
    n_layer: int = Field(default=2, gt=0)
    n_head: int = Field(default=4, gt=0)
    n_embd: int = Field(default=64, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    hypersphere_weight: float = Field(default=0.1, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ModelSection:
        if self.stride > self.max_len:
            raise ValueError(f"model.stride ({self.stride}) must be <= model.max_len ({self.max_len})")
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd ({self.n_embd}) must be a multiple of model.n_head ({self.n_head})")
        return self


class TrainSection(_Section):
    epochs: int = Field(default=20, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    mask_ratio: float = Field(default=0.15, gt=0, lt=1)
    patience: int = Field(default=3, gt=0)
    # each epoch takes at least this many optimizer steps (passing over a small data set again); 0: one pass
    min_epoch_steps: int = Field(default=50, ge=0)
    # Learning-rate warm-up, in epochs: linear up to lr, then lr * sqrt(warm-up steps / step); 0: lr throughout.
    # Off by default: with 1 epoch, 6 of the benchmark's 9 fits ended at a higher validation loss, and the shipped
    # decision moved little either way (docs/evaluation.md, "Training schedule").
    warmup_epochs: float = Field(default=0.0, ge=0)
    seed: int = 1234
    device: Device = "auto"  # "auto": cuda when available, else cpu
    bf16: bool = True
    # chronological split of the normal training sessions: the last fractions are validation and calibration
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    calib_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    # The model rules are calibrated on sessions the model did not fit on. With at most this many normal sessions,
    # every one of them gets such a score: crossfit_folds models, each fitted without one chronological fold,
    # score that fold (a small history cannot spare a held-out slice: 12 sessions cannot place a threshold). With
    # more, the calibration slice (calib_fraction) is held out of the fit. 0: always the slice.
    crossfit_max_sessions: int = Field(default=2000, ge=0)
    crossfit_folds: int = Field(default=5, ge=2)
    # logad-train warns when the shipped decision catches fewer of the training period's labelled anomalies
    expected_recall: float = Field(default=0.9, ge=0, le=1)
    # Train and calibrate on the windows a live detector cuts: besides full and final windows, a closing window
    # wherever a session's log went quiet for session.idle_timeout_s (it reopens with its next line). Without them
    # a live HDFS stream, whose blocks rest for hours between write and delete, meets windows training never saw.
    live_windows: bool = True
    # threads that score calibration and evaluation windows side by side (CPU; scores do not depend on it);
    # None: every core, as an offline job has the machine to itself
    score_threads: int | None = Field(default=None, gt=0)
    # the most frequent windows of the normal training sessions (seen at least twice), kept in the bundle so that a
    # detector can score them into its cache at start-up (detector.warm_cache); 0: none
    warm_windows: int = Field(default=1024, ge=0)

    @property
    def scoring_threads(self) -> int:
        return self.score_threads or os.cpu_count() or 1


class ScoringSection(_Section):
    top_g: int = Field(default=5, gt=0)
    mask_copies: int = Field(default=8, gt=0)
    # the false-positive rate on normal sessions that the whole decision may spend (logbert_core.calibration)
    target_fpr: float = Field(default=0.005, gt=0, lt=1)
    novel_template: bool = True  # a template never seen in training flags the window
    # templates that never occurred together in a normal training window flag it; not for field_window sessions
    # (a clock window's set is where the clock cut, not a lifecycle)
    novel_template_set: bool = True
    rare_template: bool = True  # a template rarer in normal training windows than the calibrated rarity flags it
    use_distance: bool = True  # the hypersphere distance also decides
    # A session that goes quiet where normal sessions keep going (judge.RestStats) flags its closing window. Not
    # learned for field_window sessions: those end at a clock boundary, not where their logs stop.
    premature_end: bool = True
    n_candidates: int = Field(default=3, gt=0)
    # A history too small to count target_fpr (under 1 / target_fpr - 1 normal sessions): "tail" fires a model rule
    # only past its out-of-fold scores' tail extrapolated to the target, and keeps it off where they have no tail
    # (key misses 0 on nearly every session); "largest" fires it past the largest of them, which holds the rule to
    # 1 / (n + 1) only if the history is a fair sample of the logs to come. A new deployment's first sessions are one
    # stretch of time, and there "largest" costs false positives (docs/evaluation.md, "Small histories").
    small_history_model: Literal["tail", "largest"] = "tail"
    # Levels (the line format's ``level`` group, compared without case) at which a new template may be routine: the
    # trainer's forward test (logbert_core.novelty) decides from the training history whether it is. Others (WARN,
    # ERROR, FATAL ...) always count. () turns the test off.
    routine_levels: tuple[str, ...] = ("TRACE", "DEBUG", "FINE", "FINER", "FINEST", "CONFIG", "VERBOSE", "INFO",
                                       "INFORMATION", "NOTICE")


class DetectorSection(_Section):
    device: Device = "auto"  # "auto": cuda when available, else cpu
    max_batch: int = Field(default=256, gt=0)
    buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    sweep_interval_s: float = Field(default=0.25, gt=0)  # idle sessions wait up to this long past the timeout
    pending_lease_s: float = Field(default=30.0, gt=0)
    outage_budget_s: float = Field(default=300.0, gt=0)
    novel_template_cap: int = Field(default=10_000, gt=0)  # size of the shared registry of new templates
    reload_interval_s: float = Field(default=5.0, gt=0)  # how often to look for a new model bundle
    num_threads: int | None = Field(default=None, gt=0)
    bf16: bool = False  # bfloat16 autocast for scoring (AVX512-BF16/AMX CPUs, CUDA); see docs/performance.md
    score_queue: int = Field(default=16, ge=0)  # jobs waiting for the scorer thread; 0: score in the consume loop
    score_cache: int = Field(default=16_384, ge=0)  # scores of recent distinct windows kept (exact); 0: off
    # At start-up (and for a new bundle), score the bundle's most frequent training windows into the cache, on the
    # scorer thread while the consumer joins its group: the first closes then hit the cache like later ones
    warm_cache: bool = True
    # Threads that score a batch's windows side by side (CPU; each on one intra-op thread, so scores do not depend
    # on it). 1 keeps the other cores for the consume loop, Redis and the broker; raise it on a worker with cores
    # to spare (measured: 1.8-2x on 2 idle cores, docs/performance.md).
    score_threads: int = Field(default=1, gt=0)
    # Every this many seconds, hand the heap's free pages back to the OS (glibc malloc_trim; 0: never). A burst of
    # closes allocates in the scorer's and the loop's malloc arenas, and glibc keeps what was freed: measured in a
    # 10M-line soak, RSS stepped from 381 to 490 MB and stayed there; with a trim every 5 s it stayed at 325-351 MB.
    # A trim takes 1-2 ms (at most 17 ms there), on a thread of its own that holds no Python lock.
    malloc_trim_interval_s: float = Field(default=5.0, ge=0)
    # At most this many anomaly events per minute (by the minute their window was cut), for every worker of the
    # namespace together (0: no limit). The first window past it publishes one storm summary instead; the rest are
    # counted (logad_anomalies_suppressed_total), acknowledged and committed like published ones.
    max_events_per_minute: int = Field(default=600, ge=0)
    # GET /health answers 503 once an outage (or a stall of the loop and the scorer) has lasted this fraction of
    # outage_budget_s, so that an orchestrator restarts a worker stuck where its own budget cannot see.
    health_fraction: float = Field(default=0.5, gt=0, le=1)


# A pass-through client setting's value: librdkafka takes strings, numbers and booleans
ClientValue = str | int | float | bool
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
# Typed settings that hold a secret: each may instead be read from a file, <name>_file (Docker/Kubernetes secrets)
KAFKA_SECRETS = ("sasl_plain_password", "sasl_oauthbearer_client_secret", "ssl_key_password")
# Typed setting -> the librdkafka property it becomes. A pass-through key that names one of these is a config error
# naming both: one setting, one place to look.
KAFKA_TYPED_NAMES = {
    "bootstrap_servers": ("bootstrap.servers", "metadata.broker.list"), "group_id": ("group.id",),
    "session_timeout_ms": ("session.timeout.ms",), "request_timeout_s": ("message.timeout.ms", "delivery.timeout.ms"),
    "security_protocol": ("security.protocol",), "sasl_mechanism": ("sasl.mechanism", "sasl.mechanisms"),
    "sasl_plain_username": ("sasl.username",), "sasl_plain_password": ("sasl.password",),
    "sasl_oauthbearer_token_endpoint_url": ("sasl.oauthbearer.token.endpoint.url", "sasl.oauthbearer.method"),
    "sasl_oauthbearer_client_id": ("sasl.oauthbearer.client.id",),
    "sasl_oauthbearer_client_secret": ("sasl.oauthbearer.client.secret",),
    "sasl_oauthbearer_scope": ("sasl.oauthbearer.scope",),
    "sasl_kerberos_service_name": ("sasl.kerberos.service.name",),
    "sasl_kerberos_principal": ("sasl.kerberos.principal",), "sasl_kerberos_keytab": ("sasl.kerberos.keytab",),
    "ssl_cafile": ("ssl.ca.location",), "ssl_certfile": ("ssl.certificate.location",),
    "ssl_keyfile": ("ssl.key.location",), "ssl_key_password": ("ssl.key.password",),
}
# librdkafka properties logad sets itself because its commit order depends on them: never from the pass-through map
KAFKA_RESERVED = {
    "enable.auto.commit": "offsets are committed only after a batch's events are on the broker",
    "enable.auto.offset.store": "offsets are committed only after a batch's events are on the broker",
    "enable.partition.eof": "the catch-up check reads the end-of-partition events",
    "auto.offset.reset": "each client starts where its command says (the detector: earliest)",
    "heartbeat.interval.ms": "it is derived from kafka.session_timeout_ms",
    "acks": "events must be on every in-sync replica before offsets are committed",
    "request.required.acks": "events must be on every in-sync replica before offsets are committed",
    "enable.idempotence": "logad chooses it for its producers",
}


def kafka_secret_key(name: str) -> bool:
    """Whether a librdkafka property holds a secret (its value is never shown and may come from a file)."""
    return "password" in name or "secret" in name or name in ("ssl.key.pem", "sasl.oauthbearer.config")


def _read_secret(setting: str, path: str) -> str:
    """A secret file's text without its trailing newline; errors name the setting and the path, never the text."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{setting} = {path!r}: cannot read it ({exc.__class__.__name__})") from exc
    value = text.removesuffix("\n").removesuffix("\r")
    if not value or "\n" in value:
        raise ValueError(f"{setting} = {path!r}: the file must hold the secret on one line (empty or more lines)")
    return value


class KafkaSection(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    input_topic: str = "logs.raw"
    output_topic: str = "logs.anomalies"
    dlq_topic: str = ""  # empty: "<input_topic>.dlq"
    # A dead letter's value is cut to this many bytes, so that it fits under the broker's record limit
    # (max.message.bytes, about 1 MB by default) with its headers; headers say when and from how many bytes. The
    # whole record stays on the input topic, at the offset the headers give.
    dlq_max_value_bytes: int = Field(default=900_000, gt=0)
    group_id: str = "logad"
    session_timeout_ms: int = Field(default=10_000, gt=0)
    max_poll_records: int = Field(default=1000, gt=0)
    # Input offsets of finished batches are committed together at most this often (0: after every batch). Each
    # commit is a synchronous round trip the consume loop waits for; a crash replays at most this much more, which
    # adds nothing (appends are idempotent, event ids derive from content). Stopping commits everything first.
    commit_interval_ms: int = Field(default=200, ge=0)
    # The detector's consumer and event producer: librdkafka through confluent-kafka, which decodes records in C
    # (about 1.6 us of CPU per record, against 10 us for kafka-python; docs/performance.md) and waits for the
    # broker's acknowledgements without the GIL, or kafka-python. The other tools' clients are kafka-python.
    client: Literal["confluent-kafka", "kafka-python"] = "confluent-kafka"
    # Security. Every client logad builds gets these (streamer/kafka_clients.py). Each secret may instead come from
    # a file, <name>_file (read at start-up, trailing newline stripped); never logged or shown in repr or errors.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = Field(default=None, repr=False)
    sasl_plain_password_file: str | None = None
    # OAUTHBEARER with OIDC client credentials (librdkafka's sasl.oauthbearer.method = oidc; kafka-python through
    # logad's token provider): the token endpoint, the client's id and secret, and the scope asked for
    sasl_oauthbearer_token_endpoint_url: str | None = None
    sasl_oauthbearer_client_id: str | None = None
    sasl_oauthbearer_client_secret: str | None = Field(default=None, repr=False)
    sasl_oauthbearer_client_secret_file: str | None = None
    sasl_oauthbearer_scope: str | None = None
    # GSSAPI (Kerberos): the broker's service name; the client's principal and keytab (librdkafka only)
    sasl_kerberos_service_name: str = "kafka"
    sasl_kerberos_principal: str | None = None
    sasl_kerberos_keytab: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None  # client certificate (mutual TLS)
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = Field(default=None, repr=False)  # the password of ssl_keyfile, if it has one
    ssl_key_password_file: str | None = None
    # More client settings, under librdkafka's names, passed to librdkafka as they are (TOML [kafka.client_config],
    # env LOGAD_KAFKA__CLIENT_CONFIG as a JSON object). kafka-python clients get the ones with an equivalent
    # (streamer/kafka_clients.py) and refuse the others, unless listed in kafka_python_ignore. A key ending in
    # "_file" reads the value of the key without it from that file (secrets).
    client_config: dict[str, ClientValue] = Field(default_factory=dict, repr=False)  # repr: secrets masked
    kafka_python_ignore: tuple[str, ...] = ()
    # How long one publish waits for the broker's acknowledgements before it is retried (None: outage_budget_s / 5,
    # at most 30 s). At most a quarter of detector.outage_budget_s.
    request_timeout_s: float | None = Field(default=None, gt=0)
    # secrets read from their files at load: typed field name or librdkafka property -> value
    _from_files: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSection:
        # messages name settings and paths, never a secret's value
        if self.security_protocol.startswith("SASL_") and not self.sasl_mechanism:
            raise ValueError(f"kafka.sasl_mechanism is required with security_protocol = {self.security_protocol!r} "
                             f"(one of {', '.join(SASL_MECHANISMS)})")
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL_"):
            raise ValueError(f"kafka.sasl_mechanism = {self.sasl_mechanism!r} needs security_protocol = "
                             "'SASL_SSL' (or 'SASL_PLAINTEXT')")
        oauth = ("sasl_oauthbearer_token_endpoint_url", "sasl_oauthbearer_client_id", "sasl_oauthbearer_client_secret",
                 "sasl_oauthbearer_client_secret_file", "sasl_oauthbearer_scope")
        kerberos = ("sasl_kerberos_principal", "sasl_kerberos_keytab")
        for names, mechanism in ((oauth, "OAUTHBEARER"), (kerberos, "GSSAPI")):
            given = [n for n in names if getattr(self, n) is not None]
            if given and self.sasl_mechanism != mechanism:
                raise ValueError(f"kafka.{given[0]} is set but kafka.sasl_mechanism is {self.sasl_mechanism!r}, "
                                 f"not {mechanism!r}")
        if self.sasl_oauthbearer_token_endpoint_url is not None:
            for name in ("sasl_oauthbearer_client_id", "sasl_oauthbearer_client_secret"):
                if getattr(self, name) is None and getattr(self, f"{name}_file", None) is None:
                    raise ValueError(f"kafka.{name} is required with kafka.sasl_oauthbearer_token_endpoint_url "
                                     f"(env LOGAD_KAFKA__{name.upper()}"
                                     + (f" or LOGAD_KAFKA__{name.upper()}_FILE)" if name.endswith("secret") else ")"))
        for name in KAFKA_SECRETS:
            path = getattr(self, f"{name}_file")
            if path is not None:
                if getattr(self, name) is not None:
                    raise ValueError(f"kafka.{name} and kafka.{name}_file are both set: keep one")
                self._from_files[name] = _read_secret(f"kafka.{name}_file", path)
        self._check_client_config()
        return self

    def _check_client_config(self) -> None:
        typed = {prop: field for field, props in KAFKA_TYPED_NAMES.items() for prop in props}
        for key, value in self.client_config.items():
            name = key.removesuffix("_file")
            where = f"kafka.client_config[{key!r}]"
            if name in typed:
                field = typed[name]
                raise ValueError(f"{where} and kafka.{field} set the same librdkafka property {name!r}: keep the "
                                 f"typed setting (env LOGAD_KAFKA__{field.upper()}) and drop the key")
            if name in KAFKA_RESERVED:
                raise ValueError(f"{where}: logad sets {name!r} itself ({KAFKA_RESERVED[name]}); drop the key")
            if name != key:
                if name in self.client_config:
                    raise ValueError(f"{where} and kafka.client_config[{name!r}] are both set: keep one")
                if not isinstance(value, str):
                    raise ValueError(f"{where} must be a file path")
                self._from_files[name] = _read_secret(where, value)
        for key in self.kafka_python_ignore:
            if key not in self.client_config:
                raise ValueError(f"kafka.kafka_python_ignore names {key!r}, which kafka.client_config does not set")

    def secret(self, name: str) -> str | None:
        """A typed secret setting's value, from the setting or its file."""
        value: str | None = getattr(self, name)
        return value if value is not None else self._from_files.get(name)

    def passthrough(self) -> dict[str, ClientValue]:
        """``client_config`` with each ``<key>_file`` replaced by ``<key>`` and the file's text."""
        out = {k: v for k, v in self.client_config.items() if not k.endswith("_file")}
        out.update({k: v for k, v in self._from_files.items() if k not in KAFKA_SECRETS})
        return out

    def __repr_args__(self) -> Any:
        yield from super().__repr_args__()
        yield "client_config", {k: "***" if kafka_secret_key(k) else v for k, v in self.client_config.items()}

    @property
    def dlq(self) -> str:
        return self.dlq_topic or f"{self.input_topic}.dlq"


class RedisSection(_Section):
    url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)  # may carry a password: never logged
    namespace: str = "logad"
    # redis.url names one node of a Redis Cluster (or a managed cluster-mode endpoint): the client finds the others
    # and sends each call to the node of its slot (streamer/windows.py: every key of one bundle is in one slot)
    cluster: bool = False
    # One Redis call may hang this long (None: detector.outage_budget_s / 5, at most 5 s). At most a quarter of
    # detector.outage_budget_s, so that the budget is spent on retries, not on one hung socket.
    socket_timeout_s: float | None = Field(default=None, gt=0)
    memory_poll_s: float = Field(default=15.0, ge=0)  # INFO memory -> logad_redis_used_memory_bytes (0: never)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("namespace")
    @classmethod
    def _no_hash_tag(cls, v: str) -> str:
        if not v or "{" in v or "}" in v:
            raise ValueError("must be non-empty and hold no '{' or '}': the Redis Cluster hash tag of a bundle's keys "
                             "is its version, which the key names put in braces")
        return v


class HttpSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)  # 0 disables the HTTP server


class ServeSection(_Section):
    """``logad serve``: the on-demand ``POST /detect`` API. Loopback unless configured otherwise."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)  # 0: any free port (logged at start-up)
    max_lines: int = Field(default=10_000, gt=0)  # more lines in one request: 413
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)  # a larger request body: 413
    # What one request may cost (docs/operations.md, "Limits of logad serve"). Sessions are counted while the lines
    # are parsed, and windows before any is scored, so an oversized request is refused (413) before its work is done.
    max_sessions: int = Field(default=2_000, gt=0)
    max_windows: int = Field(default=2_000, gt=0)
    max_response_bytes: int = Field(default=16 * 1024 * 1024, gt=0)  # a larger answer: 413
    request_timeout_s: float = Field(default=10.0, gt=0)  # from the whole body received to the answer: 503 past it
    max_in_flight: int = Field(default=8, gt=0)  # /detect requests admitted at once; more: 429 with Retry-After
    # Sockets: a request's head and body must arrive within header_timeout_s of its first byte (or of the connection),
    # an idle keep-alive connection is closed after keep_alive_s, and past max_connections open connections (or
    # requests in progress) uvicorn answers 503.
    header_timeout_s: float = Field(default=10.0, gt=0)
    keep_alive_s: int = Field(default=5, gt=0)
    max_connections: int = Field(default=128, gt=0)
    # Bearer token for every route but /health, /ready, /metrics and the API docs: the value itself (e.g. env
    # LOGAD_SERVE__TOKEN) or a file holding it (read at start-up). Neither set: no authentication.
    token: str | None = Field(default=None, repr=False)  # never logged or shown in repr
    token_file: str | None = None

    @model_validator(mode="after")
    def _check_token(self) -> ServeSection:
        # messages name the setting, never the value
        if self.token is not None and self.token_file is not None:
            raise ValueError("serve.token and serve.token_file are both set: keep one")
        if self.token is not None and (not self.token.strip() or self.token != self.token.strip()):
            raise ValueError("serve.token is empty or has leading/trailing whitespace")
        return self


class EventSection(_Section):
    """What the anomaly events carry beyond the verdict, and how they are framed on the output topic."""

    # "plain": the value is the event's JSON; "cloudevents-binary": the same value, with CloudEvents 1.0 attributes
    # as Kafka headers (ce_id, ce_source, ...); "cloudevents-structured": the value is a CloudEvents JSON envelope
    # (application/cloudevents+json) with the event as its "data"
    format: Literal["plain", "cloudevents-binary", "cloudevents-structured"] = "plain"
    source: str = ""  # CloudEvents "source"; empty: "urn:logad:<log.family>"
    # the event's "host": None uses the machine's hostname; "" leaves it out
    host: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)  # copied into every event (e.g. {env = "prod"})
    # store each line's input partition and offset in Redis with its session (one hash field per line), so that an
    # event names the records behind its window ("input"); false saves that memory and leaves "input" out
    input_offsets: bool = True

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise ValueError(f"event.labels: {k!r} is not a label name (letters, digits and _, not first a "
                                 "digit), as Prometheus and Alertmanager require")
        return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOGAD_", env_nested_delimiter="__", frozen=True, extra="forbid",
                                      nested_model_default_partial_update=True)

    log: LogSection = LogSection()
    session: SessionSection = SessionSection()
    parser: ParserSection = ParserSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    scoring: ScoringSection = ScoringSection()
    detector: DetectorSection = DetectorSection()
    kafka: KafkaSection = KafkaSection()
    redis: RedisSection = RedisSection()
    http: HttpSection = HttpSection()
    serve: ServeSection = ServeSection()
    event: EventSection = EventSection()

    @model_validator(mode="after")
    def _check_line_format(self) -> Settings:
        # LineFormat knows which named groups of log.line_regex the timestamp, the content and the session need
        self.line_format()
        return self

    @model_validator(mode="after")
    def _check_outage_budget(self) -> Settings:
        budget = self.detector.outage_budget_s
        for name, value in (("redis.socket_timeout_s", self.redis.socket_timeout_s),
                            ("kafka.request_timeout_s", self.kafka.request_timeout_s)):
            if value is not None and value > budget / 4:
                raise ValueError(f"{name} ({value:g}) must be at most a quarter of detector.outage_budget_s "
                                 f"({budget:g}): one hung call would spend the budget; lower it or leave it unset "
                                 "(budget / 5)")
        if self.session.closed_ttl_s < self.replay_horizon_s():
            raise ValueError(f"session.closed_ttl_s ({self.session.closed_ttl_s}) must be at least "
                             f"{self.replay_horizon_s():.0f} s (detector.outage_budget_s + kafka.session_timeout_ms "
                             "+ 300 s max poll interval): a line replayed after its session closed must find it")
        return self

    def replay_horizon_s(self) -> float:
        """How long after it was stored a line may be read again: its worker gives up past the outage budget, or
        stalls up to the max poll interval (300 s in both clients), then the group's session times out."""
        return self.detector.outage_budget_s + self.kafka.session_timeout_ms / 1000 + 300

    def redis_socket_timeout_s(self) -> float:
        return self.redis.socket_timeout_s or min(5.0, self.detector.outage_budget_s / 5)

    def kafka_request_timeout_s(self) -> float:
        return self.kafka.request_timeout_s or min(30.0, self.detector.outage_budget_s / 5)

    # -- derived objects ------------------------------------------------------------------------------------------
    def line_format(self) -> LineFormat:
        s = self.session
        rule = SessionRule(kind=s.kind, key_regex=s.key_regex, field=s.field, window_s=s.window_s)
        return LineFormat(self.log.line_regex, self.log.timestamp_fields, self.log.timestamp_format, rule)

    def line_reader(self) -> LineReader:
        """The one ingest path (``logbert_core.ingest``): Kafka values, serve requests and training files."""
        return LineReader(self.line_format(), self.log.json_fields, self.log.max_line_bytes)

    def drain_params(self) -> DrainParams:
        p = self.parser
        return DrainParams(sim_th=p.sim_th, depth=p.depth, max_children=p.max_children, max_clusters=p.max_clusters,
                           extra_delimiters=p.extra_delimiters,
                           masking=tuple((m.regex_pattern, m.mask_with) for m in p.masking))


# Fields a bundle fixes: the detector must run with the values the model was trained with.
BUNDLE_SECTIONS = ("log", "parser", "model", "scoring")
BUNDLE_SESSION_FIELDS = ("kind", "key_regex", "field", "window_s")


def bundle_fields(settings: Settings) -> dict[str, Any]:
    """The part of the settings that a bundle records and the detector must agree with."""
    data = settings.model_dump(mode="json")
    out = {f"{sec}.{k}": v for sec in BUNDLE_SECTIONS for k, v in data[sec].items()}
    out.update({f"session.{k}": data["session"][k] for k in BUNDLE_SESSION_FIELDS})
    out.pop("log.json_fields", None)  # how lines arrive, not how they are parsed
    out.pop("log.max_line_bytes", None)
    return out


class ConfigError(LogadError, ValueError):
    """Settings that cannot be used; the message names the field and what is allowed."""


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from a TOML file, the environment and ``overrides``.

    Raises ``ConfigError`` with one readable message."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                       init_settings: PydanticBaseSettingsSource,
                                       env_settings: PydanticBaseSettingsSource,
                                       dotenv_settings: PydanticBaseSettingsSource,
                                       file_secret_settings: PydanticBaseSettingsSource,
                                       ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
            return tuple(sources)

    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
    except ValueError as exc:  # e.g. TOML syntax errors
        raise ConfigError(f"{path}: {exc}") from exc
    return Settings.model_validate(loaded.model_dump())


# Settings that older configs may still hold: what became of each (the message tells the user to delete it)
REMOVED_SETTINGS = {
    "detector.max_wait_ms": "the scorer never waited on a timer (it scores each batch as it comes, in chunks of "
                            "detector.max_batch), so it was removed",
}


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")  # our validators' messages read on their own
        if not err["loc"]:  # a rule across sections (Settings validators): its message names the settings
            lines.append(f"invalid settings: {msg}")
            continue
        loc = ".".join(str(p) for p in err["loc"])
        env = "LOGAD_" + "__".join(str(p).upper() for p in err["loc"])
        if loc in REMOVED_SETTINGS and err["type"] == "extra_forbidden":
            lines.append(f"setting {loc} no longer exists: {REMOVED_SETTINGS[loc]}; delete it [env {env}]")
            continue
        got = err.get("input")
        shown = "" if isinstance(got, dict) or _secret(loc) else f" (got {redact_url(got)!r})"
        lines.append(f"invalid setting {loc}{shown}: {msg} [env {env}]")
    return "\n".join(lines)


def redact_url(value: Any) -> Any:
    """A URL with its user-info (``user:password@``) replaced by ``***@``; other values unchanged."""
    if not isinstance(value, str) or "@" not in value:
        return value
    head, sep, rest = value.partition("//")
    if not sep:
        head, rest = "", value
    return f"{head}{sep}***@{rest.rsplit('@', 1)[1]}"


def _secret(loc: str) -> bool:
    return "password" in loc or "secret" in loc or loc.endswith(("keyfile", "ssl.key.pem", "sasl.oauthbearer.config"))

"""Everything the worker runs that depends on one model bundle, and the checks that the bundle fits the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
import torch

from logbert_core import runtime
from logbert_core.bundle import Bundle
from logbert_core.config import Settings
from logbert_core.judge import WindowJudge
from logbert_core.runtime import DeviceError, SettingsMismatch, build_judge, check_settings
from streamer.errors import StartupError
from streamer.lines import LinePipeline
from streamer.windows import WindowStore

log = logging.getLogger("streamer.worker")  # the worker's parts log under its name, as before the split


def check_bundle_settings(settings: Settings, bundle: Bundle) -> None:
    """The detector must parse, window and score exactly as the model was trained (``runtime.check_settings``)."""
    try:
        check_settings(settings, bundle)
    except SettingsMismatch as exc:
        raise StartupError(str(exc)) from exc
    rest = bundle.rest
    if rest is not None and settings.scoring.premature_end and rest.quiet_s != settings.session.rest_s:
        log.warning("the rest horizon is %g s (session.rest_horizon_s, or idle_timeout_s), but bundle %s learned where "
                    "sessions rest from pauses of %g s; premature_end keeps the bundle's measure (retrain to change "
                    "it)", settings.session.rest_s, bundle.version, rest.quiet_s)


def resolve_device(name: str) -> torch.device:
    try:
        return runtime.resolve_device(name)
    except DeviceError as exc:
        raise StartupError(f"detector.device: {exc}") from exc


@dataclass
class Engine:
    """Everything that depends on one bundle: the parser, the judge and the Redis windows (under a prefix of the
    bundle's version, since entries hold that bundle's template keys)."""

    bundle: Bundle
    pipeline: LinePipeline
    judge: WindowJudge
    store: WindowStore

    @classmethod
    def build(cls, settings: Settings, bundle: Bundle, device: torch.device, client: redis.Redis) -> Engine:
        check_bundle_settings(settings, bundle)
        det = settings.detector
        max_len = bundle.model_config.max_len
        judge = build_judge(bundle, settings, device, bf16=det.bf16, cache_size=det.score_cache,
                            threads=det.score_threads)
        pipeline = LinePipeline(settings.line_reader(), bundle.template_index(), bundle,
                                settings.parser.unknown == "nearest", settings.event.input_offsets)
        ss = settings.session
        store = WindowStore(client, f"{settings.redis.namespace}:{bundle.version}", max_len, settings.model.stride,
                            ss.ttl_s, int(det.pending_lease_s * 1000), det.novel_template_cap, max_open=ss.max_open,
                            closed_ttl_s=ss.closed_ttl_s, max_closed=ss.max_closed,
                            protect_ms=int(settings.replay_horizon_s() * 1000))
        return cls(bundle, pipeline, judge, store)

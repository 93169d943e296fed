"""From a bundle to the objects that judge windows, in one place.

``logad run``, ``logad serve``, ``logad-train``'s evaluation and the benchmarks all build their judge here, so
they score with the same buckets, the same candidates and the same rules; only what is a matter of speed differs
(bf16, the score cache, threads), and never what a window scores.
"""

from __future__ import annotations

import torch

from logbert_core.bundle import Bundle
from logbert_core.config import Settings, bundle_fields
from logbert_core.errors import LogadError
from logbert_core.judge import WindowJudge
from logbert_core.scoring import WindowScorer


class DeviceError(LogadError, ValueError):
    """A device setting this machine cannot honour; the message names the fix."""


class SettingsMismatch(LogadError, ValueError):
    """Settings that would parse, window or score differently from how the bundle was trained."""


def check_settings(settings: Settings, bundle: Bundle) -> None:
    """Raises ``SettingsMismatch`` naming every field where ``settings`` differ from what ``bundle`` was trained
    with, and the fix: the detector must parse, window and score exactly as the model was trained."""
    mine = bundle_fields(settings)
    diffs = [f"  {k}: config has {mine.get(k)!r}, bundle was trained with {v!r}"
             for k, v in sorted(bundle.settings.items()) if mine.get(k) != v]
    if diffs:
        raise SettingsMismatch("settings disagree with the model bundle (" + bundle.version + "):\n" + "\n".join(diffs)
                               + "\nfix: run with the config the bundle was trained with, or retrain with logad-train")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU. A CUDA device on a machine without one is an error,
    not a silent fall-back: scores would then come from a slower path than the operator asked for."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)


def buckets_for(settings: Settings, max_len: int) -> tuple[int, ...]:
    """The window lengths the scorer pads to: the configured ones below ``max_len``, then ``max_len``."""
    return tuple(b for b in settings.detector.buckets if b < max_len) + (max_len,)


def build_judge(bundle: Bundle, settings: Settings, device: str | torch.device = "cpu", *, bf16: bool = False,
                cache_size: int = 0, threads: int = 1) -> WindowJudge:
    """The bundle's model on ``device`` behind its calibrated rules, scored as ``settings.scoring`` says.

    ``bf16``, ``cache_size`` and ``threads`` change how fast windows are scored, not their scores' meaning (bf16
    within its rounding, which the detector accepts for speed on CPUs that have it)."""
    sc = settings.scoring
    dev = torch.device(device)
    scorer = WindowScorer(bundle.build_model(dev), bundle.center.to(dev), top_g=sc.top_g, mask_copies=sc.mask_copies,
                          device=dev, buckets=buckets_for(settings, bundle.model_config.max_len),
                          n_candidates=sc.n_candidates, bf16=bf16, cache_size=cache_size, threads=threads)
    return WindowJudge.from_bundle(scorer, bundle, sc)

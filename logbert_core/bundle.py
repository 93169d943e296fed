"""The versioned model bundle that ``logad-train`` writes and ``logad run`` loads.

A bundle is a directory:

    model.safetensors   weights and the hypersphere centre (tensors only, nothing pickled)
    bundle.json         format version, bundle version id, model config, vocabulary, Drain3 state, the settings that
                        shaped the model, thresholds and how they were chosen, the known template sets, metrics,
                        and the most frequent training windows (to warm a detector's score cache)

The model architecture and vocabulary size are read back from the bundle, never from application settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from logbert_core.model import LogBERT, LogBERTConfig
from logbert_core.parsing import DrainParams, TemplateIndex
from logbert_core.vocab import Vocabulary

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "bundle.json"
CENTER = "__center__"


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message says which file and what is wrong."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Decision thresholds, chosen on held-out normal sessions only."""

    miss_ratio: float  # a window is anomalous when its share of missed keys exceeds this
    distance: float  # ... or its hypersphere distance exceeds this
    method: str  # how they were chosen, in words (e.g. "quantile 0.9975 of 812 held-out normal windows")
    rare: float = math.inf  # ... or its rarest template is rarer than this (-log frequency); inf: rule off
    premature: float = math.inf  # ... or it closes in a state normal sessions rarely rest in; inf: rule off


@dataclass(frozen=True)
class Bundle:
    version: str
    model_config: LogBERTConfig
    state_dict: Mapping[str, torch.Tensor]
    center: torch.Tensor  # (C,)
    vocab: Vocabulary
    drain_params: DrainParams
    drain_state: Mapping[str, Any]
    settings: Mapping[str, Any]  # the bundle-owned settings (``config.bundle_fields``) the model was trained with
    thresholds: Thresholds
    known_sets: frozenset[frozenset[int]]  # template-key sets of normal training windows
    key_counts: Mapping[int, int] = field(default_factory=dict)  # key -> occurrences in normal training windows
    rest: Mapping[str, Any] | None = None  # ``RestStats.to_json()``; None: no timing was learned
    metrics: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""
    # the most frequent normal training windows, most frequent first: a detector scores them into its cache at
    # start-up. They change no score and no decision, so, like ``metrics``, they are not part of the version id
    warm_windows: tuple[tuple[int, ...], ...] = ()

    def build_model(self, device: str | torch.device = "cpu") -> LogBERT:
        model = LogBERT(self.model_config)
        model.load_state_dict(dict(self.state_dict))
        return model.to(device).eval()

    def template_index(self) -> TemplateIndex:
        return TemplateIndex.from_state(self.drain_params, self.drain_state)


def content_version(family: str, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> str:
    """Version id from the content: the same training run (same data, seed, settings) gives the same id."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(meta, sort_keys=True).encode())
    return f"{family}-{h.hexdigest()[:12]}"


def save_bundle(out_dir: str | Path, *, family: str, model_config: LogBERTConfig,
                state_dict: Mapping[str, torch.Tensor], center: torch.Tensor, vocab: Vocabulary,
                drain_params: DrainParams, drain_state: Mapping[str, Any], settings: Mapping[str, Any],
                thresholds: Thresholds, known_sets: Iterable[frozenset[int]],
                key_counts: Mapping[int, int] | None = None, rest: Mapping[str, Any] | None = None,
                metrics: Mapping[str, Any] | None = None,
                warm_windows: Iterable[Sequence[int]] = ()) -> str:
    """Write a bundle atomically (a temp dir renamed into place); returns its version id."""
    out = Path(out_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    tensors[CENTER] = center.detach().cpu().float().contiguous()
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_dict(),
        "vocab": vocab.to_json(),
        "drain": {"params": _drain_params_json(drain_params), "state": drain_state},
        "settings": dict(settings),
        "thresholds": {"miss_ratio": thresholds.miss_ratio, "distance": thresholds.distance,
                       "method": thresholds.method,
                       "rare": thresholds.rare if math.isfinite(thresholds.rare) else None,
                       "premature": thresholds.premature if math.isfinite(thresholds.premature) else None},
        "known_sets": sorted(sorted(s) for s in known_sets),
        "key_counts": sorted([int(k), int(c)] for k, c in (key_counts or {}).items()),
    }
    if rest is not None:
        meta["rest"] = dict(rest)
    version = content_version(family, tensors, meta)
    meta["version"] = version
    meta["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["metrics"] = dict(metrics or {})
    meta["warm_windows"] = [" ".join(str(int(k)) for k in w) for w in warm_windows]  # one line each in the file
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    save_file(tensors, str(tmp / WEIGHTS), metadata={"version": version})
    (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700: a detector running as another user must read the bundle
    for f in (WEIGHTS, META):
        (tmp / f).chmod(0o666 & ~umask)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            _rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        _rmtree(old)
    else:
        os.replace(tmp, out)
    return version


def write_metrics(bundle_dir: str | Path, metrics: Mapping[str, Any]) -> None:
    """Replace the metrics of a written bundle (evaluation runs after the bundle exists)."""
    path = Path(bundle_dir) / META
    meta = json.loads(path.read_text())
    meta["metrics"] = dict(metrics)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_bundle(bundle_dir: str | Path) -> Bundle:
    """Load and check a bundle; raises ``BundleError`` naming what is wrong."""
    d = Path(bundle_dir)
    if not (d / META).is_file() or not (d / WEIGHTS).is_file():
        raise BundleError(f"{d} is not a model bundle: expected {META} and {WEIGHTS} (build one with logad-train)")
    try:
        meta = json.loads((d / META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{d / META}: unreadable ({exc})") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{d}: bundle format {meta.get('format_version')!r}, this logad reads {FORMAT_VERSION}")
    try:
        tensors = load_file(str(d / WEIGHTS))
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError) for a corrupt file
        raise BundleError(f"{d / WEIGHTS}: unreadable ({exc})") from exc
    try:
        center = tensors.pop(CENTER)
        cfg = LogBERTConfig.from_dict(meta["model_config"])
        vocab = Vocabulary.from_json(meta["vocab"])
        if vocab.size != cfg.vocab_size:
            raise BundleError(f"{d}: vocabulary has {vocab.size} keys but the model was built for {cfg.vocab_size}")
        th = meta["thresholds"]
        bundle = Bundle(
            version=meta["version"], model_config=cfg, state_dict=tensors, center=center, vocab=vocab,
            drain_params=_drain_params_from_json(meta["drain"]["params"]), drain_state=meta["drain"]["state"],
            settings=meta["settings"],
            thresholds=Thresholds(float(th["miss_ratio"]), float(th["distance"]), str(th["method"]),
                                  math.inf if th.get("rare") is None else float(th["rare"]),
                                  math.inf if th.get("premature") is None else float(th["premature"])),
            known_sets=frozenset(frozenset(int(k) for k in s) for s in meta["known_sets"]),
            key_counts={int(k): int(c) for k, c in meta.get("key_counts", [])}, rest=meta.get("rest"),
            metrics=meta.get("metrics", {}), created_at=meta.get("created_at", ""),
            warm_windows=_warm_windows(meta.get("warm_windows", []), cfg),
        )
        bundle.build_model("cpu")  # fails here, not mid-stream, if weights and config disagree
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BundleError(f"{d}: inconsistent bundle ({type(exc).__name__}: {exc})") from exc
    return bundle


def _warm_windows(raw: Any, cfg: LogBERTConfig) -> tuple[tuple[int, ...], ...]:
    try:
        if not isinstance(raw, list) or not all(isinstance(w, str) for w in raw):
            raise ValueError("not a list of strings")
        out = tuple(tuple(int(k) for k in w.split()) for w in raw)
    except ValueError as exc:
        raise ValueError(f"warm_windows must be a list of strings of space-separated keys ({exc})") from exc
    for w in out:
        if not 0 < len(w) <= cfg.max_len or not all(0 <= k < cfg.vocab_size for k in w):
            raise ValueError(f"warm window {list(w)} does not fit the model (max_len {cfg.max_len}, "
                              f"vocab_size {cfg.vocab_size})")
    return out


def _drain_params_json(p: DrainParams) -> dict[str, Any]:
    return {"sim_th": p.sim_th, "depth": p.depth, "max_children": p.max_children, "max_clusters": p.max_clusters,
            "extra_delimiters": list(p.extra_delimiters), "masking": [list(m) for m in p.masking]}


def _drain_params_from_json(d: Mapping[str, Any]) -> DrainParams:
    return DrainParams(sim_th=float(d["sim_th"]), depth=int(d["depth"]), max_children=int(d["max_children"]),
                       max_clusters=d["max_clusters"], extra_delimiters=tuple(d["extra_delimiters"]),
                       masking=tuple((str(a), str(b)) for a, b in d["masking"]))


def _rmtree(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()

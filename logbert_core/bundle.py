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
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from drain3.drain import Node
from safetensors.torch import load_file, save_file

from logbert_core.calibration import DISTANCE, KEY_MISSES, Promise, length_class
from logbert_core.errors import LogadError
from logbert_core.model import LogBERT, LogBERTConfig
from logbert_core.parsing import DrainParams, TemplateIndex
from logbert_core.rest import RestStats
from logbert_core.vocab import Vocabulary

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "bundle.json"
CENTER = "__center__"


class BundleError(LogadError, ValueError):
    """A bundle that cannot be loaded; the message says which file and what is wrong."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Decision thresholds, chosen on held-out normal sessions only."""

    miss_ratio: float  # a window is anomalous when its share of missed keys exceeds this
    distance: float  # ... or its hypersphere distance exceeds this
    method: str  # how they were chosen, in words (e.g. "quantile 0.9975 of 812 held-out normal windows")
    rare: float = math.inf  # ... or its rarest template is rarer than this (-log frequency); inf: rule off
    premature: float = math.inf  # ... or it closes in a state normal sessions rarely rest in; inf: rule off
    # ... or it holds a never-seen template (evidence 1 > this; inf: rule off), or a never-seen template set
    unseen: float = 0.5
    unseen_set: float = 0.5
    promise: Promise | None = None  # what the calibration promises about false positives; None: an older bundle
    # model rule -> window length class (``calibration.length_class``) -> its threshold there; a class it lacks is
    # one the rule does not judge. A rule absent here (an older bundle) judges every window by its threshold above
    by_length: Mapping[str, Mapping[int, float]] = field(default_factory=dict)

    def model(self, rule: str, length: int) -> float:
        """The threshold of model rule ``rule`` (``masked_key_misses``, ``hypersphere_distance``) for a window of
        ``length`` entries (``inf``: the rule does not judge it)."""
        table = self.by_length.get(rule)
        if table is None:
            return self.miss_ratio if rule == KEY_MISSES else self.distance
        return table.get(length_class(length), math.inf)

    def shown(self, length: int) -> tuple[float, float]:
        """The (key-miss, distance) thresholds an event states for a window of ``length`` entries; a key-miss
        threshold past 1 (the rule does not judge the window) is stated as 1, which no share of misses exceeds."""
        return min(1.0, self.model(KEY_MISSES, length)), self.model(DISTANCE, length)

    def model_skips(self, length: int) -> bool:
        """Whether the model rules leave a window of ``length`` entries to the exact rules alone: no rule with a
        length table judges that length (``False`` where no rule has a table: nothing was calibrated by length)."""
        return bool(self.by_length) and not any(math.isfinite(self.model(r, length)) for r in self.by_length)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (``null`` for a rule that is off)."""
        def fin(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"miss_ratio": fin(self.miss_ratio), "distance": fin(self.distance), "method": self.method,
                "rare": fin(self.rare), "premature": fin(self.premature), "unseen": fin(self.unseen),
                "unseen_set": fin(self.unseen_set),
                "promise": self.promise.to_json() if self.promise is not None else None,
                "by_length": {r: {str(c): t for c, t in sorted(tab.items())} for r, tab in self.by_length.items()}}

    @classmethod
    def from_json(cls, th: Mapping[str, Any]) -> Thresholds:
        def num(name: str, default: float | None = None) -> float:
            if name not in th and default is not None:
                return default  # written before the rule had a threshold of its own: on, as it was
            v = th[name]
            return math.inf if v is None else float(v)

        promise = th.get("promise")
        by_length: dict[str, dict[int, float]] = {}
        tables = th.get("by_length") or {}
        if not isinstance(tables, Mapping):
            raise ValueError("by_length must be an object of model rule -> {length class: threshold}")
        for rule, table in tables.items():
            if not isinstance(table, Mapping):
                raise ValueError(f"by_length.{rule} must be an object of length class -> threshold")
            try:
                by_length[str(rule)] = {int(c): float(t) for c, t in table.items()}
            except (TypeError, ValueError) as exc:
                raise ValueError(f"by_length.{rule}: {exc}") from exc
        return cls(num("miss_ratio"), num("distance"), str(th["method"]), num("rare", math.inf),
                   num("premature", math.inf), num("unseen", 0.5), num("unseen_set", 0.5),
                   Promise.from_json(promise) if promise is not None else None, by_length)


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
    rest: RestStats | None = None  # where normal sessions rest (``premature_end``); None: no timing was learned
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
                key_counts: Mapping[int, int] | None = None, rest: RestStats | None = None,
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
        "thresholds": thresholds.to_json(),
        "known_sets": sorted(sorted(s) for s in known_sets),
        "key_counts": sorted([int(k), int(c)] for k, c in (key_counts or {}).items()),
    }
    if rest is not None:
        meta["rest"] = rest.to_json()
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


def load_bundle(bundle_dir: str | Path) -> Bundle:
    """Load and check a bundle; raises ``BundleError`` naming the file and the field that is wrong.

    Everything a detector later builds from the bundle (the model, the template index, the rest statistics) is
    built once here, so that a bad bundle is refused at start-up or reload, never mid-stream.
    """
    d = Path(bundle_dir)
    path = d / META
    if not path.is_file() or not (d / WEIGHTS).is_file():
        raise BundleError(f"{d} is not a model bundle: expected {META} and {WEIGHTS} (build one with logad-train)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, or not UTF-8
        raise BundleError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: expected a JSON object, got {_json_type(meta)}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{d}: bundle format {meta.get('format_version')!r}, this logad reads {FORMAT_VERSION}")
    try:
        tensors = load_file(str(d / WEIGHTS))
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError) for a corrupt file
        raise BundleError(f"{d / WEIGHTS}: unreadable ({exc})") from exc
    with _field(d / WEIGHTS, CENTER):
        center = tensors.pop(CENTER)
    with _field(path, "version"):
        version = _typed(meta["version"], str)
    with _field(path, "model_config"):
        cfg = LogBERTConfig.from_dict(_typed(meta["model_config"], dict))
    with _field(path, "vocab"):
        vocab = Vocabulary.from_json(_typed(meta["vocab"], dict))
    if vocab.size != cfg.vocab_size:
        raise BundleError(f"{d}: vocabulary has {vocab.size} keys but the model was built for {cfg.vocab_size}")
    with _field(path, "thresholds"):
        thresholds = Thresholds.from_json(_typed(meta["thresholds"], dict))
    with _field(path, "drain"):
        drain = _typed(meta["drain"], dict)
    with _field(path, "drain.params"):
        drain_params = _drain_params_from_json(_typed(drain["params"], dict))
        TemplateIndex(drain_params).masker.mask("")  # compiles the masking regexes and their replacements
    with _field(path, "drain.state"):
        drain_state = _typed(drain["state"], dict)
        _check_template_index(TemplateIndex.from_state(drain_params, drain_state))
    with _field(path, "settings"):
        settings = _typed(meta["settings"], dict)
    with _field(path, "known_sets"):
        known_sets = frozenset(frozenset(int(k) for k in s) for s in meta["known_sets"])
    with _field(path, "key_counts"):
        key_counts = {int(k): int(c) for k, c in meta.get("key_counts", [])}
    with _field(path, "rest"):
        raw_rest = meta.get("rest")
        rest = _rest(_typed(raw_rest, dict)) if raw_rest is not None else None
    with _field(path, "metrics"):
        metrics = _typed(meta.get("metrics", {}), dict)
    with _field(path, "created_at"):
        created_at = _typed(meta.get("created_at", ""), str)
    with _field(path, "warm_windows"):
        warm_windows = _warm_windows(meta.get("warm_windows", []), cfg)
    bundle = Bundle(
        version=version, model_config=cfg, state_dict=tensors, center=center, vocab=vocab,
        drain_params=drain_params, drain_state=drain_state, settings=settings, thresholds=thresholds,
        known_sets=known_sets, key_counts=key_counts, rest=rest, metrics=metrics, created_at=created_at,
        warm_windows=warm_windows,
    )
    with _field(d / WEIGHTS, "weights for model_config"):
        bundle.build_model("cpu")  # fails here, not mid-stream, if weights and config disagree
    return bundle


# what malformed content raises while a bundle is read back (re.error: a masking regex that does not compile)
_BAD_CONTENT = (ArithmeticError, AttributeError, LookupError, RuntimeError, TypeError, ValueError, re.error)
_JSON_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
               type(None): "null"}


@contextmanager
def _field(path: Path, name: str) -> Iterator[None]:
    """Turn a failure while reading field ``name`` of ``path`` into a ``BundleError`` naming both."""
    try:
        yield
    except BundleError:
        raise
    except _BAD_CONTENT as exc:
        if isinstance(exc, KeyError):
            what = f"missing key {exc}"
        elif isinstance(exc, re.error):
            what = f"regular expression error: {exc}"
        else:
            what = f"{type(exc).__name__}: {exc}"
        raise BundleError(f"{path}: bad {name} ({what})") from exc


def _json_type(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _typed(value: Any, kind: type) -> Any:
    """``value``, if it is of the JSON type ``kind`` (dict, list or str); raises ``TypeError`` otherwise."""
    if not isinstance(value, kind):
        raise TypeError(f"expected a JSON {_JSON_NAMES[kind]}, got {_json_type(value)}")
    return value


def _check_template_index(index: TemplateIndex) -> None:
    """Raise ``ValueError`` where a lookup in this (restored) index would fail: Drain3 keeps templates in a prefix
    tree whose first level is the token count, and compares a message only with templates of its own length."""
    drain = index.drain
    for cluster in drain.clusters:
        if not all(isinstance(t, str) for t in cluster.log_template_tokens):
            raise ValueError(f"template {cluster.cluster_id} has tokens that are not strings")

    def walk(node: Node, n_tokens: int) -> None:
        if n_tokens == 0 and not node.cluster_ids:
            raise ValueError("tree: the node of empty messages holds no template")
        for cid in node.cluster_ids:
            cluster = drain.id_to_cluster.get(cid)  # None: evicted under max_clusters, which Drain3 skips
            if cluster is not None and len(cluster.log_template_tokens) != n_tokens:
                raise ValueError(f"tree: template {cid} has {len(cluster.log_template_tokens)} tokens but is "
                                 f"filed under {n_tokens}")
        for child in node.key_to_child_node.values():
            walk(child, n_tokens)

    for key, node in drain.root_node.key_to_child_node.items():
        if key.isdigit():  # other keys are never reached
            walk(node, int(key))


def _rest(rest: Mapping[str, Any]) -> RestStats:
    stats = RestStats.from_json(rest)
    if not (stats.quiet_s > 0 and stats.max_len > 0 and stats.stride > 0):
        raise ValueError(f"quiet_s, max_len and stride must be > 0 (got {stats.quiet_s}, {stats.max_len}, "
                         f"{stats.stride})")
    if not all(0 <= rested <= reached for reached, rested in stats.seen.values()):
        raise ValueError("a state rested more often than it was reached, or a count is negative")
    return stats


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
    delimiters = _typed(d["extra_delimiters"], list)
    if not all(isinstance(x, str) for x in delimiters):
        raise TypeError("extra_delimiters must be strings")
    max_clusters = d["max_clusters"]
    if max_clusters is not None and not (isinstance(max_clusters, int) and max_clusters > 0):
        raise ValueError(f"max_clusters must be null or a positive integer, got {max_clusters!r}")
    return DrainParams(sim_th=float(d["sim_th"]), depth=int(d["depth"]), max_children=int(d["max_children"]),
                       max_clusters=max_clusters, extra_delimiters=tuple(delimiters),
                       masking=tuple((str(a), str(b)) for a, b in _typed(d["masking"], list)))


def _rmtree(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()

"""Hot reload and drain: which bundle is active, and which earlier ones still finish their sessions.

Between batches the worker looks for a new bundle, in the Redis pointer key ``<namespace>:model:current`` (a bundle
directory; set by ``logad model use``) or, without a pointer, in the ``--model`` directory's own ``bundle.json``. A
new bundle that loads and fits the settings becomes active for the next batch; the old one keeps sweeping its own
open sessions and pending windows until none is left (``closing.Closing``), so nothing is lost and nothing is scored
twice. A bundle that fails is refused once, with a message, and the active one keeps running. Rolling back is
pointing back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
import torch

from logbert_core.bundle import BundleError, load_bundle
from logbert_core.config import Settings
from streamer import metrics as m
from streamer.backoff import Backoff
from streamer.engine import Engine
from streamer.errors import StartupError
from streamer.judging import Scoring
from streamer.tally import Tally
from streamer.windows import left_in

log = logging.getLogger("streamer.worker")  # the worker's parts log under its name, as before the split


def _text(value: bytes | str) -> str:
    """A Redis reply as text (redis-py returns bytes unless the client decodes responses)."""
    return value.decode() if isinstance(value, bytes) else value


class Models:
    """The active engine, the draining ones, and the switch between them (consume thread only)."""

    def __init__(self, settings: Settings, engine: Engine, device: torch.device, client: redis.Redis,
                 backoff: Backoff, scoring: Scoring, stats: Tally, bundle_dir: Path | None,
                 on_release: Callable[[], None]) -> None:
        self.s = settings
        self.engine = engine
        self.draining: list[Engine] = []
        self.device = device
        self.redis = client
        self.backoff = backoff
        self.scoring = scoring  # warming a score cache runs on the scorer thread, ahead of the jobs
        self.stats = stats
        self.on_release = on_release  # an engine was dropped (``lifecycle.Housekeeping.released``)
        self.bundle_dir = bundle_dir
        self.pointer_key = f"{settings.redis.namespace}:model:current"
        # version -> directory of every bundle whose sessions may still be in Redis: a worker that starts after a
        # switch (a restart, a new --model) finds the bundles it must still drain here (``resume_draining``)
        self.bundles_key = f"{settings.redis.namespace}:bundles"
        self._active_dir = bundle_dir
        self._refused: set[str] = set()
        self.last_check = time.monotonic()
        self._announce()

    def _announce(self) -> None:
        b = self.engine.bundle
        m.TEMPLATES_KNOWN.set(b.vocab.size - 4)
        m.MODEL.info({"version": b.version, "device": str(self.device)})

    def _wanted_bundle(self) -> Path | None:
        """Where the bundle to run lives now: the Redis pointer if set, else the --model directory."""
        t0 = time.monotonic()
        try:
            pointer = self.redis.get(self.pointer_key)
        except redis.RedisError:
            self.backoff.redis_failed(t0)
            return None  # checked again next time; the batch path handles Redis outages
        if pointer:
            return Path(_text(pointer))
        return self.bundle_dir

    def maybe_reload(self) -> bool:
        """Switch to a new bundle if one was pointed to or written; returns whether it switched."""
        self.last_check = time.monotonic()
        where = self._wanted_bundle()
        if where is None:
            return False
        current = self.engine.bundle.version
        try:
            doc = json.loads((where / "bundle.json").read_text())
            if not isinstance(doc, dict):
                raise ValueError(f"bundle.json holds a JSON {type(doc).__name__}, not an object")
            version = doc.get("version")
        except (OSError, ValueError) as exc:
            key = f"{where}:unreadable"
            if key not in self._refused:
                self._refused.add(key)
                log.error("model bundle at %s is unreadable (%s); keeping %s", where, exc, current)
                m.RELOADS.labels("refused").inc()
            return False
        if version == current or f"{where}:{version}" in self._refused:
            return False
        try:
            engine = Engine.build(self.s, load_bundle(where), self.device, self.redis)
        except Exception as exc:  # a bundle that cannot serve is refused; it never takes the running worker down
            self._refused.add(f"{where}:{version}")
            expected = isinstance(exc, (BundleError, StartupError))
            log.error("refusing model bundle %s from %s: %s; keeping %s", version, where,
                      exc if expected else f"{type(exc).__name__}: {exc}", current, exc_info=not expected)
            m.RELOADS.labels("refused").inc()
            return False
        old = self.engine
        if engine.bundle.version in {e.bundle.version for e in self.draining}:  # rollback to a draining bundle
            self.draining[:] = [e for e in self.draining if e.bundle.version != engine.bundle.version]
            self.on_release()
        self.draining.append(old)
        self.engine = engine
        self._active_dir = where
        self.record_active()
        self.stats.add("reloads")
        m.RELOADS.labels("switched").inc()
        self._announce()
        self.warm(engine)
        log.warning("model switched from %s to %s; the old one finishes its open sessions", old.bundle.version,
                    engine.bundle.version)
        return True

    def record_active(self) -> None:
        """Note where the active bundle lives, for workers that start after the next switch."""
        if self._active_dir is None:
            return
        where = str(self._active_dir.resolve())
        version = self.engine.bundle.version
        self.backoff.redis("redis write", lambda: self.redis.hset(self.bundles_key, version, where))

    def resume_draining(self) -> None:
        """Drain the bundles an earlier run switched away from and left with open sessions, pending windows or held
        stops: without this, a worker that starts after a switch would leave them in Redis, unscored, while their
        input offsets are long committed."""
        ns = self.s.redis.namespace
        known = self.backoff.redis("redis read", lambda: self.redis.hgetall(self.bundles_key))
        running = {self.engine.bundle.version, *(e.bundle.version for e in self.draining)}
        for raw_version, raw_dir in sorted(known.items()):
            version, where = _text(raw_version), Path(_text(raw_dir))
            if version in running:
                continue
            left = self.backoff.redis("redis read", lambda: left_in(self.redis, f"{ns}:{version}"))
            if not any(left):
                self.backoff.redis("redis write", lambda: self.redis.hdel(self.bundles_key, version))
                continue
            what = f"{left[0]} open session(s), {left[1]} pending window(s), {left[2]} held stop(s)"
            try:
                bundle = load_bundle(where)
                if bundle.version != version:
                    raise BundleError(f"{where} now holds {bundle.version}")
                engine = Engine.build(self.s, bundle, self.device, self.redis)
            except Exception as exc:
                log.error("model %s, switched away from earlier, still has %s in Redis, but it cannot be loaded "
                          "from %s (%s): they stay unscored until a worker can load it there", version, what, where,
                          exc)
                continue
            self.draining.append(engine)
            log.warning("resuming the drain of model %s (from %s): %s", version, where, what)

    def release(self, finished: Sequence[Engine]) -> None:
        """Drop draining engines that have nothing left in Redis."""
        for e in finished:
            log.info("model %s has no open sessions left; released", e.bundle.version)
            self.draining.remove(e)
            try:
                self.redis.hdel(self.bundles_key, e.bundle.version)
            except redis.RedisError:
                m.REDIS_ERRORS.inc()  # the next worker to start finds nothing left to drain, and forgets it then
        if finished:
            self.on_release()

    def all_done(self) -> bool:
        """No session open and no window pending under any bundle (False while Redis does not answer)."""
        t0 = time.monotonic()
        try:
            return not any(e.store.sweeps.open_sessions() or e.store.verdicts.pending()
                           for e in (self.engine, *self.draining))
        except redis.RedisError:
            self.backoff.redis_failed(t0)
            return False

    def warm(self, engine: Engine) -> None:
        """Score the bundle's most frequent training windows into the engine's score cache, on the scorer thread
        ahead of the jobs that follow: the first windows a worker closes then hit the cache as later ones do (a
        cold cache made the first second of closes the slowest, docs/performance.md)."""
        windows = engine.bundle.warm_windows
        if not self.s.detector.warm_cache or not windows or not engine.judge.scorer.cache_size:
            return

        def warm_score_cache() -> None:
            t0 = time.perf_counter()
            n = engine.judge.scorer.warm(windows)
            m.SCORE_CACHE_WARMED.inc(n)
            log.info("score cache of %s warmed with %d windows in %.2f s", engine.bundle.version, n,
                     time.perf_counter() - t0)

        self.scoring.call(warm_score_cache)

"""Intake: a consumed batch's way into Redis, and from there to the scorer.

``take(records)``: decode and parse the records with the active bundle (``lines.LinePipeline``), then send the
entries to Redis in one atomic round trip (``WindowStore.append_start``). The reply is read only when the next batch
has been parsed, the input goes quiet, a sweep is due, partitions are revoked or the worker stops: each calls
``land``, the one place a batch goes on from. ``land`` reads the reply (retrying with back-off), moves the
watermark, and submits one job to the scorer: the windows the append cut, the dead letters of the batch's rejects,
and its input offsets, to be committed once the job is done (``commits``). Nothing of a batch is published or
committed before it lands.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from streamer import metrics as m
from streamer.backoff import Backoff
from streamer.closing import Progress
from streamer.engine import Engine
from streamer.judging import Job, Scoring
from streamer.lines import Parsed
from streamer.publishing import Publisher
from streamer.reload import Models
from streamer.tally import Tally
from streamer.windows import PendingAppend


class Intake:
    """Owns the one append in flight (consume thread only)."""

    def __init__(self, models: Models, progress: Progress, publisher: Publisher, scoring: Scoring,
                 backoff: Backoff, stats: Tally) -> None:
        self.models = models
        self.progress = progress
        self.publisher = publisher
        self.scoring = scoring
        self.backoff = backoff
        self.stats = stats
        self._in_flight: tuple[Engine, Parsed, PendingAppend] | None = None

    def take(self, records: Sequence[Any]) -> None:
        """Parse a consumed batch and send it to Redis; the batch before it lands first."""
        engine = self.models.engine  # one bundle for the whole batch
        t0 = time.perf_counter()
        parsed = engine.pipeline.parse(records)
        m.PARSE_SECONDS.observe(time.perf_counter() - t0)
        m.LINES_CONSUMED.inc(len(records))
        m.LINES_UNSEEN_TEMPLATE.inc(parsed.unseen)
        self.stats.add("consumed", len(records))
        self.land()  # the previous batch's reply came in while this one was parsed
        now_ms = int(time.time() * 1000)
        self._in_flight = (engine, parsed, engine.store.appends.append_start(parsed.entries, now_ms))

    def land(self) -> None:
        """Read the reply of the append in flight (retrying it with back-off) and hand the batch's windows, dead
        letters and offsets to the scorer."""
        if self._in_flight is None:
            return
        engine, parsed, pending = self._in_flight
        appended = self.backoff.redis("redis append", lambda: engine.store.appends.append_finish(pending))
        self._in_flight = None
        self.progress.advance(parsed)
        if appended.novel_templates:
            m.TEMPLATES_NEW.inc(appended.novel_templates)
        if appended.novel_capped:
            m.TEMPLATES_NEW_CAPPED.inc(appended.novel_capped)
        if appended.resumed:
            m.PREMATURE_DROPPED.inc(appended.resumed)
        letters = [self.publisher.dead_letter(rec, reason, detail) for rec, reason, detail in parsed.rejects]
        if appended.refused:
            letters += self.publisher.cap_dead_letters(parsed, appended.refused)
        job = Job(engine, appended.windows, tuple(letters), safe_watermark=self.progress.safe,
                  active=engine is self.models.engine)
        self.scoring.submit(job, dict(parsed.offsets))  # Commits.settle commits them once the job is done

"""The scorer thread: it takes jobs in submission order, judges their windows and publishes what they found.

A job is immutable and carries everything it needs from the consume thread, fixed when it is made: the engine (one
bundle for the whole job), the windows, the messages already built (dead letters, confirmed held events), and the
safe watermark and whether the engine was the active one (what ``premature_end`` judges by). The scorer thread reads
no other state of the consume thread. A submitted job gets a ``Ticket``: its place in the commit order, with the
input offsets to commit once it is done (``commits.Commits``).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from logbert_core.config import Settings
from logbert_core.judge import Verdict
from logbert_core.windows import window_keys
from streamer import metrics as m
from streamer.backoff import Backoff
from streamer.broker import Partition
from streamer.engine import Engine
from streamer.events import build_event
from streamer.publishing import Publisher
from streamer.tally import Tally
from streamer.windows import CutWindow

log = logging.getLogger("streamer.worker")  # the worker's parts log under its name, as before the split
Offsets = dict[Partition, int]  # the next offset to read, per partition


@dataclass(frozen=True, eq=False)
class Job:
    """Windows to judge and publish with messages already built; ``ends``: held ``premature_end`` events among
    ``messages`` whose quiet is now seen, forgotten in Redis once published (``end_events`` of them published, the
    rest past the rate limit). ``safe_watermark`` and ``active``: what the consume thread knew at submission."""

    engine: Engine
    windows: Sequence[CutWindow] = ()
    messages: tuple[Any, ...] = ()
    ends: tuple[tuple[str, str], ...] = ()
    end_events: int | None = None
    safe_watermark: float = -math.inf
    active: bool = True  # the engine was the active bundle's (a draining bundle's stops are always held)
    submitted: float = field(default_factory=time.monotonic)

    def empty(self) -> bool:
        return not self.windows and not self.messages and not self.ends


@dataclass(eq=False)
class Ticket:
    """A submitted job's place in the commit order. ``job`` is let go of once it ran (a burst of closes must not
    stay in memory until the consume thread collects the tickets); ``offsets`` are the consume thread's."""

    job: Job | None
    offsets: Offsets | None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Scoring:
    """Runs jobs in submission order on one thread, off the consume loop (torch releases the GIL while it computes).

    ``depth`` jobs may wait; ``submit`` blocks while the queue is full. With ``depth`` 0 a job runs in the caller at
    submit. A job with nothing to publish never waits in the queue: its offsets go with the last job in flight.
    After a job fails, later jobs are not run and carry its error, so nothing after it gets committed.
    ``completed`` is called from the consume thread only. ``call`` queues work that only saves time later (warming
    a score cache): it runs in order with the jobs, and its errors are logged, not handed on.
    """

    def __init__(self, run: Callable[[Job], None], depth: int) -> None:
        self._run = run
        self._tickets: deque[Ticket] = deque()  # submitted and not yet handed back by completed()
        self.failed: BaseException | None = None
        self._queue: queue.Queue[Ticket | Callable[[], None] | None] | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._loop, name="logad-scorer", daemon=True)
            self._thread.start()

    def submit(self, job: Job, offsets: Offsets | None = None) -> Ticket:
        """Queue ``job``; commit ``offsets`` once it and every job before it are done."""
        if self._queue is not None and job.empty() and self.failed is None:
            # Nothing to publish (most consumed batches: sessions rarely fill a window). Such a job is done as soon
            # as the jobs before it are, so it never goes to the thread, where it would cost a wake-up and a GIL
            # hand-off: its offsets join the last job in flight and are committed with it (or, when that job fails,
            # not at all), or it is done now when nothing is ahead of it.
            last = self._tickets[-1] if self._tickets else None
            if last is not None and not last.done.is_set():
                if offsets:
                    last.offsets = {**(last.offsets or {}), **offsets}
                return last
            ticket = Ticket(None, offsets)
            ticket.done.set()
            self._tickets.append(ticket)
            return ticket
        ticket = Ticket(job, offsets)
        self._tickets.append(ticket)
        if self._queue is None:
            self._execute(ticket)
        else:
            self._queue.put(ticket)
        return ticket

    def call(self, fn: Callable[[], None]) -> None:
        if self._queue is None:
            self._call(fn)
        else:
            self._queue.put(fn)

    def completed(self, wait: bool = False) -> list[Ticket]:
        """Finished jobs in submission order, up to the first one still running (with ``wait``: all of them)."""
        out = []
        while self._tickets and (wait or self._tickets[0].done.is_set()):
            self._tickets[0].done.wait()
            out.append(self._tickets.popleft())
        return out

    def in_flight(self) -> int:
        return len(self._tickets)

    def close(self) -> None:
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _execute(self, ticket: Ticket) -> None:
        assert ticket.job is not None
        if self.failed is not None:
            ticket.error = self.failed
        else:
            try:
                self._run(ticket.job)
            except BaseException as exc:  # handed to the consume thread, which raises it
                ticket.error = self.failed = exc
        # What is left to do with a finished job is its commit: let its windows and messages go now. A sweep that
        # closes a large burst submits job after job before the consume thread hands any back (``completed``), and
        # each would otherwise hold its windows until then.
        ticket.job = None
        ticket.done.set()

    @staticmethod
    def _call(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("scorer thread: %s failed; going on without it", getattr(fn, "__name__", fn))

    def _loop(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if isinstance(item, Ticket):
                self._execute(item)
            else:
                self._call(item)


class Judging:
    """What the scorer thread does with a job: judge its windows in batches of ``detector.max_batch``, build the
    events of the flagged ones (or hold them until a stop is seen), then hand everything to the publisher."""

    def __init__(self, settings: Settings, publisher: Publisher, backoff: Backoff, stats: Tally) -> None:
        self.s = settings
        self.publisher = publisher
        self.backoff = backoff
        self.stats = stats
        self.beat = time.monotonic()  # when the scorer last finished a job (``Worker.liveness``)

    def run(self, job: Job) -> None:
        if job.windows:
            m.JOB_WAIT_SECONDS.observe(time.monotonic() - job.submitted)
        held: list[tuple[CutWindow, str]] = []
        messages = list(job.messages)
        max_batch = self.s.detector.max_batch
        for i in range(0, len(job.windows), max_batch):
            messages += self._judge(job, job.windows[i:i + max_batch], held)
        self.publisher.publish(job.engine, job.windows, messages, held, job.ends, job.end_events)
        self.beat = time.monotonic()

    def _judge(self, job: Job, chunk: Sequence[CutWindow], held: list[tuple[CutWindow, str]]) -> list[Any]:
        engine = job.engine
        t0 = time.perf_counter()
        keys = [window_keys(w.members) for w in chunk]
        scorer = engine.judge.scorer
        hits = scorer.cache_hits
        rest = engine.judge.rest
        # premature_end calls a session stopped only where the log went on without it for the rest horizon; until
        # then (not yet, or the input itself stopped: a replay ran out, a shipper outage) the verdict is held
        # A draining bundle's session may go on under the active bundle, where this one cannot see it: its stops
        # are always held, and confirmed only if the active bundle does not know the session (``Closing``).
        seen = None if rest is None else [job.active and job.safe_watermark - w.last_ts >= rest.quiet_s
                                          for w in chunk]
        verdicts = engine.judge.judge(keys, seen)
        m.SCORE_SECONDS.observe(time.perf_counter() - t0)
        m.SCORE_CACHE_HITS.inc(scorer.cache_hits - hits)
        m.SCORE_BATCH.observe(len(chunk))
        for w in chunk:
            m.WINDOWS_SCORED.labels(w.cause).inc()
        bundle = engine.bundle
        th = bundle.thresholds
        m.WINDOWS_MODEL_SKIPPED.inc(sum(th.model_skips(v.score.length) for v in verdicts))
        self.stats.add("windows", len(chunk))
        flagged = [(w, v, k) for w, v, k in zip(chunk, verdicts, keys) if v.anomalous]
        # a window that only a stop would flag: its event is held until the quiet is seen (other reasons: published
        # now, without the unconfirmed stop)
        # (premature_end, or an unseen_template_set that is part of a normal set: what fires once the quiet is seen)
        waiting = [(w, replace(v, anomalous=True, reasons=v.pending_reasons, end_pending=False, pending_reasons=()),
                    k) for w, v, k in zip(chunk, verdicts, keys) if v.end_pending and not v.anomalous]
        if not flagged and not waiting:
            return []
        unseen = bundle.vocab.unseen
        novel = [w for w, _, k in flagged + waiting if any(map(unseen, k))]
        texts = self.backoff.redis("redis read", lambda: engine.store.verdicts.unseen_texts(novel))

        def event_json(w: CutWindow, v: Verdict) -> str:
            miss_threshold, distance_threshold = th.shown(v.score.length)
            return build_event(event_id=w.id, session_id=w.session_id, members=w.members, lo=w.lo,
                               cause="idle" if w.cause == "idle" else "full", first_ts=w.first_ts,
                               last_ts=w.last_ts, cut_ms=w.cut_ms, verdict=v, vocab=bundle.vocab,
                               unseen_text=texts.get(w.session_id, {}),
                               miss_threshold=miss_threshold, distance_threshold=distance_threshold,
                               model_version=bundle.version,
                               context=self.publisher.context, origins=w.origins).model_dump_json()

        held += [(w, event_json(w, v)) for w, v, _ in waiting]
        summaries: list[Any] = []
        if flagged and self.s.detector.max_events_per_minute:
            keep, summaries = self.publisher.rate_limit(engine, [(w.id, w.cut_ms, ",".join(v.reasons))
                                                                 for w, v, _ in flagged])
            flagged = [f for f, k in zip(flagged, keep) if k]
        out = [self.publisher.event_message(w.session_id, event_json(w, v)) for w, v, _ in flagged]
        self.stats.add("anomalies", len(out))
        m.ANOMALIES.inc(len(out))
        return out + summaries

"""Closing sessions: how far the log has gone on (watermarks), whether this worker has caught up with its
partitions, and the sweep that closes idle sessions and confirms held ``premature_end`` verdicts.

Sessions are closed only by a worker that has caught up with its partitions (``Progress.caught_up``): after a
restart or an outage the backlog may still hold the lines that keep a session open. Idle sessions are closed by a
periodic sweep that any worker may run (claims are atomic in Redis); their windows go to the scorer as jobs, like
a batch's (``judging``). Everything here runs on the consume thread.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import redis

from logbert_core.config import Settings
from streamer import metrics as m
from streamer.backoff import Backoff
from streamer.broker import BrokerConsumer, Partition
from streamer.engine import Engine
from streamer.errors import BrokerUnavailable
from streamer.judging import Job, Scoring, Ticket
from streamer.lines import Parsed
from streamer.publishing import Publisher
from streamer.reload import Models

log = logging.getLogger("streamer.worker")  # the worker's parts log under its name, as before the split

# A line stamped further ahead of the wall clock than this is windowed as usual but does not move the watermark:
# one such line (a bad clock, a typo'd year) would otherwise tell premature_end that every session has been quiet
# for years. A day covers any time zone a log may be written in and read as UTC.
MAX_FUTURE_S = 86_400.0

_MAX_WATERMARK = r"""
-- KEYS[1]: the group's watermark; ARGV[1]: a worker's; ARGV[2]: the latest plausible time. Keeps the larger and
-- returns it (as a string); a stored value past ARGV[2] (left by a version that did not check) is replaced.
local new = tonumber(ARGV[1])
local old = tonumber(redis.call('GET', KEYS[1]) or '-inf')
if old > tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  old = -math.huge
end
if new > old then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return redis.call('GET', KEYS[1]) or '-inf'
"""


def group_watermark(client: redis.Redis, key: str, backoff: Backoff) -> Callable[[float], float]:
    """``share(mine)``: report a worker's safe watermark to the group's (the largest any worker reported) and return
    the group's (-inf when Redis fails: the worker's own then stands, and the batch path deals with the outage)."""
    script = client.register_script(_MAX_WATERMARK)

    def share(mine: float) -> float:
        t0 = time.monotonic()
        try:
            got = script(keys=[key], args=[repr(mine) if math.isfinite(mine) else "-inf",
                                           repr(time.time() + MAX_FUTURE_S)])
        except redis.RedisError:
            backoff.redis_failed(t0)
            return -math.inf
        return float(got)

    return share


class Progress:
    """How far the log has gone on: ``watermark``, the latest log timestamp among the lines this worker has put in
    Redis (and ``partition_watermark``, the same per partition); ``safe``, the watermark held back to the last line
    read of any partition that still had lines to read at the last catch-up check (premature_end judges by it)."""

    def __init__(self, consumer: Callable[[], BrokerConsumer], sweep_interval_s: float,
                 share: Callable[[float], float]) -> None:
        self.consumer = consumer
        self.sweep_interval_s = sweep_interval_s
        self.share = share  # the group's watermark (``group_watermark``)
        self.assigned: set[Partition] = set()  # set by the rebalance listener
        self.broker_ok = True  # False while the broker does not answer ListOffsets
        self.watermark = -math.inf
        self.partition_watermark: dict[Partition, float] = {}
        self.safe = -math.inf
        self.last_check = 0.0
        self._ends_seen: tuple[float, dict[Partition, int]] | None = None  # (when, end offsets) last check
        self._future_warned = False  # a line stamped far ahead of the clock was logged once

    def advance(self, parsed: Parsed) -> None:
        """The lines of ``parsed`` are in Redis: the log has gone on at least that far (a line stamped more than
        ``MAX_FUTURE_S`` ahead of this machine's clock excepted)."""
        if not parsed.entries:
            return
        latest = time.time() + MAX_FUTURE_S
        newest = max(e.timestamp for e in parsed.entries)
        if newest > latest:
            ahead = sum(e.timestamp > latest for e in parsed.entries)
            if not self._future_warned:
                self._future_warned = True
                log.warning("a line is stamped %s, more than %.0f h ahead of this machine's clock; such lines "
                            "are windowed but do not move the watermark (logad_future_timestamps_total)",
                            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(newest)), MAX_FUTURE_S / 3600)
            m.FUTURE_ENTRIES.inc(ahead)
            newest = max((e.timestamp for e in parsed.entries if e.timestamp <= latest), default=-math.inf)
        self.watermark = max(self.watermark, newest)
        m.WATERMARK.set(self.watermark)
        for tp, ts in parsed.stamps.items():
            if ts <= latest:
                self.partition_watermark[tp] = max(ts, self.partition_watermark.get(tp, -math.inf))

    def caught_up(self) -> bool:
        """True when partitions are assigned, the broker answers now, and every partition is consumed up to its
        end now, or up to the end offsets the previous check saw, if that was at most ``2 x sweep_interval_s + 1``
        seconds ago. Also publishes the per-partition consumer lag.

        Sessions may only be closed when this holds: during a broker outage or with a backlog, the lines that keep
        a session open may simply not have been read yet. Under a steady stream the end moves on between a poll and
        ListOffsets, so "consumed to the end now" almost never holds; having read everything the log held at the
        previous check means that any line still unread was produced within the last few seconds, well inside the
        idle timeout.
        """
        now = time.monotonic()
        self.last_check = now
        prev, self._ends_seen = self._ends_seen, None
        if not self.assigned:
            return False
        consumer = self.consumer()
        tps = list(self.assigned)
        try:
            listed = consumer.end_offsets(tps, timeout_ms=2000)
            positions = {tp: consumer.position(tp) for tp in tps}
        except BrokerUnavailable as exc:
            m.BROKER_ERRORS.inc()
            if self.broker_ok:
                log.warning("broker not answering (%s: %s); not closing sessions until it does",
                            type(exc).__name__, exc)
            self.broker_ok = False
            return False
        self.broker_ok = True
        at_end, at_prev_end = True, prev is not None and now - prev[0] <= 2 * self.sweep_interval_s + 1
        ends = {}
        safe, lagging = self.watermark, False
        for tp in tps:
            # tansu's ListOffsets can trail the log end; a fetch response's high watermark is exact: take the larger,
            # and count a partition as read to its end only once a fetch response since its assignment gave one
            highwater = consumer.highwater(tp)
            end = max(listed.get(tp) or 0, highwater or 0)
            position = positions[tp]
            lag = max(0, end - position)
            m.CONSUMER_LAG.labels(str(tp.partition)).set(lag)
            if highwater is None:
                at_end = at_prev_end = False
                continue
            if lag:  # its unread lines may be older than what other partitions showed: the log is only that far
                safe = min(safe, self.partition_watermark.get(tp, -math.inf))
                lagging = True
            ends[tp] = end
            at_end = at_end and lag == 0
            at_prev_end = at_prev_end and prev is not None and tp in prev[1] and position >= prev[1][tp]
        self._ends_seen = (now, ends)
        if at_end or at_prev_end:
            if not lagging:
                # Nothing of ours is left to read: the group's watermark applies too. A worker that has just taken
                # partitions over, or restarted, with nothing new to read, knows how far the log went from it.
                safe = max(safe, self.share(safe))
            self.safe = safe
        return at_end or at_prev_end


class Closing:
    """The sweep: close idle sessions and re-claim windows whose worker died, for the active bundle and any bundle
    still draining after a reload, then confirm the held stops the safe watermark now shows."""

    def __init__(self, settings: Settings, models: Models, progress: Progress, scoring: Scoring,
                 publisher: Publisher, backoff: Backoff, stop: Callable[[], bool]) -> None:
        self.s = settings
        self.models = models
        self.progress = progress
        self.scoring = scoring
        self.publisher = publisher
        self.backoff = backoff
        self.stop = stop
        self.last_sweep = 0.0
        # (bundle version, session) -> the job publishing its confirmed stop: not submitted again until it is done
        self._ends_in_flight: dict[tuple[str, str], Ticket] = {}

    def due(self, now: float) -> bool:
        """A sweep is due (at most 4 catch-up checks a second), and the worker has caught up with its partitions."""
        interval = self.s.detector.sweep_interval_s
        if now - self.last_sweep < interval or now - self.progress.last_check < max(interval / 2, 0.25):
            return False
        if not self.progress.caught_up():
            m.SWEEPS_DEFERRED.inc()
            return False
        return True

    def sweep(self, now: float) -> int:
        """Sweep every engine (``now``: when it was found due); hand what closed to the scorer; release the draining
        engines with nothing left. Returns how many windows and held stops went to the scorer."""
        self.last_sweep = now
        now_ms = int(time.time() * 1000)
        total = 0
        for engine in (self.models.engine, *self.models.draining):
            total += self._sweep(engine, now_ms) + self._confirm_ends(engine)
        store = self.models.engine.store
        t0 = time.monotonic()
        try:
            m.SESSIONS_OPEN.set(store.sweeps.open_sessions())
            m.PREMATURE_WAITING.set(store.verdicts.held_ends())
            finished = [e for e in self.models.draining if not any(e.store.left())]
        except redis.RedisError:
            self.backoff.redis_failed(t0)
            return total
        self.models.release(finished)
        return total

    def _sweep(self, engine: Engine, now_ms: int) -> int:
        idle_ms = int(self.s.session.idle_timeout_s * 1000)
        total = 0
        while True:  # a sweep stops at its limit (1000 sessions); go on while more are due
            res = self.backoff.redis("redis sweep", lambda: engine.store.sweeps.sweep(now_ms, idle_ms))
            m.SESSIONS_CLOSED.inc(res.closed_sessions)
            if res.evicted:
                m.SESSIONS_EVICTED.inc(res.evicted)
            if res.expired:
                m.SESSIONS_EXPIRED.inc(res.expired)
                log.warning("%d session(s) of %s expired in Redis (session.ttl_s = %d s) before a sweep closed "
                            "them: their last window was not scored. Sweeps wait while the worker is behind "
                            "or the broker is down; ttl_s must outlast such periods", res.expired,
                            engine.bundle.version, self.s.session.ttl_s)
            step = self.s.detector.max_batch  # jobs of one scoring batch: a burst's first events go out early
            active = engine is self.models.engine
            for i in range(0, len(res.windows), step):
                self.scoring.submit(Job(engine, res.windows[i:i + step], safe_watermark=self.progress.safe,
                                        active=active))
            total += len(res.windows)
            if not res.more or self.stop():
                return total

    def _confirm_ends(self, engine: Engine) -> int:
        """Publish the held ``premature_end`` events whose quiet this worker's watermark now shows: the log went on
        for the rest horizon past the session's last line and the session did not come back."""
        rest = engine.judge.rest
        safe = self.progress.safe
        if rest is None or not math.isfinite(safe):
            return 0
        due = self.backoff.redis("redis read", lambda: engine.store.verdicts.due_ends(safe - rest.quiet_s))
        version = engine.bundle.version
        flight = self._ends_in_flight
        for key in [k for k, ticket in flight.items() if ticket.done.is_set()]:  # published or failed: look again
            del flight[key]
        due = [(sid, ev) for sid, ev in due if (version, sid) not in flight]
        active = self.models.engine
        if due and engine is not active:
            # a draining bundle's session that came back went on under the active bundle: it did not stop
            back = self.backoff.redis("redis read", lambda: active.store.verdicts.known_sessions([s for s, _ in due]))
            if back:
                gone = [(sid, ev) for sid, ev in due if sid in back]
                self.backoff.redis("redis drop", lambda: engine.store.verdicts.drop_ends(gone))
                m.PREMATURE_DROPPED.inc(len(gone))
                due = [(sid, ev) for sid, ev in due if sid not in back]
        if not due:
            return 0
        # as built when the window was judged (``detected_at`` = its close): a second publication, by another worker
        # or after a crash, is byte for byte the same event
        keep = [True] * len(due)
        messages: list[Any] = []
        if self.s.detector.max_events_per_minute:
            keep, messages = self.publisher.rated(engine, due)
        messages += [self.publisher.event_message(sid, ev) for (sid, ev), k in zip(due, keep) if k]
        ticket = self.scoring.submit(Job(engine, (), tuple(messages), ends=tuple(due), end_events=sum(keep)))
        flight.update(((version, sid), ticket) for sid, _ in due)
        return len(due)

"""Committing input offsets: the last step of the at-least-once contract.

Order of effects for every consumed batch:

1. decode and parse every record; bad ones become dead-letter records (never dropped, never a crash)
   (``lines.LinePipeline``);
2. append the batch's entries to Redis in one atomic round trip; full windows are cut into ``pending`` (the script
   runs while the loop parses the next batch; its reply is read before anything of the batch goes further)
   (``intake.Intake``);
3. score the cut windows, publish anomaly events, publish dead-letter records, flush the producer
   (``judging.Judging``, ``publishing.Publisher``);
4. ``ack`` the published windows in Redis (``publishing.Publisher``);
5. commit the batch's input offsets (with the other batches done since the last commit, at most every
   ``kafka.commit_interval_ms``) (``Commits.settle``, here).

Steps 3-4 run on a scorer thread (``judging.Scoring``), so the consume loop reads and parses the next batches while
the model runs; step 5 stays on the consume thread and commits a batch only once its job and every job before it are
done (jobs finish in submission order). At most ``detector.score_queue`` jobs wait; a full queue blocks the loop.
Before the worker stops, every job in flight finishes and the done ones commit; before partitions are revoked they
finish without a commit (the next owner replays those records, which adds nothing).

A crash anywhere before 5 replays the batch: appends are idempotent, already-cut windows wait in ``pending`` under a
lease until a worker publishes them, and event ids derive from content, so a replay adds nothing new.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from streamer import metrics as m
from streamer.backoff import Backoff
from streamer.broker import BrokerConsumer
from streamer.errors import BrokerUnavailable, CommitRejected, OutageError
from streamer.judging import Offsets, Scoring

log = logging.getLogger("streamer.worker")  # the worker's parts log under its name, as before the split


class Commits:
    """Commits the offsets of the jobs ``scoring`` hands back done, in order, with ``consumer()``."""

    def __init__(self, scoring: Scoring, consumer: Callable[[], BrokerConsumer], backoff: Backoff, interval_ms: int,
                 stop: threading.Event) -> None:
        self.scoring = scoring
        self.consumer = consumer
        self.backoff = backoff
        self.interval_s = interval_ms / 1000
        self.stop = stop
        self.done: Offsets = {}  # done, not committed yet
        self.last_commit = 0.0

    def settle(self, wait: bool = False, raise_errors: bool = True, commit: bool = True) -> None:
        """Commit the input offsets of the jobs that are done, in order, in one commit, at most every
        ``kafka.commit_interval_ms`` (the offsets of the jobs done meanwhile wait in ``done``); raise a job's error
        (after committing the jobs before it). ``wait``: wait for every job in flight first and commit now;
        ``commit=False``: hand the done jobs back and drop their offsets without committing them (their records
        will be replayed)."""
        offsets = self.done
        failed = False
        for ticket in self.scoring.completed(wait):
            if ticket.error is not None:
                failed = True
                break
            if ticket.offsets:
                offsets.update(ticket.offsets)
        if not commit:
            offsets.clear()
            return
        now = time.monotonic()
        if offsets and (wait or failed or self.stop.is_set() or now - self.last_commit >= self.interval_s):
            self.done = {}
            self.last_commit = now
            try:
                with m.COMMIT_SECONDS.time():
                    self.backoff.call("offset commit", lambda: self.consumer().commit(offsets), (BrokerUnavailable,),
                                      m.BROKER_ERRORS)
            except CommitRejected as exc:  # not an outage: no retry
                # The group rebalanced while we worked: the new owner replays these records, which is safe.
                log.warning("offset commit rejected after a rebalance (%s); the records will be replayed", exc)
            except OutageError:
                if raise_errors:
                    raise
        if raise_errors and self.scoring.failed is not None:
            raise self.scoring.failed

"""Pieces of the consume loop without a broker: the scorer thread's queue (jobs come back in submission order and
only once done; nothing after a failed job runs, so nothing after it can be committed), the commit of finished
batches (together, at most every ``kafka.commit_interval_ms``; at once when stopping or after a failure; never for
records handed back at a rebalance) and the caught-up rule that lets sessions close under a steady stream but not
with a backlog or during a broker outage."""

from __future__ import annotations

import math
import threading
import time

import pytest

from streamer.backoff import Backoff
from streamer.closing import Progress
from streamer.commits import Commits
from streamer.judging import Job, Scoring, Ticket


def job(n: int) -> Job:
    return Job(engine=None, windows=[n])  # type: ignore[arg-type]


def submit(scoring: Scoring, n: int) -> Ticket:
    """Job ``n``, whose batch ends at offset ``n`` of partition "p"."""
    return scoring.submit(job(n), {"p": n})  # type: ignore[dict-item]


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_jobs_come_back_in_order_once_done(depth):
    ran: list[int] = []
    gate = threading.Event()

    def run(j: Job) -> None:
        if j.windows[0] == 0:
            gate.wait(5)
        ran.append(j.windows[0])

    scoring = Scoring(run, depth)
    if depth == 0:
        gate.set()  # runs in the caller: nothing may block
    tickets: list[Ticket] = []
    submitter = threading.Thread(target=lambda: tickets.extend(submit(scoring, i) for i in range(3)))
    submitter.start()
    if depth:
        time.sleep(0.2)
        assert scoring.completed() == []  # the first job still runs: nothing is handed back, not even later ones
        gate.set()
    submitter.join(5)
    assert scoring.completed(wait=True) == tickets and len(tickets) == 3
    assert ran == [0, 1, 2] and scoring.in_flight() == 0
    # a finished job keeps only what its commit needs: a burst's windows are not held until the loop collects them
    assert all(t.job is None and t.offsets == {"p": n} for n, t in enumerate(tickets))
    scoring.close()


def test_a_batch_with_nothing_to_publish_is_committed_with_the_job_before_it():
    """It never waits in the queue: done when nothing is ahead, else its offsets go with the last job in flight
    (committed once that is done, never if it fails)."""
    gate = threading.Event()

    def run(j: Job) -> None:
        gate.wait(5)
        if j.windows[0] == 9:
            raise RuntimeError("broker gone")

    scoring = Scoring(run, 4)
    empty = lambda off: scoring.submit(Job(engine=None), off)  # type: ignore[arg-type]  # noqa: E731
    alone = empty({"p": 1})
    assert scoring.completed() == [alone]  # nothing ahead: done at once
    busy = submit(scoring, 2)
    assert empty({"p": 3, "q": 1}) is busy and empty({"q": 2}) is busy  # they ride with the job in flight
    assert scoring.in_flight() == 1 and scoring.completed() == []
    gate.set()
    assert scoring.completed(wait=True) == [busy] and busy.offsets == {"p": 3, "q": 2}
    failing = submit(scoring, 9)
    empty({"p": 10})
    (back,) = scoring.completed(wait=True)
    assert back is failing and back.error is not None  # settle() commits nothing of it, the folded offsets included
    scoring.close()


def test_a_failed_job_stops_the_ones_after_it():
    def run(j: Job) -> None:
        if j.windows[0] == 1:
            raise RuntimeError("redis gone")

    scoring = Scoring(run, 2)
    for i in range(4):
        submit(scoring, i)
    done = scoring.completed(wait=True)
    assert [j.error is None for j in done] == [True, False, False, False]
    assert isinstance(scoring.failed, RuntimeError) and all(j.error is scoring.failed for j in done[1:])
    scoring.close()


@pytest.mark.parametrize("depth", [0, 2])
def test_calls_run_in_order_with_the_jobs_and_their_errors_stop_nothing(depth, caplog):
    ran: list[object] = []

    def broken() -> None:
        raise RuntimeError("no cache today")

    scoring = Scoring(lambda j: ran.append(j.windows[0]), depth)
    scoring.call(lambda: ran.append("warm"))
    submit(scoring, 1)
    scoring.call(broken)
    submit(scoring, 2)
    done = scoring.completed(wait=True)
    assert ran == ["warm", 1, 2] and all(j.error is None for j in done) and scoring.failed is None
    assert "broken failed" in caplog.text and "no cache today" in caplog.text
    scoring.close()


class FakeConsumer:
    """end_offsets / highwater / position of a consumer whose log end moves on while it reads."""

    def __init__(self) -> None:
        self.end = {}
        self.pos = {}
        self.down = False
        self.fetched = True  # a fetch response since the assignment gave the partition's high watermark

    def end_offsets(self, tps, timeout_ms):
        from streamer.errors import BrokerUnavailable

        if self.down:
            raise BrokerUnavailable("broker paused")
        return {tp: self.end[tp] for tp in tps}

    def highwater(self, tp):
        return self.end[tp] if self.fetched else None

    def position(self, tp):
        return self.pos[tp]


def test_caught_up_under_a_steady_stream_but_not_with_a_backlog_or_a_broker_outage():
    from streamer.broker import Partition

    tp = Partition("t", 0)
    consumer = FakeConsumer()
    w = Progress(lambda: consumer, 0.25, share=lambda mine: -math.inf)
    w.assigned = {tp}
    check = w.caught_up

    consumer.end[tp], consumer.pos[tp] = 100, 100
    assert check()  # at the end now
    consumer.end[tp], consumer.pos[tp] = 200, 150  # a steady stream: the end moves on while we read,
    assert check()  # but we read past the end the previous check saw (100)
    consumer.end[tp], consumer.pos[tp] = 300, 250
    assert check()  # (200)
    consumer.end[tp], consumer.pos[tp] = 5000, 260  # a backlog: the end seen before (300) is not reached
    assert not check()
    assert not check()  # nor the new one (5000)
    consumer.down = True  # the broker does not answer: never caught up, and the memory of ends is dropped
    assert not check()
    consumer.down = False
    consumer.end[tp], consumer.pos[tp] = 6000, 5990
    assert not check()  # nothing seen before the outage counts
    w._ends_seen = (w._ends_seen[0] - 10, w._ends_seen[1])  # a check long ago says nothing about now
    consumer.end[tp], consumer.pos[tp] = 6100, 6050
    assert not check()
    consumer.end[tp], consumer.pos[tp] = 6100, 6100
    assert check()
    consumer.fetched = False  # reassigned, no fetch response yet: ListOffsets alone can trail the end (tansu)
    assert not check()
    assert not check()  # and what it listed is not remembered as an end that was seen
    consumer.fetched = True
    assert check()


def test_the_safe_watermark_waits_for_partitions_with_lines_left_to_read():
    """Lines of a session may sit unread in one partition while another has shown later log times: the log has gone
    on for sure only as far as the last line read of each partition that still has lines to read."""
    from streamer.broker import Partition

    a, b = Partition("t", 0), Partition("t", 1)
    consumer = FakeConsumer()
    w = Progress(lambda: consumer, 0.25, share=lambda mine: 1800.0)  # the group's: another worker got that far
    w.assigned = {a, b}
    w.watermark, w.partition_watermark = 2000.0, {a: 2000.0, b: 1500.0}
    check = w.caught_up
    consumer.end, consumer.pos = {a: 10, b: 10}, {a: 10, b: 10}
    assert check() and w.safe == 2000.0  # everything read: as far as any partition went
    consumer.end, consumer.pos = {a: 20, b: 20}, {a: 20, b: 12}  # b got lines it has not read yet
    assert check() and w.safe == 1500.0  # caught up by the previous ends, but b holds the log back
    w.watermark, w.partition_watermark = -math.inf, {}  # taken over, nothing new to read: the group's watermark
    consumer.pos[b] = 20
    assert check() and w.safe == 1800.0
    consumer.end[b] = 30  # but not while a partition of ours still has lines to read
    assert check() and w.safe == -math.inf
    w.watermark, w.partition_watermark = 2000.0, {a: 2000.0, b: 1500.0}
    c = Partition("t", 2)  # newly assigned, nothing read from it yet
    w.assigned.add(c)
    consumer.end[c], consumer.pos[c] = 5, 0
    consumer.pos[b] = 30
    assert not check() and w.safe == -math.inf  # not caught up: the last safe value stands
    consumer.pos[c] = 5
    w.partition_watermark[c] = 1900.0
    assert check() and w.safe == 2000.0


class CommitRecorder:
    def __init__(self) -> None:
        self.commits: list[dict] = []

    def commit(self, offsets) -> None:
        self.commits.append(dict(offsets))


def settling(interval_ms: int, run=lambda j: None) -> tuple[Commits, CommitRecorder]:
    stop = threading.Event()
    scoring, recorder = Scoring(run, 0), CommitRecorder()
    return Commits(scoring, lambda: recorder, Backoff(10, stop, lambda ok: None), interval_ms, stop), recorder


def test_done_batches_are_committed_together_at_most_every_interval():
    commits, consumer = settling(60_000)
    scoring, settle = commits.scoring, commits.settle
    submit(scoring, 1)
    settle()
    assert consumer.commits == [{"p": 1}]  # the first commit is due at once
    scoring.submit(job(2), {"p": 2, "q": 7})  # type: ignore[dict-item]
    settle()
    submit(scoring, 3)
    settle()
    assert consumer.commits == [{"p": 1}]  # within the interval: held
    settle(wait=True)  # stopping, or waiting for every job: what is done is committed now, the latest per partition
    assert consumer.commits == [{"p": 1}, {"p": 3, "q": 7}]
    submit(scoring, 4)
    settle(commit=False)  # revoked: handed back uncommitted, and not committed later either (the next owner's)
    settle(wait=True)
    assert consumer.commits == [{"p": 1}, {"p": 3, "q": 7}]


def test_with_interval_zero_every_batch_is_committed():
    commits, consumer = settling(0)
    for n in (1, 2):
        submit(commits.scoring, n)
        commits.settle()
    assert consumer.commits == [{"p": 1}, {"p": 2}]


def test_a_failure_commits_the_batches_done_before_it_at_once_and_raises():
    def run(j: Job) -> None:
        if j.windows[0] == 3:
            raise RuntimeError("redis gone")

    commits, consumer = settling(60_000, run)
    commits.last_commit = time.monotonic()  # a commit was just made: the next one is not due by the clock
    for n in (1, 2, 3, 4):
        submit(commits.scoring, n)
    with pytest.raises(RuntimeError, match="redis gone"):
        commits.settle()
    assert consumer.commits == [{"p": 2}]  # 1 and 2 are done; 3 failed and 4 never ran


def test_a_dead_letter_over_the_cap_is_cut_and_says_so():
    """A record over the broker's limit could never be published as a dead letter: the worker would retry it until
    its outage budget ran out. Its value is cut, and headers say so; the whole record stays on the input topic."""
    from types import SimpleNamespace

    from e2e_harness import CONFIG

    from logbert_core.config import load_settings
    from streamer.publishing import Publisher
    from streamer.tally import Tally

    settings = load_settings(CONFIG, kafka={"dlq_topic": "in.dlq", "dlq_max_value_bytes": 1000})
    stats = Tally()
    publisher = Publisher(settings, producer=None, backoff=None, stats=stats, context=None)  # type: ignore[arg-type]
    rec = SimpleNamespace(topic="in", partition=2, offset=77, key=b"k", value=b"x" * 5000)
    topic, key, value, headers = publisher.dead_letter(rec, "too_large", "line of 5000 bytes")
    assert (topic, key, value) == ("in.dlq", b"k", b"x" * 1000)
    h = dict(headers)
    assert h["logad.truncated"] == b"true" and h["logad.original_bytes"] == b"5000"
    assert (h["logad.source.partition"], h["logad.source.offset"], h["logad.reason"]) == (b"2", b"77", b"too_large")
    rec.value = b"y" * 1000  # at the cap: as it came, without the headers
    _, _, value, headers = publisher.dead_letter(rec, "format_mismatch", "")
    assert value == b"y" * 1000 and "logad.truncated" not in dict(headers)
    assert stats["rejected"] == 2


def test_a_line_whose_parsing_raises_is_dead_lettered_not_fatal(bundle, caplog):
    """A line no rule foresaw (here: a parser bug, simulated) costs one dead letter; the batch goes on, and only
    the first such line is logged."""
    from types import SimpleNamespace

    from e2e_harness import CONFIG

    from logbert_core.config import load_settings
    from logbert_core.ingest import LineReader
    from streamer.lines import PARSE_ERROR, LinePipeline

    settings = load_settings(CONFIG)
    fmt = settings.line_format()

    class Flaky:
        def parse(self, line: str):  # type: ignore[no-untyped-def]
            if "boom" in line:
                raise OverflowError("a case nobody wrote a rule for")
            return fmt.parse(line)

    pipe = LinePipeline(LineReader(Flaky(), ["log"], 10_000), bundle.template_index(), bundle, False)  # type: ignore[arg-type]
    good = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_42 terminating"
    recs = [SimpleNamespace(topic="t", partition=0, offset=i, value=v.encode())
            for i, v in enumerate([good, good + " boom", good + " boom again", "not a log line"])]
    out = pipe.parse(recs)
    assert [e.session_id for e in out.entries] == ["blk_42"]
    assert [(r.offset, reason) for r, reason, _ in out.rejects] == [(1, PARSE_ERROR), (2, PARSE_ERROR),
                                                                    (3, "format_mismatch")]
    assert "OverflowError: a case nobody wrote a rule for" in out.rejects[0][2]
    assert list(out.offsets.values()) == [4]  # every record is accounted for
    assert pipe.errors == 2 and sum("could not be parsed" in r.message for r in caplog.records) == 1


def test_a_job_of_held_stops_whose_events_were_all_suppressed_still_runs():
    """Past detector.max_events_per_minute a job may publish nothing, yet its held stops must be forgotten in Redis
    (and let go of in the worker): it runs like any other job."""
    ran: list[Job] = []
    scoring = Scoring(ran.append, 2)
    only_ends = Job(engine=None, ends=(("blk_1", "{}"),), end_events=0)  # type: ignore[arg-type]
    ticket = scoring.submit(only_ends)
    assert scoring.completed(wait=True) == [ticket] and ran == [only_ends]
    scoring.close()

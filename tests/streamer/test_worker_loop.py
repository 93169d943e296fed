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

from streamer.worker import Job, Scoring


def job(n: int) -> Job:
    return Job(engine=None, windows=[n], messages=[], offsets={"p": n})  # type: ignore[arg-type]


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
    jobs = [job(i) for i in range(3)]
    submitter = threading.Thread(target=lambda: [scoring.submit(j) for j in jobs])
    submitter.start()
    if depth:
        time.sleep(0.2)
        assert scoring.completed() == []  # the first job still runs: nothing is handed back, not even later ones
        gate.set()
    submitter.join(5)
    assert scoring.completed(wait=True) == jobs
    assert ran == [0, 1, 2] and scoring.in_flight() == 0
    # a finished job keeps only what its commit needs: a burst's windows are not held until the loop collects them
    assert all(j.windows == () and j.messages == [] and j.offsets == {"p": n} for n, j in enumerate(jobs))
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
    empty = lambda off: Job(engine=None, windows=[], messages=[], offsets=off)  # type: ignore[arg-type]  # noqa: E731
    alone = empty({"p": 1})
    scoring.submit(alone)
    assert scoring.completed() == [alone]  # nothing ahead: done at once
    busy = job(2)
    scoring.submit(busy)
    scoring.submit(empty({"p": 3, "q": 1}))
    scoring.submit(empty({"q": 2}))
    assert scoring.in_flight() == 1 and scoring.completed() == []
    gate.set()
    assert scoring.completed(wait=True) == [busy] and busy.offsets == {"p": 3, "q": 2}
    failing = job(9)
    scoring.submit(failing)
    scoring.submit(empty({"p": 10}))
    (back,) = scoring.completed(wait=True)
    assert back is failing and back.error is not None  # settle() commits nothing of it, the folded offsets included
    scoring.close()


def test_a_failed_job_stops_the_ones_after_it():
    def run(j: Job) -> None:
        if j.windows[0] == 1:
            raise RuntimeError("redis gone")

    scoring = Scoring(run, 2)
    jobs = [job(i) for i in range(4)]
    for j in jobs:
        scoring.submit(j)
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
    scoring.submit(job(1))
    scoring.call(broken)
    scoring.submit(job(2))
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
        from kafka.errors import KafkaTimeoutError

        if self.down:
            raise KafkaTimeoutError("broker paused")
        return {tp: self.end[tp] for tp in tps}

    def highwater(self, tp):
        return self.end[tp] if self.fetched else None

    def position(self, tp):
        return self.pos[tp]


def test_caught_up_under_a_steady_stream_but_not_with_a_backlog_or_a_broker_outage():
    from types import SimpleNamespace

    from kafka import TopicPartition

    from streamer.worker import Worker

    tp = TopicPartition("t", 0)
    consumer = FakeConsumer()
    w = SimpleNamespace(assigned={tp}, consumer=consumer, broker_ok=True, _ends_seen=None, _last_catch_up_check=0.0,
                        s=SimpleNamespace(detector=SimpleNamespace(sweep_interval_s=0.25)), watermark=-math.inf,
                        partition_watermark={}, safe_watermark=-math.inf, _share_watermark=lambda mine: -math.inf)
    check = lambda: Worker.caught_up(w)  # noqa: E731

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
    from types import SimpleNamespace

    from kafka import TopicPartition

    from streamer.worker import Worker

    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer = FakeConsumer()
    w = SimpleNamespace(assigned={a, b}, consumer=consumer, broker_ok=True, _ends_seen=None,
                        _last_catch_up_check=0.0, s=SimpleNamespace(detector=SimpleNamespace(sweep_interval_s=0.25)),
                        watermark=2000.0, partition_watermark={a: 2000.0, b: 1500.0}, safe_watermark=-math.inf,
                        _share_watermark=lambda mine: 1800.0)  # the group's: another worker got that far
    check = lambda: Worker.caught_up(w)  # noqa: E731
    consumer.end, consumer.pos = {a: 10, b: 10}, {a: 10, b: 10}
    assert check() and w.safe_watermark == 2000.0  # everything read: as far as any partition went
    consumer.end, consumer.pos = {a: 20, b: 20}, {a: 20, b: 12}  # b got lines it has not read yet
    assert check() and w.safe_watermark == 1500.0  # caught up by the previous ends, but b holds the log back
    w.watermark, w.partition_watermark = -math.inf, {}  # taken over, nothing new to read: the group's watermark
    consumer.pos[b] = 20
    assert check() and w.safe_watermark == 1800.0
    consumer.end[b] = 30  # but not while a partition of ours still has lines to read
    assert check() and w.safe_watermark == -math.inf
    w.watermark, w.partition_watermark = 2000.0, {a: 2000.0, b: 1500.0}
    c = TopicPartition("t", 2)  # newly assigned, nothing read from it yet
    w.assigned.add(c)
    consumer.end[c], consumer.pos[c] = 5, 0
    consumer.pos[b] = 30
    assert not check() and w.safe_watermark == -math.inf  # not caught up: the last safe value stands
    consumer.pos[c] = 5
    w.partition_watermark[c] = 1900.0
    assert check() and w.safe_watermark == 2000.0


class CommitRecorder:
    def __init__(self) -> None:
        self.commits: list[dict] = []

    def commit(self, offsets) -> None:
        self.commits.append(dict(offsets))


def settling_worker(interval_ms: int, run=lambda j: None):
    from types import SimpleNamespace

    from streamer.worker import Backoff

    stop = threading.Event()
    w = SimpleNamespace(scoring=Scoring(run, 0), consumer=CommitRecorder(), stop_event=stop,
                        s=SimpleNamespace(kafka=SimpleNamespace(commit_interval_ms=interval_ms)),
                        backoff=Backoff(10, stop, lambda ok: None), _done_offsets={}, _last_commit=0.0)
    return w


def test_done_batches_are_committed_together_at_most_every_interval():
    from streamer.worker import Worker

    w = settling_worker(60_000)
    settle = lambda **kw: Worker.settle(w, **kw)  # noqa: E731
    w.scoring.submit(job(1))
    settle()
    assert w.consumer.commits == [{"p": 1}]  # the first commit is due at once
    w.scoring.submit(Job(engine=None, windows=[2], messages=[], offsets={"p": 2, "q": 7}))  # type: ignore[arg-type]
    settle()
    w.scoring.submit(job(3))
    settle()
    assert w.consumer.commits == [{"p": 1}]  # within the interval: held
    settle(wait=True)  # stopping, or waiting for every job: what is done is committed now, the latest per partition
    assert w.consumer.commits == [{"p": 1}, {"p": 3, "q": 7}]
    w.scoring.submit(job(4))
    settle(commit=False)  # revoked: handed back uncommitted, and not committed later either (the next owner's)
    settle(wait=True)
    assert w.consumer.commits == [{"p": 1}, {"p": 3, "q": 7}]


def test_with_interval_zero_every_batch_is_committed():
    from streamer.worker import Worker

    w = settling_worker(0)
    for n in (1, 2):
        w.scoring.submit(job(n))
        Worker.settle(w)
    assert w.consumer.commits == [{"p": 1}, {"p": 2}]


def test_a_failure_commits_the_batches_done_before_it_at_once_and_raises():
    from streamer.worker import Worker

    def run(j: Job) -> None:
        if j.windows[0] == 3:
            raise RuntimeError("redis gone")

    w = settling_worker(60_000, run)
    w._last_commit = time.monotonic()  # a commit was just made: the next one is not due by the clock
    for n in (1, 2, 3, 4):
        w.scoring.submit(job(n))
    with pytest.raises(RuntimeError, match="redis gone"):
        Worker.settle(w)
    assert w.consumer.commits == [{"p": 2}]  # 1 and 2 are done; 3 failed and 4 never ran


def test_a_dead_letter_over_the_cap_is_cut_and_says_so():
    """A record over the broker's limit could never be published as a dead letter: the worker would retry it until
    its outage budget ran out. Its value is cut, and headers say so; the whole record stays on the input topic."""
    from types import SimpleNamespace

    from streamer.worker import Worker

    w = SimpleNamespace(s=SimpleNamespace(kafka=SimpleNamespace(dlq="in.dlq", dlq_max_value_bytes=1000)),
                        stats={"rejected": 0})
    rec = SimpleNamespace(topic="in", partition=2, offset=77, key=b"k", value=b"x" * 5000)
    topic, key, value, headers = Worker._dead_letter(w, rec, "too_large", "line of 5000 bytes")
    assert (topic, key, value) == ("in.dlq", b"k", b"x" * 1000)
    h = dict(headers)
    assert h["logad.truncated"] == b"true" and h["logad.original_bytes"] == b"5000"
    assert (h["logad.source.partition"], h["logad.source.offset"], h["logad.reason"]) == (b"2", b"77", b"too_large")
    rec.value = b"y" * 1000  # at the cap: as it came, without the headers
    _, _, value, headers = Worker._dead_letter(w, rec, "format_mismatch", "")
    assert value == b"y" * 1000 and "logad.truncated" not in dict(headers)
    assert w.stats["rejected"] == 2


def test_a_line_whose_parsing_raises_is_dead_lettered_not_fatal(bundle, caplog):
    """A line no rule foresaw (here: a parser bug, simulated) costs one dead letter; the batch goes on, and only
    the first such line is logged."""
    from types import SimpleNamespace

    from e2e_harness import CONFIG

    from logbert_core.config import load_settings
    from streamer.decode import ValueDecoder
    from streamer.lines import PARSE_ERROR, LinePipeline

    settings = load_settings(CONFIG)
    fmt = settings.line_format()

    class Flaky:
        def parse(self, line: str):  # type: ignore[no-untyped-def]
            if "boom" in line:
                raise OverflowError("a case nobody wrote a rule for")
            return fmt.parse(line)

    pipe = LinePipeline(Flaky(), ValueDecoder(["log"], 10_000), bundle.template_index(), bundle, False)  # type: ignore[arg-type]
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
    only_ends = Job(engine=None, windows=[], messages=[], offsets=None, ends=[("blk_1", "{}")],  # type: ignore[arg-type]
                    end_events=0)
    scoring.submit(only_ends)
    assert scoring.completed(wait=True) == [only_ends] and ran == [only_ends]
    scoring.close()

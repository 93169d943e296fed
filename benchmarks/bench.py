"""Throughput and latency of the real pipeline, next to plain Drain3 and the scorer alone; prints JSON.

    python -m benchmarks.bench                      # everything, 300k lines, about 4 minutes on 2 cores
    python -m benchmarks.bench --lines 1000000 --out bench.json
    python -m benchmarks.bench --only scorer        # one part: drain3, scorer, e2e, scaleout, latency

What each figure is (all on the same re-keyed real HDFS lines as ``benchmarks.soak``):

* ``drain3``: plain ``drain3.TemplateMiner.add_log_message`` per raw line, with the masking and Drain parameters of
  the config (no persistence, no profiling), in this process.
* ``scorer``: ``WindowScorer`` alone on CPU with the bundle's model, synthetic windows of 16/32/64 keys, windows/s by
  batch size and scoring threads (the worker's settings: ``mask_copies``, ``top_g``, buckets).
* ``consume``: each consumer the detector can use (``kafka.client``) alone in this process on a backlog of the
  lines: records/s and CPU per record (librdkafka's threads included).
* ``scorer_real``: the same scorer on the bundled HDFS lines' own windows: the distinct ones without the cache, and
  the whole stream in log order through the worker's default cache (hit rate included).
* ``e2e``: the broker (``start_broker``), ``redis-server`` (``start_redis``) and ``logad run`` worker process(es). The
  lines are produced first (a backlog); the worker(s) then consume them. The clock starts at the first commit once
  every worker holds partitions (so the group join is excluded) and stops when every input offset is committed
  (``lines_per_s_committed``) and when, in addition, every session was closed, scored and published
  (``lines_per_s_scored``; it includes the idle timeout of the last sessions, ``idle_timeout_s``). ``cpu_s_per_100k``
  is the CPU the worker processes used per 100k lines: steadier than rates on a shared machine.
* ``live``: one worker, started and ready first; the lines are produced by this process (librdkafka's producer) as
  fast as it can while the worker consumes (sessions then close and are scored along the way, as in production);
  the clock starts at the first line produced. The producer shares the machine with the worker.
* ``scaleout``: the same as ``e2e`` with two worker processes; ``ratio`` = two / one.
* ``latency``: one worker, lines produced at a fixed rate (half the one-worker ``lines_per_s_scored``, the rate it
  sustains with scoring, unless ``--rate``) for 60 s, with an idle timeout of 10 s so that sessions close all along
  the run. This process produces them, with librdkafka's producer unless ``--load-client kafka-python``
  (``load_generator_cpu_s``: this process's CPU meanwhile, event reader included). ``idle_after_warm_up_delay_ms``
  leaves out the events of windows cut in the first ``warm_up_s`` (5 s) after the first cut, and
  ``idle_first_closes_delay_ms`` holds only those: a score cache that starts empty (``detector.warm_cache`` off, or a
  bundle without warm windows) makes the model score every window of those first closes at the stream's full rate.
  HDFS sessions never fill a 64-key window, so events come from sessions closed by the idle timeout:
  ``idle_delay_ms`` = arrival of the event on the output topic - record timestamp of the window's last input line -
  ``idle_timeout_s``, i.e. what the detector adds to the wait the idle rule imposes (``full_delay_ms``, for windows
  cut full, subtracts nothing). ``cut_delay_ms`` is the part until the worker cut the window (consume lag and sweep
  phase), ``publish_delay_ms`` the rest (scoring, publishing, the reader's fetch). ``worker_timings`` reads the
  worker's own histograms at the end (sweeps, the wait for the scorer thread, scoring, the publish flush): how many
  took longer than 0.1 / 0.25 / 0.5 / 1 s.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import numpy as np
import redis

from streamer.embedded import free_port, start_broker, start_redis
from streamer.kafka_io import ensure_topics, make_producer, produce_lines

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "hdfs.toml"
MODEL = REPO / "models" / "hdfs"
SOURCES = [REPO / "data" / "hdfs" / "train.log.gz", REPO / "data" / "hdfs" / "holdout.log.gz"]
_BLK = re.compile(r"blk_(-?)(\d+)")
_BLOCK_ID = re.compile(r"blk_-?\d+")


def real_lines(n: int) -> list[str]:
    """``n`` real HDFS lines; past the bundled ones, copies whose block ids are renamed per pass (new sessions)."""
    from training.data import iter_lines

    base = list(iter_lines(SOURCES))
    out = []
    for i in range(n):
        p, k = divmod(i, len(base))
        out.append(_BLK.sub(lambda m, p=p: f"blk_{m.group(1)}{p + 1}{m.group(2)}", base[k]) if p  # type: ignore[misc]
                   else base[k])
    return out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- plain Drain3 -----------------------------------------------------------------------------------------------------

def bench_drain3(lines: list[str]) -> dict[str, Any]:
    from drain3 import TemplateMiner
    from drain3.masking import MaskingInstruction
    from drain3.template_miner_config import TemplateMinerConfig

    from logbert_core.config import load_settings

    p = load_settings(CONFIG).parser
    cfg = TemplateMinerConfig()
    cfg.masking_instructions = [MaskingInstruction(r.regex_pattern, r.mask_with) for r in p.masking]
    cfg.drain_sim_th, cfg.drain_depth, cfg.drain_max_children = p.sim_th, p.depth, p.max_children
    cfg.profiling_enabled = False
    miner = TemplateMiner(config=cfg)
    add = miner.add_log_message
    t0 = time.perf_counter()
    for line in lines:
        add(line)
    dt = time.perf_counter() - t0
    return {"lines": len(lines), "seconds": round(dt, 2), "lines_per_s": round(len(lines) / dt),
            "clusters": len(miner.drain.clusters), "load": load()}


# -- the scorer alone ----------------------------------------------------------------------------------------------

def _scorer(threads: int, autocast: bool, cache_size: int = 0) -> tuple[Any, Any]:
    from logbert_core.bundle import load_bundle
    from logbert_core.config import load_settings
    from logbert_core.runtime import build_judge

    s, bundle = load_settings(CONFIG), load_bundle(MODEL)
    judge = build_judge(bundle, s, "cpu", bf16=autocast, cache_size=cache_size, threads=threads)
    return judge.scorer, bundle


def _rate(score: Any, windows: list[list[int]], min_s: float) -> float:
    score(windows)  # warm-up (and the scoring threads started)
    n, t0 = 0, time.perf_counter()
    while True:
        score(windows)
        n += len(windows)
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return round(n / dt, 1)


def bench_scorer(lengths: tuple[int, ...], batches: tuple[int, ...], threads: tuple[int, ...], min_s: float,
                 autocast: bool = False) -> list[dict[str, Any]]:
    """Synthetic windows (keys drawn uniformly, so they miss often: the slow case for the miss records)."""
    from logbert_core.vocab import FIRST_KEY

    out = []
    for t in threads:
        scorer, bundle = _scorer(t, autocast)
        rng = np.random.default_rng(0)
        for length in lengths:
            for batch in batches:
                windows = rng.integers(FIRST_KEY, bundle.model_config.vocab_size, size=(batch, length)).tolist()
                out.append({"length": length, "batch": batch, "windows_per_s": _rate(scorer.score, windows, min_s),
                            "threads": t, "bf16_autocast": autocast, "load": load()})
    return out


def bench_scorer_real(threads: tuple[int, ...], min_s: float, autocast: bool = False) -> dict[str, Any]:
    """The bundled HDFS lines' own windows (as the detector cuts them): the distinct ones scored without the cache,
    in batches of 256 (what the model costs on real lengths), and all of them in log order through a fresh cache
    of the worker's default size (what a worker's scorer spends on a stream that repeats its lifecycles)."""
    from logbert_core.bundle import load_bundle
    from logbert_core.config import load_settings
    from training.evaluate import offline_windows

    s = load_settings(CONFIG)
    sessions = offline_windows(load_bundle(MODEL), s, SOURCES, finished=True)
    stream = [w for sw in sessions.values() for w in sw.windows]
    distinct = [list(w) for w in dict.fromkeys(tuple(w) for w in stream)]
    lengths = np.array([len(w) for w in stream])
    out: dict[str, Any] = {"windows": len(stream), "distinct": len(distinct),
                           "length_p50_p99_max": [int(np.percentile(lengths, 50)), int(np.percentile(lengths, 99)),
                                                  int(lengths.max())], "bf16_autocast": autocast, "by_threads": []}
    for t in threads:
        scorer, _ = _scorer(t, autocast)
        uncached = _rate(lambda ws, sc=scorer: [sc.score(ws[i:i + 256]) for i in range(0, len(ws), 256)],
                         distinct, min_s)
        cached, _ = _scorer(t, autocast, cache_size=s.detector.score_cache)
        t0 = time.perf_counter()
        for i in range(0, len(stream), 256):
            cached.score(stream[i:i + 256])
        dt = time.perf_counter() - t0
        out["by_threads"].append({
            "threads": t, "distinct_uncached_windows_per_s": uncached,
            "stream_cached_windows_per_s": round(len(stream) / dt, 1),
            "cache_hit_rate": round(cached.cache_hits / (cached.cache_hits + cached.cache_misses), 3),
            "load": load()})
    return out


# -- the consumer alone ----------------------------------------------------------------------------------------------

def bench_consume(stack: Stack, lines: list[str], partitions: int) -> list[dict[str, Any]]:
    """Each consumer the detector can use (``kafka.client``), alone in this process, reading the same backlog in
    batches of 1,000 through the detector's own factory and adapter (``streamer.kafka_clients.broker_clients``:
    the settings, the typed ``Message`` records and the rebalance hand-off the worker gets); CPU of this process,
    librdkafka's threads included."""
    import resource

    from logbert_core.config import load_settings
    from streamer.broker import Partition
    from streamer.kafka_clients import broker_clients

    class Ignore:  # the worker's rebalance listener does its own work; here nothing is to be done
        def on_partitions_assigned(self, assigned: set[Partition]) -> None:
            pass

        def on_partitions_revoked(self, revoked: set[Partition]) -> None:
            pass

    topic, group = stack.names("consume", partitions)
    produce_lines(stack.broker.url, topic, lines)

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    out = []
    for client in ("kafka-python", "confluent-kafka"):
        settings = load_settings(CONFIG, kafka={"bootstrap_servers": stack.broker.url, "input_topic": topic,
                                                "group_id": f"{group}-{client}", "session_timeout_ms": 6000,
                                                "max_poll_records": 1000, "client": client})
        consumer = broker_clients(settings).consumer(Ignore())
        n, t0, c0 = 0, None, 0.0
        deadline = time.monotonic() + 120
        while n < len(lines) and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=1000, max_records=1000)
            got = [m.value for msgs in batch.values() for m in msgs]
            if got and t0 is None:  # the clock starts at the first records: the group join is left out
                t0, c0 = time.perf_counter(), cpu()
            n += len(got)
        dt, used = time.perf_counter() - (t0 or time.perf_counter()), cpu() - c0
        consumer.close()
        out.append({"client": client, "records": n, "records_per_s": round(n / dt) if dt else None,
                    "cpu_us_per_record": round(used / max(n, 1) * 1e6, 2), "load": load()})
    return out


# -- the real pipeline -----------------------------------------------------------------------------------------------

class Stack:
    """One broker and one redis-server for the whole run; each measurement gets its own topic, group, namespace."""

    def __init__(self) -> None:
        self.redis, self.broker = start_redis(), start_broker()
        self.r = redis.Redis.from_url(self.redis.url)
        self.runs = 0
        self.dir = Path(self.redis.log_path).parent

    def close(self) -> None:
        self.broker.stop()
        self.redis.stop()

    def names(self, what: str, partitions: int) -> tuple[str, str]:
        self.runs += 1
        topic, group = f"bench{self.runs}.{what}", f"bench{self.runs}{what}"
        ensure_topics(self.broker.url, {topic: partitions, f"{topic}.out": 1, f"{topic}.dlq": 1})
        return topic, group

    def spawn(self, topic: str, group: str, idle_s: float, n: int, extra: dict[str, str]) -> list[tuple[Any, int]]:
        procs = []
        for i in range(n):
            port = free_port()
            env = dict(os.environ, LOGAD_KAFKA__BOOTSTRAP_SERVERS=self.broker.url, LOGAD_KAFKA__INPUT_TOPIC=topic,
                       LOGAD_KAFKA__OUTPUT_TOPIC=f"{topic}.out", LOGAD_KAFKA__GROUP_ID=group,
                       LOGAD_REDIS__URL=self.redis.url, LOGAD_REDIS__NAMESPACE=group,
                       LOGAD_SESSION__IDLE_TIMEOUT_S=str(idle_s), LOGAD_HTTP__PORT=str(port),
                       LOGAD_KAFKA__SESSION_TIMEOUT_MS="6000", **extra)
            log = open(self.dir / f"{group}-w{i}.log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "run", "--config", str(CONFIG),
                                     "--model", str(MODEL)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            procs.append((proc, port))
        return procs

    def open_state(self, group: str) -> tuple[int, int]:
        idle = sum(self.r.zcard(k) for k in self.r.scan_iter(match=f"{group}:*:idle"))
        pending = sum(self.r.zcard(k) for k in self.r.scan_iter(match=f"{group}:*:pending"))
        return idle, pending


def ready(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


_TIMINGS = ("logad_sweep_seconds", "logad_score_queue_wait_seconds", "logad_score_seconds",
            "logad_publish_flush_seconds", "logad_offset_commit_seconds")


def worker_timings(port: int) -> dict[str, Any]:
    """The worker's own timing histograms from its /metrics: count, sum and how many took longer than 0.1, 0.25,
    0.5 and 1 s (where the time of a latency tail went)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    samples = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln and not ln.startswith("#")}
    out: dict[str, Any] = {}
    if "logad_sweeps_deferred_total" in samples:
        out["sweeps_deferred"] = int(samples["logad_sweeps_deferred_total"])
    for name in _TIMINGS:
        n = samples.get(f"{name}_count")
        if not n:
            continue
        over = {f"over_{le}s": int(n - samples[f'{name}_bucket{{le="{le}"}}']) for le in ("0.1", "0.25", "0.5", "1.0")
                if f'{name}_bucket{{le="{le}"}}' in samples}
        out[name.removeprefix("logad_")] = {"count": int(n), "sum_s": round(samples[f"{name}_sum"], 2), **over}
    return out


class Committed:
    """Committed offsets of a group, read with one long-lived admin client (cheap to poll)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        from kafka import KafkaAdminClient, TopicPartition

        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        self.group = group
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]

    def total(self) -> int:
        found = self.admin.list_group_offsets({self.group: self.tps}).get(self.group, {})
        return sum(m.offset for m in found.values() if m is not None and m.offset is not None and m.offset > 0)

    def close(self) -> None:
        self.admin.close()


def stop_workers(procs: list[tuple[Any, int]]) -> list[int]:
    for proc, _ in procs:
        proc.terminate()
    return [proc.wait(60) for proc, _ in procs]


def wait_ready(procs: list[tuple[Any, int]], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, _ in procs:
            if proc.poll() is not None:
                raise SystemExit(f"a worker exited with {proc.returncode} before it was ready")
        states = [ready(port) for _, port in procs]
        if all(s and s.get("ready") for s in states):
            return
        time.sleep(0.2)
    raise SystemExit("workers not ready in time")


def rd_producer(bootstrap: str, linger_ms: int) -> Any:
    """librdkafka's producer for the load generators: a few us of this process's CPU per line."""
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "acks": "all"})


def rd_produce(producer: Any, topic: str, value: bytes, **kwargs: Any) -> None:
    """Produce one record, waiting while librdkafka's local queue is full."""
    while True:
        try:
            producer.produce(topic, value, **kwargs)
            break
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(0.01)
    producer.poll(0)


def feed_lines(bootstrap: str, topic: str, lines: list[str]) -> None:
    """Produce the lines as fast as librdkafka takes them (the ``live`` load generator)."""
    producer = rd_producer(bootstrap, linger_ms=5)
    for line in lines:
        rd_produce(producer, topic, line.encode())
    if producer.flush(600):
        raise SystemExit("the live feeder could not deliver every line")


def bench_e2e(stack: Stack, lines: list[str], workers: int, partitions: int, idle_s: float,
              extra: dict[str, str], live: bool = False) -> dict[str, Any]:
    """A backlog consumed by ready workers, or (``live``) lines produced as fast as this process can while they
    consume: the clock then starts at the first line produced."""
    topic, group = stack.names(f"{'live' if live else 'e2e'}{workers}", partitions)
    n = len(lines) if live else produce_lines(stack.broker.url, topic, lines, timeout_s=600)
    procs = stack.spawn(topic, group, idle_s, workers, extra)
    committed = Committed(stack.broker.url, group, topic, partitions)
    try:
        wait_ready(procs)
        cpu0 = sum(cpu_seconds(p.pid) for p, _ in procs)
        t_first = c_first = None
        t_committed = None
        if live:  # librdkafka's producer: a few us of this process's CPU per line, beside the workers
            feeder = threading.Thread(target=feed_lines, args=(stack.broker.url, topic, lines), daemon=True)
            t_first, c_first = time.monotonic(), 0
            feeder.start()
        while True:
            now, done = time.monotonic(), committed.total()
            if any(p.poll() is not None for p, _ in procs):
                raise SystemExit(f"a worker exited; logs in {stack.dir}")
            if t_first is None and done > 0 and all((ready(port) or {}).get("ready") for _, port in procs):
                t_first, c_first, cpu0 = now, done, sum(cpu_seconds(p.pid) for p, _ in procs)
            if t_first is not None and t_committed is None and done >= n:
                t_committed = now
                cpu_committed = sum(cpu_seconds(p.pid) for p, _ in procs)
            if t_committed is not None and stack.open_state(group) == (0, 0):
                t_scored = now
                cpu_scored = sum(cpu_seconds(p.pid) for p, _ in procs)
                break
            time.sleep(0.1)
        assert t_first is not None and c_first is not None
        measured = n - c_first
        result = {"workers": workers, "partitions": partitions, "live": live, "lines": n, "lines_measured": measured,
                  "seconds_committed": round(t_committed - t_first, 2),
                  "lines_per_s_committed": round(measured / max(t_committed - t_first, 1e-9)),
                  "seconds_scored": round(t_scored - t_first, 2),
                  "lines_per_s_scored": round(measured / max(t_scored - t_first, 1e-9)),
                  "idle_timeout_s": idle_s,
                  "cpu_s_per_100k_committed": round((cpu_committed - cpu0) / measured * 1e5, 2),
                  "cpu_s_per_100k_scored": round((cpu_scored - cpu0) / measured * 1e5, 2),
                  "events": len(_read_events(stack.broker.url, f"{topic}.out")), "load": load()}
    finally:
        committed.close()
        result_codes = stop_workers(procs)
    result["worker_exit_codes"] = result_codes
    return result


def _read_events(bootstrap: str, topic: str) -> list[Any]:
    from streamer.kafka_io import read_all

    return read_all(bootstrap, topic, timeout_s=20)


class EventReader(threading.Thread):
    """Records the arrival time of every record on the output topic."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      fetch_max_wait_ms=20, auto_offset_reset="earliest")
        self.consumer.assign([TopicPartition(topic, 0)])
        self.arrivals: list[tuple[float, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for recs in self.consumer.poll(timeout_ms=100).values():
                now = time.time()
                self.arrivals.extend((now, r.value) for r in recs)
        self.consumer.close()


def bench_latency(stack: Stack, lines: list[str], rate: float, partitions: int, idle_s: float,
                  extra: dict[str, str], load_client: str = "confluent-kafka", warm_up_s: float = 5.0,
                  events_out: str | None = None) -> dict[str, Any]:
    topic, group = stack.names("lat", partitions)
    procs = stack.spawn(topic, group, idle_s, 1, extra)
    reader = EventReader(stack.broker.url, f"{topic}.out")
    reader.start()
    times: dict[str, list[int]] = {}  # session -> record timestamps of its lines, in produce order
    # The load generator shares the two cores with the worker, the broker and Redis: librdkafka's producer costs a
    # few microseconds of this process's CPU per line, kafka-python's some tens (``load_client``).
    if load_client == "confluent-kafka":
        producer = rd_producer(stack.broker.url, linger_ms=2)
        ring = sorted(producer.list_topics(topic, timeout=10).topics[topic].partitions)

        def send(line: str, partition: int, ts: int) -> None:
            rd_produce(producer, topic, line.encode(), partition=partition, timestamp=ts)
    else:
        producer = make_producer(stack.broker.url, linger_ms=2)
        ring = sorted(producer.partitions_for(topic))

        def send(line: str, partition: int, ts: int) -> None:
            producer.send(topic, value=line.encode(), partition=partition, timestamp_ms=ts)
    try:
        wait_ready(procs)
        cpu0 = time.process_time()
        t0 = time.time()
        sent, late_max = 0, 0.0
        while sent < len(lines):
            due = min(len(lines), int((time.time() - t0) * rate) + 1)
            late_max = max(late_max, due - sent)
            while sent < due:
                line = lines[sent]
                ts = int(time.time() * 1000)
                send(line, ring[sent % len(ring)], ts)
                for sid in dict.fromkeys(_BLOCK_ID.findall(line)):
                    times.setdefault(sid, []).append(ts)
                sent += 1
            time.sleep(0.005)
        producer.flush(60)
        produce_s = time.time() - t0
        produce_cpu_s = time.process_time() - cpu0  # this process: the producer and the event reader
        started = time.monotonic()
        while stack.open_state(group) != (0, 0) or time.monotonic() - started < idle_s + 1:
            if time.monotonic() - started > 300 + idle_s:
                raise SystemExit("latency run did not finish")
            time.sleep(0.2)
        time.sleep(2)
        timings = [worker_timings(port) for _, port in procs]
    finally:
        if load_client != "confluent-kafka":
            producer.close(5)
        reader.stop.set()
        reader.join(10)
        codes = stop_workers(procs)
    delays: dict[str, list[float]] = {"idle": [], "full": [], "cut": [], "publish": [], "idle_after_warm_up": [],
                                      "idle_first_closes": []}
    events = [(arrived, json.loads(value)) for arrived, value in reader.arrivals]
    cuts = [datetime.fromisoformat(ev["detected_at"]).timestamp() for _, ev in events]  # the worker's clock
    warm_from = min(cuts, default=0.0) + warm_up_s
    dump: list[dict[str, Any]] | None = [] if events_out else None
    for (arrived, ev), cut in zip(events, cuts):
        sid, w = ev["session_id"], ev["window"]
        # the window's last entry is the session's (start + count)-th line: the one that filled a full window, or
        # the last one before an idle session was closed, which the idle rule makes wait idle_timeout_s
        last = times[sid][min(w["start_index"] + w["line_count"], len(times[sid])) - 1]
        wait_ms = idle_s * 1000 if w["cause"] == "idle" else 0
        delays[w["cause"]].append(arrived * 1000 - last - wait_ms)
        if w["cause"] == "idle":
            after = "idle_after_warm_up" if cut >= warm_from else "idle_first_closes"
            delays[after].append(arrived * 1000 - last - wait_ms)
        delays["cut"].append(cut * 1000 - last - wait_ms)  # consume lag + sweep phase
        delays["publish"].append(arrived * 1000 - cut * 1000)  # scoring, publishing, the reader's fetch
        if dump is not None:
            dump.append({"session": sid, "cause": w["cause"], "last_line_ms": last, "cut_ms": round(cut * 1000, 1),
                         "arrived_ms": round(arrived * 1000, 1), "delay_ms": round(arrived * 1000 - last - wait_ms, 1)})
    out: dict[str, Any] = {"rate_lines_per_s": rate, "lines": len(lines), "produce_seconds": round(produce_s, 1),
                           "load_client": load_client, "load_generator_cpu_s": round(produce_cpu_s, 1),
                           "idle_timeout_s": idle_s, "events": len(reader.arrivals), "producer_max_behind": late_max,
                           "warm_up_s": warm_up_s, "worker_timings": timings,
                           "worker_exit_codes": codes, "load": load()}
    if events_out and dump is not None:
        Path(events_out).write_text("".join(json.dumps(d) + "\n" for d in dump))
    for cause, xs in delays.items():
        if xs:
            a = np.asarray(xs)
            out[f"{cause}_delay_ms"] = {"n": len(xs), "p50": round(float(np.percentile(a, 50))),
                                        "p99": round(float(np.percentile(a, 99))), "max": round(float(a.max()))}
    return out


def device() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "python":
            platform.python_version()}


@click.command()
@click.option("--lines", "n", type=int, default=300_000, show_default=True, help="Lines for drain3 and e2e.")
@click.option("--partitions", type=int, default=4, show_default=True)
@click.option("--idle-timeout", "idle_s", type=float, default=2.0, show_default=True,
              help="session.idle_timeout_s of the workers (s).")
@click.option("--only", type=click.Choice(["drain3", "scorer", "consume", "e2e", "live", "scaleout", "latency"]),
              multiple=True,
              help="Run only these parts (repeatable); default: all.")
@click.option("--rate", type=float, default=None, help="Latency run: lines/s (default: half the e2e rate).")
@click.option("--latency-seconds", type=float, default=60.0, show_default=True)
@click.option("--latency-idle-timeout", "lat_idle_s", type=float, default=10.0, show_default=True,
              help="session.idle_timeout_s of the latency run (sessions close all along a run 6x as long).")
@click.option("--scorer-threads", type=int, multiple=True,
              help="Scoring threads to measure the scorer with (repeatable; default: 1 and every core).")
@click.option("--scorer-seconds", type=float, default=1.0, show_default=True, help="Time per scorer figure.")
@click.option("--bf16", is_flag=True, help="Scorer benchmark also with bf16 autocast (CPU).")
@click.option("--load-client", type=click.Choice(["confluent-kafka", "kafka-python"]), default="confluent-kafka",
              show_default=True, help="Latency run: the producer client of the load generator (this process).")
@click.option("--env", "envs", multiple=True, metavar="NAME=VALUE", help="Extra LOGAD_ setting for the workers.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here.")
@click.option("--events-out", type=click.Path(dir_okay=False), default=None,
              help="Latency run: write each event's times here, one JSON line each (to see where a tail comes from).")
def main(n: int, partitions: int, idle_s: float, only: tuple[str, ...], rate: float | None, latency_seconds: float,
         lat_idle_s: float, scorer_threads: tuple[int, ...], scorer_seconds: float, bf16: bool, load_client: str,
         envs: tuple[str, ...], out: str | None, events_out: str | None) -> None:
    """Measure the pipeline against its limits; prints one JSON object."""
    parts = set(only or ("drain3", "scorer", "consume", "e2e", "live", "scaleout", "latency"))
    extra = dict(e.split("=", 1) for e in envs)
    result: dict[str, Any] = {"device": device(), "load_at_start": load(), "lines": n}
    lines = real_lines(n) if parts & {"drain3", "consume", "e2e", "live", "scaleout", "latency"} else []
    if "drain3" in parts:
        result["drain3"] = bench_drain3(lines)
    if "scorer" in parts:
        threads = scorer_threads or tuple(sorted({1, os.cpu_count() or 1}))
        result["scorer"] = bench_scorer((16, 32, 64), (1, 16, 64, 256, 1024), threads, scorer_seconds)
        result["scorer_real"] = bench_scorer_real(threads, scorer_seconds)
        if bf16:
            result["scorer_bf16"] = bench_scorer((16, 32, 64), (64, 256, 1024), threads, scorer_seconds,
                                                 autocast=True)
            result["scorer_real_bf16"] = bench_scorer_real(threads, scorer_seconds, autocast=True)
    if parts & {"consume", "e2e", "live", "scaleout", "latency"}:
        stack = Stack()
        try:
            if "consume" in parts:
                result["consume"] = bench_consume(stack, lines, partitions)
            if parts & {"e2e", "scaleout"} or ("latency" in parts and rate is None):  # latency's rate comes from e2e
                result["e2e"] = bench_e2e(stack, lines, 1, partitions, idle_s, extra)
            if "live" in parts:
                result["e2e_live"] = bench_e2e(stack, lines, 1, partitions, idle_s, extra, live=True)
            if "scaleout" in parts:
                two = bench_e2e(stack, lines, 2, partitions, idle_s, extra)
                result["scaleout"] = {"two_workers": two, "ratio_committed": round(
                    two["lines_per_s_committed"] / result["e2e"]["lines_per_s_committed"], 2), "ratio_scored": round(
                    two["lines_per_s_scored"] / result["e2e"]["lines_per_s_scored"], 2)}
            if "latency" in parts:
                r = rate or result["e2e"]["lines_per_s_scored"] / 2  # the rate it sustains, scoring included
                result["latency"] = bench_latency(stack, real_lines(int(r * latency_seconds)), r, partitions,
                                                  lat_idle_s, extra, load_client, events_out=events_out)
        finally:
            stack.close()
    for name in ("e2e", "e2e_live"):
        if "drain3" in result and name in result:
            result[f"ratio_{name}_to_drain3"] = {
                what: round(result[name][f"lines_per_s_{what}"] / result["drain3"]["lines_per_s"], 2)
                for what in ("committed", "scored")}
    result["load_at_end"] = load()
    text = json.dumps(result, indent=1)
    click.echo(text)
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()

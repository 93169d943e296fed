"""What the worker holds for as long as it runs, and lets go of when it stops: its Kafka clients (made on first use,
so a broker that comes up late is waited for with back-off) and its housekeeping (a frozen heap, the heap trimmer
and the Redis memory poll). ``Worker.run`` releases all of it through one ``contextlib.ExitStack``."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack

import redis

from logbert_core.config import Settings
from streamer import metrics as m
from streamer.broker import BrokerConsumer, BrokerProducer, RebalanceListener
from streamer.errors import BrokerUnavailable
from streamer.kafka_clients import broker_clients

log = logging.getLogger("streamer.worker")  # the worker's parts log under its name, as before the split


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


class Clients:
    """The worker's consumer and event producer (``streamer.broker``), each made on first use (``BrokerUnavailable``
    while the broker is absent: the caller retries with back-off) unless given."""

    def __init__(self, settings: Settings, listener: RebalanceListener, consumer: BrokerConsumer | None = None,
                 producer: BrokerProducer | None = None) -> None:
        self.listener = listener
        self.factory = broker_clients(settings)  # KafkaSettingsError: exit 2
        self._consumer = consumer
        self._producer = producer

    def consumer(self) -> BrokerConsumer:
        if self._consumer is None:
            self._consumer = self.factory.consumer(self.listener)
        return self._consumer

    def producer(self) -> BrokerProducer:
        if self._producer is None:
            self._producer = self.factory.producer()
        return self._producer

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout_s=10)
            except BrokerUnavailable as exc:
                log.warning("producer close: %s", exc)
        if self._consumer is not None:
            try:
                self._consumer.close()
            except BrokerUnavailable as exc:
                log.warning("consumer close: %s", exc)
        self._consumer = None
        self._producer = None


class Housekeeping:
    """Memory: the long-lived heap frozen out of the collector's reach, freed pages returned to the OS, and Redis
    memory read for the metrics, on threads that run while ``start``'s stack is open."""

    def __init__(self, settings: Settings, probe: redis.Redis, idle_key: Callable[[], str]) -> None:
        self.s = settings
        self.probe = probe  # a client with a 1 s timeout, so a hung Redis costs the poll thread, not the loop
        self.idle_key = idle_key  # the active bundle's sorted set of open sessions
        self.refreeze = False  # a released bundle was unfrozen: freeze the heap again when no job holds it

    def start(self, stack: ExitStack) -> None:
        """Freeze the heap and start the threads; ``stack`` unfreezes it and stops them."""
        stack.callback(gc.unfreeze)  # the process may go on (tests, an embedding application): collect as usual
        self.freeze()
        done = threading.Event()
        self._trimmer(done)
        self._memory_poll(done)
        stack.callback(done.set)

    def freeze(self) -> None:
        """Move every object alive now (torch, the model, the parser's state: they live as long as the process)
        out of the collector's reach. A full collection otherwise walks them all and holds the GIL meanwhile:
        measured in a 60 s latency run, 14 full passes of 96-128 ms each, against 1.5 ms (p50) once frozen.
        Frozen objects are never collected by the cycle collector, so when a bundle is released after a reload the
        heap is unfrozen, and frozen again once no job refers to that bundle (``refreeze_if_idle``)."""
        gc.collect()
        gc.freeze()
        self.refreeze = False

    def released(self) -> None:
        """An engine was dropped: make what was frozen collectable again, and freeze anew once no job refers to
        the engine any more."""
        gc.unfreeze()
        self.refreeze = True

    def refreeze_if_idle(self, jobs_in_flight: int) -> None:
        if self.refreeze and not jobs_in_flight:  # no job holds a released bundle any more
            self.freeze()

    def _trimmer(self, done: threading.Event) -> threading.Thread | None:
        """A daemon thread that returns freed heap pages to the OS every ``detector.malloc_trim_interval_s``
        (glibc only; elsewhere nothing happens). ctypes lets go of the GIL for the call, so Python threads go on."""
        interval = self.s.detector.malloc_trim_interval_s
        trim = _malloc_trim()
        if not interval or trim is None:
            return None

        def loop() -> None:
            while not done.wait(interval):
                trim(0)

        thread = threading.Thread(target=loop, name="logad-malloc-trim", daemon=True)
        thread.start()
        return thread

    def _memory_poll(self, done: threading.Event) -> threading.Thread | None:
        """A daemon thread that reads Redis ``INFO memory`` and the open sessions every ``redis.memory_poll_s``."""
        interval = self.s.redis.memory_poll_s
        if not interval:
            return None

        def poll() -> None:
            try:
                info = self.probe.info("memory")
                m.REDIS_MEMORY.set(float(info.get("used_memory", 0)))
                m.REDIS_MAXMEMORY.set(float(info.get("maxmemory", 0)))
                m.SESSIONS_OPEN.set(self.probe.zcard(self.idle_key()))
            except redis.RedisError:
                pass  # the loop's own calls count and handle the outage

        def loop() -> None:
            poll()
            while not done.wait(interval):
                poll()

        thread = threading.Thread(target=loop, name="logad-redis-memory", daemon=True)
        thread.start()
        return thread

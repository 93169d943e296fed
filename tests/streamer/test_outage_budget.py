"""The outage budget counts from the first sign of trouble, never lets one try overrun it, and /health says so."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import redis

from logbert_core.config import ConfigError, load_settings
from streamer import metrics as m
from streamer.errors import OutageError
from streamer.http import StatusServer
from streamer.worker import Backoff


def hung(seconds: float):
    def fn() -> None:
        time.sleep(seconds)  # a call that hangs until its socket timeout
        raise redis.TimeoutError("Timeout reading from socket")
    return fn


def test_the_budget_counts_from_the_start_of_the_first_hung_call_and_no_try_overruns_it():
    backoff = Backoff(1.0, threading.Event(), lambda ok: None, base_s=0.05, try_s={"redis": 0.3})
    t0 = time.monotonic()
    with pytest.raises(OutageError, match=r"redis append unavailable for 1\.0 s, from the first failed or hung call"):
        backoff.call("redis append", hung(0.3), (redis.RedisError,), m.REDIS_ERRORS)
    assert 1.0 <= time.monotonic() - t0 < 1.15  # not 1.0 + a hang of 0.3 s
    # every later call gives up at once, on any thread
    t1 = time.monotonic()
    with pytest.raises(OutageError, match="not tried"):
        backoff.call("publish", lambda: None, (redis.RedisError,), m.REDIS_ERRORS)
    assert time.monotonic() - t1 < 0.05


def test_an_earlier_failure_outside_the_back_off_starts_the_clock_and_a_success_clears_it():
    backoff = Backoff(1.0, threading.Event(), lambda ok: None, base_s=0.05)
    backoff.note_failure("redis", time.monotonic() - 0.8)  # e.g. a watermark report that hung 0.8 s ago
    assert backoff.outage_s() >= 0.8
    t0 = time.monotonic()
    with pytest.raises(OutageError):
        backoff.call("redis sweep", hung(0.01), (redis.RedisError,), m.REDIS_ERRORS)
    assert time.monotonic() - t0 < 0.4  # 0.2 s of budget were left

    fresh = Backoff(1.0, threading.Event(), lambda ok: None)
    fresh.note_failure("redis", time.monotonic() - 0.5)
    assert fresh.call("redis read", lambda: 7, (redis.RedisError,), m.REDIS_ERRORS) == 7
    assert fresh.outage_s() == 0.0


def test_socket_timeouts_longer_than_a_quarter_of_the_budget_are_refused():
    with pytest.raises(ConfigError, match=r"redis.socket_timeout_s \(5\) must be at most a quarter of "
                                          r"detector.outage_budget_s \(8\)"):
        load_settings(None, detector={"outage_budget_s": 8}, redis={"socket_timeout_s": 5})
    with pytest.raises(ConfigError, match="kafka.request_timeout_s"):
        load_settings(None, detector={"outage_budget_s": 8}, kafka={"request_timeout_s": 3})
    s = load_settings(None, detector={"outage_budget_s": 8})
    assert s.redis_socket_timeout_s() == pytest.approx(1.6) and s.kafka_request_timeout_s() == pytest.approx(1.6)
    assert load_settings(None).redis_socket_timeout_s() == 5.0  # the default budget (300 s): as before
    with pytest.raises(ConfigError, match=r"session.closed_ttl_s \(60\) must be at least"):
        load_settings(None, session={"closed_ttl_s": 60})


def test_health_turns_503_past_the_stated_fraction_of_the_budget():
    state = {"ok": True}

    class Probe:
        def readiness(self):
            return True, {}

        def liveness(self):
            return state["ok"], {"outage_s": 4.5, "limit_s": 4.0}

    server = StatusServer("127.0.0.1", 0, Probe().readiness).start()  # liveness found behind the bound method
    try:
        url = f"http://127.0.0.1:{server.port}/health"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert (resp.status, json.loads(resp.read())) == (200, {"status": "alive"})
        state["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=5)
        assert err.value.code == 503
        assert json.loads(err.value.read()) == {"status": "stuck", "outage_s": 4.5, "limit_s": 4.0}
    finally:
        server.stop()

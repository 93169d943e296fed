"""Soak: stream N real HDFS lines (re-keyed copies of the bundled data) through one `logad run` process and print
its resident memory over the run, end-to-end throughput and Redis memory, as JSON.

    python -m benchmarks.soak --lines 1000000

Each pass over the bundled HDFS lines renames every block id (blk_123 -> blk_<pass>123), so every pass adds new
sessions, as a long-running stream does. Sessions expire from Redis after `--ttl` seconds (LOGAD_SESSION__TTL_S).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click
import redis

from streamer.embedded import start_broker, start_redis
from streamer.kafka_io import committed_offsets, ensure_topics, produce_lines
from training.data import iter_lines

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "data" / "hdfs" / "train.log.gz", REPO / "data" / "hdfs" / "holdout.log.gz"]
_BLK = re.compile(r"blk_(-?)(\d+)")


def stream(n: int) -> Iterator[str]:
    base = list(iter_lines(SOURCES))
    for i in range(n):
        p, line = divmod(i, len(base))
        yield (_BLK.sub(lambda m, p=p: f"blk_{m.group(1)}{p + 1}{m.group(2)}", base[line])  # type: ignore[misc]
               if p else base[line])


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":", 1)
            fields[k] = int(v.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


@click.command()
@click.option("--lines", "n", type=int, default=1_000_000, show_default=True)
@click.option("--partitions", type=int, default=4, show_default=True)
@click.option("--ttl", type=int, default=120, show_default=True, help="Redis TTL of an inactive session (s).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here.")
def main(n: int, partitions: int, ttl: int, out: str | None) -> None:
    rds, broker = start_redis(), start_broker()
    topic, group = "soak.raw", "soak"
    try:
        ensure_topics(broker.url, {topic: partitions, "soak.out": 1, "soak.raw.dlq": 1})
        env = dict(os.environ, LOGAD_KAFKA__BOOTSTRAP_SERVERS=broker.url, LOGAD_KAFKA__INPUT_TOPIC=topic,
                   LOGAD_KAFKA__OUTPUT_TOPIC="soak.out", LOGAD_KAFKA__GROUP_ID=group, LOGAD_REDIS__URL=rds.url,
                   LOGAD_SESSION__IDLE_TIMEOUT_S="5", LOGAD_SESSION__TTL_S=str(ttl), LOGAD_HTTP__PORT="0",
                   LOGAD_KAFKA__SESSION_TIMEOUT_MS="6000")
        log_path = Path(rds.log_path).parent / "worker.log"
        worker = subprocess.Popen([sys.executable, "-m", "streamer.cli", "run", "--config",
                                   str(REPO / "config" / "hdfs.toml"), "--model", str(REPO / "models" / "hdfs")],
                                  env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO)
        producer = threading.Thread(target=produce_lines, args=(broker.url, topic, stream(n)),
                                    kwargs={"timeout_s": 600}, daemon=True)
        t0 = time.monotonic()
        producer.start()
        r = redis.Redis.from_url(rds.url)
        samples, next_mark = [], 0
        done = 0
        while done < n:
            if worker.poll() is not None:
                raise SystemExit(f"worker exited with {worker.returncode}; log: {log_path}")
            done = sum(v or 0 for v in committed_offsets(broker.url, group, topic).values())
            if done >= next_mark:
                rss, hwm = rss_kb(worker.pid)
                samples.append({"committed": done, "seconds": round(time.monotonic() - t0, 1),
                                "rss_mb": round(rss / 1024, 1),
                                "redis_used_mb": round(r.info("memory")["used_memory"] / 2**20, 1)})
                next_mark = (done // (n // 10) + 1) * (n // 10)
            time.sleep(1.0)
        elapsed = time.monotonic() - t0
        rss, hwm = rss_kb(worker.pid)
        samples.append({"committed": done, "seconds": round(elapsed, 1), "rss_mb": round(rss / 1024, 1),
                        "redis_used_mb": round(r.info("memory")["used_memory"] / 2**20, 1)})
        worker.terminate()
        code = worker.wait(60)
        result = {"lines": n, "seconds_to_all_committed": round(elapsed, 1),
                  "lines_per_s_end_to_end": round(n / elapsed, 1), "worker_peak_rss_mb": round(hwm / 1024, 1),
                  "worker_exit_code": code, "samples": samples, "session_ttl_s": ttl}
        text = json.dumps(result, indent=1)
        click.echo(text)
        if out:
            Path(out).write_text(text + "\n")
    finally:
        broker.stop()
        rds.stop()


if __name__ == "__main__":
    main()

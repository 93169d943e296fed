"""A regular family with a small history, where only the order of events tells an anomaly: what the shipped decision
does where LogBERT ranks well and no exact rule can see anything.

    python -m benchmarks.synthetic_family      # about 6 min on 2 cores (3 draws, both settings)

Not a log family: generated sessions, to check one mechanism. A session walks 16 stages in order and logs one of two
event types at each (stages 2, 3 and 5 repeat one to three times). An anomaly holds no event type and no pairing of
them that normal sessions lack; only its order is wrong: two events of stages at least three apart swapped, the last
stage's event in the middle, or the first stage's again before the end. 50 normal training sessions, 2,000 normal
and 200 anomalous test sessions, all drawn independently: here the history *is* a fair sample of what follows,
which a new deployment's first sessions (one stretch of time) are not. Every test session is new to the exact
rules, so they catch nothing; LogBERT's masked-key prediction sees the order.

Each draw is trained and judged twice, with ``scoring.small_history_model`` ``tail`` (the default) and ``largest``
(``logbert_core.calibration.choose_level``). One line per draw and setting, then a JSON summary.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any

import click

from benchmarks.small_histories import one_history, outcome
from logbert_core.calibration import SMALL_MODEL
from logbert_core.config import load_settings
from training.protocols import LOGBERT, LOGBERT_EXACT

STAGES = 16
REPEATED = (2, 3, 5)  # stages that log one to three times


def normal_session(rng: random.Random) -> list[str]:
    seq = []
    for stage in range(STAGES):
        for _ in range(rng.choice((1, 1, 2, 3)) if stage in REPEATED else 1):
            seq.append(f"s{stage}v{rng.randrange(2)}")
    return seq


def stage(event: str) -> int:
    return int(event[1:].split("v")[0])


def anomalous_session(rng: random.Random) -> list[str]:
    seq = normal_session(rng)
    kind = rng.randrange(3)
    if kind == 0:  # two events of stages at least three apart, swapped
        while True:
            i, j = sorted(rng.sample(range(len(seq)), 2))
            if stage(seq[j]) - stage(seq[i]) >= 3:
                break
        seq[i], seq[j] = seq[j], seq[i]
    elif kind == 1:  # the last stage's event in the middle
        seq.insert(len(seq) // 2, seq[-1])
    else:  # the first stage's event again before the end
        seq.insert(len(seq) - 2, seq[0])
    return seq


def draw(seed: int, size: int, normals: int, anomalies: int
         ) -> tuple[list[list[str]], list[tuple[str, bool, list[str]]]]:
    rng = random.Random(seed)
    train = [normal_session(rng) for _ in range(size)]
    test = [(f"normal:{i}", False, normal_session(rng)) for i in range(normals)]
    test += [(f"abnormal:{i}", True, anomalous_session(rng)) for i in range(anomalies)]
    return train, test


@click.command()
@click.option("--draws", type=click.IntRange(1), default=3, show_default=True)
@click.option("--size", type=click.IntRange(3), default=50, show_default=True, help="Normal training sessions.")
@click.option("--normals", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--anomalies", type=click.IntRange(1), default=200, show_default=True)
def main(draws: int, size: int, normals: int, anomalies: int) -> None:
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in SMALL_MODEL}
    for seed in range(draws):
        train, test = draw(seed, size, normals, anomalies)
        for mode in SMALL_MODEL:
            t0 = time.perf_counter()
            settings = load_settings(None, scoring={"small_history_model": mode})
            r = one_history(settings, train, test, size)
            results[mode].append(r)
            click.echo(f"draw {seed}, small_history_model = {mode!r} ({time.perf_counter() - t0:.0f} s): "
                       f"{outcome(r)}", err=True)
    summary = {f"mean_f1_{name}_{mode}": round(statistics.mean(r[name]["f1"] for r in rs), 4)
               for mode, rs in results.items() for name in (LOGBERT, LOGBERT_EXACT, "rule_unseen_event")}
    click.echo(json.dumps({"draws": results, **summary}, indent=1, default=float))


if __name__ == "__main__":
    main()

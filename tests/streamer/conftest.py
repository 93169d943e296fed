"""Fixtures of the end-to-end tests: a real held-out HDFS slice and its offline reference verdicts."""

from __future__ import annotations

import gzip

import pytest
from e2e_harness import BUNDLE, CONFIG, HOLDOUT

from logbert_core.bundle import load_bundle
from logbert_core.config import load_settings
from training.evaluate import evaluate_bundle

N_LINES = 4000


@pytest.fixture(scope="session")
def lines() -> list[str]:
    with gzip.open(HOLDOUT, "rt") as fh:
        return [next(fh).rstrip("\n") for _ in range(N_LINES)]


@pytest.fixture(scope="session")
def bundle():
    return load_bundle(BUNDLE)


@pytest.fixture(scope="session")
def expected(lines, bundle, tmp_path_factory) -> dict[str, int]:
    """Offline reference: session -> number of anomalous windows, computed in batch by the same bundle."""
    path = tmp_path_factory.mktemp("ref") / "lines.log"
    path.write_text("\n".join(lines) + "\n")
    verdicts, _ = evaluate_bundle(bundle, load_settings(CONFIG), [path], None)
    out = {sid: n for sid, vs in verdicts.items() if (n := sum(v.anomalous for v in vs))}
    assert len(out) >= 5, "the reference slice must contain anomalies for these tests to mean anything"
    return out

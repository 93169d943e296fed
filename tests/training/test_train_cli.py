"""logad-train end to end on a small real slice: bundle written, loadable, reproducible, thresholds label-free."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from logbert_core.bundle import BundleError, load_bundle, save_bundle
from training.train import history_span, span_warning

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "hdfs.toml"
TRAIN = REPO / "data" / "hdfs" / "train.log.gz"
LABELS = REPO / "data" / "hdfs" / "train.labels.csv"


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "slice.log"
    with gzip.open(TRAIN, "rt") as fh, open(path, "w") as out:
        for _, line in zip(range(12000), fh):
            out.write(line)
    return path


def train(out: Path, slice_file: Path, labels: Path | None, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "training.cli", "--config", str(CONFIG), "--input", str(slice_file), "--out",
           str(out), "--no-progress", *extra]
    if labels is not None:
        cmd += ["--labels", str(labels)]
    env = {"LOGAD_TRAIN__EPOCHS": "2", "LOGAD_TRAIN__MIN_EPOCH_STEPS": "5", "LOGAD_MODEL__N_EMBD": "32",
           "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, slice_file):
    root = tmp_path_factory.mktemp("bundles")
    a, b = root / "a", root / "b"
    for out in (a, b):
        res = train(out, slice_file, LABELS)
        assert res.returncode == 0, res.stderr
    return a, b


@pytest.mark.slow
def test_bundle_is_complete_and_loads(bundles):
    a, _ = bundles
    assert {p.name for p in a.iterdir()} >= {"model.safetensors", "bundle.json", "metrics.json"}
    bundle = load_bundle(a)
    assert bundle.model_config.vocab_size == bundle.vocab.size and bundle.model_config.n_embd == 32
    assert bundle.thresholds.method.startswith("one level for all rules") and bundle.known_sets
    assert bundle.thresholds.promise is not None and bundle.thresholds.promise.sessions > 0
    assert bundle.settings["session.key_regex"] == r"blk_-?\d+"
    metrics = json.loads((a / "metrics.json").read_text())
    assert metrics["data"]["anomalous_sessions"] > 0 and len(metrics["training"]["history"]) >= 1


@pytest.mark.slow
def test_same_seed_same_bundle(bundles):
    a, b = (load_bundle(p) for p in bundles)
    assert a.version == b.version
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_bad_config_value_exits_2_with_the_field_named(slice_file, tmp_path):
    res = subprocess.run([sys.executable, "-m", "training.cli", "--config", str(CONFIG), "--input", str(slice_file),
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, cwd=REPO,
                         env={"LOGAD_MODEL__STRIDE": "9999", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2
    assert "stride" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_corrupt_bundle_is_refused_with_a_message(bundles, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bundle.json").write_text(json.dumps({"format_version": 1, "model_config": {"vocab_size": 5}}))
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BundleError, match="inconsistent bundle|unreadable"):
        load_bundle(bad)
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


@pytest.mark.slow
def test_the_bundle_keeps_its_most_frequent_windows_outside_its_version(bundles, tmp_path):
    a, _ = bundles
    bundle = load_bundle(a)
    assert 0 < len(bundle.warm_windows) <= 1024
    assert all(0 < len(w) <= bundle.model_config.max_len for w in bundle.warm_windows)
    meta = json.loads((a / "bundle.json").read_text())
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes((a / "model.safetensors").read_bytes())
    meta["warm_windows"] = meta["warm_windows"][:3]
    (copy / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(copy).warm_windows == bundle.warm_windows[:3]
    # they speed a start-up and decide nothing: written with others, the bundle keeps its version id
    state = {k: v for k, v in bundle.state_dict.items()}
    args = dict(family="hdfs", model_config=bundle.model_config, state_dict=state, center=bundle.center,
                vocab=bundle.vocab, drain_params=bundle.drain_params, drain_state=bundle.drain_state,
                settings=bundle.settings, thresholds=bundle.thresholds, known_sets=bundle.known_sets,
                key_counts=bundle.key_counts, rest=bundle.rest)
    assert save_bundle(tmp_path / "x", **args) == save_bundle(tmp_path / "y", **args, warm_windows=[[4, 5]]) \
        == bundle.version
    assert load_bundle(tmp_path / "y").warm_windows == ((4, 5),) and load_bundle(tmp_path / "x").warm_windows == ()
    for bad in ([f"4 {bundle.model_config.vocab_size}"], [[4, 5]], ["4 x"]):
        meta["warm_windows"] = bad
        (copy / "bundle.json").write_text(json.dumps(meta))
        with pytest.raises(BundleError, match="warm"):
            load_bundle(copy)


def test_frequent_windows_are_ranked_by_count_then_keys():
    from training.train import frequent_windows

    windows = [[5, 6], [4], [5, 6], [4], [7], [5, 6], [8, 8], [8, 8]]
    assert frequent_windows(windows, 10) == [[5, 6], [4], [8, 8]]  # [7] occurs once
    assert frequent_windows(windows, 2) == [[5, 6], [4]]
    assert frequent_windows(windows, 10, min_count=1)[-1] == [7]
    assert frequent_windows(windows, 0) == []


@pytest.mark.slow
def test_training_states_its_promise_and_warns_where_it_falls_short(bundles):
    a, _ = bundles
    m = json.loads((a / "metrics.json").read_text())
    cal, ev = m["calibration"], m["in_period_eval"]
    assert cal["sessions"] == m["data"]["split"]["normal"] and 0 <= cal["fpr"] <= cal["fpr_upper"] <= 1
    assert cal["target_fpr"] == 0.005 and cal["rules"] and "held-out slice" in cal["mode"] or "cross-fit" in cal["mode"]
    assert ev["anomalies"] == m["data"]["anomalous_sessions"] and 0 <= ev["caught"] <= ev["anomalies"]
    low = ev["recall"] < 0.9  # train.expected_recall's default
    assert low == any("in-period recall" in w for w in m["warnings"])
    assert set(cal["warnings"]) <= set(m["warnings"])
    # the history's span of log time is stated, and warned about exactly when its sessions were all alive at once
    h = m["data"]["history"]
    assert h["sessions"] == m["data"]["split"]["normal"] and h["span_s"] >= 0 and h["session_s_p50"] >= 0
    assert (h["span_s"] < h["session_s_p50"]) == any("one stretch of the system's life" in w for w in m["warnings"])


def test_a_history_whose_sessions_were_alive_at_once_is_named_as_one_stretch():
    # 50 blocks allocated within 268 s that live 14 h: the benchmark's first raw HDFS blocks
    starts = [1000.0 + 268.0 * i / 49 for i in range(50)]
    span = history_span(starts, [t + 14 * 3600.0 for t in starts], [20] * 49 + [31])
    assert span == {"sessions": 50, "span_s": pytest.approx(268.0), "session_s_p50": pytest.approx(50400.0),
                    "lines_p50": 20.0, "lines_p90": 20.0, "lines_max": 31, "summary": span["summary"]}
    assert span["summary"] == ("50 normal sessions whose first lines span 4.5 min of log time, a session lasting "
                               "14.0 h (median) and holding 20 line(s) (median; 90 % hold at most 20, the longest 31)")
    w = span_warning(span)
    assert w is not None and "all started within 4.5 min of log time" in w and "median 14.0 h" in w
    # the same sessions spread over two days (each lasts less than the span), or a single session: no warning
    spread = [1000.0 + 2 * 86400.0 * i / 49 for i in range(50)]
    assert span_warning(history_span(spread, [t + 14 * 3600.0 for t in spread])) is None
    assert span_warning(history_span([5.0], [9.0])) is None
    # one-line sessions (BGL's clock windows) last 0 s: nothing to compare
    assert span_warning(history_span([0.0, 1.0], [0.0, 1.0])) is None


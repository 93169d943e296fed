"""logad doctor states what the bundle's calibration promises, and what its trainer warned about."""

from __future__ import annotations

from types import SimpleNamespace

from e2e_harness import BUNDLE, CONFIG

from logbert_core.bundle import Thresholds
from logbert_core.calibration import Promise
from logbert_core.config import load_settings
from logbert_core.vocab import Vocabulary
from streamer.doctor import INFO, WARN, _promise_findings, check_model


def test_doctor_states_the_shipped_bundles_promise() -> None:
    findings = check_model(load_settings(str(CONFIG)), BUNDLE)
    (decision,) = [f for f in findings if f.message.startswith("decision: ")]
    assert decision.status == INFO and "from 4638 normal sessions" in decision.message
    assert "target 0.005" in decision.message and "masked_key_misses" in decision.message


def test_doctor_warns_about_a_small_history_and_an_old_bundle() -> None:
    promise = Promise(0.005, 1 / 51, 50, 50, 0, 0.0, 0.058, ("unseen_template",),
                      ("50 normal sessions cannot vouch for target_fpr 0.005 by counting",))
    small = SimpleNamespace(thresholds=Thresholds(0.5, 1.0, "test", promise=promise), vocab=Vocabulary.build({1: "a"}),
                            metrics={"warnings": [*promise.warnings, "in-period recall 0.500 is below 0.9"]})
    got = [(f.status, f.message) for f in _promise_findings(small)]  # type: ignore[arg-type]
    assert got[0][0] == INFO and got[0][1].startswith("decision: FPR 0.0000 (95 % bound 0.0580")
    assert (WARN, "calibration: 50 normal sessions cannot vouch for target_fpr 0.005 by counting") in got
    assert (WARN, "training: in-period recall 0.500 is below 0.9") in got and len(got) == 3
    old = SimpleNamespace(thresholds=Thresholds(0.5, 1.0, "quantile"), metrics={})
    (finding,) = _promise_findings(old)  # type: ignore[arg-type]
    assert finding.status == WARN and "retrain" in finding.fix


def test_doctor_names_the_levels_whose_new_templates_are_routine() -> None:
    promise = Promise(0.005, 0.005, 500, 500, 0, 0.004, 0.006, ("unseen_template",), ())
    forward = [{"level": "INFO", "sessions": 120, "of": 250, "lower_95": 0.43, "routine": True},
               {"level": "FATAL", "sessions": 1, "of": 250, "lower_95": 0.0002, "routine": False}]
    bundle = SimpleNamespace(thresholds=Thresholds(0.5, 1.0, "test", promise=promise),
                             vocab=Vocabulary.build({1: "a"}).with_routine_levels(["INFO"]),
                             metrics={"calibration": {"novelty_forward": forward}})
    got = [f.message for f in _promise_findings(bundle)]  # type: ignore[arg-type]
    assert got[1] == ("new templates at level(s) INFO are routine in the training history and flag nothing by "
                      "themselves (INFO: 120 of 250 later normal sessions)")


def test_doctor_states_the_forward_test_where_unseen_template_can_fire() -> None:
    promise = Promise(0.005, 0.005, 500, 500, 2, 0.004, 0.006, ("unseen_template",), ())
    fw = {"sessions": 9, "of": 250, "rate": 0.036, "rule_on": True}
    bundle = SimpleNamespace(thresholds=Thresholds(0.5, 1.0, "test", promise=promise), vocab=Vocabulary.build({1: "a"}),
                             metrics={"calibration": {"forward_unseen": fw}})
    got = [f.message for f in _promise_findings(bundle)]  # type: ignore[arg-type]
    assert got[1].startswith("forward test: 9 of 250 later normal sessions held a template the earlier half of the "
                             "history never had (0.0360)")
    off = SimpleNamespace(thresholds=bundle.thresholds, vocab=bundle.vocab,
                          metrics={"calibration": {"forward_unseen": {**fw, "rule_on": False}}})
    assert len(_promise_findings(off)) == 1  # type: ignore[arg-type]  # the rule cannot fire: nothing to say


def test_doctor_states_the_history_the_bundle_was_calibrated_on() -> None:
    promise = Promise(0.005, 0.005, 500, 500, 0, 0.004, 0.006, ("unseen_template",), ())
    summary = "500 normal sessions whose first lines span 3.0 d of log time, a session lasting 0 s (median) and ..."
    bundle = SimpleNamespace(thresholds=Thresholds(0.5, 1.0, "test", promise=promise), vocab=Vocabulary.build({1: "a"}),
                             metrics={"data": {"history": {"sessions": 500, "summary": summary}}})
    got = [(f.status, f.message) for f in _promise_findings(bundle)]  # type: ignore[arg-type]
    assert got[1] == (INFO, f"history: {summary}")
    bundle.metrics = {"data": {"history": {"sessions": 500}}}  # trained before the summary was recorded
    assert not any(f.message.startswith("history: ") for f in _promise_findings(bundle))  # type: ignore[arg-type]


def test_doctor_names_the_window_lengths_the_model_rules_judge() -> None:
    promise = Promise(0.005, 0.005, 500, 500, 0, 0.004, 0.006, ("hypersphere_distance",), ())
    th = Thresholds(0.5, 1.0, "test", promise=promise, by_length={"hypersphere_distance": {0: 1.0, 1: 2.0, 3: 2.5}})
    bundle = SimpleNamespace(thresholds=th, vocab=Vocabulary.build({1: "a"}), metrics={})
    got = [f.message for f in _promise_findings(bundle)]  # type: ignore[arg-type]
    assert "hypersphere_distance judges windows of 1, 2-3, 8-15 entries, the lengths its calibration saw; other " \
           "windows are left to the exact rules (logad_windows_model_skipped_total counts them)" in got

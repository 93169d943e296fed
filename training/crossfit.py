"""Fit LogBERT and calibrate the decision on normal sessions, so that every calibration score is out of sample.

Used by ``logad-train`` (``train_bundle``) and by the evaluation protocols, so both ship the same decision.

* The exact statistics (templates, template sets, key counts, rests) come from every normal session, and each
  session's exact evidence is leave-one-out (``logbert_core.calibration``).
* The model rules need scores from sessions the model did not fit on. With a large history a chronological slice
  (``train.calib_fraction``) is held out of the fit. With a small one (``train.crossfit_max_sessions`` or fewer)
  that slice would be a dozen sessions, too few to place a threshold; instead ``train.crossfit_folds`` models, each
  fitted without one chronological fold for the final model's number of epochs, score that fold, so that every
  normal session has an out-of-fold score, and the shipped model fits on everything but the validation slice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from logbert_core.calibration import Routine
from logbert_core.config import Settings
from logbert_core.judge import Calibrated, NormalSession, RestStats, calibrated_judge, session_scores
from logbert_core.model import LogBERT, LogBERTConfig
from logbert_core.runtime import buckets_for, resolve_device
from logbert_core.scoring import WindowScore, WindowScorer
from training.data import split_chronological
from training.fit import FitResult, TrainConfig, fit

log = logging.getLogger(__name__)

_FOLD_VAL_WINDOWS = 256  # a fold model "validates" on this many of its own training windows (no early stop)


def model_config(settings: Settings, vocab_size: int) -> LogBERTConfig:
    m = settings.model
    return LogBERTConfig(vocab_size=vocab_size, max_len=m.max_len, n_layer=m.n_layer, n_head=m.n_head,
                         n_embd=m.n_embd, dropout=m.dropout, hypersphere_weight=m.hypersphere_weight)


def train_config(settings: Settings, progress: bool, **overrides: object) -> TrainConfig:
    t = settings.train
    base = dict(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, mask_ratio=t.mask_ratio, patience=t.patience,
                seed=t.seed, device=t.device, bf16=t.bf16, progress=progress, min_epoch_steps=t.min_epoch_steps,
                warmup_epochs=t.warmup_epochs)
    return TrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def make_scorer(settings: Settings, cfg: LogBERTConfig, result: FitResult) -> WindowScorer:
    """The scorer of a fitted model, with the scoring settings the detector uses."""
    s = settings
    device = resolve_device(s.train.device)
    model = LogBERT(cfg)
    model.load_state_dict(result.state_dict)
    return WindowScorer(model, result.center.to(device), top_g=s.scoring.top_g, mask_copies=s.scoring.mask_copies,
                        device=device, n_candidates=s.scoring.n_candidates, threads=s.train.scoring_threads,
                        buckets=buckets_for(s, cfg.max_len))


def crossfits(settings: Settings, normal_sessions: int) -> bool:
    """Whether ``fit_decision`` calibrates the model rules on out-of-fold models (else on the held-out slice)."""
    return normal_sessions <= settings.train.crossfit_max_sessions


@dataclass
class FittedDecision:
    result: FitResult  # the shipped model's fit
    cal: Calibrated  # its decision (``cal.judge`` holds the model's scorer)
    mode: str  # how the model rules were calibrated, in words
    split: dict[str, int]
    fold_seconds: float = 0.0


def fit_decision(settings: Settings, cfg: LogBERTConfig, order: Sequence[str], normal: Sequence[NormalSession],
                 rest: RestStats | None, progress: bool = False, routine: Routine | None = None
                 ) -> FittedDecision:
    """``order``: the normal sessions' ids, chronological; ``normal``: each one's windows, aligned with it;
    ``routine``: the routine-novelty keys and their counts (``calibrated_judge``)."""
    s = settings
    if len(order) != len(normal):
        raise ValueError(f"{len(order)} session ids for {len(normal)} normal sessions")
    row = {sid: i for i, sid in enumerate(order)}
    fit_ids, val_ids, calib_ids = split_chronological(list(order), [s.train.val_fraction, s.train.calib_fraction])
    if not fit_ids or not val_ids or not calib_ids:
        raise ValueError(f"too few normal sessions ({len(order)}) to split into fit/validation/calibration")
    crossfit = crossfits(s, len(order))

    def flat(ids: Sequence[str]) -> list[list[int]]:
        return [list(w) for sid in ids for w in normal[row[sid]].windows]

    train_ids = fit_ids + calib_ids if crossfit else fit_ids
    result = fit(flat(train_ids), flat(val_ids), cfg, train_config(s, progress))
    scorer = make_scorer(s, cfg, result)
    model_scores: list[list[WindowScore]] | None = None
    t0 = time.perf_counter()
    if crossfit:
        k = min(s.train.crossfit_folds, len(order))
        bounds = [round(i * len(order) / k) for i in range(k + 1)]
        per_row: list[list[WindowScore]] = [[] for _ in order]
        for f in range(k):
            held = list(order[bounds[f]:bounds[f + 1]])
            rest_ids = list(order[:bounds[f]]) + list(order[bounds[f + 1]:])
            train_w = flat(rest_ids)
            epochs = result.best_epoch
            # the same schedule as the shipped model, no early stop: the fold is never looked at while fitting
            fold = fit(train_w, train_w[:_FOLD_VAL_WINDOWS], cfg,
                       train_config(s, False, epochs=epochs, patience=epochs, seed=s.train.seed + 1 + f))
            flat_scores = make_scorer(s, cfg, fold).score(flat(held))
            for sid, scores in zip(held, session_scores(flat_scores, [len(normal[row[sid]].windows) for sid in held])):
                per_row[row[sid]] = scores
            log.info("cross-fit fold %d/%d: %d sessions held out", f + 1, k, len(held))
        model_rows = list(range(len(order)))
        model_scores = per_row
        mode = (f"{k}-fold cross-fit: every one of the {len(order)} normal sessions scored by a model fitted "
                f"without its fold ({result.best_epoch} epochs each)")
    else:
        model_rows = [row[sid] for sid in calib_ids]
        mode = (f"held-out slice: the last {len(calib_ids)} normal sessions, kept out of the fit "
                f"(more than train.crossfit_max_sessions = {s.train.crossfit_max_sessions} normal sessions)")
    fold_seconds = time.perf_counter() - t0
    sc = s.scoring
    # The set rule judges lifecycles: a session that does something no normal one did, or stops part-way. A clock
    # window (field_window) is a cut at the clock, and a set of templates no normal window had is a new cut, not a
    # new behaviour; its count also grows with the lines a window holds, which calibration cannot see when the
    # windows it judges are longer than the history's.
    set_rule = sc.novel_template_set and s.session.kind != "field_window"
    cal = calibrated_judge(scorer, normal, model_rows, model_scores, target_fpr=sc.target_fpr,
                           novel_template=sc.novel_template, novel_template_set=set_rule,
                           use_distance=sc.use_distance, rare_template=sc.rare_template, rest=rest,
                           routine=routine, small_history_model=sc.small_history_model)
    split = {"fit": len(train_ids), "val": len(val_ids), "calib": len(model_rows), "normal": len(order)}
    return FittedDecision(result, cal, mode, split, fold_seconds)

"""The detector behind ``logad serve`` (``streamer.service``): raw lines -> per-session verdicts, as the stream
and the offline evaluation judge them, within the limits of ``[serve]``."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic_core import to_json

from logbert_core.bundle import Bundle
from logbert_core.config import Settings
from logbert_core.judge import Verdict
from logbert_core.parsing import key_of, line_digest
from logbert_core.runtime import DeviceError, SettingsMismatch, build_judge, check_settings, resolve_device
from logbert_core.windows import canonical_entries, session_windows, window_keys
from streamer import metrics as m
from streamer.decode import Rejected
from streamer.errors import StartupError
from streamer.events import Explanation, build_event
from streamer.serve_limits import Budget, FairLock, Refused
from streamer.serve_wire import RejectedLine, SessionResult

# A chunk scored in one turn at the model holds at most this many window positions (64 full HDFS windows, about
# 0.1 s on two CPU cores) and at most detector.max_batch windows.
CHUNK_POSITIONS = 4096


class SessionDetector:
    """Lines -> per-session verdicts with the bundle's judge, within the limits of ``settings.serve``. Thread-safe:
    requests parse and build their answers concurrently (the template lookup changes no Drain state; its caches are
    plain dicts) and take turns at the model (``FairLock``)."""

    def __init__(self, settings: Settings, bundle: Bundle, device: str | None = None) -> None:
        try:
            check_settings(settings, bundle)
            dev = resolve_device(device or settings.detector.device)
        except (SettingsMismatch, DeviceError) as exc:
            raise StartupError(str(exc)) from exc
        self.settings = settings
        self.bundle = bundle
        self.device = str(dev)
        self.judge = build_judge(bundle, settings, dev, threads=settings.train.scoring_threads)
        self.reader = settings.line_reader()  # the one ingest path (logbert_core.ingest), as the worker and trainer
        self.index = bundle.template_index()
        self.nearest = settings.parser.unknown == "nearest"
        self._lock = FairLock()

    def detect(self, lines: Sequence[str], deadline: float | None = None) -> bytes:
        """The JSON of a ``DetectResponse`` for these lines; raises ``Refused`` past a limit of ``serve`` or past
        ``deadline`` (``time.monotonic``; None: no time limit)."""
        s = self.settings.serve
        budget = Budget(deadline, s.request_timeout_s)
        vocab, max_len, stride = self.bundle.vocab, self.bundle.model_config.max_len, self.settings.model.stride
        rejected: list[RejectedLine] = []
        entries: dict[str, list[tuple[float, int, str]]] = {}
        unseen: dict[str, str] = {}  # line digest -> masked text, for lines whose template the model never saw
        order: dict[str, tuple[float, int]] = {}
        max_sessions = s.max_sessions
        # Past this many entries the windows are over serve.max_windows whatever the sessions: a session of n entries
        # makes at least (n - max_len) / stride windows. Counting entries while parsing bounds a request's memory
        # (a line may name hundreds of sessions) before its windows are cut. A repeated line counts each time here,
        # once in its session.
        max_entries = s.max_windows * stride + max_sessions * max_len
        n_entries = 0
        for i, raw in enumerate(lines):
            if not i & 255:
                budget.check()
            rec = self.reader.read(raw.encode("utf-8", "surrogatepass"))
            if isinstance(rec, Rejected):
                rejected.append(RejectedLine(index=i, reason=rec.reason, detail=rec.detail[:200]))
                continue
            line = rec.line
            key, found = key_of(self.index, vocab, rec.content, self.nearest, rec.level)
            n_entries += len(rec.session_ids)
            if n_entries > max_entries:
                raise Refused(413, "too_many_windows", f"lines 0 to {i} add {n_entries} entries to their sessions, "
                              f"more than {s.max_windows} windows (serve.max_windows) can hold with at most "
                              f"{max_sessions} sessions: split the lines over several requests")
            for sid in rec.session_ids:
                got = entries.get(sid)
                if got is None:
                    if len(entries) >= max_sessions:  # refused before the next session costs anything
                        raise Refused(413, "too_many_sessions", f"line {i} names session {len(entries) + 1}, over "
                                      f"the limit of {max_sessions} sessions per request (serve.max_sessions): "
                                      "split the lines over several requests")
                    got = entries[sid] = []
                    order[sid] = (rec.timestamp, len(order))
                got.append((rec.timestamp, key, line))
            if vocab.unseen(key):
                unseen[line_digest(line)] = found.template
        for r in rejected:
            m.SERVE_LINES_REJECTED.labels(r.reason).inc()

        # sessions in order of their first timestamp (ties: first appearance), as the offline evaluation orders them
        sessions = sorted(entries, key=order.__getitem__)
        flat: list[tuple[str, int, int]] = []
        keys_of: list[list[int]] = []
        canon_of: dict[str, list[tuple[float, str]]] = {}
        for n, sid in enumerate(sessions):
            if not n & 255:
                budget.check()
            canon = canon_of[sid] = canonical_entries(entries[sid])
            ks = window_keys([mem for _, mem in canon])
            for span in session_windows(len(ks), max_len, stride):
                flat.append((sid, span.lo, span.hi))
                keys_of.append(ks[span.lo:span.hi])
            if len(flat) > s.max_windows:
                raise Refused(413, "too_many_windows", f"the sessions of the request make more than {s.max_windows} "
                              f"windows to score (serve.max_windows; a session of n entries makes about "
                              f"n/{stride} windows): split the lines over several requests")
        verdicts = self._score(keys_of, budget)
        return self._answer(sessions, flat, verdicts, canon_of, unseen, rejected, budget)

    def _score(self, keys_of: list[list[int]], budget: Budget) -> list[Verdict]:
        """Verdicts in chunks, one turn at the model per chunk, so concurrent requests interleave."""
        verdicts: list[Verdict] = []
        step = self.settings.detector.max_batch
        i, n = 0, len(keys_of)
        while i < n:
            j, positions = i, 0
            while j < n and j - i < step and (j == i or positions + len(keys_of[j]) <= CHUNK_POSITIONS):
                positions += len(keys_of[j])
                j += 1
            with self._lock.turn(budget):
                budget.check()
                verdicts += self.judge.judge(keys_of[i:j])
            m.SERVE_WINDOWS.inc(j - i)
            i = j
        return verdicts

    def _answer(self, sessions: list[str], flat: list[tuple[str, int, int]], verdicts: list[Verdict],
                canon_of: dict[str, list[tuple[float, str]]], unseen: dict[str, str], rejected: list[RejectedLine],
                budget: Budget) -> bytes:
        vocab, max_len = self.bundle.vocab, self.bundle.model_config.max_len
        limit = self.settings.serve.max_response_bytes
        per: dict[str, list[tuple[int, int, Verdict]]] = {sid: [] for sid in sessions}
        for (sid, lo, hi), v in zip(flat, verdicts):
            per[sid].append((lo, hi, v))
        th = self.bundle.thresholds
        now_ms = int(time.time() * 1000)
        head = b'{"model_version":' + to_json(self.bundle.version) + b',"sessions":['
        tail = b'],"rejected":' + to_json(rejected) + b"}"
        parts: list[bytes] = []
        size = len(head) + len(tail)
        anomalous = 0
        for n, sid in enumerate(sessions):
            if not n & 63:
                budget.check()
            ws = per[sid]
            canon = canon_of[sid]
            flagged = [(lo, hi, v) for lo, hi, v in ws if v.anomalous]
            reasons = sorted({r for _, _, v in flagged for r in v.reasons})
            best_score = max(v.score.miss_ratio for _, _, v in ws)
            best_dist = max(v.score.distance for _, _, v in ws)
            window = None
            if flagged:
                lo, hi, v = max(flagged, key=lambda f: (f[2].score.miss_ratio, f[2].score.distance, -f[0]))
                span = canon[lo:hi]
                miss_threshold, distance_threshold = th.shown(v.score.length)
                event = build_event(
                    event_id=f"{sid}:{lo}", session_id=sid, members=tuple(mem for _, mem in span), lo=lo,
                    cause="full" if hi - lo == max_len else "idle", first_ts=span[0][0], last_ts=span[-1][0],
                    cut_ms=now_ms, verdict=v, vocab=vocab, unseen_text=unseen, miss_threshold=miss_threshold,
                    distance_threshold=distance_threshold, model_version=self.bundle.version)
                explanation, window = event.explanation, event.window
                anomalous += 1
            else:
                explanation = Explanation(
                    summary=f"{len(ws)} window(s), none flagged (highest score {best_score:.3f} vs threshold "
                            f"{th.miss_ratio:.3f}; largest distance {best_dist:.2f} vs {th.distance:.2f})",
                    reasons=[], unexpected_positions=[], templates=[])
            part = to_json(SessionResult(
                session_id=sid, anomalous=bool(flagged), score=round(best_score, 6), threshold=th.miss_ratio,
                distance=round(best_dist, 6), distance_threshold=th.distance, line_count=len(canon), windows=len(ws),
                flagged_windows=len(flagged), reasons=reasons, explanation=explanation, window=window))
            size += len(part) + 1
            if size > limit:  # explanations repeat the text of their lines: a line naming many sessions multiplies
                raise Refused(413, "response_too_large", f"the answer would be over {limit} bytes "
                              f"(serve.max_response_bytes) after {n} of {len(sessions)} sessions: split the lines "
                              "over several requests")
            parts.append(part)
        m.SERVE_SESSIONS.labels("anomalous").inc(anomalous)
        m.SERVE_SESSIONS.labels("normal").inc(len(sessions) - anomalous)
        return head + b",".join(parts) + tail

"""Historical logs -> records -> sessions -> windows of template keys, with the detector's own code.

Every step that the live detector also takes (line format, session rule, template lookup, canonical entry order,
windowing) is a ``logbert_core`` function called here; nothing is re-implemented for training.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from logbert_core.ingest import LineReader, Rejected
from logbert_core.labels import parse_labels
from logbert_core.parsing import LogRecord, TemplateIndex, key_of
from logbert_core.vocab import Vocabulary
from logbert_core.windows import (
    canonical_entries,
    live_windows,
    member,
    member_key,
    session_windows,
    window_keys,
)

log = logging.getLogger(__name__)



@dataclass
class Corpus:
    """Parsed lines of some files, grouped by session in order of first appearance."""

    records: list[LogRecord]
    rejected: Counter[str]
    sessions: dict[str, list[int]]  # session id -> indices into ``records``, in file order
    fingerprint: str  # sha256 over the input files' bytes, in the order given

    def chronological(self) -> list[str]:
        """Session ids ordered by their first line's timestamp (ties: first appearance)."""
        first = {sid: self.records[idx[0]].timestamp for sid, idx in self.sessions.items()}
        order = {sid: i for i, sid in enumerate(self.sessions)}
        return sorted(self.sessions, key=lambda s: (first[s], order[s]))


def open_text(path: str | Path) -> IO[str]:
    """A log file as text; ``.gz`` files are decompressed on the fly."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
    return open(path, encoding="utf-8", errors="surrogateescape")


def iter_lines(paths: Sequence[str | Path]) -> Iterator[str]:
    """The files' lines in order, without line ends; a file that cannot be read raises a ValueError naming it
    (a broken .gz would otherwise surface as a bare traceback, or as click's "Aborted!" for a truncated one)."""
    for path in paths:
        try:
            with open_text(path) as fh:
                for line in fh:
                    yield line.rstrip("\r\n")
        except gzip.BadGzipFile as exc:
            raise ValueError(f"{path}: not a valid gzip file ({exc})") from exc
        except EOFError as exc:
            raise ValueError(f"{path}: truncated gzip file (it ends before its end-of-stream marker)") from exc
        except zlib.error as exc:
            raise ValueError(f"{path}: corrupt gzip file ({exc})") from exc
        except OSError as exc:
            raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from exc


def describe(paths: Sequence[str | Path]) -> str:
    """Input files as error messages name them."""
    return ", ".join(map(str, paths))


def file_fingerprint(paths: Sequence[str | Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_corpus(paths: Sequence[str | Path], reader: LineReader) -> Corpus:
    """The records of the files' lines, each read as the detector reads a message value (``LineReader.read``:
    the same decoding, line format and reasons to reject); rejected lines are counted by reason."""
    records: list[LogRecord] = []
    rejected: Counter[str] = Counter()
    sessions: dict[str, list[int]] = {}
    read = reader.read
    for line in iter_lines(paths):
        rec = read(line.encode("utf-8", "surrogateescape"))  # the file's own bytes (open_text kept them)
        if isinstance(rec, Rejected):
            rejected[rec.reason] += 1
            continue
        i = len(records)
        records.append(rec)
        for sid in rec.session_ids:
            sessions.setdefault(sid, []).append(i)
    return Corpus(records, rejected, sessions, file_fingerprint(paths))


def no_sessions(name: str, rejected: Mapping[str, int]) -> ValueError:
    """The error of an input where no line parses into a session, with why the lines were rejected."""
    if not rejected:
        return ValueError(f"{name}: no log lines (empty input)")
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items()))
    return ValueError(f"{name}: no line parses into a session (rejected lines: {why}); is it a log of the "
                      "configured family?")


def load_labels(path: str | Path) -> dict[str, bool]:
    """``BlockId,Label`` CSV (Loghub style) -> {session id: anomalous} (``logbert_core.labels.parse_labels``)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return parse_labels(fh, str(path))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text CSV file (bytes that are not UTF-8)") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from exc


def check_labels(labels: Mapping[str, bool], sessions: Iterable[str], path: str | Path, inputs: str) -> None:
    """Labels that name no session of the input are almost surely another log's: an error. Some ids without a
    session may be fine (the labels of a whole log, a slice of it as input): a warning, as for a file of no labels."""
    if not labels:
        log.warning("%s holds no labels: every session of %s counts as normal", path, inputs)
        return
    present = set(sessions)
    missing = sum(sid not in present for sid in labels)
    if missing == len(labels):
        example = next(iter(present), None)
        raise ValueError(f"{path}: none of its {len(labels)} ids names a session of {inputs} (ids like "
                         f"{next(iter(labels))!r}, sessions like {example!r}); is it the labels file of this log?")
    if missing:
        log.warning("%s: %d of its %d ids name no session of %s; they are ignored", path, missing, len(labels),
                    inputs)


def inline_labels(corpus: Corpus) -> dict[str, bool]:
    """Sessions labelled by an inline label group (BGL: '-' is normal): anomalous if any line is not '-'."""
    out: dict[str, bool] = {}
    for sid, idx in corpus.sessions.items():
        labels = [corpus.records[i].label for i in idx]
        if all(lb is None for lb in labels):
            continue
        out[sid] = any(lb not in (None, "-") for lb in labels)
    return out


def mine_templates(corpus: Corpus, sessions: Iterable[str], index: TemplateIndex) -> Vocabulary:
    """Mine templates from the lines of ``sessions`` only (in file order); the vocabulary is what was mined."""
    wanted = sorted({i for sid in sessions for i in corpus.sessions[sid]})
    for i in wanted:
        index.mine(corpus.records[i].content)
    return Vocabulary.build(index.templates())


@dataclass
class SessionWindows:
    session_id: str
    windows: list[list[int]]  # template keys of each window, canonical order
    first_ts: float
    last_ts: float
    n_lines: int
    unseen_lines: int = 0
    meta: dict[str, int] = field(default_factory=dict)
    # per window, whether the quiet after it was seen: the log went on for the rest horizon after the window's last
    # line with nothing more for the session (False: the session came back sooner, or the data ended first, and
    # premature_end does not judge that window, as the detector does); None: every one was seen
    seen: list[bool] | None = None

    def quiet_seen(self) -> list[bool]:
        """Per window, whether the quiet after it was seen (``WindowJudge.judge``)."""
        return list(self.seen) if self.seen is not None else [True] * len(self.windows)


def build_windows(corpus: Corpus, sessions: Iterable[str], index: TemplateIndex, vocab: Vocabulary,
                  nearest: bool, max_len: int, stride: int, quiet_s: float | None = None,
                  rest_s: float | None = None) -> dict[str, SessionWindows]:
    """Each session's windows, exactly as the detector forms them from the same lines: as a replay cuts them, or
    with ``quiet_s`` as a live detector does, also closing a session wherever its log went quiet that long
    (``logbert_core.windows.live_windows``). ``rest_s``: the rest horizon of ``premature_end``; a window after
    which the session's next line came sooner than that, or the corpus ended sooner, is marked as not seen to
    stop (``SessionWindows.seen``)."""
    end = max((r.timestamp for r in corpus.records), default=0.0) if rest_s is not None else 0.0
    keys: dict[int, int] = {}
    out: dict[str, SessionWindows] = {}
    for sid in sessions:
        idx = corpus.sessions[sid]
        entries = []
        for i in idx:
            k = keys.get(i)
            if k is None:
                k = keys[i] = key_of(index, vocab, corpus.records[i].content, nearest, corpus.records[i].level)[0]
            rec = corpus.records[i]
            entries.append((rec.timestamp, k, rec.line))
        canon = canonical_entries(entries)
        members = [m for _, m in canon]
        ks = window_keys(members)
        stamps = [ts for ts, _ in canon]
        if quiet_s is None:
            spans = session_windows(len(ks), max_len, stride)
        else:
            spans = live_windows(stamps, max_len, stride, quiet_s)
        seen = None
        if rest_s is not None:
            n = len(stamps)
            seen = [(stamps[sp.hi] if sp.hi < n else end) - stamps[sp.hi - 1] >= rest_s for sp in spans]
        out[sid] = SessionWindows(
            session_id=sid, windows=[ks[s.lo:s.hi] for s in spans], first_ts=canon[0][0], last_ts=canon[-1][0],
            n_lines=len(ks), unseen_lines=sum(1 for k in ks if vocab.unseen(k)), seen=seen,
        )
    return out


@dataclass(frozen=True, slots=True)
class CanonicalLine:
    """One distinct entry of a session, where the canonical order puts it."""

    timestamp: float  # the timestamp the canonical order kept (the first one, for a repeated line)
    key: int
    content: str


def canonical_lines(corpus: Corpus, sessions: Iterable[str], index: TemplateIndex, vocab: Vocabulary,
                    nearest: bool) -> dict[str, list[CanonicalLine]]:
    """Each session's entries in the canonical order of ``build_windows`` (the same keys in the same order), with
    their timestamps and message text: the inputs of per-line features beyond the template key."""
    keys: dict[int, int] = {}
    out: dict[str, list[CanonicalLine]] = {}
    for sid in sessions:
        entries = []
        content: dict[str, str] = {}
        for i in corpus.sessions[sid]:
            rec = corpus.records[i]
            k = keys.get(i)
            if k is None:
                k = keys[i] = key_of(index, vocab, rec.content, nearest, rec.level)[0]
            entries.append((rec.timestamp, k, rec.line))
            content.setdefault(member(k, rec.line), rec.content)  # one member = one raw line = one content
        out[sid] = [CanonicalLine(ts, member_key(m), content[m]) for ts, m in canonical_entries(entries)]
    return out


def split_chronological(ids: Sequence[str], fractions: Sequence[float]) -> list[list[str]]:
    """Cut an ordered list into consecutive parts; ``fractions`` are the sizes of the *last* parts."""
    n = len(ids)
    cuts = []
    end = n
    for f in reversed(fractions):
        start = max(0, end - max(1, round(n * f)))
        cuts.append((start, end))
        end = start
    parts = [list(ids[:end])] + [list(ids[a:b]) for a, b in reversed(cuts)]
    return parts

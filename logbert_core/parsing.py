"""From a raw log line to a record and a template.

Two pieces, both pure and shared by ``logad-train`` and ``logad run`` so that training and detection see the same
thing:

* ``LineFormat`` splits a line into a timestamp, its session ids and the free-text content (one regex with named
  groups, from the config of the log family).
* ``TemplateIndex`` wraps Drain3. Training *mines* templates (``mine``); the detector only *looks up* (``lookup``),
  against a frozen copy of the trained state, so that every worker maps the same line to the same key whatever it
  saw before. The Drain3 state is stored as plain JSON (clusters plus the prefix tree), never pickled.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

if sys.version_info >= (3, 11):  # the regex parser moved (and its old names warn)
    from re import _constants as _sre  # type: ignore[attr-defined]  # private in typeshed
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
else:  # pragma: no cover - Python 3.10
    import sre_constants as _sre
    import sre_parse as _sre_parse

from drain3.drain import Drain, LogCluster, Node
from drain3.masking import LogMasker, MaskingInstruction

from logbert_core.errors import LogadError
from logbert_core.vocab import Vocabulary

# what a datetime can hold (years 1 to 9999, UTC): an event's times are datetimes, so a line outside is refused here
MIN_TIMESTAMP, MAX_TIMESTAMP = -62135596800.0, 253402300799.0


class LineFormatError(LogadError, ValueError):
    """A line does not fit the configured format (the caller dead-letters it)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One parsed log line."""

    timestamp: float  # seconds since the epoch, UTC
    session_ids: tuple[str, ...]  # every session the line belongs to (an HDFS line may name several blocks)
    content: str  # the free-text message the template is mined from
    line: str  # the raw line, unchanged
    label: str | None = None  # an inline label group, where a data set carries one (BGL); never used to detect
    level: str | None = None  # the ``level`` group (INFO, WARN, FATAL ...), where the format has one


def line_digest(line: str) -> str:
    """Short, stable content hash of a raw line: identical lines are the same entry of a session (replay-safe)."""
    return hashlib.blake2b(line.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class SessionRule:
    """How a line is assigned to sessions.

    ``regex``: every distinct match of ``key_regex`` in the line is a session (HDFS: ``blk_-?\\d+``).
    ``field_window``: the named group ``field`` plus a fixed time window of ``window_s`` seconds (BGL: node + 5 min).
    """

    kind: Literal["regex", "field_window"]
    key_regex: str = ""
    field: str = ""
    window_s: int = 300


class LineFormat:
    """Splits raw lines into ``LogRecord``s."""

    __slots__ = ("_re", "_ts_fields", "_ts_format", "_rule", "_key_re", "_ts_cache", "_has_label", "_has_level",
                 "_ts_fixed")

    def __init__(self, line_regex: str, timestamp_fields: Sequence[str], timestamp_format: str,
                 session: SessionRule) -> None:
        self._re = re.compile(line_regex)
        missing = {"content", *timestamp_fields} - set(self._re.groupindex)
        if session.kind == "field_window":
            missing |= {session.field} - set(self._re.groupindex)
        if missing:
            raise ValueError(f"log.line_regex lacks the named group(s) {sorted(missing)}")
        if session.kind == "regex" and not session.key_regex:
            raise ValueError("session.key_regex must be set when session.kind = 'regex'")
        if session.kind == "field_window" and session.window_s <= 0:
            raise ValueError(f"session.window_s must be > 0, got {session.window_s}")
        self._ts_fields = tuple(timestamp_fields)
        self._ts_format = timestamp_format
        self._rule = session
        self._key_re = re.compile(session.key_regex) if session.key_regex else None
        self._ts_cache: dict[str, float] = {}
        self._has_label = "label" in self._re.groupindex
        self._has_level = "level" in self._re.groupindex
        self._ts_fixed = _FixedWidthTime.compile(timestamp_format)

    def parse(self, line: str) -> LogRecord:
        """Parse one line; raises ``LineFormatError`` with a bounded reason for lines that do not fit."""
        m = self._re.match(line)
        if m is None:
            raise LineFormatError("format_mismatch", "line does not match log.line_regex")
        fields = self._ts_fields
        ts = self._timestamp(m.group(fields[0]) if len(fields) == 1 else " ".join(m.group(*fields)))
        content = m.group("content")
        rule = self._rule
        if rule.kind == "regex":
            assert self._key_re is not None
            sessions = tuple(dict.fromkeys(self._key_re.findall(line)))
        else:
            node = m.group(rule.field)
            start = int(ts // rule.window_s) * rule.window_s
            sessions = (f"{node}@{start}",) if node else ()
        if not sessions:
            raise LineFormatError("no_session_key", "no session key found in the line")
        label = m.group("label") if self._has_label else None
        level = m.group("level") if self._has_level else None
        return LogRecord(timestamp=ts, session_ids=sessions, content=content, line=line, label=label, level=level)

    def _timestamp(self, text: str) -> float:
        ts = self._ts_cache.get(text)
        if ts is None:
            try:
                if self._ts_format == "epoch":
                    ts = float(text)
                else:
                    fixed = self._ts_fixed.parse(text) if self._ts_fixed is not None else None
                    ts = fixed if fixed is not None else datetime.strptime(text, self._ts_format).replace(
                        tzinfo=timezone.utc).timestamp()
            except ValueError as exc:
                raise LineFormatError("bad_timestamp", f"{text!r} does not fit {self._ts_format!r}") from exc
            if not MIN_TIMESTAMP <= ts <= MAX_TIMESTAMP:  # also NaN and infinities
                raise LineFormatError("bad_timestamp", f"{text[:40]!r} is outside years 1 to 9999")
            if len(self._ts_cache) > 100_000:  # bounded: timestamps repeat within a second, not across days
                self._ts_cache.clear()
            self._ts_cache[text] = ts
        return ts


class _FixedWidthTime:
    """Fast path of ``datetime.strptime`` for fixed-width numeric formats (``%y%m%d %H%M%S``, ``%Y-%m-%d %H:%M:%S``).

    Only a text laid out exactly as the format with every field at its full width in ASCII digits is handled here;
    ``strptime`` accepts such a text with the same field values (its alternatives try the two-digit forms first), so
    the result is the same. Anything else (other widths, extra spaces, out-of-range values) returns None and the
    caller falls back to ``strptime``, which parses it or raises as before.
    """

    __slots__ = ("_re", "_fields")
    _WIDTH = {"Y": 4, "y": 2, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2}

    def __init__(self, regex: re.Pattern[str], fields: tuple[str, ...]) -> None:
        self._re = regex
        self._fields = fields

    @classmethod
    def compile(cls, fmt: str) -> _FixedWidthTime | None:
        parts, fields, i = [], [], 0
        while i < len(fmt):
            ch = fmt[i]
            if ch == "%":
                d = fmt[i + 1 : i + 2]
                if d not in cls._WIDTH or d in fields:
                    return None
                parts.append(f"([0-9]{{{cls._WIDTH[d]}}})")
                fields.append(d)
                i += 2
            else:
                if ch.isdigit():
                    return None
                parts.append(re.escape(ch))
                i += 1
        if not ({"m", "d"} <= set(fields) and {"Y", "y"} & set(fields)):
            return None  # strptime's defaults for a missing year or date: leave those to it
        return cls(re.compile("".join(parts)), tuple(fields))

    def parse(self, text: str) -> float | None:
        m = self._re.fullmatch(text)
        if m is None:
            return None
        v = {"H": 0, "M": 0, "S": 0}
        for name, digits in zip(self._fields, m.groups()):
            v[name] = int(digits)
        year = v["Y"] if "Y" in v else v["y"] + (2000 if v["y"] <= 68 else 1900)  # strptime's %y rule
        try:
            return datetime(year, v["m"], v["d"], v["H"], v["M"], v["S"], tzinfo=timezone.utc).timestamp()
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class DrainParams:
    """Drain3 parameters; part of the bundle since template keys depend on them."""

    sim_th: float = 0.4
    depth: int = 4
    max_children: int = 100
    max_clusters: int | None = None
    extra_delimiters: tuple[str, ...] = ()
    masking: tuple[tuple[str, str], ...] = ()  # (regex, mask name), applied in order


@dataclass(frozen=True, slots=True)
class Lookup:
    """Result of a template lookup."""

    template_id: int | None  # trained template id, or None for a template never seen in training
    template: str  # the trained template text, or the masked line for unseen templates
    exact: bool  # False when the id comes from the nearest-template fallback


_ASCII_DIGITS = "0123456789"
_HAS_DIGIT = re.compile("[0-9]")


@dataclass(frozen=True, slots=True)
class _DigitShape:
    """How to key a message by its digit shape: see ``digit_shape``."""

    table: bytes  # bytes.translate table: each ASCII digit -> a byte of its class (0xF5.., never in UTF-8)
    context: re.Pattern[bytes] | None  # digits followed by a character some pattern names right after a digit

    def key(self, content: str) -> tuple[bytes, bytes]:
        raw = content.encode("utf-8", "surrogatepass")
        return raw.translate(self.table), b"".join(self.context.findall(raw)) if self.context is not None else b""


def digit_shape(patterns: Sequence[str]) -> _DigitShape | None:
    """The digit shape of messages under these masking regexes, or None when no exact shape is known.

    Two messages have one shape when they differ only in ASCII digits, digit for digit at the same places, where
    (a) no character set of any pattern separates the two digits (``\\d``, ``\\w``, ``[0-9a-f]`` hold all ten; a
    set such as ``[0-5]`` makes two classes), and (b) a digit that a pattern names literally (the ``0`` of ``0x``)
    is the same wherever the text has the character that the pattern requires right after it. Such messages match
    every pattern at the same places: a set cannot tell the digits apart, and a literal digit fails at the same
    step in both texts unless the next character fits, where the digits are equal. Back-references, conditionals
    and anything this walk does not know give None (no shape cache).
    """
    split: list[frozenset[str]] = []
    context: set[str] = set()

    def members(items: Any) -> frozenset[str] | None:
        negate, found = False, set()
        for op, av in items:
            if op is _sre.NEGATE:
                negate = True
            elif op is _sre.LITERAL:
                found |= {d for d in _ASCII_DIGITS if ord(d) == av}
            elif op is _sre.RANGE:
                found |= {d for d in _ASCII_DIGITS if av[0] <= ord(d) <= av[1]}
            elif op is _sre.CATEGORY:
                if av in (_sre.CATEGORY_DIGIT, _sre.CATEGORY_WORD, _sre.CATEGORY_NOT_SPACE,
                          _sre.CATEGORY_NOT_LINEBREAK):
                    found |= set(_ASCII_DIGITS)
                elif av not in (_sre.CATEGORY_NOT_DIGIT, _sre.CATEGORY_NOT_WORD, _sre.CATEGORY_SPACE,
                                _sre.CATEGORY_LINEBREAK):
                    return None
            else:
                return None
        return frozenset(set(_ASCII_DIGITS) - found if negate else found)

    def walk(seq: Any) -> bool:
        items = list(seq)
        for j, (op, av) in enumerate(items):
            if op in (_sre.LITERAL, _sre.NOT_LITERAL):
                if 48 <= av <= 57:
                    nxt = items[j + 1] if j + 1 < len(items) else None
                    if op is _sre.LITERAL and nxt is not None and nxt[0] is _sre.LITERAL and not 48 <= nxt[1] <= 57:
                        context.update({chr(nxt[1]).lower(), chr(nxt[1]).upper()})
                    else:
                        split.append(frozenset(chr(av)))
            elif op is _sre.IN:
                got = members(av)
                if got is None:
                    return False
                split.append(got)
            elif op in (_sre.ANY, _sre.AT):
                pass
            elif op is _sre.BRANCH:
                if not all(walk(p) for p in av[1]):
                    return False
            elif op is _sre.SUBPATTERN:
                if not walk(av[-1]):
                    return False
            elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None)):
                if not walk(av[2]):
                    return False
            elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
                if not walk(av[1]):
                    return False
            elif op is getattr(_sre, "ATOMIC_GROUP", None):
                if not walk(av):
                    return False
            else:  # back-references, conditionals, anything this walk does not know
                return False
        return True

    for pattern in patterns:
        try:
            if not walk(_sre_parse.parse(pattern)):
                return None
        except (re.error, TypeError, ValueError, IndexError):
            return None
    cls: dict[str, int] = {}
    for d in _ASCII_DIGITS:
        if d not in cls:
            k = len(set(cls.values()))
            cls.update((e, k) for e in _ASCII_DIGITS if all((d in s) == (e in s) for s in split))
    table = bytes.maketrans(_ASCII_DIGITS.encode(), bytes(0xF5 + cls[d] for d in _ASCII_DIGITS))
    ctx = re.compile(b"[0-9](?=[" + re.escape("".join(sorted(context)).encode()) + b"])") if context else None
    return _DigitShape(table, ctx)


class TemplateIndex:
    """Drain3 with masking: mining during training, frozen lookups during detection.

    Lookups are cached twice: by the masked text (what Drain sees), and in front of masking by the *digit shape*
    of the message (``digit_shape``: its bytes with each ASCII digit replaced by a byte of its class). Two messages
    of one shape are masked on the same spans, so where the masked text of the first kept no digit at all, every
    digit of both fell inside a mask, and both mask to the same text. Only such results are stored under the shape,
    so a shape hit is exact. HDFS has about a thousand shapes per 100k lines; a hit skips the masking regexes.
    """

    __slots__ = ("params", "drain", "masker", "_cache", "_cache_size", "_shape", "_shapes")

    PARAM = "<*>"

    def __init__(self, params: DrainParams, cache_size: int = 100_000) -> None:
        self.params = params
        self.drain = Drain(sim_th=params.sim_th, depth=params.depth, max_children=params.max_children,
                           max_clusters=params.max_clusters, extra_delimiters=list(params.extra_delimiters),
                           param_str=self.PARAM)
        self.masker = LogMasker([MaskingInstruction(rx, name) for rx, name in params.masking], "<", ">")
        self._cache: dict[tuple[str, bool], Lookup] = {}
        self._cache_size = cache_size
        self._shapes: dict[tuple[tuple[bytes, bytes], bool], Lookup] = {}
        masks_plain = all("\\" not in name and not any(c in _ASCII_DIGITS for c in name)
                          for _, name in params.masking)  # the inserted masks hold no digit, no group reference
        self._shape = digit_shape([rx for rx, _ in params.masking]) if masks_plain else None

    def mine(self, content: str) -> int:
        """Training: add a message to the template tree; returns its template (cluster) id."""
        cluster, _ = self.drain.add_log_message(self.masker.mask(content))
        self._cache.clear()
        self._shapes.clear()
        return int(cluster.cluster_id)

    def lookup(self, content: str, nearest: bool = False) -> Lookup:
        """Detection: the trained template a message belongs to, without changing any state.

        ``nearest`` also accepts the closest template at Drain's similarity threshold (R2Log-style robustness to
        templates that changed slightly); otherwise a message must match a template exactly or is unseen.
        """
        digits = self._shape
        if digits is not None:
            shape = (digits.key(content), nearest)
            hit = self._shapes.get(shape)
            if hit is not None:
                return hit
        masked = self.masker.mask(content)
        ck = (masked, nearest)
        hit = self._cache.get(ck)
        if hit is None:
            hit = self._lookup_masked(masked, nearest)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[ck] = hit
        if digits is not None and _HAS_DIGIT.search(masked) is None:
            if len(self._shapes) >= self._cache_size:
                self._shapes.clear()
            self._shapes[shape] = hit
        return hit

    def _lookup_masked(self, masked: str, nearest: bool) -> Lookup:
        drain = self.drain
        cluster = drain.match(masked, full_search_strategy="fallback")
        exact = cluster is not None
        if cluster is None and nearest:
            tokens = drain.get_content_as_tokens(masked)
            cluster = drain.tree_search(drain.root_node, tokens, drain.sim_th, True)
        if cluster is None:
            return Lookup(None, masked, False)
        return Lookup(int(cluster.cluster_id), cluster.get_template(), exact)

    def templates(self) -> dict[int, str]:
        return {int(c.cluster_id): c.get_template() for c in self.drain.clusters}

    # -- state as plain JSON ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        def node(n: Node) -> dict[str, Any]:
            return {"ids": list(n.cluster_ids), "kids": {k: node(v) for k, v in n.key_to_child_node.items()}}

        clusters = [[int(c.cluster_id), list(c.log_template_tokens), int(c.size)] for c in self.drain.clusters]
        return {"clusters": clusters, "counter": int(self.drain.clusters_counter), "tree": node(self.drain.root_node)}

    @classmethod
    def from_state(cls, params: DrainParams, state: Mapping[str, Any]) -> TemplateIndex:
        index = cls(params)
        drain = index.drain
        for cid, tokens, size in state["clusters"]:
            cluster = LogCluster(tokens, int(cid))
            cluster.size = int(size)
            drain.id_to_cluster[int(cid)] = cluster
        drain.clusters_counter = int(state["counter"])

        def build(data: Mapping[str, Any]) -> Node:
            n = Node()
            n.cluster_ids = [int(i) for i in data["ids"]]
            n.key_to_child_node = {k: build(v) for k, v in data["kids"].items()}
            return n

        drain.root_node = build(state["tree"])
        return index


def key_of(index: TemplateIndex, vocab: Vocabulary, content: str, nearest: bool, level: str | None = None
           ) -> tuple[int, Lookup]:
    """Model key of a message: the detector and the trainer both call this, so keys agree by construction.
    ``level``: the line's level; an unseen template at one of the vocabulary's routine levels gets that level's
    key instead of ``UNK`` (``Vocabulary.routine_levels``)."""
    found = index.lookup(content, nearest)
    return vocab.key(found.template_id, level), found

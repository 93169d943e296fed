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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from drain3.drain import Drain, LogCluster, Node
from drain3.masking import LogMasker, MaskingInstruction

from logbert_core.vocab import Vocabulary


class LineFormatError(ValueError):
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

    __slots__ = ("_re", "_ts_fields", "_ts_format", "_rule", "_key_re", "_ts_cache", "_has_label")

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

    def parse(self, line: str) -> LogRecord:
        """Parse one line; raises ``LineFormatError`` with a bounded reason for lines that do not fit."""
        m = self._re.match(line)
        if m is None:
            raise LineFormatError("format_mismatch", "line does not match log.line_regex")
        ts = self._timestamp(" ".join(m.group(f) for f in self._ts_fields))
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
        return LogRecord(timestamp=ts, session_ids=sessions, content=content, line=line, label=label)

    def _timestamp(self, text: str) -> float:
        ts = self._ts_cache.get(text)
        if ts is None:
            try:
                if self._ts_format == "epoch":
                    ts = float(text)
                else:
                    ts = datetime.strptime(text, self._ts_format).replace(tzinfo=timezone.utc).timestamp()
            except ValueError as exc:
                raise LineFormatError("bad_timestamp", f"{text!r} does not fit {self._ts_format!r}") from exc
            if len(self._ts_cache) > 100_000:  # bounded: timestamps repeat within a second, not across days
                self._ts_cache.clear()
            self._ts_cache[text] = ts
        return ts


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


class TemplateIndex:
    """Drain3 with masking: mining during training, frozen lookups during detection."""

    __slots__ = ("params", "drain", "masker", "_cache", "_cache_size")

    PARAM = "<*>"

    def __init__(self, params: DrainParams, cache_size: int = 100_000) -> None:
        self.params = params
        self.drain = Drain(sim_th=params.sim_th, depth=params.depth, max_children=params.max_children,
                           max_clusters=params.max_clusters, extra_delimiters=list(params.extra_delimiters),
                           param_str=self.PARAM)
        self.masker = LogMasker([MaskingInstruction(rx, name) for rx, name in params.masking], "<", ">")
        self._cache: dict[tuple[str, bool], Lookup] = {}
        self._cache_size = cache_size

    def mine(self, content: str) -> int:
        """Training: add a message to the template tree; returns its template (cluster) id."""
        cluster, _ = self.drain.add_log_message(self.masker.mask(content))
        self._cache.clear()
        return int(cluster.cluster_id)

    def lookup(self, content: str, nearest: bool = False) -> Lookup:
        """Detection: the trained template a message belongs to, without changing any state.

        ``nearest`` also accepts the closest template at Drain's similarity threshold (R2Log-style robustness to
        templates that changed slightly); otherwise a message must match a template exactly or is unseen.
        """
        masked = self.masker.mask(content)
        ck = (masked, nearest)
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        drain = self.drain
        cluster = drain.match(masked, full_search_strategy="fallback")
        exact = cluster is not None
        if cluster is None and nearest:
            tokens = drain.get_content_as_tokens(masked)
            cluster = drain.tree_search(drain.root_node, tokens, drain.sim_th, True)
        if cluster is None:
            result = Lookup(None, masked, False)
        else:
            result = Lookup(int(cluster.cluster_id), cluster.get_template(), exact)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[ck] = result
        return result

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


def key_of(index: TemplateIndex, vocab: Vocabulary, content: str, nearest: bool) -> tuple[int, Lookup]:
    """Model key of a message: the detector and the trainer both call this, so keys agree by construction."""
    found = index.lookup(content, nearest)
    return vocab.key(found.template_id), found

"""Kafka records -> session entries: each value read by ``logbert_core.ingest.LineReader`` (decode and line format,
the one ingest path the trainer and ``logad serve`` share), then the template lookup.

A record that cannot become an entry is data, not a crash: it comes back as a reject ``(record, reason, detail)``
for the dead-letter topic (``publishing.Publisher.dead_letter``). The entries go to Redis next (``intake.Intake``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from logbert_core.bundle import Bundle
from logbert_core.ingest import LineReader, Rejected
from logbert_core.parsing import TemplateIndex, key_of
from logbert_core.windows import member
from streamer.broker import Message, Partition
from streamer.events import clip_template
from streamer.windows import Entry

log = logging.getLogger("streamer.worker")  # the worker's parts log under its name, as before the split
PARSE_ERROR = "parse_error"  # dead-letter reason of a line whose parsing failed in a way no rule names


@dataclass
class Parsed:
    entries: list[Entry] = field(default_factory=list)
    origins: list[Message] = field(default_factory=list)  # the record of each entry (a refused one dead-letters it)
    rejects: list[tuple[Message, str, str]] = field(default_factory=list)  # (record, reason, detail)
    offsets: dict[Partition, int] = field(default_factory=dict)  # next offset to consume per partition
    stamps: dict[Partition, float] = field(default_factory=dict)  # log timestamp of each partition's last line
    unseen: int = 0


class LinePipeline:
    """Kafka records -> session entries, with the same parsing code the trainer used."""

    def __init__(self, reader: LineReader, index: TemplateIndex, bundle: Bundle, nearest: bool,
                 input_offsets: bool = True) -> None:
        self.reader = reader
        self.input_offsets = input_offsets  # keep each entry's record ("<partition>:<offset>") for its event
        self.index = index
        self.vocab = bundle.vocab
        self.nearest = nearest
        self.errors = 0  # lines whose parsing raised something other than LineFormatError

    def parse(self, records: Sequence[Message]) -> Parsed:
        out = Parsed()
        read, index, vocab, nearest = self.reader.read, self.index, self.vocab, self.nearest
        entries, origins, rejects, offsets = out.entries, out.origins, out.rejects, out.offsets
        last: dict[tuple[str, int], int] = {}
        stamps: dict[tuple[str, int], float] = {}
        for rec in records:
            last[rec.topic, rec.partition] = rec.offset
            try:
                parsed = read(rec.value)
                if isinstance(parsed, Rejected):
                    rejects.append((rec, parsed.reason, parsed.detail))
                    continue
                key, found = key_of(index, vocab, parsed.content, nearest, parsed.level)
                mem = member(key, parsed.line)
            except Exception as exc:  # no rule foresaw this line: it costs one dead letter, never the worker
                if not self.errors:
                    log.warning("a line could not be parsed (%s[%d]@%d); it goes to the dead-letter topic as "
                                "%s, as will any other such line (counted, not logged)", rec.topic, rec.partition,
                                rec.offset, PARSE_ERROR, exc_info=True)
                self.errors += 1
                rejects.append((rec, PARSE_ERROR, f"{type(exc).__name__}: {exc}"[:500]))
                continue
            unseen = vocab.unseen(key)
            text = clip_template(found.template) if unseen else ""  # what an event shows of it, no more in Redis
            out.unseen += unseen
            stamps[rec.topic, rec.partition] = parsed.timestamp
            origin = f"{rec.partition}:{rec.offset}" if self.input_offsets else ""
            for sid in parsed.session_ids:
                entries.append(Entry(sid, parsed.timestamp, mem, text, origin))
                origins.append(rec)
        for (topic, partition), offset in last.items():
            offsets[Partition(topic, partition)] = offset + 1
        out.stamps = {Partition(topic, partition): ts for (topic, partition), ts in stamps.items()}
        return out

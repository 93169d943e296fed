"""Vocabulary of template keys.

A template key is the model's integer id for one log template. The first ids are reserved:

    PAD  0  padding past the end of a window
    MASK 1  a masked position (training and fixed-schedule scoring)
    UNK  2  a template the model never saw in training
    DIST 3  the sequence-level token whose output is pulled to the hypersphere centre

Template ids (Drain3 cluster ids at training time) map to keys from ``FIRST_KEY`` on. The vocabulary is stored in
the bundle and read back on load; nothing else decides the vocabulary size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PAD, MASK, UNK, DIST = 0, 1, 2, 3
FIRST_KEY = 4
SPECIAL_NAMES = ("<pad>", "<mask>", "<unk>", "<dist>")


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """Bijection between template ids and model keys, with the template text of every key."""

    templates: tuple[str, ...]  # templates[i] is the text of key FIRST_KEY + i
    template_ids: tuple[int, ...]  # template_ids[i] is the template id (Drain3 cluster id) of key FIRST_KEY + i
    _key_of: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.templates) != len(self.template_ids):
            raise ValueError(
                f"templates ({len(self.templates)}) and template_ids ({len(self.template_ids)}) differ in length"
            )
        key_of = {tid: FIRST_KEY + i for i, tid in enumerate(self.template_ids)}
        if len(key_of) != len(self.template_ids):
            raise ValueError("template_ids contains duplicates")
        object.__setattr__(self, "_key_of", key_of)

    @classmethod
    def build(cls, templates_by_id: Mapping[int, str], used_ids: Iterable[int] | None = None) -> Vocabulary:
        """Keys in ascending template-id order, so the same parse always gives the same vocabulary."""
        ids = sorted(set(used_ids) if used_ids is not None else templates_by_id)
        return cls(templates=tuple(templates_by_id[i] for i in ids), template_ids=tuple(ids))

    @property
    def size(self) -> int:
        """Number of model keys, specials included: the model's ``vocab_size``."""
        return FIRST_KEY + len(self.templates)

    @property
    def n_templates(self) -> int:
        """Templates in the vocabulary (its size less the special keys)."""
        return len(self.templates)

    def key(self, template_id: int | None) -> int:
        """Model key of a template id; ``UNK`` for ids not in the vocabulary (or ``None``)."""
        if template_id is None:
            return UNK
        return self._key_of.get(template_id, UNK)

    def text(self, key: int) -> str:
        """Template text of a key (specials by name)."""
        if key < FIRST_KEY:
            return SPECIAL_NAMES[key]
        return self.templates[key - FIRST_KEY]

    def to_json(self) -> dict[str, list[str] | list[int]]:
        return {"templates": list(self.templates), "template_ids": list(self.template_ids)}

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[Any]]) -> Vocabulary:
        return cls(templates=tuple(data["templates"]), template_ids=tuple(int(i) for i in data["template_ids"]))

"""Vocabulary of template keys.

A template key is the model's integer id for one log template. The first ids are reserved:

    PAD  0  padding past the end of a window
    MASK 1  a masked position (training and fixed-schedule scoring)
    UNK  2  a template the model never saw in training
    DIST 3  the sequence-level token whose output is pulled to the hypersphere centre

Template ids (Drain3 cluster ids at training time) map to keys from ``FIRST_KEY`` on. After the templates come
the *routine-novelty* keys, one per level in ``routine_levels``: a line whose template is unseen and whose level is
one where the training history showed new templates to be routine (``logbert_core.novelty``) gets its level's key
instead of ``UNK``. It is still an unseen template (``Vocabulary.unseen``), but no novelty rule counts it. The
vocabulary is stored in the bundle and read back on load; nothing else decides the vocabulary size.
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
    routine_levels: tuple[str, ...] = ()  # key FIRST_KEY + len(templates) + j: unseen at level routine_levels[j]
    _key_of: dict[int, int] = field(init=False, repr=False, compare=False)
    _routine_key: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.templates) != len(self.template_ids):
            raise ValueError(
                f"templates ({len(self.templates)}) and template_ids ({len(self.template_ids)}) differ in length"
            )
        key_of = {tid: FIRST_KEY + i for i, tid in enumerate(self.template_ids)}
        if len(key_of) != len(self.template_ids):
            raise ValueError("template_ids contains duplicates")
        routine = {lv: FIRST_KEY + len(self.template_ids) + j for j, lv in enumerate(self.routine_levels)}
        if len(routine) != len(self.routine_levels):
            raise ValueError("routine_levels contains duplicates")
        object.__setattr__(self, "_key_of", key_of)
        object.__setattr__(self, "_routine_key", routine)

    @classmethod
    def build(cls, templates_by_id: Mapping[int, str], used_ids: Iterable[int] | None = None) -> Vocabulary:
        """Keys in ascending template-id order, so the same parse always gives the same vocabulary."""
        ids = sorted(set(used_ids) if used_ids is not None else templates_by_id)
        return cls(templates=tuple(templates_by_id[i] for i in ids), template_ids=tuple(ids))

    def with_routine_levels(self, levels: Iterable[str]) -> Vocabulary:
        """The same templates, with a routine-novelty key for each of ``levels`` (sorted, so the result is stable)."""
        return Vocabulary(self.templates, self.template_ids, tuple(sorted(set(levels))))

    @property
    def size(self) -> int:
        """Number of model keys, specials and routine-novelty keys included: the model's ``vocab_size``."""
        return FIRST_KEY + len(self.templates) + len(self.routine_levels)

    @property
    def n_templates(self) -> int:
        """Templates in the vocabulary (its size less the special keys)."""
        return len(self.templates)

    def key(self, template_id: int | None, level: str | None = None) -> int:
        """Model key of a template id; for ids not in the vocabulary (or ``None``), the routine-novelty key of
        ``level`` where it has one, else ``UNK``."""
        key = self._key_of.get(template_id, UNK) if template_id is not None else UNK
        if key == UNK and level is not None and self._routine_key:
            return self._routine_key.get(level, UNK)
        return key

    def unseen(self, key: int) -> bool:
        """Whether a key stands for a template never seen in training (``UNK`` or a routine-novelty key)."""
        return key == UNK or key >= FIRST_KEY + len(self.templates)

    @property
    def routine_keys(self) -> frozenset[int]:
        """The routine-novelty keys: unseen templates that no novelty rule counts."""
        return frozenset(self._routine_key.values())

    def text(self, key: int) -> str:
        """Template text of a key (specials by name, routine-novelty keys by their level)."""
        if key < FIRST_KEY:
            return SPECIAL_NAMES[key]
        i = key - FIRST_KEY
        if i >= len(self.templates):
            return f"<a template never seen in training, at level {self.routine_levels[i - len(self.templates)]}>"
        return self.templates[i]

    def to_json(self) -> dict[str, list[str] | list[int]]:
        out: dict[str, list[str] | list[int]] = {"templates": list(self.templates),
                                                 "template_ids": list(self.template_ids)}
        if self.routine_levels:  # absent otherwise, so bundles without it keep their bytes and version ids
            out["routine_levels"] = list(self.routine_levels)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[Any]]) -> Vocabulary:
        return cls(templates=tuple(data["templates"]), template_ids=tuple(int(i) for i in data["template_ids"]),
                   routine_levels=tuple(str(x) for x in data.get("routine_levels", ())))

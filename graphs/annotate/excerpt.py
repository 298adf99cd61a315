"""What a branch of the ``annotate`` graph is handed: consecutive turns of a dialogue, as read and as the model sees
them (``--redact``), with the placeholders that put the model's output back.

A branch gets its own turns and the context window before them, never the whole dialogue: LangGraph checkpoints
every ``Send`` packet, so a packet that carried the dialogue made a dialogue of n turns cost n²/32 turns of store
and memory. The session call gets the whole dialogue once.

``--redact``: one Redactor per dialogue, primed with every turn (a name learned in turn 3 is replaced in turn 3000),
redacts the turns in order when the branches are cut; each excerpt keeps the placeholders its turns hold, enough to
restore what the model writes about them. Nothing of it is cached between dialogues or runs. Metadata the prompt
may show (the dialogue's, each turn's) is redacted the same way: text values, and other containers as JSON text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autolabel.models import Dialogue, Turn
from autolabel.safety.redact import EntityKind, Redactor

_PLACEHOLDER = re.compile(r"\[(?:" + "|".join(k.value for k in EntityKind) + r")_\d+\]")
"""A placeholder as ``Redactor.redact`` writes it (``[NAME_1]``): which of the mapping an excerpt's turns hold."""


class Excerpt(BaseModel):
    """Consecutive turns of one dialogue (a branch's turns after the context before them, or the whole dialogue)."""

    model_config = ConfigDict(frozen=True)

    dialogue_id: str
    turns: tuple[Turn, ...]
    """As read: what is stored, scanned for risk and shown to reviewers."""
    shown: tuple[Turn, ...] | None = None
    """As the model sees them (``--redact``: placeholders for personal details), the same indices; None: as read."""
    placeholders: dict[str, str] = Field(default_factory=dict)
    """Placeholder -> original, for the placeholders in ``shown`` and ``meta``."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """The dialogue's metadata as the model sees it (``--redact``: redacted), for a spec's ``context.dialogue_meta``."""

    @property
    def first(self) -> int:
        return self.turns[0].index if self.turns else 0

    @property
    def redacted(self) -> bool:
        return self.shown is not None

    def turn(self, index: int) -> Turn:
        """Turn ``index`` of the dialogue (it must be in the excerpt), as read."""
        return self.turns[index - self.first]

    def seen(self, index: int) -> Turn:
        """Turn ``index`` as the model sees it."""
        return (self.shown or self.turns)[index - self.first]

    def seen_span(self, start: int, stop: int) -> tuple[Turn, ...]:
        """Turns ``start`` to ``stop - 1`` as the model sees them (clipped to the excerpt)."""
        lo = max(0, start - self.first)
        return (self.shown or self.turns)[lo:max(lo, stop - self.first)]

    def restore(self, obj: Any) -> Any:
        """Model output to be stored, with the originals back in place of ``--redact``'s placeholders."""
        if self.shown is None or not self.placeholders:
            return obj
        return Redactor.restoring(self.placeholders).restore_obj(obj)


def _meta_texts(meta: dict[str, Any]) -> list[str]:
    return [v for v in meta.values() if isinstance(v, str)]


def _redact_meta(redactor: Redactor, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with its text redacted: strings, and lists or objects as JSON text; numbers and booleans kept."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, str):
            out[k] = redactor.redact(v)
        elif isinstance(v, list | dict):
            out[k] = redactor.redact(json.dumps(v, ensure_ascii=False))
        else:
            out[k] = v
    return out


def shown_turns(d: Dialogue) -> tuple[tuple[Turn, ...], dict[str, Any], dict[str, str]]:
    """The dialogue's turns and metadata as the model sees them under ``--redact``, and every placeholder ->
    original."""
    redactor = Redactor()
    redactor.prime([*(t.text for t in d.turns), *_meta_texts(d.meta),
                    *(s for t in d.turns for s in _meta_texts(t.meta))])
    shown = tuple(t.model_copy(update={"speaker": redactor.redact(t.speaker), "text": redactor.redact(t.text),
                                       "meta": _redact_meta(redactor, t.meta)}) for t in d.turns)
    return shown, _redact_meta(redactor, d.meta), redactor.mapping


def cut(d: Dialogue, chunks: list[list[int]], window: int, redact: bool) -> tuple[list[Excerpt], Excerpt]:
    """One excerpt per chunk (its turns and ``window`` turns before them) and one of the whole dialogue."""
    shown, meta, mapping = shown_turns(d) if redact else (None, d.meta, {})

    def excerpt(lo: int, hi: int) -> Excerpt:
        if shown is None:
            return Excerpt(dialogue_id=d.id, turns=d.turns[lo:hi], meta=meta)
        part = shown[lo:hi]
        texts = [*(s for t in part for s in (t.speaker, t.text, *_meta_texts(t.meta))), *_meta_texts(meta)]
        found = {m for s in texts for m in _PLACEHOLDER.findall(s)}
        return Excerpt(dialogue_id=d.id, turns=d.turns[lo:hi], shown=part, meta=meta,
                       placeholders={p: mapping[p] for p in sorted(found) if p in mapping})

    parts = [excerpt(max(0, c[0] - window), c[-1] + 1) for c in chunks]
    return parts, excerpt(0, len(d.turns))


def redact_example(ex: dict[str, Any]) -> dict[str, Any]:
    """A reviewed example from another dialogue, pseudonymised on its own (its placeholders are never restored)."""
    r = Redactor()
    r.prime([ex["text"], *ex.get("texts", {}).values()])
    return {**ex, "text": r.redact(ex["text"]), "texts": {k: r.redact(v) for k, v in ex.get("texts", {}).items()}}

"""State of the ``annotate`` graph: one thread per dialogue, one ``Send`` per chunk of consecutive turns."""

from __future__ import annotations

import operator
from typing import Annotated, Any

from autolabel.graphs.annotate.excerpt import Excerpt
from typing_extensions import NotRequired, TypedDict

from autolabel.models import Dialogue, SessionAnnotation, TurnAnnotation


def gather(done: list[TurnAnnotation], new: list[TurnAnnotation] | None) -> list[TurnAnnotation]:
    """The branches' results, appended in any order; ``None`` (from ``finalize``, once they are stored) lets them go,
    so the last checkpoint of a dialogue does not hold them again."""
    return [] if new is None else done + new


class InputState(TypedDict):
    """What a run hands the graph: the dialogue to annotate."""

    dialogue: Dialogue
    only: NotRequired[list[int] | None]
    """A later stage of a cascade (``autolabel/cascade.py``): label only these turns, the others shown as context
    only, and no session call (the session is the first stage's); absent or None: every turn and the session."""


class State(InputState, total=False):
    """The whole dialogue thread. The dialogue is here once; each branch gets only its excerpt."""

    language: str
    """``en`` or ``zh``: picks the prompts and the descriptions shown to the model."""
    turns: Annotated[list[TurnAnnotation], gather]
    """One final annotation per turn; the ``Send`` branches append here in any order."""
    session: SessionAnnotation | None
    """Session-level labels and texts, when the task has any."""


class ChunkInput(TypedDict):
    """A ``Send`` branch: consecutive turns to annotate (``indices``) and the excerpt that holds them and the
    context window before them."""

    excerpt: Excerpt
    indices: list[int]
    language: str


class SessionInput(TypedDict):
    """The session branch: the whole dialogue as one excerpt."""

    excerpt: Excerpt
    language: str


class TurnInput(TypedDict):
    """One turn of a chunk: the excerpt, which turn, and the language."""

    excerpt: Excerpt
    index: int
    language: str


class TurnState(TurnInput, total=False):
    """The per-turn pipeline: label → critique → validate → score → route."""

    role: str | None
    answer: dict[str, Any]
    """The model's validated answer (option codes and texts)."""
    raw: str
    tokens: list[tuple[str, float]] | None
    prompt: str
    """The label call's user message (the critique quotes it)."""
    scope: str | None
    """In a multi-turn answer (``turns_per_call`` > 1): the key of this turn's object in ``raw``, which holds the
    whole answer (its tokens spell all of it)."""
    window: int
    """``turns_per_call`` > 1: the first index of the window whose one call labeled this turn (its critique is the
    window's too); absent when the turn was labeled on its own."""
    critique: dict[str, Any] | None
    samples: list[dict[str, Any]]
    labels: dict[str, Any]
    texts: dict[str, str]
    confidence: dict[str, Any]
    flags: list[str]
    failed: str | None
    """Why the turn failed (``invalid_output: ...``, ``llm_error: ...``), or None."""
    history: list[dict[str, Any]]
    turns: Annotated[list[TurnAnnotation], operator.add]


class ChunkState(ChunkInput, total=False):
    """The turns subgraph (one chunk): each turn's pipeline state, by turn index, and the finished annotations."""

    work: dict[int, TurnState]
    """Each step updates the turns it applies to, concurrently; not checkpointed by a run (a chunk is redone on
    resume, its calls from the cache)."""
    turns: Annotated[list[TurnAnnotation], operator.add]


class TurnOutput(TypedDict):
    """What the per-turn pipeline (and a window of them) hands back to the dialogue thread."""

    turns: Annotated[list[TurnAnnotation], operator.add]

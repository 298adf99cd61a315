"""Typed records that flow through autolabel: dialogues in, annotations out."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Turn(BaseModel):
    """One utterance. ``speaker`` is the raw speaker name from the input; the task spec maps it to a role."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0, description="0-based position of the turn in its dialogue")
    speaker: str
    text: str
    meta: dict[str, Any] = Field(default_factory=dict, description="Extra input fields (gold labels, ids, ...)")


class Dialogue(BaseModel):
    """A session: an id, its turns in order, and whatever else the input carried (``meta``)."""

    model_config = ConfigDict(frozen=True)

    id: str
    turns: tuple[Turn, ...]
    meta: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(default=None, description="file:line the dialogue was read from")


class Status(str, Enum):
    """The one state every input turn ends in."""

    ACCEPTED = "accepted"
    FLAGGED = "flagged"
    REVIEWED = "reviewed"
    FAILED = "failed"


class Verdict(str, Enum):
    """The critic's verdict on a proposed annotation."""

    AGREE = "agree"
    REVISE = "revise"
    UNSURE = "unsure"


class FieldConfidence(BaseModel):
    """Confidence of one label field, with the signals it was computed from."""

    value: float = Field(ge=0.0, le=1.0)
    signals: dict[str, float] = Field(default_factory=dict)


class TurnAnnotation(BaseModel):
    """The final annotation of one turn."""

    dialogue_id: str
    turn_index: int
    speaker: str
    role: str | None
    status: Status
    labels: dict[str, Any] = Field(default_factory=dict, description="field -> option name or list of names")
    texts: dict[str, str] = Field(default_factory=dict, description="free-text fields (explanation, reasoning...)")
    critique: dict[str, Any] | None = None
    confidence: dict[str, FieldConfidence] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list, description="reasons this turn went to review")
    error: str | None = Field(default=None, description="why the turn failed, when status is failed")
    raw_output: str | None = Field(default=None, description="last raw model output when the turn failed")
    attempts: int = 0
    history: list[dict[str, Any]] = Field(default_factory=list, description="every raw attempt, with its error")


class SessionAnnotation(BaseModel):
    """The session-level labels and texts of one dialogue."""

    dialogue_id: str
    status: Status
    labels: dict[str, Any] = Field(default_factory=dict)
    texts: dict[str, str] = Field(default_factory=dict)
    confidence: dict[str, FieldConfidence] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)
    error: str | None = None
    raw_output: str | None = None


class DialogueResult(BaseModel):
    """Everything autolabel produced for one dialogue."""

    dialogue_id: str
    language: str
    turns: list[TurnAnnotation]
    session: SessionAnnotation | None = None

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for t in self.turns:
            out[t.status.value] += 1
        return out


class RunSummary(BaseModel):
    """What a run did: the counts add up to the input's turns."""

    run_id: str
    dialogues: int = 0
    turns: int = 0
    accepted: int = 0
    flagged: int = 0
    failed: int = 0
    reviewed: int = 0
    skipped_dialogues: int = Field(default=0, description="dialogues already finished by an earlier run")
    resumed_dialogues: int = Field(default=0, description="dialogues an earlier run had begun, continued from their "
                                   "checkpoint: their finished chunks of turns were not redone")
    input_errors: int = 0
    critic_inconsistent: int = Field(default=0, description="critiques that said \"revise\" without valid revised "
                                     "labels, even after re-asks: kept as \"unsure\" (the turn is flagged)")
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    db: str = ""
    stopped_reason: str | None = None

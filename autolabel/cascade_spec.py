"""The cascade file (``schemas/cascade.schema.json``) and a cascade run's numbers; ``autolabel/cascade.py`` runs it.

``CascadeSpec.escalates`` is the one rule by which a stage's final record sends its turn on to the next stage, and
``CascadeSpec.withheld`` the one by which a turn's text is kept from the later stages."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autolabel.errors import TaskSpecError
from autolabel.tasks import load_schema

ESCALATING_FLAGS = ("critic_disagrees", "critic_unsure", "sample_disagreement")
ESCALATING_PREFIXES = ("low_confidence:",)
STAYING_FLAGS = ("risk_content", "prompt_injection")
"""Flags that keep a turn with its stage (and a person) unless ``risk_to_later_stages``."""
KNN = "knn"
WITHHELD = "[withheld: stays with an earlier stage]"
"""What a later stage's context shows instead of a turn with risk content or prompt injection."""
STAGE_KEYS = ("model", "base_url", "api_key_env", "redact", "turns_per_call", "samples", "critique")


@dataclass(frozen=True)
class Stage:
    """One stage: a model and the settings it runs with (the others are the run's)."""

    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    redact: bool | None = None
    turns_per_call: int | None = None
    samples: int | None = None
    critique: bool | None = None
    name: str | None = None

    def overrides(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in STAGE_KEYS if getattr(self, k) is not None}


@dataclass(frozen=True)
class CascadeSpec:
    """A cascade file, validated (``load_cascade``)."""

    stages: tuple[Stage, ...]
    risk_to_later_stages: bool = False
    assumed_escalation_rate: float | None = None
    source: str = "<cascade>"

    def key(self, upto: int | None = None) -> str:
        """A hash of the stages up to ``upto`` (all) and the risk rule: what a stage's run depends on."""
        stages = [asdict(s) for s in self.stages[:upto]]
        for s in stages:
            s.pop("name", None)
        body = json.dumps({"stages": stages, "risk": self.risk_to_later_stages}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def escalates(self, record: dict[str, Any]) -> bool:
        """Does this stage's final record send its turn on to the next stage?"""
        flags = record.get("flags", [])
        if record.get("status") != "flagged":
            return False
        if not self.risk_to_later_stages and any(f in STAYING_FLAGS for f in flags):
            return False
        return any(f in ESCALATING_FLAGS or f.startswith(ESCALATING_PREFIXES) for f in flags)

    def withheld(self, record: dict[str, Any]) -> bool:
        """Is this turn's text kept from the later stages (risk content or prompt injection, by default)?"""
        return not self.risk_to_later_stages and any(f in STAYING_FLAGS for f in record.get("flags", []))


def load_cascade(path: str | Path) -> CascadeSpec:
    """Read and validate a cascade file (YAML or JSON): every problem with its JSON path (TaskSpecError, exit 2)."""
    from autolabel.taskcheck import find_problems

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except OSError as e:
        raise TaskSpecError(str(p), f"cannot read the cascade file: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise TaskSpecError(str(p), f"not YAML or JSON: {e}") from None
    problems = [str(x) for x in find_problems(raw, load_schema("cascade.schema.json"), text)]
    if not problems:
        for i, s in enumerate(raw["stages"]):
            model = s["model"]
            if model != KNN and (":" not in model or model.split(":", 1)[0] not in ("openai", "local")):
                problems.append(f"$.stages[{i}].model: {model!r} is not a model: use openai:NAME, local:NAME or knn")
    if problems:
        raise TaskSpecError(str(p), f"{len(problems)} problem(s): " + "; ".join(problems), problems)
    stages = tuple(Stage(**{k: v for k, v in s.items()}) for s in raw["stages"])
    return CascadeSpec(stages=stages, risk_to_later_stages=bool(raw.get("risk_to_later_stages", False)),
                       assumed_escalation_rate=raw.get("assumed_escalation_rate"), source=str(p))


@dataclass
class StageSummary:
    """One stage of a cascade run: what reached it, what it decided, what it sent on, and what it cost."""

    stage: int
    model: str
    run_id: str | None = None
    dialogues: int = 0
    turns: int = 0
    """Turns it labeled (stage 1: every turn; later: the ones sent on to it)."""
    escalated: int = 0
    """Of those, sent on to the next stage."""
    decided: int = 0
    calls: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0
    calibrated: bool = False
    """Routed with a stored calibrator and certified thresholds for this task and model (else the uncalibrated
    rule)."""
    stopped_reason: str | None = None


@dataclass
class CascadeSummary:
    """A cascade run: the merged run's counts and each stage's."""

    run_id: str
    db: str
    stages: list[StageSummary] = field(default_factory=list)
    dialogues: int = 0
    turns: int = 0
    accepted: int = 0
    flagged: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    stopped_reason: str | None = None
    input_errors: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

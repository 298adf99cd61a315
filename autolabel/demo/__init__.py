"""Demo dialogues written for autolabel (an English and a Chinese counseling session), ``run_demo``, and
``showcase``: the few labeled turns ``autolabel demo`` shows at its end.

The sessions are original text made for this project, not excerpts of any dataset. The English session
contains a risk sentence, so the demo also shows a turn flagged for a human whatever the model's confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from autolabel.models import RunSummary

SHOWN_TEXT_CHARS = 60


def demo_path() -> Path:
    """The bundled ``dialogues.jsonl`` (autolabel's JSONL input format)."""
    return Path(str(resources.files(__name__).joinpath("dialogues.jsonl")))


def run_demo(db: str, model: str | None = None, **overrides: Any) -> RunSummary:
    """Label the demo dialogues with the ``psy-insight`` task (default model: the settings' local default)."""
    from autolabel.annotator import Annotator
    from autolabel.settings import Settings

    annotator = Annotator(task="psy-insight", model=model or Settings().model, db=db, **overrides)
    return annotator.run(demo_path())


@dataclass(frozen=True)
class ShownTurn:
    """One labeled turn as the demo shows it."""

    dialogue_id: str
    turn_index: int
    speaker: str
    text: str  # cut to SHOWN_TEXT_CHARS
    labels: str  # "field: option, option; field: option"
    confidence: float | None  # the lowest field confidence (None: a failed turn)
    status: str  # accepted, flagged, failed
    reasons: tuple[str, ...]  # why it goes to a human (flags; a failed turn's error)


def showcase(db: str, run_id: str, limit: int = 6) -> list[ShownTurn]:
    """A few turns of run ``run_id`` that show what the run did: accepted turns and flagged ones (risk content
    first, then the lowest confidence), about half each when both exist, in dialogue order."""
    from autolabel.persistence.store import Store

    store = Store.open(db)
    try:
        turns = [_shown(r) for r in store.final_records(run_id) if r.get("kind") == "turn"]
    finally:
        store.close()
    accepted = [t for t in turns if t.status == "accepted"]
    others = sorted((t for t in turns if t.status != "accepted"),
                    key=lambda t: ("risk_content" not in t.reasons, t.confidence if t.confidence is not None else -1))
    take_accepted = min(len(accepted), max(limit // 2, limit - len(others)))
    chosen = accepted[:take_accepted] + others[:limit - take_accepted]
    return sorted(chosen, key=lambda t: (t.dialogue_id, t.turn_index))


def _shown(rec: dict[str, Any]) -> ShownTurn:
    text = " ".join(str(rec.get("text") or "").split())
    if len(text) > SHOWN_TEXT_CHARS:
        text = text[:SHOWN_TEXT_CHARS - 1] + "…"
    labels = "; ".join(f"{k}: {', '.join(v) if isinstance(v, list) else v}"
                       for k, v in (rec.get("labels") or {}).items())
    values = [c["value"] for c in (rec.get("confidence") or {}).values()]
    reasons = list(rec.get("flags") or [])
    if rec.get("status") == "failed" and rec.get("error"):
        reasons.append(str(rec["error"]).split(":", 1)[0])
    return ShownTurn(dialogue_id=rec["dialogue_id"], turn_index=int(rec["turn_index"]), speaker=rec.get("speaker", ""),
                     text=text, labels=labels, confidence=min(values) if values else None,
                     status=str(rec.get("status")), reasons=tuple(reasons))


def review_command(db: str) -> str:
    """The command that opens the run's flagged turns in the review web UI."""
    return f"autolabel review serve --db {db}"

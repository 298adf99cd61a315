"""Demo dialogues written for autolabel (three English, two Chinese counseling sessions) and ``run_demo``.

The sessions are original text made for this project, not excerpts of any dataset. One English session
contains a risk sentence, so the demo also shows a turn flagged for a human whatever the model's confidence.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from autolabel.models import RunSummary


def demo_path() -> Path:
    """The bundled ``dialogues.jsonl`` (autolabel's JSONL input format)."""
    return Path(str(resources.files(__name__).joinpath("dialogues.jsonl")))


def run_demo(db: str, model: str | None = None, **overrides: Any) -> RunSummary:
    """Label the demo dialogues with the ``psy-insight`` task (default model: the settings' local default)."""
    from autolabel.annotator import Annotator
    from autolabel.settings import Settings

    annotator = Annotator(task="psy-insight", model=model or Settings().model, db=db, **overrides)
    return annotator.run(demo_path())

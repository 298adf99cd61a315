"""autolabel: annotate multi-turn counseling dialogues with an LLM — explained, self-critiqued, validated
against JSON Schemas, scored for confidence, and routed to human review when it cannot be trusted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autolabel.errors import (
    AutolabelError,
    BudgetExceeded,
    ConfigError,
    InputError,
    LLMError,
    RequestRefused,
    RetryExhausted,
    ReviewError,
    StoreError,
    TaskSpecError,
)
from autolabel.interop.export import ExportFormat, export
from autolabel.models import Dialogue, DialogueResult, RunSummary, SessionAnnotation, Status, Turn, TurnAnnotation
from autolabel.persistence.store import Store
from autolabel.readers import InputFormat, read_dialogues
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec, list_tasks, load_task, validate_task_file

__version__ = "0.1.0"

if TYPE_CHECKING:
    from autolabel.annotator import Annotator
    from autolabel.cascade import Cascade, load_cascade
    from autolabel.planning import Plan, plan
    from autolabel.quality.evaluate import calibrate, evaluate, load_gold
    from autolabel.review.queue import ReviewQueue

# Heavier parts load on first use, so that `import autolabel` (and with it every submodule, the CLI's included) stays
# light: the Annotator brings LangGraph and the openai client, evaluate numpy, plan the tokenizers.
_LAZY = {"Annotator": "annotator", "Cascade": "cascade", "load_cascade": "cascade", "calibrate": "quality.evaluate",
         "evaluate": "quality.evaluate", "load_gold": "quality.evaluate", "Plan": "planning", "plan": "planning",
         "ReviewQueue": "review.queue"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Annotator",
    "AutolabelError",
    "BudgetExceeded",
    "Cascade",
    "ConfigError",
    "Dialogue",
    "DialogueResult",
    "ExportFormat",
    "InputError",
    "InputFormat",
    "LLMError",
    "RequestRefused",
    "RetryExhausted",
    "ReviewError",
    "RunSummary",
    "SessionAnnotation",
    "Plan",
    "ReviewQueue",
    "Settings",
    "Status",
    "Store",
    "StoreError",
    "TaskSpec",
    "TaskSpecError",
    "Turn",
    "TurnAnnotation",
    "calibrate",
    "evaluate",
    "export",
    "list_tasks",
    "load_cascade",
    "load_gold",
    "load_task",
    "plan",
    "read_dialogues",
    "validate_task_file",
]

"""autolabel: annotate multi-turn counseling dialogues with an LLM — explained, self-critiqued, validated
against JSON Schemas, scored for confidence, and routed to human review when it cannot be trusted."""

from __future__ import annotations

from typing import Any

from .annotator import Annotator
from .errors import (
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
from .export import ExportFormat, export
from .models import Dialogue, DialogueResult, RunSummary, SessionAnnotation, Status, Turn, TurnAnnotation
from .readers import InputFormat, read_dialogues
from .settings import Settings
from .store import Store
from .tasks import TaskSpec, list_tasks, load_task, validate_task_file

__version__ = "0.1.0"

# Heavier parts (scikit-learn, the web stack) load on first use, so `import autolabel` and the CLI start fast.
_LAZY = {"calibrate": "evaluate", "evaluate": "evaluate", "load_gold": "evaluate", "Plan": "plan", "plan": "plan",
         "ReviewQueue": "review"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Annotator",
    "AutolabelError",
    "BudgetExceeded",
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
    "load_gold",
    "load_task",
    "plan",
    "read_dialogues",
    "validate_task_file",
]

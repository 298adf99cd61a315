"""autolabel: annotate multi-turn counseling dialogues with an LLM — explained, self-critiqued, validated
against JSON Schemas, scored for confidence, and routed to human review when it cannot be trusted."""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .annotator import Annotator
    from .evaluate import calibrate, evaluate, load_gold
    from .plan import Plan, plan
    from .review import ReviewQueue

# Heavier parts load on first use, so that `import autolabel` (and with it every submodule, the CLI's included) stays
# light: the Annotator brings LangGraph and the openai client, evaluate numpy, plan the tokenizers.
_LAZY = {"Annotator": "annotator", "calibrate": "evaluate", "evaluate": "evaluate", "load_gold": "evaluate",
         "Plan": "plan", "plan": "plan", "ReviewQueue": "review"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``autolabel.evaluate`` and ``autolabel.plan`` the functions once their modules are imported: Python's
    import sets a package attribute for each submodule it loads, which would shadow the lazily loaded function of
    the same name (an eager ``from .evaluate import evaluate`` rebinds it the same way)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable through sys.modules and ``import autolabel.evaluate``
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

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

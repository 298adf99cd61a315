"""autolabel: annotate multi-turn counseling dialogues with an LLM — explained, self-critiqued, validated
against JSON Schemas, scored for confidence, and routed to human review when it cannot be trusted."""

from __future__ import annotations

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
    "Settings",
    "Status",
    "Store",
    "StoreError",
    "TaskSpec",
    "TaskSpecError",
    "Turn",
    "TurnAnnotation",
    "export",
    "list_tasks",
    "load_task",
    "read_dialogues",
    "validate_task_file",
]

"""Run-time context of the ``annotate`` graph (LangGraph's ``context_schema``): what every node may use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autolabel.graphs.annotate.requests import RequestBuilder

from autolabel.llm.client import LLMClient
from autolabel.persistence.store import Store
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec


@dataclass
class Context:
    """Shared by every dialogue of a run. Nothing here is global: the run builds it and passes it in."""

    task: TaskSpec
    settings: Settings
    llm: LLMClient
    store: Store
    run_id: str
    model: str
    thresholds: dict[str, float] = field(default_factory=dict)
    """Per-field auto-accept thresholds (certified by ``autolabel calibrate``); default 0.5 when absent."""
    calibrate: Callable[[str, dict[str, float]], float] | None = None
    """Calibrated confidence of a field from its signals, when a calibrator is stored for this task and model."""
    examples: Callable[[str, str, str], list[dict[str, Any]]] | None = None
    """(role, language, text) -> reviewed examples similar to the turn, for few-shot prompts."""
    lease_owner: str | None = None
    """The job-queue worker running this run (``autolabel worker``): a dialogue is stored only while it holds it."""
    knn_agreement: Callable[[str, str, str, str, Any], float | None] | None = None
    """(role, language, text, field, proposed value) -> agreement with the majority label of the nearest reviewed
    turns: the ``knn_agreement`` confidence signal (None when no neighbour has the field)."""
    requests: RequestBuilder = field(init=False, repr=False)
    """The run's request builder (prompts and schemas built once per run)."""

    def __post_init__(self) -> None:
        self.requests = RequestBuilder(self.task, self.settings)
